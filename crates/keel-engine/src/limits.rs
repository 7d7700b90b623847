//! Every bound the engine keeps, as a named constant. Tunable limits live in config, default
//! to these and are checked against them.

/// Largest stored event (its JSON), by default; configurable up to [`EVENT_BYTES_CEILING`].
pub const EVENT_BYTES_MAX: usize = 1024 * 1024;
/// The most any configuration may raise the event size limit to.
pub const EVENT_BYTES_CEILING: usize = 8 * 1024 * 1024;
/// Largest publish request body, by default.
pub const REQUEST_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The most any configuration may raise the request size limit to.
pub const REQUEST_BYTES_CEILING: usize = 32 * 1024 * 1024;
/// Most events in one published batch.
pub const BATCH_EVENTS_MAX: usize = 10_000;
/// Most partitions one topic may have.
pub const PARTITIONS_MAX: u32 = 1024;
/// Longest topic name.
pub const TOPIC_NAME_BYTES_MAX: usize = 128;
/// A partition log's segment size, by default (on disk).
pub const SEGMENT_BYTES_DEFAULT: u64 = 128 * 1024 * 1024;
/// The smallest segment size a configuration may set (the log's own bound; tiny segments are
/// for tests).
pub const SEGMENT_BYTES_MIN: u64 = keel_log::limits::SEGMENT_BYTES_MIN;
/// The largest segment size a configuration may set (the log's own bound).
pub const SEGMENT_BYTES_CEILING: u64 = keel_log::limits::SEGMENT_BYTES_MAX;
/// A subscription's checkpoint log is trimmed to about half this size once it grows past it
/// (only the newest checkpoint is ever read).
pub const CHECKPOINT_LOG_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Most records one read returns.
pub const READ_RECORDS_MAX: usize = 1000;
/// About the most bytes of events one read returns (at least one record is returned).
pub const READ_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest a read may long-poll.
pub const READ_WAIT_MS_MAX: u64 = 30_000;
/// Append requests queued per partition before publishers wait (backpressure).
pub const APPEND_QUEUE_CAPACITY: usize = 1024;
/// Most append requests one group commit takes from the queue.
pub const GROUP_COMMIT_REQUESTS_MAX: usize = 512;
/// Most payload bytes one group commit writes.
pub const GROUP_COMMIT_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most (source, id) pairs remembered per topic for dedupe; beyond it the oldest are forgotten
/// before their window ends (counted in `keel_dedupe_evicted_early_total`).
/// About 60–90 bytes each (the table grows in powers of two): 400,000 entries ≈ 45 MB,
/// which is the whole 2-minute window up to about 3,300 events/s, and 2 s of publishing at
/// 200,000 events/s. Kept below half the capacity of a 2^20-slot table (458,752): with
/// entries expiring and arriving all the time, the table then rehashes in place instead of
/// doubling (measured: a 500,000 bound doubled the table to 2^21 slots, +44 MB RSS).
pub const DEDUPE_ENTRIES_MAX: usize = 400_000;
/// Longest subscription name.
pub const SUBSCRIPTION_NAME_BYTES_MAX: usize = 128;
/// Most subscriptions one server holds.
pub const SUBSCRIPTIONS_MAX: usize = 1000;
/// Most events of one subscription delivered and not yet acknowledged.
pub const IN_FLIGHT_MAX: u32 = 10_000;
/// Most events one subscription holds in memory (pending, in flight or waiting), across its
/// partitions; each partition holds at least [`LANE_PENDING_MIN`].
pub const SUBSCRIPTION_PENDING_MAX: usize = 16_384;
/// Fewest pending events per partition of a subscription.
pub const LANE_PENDING_MIN: usize = 64;
/// Most bytes of events one subscription holds in memory, across its partitions; each
/// partition may hold [`LANE_PENDING_BYTES_MIN`] (and one event more, as a read returns at
/// least one).
pub const SUBSCRIPTION_PENDING_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Fewest bytes of pending events per partition of a subscription.
pub const LANE_PENDING_BYTES_MIN: usize = 256 * 1024;
/// Longest ack timeout.
pub const ACK_TIMEOUT_MAX: std::time::Duration = std::time::Duration::from_secs(3600);
/// Longest overlap of a signing secret's rotation: how long the previous secret may keep
/// signing beside the new one.
pub const SECRET_OVERLAP_MAX: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
/// Most attempts a retry policy may allow.
pub const RETRY_ATTEMPTS_MAX: u32 = 100;
/// Longest wait between attempts (also caps a sink's `Retry-After`).
pub const RETRY_DELAY_MAX: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Most messages one pull returns.
pub const PULL_MESSAGES_MAX: usize = 1000;
/// Most ack ids in one ack, nack or reject.
pub const ACK_IDS_MAX: usize = 10_000;
/// Most dead-letter entries one list returns.
pub const DLQ_LIST_MAX: usize = 1000;
/// About the most bytes of dead-letter records written in one append (one fsync); a larger
/// batch takes several.
pub const DLQ_WRITE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// About the most bytes of events one dead-letter list returns (at least one entry).
pub const DLQ_LIST_BYTES_MAX: usize = 4 * 1024 * 1024;

const _: () = assert!(IN_FLIGHT_MAX as usize <= SUBSCRIPTION_PENDING_MAX);
const _: () = assert!(PULL_MESSAGES_MAX <= IN_FLIGHT_MAX as usize);
const _: () = assert!(EVENT_BYTES_MAX <= EVENT_BYTES_CEILING);
const _: () = assert!(EVENT_BYTES_CEILING <= REQUEST_BYTES_MAX);
const _: () = assert!(READ_RECORDS_MAX > 0 && BATCH_EVENTS_MAX > 0);
const _: () = assert!(REQUEST_BYTES_MAX <= REQUEST_BYTES_CEILING);
const _: () = assert!(
    SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT && SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_CEILING
);
/// Largest state one key may hold, in bytes of JSON.
pub const STATE_BYTES_MAX: usize = 64 * 1024;
/// Most events one ack may emit.
pub const EMITS_PER_ACK_MAX: usize = 100;
/// Memory a stateful subscription's state table caches (its keys live on disk).
pub const STATE_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// Commits applied to a state table between two snapshots (at most; also one per
/// `STATE_SNAPSHOT_INTERVAL`): what a restart replays at most.
pub const STATE_SNAPSHOT_COMMITS: u64 = 50_000;
/// Longest time between two snapshots of a state table while commits arrive.
pub const STATE_SNAPSHOT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// Most keys one page of a state listing holds.
pub const STATE_LIST_MAX: usize = 1000;
/// Commits one group commit of a state's commit log gathers at most.
pub const STATE_COMMIT_BATCH_MAX: usize = 4096;
/// Most events one read of a key's stream returns (the default is keel-api's
/// `KEY_STREAM_RECORDS_DEFAULT`).
pub const KEY_STREAM_RECORDS_MAX: usize = 1000;
/// Most index entries one read of a key's stream looks at, counting those whose events
/// retention removed (skipped): a read past a long trimmed prefix answers fewer records and
/// a `next_version` to go on from.
pub const KEY_STREAM_ENTRIES_SCANNED_MAX: usize = 100_000;
/// Longest a key stream read or a conditional append waits for the key index to catch up
/// with its partition's log before answering 503.
pub const KEY_INDEX_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest a key index follower gathers new records before indexing them while no reader
/// waits (a reader makes it index at once): bounds the index's table writes to about one per
/// partition per this interval, whatever the publish rate.
pub const KEY_INDEX_GATHER_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
/// A follower with at least this many records to index indexes them without gathering more.
pub const KEY_INDEX_GATHER_RECORDS: u64 = READ_RECORDS_MAX as u64;
/// Keys whose versions a topic's key index keeps in memory for its followers (about 100 bytes
/// each); the cache is emptied when full.
pub const KEY_INDEX_VERSION_CACHE_KEYS: usize = 100_000;
/// Bytes of keys a partition's writer keeps for its key index follower (each key's text and
/// about 32 bytes; some 10,000 keys of 70 bytes): beyond it the oldest are dropped and the
/// follower reads those records from the log instead. The follower takes them at least every
/// [`KEY_INDEX_GATHER_WAIT`] or [`KEY_INDEX_GATHER_RECORDS`], so only a stalled follower
/// reaches it.
pub const KEY_INDEX_HANDOFF_BYTES_MAX: usize = 1024 * 1024;
/// Records indexed between two snapshots of a topic's key index (at most; also one per
/// [`KEY_INDEX_SNAPSHOT_INTERVAL`]): what a restart after a crash reads again at most.
pub const KEY_INDEX_SNAPSHOT_RECORDS: u64 = 100_000;
/// Longest time between two snapshots of a key index while records arrive.
pub const KEY_INDEX_SNAPSHOT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

const _: () = assert!(KEY_STREAM_RECORDS_MAX <= READ_RECORDS_MAX);
const _: () = assert!(KEY_STREAM_RECORDS_MAX <= KEY_STREAM_ENTRIES_SCANNED_MAX);

/// Most API tokens one server (or cluster) holds.
pub const TOKENS_MAX: usize = 10_000;
/// Longest name of an API token.
pub const TOKEN_NAME_BYTES_MAX: usize = 128;

/// Most alert rules one server holds.
pub const ALERT_RULES_MAX: usize = 1000;
/// Longest alert rule name (a file name on disk).
pub const ALERT_NAME_BYTES_MAX: usize = 128;
/// Most instances (label sets) one alert rule tracks; series beyond it are left out, with a
/// warning.
pub const ALERT_INSTANCES_MAX: usize = 10_000;
/// Longest `window` an alert rule may look back over.
pub const ALERT_WINDOW_MAX: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Longest `for`, `keep_firing_for`, `warm_up` and `half_life` of an alert rule.
pub const ALERT_DURATION_MAX: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// Snapshots of the metrics the alert evaluator keeps (for windows): past this, snapshots are
/// taken further apart than the evaluation interval, so the longest window still fits.
pub const ALERT_SNAPSHOTS_MAX: usize = 1024;
/// How often alert rules are evaluated, by default.
pub const ALERT_EVALUATION_INTERVAL_DEFAULT: std::time::Duration =
    std::time::Duration::from_secs(15);
/// Shortest evaluation interval a configuration may set.
pub const ALERT_EVALUATION_INTERVAL_MIN: std::time::Duration = std::time::Duration::from_millis(10);

const _: () = assert!(ALERT_WINDOW_MAX.as_secs() <= ALERT_DURATION_MAX.as_secs());
/// Free space kept on the data directory's disk by default (`disk_free_bytes_min`):
/// publishing is refused below it. It is the room keel writes into while publishing is
/// refused (checkpoints, trimmed at 8 MiB per subscription; dead letters; state commits;
/// key index snapshots), with headroom for the publishes in the queue when the limit is
/// reached and for other programs on the disk: 1 GiB holds that for tens of subscriptions,
/// and is under 1% of a typical server disk.
pub const DISK_FREE_BYTES_MIN_DEFAULT: u64 = 1024 * 1024 * 1024;
/// Bytes of published events waiting to be written, by default, past which publishing
/// answers 429 (`publish_queue_bytes_max`). At the 250 MB/s keel writes on its reference
/// machine this is half a second of writing: beyond it a publisher is better told to come
/// back than kept waiting while memory grows. Far above what the benchmarks queue (64
/// concurrent publishes of 100 KiB: 6.4 MiB).
pub const PUBLISH_QUEUE_BYTES_MAX_DEFAULT: u64 = 128 * 1024 * 1024;
/// How often the disk guard measures free space (and the data directory, with a cap), by
/// default (`disk_check_interval`); the bytes admitted in between are counted against the
/// last measurement.
pub const DISK_CHECK_INTERVAL_DEFAULT: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest `disk_check_interval`: space freed outside keel is seen within it.
pub const DISK_CHECK_INTERVAL_MAX: std::time::Duration = std::time::Duration::from_secs(60);
/// Bytes a record takes on disk beyond its event's JSON, as the disk guard counts it: its
/// frame header, and an index entry with room to spare.
pub const RECORD_OVERHEAD_BYTES: usize = keel_log::RECORD_HEADER_BYTES + 16;

const _: () = assert!(PUBLISH_QUEUE_BYTES_MAX_DEFAULT >= REQUEST_BYTES_MAX as u64);

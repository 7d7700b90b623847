//! `keel tail`: print a topic's records as JSON lines, from a starting point to the end or,
//! with `--follow`, long-polling every partition until Ctrl-C; and the read call `bench` shares.

use std::borrow::Cow;
use std::time::Duration;

use clap::Args;
use keel_api::read::{Record, Records};
use keel_api::topics::{PartitionInfo, TopicInfo};
use keel_client::{Answer, Client, ClientError};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::error::{CliError, joined};
use crate::limits::{EMPTY_READ_PAUSE_MS, LONG_POLL_WAIT_MS, READ_EVENTS_MAX, TAIL_QUEUE_CAPACITY};
use crate::output::write_stdout;
use crate::topic::fetch_topic;

/// Arguments of `keel tail`.
#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// The topic to read
    pub(crate) topic: String,
    /// Read only this partition [default: all]
    #[arg(long)]
    pub(crate) partition: Option<u32>,
    /// Where to start in each partition: earliest, latest or an offset
    #[arg(long, default_value = "earliest", value_parser = parse_start)]
    pub(crate) from: Start,
    /// Keep waiting for new records until Ctrl-C
    #[arg(long, short)]
    pub(crate) follow: bool,
    /// Stop after printing this many records
    #[arg(long, value_name = "N")]
    pub(crate) max: Option<u64>,
}

/// Where reading starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// The oldest retained record.
    Earliest,
    /// After the newest record: only records published from now on.
    Latest,
    /// This offset.
    Offset(u64),
}

impl Start {
    fn offset_in(self, partition: &PartitionInfo) -> u64 {
        match self {
            Self::Earliest => partition.start_offset,
            Self::Latest => partition.next_offset,
            Self::Offset(offset) => offset,
        }
    }
}

fn parse_start(text: &str) -> Result<Start, String> {
    match text {
        "earliest" => Ok(Start::Earliest),
        "latest" => Ok(Start::Latest),
        offset => offset
            .parse()
            .map(Start::Offset)
            .map_err(|_| format!("{offset:?} is not earliest, latest or an offset")),
    }
}

/// Reads up to `max` records of a partition from `from`, waiting up to `wait_ms` for the first
/// one. The answer decodes to [`Records`], which borrows from it: `reply.value()`.
pub(crate) async fn read_events(
    client: &Client,
    topic: &str,
    partition: u32,
    from: u64,
    max: u64,
    wait_ms: u64,
) -> Result<Answer<Records<'static>>, ClientError> {
    let wait = Some(Duration::from_millis(wait_ms));
    client.read(topic, partition, from, max, wait).await
}

/// What one reader reads: a partition from an offset, up to an end offset or forever.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PartitionRead {
    partition: u32,
    from: u64,
    /// Stop at this offset (the partition's end when tail started); `None` follows forever.
    until: Option<u64>,
}

/// Runs `keel tail`.
pub(crate) async fn run(client: &Client, args: TailArgs) -> Result<(), CliError> {
    let topic = fetch_topic(client, &args.topic).await?;
    let reads = plan_reads(&args.topic, &topic, args.partition, args.from, args.follow)?;
    let request_max = args
        .max
        .map_or(READ_EVENTS_MAX, |max| max.clamp(1, READ_EVENTS_MAX));
    let wait_ms = if args.follow { LONG_POLL_WAIT_MS } else { 0 };
    let (sender, receiver) = mpsc::channel(TAIL_QUEUE_CAPACITY);
    let mut readers = JoinSet::new();
    let reader = move |read: PartitionRead| {
        read_partition(
            client.clone(),
            args.topic.clone(),
            read,
            request_max,
            wait_ms,
            sender.clone(),
        )
    };
    if args.follow {
        // Every partition at once: a quiet partition must not hold back a busy one.
        for read in reads {
            readers.spawn(reader(read));
        }
    } else {
        // One partition after the other, so the output is in (partition, offset) order.
        let readers_in_order: Vec<_> = reads.into_iter().map(&reader).collect();
        readers.spawn(async move {
            for read in readers_in_order {
                read.await?;
            }
            Ok(())
        });
    }
    // The printer stops when every sender is gone; the readers hold the remaining ones.
    drop(reader);
    print_lines(receiver, readers, args.max).await
}

/// The reads `tail` makes: one per partition asked for, each from its start point and, unless
/// following, up to the partition's end now.
fn plan_reads(
    name: &str,
    topic: &TopicInfo,
    only: Option<u32>,
    start: Start,
    follow: bool,
) -> Result<Vec<PartitionRead>, CliError> {
    let chosen: Vec<&PartitionInfo> = topic
        .partitions
        .iter()
        .filter(|p| only.is_none_or(|only| p.partition == only))
        .collect();
    if let (Some(only), true) = (only, chosen.is_empty()) {
        let count = topic.partitions.len();
        return Err(CliError::Usage(format!(
            "topic {name} has no partition {only} (it has {count}: 0 to {})",
            count.saturating_sub(1)
        )));
    }
    if let Start::Offset(offset) = start
        && chosen.iter().all(|p| offset > p.next_offset)
    {
        let ends: Vec<String> = chosen
            .iter()
            .map(|p| format!("{}: {}", p.partition, p.next_offset))
            .collect();
        return Err(CliError::Usage(format!(
            "offset {offset} is past the end of topic {name} (next offset per partition: {})",
            ends.join(", ")
        )));
    }
    let read = |p: &PartitionInfo| PartitionRead {
        partition: p.partition,
        from: start.offset_in(p),
        until: (!follow).then_some(p.next_offset),
    };
    Ok(chosen.into_iter().map(read).collect())
}

/// Reads one partition, sending each answer's output lines; stops at `until`, when the printer
/// stops listening, or, when not following, at the first empty answer.
async fn read_partition(
    client: Client,
    topic: String,
    read: PartitionRead,
    request_max: u64,
    wait_ms: u64,
    lines: mpsc::Sender<Vec<String>>,
) -> Result<(), CliError> {
    let mut offset = read.from;
    while read.until.is_none_or(|until| offset < until) {
        let reply = read_events(
            &client,
            &topic,
            read.partition,
            offset,
            request_max,
            wait_ms,
        )
        .await?;
        let reply = reply.value();
        if reply.records.is_empty() {
            if read.until.is_some() {
                return Ok(());
            }
            // A server that answers at once instead of long-polling must not be spun on.
            tokio::time::sleep(Duration::from_millis(EMPTY_READ_PAUSE_MS)).await;
            continue;
        }
        let output = reply
            .records
            .iter()
            .map(|record| tail_line(read.partition, record))
            .collect();
        if lines.send(output).await.is_err() {
            return Ok(());
        }
        offset = reply.next_read_offset(offset);
    }
    Ok(())
}

/// One output line: `{"partition","offset","timestamp","event"}`.
#[derive(Debug, Serialize)]
struct TailLine<'a> {
    partition: u32,
    offset: u64,
    timestamp: Option<&'a RawValue>,
    event: Cow<'a, RawValue>,
}

/// A record as one JSON line, the event kept byte for byte unless it spans several lines.
fn tail_line(partition: u32, record: &Record) -> String {
    let line = TailLine {
        partition,
        offset: record.offset,
        timestamp: record.timestamp,
        event: single_line(record.event),
    };
    serde_json::to_string(&line).expect("raw JSON values and numbers serialize") + "\n"
}

/// `raw` unchanged, or re-encoded compactly when it holds line breaks (pretty-printed JSON).
pub(crate) fn single_line(raw: &RawValue) -> Cow<'_, RawValue> {
    if !raw.get().contains(['\n', '\r']) {
        return Cow::Borrowed(raw);
    }
    let compact = serde_json::from_str::<serde_json::Value>(raw.get())
        .and_then(|value| serde_json::value::to_raw_value(&value));
    match compact {
        Ok(compact) => Cow::Owned(compact),
        Err(_) => Cow::Borrowed(raw),
    }
}

/// Prints the readers' lines until they are done, `max` lines are out, or Ctrl-C.
async fn print_lines(
    mut lines: mpsc::Receiver<Vec<String>>,
    mut readers: JoinSet<Result<(), CliError>>,
    max: Option<u64>,
) -> Result<(), CliError> {
    let mut remaining = max.unwrap_or(u64::MAX);
    if remaining == 0 {
        return Ok(());
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            batch = lines.recv() => match batch {
                Some(batch) => {
                    let shown = batch.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    write_stdout(&batch[..shown].concat())?;
                    remaining -= shown as u64;
                    if remaining == 0 {
                        return Ok(());
                    }
                }
                None => break,
            },
            Some(outcome) = readers.join_next() => joined(outcome)?,
            _ = &mut ctrl_c => return Ok(()),
        }
    }
    // Every reader has let go of its sender, so each is done or finishing: collect errors.
    while let Some(outcome) = readers.join_next().await {
        joined(outcome)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> TopicInfo {
        let partition = |partition, start_offset, next_offset| PartitionInfo {
            partition,
            start_offset,
            next_offset,
            bytes: 0,
            unavailable: None,
        };
        TopicInfo {
            name: "t".to_owned(),
            partitions: vec![partition(0, 0, 10), partition(1, 4, 6)],
            retention: keel_api::topics::Retention::default(),
            fsync: keel_api::topics::FsyncPolicy::Always,
            fsync_interval: Duration::from_secs(1),
            dedupe_window: Duration::from_secs(120),
        }
    }

    #[test]
    fn start_parses_names_and_offsets() {
        assert_eq!(parse_start("earliest"), Ok(Start::Earliest));
        assert_eq!(parse_start("latest"), Ok(Start::Latest));
        assert_eq!(parse_start("42"), Ok(Start::Offset(42)));
        assert!(parse_start("-1").is_err());
    }

    #[test]
    fn reads_start_where_asked_and_end_at_the_current_end_unless_following() {
        // Goal: earliest/latest come from describe; following has no end. Method: plan reads.
        let plan = |only, start, follow| plan_reads("t", &topic(), only, start, follow).unwrap();
        let read = |partition, from, until| PartitionRead {
            partition,
            from,
            until,
        };
        assert_eq!(
            plan(None, Start::Earliest, false),
            [read(0, 0, Some(10)), read(1, 4, Some(6))]
        );
        assert_eq!(
            plan(None, Start::Latest, true),
            [read(0, 10, None), read(1, 6, None)]
        );
        assert_eq!(
            plan(Some(1), Start::Offset(5), false),
            [read(1, 5, Some(6))]
        );
    }

    #[test]
    fn unknown_partition_is_a_usage_error() {
        let past_end = plan_reads("t", &topic(), None, Start::Offset(1_000_000), false);
        assert!(past_end.unwrap_err().to_string().contains("past the end"));
        let error = plan_reads("t", &topic(), Some(2), Start::Earliest, false).unwrap_err();
        assert_eq!(
            error.to_string(),
            "topic t has no partition 2 (it has 2: 0 to 1)"
        );
    }

    #[test]
    fn record_prints_as_one_json_line_in_contract_order() {
        // Goal: one line per record with partition, offset, timestamp, event, in that order,
        // even for a pretty-printed stored event. Method: format two records.
        let reply: Records = serde_json::from_str(
            r#"{"records": [
                {"offset": 7, "timestamp": "2024-05-01T10:00:00Z", "event": {"id":"a","type":"t"}},
                {"offset": 8, "timestamp": 1714557600000, "event": {"id": "b",
                    "type": "t"}}
            ], "next_offset": 9}"#,
        )
        .unwrap();
        let lines: Vec<String> = reply
            .records
            .iter()
            .map(|record| tail_line(2, record))
            .collect();
        assert_eq!(
            lines,
            [
                "{\"partition\":2,\"offset\":7,\"timestamp\":\"2024-05-01T10:00:00Z\",\
                 \"event\":{\"id\":\"a\",\"type\":\"t\"}}\n",
                "{\"partition\":2,\"offset\":8,\"timestamp\":1714557600000,\
                 \"event\":{\"id\":\"b\",\"type\":\"t\"}}\n",
            ]
        );
        assert_eq!(reply.next_read_offset(7), 9);
    }

    #[test]
    fn next_read_offset_moves_past_received_records() {
        let reply: Records =
            serde_json::from_str(r#"{"records": [{"offset": 3, "event": {}}], "next_offset": 0}"#)
                .unwrap();
        assert_eq!(reply.next_read_offset(3), 4);
    }
}

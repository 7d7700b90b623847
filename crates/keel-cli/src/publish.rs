//! `keel publish`: one CloudEvent built from flags (structured mode), or JSON Lines from stdin
//! or a file, sent in batches (batched mode) with a progress bar.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use clap::Args;
use keel_api::publish::{PublishResult, PublishResults};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use keel_client::{
    Answer, Body, CONTENT_TYPE_BATCH, CONTENT_TYPE_EVENT, Client, ClientError, EventIds,
};

use crate::error::CliError;
use crate::limits::{BATCH_EVENTS_MAX, BATCH_LINGER_MS, LINE_QUEUE_CAPACITY};
use crate::output::{count_of, json_line, progress_bar, write_stdout};

/// The CloudEvents version every event the CLI builds or completes declares.
const SPEC_VERSION: &str = "1.0";

/// Arguments of `keel publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// The topic to publish to
    pub(crate) topic: String,
    #[command(flatten)]
    pub(crate) event: EventArgs,
    /// Read events from stdin, one JSON object per line (a missing "specversion" or "id" is
    /// filled in); lines are sent in batches as they arrive
    #[arg(long, conflicts_with = "file")]
    pub(crate) stdin: bool,
    /// Read events from a JSON Lines file, one CloudEvent per line, sent in batches
    #[arg(long, value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,
    /// Most events per request with --stdin or --file
    #[arg(long, default_value_t = 100, value_parser = batch_size_parser())]
    pub(crate) batch_size: u64,
    /// With --stdin or --file, print only the final count, not one line per event
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

fn batch_size_parser() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..=BATCH_EVENTS_MAX)
}

/// The attributes of one event given as flags; none of them go with --stdin or --file.
#[derive(Debug, Default, Args)]
#[group(id = "event", multiple = true, conflicts_with_all = ["stdin", "file"])]
pub(crate) struct EventArgs {
    /// The event's type, e.g. order.created
    #[arg(long = "type", value_name = "TYPE", required_unless_present_any = ["stdin", "file"])]
    pub(crate) event_type: Option<String>,
    /// The event's source, e.g. shop; with the id, it identifies the event for dedupe
    #[arg(long, required_unless_present_any = ["stdin", "file"])]
    pub(crate) source: Option<String>,
    /// The event's id [default: a new unique id]
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// Partition key ("partitionkey"): events with the same key keep their order
    #[arg(long)]
    pub(crate) key: Option<String>,
    /// The event's subject
    #[arg(long)]
    pub(crate) subject: Option<String>,
    /// The event's data: JSON if it parses as JSON, text otherwise
    #[arg(long, conflicts_with = "data_file")]
    pub(crate) data: Option<String>,
    /// Read the event's data from a file (bytes that are not UTF-8 go as data_base64)
    #[arg(long, value_name = "PATH")]
    pub(crate) data_file: Option<PathBuf>,
    /// Media type of the data ("datacontenttype") [default: application/json for JSON data,
    /// text/plain for text, application/octet-stream for other bytes]
    #[arg(long, value_name = "MEDIA_TYPE")]
    pub(crate) content_type: Option<String>,
}

/// An event's data in the form the CloudEvents JSON format carries it.
#[derive(Debug, Clone, PartialEq)]
enum Data {
    /// A JSON value, carried as `data` itself.
    Json(Value),
    /// Text, carried as a `data` string.
    Text(String),
    /// Other bytes, carried base64-encoded as `data_base64`.
    Binary(Vec<u8>),
}

/// Runs `keel publish`; `json` prints the server's answers instead of text.
pub(crate) async fn run(client: &Client, args: PublishArgs, json: bool) -> Result<(), CliError> {
    let ids = Arc::new(EventIds::new());
    let source = match (&args.file, args.stdin) {
        (Some(path), _) => LineSource::file(path)?,
        (None, true) => LineSource::stdin(),
        (None, false) => return write_stdout(&publish_one(client, &args, &ids, json).await?),
    };
    publish_lines(client, &args, source, ids, json).await
}

/// `POST`s events to a topic: one in structured mode, or a batch.
pub(crate) async fn post_events(
    client: &Client,
    topic: &str,
    body: Body,
) -> Result<Answer<PublishResults>, ClientError> {
    client.publish_encoded(topic, body).await
}

async fn publish_one(
    client: &Client,
    args: &PublishArgs,
    ids: &EventIds,
    json: bool,
) -> Result<String, CliError> {
    let data = read_data(&args.event)?;
    let id = args.event.id.clone().unwrap_or_else(|| ids.next_id());
    let event = build_event(&args.event, id, data)?;
    let body = Body {
        content_type: CONTENT_TYPE_EVENT,
        bytes: event.to_string().into_bytes(),
    };
    let reply = post_events(client, &args.topic, body).await?;
    if json {
        return Ok(json_line(reply.body()));
    }
    Ok(result_lines(&reply.value().results))
}

/// The data flags as bytes, with the media type given for them, if any.
fn read_data(event: &EventArgs) -> Result<Option<(Data, String)>, CliError> {
    let bytes = match (&event.data, &event.data_file) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(path)) => std::fs::read(path)
            .map_err(|error| CliError::io(format!("read {}", path.display()), error))?,
        (None, None) => return Ok(None),
    };
    event_data(bytes, event.content_type.as_deref())
        .map(Some)
        .map_err(CliError::Usage)
}

/// Decides how data travels and its `datacontenttype`. A JSON media type requires JSON; another
/// given media type takes the bytes as text (or base64 when not UTF-8); with none, JSON is
/// detected, then text, then bytes.
fn event_data(bytes: Vec<u8>, content_type: Option<&str>) -> Result<(Data, String), String> {
    match content_type {
        Some(media_type) if is_json_media_type(media_type) => serde_json::from_slice(&bytes)
            .map(|value| (Data::Json(value), media_type.to_owned()))
            .map_err(|error| {
                format!("data is not valid JSON for content type {media_type}: {error}")
            }),
        Some(media_type) => Ok((text_or_binary(bytes), media_type.to_owned())),
        None => match serde_json::from_slice(&bytes) {
            Ok(value) => Ok((Data::Json(value), "application/json".to_owned())),
            // What opens like a JSON object or array was meant as JSON: storing it as text
            // would make every filter on its fields miss, silently.
            Err(error) if looks_like_json(&bytes) => Err(format!(
                "data looks like JSON but does not parse ({error}); fix it, or pass --content-type text/plain to send it as text"
            )),
            Err(_) => match text_or_binary(bytes) {
                text @ Data::Text(_) => Ok((text, "text/plain".to_owned())),
                other => Ok((other, "application/octet-stream".to_owned())),
            },
        },
    }
}

/// Whether data opens like a JSON object or array.
fn looks_like_json(bytes: &[u8]) -> bool {
    matches!(
        bytes.iter().find(|byte| !byte.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

fn text_or_binary(bytes: Vec<u8>) -> Data {
    match String::from_utf8(bytes) {
        Ok(text) => Data::Text(text),
        Err(error) => Data::Binary(error.into_bytes()),
    }
}

/// `application/json`, `text/json` or any `+json` type, parameters ignored.
fn is_json_media_type(media_type: &str) -> bool {
    let essence = media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// The structured-mode event for the flags, with `id` and the data already decided.
fn build_event(
    flags: &EventArgs,
    id: String,
    data: Option<(Data, String)>,
) -> Result<Value, CliError> {
    let (Some(event_type), Some(source)) = (&flags.event_type, &flags.source) else {
        return Err(CliError::Usage(
            "--type and --source are required".to_owned(),
        ));
    };
    let mut event = Map::new();
    event.insert("specversion".to_owned(), SPEC_VERSION.into());
    event.insert("id".to_owned(), id.into());
    event.insert("source".to_owned(), source.as_str().into());
    event.insert("type".to_owned(), event_type.as_str().into());
    let optional = [("subject", &flags.subject), ("partitionkey", &flags.key)];
    for (name, value) in optional {
        if let Some(value) = value {
            event.insert(name.to_owned(), value.as_str().into());
        }
    }
    if let Some((data, content_type)) = data {
        event.insert("datacontenttype".to_owned(), content_type.into());
        let (member, value) = match data {
            Data::Json(value) => ("data", value),
            Data::Text(text) => ("data", Value::String(text)),
            Data::Binary(bytes) => (
                "data_base64",
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into(),
            ),
        };
        event.insert(member.to_owned(), value);
    }
    Ok(Value::Object(event))
}

/// `id → partition P offset O`, one line per result, `(duplicate)` when it was one.
fn result_lines(results: &[PublishResult]) -> String {
    results
        .iter()
        .map(|result| {
            let duplicate = if result.duplicate { " (duplicate)" } else { "" };
            format!(
                "{} → partition {} offset {}{duplicate}\n",
                result.id, result.partition, result.offset
            )
        })
        .collect()
}

/// Where JSON Lines come from.
struct LineSource {
    /// `stdin` or the file's path, for messages.
    origin: String,
    reader: Box<dyn BufRead + Send>,
    /// Events in the input, when it can be counted up front (a file, for the progress bar).
    events: Option<u64>,
    /// How long a partial batch waits for more lines: stdin may trickle, so it is sent after
    /// [`BATCH_LINGER_MS`]; a file never waits on a producer, so its batches are always full.
    linger: Option<Duration>,
}

impl LineSource {
    fn stdin() -> Self {
        let reader = Box::new(BufReader::new(std::io::stdin()));
        Self {
            origin: "stdin".to_owned(),
            reader,
            events: None,
            linger: Some(Duration::from_millis(BATCH_LINGER_MS)),
        }
    }

    fn file(path: &Path) -> Result<Self, CliError> {
        let origin = path.display().to_string();
        let open = || File::open(path).map(BufReader::new);
        let cannot_read = |error| CliError::io(format!("read {origin}"), error);
        // Counting costs a second pass over the file, worth it only for a visible progress bar.
        let events = if std::io::stderr().is_terminal() {
            Some(count_events(open().map_err(cannot_read)?).map_err(cannot_read)?)
        } else {
            None
        };
        let reader = Box::new(open().map_err(cannot_read)?);
        Ok(Self {
            origin,
            reader,
            events,
            linger: None,
        })
    }
}

/// Number of non-blank lines: the events a JSON Lines input holds.
fn count_events(reader: impl BufRead) -> std::io::Result<u64> {
    let mut count = 0;
    for line in reader.lines() {
        if !line?.trim().is_empty() {
            count += 1;
        }
    }
    Ok(count)
}

/// One event read from JSON Lines input, ready to send.
#[derive(Debug)]
struct Line {
    /// 1-based line number in the input.
    number: u64,
    /// The event's JSON.
    event: String,
}

/// Events and duplicates published so far.
#[derive(Debug, Default)]
struct Tally {
    events: u64,
    duplicates: u64,
}

async fn publish_lines(
    client: &Client,
    args: &PublishArgs,
    source: LineSource,
    ids: Arc<EventIds>,
    json: bool,
) -> Result<(), CliError> {
    let bar = progress_bar(source.events, "events");
    let origin = source.origin.clone();
    let linger = source.linger;
    let (sender, receiver) = mpsc::channel(LINE_QUEUE_CAPACITY);
    spawn_line_reader(source, ids, sender);
    let mut batches = BatchReader::new(receiver, args.batch_size, linger);
    let mut tally = Tally::default();
    let outcome = async {
        while let Some(batch) = batches.next().await? {
            let count = batch.events.len() as u64;
            let text = send_batch(client, args, &origin, batch, json, &mut tally).await?;
            bar.suspend(|| write_stdout(&text))?;
            bar.inc(count);
        }
        Ok(())
    }
    .await;
    bar.finish_and_clear();
    if outcome.is_ok() || tally.events > 0 {
        let duplicates = match tally.duplicates {
            0 => String::new(),
            count => format!(" ({})", count_of(count, "duplicate")),
        };
        let events = count_of(tally.events, "event");
        eprintln!("published {events} to {}{duplicates}", args.topic);
    }
    outcome
}

/// Sends one batch and returns what to print for it.
async fn send_batch(
    client: &Client,
    args: &PublishArgs,
    origin: &str,
    batch: Batch,
    json: bool,
    tally: &mut Tally,
) -> Result<String, CliError> {
    let (first_line, last_line) = (batch.first_line, batch.last_line);
    let body = Body {
        content_type: CONTENT_TYPE_BATCH,
        bytes: join_batch(&batch.events),
    };
    let in_context = |source| CliError::Batch {
        origin: origin.to_owned(),
        first_line,
        last_line,
        source,
    };
    let reply = post_events(client, &args.topic, body)
        .await
        .map_err(in_context)?;
    let answer = reply.value();
    tally.events += answer.results.len() as u64;
    tally.duplicates += answer
        .results
        .iter()
        .filter(|result| result.duplicate)
        .count() as u64;
    Ok(if json {
        json_line(reply.body())
    } else if args.quiet {
        String::new()
    } else {
        result_lines(&answer.results)
    })
}

/// Reads lines on a thread of its own (stdin has no async reader here, and a slow producer must
/// not stall the runtime), completing each into an event and queueing it, until the input ends,
/// a line is bad (its error is queued last) or the publisher stops listening.
fn spawn_line_reader(
    source: LineSource,
    ids: Arc<EventIds>,
    sender: mpsc::Sender<Result<Line, CliError>>,
) {
    let LineSource { origin, reader, .. } = source;
    std::thread::spawn(move || {
        for (number, line) in (1u64..).zip(reader.lines()) {
            let item = match line {
                Err(error) => Err(CliError::io(format!("read {origin} line {number}"), error)),
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => complete_event(&text, &ids)
                    .map(|event| Line { number, event })
                    .map_err(|detail| CliError::Line {
                        origin: origin.clone(),
                        line: number,
                        detail,
                    }),
            };
            let failed = item.is_err();
            if sender.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
}

/// Checks one input line is a JSON object and fills in `specversion` and `id` when missing;
/// a complete line is kept byte for byte.
fn complete_event(line: &str, ids: &EventIds) -> Result<String, String> {
    let mut value: Value =
        serde_json::from_str(line).map_err(|error| format!("invalid JSON: {error}"))?;
    let Some(event) = value.as_object_mut() else {
        return Err("not a JSON object (one CloudEvent per line)".to_owned());
    };
    let mut completed = false;
    if !event.contains_key("specversion") {
        event.insert("specversion".to_owned(), SPEC_VERSION.into());
        completed = true;
    }
    if !event.contains_key("id") {
        event.insert("id".to_owned(), ids.next_id().into());
        completed = true;
    }
    Ok(if completed {
        value.to_string()
    } else {
        line.trim().to_owned()
    })
}

/// Consecutive input events sent in one request.
#[derive(Debug)]
struct Batch {
    first_line: u64,
    last_line: u64,
    events: Vec<String>,
}

/// Groups queued lines into batches of at most `size` events: a batch is sent once full, or
/// once no line came for `linger` (when set), so trickling input is published promptly.
struct BatchReader {
    receiver: mpsc::Receiver<Result<Line, CliError>>,
    size: u64,
    linger: Option<Duration>,
    /// A bad line met while filling the previous batch: that batch is sent first.
    pending_error: Option<CliError>,
}

impl BatchReader {
    fn new(
        receiver: mpsc::Receiver<Result<Line, CliError>>,
        size: u64,
        linger: Option<Duration>,
    ) -> Self {
        Self {
            receiver,
            size,
            linger,
            pending_error: None,
        }
    }

    /// The next batch; `None` when the input is exhausted.
    async fn next(&mut self) -> Result<Option<Batch>, CliError> {
        if let Some(error) = self.pending_error.take() {
            return Err(error);
        }
        let Some(first) = self.receiver.recv().await else {
            return Ok(None);
        };
        let first = first?;
        let mut batch = Batch {
            first_line: first.number,
            last_line: first.number,
            events: vec![first.event],
        };
        let deadline = self.linger.map(|linger| Instant::now() + linger);
        while (batch.events.len() as u64) < self.size {
            let next = async {
                match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, self.receiver.recv()).await,
                    None => Ok(self.receiver.recv().await),
                }
            };
            match next.await {
                Ok(Some(Ok(line))) => {
                    batch.last_line = line.number;
                    batch.events.push(line.event);
                }
                Ok(Some(Err(error))) => {
                    self.pending_error = Some(error);
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        Ok(Some(batch))
    }
}

/// A batched-mode body: the events' JSON joined into one array, without re-encoding them.
fn join_batch(events: &[String]) -> Vec<u8> {
    let bytes = events.iter().map(String::len).sum::<usize>() + events.len() + 1;
    let mut body = Vec::with_capacity(bytes);
    body.push(b'[');
    for (index, event) in events.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(event.as_bytes());
    }
    body.push(b']');
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_client::TestClient as _;
    use keel_testkit::server::TestServer;
    use serde_json::json;

    fn flags() -> EventArgs {
        EventArgs {
            event_type: Some("order.created".to_owned()),
            source: Some("shop".to_owned()),
            ..EventArgs::default()
        }
    }

    #[test]
    fn flags_become_a_structured_event() {
        // Goal: each flag lands in its CloudEvents attribute. Method: build from full flags.
        let event_flags = EventArgs {
            key: Some("order-1001".to_owned()),
            subject: Some("orders/1001".to_owned()),
            ..flags()
        };
        let data = event_data(br#"{"amount": 42}"#.to_vec(), None).unwrap();
        assert_eq!(
            build_event(&event_flags, "e-1".to_owned(), Some(data)).unwrap(),
            json!({"specversion": "1.0", "id": "e-1", "source": "shop", "type": "order.created",
                   "partitionkey": "order-1001", "subject": "orders/1001",
                   "datacontenttype": "application/json", "data": {"amount": 42}})
        );
        assert_eq!(
            build_event(&flags(), "e-2".to_owned(), None).unwrap(),
            json!({"specversion": "1.0", "id": "e-2", "source": "shop", "type": "order.created"})
        );
    }

    #[test]
    fn data_is_json_text_or_base64_by_content_and_media_type() {
        // Goal: the documented data rules. Method: a table of (bytes, media type) → outcome.
        let cases: [(&[u8], Option<&str>, Data, &str); 6] = [
            (b"42", None, Data::Json(json!(42)), "application/json"),
            (b"hello", None, Data::Text("hello".to_owned()), "text/plain"),
            (
                b"\xff\x00",
                None,
                Data::Binary(vec![0xff, 0]),
                "application/octet-stream",
            ),
            (
                b"42",
                Some("text/plain"),
                Data::Text("42".to_owned()),
                "text/plain",
            ),
            (
                b"[1]",
                Some("application/vnd.x+json"),
                Data::Json(json!([1])),
                "application/vnd.x+json",
            ),
            (
                b"\x89PNG",
                Some("image/png"),
                Data::Binary(b"\x89PNG".to_vec()),
                "image/png",
            ),
        ];
        for (bytes, media_type, data, expected_type) in cases {
            assert_eq!(
                event_data(bytes.to_vec(), media_type).unwrap(),
                (data, expected_type.into())
            );
        }
        let error = event_data(b"not json".to_vec(), Some("application/json")).unwrap_err();
        assert!(error.starts_with("data is not valid JSON for content type application/json"));
        let error = event_data(br#" {"amount": 42"#.to_vec(), None).unwrap_err();
        assert!(
            error.starts_with("data looks like JSON but does not parse"),
            "{error}"
        );
        let text = event_data(br#"{"amount": 42"#.to_vec(), Some("text/plain")).unwrap();
        assert_eq!(text.0, Data::Text(r#"{"amount": 42"#.to_owned()));
    }

    #[test]
    fn binary_data_goes_as_base64() {
        let data = Some((Data::Binary(vec![0xff, 0xfe]), "image/png".to_owned()));
        let event = build_event(&flags(), "e".to_owned(), data).unwrap();
        assert_eq!(event["data_base64"], "//4=");
        assert!(event.get("data").is_none());
    }

    #[test]
    fn results_print_position_and_duplicates() {
        let results = [
            PublishResult {
                id: "a".to_owned(),
                partition: 3,
                offset: 17,
                duplicate: false,
            },
            PublishResult {
                id: "b".to_owned(),
                partition: 0,
                offset: 2,
                duplicate: true,
            },
        ];
        assert_eq!(
            result_lines(&results),
            "a → partition 3 offset 17\nb → partition 0 offset 2 (duplicate)\n"
        );
    }

    #[test]
    fn lines_are_completed_only_when_needed() {
        // Goal: full events pass byte for byte; partial ones get specversion and an id.
        let ids = EventIds::with_prefix("p".to_owned());
        let full = r#" {"specversion":"1.0","id":"x","source":"s","type":"t"} "#;
        assert_eq!(complete_event(full, &ids).unwrap(), full.trim());
        let partial = complete_event(r#"{"source":"s","type":"t"}"#, &ids).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&partial).unwrap(),
            json!({"specversion": "1.0", "id": "p-0", "source": "s", "type": "t"})
        );
        assert!(
            complete_event("[1]", &ids)
                .unwrap_err()
                .contains("not a JSON object")
        );
        assert!(
            complete_event("{", &ids)
                .unwrap_err()
                .starts_with("invalid JSON")
        );
    }

    #[test]
    fn batch_is_a_json_array_of_the_events() {
        let body = join_batch(&[r#"{"id":"a"}"#.to_owned(), r#"{"id":"b"}"#.to_owned()]);
        assert_eq!(body, br#"[{"id":"a"},{"id":"b"}]"#);
        assert_eq!(join_batch(&[]), b"[]");
    }

    #[tokio::test]
    async fn events_before_a_bad_line_are_stored_in_order_and_the_error_names_its_lines() {
        // Goal: JSONL stores every event before the first bad line, in order, and names that line.
        // Method: batches of 2 to a real server; a line that is not JSON, and one it refuses.
        let good =
            |n: u32| format!(r#"{{"specversion":"1.0","id":"{n}","source":"s","type":"t"}}"#);
        let unparsable = [
            good(1),
            good(2),
            good(3),
            good(4),
            good(5),
            String::new(),
            "not json".to_owned(),
        ];
        // Line 4 lacks the required "type": the server refuses its whole batch, lines 3-4.
        let refused = [
            good(1),
            good(2),
            good(3),
            r#"{"specversion":"1.0","id":"4","source":"s"}"#.to_owned(),
            good(5),
        ];
        let cases: [(&str, &[String], usize, &str, &str); 2] = [
            (
                "unparsable",
                &unparsable,
                5,
                "events.jsonl line 7: invalid JSON",
                "",
            ),
            (
                "refused",
                &refused,
                2,
                "400 Bad Request",
                "(events.jsonl lines 3-4)",
            ),
        ];
        let server = TestServer::start_in_temp_dir().await;
        let client = server.cli_client();
        for (topic, lines, stored_count, message_start, message_end) in cases {
            server.create_topic(topic, 1).await;
            let source = LineSource {
                origin: "events.jsonl".to_owned(),
                reader: Box::new(std::io::Cursor::new(lines.join("\n").into_bytes())),
                events: None,
                linger: None,
            };
            let args = PublishArgs {
                topic: topic.to_owned(),
                event: EventArgs::default(),
                stdin: false,
                file: None,
                batch_size: 2,
                quiet: true,
            };
            let error = publish_lines(&client, &args, source, Arc::new(EventIds::new()), false)
                .await
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(message_start), "{topic}: {error}");
            assert!(error.ends_with(message_end), "{topic}: {error}");
            let expected: Vec<Value> = lines[..stored_count]
                .iter()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
            assert_eq!(server.events(topic, 0).await, expected, "{topic}");
        }
        server.stop().await;
    }

    #[test]
    fn counts_non_blank_lines() {
        assert_eq!(
            count_events(std::io::Cursor::new("a\n\n  \nb\nc")).unwrap(),
            3
        );
    }

    #[tokio::test]
    async fn event_from_flags_reads_back_as_built() {
        // Goal: an event built from flags is stored as built, and its position is printed.
        // Method: publish to a real server, then read the partition back.
        let server = TestServer::start_in_temp_dir().await;
        server.create_topic("orders", 1).await;
        let args = PublishArgs {
            topic: "orders".to_owned(),
            event: EventArgs {
                id: Some("e-1".to_owned()),
                key: Some("order-1001".to_owned()),
                subject: Some("orders/1001".to_owned()),
                data: Some("hi".to_owned()),
                ..flags()
            },
            stdin: false,
            file: None,
            batch_size: 100,
            quiet: false,
        };
        let printed = publish_one(&server.cli_client(), &args, &EventIds::new(), false)
            .await
            .unwrap();
        assert_eq!(printed, "e-1 → partition 0 offset 0\n");
        assert_eq!(
            server.events("orders", 0).await,
            [
                json!({"specversion": "1.0", "id": "e-1", "source": "shop", "type": "order.created",
                    "partitionkey": "order-1001", "subject": "orders/1001",
                    "datacontenttype": "text/plain", "data": "hi"})
            ]
        );
        server.stop().await;
    }
}

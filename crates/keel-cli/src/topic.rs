//! `keel topic`: create, list, describe and delete topics; and the topic description that
//! `tail` and `bench` read (partitions and their offsets).

use clap::{Args, Subcommand, ValueEnum};
use keel_api::topics::{FsyncPolicy, PartitionInfo, RetentionSettings, TopicInfo, TopicSettings};
use keel_client::{Answer, Client, ClientError, StatusCode};
use serde_json::Value;

use crate::error::CliError;
use crate::output::{
    Align, Table, cell, count_of, human_bytes, render_pairs, write_json_body, write_stdout,
};

/// `keel topic` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum TopicCommand {
    /// Create a topic; creating it again with the same configuration is not an error
    Create(CreateArgs),
    /// List all topics
    List,
    /// Show a topic's configuration and each partition's offsets and size
    Describe {
        /// The topic's name
        name: String,
    },
    /// Delete a topic and all its events
    Delete {
        /// The topic's name
        name: String,
        /// Delete the subscriptions that read the topic too (refused without it while any do)
        #[arg(long)]
        force: bool,
    },
}

/// Arguments of `keel topic create`; what is not given is left to the server's defaults.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct CreateArgs {
    /// The topic's name
    pub(crate) name: String,
    /// Number of partitions
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) partitions: Option<u32>,
    /// Drop events older than this, e.g. 12h or 7d
    #[arg(long, value_name = "DURATION")]
    pub(crate) retention_age: Option<String>,
    /// Drop a partition's oldest events once it holds more than this many bytes
    #[arg(long, value_name = "BYTES")]
    pub(crate) retention_bytes: Option<u64>,
    /// When a publish is made durable before it is acknowledged
    #[arg(long, value_enum)]
    pub(crate) fsync: Option<Fsync>,
    /// How long a repeated (source, id) is answered as a duplicate, e.g. 2m
    #[arg(long, value_name = "DURATION")]
    pub(crate) dedupe_window: Option<String>,
}

/// A topic's fsync policy, as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Fsync {
    /// Fsync before acknowledging (many publishes share one fsync)
    Always,
    /// Fsync on a timer: a crash may lose the last interval's acknowledged events
    Interval,
    /// Leave flushing to the operating system
    Never,
}

impl From<Fsync> for FsyncPolicy {
    fn from(fsync: Fsync) -> Self {
        match fsync {
            Fsync::Always => FsyncPolicy::Always,
            Fsync::Interval => FsyncPolicy::Interval,
            Fsync::Never => FsyncPolicy::Never,
        }
    }
}

/// Runs a `keel topic` subcommand; `json` prints the server's JSON instead of text.
pub(crate) async fn run(
    client: &Client,
    command: TopicCommand,
    json: bool,
) -> Result<(), CliError> {
    match command {
        TopicCommand::Create(args) => create(client, &args, json).await,
        TopicCommand::List => list(client, json).await,
        TopicCommand::Describe { name } => describe(client, &name, json).await,
        TopicCommand::Delete { name, force } => delete(client, &name, force, json).await,
    }
}

/// The settings that create the topic `args` describes: only those given.
fn create_settings(args: &CreateArgs) -> TopicSettings {
    TopicSettings {
        partitions: args.partitions,
        retention: RetentionSettings {
            max_age: args.retention_age.clone(),
            max_bytes: args.retention_bytes,
        },
        fsync: args.fsync.map(FsyncPolicy::from),
        fsync_interval: None,
        dedupe_window: args.dedupe_window.clone(),
    }
}

/// `PUT`s the topic: 201 when created, 200 when it already existed with this configuration.
pub(crate) async fn put_topic(
    client: &Client,
    args: &CreateArgs,
) -> Result<Answer<TopicInfo>, ClientError> {
    client
        .create_topic(&args.name, &create_settings(args))
        .await
}

async fn create(client: &Client, args: &CreateArgs, json: bool) -> Result<(), CliError> {
    let reply = put_topic(client, args).await?;
    if json {
        return write_json_body(reply.body());
    }
    let message = if reply.status() == StatusCode::CREATED {
        let partitions = reply.value().partitions.len() as u64;
        let partitions = Some(partitions).or(args.partitions.map(u64::from));
        created_message(&args.name, partitions)
    } else {
        format!(
            "topic {} already exists with this configuration\n",
            args.name
        )
    };
    write_stdout(&message)
}

/// Reads a topic's description; a missing topic is the server's 404 error.
pub(crate) async fn fetch_topic(client: &Client, name: &str) -> Result<TopicInfo, ClientError> {
    Ok(client.describe_topic(name).await?.value())
}

fn created_message(name: &str, partitions: Option<u64>) -> String {
    match partitions {
        Some(count) => format!("created topic {name} ({})\n", count_of(count, "partition")),
        None => format!("created topic {name}\n"),
    }
}

/// A `partitions` member as a count: a number, or an array with one entry per partition.
fn partition_count(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Array(partitions) => Some(partitions.len() as u64),
        other => other.as_u64(),
    }
}

async fn list(client: &Client, json: bool) -> Result<(), CliError> {
    let reply = client.list_topics().await?;
    if json {
        return write_json_body(reply.body());
    }
    let listing: Value = reply.json()?;
    let topics = listing
        .get("topics")
        .and_then(Value::as_array)
        .ok_or_else(|| ClientError::Unexpected {
            detail: "topic list has no \"topics\" array".to_owned(),
        })?;
    write_stdout(&list_text(topics))
}

fn list_text(topics: &[Value]) -> String {
    if topics.is_empty() {
        return "no topics\n".to_owned();
    }
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("PARTITIONS", Align::Right),
        ("RETENTION", Align::Left),
        ("FSYNC", Align::Left),
        ("DEDUPE WINDOW", Align::Left),
    ]);
    for topic in topics {
        table.push(vec![
            cell(topic.get("name")),
            partition_count(topic.get("partitions")).map_or("-".to_owned(), |n| n.to_string()),
            inline(topic.get("retention")),
            cell(topic.get("fsync")),
            cell(topic.get("dedupe_window")),
        ]);
    }
    table.render()
}

async fn describe(client: &Client, name: &str, json: bool) -> Result<(), CliError> {
    let reply = client.describe_topic(name).await?;
    if json {
        return write_json_body(reply.body());
    }
    let topic: Value = reply.json()?;
    let info = reply.value();
    write_stdout(&describe_text(&topic, &info.partitions))
}

/// The topic's settings as label/value lines (every member the server sent, so new ones show
/// up), a blank line, then a table of partitions with a total.
fn describe_text(topic: &Value, partitions: &[PartitionInfo]) -> String {
    let mut pairs = vec![
        ("topic".to_owned(), cell(topic.get("name"))),
        ("partitions".to_owned(), partitions.len().to_string()),
    ];
    if let Some(members) = topic.as_object() {
        let shown = members
            .iter()
            .filter(|(key, _)| !matches!(key.as_str(), "name" | "partitions"));
        pairs.extend(shown.map(|(key, value)| (key.replace('_', " "), inline(Some(value)))));
    }
    format!("{}\n{}", render_pairs(&pairs), partitions_table(partitions))
}

fn partitions_table(partitions: &[PartitionInfo]) -> String {
    let mut table = Table::new(&[
        ("PARTITION", Align::Right),
        ("START OFFSET", Align::Right),
        ("NEXT OFFSET", Align::Right),
        ("EVENTS", Align::Right),
        ("BYTES", Align::Right),
    ]);
    let events = |p: &PartitionInfo| p.next_offset.saturating_sub(p.start_offset);
    for p in partitions {
        table.push(vec![
            p.partition.to_string(),
            p.start_offset.to_string(),
            p.next_offset.to_string(),
            events(p).to_string(),
            human_bytes(p.bytes),
        ]);
    }
    let events_total: u64 = partitions.iter().map(events).sum();
    let bytes_total: u64 = partitions.iter().map(|p| p.bytes).sum();
    let total = [
        "total",
        "",
        "",
        &events_total.to_string(),
        &human_bytes(bytes_total),
    ];
    table.push(total.map(str::to_owned).to_vec());
    table.render()
}

/// A value on one line: objects as `key value, key value`, anything else as a table cell.
fn inline(value: Option<&Value>) -> String {
    match value {
        Some(Value::Object(members)) => members
            .iter()
            .map(|(key, value)| format!("{key} {}", cell(Some(value))))
            .collect::<Vec<_>>()
            .join(", "),
        other => cell(other),
    }
}

async fn delete(client: &Client, name: &str, force: bool, json: bool) -> Result<(), CliError> {
    client
        .delete_topic(name, force)
        .await
        .map_err(|error| with_force_hint(error, force))?;
    if json {
        // The server answers 204, without a body.
        return Ok(());
    }
    write_stdout(&format!("deleted topic {name}\n"))
}

/// A 409 to a delete without `--force` means subscriptions read the topic: say how to go on.
fn with_force_hint(error: ClientError, force: bool) -> ClientError {
    match error {
        ClientError::Problem {
            status: StatusCode::CONFLICT,
            title,
            detail,
            retry_after,
        } if !force => ClientError::Problem {
            status: StatusCode::CONFLICT,
            title,
            retry_after,
            detail: Some(format!(
                "{} (--force deletes the topic and its subscriptions)",
                detail.as_deref().unwrap_or("the topic has subscriptions")
            )),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_client::TestClient as _;
    use keel_testkit::server::TestServer;
    use serde_json::json;

    #[test]
    fn create_body_holds_only_given_settings() {
        // Goal: omitted flags leave the server's defaults. Method: map flag sets to bodies.
        let full = CreateArgs {
            name: "orders".to_owned(),
            partitions: Some(8),
            retention_age: Some("7d".to_owned()),
            retention_bytes: Some(1_000_000),
            fsync: Some(Fsync::Always),
            dedupe_window: Some("2m".to_owned()),
        };
        assert_eq!(
            serde_json::to_value(create_settings(&full)).unwrap(),
            json!({"partitions": 8, "retention": {"max_age": "7d", "max_bytes": 1_000_000},
                   "fsync": "always", "dedupe_window": "2m"})
        );
        let age_only = CreateArgs {
            retention_age: Some("1h".to_owned()),
            ..CreateArgs::default()
        };
        assert_eq!(
            serde_json::to_value(create_settings(&age_only)).unwrap(),
            json!({"retention": {"max_age": "1h"}})
        );
        assert_eq!(
            serde_json::to_value(create_settings(&CreateArgs::default())).unwrap(),
            json!({})
        );
    }

    #[test]
    fn list_shows_one_row_per_topic() {
        let topics = [
            json!({"name": "orders", "partitions": 8, "retention": {"max_age": "7d",
                   "max_bytes": null}, "fsync": "always", "dedupe_window": "2m"}),
            json!({"name": "audit", "partitions": [{}, {}]}),
        ];
        assert_eq!(
            list_text(&topics),
            "NAME    PARTITIONS  RETENTION                FSYNC   DEDUPE WINDOW\n\
             orders           8  max_age 7d, max_bytes -  always  2m\n\
             audit            2  -                        -       -\n"
        );
        assert_eq!(list_text(&[]), "no topics\n");
    }

    #[test]
    fn describe_shows_settings_then_partitions_with_total() {
        // Goal: every server member is shown, partitions add up. Method: render a description.
        let topic = json!({
            "name": "orders", "fsync": "always", "dedupe_window": "2m",
            "retention": {"max_age": "7d", "max_bytes": null},
            "partitions": [
                {"partition": 0, "start_offset": 0, "next_offset": 12, "bytes": 2048},
                {"partition": 1, "start_offset": 5, "next_offset": 7, "bytes": 100},
            ],
        });
        let partitions: Vec<PartitionInfo> =
            serde_json::from_value(topic["partitions"].clone()).unwrap();
        assert_eq!(
            describe_text(&topic, &partitions),
            "topic          orders\n\
             partitions     2\n\
             dedupe window  2m\n\
             fsync          always\n\
             retention      max_age 7d, max_bytes -\n\
             \n\
             PARTITION  START OFFSET  NEXT OFFSET  EVENTS    BYTES\n\
             \x20       0             0           12      12  2.0 KiB\n\
             \x20       1             5            7       2    100 B\n\
             \x20   total                                 14  2.1 KiB\n"
        );
    }

    #[test]
    fn created_message_counts_partitions() {
        assert_eq!(
            created_message("t", Some(8)),
            "created topic t (8 partitions)\n"
        );
        assert_eq!(
            created_message("t", Some(1)),
            "created topic t (1 partition)\n"
        );
        assert_eq!(created_message("t", None), "created topic t\n");
        assert_eq!(partition_count(Some(&json!([1, 2, 3]))), Some(3));
    }

    #[tokio::test]
    async fn created_topic_is_described_with_the_given_settings() {
        // Goal: every create flag reaches the server and is kept.
        // Method: create with non-default settings on a real server, then describe the topic.
        let server = TestServer::start_in_temp_dir().await;
        let client = server.cli_client();
        let args = CreateArgs {
            name: "orders".to_owned(),
            partitions: Some(3),
            retention_age: Some("7d".to_owned()),
            retention_bytes: Some(1_000_000),
            fsync: Some(Fsync::Never),
            dedupe_window: Some("90s".to_owned()),
        };
        let reply = put_topic(&client, &args).await.unwrap();
        assert_eq!(reply.status(), StatusCode::CREATED);
        let described: Value = client
            .describe_topic("orders")
            .await
            .unwrap()
            .json()
            .unwrap();
        let info = fetch_topic(&client, "orders").await.unwrap();
        assert_eq!(
            (
                &described["name"],
                &described["retention"],
                &described["fsync"],
                &described["dedupe_window"]
            ),
            (
                &json!("orders"),
                &json!({"max_age": "7d", "max_bytes": 1_000_000}),
                &json!("never"),
                &json!("90s")
            ),
            "{described}"
        );
        let partitions: Vec<_> = info.partitions.iter().map(|p| p.partition).collect();
        assert_eq!(partitions, [0, 1, 2]);
        server.stop().await;
    }
}

//! `keel dlq`: list, show, redrive and purge a subscription's dead-letter queue.

use clap::{ArgGroup, Args, Subcommand};
use keel_api::dead_letters::{Entry, RedriveRequest};
use keel_client::Client;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::CliError;
use crate::output::{Align, Table, cell, plain, write_json_body, write_stdout};
use crate::sub::{done, truncated};

/// Examples shown under `keel dlq --help`.
pub(crate) const DLQ_EXAMPLES: &str = "\
Examples:
  keel dlq list billing
  keel dlq show billing 0-17
  keel dlq redrive billing 0-17 1-4
  keel dlq redrive billing --all
  keel dlq purge billing --yes";

/// Longest last error shown in the `dlq list` table; `dlq show` shows all of it.
const LIST_ERROR_CHARS_MAX: usize = 40;

/// `keel dlq` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List a subscription's dead-lettered events, oldest first
    List {
        /// The subscription's name
        name: String,
        /// Most entries to list [default: the server's, 100]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// List the entries after this entry id (the last one of the previous page)
        #[arg(long, value_name = "ID")]
        after: Option<String>,
    },
    /// Show one entry in full: the event and its attempt history
    Show {
        /// The subscription's name
        name: String,
        /// The entry's id, e.g. 0-17 (partition-offset)
        id: String,
    },
    /// Deliver entries again, with a fresh attempt count; each leaves the DLQ once acked
    Redrive(RedriveArgs),
    /// Delete every entry of the dead-letter queue for good
    Purge {
        /// The subscription's name
        name: String,
        /// Confirm: the entries cannot be recovered
        #[arg(long)]
        yes: bool,
    },
}

/// Arguments of `keel dlq redrive`: some entries, or all of them.
#[derive(Debug, Clone, Args)]
#[command(
    group(ArgGroup::new("entries").required(true).args(["ids", "all"])),
    override_usage = "keel dlq redrive <NAME> (--all | <ID>...)"
)]
pub(crate) struct RedriveArgs {
    /// The subscription's name
    pub(crate) name: String,
    /// The entries' ids, e.g. 0-17
    #[arg(value_name = "ID")]
    pub(crate) ids: Vec<String>,
    /// Redrive every entry
    #[arg(long)]
    pub(crate) all: bool,
}

/// Runs a `keel dlq` subcommand; `json` prints the server's JSON instead of text.
pub(crate) async fn run(client: &Client, command: DlqCommand, json: bool) -> Result<(), CliError> {
    match command {
        DlqCommand::List { name, limit, after } => {
            list(client, &name, limit, after.as_deref(), json).await
        }
        DlqCommand::Show { name, id } => show(client, &name, &id, json).await,
        DlqCommand::Redrive(args) => redrive(client, &args, json).await,
        DlqCommand::Purge { name, yes } => purge(client, &name, yes, json).await,
    }
}

async fn list(
    client: &Client,
    name: &str,
    limit: Option<u64>,
    after: Option<&str>,
    json: bool,
) -> Result<(), CliError> {
    let reply = client.list_dead_letters(name, limit, after).await?;
    if json {
        return write_json_body(reply.body());
    }
    let page = reply.value();
    let next_after = page.next_after.as_deref();
    write_stdout(&list_text(name, &page.entries, next_after))
}

/// A table of entries, and how to get the next page when there is one.
fn list_text(name: &str, entries: &[Entry], next_after: Option<&str>) -> String {
    if entries.is_empty() {
        return format!("the dead-letter queue of {name} is empty\n");
    }
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("ATTEMPTS", Align::Right),
        ("LAST STATUS", Align::Right),
        ("LAST ERROR", Align::Left),
        ("LAST ATTEMPT AT", Align::Left),
        ("EVENT", Align::Left),
    ]);
    for entry in entries {
        table.push(vec![
            entry.id.to_string(),
            entry.attempts.to_string(),
            plain(&entry.last_status),
            truncated(&plain(&entry.last_error), LIST_ERROR_CHARS_MAX),
            entry.last_attempt_at.clone(),
            event_label(entry.event),
        ]);
    }
    let mut text = table.render();
    if let Some(after) = next_after {
        text.push_str(&format!("more: keel dlq list {name} --after {after}\n"));
    }
    text
}

/// `type/id` of an entry's event (the publisher's JSON, so read as such).
fn event_label(event: &RawValue) -> String {
    let event: Value = serde_json::from_str(event.get()).unwrap_or_default();
    format!("{}/{}", cell(event.get("type")), cell(event.get("id")))
}

async fn show(client: &Client, name: &str, id: &str, json: bool) -> Result<(), CliError> {
    let reply = client.show_dead_letter(name, id).await?;
    if json {
        return write_json_body(reply.body());
    }
    write_stdout(&show_text(&reply.value()))
}

/// The entry as pretty JSON, members sorted (its history aside), then its attempts as a table.
fn show_text(entry: &Entry) -> String {
    let mut fields = serde_json::to_value(entry).expect("an entry of strings, numbers and JSON");
    if let Some(members) = fields.as_object_mut() {
        members.remove("history");
    }
    let pretty = serde_json::to_string_pretty(&fields).expect("a JSON value serializes");
    let mut table = Table::new(&[
        ("ATTEMPT", Align::Right),
        ("AT", Align::Left),
        ("STATUS", Align::Right),
        ("ERROR", Align::Left),
    ]);
    for (number, attempt) in (1u64..).zip(&entry.history) {
        table.push(vec![
            number.to_string(),
            attempt.at.clone(),
            plain(&attempt.status),
            plain(&attempt.error),
        ]);
    }
    format!("{pretty}\n\nattempt history:\n{}", table.render())
}

async fn redrive(client: &Client, args: &RedriveArgs, json: bool) -> Result<(), CliError> {
    let reply = client
        .redrive_dead_letters(&args.name, &redrive_request(args))
        .await?;
    if json {
        return write_json_body(reply.body());
    }
    let redriven = reply.value().redriven as u64;
    if redriven == 0 {
        return write_stdout(&format!(
            "nothing to redrive: no entry of {} is waiting in its dead-letter queue\n",
            args.name
        ));
    }
    let count = entries_count(redriven);
    write_stdout(&format!(
        "redriving {count} of {}: each is delivered again with a fresh attempt count, and leaves the dead-letter queue once acknowledged\n",
        args.name
    ))
}

/// `1 entry`, `2 entries`.
fn entries_count(count: u64) -> String {
    if count == 1 {
        "1 entry".to_owned()
    } else {
        format!("{count} entries")
    }
}

/// `{"all": true}` or `{"ids": [...]}`.
fn redrive_request(args: &RedriveArgs) -> RedriveRequest {
    if args.all {
        RedriveRequest {
            ids: None,
            all: true,
        }
    } else {
        RedriveRequest {
            ids: Some(args.ids.clone()),
            all: false,
        }
    }
}

async fn purge(client: &Client, name: &str, yes: bool, json: bool) -> Result<(), CliError> {
    if !yes {
        return Err(CliError::Usage(format!(
            "purge deletes every entry of the dead-letter queue of {name} for good; \
             add --yes to confirm"
        )));
    }
    let reply = client.purge_dead_letters(name).await?;
    let count = entries_count(reply.value().purged as u64);
    done(
        &reply,
        json,
        &format!("purged {count} from the dead-letter queue of {name}\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A dead-letter entry as the server answers it.
    fn entry_json(id: &str, error: &str) -> String {
        json!({
            "id": id, "partition": 0, "offset": 3,
            "event": {"specversion": "1.0", "id": "e-3", "source": "s", "type": "order.created"},
            "attempts": 3, "last_status": 500, "last_error": error,
            "first_attempt_at": "2026-01-01T00:00:00.000Z",
            "last_attempt_at": "2026-01-01T00:00:01.000Z",
            "dead_lettered_at": "2026-01-01T00:00:01.000Z",
            "history": [
                {"at": "2026-01-01T00:00:00.000Z", "status": 500, "error": "HTTP 500"},
                {"at": "2026-01-01T00:00:01.000Z", "error": "timed out"},
            ],
        })
        .to_string()
    }

    #[test]
    fn list_shows_one_row_per_entry_and_the_next_page() {
        // Goal: the table cuts long errors and says how to page on. Method: render a page.
        let long = "the sink answered 500 Internal Server Error with a long body";
        let texts = [entry_json("0-3", "HTTP 500"), entry_json("1-9", long)];
        let entries: Vec<Entry> = texts
            .iter()
            .map(|text| serde_json::from_str(text).unwrap())
            .collect();
        assert_eq!(
            list_text("billing", &entries, Some("1-9")),
            "ID   ATTEMPTS  LAST STATUS  LAST ERROR                                \
             LAST ATTEMPT AT           EVENT\n\
             0-3         3          500  HTTP 500                                  \
             2026-01-01T00:00:01.000Z  order.created/e-3\n\
             1-9         3          500  the sink answered 500 Internal Server E…  \
             2026-01-01T00:00:01.000Z  order.created/e-3\n\
             more: keel dlq list billing --after 1-9\n"
        );
        assert_eq!(
            list_text("billing", &[], None),
            "the dead-letter queue of billing is empty\n"
        );
    }

    #[test]
    fn show_prints_the_entry_then_numbered_attempts() {
        let entry_text = entry_json("0-3", "HTTP 500");
        let text = show_text(&serde_json::from_str(&entry_text).unwrap());
        let (json_part, history) = text.split_once("\n\nattempt history:\n").unwrap();
        let fields: Value = serde_json::from_str(json_part).unwrap();
        assert_eq!(fields["id"], "0-3");
        assert!(fields.get("history").is_none(), "{json_part}");
        assert_eq!(
            history,
            "ATTEMPT  AT                        STATUS  ERROR\n\
             \x20     1  2026-01-01T00:00:00.000Z     500  HTTP 500\n\
             \x20     2  2026-01-01T00:00:01.000Z       -  timed out\n"
        );
    }

    #[test]
    fn redrive_takes_ids_or_all_but_not_both_nor_neither() {
        // Goal: an ambiguous redrive fails at parse time. Method: parse argument lists.
        #[derive(Debug, clap::Parser)]
        struct DlqCli {
            #[command(subcommand)]
            command: DlqCommand,
        }
        use clap::Parser as _;
        let parse = |args: &[&str]| {
            DlqCli::try_parse_from(std::iter::once("dlq").chain(args.iter().copied()))
        };
        for refused in [&["redrive", "s"][..], &["redrive", "s", "0-1", "--all"]] {
            assert!(parse(refused).is_err(), "{refused:?} must be refused");
        }
        for accepted in [
            &["redrive", "s", "--all"][..],
            &["redrive", "s", "0-1", "1-2"],
        ] {
            assert!(parse(accepted).is_ok(), "{accepted:?} must be accepted");
        }
    }

    #[test]
    fn redrive_names_ids_or_all() {
        let some = RedriveArgs {
            name: "s".to_owned(),
            ids: vec!["0-1".to_owned(), "1-2".to_owned()],
            all: false,
        };
        let body = |args: &RedriveArgs| serde_json::to_value(redrive_request(args)).unwrap();
        assert_eq!(body(&some), json!({"ids": ["0-1", "1-2"]}));
        let all = RedriveArgs {
            ids: vec![],
            all: true,
            ..some
        };
        assert_eq!(body(&all), json!({"all": true}));
    }

    #[tokio::test]
    async fn purge_without_yes_is_refused_before_any_request() {
        // Goal: an unconfirmed purge deletes nothing. Method: point the client at a port
        // nothing listens on; the refusal must come first, as a usage error.
        let server = format!("http://127.0.0.1:{}", keel_testkit::process::free_port());
        let client = Client::new(&server).unwrap();
        let error = purge(&client, "billing", false, false).await.unwrap_err();
        assert!(matches!(error, CliError::Usage(_)), "{error}");
        assert!(error.to_string().contains("--yes"), "{error}");
    }
}

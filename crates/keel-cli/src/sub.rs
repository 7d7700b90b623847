//! `keel sub`: create, list, describe, pause, resume, seek and delete subscriptions; pull
//! events from a pull subscription and ack, nack or reject them.
//!
//! Every command prints text for people by default and the server's JSON with `--json`. The
//! subscription spec is built from flags (only those given, so the server's defaults apply) or
//! read whole from a JSON file.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use keel_api::duration;
use keel_api::pull::{AckResult, PulledMessage, SettleRequest};
use keel_api::subscriptions::{
    self, CircuitSettings, CreatedSubscription, Delivery, DeliveryMode, EndpointInfo, EndpointSpec,
    HealthCheckSettings, NamedPosition, OutlierSettings, PartitionProgress, RetrySettings,
    RotateSecretRequest, SinkSettings, SinkSpec, StartPosition, Strategy, SubscriptionInfo,
    SubscriptionSettings, SubscriptionSpec,
};
use keel_client::{Answer, Client, ClientError, Decode, Settlement, StatusCode};
use keel_engine::subscription::spec::ENDPOINT_WEIGHT_MAX;
use serde_json::{Value, json};

use crate::error::CliError;
use crate::output::{
    Align, Table, cell, count_of, json_line, plain, render_pairs, write_json_body, write_stdout,
};
use crate::tail::single_line;

/// Examples shown under `keel sub --help`.
pub(crate) const SUB_EXAMPLES: &str = "\
Examples:
  keel sub create billing --topic orders --filter type=order.created --start earliest
  keel sub create hooks --topic orders --sink https://example.com/hook --filter 'type^=order.'
  keel sub create group --topic orders --strategy weighted --health-check /healthz \\
    --sink http://a:8080/hook,weight=3 --sink http://b:8080/hook
  keel sub create big --topic orders --filter 'data.amount > 100 && type == \"order.created\"'
  keel sub create billing --spec billing.json
  keel sub list
  keel sub describe billing
  keel sub pull billing --max 10 --wait 5s --ack
  keel sub nack billing <ACK_ID> --delay 2s
  keel sub seek billing --to 2026-11-25T10:00:00Z";

/// Longest paused reason shown in the `sub list` table; `sub describe` shows all of it.
const LIST_REASON_CHARS_MAX: usize = 40;

/// `keel sub` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum SubCommand {
    /// Create a subscription; creating it again with the same spec is not an error
    Create(Box<CreateArgs>),
    /// List all subscriptions with their lag, in-flight count, DLQ depth and circuit
    List,
    /// Show a subscription's spec, counters, last error and per-partition progress
    Describe {
        /// The subscription's name
        name: String,
    },
    /// Stop delivering until `resume` (pull requests are refused while paused)
    Pause {
        /// The subscription's name
        name: String,
    },
    /// Resume delivery of a paused subscription
    Resume {
        /// The subscription's name
        name: String,
    },
    /// Move where the subscription reads; deliveries in flight become stale
    Seek {
        /// The subscription's name
        name: String,
        /// earliest, latest, or an RFC 3339 time (the first event appended at or after it)
        #[arg(long, value_name = "POSITION", value_parser = position_text)]
        to: String,
    },
    /// Give a push subscription a new signing secret, printed once; the current one keeps
    /// signing beside it for --overlap, so receivers can switch without refusing a request
    RotateSecret {
        /// The subscription's name
        name: String,
        /// How long the current secret keeps signing beside the new one (e.g. 24h; at most
        /// 30d) [default: 0s, it stops at once]
        #[arg(long, value_name = "DURATION", value_parser = duration_text)]
        overlap: Option<String>,
        /// The new secret (whsec_…) [default: generated]
        #[arg(long, value_name = "SECRET")]
        secret: Option<String>,
    },
    /// Delete a subscription, its progress and its dead-letter queue
    Delete {
        /// The subscription's name
        name: String,
    },
    /// Pull events from a pull subscription; prints one JSON line per message
    Pull(PullArgs),
    /// Acknowledge pulled messages: they are done
    Ack(SettleArgs),
    /// Give pulled messages back for redelivery
    Nack(NackArgs),
    /// Dead-letter pulled messages at once, without retries
    Reject(SettleArgs),
    /// Show a stateful subscription's state: one key's, or a page of keys
    State {
        /// The subscription's name
        name: String,
        /// Show this key's state (its JSON, version and position)
        key: Option<String>,
        /// Without KEY: list keys after this one
        #[arg(long, value_name = "KEY", conflicts_with = "key")]
        after: Option<String>,
        /// Without KEY: most keys listed
        #[arg(long, value_name = "N", default_value_t = 100, conflicts_with = "key")]
        max: usize,
    },
    /// Drop a stateful subscription's state and replay its topic, so a fixed handler
    /// recomputes it; events emitted the first time are not emitted again
    Rebuild {
        /// The subscription's name
        name: String,
    },
}

/// Arguments of `keel sub create`.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct CreateArgs {
    /// The subscription's name
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) flags: SpecFlags,
    /// Read the whole spec from a JSON file (the body of PUT /v1/subscriptions/{name})
    /// instead of flags
    #[arg(long, value_name = "FILE")]
    pub(crate) spec: Option<PathBuf>,
}

/// The subscription spec as flags; only the flags given are sent, so the server's defaults
/// apply to the rest.
#[derive(Debug, Clone, Default, Args)]
#[group(id = "spec_flags", multiple = true, conflicts_with = "spec")]
pub(crate) struct SpecFlags {
    /// The topic to read
    #[arg(long, required_unless_present = "spec")]
    pub(crate) topic: Option<String>,
    /// Push events to this http(s) URL (CloudEvents binary mode, signed per Standard
    /// Webhooks); repeat it for an endpoint group; without it the subscription is pulled with
    /// `keel sub pull`
    ///
    /// Two or more make an endpoint group sharing the events by --strategy, each written URL
    /// or URL,weight=N (N from 1 to 1000, default 1: its share with --strategy weighted), e.g.
    /// --sink http://a:8080/hook,weight=3 --sink http://b:8080/hook
    #[arg(long = "sink", value_name = "URL[,weight=N]", value_parser = parse_endpoint)]
    pub(crate) sinks: Vec<EndpointSpec>,
    /// The sink's signing secret (whsec_…), shared by a group's endpoints [default: generated
    /// and printed once]
    #[arg(long, requires = "sinks", value_name = "SECRET")]
    pub(crate) secret: Option<String>,
    /// How a group's endpoints share the events [default: round_robin]
    #[arg(long, value_enum, requires = "sinks")]
    pub(crate) strategy: Option<StrategyArg>,
    /// Check each endpoint's health with a GET of PATH on its scheme, host and port [PATH
    /// default: /healthz]; a single --sink may have health checks too
    #[arg(long, value_name = "PATH", num_args = 0..=1, requires = "sinks",
        value_parser = health_path)]
    pub(crate) health_check: Option<Option<String>>,
    /// Time between health checks of one endpoint, e.g. 1s
    #[arg(long, value_name = "DURATION", value_parser = duration_text,
        requires = "health_check")]
    pub(crate) health_interval: Option<String>,
    /// Longest wait for a health check's 2xx answer, e.g. 500ms
    #[arg(long, value_name = "DURATION", value_parser = duration_text,
        requires = "health_check")]
    pub(crate) health_timeout: Option<String>,
    /// Passed health checks in a row that make an unhealthy endpoint healthy [default: 2]
    #[arg(long, value_name = "N", requires = "health_check")]
    pub(crate) healthy_threshold: Option<u32>,
    /// Failed health checks in a row that make a healthy endpoint unhealthy [default: 2]
    #[arg(long, value_name = "N", requires = "health_check")]
    pub(crate) unhealthy_threshold: Option<u32>,
    /// Failed attempts in a row (connection error, timeout or 5xx) that eject an endpoint of
    /// a group [default: 5]
    #[arg(long, value_name = "N", requires = "sinks")]
    pub(crate) eject_after: Option<u32>,
    /// The first ejection's length; each further one is as long times the ejections so far,
    /// e.g. 10s
    #[arg(long, value_name = "DURATION", value_parser = duration_text, requires = "sinks")]
    pub(crate) ejection_time: Option<String>,
    /// The longest ejection, e.g. 5m
    #[arg(long, value_name = "DURATION", value_parser = duration_text, requires = "sinks",
        alias = "max-ejection-time")]
    pub(crate) ejection_time_max: Option<String>,
    /// Most endpoints of a group ejected at once, in percent (always at least one may be)
    /// [default: 50]
    #[arg(
        long,
        value_name = "PERCENT",
        requires = "sinks",
        alias = "max-ejected-percent"
    )]
    pub(crate) ejected_percent_max: Option<u32>,
    /// Pause the subscription once its sink has been failing this long (circuit open or no
    /// endpoint available), e.g. 1h; with --health-check a passing check resumes it [default:
    /// never]
    #[arg(long, value_name = "DURATION", value_parser = duration_text, requires = "sinks")]
    pub(crate) pause_after: Option<String>,
    /// Deliver only matching events (ATTR=VALUE, ATTR^=VALUE, ATTR$=VALUE or CEL); repeat it
    /// and all must match
    ///
    /// ATTR=VALUE: the attribute equals VALUE, {"exact": {ATTR: VALUE}}; ATTR is a CloudEvents
    /// attribute name (lower-case letters and digits), e.g. type=order.created
    ///
    /// ATTR^=VALUE: the attribute starts with VALUE (prefix), e.g. type^=order.
    ///
    /// ATTR$=VALUE: the attribute ends with VALUE (suffix), e.g. type$=.created
    ///
    /// Anything else is a CEL expression, {"cel": …}, e.g.
    /// 'data.amount > 100 && type == "order.created"' (the server checks it)
    #[arg(long = "filter", value_name = "FILTER", value_parser = parse_filter)]
    pub(crate) filters: Vec<FilterArg>,
    /// Where a new subscription starts: earliest, latest or an RFC 3339 time [default:
    /// latest]
    #[arg(long, value_name = "POSITION", value_parser = position_text)]
    pub(crate) start: Option<String>,
    /// key: one event per partition key in flight at a time, in order; none: no order
    #[arg(long, value_enum)]
    pub(crate) ordering: Option<Ordering>,
    /// Most events delivered and not yet acknowledged at once
    #[arg(long, value_name = "N")]
    pub(crate) max_in_flight: Option<u32>,
    /// How long a pulled event may stay unacknowledged, or a push attempt may take, e.g. 30s
    #[arg(long, value_name = "DURATION", value_parser = duration_text)]
    pub(crate) ack_timeout: Option<String>,
    /// Attempts in all, the first included, before an event is dead-lettered
    #[arg(long, value_name = "N")]
    pub(crate) max_attempts: Option<u32>,
    /// Backoff ceiling after the first failed attempt, e.g. 1s
    #[arg(long, value_name = "DURATION", value_parser = duration_text)]
    pub(crate) retry_initial: Option<String>,
    /// Largest backoff ceiling, e.g. 5m
    #[arg(long, value_name = "DURATION", value_parser = duration_text)]
    pub(crate) retry_max: Option<String>,
    /// Growth of the backoff ceiling per failed attempt
    #[arg(long, value_name = "FACTOR")]
    pub(crate) retry_multiplier: Option<f64>,
    /// Most deliveries started per second [default: unlimited]
    #[arg(long, value_name = "EVENTS_PER_S")]
    pub(crate) rate_limit: Option<u32>,
    /// Keep one JSON state per partition key, committed with each ack (needs
    /// --ordering key; see docs/processing.md)
    #[arg(long)]
    pub(crate) stateful: bool,
    /// Turn the sink's circuit breaker off: every failed attempt then spends one of the
    /// event's attempts, also while the sink is down
    #[arg(long)]
    pub(crate) circuit_off: bool,
    /// Share of failed push attempts in the window, in percent, that opens the circuit
    /// [default: 50]
    #[arg(long, value_name = "PERCENT")]
    pub(crate) circuit_failure_rate: Option<u32>,
    /// How far back the circuit's failure rate looks, e.g. 10s
    #[arg(long, value_name = "DURATION", value_parser = duration_text)]
    pub(crate) circuit_window: Option<String>,
    /// Attempts in the window before its failure rate can open the circuit [default: 100]
    /// (--circuit-failures is its old name)
    #[arg(long, value_name = "N", alias = "circuit-failures")]
    pub(crate) circuit_min_calls: Option<u32>,
    /// Failed connections in a row that open the circuit at once [default: 3]
    #[arg(long, value_name = "N")]
    pub(crate) circuit_connect_failures: Option<u32>,
    /// Probe requests let through when the circuit half-opens [default: 10]
    #[arg(long, value_name = "N")]
    pub(crate) circuit_probes: Option<u32>,
    /// How long an open circuit waits before its probes, e.g. 5s
    #[arg(long, value_name = "DURATION", value_parser = duration_text)]
    pub(crate) circuit_cool_down: Option<String>,
    /// Longest wait of an open circuit (each failed round of probes doubles it), e.g. 5m
    #[arg(long, value_name = "DURATION", value_parser = duration_text)]
    pub(crate) circuit_cool_down_max: Option<String>,
}

/// Delivery order, as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Ordering {
    /// In order per partition key
    Key,
    /// No order
    #[value(name = "none")]
    Unordered,
}

impl From<Ordering> for subscriptions::Ordering {
    fn from(ordering: Ordering) -> Self {
        match ordering {
            Ordering::Key => subscriptions::Ordering::Key,
            Ordering::Unordered => subscriptions::Ordering::None,
        }
    }
}

/// How a group's endpoints share the events, as the API spells it (`round-robin` and
/// `key-hash` are read too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StrategyArg {
    /// Each available endpoint in turn
    #[value(name = "round_robin", alias = "round-robin")]
    RoundRobin,
    /// The first available endpoint in the listed order takes every event
    Failover,
    /// In proportion to the endpoints' weights (URL,weight=N)
    Weighted,
    /// A key's events go to one endpoint while it is available; keyless ones round robin
    #[value(name = "key_hash", alias = "key-hash")]
    KeyHash,
}

impl From<StrategyArg> for Strategy {
    fn from(strategy: StrategyArg) -> Self {
        match strategy {
            StrategyArg::RoundRobin => Strategy::RoundRobin,
            StrategyArg::Failover => Strategy::Failover,
            StrategyArg::Weighted => Strategy::Weighted,
            StrategyArg::KeyHash => Strategy::KeyHash,
        }
    }
}

/// Reads a `--sink`: `URL` or `URL,weight=N`. The URL itself is checked by the server.
pub(crate) fn parse_endpoint(text: &str) -> Result<EndpointSpec, String> {
    if text.contains(char::is_whitespace) {
        return Err(format!(
            "{text:?} has a space: give one URL per --sink (URL or URL,weight=N)"
        ));
    }
    let Some((url, weight)) = text.rsplit_once(",weight=") else {
        // `URL,name=value` with another name is a mistyped option, not part of the URL.
        if let Some((_, option)) = text.rsplit_once(',')
            && let Some((name, _)) = option.split_once('=')
            && !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "unknown endpoint option {name:?}: the only one is weight, like URL,weight=3"
            ));
        }
        return Ok(EndpointSpec {
            url: text.to_owned(),
            weight: 1,
        });
    };
    let weight = weight
        .parse::<u32>()
        .ok()
        .filter(|weight| (1..=ENDPOINT_WEIGHT_MAX).contains(weight))
        .ok_or_else(|| {
            format!(
                "{weight:?} is not a weight: use a whole number from 1 to {ENDPOINT_WEIGHT_MAX}, \
                 like {url},weight=3"
            )
        })?;
    Ok(EndpointSpec {
        url: url.to_owned(),
        weight,
    })
}

/// Checks a `--health-check` path: it is probed on each endpoint's host, so it starts with `/`.
fn health_path(text: &str) -> Result<String, String> {
    if text.starts_with('/') {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a path: it starts with '/', like /healthz (it is probed on each \
             endpoint's scheme, host and port)"
        ))
    }
}

/// One `--filter`: a shorthand for an attribute rule, or a CEL expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FilterArg {
    /// `ATTR=VALUE`, `ATTR^=VALUE` or `ATTR$=VALUE`.
    Attribute {
        /// The filter dialect: `exact`, `prefix` or `suffix`.
        dialect: &'static str,
        /// The CloudEvents attribute.
        attribute: String,
        /// What it is compared with.
        value: String,
    },
    /// Anything else.
    Cel(String),
}

impl FilterArg {
    /// The filter as the API takes it.
    fn to_json(&self) -> Value {
        match self {
            Self::Attribute {
                dialect,
                attribute,
                value,
            } => json!({ *dialect: { attribute: value } }),
            Self::Cel(expression) => json!({ "cel": expression }),
        }
    }
}

/// Reads a `--filter`: `ATTR=VALUE` (exact), `ATTR^=VALUE` (prefix), `ATTR$=VALUE` (suffix),
/// where ATTR is a CloudEvents attribute name (lower-case letters and digits); anything else,
/// `==` included, is a CEL expression. Never fails: the server checks the expression.
pub(crate) fn parse_filter(text: &str) -> Result<FilterArg, String> {
    let cel = || Ok(FilterArg::Cel(text.to_owned()));
    let Some((left, value)) = text.split_once('=') else {
        return cel();
    };
    if value.starts_with('=') {
        return cel();
    }
    let (attribute, dialect) = match left.char_indices().last() {
        Some((at, '^')) => (&left[..at], "prefix"),
        Some((at, '$')) => (&left[..at], "suffix"),
        _ => (left, "exact"),
    };
    let is_attribute_name = !attribute.is_empty()
        && attribute
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !is_attribute_name {
        return cel();
    }
    Ok(FilterArg::Attribute {
        dialect,
        attribute: attribute.to_owned(),
        value: value.to_owned(),
    })
}

/// A position as the API takes it: `"earliest"`, `"latest"` or `{"time": …}` for anything
/// else (the server checks that it is RFC 3339).
fn start_position(text: &str) -> StartPosition {
    match text {
        "earliest" => StartPosition::Named(NamedPosition::Earliest),
        "latest" => StartPosition::Named(NamedPosition::Latest),
        time => StartPosition::Time {
            time: time.to_owned(),
        },
    }
}

/// Arguments of `keel sub pull`.
#[derive(Debug, Clone, Args)]
pub(crate) struct PullArgs {
    /// The subscription's name
    pub(crate) name: String,
    /// Most messages to pull [default: the server's, 100]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max: Option<u32>,
    /// Wait this long for a first message when none is ready, e.g. 5s [default: no wait]
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub(crate) wait: Option<Duration>,
    /// Acknowledge the messages once they are printed (with --json, the ack answer follows
    /// the pull answer as a second line)
    #[arg(long)]
    pub(crate) ack: bool,
}

/// Arguments of `keel sub ack` and `keel sub reject`.
#[derive(Debug, Clone, Args)]
pub(crate) struct SettleArgs {
    /// The subscription's name
    pub(crate) name: String,
    /// Ack ids of pulled messages
    #[arg(required = true, value_name = "ACK_ID")]
    pub(crate) ack_ids: Vec<String>,
}

/// Arguments of `keel sub nack`.
#[derive(Debug, Clone, Args)]
pub(crate) struct NackArgs {
    #[command(flatten)]
    pub(crate) settle: SettleArgs,
    /// Redeliver after this long, e.g. 2s [default: the retry backoff]
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub(crate) delay: Option<Duration>,
}

/// How pulled messages are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Nack,
    Reject,
}

impl Settle {
    /// The client's name for it.
    fn settlement(self) -> Settlement {
        match self {
            Self::Ack => Settlement::Ack,
            Self::Nack => Settlement::Nack,
            Self::Reject => Settlement::Reject,
        }
    }

    fn past_tense(self) -> &'static str {
        match self {
            Self::Ack => "acknowledged",
            Self::Nack => "nacked (to be redelivered)",
            Self::Reject => "rejected (dead-lettered)",
        }
    }
}

/// Runs a `keel sub` subcommand; `json` prints the server's JSON instead of text.
pub(crate) async fn run(client: &Client, command: SubCommand, json: bool) -> Result<(), CliError> {
    match command {
        SubCommand::Create(args) => create(client, &args, json).await,
        SubCommand::List => list(client, json).await,
        SubCommand::Describe { name } => describe(client, &name, json).await,
        SubCommand::Pause { name } => {
            let reply = client.pause_subscription(&name).await?;
            done(&reply, json, &format!("paused subscription {name}\n"))
        }
        SubCommand::Resume { name } => {
            let reply = client.resume_subscription(&name).await?;
            done(&reply, json, &format!("resumed subscription {name}\n"))
        }
        SubCommand::Seek { name, to } => {
            let reply = client.seek_subscription(&name, start_position(&to)).await?;
            done(
                &reply,
                json,
                &format!("subscription {name} now reads from {to}\n"),
            )
        }
        SubCommand::RotateSecret {
            name,
            overlap,
            secret,
        } => {
            let request = RotateSecretRequest { overlap, secret };
            let reply = client.rotate_secret(&name, &request).await?;
            let rotated = reply.value();
            let until = match &rotated.previous_secret_until {
                Some(until) => format!("the previous secret signs beside it until {until}"),
                None => "the previous secret no longer signs".to_owned(),
            };
            let text = format!(
                "rotated the signing secret of subscription {name}; {until}
signing secret: {}
(shown only once: store it now)
",
                rotated.secret
            );
            done(&reply, json, &text)
        }
        SubCommand::Delete { name } => {
            client.delete_subscription(&name).await?;
            if json {
                // The server answers 204, without a body.
                return Ok(());
            }
            write_stdout(&format!("deleted subscription {name}\n"))
        }
        SubCommand::Pull(args) => pull(client, &args, json).await,
        SubCommand::Ack(args) => settle(client, &args, None, Settle::Ack, json).await,
        SubCommand::Nack(args) => {
            settle(client, &args.settle, args.delay, Settle::Nack, json).await
        }
        SubCommand::Reject(args) => settle(client, &args, None, Settle::Reject, json).await,
        SubCommand::State {
            name,
            key: Some(key),
            ..
        } => {
            let reply = client.key_state(&name, &key).await?;
            if json {
                return write_json_body(reply.body());
            }
            let state = reply.value();
            write_stdout(&format!(
                "key      {}\nversion  {}\nposition partition {} offset {}\nstate    {}\n",
                state.key,
                state.version,
                state.partition,
                state.offset,
                state.state.get()
            ))
        }
        SubCommand::State {
            name,
            key: None,
            after,
            max,
        } => state_list(client, &name, after.as_deref(), max, json).await,
        SubCommand::Rebuild { name } => {
            let reply = client.rebuild_state(&name).await?;
            done(
                &reply,
                json,
                &format!(
                    "dropped the state of subscription {name}; its topic is replayed from the start (`keel sub describe {name}` shows the lag)\n"
                ),
            )
        }
    }
}

/// `keel sub state NAME`: a page of keys with their versions and states.
async fn state_list(
    client: &Client,
    name: &str,
    after: Option<&str>,
    max: usize,
    json: bool,
) -> Result<(), CliError> {
    let reply = client.list_state(name, after, Some(max)).await?;
    if json {
        return write_json_body(reply.body());
    }
    let page = reply.value();
    if page.keys.is_empty() {
        return write_stdout(&format!("no keys with state in subscription {name}\n"));
    }
    let mut text = String::from("KEY\tVERSION\tSTATE\n");
    for key in &page.keys {
        text.push_str(&format!(
            "{}\t{}\t{}\n",
            key.key,
            key.version,
            key.state.get()
        ));
    }
    if let Some(next) = &page.next_after {
        text.push_str(&format!(
            "more keys follow: keel sub state {name} --after {next}\n"
        ));
    }
    write_stdout(&text)
}

/// Prints the server's JSON (if it sent any) with `--json`, `message` otherwise.
pub(crate) fn done<K: Decode>(
    reply: &Answer<K>,
    json: bool,
    message: &str,
) -> Result<(), CliError> {
    match (json, reply.body().is_empty()) {
        (true, true) => Ok(()),
        (true, false) => write_json_body(reply.body()),
        (false, _) => write_stdout(message),
    }
}

/// The JSON body that creates the subscription the flags describe: only what was given. A
/// group's flag given with one `--sink` is a usage error.
fn spec_body(flags: &SpecFlags) -> Result<Value, CliError> {
    let settings = SubscriptionSettings {
        topic: flags
            .topic
            .clone()
            .expect("clap requires --topic unless --spec is given"),
        filters: flags.filters.iter().map(FilterArg::to_json).collect(),
        sink: sink_settings(flags)?,
        start: flags.start.as_deref().map(start_position),
        ordering: flags.ordering.map(subscriptions::Ordering::from),
        max_in_flight: flags.max_in_flight,
        ack_timeout: flags.ack_timeout.clone(),
        retry: RetrySettings {
            max_attempts: flags.max_attempts,
            initial: flags.retry_initial.clone(),
            max: flags.retry_max.clone(),
            multiplier: flags.retry_multiplier,
        },
        circuit_breaker: CircuitSettings {
            enabled: flags.circuit_off.then_some(false),
            failure_rate_percent: flags.circuit_failure_rate,
            window: flags.circuit_window.clone(),
            min_calls: flags.circuit_min_calls,
            connect_failures: flags.circuit_connect_failures,
            probes: flags.circuit_probes,
            cool_down: flags.circuit_cool_down.clone(),
            cool_down_max: flags.circuit_cool_down_max.clone(),
        },
        rate_limit: flags.rate_limit,
        stateful: flags.stateful,
    };
    Ok(serde_json::to_value(settings).expect("a struct of strings and numbers is JSON"))
}

/// The push sink the flags describe: none without `--sink`, one URL, or a group of two or
/// more. Flags that only a group uses are refused with one `--sink`, as the server would.
fn sink_settings(flags: &SpecFlags) -> Result<Option<SinkSettings>, CliError> {
    let [first, rest @ ..] = flags.sinks.as_slice() else {
        return Ok(None);
    };
    let health_check = flags.health_check.as_ref().map(|path| HealthCheckSettings {
        path: path.clone(),
        interval: flags.health_interval.clone(),
        timeout: flags.health_timeout.clone(),
        healthy_threshold: flags.healthy_threshold,
        unhealthy_threshold: flags.unhealthy_threshold,
    });
    let outlier_detection = OutlierSettings {
        consecutive_failures: flags.eject_after,
        base_ejection_time: flags.ejection_time.clone(),
        max_ejection_time: flags.ejection_time_max.clone(),
        max_ejected_percent: flags.ejected_percent_max,
    };
    let sink = SinkSettings {
        health_check,
        pause_after: flags.pause_after.clone(),
        secret: flags.secret.clone(),
        ..SinkSettings::default()
    };
    if !rest.is_empty() {
        return Ok(Some(SinkSettings {
            endpoints: flags.sinks.clone(),
            strategy: flags.strategy.map(Strategy::from),
            outlier_detection,
            ..sink
        }));
    }
    let group_only = [
        ("--strategy", flags.strategy.is_some()),
        (
            "outlier ejection (--eject-after, --ejection-time…)",
            outlier_detection != OutlierSettings::default(),
        ),
        ("a weight (URL,weight=N)", first.weight != 1),
    ];
    if let Some((flag, _)) = group_only.iter().find(|(_, given)| *given) {
        return Err(CliError::Usage(format!(
            "{flag} applies to an endpoint group: give --sink two or more times"
        )));
    }
    Ok(Some(SinkSettings {
        url: first.url.clone(),
        ..sink
    }))
}

/// The create request's JSON: the `--spec` file as it is (the server checks it), or the flags.
fn create_request(args: &CreateArgs) -> Result<Vec<u8>, CliError> {
    match &args.spec {
        Some(path) => std::fs::read(path)
            .map_err(|error| CliError::io(format!("read {}", path.display()), error)),
        None => Ok(spec_body(&args.flags)?.to_string().into_bytes()),
    }
}

async fn create(client: &Client, args: &CreateArgs, json: bool) -> Result<(), CliError> {
    let spec = create_request(args)?;
    let reply = client
        .create_subscription_from_json(&args.name, spec)
        .await?;
    if json {
        return write_json_body(reply.body());
    }
    let created = reply.value();
    if reply.status() != StatusCode::CREATED && created.changed.is_empty() {
        let message = format!("subscription {} already exists with this spec\n", args.name);
        return write_stdout(&message);
    }
    write_stdout(&created_text(&args.name, &created))
}

/// What `sub create` prints: what it did (created, or updated in place with the members it
/// changed), the spec as the server keeps it, and a generated secret set apart so it is not
/// missed.
fn created_text(name: &str, created: &CreatedSubscription) -> String {
    let done = if created.changed.is_empty() {
        format!("created subscription {name}")
    } else {
        // An update keeps a pause (keel's too, even when it was about the old sink).
        let still_paused = created
            .info
            .paused
            .as_ref()
            .map_or(String::new(), |reason| {
                format!("\nit is still paused ({reason}): keel sub resume {name} to deliver")
            });
        format!(
            "updated subscription {name} in place (changed: {}); its position and dead letters are kept{still_paused}",
            created.changed.join(", ")
        )
    };
    let mut text = format!("{done}\n{}", render_pairs(&spec_pairs(&created.info.spec)));
    text.push_str(&endpoints_text(&created.info));
    if let Some(secret) = &created.secret {
        text.push_str(&format!(
            "\nsigning secret: {secret}\n\
             Store it now: it is shown only once. The sink checks each request's \
             webhook-signature with it.\n"
        ));
    }
    text
}

async fn list(client: &Client, json: bool) -> Result<(), CliError> {
    let reply = client.list_subscriptions().await?;
    if json {
        return write_json_body(reply.body());
    }
    let listing = reply.value();
    write_stdout(&list_text(&listing.subscriptions))
}

fn list_text(subscriptions: &[SubscriptionInfo]) -> String {
    if subscriptions.is_empty() {
        return "no subscriptions\n".to_owned();
    }
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("TOPIC", Align::Left),
        ("MODE", Align::Left),
        ("LAG", Align::Right),
        ("IN FLIGHT", Align::Right),
        ("DLQ", Align::Right),
        ("CIRCUIT", Align::Left),
        ("PAUSED", Align::Left),
    ]);
    for sub in subscriptions {
        table.push(vec![
            sub.name.clone(),
            sub.spec.topic.clone(),
            sub.mode.to_string(),
            sub.lag.to_string(),
            sub.in_flight.to_string(),
            sub.dlq_depth.to_string(),
            plain(&sub.circuit),
            truncated(&plain(&sub.paused), LIST_REASON_CHARS_MAX),
        ]);
    }
    table.render()
}

async fn describe(client: &Client, name: &str, json: bool) -> Result<(), CliError> {
    let reply = client.describe_subscription(name).await?;
    if json {
        return write_json_body(reply.body());
    }
    write_stdout(&describe_text(&reply.value()))
}

/// The description for people: spec, state and counters, then a table of partitions.
fn describe_text(info: &SubscriptionInfo) -> String {
    let mut head = vec![("subscription".to_owned(), info.name.clone())];
    head.extend(spec_pairs(&info.spec));
    let state = match subscription_state(info) {
        (word, Some(reason)) => format!("{word}: {reason}"),
        (word, None) => word.to_owned(),
    };
    head.push(("state".to_owned(), state));
    if info.mode == DeliveryMode::Push {
        head.push(("circuit".to_owned(), plain(&info.circuit)));
    }
    if let Some(health) = &info.sink_health {
        head.extend(sink_health_pairs(health));
    }
    let counters = [
        ("lag", info.lag),
        ("in flight", info.in_flight as u64),
        ("pending", info.pending as u64),
        ("delivered", info.delivered),
        ("retried", info.retried),
        ("dead lettered", info.dead_lettered),
        ("skipped by retention", info.skipped_by_retention),
        ("dlq depth", info.dlq_depth as u64),
    ];
    let mut numbers: Vec<(String, String)> = counters
        .iter()
        .map(|(label, count)| ((*label).to_owned(), count.to_string()))
        .collect();
    let last_error = match &info.last_error {
        Some(error) => format!("{} {}", error.at, error.error),
        None => "-".to_owned(),
    };
    numbers.push(("last error".to_owned(), last_error));
    format!(
        "{}{}\n{}\n{}",
        render_pairs(&head),
        endpoints_text(info),
        render_pairs(&numbers),
        progress_table(&info.partitions)
    )
}

/// Where a subscription stands, `unavailable`, `paused` or `active`, and why when it is not
/// active.
pub(crate) fn subscription_state(info: &SubscriptionInfo) -> (&'static str, Option<&str>) {
    match (&info.unavailable, &info.paused) {
        (Some(reason), _) => ("unavailable", Some(reason)),
        (_, Some(reason)) => ("paused", Some(reason)),
        _ => ("active", None),
    }
}

/// The spec as label/value lines, from a describe (or create) answer.
fn spec_pairs(spec: &SubscriptionSpec) -> Vec<(String, String)> {
    let mut pairs = vec![("topic".to_owned(), spec.topic.clone())];
    match &spec.delivery {
        Delivery::Push(sink) => pairs.extend(sink_pairs(sink)),
        Delivery::Pull => pairs.push(("mode".to_owned(), "pull".to_owned())),
    }
    for filter in &spec.filters {
        pairs.push(("filter".to_owned(), filter_text(filter)));
    }
    let start = match &spec.start {
        StartPosition::Time { time } => time.clone(),
        StartPosition::Named(NamedPosition::Earliest) => "earliest".to_owned(),
        StartPosition::Named(NamedPosition::Latest) | StartPosition::Default => "latest".to_owned(),
    };
    pairs.push(("start".to_owned(), start));
    pairs.push(("ordering".to_owned(), plain(&spec.ordering)));
    pairs.push(("max in flight".to_owned(), spec.max_in_flight.to_string()));
    pairs.push(("ack timeout".to_owned(), duration::format(spec.ack_timeout)));
    let retry = &spec.retry;
    pairs.push((
        "retry".to_owned(),
        format!(
            "{} attempts, backoff from {} ×{} up to {}",
            retry.max_attempts,
            duration::format(retry.initial),
            plain(&retry.multiplier),
            duration::format(retry.max)
        ),
    ));
    if spec.is_push() {
        pairs.push((
            "circuit breaker".to_owned(),
            circuit_text(&spec.circuit_breaker),
        ));
    }
    let rate_limit = match spec.rate_limit {
        Some(rate) => format!("{rate} events/s"),
        None => "unlimited".to_owned(),
    };
    pairs.push(("rate limit".to_owned(), rate_limit));
    pairs
}

/// A push sink as label/value lines: where it pushes (a group's endpoints are in the
/// endpoint table), its health checks, and a group's outlier ejection.
fn sink_pairs(sink: &SinkSpec) -> Vec<(String, String)> {
    let mode = if sink.endpoints.is_empty() {
        format!("push to {}", sink.url)
    } else {
        format!(
            "push to a group of {} endpoints, strategy {}",
            sink.endpoints.len(),
            plain(&sink.strategy)
        )
    };
    let mut pairs = vec![("mode".to_owned(), mode)];
    if let Some(check) = &sink.health_check {
        pairs.push((
            "health check".to_owned(),
            format!(
                "GET {} every {}, timeout {}; unhealthy after {} failed, healthy after {} passed",
                check.path,
                duration::format(check.interval),
                duration::format(check.timeout),
                check.unhealthy_threshold,
                check.healthy_threshold
            ),
        ));
    }
    if let Some(after) = sink.pause_after {
        pairs.push((
            "auto-pause".to_owned(),
            format!("after the sink fails for {}", duration::format(after)),
        ));
    }
    if !sink.endpoints.is_empty() {
        let outlier = &sink.outlier_detection;
        pairs.push((
            "outlier ejection".to_owned(),
            format!(
                "after {} failures in a row, for {} × ejections up to {}; at most {}% ejected",
                outlier.consecutive_failures,
                duration::format(outlier.base_ejection_time),
                duration::format(outlier.max_ejection_time),
                outlier.max_ejected_percent
            ),
        ));
    }
    pairs
}

/// A push sink's endpoints and where each stands, when it is a group or has health checks
/// (a lone URL without them is always available: the circuit line says all), after a blank
/// line; empty otherwise.
fn endpoints_text(info: &SubscriptionInfo) -> String {
    let Delivery::Push(sink) = &info.spec.delivery else {
        return String::new();
    };
    if info.endpoints.is_empty() || (sink.endpoints.is_empty() && sink.health_check.is_none()) {
        return String::new();
    }
    let mut table = Table::new(&[
        ("ENDPOINT", Align::Left),
        ("WEIGHT", Align::Right),
        ("STATE", Align::Left),
        ("FAILURES IN ROW", Align::Right),
        ("EJECTIONS", Align::Right),
        ("OUTAGES", Align::Right),
        ("AVAILABILITY", Align::Right),
        ("MTTR", Align::Right),
    ]);
    for (index, endpoint) in info.endpoints.iter().enumerate() {
        // Describe lists the endpoints in the spec's order.
        let weight = sink.endpoints.get(index).map(|spec| spec.weight);
        let health = endpoint.health.as_ref();
        let mttr = health.and_then(|health| health.mttr);
        table.push(vec![
            endpoint.url.clone(),
            weight.map_or("-".to_owned(), |weight| weight.to_string()),
            endpoint_state(endpoint),
            endpoint.failures_in_row.to_string(),
            endpoint.ejections.to_string(),
            health.map_or("-".to_owned(), |health| health.outages.to_string()),
            health.map_or("-".to_owned(), |health| {
                format!("{:.2}%", health.availability * 100.0)
            }),
            mttr.map_or("-".to_owned(), duration::format),
        ]);
    }
    format!("\n{}", table.render())
}

/// `available`, `ejected until T`, `unhealthy`, or both of the last two.
pub(crate) fn endpoint_state(endpoint: &EndpointInfo) -> String {
    let mut reasons = Vec::new();
    if let Some(until) = &endpoint.ejected_until {
        reasons.push(format!("ejected until {until}"));
    }
    if !endpoint.healthy {
        reasons.push("unhealthy".to_owned());
    }
    if reasons.is_empty() {
        // Healthy and not ejected is what `available` means.
        return "available".to_owned();
    }
    reasons.join(", ")
}

/// A circuit breaker policy in a line: when it opens, and how it waits.
fn circuit_text(circuit: &subscriptions::CircuitPolicy) -> String {
    if !circuit.enabled {
        return "off".to_owned();
    }
    format!(
        "opens at {}% failed of {}+ attempts in {}, or {} failed connections in a row; \
         cool-down {} (up to {}), then {} probes",
        circuit.failure_rate_percent,
        circuit.min_calls,
        duration::format(circuit.window),
        circuit.connect_failures,
        duration::format(circuit.cool_down),
        duration::format(circuit.cool_down_max),
        circuit.probes
    )
}

/// A push sink's recovery figures as label/value lines: its outages, and the last one.
fn sink_health_pairs(health: &subscriptions::SinkHealth) -> Vec<(String, String)> {
    let optional =
        |value: Option<std::time::Duration>| value.map_or("-".to_owned(), duration::format);
    let mut pairs = vec![(
        "sink outages".to_owned(),
        format!(
            "{} since {} (down {}, availability {:.2}%, MTBF {}, MTTR {})",
            health.outages,
            health.since,
            duration::format(health.down_time),
            health.availability * 100.0,
            optional(health.mtbf),
            optional(health.mttr)
        ),
    )];
    if let Some(last) = &health.last_outage {
        let recovered = match (&last.closed_at, last.time_to_recover) {
            (Some(at), Some(took)) => format!("recovered in {} at {at}", duration::format(took)),
            _ => "not recovered yet".to_owned(),
        };
        pairs.push((
            "last outage".to_owned(),
            format!(
                "opened {} ({}), detected in {}, {recovered}",
                last.opened_at,
                last.reason,
                duration::format(last.time_to_detect)
            ),
        ));
    }
    pairs
}

/// A filter as the `--filter` shorthand that makes it, or compact JSON when there is none.
fn filter_text(filter: &Value) -> String {
    let single = filter.as_object().filter(|members| members.len() == 1);
    let Some((dialect, rule)) = single.and_then(|members| members.iter().next()) else {
        return filter.to_string();
    };
    let operator = match dialect.as_str() {
        "exact" => "=",
        "prefix" => "^=",
        "suffix" => "$=",
        "cel" => return cell(Some(rule)),
        _ => return filter.to_string(),
    };
    match rule.as_object().filter(|rules| rules.len() == 1) {
        Some(rules) => rules
            .iter()
            .map(|(attribute, value)| format!("{attribute}{operator}{}", cell(Some(value))))
            .collect(),
        None => filter.to_string(),
    }
}

/// Per partition: what is committed, where reading is, the partition's end, and the lag.
fn progress_table(partitions: &[PartitionProgress]) -> String {
    let mut table = Table::new(&[
        ("PARTITION", Align::Right),
        ("COMMITTED", Align::Right),
        ("CURSOR", Align::Right),
        ("NEXT OFFSET", Align::Right),
        ("LAG", Align::Right),
    ]);
    for partition in partitions {
        let lag = partition.next_offset.saturating_sub(partition.committed);
        table.push(vec![
            partition.partition.to_string(),
            partition.committed.to_string(),
            partition.cursor.to_string(),
            partition.next_offset.to_string(),
            lag.to_string(),
        ]);
    }
    table.render()
}

/// `text` cut to `chars_max` characters, ending in `…` when it was cut.
pub(crate) fn truncated(text: &str, chars_max: usize) -> String {
    if text.chars().count() <= chars_max {
        return text.to_owned();
    }
    let kept: String = text.chars().take(chars_max.saturating_sub(1)).collect();
    format!("{kept}…")
}

async fn pull(client: &Client, args: &PullArgs, json: bool) -> Result<(), CliError> {
    let max = args.max.map(|max| max as usize);
    let reply = client.pull(&args.name, max, args.wait).await?;
    let pulled = reply.value();
    let output = if json {
        json_line(reply.body())
    } else {
        pulled.messages.iter().map(message_line).collect()
    };
    write_stdout(&output)?;
    if pulled.messages.is_empty() && !json {
        // Stdout holds only messages; the note goes to stderr, like nats does.
        eprintln!("no messages");
    }
    if !args.ack || pulled.messages.is_empty() {
        return Ok(());
    }
    let ack_ids = pulled
        .messages
        .into_iter()
        .map(|m| m.ack_id.into_owned())
        .collect();
    let reply = settle_request(client, &args.name, ack_ids, None, Settle::Ack).await?;
    if json {
        return write_json_body(reply.body());
    }
    let settled = reply.value();
    eprintln!("acknowledged {}", settled.settled);
    if !settled.stale.is_empty() {
        // Stdout holds only messages; the warning goes with errors.
        eprintln!("warning: {}", stale_text(&settled.stale).trim_end());
    }
    Ok(())
}

/// A pulled message as one JSON line, members in the documented order; an event stored
/// across several lines is compacted.
fn message_line(message: &PulledMessage) -> String {
    let line = PulledMessage {
        ack_id: Cow::Borrowed(&*message.ack_id),
        attempt: message.attempt,
        partition: message.partition,
        offset: message.offset,
        event: single_line(message.event),
        // Stored compact (one line) by the server.
        state: message.state,
        state_version: message.state_version,
    };
    serde_json::to_string(&line).expect("strings, numbers and raw JSON serialize") + "\n"
}

async fn settle_request(
    client: &Client,
    name: &str,
    ack_ids: Vec<String>,
    delay: Option<Duration>,
    action: Settle,
) -> Result<Answer<AckResult>, ClientError> {
    let body = SettleRequest {
        ack_ids,
        acks: Vec::new(),
        delay,
    };
    client.settle(name, action.settlement(), &body).await
}

async fn settle(
    client: &Client,
    args: &SettleArgs,
    delay: Option<Duration>,
    action: Settle,
    json: bool,
) -> Result<(), CliError> {
    let ack_ids = args.ack_ids.clone();
    let reply = settle_request(client, &args.name, ack_ids, delay, action).await?;
    if json {
        return write_json_body(reply.body());
    }
    write_stdout(&settled_text(action, &reply.value()))
}

/// `acknowledged 2 messages`, and a line naming the stale ack ids, if any.
fn settled_text(action: Settle, settled: &AckResult) -> String {
    let mut text = format!(
        "{} {}\n",
        action.past_tense(),
        count_of(settled.settled as u64, "message")
    );
    if !settled.stale.is_empty() {
        text.push_str(&stale_text(&settled.stale));
    }
    text
}

fn stale_text(stale: &[String]) -> String {
    format!(
        "{} stale (settled already, timed out or redelivered; nothing done): {}\n",
        count_of(stale.len() as u64, "ack id"),
        stale.join(", ")
    )
}

/// Checks a position flag (`earliest`, `latest` or an RFC 3339 time) before anything is sent.
fn position_text(text: &str) -> Result<String, String> {
    let valid = matches!(text, "earliest" | "latest")
        || keel_engine::clock::parse_rfc3339_ms(text).is_some();
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a position: use earliest, latest or an RFC 3339 time with its offset, like 2026-11-25T10:00:00Z"
        ))
    }
}

/// Reads a duration flag (`500ms`, `30s`, `2m`, `1h`, `7d`), so a bad one is refused before
/// anything is sent, with an error naming the flag.
fn duration_arg(text: &str) -> Result<Duration, String> {
    duration::parse(text).map_err(|_| {
        format!(
            "{text:?} is not a duration: use a whole number and ms, s, m, h or d, like 500ms or 30s"
        )
    })
}

/// Checks a duration flag as [`duration_arg`] does; the server gets the text as given.
fn duration_text(text: &str) -> Result<String, String> {
    duration_arg(text).map(|_| text.to_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_client::TestClient as _;
    use clap::Parser;
    use keel_testkit::server::TestServer;
    use serde_json::value::RawValue;

    /// `keel sub create`'s arguments alone, parsed as clap parses them.
    #[derive(Debug, Parser)]
    struct CreateCli {
        #[command(flatten)]
        args: CreateArgs,
    }

    fn parse_create(args: &[&str]) -> Result<CreateArgs, clap::Error> {
        let argv = std::iter::once("create").chain(args.iter().copied());
        CreateCli::try_parse_from(argv).map(|cli| cli.args)
    }

    #[test]
    fn filter_shorthands_become_attribute_filters_and_the_rest_cel() {
        // Goal: the documented shorthands, and that CEL containing `=` is never mistaken for
        // one. Method: a table of --filter texts and the API filter each must become.
        let cases = [
            (
                "type=order.created",
                json!({"exact": {"type": "order.created"}}),
            ),
            ("type^=order.", json!({"prefix": {"type": "order."}})),
            ("type$=.created", json!({"suffix": {"type": ".created"}})),
            ("subject=a=b", json!({"exact": {"subject": "a=b"}})),
            ("type=", json!({"exact": {"type": ""}})),
            ("type == 'x'", json!({"cel": "type == 'x'"})),
            ("type=='x'", json!({"cel": "type=='x'"})),
            ("type!='x'", json!({"cel": "type!='x'"})),
            ("data.amount>=5", json!({"cel": "data.amount>=5"})),
            ("data.amount=5", json!({"cel": "data.amount=5"})),
            ("Type=x", json!({"cel": "Type=x"})),
            ("=x", json!({"cel": "=x"})),
            ("^=x", json!({"cel": "^=x"})),
            ("data.amount > 100", json!({"cel": "data.amount > 100"})),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_filter(text).unwrap().to_json(), expected, "{text}");
        }
    }

    #[test]
    fn flags_become_a_spec_holding_only_what_was_given() {
        // Goal: each flag lands on its API field, omitted ones leave the server's defaults.
        // Method: parse full and minimal flag sets with clap, compare the bodies.
        let full = parse_create(&[
            "hooks",
            "--topic",
            "orders",
            "--sink",
            "https://example.test/hook",
            "--secret",
            "whsec_abc",
            "--filter",
            "type=order.created",
            "--filter",
            "data.amount > 100",
            "--start",
            "2026-01-02T03:04:05Z",
            "--ordering",
            "key",
            "--max-in-flight",
            "7",
            "--ack-timeout",
            "500ms",
            "--max-attempts",
            "3",
            "--retry-initial",
            "50ms",
            "--retry-max",
            "1s",
            "--retry-multiplier",
            "1.5",
            "--rate-limit",
            "20",
            "--circuit-failure-rate",
            "40",
            "--circuit-window",
            "5s",
            "--circuit-min-calls",
            "2",
            "--circuit-connect-failures",
            "4",
            "--circuit-probes",
            "3",
            "--circuit-cool-down",
            "300ms",
            "--circuit-cool-down-max",
            "1m",
        ])
        .unwrap();
        assert_eq!(
            spec_body(&full.flags).unwrap(),
            json!({
                "topic": "orders",
                "sink": {"url": "https://example.test/hook", "secret": "whsec_abc"},
                "filters": [{"exact": {"type": "order.created"}}, {"cel": "data.amount > 100"}],
                "start": {"time": "2026-01-02T03:04:05Z"},
                "ordering": "key",
                "max_in_flight": 7,
                "ack_timeout": "500ms",
                "retry": {"max_attempts": 3, "initial": "50ms", "max": "1s", "multiplier": 1.5},
                "circuit_breaker": {"failure_rate_percent": 40, "window": "5s",
                    "min_calls": 2, "connect_failures": 4, "probes": 3, "cool_down": "300ms",
                    "cool_down_max": "1m"},
                "rate_limit": 20,
            })
        );
        // The old flag names min_calls, as the old JSON member does; the breaker can be off.
        let old = parse_create(&[
            "p",
            "--topic",
            "t",
            "--circuit-failures",
            "2",
            "--circuit-off",
        ]);
        assert_eq!(
            spec_body(&old.unwrap().flags).unwrap(),
            json!({"topic": "t", "circuit_breaker": {"enabled": false, "min_calls": 2}})
        );
        let minimal = parse_create(&["p", "--topic", "orders", "--start", "earliest"]).unwrap();
        assert_eq!(
            spec_body(&minimal.flags).unwrap(),
            json!({"topic": "orders", "start": "earliest"})
        );
        let some_retry = parse_create(&[
            "p",
            "--topic",
            "t",
            "--ordering",
            "none",
            "--max-attempts",
            "1",
        ]);
        assert_eq!(
            spec_body(&some_retry.unwrap().flags).unwrap(),
            json!({"topic": "t", "ordering": "none", "retry": {"max_attempts": 1}})
        );
    }

    #[test]
    fn repeated_sinks_become_an_endpoint_group_with_its_policies() {
        // Goal: two or more --sink make `endpoints` (weights read from URL,weight=N), and the
        // group's flags land on their API members; --health-check alone turns checks on with
        // the server's defaults, also for one URL. Method: parse flag sets, compare the bodies.
        let group = parse_create(&[
            "g",
            "--topic",
            "t",
            "--sink",
            "http://a/h,weight=3",
            "--sink",
            "http://b/h?x=1,2",
            "--strategy",
            "key-hash",
            "--health-check",
            "/ping",
            "--health-interval",
            "250ms",
            "--health-timeout",
            "100ms",
            "--healthy-threshold",
            "3",
            "--unhealthy-threshold",
            "4",
            "--eject-after",
            "2",
            "--ejection-time",
            "1s",
            "--max-ejection-time",
            "1m",
            "--ejected-percent-max",
            "30",
        ])
        .unwrap();
        assert_eq!(
            spec_body(&group.flags).unwrap()["sink"],
            json!({
                "endpoints": [{"url": "http://a/h", "weight": 3},
                    {"url": "http://b/h?x=1,2", "weight": 1}],
                "strategy": "key_hash",
                "health_check": {"path": "/ping", "interval": "250ms", "timeout": "100ms",
                    "healthy_threshold": 3, "unhealthy_threshold": 4},
                "outlier_detection": {"consecutive_failures": 2, "base_ejection_time": "1s",
                    "max_ejection_time": "1m", "max_ejected_percent": 30},
            })
        );
        let checked = parse_create(&[
            "s",
            "--topic",
            "t",
            "--sink",
            "http://a/h",
            "--health-check",
        ]);
        assert_eq!(
            spec_body(&checked.unwrap().flags).unwrap()["sink"],
            json!({"url": "http://a/h", "health_check": {}})
        );
    }

    #[test]
    fn group_flags_are_refused_without_a_group() {
        // Goal: a flag only a group uses, a bad weight, a mistyped endpoint option, a --sink
        // holding two URLs, a relative health path or a health setting without
        // --health-check is refused before anything is sent, saying why.
        // Method: argument lists refused by clap (with the message's key words) or by
        // spec_body (a usage error).
        let by_clap: [(&[&str], &str); 6] = [
            (&["--sink", "http://a/h,weight=0"], "not a weight"),
            (&["--sink", "http://a/h,weight=x"], "not a weight"),
            (
                &["--sink", "http://a/h,wieght=2"],
                "unknown endpoint option \"wieght\"",
            ),
            (&["--sink", "http://a/1 --sink http://a/2"], "has a space"),
            (
                &["--sink", "http://a/h", "--health-check", "ping"],
                "not a path",
            ),
            (
                &["--sink", "http://a/h", "--health-interval", "1s"],
                "--health-check",
            ),
        ];
        for (flags, says) in by_clap {
            let args = [&["s", "--topic", "t"], flags].concat();
            let error = parse_create(&args).unwrap_err().to_string();
            assert!(error.contains(says), "{flags:?}: {error}");
        }
        assert!(parse_create(&["s", "--topic", "t", "--strategy", "failover"]).is_err());
        let single: [&[&str]; 3] = [
            &["--sink", "http://a/h", "--strategy", "failover"],
            &["--sink", "http://a/h", "--eject-after", "2"],
            &["--sink", "http://a/h,weight=2"],
        ];
        for flags in single {
            let args = [&["s", "--topic", "t"], flags].concat();
            let error = spec_body(&parse_create(&args).unwrap().flags).unwrap_err();
            assert!(
                matches!(&error, CliError::Usage(text) if text.contains("endpoint group")),
                "{flags:?}: {error}"
            );
        }
    }

    #[test]
    fn spec_file_and_flags_exclude_each_other() {
        // Goal: --spec is the whole spec: no flag may be mixed in, and --topic is needed
        // without it; --secret needs --sink. Method: argument lists clap must refuse or accept.
        let refused: [&[&str]; 4] = [
            &["s"],
            &["s", "--spec", "f.json", "--topic", "t"],
            &["s", "--spec", "f.json", "--filter", "type=x"],
            &["s", "--topic", "t", "--secret", "whsec_x"],
        ];
        for args in refused {
            assert!(parse_create(args).is_err(), "{args:?} must be refused");
        }
        let spec = parse_create(&["s", "--spec", "f.json"]).unwrap();
        assert_eq!(spec.spec, Some(PathBuf::from("f.json")));
    }

    #[test]
    fn positions_are_named_ends_or_times() {
        let position_json = |text| serde_json::to_value(start_position(text)).unwrap();
        assert_eq!(position_json("earliest"), json!("earliest"));
        assert_eq!(position_json("latest"), json!("latest"));
        assert_eq!(
            position_json("2026-11-25T10:00:00Z"),
            json!({"time": "2026-11-25T10:00:00Z"})
        );
    }

    // Goal: position and duration flags are checked before anything is sent, with a message
    // that says what to write instead.
    #[test]
    fn position_and_duration_flags_are_checked_locally() {
        for good in [
            "earliest",
            "latest",
            "2026-11-25T10:00:00Z",
            "2026-11-25T10:00:00+01:00",
        ] {
            assert_eq!(position_text(good).as_deref(), Ok(good));
        }
        for bad in ["yesterday", "2026-11-25T10:00:00", "2026-11-25"] {
            let error = position_text(bad).unwrap_err();
            assert!(error.contains("like 2026-11-25T10:00:00Z"), "{error}");
        }
        assert_eq!(duration_text("500ms").as_deref(), Ok("500ms"));
        for bad in ["5", "1.5s", "soon"] {
            let error = duration_text(bad).unwrap_err();
            assert!(error.contains("like 500ms or 30s"), "{error}");
        }
    }

    #[test]
    fn describe_shows_spec_state_counters_and_partitions() {
        // Goal: a readable description with shorthand filters, the breaker (an old spec's, its
        // `failures` read as min_calls), the sink's outages, the pause reason and each
        // partition's lag. Method: render a push subscription's describe answer.
        let info = json!({
            "name": "hooks", "topic": "orders",
            "filters": [{"prefix": {"type": "order."}}, {"cel": "data.amount > 1"},
                        {"any": [{"exact": {"type": "a"}}]}],
            "sink": {"url": "http://h/x", "secret": null}, "start": "earliest",
            "ordering": "key", "max_in_flight": 100, "ack_timeout": "30s",
            "retry": {"max_attempts": 10, "initial": "1s", "max": "5m", "multiplier": 2.0},
            "circuit_breaker": {"failures": 8, "cool_down": "10s"},
            "mode": "push", "paused": "sink answered 410 Gone", "lag": 4, "in_flight": 1,
            "pending": 2, "delivered": 9, "retried": 3, "dead_lettered": 1,
            "skipped_by_retention": 0, "dlq_depth": 1, "circuit": "open",
            "sink_health": {"since": "2026-01-01T00:00:00.000Z", "outages": 1,
                "down_time": "3s", "mtbf": "57s", "mttr": "3s", "availability": 0.95,
                "last_outage": {"opened_at": "2026-01-01T00:00:57.000Z",
                    "reason": "3 connections in a row failed", "time_to_detect": "12ms",
                    "closed_at": null, "time_to_recover": null}},
            "last_error": {"at": "2026-01-01T00:00:00.000Z", "error": "HTTP 500"},
            "unavailable": null,
            "partitions": [{"partition": 0, "committed": 5, "cursor": 7, "next_offset": 9}],
        });
        let info: SubscriptionInfo = serde_json::from_value(info).unwrap();
        assert_eq!(
            describe_text(&info),
            "subscription     hooks\n\
             topic            orders\n\
             mode             push to http://h/x\n\
             filter           type^=order.\n\
             filter           data.amount > 1\n\
             filter           {\"any\":[{\"exact\":{\"type\":\"a\"}}]}\n\
             start            earliest\n\
             ordering         key\n\
             max in flight    100\n\
             ack timeout      30s\n\
             retry            10 attempts, backoff from 1s ×2.0 up to 5m\n\
             circuit breaker  opens at 50% failed of 8+ attempts in 10s, or 3 failed connections \
             in a row; cool-down 5s (up to 5m), then 10 probes\n\
             rate limit       unlimited\n\
             state            paused: sink answered 410 Gone\n\
             circuit          open\n\
             sink outages     1 since 2026-01-01T00:00:00.000Z (down 3s, availability 95.00%, \
             MTBF 57s, MTTR 3s)\n\
             last outage      opened 2026-01-01T00:00:57.000Z (3 connections in a row failed), \
             detected in 12ms, not recovered yet\n\
             \n\
             lag                   4\n\
             in flight             1\n\
             pending               2\n\
             delivered             9\n\
             retried               3\n\
             dead lettered         1\n\
             skipped by retention  0\n\
             dlq depth             1\n\
             last error            2026-01-01T00:00:00.000Z HTTP 500\n\
             \n\
             PARTITION  COMMITTED  CURSOR  NEXT OFFSET  LAG\n\
             \x20       0          5       7            9    4\n"
        );
    }

    #[test]
    fn describe_shows_a_groups_strategy_policies_and_endpoint_states() {
        // Goal: a group describes as its strategy, health check and ejection policy, then one
        // row per endpoint with its weight, state (available, ejected until T, unhealthy) and
        // recovery figures when it has them, never an empty URL. Method: render a group's
        // describe answer.
        let info = described(json!({"name": "g", "topic": "orders", "mode": "push",
            "sink": {"endpoints": [{"url": "http://a/h", "weight": 3},
                {"url": "http://b/h", "weight": 1}, {"url": "http://c/h", "weight": 1}],
                "strategy": "weighted", "health_check": {"path": "/ping"}, "secret": null},
            "circuit": "closed",
            "endpoints": [
                {"url": "http://a/h", "available": true, "healthy": true, "ejected_until": null,
                 "ejections": 0, "failures_in_row": 0},
                {"url": "http://b/h", "available": false, "healthy": false,
                 "ejected_until": "2026-01-01T00:00:10.000Z", "ejections": 2,
                 "failures_in_row": 5, "health": {"since": "2026-01-01T00:00:00.000Z",
                 "outages": 2, "down_time": "15s", "mtbf": "45s", "mttr": "7500ms",
                 "availability": 0.857, "last_outage": null}},
                {"url": "http://c/h", "available": false, "healthy": false,
                 "ejected_until": null, "ejections": 0, "failures_in_row": 0}]}));
        let text = describe_text(&info);
        let head = "subscription      g\n\
             topic             orders\n\
             mode              push to a group of 3 endpoints, strategy weighted\n\
             health check      GET /ping every 1s, timeout 500ms; unhealthy after 2 failed, \
             healthy after 2 passed\n\
             outlier ejection  after 5 failures in a row, for 10s × ejections up to 5m; at most \
             50% ejected\n";
        assert!(text.starts_with(head), "{text}");
        let table = [
            "ENDPOINT    WEIGHT  STATE                                              FAILURES IN ROW  EJECTIONS  OUTAGES  AVAILABILITY    MTTR",
            "http://a/h       3  available                                                        0          0        -             -       -",
            "http://b/h       1  ejected until 2026-01-01T00:00:10.000Z, unhealthy                5          2        2        85.70%  7500ms",
            "http://c/h       1  unhealthy                                                        0          0        -             -       -",
        ]
        .map(|row| format!("{row}\n"))
        .concat();
        let table = format!("\n{table}\n");
        assert!(text.contains(&table), "{text}");
    }

    /// A describe answer: `members` over a pull subscription's defaults.
    pub(crate) fn described(members: Value) -> SubscriptionInfo {
        let mut info = json!({"name": "", "topic": "", "mode": "pull", "paused": null,
            "lag": 0, "in_flight": 0, "pending": 0, "delivered": 0, "retried": 0,
            "dead_lettered": 0, "skipped_by_retention": 0, "dlq_depth": 0, "circuit": null,
            "last_error": null, "unavailable": null, "partitions": []});
        let fields = info.as_object_mut().unwrap();
        fields.extend(members.as_object().unwrap().clone());
        serde_json::from_value(info).unwrap()
    }

    #[test]
    fn list_shows_one_row_per_subscription() {
        let subscriptions = [
            described(
                json!({"name": "p", "topic": "orders", "mode": "pull", "lag": 3,
                   "in_flight": 0, "dlq_depth": 1, "circuit": null, "paused": null}),
            ),
            described(
                json!({"name": "hooks", "topic": "orders", "mode": "push", "lag": 0,
                   "in_flight": 12, "dlq_depth": 0, "circuit": "half_open",
                   "paused": "paused by an operator and a reason that goes on and on"}),
            ),
        ];
        assert_eq!(
            list_text(&subscriptions),
            "NAME   TOPIC   MODE  LAG  IN FLIGHT  DLQ  CIRCUIT    PAUSED\n\
             p      orders  pull    3          0    1  -          -\n\
             hooks  orders  push    0         12    0  half_open  \
             paused by an operator and a reason that…\n"
        );
        assert_eq!(list_text(&[]), "no subscriptions\n");
    }

    #[test]
    fn pulled_message_is_one_line_with_members_in_order() {
        // Goal: `sub pull` output is JSON Lines with the documented member order, even for an
        // event stored pretty-printed. Method: format a message whose event spans lines.
        let event = RawValue::from_string("{\n  \"id\": \"e-1\"\n}".to_owned()).unwrap();
        let message = PulledMessage {
            ack_id: Cow::Borrowed("AbC"),
            attempt: 2,
            partition: 1,
            offset: 17,
            event: &*event,
            state: None,
            state_version: None,
        };
        assert_eq!(
            message_line(&message),
            "{\"ack_id\":\"AbC\",\"attempt\":2,\"partition\":1,\"offset\":17,\
             \"event\":{\"id\":\"e-1\"}}\n"
        );
    }

    #[test]
    fn settled_text_names_stale_ids() {
        let fresh = AckResult {
            settled: 2,
            stale: vec![],
            results: vec![],
        };
        assert_eq!(
            settled_text(Settle::Ack, &fresh),
            "acknowledged 2 messages\n"
        );
        let stale = AckResult {
            settled: 0,
            stale: vec!["a".to_owned(), "b".to_owned()],
            results: vec![],
        };
        assert_eq!(
            settled_text(Settle::Reject, &stale),
            "rejected (dead-lettered) 0 messages\n\
             2 ack ids stale (settled already, timed out or redelivered; nothing done): a, b\n"
        );
    }

    #[tokio::test]
    async fn every_flag_reaches_the_server_and_is_kept() {
        // Goal: the flag-built body uses the API's field names and value forms (a misspelt
        // field would be refused as unknown). Method: create a push subscription from every
        // flag on a real server, then compare its description with the flags.
        let server = TestServer::start_in_temp_dir().await;
        server.create_topic("orders", 2).await;
        let client = server.cli_client();
        let args = parse_create(&[
            "hooks",
            "--topic",
            "orders",
            "--sink",
            "http://127.0.0.1:9/hook",
            "--filter",
            "type^=order.",
            "--filter",
            "data.amount > 100",
            "--start",
            "earliest",
            "--ordering",
            "key",
            "--max-in-flight",
            "7",
            "--ack-timeout",
            "500ms",
            "--max-attempts",
            "3",
            "--retry-initial",
            "50ms",
            "--retry-max",
            "2s",
            "--retry-multiplier",
            "1.5",
            "--rate-limit",
            "20",
            "--circuit-failures",
            "2",
            "--circuit-cool-down",
            "300ms",
        ])
        .unwrap();
        let spec = create_request(&args).unwrap();
        let reply = client
            .create_subscription_from_json("hooks", spec)
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::CREATED);
        let created: Value = reply.json().unwrap();
        assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
        let described: Value = client
            .describe_subscription("hooks")
            .await
            .unwrap()
            .json()
            .unwrap();
        let kept = |key: &str| described[key].clone();
        assert_eq!(
            [
                "filters",
                "ordering",
                "max_in_flight",
                "ack_timeout",
                "retry"
            ]
            .map(kept),
            [
                json!([{"prefix": {"type": "order."}}, {"cel": "data.amount > 100"}]),
                json!("key"),
                json!(7),
                json!("500ms"),
                json!({"max_attempts": 3, "initial": "50ms", "max": "2s", "multiplier": 1.5}),
            ],
            "{described}"
        );
        assert_eq!(
            ["circuit_breaker", "rate_limit", "mode"].map(kept),
            [
                json!({"enabled": true, "failure_rate_percent": 50, "window": "10s",
                    "min_calls": 2, "connect_failures": 3, "probes": 10, "cool_down": "300ms",
                    "cool_down_max": "5m"}),
                json!(20),
                json!("push")
            ],
            "{described}"
        );
        server.stop().await;
    }
}

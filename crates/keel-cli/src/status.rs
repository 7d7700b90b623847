//! `keel status`: the health of the whole server on one screen, composed from the API
//! (`/readyz`, topics, subscriptions, failed tasks, alerts), and for each problem a next step.
//!
//! Exit code: 0 when nothing needs attention, 1 when something does (or the server could not
//! be asked), so scripts can use it.

use std::collections::HashMap;

use keel_api::alerts::{AlertList, AlertState, AlertStatus};
use keel_api::duration;
use keel_api::health::{Readiness, ReadyStatus, TaskHealth, TaskState, Tasks};
use keel_api::subscriptions::{
    CircuitState, Delivery, EndpointInfo, SubscriptionInfo, SubscriptionList,
};
use keel_api::topics::{TopicInfo, TopicList};
use keel_client::{Answer, Client, ClientError};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::CliError;
use crate::output::{Align, Table, count_of, figure, human_bytes, plain, write_stdout};
use crate::sub::{endpoint_state, subscription_state};

/// Shown under `keel status --help`.
pub(crate) const STATUS_HELP: &str = "\
It shows readiness, topics (events, size, retention and how full the fullest partition is),
subscriptions (state, lag, dead letters, circuit, sink availability), the endpoints of
groups, failed tasks and firing or pending alerts; then each problem with a next step.

Problems: the server not ready; publishing refused for a full disk (507); a partition or
subscription unavailable; a subscription
paused, with dead letters, with events deleted by retention before delivery, or with its
circuit open or half-open; an endpoint not available; a task failing or failed; an alert
firing.

Exit codes: 0 nothing needs attention, 1 something does (or the server could not be asked),
2 usage error. With --json: {\"healthy\", \"problems\": [{subject, problem, next_step}],
\"readiness\", \"topics\", \"subscriptions\", \"tasks\", \"alerts\"}, the last five as the API
answers them.

Examples:
  keel status
  keel status --json | jq .problems
  keel status > /dev/null || echo 'keel needs attention'";

/// What the server answered: readiness, and the rest when it serves (none while it recovers
/// or its data directory is damaged: it answers nothing else then).
struct Answers {
    readiness: Answer<Readiness>,
    serving: Option<Serving>,
}

/// The answers of a server that serves.
struct Serving {
    topics: Answer<TopicList>,
    subscriptions: Answer<SubscriptionList>,
    tasks: Answer<Tasks>,
    alerts: Answer<AlertList>,
}

/// The figures the report is made of, decoded.
struct Health {
    readiness: Readiness,
    topics: Vec<TopicInfo>,
    subscriptions: Vec<SubscriptionInfo>,
    tasks: Vec<TaskHealth>,
    alerts: Vec<AlertStatus>,
}

impl Health {
    /// The answers decoded; no topics, subscriptions, tasks or alerts from a server that does
    /// not serve.
    fn of(answers: &Answers) -> Self {
        let readiness = answers.readiness.value();
        match &answers.serving {
            Some(serving) => Self {
                readiness,
                topics: serving.topics.value().topics,
                subscriptions: serving.subscriptions.value().subscriptions,
                tasks: serving.tasks.value().tasks,
                alerts: serving.alerts.value().alerts,
            },
            None => Self {
                readiness,
                topics: Vec::new(),
                subscriptions: Vec::new(),
                tasks: Vec::new(),
                alerts: Vec::new(),
            },
        }
    }
}

/// Something that needs attention, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Problem {
    /// What it is about, e.g. `subscription billing`.
    pub(crate) subject: String,
    /// What is wrong.
    pub(crate) problem: String,
    /// The next step.
    pub(crate) next_step: String,
}

impl Problem {
    fn new(subject: String, problem: String, next_step: String) -> Self {
        Self {
            subject,
            problem,
            next_step,
        }
    }
}

/// Runs `keel status`; `json` prints the report as JSON (the API's answers as they came, the
/// problems beside them). Fails with [`CliError::NeedsAttention`] (exit code 1) after printing
/// when something needs attention.
pub(crate) async fn run(client: &Client, json: bool) -> Result<(), CliError> {
    let answers = match ask(client).await {
        Ok(answers) => answers,
        // A script reading the JSON still gets a report: the server is the problem.
        Err(error) if json => {
            let problem = Problem::new(
                "server".to_owned(),
                format!("cannot be asked: {error}"),
                format!(
                    "check that keel serve runs at {} (--server, KEEL_SERVER)",
                    client.server()
                ),
            );
            let report = serde_json::json!({"healthy": false, "problems": [problem]});
            write_stdout(&format!("{report}\n"))?;
            return Err(error);
        }
        Err(error) => return Err(error),
    };
    let health = Health::of(&answers);
    let problems = problems(&health);
    let output = if json {
        json_report(&answers, &problems)?
    } else {
        text_report(client.server(), &health, &problems)
    };
    write_stdout(&output)?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::NeedsAttention {
            problems: problems.len(),
        })
    }
}

/// Asks the server for everything at once; only readiness while it does not serve.
async fn ask(client: &Client) -> Result<Answers, CliError> {
    let readiness = client.readiness().await?;
    let serves = matches!(
        readiness.value().status,
        ReadyStatus::Ready | ReadyStatus::Degraded
    );
    if !serves {
        return Ok(Answers {
            readiness,
            serving: None,
        });
    }
    let (topics, subscriptions, tasks, alerts) = tokio::try_join!(
        client.list_topics(),
        client.list_subscriptions(),
        client.tasks(),
        client.list_alerts()
    )?;
    Ok(Answers {
        readiness,
        serving: Some(Serving {
            topics,
            subscriptions,
            tasks,
            alerts,
        }),
    })
}

/// The JSON report: `healthy`, the `problems`, and each API answer as the server wrote it
/// (the lists without their wrapping object); only readiness from a server that does not
/// serve.
#[derive(Serialize)]
struct JsonReport<'a> {
    healthy: bool,
    problems: &'a [Problem],
    readiness: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    topics: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscriptions: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tasks: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alerts: Option<&'a RawValue>,
}

fn json_report(answers: &Answers, problems: &[Problem]) -> Result<String, CliError> {
    let serving = answers.serving.as_ref();
    let report = JsonReport {
        healthy: problems.is_empty(),
        problems,
        readiness: serde_json::from_slice(answers.readiness.body()).map_err(unexpected)?,
        topics: member(serving.map(|s| s.topics.body()), "topics")?,
        subscriptions: member(serving.map(|s| s.subscriptions.body()), "subscriptions")?,
        tasks: member(serving.map(|s| s.tasks.body()), "tasks")?,
        alerts: member(serving.map(|s| s.alerts.body()), "alerts")?,
    };
    let text = serde_json::to_string(&report).expect("raw JSON and strings serialize");
    Ok(text + "\n")
}

/// The member `name` of an answer's JSON object, as the server wrote it; none without an
/// answer.
fn member<'a>(body: Option<&'a [u8]>, name: &str) -> Result<Option<&'a RawValue>, CliError> {
    let Some(body) = body else {
        return Ok(None);
    };
    let mut members: HashMap<String, &RawValue> =
        serde_json::from_slice(body).map_err(unexpected)?;
    let value = members
        .remove(name)
        .ok_or_else(|| ClientError::Unexpected {
            detail: format!("the answer has no member {name:?}"),
        })?;
    Ok(Some(value))
}

/// An answer that did not decode (it was checked to decode when received, so only a bug
/// gets here).
fn unexpected(error: serde_json::Error) -> CliError {
    CliError::Client(ClientError::Unexpected {
        detail: error.to_string(),
    })
}

/// Everything that needs attention, server first, then topics, subscriptions, tasks, alerts.
fn problems(health: &Health) -> Vec<Problem> {
    let mut problems = readiness_problems(&health.readiness);
    for subscription in &health.subscriptions {
        problems.extend(subscription_problems(subscription));
    }
    problems.extend(health.tasks.iter().filter_map(task_problem));
    problems.extend(health.alerts.iter().filter_map(alert_problem));
    problems
}

fn readiness_problems(readiness: &Readiness) -> Vec<Problem> {
    let server = || "server".to_owned();
    match readiness.status {
        ReadyStatus::Recovering => {
            return vec![Problem::new(
                server(),
                "recovering: nothing is served yet".to_owned(),
                "wait for recovery to end (the log shows its progress), then run keel status again"
                    .to_owned(),
            )];
        }
        ReadyStatus::Damaged => {
            let damage = readiness.data_dir_damage.iter().flatten();
            return damage
                .map(|damage| {
                    Problem::new(
                        server(),
                        format!("data directory damaged: {}", damage.path.display()),
                        format!("{} (keel takes no traffic until then)", damage.reason),
                    )
                })
                .collect();
        }
        ReadyStatus::Ready | ReadyStatus::Degraded => {}
    }
    let refused = readiness.publishing_refused.iter().map(|reason| {
        Problem::new(
            server(),
            format!("publishing is refused (507): {reason}"),
            "free space: delete topics or subscriptions no longer needed, or space outside \
             keel, or raise the limit (docs/durability.md, \"When the disk fills\"); \
             publishing resumes by itself"
                .to_owned(),
        )
    });
    let partitions = readiness.unavailable_partitions.iter().flatten();
    refused
        .chain(partitions.map(|unavailable| {
            let subject = match unavailable.partition {
                Some(partition) => format!("topic {} partition {partition}", unavailable.topic),
                None => format!("topic {}", unavailable.topic),
            };
            Problem::new(
                subject,
                format!("unavailable: {}", unavailable.reason),
                "see the server log for the storage error; restart keel once its cause is fixed"
                    .to_owned(),
            )
        }))
        .collect()
}

/// A subscription's problems: unavailable, paused, dead letters, events lost to retention,
/// its circuit, and its endpoints.
fn subscription_problems(info: &SubscriptionInfo) -> Vec<Problem> {
    let name = &info.name;
    let subject = || format!("subscription {name}");
    let mut problems = Vec::new();
    if let Some(reason) = &info.unavailable {
        problems.push(Problem::new(
            subject(),
            format!("unavailable: {reason}"),
            "see the server log (and TASKS above); restart keel once the cause is fixed".to_owned(),
        ));
    }
    if let Some(reason) = &info.paused {
        problems.push(Problem::new(
            subject(),
            format!("paused: {reason}"),
            format!("keel sub resume {name} (once the cause is fixed)"),
        ));
    }
    if info.dlq_depth > 0 {
        problems.push(Problem::new(
            subject(),
            format!(
                "{} in the dead-letter queue",
                count_of(info.dlq_depth as u64, "event")
            ),
            format!(
                "keel dlq list {name} shows why; fix the cause, then keel dlq redrive {name} --all"
            ),
        ));
    }
    if info.skipped_by_retention > 0 {
        problems.push(Problem::new(
            subject(),
            format!(
                "{} deleted by retention before delivery (since the server started)",
                count_of(info.skipped_by_retention, "event")
            ),
            format!(
                "it falls behind topic {}'s retention: speed up its consumer (more consumers, \
                 a higher max_in_flight), or give a new topic a longer retention",
                info.spec.topic
            ),
        ));
    }
    if let Some(problem) = circuit_problem(info) {
        problems.push(problem);
    }
    problems.extend(endpoint_problems(info));
    problems
}

/// The endpoints that take no events: each one while others do, or the whole sink when none
/// does (its events wait).
fn endpoint_problems(info: &SubscriptionInfo) -> Vec<Problem> {
    let name = &info.name;
    let down: Vec<&EndpointInfo> = info.endpoints.iter().filter(|e| !e.available).collect();
    if down.is_empty() {
        return Vec::new();
    }
    if down.len() == info.endpoints.len() {
        let states: Vec<String> = down
            .iter()
            .map(|endpoint| format!("{} {}", endpoint.url, endpoint_state(endpoint)))
            .collect();
        return vec![Problem::new(
            format!("subscription {name}"),
            format!("no endpoint takes events, they wait: {}", states.join("; ")),
            format!("check the endpoints (keel sub describe {name} shows their failures)"),
        )];
    }
    down.iter()
        .map(|endpoint| {
            Problem::new(
                format!("subscription {name}"),
                format!("endpoint {} {}", endpoint.url, endpoint_state(endpoint)),
                format!(
                    "check that endpoint (keel sub describe {name} shows its failures); the \
                     others take its events meanwhile"
                ),
            )
        })
        .collect()
}

/// An open or half-open circuit: the sink was found down.
fn circuit_problem(info: &SubscriptionInfo) -> Option<Problem> {
    let state = match info.circuit? {
        CircuitState::Closed => return None,
        CircuitState::Open => "open: the sink is down, nothing is sent until probes pass",
        CircuitState::HalfOpen => "half-open: probing a sink that was down",
    };
    let last_error = info.last_error.as_ref().map_or(String::new(), |error| {
        format!(" (last error at {}: {})", error.at, error.error)
    });
    let sink = match &info.spec.delivery {
        Delivery::Push(sink) if sink.endpoints.is_empty() => sink.url.clone(),
        _ => "the sink's endpoints".to_owned(),
    };
    // A paused subscription sends no probes: it resumes by the pause's own next step.
    let resumes = if info.paused.is_some() {
        "then resume the subscription (above)"
    } else {
        "delivery resumes by itself once it answers"
    };
    Some(Problem::new(
        format!("subscription {}", info.name),
        format!("circuit {state}{last_error}"),
        format!("check {sink}; {resumes} (keel sub describe {})", info.name),
    ))
}

/// A task that keeps failing or was given up on; one restarted now and then is not a problem.
fn task_problem(task: &TaskHealth) -> Option<Problem> {
    let (problem, next_step) = match task.state {
        TaskState::Restarting => return None,
        TaskState::Failing => (
            format!("failing: {} so far", count_of(task.failures, "failure")),
            "it is still restarted; see the server log around the last failure",
        ),
        TaskState::Failed => (
            format!(
                "failed {} and is not restarted",
                count_of(task.failures, "time")
            ),
            "what it serves is unavailable; see the server log, then restart keel",
        ),
    };
    Some(Problem::new(
        format!("task {}", task.task),
        format!(
            "{problem}; last at {}: {}",
            task.last_failure_at, task.last_failure
        ),
        next_step.to_owned(),
    ))
}

/// A firing alert, with what it watches.
fn alert_problem(alert: &AlertStatus) -> Option<Problem> {
    if alert.state != AlertState::Firing {
        return None;
    }
    let firing: Vec<String> = alert
        .instances
        .iter()
        .filter(|instance| instance.state == AlertState::Firing)
        .map(|instance| {
            let labels: Vec<String> = instance
                .labels
                .iter()
                .map(|(label, value)| format!("{label}={value}"))
                .collect();
            let value = instance.value.map_or("none".to_owned(), figure);
            format!("{{{}}} = {value}", labels.join(","))
        })
        .collect();
    Some(Problem::new(
        format!("alert {}", alert.name),
        format!("firing: {} {}", alert.rule.metric, firing.join(", ")),
        format!(
            "it watches {} ({}); keel alert get {} shows the rule and since when",
            alert.rule.metric,
            rule_text(alert),
            alert.name
        ),
    ))
}

/// A rule's condition in a few words: `value > 0`, `anomaly`.
fn rule_text(alert: &AlertStatus) -> String {
    let rule = &alert.rule;
    match (rule.op, rule.value) {
        (Some(op), Some(value)) => format!("{} {} {value}", plain(&rule.function), op.symbol()),
        _ => format!("{} anomaly", plain(&rule.function)),
    }
}

/// The report for people: the server line, a table per part, then the problems.
fn text_report(server: &str, health: &Health, problems: &[Problem]) -> String {
    let mut text = format!("keel at {server}: {}\n", plain(&health.readiness.status));
    let sections = [
        topics_text(&health.topics),
        subscriptions_text(&health.subscriptions),
        endpoints_text(&health.subscriptions),
        tasks_text(&health.tasks),
        alerts_text(&health.alerts),
    ];
    for section in sections.iter().filter(|section| !section.is_empty()) {
        text.push('\n');
        text.push_str(section);
    }
    text.push('\n');
    text.push_str(&problems_text(problems));
    text
}

fn topics_text(topics: &[TopicInfo]) -> String {
    if topics.is_empty() {
        return "no topics\n".to_owned();
    }
    let mut table = Table::new(&[
        ("TOPIC", Align::Left),
        ("PARTITIONS", Align::Right),
        ("EVENTS", Align::Right),
        ("SIZE", Align::Right),
        ("RETENTION", Align::Left),
    ]);
    for topic in topics {
        let events: u64 = topic
            .partitions
            .iter()
            .map(|partition| partition.next_offset - partition.start_offset)
            .sum();
        let bytes: u64 = topic
            .partitions
            .iter()
            .map(|partition| partition.bytes)
            .sum();
        let unavailable = topic
            .partitions
            .iter()
            .filter(|partition| partition.unavailable.is_some())
            .count();
        let partitions = match unavailable {
            0 => topic.partitions.len().to_string(),
            down => format!("{} ({down} unavailable)", topic.partitions.len()),
        };
        table.push(vec![
            topic.name.clone(),
            partitions,
            events.to_string(),
            human_bytes(bytes),
            retention_text(topic),
        ]);
    }
    table.render()
}

/// A topic's retention, and how full its fullest partition is against `max_bytes`: the
/// pressure that deletes events soon.
fn retention_text(topic: &TopicInfo) -> String {
    let retention = &topic.retention;
    let mut limits = Vec::new();
    if let Some(age) = retention.max_age {
        limits.push(duration::format(age));
    }
    if let Some(bytes_max) = retention.max_bytes {
        let fullest = topic
            .partitions
            .iter()
            .map(|partition| partition.bytes)
            .max()
            .unwrap_or(0);
        let percent = fullest as f64 * 100.0 / bytes_max.max(1) as f64;
        limits.push(format!(
            "{} per partition (fullest {percent:.0}%)",
            human_bytes(bytes_max)
        ));
    }
    if limits.is_empty() {
        return "forever".to_owned();
    }
    limits.join(", ")
}

fn subscriptions_text(subscriptions: &[SubscriptionInfo]) -> String {
    if subscriptions.is_empty() {
        return "no subscriptions\n".to_owned();
    }
    let rows = subscriptions.iter().map(|info| {
        vec![
            info.name.clone(),
            info.spec.topic.clone(),
            info.mode.to_string(),
            subscription_state(info).0.to_owned(),
            info.lag.to_string(),
            info.dlq_depth.to_string(),
            plain(&info.circuit),
            sink_text(info),
        ]
    });
    let columns = [
        ("SUBSCRIPTION", Align::Left),
        ("TOPIC", Align::Left),
        ("MODE", Align::Left),
        ("STATE", Align::Left),
        ("LAG", Align::Right),
        ("DLQ", Align::Right),
        ("CIRCUIT", Align::Left),
        ("SINK", Align::Left),
    ];
    section(&columns, rows.collect())
}

/// A push sink's availability since the start and its outages; a group's endpoints up.
fn sink_text(info: &SubscriptionInfo) -> String {
    let Some(health) = &info.sink_health else {
        return "-".to_owned();
    };
    let mut text = format!(
        "{:.2}% available, {}",
        health.availability * 100.0,
        count_of(health.outages, "outage")
    );
    if let Some(mttr) = health.mttr {
        text.push_str(&format!(", MTTR {}", duration::format(mttr)));
    }
    if info.endpoints.len() > 1 {
        let up = info.endpoints.iter().filter(|e| e.available).count();
        text.push_str(&format!(", {up}/{} endpoints up", info.endpoints.len()));
    }
    text
}

/// The endpoints of groups, one row each; empty without groups.
fn endpoints_text(subscriptions: &[SubscriptionInfo]) -> String {
    let groups = subscriptions.iter().filter(|info| info.endpoints.len() > 1);
    let rows = groups.flat_map(|info| {
        info.endpoints.iter().map(|endpoint| {
            vec![
                endpoint.url.clone(),
                info.name.clone(),
                endpoint_state(endpoint),
                endpoint.failures_in_row.to_string(),
            ]
        })
    });
    let columns = [
        ("ENDPOINT", Align::Left),
        ("SUBSCRIPTION", Align::Left),
        ("STATE", Align::Left),
        ("FAILURES IN ROW", Align::Right),
    ];
    section(&columns, rows.collect())
}

/// The supervised tasks that failed; empty when none did.
fn tasks_text(tasks: &[TaskHealth]) -> String {
    let rows = tasks.iter().map(|task| {
        vec![
            task.task.clone(),
            plain(&task.state),
            task.failures.to_string(),
            task.last_failure_at.clone(),
        ]
    });
    let columns = [
        ("TASK", Align::Left),
        ("STATE", Align::Left),
        ("FAILURES", Align::Right),
        ("LAST FAILURE AT", Align::Left),
    ];
    section(&columns, rows.collect())
}

/// The alert rules that fire or are pending; empty when none do.
fn alerts_text(alerts: &[AlertStatus]) -> String {
    let active = alerts
        .iter()
        .filter(|alert| alert.state != AlertState::Inactive);
    let rows = active.map(|alert| {
        vec![
            alert.name.clone(),
            plain(&alert.state),
            alert.rule.metric.clone(),
            rule_text(alert),
        ]
    });
    let columns = [
        ("ALERT", Align::Left),
        ("STATE", Align::Left),
        ("METRIC", Align::Left),
        ("RULE", Align::Left),
    ];
    section(&columns, rows.collect())
}

/// A table of `rows` under `columns`; empty without rows, so the report leaves it out.
fn section(columns: &[(&'static str, Align)], rows: Vec<Vec<String>>) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut table = Table::new(columns);
    for row in rows {
        table.push(row);
    }
    table.render()
}

/// The problems with their next steps, or a line saying there are none.
fn problems_text(problems: &[Problem]) -> String {
    if problems.is_empty() {
        return "healthy: nothing needs attention\n".to_owned();
    }
    let mut text = format!("{}:\n", needs_attention(problems.len()));
    for problem in problems {
        text.push_str(&format!(
            "  {}: {}\n    next: {}\n",
            problem.subject, problem.problem, problem.next_step
        ));
    }
    text
}

/// `1 problem needs attention`, `2 problems need attention`.
pub(crate) fn needs_attention(problems: usize) -> String {
    match problems {
        1 => "1 problem needs attention".to_owned(),
        count => format!("{count} problems need attention"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sub::tests::described;
    use serde_json::{Value, json};

    #[test]
    fn each_problem_names_its_subject_and_a_next_step() {
        // Goal: each kind of trouble the API reports becomes a problem naming what it is
        // about, with a next step; healthy parts (a closed circuit, an available endpoint, a
        // task restarted once, an inactive alert) give none; a sink none of whose endpoints
        // takes events is one problem. Method: a Health holding one of each; every problem is
        // checked (subject, how it starts, a part of its next step).
        let push = |name: &str, members: Value| {
            let mut info = json!({"name": name, "topic": "t", "mode": "push",
                "sink": {"url": "http://h/x"}, "circuit": "closed"});
            info.as_object_mut()
                .unwrap()
                .extend(members.as_object().unwrap().clone());
            described(info)
        };
        let endpoint = |url: &str, until: Value| {
            json!({"url": url, "available": until.is_null(), "healthy": true,
                "ejected_until": until, "ejections": 1, "failures_in_row": 0})
        };
        let group = json!({"sink": {"endpoints": [{"url": "http://a/h"}, {"url": "http://b/h"}]},
            "endpoints": [endpoint("http://a/h", Value::Null), endpoint("http://b/h", json!("T"))]});
        let task = |name: &str, state: &str| {
            json!({"task": name, "state": state, "failures": 6, "last_failure": "boom",
                "last_failure_at": "T"})
        };
        let alert = |name: &str, state: &str| {
            json!({"name": name, "state": state,
                "rule": {"kind": "threshold", "metric": "m", "op": ">", "value": 0},
                "instances": [{"labels": {"subscription": "s"}, "state": state,
                    "value": 10.63812104187098}]})
        };
        let health = Health {
            readiness: serde_json::from_value(json!({"status": "degraded",
                "unavailable_partitions": [{"topic": "t", "partition": 1, "reason": "disk"}],
                "unavailable_subscriptions": [], "publishing_refused": ["disk_full"]}))
            .unwrap(),
            topics: Vec::new(),
            subscriptions: vec![
                push("ok", json!({})),
                push(
                    "down",
                    json!({"circuit": "open",
                    "last_error": {"at": "T", "error": "HTTP 503"}}),
                ),
                push(
                    "held",
                    json!({"circuit": "open", "paused": "keel paused it"}),
                ),
                described(
                    json!({"name": "lost", "topic": "t", "skipped_by_retention": 4,
                    "unavailable": "storage failed"}),
                ),
                push("group", group),
                push(
                    "lone",
                    json!({"endpoints": [endpoint("http://h/x", json!("T"))]}),
                ),
            ],
            tasks: serde_json::from_value(json!([task("x", "failed"), task("y", "restarting")]))
                .unwrap(),
            alerts: serde_json::from_value(json!([alert("a", "firing"), alert("b", "inactive")]))
                .unwrap(),
        };
        let expected = [
            (
                "server",
                "publishing is refused (507): disk_full",
                "free space",
            ),
            ("topic t partition 1", "unavailable: disk", "restart keel"),
            ("subscription down", "circuit open: ", "resumes by itself"),
            (
                "subscription held",
                "paused: keel paused it",
                "keel sub resume held",
            ),
            (
                "subscription held",
                "circuit open: ",
                "then resume the subscription",
            ),
            (
                "subscription lost",
                "unavailable: storage failed",
                "server log",
            ),
            (
                "subscription lost",
                "4 events deleted by retention",
                "topic t's retention",
            ),
            (
                "subscription group",
                "endpoint http://b/h ejected until T",
                "check that",
            ),
            (
                "subscription lone",
                "no endpoint takes events, they wait: http://h/x ejected until T",
                "check the endpoints",
            ),
            (
                "task x",
                "failed 6 times and is not restarted; last at T: boom",
                "restart keel",
            ),
            (
                "alert a",
                "firing: m {subscription=s} = 10.6381",
                "keel alert get a",
            ),
        ];
        let problems = problems(&health);
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
        for (problem, (subject, start, next)) in problems.iter().zip(expected) {
            assert_eq!(problem.subject, subject, "{problem:?}");
            assert!(problem.problem.starts_with(start), "{problem:?}");
            assert!(problem.next_step.contains(next), "{problem:?}");
        }
        assert!(
            problems[2].problem.contains("HTTP 503"),
            "the last error is named"
        );
    }

    #[test]
    fn a_server_that_does_not_serve_is_one_problem() {
        // Goal: recovering and a damaged data directory are problems with a next step (the
        // damage's own reason). Method: the problems of the two readiness answers.
        let recovering = serde_json::from_value(json!({"status": "recovering"})).unwrap();
        let problems = readiness_problems(&recovering);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].next_step.contains("wait"), "{problems:?}");
        let damaged = serde_json::from_value(json!({"status": "damaged",
            "data_dir_damage": [{"path": "/d/topics", "reason": "restore it from a backup"}]}))
        .unwrap();
        let problems = readiness_problems(&damaged);
        assert_eq!(
            (problems[0].problem.as_str(), problems.len()),
            ("data directory damaged: /d/topics", 1)
        );
        assert!(
            problems[0]
                .next_step
                .starts_with("restore it from a backup")
        );
    }
}

//! `keel alert`: set, list, describe and delete alert rules.

use clap::{ArgGroup, Args, Subcommand};
use keel_api::alerts::{AlertInstance, AlertKind, AlertRule, AlertStatus};
use keel_client::{Client, StatusCode};

use crate::error::CliError;
use crate::output::{Align, Table, figure, plain, render_pairs, write_json_body, write_stdout};

/// Examples shown under `keel alert --help`.
pub(crate) const ALERT_EXAMPLES: &str = "Examples:
  keel alert set billing-lag --rule '{\"kind\": \"threshold\", \"metric\": \"keel_subscription_lag\",
      \"labels\": {\"subscription\": \"billing\"}, \"op\": \">\", \"value\": 10000, \"for\": \"1m\"}'
  keel alert set publish-rate --file publish-rate.json
  keel alert list
  keel alert get billing-lag
Every transition is an event on the topic _keel.alerts: keel sub create pager --topic _keel.alerts --sink URL";

/// `keel alert` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum AlertCommand {
    /// Create or replace a rule (docs/alerts.md describes its members)
    Set(SetArgs),
    /// List every rule with its state
    List,
    /// Show a rule and each instance's state, value and since when
    Get {
        /// The rule's name
        name: String,
    },
    /// Delete a rule (its firing instances resolve)
    Delete {
        /// The rule's name
        name: String,
    },
}

/// Arguments of `keel alert set`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["rule", "file"])))]
pub(crate) struct SetArgs {
    /// The rule's name
    name: String,
    /// The rule as JSON
    #[arg(long, value_name = "JSON")]
    rule: Option<String>,
    /// A file holding the rule as JSON
    #[arg(long, value_name = "PATH")]
    file: Option<std::path::PathBuf>,
}

/// Runs a `keel alert` subcommand; `json` prints the server's JSON instead of text.
pub(crate) async fn run(
    client: &Client,
    command: AlertCommand,
    json: bool,
) -> Result<(), CliError> {
    match command {
        AlertCommand::Set(args) => set(client, &args, json).await,
        AlertCommand::List => {
            let reply = client.list_alerts().await?;
            if json {
                return write_json_body(reply.body());
            }
            write_stdout(&list_text(&reply.value().alerts))
        }
        AlertCommand::Get { name } => {
            let reply = client.describe_alert(&name).await?;
            if json {
                return write_json_body(reply.body());
            }
            write_stdout(&describe_text(&reply.value()))
        }
        AlertCommand::Delete { name } => {
            client.delete_alert(&name).await?;
            if json {
                return Ok(());
            }
            write_stdout(&format!("deleted alert rule {name}\n"))
        }
    }
}

async fn set(client: &Client, args: &SetArgs, json: bool) -> Result<(), CliError> {
    let (origin, text) = match (&args.rule, &args.file) {
        (Some(rule), _) => ("--rule".to_owned(), rule.clone()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
                action: format!("read {}", path.display()),
                source,
            })?;
            (path.display().to_string(), text)
        }
        (None, None) => unreachable!("clap requires --rule or --file"),
    };
    let rule: AlertRule = serde_json::from_str(&text)
        .map_err(|error| CliError::Usage(format!("invalid alert rule in {origin}: {error}")))?;
    let reply = client.put_alert(&args.name, &rule).await?;
    if json {
        return write_json_body(reply.body());
    }
    let verb = if reply.status() == StatusCode::CREATED {
        "created"
    } else {
        "stored (it replaced the rule of that name, or was the same)"
    };
    write_stdout(&format!(
        "alert rule {} {verb}\n\n{}",
        args.name,
        describe_text(&reply.value())
    ))
}

fn list_text(alerts: &[AlertStatus]) -> String {
    if alerts.is_empty() {
        return "no alert rules\n".to_owned();
    }
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("KIND", Align::Left),
        ("METRIC", Align::Left),
        ("STATE", Align::Left),
        ("FIRING", Align::Right),
        ("INSTANCES", Align::Right),
    ]);
    for alert in alerts {
        let firing = alert
            .instances
            .iter()
            .filter(|instance| plain(&instance.state) == "firing")
            .count();
        table.push(vec![
            alert.name.clone(),
            plain(&alert.rule.kind),
            alert.rule.metric.clone(),
            plain(&alert.state),
            firing.to_string(),
            alert.instances.len().to_string(),
        ]);
    }
    table.render()
}

/// The rule's members as label/value lines, then a table of its instances.
fn describe_text(alert: &AlertStatus) -> String {
    let mut pairs = vec![
        ("alert".to_owned(), alert.name.clone()),
        ("state".to_owned(), plain(&alert.state)),
    ];
    if let Ok(serde_json::Value::Object(members)) = serde_json::to_value(&alert.rule) {
        pairs.extend(
            members
                .iter()
                .map(|(key, value)| (key.replace('_', " "), plain(value))),
        );
    }
    let evaluated = alert
        .evaluated_at
        .clone()
        .unwrap_or_else(|| "not yet".to_owned());
    pairs.push(("evaluated at".to_owned(), evaluated));
    if alert.instances.is_empty() {
        return format!(
            "{}\nno instances: no series matches yet\n",
            render_pairs(&pairs)
        );
    }
    format!(
        "{}\n{}",
        render_pairs(&pairs),
        instances_table(&alert.instances, alert.rule.kind == AlertKind::Anomaly)
    )
}

/// One row per instance; an anomaly rule's rows also show the z-score and the baseline.
fn instances_table(instances: &[AlertInstance], anomaly: bool) -> String {
    let columns = [
        ("LABELS", Align::Left),
        ("STATE", Align::Left),
        ("VALUE", Align::Right),
        ("Z", Align::Right),
        ("SINCE", Align::Left),
        ("BASELINE", Align::Left),
    ];
    let shown = |column: usize| anomaly || !matches!(column, 3 | 5);
    let headers: Vec<_> = (0..columns.len())
        .filter(|&column| shown(column))
        .map(|column| columns[column])
        .collect();
    let mut table = Table::new(&headers);
    let number = |value: Option<f64>| value.map_or("-".to_owned(), figure);
    for instance in instances {
        let labels: Vec<String> = instance
            .labels
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        let baseline = instance
            .baseline
            .as_ref()
            .map_or("-".to_owned(), |baseline| {
                let warm = if baseline.warmed_up {
                    ""
                } else {
                    ", warming up"
                };
                format!(
                    "mean {:.4} ± {:.4}{warm}",
                    baseline.mean, baseline.deviation
                )
            });
        let cells = [
            if labels.is_empty() {
                "-".to_owned()
            } else {
                labels.join(",")
            },
            plain(&instance.state),
            number(instance.value),
            number(instance.z),
            instance.since.clone().unwrap_or_else(|| "-".to_owned()),
            baseline,
        ];
        let row = cells
            .into_iter()
            .enumerate()
            .filter(|&(column, _)| shown(column));
        table.push(row.map(|(_, cell)| cell).collect());
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a threshold rule's instances show no z-score or baseline columns (it has none),
    // an anomaly rule's do; values show at most four decimals. Method: render both tables.
    #[test]
    fn instance_columns_follow_the_rule_kind() {
        let instances: Vec<AlertInstance> = serde_json::from_value(serde_json::json!([
            {"labels": {"subscription": "s"}, "state": "firing", "value": 10.63812104187098,
             "z": 5.5, "baseline": {"mean": 1.0, "deviation": 0.5, "samples": 20,
             "warmed_up": true}}
        ]))
        .unwrap();
        let threshold = instances_table(&instances, false);
        assert_eq!(
            threshold,
            "LABELS          STATE     VALUE  SINCE\nsubscription=s  firing  10.6381  -\n"
        );
        let anomaly = instances_table(&instances, true);
        assert!(
            anomaly.contains("Z") && anomaly.contains("mean 1.0000 ± 0.5000"),
            "{anomaly}"
        );
    }
}

//! `keel cluster status`: the nodes of a keel cluster, their heartbeats, and which units of
//! work (subscriptions) each holds; and the cluster half of `keel serve` (joining one).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use clap::Subcommand;
use keel_api::cluster::ClusterStatus;
use keel_client::Client;
use keel_cluster::{ClusterNode, ClusterOptions};
use keel_engine::storage::Storage;
use keel_engine::{Engine, Placement};
use keel_server::{ClusterMember, ClusterSettings};

use crate::error::CliError;
use crate::output::{Align, Table, write_json_body, write_stdout};

/// Shown under `keel cluster --help`.
pub(crate) const CLUSTER_HELP: &str = "\
Examples:
  keel cluster status
  keel --server http://10.0.0.2:7171 cluster status --json | jq .units";

/// `keel cluster` commands.
#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// The nodes, their heartbeats, and which subscriptions each hosts (any node answers)
    Status,
}

pub(crate) async fn run(
    client: &Client,
    command: ClusterCommand,
    json: bool,
) -> Result<(), CliError> {
    match command {
        ClusterCommand::Status => {
            let answer = client.cluster().await?;
            if json {
                return write_json_body(answer.body());
            }
            write_stdout(&render(&answer.value()))
        }
    }
}

fn render(status: &ClusterStatus) -> String {
    if status.mode == "single" {
        return format!(
            "single node (no --cluster): it hosts all {} subscription(s) itself\n",
            status.units.len()
        );
    }
    let mut out = format!(
        "cluster {:?}, answered by node {}; replicas {}, lease TTL {} ms\n\n",
        status.cluster.as_deref().unwrap_or_default(),
        status.node,
        status.replicas.unwrap_or_default(),
        status.lease_ttl_ms.unwrap_or_default(),
    );
    let mut nodes = Table::new(&[
        ("NODE", Align::Left),
        ("URL", Align::Left),
        ("HEARTBEAT", Align::Right),
        ("UNITS", Align::Right),
        ("STARTED", Align::Left),
    ]);
    for node in &status.nodes {
        nodes.push(vec![
            node.id.clone(),
            node.url.clone(),
            format!("{} ms ago", node.heartbeat_age_ms),
            node.units.len().to_string(),
            node.started_at.clone(),
        ]);
    }
    out.push_str(&nodes.render());
    let mut units = Table::new(&[
        ("UNIT", Align::Left),
        ("NODE", Align::Left),
        ("EPOCH", Align::Right),
        ("PLACED ON", Align::Left),
    ]);
    for unit in &status.units {
        let moving = unit.node.is_none() || unit.node != unit.placed_on;
        units.push(vec![
            unit.unit.clone(),
            unit.node.clone().unwrap_or_else(|| "(moving)".into()),
            unit.epoch.map_or("-".into(), |epoch| epoch.to_string()),
            format!(
                "{}{}",
                unit.placed_on.clone().unwrap_or_else(|| "-".into()),
                if moving { " (moving)" } else { "" }
            ),
        ]);
    }
    out.push('\n');
    out.push_str(&units.render());
    out
}

/// Joins the cluster `[cluster]` describes, as the node serving on `listen`. Blocking.
pub(crate) fn join(
    settings: &ClusterSettings,
    listen: std::net::SocketAddr,
    https: bool,
) -> Result<Arc<dyn ClusterMember>, CliError> {
    let advertise_url = match &settings.advertise_url {
        Some(url) => url.clone(),
        None if listen.ip().is_unspecified() => {
            return Err(CliError::Usage(format!(
                "--listen {listen} is not an address other nodes can reach: give this node's URL with --advertise-url (or [cluster] advertise_url)"
            )));
        }
        None if https => format!("https://{listen}"),
        None => format!("http://{listen}"),
    };
    let node_id = settings
        .node_id
        .clone()
        .unwrap_or_else(|| default_node_id(listen.port()));
    let options = ClusterOptions {
        servers: settings.servers.join(","),
        cluster_name: settings.name.clone(),
        node_id,
        advertise_url,
        replicas: settings.replicas,
        lease_ttl: settings.lease_ttl,
        tls: keel_cluster::NatsTls {
            ca_file: settings.tls_ca_file.clone(),
            cert_file: settings.tls_cert_file.clone(),
            key_file: settings.tls_key_file.clone(),
        },
    };
    let node = ClusterNode::connect(options).map_err(|error| CliError::Usage(error.to_string()))?;
    Ok(Arc::new(Member(node)))
}

/// The host name and the port, in the characters a node id takes.
fn default_node_id(port: u16) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "keel".into());
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    format!("{host}-{port}")
}

/// A cluster node, as the server uses it.
struct Member(Arc<ClusterNode>);

impl ClusterMember for Member {
    fn storage(&self) -> Arc<dyn Storage> {
        self.0.storage()
    }

    fn placement(&self) -> Arc<dyn Placement> {
        self.0.placement()
    }

    fn start(&self, engine: Engine) {
        self.0.start(engine);
    }

    fn leave(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.0.leave())
    }

    fn node_id(&self) -> String {
        self.0.node_id().to_owned()
    }

    fn status(&self) -> ClusterStatus {
        self.0.status()
    }

    fn host_url(&self, subscription: &str) -> Option<String> {
        self.0.host_url(subscription)
    }

    fn peer_urls(&self) -> Vec<String> {
        self.0.peer_urls()
    }

    fn knows_subscription(&self, subscription: &str) -> bool {
        self.0.knows_subscription(subscription)
    }
}

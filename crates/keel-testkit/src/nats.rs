//! A real NATS JetStream cluster on loopback, for cluster-mode tests: `nats-server`
//! processes the test can kill -9, restart, pause and resume.
//!
//! Each server `nI` gets its own directory under one temporary directory, holding its
//! generated config (`nI.conf`), its JetStream store (`store/`) and its output (`nI.log`).
//! Every port (client, cluster route, HTTP monitoring) is a free port on 127.0.0.1, chosen
//! once: a restarted server comes back on the same ports with the same store.
//!
//! The binary is `$KEEL_NATS_SERVER` when set, else `nats-server` on `PATH`
//! (`scripts/install-test-deps.sh` installs it); it must be at least version 2.12.
//!
//! ```no_run
//! use keel_testkit::nats::NatsCluster;
//!
//! # async fn example() {
//! let cluster = NatsCluster::start(3).await;
//! let servers = cluster.url_list(); // "nats://127.0.0.1:P0,nats://127.0.0.1:P1,…"
//! cluster.kill9(1);
//! cluster.restart(1).await;
//! # }
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::process::{free_port, send_signal, spawn_logged};
use crate::readiness::READY_WAIT;

/// The environment variable that names the `nats-server` binary to run, for a machine where
/// it is not on `PATH`.
pub const NATS_SERVER_ENV: &str = "KEEL_NATS_SERVER";

/// The oldest `nats-server` (major, minor) the harness accepts: Debian's 2.9 lacks the
/// JetStream cluster behaviour keel relies on.
pub const NATS_SERVER_VERSION_MIN: (u32, u32) = (2, 12);

/// The most servers one cluster may have: enough for any quorum test.
pub const SERVERS_MAX: usize = 7;

/// The cluster name every server is given.
pub const CLUSTER_NAME: &str = "keel-test";

/// Pause between two readiness polls. Each failed `/healthz` poll makes nats-server log a
/// warning, so this is not as tight as keel's own.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long one monitoring request may take. A paused (SIGSTOP) server accepts the
/// connection and never answers, so without this a poll would hang.
const MONITOR_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// How many lines of a server's log [`NatsCluster::log_tail`] returns.
const LOG_TAIL_LINES: usize = 40;

/// The line nats-server logs for each failed `/healthz` poll: the harness's own polling
/// causes these, so the log tail leaves them out.
const HEALTHCHECK_FAILED_LINE: &str = "Healthcheck failed";

/// A cluster of `nats-server` processes with JetStream on, all on 127.0.0.1. Dropping it
/// kills every server (SIGKILL), so no server outlives its test.
///
/// Server `i` is named `n{i}`. Methods that take a server index panic when it is out of
/// range.
pub struct NatsCluster {
    servers: Vec<NatsServer>,
    http: reqwest::Client,
    /// Holds every server's config, store and log; removed on drop, after the servers die.
    _dir: tempfile::TempDir,
}

/// One server's fixed settings, and its process while it runs.
struct NatsServer {
    name: String,
    client_port: u16,
    monitor_port: u16,
    config_path: PathBuf,
    store_dir: PathBuf,
    log_path: PathBuf,
    /// `None` once the harness killed it.
    child: Mutex<Option<Child>>,
}

/// The ports of one server, all on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
struct ServerPorts {
    client: u16,
    cluster: u16,
    monitor: u16,
}

impl NatsCluster {
    /// Starts `servers` servers (1 to [`SERVERS_MAX`]) and waits until each is ready: its
    /// `/healthz` answers 200 and, in a cluster, it knows the JetStream meta leader. With one
    /// server there is no cluster block: a plain JetStream server.
    pub async fn start(servers: usize) -> NatsCluster {
        NatsCluster::start_with_tls(servers, None).await
    }

    /// [`NatsCluster::start`], with clients required to speak TLS, the servers presenting
    /// the PEM certificate and key of `tls`.
    pub async fn start_with_tls(servers: usize, tls: Option<(&Path, &Path)>) -> NatsCluster {
        assert!(
            (1..=SERVERS_MAX).contains(&servers),
            "a NATS cluster has 1 to {SERVERS_MAX} servers, not {servers}"
        );
        let binary = nats_server_binary();
        let dir = tempfile::Builder::new()
            .prefix("keel-nats")
            .tempdir()
            .unwrap();
        let ports: Vec<ServerPorts> = distinct_free_ports(servers * 3)
            .chunks_exact(3)
            .map(|chunk| ServerPorts {
                client: chunk[0],
                cluster: chunk[1],
                monitor: chunk[2],
            })
            .collect();
        let servers: Vec<NatsServer> = (0..servers)
            .map(|index| NatsServer::create(dir.path(), index, &ports, tls))
            .collect();
        for server in &servers {
            server.spawn(binary);
        }
        let http = reqwest::Client::builder()
            .timeout(MONITOR_REQUEST_TIMEOUT)
            .build()
            .unwrap();
        let cluster = NatsCluster {
            servers,
            http,
            _dir: dir,
        };
        for index in 0..cluster.len() {
            cluster.wait_ready(index).await;
        }
        cluster
    }

    /// How many servers the cluster has, running or not.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Always false: a cluster has at least one server.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Server `i`'s name, `n{i}`: what `/jsz` and `/routez` call it.
    pub fn name(&self, i: usize) -> &str {
        &self.servers[i].name
    }

    /// Every server's client URL, `nats://127.0.0.1:PORT`, in server order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.url(i)).collect()
    }

    /// Every server's client URL, comma-separated: what a NATS client takes as its server
    /// list.
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// Server `i`'s client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].client_port)
    }

    /// Server `i`'s HTTP monitoring URL, `http://127.0.0.1:PORT`.
    pub fn monitor_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.servers[i].monitor_port)
    }

    /// Server `i`'s JetStream store directory (it survives a restart).
    pub fn store_dir(&self, i: usize) -> &Path {
        &self.servers[i].store_dir
    }

    /// SIGKILL to server `i`, then waits for it to exit: no chance to flush anything.
    /// Panics if the harness already killed it.
    pub fn kill9(&self, i: usize) {
        let server = &self.servers[i];
        let mut child = server
            .lock_child()
            .take()
            .unwrap_or_else(|| panic!("{} is already killed", server.name));
        // A server that already exited on its own only needs reaping.
        let _ = child.kill();
        child.wait().unwrap();
    }

    /// Starts server `i` again, on the same ports with the same store, and waits until it is
    /// ready (see [`NatsCluster::wait_ready`]). A server still running is killed (SIGKILL)
    /// first.
    pub async fn restart(&self, i: usize) {
        self.start_again(i);
        self.wait_ready(i).await;
    }

    /// Starts server `i` again like [`NatsCluster::restart`], without waiting: to bring back
    /// several servers at once (one alone may not make a quorum, and is not ready before).
    pub fn start_again(&self, i: usize) {
        if self.servers[i].lock_child().is_some() {
            self.kill9(i);
        }
        self.servers[i].spawn(nats_server_binary());
    }

    /// SIGSTOP to server `i`: it keeps its sockets but answers nothing, like a stalled
    /// machine. It still counts as running.
    pub fn pause(&self, i: usize) {
        send_signal(self.servers[i].pid(), "STOP");
    }

    /// SIGCONT to server `i`, after [`NatsCluster::pause`].
    pub fn resume(&self, i: usize) {
        send_signal(self.servers[i].pid(), "CONT");
    }

    /// Whether server `i`'s process is alive (a paused one is): false once killed, or once
    /// it exited on its own.
    pub fn is_running(&self, i: usize) -> bool {
        match self.servers[i].lock_child().as_mut() {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Waits until server `i` is ready: `/healthz` answers 200 (which, in a cluster, needs
    /// JetStream current with the meta leader) and, in a cluster, `/jsz` names a meta
    /// leader. Panics with the server's log tail if it exits or is not ready within 30 s.
    pub async fn wait_ready(&self, i: usize) {
        let server = &self.servers[i];
        let deadline = Instant::now() + READY_WAIT;
        loop {
            if let Some(status) = server.exit_status() {
                panic!(
                    "nats-server {} exited ({status}) before it was ready; its log:\n{}",
                    server.name,
                    self.log_tail(i)
                );
            }
            if self.is_ready(i).await {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "nats-server {} not ready after {READY_WAIT:?} (/healthz 200 and a JetStream \
                     meta leader); its log:\n{}",
                    server.name,
                    self.log_tail(i)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Whether server `i` is ready right now (see [`NatsCluster::wait_ready`]).
    pub async fn is_ready(&self, i: usize) -> bool {
        let clustered = self.len() > 1;
        self.is_healthy(i).await && (!clustered || self.meta_leader(i).await.is_some())
    }

    /// Whether server `i`'s `/healthz` answers 200 now. In a cluster it answers 503 while
    /// JetStream is not current with a meta leader, e.g. for a few seconds after the leader
    /// died, until the others elect a new one.
    pub async fn is_healthy(&self, i: usize) -> bool {
        let url = format!("{}/healthz", self.monitor_url(i));
        match self.http.get(url).send().await {
            Ok(response) => response.status() == 200,
            Err(_) => false,
        }
    }

    /// The JSON of server `i`'s monitoring endpoint `path` (`/jsz`, `/routez?subs=1`, …), or
    /// `None` if it does not answer 200 with JSON now.
    pub async fn monitor(&self, i: usize, path: &str) -> Option<Value> {
        let url = format!("{}{path}", self.monitor_url(i));
        let response = self.http.get(url).send().await.ok()?;
        if response.status() != 200 {
            return None;
        }
        serde_json::from_str(&response.text().await.ok()?).ok()
    }

    /// The name of the JetStream meta leader as server `i` sees it (`/jsz`
    /// `meta_cluster.leader`), or `None` if it knows none or does not answer.
    pub async fn meta_leader(&self, i: usize) -> Option<String> {
        let jsz = self.monitor(i, "/jsz").await?;
        let leader = jsz["meta_cluster"]["leader"].as_str()?;
        (!leader.is_empty()).then(|| leader.to_owned())
    }

    /// The names of the servers server `i` has a route to now (`/routez`). nats-server
    /// keeps a pool of several routes to each peer, so this is a set.
    pub async fn route_names(&self, i: usize) -> BTreeSet<String> {
        let Some(routez) = self.monitor(i, "/routez").await else {
            return BTreeSet::new();
        };
        let routes = routez["routes"].as_array().cloned().unwrap_or_default();
        routes
            .iter()
            .filter_map(|route| route["remote_name"].as_str().map(str::to_owned))
            .collect()
    }

    /// The last lines of server `i`'s output (across restarts), for failure messages;
    /// without the warnings the harness's own `/healthz` polls cause.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.servers[i].log_path).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| !line.contains(HEALTHCHECK_FAILED_LINE))
            .collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        // A test that failed first must not leave a server behind.
        for server in &self.servers {
            let mut child = server
                .child
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl NatsServer {
    /// Server `index` of a cluster with `ports`: writes its config under `root/n{index}`.
    fn create(
        root: &Path,
        index: usize,
        ports: &[ServerPorts],
        tls: Option<(&Path, &Path)>,
    ) -> NatsServer {
        let name = format!("n{index}");
        let dir = root.join(&name);
        let store_dir = dir.join("store");
        std::fs::create_dir_all(&store_dir).unwrap();
        let config_path = dir.join(format!("{name}.conf"));
        let mut config = config_text(&name, index, ports, &store_dir);
        if let Some((cert, key)) = tls {
            config.push_str(&format!(
                "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n",
                cert.display(),
                key.display()
            ));
        }
        std::fs::write(&config_path, config).unwrap();
        NatsServer {
            log_path: dir.join(format!("{name}.log")),
            name,
            client_port: ports[index].client,
            monitor_port: ports[index].monitor,
            config_path,
            store_dir,
            child: Mutex::new(None),
        }
    }

    /// Starts the process, not waiting for it to be ready.
    fn spawn(&self, binary: &Path) {
        let mut command = Command::new(binary);
        command.arg("--config").arg(&self.config_path);
        let child = spawn_logged(&mut command, &self.log_path);
        let previous = self.lock_child().replace(child);
        assert!(previous.is_none(), "{} started twice", self.name);
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap()
    }

    /// The running process's id; panics if the harness killed it.
    fn pid(&self) -> u32 {
        match self.lock_child().as_ref() {
            Some(child) => child.id(),
            None => panic!("{} is killed; restart it first", self.name),
        }
    }

    /// How the process ended, if it did; panics if the harness killed it.
    fn exit_status(&self) -> Option<std::process::ExitStatus> {
        match self.lock_child().as_mut() {
            Some(child) => child.try_wait().unwrap(),
            None => panic!("{} is killed; restart it first", self.name),
        }
    }
}

/// The config of server `index` of a cluster with `ports`, in nats-server's config syntax.
/// Listeners bind 127.0.0.1 only. JetStream stores are kept small for tests; with one
/// server there is no cluster block.
fn config_text(name: &str, index: usize, ports: &[ServerPorts], store_dir: &Path) -> String {
    let own = ports[index];
    let store_dir = store_dir.to_str().expect("a UTF-8 temporary path");
    assert!(
        !store_dir.contains(['"', '\\']),
        "a store path needs no quoting: {store_dir}"
    );
    let mut text = format!(
        "server_name: {name}\n\
         listen: \"127.0.0.1:{client}\"\n\
         http: \"127.0.0.1:{monitor}\"\n\
         jetstream {{\n  \
           store_dir: \"{store_dir}\"\n  \
           max_memory_store: 256MB\n  \
           max_file_store: 1GB\n\
         }}\n",
        client = own.client,
        monitor = own.monitor,
    );
    if ports.len() > 1 {
        // Array items need commas: nats-server's parser rejects items separated by spaces.
        let routes: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != index)
            .map(|(_, peer)| format!("\"nats-route://127.0.0.1:{}\"", peer.cluster))
            .collect();
        text.push_str(&format!(
            "cluster {{\n  \
               name: {CLUSTER_NAME}\n  \
               listen: \"127.0.0.1:{cluster}\"\n  \
               routes: [{routes}]\n\
             }}\n",
            cluster = own.cluster,
            routes = routes.join(", "),
        ));
    }
    text
}

/// `count` distinct ports free right now on 127.0.0.1. Another process may still take one
/// before a server binds it; the server then exits and [`NatsCluster::wait_ready`] says so.
fn distinct_free_ports(count: usize) -> Vec<u16> {
    let attempts_max = count * 10;
    let mut ports = BTreeSet::new();
    for _ in 0..attempts_max {
        if ports.len() == count {
            break;
        }
        ports.insert(free_port());
    }
    assert_eq!(ports.len(), count, "no {count} distinct free ports");
    ports.into_iter().collect()
}

/// The `nats-server` binary: `$KEEL_NATS_SERVER`, else `nats-server` on `PATH`. Checked once
/// per test process to run and to be at least [`NATS_SERVER_VERSION_MIN`].
pub fn nats_server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let binary = PathBuf::from(
            std::env::var_os(NATS_SERVER_ENV).unwrap_or_else(|| "nats-server".into()),
        );
        let output = Command::new(&binary)
            .arg("--version")
            .output()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run {} ({error}): run scripts/install-test-deps.sh, or set \
                     {NATS_SERVER_ENV} to a nats-server binary",
                    binary.display()
                )
            });
        let text = String::from_utf8_lossy(&output.stdout);
        let version = parse_version(&text);
        assert!(
            version.is_some_and(|version| version >= NATS_SERVER_VERSION_MIN),
            "{} --version says {text:?}; the tests need nats-server {}.{} or later: run \
             scripts/install-test-deps.sh, or set {NATS_SERVER_ENV}",
            binary.display(),
            NATS_SERVER_VERSION_MIN.0,
            NATS_SERVER_VERSION_MIN.1,
        );
        binary
    })
}

/// (major, minor) from `nats-server --version` output, `nats-server: v2.15.1`.
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let version = text.trim().rsplit(['v', ' ']).next()?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_version_reads_major_and_minor() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15)));
        assert_eq!(parse_version("nats-server: v2.9.25"), Some((2, 9)));
        assert_eq!(parse_version("nats-server: v2.12.0-beta.1"), Some((2, 12)));
        assert_eq!(parse_version("command not found"), None);
    }

    #[test]
    fn single_server_config_has_no_cluster_block() {
        let ports = [ServerPorts {
            client: 1,
            cluster: 2,
            monitor: 3,
        }];
        let text = config_text("n0", 0, &ports, Path::new("/tmp/s"));
        assert!(text.contains("listen: \"127.0.0.1:1\""));
        assert!(text.contains("http: \"127.0.0.1:3\""));
        assert!(!text.contains("cluster"));
    }

    #[test]
    fn cluster_config_routes_to_every_other_server() {
        let ports: Vec<ServerPorts> = (0..3)
            .map(|i| ServerPorts {
                client: 10 + i,
                cluster: 20 + i,
                monitor: 30 + i,
            })
            .collect();
        let text = config_text("n1", 1, &ports, Path::new("/tmp/s"));
        assert!(text.contains("listen: \"127.0.0.1:21\""));
        assert!(
            text.contains("routes: [\"nats-route://127.0.0.1:20\", \"nats-route://127.0.0.1:22\"]")
        );
    }
}

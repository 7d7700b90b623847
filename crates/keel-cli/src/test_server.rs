//! The real keel server for the CLI's unit tests: `keel_server::serve` on a free 127.0.0.1
//! port with a temporary data dir, so tests drive it through [`Client`] over a real socket and
//! check outcomes through the API, as any user of the CLI would.

use std::time::Duration;

use keel_api::read::Records;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::Client;
use crate::tail::read_events;
use crate::topic::{CreateArgs, put_topic};

/// How long a starting server may take to answer `/readyz` with 200; generous because the test
/// machine is shared and tests run in parallel.
const READY_WAIT_MS_MAX: u64 = 30_000;

/// Pause between two `/readyz` polls.
const READY_POLL_MS: u64 = 10;

/// Most records a test reads back from one partition in one request.
const READ_BACK_EVENTS_MAX: u64 = 1000;

/// A running server; dropping it asks it to stop, [`TestServer::stop`] also waits until it has.
pub(crate) struct TestServer {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), keel_server::ServerError>>>,
    /// Declared last so the directory outlives the fields that stop the server.
    _data_dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with default settings and waits until it is ready.
    pub(crate) async fn start() -> Self {
        let data_dir = tempfile::tempdir().expect("create a temporary data dir");
        let config = keel_server::ServerConfig {
            data_dir: data_dir.path().to_owned(),
            ..keel_server::ServerConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(keel_server::serve(listener, config, async move {
            // A dropped sender stops the server as well.
            let _ = stopped.await;
        }));
        let server = Self {
            url,
            stop: Some(stop),
            task: Some(task),
            _data_dir: data_dir,
        };
        server.wait_ready().await;
        server
    }

    /// A client of this server, as `--server URL` would make it.
    pub(crate) fn client(&self) -> Client {
        Client::new(&self.url, 1).expect("a 127.0.0.1 URL is valid")
    }

    /// Stops the server gracefully and checks it stopped without error.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.take().expect("stop is taken only here").send(());
        let task = self.task.take().expect("task is taken only here");
        let outcome = task.await.expect("the server task does not panic");
        outcome.expect("the server stops cleanly");
    }

    /// Creates topic `name` with `partitions` partitions and the server's other defaults.
    pub(crate) async fn create_topic(&self, name: &str, partitions: u32) {
        let args = CreateArgs {
            name: name.to_owned(),
            partitions: Some(partitions),
            ..CreateArgs::default()
        };
        put_topic(&self.client(), &args)
            .await
            .expect("create the test topic");
    }

    /// The events stored in one partition, in offset order, as JSON.
    pub(crate) async fn events(&self, topic: &str, partition: u32) -> Vec<Value> {
        let reply = read_events(&self.client(), topic, partition, 0, READ_BACK_EVENTS_MAX, 0)
            .await
            .expect("read the partition back");
        let records: Records = reply.json().expect("a read answer");
        records
            .records
            .iter()
            .map(|record| serde_json::from_str(record.event.get()).expect("events are JSON"))
            .collect()
    }

    async fn wait_ready(&self) {
        let client = self.client();
        let deadline = Instant::now() + Duration::from_millis(READY_WAIT_MS_MAX);
        while Instant::now() < deadline {
            if client.get(&["readyz"], &[]).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(READY_POLL_MS)).await;
        }
        panic!(
            "keel at {} not ready after {READY_WAIT_MS_MAX} ms",
            self.url
        );
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

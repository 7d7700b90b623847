//! The CLI's own client pointed at the test kit's in-process server, for the unit tests: they
//! drive the server through [`Client`] over a real socket and check outcomes through the API,
//! as any user of the CLI would.

use keel_client::Client;
use keel_testkit::server::TestServer;
use serde_json::Value;

use crate::tail::read_events;
use crate::topic::{CreateArgs, put_topic};

/// Most records a test reads back from one partition in one request.
const READ_BACK_EVENTS_MAX: u64 = 1000;

/// What the unit tests do with a [`TestServer`] through the CLI's own code.
pub(crate) trait TestClient {
    /// A client of this server, as `--server URL` would make it.
    fn cli_client(&self) -> Client;

    /// Creates topic `name` with `partitions` partitions and the server's other defaults.
    async fn create_topic(&self, name: &str, partitions: u32);

    /// The events stored in one partition, in offset order, as JSON.
    async fn events(&self, topic: &str, partition: u32) -> Vec<Value>;
}

impl TestClient for TestServer {
    fn cli_client(&self) -> Client {
        Client::builder(&self.url)
            .idle_connections_max(1)
            .build()
            .expect("a 127.0.0.1 URL is valid")
    }

    async fn create_topic(&self, name: &str, partitions: u32) {
        let args = CreateArgs {
            name: name.to_owned(),
            partitions: Some(partitions),
            ..CreateArgs::default()
        };
        put_topic(&self.cli_client(), &args)
            .await
            .expect("create the test topic");
    }

    async fn events(&self, topic: &str, partition: u32) -> Vec<Value> {
        let client = self.cli_client();
        let reply = read_events(&client, topic, partition, 0, READ_BACK_EVENTS_MAX, 0)
            .await
            .expect("read the partition back");
        reply
            .value()
            .records
            .iter()
            .map(|record| serde_json::from_str(record.event.get()).expect("events are JSON"))
            .collect()
    }
}

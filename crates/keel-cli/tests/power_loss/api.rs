//! A client of keel's HTTP API with typed answers for what the power-loss tests check. Calls
//! named `try_*` answer `None` when keel did not answer whole (it was killed); every other
//! surprise is a panic naming the answer.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::read_partition_from;

/// Where a stored event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    pub(crate) partition: u32,
    pub(crate) offset: u64,
}

/// One acknowledged publish.
#[derive(Clone, Debug)]
pub(crate) struct Published {
    pub(crate) id: String,
    pub(crate) position: Position,
}

/// One pulled message.
#[derive(Clone, Debug)]
pub(crate) struct Message {
    pub(crate) ack_id: String,
    pub(crate) event_id: String,
    /// Where the event was read (for a redriven one: where it was first read); its dead
    /// letter, if any, has the id `{partition}-{offset}`.
    pub(crate) position: Position,
}

/// A subscription's settle calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack,
    Reject,
}

/// Every event a topic stores: event id → position, and each partition's start offset (above
/// 0 only where retention deleted segments).
#[derive(Debug, Default)]
pub(crate) struct Stored {
    pub(crate) positions: HashMap<String, Position>,
    pub(crate) start_offsets: HashMap<u32, u64>,
}

impl Stored {
    /// Up to five of `acked` (event id, position) that are not at their position, though at
    /// or above their partition's start (what retention deleted is not lost).
    pub(crate) fn lost<'a>(
        &self,
        acked: impl IntoIterator<Item = (&'a String, Position)>,
    ) -> Vec<&'a String> {
        let kept = |position: &Position| position.offset >= self.start_offsets[&position.partition];
        acked
            .into_iter()
            .filter(|(id, position)| kept(position) && self.positions.get(*id) != Some(position))
            .map(|(id, _)| id)
            .take(5)
            .collect()
    }

    /// How many of `acked` retention deleted.
    pub(crate) fn expired<'a>(&self, acked: impl IntoIterator<Item = &'a Position>) -> usize {
        let below =
            |position: &&Position| position.offset < self.start_offsets[&position.partition];
        acked.into_iter().filter(below).count()
    }

    /// Adds partition `number`'s records, read from offset `start`, checking them.
    fn add(&mut self, topic: &str, number: u32, start: u64, records: &[Value]) {
        self.start_offsets.insert(number, start);
        for (offset, record) in (start..).zip(records) {
            let dense = record["offset"].as_u64() == Some(offset);
            assert!(dense, "{topic}/{number} not dense from {start}: {record}");
            let id = record["event"]["id"].as_str().expect("an intact event");
            let check = &record["event"]["data"]["check"];
            assert_eq!(*check, format!("{id}!"), "{id} intact");
            let position = Position {
                partition: number,
                offset,
            };
            let before = self.positions.insert(id.to_owned(), position);
            assert!(before.is_none(), "event {id} stored twice");
        }
    }
}

/// An event `id`, routed by `key` when given, whose data lets a reader check it is intact.
pub(crate) fn event(id: &str, key: Option<&str>) -> Value {
    let mut event = json!({"specversion": "1.0", "id": id, "source": "power-loss", "type": "t",
                           "data": {"check": format!("{id}!")}});
    if let Some(key) = key {
        event["partitionkey"] = json!(key);
    }
    event
}

/// The spec of a pull subscription of `topic` starting at `start` ("earliest" or "latest").
pub(crate) fn pull_spec(topic: &str, start: &str) -> Value {
    json!({"topic": topic, "start": start, "ack_timeout": "60s", "max_in_flight": 1000})
}

/// A keel's HTTP API; its address stays across restarts.
#[derive(Clone, Debug)]
pub(crate) struct Api {
    client: reqwest::Client,
    url: String,
}

impl Api {
    pub(crate) fn new(url: String) -> Api {
        Api {
            client: reqwest::Client::new(),
            url,
        }
    }

    /// Sends `body` (none when null) to `path` as JSON; the status and the body (JSON, or
    /// the text as a string), or `None` when keel did not answer whole.
    pub(crate) async fn try_send(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Option<(u16, Value)> {
        self.try_send_as(method, path, body, "application/json")
            .await
    }

    /// [`Api::try_send`] with the body's content type.
    async fn try_send_as(
        &self,
        method: Method,
        path: &str,
        body: &Value,
        content_type: &str,
    ) -> Option<(u16, Value)> {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if !body.is_null() {
            request = request
                .header("content-type", content_type)
                .body(body.to_string());
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        let text = response.text().await.ok()?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Some((status, body))
    }

    /// As [`Api::try_send`], to a keel that must answer.
    pub(crate) async fn send(&self, method: Method, path: &str, body: &Value) -> (u16, Value) {
        let answer = self.try_send(method.clone(), path, body).await;
        answer.unwrap_or_else(|| panic!("{method} {path}: keel did not answer"))
    }

    /// Sends, checks the answer's status is `status`, and returns its body.
    pub(crate) async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Value,
        status: u16,
    ) -> Value {
        let (answered, body) = self.send(method.clone(), path, &body).await;
        assert_eq!(answered, status, "{method} {path} answered {body}");
        body
    }

    /// Creates topic `name` with `config`, which keel must answer 201.
    pub(crate) async fn create_topic(&self, name: &str, config: Value) {
        let path = format!("/v1/topics/{name}");
        self.expect(Method::PUT, &path, config, 201).await;
    }

    /// Creates subscription `name` with `spec`, which keel must answer 201.
    pub(crate) async fn create_subscription(&self, name: &str, spec: Value) {
        let path = format!("/v1/subscriptions/{name}");
        self.expect(Method::PUT, &path, spec, 201).await;
    }

    /// GET `path`, which keel must answer 200: the body.
    pub(crate) async fn get(&self, path: &str) -> Value {
        self.expect(Method::GET, path, Value::Null, 200).await
    }

    /// Deletes `path` (a topic or a subscription), which keel must answer 204.
    pub(crate) async fn delete(&self, path: &str) {
        self.expect(Method::DELETE, path, Value::Null, 204).await;
    }

    /// The status of GET `path`.
    pub(crate) async fn status(&self, path: &str) -> u16 {
        self.send(Method::GET, path, &Value::Null).await.0
    }

    /// Publishes `events` to `topic`; `None` when keel did not answer.
    pub(crate) async fn try_publish(
        &self,
        topic: &str,
        events: Vec<Value>,
    ) -> Option<Vec<Published>> {
        let path = format!("/v1/topics/{topic}/events");
        let batch = Value::Array(events);
        let content_type = "application/cloudevents-batch+json";
        let (status, body) = self
            .try_send_as(Method::POST, &path, &batch, content_type)
            .await?;
        assert_eq!(status, 200, "publish to {topic} answered {body}");
        let results = body["results"].as_array().unwrap();
        Some(results.iter().map(published).collect())
    }

    /// Publishes `events` to `topic`, which keel must acknowledge.
    pub(crate) async fn publish(&self, topic: &str, events: Vec<Value>) -> Vec<Published> {
        let published = self.try_publish(topic, events).await;
        published.unwrap_or_else(|| panic!("publish to {topic}: keel did not answer"))
    }

    /// Pulls up to `max` messages, waiting up to `wait`; `None` when keel did not answer.
    pub(crate) async fn try_pull(
        &self,
        subscription: &str,
        max: usize,
        wait: &str,
    ) -> Option<Vec<Message>> {
        let path = format!("/v1/subscriptions/{subscription}/pull");
        let body = json!({"max": max, "wait": wait});
        let (status, body) = self.try_send(Method::POST, &path, &body).await?;
        assert_eq!(status, 200, "pull from {subscription} answered {body}");
        let messages = body["messages"].as_array().unwrap();
        Some(messages.iter().map(message).collect())
    }

    /// As [`Api::try_pull`], from a keel that must answer.
    pub(crate) async fn pull(&self, subscription: &str, max: usize, wait: &str) -> Vec<Message> {
        let messages = self.try_pull(subscription, max, wait).await;
        messages.unwrap_or_else(|| panic!("pull from {subscription}: keel did not answer"))
    }

    /// Pulls (acking each batch when `ack`) until a pull finds nothing for 300 ms; every
    /// message pulled.
    pub(crate) async fn pull_until_quiet(&self, subscription: &str, ack: bool) -> Vec<Message> {
        let mut pulled = Vec::new();
        loop {
            let messages = self.pull(subscription, 1000, "300ms").await;
            if messages.is_empty() {
                return pulled;
            }
            if ack {
                let stale = self.settle(subscription, Settle::Ack, &messages).await;
                assert!(
                    stale.is_empty(),
                    "acks of fresh pulls named stale: {stale:?}"
                );
            }
            pulled.extend(messages);
        }
    }

    /// Acks or rejects `messages`; the ack ids named stale, or `None` when keel did not
    /// answer.
    pub(crate) async fn try_settle(
        &self,
        subscription: &str,
        settle: Settle,
        messages: &[Message],
    ) -> Option<HashSet<String>> {
        let action = match settle {
            Settle::Ack => "ack",
            Settle::Reject => "reject",
        };
        let path = format!("/v1/subscriptions/{subscription}/{action}");
        let ack_ids: Vec<&str> = messages.iter().map(|m| m.ack_id.as_str()).collect();
        let body = json!({ "ack_ids": ack_ids });
        let (status, body) = self.try_send(Method::POST, &path, &body).await?;
        assert_eq!(status, 200, "{action} on {subscription} answered {body}");
        let stale = body["stale"].as_array().unwrap();
        Some(
            stale
                .iter()
                .map(|id| id.as_str().unwrap().to_owned())
                .collect(),
        )
    }

    /// As [`Api::try_settle`], on a keel that must answer.
    pub(crate) async fn settle(
        &self,
        subscription: &str,
        settle: Settle,
        messages: &[Message],
    ) -> HashSet<String> {
        let stale = self.try_settle(subscription, settle, messages).await;
        stale.unwrap_or_else(|| panic!("{settle:?} on {subscription}: keel did not answer"))
    }

    /// A subscription's description.
    pub(crate) async fn subscription(&self, name: &str) -> Value {
        self.get(&format!("/v1/subscriptions/{name}")).await
    }

    /// Every dead letter of `subscription`, in order: (entry id, event id). Checks that no
    /// event is listed twice.
    pub(crate) async fn dead_letters(&self, subscription: &str) -> Vec<(String, String)> {
        let mut entries = Vec::new();
        let mut path = format!("/v1/subscriptions/{subscription}/dlq?limit=1000");
        loop {
            let body = self.get(&path).await;
            for entry in body["entries"].as_array().unwrap() {
                let id = entry["id"].as_str().unwrap().to_owned();
                entries.push((id, entry["event"]["id"].as_str().unwrap().to_owned()));
            }
            let Some(after) = body["next_after"].as_str() else {
                break;
            };
            path = format!("/v1/subscriptions/{subscription}/dlq?limit=1000&after={after}");
        }
        let events: HashSet<&String> = entries.iter().map(|(_, event)| event).collect();
        assert_eq!(events.len(), entries.len(), "the DLQ lists an event twice");
        entries
    }

    /// Whether `subscription`'s DLQ holds the dead letter of the event at `position`.
    pub(crate) async fn is_dead_letter(&self, subscription: &str, position: Position) -> bool {
        let Position { partition, offset } = position;
        let path = format!("/v1/subscriptions/{subscription}/dlq/{partition}-{offset}");
        match self.send(Method::GET, &path, &Value::Null).await {
            (200, _) => true,
            (404, _) => false,
            (status, body) => panic!("GET {path} answered {status} {body}"),
        }
    }

    /// The event ids of every dead letter of `subscription`.
    pub(crate) async fn dead_event_ids(&self, subscription: &str) -> HashSet<String> {
        let entries = self.dead_letters(subscription).await;
        entries.into_iter().map(|(_, event)| event).collect()
    }

    /// Waits (up to 20 s) until `subscription`'s DLQ holds `depth` entries.
    pub(crate) async fn wait_dlq_depth(&self, subscription: &str, depth: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info = self.subscription(subscription).await;
            if info["dlq_depth"].as_u64() == Some(depth as u64) {
                return;
            }
            assert!(Instant::now() < deadline, "DLQ depth never {depth}: {info}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every event `topic` stores, read from each partition's start. Checks that no
    /// partition refuses service, that offsets are dense from the start, and that every event
    /// is intact and stored once.
    pub(crate) async fn stored(&self, topic: &str) -> Stored {
        let info = self.get(&format!("/v1/topics/{topic}")).await;
        let mut stored = Stored::default();
        for partition in info["partitions"].as_array().unwrap() {
            let unavailable = &partition["unavailable"];
            assert!(unavailable.is_null(), "a partition refuses service: {info}");
            let number = partition["partition"].as_u64().unwrap() as u32;
            let from = partition["start_offset"].as_u64().unwrap();
            let (start, records) =
                read_partition_from(&self.client, &self.url, topic, number, from).await;
            stored.add(topic, number, start, &records);
        }
        stored
    }
}

fn published(result: &Value) -> Published {
    Published {
        id: result["id"].as_str().unwrap().to_owned(),
        position: position(result),
    }
}

fn message(message: &Value) -> Message {
    Message {
        ack_id: message["ack_id"].as_str().unwrap().to_owned(),
        event_id: message["event"]["id"].as_str().unwrap().to_owned(),
        position: position(message),
    }
}

/// The `partition` and `offset` of a publish result or a pulled message.
fn position(value: &Value) -> Position {
    Position {
        partition: value["partition"].as_u64().unwrap() as u32,
        offset: value["offset"].as_u64().unwrap(),
    }
}

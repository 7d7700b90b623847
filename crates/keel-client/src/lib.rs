//! A Rust client of keel's HTTP API, for remote use.
//!
//! - [`Client`]: one typed call per endpoint (topics, publish, read, subscriptions, pull and
//!   settle, stateful acks, dead letters, per-key state), over the request and answer types
//!   of `keel-api`. Answers are kept as the server sent them ([`Answer`]) and decode into
//!   those types, borrowing events as raw JSON instead of copying them.
//! - [`Publisher`]: collects events into batches, gives each an id before its first attempt,
//!   and retries failed sends with the same ids, so keel's (`source`, `id`) dedupe makes the
//!   retries safe; each caller gets its own event's position.
//! - [`Consumer`]: a pull loop running an async handler on each message with bounded
//!   concurrency; it acks, nacks (with backoff), rejects or commits state as the handler says,
//!   survives a panicking handler, and shuts down gracefully.
//!
//! Every failure is one [`ClientError`], which keeps the server's RFC 9457 problem and says
//! whether trying again may help ([`ClientError::is_retryable`]).
//!
//! ```no_run
//! use keel_client::{Client, Consumer, Message, Outcome, Publisher};
//! use serde_json::json;
//!
//! # async fn example() -> Result<(), keel_client::ClientError> {
//! let client = Client::new("http://127.0.0.1:7171")?;
//! let publisher = Publisher::new(client.clone(), "orders");
//! let stored = publisher
//!     .publish(json!({"specversion": "1.0", "source": "shop", "type": "order.created",
//!         "data": {"amount": 42}}))
//!     .await?;
//! println!("stored at {}/{}", stored.partition, stored.offset);
//!
//! let consumer = Consumer::builder(client, "billing").concurrency(8).start(
//!     |message: Message| async move {
//!         println!("{}", message.event_json().get());
//!         Ok(Outcome::Ack)
//!     },
//! );
//! // … later:
//! let stats = consumer.shutdown().await;
//! publisher.close().await;
//! println!("handled {}", stats.handled);
//! # Ok(())
//! # }
//! ```

mod alerts;
mod client;
mod consumer;
mod dead_letters;
mod error;
mod event_id;
mod events;
mod health;
pub mod limits;
mod publisher;
mod state;
mod subscriptions;
mod tokens;
mod topics;

pub use client::{
    Answer, Body, CONTENT_TYPE_BATCH, CONTENT_TYPE_EVENT, CONTENT_TYPE_JSON, Client, ClientBuilder,
    DEFAULT_SERVER, Decode, Reply,
};
pub use consumer::{Consumer, ConsumerBuilder, ConsumerStats, HandlerError, Message, Outcome};
pub use error::ClientError;
pub use event_id::EventIds;
pub use publisher::{Publisher, PublisherBuilder, Receipt};
pub use reqwest::{Method, StatusCode};
pub use subscriptions::Settlement;

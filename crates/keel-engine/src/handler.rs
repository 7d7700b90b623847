//! In-process handlers: Rust code that handles a subscription's events inside the process that
//! runs the engine, with the semantics of push and pull: `Ok` acknowledges (and, on a stateful
//! subscription, commits the new state and the events to emit with the ack, at once), a
//! retryable error retries with the subscription's backoff, a permanent error dead-letters, and
//! a panic or a handler that runs past the subscription's `ack_timeout` counts as a failed
//! attempt while every other key and subscription keeps flowing.
//!
//! A handler is attached to a subscription without a sink ([`Engine::attach`]); it takes the
//! subscription's events as a pull consumer would, without HTTP or ack ids, up to
//! `max_in_flight` at once (and with `"ordering": "key"`, one per key).
//!
//! ```
//! use keel_engine::handler::{Delivered, Handled, HandlerError, handler_fn};
//! # use keel_engine::{Engine, EngineConfig, TopicConfig};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let engine = Engine::open(EngineConfig::new(dir.path())).await?;
//! # engine.create_topic("orders", TopicConfig::default()).await?;
//! # let spec = serde_json::from_value(serde_json::json!({"topic": "orders"}))?;
//! # engine.create_subscription("audit", spec).await?;
//! let attached = engine.attach(
//!     "audit",
//!     handler_fn(|event: Delivered| async move {
//!         match event.data::<serde_json::Value>() {
//!             Ok(data) => {
//!                 println!("{} {data}", event.id());
//!                 Ok(Handled::ack())
//!             }
//!             Err(error) => Err(HandlerError::permanent(error)),
//!         }
//!     }),
//! )?;
//! // … the engine delivers; then:
//! attached.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! A stateful subscription's handler gets its key's state typed and returns the new one:
//! see [`stateful_fn`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::subscription::KeyState;

#[cfg(doc)]
use crate::Engine;

/// A boxed future a handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Handled, HandlerError>> + Send>>;

/// Handles one subscription's events. Implemented for you by [`handler_fn`] and
/// [`stateful_fn`]; implement it on your own type for a handler with state of its own.
pub trait Handler: Send + Sync + 'static {
    /// Handles one delivered event.
    fn handle(&self, event: Delivered) -> HandlerFuture;
}

/// An event as a handler receives it.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub(crate) json: Arc<str>,
    pub(crate) partition: u32,
    pub(crate) offset: u64,
    pub(crate) attempt: u32,
    pub(crate) state: Option<KeyState>,
}

impl Delivered {
    /// The CloudEvent as stored (JSON).
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The event parsed into `T` (the whole CloudEvent).
    pub fn event<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.json)
    }

    /// The event's `data` parsed into `T`.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        #[derive(serde::Deserialize)]
        struct Data<T> {
            data: T,
        }
        serde_json::from_str::<Data<T>>(&self.json).map(|event| event.data)
    }

    /// The event's `id`.
    pub fn id(&self) -> String {
        crate::event::identity_of(self.json.as_bytes())
            .map(|(_, id)| id)
            .unwrap_or_default()
    }

    /// The event's `partitionkey`, when it has one.
    pub fn key(&self) -> Option<String> {
        crate::event::key_of(self.json.as_bytes())
    }

    /// The partition it was read from (for a redriven event: where it was first read).
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Its offset there.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// 1 for the first delivery.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// A stateful subscription's: the key's state as JSON and its version (none for an event
    /// without a key, or a subscription that is not stateful).
    pub fn key_state(&self) -> Option<&KeyState> {
        self.state.as_ref()
    }
}

/// A handler's success: ack, and on a stateful subscription commit with the ack the key's new
/// state and the events to emit.
#[derive(Debug, Default)]
pub struct Handled {
    /// The key's new state: none keeps it, `null` deletes it.
    pub(crate) state: Option<Box<RawValue>>,
    /// Events to publish with the commit: (topic, CloudEvent without `id`).
    pub(crate) emit: Vec<keel_api::state::Emit>,
}

impl Handled {
    /// Acknowledges; a stateful key's state stays as it is.
    pub fn ack() -> Handled {
        Handled::default()
    }

    /// Acknowledges and sets the key's state to `state` (stateful subscriptions).
    pub fn with_state(state: &impl Serialize) -> Result<Handled, HandlerError> {
        Ok(Handled {
            state: Some(to_raw(state)?),
            emit: Vec::new(),
        })
    }

    /// Acknowledges and deletes the key's state (stateful subscriptions).
    pub fn delete_state() -> Handled {
        Handled {
            state: Some(RawValue::NULL.to_owned()),
            emit: Vec::new(),
        }
    }

    /// Also publishes `event` (a CloudEvent; keel sets its `id`) to `topic`, in the same
    /// commit (stateful subscriptions).
    pub fn emit(mut self, topic: &str, event: &impl Serialize) -> Result<Handled, HandlerError> {
        self.emit.push(keel_api::state::Emit {
            topic: topic.to_owned(),
            event: to_raw(event)?,
        });
        Ok(self)
    }
}

fn to_raw(value: &impl Serialize) -> Result<Box<RawValue>, HandlerError> {
    serde_json::value::to_raw_value(value).map_err(HandlerError::permanent)
}

/// Why a handler did not handle an event.
#[derive(Debug)]
pub enum HandlerError {
    /// Try again after the subscription's backoff (or `delay`); dead-lettered after the last
    /// attempt.
    Retry {
        /// What went wrong, for the dead-letter record.
        reason: String,
        /// Wait exactly this long before the next attempt.
        delay: Option<Duration>,
    },
    /// Never to succeed: dead-letter at once.
    Permanent {
        /// What went wrong, for the dead-letter record.
        reason: String,
    },
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn retry(reason: impl std::fmt::Display) -> HandlerError {
        HandlerError::Retry {
            reason: reason.to_string(),
            delay: None,
        }
    }

    /// A failure no retry will fix: the event is dead-lettered.
    pub fn permanent(reason: impl std::fmt::Display) -> HandlerError {
        HandlerError::Permanent {
            reason: reason.to_string(),
        }
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    /// Any error is retried by default.
    fn from(error: E) -> Self {
        HandlerError::retry(error)
    }
}

/// A handler from an async closure.
pub fn handler_fn<F, Fut>(function: F) -> impl Handler
where
    F: Fn(Delivered) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Handled, HandlerError>> + Send + 'static,
{
    FnHandler(function)
}

struct FnHandler<F>(F);

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Delivered) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Handled, HandlerError>> + Send + 'static,
{
    fn handle(&self, event: Delivered) -> HandlerFuture {
        Box::pin((self.0)(event))
    }
}

/// What a stateful handler answers: the key's next state (or none, to delete it), and events
/// to emit with it.
#[derive(Debug)]
pub struct Next<S> {
    state: Option<S>,
    emit: Vec<(String, serde_json::Value)>,
}

impl<S> Next<S> {
    /// The key's state becomes `state`.
    pub fn state(state: S) -> Next<S> {
        Next {
            state: Some(state),
            emit: Vec::new(),
        }
    }

    /// The key's state is deleted.
    pub fn delete() -> Next<S> {
        Next {
            state: None,
            emit: Vec::new(),
        }
    }

    /// Also publishes `event` (a CloudEvent as JSON; keel sets its `id`) to `topic`, exactly
    /// once, with the state.
    pub fn emit(mut self, topic: &str, event: serde_json::Value) -> Next<S> {
        self.emit.push((topic.to_owned(), event));
        self
    }
}

/// A stateful subscription's handler from an async closure: it gets the event and its key's
/// state as `S` (none when the key has none) and returns the next state. keel commits the
/// state, the emitted events and the ack at once; a redelivery of an event whose commit
/// happened never reaches the handler again.
///
/// ```
/// use keel_engine::handler::{Delivered, HandlerError, Next, stateful_fn};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Default)]
/// struct Balance {
///     total: i64,
/// }
///
/// let handler = stateful_fn(|event: Delivered, balance: Option<Balance>| async move {
///     let amount: i64 = event.data::<serde_json::Value>()?["amount"]
///         .as_i64()
///         .ok_or_else(|| HandlerError::permanent("no amount"))?;
///     let total = balance.unwrap_or_default().total + amount;
///     Ok(Next::state(Balance { total }).emit(
///         "receipts",
///         serde_json::json!({"specversion": "1.0", "source": "/ledger", "type": "receipt",
///                            "data": {"total": total}}),
///     ))
/// });
/// # let _ = handler;
/// ```
pub fn stateful_fn<S, F, Fut>(function: F) -> impl Handler
where
    S: Serialize + DeserializeOwned + Send + 'static,
    F: Fn(Delivered, Option<S>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Next<S>, HandlerError>> + Send + 'static,
{
    StatefulHandler(function, std::marker::PhantomData)
}

struct StatefulHandler<F, S>(F, std::marker::PhantomData<fn() -> S>);

impl<S, F, Fut> Handler for StatefulHandler<F, S>
where
    S: Serialize + DeserializeOwned + Send + 'static,
    F: Fn(Delivered, Option<S>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Next<S>, HandlerError>> + Send + 'static,
{
    fn handle(&self, event: Delivered) -> HandlerFuture {
        let state = event
            .key_state()
            .and_then(|state| state.state.as_deref())
            .map(serde_json::from_str::<S>)
            .transpose();
        let state = match state {
            Ok(state) => state,
            Err(error) => {
                let reason =
                    format!("the key's state does not parse as the handler's type: {error}");
                return Box::pin(std::future::ready(Err(HandlerError::permanent(reason))));
            }
        };
        let next = (self.0)(event, state);
        Box::pin(async move {
            let next = next.await?;
            let mut handled = match &next.state {
                Some(state) => Handled::with_state(state)?,
                None => Handled::delete_state(),
            };
            for (topic, event) in &next.emit {
                handled = handled.emit(topic, event)?;
            }
            Ok(handled)
        })
    }
}

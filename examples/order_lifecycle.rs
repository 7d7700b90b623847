//! Run: `cargo run -p keel-examples --bin order_lifecycle -- --data-dir /tmp/orders`
//!
//! An order's life cycle as a state machine, in a program that embeds keel: no server, no
//! HTTP. keel keeps each order's status as the state of its key (the order id) in a stateful
//! subscription, and an in-process handler moves it along `created → paid → shipped →
//! delivered`. An event that does not fit (paid before created, shipped before paid, created
//! twice) is refused with a permanent error, so keel puts it in the subscription's
//! dead-letter queue with the reason, and the order's other events carry on.
//!
//! The program publishes a scripted set of order events, some of them out of place, waits
//! until the subscription has handled them all, prints every order's final status and the
//! dead letters, and exits. Run again on the same directory, it publishes nothing more and
//! prints the same.

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use keel_engine::handler::{Delivered, HandlerError, Next, stateful_fn};
use keel_engine::{Created, Engine, EngineConfig, TopicConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The order events the program publishes: (event id, order, event type), in this order.
/// Four are out of place and end in the dead-letter queue.
const SCRIPT: &[(&str, &str, &str)] = &[
    ("e01", "order-1", "order.created"),
    ("e02", "order-2", "order.created"),
    ("e03", "order-1", "order.paid"),
    ("e04", "order-2", "order.shipped"), // out of place: order-2 is not paid yet
    ("e05", "order-3", "order.paid"),    // out of place: order-3 was never created
    ("e06", "order-1", "order.shipped"),
    ("e07", "order-2", "order.paid"),
    ("e08", "order-4", "order.created"),
    ("e09", "order-1", "order.delivered"),
    ("e10", "order-4", "order.created"), // out of place: order-4 exists already
    ("e11", "order-2", "order.shipped"),
    ("e12", "order-1", "order.paid"), // out of place: order-1 is delivered
];

/// The topic the orders' events go to, and the subscription that keeps their status.
const TOPIC: &str = "orders";
const SUBSCRIPTION: &str = "order-status";

/// How long to wait for the handler to get through the script.
const SETTLE_WAIT: Duration = Duration::from_secs(30);

/// Order life cycle: an embedded keel with a stateful in-process handler.
#[derive(Parser)]
struct Args {
    /// Where keel keeps the topic, the subscription and the orders' status.
    #[arg(long)]
    data_dir: PathBuf,
}

/// An order's status: the state keel keeps for the order's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Created,
    Paid,
    Shipped,
    Delivered,
}

/// The status an event of type `event_type` moves an order to from `current` (none for an
/// order keel has no state for), or why the event does not fit.
fn next_status(current: Option<Status>, event_type: &str) -> Result<Status, String> {
    match (current, event_type) {
        (None, "order.created") => Ok(Status::Created),
        (Some(Status::Created), "order.paid") => Ok(Status::Paid),
        (Some(Status::Paid), "order.shipped") => Ok(Status::Shipped),
        (Some(Status::Shipped), "order.delivered") => Ok(Status::Delivered),
        (None, _) => Err(format!("{event_type} for an unknown order")),
        (Some(status), _) => Err(format!("{event_type} does not follow {status}")),
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Status::Created => "created",
            Status::Paid => "paid",
            Status::Shipped => "shipped",
            Status::Delivered => "delivered",
        };
        f.write_str(name)
    }
}

/// The CloudEvent attribute the handler reads.
#[derive(Deserialize)]
struct Attributes {
    #[serde(rename = "type")]
    event_type: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .init();

    // keel in this process, storing under the data directory (crash-safe, as `keel serve`).
    let engine = Engine::open(EngineConfig::new(&args.data_dir)).await?;
    let created = engine.create_topic(TOPIC, TopicConfig::default()).await?;
    // Stateful: one JSON state per key (the events' `partitionkey`), committed with each ack.
    // Key ordering hands a key's events to the handler one at a time, in order.
    let spec = serde_json::from_value(json!({
        "topic": TOPIC, "ordering": "key", "stateful": true, "start": "earliest",
    }))?;
    engine.create_subscription(SUBSCRIPTION, spec).await?;

    // The handler gets the event and its order's status (none for an order never seen), and
    // returns the next status, which keel commits with the ack, exactly once. A permanent
    // error dead-letters the event at once, with the reason; the status stays as it was.
    let handler = stateful_fn(|event: Delivered, status: Option<Status>| async move {
        let attributes: Attributes = event.event().map_err(HandlerError::permanent)?;
        let next = next_status(status, &attributes.event_type).map_err(HandlerError::permanent)?;
        Ok(Next::state(next))
    });
    let attached = engine.attach(SUBSCRIPTION, handler)?;

    if created == Created::New {
        publish_script(&engine).await?;
    } else {
        println!("the {TOPIC} topic exists already: publishing nothing more");
    }
    wait_until_settled(&engine).await?;
    print_outcome(&engine).await?;

    // Stop the handler (it finishes the calls in flight), then the engine.
    attached.stop().await;
    engine.shut_down().await;
    Ok(())
}

/// Publishes the script, one event at a time; each is durable when `publish` returns.
async fn publish_script(engine: &Engine) -> Result<(), Box<dyn Error>> {
    for (id, order, event_type) in SCRIPT {
        let event = keel_engine::event::from_value(json!({
            "specversion": "1.0", "id": id, "source": "/shop", "type": event_type,
            "partitionkey": order,
        }))?;
        engine.publish(TOPIC, vec![event]).await?;
    }
    println!("published {} order events", SCRIPT.len());
    Ok(())
}

/// Waits until every published event is done: handled, or dead-lettered.
async fn wait_until_settled(engine: &Engine) -> Result<(), Box<dyn Error>> {
    let deadline = Instant::now() + SETTLE_WAIT;
    loop {
        let info = engine.describe_subscription(SUBSCRIPTION)?;
        if info.lag == 0 && info.in_flight == 0 && info.pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{SUBSCRIPTION} still has {} events to do", info.lag).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Prints each order's status (from keel's state) and the dead-letter queue.
async fn print_outcome(engine: &Engine) -> Result<(), Box<dyn Error>> {
    let (orders, _more) = engine.list_state(SUBSCRIPTION, None, 100).await?;
    println!("final status of each order:");
    for order in &orders {
        let status: Status = serde_json::from_str(order.state.get())?;
        println!("  {}: {status}", order.key);
    }
    let (dead_letters, _more) = engine.dlq_list(SUBSCRIPTION, None, 100).await?;
    println!("dead letters:");
    for entry in &dead_letters {
        let event: serde_json::Value = serde_json::from_str(entry.event.get())?;
        let reason = entry.last_error.as_deref().unwrap_or("no reason");
        println!(
            "  {} ({} of {}): {reason}",
            event["id"].as_str().unwrap_or("?"),
            event["type"].as_str().unwrap_or("?"),
            event["partitionkey"].as_str().unwrap_or("?"),
        );
    }
    Ok(())
}

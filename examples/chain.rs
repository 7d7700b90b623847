//! Run: `cargo run -p keel-examples --bin chain -- --data-dir /tmp/chain --listen 127.0.0.1:7171`
//!
//! A chain of two stateful in-process handlers, orders → invoices → notifications, in a
//! program that embeds keel and also serves keel's HTTP API from the same engine, so that
//! anything that speaks to `keel serve` can publish orders to it while it runs:
//!
//! ```sh
//! keel publish orders --type order.placed --source shop --key alice --data '{"amount": 42}'
//! keel tail notifications --from earliest
//! keel sub state billing alice
//! ```
//!
//! - `billing` reads `orders` (keyed by customer): it keeps each customer's order count and
//!   total, and emits one invoice per order to `invoices`.
//! - `notifier` reads `invoices`: it keeps each customer's invoice count and total, and emits
//!   one notification per invoice to `notifications`.
//!
//! Each handler's new state, the event it emits and its ack are one commit, so each order
//! makes exactly one invoice and one notification, and the totals stay exact, however the
//! program is stopped (even by `kill -9`: run it again on the same directory and it carries
//! on). Ctrl-C or SIGTERM stops it gracefully: it stops accepting requests, finishes those in
//! flight, lets the handlers finish their calls, and exits.

use std::error::Error;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use keel_engine::handler::{Delivered, HandlerError, Next, stateful_fn};
use keel_engine::{Engine, EngineConfig, TopicConfig};
use keel_server::ServerConfig;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A chain of two stateful in-process handlers, serving keel's HTTP API.
#[derive(Parser)]
struct Args {
    /// Where keel keeps the topics, the subscriptions and their state.
    #[arg(long)]
    data_dir: PathBuf,
    /// Where to serve keel's HTTP API.
    #[arg(long, default_value = "127.0.0.1:7171")]
    listen: SocketAddr,
}

/// A customer's running figures: the state of the customer's key in each subscription.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Totals {
    /// Events handled for the customer.
    count: u64,
    /// The sum of their amounts.
    amount: u64,
}

/// What an order carries, and what an invoice carries on.
#[derive(Deserialize)]
struct Order {
    amount: u64,
}

#[derive(Deserialize)]
struct Invoice {
    order: String,
    number: u64,
    amount: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .init();

    let engine = Engine::open(EngineConfig::new(&args.data_dir)).await?;
    for topic in ["orders", "invoices", "notifications"] {
        // A topic that exists already is kept as it is, with whatever settings it was given.
        if engine.describe_topic(topic).is_err() {
            engine.create_topic(topic, TopicConfig::default()).await?;
        }
    }
    for (subscription, topic) in [("billing", "orders"), ("notifier", "invoices")] {
        // Creating a subscription that exists with the same spec changes nothing.
        let spec = serde_json::from_value(json!({
            "topic": topic, "ordering": "key", "stateful": true, "start": "earliest",
        }))?;
        engine.create_subscription(subscription, spec).await?;
    }

    // orders → invoices: count the customer's orders, and invoice each one. The invoice's id
    // is set by keel from the order's position, so no crash or retry can issue it twice.
    let billing = stateful_fn(|order: Delivered, totals: Option<Totals>| async move {
        let customer = order
            .key()
            .ok_or_else(|| HandlerError::permanent("no customer"))?;
        let amount = order
            .data::<Order>()
            .map_err(HandlerError::permanent)?
            .amount;
        let mut totals = totals.unwrap_or_default();
        totals.count += 1;
        totals.amount += amount;
        let invoice = json!({
            "specversion": "1.0", "source": "/billing", "type": "invoice.issued",
            "partitionkey": customer,
            "data": {"order": order.id(), "number": totals.count, "amount": amount},
        });
        Ok(Next::state(totals).emit("invoices", invoice))
    });

    // invoices → notifications: one notification per invoice, and the customer's totals.
    let notifier = stateful_fn(|invoice: Delivered, totals: Option<Totals>| async move {
        let customer = invoice
            .key()
            .ok_or_else(|| HandlerError::permanent("no customer"))?;
        let data = invoice.data::<Invoice>().map_err(HandlerError::permanent)?;
        let mut totals = totals.unwrap_or_default();
        totals.count += 1;
        totals.amount += data.amount;
        let text = format!(
            "{customer}: invoice {} for order {}, {} (total {})",
            data.number, data.order, data.amount, totals.amount
        );
        let notification = json!({
            "specversion": "1.0", "source": "/notifier", "type": "notification.sent",
            "partitionkey": customer, "data": {"order": data.order, "text": text},
        });
        Ok(Next::state(totals).emit("notifications", notification))
    });

    let handlers = [
        engine.attach("billing", billing)?,
        engine.attach("notifier", notifier)?,
    ];

    // Serve keel's HTTP API from the same engine until Ctrl-C or SIGTERM.
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let signalled = engine.clone();
    let shutdown = async move {
        stop_signal().await;
        // Ends the long polls in progress, so their requests finish now.
        signalled.begin_shutdown();
    };
    keel_server::serve_engine(listener, engine.clone(), &ServerConfig::default(), shutdown).await?;

    // The server has finished its requests: let the handlers finish their calls, then stop
    // the engine (it commits and fsyncs what is queued).
    for handler in handlers {
        handler.stop().await;
    }
    engine.shut_down().await;
    println!("stopped cleanly");
    Ok(())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

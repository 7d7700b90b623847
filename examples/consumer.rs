//! Run: `cargo run -p keel-examples --bin consumer -- --server http://127.0.0.1:7171`
//!
//! A consumer in a process of its own, talking to a running `keel serve` with the Rust client
//! (`keel-client`): it keeps each store's sales count and revenue from the `sales` topic that
//! `producer.rs` fills, until Ctrl-C or SIGTERM.
//!
//! The totals live in keel, not in this process: the `store-totals` subscription is stateful,
//! so each pulled sale comes with its store's totals, and the handler's answer commits the new
//! totals together with the ack, at once. A sale whose commit happened is never handed out
//! again, so the totals stay exact across crashes of this consumer or of keel. Read them with
//!
//! ```sh
//! curl http://127.0.0.1:7171/v1/subscriptions/store-totals/state/berlin
//! ```
//!
//! The client's `Consumer` pulls, runs the handler on up to `--concurrency` sales at once
//! (with key ordering, one per store at a time, in order), and sends the acks in batches. On
//! Ctrl-C it stops pulling, lets the running handlers finish and sends their acks.

use std::error::Error;

use clap::Parser;
use keel_api::subscriptions::{NamedPosition, Ordering, StartPosition, SubscriptionSettings};
use keel_client::{Client, Consumer, Message, Outcome};
use serde::{Deserialize, Serialize};

/// Keeps each store's sales totals in keel with the Rust client.
#[derive(Parser)]
struct Args {
    /// keel's HTTP API.
    #[arg(long, default_value = keel_client::DEFAULT_SERVER)]
    server: String,
    /// Most sales handled at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

/// A store's totals: the state keel keeps for the store's key.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreTotals {
    sales: u64,
    revenue: u64,
}

/// What a sale event carries.
#[derive(Deserialize)]
struct Sale {
    data: SaleData,
}

#[derive(Deserialize)]
struct SaleData {
    amount: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let client = Client::new(&args.server)?;
    // Created once; the same settings again change nothing.
    let settings = SubscriptionSettings {
        topic: "sales".to_owned(),
        ordering: Some(Ordering::Key),
        stateful: true,
        start: Some(StartPosition::Named(NamedPosition::Earliest)),
        ..SubscriptionSettings::default()
    };
    client
        .create_subscription("store-totals", &settings)
        .await?;

    let consumer = Consumer::builder(client, "store-totals")
        .concurrency(args.concurrency)
        .start(|message: Message| async move {
            // The store's totals as last committed (none for a store's first sale).
            let mut totals: StoreTotals = message.state()?.unwrap_or_default();
            let sale: Sale = message.event()?;
            totals.sales += 1;
            totals.revenue += sale.data.amount;
            // Committed with the ack. An error above would nack the sale instead: it comes
            // back later, with the totals as they were.
            Ok(Outcome::ack_with_state(&totals)?)
        });
    println!("consuming store-totals; Ctrl-C stops");

    stop_signal().await;
    let stats = consumer.shutdown().await;
    println!(
        "stopped: {} sales handled, {} commits applied, {} failed, {} stale",
        stats.handled, stats.acked, stats.failed, stats.stale
    );
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

//! Run: `cargo run -p keel-examples --bin producer -- --server http://127.0.0.1:7171 --count 1000`
//!
//! A producer in a process of its own, talking to a running `keel serve` with the Rust client
//! (`keel-client`): it creates the `sales` topic and publishes `--count` sales spread over a
//! few stores (each sale's `partitionkey` is its store), then exits. `consumer.rs` keeps each
//! store's totals.
//!
//! The client's `Publisher` gathers the events into batches and sends one batch at a time.
//! It gives every event an id before the first attempt and retries a failed batch (keel
//! unreachable, a timeout, 429 or 5xx) with backoff and the same ids, so that when a failed
//! attempt was in fact stored, keel's dedupe answers "duplicate" instead of storing the sale
//! twice. A sale whose receipt says it is stored is durable (fsynced) in keel.

use std::error::Error;

use clap::Parser;
use keel_api::topics::TopicSettings;
use keel_client::{Client, Publisher};
use serde_json::json;

/// The stores the sales are spread over.
const STORES: [&str; 5] = ["amsterdam", "berlin", "lisbon", "oslo", "rome"];

/// Publishes sales to keel with the Rust client.
#[derive(Parser)]
struct Args {
    /// keel's HTTP API.
    #[arg(long, default_value = keel_client::DEFAULT_SERVER)]
    server: String,
    /// How many sales to publish.
    #[arg(long, default_value_t = 1000)]
    count: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let client = Client::new(&args.server)?;
    // Four partitions: the stores' sales are read in parallel, each store's in order.
    let settings = TopicSettings {
        partitions: Some(4),
        ..TopicSettings::default()
    };
    client.create_topic("sales", &settings).await?;

    let publisher = Publisher::new(client, "sales");
    // `send` queues the event and returns at once with a receipt; the events queued meanwhile
    // go out together in a batch.
    let mut receipts = Vec::new();
    for n in 0..args.count {
        let sale = json!({
            "specversion": "1.0", "source": "/tills", "type": "sale",
            "partitionkey": STORES[(n % 5) as usize],
            "data": {"amount": 1 + n * 37 % 100},
        });
        receipts.push(publisher.send(sale).await?);
    }
    // Each receipt resolves once its sale is durable, or to the error that ended its batch's
    // attempts.
    let mut duplicates = 0;
    for receipt in receipts {
        if receipt.await?.duplicate {
            duplicates += 1;
        }
    }
    publisher.close().await;
    println!(
        "published {} sales ({duplicates} answered as duplicates of a retried batch)",
        args.count
    );
    Ok(())
}

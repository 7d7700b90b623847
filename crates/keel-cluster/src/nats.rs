//! The connection to NATS, on a runtime of its own.
//!
//! The storage seam's methods block (the engine calls them from blocking threads, and a few
//! reads inline from async tasks); the NATS client is async. Every call therefore runs as a
//! task on this module's own small runtime and the caller waits on a channel, which works
//! from any thread: a blocking-pool thread, a plain thread, or (briefly) an async worker of
//! the engine's runtime. Were the client on the engine's runtime instead, workers blocked on
//! it could starve the very tasks that drive its sockets.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;

use crate::error::ClusterError;
use crate::node::NatsTls;

/// Worker threads of the NATS runtime: the client's socket task and the calls in flight
/// are light; two keep one slow call from delaying the others.
const RUNTIME_THREADS: usize = 2;
/// How long a JetStream call (a publish's acknowledgement, an API request) may take before
/// it fails as unavailable: longer than a JetStream leader election (a few seconds).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the first connection may take at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to a NATS cluster with JetStream, usable from blocking code.
#[derive(Clone)]
pub(crate) struct Nats {
    pub(crate) client: async_nats::Client,
    pub(crate) jetstream: jetstream::Context,
    runtime: Arc<RuntimeOwner>,
}

/// Owns the runtime, and shuts it down without blocking when the last handle goes (a drop
/// inside the engine's runtime must not block).
struct RuntimeOwner {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
}

impl Drop for RuntimeOwner {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.lock().expect("runtime lock").take() {
            runtime.shutdown_background();
        }
    }
}

impl Nats {
    /// Connects to the servers of `urls` (comma-separated `nats://host:port`), naming the
    /// connection after the node. Blocking.
    pub(crate) fn connect(
        urls: &str,
        connection_name: &str,
        tls: &NatsTls,
    ) -> Result<Nats, ClusterError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("keel-nats")
            .enable_all()
            .build()
            .map_err(|source| ClusterError::Runtime { source })?;
        let handle = runtime.handle().clone();
        let owner = Arc::new(RuntimeOwner {
            runtime: Mutex::new(Some(runtime)),
            handle,
        });
        let (urls, name, tls) = (urls.to_owned(), connection_name.to_owned(), tls.clone());
        let connected = run_on(&owner.handle, async move {
            let mut options = async_nats::ConnectOptions::new()
                .name(name)
                .connection_timeout(CONNECT_TIMEOUT)
                .request_timeout(Some(REQUEST_TIMEOUT))
                // Reconnect for ever: a NATS outage is waited out, never a reason to stop.
                .max_reconnects(None);
            if let Some(ca_file) = tls.ca_file {
                options = options.add_root_certificates(ca_file).require_tls(true);
            }
            if let (Some(cert), Some(key)) = (tls.cert_file, tls.key_file) {
                options = options.add_client_certificate(cert, key);
            }
            let servers = urls
                .split(',')
                .map(|url| url.trim().parse::<async_nats::ServerAddr>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| ClusterError::Connect {
                    urls: urls.clone(),
                    detail: error.to_string(),
                })?;
            let client = tokio::time::timeout(CONNECT_TIMEOUT, options.connect(servers))
                .await
                .map_err(|_| ClusterError::Connect {
                    urls: urls.clone(),
                    detail: format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                })?
                .map_err(|error| ClusterError::Connect {
                    urls: urls.clone(),
                    detail: error.to_string(),
                })?;
            let jetstream = jetstream::ContextBuilder::new()
                .timeout(REQUEST_TIMEOUT)
                .build(client.clone());
            Ok::<_, ClusterError>((client, jetstream))
        })?;
        let (client, jetstream) = connected;
        Ok(Nats {
            client,
            jetstream,
            runtime: owner,
        })
    }

    /// Runs `future` on the NATS runtime and waits for it. Blocking; callable from any
    /// thread.
    pub(crate) fn block<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> T {
        run_on(&self.runtime.handle, future)
    }

    /// Runs `future` on the NATS runtime and awaits it: from async code on any runtime.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> T {
        self.runtime
            .handle
            .spawn(future)
            .await
            .expect("the NATS runtime runs every task it is given to the end")
    }

    /// Starts `future` on the NATS runtime (a follower, a lease keeper) and returns at once.
    pub(crate) fn spawn(
        &self,
        future: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        self.runtime.handle.spawn(future)
    }
}

fn run_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    future: impl Future<Output = T> + Send + 'static,
) -> T {
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        // The caller is waiting on the receiver; it goes only if the caller's thread died.
        let _ = sender.send(future.await);
    });
    receiver
        .recv()
        .expect("the NATS runtime runs every task it is given to the end")
}

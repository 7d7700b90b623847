//! Accepting connections: HTTP/1.1 with a header read timeout, a bound on open connections,
//! and a graceful shutdown that ends after a grace period whatever clients do.
//!
//! axum's own `serve` sets no timer, so a client that sends half a request head holds its
//! connection (and a file descriptor) forever; this loop gives hyper a timer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::budget::WriteTimeout;
use crate::limits::{
    ACCEPT_RETRY_PAUSE, CONNECTIONS_MAX, CONNECTIONS_MIN, SEND_BUFFER_BYTES, SHUTDOWN_GRACE,
};
use crate::tls::Tls;

/// Raises the soft open-file limit to the hard one (a server's first step; the default soft
/// limit is often 1024), and returns how many connections may be open at once.
pub fn connections_max() -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    let connections = usize::try_from(limit / 2)
        .unwrap_or(usize::MAX)
        .clamp(CONNECTIONS_MIN, CONNECTIONS_MAX);
    tracing::info!(
        open_files_max = limit,
        connections_max = connections,
        "connection limit"
    );
    connections
}
/// Serves `router` on `listener` until `shutdown` resolves, then lets open requests finish
/// for at most [`SHUTDOWN_GRACE`]. A client gets `header_read_timeout` to send each request
/// head.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    router: Router,
    timeouts: Timeouts,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
) {
    let Timeouts {
        header_read: header_read_timeout,
        write: write_timeout,
    } = timeouts;
    let connections_max = connections_max();
    let connections = Arc::new(Semaphore::new(connections_max));
    let (closing, closing_seen) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &connections) => accepted,
        };
        let Some((stream, permit)) = accepted else {
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let closing_seen = closing_seen.clone();
        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
        // A client that stops reading its answer is let go after `write_timeout`.
        let stream = WriteTimeout::new(stream, write_timeout);
        tokio::spawn(async move {
            match acceptor {
                None => serve_one(stream, service, header_read_timeout, closing_seen).await,
                Some(acceptor) => {
                    // The handshake gets the time a request head gets: a client that stalls
                    // in it holds a connection slot no longer.
                    let handshake =
                        tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(stream)) => {
                            serve_one(stream, service, header_read_timeout, closing_seen).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    closing.send_replace(true);
    let all_closed = connections.acquire_many(u32::try_from(connections_max).unwrap_or(u32::MAX));
    if tokio::time::timeout(SHUTDOWN_GRACE, all_closed)
        .await
        .is_err()
    {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; closing them");
    }
}

/// The time limits of a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// To send a request head (and, with TLS, to finish the handshake).
    pub(crate) header_read: Duration,
    /// For a write to make progress.
    pub(crate) write: Duration,
}

impl Timeouts {
    pub(crate) fn of(config: &crate::ServerConfig) -> Timeouts {
        Timeouts {
            header_read: config.header_read_timeout,
            write: config.write_timeout,
        }
    }
}

/// Serves HTTP/1.1 on one connection until the client closes it or shutdown begins (then
/// it finishes the request in progress).
async fn serve_one<S>(
    stream: S,
    service: TowerToHyperService<Router>,
    header_read_timeout: Duration,
    mut closing_seen: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let closing = async move {
        // The guard is dropped here, before the select's branch awaits.
        let _ = closing_seen.wait_for(|closing| *closing).await;
    };
    tokio::select! {
        _ = connection.as_mut() => {}
        () = closing => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Waits for a connection slot, then for a client. `None` after a failed accept (logged;
/// the loop goes on, pausing briefly when the process is out of file descriptors).
async fn accept(
    listener: &TcpListener,
    connections: &Arc<Semaphore>,
) -> Option<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    let permit = connections
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    match listener.accept().await {
        Ok((stream, _)) => {
            // Small answers go out at once rather than waiting for Nagle's timer.
            let _ = stream.set_nodelay(true);
            // What the kernel buffers for a client that does not read stays small; the rest of
            // its answer waits in keel, counted against the response budget.
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER_BYTES);
            Some((stream, permit))
        }
        Err(error) => {
            tracing::warn!(%error, "accept failed");
            tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
            None
        }
    }
}

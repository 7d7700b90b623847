//! Bounded memory for answers that clients do not read: a budget of response bytes in
//! flight, and a time limit on a write that makes no progress.
//!
//! A large answer (a page of events) is held in memory until the client reads it. Without a
//! bound, clients that ask and never read pile answers up (150 of them pushed keel past
//! 1 GB). So:
//! - every answer of [`BUDGETED_BYTES_MIN`] bytes or more takes its size from the budget
//!   (`response_bytes_max`) until it has been handed to the socket; when the budget is
//!   spent, the request is answered 503 with `Retry-After` instead, and the answer dropped;
//! - its body goes out in [`CHUNK_BYTES`] slices, each asked for only when the connection
//!   has room for it, so what keel still holds is the body's, counted, until the end;
//! - a write that makes no progress for `write_timeout` closes the connection
//!   ([`WriteTimeout`]): a client that stopped reading gives its answer's bytes back.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::problem::ApiError;
use crate::state::AppState;

/// Answers smaller than this are not counted: their bytes are few next to a connection's.
pub(crate) const BUDGETED_BYTES_MIN: usize = 64 * 1024;
/// The slices a counted body goes out in.
const CHUNK_BYTES: usize = 64 * 1024;
/// The budget's unit: permits are KiB (a semaphore counts at most `u32::MAX` permits).
const UNIT_BYTES: usize = 1024;

/// The response bytes in flight, against their budget.
pub(crate) struct ResponseBudget {
    permits: Arc<Semaphore>,
}

impl ResponseBudget {
    /// A budget of `bytes_max` bytes.
    pub(crate) fn new(bytes_max: usize) -> ResponseBudget {
        ResponseBudget {
            permits: Arc::new(Semaphore::new(bytes_max.div_ceil(UNIT_BYTES))),
        }
    }

    /// Whether less than one counted answer's worth is left.
    fn spent(&self) -> bool {
        self.permits.available_permits() < BUDGETED_BYTES_MIN / UNIT_BYTES
    }

    /// The permit for an answer of `bytes`, if the budget has room.
    fn take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let units = u32::try_from(bytes.div_ceil(UNIT_BYTES)).unwrap_or(u32::MAX);
        self.permits.clone().try_acquire_many_owned(units).ok()
    }
}

/// The middleware that counts large answers against the budget.
pub(crate) async fn limit_response_bytes(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let budget = &state.response_budget;
    // A page of events is paid for before it is read and built: a burst of such requests
    // cannot build more than the budget holds (then shrunk to the page's real size).
    let reserved = if answers_a_page(&request) {
        match budget.take(PAGE_BYTES_MAX) {
            Some(permit) => Some(permit),
            None => return budget_spent(),
        }
    } else if budget.spent() {
        // Spent already: answered before any work (and memory) goes into the answer.
        return budget_spent();
    } else {
        None
    };
    let response = next.run(request).await;
    let size = http_body::Body::size_hint(response.body()).exact();
    let Some(bytes) = size.and_then(|size| usize::try_from(size).ok()) else {
        return response;
    };
    if bytes < BUDGETED_BYTES_MIN {
        return response;
    }
    let permit = match reserved {
        Some(mut reserved) => {
            let units = bytes.div_ceil(UNIT_BYTES);
            match reserved.num_permits().checked_sub(units) {
                // The rest goes back now; `reserved` keeps the page's size.
                Some(unused) if unused > 0 => drop(reserved.split(unused)),
                Some(_) => {}
                None => {
                    // Larger than a page's bound: the difference is taken as for any answer.
                    let Some(more) = budget.take(bytes - reserved.num_permits() * UNIT_BYTES)
                    else {
                        return budget_spent();
                    };
                    reserved.merge(more);
                }
            }
            reserved
        }
        None => match budget.take(bytes) {
            Some(permit) => permit,
            None => return budget_spent(),
        },
    };
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, bytes).await else {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "an answer could not be read back",
        )
        .into_response();
    };
    Response::from_parts(
        parts,
        Body::new(Counted {
            bytes,
            permit: Some(permit),
        }),
    )
}

/// The largest page of events an answer holds: a read of a partition or a key's stream, or
/// a page of dead letters (4 MiB of events each), with its JSON around them.
const PAGE_BYTES_MAX: usize = keel_engine::limits::READ_BYTES_MAX + 1024 * 1024;

/// Whether `request` asks for a page of events (paid for before it is built).
fn answers_a_page(request: &Request) -> bool {
    if request.method() != axum::http::Method::GET {
        return false;
    }
    let path = request.uri().path();
    let is_topic_page = path.starts_with("/v1/topics/")
        && (path.contains("/partitions/") || path.contains("/keys/"))
        && path.ends_with("/events");
    let is_dead_letters = path.starts_with("/v1/subscriptions/") && path.ends_with("/dlq");
    is_topic_page || is_dead_letters
}

/// The 503 of a spent budget.
fn budget_spent() -> Response {
    tracing::debug!("response budget spent: answering 503 (clients are not reading their answers)");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "keel holds as many answers as it may for clients that have not read them yet; retry in a moment, or ask for fewer events per request",
    )
    .into_response()
}

/// A body holding its share of the budget until its last slice is asked for.
struct Counted {
    bytes: Bytes,
    permit: Option<OwnedSemaphorePermit>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.bytes.is_empty() {
            self.permit = None;
            return Poll::Ready(None);
        }
        let take = self.bytes.len().min(CHUNK_BYTES);
        let slice = self.bytes.split_to(take);
        Poll::Ready(Some(Ok(Frame::data(slice))))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.bytes.len() as u64)
    }
}

/// A connection whose writes fail with `TimedOut` once one has made no progress for
/// `timeout` (the client stopped reading); reads are untouched (their limits are the
/// header and request timeouts).
pub(crate) struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    /// Armed while a write waits for room.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteTimeout<S> {
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        WriteTimeout {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// After a write returned `result`: disarm on progress, arm (or check) on pending.
    fn watch<T>(
        &mut self,
        context: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.stalled = None;
            return result;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(context) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing of its answer for the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(context, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(context, buf);
        self.watch(context, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(context, bufs);
        self.watch(context, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(context);
        self.watch(context, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(context)
    }
}

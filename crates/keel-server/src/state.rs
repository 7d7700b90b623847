//! What every handler shares: the engine, once recovery has opened it.

use std::sync::{Arc, OnceLock};

use axum::http::StatusCode;
use keel_engine::Engine;

use crate::auth::Auth;
use crate::budget::ResponseBudget;
use crate::cluster::ClusterMember;
use crate::limits::RESPONSE_BYTES_MAX_DEFAULT;
use crate::problem::ApiError;
use crate::rate_limit::RateLimiter;

/// Shared state of the HTTP handlers: one `Arc`, so the clone that every middleware and
/// extractor makes of it per request is one reference count, not one per member (counts
/// every core touches: under load, each shared count costs a cache line moving between
/// cores). Setting a member (before serving) goes through [`Arc::make_mut`]: a clone keeps
/// what it had, as with a plain value.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl std::ops::DerefMut for AppState {
    fn deref_mut(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.0)
    }
}

/// The members of [`AppState`].
#[derive(Clone)]
pub struct Shared {
    engine: Arc<OnceLock<Engine>>,
    /// Largest request body accepted.
    pub request_bytes_max: usize,
    /// Longest a request may take from its head to its answer.
    pub request_timeout: std::time::Duration,
    /// The cluster this node belongs to (cluster mode), or none.
    pub cluster: Option<Arc<dyn ClusterMember>>,
    /// The HTTP client that forwards requests to other nodes (cluster mode).
    pub peers: reqwest::Client,
    /// Who may call: on with an admin token, off without.
    pub auth: Auth,
    /// Per-token rate limits' buckets.
    pub(crate) rate_limits: Arc<RateLimiter>,
    /// The response bytes in flight, against `response_bytes_max`.
    pub(crate) response_budget: Arc<ResponseBudget>,
}

impl AppState {
    /// State whose engine is still recovering.
    pub fn new(request_bytes_max: usize, request_timeout: std::time::Duration) -> Self {
        AppState(Arc::new(Shared {
            engine: Arc::new(OnceLock::new()),
            request_bytes_max,
            request_timeout,
            cluster: None,
            peers: reqwest::Client::builder()
                .timeout(request_timeout)
                .build()
                .unwrap_or_default(),
            auth: Auth::default(),
            rate_limits: Arc::default(),
            response_budget: Arc::new(ResponseBudget::new(RESPONSE_BYTES_MAX_DEFAULT)),
        }))
    }

    /// Trusts the CA certificates of `pem` (besides the system's roots) when forwarding to
    /// another node over HTTPS.
    pub fn trust_peer_cas(&mut self, pem: &[u8]) -> Result<(), String> {
        let certificates =
            reqwest::Certificate::from_pem_bundle(pem).map_err(|error| error.to_string())?;
        if certificates.is_empty() {
            return Err("no PEM certificate in it".to_owned());
        }
        let mut builder = reqwest::Client::builder().timeout(self.request_timeout);
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
        self.peers = builder.build().map_err(|error| error.to_string())?;
        Ok(())
    }

    /// Marks recovery done: from now on the API serves.
    pub fn set_engine(&self, engine: Engine) {
        // Set once, by the task that opened the engine.
        let _ = self.engine.set(engine);
    }

    /// The engine, if recovery is done.
    pub fn ready_engine(&self) -> Option<&Engine> {
        self.engine.get()
    }

    /// The engine, or 503 while recovery runs.
    pub fn engine(&self) -> Result<&Engine, ApiError> {
        self.engine.get().ok_or_else(|| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "keel is still recovering its logs; retry shortly (GET /readyz turns 200 when it is done)")
        })
    }
}

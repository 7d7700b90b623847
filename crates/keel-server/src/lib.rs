//! keel's HTTP API: routes mapping HTTP to engine calls, problem+json errors, metrics.
//!
//! Dependency direction: `keel-engine` → this crate → `keel-cli`. Every body it reads or
//! writes is a type of `keel-api`, which its clients share.

pub mod alerts;
pub mod auth;
pub mod body;
mod budget;
pub mod cluster;
pub mod config;
pub mod dlq;
pub mod health;
pub mod key_state;
pub mod limits;
pub mod listener;
pub mod openapi;
pub mod problem;
pub mod publish;
mod rate_limit;
pub mod read;
pub mod state;
pub mod streams;
pub mod subscriptions;
pub mod tls;
pub mod tokens;
pub mod topics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, Uri};
use keel_engine::error::{SubscriptionError, TopicError};
use keel_engine::{Created, Engine, EngineConfig, EngineError};
use tokio::net::TcpListener;

pub use auth::{Auth, Caller};
pub use cluster::ClusterMember;
pub use config::{
    AuthSettings, ClusterSettings, SecretText, ServerConfig, TlsSettings, WebhooksSettings,
};
pub use openapi::routes;
pub use problem::ApiError;
pub use state::AppState;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Binding or serving the socket failed.
    #[error("cannot serve on {listen}: {source}")]
    Listen {
        /// The address.
        listen: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The engine could not open the data directory.
    #[error("cannot start the engine: {0}")]
    Engine(#[from] EngineError),
    /// A topic, subscription or alert rule the configuration declares could not be applied.
    #[error("[{section}.{name}] in the configuration: {source}{hint}")]
    Declared {
        /// The file's table: `topics`, `subscriptions` or `alerts`.
        section: &'static str,
        /// The declared name.
        name: String,
        /// The way out, for a conflict with what exists (else empty).
        hint: String,
        /// Why the engine refused it (boxed: keeps the error small).
        #[source]
        source: Box<EngineError>,
    },
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    let (routes, _) = openapi::api();
    routes
        // Route layers run on matched routes, the last added first: every request is
        // authorized before it may be forwarded to another node.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cluster::forward_to_host,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.request_bytes_max))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            budget::limit_response_bytes,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            bound_request,
        ))
        .with_state(state)
}

/// Every request's outer bounds, in one layer (each layer costs its clone of the service
/// stack on every request): a body declared over `request_bytes_max` is refused at once, a
/// request is ended after `request_timeout`, and an error answer that is not a problem
/// (axum's own) is made one.
async fn bound_request(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Some(refused) = refuse_oversized(&state, &request) {
        return refused.into_response();
    }
    let response = match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => deadline_passed(state.request_timeout).into_response(),
    };
    problem::plain_errors_as_problems(response).await
}

/// 413 for a request whose `Content-Length` is over `request_bytes_max`, before any of its
/// body is read: a flood of oversized requests costs keel no memory.
fn refuse_oversized(state: &AppState, request: &axum::extract::Request) -> Option<ApiError> {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())?;
    let limit = state.request_bytes_max;
    (declared > limit as u64).then(|| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body ({declared} bytes) is over the limit of {limit} bytes; send fewer events per batch"
            ),
        )
    })
}

/// The 408 of a request that took longer than `request_timeout` from its head to its answer,
/// such as one whose body never finishes arriving. A publish cut off after its events were
/// queued may still store them (at-least-once); publishing again is deduplicated.
fn deadline_passed(timeout: std::time::Duration) -> ApiError {
    let timeout_text = keel_engine::duration::format(timeout);
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request took longer than {timeout_text}: its body did not arrive in time, or keel is overloaded. A publish may have been stored; publishing it again is deduplicated"
        ),
    )
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}

/// Runs the server until SIGTERM or SIGINT, then shuts down gracefully: stops accepting,
/// finishes in-flight requests (their appends are committed and fsynced), exits.
pub async fn run(config: ServerConfig) -> Result<(), ServerError> {
    run_member(config, None).await
}

/// [`run`], as a node of `cluster` (cluster mode) or alone.
pub async fn run_member(
    config: ServerConfig,
    cluster: Option<Arc<dyn ClusterMember>>,
) -> Result<(), ServerError> {
    config.validate().map_err(ServerError::Config)?;
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Listen {
                listen: config.listen,
                source,
            })?;
    serve_member(listener, config, cluster, shutdown_signal()).await
}

/// Serves on a bound listener until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve_member(listener, config, None, shutdown).await
}

/// Serves on a bound listener until `shutdown` resolves, as a node of `cluster` (cluster
/// mode: the storage is the cluster's, not the data directory) or alone.
pub async fn serve_member(
    listener: TcpListener,
    config: ServerConfig,
    cluster: Option<Arc<dyn ClusterMember>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let Http {
        listen,
        mut state,
        tls,
    } = http_state(&listener, &config)?;
    state.cluster = cluster.clone();
    let (failed_sender, failed) = tokio::sync::oneshot::channel::<()>();
    let opener = tokio::spawn(open_engine(config.clone(), state.clone(), failed_sender));
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(listen = %format!("{scheme}://{listen}"), data_dir = %config.data_dir.display(), "keel serving; recovering logs");
    let shutdown_state = state.clone();
    let graceful = async move {
        tokio::select! {
            () = shutdown => tracing::info!("shutting down: finishing in-flight requests"),
            Ok(()) = failed => {}
        }
        if let Some(engine) = shutdown_state.ready_engine() {
            engine.begin_shutdown();
        }
    };
    // Appends already queued when connections are dropped are still committed and fsynced
    // by the engine's shutdown below.
    listener::serve_connections(
        listener,
        router(state.clone()),
        listener::Timeouts::of(&config),
        tls,
        graceful,
    )
    .await;
    match opener.await {
        Ok(Ok(engine)) => {
            engine.shut_down().await;
            if let Some(cluster) = &cluster {
                cluster.leave().await;
            }
            tracing::info!("keel stopped cleanly");
            Ok(())
        }
        Ok(Err(error)) => Err(error),
        Err(_) => Err(ServerError::Engine(EngineError::ShuttingDown)),
    }
}

/// Serves the HTTP API of an engine the caller opened and keeps (a program that embeds keel
/// with its own in-process handlers and also serves the API), on a bound listener, until
/// `shutdown` resolves. The engine stays open: shutting it down is the caller's. Only the
/// HTTP settings of `config` are used (request limits and timeouts), not its data directory
/// or declared topics.
pub async fn serve_engine(
    listener: TcpListener,
    engine: Engine,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate().map_err(ServerError::Config)?;
    let Http { listen, state, tls } = http_state(&listener, config)?;
    state.set_engine(engine);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(listen = %format!("{scheme}://{listen}"), "keel serving an embedded engine");
    listener::serve_connections(
        listener,
        router(state),
        listener::Timeouts::of(config),
        tls,
        shutdown,
    )
    .await;
    Ok(())
}

/// What serving HTTP takes, from the settings.
struct Http {
    /// The address the listener serves on.
    listen: SocketAddr,
    /// The handlers' state, its auth checked against that address.
    state: AppState,
    /// The TLS of new connections (read again on SIGHUP), if on.
    tls: Option<Arc<tls::Tls>>,
}

fn http_state(listener: &TcpListener, config: &ServerConfig) -> Result<Http, ServerError> {
    let listen = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            listen: config.listen,
            source,
        })?;
    let mut state = AppState::new(config.request_bytes_max, config.request_timeout);
    state.response_budget = Arc::new(budget::ResponseBudget::new(config.response_bytes_max));
    let tls = match config.tls.files() {
        Some(files) => {
            let tls = Arc::new(tls::Tls::load(files).map_err(ServerError::Config)?);
            tls.reload_on_sighup();
            Some(tls)
        }
        None => None,
    };
    state.auth = check_exposure(config, listen, tls.is_some())?;
    if let Some(path) = &config.tls.ca_file {
        let pem = std::fs::read(path).map_err(|error| error.to_string());
        pem.and_then(|pem| state.trust_peer_cas(&pem))
            .map_err(|error| {
                ServerError::Config(format!("tls.ca_file {}: {error}", path.display()))
            })?;
    }
    Ok(Http { listen, state, tls })
}

/// The server's auth from its settings, after checking who can reach it: without auth,
/// keel serves on loopback only, unless `allow_insecure` says otherwise. Says at start
/// whether auth is on, and warns when tokens would cross a network in clear text.
fn check_exposure(
    config: &ServerConfig,
    listen: SocketAddr,
    tls: bool,
) -> Result<Auth, ServerError> {
    let admin_token = config
        .auth
        .admin_token
        .as_ref()
        .map(|token| token.0.as_str());
    let auth = Auth::new(admin_token);
    if auth.enabled() {
        tracing::info!("auth is on: every request but /healthz and /readyz needs a token");
        if !tls && !listen.ip().is_loopback() {
            tracing::warn!(%listen, "TLS is off: tokens cross the network in clear text (set tls.cert_file and tls.key_file, or terminate TLS in front of keel)");
        }
    } else if listen.ip().is_loopback() {
        tracing::warn!(
            "auth is off: serving without tokens, on loopback only (set KEEL_ADMIN_TOKEN to turn auth on)"
        );
    } else if config.auth.allow_insecure {
        tracing::warn!(%listen, "auth is off and keel listens beyond loopback (--allow-insecure): anyone who reaches it may do anything");
    } else {
        return Err(ServerError::Config(format!(
            "keel listens on {listen}, beyond loopback, without auth: set an admin token (KEEL_ADMIN_TOKEN, at least {} characters, e.g. from `openssl rand -hex 32`) to turn auth on, listen on 127.0.0.1, or give --allow-insecure if something in front of keel authenticates",
            auth::ADMIN_TOKEN_CHARS_MIN
        )));
    }
    Ok(auth)
}

/// An error applying something the configuration declares, naming its table, with the way
/// out of a conflict (the server cannot start to delete it while the file declares it).
fn declared(
    section: &'static str,
    command: &str,
    name: &str,
) -> impl FnOnce(EngineError) -> ServerError {
    move |source| {
        // A subscription's `start` alone has its way out in the message (leave it, or seek).
        let conflict = match &source {
            EngineError::Topic(TopicError::Conflict { .. }) => true,
            EngineError::Subscription(SubscriptionError::Conflict { members, .. }) => {
                members.iter().any(|member| member != "start")
            }
            _ => false,
        };
        let hint = if conflict {
            format!(
                ". To change it, start keel once without [{section}.{name}] in the configuration, run `keel {command} delete {name}`, then start it with the new settings"
            )
        } else {
            String::new()
        };
        ServerError::Declared {
            section,
            name: name.to_owned(),
            hint,
            source: Box::new(source),
        }
    }
}

async fn open_engine(
    config: ServerConfig,
    state: AppState,
    failed: tokio::sync::oneshot::Sender<()>,
) -> Result<Engine, ServerError> {
    let result = async {
        let mut engine_config = EngineConfig::new(&config.data_dir);
        engine_config.event_bytes_max = config.event_bytes_max;
        engine_config.segment_bytes_max = config.segment_bytes_max;
        engine_config.retention_check_interval = config.retention_check_interval;
        engine_config.alert_evaluation_interval = config.alert_evaluation_interval;
        engine_config.pressure = config.backpressure;
        engine_config.webhooks = config.webhooks.engine_settings();
        let engine = match &state.cluster {
            Some(cluster) => {
                engine_config.node = Some(cluster.node_id());
                let engine =
                    Engine::open_member(engine_config, cluster.storage(), cluster.placement())
                        .await?;
                cluster.start(engine.clone());
                engine
            }
            None => Engine::open(engine_config).await?,
        };
        for (name, topic) in &config.topics {
            let created = engine.create_topic(name, *topic).await;
            created.map_err(declared("topics", "topic", name))?;
        }
        for (name, spec) in &config.subscriptions {
            // In a cluster, a declared subscription that exists is the cluster's: created
            // once, then changed through the API (its host may be any node).
            if state.cluster.is_some()
                && !engine.hosts_subscription(name)
                && engine.stores_subscription(name).await?
            {
                tracing::info!(subscription = %name, "the declared subscription exists in the cluster; left as it is (change it through the API)");
                continue;
            }
            let created = engine.create_subscription(name, spec.clone()).await;
            // Another node created it a moment ago, and hosts it.
            if state.cluster.is_some()
                && let Err(EngineError::Subscription(SubscriptionError::Unavailable { .. })) =
                    &created
            {
                tracing::info!(subscription = %name, "the declared subscription was created by another node of the cluster");
                continue;
            }
            let created = created.map_err(declared("subscriptions", "sub", name))?;
            if created.created == Created::Updated {
                let changed = created.changed.join(", ");
                tracing::info!(subscription = %name, %changed, "applied the changed declaration [subscriptions.{name}]: updated in place, its progress kept");
            }
            if created.secret.is_some() {
                // Declared without a secret: keel generated one. Secrets are never logged;
                // declaring `sink.secret`, or a rotation (which shows the new one), gives it.
                tracing::warn!(subscription = %name, "generated the signing secret of a declared push subscription; it is not logged: declare sink.secret, or get a new one with `keel sub rotate-secret {name}`");
            }
        }
        for (name, rule) in &config.alerts {
            let put = engine.put_alert_rule(name, rule.clone()).await;
            put.map_err(declared("alerts", "alert", name))?;
        }
        Ok::<_, ServerError>(engine)
    }
    .await;
    match result {
        Ok(engine) => {
            state.set_engine(engine.clone());
            if engine.storage_damage().is_empty() {
                tracing::info!("recovery done; ready");
            } else {
                tracing::error!(
                    "recovery done, but the data directory is damaged: not ready (see /readyz)"
                );
            }
            Ok(engine)
        }
        Err(error) => {
            tracing::error!(%error, "cannot start the engine");
            let _ = failed.send(());
            Err(error)
        }
    }
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

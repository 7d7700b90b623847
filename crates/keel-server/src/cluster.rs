//! The HTTP API in cluster mode: every node serves the whole API. Topics are served by every
//! node from the shared storage; a subscription is hosted by one node at a time, and a
//! request for it that reaches another node is forwarded there, once (`Keel-Forwarded-By`
//! marks a forwarded request, which is served where it lands whatever happens: no loops).
//! `GET /v1/subscriptions` gathers every node's; `GET /v1/cluster` shows the nodes and who
//! holds what.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keel_api::cluster::{ClusterStatus, NodeStatus, UnitStatus};
use keel_engine::storage::Storage;
use keel_engine::{Engine, Placement};

use crate::problem::ApiError;
use crate::state::AppState;

/// Marks a request one node forwarded to another, naming the first.
pub const FORWARDED_HEADER: &str = "keel-forwarded-by";

/// A node of a cluster, as the server needs it (the `keel-cluster` crate's `ClusterNode`).
pub trait ClusterMember: Send + Sync + 'static {
    /// The storage all nodes share.
    fn storage(&self) -> Arc<dyn Storage>;
    /// Which subscriptions this node hosts.
    fn placement(&self) -> Arc<dyn Placement>;
    /// Starts the node's rounds (heartbeat, leases, rebalance) for `engine`.
    fn start(&self, engine: Engine);
    /// Lets every lease go and leaves, at shutdown (after the engine stopped).
    fn leave(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// This node's id.
    fn node_id(&self) -> String;
    /// The cluster as this node last saw it.
    fn status(&self) -> ClusterStatus;
    /// The URL of the node hosting `subscription`, when another node does.
    fn host_url(&self, subscription: &str) -> Option<String>;
    /// Whether `subscription` exists in the cluster (as of this node's last round).
    fn knows_subscription(&self, subscription: &str) -> bool;
    /// The other live nodes' URLs.
    fn peer_urls(&self) -> Vec<String>;
}

/// `GET /v1/cluster`.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    operation_id = "getCluster",
    tag = "cluster",
    responses(
        (status = 200, description = "The cluster's nodes and which node hosts what (one node when alone).", body = keel_api::cluster::ClusterStatus),
    ),
)]
pub async fn status(State(state): State<AppState>) -> Result<Response, ApiError> {
    if let Some(cluster) = &state.cluster {
        return Ok(Json(cluster.status()).into_response());
    }
    let engine = state.engine()?;
    let hosted = engine.hosted_subscriptions();
    let units = hosted
        .iter()
        .map(|name| UnitStatus {
            unit: format!("subscription/{name}"),
            node: Some("local".into()),
            epoch: None,
            placed_on: Some("local".into()),
        })
        .collect();
    Ok(Json(ClusterStatus {
        mode: "single".into(),
        cluster: None,
        node: "local".into(),
        replicas: None,
        lease_ttl_ms: None,
        nodes: vec![NodeStatus {
            id: "local".into(),
            url: String::new(),
            started_at: String::new(),
            heartbeat_age_ms: 0,
            units: hosted
                .iter()
                .map(|name| format!("subscription/{name}"))
                .collect(),
        }],
        units,
    })
    .into_response())
}

/// Forwards a request about a subscription hosted by another node to that node.
pub(crate) async fn forward_to_host(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(cluster) = state.cluster.clone() else {
        return next.run(request).await;
    };
    let Some(name) = subscription_in_path(request.uri().path()) else {
        return next.run(request).await;
    };
    let hosted_here = state
        .ready_engine()
        .is_some_and(|engine| engine.hosts_subscription(name));
    if hosted_here || request.headers().contains_key(FORWARDED_HEADER) {
        return next.run(request).await;
    }
    let Some(url) = cluster.host_url(name) else {
        if cluster.knows_subscription(name) {
            // It exists, and no node holds it this moment: it is moving between nodes.
            let mut response = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("subscription {name:?} is moving between the nodes of the cluster (its last host stopped, and the next is taking it over); retry in a moment"),
            )
            .into_response();
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
            return response;
        }
        // Unknown to the cluster: served here (a create claims it; anything else says what is).
        return next.run(request).await;
    };
    match proxy(&state, &cluster.node_id(), &url, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

/// The subscription a path names: `/v1/subscriptions/{name}` and everything under it.
fn subscription_in_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/subscriptions/")?;
    let name = rest.split('/').next()?;
    (!name.is_empty()).then_some(name)
}

/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

async fn proxy(
    state: &AppState,
    node: &str,
    base_url: &str,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, state.request_bytes_max)
        .await
        .map_err(|error| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("reading the body: {error}"),
            )
        })?;
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |path| path.as_str());
    let url = format!("{}{path}", base_url.trim_end_matches('/'));
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(
        HeaderName::from_static(FORWARDED_HEADER),
        node.parse().map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "node id is not a header value",
            )
        })?,
    );
    let answer = state
        .peers
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|error| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the node hosting this subscription ({base_url}) did not answer: {error}. It may be moving to another node; retry in a moment"),
            )
        })?;
    let status = answer.status();
    let mut response_headers = HeaderMap::new();
    for (name, value) in answer.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            response_headers.append(name.clone(), value.clone());
        }
    }
    let bytes = answer.bytes().await.map_err(|error| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("the node hosting this subscription ({base_url}) broke off its answer: {error}; retry"),
        )
    })?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = response_headers;
    Ok(response)
}

/// Every other node's subscriptions, for `GET /v1/subscriptions` in cluster mode, asked
/// with the caller's `authorization` (each node lists what it covers); a node that does not
/// answer is left out (with a warning).
pub(crate) async fn peer_subscriptions(
    state: &AppState,
    cluster: &dyn ClusterMember,
    authorization: Option<&axum::http::HeaderValue>,
) -> Vec<serde_json::Value> {
    let mut gathered = Vec::new();
    for url in cluster.peer_urls() {
        let mut request = state
            .peers
            .get(format!("{}/v1/subscriptions", url.trim_end_matches('/')))
            .header(FORWARDED_HEADER, cluster.node_id());
        if let Some(authorization) = authorization {
            request = request.header(axum::http::header::AUTHORIZATION, authorization);
        }
        let answer = request.send().await;
        let listed = match answer {
            Ok(answer) if answer.status().is_success() => answer
                .bytes()
                .await
                .ok()
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok()),
            _ => None,
        };
        match listed.and_then(|body| body.get("subscriptions").cloned()) {
            Some(serde_json::Value::Array(subscriptions)) => gathered.extend(subscriptions),
            _ => tracing::warn!(node = %url, "a node did not list its subscriptions"),
        }
    }
    gathered
}

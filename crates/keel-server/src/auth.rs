//! Who may call what: bearer tokens checked, and every route's scope requirement, in one
//! place ([`requirement`]). Auth is on when an admin token is configured
//! (`KEEL_ADMIN_TOKEN` or `[auth] admin_token`); off, keel serves everyone, and only on
//! loopback unless `--allow-insecure` says otherwise (`lib.rs` refuses the rest).
//!
//! Answers:
//! - no token, or one keel does not know (unknown, revoked, expired): 401 with
//!   `WWW-Authenticate: Bearer`;
//! - a token whose scopes do not allow the action on the name: 403.
//!
//! Invariant: both are decided from the route, the names in its path and the token alone,
//! before the handler runs: whether a topic or subscription exists never changes the
//! answer, so neither tells a caller about resources it may not see. Lists show only what the
//! caller's scopes cover. Where a body names a further resource (the topic a new
//! subscription reads, the topics an ack emits to), the handler asks [`Caller::require`]
//! before acting, again from names alone.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keel_api::tokens::{Action, Resource, Scope};
use keel_engine::tokens::{TokenRecord, equal_in_constant_time, sha256};

use crate::problem::ApiError;
use crate::rate_limit::{Kind, Published};
use crate::state::AppState;

/// Fewest characters of an admin token.
pub const ADMIN_TOKEN_CHARS_MIN: usize = 32;

/// The server's authentication: on with an admin token, off without.
#[derive(Clone, Default)]
pub struct Auth {
    /// SHA-256 of the admin token; none: auth is off.
    admin_sha256: Option<[u8; 32]>,
}

impl Auth {
    /// Auth with `admin_token` as the admin token (on), or off without one.
    pub fn new(admin_token: Option<&str>) -> Auth {
        Auth {
            admin_sha256: admin_token.map(sha256),
        }
    }

    /// Whether requests must carry a token.
    pub fn enabled(&self) -> bool {
        self.admin_sha256.is_some()
    }

    /// Whether `bearer` is the admin token.
    fn is_admin_token(&self, bearer: &str) -> bool {
        self.admin_sha256
            .is_some_and(|admin| equal_in_constant_time(&admin, &sha256(bearer)))
    }
}

/// Whoever sent a request, as the handlers see it.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Auth is off: anyone may do anything.
    Anyone,
    /// The admin token.
    Admin,
    /// A stored token.
    Token(Arc<TokenRecord>),
}

impl Caller {
    /// Whether the caller may do `action` on `resource`.
    pub fn may(&self, action: Action, resource: Resource<'_>) -> bool {
        match self {
            Caller::Anyone | Caller::Admin => true,
            Caller::Token(token) => token
                .scopes
                .iter()
                .any(|scope| scope.grants(action, resource)),
        }
    }

    /// Whether the caller may see `resource` at all (lists show only those).
    pub fn sees(&self, resource: Resource<'_>) -> bool {
        match self {
            Caller::Anyone | Caller::Admin => true,
            Caller::Token(token) => token.scopes.iter().any(|scope| scope.sees(resource)),
        }
    }

    /// Fails with 403 unless the caller may do one of `actions` on `resource`.
    pub fn require(&self, actions: &[Action], resource: Resource<'_>) -> Result<(), ApiError> {
        if actions.iter().any(|&action| self.may(action, resource)) {
            return Ok(());
        }
        let wanted = actions
            .iter()
            .map(|action| action.name())
            .collect::<Vec<_>>()
            .join(" or ");
        let on = match resource {
            Resource::Everything => "everything (a scope without a pattern)".to_owned(),
            Resource::Topic(name) => format!("topic {name:?}"),
            Resource::Subscription(name) => format!("subscription {name:?}"),
        };
        let held = match self {
            Caller::Token(token) => token
                .scopes
                .iter()
                .map(Scope::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            Caller::Anyone | Caller::Admin => String::new(),
        };
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this token's scopes ({held}) do not allow {wanted} on {on}; an admin can create a token with such a scope"
            ),
        ))
    }
}

/// What a route asks of its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    /// Nothing: health probes.
    Public,
    /// Any valid token: lists, which show only what the token covers.
    Authenticated,
    /// One of these actions on this resource.
    Allowed(&'static [Action], Named),
}

/// The resource a route names, by the path parameter that holds its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    Everything,
    Topic,
    Subscription,
}

/// Every route's requirement, by method and route. A route missing here needs `admin`: the
/// table fails closed.
fn requirement(method: &Method, route: &str) -> Requirement {
    use Action::{Admin, Consume, Manage, Publish, Read};
    use Requirement::{Allowed, Authenticated, Public};
    let (get, put, post, delete) = (
        method == Method::GET,
        method == Method::PUT,
        method == Method::POST,
        method == Method::DELETE,
    );
    match route {
        "/healthz" | "/readyz" | "/openapi.json" => Public,
        "/metrics" | "/v1/tasks" | "/v1/cluster" if get => Allowed(&[Read], Named::Everything),
        "/v1/topics" | "/v1/subscriptions" if get => Authenticated,
        "/v1/topics/{topic}" if put || delete => Allowed(&[Manage], Named::Topic),
        "/v1/topics/{topic}" if get => Allowed(&[Read, Publish], Named::Topic),
        "/v1/topics/{topic}/events" if post => Allowed(&[Publish], Named::Topic),
        "/v1/topics/{topic}/partitions/{partition}/events"
        | "/v1/topics/{topic}/keys/{key}/events"
            if get =>
        {
            Allowed(&[Read], Named::Topic)
        }
        "/v1/subscriptions/{name}" if put || delete => Allowed(&[Manage], Named::Subscription),
        "/v1/subscriptions/{name}"
        | "/v1/subscriptions/{name}/dlq"
        | "/v1/subscriptions/{name}/dlq/{id}"
        | "/v1/subscriptions/{name}/state"
        | "/v1/subscriptions/{name}/state/{key}"
            if get =>
        {
            Allowed(&[Read], Named::Subscription)
        }
        "/v1/subscriptions/{name}/pause"
        | "/v1/subscriptions/{name}/resume"
        | "/v1/subscriptions/{name}/seek"
        | "/v1/subscriptions/{name}/secret/rotate"
        | "/v1/subscriptions/{name}/dlq/redrive"
        | "/v1/subscriptions/{name}/state/{key}"
            if post =>
        {
            Allowed(&[Manage], Named::Subscription)
        }
        "/v1/subscriptions/{name}/dlq" if delete => Allowed(&[Manage], Named::Subscription),
        "/v1/subscriptions/{name}/pull"
        | "/v1/subscriptions/{name}/ack"
        | "/v1/subscriptions/{name}/nack"
        | "/v1/subscriptions/{name}/reject"
            if post =>
        {
            Allowed(&[Consume], Named::Subscription)
        }
        "/v1/alerts" | "/v1/alerts/{name}" if get => Allowed(&[Read], Named::Everything),
        "/v1/alerts/{name}" if put || delete => Allowed(&[Manage], Named::Everything),
        _ => Allowed(&[Admin], Named::Everything),
    }
}

/// The middleware every route passes: finds the caller, checks the route's requirement,
/// and hands the caller to the handler (an extension).
pub(crate) async fn authorize(
    State(state): State<AppState>,
    route: MatchedPath,
    params: RawPathParams,
    mut request: Request,
    next: Next,
) -> Response {
    let required = requirement(request.method(), route.as_str());
    let caller = if !state.auth.enabled() {
        Caller::Anyone
    } else if required == Requirement::Public {
        return next.run(request).await;
    } else {
        match authenticate(&state, &request) {
            Ok(caller) => caller,
            Err(error) => return error.into_response(),
        }
    };
    if let Requirement::Allowed(actions, named) = required {
        let param = match named {
            Named::Everything => None,
            Named::Topic => Some("topic"),
            Named::Subscription => Some("name"),
        };
        let name = param.and_then(|param| {
            params
                .iter()
                .find(|(key, _)| *key == param)
                .map(|(_, value)| value)
        });
        let resource = match (named, name) {
            (Named::Topic, Some(name)) => Resource::Topic(name),
            (Named::Subscription, Some(name)) => Resource::Subscription(name),
            _ => Resource::Everything,
        };
        if let Err(error) = caller.require(actions, resource) {
            return error.into_response();
        }
    }
    let limited = match &caller {
        Caller::Token(token) => rate_limited(token, request.method(), route.as_str()),
        Caller::Anyone | Caller::Admin => None,
    };
    let Some((token, kind, per_second)) = limited else {
        request.extensions_mut().insert(caller);
        return next.run(request).await;
    };
    let limiter = state.rate_limits.clone();
    if let Err(wait) = limiter.admit(&token, kind, per_second, Instant::now()) {
        let what = match kind {
            Kind::Publish => "events published",
            Kind::Pull => "pulls",
        };
        return ApiError::too_many_requests(
            format!("this token is limited to {per_second} {what} per second; retry after the Retry-After seconds"),
            wait,
        )
        .into_response();
    }
    request.extensions_mut().insert(caller);
    let response = next.run(request).await;
    let spent = match kind {
        Kind::Publish => response
            .extensions()
            .get::<Published>()
            .map(|published| published.0),
        Kind::Pull => Some(1),
    };
    if let Some(count) = spent {
        limiter.charge(&token, kind, per_second, count, Instant::now());
    }
    response
}

/// What a route's requests count against under a token's rate limits, if anything.
fn limited_kind(method: &Method, route: &str) -> Option<Kind> {
    if method != Method::POST {
        return None;
    }
    match route {
        "/v1/topics/{topic}/events" => Some(Kind::Publish),
        "/v1/subscriptions/{name}/pull" => Some(Kind::Pull),
        _ => None,
    }
}

/// Whether a token's rate limits count a route's requests (the OpenAPI document's 429s).
pub(crate) fn is_rate_limited(method: &Method, route: &str) -> bool {
    limited_kind(method, route).is_some()
}

/// Whether a route needs no token (the OpenAPI document's security).
pub(crate) fn is_public(method: &Method, route: &str) -> bool {
    requirement(method, route) == Requirement::Public
}

/// The limit a token's request counts against, if any: its id, what is counted and the rate.
fn rate_limited(token: &TokenRecord, method: &Method, route: &str) -> Option<(String, Kind, u32)> {
    let kind = limited_kind(method, route)?;
    let per_second = match kind {
        Kind::Publish => token.limits.publish_per_second?,
        Kind::Pull => token.limits.pull_per_second?,
    };
    Some((token.id.clone(), kind, per_second))
}

/// The caller a request's bearer token names, or the 401 (or, while recovery runs, 503)
/// to answer.
fn authenticate(state: &AppState, request: &Request) -> Result<Caller, ApiError> {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(bearer) = bearer else {
        return Err(ApiError::unauthorized(
            "this request needs a token: send it as \"Authorization: Bearer <token>\" (the keel CLI reads KEEL_TOKEN)",
            false,
        ));
    };
    if state.auth.is_admin_token(bearer) {
        return Ok(Caller::Admin);
    }
    match state.engine()?.authenticate(bearer) {
        Some(token) => Ok(Caller::Token(token)),
        None => Err(ApiError::unauthorized(
            "the token is not valid: unknown, revoked or expired. Ask an admin for a new one (keel token create)",
            true,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: every route of the API has its own entry in the table (none falls to the
    // fail-closed default by accident), and unknown ones need admin.
    #[test]
    fn every_route_has_its_requirement() {
        let admin_only = Requirement::Allowed(&[Action::Admin], Named::Everything);
        for (method, route) in crate::openapi::routes() {
            let required = requirement(&method, &route);
            let is_tokens = route.starts_with("/v1/tokens");
            assert_eq!(
                required == admin_only,
                is_tokens,
                "{method} {route}: {required:?}"
            );
        }
        assert_eq!(
            requirement(&Method::PATCH, "/v1/topics/{topic}"),
            admin_only
        );
    }
}

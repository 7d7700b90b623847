//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`.
//!
//! Invariant: the document and the router are one thing. Every handler carries its
//! `#[utoipa::path]` (method, path, parameters, bodies, its own answers), and [`api`] builds the
//! axum router from those same annotations (`utoipa_axum::routes!`): a route cannot be served
//! without being described, nor described without being served. Bodies are keel-api's types
//! with their derived schemas.
//!
//! The answers every route shares are added here, in one place, from the rules that make
//! them: 401 and 403 (from `auth.rs`'s table: not on public routes), 400 (a route with
//! parameters or a body), 404 (a route naming a resource), 413 (a body), 429 (the
//! rate-limited routes), 408, 500 and 503 (any route). All are `application/problem+json`.

use std::sync::OnceLock;

use axum::Router;
use axum::body::Bytes;
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    Components, ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr, Response as Answer,
    ResponseBuilder,
};
use utoipa::{OpenApi as _, PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;
use crate::{
    alerts, auth, cluster, dlq, health, key_state, publish, read, streams, subscriptions, tokens,
    topics,
};

/// The 409 of the operations on a subscription whose kind or state can refuse them.
pub(crate) const SUBSCRIPTION_CONFLICT: &str = "The subscription's kind or state does not allow this (a push subscription cannot be pulled, a paused one…): the detail says which.";

/// The security scheme's name: a bearer token (`Authorization: Bearer keel_…`).
const BEARER: &str = "bearer";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "keel",
        description = "keel's HTTP API: topics of CloudEvents in a durable partitioned log, subscriptions that push them to webhooks or let consumers pull them, dead letters, per-key state, alerts. Errors are RFC 9457 problem details (`application/problem+json`). With auth on, every route but the health probes and this document needs a bearer token whose scopes allow it.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(keel_api::problem::Problem, CloudEvent)),
    tags(
        (name = "health", description = "Liveness, readiness, metrics and the supervised tasks."),
        (name = "topics", description = "Topics: create, list, describe, delete."),
        (name = "events", description = "Publishing and reading events."),
        (name = "subscriptions", description = "Subscriptions: create, describe, pause, resume, seek, rotate a webhook's secret."),
        (name = "delivery", description = "Pull delivery: pull, ack, nack, reject."),
        (name = "dead letters", description = "A subscription's dead-letter queue: list, show, redrive, purge."),
        (name = "state", description = "A stateful subscription's per-key state."),
        (name = "alerts", description = "Alert rules and their state."),
        (name = "tokens", description = "API tokens (admin only)."),
        (name = "cluster", description = "The cluster's nodes."),
    ),
)]
struct Document;

/// A CloudEvent in JSON (CloudEvents 1.0): the four required attributes, the optional ones,
/// `data` or `data_base64`, and extension attributes (lower-case letters and digits).
pub struct CloudEvent;

impl PartialSchema for CloudEvent {
    fn schema() -> RefOr<Schema> {
        let text = || ObjectBuilder::new().schema_type(Type::String);
        let required_text = || text().min_length(Some(1));
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "A CloudEvent in JSON format; any further member is an extension attribute.",
            ))
            .property("specversion", text().enum_values(Some(["1.0"])))
            .required("specversion")
            .property("id", required_text())
            .required("id")
            .property("source", required_text())
            .required("source")
            .property("type", required_text())
            .required("type")
            .property("subject", text())
            .property(
                "time",
                text().format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::DateTime,
                ))),
            )
            .property("datacontenttype", text())
            .property("dataschema", text())
            .property("data", utoipa::openapi::schema::Object::new())
            .property("data_base64", text())
            .into()
    }
}

impl ToSchema for CloudEvent {}

/// The API's router, built from the handlers' annotations, and the document they make.
pub(crate) fn api() -> (Router<AppState>, OpenApi) {
    let (router, mut document) = OpenApiRouter::with_openapi(Document::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(health::tasks))
        .routes(routes!(cluster::status))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(topics::list))
        .routes(routes!(topics::create, topics::describe, topics::delete))
        .routes(routes!(publish::publish))
        .routes(routes!(read::read))
        .routes(routes!(streams::read))
        .routes(routes!(subscriptions::list))
        .routes(routes!(
            subscriptions::create,
            subscriptions::describe,
            subscriptions::delete
        ))
        .routes(routes!(subscriptions::pause))
        .routes(routes!(subscriptions::resume))
        .routes(routes!(subscriptions::seek))
        .routes(routes!(subscriptions::rotate_secret))
        .routes(routes!(subscriptions::pull))
        .routes(routes!(subscriptions::ack))
        .routes(routes!(subscriptions::nack))
        .routes(routes!(subscriptions::reject))
        .routes(routes!(dlq::list, dlq::purge))
        .routes(routes!(dlq::redrive))
        .routes(routes!(dlq::show))
        .routes(routes!(key_state::list))
        .routes(routes!(key_state::show, key_state::rebuild))
        .routes(routes!(alerts::list))
        .routes(routes!(alerts::put, alerts::describe, alerts::delete))
        .split_for_parts();
    describe_shared_answers(&mut document);
    (router, document)
}

/// The API's OpenAPI document.
pub fn document() -> OpenApi {
    api().1
}

/// Every route of the API, by method and path, as the document lists them.
pub fn routes() -> Vec<(Method, String)> {
    let document = document();
    let mut routes = Vec::new();
    for (path, item) in &document.paths.paths {
        for (method, _) in operations(item) {
            routes.push((method, path.clone()));
        }
    }
    routes
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", content_type = "application/json", body = Object)),
)]
async fn openapi_json() -> Response {
    static JSON: OnceLock<Bytes> = OnceLock::new();
    let json = JSON.get_or_init(|| {
        Bytes::from(
            document()
                .to_json()
                .expect("an OpenAPI document serialises"),
        )
    });
    ([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response()
}

/// The operations of a path, with their methods (keel's routes use these four and no other).
fn operations(item: &PathItem) -> impl Iterator<Item = (Method, &Operation)> {
    [
        (Method::GET, &item.get),
        (Method::PUT, &item.put),
        (Method::POST, &item.post),
        (Method::DELETE, &item.delete),
    ]
    .into_iter()
    .filter_map(|(method, operation)| Some((method, operation.as_ref()?)))
}

/// The answers every route shares, each described once under `components.responses` and
/// referenced by the operations it applies to (an operation's own answer for a status wins),
/// and each route's security: the bearer scheme, except on public routes.
fn describe_shared_answers(document: &mut OpenApi) {
    let components = document.components.get_or_insert_with(Components::new);
    components.security_schemes.insert(
        BEARER.to_owned(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("keel_<id>_<secret>")
                .description(Some(
                    "A token from `keel token create`, or the admin token (KEEL_ADMIN_TOKEN). Needed only when auth is on.",
                ))
                .build(),
        )
        .into(),
    );
    for shared in SHARED {
        components
            .responses
            .insert(shared.name.to_owned(), shared.answer().into());
    }
    for (path, item) in &mut document.paths.paths {
        let methods: Vec<Method> = operations(item).map(|(method, _)| method).collect();
        for method in methods {
            let operation = match method {
                Method::GET => item.get.as_mut(),
                Method::PUT => item.put.as_mut(),
                Method::POST => item.post.as_mut(),
                _ => item.delete.as_mut(),
            }
            .expect("listed by operations()");
            let public = auth::is_public(&method, path);
            operation.security = Some(if public {
                Vec::new()
            } else {
                vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]
            });
            let route = Route {
                public,
                rate_limited: auth::is_rate_limited(&method, path),
                has_body: operation.request_body.is_some(),
                has_parameters: operation
                    .parameters
                    .as_ref()
                    .is_some_and(|parameters| !parameters.is_empty()),
                names_resource: path.contains('{'),
            };
            for shared in SHARED.iter().filter(|shared| (shared.applies)(&route)) {
                operation
                    .responses
                    .responses
                    .entry(shared.status.to_owned())
                    .or_insert_with(|| Ref::from_response_name(shared.name).into());
            }
        }
    }
}

/// What decides which shared answers a route has.
struct Route {
    /// Needs no token.
    public: bool,
    /// Counted against a token's rate limit.
    rate_limited: bool,
    /// Takes a request body.
    has_body: bool,
    /// Takes path or query parameters.
    has_parameters: bool,
    /// Names a resource in its path.
    names_resource: bool,
}

/// An answer many routes share.
struct Shared {
    status: &'static str,
    name: &'static str,
    description: &'static str,
    /// The header it carries, if any: its name and what it says.
    header: Option<(&'static str, &'static str)>,
    applies: fn(&Route) -> bool,
}

const RETRY_AFTER: (&str, &str) = ("Retry-After", "Seconds after which a retry may succeed.");

const SHARED: &[Shared] = &[
    Shared {
        status: "400",
        name: "BadRequest",
        description: "The request is malformed: a parameter or the body is invalid; the detail names which and why.",
        header: None,
        applies: |route| route.has_body || route.has_parameters,
    },
    Shared {
        status: "401",
        name: "Unauthorized",
        description: "Auth is on and the request has no token, or one keel does not know (unknown, revoked or expired).",
        header: Some((
            "WWW-Authenticate",
            "`Bearer realm=\"keel\"`, with `error=\"invalid_token\"` when a token was sent.",
        )),
        applies: |route| !route.public,
    },
    Shared {
        status: "403",
        name: "Forbidden",
        description: "The token's scopes do not allow this action on this name. Decided from the names alone: it never tells whether the resource exists.",
        header: None,
        applies: |route| !route.public,
    },
    Shared {
        status: "404",
        name: "NotFound",
        description: "The resource the path names does not exist.",
        header: None,
        applies: |route| route.names_resource,
    },
    Shared {
        status: "408",
        name: "RequestTimeout",
        description: "The request took longer than `request_timeout` (its body did not arrive in time, or keel is overloaded).",
        header: None,
        applies: |_| true,
    },
    Shared {
        status: "413",
        name: "ContentTooLarge",
        description: "The body is over `request_bytes_max` (or an event, a batch or a state over its limit).",
        header: None,
        applies: |route| route.has_body,
    },
    Shared {
        status: "429",
        name: "TooManyRequests",
        description: "The token's rate limit is spent, or the partition's write queue is full.",
        header: Some(RETRY_AFTER),
        applies: |route| route.rate_limited,
    },
    Shared {
        status: "500",
        name: "InternalError",
        description: "An internal error; keel's log has the cause.",
        header: None,
        applies: |_| true,
    },
    Shared {
        status: "503",
        name: "Unavailable",
        description: "keel is starting or stopping, the partition or subscription is unavailable, the response budget is spent, or another node did not answer.",
        header: Some(RETRY_AFTER),
        applies: |_| true,
    },
];

impl Shared {
    fn answer(&self) -> Answer {
        let content = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build();
        let mut answer = ResponseBuilder::new()
            .description(self.description)
            .content(keel_api::problem::CONTENT_TYPE, content);
        if let Some((name, description)) = self.header {
            let schema = match name {
                "Retry-After" => ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0)),
                _ => ObjectBuilder::new().schema_type(Type::String),
            };
            answer = answer.header(
                name,
                HeaderBuilder::new()
                    .schema(Some(schema))
                    .description(Some(description))
                    .build(),
            );
        }
        answer.build()
    }
}

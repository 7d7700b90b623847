//! The OpenAPI document over a real socket: the served document is the generated one, the
//! router serves exactly the documented routes, every route describes the answers it can
//! give (auth, errors), and errors that axum itself answers are problems too.
//! (`scripts/interop.sh` validates the document with an outside validator and fuzzes the
//! live server from it with schemathesis.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_testkit::server::TestServer;
use reqwest::Method;
use serde_json::Value;

async fn served_document(server: &TestServer) -> Value {
    let (status, document, headers) = server.request(Method::GET, "/openapi.json", None, "").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    document
}

/// A path of `route` with its parameters filled in (the key `rebuild`: the one key that POST
/// on a key's state takes).
fn concrete(route: &str) -> String {
    route
        .replace("{topic}", "orders")
        .replace("{name}", "billing")
        .replace("{partition}", "0")
        .replace("{key}", "rebuild")
        .replace("{id}", "0-1")
}

// Goal: `/openapi.json` serves the generated document, an OpenAPI 3.1 document that lists
// every route `keel_server::routes()` reports, each with a unique operation id.
#[tokio::test]
async fn the_served_document_is_the_generated_one() {
    let server = TestServer::start_in_temp_dir().await;
    let served = served_document(&server).await;
    let generated: Value =
        serde_json::from_str(&keel_server::openapi::document().to_json().unwrap()).unwrap();
    assert_eq!(served, generated);
    assert_eq!(served["openapi"], "3.1.0");
    let routes = keel_server::routes();
    assert!(routes.len() >= 39, "{} routes", routes.len());
    let mut operation_ids = std::collections::BTreeSet::new();
    for (method, route) in &routes {
        let operation = &served["paths"][route][method.as_str().to_lowercase()];
        let id = operation["operationId"].as_str().unwrap();
        assert!(operation_ids.insert(id.to_owned()), "{id} twice");
    }
}

// Goal: the router serves every documented route (none answers "no such endpoint" or 405),
// and nothing else: an undocumented path is 404 and an undocumented method 405 with `Allow`,
// both as problems.
#[tokio::test]
async fn the_router_serves_exactly_the_documented_routes() {
    let server = TestServer::start_in_temp_dir().await;
    for (method, route) in keel_server::routes() {
        let path = concrete(&route);
        let (status, body, _) = server.request(method.clone(), &path, None, "").await;
        assert_ne!(status, 405, "{method} {route}: {body}");
        let unknown = body["detail"]
            .as_str()
            .is_some_and(|detail| detail.starts_with("no such endpoint"));
        assert!(!unknown, "{method} {route} is documented but not served");
    }
    let (status, body, headers) = server
        .request(Method::GET, "/v1/nothing-here", None, "")
        .await;
    assert_eq!(status, 404);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(body["status"], 404);
    let (status, body, headers) = server
        .request(Method::PATCH, "/v1/topics/orders", None, "")
        .await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    let allow = headers["allow"].to_str().unwrap();
    for method in ["GET", "PUT", "DELETE"] {
        assert!(allow.contains(method), "{allow}");
    }
}

// Goal: each operation declares the bearer scheme exactly when auth guards it, and the
// shared answers its route can give: 401 and 403 off the public routes, 404 on named
// resources, 413 with a body, 429 with Retry-After on the rate-limited routes, 503 on all;
// every error answer is a problem.
#[tokio::test]
async fn every_operation_describes_its_security_and_errors() {
    let document = keel_server::openapi::document().to_json().unwrap();
    let document: Value = serde_json::from_str(&document).unwrap();
    let public = ["/healthz", "/readyz", "/openapi.json"];
    for (method, route) in keel_server::routes() {
        let operation = &document["paths"][&route][method.as_str().to_lowercase()];
        let what = format!("{method} {route}");
        let security = operation["security"].as_array().unwrap();
        let responses = operation["responses"].as_object().unwrap();
        if public.contains(&route.as_str()) {
            assert!(security.is_empty(), "{what}");
            assert!(!responses.contains_key("401"), "{what}");
        } else {
            assert_eq!(security.len(), 1, "{what}");
            assert!(security[0].get("bearer").is_some(), "{what}");
            assert!(
                responses.contains_key("401") && responses.contains_key("403"),
                "{what}"
            );
        }
        assert!(responses.contains_key("503"), "{what}");
        assert_eq!(responses.contains_key("404"), route.contains('{'), "{what}");
        assert_eq!(
            responses.contains_key("413"),
            operation.get("requestBody").is_some(),
            "{what}"
        );
        for (status, answer) in responses {
            if status.starts_with('2') || route == "/readyz" {
                continue;
            }
            let reference = answer["$ref"].as_str().map(|reference| {
                let name = reference.rsplit('/').next().unwrap();
                &document["components"]["responses"][name]
            });
            let answer = reference.unwrap_or(answer);
            assert!(
                answer["content"].get("application/problem+json").is_some(),
                "{what} {status}: {answer}"
            );
        }
    }
    for route in ["/v1/topics/{topic}/events", "/v1/subscriptions/{name}/pull"] {
        let answer = &document["paths"][route]["post"]["responses"]["429"];
        assert_eq!(answer["$ref"], "#/components/responses/TooManyRequests");
    }
    let limited = &document["components"]["responses"]["TooManyRequests"];
    assert!(limited["headers"].get("Retry-After").is_some(), "{limited}");
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

// Goal: errors axum answers before a handler runs (here a path that is not UTF-8) are
// problems, not plain text.
#[tokio::test]
async fn axum_rejections_are_problems() {
    let server = TestServer::start_in_temp_dir().await;
    let (status, body, headers) = server
        .request(Method::GET, "/v1/topics/%FF%FE", None, "")
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(body["status"], 400);
    assert!(body["detail"].as_str().unwrap().contains("UTF-8"), "{body}");
}

//! The sink's own promises, which every push test relies on, checked with a plain HTTP client.

use std::time::Duration;

use super::policy::{self, Chaos};
use super::{Answer, Exchange, Response, Sink};

/// POSTs `body` to `url` with `ce-id: id` on a fresh connection (so that no reused connection
/// is retried behind the test's back); the status, or `None` when the sink did not answer.
async fn post(url: &str, id: &str, body: &str) -> Option<(u16, Option<String>)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let response = client
        .post(url)
        .header("ce-id", id)
        .body(body.to_owned())
        .send()
        .await
        .ok()?;
    let retry_after = response.headers().get("retry-after");
    let retry_after = retry_after.map(|value| value.to_str().unwrap().to_owned());
    Some((response.status().as_u16(), retry_after))
}

// Goal: a script's replies come in request order, then every request is accepted, and each
// exchange records the request whole. Method: three requests to a two-reply script.
#[tokio::test]
async fn script_replies_in_turn_then_accepts() {
    let busy = Response::new(503).header("retry-after", "7");
    let sink = Sink::start(policy::script(vec![busy.into(), Response::new(404).into()])).await;
    let url = sink.url("/hook?team=1");
    assert_eq!(post(&url, "a", "one").await, Some((503, Some("7".into()))));
    assert_eq!(post(&url, "b", "two").await, Some((404, None)));
    assert_eq!(post(&url, "c", "three").await, Some((200, None)));
    let exchanges = sink.exchanges();
    let seen: Vec<(&str, &str, &str, &[u8], Answer)> = exchanges
        .iter()
        .map(|e| {
            let request = &e.request;
            let (method, path) = (request.method(), request.path());
            (
                method,
                path,
                request.event_id(),
                &request.body[..],
                e.answer,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "POST",
                "/hook?team=1",
                "a",
                &b"one"[..],
                Answer::Status(503)
            ),
            (
                "POST",
                "/hook?team=1",
                "b",
                &b"two"[..],
                Answer::Status(404)
            ),
            (
                "POST",
                "/hook?team=1",
                "c",
                &b"three"[..],
                Answer::Status(200)
            ),
        ]
    );
    let accepted = sink.accepted();
    let accepted: Vec<&str> = accepted.iter().map(|e| e.request.event_id()).collect();
    assert_eq!(accepted, ["c"]);
    assert_eq!(sink.connections(), 3);
}

// Goal: a sink that goes down refuses connections, and comes back on the same port. Method:
// requests before, during and after the outage.
#[tokio::test]
async fn down_refuses_connections_until_it_comes_back_on_the_same_port() {
    let sink = Sink::start(policy::accept()).await;
    let url = sink.url("/hook");
    assert_eq!(post(&url, "before", "").await, Some((200, None)));
    sink.go_down().await;
    assert_eq!(post(&url, "during", "").await, None);
    sink.come_back().await;
    assert_eq!(post(&url, "after", "").await, Some((200, None)));
    let exchanges = sink.exchanges();
    let ids: Vec<&str> = exchanges.iter().map(|e| e.request.event_id()).collect();
    assert_eq!(ids, ["before", "after"]);
}

// Goal: a chaos sink's answers replay from its seed, fail in every way over enough requests,
// and always fail a poisoned event. Method: the same requests to two sinks of one seed.
#[tokio::test]
async fn chaos_replays_its_answers_from_the_seed() {
    let chaos = Chaos {
        failure_share: 0.5,
        late_by: Duration::from_millis(20),
        seed: 7,
        poisoned: vec!["poisoned".to_owned()],
    };
    let mut answers = Vec::new();
    for _ in 0..2 {
        let sink = Sink::start(policy::chaos(chaos.clone())).await;
        for i in 0..60 {
            let id = if i % 10 == 0 {
                "poisoned".to_owned()
            } else {
                format!("e-{i}")
            };
            post(&sink.url("/hook"), &id, "").await;
        }
        let exchanges = sink.exchanges();
        let poisoned = exchanges
            .iter()
            .filter(|e| e.request.event_id() == "poisoned");
        assert_eq!(poisoned.clone().count(), 6);
        assert!(poisoned.map(|e| e.answer).all(|a| a == Answer::Status(500)));
        answers.push(exchanges.iter().map(|e| e.answer).collect::<Vec<_>>());
    }
    assert_eq!(answers[0], answers[1], "one seed, one sequence of answers");
    let answered = |wanted: fn(&Answer) -> bool| answers[0].iter().any(wanted);
    assert!(answered(|a| matches!(a, Answer::Status(200))));
    assert!(answered(|a| matches!(a, Answer::Status(429))));
    assert!(answered(|a| matches!(a, Answer::Late(200))));
    assert!(answered(|a| matches!(a, Answer::HungUp)));
}

// Goal: `wait_for` returns the exchanges once its condition holds. Method: a request sent
// while it waits.
#[tokio::test]
async fn wait_for_returns_once_the_condition_holds() {
    let sink = Sink::start(policy::accept()).await;
    let url = sink.url("/hook");
    let sent = tokio::spawn(async move { post(&url, "x", "").await });
    let done = |exchanges: &[Exchange]| exchanges.iter().any(Exchange::accepted);
    let exchanges = sink
        .wait_for("one request", Duration::from_secs(5), done)
        .await;
    assert_eq!(exchanges[0].request.event_id(), "x");
    assert_eq!(sent.await.unwrap(), Some((200, None)));
}

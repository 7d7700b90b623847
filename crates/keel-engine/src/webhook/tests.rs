//! Tests of push delivery: the pure parts (secrets, URLs, binary mode, `Retry-After`) directly,
//! and delivery against the test kit's scriptable sink over real sockets.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::response::parse_retry_after;
use super::*;
use crate::event::http::{binary_request, percent_encode};
// `SinkReply`: the webhook module has a `Reply` of its own.
use keel_testkit::sink::{Reply as SinkReply, Response, Sink, policy};

/// The secret of the Standard Webhooks reference test vector.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A generous limit for exchanges that should be quick.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The sink's URL, with a query that must reach it unchanged.
fn target(sink: &Sink) -> SinkTarget {
    SinkTarget::new(
        Url::parse(&sink.url("/hook?team=1")).unwrap(),
        WebhookSecret::parse(SECRET).unwrap(),
    )
}

/// A stored event with `members` (each with a leading comma) after the required attributes.
fn event(members: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"e-1","source":"/shop","type":"order.created"{members}}}"#
    )
}

/// Delivers `event_json` once to a new sink that answers with `replies` in turn, then 200.
async fn deliver_to(replies: Vec<SinkReply>, event_json: &str) -> (AttemptOutcome, Sink) {
    let sink = Sink::start(policy::script(replies)).await;
    let outcome = PushClient::new()
        .deliver(&target(&sink), event_json, 1, TIMEOUT)
        .await;
    (outcome, sink)
}

fn retry(status: Option<u16>, error: &str, retry_after: Option<u64>) -> AttemptOutcome {
    AttemptOutcome::Retry {
        status,
        error: error.to_owned(),
        retry_after: retry_after.map(Duration::from_secs),
    }
}

/// Writes `bytes` as they are, then closes the connection: an answer broken off.
fn raw_then_close(bytes: Vec<u8>) -> SinkReply {
    SinkReply::Raw { bytes, close: true }
}

/// IMF-fixdate for `seconds` from now.
fn http_date_in(seconds: i64) -> String {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let when = time::OffsetDateTime::now_utc() + time::Duration::seconds(seconds);
    when.format(&format).unwrap()
}

// Goal: every kind of sink answer maps to the outcome keel's delivery contract gives it, and a
// redirect is reported, not followed. Method: one scripted sink per answer, over real sockets.
#[tokio::test]
async fn answers_are_classified_per_the_delivery_contract() {
    // Relative, so a followed redirect would come back to the same sink and be counted.
    let location = "/moved?from=hook";
    let cases: Vec<(&str, Response, AttemptOutcome)> = vec![
        (
            "200",
            Response::new(200).body("thanks"),
            AttemptOutcome::Delivered { status: 200 },
        ),
        (
            "204",
            Response::new(204),
            AttemptOutcome::Delivered { status: 204 },
        ),
        (
            "301 with Location",
            Response::new(301).header("location", location),
            retry(
                Some(301),
                &format!("301 Moved Permanently: redirect to {location} not followed"),
                None,
            ),
        ),
        (
            "302 without Location",
            Response::new(302),
            retry(
                Some(302),
                "302 Found: redirect without a Location header not followed",
                None,
            ),
        ),
        (
            "400 with a body",
            Response::new(400).body(" missing field \"order_id\"\n"),
            AttemptOutcome::Reject {
                status: 400,
                error: "400 Bad Request: missing field \"order_id\"".to_owned(),
            },
        ),
        (
            "404",
            Response::new(404),
            AttemptOutcome::Reject {
                status: 404,
                error: "404 Not Found".to_owned(),
            },
        ),
        (
            "410",
            Response::new(410).body("bye"),
            AttemptOutcome::Gone { status: 410 },
        ),
        (
            "408",
            Response::new(408),
            retry(Some(408), "408 Request Timeout", None),
        ),
        (
            "429 with Retry-After: 3",
            Response::new(429)
                .header("retry-after", "3")
                .body("slow down"),
            retry(Some(429), "429 Too Many Requests: slow down", Some(3)),
        ),
        (
            "429 with a Retry-After date in the past",
            Response::new(429).header("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT"),
            retry(Some(429), "429 Too Many Requests", Some(0)),
        ),
        (
            "500",
            Response::new(500).body("boom"),
            retry(Some(500), "500 Internal Server Error: boom", None),
        ),
        (
            "503 with Retry-After: 7",
            Response::new(503).header("retry-after", "7"),
            retry(Some(503), "503 Service Unavailable", Some(7)),
        ),
        (
            "a nonstandard 599",
            Response::new(599),
            retry(Some(599), "599", None),
        ),
    ];
    for (case, answer, expected) in cases {
        let (outcome, sink) = deliver_to(vec![answer.into()], &event("")).await;
        assert_eq!(outcome, expected, "case {case}");
        assert_eq!(
            sink.exchanges().len(),
            1,
            "case {case}: one request, nothing followed"
        );
    }
}

// Goal: a Retry-After HTTP-date in the future becomes the delay until then, over the wire.
// Method: the sink answers 429 with a date two minutes ahead; allow for the clock ticking.
#[tokio::test]
async fn retry_after_date_becomes_the_delay_until_then() {
    let date = http_date_in(120);
    let answer = Response::new(429).header("retry-after", &date);
    let (outcome, _sink) = deliver_to(vec![answer.into()], &event("")).await;
    let AttemptOutcome::Retry {
        status: Some(429),
        retry_after: Some(delay),
        ..
    } = outcome
    else {
        panic!("expected a 429 retry with a delay, got {outcome:?}");
    };
    assert!((118..=120).contains(&delay.as_secs()), "delay {delay:?}");
}

// Goal: Retry-After is read as delay-seconds or an HTTP-date, capped at an hour, and garbage
// is ignored. Method: the parser on a table of values at a fixed "now".
#[test]
fn retry_after_is_read_as_seconds_or_http_date() {
    // Sun, 06 Nov 1994 08:49:37 GMT
    let date_s = 784_111_777;
    let cases: &[(&str, Option<u64>)] = &[
        ("3", Some(3)),
        (" 120 ", Some(120)),
        ("0", Some(0)),
        ("3600", Some(3600)),
        ("3601", Some(3600)),
        ("99999999999999999999999", Some(3600)),
        ("Sun, 06 Nov 1994 08:49:37 GMT", Some(0)),
        ("Sun, 06 Nov 1994 08:51:37 GMT", Some(120)),
        ("Sun Nov  6 08:50:37 1994", Some(60)),
        ("Mon, 07 Nov 1994 08:49:37 GMT", Some(3600)),
        ("Sun, 06 Nov 1994 08:40:00 GMT", Some(0)),
        ("-1", None),
        ("1.5", None),
        ("", None),
        ("soon", None),
        ("Sun, 06 Nov 1994 08:49:37 PST", None),
    ];
    for &(value, expected) in cases {
        let expected = expected.map(Duration::from_secs);
        assert_eq!(
            parse_retry_after(value, date_s),
            expected,
            "value {value:?}"
        );
    }
}

// Goal: a sink slower than the attempt's timeout is a retry naming the timeout, whether it is
// slow to answer or to finish its body, and the attempt ends at the timeout. Method: the sink
// answers after 2 s, or sends 3 of 100 promised body bytes and stays silent; timeout 300 ms.
#[tokio::test]
async fn slow_sink_times_out_as_retry() {
    let partial_body = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc".to_vec();
    let cases = [
        (
            "slow answer",
            SinkReply::from(Response::new(200).after(Duration::from_secs(2))),
        ),
        (
            "slow body",
            SinkReply::Raw {
                bytes: partial_body,
                close: false,
            },
        ),
    ];
    for (case, reply) in cases {
        let sink = Sink::start(policy::script(vec![reply])).await;
        let started = Instant::now();
        let outcome = PushClient::new()
            .deliver(&target(&sink), &event(""), 1, Duration::from_millis(300))
            .await;
        assert_eq!(
            outcome,
            retry(None, "timed out after 300ms", None),
            "case {case}"
        );
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_millis(1500),
            "case {case}: took {elapsed:?}"
        );
    }
}

// Goal: a closed port is a connection failure that never reached the sink and says the
// connection was refused. Method: bind a port, close it, deliver to it.
#[tokio::test]
async fn closed_port_is_retried_as_connection_refused() {
    let port = keel_testkit::process::free_port();
    let target = SinkTarget::new(
        Url::parse(&format!("http://127.0.0.1:{port}/hook")).unwrap(),
        WebhookSecret::parse(SECRET).unwrap(),
    );
    let outcome = PushClient::new()
        .deliver(&target, &event(""), 1, TIMEOUT)
        .await;
    let AttemptOutcome::ConnectionFailed {
        error,
        unreached: true,
    } = &outcome
    else {
        panic!("expected a connection failure before the sink, got {outcome:?}");
    };
    assert!(error.starts_with("cannot connect: "), "{error}");
    assert!(error.ends_with("connection refused"), "{error}");
}

/// A client of `policy` in which `sink.example` resolves to 127.0.0.1.
fn client_with_policy(policy: crate::egress::EgressPolicy) -> PushClient {
    let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let lookup = crate::egress::HostsTable::new().with("sink.example", &[loopback]);
    let settings = WebhookSettings {
        egress: policy,
        lookup: Arc::new(lookup),
        ..WebhookSettings::default()
    };
    SinkClients::new(&settings).unwrap().client(1)
}

// Goal: under the strict policy, a delivery, a stateful delivery and a health check aimed at
// 127.0.0.1, by address or by a name resolving there, are refused as connections that never
// reached the sink, with the policy's words, and the listener sees no connection; the
// standard policy reaches it through the same name. (A subscription created before the
// policy was made strict keeps its URL: each request is checked, not only the create.)
// Method: the test kit's sink counts accepted connections; a hosts table names it.
#[tokio::test]
async fn strict_policy_refuses_each_request_to_loopback_without_connecting() {
    let sink = Sink::start(policy::accept()).await;
    let by_address = target(&sink);
    let mut by_name = target(&sink);
    by_name.url.set_host(Some("sink.example")).unwrap();
    let client = client_with_policy(crate::egress::EgressPolicy::Strict);
    let state = crate::subscription::KeyState {
        state: None,
        version: 0,
    };
    let allow = "denied by the strict egress policy; set webhooks.egress (--webhook-egress) to \
                 \"standard\" to allow it";
    for (target, from) in [(&by_address, ""), (&by_name, " (from sink.example)")] {
        let expected = format!("sink address 127.0.0.1{from} is loopback, {allow}");
        let refused = AttemptOutcome::ConnectionFailed {
            error: expected.clone(),
            unreached: true,
        };
        let outcome = client.deliver(target, &event(""), 1, TIMEOUT).await;
        assert_eq!(outcome, refused);
        let (outcome, _) = client
            .deliver_stateful(target, &event(""), 1, TIMEOUT, &state)
            .await;
        assert_eq!(outcome, refused);
        assert_eq!(client.probe(&target.url, TIMEOUT).await, Err(expected));
    }
    assert_eq!(
        sink.connections(),
        0,
        "a refused request reached the listener"
    );
    let standard = client_with_policy(crate::egress::EgressPolicy::Standard);
    let outcome = standard.deliver(&by_name, &event(""), 1, TIMEOUT).await;
    assert_eq!(outcome, AttemptOutcome::Delivered { status: 200 });
    assert_eq!(sink.connections(), 1);
}

// Goal: a connection dropped mid-answer is a retry, whether the status arrived or not (without
// the status, a connection failure after the request reached the sink).
// Method: the sink writes part of the status line, or a whole head and part of the body, and
// closes the connection.
#[tokio::test]
async fn dropped_connection_mid_response_is_retried() {
    let cut_head = b"HTTP/1.1 200 OK\r\ncontent-le".to_vec();
    let (outcome, _sink) = deliver_to(vec![raw_then_close(cut_head)], &event("")).await;
    let AttemptOutcome::ConnectionFailed {
        error,
        unreached: false,
    } = &outcome
    else {
        panic!("cut head: expected a dropped connection, got {outcome:?}");
    };
    assert!(error.starts_with("the request failed: "), "{error}");
    assert!(
        error.contains("connection closed before message completed"),
        "{error}"
    );

    let cut_body = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc".to_vec();
    let (outcome, _sink) = deliver_to(vec![raw_then_close(cut_body)], &event("")).await;
    let AttemptOutcome::Retry {
        status: Some(200),
        error,
        ..
    } = &outcome
    else {
        panic!("cut body: expected a retry with status 200, got {outcome:?}");
    };
    assert!(
        error.starts_with("200 OK, then the response body broke off: "),
        "{error}"
    );
    assert!(error.ends_with("connection closed by the sink"), "{error}");
}

// Goal: an error quotes at most 200 bytes of the body, and a body over 64 KiB is abandoned
// without harm. Method: 400 with a 1000-byte body; 400 with a 100 KiB body, then a 200.
#[tokio::test]
async fn error_bodies_are_quoted_and_read_with_bounds() {
    let long = "x".repeat(1000);
    let (outcome, _sink) = deliver_to(
        vec![Response::new(400).body(long.as_str()).into()],
        &event(""),
    )
    .await;
    let expected = format!("400 Bad Request: {}", &long[..ERROR_BODY_BYTES_MAX]);
    assert_eq!(
        outcome,
        AttemptOutcome::Reject {
            status: 400,
            error: expected
        }
    );

    let huge = "y".repeat(100 * 1024);
    let huge_body = Response::new(400).body(huge.as_str());
    let sink = Sink::start(policy::script(vec![huge_body.into()])).await;
    let client = PushClient::new();
    let outcome = client.deliver(&target(&sink), &event(""), 1, TIMEOUT).await;
    let expected = format!("400 Bad Request: {}", &huge[..ERROR_BODY_BYTES_MAX]);
    assert_eq!(
        outcome,
        AttemptOutcome::Reject {
            status: 400,
            error: expected
        }
    );
    let outcome = client.deliver(&target(&sink), &event(""), 2, TIMEOUT).await;
    assert_eq!(outcome, AttemptOutcome::Delivered { status: 200 });
}

// Goal: two deliveries to one sink share one kept-alive connection.
// Method: count the connections the sink accepts.
#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let sink = Sink::start(policy::script(vec![Response::new(200).body("ok").into()])).await;
    let client = PushClient::new();
    for attempt in 1..=3 {
        let outcome = client
            .deliver(&target(&sink), &event(""), attempt, TIMEOUT)
            .await;
        assert_eq!(outcome, AttemptOutcome::Delivered { status: 200 });
    }
    assert_eq!(sink.exchanges().len(), 3);
    assert_eq!(sink.connections(), 1);
}

// Goal: every request carries a Standard Webhooks signature that an independent HMAC
// computation confirms, with the event id, a current timestamp and the attempt number.
// Method: recompute HMAC-SHA256 with the hmac crate from what the sink received.
#[tokio::test]
async fn signature_verifies_with_an_independent_hmac() {
    use hmac::{Hmac, KeyInit as _, Mac as _};

    let json = event(r#","subject":"a b","data":{"amount":42}"#);
    let (outcome, sink) = deliver_to(vec![], &json).await;
    assert_eq!(outcome, AttemptOutcome::Delivered { status: 200 });
    let received = &sink.exchanges()[0].request;
    let id = received.header("webhook-id").unwrap();
    let timestamp = received.header("webhook-timestamp").unwrap();
    let signature = received.header("webhook-signature").unwrap();
    assert_eq!(id, "e-1");
    assert_eq!(received.header("ce-id"), Some(id));
    let now_s = crate::clock::now_ms() / 1000;
    assert!(
        (timestamp.parse::<i64>().unwrap() - now_s).abs() <= 5,
        "timestamp {timestamp}"
    );

    let key = BASE64
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&received.body);
    let tag = BASE64
        .decode(signature.strip_prefix("v1,").unwrap())
        .unwrap();
    mac.verify_slice(&tag).expect("the signature verifies");

    assert_eq!(received.request_line, "POST /hook?team=1 HTTP/1.1");
    assert_eq!(received.header("keel-attempt"), Some("1"));
    let user_agent = concat!("keel/", env!("CARGO_PKG_VERSION"));
    assert_eq!(received.header("user-agent"), Some(user_agent));
}

// Goal: an event's trace context reaches the sink twice: unchanged as the event's
// `ce-traceparent`/`ce-tracestate`, and as the HTTP `traceparent` of keel's attempt span (same
// trace and flags, a new span id) with the event's `tracestate`. An event without one, or with
// an invalid one, gets no HTTP `traceparent`.
#[tokio::test]
async fn the_event_trace_continues_under_the_attempt_span() {
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let members = format!(r#","traceparent":"{parent}","tracestate":"congo=t61rcWkgMzE""#);
    let (outcome, sink) = deliver_to(vec![], &event(&members)).await;
    assert_eq!(outcome, AttemptOutcome::Delivered { status: 200 });
    let received = &sink.exchanges()[0].request;
    assert_eq!(received.header("ce-traceparent"), Some(parent));
    assert_eq!(received.header("ce-tracestate"), Some("congo=t61rcWkgMzE"));
    assert_eq!(received.header("tracestate"), Some("congo=t61rcWkgMzE"));
    let hop = received.header("traceparent").expect("an HTTP traceparent");
    let hop = crate::trace_context::TraceContext::parse(hop).expect("a valid traceparent");
    let parent = crate::trace_context::TraceContext::parse(parent).unwrap();
    assert_eq!((hop.trace_id, hop.flags), (parent.trace_id, parent.flags));
    assert_ne!(
        hop.span_id, parent.span_id,
        "keel's attempt is a span of its own"
    );

    for members in ["", r#","traceparent":"not-a-trace""#] {
        let (outcome, sink) = deliver_to(vec![], &event(members)).await;
        assert_eq!(outcome, AttemptOutcome::Delivered { status: 200 });
        let received = &sink.exchanges()[0].request;
        assert_eq!(received.header("traceparent"), None, "{members}");
    }
}

// Goal: the signature is the one the Standard Webhooks reference test vector gives, and one
// byte changed anywhere changes it. Method: sign the vector, then variants.
#[test]
fn signature_matches_the_reference_vector() {
    let secret = WebhookSecret::parse(SECRET).unwrap();
    let body = br#"{"test": 2432232314}"#;
    let signature = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
    assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    let variants = [
        secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJeK", 1_614_265_330, body),
        secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_331, body),
        secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232315}"#,
        ),
        WebhookSecret::generate().sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
    ];
    assert!(variants.iter().all(|variant| *variant != signature));
}

/// A binary-mode case: its name, the stored event's extra members, the Content-Type and body
/// expected on the wire, and extra members the event gains on the way back (JSON object text).
type BinaryCase = (
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static [u8],
    &'static str,
);

const BINARY_CASES: &[BinaryCase] = &[
    (
        "JSON data without a content type",
        r#","data":{"amount": 42,"items":["a","b"]}"#,
        Some("application/json"),
        br#"{"amount": 42,"items":["a","b"]}"#,
        r#"{"datacontenttype":"application/json"}"#,
    ),
    (
        "JSON data with a +json content type",
        r#","datacontenttype":"application/vnd.shop+json; charset=utf-8","data":"just a string""#,
        Some("application/vnd.shop+json; charset=utf-8"),
        br#""just a string""#,
        "{}",
    ),
    (
        "explicit null data",
        r#","data":null"#,
        Some("application/json"),
        b"null",
        r#"{"datacontenttype":"application/json"}"#,
    ),
    (
        "text data",
        r#","datacontenttype":"text/plain","data":"caf\u00e9 \"quoted\"\n100%""#,
        Some("text/plain"),
        "café \"quoted\"\n100%".as_bytes(),
        "{}",
    ),
    (
        "data_base64 with a content type",
        r#","datacontenttype":"application/octet-stream","data_base64":"AAH+/w==""#,
        Some("application/octet-stream"),
        &[0, 1, 254, 255],
        "{}",
    ),
    (
        "data_base64 without a content type",
        r#","data_base64":"AAH+/w==""#,
        None,
        &[0, 1, 254, 255],
        "{}",
    ),
    (
        "no data",
        r#","partitionkey":"order-1001""#,
        None,
        b"",
        "{}",
    ),
    (
        "no data but a content type",
        r#","datacontenttype":"text/plain""#,
        Some("text/plain"),
        b"",
        "{}",
    ),
];

/// The event `from_binary` should give back for a case: the stored one plus what it gains.
fn expected_back(json: &str, gained: &str) -> Value {
    let mut expected: Value = serde_json::from_str(json).unwrap();
    let gained: Value = serde_json::from_str(gained).unwrap();
    let members = expected.as_object_mut().unwrap();
    members.extend(gained.as_object().unwrap().clone());
    expected
}

// Goal: each form of data goes out in binary mode with the right Content-Type and body, every
// other attribute as a ce- header, and publishing what the sink received in binary mode gives
// back the stored event. Method: deliver each case to the sink, check the wire, and feed the
// received headers and body to `event::from_binary`.
#[tokio::test]
async fn binary_mode_sends_each_data_form_and_round_trips() {
    for &(case, members, content_type, body, gained) in BINARY_CASES {
        let json = event(&format!(
            r#","subject":"Euro € 😀 \"x\" 5%","comexampleext":"v"{members}"#
        ));
        let (outcome, sink) = deliver_to(vec![], &json).await;
        assert_eq!(
            outcome,
            AttemptOutcome::Delivered { status: 200 },
            "case {case}"
        );
        let received = &sink.exchanges()[0].request;
        assert_eq!(received.header("content-type"), content_type, "case {case}");
        assert_eq!(received.body, body, "case {case}");
        assert_eq!(
            received.header("ce-subject"),
            Some("Euro%20%E2%82%AC%20%F0%9F%98%80%20%22x%22%205%25")
        );
        assert_eq!(
            received.header("ce-specversion"),
            Some("1.0"),
            "case {case}"
        );
        assert_eq!(
            received.header("ce-comexampleext"),
            Some("v"),
            "case {case}"
        );
        for absent in ["ce-data", "ce-data_base64", "ce-datacontenttype"] {
            assert_eq!(received.header(absent), None, "case {case}");
        }
        let back = crate::event::from_binary(&received.attributes(), content_type, &received.body)
            .unwrap_or_else(|error| panic!("case {case}: {error}"));
        let back: Value = serde_json::from_str(back.json()).unwrap();
        assert_eq!(back, expected_back(&json, gained), "case {case}");
    }
}

// Goal: extension booleans and integers go out as their JSON text (they come back as strings),
// and null attributes are not sent. Method: build the request parts of such an event.
#[test]
fn extension_booleans_and_integers_are_sent_as_json_text() {
    let json = event(r#","priority":5,"urgent":true,"negative":-12,"subject":null"#);
    let request = binary_request(&json).unwrap();
    let headers: Vec<(&str, &str)> = request
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    assert_eq!(
        headers,
        [
            ("ce-specversion", "1.0"),
            ("ce-id", "e-1"),
            ("ce-source", "/shop"),
            ("ce-type", "order.created"),
            ("ce-priority", "5"),
            ("ce-urgent", "true"),
            ("ce-negative", "-12"),
        ]
    );
    assert_eq!((request.content_type, request.body), (None, vec![]));
}

// Goal: header values are percent-encoded exactly as HTTP binding §3.1.3.2 says, its own
// example included. Method: a table of values.
#[test]
fn header_values_are_percent_encoded_per_the_binding() {
    let cases = [
        ("Euro € 😀", "Euro%20%E2%82%AC%20%F0%9F%98%80"),
        (
            "plain-ASCII_1.2~!#$&'()*+,/:;<=>?@[\\]^`{|}",
            "plain-ASCII_1.2~!#$&'()*+,/:;<=>?@[\\]^`{|}",
        ),
        ("say \"hi\"", "say%20%22hi%22"),
        ("100%", "100%25"),
        ("tab\there\u{7f}", "tab%09here%7F"),
        ("", ""),
    ];
    for (value, encoded) in cases {
        assert_eq!(percent_encode(value), encoded, "value {value:?}");
    }
}

proptest! {
    // Goal: any attribute text and any text data survive the trip out and back in binary mode.
    // Method: random printable Unicode subjects and data, sent and published back.
    #[test]
    fn random_text_round_trips_through_binary_mode(subject in "\\PC{1,40}", data in "\\PC{1,40}") {
        let members = json!({ "subject": subject, "datacontenttype": "text/plain", "data": data });
        let members = members.to_string();
        let json = event(&format!(",{}", &members[1..members.len() - 1]));
        let request = binary_request(&json).unwrap();
        let attributes: Vec<(&str, &str)> = request
            .headers
            .iter()
            .map(|(name, value)| (name.strip_prefix("ce-").unwrap(), value.as_str()))
            .collect();
        let back = crate::event::from_binary(&attributes, request.content_type.as_deref(), &request.body)
            .unwrap();
        let back: Value = serde_json::from_str(back.json()).unwrap();
        prop_assert_eq!(back, serde_json::from_str::<Value>(&json).unwrap());
    }
}

// Goal: stored text that is not an event is retried with the reason (so it reaches the
// dead-letter queue with it), and nothing is sent. Method: deliver broken JSON.
#[tokio::test]
async fn stored_text_that_is_not_an_event_is_retried_with_the_reason() {
    let cases = [
        (
            "not JSON",
            "{\"id\":",
            "the stored event is not a JSON object",
        ),
        (
            "no id",
            r#"{"specversion":"1.0"}"#,
            "the stored event has no \"id\"",
        ),
        (
            "a bad data_base64",
            r#"{"id":"1","data_base64":"!!"}"#,
            "is not base64",
        ),
    ];
    for (case, json, reason) in cases {
        let (outcome, sink) = deliver_to(vec![], json).await;
        let AttemptOutcome::Retry {
            status: None,
            error,
            ..
        } = &outcome
        else {
            panic!("case {case}: expected a retry, got {outcome:?}");
        };
        assert!(
            error.starts_with("cannot build the request from the stored event: "),
            "{error}"
        );
        assert!(error.contains(reason), "case {case}: {error}");
        assert!(sink.exchanges().is_empty(), "case {case}");
    }
}

// Goal: a secret's text round-trips through parse, Display and serde, and Debug never shows it.
// Method: generate, print, parse back; serialise a target.
#[test]
fn secret_text_round_trips_and_debug_hides_it() {
    let secret = WebhookSecret::generate();
    let text = secret.to_string();
    assert!(text.starts_with("whsec_"));
    assert_eq!(BASE64.decode(&text[6..]).unwrap().len(), 32);
    assert_eq!(WebhookSecret::parse(&text).unwrap(), secret);
    assert_ne!(WebhookSecret::generate(), secret);
    assert_eq!(format!("{secret:?}"), "WebhookSecret(<redacted>)");
    let unpadded = text.trim_end_matches('=');
    assert_eq!(WebhookSecret::parse(unpadded).unwrap(), secret);

    let json = json!({ "url": "https://user:pass@hooks.example/in", "secret": text });
    let target: SinkTarget = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(serde_json::to_value(&target).unwrap(), json);
    let debug = format!("{target:?}");
    assert!(
        !debug.contains(&text[6..]) && !debug.contains("pass@"),
        "{debug}"
    );
}

// Goal: while a previous secret's overlap lasts, the signature header lists the current
// secret's signature then the previous one's, each the one that secret alone gives; from the
// overlap's end (inclusive) only the current one; and Debug shows neither secret, nor a
// specification holding them. Method: sign at times around the end.
#[test]
fn previous_secret_signs_second_until_its_overlap_ends() {
    let (current, previous) = (WebhookSecret::generate(), WebhookSecret::generate());
    let mut target = SinkTarget::new(Url::parse("https://hooks.example/in").unwrap(), current);
    target.previous_secret = Some((previous.clone(), 1_000));
    let (id, timestamp_s, body) = ("msg-1", 1_614_265_330, b"{}".as_slice());
    let alone = target.secret.sign(id, timestamp_s, body);
    let both = format!("{alone} {}", previous.sign(id, timestamp_s, body));
    assert_eq!(target.signatures(id, timestamp_s, body, 999), both);
    assert_eq!(target.signatures(id, timestamp_s, body, 1_000), alone);
    let debug = format!("{target:?}");
    for secret in [&target.secret, &previous] {
        assert!(!debug.contains(&secret.to_string()[6..]), "{debug}");
    }
    let spec: crate::subscription::spec::SubscriptionSpec = serde_json::from_value(json!({
        "topic": "t",
        "sink": {"url": "https://hooks.example/in", "secret": target.secret.to_string(),
            "previous_secret": {"secret": previous.to_string(), "until": "2030-01-01T00:00:00Z"}}
    }))
    .unwrap();
    let debug = format!("{spec:?}");
    for secret in [&target.secret, &previous] {
        assert!(!debug.contains(&secret.to_string()[6..]), "{debug}");
    }
}

// Goal: a malformed secret is refused with a message that says what is wrong and does not
// repeat the secret. Method: a table of bad secrets.
#[test]
fn malformed_secrets_are_refused_with_the_reason() {
    let bytes_23 = BASE64.encode([7; 23]);
    let bytes_65 = BASE64.encode([7; 65]);
    let cases = [
        (
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "must start with \"whsec_\"",
        ),
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa-w",
            "is not valid base64",
        ),
        (
            &format!("whsec_{bytes_23}"),
            "must hold 24 to 64 bytes once base64-decoded, this one holds 23",
        ),
        (&format!("whsec_{bytes_65}"), "this one holds 65"),
        ("whsec_", "this one holds 0"),
    ];
    for (text, reason) in cases {
        let error = WebhookSecret::parse(text).unwrap_err();
        assert!(error.contains(reason), "{text:?}: {error}");
        assert!(
            text.len() <= "whsec_".len() || !error.contains(text),
            "{error}"
        );
    }
    let error = serde_json::from_value::<WebhookSecret>(json!("whsec_")).unwrap_err();
    assert!(error.to_string().contains("this one holds 0"), "{error}");
}

// Goal: sink URLs must be absolute http(s) URLs with a host; the error says which rule failed.
// Method: a table of URLs.
#[test]
fn sink_urls_are_checked() {
    let valid = [
        "http://127.0.0.1:8080/hook",
        "https://hooks.example/in?x=1",
        " https://u:p@h.example/ ",
    ];
    for url in valid {
        assert!(validate_sink_url(url).is_ok(), "{url}");
    }
    let invalid = [
        (
            "/relative/path",
            "not a valid absolute URL: relative URL without a base",
        ),
        (
            "ftp://files.example/x",
            "must use http or https, not \"ftp\"",
        ),
        (
            "mailto:ops@example.com",
            "must use http or https, not \"mailto\"",
        ),
        ("http://", "not a valid absolute URL: empty host"),
        (
            "https://exa mple.com/",
            "not a valid absolute URL: invalid international domain name",
        ),
    ];
    for (url, reason) in invalid {
        let error = validate_sink_url(url).unwrap_err();
        assert!(error.contains(reason), "{url}: {error}");
    }
    let bad = json!({ "url": "ftp://x/", "secret": SECRET });
    let error = serde_json::from_value::<SinkTarget>(bad).unwrap_err();
    assert!(
        error.to_string().contains("must use http or https"),
        "{error}"
    );
}

//! Fuzzes the CloudEvents HTTP binding in its three content modes, through the function the
//! server's publish route calls (`event::http::parse_request`): no input may panic, and an
//! accepted event's stored JSON must give back its identity and its key.
//!
//! Input: an HTTP head, then the body: lines `name: value` up to an empty line (`\n\n`);
//! `content-type` is the Content-Type (structured mode `application/cloudevents+json`, batched
//! mode `application/cloudevents-batch+json`, anything else binary mode), `ce-NAME` the
//! attributes of binary mode. Without an empty line the whole input is the body of a
//! structured request, then of a batch.

#![no_main]

use keel_engine::event::{self, http::HttpRequest};
use libfuzzer_sys::fuzz_target;

/// The head's lines and the body; no head when there is no empty line.
fn split_request(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = input.windows(2).position(|pair| pair == b"\n\n")?;
    Some((&input[..end], &input[end + 2..]))
}

fn check(request: &HttpRequest<'_>) {
    let Ok(events) = event::http::parse_request(request) else {
        return;
    };
    assert!(!events.is_empty(), "an accepted request holds an event");
    for accepted in events {
        let identity = (accepted.source().to_owned(), accepted.id().to_owned());
        let json = accepted.json().as_bytes();
        assert_eq!(event::identity_of(json), Some(identity));
        assert_eq!(event::key_of(json).as_deref(), accepted.key());
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((head, body)) = split_request(input) else {
        for content_type in [event::http::STRUCTURED, event::http::BATCH] {
            let request = HttpRequest {
                content_type: Some(content_type),
                attributes: &[],
                body: input,
            };
            check(&request);
        }
        let _ = event::identity_of(input);
        return;
    };
    let mut content_type = None;
    let mut attributes = Vec::new();
    for line in head.split(|&byte| byte == b'\n') {
        let Some(colon) = line.iter().position(|&byte| byte == b':') else {
            continue;
        };
        let Ok(name) = std::str::from_utf8(&line[..colon]) else {
            continue;
        };
        let value = line[colon + 1..].trim_ascii();
        let name = name.trim().to_ascii_lowercase();
        if name == "content-type" {
            content_type = Some(std::str::from_utf8(value).unwrap_or(""));
        } else if let Some(attribute) = name.strip_prefix("ce-") {
            attributes.push((attribute.to_owned(), value));
        }
    }
    let attributes: Vec<(&str, &[u8])> = attributes
        .iter()
        .map(|(name, value)| (name.as_str(), *value))
        .collect();
    check(&HttpRequest {
        content_type,
        attributes: &attributes,
        body,
    });
});

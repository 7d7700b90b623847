//! Fuzzes the bodies of pull delivery and of stateful acks: through the server's own body
//! parser (`keel_server::body::json_object`), the pull request and the ack/nack/reject request
//! with its acks' states and emitted events; and a stateful push sink's 2xx answer (parsed as
//! the engine parses it). Each state and emitted event then goes through what the engine does
//! with it before committing (`stored_state`, `emitted_event`). No input may panic; a state
//! accepted is JSON on one line within the size limit, the same value as sent.

#![no_main]

use bytes::Bytes;
use keel_api::pull::{PullRequest, SettleRequest};
use keel_api::state::{CommitAnswer, Emit};
use keel_engine::limits::STATE_BYTES_MAX;
use keel_engine::subscription::{emitted_event, stored_state};
use keel_server::body::json_object;
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fn check_effects(index: usize, state: Option<&RawValue>, emit: &[Emit]) {
    if let Some(state) = state
        && let Ok(stored) = stored_state(index, state)
    {
        let text = stored.get();
        assert!(
            text.len() <= STATE_BYTES_MAX && !text.contains('\n'),
            "{text}"
        );
        RawValue::from_string(text.to_owned()).expect("a stored state is JSON");
        // Stored on one line, it is the same value (when it fits a serde_json::Value at all).
        if let Ok(sent) = serde_json::from_str::<serde_json::Value>(state.get()) {
            let kept: serde_json::Value = serde_json::from_str(text).expect("the same value");
            assert_eq!(kept, sent);
        }
    }
    for (number, emit) in emit.iter().enumerate() {
        let id = format!("fuzz:0:0:{number}");
        if let Ok(event) = emitted_event(&emit.event, id.clone(), index, number) {
            assert_eq!(event.id(), id);
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let body = Bytes::copy_from_slice(input);
    let _ = json_object::<PullRequest>(&body, "pull request");
    if let Ok(request) = json_object::<SettleRequest>(&body, "request") {
        for (index, ack) in request.acks.iter().enumerate() {
            check_effects(index, ack.state.as_deref(), &ack.emit);
        }
    }
    if let Ok(answer) = serde_json::from_slice::<CommitAnswer>(input) {
        check_effects(0, answer.state.as_deref(), &answer.emit);
    }
});

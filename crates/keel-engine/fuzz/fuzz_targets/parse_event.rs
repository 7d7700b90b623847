//! Fuzzes the CloudEvents parsers: no input may panic, and an accepted event's stored JSON must
//! give back its identity.

#![no_main]

use keel_engine::event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let structured = event::parse_structured(body).into_iter();
    for accepted in structured.chain(event::parse_batch(body).unwrap_or_default()) {
        let identity = (accepted.source().to_owned(), accepted.id().to_owned());
        assert_eq!(
            event::identity_of(accepted.json().as_bytes()),
            Some(identity)
        );
    }
    let _ = event::identity_of(body);
});

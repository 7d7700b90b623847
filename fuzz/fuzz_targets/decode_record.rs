//! Fuzzes the frame decoder: any bytes give a frame or a `FrameError`, never a panic, and a
//! frame accepted re-encodes to exactly the bytes it was decoded from.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = keel_log::decode_header(bytes);
    if let Ok(frame) = keel_log::decode_frame(bytes) {
        let mut encoded = Vec::new();
        keel_log::encode_frame(
            frame.offset,
            frame.timestamp_ms,
            frame.payload,
            &mut encoded,
        );
        assert_eq!(&encoded[..], &bytes[..frame.frame_bytes()]);
    }
});

//! Record framing: how one record is laid out in a segment file.
//!
//! The layout, documented byte by byte in `docs/log-format.md` (all integers little-endian):
//!
//! ```text
//! position  bytes  field          meaning
//!        0      4  crc            CRC32C (Castagnoli) of bytes [4, 24 + payload_bytes)
//!        4      4  payload_bytes  length of the payload, at most PAYLOAD_BYTES_MAX
//!        8      8  offset         the record's offset in the partition
//!       16      8  timestamp_ms   append time given by the caller, ms since the Unix epoch
//!       24      n  payload        the bytes appended
//! ```
//!
//! The CRC covers everything after itself, so a frame is checked whole: its length, offset,
//! timestamp and payload. Decoding never trusts the bytes and never panics: a bad frame is a
//! [`FrameError`].

use crate::limits::PAYLOAD_BYTES_MAX;

/// Byte position of the CRC32C field within a frame.
pub const CRC_POSITION: usize = 0;
const CRC_BYTES: usize = 4;
/// Byte position of the payload length field within a frame.
pub const PAYLOAD_BYTES_POSITION: usize = CRC_POSITION + CRC_BYTES;
const PAYLOAD_BYTES_BYTES: usize = 4;
/// Byte position of the offset field within a frame.
pub const OFFSET_POSITION: usize = PAYLOAD_BYTES_POSITION + PAYLOAD_BYTES_BYTES;
const OFFSET_BYTES: usize = 8;
/// Byte position of the timestamp field within a frame.
pub const TIMESTAMP_POSITION: usize = OFFSET_POSITION + OFFSET_BYTES;
const TIMESTAMP_BYTES: usize = 8;
/// Byte position of the payload within a frame.
pub const PAYLOAD_POSITION: usize = TIMESTAMP_POSITION + TIMESTAMP_BYTES;
/// Bytes of a frame before its payload.
pub const RECORD_HEADER_BYTES: usize = PAYLOAD_POSITION;
/// Bytes of the largest frame.
pub const FRAME_BYTES_MAX: usize = RECORD_HEADER_BYTES + PAYLOAD_BYTES_MAX as usize;

// `docs/log-format.md` draws a 24-byte header; keep the two in step.
const _: () = assert!(RECORD_HEADER_BYTES == 24);

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its offset in the partition.
    pub offset: u64,
    /// Append time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The bytes appended.
    pub payload: Vec<u8>,
}

/// One frame decoded from bytes, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The record's offset.
    pub offset: u64,
    /// The record's timestamp, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// The record's payload.
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Bytes the frame takes on disk.
    pub fn frame_bytes(&self) -> usize {
        frame_bytes(self.payload.len())
    }
}

/// The fields of a frame header that can be checked before the payload is at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The stored CRC32C.
    pub crc: u32,
    /// Payload length, already checked against `PAYLOAD_BYTES_MAX`.
    pub payload_bytes: u32,
    /// The stored offset (not yet covered by a CRC check).
    pub offset: u64,
    /// The stored timestamp (not yet covered by a CRC check).
    pub timestamp_ms: i64,
}

impl FrameHeader {
    /// Bytes of the whole frame this header announces.
    pub fn frame_bytes(&self) -> usize {
        frame_bytes(self.payload_bytes as usize)
    }
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than a header remain.
    #[error("short header: {available} of {RECORD_HEADER_BYTES} bytes")]
    ShortHeader {
        /// Bytes that remain.
        available: usize,
    },
    /// The header is all zero bytes: space that was never written (a torn or zero-filled tail).
    #[error("zero-filled header: space that was never written")]
    ZeroFilled,
    /// The length field is larger than `PAYLOAD_BYTES_MAX`.
    #[error("payload length {payload_bytes} is over the limit of {PAYLOAD_BYTES_MAX}")]
    LengthOutOfBounds {
        /// The length stored.
        payload_bytes: u32,
    },
    /// The frame announces more bytes than remain.
    #[error("short frame: needs {needed} bytes, {available} remain")]
    ShortFrame {
        /// Bytes the header announces.
        needed: usize,
        /// Bytes that remain.
        available: usize,
    },
    /// The stored CRC does not match the bytes.
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// The CRC in the frame.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
}

/// Bytes a frame with `payload_bytes` of payload takes on disk.
pub fn frame_bytes(payload_bytes: usize) -> usize {
    RECORD_HEADER_BYTES + payload_bytes
}

/// Appends the frame of one record to `out`.
///
/// # Panics
/// When `payload` is longer than `PAYLOAD_BYTES_MAX`: the caller checks the limit first, so this
/// is a bug, and it must not reach disk.
pub fn encode_frame(offset: u64, timestamp_ms: i64, payload: &[u8], out: &mut Vec<u8>) {
    let payload_bytes = u32::try_from(payload.len())
        .ok()
        .filter(|n| *n <= PAYLOAD_BYTES_MAX);
    let payload_bytes =
        payload_bytes.expect("caller checked the payload against PAYLOAD_BYTES_MAX");
    let start = out.len();
    out.reserve(frame_bytes(payload.len()));
    out.extend_from_slice(&[0; CRC_BYTES]);
    out.extend_from_slice(&payload_bytes.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + PAYLOAD_BYTES_POSITION..]);
    out[start + CRC_POSITION..start + CRC_POSITION + CRC_BYTES].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(decode_frame(&out[start..]).map(|f| f.offset), Ok(offset));
}

/// Decodes and checks the header at the start of `bytes` (payload not needed, CRC not checked).
pub fn decode_header(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
    let Some(header) = bytes.get(..RECORD_HEADER_BYTES) else {
        return Err(FrameError::ShortHeader {
            available: bytes.len(),
        });
    };
    if header.iter().all(|byte| *byte == 0) {
        return Err(FrameError::ZeroFilled);
    }
    let payload_bytes = read_u32(header, PAYLOAD_BYTES_POSITION);
    if payload_bytes > PAYLOAD_BYTES_MAX {
        return Err(FrameError::LengthOutOfBounds { payload_bytes });
    }
    Ok(FrameHeader {
        crc: read_u32(header, CRC_POSITION),
        payload_bytes,
        offset: read_u64(header, OFFSET_POSITION),
        timestamp_ms: read_u64(header, TIMESTAMP_POSITION) as i64,
    })
}

/// Decodes the frame at the start of `bytes`, checking its bounds and CRC. Bytes after the frame
/// are ignored.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    let header = decode_header(bytes)?;
    let needed = header.frame_bytes();
    let Some(frame) = bytes.get(..needed) else {
        return Err(FrameError::ShortFrame {
            needed,
            available: bytes.len(),
        });
    };
    let computed = crc32c::crc32c(&frame[PAYLOAD_BYTES_POSITION..]);
    if computed != header.crc {
        return Err(FrameError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(Frame {
        offset: header.offset,
        timestamp_ms: header.timestamp_ms,
        payload: &frame[PAYLOAD_POSITION..],
    })
}

/// Reads a little-endian u32 at `position`; the caller has checked the bounds.
pub(crate) fn read_u32(bytes: &[u8], position: usize) -> u32 {
    let mut field = [0; 4];
    field.copy_from_slice(&bytes[position..position + 4]);
    u32::from_le_bytes(field)
}

/// Reads a little-endian u64 at `position`; the caller has checked the bounds.
pub(crate) fn read_u64(bytes: &[u8], position: usize) -> u64 {
    let mut field = [0; 8];
    field.copy_from_slice(&bytes[position..position + 8]);
    u64::from_le_bytes(field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame_of(offset: u64, timestamp_ms: i64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(offset, timestamp_ms, payload, &mut out);
        out
    }

    #[test]
    fn frame_round_trips_with_every_field() {
        // Goal: what encode_frame writes, decode_frame returns unchanged, including the edges
        // (empty payload, negative and extreme timestamps, the largest offset).
        // Method: encode a table of records, decode each, compare fields and sizes.
        let cases: [(u64, i64, &[u8]); 4] = [
            (0, 0, b""),
            (7, -1, b"x"),
            (u64::MAX, i64::MIN, b"hello world"),
            (1 << 40, i64::MAX, &[0xff; 300]),
        ];
        for (offset, timestamp_ms, payload) in cases {
            let bytes = frame_of(offset, timestamp_ms, payload);
            assert_eq!(bytes.len(), RECORD_HEADER_BYTES + payload.len());
            let frame = decode_frame(&bytes).expect("a fresh frame decodes");
            assert_eq!(
                frame,
                Frame {
                    offset,
                    timestamp_ms,
                    payload
                }
            );
            assert_eq!(frame.frame_bytes(), bytes.len());
        }
    }

    #[test]
    fn frame_decoding_ignores_bytes_after_the_frame() {
        // Goal: a frame is self-delimiting, so frames can be decoded back to back.
        // Method: decode a frame followed by another one and by garbage.
        let mut bytes = frame_of(1, 2, b"first");
        bytes.extend_from_slice(&frame_of(2, 3, b"second"));
        let first = decode_frame(&bytes).expect("first frame");
        assert_eq!(first.payload, b"first");
        let second = decode_frame(&bytes[first.frame_bytes()..]).expect("second frame");
        assert_eq!((second.offset, second.payload), (2, &b"second"[..]));
    }

    #[test]
    fn every_kind_of_bad_frame_is_an_error() {
        // Goal: each way a frame can be damaged maps to its own FrameError, without panicking.
        // Method: a table of damaged byte strings with the error each must give.
        let good = frame_of(5, 6, b"payload");
        let mut flipped_payload = good.clone();
        *flipped_payload.last_mut().expect("payload is not empty") ^= 0x01;
        let mut flipped_offset = good.clone();
        flipped_offset[OFFSET_POSITION] ^= 0x80;
        let mut huge_length = good.clone();
        huge_length[PAYLOAD_BYTES_POSITION..PAYLOAD_BYTES_POSITION + 4]
            .copy_from_slice(&(PAYLOAD_BYTES_MAX + 1).to_le_bytes());
        let mut long_length = good.clone();
        long_length[PAYLOAD_BYTES_POSITION] = 200;
        let crc = read_u32(&good, CRC_POSITION);
        let cases: Vec<(&str, Vec<u8>, FrameError)> = vec![
            ("empty", vec![], FrameError::ShortHeader { available: 0 }),
            (
                "short header",
                good[..10].to_vec(),
                FrameError::ShortHeader { available: 10 },
            ),
            ("zero header", vec![0; 40], FrameError::ZeroFilled),
            (
                "length over the limit",
                huge_length,
                FrameError::LengthOutOfBounds {
                    payload_bytes: PAYLOAD_BYTES_MAX + 1,
                },
            ),
            (
                "torn payload",
                good[..good.len() - 1].to_vec(),
                FrameError::ShortFrame {
                    needed: good.len(),
                    available: good.len() - 1,
                },
            ),
            (
                "length past the end",
                long_length,
                FrameError::ShortFrame {
                    needed: 224,
                    available: good.len(),
                },
            ),
        ];
        for (name, bytes, expected) in cases {
            assert_eq!(decode_frame(&bytes), Err(expected), "case {name}");
        }
        for (name, bytes) in [
            ("flipped payload bit", flipped_payload),
            ("flipped offset", flipped_offset),
        ] {
            match decode_frame(&bytes) {
                Err(FrameError::CrcMismatch { stored, .. }) => assert_eq!(stored, crc, "{name}"),
                other => panic!("case {name}: expected a CRC mismatch, got {other:?}"),
            }
        }
    }

    #[test]
    #[should_panic(expected = "PAYLOAD_BYTES_MAX")]
    fn encoding_an_oversized_payload_is_a_bug() {
        // Goal: an oversized payload never reaches disk; the caller must check the limit.
        // Method: encode one byte over the limit and expect the assert.
        let payload = vec![0; PAYLOAD_BYTES_MAX as usize + 1];
        encode_frame(0, 0, &payload, &mut Vec::new());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            bytes in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            // Goal: the decoder survives any input. Method: feed random bytes; any outcome but a
            // panic is fine, and a frame it accepts must re-encode to the same bytes.
            if let Ok(frame) = decode_frame(&bytes) {
                let again = frame_of(frame.offset, frame.timestamp_ms, frame.payload);
                prop_assert_eq!(&again[..], &bytes[..frame.frame_bytes()]);
            }
        }

        #[test]
        fn any_single_bit_flip_is_detected(
            payload in prop::collection::vec(any::<u8>(), 0..64),
            offset in any::<u64>(),
            timestamp_ms in any::<i64>(),
            bit in any::<prop::sample::Index>(),
        ) {
            // Goal: CRC32C catches every single-bit error anywhere in a frame.
            // Method: flip one random bit of a fresh frame; decoding must fail.
            let mut bytes = frame_of(offset, timestamp_ms, &payload);
            let bit = bit.index(bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_frame(&bytes).is_err());
        }
    }
}

//! W3C Trace Context (`traceparent`, Level 1), as the CloudEvents distributed tracing
//! extension carries it on an event.
//!
//! An event published with a `traceparent` attribute keeps it: it is stored with the event and
//! reaches every handler unchanged (a push delivery's `ce-traceparent` header, a pulled
//! message's event). keel joins that trace: each push attempt is a span of its own, a child of
//! the event's span, and its request carries the HTTP `traceparent` header naming keel's span
//! as the parent, so a sink's tracing middleware continues the trace under keel's hop.
//!
//! Format: `{version}-{trace-id}-{parent-id}-{flags}`, lower-case hex of 2, 32, 16 and 2
//! digits. Version `ff` is invalid; an all-zero trace id or parent id is invalid; a version
//! above `00` may carry more fields after the flags (ignored, as the spec asks). An invalid
//! attribute is still stored and delivered as the publisher sent it; keel only does not join it.

use std::fmt;

/// A trace context: which trace, which span is the parent, and the trace flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace's id; never all zeros.
    pub trace_id: u128,
    /// The span this context names (the parent of the next hop); never zero.
    pub span_id: u64,
    /// Trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

impl TraceContext {
    /// Reads a `traceparent` value; `None` when it is not a valid one.
    pub fn parse(text: &str) -> Option<TraceContext> {
        let text = text.trim_matches([' ', '\t']);
        let mut fields = text.split('-');
        let version = hex_field(fields.next()?, 2)?;
        let trace_id = hex_field(fields.next()?, 32)?;
        let span_id = hex_field(fields.next()?, 16)?;
        let flags = hex_field(fields.next()?, 2)?;
        // Version 00 has exactly four fields; a later version may append more, and 0xff is
        // forbidden.
        let extra = fields.next().is_some();
        if version == 0xff || (version == 0 && extra) || trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id: u64::try_from(span_id).ok()?,
            flags: u8::try_from(flags).ok()?,
        })
    }

    /// A child span of this one in the same trace, with a fresh random span id.
    pub fn child(&self) -> TraceContext {
        let span_id = loop {
            let id = fastrand::u64(..);
            if id != 0 {
                break id;
            }
        };
        TraceContext { span_id, ..*self }
    }

    /// The trace id as 32 lower-case hex digits (as logs show it).
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }
}

/// The `traceparent` text, version 00.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

/// A field of exactly `digits` lower-case hex digits.
fn hex_field(field: &str, digits: usize) -> Option<u128> {
    let lower_hex = field
        .bytes()
        .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
    if field.len() != digits || !lower_hex {
        return None;
    }
    u128::from_str_radix(field, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    // Goal: the spec's example parses and prints back the same; a child keeps the trace and
    // flags and gets a new, non-zero span id.
    #[test]
    fn a_traceparent_round_trips_and_has_children() {
        let context = TraceContext::parse(VALID).unwrap();
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(context.flags, 1);
        assert_eq!(context.to_string(), VALID);
        let child = context.child();
        assert_eq!((child.trace_id, child.flags), (context.trace_id, 1));
        assert_ne!(child.span_id, context.span_id);
        assert_eq!(TraceContext::parse(&child.to_string()), Some(child));
    }

    // Goal: every malformed value the spec names is refused, and a later version's extra
    // fields are allowed.
    #[test]
    fn invalid_traceparents_are_refused() {
        let invalid = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for text in invalid {
            assert_eq!(TraceContext::parse(text), None, "{text:?}");
        }
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(TraceContext::parse(later).is_some());
    }
}

//! Wall-clock time as keel stores it: milliseconds since the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// Formats milliseconds since the epoch as RFC 3339 in UTC with milliseconds,
/// e.g. `2026-11-25T19:18:14.123Z`.
pub fn format_rfc3339_ms(timestamp_ms: i64) -> String {
    let nanos = i128::from(timestamp_ms) * 1_000_000;
    let Ok(time) = time::OffsetDateTime::from_unix_timestamp_nanos(nanos) else {
        return timestamp_ms.to_string();
    };
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time.format(&format)
        .unwrap_or_else(|_| timestamp_ms.to_string())
}

/// Parses an RFC 3339 timestamp into milliseconds since the epoch.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let time =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: formatting and parsing agree, offsets are honoured.
    #[test]
    fn rfc3339_round_trips() {
        let ms = 1_795_000_000_123;
        assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms));
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }
}

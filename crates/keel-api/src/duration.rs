//! Durations as keel writes them in its API and config: `"500ms"`, `"30s"`, `"2m"`, `"1h"`,
//! `"7d"`.
//!
//! ```
//! use std::time::Duration;
//!
//! assert_eq!(keel_api::duration::parse("2m"), Ok(Duration::from_secs(120)));
//! assert_eq!(keel_api::duration::format(Duration::from_secs(90)), "90s");
//! ```

use std::time::Duration;

const UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses a duration like `"30s"`; the error says what is accepted.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let bad = || {
        format!(
            "invalid duration {text:?}: use a whole number and a unit of ms, s, m, h or d, like \"30s\""
        )
    };
    let count: u64 = number.parse().map_err(|_| bad())?;
    let (_, unit_ms) = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .ok_or_else(bad)?;
    let ms = count.checked_mul(*unit_ms).ok_or_else(bad)?;
    Ok(Duration::from_millis(ms))
}

/// Formats a duration in the largest unit that divides it exactly.
pub fn format(duration: Duration) -> String {
    let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let (name, unit_ms) = UNITS
        .iter()
        .rev()
        .find(|(_, unit_ms)| ms != 0 && ms % unit_ms == 0)
        .unwrap_or(&("ms", 1));
    format!("{}{name}", ms / unit_ms)
}

/// The JSON Schema of a duration as keel writes and reads it (`"30s"`): a string holding a
/// whole number and a unit, as [`parse`] takes it. `Duration` fields point at it with
/// `#[schema(value_type = DurationText)]`.
#[cfg(feature = "openapi")]
pub struct DurationText;

#[cfg(feature = "openapi")]
impl DurationText {
    /// The ECMA-262 pattern of what [`parse`] accepts and [`format`] writes: digits and a
    /// unit. ([`parse`] also trims surrounding whitespace, which the schema leaves out as no
    /// client needs it; a number too large for its unit matches and is refused.)
    pub fn pattern() -> String {
        let units: Vec<&str> = UNITS.iter().map(|(name, _)| *name).collect();
        format!("^[0-9]+({})$", units.join("|"))
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for DurationText {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(Self::pattern()))
            .description(Some(
                "A duration: a whole number and a unit of ms, s, m, h or d (`\"500ms\"`, `\"30s\"`, `\"2m\"`, `\"1h\"`, `\"7d\"`).",
            ))
            .examples(["30s"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for DurationText {}

/// Serde helpers for `Duration` fields written as strings.
pub mod serde_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serializes as `"30s"`.
    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format(*duration))
    }

    /// Deserializes from `"30s"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde helpers for `Option<Duration>` fields written as strings; pair them with
/// `default` (absent is none) and, to leave none out, `skip_serializing_if`.
pub mod serde_text_option {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serializes some as `"30s"`, none as `null`.
    pub fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => super::serde_text::serialize(duration, serializer),
            None => serializer.serialize_none(),
        }
    }

    /// Deserializes `"30s"`, or `null` as none.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| super::parse(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: every accepted unit parses, formatting picks the largest exact unit, and bad input
    // is refused with a message naming the input.
    #[test]
    fn durations_parse_and_format_round_trip() {
        for (text, ms) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("7d", 604_800_000),
        ] {
            assert_eq!(parse(text), Ok(Duration::from_millis(ms)), "{text}");
            assert_eq!(format(Duration::from_millis(ms)), text);
        }
        assert_eq!(format(Duration::from_millis(90_000)), "90s");
        for bad in [
            "",
            "7",
            "d",
            "1.5s",
            "-1s",
            "10 years",
            "99999999999999999999d",
        ] {
            let error = parse(bad).expect_err(bad);
            assert!(error.contains("invalid duration"), "{error}");
        }
    }
}

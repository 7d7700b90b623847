//! Standard Webhooks signing: the `whsec_` secret and the `v1,` HMAC-SHA256 signature.
//!
//! The signed content is `{msg_id}.{timestamp}.{body}` (Standard Webhooks 1.0.0, "Signature
//! scheme"); the key is the secret's decoded bytes, never its text.

use std::fmt;

use base64::Engine as _;
use base64::alphabet::STANDARD as STANDARD_ALPHABET;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

/// Prefix of a symmetric secret's text form.
const SECRET_PREFIX: &str = "whsec_";
/// Fewest secret bytes the spec allows (192 bits).
pub(super) const SECRET_BYTES_MIN: usize = 24;
/// Most secret bytes the spec allows (512 bits).
pub(super) const SECRET_BYTES_MAX: usize = 64;
/// Bytes of a generated secret (256 bits, the HMAC-SHA256 output size).
const SECRET_BYTES_GENERATED: usize = 32;

const _: () = assert!(SECRET_BYTES_MIN <= SECRET_BYTES_GENERATED);
const _: () = assert!(SECRET_BYTES_GENERATED <= SECRET_BYTES_MAX);

/// Standard base64, with or without padding: the reference libraries accept both.
const BASE64_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &STANDARD_ALPHABET,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A Standard Webhooks signing secret: `whsec_` followed by the base64 of 24 to 64 random
/// bytes.
///
/// `Display` and serde give the `whsec_` text; `Debug` never shows the secret.
///
/// ```
/// use keel_engine::webhook::WebhookSecret;
///
/// let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
/// assert_eq!(secret.to_string(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
/// assert_eq!(format!("{secret:?}"), "WebhookSecret(<redacted>)");
/// let body = br#"{"test": 2432232314}"#;
/// let signature = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
/// assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
/// # Ok::<(), String>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    /// A new secret of 32 bytes from the operating system's random number generator.
    pub fn generate() -> WebhookSecret {
        let mut bytes = vec![0; SECRET_BYTES_GENERATED];
        // Without a working OS random source no secret can be made safely, and nothing else
        // in the process could be trusted to be random either.
        getrandom::fill(&mut bytes).expect("the operating system's random number generator works");
        WebhookSecret(bytes)
    }

    /// Parses the `whsec_<base64>` text form. The error says what is wrong without repeating
    /// the secret.
    pub fn parse(text: &str) -> Result<WebhookSecret, String> {
        let Some(encoded) = text.strip_prefix(SECRET_PREFIX) else {
            return Err(format!(
                "a webhook secret must start with {SECRET_PREFIX:?} followed by base64"
            ));
        };
        let bytes = BASE64_ANY_PADDING.decode(encoded).map_err(|error| {
            format!("the webhook secret after {SECRET_PREFIX:?} is not valid base64: {error}")
        })?;
        if !(SECRET_BYTES_MIN..=SECRET_BYTES_MAX).contains(&bytes.len()) {
            return Err(format!(
                "a webhook secret must hold {SECRET_BYTES_MIN} to {SECRET_BYTES_MAX} bytes \
                 once base64-decoded, this one holds {}",
                bytes.len()
            ));
        }
        Ok(WebhookSecret(bytes))
    }

    /// The `webhook-signature` value for one message: `v1,` and the base64 HMAC-SHA256 of
    /// `{msg_id}.{timestamp_s}.{body}` keyed with the secret's bytes.
    pub fn sign(&self, msg_id: &str, timestamp_s: i64, body: &[u8]) -> String {
        // HMAC takes keys of any length (longer ones are hashed first), so this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_s.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Display for WebhookSecret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{SECRET_PREFIX}{}", BASE64.encode(&self.0))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("WebhookSecret(<redacted>)")
    }
}

impl std::str::FromStr for WebhookSecret {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        WebhookSecret::parse(text)
    }
}

impl serde::Serialize for WebhookSecret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for WebhookSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        WebhookSecret::parse(&text).map_err(serde::de::Error::custom)
    }
}

//! Reading JSON request bodies with precise errors: each names the field path
//! (`retry.initial: invalid duration …`).

use axum::body::Bytes;
use serde::de::DeserializeOwned;

use crate::problem::ApiError;

/// Parses a JSON object body; an empty body is `{}`. `what` names the body in errors
/// ("subscription spec").
pub fn json_object<T: DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, ApiError> {
    let start = body.iter().find(|byte| !byte.is_ascii_whitespace());
    let text: &[u8] = match start {
        None => b"{}",
        Some(b'{') => body,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "the {what} must be a JSON object"
            )));
        }
    };
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        // The field path names where a value was refused inside its own parser (a
        // duration, a position), which serde_json's message cannot.
        // serde_json ends its messages with "at line 1 column 36": noise next to the path.
        let text = inner.to_string();
        let message = match text.rfind(" at line ") {
            Some(at) if text[at..].contains(" column ") => text[..at].to_owned(),
            _ => text,
        };
        let named = message.starts_with(&path) || message.contains(&format!("`{path}`"));
        let at = if path == "." || named {
            String::new()
        } else {
            format!("{path}: ")
        };
        ApiError::bad_request(format!("invalid {what}: {at}{message}"))
    })
}

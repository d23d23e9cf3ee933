//! The body: its size (413), read before anything else looks at it, and after
//! the signature its media type and JSON (415/400).

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;

use crate::Rejection;
use crate::json::JsonReader;

/// Longest part of a refused content type repeated in the answer.
const MAX_CONTENT_TYPE_ECHO: usize = 100;

/// Reads at most `limit` bytes: a declared larger `Content-Length` is refused
/// before reading, a longer stream as soon as it passes the limit.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Rejection> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(Rejection::PayloadTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(Rejection::PayloadTooLarge { limit }),
        Err(err) => Err(Rejection::Unreadable(err.to_string())),
    }
}

/// Whether a media type is JSON (`application/json`, `…+json`).
fn is_json_media_type(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

/// The body as JSON. With `require_json`, a non-JSON content type is 415 and
/// an unparsable body 400; otherwise JSON is read when it parses, for the
/// event fields and the schema, and the raw body is stored either way.
pub fn parse_json(
    reader: &JsonReader,
    headers: &HeaderMap,
    body: &[u8],
    require_json: bool,
) -> Result<Option<Value>, Rejection> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or("(not text)"));
    if require_json {
        if let Some(content_type) = content_type
            && !is_json_media_type(content_type)
        {
            return Err(Rejection::UnsupportedMediaType(
                content_type.chars().take(MAX_CONTENT_TYPE_ECHO).collect(),
            ));
        }
        return reader
            .parse(body)
            .map(Some)
            .map_err(|err| Rejection::InvalidJson(err.to_string()));
    }
    let looks_json = content_type.is_none_or(is_json_media_type);
    Ok(looks_json.then(|| reader.parse(body).ok()).flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types() {
        assert!(is_json_media_type("application/json; charset=utf-8"));
        assert!(is_json_media_type("application/vnd.api+json"));
        assert!(!is_json_media_type("application/x-www-form-urlencoded"));
    }
}

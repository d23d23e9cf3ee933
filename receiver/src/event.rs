//! What is stored with an event: its id, type, time and object id, read as the
//! endpoint says, and the message headers of the `hookline_api::headers` contract.

use async_nats::header::{HeaderMap as NatsHeaders, HeaderName, HeaderValue};
use axum::http::HeaderMap;
use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use hookline_api::ValidatedEndpoint;
use hookline_api::headers;
use hookline_api::validated::EventFields;
use sha2::{Digest, Sha256};

use hookline_api::headers::MAX_ID_BYTES;

use crate::Error;
use crate::encoding::is_unix_millis;

/// The attributes of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventInfo {
    pub id: String,
    /// `provider`, `idempotency-key` or `body-hash` (the [`headers::ID_SOURCE`] values).
    pub id_source: &'static str,
    pub event_type: Option<String>,
    /// RFC 3339 in UTC.
    pub timestamp: Option<String>,
    pub object_id: Option<String>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// A value that may travel in a message header and be a database key: no
/// control characters, at most [`MAX_ID_BYTES`] bytes.
fn checked(what: &str, value: String) -> Result<String, Error> {
    if value.len() > MAX_ID_BYTES {
        return Err(Error::InvalidEvent(format!(
            "the event {what} is longer than {MAX_ID_BYTES} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::InvalidEvent(format!(
            "the event {what} contains control characters"
        )));
    }
    Ok(value)
}

/// Reads the event's attributes; the id falls back to `Idempotency-Key`, then
/// to the SHA-256 of the body, so every event has a stable deduplication key.
pub fn extract(
    fields: &EventFields,
    request: &HeaderMap,
    json: Option<&serde_json::Value>,
    body: &[u8],
) -> Result<EventInfo, Error> {
    let read = |source: &Option<hookline_api::validated::FieldSource>| {
        source
            .as_ref()
            .and_then(|source| source.read(|name| header(request, name), json))
    };
    let (id, id_source) = match read(&fields.id) {
        Some(id) => (id, "provider"),
        None => match header(request, "idempotency-key").filter(|key| !key.is_empty()) {
            Some(key) => (key.to_owned(), "idempotency-key"),
            None => (hex::encode(Sha256::digest(body)), "body-hash"),
        },
    };
    let id = checked("id", id)?;
    let event_type = read(&fields.event_type)
        .map(|value| checked("type", value))
        .transpose()?;
    let object_id = read(&fields.object_id)
        .map(|value| checked("object id", value))
        .transpose()?;
    let timestamp = read(&fields.timestamp).and_then(|text| {
        let normalized = normalize_timestamp(&text);
        if normalized.is_none() {
            tracing::debug!(
                "event timestamp is neither unix seconds, milliseconds nor RFC 3339; left out"
            );
        }
        normalized
    });
    Ok(EventInfo {
        id,
        id_source,
        event_type,
        timestamp,
        object_id,
    })
}

/// Unix seconds, unix milliseconds (see [`is_unix_millis`]) or RFC 3339, as RFC 3339 UTC.
pub fn normalize_timestamp(text: &str) -> Option<String> {
    let text = text.trim();
    let time = if let Ok(number) = text.parse::<f64>() {
        if !number.is_finite() {
            return None;
        }
        let millis = if is_unix_millis(number) {
            number
        } else {
            number * 1000.0
        };
        // Float to integer: saturating, and anything outside chrono's range is None below.
        DateTime::<Utc>::from_timestamp_millis(millis.round() as i64)?
    } else {
        DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc)
    };
    // RFC 3339 has four-digit years; anything else is not a real event time.
    if !(0..=9999).contains(&time.year()) {
        return None;
    }
    Some(time.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// Now, as the received-at header.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `x-github-delivery` → `X-Github-Delivery`.
fn title_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper { c.to_ascii_uppercase() } else { c });
        upper = c == '-';
    }
    out
}

/// Static names of the contract, built once.
fn static_name(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

/// Inputs of [`message_headers`] that do not change per request.
#[derive(Debug, Clone)]
pub struct HeaderContext {
    pub endpoint: String,
    pub provider: &'static str,
    /// Lower-case names never copied (credentials, hop-by-hop, the signature).
    pub not_forwarded: Vec<String>,
}

impl HeaderContext {
    pub fn new(endpoint: &ValidatedEndpoint) -> HeaderContext {
        let mut not_forwarded: Vec<String> = headers::NOT_FORWARDED
            .iter()
            .map(|name| name.to_string())
            .collect();
        not_forwarded.push(endpoint.verification.signature_header.clone());
        HeaderContext {
            endpoint: endpoint.key(),
            provider: endpoint.provider.as_str(),
            not_forwarded,
        }
    }
}

/// Every header of the contract, plus the request's own headers under
/// [`headers::REQUEST_HEADER_PREFIX`]. Values are header-safe already (checked
/// in [`extract`]; HTTP header values cannot hold CR or LF).
pub fn message_headers(
    context: &HeaderContext,
    event: &EventInfo,
    request: &HeaderMap,
    received_at: &str,
) -> NatsHeaders {
    let mut out = NatsHeaders::new();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(value) = value.parse::<HeaderValue>() {
            out.insert(static_name(name), value);
        }
    };
    put(headers::MSG_ID, &event.id);
    put(headers::EVENT_ID, &event.id);
    put(headers::ID_SOURCE, event.id_source);
    if let Some(event_type) = &event.event_type {
        put(headers::EVENT_TYPE, event_type);
    }
    if let Some(timestamp) = &event.timestamp {
        put(headers::EVENT_TIMESTAMP, timestamp);
    }
    if let Some(object_id) = &event.object_id {
        put(headers::OBJECT_ID, object_id);
    }
    put(headers::RECEIVED_AT, received_at);
    put(headers::ENDPOINT, &context.endpoint);
    put(headers::PROVIDER, context.provider);
    if let Some(content_type) = header(request, "content-type") {
        put(headers::CONTENT_TYPE, content_type);
    }
    for (name, value) in request {
        let name = name.as_str();
        if context.not_forwarded.iter().any(|skip| skip == name) {
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        let forwarded = format!("{}{}", headers::REQUEST_HEADER_PREFIX, title_case(name));
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(forwarded),
            value.parse::<HeaderValue>(),
        ) {
            out.append(name, value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hookline_api::validated::FieldSource;

    #[test]
    fn timestamps_become_rfc3339_utc() {
        assert_eq!(
            normalize_timestamp("1700000000").as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(
            normalize_timestamp("1700000000123").as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
        assert_eq!(
            normalize_timestamp("2023-11-14T23:13:20+01:00").as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(
            normalize_timestamp("2023-03-29T18:00:27.877041743Z").as_deref(),
            Some("2023-03-29T18:00:27.877041743Z")
        );
        assert_eq!(normalize_timestamp("soon"), None);
        assert_eq!(normalize_timestamp("1e18"), None, "beyond year 9999");
    }

    #[test]
    fn id_falls_back_to_idempotency_key_then_body_hash() {
        let fields = EventFields {
            id: Some(FieldSource::JsonPointer("/id".into())),
            event_type: None,
            timestamp: None,
            object_id: None,
        };
        let json = serde_json::json!({"other": 1});
        let mut request = HeaderMap::new();
        let hashed = extract(&fields, &request, Some(&json), b"abc").expect("extract");
        assert_eq!(
            hashed.id,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hashed.id_source, "body-hash");
        request.insert("idempotency-key", "key-1".parse().expect("value"));
        let keyed = extract(&fields, &request, Some(&json), b"abc").expect("extract");
        assert_eq!(
            (keyed.id.as_str(), keyed.id_source),
            ("key-1", "idempotency-key")
        );
    }

    #[test]
    fn control_characters_in_the_id_are_refused() {
        let fields = EventFields {
            id: Some(FieldSource::JsonPointer("/id".into())),
            event_type: None,
            timestamp: None,
            object_id: None,
        };
        let json = serde_json::json!({"id": "evt\n1"});
        assert!(matches!(
            extract(&fields, &HeaderMap::new(), Some(&json), b""),
            Err(Error::InvalidEvent(_))
        ));
    }

    #[test]
    fn header_names_are_title_cased() {
        assert_eq!(title_case("x-github-delivery"), "X-Github-Delivery");
        assert_eq!(title_case("user-agent"), "User-Agent");
    }
}

//! Turning a JetStream message (headers + raw body) into an [`Event`], without
//! I/O: everything that can be wrong with a message itself is found here,
//! before any transaction, so one bad message cannot fail a batch.

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use hookline_api::headers;
use hookline_api::validated::{FieldSource, ValidatedEndpoint};
use serde_json::{Map, Value};

/// An event ready to be stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub event_id: String,
    pub event_type: String,
    pub event_timestamp: Option<DateTime<Utc>>,
    pub object_id: Option<String>,
    pub received_at: DateTime<Utc>,
    /// The message headers as a JSON object (text).
    pub headers: String,
    pub body: Body,
    /// The object's state from the payload (JSON text), used for the projection
    /// unless refetch replaces it.
    pub state: Option<String>,
}

impl Event {
    /// What decides which event is newer: the event time (received-at when the
    /// provider gave none), ties broken by event id.
    pub fn order_key(&self) -> (DateTime<Utc>, &str) {
        (
            self.event_timestamp.unwrap_or(self.received_at),
            &self.event_id,
        )
    }
}

/// The request body as it will be stored.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// Valid JSON that Postgres' `jsonb` accepts (text, as received).
    Json(String),
    /// Anything else (only when the endpoint allows non-JSON bodies).
    Raw(Vec<u8>),
}

/// Why a message can never be stored, whatever the number of retries.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Undecodable(pub String);

/// Ids are primary-key columns, and a b-tree entry must fit in a third of a
/// Postgres page; the receiver keeps to the same limit.
pub use hookline_api::headers::MAX_ID_BYTES;

/// Reads one header (exact name first, then case-insensitively).
pub fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    let headers = headers?;
    if let Some(value) = headers.get(name) {
        return Some(value.as_str()).filter(|v| !v.is_empty());
    }
    headers
        .iter()
        .find(|(key, _)| AsRef::<str>::as_ref(key).eq_ignore_ascii_case(name))
        .and_then(|(_, values)| values.first())
        .map(|value| value.as_str())
        .filter(|v| !v.is_empty())
}

/// `text` with NUL characters (which Postgres text and jsonb reject) replaced by U+FFFD.
pub fn without_nul(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// The headers as a JSON object: one string per header, an array when
/// repeated; NUL characters replaced so Postgres always takes it.
pub fn headers_json(headers: Option<&HeaderMap>) -> Value {
    let mut object = Map::new();
    if let Some(headers) = headers {
        for (name, values) in headers.iter() {
            let mut strings: Vec<Value> = values
                .iter()
                .map(|value| Value::String(without_nul(value.as_str())))
                .collect();
            let value = if strings.len() == 1 {
                strings.remove(0)
            } else {
                Value::Array(strings)
            };
            object.insert(without_nul(name.as_ref()), value);
        }
    }
    Value::Object(object)
}

/// The event id of a message: `Hookline-Event-Id`, else `Nats-Msg-Id`.
pub fn event_id(headers: Option<&HeaderMap>) -> Option<&str> {
    header(headers, headers::EVENT_ID).or_else(|| header(headers, headers::MSG_ID))
}

/// Decodes a message of `endpoint`'s stream. `published` (when JetStream stored
/// the message) stands in for a missing received-at header.
pub fn decode(
    endpoint: &ValidatedEndpoint,
    subject: &str,
    headers: Option<&HeaderMap>,
    body: &[u8],
    published: DateTime<Utc>,
) -> Result<Event, Undecodable> {
    let event_id = event_id(headers)
        .ok_or_else(|| {
            Undecodable(format!(
                "no {} or {} header",
                headers::EVENT_ID,
                headers::MSG_ID
            ))
        })?
        .to_owned();
    let event_type = without_nul(
        header(headers, headers::EVENT_TYPE)
            .or_else(|| subject.rsplit('.').next())
            .unwrap_or_default(),
    );
    let event_timestamp = header(headers, headers::EVENT_TIMESTAMP)
        .map(|text| parse_time(headers::EVENT_TIMESTAMP, text))
        .transpose()?;
    let received_at = match header(headers, headers::RECEIVED_AT) {
        Some(text) => parse_time(headers::RECEIVED_AT, text)?,
        None => published,
    };
    let object_id = header(headers, headers::OBJECT_ID).map(str::to_owned);
    for (name, value) in [
        (headers::EVENT_ID, Some(&event_id)),
        (headers::OBJECT_ID, object_id.as_ref()),
    ] {
        if value.is_some_and(|v| v.len() > MAX_ID_BYTES) {
            return Err(Undecodable(format!(
                "{name} is longer than {MAX_ID_BYTES} bytes"
            )));
        }
        if value.is_some_and(|v| v.contains('\0')) {
            return Err(Undecodable(format!("{name} contains a NUL character")));
        }
    }

    let parsed = postgres_json(body);
    let (body, state) = match parsed {
        Some((text, value)) => {
            let state = object_id
                .as_ref()
                .map(|_| object_state(endpoint, &value, &text));
            (Body::Json(text), state)
        }
        // JSON the receiver accepted, with a `\u0000` that `jsonb` cannot
        // hold: kept exactly as bytes (the projection is left as it is).
        None if serde_json::from_slice::<Value>(body).is_ok() => (Body::Raw(body.to_vec()), None),
        None if endpoint.request.require_json => {
            return Err(Undecodable(
                "body is not JSON, and the endpoint requires JSON".into(),
            ));
        }
        None => (Body::Raw(body.to_vec()), None),
    };
    Ok(Event {
        event_id,
        event_type,
        event_timestamp,
        object_id,
        received_at,
        headers: headers_json(headers).to_string(),
        body,
        state,
    })
}

fn parse_time(name: &str, text: &str) -> Result<DateTime<Utc>, Undecodable> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|err| Undecodable(format!("{name} {text:?} is not an RFC 3339 time: {err}")))
}

/// The body as JSON text Postgres' `jsonb` will take, with its parsed value;
/// `None` when it is not JSON or holds a NUL character (which `jsonb` rejects).
pub fn postgres_json(body: &[u8]) -> Option<(String, Value)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    if has_nul(&value) {
        return None;
    }
    let text = String::from_utf8(body.to_vec()).ok()?;
    Some((text, value))
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map
            .iter()
            .any(|(key, item)| key.contains('\0') || has_nul(item)),
        _ => false,
    }
}

/// The object an event describes: the JSON object holding the object id when
/// the id is read by a JSON pointer (`/data/object/id` → `/data/object`, the
/// invoice itself for Stripe), else the whole payload.
fn object_state(endpoint: &ValidatedEndpoint, payload: &Value, payload_text: &str) -> String {
    if let Some(FieldSource::JsonPointer(pointer)) = &endpoint.event.object_id
        && let Some((parent, _)) = pointer.rsplit_once('/')
        && !parent.is_empty()
        && let Some(object @ Value::Object(_)) = payload.pointer(parent)
    {
        return object.to_string();
    }
    payload_text.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(require_json: bool) -> ValidatedEndpoint {
        let text = format!(
            "apiVersion: hookline.io/v1alpha1\nkind: WebhookEndpoint\nmetadata: {{name: shop, namespace: test}}\n\
             spec:\n  provider: stripe\n  secretRef: {{name: s, key: k}}\n  request: {{requireJson: {require_json}}}\n"
        );
        hookline_api::validate(&hookline_api::parse_manifest(&text).expect("manifest"))
            .expect("valid")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, *value);
        }
        map
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_full_message_decodes_with_the_invoice_as_state() {
        let map = headers(&[
            (headers::MSG_ID, "evt_1"),
            (headers::EVENT_ID, "evt_1"),
            (headers::EVENT_TYPE, "invoice.paid"),
            (headers::EVENT_TIMESTAMP, "2026-01-01T10:00:00Z"),
            (headers::OBJECT_ID, "in_1"),
            (headers::RECEIVED_AT, "2026-01-01T10:00:01.5Z"),
        ]);
        let body = br#"{"id":"evt_1","data":{"object":{"id":"in_1","status":"paid"}}}"#;
        let event = decode(
            &endpoint(true),
            "hookline.test.shop.x",
            Some(&map),
            body,
            now(),
        )
        .expect("decodes");
        assert_eq!(event.event_id, "evt_1");
        assert_eq!(event.event_type, "invoice.paid");
        assert_eq!(event.object_id.as_deref(), Some("in_1"));
        assert_eq!(
            event.state.as_deref(),
            Some(r#"{"id":"in_1","status":"paid"}"#)
        );
        assert_eq!(event.received_at.timestamp_millis() % 1000, 500);
        assert!(matches!(event.body, Body::Json(_)));
    }

    #[test]
    fn missing_times_fall_back_and_order_by_received_at() {
        let map = headers(&[(headers::EVENT_ID, "e")]);
        let event = decode(
            &endpoint(true),
            "hookline.test.shop.thing_done",
            Some(&map),
            b"{}",
            now(),
        )
        .expect("decodes");
        assert_eq!(event.event_type, "thing_done");
        assert_eq!(event.event_timestamp, None);
        assert_eq!(event.order_key().0, now());
    }

    #[test]
    fn non_json_is_poison_only_when_json_is_required() {
        let map = headers(&[(headers::EVENT_ID, "e")]);
        assert!(decode(&endpoint(true), "s.t", Some(&map), b"not json", now()).is_err());
        let event =
            decode(&endpoint(false), "s.t", Some(&map), b"not json", now()).expect("raw ok");
        assert_eq!(event.body, Body::Raw(b"not json".to_vec()));
    }

    #[test]
    fn json_with_a_nul_character_is_kept_as_bytes_even_when_json_is_required() {
        let map = headers(&[(headers::EVENT_ID, "e")]);
        for require_json in [false, true] {
            let event = decode(
                &endpoint(require_json),
                "s.t",
                Some(&map),
                br#"{"a":"x\u0000"}"#,
                now(),
            )
            .expect("stored, not poison");
            assert_eq!(event.body, Body::Raw(br#"{"a":"x\u0000"}"#.to_vec()));
        }
    }

    #[test]
    fn a_bad_timestamp_or_no_id_is_poison() {
        let bad_time = headers(&[
            (headers::EVENT_ID, "e"),
            (headers::EVENT_TIMESTAMP, "yesterday"),
        ]);
        assert!(decode(&endpoint(true), "s.t", Some(&bad_time), b"{}", now()).is_err());
        assert!(decode(&endpoint(true), "s.t", None, b"{}", now()).is_err());
        let long_id = "x".repeat(MAX_ID_BYTES + 1);
        let long = headers(&[(headers::EVENT_ID, long_id.as_str())]);
        assert!(decode(&endpoint(true), "s.t", Some(&long), b"{}", now()).is_err());
    }
}

//! Turning a JetStream message (headers + raw body) into an [`Event`], without
//! I/O: everything that can be wrong with a message itself is found here,
//! before any transaction, so one bad message cannot fail a batch.
//!
//! A body is checked as JSON `jsonb` will take without being built: Postgres
//! parses it anyway, and the object's state for the projection is taken
//! from the stored `jsonb` by Postgres itself (see [`Projection`]).

use std::cell::Cell;

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use hookline_api::headers;
use hookline_api::json::{SKIP, Walk};
use hookline_api::validated::{FieldSource, ValidatedEndpoint};
use serde::de::DeserializeSeed;
use serde_json::Value;

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
    /// The object's state (JSON text) when it is not taken from the stored
    /// payload by Postgres ([`Projection::InRust`]); refetch replaces it.
    pub state: Option<String>,
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

/// The headers as a JSON object (text): one string per header, an array when
/// repeated; NUL characters replaced so Postgres always takes it. Written
/// directly: it is made for every event.
pub fn headers_json(headers: Option<&HeaderMap>) -> String {
    let mut out = Vec::with_capacity(1024);
    out.push(b'{');
    if let Some(headers) = headers {
        for (index, (name, values)) in headers.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_json_string(&mut out, name.as_ref());
            out.push(b':');
            match values.as_slice() {
                [value] => write_json_string(&mut out, value.as_str()),
                values => {
                    out.push(b'[');
                    for (index, value) in values.iter().enumerate() {
                        if index > 0 {
                            out.push(b',');
                        }
                        write_json_string(&mut out, value.as_str());
                    }
                    out.push(b']');
                }
            }
        }
    }
    out.push(b'}');
    // serde_json writes UTF-8 only.
    String::from_utf8(out).unwrap_or_default()
}

/// `text` as a JSON string, NUL replaced as by [`without_nul`]; copied only
/// when it holds one.
fn write_json_string(out: &mut Vec<u8>, text: &str) {
    // Writing to a Vec cannot fail.
    let _ = if text.contains('\0') {
        serde_json::to_writer(&mut *out, &without_nul(text))
    } else {
        serde_json::to_writer(&mut *out, text)
    };
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

    let (body, state) = match check_json(body) {
        JsonCheck::Jsonb(text) => {
            let state = match Projection::of(endpoint) {
                Projection::InRust if object_id.is_some() => serde_json::from_str(text)
                    .ok()
                    .map(|value: Value| object_state(endpoint, &value, text)),
                Projection::InRust | Projection::Path(_) => None,
            };
            (Body::Json(text.to_owned()), state)
        }
        // JSON the receiver accepted, with a `\u0000` that `jsonb` cannot
        // hold: kept exactly as bytes (the projection is left as it is).
        JsonCheck::WithNul => (Body::Raw(body.to_vec()), None),
        JsonCheck::NotJson if endpoint.request.require_json => {
            return Err(Undecodable(
                "body is not JSON, and the endpoint requires JSON".into(),
            ));
        }
        JsonCheck::NotJson => (Body::Raw(body.to_vec()), None),
    };
    Ok(Event {
        event_id,
        event_type,
        event_timestamp,
        object_id,
        received_at,
        headers: headers_json(headers),
        body,
        state,
    })
}

fn parse_time(name: &str, text: &str) -> Result<DateTime<Utc>, Undecodable> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|err| Undecodable(format!("{name} {text:?} is not an RFC 3339 time: {err}")))
}

/// The body as JSON text Postgres' `jsonb` will take; `None` when it is not
/// JSON or holds a NUL character (which `jsonb` rejects).
pub fn postgres_json(body: &[u8]) -> Option<String> {
    match check_json(body) {
        JsonCheck::Jsonb(text) => Some(text.to_owned()),
        JsonCheck::WithNul | JsonCheck::NotJson => None,
    }
}

/// What a body is to Postgres.
#[derive(Debug, PartialEq, Eq)]
pub enum JsonCheck<'a> {
    /// JSON `jsonb` takes, as text.
    Jsonb(&'a str),
    /// JSON with a NUL character in a string or key (`\u0000`), which
    /// `jsonb` refuses.
    WithNul,
    NotJson,
}

/// Checks `body` as serde_json parses JSON (every byte, strings' UTF-8 and
/// escapes, nesting at most 128 deep), without building it.
pub fn check_json(body: &[u8]) -> JsonCheck<'_> {
    // Not UTF-8 is not JSON: outside its strings JSON is ASCII, and inside
    // them serde_json refuses what is not UTF-8.
    let Ok(text) = std::str::from_utf8(body) else {
        return JsonCheck::NotJson;
    };
    // A string can hold NUL only by the escape `\u0000` (raw control
    // characters are not JSON), so the strings of a body without that text
    // need no second look.
    let nul = Cell::new(false);
    let parsed = if text.contains("\\u0000") {
        parses(
            body,
            Walk(|text: &str| {
                if text.contains('\0') {
                    nul.set(true);
                }
            }),
        )
    } else {
        parses(body, SKIP)
    };
    match (parsed, nul.get()) {
        (true, false) => JsonCheck::Jsonb(text),
        (true, true) => JsonCheck::WithNul,
        (false, _) => JsonCheck::NotJson,
    }
}

/// Whether `body` is one JSON value, walked by `walk`.
fn parses<F: Fn(&str) + Copy>(body: &[u8], walk: Walk<F>) -> bool {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    walk.deserialize(&mut deserializer).is_ok() && deserializer.end().is_ok()
}

/// How the projection's state is taken from an event's payload: the JSON
/// object holding the object id when the id is read by a JSON pointer
/// (`/data/object/id` → `/data/object`, the invoice itself for Stripe),
/// else the whole payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Projection {
    /// By Postgres from the stored `jsonb`: the value at these reference
    /// tokens (`#>`) when it is an object, else the whole payload.
    Path(Vec<String>),
    /// Here, from the parsed payload: the pointer has a token Postgres would
    /// read as an array index where RFC 6901 does not (`01`, `+1`, `-1`).
    InRust,
}

impl Projection {
    pub fn of(endpoint: &ValidatedEndpoint) -> Projection {
        let Some(FieldSource::JsonPointer(pointer)) = &endpoint.event.object_id else {
            return Projection::Path(Vec::new());
        };
        let parent = match pointer.rsplit_once('/') {
            Some((parent, _)) if parent.starts_with('/') => parent,
            Some(_) | None => return Projection::Path(Vec::new()),
        };
        let tokens: Vec<String> = parent
            .split('/')
            .skip(1)
            .map(|token| token.replace("~1", "/").replace("~0", "~"))
            .collect();
        if tokens.iter().any(|token| read_differently(token)) {
            Projection::InRust
        } else {
            Projection::Path(tokens)
        }
    }

    /// The reference tokens for Postgres; `None` when the state is taken here.
    pub fn path(&self) -> Option<&[String]> {
        match self {
            Projection::Path(tokens) => Some(tokens),
            Projection::InRust => None,
        }
    }

    /// [`Projection::path`] as a JSON array, as the write statement takes it
    /// per event ([`crate::store::Row::path`]).
    pub fn path_json(&self) -> Option<String> {
        self.path()
            .map(|tokens| serde_json::Value::from(tokens.to_vec()).to_string())
    }
}

/// Whether Postgres' `#>` would take `token` as an array index (as C's
/// `strtol` reads it) where RFC 6901 takes none or another one.
fn read_differently(token: &str) -> bool {
    let trimmed = token.trim_start();
    let digits = trimmed.strip_prefix(['+', '-']).unwrap_or(trimmed);
    let integer = !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit());
    let canonical = token == digits && (digits == "0" || !digits.starts_with('0'));
    integer && !canonical
}

/// [`Projection`] computed here, for [`Projection::InRust`].
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
        // Postgres takes the invoice from the stored payload.
        assert_eq!(event.state, None);
        assert_eq!(
            Projection::of(&endpoint(true)),
            Projection::Path(vec!["data".into(), "object".into()])
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
        assert_eq!(
            event.received_at,
            now(),
            "what orders an event without a time"
        );
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
    fn the_json_check_agrees_with_building_a_value() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let cases: &[&[u8]] = &[
            br#"{"a":[1,2.5,-3e4,true,null,"x\u00e9"],"b":{}}"#,
            br#"{"a":"x\u0000"}"#,
            br#"{"x\u0000":1}"#,
            br#"{"a":"\\u0000"}"#,
            br#"{"a":1,}"#,
            br#"{"a":1} trailing"#,
            b"{\"a\":\"\xff\"}",
            br#"{"a":"\ud800"}"#,
            br#"[1e400]"#,
            deep.as_bytes(),
            b"",
            b"not json",
        ];
        for &body in cases {
            let built = serde_json::from_slice::<Value>(body);
            let expected = match &built {
                Ok(value) if has_nul(value) => "nul",
                Ok(_) => "jsonb",
                Err(_) => "not json",
            };
            let got = match check_json(body) {
                JsonCheck::Jsonb(text) => {
                    assert_eq!(text.as_bytes(), body);
                    "jsonb"
                }
                JsonCheck::WithNul => "nul",
                JsonCheck::NotJson => "not json",
            };
            assert_eq!(got, expected, "{}", String::from_utf8_lossy(body));
        }
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

    #[test]
    fn headers_are_a_json_object_of_strings_and_arrays_without_nul() {
        let mut map = headers(&[(headers::EVENT_ID, "e\"1\\"), ("X-Nul", "a\0b")]);
        map.append("X-Twice", "one");
        map.append("X-Twice", "two");
        let text: Value = serde_json::from_str(&headers_json(Some(&map))).expect("JSON");
        assert_eq!(
            text,
            serde_json::json!({
                headers::EVENT_ID: "e\"1\\",
                "X-Nul": "a\u{FFFD}b",
                "X-Twice": ["one", "two"],
            })
        );
        assert_eq!(headers_json(None), "{}");
    }

    #[test]
    fn the_projection_is_left_to_postgres_unless_it_would_read_the_pointer_differently() {
        let with_pointer = |pointer: &str| {
            let text = format!(
                "apiVersion: hookline.io/v1alpha1\nkind: WebhookEndpoint\nmetadata: {{name: shop, namespace: test}}\n\
                 spec:\n  provider: stripe\n  secretRef: {{name: s, key: k}}\n  event: {{objectId: 'json:{pointer}'}}\n"
            );
            let endpoint =
                hookline_api::validate(&hookline_api::parse_manifest(&text).expect("manifest"))
                    .expect("valid");
            Projection::of(&endpoint)
        };
        assert_eq!(with_pointer("/id"), Projection::Path(vec![]));
        assert_eq!(
            with_pointer("/items/0/a~1b/id"),
            Projection::Path(vec!["items".into(), "0".into(), "a/b".into()])
        );
        for weird in [
            "/items/01/id",
            "/items/+1/id",
            "/items/-1/id",
            "/items/ 1/id",
        ] {
            assert_eq!(with_pointer(weird), Projection::InRust, "{weird}");
        }
        assert_eq!(
            with_pointer("/items/1x/id"),
            Projection::Path(vec!["items".into(), "1x".into()])
        );
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

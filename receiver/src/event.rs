//! What is stored with an event: its id, type, time and object id, read as the
//! endpoint says, and the message headers of the `hookline_api::headers` contract.

use std::cell::RefCell;
use std::sync::Arc;

use async_nats::header::{HeaderMap as NatsHeaders, HeaderName, HeaderValue};
use axum::http::HeaderMap;
use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use hookline_api::ValidatedEndpoint;
use hookline_api::headers;
use hookline_api::validated::{EventFields, FieldSource};
use serde_json::Value;
use sha2::{Digest, Sha256};

use hookline_api::headers::MAX_ID_BYTES;

use crate::Rejection;
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
fn checked(what: &str, value: String) -> Result<String, Rejection> {
    if value.len() > MAX_ID_BYTES {
        return Err(Rejection::InvalidEvent(format!(
            "the event {what} is longer than {MAX_ID_BYTES} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Rejection::InvalidEvent(format!(
            "the event {what} contains control characters"
        )));
    }
    Ok(value)
}

/// Where one attribute is read: a header, or a JSON pointer split into its
/// reference tokens once, at start, rather than on every request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    Header(String),
    Pointer(Vec<String>),
    /// A pointer that is not one (no leading `/`): it finds nothing.
    Nothing,
}

impl Source {
    fn new(source: &FieldSource) -> Source {
        match source {
            FieldSource::Header(name) => Source::Header(name.clone()),
            FieldSource::JsonPointer(pointer)
                if !pointer.is_empty() && !pointer.starts_with('/') =>
            {
                Source::Nothing
            }
            FieldSource::JsonPointer(pointer) => Source::Pointer(
                pointer
                    .split('/')
                    .skip(1)
                    .map(|token| token.replace("~1", "/").replace("~0", "~"))
                    .collect(),
            ),
        }
    }

    /// As [`FieldSource::read`]: strings as they are, numbers and booleans
    /// as text; empty values count as absent.
    fn read(&self, request: &HeaderMap, json: Option<&Value>) -> Option<String> {
        match self {
            Source::Header(name) => header(request, name).map(str::to_owned),
            Source::Pointer(tokens) => match pointer(json?, tokens)? {
                Value::String(text) => Some(text.clone()),
                Value::Number(number) => Some(number.to_string()),
                Value::Bool(flag) => Some(flag.to_string()),
                _ => None,
            },
            Source::Nothing => None,
        }
        .filter(|value| !value.is_empty())
    }
}

/// `serde_json::Value::pointer` over tokens split already.
fn pointer<'a>(value: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    tokens.iter().try_fold(value, |target, token| match target {
        Value::Object(map) => map.get(token),
        Value::Array(list) => array_index(token).and_then(|index| list.get(index)),
        _ => None,
    })
}

/// An array index as RFC 6901 writes it: decimal, no sign, no leading zero.
fn array_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

/// The endpoint's [`EventFields`], ready to read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fields {
    id: Option<Source>,
    event_type: Option<Source>,
    timestamp: Option<Source>,
    object_id: Option<Source>,
}

impl Fields {
    pub fn new(fields: &EventFields) -> Fields {
        Fields {
            id: fields.id.as_ref().map(Source::new),
            event_type: fields.event_type.as_ref().map(Source::new),
            timestamp: fields.timestamp.as_ref().map(Source::new),
            object_id: fields.object_id.as_ref().map(Source::new),
        }
    }
}

/// Reads the event's attributes; the id falls back to `Idempotency-Key`, then
/// to the SHA-256 of the body, so every event has a stable deduplication key.
pub fn extract(
    fields: &Fields,
    request: &HeaderMap,
    json: Option<&Value>,
    body: &[u8],
) -> Result<EventInfo, Rejection> {
    let read = |source: &Option<Source>| {
        source
            .as_ref()
            .and_then(|source| source.read(request, json))
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

/// Now, as the received-at header: to the microsecond, as Postgres keeps
/// it, so the consumer's latency figures can split a millisecond.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
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

/// How many request header names each thread remembers the `Hookline-Http-`
/// name of: far more than any provider sends, and a bound on what a sender of
/// made-up names can make it keep.
const FORWARDED_NAMES_KEPT: usize = 64;

/// Inputs of [`message_headers`] that do not change per request.
#[derive(Debug)]
pub struct HeaderContext {
    pub endpoint: String,
    pub provider: &'static str,
    /// Lower-case names never copied (credentials, hop-by-hop, the
    /// signature): shared by the endpoints whose list is the same, since
    /// every request compares each of its headers with each name.
    pub not_forwarded: Arc<[String]>,
    /// The values of [`headers::ENDPOINT`] and [`headers::PROVIDER`].
    constant: Vec<(&'static str, HeaderValue)>,
}

thread_local! {
    /// `Hookline-Http-<Name>` of the request header names this thread has
    /// seen, so the name is built once rather than on every request. One
    /// list per worker thread, so reading it takes no lock: every request
    /// reads it for each of its headers.
    static FORWARDED: RefCell<Vec<(axum::http::HeaderName, HeaderName)>> =
        const { RefCell::new(Vec::new()) };
}

/// The message header name a request header is kept under, and its length.
fn forwarded_name(name: &axum::http::HeaderName) -> Option<(HeaderName, usize)> {
    FORWARDED.with_borrow_mut(|known| {
        let length = headers::REQUEST_HEADER_PREFIX.len() + name.as_str().len();
        if let Some((_, forwarded)) = known.iter().find(|(seen, _)| seen == name) {
            return Some((forwarded.clone(), length));
        }
        let text = format!(
            "{}{}",
            headers::REQUEST_HEADER_PREFIX,
            title_case(name.as_str())
        );
        let forwarded = HeaderName::try_from(text).ok()?;
        if known.len() < FORWARDED_NAMES_KEPT {
            known.push((name.clone(), forwarded.clone()));
        }
        Some((forwarded, length))
    })
}

impl HeaderContext {
    /// The context of `endpoint`, with its own list of names not forwarded.
    pub fn new(endpoint: &ValidatedEndpoint) -> HeaderContext {
        HeaderContext::sharing(endpoint, not_forwarded(endpoint).into())
    }

    /// The context of `endpoint` with `not_forwarded`, its
    /// [`not_forwarded`] list kept once for every endpoint that has it.
    pub fn sharing(endpoint: &ValidatedEndpoint, not_forwarded: Arc<[String]>) -> HeaderContext {
        HeaderContext::with(endpoint.key(), endpoint.provider.as_str(), not_forwarded)
    }

    pub fn with(
        endpoint: String,
        provider: &'static str,
        not_forwarded: Arc<[String]>,
    ) -> HeaderContext {
        // Resource names and provider names are header-safe text.
        let constant = [
            (headers::ENDPOINT, endpoint.as_str()),
            (headers::PROVIDER, provider),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value.parse::<HeaderValue>().ok()?)))
        .collect();
        HeaderContext {
            endpoint,
            provider,
            not_forwarded,
            constant,
        }
    }
}

/// The lower-case names of `endpoint`'s request headers never copied into
/// a message: credentials, hop-by-hop headers, and its signature.
pub fn not_forwarded(endpoint: &ValidatedEndpoint) -> Vec<String> {
    let mut names: Vec<String> = headers::NOT_FORWARDED
        .iter()
        .map(|name| name.to_string())
        .collect();
    names.push(endpoint.verification.signature_header.clone());
    names
}

/// NATS frames a header block as `NATS/1.0\r\n`, the lines, and `\r\n`.
const HEADER_BLOCK_FRAMING: usize = "NATS/1.0\r\n".len() + "\r\n".len();

/// The most bytes the [`headers::DROPPED_HEADERS`] line can take.
const DROPPED_HEADERS_LINE: usize =
    headers::DROPPED_HEADERS.len() + ": ".len() + headers::MAX_DROPPED_HEADERS_BYTES + "\r\n".len();

/// The bytes one `name: value\r\n` line takes in the header block.
fn line_len(name: &str, value: &str) -> usize {
    name.len() + ": ".len() + value.len() + "\r\n".len()
}

/// The message's header block under construction, with its size on the wire.
struct Block {
    map: NatsHeaders,
    bytes: usize,
}

impl Block {
    /// Adds a header of the contract. Their values are bounded already (ids,
    /// types and object ids by [`MAX_ID_BYTES`], names by Kubernetes), so they
    /// always fit.
    fn put(&mut self, name: &'static str, value: &str) {
        if let Ok(parsed) = value.parse::<HeaderValue>() {
            self.bytes += line_len(name, value);
            self.map.insert(static_name(name), parsed);
        }
    }

    /// Appends `name: value` (`name_len` bytes of name) if the value is a
    /// valid NATS header value and the block stays within `room`; says
    /// whether it did.
    fn try_append(&mut self, name: HeaderName, name_len: usize, value: &str, room: usize) -> bool {
        let size = name_len + ": ".len() + value.len() + "\r\n".len();
        if self.bytes + size > room {
            return false;
        }
        match value.parse::<HeaderValue>() {
            Ok(value) => {
                self.map.append(name, value);
                self.bytes += size;
                true
            }
            Err(_) => false,
        }
    }
}

/// The value of [`headers::DROPPED_HEADERS`]: `names`, comma-separated, cut to
/// [`headers::MAX_DROPPED_HEADERS_BYTES`] with a last entry `...`.
fn dropped_list(names: &[&str]) -> String {
    const MORE: &str = "...";
    let limit = headers::MAX_DROPPED_HEADERS_BYTES;
    let mut list = String::new();
    for (index, name) in names.iter().enumerate() {
        let separator = usize::from(!list.is_empty());
        let last = index + 1 == names.len();
        // Keep room for ",..." unless this is the last name.
        let reserve = if last { 0 } else { 1 + MORE.len() };
        if list.len() + separator + name.len() + reserve > limit {
            if !list.is_empty() {
                list.push(',');
            }
            list.push_str(MORE);
            return list;
        }
        if separator == 1 {
            list.push(',');
        }
        list.push_str(name);
    }
    list
}

/// Every header of the contract, plus the request's own `Content-Type` and
/// headers under [`headers::REQUEST_HEADER_PREFIX`], the whole block within
/// [`headers::HEADER_ALLOWANCE`]: the request's headers are copied in request
/// order while they fit, and any left out (too large, or not text) are named
/// in [`headers::DROPPED_HEADERS`]. Values are header-safe already (checked in
/// [`extract`]; HTTP header values cannot hold CR or LF). `message_id` is the
/// `Nats-Msg-Id`: the stream's [`message_id`] of the event's id (the id
/// itself, or prefixed by the endpoint's name in a pool's shared stream).
///
/// [`message_id`]: hookline_api::validated::StreamSettings::message_id
pub fn message_headers(
    context: &HeaderContext,
    event: &EventInfo,
    message_id: &str,
    request: &HeaderMap,
    received_at: &str,
) -> NatsHeaders {
    let mut block = Block {
        map: NatsHeaders::new(),
        bytes: HEADER_BLOCK_FRAMING,
    };
    block.put(headers::MSG_ID, message_id);
    block.put(headers::EVENT_ID, &event.id);
    block.put(headers::ID_SOURCE, event.id_source);
    if let Some(event_type) = &event.event_type {
        block.put(headers::EVENT_TYPE, event_type);
    }
    if let Some(timestamp) = &event.timestamp {
        block.put(headers::EVENT_TIMESTAMP, timestamp);
    }
    if let Some(object_id) = &event.object_id {
        block.put(headers::OBJECT_ID, object_id);
    }
    block.put(headers::RECEIVED_AT, received_at);
    for (name, value) in &context.constant {
        block.bytes += line_len(name, value.as_str());
        block.map.insert(static_name(name), value.clone());
    }

    // What the request's own headers may take: the allowance less the room
    // the list of dropped names may need.
    let room = headers::HEADER_ALLOWANCE - DROPPED_HEADERS_LINE;
    let mut dropped: Vec<&str> = Vec::new();
    let mut drop_name = |name| {
        if !dropped.contains(&name) {
            dropped.push(name);
        }
    };
    if let Some(value) = request.get(axum::http::header::CONTENT_TYPE) {
        let copied = value.to_str().is_ok_and(|text| {
            let name = static_name(headers::CONTENT_TYPE);
            block.try_append(name, headers::CONTENT_TYPE.len(), text, room)
        });
        if !copied {
            drop_name("content-type");
        }
    }
    for (name, value) in request {
        if context
            .not_forwarded
            .iter()
            .any(|skip| skip == name.as_str())
        {
            continue;
        }
        let copied = value.to_str().is_ok_and(|text| {
            forwarded_name(name)
                .is_some_and(|(forwarded, length)| block.try_append(forwarded, length, text, room))
        });
        if !copied {
            drop_name(name.as_str());
        }
    }
    if !dropped.is_empty() {
        block.put(headers::DROPPED_HEADERS, &dropped_list(&dropped));
    }
    block.map
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
        let fields = Fields::new(&fields);
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
            extract(&Fields::new(&fields), &HeaderMap::new(), Some(&json), b""),
            Err(Rejection::InvalidEvent(_))
        ));
    }

    /// The header block as NATS sends it, measured independently of [`Block`].
    fn wire_len(map: &NatsHeaders) -> usize {
        let lines: usize = map
            .iter()
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |value| format!("{name}: {}\r\n", value.as_str()).len())
            })
            .sum();
        "NATS/1.0\r\n\r\n".len() + lines
    }

    fn context() -> HeaderContext {
        HeaderContext::with(
            format!("{}/{}", "n".repeat(63), "e".repeat(253)),
            "standardWebhooks",
            vec!["webhook-signature".into()].into(),
        )
    }

    /// Ids, type and object id at their longest.
    fn largest_event() -> EventInfo {
        EventInfo {
            id: "i".repeat(MAX_ID_BYTES),
            id_source: "idempotency-key",
            event_type: Some("t".repeat(MAX_ID_BYTES)),
            timestamp: Some("2023-03-29T18:00:27.877041743Z".into()),
            object_id: Some("o".repeat(MAX_ID_BYTES)),
        }
    }

    /// The longest `Nats-Msg-Id`: the longest id in a shared stream,
    /// prefixed by the longest endpoint name.
    fn largest_message_id() -> String {
        format!("{}:{}", "e".repeat(253), largest_event().id)
    }

    #[test]
    fn the_header_block_fits_the_allowance_whatever_the_request_sends() {
        let mut request = HeaderMap::new();
        request.insert("content-type", "application/json".parse().expect("value"));
        for n in 0..100 {
            let name = axum::http::HeaderName::from_bytes(format!("x-filler-{n:03}").as_bytes())
                .expect("name");
            request.insert(name, "v".repeat(300).parse().expect("value"));
        }
        let block = message_headers(
            &context(),
            &largest_event(),
            &largest_message_id(),
            &request,
            &now_rfc3339(),
        );
        assert!(
            wire_len(&block) <= headers::HEADER_ALLOWANCE,
            "{}",
            wire_len(&block)
        );
        assert_eq!(
            block.get(headers::CONTENT_TYPE).map(HeaderValue::as_str),
            Some("application/json"),
            "headers are copied in request order while they fit"
        );
        assert!(block.get("Hookline-Http-X-Filler-000").is_some());
        let dropped = block
            .get(headers::DROPPED_HEADERS)
            .map(HeaderValue::as_str)
            .expect("the dropped headers are named");
        assert!(dropped.ends_with("x-filler-099"), "{dropped}");
        assert!(!dropped.contains("x-filler-000"), "{dropped}");
    }

    #[test]
    fn one_header_larger_than_the_allowance_is_dropped_and_the_rest_kept() {
        let mut request = HeaderMap::new();
        request.insert("x-huge", "h".repeat(20_000).parse().expect("value"));
        request.insert("user-agent", "Stripe/1.0".parse().expect("value"));
        let block = message_headers(
            &context(),
            &largest_event(),
            &largest_message_id(),
            &request,
            &now_rfc3339(),
        );
        assert!(wire_len(&block) <= headers::HEADER_ALLOWANCE);
        assert_eq!(
            block.get(headers::DROPPED_HEADERS).map(HeaderValue::as_str),
            Some("x-huge")
        );
        assert_eq!(
            block
                .get("Hookline-Http-User-Agent")
                .map(HeaderValue::as_str),
            Some("Stripe/1.0")
        );
    }

    #[test]
    fn a_request_whose_headers_fit_has_no_dropped_marker() {
        let mut request = HeaderMap::new();
        request.insert("user-agent", "GitHub-Hookshot/1".parse().expect("value"));
        request.insert("webhook-signature", "v1,abc".parse().expect("value"));
        let block = message_headers(
            &context(),
            &largest_event(),
            &largest_message_id(),
            &request,
            &now_rfc3339(),
        );
        assert!(block.get(headers::DROPPED_HEADERS).is_none());
        assert!(block.get("Hookline-Http-Webhook-Signature").is_none());
    }

    #[test]
    fn a_long_list_of_dropped_names_is_cut_with_an_ellipsis() {
        let names: Vec<String> = (0..500).map(|n| format!("x-name-{n}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let list = dropped_list(&names);
        assert!(
            list.len() <= headers::MAX_DROPPED_HEADERS_BYTES,
            "{}",
            list.len()
        );
        assert!(list.starts_with("x-name-0,x-name-1,"));
        assert!(list.ends_with(",..."));
        assert_eq!(dropped_list(&["a", "b"]), "a,b");
    }

    #[test]
    fn fields_read_pointers_exactly_as_serde_json_does() {
        let json = serde_json::json!({
            "id": "evt_1", "n": 7, "flag": true, "empty": "",
            "a/b": {"c~d": "escaped"},
            "list": ["zero", "one", {"id": "two"}],
            "": {"": "blank keys"},
        });
        for pointer in [
            "/id",
            "/n",
            "/flag",
            "/empty",
            "/a~1b/c~0d",
            "/list/0",
            "/list/2/id",
            "/list/01",
            "/list/+1",
            "/list/9",
            "/missing",
            "/id/deeper",
            "//",
            "/",
            "id",
            "",
        ] {
            let expected = FieldSource::JsonPointer(pointer.into()).read(|_| None, Some(&json));
            let got = Source::new(&FieldSource::JsonPointer(pointer.into()))
                .read(&HeaderMap::new(), Some(&json));
            assert_eq!(got, expected, "{pointer}");
        }
    }

    #[test]
    fn forwarded_names_are_the_same_the_second_time_and_bounded_in_number() {
        let context = context();
        let mut request = HeaderMap::new();
        request.insert("x-github-delivery", "d-1".parse().expect("value"));
        for _ in 0..2 {
            let block = message_headers(
                &context,
                &largest_event(),
                &largest_message_id(),
                &request,
                &now_rfc3339(),
            );
            assert_eq!(
                block
                    .get("Hookline-Http-X-Github-Delivery")
                    .map(HeaderValue::as_str),
                Some("d-1")
            );
        }
        let mut many = HeaderMap::new();
        for n in 0..FORWARDED_NAMES_KEPT + 10 {
            let name = axum::http::HeaderName::from_bytes(format!("x-made-up-{n}").as_bytes())
                .expect("name");
            many.insert(name, "v".parse().expect("value"));
        }
        let block = message_headers(
            &context,
            &largest_event(),
            &largest_message_id(),
            &many,
            &now_rfc3339(),
        );
        let last = format!("Hookline-Http-X-Made-Up-{}", FORWARDED_NAMES_KEPT + 9);
        assert_eq!(block.get(last.as_str()).map(HeaderValue::as_str), Some("v"));
        assert_eq!(FORWARDED.with_borrow(Vec::len), FORWARDED_NAMES_KEPT);
    }

    #[test]
    fn header_names_are_title_cased() {
        assert_eq!(title_case("x-github-delivery"), "X-Github-Delivery");
        assert_eq!(title_case("user-agent"), "User-Agent");
    }
}

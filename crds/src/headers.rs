//! The message-header contract between the receiver and the consumer.
//!
//! Every message in an endpoint's stream carries these headers; the body is the
//! request body exactly as received. Times are RFC 3339 in UTC.

/// JetStream's deduplication header: the event id.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The event id (the deduplication key in Postgres).
pub const EVENT_ID: &str = "Hookline-Event-Id";
/// The event type exactly as the provider sent it.
pub const EVENT_TYPE: &str = "Hookline-Event-Type";
/// When the event happened, per the provider; absent when unknown (then the
/// consumer orders by received-at).
pub const EVENT_TIMESTAMP: &str = "Hookline-Event-Timestamp";
/// The id of the object the event is about; absent when unknown.
pub const OBJECT_ID: &str = "Hookline-Object-Id";
/// When the receiver accepted the request.
pub const RECEIVED_AT: &str = "Hookline-Received-At";
/// `namespace/name` of the endpoint.
pub const ENDPOINT: &str = "Hookline-Endpoint";
/// The provider preset (`stripe`, `github`, …).
pub const PROVIDER: &str = "Hookline-Provider";
/// The request's `Content-Type`.
pub const CONTENT_TYPE: &str = "Hookline-Content-Type";
/// Where the event id came from: `provider`, `idempotency-key` or `body-hash`.
pub const ID_SOURCE: &str = "Hookline-Id-Source";
/// Prefix of the original request headers kept with the event (signature and
/// credential headers excluded), e.g. `Hookline-Http-User-Agent`. Together with
/// [`CONTENT_TYPE`] they get what [`HEADER_ALLOWANCE`] leaves after the other
/// headers; what does not fit is left out and named in [`DROPPED_HEADERS`].
pub const REQUEST_HEADER_PREFIX: &str = "Hookline-Http-";
/// Present only when some request headers were not copied into the message
/// (they did not fit in [`HEADER_ALLOWANCE`], or their value is not text): the
/// lower-case names of those headers, comma-separated, in request order, each
/// once; cut after [`MAX_DROPPED_HEADERS_BYTES`] with a last entry `...`.
/// Deliberately not under [`REQUEST_HEADER_PREFIX`], where a request header
/// could take its name.
pub const DROPPED_HEADERS: &str = "Hookline-Dropped-Headers";
/// Longest value of [`DROPPED_HEADERS`].
pub const MAX_DROPPED_HEADERS_BYTES: usize = 1024;

/// Longest event id, type or object id a message may carry: the receiver refuses
/// longer ones (400) and the consumer dead-letters them, so both keep one limit.
pub const MAX_ID_BYTES: usize = 512;

/// Room a message needs beyond its body for the Hookline headers and the
/// forwarded request headers: the NATS server's `max_payload` must cover the
/// largest body plus this, or bodies near `request.maxBodyBytes` get 413. The
/// receiver keeps every message's header block (as NATS sends it) within this,
/// whatever the request's headers, by leaving out forwarded headers that do
/// not fit (see [`DROPPED_HEADERS`]).
pub const HEADER_ALLOWANCE: usize = 16 * 1024;

/// Request headers never copied into a message: credentials, hop-by-hop headers,
/// and the signature headers of every preset (plus GitHub's legacy SHA-1 and
/// Svix's aliases), whatever the endpoint's own signature header is.
pub const NOT_FORWARDED: &[&str] = &[
    "authorization",
    "cookie",
    "proxy-authorization",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "content-length",
    "stripe-signature",
    "x-hub-signature",
    "x-hub-signature-256",
    "x-shopify-hmac-sha256",
    "x-slack-signature",
    "webhook-signature",
    "svix-signature",
];

//! The fully-defaulted, checked form of an endpoint that every part of Hookline
//! works from, so that no part re-implements defaulting or re-checks input.

use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::ResourceRequirements;

use crate::naming;
pub use crate::spec::{
    DeletionPolicy, HmacAlgorithm, Provider, SecretKeyRef, SignatureEncoding, StreamRetention,
};

/// A `WebhookEndpoint` after [`crate::resolve()`]: every default applied, every
/// value parsed into a type that cannot be wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedEndpoint {
    pub namespace: String,
    pub name: String,
    pub provider: Provider,
    pub secret: SecretSource,
    pub verification: Verification,
    pub source_filter: SourceFilter,
    pub route: Route,
    pub request: RequestRules,
    pub event: EventFields,
    /// Which event types are stored (`spec.event.accept` and `ignore`).
    pub event_filter: EventFilter,
    /// A provider's check of the URL, answered and not stored (Slack's `url_verification`).
    pub url_challenge: Option<UrlChallenge>,
    pub stream: StreamSettings,
    pub consumer: ConsumerSettings,
    pub receiver: ReceiverSettings,
}

impl ValidatedEndpoint {
    /// `namespace/name`, the value of the endpoint header and of the `endpoint` column.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Moves the endpoint's stream and subjects to `cluster`'s own names
    /// (`HOOKLINE-<cluster>_…`, `hookline-<cluster>.…`), for clusters that
    /// share one NATS; `None` keeps the contract's names.
    pub fn in_cluster(mut self, cluster: Option<&str>) -> ValidatedEndpoint {
        if cluster.is_some() {
            self.stream.name = naming::stream_name_in(cluster, &self.namespace, &self.name);
            self.stream.subject_prefix =
                naming::subject_prefix_in(cluster, &self.namespace, &self.name);
        }
        self
    }

    /// Moves the endpoint's events into the one stream of `pool` (a
    /// `WebhookPool` with a shared `spec.stream`): stream
    /// `HOOKLINE_<ns>_POOL_<pool>` with `limits`, subjects
    /// `hookline.<ns>.POOL_<pool>.<name>.<type>`, drained by the pool's one
    /// durable `hookline-consumer` (unfiltered: every member's events), and
    /// message ids prefixed by the name. Takes the cluster as [`ValidatedEndpoint::in_cluster`] does.
    /// Only a `Buffer` is shared: an `Archive` keeps its own stream (the
    /// operator refuses it as a member of such a pool).
    pub fn in_shared_stream(
        mut self,
        cluster: Option<&str>,
        pool: &str,
        limits: StreamLimits,
    ) -> ValidatedEndpoint {
        let namespace = self.namespace.as_str();
        let settings = &mut self.stream;
        settings.name = naming::pool_stream_name_in(cluster, namespace, pool);
        let pool_prefix = naming::pool_subject_prefix_in(cluster, namespace, pool);
        settings.subject_prefix = naming::pool_member_subject_prefix(&pool_prefix, &self.name);
        settings.max_age = limits.max_age;
        settings.duplicate_window = limits.duplicate_window;
        settings.replicas = limits.replicas;
        settings.shared = Some(SharedStream {
            pool: pool.to_owned(),
            pool_subject_filter: format!("{pool_prefix}.>"),
            message_id_prefix: format!("{}:", self.name),
        });
        self.consumer.durable_name = naming::DURABLE_CONSUMER.to_owned();
        self
    }

    /// The endpoint's own stream, as it is without a shared stream: where a
    /// member's events wait that were stored before it joined one.
    pub fn own_stream(&self, cluster: Option<&str>) -> ValidatedEndpoint {
        let mut own = self.clone();
        own.stream.name = naming::stream_name_in(cluster, &self.namespace, &self.name);
        own.stream.subject_prefix = naming::subject_prefix_in(cluster, &self.namespace, &self.name);
        own.stream.shared = None;
        own.consumer.durable_name = naming::DURABLE_CONSUMER.to_owned();
        own
    }
}

/// Where the signing secret comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSource {
    pub name: String,
    pub key: String,
    /// Create the Secret when missing.
    pub generate: bool,
}

/// How a request's signature is found, computed and compared.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Verification {
    /// Lower-case header name carrying the signature(s).
    pub signature_header: String,
    pub format: SignatureFormat,
    pub algorithm: HmacAlgorithm,
    pub encoding: SignatureEncoding,
    /// Text before the encoded MAC (`sha256=`, `v0=`); empty for none.
    pub prefix: String,
    /// The signed bytes, in order.
    pub signed_payload: Vec<PayloadPart>,
    /// Where the signing time comes from; `None` disables the replay window.
    pub timestamp: Option<TimestampSource>,
    /// Lower-case header with the delivery id used by `{id}`.
    pub id_header: Option<String>,
    /// Largest allowed distance between the signing time and now, either way.
    pub tolerance: Duration,
    /// How each line of the secret file becomes key material.
    pub secret_format: SecretFormat,
}

/// How the signature header is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignatureFormat {
    /// One MAC: `<prefix><encoded mac>`.
    Single,
    /// Stripe: `t=<unix>,v1=<hex>[,v1=<hex>…]`; any `v1` may match.
    StripeKeyValue,
    /// Standard Webhooks: space-separated `v1,<base64>` (HMAC) or `v1a,<base64>` (ed25519).
    StandardWebhooks,
}

/// One piece of the signed payload template.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PayloadPart {
    Literal(String),
    Body,
    Timestamp,
    Id,
}

/// Where the signing time is read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TimestampSource {
    /// A header with unix seconds (lower-case name).
    Header(String),
    /// A key of a key=value signature header (Stripe's `t`).
    SignatureField(String),
}

/// How a line of the secret file is turned into a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecretFormat {
    /// The line's bytes are the HMAC key.
    Raw,
    /// Standard Webhooks: `whsec_<base64>` is an HMAC key (the decoded bytes),
    /// `whpk_<base64>` an ed25519 public key. A line without prefix is base64.
    StandardWebhooks,
}

/// Allowed client addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceFilter {
    /// Empty: any source.
    pub allowed: Vec<IpNet>,
    /// `X-Forwarded-For` entries appended by trusted proxies.
    pub trusted_proxy_hops: usize,
}

impl SourceFilter {
    /// Whether `ip` may call the endpoint.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        self.allowed.is_empty() || self.allowed.iter().any(|net| net.contains(&ip))
    }
}

/// Where providers reach the receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The one path the receiver answers on; always starts with `/`.
    pub path: String,
    /// `spec.ingress` was given: the operator makes an Ingress for the path.
    pub ingress: Option<IngressRoute>,
}

/// The Ingress in front of the receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressRoute {
    /// Empty: any host.
    pub host: Option<String>,
    pub class_name: Option<String>,
    pub tls_secret_name: Option<String>,
}

impl Route {
    /// The URL to paste into the provider's dashboard, when an Ingress host is known.
    pub fn url(&self) -> Option<String> {
        let ingress = self.ingress.as_ref()?;
        let scheme = if ingress.tls_secret_name.is_some() {
            "https"
        } else {
            "http"
        };
        ingress
            .host
            .as_ref()
            .map(|host| format!("{scheme}://{host}{}", self.path))
    }
}

/// Limits and checks on the request.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestRules {
    pub max_body_bytes: usize,
    pub require_json: bool,
    pub schema: Option<serde_json::Value>,
    /// For the endpoint as a whole; each receiver enforces
    /// [`RateLimit::share`] of it.
    pub rate_limit: Option<RateLimit>,
}

/// A token bucket's rate and size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second; finite and greater than 0.
    pub per_second: f64,
    /// Most tokens held; at least 1.
    pub burst: u32,
}

impl RateLimit {
    /// The part one of `replicas` receivers enforces, so that together they
    /// hold the endpoint's rate: the rate divided, the burst divided and
    /// rounded up (at least 1, or no request would ever pass). Fewer than
    /// one replica counts as one.
    pub fn share(self, replicas: u32) -> RateLimit {
        let replicas = replicas.max(1);
        RateLimit {
            per_second: self.per_second / f64::from(replicas),
            burst: self.burst.div_ceil(replicas).max(1),
        }
    }
}

/// Where each event attribute is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFields {
    pub id: Option<FieldSource>,
    pub event_type: Option<FieldSource>,
    pub timestamp: Option<FieldSource>,
    pub object_id: Option<FieldSource>,
}

/// Which event types are stored. An event with no type is matched as the
/// empty string, which only `*` matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Empty: every type.
    pub accept: Vec<TypePattern>,
    pub ignore: Vec<TypePattern>,
}

/// Why an event is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored<'a> {
    /// `accept` is given and no pattern of it matches.
    NotAccepted,
    /// This pattern of `ignore` matches.
    By(&'a TypePattern),
}

impl EventFilter {
    /// `None` when an event of `event_type` is stored; otherwise why not.
    /// `ignore` wins over `accept`.
    pub fn ignores(&self, event_type: Option<&str>) -> Option<Ignored<'_>> {
        let event_type = event_type.unwrap_or_default();
        if let Some(pattern) = self.ignore.iter().find(|p| p.matches(event_type)) {
            return Some(Ignored::By(pattern));
        }
        if !self.accept.is_empty() && !self.accept.iter().any(|p| p.matches(event_type)) {
            return Some(Ignored::NotAccepted);
        }
        None
    }
}

/// An event type, or a pattern of one where `*` matches any run of
/// characters (none included, dots and slashes too); everything else is
/// literal and case-sensitive, and the whole type must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypePattern(String);

impl TypePattern {
    pub fn new(pattern: impl Into<String>) -> TypePattern {
        TypePattern(pattern.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `text` matches. With `*` as the only wildcard, taking each
    /// literal piece at its first place after the previous one is enough:
    /// no backtracking, linear in the length.
    pub fn matches(&self, text: &str) -> bool {
        let mut pieces = self.0.split('*');
        let first = pieces.next().unwrap_or_default();
        let Some(mut rest) = text.strip_prefix(first) else {
            return false;
        };
        let mut pieces: Vec<&str> = pieces.collect();
        // No `*`: the pattern is the whole type.
        let Some(last) = pieces.pop() else {
            return rest.is_empty();
        };
        for piece in pieces {
            match rest.find(piece) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

/// One place in a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldSource {
    /// A request header (lower-case name).
    Header(String),
    /// An RFC 6901 JSON pointer into the body (`""` is the whole body).
    JsonPointer(String),
}

impl FieldSource {
    /// Reads the value as text: strings as they are, numbers in decimal; `header`
    /// looks a header up by lower-case name. Empty values count as absent.
    pub fn read<'a>(
        &self,
        header: impl Fn(&str) -> Option<&'a str>,
        body: Option<&serde_json::Value>,
    ) -> Option<String> {
        match self {
            FieldSource::Header(name) => header(name).map(str::to_owned),
            FieldSource::JsonPointer(pointer) => match body?.pointer(pointer)? {
                serde_json::Value::String(text) => Some(text.clone()),
                serde_json::Value::Number(number) => Some(number.to_string()),
                serde_json::Value::Bool(flag) => Some(flag.to_string()),
                _ => None,
            },
        }
        .filter(|value| !value.is_empty())
    }
}

/// A signed request a provider sends to check the endpoint's URL, answered at
/// once with a value of its own JSON body and never stored (Slack's
/// `url_verification`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlChallenge {
    /// JSON pointer of the field that marks a challenge (`/type`).
    pub marker_pointer: String,
    /// The value of that field that does (`url_verification`).
    pub marker_value: String,
    /// JSON pointer of the value the provider expects back (`/challenge`).
    pub value_pointer: String,
    /// The key of the answer, `{"<key>": "<value>"}` (`challenge`).
    pub answer_key: String,
}

impl UrlChallenge {
    /// The JSON pointers the receiver must read to answer.
    pub fn pointers(&self) -> [&str; 2] {
        [&self.marker_pointer, &self.value_pointer]
    }

    /// The answer when `body` is a challenge: `{"<key>": "<value>"}`, the value
    /// empty when the body carries none.
    pub fn answer(&self, body: &serde_json::Value) -> Option<serde_json::Value> {
        let marker = body.pointer(&self.marker_pointer)?.as_str()?;
        if marker != self.marker_value {
            return None;
        }
        let value = body
            .pointer(&self.value_pointer)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        let mut answer = serde_json::Map::new();
        answer.insert(self.answer_key.clone(), value.into());
        Some(answer.into())
    }
}

/// The JetStream stream and its naming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSettings {
    pub name: String,
    /// `hookline.<ns>.<name>` — every subject of the endpoint starts with it.
    pub subject_prefix: String,
    pub retention: StreamRetention,
    pub max_age: Duration,
    /// As the spec gives it; see [`StreamSettings::stream_max_bytes`] and
    /// [`StreamSettings::buffer_cap`].
    pub max_bytes: Option<i64>,
    pub replicas: usize,
    pub duplicate_window: Duration,
    pub deletion_policy: DeletionPolicy,
    /// Set when the endpoint's events go to its pool's one stream
    /// ([`ValidatedEndpoint::in_shared_stream`]); `None`: its own stream.
    pub shared: Option<SharedStream>,
}

/// A stream's age, dedupe window and replicas: what an endpoint's `spec.stream`
/// and a pool's shared `spec.stream` both set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    pub max_age: Duration,
    pub duplicate_window: Duration,
    pub replicas: usize,
}

impl Default for StreamLimits {
    fn default() -> StreamLimits {
        StreamLimits {
            max_age: crate::defaults::MAX_AGE,
            duplicate_window: crate::defaults::DUPLICATE_WINDOW,
            replicas: usize::from(crate::defaults::STREAM_REPLICAS),
        }
    }
}

/// A member's place in its pool's one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedStream {
    /// The pool whose stream it is.
    pub pool: String,
    /// `hookline.<ns>.POOL_<pool>.>`: the subjects of the whole pool stream.
    pub pool_subject_filter: String,
    /// `<name>:` before each `Nats-Msg-Id`: the stream's dedupe window is
    /// shared, and two endpoints may see the same event id.
    pub message_id_prefix: String,
}

impl StreamSettings {
    /// The `Nats-Msg-Id` of an event: its id, prefixed by the endpoint's name
    /// in a shared stream.
    pub fn message_id<'a>(&self, event_id: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.shared {
            None => std::borrow::Cow::Borrowed(event_id),
            Some(shared) => {
                std::borrow::Cow::Owned(format!("{}{event_id}", shared.message_id_prefix))
            }
        }
    }

    /// The stream's own `max_bytes` (`None`: unlimited) for a stream of
    /// `retention`. Only an `Archive` has one: JetStream reserves a stream's
    /// `max_bytes` on its store however little the stream holds, and a
    /// `Buffer`, nearly empty while the consumer keeps up, would reserve its
    /// whole cap for nothing (20 default buffers filled the NATS chart's
    /// 10 GiB store).
    pub fn stream_max_bytes(&self, retention: StreamRetention) -> Option<i64> {
        match retention {
            StreamRetention::Buffer => None,
            StreamRetention::Archive => self.max_bytes,
        }
    }

    /// The cap the receiver enforces on a stream of `retention` (`None` for an
    /// `Archive`, whose cap is the stream's own): the spec's `maxBytes`, else
    /// [`crate::defaults::BUFFER_MAX_BYTES`]. Past it new events get 503
    /// until the consumer drains the buffer.
    pub fn buffer_cap(&self, retention: StreamRetention) -> Option<u64> {
        match retention {
            StreamRetention::Buffer => Some(
                self.max_bytes
                    .unwrap_or(crate::defaults::BUFFER_MAX_BYTES)
                    .unsigned_abs(),
            ),
            StreamRetention::Archive => None,
        }
    }

    /// The stream's one subject filter: `hookline.<ns>.<name>.>`.
    pub fn subject_filter(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }

    /// The subject an event of `event_type` is published to.
    pub fn subject_for(&self, event_type: &str) -> String {
        // Made for every event: pushed, not formatted.
        let token = crate::naming::subject_token(event_type);
        let mut subject = String::with_capacity(self.subject_prefix.len() + 1 + token.len());
        subject.push_str(&self.subject_prefix);
        subject.push('.');
        subject.push_str(&token);
        subject
    }
}

/// The consumer's behaviour.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsumerSettings {
    pub durable_name: String,
    pub database_secret_ref: Option<SecretKeyRef>,
    /// Deliveries before the dead-letter table; enforced by the consumer.
    pub max_deliver: i64,
    /// Retry delays; the last one repeats. Never empty.
    pub backoff: Vec<Duration>,
    pub ack_wait: Duration,
    pub batch_size: usize,
    pub scaling: Scaling,
    pub refetch: Option<Refetch>,
}

impl ConsumerSettings {
    /// The delay before delivery number `delivered + 1`, given `delivered` so far (1-based).
    pub fn retry_delay(&self, delivered: u64) -> Duration {
        let index = usize::try_from(delivered.saturating_sub(1)).unwrap_or(usize::MAX);
        self.backoff
            .get(index)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }
}

/// KEDA scaling bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scaling {
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub lag_threshold: i64,
}

/// Placeholder for the object id in `consumer.refetch.urlTemplate`.
pub const OBJECT_ID_PLACEHOLDER: &str = "{objectId}";

/// Reading the object's state from the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refetch {
    /// Contains `{objectId}`.
    pub url_template: String,
    pub auth_secret_ref: Option<SecretKeyRef>,
    /// How long the provider's API may be away before an event is dead-lettered.
    pub retry_for: Duration,
}

impl Refetch {
    /// The URL for one object, with the id percent-encoded so it stays one path segment.
    pub fn url_for(&self, object_id: &str) -> String {
        let encoded: String = object_id
            .bytes()
            .map(|byte| match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (byte as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        self.url_template.replace(OBJECT_ID_PLACEHOLDER, &encoded)
    }
}

/// The receiver Deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceiverSettings {
    pub replicas: i32,
    pub resources: Option<ResourceRequirements>,
    pub image: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slack() -> UrlChallenge {
        crate::preset(Provider::Slack)
            .url_challenge
            .expect("Slack answers a URL challenge")
    }

    #[test]
    fn a_url_challenge_is_answered_with_its_value() {
        let body = serde_json::json!({"type": "url_verification", "challenge": "c-1"});
        assert_eq!(
            slack().answer(&body),
            Some(serde_json::json!({"challenge": "c-1"}))
        );
    }

    #[test]
    fn an_event_is_no_url_challenge() {
        let body = serde_json::json!({"type": "event_callback", "challenge": "c-1"});
        assert_eq!(slack().answer(&body), None);
    }
}

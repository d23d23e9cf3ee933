//! The `WebhookEndpoint` custom resource as users write it: every field optional
//! but `provider` and `secretRef`; defaults are applied in one place, [`crate::resolve()`].

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::defaults;

/// A Go-style duration as Kubernetes users write them: `300ms`, `30s`, `5m`, `720h`, `1h30m`.
pub(crate) const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A webhook endpoint: an HTTPS route that verifies a provider's signed requests,
/// stores every accepted event durably in JetStream and writes it to Postgres.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hookline.io",
    version = "v1alpha1",
    kind = "WebhookEndpoint",
    namespaced,
    shortname = "whe",
    doc = "A webhook endpoint: a route that verifies a provider's signed requests, stores every accepted event durably in JetStream and writes it to Postgres.",
    status = "WebhookEndpointStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","jsonPath":".status.pending"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEndpointSpec {
    /// Who sends the webhooks. A provider is a preset of the signature scheme and of
    /// where the event id, type, timestamp and object id are read; `generic` takes
    /// them all from `verification` and `event`.
    pub provider: Provider,

    /// The Secret holding the signing secret. Several secrets, one per line, are all
    /// tried, so a secret can be rotated without downtime.
    pub secret_ref: SecretRef,

    /// Overrides of the provider's signature scheme; required for `generic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationSpec>,

    /// Source CIDRs allowed to call the endpoint, as a second layer behind the
    /// signature. Empty means any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_source_ranges: Vec<String>,

    /// How many trusted proxies (load balancer, ingress controller) append to
    /// `X-Forwarded-For`; the client address is the entry that many from the right.
    /// 0 (the default) uses the TCP peer address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = defaults::MAX_TRUSTED_PROXY_HOPS))]
    pub trusted_proxy_hops: Option<u32>,

    /// The Ingress route providers POST to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,

    /// Limits and checks on the request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestSpec>,

    /// Where the event id, type, timestamp and object id are read from; each
    /// overrides the provider's preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventSpec>,

    /// The JetStream stream that stores accepted events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamSpec>,

    /// The consumer that writes events to Postgres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<ConsumerSpec>,

    /// The receiver Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver: Option<ReceiverSpec>,

    /// The `WebhookPool` of this namespace whose pods serve the endpoint
    /// instead of its own receiver and consumer. Absent: pods of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self != ''").message("pool must not be empty"))]
    pub pool: Option<String>,
}

impl WebhookEndpointSpec {
    /// A spec with only the required fields set; everything else takes its default.
    pub fn new(provider: Provider, secret_name: impl Into<String>) -> Self {
        WebhookEndpointSpec {
            provider,
            secret_ref: SecretRef {
                name: secret_name.into(),
                key: None,
                generate: None,
            },
            verification: None,
            allowed_source_ranges: Vec::new(),
            trusted_proxy_hops: None,
            ingress: None,
            request: None,
            event: None,
            stream: None,
            consumer: None,
            receiver: None,
            pool: None,
        }
    }
}

/// The webhook sender whose signature scheme and event layout is used.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Provider {
    Stripe,
    Github,
    Shopify,
    Slack,
    StandardWebhooks,
    Generic,
}

impl Provider {
    /// Every provider, in the order the CRD lists them.
    pub const ALL: [Provider; 6] = [
        Provider::Stripe,
        Provider::Github,
        Provider::Shopify,
        Provider::Slack,
        Provider::StandardWebhooks,
        Provider::Generic,
    ];

    /// The name as written in the resource (`standardWebhooks`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Stripe => "stripe",
            Provider::Github => "github",
            Provider::Shopify => "shopify",
            Provider::Slack => "slack",
            Provider::StandardWebhooks => "standardWebhooks",
            Provider::Generic => "generic",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reference to the Secret key that holds the signing secret(s).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret in the endpoint's namespace.
    #[x_kube(validation = Rule::new("self != ''").message("secretRef.name must not be empty"))]
    pub name: String,
    /// Key within the Secret. Default: `secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self != ''").message("secretRef.key must not be empty"))]
    pub key: Option<String>,
    /// Create the Secret with a strong random secret when it is missing (for senders
    /// whose secret we choose: GitHub, Standard Webhooks, generic). The Secret is
    /// owned by the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<bool>,
}

/// A reference to one key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret in the endpoint's namespace.
    #[x_kube(validation = Rule::new("self != ''").message("name must not be empty"))]
    pub name: String,
    /// Key within the Secret.
    #[x_kube(validation = Rule::new("self != ''").message("key must not be empty"))]
    pub key: String,
}

/// How the signature is computed and carried.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationSpec {
    /// Request header that carries the signature, e.g. `X-Signature`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_header: Option<String>,
    /// HMAC hash function. Default: `sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<HmacAlgorithm>,
    /// How the MAC is written in the header. Default: `hex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<SignatureEncoding>,
    /// Text before the encoded MAC in the header, e.g. `sha256=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// What is signed: a template of `{body}`, `{timestamp}` and `{id}`, e.g.
    /// `{timestamp}.{body}`. Default: `{body}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_payload: Option<String>,
    /// Request header with the signing time (unix seconds); required when the
    /// template uses `{timestamp}`, and enables the replay check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_header: Option<String>,
    /// Request header with the delivery id; required when the template uses `{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_header: Option<String>,
    /// How far the signing time may be from now, in the past or future. Default: `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub tolerance: Option<String>,
}

/// HMAC hash function.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    Sha256,
    Sha512,
    Sha1,
}

/// Text encoding of a MAC.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

/// The Ingress route.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Host name providers call, e.g. `hooks.example.com`. Empty: any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// URL path of the endpoint. Default: `/<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("ingress.path must start with '/'"))]
    pub path: Option<String>,
    /// IngressClass to use. Empty: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Secret with the TLS certificate for `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
}

/// Limits and checks on the request body.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestSpec {
    /// Largest accepted body; larger requests get 413. Default: 1048576 (1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = defaults::MAX_BODY_BYTES_LIMIT))]
    pub max_body_bytes: Option<u64>,
    /// Whether the body must be JSON (400 otherwise). Default: true. With false the
    /// body is stored as raw bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_json: Option<bool>,
    /// A JSON Schema the body must match (422 otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json")]
    pub schema: Option<serde_json::Value>,
    /// Most events the endpoint stores per second, over all its receivers;
    /// more get 429 with `Retry-After`. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
}

/// A token bucket: `burst` events at once, refilled at `requestsPerSecond`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Sustained events per second for the endpoint as a whole (each of the
    /// `receiver.replicas` receivers enforces its share); may be fractional.
    #[x_kube(validation = Rule::new("self > 0.0").message("rateLimit.requestsPerSecond must be greater than 0"))]
    #[schemars(range(max = defaults::RATE_LIMIT_MAX))]
    pub requests_per_second: f64,
    /// Most events taken at once (the bucket's size) before the sustained
    /// rate applies. Default: `requestsPerSecond` rounded up (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = defaults::RATE_LIMIT_BURST_MAX))]
    pub burst: Option<u32>,
}

/// Any JSON value, kept as written by the API server.
fn any_json(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Where each event attribute is read: `header:NAME` or `json:/json/pointer`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventSpec {
    /// The provider's event id, the deduplication key. When none is found the
    /// `Idempotency-Key` header is used, then a hash of the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = FIELD_SOURCE_PATTERN))]
    pub id: Option<String>,
    /// The event type, e.g. `invoice.paid`; the last token of the subject.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = FIELD_SOURCE_PATTERN))]
    pub event_type: Option<String>,
    /// When the event happened (unix seconds or milliseconds, or RFC 3339); it
    /// orders updates of the same object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = FIELD_SOURCE_PATTERN))]
    pub timestamp: Option<String>,
    /// The id of the object the event is about, e.g. the invoice id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = FIELD_SOURCE_PATTERN))]
    pub object_id: Option<String>,
    /// Event types to store; any other is answered 200 `ignored` and not
    /// stored. Exact types or patterns where `*` matches any run of
    /// characters (`invoice.*`, `*.deleted`). Empty: every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = defaults::MAX_EVENT_PATTERNS), inner(length(min = 1, max = defaults::MAX_EVENT_PATTERN_BYTES)))]
    pub accept: Vec<String>,
    /// Event types answered 200 `ignored` and not stored, even when
    /// `accept` takes them; patterns as in `accept`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = defaults::MAX_EVENT_PATTERNS), inner(length(min = 1, max = defaults::MAX_EVENT_PATTERN_BYTES)))]
    pub ignore: Vec<String>,
}

const FIELD_SOURCE_PATTERN: &str = r"^(header:[!#$%&'*+.^_`|~0-9A-Za-z-]+|json:(/.*)?)$";

/// The JetStream stream.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamSpec {
    /// `Buffer` (default): an event leaves the stream once the consumer has
    /// written it to Postgres, which is the record (JetStream work-queue
    /// retention). `Archive`: events stay for `maxAge` whether written or not
    /// (limits retention), a second copy of every event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<StreamRetention>,
    /// Safety net: an event is dropped after this long even if never written
    /// (`Buffer`), or kept this long (`Archive`). Default: `720h` (30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_age: Option<String>,
    /// Size cap of the stream in bytes; when full, new events get 503 and the
    /// provider retries (nothing stored is discarded early). `Buffer`: the
    /// receiver enforces it and nothing is reserved on NATS's volume; default
    /// 512 MiB (about 100,000 events of 5 KB waiting for Postgres). `Archive`:
    /// the stream's own limit, which JetStream reserves on its volume;
    /// default unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_bytes: Option<i64>,
    /// Stream replicas in the NATS cluster. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = defaults::STREAM_REPLICAS_MIN, max = defaults::STREAM_REPLICAS_MAX))]
    pub replicas: Option<u8>,
    /// Window in which a repeated event id is dropped by JetStream. Default: `2m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub duplicate_window: Option<String>,
    /// What happens to the stream when the resource is deleted. Default: `Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// Whether the stream is a buffer in front of Postgres or an archive of its own.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StreamRetention {
    Buffer,
    Archive,
}

/// What the finalizer does with the stream when the endpoint is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    Delete,
    Retain,
}

/// The consumer that writes events to Postgres.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerSpec {
    /// Secret key holding the Postgres URL. Required in a cluster (the
    /// operator reports `InvalidSpec` without it); the binaries run outside a
    /// cluster take `--database-url` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_secret_ref: Option<SecretKeyRef>,
    /// Deliveries before an event goes to `hookline.dead_letters`. Default: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = defaults::MAX_DELIVER_LIMIT))]
    pub max_deliver: Option<i64>,
    /// Delays between retries; the last one repeats. Default: 1s, 5s, 30s, 2m, 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(regex(pattern = DURATION_PATTERN)))]
    pub backoff: Option<Vec<String>>,
    /// How long a fetched event stays invisible to other consumers before it is
    /// redelivered. Default: `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub ack_wait: Option<String>,
    /// Events fetched and committed in one transaction. Default: 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = defaults::BATCH_SIZE_LIMIT))]
    pub batch_size: Option<u32>,
    /// KEDA scaling on consumer lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingSpec>,
    /// Read the object's current state from the provider's API instead of
    /// trusting the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refetch: Option<RefetchSpec>,
}

/// Consumer replicas, scaled by KEDA on the durable consumer's lag.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas").message("scaling.maxReplicas must be at least scaling.minReplicas"))]
pub struct ScalingSpec {
    /// Fewest replicas. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = defaults::REPLICAS_LIMIT))]
    pub min_replicas: Option<i32>,
    /// Most replicas. Default: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = defaults::REPLICAS_LIMIT))]
    pub max_replicas: Option<i32>,
    /// Pending events per replica that trigger a scale-up. Default: 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub lag_threshold: Option<i64>,
}

/// Where to read an object's current state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefetchSpec {
    /// URL with `{objectId}` replaced by the event's object id, e.g.
    /// `https://api.stripe.com/v1/invoices/{objectId}`.
    pub url_template: String,
    /// Secret key with the value of the `Authorization` header (e.g. `Bearer sk_…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<SecretKeyRef>,
    /// How long an event is retried while the provider's API is away (5xx,
    /// 408, 429, timeouts, no connection), counted from its arrival; these
    /// retries do not count toward `maxDeliver`. Past it the event is a dead
    /// letter. Default: `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub retry_for: Option<String>,
}

/// The receiver Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiverSpec {
    /// Receiver replicas. Default: 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = defaults::REPLICAS_LIMIT))]
    pub replicas: Option<i32>,
    /// CPU and memory of each receiver container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Receiver image; default: the operator's configured image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// What the operator observed; SREs watch `conditions`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEndpointStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The URL to paste into the provider's dashboard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The JetStream stream holding this endpoint's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Events in the stream (stored, whether consumed or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_messages: Option<i64>,
    /// Bytes stored in the stream; for a `Buffer`, what waits for Postgres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_bytes: Option<i64>,
    /// Past this many stored bytes new events get 503: a `Buffer`'s cap
    /// (enforced by the receiver) or an `Archive`'s `maxBytes`. Absent: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_limit_bytes: Option<i64>,
    /// Events accepted but not yet written to Postgres (the durable consumer's
    /// pending plus unacknowledged count; for a member of a pool's shared
    /// stream, the stream's message count on its subjects): the lag KEDA
    /// scales on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<i64>,
    /// When the newest event was stored (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_time: Option<String>,
    /// The `WebhookPool` whose pods serve the endpoint (absent: its own pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    /// `Ready`, `SecretResolved`, `StreamReady`, `ReceiverAvailable`,
    /// `ConsumerAvailable`, `ScalerReady`; a pool member has `Served`
    /// instead of the last three.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

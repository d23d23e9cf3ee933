//! Every default and limit of a `WebhookEndpoint`, written once: the CRD schema
//! attributes in [`crate::spec`] and the checks in [`crate::resolve()`] both use these.

use std::time::Duration;

/// Key of the signing secret within `secretRef.name`.
pub const SECRET_KEY: &str = "secret";
/// How far a signing time may be from now, either way.
pub const TOLERANCE: Duration = Duration::from_secs(300);
/// Largest accepted request body.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;
/// How long the stream keeps an event (30 days).
pub const MAX_AGE: Duration = Duration::from_secs(720 * 3600);
/// Size cap of a `Buffer` stream: room for about 100,000 events of 5 KB
/// waiting through a Postgres outage (over 2 hours at the seed's 1 M
/// events/day, half an hour at its peak); past it providers get 503 and retry.
/// The receiver enforces it; nothing is reserved on NATS's volume, so it
/// bounds what one endpoint's backlog can take from the others.
pub const BUFFER_MAX_BYTES: i64 = 512 * 1024 * 1024;
/// Window in which JetStream drops a repeated event id.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// JetStream replicas of an endpoint's stream.
pub const STREAM_REPLICAS: u8 = 1;
/// Deliveries before an event becomes a dead letter.
pub const MAX_DELIVER: i64 = 10;
/// Delays between retries of one event; the last one repeats.
pub const BACKOFF: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
];
/// How long a fetched event stays invisible to other consumers.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// How long an event is retried while the provider's API is away (refetch).
pub const REFETCH_RETRY_FOR: Duration = Duration::from_secs(24 * 3600);
/// Events fetched and committed in one transaction.
pub const BATCH_SIZE: u32 = 100;
/// Receiver pods.
pub const RECEIVER_REPLICAS: i32 = 2;
/// Fewest consumer pods KEDA keeps.
pub const MIN_REPLICAS: i32 = 1;
/// Most consumer pods KEDA starts.
pub const MAX_REPLICAS: i32 = 10;
/// Pending events per consumer pod that make KEDA add one.
pub const LAG_THRESHOLD: i64 = 1000;

/// Most `X-Forwarded-For` hops that may be trusted.
pub const MAX_TRUSTED_PROXY_HOPS: u32 = 16;
/// Largest `request.maxBodyBytes` (64 MiB).
pub const MAX_BODY_BYTES_LIMIT: u64 = 64 * 1024 * 1024;
/// Fewest and most stream replicas JetStream supports.
pub const STREAM_REPLICAS_MIN: u8 = 1;
pub const STREAM_REPLICAS_MAX: u8 = 5;
/// Largest `consumer.maxDeliver`.
pub const MAX_DELIVER_LIMIT: i64 = 1000;
/// Largest `consumer.batchSize`.
pub const BATCH_SIZE_LIMIT: u32 = 10_000;
/// Largest `request.rateLimit.requestsPerSecond`: far past what one
/// endpoint's receivers can store, so only typos meet it.
pub const RATE_LIMIT_MAX: f64 = 1_000_000.0;
/// Largest `request.rateLimit.burst`.
pub const RATE_LIMIT_BURST_MAX: u32 = 1_000_000;
/// Most patterns in `event.accept` and in `event.ignore`.
pub const MAX_EVENT_PATTERNS: usize = 256;
/// Longest pattern: the longest event type the receiver takes.
pub const MAX_EVENT_PATTERN_BYTES: usize = 512;
/// Largest replica count of the receiver and the consumer.
pub const REPLICAS_LIMIT: i32 = 1000;
/// Shortest `consumer.ackWait`: a batch must be able to commit before it is redelivered.
pub const MIN_ACK_WAIT: Duration = Duration::from_secs(1);

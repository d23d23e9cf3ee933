//! Prometheus metrics: requests by outcome and provider, ignored events by
//! type, request and publish
//! latency, body sizes, and the state of the secrets, of JetStream and of the
//! endpoint's buffer.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    provider: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IgnoredLabels {
    provider: &'static str,
    event_type: String,
}

/// Distinct event types given a label of their own in
/// `hookline_receiver_ignored_events_total`; later ones count as
/// [`OTHER_TYPES`]. Types are the provider's strings, so without a cap a
/// sender could grow the metrics without bound.
const MAX_IGNORED_TYPE_LABELS: usize = 100;
/// The label of ignored types past [`MAX_IGNORED_TYPE_LABELS`].
const OTHER_TYPES: &str = "_other";
/// The label of ignored events without a type.
const NO_TYPE: &str = "_none";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: &'static str,
}

/// The receiver's metrics, registered once and shared by every request.
pub struct Metrics {
    registry: Registry,
    provider: &'static str,
    requests: Family<OutcomeLabels, Counter>,
    ignored: Family<IgnoredLabels, Counter>,
    /// The types that have a label of their own in `ignored`.
    ignored_types: Mutex<HashSet<String>>,
    /// The counters of the two answers nearly every request gets, and this
    /// provider's duration histogram, looked up once: a family's lookup
    /// hashes the labels and takes its lock on every request.
    stored: Counter,
    duplicate: Counter,
    request_duration: Histogram,
    publish_duration: Histogram,
    body_size: Histogram,
    pub secrets: Gauge,
    pub secret_reloads: Counter,
    pub jetstream_ready: Gauge,
    buffer_bytes: Gauge,
    buffer_limit_bytes: Gauge,
}

impl Metrics {
    pub fn new(provider: &'static str) -> Metrics {
        let mut registry = Registry::with_prefix("hookline_receiver");
        let requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "requests",
            "Webhook requests by outcome (stored, duplicate, challenge, or the refusal)",
            requests.clone(),
        );
        let ignored = Family::<IgnoredLabels, Counter>::default();
        registry.register(
            "ignored_events",
            "Events answered 200 and not stored because spec.event.accept or ignore leaves their type out, by type (the first 100 types, then _other)",
            ignored.clone(),
        );
        let request_duration = Family::<ProviderLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 15))
        });
        registry.register(
            "request_duration_seconds",
            "Time from request to answer",
            request_duration.clone(),
        );
        let outcome_counter = |outcome| {
            requests
                .get_or_create(&OutcomeLabels { provider, outcome })
                .clone()
        };
        let (stored, duplicate) = (outcome_counter("stored"), outcome_counter("duplicate"));
        let request_duration = request_duration
            .get_or_create(&ProviderLabels { provider })
            .clone();
        let publish_duration = Histogram::new(exponential_buckets(0.0002, 2.0, 16));
        registry.register(
            "publish_duration_seconds",
            "Time from publish to JetStream's acknowledgement",
            publish_duration.clone(),
        );
        let body_size = Histogram::new(exponential_buckets(256.0, 4.0, 10));
        registry.register(
            "body_size_bytes",
            "Size of accepted request bodies",
            body_size.clone(),
        );
        let secrets = Gauge::default();
        registry.register("secrets", "Usable signing secrets loaded", secrets.clone());
        let secret_reloads = Counter::default();
        registry.register(
            "secret_reloads",
            "Times the secret file changed and was re-read",
            secret_reloads.clone(),
        );
        let jetstream_ready = Gauge::default();
        registry.register(
            "jetstream_ready",
            "1 when NATS is connected and the endpoint's stream answered",
            jetstream_ready.clone(),
        );
        let buffer_bytes = Gauge::default();
        registry.register(
            "buffer_bytes",
            "Bytes in the endpoint's stream at the last readiness probe",
            buffer_bytes.clone(),
        );
        let buffer_limit_bytes = Gauge::default();
        registry.register(
            "buffer_limit_bytes",
            "The buffer's cap (spec.stream.maxBytes): at it the receiver answers 503; 0 for an archive, which the receiver does not cap",
            buffer_limit_bytes.clone(),
        );
        Metrics {
            registry,
            provider,
            requests,
            ignored,
            ignored_types: Mutex::default(),
            stored,
            duplicate,
            request_duration,
            publish_duration,
            body_size,
            secrets,
            secret_reloads,
            jetstream_ready,
            buffer_bytes,
            buffer_limit_bytes,
        }
    }

    /// The stream's size and the buffer's cap (`None`: not capped here).
    pub fn buffer(&self, bytes: u64, cap: Option<u64>) {
        self.buffer_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.buffer_limit_bytes
            .set(cap.map_or(0, |cap| i64::try_from(cap).unwrap_or(i64::MAX)));
    }

    /// Counts one answered request.
    pub fn request(&self, outcome: &'static str, elapsed: Duration) {
        match outcome {
            "stored" => self.stored.inc(),
            "duplicate" => self.duplicate.inc(),
            outcome => self
                .requests
                .get_or_create(&OutcomeLabels {
                    provider: self.provider,
                    outcome,
                })
                .inc(),
        };
        self.request_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts one ignored event by its type, within the label cap.
    pub fn ignored(&self, event_type: Option<&str>) {
        let label = match event_type {
            None => NO_TYPE.to_owned(),
            Some(event_type) => {
                let mut types = self
                    .ignored_types
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if types.contains(event_type) {
                    event_type.to_owned()
                } else if types.len() < MAX_IGNORED_TYPE_LABELS {
                    types.insert(event_type.to_owned());
                    event_type.to_owned()
                } else {
                    OTHER_TYPES.to_owned()
                }
            }
        };
        self.ignored
            .get_or_create(&IgnoredLabels {
                provider: self.provider,
                event_type: label,
            })
            .inc();
    }

    pub fn publish(&self, elapsed: Duration) {
        self.publish_duration.observe(elapsed.as_secs_f64());
    }

    pub fn body(&self, bytes: usize) {
        self.body_size.observe(bytes as f64);
    }

    /// Every metric, for `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(metrics: &Metrics) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, metrics.registry()).expect("encode");
        text
    }

    #[test]
    fn ignored_types_past_the_cap_share_one_label() {
        let metrics = Metrics::new("stripe");
        for n in 0..MAX_IGNORED_TYPE_LABELS {
            metrics.ignored(Some(&format!("type.{n}")));
        }
        metrics.ignored(Some("type.0"));
        metrics.ignored(Some("one.too.many"));
        metrics.ignored(Some("and.another"));
        metrics.ignored(None);
        let text = exposition(&metrics);
        assert!(text.contains(r#"event_type="type.0"} 2"#), "{text}");
        assert!(text.contains(r#"event_type="_other"} 2"#), "{text}");
        assert!(text.contains(r#"event_type="_none"} 1"#), "{text}");
        assert!(!text.contains("one.too.many"), "{text}");
    }
}

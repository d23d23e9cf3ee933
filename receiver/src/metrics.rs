//! Prometheus metrics: requests by outcome and provider, ignored events by
//! type, request and publish latency, body sizes, and the state of the
//! secrets, of JetStream and of the endpoint's buffer. A pool's series carry
//! the endpoint (`endpoint="ns/name"`, bounded by the pool's size); one
//! endpoint's carry no such label, exactly as before pools.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::Rejection;

/// The `endpoint` label (`namespace/name`) of a pool's series; none at all
/// with `--endpoint`, so one endpoint's series are exactly what they were
/// before pools (the dashboards and alerts sum over it either way).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct EndpointLabel(Option<Arc<str>>);

impl EndpointLabel {
    /// The label of a pool's endpoint `key`.
    pub fn pool(key: &str) -> EndpointLabel {
        EndpointLabel(Some(Arc::from(key)))
    }
}

impl EncodeLabelSet for EndpointLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        match &self.0 {
            Some(key) => ("endpoint", key.as_ref()).encode(encoder.encode_label()),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    provider: &'static str,
    outcome: &'static str,
    #[prometheus(flatten)]
    endpoint: EndpointLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IgnoredLabels {
    provider: &'static str,
    event_type: String,
    #[prometheus(flatten)]
    endpoint: EndpointLabel,
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
    #[prometheus(flatten)]
    endpoint: EndpointLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// The upper bounds of `request_duration_seconds`' buckets.
static REQUEST_SECONDS: LazyLock<Vec<f64>> =
    LazyLock::new(|| exponential_buckets(0.0005, 2.0, 15).collect());
/// The upper bounds of `publish_duration_seconds`' buckets.
static PUBLISH_SECONDS: LazyLock<Vec<f64>> =
    LazyLock::new(|| exponential_buckets(0.0002, 2.0, 16).collect());
/// The upper bounds of `body_size_bytes`' buckets.
static BODY_BYTES: LazyLock<Vec<f64>> =
    LazyLock::new(|| exponential_buckets(256.0, 4.0, 10).collect());

/// Most buckets a [`Histogram`] has, `+Inf` included.
const MAX_BUCKETS: usize = 17;

/// A histogram whose bucket bounds are shared by every series and whose
/// counts are atomics in one allocation: an observation adds to one bucket
/// and to the sum, and takes no lock. prometheus-client's own histogram takes
/// a lock and scans a list of bounds and counts of its own; in a pool of a
/// thousand endpoints a request read about five cold cache lines of each of
/// its endpoint's three histograms.
#[derive(Clone, Debug)]
struct Histogram(Arc<HistogramCounts>);

#[derive(Debug)]
struct HistogramCounts {
    /// Upper bounds, `+Inf` left out (the bucket past the last).
    bounds: &'static [f64],
    /// The sum's `f64` bits.
    sum: AtomicU64,
    buckets: [AtomicU64; MAX_BUCKETS],
}

impl Histogram {
    /// Bounds past `MAX_BUCKETS - 1` would share the `+Inf` bucket.
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram(Arc::new(HistogramCounts {
            bounds: &bounds[..bounds.len().min(MAX_BUCKETS - 1)],
            sum: AtomicU64::new(0f64.to_bits()),
            buckets: Default::default(),
        }))
    }

    fn observe(&self, value: f64) {
        let counts = &*self.0;
        // The first bucket whose bound is at least `value` (`le`).
        let bucket = counts.bounds.partition_point(|bound| *bound < value);
        counts.buckets[bucket.min(MAX_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        let _ = counts
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    /// The count is the buckets' total, so a scrape during an observation
    /// still sees `_count` equal to the `+Inf` bucket.
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = &*self.0;
        let buckets: Vec<(f64, u64)> = counts
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&counts.buckets)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, count)| count).sum();
        let sum = f64::from_bits(counts.sum.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Every family, shared by the registry and each endpoint's [`EndpointMetrics`].
struct Families {
    requests: Family<OutcomeLabels, Counter>,
    ignored: Family<IgnoredLabels, Counter>,
    request_duration: Family<ProviderLabels, Histogram>,
    publish_duration: Family<EndpointLabel, Histogram>,
    body_size: Family<EndpointLabel, Histogram>,
    secrets: Family<EndpointLabel, Gauge>,
    secret_reloads: Family<EndpointLabel, Counter>,
    jetstream_ready: Family<EndpointLabel, Gauge>,
    buffer_bytes: Family<EndpointLabel, Gauge>,
    buffer_limit_bytes: Family<EndpointLabel, Gauge>,
}

/// The receiver's metrics, registered once and shared by every request.
pub struct Metrics {
    registry: Registry,
    families: Arc<Families>,
    /// `hookline_receiver_endpoints{state}`: a pool's endpoints served and
    /// manifests skipped (not registered with `--endpoint`).
    endpoints: Option<Family<StateLabels, Gauge>>,
}

impl Metrics {
    /// The metrics of one endpoint (`--endpoint`), its series made at once
    /// as they always were.
    pub fn new(provider: &'static str) -> (Metrics, EndpointMetrics) {
        let metrics = Metrics::registered(false);
        let endpoint = metrics.endpoint(provider, EndpointLabel::default());
        endpoint.stored();
        endpoint.duplicate();
        endpoint.request_duration();
        endpoint.publish_duration();
        endpoint.body_size();
        endpoint.secrets().set(0);
        endpoint.secret_reloads();
        endpoint.jetstream_ready().set(0);
        endpoint.buffer(0, None);
        (metrics, endpoint)
    }

    /// The metrics of a pool: series appear per endpoint as they are used.
    pub fn for_pool() -> Metrics {
        Metrics::registered(true)
    }

    fn registered(pool: bool) -> Metrics {
        let mut registry = Registry::with_prefix("hookline_receiver");
        let families = Families {
            requests: Family::default(),
            ignored: Family::default(),
            request_duration: Family::new_with_constructor(|| Histogram::new(&REQUEST_SECONDS)),
            publish_duration: Family::new_with_constructor(|| Histogram::new(&PUBLISH_SECONDS)),
            body_size: Family::new_with_constructor(|| Histogram::new(&BODY_BYTES)),
            secrets: Family::default(),
            secret_reloads: Family::default(),
            jetstream_ready: Family::default(),
            buffer_bytes: Family::default(),
            buffer_limit_bytes: Family::default(),
        };
        registry.register(
            "requests",
            "Webhook requests by outcome (stored, duplicate, challenge, or the refusal)",
            families.requests.clone(),
        );
        registry.register(
            "ignored_events",
            "Events answered 200 and not stored because spec.event.accept or ignore leaves their type out, by type (the first 100 types, then _other)",
            families.ignored.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to answer",
            families.request_duration.clone(),
        );
        registry.register(
            "publish_duration_seconds",
            "Time from publish to JetStream's acknowledgement",
            families.publish_duration.clone(),
        );
        registry.register(
            "body_size_bytes",
            "Size of accepted request bodies",
            families.body_size.clone(),
        );
        registry.register(
            "secrets",
            "Usable signing secrets loaded",
            families.secrets.clone(),
        );
        registry.register(
            "secret_reloads",
            "Times the secret file changed and was re-read",
            families.secret_reloads.clone(),
        );
        registry.register(
            "jetstream_ready",
            "1 when NATS is connected and the endpoint's stream answered",
            families.jetstream_ready.clone(),
        );
        registry.register(
            "buffer_bytes",
            "Bytes in the endpoint's stream at the last readiness probe",
            families.buffer_bytes.clone(),
        );
        registry.register(
            "buffer_limit_bytes",
            "The buffer's cap (spec.stream.maxBytes): at it the receiver answers 503; 0 for an archive, which the receiver does not cap",
            families.buffer_limit_bytes.clone(),
        );
        let endpoints = pool.then(|| {
            let endpoints = Family::<StateLabels, Gauge>::default();
            registry.register(
                "endpoints",
                "A pool's endpoints: served (loaded from --endpoint-dir), skipped (manifests not served)",
                endpoints.clone(),
            );
            endpoints
        });
        Metrics {
            registry,
            families: Arc::new(families),
            endpoints,
        }
    }

    /// The handle one endpoint counts its requests with.
    pub fn endpoint(&self, provider: &'static str, endpoint: EndpointLabel) -> EndpointMetrics {
        EndpointMetrics {
            families: self.families.clone(),
            provider,
            endpoint,
            stored: OnceLock::new(),
            duplicate: OnceLock::new(),
            request_duration: OnceLock::new(),
            publish_duration: OnceLock::new(),
            body_size: OnceLock::new(),
            ignored_types: Mutex::default(),
        }
    }

    /// A pool's endpoints served and manifests skipped.
    pub fn pool_size(&self, served: usize, skipped: usize) {
        if let Some(endpoints) = &self.endpoints {
            for (state, count) in [("served", served), ("skipped", skipped)] {
                endpoints
                    .get_or_create(&StateLabels { state })
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
    }

    /// Every metric, for `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// One endpoint's series. The ones every stored event touches are looked up
/// once (a family's lookup hashes the labels and takes its lock); a pool's
/// are made at the endpoint's first use, so 1,000 idle endpoints add no
/// histograms.
pub struct EndpointMetrics {
    families: Arc<Families>,
    provider: &'static str,
    endpoint: EndpointLabel,
    stored: OnceLock<Counter>,
    duplicate: OnceLock<Counter>,
    request_duration: OnceLock<Histogram>,
    publish_duration: OnceLock<Histogram>,
    body_size: OnceLock<Histogram>,
    /// The types that have a label of their own in `ignored`.
    ignored_types: Mutex<HashSet<String>>,
}

impl EndpointMetrics {
    fn outcome(&self, outcome: &'static str) -> OutcomeLabels {
        OutcomeLabels {
            provider: self.provider,
            outcome,
            endpoint: self.endpoint.clone(),
        }
    }

    fn stored(&self) -> &Counter {
        self.stored.get_or_init(|| {
            self.families
                .requests
                .get_or_create(&self.outcome("stored"))
                .clone()
        })
    }

    fn duplicate(&self) -> &Counter {
        self.duplicate.get_or_init(|| {
            self.families
                .requests
                .get_or_create(&self.outcome("duplicate"))
                .clone()
        })
    }

    fn provider_labels(&self) -> ProviderLabels {
        ProviderLabels {
            provider: self.provider,
            endpoint: self.endpoint.clone(),
        }
    }

    fn request_duration(&self) -> &Histogram {
        self.request_duration.get_or_init(|| {
            self.families
                .request_duration
                .get_or_create(&self.provider_labels())
                .clone()
        })
    }

    fn publish_duration(&self) -> &Histogram {
        self.publish_duration.get_or_init(|| {
            self.families
                .publish_duration
                .get_or_create(&self.endpoint)
                .clone()
        })
    }

    fn body_size(&self) -> &Histogram {
        self.body_size.get_or_init(|| {
            self.families
                .body_size
                .get_or_create(&self.endpoint)
                .clone()
        })
    }

    /// The usable secrets loaded.
    pub fn secrets(&self) -> Gauge {
        self.families.secrets.get_or_create(&self.endpoint).clone()
    }

    /// Times the secret file changed and was re-read.
    pub fn secret_reloads(&self) -> Counter {
        self.families
            .secret_reloads
            .get_or_create(&self.endpoint)
            .clone()
    }

    /// Whether the stream answered (and NATS is connected).
    pub fn jetstream_ready(&self) -> Gauge {
        self.families
            .jetstream_ready
            .get_or_create(&self.endpoint)
            .clone()
    }

    /// The stream's size and the buffer's cap (`None`: not capped here).
    pub fn buffer(&self, bytes: u64, cap: Option<u64>) {
        self.families
            .buffer_bytes
            .get_or_create(&self.endpoint)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.families
            .buffer_limit_bytes
            .get_or_create(&self.endpoint)
            .set(cap.map_or(0, |cap| i64::try_from(cap).unwrap_or(i64::MAX)));
    }

    /// Counts one answered request.
    pub fn request(&self, outcome: &'static str, elapsed: Duration) {
        match outcome {
            "stored" => self.stored().inc(),
            "duplicate" => self.duplicate().inc(),
            outcome => self
                .families
                .requests
                .get_or_create(&self.outcome(outcome))
                .inc(),
        };
        self.request_duration().observe(elapsed.as_secs_f64());
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
        self.families
            .ignored
            .get_or_create(&IgnoredLabels {
                provider: self.provider,
                event_type: label,
                endpoint: self.endpoint.clone(),
            })
            .inc();
    }

    pub fn publish(&self, elapsed: Duration) {
        self.publish_duration().observe(elapsed.as_secs_f64());
    }

    pub fn body(&self, bytes: usize) {
        self.body_size().observe(bytes as f64);
    }

    /// Removes every series of this endpoint: a pool's endpoint that is no
    /// longer served (or now has another provider) leaves nothing behind.
    pub fn forget(&self) {
        let families = &self.families;
        for outcome in ["stored", "duplicate", "challenge", "ignored"]
            .into_iter()
            .chain(Rejection::OUTCOMES)
        {
            families.requests.remove(&self.outcome(outcome));
        }
        let types = self
            .ignored_types
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for event_type in types
            .iter()
            .map(String::as_str)
            .chain([OTHER_TYPES, NO_TYPE])
        {
            families.ignored.remove(&IgnoredLabels {
                provider: self.provider,
                event_type: event_type.to_owned(),
                endpoint: self.endpoint.clone(),
            });
        }
        families.request_duration.remove(&self.provider_labels());
        for family in [&families.publish_duration, &families.body_size] {
            family.remove(&self.endpoint);
        }
        for family in [
            &families.secrets,
            &families.jetstream_ready,
            &families.buffer_bytes,
            &families.buffer_limit_bytes,
        ] {
            family.remove(&self.endpoint);
        }
        families.secret_reloads.remove(&self.endpoint);
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
    fn a_histogram_counts_each_value_in_the_first_bucket_that_holds_it() {
        let (registered, metrics) = Metrics::new("stripe");
        for seconds in [0.0001, 0.0005, 0.0006, 1e6] {
            metrics.request("stored", Duration::from_secs_f64(seconds));
        }
        let text = exposition(&registered);
        let line = |le: &str| {
            format!(
                "hookline_receiver_request_duration_seconds_bucket{{le=\"{le}\",provider=\"stripe\"}} "
            )
        };
        for (le, cumulative) in [("0.0005", 2), ("0.001", 3), ("8.192", 3), ("+Inf", 4)] {
            assert!(
                text.contains(&format!("{}{cumulative}\n", line(le))),
                "{le}: {text}"
            );
        }
        assert!(
            text.contains(
                "hookline_receiver_request_duration_seconds_count{provider=\"stripe\"} 4\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "hookline_receiver_request_duration_seconds_sum{provider=\"stripe\"} 1000000.0012"
            ),
            "{text}"
        );
    }

    #[test]
    fn ignored_types_past_the_cap_share_one_label() {
        let (registered, metrics) = Metrics::new("stripe");
        for n in 0..MAX_IGNORED_TYPE_LABELS {
            metrics.ignored(Some(&format!("type.{n}")));
        }
        metrics.ignored(Some("type.0"));
        metrics.ignored(Some("one.too.many"));
        metrics.ignored(Some("and.another"));
        metrics.ignored(None);
        let text = exposition(&registered);
        assert!(text.contains(r#"event_type="type.0"} 2"#), "{text}");
        assert!(text.contains(r#"event_type="_other"} 2"#), "{text}");
        assert!(text.contains(r#"event_type="_none"} 1"#), "{text}");
        assert!(!text.contains("one.too.many"), "{text}");
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    #[test]
    fn a_pools_series_carry_the_endpoint_and_go_with_it() {
        let metrics = Metrics::for_pool();
        let one = metrics.endpoint("stripe", EndpointLabel::pool("shop/one"));
        one.request("stored", Duration::from_millis(1));
        one.request("unauthorized", Duration::from_millis(1));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, metrics.registry()).expect("encode");
        assert!(
            text.contains(r#"hookline_receiver_requests_total{provider="stripe",outcome="stored",endpoint="shop/one"} 1"#),
            "{text}"
        );
        one.forget();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, metrics.registry()).expect("encode");
        assert!(!text.contains("shop/one"), "{text}");
    }
}

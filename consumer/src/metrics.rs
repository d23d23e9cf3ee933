//! Prometheus metrics of one consumer process (`GET /metrics`): one family per
//! metric, a series per endpoint served (one with `--endpoint`, the pool's
//! manifests with `--endpoint-dir`), never a series per event.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `endpoint` label of one endpoint's series.
type Labels = Vec<(String, String)>;
/// Families of histograms need a constructor; a plain `fn` keeps the type nameable.
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn batch_size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

fn batch_seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// From 250 µs: a healthy NATS delivers within a millisecond, so the
/// first buckets must split it from a slow one.
fn delivery_latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 20))
}

/// One endpoint's metrics, cheap to update from any task (each is a handle on
/// its series in [`MetricsRegistry`]).
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Events newly stored.
    pub processed: Counter,
    /// Events already stored (redelivery or re-sent), changed nothing.
    pub duplicates: Counter,
    /// Stored events whose projection update was skipped: a newer state was there.
    pub out_of_order_ignored: Counter,
    /// Messages handed back for a later retry (nak with delay).
    pub retries: Counter,
    /// Messages written to `hookline.dead_letters` and terminated.
    pub dead_letters: Counter,
    /// Messages held (no delivery spent) while the database was away.
    pub held: Counter,
    /// Batch transactions that failed as a whole.
    pub batch_failures: Counter,
    /// Messages per batch.
    pub batch_size: Histogram,
    /// Seconds from fetching a batch to acknowledging it.
    pub batch_seconds: Histogram,
    /// Seconds from the receiver accepting an event to its commit here.
    pub event_latency_seconds: Histogram,
    /// Seconds from the receiver accepting an event to its first delivery
    /// here: NATS's share of `event_latency_seconds`.
    pub delivery_latency_seconds: Histogram,
    /// Messages still to deliver to the durable consumer, as JetStream last said.
    pub jetstream_pending: PendingGauge,
    /// Batches in progress in this process.
    pub batches_in_flight: Gauge,
}

impl Metrics {
    /// The same series for a second loop of the endpoint (a shared-stream
    /// member's own stream, drained beside the pool's), whose pending
    /// messages add to the first loop's instead of replacing them.
    pub fn another_source(&self) -> Metrics {
        Metrics {
            jetstream_pending: self.jetstream_pending.another_source(),
            ..self.clone()
        }
    }
}

/// An endpoint's `jetstream_pending` series as one loop reports into it: the
/// series is the sum of what each of the endpoint's loops last said (two
/// while a shared-stream member's own stream drains), so neither hides the
/// other's backlog.
#[derive(Clone, Debug)]
pub struct PendingGauge {
    series: Gauge,
    /// What this loop last added to `series`.
    reported: Arc<AtomicI64>,
}

impl PendingGauge {
    fn new(series: Gauge) -> PendingGauge {
        PendingGauge {
            series,
            reported: Arc::default(),
        }
    }

    fn another_source(&self) -> PendingGauge {
        PendingGauge::new(self.series.clone())
    }

    /// This loop's pending messages, as JetStream last said.
    pub fn set(&self, pending: i64) {
        let before = self.reported.swap(pending, Ordering::Relaxed);
        self.series.inc_by(pending - before);
    }

    /// Takes this loop's share out of the series, when the loop ends.
    pub fn clear(&self) {
        self.set(0);
    }

    /// The series: every loop's pending messages together.
    pub fn get(&self) -> i64 {
        self.series.get()
    }
}

/// The process's metrics, named `hookline_consumer_*`.
#[derive(Debug)]
pub struct MetricsRegistry {
    registry: Registry,
    processed: Family<Labels, Counter>,
    duplicates: Family<Labels, Counter>,
    out_of_order_ignored: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    dead_letters: Family<Labels, Counter>,
    held: Family<Labels, Counter>,
    batch_failures: Family<Labels, Counter>,
    batch_size: HistogramFamily,
    batch_seconds: HistogramFamily,
    event_latency_seconds: HistogramFamily,
    delivery_latency_seconds: HistogramFamily,
    jetstream_pending: Family<Labels, Gauge>,
    batches_in_flight: Family<Labels, Gauge>,
    /// Endpoints whose loop runs (`--endpoint-dir` only).
    pub endpoints: Gauge,
    /// Manifests in the directory that are not served: invalid, of another
    /// namespace, or naming an endpoint another file names (`--endpoint-dir` only).
    pub manifests_skipped: Gauge,
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        MetricsRegistry::new()
    }
}

impl MetricsRegistry {
    /// The per-endpoint families, as a single-endpoint consumer serves them.
    pub fn new() -> MetricsRegistry {
        let mut registry = Registry::with_prefix("hookline_consumer");
        let metrics = MetricsRegistry {
            processed: Family::default(),
            duplicates: Family::default(),
            out_of_order_ignored: Family::default(),
            retries: Family::default(),
            dead_letters: Family::default(),
            held: Family::default(),
            batch_failures: Family::default(),
            batch_size: Family::new_with_constructor(batch_size_histogram),
            batch_seconds: Family::new_with_constructor(batch_seconds_histogram),
            event_latency_seconds: Family::new_with_constructor(latency_histogram),
            delivery_latency_seconds: Family::new_with_constructor(delivery_latency_histogram),
            jetstream_pending: Family::default(),
            batches_in_flight: Family::default(),
            endpoints: Gauge::default(),
            manifests_skipped: Gauge::default(),
            registry: Registry::default(),
        };
        // One line per metric: name, help, the metric.
        #[rustfmt::skip]
        let counters = [
            ("events_processed", "Events newly stored", &metrics.processed),
            ("duplicates", "Events that were already stored and changed nothing", &metrics.duplicates),
            ("out_of_order_ignored", "Stored events whose projection update was skipped because a newer state was stored", &metrics.out_of_order_ignored),
            ("retries", "Messages handed back to JetStream for a later retry", &metrics.retries),
            ("dead_letters", "Messages written to hookline.dead_letters and terminated", &metrics.dead_letters),
            ("batch_failures", "Batch transactions that failed as a whole", &metrics.batch_failures),
            ("held", "Messages held through a database outage, spending no delivery", &metrics.held),
        ];
        #[rustfmt::skip]
        let histograms = [
            ("batch_size", "Messages per batch transaction", &metrics.batch_size),
            ("batch_duration_seconds", "Seconds from fetching a batch to acknowledging it", &metrics.batch_seconds),
            ("processing_latency_seconds", "Seconds from the receiver accepting an event to its commit in Postgres", &metrics.event_latency_seconds),
            ("delivery_latency_seconds", "Seconds from the receiver accepting an event to its first delivery to a consumer", &metrics.delivery_latency_seconds),
        ];
        #[rustfmt::skip]
        let gauges = [
            ("jetstream_pending", "Messages not yet delivered to the durable consumer", &metrics.jetstream_pending),
            ("batches_in_flight", "Batches being processed by this process", &metrics.batches_in_flight),
        ];
        for (name, help, family) in counters {
            registry.register(name, help, family.clone());
        }
        for (name, help, family) in histograms {
            registry.register(name, help, family.clone());
        }
        for (name, help, family) in gauges {
            registry.register(name, help, family.clone());
        }
        MetricsRegistry {
            registry,
            ..metrics
        }
    }

    /// [`MetricsRegistry::new`] plus the pool's own gauges (`--endpoint-dir`).
    pub fn for_pool() -> MetricsRegistry {
        let mut metrics = MetricsRegistry::new();
        let endpoints = metrics.endpoints.clone();
        let skipped = metrics.manifests_skipped.clone();
        #[rustfmt::skip]
        metrics.registry.register("endpoints", "Endpoints this process consumes (one loop each)", endpoints);
        #[rustfmt::skip]
        metrics.registry.register("manifests_skipped", "Manifests in the endpoint directory that are not served (invalid, another namespace, or a second file for one endpoint)", skipped);
        metrics
    }

    /// The series of endpoint `key` (`namespace/name`), made on first use.
    pub fn endpoint(&self, key: &str) -> Metrics {
        let labels = labels(key);
        Metrics {
            processed: self.processed.get_or_create_owned(&labels),
            duplicates: self.duplicates.get_or_create_owned(&labels),
            out_of_order_ignored: self.out_of_order_ignored.get_or_create_owned(&labels),
            retries: self.retries.get_or_create_owned(&labels),
            dead_letters: self.dead_letters.get_or_create_owned(&labels),
            held: self.held.get_or_create_owned(&labels),
            batch_failures: self.batch_failures.get_or_create_owned(&labels),
            batch_size: self.batch_size.get_or_create_owned(&labels),
            batch_seconds: self.batch_seconds.get_or_create_owned(&labels),
            event_latency_seconds: self.event_latency_seconds.get_or_create_owned(&labels),
            delivery_latency_seconds: self.delivery_latency_seconds.get_or_create_owned(&labels),
            jetstream_pending: PendingGauge::new(
                self.jetstream_pending.get_or_create_owned(&labels),
            ),
            batches_in_flight: self.batches_in_flight.get_or_create_owned(&labels),
        }
    }

    /// Drops endpoint `key`'s series (it is no longer served), so the series
    /// stay bounded by the manifests in the directory.
    pub fn forget(&self, key: &str) {
        let labels = labels(key);
        self.processed.remove(&labels);
        self.duplicates.remove(&labels);
        self.out_of_order_ignored.remove(&labels);
        self.retries.remove(&labels);
        self.dead_letters.remove(&labels);
        self.held.remove(&labels);
        self.batch_failures.remove(&labels);
        self.batch_size.remove(&labels);
        self.batch_seconds.remove(&labels);
        self.event_latency_seconds.remove(&labels);
        self.delivery_latency_seconds.remove(&labels);
        self.jetstream_pending.remove(&labels);
        self.batches_in_flight.remove(&labels);
    }

    /// Every metric, for `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

fn labels(key: &str) -> Labels {
    vec![("endpoint".to_owned(), key.to_owned())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(metrics: &MetricsRegistry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, metrics.registry()).expect("encodes");
        text
    }

    #[test]
    fn delivery_latency_is_served_beside_processing_latency_from_a_quarter_millisecond() {
        let metrics = MetricsRegistry::new();
        let endpoint = metrics.endpoint("ns/a");
        endpoint.delivery_latency_seconds.observe(0.0002);
        endpoint.event_latency_seconds.observe(0.003);
        let text = encoded(&metrics);
        for line in [
            "hookline_consumer_delivery_latency_seconds_count{endpoint=\"ns/a\"} 1",
            "hookline_consumer_processing_latency_seconds_count{endpoint=\"ns/a\"} 1",
        ] {
            assert!(text.contains(line), "{text}");
        }
        assert!(
            text.lines().any(|line| line
                .starts_with("hookline_consumer_delivery_latency_seconds_bucket")
                && line.contains("le=\"0.00025\"")
                && line.ends_with(" 1")),
            "{text}"
        );
    }

    #[test]
    fn two_loops_of_one_endpoint_report_their_pending_messages_together() {
        let metrics = MetricsRegistry::for_pool();
        let shared = metrics.endpoint("ns/a");
        let own = shared.another_source();
        shared.jetstream_pending.set(5);
        own.jetstream_pending.set(7);
        assert_eq!(shared.jetstream_pending.get(), 12);
        own.jetstream_pending.set(2);
        assert_eq!(shared.jetstream_pending.get(), 7);
        own.jetstream_pending.clear();
        assert_eq!(shared.jetstream_pending.get(), 5);
        // A loop started again on the endpoint (a changed manifest) after the
        // first one cleared its share.
        shared.jetstream_pending.clear();
        metrics.endpoint("ns/a").jetstream_pending.set(3);
        assert_eq!(shared.jetstream_pending.get(), 3);
    }

    #[test]
    fn each_endpoint_has_its_own_series_until_forgotten() {
        let metrics = MetricsRegistry::for_pool();
        metrics.endpoint("ns/a").processed.inc();
        metrics.endpoint("ns/a").processed.inc();
        metrics.endpoint("ns/b").processed.inc();
        let text = encoded(&metrics);
        assert!(
            text.contains("hookline_consumer_events_processed_total{endpoint=\"ns/a\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("hookline_consumer_events_processed_total{endpoint=\"ns/b\"} 1"),
            "{text}"
        );
        metrics.forget("ns/a");
        let text = encoded(&metrics);
        assert!(!text.contains("ns/a"), "{text}");
        assert!(text.contains("hookline_consumer_endpoints "), "{text}");
    }
}

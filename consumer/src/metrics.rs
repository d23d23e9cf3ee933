//! Prometheus metrics of one consumer process (`GET /metrics`).

use std::borrow::Cow;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Every metric, cheap to update from any task.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
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
    /// Messages still to deliver to the durable consumer, as JetStream last said.
    pub jetstream_pending: Gauge,
    /// Batches in progress in this process.
    pub batches_in_flight: Gauge,
}

impl Metrics {
    /// Metrics named `hookline_consumer_*`, labelled with the endpoint.
    pub fn new(endpoint: &str) -> Metrics {
        let mut registry = Registry::with_prefix_and_labels(
            "hookline_consumer",
            [(Cow::Borrowed("endpoint"), Cow::Owned(endpoint.to_owned()))].into_iter(),
        );
        let metrics = Metrics {
            processed: Counter::default(),
            duplicates: Counter::default(),
            out_of_order_ignored: Counter::default(),
            retries: Counter::default(),
            dead_letters: Counter::default(),
            held: Counter::default(),
            batch_failures: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            batch_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            event_latency_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            jetstream_pending: Gauge::default(),
            batches_in_flight: Gauge::default(),
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
        ];
        #[rustfmt::skip]
        let gauges = [
            ("jetstream_pending", "Messages not yet delivered to the durable consumer", &metrics.jetstream_pending),
            ("batches_in_flight", "Batches being processed by this process", &metrics.batches_in_flight),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        for (name, help, histogram) in histograms {
            registry.register(name, help, histogram.clone());
        }
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Every metric, for `/metrics`.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

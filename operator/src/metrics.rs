//! Prometheus metrics of the operator: reconciles, failures by reason,
//! duration, writes, endpoints by readiness, and leadership.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    /// `namespace/name`.
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabel {
    pub ready: String,
}

/// Readiness of one endpoint, as the `ready` label shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Readiness {
    Ready,
    NotReady,
}

impl Readiness {
    fn label(self) -> &'static str {
        match self {
            Readiness::Ready => "true",
            Readiness::NotReady => "false",
        }
    }
}

/// Every metric, registered once.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciliations: Counter,
    /// Failed reconciles, by the error's kind ([`crate::Error::metric_label`]).
    pub errors: Family<ReasonLabel, Counter>,
    pub duration: Histogram,
    /// Create, patch and delete calls, by kind; zero in a steady state.
    pub writes: Family<KindLabel, Counter>,
    pub endpoints: Family<ReadyLabel, Gauge>,
    /// 1 while the endpoint's Ready condition is True, else 0.
    pub endpoint_ready: Family<EndpointLabel, Gauge>,
    /// Events accepted but not yet written to Postgres, per endpoint.
    pub endpoint_pending: Family<EndpointLabel, Gauge>,
    /// Bytes in the endpoint's stream, and the size at which new events get
    /// 503 (absent when uncapped): the alert on a filling buffer divides them.
    pub endpoint_stream_bytes: Family<EndpointLabel, Gauge>,
    pub endpoint_stream_limit_bytes: Family<EndpointLabel, Gauge>,
    pub leader: Gauge,
    /// Readiness per endpoint (`namespace/name`), behind `endpoints`.
    readiness: Mutex<HashMap<String, Readiness>>,
    /// Pending events per endpoint, behind `endpoint_pending`: a pool's lag sums them.
    pending: Mutex<HashMap<String, i64>>,
    /// Per pool (`namespace/name`), its members' keys (`namespace/name`).
    pools: Mutex<HashMap<String, Vec<String>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hookline_operator");
        let reconciliations = Counter::default();
        registry.register("reconciliations", "Reconciles run", reconciliations.clone());
        let errors = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and were retried, by kind of error",
            errors.clone(),
        );
        let duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile",
            duration.clone(),
        );
        let writes = Family::<KindLabel, Counter>::default();
        registry.register(
            "writes",
            "Create, patch and delete calls to the Kubernetes API, by kind",
            writes.clone(),
        );
        let endpoints = Family::<ReadyLabel, Gauge>::default();
        registry.register(
            "endpoints",
            "WebhookEndpoints by their Ready condition",
            endpoints.clone(),
        );
        let endpoint_ready = Family::<EndpointLabel, Gauge>::default();
        registry.register(
            "endpoint_ready",
            "1 while the endpoint's Ready condition is True",
            endpoint_ready.clone(),
        );
        let endpoint_pending = Family::<EndpointLabel, Gauge>::default();
        registry.register(
            "endpoint_pending",
            "Events the endpoint accepted that are not yet in Postgres (refreshed each resync)",
            endpoint_pending.clone(),
        );
        let endpoint_stream_bytes = Family::<EndpointLabel, Gauge>::default();
        registry.register(
            "endpoint_stream_bytes",
            "Bytes in the endpoint's stream; for a buffer, what waits for Postgres (refreshed each resync)",
            endpoint_stream_bytes.clone(),
        );
        let endpoint_stream_limit_bytes = Family::<EndpointLabel, Gauge>::default();
        registry.register(
            "endpoint_stream_limit_bytes",
            "Bytes at which the endpoint's new events get 503: a buffer's cap or an archive's maxBytes (absent when uncapped)",
            endpoint_stream_limit_bytes.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the Lease and reconciles",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciliations,
            errors,
            duration,
            writes,
            endpoints,
            endpoint_ready,
            endpoint_pending,
            endpoint_stream_bytes,
            endpoint_stream_limit_bytes,
            leader,
            readiness: Mutex::default(),
            pending: Mutex::default(),
            pools: Mutex::default(),
        }
    }

    pub fn observe_reconcile(&self, took: Duration) {
        self.reconciliations.inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn error(&self, reason: &str) {
        self.errors
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn write(&self, kind: &str) {
        self.writes
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Records `endpoint`'s pending events (`None`: unknown or deleted).
    pub fn set_pending(&self, endpoint: &str, pending: Option<i64>) {
        let label = EndpointLabel {
            endpoint: endpoint.to_owned(),
        };
        let mut all = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match pending {
            Some(pending) => {
                self.endpoint_pending.get_or_create(&label).set(pending);
                all.insert(endpoint.to_owned(), pending);
            }
            None => {
                self.endpoint_pending.remove(&label);
                all.remove(endpoint);
            }
        }
    }

    /// Records a pool's members (`None`: the pool is gone).
    pub fn set_pool_members(&self, pool: &str, members: Option<Vec<String>>) {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        match members {
            Some(members) => pools.insert(pool.to_owned(), members),
            None => pools.remove(pool),
        };
    }

    /// A pool's lag, the sum of its members' pending events (as last read,
    /// once per resync), and its member count; `None` for an unknown pool.
    pub fn pool_lag(&self, pool: &str) -> Option<(i64, usize)> {
        let pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        let members = pools.get(pool)?;
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let lag = members
            .iter()
            .filter_map(|member| pending.get(member))
            .fold(0i64, |sum, value| sum.saturating_add(*value));
        Some((lag, members.len()))
    }

    /// Records `endpoint`'s stream size and cap (`None`: unknown or deleted).
    pub fn set_stream_size(&self, endpoint: &str, size: Option<(u64, Option<u64>)>) {
        let label = EndpointLabel {
            endpoint: endpoint.to_owned(),
        };
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        match size {
            Some((bytes, limit)) => {
                self.endpoint_stream_bytes
                    .get_or_create(&label)
                    .set(gauge(bytes));
                match limit {
                    Some(limit) => {
                        self.endpoint_stream_limit_bytes
                            .get_or_create(&label)
                            .set(gauge(limit));
                    }
                    None => {
                        self.endpoint_stream_limit_bytes.remove(&label);
                    }
                }
            }
            None => {
                self.endpoint_stream_bytes.remove(&label);
                self.endpoint_stream_limit_bytes.remove(&label);
            }
        }
    }

    /// Records `endpoint`'s readiness (`None`: deleted) and updates the gauges.
    pub fn set_readiness(&self, endpoint: &str, readiness: Option<Readiness>) {
        let label = EndpointLabel {
            endpoint: endpoint.to_owned(),
        };
        match readiness {
            Some(readiness) => {
                self.endpoint_ready
                    .get_or_create(&label)
                    .set(i64::from(readiness == Readiness::Ready));
            }
            None => {
                self.endpoint_ready.remove(&label);
            }
        }
        let mut all = self
            .readiness
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match readiness {
            Some(readiness) => all.insert(endpoint.to_owned(), readiness),
            None => all.remove(endpoint),
        };
        for state in [Readiness::Ready, Readiness::NotReady] {
            let count = all.values().filter(|value| **value == state).count();
            self.endpoints
                .get_or_create(&ReadyLabel {
                    ready: state.label().to_owned(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

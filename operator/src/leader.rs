//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas can
//! run and only one reconciles.
//!
//! Every write carries the Lease's `resourceVersion`, so of two replicas
//! racing for an expired Lease exactly one wins (the other gets 409). Expiry is
//! judged by how long this replica has seen the same record unchanged, not by
//! comparing `renewTime` with its own clock, so clock skew cannot split the brain.
//!
//! Every Lease request is bounded by a timeout, and the leader gives up no
//! later than [`RENEW_DEADLINE`] after its last successful renewal even while a
//! request hangs: a standby may take the Lease [`LEASE_DURATION`] after that
//! renewal, and by then the old leader must have stopped (as in client-go).

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::time::Instant;
use tracing::{info, warn};

/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews.
const RENEW_INTERVAL: Duration = Duration::from_secs(5);
/// A leader that could not renew for this long stops reconciling: the Lease
/// may expire before it would notice otherwise.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often a standby replica tries to take the Lease, and how soon a leader
/// tries again after a failed renewal.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// The longest one attempt to read and write the Lease may take, so a hung
/// API server cannot stall acquiring or releasing (renewals are also cut off
/// at the renew deadline).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

// The leader must stop before a standby can see the Lease expire.
const _: () = assert!(RENEW_DEADLINE.as_nanos() < LEASE_DURATION.as_nanos());
const _: () = assert!(RENEW_INTERVAL.as_nanos() < RENEW_DEADLINE.as_nanos());

/// The durations above; a field so tests can use short ones.
#[derive(Clone, Copy, Debug)]
struct Timing {
    lease_duration: Duration,
    renew_interval: Duration,
    renew_deadline: Duration,
    retry_interval: Duration,
    request_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            lease_duration: LEASE_DURATION,
            renew_interval: RENEW_INTERVAL,
            renew_deadline: RENEW_DEADLINE,
            retry_interval: RETRY_INTERVAL,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// Why one attempt on the Lease failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("the API server did not answer within {0:?}")]
    TimedOut(Duration),
}

/// A Lease's holder and renew time as last seen, and when this replica first saw them.
struct Observed {
    holder: Option<String>,
    renewed: Option<MicroTime>,
    since: Instant,
}

/// One candidate for one Lease.
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    observed: Mutex<Option<Observed>>,
    /// When the last successful write of the Lease was sent: the Lease is
    /// renewed, as any other replica sees it, no earlier than that.
    renewed: Mutex<Option<Instant>>,
}

impl LeaderElection {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> LeaderElection {
        LeaderElection {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing: Timing::default(),
            observed: Mutex::default(),
            renewed: Mutex::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes or renews the Lease within [`REQUEST_TIMEOUT`]; `true` when this
    /// replica holds it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaseError> {
        self.attempt(self.timing.request_timeout).await
    }

    /// One read and write of the Lease, given up after `limit`.
    async fn attempt(&self, limit: Duration) -> Result<bool, LeaseError> {
        let sent = Instant::now();
        let held = bounded(limit, self.read_and_write()).await??;
        if held {
            *lock(&self.renewed) = Some(sent);
        }
        Ok(held)
    }

    async fn read_and_write(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now.clone(), now, 0)),
            };
            return conflict_is_loss(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec
            .holder_identity
            .clone()
            .filter(|holder| !holder.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        if !ours && holder.is_some() && !self.expired(&spec) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = match (ours, spec.acquire_time) {
            (true, Some(time)) => time,
            _ => now.clone(),
        };
        let mut lease = current;
        lease.spec = Some(self.spec(acquired, now, transitions));
        let held = conflict_is_loss(
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await,
        )?;
        if held && !ours {
            info!(lease = %self.name, identity = %self.identity, "acquired the Lease");
        }
        Ok(held)
    }

    /// Gives the Lease up so a standby takes over at once (on shutdown); a
    /// hung API server delays shutdown by at most [`REQUEST_TIMEOUT`].
    pub async fn release(&self) {
        let outcome = bounded(self.timing.request_timeout, async {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else {
                return Ok(());
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        })
        .await
        .and_then(|outcome| outcome.map_err(LeaseError::from));
        match outcome {
            Ok(()) => info!(lease = %self.name, "released the Lease"),
            Err(err) => {
                warn!(lease = %self.name, cause = %err, "cannot release the Lease; it expires by itself")
            }
        }
    }

    /// Waits until this replica holds the Lease; errors are logged and retried.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(err) => {
                    warn!(lease = %self.name, cause = %err, "cannot read or take the Lease")
                }
            }
            tokio::time::sleep(self.timing.retry_interval).await;
        }
    }

    /// Renews the Lease until it is lost, then returns: when another replica
    /// holds it, or when it was not renewed for [`RENEW_DEADLINE`] (a renewal
    /// still in flight then is abandoned), well before a standby could take it.
    pub async fn hold(&self) {
        let deadline = self.timing.renew_deadline;
        let mut wait = self.timing.renew_interval;
        // Acquiring counts as the first renewal.
        let mut renewed = *lock(&self.renewed).get_or_insert_with(Instant::now);
        loop {
            let give_up = renewed + deadline;
            tokio::time::sleep_until(give_up.min(Instant::now() + wait)).await;
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                warn!(lease = %self.name, ?deadline, "could not renew the Lease within the renew deadline; giving it up");
                return;
            }
            match self.attempt(left.min(self.timing.request_timeout)).await {
                Ok(true) => {
                    renewed = lock(&self.renewed).unwrap_or(renewed);
                    wait = self.timing.renew_interval;
                }
                Ok(false) => {
                    warn!(lease = %self.name, "another replica holds the Lease now");
                    return;
                }
                Err(err) => {
                    warn!(lease = %self.name, cause = %err, "cannot renew the Lease");
                    wait = self.timing.retry_interval;
                }
            }
        }
    }

    fn spec(&self, acquired: MicroTime, renewed: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.timing.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquired),
            renew_time: Some(renewed),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Whether the holder's record has stayed unchanged for longer than its
    /// lease duration, as this replica observed it.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let mut observed = lock(&self.observed);
        let since = match observed.as_ref() {
            Some(seen)
                if seen.holder == spec.holder_identity && seen.renewed == spec.renew_time =>
            {
                seen.since
            }
            _ => {
                let now = Instant::now();
                *observed = Some(Observed {
                    holder: spec.holder_identity.clone(),
                    renewed: spec.renew_time.clone(),
                    since: now,
                });
                now
            }
        };
        let duration = spec
            .lease_duration_seconds
            .map_or(self.timing.lease_duration, |seconds| {
                Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
            });
        since.elapsed() > duration
    }
}

/// `work`, or [`LeaseError::TimedOut`] once `limit` has passed.
async fn bounded<T>(limit: Duration, work: impl Future<Output = T>) -> Result<T, LeaseError> {
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| LeaseError::TimedOut(limit))
}

/// A poisoned lock still holds a usable value here: plain data, no invariants.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A 409 means another replica wrote the Lease first: we do not hold it.
fn conflict_is_loss<T>(outcome: Result<T, kube::Error>) -> Result<bool, kube::Error> {
    match outcome {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(response)) if response.code == 409 => Ok(false),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use http::{Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};

    use super::*;

    /// Short durations with the defaults' proportions, so a test takes a second.
    const FAST: Timing = Timing {
        lease_duration: Duration::from_millis(1500),
        renew_interval: Duration::from_millis(100),
        renew_deadline: Duration::from_millis(400),
        retry_interval: Duration::from_millis(50),
        request_timeout: Duration::from_millis(300),
    };
    /// Slack for a busy test machine.
    const MARGIN: Duration = Duration::from_millis(500);

    /// One Lease behind a `kube::Client`; every request hangs while `stalled`.
    #[derive(Clone, Default)]
    struct FakeLeases {
        lease: Arc<Mutex<Option<Value>>>,
        stalled: Arc<AtomicBool>,
        writes: Arc<AtomicUsize>,
    }

    impl FakeLeases {
        fn election(&self) -> LeaderElection {
            let fake = self.clone();
            let service = tower::service_fn(move |request: Request<Body>| {
                let fake = fake.clone();
                async move { Ok::<_, Infallible>(fake.answer(request).await) }
            });
            let mut election = LeaderElection::new(
                Client::new(service, "default"),
                "default",
                "hookline-operator",
                "replica-a",
            );
            election.timing = FAST;
            election
        }

        async fn answer(&self, request: Request<Body>) -> Response<Body> {
            if self.stalled.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let (parts, body) = request.into_parts();
            let body = body.collect_bytes().await.unwrap_or_default();
            let mut lease = lock(&self.lease);
            let (status, answer) = match parts.method.as_str() {
                "GET" => match lease.clone() {
                    Some(current) => (StatusCode::OK, current),
                    None => (
                        StatusCode::NOT_FOUND,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "NotFound", "code": 404, "message": "not found"}),
                    ),
                },
                _ => {
                    self.writes.fetch_add(1, Ordering::SeqCst);
                    let mut written: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let version = self.writes.load(Ordering::SeqCst).to_string();
                    written["metadata"]["resourceVersion"] = Value::String(version);
                    *lease = Some(written.clone());
                    (StatusCode::OK, written)
                }
            };
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(answer.to_string().into_bytes()))
                .expect("a response")
        }
    }

    #[tokio::test]
    async fn hold_returns_within_the_renew_deadline_while_a_renewal_hangs() {
        let fake = FakeLeases::default();
        let election = fake.election();
        assert!(election.try_acquire_or_renew().await.expect("acquired"));
        let acquired = Instant::now();
        fake.stalled.store(true, Ordering::SeqCst);

        tokio::time::timeout(FAST.renew_deadline + MARGIN, election.hold())
            .await
            .expect("hold gives up while the API server hangs");
        assert!(
            acquired.elapsed() < FAST.lease_duration,
            "stopped before a standby could take the Lease"
        );
    }

    #[tokio::test]
    async fn hold_keeps_the_lease_while_renewals_succeed() {
        let fake = FakeLeases::default();
        let election = fake.election();
        assert!(election.try_acquire_or_renew().await.expect("acquired"));

        let held = tokio::time::timeout(FAST.renew_deadline * 4, election.hold()).await;
        assert!(held.is_err(), "hold returned while renewals succeeded");
        assert!(
            fake.writes.load(Ordering::SeqCst) >= 4,
            "the Lease was renewed"
        );
    }

    #[tokio::test]
    async fn hold_returns_when_another_replica_holds_the_lease() {
        let fake = FakeLeases::default();
        let election = fake.election();
        assert!(election.try_acquire_or_renew().await.expect("acquired"));
        if let Some(lease) = lock(&fake.lease).as_mut() {
            lease["spec"]["holderIdentity"] = json!("replica-b");
            lease["spec"]["renewTime"] = json!("2030-01-01T00:00:00.000000Z");
        }

        tokio::time::timeout(FAST.renew_interval + MARGIN, election.hold())
            .await
            .expect("hold sees the other holder at its next renewal");
    }

    #[tokio::test]
    async fn acquiring_and_releasing_give_up_on_a_hung_api_server() {
        let fake = FakeLeases::default();
        fake.stalled.store(true, Ordering::SeqCst);
        let election = fake.election();

        let attempt = tokio::time::timeout(
            FAST.request_timeout + MARGIN,
            election.try_acquire_or_renew(),
        )
        .await
        .expect("the attempt is cut off");
        assert!(matches!(attempt, Err(LeaseError::TimedOut(_))));
        tokio::time::timeout(FAST.request_timeout + MARGIN, election.release())
            .await
            .expect("release gives up");
    }

    #[test]
    fn the_default_renew_deadline_is_below_the_lease_duration() {
        let timing = Timing::default();
        assert!(timing.renew_deadline < timing.lease_duration);
        assert!(timing.request_timeout <= timing.renew_deadline);
    }
}

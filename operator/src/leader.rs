//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas can
//! run and only one reconciles.
//!
//! Every write carries the Lease's `resourceVersion`, so of two replicas
//! racing for an expired Lease exactly one wins (the other gets 409). Expiry is
//! judged by how long this replica has seen the same record unchanged, not by
//! comparing `renewTime` with its own clock, so clock skew cannot split the brain.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tracing::{info, warn};

/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(5);
/// A leader that could not renew for this long stops reconciling: the Lease
/// may expire before it would notice otherwise.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often a standby replica tries to take the Lease.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);

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
    observed: Mutex<Option<Observed>>,
}

impl LeaderElection {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> LeaderElection {
        LeaderElection {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            observed: Mutex::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes or renews the Lease; `true` when this replica holds it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
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

    /// Gives the Lease up so a standby takes over at once (on shutdown).
    pub async fn release(&self) {
        let outcome = async {
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
        }
        .await;
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
            tokio::time::sleep(RETRY_INTERVAL).await;
        }
    }

    /// Renews the Lease until it is lost (taken by another replica, or not
    /// renewed within [`RENEW_DEADLINE`]); then returns.
    pub async fn hold(&self) {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(RENEW_INTERVAL).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => return,
                Err(err) => {
                    warn!(lease = %self.name, cause = %err, "cannot renew the Lease");
                    if renewed.elapsed() > RENEW_DEADLINE {
                        return;
                    }
                }
            }
        }
    }

    fn spec(&self, acquired: MicroTime, renewed: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(acquired),
            renew_time: Some(renewed),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Whether the holder's record has stayed unchanged for longer than its
    /// lease duration, as this replica observed it.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let mut observed = self
            .observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
            .map_or(LEASE_DURATION, |seconds| {
                Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
            });
        since.elapsed() > duration
    }
}

/// A 409 means another replica wrote the Lease first: we do not hold it.
fn conflict_is_loss<T>(outcome: Result<T, kube::Error>) -> Result<bool, kube::Error> {
    match outcome {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(response)) if response.code == 409 => Ok(false),
        Err(err) => Err(err),
    }
}

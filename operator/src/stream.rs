//! The JetStream step: the endpoint's stream and durable consumer, made with
//! the same `hookline_api::provision` the binaries' `--provision` uses and
//! marked as the endpoint's, and the stream's live figures for the status.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use async_nats::connection::State;
use async_nats::jetstream;
use hookline_api::headers::HEADER_ALLOWANCE;
use hookline_api::naming;
use hookline_api::provision::{
    self, Cleanup, Ensured, PoolCleanup, ProvisionError, Provisioned, StreamOwner, StreamStats,
};
use hookline_api::spec::DeletionPolicy;

use crate::validate::ValidEndpoint;

/// What the stream step found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamState {
    /// Provisioned; `max_payload` is the server's largest message.
    Ready {
        stats: StreamStats,
        max_payload: usize,
    },
    /// NATS is not reachable (not connected, or no answer in time).
    Unreachable(String),
    /// NATS answered, and refused (e.g. no JetStream, or out of resources):
    /// the cause and what to do.
    Refused(String),
    /// The stream belongs to another endpoint (another cluster on the same
    /// NATS, or an earlier endpoint of this name): left alone.
    OwnedElsewhere(String),
}

impl StreamState {
    /// The largest body that fits in a message with its headers, when it is
    /// below the endpoint's `maxBodyBytes`.
    pub fn payload_shortfall(&self, valid: &ValidEndpoint) -> Option<usize> {
        match self {
            StreamState::Ready { max_payload, .. } => {
                let fits = max_payload.saturating_sub(HEADER_ALLOWANCE);
                (fits < valid.endpoint.request.max_body_bytes).then_some(fits)
            }
            _ => None,
        }
    }
}

/// What the stream step remembers per endpoint (by UID) between reconciles,
/// so a steady state costs one JetStream API call (a member of a pool's
/// shared stream, none while its pool's listing is fresh, and nothing is
/// remembered of it).
#[derive(Default)]
pub struct KnownStreams {
    by_uid: Mutex<HashMap<String, Provisioned>>,
}

impl KnownStreams {
    fn take(&self, uid: &str) -> Option<Provisioned> {
        self.lock().remove(uid)
    }

    fn put(&self, uid: &str, known: Option<Provisioned>) {
        if let Some(known) = known {
            self.lock().insert(uid.to_owned(), known);
        }
    }

    /// Forgets a deleted endpoint.
    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Provisioned>> {
        self.by_uid.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Creates or updates the stream and durable consumer, marked as `owner`'s,
/// and reads the figures: one STREAM.INFO when nothing changed. A member of
/// a shared stream passes its message count from its pool's fresh listing
/// (`listed`), and then makes no call.
pub async fn ensure(
    client: &async_nats::Client,
    known: &KnownStreams,
    valid: &ValidEndpoint,
    owner: &StreamOwner,
    listed: Option<u64>,
) -> StreamState {
    if client.connection_state() != State::Connected {
        return StreamState::Unreachable("not connected to NATS".into());
    }
    let js = jetstream::new(client.clone());
    let mut provisioned = known.take(&owner.uid);
    let outcome =
        provision::ensure_listed(&js, &valid.endpoint, Some(owner), &mut provisioned, listed).await;
    known.put(&owner.uid, provisioned);
    match outcome {
        Ok(Ensured::Ready(stats)) => StreamState::Ready {
            stats,
            max_payload: client.server_info().max_payload,
        },
        Ok(Ensured::OwnedElsewhere(mark)) => StreamState::OwnedElsewhere(
            provision::owned_elsewhere_message(&valid.endpoint.stream.name, &mark),
        ),
        Err(err) if err.is_timeout() || client.connection_state() != State::Connected => {
            StreamState::Unreachable(err.to_string())
        }
        Err(err) => StreamState::Refused(provision::explain(&js, &valid.endpoint, &err).await),
    }
}

/// The finalizer's cleanup of the stream `name`: deleted (`Delete`) or
/// released for the next endpoint of that name (`Retain`), unless another
/// endpoint owns it. Returns what happened, for the Event.
pub async fn clean_up(
    client: &async_nats::Client,
    name: &str,
    owner: &StreamOwner,
    policy: DeletionPolicy,
) -> Result<String, ProvisionError> {
    let js = jetstream::new(client.clone());
    let outcome = match policy {
        DeletionPolicy::Delete => provision::delete_owned(&js, name, owner).await?,
        DeletionPolicy::Retain => provision::release(&js, name, owner).await?,
    };
    Ok(match (outcome, policy) {
        (Cleanup::OwnedElsewhere(mark), _) => {
            format!("left stream {name} alone: it belongs to {mark}")
        }
        (Cleanup::Missing, _) => format!("stream {name} was already gone"),
        (Cleanup::Done, DeletionPolicy::Delete) => format!("deleted stream {name}"),
        (Cleanup::Done, DeletionPolicy::Retain) => format!(
            "kept stream {name} (deletionPolicy: Retain); the next endpoint of this name takes it over"
        ),
    })
}

/// The finalizer's cleanup of a deleted pool's shared stream (if it has
/// one): deleted when it holds nothing, else closed to new events and
/// released with them for a pool of this name made again; left alone when
/// another owner's. Returns what was done, for the log.
pub async fn clean_up_pool(
    client: &async_nats::Client,
    cluster: Option<&str>,
    namespace: &str,
    pool: &str,
    owner: &StreamOwner,
) -> Result<String, ProvisionError> {
    let js = jetstream::new(client.clone());
    let name = naming::pool_stream_name_in(cluster, namespace, pool);
    let closed = crate::shared::pool_closed_subject(cluster, namespace, pool);
    Ok(
        match provision::clean_up_pool_stream(&js, &name, &closed, owner).await? {
            PoolCleanup::Deleted => {
                format!("deleted its shared stream {name}, which held no event")
            }
            PoolCleanup::Released { messages } => format!(
                "kept its shared stream {name}, which still holds {messages} event(s) of its members, taking no new ones: a WebhookPool of this name made again takes it over and drains them (or remove it with `nats stream rm {name}`)"
            ),
            PoolCleanup::Left(Cleanup::OwnedElsewhere(mark)) => {
                format!("left stream {name} alone: it belongs to {mark}")
            }
            PoolCleanup::Left(Cleanup::Missing | Cleanup::Done) => {
                "it had no shared stream".to_owned()
            }
        },
    )
}

/// The finalizer's cleanup of a member in pool `pool`'s shared stream:
/// `Delete` purges the member's subjects from it (no other member's);
/// `Retain` leaves its events, which the pool drains under the member's
/// last manifest as for a member that left. `None` when nothing was done
/// (`Retain`, or the pool has no shared stream).
pub async fn clean_up_member(
    client: &async_nats::Client,
    cluster: Option<&str>,
    namespace: &str,
    pool: &str,
    name: &str,
    policy: DeletionPolicy,
) -> Result<Option<String>, ProvisionError> {
    let stream = naming::pool_stream_name_in(cluster, namespace, pool);
    match policy {
        DeletionPolicy::Retain => Ok(None),
        DeletionPolicy::Delete => {
            let js = jetstream::new(client.clone());
            let prefix = naming::pool_subject_prefix_in(cluster, namespace, pool);
            let filter = format!("{}.>", naming::pool_member_subject_prefix(&prefix, name));
            let Some(purged) = provision::purge_subjects(&js, &stream, &filter).await? else {
                return Ok(None);
            };
            Ok(Some(format!(
                "purged its {purged} event(s) from pool stream {stream}"
            )))
        }
    }
}

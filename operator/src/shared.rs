//! A pool's shared stream (`WebhookPool` `spec.stream`): which pools have
//! one, the pool stream's figures a member's status shares out, the pool's
//! listing of its messages per member a member's pending is read from, and
//! the members' own streams on their way out. What the pool's and the
//! members' reconciles share, kept in memory so a steady state costs no
//! call here.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::{self, context::GetStreamErrorKind};
use hookline_api::naming;
use hookline_api::pool::WebhookPool;
use hookline_api::provision::{self, Retirement, StreamOwner};
use hookline_api::validated::StreamLimits;
use kube::ResourceExt;
use tracing::{debug, warn};

use crate::validate::{ValidEndpoint, validate_pool};

/// A pool's shared stream as its reconciles treat it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedMode {
    /// The pool's `spec.stream`, or the defaults when it cannot be read.
    pub limits: StreamLimits,
    /// `spec.stream` was removed while the stream exists (the CRD refuses
    /// that; a CRD older than the rule did not): still shared, and said so.
    pub turned_off: bool,
}

/// What was found of a pool without `spec.stream`, for one generation of it.
struct Checked {
    uid: Option<String>,
    generation: Option<i64>,
    exists: bool,
}

/// A pool stream's messages per member as its pool's reconcile last read
/// them ([`provision::ensure_pool_stream`]).
struct Listing {
    /// When the listing was asked for.
    taken: Instant,
    /// Messages per member token ([`naming::pool_member_token`]); a member
    /// absent has none.
    messages: HashMap<String, u64>,
}

/// What the operator remembers of shared streams between reconciles.
#[derive(Default)]
pub struct SharedStreams {
    /// Per pool (`namespace/name`) without `spec.stream`: whether its shared
    /// stream existed, checked once per generation.
    checked: Mutex<HashMap<String, Checked>>,
    /// Per pool: the pool stream's messages and bytes at its last reconcile.
    figures: Mutex<HashMap<String, (u64, u64)>>,
    /// Per pool: its stream's messages per member as its last reconcile
    /// listed them, so a steady member's reconcile makes no call (see
    /// [`SharedStreams::listed`]).
    listings: Mutex<HashMap<String, Listing>>,
    /// Endpoint UIDs whose own stream is gone (or not theirs): no more
    /// calls for it while they stay in a shared stream.
    own_gone: Mutex<HashSet<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SharedStreams {
    /// Whether `pool` has a shared stream, and its limits: its
    /// `spec.stream` (the defaults while that does not validate), or, when
    /// it has none but its stream exists, the defaults with `turned_off`.
    /// A pool without `spec.stream` costs one STREAM.INFO per generation;
    /// when NATS cannot tell, it counts as not shared and is asked again.
    pub async fn mode(
        &self,
        nats: &async_nats::Client,
        cluster: Option<&str>,
        pool: &WebhookPool,
    ) -> Option<SharedMode> {
        if pool.spec.stream.is_some() {
            let limits = validate_pool(pool)
                .ok()
                .and_then(|valid| valid.pool.stream)
                .unwrap_or_default();
            return Some(SharedMode {
                limits,
                turned_off: false,
            });
        }
        let namespace = pool.namespace().unwrap_or_default();
        let key = format!("{namespace}/{}", pool.name_any());
        let (uid, generation) = (pool.metadata.uid.clone(), pool.metadata.generation);
        let known = lock(&self.checked)
            .get(&key)
            .filter(|checked| checked.uid == uid && checked.generation == generation)
            .map(|checked| checked.exists);
        let exists = match known {
            Some(exists) => exists,
            None => {
                let name = naming::pool_stream_name_in(cluster, &namespace, &pool.name_any());
                let exists = stream_exists(nats, &name).await?;
                lock(&self.checked).insert(
                    key,
                    Checked {
                        uid,
                        generation,
                        exists,
                    },
                );
                exists
            }
        };
        exists.then(|| SharedMode {
            limits: StreamLimits::default(),
            turned_off: true,
        })
    }

    /// Records the pool stream's figures, for its members' share of its bytes.
    pub fn set_figures(&self, pool: &str, messages: u64, bytes: u64) {
        lock(&self.figures).insert(pool.to_owned(), (messages, bytes));
    }

    /// A member's bytes in its pool's stream, from its message count and
    /// the pool stream's figures; `None` before the pool's first reconcile.
    pub fn member_bytes(&self, pool: &str, member_messages: u64) -> Option<u64> {
        let (messages, bytes) = *lock(&self.figures).get(pool)?;
        Some(provision::shared_bytes(member_messages, messages, bytes))
    }

    /// Records the pool's listing of its stream's messages per member
    /// token, asked for at `taken`, in place of the last. A listing that
    /// failed is not recorded: the last one ages out, and members read their own.
    pub fn set_listing(&self, pool: &str, taken: Instant, messages: HashMap<String, u64>) {
        lock(&self.listings).insert(pool.to_owned(), Listing { taken, messages });
    }

    /// The messages of the member with subject token `token` in `pool`'s
    /// stream, from the pool's listing when it was taken within `fresh`
    /// (the resync: a member's pending is then never older than one); 0
    /// when the listing has none of its subjects. `None` without such a
    /// listing: the member reads its own count.
    pub fn listed(&self, pool: &str, token: &str, fresh: Duration) -> Option<u64> {
        let listings = lock(&self.listings);
        let listing = listings
            .get(pool)
            .filter(|listing| listing.taken.elapsed() <= fresh)?;
        Some(listing.messages.get(token).copied().unwrap_or(0))
    }

    /// Forgets the pool's listing and figures: it has no shared stream
    /// (any more), so its members have none either.
    pub fn forget_stream(&self, pool: &str) {
        lock(&self.listings).remove(pool);
        lock(&self.figures).remove(pool);
    }

    /// Forgets everything of a deleted pool.
    pub fn forget_pool(&self, pool: &str) {
        self.forget_stream(pool);
        lock(&self.checked).remove(pool);
    }

    /// Whether the endpoint's own stream is known gone (or not its own), so
    /// its pending is its messages in the pool's stream alone.
    pub fn own_stream_gone(&self, uid: &str) -> bool {
        lock(&self.own_gone).contains(uid)
    }

    /// Forgets an endpoint's own stream: it is out of a shared stream
    /// (its own stream is its stream again), or deleted.
    pub fn forget_own(&self, uid: &str) {
        lock(&self.own_gone).remove(uid);
    }

    /// A member's own stream, while it exists: its subjects retired, then
    /// deleted once it holds nothing (the pool's consumer drains it). One
    /// STREAM.INFO per call until it is gone, none after. `None`: known
    /// gone, or NATS did not answer (tried again at the next reconcile).
    pub async fn retire_own(
        &self,
        nats: &async_nats::Client,
        cluster: Option<&str>,
        valid: &ValidEndpoint,
        owner: &StreamOwner,
    ) -> Option<Retirement> {
        if lock(&self.own_gone).contains(&owner.uid) {
            return None;
        }
        let endpoint = &valid.endpoint;
        let name = naming::stream_name_in(cluster, &endpoint.namespace, &endpoint.name);
        let retired = naming::retired_subject_in(cluster, &endpoint.namespace, &endpoint.name);
        let js = jetstream::new(nats.clone());
        match provision::retire_own_stream(&js, &name, &retired, owner).await {
            Ok(draining @ Retirement::Draining { .. }) => Some(draining),
            Ok(done) => {
                lock(&self.own_gone).insert(owner.uid.clone());
                Some(done)
            }
            Err(err) => {
                warn!(stream = %name, cause = %err, "cannot retire the member's own stream; trying again at the next reconcile");
                None
            }
        }
    }
}

/// Whether the stream `name` exists; `None` when NATS cannot tell.
async fn stream_exists(nats: &async_nats::Client, name: &str) -> Option<bool> {
    if nats.connection_state() != State::Connected {
        return None;
    }
    let js = jetstream::new(nats.clone());
    let asked = tokio::time::timeout(provision::PROVISION_TIMEOUT, js.get_stream(name)).await;
    match asked {
        Ok(Ok(_)) => Some(true),
        Ok(Err(err))
            if matches!(err.kind(), GetStreamErrorKind::JetStream(api)
                if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            Some(false)
        }
        Ok(Err(err)) => {
            debug!(stream = name, cause = %err, "cannot tell whether the pool's shared stream exists");
            None
        }
        Err(_) => None,
    }
}

/// The one subject of a pool stream that serves nobody: no receiver
/// publishes to it, so the stream stores nothing new (a stream needs one).
pub fn pool_closed_subject(cluster: Option<&str>, namespace: &str, pool: &str) -> String {
    closed_subject(&naming::pool_subject_prefix_in(cluster, namespace, pool))
}

fn closed_subject(prefix: &str) -> String {
    format!("{prefix}._none")
}

/// The subjects of a pool stream serving `members` (names), as the pool's
/// reconcile lists them: one `<pool prefix>.<member>.>` each, sorted. With
/// no member, one subject no member has, so the stream takes nothing (an
/// empty list would make nats-server take the stream's name as its subject).
pub fn pool_subjects<'a>(
    cluster: Option<&str>,
    namespace: &str,
    pool: &str,
    members: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let prefix = naming::pool_subject_prefix_in(cluster, namespace, pool);
    let mut subjects: Vec<String> = members
        .into_iter()
        .map(|member| format!("{}.>", naming::pool_member_subject_prefix(&prefix, member)))
        .collect();
    if subjects.is_empty() {
        subjects.push(closed_subject(&prefix));
    }
    subjects.sort();
    subjects.dedup();
    subjects
}

/// What a member's StreamReady adds about its own stream, and its events
/// still there counted as pending (the pool's consumer drains them, so
/// KEDA must see them).
pub fn own_stream_note(
    own: Option<Retirement>,
    stats: &mut provision::StreamStats,
    cluster: Option<&str>,
    valid: &ValidEndpoint,
) -> Option<String> {
    let endpoint = &valid.endpoint;
    let name = naming::stream_name_in(cluster, &endpoint.namespace, &endpoint.name);
    match own? {
        Retirement::Draining {
            messages,
            work_queue,
            ..
        } => {
            if work_queue {
                stats.pending = stats.pending.saturating_add(messages);
            }
            Some(format!(
                "; its own stream {name} takes no more events and still holds {messages} event(s), which the pool's consumer drains before the operator deletes it"
            ))
        }
        Retirement::OwnedElsewhere(mark) => Some(format!(
            "; stream {name} belongs to {mark} and is left alone"
        )),
        Retirement::Missing | Retirement::Deleted => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: &str = "shop/shared";
    const RESYNC: Duration = Duration::from_secs(60);

    fn listed_at(taken: Instant) -> SharedStreams {
        let shared = SharedStreams::default();
        let messages = HashMap::from([("a".to_owned(), 3), ("b_eu".to_owned(), 1)]);
        shared.set_listing(POOL, taken, messages);
        shared
    }

    #[test]
    fn a_fresh_listing_answers_for_every_member_and_none_listed_has_nothing() {
        let shared = listed_at(Instant::now());
        let listed = |token| shared.listed(POOL, token, RESYNC);
        assert_eq!(listed("a"), Some(3));
        assert_eq!(listed("b_eu"), Some(1));
        assert_eq!(listed("c"), Some(0), "no message on its subjects");
        assert_eq!(shared.listed("shop/other", "a", RESYNC), None);
    }

    #[test]
    fn a_listing_older_than_a_resync_answers_nothing() {
        let taken = Instant::now()
            .checked_sub(RESYNC + Duration::from_secs(1))
            .expect("uptime");
        let shared = listed_at(taken);
        assert_eq!(shared.listed(POOL, "a", RESYNC), None);
    }

    #[test]
    fn a_pool_that_loses_its_shared_stream_forgets_its_listing_and_figures() {
        let shared = listed_at(Instant::now());
        shared.set_figures(POOL, 10, 1000);
        shared.forget_stream(POOL);
        assert_eq!(shared.listed(POOL, "a", RESYNC), None);
        assert_eq!(shared.member_bytes(POOL, 5), None);
    }
}

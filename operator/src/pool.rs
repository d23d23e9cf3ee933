//! WebhookPool: one reconcile per pool (validate → read the members and
//! their signing secrets → build → apply → status) in the same process,
//! Lease and field manager as the endpoints, and what a member's reconcile
//! reads of its pool (its `Served` condition).
//!
//! The two controllers ask each other for reconciles: a member's reconcile
//! asks for its pool while it is not served as it is now (and for the pool
//! it left), a changed Secret a member reads asks for its pool, and a pool
//! asks for the members whose `Served` condition its apply changed. Neither
//! asks unconditionally for the other, so they never loop, and a steady
//! member's resync costs its pool nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use hookline_api::conditions::{self, reasons};
use hookline_api::naming::{self, FIELD_MANAGER};
use hookline_api::pool::{ValidatedPool, WebhookPool, WebhookPoolStatus};
use hookline_api::provision::{self, StreamOwner};
use hookline_api::spec::WebhookEndpoint;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, debug, info, warn};

use crate::apply::{self, Applier, ApplyFailure};
use crate::build::pool::{self as pool_build, Member, PoolChildren, PoolNames, manifest_key};
use crate::build::{Children, Cluster};
use crate::probe::{self, Loaded};
use crate::reconcile::{Context, FINALIZER, jitter};
use crate::secrets::{self, SecretCheck};
use crate::status::{
    self, Finding, Status, applied_deployment_finding, deployment_finding, write::publish,
};
use crate::validate::{ValidEndpoint, ValidPool, validate_in, validate_pool};
use crate::{Error, Result, shared, stream};

/// How long an invalid pool waits before it is looked at again (an edit
/// triggers a reconcile at once).
const INVALID_SPEC_RECHECK: Duration = Duration::from_secs(300);
/// How soon a pool whose receivers have not all loaded its members' current
/// manifests asks them again.
const PROBE_AGAIN: Duration = Duration::from_secs(10);
/// How long a reconcile waits for the ScaledObject cache.
const SCALER_CACHE_WAIT: Duration = Duration::from_secs(5);

/// A member's pool as the caches show it.
#[derive(Clone, Debug, PartialEq)]
pub enum PoolView {
    /// No WebhookPool of that name in the member's namespace.
    NotFound { name: String },
    /// The pool's spec does not validate.
    Invalid { name: String, message: String },
    Found {
        name: String,
        /// The pool ConfigMap's data, if it exists and is the pool's.
        manifests: Option<BTreeMap<String, String>>,
        /// The pool Secret's key names, if it exists.
        secret_keys: Option<BTreeSet<String>>,
        /// The pool's receiver Deployment, if it exists.
        receiver: Option<Arc<Deployment>>,
        /// What its ready receiver pods serve, at the pool's last reconcile.
        loaded: Option<Arc<Loaded>>,
    },
}

/// Reads what a member needs of its pool from the caches (the pool
/// Secret's key names, never its values, at most once per version).
pub async fn observe(
    ctx: &Context,
    api: &Api<Secret>,
    namespace: &str,
    name: &str,
    pool: Option<&WebhookPool>,
) -> Result<PoolView> {
    let Some(pool) = pool else {
        return Ok(PoolView::NotFound { name: name.into() });
    };
    if let Err(invalid) = validate_pool(pool) {
        return Ok(PoolView::Invalid {
            name: name.into(),
            message: field_errors(&invalid),
        });
    }
    let names = PoolNames::of(name);
    let uid = pool.metadata.uid.as_deref();
    let owned = |owner: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| {
        owner
            .iter()
            .any(|owner| owner.controller == Some(true) && Some(owner.uid.as_str()) == uid)
    };
    let manifests = ctx
        .stores
        .config_maps
        .get(&ObjectRef::new(&names.config_map).within(namespace))
        .filter(|map| owned(map.owner_references()))
        .map(|map| map.data.clone().unwrap_or_default());
    let receiver = ctx
        .stores
        .deployments
        .get(&ObjectRef::new(&names.receiver).within(namespace))
        .filter(|deployment| owned(deployment.owner_references()));
    let secret_keys = match &ctx.secret_index {
        Some(index) => index.key_names(api, namespace, &names.secret).await,
        None => api.get_opt(&names.secret).await.map(|secret| {
            secret.map(|secret| secret.data.unwrap_or_default().into_keys().collect())
        }),
    }
    .map_err(Error::ReadSecrets)?;
    let loaded = ctx.pool_state.loaded(&format!("{namespace}/{name}"));
    Ok(PoolView::Found {
        name: name.into(),
        manifests,
        secret_keys,
        receiver,
        loaded,
    })
}

/// The member's `Served` condition: its current manifest in the pool's
/// ConfigMap, its signing key in the pool's Secret, and the pool's
/// receivers rolled out and available.
pub fn served_finding(view: &PoolView, valid: &ValidEndpoint) -> Finding {
    let type_ = conditions::SERVED;
    let namespace = &valid.endpoint.namespace;
    let (name, manifests, secret_keys, receiver, loaded) = match view {
        PoolView::NotFound { name } => {
            return Finding::new(
                type_,
                Status::False,
                reasons::POOL_NOT_FOUND,
                format!(
                    "spec.pool names WebhookPool {namespace}/{name}, which does not exist: create it (examples/webhookpool.yaml) or remove spec.pool"
                ),
            );
        }
        PoolView::Invalid { name, message } => {
            return Finding::new(
                type_,
                Status::False,
                reasons::POOL_NOT_READY,
                format!("WebhookPool {namespace}/{name} has an invalid spec: {message}"),
            );
        }
        PoolView::Found {
            name,
            manifests,
            secret_keys,
            receiver,
            loaded,
        } => (name, manifests, secret_keys, receiver, loaded),
    };
    let member = &valid.endpoint.name;
    let key = manifest_key(member);
    let manifest_held = manifests
        .as_ref()
        .and_then(|data| data.get(&key))
        .is_some_and(|held| *held == valid.manifest);
    if !manifest_held {
        let used: usize = manifests
            .iter()
            .flatten()
            .filter(|(held, _)| **held != key)
            .map(|(held, text)| held.len() + text.len())
            .sum();
        let absent = manifests
            .as_ref()
            .is_none_or(|data| !data.contains_key(&key));
        if absent && used + key.len() + valid.manifest.len() > pool_build::MEMBER_BUDGET_BYTES {
            return Finding::new(
                type_,
                Status::False,
                reasons::POOL_FULL,
                format!(
                    "WebhookPool {namespace}/{name} holds {used} bytes of manifests, and this one does not fit its ConfigMap (1 MiB): give it another pool, or pods of its own (remove spec.pool)"
                ),
            );
        }
        return Finding::new(
            type_,
            Status::False,
            reasons::NOT_SERVED_YET,
            format!(
                "WebhookPool {namespace}/{name}'s ConfigMap does not hold this endpoint's current manifest yet"
            ),
        );
    }
    if !secret_keys
        .as_ref()
        .is_some_and(|keys| keys.contains(member))
    {
        return Finding::new(
            type_,
            Status::False,
            reasons::NOT_SERVED_YET,
            format!(
                "WebhookPool {namespace}/{name}'s Secret does not hold this endpoint's signing secret yet"
            ),
        );
    }
    let Some(receiver) = receiver else {
        return Finding::new(
            type_,
            Status::False,
            reasons::POOL_NOT_READY,
            format!("WebhookPool {namespace}/{name} has no receiver Deployment yet"),
        );
    };
    let available = deployment_finding(
        receiver,
        conditions::RECEIVER_AVAILABLE,
        "pool receiver",
        false,
    );
    if available.status != Status::True {
        return Finding::new(
            type_,
            Status::False,
            reasons::POOL_NOT_READY,
            format!("WebhookPool {namespace}/{name}: {}", available.message),
        );
    }
    let probed = loaded.as_deref();
    if let Some(why) = probed.and_then(|loaded| loaded.skipped(&key)) {
        return Finding::new(
            type_,
            Status::False,
            reasons::NOT_SERVED_YET,
            format!(
                "WebhookPool {namespace}/{name}'s receivers skip this endpoint's manifest: {why}"
            ),
        );
    }
    match probed.and_then(|loaded| loaded.serving(&valid.endpoint.key(), &valid.manifest)) {
        Some((serving, answered)) if serving < answered => Finding::new(
            type_,
            Status::False,
            reasons::NOT_SERVED_YET,
            format!(
                "{serving} of WebhookPool {namespace}/{name}'s {answered} ready receivers serve this endpoint's current manifest; the others load it within the kubelet's sync period (about a minute)"
            ),
        ),
        Some((_, answered)) => Finding::new(
            type_,
            Status::True,
            reasons::SERVED_BY_POOL,
            format!(
                "each of WebhookPool {namespace}/{name}'s {answered} ready receivers serves this endpoint's current manifest"
            ),
        ),
        None => {
            let why = match probed {
                Some(Loaded::NotProbed(why)) => why.as_str(),
                _ => "not probed yet",
            };
            Finding::new(
                type_,
                Status::True,
                reasons::SERVED_BY_POOL,
                format!(
                    "WebhookPool {namespace}/{name} holds this endpoint's manifest and signing secret, and its receivers are available; they load a change within the kubelet's sync period (about a minute). Which manifest each serves is unknown ({why}): GET /endpoints on a receiver shows the manifestHash it serves"
                ),
            )
        }
    }
}

/// Per pool, what was last written: the Secret (hash and resource
/// version, so a steady pool writes nothing) and when its status was; and
/// what its receiver pods last said they serve.
#[derive(Default)]
pub struct Written {
    secrets: Mutex<HashMap<String, apply::Written>>,
    statuses: Mutex<HashMap<String, Instant>>,
    /// What its receivers said they serve, at its last reconcile.
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
}

impl Written {
    /// Forgets a deleted pool.
    pub fn forget(&self, key: &str) {
        self.secrets().remove(key);
        self.statuses().remove(key);
        self.loaded_by_pool().remove(key);
    }

    /// What pool `key`'s receivers said they serve, if they were asked.
    pub fn loaded(&self, key: &str) -> Option<Arc<Loaded>> {
        self.loaded_by_pool().get(key).cloned()
    }

    /// Nothing panics while holding any of the maps; if something did, it is still whole.
    fn secrets(&self) -> MutexGuard<'_, HashMap<String, apply::Written>> {
        self.secrets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn statuses(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.statuses.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn loaded_by_pool(&self) -> MutexGuard<'_, HashMap<String, Arc<Loaded>>> {
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `namespace/name` of a pool: the key of its metrics and caches.
pub fn pool_key(pool: &WebhookPool) -> String {
    format!(
        "{}/{}",
        pool.namespace().unwrap_or_default(),
        pool.name_any()
    )
}

/// The key of a pool's retry backoff (endpoints and pools share the map).
fn retry_key(key: &str) -> String {
    format!("pool:{key}")
}

/// The pool controller's reconcile: one span per pool.
pub async fn reconcile(pool: Arc<WebhookPool>, ctx: Arc<Context>) -> Result<Action> {
    let span = tracing::info_span!(
        "reconcile_pool",
        namespace = %pool.namespace().unwrap_or_default(),
        pool = %pool.name_any()
    );
    async move {
        let started = Instant::now();
        let namespace = pool
            .namespace()
            .ok_or_else(|| Error::MissingObjectKey(pool_key(&pool), ".metadata.namespace"))?;
        let api: Api<WebhookPool> = Api::namespaced(ctx.client.clone(), &namespace);
        let outcome = finalizer(&api, FINALIZER, pool, |event| async {
            match event {
                // Boxed: the steps' futures are large, and a task's stack is not.
                Finalizer::Apply(pool) => Box::pin(reconcile_pool(&pool, &ctx)).await,
                Finalizer::Cleanup(pool) => Box::pin(cleanup(&pool, &ctx)).await,
            }
        })
        .await
        .map_err(|err| Error::Finalizer(Box::new(err)));
        ctx.metrics.observe_reconcile(started.elapsed());
        outcome
    }
    .instrument(span)
    .await
}

/// The finalizer's cleanup: the pool's shared stream, if it has one, is
/// deleted when empty, else kept with its events for a pool of this name
/// made again (see [`stream::clean_up_pool`]). Its children go with it
/// (owner references); its members stay, not served, until they name
/// another pool or it comes back.
async fn cleanup(pool: &WebhookPool, ctx: &Context) -> Result<Action> {
    let namespace = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let uid = pool.metadata.uid.clone().unwrap_or_default();
    let owner = StreamOwner::new(&uid, &namespace, &name);
    let cluster = ctx.config.nats.cluster_name.as_deref();
    let note = stream::clean_up_pool(&ctx.nats, cluster, &namespace, &name, &owner)
        .await
        .map_err(Error::DeleteStream)?;
    info!("pool deleted: {note}");
    publish(
        &ctx.recorder,
        &ctx.metrics,
        pool,
        EventType::Normal,
        "Deleted",
        note,
    )
    .await;
    for candidate in candidates(ctx, &namespace, &name, None) {
        ctx.triggers
            .endpoint(&namespace, &candidate.endpoint.name_any());
    }
    // What this process keeps of the pool is forgotten on the watch's
    // deletion event, as for a pool deleted without this finalizer.
    ctx.succeeded(&retry_key(&pool_key(pool)));
    Ok(Action::await_change())
}

/// Logs and counts a failed pool reconcile, and retries it with backoff.
pub fn error_policy(pool: Arc<WebhookPool>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = pool_key(&pool);
    let delay = ctx.retry_after_failure(&retry_key(&key));
    ctx.metrics.error(error.metric_label());
    warn!(pool = %key, cause = %error, retry_in = ?delay, "pool reconcile failed");
    Action::requeue(delay)
}

/// A member candidate: the endpoint as stored, and as validated with its pool.
struct Candidate {
    endpoint: Arc<WebhookEndpoint>,
    valid: ValidEndpoint,
}

async fn reconcile_pool(pool: &WebhookPool, ctx: &Context) -> Result<Action> {
    let key = pool_key(pool);
    let namespace = pool
        .namespace()
        .ok_or_else(|| Error::MissingObjectKey(key.clone(), ".metadata.namespace"))?;
    let name = pool.name_any();
    let uid = pool
        .metadata
        .uid
        .clone()
        .ok_or_else(|| Error::MissingObjectKey(key.clone(), ".metadata.uid"))?;
    let mut valid = match validate_pool(pool) {
        Ok(valid) => valid,
        Err(invalid) => {
            info!(cause = %invalid, "invalid pool spec");
            ctx.metrics.set_pool_members(&key, Some(Vec::new()));
            let findings = vec![Finding::new(
                conditions::READY,
                Status::False,
                reasons::INVALID_SPEC,
                format!("fix the spec: {}", field_errors(&invalid)),
            )];
            write_status(ctx, pool, findings, None).await?;
            let view = PoolView::Invalid {
                name: name.clone(),
                message: field_errors(&invalid),
            };
            for candidate in candidates(ctx, &namespace, &name, None) {
                retrigger_if_changed(ctx, &candidate, &view);
            }
            return Ok(Action::requeue(INVALID_SPEC_RECHECK));
        }
    };
    let cluster = ctx.config.nats.cluster_name.as_deref();
    let shared = ctx.shared.mode(&ctx.nats, cluster, pool).await;
    // A pool whose shared stream exists keeps it, with the defaults, even
    // without spec.stream.
    valid.pool.stream = shared.map(|mode| mode.limits);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Some(index) = &ctx.secret_index {
        index.wait_until_ready().await;
    }
    let secret_check = secrets::check_references(
        &api,
        ctx.secret_index.as_ref(),
        &namespace,
        references(&valid, ctx),
        None,
    )
    .await
    .map_err(Error::ReadSecrets)?;
    let candidates = candidates(ctx, &namespace, &name, Some(&valid.pool));
    let mut members = Vec::with_capacity(candidates.len());
    for candidate in &candidates {
        let signing = &candidate.valid.endpoint.secret;
        let value = match &ctx.secret_index {
            Some(index) => {
                index
                    .value(&api, &namespace, &signing.name, &signing.key)
                    .await
            }
            None => api.get_opt(&signing.name).await.map(|secret| {
                secret
                    .and_then(|secret| secret.data)
                    .and_then(|mut data| data.remove(&signing.key))
                    .map(|value| value.0)
            }),
        }
        .map_err(Error::ReadSecrets)?;
        // Without its signing secret a member is not served; its own
        // `SecretResolved` says why.
        if let Some(signing_secret) = value {
            members.push(Member {
                name: candidate.valid.endpoint.name.clone(),
                manifest: candidate.valid.manifest.clone(),
                signing_secret,
            });
        }
    }
    let (served, _full) = pool_build::admit(members);
    ctx.metrics.set_pool_members(
        &key,
        Some(
            served
                .iter()
                .map(|member| format!("{namespace}/{}", member.name))
                .collect(),
        ),
    );
    let keda = ctx
        .keda
        .installed(&ctx.client)
        .await
        .map_err(Error::DiscoverKeda)?;
    let PoolChildren {
        mut workload,
        secret,
    } = pool_build::build(&valid, &served, &ctx.config, Cluster { keda });
    let mut notes = Vec::new();
    let stream_finding = match shared {
        Some(mode) => {
            let held = held_manifests(ctx, &namespace, &name, &uid);
            let stream = ensure_pool_stream(ctx, &valid, &uid, &served).await;
            let data = workload.config_map.data.get_or_insert_with(BTreeMap::new);
            match &stream {
                // Each new member's subject is listed now, before its
                // receivers can load its manifest.
                PoolStream::Ready {
                    member_messages, ..
                } => {
                    record_listed_pending(ctx, &namespace, &served, member_messages);
                    let draining = draining(&held, data, member_messages);
                    if !draining.is_empty() {
                        notes.push(format!(
                            "keeps draining {} that left: {}",
                            draining.len(),
                            draining.join(", ")
                        ));
                    }
                }
                // Not listed: the receivers keep what they load now.
                _ => *data = held,
            }
            if mode.turned_off {
                notes.push(format!(
                    "spec.stream was removed, but its shared stream {} stays with the default limits: a pool's shared stream cannot be turned off (move the members to another pool)",
                    pool_stream_name(&valid, cluster)
                ));
            }
            Some(stream.finding(&valid, cluster, &ctx.config.nats.url, served.len()))
        }
        None => {
            ctx.shared.forget_stream(&key);
            None
        }
    };
    ctx.stores.wait_until_ready(keda, SCALER_CACHE_WAIT).await;
    let applier = Applier {
        client: &ctx.client,
        stores: &ctx.stores,
        metrics: &ctx.metrics,
        namespace: &namespace,
        owner_uid: &uid,
    };
    // Before the pods that mount it.
    let mut secret_failure = apply_secret(ctx, &applier, &key, secret).await;
    let manifests_desired: BTreeMap<String, String> =
        workload.config_map.data.clone().unwrap_or_default();
    let mut applied = Box::pin(applier.apply(Children {
        ingress: None,
        workload: Some(workload),
    }))
    .await;
    applied.failures.extend(secret_failure.take());
    let loaded = match &applied.receiver {
        Some(receiver) => {
            let loaded = Arc::new(probe::probe(&ctx.client, &namespace, receiver).await);
            ctx.pool_state
                .loaded_by_pool()
                .insert(key.clone(), loaded.clone());
            Some(loaded)
        }
        None => None,
    };
    // Until every ready receiver serves every member's current manifest,
    // they are asked again soon, not at the next resync.
    let catching_up = loaded.as_deref().is_some_and(|loaded| {
        loaded.lags_behind(served.iter().map(|member| {
            (
                format!("{namespace}/{}", member.name),
                manifest_key(&member.name),
                member.manifest.as_str(),
            )
        }))
    });
    let keda_scales = applied.scaler.is_some();
    let findings = pool_findings(
        &valid,
        &applied,
        &secret_check,
        stream_finding,
        keda_scales,
        served.len(),
        candidates.len(),
        &notes,
    );
    let ready = findings
        .first()
        .is_some_and(|finding| finding.status == Status::True);
    let lag = ctx.metrics.pool_lag(&key).map(|(lag, _)| lag);
    write_status(
        ctx,
        pool,
        findings,
        Some(Counts {
            members: candidates.len(),
            served: served.len(),
            pending: lag,
        }),
    )
    .await?;
    let failed = |kind: &str| applied.failures.iter().any(|failure| failure.kind == kind);
    let view = PoolView::Found {
        name: name.clone(),
        manifests: (!failed("ConfigMap")).then_some(manifests_desired),
        secret_keys: (!failed("Secret"))
            .then(|| served.iter().map(|member| member.name.clone()).collect()),
        receiver: applied.receiver.clone().map(Arc::new),
        loaded,
    };
    for candidate in &candidates {
        retrigger_if_changed(ctx, candidate, &view);
    }
    if ready {
        ctx.succeeded(&retry_key(&key));
        Ok(Action::requeue(if catching_up {
            PROBE_AGAIN
        } else {
            jitter(ctx.resync)
        }))
    } else {
        Ok(Action::requeue(ctx.retry_after_failure(&retry_key(&key))))
    }
}

/// What the pool's shared stream step found.
enum PoolStream {
    /// Made or updated, listing every served member's subjects.
    Ready {
        messages: u64,
        /// Messages per member token, read with the stream's info.
        member_messages: HashMap<String, u64>,
        /// Why the stream's one durable is not as wanted (a reason and a
        /// message), if it is not: nothing drains the stream meanwhile.
        durable_trouble: Option<(&'static str, String)>,
    },
    /// NATS is not reachable.
    Unreachable(String),
    /// NATS answered, and refused.
    Refused(String),
    /// The stream carries another owner's mark: left alone.
    OwnedElsewhere(String),
}

impl PoolStream {
    /// The pool's `StreamReady` condition.
    fn finding(
        &self,
        valid: &ValidPool,
        cluster: Option<&str>,
        url: &str,
        served: usize,
    ) -> Finding {
        let type_ = conditions::STREAM_READY;
        let name = pool_stream_name(valid, cluster);
        match self {
            PoolStream::Ready {
                messages,
                durable_trouble: None,
                ..
            } => Finding::new(
                type_,
                Status::True,
                reasons::STREAM_PROVISIONED,
                format!(
                    "shared stream {name} lists the subjects of {served} served member(s) and holds {messages} event(s), drained through its durable {}",
                    naming::DURABLE_CONSUMER
                ),
            ),
            PoolStream::Ready {
                durable_trouble: Some((reason, message)),
                ..
            } => Finding::new(
                type_,
                Status::False,
                reason,
                format!(
                    "shared stream {name} lists the subjects of {served} served member(s), but nothing drains it: {message}"
                ),
            ),
            PoolStream::Unreachable(cause) => Finding::new(
                type_,
                Status::False,
                reasons::NATS_UNREACHABLE,
                format!(
                    "cannot reach NATS at {url} ({cause}); the pool's ConfigMap keeps its members until their subjects can be listed"
                ),
            ),
            PoolStream::Refused(message) => Finding::new(
                type_,
                Status::False,
                reasons::STREAM_REFUSED,
                message.clone(),
            ),
            PoolStream::OwnedElsewhere(message) => Finding::new(
                type_,
                Status::False,
                reasons::STREAM_OWNED_ELSEWHERE,
                message.clone(),
            ),
        }
    }
}

/// `HOOKLINE_<ns>_POOL_<pool>`, in the operator's cluster.
fn pool_stream_name(valid: &ValidPool, cluster: Option<&str>) -> String {
    naming::pool_stream_name_in(cluster, &valid.pool.namespace, &valid.pool.name)
}

/// Makes or updates the pool's shared stream, marked as the pool's, to
/// list one subject filter per served member (and no other: a member that
/// left gets no more events here), records its figures and its messages per
/// member for the members' reconciles, which then make no call, and keeps
/// its one durable ([`provision::ensure_pool_consumer`]). A steady state
/// costs one STREAM.INFO (with the per-subject counts) and one CONSUMER.LIST.
async fn ensure_pool_stream(
    ctx: &Context,
    valid: &ValidPool,
    uid: &str,
    served: &[Member],
) -> PoolStream {
    if ctx.nats.connection_state() != async_nats::connection::State::Connected {
        return PoolStream::Unreachable("not connected to NATS".into());
    }
    let cluster = ctx.config.nats.cluster_name.as_deref();
    let pool = &valid.pool;
    let key = format!("{}/{}", pool.namespace, pool.name);
    let name = pool_stream_name(valid, cluster);
    let prefix = naming::pool_subject_prefix_in(cluster, &pool.namespace, &pool.name);
    let subjects = shared::pool_subjects(
        cluster,
        &pool.namespace,
        &pool.name,
        served.iter().map(|member| member.name.as_str()),
    );
    let config =
        provision::pool_stream_config(&name, subjects, &key, pool.stream.unwrap_or_default());
    let owner = StreamOwner::new(uid, &pool.namespace, &pool.name);
    let js = jetstream::new(ctx.nats.clone());
    let taken = Instant::now();
    let unreachable = |err: &provision::ProvisionError| {
        err.is_timeout() || ctx.nats.connection_state() != async_nats::connection::State::Connected
    };
    match provision::ensure_pool_stream(&js, config, &prefix, Some(&owner)).await {
        Ok(Ok(state)) => {
            let info = state.info;
            ctx.shared
                .set_figures(&key, info.state.messages, info.state.bytes);
            ctx.shared
                .set_listing(&key, taken, state.member_messages.clone());
            let max_replicas = u32::try_from(pool.consumer.scaling.max_replicas).unwrap_or(1);
            let wanted = provision::pool_consumer_config(&key, max_replicas);
            // After the subjects are written: the durable takes the whole stream.
            let durable_trouble = match provision::ensure_pool_consumer(&js, &name, &wanted).await {
                Ok(_) => None,
                Err(err) => {
                    warn!(stream = %name, cause = %err, "cannot keep the pool stream's durable; trying again");
                    Some(if unreachable(&err) {
                        (
                            reasons::NATS_UNREACHABLE,
                            format!("cannot reach NATS at {} ({err})", ctx.config.nats.url),
                        )
                    } else {
                        (
                            reasons::STREAM_REFUSED,
                            format!(
                                "{err}; the pool's consumer needs durable {} alone on the stream (a work queue takes no other consumer beside an unfiltered one)",
                                naming::DURABLE_CONSUMER
                            ),
                        )
                    })
                }
            };
            PoolStream::Ready {
                messages: info.state.messages,
                member_messages: state.member_messages,
                durable_trouble,
            }
        }
        Ok(Err(mark)) => PoolStream::OwnedElsewhere(format!(
            "stream {name} belongs to {mark} (another cluster on this NATS, or an earlier pool of this name) and is left untouched; delete that stream if nobody needs it, or give this pool a different name or namespace"
        )),
        Err(err) if unreachable(&err) => PoolStream::Unreachable(err.to_string()),
        Err(err) => PoolStream::Refused(format!(
            "NATS refused the pool's shared stream: {err}; the pool's ConfigMap keeps its members until their subjects can be listed"
        )),
    }
}

/// What the pool's ConfigMap holds now (the cache's copy), if it is the pool's.
fn held_manifests(
    ctx: &Context,
    namespace: &str,
    name: &str,
    uid: &str,
) -> BTreeMap<String, String> {
    ctx.stores
        .config_maps
        .get(&ObjectRef::new(&PoolNames::of(name).config_map).within(namespace))
        .filter(|map| {
            map.owner_references()
                .iter()
                .any(|owner| owner.controller == Some(true) && owner.uid == uid)
        })
        .and_then(|map| map.data.clone())
        .unwrap_or_default()
}

/// Records each served member's pending count as the pool's listing just
/// read it (its messages in the pool's stream), so the pool's lag (KEDA's,
/// and its status `pending`) is never older than this listing; the
/// member's own reconcile would take it from the listing it finds, up to
/// one resync later. A member whose own stream is not known gone is left
/// to its reconcile, which adds that stream's events to its pending.
fn record_listed_pending(
    ctx: &Context,
    namespace: &str,
    served: &[Member],
    member_messages: &HashMap<String, u64>,
) {
    for member in served {
        let own_stream_gone = ctx
            .endpoints
            .get(&ObjectRef::new(&member.name).within(namespace))
            .and_then(|endpoint| endpoint.metadata.uid.clone())
            .is_some_and(|uid| ctx.shared.own_stream_gone(&uid));
        if own_stream_gone {
            let pending = member_messages
                .get(&naming::pool_member_token(&member.name))
                .copied()
                .unwrap_or(0);
            ctx.metrics.set_pending(
                &format!("{namespace}/{}", member.name),
                i64::try_from(pending).ok(),
            );
        }
    }
}

/// Keeps in `data` (the ConfigMap to write) the held manifest of each
/// endpoint that is no longer served but still has events in the pool's
/// stream (`member_messages`, this reconcile's listing), so the pool's
/// consumer writes them under that manifest; the stream's one durable
/// delivers every event, and one whose member has no manifest would only be
/// retried. That covers a member that left the pool, one no longer valid
/// for it, and one deleted with `deletionPolicy: Retain` (its events are
/// kept, and drained). One deleted with `Delete` has nothing left once its
/// finalizer purged its subjects, and goes at the pool reconcile the
/// finalizer asks for; an event that still slipped in after the purge is
/// written rather than left in the stream for good. Returns the names kept.
fn draining(
    held: &BTreeMap<String, String>,
    data: &mut BTreeMap<String, String>,
    member_messages: &HashMap<String, u64>,
) -> Vec<String> {
    let mut kept = Vec::new();
    for (key, manifest) in held {
        if data.contains_key(key) {
            continue;
        }
        let Some(member) = key.strip_suffix(".yaml") else {
            continue;
        };
        let messages = member_messages
            .get(&naming::pool_member_token(member))
            .copied()
            .unwrap_or(0);
        if messages > 0 {
            debug!(
                member,
                messages, "keeping the manifest of a member that left while its events drain"
            );
            data.insert(key.clone(), manifest.clone());
            kept.push(member.to_owned());
        }
    }
    kept
}

/// Every Secret the pool's pods read: the database URL, NATS, image pulls.
fn references(valid: &ValidPool, ctx: &Context) -> Vec<secrets::Reference> {
    let database = &valid.pool.consumer.database_secret_ref;
    let mut all = vec![secrets::Reference {
        name: database.name.clone(),
        keys: vec![database.key.clone()],
        source: "spec.consumer.databaseSecretRef".into(),
    }];
    all.extend(secrets::pod_references(&ctx.config));
    all
}

/// The endpoints of `namespace` that name pool `name`, not being deleted,
/// that validate as its members, oldest first (so a newer member never
/// displaces a served one when the pool is full). Never another namespace's.
fn candidates(
    ctx: &Context,
    namespace: &str,
    name: &str,
    pool: Option<&ValidatedPool>,
) -> Vec<Candidate> {
    let mut all: Vec<Candidate> = ctx
        .endpoints
        .state()
        .into_iter()
        .filter(|endpoint| endpoint.namespace().as_deref() == Some(namespace))
        .filter(|endpoint| endpoint.spec.pool.as_deref() == Some(name))
        .filter(|endpoint| endpoint.metadata.deletion_timestamp.is_none())
        .filter_map(|endpoint| {
            let valid = validate_in(&endpoint, pool)
                .ok()?
                .in_cluster(ctx.config.nats.cluster_name.as_deref());
            Some(Candidate { endpoint, valid })
        })
        .collect();
    all.sort_by(|a, b| {
        let created = |candidate: &Candidate| {
            candidate
                .endpoint
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|time| time.0)
        };
        created(a)
            .cmp(&created(b))
            .then_with(|| a.valid.endpoint.name.cmp(&b.valid.endpoint.name))
    });
    all
}

/// Asks for a member's reconcile when its stored `Served` condition is not
/// what `view` makes it.
fn retrigger_if_changed(ctx: &Context, candidate: &Candidate, view: &PoolView) {
    let finding = served_finding(view, &candidate.valid);
    let stored = candidate.endpoint.status.as_ref().and_then(|status| {
        status
            .conditions
            .iter()
            .find(|condition| condition.type_ == conditions::SERVED)
    });
    // The message too: it says how many receivers serve the member, which
    // the pool's probe learns after the member's own reconcile.
    let same = stored.is_some_and(|condition| {
        condition.status == finding.status.as_str()
            && condition.reason == finding.reason
            && condition.message == finding.message
    });
    if !same {
        ctx.triggers.endpoint(
            &candidate.valid.endpoint.namespace,
            &candidate.valid.endpoint.name,
        );
    }
}

/// Writes the pool Secret through the apply step, only when what it would
/// write changed since this replica last wrote it (its values are never
/// cached, so the Secret watch's metadata and that memory decide; see
/// [`Applier::apply_uncached`]). Never writes over a Secret the pool does
/// not control.
async fn apply_secret(
    ctx: &Context,
    applier: &Applier<'_>,
    key: &str,
    desired: Secret,
) -> Option<ApplyFailure> {
    let seen = ctx.secret_index.as_ref().and_then(|index| {
        index
            .metadata(applier.namespace, &desired.name_any())
            .map(|meta| meta.as_ref().clone())
    });
    let last = ctx.pool_state.secrets().get(key).cloned();
    match applier.apply_uncached(desired, seen, last.as_ref()).await {
        Ok(Some(written)) => {
            ctx.pool_state.secrets().insert(key.to_owned(), written);
            None
        }
        Ok(None) => None,
        Err(failure) => Some(failure),
    }
}

/// The pool's conditions, `Ready` first.
#[allow(clippy::too_many_arguments)]
fn pool_findings(
    valid: &ValidPool,
    applied: &apply::Applied,
    secrets: &SecretCheck,
    stream: Option<Finding>,
    keda_scales: bool,
    served: usize,
    members: usize,
    notes: &[String],
) -> Vec<Finding> {
    let namespace = &valid.pool.namespace;
    let secret = if secrets.problems.is_empty() {
        Finding::new(
            conditions::SECRET_RESOLVED,
            Status::True,
            reasons::RESOLVED,
            "every referenced Secret has its keys".into(),
        )
    } else {
        let reason = if secrets
            .problems
            .iter()
            .any(|problem| matches!(problem, secrets::Problem::NotFound { .. }))
        {
            reasons::SECRET_NOT_FOUND
        } else {
            reasons::SECRET_KEY_MISSING
        };
        Finding::new(
            conditions::SECRET_RESOLVED,
            Status::False,
            reason,
            secrets
                .problems
                .iter()
                .map(|problem| problem.describe(namespace))
                .collect::<Vec<_>>()
                .join("; "),
        )
    };
    let parts: Vec<Finding> = std::iter::once(secret)
        .chain(stream)
        .chain([
            applied_deployment_finding(
                applied.receiver.as_ref(),
                conditions::RECEIVER_AVAILABLE,
                "pool receiver",
                false,
            ),
            applied_deployment_finding(
                applied.consumer.as_ref(),
                conditions::CONSUMER_AVAILABLE,
                "pool consumer",
                keda_scales,
            ),
        ])
        .collect();
    let not_applied = status::failures_finding(&applied.failures, namespace);
    let blocking = not_applied
        .as_ref()
        .or_else(|| parts.iter().find(|finding| finding.status != Status::True));
    let mut ready = status::ready_finding(blocking, || {
        format!(
            "serves {served} of {members} member(s) with {} receiver(s) and {} consumer(s)",
            valid.pool.receiver.replicas,
            if keda_scales {
                format!(
                    "{} to {} KEDA-scaled",
                    valid.pool.consumer.scaling.min_replicas,
                    valid.pool.consumer.scaling.max_replicas
                )
            } else {
                consumer_count(valid).to_string()
            }
        )
    });
    for note in notes {
        ready.message.push_str("; ");
        ready.message.push_str(note);
    }
    std::iter::once(ready).chain(parts).collect()
}

/// Pool consumers without KEDA (or without `--service-url`).
fn consumer_count(valid: &ValidPool) -> i32 {
    valid.pool.consumer.scaling.min_replicas.max(1)
}

/// The pool's figures for its status.
struct Counts {
    members: usize,
    served: usize,
    pending: Option<i64>,
}

/// Writes the pool's status when it differs from the stored one (the
/// pending sum alone at most once per resync), and an Event for each
/// condition that changed for the worse.
async fn write_status(
    ctx: &Context,
    pool: &WebhookPool,
    findings: Vec<Finding>,
    counts: Option<Counts>,
) -> Result<()> {
    let key = pool_key(pool);
    let previous = pool.status.as_ref();
    let previous_conditions = previous
        .map(|status| status.conditions.as_slice())
        .unwrap_or_default();
    let generation = pool.metadata.generation;
    let now = k8s_openapi::jiff::Timestamp::now();
    let now = Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now));
    let events: Vec<Finding> = status::transitions(&findings, previous_conditions)
        .into_iter()
        .cloned()
        .collect();
    let count = |value: usize| i32::try_from(value).ok();
    let mut desired = WebhookPoolStatus {
        observed_generation: generation,
        members: counts.as_ref().and_then(|counts| count(counts.members)),
        served: counts.as_ref().and_then(|counts| count(counts.served)),
        pending: counts.as_ref().and_then(|counts| counts.pending),
        conditions: status::stamp(findings, previous_conditions, generation, &now),
    };
    let recently = ctx
        .pool_state
        .statuses()
        .get(&key)
        .is_some_and(|at| at.elapsed() < ctx.resync);
    if let Some(previous) = previous
        && recently
    {
        desired.pending = previous.pending;
    }
    if previous == Some(&desired) {
        return Ok(());
    }
    let api: Api<WebhookPool> =
        Api::namespaced(ctx.client.clone(), &pool.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": WebhookPool::api_version(&()),
        "kind": WebhookPool::kind(&()),
        "status": desired,
    });
    api.patch_status(
        &pool.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::UpdateStatus)?;
    ctx.metrics.write("WebhookPool/status");
    ctx.pool_state.statuses().insert(key, Instant::now());
    for finding in events {
        let type_ = match finding.status {
            Status::True => EventType::Normal,
            Status::False | Status::Unknown => EventType::Warning,
        };
        publish(
            &ctx.recorder,
            &ctx.metrics,
            pool,
            type_,
            finding.reason,
            finding.message,
        )
        .await;
    }
    Ok(())
}

/// Every wrong field, on one line.
fn field_errors(invalid: &hookline_api::InvalidSpec) -> String {
    invalid
        .0
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::PodServes;
    use serde_json::json;

    fn member() -> ValidEndpoint {
        let resource = hookline_api::parse_manifest(
            "apiVersion: hookline.io/v1alpha1\nkind: WebhookEndpoint\nmetadata: {name: a, namespace: shop}\nspec: {provider: github, secretRef: {name: s}, pool: shared}\n",
        )
        .expect("manifest");
        crate::validate::validate(&resource).expect("valid")
    }

    fn available() -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "shared-pool-receiver", "generation": 1},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
                "availableReplicas": 2, "readyReplicas": 2},
        }))
        .expect("deployment")
    }

    fn found(manifests: Option<BTreeMap<String, String>>, keys: &[&str]) -> PoolView {
        PoolView::Found {
            name: "shared".into(),
            manifests,
            secret_keys: Some(keys.iter().map(|key| (*key).to_owned()).collect()),
            receiver: Some(Arc::new(available())),
            loaded: None,
        }
    }

    #[test]
    fn served_says_what_the_pool_holds_and_why_not() {
        let valid = member();
        let held = BTreeMap::from([("a.yaml".to_owned(), valid.manifest.clone())]);
        let reason = |view: &PoolView| served_finding(view, &valid).reason;
        assert_eq!(
            reason(&PoolView::NotFound {
                name: "shared".into()
            }),
            reasons::POOL_NOT_FOUND
        );
        assert_eq!(
            reason(&PoolView::Invalid {
                name: "shared".into(),
                message: "x".into()
            }),
            reasons::POOL_NOT_READY
        );
        assert_eq!(reason(&found(None, &["a"])), reasons::NOT_SERVED_YET);
        assert_eq!(
            reason(&found(Some(held.clone()), &[])),
            reasons::NOT_SERVED_YET,
            "no signing secret yet"
        );
        let stale = BTreeMap::from([("a.yaml".to_owned(), "older".to_owned())]);
        assert_eq!(reason(&found(Some(stale), &["a"])), reasons::NOT_SERVED_YET);
        let full = BTreeMap::from([(
            "b.yaml".to_owned(),
            "x".repeat(pool_build::MEMBER_BUDGET_BYTES),
        )]);
        assert_eq!(reason(&found(Some(full), &["a"])), reasons::POOL_FULL);
        let finding = served_finding(&found(Some(held.clone()), &["a"]), &valid);
        assert_eq!(
            (finding.status, finding.reason),
            (Status::True, reasons::SERVED_BY_POOL)
        );
        let rolling = PoolView::Found {
            name: "shared".into(),
            manifests: Some(held),
            secret_keys: Some(BTreeSet::from(["a".to_owned()])),
            receiver: None,
            loaded: None,
        };
        assert_eq!(reason(&rolling), reasons::POOL_NOT_READY);
    }

    #[test]
    fn served_waits_until_every_ready_receiver_serves_the_current_manifest() {
        let valid = member();
        let key = valid.endpoint.key();
        let held = BTreeMap::from([(manifest_key(&valid.endpoint.name), valid.manifest.clone())]);
        let probed = |pods: &[&str]| {
            let mut view = found(Some(held.clone()), &[valid.endpoint.name.as_str()]);
            if let PoolView::Found { loaded, .. } = &mut view {
                *loaded = Some(Arc::new(Loaded::Pods(
                    pods.iter()
                        .map(|manifest| PodServes {
                            served: HashMap::from([(
                                key.clone(),
                                hookline_api::pool_dir::manifest_hash(manifest),
                            )]),
                            skipped: HashMap::new(),
                        })
                        .collect(),
                )));
            }
            served_finding(&view, &valid)
        };
        let behind = probed(&[&valid.manifest, "an older manifest"]);
        assert_eq!(
            (behind.status, behind.reason),
            (Status::False, reasons::NOT_SERVED_YET)
        );
        assert!(behind.message.starts_with("1 of "), "{}", behind.message);
        let served = probed(&[&valid.manifest, &valid.manifest]);
        assert_eq!(
            (served.status, served.reason),
            (Status::True, reasons::SERVED_BY_POOL)
        );
        assert!(
            served.message.contains("2 ready receivers"),
            "{}",
            served.message
        );

        let mut view = found(Some(held.clone()), &[valid.endpoint.name.as_str()]);
        if let PoolView::Found { loaded, .. } = &mut view {
            *loaded = Some(Arc::new(Loaded::Pods(vec![PodServes {
                served: HashMap::new(),
                skipped: HashMap::from([(
                    manifest_key(&valid.endpoint.name),
                    "shop/b is already served on that host and path".to_owned(),
                )]),
            }])));
        }
        let skipped = served_finding(&view, &valid);
        assert_eq!(skipped.reason, reasons::NOT_SERVED_YET);
        assert!(
            skipped
                .message
                .ends_with("shop/b is already served on that host and path"),
            "{}",
            skipped.message
        );
    }
}

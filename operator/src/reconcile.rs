//! One reconcile: validate → secrets → stream → build → apply → status, inside
//! the finalizer that deletes the stream when the endpoint goes. It never
//! branches on why it ran; what it cannot fix it reports and requeues.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedSender;
use hookline_api::naming;
use hookline_api::pool::WebhookPool;
use hookline_api::provision::StreamOwner;
use hookline_api::spec::{DeletionPolicy, WebhookEndpoint};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use rand::Rng;
use tracing::{Instrument, info, warn};

use crate::apply::{Applier, ChildStores};
use crate::build::{self, Cluster};
use crate::config::OperatorConfig;
use crate::keda;
use crate::metrics::{Metrics, Readiness};
use crate::status::write::{Details, StatusWriter, WrittenStatuses, publish};
use crate::status::{self, Observed, Status};
use crate::validate::{validate_in, validate_pool};
use crate::{Error, Result, pool, secrets, shared, stream};

/// Removes the endpoint's stream before the resource goes.
pub const FINALIZER: &str = "hookline.io/stream";
/// First retry after a failure; doubles per consecutive failure.
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// The longest wait between retries of a failing endpoint.
const MAX_RETRY: Duration = Duration::from_secs(300);
/// How long an invalid spec waits before it is looked at again (any edit
/// triggers a reconcile at once).
const INVALID_SPEC_RECHECK: Duration = Duration::from_secs(300);
/// How long a reconcile waits for the ScaledObject cache, which starts only
/// once its watch has found KEDA; past it the apply step asks the API server.
const SCALER_CACHE_WAIT: Duration = Duration::from_secs(5);

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub nats: async_nats::Client,
    pub stores: ChildStores,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// How often a Ready endpoint is looked at again, to refresh its figures.
    pub resync: Duration,
    /// Consecutive failures per endpoint, for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
    written: WrittenStatuses,
    pub(crate) keda: keda::Discovery,
    streams: stream::KnownStreams,
    /// The Secret watch's cache; without it every reconcile reads the Secrets.
    pub(crate) secret_index: Option<secrets::SecretIndex>,
    /// WebhookPools and WebhookEndpoints as the controllers' watches see
    /// them: a member reads its pool, a pool its members.
    pub(crate) pools: Store<WebhookPool>,
    pub(crate) endpoints: Store<WebhookEndpoint>,
    /// Asks the other controller to reconcile an object.
    pub(crate) triggers: Triggers,
    /// Per pool, what was last written of it (status, Secret).
    pub(crate) pool_state: pool::Written,
    /// Shared pool streams: which pools have one, their figures, and the
    /// members' own streams on their way out.
    pub shared: shared::SharedStreams,
}

/// Senders into the controllers' `reconcile_on` streams; absent in tests
/// that drive `reconcile` by hand.
#[derive(Clone, Default)]
pub struct Triggers {
    pub pools: Option<UnboundedSender<ObjectRef<WebhookPool>>>,
    pub endpoints: Option<UnboundedSender<ObjectRef<WebhookEndpoint>>>,
}

impl Triggers {
    /// Reconciles WebhookPool `name` of `namespace` soon.
    pub fn pool(&self, namespace: &str, name: &str) {
        if let Some(sender) = &self.pools {
            // Err: the controller is stopping.
            let _ = sender.unbounded_send(ObjectRef::new(name).within(namespace));
        }
    }

    /// Reconciles WebhookEndpoint `name` of `namespace` soon.
    pub fn endpoint(&self, namespace: &str, name: &str) {
        if let Some(sender) = &self.endpoints {
            let _ = sender.unbounded_send(ObjectRef::new(name).within(namespace));
        }
    }
}

impl Context {
    pub fn new(
        client: Client,
        config: OperatorConfig,
        nats: async_nats::Client,
        stores: ChildStores,
        metrics: Arc<Metrics>,
        recorder: Recorder,
        resync: Duration,
    ) -> Context {
        Context {
            client,
            config,
            nats,
            stores,
            metrics,
            recorder,
            resync,
            failures: Mutex::default(),
            written: WrittenStatuses::default(),
            keda: keda::Discovery::default(),
            streams: stream::KnownStreams::default(),
            secret_index: None,
            pools: reflector::store().0,
            endpoints: reflector::store().0,
            triggers: Triggers::default(),
            pool_state: pool::Written::default(),
            shared: shared::SharedStreams::default(),
        }
    }

    /// Reads pools and their members from the watches' caches.
    pub fn with_pools(
        self,
        pools: Store<WebhookPool>,
        endpoints: Store<WebhookEndpoint>,
    ) -> Context {
        Context {
            pools,
            endpoints,
            ..self
        }
    }

    /// Lets each controller ask the other for a reconcile.
    pub fn with_triggers(self, triggers: Triggers) -> Context {
        Context { triggers, ..self }
    }

    /// Reads which Secrets exist from the Secret watch's cache.
    pub fn with_secret_index(self, index: secrets::SecretIndex) -> Context {
        Context {
            secret_index: Some(index),
            ..self
        }
    }

    /// The delay before the next attempt, growing with consecutive failures.
    pub(crate) fn retry_after_failure(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let count = failures.entry(key.to_owned()).or_default();
        *count = count.saturating_add(1);
        jitter(
            FIRST_RETRY
                .saturating_mul(2u32.saturating_pow(count.saturating_sub(1).min(16)))
                .min(MAX_RETRY),
        )
    }

    pub(crate) fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    pub(crate) fn status_writer(&self) -> StatusWriter<'_> {
        StatusWriter {
            client: &self.client,
            recorder: &self.recorder,
            metrics: &self.metrics,
            written: &self.written,
            resync: self.resync,
        }
    }

    async fn publish(
        &self,
        endpoint: &WebhookEndpoint,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        publish(&self.recorder, &self.metrics, endpoint, type_, reason, note).await;
    }
}

/// `delay` spread by ±10 %, so endpoints reconciled together (after a
/// restart) do not stay in step.
pub(crate) fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::rng().random_range(0.9..1.1))
}

/// `namespace/name`: the key of an endpoint's metrics and caches.
pub(crate) fn key(endpoint: &WebhookEndpoint) -> String {
    format!(
        "{}/{}",
        endpoint.namespace().unwrap_or_default(),
        endpoint.name_any()
    )
}

/// The controller's reconcile: one span per endpoint carrying its namespace
/// and name (as `endpoint`: a span's own name is `reconcile`).
pub async fn reconcile(endpoint: Arc<WebhookEndpoint>, ctx: Arc<Context>) -> Result<Action> {
    let span = tracing::info_span!(
        "reconcile",
        namespace = %endpoint.namespace().unwrap_or_default(),
        endpoint = %endpoint.name_any()
    );
    async move {
        let started = Instant::now();
        let namespace = endpoint
            .namespace()
            .ok_or_else(|| Error::MissingObjectKey(key(&endpoint), ".metadata.namespace"))?;
        let api: Api<WebhookEndpoint> = Api::namespaced(ctx.client.clone(), &namespace);
        let outcome = finalizer(&api, FINALIZER, endpoint, |event| async {
            match event {
                // Boxed: the steps' futures are large, and a task's stack is not.
                Finalizer::Apply(endpoint) => Box::pin(reconcile_endpoint(&endpoint, &ctx)).await,
                Finalizer::Cleanup(endpoint) => Box::pin(cleanup(&endpoint, &ctx)).await,
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

/// Logs and counts a failed reconcile, and retries it with backoff.
pub fn error_policy(endpoint: Arc<WebhookEndpoint>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key(&endpoint);
    let delay = ctx.retry_after_failure(&key);
    ctx.metrics.error(error.metric_label());
    warn!(endpoint = %key, cause = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_endpoint(endpoint: &WebhookEndpoint, ctx: &Context) -> Result<Action> {
    let key = key(endpoint);
    let namespace = endpoint.namespace().unwrap_or_default();
    let served_by = endpoint
        .status
        .as_ref()
        .and_then(|status| status.served_by.as_deref());
    // The pool it left reconsiders its members.
    if served_by.is_some() && served_by != endpoint.spec.pool.as_deref() {
        ctx.triggers.pool(&namespace, served_by.unwrap_or_default());
    }
    let pool = endpoint
        .spec
        .pool
        .as_ref()
        .and_then(|pool| ctx.pools.get(&ObjectRef::new(pool).within(&namespace)));
    let cluster = ctx.config.nats.cluster_name.as_deref();
    let shared = match pool.as_deref() {
        Some(pool) => ctx.shared.mode(&ctx.nats, cluster, pool).await,
        None => None,
    };
    let pool_valid = pool
        .as_deref()
        .and_then(|pool| validate_pool(pool).ok())
        .map(|valid| {
            let mut pool = valid.pool;
            pool.stream = shared.map(|mode| mode.limits);
            pool
        });
    let valid = match validate_in(endpoint, pool_valid.as_ref()) {
        Ok(valid) => {
            let valid = valid.in_cluster(cluster);
            match shared {
                Some(mode) => valid.in_shared_stream(cluster, mode.limits),
                None => valid,
            }
        }
        Err(invalid) => {
            info!(cause = %invalid, "invalid spec");
            // Its pool stops serving it.
            if let Some(pool) = &endpoint.spec.pool {
                ctx.triggers.pool(&namespace, pool);
            }
            let findings = status::invalid_findings(&invalid);
            ctx.status_writer().write(endpoint, findings, None).await?;
            ctx.metrics.set_readiness(&key, Some(Readiness::NotReady));
            return Ok(Action::requeue(INVALID_SPEC_RECHECK));
        }
    };
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &valid.endpoint.namespace);
    if let Some(index) = &ctx.secret_index {
        index.wait_until_ready().await;
    }
    let secrets = secrets::check(&secrets_api, ctx.secret_index.as_ref(), &valid, &ctx.config)
        .await
        .map_err(Error::ReadSecrets)?;
    if let Some(name) = &secrets.generated {
        ctx.metrics.write("Secret");
        ctx.publish(
            endpoint,
            EventType::Normal,
            hookline_api::conditions::reasons::SECRET_GENERATED,
            format!("generated signing Secret {name}"),
        )
        .await;
    }
    let owner_uid = valid
        .owner
        .as_ref()
        .map(|owner| owner.uid.clone())
        .ok_or_else(|| Error::MissingObjectKey(key.clone(), ".metadata.uid"))?;
    let stream_owner =
        StreamOwner::new(&owner_uid, &valid.endpoint.namespace, &valid.endpoint.name);
    // A member of a shared stream: its pool's key, for what the pool's
    // reconcile recorded.
    let shared_pool = valid
        .endpoint
        .stream
        .shared
        .as_ref()
        .map(|place| format!("{namespace}/{}", place.pool));
    let listed = shared_pool.as_ref().and_then(|pool| {
        // Its subjects' token after the pool's prefix, as the listing sums them.
        let prefix = &valid.endpoint.stream.subject_prefix;
        let token = prefix.rsplit('.').next().unwrap_or(prefix);
        ctx.shared.listed(pool, token, ctx.resync)
    });
    let mut stream = stream::ensure(&ctx.nats, &ctx.streams, &valid, &stream_owner, listed).await;
    let stream_note = match (&shared_pool, &mut stream) {
        (Some(pool), stream::StreamState::Ready { stats, .. }) => {
            if let Some(bytes) = ctx.shared.member_bytes(pool, stats.messages) {
                stats.bytes = bytes;
            }
            let own = ctx
                .shared
                .retire_own(&ctx.nats, cluster, &valid, &stream_owner)
                .await;
            shared::own_stream_note(own, stats, cluster, &valid)
        }
        (Some(_), _) => None,
        (None, _) => {
            ctx.shared.forget_own(&owner_uid);
            None
        }
    };
    let keda = ctx
        .keda
        .installed(&ctx.client)
        .await
        .map_err(Error::DiscoverKeda)?;
    let children = build::build(&valid, &ctx.config, Cluster { keda });
    ctx.stores.wait_until_ready(keda, SCALER_CACHE_WAIT).await;
    let applier = Applier {
        client: &ctx.client,
        stores: &ctx.stores,
        metrics: &ctx.metrics,
        namespace: &valid.endpoint.namespace,
        owner_uid: &owner_uid,
    };
    let applied = Box::pin(applier.apply(children)).await;
    let pool_view = match valid.pool() {
        Some(name) => Some(
            pool::observe(
                ctx,
                &secrets_api,
                &valid.endpoint.namespace,
                name,
                pool.as_deref(),
            )
            .await?,
        ),
        None => None,
    };
    let findings = status::findings(&Observed {
        valid: &valid,
        config: &ctx.config,
        secrets: &secrets,
        stream: &stream,
        applied: &applied,
        keda,
        pool: pool_view.as_ref(),
        stream_note: stream_note.as_deref(),
    });
    let ready = findings
        .first()
        .is_some_and(|finding| finding.status == Status::True);
    // Its pool is asked only while it does not serve what this reconcile
    // saw (a new member, an edit): a served member's resync costs its pool nothing.
    if let Some(pool) = valid.pool()
        && !findings.iter().any(|finding| {
            finding.type_ == hookline_api::conditions::SERVED && finding.status == Status::True
        })
    {
        ctx.triggers.pool(&namespace, pool);
    }
    if let stream::StreamState::Ready { stats, .. } = &stream {
        ctx.metrics
            .set_pending(&key, i64::try_from(stats.pending).ok());
        ctx.metrics
            .set_stream_size(&key, Some((stats.bytes, stats.limit_bytes)));
    }
    let details = Details {
        url: status::url(&valid, &applied),
        stream: &stream,
        valid: &valid,
    };
    ctx.status_writer()
        .write(endpoint, findings, Some(details))
        .await?;
    if ready {
        ctx.succeeded(&key);
        ctx.metrics.set_readiness(&key, Some(Readiness::Ready));
        Ok(Action::requeue(jitter(ctx.resync)))
    } else {
        ctx.metrics.set_readiness(&key, Some(Readiness::NotReady));
        Ok(Action::requeue(ctx.retry_after_failure(&key)))
    }
}

/// The finalizer's cleanup: deletes the stream (or, with `deletionPolicy:
/// Retain`, releases it for the next endpoint of this name), unless another
/// endpoint owns it. Works from the resource's name, so an endpoint whose spec
/// no longer validates is cleaned up too. The children go with the owner.
async fn cleanup(endpoint: &WebhookEndpoint, ctx: &Context) -> Result<Action> {
    let namespace = endpoint.namespace().unwrap_or_default();
    let name = endpoint.name_any();
    let stream_name =
        naming::stream_name_in(ctx.config.nats.cluster_name.as_deref(), &namespace, &name);
    let policy = endpoint
        .spec
        .stream
        .as_ref()
        .and_then(|stream| stream.deletion_policy)
        .unwrap_or(DeletionPolicy::Delete);
    let uid = endpoint.metadata.uid.clone().unwrap_or_default();
    let owner = StreamOwner::new(&uid, &namespace, &name);
    let mut note = stream::clean_up(&ctx.nats, &stream_name, &owner, policy)
        .await
        .map_err(Error::DeleteStream)?;
    let pools: BTreeSet<&String> = endpoint
        .spec
        .pool
        .iter()
        .chain(
            endpoint
                .status
                .as_ref()
                .and_then(|status| status.served_by.as_ref()),
        )
        .collect();
    for pool in &pools {
        let cluster = ctx.config.nats.cluster_name.as_deref();
        if let Some(done) =
            stream::clean_up_member(&ctx.nats, cluster, &namespace, pool, &name, policy)
                .await
                .map_err(Error::DeleteStream)?
        {
            note.push_str("; ");
            note.push_str(&done);
        }
    }
    info!(stream = %stream_name, ?policy, "endpoint deleted: {note}");
    ctx.publish(endpoint, EventType::Normal, "Deleted", note)
        .await;
    for pool in pools {
        ctx.triggers.pool(&namespace, pool);
    }
    let key = key(endpoint);
    ctx.succeeded(&key);
    ctx.written.forget(&key);
    ctx.streams.forget(&uid);
    ctx.shared.forget_own(&uid);
    ctx.metrics.set_readiness(&key, None);
    ctx.metrics.set_pending(&key, None);
    ctx.metrics.set_stream_size(&key, None);
    Ok(Action::await_change())
}

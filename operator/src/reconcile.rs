//! One reconcile: validate → secrets → stream → build → apply → status, inside
//! the finalizer that deletes the stream when the endpoint goes. It never
//! branches on why it ran; what it cannot fix it reports and requeues.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hookline_api::naming::{self, FIELD_MANAGER};
use hookline_api::spec::{DeletionPolicy, WebhookEndpoint, WebhookEndpointStatus};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info, warn};

use crate::apply::{Applier, ChildStores};
use crate::build::{self, Cluster};
use crate::config::OperatorConfig;
use crate::metrics::{Metrics, Readiness};
use crate::status::{self, Finding, Observed, Status};
use crate::validate::{ValidEndpoint, validate};
use crate::{Error, Result, secrets, stream};

/// Removes the endpoint's stream before the resource goes.
pub const FINALIZER: &str = "hookline.io/stream";
/// First retry after a failure; doubles per consecutive failure.
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// The longest wait between retries of a failing endpoint.
const MAX_RETRY: Duration = Duration::from_secs(300);
/// How long an invalid spec waits before it is looked at again (any edit
/// triggers a reconcile at once).
const INVALID_SPEC_RECHECK: Duration = Duration::from_secs(300);
/// How long KEDA's presence is trusted before discovery asks again.
const DISCOVERY_TTL: Duration = Duration::from_secs(30);

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
    /// Per endpoint, the status last written and what the API server kept of
    /// it: an older CRD prunes fields it does not know, and without this every
    /// reconcile would write the same status again (and trigger the next).
    written: Mutex<HashMap<String, Written>>,
    /// KEDA's presence and when it was last asked.
    keda: tokio::sync::Mutex<Option<(Instant, bool)>>,
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
            written: Mutex::default(),
            keda: tokio::sync::Mutex::default(),
        }
    }

    /// Whether KEDA's ScaledObject API is served, by discovery, cached briefly.
    pub async fn keda_installed(&self) -> Result<bool> {
        let mut cached = self.keda.lock().await;
        if let Some((asked, installed)) = *cached
            && asked.elapsed() < DISCOVERY_TTL
        {
            return Ok(installed);
        }
        let installed = keda_served(&self.client).await?;
        *cached = Some((Instant::now(), installed));
        Ok(installed)
    }

    /// The delay before the next attempt, growing with consecutive failures.
    fn retry_after_failure(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let count = failures.entry(key.to_owned()).or_default();
        *count = count.saturating_add(1);
        FIRST_RETRY
            .saturating_mul(2u32.saturating_pow(count.saturating_sub(1).min(16)))
            .min(MAX_RETRY)
    }

    fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

/// A status as written, and as the API server kept it.
struct Written {
    sent: WebhookEndpointStatus,
    kept: Option<WebhookEndpointStatus>,
}

impl Context {
    /// Whether `desired` was written already and the server still holds what
    /// it kept of it: writing it again would change nothing.
    fn already_written(
        &self,
        key: &str,
        desired: &WebhookEndpointStatus,
        stored: Option<&WebhookEndpointStatus>,
    ) -> bool {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .is_some_and(|written| written.sent == *desired && written.kept.as_ref() == stored)
    }

    fn remember_written(
        &self,
        key: String,
        sent: WebhookEndpointStatus,
        kept: Option<WebhookEndpointStatus>,
    ) {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, Written { sent, kept });
    }
}

/// Asks discovery whether `keda.sh/v1alpha1` serves `scaledobjects`.
pub async fn keda_served(client: &Client) -> Result<bool> {
    match client.list_api_group_resources("keda.sh/v1alpha1").await {
        Ok(list) => Ok(list
            .resources
            .iter()
            .any(|resource| resource.name == "scaledobjects")),
        Err(kube::Error::Api(response)) if response.code == 404 => Ok(false),
        Err(err) => Err(err.into()),
    }
}

fn key(endpoint: &WebhookEndpoint) -> String {
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
                Finalizer::Apply(endpoint) => reconcile_endpoint(&endpoint, &ctx).await,
                Finalizer::Cleanup(endpoint) => cleanup(&endpoint, &ctx).await,
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
    let valid = match validate(endpoint) {
        Ok(valid) => valid,
        Err(invalid) => {
            info!(cause = %invalid, "invalid spec");
            let findings = status::invalid_findings(&invalid);
            write_status(endpoint, ctx, findings, None).await?;
            ctx.metrics.set_readiness(&key, Some(Readiness::NotReady));
            return Ok(Action::requeue(INVALID_SPEC_RECHECK));
        }
    };
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &valid.endpoint.namespace);
    let secrets = secrets::check(&secrets_api, &valid, &ctx.config).await?;
    if let Some(name) = &secrets.generated {
        ctx.metrics.write("Secret");
        publish(
            ctx,
            endpoint,
            EventType::Normal,
            hookline_api::conditions::reasons::SECRET_GENERATED,
            format!("generated signing Secret {name}"),
        )
        .await;
    }
    let stream = stream::ensure(&ctx.nats, &valid).await;
    let keda = ctx.keda_installed().await?;
    let children = build::build(&valid, &ctx.config, Cluster { keda });
    let owner_uid = valid
        .owner
        .as_ref()
        .map(|owner| owner.uid.clone())
        .ok_or_else(|| Error::MissingObjectKey(key.clone(), ".metadata.uid"))?;
    let applied = Applier {
        client: &ctx.client,
        stores: &ctx.stores,
        metrics: &ctx.metrics,
        namespace: &valid.endpoint.namespace,
        owner_uid: &owner_uid,
    }
    .apply(children)
    .await?;
    let findings = status::findings(&Observed {
        valid: &valid,
        config: &ctx.config,
        secrets: &secrets,
        stream: &stream,
        applied: &applied,
        keda,
    });
    let ready = findings
        .first()
        .is_some_and(|finding| finding.status == Status::True);
    if let stream::StreamState::Ready { stats, .. } = &stream {
        ctx.metrics
            .set_pending(&key, i64::try_from(stats.pending).ok());
    }
    let details = Details {
        url: status::url(&valid, &applied),
        stream: &stream,
        valid: &valid,
    };
    write_status(endpoint, ctx, findings, Some(details)).await?;
    if ready {
        ctx.succeeded(&key);
        ctx.metrics.set_readiness(&key, Some(Readiness::Ready));
        Ok(Action::requeue(ctx.resync))
    } else {
        ctx.metrics.set_readiness(&key, Some(Readiness::NotReady));
        Ok(Action::requeue(ctx.retry_after_failure(&key)))
    }
}

/// What a valid endpoint's status shows besides its conditions.
struct Details<'a> {
    url: Option<String>,
    stream: &'a stream::StreamState,
    valid: &'a ValidEndpoint,
}

/// Writes the status with server-side apply when it differs from the stored
/// one, and publishes an Event for each condition that changed for the worse
/// (and for becoming Ready).
async fn write_status(
    endpoint: &WebhookEndpoint,
    ctx: &Context,
    findings: Vec<Finding>,
    details: Option<Details<'_>>,
) -> Result<()> {
    let previous = endpoint.status.as_ref();
    let generation = endpoint.metadata.generation;
    // Whole seconds: what the API server stores, so what is written equals
    // what is read back.
    let now = k8s_openapi::jiff::Timestamp::now();
    let now = Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now));
    let events: Vec<Finding> = status::transitions(&findings, previous)
        .into_iter()
        .cloned()
        .collect();
    let conditions = status::stamp(findings, previous, generation, &now);
    let desired = match details {
        Some(details) => {
            let (stream_messages, pending, last_event_time) =
                status::figures(details.stream, previous);
            WebhookEndpointStatus {
                observed_generation: generation,
                url: details.url,
                stream: Some(details.valid.endpoint.stream.name.clone()),
                stream_messages,
                pending,
                last_event_time,
                conditions,
            }
        }
        None => WebhookEndpointStatus {
            observed_generation: generation,
            conditions,
            ..previous.cloned().unwrap_or_default()
        },
    };
    let key = key(endpoint);
    if previous == Some(&desired) || ctx.already_written(&key, &desired, previous) {
        return Ok(());
    }
    let api: Api<WebhookEndpoint> = Api::namespaced(
        ctx.client.clone(),
        &endpoint.namespace().unwrap_or_default(),
    );
    let patch = json!({
        "apiVersion": WebhookEndpoint::api_version(&()),
        "kind": WebhookEndpoint::kind(&()),
        "status": desired,
    });
    let kept = api
        .patch_status(
            &endpoint.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?
        .status;
    ctx.metrics.write("WebhookEndpoint/status");
    if kept.as_ref() != Some(&desired) {
        warn!(
            "the API server did not keep the status as written (a CRD older than the operator drops the fields it does not know): kubectl apply --server-side -f crds/webhookendpoints.hookline.io.yaml"
        );
    }
    ctx.remember_written(key, desired, kept);
    for finding in events {
        let type_ = match finding.status {
            Status::True => EventType::Normal,
            Status::False | Status::Unknown => EventType::Warning,
        };
        publish(ctx, endpoint, type_, finding.reason, finding.message).await;
    }
    Ok(())
}

/// Publishes an Event on the endpoint; a failure is logged, never fatal.
async fn publish(
    ctx: &Context,
    endpoint: &WebhookEndpoint,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    match ctx
        .recorder
        .publish(&event, &endpoint.object_ref(&()))
        .await
    {
        Ok(()) => ctx.metrics.write("Event"),
        Err(err) => warn!(cause = %err, reason, "cannot publish an Event"),
    }
}

/// The finalizer's cleanup: deletes the stream (unless `deletionPolicy:
/// Retain`). Works from the resource's name, so an endpoint whose spec no
/// longer validates is cleaned up too. The children go with the owner.
async fn cleanup(endpoint: &WebhookEndpoint, ctx: &Context) -> Result<Action> {
    let namespace = endpoint.namespace().unwrap_or_default();
    let name = naming::stream_name(&namespace, &endpoint.name_any());
    let policy = endpoint
        .spec
        .stream
        .as_ref()
        .and_then(|stream| stream.deletion_policy)
        .unwrap_or(DeletionPolicy::Delete);
    let note = match policy {
        DeletionPolicy::Delete => {
            stream::delete(&ctx.nats, &name).await?;
            format!("deleted stream {name}")
        }
        DeletionPolicy::Retain => format!("kept stream {name} (deletionPolicy: Retain)"),
    };
    info!(stream = %name, ?policy, "endpoint deleted");
    publish(ctx, endpoint, EventType::Normal, "Deleted", note).await;
    let key = key(endpoint);
    ctx.succeeded(&key);
    ctx.written
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&key);
    ctx.metrics.set_readiness(&key, None);
    ctx.metrics.set_pending(&key, None);
    Ok(Action::await_change())
}

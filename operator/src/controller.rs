//! `hookline-operator run`: health server, NATS connection, leader election,
//! and the controller with its watches (endpoints, owned children, and the
//! Secrets endpoints reference, so a Secret created later fixes an endpoint
//! with no manual touch).

use std::fmt::Debug;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt};
use hookline_api::naming::FIELD_MANAGER;
use hookline_api::pool::WebhookPool;
use hookline_api::runtime::Shutdown;
use hookline_api::spec::WebhookEndpoint;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, PredicateConfig, WatchStreamExt, controller, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::apply::{self, ChildWriters};
use crate::cli::{RunArgs, Settings};
use crate::config::OperatorConfig;
use crate::http::{self, Health};
use crate::leader::LeaderElection;
use crate::reconcile::{Context, Triggers, error_policy, reconcile};
use crate::{Error, Result, keda, pool, secrets};

/// Every kind the controller lists and watches, as RBAC names them
/// (`(API group, resource)`); the chart's rules are checked against it.
pub const WATCHED: [(&str, &str); 9] = [
    ("hookline.io", "webhookendpoints"),
    ("hookline.io", "webhookpools"),
    ("", "configmaps"),
    ("", "services"),
    ("", "secrets"),
    ("apps", "deployments"),
    ("networking.k8s.io", "ingresses"),
    ("policy", "poddisruptionbudgets"),
    ("keda.sh", "scaledobjects"),
];

/// Reconciles of one endpoint triggered in quick succession (its children's
/// watch events after an apply) are merged into one.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// How often a missing CRD is looked for again.
const DISCOVERY_RETRY: Duration = Duration::from_secs(10);

/// Runs until SIGTERM or Ctrl-C (then finishes the reconciles in hand and
/// releases the Lease), or until the Lease is lost (an error: exit and restart).
pub async fn run(settings: Settings, args: RunArgs) -> Result<()> {
    let config = settings.operator_config();
    let client = Client::try_default().await.map_err(Error::KubeConfig)?;
    let shutdown = Shutdown::new(hookline_api::runtime::shutdown_signal());
    let health = Health {
        client: Some(client.clone()),
        ..Health::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: args.listen,
            source,
        })?;
    let server = tokio::spawn(
        axum::serve(listener, http::router(health.clone()))
            .with_graceful_shutdown(shutdown.requested())
            .into_future(),
    );
    info!(listen = %args.listen, "serving /healthz, /readyz and /metrics");

    let outcome = operate(client, config, &settings, &args, &health, shutdown).await;
    server.abort();
    info!("stopped");
    outcome
}

/// Waits for the CRD, connects to NATS, takes the Lease and reconciles until
/// `shutdown` (then the reconciles in hand finish and the Lease is released).
async fn operate(
    client: Client,
    config: OperatorConfig,
    settings: &Settings,
    args: &RunArgs,
    health: &Health,
    shutdown: Shutdown,
) -> Result<()> {
    tokio::select! {
        () = wait_for_crd(&client, args.watch_namespace.as_deref()) => {}
        () = shutdown.requested() => return Ok(()),
    }
    health.started.store(true, Ordering::Relaxed);
    let nats =
        hookline_api::nats::connect(&config.nats.url, &settings.nats.auth(), "hookline-operator")
            .await?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let election = args.leader_election.then(|| {
        let namespace = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        LeaderElection::new(client.clone(), &namespace, &args.lease_name, &identity)
    });
    if let Some(election) = &election {
        info!(lease = election.name(), %identity, "waiting for the Lease");
        tokio::select! {
            () = election.acquire() => {}
            () = shutdown.requested() => return Ok(()),
        }
    }
    health.leading.store(true, Ordering::Relaxed);
    health.metrics.leader.set(1);
    let (stores, writers) = apply::stores();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity),
        },
    );
    let (secret_store, secret_writer) = reflector::store();
    let (endpoint_store, endpoint_writer) = reflector::store();
    let (pool_store, pool_writer) = reflector::store();
    let (pool_sender, pool_triggers) = futures::channel::mpsc::unbounded();
    let (endpoint_sender, endpoint_triggers) = futures::channel::mpsc::unbounded();
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            config,
            nats,
            stores,
            health.metrics.clone(),
            recorder,
            args.resync_interval,
        )
        .with_secret_index(secrets::SecretIndex::new(secret_store))
        .with_pools(pool_store, endpoint_store)
        .with_triggers(Triggers {
            pools: Some(pool_sender),
            endpoints: Some(endpoint_sender),
        }),
    );
    let mut controller = tokio::spawn(run_controller(
        client,
        ctx,
        writers,
        Caches {
            secrets: secret_writer,
            endpoints: endpoint_writer,
            pools: pool_writer,
            pool_triggers,
            endpoint_triggers,
        },
        ControllerSettings {
            namespace: args.watch_namespace.clone(),
            max_concurrent_reconciles: args.max_concurrent_reconciles,
        },
        shutdown.requested(),
    ));
    let lost = async {
        match &election {
            Some(election) => election.hold().await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        () = lost => {
            controller.abort();
            Err(Error::LeadershipLost(args.lease_name.clone()))
        }
        _ = &mut controller => Ok(()),
    };
    health.leading.store(false, Ordering::Relaxed);
    health.metrics.leader.set(0);
    if let (Ok(()), Some(election)) = (&outcome, &election) {
        election.release().await;
    }
    outcome
}

fn default_identity() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("hookline-operator-{}", std::process::id()))
}

/// Waits until the API server serves WebhookEndpoints, saying so while it does not.
async fn wait_for_crd(client: &Client, namespace: Option<&str>) {
    let api: Api<WebhookEndpoint> = scoped(client, namespace);
    loop {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return,
            Err(err) => {
                warn!(cause = %Error::CrdMissing(err), retry_in = ?DISCOVERY_RETRY, "cannot list WebhookEndpoints")
            }
        }
        tokio::time::sleep(DISCOVERY_RETRY).await;
    }
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// What shapes the controller besides its context.
struct ControllerSettings {
    /// Watch only this namespace; `None`: all.
    namespace: Option<String>,
    max_concurrent_reconciles: u16,
}

/// What of an endpoint starts a reconcile: its spec (generation), deletion
/// and finalizers. Not its status: the operator's own status write would
/// start the next reconcile, and a busy endpoint's changing figures would
/// keep it reconciling (and writing) several times a second.
fn reconcile_trigger(endpoint: &WebhookEndpoint) -> Option<u64> {
    let mut hasher = std::hash::DefaultHasher::new();
    (
        endpoint.metadata.generation,
        endpoint.metadata.deletion_timestamp.is_some(),
        &endpoint.metadata.finalizers,
    )
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// The caches the controllers fill besides the children's, and the
/// streams through which each asks the other for a reconcile.
struct Caches {
    secrets: Writer<PartialObjectMeta<Secret>>,
    endpoints: Writer<WebhookEndpoint>,
    pools: Writer<WebhookPool>,
    pool_triggers: UnboundedReceiver<ObjectRef<WebhookPool>>,
    endpoint_triggers: UnboundedReceiver<ObjectRef<WebhookEndpoint>>,
}

/// Both controllers (endpoints and pools) with every watch, until `stop` completes.
async fn run_controller(
    client: Client,
    ctx: Arc<Context>,
    writers: ChildWriters,
    caches: Caches,
    settings: ControllerSettings,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let Caches {
        secrets: secret_writer,
        endpoints: index_writer,
        pools: pool_writer,
        pool_triggers,
        endpoint_triggers,
    } = caches;
    let stop = futures::future::FutureExt::shared(Box::pin(stop));
    let namespace = settings.namespace.as_deref();
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    let ChildWriters {
        config_maps,
        deployments,
        services,
        ingresses,
        disruption_budgets,
        scalers,
    } = writers;
    let index = ctx.endpoints.clone();
    // A change to a pool's child (its rollout, a deletion) reconciles the pool.
    let to_pool = {
        let triggers = ctx.triggers.clone();
        move |meta: &ObjectMeta| {
            if let Some(owner) = meta
                .owner_references
                .iter()
                .flatten()
                .find(|owner| owner.controller == Some(true) && owner.kind == "WebhookPool")
            {
                triggers.pool(meta.namespace.as_deref().unwrap_or_default(), &owner.name);
            }
        }
    };
    let endpoints = reflector(
        index_writer,
        watcher(scoped(&client, namespace), watcher::Config::default())
            .modify(forget_managed_fields),
    )
    .default_backoff()
    .applied_objects()
    .predicate_filter(reconcile_trigger, PredicateConfig::default());
    let config_of = || {
        controller::Config::default()
            .debounce(DEBOUNCE)
            .concurrency(settings.max_concurrent_reconciles)
    };
    let controller = Controller::for_stream(endpoints, index.clone())
        .with_config(config_of())
        .reconcile_on(endpoint_triggers);
    let config = ctx.config.clone();
    // A pool's own Secret, and a Secret its members read (a rotated signing
    // key), reconcile the pool.
    let secrets = {
        let to_pool = to_pool.clone();
        let index = index.clone();
        let config = ctx.config.clone();
        let triggers = ctx.triggers.clone();
        tapped(
            cached(
                scoped::<PartialObjectMeta<Secret>>(&client, namespace),
                secret_writer,
                watcher::Config::default(),
            ),
            move |meta: &ObjectMeta| {
                to_pool(meta);
                let secret = PartialObjectMeta::<Secret> {
                    metadata: meta.clone(),
                    ..Default::default()
                };
                for endpoint in referencing(&index, &secret, &config) {
                    if let Some(pool) = index.get(&endpoint).and_then(|e| e.spec.pool.clone()) {
                        triggers.pool(meta.namespace.as_deref().unwrap_or_default(), &pool);
                    }
                }
            },
        )
    };
    let keda_client = client.clone();
    let scaler_api = scoped(&client, namespace);
    let scaler_config = owned.clone();
    let scaled_objects = futures::stream::once(async move {
        keda::wait_until_installed(&keda_client).await;
        cached(scaler_api, scalers, scaler_config)
    })
    .flatten();
    let scaled_objects = tapped(scaled_objects, to_pool.clone());
    let endpoints_done = controller
        .owns_stream(tapped(
            cached(scoped(&client, namespace), config_maps, owned.clone()),
            to_pool.clone(),
        ))
        .owns_stream(tapped(
            cached(scoped(&client, namespace), deployments, owned.clone()),
            to_pool.clone(),
        ))
        .owns_stream(tapped(
            cached(scoped(&client, namespace), services, owned.clone()),
            to_pool.clone(),
        ))
        .owns_stream(cached(scoped(&client, namespace), ingresses, owned.clone()))
        .owns_stream(tapped(
            cached(scoped(&client, namespace), disruption_budgets, owned),
            to_pool,
        ))
        .owns_stream(scaled_objects)
        .watches_stream(secrets, move |secret| referencing(&index, &secret, &config))
        .graceful_shutdown_on(stop.clone())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(log_outcome);
    let pools = {
        let metrics = ctx.metrics.clone();
        let ctx = ctx.clone();
        reflector(
            pool_writer,
            watcher(
                scoped::<WebhookPool>(&client, namespace),
                watcher::Config::default(),
            )
            .modify(forget_managed_fields),
        )
        .default_backoff()
        .inspect(move |event| {
            // A deleted pool's children go with it (owner references);
            // only what this process keeps of it is forgotten here.
            if let Ok(watcher::Event::Delete(pool)) = event {
                let key = pool::pool_key(pool);
                metrics.set_pool_members(&key, None);
                ctx.pool_state.forget(&key);
                ctx.shared.forget_pool(&key);
            }
        })
        .applied_objects()
        .predicate_filter(pool_trigger, PredicateConfig::default())
    };
    let pool_controller = Controller::for_stream(pools, ctx.pools.clone())
        .with_config(config_of())
        .reconcile_on(pool_triggers)
        .graceful_shutdown_on(stop.clone())
        .run(pool::reconcile, pool::error_policy, ctx)
        .for_each(log_outcome);
    // Started once the WebhookPool CRD is served: a controller whose cache
    // never fills would hold the shutdown (its runner waits for the cache).
    let pools_done = async {
        tokio::select! {
            () = wait_for_pool_crd(&client, namespace) => pool_controller.await,
            () = stop => {}
        }
    };
    futures::join!(endpoints_done, pools_done);
}

/// Waits until the API server serves WebhookPools (an older chart installed
/// only the WebhookEndpoint CRD), saying so once.
async fn wait_for_pool_crd(client: &Client, namespace: Option<&str>) {
    let api: Api<WebhookPool> = scoped(client, namespace);
    let mut said = false;
    loop {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return,
            Err(err) if !said => {
                said = true;
                info!(cause = %err, retry_every = ?DISCOVERY_RETRY, "WebhookPools are not served (install crds/webhookpools.hookline.io.yaml to use pools); endpoints are reconciled meanwhile");
            }
            Err(_) => {}
        }
        tokio::time::sleep(DISCOVERY_RETRY).await;
    }
}

/// Logs what the controller machinery (not a reconcile) reports.
async fn log_outcome<T, E: std::fmt::Display + std::error::Error + 'static, Q>(
    outcome: Result<T, controller::Error<E, Q>>,
) where
    Q: std::error::Error + 'static,
{
    if let Err(err) = outcome
        && !matches!(err, controller::Error::ReconcilerFailed(..))
    {
        warn!(cause = %err, "controller");
    }
}

/// What of a pool starts a reconcile: its spec (generation), not its status.
fn pool_trigger(pool: &WebhookPool) -> Option<u64> {
    pool.metadata.generation.map(i64::cast_unsigned)
}

/// `stream`, calling `tap` with each object's metadata as it passes.
fn tapped<K: Resource>(
    stream: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    tap: impl Fn(&ObjectMeta) + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    stream.inspect(move |object| {
        if let Ok(object) = object {
            tap(object.meta());
        }
    })
}

/// A watch of `api` that keeps `writer`'s store current and yields what changed.
fn cached<K>(
    api: Api<K>,
    writer: Writer<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    reflector(writer, watcher(api, config).modify(forget_managed_fields))
        .default_backoff()
        .touched_objects()
}

/// Drops `managedFields` before an object is cached: nothing here reads
/// them (drift is judged by `hookline.io/applied-hash`), and they are often
/// the larger part of an object, so a thousand endpoints' caches would carry
/// several thousand copies.
fn forget_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// The endpoints in the Secret's namespace that read it.
fn referencing(
    index: &Store<WebhookEndpoint>,
    secret: &PartialObjectMeta<Secret>,
    config: &OperatorConfig,
) -> Vec<ObjectRef<WebhookEndpoint>> {
    let name = secret.name_any();
    index
        .state()
        .into_iter()
        .filter(|endpoint| endpoint.namespace() == secret.namespace())
        .filter(|endpoint| secrets::referenced_names(&endpoint.spec, config).contains(&name))
        .map(|endpoint| ObjectRef::from_obj(endpoint.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_is_the_endpoint_its_secrets_and_every_child_kind() {
        let mut expected: Vec<(String, String)> = [
            ("hookline.io", "webhookendpoints"),
            ("hookline.io", "webhookpools"),
            ("", "secrets"),
        ]
        .iter()
        .map(|(group, plural)| ((*group).to_owned(), (*plural).to_owned()))
        .chain(apply::child_resources())
        .collect();
        let mut watched: Vec<(String, String)> = WATCHED
            .iter()
            .map(|(group, plural)| ((*group).to_owned(), (*plural).to_owned()))
            .collect();
        expected.sort();
        watched.sort();
        assert_eq!(watched, expected);
    }
}

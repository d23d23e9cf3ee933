//! `--endpoint-dir`: one process consuming every endpoint of a directory of
//! manifests (a pool of one namespace). Each endpoint gets the loop
//! `--endpoint` runs — its own durable consumer, batches, retries, dead
//! letters, retention sweep and database gate — over one Postgres pool and one
//! NATS connection. The directory is read every `poll_interval`: loops start
//! for new manifests, stop (finishing the batches in hand) for removed ones,
//! and restart for changed ones.
//!
//! - [`hookline_api::pool_dir`]: which files are endpoints, and why the others
//!   are skipped (read as the pool receiver reads them).
//! - `loops`: starting, stopping and restarting the loops.
//! - `dispatch`: with `--shared-stream`, the pool's one stream, pulled
//!   through its one durable and split by member.
//! - `drain`: with `--shared-stream`, a member's own stream, drained beside
//!   the pool's until the operator deletes it.
//!
//! With `--shared-stream POOL` every endpoint is a member of the pool's one
//! stream ([`ValidatedEndpoint::in_shared_stream`]): one loop pulls it for
//! all of them, and each member's share of a batch is decoded, retried and
//! dead-lettered by its own manifest; its own loop only sweeps its retention.

mod dispatch;
mod drain;
mod loops;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::shared_member;
use crate::consume::PullBudget;
use crate::http::HttpState;
use crate::lifecycle::{MIN_STATEMENT_TIMEOUT, finish, retry, serve_http};
use crate::metrics::MetricsRegistry;
use crate::store;
use crate::{PoolConfig, Result, Shutdown};

use dispatch::Members;
use hookline_api::ValidatedEndpoint;
use hookline_api::pool_dir::{Directory, Found};
use hookline_api::validated::StreamRetention;
use loops::Loops;

/// The statement timeout of the shared pool: the default `ackWait`, since the
/// pool outlives any one endpoint's own `ackWait` (a statement still running
/// when its batch is redelivered only doubles the work).
const POOL_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Batches pulled and not settled yet, per database connection, over every
/// endpoint: one committing and one ready to go keeps each connection busy;
/// more only wait for a connection, holding their events in memory.
const BATCHES_PER_CONNECTION: usize = 2;

/// The shared stream's batches in flight, per database connection: one.
/// Its batches are of up to 500 events of any members, one transaction
/// each, so one per connection keeps each busy; two made no faster drain
/// and held 145 MiB against 107 (`pool_bench 1000 100 --shared-stream`).
const SHARED_BATCHES_PER_CONNECTION: usize = 1;

/// What `/readyz` says of a pool: each endpoint served and whether its loop
/// is bound to its durable consumer, and each manifest skipped with why.
#[derive(Clone, Debug, Default)]
pub struct PoolStatus(Arc<Mutex<PoolView>>);

#[derive(Debug, Default)]
struct PoolView {
    endpoints: BTreeMap<String, Arc<AtomicBool>>,
    skipped: BTreeMap<String, String>,
}

impl PoolStatus {
    fn view(&self) -> MutexGuard<'_, PoolView> {
        // Nothing panics while holding it; if something did, the view is still whole.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Endpoint → bound, and file → why it is skipped.
    pub fn snapshot(&self) -> (BTreeMap<String, bool>, BTreeMap<String, String>) {
        let view = self.view();
        let endpoints = view
            .endpoints
            .iter()
            .map(|(key, bound)| (key.clone(), bound.load(Ordering::Relaxed)))
            .collect();
        (endpoints, view.skipped.clone())
    }

    fn serve(&self, key: &str, bound: Arc<AtomicBool>) {
        self.view().endpoints.insert(key.to_owned(), bound);
    }

    fn forget(&self, key: &str) {
        self.view().endpoints.remove(key);
    }

    fn set_skipped(&self, skipped: BTreeMap<String, String>) {
        self.view().skipped = skipped;
    }
}

/// What a pool consumer cannot serve yet: an endpoint whose refetch needs
/// its own credentials file (a pool takes no `--refetch-auth-file`).
fn pool_can_consume(endpoint: &ValidatedEndpoint) -> Result<(), String> {
    if endpoint
        .consumer
        .refetch
        .as_ref()
        .is_some_and(|refetch| refetch.auth_secret_ref.is_some())
    {
        return Err(
            "spec.consumer.refetch.authSecretRef: not served by a pool consumer yet (it takes no --refetch-auth-file); give the endpoint a consumer of its own".into(),
        );
    }
    Ok(())
}

/// What a pool consumer with `--shared-stream` cannot serve: an `Archive`,
/// which keeps a stream of its own (the operator refuses it as a member of
/// such a pool).
fn pool_can_share(endpoint: &ValidatedEndpoint) -> Result<(), String> {
    pool_can_consume(endpoint)?;
    if endpoint.consumer.refetch.is_some() {
        return Err(
            "spec.consumer.refetch: a member of a pool's shared stream (--shared-stream) cannot refetch: its retries would hold the pool's one durable consumer".into(),
        );
    }
    if endpoint.stream.retention == StreamRetention::Archive {
        return Err(
            "spec.stream.retention: an Archive keeps its own stream, not a member of a pool's shared stream (--shared-stream)".into(),
        );
    }
    Ok(())
}

/// Moves every endpoint found into the pool's shared stream, when there is one.
fn into_shared_stream(found: &mut Found, config: &PoolConfig) {
    let Some(pool) = &config.shared_stream else {
        return;
    };
    let cluster = config.cluster_name.as_deref();
    let endpoints = std::mem::take(&mut found.endpoints);
    found.endpoints = endpoints
        .into_iter()
        .map(|(key, (file, endpoint))| (key, (file, shared_member(endpoint, cluster, pool))))
        .collect();
}

/// Runs a pool consumer on `listener` (`/healthz`, `/readyz`, `/metrics`)
/// until `shutdown` completes, then stops every loop (each finishes its
/// batches in hand) and returns. Fails at start only on what no retry fixes:
/// an unreadable directory, manifests of different namespaces, a bad URL.
pub async fn run_pool(
    config: PoolConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let mut shutdown = Shutdown::new(shutdown);
    let check = match config.shared_stream {
        Some(_) => pool_can_share,
        None => pool_can_consume,
    };
    let mut directory =
        Directory::new(config.endpoint_dir.clone(), config.cluster_name.clone()).with_check(check);
    let mut first = directory.scan_first()?;
    into_shared_stream(&mut first, &config);
    let options = store::connect_options(&config.database_url)?;
    let pool = store::pool(
        &options,
        config.database_connections,
        POOL_STATEMENT_TIMEOUT.max(MIN_STATEMENT_TIMEOUT),
    );
    let metrics = Arc::new(MetricsRegistry::for_pool());
    let nats =
        hookline_api::nats::connect(&config.nats_url, &config.nats_auth, "hookline-consumer")
            .await?;
    let js = jetstream::new(nats.clone());
    let status = PoolStatus::default();

    let started = Arc::new(AtomicBool::new(false));
    let address = listener.local_addr().ok();
    let server = serve_http(
        listener,
        HttpState {
            metrics: metrics.clone(),
            pool: pool.clone(),
            nats: nats.clone(),
            started: started.clone(),
            pool_status: Some(status.clone()),
        },
        &shutdown,
    );
    info!(
        endpoint_dir = %config.endpoint_dir.display(),
        namespace = directory.namespace().unwrap_or(""),
        endpoints = first.endpoints.len(),
        skipped = first.skipped.len(),
        shared_stream = config.shared_stream.as_deref().unwrap_or(""),
        listen = ?address,
        "starting a pool consumer"
    );

    let migrated = match retry("migrate the database", &shutdown, || {
        store::migrate(&options)
    })
    .await
    {
        Ok(migrated) => migrated,
        Err(err) => {
            server.abort();
            return Err(err);
        }
    };
    if migrated.is_some() {
        started.store(true, Ordering::Relaxed);
        let batch_limit = BATCHES_PER_CONNECTION * config.database_connections as usize;
        let members = config
            .shared_stream
            .is_some()
            .then(|| Arc::new(Members::new(shutdown.clone())));
        let shared = Arc::new(loops::Shared {
            pool: pool.clone(),
            js,
            nats: nats.clone(),
            metrics: metrics.clone(),
            status: status.clone(),
            provision: config.provision,
            concurrency: config.concurrency.into(),
            sweep_interval: config.sweep_interval,
            pull_budget: PullBudget::new(config.pull_budget_bytes).with_batch_limit(batch_limit),
            shutdown: shutdown.clone(),
            cluster_name: config.cluster_name.clone(),
            shared_max_age: Default::default(),
            members: members.clone(),
        });
        let shared_stream = members.map(|members| {
            tokio::spawn(dispatch::drain_shared_stream(
                shared.clone(),
                members,
                SHARED_BATCHES_PER_CONNECTION * config.database_connections as usize,
                shutdown.clone(),
            ))
        });
        let mut loops = Loops::new(shared);
        let mut next = Some(first);
        loop {
            if let Some(found) = next.take() {
                metrics
                    .manifests_skipped
                    .set(i64::try_from(found.skipped.len()).unwrap_or(i64::MAX));
                status.set_skipped(found.skipped);
                loops.apply(found.endpoints);
                metrics
                    .endpoints
                    .set(i64::try_from(loops.len()).unwrap_or(i64::MAX));
            }
            if !shutdown.sleep(config.poll_interval).await {
                break;
            }
            match directory.scan_if_touched() {
                Ok(Some(mut found)) => {
                    into_shared_stream(&mut found, &config);
                    next = Some(found);
                }
                Ok(None) => loops.reap(),
                // Keep serving what was loaded: a directory that cannot be
                // read for a moment must not stop every endpoint.
                Err(err) => {
                    warn!(cause = %err, "cannot read the endpoint directory; keeping the endpoints loaded");
                }
            }
        }
        loops.stop_all().await;
        if let Some(shared_stream) = shared_stream
            && let Err(err) = shared_stream.await
        {
            warn!(cause = %err, "the shared stream's loop failed");
        }
    }

    finish(&nats, shutdown, server, &pool).await;
    Ok(())
}

//! The pool's consume loops: one per endpoint, each with a stop signal of its
//! own, so one endpoint is started, stopped or restarted while the others run.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use hookline_api::ValidatedEndpoint;
use hookline_api::provision::POOL_ACK_WAIT;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

use super::dispatch::Members;
use super::{PoolStatus, drain};
use crate::Shutdown;
use crate::consume::PullBudget;
use crate::lifecycle::{FINAL_FLUSH, Served, bind, consume_bound};
use crate::metrics::{Metrics, MetricsRegistry};
use crate::refetch::Refetcher;

/// What every loop shares.
#[derive(Debug)]
pub(super) struct Shared {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub nats: async_nats::Client,
    pub metrics: Arc<MetricsRegistry>,
    pub status: PoolStatus,
    pub provision: bool,
    /// Batches in flight at once, per endpoint.
    pub concurrency: usize,
    pub sweep_interval: Duration,
    /// What every loop's pulls may have in flight together, in bytes and
    /// in batches not settled yet.
    pub pull_budget: PullBudget,
    /// The process's shutdown: stops every loop.
    pub shutdown: Shutdown,
    /// `--cluster-name`: where a shared-stream member's own stream is.
    pub cluster_name: Option<String>,
    /// The `maxAge` of the pool's shared stream, read from it once: the
    /// members' retention, which their manifests do not set (the pool does).
    pub shared_max_age: tokio::sync::OnceCell<Duration>,
    /// With `--shared-stream`: the members its one pull loop hands their
    /// events to.
    pub members: Option<Arc<Members>>,
}

impl Shared {
    /// What one of its loops consumes `endpoint` with; `drain_until_gone`
    /// for a member's own stream drained beside the pool's.
    pub(super) fn served(
        &self,
        endpoint: ValidatedEndpoint,
        refetch: Option<Refetcher>,
        drain_until_gone: bool,
    ) -> Served {
        // Batches that refetch wait on a provider's API, not on Postgres:
        // outside the pool's batch limit, so that a provider's outage stalls
        // none of the other endpoints.
        let pull_budget = match &refetch {
            Some(_) => self.pull_budget.without_batch_limit(),
            None => self.pull_budget.clone(),
        };
        Served {
            endpoint,
            refetch,
            concurrency: self.concurrency,
            sweep_interval: self.sweep_interval,
            pull_budget,
            drain_until_gone,
        }
    }
}

/// A loop that runs, and what it was started with.
#[derive(Debug)]
struct Running {
    endpoint: ValidatedEndpoint,
    file: PathBuf,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    /// Asks the loop to stop (it finishes its batches in hand); the task ends when it has.
    fn stop(self) -> JoinHandle<()> {
        let _ = self.stop.send(());
        self.task
    }
}

/// Every loop of the pool, by endpoint key.
#[derive(Debug)]
pub(super) struct Loops {
    shared: Arc<Shared>,
    running: HashMap<String, Running>,
    /// Loops of removed endpoints, still finishing their batches.
    retiring: HashMap<String, JoinHandle<()>>,
}

impl Loops {
    pub fn new(shared: Arc<Shared>) -> Loops {
        Loops {
            shared,
            running: HashMap::new(),
            retiring: HashMap::new(),
        }
    }

    /// Endpoints served.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Makes the loops match `wanted` (endpoint key → its file and endpoint):
    /// stops the loops of endpoints no longer wanted, restarts those whose
    /// endpoint changed, starts the new ones. Never waits: a loop that
    /// replaces another starts once the other has finished its batches.
    pub fn apply(&mut self, wanted: BTreeMap<String, (PathBuf, ValidatedEndpoint)>) {
        self.reap();
        let removed: Vec<String> = self
            .running
            .keys()
            .filter(|key| !wanted.contains_key(*key))
            .cloned()
            .collect();
        for key in removed {
            if let Some(running) = self.running.remove(&key) {
                info!(endpoint = %key, file = %running.file.display(), "manifest removed: stopping its loop");
                self.shared.status.forget(&key);
                self.retiring.insert(key, running.stop());
            }
        }
        for (key, (file, endpoint)) in wanted {
            match self.running.get_mut(&key) {
                Some(running) if running.endpoint == endpoint => running.file = file,
                Some(_) => {
                    let previous = self.running.remove(&key).map(Running::stop);
                    info!(endpoint = %key, file = %file.display(), "manifest changed: restarting its loop");
                    self.start(key, file, endpoint, previous);
                }
                None => {
                    let previous = self.retiring.remove(&key);
                    info!(endpoint = %key, file = %file.display(), "manifest found: starting its loop");
                    self.start(key, file, endpoint, previous);
                }
            }
        }
    }

    /// Forgets the series of removed endpoints whose loops have finished.
    pub fn reap(&mut self) {
        let metrics = &self.shared.metrics;
        self.retiring.retain(|key, task| {
            let finished = task.is_finished();
            if finished {
                metrics.forget(key);
            }
            !finished
        });
    }

    fn start(
        &mut self,
        key: String,
        file: PathBuf,
        endpoint: ValidatedEndpoint,
        previous: Option<JoinHandle<()>>,
    ) {
        let (stop, stopped) = oneshot::channel();
        let bound = Arc::new(AtomicBool::new(false));
        self.shared.status.serve(&key, bound.clone());
        let mut process = self.shared.shutdown.clone();
        // Fires on the process's shutdown or this loop's own stop (or when
        // its sender is dropped).
        let shutdown = Shutdown::new(async move {
            tokio::select! {
                _ = process.wait() => {}
                _ = stopped => {}
            }
        });
        let metrics = Arc::new(self.shared.metrics.endpoint(&key));
        let task = tokio::spawn(run_loop(
            self.shared.clone(),
            endpoint.clone(),
            previous,
            bound,
            metrics,
            shutdown,
        ));
        self.running.insert(
            key,
            Running {
                endpoint,
                file,
                stop,
                task,
            },
        );
    }

    /// Stops every loop and waits until each has finished its batches.
    pub async fn stop_all(mut self) {
        let mut tasks: Vec<JoinHandle<()>> = self.retiring.drain().map(|(_, task)| task).collect();
        tasks.extend(self.running.drain().map(|(_, running)| running.stop()));
        for task in tasks {
            if let Err(err) = task.await {
                warn!(cause = %err, "an endpoint's loop failed");
            }
        }
    }
}

/// One endpoint's loop: what `--endpoint` runs after migrating — bind to the
/// durable consumer (provisioning first when asked), consume until `shutdown`,
/// finish the batches in hand, send their acknowledgements. A member of a
/// shared stream is served by the pool's one loop instead
/// ([`serve_member`]), and drains its own stream meanwhile, if it is still
/// there.
async fn run_loop(
    shared: Arc<Shared>,
    endpoint: ValidatedEndpoint,
    previous: Option<JoinHandle<()>>,
    bound: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    let span = info_span!("endpoint", endpoint = %endpoint.key());
    async move {
        // The loop this one replaces finishes its batches first: never two
        // loops of one endpoint in this process.
        if let Some(previous) = previous {
            let _ = previous.await;
        }
        let refetch = match endpoint
            .consumer
            .refetch
            .as_ref()
            .map(|refetch| Refetcher::new(refetch.clone(), None))
            .transpose()
        {
            Ok(refetch) => refetch,
            Err(err) => {
                warn!(cause = %err, "cannot serve this endpoint");
                return;
            }
        };
        let own = endpoint
            .stream
            .shared
            .is_some()
            .then(|| endpoint.own_stream(shared.cluster_name.as_deref()));
        // Boxed, as is `bind` in `serve`: a task's size is its largest
        // state's, and these are large (the drain 15 KB, binding 24 KB) but
        // live only for a while; inline they made each loop 48 KB, 48 MiB
        // for a pool of 1,000 (heaptrack, `-Zprint-type-sizes`).
        let drain = Box::pin(async {
            if let Some(own) = own {
                let metrics = Arc::new(metrics.another_source());
                let span = info_span!("own_stream", stream = %own.stream.name);
                drain::drain_own_stream(&shared, own, refetch.clone(), metrics, &shutdown)
                    .instrument(span)
                    .await;
            }
        });
        let serve = serve(
            &shared,
            endpoint,
            refetch.clone(),
            &bound,
            metrics.clone(),
            &shutdown,
        );
        tokio::join!(serve, drain);
        // Acks are buffered by the client: send this loop's before saying it stopped.
        if tokio::time::timeout(FINAL_FLUSH, shared.nats.flush())
            .await
            .is_err()
        {
            warn!("NATS did not take the last acknowledgements in time; they will be redelivered");
        }
        info!("stopped consuming");
    }
    .instrument(span)
    .await;
}

/// The endpoint's own stream until `shutdown`; a member of the pool's
/// shared stream is served by [`serve_member`].
async fn serve(
    shared: &Shared,
    endpoint: ValidatedEndpoint,
    refetch: Option<Refetcher>,
    bound: &AtomicBool,
    metrics: Arc<Metrics>,
    shutdown: &Shutdown,
) {
    if let (Some(members), Some(_)) = (&shared.members, &endpoint.stream.shared) {
        return serve_member(shared, members, endpoint, bound, metrics, shutdown).await;
    }
    let consumer = match Box::pin(bind(&endpoint, shared.provision, &shared.js, shutdown)).await {
        Ok(Some(consumer)) => consumer,
        Ok(None) => return,
        Err(err) => {
            warn!(cause = %err, "cannot serve this endpoint");
            return;
        }
    };
    bound.store(true, Ordering::Relaxed);
    info!(stream = %endpoint.stream.name, "consuming");
    let served = shared.served(endpoint, refetch, false);
    consume_bound(&served, consumer, &shared.pool, metrics, shutdown).await;
    bound.store(false, Ordering::Relaxed);
}

/// A member of the pool's shared stream until `shutdown`: its events come
/// through the pool's one pull loop ([`Members`]), which hands them to its
/// context; its own loop only sweeps its retention.
async fn serve_member(
    shared: &Shared,
    members: &Members,
    mut endpoint: ValidatedEndpoint,
    bound: &AtomicBool,
    metrics: Arc<Metrics>,
    shutdown: &Shutdown,
) {
    if let Some(max_age) = shared_max_age(shared, &endpoint.stream.name).await {
        endpoint.stream.max_age = max_age;
    }
    // Held batches are kept alive within the pool durable's `ackWait`.
    endpoint.consumer.ack_wait = POOL_ACK_WAIT;
    let served = shared.served(endpoint, None, false);
    let sweeper = served.sweeper(&shared.pool, shutdown);
    let ctx = served.context(&shared.pool, metrics, members.gate(), shutdown);
    members.serve(ctx.clone());
    if members.wait_bound(shutdown).await {
        bound.store(true, Ordering::Relaxed);
        shutdown.clone().wait().await;
    }
    members.forget(&ctx);
    bound.store(false, Ordering::Relaxed);
    if let Some(sweeper) = sweeper {
        sweeper.abort();
    }
}

/// The pool stream's `maxAge`, read once for every member; `None` (the
/// member keeps its manifest's, and the next member asks again) when the
/// stream does not answer.
async fn shared_max_age(shared: &Shared, stream: &str) -> Option<Duration> {
    let read = shared
        .shared_max_age
        .get_or_try_init(|| async {
            let stream = shared.js.get_stream(stream).await?;
            Ok::<_, async_nats::jetstream::context::GetStreamError>(
                stream.cached_info().config.max_age,
            )
        })
        .await;
    match read {
        // 0 is "no limit": keep the manifest's.
        Ok(max_age) => Some(*max_age).filter(|max_age| !max_age.is_zero()),
        Err(err) => {
            warn!(cause = %err, stream, "cannot read the shared stream's maxAge; the endpoint's own is the retention for now");
            None
        }
    }
}

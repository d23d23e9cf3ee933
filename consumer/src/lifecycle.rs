//! The consumer's life: [`run`] connects (lazily: it serves `/readyz` as not
//! ready while Postgres or NATS is down), migrates, provisions when asked,
//! binds to the durable consumer (each step retried with backoff), consumes
//! until the shutdown signal, and finishes the batches in hand.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use hookline_api::ValidatedEndpoint;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::http::{self, HttpState};
use crate::metrics::{Metrics, MetricsRegistry};
use crate::refetch::Refetcher;
use crate::store::{self, retention};
use crate::{Config, Error, Result, Shutdown, consume};

/// Database connections beyond one per batch in flight: the readiness probe
/// and the retention sweep each need one without waiting for a batch.
pub(crate) const SPARE_CONNECTIONS: u32 = 2;
/// The least statement timeout. Otherwise it is `ackWait`: a statement still
/// running when its batch is redelivered only doubles the work.
pub(crate) const MIN_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// First pause between start-up attempts; it doubles up to [`RETRY_MAX_DELAY`].
const RETRY_FIRST_DELAY: Duration = Duration::from_millis(500);
/// Longest pause between start-up attempts: a database or NATS that comes
/// back is found within seconds.
const RETRY_MAX_DELAY: Duration = Duration::from_secs(10);
/// How long the last acknowledgements may take to reach NATS at exit; what
/// does not arrive is redelivered (and deduplicated).
pub(crate) const FINAL_FLUSH: Duration = Duration::from_secs(5);
/// How long the health server may take to close its connections at exit.
pub(crate) const HTTP_SHUTDOWN: Duration = Duration::from_secs(5);

/// Runs the consumer on `listener` (`/healthz`, `/readyz`, `/metrics`) until
/// `shutdown` completes, then finishes the batches in hand and returns. Waits
/// (reporting not-ready) while Postgres or NATS is unreachable; fails only on
/// errors no retry can fix (a bad URL or credentials file).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let shutdown = Shutdown::new(shutdown);
    let key = config.endpoint.key();
    let settings = &config.endpoint.consumer;
    let options = store::connect_options(&config.database_url)?;
    let connections = u32::from(config.concurrency) + SPARE_CONNECTIONS;
    let pool = store::pool(
        &options,
        connections,
        settings.ack_wait.max(MIN_STATEMENT_TIMEOUT),
    );
    let metrics = Arc::new(MetricsRegistry::new());
    let refetch = settings
        .refetch
        .as_ref()
        .map(|refetch| Refetcher::new(refetch.clone(), config.refetch_auth_file.clone()))
        .transpose()?;
    let nats =
        hookline_api::nats::connect(&config.nats_url, &config.nats_auth, "hookline-consumer")
            .await?;
    let js = jetstream::new(nats.clone());

    let started = Arc::new(AtomicBool::new(false));
    let address = listener.local_addr().ok();
    let server = serve_http(
        listener,
        HttpState {
            metrics: metrics.clone(),
            pool: pool.clone(),
            nats: nats.clone(),
            started: started.clone(),
            pool_status: None,
        },
        &shutdown,
    );
    info!(endpoint = %key, listen = ?address, stream = %config.endpoint.stream.name, "starting");

    let consumer = match start_up(&config, &options, &js, &shutdown).await {
        Ok(consumer) => consumer,
        Err(err) => {
            server.abort();
            return Err(err);
        }
    };
    if let Some(consumer) = consumer {
        started.store(true, Ordering::Relaxed);
        info!("consuming");
        let endpoint = Served {
            endpoint: config.endpoint.clone(),
            refetch,
            concurrency: config.concurrency.into(),
            sweep_interval: config.sweep_interval,
            pull_budget: consume::PullBudget::default(),
            drain_until_gone: false,
        };
        consume_bound(
            &endpoint,
            consumer,
            &pool,
            Arc::new(metrics.endpoint(&key)),
            &shutdown,
        )
        .await;
    }

    finish(&nats, shutdown, server, &pool).await;
    Ok(())
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until `shutdown`.
pub(crate) fn serve_http(
    listener: TcpListener,
    state: HttpState,
    shutdown: &Shutdown,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let app = http::router(state);
    let mut http_shutdown = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_shutdown.wait().await })
            .await
    })
}

/// The end of a run, once the loops have stopped: the buffered
/// acknowledgements sent, the HTTP server given time to finish, the database
/// pool closed.
pub(crate) async fn finish(
    nats: &async_nats::Client,
    mut shutdown: Shutdown,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    pool: &sqlx::PgPool,
) {
    // Acks are buffered by the client: send them before leaving.
    if tokio::time::timeout(FINAL_FLUSH, nats.flush())
        .await
        .is_err()
    {
        warn!("NATS did not take the last acknowledgements in time; they will be redelivered");
    }
    shutdown.wait().await;
    let _ = tokio::time::timeout(HTTP_SHUTDOWN, server).await;
    pool.close().await;
    info!("stopped");
}

/// Migrates the database, provisions the stream when asked, and finds the
/// durable consumer, each retried until it works; `None` when shutdown came first.
async fn start_up(
    config: &Config,
    options: &PgConnectOptions,
    js: &jetstream::Context,
    shutdown: &Shutdown,
) -> Result<Option<PullConsumer>> {
    let migrated = retry("migrate the database", shutdown, || store::migrate(options)).await?;
    if migrated.is_none() {
        return Ok(None);
    }
    bind(&config.endpoint, config.provision, js, shutdown).await
}

/// Provisions the endpoint's stream and durable consumer when asked, then
/// finds the durable consumer, each retried until it works; `None` when
/// shutdown came first.
pub(crate) async fn bind(
    endpoint: &ValidatedEndpoint,
    provision: bool,
    js: &jetstream::Context,
    shutdown: &Shutdown,
) -> Result<Option<PullConsumer>> {
    if provision {
        let provisioned = retry("provision the stream and consumer", shutdown, || async {
            hookline_api::provision::provision(js, endpoint)
                .await
                .map_err(Error::from)
        })
        .await?;
        if provisioned.is_none() {
            return Ok(None);
        }
    }
    retry("find the durable consumer", shutdown, || async {
        let stream_name = &endpoint.stream.name;
        let durable_name = &endpoint.consumer.durable_name;
        let stream = js.get_stream(stream_name).await.map_err(|err| {
            Error::JetStream(format!(
                "stream {stream_name}: {err} (run with --provision, or let the operator create it)"
            ))
        })?;
        stream
            .get_consumer::<jetstream::consumer::pull::Config>(durable_name)
            .await
            .map_err(|err| Error::JetStream(format!("durable consumer {durable_name}: {err}")))
    })
    .await
}

/// One endpoint as a consume loop runs it.
#[derive(Debug)]
pub(crate) struct Served {
    pub endpoint: ValidatedEndpoint,
    pub refetch: Option<Refetcher>,
    /// Batches in flight at once, for this endpoint.
    pub concurrency: usize,
    pub sweep_interval: Duration,
    /// Shared by every loop of the process.
    pub pull_budget: consume::PullBudget,
    /// A shared-stream member's own stream, drained beside the pool's: the
    /// loop ends once the stream or its durable is gone (the operator deletes
    /// the stream when empty), and leaves the retention sweep to the
    /// member's loop on the pool's stream.
    pub drain_until_gone: bool,
}

impl Served {
    /// What its batches are processed with; `gate` is shared by the
    /// members of a pool's shared stream.
    pub(crate) fn context(
        &self,
        pool: &PgPool,
        metrics: Arc<Metrics>,
        gate: Arc<consume::DatabaseGate>,
        shutdown: &Shutdown,
    ) -> Arc<consume::Context> {
        Arc::new(consume::Context {
            endpoint: self.endpoint.clone(),
            key: self.endpoint.key(),
            pool: pool.clone(),
            metrics,
            refetch: self.refetch.clone(),
            projection: crate::decode::Projection::of(&self.endpoint),
            gate,
            shutdown: shutdown.clone(),
            drain_until_gone: self.drain_until_gone,
        })
    }

    /// The endpoint's retention sweep, until `shutdown` (none for a stream
    /// drained until gone: the endpoint's main loop sweeps).
    pub(crate) fn sweeper(
        &self,
        pool: &PgPool,
        shutdown: &Shutdown,
    ) -> Option<tokio::task::JoinHandle<()>> {
        (!self.drain_until_gone).then(|| {
            tokio::spawn(retention::sweep_every(
                pool.clone(),
                self.endpoint.key(),
                self.endpoint.stream.max_age,
                self.sweep_interval,
                shutdown.clone(),
            ))
        })
    }
}

/// Consumes from `consumer` (already bound) until `shutdown`, with the
/// endpoint's retention sweep beside it; returns once the batches in hand are
/// settled (their acknowledgements may still be in the client's buffer).
pub(crate) async fn consume_bound(
    served: &Served,
    consumer: PullConsumer,
    pool: &PgPool,
    metrics: Arc<Metrics>,
    shutdown: &Shutdown,
) {
    let sweeper = served.sweeper(pool, shutdown);
    let pending = metrics.jetstream_pending.clone();
    let ctx = served.context(pool, metrics, Arc::default(), shutdown);
    consume::consume(
        ctx,
        consumer,
        served.concurrency,
        &served.pull_budget,
        shutdown.clone(),
    )
    .await;
    if let Some(sweeper) = sweeper {
        sweeper.abort();
    }
    // A stopped loop no longer knows its pending count: its series goes
    // rather than stay at its last value.
    pending.clear();
}

/// Calls `attempt` until it succeeds, backing off from [`RETRY_FIRST_DELAY`]
/// to [`RETRY_MAX_DELAY`] and logging each failure; gives up only on a
/// configuration error. `Ok(None)` when shutdown came first.
pub(crate) async fn retry<T, F, Fut>(
    what: &str,
    shutdown: &Shutdown,
    mut attempt: F,
) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut shutdown = shutdown.clone();
    let mut delay = RETRY_FIRST_DELAY;
    loop {
        if shutdown.is_requested() {
            return Ok(None);
        }
        let outcome = tokio::select! {
            _ = shutdown.wait() => return Ok(None),
            outcome = attempt() => outcome,
        };
        match outcome {
            Ok(value) => return Ok(Some(value)),
            Err(err @ Error::Config(_)) => return Err(err),
            Err(err) => {
                warn!(cause = %err, retry_in = ?delay, "cannot {what} yet");
                if !shutdown.sleep(delay).await {
                    return Ok(None);
                }
                delay = (delay * 2).min(RETRY_MAX_DELAY);
            }
        }
    }
}

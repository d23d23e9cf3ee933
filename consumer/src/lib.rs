//! `hookline-consumer`: drains one WebhookEndpoint's JetStream stream into
//! Postgres, exactly once in effect and ordered by event time.
//!
//! - [`config`]: the command line and the checked [`Config`].
//! - [`decode`]: message → [`decode::Event`], with no I/O (poison is found here).
//! - [`store`]: migrations, the batch transaction (insert, projection upsert,
//!   `NOTIFY`), dead letters, the retention sweep.
//! - [`refetch`]: the object's state from the provider's API.
//! - [`consume`]: the pull loop, batching, ack / nak / dead-letter + terminate.
//! - [`replay`]: the `replay` subcommand.
//! - [`http`] and [`metrics`]: `/healthz`, `/readyz`, `/metrics`.
//!
//! [`run`] ties them together; `main.rs` only parses flags, sets up logging
//! and turns SIGTERM / Ctrl-C into the shutdown future.

pub mod config;
pub mod consume;
pub mod decode;
pub mod http;
pub mod metrics;
pub mod refetch;
pub mod replay;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use rand::Rng;
use tokio::sync::watch;
use tracing::{info, warn};

pub use config::Config;

/// Why the consumer could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or the manifest is wrong; nothing was started.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Manifest(#[from] hookline_api::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("NATS: {0}")]
    Nats(String),
    #[error(transparent)]
    Provision(#[from] hookline_api::provision::ProvisionError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The shutdown signal as every task sees it.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A signal that fires when `signal` completes.
    pub fn new(signal: impl Future<Output = ()> + Send + 'static) -> Shutdown {
        let (sender, receiver) = watch::channel(false);
        tokio::spawn(async move {
            signal.await;
            let _ = sender.send(true);
        });
        Shutdown(receiver)
    }

    /// Waits until shutdown was asked for.
    pub async fn wait(&mut self) {
        // An error means the sender is gone, which only happens after sending.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Sleeps for `duration`; `false` when shutdown came first.
    pub async fn sleep(&mut self, duration: Duration) -> bool {
        tokio::select! {
            _ = self.wait() => false,
            _ = tokio::time::sleep(duration) => true,
        }
    }
}

/// Runs the consumer until `shutdown` completes, then finishes the batches in
/// hand and returns. Waits (reporting not-ready) while Postgres or NATS is
/// unreachable; fails only on errors no retry can fix (bad URL, bad address).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let mut shutdown = Shutdown::new(shutdown);
    let key = config.endpoint.key();
    let settings = &config.endpoint.consumer;
    let options = store::connect_options(&config.database_url)?;
    let pool = store::pool(
        &options,
        u32::try_from(config.concurrency).unwrap_or(8) + 2,
        settings.ack_wait.max(Duration::from_secs(10)),
    );
    let metrics = Arc::new(metrics::Metrics::new(&key));
    let refetch = match &settings.refetch {
        Some(refetch) => Some(refetch::Refetcher::new(
            refetch.clone(),
            config.refetch_auth_file.clone(),
        )?),
        None => None,
    };

    let nats = async_nats::ConnectOptions::new()
        .name("hookline-consumer")
        .retry_on_initial_connect()
        .connect(config.nats_url.as_str())
        .await
        .map_err(|err| Error::Nats(format!("cannot connect to {}: {err}", config.nats_url)))?;
    let js = jetstream::new(nats.clone());

    let started = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
    let app = http::router(http::HttpState {
        metrics: metrics.clone(),
        pool: pool.clone(),
        nats: nats.clone(),
        started: started.clone(),
    });
    let mut http_shutdown = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_shutdown.wait().await })
            .await
    });
    info!(endpoint = %key, listen = %config.listen, stream = %config.endpoint.stream.name, "starting");

    let consumer = async {
        retry("migrate the database", &mut shutdown.clone(), || {
            store::migrate(&options)
        })
        .await?;
        if config.provision {
            retry(
                "provision the stream and consumer",
                &mut shutdown.clone(),
                || async {
                    hookline_api::provision::provision(&js, &config.endpoint)
                        .await
                        .map_err(Error::from)
                },
            )
            .await?;
        }
        retry(
            "find the durable consumer",
            &mut shutdown.clone(),
            || async {
                let stream = js
                .get_stream(&config.endpoint.stream.name)
                .await
                .map_err(|err| {
                    Error::Nats(format!(
                        "stream {}: {err} (run with --provision, or let the operator create it)",
                        config.endpoint.stream.name
                    ))
                })?;
                stream
                    .get_consumer::<jetstream::consumer::pull::Config>(&settings.durable_name)
                    .await
                    .map_err(|err| {
                        Error::Nats(format!("durable consumer {}: {err}", settings.durable_name))
                    })
            },
        )
        .await
    }
    .await;
    let consumer = match consumer {
        Ok(consumer) => consumer,
        Err(err) => {
            server.abort();
            return Err(err);
        }
    };

    if let Some(consumer) = consumer {
        started.store(true, Ordering::Relaxed);
        info!("consuming");
        let sweeper = tokio::spawn(sweep_loop(
            pool.clone(),
            key.clone(),
            config.endpoint.stream.max_age,
            config.sweep_interval,
            shutdown.clone(),
        ));
        let ctx = Arc::new(consume::Context {
            endpoint: config.endpoint.clone(),
            key: key.clone(),
            pool: pool.clone(),
            metrics,
            refetch,
        });
        consume::consume(ctx, consumer, config.concurrency, shutdown.clone()).await;
        sweeper.abort();
    }

    // Acks are buffered by the client: send them before leaving.
    if tokio::time::timeout(Duration::from_secs(5), nats.flush())
        .await
        .is_err()
    {
        warn!("NATS did not take the last acknowledgements in time; they will be redelivered");
    }
    shutdown.wait().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    pool.close().await;
    info!("stopped");
    Ok(())
}

/// Calls `attempt` until it succeeds, backing off from 0.5 s to 10 s and
/// logging each failure; `Ok(None)` when shutdown came first.
async fn retry<T, F, Fut>(what: &str, shutdown: &mut Shutdown, mut attempt: F) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(500);
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
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Deletes events older than the stream's `maxAge` every `interval` (first
/// after a random part of it, so instances do not sweep in step).
async fn sweep_loop(
    pool: sqlx::PgPool,
    endpoint: String,
    max_age: Duration,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    let mut wait = interval.mul_f64(rand::rng().random_range(0.1..1.0));
    while shutdown.sleep(wait).await {
        match store::sweep(&pool, &endpoint, max_age, 1000).await {
            Ok(0) => {}
            Ok(deleted) => info!(deleted, "retention sweep deleted old events"),
            Err(err) => warn!(cause = %err, "retention sweep failed; will try again"),
        }
        wait = interval;
    }
}

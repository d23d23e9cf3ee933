//! The receiver's life: [`run`] builds the shared state, waits briefly for
//! NATS, starts the background tasks (with `--endpoint`: the secret watcher
//! and the stream's readiness; in a pool: the reload of both directories and
//! the deletion advisories), serves until the shutdown signal, then drains
//! in-flight requests within a bound.

use hookline_api::runtime::Shutdown;
use std::future::Future;
use std::time::Duration;

use hookline_api::headers::HEADER_ALLOWANCE;
use tokio::net::TcpListener;

use std::net::SocketAddr;

use tokio::task::JoinHandle;

use crate::connections::{self, Limits};
use crate::pool::Pool;
use crate::routes::router;
use crate::state::AppState;
use crate::{Config, Endpoints, Error, Result};

/// How long start-up waits for NATS before serving anyway (not ready).
const INITIAL_CONNECT_WAIT: Duration = Duration::from_secs(3);

/// How long the last buffered messages may take to reach NATS at exit.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// Serves until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish (each gets its 200 after a PubAck, or a 503), bounded by the
/// shutdown timeout, and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    // A pool's directory is read before anything else, so a pool of two
    // namespaces stops at once.
    let pool = match &config.endpoints {
        Endpoints::One { .. } => None,
        Endpoints::Pool {
            endpoint_dir,
            secret_dir,
            cluster_name,
            shared_stream,
        } => Some(Pool::open(
            endpoint_dir,
            secret_dir,
            cluster_name.clone(),
            shared_stream.clone(),
            config.replicas,
            config.provision,
        )?),
    };
    let state = AppState::new(&config).await?;

    // Give NATS a moment, so a receiver started next to a running server is
    // ready (and its streams provisioned) before the first request is served.
    let connected = state.nats.wait_connected(INITIAL_CONNECT_WAIT).await;
    if !connected {
        tracing::warn!(url = %config.nats_url, "NATS is not reachable yet; serving, not ready, and retrying");
    }
    let address = listener.local_addr().map_err(Error::Serve)?;
    let background = match pool {
        None => start_one(&state, &config, connected, address).await,
        Some((pool, first)) => {
            pool.apply(&state, first).await;
            tracing::info!(%address, "serving");
            vec![
                tokio::spawn(pool.run(state.clone(), config.secret_poll_interval)),
                tokio::spawn(crate::pool::watch_deletions(state.clone())),
                tokio::spawn(crate::pool::list_wanted_streams(state.clone())),
            ]
        }
    };

    let signal_state = state.clone();
    let stopping = Shutdown::new(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        signal_state.begin_shutdown();
    });
    let limits = Limits {
        max_connections: config.max_connections,
        header_read_timeout: config.header_read_timeout,
    };
    let server = connections::serve(
        listener,
        router(state.clone()),
        limits,
        stopping.requested(),
    );
    let grace = config.shutdown_timeout;
    let deadline = async {
        stopping.requested().await;
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        () = server => Ok(()),
        () = deadline => {
            tracing::warn!(?grace, "in-flight requests did not finish in time; exiting");
            Ok(())
        }
    };
    for task in background {
        task.abort();
    }
    state.nats.flush(FINAL_FLUSH).await;
    tracing::info!("stopped");
    result
}

/// `--endpoint`: the first probe (and provisioning), then a task re-reading
/// the secret file and one probing the stream, as before pools.
async fn start_one(
    state: &AppState,
    config: &Config,
    connected: bool,
    address: SocketAddr,
) -> Vec<JoinHandle<()>> {
    let Some(one) = state.routes.load().single().cloned() else {
        return Vec::new();
    };
    if connected {
        if one.store.provision().await {
            one.store.probe().await;
        }
        let max_payload = one.store.max_payload();
        if one.endpoint.request.max_body_bytes + HEADER_ALLOWANCE > max_payload {
            tracing::warn!(
                max_body_bytes = one.endpoint.request.max_body_bytes,
                max_payload,
                "bodies near request.maxBodyBytes exceed the NATS server's max_payload and will be answered 413"
            );
        }
    }
    tracing::info!(%address, path = %one.endpoint.route.path, endpoint = %one.key(), provider = %one.endpoint.provider, "serving");
    vec![
        tokio::spawn(
            one.secrets
                .clone()
                .watch(config.secret_poll_interval, one.metrics.clone()),
        ),
        tokio::spawn(one.store.clone().watch(one.metrics.clone())),
    ]
}

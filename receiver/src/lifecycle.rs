//! The receiver's life: [`run`] builds the shared state, waits briefly for
//! NATS, starts the background tasks (secret watcher, stream readiness), serves
//! until the shutdown signal, then drains in-flight requests within a bound.

use hookline_api::runtime::Shutdown;
use std::future::Future;
use std::time::Duration;

use hookline_api::headers::HEADER_ALLOWANCE;
use tokio::net::TcpListener;

use crate::connections::{self, Limits};
use crate::routes::router;
use crate::state::AppState;
use crate::{Config, Error, Result};

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
    let state = AppState::new(&config).await?;

    // Give NATS a moment, so a receiver started next to a running server is
    // ready (and its stream provisioned) before the first request is served.
    if state.store.wait_connected(INITIAL_CONNECT_WAIT).await {
        if state.store.provision(&state.endpoint).await {
            state.store.probe().await;
        }
        let max_payload = state.store.max_payload();
        if state.endpoint.request.max_body_bytes + HEADER_ALLOWANCE > max_payload {
            tracing::warn!(
                max_body_bytes = state.endpoint.request.max_body_bytes,
                max_payload,
                "bodies near request.maxBodyBytes exceed the NATS server's max_payload and will be answered 413"
            );
        }
    } else {
        tracing::warn!(url = %config.nats_url, "NATS is not reachable yet; serving, not ready, and retrying");
    }
    let background = [
        tokio::spawn(
            state
                .secrets
                .clone()
                .watch(config.secret_poll_interval, state.metrics.clone()),
        ),
        tokio::spawn(
            state
                .store
                .clone()
                .watch(state.endpoint.clone(), state.metrics.clone()),
        ),
    ];

    let address = listener.local_addr().map_err(Error::Serve)?;
    tracing::info!(%address, path = %state.endpoint.route.path, endpoint = %state.headers.endpoint, provider = %state.endpoint.provider, "serving");

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
    state.store.flush(FINAL_FLUSH).await;
    tracing::info!("stopped");
    result
}

//! The consumer's HTTP side: `/healthz` (alive), `/readyz` (migrated, bound to
//! the durable consumer — every loaded endpoint's with `--endpoint-dir` — NATS
//! and Postgres answering) and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;

use crate::metrics::MetricsRegistry;
use crate::pool::PoolStatus;

/// How long `/readyz` waits for Postgres to answer before it says not ready.
const DATABASE_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers look at.
#[derive(Clone, Debug)]
pub struct HttpState {
    pub metrics: Arc<MetricsRegistry>,
    pub pool: PgPool,
    pub nats: async_nats::Client,
    /// Migrated and bound to the durable consumer (with `--endpoint-dir`:
    /// migrated; each endpoint's binding is in `pool_status`).
    pub started: Arc<AtomicBool>,
    /// The endpoints a pool consumer serves and the manifests it skips;
    /// `None` with `--endpoint`.
    pub pool_status: Option<PoolStatus>,
}

/// The router, separate from serving so it can be tested without a socket.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let started = state.started.load(Ordering::Relaxed);
    let nats = state.nats.connection_state() == async_nats::connection::State::Connected;
    let database = tokio::time::timeout(DATABASE_PING_TIMEOUT, crate::store::ping(&state.pool))
        .await
        .unwrap_or(false);
    let mut body = json!({
        "started": started,
        "nats": nats,
        "database": database,
    });
    let mut bound = true;
    if let Some(pool) = &state.pool_status {
        let (endpoints, skipped) = pool.snapshot();
        bound = endpoints.values().all(|bound| *bound);
        body["endpoints"] = json!(endpoints);
        body["skipped"] = json!(skipped);
    }
    let status = if started && nats && database && bound {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    hookline_api::runtime::metrics_response(state.metrics.registry())
}

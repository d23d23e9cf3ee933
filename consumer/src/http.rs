//! The consumer's HTTP side: `/healthz` (alive), `/readyz` (migrated, bound to
//! the durable consumer, NATS and Postgres answering) and `/metrics`.

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

use crate::metrics::Metrics;

/// How long `/readyz` waits for Postgres to answer before it says not ready.
const DATABASE_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers look at.
#[derive(Clone, Debug)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub pool: PgPool,
    pub nats: async_nats::Client,
    /// Migrated and bound to the durable consumer.
    pub started: Arc<AtomicBool>,
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
    let body = json!({
        "started": started,
        "nats": nats,
        "database": database,
    });
    let status = if started && nats && database {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    hookline_api::runtime::metrics_response(state.metrics.registry())
}

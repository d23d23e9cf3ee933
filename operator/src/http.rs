//! `/healthz`, `/readyz` and `/metrics` of the operator.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::metrics::Metrics;

/// What the handlers report.
#[derive(Clone, Debug, Default)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    /// The API server answered and the CRD is installed.
    pub started: Arc<AtomicBool>,
    /// This replica holds the Lease and reconciles.
    pub leading: Arc<AtomicBool>,
}

/// The router, separate from serving so tests need no socket.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready once started; a standby replica is ready too (it is healthy and
/// takes over when the leader goes).
async fn readyz(State(health): State<Health>) -> Response {
    let started = health.started.load(Ordering::Relaxed);
    let body = Json(json!({
        "started": started,
        "leading": health.leading.load(Ordering::Relaxed),
    }));
    let status = if started {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

async fn metrics(State(health): State<Health>) -> Response {
    hookline_api::runtime::metrics_response(&health.metrics.registry)
}

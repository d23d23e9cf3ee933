//! `/healthz`, `/readyz` and `/metrics` of the operator, and each
//! WebhookPool's lag for KEDA's `metrics-api` trigger.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hookline_api::pool::WebhookPool;
use kube::{Api, Client};
use serde_json::json;
use tracing::warn;

use crate::metrics::Metrics;

/// What the handlers report.
#[derive(Clone, Default)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    /// The API server answered and the CRD is installed.
    pub started: Arc<AtomicBool>,
    /// This replica holds the Lease and reconciles.
    pub leading: Arc<AtomicBool>,
    /// Where a standby reads a pool's lag: the leader's figure in its status.
    pub client: Option<Client>,
}

/// The router, separate from serving so tests need no socket.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/pools/{namespace}/{pool}/lag", get(pool_lag))
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

/// `{"lag": N, "members": M}`: the sum of the pool's members' pending
/// events, as the leader read them at its last resync; a pool the leader
/// does not know is 404. The chart's Service sends KEDA's polls to any
/// replica: a standby answers with what the leader last wrote in the pool's
/// status (`pending`, `members`), one GET per poll.
async fn pool_lag(
    State(health): State<Health>,
    Path((namespace, pool)): Path<(String, String)>,
) -> Response {
    if !health.leading.load(Ordering::Relaxed) {
        return match &health.client {
            Some(client) => standby_lag(client, &namespace, &pool).await,
            None => unavailable("this replica is not leading and reads no lag"),
        };
    }
    match health.metrics.pool_lag(&format!("{namespace}/{pool}")) {
        Some((lag, members)) => Json(json!({"lag": lag, "members": members})).into_response(),
        None => not_found(&namespace, &pool),
    }
}

/// A pool's lag as its status says (the standby's answer): 503 while the
/// leader has written none, or when the API server does not answer (KEDA
/// keeps the current size on a failed poll).
pub async fn standby_lag(client: &Client, namespace: &str, pool: &str) -> Response {
    let pools: Api<WebhookPool> = Api::namespaced(client.clone(), namespace);
    match pools.get_opt(pool).await {
        Ok(Some(found)) => {
            let status = found.status.unwrap_or_default();
            match status.pending {
                Some(lag) => Json(json!({"lag": lag, "members": status.members.unwrap_or(0)}))
                    .into_response(),
                None => unavailable("the leader has not written this pool's lag yet"),
            }
        }
        Ok(None) => not_found(namespace, pool),
        Err(err) => {
            warn!(namespace, pool, cause = %err, "cannot read the pool's status for its lag");
            unavailable("cannot read the pool's status")
        }
    }
}

fn unavailable(why: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": why}))).into_response()
}

fn not_found(namespace: &str, pool: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!("no WebhookPool {namespace}/{pool}")})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_lag(health: &Health, path: &str) -> (StatusCode, serde_json::Value) {
        let response = router(health.clone())
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).expect("JSON"))
    }

    #[tokio::test]
    async fn a_pools_lag_is_its_members_pending_and_a_standby_without_a_client_answers_503() {
        let health = Health::default();
        health.metrics.set_pending("shop/a", Some(7));
        health.metrics.set_pending("shop/b", Some(5));
        health.metrics.set_pending("other/a", Some(100));
        health
            .metrics
            .set_pool_members("shop/p", Some(vec!["shop/a".into(), "shop/b".into()]));
        let (status, _) = get_lag(&health, "/pools/shop/p/lag").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "standby");
        health.leading.store(true, Ordering::Relaxed);
        let (status, body) = get_lag(&health, "/pools/shop/p/lag").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"lag": 12, "members": 2}));
        let (status, _) = get_lag(&health, "/pools/shop/nope/lag").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}

//! The routes: the endpoint's path (matched exactly, so no manifest path can
//! clash with the router's own syntax) into the [`crate::pipeline`], `/healthz`,
//! `/readyz` and `/metrics`; and a JSON body for every refusal, the framework's
//! own included.
//!
//! The webhook path is the router's fallback and carries no tower layers: it
//! bounds its own time (408) and answers JSON itself, so the one route every
//! event takes costs no boxed-service clones per request. The layers (the
//! same timeout, JSON bodies for the framework's refusals) are on the other
//! routes only.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tower_http::timeout::TimeoutLayer;

use crate::pipeline;
use crate::state::AppState;
use crate::store::Readiness;

/// The receiver's routes over `state`, ready to serve.
pub fn router(state: Arc<AppState>) -> Router {
    let timeout = state.request_timeout;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route_layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .route_layer(axum::middleware::map_response(json_errors))
        .fallback(endpoint)
        .with_state(state)
}

/// The webhook path takes POST; anything else is 404 or 405. A request not
/// answered within the request timeout (a body still arriving) is 408, and
/// is not counted, like the other refusals made before the pipeline.
async fn endpoint(State(state): State<Arc<AppState>>, request: Request) -> Response {
    if request.uri().path() != state.endpoint.route.path {
        return refusal(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
    }
    if request.method() != Method::POST {
        let mut response = refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let timeout = state.request_timeout;
    match tokio::time::timeout(timeout, pipeline::handle(state, request)).await {
        Ok(response) => response,
        Err(_elapsed) => refusal(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "Request Timeout",
        ),
    }
}

fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": code, "message": message })),
    )
        .into_response()
}

/// Gives the framework's own bodiless refusals (a timeout, a wrong method on
/// a health route) the same JSON body as ours.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let reason = status.canonical_reason().unwrap_or("error");
    let code = reason.to_ascii_lowercase().replace([' ', '-'], "_");
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let (json_parts, body) = refusal(status, &code, reason).into_parts();
    parts.headers.extend(json_parts.headers);
    Response::from_parts(parts, body)
}

async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.is_ready();
    let readiness = state.store.readiness();
    let body = json!({
        "ready": ready,
        "secrets": state.secrets.current().keys.len(),
        "natsConnected": state.store.is_connected(),
        "streamReachable": readiness != Readiness::StreamUnreachable,
        "consumerPresent": readiness == Readiness::Ready,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    hookline_api::runtime::metrics_response(state.metrics.registry())
}

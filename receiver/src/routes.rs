//! The routes: each endpoint's host and path (the [`Routes`] table, matched
//! exactly, so no manifest path can clash with the router's own syntax) into
//! the [`crate::pipeline`], `/healthz`, `/readyz`, `/metrics` and
//! `/endpoints`; and a JSON body for every refusal, the framework's own
//! included.
//!
//! The webhook path is the router's fallback and carries no tower layers: it
//! bounds its own time (408) and answers JSON itself, so the one route every
//! event takes costs no boxed-service clones per request. The layers (the
//! same timeout, JSON bodies for the framework's refusals) are on the other
//! routes only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tower_http::timeout::TimeoutLayer;

use crate::pipeline;
use crate::state::{AppState, EndpointState};
use crate::store::Readiness;

/// Which endpoint serves a request: by exact path, then by host. Immutable:
/// a pool builds a new one aside and swaps it in whole.
#[derive(Default)]
pub struct Routes {
    /// `--endpoint`: the one endpoint, served on its path whatever the host.
    single: Option<Arc<EndpointState>>,
    paths: HashMap<String, PathRoutes>,
    /// Every endpoint served, by key (`namespace/name`).
    pub(crate) endpoints: BTreeMap<String, Arc<EndpointState>>,
    /// File name → why it is not served.
    pub(crate) skipped: BTreeMap<String, String>,
}

/// The endpoints of one path: those of a host (lower case, no port), and
/// the one of any host.
#[derive(Default)]
struct PathRoutes {
    hosts: HashMap<String, Arc<EndpointState>>,
    any: Option<Arc<EndpointState>>,
}

impl Routes {
    /// `--endpoint`: `one` on its path, on any host (as before pools).
    pub fn one(one: Arc<EndpointState>) -> Routes {
        let mut routes = Routes::default();
        routes
            .paths
            .entry(one.endpoint.route.path.clone())
            .or_default()
            .any = Some(one.clone());
        routes.endpoints.insert(one.key().to_owned(), one.clone());
        routes.single = Some(one);
        routes
    }

    /// The `--endpoint` endpoint; `None` in a pool.
    pub fn single(&self) -> Option<&Arc<EndpointState>> {
        self.single.as_ref()
    }

    /// Adds a pool's endpoint on its `spec.ingress.host` (any host without
    /// one) and path; when that host and path are taken, gives back the key of
    /// the endpoint that has them.
    pub fn add(&mut self, endpoint: Arc<EndpointState>) -> Result<(), String> {
        let route = &endpoint.endpoint.route;
        let host = route
            .ingress
            .as_ref()
            .and_then(|ingress| ingress.host.as_deref())
            .map(str::to_ascii_lowercase);
        let routes = self.paths.entry(route.path.clone()).or_default();
        let slot = match host {
            Some(host) => routes.hosts.entry(host).or_insert_with(|| endpoint.clone()),
            None => routes.any.get_or_insert_with(|| endpoint.clone()),
        };
        if !Arc::ptr_eq(slot, &endpoint) {
            return Err(slot.key().to_owned());
        }
        self.endpoints.insert(endpoint.key().to_owned(), endpoint);
        Ok(())
    }

    /// The endpoint of `path` for `request`'s host: the host's own first,
    /// then the one of any host.
    fn find(&self, path: &str, request: &Request) -> Option<&Arc<EndpointState>> {
        let routes = self.paths.get(path)?;
        if !routes.hosts.is_empty()
            && let Some(host) = request_host(request)
            && let Some(endpoint) = routes.hosts.get(&host)
        {
            return Some(endpoint);
        }
        routes.any.as_ref()
    }
}

/// The request's host in lower case without its port: from the URI's
/// authority (HTTP/2, absolute form), else the `Host` header.
fn request_host(request: &Request) -> Option<String> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.clone(),
        None => request
            .headers()
            .get(header::HOST)?
            .to_str()
            .ok()?
            .parse::<axum::http::uri::Authority>()
            .ok()?,
    };
    let host = authority.host();
    let host = host.strip_suffix('.').unwrap_or(host);
    Some(host.to_ascii_lowercase())
}

/// The receiver's routes over `state`, ready to serve.
pub fn router(state: Arc<AppState>) -> Router {
    let timeout = state.request_timeout;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // A webhook may be on `/endpoints` (this route came later than
        // manifests could name it): its POSTs still reach it.
        .route("/endpoints", get(endpoints).fallback(endpoint))
        .route_layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .route_layer(axum::middleware::map_response(json_errors))
        .fallback(endpoint)
        .with_state(state)
}

/// A webhook path takes POST; anything else is 404 or 405. A request not
/// answered within the request timeout (a body still arriving) is 408, and
/// is not counted, like the other refusals made before the pipeline. The
/// endpoint is taken from the table current when the request arrives, and
/// the request keeps it to the end, whatever reloads meanwhile.
async fn endpoint(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let Some(endpoint) = state
        .routes
        .load()
        .find(request.uri().path(), &request)
        .cloned()
    else {
        return refusal(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
    };
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
    match tokio::time::timeout(timeout, pipeline::handle(&state, endpoint, request)).await {
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

/// With `--endpoint`, the endpoint's state as before; a pool's readiness is
/// the process's, and its endpoints are counted (details in `/endpoints`).
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.is_ready();
    let routes = state.routes.load();
    let body = match routes.single() {
        Some(one) => {
            let readiness = one.store.readiness();
            json!({
                "ready": ready,
                "secrets": one.secrets.current().keys.len(),
                "natsConnected": one.store.is_connected(),
                "streamReachable": readiness != Readiness::StreamUnreachable,
                "consumerPresent": readiness == Readiness::Ready,
            })
        }
        None => json!({
            "ready": ready,
            "natsConnected": state.nats.is_connected(),
            "endpoints": routes.endpoints.len(),
            "skipped": routes.skipped.len(),
        }),
    };
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

/// Each endpoint served (its host, path, secrets loaded, the hash of the
/// manifest it was built from, whether its stream answered the last probe:
/// `null` before one) and each manifest skipped with why. What the operator
/// compares with the manifests it wrote.
async fn endpoints(State(state): State<Arc<AppState>>) -> Response {
    let routes = state.routes.load();
    let endpoints: Vec<_> = routes
        .endpoints
        .values()
        .map(|one| {
            let route = &one.endpoint.route;
            json!({
                "endpoint": one.key(),
                "host": route.ingress.as_ref().and_then(|ingress| ingress.host.as_deref()),
                "path": route.path,
                "secrets": one.secrets.current().keys.len(),
                "manifestHash": one.manifest_hash,
                "streamReachable": one.store.stream_reachable(),
            })
        })
        .collect();
    axum::Json(json!({ "endpoints": endpoints, "skipped": routes.skipped })).into_response()
}

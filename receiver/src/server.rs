//! The HTTP side: the router, the request pipeline, and [`run`] with graceful
//! shutdown.

use std::future::{Future, IntoFuture};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use hookline_api::ValidatedEndpoint;
use hookline_api::validated::{FieldSource, Provider, SourceFilter};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower_http::timeout::TimeoutLayer;
use tracing::{Instrument, field};

use crate::event::{self, EventInfo, HeaderContext};
use crate::json::JsonReader;
use crate::metrics::Metrics;
use crate::secrets::SecretStore;
use crate::store::Store;
use crate::verify::Verifier;
use crate::{Config, Error, Result};

/// How long start-up waits for NATS before serving anyway (not ready).
const INITIAL_CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Room for the message headers next to the body in one NATS message.
const HEADER_ALLOWANCE: usize = 16 * 1024;

/// Longest schema-violation message returned.
const MAX_SCHEMA_MESSAGE: usize = 300;

/// What every request shares.
pub struct AppState {
    pub endpoint: Arc<ValidatedEndpoint>,
    pub config: Config,
    pub secrets: Arc<SecretStore>,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    verifier: Verifier,
    schema: Option<jsonschema::Validator>,
    json: JsonReader,
    headers: HeaderContext,
    shutting_down: AtomicBool,
}

impl AppState {
    /// Loads the secrets, compiles the schema and starts connecting to NATS.
    pub async fn new(config: Config) -> Result<Arc<AppState>> {
        let endpoint = Arc::new(config.endpoint.clone());
        let scheme = &endpoint.verification;
        let secrets = Arc::new(SecretStore::load(
            &config.secret_file,
            scheme.secret_format,
            scheme.algorithm,
        )?);
        let schema = endpoint
            .request
            .schema
            .as_ref()
            .map(|schema| {
                jsonschema::validator_for(schema)
                    .map_err(|err| Error::SchemaCompile(err.to_string()))
            })
            .transpose()?;
        let fields = &endpoint.event;
        let mut pointers: Vec<&str> = [
            &fields.id,
            &fields.event_type,
            &fields.timestamp,
            &fields.object_id,
        ]
        .into_iter()
        .filter_map(|source| match source {
            Some(FieldSource::JsonPointer(pointer)) => Some(pointer.as_str()),
            _ => None,
        })
        .collect();
        if endpoint.provider == Provider::Slack {
            pointers.extend(["/type", "/challenge"]);
        }
        let json = JsonReader::new(pointers, schema.is_some());
        let metrics = Arc::new(Metrics::new(endpoint.provider.as_str()));
        metrics.secrets.set(secrets.current().keys.len() as i64);
        let store = Arc::new(Store::connect(&config).await?);
        let mut not_forwarded: Vec<String> = hookline_api::headers::NOT_FORWARDED
            .iter()
            .map(|name| name.to_string())
            .collect();
        not_forwarded.push(scheme.signature_header.clone());
        Ok(Arc::new(AppState {
            verifier: Verifier::new(scheme.clone()),
            headers: HeaderContext {
                endpoint: endpoint.key(),
                provider: endpoint.provider.as_str(),
                not_forwarded,
            },
            endpoint,
            config,
            secrets,
            store,
            metrics,
            schema,
            json,
            shutting_down: AtomicBool::new(false),
        }))
    }

    /// Secrets loaded, NATS connected, the stream answering, not shutting down.
    pub fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Relaxed)
            && !self.secrets.current().is_empty()
            && self.store.is_ready()
    }
}

/// The routes: the endpoint's path (matched exactly, so no manifest path can
/// clash with the router's own syntax), `/healthz`, `/readyz` and `/metrics`.
pub fn router(state: Arc<AppState>) -> Router {
    let timeout = state.config.request_timeout;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(endpoint)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
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
    let json = axum::Json(json!({ "error": code, "message": reason })).into_response();
    let (json_parts, body) = json.into_parts();
    parts.headers.extend(json_parts.headers);
    Response::from_parts(parts, body)
}

async fn healthz() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let secrets = state.secrets.current().keys.len();
    let body = json!({
        "ready": state.is_ready(),
        "secrets": secrets,
        "natsConnected": state.store.is_connected(),
        "streamReachable": state.store.is_ready(),
    });
    let status = if state.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({ "error": "not_found", "message": "no such endpoint" })),
    )
        .into_response()
}

/// A successful answer.
enum Accepted {
    Stored {
        id: String,
        duplicate: bool,
    },
    /// Slack's `url_verification`: answered, not stored.
    Challenge(String),
}

impl Accepted {
    fn outcome(&self) -> &'static str {
        match self {
            Accepted::Stored {
                duplicate: false, ..
            } => "stored",
            Accepted::Stored {
                duplicate: true, ..
            } => "duplicate",
            Accepted::Challenge(_) => "challenge",
        }
    }
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        match self {
            Accepted::Stored { id, duplicate } => {
                let status = if duplicate { "duplicate" } else { "stored" };
                axum::Json(json!({ "status": status, "eventId": id, "duplicate": duplicate }))
                    .into_response()
            }
            Accepted::Challenge(challenge) => {
                axum::Json(json!({ "challenge": challenge })).into_response()
            }
        }
    }
}

async fn endpoint(State(state): State<Arc<AppState>>, request: Request) -> Response {
    if request.uri().path() != state.endpoint.route.path {
        return not_found();
    }
    if request.method() != Method::POST {
        let mut response = (
            StatusCode::METHOD_NOT_ALLOWED,
            axum::Json(json!({ "error": "method_not_allowed", "message": "use POST" })),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let started = Instant::now();
    let span = tracing::info_span!(
        "request",
        endpoint = %state.headers.endpoint,
        client = field::Empty,
        event_id = field::Empty,
    );
    async move {
        let result = receive(&state, request).await;
        let elapsed = started.elapsed();
        match result {
            Ok(accepted) => {
                state.metrics.request(accepted.outcome(), elapsed);
                tracing::debug!(
                    outcome = accepted.outcome(),
                    elapsed_ms = elapsed.as_secs_f64() * 1e3,
                    "accepted"
                );
                accepted.into_response()
            }
            Err(err) => {
                state.metrics.request(err.outcome(), elapsed);
                if err.status().is_server_error() {
                    tracing::warn!(outcome = err.outcome(), reason = %err, "not stored");
                } else {
                    tracing::info!(outcome = err.outcome(), reason = %err, "rejected");
                }
                err.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

/// The pipeline, in the contract's order.
async fn receive(state: &AppState, request: Request) -> Result<Accepted> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let endpoint = &state.endpoint;

    // 1. Source address (403).
    let filter = &endpoint.source_filter;
    if !filter.allowed.is_empty() {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip());
        let client = client_ip(filter, headers, peer);
        tracing::Span::current().record("client", field::debug(&client));
        match client {
            Some(ip) if filter.allows(ip) => {}
            Some(ip) => return Err(Error::Forbidden(ip.to_string())),
            None => return Err(Error::Forbidden("unknown".into())),
        }
    }

    // 2. Size (413), then the raw bytes.
    let limit = endpoint.request.max_body_bytes;
    let body = read_body(headers, body, limit).await?;

    // 3. Signature (401) over the raw bytes.
    let secrets = state.secrets.current();
    if secrets.is_empty() {
        return Err(Error::Unavailable("no signing secret is loaded yet".into()));
    }
    state
        .verifier
        .verify(headers, &body, &secrets, unix_now())?;
    drop(secrets);

    // 4. Media type and JSON (415/400).
    let json = parse_json(&state.json, headers, &body, endpoint.request.require_json)?;

    // Slack checks a new URL with a signed challenge that is answered, not stored.
    if endpoint.provider == Provider::Slack
        && let Some(json) = &json
        && json.get("type").and_then(Value::as_str) == Some("url_verification")
    {
        let challenge = json
            .get("challenge")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return Ok(Accepted::Challenge(challenge.to_owned()));
    }

    // 5. Schema (422).
    if let (Some(schema), Some(json)) = (&state.schema, &json) {
        check_schema(schema, json)?;
    }

    // 6. Publish, and answer only after the PubAck.
    let event: EventInfo = event::extract(&endpoint.event, headers, json.as_ref(), &body)?;
    tracing::Span::current().record("event_id", field::display(&event.id));
    let received_at = event::now_rfc3339();
    let message_headers = event::message_headers(&state.headers, &event, headers, &received_at);
    let subject = endpoint
        .stream
        .subject_for(event.event_type.as_deref().unwrap_or_default());
    state.metrics.body(body.len());
    let publish_started = Instant::now();
    let ack = state.store.publish(subject, message_headers, body).await?;
    state.metrics.publish(publish_started.elapsed());
    Ok(Accepted::Stored {
        id: event.id,
        duplicate: ack.duplicate,
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs() as i64)
        .unwrap_or_default()
}

/// The client address: the TCP peer, or with `trusted_proxy_hops` = N the
/// N-th `X-Forwarded-For` entry from the right (what the outermost trusted
/// proxy saw). Too few entries means the proxies were bypassed: unknown.
pub fn client_ip(
    filter: &SourceFilter,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Option<IpAddr> {
    let hops = filter.trusted_proxy_hops;
    if hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect();
    let entry = entries.get(entries.len().checked_sub(hops)?)?;
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
        .or_else(|| {
            entry
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok()
        })
}

/// Reads at most `limit` bytes: a declared larger `Content-Length` is refused
/// before reading, a longer stream as soon as it passes the limit.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(Error::PayloadTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(Error::PayloadTooLarge { limit }),
        Err(err) => Err(Error::Unreadable(err.to_string())),
    }
}

/// Whether a media type is JSON (`application/json`, `…+json`).
fn is_json_media_type(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

/// The body as JSON. With `require_json`, a non-JSON content type is 415 and
/// an unparsable body 400; otherwise JSON is read when it parses, for the
/// event fields and the schema, and the raw body is stored either way.
fn parse_json(
    reader: &JsonReader,
    headers: &HeaderMap,
    body: &[u8],
    require_json: bool,
) -> Result<Option<Value>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or("(not text)"));
    if require_json {
        if let Some(content_type) = content_type
            && !is_json_media_type(content_type)
        {
            return Err(Error::UnsupportedMediaType(
                content_type.chars().take(100).collect(),
            ));
        }
        return reader
            .parse(body)
            .map(Some)
            .map_err(|err| Error::InvalidJson(err.to_string()));
    }
    let looks_json = content_type.is_none_or(is_json_media_type);
    Ok(looks_json.then(|| reader.parse(body).ok()).flatten())
}

fn check_schema(schema: &jsonschema::Validator, json: &Value) -> Result<()> {
    let problems: Vec<String> = schema
        .iter_errors(json)
        .take(3)
        .map(|err| {
            let path = err.instance_path().to_string();
            let path = if path.is_empty() {
                "/".to_owned()
            } else {
                path
            };
            format!("at {path}: {err}")
        })
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    let mut message = problems.join("; ");
    if message.len() > MAX_SCHEMA_MESSAGE {
        let cut = (0..=MAX_SCHEMA_MESSAGE)
            .rev()
            .find(|index| message.is_char_boundary(*index))
            .unwrap_or(0);
        message.truncate(cut);
        message.push('…');
    }
    Err(Error::SchemaViolation(message))
}

/// Serves until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish (each gets its 200 after a PubAck, or a 503), bounded by the
/// shutdown timeout, and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let grace = config.shutdown_timeout;
    let poll = config.secret_poll_interval;
    let state = AppState::new(config).await?;

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
        tracing::warn!(url = %state.config.nats_url, "NATS is not reachable yet; serving, not ready, and retrying");
    }
    let background = [
        tokio::spawn(watch_secrets(state.clone(), poll)),
        tokio::spawn(
            state
                .store
                .clone()
                .watch(state.endpoint.clone(), state.metrics.clone()),
        ),
    ];

    let address = listener.local_addr().map_err(Error::Serve)?;
    tracing::info!(%address, path = %state.endpoint.route.path, endpoint = %state.headers.endpoint, provider = %state.endpoint.provider, "serving");

    let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
    let signal_state = state.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        signal_state.shutting_down.store(true, Ordering::Relaxed);
        let _ = stopping_tx.send(true);
    };
    let listener = listener.tap_io(|tcp| {
        // Small answers must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(
        listener,
        router(state.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(signal)
    .into_future();
    let deadline = async {
        if stopping_rx.wait_for(|stopping| *stopping).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        served = server => served.map_err(Error::Serve),
        () = deadline => {
            tracing::warn!(?grace, "in-flight requests did not finish in time; exiting");
            Ok(())
        }
    };
    for task in background {
        task.abort();
    }
    state.store.flush(std::time::Duration::from_secs(2)).await;
    tracing::info!("stopped");
    result
}

async fn watch_secrets(state: Arc<AppState>, interval: std::time::Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let secrets = state.secrets.clone();
        // File I/O off the request threads.
        if let Ok(true) = tokio::task::spawn_blocking(move || secrets.reload()).await {
            state.metrics.secret_reloads.inc();
            state
                .metrics
                .secrets
                .set(state.secrets.current().keys.len() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(hops: usize) -> SourceFilter {
        SourceFilter {
            allowed: vec!["203.0.113.0/24".parse().expect("cidr")],
            trusted_proxy_hops: hops,
        }
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().expect("value"));
        headers
    }

    #[test]
    fn without_trusted_hops_the_peer_is_the_client() {
        let peer = Some("198.51.100.1".parse().expect("ip"));
        assert_eq!(client_ip(&filter(0), &forwarded("203.0.113.9"), peer), peer);
    }

    #[test]
    fn trusted_hops_count_from_the_right() {
        let headers = forwarded("10.0.0.1, 203.0.113.9, 192.0.2.7");
        assert_eq!(
            client_ip(&filter(1), &headers, None),
            Some("192.0.2.7".parse().expect("ip"))
        );
        assert_eq!(
            client_ip(&filter(2), &headers, None),
            Some("203.0.113.9".parse().expect("ip"))
        );
        assert_eq!(client_ip(&filter(4), &headers, None), None);
    }

    #[test]
    fn json_media_types() {
        assert!(is_json_media_type("application/json; charset=utf-8"));
        assert!(is_json_media_type("application/vnd.api+json"));
        assert!(!is_json_media_type("application/x-www-form-urlencoded"));
    }
}

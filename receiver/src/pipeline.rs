//! One webhook request, end to end: the checks in the contract's order, the
//! provider's URL challenge, the publish that waits for JetStream's
//! acknowledgement, and the answer, counted and logged.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::Rejection;
use crate::checks::body::{parse_json, read_body};
use crate::checks::headers::check_header_size;
use crate::checks::source::{check_source, client_ip};
use crate::event;
use crate::state::{AppState, EndpointState};

/// A successful answer.
enum Accepted {
    Stored {
        duplicate: bool,
    },
    /// The provider's check of the URL: answered, not stored.
    Challenge(Value),
    /// A type `spec.event.accept`/`ignore` leaves out: 200, so the provider
    /// stops sending it, and not stored.
    Ignored {
        event_type: Option<String>,
    },
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
            Accepted::Ignored { .. } => "ignored",
        }
    }

    /// `{"status":…,"eventId":…,"duplicate":…}`, written directly: the
    /// answer to every stored event, so no JSON tree is built for it.
    fn into_response(self, event_id: &str) -> Response {
        match self {
            Accepted::Stored { duplicate } => {
                let (status, duplicate) = if duplicate {
                    ("duplicate", "true")
                } else {
                    ("stored", "false")
                };
                let mut body = Vec::with_capacity(event_id.len() + 64);
                body.extend_from_slice(br#"{"status":""#);
                body.extend_from_slice(status.as_bytes());
                body.extend_from_slice(br#"","eventId":"#);
                // Quoted and escaped by serde_json; writing to a Vec cannot fail.
                let _ = serde_json::to_writer(&mut body, event_id);
                body.extend_from_slice(br#","duplicate":"#);
                body.extend_from_slice(duplicate.as_bytes());
                body.push(b'}');
                let mut response = Response::new(axum::body::Body::from(body));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            Accepted::Challenge(answer) => axum::Json(answer).into_response(),
            Accepted::Ignored { event_type } => axum::Json(serde_json::json!({
                "status": "ignored",
                "eventId": event_id,
                "eventType": event_type,
            }))
            .into_response(),
        }
    }
}

/// What a request revealed about itself before its answer, for the log line
/// of a refusal or a failure. Kept here rather than in a span: a span's
/// fields are formatted when it is made and again when each is recorded,
/// whether or not anything is logged, and an accepted request logs nothing
/// at the default level.
#[derive(Default)]
struct Seen {
    client: Option<IpAddr>,
    event_id: Option<String>,
}

/// Receives one POST on `endpoint`'s path: refusals are logged at `info`
/// (the sender's mistake), failures to store at `warn` (ours), each with the
/// endpoint and, once known, the client address and event id; every answer
/// is counted by outcome.
pub(crate) async fn handle(
    shared: &AppState,
    state: Arc<EndpointState>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let mut seen = Seen::default();
    let result = receive(shared.pool, &state, request, &mut seen).await;
    let elapsed = started.elapsed();
    match result {
        Ok(accepted) => {
            state.metrics.request(accepted.outcome(), elapsed);
            let event_id = seen.event_id.unwrap_or_default();
            tracing::debug!(
                endpoint = %state.headers.endpoint,
                event_id,
                outcome = accepted.outcome(),
                elapsed_ms = elapsed.as_secs_f64() * 1e3,
                "accepted"
            );
            accepted.into_response(&event_id)
        }
        Err(err) => {
            state.metrics.request(err.outcome(), elapsed);
            let endpoint = &state.headers.endpoint;
            let client = seen.client.map(tracing::field::display);
            let event_id = seen.event_id.as_deref();
            if err.status().is_server_error() {
                tracing::warn!(%endpoint, client, event_id, outcome = err.outcome(), reason = %err, "not stored");
            } else {
                tracing::info!(%endpoint, client, event_id, outcome = err.outcome(), reason = %err, "rejected");
            }
            err.into_response()
        }
    }
}

/// The pipeline, in the contract's order; the cheapest refusals come first and
/// nothing unverified is parsed. A pool's endpoint probes its stream here,
/// when its figures are stale, instead of in a task of its own.
async fn receive(
    pool: bool,
    state: &EndpointState,
    request: Request,
    seen: &mut Seen,
) -> Result<Accepted, Rejection> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let endpoint = &state.endpoint;

    // 0. Header size (431): nothing else looks at an oversized request.
    check_header_size(&parts)?;

    // 1. Source address (403).
    let filter = &endpoint.source_filter;
    if !filter.allowed.is_empty() {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip());
        let client = client_ip(filter, headers, peer);
        seen.client = client;
        check_source(filter, client)?;
    }

    // 2. Size (413), then the raw bytes.
    let body = read_body(headers, body, endpoint.request.max_body_bytes).await?;

    // 3. Signature (401) over the raw bytes.
    {
        let secrets = state.secrets.current();
        if secrets.is_empty() {
            return Err(Rejection::Unavailable(
                "no signing secret is loaded yet".into(),
            ));
        }
        state
            .verifier
            .verify(headers, &body, &secrets, unix_now())?;
    }

    // 4. Media type and JSON (415/400).
    let json = parse_json(&state.json, headers, &body, endpoint.request.require_json)?;

    // A provider's signed check of the URL is answered, not stored.
    if let (Some(challenge), Some(json)) = (&endpoint.url_challenge, &json)
        && let Some(answer) = challenge.answer(json)
    {
        return Ok(Accepted::Challenge(answer));
    }

    // 5. The event's attributes (400 when unusable), then whether its type
    // is stored at all: an ignored event is 200 whatever its schema.
    let event = event::extract(&state.fields, headers, json.as_ref(), &body)?;
    if endpoint
        .event_filter
        .ignores(event.event_type.as_deref())
        .is_some()
    {
        state.metrics.ignored(event.event_type.as_deref());
        seen.event_id = Some(event.id);
        return Ok(Accepted::Ignored {
            event_type: event.event_type,
        });
    }

    // 6. Schema (422).
    if let (Some(schema), Some(json)) = (&state.schema, &json) {
        schema.check(json)?;
    }

    let received_at = event::now_rfc3339();
    let message_id = endpoint.stream.message_id(&event.id);
    let message_headers =
        event::message_headers(&state.headers, &event, &message_id, headers, &received_at);
    let subject = endpoint
        .stream
        .subject_for(event.event_type.as_deref().unwrap_or_default());
    seen.event_id = Some(event.id);

    // 7. Rate limit (429): only an event that would be stored spends a token.
    if let Some(limiter) = &state.rate_limiter {
        limiter.check()?;
    }

    // 8. Publish, and answer only after the PubAck.
    if pool {
        state.store.refresh_if_stale(&state.metrics).await;
    }
    state.metrics.body(body.len());
    let publish_started = Instant::now();
    let ack = state.store.publish(subject, message_headers, body).await?;
    state.metrics.publish(publish_started.elapsed());
    Ok(Accepted::Stored {
        duplicate: ack.duplicate,
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs() as i64)
        .unwrap_or_default()
}

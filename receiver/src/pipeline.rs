//! One webhook request, end to end: the checks in the contract's order, the
//! provider's URL challenge, the publish that waits for JetStream's
//! acknowledgement, and the answer, counted and logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tracing::{Instrument, field};

use crate::checks::body::{parse_json, read_body};
use crate::checks::headers::check_header_size;
use crate::checks::source::{check_source, client_ip};
use crate::event;
use crate::state::AppState;
use crate::{Error, Result};

/// A successful answer.
enum Accepted {
    Stored {
        id: String,
        duplicate: bool,
    },
    /// The provider's check of the URL: answered, not stored.
    Challenge(Value),
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
            Accepted::Challenge(answer) => axum::Json(answer).into_response(),
        }
    }
}

/// Receives one POST on the endpoint's path: refusals are logged at `info`
/// (the sender's mistake), failures to store at `warn` (ours), and every
/// answer is counted by outcome.
pub(crate) async fn handle(state: Arc<AppState>, request: Request) -> Response {
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

/// The pipeline, in the contract's order; the cheapest refusals come first and
/// nothing unverified is parsed.
async fn receive(state: &AppState, request: Request) -> Result<Accepted> {
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
        tracing::Span::current().record("client", field::debug(&client));
        check_source(filter, client)?;
    }

    // 2. Size (413), then the raw bytes.
    let body = read_body(headers, body, endpoint.request.max_body_bytes).await?;

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

    // A provider's signed check of the URL is answered, not stored.
    if let (Some(challenge), Some(json)) = (&endpoint.url_challenge, &json)
        && let Some(answer) = challenge.answer(json)
    {
        return Ok(Accepted::Challenge(answer));
    }

    // 5. Schema (422).
    if let (Some(schema), Some(json)) = (&state.schema, &json) {
        schema.check(json)?;
    }

    // 6. Publish, and answer only after the PubAck.
    let event = event::extract(&endpoint.event, headers, json.as_ref(), &body)?;
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

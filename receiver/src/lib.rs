//! `hookline-receiver`: receives a provider's webhooks, verifies them, and answers
//! 200 only once JetStream has acknowledged the event (a 200 means "durably stored").
//!
//! A request goes through the checks in this order, so the cheapest refusals
//! come first and nothing unverified is parsed: header size (431) → source IP
//! (403) → size (413) → signature (401) → media type and JSON (415/400) →
//! schema (422) → publish (200, or 503 with `Retry-After`).
//!
//! - [`config`]: command-line flags and environment, validated once into a [`Config`].
//! - [`lifecycle`]: [`run`]: start-up, background tasks, graceful shutdown.
//! - [`connections`]: the accept loop and its bounds (connections, header time
//!   and size) and the lingering close that lets early answers reach the client.
//! - [`state`]: [`AppState`], what every request shares, built once.
//! - [`routes`]: the router: the endpoint's path, `/healthz`, `/readyz`, `/metrics`.
//! - [`pipeline`]: one request through the checks to the publish and the answer.
//! - [`checks`]: one file per check: `headers`, `source`, `body`, `signature`, `schema`.
//! - [`secrets`]: the signing secrets, one per line, watched and re-read when the file changes.
//! - [`event`]: event id, type, timestamp and object id, and the message headers.
//! - [`json`]: reading only the parts of a JSON body the endpoint needs.
//! - [`encoding`]: base64 and unix-time decoding, one way everywhere.
//! - [`store`]: the NATS connection, readiness probe and the publish that waits for the PubAck.
//! - [`metrics`]: Prometheus metrics.
//!
//! [`Error`] is every failure, at start-up or on a request, with the status
//! and JSON body a request error becomes.

pub mod checks;
pub mod config;
pub mod connections;
pub mod encoding;
pub mod event;
pub mod json;
pub mod lifecycle;
pub mod metrics;
pub mod pipeline;
pub mod routes;
pub mod secrets;
pub mod state;
pub mod store;

use std::net::SocketAddr;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub use config::{Args, Config};
pub use lifecycle::run;
pub use routes::router;
pub use state::AppState;

/// Seconds a client is asked to wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 5;

/// Everything that can go wrong, at start-up or on a request. Request errors
/// become a status and a short JSON body that never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- start-up ---
    #[error(transparent)]
    Manifest(#[from] hookline_api::Error),
    #[error("cannot read secret file {path}: {source}")]
    SecretFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("invalid spec.request.schema: {0}")]
    SchemaCompile(String),
    #[error(transparent)]
    Nats(#[from] hookline_api::nats::NatsError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Serve(std::io::Error),

    // --- requests ---
    #[error("the request line and headers are larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("source address {0} is not allowed")]
    Forbidden(String),
    #[error("body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("cannot read the request body: {0}")]
    Unreadable(String),
    #[error("{0}")]
    Unauthorized(#[from] checks::signature::VerifyError),
    #[error("content type {0:?} is not JSON; send application/json")]
    UnsupportedMediaType(String),
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("body does not match the schema: {0}")]
    SchemaViolation(String),
    #[error("{0}")]
    InvalidEvent(String),
    /// Not stored; the sender must retry. The reason (stream, NATS's words)
    /// is for the log: the answer says only "retry".
    #[error("{0}")]
    Unavailable(String),
    /// The buffer holds its cap (`spec.stream.maxBytes`) of events not yet
    /// written to Postgres; retryable, like any 503: it drains as the
    /// consumer catches up.
    #[error(
        "stream {stream} holds {bytes} bytes, its buffer cap is {cap} (spec.stream.maxBytes); waiting for the consumer to drain it"
    )]
    BufferFull {
        stream: String,
        bytes: u64,
        cap: u64,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The status code of a request error; start-up errors never reach a
    /// client and would be a 500.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unreadable(_) | Error::InvalidJson(_) | Error::InvalidEvent(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::SchemaViolation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Unavailable(_) | Error::BufferFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Manifest(_)
            | Error::SecretFile { .. }
            | Error::SchemaCompile(_)
            | Error::Nats(_)
            | Error::Listen { .. }
            | Error::Serve(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `outcome` label of the request metrics and the `error` field of the body.
    pub fn outcome(&self) -> &'static str {
        match self {
            Error::HeadersTooLarge { .. } => "headers_too_large",
            Error::Forbidden(_) => "forbidden",
            Error::PayloadTooLarge { .. } => "too_large",
            Error::Unreadable(_) => "unreadable",
            Error::Unauthorized(_) => "unauthorized",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::InvalidJson(_) => "invalid_json",
            Error::SchemaViolation(_) => "schema_violation",
            Error::InvalidEvent(_) => "invalid_event",
            Error::Unavailable(_) => "unavailable",
            Error::BufferFull { .. } => "buffer_full",
            Error::Manifest(_)
            | Error::SecretFile { .. }
            | Error::SchemaCompile(_)
            | Error::Nats(_)
            | Error::Listen { .. }
            | Error::Serve(_) => "internal",
        }
    }

    /// The `message` field of the body: what the sender got wrong, or for our
    /// own failures only what to do about them.
    fn message(&self) -> String {
        match self {
            Error::HeadersTooLarge { .. }
            | Error::Forbidden(_)
            | Error::PayloadTooLarge { .. }
            | Error::Unreadable(_)
            | Error::Unauthorized(_)
            | Error::UnsupportedMediaType(_)
            | Error::InvalidJson(_)
            | Error::SchemaViolation(_)
            | Error::InvalidEvent(_) => self.to_string(),
            Error::Unavailable(_) | Error::BufferFull { .. } => {
                format!("the event was not stored; retry in {RETRY_AFTER_SECS} s")
            }
            Error::Manifest(_)
            | Error::SecretFile { .. }
            | Error::SchemaCompile(_)
            | Error::Nats(_)
            | Error::Listen { .. }
            | Error::Serve(_) => "internal error".to_owned(),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({ "error": self.outcome(), "message": self.message() });
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

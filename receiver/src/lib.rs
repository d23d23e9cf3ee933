//! `hookline-receiver`: receives a provider's webhooks, verifies them, and answers
//! 200 only once JetStream has acknowledged the event (a 200 means "durably stored").
//!
//! - [`config`]: command-line flags and environment, validated once into a [`Config`].
//! - [`secrets`]: the signing secrets, one per line, re-read when the file changes.
//! - [`verify`]: signature and replay-window checks over the raw body, constant-time.
//! - [`event`]: event id, type, timestamp and object id, and the message headers.
//! - [`json`]: reading only the parts of a JSON body the endpoint needs.
//! - [`store`]: the NATS connection, readiness probe and the publish that waits for the PubAck.
//! - [`metrics`]: Prometheus metrics.
//! - [`server`]: the axum router, the request pipeline and [`run`] with graceful shutdown.
//!
//! A request goes through the checks in this order, so the cheapest refusals
//! come first and nothing unverified is parsed: source IP (403) → size (413) →
//! signature (401) → media type and JSON (415/400) → schema (422) → publish
//! (200, or 503 with `Retry-After`).

pub mod config;
pub mod event;
pub mod json;
pub mod metrics;
pub mod secrets;
pub mod server;
pub mod store;
pub mod verify;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub use config::{Args, Config};
pub use server::{AppState, router, run};

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
    #[error("cannot read NATS credentials {path}: {source}")]
    NatsCredentials {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {url}: {message}")]
    NatsConnect { url: String, message: String },
    #[error("{0}")]
    Serve(std::io::Error),

    // --- requests ---
    #[error("source address {0} is not allowed")]
    Forbidden(String),
    #[error("body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("cannot read the request body: {0}")]
    Unreadable(String),
    #[error("{0}")]
    Unauthorized(#[from] verify::VerifyError),
    #[error("content type {0:?} is not JSON; send application/json")]
    UnsupportedMediaType(String),
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("body does not match the schema: {0}")]
    SchemaViolation(String),
    #[error("{0}")]
    InvalidEvent(String),
    #[error("{0}")]
    Unavailable(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The status code of a request error; start-up errors never reach a client.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unreadable(_) | Error::InvalidJson(_) | Error::InvalidEvent(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::SchemaViolation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `outcome` label of the request metrics and the `error` field of the body.
    pub fn outcome(&self) -> &'static str {
        match self {
            Error::Forbidden(_) => "forbidden",
            Error::PayloadTooLarge { .. } => "too_large",
            Error::Unreadable(_) => "unreadable",
            Error::Unauthorized(_) => "unauthorized",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::InvalidJson(_) => "invalid_json",
            Error::SchemaViolation(_) => "schema_violation",
            Error::InvalidEvent(_) => "invalid_event",
            Error::Unavailable(_) => "unavailable",
            _ => "internal",
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        // Start-up errors have no business in a response; say nothing about them.
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            "internal error".to_owned()
        } else {
            self.to_string()
        };
        let body = serde_json::json!({ "error": self.outcome(), "message": message });
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

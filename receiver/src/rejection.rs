//! [`Rejection`]: every answer to a request that is not a 200, as a status,
//! a short JSON body and, for what the sender should retry, `Retry-After`.
//!
//! Kept apart from [`crate::Error`] (start-up failures, which never reach a
//! client) so that neither needs arms for the other's cases.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::checks::signature::VerifyError;

/// Seconds a client is asked to wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 5;

/// Why a request was not stored. The sender's mistakes (4xx) say what was
/// wrong; our own failures (5xx) say only what to do, the reason is for the log.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("the request line and headers are larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("source address {0} is not allowed")]
    Forbidden(String),
    #[error("body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("cannot read the request body: {0}")]
    Unreadable(String),
    #[error("{0}")]
    Unauthorized(#[from] VerifyError),
    #[error("content type {0:?} is not JSON; send application/json")]
    UnsupportedMediaType(String),
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("body does not match the schema: {0}")]
    SchemaViolation(String),
    #[error("{0}")]
    InvalidEvent(String),
    /// Over this receiver's share of `spec.request.rateLimit`; nothing was
    /// published. `retry_after`: whole seconds until a token is there.
    #[error("the endpoint's rate limit is reached; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
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

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Rejection::Forbidden(_) => StatusCode::FORBIDDEN,
            Rejection::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::Unreadable(_) | Rejection::InvalidJson(_) | Rejection::InvalidEvent(_) => {
                StatusCode::BAD_REQUEST
            }
            Rejection::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Rejection::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::SchemaViolation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Rejection::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Rejection::Unavailable(_) | Rejection::BufferFull { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// Every [`Rejection::outcome`], for forgetting an endpoint's series.
    pub const OUTCOMES: [&'static str; 12] = [
        "headers_too_large",
        "forbidden",
        "too_large",
        "unreadable",
        "unauthorized",
        "unsupported_media_type",
        "invalid_json",
        "schema_violation",
        "invalid_event",
        "rate_limited",
        "unavailable",
        "buffer_full",
    ];

    /// The `outcome` label of the request metrics and the `error` field of the body.
    pub fn outcome(&self) -> &'static str {
        match self {
            Rejection::HeadersTooLarge { .. } => "headers_too_large",
            Rejection::Forbidden(_) => "forbidden",
            Rejection::PayloadTooLarge { .. } => "too_large",
            Rejection::Unreadable(_) => "unreadable",
            Rejection::Unauthorized(_) => "unauthorized",
            Rejection::UnsupportedMediaType(_) => "unsupported_media_type",
            Rejection::InvalidJson(_) => "invalid_json",
            Rejection::SchemaViolation(_) => "schema_violation",
            Rejection::InvalidEvent(_) => "invalid_event",
            Rejection::RateLimited { .. } => "rate_limited",
            Rejection::Unavailable(_) => "unavailable",
            Rejection::BufferFull { .. } => "buffer_full",
        }
    }

    /// Seconds the sender should wait before retrying; `None` when a retry
    /// would fail the same way.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Rejection::Unavailable(_) | Rejection::BufferFull { .. } => Some(RETRY_AFTER_SECS),
            Rejection::RateLimited { retry_after } => Some(*retry_after),
            Rejection::HeadersTooLarge { .. }
            | Rejection::Forbidden(_)
            | Rejection::PayloadTooLarge { .. }
            | Rejection::Unreadable(_)
            | Rejection::Unauthorized(_)
            | Rejection::UnsupportedMediaType(_)
            | Rejection::InvalidJson(_)
            | Rejection::SchemaViolation(_)
            | Rejection::InvalidEvent(_) => None,
        }
    }

    /// The `message` field of the body: what the sender got wrong, or for our
    /// own failures only when to retry.
    fn message(&self) -> String {
        match self.retry_after() {
            Some(seconds) if self.status().is_server_error() => {
                format!("the event was not stored; retry in {seconds} s")
            }
            _ => self.to_string(),
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.outcome(), "message": self.message() });
        let mut response = (self.status(), axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn answer(rejection: Rejection) -> (StatusCode, Option<String>, serde_json::Value) {
        let response = rejection.into_response();
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json = serde_json::from_slice(&body).expect("json body");
        (status, retry_after, json)
    }

    #[tokio::test]
    async fn a_sender_mistake_says_what_was_wrong_and_asks_for_no_retry() {
        let (status, retry_after, body) = answer(Rejection::PayloadTooLarge { limit: 10 }).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(retry_after, None);
        assert_eq!(
            body,
            serde_json::json!({"error": "too_large", "message": "body is larger than 10 bytes"})
        );
    }

    #[tokio::test]
    async fn a_503_asks_for_a_retry_and_keeps_its_reason_for_the_log() {
        let (status, retry_after, body) =
            answer(Rejection::Unavailable("stream HOOKLINE_x not found".into())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after.as_deref(), Some("5"));
        assert_eq!(
            body,
            serde_json::json!({"error": "unavailable", "message": "the event was not stored; retry in 5 s"})
        );
    }
}

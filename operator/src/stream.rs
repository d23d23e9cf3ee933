//! The JetStream step: the endpoint's stream and durable consumer, made with
//! the same `hookline_api::provision` the binaries' `--provision` uses, and
//! the stream's live figures for the status.

use async_nats::connection::State;
use async_nats::jetstream;
use hookline_api::headers::HEADER_ALLOWANCE;
use hookline_api::provision::{self, ProvisionError, StreamStats};

use crate::validate::ValidEndpoint;

/// What the stream step found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamState {
    /// Provisioned; `max_payload` is the server's largest message.
    Ready {
        stats: StreamStats,
        max_payload: usize,
    },
    /// NATS is not reachable (not connected, or no answer in time).
    Unreachable(String),
    /// NATS answered, and refused (e.g. no JetStream, or out of resources).
    Refused(String),
}

impl StreamState {
    /// The largest body that fits in a message with its headers, when it is
    /// below the endpoint's `maxBodyBytes`.
    pub fn payload_shortfall(&self, valid: &ValidEndpoint) -> Option<usize> {
        match self {
            StreamState::Ready { max_payload, .. } => {
                let fits = max_payload.saturating_sub(HEADER_ALLOWANCE);
                (fits < valid.endpoint.request.max_body_bytes).then_some(fits)
            }
            _ => None,
        }
    }
}

/// Creates or updates the stream and durable consumer, then reads the figures.
pub async fn ensure(client: &async_nats::Client, valid: &ValidEndpoint) -> StreamState {
    if client.connection_state() != State::Connected {
        return StreamState::Unreachable("not connected to NATS".into());
    }
    let js = jetstream::new(client.clone());
    let outcome = async {
        provision::provision(&js, &valid.endpoint).await?;
        provision::stats(&js, &valid.endpoint).await
    }
    .await;
    match outcome {
        Ok(stats) => StreamState::Ready {
            stats,
            max_payload: client.server_info().max_payload,
        },
        Err(err @ ProvisionError::Timeout(_)) => StreamState::Unreachable(err.to_string()),
        Err(err) if client.connection_state() != State::Connected => {
            StreamState::Unreachable(err.to_string())
        }
        Err(err) => StreamState::Refused(err.to_string()),
    }
}

/// Deletes the stream `name`; the finalizer's cleanup.
pub async fn delete(client: &async_nats::Client, name: &str) -> Result<(), ProvisionError> {
    provision::delete_stream(&jetstream::new(client.clone()), name).await
}

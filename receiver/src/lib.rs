//! `hookline-receiver`: receives a provider's webhooks, verifies them, and answers
//! 200 only once JetStream has acknowledged the event (a 200 means "durably stored").
//!
//! A request goes through the checks in this order, so the cheapest refusals
//! come first and nothing unverified is parsed: header size (431) → source IP
//! (403) → size (413) → signature (401) → media type and JSON (415/400) →
//! event attributes (400) → type filter (200 `ignored`) → schema (422) →
//! rate limit (429 with `Retry-After`) → publish (200, or 503 with
//! `Retry-After`).
//!
//! - [`config`]: command-line flags and environment, validated once into a [`Config`].
//! - [`lifecycle`]: [`run`]: start-up, background tasks, graceful shutdown.
//! - [`connections`]: the accept loop and its bounds (connections, header time
//!   and size) and the lingering close that lets early answers reach the client.
//! - [`state`]: [`AppState`], what every request shares, built once, and
//!   each endpoint's [`state::EndpointState`].
//! - [`routes`]: the router: the endpoints' hosts and paths (the routing
//!   table), `/healthz`, `/readyz`, `/metrics`, `/endpoints`.
//! - [`pool`]: `--endpoint-dir`: many endpoints of one namespace, their
//!   table rebuilt aside and swapped in when the directories change.
//! - [`pipeline`]: one request through the checks to the publish and the answer.
//! - [`checks`]: one file per check: `headers`, `source`, `body`, `signature`, `schema`.
//! - [`secrets`]: the signing secrets, one per line, watched and re-read when the file changes.
//! - [`event`]: event id, type, timestamp and object id, and the message headers.
//! - [`json`]: reading only the parts of a JSON body the endpoint needs.
//! - [`encoding`]: base64 and unix-time decoding, one way everywhere.
//! - [`store`]: the NATS connection, readiness probe and the publish that waits for the PubAck.
//! - [`metrics`]: Prometheus metrics.
//! - [`rejection`]: [`Rejection`], every refusal of a request, with its status
//!   and JSON body.
//!
//! [`Error`] is what stops the receiver at start-up; it never reaches a client.

pub mod checks;
pub mod config;
pub mod connections;
pub mod encoding;
pub mod event;
pub mod json;
pub mod lifecycle;
pub mod metrics;
pub mod pipeline;
pub mod pool;
pub mod rejection;
pub mod routes;
pub mod secrets;
pub mod state;
pub mod store;

use std::net::SocketAddr;

pub use config::{Args, Config, Endpoints};
pub use lifecycle::run;
pub use rejection::{RETRY_AFTER_SECS, Rejection};
pub use routes::router;
pub use state::AppState;

/// What stops the receiver from starting or serving. A request's refusal
/// is a [`Rejection`], never one of these.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// Flags that do not make one configuration (clap checks them first).
    #[error("{0}")]
    Flags(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

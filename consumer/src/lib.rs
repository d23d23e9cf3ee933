//! `hookline-consumer`: drains one WebhookEndpoint's JetStream stream into
//! Postgres, exactly once in effect and ordered by event time; or, with
//! `--endpoint-dir`, every endpoint of a directory of manifests (a pool).
//!
//! - [`config`]: the command line and the checked [`Config`].
//! - [`lifecycle`]: [`run`]: start-up (migrate, provision, find the durable
//!   consumer, each retried), consuming, and a graceful stop.
//! - [`pool`]: [`run_pool`]: one consume loop per manifest of a directory,
//!   over one Postgres pool and one NATS connection, reloaded while running.
//! - [`shutdown`]: [`Shutdown`], the signal every task watches.
//! - [`decode`]: message → [`decode::Event`], with no I/O (poison is found here).
//! - [`consume`]: the pull loop; `consume/batch` stores one batch,
//!   `consume/settle` acks, naks, or dead-letters and terminates.
//! - [`store`]: Postgres: `migrate`, `events` (the batch transaction:
//!   insert, projection upsert, `NOTIFY`), `dead_letters`, `retention`.
//! - [`refetch`]: the object's state from the provider's API.
//! - [`replay`]: the `replay` subcommand.
//! - [`inspect`]: `dead-letters`, `event` and `tail`, read-only, for `kubectl hookline`.
//! - [`http`] and [`metrics`]: `/healthz`, `/readyz`, `/metrics`.
//!
//! `main.rs` only parses flags, sets up logging, binds the listener and turns
//! SIGTERM / Ctrl-C into the shutdown future.

pub mod config;
pub mod consume;
pub mod decode;
pub mod http;
pub mod inspect;
pub mod lifecycle;
pub mod metrics;
pub mod pool;
pub mod refetch;
pub mod replay;
pub mod shutdown;
pub mod store;

use std::net::SocketAddr;

pub use config::{Config, PoolConfig};
pub use lifecycle::run;
pub use pool::run_pool;
pub use shutdown::Shutdown;

/// Why the consumer could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or the manifest is wrong; nothing was started.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Manifest(#[from] hookline_api::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Nats(#[from] hookline_api::nats::NatsError),
    /// The stream or durable consumer is missing or did not answer, or a
    /// publish was refused.
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error(transparent)]
    Provision(#[from] hookline_api::provision::ProvisionError),
    /// `event --wait` gave up: the event was not stored in time.
    #[error("event {0} is not stored")]
    NotStored(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

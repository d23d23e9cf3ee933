//! Test support for Hookline: real servers on free loopback ports, no mocks.
//!
//! Other crates use this as a dev-dependency; the end-to-end tests of this
//! crate use it to drive the real binaries.
//!
//! - [`NatsServer`] (`nats`): `nats-server -js` with its own store dir; can be
//!   stopped, killed (a crash) and restarted in place, keeping JetStream data.
//! - [`Postgres`] (`postgres`): a cluster made with `initdb` in a temp dir,
//!   trust auth for user `postgres`; same stop/kill/restart, plus [`Postgres::psql`]
//!   for assertions without a Rust driver. As root it runs as user `postgres`.
//! - [`ChildProcess`] (`process`): any child, killed on drop, output in a log file.
//! - [`free_port`] (`ports`) and [`workspace_bin`] (`binaries`): ports for
//!   servers under test and paths of the workspace's binaries, built on demand.
//!
//! Every server and child is killed on drop and its temp dir removed, so
//! nothing outlives a test that returns or panics. A missing server binary is
//! an error with an install hint: tests `.expect(..)` it and fail, never skip.

mod binaries;
mod error;
mod nats;
mod ports;
mod postgres;
mod process;

pub use binaries::{try_workspace_bin, workspace_bin, workspace_bin_in};
pub use error::{Result, TestServerError};
pub use nats::NatsServer;
pub use ports::{free_port, try_free_port};
pub use postgres::Postgres;
pub use process::{ChildProcess, DEFAULT_GRACE, Signal, send_signal};

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
//! - [`Pipeline`] (`pipeline`): both servers and the real `hookline-receiver`
//!   and `hookline-consumer` binaries for one manifest, each a [`Service`].
//! - [`ChildProcess`] (`process`): any child, killed on drop, output in a log file.
//! - `launch`: the start-up loop they all share: spawn, wait until ready,
//!   retry on fresh ports when a port was taken.
//! - [`free_port`] (`ports`) and [`workspace_bin`] (`binaries`): ports for
//!   servers under test and paths of the workspace's binaries, built on demand.
//! - [`soak`]: the fault soak: every provider's endpoint under signed load
//!   while processes are killed and restarted, then every guarantee checked.
//!
//! Everything here blocks: it starts processes and waits for them. Async
//! tests run on the multi-thread runtime and call it inside
//! `tokio::task::block_in_place`, so the runtime's other tasks (a receiver or
//! consumer under test) keep running meanwhile:
//!
//! ```no_run
//! # async fn an_async_test() {
//! use hookline_e2e::NatsServer;
//! let mut nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server");
//! tokio::task::block_in_place(|| nats.kill());
//! # }
//! ```
//!
//! Every server and child is killed on drop and its temp dir removed, so
//! nothing outlives a test that returns or panics. A missing server binary is
//! an error with an install hint: tests `.expect(..)` it and fail, never skip.

mod binaries;
mod error;
pub mod fakekube;
mod launch;
mod nats;
mod pipeline;
mod ports;
mod postgres;
pub mod proc_stats;
mod process;
pub mod soak;

pub use binaries::{try_workspace_bin, workspace_bin};
pub use error::{Result, TestServerError};
pub use nats::NatsServer;
pub use pipeline::{Pipeline, Service};
pub use ports::{free_port, try_free_port};
pub use postgres::Postgres;
pub use process::{ChildProcess, DEFAULT_GRACE, Signal, send_signal};

//! The consumer's integration tests, one binary (one link) with a module per
//! area: the binary's flags and subcommands, the pipeline against real
//! nats-server and Postgres, and one consumer serving a directory of endpoints.

mod common;

mod binary;
mod pipeline;
mod pool;

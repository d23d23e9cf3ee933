//! The receiver's integration tests, one binary (one link) with a module per
//! area: the binary's flags, requests and their answers, providers, hostile
//! clients, connections, resilience, filters and limits.

mod common;

mod binary;
mod connections;
mod filters;
mod hostile;
mod limits;
mod pool;
mod providers;
mod requests;
mod resilience;

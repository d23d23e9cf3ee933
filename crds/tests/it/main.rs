//! The API crate's integration tests, one binary (one link): the CRD, the
//! docs, the examples, naming, provisioning (with `jetstream`) and validation.

mod crd;
mod docs;
mod examples;
mod naming;
mod provision;
mod validation;

//! The API crate's integration tests, one binary (one link): the CRD and its CEL rules, the
//! docs, the examples, naming, provisioning (with `jetstream`) and validation.

mod cel;
mod crd;
mod docs;
mod examples;
mod naming;
mod provision;
mod validation;

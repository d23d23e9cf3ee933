//! The operator's integration tests, one binary (one link) with a module per
//! area: the pure builders checked against the Kubernetes schemas, reconcile
//! against an in-memory API, the chart's RBAC and monitoring, the image, the
//! rendered pods run for real, and the binary against the stand-in API server
//! (`#[ignore]`d: `.ci/run` runs them with `--ignored`).

mod support;

mod builders;
mod fakekube;
mod image;
mod monitoring;
mod pods;
mod pools;
mod rbac;
mod reconcile;
mod shared_pools;

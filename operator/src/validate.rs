//! The validate step: `hookline_api::resolve` plus what only a cluster needs,
//! producing the one input every builder works from.

use hookline_api::spec::{SecretKeyRef, WebhookEndpoint};
use hookline_api::{FieldError, InvalidSpec, ValidatedEndpoint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

/// A `WebhookEndpoint` checked for a cluster: builders take this and never
/// re-check or re-default a field (the one rule they add, at least one
/// consumer pod without KEDA, is `build::consumer::replicas_without_keda`).
#[derive(Clone, Debug, PartialEq)]
pub struct ValidEndpoint {
    /// Every default applied (the same value the pods compute from the manifest).
    pub endpoint: ValidatedEndpoint,
    /// The manifest the pods read (from the ConfigMap): the resource's name,
    /// namespace and spec as the user wrote it, so pods resolve it as we did.
    pub manifest: String,
    /// The Secret key with the consumer's Postgres URL.
    pub database: SecretKeyRef,
    /// The owner reference every child carries; `None` when rendering a file
    /// that was never applied (no UID yet).
    pub owner: Option<OwnerReference>,
}

impl ValidEndpoint {
    /// The same endpoint with its stream and subjects named for `cluster`
    /// (the operator's `--cluster-name`), as its pods will name them.
    pub fn in_cluster(self, cluster: Option<&str>) -> ValidEndpoint {
        ValidEndpoint {
            endpoint: self.endpoint.in_cluster(cluster),
            ..self
        }
    }
}

/// Checks `resource` and applies every default; every wrong field is reported.
pub fn validate(resource: &WebhookEndpoint) -> Result<ValidEndpoint, InvalidSpec> {
    let namespace = resource
        .namespace()
        .unwrap_or_else(|| hookline_api::manifest::DEFAULT_NAMESPACE.to_owned());
    let resolved = hookline_api::resolve(&namespace, &resource.name_any(), &resource.spec);
    let manifest = manifest(resource, &namespace);
    let database = resource
        .spec
        .consumer
        .as_ref()
        .and_then(|consumer| consumer.database_secret_ref.clone());
    match (resolved, database, manifest) {
        (Ok(endpoint), Some(database), Ok(manifest)) => Ok(ValidEndpoint {
            endpoint,
            manifest,
            database,
            owner: resource.controller_owner_ref(&()),
        }),
        (resolved, database, manifest) => {
            let mut problems = resolved
                .err()
                .map(|InvalidSpec(all)| all)
                .unwrap_or_default();
            if let Err(err) = manifest {
                problems.push(FieldError {
                    field: "spec".into(),
                    message: format!("cannot be written as YAML for the pods: {err}"),
                });
            }
            if database.is_none() {
                problems.push(FieldError {
                    field: "spec.consumer.databaseSecretRef".into(),
                    message: "required in a cluster: name the Secret key that holds the consumer's Postgres URL".into(),
                });
            }
            Err(InvalidSpec(problems))
        }
    }
}

/// The resource as the pods read it: only what `kubectl apply` would take.
fn manifest(resource: &WebhookEndpoint, namespace: &str) -> Result<String, serde_yaml::Error> {
    let mut copy = WebhookEndpoint::new(&resource.name_any(), resource.spec.clone());
    copy.metadata.namespace = Some(namespace.to_owned());
    serde_yaml::to_string(&copy)
}

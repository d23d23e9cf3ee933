//! `hookline-operator render`: the children reconcile would apply for a
//! manifest file, from the same builders, as multi-document YAML (for review
//! and GitOps).

use std::path::Path;

use serde::Serialize;

use crate::build::{self, Children, Cluster, Workload};
use crate::config::OperatorConfig;
use crate::validate::validate;
use crate::{Error, Result};

/// Reads, validates and builds `path`; `namespace` applies when the manifest names none.
pub fn render_file(
    path: &Path,
    namespace: Option<&str>,
    config: &OperatorConfig,
    keda: bool,
) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|source| hookline_api::Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let (mut resource, unknown) = hookline_api::parse_manifest_checked(&text)
        .map_err(|err| Error::from(err.in_file(path)))?;
    // What the API server would prune or refuse is an error here, not a
    // silent difference between the file and what runs.
    if let Some(field) = unknown.first() {
        return Err(Error::from(
            hookline_api::Error::Manifest {
                field: field.clone(),
                message: format!(
                    "unknown field (misspelt?){}",
                    match unknown.len() {
                        1 => String::new(),
                        more => format!("; {} more: {}", more - 1, unknown[1..].join(", ")),
                    }
                ),
            }
            .in_file(path),
        ));
    }
    if resource.metadata.namespace.is_none() {
        resource.metadata.namespace = namespace.map(str::to_owned);
    }
    let valid = validate(&resource)
        .map_err(|invalid| Error::from(hookline_api::Error::from(invalid).in_file(path)))?
        .in_cluster(config.nats.cluster_name.as_deref());
    to_yaml(&build::build(&valid, config, Cluster { keda }))
}

/// Every child as one YAML document, in the order a reader follows the path
/// of an event: manifest, route, receiver, consumer, scaler (a pool member:
/// its route only).
pub fn to_yaml(children: &Children) -> Result<String> {
    let Children { ingress, workload } = children;
    let mut out = String::new();
    let Some(workload) = workload else {
        if let Some(ingress) = ingress {
            document(&mut out, "Ingress", ingress)?;
        }
        return Ok(out);
    };
    let Workload {
        config_map,
        receiver,
        service,
        disruption_budget,
        consumer,
        scaler,
    } = workload;
    document(&mut out, "ConfigMap", config_map)?;
    if let Some(ingress) = ingress {
        document(&mut out, "Ingress", ingress)?;
    }
    document(&mut out, "Service", service)?;
    document(&mut out, "receiver Deployment", receiver)?;
    document(&mut out, "PodDisruptionBudget", disruption_budget)?;
    document(&mut out, "consumer Deployment", consumer)?;
    if let Some(scaler) = scaler {
        document(&mut out, "ScaledObject", scaler)?;
    }
    Ok(out)
}

fn document(out: &mut String, what: &str, object: &impl Serialize) -> Result<()> {
    let yaml = serde_yaml::to_string(object).map_err(|source| Error::Yaml {
        what: what.to_owned(),
        source,
    })?;
    out.push_str("---\n");
    out.push_str(&yaml);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_field_fails_render_naming_its_path() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("endpoint.yaml");
        std::fs::write(
            &file,
            "apiVersion: hookline.io/v1alpha1
kind: WebhookEndpoint
metadata: {name: stripe, namespace: payments}
spec:
  provider: stripe
  secretRef: {name: s}
  request: {rateLimt: {requestsPerSecond: 5}}
  consumer: {databaseSecretRef: {name: db, key: url}}
",
        )
        .expect("write");
        let err = render_file(&file, None, &OperatorConfig::default(), true)
            .expect_err("an unknown field is an error");
        let text = err.to_string();
        assert!(text.contains("spec.request.rateLimt"), "{text}");
        assert!(text.contains("unknown field"), "{text}");
    }
}

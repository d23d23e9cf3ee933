//! `hookline-operator render`: the children reconcile would apply for a
//! manifest file, from the same builders, as multi-document YAML (for review
//! and GitOps). The file is one `WebhookEndpoint`, or one `WebhookPool` with
//! its members (endpoints whose `spec.pool` names it) as further documents.

use std::collections::BTreeSet;
use std::path::Path;

use hookline_api::manifest::DEFAULT_NAMESPACE;
use hookline_api::spec::WebhookEndpoint;
use hookline_api::{WebhookPool, parse_document_checked};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::build::pool::{self as pool_build, Member, PoolChildren};
use crate::build::{self, Children, Cluster, Workload};
use crate::config::OperatorConfig;
use crate::validate::{validate, validate_in, validate_pool};
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
    if let Some(documents) = pool_documents(&text) {
        return render_pool(path, documents, namespace, config, keda);
    }
    let (mut resource, unknown) = hookline_api::parse_manifest_checked(&text)
        .map_err(|err| Error::from(err.in_file(path)))?;
    // What the API server would prune or refuse is an error here, not a
    // silent difference between the file and what runs.
    if let Some(unknown) = unknown_fields(&unknown) {
        return Err(Error::from(unknown.in_file(path)));
    }
    if resource.metadata.namespace.is_none() {
        resource.metadata.namespace = namespace.map(str::to_owned);
    }
    let valid = validate(&resource)
        .map_err(|invalid| Error::from(hookline_api::Error::from(invalid).in_file(path)))?
        .in_cluster(config.nats.cluster_name.as_deref());
    to_yaml(&build::build(&valid, config, Cluster { keda }))
}

/// The error for fields the file has and Hookline does not know, if any.
fn unknown_fields(unknown: &[String]) -> Option<hookline_api::Error> {
    let field = unknown.first()?;
    Some(hookline_api::Error::Manifest {
        field: field.clone(),
        message: format!(
            "unknown field (misspelt?){}",
            match unknown.len() {
                1 => String::new(),
                more => format!("; {} more: {}", more - 1, unknown[1..].join(", ")),
            }
        ),
    })
}

/// The file's YAML documents when one of them is a `WebhookPool`; `None`
/// otherwise, so an endpoint's file is read exactly as it always was.
fn pool_documents(text: &str) -> Option<Vec<serde_yaml::Value>> {
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document).ok()?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    documents
        .iter()
        .any(|document| kind(document) == Some("WebhookPool"))
        .then_some(documents)
}

fn kind(document: &serde_yaml::Value) -> Option<&str> {
    document.get("kind").and_then(serde_yaml::Value::as_str)
}

/// Renders a pool file: the pool's children serving the endpoints of the
/// file that name it (the members), then each member's own children (its
/// Ingress). The pool's Secret is printed without values: the operator
/// copies them from the members' Secrets, which only the cluster has.
fn render_pool(
    path: &Path,
    documents: Vec<serde_yaml::Value>,
    namespace: Option<&str>,
    config: &OperatorConfig,
    keda: bool,
) -> Result<String> {
    let fail = |message: String| {
        Error::from(
            hookline_api::Error::Manifest {
                field: String::new(),
                message,
            }
            .in_file(path),
        )
    };
    let wrong = |number: usize, err: hookline_api::Error| fail(format!("document {number}: {err}"));
    let pools = documents
        .iter()
        .filter(|document| kind(document) == Some("WebhookPool"))
        .count();
    if pools > 1 {
        return Err(fail(format!(
            "holds {pools} WebhookPools: render one pool per file"
        )));
    }
    let mut pool = None;
    let mut endpoints = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        let number = index + 1;
        if kind(&document) == Some("WebhookPool") {
            let (resource, unknown) =
                parse_document_checked::<WebhookPool>(document, "WebhookPool")
                    .map_err(|err| wrong(number, err))?;
            if let Some(unknown) = unknown_fields(&unknown) {
                return Err(wrong(number, unknown));
            }
            pool = Some((number, resource));
        } else {
            let (resource, unknown) =
                parse_document_checked::<WebhookEndpoint>(document, "WebhookEndpoint")
                    .map_err(|err| wrong(number, err))?;
            if let Some(unknown) = unknown_fields(&unknown) {
                return Err(wrong(number, unknown));
            }
            endpoints.push((number, resource));
        }
    }
    let Some((number, mut pool)) = pool else {
        unreachable!("pool_documents found a WebhookPool");
    };
    if pool.metadata.namespace.is_none() {
        pool.metadata.namespace = namespace.map(str::to_owned);
    }
    let valid = validate_pool(&pool).map_err(|invalid| {
        fail(format!(
            "document {number}: invalid WebhookPool: {}",
            invalid
                .0
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    let (pool_namespace, pool_name) = (&valid.pool.namespace, &valid.pool.name);
    let cluster = Cluster { keda };
    let mut members = Vec::new();
    let mut names = BTreeSet::new();
    for (number, mut endpoint) in endpoints {
        if endpoint.metadata.namespace.is_none() {
            endpoint.metadata.namespace = namespace.map(str::to_owned);
        }
        let name = endpoint.name_any();
        let endpoint_namespace = endpoint
            .namespace()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        let not_a_member = |message: String| {
            fail(format!(
                "document {number}: WebhookEndpoint {endpoint_namespace}/{name} {message}"
            ))
        };
        if endpoint.spec.pool.as_deref() != Some(pool_name.as_str()) {
            return Err(not_a_member(format!(
                "does not set spec.pool: {pool_name}: a file with a WebhookPool holds only its members (render another endpoint from a file of its own)"
            )));
        }
        if endpoint_namespace != *pool_namespace {
            return Err(not_a_member(format!(
                "is not in the namespace of WebhookPool {pool_namespace}/{pool_name}: a pool serves only its own namespace"
            )));
        }
        if !names.insert(name.clone()) {
            return Err(not_a_member("is in the file twice".into()));
        }
        let member = validate_in(&endpoint, Some(&valid.pool))
            .map_err(|invalid| wrong(number, hookline_api::Error::from(invalid)))?
            .in_cluster(config.nats.cluster_name.as_deref());
        members.push(member);
    }
    // The operator admits members oldest first, by name among equals; a
    // file has no creation times.
    members.sort_by(|a, b| a.endpoint.name.cmp(&b.endpoint.name));
    let routes: Vec<Children> = members
        .iter()
        .map(|member| build::build(member, config, cluster))
        .collect();
    let (served, full) = pool_build::admit(
        members
            .into_iter()
            .map(|member| Member {
                name: member.endpoint.name,
                manifest: member.manifest,
                signing_secret: Vec::new(),
            })
            .collect(),
    );
    let children = pool_build::build(&valid, &served, config, cluster);
    let mut out = String::new();
    if !full.is_empty() {
        let names: Vec<&str> = full.iter().map(|member| member.name.as_str()).collect();
        out.push_str(&format!(
            "# Not served (PoolFull: the pool's ConfigMap has no room for their manifests): {}\n",
            names.join(", ")
        ));
    }
    out.push_str(&pool_to_yaml(&children, &routes)?);
    if keda && children.workload.scaler.is_none() {
        out.push_str(&format!(
            "# No ScaledObject: KEDA polls the pool's lag at <--service-url>/pools/{pool_namespace}/{pool_name}/lag; give --service-url (the chart sets it) to render it.\n"
        ));
    }
    Ok(out)
}

/// A pool's children and its members' (their Ingresses), in the order of
/// an endpoint's: manifests, signing secrets, routes, receiver, consumer,
/// scaler. The Secret is printed with its key names in a comment instead
/// of its data.
pub fn pool_to_yaml(children: &PoolChildren, members: &[Children]) -> Result<String> {
    let PoolChildren { workload, secret } = children;
    let mut out = String::new();
    document(&mut out, "ConfigMap", &workload.config_map)?;
    let keys: Vec<&str> = secret
        .data
        .iter()
        .flatten()
        .map(|(key, _)| key.as_str())
        .collect();
    let mut without_values = secret.clone();
    without_values.data = None;
    out.push_str(&format!(
        "---\n# data: one key per served member ({}), the value of its spec.secretRef key, copied by the operator in the cluster; not rendered.\n",
        if keys.is_empty() {
            "none".to_owned()
        } else {
            keys.join(", ")
        }
    ));
    out.push_str(
        &serde_yaml::to_string(&without_values).map_err(|source| Error::Yaml {
            what: "Secret".into(),
            source,
        })?,
    );
    for member in members {
        out.push_str(&to_yaml(member)?);
    }
    serving_documents(&mut out, workload)?;
    Ok(out)
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
    document(&mut out, "ConfigMap", &workload.config_map)?;
    if let Some(ingress) = ingress {
        document(&mut out, "Ingress", ingress)?;
    }
    serving_documents(&mut out, workload)?;
    Ok(out)
}

/// What serves the routes, an endpoint's or a pool's: Service, receiver,
/// PodDisruptionBudget, consumer, scaler.
fn serving_documents(out: &mut String, workload: &Workload) -> Result<()> {
    document(out, "Service", &workload.service)?;
    document(out, "receiver Deployment", &workload.receiver)?;
    document(out, "PodDisruptionBudget", &workload.disruption_budget)?;
    document(out, "consumer Deployment", &workload.consumer)?;
    if let Some(scaler) = &workload.scaler {
        document(out, "ScaledObject", scaler)?;
    }
    Ok(())
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

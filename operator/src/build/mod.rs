//! The build step: pure functions from a [`ValidEndpoint`] to every child
//! object, with no client and no way to fail.
//!
//! - [`manifest`]: the ConfigMap the pods read, and its content hash.
//! - [`pod`]: what the receiver and consumer pods share (security, volumes, NATS).
//! - [`receiver`]: receiver Deployment, Service, Ingress, PodDisruptionBudget.
//! - [`consumer`]: consumer Deployment.
//! - [`scaler`]: the KEDA `ScaledObject` type and its builder.

pub mod consumer;
pub mod manifest;
pub mod pod;
pub mod receiver;
pub mod scaler;

use std::collections::BTreeMap;

use hookline_api::naming;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use scaler::ScaledObject;

use crate::config::OperatorConfig;
use crate::validate::ValidEndpoint;

/// The label every child carries with its endpoint's name.
const ENDPOINT_LABEL: &str = "hookline.io/endpoint";
/// The pod-template annotation that changes with the manifest, rolling the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "hookline.io/config-hash";

/// What the cluster offers, found by discovery before building.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// `keda.sh/v1alpha1` ScaledObjects are served.
    pub keda: bool,
}

/// Every object one endpoint owns. Apply and prune destructure it without
/// `..`, so a child added here cannot be forgotten there.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub config_map: ConfigMap,
    pub receiver: Deployment,
    pub service: Service,
    /// Only when `spec.ingress` is given.
    pub ingress: Option<Ingress>,
    pub disruption_budget: PodDisruptionBudget,
    pub consumer: Deployment,
    /// Only when KEDA is installed; without it the consumer runs at a fixed size.
    pub scaler: Option<ScaledObject>,
}

/// The names of an endpoint's children: deterministic, valid DNS labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildNames {
    /// Receiver Deployment, Service, Ingress and PodDisruptionBudget.
    pub receiver: String,
    /// Consumer Deployment and ScaledObject.
    pub consumer: String,
    pub config_map: String,
}

impl ChildNames {
    pub fn of(endpoint_name: &str) -> ChildNames {
        ChildNames {
            receiver: naming::child_name(endpoint_name, "receiver"),
            consumer: naming::child_name(endpoint_name, "consumer"),
            config_map: naming::child_name(endpoint_name, "endpoint"),
        }
    }
}

/// Builds every child of `valid`.
pub fn build(valid: &ValidEndpoint, config: &OperatorConfig, cluster: Cluster) -> Children {
    let hash = manifest::hash(valid);
    Children {
        config_map: manifest::config_map(valid),
        receiver: receiver::deployment(valid, config, &hash),
        service: receiver::service(valid),
        ingress: receiver::ingress(valid),
        disruption_budget: receiver::disruption_budget(valid),
        consumer: consumer::deployment(valid, config, &hash, cluster.keda),
        scaler: cluster.keda.then(|| scaler::scaled_object(valid, config)),
    }
}

/// `component`'s labels: the recommended `app.kubernetes.io/*` set and the endpoint.
pub fn labels(valid: &ValidEndpoint, component: &str) -> BTreeMap<String, String> {
    let mut labels = naming::labels(&valid.endpoint.name, component);
    labels.insert(
        ENDPOINT_LABEL.to_owned(),
        naming::label_value(&valid.endpoint.name),
    );
    labels
}

/// The labels a selector of `component`'s pods matches: stable for the
/// endpoint's life, as Deployment selectors cannot change.
pub fn selector_labels(valid: &ValidEndpoint, component: &str) -> BTreeMap<String, String> {
    let all = labels(valid, component);
    [
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
    ]
    .into_iter()
    .filter_map(|key| all.get(key).map(|value| (key.to_owned(), value.clone())))
    .collect()
}

/// Name, namespace, labels and owner of a child.
pub fn metadata(valid: &ValidEndpoint, name: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(valid.endpoint.namespace.clone()),
        labels: Some(labels(valid, component)),
        owner_references: valid.owner.clone().map(|owner| vec![owner]),
        ..Default::default()
    }
}

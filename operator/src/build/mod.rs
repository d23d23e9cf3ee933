//! The build step: pure functions from a [`ValidEndpoint`] (or a pool and
//! its members) to every child object, with no client and no way to fail.
//!
//! - [`manifest`]: the ConfigMap the pods read, and its content hash.
//! - [`pod`]: what the receiver and consumer pods share (security, volumes, NATS).
//! - [`receiver`]: receiver Deployment, Service, Ingress, PodDisruptionBudget.
//! - [`consumer`]: consumer Deployment.
//! - [`scaler`]: the KEDA `ScaledObject` type and its builder.
//! - [`pool`]: a `WebhookPool`'s children, from the same builders.

pub mod consumer;
pub mod manifest;
pub mod pod;
pub mod pool;
pub mod receiver;
pub mod scaler;

use std::collections::BTreeMap;

use hookline_api::naming;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

pub use scaler::ScaledObject;

use crate::config::OperatorConfig;
use crate::validate::{Placement, ValidEndpoint};

/// The label every child of an endpoint carries with its endpoint's name.
const ENDPOINT_LABEL: &str = "hookline.io/endpoint";
/// The label every child of a pool carries with its pool's name.
pub const POOL_LABEL: &str = "hookline.io/pool";
/// The pod-template annotation that changes with the manifest, rolling the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "hookline.io/config-hash";

/// What the cluster offers, found by discovery before building.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// `keda.sh/v1alpha1` ScaledObjects are served.
    pub keda: bool,
}

/// Every object one endpoint owns. Apply and prune destructure it without
/// `..`, so a child added here cannot be forgotten there; what is `None`
/// is deleted.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    /// Only when `spec.ingress` is given.
    pub ingress: Option<Ingress>,
    /// The endpoint's own pods and what they read; `None` for a pool member,
    /// whose pool's pods serve it.
    pub workload: Option<Workload>,
}

/// Receiver and consumer pods and what they read: an endpoint's own, or a pool's.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub config_map: ConfigMap,
    pub receiver: Deployment,
    pub service: Service,
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

/// Who owns a child: its name, namespace and owner reference, and which
/// label (`hookline.io/endpoint` or `hookline.io/pool`) carries the name.
#[derive(Clone, Copy, Debug)]
pub struct Owner<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub reference: Option<&'a OwnerReference>,
    label: &'static str,
}

impl<'a> Owner<'a> {
    pub fn endpoint(valid: &'a ValidEndpoint) -> Owner<'a> {
        Owner {
            name: &valid.endpoint.name,
            namespace: &valid.endpoint.namespace,
            reference: valid.owner.as_ref(),
            label: ENDPOINT_LABEL,
        }
    }

    pub fn pool(
        name: &'a str,
        namespace: &'a str,
        reference: Option<&'a OwnerReference>,
    ) -> Owner<'a> {
        Owner {
            name,
            namespace,
            reference,
            label: POOL_LABEL,
        }
    }

    /// `component`'s labels: the recommended `app.kubernetes.io/*` set and the owner.
    pub fn labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut labels = naming::labels(self.name, component);
        labels.insert(self.label.to_owned(), naming::label_value(self.name));
        labels
    }

    /// The labels a selector of `component`'s pods matches: stable for the
    /// owner's life, as Deployment selectors cannot change.
    pub fn selector_labels(&self, component: &str) -> BTreeMap<String, String> {
        let all = self.labels(component);
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
    pub fn metadata(&self, name: &str, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.to_owned()),
            labels: Some(self.labels(component)),
            owner_references: self.reference.map(|owner| vec![owner.clone()]),
            ..Default::default()
        }
    }
}

/// Builds every child of `valid`: a pool member gets only its Ingress.
pub fn build(valid: &ValidEndpoint, config: &OperatorConfig, cluster: Cluster) -> Children {
    let workload = match &valid.placement {
        Placement::Dedicated { database } => {
            let hash = manifest::hash(valid);
            Some(Workload {
                config_map: manifest::config_map(valid),
                receiver: receiver::deployment(valid, config, &hash),
                service: receiver::service(valid),
                disruption_budget: receiver::disruption_budget(valid),
                consumer: consumer::deployment(valid, database, config, &hash, cluster.keda),
                scaler: cluster.keda.then(|| scaler::scaled_object(valid, config)),
            })
        }
        Placement::Pooled { .. } => None,
    };
    Children {
        ingress: receiver::ingress(valid),
        workload,
    }
}

/// `component`'s labels: the recommended `app.kubernetes.io/*` set and the endpoint.
pub fn labels(valid: &ValidEndpoint, component: &str) -> BTreeMap<String, String> {
    Owner::endpoint(valid).labels(component)
}

/// The labels a selector of `component`'s pods matches.
pub fn selector_labels(valid: &ValidEndpoint, component: &str) -> BTreeMap<String, String> {
    Owner::endpoint(valid).selector_labels(component)
}

/// Name, namespace, labels and owner of an endpoint's child.
pub fn metadata(valid: &ValidEndpoint, name: &str, component: &str) -> ObjectMeta {
    Owner::endpoint(valid).metadata(name, component)
}

//! The apply step: server-side apply of every child under one field manager,
//! skipping children whose cached state already holds what was built (a
//! steady state makes no write), then deleting what the endpoint no longer has.

use std::fmt::Debug;
use std::sync::Arc;

use hookline_api::naming::FIELD_MANAGER;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::build::{Children, ScaledObject};
use crate::metrics::Metrics;

/// Caches of every kind an endpoint owns, kept by watches (see `controller`).
#[derive(Clone)]
pub struct ChildStores {
    pub config_maps: Store<ConfigMap>,
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub ingresses: Store<Ingress>,
    pub disruption_budgets: Store<PodDisruptionBudget>,
    pub scalers: Store<ScaledObject>,
}

/// The writing halves of [`ChildStores`], for the reflectors (or a test).
pub struct ChildWriters {
    pub config_maps: Writer<ConfigMap>,
    pub deployments: Writer<Deployment>,
    pub services: Writer<Service>,
    pub ingresses: Writer<Ingress>,
    pub disruption_budgets: Writer<PodDisruptionBudget>,
    pub scalers: Writer<ScaledObject>,
}

/// Empty stores and their writers.
pub fn stores() -> (ChildStores, ChildWriters) {
    let (config_maps, config_map_writer) = reflector::store();
    let (deployments, deployment_writer) = reflector::store();
    let (services, service_writer) = reflector::store();
    let (ingresses, ingress_writer) = reflector::store();
    let (disruption_budgets, disruption_budget_writer) = reflector::store();
    let (scalers, scaler_writer) = reflector::store();
    (
        ChildStores {
            config_maps,
            deployments,
            services,
            ingresses,
            disruption_budgets,
            scalers,
        },
        ChildWriters {
            config_maps: config_map_writer,
            deployments: deployment_writer,
            services: service_writer,
            ingresses: ingress_writer,
            disruption_budgets: disruption_budget_writer,
            scalers: scaler_writer,
        },
    )
}

/// The children as the API server holds them after applying, for the status.
#[derive(Clone, Debug)]
pub struct Applied {
    pub receiver: Deployment,
    pub consumer: Deployment,
    pub ingress: Option<Ingress>,
    pub scaler: Option<ScaledObject>,
}

/// What the apply step talks to.
pub struct Applier<'a> {
    pub client: &'a Client,
    pub stores: &'a ChildStores,
    pub metrics: &'a Metrics,
    pub namespace: &'a str,
    /// The endpoint's UID: what it owns is pruned, nothing else.
    pub owner_uid: &'a str,
}

impl Applier<'_> {
    /// Applies every child that differs from its cached state and deletes
    /// owned objects the endpoint no longer has (an Ingress whose
    /// `spec.ingress` was removed, a child of an older naming).
    pub async fn apply(&self, children: Children) -> Result<Applied, kube::Error> {
        let Children {
            config_map,
            receiver,
            service,
            ingress,
            disruption_budget,
            consumer,
            scaler,
        } = children;
        let config_map = self.apply_one(&self.stores.config_maps, config_map).await?;
        self.prune(&self.stores.config_maps, &[config_map.name_any()])
            .await?;
        let service = self.apply_one(&self.stores.services, service).await?;
        self.prune(&self.stores.services, &[service.name_any()])
            .await?;
        let ingress = match ingress {
            Some(ingress) => Some(self.apply_one(&self.stores.ingresses, ingress).await?),
            None => None,
        };
        self.prune(&self.stores.ingresses, &names(ingress.as_ref()))
            .await?;
        let disruption_budget = self
            .apply_one(&self.stores.disruption_budgets, disruption_budget)
            .await?;
        self.prune(
            &self.stores.disruption_budgets,
            &[disruption_budget.name_any()],
        )
        .await?;
        let receiver = self.apply_one(&self.stores.deployments, receiver).await?;
        let consumer = self.apply_one(&self.stores.deployments, consumer).await?;
        self.prune(
            &self.stores.deployments,
            &[receiver.name_any(), consumer.name_any()],
        )
        .await?;
        let scaler = match scaler {
            Some(scaler) => Some(self.apply_one(&self.stores.scalers, scaler).await?),
            None => None,
        };
        self.prune(&self.stores.scalers, &names(scaler.as_ref()))
            .await?;
        Ok(Applied {
            receiver,
            consumer,
            ingress,
            scaler,
        })
    }

    /// Server-side apply with `force` (the operator is the fields' sole
    /// owner), unless the cache already holds every field of `desired`.
    async fn apply_one<K>(&self, store: &Store<K>, desired: K) -> Result<K, kube::Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + Serialize
            + DeserializeOwned,
    {
        let name = desired.name_any();
        let cached = store.get(&ObjectRef::new(&name).within(self.namespace));
        if let Some(current) = cached.as_deref()
            && holds(current, &desired)
        {
            return Ok(current.clone());
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await?;
        self.metrics.write(&K::kind(&()));
        tracing::info!(kind = %K::kind(&()), name = %name, "applied");
        Ok(applied)
    }

    /// Deletes cached objects owned by the endpoint whose name is not in `keep`.
    async fn prune<K>(&self, store: &Store<K>, keep: &[String]) -> Result<(), kube::Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned,
    {
        let stale: Vec<Arc<K>> = store
            .state()
            .into_iter()
            .filter(|object| object.namespace().as_deref() == Some(self.namespace))
            .filter(|object| {
                object
                    .owner_references()
                    .iter()
                    .any(|owner| owner.uid == self.owner_uid)
            })
            .filter(|object| !keep.contains(&object.name_any()))
            .collect();
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        for object in stale {
            let name = object.name_any();
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(response)) if response.code == 404 => {}
                Err(err) => return Err(err),
            }
            self.metrics.write(&K::kind(&()));
            tracing::info!(kind = %K::kind(&()), name = %name, "deleted: no longer part of the endpoint");
        }
        Ok(())
    }
}

fn names<K: Resource>(object: Option<&K>) -> Vec<String> {
    object.map(ResourceExt::name_any).into_iter().collect()
}

/// Whether `current` already holds every field `desired` sets, with the same
/// value: what a server-side apply of `desired` would leave unchanged. Fields
/// the server or other controllers add are ignored; resource quantities
/// compare by value (`0.5` and `500m` are one CPU amount).
pub fn holds<K: Serialize>(current: &K, desired: &K) -> bool {
    match (serde_json::to_value(current), serde_json::to_value(desired)) {
        (Ok(current), Ok(desired)) => contains(&current, &desired, false),
        _ => false,
    }
}

fn contains(current: &Value, desired: &Value, in_resources: bool) -> bool {
    match (desired, current) {
        (Value::Object(want), Value::Object(have)) => {
            want.iter().all(|(key, value)| match have.get(key) {
                Some(present) => contains(present, value, in_resources || key == "resources"),
                None => is_empty(value),
            })
        }
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len()
                && want
                    .iter()
                    .zip(have)
                    .all(|(want, have)| contains(have, want, in_resources))
        }
        (Value::String(want), Value::String(have)) if in_resources => {
            want == have || quantity(want).is_some_and(|want| Some(want) == quantity(have))
        }
        (want, have) => want == have,
    }
}

/// Values the API server drops rather than stores.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        Value::Array(list) => list.is_empty(),
        _ => false,
    }
}

/// A Kubernetes quantity (`250m`, `1.5`, `64Mi`, `1G`, `1e3`) as a number.
fn quantity(text: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| text.strip_suffix(suffix).map(|number| (number, *scale)))
        .unwrap_or((text, 1.0));
    number.parse::<f64>().ok().map(|value| value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_the_server_adds_do_not_count_as_a_change() {
        let desired = json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "a"}]}}});
        let current = json!({"spec": {"replicas": 2, "progressDeadlineSeconds": 600,
            "template": {"containers": [{"name": "a", "terminationMessagePath": "/dev/termination-log"}]}},
            "status": {"availableReplicas": 2}});
        assert!(contains(&current, &desired, false));
    }

    #[test]
    fn a_changed_or_removed_field_is_a_change() {
        let desired = json!({"spec": {"replicas": 2, "labels": {"a": "b"}}});
        assert!(!contains(
            &json!({"spec": {"replicas": 3, "labels": {"a": "b"}}}),
            &desired,
            false
        ));
        assert!(!contains(
            &json!({"spec": {"replicas": 2}}),
            &desired,
            false
        ));
        assert!(!contains(
            &json!({"spec": {"replicas": 2, "labels": {"a": "c"}}}),
            &desired,
            false
        ));
    }

    #[test]
    fn lists_must_match_item_by_item() {
        let desired = json!({"args": ["--a=1", "--b=2"]});
        assert!(!contains(&json!({"args": ["--a=1"]}), &desired, false));
        assert!(!contains(
            &json!({"args": ["--b=2", "--a=1"]}),
            &desired,
            false
        ));
        assert!(contains(
            &json!({"args": ["--a=1", "--b=2"]}),
            &desired,
            false
        ));
    }

    #[test]
    fn quantities_compare_by_value_in_resources_only() {
        let desired = json!({"resources": {"requests": {"cpu": "0.5", "memory": "1Gi"}}});
        let current = json!({"resources": {"requests": {"cpu": "500m", "memory": "1073741824"}}});
        assert!(contains(&current, &desired, false));
        assert!(!contains(
            &json!({"image": "500m"}),
            &json!({"image": "0.5"}),
            false
        ));
        assert!(!contains(
            &json!({"resources": {"requests": {"cpu": "600m"}}}),
            &json!({"resources": {"requests": {"cpu": "0.5"}}}),
            false
        ));
    }

    #[test]
    fn empty_values_match_what_the_server_dropped() {
        assert!(contains(
            &json!({}),
            &json!({"annotations": {}, "env": [], "x": null}),
            false
        ));
    }
}

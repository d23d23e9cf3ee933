//! The apply step: server-side apply of every child under one field manager,
//! skipping children whose cached state already holds what was built (a
//! steady state makes no write), then deleting what the endpoint no longer has.
//! A child whose kind is cached as metadata only (a pool's Secret) goes
//! through the same ownership check and write, skipped by what this replica
//! last wrote instead ([`Applier::apply_uncached`]).

use std::fmt::Debug;
use std::sync::Arc;

use hookline_api::naming::FIELD_MANAGER;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::{NamespaceResourceScope, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::build::{Children, ScaledObject, Workload};
use crate::metrics::Metrics;

/// The one list of the kinds an endpoint owns: the caches the watches keep,
/// their writers, and the resources RBAC must allow (checked against the
/// controller's `WATCHED` and the chart's rules).
macro_rules! child_kinds {
    ($($field:ident: $kind:ty),* $(,)?) => {
        /// Caches of every kind an endpoint owns, kept by watches (see `controller`).
        #[derive(Clone)]
        pub struct ChildStores {
            $(pub $field: Store<$kind>,)*
        }

        /// The writing halves of [`ChildStores`], for the reflectors (or a test).
        pub struct ChildWriters {
            $(pub $field: Writer<$kind>,)*
        }

        /// Empty stores and their writers.
        pub fn stores() -> (ChildStores, ChildWriters) {
            $(let $field = reflector::store::<$kind>();)*
            (
                ChildStores { $($field: $field.0,)* },
                ChildWriters { $($field: $field.1,)* },
            )
        }

        /// `(API group, plural)` of every kind an endpoint owns.
        pub fn child_resources() -> Vec<(String, String)> {
            vec![$((<$kind>::group(&()).into_owned(), <$kind>::plural(&()).into_owned()),)*]
        }
    };
}

child_kinds!(
    config_maps: ConfigMap,
    deployments: Deployment,
    services: Service,
    ingresses: Ingress,
    disruption_budgets: PodDisruptionBudget,
    scalers: ScaledObject,
);

/// What the Applier writes: a namespaced object it can serialize for
/// server-side apply and read back.
pub trait Child:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
{
}

impl<K> Child for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
{
}

impl ChildStores {
    /// Waits until every watch has listed its objects once, so the first
    /// reconciles compare with what exists instead of writing everything.
    /// ScaledObjects are waited for only when KEDA is installed, and at most
    /// `scaler_wait` (their watch starts once it has found KEDA).
    pub async fn wait_until_ready(&self, keda: bool, scaler_wait: std::time::Duration) {
        // Err: the writer is gone, i.e. the controller is stopping.
        let _ = futures::join!(
            self.config_maps.wait_until_ready(),
            self.deployments.wait_until_ready(),
            self.services.wait_until_ready(),
            self.ingresses.wait_until_ready(),
            self.disruption_budgets.wait_until_ready(),
        );
        if keda {
            let _ = tokio::time::timeout(scaler_wait, self.scalers.wait_until_ready()).await;
        }
    }
}

/// The children as the API server holds them after applying (or as cached,
/// when applying one failed), and what could not be applied.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub receiver: Option<Deployment>,
    pub consumer: Option<Deployment>,
    pub ingress: Option<Ingress>,
    pub scaler: Option<ScaledObject>,
    /// Children that were not applied or pruned, each with why.
    pub failures: Vec<ApplyFailure>,
}

/// One child that could not be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyFailure {
    pub kind: String,
    pub name: String,
    pub problem: Problem,
}

/// Why a child could not be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// An object of the child's name exists and is not this endpoint's: it
    /// is never adopted (it would be garbage-collected with the endpoint).
    /// Holds its controller (`Kind/name`), if it has one.
    NameConflict { controller: Option<String> },
    /// The API server refused the request (admission, validation, conflict)
    /// or could not be reached: its message.
    Refused(String),
}

impl ApplyFailure {
    /// `problem` with the child of kind `K` named `name`.
    fn of<K: Resource<DynamicType = ()>>(name: &str, problem: Problem) -> ApplyFailure {
        ApplyFailure {
            kind: K::kind(&()).into_owned(),
            name: name.to_owned(),
            problem,
        }
    }

    /// One sentence an SRE can act on, cause first.
    pub fn describe(&self, namespace: &str) -> String {
        let object = format!("{} {namespace}/{}", self.kind, self.name);
        match &self.problem {
            Problem::NameConflict {
                controller: Some(controller),
            } => format!(
                "{object} already exists and belongs to {controller}: rename this endpoint, or delete that object if it is stale"
            ),
            Problem::NameConflict { controller: None } => format!(
                "{object} already exists and is not this endpoint's: rename this endpoint, or delete or rename that object"
            ),
            Problem::Refused(message) => {
                format!("the API server refused {object}: {message}")
            }
        }
    }
}

/// The annotation on every child with a hash of what was last applied: a
/// field removed from the desired object changes it, so the removal is
/// applied (a comparison of the fields still desired cannot see it).
pub const APPLIED_HASH_ANNOTATION: &str = "hookline.io/applied-hash";

/// What this replica last wrote of a child cached as metadata only: the
/// hash of what it applied and the resource version the write returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub hash: String,
    pub resource_version: String,
}

/// What the apply step talks to.
pub struct Applier<'a> {
    pub client: &'a Client,
    pub stores: &'a ChildStores,
    pub metrics: &'a Metrics,
    pub namespace: &'a str,
    /// The owner's (endpoint's or pool's) UID: what it controls is applied
    /// and pruned, nothing else.
    pub owner_uid: &'a str,
}

impl Applier<'_> {
    /// Applies every child that differs from its cached state, each on its
    /// own (one refused child does not keep the others back), and deletes
    /// owned objects the endpoint no longer has (an Ingress whose
    /// `spec.ingress` was removed, a child of an older naming).
    pub async fn apply(&self, children: Children) -> Applied {
        let Children { ingress, workload } = children;
        let mut failures = Vec::new();
        let stores = self.stores;
        let keep = names(ingress.as_ref());
        let ingress = match ingress {
            Some(ingress) => {
                self.apply_one(&stores.ingresses, ingress, &mut failures)
                    .await
            }
            None => None,
        };
        self.prune(&stores.ingresses, &keep, &mut failures).await;
        let (receiver, consumer, scaler) = self.apply_workload(workload, &mut failures).await;
        Applied {
            receiver,
            consumer,
            ingress,
            scaler,
            failures,
        }
    }

    /// Applies the pods and what they read, or deletes them all (`None`: a
    /// pool member's, which its pool serves). Returns the receiver and
    /// consumer Deployments and the ScaledObject as applied.
    async fn apply_workload(
        &self,
        workload: Option<Workload>,
        failures: &mut Vec<ApplyFailure>,
    ) -> (Option<Deployment>, Option<Deployment>, Option<ScaledObject>) {
        let (config_map, receiver, service, disruption_budget, consumer, scaler) = match workload {
            Some(Workload {
                config_map,
                receiver,
                service,
                disruption_budget,
                consumer,
                scaler,
            }) => (
                Some(config_map),
                Some(receiver),
                Some(service),
                Some(disruption_budget),
                Some(consumer),
                scaler,
            ),
            None => (None, None, None, None, None, None),
        };
        let stores = self.stores;
        self.apply_kept(&stores.config_maps, config_map, failures)
            .await;
        self.apply_kept(&stores.services, service, failures).await;
        self.apply_kept(&stores.disruption_budgets, disruption_budget, failures)
            .await;
        let mut keep = names(receiver.as_ref());
        keep.extend(names(consumer.as_ref()));
        let receiver = match receiver {
            Some(receiver) => {
                self.apply_one(&stores.deployments, receiver, failures)
                    .await
            }
            None => None,
        };
        let consumer = match consumer {
            Some(consumer) => {
                self.apply_one(&stores.deployments, consumer, failures)
                    .await
            }
            None => None,
        };
        self.prune(&stores.deployments, &keep, failures).await;
        let scaler = self.apply_kept(&stores.scalers, scaler, failures).await;
        (receiver, consumer, scaler)
    }

    /// Applies `desired` (when there is one) and deletes every other object
    /// of its kind the owner controls.
    async fn apply_kept<K>(
        &self,
        store: &Store<K>,
        desired: Option<K>,
        failures: &mut Vec<ApplyFailure>,
    ) -> Option<K>
    where
        K: Child,
    {
        let keep = names(desired.as_ref());
        let applied = match desired {
            Some(desired) => self.apply_one(store, desired, failures).await,
            None => None,
        };
        self.prune(store, &keep, failures).await;
        applied
    }

    /// Server-side apply with `force` (the operator is the sole owner of
    /// what it applies), unless the cache already holds `desired` with the
    /// same applied hash. Never writes over an object this endpoint does not
    /// control. Returns the object as applied, else as cached, recording a
    /// failure in `failures`.
    async fn apply_one<K>(
        &self,
        store: &Store<K>,
        mut desired: K,
        failures: &mut Vec<ApplyFailure>,
    ) -> Option<K>
    where
        K: Child,
    {
        let name = desired.name_any();
        let fail = |problem: Problem| ApplyFailure::of::<K>(&name, problem);
        let hash = applied_hash(&desired);
        desired
            .meta_mut()
            .annotations
            .get_or_insert_with(Default::default)
            .insert(APPLIED_HASH_ANNOTATION.to_owned(), hash);
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        let cached = store
            .get(&ObjectRef::new(&name).within(self.namespace))
            .map(|object| object.as_ref().clone());
        // Not cached: our watch only sees labelled children, so ask whether
        // someone else's object has the name.
        let current = match cached {
            Some(object) => Some(object),
            None => match api.get_opt(&name).await {
                Ok(object) => object,
                Err(err) => {
                    failures.push(fail(refusal(&err)));
                    return None;
                }
            },
        };
        if let Some(current) = &current {
            if let Some(conflict) = self.conflict(current) {
                failures.push(fail(conflict));
                return None;
            }
            if holds(current, &desired) {
                return Some(current.clone());
            }
        }
        match self.write(&api, &desired).await {
            Ok(applied) => Some(applied),
            Err(problem) => {
                failures.push(fail(problem));
                current
            }
        }
    }

    /// `apply_one` for a kind the watches keep as metadata
    /// only: the pool's Secret (the operator caches no Secret's values, so
    /// there is no copy to compare `desired` with, and a GET would read the
    /// values on every reconcile). It is written only when its hash differs
    /// from `last` (what this replica last wrote), or the object's resource
    /// version moved past `last`'s (someone else changed it, or this
    /// replica has not written it since it started). The hash is kept in
    /// memory only, never on the object: it is a digest of secret values.
    /// `seen` is the object's metadata as cached, `None` when the cache
    /// does not have it (then asked of the API server, metadata only).
    /// Returns what was written, `None` when nothing needed to be.
    pub async fn apply_uncached<K>(
        &self,
        desired: K,
        seen: Option<PartialObjectMeta<K>>,
        last: Option<&Written>,
    ) -> Result<Option<Written>, ApplyFailure>
    where
        K: Child,
    {
        let name = desired.name_any();
        let fail = |problem: Problem| ApplyFailure::of::<K>(&name, problem);
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        let seen = match seen {
            Some(seen) => Some(seen),
            None => api
                .get_metadata_opt(&name)
                .await
                .map_err(|err| fail(refusal(&err)))?,
        };
        let hash = applied_hash(&desired);
        if let Some(seen) = &seen {
            if let Some(conflict) = self.conflict(seen) {
                return Err(fail(conflict));
            }
            if last.is_some_and(|last| {
                last.hash == hash
                    && seen.resource_version().as_deref() == Some(last.resource_version.as_str())
            }) {
                return Ok(None);
            }
        }
        let applied = self.write(&api, &desired).await.map_err(fail)?;
        Ok(applied.resource_version().map(|resource_version| Written {
            hash,
            resource_version,
        }))
    }

    /// Why `current` must not be written: it is not this owner's.
    fn conflict<K: Resource>(&self, current: &K) -> Option<Problem> {
        (controller_uid(current) != Some(self.owner_uid)).then(|| Problem::NameConflict {
            controller: controller_name(current),
        })
    }

    /// Server-side apply of `desired` with `force` (the operator is the
    /// sole owner of what it applies) under the one field manager, counted
    /// by kind and logged by kind and name (never its content).
    async fn write<K: Child>(&self, api: &Api<K>, desired: &K) -> Result<K, Problem> {
        let name = desired.name_any();
        let kind = K::kind(&()).into_owned();
        match api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(desired),
            )
            .await
        {
            Ok(applied) => {
                self.metrics.write(&kind);
                tracing::info!(%kind, %name, "applied");
                Ok(applied)
            }
            Err(err) => {
                tracing::warn!(%kind, %name, cause = %err, "cannot apply");
                Err(refusal(&err))
            }
        }
    }

    /// Deletes cached objects the endpoint controls whose name is not in `keep`.
    async fn prune<K>(&self, store: &Store<K>, keep: &[String], failures: &mut Vec<ApplyFailure>)
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
            .filter(|object| controller_uid(object.as_ref()) == Some(self.owner_uid))
            .filter(|object| !keep.contains(&object.name_any()))
            .collect();
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        for object in stale {
            let name = object.name_any();
            let kind = K::kind(&()).into_owned();
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(response)) if response.code == 404 => {}
                Err(err) => {
                    failures.push(ApplyFailure::of::<K>(&name, refusal(&err)));
                    continue;
                }
            }
            self.metrics.write(&kind);
            tracing::info!(%kind, %name, "deleted: no longer part of the endpoint");
        }
    }
}

fn names<K: Resource>(object: Option<&K>) -> Vec<String> {
    object.map(ResourceExt::name_any).into_iter().collect()
}

/// The UID of the object's controller (the owner reference with `controller: true`).
fn controller_uid<K: Resource>(object: &K) -> Option<&str> {
    object
        .owner_references()
        .iter()
        .find(|owner| owner.controller == Some(true))
        .map(|owner| owner.uid.as_str())
}

/// `Kind/name` of the object's controller, for a conflict's message.
fn controller_name<K: Resource>(object: &K) -> Option<String> {
    object
        .owner_references()
        .iter()
        .find(|owner| owner.controller == Some(true))
        .map(|owner| format!("{} {}", owner.kind, owner.name))
}

/// What the API server said, or why it could not be asked.
fn refusal(err: &kube::Error) -> Problem {
    Problem::Refused(match err {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    })
}

/// Sixteen hex digits of SHA-256 over the object as it is applied.
fn applied_hash<K: Serialize>(desired: &K) -> String {
    let bytes = serde_json::to_vec(desired).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Whether `current` already holds every field `desired` sets, with the same
/// value: what a server-side apply of `desired` would leave unchanged. Fields
/// the server or other controllers add are ignored; resource quantities
/// compare by exact value (`0.5` and `500m` are one CPU amount, as the API
/// server stores them canonically).
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

/// A Kubernetes quantity (`250m`, `0.7`, `64Mi`, `1G`, `1e3`) as an exact
/// decimal `(digits, power of ten)` with no trailing zero in `digits`, so
/// two spellings of one amount compare equal and nothing is rounded
/// (`0.7` and `700m` as floating point differ in the last bit).
fn quantity(text: &str) -> Option<(i128, i32)> {
    const BINARY: [(&str, u32); 6] = [
        ("Ki", 10),
        ("Mi", 20),
        ("Gi", 30),
        ("Ti", 40),
        ("Pi", 50),
        ("Ei", 60),
    ];
    const DECIMAL: [(&str, i32); 9] = [
        ("n", -9),
        ("u", -6),
        ("m", -3),
        ("k", 3),
        ("M", 6),
        ("G", 9),
        ("T", 12),
        ("P", 15),
        ("E", 18),
    ];
    let (number, factor, mut exponent) = if let Some((number, shift)) = BINARY
        .iter()
        .find_map(|(suffix, shift)| text.strip_suffix(suffix).map(|n| (n, *shift)))
    {
        (number, 1i128 << shift, 0)
    } else if let Some((number, exponent)) = text
        .split_once(['e', 'E'])
        .filter(|(number, _)| !number.is_empty())
        .and_then(|(number, exponent)| Some((number, exponent.parse::<i32>().ok()?)))
    {
        (number, 1, exponent)
    } else if let Some((number, exponent)) = DECIMAL
        .iter()
        .find_map(|(suffix, exponent)| text.strip_suffix(suffix).map(|n| (n, *exponent)))
    {
        (number, 1, exponent)
    } else {
        (text, 1, 0)
    };
    let (sign, unsigned) = match number.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, number.strip_prefix('+').unwrap_or(number)),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .chars()
            .chain(fraction.chars())
            .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let mut digits: i128 = 0;
    for digit in whole.chars().chain(fraction.chars()) {
        digits = digits
            .checked_mul(10)?
            .checked_add(i128::from(digit.to_digit(10)?))?;
    }
    exponent -= i32::try_from(fraction.len()).ok()?;
    let mut digits = digits.checked_mul(factor)?.checked_mul(sign)?;
    if digits == 0 {
        return Some((0, 0));
    }
    while digits % 10 == 0 {
        digits /= 10;
        exponent += 1;
    }
    Some((digits, exponent))
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
    fn quantities_equal_in_value_are_equal_exactly() {
        for (written, stored) in [
            ("0.7", "700m"),
            ("0.5Gi", "512Mi"),
            ("1.5Gi", "1536Mi"),
            ("1e3", "1k"),
            ("100m", "0.1"),
            ("2", "2000m"),
            ("0.000001", "1u"),
            ("1Ki", "1024"),
        ] {
            assert_eq!(quantity(written), quantity(stored), "{written} = {stored}");
            assert!(quantity(written).is_some(), "{written} parses");
        }
        for (a, b) in [("0.7", "701m"), ("1Gi", "1G"), ("1", "1m"), ("1E", "1Ei")] {
            assert_ne!(quantity(a), quantity(b), "{a} != {b}");
        }
        for not_a_quantity in ["", "abc", "1.2.3", "m", "--1"] {
            assert_eq!(quantity(not_a_quantity), None, "{not_a_quantity}");
        }
    }

    #[test]
    fn the_applied_hash_changes_when_a_field_is_removed() {
        let with_tls = json!({"spec": {"rules": [], "tls": [{"hosts": ["a"]}]}});
        let without = json!({"spec": {"rules": []}});
        assert_ne!(applied_hash(&with_tls), applied_hash(&without));
        assert_eq!(applied_hash(&without), applied_hash(&without.clone()));
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

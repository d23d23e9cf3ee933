//! KEDA's `ScaledObject` (the fields Hookline sets and reads) and the one that
//! scales an endpoint's consumer on its durable consumer's lag.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ChildNames, metadata};
use crate::config::OperatorConfig;
use crate::validate::ValidEndpoint;

/// KEDA's scaler for a JetStream consumer's pending messages.
pub const TRIGGER_TYPE: &str = "nats-jetstream";
/// Seconds between KEDA's lag checks: fast enough to follow a burst.
const POLLING_INTERVAL_SECONDS: i32 = 10;
/// Seconds without lag before KEDA scales to `minReplicas` (KEDA's default).
const COOLDOWN_SECONDS: i32 = 300;

/// `keda.sh/v1alpha1` ScaledObject, as far as Hookline uses it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "keda.sh",
    version = "v1alpha1",
    kind = "ScaledObject",
    namespaced,
    status = "ScaledObjectStatus",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectSpec {
    pub scale_target_ref: ScaleTargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polling_interval: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_period: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replica_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replica_count: Option<i32>,
    pub triggers: Vec<ScaleTrigger>,
}

/// The workload KEDA scales.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
}

/// One scaler; KEDA reads every `metadata` value as a string.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ScaleTrigger {
    #[serde(rename = "type")]
    pub type_: String,
    pub metadata: BTreeMap<String, String>,
}

/// What KEDA reports; only the conditions are read.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ScaledObjectStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<KedaCondition>>,
}

/// A KEDA condition (`Ready`, `Active`, `Fallback`, `Paused`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct KedaCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Scales the consumer Deployment between `minReplicas` and `maxReplicas`,
/// adding a pod per `lagThreshold` pending events of the durable consumer.
pub fn scaled_object(valid: &ValidEndpoint, config: &OperatorConfig) -> ScaledObject {
    let endpoint = &valid.endpoint;
    let name = ChildNames::of(&endpoint.name).consumer;
    let scaling = &endpoint.consumer.scaling;
    let metadata_values = BTreeMap::from([
        (
            "natsServerMonitoringEndpoint".to_owned(),
            config.nats.monitoring_endpoint.clone(),
        ),
        ("account".to_owned(), config.nats.account.clone()),
        ("stream".to_owned(), endpoint.stream.name.clone()),
        (
            "consumer".to_owned(),
            endpoint.consumer.durable_name.clone(),
        ),
        ("lagThreshold".to_owned(), scaling.lag_threshold.to_string()),
        ("activationLagThreshold".to_owned(), "0".to_owned()),
        (
            "useHttps".to_owned(),
            config.nats.monitoring_https.to_string(),
        ),
    ]);
    ScaledObject {
        metadata: metadata(valid, &name, super::consumer::COMPONENT),
        spec: ScaledObjectSpec {
            scale_target_ref: ScaleTargetRef {
                api_version: Some("apps/v1".into()),
                kind: Some("Deployment".into()),
                name,
            },
            polling_interval: Some(POLLING_INTERVAL_SECONDS),
            cooldown_period: Some(COOLDOWN_SECONDS),
            min_replica_count: Some(scaling.min_replicas),
            max_replica_count: Some(scaling.max_replicas),
            triggers: vec![ScaleTrigger {
                type_: TRIGGER_TYPE.into(),
                metadata: metadata_values,
            }],
        },
        status: None,
    }
}

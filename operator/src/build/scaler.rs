//! The KEDA `ScaledObject` that scales an endpoint's consumer on its durable
//! consumer's lag, or a pool's on its members' summed lag (the type is in
//! [`crate::keda`]).

use std::collections::BTreeMap;

use hookline_api::validated::Scaling;

use super::{ChildNames, Owner};
use crate::config::OperatorConfig;
pub use crate::keda::{ScaleTargetRef, ScaleTrigger, ScaledObject, ScaledObjectSpec};
use crate::validate::ValidEndpoint;

/// KEDA's scaler for a JetStream consumer's pending messages.
const TRIGGER_TYPE: &str = "nats-jetstream";
/// Seconds between KEDA's lag checks: fast enough to follow a burst.
const POLLING_INTERVAL_SECONDS: i32 = 10;
/// Seconds without lag before KEDA scales to `minReplicas` (KEDA's default).
const COOLDOWN_SECONDS: i32 = 300;

/// Scales the consumer Deployment between `minReplicas` and `maxReplicas`,
/// adding a pod per `lagThreshold` pending events of the durable consumer.
pub fn scaled_object(valid: &ValidEndpoint, config: &OperatorConfig) -> ScaledObject {
    let endpoint = &valid.endpoint;
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
    scaled_object_of(
        &Owner::endpoint(valid),
        &ChildNames::of(&endpoint.name).consumer,
        super::consumer::COMPONENT,
        scaling,
        ScaleTrigger {
            type_: TRIGGER_TYPE.into(),
            metadata: metadata_values,
        },
    )
}

/// Scales Deployment `name` between the bounds of `scaling` on `trigger`.
pub fn scaled_object_of(
    owner: &Owner<'_>,
    name: &str,
    component: &str,
    scaling: &Scaling,
    trigger: ScaleTrigger,
) -> ScaledObject {
    ScaledObject {
        metadata: owner.metadata(name, component),
        spec: ScaledObjectSpec {
            scale_target_ref: ScaleTargetRef {
                api_version: Some("apps/v1".into()),
                kind: Some("Deployment".into()),
                name: name.to_owned(),
            },
            polling_interval: Some(POLLING_INTERVAL_SECONDS),
            cooldown_period: Some(COOLDOWN_SECONDS),
            min_replica_count: Some(scaling.min_replicas),
            max_replica_count: Some(scaling.max_replicas),
            triggers: vec![trigger],
        },
        status: None,
    }
}

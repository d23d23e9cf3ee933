//! The consumer Deployment: JetStream to Postgres, scaled by KEDA when present.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};

use super::pod::{ContainerSettings, PodParts, selector};
use super::{ChildNames, metadata};
use crate::config::OperatorConfig;
use crate::validate::ValidEndpoint;

pub const COMPONENT: &str = "consumer";
/// The consumer's health and metrics port.
pub const PORT: u16 = 8081;
/// The environment variable the consumer reads the Postgres URL from.
const DATABASE_URL_ENV: &str = "HOOKLINE_DATABASE_URL";

/// With `scaled_by_keda` the replica count is left to KEDA's HPA (setting it
/// here would fight it); without KEDA the consumer runs at `minReplicas`, at
/// least one, so events always drain.
pub fn deployment(
    valid: &ValidEndpoint,
    config: &OperatorConfig,
    config_hash: &str,
    scaled_by_keda: bool,
) -> Deployment {
    let endpoint = &valid.endpoint;
    let mut parts = PodParts::new(valid, config);
    parts.secret_env(DATABASE_URL_ENV, &valid.database.name, &valid.database.key);
    if let Some(auth) = endpoint
        .consumer
        .refetch
        .as_ref()
        .and_then(|refetch| refetch.auth_secret_ref.as_ref())
    {
        let path = parts.mount_secret_file("refetch-auth", &auth.name, &auth.key);
        parts.arg("--refetch-auth-file", &path);
    }
    let template = parts.template(
        valid,
        config,
        ContainerSettings {
            component: COMPONENT,
            command: "hookline-consumer",
            port: PORT,
            image: &config.image,
            resources: config.consumer_resources.clone(),
            config_hash,
        },
    );
    Deployment {
        metadata: metadata(valid, &ChildNames::of(&endpoint.name).consumer, COMPONENT),
        spec: Some(DeploymentSpec {
            replicas: (!scaled_by_keda).then(|| replicas_without_keda(valid)),
            selector: selector(valid, COMPONENT),
            template,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Consumer pods when KEDA is not installed: `minReplicas`, but at least one,
/// as nothing would scale the consumer up from zero.
pub fn replicas_without_keda(valid: &ValidEndpoint) -> i32 {
    valid.endpoint.consumer.scaling.min_replicas.max(1)
}

//! The consumer Deployment: JetStream to Postgres, scaled by KEDA when present.

use hookline_api::spec::SecretKeyRef;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::ResourceRequirements;

use super::pod::{ContainerSettings, PodParts, selector};
use super::{ChildNames, Owner};
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
    database: &SecretKeyRef,
    config: &OperatorConfig,
    config_hash: &str,
    scaled_by_keda: bool,
) -> Deployment {
    let endpoint = &valid.endpoint;
    let mut parts = PodParts::new(valid, config);
    if let Some(auth) = endpoint
        .consumer
        .refetch
        .as_ref()
        .and_then(|refetch| refetch.auth_secret_ref.as_ref())
    {
        let path = parts.mount_secret_file("refetch-auth", &auth.name, &auth.key);
        parts.arg("--refetch-auth-file", &path);
    }
    pods(
        &Owner::endpoint(valid),
        config,
        parts,
        Pods {
            name: &ChildNames::of(&endpoint.name).consumer,
            component: COMPONENT,
            database,
            replicas: (!scaled_by_keda).then(|| replicas_without_keda(valid)),
            image: &config.image,
            resources: config.consumer_resources.clone(),
            config_hash: Some(config_hash),
        },
    )
}

/// What differs between an endpoint's consumers and a pool's.
pub struct Pods<'a> {
    pub name: &'a str,
    pub component: &'a str,
    /// The Secret key with the Postgres URL.
    pub database: &'a SecretKeyRef,
    /// `None`: left to KEDA.
    pub replicas: Option<i32>,
    pub image: &'a str,
    pub resources: ResourceRequirements,
    pub config_hash: Option<&'a str>,
}

/// A consumer Deployment running `parts` with the Postgres URL.
pub fn pods(
    owner: &Owner<'_>,
    config: &OperatorConfig,
    mut parts: PodParts,
    pods: Pods<'_>,
) -> Deployment {
    let Pods {
        name,
        component,
        database,
        replicas,
        image,
        resources,
        config_hash,
    } = pods;
    parts.secret_env(DATABASE_URL_ENV, &database.name, &database.key);
    let template = parts.template(
        owner,
        config,
        ContainerSettings {
            component,
            command: "hookline-consumer",
            port: PORT,
            image,
            resources,
            config_hash,
        },
    );
    Deployment {
        metadata: owner.metadata(name, component),
        spec: Some(DeploymentSpec {
            replicas,
            selector: selector(owner, component),
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

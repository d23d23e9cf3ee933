//! A `WebhookPool`'s children, from the endpoint's builders: the members'
//! manifests (one ConfigMap) and signing secrets (one Secret), receiver
//! Deployment, Service and PodDisruptionBudget, consumer Deployment and
//! its ScaledObject on the operator's `/pools/<ns>/<pool>/lag`.
//!
//! The pod templates depend on the pool's spec and the operator's
//! configuration only, never on the members: the pods reload the mounted
//! directories, so adding, editing or removing a member restarts nothing.
//! With a shared stream (`spec.stream`) both Deployments take
//! `--shared-stream POOL`.

use std::collections::BTreeMap;

use hookline_api::naming;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use super::pod::PodParts;
use super::scaler::{ScaleTrigger, scaled_object_of};
use super::{Cluster, Owner, Workload, consumer, receiver};
use crate::config::OperatorConfig;
use crate::validate::ValidPool;

pub const RECEIVER_COMPONENT: &str = "pool-receiver";
pub const CONSUMER_COMPONENT: &str = "pool-consumer";
/// Where the pods find one manifest per member (`<name>.yaml`).
pub const ENDPOINT_DIR: &str = "/etc/hookline/endpoints";
/// Where the receivers find one signing-secret file per member (`<name>`).
pub const SECRET_DIR: &str = "/etc/hookline/secrets";
/// The pool binaries' flag that puts every member's events in the pool's
/// one stream (`WebhookPool` `spec.stream`): a pool setting, never a
/// member's, so a member joining or leaving rolls no pod.
pub const SHARED_STREAM_FLAG: &str = "--shared-stream";
/// What the members' manifests, and their secrets, may take of a
/// ConfigMap's or Secret's 1 MiB, leaving room for the object's metadata.
pub const MEMBER_BUDGET_BYTES: usize = 900 * 1024;

/// The names of a pool's children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolNames {
    /// Receiver Deployment, Service and PodDisruptionBudget.
    pub receiver: String,
    /// Consumer Deployment and ScaledObject.
    pub consumer: String,
    /// The members' manifests.
    pub config_map: String,
    /// The members' signing secrets.
    pub secret: String,
}

impl PoolNames {
    pub fn of(pool: &str) -> PoolNames {
        PoolNames {
            receiver: naming::child_name(pool, RECEIVER_COMPONENT),
            consumer: naming::child_name(pool, CONSUMER_COMPONENT),
            config_map: naming::child_name(pool, "pool-endpoints"),
            secret: naming::child_name(pool, "pool-secrets"),
        }
    }
}

/// One member as its pool serves it.
#[derive(Clone, PartialEq, Eq)]
pub struct Member {
    /// The endpoint's name: its ConfigMap key is `<name>.yaml`, its Secret key `<name>`.
    pub name: String,
    /// The manifest its own ConfigMap would hold (`build::manifest`).
    pub manifest: String,
    /// The value of its `spec.secretRef` key (one secret per line).
    pub signing_secret: Vec<u8>,
}

/// Never prints the signing secret.
impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("manifest_bytes", &self.manifest.len())
            .field("signing_secret", &"<redacted>")
            .finish()
    }
}

/// The ConfigMap key of a member's manifest.
pub fn manifest_key(member: &str) -> String {
    format!("{member}.yaml")
}

/// Splits `members` (oldest first, so a new member never displaces a
/// served one) into those that fit [`MEMBER_BUDGET_BYTES`] and those that
/// do not.
pub fn admit(members: Vec<Member>) -> (Vec<Member>, Vec<Member>) {
    let (mut manifests, mut secrets) = (0usize, 0usize);
    let mut full = false;
    members.into_iter().partition(|member| {
        let manifest = manifest_key(&member.name).len() + member.manifest.len();
        let secret = member.name.len() + member.signing_secret.len();
        full = full
            || manifests + manifest > MEMBER_BUDGET_BYTES
            || secrets + secret > MEMBER_BUDGET_BYTES;
        if !full {
            manifests += manifest;
            secrets += secret;
        }
        !full
    })
}

/// Every object a pool owns.
#[derive(Clone, PartialEq)]
pub struct PoolChildren {
    pub workload: Workload,
    /// The members' signing secrets, mounted as the receivers' `--secret-dir`.
    pub secret: Secret,
}

/// Never prints the members' signing secrets.
impl std::fmt::Debug for PoolChildren {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&String> = self
            .secret
            .data
            .iter()
            .flatten()
            .map(|(key, _)| key)
            .collect();
        f.debug_struct("PoolChildren")
            .field("workload", &self.workload)
            .field(
                "secret",
                &format_args!("{:?} keys {keys:?} <redacted>", self.secret.metadata.name),
            )
            .finish()
    }
}

/// Builds the pool's children serving `members` (already admitted).
pub fn build(
    valid: &ValidPool,
    members: &[Member],
    config: &OperatorConfig,
    cluster: Cluster,
) -> PoolChildren {
    let pool = &valid.pool;
    let owner = Owner::pool(&pool.name, &pool.namespace, valid.owner.as_ref());
    let names = PoolNames::of(&pool.name);
    let config_map = ConfigMap {
        metadata: owner.metadata(&names.config_map, "pool-config"),
        data: Some(
            members
                .iter()
                .map(|member| (manifest_key(&member.name), member.manifest.clone()))
                .collect(),
        ),
        ..Default::default()
    };
    let secret = Secret {
        metadata: owner.metadata(&names.secret, "pool-secrets"),
        type_: Some("Opaque".into()),
        data: Some(
            members
                .iter()
                .map(|member| {
                    (
                        member.name.clone(),
                        ByteString(member.signing_secret.clone()),
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    };
    let mut receiver_parts = PodParts::default();
    let dir = receiver_parts.mount_config_map("endpoints", &names.config_map);
    receiver_parts.env_value("HOOKLINE_ENDPOINT_DIR", &dir);
    receiver_parts.arg("--endpoint-dir", &dir);
    let secret_dir = receiver_parts.mount_secret_dir("secrets", &names.secret);
    receiver_parts.env_value("HOOKLINE_SECRET_DIR", &secret_dir);
    receiver_parts.arg("--secret-dir", &secret_dir);
    // Each receiver enforces its share of every member's rate limit.
    receiver_parts.arg("--replicas", &pool.receiver.replicas.max(1).to_string());
    if pool.stream.is_some() {
        receiver_parts.arg(SHARED_STREAM_FLAG, &pool.name);
    }
    receiver_parts.add_nats(config);
    let receiver = receiver::pods(
        &owner,
        config,
        receiver_parts,
        receiver::Pods {
            name: &names.receiver,
            component: RECEIVER_COMPONENT,
            replicas: pool.receiver.replicas,
            image: pool.receiver.image.as_deref().unwrap_or(&config.image),
            resources: pool
                .receiver
                .resources
                .clone()
                .unwrap_or_else(|| config.receiver_resources.clone()),
            config_hash: None,
        },
    );
    let lag_url = lag_url(valid, config).filter(|_| cluster.keda);
    let mut consumer_parts = PodParts::default();
    let dir = consumer_parts.mount_config_map("endpoints", &names.config_map);
    consumer_parts.env_value("HOOKLINE_ENDPOINT_DIR", &dir);
    if let Some(concurrency) = pool.consumer.concurrency {
        consumer_parts.arg("--concurrency", &concurrency.to_string());
    }
    if pool.stream.is_some() {
        consumer_parts.arg(SHARED_STREAM_FLAG, &pool.name);
    }
    consumer_parts.add_nats(config);
    let scaling = &pool.consumer.scaling;
    let consumer = consumer::pods(
        &owner,
        config,
        consumer_parts,
        consumer::Pods {
            name: &names.consumer,
            component: CONSUMER_COMPONENT,
            database: &pool.consumer.database_secret_ref,
            replicas: lag_url.is_none().then_some(scaling.min_replicas.max(1)),
            image: pool.consumer.image.as_deref().unwrap_or(&config.image),
            resources: pool
                .consumer
                .resources
                .clone()
                .unwrap_or_else(|| config.consumer_resources.clone()),
            config_hash: None,
        },
    );
    let scaler = lag_url.map(|url| {
        scaled_object_of(
            &owner,
            &names.consumer,
            CONSUMER_COMPONENT,
            scaling,
            ScaleTrigger {
                type_: "metrics-api".into(),
                metadata: BTreeMap::from([
                    ("url".to_owned(), url),
                    ("format".to_owned(), "json".to_owned()),
                    ("valueLocation".to_owned(), "lag".to_owned()),
                    ("targetValue".to_owned(), scaling.lag_threshold.to_string()),
                ]),
            },
        )
    });
    PoolChildren {
        workload: Workload {
            config_map,
            service: receiver::service_of(&owner, &names.receiver, RECEIVER_COMPONENT),
            disruption_budget: receiver::disruption_budget_of(
                &owner,
                &names.receiver,
                RECEIVER_COMPONENT,
            ),
            receiver,
            consumer,
            scaler,
        },
        secret,
    }
}

/// Where KEDA reads the pool's lag: the operator's own Service
/// (`--service-url`); `None` when the operator was not told its URL.
pub fn lag_url(valid: &ValidPool, config: &OperatorConfig) -> Option<String> {
    let base = config.service_url.as_deref()?;
    Some(format!(
        "{}/pools/{}/{}/lag",
        base.trim_end_matches('/'),
        valid.pool.namespace,
        valid.pool.name
    ))
}

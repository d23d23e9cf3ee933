//! The `WebhookPool` custom resource: receiver and consumer pods shared by
//! the endpoints of one namespace that name it in `spec.pool`, and its
//! validated form (defaults applied by [`crate::resolve::resolve_pool`]).

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::defaults;
use crate::spec::{ReceiverSpec, ScalingSpec, SecretKeyRef};
use crate::validated::{ReceiverSettings, Scaling, StreamLimits};

/// Receiver and consumer pods shared by the endpoints of its namespace that
/// set `spec.pool` to its name; each keeps its own stream and Ingress.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hookline.io",
    version = "v1alpha1",
    kind = "WebhookPool",
    namespaced,
    shortname = "whpool",
    doc = "Receiver and consumer pods shared by the WebhookEndpoints of its namespace that set spec.pool to its name.",
    status = "WebhookPoolStatus",
    printcolumn = r#"{"name":"Members","type":"integer","jsonPath":".status.members"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(oldSelf.stream) || has(self.stream)").message(
    "a pool's shared stream cannot be turned off: move the members to another pool"
))]
pub struct WebhookPoolSpec {
    /// The pool's receiver Deployment (replicas default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver: Option<ReceiverSpec>,
    /// The pool's consumer Deployment.
    pub consumer: PoolConsumerSpec,
    /// One JetStream stream for every member (a subject each) instead of a
    /// stream per member: one stream for NATS to write to, whatever the
    /// pool's size. Members must then be `Buffer`s that set no stream limits
    /// of their own; a member's `maxBytes` stays its own cap. Unset: a stream
    /// per member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<PoolStreamSpec>,
}

/// The limits of a pool's shared stream; each field as in an endpoint's `spec.stream`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStreamSpec {
    /// An event is dropped after this long even if never written. Default: `720h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::spec::DURATION_PATTERN))]
    pub max_age: Option<String>,
    /// Stream replicas in the NATS cluster. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = defaults::STREAM_REPLICAS_MIN, max = defaults::STREAM_REPLICAS_MAX))]
    pub replicas: Option<u8>,
    /// Window in which a repeated event id of one member is dropped by JetStream. Default: `2m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::spec::DURATION_PATTERN))]
    pub duplicate_window: Option<String>,
}

/// The consumer every member's events go through.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolConsumerSpec {
    /// Secret key holding the Postgres URL of every member (a member may
    /// repeat it in its own `consumer.databaseSecretRef`, never name another).
    pub database_secret_ref: SecretKeyRef,
    /// KEDA scaling on the sum of the members' pending events. `minReplicas`
    /// is at least 1: the lag KEDA reads comes from the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingSpec>,
    /// CPU and memory of each consumer container; default: the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Consumer image; default: the operator's configured image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Batches in flight per member endpoint (`--concurrency`); default: the consumer's (4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub concurrency: Option<u32>,
}

/// What the operator observed of the pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPoolStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Valid endpoints of the namespace that name this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<i32>,
    /// Members whose manifest and signing key the pool holds (the others
    /// are named, with why, on their own `Served` condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<i32>,
    /// Sum of the members' pending events: what KEDA scales the consumer on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<i64>,
    /// `Ready`: children applied, receivers and consumers rolled out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A pool with every default applied; builders take this and never re-check.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedPool {
    pub namespace: String,
    pub name: String,
    pub receiver: ReceiverSettings,
    pub consumer: PoolConsumer,
    /// `Some`: one stream for every member, with these limits.
    pub stream: Option<StreamLimits>,
}

/// The pool's consumer, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConsumer {
    pub database_secret_ref: SecretKeyRef,
    pub scaling: Scaling,
    pub resources: Option<ResourceRequirements>,
    pub image: Option<String>,
    pub concurrency: Option<u32>,
}

/// Fewest pool consumers: KEDA's `metrics-api` trigger polls the operator,
/// which cannot wake a consumer from zero as `nats-jetstream` can.
pub const POOL_MIN_CONSUMERS: i32 = 1;

/// The receiver replicas a pool gets when `spec.receiver.replicas` is not set.
pub const POOL_RECEIVER_REPLICAS: i32 = defaults::RECEIVER_REPLICAS;

//! KEDA: its `ScaledObject` (the fields Hookline sets and reads) and whether
//! the cluster serves it, asked by discovery.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::{Client, CustomResource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How long KEDA's presence (or absence) is trusted before discovery asks again.
const DISCOVERY_TTL: Duration = Duration::from_secs(30);

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

/// Whether `keda.sh/v1alpha1` serves `scaledobjects`, cached for 30 s.
#[derive(Default)]
pub struct Discovery {
    cached: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl Discovery {
    /// KEDA's presence, asked at most once per 30 s.
    pub async fn installed(&self, client: &Client) -> Result<bool, kube::Error> {
        let mut cached = self.cached.lock().await;
        if let Some((asked, installed)) = *cached
            && asked.elapsed() < DISCOVERY_TTL
        {
            return Ok(installed);
        }
        let installed = served(client).await?;
        *cached = Some((Instant::now(), installed));
        Ok(installed)
    }
}

/// Asks discovery whether `keda.sh/v1alpha1` serves `scaledobjects`.
pub async fn served(client: &Client) -> Result<bool, kube::Error> {
    match client.list_api_group_resources("keda.sh/v1alpha1").await {
        Ok(list) => Ok(list
            .resources
            .iter()
            .any(|resource| resource.name == "scaledobjects")),
        Err(kube::Error::Api(response)) if response.code == 404 => Ok(false),
        Err(err) => Err(err),
    }
}

/// Waits until KEDA is installed (asking every 30 s), so
/// ScaledObjects are watched from then on.
pub async fn wait_until_installed(client: &Client) {
    loop {
        if let Ok(true) = served(client).await {
            return;
        }
        tokio::time::sleep(DISCOVERY_TTL).await;
    }
}

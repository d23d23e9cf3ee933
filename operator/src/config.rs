//! The operator's settings that shape what it builds: the data-plane image,
//! how pods reach NATS, and the default resources. Plain data, checked once.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Everything the builders need besides the endpoint itself.
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorConfig {
    /// The image of the receiver and consumer pods (one image, two commands).
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`; `None` leaves Kubernetes' default.
    pub image_pull_policy: Option<String>,
    /// Secrets (in each endpoint's namespace) to pull the image with.
    pub image_pull_secrets: Vec<String>,
    pub nats: NatsSettings,
    /// `RUST_LOG` of the pods.
    pub log_level: String,
    /// Receiver resources when `spec.receiver.resources` is not given.
    pub receiver_resources: ResourceRequirements,
    /// Consumer resources.
    pub consumer_resources: ResourceRequirements,
    /// The operator's own Service as pods reach it (`http://NAME.NS.svc:8080`):
    /// KEDA reads a pool's lag there. `None`: pools' consumers run at a fixed size.
    pub service_url: Option<String>,
}

/// How every pod an endpoint gets reaches NATS, and where KEDA reads the lag.
///
/// The Secrets are looked up by name in the endpoint's own namespace (a pod
/// can only mount Secrets of its namespace); a missing one is reported on the
/// endpoint's `SecretResolved` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsSettings {
    pub url: String,
    /// Secret with a `.creds` file under [`NATS_CREDS_KEY`].
    pub credentials_secret: Option<String>,
    /// Secret with [`NATS_USER_KEY`] and [`NATS_PASSWORD_KEY`].
    pub user_password_secret: Option<String>,
    /// Secret with the CA certificate under [`NATS_TLS_CA_KEY`].
    pub tls_ca_secret: Option<String>,
    /// `host:port` of the NATS monitoring endpoint KEDA's `nats-jetstream` scaler polls.
    pub monitoring_endpoint: String,
    /// Whether that endpoint speaks HTTPS.
    pub monitoring_https: bool,
    /// The NATS account of the streams (`$G` without accounts).
    pub account: String,
    /// This cluster's name on a NATS shared with other clusters
    /// (`--cluster-name`): its streams and subjects carry it.
    pub cluster_name: Option<String>,
}

pub const NATS_CREDS_KEY: &str = "nats.creds";
pub const NATS_USER_KEY: &str = "user";
pub const NATS_PASSWORD_KEY: &str = "password";
pub const NATS_TLS_CA_KEY: &str = "ca.crt";

/// Defaults that work with the official NATS chart installed as release `nats`
/// in namespace `nats`: clients on the `nats` Service, monitoring on the
/// headless Service, whose per-pod names KEDA uses for a clustered server.
pub const DEFAULT_NATS_URL: &str = "nats://nats.nats.svc:4222";
pub const DEFAULT_NATS_MONITORING_ENDPOINT: &str = "nats-headless.nats.svc:8222";
pub const DEFAULT_NATS_ACCOUNT: &str = "$G";
/// The image this build of the operator ships with.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/hookline/hookline:", env!("CARGO_PKG_VERSION"));

/// Resources of one container: requests and a memory limit. CPU is not
/// limited, so a burst is never throttled into 503s. The defaults come from
/// `latency_bench` at the seed's peak (58 req/s of 5 KB): a receiver used
/// 9 millicores and 18 MiB, a consumer 23 millicores and 11 MiB
/// (docs/operations.md, "Resources").
pub fn resources(
    cpu_request: &str,
    memory_request: &str,
    memory_limit: &str,
) -> ResourceRequirements {
    let quantities = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), Quantity((*value).to_owned())))
            .collect::<BTreeMap<_, _>>()
    };
    ResourceRequirements {
        requests: Some(quantities(&[
            ("cpu", cpu_request),
            ("memory", memory_request),
        ])),
        limits: Some(quantities(&[("memory", memory_limit)])),
        ..Default::default()
    }
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            image: DEFAULT_IMAGE.to_owned(),
            image_pull_policy: None,
            image_pull_secrets: Vec::new(),
            nats: NatsSettings::default(),
            log_level: "info".to_owned(),
            receiver_resources: resources("25m", "32Mi", "256Mi"),
            consumer_resources: resources("50m", "32Mi", "256Mi"),
            service_url: None,
        }
    }
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            url: DEFAULT_NATS_URL.to_owned(),
            credentials_secret: None,
            user_password_secret: None,
            tls_ca_secret: None,
            monitoring_endpoint: DEFAULT_NATS_MONITORING_ENDPOINT.to_owned(),
            monitoring_https: false,
            account: DEFAULT_NATS_ACCOUNT.to_owned(),
            cluster_name: None,
        }
    }
}

//! The command line: `run` (the default), `render` and `crd`. Every flag also
//! reads a `HOOKLINE_*` environment variable (the Helm chart sets those).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use hookline_api::runtime::NatsArgs;
use k8s_openapi::api::core::v1::ResourceRequirements;

use crate::config::{
    DEFAULT_IMAGE, DEFAULT_NATS_ACCOUNT, DEFAULT_NATS_MONITORING_ENDPOINT, DEFAULT_NATS_URL,
    NatsSettings, OperatorConfig,
};

/// Reconciles WebhookEndpoint resources into receiver, stream and consumer.
#[derive(Debug, Parser)]
#[command(name = "hookline-operator", version, about)]
pub struct Args {
    #[command(flatten)]
    pub settings: Settings,

    #[command(flatten)]
    pub run: RunArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do; without a subcommand the operator runs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller against the cluster of the kubeconfig or the
    /// in-cluster service account (the default).
    Run,
    /// Print the children reconcile would apply for a manifest, as YAML: a
    /// WebhookEndpoint's, or a WebhookPool's with the members in its file.
    Render {
        /// A WebhookEndpoint manifest, or a WebhookPool followed by its members.
        ///
        /// A file with a WebhookPool may hold, as further YAML documents, the
        /// WebhookEndpoints whose `spec.pool` names it (its members; no other
        /// endpoint): it prints the pool's children serving them, then each
        /// member's Ingress. The pool's Secret is printed without values (the
        /// operator copies each member's signing secret in the cluster), and
        /// its ScaledObject only with `--service-url`, as in the cluster.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: PathBuf,
        /// The namespace, when the manifest names none (default: `default`).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Render for a cluster without KEDA (no ScaledObject, fixed consumers).
        #[arg(long)]
        no_keda: bool,
    },
    /// Print the WebhookEndpoint CRD, as YAML (or its field reference as Markdown).
    Crd {
        /// The field reference, as a Markdown table, instead of the YAML.
        #[arg(long)]
        markdown: bool,
    },
}

/// Flags of `run`, accepted before or after the subcommand.
#[derive(Debug, Clone, ClapArgs)]
pub struct RunArgs {
    /// Watch only this namespace (a Role is then enough); default: all.
    #[arg(
        long,
        env = "HOOKLINE_WATCH_NAMESPACE",
        value_name = "NS",
        global = true
    )]
    pub watch_namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "HOOKLINE_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:8080",
        global = true
    )]
    pub listen: SocketAddr,
    /// Elect one active replica on a Lease; the others wait.
    #[arg(long, env = "HOOKLINE_LEADER_ELECTION", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(
        long,
        env = "HOOKLINE_LEASE_NAME",
        value_name = "NAME",
        default_value = "hookline-operator",
        global = true
    )]
    pub lease_name: String,
    /// Namespace of the Lease; default: the pod's namespace (`POD_NAMESPACE`),
    /// else the kubeconfig's.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NS", global = true)]
    pub lease_namespace: Option<String>,
    /// This replica's identity on the Lease; default: `POD_NAME`, else the host name.
    #[arg(long, env = "POD_NAME", value_name = "ID", global = true)]
    pub identity: Option<String>,
    /// How often a Ready endpoint's live figures (stream messages, pending) are refreshed.
    #[arg(long, env = "HOOKLINE_RESYNC_INTERVAL", value_name = "DURATION", default_value = "60s", value_parser = parse_duration, global = true)]
    pub resync_interval: Duration,
    /// Endpoints reconciled at once: bounds the API and NATS calls after a
    /// restart, when every endpoint is due together.
    #[arg(long, env = "HOOKLINE_MAX_CONCURRENT_RECONCILES", value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..), global = true)]
    pub max_concurrent_reconciles: u16,
}

/// Settings shared by `run` and `render`: what the builders need.
#[derive(Debug, Clone, ClapArgs)]
pub struct Settings {
    /// NATS server the operator provisions streams on and passes to every pod.
    #[arg(long, env = "HOOKLINE_NATS_URL", value_name = "URL", default_value = DEFAULT_NATS_URL, global = true)]
    pub nats_url: String,
    /// The operator's own NATS credentials and TLS files.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Secret (in each endpoint's namespace) with `nats.creds`, mounted into every pod.
    #[arg(
        long,
        env = "HOOKLINE_NATS_CREDENTIALS_SECRET",
        value_name = "NAME",
        global = true
    )]
    pub nats_credentials_secret: Option<String>,
    /// Secret (in each endpoint's namespace) with `user` and `password` for every pod.
    #[arg(
        long,
        env = "HOOKLINE_NATS_USER_PASSWORD_SECRET",
        value_name = "NAME",
        global = true
    )]
    pub nats_user_password_secret: Option<String>,
    /// Secret (in each endpoint's namespace) with the NATS CA as `ca.crt`.
    #[arg(
        long,
        env = "HOOKLINE_NATS_TLS_CA_SECRET",
        value_name = "NAME",
        global = true
    )]
    pub nats_tls_ca_secret: Option<String>,
    /// `host:port` of the NATS monitoring endpoint KEDA polls for consumer lag.
    #[arg(long, env = "HOOKLINE_NATS_MONITORING_ENDPOINT", value_name = "HOST:PORT", default_value = DEFAULT_NATS_MONITORING_ENDPOINT, global = true)]
    pub nats_monitoring_endpoint: String,
    /// The monitoring endpoint speaks HTTPS.
    #[arg(long, env = "HOOKLINE_NATS_MONITORING_HTTPS", global = true)]
    pub nats_monitoring_https: bool,
    /// NATS account of the streams, for KEDA (`$G` without accounts).
    #[arg(long, env = "HOOKLINE_NATS_ACCOUNT", value_name = "ACCOUNT", default_value = DEFAULT_NATS_ACCOUNT, global = true)]
    pub nats_account: String,
    /// Image of the receiver and consumer pods.
    #[arg(long, env = "HOOKLINE_DATA_PLANE_IMAGE", value_name = "IMAGE", default_value = DEFAULT_IMAGE, global = true)]
    pub data_plane_image: String,
    /// Pull policy of the data-plane image.
    #[arg(long, env = "HOOKLINE_IMAGE_PULL_POLICY", value_name = "POLICY", value_parser = ["Always", "IfNotPresent", "Never"], global = true)]
    pub image_pull_policy: Option<String>,
    /// Secret to pull the data-plane image with; must exist in each endpoint's
    /// namespace. Repeat, or separate with commas.
    #[arg(
        long = "image-pull-secret",
        env = "HOOKLINE_IMAGE_PULL_SECRETS",
        value_name = "NAME",
        value_delimiter = ',',
        global = true
    )]
    pub image_pull_secrets: Vec<String>,
    /// `RUST_LOG` of the receiver and consumer pods.
    #[arg(
        long,
        env = "HOOKLINE_DATA_PLANE_LOG_LEVEL",
        value_name = "FILTER",
        default_value = "info",
        global = true
    )]
    pub data_plane_log_level: String,
    /// Resources of each receiver container, as JSON (`{"requests": {"cpu": "100m"}}`),
    /// unless the endpoint sets `spec.receiver.resources`.
    #[arg(long, env = "HOOKLINE_RECEIVER_RESOURCES", value_name = "JSON", value_parser = parse_resources, global = true)]
    pub receiver_resources: Option<ResourceRequirements>,
    /// Resources of each consumer container, as JSON.
    #[arg(long, env = "HOOKLINE_CONSUMER_RESOURCES", value_name = "JSON", value_parser = parse_resources, global = true)]
    pub consumer_resources: Option<ResourceRequirements>,
    /// This operator's Service URL as pods reach it (`http://NAME.NS.svc:8080`):
    /// KEDA polls a WebhookPool's lag at `<URL>/pools/<ns>/<pool>/lag`.
    /// Without it pool consumers run at `minReplicas`.
    #[arg(long, env = "HOOKLINE_SERVICE_URL", value_name = "URL", value_parser = parse_service_url, global = true)]
    pub service_url: Option<String>,
}

fn parse_service_url(text: &str) -> Result<String, String> {
    if text.starts_with("http://") || text.starts_with("https://") {
        Ok(text.trim_end_matches('/').to_owned())
    } else {
        Err(format!(
            "{text:?} is not an http(s) URL, e.g. http://hookline-operator.hookline.svc:8080"
        ))
    }
}

fn parse_resources(text: &str) -> Result<ResourceRequirements, String> {
    serde_json::from_str(text).map_err(|err| {
        format!("not a resources object ({err}); e.g. {{\"requests\": {{\"cpu\": \"100m\", \"memory\": \"64Mi\"}}}}")
    })
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    hookline_api::resolve::parse_duration(text)
}

impl Settings {
    /// What the builders need.
    pub fn operator_config(&self) -> OperatorConfig {
        let defaults = OperatorConfig::default();
        OperatorConfig {
            image: self.data_plane_image.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            image_pull_secrets: self.image_pull_secrets.clone(),
            nats: NatsSettings {
                url: self.nats_url.clone(),
                credentials_secret: self.nats_credentials_secret.clone(),
                user_password_secret: self.nats_user_password_secret.clone(),
                tls_ca_secret: self.nats_tls_ca_secret.clone(),
                monitoring_endpoint: self.nats_monitoring_endpoint.clone(),
                monitoring_https: self.nats_monitoring_https,
                account: self.nats_account.clone(),
                cluster_name: self.nats.cluster_name.clone(),
            },
            log_level: self.data_plane_log_level.clone(),
            receiver_resources: self
                .receiver_resources
                .clone()
                .unwrap_or(defaults.receiver_resources),
            consumer_resources: self
                .consumer_resources
                .clone()
                .unwrap_or(defaults.consumer_resources),
            service_url: self.service_url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn settings_before_or_after_the_subcommand_reach_the_config() {
        let args = Args::try_parse_from([
            "hookline-operator",
            "render",
            "-f",
            "x.yaml",
            "--nats-url",
            "nats://elsewhere:4222",
            "--data-plane-image",
            "registry.example/hookline:1",
        ])
        .expect("parses");
        let config = args.settings.operator_config();
        assert_eq!(config.nats.url, "nats://elsewhere:4222");
        assert_eq!(
            config.receiver_resources,
            OperatorConfig::default().receiver_resources
        );
        assert_eq!(config.image, "registry.example/hookline:1");
    }
}

#[cfg(test)]
mod resource_tests {
    use super::*;

    #[test]
    fn data_plane_resources_come_as_json_and_bad_json_is_refused() {
        let args = Args::try_parse_from([
            "hookline-operator",
            "--receiver-resources",
            r#"{"requests": {"cpu": "250m"}, "limits": {"memory": "1Gi"}}"#,
        ])
        .expect("parses");
        let resources = args.settings.operator_config().receiver_resources;
        assert_eq!(
            resources.requests.expect("requests")["cpu"],
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("250m".into())
        );
        let err = Args::try_parse_from(["hookline-operator", "--consumer-resources", "lots"])
            .expect_err("not JSON");
        assert!(err.to_string().contains("not a resources object"), "{err}");
    }
}

//! Command-line flags (each also an environment variable) and the validated
//! configuration the server runs with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use hookline_api::ValidatedEndpoint;
use hookline_api::nats::NatsAuth;
use hookline_api::runtime::NatsArgs;

use crate::{Error, Result};

/// Receives one WebhookEndpoint's webhooks (or those of a directory of them)
/// and stores them durably in JetStream.
#[derive(Debug, Clone, Parser)]
#[command(name = "hookline-receiver", version, about)]
#[command(group(ArgGroup::new("endpoints").required(true).args(["endpoint", "endpoint_dir"])))]
pub struct Args {
    /// The WebhookEndpoint manifest (the YAML `kubectl apply` takes).
    #[arg(
        long,
        env = "HOOKLINE_ENDPOINT",
        value_name = "FILE",
        requires = "secret_file"
    )]
    pub endpoint: Option<PathBuf>,

    /// The signing secret(s), one per line; re-read when it changes.
    #[arg(
        long,
        env = "HOOKLINE_SECRET_FILE",
        value_name = "FILE",
        conflicts_with = "endpoint_dir"
    )]
    pub secret_file: Option<PathBuf>,

    /// A pool: every `*.yaml` WebhookEndpoint manifest in DIR (one
    /// namespace), re-read every `--secret-poll-interval`.
    #[arg(
        long,
        env = "HOOKLINE_ENDPOINT_DIR",
        value_name = "DIR",
        requires = "secret_dir"
    )]
    pub endpoint_dir: Option<PathBuf>,

    /// A pool's secrets: the file DIR/NAME holds those of the endpoint named
    /// NAME, as `--secret-file` would.
    #[arg(
        long,
        env = "HOOKLINE_SECRET_DIR",
        value_name = "DIR",
        conflicts_with = "endpoint"
    )]
    pub secret_dir: Option<PathBuf>,

    /// A pool whose `WebhookPool` has `spec.stream`: every endpoint of
    /// `--endpoint-dir` publishes to the pool's one stream
    /// (`HOOKLINE_<ns>_POOL_<POOL>`, subjects `hookline.<ns>.POOL_<POOL>.<name>.<type>`).
    #[arg(
        long,
        env = "HOOKLINE_SHARED_STREAM",
        value_name = "POOL",
        conflicts_with = "endpoint"
    )]
    pub shared_stream: Option<String>,

    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "HOOKLINE_NATS_URL", value_name = "URL")]
    pub nats_url: String,

    /// Address to serve HTTP on.
    #[arg(
        long,
        env = "HOOKLINE_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub listen: SocketAddr,

    /// Create or update the endpoint's stream and durable consumer (outside a cluster).
    #[arg(long, env = "HOOKLINE_PROVISION")]
    pub provision: bool,

    #[command(flatten)]
    pub nats: NatsArgs,

    /// Longest wait for JetStream's acknowledgement before answering 503.
    #[arg(long, env = "HOOKLINE_PUBLISH_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub publish_timeout: Duration,

    /// Longest time one request may take, body upload included.
    #[arg(long, env = "HOOKLINE_REQUEST_TIMEOUT", value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Longest time a connection may take to send a request's line and headers
    /// (and to stay idle between requests); then it is closed.
    #[arg(long, env = "HOOKLINE_HEADER_READ_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Connections served at once; more wait in the listen backlog until one closes.
    #[arg(long, env = "HOOKLINE_MAX_CONNECTIONS", value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Longest wait for in-flight requests after SIGTERM.
    #[arg(long, env = "HOOKLINE_SHUTDOWN_TIMEOUT", value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// How often the secret file is checked for changes.
    #[arg(long, env = "HOOKLINE_SECRET_POLL", value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub secret_poll_interval: Duration,

    /// Receivers that share the endpoint's `spec.request.rateLimit`; each
    /// enforces 1/N of it. The operator passes `spec.receiver.replicas`.
    #[arg(long, env = "HOOKLINE_REPLICAS", value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub replicas: u32,
}

/// The default of `--max-connections`: below the common soft limit of 1,024
/// open files (a container's default since containerd 2), so a flood meets
/// this cap, not a failing `accept`; and far above what providers open
/// (the seed's peak is 58 requests a second of a few milliseconds each).
const DEFAULT_MAX_CONNECTIONS: u32 = 1000;

/// The default of `--header-read-timeout`.
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn parse_duration(text: &str) -> Result<Duration, String> {
    hookline_api::resolve::parse_duration(text)
}

/// What is served: one endpoint, or a pool's directories.
#[derive(Debug, Clone)]
pub enum Endpoints {
    /// `--endpoint` and `--secret-file`.
    One {
        endpoint: Box<ValidatedEndpoint>,
        secret_file: PathBuf,
    },
    /// `--endpoint-dir` and `--secret-dir`; the manifests are read by `run`.
    Pool {
        endpoint_dir: PathBuf,
        secret_dir: PathBuf,
        /// `--cluster-name`, applied to each manifest as it is read.
        cluster_name: Option<String>,
        /// `--shared-stream`: the pool whose one stream every endpoint uses.
        shared_stream: Option<String>,
    },
}

/// Everything the server needs, checked once at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub endpoints: Endpoints,
    pub nats_url: String,
    /// Credentials and TLS of the NATS connection.
    pub nats_auth: NatsAuth,
    pub provision: bool,
    pub publish_timeout: Duration,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
    pub secret_poll_interval: Duration,
    /// Receivers sharing the endpoint's rate limit.
    pub replicas: u32,
}

impl Config {
    /// Reads and validates the manifest named by `args`.
    pub fn from_args(args: &Args) -> Result<Config> {
        // Clap has checked that exactly one of the pairs is given, and
        // `--shared-stream` only with the directories.
        if args.shared_stream.as_deref().is_some_and(str::is_empty) {
            return Err(Error::Flags(
                "--shared-stream: give the WebhookPool's name".into(),
            ));
        }
        let endpoints = match (
            &args.endpoint,
            &args.secret_file,
            &args.endpoint_dir,
            &args.secret_dir,
        ) {
            (Some(endpoint), Some(secret_file), None, None) => Endpoints::One {
                endpoint: Box::new(
                    hookline_api::load_manifest(endpoint)?
                        .in_cluster(args.nats.cluster_name.as_deref()),
                ),
                secret_file: secret_file.clone(),
            },
            (None, None, Some(endpoint_dir), Some(secret_dir)) => Endpoints::Pool {
                endpoint_dir: endpoint_dir.clone(),
                secret_dir: secret_dir.clone(),
                cluster_name: args.nats.cluster_name.clone(),
                shared_stream: args.shared_stream.clone(),
            },
            _ => {
                return Err(Error::Flags(
                    "give --endpoint and --secret-file, or --endpoint-dir and --secret-dir".into(),
                ));
            }
        };
        Ok(Config {
            endpoints,
            nats_url: args.nats_url.clone(),
            nats_auth: args.nats.auth(),
            provision: args.provision,
            publish_timeout: args.publish_timeout,
            request_timeout: args.request_timeout,
            header_read_timeout: args.header_read_timeout,
            max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
            shutdown_timeout: args.shutdown_timeout,
            secret_poll_interval: args.secret_poll_interval,
            replicas: args.replicas,
        })
    }

    /// A configuration with the defaults of the flags, for tests and embedding.
    pub fn new(endpoint: ValidatedEndpoint, secret_file: PathBuf, nats_url: String) -> Config {
        Config::serving(
            Endpoints::One {
                endpoint: Box::new(endpoint),
                secret_file,
            },
            nats_url,
        )
    }

    /// A pool's configuration with the defaults of the flags.
    pub fn pool(endpoint_dir: PathBuf, secret_dir: PathBuf, nats_url: String) -> Config {
        Config::serving(
            Endpoints::Pool {
                endpoint_dir,
                secret_dir,
                cluster_name: None,
                shared_stream: None,
            },
            nats_url,
        )
    }

    fn serving(endpoints: Endpoints, nats_url: String) -> Config {
        Config {
            endpoints,
            nats_url,
            nats_auth: NatsAuth::default(),
            provision: false,
            publish_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS as usize,
            shutdown_timeout: Duration::from_secs(20),
            secret_poll_interval: Duration::from_secs(1),
            replicas: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_of_new_are_the_flag_defaults() {
        let args = Args::try_parse_from([
            "hookline-receiver",
            "--endpoint",
            "e.yaml",
            "--secret-file",
            "s",
            "--nats-url",
            "nats://x",
        ])
        .expect("parses");
        let endpoint = hookline_api::resolve(
            "default",
            "test",
            &hookline_api::WebhookEndpointSpec::new(hookline_api::spec::Provider::Github, "s"),
        )
        .expect("valid");
        let config = Config::new(endpoint, PathBuf::from("s"), "nats://x".into());
        assert_eq!(config.publish_timeout, args.publish_timeout);
        assert_eq!(config.request_timeout, args.request_timeout);
        assert_eq!(config.header_read_timeout, args.header_read_timeout);
        assert_eq!(config.max_connections, args.max_connections as usize);
        assert_eq!(config.shutdown_timeout, args.shutdown_timeout);
        assert_eq!(config.secret_poll_interval, args.secret_poll_interval);
        assert_eq!(config.provision, args.provision);
        assert_eq!(config.replicas, args.replicas);
    }

    #[test]
    fn a_cluster_name_moves_the_stream_and_subjects() {
        let dir = tempfile::tempdir().expect("dir");
        let manifest = dir.path().join("endpoint.yaml");
        std::fs::write(
            &manifest,
            "apiVersion: hookline.io/v1alpha1\nkind: WebhookEndpoint\nmetadata: {name: stripe, namespace: payments}\nspec: {provider: stripe, secretRef: {name: s}}\n",
        )
        .expect("write");
        let args = Args::try_parse_from([
            "hookline-receiver",
            "--endpoint",
            manifest.to_str().expect("path"),
            "--secret-file",
            "s",
            "--nats-url",
            "nats://x",
            "--cluster-name",
            "eu1",
        ])
        .expect("parses");
        let config = Config::from_args(&args).expect("config");
        let Endpoints::One { endpoint, .. } = &config.endpoints else {
            panic!("one endpoint");
        };
        assert_eq!(endpoint.stream.name, "HOOKLINE-eu1_payments_stripe");
        assert_eq!(
            endpoint.stream.subject_prefix,
            "hookline-eu1.payments.stripe"
        );
        assert!(
            Args::try_parse_from(["hookline-receiver", "--cluster-name", "EU_1"]).is_err(),
            "not a DNS label"
        );
    }
}

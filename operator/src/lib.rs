//! `hookline-operator`: reconciles `WebhookEndpoint` resources into their
//! pipeline. Each reconcile is a fixed sequence of steps, one module each:
//!
//! 1. [`validate`]: `hookline_api::resolve` plus what a cluster needs (no client).
//! 2. [`secrets`]: read the referenced Secrets' keys (never values); generate
//!    a signing secret when asked.
//! 3. [`stream`]: provision the JetStream stream and durable consumer; read its figures.
//! 4. [`build`]: every child object, as pure functions.
//! 5. [`apply`]: server-side apply of what changed, one field manager, each
//!    child on its own; never over another owner's object; prune.
//! 6. [`status`]: conditions from what was applied and observed; events on change.
//!
//! [`reconcile`] runs them (with the finalizer that removes the stream);
//! [`pool`] reconciles `WebhookPool`s (shared pods) the same way, and
//! [`shared`] holds what a pool's shared stream needs between reconciles;
//! [`controller`] wires watches, [`leader`] elects one active replica, [`http`]
//! serves health and [`metrics`], [`keda`] has the ScaledObject type and
//! KEDA discovery, [`cli`] parses flags, [`render`] prints the
//! children of a manifest file (an endpoint, or a pool with its members). `main.rs` only parses flags and sets up logging.

pub mod apply;
pub mod build;
pub mod cli;
pub mod config;
pub mod controller;
pub mod http;
pub mod keda;
pub mod leader;
pub mod metrics;
pub mod pool;
pub mod probe;
pub mod reconcile;
pub mod render;
pub mod secrets;
pub mod shared;
pub mod status;
pub mod stream;
pub mod validate;

use std::net::SocketAddr;

pub use cli::{Args, Command};
pub use config::OperatorConfig;

/// Everything that can go wrong, in a reconcile or around it: each step
/// that can fail has its own variant, so a log line and the error metric
/// say which step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Manifest(#[from] hookline_api::Error),
    #[error(transparent)]
    InvalidSpec(#[from] hookline_api::InvalidSpec),
    #[error("cannot read the endpoint's (or pool's) Secrets: {0}")]
    ReadSecrets(#[source] kube::Error),
    #[error("cannot ask the API server whether KEDA is installed: {0}")]
    DiscoverKeda(#[source] kube::Error),
    #[error("cannot write the endpoint's (or pool's) status: {0}")]
    UpdateStatus(#[source] kube::Error),
    #[error("cannot delete the endpoint's stream: {0}")]
    DeleteStream(#[source] hookline_api::provision::ProvisionError),
    #[error("no Kubernetes configuration (kubeconfig or in-cluster): {0}")]
    KubeConfig(#[source] kube::Error),
    #[error(
        "the WebhookEndpoint CRD is not installed: kubectl apply --server-side -f crds/webhookendpoints.hookline.io.yaml ({0})"
    )]
    CrdMissing(#[source] kube::Error),
    #[error(transparent)]
    Nats(#[from] hookline_api::nats::NatsError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("cannot write {what} as YAML: {source}")]
    Yaml {
        what: String,
        source: serde_yaml::Error,
    },
    #[error("{0} has no {1}")]
    MissingObjectKey(String, &'static str),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
    #[error(
        "lost the Lease {0} (another replica holds it, or it was not renewed within the renew deadline); exiting so only one reconciles"
    )]
    LeadershipLost(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The `reason` label of the error metric: one per kind, never a message.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Manifest(_) | Error::InvalidSpec(_) => "invalid_spec",
            Error::ReadSecrets(_) => "read_secrets",
            Error::DiscoverKeda(_) => "discover_keda",
            Error::UpdateStatus(kube::Error::Api(response)) if response.code == 409 => "conflict",
            Error::UpdateStatus(_) => "update_status",
            Error::DeleteStream(_) => "delete_stream",
            Error::KubeConfig(_) => "kube_config",
            Error::CrdMissing(_) => "crd_missing",
            Error::Nats(_) => "nats",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(err)
                | kube::runtime::finalizer::Error::CleanupFailed(err) => err.metric_label(),
                _ => "finalizer",
            },
            Error::Yaml { .. } => "serialize",
            Error::MissingObjectKey(..) => "missing_object_key",
            Error::Listen { .. } | Error::Serve(_) => "http",
            Error::LeadershipLost(_) => "leadership_lost",
        }
    }
}

/// Runs the command `args` asks for.
pub async fn run(args: Args) -> Result<()> {
    match args.command {
        Some(Command::Render {
            file,
            namespace,
            no_keda,
        }) => {
            let config = args.settings.operator_config();
            let yaml = render::render_file(&file, namespace.as_deref(), &config, !no_keda)?;
            print!("{yaml}");
            Ok(())
        }
        Some(Command::Crd { markdown: true }) => {
            print!(
                "{}",
                hookline_api::reference::markdown(&hookline_api::crd())
            );
            Ok(())
        }
        Some(Command::Crd { markdown: false }) => {
            let yaml = hookline_api::crd_yaml().map_err(|source| Error::Yaml {
                what: "the CRD".into(),
                source,
            })?;
            print!("{yaml}");
            Ok(())
        }
        Some(Command::Run) | None => controller::run(args.settings, args.run).await,
    }
}

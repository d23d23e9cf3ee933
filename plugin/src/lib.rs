//! `kubectl hookline`: a kubectl plugin for Hookline's `WebhookEndpoint`s.
//!
//! - [`cli`]: the command line (kubectl's `-n`, `-A`, `--context`, `-o`).
//! - [`list`]: every endpoint with its state, a wider `kubectl get whe`.
//! - [`sign`]: a sample delivery signed as the endpoint's provider signs it.
//! - [`send`]: posts one to the receiver and, with `--wait`, waits until the
//!   consumer stored it.
//! - [`exec`]: runs a `hookline-consumer` subcommand in the endpoint's
//!   consumer pod (as `kubectl cnpg psql` does), for `dead-letters`,
//!   `replay`, `tail` and `send --wait`: the laptop needs no database access.
//! - [`table`]: kubectl-style columns.
//!
//! `main.rs` only parses flags, connects with the kubeconfig and runs [`run`].

pub mod cli;
pub mod exec;
pub mod forward;
pub mod list;
pub mod send;
pub mod sign;
pub mod table;

use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use cli::{Cli, Command};
pub use exec::{Exec, PodExec};

/// Why a command failed; `main` prints it as one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("WebhookEndpoint {0} not found")]
    NotFound(String),
    #[error(transparent)]
    InvalidSpec(#[from] hookline_api::Error),
    #[error("Secret {secret}: {message}")]
    Secret { secret: String, message: String },
    #[error("cannot sign: {0}")]
    Sign(#[from] sign::SignError),
    #[error("{0}")]
    Usage(String),
    #[error("POST {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{0}")]
    Exec(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// The command ran and said why it failed; nothing more to print.
    #[error("exit code {0}")]
    Failed(i32),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the commands run: the API client, the namespace of `-n` (or the
/// context's), and how a consumer command is run.
pub struct Context {
    pub client: Client,
    pub namespace: String,
    pub exec: Box<dyn Exec>,
}

/// A client for the kubeconfig's current context (or `--context`), and that
/// context's namespace (`default` when it names none), as kubectl uses them.
pub async fn connect(cli: &Cli) -> Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let mut config = match &cli.kubeconfig {
        Some(path) => {
            kube::Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &options).await?
        }
        None => kube::Config::from_kubeconfig(&options).await?,
    };
    // A command run by hand fails rather than hangs on an API server that does not answer.
    config.connect_timeout = Some(Duration::from_secs(10));
    let namespace = config.default_namespace.clone();
    Ok((Client::try_from(config)?, namespace))
}

/// Runs one command, writing what the user sees to `out`.
pub async fn run(
    cli: &Cli,
    context: &Context,
    out: &mut (dyn AsyncWrite + Unpin + Send),
) -> Result<()> {
    let namespace = cli.namespace.as_deref().unwrap_or(&context.namespace);
    match &cli.command {
        Command::List(args) => {
            let scope = if cli.all_namespaces {
                None
            } else {
                Some(namespace)
            };
            let text = list::list(&context.client, scope, args.output, chrono::Utc::now()).await?;
            out.write_all(text.as_bytes()).await?;
        }
        Command::Send(args) => send::send(context, namespace, args, out).await?,
        Command::DeadLetters(args) => {
            let mut argv = vec!["dead-letters".to_owned()];
            if args.all {
                argv.push("--all".into());
            }
            argv.extend(["--output".into(), args.output.to_string()]);
            exec::consumer(context, namespace, &args.name, &argv, out).await?;
        }
        Command::Replay(args) => {
            exec::consumer(context, namespace, &args.name, &args.consumer_args(), out).await?;
        }
        Command::Tail(args) => {
            let argv = vec![
                "tail".to_owned(),
                "--output".into(),
                args.output.to_string(),
            ];
            exec::consumer(context, namespace, &args.name, &argv, out).await?;
        }
    }
    out.flush().await?;
    Ok(())
}

//! `hookline-operator`: reconciles `WebhookEndpoint` resources into their
//! pipeline (validate → build → apply → status).
//!
//! This crate holds the command line so far; the reconciler comes with its own issue.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Errors of the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Manifest(#[from] hookline_api::Error),
    #[error("{0} is not implemented in this build yet")]
    NotImplemented(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reconciles WebhookEndpoint resources into receiver, stream and consumer.
#[derive(Debug, Parser)]
#[command(name = "hookline-operator", version, about)]
pub struct Args {
    /// NATS server the operator provisions streams on and passes to every pod.
    #[arg(
        long,
        env = "HOOKLINE_NATS_URL",
        default_value = "nats://nats.nats.svc:4222",
        global = true
    )]
    pub nats_url: String,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do; without a subcommand the operator runs against the cluster
/// from the kubeconfig or the in-cluster service account.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the children reconcile would apply for a manifest, as YAML.
    Render {
        /// A WebhookEndpoint manifest.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: PathBuf,
    },
}

/// Runs the command `args` asks for.
pub async fn run(args: Args) -> Result<()> {
    match args.command {
        Some(Command::Render { file }) => {
            hookline_api::load_manifest(&file)?;
            Err(Error::NotImplemented("render"))
        }
        None => Err(Error::NotImplemented("the reconciler")),
    }
}

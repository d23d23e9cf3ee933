//! What the three binaries share at run time, so they behave as one: flags
//! (one-line errors), NATS connection flags, JSON logs, the shutdown signal and
//! the `/metrics` answer.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use clap::Parser;

use tokio::sync::watch;

use crate::nats::NatsAuth;

/// Parses the command line of `binary`. Help and version print to stdout and
/// exit 0; any other flag error is one line on stderr (clap's message without
/// the usage block) and exit code 2, as it ends up in pod events and logs.
pub fn parse_args<T: Parser>(binary: &str) -> Result<T, ExitCode> {
    use clap::error::ErrorKind;
    T::try_parse().map_err(|err| {
        if matches!(
            err.kind(),
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
        ) {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        eprintln!("{binary}: {} (see --help)", one_line(&err.to_string()));
        ExitCode::from(2)
    })
}

/// clap's error text up to its usage block, on one line, without `error: `.
fn one_line(text: &str) -> String {
    let line = text
        .lines()
        .take_while(|line| !line.starts_with("Usage:"))
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("tip:"))
        .collect::<Vec<_>>()
        .join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_owned()
}

/// JSON logs on stdout, filtered by `RUST_LOG` (default `default_filter`);
/// the current span's fields go with every line.
pub fn init_logging(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .init();
}

/// The shutdown signal as every task sees it.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A signal that fires when `signal` completes.
    pub fn new(signal: impl Future<Output = ()> + Send + 'static) -> Shutdown {
        let (sender, receiver) = watch::channel(false);
        tokio::spawn(async move {
            signal.await;
            let _ = sender.send(true);
        });
        Shutdown(receiver)
    }

    /// Waits until shutdown was asked for.
    pub async fn wait(&mut self) {
        // An error means the sender is gone, which only happens after sending.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// A future that completes on shutdown, independent of `self` (for a
    /// server's graceful shutdown or a `select!` arm that must be `'static`).
    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut shutdown = self.clone();
        async move { shutdown.wait().await }
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Sleeps for `duration`; `false` when shutdown came first.
    pub async fn sleep(&mut self, duration: Duration) -> bool {
        tokio::select! {
            _ = self.wait() => false,
            _ = tokio::time::sleep(duration) => true,
        }
    }
}

/// Completes on SIGTERM (Kubernetes) or Ctrl-C. A handler that cannot be
/// installed never completes, so it cannot read as a shutdown request.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested");
}

/// The `/metrics` answer: `registry` in the OpenMetrics text format.
pub fn metrics_response(registry: &prometheus_client::registry::Registry) -> Response {
    let mut body = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut body, registry) {
        tracing::warn!(cause = %err, "cannot encode metrics");
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The NATS connection flags every binary takes besides `--nats-url`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct NatsArgs {
    /// NATS credentials file (`.creds`).
    #[arg(long, env = "HOOKLINE_NATS_CREDS", value_name = "FILE", global = true)]
    pub nats_creds: Option<PathBuf>,
    /// CA certificate (PEM) that signed the NATS server's certificate; implies TLS.
    #[arg(long, env = "HOOKLINE_NATS_TLS_CA", value_name = "FILE", global = true)]
    pub nats_tls_ca: Option<PathBuf>,
    /// NATS user (with --nats-password).
    #[arg(long, env = "HOOKLINE_NATS_USER", value_name = "USER", global = true)]
    pub nats_user: Option<String>,
    /// NATS password (with --nats-user); prefer the environment variable.
    #[arg(
        long,
        env = "HOOKLINE_NATS_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub nats_password: Option<String>,
    /// Names this cluster on a NATS shared with other clusters: its streams
    /// become `HOOKLINE-<NAME>_<ns>_<endpoint>` and its subjects
    /// `hookline-<NAME>.<ns>.<endpoint>.>`, so two clusters never share a
    /// stream. Every binary of one cluster must be given the same name (the
    /// operator passes its own to the pods it makes).
    #[arg(long, env = "HOOKLINE_CLUSTER_NAME", value_name = "NAME", value_parser = parse_cluster_name, global = true)]
    pub cluster_name: Option<String>,
}

fn parse_cluster_name(text: &str) -> Result<String, String> {
    crate::naming::check_cluster_name(text).map(|()| text.to_owned())
}

impl NatsArgs {
    pub fn auth(&self) -> NatsAuth {
        NatsAuth {
            creds_file: self.nats_creds.clone(),
            tls_ca_file: self.nats_tls_ca.clone(),
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_error_becomes_one_line_without_usage() {
        let text = "error: unexpected argument '--endpont' found\n\n  tip: a similar argument exists: '--endpoint'\n\nUsage: hookline-receiver --endpoint <FILE>\n\nFor more information, try '--help'.\n";
        assert_eq!(one_line(text), "unexpected argument '--endpont' found");
    }
}

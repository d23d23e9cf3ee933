//! `hookline-receiver`: parses flags, sets up JSON logs, and runs the server
//! until SIGTERM or Ctrl-C. Every failure is one line on stderr and a non-zero exit.

use std::process::ExitCode;

use clap::Parser;
use hookline_receiver::{Args, Config, run};
use tracing_subscriber::EnvFilter;

/// Each request allocates and frees a few body-sized buffers on two threads;
/// mimalloc handles that churn with far less CPU than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => return usage_error(&err),
    };
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(
            // The NATS client's own connection chatter is ours to report (see `store`).
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn")),
        )
        .init();
    match start(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hookline-receiver: error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn start(args: Args) -> hookline_receiver::Result<()> {
    let config = Config::from_args(&args)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|err| {
            hookline_receiver::Error::Serve(std::io::Error::new(
                err.kind(),
                format!("cannot listen on {}: {err}", args.listen),
            ))
        })?;
    run(config, listener, shutdown_signal()).await
}

/// Help and version go to stdout with success; any other flag error is
/// printed as one line (clap's text without the usage block) and exits 2.
fn usage_error(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    let text = err.to_string();
    let line = text
        .lines()
        .take_while(|line| !line.starts_with("Usage:"))
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("tip:"))
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("hookline-receiver: {line}");
    ExitCode::from(2)
}

/// Completes on SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    // A failure to install the handler must not read as a shutdown request.
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
}

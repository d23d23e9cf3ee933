//! The `hookline-consumer` binary: flags, logging, signals; the rest is in the library.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use hookline_consumer::config::{Cli, Command, Config, required};
use hookline_consumer::{replay, run};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            // One line, not clap's usage block: it ends up in pod events and logs.
            let text = err.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            let line = line.strip_prefix("error: ").unwrap_or(line);
            eprintln!("hookline-consumer: {line} (see --help)");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("hookline-consumer: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match &cli.command {
            Some(Command::Replay(args)) => {
                let (endpoint, nats_url, database_url) = required(&cli)?;
                let count =
                    replay::replay(&endpoint, &nats_url, &database_url, &args.selection()).await?;
                println!("replayed {count} dead letter(s) of {}", endpoint.key());
                Ok(())
            }
            None => run(Config::from_cli(&cli)?, shutdown_signal()).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hookline-consumer: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

//! `hookline-receiver`: parses flags, sets up JSON logs, and runs the server
//! until SIGTERM or Ctrl-C. A bad flag is one line on stderr and exit code 2;
//! any other failure one line and exit code 1.

use std::process::ExitCode;

use hookline_api::runtime::{init_logging, parse_args, shutdown_signal};
use hookline_receiver::{Args, Config, Error, run};

const BINARY: &str = "hookline-receiver";

/// Each request allocates and frees a few body-sized buffers on two threads;
/// mimalloc handles that churn with far less CPU than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = match parse_args(BINARY) {
        Ok(args) => args,
        Err(code) => return code,
    };
    // The NATS client's own connection chatter is ours to report (see `hookline_api::nats`).
    init_logging("info,async_nats=warn");
    match start(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{BINARY}: error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn start(args: Args) -> hookline_receiver::Result<()> {
    let config = Config::from_args(&args)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Listen {
            address: args.listen,
            source,
        })?;
    run(config, listener, shutdown_signal()).await
}

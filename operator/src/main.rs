//! Parses flags and runs the operator; failures are one line on stderr.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = hookline_operator::Args::parse();
    match hookline_operator::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hookline-operator: {err}");
            ExitCode::FAILURE
        }
    }
}

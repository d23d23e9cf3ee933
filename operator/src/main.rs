//! `hookline-operator`: parses flags, sets up JSON logs and runs; every
//! failure is one line on stderr and a non-zero exit.

use std::process::ExitCode;

use hookline_operator::Args;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = match hookline_api::runtime::parse_args("hookline-operator") {
        Ok(args) => args,
        Err(code) => return code,
    };
    hookline_api::runtime::init_logging("info,async_nats=warn,kube_runtime=warn");
    match hookline_operator::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hookline-operator: {err}");
            ExitCode::FAILURE
        }
    }
}

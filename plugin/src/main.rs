//! `kubectl-hookline`: kubectl finds it on PATH and runs it as `kubectl
//! hookline`. Parses flags, connects with the kubeconfig and runs the
//! command; a failure is one line on stderr and exit code 1 (2 for a bad flag).

use std::process::ExitCode;

use clap::Parser;
use kubectl_hookline::cli::Cli;
use kubectl_hookline::{Context, Error, PodExec, connect, run};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = async {
        let (client, namespace) = connect(&cli).await?;
        let context = Context {
            exec: Box::new(PodExec {
                client: client.clone(),
            }),
            client,
            namespace,
        };
        run(&cli, &context, &mut tokio::io::stdout()).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Failed(code)) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

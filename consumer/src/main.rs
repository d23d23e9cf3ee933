//! `hookline-consumer`: parses flags, sets up JSON logs, and runs the consumer
//! (or the `replay` subcommand) until SIGTERM or Ctrl-C. A bad flag is one line
//! on stderr and exit code 2; any other failure one line and exit code 1.

use std::process::ExitCode;

use hookline_api::runtime::{init_logging, parse_args, shutdown_signal};
use hookline_consumer::config::{Cli, Command, Config, PoolConfig, inspect_target};
use hookline_consumer::{Error, inspect, replay, run, run_pool};

const BINARY: &str = "hookline-consumer";

/// Every message is decoded into a dozen small strings (headers, ids) and a
/// body, all freed once its batch commits, often on another worker thread:
/// mimalloc takes that churn with less CPU than the system allocator (as in
/// the receiver).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = match parse_args(BINARY) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // The NATS client's own connection chatter is ours to report (see `hookline_api::nats`).
    init_logging("info,async_nats=warn");
    match start(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{BINARY}: error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn start(cli: Cli) -> hookline_consumer::Result<()> {
    match &cli.command {
        Some(Command::Replay(args)) => {
            let config = Config::from_required(&cli)?;
            let count = replay::replay(&config, &args.selection()).await?;
            println!(
                "replayed {count} dead letter(s) of {}",
                config.endpoint.key()
            );
            Ok(())
        }
        Some(Command::DeadLetters(args)) => {
            let (endpoint, database_url) = inspect_target(&cli)?;
            let pool = inspect::connect(&database_url).await?;
            let rows = inspect::dead_letters(&pool, &endpoint, args.all).await?;
            print(&inspect::render_dead_letters(&rows, args.output)?)
        }
        Some(Command::Event(args)) => {
            let (endpoint, database_url) = inspect_target(&cli)?;
            let pool = inspect::connect(&database_url).await?;
            let row = match args.wait {
                Some(wait) => {
                    inspect::wait_for_event(&pool, &endpoint, &args.event_id, wait).await?
                }
                None => inspect::event(&pool, &endpoint, &args.event_id).await?,
            };
            let row = row.ok_or_else(|| Error::NotStored(args.event_id.clone()))?;
            print(&inspect::render_events(&[row], args.output, false)?)
        }
        Some(Command::Tail(args)) => {
            let (endpoint, database_url) = inspect_target(&cli)?;
            let pool = inspect::connect(&database_url).await?;
            let mut listener = inspect::Listener::start(&pool, &endpoint).await?;
            if args.output == inspect::Format::Table {
                print(&inspect::render_events(&[], args.output, true)?)?;
            }
            let follow = async {
                loop {
                    let event_id = listener.next().await?;
                    if let Some(row) = inspect::event(&pool, &endpoint, &event_id).await? {
                        print(&inspect::render_events(&[row], args.output, false)?)?;
                    }
                }
            };
            tokio::select! {
                result = follow => result,
                () = shutdown_signal() => Ok(()),
            }
        }
        None if cli.endpoint_dir.is_some() => {
            let config = PoolConfig::from_cli(&cli)?;
            let listener = bind(&cli).await?;
            run_pool(config, listener, shutdown_signal()).await
        }
        None => {
            let config = Config::from_cli(&cli)?;
            let listener = bind(&cli).await?;
            run(config, listener, shutdown_signal()).await
        }
    }
}

/// Writes `text` to stdout at once, so `kubectl hookline` sees each line as it comes.
fn print(text: &str) -> hookline_consumer::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

async fn bind(cli: &Cli) -> hookline_consumer::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(cli.listen)
        .await
        .map_err(|source| Error::Listen {
            address: cli.listen,
            source,
        })
}

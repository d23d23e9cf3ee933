//! The big fault soak (not a test): the soak CI runs, at any size.
//!
//! ```text
//! cargo run --release --example soak -- --events 100000 --faults 16
//! ```
//!
//! Prints the summary line, then every guarantee that did not hold; exits 1
//! when one did not (or the soak could not run to its end), else 0.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hookline_e2e::soak::{self, FaultKind, Timing};

fn parse_kind(name: &str) -> Result<FaultKind, String> {
    FaultKind::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = FaultKind::ALL.iter().map(|kind| kind.name()).collect();
        format!("not a kind of fault; one of {}", names.join(", "))
    })
}

/// Signed load to one endpoint per provider while processes fail; then
/// Postgres and every log are checked.
#[derive(Parser)]
struct Cli {
    /// Events to send.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Faults to apply, cycling through the kinds.
    #[arg(long, default_value_t = 16)]
    faults: usize,
    /// The kinds of fault, comma-separated: kill-consumer, term-receiver,
    /// restart-nats, stop-postgres, fill-stream (default: all, in that order).
    #[arg(long, value_delimiter = ',', value_parser = parse_kind)]
    kinds: Vec<FaultKind>,
    /// Deliveries in flight at most, per endpoint.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Events designed to become dead letters.
    #[arg(long, default_value_t = 12)]
    poison: usize,
    /// Decides the events and the secrets.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds of load planned per fault (the load is spread over the schedule).
    #[arg(long, default_value_t = 20)]
    slot: u64,
    /// `RUST_LOG` of the receivers and consumers.
    #[arg(long)]
    log_filter: Option<String>,
    /// Copy every process's log into this directory at the end.
    #[arg(long, value_name = "DIR")]
    keep_logs: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let defaults = soak::Config::default();
    let config = soak::Config {
        events: cli.events,
        faults: cli.faults,
        kinds: if cli.kinds.is_empty() {
            defaults.kinds.clone()
        } else {
            cli.kinds
        },
        concurrency: cli.concurrency,
        poison: cli.poison,
        seed: cli.seed,
        log_filter: cli.log_filter.unwrap_or(defaults.log_filter.clone()),
        keep_logs: cli.keep_logs,
        timing: Timing {
            slot: Duration::from_secs(cli.slot),
            ..Timing::default()
        },
        ..defaults
    };
    let report = match soak::run(&config) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("soak: could not run to its end: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", report.summary());
    let c = &report.checks;
    let mut failed = false;
    let mut check = |what: &str, items: &[String]| {
        if !items.is_empty() {
            failed = true;
            println!("{what} ({}):", items.len());
            for item in items.iter().take(20) {
                println!("  {item}");
            }
        }
    };
    check("not accepted", &report.not_accepted);
    check(
        "redeliveries not accepted",
        &report.redeliveries_not_accepted,
    );
    check("lost", &c.lost);
    check("stored although never sent", &c.unknown_stored);
    check("poison stored", &c.stored_poison);
    check("stale projections", &c.stale_projections);
    check("unexpected dead letters", &c.unexpected_dead_letters);
    check("not running or not ready", &report.not_ready);
    check("fault findings", &report.fault_findings());
    check("leaks", &c.leaks);
    check(
        "503 bodies naming the store",
        &report.leaky_unavailable_bodies,
    );
    if c.duplicates > 0 || c.dead_letters != report.poison {
        failed = true;
        println!(
            "duplicates {}, dead letters {} for {} poison events",
            c.duplicates, c.dead_letters, report.poison
        );
    }
    if failed {
        println!("\n{}", report.log_tails);
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

//! The fault soak at CI size: about 5,000 signed events to one endpoint per
//! provider and to a pool of three while a consumer is killed and a receiver
//! stopped with requests in flight (the pool's, then a dedicated
//! endpoint's), nats-server restarted, Postgres stopped for 10 s and a
//! stream filled to its `maxBytes`; then each guarantee is checked by a test
//! of its own. The soak runs once, for the first test that asks (the others wait
//! for it); its summary line goes to stderr uncaptured, so CI logs show it.
//! `cargo run --release --example soak -- --events 100000 --faults 16` is the big run.

use std::io::Write as _;
use std::sync::OnceLock;

use hookline_e2e::soak::{self, Report};

fn soak() -> &'static Report {
    static REPORT: OnceLock<Result<Report, String>> = OnceLock::new();
    let report = REPORT.get_or_init(|| {
        let config = soak::Config {
            // To read the logs after a run: HOOKLINE_SOAK_LOGS=/some/dir.
            keep_logs: std::env::var_os("HOOKLINE_SOAK_LOGS").map(Into::into),
            ..soak::Config::default()
        };
        let report = soak::run(&config).map_err(|err| err.to_string())?;
        let _ = writeln!(std::io::stderr(), "{}", report.summary());
        Ok(report)
    });
    match report {
        Ok(report) => report,
        Err(err) => panic!("the soak could not run to its end: {err}"),
    }
}

/// The list, one per line, then the tails of every process's log.
fn explain(items: &[String], report: &Report) -> String {
    format!("{}\n\n{}", items.join("\n"), report.log_tails)
}

#[test]
fn every_event_is_accepted_once_its_sender_retries_503s_and_silence() {
    let report = soak();
    assert!(
        report.not_accepted.is_empty(),
        "never answered 200 within the retry budget:\n{}",
        explain(&report.not_accepted, report)
    );
    assert!(
        report.redeliveries_not_accepted.is_empty(),
        "a provider's redelivery of an accepted event was not answered 200:\n{}",
        explain(&report.redeliveries_not_accepted, report)
    );
    assert!(report.redeliveries > 0 && report.events >= 5_000);
}

#[test]
fn every_accepted_event_is_in_postgres_exactly_once() {
    let report = soak();
    let checks = &report.checks;
    assert!(
        checks.lost.is_empty(),
        "accepted (200) but not in hookline.events:\n{}",
        explain(&checks.lost, report)
    );
    assert_eq!(checks.duplicates, 0, "stored more than once");
    assert!(
        checks.unknown_stored.is_empty(),
        "stored although never sent:\n{}",
        explain(&checks.unknown_stored, report)
    );
    assert!(checks.stored >= report.accepted - report.poison);
}

#[test]
fn every_projection_holds_its_objects_newest_event() {
    let report = soak();
    assert!(
        report.checks.stale_projections.is_empty(),
        "hookline.objects does not hold the newest event (by event time, then id):\n{}",
        explain(&report.checks.stale_projections, report)
    );
}

#[test]
fn only_the_poison_events_become_dead_letters() {
    let report = soak();
    let checks = &report.checks;
    assert!(
        checks.unexpected_dead_letters.is_empty(),
        "dead letters of events not designed to fail:\n{}",
        explain(&checks.unexpected_dead_letters, report)
    );
    assert!(
        checks.stored_poison.is_empty(),
        "poison in hookline.events:\n{}",
        explain(&checks.stored_poison, report)
    );
    assert_eq!(
        checks.dead_letters, report.poison,
        "one dead letter per accepted poison event"
    );
    assert!(report.poison > 0);
}

#[test]
fn no_process_needs_a_restart_the_schedule_did_not_make() {
    let report = soak();
    assert!(
        report.not_ready.is_empty(),
        "after the soak:\n{}",
        explain(&report.not_ready, report)
    );
    let findings = report.fault_findings();
    assert!(
        findings.is_empty(),
        "during the faults:\n{}",
        explain(&findings, report)
    );
    assert_eq!(
        report.faults.len(),
        7,
        "every kind of fault ran, the pool's and a dedicated endpoint's consumer killed and receiver stopped"
    );
}

#[test]
fn no_secret_or_signature_reaches_a_log_or_a_stored_header() {
    let report = soak();
    assert!(
        report.checks.leaks.is_empty(),
        "{}",
        report.checks.leaks.join("\n")
    );
}

#[test]
fn a_503_never_tells_the_sender_about_nats_or_the_stream() {
    let report = soak();
    assert!(
        report.leaky_unavailable_bodies.is_empty(),
        "503 bodies naming the store:\n{}",
        report.leaky_unavailable_bodies.join("\n")
    );
    assert!(report.retried_unavailable > 0, "the faults caused 503s");
}

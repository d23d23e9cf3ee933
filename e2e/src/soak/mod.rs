//! The fault soak: the whole pipeline at volume while its processes fail,
//! then a check that nothing accepted was lost, stored twice or applied out
//! of order, and that no secret or signature reached a log.
//!
//! [`run`] starts a real nats-server and Postgres and, for each provider, one
//! endpoint from its shipped example (`examples/*.yaml`, in the namespace
//! `soak`) served by the real `hookline-receiver` and `hookline-consumer`
//! binaries with `--provision` (Stripe: two receivers and two consumers;
//! Standard Webhooks: two consumers and a 64 KiB stream); beside them, a pool
//! of three more endpoints (Stripe, GitHub, generic, named `*-pooled`) served
//! by two receivers and one consumer reading `--endpoint-dir`. A load
//! generator sends signed events to all of them while a schedule applies
//! faults one after another (the first consumer killed and the first
//! receiver stopped are the pool's); at the end Postgres is read back and
//! every log is searched.
//!
//! - `providers`: how each provider builds and signs a delivery, written
//!   independently of the receiver.
//! - `plan`: the events, from a seed: redeliveries, out-of-order pairs, poison.
//! - `endpoint`: the endpoints, their manifests, and the pods serving them.
//! - `fleet`: the processes, their logs, and JetStream's view of the streams.
//! - `load`: the senders, with bounded concurrency and provider-like retries.
//! - `faults`: the schedule and its timed recoveries; `fault_report`: what each did.
//! - `verify`: the checks against Postgres and the logs.
//!
//! Everything blocks, like the rest of this crate: [`run`] makes its own
//! tokio runtime for the senders. A test runs it with about 5,000 events
//! and every kind of fault once; `examples/soak.rs` runs it big.

mod endpoint;
mod fault_report;
mod faults;
mod fleet;
mod load;
mod plan;
pub mod providers;
mod verify;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;

pub use fault_report::FaultReport;
pub use faults::{FaultKind, Timing};
pub use providers::Provider;
pub use verify::Checks;

use crate::error::{Result, io_err};
use fleet::Fleet;
use load::{Answer, Load, Target};
use plan::Kind;

/// How big a soak is, and how it behaves.
#[derive(Clone, Debug)]
pub struct Config {
    /// Events to send (at least; out-of-order pairs may add one), canaries aside.
    pub events: usize,
    /// Faults to apply, cycling through `kinds`: seven by default, so that
    /// a consumer is killed and a receiver stopped both in the pool and in a
    /// dedicated endpoint.
    pub faults: usize,
    /// The kinds of fault, in order (all five by default).
    pub kinds: Vec<FaultKind>,
    /// Deliveries in flight at most, per endpoint.
    pub concurrency: usize,
    /// Events designed to fail (a CHECK constraint refuses their ids), one
    /// endpoint after another: they must be exactly the dead letters.
    pub poison: usize,
    /// Decides the plan and the secrets.
    pub seed: u64,
    /// How long a sender keeps retrying one delivery.
    pub retry_for: Duration,
    /// `RUST_LOG` of the receivers and consumers. Hookline's own code logs
    /// at `debug` by default, so the leak check covers every line it writes.
    pub log_filter: String,
    pub timing: Timing,
    /// Where to copy every log at the end (they are removed with the soak's
    /// temp dir otherwise).
    pub keep_logs: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            events: 5_000,
            faults: 7,
            kinds: FaultKind::ALL.to_vec(),
            concurrency: 64,
            poison: 9,
            seed: 1,
            retry_for: Duration::from_secs(180),
            log_filter: "info,hookline_receiver=debug,hookline_consumer=debug,hookline_api=debug"
                .into(),
            timing: Timing::default(),
            keep_logs: None,
        }
    }
}

/// How long the streams may take to drain after the load: more than the
/// durable consumer's `ackWait` (30 s), after which a killed consumer's
/// messages come back.
const DRAIN_BOUND: Duration = Duration::from_secs(150);

/// What a soak did and found. Every list is empty and `duplicates` is 0 when
/// every guarantee held.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Distinct events sent, canaries included.
    pub events: usize,
    pub canaries: usize,
    /// HTTP requests, retries and redeliveries included.
    pub requests: u64,
    /// Events answered 200.
    pub accepted: usize,
    /// How many events got each first answer (`200`, `503`, `no answer`, …).
    pub first_answers: BTreeMap<String, usize>,
    /// Events that got a 503 and were sent again.
    pub retried_unavailable: usize,
    /// Events that got no answer (a receiver down) and were sent again.
    pub retried_no_answer: usize,
    /// Events that never got a 200 (gave up after `retry_for`, or refused).
    pub not_accepted: Vec<String>,
    /// Redeliveries of accepted events (same id): each must get a 200 too.
    pub redeliveries: usize,
    /// Redeliveries JetStream's duplicate window caught (the 200 said
    /// `duplicate`); the others reached Postgres's unique key.
    pub redeliveries_deduplicated: usize,
    pub redeliveries_not_accepted: Vec<String>,
    /// Poison events accepted by a receiver.
    pub poison: usize,
    pub checks: Checks,
    /// Processes not running or not ready at the end.
    pub not_ready: Vec<String>,
    /// Distinct 503 bodies that name NATS, JetStream or a stream.
    pub leaky_unavailable_bodies: Vec<String>,
    pub faults: Vec<FaultReport>,
    /// From the end of the load until every stream was empty.
    pub drained_in: Duration,
    pub elapsed: Duration,
    /// The tails of every log, for failure messages.
    pub log_tails: String,
}

impl Report {
    /// Everything the faults' binaries did wrong (e.g. a non-zero exit after SIGTERM).
    pub fn fault_findings(&self) -> Vec<String> {
        self.faults
            .iter()
            .flat_map(|fault| fault.findings.clone())
            .collect()
    }

    /// The one summary line.
    pub fn summary(&self) -> String {
        let c = &self.checks;
        let first: Vec<String> = self
            .first_answers
            .iter()
            .map(|(answer, count)| format!("{answer}×{count}"))
            .collect();
        let mut line = format!(
            "soak: {} events ({} canaries) in {:.0} s, {} requests: first answers {}, accepted {}, \
             503-then-retried {}, no-answer-then-retried {}, not accepted {}, \
             redelivered {} ({} caught by JetStream, {} by Postgres), stored {} \
             (+{} poison dead-lettered), duplicates {}, lost {}, \
             projections {} (stale {}), unexpected dead letters {}, \
             not ready at the end {}, leaks {} ({} signatures and {} secrets in {} MB), \
             drained {:.1} s after the load",
            self.events,
            self.canaries,
            self.elapsed.as_secs_f64(),
            self.requests,
            first.join(" "),
            self.accepted,
            self.retried_unavailable,
            self.retried_no_answer,
            self.not_accepted.len(),
            self.redeliveries,
            self.redeliveries_deduplicated,
            self.redeliveries - self.redeliveries_deduplicated,
            c.stored,
            c.dead_letters,
            c.duplicates,
            c.lost.len(),
            c.projections,
            c.stale_projections.len(),
            c.unexpected_dead_letters.len(),
            self.not_ready.len(),
            c.leaks.len() + self.leaky_unavailable_bodies.len(),
            c.signatures,
            Provider::ALL.len(),
            c.searched_bytes >> 20,
            self.drained_in.as_secs_f64(),
        );
        for fault in &self.faults {
            let _ = write!(line, " | {}", fault.summary());
        }
        line
    }
}

/// Runs a soak as `config` says and reports what it found. Fails only when
/// the soak itself cannot go on (a process that does not start or come back,
/// a canary that never arrives, streams that do not drain), with the tails
/// of every log; guarantees that did not hold are in the [`Report`].
pub fn run(config: &Config) -> Result<Report> {
    let started = Instant::now();
    let mut random = StdRng::seed_from_u64(config.seed);
    let secrets: HashMap<Provider, String> = Provider::ALL
        .iter()
        .map(|&provider| (provider, provider.secret(&random.random())))
        .collect();
    let mut fleet = Fleet::start(&config.log_filter, |provider| {
        secrets.get(&provider).cloned().unwrap_or_default()
    })?;
    let report = soak(config, &mut fleet, started);
    if let Some(dir) = &config.keep_logs {
        fleet.copy_logs(dir)?;
    }
    report
}

/// The soak proper, once every process runs.
fn soak(config: &Config, fleet: &mut Fleet, started: Instant) -> Result<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(io_err("starting the load generator's runtime"))?;
    let targets = fleet
        .endpoints
        .iter()
        .map(|endpoint| {
            let receivers = &fleet.pods[endpoint.pods].receivers;
            Target {
                provider: endpoint.provider,
                secret: endpoint.secret.clone(),
                urls: receivers
                    .iter()
                    .map(|receiver| {
                        format!("http://127.0.0.1:{}{}", receiver.port(), endpoint.path)
                    })
                    .collect(),
                in_flight: receivers.iter().map(|_| AtomicUsize::new(0)).collect(),
                permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
            }
        })
        .collect();
    let providers: Vec<Provider> = fleet.endpoints.iter().map(|e| e.provider).collect();
    let units = plan::plan(&providers, config.events, config.poison, config.seed);
    let load = Arc::new(Load::new(
        targets,
        config.concurrency,
        config.retry_for,
        Instant::now() + config.timing.planned(config.faults),
    )?);
    let senders = runtime.spawn(load.clone().run(units));

    let schedule = match faults::run(
        fleet,
        &load,
        runtime.handle(),
        config.faults,
        &config.kinds,
        &config.timing,
    ) {
        Ok(schedule) => schedule,
        Err(err) => {
            senders.abort();
            return Err(err);
        }
    };
    let mut sent = runtime
        .block_on(senders)
        .map_err(|err| fleet.failure(&format!("the load generator failed: {err}")))??;
    let canaries = schedule.canaries.len();
    sent.extend(schedule.canaries);

    let load_ended = Instant::now();
    fleet.wait_drained(DRAIN_BOUND)?;
    let drained_in = load_ended.elapsed();
    let not_ready = fleet.problems();
    let checks = verify::verify(fleet, &sent)?;
    let stream_names: Vec<String> = fleet
        .streams()
        .unwrap_or_default()
        .into_iter()
        .map(|stream| stream.name)
        .collect();
    let leaky_unavailable_bodies = load
        .unavailable_bodies()
        .into_iter()
        .filter(|body| names_the_store(body, &stream_names))
        .collect();

    // Say when each lost event was accepted, and during which fault.
    let accepted_at: HashMap<String, Instant> = sent
        .iter()
        .filter_map(|s| {
            let key = &fleet.endpoints[s.event.endpoint].key;
            Some((format!("{key} {}", s.event.id), s.delivery.accepted_at?))
        })
        .collect();
    let mut checks = checks;
    for lost in &mut checks.lost {
        if let Some(&at) = accepted_at.get(lost.as_str()) {
            let during = schedule
                .faults
                .iter()
                .find(|fault| {
                    fault
                        .window
                        .is_some_and(|(from, to)| at >= from && at <= to)
                })
                .map_or_else(String::new, |fault| format!(", during {}", fault.name));
            let _ = write!(
                lost,
                " (accepted at +{:.1} s{during})",
                (at - started).as_secs_f64()
            );
        }
    }
    let mut report = Report {
        events: sent.len(),
        canaries,
        checks,
        not_ready,
        leaky_unavailable_bodies,
        faults: schedule.faults,
        drained_in,
        log_tails: fleet.log_tails(12),
        ..Report::default()
    };
    for s in &sent {
        report.requests += u64::from(s.requests());
        if let Some(first) = s.delivery.first {
            *report.first_answers.entry(first.describe()).or_default() += 1;
        }
        if s.accepted() {
            report.accepted += 1;
            if s.event.kind == Kind::Poison {
                report.poison += 1;
            }
        } else {
            report.not_accepted.push(format!(
                "{} {}: {}",
                fleet.endpoints[s.event.endpoint].key,
                s.event.id,
                s.delivery
                    .last
                    .map_or_else(|| "not sent".into(), Answer::describe)
            ));
        }
        report.retried_unavailable += usize::from(s.delivery.retried_unavailable);
        report.retried_no_answer += usize::from(s.delivery.retried_no_answer);
        for redelivery in &s.redeliveries {
            report.redeliveries += 1;
            report.redeliveries_deduplicated += usize::from(redelivery.duplicate);
            if redelivery.last != Some(Answer::Status(200)) {
                report.redeliveries_not_accepted.push(format!(
                    "{} {}: {}",
                    fleet.endpoints[s.event.endpoint].key,
                    s.event.id,
                    redelivery
                        .last
                        .map_or_else(|| "not sent".into(), Answer::describe)
                ));
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Whether a 503 body says anything about the store behind the receiver:
/// NATS's or JetStream's words, or a stream's name.
fn names_the_store(body: &str, stream_names: &[String]) -> bool {
    let lower = body.to_lowercase();
    [
        "nats",
        "jetstream",
        "stream",
        "hookline_",
        "maximum bytes",
        "error code",
    ]
    .iter()
    .any(|word| lower.contains(word))
        || stream_names
            .iter()
            .any(|name| !name.is_empty() && body.contains(name.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_503_body_naming_the_store_is_caught() {
        let names = ["HOOKLINE_soak_orders".to_owned()];
        assert!(names_the_store(
            r#"{"error":"unavailable","message":"JetStream refused the event"}"#,
            &names
        ));
        assert!(names_the_store(
            "stream HOOKLINE_soak_orders is full",
            &names
        ));
        assert!(!names_the_store(
            r#"{"error":"unavailable","message":"the event was not stored; retry in 5 s"}"#,
            &names
        ));
    }
}

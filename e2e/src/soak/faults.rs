//! The fault schedule: faults applied one after another while the load
//! runs, each named and each followed by a timed recovery: a canary event per
//! affected endpoint, from its sender to its row in Postgres, and every
//! process ready again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use super::fault_report::FaultReport;
use super::fleet::Fleet;
use super::load::{Load, Sent};
use crate::error::Result;

/// The kinds of fault, in the order the schedule cycles through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// `kill -9` one consumer, then start a new one.
    KillConsumer,
    /// SIGTERM one receiver while requests are in flight, then start it again.
    TermReceiver,
    /// Stop nats-server gracefully and start it in place (JetStream data kept).
    RestartNats,
    /// Stop Postgres, wait, start it again.
    StopPostgres,
    /// Stop the consumers of the endpoint with the small stream until senders
    /// get 503 (the stream is at `maxBytes`), then start them again.
    FillStream,
}

impl FaultKind {
    /// Every kind, in the order the schedule cycles through them by default.
    pub const ALL: [FaultKind; 5] = CYCLE;

    /// The kind's name on a command line: `kill-consumer`, `term-receiver`,
    /// `restart-nats`, `stop-postgres`, `fill-stream`.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillConsumer => "kill-consumer",
            FaultKind::TermReceiver => "term-receiver",
            FaultKind::RestartNats => "restart-nats",
            FaultKind::StopPostgres => "stop-postgres",
            FaultKind::FillStream => "fill-stream",
        }
    }

    /// The kind called `name` (see [`FaultKind::name`]).
    pub fn from_name(name: &str) -> Option<FaultKind> {
        CYCLE.into_iter().find(|kind| kind.name() == name)
    }
}

const CYCLE: [FaultKind; 5] = [
    FaultKind::KillConsumer,
    FaultKind::TermReceiver,
    FaultKind::RestartNats,
    FaultKind::StopPostgres,
    FaultKind::FillStream,
];

/// How long the schedule's steps take.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Fault `n` (from 0) starts `n` slots and a lead after the schedule,
    /// or, when the ones before took longer, a lead after the last recovered.
    pub lead: Duration,
    /// The time given to each fault; the load is spread evenly over
    /// `faults × slot + tail`, so its rate stays steady through the faults.
    pub slot: Duration,
    /// Load after the last fault's slot.
    pub tail: Duration,
    /// How long Postgres stays down.
    pub postgres_down: Duration,
    /// How long senders keep getting 503 from the full stream.
    pub full_for: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            lead: Duration::from_secs(3),
            slot: Duration::from_secs(15),
            tail: Duration::from_secs(5),
            postgres_down: Duration::from_secs(10),
            full_for: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// The load's planned length for `faults` faults.
    pub fn planned(&self, faults: usize) -> Duration {
        self.slot * u32::try_from(faults).unwrap_or(u32::MAX) + self.tail
    }
}

/// A graceful stop (SIGTERM) is given this long before it counts as hung.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How long a receiver to be stopped may take to have a request in flight.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(5);
/// How long the small stream may take to fill once its consumers are stopped.
const FILL_BOUND: Duration = Duration::from_secs(60);
/// How long a canary may take from its 200 to its row in Postgres.
const CANARY_BOUND: Duration = Duration::from_secs(120);
/// How long every process may take to be ready again.
const READY_BOUND: Duration = Duration::from_secs(60);

/// Every fault's report, and the canaries sent to time recoveries.
#[derive(Debug, Default)]
pub struct Schedule {
    pub faults: Vec<FaultReport>,
    pub canaries: Vec<Sent>,
}

/// Runs `count` faults one after another, cycling through `kinds`; keeps
/// the load paced to last until the end. Blocks; `runtime` runs the canaries.
pub fn run(
    fleet: &mut Fleet,
    load: &Arc<Load>,
    runtime: &Handle,
    count: usize,
    kinds: &[FaultKind],
    timing: &Timing,
) -> Result<Schedule> {
    let mut schedule = Schedule::default();
    let kinds = if kinds.is_empty() { &CYCLE[..] } else { kinds };
    let begun = Instant::now();
    let slots = |n: usize| timing.slot * u32::try_from(n).unwrap_or(u32::MAX);
    for number in 0..count {
        let due = (begun + slots(number) + timing.lead).max(Instant::now() + timing.lead);
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let problems = fleet.problems();
        if !problems.is_empty() {
            return Err(fleet.failure(&format!(
                "before fault {}, a process needed a restart the schedule did not make: {}",
                number + 1,
                problems.join("; ")
            )));
        }
        let kind = kinds[number % kinds.len()];
        let occurrence = number / kinds.len();
        let started = Instant::now();
        let (mut report, affected) = apply(kind, occurrence, fleet, load, timing)?;
        report.name = format!("{} {}", number + 1, report.name);
        let healed = Instant::now();
        let canaries = recover(fleet, load, runtime, &affected, &report.name)?;
        report.accepted_after = canaries.accepted - healed;
        report.stored_after = canaries.stored - healed;
        fleet.wait_ready(READY_BOUND)?;
        let recovered = Instant::now();
        report.window = Some((started, recovered));
        report.down = healed - started;
        report.recovery = recovered - healed;
        report.incidents = load
            .incidents_between(started, recovered)
            .into_iter()
            .map(|(endpoint, counts)| (fleet.endpoints[endpoint].key.clone(), counts))
            .collect();
        schedule.canaries.extend(canaries.sent);
        schedule.faults.push(report);
        // Behind the plan, the load stretches to cover the faults still to come.
        let planned_end = begun + slots(count) + timing.tail;
        let needed = Instant::now() + slots(count - number - 1) + timing.tail;
        load.pace_until(planned_end.max(needed));
    }
    Ok(schedule)
}

/// Applies one fault and heals it; returns its report (name, note,
/// findings) and the endpoints it touched.
fn apply(
    kind: FaultKind,
    occurrence: usize,
    fleet: &mut Fleet,
    load: &Load,
    timing: &Timing,
) -> Result<(FaultReport, Vec<usize>)> {
    let everyone: Vec<usize> = (0..fleet.endpoints.len()).collect();
    match kind {
        FaultKind::KillConsumer => {
            // The pool's consumer first (it serves several endpoints), then
            // each dedicated endpoint's in turn.
            let pods = occurrence % fleet.pods.len();
            let consumers = fleet.pods[pods].consumers.len().max(1);
            let index = occurrence / fleet.pods.len() % consumers;
            let mut report = FaultReport::new(format!(
                "kill -9 consumer {}#{}",
                fleet.pods[pods].name,
                index + 1
            ));
            // Kill it with work in hand when there is some: events delivered
            // to its endpoints' consumers and not yet acknowledged.
            let members = fleet.pods[pods].members.clone();
            let streams: Vec<String> = members
                .iter()
                .map(|&endpoint| fleet.endpoints[endpoint].stream.clone())
                .collect();
            let unacknowledged = || -> u64 {
                fleet
                    .streams()
                    .unwrap_or_default()
                    .iter()
                    .filter(|state| streams.contains(&state.name))
                    .map(|state| state.ack_pending)
                    .sum()
            };
            let deadline = Instant::now() + IN_FLIGHT_WAIT;
            let mut at_kill = unacknowledged();
            while at_kill == 0 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(2));
                at_kill = unacknowledged();
            }
            if let Some(consumer) = fleet.pods[pods].consumers.get_mut(index) {
                consumer.kill();
            }
            fleet.replace_consumer(pods, index)?;
            report.note =
                format!("events unacknowledged at the kill: {at_kill}; a new consumer started");
            Ok((report, members))
        }
        FaultKind::TermReceiver => {
            let (pods, index) = receiver_to_stop(fleet, occurrence);
            let mut report = FaultReport::new(format!(
                "SIGTERM receiver {}#{}",
                fleet.pods[pods].name,
                index + 1
            ));
            let members = fleet.pods[pods].members.clone();
            let in_flight = || -> usize {
                members
                    .iter()
                    .filter_map(|&endpoint| load.targets()[endpoint].in_flight.get(index))
                    .map(|count| count.load(Ordering::Relaxed))
                    .sum()
            };
            let deadline = Instant::now() + IN_FLIGHT_WAIT;
            while in_flight() == 0 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            let at_signal = in_flight();
            let receiver = &mut fleet.pods[pods].receivers[index];
            match receiver.terminate_within(STOP_GRACE) {
                Some(status) if status.success() => {}
                other => report.findings.push(format!(
                    "{}: after SIGTERM it exited with {other:?}, not 0 within {STOP_GRACE:?}",
                    report.name
                )),
            }
            receiver.restart()?;
            report.note = format!("requests in flight at SIGTERM: {at_signal}");
            Ok((report, members))
        }
        FaultKind::RestartNats => {
            let mut report = FaultReport::new("restart nats-server".into());
            fleet.nats.restart()?;
            report.note = "stopped gracefully, started in place".into();
            Ok((report, everyone))
        }
        FaultKind::StopPostgres => {
            let mut report = FaultReport::new(format!(
                "stop Postgres for {} s",
                timing.postgres_down.as_secs()
            ));
            fleet.postgres.stop();
            thread::sleep(timing.postgres_down);
            fleet.postgres.restart()?;
            report.note = "fast shutdown, started in place".into();
            Ok((report, everyone))
        }
        FaultKind::FillStream => {
            let endpoint = fleet.small_stream();
            let max_bytes = fleet.endpoints[endpoint].max_bytes;
            let mut report = FaultReport::new(format!(
                "fill the stream of {} ({} KiB)",
                fleet.endpoints[endpoint].key,
                max_bytes >> 10
            ));
            let pods = fleet.endpoints[endpoint].pods;
            for consumer in &mut fleet.pods[pods].consumers {
                match consumer.terminate_within(STOP_GRACE) {
                    Some(status) if status.success() => {}
                    other => report.findings.push(format!(
                        "a consumer of {}: after SIGTERM it exited with {other:?}, not 0",
                        report.name
                    )),
                }
            }
            let stopped = Instant::now();
            while !load.unavailable_since(endpoint, stopped) && stopped.elapsed() < FILL_BOUND {
                thread::sleep(Duration::from_millis(20));
            }
            if load.unavailable_since(endpoint, stopped) {
                report.note = format!(
                    "consumers stopped, senders got 503 after {:.1} s",
                    stopped.elapsed().as_secs_f64()
                );
            } else {
                report.findings.push(format!(
                    "{}: no 503 within {FILL_BOUND:?} of stopping the consumers: the stream never filled",
                    report.name
                ));
            }
            thread::sleep(timing.full_for);
            for consumer in &mut fleet.pods[pods].consumers {
                consumer.restart()?;
            }
            Ok((report, vec![endpoint]))
        }
    }
}

/// The receiver the `occurrence`th SIGTERM stops: the pool's first (the
/// others serve its endpoints meanwhile), then one alone behind its endpoint
/// (senders get no answer until it is back) and one of several in turn.
fn receiver_to_stop(fleet: &Fleet, occurrence: usize) -> (usize, usize) {
    let (mut alone, mut shared) = (Vec::new(), Vec::new());
    let mut order = Vec::new();
    for (p, pods) in fleet.pods.iter().enumerate() {
        let count = pods.receivers.len();
        if pods.is_pool() && count > 0 {
            order.push((p, 0));
            shared.extend((1..count).map(|r| (p, r)));
            continue;
        }
        let list = if count == 1 { &mut alone } else { &mut shared };
        list.extend((0..count).map(|r| (p, r)));
    }
    let (mut alone, mut shared) = (alone.into_iter(), shared.into_iter());
    loop {
        match (alone.next(), shared.next()) {
            (None, None) => break,
            (a, s) => order.extend(a.into_iter().chain(s)),
        }
    }
    order
        .get(occurrence % order.len().max(1))
        .copied()
        .unwrap_or((0, 0))
}

/// The canaries of one recovery, and when they were all accepted and all stored.
struct Canaries {
    sent: Vec<Sent>,
    accepted: Instant,
    stored: Instant,
}

/// Sends a canary to each endpoint in `affected` and waits until each is
/// accepted and in Postgres.
fn recover(
    fleet: &Fleet,
    load: &Arc<Load>,
    runtime: &Handle,
    affected: &[usize],
    fault: &str,
) -> Result<Canaries> {
    let tasks: Vec<_> = affected
        .iter()
        .map(|&endpoint| {
            let load = load.clone();
            runtime.spawn(async move { load.canary(endpoint).await })
        })
        .collect();
    let mut canaries = Vec::with_capacity(tasks.len());
    for task in tasks {
        let canary = runtime.block_on(task).map_err(|err| {
            fleet.failure(&format!("after {fault}, a canary's sender failed: {err}"))
        })?;
        if !canary.accepted() {
            return Err(fleet.failure(&format!(
                "after {fault}, canary {} was not accepted: its last answer was {}",
                canary.event.id,
                canary
                    .delivery
                    .last
                    .map_or_else(|| "none".into(), |a| a.describe())
            )));
        }
        canaries.push(canary);
    }
    let accepted = Instant::now();
    let wanted: Vec<String> = canaries
        .iter()
        .map(|c| {
            format!(
                "('{}', '{}')",
                fleet.endpoints[c.event.endpoint].key, c.event.id
            )
        })
        .collect();
    let sql = format!(
        "select count(*) from hookline.events where (endpoint, event_id) in ({})",
        wanted.join(", ")
    );
    let deadline = Instant::now() + CANARY_BOUND;
    loop {
        let found = fleet.postgres.psql(&sql).unwrap_or_default();
        if found == canaries.len().to_string() {
            return Ok(Canaries {
                sent: canaries,
                accepted,
                stored: Instant::now(),
            });
        }
        if Instant::now() > deadline {
            return Err(fleet.failure(&format!(
                "after {fault}, {found} of {} canaries were in hookline.events within {CANARY_BOUND:?}",
                canaries.len()
            )));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

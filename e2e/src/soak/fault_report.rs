//! What one fault of the schedule did, and its line in the summary.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What one fault did.
#[derive(Clone, Debug)]
pub struct FaultReport {
    /// What was done, and to which process.
    pub name: String,
    /// From the start of the fault until it was healed (the process back).
    pub down: Duration,
    /// From healed until every affected endpoint's canary was answered 200.
    pub accepted_after: Duration,
    /// From healed until those canaries were in Postgres.
    pub stored_after: Duration,
    /// From healed until that and every process was ready.
    pub recovery: Duration,
    /// 503s answered from the start of the fault until its recovery, and
    /// requests without an answer, per endpoint that had any.
    pub incidents: BTreeMap<String, (usize, usize)>,
    /// What was observed, e.g. how many requests were in flight.
    pub note: String,
    /// What went wrong in a binary (e.g. a non-zero exit after SIGTERM).
    pub findings: Vec<String>,
    /// From the start of the fault to the end of its recovery.
    pub window: Option<(Instant, Instant)>,
}

impl FaultReport {
    pub(super) fn new(name: String) -> FaultReport {
        FaultReport {
            name,
            down: Duration::ZERO,
            accepted_after: Duration::ZERO,
            stored_after: Duration::ZERO,
            recovery: Duration::ZERO,
            incidents: BTreeMap::new(),
            note: String::new(),
            findings: Vec::new(),
            window: None,
        }
    }

    /// 503s from the start of the fault until its recovery, all endpoints.
    pub fn unavailable(&self) -> usize {
        self.incidents
            .values()
            .map(|(unavailable, _)| unavailable)
            .sum()
    }

    /// Requests without an answer in the same time.
    pub fn no_answer(&self) -> usize {
        self.incidents.values().map(|(_, none)| none).sum()
    }

    /// One line: `name: down 1.2 s, 503×3 (soak/orders×3), no answer×0,
    /// recovered in 0.8 s (200 after 0.1 s, in Postgres after 0.7 s; note)`.
    pub fn summary(&self) -> String {
        let by_endpoint = |pick: fn(&(usize, usize)) -> usize| {
            let parts: Vec<String> = self
                .incidents
                .iter()
                .filter(|(_, counts)| pick(counts) > 0)
                .map(|(endpoint, counts)| format!("{endpoint}×{}", pick(counts)))
                .collect();
            if parts.is_empty() {
                String::new()
            } else {
                format!(" ({})", parts.join(", "))
            }
        };
        let note = if self.note.is_empty() {
            String::new()
        } else {
            format!("; {}", self.note)
        };
        format!(
            "{}: down {:.1} s, 503×{}{}, no answer×{}{}, recovered in {:.1} s \
             (canaries: 200 after {:.1} s, in Postgres after {:.1} s{note})",
            self.name,
            self.down.as_secs_f64(),
            self.unavailable(),
            by_endpoint(|counts| counts.0),
            self.no_answer(),
            by_endpoint(|counts| counts.1),
            self.recovery.as_secs_f64(),
            self.accepted_after.as_secs_f64(),
            self.stored_after.as_secs_f64(),
        )
    }
}

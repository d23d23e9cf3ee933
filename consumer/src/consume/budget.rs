//! The bytes a process's loops may be pulling from NATS at once.
//!
//! nats-server disconnects a client whose unread output passes its
//! `max_pending` (64 MiB by default) as a slow consumer, and every pull then
//! in flight loses its messages until `ackWait` redelivers them. A pool of
//! many backlogged endpoints pulling full batches together did just that: a
//! pool consumer starting on 1,000 endpoints × 100 events was cut off in 16
//! of 26 benchmark runs, and a quarter of the events waited 30 s.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Half nats-server's default `max_pending`: room for the one-message waits
/// of idle endpoints (not counted here) and for what the server sends besides.
pub const DEFAULT_PULL_BUDGET_BYTES: usize = 32 << 20;

/// The budget is counted in KiB.
const UNIT: usize = 1024;

/// Shared by every loop of a process; a batch pull takes its request's bytes
/// from it and gives them back once its answer is in.
#[derive(Clone, Debug)]
pub struct PullBudget {
    units: Arc<Semaphore>,
    total_units: u32,
}

impl Default for PullBudget {
    fn default() -> PullBudget {
        PullBudget::new(DEFAULT_PULL_BUDGET_BYTES)
    }
}

impl PullBudget {
    pub fn new(bytes: usize) -> PullBudget {
        let total_units = u32::try_from(bytes / UNIT)
            .unwrap_or(u32::MAX)
            .clamp(1, u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        PullBudget {
            units: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
        }
    }

    /// The most one pull may ask for: the whole budget.
    pub fn bytes(&self) -> usize {
        self.total_units as usize * UNIT
    }

    /// Waits until `bytes` (at most the whole budget) may be pulled; they are
    /// given back when the permit drops. `None` never happens (the semaphore is
    /// never closed); a caller then pulls without waiting.
    pub async fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_units);
        self.units.clone().acquire_many_owned(units).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pulls_wait_while_the_budget_is_taken_and_go_once_it_is_back() {
        let budget = PullBudget::new(4 * UNIT);
        let first = budget.reserve(3 * UNIT).await;
        assert!(first.is_some());
        let waiting = budget.reserve(2 * UNIT);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), &mut waiting)
                .await
                .is_err()
        );
        drop(first);
        assert!(waiting.await.is_some());
    }

    #[tokio::test]
    async fn a_pull_larger_than_the_budget_takes_all_of_it_and_still_goes() {
        let budget = PullBudget::new(4 * UNIT);
        assert!(budget.reserve(64 << 20).await.is_some());
    }
}

//! The bytes a process's loops may have pulled from NATS and not settled yet.
//!
//! nats-server disconnects a client whose unread output passes its
//! `max_pending` (64 MiB by default) as a slow consumer, and every pull then
//! in flight loses its messages until `ackWait` redelivers them. A pool of
//! many backlogged endpoints pulling full batches together did just that: a
//! pool consumer starting on 1,000 endpoints × 100 events was cut off in 16
//! of 26 benchmark runs, and a quarter of the events waited 30 s.
//!
//! A batch keeps what its messages weigh until it is settled: given back when
//! the pull's answer was in, the budget bounded the wire but not memory, and a
//! pool of 1,000 endpoints whose pulls outran Postgres held the whole backlog
//! (100,000 events of 1 KB: 200 to 250 MiB RSS in `pool_bench`).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Half nats-server's default `max_pending`: room for the one-message waits
/// of idle endpoints (not counted here) and for what the server sends besides.
pub const DEFAULT_PULL_BUDGET_BYTES: usize = 32 << 20;

/// The budget is counted in KiB.
const UNIT: usize = 1024;

/// Shared by every loop of a process; a batch pull takes its request's bytes
/// from it, gives back what its answer did not bring once it is in, and the
/// rest when its batch is settled.
#[derive(Clone, Debug)]
pub struct PullBudget {
    units: Arc<Semaphore>,
    total_units: u32,
    /// Batches pulled and not settled yet, when they are limited.
    batches: Option<Arc<Semaphore>>,
}

/// What one pull took from the budget; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    bytes: Option<OwnedSemaphorePermit>,
    /// Held only to be given back when dropped.
    _batch: Option<OwnedSemaphorePermit>,
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
            batches: None,
        }
    }

    /// At most `batches` batches pulled and not settled yet at once (at
    /// least one). A pool's loops pull from many streams into one Postgres
    /// pool: without it, pulls that outran Postgres kept the whole backlog
    /// in memory, each batch waiting for a connection.
    pub fn with_batch_limit(self, batches: usize) -> PullBudget {
        PullBudget {
            batches: Some(Arc::new(Semaphore::new(batches.max(1)))),
            ..self
        }
    }

    /// The most one pull may ask for: the whole budget.
    pub fn bytes(&self) -> usize {
        self.total_units as usize * UNIT
    }

    /// The same bytes, without the batch limit.
    pub fn without_batch_limit(&self) -> PullBudget {
        PullBudget {
            batches: None,
            ..self.clone()
        }
    }

    /// Waits until a batch of `bytes` (at most the whole budget) may be
    /// pulled. The semaphores are never closed; if one were, the pull would
    /// go without waiting.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        // The batch first: bytes are taken only by pulls that may go.
        let batch = match &self.batches {
            Some(batches) => batches.clone().acquire_owned().await.ok(),
            None => None,
        };
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_units);
        let bytes = self.units.clone().acquire_many_owned(units).await.ok();
        Reservation {
            bytes,
            _batch: batch,
        }
    }
}

impl Reservation {
    /// Keeps what `bytes` (a pull's answer) take, and the batch, until the
    /// batch is settled; gives the rest back now.
    pub fn keep(mut self, bytes: usize) -> Reservation {
        let units = bytes.div_ceil(UNIT).max(1);
        if let Some(permit) = self.bytes.as_mut()
            && units < permit.num_permits()
        {
            self.bytes = permit.split(units);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pulls_wait_while_the_budget_is_taken_and_go_once_it_is_back() {
        let budget = PullBudget::new(4 * UNIT);
        let first = budget.reserve(3 * UNIT).await;
        assert!(first.bytes.is_some());
        let waiting = budget.reserve(2 * UNIT);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), &mut waiting)
                .await
                .is_err()
        );
        drop(first);
        assert!(waiting.await.bytes.is_some());
    }

    #[tokio::test]
    async fn what_a_pull_did_not_bring_goes_back_at_once_the_rest_when_dropped() {
        let budget = PullBudget::new(8 * UNIT);
        let held = budget.reserve(6 * UNIT).await.keep(2 * UNIT - 10);
        assert_eq!(budget.units.available_permits(), 6);
        drop(held);
        assert_eq!(budget.units.available_permits(), 8);
        let all = budget.reserve(2 * UNIT).await.keep(64 * UNIT);
        assert_eq!(all.bytes.map(|held| held.num_permits()), Some(2));
    }

    #[tokio::test]
    async fn a_pull_waits_for_a_batch_to_be_settled_once_the_limit_is_reached() {
        let budget = PullBudget::new(8 * UNIT).with_batch_limit(1);
        let first = budget.reserve(UNIT).await.keep(UNIT);
        let second = budget.reserve(UNIT);
        tokio::pin!(second);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), &mut second)
                .await
                .is_err()
        );
        drop(first);
        second.await;
    }

    #[tokio::test]
    async fn a_pull_larger_than_the_budget_takes_all_of_it_and_still_goes() {
        let budget = PullBudget::new(4 * UNIT);
        assert!(budget.reserve(64 << 20).await.bytes.is_some());
    }
}

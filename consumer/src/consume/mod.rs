//! The processing loop: pull batches from the durable consumer and hand each
//! to a `batch` task (store in one transaction), which `settle`s every
//! message: acknowledge, retry later, or dead-letter and terminate. While the
//! database is away, batches `hold` their messages and nothing more is pulled.

mod batch;
mod budget;
mod hold;
mod item;
mod settle;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use chrono::Utc;
use futures::StreamExt;
use hookline_api::ValidatedEndpoint;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

pub use batch::{STAGES_TARGET, process_batch, process_shares};
use budget::Reservation;
pub use budget::{DEFAULT_PULL_BUDGET_BYTES, PullBudget};
pub use hold::DatabaseGate;
pub use item::Delivery;

use crate::Shutdown;
use crate::decode::Projection;
use crate::metrics::Metrics;
use crate::refetch::Refetcher;

/// What every batch task needs.
#[derive(Debug)]
pub struct Context {
    pub endpoint: ValidatedEndpoint,
    /// `namespace/name`, the `endpoint` column.
    pub key: String,
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    pub refetch: Option<Refetcher>,
    /// How the projection's state is taken from a payload.
    pub projection: Projection,
    /// Closed while the database is away: nothing more is pulled. Shared
    /// by a pool's members on one shared stream, which one loop pulls for.
    pub gate: Arc<DatabaseGate>,
    /// Ends a batch's wait for the database.
    pub shutdown: Shutdown,
    /// Ends the loop, quietly, once the stream or the durable consumer is
    /// gone: a shared-stream member's own stream, which the operator deletes
    /// once drained. Any other loop keeps retrying until it is made again.
    pub drain_until_gone: bool,
}

/// What a pull loop ([`consume`]) hands its batches to: one endpoint
/// ([`Context`]), or the members of a pool's shared stream, whose one
/// durable brings all their events.
pub trait Batches: Send + Sync + 'static {
    /// Messages one pull asks for.
    fn batch_size(&self) -> usize;
    /// The largest body one pull must be able to bring.
    fn max_body_bytes(&self) -> usize;
    /// Closed while the database is away: nothing more is pulled.
    fn gate(&self) -> &DatabaseGate;
    /// Whether the loop ends, quietly, once its stream or durable is gone
    /// ([`Context::drain_until_gone`]).
    fn drain_until_gone(&self) -> bool {
        false
    }
    /// Processes one batch end to end; never fails.
    fn process(
        self: Arc<Self>,
        deliveries: Vec<Delivery>,
    ) -> impl Future<Output = ()> + Send + 'static;
}

impl Batches for Context {
    fn batch_size(&self) -> usize {
        self.endpoint.consumer.batch_size
    }

    fn max_body_bytes(&self) -> usize {
        self.endpoint.request.max_body_bytes
    }

    fn gate(&self) -> &DatabaseGate {
        &self.gate
    }

    fn drain_until_gone(&self) -> bool {
        self.drain_until_gone
    }

    async fn process(self: Arc<Self>, deliveries: Vec<Delivery>) {
        batch::process_batch(&self, deliveries).await;
    }
}

/// How long an idle pull waits on the server for a message; also the longest
/// a shutdown waits for an idle pull to end.
const PULL_EXPIRY: Duration = Duration::from_secs(1);
/// The longest one pull (all its requests) may take: an idle pull ends
/// within `PULL_EXPIRY`, so one unanswered after this lost its answer (the
/// connection dropped, e.g. nats-server restarted) and is asked again. Kept
/// short because pulling resumes only after it.
const PULL_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed pull (e.g. "max ack pending reached" while the database is
/// down), the pause before the next one.
const PULL_RETRY_DELAY: Duration = Duration::from_millis(500);
/// One failed pull in this many is logged at `warn` (the others at `debug`):
/// about once every 30 s while pulls keep failing, not twice a second.
const PULL_FAILURES_PER_WARNING: u64 = 60;
/// With a batch in flight and no backlog, how long the loop waits for it to
/// finish before pulling the next one anyway: longer than most commits (1 to
/// 2 ms on a busy machine), so what arrives meanwhile makes one batch and
/// one commit; short, so a batch that stalls (its backend off the CPU, a slow
/// flush) holds the events behind it no longer than this.
const BATCH_IN_FLIGHT_WAIT: Duration = Duration::from_millis(5);
/// One pull may ask for this share of the budget (4 MiB of the default
/// 32): a batch holds what it brought until it is settled, so an endpoint
/// whose batches are stuck (a slow table) holds at most `concurrency`
/// eighths of the budget, and the other endpoints keep pulling.
const PULLS_PER_BUDGET: usize = 8;
/// Room for headers and the JetStream envelope on top of a body (1 MiB).
const BATCH_BYTES_OVERHEAD: usize = 1 << 20;

/// What one pull may bring in bytes: its share of the budget, without ever
/// refusing a single message as large as `request.maxBodyBytes` allows.
fn max_batch_bytes(max_body_bytes: usize, budget: &PullBudget) -> usize {
    (budget.bytes() / PULLS_PER_BUDGET).max(max_body_bytes + BATCH_BYTES_OVERHEAD)
}

/// A pull's messages and the budget they hold until their batch is settled.
struct Pulled {
    deliveries: Vec<Delivery>,
    /// Goes back to the budget when dropped.
    held: Option<Reservation>,
}

/// Consumes until `shutdown`: then stops pulling and waits for the batches in
/// progress to commit and acknowledge (or nak).
///
/// A batch is whatever is waiting when a worker is free, up to `batchSize`:
/// one message alone when the stream is quiet (lowest latency), full batches
/// under load (highest throughput). Pulls never ask for more than is taken at
/// once, so nothing sits unseen in this process until `ackWait` runs out when
/// it stops.
///
/// Up to `concurrency` batches are in progress at once while a backlog
/// drains (JetStream said a full batch more was waiting), so one batch's
/// commit overlaps the next one's fetch and work. Otherwise a batch starts
/// when the one before it is done, or after 5 ms (`BATCH_IN_FLIGHT_WAIT`): what
/// arrives meanwhile makes one batch and one commit instead of several small
/// ones, each waiting for its own flush behind the lock `NOTIFY` holds
/// through commit (notifying transactions commit one at a time), which made
/// the latency's tail.
///
/// Batch pulls take their bytes from `budget`, shared by every loop of the
/// process, and hold them until their batch is settled, so that many
/// endpoints pulling at once never make NATS cut the connection off as a
/// slow consumer, nor hold more in memory than the budget.
pub async fn consume<B: Batches>(
    ctx: Arc<B>,
    consumer: PullConsumer,
    concurrency: usize,
    budget: &PullBudget,
    mut shutdown: Shutdown,
) {
    let workers = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let mut pull_failures: u64 = 0;
    // Messages left for the durable consumer, as the last pull's last message said.
    let mut waiting: u64 = 0;
    while !shutdown.is_requested() {
        while let Some(done) = tasks.try_join_next() {
            report(done);
        }
        if !ctx.gate().wait_open(&mut shutdown).await {
            break;
        }
        let batch_size = ctx.batch_size();
        let max_bytes = max_batch_bytes(ctx.max_body_bytes(), budget);
        if !tasks.is_empty() && waiting < batch_size as u64 {
            tokio::select! {
                _ = shutdown.wait() => break,
                Some(done) = tasks.join_next() => {
                    report(done);
                    continue;
                }
                () = tokio::time::sleep(BATCH_IN_FLIGHT_WAIT) => {}
            }
        }
        let permit = tokio::select! {
            _ = shutdown.wait() => break,
            permit = workers.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        // Waits while the pool's batches are all taken (Postgres is slow or
        // away): a shutdown must not wait behind them.
        let reserved = tokio::select! {
            _ = shutdown.wait() => break,
            reserved = budget.reserve(max_bytes) => reserved,
        };
        let pulled = match next_batch(&consumer, batch_size, max_bytes, reserved).await {
            Ok(pulled) => {
                pull_failures = 0;
                if pulled.deliveries.is_empty() {
                    continue;
                }
                pulled
            }
            Err(err) => {
                if ctx.drain_until_gone() && gone(&consumer).await {
                    info!(cause = %err, "the drained stream or its durable consumer is gone: done");
                    break;
                }
                // E.g. "max ack pending reached" during a database outage: say
                // so once a while, not twice a second.
                pull_failures += 1;
                if pull_failures % PULL_FAILURES_PER_WARNING == 1 {
                    warn!(cause = %err, pull_failures, "cannot pull from the durable consumer; retrying");
                } else {
                    debug!(cause = %err, pull_failures, "cannot pull from the durable consumer; retrying");
                }
                if shutdown.sleep(PULL_RETRY_DELAY).await {
                    continue;
                }
                break;
            }
        };
        waiting = pulled
            .deliveries
            .last()
            .and_then(|delivery| delivery.message.info().ok())
            .map_or(0, |info| info.pending);
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let Pulled { deliveries, held } = pulled;
            ctx.process(deliveries).await;
            drop(held);
            drop(permit);
        });
    }
    let in_progress = tasks.len();
    if in_progress > 0 {
        info!(in_progress, "finishing batches in progress");
    }
    while let Some(done) = tasks.join_next().await {
        report(done);
    }
}

/// Whether the durable consumer, or its whole stream, no longer exists (any
/// other answer, or none, is not taken for it).
async fn gone(consumer: &PullConsumer) -> bool {
    use jetstream::context::ConsumerInfoErrorKind;
    match consumer.get_info().await {
        Ok(_) => false,
        Err(err) => matches!(
            err.kind(),
            ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
        ),
    }
}

/// Logs a batch task that panicked (its messages are redelivered after `ackWait`).
fn report(done: Result<(), tokio::task::JoinError>) {
    if let Err(err) = done {
        warn!(cause = %err, "a batch task failed");
    }
}

/// Up to `size` messages (and about `max_bytes`, `reserved` from the budget,
/// of which what they weigh stays held): those waiting now; when none, the
/// first one to arrive within [`PULL_EXPIRY`], alone (empty when none): it
/// starts at once rather than a round trip later with the few that came with
/// it, which the next pull takes. That wait is not counted in the budget: it
/// brings one message.
///
/// A pull is never cancelled: messages already on their way would sit unseen
/// until `ackWait` ran out. Only one whose answer was lost (the connection
/// dropped mid-request) is given up after [`PULL_TIMEOUT`].
async fn next_batch(
    consumer: &PullConsumer,
    size: usize,
    max_bytes: usize,
    reserved: Reservation,
) -> Result<Pulled, async_nats::Error> {
    let deliveries = answered(async {
        let fetch = consumer
            .fetch()
            .max_messages(size)
            .max_bytes(max_bytes)
            .messages()
            .await?;
        Ok(take(fetch).await)
    })
    .await?
    .0;
    if !deliveries.is_empty() {
        let bytes = deliveries.iter().map(|d| d.message.length).sum();
        return Ok(Pulled {
            deliveries,
            held: Some(reserved.keep(bytes)),
        });
    }
    drop(reserved);
    let (deliveries, ended) = answered(async {
        let first = consumer
            .batch()
            .max_messages(1)
            .expires(PULL_EXPIRY)
            .messages()
            .await?;
        Ok(take(first).await)
    })
    .await?;
    match ended {
        // A status instead of a message, or with it: wait before asking again.
        Some(err) if deliveries.is_empty() => Err(err),
        _ => Ok(Pulled {
            deliveries,
            held: None,
        }),
    }
}

/// `pull`'s answer, or an error once [`PULL_TIMEOUT`] passed without one.
async fn answered<T>(
    pull: impl Future<Output = Result<T, async_nats::Error>>,
) -> Result<T, async_nats::Error> {
    tokio::time::timeout(PULL_TIMEOUT, pull)
        .await
        .unwrap_or_else(|_| Err("pull request got no answer in time".into()))
}

/// Every message of a finished pull request, each with the time it came,
/// and the status that ended it early, if any (e.g. "max ack pending reached").
async fn take(
    mut messages: jetstream::consumer::pull::Batch,
) -> (Vec<Delivery>, Option<async_nats::Error>) {
    let mut batch = Vec::new();
    while let Some(message) = messages.next().await {
        match message {
            Ok(message) => batch.push(Delivery {
                message,
                delivered_at: Utc::now(),
            }),
            Err(err) => return (batch, Some(err)),
        }
    }
    (batch, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_always_fits_the_largest_allowed_body() {
        let budget = PullBudget::default();
        assert_eq!(max_batch_bytes(1 << 20, &budget), budget.bytes() / 8);
        let largest = hookline_api::defaults::MAX_BODY_BYTES_LIMIT as usize;
        assert!(max_batch_bytes(largest, &budget) > largest);
    }

    #[test]
    fn a_pull_asks_for_its_share_of_the_budget_unless_one_body_needs_more() {
        let budget = PullBudget::new(64 << 20);
        assert_eq!(max_batch_bytes(64 << 10, &budget), 8 << 20);
        assert_eq!(
            max_batch_bytes(8 << 20, &budget),
            (8 << 20) + BATCH_BYTES_OVERHEAD
        );
    }
}

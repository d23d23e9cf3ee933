//! The processing loop: pull batches from the durable consumer, store each
//! batch in one transaction, then acknowledge; retry, dead-letter or terminate
//! what could not be stored.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use hookline_api::ValidatedEndpoint;
use rand::Rng;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::Shutdown;
use crate::decode::{self, Event, Undecodable, headers_json};
use crate::metrics::Metrics;
use crate::refetch::{RefetchError, Refetcher};
use crate::store::{self, DeadLetter};

/// What every batch task needs.
#[derive(Debug)]
pub struct Context {
    pub endpoint: ValidatedEndpoint,
    /// `namespace/name`, the `endpoint` column.
    pub key: String,
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    pub refetch: Option<Refetcher>,
}

/// How long an idle pull waits on the server for a message; also the longest
/// a shutdown waits for an idle pull to end.
const PULL_EXPIRY: Duration = Duration::from_secs(1);
/// The longest one pull (all its requests) may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(15);
/// Provider calls in flight per batch.
const REFETCH_CONCURRENCY: usize = 8;

/// Consumes until `shutdown`: then stops pulling and waits for the batches in
/// progress to commit and acknowledge (or nak).
///
/// A batch is whatever is waiting when a worker is free, up to `batchSize`:
/// one message alone when the stream is quiet (lowest latency), full batches
/// under load (highest throughput). Pulls never ask for more than is taken at
/// once, so nothing sits unseen in this process until `ackWait` runs out when
/// it stops. Up to `concurrency` batches are in progress at once, so one
/// batch's commit overlaps the next one's fetch and work.
pub async fn consume(
    ctx: Arc<Context>,
    consumer: PullConsumer,
    concurrency: usize,
    mut shutdown: Shutdown,
) {
    let batch_size = ctx.endpoint.consumer.batch_size;
    // Bounds the memory of one batch without ever refusing one large message.
    let max_bytes = (2 * ctx.endpoint.request.max_body_bytes + (1 << 20)).max(16 << 20);
    let workers = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let mut pull_failures: u64 = 0;
    while !shutdown.is_requested() {
        while let Some(done) = tasks.try_join_next() {
            if let Err(err) = done {
                warn!(cause = %err, "a batch task failed");
            }
        }
        let permit = tokio::select! {
            _ = shutdown.wait() => break,
            permit = workers.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        // Never cancelled: messages already on their way would sit unseen
        // until `ackWait` ran out. An idle pull ends within `PULL_EXPIRY`, and
        // what it brings is processed like any batch.
        // The timeout only guards against a pull whose answer was lost
        // (e.g. the connection dropped mid-request).
        let batch =
            tokio::time::timeout(PULL_TIMEOUT, next_batch(&consumer, batch_size, max_bytes))
                .await
                .unwrap_or_else(|_| Err("pull request got no answer in time".into()));
        let batch = match batch {
            Ok(batch) => {
                pull_failures = 0;
                if batch.is_empty() {
                    continue;
                }
                batch
            }
            Err(err) => {
                // E.g. "max ack pending reached" during a database outage: say
                // so once a while, not twice a second.
                pull_failures += 1;
                if pull_failures % 60 == 1 {
                    warn!(cause = %err, pull_failures, "cannot pull from the durable consumer; retrying");
                } else {
                    debug!(cause = %err, pull_failures, "cannot pull from the durable consumer; retrying");
                }
                if shutdown.sleep(Duration::from_millis(500)).await {
                    continue;
                }
                break;
            }
        };
        let ctx = ctx.clone();
        tasks.spawn(async move {
            process_batch(&ctx, batch).await;
            drop(permit);
        });
    }
    let in_progress = tasks.len();
    if in_progress > 0 {
        info!(in_progress, "finishing batches in progress");
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(err) = done {
            warn!(cause = %err, "a batch task failed");
        }
    }
}

/// Up to `size` messages (and about `max_bytes`): those waiting now; when none, the first one to
/// arrive within [`PULL_EXPIRY`] plus any that came with it (empty when none).
async fn next_batch(
    consumer: &PullConsumer,
    size: usize,
    max_bytes: usize,
) -> Result<Vec<jetstream::Message>, async_nats::Error> {
    let fetch = |size| {
        consumer
            .fetch()
            .max_messages(size)
            .max_bytes(max_bytes)
            .messages()
    };
    let (batch, _) = take(fetch(size).await?).await;
    if !batch.is_empty() {
        return Ok(batch);
    }
    let first = consumer
        .batch()
        .max_messages(1)
        .expires(PULL_EXPIRY)
        .messages()
        .await?;
    let (mut batch, ended) = take(first).await;
    if batch.is_empty() {
        // A status instead of a message or a timeout: wait before asking again.
        return ended.map_or(Ok(batch), Err);
    }
    if size > 1
        && let Ok(more) = fetch(size - 1).await
    {
        // Failing to get more is fine: the one in hand is processed.
        batch.extend(take(more).await.0);
    }
    Ok(batch)
}

/// Every message of a finished pull request, and the status that ended it
/// early, if any (e.g. "max ack pending reached").
async fn take(
    mut messages: jetstream::consumer::pull::Batch,
) -> (Vec<jetstream::Message>, Option<async_nats::Error>) {
    let mut batch = Vec::new();
    while let Some(message) = messages.next().await {
        match message {
            Ok(message) => batch.push(message),
            Err(err) => return (batch, Some(err)),
        }
    }
    (batch, None)
}

/// One pulled message and what we learnt about it.
struct Item {
    message: jetstream::Message,
    delivered: u64,
    stream_sequence: u64,
    decoded: Result<Event, Undecodable>,
    outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// Not decided yet.
    Pending,
    Stored,
    Duplicate,
    /// Worth another delivery.
    Transient(String),
    /// No delivery will ever succeed.
    Permanent(String),
}

/// Processes one batch end to end; never fails (every message ends acked,
/// nak'ed or dead-lettered and terminated; when even that fails, JetStream
/// redelivers after `ackWait`).
pub async fn process_batch(ctx: &Context, messages: Vec<jetstream::Message>) {
    let started = Instant::now();
    let metrics = &ctx.metrics;
    metrics.batches_in_flight.inc();
    metrics.batch_size.observe(messages.len() as f64);
    let first_sequence = messages
        .first()
        .and_then(|m| m.info().ok())
        .map_or(0, |info| info.stream_sequence);
    let span = info_span!("batch", size = messages.len(), first_sequence);
    async {
        let mut items = decode_all(ctx, messages);
        store_items(ctx, &mut items).await;
        settle(ctx, items).await;
    }
    .instrument(span)
    .await;
    metrics
        .batch_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.batches_in_flight.dec();
}

fn decode_all(ctx: &Context, messages: Vec<jetstream::Message>) -> Vec<Item> {
    let mut pending = None;
    let items = messages
        .into_iter()
        .map(|message| {
            let (delivered, stream_sequence) = match message.info() {
                Ok(info) => {
                    pending = Some(info.pending);
                    (
                        u64::try_from(info.delivered).unwrap_or(1).max(1),
                        info.stream_sequence,
                    )
                }
                Err(_) => (1, 0),
            };
            let published = message
                .reply
                .as_ref()
                .and_then(|reply| published_at(reply.as_str()))
                .unwrap_or_else(Utc::now);
            let decoded = {
                let _span = tracing::debug_span!("message", stream_sequence).entered();
                decode::decode(
                    &ctx.endpoint,
                    message.subject.as_str(),
                    message.headers.as_ref(),
                    &message.payload,
                    published,
                )
            };
            let outcome = match &decoded {
                Ok(_) => Outcome::Pending,
                Err(err) => Outcome::Permanent(err.to_string()),
            };
            Item {
                message,
                delivered,
                stream_sequence,
                decoded,
                outcome,
            }
        })
        .collect();
    if let Some(pending) = pending {
        ctx.metrics
            .jetstream_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }
    items
}

/// When JetStream stored the message: the timestamp token (nanoseconds) of
/// the ack subject, `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`
/// (or the longer form with domain and account hash).
fn published_at(reply: &str) -> Option<DateTime<Utc>> {
    let tokens: Vec<&str> = reply.split('.').collect();
    let token = match tokens.len() {
        9 => tokens[7],
        n if n >= 11 => tokens[9],
        _ => return None,
    };
    let nanos: i64 = token.parse().ok()?;
    Some(DateTime::from_timestamp_nanos(nanos))
}

/// Refetches, then writes the decodable messages in one transaction (falling
/// back to one transaction per message when a message's data breaks the batch).
async fn store_items(ctx: &Context, items: &mut [Item]) {
    // The first message of each event id is stored; later ones in the same
    // batch share its fate as duplicates.
    let mut first_of: HashMap<String, usize> = HashMap::new();
    let mut duplicate_of: Vec<(usize, usize)> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        if let Ok(event) = &item.decoded {
            match first_of.get(&event.event_id) {
                Some(&first) => duplicate_of.push((index, first)),
                None => {
                    first_of.insert(event.event_id.clone(), index);
                }
            }
        }
    }
    let mut primaries: Vec<usize> = first_of.values().copied().collect();
    primaries.sort_unstable();

    let states = match &ctx.refetch {
        Some(refetcher) => refetch_states(refetcher, items, &primaries).await,
        None => HashMap::new(),
    };
    let mut refetched = HashMap::new();
    for &index in &primaries {
        let item = &mut items[index];
        let Ok(event) = &item.decoded else { continue };
        let Some(object_id) = &event.object_id else {
            continue;
        };
        match states.get(object_id) {
            Some(Ok(state)) => {
                refetched.insert(object_id.clone(), Some(state.clone()));
            }
            Some(Err(RefetchError::Transient(message))) => {
                item.outcome = Outcome::Transient(message.clone());
            }
            Some(Err(RefetchError::Permanent(message))) => {
                item.outcome = Outcome::Permanent(message.clone());
            }
            None => {}
        }
    }

    let writable: Vec<usize> = primaries
        .into_iter()
        .filter(|&index| items[index].outcome == Outcome::Pending)
        .collect();
    if !writable.is_empty() {
        match write(ctx, items, &writable, &refetched).await {
            Ok(()) => {}
            Err(err) if !store::is_transient(&err) && writable.len() > 1 => {
                ctx.metrics.batch_failures.inc();
                warn!(cause = %err, "batch rejected by the database; storing its messages one by one");
                for &index in &writable {
                    if let Err(err) = write(ctx, items, &[index], &refetched).await {
                        items[index].outcome = failure(&err);
                    }
                }
            }
            Err(err) => {
                ctx.metrics.batch_failures.inc();
                warn!(cause = %err, "batch transaction failed");
                let outcome = failure(&err);
                for &index in &writable {
                    items[index].outcome = outcome.clone();
                }
            }
        }
    }
    for (index, first) in duplicate_of {
        items[index].outcome = match &items[first].outcome {
            Outcome::Stored | Outcome::Duplicate => Outcome::Duplicate,
            other => other.clone(),
        };
    }
}

fn failure(err: &sqlx::Error) -> Outcome {
    if store::is_transient(err) {
        Outcome::Transient(format!("database: {err}"))
    } else {
        Outcome::Permanent(format!("database rejected the event: {err}"))
    }
}

/// Writes the events at `indexes` in one transaction and records each outcome.
async fn write(
    ctx: &Context,
    items: &mut [Item],
    indexes: &[usize],
    states: &HashMap<String, Option<String>>,
) -> Result<(), sqlx::Error> {
    let events: Vec<&Event> = indexes
        .iter()
        .filter_map(|&index| items[index].decoded.as_ref().ok())
        .collect();
    let deliveries: HashMap<String, i32> = indexes
        .iter()
        .filter_map(|&index| {
            let item = &items[index];
            item.decoded.as_ref().ok().map(|event| {
                (
                    event.event_id.clone(),
                    i32::try_from(item.delivered).unwrap_or(i32::MAX),
                )
            })
        })
        .collect();
    let written = match store::write_batch(&ctx.pool, &ctx.key, &events, &deliveries, states).await
    {
        Ok(written) => written,
        Err(crate::Error::Database(err)) => return Err(err),
        Err(other) => return Err(sqlx::Error::Protocol(other.to_string())),
    };
    let committed = Utc::now();
    let metrics = &ctx.metrics;
    for &index in indexes {
        let item = &mut items[index];
        let Ok(event) = &item.decoded else { continue };
        if written.inserted.contains(&event.event_id) {
            item.outcome = Outcome::Stored;
            metrics.processed.inc();
            let latency = (committed - event.received_at)
                .num_microseconds()
                .unwrap_or(0);
            metrics
                .event_latency_seconds
                .observe(latency.max(0) as f64 / 1e6);
            if written.out_of_order.contains(&event.event_id) {
                metrics.out_of_order_ignored.inc();
                debug!(event_id = %event.event_id, "older than the stored state; projection unchanged");
            }
        } else {
            item.outcome = Outcome::Duplicate;
        }
    }
    Ok(())
}

/// The current state of each object the batch's events are about, one call
/// per object.
async fn refetch_states(
    refetcher: &Refetcher,
    items: &[Item],
    primaries: &[usize],
) -> HashMap<String, Result<String, RefetchError>> {
    let objects: HashSet<String> = primaries
        .iter()
        .filter(|&&index| items[index].outcome == Outcome::Pending)
        .filter_map(|&index| items[index].decoded.as_ref().ok()?.object_id.clone())
        .collect();
    futures::stream::iter(objects)
        .map(|object_id| async move {
            let state = refetcher.fetch(&object_id).await;
            (object_id, state)
        })
        .buffer_unordered(REFETCH_CONCURRENCY)
        .collect()
        .await
}

/// Acknowledges what is stored; retries, or dead-letters then terminates, the rest.
async fn settle(ctx: &Context, items: Vec<Item>) {
    let settings = &ctx.endpoint.consumer;
    let max_deliver = u64::try_from(settings.max_deliver).unwrap_or(1);
    let metrics = &ctx.metrics;
    let mut dead: Vec<(Item, DeadLetter)> = Vec::new();
    for item in items {
        match &item.outcome {
            Outcome::Stored => ack(&item, AckKind::Ack).await,
            Outcome::Duplicate => {
                metrics.duplicates.inc();
                ack(&item, AckKind::Ack).await;
            }
            Outcome::Transient(error) if item.delivered < max_deliver => {
                let delay = jittered(settings.retry_delay(item.delivered));
                debug!(
                    stream_sequence = item.stream_sequence,
                    delivered = item.delivered,
                    ?delay,
                    %error,
                    "will retry"
                );
                metrics.retries.inc();
                ack(&item, AckKind::Nak(Some(delay))).await;
            }
            Outcome::Transient(error) => {
                let error = format!("gave up after {} deliveries: {error}", item.delivered);
                let letter = dead_letter(&item, error);
                dead.push((item, letter));
            }
            Outcome::Permanent(error) => {
                let letter = dead_letter(&item, error.clone());
                dead.push((item, letter));
            }
            Outcome::Pending => {
                // Unreachable by construction; never acknowledge what was not stored.
                ack(&item, AckKind::Nak(None)).await;
            }
        }
    }
    if dead.is_empty() {
        return;
    }
    let letters: Vec<DeadLetter> = dead.iter().map(|(_, letter)| letter.clone()).collect();
    match store::write_dead_letters(&ctx.pool, &ctx.key, &letters).await {
        Ok(()) => {
            for (item, letter) in dead {
                warn!(
                    event_id = letter.event_id.as_deref().unwrap_or(""),
                    stream_sequence = item.stream_sequence,
                    deliveries = letter.deliveries,
                    error = %letter.error,
                    "dead-lettered"
                );
                metrics.dead_letters.inc();
                ack(&item, AckKind::Term).await;
            }
        }
        Err(err) => {
            warn!(cause = %err, count = dead.len(), "cannot write dead letters; retrying them later");
            for (item, _) in dead {
                metrics.retries.inc();
                let delay = jittered(settings.retry_delay(item.delivered));
                ack(&item, AckKind::Nak(Some(delay))).await;
            }
        }
    }
}

fn dead_letter(item: &Item, error: String) -> DeadLetter {
    let headers = item.message.headers.as_ref();
    let decoded = item.decoded.as_ref().ok();
    DeadLetter {
        // An id too long for the index is kept in `headers` only.
        event_id: decoded
            .map(|e| e.event_id.clone())
            .or_else(|| decode::event_id(headers).map(str::to_owned))
            .filter(|id| id.len() <= decode::MAX_ID_BYTES && !id.contains('\0')),
        event_type: decoded.map(|e| e.event_type.clone()).or_else(|| {
            decode::header(headers, hookline_api::headers::EVENT_TYPE).map(decode::without_nul)
        }),
        subject: item.message.subject.to_string(),
        stream_sequence: i64::try_from(item.stream_sequence).unwrap_or(i64::MAX),
        headers: headers_json(headers).to_string(),
        payload: item.message.payload.to_vec(),
        error: decode::without_nul(&error),
        deliveries: i32::try_from(item.delivered).unwrap_or(i32::MAX),
    }
}

async fn ack(item: &Item, kind: AckKind) {
    if let Err(err) = item.message.ack_with(kind).await {
        // JetStream redelivers after ackWait; storing is idempotent.
        warn!(cause = %err, stream_sequence = item.stream_sequence, ?kind, "cannot acknowledge");
    }
}

/// `delay` ± 20 %, so messages that failed together do not retry together.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::rng().random_range(0.8..1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publish_time_comes_from_the_ack_subject() {
        let v1 = "$JS.ACK.S.C.1.2.3.1700000000000000000.0";
        assert_eq!(published_at(v1).map(|t| t.timestamp()), Some(1_700_000_000));
        let v2 = "$JS.ACK.dom.hash.S.C.1.2.3.1700000000000000000.0.tok";
        assert_eq!(published_at(v2).map(|t| t.timestamp()), Some(1_700_000_000));
        assert_eq!(published_at("_INBOX.x"), None);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..100 {
            let delay = jittered(Duration::from_secs(10));
            assert!(delay >= Duration::from_secs(8) && delay <= Duration::from_secs(12));
        }
    }
}

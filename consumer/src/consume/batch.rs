//! One batch, end to end: decode every message, refetch objects when the
//! endpoint asks, store the batch in one transaction (message by message when
//! one message's data breaks it), hold it while the database is away, then
//! settle each message by its outcome.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tracing::{Instrument, debug, info_span, warn};

use super::Context;
use super::hold::hold;
use super::item::{Delivery, Item, Outcome};
use super::settle::settle;
use crate::decode::{self, Event};
use crate::refetch::{RefetchError, Refetcher};
use crate::store::{self, WriteError};

/// Provider calls in flight per batch.
const REFETCH_CONCURRENCY: usize = 8;

/// The target of the `debug` line written per stored event with the times
/// of its stages (microseconds since the Unix epoch): `received_at`
/// (the receiver's `Hookline-Received-At`), `published` (stored by
/// JetStream), `delivered` (a pull brought it here), `started` (its batch
/// began), `committed`. Off unless asked for (`RUST_LOG=…,hookline_consumer::stages=debug`):
/// `latency_bench` reads it to break accept → commit down by stage.
pub const STAGES_TARGET: &str = "hookline_consumer::stages";

/// Processes one batch end to end; never fails (every message ends acked,
/// nak'ed or dead-lettered and terminated; when even that fails, JetStream
/// redelivers after `ackWait`).
pub async fn process_batch(ctx: &Context, deliveries: Vec<Delivery>) {
    let started = Instant::now();
    let started_at = Utc::now();
    let metrics = &ctx.metrics;
    metrics.batches_in_flight.inc();
    metrics.batch_size.observe(deliveries.len() as f64);
    let first_sequence = deliveries
        .first()
        .and_then(|d| d.message.info().ok())
        .map_or(0, |info| info.stream_sequence);
    let span = info_span!("batch", size = deliveries.len(), first_sequence);
    async {
        let mut items = decode_all(ctx, deliveries);
        store_items(ctx, &mut items, started_at).await;
        while items
            .iter()
            .any(|item| matches!(item.outcome, Outcome::Unavailable(_)))
            && hold(ctx, &items).await
        {
            for item in &mut items {
                if matches!(item.outcome, Outcome::Unavailable(_)) {
                    item.outcome = Outcome::Pending;
                }
            }
            store_items(ctx, &mut items, started_at).await;
        }
        settle(ctx, items).await;
    }
    .instrument(span)
    .await;
    metrics
        .batch_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.batches_in_flight.dec();
}

fn decode_all(ctx: &Context, deliveries: Vec<Delivery>) -> Vec<Item> {
    let mut pending = None;
    let items = deliveries
        .into_iter()
        .map(|delivery| {
            let Delivery {
                message,
                delivered_at,
            } = delivery;
            let (delivered, stream_sequence, published) = match message.info() {
                Ok(info) => {
                    pending = Some(info.pending);
                    (
                        u64::try_from(info.delivered).unwrap_or(1).max(1),
                        info.stream_sequence,
                        i64::try_from(info.published.unix_timestamp_nanos())
                            .ok()
                            .map(DateTime::from_timestamp_nanos),
                    )
                }
                Err(_) => (1, 0, None),
            };
            let decoded = {
                let _span = tracing::debug_span!("message", stream_sequence).entered();
                decode::decode(
                    &ctx.endpoint,
                    message.subject.as_str(),
                    message.headers.as_ref(),
                    &message.payload,
                    published.unwrap_or(delivered_at),
                )
            };
            // First deliveries only: a redelivery's wait is its retry delay.
            if delivered == 1
                && let Ok(event) = &decoded
            {
                ctx.metrics
                    .delivery_latency_seconds
                    .observe(seconds_between(event.received_at, delivered_at));
            }
            let outcome = match &decoded {
                Ok(_) => Outcome::Pending,
                Err(err) => Outcome::Permanent(err.to_string()),
            };
            Item {
                message,
                delivered,
                stream_sequence,
                published,
                delivered_at,
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

/// Refetches, then writes the decodable messages in one transaction (falling
/// back to one transaction per message when a message's data breaks the batch).
async fn store_items(ctx: &Context, items: &mut [Item], started_at: DateTime<Utc>) {
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
                item.outcome = provider_unavailable(ctx, event, message);
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
        match write(ctx, items, &writable, &refetched, started_at).await {
            Ok(()) => {}
            Err(err @ WriteError::Rejected(_)) if writable.len() > 1 => {
                ctx.metrics.batch_failures.inc();
                warn!(cause = %err, "batch rejected by the database; storing its messages one by one");
                for &index in &writable {
                    if let Err(err) = write(ctx, items, &[index], &refetched, started_at).await {
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

fn failure(err: &WriteError) -> Outcome {
    match err {
        WriteError::Unavailable(_) => Outcome::Unavailable(err.to_string()),
        WriteError::Transient(_) => Outcome::Transient(err.to_string()),
        WriteError::Rejected(_) => Outcome::Permanent(err.to_string()),
    }
}

/// The provider's API is away: not the event's fault, so it is retried for
/// `refetch.retryFor` after the receiver accepted it, then dead-lettered.
fn provider_unavailable(ctx: &Context, event: &Event, message: &str) -> Outcome {
    let retry_for = ctx
        .endpoint
        .consumer
        .refetch
        .as_ref()
        .map_or_else(Default::default, |refetch| refetch.retry_for);
    let waited = (Utc::now() - event.received_at)
        .to_std()
        .unwrap_or_default();
    if waited < retry_for {
        Outcome::Later(message.to_owned())
    } else {
        Outcome::Permanent(format!(
            "the provider's API failed for {} (refetch.retryFor): {message}",
            humanize(retry_for)
        ))
    }
}

/// `90s` → `1m30s`, as durations are written in the spec.
fn humanize(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs();
    match (seconds / 3600, seconds % 3600 / 60, seconds % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// Writes the events at `indexes` in one transaction and records each outcome.
async fn write(
    ctx: &Context,
    items: &mut [Item],
    indexes: &[usize],
    states: &HashMap<String, Option<String>>,
    started_at: DateTime<Utc>,
) -> Result<(), WriteError> {
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
    let written = store::write_batch(
        &ctx.pool,
        &ctx.key,
        &events,
        &deliveries,
        states,
        &ctx.projection,
    )
    .await?;
    let committed = Utc::now();
    let metrics = &ctx.metrics;
    let log_stages = tracing::enabled!(target: STAGES_TARGET, tracing::Level::DEBUG);
    for &index in indexes {
        let item = &mut items[index];
        let Ok(event) = &item.decoded else { continue };
        if written.inserted.contains(&event.event_id) {
            item.outcome = Outcome::Stored;
            metrics.processed.inc();
            metrics
                .event_latency_seconds
                .observe(seconds_between(event.received_at, committed));
            if log_stages {
                let micros = |at: DateTime<Utc>| at.timestamp_micros();
                debug!(
                    target: STAGES_TARGET,
                    event_id = %event.event_id,
                    received_at = micros(event.received_at),
                    published = item.published.map(micros),
                    delivered = micros(item.delivered_at),
                    started = micros(started_at),
                    committed = micros(committed),
                    "stages"
                );
            }
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

/// Seconds from `from` to `to`, never negative (the receiver's clock may be
/// ahead of this one).
fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6
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

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
    process_shares(vec![(ctx, deliveries)]).await;
}

/// [`process_batch`] for a batch of many endpoints' messages (a pool's
/// shared stream), each share with its endpoint's [`Context`]: decoded,
/// retried, dead-lettered and counted as that endpoint says, and written in
/// one transaction with the others. The contexts share one database, gate
/// and shutdown (the first share's hold the batch while the database is away).
pub async fn process_shares(shares: Vec<(&Context, Vec<Delivery>)>) {
    let started = Instant::now();
    let started_at = Utc::now();
    let mut size = 0;
    for (ctx, deliveries) in &shares {
        ctx.metrics.batches_in_flight.inc();
        ctx.metrics.batch_size.observe(deliveries.len() as f64);
        size += deliveries.len();
    }
    let first_sequence = shares
        .first()
        .and_then(|(_, deliveries)| deliveries.first())
        .and_then(|d| d.message.info().ok())
        .map_or(0, |info| info.stream_sequence);
    let contexts: Vec<&Context> = shares.iter().map(|(ctx, _)| *ctx).collect();
    let span = info_span!("batch", size, first_sequence, endpoints = shares.len());
    async {
        let mut parts: Vec<Part<'_>> = shares
            .into_iter()
            .map(|(ctx, deliveries)| Part {
                ctx,
                items: decode_all(ctx, deliveries),
                path: ctx.projection.path_json(),
            })
            .collect();
        store_parts(&mut parts, started_at).await;
        while let Some(first) = parts.first() {
            let held: Vec<&Item> = parts
                .iter()
                .flat_map(|part| &part.items)
                .filter(|item| matches!(item.outcome, Outcome::Unavailable(_)))
                .collect();
            if held.is_empty() || !hold(first.ctx, &held).await {
                break;
            }
            for item in parts.iter_mut().flat_map(|part| &mut part.items) {
                if matches!(item.outcome, Outcome::Unavailable(_)) {
                    item.outcome = Outcome::Pending;
                }
            }
            store_parts(&mut parts, started_at).await;
        }
        for part in parts {
            settle(part.ctx, part.items).await;
        }
    }
    .instrument(span)
    .await;
    for ctx in contexts {
        ctx.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        ctx.metrics.batches_in_flight.dec();
    }
}

/// One endpoint's messages of a batch.
struct Part<'a> {
    ctx: &'a Context,
    items: Vec<Item>,
    /// The endpoint's projection path, as the write statement takes it.
    path: Option<String>,
}

/// What a part writes, once its duplicates and refetches are sorted out.
struct Prepared {
    /// Items to write (the first of each event id, nothing decided yet).
    writable: Vec<usize>,
    /// Later items of an event id, and the first one they share a fate with.
    duplicate_of: Vec<(usize, usize)>,
    /// Object id → the state its refetch gave.
    refetched: HashMap<String, Option<String>>,
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
    // A shared stream's pending count is the pool's, not the member's.
    if let Some(pending) = pending.filter(|_| ctx.endpoint.stream.shared.is_none()) {
        ctx.metrics
            .jetstream_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }
    items
}

/// Refetches, then writes the decodable messages of every part in one
/// transaction (falling back to one transaction per message when a
/// message's data breaks the batch).
async fn store_parts(parts: &mut [Part<'_>], started_at: DateTime<Utc>) {
    let mut prepared = Vec::with_capacity(parts.len());
    for part in parts.iter_mut() {
        prepared.push(prepare(part).await);
    }
    let writable: Vec<(usize, usize)> = prepared
        .iter()
        .enumerate()
        .flat_map(|(p, prepared)| prepared.writable.iter().map(move |&i| (p, i)))
        .collect();
    if !writable.is_empty() {
        match write(parts, &prepared, &writable, started_at).await {
            Ok(()) => {}
            Err(err @ WriteError::Rejected(_)) if writable.len() > 1 => {
                warn!(cause = %err, "batch rejected by the database; storing its messages one by one");
                // Counted for the endpoints whose own messages failed: one
                // member's bad data is not another's failure.
                let mut failed = vec![false; parts.len()];
                for &one in &writable {
                    if let Err(err) = write(parts, &prepared, &[one], started_at).await {
                        parts[one.0].items[one.1].outcome = failure(&err);
                        failed[one.0] = true;
                    }
                }
                count_failure(parts, &failed);
            }
            Err(err) => {
                let failed: Vec<bool> = prepared.iter().map(|p| !p.writable.is_empty()).collect();
                count_failure(parts, &failed);
                warn!(cause = %err, "batch transaction failed");
                let outcome = failure(&err);
                for &(p, i) in &writable {
                    parts[p].items[i].outcome = outcome.clone();
                }
            }
        }
    }
    for (part, prepared) in parts.iter_mut().zip(prepared) {
        for (index, first) in prepared.duplicate_of {
            part.items[index].outcome = match &part.items[first].outcome {
                Outcome::Stored | Outcome::Duplicate => Outcome::Duplicate,
                other => other.clone(),
            };
        }
    }
}

/// A failed batch transaction, counted for each endpoint marked `failed`.
fn count_failure(parts: &[Part<'_>], failed: &[bool]) {
    for (part, _) in parts.iter().zip(failed).filter(|(_, failed)| **failed) {
        part.ctx.metrics.batch_failures.inc();
    }
}

/// Sorts out a part's duplicates (the first message of each event id is
/// stored; later ones in the same batch share its fate) and refetches.
async fn prepare(part: &mut Part<'_>) -> Prepared {
    let ctx = part.ctx;
    let items = &mut part.items;
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
    let writable = primaries
        .into_iter()
        .filter(|&index| items[index].outcome == Outcome::Pending)
        .collect();
    Prepared {
        writable,
        duplicate_of,
        refetched,
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

/// Writes the events at `writable` (part, item) in one transaction and
/// records each outcome.
async fn write(
    parts: &mut [Part<'_>],
    prepared: &[Prepared],
    writable: &[(usize, usize)],
    started_at: DateTime<Utc>,
) -> Result<(), WriteError> {
    let written = {
        let rows: Vec<store::Row<'_>> = writable
            .iter()
            .filter_map(|&(p, i)| {
                let part = &parts[p];
                let item = &part.items[i];
                let event = item.decoded.as_ref().ok()?;
                let state = match event
                    .object_id
                    .as_deref()
                    .and_then(|id| prepared[p].refetched.get(id))
                {
                    Some(state) => state.as_deref(),
                    None => event.state.as_deref(),
                };
                Some(store::Row {
                    endpoint: &part.ctx.key,
                    event,
                    deliveries: i32::try_from(item.delivered).unwrap_or(i32::MAX),
                    state,
                    path: part.path.as_deref(),
                })
            })
            .collect();
        store::write_batch(&parts[0].ctx.pool, &rows).await?
    };
    let committed = Utc::now();
    let log_stages = tracing::enabled!(target: STAGES_TARGET, tracing::Level::DEBUG);
    for &(p, i) in writable {
        let part = &mut parts[p];
        let metrics = &part.ctx.metrics;
        let item = &mut part.items[i];
        let Ok(event) = &item.decoded else { continue };
        let key = (part.ctx.key.clone(), event.event_id.clone());
        if written.inserted.contains(&key) {
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
            if written.out_of_order.contains(&key) {
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

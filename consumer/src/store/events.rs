//! The per-batch transaction: insert the new events, move each object's
//! projection to its newest event when that is newer than the stored state,
//! `NOTIFY`, commit.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;

use super::NOTIFY_CHANNEL;
use crate::decode::{Body, Event};

/// Why a batch transaction failed, sorted by what helps; each carries the
/// database's own error.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The database is away or cannot take writes now (connection lost or
    /// refused, shutting down, out of connections or disk, a failover's
    /// read-only standby, the `NOTIFY` queue full, a deadlock or serialization
    /// conflict). Not the events' fault: they wait, and spend no delivery.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// Failed for a reason not known to be the database's (a statement
    /// timeout, an unexpected error): worth a later retry, counted toward
    /// `maxDeliver`.
    #[error("database: {0}")]
    Transient(sqlx::Error),
    /// The data of a message was refused: a data exception (SQLSTATE class
    /// 22), an integrity violation (23) or a value over a limit such as the
    /// index row size (54). No retry helps.
    #[error("database rejected the event: {0}")]
    Rejected(sqlx::Error),
}

/// SQLSTATE codes (or classes, by prefix) that mean "the database cannot
/// work now", whatever the events: connection exceptions (08), insufficient
/// resources (53), operator intervention such as shutdown (57P), a read-only
/// standby after a failover (25006), serialization failure and deadlock
/// (40001, 40P01), lock not available (55P03).
const UNAVAILABLE_STATES: [&str; 8] = ["08", "53", "57P", "25006", "40001", "40P01", "55P03", "58"];

impl From<sqlx::Error> for WriteError {
    fn from(err: sqlx::Error) -> WriteError {
        let (unavailable, rejected) = match &err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => (true, false),
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                // 54000 is also "too many notifications in the NOTIFY queue":
                // the listeners are slow, not the event wrong.
                let notify_queue_full = code == "54000" && db.message().contains("NOTIFY");
                (
                    notify_queue_full
                        || UNAVAILABLE_STATES
                            .iter()
                            .any(|state| code.starts_with(state)),
                    ["22", "23", "54"]
                        .iter()
                        .any(|class| code.starts_with(class)),
                )
            }
            _ => (false, false),
        };
        match (unavailable, rejected) {
            (true, _) => WriteError::Unavailable(err),
            (false, true) => WriteError::Rejected(err),
            (false, false) => WriteError::Transient(err),
        }
    }
}

/// What one batch transaction did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Event ids newly stored (the others were already there: duplicates).
    pub inserted: HashSet<String>,
    /// Event ids whose projection update was skipped because the stored state
    /// (or another event of the same batch) was newer.
    pub out_of_order: HashSet<String>,
}

/// Stores `events` (distinct event ids) in one transaction: inserts the new
/// ones, moves each object's projection to its newest event when that is newer
/// than the stored one, notifies; then commits. `states` overrides the state of
/// an object (refetch). Events are sorted so that concurrent transactions take
/// row locks in the same order.
pub async fn write_batch(
    pool: &PgPool,
    endpoint: &str,
    events: &[&Event],
    deliveries: &HashMap<String, i32>,
    states: &HashMap<String, Option<String>>,
) -> Result<Written, WriteError> {
    let mut sorted: Vec<&Event> = events.to_vec();
    sorted.sort_by(|a, b| a.event_id.cmp(&b.event_id));

    let mut ids = Vec::with_capacity(sorted.len());
    let mut types = Vec::with_capacity(sorted.len());
    let mut timestamps = Vec::with_capacity(sorted.len());
    let mut object_ids = Vec::with_capacity(sorted.len());
    let mut received = Vec::with_capacity(sorted.len());
    let mut delivered = Vec::with_capacity(sorted.len());
    let mut headers = Vec::with_capacity(sorted.len());
    let mut payloads: Vec<Option<&str>> = Vec::with_capacity(sorted.len());
    let mut raws: Vec<Option<&[u8]>> = Vec::with_capacity(sorted.len());
    for event in &sorted {
        ids.push(event.event_id.as_str());
        types.push(event.event_type.as_str());
        timestamps.push(event.event_timestamp);
        object_ids.push(event.object_id.as_deref());
        received.push(event.received_at);
        delivered.push(deliveries.get(&event.event_id).copied().unwrap_or(1));
        headers.push(event.headers.as_str());
        match &event.body {
            Body::Json(text) => {
                payloads.push(Some(text));
                raws.push(None);
            }
            Body::Raw(bytes) => {
                payloads.push(None);
                raws.push(Some(bytes));
            }
        }
    }

    let mut tx = pool.begin().await?;
    let inserted: HashSet<String> = sqlx::query_scalar(
        "INSERT INTO hookline.events (endpoint, event_id, event_type, event_timestamp, object_id, \
             received_at, deliveries, headers, payload, payload_raw) \
         SELECT $1, t.event_id, t.event_type, t.event_timestamp, t.object_id, t.received_at, \
             t.deliveries, t.headers::jsonb, t.payload::jsonb, t.payload_raw \
         FROM UNNEST($2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::timestamptz[], \
             $7::int[], $8::text[], $9::text[], $10::bytea[]) \
             AS t(event_id, event_type, event_timestamp, object_id, received_at, deliveries, \
                  headers, payload, payload_raw) \
         ON CONFLICT (endpoint, event_id) DO NOTHING \
         RETURNING event_id",
    )
    .bind(endpoint)
    .bind(&ids)
    .bind(&types)
    .bind(&timestamps)
    .bind(&object_ids)
    .bind(&received)
    .bind(&delivered)
    .bind(&headers)
    .bind(&payloads)
    .bind(&raws)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();

    // The newest new event of each object; the others of the batch lose to it.
    let mut newest: HashMap<&str, &Event> = HashMap::new();
    let mut out_of_order = HashSet::new();
    for event in events.iter().filter(|e| inserted.contains(&e.event_id)) {
        let Some(object_id) = event.object_id.as_deref() else {
            continue;
        };
        match newest.get(object_id) {
            Some(current) if current.order_key() > event.order_key() => {
                // Arrived after a newer event of the same object.
                out_of_order.insert(event.event_id.clone());
            }
            _ => {
                newest.insert(object_id, event);
            }
        }
    }
    let mut winners: Vec<&Event> = newest.into_values().collect();
    winners.sort_by(|a, b| a.object_id.cmp(&b.object_id));
    if !winners.is_empty() {
        let objects: Vec<&str> = winners
            .iter()
            .filter_map(|e| e.object_id.as_deref())
            .collect();
        let last_ids: Vec<&str> = winners.iter().map(|e| e.event_id.as_str()).collect();
        let last_times: Vec<DateTime<Utc>> = winners.iter().map(|e| e.order_key().0).collect();
        let state_values: Vec<Option<&str>> = winners
            .iter()
            .map(|e| {
                let object_id = e.object_id.as_deref().unwrap_or_default();
                match states.get(object_id) {
                    Some(state) => state.as_deref(),
                    None => e.state.as_deref(),
                }
            })
            .collect();
        let applied: HashSet<String> = sqlx::query_scalar(
            "INSERT INTO hookline.objects AS o \
                 (endpoint, object_id, last_event_id, last_event_timestamp, state, updated_at) \
             SELECT $1, t.object_id, t.last_event_id, t.last_event_timestamp, t.state::jsonb, now() \
             FROM UNNEST($2::text[], $3::text[], $4::timestamptz[], $5::text[]) \
                 AS t(object_id, last_event_id, last_event_timestamp, state) \
             ON CONFLICT (endpoint, object_id) DO UPDATE SET \
                 last_event_id = EXCLUDED.last_event_id, \
                 last_event_timestamp = EXCLUDED.last_event_timestamp, \
                 state = EXCLUDED.state, \
                 updated_at = EXCLUDED.updated_at \
             WHERE (EXCLUDED.last_event_timestamp, EXCLUDED.last_event_id) \
                 > (o.last_event_timestamp, o.last_event_id) \
             RETURNING last_event_id",
        )
        .bind(endpoint)
        .bind(&objects)
        .bind(&last_ids)
        .bind(&last_times)
        .bind(&state_values)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        // A rejected winner means the stored state is newer than every event
        // of that object in the batch.
        for winner in winners.iter().filter(|w| !applied.contains(&w.event_id)) {
            for event in events
                .iter()
                .filter(|e| inserted.contains(&e.event_id) && e.object_id == winner.object_id)
            {
                out_of_order.insert(event.event_id.clone());
            }
        }
    }

    if !inserted.is_empty() {
        let new_ids: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| inserted.contains(*id))
            .collect();
        sqlx::query(
            "SELECT pg_notify($1, jsonb_build_object('endpoint', $2::text, 'event_id', id)::text) \
             FROM UNNEST($3::text[]) AS id",
        )
        .bind(NOTIFY_CHANNEL)
        .bind(endpoint)
        .bind(&new_ids)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Written {
        inserted,
        out_of_order,
    })
}

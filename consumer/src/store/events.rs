//! The per-batch transaction: insert the new events, move each object's
//! projection to its newest event when that is newer than the stored state,
//! `NOTIFY`, commit.

use std::collections::HashSet;

use sqlx::Arguments;
use sqlx::postgres::{PgArguments, PgPool, Postgres};

use super::NOTIFY_CHANNEL;
#[cfg(doc)]
use crate::decode::Projection;
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

/// What one batch transaction did; events are `(endpoint, event id)`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Events newly stored (the others were already there: duplicates).
    pub inserted: HashSet<(String, String)>,
    /// Events whose projection update was skipped because the stored state
    /// (or another event of the same batch) was newer.
    pub out_of_order: HashSet<(String, String)>,
}

/// The whole batch in one statement, so in one round trip and one
/// transaction (autocommit): insert the new events; among them, the newest
/// of each object (event time, else received-at; ties by event id) moves the
/// object's projection when it is newer than the stored state; `NOTIFY` each
/// new event (sent at commit). Answers, for each new event, whether its
/// projection update was skipped because a newer state won.
///
/// Each row carries its endpoint and the path of its projection (a JSON
/// array of reference tokens, `#>`'s), so one transaction takes the events
/// of many endpoints: a pool's shared stream delivers its members' events
/// mixed, and a transaction per member would cost a commit per event.
///
/// Rows are inserted in the order given (sorted by endpoint and event id)
/// and objects upserted by endpoint and object id, so concurrent batches
/// take their locks in one order.
const WRITE_BATCH: &str = "\
WITH input AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],
                         $6::timestamptz[], $7::int[], $8::text[], $9::text[], $10::bytea[],
                         $11::text[], $12::text[])
        WITH ORDINALITY AS t(endpoint, event_id, event_type, event_timestamp, object_id,
                             received_at, deliveries, headers, payload, payload_raw, state,
                             path, n)
),
inserted AS (
    INSERT INTO hookline.events (endpoint, event_id, event_type, event_timestamp, object_id,
                                 received_at, deliveries, headers, payload, payload_raw)
    SELECT endpoint, event_id, event_type, event_timestamp, object_id, received_at,
           deliveries, headers::jsonb, payload::jsonb, payload_raw
    FROM input
    ORDER BY n
    ON CONFLICT (endpoint, event_id) DO NOTHING
    RETURNING endpoint, event_id, object_id, coalesce(event_timestamp, received_at) AS at, payload
),
newest AS (
    SELECT DISTINCT ON (i.endpoint, i.object_id)
           i.endpoint, i.object_id, i.event_id, i.at, i.payload, t.state, t.path
    FROM inserted i JOIN input t USING (endpoint, event_id)
    WHERE i.object_id IS NOT NULL
    ORDER BY i.endpoint, i.object_id, i.at DESC, i.event_id DESC
),
applied AS (
    INSERT INTO hookline.objects AS o
        (endpoint, object_id, last_event_id, last_event_timestamp, state, updated_at)
    SELECT n.endpoint, n.object_id, n.event_id, n.at,
           CASE WHEN n.state IS NOT NULL THEN n.state::jsonb
                WHEN jsonb_typeof(n.payload #> p.tokens) = 'object' THEN n.payload #> p.tokens
                ELSE n.payload END,
           now()
    FROM newest n
        CROSS JOIN LATERAL (
            SELECT coalesce(array_agg(token), '{}') AS tokens
            FROM jsonb_array_elements_text(coalesce(n.path, '[]')::jsonb) AS token
        ) p
    ORDER BY n.endpoint, n.object_id
    ON CONFLICT (endpoint, object_id) DO UPDATE SET
        last_event_id = EXCLUDED.last_event_id,
        last_event_timestamp = EXCLUDED.last_event_timestamp,
        state = EXCLUDED.state,
        updated_at = EXCLUDED.updated_at
    WHERE (EXCLUDED.last_event_timestamp, EXCLUDED.last_event_id)
        > (o.last_event_timestamp, o.last_event_id)
    RETURNING endpoint, last_event_id
),
notified AS (
    SELECT endpoint, event_id, object_id,
           pg_notify($13, jsonb_build_object('endpoint', endpoint, 'event_id', event_id)::text)
    FROM inserted
)
SELECT n.endpoint, n.event_id, (n.object_id IS NOT NULL AND a.last_event_id IS NULL) AS out_of_order
FROM notified n LEFT JOIN applied a
    ON a.endpoint = n.endpoint AND a.last_event_id = n.event_id";

/// The placeholders of [`WRITE_BATCH`], `$1` to `$13`.
const WRITE_BATCH_PARAMETERS: usize = 13;

/// About the bytes the arguments of `rows` take on the wire: their text
/// and bytes, a length word per array element, and some slack.
fn encoded_size(rows: &[Row<'_>]) -> usize {
    const PER_EVENT: usize = 12 * 4 + 2 * 8 + 4 + 64;
    rows.iter()
        .map(|row| {
            let event = row.event;
            let body = match &event.body {
                Body::Json(text) => text.len(),
                Body::Raw(bytes) => bytes.len(),
            };
            row.endpoint.len()
                + event.event_id.len()
                + event.event_type.len()
                + event.object_id.as_ref().map_or(0, String::len)
                + event.headers.len()
                + row.state.map_or(0, str::len)
                + row.path.map_or(0, str::len)
                + body
                + PER_EVENT
        })
        .sum::<usize>()
        + 1024
}

fn add<'q, T>(arguments: &mut PgArguments, value: T) -> Result<(), WriteError>
where
    T: sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + 'q,
{
    arguments
        .add(value)
        .map_err(|err| WriteError::from(sqlx::Error::Encode(err)))
}

/// One event to write and what its endpoint says of it.
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    /// `namespace/name`.
    pub endpoint: &'a str,
    pub event: &'a Event,
    /// Deliveries so far, the `deliveries` column.
    pub deliveries: i32,
    /// The object's state when given here (refetch, or taken in Rust);
    /// else Postgres takes it from the payload at `path`.
    pub state: Option<&'a str>,
    /// The endpoint's projection path ([`Projection::path_json`]).
    pub path: Option<&'a str>,
}

/// Stores `rows` (distinct `(endpoint, event id)`s, of one endpoint or many)
/// in one transaction: inserts the new ones, moves each object's projection
/// to its newest event when that is newer than the stored one, notifies;
/// then commits. Rows are sorted so that concurrent transactions take row
/// locks in the same order.
pub async fn write_batch(pool: &PgPool, rows: &[Row<'_>]) -> Result<Written, WriteError> {
    let mut sorted: Vec<&Row<'_>> = rows.iter().collect();
    sorted.sort_by(|a, b| {
        (a.endpoint, a.event.event_id.as_str()).cmp(&(b.endpoint, b.event.event_id.as_str()))
    });

    let count = sorted.len();
    let mut endpoints = Vec::with_capacity(count);
    let mut ids = Vec::with_capacity(count);
    let mut types = Vec::with_capacity(count);
    let mut timestamps = Vec::with_capacity(count);
    let mut object_ids = Vec::with_capacity(count);
    let mut received = Vec::with_capacity(count);
    let mut delivered = Vec::with_capacity(count);
    let mut headers = Vec::with_capacity(count);
    let mut payloads: Vec<Option<&str>> = Vec::with_capacity(count);
    let mut raws: Vec<Option<&[u8]>> = Vec::with_capacity(count);
    let mut states: Vec<Option<&str>> = Vec::with_capacity(count);
    let mut paths: Vec<Option<&str>> = Vec::with_capacity(count);
    for row in &sorted {
        let event = row.event;
        endpoints.push(row.endpoint);
        ids.push(event.event_id.as_str());
        types.push(event.event_type.as_str());
        timestamps.push(event.event_timestamp);
        object_ids.push(event.object_id.as_deref());
        received.push(event.received_at);
        delivered.push(row.deliveries);
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
        states.push(row.state);
        paths.push(row.path);
    }

    // The arguments are encoded into one buffer, sized here once: grown as
    // 100 bodies were encoded, it was copied a dozen times per batch.
    let mut arguments = PgArguments::default();
    arguments.reserve(WRITE_BATCH_PARAMETERS, encoded_size(rows));
    add(&mut arguments, &endpoints)?;
    add(&mut arguments, &ids)?;
    add(&mut arguments, &types)?;
    add(&mut arguments, &timestamps)?;
    add(&mut arguments, &object_ids)?;
    add(&mut arguments, &received)?;
    add(&mut arguments, &delivered)?;
    add(&mut arguments, &headers)?;
    add(&mut arguments, &payloads)?;
    add(&mut arguments, &raws)?;
    add(&mut arguments, &states)?;
    add(&mut arguments, &paths)?;
    add(&mut arguments, NOTIFY_CHANNEL)?;
    let answered: Vec<(String, String, bool)> = sqlx::query_as_with(WRITE_BATCH, arguments)
        .fetch_all(pool)
        .await?;
    let mut written = Written::default();
    for (endpoint, event_id, out_of_order) in answered {
        let event = (endpoint, event_id);
        if out_of_order {
            written.out_of_order.insert(event.clone());
        }
        written.inserted.insert(event);
    }
    Ok(written)
}

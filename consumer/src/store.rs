//! Everything the consumer says to Postgres: migrations, the per-batch
//! transaction, dead letters and the retention sweep.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Row};

use crate::decode::{Body, Event};
use crate::{Error, Result};

/// The embedded migrations (`consumer/migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Our own lock around schema creation and migration, so instances starting
/// together never race on `CREATE SCHEMA` (sqlx's migrator then takes its own).
const MIGRATION_LOCK: i64 = 0x686f_6f6b_6c69_6e65; // "hookline"

/// The schema every table lives in.
pub const SCHEMA: &str = "hookline";

/// The channel of the `NOTIFY` sent for every stored event.
pub const NOTIFY_CHANNEL: &str = "hookline_events";

/// Parses a database URL; the error never repeats the URL (it may hold a password).
pub fn connect_options(url: &str) -> Result<PgConnectOptions> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(Error::Config(
            "--database-url is not a valid Postgres URL: it must start with postgres:// or postgresql://".into(),
        ));
    }
    url.parse::<PgConnectOptions>()
        .map_err(|err| Error::Config(format!("--database-url is not a valid Postgres URL: {err}")))
}

/// A lazily connecting pool: the consumer starts (and reports not-ready) while
/// the database is still down.
pub fn pool(options: &PgConnectOptions, size: u32, statement_timeout: Duration) -> PgPool {
    let options = options
        .clone()
        .application_name("hookline-consumer")
        .options([(
            "statement_timeout",
            format!("{}ms", statement_timeout.as_millis()),
        )]);
    PgPoolOptions::new()
        .max_connections(size)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy_with(options)
}

/// Creates the schema and applies the embedded migrations, on one dedicated
/// connection, under an advisory lock.
pub async fn migrate(options: &PgConnectOptions) -> Result<()> {
    let mut conn = options
        .clone()
        .application_name("hookline-consumer-migrate")
        .connect()
        .await?;
    let outcome = migrate_on(&mut conn).await;
    // Closing the session releases the advisory lock even when unlocking failed.
    let _ = conn.close().await;
    outcome
}

async fn migrate_on(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(SCHEMA)
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        sqlx::query(&format!("CREATE SCHEMA {SCHEMA}"))
            .execute(&mut *conn)
            .await?;
    }
    // sqlx keeps its bookkeeping table in the first schema of the search path.
    sqlx::query(&format!("SET search_path TO {SCHEMA}"))
        .execute(&mut *conn)
        .await?;
    MIGRATOR.run_direct(&mut *conn).await?;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await?;
    Ok(())
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
) -> Result<Written> {
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

/// A message that goes to `hookline.dead_letters`.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub subject: String,
    pub stream_sequence: i64,
    /// JSON object text.
    pub headers: String,
    pub payload: Vec<u8>,
    pub error: String,
    pub deliveries: i32,
}

/// Writes dead letters in one statement; a message already dead-lettered at
/// the same stream position (its terminate was lost) keeps one row.
pub async fn write_dead_letters(
    pool: &PgPool,
    endpoint: &str,
    letters: &[DeadLetter],
) -> Result<()> {
    if letters.is_empty() {
        return Ok(());
    }
    let event_ids: Vec<Option<&str>> = letters.iter().map(|l| l.event_id.as_deref()).collect();
    let types: Vec<Option<&str>> = letters.iter().map(|l| l.event_type.as_deref()).collect();
    let subjects: Vec<&str> = letters.iter().map(|l| l.subject.as_str()).collect();
    let sequences: Vec<i64> = letters.iter().map(|l| l.stream_sequence).collect();
    let headers: Vec<&str> = letters.iter().map(|l| l.headers.as_str()).collect();
    let payloads: Vec<&[u8]> = letters.iter().map(|l| l.payload.as_slice()).collect();
    let errors: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
    let deliveries: Vec<i32> = letters.iter().map(|l| l.deliveries).collect();
    sqlx::query(
        "INSERT INTO hookline.dead_letters (endpoint, event_id, event_type, subject, stream_sequence, \
             headers, payload, error, deliveries) \
         SELECT $1, t.event_id, t.event_type, t.subject, t.stream_sequence, t.headers::jsonb, \
             t.payload, t.error, t.deliveries \
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::bytea[], \
             $8::text[], $9::int[]) \
             AS t(event_id, event_type, subject, stream_sequence, headers, payload, error, deliveries) \
         ON CONFLICT (endpoint, stream_sequence, event_id) DO UPDATE SET \
             error = EXCLUDED.error, \
             deliveries = GREATEST(hookline.dead_letters.deliveries, EXCLUDED.deliveries), \
             failed_at = EXCLUDED.failed_at",
    )
    .bind(endpoint)
    .bind(&event_ids)
    .bind(&types)
    .bind(&subjects)
    .bind(&sequences)
    .bind(&headers)
    .bind(&payloads)
    .bind(&errors)
    .bind(&deliveries)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes `endpoint`'s events received more than `max_age` ago, `batch` rows
/// per transaction so the sweep never holds many locks or a long transaction.
/// Only one instance sweeps an endpoint at a time. Returns the rows deleted.
pub async fn sweep(pool: &PgPool, endpoint: &str, max_age: Duration, batch: i64) -> Result<u64> {
    let cutoff = Utc::now() - chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await?;
        let locked: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(hashtext('hookline.sweep:' || $1))",
        )
        .bind(endpoint)
        .fetch_one(&mut *tx)
        .await?;
        if !locked {
            return Ok(total);
        }
        let deleted = sqlx::query(
            "DELETE FROM hookline.events WHERE ctid = ANY (ARRAY( \
                 SELECT ctid FROM hookline.events \
                 WHERE endpoint = $1 AND received_at < $2 \
                 ORDER BY received_at LIMIT $3 FOR UPDATE SKIP LOCKED))",
        )
        .bind(endpoint)
        .bind(cutoff)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        total += deleted;
        if deleted < u64::try_from(batch).unwrap_or(u64::MAX) {
            return Ok(total);
        }
    }
}

/// A dead letter selected for replay.
#[derive(Debug)]
pub struct StoredDeadLetter {
    pub id: i64,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub subject: Option<String>,
    pub headers: serde_json::Value,
    pub payload: Vec<u8>,
}

/// Which dead letters to replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only these event ids (empty: any).
    pub event_ids: Vec<String>,
    /// Failed at or after.
    pub since: Option<DateTime<Utc>>,
    /// Failed before.
    pub until: Option<DateTime<Utc>>,
}

/// The endpoint's dead letters not replayed yet that match `selection`, oldest first.
pub async fn dead_letters_to_replay(
    pool: &PgPool,
    endpoint: &str,
    selection: &Selection,
) -> Result<Vec<StoredDeadLetter>> {
    let rows = sqlx::query(
        "SELECT id, event_id, event_type, subject, headers, payload FROM hookline.dead_letters \
         WHERE endpoint = $1 AND replayed_at IS NULL \
           AND (cardinality($2::text[]) = 0 OR event_id = ANY($2)) \
           AND ($3::timestamptz IS NULL OR failed_at >= $3) \
           AND ($4::timestamptz IS NULL OR failed_at < $4) \
         ORDER BY id",
    )
    .bind(endpoint)
    .bind(&selection.event_ids)
    .bind(selection.since)
    .bind(selection.until)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(StoredDeadLetter {
                id: row.try_get("id")?,
                event_id: row.try_get("event_id")?,
                event_type: row.try_get("event_type")?,
                subject: row.try_get("subject")?,
                headers: row.try_get("headers")?,
                payload: row.try_get("payload")?,
            })
        })
        .collect()
}

/// Marks one dead letter replayed.
pub async fn mark_replayed(pool: &PgPool, id: i64) -> Result<()> {
    sqlx::query("UPDATE hookline.dead_letters SET replayed_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Whether the database answers.
pub async fn ping(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}

/// Whether a database error is worth retrying (connection trouble, deadlock,
/// shutdown, resources) rather than a problem with the data of a message.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 22: data exception, 23: integrity violation, 54: a value over a
            // limit (e.g. index row size) — the message's fault.
            !(code.starts_with("22") || code.starts_with("23") || code.starts_with("54"))
        }
        _ => true,
    }
}

//! `hookline.dead_letters`: events that exhausted their deliveries or can never
//! be stored, written with their last error, and selected again for replay.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgPool;

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
) -> Result<(), sqlx::Error> {
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
         ON CONFLICT (endpoint, stream_sequence, (coalesce(event_id, ''))) DO UPDATE SET \
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
) -> Result<Vec<StoredDeadLetter>, sqlx::Error> {
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
pub async fn mark_replayed(pool: &PgPool, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE hookline.dead_letters SET replayed_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

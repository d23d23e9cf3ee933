//! Retention: events older than the stream's `maxAge` are deleted in small
//! transactions by one instance at a time (see the contract: a sweep instead
//! of partitions).

use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use sqlx::postgres::PgPool;
use tracing::{info, warn};

use crate::Shutdown;

/// Deletes `endpoint`'s events received more than `max_age` ago, `batch` rows
/// per transaction so the sweep never holds many locks or a long transaction.
/// Only one instance sweeps an endpoint at a time. Returns the rows deleted.
pub async fn sweep(
    pool: &PgPool,
    endpoint: &str,
    max_age: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
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

/// Rows deleted per sweep transaction (the contract's figure).
const SWEEP_BATCH: i64 = 1000;

/// Deletes events older than `max_age` every `interval` until shutdown. The
/// first sweep comes after a random part of the interval (a tenth to all of
/// it), so instances started together do not sweep in step.
pub async fn sweep_every(
    pool: PgPool,
    endpoint: String,
    max_age: Duration,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    let mut wait = interval.mul_f64(rand::rng().random_range(0.1..1.0));
    while shutdown.sleep(wait).await {
        match sweep(&pool, &endpoint, max_age, SWEEP_BATCH).await {
            Ok(0) => {}
            Ok(deleted) => info!(deleted, "retention sweep deleted old events"),
            Err(err) => warn!(cause = %err, "retention sweep failed; will try again"),
        }
        wait = interval;
    }
}

//! The schema and the embedded migrations (`consumer/migrations/`), applied at
//! start by every instance, safely at the same time.

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

use super::SCHEMA;
use crate::Result;

/// The embedded migrations (`consumer/migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Our own lock around schema creation and migration, so instances starting
/// together never race on `CREATE SCHEMA` (sqlx's migrator then takes its own).
const MIGRATION_LOCK: i64 = 0x686f_6f6b_6c69_6e65; // "hookline"

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

#[cfg(test)]
mod tests {
    use super::MIGRATOR;

    /// The server converts a migration's text to its own encoding before
    /// parsing it, comments included: a non-ASCII character would fail on a
    /// LATIN1 database.
    #[test]
    fn migrations_are_ascii_so_any_database_encoding_takes_them() {
        for migration in MIGRATOR.iter() {
            assert!(
                migration.sql.is_ascii(),
                "migration {} ({}) has non-ASCII text",
                migration.version,
                migration.description
            );
        }
    }
}

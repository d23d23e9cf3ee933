//! Everything the consumer says to Postgres, one file per table's concern:
//! [`migrate`](mod@migrate) (schema and embedded migrations), [`events`] (the per-batch
//! transaction: events, the object projection, `NOTIFY`), [`dead_letters`]
//! (writing and replaying them) and [`retention`] (the sweep of old events).
//! Here: the connection settings they share.

pub mod dead_letters;
pub mod events;
pub mod migrate;
pub mod retention;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::{Error, Result};

pub use dead_letters::{
    DeadLetter, Selection, StoredDeadLetter, dead_letters_to_replay, mark_replayed,
    write_dead_letters,
};
pub use events::{Row, WriteError, Written, write_batch};
pub use migrate::{MIGRATOR, migrate};
pub use retention::sweep;

/// The schema every table lives in.
pub const SCHEMA: &str = "hookline";

/// The channel of the `NOTIFY` sent for every stored event.
pub const NOTIFY_CHANNEL: &str = "hookline_events";

/// How long a query waits for a free connection before it fails (and its
/// batch is retried): longer than a healthy commit, short enough that a hung
/// database shows up in the logs.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections idle this long are closed, so a quiet consumer holds none.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

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
///
/// No ping before each use: it cost every batch a round trip to Postgres
/// before its statement. sqlx pings a connection when it comes back to the
/// pool anyway, so only one that died idle (a Postgres restart) is handed
/// out, fails its batch as `Unavailable`, and is dropped; the batch is held
/// and written again like any other batch during an outage.
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
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .idle_timeout(IDLE_TIMEOUT)
        .test_before_acquire(false)
        .connect_lazy_with(options)
}

/// Whether the database answers.
pub async fn ping(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}

//! The read-only subcommands the `kubectl hookline` plugin runs in a consumer
//! pod (where the database URL already is): `dead-letters` lists them,
//! `event ID [--wait D]` shows one stored event (waiting for it), `tail`
//! follows newly stored events from `LISTEN hookline_events`. Each prints a
//! table line or, with `--output json`, one JSON object a line.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use crate::store::{self, NOTIFY_CHANNEL};
use crate::{Error, Result};

/// How a subcommand prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// One row of `hookline.dead_letters`, without the payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterRow {
    pub id: i64,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub failed_at: DateTime<Utc>,
    pub deliveries: i32,
    pub error: String,
    pub replayed_at: Option<DateTime<Utc>>,
}

/// One row of `hookline.events`, without headers and payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRow {
    pub event_id: String,
    pub event_type: String,
    pub event_timestamp: Option<DateTime<Utc>>,
    pub object_id: Option<String>,
    pub received_at: DateTime<Utc>,
    pub processed_at: DateTime<Utc>,
}

/// A small pool: one query at a time, and the [`Listener`]'s own connection.
pub async fn connect(database_url: &str) -> Result<PgPool> {
    let options = store::connect_options(database_url)?.application_name("hookline-consumer-cli");
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?)
}

/// The endpoint's dead letters, oldest first; with `all` also the replayed ones.
pub async fn dead_letters(pool: &PgPool, endpoint: &str, all: bool) -> Result<Vec<DeadLetterRow>> {
    let rows = sqlx::query(
        "SELECT id, event_id, event_type, failed_at, deliveries, error, replayed_at \
         FROM hookline.dead_letters WHERE endpoint = $1 AND ($2 OR replayed_at IS NULL) ORDER BY id",
    )
    .bind(endpoint)
    .bind(all)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(DeadLetterRow {
                id: row.try_get("id")?,
                event_id: row.try_get("event_id")?,
                event_type: row.try_get("event_type")?,
                failed_at: row.try_get("failed_at")?,
                deliveries: row.try_get("deliveries")?,
                error: row.try_get("error")?,
                replayed_at: row.try_get("replayed_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Error::from)
}

/// The stored event `event_id` of `endpoint`, if stored.
pub async fn event(pool: &PgPool, endpoint: &str, event_id: &str) -> Result<Option<EventRow>> {
    let row = sqlx::query(
        "SELECT event_id, event_type, event_timestamp, object_id, received_at, processed_at \
         FROM hookline.events WHERE endpoint = $1 AND event_id = $2",
    )
    .bind(endpoint)
    .bind(event_id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(EventRow {
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        event_timestamp: row.try_get("event_timestamp")?,
        object_id: row.try_get("object_id")?,
        received_at: row.try_get("received_at")?,
        processed_at: row.try_get("processed_at")?,
    }))
}

/// The `NOTIFY` payload the consumer sends for each stored event.
#[derive(serde::Deserialize)]
struct Notification {
    endpoint: String,
    event_id: String,
}

/// Listens on [`NOTIFY_CHANNEL`]; the ids of `endpoint`'s events come out of
/// [`Listener::next`] as they are committed.
pub struct Listener {
    inner: PgListener,
    endpoint: String,
}

impl Listener {
    pub async fn start(pool: &PgPool, endpoint: &str) -> Result<Listener> {
        let mut inner = PgListener::connect_with(pool).await?;
        inner.listen(NOTIFY_CHANNEL).await?;
        Ok(Listener {
            inner,
            endpoint: endpoint.to_owned(),
        })
    }

    /// The next stored event id of the endpoint.
    pub async fn next(&mut self) -> Result<String> {
        loop {
            let notification = self.inner.recv().await?;
            if let Ok(parsed) = serde_json::from_str::<Notification>(notification.payload())
                && parsed.endpoint == self.endpoint
            {
                return Ok(parsed.event_id);
            }
        }
    }
}

/// The stored event, waiting up to `wait` for it to be stored: listening
/// first, so an event committed between the query and the wait is not missed.
pub async fn wait_for_event(
    pool: &PgPool,
    endpoint: &str,
    event_id: &str,
    wait: Duration,
) -> Result<Option<EventRow>> {
    let mut listener = Listener::start(pool, endpoint).await?;
    if let Some(row) = event(pool, endpoint, event_id).await? {
        return Ok(Some(row));
    }
    let waiting = async {
        loop {
            if listener.next().await? == event_id {
                return event(pool, endpoint, event_id).await;
            }
        }
    };
    match tokio::time::timeout(wait, waiting).await {
        Ok(found) => found,
        Err(_) => Ok(None),
    }
}

fn time(value: &DateTime<Utc>) -> String {
    value.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `rows` as text: a header line and aligned columns, or JSON lines.
pub fn render_dead_letters(rows: &[DeadLetterRow], format: Format) -> Result<String> {
    if format == Format::Json {
        return json_lines(rows);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                row.id.to_string(),
                row.event_id.clone().unwrap_or_else(|| "-".into()),
                row.event_type.clone().unwrap_or_else(|| "-".into()),
                time(&row.failed_at),
                row.deliveries.to_string(),
                row.replayed_at.as_ref().map_or_else(|| "-".into(), time),
                row.error.lines().next().unwrap_or_default().to_owned(),
            ]
        })
        .collect();
    Ok(columns(
        &[
            "ID",
            "EVENT ID",
            "TYPE",
            "FAILED",
            "DELIVERIES",
            "REPLAYED",
            "ERROR",
        ],
        &cells,
    ))
}

/// Events as `tail` and `event` print them.
pub fn render_events(rows: &[EventRow], format: Format, header: bool) -> Result<String> {
    if format == Format::Json {
        return json_lines(rows);
    }
    let line = |row: &EventRow| {
        format!(
            "{}  {}  {}  {}",
            row.event_id,
            row.event_type,
            row.event_timestamp
                .as_ref()
                .map_or_else(|| "-".into(), time),
            row.object_id.as_deref().unwrap_or("-"),
        )
    };
    let mut text = String::new();
    if header {
        text.push_str("EVENT ID  TYPE  TIME  OBJECT\n");
    }
    for row in rows {
        text.push_str(&line(row));
        text.push('\n');
    }
    Ok(text)
}

fn json_lines<T: Serialize>(rows: &[T]) -> Result<String> {
    let mut text = String::new();
    for row in rows {
        text.push_str(
            &serde_json::to_string(row)
                .map_err(|err| Error::Config(format!("cannot print JSON: {err}")))?,
        );
        text.push('\n');
    }
    Ok(text)
}

fn columns(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let all = std::iter::once(headers.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())
        .chain(rows.iter().cloned());
    for row in all {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(&format!("{cell:<width$}   "));
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_print_as_columns_or_json_lines() {
        let failed_at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let rows = [DeadLetterRow {
            id: 7,
            event_id: Some("evt_1".into()),
            event_type: Some("invoice.paid".into()),
            failed_at,
            deliveries: 10,
            error: "constraint\nmore".into(),
            replayed_at: None,
        }];
        assert_eq!(
            render_dead_letters(&rows, Format::Table).expect("text"),
            "ID   EVENT ID   TYPE           FAILED                     DELIVERIES   REPLAYED   ERROR\n\
             7    evt_1      invoice.paid   2026-12-01T10:00:00.000Z   10           -          constraint\n"
        );
        let json = render_dead_letters(&rows, Format::Json).expect("json");
        assert!(json.starts_with(r#"{"id":7,"eventId":"evt_1""#), "{json}");
    }
}

//! Waiting out a database outage without spending deliveries: a batch whose
//! write failed because the database is away keeps its messages (telling
//! JetStream it is still working on them, so nothing is redelivered and no
//! delivery is counted), the pull loop stops fetching, and the batch is
//! written again once the database answers. However long the outage, a good
//! event never becomes a dead letter.

use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use tokio::sync::watch;
use tracing::{info, warn};

use super::Context;
use super::item::{Item, Outcome};
use crate::{Shutdown, store};

/// First pause before asking the database again; doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
/// Longest pause between two checks: a database that is back is used within
/// seconds.
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Whether the database took the last write: the pull loop fetches only while
/// it is open, so an outage stops the consumer taking on more work.
#[derive(Debug)]
pub struct DatabaseGate(watch::Sender<bool>);

impl Default for DatabaseGate {
    fn default() -> Self {
        DatabaseGate(watch::Sender::new(true))
    }
}

impl DatabaseGate {
    fn set(&self, open: bool) {
        self.0.send_if_modified(|current| {
            let changed = *current != open;
            *current = open;
            changed
        });
    }

    /// Waits until the gate is open; `false` when shutdown came first.
    pub async fn wait_open(&self, shutdown: &mut Shutdown) -> bool {
        let mut open = self.0.subscribe();
        tokio::select! {
            _ = shutdown.wait() => false,
            result = open.wait_for(|open| *open) => result.is_ok(),
        }
    }
}

/// Keeps the items the database could not take until it answers again;
/// `false` when shutdown came first (they are then handed back to JetStream).
pub(super) async fn hold(ctx: &Context, held: &[&Item]) -> bool {
    let cause = held
        .iter()
        .find_map(|item| match &item.outcome {
            Outcome::Unavailable(cause) => Some(cause.clone()),
            _ => None,
        })
        .unwrap_or_default();
    ctx.gate.set(false);
    ctx.metrics.held.inc_by(held.len() as u64);
    warn!(held = held.len(), %cause, "the database is unavailable: holding these events (no delivery is counted) until it is back");
    // Well within `ackWait`, so JetStream never hands them to someone else.
    let keep_alive = (ctx.endpoint.consumer.ack_wait / 3).max(Duration::from_millis(300));
    let mut shutdown = ctx.shutdown.clone();
    let mut pause = FIRST_PAUSE;
    let mut kept_alive = Instant::now();
    keep(held).await;
    loop {
        if !shutdown.sleep(pause.min(keep_alive)).await {
            return false;
        }
        let answered = tokio::time::timeout(keep_alive, store::ping(&ctx.pool)).await;
        if answered.unwrap_or(false) {
            ctx.gate.set(true);
            info!(
                held = held.len(),
                "the database is back: writing the held events"
            );
            return true;
        }
        if kept_alive.elapsed() >= keep_alive {
            keep(held).await;
            kept_alive = Instant::now();
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Tells JetStream the messages are still being worked on (resets `ackWait`).
async fn keep(held: &[&Item]) {
    for item in held {
        if let Err(err) = item.message.ack_with(AckKind::Progress).await {
            // NATS away too: the message is redelivered later, and stored once.
            warn!(cause = %err, stream_sequence = item.stream_sequence, "cannot extend the message's ack deadline");
        }
    }
}

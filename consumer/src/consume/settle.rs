//! The end of every message: acknowledged when stored (or already stored),
//! handed back with the next backoff delay when worth a retry, written to
//! `hookline.dead_letters` and then terminated when not.

use std::time::Duration;

use async_nats::jetstream::AckKind;
use rand::Rng;
use tracing::{debug, warn};

use super::Context;
use super::item::{Item, Outcome};
use crate::decode::{self, headers_json};
use crate::store::{self, DeadLetter};

/// How far a retry delay is moved at random, either way, so messages that
/// failed together do not retry together.
const JITTER: f64 = 0.2;

/// Acknowledges what is stored; retries, or dead-letters then terminates, the rest.
pub(super) async fn settle(ctx: &Context, items: Vec<Item>) {
    let settings = &ctx.endpoint.consumer;
    let max_deliver = u64::try_from(settings.max_deliver).unwrap_or(1);
    let metrics = &ctx.metrics;
    let mut dead: Vec<(Item, DeadLetter)> = Vec::new();
    for item in items {
        match &item.outcome {
            Outcome::Stored => ack(&item, AckKind::Ack).await,
            Outcome::Duplicate => {
                metrics.duplicates.inc();
                ack(&item, AckKind::Ack).await;
            }
            Outcome::Unavailable(error) => {
                // Shutdown while the database was away: another instance takes it.
                debug!(stream_sequence = item.stream_sequence, %error, "handed back");
                ack(&item, AckKind::Nak(None)).await;
            }
            Outcome::Later(error) => {
                let delay = jittered(settings.retry_delay(item.delivered));
                debug!(stream_sequence = item.stream_sequence, ?delay, %error, "the provider is away; will retry");
                metrics.retries.inc();
                ack(&item, AckKind::Nak(Some(delay))).await;
            }
            Outcome::Transient(error) if item.delivered < max_deliver => {
                let delay = jittered(settings.retry_delay(item.delivered));
                debug!(
                    stream_sequence = item.stream_sequence,
                    delivered = item.delivered,
                    ?delay,
                    %error,
                    "will retry"
                );
                metrics.retries.inc();
                ack(&item, AckKind::Nak(Some(delay))).await;
            }
            Outcome::Transient(error) => {
                let error = format!("gave up after {} deliveries: {error}", item.delivered);
                let letter = dead_letter(&item, error);
                dead.push((item, letter));
            }
            Outcome::Permanent(error) => {
                let letter = dead_letter(&item, error.clone());
                dead.push((item, letter));
            }
            Outcome::Pending => {
                // Unreachable by construction; never acknowledge what was not stored.
                ack(&item, AckKind::Nak(None)).await;
            }
        }
    }
    if dead.is_empty() {
        return;
    }
    let letters: Vec<DeadLetter> = dead.iter().map(|(_, letter)| letter.clone()).collect();
    match store::write_dead_letters(&ctx.pool, &ctx.key, &letters).await {
        Ok(()) => {
            for (item, letter) in dead {
                warn!(
                    event_id = letter.event_id.as_deref().unwrap_or(""),
                    stream_sequence = item.stream_sequence,
                    deliveries = letter.deliveries,
                    error = %letter.error,
                    "dead-lettered"
                );
                metrics.dead_letters.inc();
                ack(&item, AckKind::Term).await;
            }
        }
        Err(err) => {
            warn!(cause = %err, count = dead.len(), "cannot write dead letters; retrying them later");
            for (item, _) in dead {
                metrics.retries.inc();
                let delay = jittered(settings.retry_delay(item.delivered));
                ack(&item, AckKind::Nak(Some(delay))).await;
            }
        }
    }
}

fn dead_letter(item: &Item, error: String) -> DeadLetter {
    let headers = item.message.headers.as_ref();
    let decoded = item.decoded.as_ref().ok();
    DeadLetter {
        // An id too long for the index is kept in `headers` only.
        event_id: decoded
            .map(|e| e.event_id.clone())
            .or_else(|| decode::event_id(headers).map(str::to_owned))
            .filter(|id| id.len() <= decode::MAX_ID_BYTES && !id.contains('\0')),
        event_type: decoded.map(|e| e.event_type.clone()).or_else(|| {
            decode::header(headers, hookline_api::headers::EVENT_TYPE).map(decode::without_nul)
        }),
        subject: item.message.subject.to_string(),
        stream_sequence: i64::try_from(item.stream_sequence).unwrap_or(i64::MAX),
        headers: headers_json(headers),
        payload: item.message.payload.to_vec(),
        error: decode::without_nul(&error),
        deliveries: i32::try_from(item.delivered).unwrap_or(i32::MAX),
    }
}

async fn ack(item: &Item, kind: AckKind) {
    if let Err(err) = item.message.ack_with(kind).await {
        // JetStream redelivers after ackWait; storing is idempotent.
        warn!(cause = %err, stream_sequence = item.stream_sequence, ?kind, "cannot acknowledge");
    }
}

/// `delay` ± [`JITTER`].
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::rng().random_range(1.0 - JITTER..1.0 + JITTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..100 {
            let delay = jittered(Duration::from_secs(10));
            assert!(delay >= Duration::from_secs(8) && delay <= Duration::from_secs(12));
        }
    }
}

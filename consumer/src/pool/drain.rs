//! A shared-stream member's own stream (`HOOKLINE_<ns>_<name>`), drained
//! beside the pool's: events stored before the endpoint joined wait there.
//! The operator moves its subjects to a retired one (nothing new lands in it)
//! and deletes it once it holds nothing; its loop then ends quietly. Both
//! loops write the same rows: Postgres deduplicates on `(endpoint,
//! event_id)` and a projection only moves forward in event time, so the two
//! sources may interleave in any order.

use std::sync::Arc;

use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};
use async_nats::jetstream::stream::{ConsumerErrorKind, Stream};
use async_nats::jetstream::{self, ErrorCode};
use hookline_api::ValidatedEndpoint;
use tracing::{debug, info, warn};

use super::loops::Shared;
use crate::lifecycle::{consume_bound, retry};
use crate::metrics::Metrics;
use crate::refetch::Refetcher;
use crate::{Error, Result, Shutdown};

/// Consumes `own` (the member's own stream, [`ValidatedEndpoint::own_stream`])
/// with its durable `hookline-consumer` until the stream or the durable is
/// gone, or `shutdown`. Returns at once when there is nothing to drain.
/// Never provisions: the stream is the operator's to delete, not to make.
pub(super) async fn drain_own_stream(
    shared: &Shared,
    own: ValidatedEndpoint,
    refetch: Option<Refetcher>,
    metrics: Arc<Metrics>,
    shutdown: &Shutdown,
) {
    let found = retry("find the endpoint's own stream", shutdown, || {
        own_durable(&shared.js, &own)
    })
    .await;
    let consumer = match found {
        Ok(Some(Some(consumer))) => consumer,
        // Nothing to drain (said by `own_durable`), or shutdown came first.
        Ok(Some(None) | None) => return,
        Err(err) => {
            warn!(cause = %err, "cannot drain the endpoint's own stream");
            return;
        }
    };
    info!("draining the endpoint's own stream beside the pool's");
    let served = shared.served(own, refetch, true);
    consume_bound(&served, consumer, &shared.pool, metrics, shutdown).await;
}

/// The durable consumer of `own`'s stream; `None` when there is no stream.
/// A stream without the durable (never made) gets one.
async fn own_durable(
    js: &jetstream::Context,
    own: &ValidatedEndpoint,
) -> Result<Option<PullConsumer>> {
    let name = own.stream.name.as_str();
    let durable = own.consumer.durable_name.as_str();
    let stream = match js.get_stream(name).await {
        Ok(stream) => stream,
        Err(err) if is_stream_not_found(err.kind()) => {
            // The usual case once joined: not worth a line per member.
            debug!("the endpoint has no stream of its own: nothing to drain");
            return Ok(None);
        }
        Err(err) => return Err(Error::JetStream(format!("stream {name}: {err}"))),
    };
    match stream.consumer_info(durable).await {
        Ok(_) => stream
            .get_consumer(durable)
            .await
            .map(Some)
            .map_err(|err| Error::JetStream(format!("durable consumer {durable}: {err}"))),
        Err(err) if err.kind() == ConsumerInfoErrorKind::StreamNotFound => {
            info!("the endpoint's own stream is gone: nothing to drain");
            Ok(None)
        }
        // Made even for an empty stream: a receiver that has not reloaded yet
        // may still store events there until the operator retires its
        // subjects, and the operator deletes it only once it is empty.
        Err(err) if err.kind() == ConsumerInfoErrorKind::NotFound => {
            info!(
                messages = stream.cached_info().state.messages,
                "the endpoint's own stream has no durable consumer: making one to drain it"
            );
            create_durable(&stream, own).await.map(Some)
        }
        Err(err) => Err(Error::JetStream(format!(
            "durable consumer {durable}: {err}"
        ))),
    }
}

/// Makes the durable of `own`'s stream as provisioning would, filtered on the
/// endpoint's subjects, which the stream's (the retired subject) no longer
/// cover. nats-server 2.15 takes it (the stored messages keep their
/// subjects); one that refused it gets the durable without a filter, the same
/// for a stream that only ever held this endpoint's events.
async fn create_durable(stream: &Stream, own: &ValidatedEndpoint) -> Result<PullConsumer> {
    let config = hookline_api::provision::consumer_config(own);
    let durable = own.consumer.durable_name.as_str();
    let failed = |err: &dyn std::fmt::Display| {
        Error::JetStream(format!("cannot create durable consumer {durable}: {err}"))
    };
    match stream.create_consumer(config.clone()).await {
        Ok(consumer) => Ok(consumer),
        Err(err) if matches!(err.kind(), ConsumerErrorKind::JetStream(_)) => {
            info!(cause = %err, "the stream takes no durable filtered on the endpoint's subjects: making it unfiltered");
            let unfiltered = consumer::pull::Config {
                filter_subject: String::new(),
                ..config
            };
            stream
                .create_consumer(unfiltered)
                .await
                .map_err(|err| failed(&err))
        }
        Err(err) => Err(failed(&err)),
    }
}

fn is_stream_not_found(kind: GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(err) if err.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

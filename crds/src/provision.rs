//! Creates or updates an endpoint's stream and durable consumer. The one
//! implementation, used by the operator and by the binaries' `--provision`.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};

use crate::validated::{StreamRetention, ValidatedEndpoint};

/// Why provisioning failed; every variant means "NATS said no or did not answer".
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("cannot read stream {stream}: {source}")]
    Stream {
        stream: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot create or update durable consumer {consumer} on {stream}: {source}")]
    Consumer {
        stream: String,
        consumer: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("NATS did not answer within {0:?}")]
    Timeout(Duration),
}

/// How long one provisioning round may take before it is reported as failed.
pub const PROVISION_TIMEOUT: Duration = Duration::from_secs(10);

/// Batches of `consumer.batchSize` each consumer pod may hold unacknowledged:
/// the consumer's default `--concurrency` of four in flight.
/// Times `scaling.maxReplicas`, so every pod KEDA starts has work, while a
/// stalled fleet (say, the database is down) stops pulling after that many
/// instead of holding the whole stream unacknowledged.
pub const ACK_PENDING_BATCHES_PER_POD: usize = 4;

/// The least `max_ack_pending`, JetStream's own default: small batches must not
/// throttle a scaled-out fleet below what an unconfigured consumer would get.
pub const MIN_ACK_PENDING: usize = 1000;

/// The stream configuration for an endpoint: file storage; work-queue
/// retention for a `Buffer` (an event leaves once the durable consumer
/// acknowledged it, that is once it is in Postgres, and stays while no
/// consumer exists) or limits retention for an `Archive` (events stay for
/// `maxAge`); and `DiscardPolicy::New` so a full stream refuses new events (the
/// receiver answers 503) instead of silently dropping stored ones.
///
/// Not interest retention: a stream of it keeps nothing while no consumer
/// exists, and nats-server before 2.10.25 dropped events it had acknowledged
/// on one when it stopped (found by the fault soak on 2.9.10); work-queue
/// retention lost none there.
pub fn stream_config(endpoint: &ValidatedEndpoint) -> stream::Config {
    let retention = endpoint.stream.retention;
    let settings = &endpoint.stream;
    stream::Config {
        name: settings.name.clone(),
        description: Some(format!(
            "Hookline events of WebhookEndpoint {}",
            endpoint.key()
        )),
        subjects: vec![settings.subject_filter()],
        storage: stream::StorageType::File,
        retention: match retention {
            StreamRetention::Buffer => stream::RetentionPolicy::WorkQueue,
            StreamRetention::Archive => stream::RetentionPolicy::Limits,
        },
        discard: stream::DiscardPolicy::New,
        max_age: settings.max_age,
        max_bytes: settings.max_bytes_for(retention).unwrap_or(-1),
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window,
        ..Default::default()
    }
}

/// The durable pull consumer. `max_deliver` is left unlimited on the server: the
/// consumer counts deliveries itself and writes a dead letter before terminating
/// the message, so a crash during the last attempt cannot drop an event silently.
pub fn consumer_config(endpoint: &ValidatedEndpoint) -> consumer::pull::Config {
    let settings = &endpoint.consumer;
    consumer::pull::Config {
        durable_name: Some(settings.durable_name.clone()),
        description: Some(format!(
            "Hookline consumer of WebhookEndpoint {}",
            endpoint.key()
        )),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_deliver: -1,
        max_ack_pending: i64::try_from(
            settings
                .batch_size
                .saturating_mul(ACK_PENDING_BATCHES_PER_POD)
                .saturating_mul(usize::try_from(settings.scaling.max_replicas.max(1)).unwrap_or(1))
                .max(MIN_ACK_PENDING),
        )
        .unwrap_or(i64::MAX),
        deliver_policy: consumer::DeliverPolicy::All,
        filter_subject: endpoint.stream.subject_filter(),
        ..Default::default()
    }
}

/// Creates the stream and durable consumer, or updates them to match `endpoint`.
pub async fn provision(
    js: &jetstream::Context,
    endpoint: &ValidatedEndpoint,
) -> Result<(), ProvisionError> {
    tokio::time::timeout(PROVISION_TIMEOUT, provision_inner(js, endpoint))
        .await
        .map_err(|_| ProvisionError::Timeout(PROVISION_TIMEOUT))?
}

async fn provision_inner(
    js: &jetstream::Context,
    endpoint: &ValidatedEndpoint,
) -> Result<(), ProvisionError> {
    let stream_name = endpoint.stream.name.clone();
    let config = stream_config(endpoint);
    let stream_error = |source: Box<dyn std::error::Error + Send + Sync>| ProvisionError::Stream {
        stream: stream_name.clone(),
        source,
    };
    let stream = match js.get_stream(&stream_name).await {
        Ok(mut stream) => {
            let current = stream
                .info()
                .await
                .map_err(|err| stream_error(Box::new(err)))?
                .config
                .clone();
            // NATS cannot change an existing stream's retention: it is kept
            // (switching `Buffer` and `Archive` needs the stream made anew).
            let config = stream::Config {
                retention: current.retention,
                ..config
            };
            if !same_settings(&current, &config) {
                js.update_stream(&config)
                    .await
                    .map_err(|err| stream_error(Box::new(err)))?;
            }
            stream
        }
        Err(err) if is_stream_not_found(&err.kind()) => js
            .create_stream(config)
            .await
            .map_err(|err| stream_error(Box::new(err)))?,
        Err(err) => return Err(stream_error(Box::new(err))),
    };
    let consumer_config = consumer_config(endpoint);
    let consumer_name = endpoint.consumer.durable_name.clone();
    stream
        .create_consumer(consumer_config)
        .await
        .map_err(|err| ProvisionError::Consumer {
            stream: stream_name.clone(),
            consumer: consumer_name,
            source: Box::new(err),
        })?;
    Ok(())
}

/// Whether the server's stream already has every setting [`stream_config`] makes,
/// so a steady state sends no update.
fn same_settings(current: &stream::Config, desired: &stream::Config) -> bool {
    current.subjects == desired.subjects
        && current.description == desired.description
        && current.storage == desired.storage
        && current.retention == desired.retention
        && current.discard == desired.discard
        && current.max_age == desired.max_age
        && current.max_bytes == desired.max_bytes
        && current.num_replicas == desired.num_replicas
        && current.duplicate_window == desired.duplicate_window
}

fn is_stream_not_found(kind: &jetstream::context::GetStreamErrorKind) -> bool {
    matches!(kind, jetstream::context::GetStreamErrorKind::JetStream(err)
        if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// Removes the stream `name` (and with it the durable consumer); a missing
/// stream is fine. Takes the name, not the endpoint, so a resource whose spec
/// no longer validates can still be cleaned up.
pub async fn delete_stream(js: &jetstream::Context, name: &str) -> Result<(), ProvisionError> {
    match tokio::time::timeout(PROVISION_TIMEOUT, js.delete_stream(name)).await {
        Err(_) => Err(ProvisionError::Timeout(PROVISION_TIMEOUT)),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) if is_stream_not_found(&err.kind()) => Ok(()),
        Ok(Err(err)) => Err(ProvisionError::Stream {
            stream: name.to_owned(),
            source: Box::new(err),
        }),
    }
}

/// What the stream and the durable consumer hold right now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Messages stored in the stream.
    pub messages: u64,
    /// Messages not yet delivered plus delivered but not acknowledged.
    pub pending: u64,
    /// When the newest message was stored; `None` for an empty stream.
    pub last_stored: Option<std::time::SystemTime>,
    /// The stream's retention as the server has it (it cannot change after
    /// creation, whatever the spec says now).
    pub retention: Option<StreamRetention>,
}

/// Reads the stream's and durable consumer's state (a missing consumer counts
/// as nothing pending).
pub async fn stats(
    js: &jetstream::Context,
    endpoint: &ValidatedEndpoint,
) -> Result<StreamStats, ProvisionError> {
    let name = endpoint.stream.name.clone();
    let stream_error = |source: Box<dyn std::error::Error + Send + Sync>| ProvisionError::Stream {
        stream: name.clone(),
        source,
    };
    let read = async {
        let mut stream = js
            .get_stream(&name)
            .await
            .map_err(|err| stream_error(Box::new(err)))?;
        let info = stream
            .info()
            .await
            .map_err(|err| stream_error(Box::new(err)))?;
        let state = info.state.clone();
        let retention = match info.config.retention {
            stream::RetentionPolicy::WorkQueue => Some(StreamRetention::Buffer),
            stream::RetentionPolicy::Limits => Some(StreamRetention::Archive),
            // Made by hand or by an older Hookline: acknowledged events leave
            // too, but nothing is kept while no consumer exists.
            stream::RetentionPolicy::Interest => None,
        };
        let pending = match stream.consumer_info(&endpoint.consumer.durable_name).await {
            Ok(info) => info.num_pending + info.num_ack_pending as u64,
            Err(_) => 0,
        };
        Ok(StreamStats {
            messages: state.messages,
            pending,
            last_stored: (state.messages > 0).then(|| state.last_timestamp.into()),
            retention,
        })
    };
    tokio::time::timeout(PROVISION_TIMEOUT, read)
        .await
        .map_err(|_| ProvisionError::Timeout(PROVISION_TIMEOUT))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Provider, StreamSpec, WebhookEndpointSpec};

    fn endpoint(retention: StreamRetention, max_bytes: Option<i64>) -> ValidatedEndpoint {
        let spec = WebhookEndpointSpec {
            stream: Some(StreamSpec {
                retention: Some(retention),
                max_bytes,
                ..Default::default()
            }),
            ..WebhookEndpointSpec::new(Provider::Github, "s")
        };
        crate::resolve("ns", "name", &spec).expect("valid")
    }

    #[test]
    fn a_buffer_is_a_capped_work_queue_and_an_archive_an_uncapped_log() {
        let buffer = stream_config(&endpoint(StreamRetention::Buffer, None));
        assert_eq!(buffer.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(buffer.max_bytes, crate::defaults::BUFFER_MAX_BYTES);
        let archive = stream_config(&endpoint(StreamRetention::Archive, None));
        assert_eq!(archive.retention, stream::RetentionPolicy::Limits);
        assert_eq!(archive.max_bytes, -1);
        let capped = stream_config(&endpoint(StreamRetention::Archive, Some(4096)));
        assert_eq!(capped.max_bytes, 4096);
        for config in [buffer, archive] {
            assert_eq!(config.discard, stream::DiscardPolicy::New);
        }
    }
}

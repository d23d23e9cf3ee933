//! The durable store: the NATS connection (made in the background, so the
//! receiver serves — and reports not ready — while NATS is down), a readiness
//! probe of the endpoint's stream, and the publish that waits for the PubAck.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, context::PublishErrorKind, publish::PublishAck};
use bytes::Bytes;
use hookline_api::ValidatedEndpoint;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::{Config, Error, Result};

/// How often readiness is re-checked while not ready, and while ready.
const PROBE_NOT_READY: Duration = Duration::from_millis(500);
const PROBE_READY: Duration = Duration::from_secs(2);
/// How often start-up looks whether the first connection is made.
const CONNECTED_POLL: Duration = Duration::from_millis(20);

/// The JetStream side of the receiver.
pub struct Store {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    publish_timeout: Duration,
    stream_ok: AtomicBool,
    /// `--provision`: (re)create the stream whenever it is found missing.
    provision: bool,
    provisioned: AtomicBool,
}

impl Store {
    /// Starts connecting; returns at once. The client reconnects by itself forever.
    pub async fn connect(config: &Config) -> Result<Store> {
        let name = format!("hookline-receiver {}", config.endpoint.key());
        let client =
            hookline_api::nats::connect(&config.nats_url, &config.nats_auth, &name).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.publish_timeout)
            .build(client.clone());
        Ok(Store {
            client,
            js,
            stream: config.endpoint.stream.name.clone(),
            publish_timeout: config.publish_timeout,
            stream_ok: AtomicBool::new(false),
            provision: config.provision,
            provisioned: AtomicBool::new(!config.provision),
        })
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Connected, and the endpoint's stream answered the last probe.
    pub fn is_ready(&self) -> bool {
        self.is_connected() && self.stream_ok.load(Ordering::Relaxed)
    }

    /// Waits up to `limit` for the first connection.
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.is_connected() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(CONNECTED_POLL).await;
        }
        true
    }

    /// Asks JetStream about the stream; records and returns whether it answered.
    pub async fn probe(&self) -> bool {
        let ok = self.is_connected()
            && matches!(
                tokio::time::timeout(self.publish_timeout, self.js.get_stream(&self.stream)).await,
                Ok(Ok(_))
            );
        let was = self.stream_ok.swap(ok, Ordering::Relaxed);
        if was != ok {
            if ok {
                tracing::info!(stream = %self.stream, "JetStream stream reachable");
            } else {
                tracing::warn!(stream = %self.stream, "JetStream stream not reachable");
            }
        }
        ok
    }

    /// Creates or updates the stream and durable consumer, once it succeeds.
    pub async fn provision(&self, endpoint: &ValidatedEndpoint) -> bool {
        if self.provisioned.load(Ordering::Relaxed) {
            return true;
        }
        if !self.is_connected() {
            return false;
        }
        match hookline_api::provision::provision(&self.js, endpoint).await {
            Ok(()) => {
                tracing::info!(stream = %self.stream, "stream and durable consumer provisioned");
                self.provisioned.store(true, Ordering::Relaxed);
                true
            }
            Err(err) => {
                tracing::warn!(stream = %self.stream, cause = %err, "provisioning failed; retrying");
                false
            }
        }
    }

    /// Keeps provisioning (when asked) and readiness up to date until dropped.
    pub async fn watch(self: Arc<Self>, endpoint: Arc<ValidatedEndpoint>, metrics: Arc<Metrics>) {
        loop {
            if self.provision(&endpoint).await && !self.probe().await && self.provision {
                // A NATS server that lost its store: make the stream again.
                self.provisioned
                    .store(!self.is_connected(), Ordering::Relaxed);
            }
            metrics.jetstream_ready.set(i64::from(self.is_ready()));
            let pause = if self.is_ready() {
                PROBE_READY
            } else {
                PROBE_NOT_READY
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Publishes and waits for JetStream's acknowledgement, bounded by the
    /// publish timeout. Any failure is a 503: the sender must retry. The
    /// error's reason (stream, NATS's own words) is for the log, never the answer.
    pub async fn publish(
        &self,
        subject: String,
        headers: async_nats::HeaderMap,
        body: Bytes,
    ) -> Result<PublishAck> {
        // Fail fast rather than queue in the client while disconnected.
        if !self.is_connected() {
            return Err(Error::Unavailable("not connected to NATS".into()));
        }
        let message = jetstream::message::PublishMessage::build()
            .payload(body)
            .headers(headers);
        let acked = tokio::time::timeout(self.publish_timeout, async {
            self.js.send_publish(subject, message).await?.await
        })
        .await;
        match acked {
            Ok(Ok(ack)) => Ok(ack),
            Err(_) => Err(self.timed_out()),
            Ok(Err(err)) => Err(match err.kind() {
                PublishErrorKind::TimedOut => self.timed_out(),
                PublishErrorKind::MaxPayloadExceeded => Error::PayloadTooLarge {
                    limit: self.max_payload(),
                },
                PublishErrorKind::StreamNotFound => {
                    Error::Unavailable(format!("stream {} not found", self.stream))
                }
                _ => Error::Unavailable(format!(
                    "JetStream refused the event for stream {}: {err}",
                    self.stream
                )),
            }),
        }
    }

    /// The server's largest message (body plus headers).
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    fn timed_out(&self) -> Error {
        Error::Unavailable(format!(
            "no acknowledgement from stream {} within {:?}",
            self.stream, self.publish_timeout
        ))
    }

    /// Sends what the client still buffers, bounded.
    pub async fn flush(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.client.flush()).await;
    }
}

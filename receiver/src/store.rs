//! The durable store: the NATS connection ([`Nats`], made in the background,
//! so the receiver serves — and reports not ready — while NATS is down, and
//! shared by every endpoint of a pool), a readiness probe of each endpoint's
//! stream (and, for a stream with interest retention, of its durable
//! consumer), and the publish that waits for the PubAck.
//!
//! With `--endpoint` a background task probes the one stream every few
//! seconds ([`Store::watch`]). A pool has no task per endpoint: a request
//! finding its endpoint's figures older than [`ON_DEMAND_MAX_AGE`] probes
//! ([`Store::refresh_if_stale`], one probe in flight per endpoint), so 1,000
//! idle endpoints cost NATS nothing. A member of a pool's shared stream
//! counts only its own subjects' messages there ([`SharedStreamFigures`]).
//!
//! A stream with interest retention keeps nothing while no consumer exists: a
//! PubAck then means nothing was kept. So the receiver publishes only while
//! the last probe saw the durable consumer, and answers 503 otherwise.
//!
//! A buffer's cap is enforced here, not by JetStream (which would reserve it
//! on its store): the probe's STREAM.INFO also gives the stream's size, and
//! while that has reached the cap the receiver answers 503 without
//! publishing. The size is as fresh as the readiness it comes with, so there
//! is no stale size to trust: a probe that fails makes the receiver not ready
//! (503 as before) and the next one that answers brings the size anew.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::{ConsumerInfoErrorKind, PublishError, PublishErrorKind};
use async_nats::jetstream::stream::RetentionPolicy;
use async_nats::jetstream::{self, ErrorCode, publish::PublishAck};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::SelectAll;
use hookline_api::ValidatedEndpoint;
use hookline_api::naming::{self, Deleted};
use hookline_api::validated::StreamRetention;
use tokio::time::Instant;

use crate::metrics::EndpointMetrics;
use crate::{Config, Rejection, Result};

/// How often readiness is re-checked while not ready, and while ready.
const PROBE_NOT_READY: Duration = Duration::from_millis(500);
const PROBE_READY: Duration = Duration::from_secs(2);
/// How often start-up looks whether the first connection is made.
const CONNECTED_POLL: Duration = Duration::from_millis(20);
/// How old a pool endpoint's readiness and stream size may be when a request
/// uses them; an older figure is probed again first.
pub const ON_DEMAND_MAX_AGE: Duration = Duration::from_secs(1);

/// What the last readiness probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// No probe has answered yet, NATS is not connected, or the stream did not answer.
    StreamUnreachable = 0,
    /// The stream has interest retention and its durable consumer is missing:
    /// anything published now would be kept by nobody.
    ConsumerMissing = 1,
    /// The stream answered (and its durable consumer, where it matters).
    Ready = 2,
}

impl Readiness {
    fn from_u8(value: u8) -> Readiness {
        match value {
            2 => Readiness::Ready,
            1 => Readiness::ConsumerMissing,
            _ => Readiness::StreamUnreachable,
        }
    }
}

/// What a listing of streams tells of one: what a probe reads.
#[derive(Clone, Copy, Debug)]
pub struct ListedStream {
    pub retention: RetentionPolicy,
    pub bytes: u64,
    pub consumers: usize,
}

/// What one `STREAM.INFO` of a pool's shared stream, asked for the subjects
/// under a filter, tells: the stream's figures and each subject's messages
/// (JetStream counts messages per subject, not bytes).
#[derive(Clone, Debug)]
pub struct SharedStreamFigures {
    pub retention: RetentionPolicy,
    pub messages: u64,
    pub bytes: u64,
    /// Messages of each subject under the filter that holds any.
    pub subjects: HashMap<String, u64>,
}

impl SharedStreamFigures {
    /// The messages of each member of the pool whose subjects are
    /// `pool_filter` (`hookline.<ns>.POOL_<pool>.>`), by the member's token:
    /// every member's count from one read.
    pub fn messages_by_member(&self, pool_filter: &str) -> HashMap<&str, u64> {
        let pool_prefix = pool_filter.strip_suffix('>').unwrap_or(pool_filter);
        let mut members = HashMap::new();
        for (subject, messages) in &self.subjects {
            if let Some(rest) = subject.strip_prefix(pool_prefix) {
                let member = rest.split_once('.').map_or(rest, |(member, _)| member);
                *members.entry(member).or_default() += messages;
            }
        }
        members
    }

    /// A member's bytes, estimated from its messages.
    pub fn member_bytes(&self, member_messages: u64) -> u64 {
        hookline_api::provision::shared_bytes(member_messages, self.messages, self.bytes)
    }
}

/// An endpoint's place in its pool's shared stream, as the figures need it.
struct SharedMember {
    /// `hookline.<ns>.POOL_<pool>.>`: every member's subjects, read at once.
    pool_filter: String,
    /// The member's token in the pool's subjects, after the pool's prefix.
    token: String,
    /// `<pool prefix><token>.>`: the member's own subjects, for its first probe.
    own_filter: String,
}

impl SharedMember {
    fn of(endpoint: &ValidatedEndpoint) -> Option<SharedMember> {
        let shared = endpoint.stream.shared.as_ref()?;
        let pool_prefix = shared.pool_subject_filter.strip_suffix('>')?;
        let token = endpoint.stream.subject_prefix.strip_prefix(pool_prefix)?;
        Some(SharedMember {
            pool_filter: shared.pool_subject_filter.clone(),
            token: token.to_owned(),
            own_filter: endpoint.stream.subject_filter(),
        })
    }
}

/// The one NATS connection of the process, shared by every endpoint.
pub struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    publish_timeout: Duration,
    /// `--provision`: (re)create a stream whenever it is found missing.
    provision: bool,
    /// What [`Store`]'s probe times count from.
    epoch: Instant,
}

impl Nats {
    /// Starts connecting; returns at once. The client reconnects by itself forever.
    pub async fn connect(config: &Config, name: &str) -> Result<Arc<Nats>> {
        let client = hookline_api::nats::connect(&config.nats_url, &config.nats_auth, name).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.publish_timeout)
            .build(client.clone());
        Ok(Arc::new(Nats {
            client,
            js,
            publish_timeout: config.publish_timeout,
            provision: config.provision,
            epoch: Instant::now(),
        }))
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
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

    /// The server's largest message (body plus headers).
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// Sends what the client still buffers, bounded.
    pub async fn flush(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.client.flush()).await;
    }

    /// One JetStream API request read into `T` (only the fields a caller
    /// needs): `Err` when no answer came, `Ok(Err)` the API's refusal.
    async fn api<T: serde::de::DeserializeOwned>(
        &self,
        subject: String,
        body: serde_json::Value,
    ) -> Result<Result<T, jetstream::Error>, String> {
        let response: jetstream::response::Response<T> = self
            .js
            .request(subject, &body)
            .await
            .map_err(|err| err.to_string())?;
        Ok(match response {
            jetstream::response::Response::Ok(answer) => Ok(answer),
            jetstream::response::Response::Err { error } => Err(error),
        })
    }

    /// Every stream whose subjects fall under `subjects`, by name, with the
    /// figures a probe reads: one `STREAM.LIST` request per 256 streams,
    /// read into [`ListedStream`] only (a whole stream info of a thousand
    /// streams is megabytes).
    pub async fn list_streams(
        &self,
        subjects: &str,
    ) -> Result<HashMap<String, ListedStream>, String> {
        #[derive(serde::Deserialize)]
        struct Page {
            total: usize,
            #[serde(default)]
            streams: Option<Vec<Listed>>,
        }
        #[derive(serde::Deserialize)]
        struct Listed {
            config: ListedConfig,
            state: ListedState,
        }
        #[derive(serde::Deserialize)]
        struct ListedConfig {
            name: String,
            retention: RetentionPolicy,
        }
        #[derive(serde::Deserialize)]
        struct ListedState {
            bytes: u64,
            consumer_count: usize,
        }
        let mut streams = HashMap::new();
        let mut offset = 0;
        loop {
            let page: Page = self
                .api(
                    "STREAM.LIST".to_owned(),
                    serde_json::json!({"offset": offset, "subject": subjects}),
                )
                .await?
                .map_err(|error| error.to_string())?;
            let listed = page.streams.unwrap_or_default();
            if listed.is_empty() {
                return Ok(streams);
            }
            offset += listed.len();
            streams.extend(listed.into_iter().map(|one| {
                let stream = ListedStream {
                    retention: one.config.retention,
                    bytes: one.state.bytes,
                    consumers: one.state.consumer_count,
                };
                (one.config.name, stream)
            }));
            if offset >= page.total {
                return Ok(streams);
            }
        }
    }

    /// One `STREAM.INFO` of `stream` with the messages of each subject under
    /// `filter` (one request per 100,000 subjects that hold messages);
    /// `None` when there is no such stream.
    pub async fn shared_stream_figures(
        &self,
        stream: &str,
        filter: &str,
    ) -> Result<Option<SharedStreamFigures>, String> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            total: usize,
            config: PageConfig,
            state: PageState,
        }
        #[derive(serde::Deserialize)]
        struct PageConfig {
            retention: RetentionPolicy,
        }
        #[derive(serde::Deserialize)]
        struct PageState {
            messages: u64,
            bytes: u64,
            #[serde(default)]
            subjects: Option<HashMap<String, u64>>,
        }
        let mut figures: Option<SharedStreamFigures> = None;
        let mut offset = 0;
        loop {
            let page: Page = match self
                .api(
                    format!("STREAM.INFO.{stream}"),
                    serde_json::json!({"offset": offset, "subjects_filter": filter}),
                )
                .await?
            {
                Ok(page) => page,
                Err(error) if error.error_code() == ErrorCode::STREAM_NOT_FOUND => return Ok(None),
                Err(error) => return Err(error.to_string()),
            };
            let subjects = page.state.subjects.unwrap_or_default();
            let more = !subjects.is_empty() && offset + subjects.len() < page.total;
            offset += subjects.len();
            match &mut figures {
                Some(figures) => figures.subjects.extend(subjects),
                None => {
                    figures = Some(SharedStreamFigures {
                        retention: page.config.retention,
                        messages: page.state.messages,
                        bytes: page.state.bytes,
                        subjects,
                    });
                }
            }
            if !more {
                return Ok(figures);
            }
        }
    }

    /// The client, for the pool's one subscription to deletion advisories.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Milliseconds since this connection was made (never 0: 0 is "never").
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// The JetStream side of one endpoint.
pub struct Store {
    nats: Arc<Nats>,
    endpoint: Arc<ValidatedEndpoint>,
    stream: String,
    /// The endpoint's durable consumer, which an interest stream needs.
    durable: String,
    /// The last probe's [`Readiness`].
    readiness: AtomicU8,
    /// The stream has interest retention (as the last probe found).
    interest: AtomicBool,
    provisioned: AtomicBool,
    /// Bytes the stream held at the last probe.
    stored_bytes: AtomicU64,
    /// The size past which a buffer takes no more events (`spec.stream.maxBytes`).
    buffer_cap: u64,
    /// The stream is a buffer (not limits retention), so [`Store::buffer_cap`]
    /// applies; an archive's cap is its own `max_bytes`.
    buffered: AtomicBool,
    /// The last probe found the buffer at its cap (for logging the change).
    full: AtomicBool,
    /// When the last probe ended ([`Nats::now_ms`]); 0: never.
    probed_at: AtomicU64,
    /// Held by the one request probing on demand; the others use the last
    /// figures (or, before the first probe, wait for it).
    probing: tokio::sync::Mutex<()>,
    /// A pool's request found the figures stale while the stream was ready:
    /// the pool's next listing of its streams refreshes them.
    listing_wanted: AtomicBool,
    /// `Some` for a member of a pool's shared stream, whose figures are its
    /// own subjects' share of the stream.
    shared: Option<SharedMember>,
}

impl Store {
    /// The store of `endpoint` on the shared connection; nothing asked yet.
    pub fn new(nats: Arc<Nats>, endpoint: Arc<ValidatedEndpoint>) -> Store {
        Store {
            stream: endpoint.stream.name.clone(),
            durable: endpoint.consumer.durable_name.clone(),
            readiness: AtomicU8::new(Readiness::StreamUnreachable as u8),
            interest: AtomicBool::new(true),
            provisioned: AtomicBool::new(!nats.provision),
            stored_bytes: AtomicU64::new(0),
            buffer_cap: endpoint
                .stream
                .buffer_cap(StreamRetention::Buffer)
                .unwrap_or(u64::MAX),
            buffered: AtomicBool::new(false),
            full: AtomicBool::new(false),
            probed_at: AtomicU64::new(0),
            probing: tokio::sync::Mutex::new(()),
            listing_wanted: AtomicBool::new(false),
            shared: SharedMember::of(&endpoint),
            nats,
            endpoint,
        }
    }

    /// The endpoint's stream.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    pub fn is_connected(&self) -> bool {
        self.nats.is_connected()
    }

    /// Connected, and the last probe found the stream (and the durable
    /// consumer an interest stream needs).
    pub fn is_ready(&self) -> bool {
        self.is_connected() && self.readiness() == Readiness::Ready
    }

    /// What the last probe found.
    pub fn readiness(&self) -> Readiness {
        Readiness::from_u8(self.readiness.load(Ordering::Relaxed))
    }

    /// Whether a probe has answered since the store was made (`None`: none
    /// yet), for `/endpoints`.
    pub fn stream_reachable(&self) -> Option<bool> {
        (self.probed_at.load(Ordering::Relaxed) != 0)
            .then(|| self.readiness() != Readiness::StreamUnreachable)
    }

    /// Asks JetStream about the stream and, when its retention is interest,
    /// about the durable consumer; records and returns whether both are there.
    pub async fn probe(&self) -> bool {
        let found = if self.is_connected() {
            match tokio::time::timeout(self.nats.publish_timeout, self.inspect()).await {
                Ok(found) => found,
                Err(_elapsed) => Readiness::StreamUnreachable,
            }
        } else {
            Readiness::StreamUnreachable
        };
        self.record(found)
    }

    /// Records what a probe or a listing found, logging a change; true when ready.
    fn record(&self, found: Readiness) -> bool {
        let was = Readiness::from_u8(self.readiness.swap(found as u8, Ordering::Relaxed));
        if was != found {
            match found {
                Readiness::Ready => {
                    tracing::info!(stream = %self.stream, "JetStream stream reachable");
                }
                Readiness::ConsumerMissing => tracing::warn!(
                    stream = %self.stream,
                    consumer = %self.durable,
                    "the durable consumer of this interest-retention stream is missing, so the stream would keep nothing; answering 503 until it exists"
                ),
                Readiness::StreamUnreachable => {
                    tracing::warn!(stream = %self.stream, "JetStream stream not reachable");
                }
            }
        }
        found == Readiness::Ready
    }

    async fn inspect(&self) -> Readiness {
        let (retention, bytes) = match &self.shared {
            None => match self.nats.js.get_stream(&self.stream).await {
                Ok(stream) => {
                    let info = stream.cached_info();
                    (info.config.retention, info.state.bytes)
                }
                Err(err) => {
                    tracing::debug!(stream = %self.stream, cause = %err, "stream probe failed");
                    return Readiness::StreamUnreachable;
                }
            },
            // A member's own subjects only: its messages, and the stream's
            // figures to estimate their bytes by.
            Some(member) => {
                let read = self
                    .nats
                    .shared_stream_figures(&self.stream, &member.own_filter)
                    .await;
                match read {
                    Ok(Some(figures)) => {
                        let messages = figures.subjects.values().sum();
                        (figures.retention, figures.member_bytes(messages))
                    }
                    Ok(None) => {
                        tracing::debug!(stream = %self.stream, "the pool's shared stream is missing");
                        return Readiness::StreamUnreachable;
                    }
                    Err(err) => {
                        tracing::debug!(stream = %self.stream, cause = %err, "stream probe failed");
                        return Readiness::StreamUnreachable;
                    }
                }
            }
        };
        self.record_stream(retention, bytes);
        match retention {
            // These keep what is published whether or not a consumer exists.
            RetentionPolicy::Limits | RetentionPolicy::WorkQueue => Readiness::Ready,
            RetentionPolicy::Interest => self.inspect_consumer().await,
        }
    }

    /// Whether the durable consumer an interest stream needs is there.
    async fn inspect_consumer(&self) -> Readiness {
        let stream = match self.nats.js.get_stream_no_info(&self.stream).await {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!(stream = %self.stream, cause = %err, "stream probe failed");
                return Readiness::StreamUnreachable;
            }
        };
        match stream.consumer_info(&self.durable).await {
            Ok(_) => Readiness::Ready,
            Err(err) => match err.kind() {
                ConsumerInfoErrorKind::NotFound => Readiness::ConsumerMissing,
                ConsumerInfoErrorKind::InvalidName
                | ConsumerInfoErrorKind::Offline
                | ConsumerInfoErrorKind::StreamNotFound
                | ConsumerInfoErrorKind::Request
                | ConsumerInfoErrorKind::JetStream(_)
                | ConsumerInfoErrorKind::TimedOut
                | ConsumerInfoErrorKind::NoResponders => {
                    tracing::debug!(stream = %self.stream, consumer = %self.durable, cause = %err, "consumer probe failed");
                    Readiness::StreamUnreachable
                }
            },
        }
    }

    /// Records what a probe or a listing read of the stream: its retention
    /// and its size.
    fn record_stream(&self, retention: RetentionPolicy, bytes: u64) {
        self.interest
            .store(retention == RetentionPolicy::Interest, Ordering::Relaxed);
        self.record_size(bytes, retention != RetentionPolicy::Limits);
    }

    /// Records the stream's size from a probe, and logs when the buffer
    /// becomes full or has room again.
    fn record_size(&self, bytes: u64, buffered: bool) {
        self.stored_bytes.store(bytes, Ordering::Relaxed);
        self.buffered.store(buffered, Ordering::Relaxed);
        let full = buffered && bytes >= self.buffer_cap;
        if self.full.swap(full, Ordering::Relaxed) != full {
            if full {
                tracing::warn!(stream = %self.stream, bytes, cap = self.buffer_cap, "the buffer is full (spec.stream.maxBytes): answering 503 until the consumer drains it");
            } else {
                tracing::info!(stream = %self.stream, bytes, cap = self.buffer_cap, "the buffer has room again");
            }
        }
    }

    /// Bytes the stream held at the last probe.
    fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed)
    }

    /// The cap this receiver enforces; `None` for an archive, whose cap (if
    /// any) is the stream's own `max_bytes`.
    fn buffer_cap(&self) -> Option<u64> {
        self.buffered
            .load(Ordering::Relaxed)
            .then_some(self.buffer_cap)
    }

    /// Creates or updates the stream and durable consumer, once it succeeds.
    pub async fn provision(&self) -> bool {
        if self.provisioned.load(Ordering::Relaxed) {
            return true;
        }
        if !self.is_connected() {
            return false;
        }
        match hookline_api::provision::provision(&self.nats.js, &self.endpoint).await {
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

    /// Provisions (when asked and not done yet), probes, and records what it
    /// found in `metrics`: one step of [`Store::watch`], or of a pool's
    /// request finding stale figures.
    pub async fn refresh(&self, metrics: &EndpointMetrics) {
        if self.provision().await && !self.probe().await && self.nats.provision {
            // A NATS server that lost its store: make the stream again.
            self.provisioned
                .store(!self.is_connected(), Ordering::Relaxed);
        }
        self.probed(metrics);
    }

    /// Marks the figures fresh and shows them in `metrics`.
    fn probed(&self, metrics: &EndpointMetrics) {
        self.probed_at.store(self.nats.now_ms(), Ordering::Relaxed);
        metrics.jetstream_ready().set(i64::from(self.is_ready()));
        metrics.buffer(self.stored_bytes(), self.buffer_cap());
    }

    /// A pool's probe on demand, when the last one is older than
    /// [`ON_DEMAND_MAX_AGE`]. While the stream is ready the request goes on
    /// with the last figures and asks for the pool's next listing
    /// ([`crate::pool::list_wanted_streams`]): one JetStream call a second
    /// for every busy endpoint of the pool instead of one or two each.
    /// Otherwise one request probes and the others go on with the last
    /// figures; before the first probe they all wait for it, since there are
    /// no figures to go on with.
    pub async fn refresh_if_stale(&self, metrics: &EndpointMetrics) {
        let max_age = u64::try_from(ON_DEMAND_MAX_AGE.as_millis()).unwrap_or(u64::MAX);
        let stale = || {
            let probed = self.probed_at.load(Ordering::Relaxed);
            probed == 0 || self.nats.now_ms().saturating_sub(probed) >= max_age
        };
        if !stale() {
            return;
        }
        let probed_at = self.probed_at.load(Ordering::Relaxed);
        // A shared stream's one read settles its members whether or not
        // they are ready, so a missing pool stream costs one call a second
        // whatever the number of busy members.
        let by_listing = match self.shared {
            None => self.is_ready() && probed_at > 1,
            Some(_) => probed_at != 0,
        };
        if by_listing {
            self.listing_wanted.store(true, Ordering::Relaxed);
            return;
        }
        let _probing = match self.probing.try_lock() {
            Ok(guard) => guard,
            Err(_busy) if self.probed_at.load(Ordering::Relaxed) != 0 => return,
            Err(_busy) => self.probing.lock().await,
        };
        if stale() {
            self.refresh(metrics).await;
        }
    }

    /// Whether a request asked for a listing since the last one (and clears it).
    pub fn take_listing_wanted(&self) -> bool {
        self.listing_wanted.swap(false, Ordering::Relaxed)
    }

    /// The stream's subject prefix with its endpoint's token replaced by
    /// `>`: every stream of the namespace, for a listing.
    pub fn namespace_subjects(&self) -> String {
        let prefix = &self.endpoint.stream.subject_prefix;
        match prefix.rsplit_once('.') {
            Some((namespace, _)) => format!("{namespace}.>"),
            None => format!("{prefix}.>"),
        }
    }

    /// Takes the figures of a pool's listing of its streams (`None`: the
    /// stream was not listed) when they settle readiness: a limits or
    /// work-queue stream, or an interest stream that has consumers and was
    /// ready (a durable consumer deleted since is announced by its
    /// advisory). False when only a probe can tell: the caller probes.
    pub fn refresh_from_listing(
        &self,
        listed: Option<&ListedStream>,
        metrics: &EndpointMetrics,
    ) -> bool {
        let Some(listed) = listed else {
            return false;
        };
        let retention = listed.retention;
        let found = match retention {
            RetentionPolicy::Limits | RetentionPolicy::WorkQueue => Readiness::Ready,
            RetentionPolicy::Interest if listed.consumers == 0 => Readiness::ConsumerMissing,
            RetentionPolicy::Interest if self.readiness() == Readiness::Ready => Readiness::Ready,
            RetentionPolicy::Interest => return false,
        };
        self.record_stream(retention, listed.bytes);
        self.record(found);
        self.probed(metrics);
        true
    }

    /// The pool's shared stream and the filter of every member's subjects,
    /// when the endpoint is a member of one: what the pool reads for
    /// [`Self::refresh_from_shared`].
    pub fn shared_stream(&self) -> Option<(&str, &str)> {
        let member = self.shared.as_ref()?;
        Some((&self.stream, &member.pool_filter))
    }

    /// A member's token in its pool's subjects: its key in
    /// [`SharedStreamFigures::messages_by_member`].
    pub fn shared_token(&self) -> Option<&str> {
        self.shared.as_ref().map(|member| member.token.as_str())
    }

    /// Takes a member's figures from one read of its pool's shared stream
    /// and the member's messages there (`None`: the stream is missing).
    /// False when only a probe can tell (an interest stream; a missing one
    /// with `--provision`, which makes it again): the caller probes.
    pub fn refresh_from_shared(
        &self,
        read: Option<(&SharedStreamFigures, u64)>,
        metrics: &EndpointMetrics,
    ) -> bool {
        let Some((figures, messages)) = read else {
            if self.nats.provision {
                return false;
            }
            self.unreachable(metrics);
            return true;
        };
        let retention = figures.retention;
        if retention == RetentionPolicy::Interest {
            return false;
        }
        self.record_stream(retention, figures.member_bytes(messages));
        self.record(Readiness::Ready);
        self.probed(metrics);
        true
    }

    /// Records that the stream did not answer a pool's read.
    pub fn unreachable(&self, metrics: &EndpointMetrics) {
        self.record(Readiness::StreamUnreachable);
        self.probed(metrics);
    }

    /// Keeps provisioning (when asked) and readiness up to date until dropped.
    pub async fn watch(self: Arc<Self>, metrics: Arc<EndpointMetrics>) {
        let mut deletions = self.deletion_advisories().await;
        loop {
            self.refresh(&metrics).await;
            let pause = if self.is_ready() {
                PROBE_READY
            } else {
                PROBE_NOT_READY
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                Some(advisory) = deletions.next() => {
                    self.deleted(advisory.subject.as_str());
                    metrics.jetstream_ready().set(0);
                }
            }
        }
    }

    /// Subscribes to JetStream's advisories that the stream or its durable
    /// consumer was deleted, so publishing stops at once rather than at the
    /// next probe. Best effort: without them (say, a NATS user not allowed to
    /// subscribe to `$JS.EVENT.>`) the probe alone notices.
    async fn deletion_advisories(&self) -> SelectAll<async_nats::Subscriber> {
        let subjects = [
            naming::stream_deleted_advisory(&self.stream),
            naming::consumer_deleted_advisory(&self.stream, &self.durable),
        ];
        let mut advisories = SelectAll::new();
        for subject in subjects {
            match self.nats.client.subscribe(subject.clone()).await {
                Ok(subscriber) => advisories.push(subscriber),
                Err(err) => {
                    tracing::debug!(%subject, cause = %err, "cannot subscribe to the advisory; the probe alone will notice");
                }
            }
        }
        advisories
    }

    /// Whether a deletion advisory's `subject` names this endpoint's stream
    /// or its durable consumer.
    pub fn is_about(&self, subject: &str) -> bool {
        match naming::deleted(subject) {
            Some(Deleted::Stream(stream)) => stream == self.stream,
            Some(Deleted::Consumer { stream, consumer }) => {
                stream == self.stream && consumer == self.durable
            }
            None => false,
        }
    }

    /// JetStream deleted the stream, or the durable consumer an interest
    /// stream needs: not ready, now (and a pool's next request probes again).
    pub fn deleted(&self, subject: &str) {
        let now = if !matches!(naming::deleted(subject), Some(Deleted::Consumer { .. })) {
            Readiness::StreamUnreachable
        } else if self.interest.load(Ordering::Relaxed) {
            Readiness::ConsumerMissing
        } else {
            return;
        };
        let was = Readiness::from_u8(self.readiness.swap(now as u8, Ordering::Relaxed));
        self.probed_at.store(
            self.probed_at.load(Ordering::Relaxed).min(1),
            Ordering::Relaxed,
        );
        if was == Readiness::Ready {
            tracing::warn!(stream = %self.stream, consumer = %self.durable, %subject, "JetStream reports a deletion; answering 503 until the next probe finds the stream and consumer");
        }
    }

    /// Publishes and waits for JetStream's acknowledgement, bounded by the
    /// publish timeout. A failure that may pass on retry is a 503 (the sender
    /// retries); one that would fail the same way again gets the status of its
    /// cause. The error's reason (stream, NATS's own words) is for the log,
    /// never the answer.
    pub async fn publish(
        &self,
        subject: String,
        headers: async_nats::HeaderMap,
        body: Bytes,
    ) -> Result<PublishAck, Rejection> {
        // Fail fast rather than queue in the client while disconnected.
        if !self.is_connected() {
            return Err(Rejection::Unavailable("not connected to NATS".into()));
        }
        match self.readiness() {
            Readiness::Ready => {}
            Readiness::ConsumerMissing => {
                return Err(Rejection::Unavailable(format!(
                    "durable consumer {} of interest-retention stream {} is missing; nothing published now would be kept",
                    self.durable, self.stream
                )));
            }
            Readiness::StreamUnreachable => {
                return Err(Rejection::Unavailable(format!(
                    "stream {} did not answer the last readiness probe",
                    self.stream
                )));
            }
        }
        if self.full.load(Ordering::Relaxed) {
            return Err(Rejection::BufferFull {
                stream: self.stream.clone(),
                bytes: self.stored_bytes(),
                cap: self.buffer_cap,
            });
        }
        let message = jetstream::message::PublishMessage::build()
            .payload(body)
            .headers(headers);
        let acked = tokio::time::timeout(self.nats.publish_timeout, async {
            self.nats.js.send_publish(subject, message).await?.await
        })
        .await;
        match acked {
            Ok(Ok(ack)) => Ok(ack),
            Err(_elapsed) => Err(self.timed_out()),
            Ok(Err(err)) => Err(self.refused(&err)),
        }
    }

    /// The refusal for a publish JetStream refused.
    fn refused(&self, err: &PublishError) -> Rejection {
        let unavailable = || {
            Rejection::Unavailable(format!(
                "JetStream refused the event for stream {}: {err}",
                self.stream
            ))
        };
        match err.kind() {
            PublishErrorKind::TimedOut => self.timed_out(),
            PublishErrorKind::MaxPayloadExceeded => Rejection::PayloadTooLarge {
                limit: self.max_payload(),
            },
            PublishErrorKind::StreamNotFound => {
                Rejection::Unavailable(format!("stream {} not found", self.stream))
            }
            // Connection trouble and back-pressure pass. So would the two
            // "wrong last" refusals: the receiver sets no expectations, and a
            // sender cannot (its headers travel under `Hookline-Http-`).
            PublishErrorKind::BrokenPipe
            | PublishErrorKind::MaxAckPending
            | PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence => unavailable(),
            PublishErrorKind::Other => {
                let code = std::error::Error::source(err)
                    .and_then(|source| source.downcast_ref::<jetstream::Error>())
                    .map(jetstream::Error::error_code);
                match code {
                    // The stream's own `max_msg_size`: this body never fits.
                    Some(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM) => Rejection::PayloadTooLarge {
                        limit: self.max_payload(),
                    },
                    // Cannot happen while the header block stays within
                    // `HEADER_ALLOWANCE`; if it does, retrying will not help.
                    Some(ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM) => Rejection::HeadersTooLarge {
                        limit: hookline_api::headers::HEADER_ALLOWANCE,
                    },
                    // A full stream (`DiscardPolicy::New`, "store failed")
                    // drains as the consumer catches up; any other code
                    // (an open set of numbers) is NATS's own trouble.
                    Some(_) | None => unavailable(),
                }
            }
        }
    }

    /// The server's largest message (body plus headers).
    pub fn max_payload(&self) -> usize {
        self.nats.max_payload()
    }

    fn timed_out(&self) -> Rejection {
        Rejection::Unavailable(format!(
            "no acknowledgement from stream {} within {:?}",
            self.stream, self.nats.publish_timeout
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_messages_are_its_own_subjects_and_its_bytes_their_share() {
        let subjects = [
            ("hookline.shop.POOL_hooks.alpha.issues", 3),
            ("hookline.shop.POOL_hooks.alpha.push", 1),
            ("hookline.shop.POOL_hooks.beta.issues", 4),
            ("hookline.shop.POOL_other.alpha.issues", 9),
        ];
        let figures = SharedStreamFigures {
            retention: RetentionPolicy::WorkQueue,
            messages: 8,
            bytes: 8000,
            subjects: subjects
                .iter()
                .map(|(subject, messages)| ((*subject).to_owned(), *messages))
                .collect(),
        };
        let members = figures.messages_by_member("hookline.shop.POOL_hooks.>");
        assert_eq!(members.get("alpha"), Some(&4));
        assert_eq!(members.get("beta"), Some(&4));
        assert_eq!(members.len(), 2);
        assert_eq!(figures.member_bytes(4), 4000);
    }
}

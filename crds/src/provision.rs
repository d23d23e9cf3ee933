//! Creates or updates an endpoint's stream and durable consumer. The one
//! implementation, used by the operator ([`ensure`], once per resync, one
//! STREAM.INFO in a steady state; for a member of a pool's shared stream,
//! [`ensure_listed`] and none; for the pool, [`ensure_pool_stream`] and
//! [`ensure_pool_consumer`]) and by the binaries' `--provision`
//! ([`provision`], [`provision_pool`]). Streams carry an owner mark
//! ([`owner`]) so that two clusters on one NATS leave each other's streams
//! alone; [`error`] turns a refusal into a message that leads with the
//! cause and the action.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{
    self, consumer,
    context::{ConsumerInfoErrorKind, RequestError},
    response::Response,
    stream,
};
use futures::TryStreamExt;

use crate::validated::{StreamLimits, StreamRetention, ValidatedEndpoint};

pub mod error;
pub mod owner;

pub use error::{Diagnosis, NatsError, ProvisionError, StorageUsage, diagnose, explain};
pub use owner::{
    OWNER_ENDPOINT_KEY, OWNER_UID_KEY, OwnerMark, StreamOwner, owned_elsewhere_message, owner_mark,
};

/// How long one provisioning round may take before it is reported as failed.
pub const PROVISION_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one provisioning round, failing it after [`PROVISION_TIMEOUT`].
async fn bounded<T>(
    round: impl std::future::Future<Output = Result<T, ProvisionError>>,
) -> Result<T, ProvisionError> {
    tokio::time::timeout(PROVISION_TIMEOUT, round)
        .await
        .map_err(|_| ProvisionError::Timeout(PROVISION_TIMEOUT))?
}

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
/// Only an `Archive` gets a `max_bytes` ([`StreamSettings::stream_max_bytes`]):
/// JetStream reserves it on its store. A `Buffer`'s cap is enforced by the
/// receiver ([`StreamSettings::buffer_cap`]) and reserves nothing.
///
/// [`StreamSettings::stream_max_bytes`]: crate::validated::StreamSettings::stream_max_bytes
/// [`StreamSettings::buffer_cap`]: crate::validated::StreamSettings::buffer_cap
///
/// Not interest retention: a stream of it keeps nothing while no consumer
/// exists, and nats-server before 2.10.25 dropped events it had acknowledged
/// on one when it stopped (found by the fault soak on 2.9.10); work-queue
/// retention lost none there.
pub fn stream_config(endpoint: &ValidatedEndpoint) -> stream::Config {
    let retention = endpoint.stream.retention;
    let settings = &endpoint.stream;
    if let Some(shared) = &settings.shared {
        let limits = StreamLimits {
            max_age: settings.max_age,
            duplicate_window: settings.duplicate_window,
            replicas: settings.replicas,
        };
        let pool = format!("{}/{}", endpoint.namespace, shared.pool);
        let subjects = vec![shared.pool_subject_filter.clone()];
        return pool_stream_config(&settings.name, subjects, &pool, limits);
    }
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
        max_bytes: settings.stream_max_bytes(retention).unwrap_or(-1),
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window,
        ..Default::default()
    }
}

/// The one stream of a pool with a shared stream (`WebhookPool`
/// `spec.stream`), `name` over `subjects`: the operator lists each served
/// member's filter, so an endpoint that left the pool gets no more events
/// there while its last ones drain; a binary's `--provision` takes the
/// pool's whole filter.
/// what a member's own `Buffer` is, work-queue retention and
/// `DiscardPolicy::New` without a `max_bytes` (each member's cap is the
/// receiver's), with the pool's limits. `pool` is `namespace/name`.
pub fn pool_stream_config(
    name: &str,
    subjects: Vec<String>,
    pool: &str,
    limits: StreamLimits,
) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        description: Some(format!("Hookline events of WebhookPool {pool}")),
        subjects,
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::New,
        max_age: limits.max_age,
        max_bytes: -1,
        num_replicas: limits.replicas,
        duplicate_window: limits.duplicate_window,
        ..Default::default()
    }
}

/// A member's share of its pool stream's bytes, from its message count:
/// JetStream counts messages per subject, not bytes, so a member's bytes are
/// its messages times the stream's mean message size.
pub fn shared_bytes(member_messages: u64, stream_messages: u64, stream_bytes: u64) -> u64 {
    if stream_messages == 0 {
        return 0;
    }
    let share =
        u128::from(stream_bytes) * u128::from(member_messages) / u128::from(stream_messages);
    u64::try_from(share).unwrap_or(u64::MAX)
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

/// Messages each pool consumer pod may hold unacknowledged on its pool's
/// shared stream: its batches in flight (one per database connection, of up
/// to [`POOL_BATCH_SIZE`]), the retries waiting out their delay and the
/// events kept for a manifest on its way, with room.
pub const POOL_ACK_PENDING_PER_POD: usize = 10_000;

/// Messages one pull of a pool's shared stream asks for: the batch its
/// members' events are written in, one transaction for all of them.
pub const POOL_BATCH_SIZE: usize = 500;

/// How long the pool's durable waits for an acknowledgement before it
/// redelivers: the pool consumer's statement timeout, since a batch still
/// writing past it would only be written twice (Postgres dedupes it).
pub const POOL_ACK_WAIT: Duration = Duration::from_secs(30);

/// The one durable pull consumer of a pool's shared stream
/// (`hookline-consumer`, unfiltered): every member's events come through it
/// in stream order and the pool consumer splits each batch by member. A
/// work queue refuses durables whose filters overlap, so it takes the whole
/// stream and no member has a durable of its own there. `pool` is
/// `namespace/name`; `max_replicas` the pool consumer's most pods.
pub fn pool_consumer_config(pool: &str, max_replicas: u32) -> consumer::pull::Config {
    let pods = usize::try_from(max_replicas.max(1)).unwrap_or(1);
    consumer::pull::Config {
        durable_name: Some(crate::naming::DURABLE_CONSUMER.to_owned()),
        description: Some(format!("Hookline consumer of WebhookPool {pool}")),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: POOL_ACK_WAIT,
        max_deliver: -1,
        max_ack_pending: i64::try_from(POOL_ACK_PENDING_PER_POD.saturating_mul(pods))
            .unwrap_or(i64::MAX),
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    }
}

/// What the caller keeps between [`ensure`] calls for one endpoint, so a
/// steady state costs one STREAM.INFO: what was applied last, and to which
/// incarnation of the stream.
#[derive(Clone, Debug, Default)]
pub struct Provisioned {
    /// The stream config last sent, or found already in place.
    desired: stream::Config,
    /// The stream config as the server had it afterwards (servers fill in and
    /// normalise fields, and before 2.10 drop metadata).
    applied: stream::Config,
    /// The durable consumer's config last applied.
    consumer: Option<consumer::pull::Config>,
    /// The stream's creation time then: a stream made anew has no consumer.
    created: Option<SystemTime>,
    /// Consumers on the stream then: fewer now means ours may be gone.
    consumer_count: usize,
}

/// What [`ensure`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ensured {
    /// Stream and durable consumer are as specified; the figures for the status.
    Ready(StreamStats),
    /// The stream carries another endpoint's owner mark; nothing was changed.
    OwnedElsewhere(OwnerMark),
}

/// Creates the stream and durable consumer, or updates them to match
/// `endpoint`, and reads the figures; for the operator, once per resync.
///
/// `owner` marks the stream as the endpoint's (an unmarked stream is adopted;
/// one marked by another UID is left alone). `known` carries what the last
/// call applied: with it, a steady state makes one STREAM.INFO (plus a
/// CONSUMER.INFO for an `Archive`, whose pending count is the consumer's).
/// Start with `None`; the call keeps it up to date.
pub async fn ensure(
    js: &jetstream::Context,
    endpoint: &ValidatedEndpoint,
    owner: Option<&StreamOwner>,
    known: &mut Option<Provisioned>,
) -> Result<Ensured, ProvisionError> {
    ensure_listed(js, endpoint, owner, known, None).await
}

/// [`ensure`], with the message count a fresh listing of the pool stream's
/// per-subject counts gives `endpoint` when it is a member of a shared
/// stream (`listed`, 0 when the listing has none of its subjects): the
/// member then makes no call. Ignored for an endpoint with a stream of its own.
pub async fn ensure_listed(
    js: &jetstream::Context,
    endpoint: &ValidatedEndpoint,
    owner: Option<&StreamOwner>,
    known: &mut Option<Provisioned>,
    listed: Option<u64>,
) -> Result<Ensured, ProvisionError> {
    bounded(ensure_inner(js, endpoint, owner, known, listed)).await
}

async fn ensure_inner(
    js: &jetstream::Context,
    endpoint: &ValidatedEndpoint,
    owner: Option<&StreamOwner>,
    known: &mut Option<Provisioned>,
    listed: Option<u64>,
) -> Result<Ensured, ProvisionError> {
    if endpoint.stream.shared.is_some() {
        // Nothing of its own to remember: the pool's stream and durable are the pool's.
        *known = None;
        return ensure_member(js, endpoint, listed)
            .await
            .map(Ensured::Ready);
    }
    let name = endpoint.stream.name.as_str();
    let mut desired = stream_config(endpoint);
    let (stream, info) = match js.get_stream(name).await {
        Ok(stream) => {
            let current = stream.cached_info();
            if let Some(mark) = owner::foreign_owner(&current.config, owner) {
                *known = None;
                return Ok(Ensured::OwnedElsewhere(mark));
            }
            // NATS cannot change an existing stream's retention: it is kept
            // (switching `Buffer` and `Archive` needs the stream made anew),
            // and its size limit is the one of what it is.
            desired.retention = current.config.retention;
            desired.max_bytes = endpoint
                .stream
                .stream_max_bytes(
                    retention_of(current.config.retention).unwrap_or(StreamRetention::Buffer),
                )
                .unwrap_or(-1);
            desired.metadata = owner::desired_metadata(&current.config.metadata, owner);
            let settled = same_settings(&current.config, &desired)
                || known.as_ref().is_some_and(|known| {
                    known.desired == desired && known.applied == current.config
                });
            let info = if settled {
                current.clone()
            } else {
                tracing::info!(stream = name, "updating the stream to match the endpoint");
                js.update_stream(&desired)
                    .await
                    .map_err(stream_error(name, "update"))?
            };
            (stream, info)
        }
        Err(err) if is_stream_not_found(&err.kind()) => {
            desired.metadata = owner::desired_metadata(&Default::default(), owner);
            tracing::info!(stream = name, "creating the stream");
            let stream = js
                .create_stream(desired.clone())
                .await
                .map_err(stream_error(name, "create"))?;
            let info = stream.cached_info().clone();
            (stream, info)
        }
        Err(err) => return Err(stream_error(name, "read")(err)),
    };

    let created = SystemTime::from(info.created);
    let wanted = consumer_config(endpoint);
    let count = info.state.consumer_count;
    let consumer_settled = known.as_ref().is_some_and(|known| {
        known.created == Some(created)
            && known.consumer.as_ref() == Some(&wanted)
            && count > 0
            && count >= known.consumer_count
    });
    let mut applied_consumer = None;
    if !consumer_settled {
        applied_consumer = Some(apply_consumer(js, endpoint, &wanted).await?);
    }
    let retention = retention_of(info.config.retention);
    let pending = match (retention, &applied_consumer) {
        // A work queue keeps exactly what is not yet acknowledged.
        (Some(StreamRetention::Buffer), _) => info.state.messages,
        (_, Some(consumer)) => pending_of(consumer),
        (_, None) => match read_pending(&stream, endpoint).await? {
            Some(pending) => pending,
            None => {
                let consumer = apply_consumer(js, endpoint, &wanted).await?;
                let pending = pending_of(&consumer);
                applied_consumer = Some(consumer);
                pending
            }
        },
    };
    let stats = stats_of(&info, endpoint, retention, pending);
    *known = Some(Provisioned {
        desired,
        applied: info.config,
        consumer: Some(wanted),
        created: Some(created),
        consumer_count: if applied_consumer.is_some() {
            count.max(1)
        } else {
            count
        },
    });
    Ok(Ensured::Ready(stats))
}

/// [`ensure`] for a member of a pool's shared stream: its figures. The
/// pool's stream and its one durable are the pool's ([`ensure_pool_stream`],
/// [`ensure_pool_consumer`]): the stream is made here only when missing,
/// never changed, so members never fight over the pool's limits, and a
/// member makes no durable there.
///
/// A steady state costs no call when `listed` (a fresh listing's count of
/// the member's messages) is given, else one STREAM.INFO filtered on the
/// member's subjects.
///
/// The figures are the member's: `messages` and `pending` its messages in
/// the pool's stream (a work queue keeps exactly those not written yet,
/// delivered or not), `bytes` 0 and `last_stored` `None`, which only the
/// pool stream's figures give ([`shared_bytes`]).
async fn ensure_member(
    js: &jetstream::Context,
    endpoint: &ValidatedEndpoint,
    listed: Option<u64>,
) -> Result<StreamStats, ProvisionError> {
    let pending = match listed {
        Some(pending) => pending,
        None => {
            let name = endpoint.stream.name.as_str();
            let filter = endpoint.stream.subject_filter();
            match stream_with_counts(js, name, &filter).await? {
                Some((_, counts)) => counts.values().sum(),
                None => {
                    tracing::info!(stream = name, "creating the pool's shared stream");
                    js.create_stream(stream_config(endpoint))
                        .await
                        .map_err(stream_error(name, "create"))?;
                    0
                }
            }
        }
    };
    Ok(StreamStats {
        messages: pending,
        bytes: 0,
        limit_bytes: endpoint.stream.buffer_cap(StreamRetention::Buffer),
        pending,
        last_stored: None,
        retention: Some(StreamRetention::Buffer),
    })
}

/// A pool's shared stream as [`ensure_pool_stream`] left it.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolStreamState {
    /// Its config and figures.
    pub info: stream::Info,
    /// Messages stored per member token (the subject token after the pool's
    /// prefix, [`crate::naming::pool_member_token`]), from the same
    /// STREAM.INFO; a member without any is absent.
    pub member_messages: HashMap<String, u64>,
}

/// Sums a pool stream's per-subject message counts per member token (the
/// token after `pool_prefix`); subjects outside the prefix are left out.
pub fn member_messages(
    pool_prefix: &str,
    subjects: impl IntoIterator<Item = (String, u64)>,
) -> HashMap<String, u64> {
    let mut members = HashMap::new();
    for (subject, count) in subjects {
        if let Some(token) = crate::naming::pool_member_of_subject(pool_prefix, &subject) {
            *members.entry(token.to_owned()).or_insert(0) += count;
        }
    }
    members
}

/// The stream `name` (one STREAM.INFO) with its messages per subject under
/// `filter`; `None` when there is no such stream. One request unless more
/// subjects match than a page holds (100,000 on nats-server 2.10 and
/// later): async-nats's `info_with_subjects` would ask for a second page
/// whenever the first held any.
async fn stream_with_counts(
    js: &jetstream::Context,
    name: &str,
    filter: &str,
) -> Result<Option<(stream::Info, HashMap<String, u64>)>, ProvisionError> {
    let mut counts = HashMap::new();
    let mut first: Option<stream::Info> = None;
    loop {
        let request = serde_json::json!({"subjects_filter": filter, "offset": counts.len()});
        let answer: Response<serde_json::Value> = js
            .request(format!("STREAM.INFO.{name}"), &request)
            .await
            .map_err(stream_error(name, "read"))?;
        let mut page = match answer {
            Response::Ok(page) => page,
            Response::Err { error }
                if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                return Ok(None);
            }
            Response::Err { error } => {
                return Err(stream_error(name, "read")(RequestError::from(error)));
            }
        };
        // The page's size and the counts, which async-nats's `Info` keeps
        // to itself.
        let total = page
            .get("total")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let subjects = page
            .get_mut("state")
            .and_then(serde_json::Value::as_object_mut)
            .and_then(|state| state.remove("subjects"));
        let info: stream::Info = serde_json::from_value(page).map_err(|err| {
            stream_error(name, "read")(RequestError::with_source(
                jetstream::context::RequestErrorKind::Other,
                err,
            ))
        })?;
        let before = counts.len();
        if let Some(serde_json::Value::Object(subjects)) = subjects {
            counts.extend(
                subjects
                    .into_iter()
                    .map(|(subject, count)| (subject, count.as_u64().unwrap_or(0))),
            );
        }
        // The stream's figures are the first page's; later pages only add subjects.
        if first.is_none() {
            first = Some(info);
        }
        let listed = u64::try_from(counts.len()).unwrap_or(u64::MAX);
        if listed >= total || counts.len() == before {
            return Ok(first.map(|info| (info, counts)));
        }
    }
}

/// Creates the pool's shared stream, or updates it to `config`
/// ([`pool_stream_config`]); for the operator, once per pool and resync.
/// Returns the stream's info (its messages and bytes, for [`shared_bytes`])
/// and its messages per member, read with one STREAM.INFO filtered on
/// `pool_prefix` (`<prefix>.>`, every member's subjects), or the mark of
/// another owner, in which case nothing was changed.
pub async fn ensure_pool_stream(
    js: &jetstream::Context,
    mut config: stream::Config,
    pool_prefix: &str,
    owner: Option<&StreamOwner>,
) -> Result<Result<PoolStreamState, OwnerMark>, ProvisionError> {
    let round = async {
        let name = config.name.clone();
        let filter = format!("{pool_prefix}.>");
        match stream_with_counts(js, &name, &filter).await? {
            Some((current, counts)) => {
                if let Some(mark) = owner::foreign_owner(&current.config, owner) {
                    return Ok(Err(mark));
                }
                let member_messages = member_messages(pool_prefix, counts);
                config.metadata = owner::desired_metadata(&current.config.metadata, owner);
                let info = if same_settings(&current.config, &config) {
                    current
                } else {
                    tracing::info!(stream = name, "updating the pool's shared stream");
                    js.update_stream(&config)
                        .await
                        .map_err(stream_error(&name, "update"))?
                };
                Ok(Ok(PoolStreamState {
                    info,
                    member_messages,
                }))
            }
            None => {
                config.metadata = owner::desired_metadata(&Default::default(), owner);
                tracing::info!(stream = name, "creating the pool's shared stream");
                let stream = js
                    .create_stream(config)
                    .await
                    .map_err(stream_error(&name, "create"))?;
                Ok(Ok(PoolStreamState {
                    info: stream.cached_info().clone(),
                    member_messages: HashMap::new(),
                }))
            }
        }
    };
    bounded(round).await
}

/// What [`ensure_pool_consumer`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolConsumerChanges {
    /// Durables of members deleted (`hookline-consumer-<member>`, the
    /// layout before the pool's one durable).
    pub deleted: Vec<String>,
    /// Whether the pool's durable was made or updated.
    pub applied: bool,
}

/// The one durable of the pool's shared stream `stream`, `wanted`
/// ([`pool_consumer_config`]): one CONSUMER.LIST (a page per 256
/// consumers), then every member durable of the earlier layout
/// (`hookline-consumer-*`) deleted and the pool's durable made or updated
/// when missing or not as wanted. A work queue refuses an unfiltered
/// durable while a filtered one exists, hence the deletes first; deleting a
/// durable of a work queue keeps its messages (what it had delivered and not
/// acknowledged is delivered again, and Postgres dedupes it). Other
/// consumers are left alone.
pub async fn ensure_pool_consumer(
    js: &jetstream::Context,
    stream: &str,
    wanted: &consumer::pull::Config,
) -> Result<PoolConsumerChanges, ProvisionError> {
    let round = async {
        let handle = js
            .get_stream_no_info(stream)
            .await
            .map_err(stream_error(stream, "read"))?;
        let consumers: Vec<consumer::Info> = handle
            .consumers()
            .try_collect()
            .await
            .map_err(stream_error(stream, "list the consumers of"))?;
        let durable = wanted.durable_name.as_deref().unwrap_or_default();
        let mut changes = PoolConsumerChanges::default();
        for info in &consumers {
            if info
                .name
                .starts_with(crate::naming::POOL_MEMBER_DURABLE_PREFIX)
            {
                remove_durable(js, stream, &info.name).await?;
                tracing::info!(
                    stream,
                    consumer = info.name,
                    "deleted a member's durable of the pool's stream: the pool's one durable takes its events"
                );
                changes.deleted.push(info.name.clone());
            }
        }
        let current = consumers.iter().find(|info| info.name == durable);
        if current.is_none_or(|info| !same_consumer(&info.config, wanted)) {
            tracing::info!(
                stream,
                consumer = durable,
                "making or updating the pool's durable"
            );
            handle
                .create_consumer(wanted.clone())
                .await
                .map_err(|err| ProvisionError::Consumer {
                    stream: stream.to_owned(),
                    consumer: durable.to_owned(),
                    action: "create or update",
                    source: err.into(),
                })?;
            changes.applied = true;
        }
        Ok(changes)
    };
    bounded(round).await
}

/// Whether the server's consumer has every setting the pool's durable is
/// made with (the server fills in the others).
fn same_consumer(current: &consumer::Config, wanted: &consumer::pull::Config) -> bool {
    current.durable_name == wanted.durable_name
        && current.deliver_subject.is_none()
        && current.description == wanted.description
        && current.ack_policy == wanted.ack_policy
        && current.ack_wait == wanted.ack_wait
        && current.max_deliver == wanted.max_deliver
        && current.max_ack_pending == wanted.max_ack_pending
        && current.deliver_policy == wanted.deliver_policy
        && current.filter_subject == wanted.filter_subject
        && current.filter_subjects == wanted.filter_subjects
}

/// What [`retire_own_stream`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retirement {
    /// There is no such stream (any more).
    Missing,
    /// It held nothing and was deleted.
    Deleted,
    /// Its subjects are retired, and it still holds these events: the
    /// pool's consumer drains them through the stream's own durable.
    Draining {
        messages: u64,
        bytes: u64,
        /// Work-queue retention: `messages` are exactly the events not yet written.
        work_queue: bool,
    },
    /// It carries another endpoint's owner mark and was left as it is.
    OwnedElsewhere(OwnerMark),
}

/// A member's own stream `name` once its events go to its pool's shared
/// stream: its subjects become `[retired_subject]` (nothing else of its
/// config changes, so its durable keeps draining what it holds and nothing
/// new lands in it), and it is deleted once it holds nothing. One
/// STREAM.INFO per call, plus the update and the delete when they are due;
/// the caller stops calling once it is gone.
pub async fn retire_own_stream(
    js: &jetstream::Context,
    name: &str,
    retired_subject: &str,
    owner: &StreamOwner,
) -> Result<Retirement, ProvisionError> {
    let round = async {
        let mut info = match removable(js, name, owner).await? {
            Ok(info) => info,
            Err(Cleanup::OwnedElsewhere(mark)) => return Ok(Retirement::OwnedElsewhere(mark)),
            Err(Cleanup::Missing | Cleanup::Done) => return Ok(Retirement::Missing),
        };
        info = close_to(
            js,
            name,
            info,
            retired_subject,
            "its endpoint's events go to its pool's stream now",
        )
        .await?;
        if info.state.messages > 0 {
            return Ok(Retirement::Draining {
                messages: info.state.messages,
                bytes: info.state.bytes,
                work_queue: info.config.retention == stream::RetentionPolicy::WorkQueue,
            });
        }
        tracing::info!(
            stream = name,
            "deleting the drained stream of a pool member"
        );
        Ok(if remove_stream(js, name).await? {
            Retirement::Deleted
        } else {
            Retirement::Missing
        })
    };
    bounded(round).await
}

/// Deletes durable `durable` of the stream `stream`; a missing one (or
/// stream) is fine. Returns whether it existed.
async fn remove_durable(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> Result<bool, ProvisionError> {
    match js.delete_consumer_from_stream(durable, stream).await {
        Ok(_) => Ok(true),
        Err(err) => match err.kind() {
            stream::ConsumerErrorKind::JetStream(api)
                if matches!(
                    api.error_code(),
                    jetstream::ErrorCode::CONSUMER_NOT_FOUND
                        | jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                Ok(false)
            }
            _ => Err(ProvisionError::Consumer {
                stream: stream.to_owned(),
                consumer: durable.to_owned(),
                action: "delete",
                source: err.into(),
            }),
        },
    }
}

/// Removes the stored events of the subjects `subject_filter` (one member's,
/// `<pool prefix>.<name>.>`) from the stream `stream` (its pool's), and
/// nothing else. Returns how many went; `None` when there is no such stream.
pub async fn purge_subjects(
    js: &jetstream::Context,
    stream: &str,
    subject_filter: &str,
) -> Result<Option<u64>, ProvisionError> {
    let round = async {
        let handle = js
            .get_stream_no_info(stream)
            .await
            .map_err(stream_error(stream, "read"))?;
        match handle.purge().filter(subject_filter).await {
            Ok(response) => Ok(Some(response.purged)),
            Err(err) => match err.kind() {
                stream::PurgeErrorKind::JetStream(api)
                    if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(stream_error(stream, "purge")(err)),
            },
        }
    };
    bounded(round).await
}

/// Creates the stream and durable consumer, or updates them to match
/// `endpoint`: the binaries' `--provision`. Keeps any owner mark. For a
/// member of a pool's shared stream, [`provision_pool`].
pub async fn provision(
    js: &jetstream::Context,
    endpoint: &ValidatedEndpoint,
) -> Result<(), ProvisionError> {
    if endpoint.stream.shared.is_some() {
        return provision_pool(js, endpoint).await;
    }
    ensure(js, endpoint, None, &mut None).await.map(|_| ())
}

/// The binaries' `--provision` for a pool's shared stream (`member` is any
/// of its members, [`ValidatedEndpoint::in_shared_stream`]): creates the
/// pool's stream over the pool's whole filter and its one durable
/// ([`pool_consumer_config`]) when missing; leaves existing ones as they are
/// (the operator keeps them).
pub async fn provision_pool(
    js: &jetstream::Context,
    member: &ValidatedEndpoint,
) -> Result<(), ProvisionError> {
    let Some(shared) = &member.stream.shared else {
        return ensure(js, member, None, &mut None).await.map(|_| ());
    };
    let name = member.stream.name.as_str();
    let round = async {
        let stream = match js.get_stream(name).await {
            Ok(stream) => stream,
            Err(err) if is_stream_not_found(&err.kind()) => {
                tracing::info!(stream = name, "creating the pool's shared stream");
                js.create_stream(stream_config(member))
                    .await
                    .map_err(stream_error(name, "create"))?
            }
            Err(err) => return Err(stream_error(name, "read")(err)),
        };
        let durable = crate::naming::DURABLE_CONSUMER;
        if stream.consumer_info(durable).await.is_ok() {
            return Ok(());
        }
        let pool = format!("{}/{}", member.namespace, shared.pool);
        stream
            .create_consumer(pool_consumer_config(&pool, 1))
            .await
            .map(|_| ())
            .map_err(|err| ProvisionError::Consumer {
                stream: name.to_owned(),
                consumer: durable.to_owned(),
                action: "create",
                source: err.into(),
            })
    };
    bounded(round).await
}

/// Creates or updates the durable consumer (CONSUMER.CREATE does both).
async fn apply_consumer(
    js: &jetstream::Context,
    endpoint: &ValidatedEndpoint,
    config: &consumer::pull::Config,
) -> Result<consumer::Info, ProvisionError> {
    let stream = endpoint.stream.name.as_str();
    tracing::debug!(stream, "creating or updating the durable consumer");
    js.create_consumer_on_stream(config.clone(), stream)
        .await
        .map(|consumer| consumer.cached_info().clone())
        .map_err(|err| ProvisionError::Consumer {
            stream: stream.to_owned(),
            consumer: endpoint.consumer.durable_name.clone(),
            action: "create or update",
            source: err.into(),
        })
}

/// The durable consumer's pending count; `None` when it does not exist.
async fn read_pending(
    stream: &stream::Stream,
    endpoint: &ValidatedEndpoint,
) -> Result<Option<u64>, ProvisionError> {
    let durable = endpoint.consumer.durable_name.as_str();
    match stream.consumer_info(durable).await {
        Ok(info) => Ok(Some(pending_of(&info))),
        Err(err) => {
            let missing = match err.kind() {
                ConsumerInfoErrorKind::NotFound => true,
                ConsumerInfoErrorKind::JetStream(api) => {
                    api.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
                }
                _ => false,
            };
            if missing {
                return Ok(None);
            }
            Err(ProvisionError::Consumer {
                stream: endpoint.stream.name.clone(),
                consumer: durable.to_owned(),
                action: "read",
                source: err.into(),
            })
        }
    }
}

fn pending_of(consumer: &consumer::Info) -> u64 {
    consumer.num_pending + consumer.num_ack_pending as u64
}

fn retention_of(policy: stream::RetentionPolicy) -> Option<StreamRetention> {
    match policy {
        stream::RetentionPolicy::WorkQueue => Some(StreamRetention::Buffer),
        stream::RetentionPolicy::Limits => Some(StreamRetention::Archive),
        // Made by hand or by an older Hookline: acknowledged events leave
        // too, but nothing is kept while no consumer exists.
        stream::RetentionPolicy::Interest => None,
    }
}

fn stats_of(
    info: &stream::Info,
    endpoint: &ValidatedEndpoint,
    retention: Option<StreamRetention>,
    pending: u64,
) -> StreamStats {
    let state = &info.state;
    let limit_bytes = match retention {
        Some(StreamRetention::Archive) => u64::try_from(info.config.max_bytes)
            .ok()
            .filter(|limit| *limit > 0),
        // An interest stream, too, holds only what is not yet written.
        Some(StreamRetention::Buffer) | None => endpoint.stream.buffer_cap(StreamRetention::Buffer),
    };
    StreamStats {
        messages: state.messages,
        bytes: state.bytes,
        limit_bytes,
        pending,
        last_stored: (state.messages > 0).then(|| state.last_timestamp.into()),
        retention,
    }
}

/// Maps an async-nats error on the stream to a [`ProvisionError`].
fn stream_error<'a, E: Into<NatsError>>(
    stream: &'a str,
    action: &'static str,
) -> impl FnOnce(E) -> ProvisionError + 'a {
    move |err| ProvisionError::Stream {
        stream: stream.to_owned(),
        action,
        source: err.into(),
    }
}

/// Whether the server's stream already has every setting [`stream_config`]
/// makes and the metadata wanted, so a steady state sends no update.
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
        && owner::user_metadata(&current.metadata) == desired.metadata
}

fn is_stream_not_found(kind: &jetstream::context::GetStreamErrorKind) -> bool {
    matches!(kind, jetstream::context::GetStreamErrorKind::JetStream(err)
        if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// What a cleanup did with the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// Deleted, or released (no owner mark left).
    Done,
    /// There is no such stream.
    Missing,
    /// The stream carries another endpoint's owner mark and was left as it is.
    OwnedElsewhere(OwnerMark),
}

/// The finalizer's `deletionPolicy: Delete`: removes the stream `name` (and
/// with it the durable consumer) when it carries `owner`'s mark or none.
/// Takes the name, not the endpoint, so a resource whose spec no longer
/// validates can still be cleaned up.
pub async fn delete_owned(
    js: &jetstream::Context,
    name: &str,
    owner: &StreamOwner,
) -> Result<Cleanup, ProvisionError> {
    let round = async {
        if let Err(found) = removable(js, name, owner).await? {
            return Ok(found);
        }
        Ok(if remove_stream(js, name).await? {
            Cleanup::Done
        } else {
            Cleanup::Missing
        })
    };
    bounded(round).await
}

/// The finalizer's `deletionPolicy: Retain`: keeps the stream and its events
/// but drops `owner`'s mark, so the next endpoint of that name adopts it
/// instead of finding it owned elsewhere.
pub async fn release(
    js: &jetstream::Context,
    name: &str,
    owner: &StreamOwner,
) -> Result<Cleanup, ProvisionError> {
    let round = async {
        let current = match removable(js, name, owner).await? {
            Ok(info) => info.config,
            Err(found) => return Ok(found),
        };
        if owner_mark(&current).is_none() {
            return Ok(Cleanup::Done);
        }
        unmark(js, name, current).await?;
        Ok(Cleanup::Done)
    };
    bounded(round).await
}

/// Updates the stream `name` from `current` with its owner mark removed and
/// nothing else changed.
async fn unmark(
    js: &jetstream::Context,
    name: &str,
    current: stream::Config,
) -> Result<stream::Info, ProvisionError> {
    let config = stream::Config {
        metadata: owner::released_metadata(&current.metadata),
        ..current
    };
    js.update_stream(&config)
        .await
        .map_err(stream_error(name, "update"))
}

/// What a deleted pool's cleanup did with its shared stream
/// ([`clean_up_pool_stream`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolCleanup {
    /// It held no event: deleted, with its durables.
    Deleted,
    /// It still held events: kept with them, taking no new ones, and
    /// released (no owner mark), so a pool of that name made again adopts
    /// it and its consumer drains them.
    Released { messages: u64 },
    /// No such stream, or another owner's (left as it is).
    Left(Cleanup),
}

/// A deleted pool's shared stream `name`: first its subjects become
/// `closed_subject` alone, so nothing more is stored in it (the pool's
/// receivers may still run while the pool's children are collected, and
/// get no stream: 503), then it is deleted when it holds nothing, else
/// released with its events. Deleting it while it holds events would lose
/// them; keeping its mark would leave a pool made again under the same
/// name refused its own members' events.
pub async fn clean_up_pool_stream(
    js: &jetstream::Context,
    name: &str,
    closed_subject: &str,
    owner: &StreamOwner,
) -> Result<PoolCleanup, ProvisionError> {
    let round = async {
        let info = match removable(js, name, owner).await? {
            Ok(info) => info,
            Err(found) => return Ok(PoolCleanup::Left(found)),
        };
        let info = close_to(js, name, info, closed_subject, "its pool was deleted").await?;
        if info.state.messages == 0 {
            remove_stream(js, name).await?;
            return Ok(PoolCleanup::Deleted);
        }
        unmark(js, name, info.config).await?;
        Ok(PoolCleanup::Released {
            messages: info.state.messages,
        })
    };
    bounded(round).await
}

/// Makes `subject` the stream's only subject (nothing else of its config
/// changes, so its durables keep draining what it holds and nothing new
/// lands in it), saying `why` when it changes; the stream's info after.
async fn close_to(
    js: &jetstream::Context,
    name: &str,
    info: stream::Info,
    subject: &str,
    why: &str,
) -> Result<stream::Info, ProvisionError> {
    let closed = vec![subject.to_owned()];
    if info.config.subjects == closed {
        return Ok(info);
    }
    tracing::info!(
        stream = name,
        subject,
        "closing the stream to new events: {why}"
    );
    let config = stream::Config {
        subjects: closed,
        metadata: owner::user_metadata(&info.config.metadata),
        ..info.config
    };
    js.update_stream(&config)
        .await
        .map_err(stream_error(name, "update"))
}

/// The stream `name` (config and state) when `owner` may remove, release or
/// retire it; else what the cleanup found (no stream, or another owner's).
async fn removable(
    js: &jetstream::Context,
    name: &str,
    owner: &StreamOwner,
) -> Result<Result<stream::Info, Cleanup>, ProvisionError> {
    let stream = match js.get_stream(name).await {
        Ok(stream) => stream,
        Err(err) if is_stream_not_found(&err.kind()) => return Ok(Err(Cleanup::Missing)),
        Err(err) => return Err(stream_error(name, "read")(err)),
    };
    let info = stream.cached_info();
    Ok(match owner::may_remove(&info.config, owner) {
        Ok(()) => Ok(info.clone()),
        Err(mark) => Err(Cleanup::OwnedElsewhere(mark)),
    })
}

/// Deletes the stream `name`: true when it was there, false when it was
/// already gone.
async fn remove_stream(js: &jetstream::Context, name: &str) -> Result<bool, ProvisionError> {
    match js.delete_stream(name).await {
        Ok(_) => Ok(true),
        Err(err) if is_stream_not_found(&err.kind()) => Ok(false),
        Err(err) => Err(stream_error(name, "delete")(err)),
    }
}

/// Removes the stream `name` whoever owns it; a missing stream is fine.
/// For tools and tests: the operator uses [`delete_owned`].
pub async fn delete_stream(js: &jetstream::Context, name: &str) -> Result<(), ProvisionError> {
    bounded(remove_stream(js, name)).await.map(|_| ())
}

/// What the stream and the durable consumer hold right now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Messages stored in the stream.
    pub messages: u64,
    /// Bytes stored in the stream.
    pub bytes: u64,
    /// Past this many bytes new events get 503: a buffer's cap (the
    /// receiver's) or an archive's `max_bytes`; `None`: no cap.
    pub limit_bytes: Option<u64>,
    /// Messages not yet delivered plus delivered but not acknowledged.
    pub pending: u64,
    /// When the newest message was stored; `None` for an empty stream.
    pub last_stored: Option<std::time::SystemTime>,
    /// The stream's retention as the server has it (it cannot change after
    /// creation, whatever the spec says now).
    pub retention: Option<StreamRetention>,
}

/// Reads the stream's and durable consumer's state (a missing consumer counts
/// as nothing pending). One STREAM.INFO, plus a CONSUMER.INFO unless the
/// stream is a `Buffer`.
pub async fn stats(
    js: &jetstream::Context,
    endpoint: &ValidatedEndpoint,
) -> Result<StreamStats, ProvisionError> {
    let name = endpoint.stream.name.as_str();
    let read = async {
        let stream = js
            .get_stream(name)
            .await
            .map_err(stream_error(name, "read"))?;
        let info = stream.cached_info();
        let retention = retention_of(info.config.retention);
        let pending = match retention {
            Some(StreamRetention::Buffer) => info.state.messages,
            _ => read_pending(&stream, endpoint).await?.unwrap_or(0),
        };
        Ok(stats_of(info, endpoint, retention, pending))
    };
    bounded(read).await
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
    fn a_buffer_is_a_work_queue_that_reserves_nothing_and_an_archive_an_uncapped_log() {
        let buffer = stream_config(&endpoint(StreamRetention::Buffer, None));
        assert_eq!(buffer.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(buffer.max_bytes, -1, "JetStream would reserve it");
        let archive = stream_config(&endpoint(StreamRetention::Archive, None));
        assert_eq!(archive.retention, stream::RetentionPolicy::Limits);
        assert_eq!(archive.max_bytes, -1);
        for config in [buffer, archive] {
            assert_eq!(config.discard, stream::DiscardPolicy::New);
        }
    }

    #[test]
    fn a_pool_streams_subject_counts_are_summed_per_member_token() {
        let counts = [
            ("hookline.shop.POOL_busy.a.push", 2),
            ("hookline.shop.POOL_busy.a.invoice_paid", 3),
            ("hookline.shop.POOL_busy.b_eu.push", 1),
            ("hookline.shop.POOL_busyer.c.push", 7),
            ("hookline.other.a.push", 9),
        ]
        .map(|(subject, count)| (subject.to_owned(), count));
        assert_eq!(
            member_messages("hookline.shop.POOL_busy", counts),
            HashMap::from([("a".to_owned(), 5), ("b_eu".to_owned(), 1)]),
            "another pool's prefix and other subjects are left out"
        );
    }

    #[test]
    fn max_bytes_caps_an_archive_stream_and_a_buffer_through_the_receiver() {
        let capped = endpoint(StreamRetention::Archive, Some(4096));
        assert_eq!(stream_config(&capped).max_bytes, 4096);
        assert_eq!(capped.stream.buffer_cap(StreamRetention::Archive), None);
        let small = endpoint(StreamRetention::Buffer, Some(4096));
        assert_eq!(stream_config(&small).max_bytes, -1);
        assert_eq!(small.stream.buffer_cap(StreamRetention::Buffer), Some(4096));
        let default = endpoint(StreamRetention::Buffer, None);
        assert_eq!(
            default.stream.buffer_cap(StreamRetention::Buffer),
            Some(512 * 1024 * 1024)
        );
    }
}

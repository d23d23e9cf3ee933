//! Why provisioning failed, and how to say so to an SRE: the cause first,
//! then what to do, chosen by NATS's JetStream error code.

use std::time::Duration;

use async_nats::jetstream::{
    self, ErrorCode,
    context::{
        ConsumerInfoError, ConsumerInfoErrorKind, CreateStreamError, CreateStreamErrorKind,
        GetStreamError, GetStreamErrorKind, RequestError, RequestErrorKind,
    },
    stream::{ConsumerError, ConsumerErrorKind, PurgeError, PurgeErrorKind},
};

use crate::validated::ValidatedEndpoint;

/// Why provisioning failed; every variant means "NATS said no or did not answer".
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("cannot {action} stream {stream}: {source}")]
    Stream {
        stream: String,
        /// What was asked: `read`, `create`, `update`, `delete`, `purge` or
        /// `list the consumers of`.
        action: &'static str,
        source: NatsError,
    },
    #[error("cannot {action} durable consumer {consumer} on {stream}: {source}")]
    Consumer {
        stream: String,
        consumer: String,
        /// What was asked: `create or update`, `read` or `delete`.
        action: &'static str,
        source: NatsError,
    },
    #[error("NATS did not answer within {0:?}")]
    Timeout(Duration),
}

/// NATS's answer to one JetStream request that failed, classified once so
/// [`ProvisionError::describe`] need not pick apart async-nats's error kinds.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct NatsError {
    answer: Answer,
    source: Box<dyn std::error::Error + Send + Sync>,
}

#[derive(Clone, Debug, PartialEq)]
enum Answer {
    /// The JetStream API answered with an error.
    Api(jetstream::Error),
    /// Nobody answered on `$JS.API`: JetStream is off on the server.
    NoJetStream,
    TimedOut,
    Other,
}

impl NatsError {
    fn new(answer: Answer, source: impl std::error::Error + Send + Sync + 'static) -> NatsError {
        NatsError {
            answer,
            source: Box::new(source),
        }
    }

    /// The JetStream API error code NATS answered with, if it answered with one.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match &self.answer {
            Answer::Api(err) => Some(err.error_code()),
            _ => None,
        }
    }

    /// Whether NATS did not answer in time (rather than refusing).
    pub fn timed_out(&self) -> bool {
        self.answer == Answer::TimedOut
    }
}

/// A request error below another error: no responders means no JetStream.
fn request_answer(err: &(dyn std::error::Error + 'static)) -> Answer {
    let mut next = err.source();
    while let Some(cause) = next {
        if let Some(request) = cause.downcast_ref::<RequestError>() {
            return match request.kind() {
                RequestErrorKind::NoResponders => Answer::NoJetStream,
                RequestErrorKind::TimedOut => Answer::TimedOut,
                _ => Answer::Other,
            };
        }
        next = cause.source();
    }
    Answer::Other
}

impl From<GetStreamError> for NatsError {
    fn from(err: GetStreamError) -> NatsError {
        let answer = match err.kind() {
            GetStreamErrorKind::JetStream(api) => Answer::Api(api),
            _ => request_answer(&err),
        };
        NatsError::new(answer, err)
    }
}

impl From<CreateStreamError> for NatsError {
    fn from(err: CreateStreamError) -> NatsError {
        let answer = match err.kind() {
            CreateStreamErrorKind::JetStream(api) => Answer::Api(api),
            CreateStreamErrorKind::JetStreamUnavailable => Answer::NoJetStream,
            CreateStreamErrorKind::TimedOut => Answer::TimedOut,
            _ => request_answer(&err),
        };
        NatsError::new(answer, err)
    }
}

impl From<ConsumerError> for NatsError {
    fn from(err: ConsumerError) -> NatsError {
        let answer = match err.kind() {
            ConsumerErrorKind::JetStream(api) => Answer::Api(api),
            ConsumerErrorKind::TimedOut => Answer::TimedOut,
            _ => request_answer(&err),
        };
        NatsError::new(answer, err)
    }
}

impl From<ConsumerInfoError> for NatsError {
    fn from(err: ConsumerInfoError) -> NatsError {
        let answer = match err.kind() {
            ConsumerInfoErrorKind::JetStream(api) => Answer::Api(api),
            ConsumerInfoErrorKind::NoResponders => Answer::NoJetStream,
            ConsumerInfoErrorKind::TimedOut => Answer::TimedOut,
            _ => request_answer(&err),
        };
        NatsError::new(answer, err)
    }
}

/// A JetStream API request's own error (a listing's): the API's refusal,
/// when it is one, is its source.
impl From<RequestError> for NatsError {
    fn from(err: RequestError) -> NatsError {
        let answer = match err.kind() {
            RequestErrorKind::NoResponders => Answer::NoJetStream,
            RequestErrorKind::TimedOut => Answer::TimedOut,
            RequestErrorKind::Other | RequestErrorKind::InvalidSubject => {
                api_error(&err).unwrap_or_else(|| request_answer(&err))
            }
        };
        NatsError::new(answer, err)
    }
}

/// The JetStream API error below another error, if NATS answered with one.
fn api_error(err: &(dyn std::error::Error + 'static)) -> Option<Answer> {
    let mut next = err.source();
    while let Some(cause) = next {
        if let Some(api) = cause.downcast_ref::<jetstream::Error>() {
            return Some(Answer::Api(api.clone()));
        }
        next = cause.source();
    }
    None
}

impl From<PurgeError> for NatsError {
    fn from(err: PurgeError) -> NatsError {
        let answer = match err.kind() {
            PurgeErrorKind::JetStream(api) => Answer::Api(api),
            PurgeErrorKind::TimedOut => Answer::TimedOut,
            PurgeErrorKind::Request => request_answer(&err),
        };
        NatsError::new(answer, err)
    }
}

/// What a failed provisioning round can learn at the cost of one more call,
/// made only on failure (see [`diagnose`]) so a steady state never pays it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnosis {
    /// The account's file storage, for "no room" errors.
    pub storage: Option<StorageUsage>,
    /// The stream that already takes the endpoint's subjects, for overlap errors.
    pub overlapping_stream: Option<String>,
}

/// The account's file storage as JetStream accounts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageUsage {
    /// Bytes reserved by the `maxBytes` of the account's streams.
    pub reserved: u64,
    /// The account's storage limit, when it has one (the server's own
    /// `max_file_store` is not visible to clients).
    pub limit: Option<u64>,
}

impl ProvisionError {
    /// The JetStream API error code NATS answered with, if it answered with one.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.nats().and_then(NatsError::error_code)
    }

    /// Whether NATS did not answer (as opposed to answering "no").
    pub fn is_timeout(&self) -> bool {
        match self {
            ProvisionError::Timeout(_) => true,
            _ => self.nats().is_some_and(NatsError::timed_out),
        }
    }

    fn nats(&self) -> Option<&NatsError> {
        match self {
            ProvisionError::Stream { source, .. } | ProvisionError::Consumer { source, .. } => {
                Some(source)
            }
            ProvisionError::Timeout(_) => None,
        }
    }

    /// The error for a condition message: what NATS refused and why, then
    /// what to change. `diagnosis` adds figures when [`diagnose`] found some.
    pub fn describe(&self, endpoint: &ValidatedEndpoint, diagnosis: &Diagnosis) -> String {
        let settings = &endpoint.stream;
        let (subject, nats) = match self {
            ProvisionError::Timeout(limit) => {
                return format!(
                    "NATS did not answer within {}s about stream {}; check that nats-server runs and that the operator reaches it",
                    limit.as_secs(),
                    settings.name
                );
            }
            ProvisionError::Stream { stream, source, .. } => (format!("stream {stream}"), source),
            ProvisionError::Consumer {
                stream,
                consumer,
                source,
                ..
            } => (
                format!("durable consumer {consumer} on stream {stream}"),
                source,
            ),
        };
        let api = match &nats.answer {
            Answer::Api(api) => api,
            Answer::NoJetStream => {
                return format!(
                    "NATS refused {subject}: JetStream is not enabled on the server; start nats-server with JetStream (`-js`, or a `jetstream {{}}` block in its config)"
                );
            }
            Answer::TimedOut => {
                return format!(
                    "NATS did not answer about {subject} in time; check that nats-server runs and that the operator reaches it"
                );
            }
            Answer::Other => {
                return format!(
                    "NATS refused {subject}: {}; fix the server or the spec, the operator retries",
                    nats.source
                );
            }
        };
        let code = api.error_code();
        let max_bytes = crate::provision::stream_config(endpoint).max_bytes;
        if code == ErrorCode::INSUFFICIENT_RESOURCES
            || code == ErrorCode::STORAGE_RESOURCES_EXCEEDED
            || code == ErrorCode::ACCOUNT_RESOURCES_EXCEEDED
        {
            let usage = diagnosis
                .storage
                .map(|usage| match usage.limit {
                    Some(limit) => {
                        format!("; {} reserved of {}", bytes(usage.reserved), bytes(limit))
                    }
                    None => format!("; {} reserved by the account", bytes(usage.reserved)),
                })
                .unwrap_or_default();
            let replicas = if settings.replicas > 1 {
                format!(
                    "; with spec.stream.replicas {}, also check the JetStream cluster has {} servers with room",
                    settings.replicas, settings.replicas
                )
            } else {
                String::new()
            };
            return if max_bytes > 0 {
                format!(
                    "NATS refused {subject}: its JetStream store has no room for the stream's reservation (maxBytes {}{usage}); raise the server's max_file_store (or the account's storage limit) or lower spec.stream.maxBytes{replicas}",
                    bytes(max_bytes.unsigned_abs())
                )
            } else {
                format!(
                    "NATS refused {subject}: its JetStream store has no room left (the stream reserves nothing{usage}); raise the server's max_file_store (or the account's storage limit), or free space: lower the spec.stream.maxBytes of Archive endpoints (reserved), or let full buffers drain into Postgres{replicas}"
                )
            };
        }
        if code == ErrorCode::JETSTREAM_NOT_ENABLED
            || code == ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT
        {
            return format!(
                "NATS refused {subject}: JetStream is not enabled for the operator's account; enable JetStream on the server and for that account"
            );
        }
        if code == ErrorCode::STREAM_SUBJECT_OVERLAP {
            let other = diagnosis.overlapping_stream.as_deref().map_or_else(
                || "another stream".to_owned(),
                |name| format!("stream {name}"),
            );
            return format!(
                "NATS refused {subject}: its subjects {} overlap with those of {other}; remove or narrow that stream's subjects, or use a different endpoint name or namespace",
                settings.subject_filter()
            );
        }
        if code == ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED || code == ErrorCode::CLUSTER_NO_PEERS {
            return format!(
                "NATS refused {subject}: it asks for {} replicas, more than the JetStream cluster has servers (a single server has one); lower spec.stream.replicas to the cluster size",
                settings.replicas
            );
        }
        if code == ErrorCode::MAXIMUM_STREAMS_LIMIT || code == ErrorCode::MAXIMUM_CONSUMERS_LIMIT {
            let what = if code == ErrorCode::MAXIMUM_STREAMS_LIMIT {
                "streams"
            } else {
                "consumers"
            };
            return format!(
                "NATS refused {subject}: the account has reached its limit of {what}; raise the account's max_{what} or delete unused {what}"
            );
        }
        format!(
            "NATS refused {subject}: {}; fix the server or the spec, the operator retries",
            description(api)
        )
    }
}

/// The server's own words, without async-nats's code suffix.
fn description(api: &jetstream::Error) -> String {
    serde_json::to_value(api)
        .ok()
        .and_then(|value| value.get("description")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| api.to_string())
}

/// Sizes as an SRE writes them in a spec: `512 MiB`, `2 GiB`, else bytes.
fn bytes(value: u64) -> String {
    const KIB: u64 = 1024;
    for (unit, size) in [
        ("TiB", KIB.pow(4)),
        ("GiB", KIB.pow(3)),
        ("MiB", KIB.pow(2)),
    ] {
        if value >= size {
            let whole = value / size;
            let tenths = (value % size) * 10 / size;
            return if tenths == 0 {
                format!("{whole} {unit}")
            } else {
                format!("{whole}.{tenths} {unit}")
            };
        }
    }
    format!("{value} bytes")
}

/// How long a diagnosis may take: it only adds figures to a failure.
const DIAGNOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks NATS for the figures [`ProvisionError::describe`] can use, for the
/// error codes that need them: the account's storage for "no room", the
/// other stream for overlapping subjects. Call it only after a failure; it
/// makes at most one request and gives up quietly.
pub async fn diagnose(
    js: &jetstream::Context,
    endpoint: &ValidatedEndpoint,
    err: &ProvisionError,
) -> Diagnosis {
    let mut diagnosis = Diagnosis::default();
    let Some(code) = err.error_code() else {
        return diagnosis;
    };
    if code == ErrorCode::INSUFFICIENT_RESOURCES
        || code == ErrorCode::STORAGE_RESOURCES_EXCEEDED
        || code == ErrorCode::ACCOUNT_RESOURCES_EXCEEDED
    {
        if let Ok(Ok(account)) = tokio::time::timeout(DIAGNOSE_TIMEOUT, js.query_account()).await {
            diagnosis.storage = Some(StorageUsage {
                reserved: account.reserved_storage,
                limit: account
                    .limits
                    .max_storage
                    .and_then(|limit| u64::try_from(limit).ok()),
            });
        }
    } else if code == ErrorCode::STREAM_SUBJECT_OVERLAP {
        let lookup = js.stream_by_subject(endpoint.stream.subject_filter());
        if let Ok(Ok(name)) = tokio::time::timeout(DIAGNOSE_TIMEOUT, lookup).await {
            diagnosis.overlapping_stream = Some(name);
        }
    }
    diagnosis
}

/// [`diagnose`] then [`ProvisionError::describe`]: the condition message for
/// a failed round, in one call.
pub async fn explain(
    js: &jetstream::Context,
    endpoint: &ValidatedEndpoint,
    err: &ProvisionError,
) -> String {
    err.describe(endpoint, &diagnose(js, endpoint, err).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Provider, StreamSpec, WebhookEndpointSpec};

    /// An archive capped at 512 MiB: a stream that reserves room.
    fn endpoint(replicas: Option<u8>) -> ValidatedEndpoint {
        let spec = WebhookEndpointSpec {
            stream: Some(StreamSpec {
                retention: Some(crate::spec::StreamRetention::Archive),
                max_bytes: Some(512 * 1024 * 1024),
                replicas,
                ..Default::default()
            }),
            ..WebhookEndpointSpec::new(Provider::Github, "s")
        };
        crate::resolve("team0", "ep100", &spec).expect("valid")
    }

    fn refused(code: ErrorCode, description: &str) -> ProvisionError {
        let api: jetstream::Error = serde_json::from_value(serde_json::json!({
            "code": 500,
            "err_code": code.0,
            "description": description,
        }))
        .expect("a JetStream API error");
        ProvisionError::Stream {
            stream: "HOOKLINE_team0_ep100".into(),
            action: "create",
            source: CreateStreamError::new(CreateStreamErrorKind::JetStream(api)).into(),
        }
    }

    #[test]
    fn no_room_names_the_reservation_and_both_remedies_first() {
        let err = refused(
            ErrorCode::INSUFFICIENT_RESOURCES,
            "insufficient storage resources available",
        );
        assert_eq!(err.error_code(), Some(ErrorCode::INSUFFICIENT_RESOURCES));
        assert_eq!(
            err.describe(&endpoint(None), &Diagnosis::default()),
            "NATS refused stream HOOKLINE_team0_ep100: its JetStream store has no room for the stream's reservation (maxBytes 512 MiB); raise the server's max_file_store (or the account's storage limit) or lower spec.stream.maxBytes"
        );
    }

    #[test]
    fn no_room_with_the_accounts_figures_says_how_much_is_reserved() {
        let err = refused(ErrorCode::INSUFFICIENT_RESOURCES, "insufficient resources");
        let diagnosis = Diagnosis {
            storage: Some(StorageUsage {
                reserved: 53 * 1024 * 1024 * 1024 / 2,
                limit: Some(27 * 1024 * 1024 * 1024),
            }),
            overlapping_stream: None,
        };
        let message = err.describe(&endpoint(None), &diagnosis);
        assert!(
            message.contains("(maxBytes 512 MiB; 26.5 GiB reserved of 27 GiB)"),
            "{message}"
        );
    }

    #[test]
    fn jetstream_off_says_how_to_turn_it_on() {
        let err = ProvisionError::Stream {
            stream: "HOOKLINE_team0_ep100".into(),
            action: "create",
            source: CreateStreamError::new(CreateStreamErrorKind::JetStreamUnavailable).into(),
        };
        let message = err.describe(&endpoint(None), &Diagnosis::default());
        assert!(
            message.starts_with(
                "NATS refused stream HOOKLINE_team0_ep100: JetStream is not enabled on the server; start nats-server with JetStream"
            ),
            "{message}"
        );
        let account = refused(ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT, "not enabled");
        assert!(
            account
                .describe(&endpoint(None), &Diagnosis::default())
                .contains("not enabled for the operator's account")
        );
    }

    #[test]
    fn overlapping_subjects_name_the_other_stream_when_known() {
        let err = refused(
            ErrorCode::STREAM_SUBJECT_OVERLAP,
            "subjects overlap with an existing stream",
        );
        let unknown = err.describe(&endpoint(None), &Diagnosis::default());
        assert!(
            unknown.contains(
                "its subjects hookline.team0.ep100.> overlap with those of another stream;"
            ),
            "{unknown}"
        );
        let known = err.describe(
            &endpoint(None),
            &Diagnosis {
                overlapping_stream: Some("EVERYTHING".into()),
                ..Default::default()
            },
        );
        assert!(
            known.contains("overlap with those of stream EVERYTHING;"),
            "{known}"
        );
    }

    #[test]
    fn too_many_replicas_says_to_lower_them() {
        let err = refused(
            ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED,
            "replicas > 1 not supported in non-clustered mode",
        );
        assert_eq!(
            err.describe(&endpoint(Some(3)), &Diagnosis::default()),
            "NATS refused stream HOOKLINE_team0_ep100: it asks for 3 replicas, more than the JetStream cluster has servers (a single server has one); lower spec.stream.replicas to the cluster size"
        );
    }

    #[test]
    fn anything_else_leads_with_the_servers_words() {
        let err = refused(
            ErrorCode::STREAM_INVALID_CONFIG,
            "max age needs to be >= 100ms",
        );
        assert_eq!(
            err.describe(&endpoint(None), &Diagnosis::default()),
            "NATS refused stream HOOKLINE_team0_ep100: max age needs to be >= 100ms; fix the server or the spec, the operator retries"
        );
    }

    #[test]
    fn a_timeout_is_not_a_refusal() {
        let err = ProvisionError::Timeout(Duration::from_secs(10));
        assert!(err.is_timeout());
        assert!(
            err.describe(&endpoint(None), &Diagnosis::default())
                .starts_with("NATS did not answer within 10s about stream HOOKLINE_team0_ep100")
        );
    }

    #[test]
    fn sizes_read_as_written_in_a_spec() {
        assert_eq!(bytes(512 * 1024 * 1024), "512 MiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
        assert_eq!(bytes(4096), "4096 bytes");
    }
}

//! The status step: conditions computed from what was applied and observed,
//! each with a reason and a message a person can act on. Pure functions here;
//! `reconcile` writes the result only when it differs from what is stored.

use hookline_api::conditions::{self, reasons};
use hookline_api::provision::StreamStats;
use hookline_api::spec::WebhookEndpointStatus;
use hookline_api::{FieldError, InvalidSpec};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::apply::Applied;
use crate::build::ChildNames;
use crate::config::OperatorConfig;
use crate::secrets::{Problem, SecretCheck};
use crate::stream::StreamState;
use crate::validate::ValidEndpoint;

/// A condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// One condition as observed now, before its timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub type_: &'static str,
    pub status: Status,
    pub reason: &'static str,
    pub message: String,
}

impl Finding {
    fn new(type_: &'static str, status: Status, reason: &'static str, message: String) -> Self {
        Finding {
            type_,
            status,
            reason,
            message,
        }
    }
}

/// Everything a reconcile learnt about a valid endpoint.
pub struct Observed<'a> {
    pub valid: &'a ValidEndpoint,
    pub config: &'a OperatorConfig,
    pub secrets: &'a SecretCheck,
    pub stream: &'a StreamState,
    pub applied: &'a Applied,
    pub keda: bool,
}

/// Every condition of a valid endpoint, `Ready` first.
pub fn findings(observed: &Observed<'_>) -> Vec<Finding> {
    let parts = vec![
        secret_finding(observed),
        stream_finding(observed),
        deployment_finding(
            &observed.applied.receiver,
            conditions::RECEIVER_AVAILABLE,
            "receiver",
            false,
        ),
        deployment_finding(
            &observed.applied.consumer,
            conditions::CONSUMER_AVAILABLE,
            "consumer",
            observed.keda,
        ),
        scaler_finding(observed),
    ];
    let blocking = parts.iter().find(|finding| match finding.status {
        Status::True => false,
        Status::Unknown => finding.type_ != conditions::SCALER_READY,
        Status::False => finding.reason != reasons::KEDA_NOT_INSTALLED,
    });
    let ready = match blocking {
        Some(finding) => Finding::new(
            conditions::READY,
            Status::False,
            finding.reason,
            finding.message.clone(),
        ),
        None => Finding::new(
            conditions::READY,
            Status::True,
            reasons::RECONCILED,
            match url(observed.valid, observed.applied) {
                Some(url) => format!("providers can POST to {url}"),
                None => "the receiver is running; the Ingress has no address yet".into(),
            },
        ),
    };
    std::iter::once(ready).chain(parts).collect()
}

/// The conditions of an endpoint whose spec is invalid: nothing was applied.
pub fn invalid_findings(invalid: &InvalidSpec) -> Vec<Finding> {
    let message = invalid
        .0
        .iter()
        .map(FieldError::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    conditions::ALL
        .into_iter()
        .map(|type_| {
            if type_ == conditions::READY {
                Finding::new(
                    type_,
                    Status::False,
                    reasons::INVALID_SPEC,
                    format!("fix the spec: {message}"),
                )
            } else {
                Finding::new(
                    type_,
                    Status::Unknown,
                    reasons::INVALID_SPEC,
                    "not reconciled while the spec is invalid".into(),
                )
            }
        })
        .collect()
}

fn secret_finding(observed: &Observed<'_>) -> Finding {
    let namespace = &observed.valid.endpoint.namespace;
    let check = observed.secrets;
    if check.problems.is_empty() {
        return match &check.generated {
            Some(name) => Finding::new(
                conditions::SECRET_RESOLVED,
                Status::True,
                reasons::SECRET_GENERATED,
                format!(
                    "generated Secret {namespace}/{name}; give its key {:?} to the sender",
                    observed.valid.endpoint.secret.key
                ),
            ),
            None => Finding::new(
                conditions::SECRET_RESOLVED,
                Status::True,
                reasons::RESOLVED,
                "every referenced Secret has its keys".into(),
            ),
        };
    }
    let reason = if check
        .problems
        .iter()
        .any(|problem| matches!(problem, Problem::NotFound { .. }))
    {
        reasons::SECRET_NOT_FOUND
    } else {
        reasons::SECRET_KEY_MISSING
    };
    let message = check
        .problems
        .iter()
        .map(|problem| problem.describe(namespace))
        .collect::<Vec<_>>()
        .join("; ");
    Finding::new(conditions::SECRET_RESOLVED, Status::False, reason, message)
}

fn stream_finding(observed: &Observed<'_>) -> Finding {
    let endpoint = &observed.valid.endpoint;
    let type_ = conditions::STREAM_READY;
    let url = &observed.config.nats.url;
    match observed.stream {
        StreamState::Ready { max_payload, stats } => {
            match observed.stream.payload_shortfall(observed.valid) {
                None => Finding::new(
                    type_,
                    Status::True,
                    reasons::STREAM_PROVISIONED,
                    format!(
                        "stream {} with durable consumer {}{}",
                        endpoint.stream.name,
                        endpoint.consumer.durable_name,
                        retention_note(stats, endpoint)
                    ),
                ),
                Some(fits) => Finding::new(
                    type_,
                    Status::True,
                    reasons::MAX_PAYLOAD_TOO_SMALL,
                    format!(
                        "stream {} is ready, but NATS's max_payload ({max_payload} bytes) leaves room for bodies up to {fits} bytes, below spec.request.maxBodyBytes ({}): larger bodies get 413; raise max_payload on the NATS server or lower maxBodyBytes",
                        endpoint.stream.name, endpoint.request.max_body_bytes
                    ),
                ),
            }
        }
        StreamState::Unreachable(cause) => Finding::new(
            type_,
            Status::False,
            reasons::NATS_UNREACHABLE,
            format!("cannot reach NATS at {url} ({cause}); receivers answer 503 until it is back"),
        ),
        StreamState::Refused(cause) => Finding::new(
            type_,
            Status::False,
            reasons::STREAM_REFUSED,
            format!(
                "NATS at {url} refused stream {}: {cause}",
                endpoint.stream.name
            ),
        ),
    }
}

/// What to do when the stream's retention is not the one the spec asks for.
fn retention_note(stats: &StreamStats, endpoint: &hookline_api::ValidatedEndpoint) -> String {
    match stats.retention {
        Some(kept) if kept != endpoint.stream.retention => format!(
            "; it keeps {kept:?} retention (NATS cannot change an existing stream's): to switch to {:?}, let the consumer drain it, then delete the stream (its events are in Postgres) and the operator makes it anew",
            endpoint.stream.retention
        ),
        _ => String::new(),
    }
}

/// Availability of a Deployment, from the Deployment controller's own
/// `Available` condition (minimum availability for its rollout strategy).
fn deployment_finding(
    deployment: &Deployment,
    type_: &'static str,
    what: &str,
    scaled_by_keda: bool,
) -> Finding {
    let status = deployment.status.clone().unwrap_or_default();
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1);
    let available = status.available_replicas.unwrap_or(0);
    let condition = |name: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|condition| condition.type_ == name)
            .cloned()
    };
    let stuck = condition("Progressing").filter(|progressing| {
        progressing.status == "False"
            && progressing.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    let is_available = condition("Available").is_some_and(|c| c.status == "True");
    let counts = format!("{available} of {wanted} {what} pods available");
    match (wanted, is_available, stuck) {
        (0, _, _) if scaled_by_keda => Finding::new(
            type_,
            Status::True,
            reasons::AVAILABLE,
            format!("no {what} pods while there is no lag; KEDA starts them when events arrive"),
        ),
        (0, _, _) => Finding::new(
            type_,
            Status::False,
            reasons::SCALED_TO_ZERO,
            format!("{what} replicas is 0: nothing serves this endpoint"),
        ),
        (_, true, None) => Finding::new(type_, Status::True, reasons::AVAILABLE, counts),
        (_, true, Some(progressing)) => Finding::new(
            type_,
            Status::True,
            reasons::ROLLOUT_FAILED,
            format!(
                "{counts} (older pods); the new rollout is stuck: {}",
                progressing.message.unwrap_or_default()
            ),
        ),
        (_, false, Some(progressing)) => Finding::new(
            type_,
            Status::False,
            reasons::ROLLOUT_FAILED,
            format!(
                "{counts}; the rollout is stuck: {} (kubectl describe deployment {})",
                progressing.message.unwrap_or_default(),
                deployment.metadata.name.as_deref().unwrap_or_default()
            ),
        ),
        (_, false, None) => Finding::new(type_, Status::False, reasons::PROGRESSING, counts),
    }
}

fn scaler_finding(observed: &Observed<'_>) -> Finding {
    let type_ = conditions::SCALER_READY;
    let scaling = &observed.valid.endpoint.consumer.scaling;
    let Some(scaler) = &observed.applied.scaler else {
        return Finding::new(
            type_,
            Status::False,
            reasons::KEDA_NOT_INSTALLED,
            format!(
                "KEDA is not installed (no keda.sh/v1alpha1 ScaledObjects): the consumer runs {} pod(s) without autoscaling; install KEDA to scale on lag",
                scaling.min_replicas.max(1)
            ),
        );
    };
    let ready = scaler
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .and_then(|all| all.iter().find(|condition| condition.type_ == "Ready"));
    match ready {
        Some(condition) if condition.status == "True" => Finding::new(
            type_,
            Status::True,
            reasons::SCALED_OBJECT_READY,
            format!(
                "KEDA scales the consumer from {} to {} pods, one per {} pending events",
                scaling.min_replicas, scaling.max_replicas, scaling.lag_threshold
            ),
        ),
        Some(condition) if condition.status == "False" => Finding::new(
            type_,
            Status::False,
            reasons::SCALER_NOT_READY,
            format!(
                "KEDA reports ScaledObject {} not ready: {}",
                scaler.metadata.name.as_deref().unwrap_or_default(),
                condition.message.as_deref().unwrap_or("no message")
            ),
        ),
        _ => Finding::new(
            type_,
            Status::Unknown,
            reasons::WAITING_FOR_KEDA,
            format!(
                "ScaledObject {} applied; KEDA has not reported on it yet",
                scaler.metadata.name.as_deref().unwrap_or_default()
            ),
        ),
    }
}

/// The URL to paste into the provider's dashboard: the Ingress host, else the
/// Ingress's load-balancer address, else (no Ingress) the in-cluster Service.
pub fn url(valid: &ValidEndpoint, applied: &Applied) -> Option<String> {
    let route = &valid.endpoint.route;
    if let Some(url) = route.url() {
        return Some(url);
    }
    if route.ingress.is_none() {
        return Some(format!(
            "http://{}.{}.svc{}",
            ChildNames::of(&valid.endpoint.name).receiver,
            valid.endpoint.namespace,
            route.path
        ));
    }
    let address = applied
        .ingress
        .as_ref()?
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .iter()
        .find_map(|point| point.hostname.clone().or_else(|| point.ip.clone()))?;
    Some(format!("http://{address}{}", route.path))
}

/// Conditions with their timestamps: a condition whose status did not change
/// keeps its `lastTransitionTime`.
pub fn stamp(
    findings: Vec<Finding>,
    previous: Option<&WebhookEndpointStatus>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    findings
        .into_iter()
        .map(|finding| {
            let before = previous.and_then(|status| {
                status
                    .conditions
                    .iter()
                    .find(|condition| condition.type_ == finding.type_)
            });
            let last_transition_time = match before {
                Some(before) if before.status == finding.status.as_str() => {
                    before.last_transition_time.clone()
                }
                _ => now.clone(),
            };
            Condition {
                type_: finding.type_.to_owned(),
                status: finding.status.as_str().to_owned(),
                reason: finding.reason.to_owned(),
                message: finding.message,
                last_transition_time,
                observed_generation: generation,
            }
        })
        .collect()
}

/// Findings whose status changed since `previous`: these become Events.
pub fn transitions<'a>(
    findings: &'a [Finding],
    previous: Option<&WebhookEndpointStatus>,
) -> Vec<&'a Finding> {
    findings
        .iter()
        .filter(|finding| {
            let before = previous.and_then(|status| {
                status
                    .conditions
                    .iter()
                    .find(|condition| condition.type_ == finding.type_)
            });
            before.map(|condition| condition.status.as_str()) != Some(finding.status.as_str())
        })
        .filter(|finding| {
            finding.status == Status::False
                || (finding.type_ == conditions::READY && finding.status == Status::True)
        })
        .collect()
}

/// Live figures for the status; the previous ones when the stream could not be read.
pub fn figures(
    stream: &StreamState,
    previous: Option<&WebhookEndpointStatus>,
) -> (Option<i64>, Option<i64>, Option<String>) {
    match stream {
        StreamState::Ready {
            stats:
                StreamStats {
                    messages,
                    pending,
                    last_stored,
                    ..
                },
            ..
        } => (
            i64::try_from(*messages).ok(),
            i64::try_from(*pending).ok(),
            last_stored
                .and_then(|time| k8s_openapi::jiff::Timestamp::try_from(time).ok())
                .map(|time| time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
        ),
        _ => previous
            .map(|status| {
                (
                    status.stream_messages,
                    status.pending,
                    status.last_event_time.clone(),
                )
            })
            .unwrap_or_default(),
    }
}

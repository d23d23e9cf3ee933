//! The status step: conditions computed from what was applied and observed,
//! each with a reason and a message a person can act on. Pure functions here;
//! `reconcile` writes the result only when it differs from what is stored.
//! `parts` has one finding per part of the pipeline.

mod parts;
pub mod write;

use hookline_api::conditions::{self, reasons};
use hookline_api::provision::StreamStats;
use hookline_api::spec::WebhookEndpointStatus;
use hookline_api::{FieldError, InvalidSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::apply::{Applied, ApplyFailure, Problem};
use crate::build::ChildNames;
use crate::build::pool::PoolNames;
use crate::config::OperatorConfig;
use crate::secrets::SecretCheck;
use crate::stream::StreamState;
use crate::validate::{Placement, ValidEndpoint};

pub(crate) use parts::{applied_deployment_finding, deployment_finding};
use parts::{scaler_finding, secret_finding, stream_finding};

use crate::pool::{PoolView, served_finding};

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
    pub(crate) fn new(
        type_: &'static str,
        status: Status,
        reason: &'static str,
        message: String,
    ) -> Self {
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
    /// A pool member's pool, as the caches show it.
    pub pool: Option<&'a PoolView>,
    /// Appended to a ready `StreamReady`: a shared-stream member's own
    /// stream still draining.
    pub stream_note: Option<&'a str>,
}

/// Every condition of a valid endpoint, `Ready` first.
pub fn findings(observed: &Observed<'_>) -> Vec<Finding> {
    let parts = match observed.pool {
        Some(pool) => vec![
            secret_finding(observed),
            stream_finding(observed),
            served_finding(pool, observed.valid),
        ],
        None => dedicated_parts(observed),
    };
    ready(observed, parts)
}

/// The parts of an endpoint with pods of its own.
fn dedicated_parts(observed: &Observed<'_>) -> Vec<Finding> {
    let applied = observed.applied;
    vec![
        secret_finding(observed),
        stream_finding(observed),
        applied_deployment_finding(
            applied.receiver.as_ref(),
            conditions::RECEIVER_AVAILABLE,
            "receiver",
            false,
        ),
        applied_deployment_finding(
            applied.consumer.as_ref(),
            conditions::CONSUMER_AVAILABLE,
            "consumer",
            observed.keda,
        ),
        scaler_finding(observed),
    ]
}

/// `Ready` from the parts: the first that blocks, else where providers POST.
fn ready(observed: &Observed<'_>, parts: Vec<Finding>) -> Vec<Finding> {
    let not_applied = apply_finding(observed);
    let blocking = not_applied.as_ref().or_else(|| {
        parts.iter().find(|finding| match finding.status {
            Status::True => false,
            Status::Unknown => finding.type_ != conditions::SCALER_READY,
            Status::False => finding.reason != reasons::KEDA_NOT_INSTALLED,
        })
    });
    let ready = ready_finding(blocking, || match url(observed.valid, observed.applied) {
        Some(url) => format!("providers can POST to {url}"),
        None => "the receiver is running; the Ingress has no address yet".into(),
    });
    std::iter::once(ready).chain(parts).collect()
}

/// `Ready`: False with the reason and message of the finding that blocks
/// it, else True (`Reconciled`) saying `served()`. For endpoints and pools.
pub fn ready_finding(blocking: Option<&Finding>, served: impl FnOnce() -> String) -> Finding {
    match blocking {
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
            served(),
        ),
    }
}

/// What the apply step could not write, as the `Ready` finding it makes.
fn apply_finding(observed: &Observed<'_>) -> Option<Finding> {
    let mut finding = failures_finding(
        &observed.applied.failures,
        &observed.valid.endpoint.namespace,
    )?;
    finding
        .message
        .push_str(" (the other children were applied; retried with backoff)");
    Some(finding)
}

/// Children the apply step could not write, as a `Ready` finding:
/// `NameConflict` when any child's name is taken, else `ApplyFailed`; each
/// failure described. For endpoints and pools.
pub fn failures_finding(failures: &[ApplyFailure], namespace: &str) -> Option<Finding> {
    if failures.is_empty() {
        return None;
    }
    let reason = if failures
        .iter()
        .any(|failure| matches!(failure.problem, Problem::NameConflict { .. }))
    {
        reasons::NAME_CONFLICT
    } else {
        reasons::APPLY_FAILED
    };
    let message = failures
        .iter()
        .map(|failure| failure.describe(namespace))
        .collect::<Vec<_>>()
        .join("; ");
    Some(Finding::new(
        conditions::READY,
        Status::False,
        reason,
        message,
    ))
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

/// The URL to paste into the provider's dashboard: the Ingress host, else the
/// Ingress's load-balancer address, else (no Ingress) the in-cluster Service.
pub fn url(valid: &ValidEndpoint, applied: &Applied) -> Option<String> {
    let route = &valid.endpoint.route;
    if let Some(url) = route.url() {
        return Some(url);
    }
    if route.ingress.is_none() {
        let service = match &valid.placement {
            Placement::Dedicated { .. } => ChildNames::of(&valid.endpoint.name).receiver,
            Placement::Pooled { pool } => PoolNames::of(pool).receiver,
        };
        return Some(format!(
            "http://{service}.{}.svc{}",
            valid.endpoint.namespace, route.path
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
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    findings
        .into_iter()
        .map(|finding| {
            let before = previous
                .iter()
                .find(|condition| condition.type_ == finding.type_);
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

/// Findings that are news since `previous`, and become Events: a condition
/// that turned False (or False for another reason, such as a new refusal),
/// and `Ready` turning True.
pub fn transitions<'a>(findings: &'a [Finding], previous: &[Condition]) -> Vec<&'a Finding> {
    findings
        .iter()
        .filter(|finding| {
            let before = previous
                .iter()
                .find(|condition| condition.type_ == finding.type_);
            match before {
                None => true,
                Some(before) => {
                    before.status != finding.status.as_str()
                        || (finding.status == Status::False && before.reason != finding.reason)
                }
            }
        })
        .filter(|finding| {
            finding.status == Status::False
                || (finding.type_ == conditions::READY && finding.status == Status::True)
        })
        .collect()
}

/// The status's live figures, refreshed from the stream once per resync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    pub stream_messages: Option<i64>,
    pub stream_bytes: Option<i64>,
    pub stream_limit_bytes: Option<i64>,
    pub pending: Option<i64>,
    pub last_event_time: Option<String>,
}

impl Figures {
    /// Puts the figures into `status`.
    pub fn apply(self, status: &mut WebhookEndpointStatus) {
        status.stream_messages = self.stream_messages;
        status.stream_bytes = self.stream_bytes;
        status.stream_limit_bytes = self.stream_limit_bytes;
        status.pending = self.pending;
        status.last_event_time = self.last_event_time;
    }

    /// The figures `status` holds.
    pub fn of(status: &WebhookEndpointStatus) -> Figures {
        Figures {
            stream_messages: status.stream_messages,
            stream_bytes: status.stream_bytes,
            stream_limit_bytes: status.stream_limit_bytes,
            pending: status.pending,
            last_event_time: status.last_event_time.clone(),
        }
    }
}

/// Live figures for the status; the previous ones when the stream could not be read.
pub fn figures(stream: &StreamState, previous: Option<&WebhookEndpointStatus>) -> Figures {
    match stream {
        StreamState::Ready {
            stats:
                StreamStats {
                    messages,
                    bytes,
                    limit_bytes,
                    pending,
                    last_stored,
                    ..
                },
            ..
        } => Figures {
            stream_messages: i64::try_from(*messages).ok(),
            stream_bytes: i64::try_from(*bytes).ok(),
            stream_limit_bytes: limit_bytes.and_then(|limit| i64::try_from(limit).ok()),
            pending: i64::try_from(*pending).ok(),
            last_event_time: last_stored
                .and_then(|time| k8s_openapi::jiff::Timestamp::try_from(time).ok())
                .map(|time| time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
        },
        _ => previous.map(Figures::of).unwrap_or_default(),
    }
}

//! One finding per part of the pipeline: the signing and other Secrets, the
//! stream, the receiver and consumer Deployments, and KEDA's ScaledObject.

use hookline_api::conditions::{self, reasons};
use hookline_api::provision::StreamStats;
use k8s_openapi::api::apps::v1::Deployment;

use super::{Finding, Observed, Status};
use crate::secrets::Problem;
use crate::stream::StreamState;

pub(super) fn secret_finding(observed: &Observed<'_>) -> Finding {
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

pub(super) fn stream_finding(observed: &Observed<'_>) -> Finding {
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
                        "stream {} with durable consumer {}{}{}",
                        endpoint.stream.name,
                        endpoint.consumer.durable_name,
                        retention_note(stats, endpoint),
                        observed.stream_note.unwrap_or_default()
                    ),
                ),
                Some(fits) => Finding::new(
                    type_,
                    Status::True,
                    reasons::MAX_PAYLOAD_TOO_SMALL,
                    format!(
                        "stream {} is ready, but NATS's max_payload ({max_payload} bytes) leaves room for bodies up to {fits} bytes, below spec.request.maxBodyBytes ({}): larger bodies get 413; raise max_payload on the NATS server or lower maxBodyBytes{}",
                        endpoint.stream.name,
                        endpoint.request.max_body_bytes,
                        observed.stream_note.unwrap_or_default()
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
        StreamState::Refused(message) => Finding::new(
            type_,
            Status::False,
            reasons::STREAM_REFUSED,
            message.clone(),
        ),
        StreamState::OwnedElsewhere(message) => Finding::new(
            type_,
            Status::False,
            reasons::STREAM_OWNED_ELSEWHERE,
            message.clone(),
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

/// [`deployment_finding`] of a Deployment the apply step returned; `None`
/// (it could not be applied) is `ApplyFailed`, pointing at `Ready`.
pub(crate) fn applied_deployment_finding(
    deployment: Option<&Deployment>,
    type_: &'static str,
    what: &str,
    scaled_by_keda: bool,
) -> Finding {
    match deployment {
        Some(deployment) => deployment_finding(deployment, type_, what, scaled_by_keda),
        None => Finding::new(
            type_,
            Status::False,
            reasons::APPLY_FAILED,
            format!("the {what} Deployment could not be applied (see Ready)"),
        ),
    }
}

/// Availability of a Deployment: it counts only once its controller has seen
/// the current template and every pod runs it (as `kubectl rollout status`
/// judges), so `Ready` is not written for a change that is not live yet.
pub(crate) fn deployment_finding(
    deployment: &Deployment,
    type_: &'static str,
    what: &str,
    scaled_by_keda: bool,
) -> Finding {
    let name = deployment.metadata.name.as_deref().unwrap_or_default();
    let status = deployment.status.clone().unwrap_or_default();
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1);
    let generation = deployment.metadata.generation.unwrap_or(0);
    let seen = status.observed_generation.unwrap_or(0) >= generation;
    let pods = status.replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let rolled_out = seen && pods == wanted && updated == wanted && available == wanted;
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
    match (wanted, rolled_out, stuck) {
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
        (_, true, _) => Finding::new(type_, Status::True, reasons::AVAILABLE, counts),
        (_, false, Some(progressing)) if is_available => Finding::new(
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
                "{counts}; the rollout is stuck: {} (kubectl describe deployment {name})",
                progressing.message.unwrap_or_default(),
            ),
        ),
        (_, false, None) => {
            let progress = if seen {
                let old = pods.saturating_sub(updated);
                let old = match old {
                    0 => String::new(),
                    1 => ", 1 old pod left".to_owned(),
                    _ => format!(", {old} old pods left"),
                };
                format!("{updated} of {wanted} {what} pods updated, {available} available{old}")
            } else {
                format!("the Deployment controller has not seen generation {generation} yet")
            };
            Finding::new(
                type_,
                Status::False,
                reasons::PROGRESSING,
                format!("rolling out: {progress} (kubectl rollout status deployment {name})"),
            )
        }
    }
}

pub(super) fn scaler_finding(observed: &Observed<'_>) -> Finding {
    let type_ = conditions::SCALER_READY;
    let scaling = &observed.valid.endpoint.consumer.scaling;
    let Some(scaler) = &observed.applied.scaler else {
        return Finding::new(
            type_,
            Status::False,
            reasons::KEDA_NOT_INSTALLED,
            format!(
                "KEDA is not installed (no keda.sh/v1alpha1 ScaledObjects): the consumer runs {} pod(s) without autoscaling; install KEDA to scale on lag",
                crate::build::consumer::replicas_without_keda(observed.valid)
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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// A receiver Deployment at `generation` wanting `replicas`, with `status`.
    fn deployment(generation: i64, replicas: i32, status: Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "stripe-receiver", "generation": generation},
            "spec": {
                "replicas": replicas,
                "selector": {},
                "template": {},
            },
            "status": status,
        }))
        .expect("a Deployment")
    }

    fn receiver(deployment: &Deployment) -> Finding {
        deployment_finding(
            deployment,
            conditions::RECEIVER_AVAILABLE,
            "receiver",
            false,
        )
    }

    fn available(status: &str) -> Value {
        json!({"type": "Available", "status": status, "reason": "MinimumReplicasAvailable"})
    }

    fn stuck() -> Value {
        json!({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
               "message": "ReplicaSet \"stripe-receiver-2\" has timed out progressing."})
    }

    #[test]
    fn a_rolled_out_deployment_is_available() {
        let finding = receiver(&deployment(
            3,
            2,
            json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2,
                   "availableReplicas": 2, "conditions": [available("True")]}),
        ));
        assert_eq!(finding.status, Status::True);
        assert_eq!(finding.reason, reasons::AVAILABLE);
        assert_eq!(finding.message, "2 of 2 receiver pods available");
    }

    #[test]
    fn a_deployment_rolling_out_a_new_template_is_progressing_though_available() {
        let finding = receiver(&deployment(
            3,
            2,
            json!({"observedGeneration": 3, "replicas": 3, "updatedReplicas": 1,
                   "availableReplicas": 2, "conditions": [available("True")]}),
        ));
        assert_eq!(finding.status, Status::False);
        assert_eq!(finding.reason, reasons::PROGRESSING);
        assert_eq!(
            finding.message,
            "rolling out: 1 of 2 receiver pods updated, 2 available, 2 old pods left (kubectl rollout status deployment stripe-receiver)"
        );
    }

    #[test]
    fn a_generation_the_deployment_controller_has_not_seen_is_progressing() {
        let finding = receiver(&deployment(
            4,
            2,
            json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2,
                   "availableReplicas": 2, "conditions": [available("True")]}),
        ));
        assert_eq!(finding.status, Status::False);
        assert_eq!(finding.reason, reasons::PROGRESSING);
        assert_eq!(
            finding.message,
            "rolling out: the Deployment controller has not seen generation 4 yet (kubectl rollout status deployment stripe-receiver)"
        );
    }

    #[test]
    fn old_pods_still_terminating_keep_it_progressing() {
        let finding = receiver(&deployment(
            3,
            2,
            json!({"observedGeneration": 3, "replicas": 3, "updatedReplicas": 2,
                   "availableReplicas": 2, "conditions": [available("True")]}),
        ));
        assert_eq!(finding.reason, reasons::PROGRESSING);
        assert!(
            finding.message.contains("1 old pod left"),
            "{}",
            finding.message
        );
    }

    #[test]
    fn updated_pods_not_yet_available_keep_it_progressing() {
        let finding = receiver(&deployment(
            1,
            2,
            json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
                   "availableReplicas": 1, "conditions": [available("False")]}),
        ));
        assert_eq!(finding.status, Status::False);
        assert_eq!(finding.reason, reasons::PROGRESSING);
        assert!(
            finding
                .message
                .contains("2 of 2 receiver pods updated, 1 available"),
            "{}",
            finding.message
        );
    }

    #[test]
    fn a_stuck_rollout_with_older_pods_serving_is_true_but_failed() {
        let finding = receiver(&deployment(
            3,
            2,
            json!({"observedGeneration": 3, "replicas": 3, "updatedReplicas": 1,
                   "availableReplicas": 2, "conditions": [available("True"), stuck()]}),
        ));
        assert_eq!(finding.status, Status::True);
        assert_eq!(finding.reason, reasons::ROLLOUT_FAILED);
    }

    #[test]
    fn a_stuck_rollout_with_nothing_serving_is_false() {
        let finding = receiver(&deployment(
            1,
            2,
            json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
                   "availableReplicas": 0, "conditions": [available("False"), stuck()]}),
        ));
        assert_eq!(finding.status, Status::False);
        assert_eq!(finding.reason, reasons::ROLLOUT_FAILED);
        assert!(
            finding
                .message
                .contains("kubectl describe deployment stripe-receiver")
        );
    }

    #[test]
    fn zero_replicas_is_scaled_to_zero_unless_keda_scales_it() {
        let idle = deployment(2, 0, json!({"observedGeneration": 1}));
        assert_eq!(receiver(&idle).reason, reasons::SCALED_TO_ZERO);
        let keda = deployment_finding(&idle, conditions::CONSUMER_AVAILABLE, "consumer", true);
        assert_eq!(
            (keda.status, keda.reason),
            (Status::True, reasons::AVAILABLE)
        );
    }
}

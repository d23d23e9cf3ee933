//! `spec.consumer`: retries, batching, scaling, refetch and the Secrets it reads.

use super::Problems;
use super::parse::parse_duration;
use super::stream::duration_or;
use crate::defaults;
use crate::naming;
use crate::spec::{ConsumerSpec, ScalingSpec, SecretKeyRef};
use crate::validated::{ConsumerSettings, EventFields, OBJECT_ID_PLACEHOLDER, Refetch, Scaling};

pub(super) fn resolve_consumer(
    spec: &ConsumerSpec,
    event: &EventFields,
    problems: &mut Problems,
) -> ConsumerSettings {
    let max_deliver = spec.max_deliver.unwrap_or(defaults::MAX_DELIVER);
    if max_deliver < 1 {
        problems.add(
            "spec.consumer.maxDeliver",
            format!("must be at least 1, got {max_deliver}"),
        );
    }
    let backoff = match &spec.backoff {
        None => defaults::BACKOFF.to_vec(),
        Some(list) if list.is_empty() => {
            problems.add(
                "spec.consumer.backoff",
                "must list at least one delay, or be left out",
            );
            defaults::BACKOFF.to_vec()
        }
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(index, text)| {
                problems.check(
                    &format!("spec.consumer.backoff[{index}]"),
                    parse_duration(text),
                )
            })
            .collect(),
    };
    let ack_wait = duration_or(
        problems,
        "spec.consumer.ackWait",
        spec.ack_wait.as_deref(),
        defaults::ACK_WAIT,
    );
    if ack_wait < defaults::MIN_ACK_WAIT {
        problems.add(
            "spec.consumer.ackWait",
            format!("must be at least {:?}", defaults::MIN_ACK_WAIT),
        );
    }
    let batch_size = spec.batch_size.unwrap_or(defaults::BATCH_SIZE);
    if batch_size == 0 {
        problems.add("spec.consumer.batchSize", "must be at least 1");
    }
    let refetch = spec.refetch.as_ref().and_then(|refetch| {
        let retry_for = duration_or(
            problems,
            "spec.consumer.refetch.retryFor",
            refetch.retry_for.as_deref(),
            defaults::REFETCH_RETRY_FOR,
        );
        resolve_refetch(&refetch.url_template, event, problems).map(|url_template| Refetch {
            url_template,
            auth_secret_ref: refetch.auth_secret_ref.clone(),
            retry_for,
        })
    });
    check_secret_ref(
        "spec.consumer.databaseSecretRef",
        spec.database_secret_ref.as_ref(),
        problems,
    );
    check_secret_ref(
        "spec.consumer.refetch.authSecretRef",
        spec.refetch
            .as_ref()
            .and_then(|refetch| refetch.auth_secret_ref.as_ref()),
        problems,
    );
    ConsumerSettings {
        durable_name: naming::DURABLE_CONSUMER.to_owned(),
        database_secret_ref: spec.database_secret_ref.clone(),
        max_deliver,
        backoff,
        ack_wait,
        batch_size: batch_size as usize,
        scaling: resolve_scaling(&spec.scaling.clone().unwrap_or_default(), problems),
        refetch,
    }
}

pub(super) fn resolve_scaling(spec: &ScalingSpec, problems: &mut Problems) -> Scaling {
    let scaling = Scaling {
        min_replicas: spec.min_replicas.unwrap_or(defaults::MIN_REPLICAS),
        max_replicas: spec.max_replicas.unwrap_or(defaults::MAX_REPLICAS),
        lag_threshold: spec.lag_threshold.unwrap_or(defaults::LAG_THRESHOLD),
    };
    if scaling.min_replicas < 0 {
        problems.add("spec.consumer.scaling.minReplicas", "must not be negative");
    }
    if scaling.max_replicas < scaling.min_replicas.max(1) {
        problems.add(
            "spec.consumer.scaling.maxReplicas",
            format!(
                "must be at least minReplicas ({}) and at least 1, got {}",
                scaling.min_replicas, scaling.max_replicas
            ),
        );
    }
    if scaling.lag_threshold < 1 {
        problems.add("spec.consumer.scaling.lagThreshold", "must be at least 1");
    }
    scaling
}

/// The refetch URL template, when it is an http(s) URL with the placeholder.
fn resolve_refetch(template: &str, event: &EventFields, problems: &mut Problems) -> Option<String> {
    let field = "spec.consumer.refetch.urlTemplate";
    if !(template.starts_with("https://") || template.starts_with("http://")) {
        problems.add(field, format!("{template:?} must be an http(s) URL"));
        return None;
    }
    if !template.contains(OBJECT_ID_PLACEHOLDER) {
        problems.add(
            field,
            format!("{template:?} must contain {OBJECT_ID_PLACEHOLDER}"),
        );
        return None;
    }
    if event.object_id.is_none() {
        problems.add(
            "spec.event.objectId",
            "required when consumer.refetch is set",
        );
    }
    Some(template.to_owned())
}

fn check_secret_ref(path: &str, reference: Option<&SecretKeyRef>, problems: &mut Problems) {
    if let Some(reference) = reference {
        if reference.name.trim().is_empty() {
            problems.add(format!("{path}.name"), "must not be empty");
        }
        if reference.key.trim().is_empty() {
            problems.add(format!("{path}.key"), "must not be empty");
        }
    }
}

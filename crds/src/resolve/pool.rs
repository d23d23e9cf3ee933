//! `WebhookPool`: the receiver and consumer sections, checked with the same
//! rules (and field paths) as an endpoint's, plus what a pool adds.

use super::consumer::resolve_scaling;
use super::stream::resolve_limits;
use super::{Problems, resolve_receiver};
use crate::InvalidSpec;
use crate::naming;
use crate::pool::{POOL_MIN_CONSUMERS, PoolConsumer, ValidatedPool, WebhookPoolSpec};

/// Checks a pool's spec and applies every default; every wrong field is reported.
pub fn resolve_pool(
    namespace: &str,
    name: &str,
    spec: &WebhookPoolSpec,
) -> Result<ValidatedPool, InvalidSpec> {
    let mut problems = Problems::default();
    if let Err(message) = naming::check_resource_name(name) {
        problems.add("metadata.name", message);
    }
    let receiver = resolve_receiver(&spec.receiver.clone().unwrap_or_default(), &mut problems);
    let consumer = &spec.consumer;
    let scaling = resolve_scaling(&consumer.scaling.clone().unwrap_or_default(), &mut problems);
    if scaling.min_replicas < POOL_MIN_CONSUMERS {
        problems.add(
            "spec.consumer.scaling.minReplicas",
            format!(
                "must be at least {POOL_MIN_CONSUMERS} for a pool: KEDA reads its lag from the operator and cannot start a consumer from zero"
            ),
        );
    }
    if consumer.concurrency == Some(0) {
        problems.add("spec.consumer.concurrency", "must be at least 1");
    }
    let stream = spec.stream.as_ref().map(|stream| {
        resolve_limits(
            "spec.stream",
            stream.max_age.as_deref(),
            stream.duplicate_window.as_deref(),
            stream.replicas,
            &mut problems,
        )
    });
    if !problems.0.is_empty() {
        return Err(InvalidSpec(problems.0));
    }
    Ok(ValidatedPool {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        receiver,
        consumer: PoolConsumer {
            database_secret_ref: consumer.database_secret_ref.clone(),
            scaling,
            resources: consumer.resources.clone(),
            image: consumer.image.clone(),
            concurrency: consumer.concurrency,
        },
        stream,
    })
}

//! `spec.stream`: the JetStream stream's limits and names.

use std::time::Duration;

use super::Problems;
use super::parse::parse_duration;
use crate::defaults;
use crate::naming;
use crate::spec::StreamSpec;
use crate::validated::{DeletionPolicy, StreamLimits, StreamRetention, StreamSettings};

/// A duration field: parsed when given (errors recorded), else `default`.
pub(super) fn duration_or(
    problems: &mut Problems,
    field: &str,
    value: Option<&str>,
    default: Duration,
) -> Duration {
    value
        .and_then(|text| problems.check(field, parse_duration(text)))
        .unwrap_or(default)
}

pub(super) fn resolve_stream(
    namespace: &str,
    name: &str,
    spec: &StreamSpec,
    problems: &mut Problems,
) -> StreamSettings {
    let limits = resolve_limits(
        "spec.stream",
        spec.max_age.as_deref(),
        spec.duplicate_window.as_deref(),
        spec.replicas,
        problems,
    );
    if let Some(bytes) = spec.max_bytes.filter(|bytes| *bytes < 1) {
        problems.add(
            "spec.stream.maxBytes",
            format!("must be positive, got {bytes}"),
        );
    }
    let retention = spec.retention.unwrap_or(StreamRetention::Buffer);
    StreamSettings {
        name: naming::stream_name(namespace, name),
        subject_prefix: naming::subject_prefix(namespace, name),
        retention,
        max_age: limits.max_age,
        max_bytes: spec.max_bytes,
        replicas: limits.replicas,
        duplicate_window: limits.duplicate_window,
        deletion_policy: spec.deletion_policy.unwrap_or(DeletionPolicy::Delete),
        shared: None,
    }
}

/// A stream's age, dedupe window and replicas with their defaults, checked
/// (field paths under `section`) the same for an endpoint's stream and a pool's.
pub(super) fn resolve_limits(
    section: &str,
    max_age: Option<&str>,
    duplicate_window: Option<&str>,
    replicas: Option<u8>,
    problems: &mut Problems,
) -> StreamLimits {
    let max_age = duration_or(
        problems,
        &format!("{section}.maxAge"),
        max_age,
        defaults::MAX_AGE,
    );
    let duplicate_window = duration_or(
        problems,
        &format!("{section}.duplicateWindow"),
        duplicate_window,
        defaults::DUPLICATE_WINDOW,
    );
    if duplicate_window > max_age {
        problems.add(
            format!("{section}.duplicateWindow"),
            "must not be longer than stream.maxAge",
        );
    }
    let replicas = replicas.unwrap_or(defaults::STREAM_REPLICAS);
    if !(defaults::STREAM_REPLICAS_MIN..=defaults::STREAM_REPLICAS_MAX).contains(&replicas) {
        problems.add(
            format!("{section}.replicas"),
            format!(
                "must be between {} and {}, got {replicas}",
                defaults::STREAM_REPLICAS_MIN,
                defaults::STREAM_REPLICAS_MAX
            ),
        );
    }
    StreamLimits {
        max_age,
        duplicate_window,
        replicas: usize::from(replicas),
    }
}

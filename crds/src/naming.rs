//! The pure naming rules: JetStream names, Kubernetes child names and labels.
//! Every name stays valid (length, characters) for any valid resource name.

use sha2::{Digest, Sha256};

/// The durable pull consumer every consumer instance shares.
pub const DURABLE_CONSUMER: &str = "hookline-consumer";
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "hookline-operator";

/// Longest stream name we produce; JetStream's file store uses it as a directory name.
const MAX_STREAM_NAME: usize = 200;
/// Kubernetes DNS-1035 labels (Service names) and label values.
const MAX_LABEL: usize = 63;

/// Eight hex digits of SHA-256, so truncated names stay distinct.
fn short_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(4)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Cuts `text` to `max` bytes, replacing the tail by a hash of the whole when it is longer.
fn fit(text: &str, max: usize, separator: char) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let hash = short_hash(text);
    let keep = max - hash.len() - 1;
    let head = text[..keep].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{head}{separator}{hash}")
}

/// Keeps `[A-Za-z0-9_-]`, replacing anything else (such as `.`) by `_`.
fn nats_token(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `HOOKLINE_<ns>_<name>`. Namespaces and names never contain `_`, so the name is
/// unambiguous; dots in names become `_`.
pub fn stream_name(namespace: &str, name: &str) -> String {
    stream_name_in(None, namespace, name)
}

/// [`stream_name`] of a cluster that shares its NATS with others:
/// `HOOKLINE-<cluster>_<ns>_<name>` when `cluster` is given.
pub fn stream_name_in(cluster: Option<&str>, namespace: &str, name: &str) -> String {
    let root = match cluster {
        Some(cluster) => format!("HOOKLINE-{}", nats_token(cluster)),
        None => "HOOKLINE".to_owned(),
    };
    fit(
        &format!("{root}_{}_{}", nats_token(namespace), nats_token(name)),
        MAX_STREAM_NAME,
        '_',
    )
}

/// `hookline.<ns>.<name>`: each part one subject token.
pub fn subject_prefix(namespace: &str, name: &str) -> String {
    subject_prefix_in(None, namespace, name)
}

/// [`subject_prefix`] of a cluster that shares its NATS with others:
/// `hookline-<cluster>.<ns>.<name>`, a root token of its own, so no two
/// clusters' subjects overlap.
pub fn subject_prefix_in(cluster: Option<&str>, namespace: &str, name: &str) -> String {
    let root = match cluster {
        Some(cluster) => format!("hookline-{}", nats_token(cluster)),
        None => "hookline".to_owned(),
    };
    format!("{root}.{}.{}", nats_token(namespace), nats_token(name))
}

/// `HOOKLINE_<ns>_POOL_<pool>`: the one stream of a pool with a shared
/// stream. `POOL` is upper case, which no endpoint name is, so it never
/// meets an endpoint's stream (`HOOKLINE_<ns>_<name>`).
pub fn pool_stream_name_in(cluster: Option<&str>, namespace: &str, pool: &str) -> String {
    stream_name_in(cluster, namespace, &format!("POOL_{}", nats_token(pool)))
}

/// `hookline.<ns>.POOL_<pool>`: every subject of a pool's shared stream starts
/// with it; no endpoint's subjects (`hookline.<ns>.<name>.>`) overlap it.
pub fn pool_subject_prefix_in(cluster: Option<&str>, namespace: &str, pool: &str) -> String {
    subject_prefix_in(cluster, namespace, &format!("POOL_{}", nats_token(pool)))
}

/// `<pool prefix>.<name>`: a member's subjects in its pool's stream.
pub fn pool_member_subject_prefix(pool_prefix: &str, name: &str) -> String {
    format!("{pool_prefix}.{}", pool_member_token(name))
}

/// A member's subject token in its pool's stream (the one after the pool's
/// prefix), by which the stream's per-subject counts are summed per member.
pub fn pool_member_token(name: &str) -> String {
    nats_token(name)
}

/// The member token of a subject of a pool's stream
/// (`<pool prefix>.<token>.<type>`); `None` for a subject outside `pool_prefix`.
pub fn pool_member_of_subject<'a>(pool_prefix: &str, subject: &'a str) -> Option<&'a str> {
    let rest = subject.strip_prefix(pool_prefix)?.strip_prefix('.')?;
    rest.split('.').next()
}

/// What the durables of a pool's members on its stream were named before
/// the pool had one durable (`hookline-consumer-<name>`): the pool's
/// reconcile deletes those it finds.
pub const POOL_MEMBER_DURABLE_PREFIX: &str = "hookline-consumer-";

/// The subject a member's own stream gets once its events go to its pool's
/// stream: `hookline_retired.<ns>.<name>` (`hookline-<cluster>_retired…` in
/// a named cluster), a root no receiver publishes to, so nothing lands in
/// the old stream while its last events drain.
pub fn retired_subject_in(cluster: Option<&str>, namespace: &str, name: &str) -> String {
    let root = match cluster {
        Some(cluster) => format!("hookline-{}_retired", nats_token(cluster)),
        None => "hookline_retired".to_owned(),
    };
    format!("{root}.{}.{}", nats_token(namespace), nats_token(name))
}

/// A cluster name for [`stream_name_in`]: a DNS label of at most 32
/// characters, so stream names stay short and readable.
pub fn check_cluster_name(cluster: &str) -> Result<(), String> {
    check_dns_label(cluster, 32)
}

/// An event type as one subject token: `invoice.paid` → `invoice_paid`; empty → `unknown`.
/// The exact type travels in the event-type header.
pub fn subject_token(event_type: &str) -> String {
    if event_type.is_empty() {
        return "unknown".into();
    }
    fit(&nats_token(event_type), 128, '_')
}

/// A DNS-1035 label (starts with a letter, `[a-z0-9-]`, at most 63) for a child
/// object: `<name>-<suffix>`, e.g. `stripe-receiver`. When the name is not
/// already such a label (a dot, a leading digit), a hash of the name follows
/// it (`stripe-eu-1f2e3d4c-receiver` for `stripe.eu`), so `stripe.eu` and
/// `stripe-eu` in one namespace never share children.
pub fn child_name(name: &str, suffix: &str) -> String {
    let base: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let base = if base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base
    } else {
        format!("whe-{base}")
    };
    let base = if base == name {
        base
    } else {
        format!("{base}-{}", short_hash(name))
    };
    let room = MAX_LABEL - suffix.len() - 1;
    format!("{}-{suffix}", fit(&base, room, '-'))
}

/// A valid label value for `text` (at most 63, alphanumeric at both ends).
pub fn label_value(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let fitted = fit(&cleaned, MAX_LABEL, '-');
    fitted
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// The labels on every child of an endpoint.
pub fn labels(endpoint_name: &str, component: &str) -> std::collections::BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "hookline".to_owned()),
        ("app.kubernetes.io/instance", label_value(endpoint_name)),
        ("app.kubernetes.io/component", component.to_owned()),
        ("app.kubernetes.io/managed-by", FIELD_MANAGER.to_owned()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

fn check_dns_label(text: &str, max: usize) -> Result<(), String> {
    let valid_chars = text
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let valid_ends = text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric());
    if text.is_empty() || text.len() > max || !valid_chars || !valid_ends {
        return Err(format!(
            "{text:?} is not a DNS label: lower-case letters, digits and '-', starting and ending with a letter or digit, at most {max} characters"
        ));
    }
    Ok(())
}

/// A Kubernetes object name (DNS-1123 subdomain).
pub fn check_resource_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{name:?} must have 1 to 253 characters"));
    }
    name.split('.')
        .try_for_each(|part| check_dns_label(part, 63))
}

/// A Kubernetes namespace (DNS-1123 label).
pub fn check_namespace(namespace: &str) -> Result<(), String> {
    check_dns_label(namespace, 63)
}

/// An Ingress host: a DNS name, optionally with a leading `*.` wildcard.
pub fn check_host(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.len() > 253
        || name
            .split('.')
            .any(|part| check_dns_label(part, 63).is_err())
    {
        return Err(format!(
            "{host:?} is not a DNS host name (lower-case, e.g. hooks.example.com)"
        ));
    }
    Ok(())
}

/// JetStream's advisory that a stream was deleted: this prefix, then its name.
const STREAM_DELETED: &str = "$JS.EVENT.ADVISORY.STREAM.DELETED.";
/// JetStream's advisory that a consumer was deleted: this prefix, then
/// `<stream>.<consumer>`.
const CONSUMER_DELETED: &str = "$JS.EVENT.ADVISORY.CONSUMER.DELETED.";

/// Every stream's and every consumer's deletion advisories: two
/// subscriptions, however many streams a process follows.
pub const DELETION_ADVISORIES: [&str; 2] = [
    "$JS.EVENT.ADVISORY.STREAM.DELETED.*",
    "$JS.EVENT.ADVISORY.CONSUMER.DELETED.*.*",
];

/// The deletion advisory of stream `stream`.
pub fn stream_deleted_advisory(stream: &str) -> String {
    format!("{STREAM_DELETED}{stream}")
}

/// The deletion advisory of consumer `consumer` of stream `stream`.
pub fn consumer_deleted_advisory(stream: &str, consumer: &str) -> String {
    format!("{CONSUMER_DELETED}{stream}.{consumer}")
}

/// What a deletion advisory's subject says was deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deleted<'a> {
    Stream(&'a str),
    Consumer { stream: &'a str, consumer: &'a str },
}

/// Reads a deletion advisory's subject; `None` for any other subject.
/// Stream names hold no `.`, so the first one after the prefix ends it.
pub fn deleted(subject: &str) -> Option<Deleted<'_>> {
    if let Some(stream) = subject.strip_prefix(STREAM_DELETED) {
        return Some(Deleted::Stream(stream));
    }
    let (stream, consumer) = subject.strip_prefix(CONSUMER_DELETED)?.split_once('.')?;
    Some(Deleted::Consumer { stream, consumer })
}

//! What the receiver accepts: source ranges, the route, body rules and where
//! the event attributes are read.

use ipnet::IpNet;

use super::Problems;
use super::parse::parse_field_source;
use crate::defaults;
use crate::naming;
use crate::spec::{EventSpec, IngressSpec, RateLimitSpec, RequestSpec};
use crate::validated::{
    EventFields, EventFilter, FieldSource, IngressRoute, RateLimit, RequestRules, Route,
    SourceFilter, TypePattern,
};

pub(super) fn resolve_source_filter(
    ranges: &[String],
    trusted_proxy_hops: Option<u32>,
    problems: &mut Problems,
) -> SourceFilter {
    let mut allowed = Vec::new();
    for (index, cidr) in ranges.iter().enumerate() {
        // A bare address is a one-address range.
        let parsed = cidr
            .parse::<IpNet>()
            .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| format!("{cidr:?} is not a CIDR (e.g. 192.0.2.0/24 or 2001:db8::/32)"));
        if let Some(net) = problems.check(&format!("spec.allowedSourceRanges[{index}]"), parsed) {
            allowed.push(net);
        }
    }
    let hops = trusted_proxy_hops.unwrap_or(0);
    if hops > defaults::MAX_TRUSTED_PROXY_HOPS {
        problems.add(
            "spec.trustedProxyHops",
            format!(
                "must be at most {}, got {hops}",
                defaults::MAX_TRUSTED_PROXY_HOPS
            ),
        );
    }
    SourceFilter {
        allowed,
        trusted_proxy_hops: hops as usize,
    }
}

pub(super) fn resolve_route(
    namespace: &str,
    name: &str,
    spec: Option<&IngressSpec>,
    problems: &mut Problems,
) -> Route {
    let path = spec
        .and_then(|ingress| ingress.path.clone())
        .unwrap_or_else(|| format!("/{namespace}/{name}"));
    if !path.starts_with('/') {
        problems.add("spec.ingress.path", format!("{path:?} must start with '/'"));
    } else if path
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "?#{}*".contains(c))
    {
        problems.add(
            "spec.ingress.path",
            format!("{path:?} may not contain whitespace, '?', '#', '{{', '}}' or '*'"),
        );
    }
    if let Some(host) = spec.and_then(|ingress| ingress.host.as_deref())
        && let Err(message) = naming::check_host(host)
    {
        problems.add("spec.ingress.host", message);
    }
    Route {
        path,
        ingress: spec.map(|ingress| IngressRoute {
            host: ingress.host.clone(),
            class_name: ingress.class_name.clone(),
            tls_secret_name: ingress.tls_secret_name.clone(),
        }),
    }
}

pub(super) fn resolve_request(spec: &RequestSpec, problems: &mut Problems) -> RequestRules {
    let max_body_bytes = match spec.max_body_bytes {
        None => defaults::MAX_BODY_BYTES,
        Some(0) => {
            problems.add("spec.request.maxBodyBytes", "must be at least 1");
            defaults::MAX_BODY_BYTES
        }
        Some(bytes) => bytes,
    };
    match &spec.schema {
        Some(schema) if !schema.is_object() => {
            problems.add("spec.request.schema", "must be a JSON Schema object");
        }
        Some(schema) => {
            if let Err(err) = jsonschema::validator_for(schema) {
                problems.add(
                    "spec.request.schema",
                    format!("is not a valid JSON Schema: {err}"),
                );
            }
        }
        None => {}
    }
    RequestRules {
        max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
        require_json: spec.require_json.unwrap_or(true),
        schema: spec.schema.clone(),
        rate_limit: spec
            .rate_limit
            .as_ref()
            .and_then(|limit| resolve_rate_limit(limit, problems)),
    }
}

/// The burst defaults to one second's worth, rounded up, so a whole rate
/// of 0.5 still lets one event through.
fn resolve_rate_limit(spec: &RateLimitSpec, problems: &mut Problems) -> Option<RateLimit> {
    let per_second = spec.requests_per_second;
    if !(per_second > 0.0 && per_second <= defaults::RATE_LIMIT_MAX) {
        problems.add(
            "spec.request.rateLimit.requestsPerSecond",
            format!(
                "must be greater than 0 and at most {}, got {per_second}",
                defaults::RATE_LIMIT_MAX
            ),
        );
        return None;
    }
    let burst = match spec.burst {
        Some(burst) if burst == 0 || burst > defaults::RATE_LIMIT_BURST_MAX => {
            problems.add(
                "spec.request.rateLimit.burst",
                format!(
                    "must be at least 1 and at most {}, got {burst}",
                    defaults::RATE_LIMIT_BURST_MAX
                ),
            );
            return None;
        }
        Some(burst) => burst,
        // At most RATE_LIMIT_MAX, so the cast cannot saturate.
        None => (per_second.ceil() as u32).max(1),
    };
    Some(RateLimit { per_second, burst })
}

/// The patterns of `event.accept` and `event.ignore`, checked as the CRD
/// checks them, plus no control characters (an event type with one is
/// refused anyway, so such a pattern could never match).
pub(super) fn resolve_event_filter(spec: &EventSpec, problems: &mut Problems) -> EventFilter {
    let mut patterns = |field: &str, given: &[String]| {
        if given.len() > defaults::MAX_EVENT_PATTERNS {
            problems.add(
                format!("spec.event.{field}"),
                format!(
                    "has {} patterns, at most {} are allowed",
                    given.len(),
                    defaults::MAX_EVENT_PATTERNS
                ),
            );
        }
        let mut valid = Vec::with_capacity(given.len());
        for (index, pattern) in given.iter().enumerate() {
            let problem = if pattern.is_empty() {
                Some("must not be empty".to_owned())
            } else if pattern.len() > defaults::MAX_EVENT_PATTERN_BYTES {
                Some(format!(
                    "is longer than {} bytes",
                    defaults::MAX_EVENT_PATTERN_BYTES
                ))
            } else if pattern.chars().any(char::is_control) {
                Some("contains control characters".to_owned())
            } else {
                None
            };
            match problem {
                Some(message) => problems.add(format!("spec.event.{field}[{index}]"), message),
                None => valid.push(TypePattern::new(pattern.clone())),
            }
        }
        valid
    };
    EventFilter {
        accept: patterns("accept", &spec.accept),
        ignore: patterns("ignore", &spec.ignore),
    }
}

/// Each attribute from the spec when given, else from the preset.
pub(super) fn resolve_event(
    spec: &EventSpec,
    preset: EventFields,
    problems: &mut Problems,
) -> EventFields {
    let mut field = |path: &str, given: &Option<String>, preset: Option<FieldSource>| match given {
        Some(text) => problems.check(path, parse_field_source(text)),
        None => preset,
    };
    EventFields {
        id: field("spec.event.id", &spec.id, preset.id),
        event_type: field("spec.event.type", &spec.event_type, preset.event_type),
        timestamp: field("spec.event.timestamp", &spec.timestamp, preset.timestamp),
        object_id: field("spec.event.objectId", &spec.object_id, preset.object_id),
    }
}

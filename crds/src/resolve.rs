//! Provider presets and the one function that turns a spec into a
//! [`ValidatedEndpoint`], reporting every wrong field by its path.

use std::time::Duration;

use ipnet::IpNet;

use crate::naming;
use crate::spec::{
    HmacAlgorithm, Provider, SignatureEncoding, StreamSpec, VerificationSpec, WebhookEndpointSpec,
};
use crate::validated::*;
use crate::{FieldError, InvalidSpec};

/// Placeholder for the object id in `consumer.refetch.urlTemplate`.
pub const OBJECT_ID_PLACEHOLDER: &str = "{objectId}";

pub const DEFAULT_SECRET_KEY: &str = "secret";
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(720 * 3600);
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
pub const DEFAULT_MAX_DELIVER: i64 = 10;
pub const DEFAULT_BACKOFF: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
];
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
pub const DEFAULT_BATCH_SIZE: usize = 100;
pub const DEFAULT_RECEIVER_REPLICAS: i32 = 2;
pub const DEFAULT_MIN_REPLICAS: i32 = 1;
pub const DEFAULT_MAX_REPLICAS: i32 = 10;
pub const DEFAULT_LAG_THRESHOLD: i64 = 1000;

/// A provider's built-in verification and event layout, before user overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preset {
    pub verification: Option<Verification>,
    pub event: EventFields,
    /// Whether `secretRef.generate` makes sense: we choose the secret, not the provider.
    pub secret_chosen_by_us: bool,
}

fn header(name: &str) -> Option<FieldSource> {
    Some(FieldSource::Header(name.to_ascii_lowercase()))
}

fn json(pointer: &str) -> Option<FieldSource> {
    Some(FieldSource::JsonPointer(pointer.to_owned()))
}

fn hmac(
    signature_header: &str,
    format: SignatureFormat,
    encoding: SignatureEncoding,
    prefix: &str,
    template: &str,
    timestamp: Option<TimestampSource>,
) -> Verification {
    Verification {
        signature_header: signature_header.to_ascii_lowercase(),
        format,
        algorithm: HmacAlgorithm::Sha256,
        encoding,
        prefix: prefix.to_owned(),
        // The templates here are constants known to parse.
        signed_payload: parse_template(template).unwrap_or_default(),
        timestamp,
        id_header: None,
        tolerance: DEFAULT_TOLERANCE,
        secret_format: SecretFormat::Raw,
    }
}

/// The built-in settings of `provider`.
pub fn preset(provider: Provider) -> Preset {
    use SignatureEncoding::{Base64, Hex};
    match provider {
        Provider::Stripe => Preset {
            verification: Some(hmac(
                "Stripe-Signature",
                SignatureFormat::StripeKeyValue,
                Hex,
                "",
                "{timestamp}.{body}",
                Some(TimestampSource::SignatureField("t".into())),
            )),
            event: EventFields {
                id: json("/id"),
                event_type: json("/type"),
                timestamp: json("/created"),
                object_id: json("/data/object/id"),
            },
            secret_chosen_by_us: false,
        },
        Provider::Github => Preset {
            verification: Some(hmac(
                "X-Hub-Signature-256",
                SignatureFormat::Single,
                Hex,
                "sha256=",
                "{body}",
                None,
            )),
            event: EventFields {
                id: header("X-GitHub-Delivery"),
                event_type: header("X-GitHub-Event"),
                timestamp: None,
                object_id: None,
            },
            secret_chosen_by_us: true,
        },
        Provider::Shopify => Preset {
            verification: Some(hmac(
                "X-Shopify-Hmac-Sha256",
                SignatureFormat::Single,
                Base64,
                "",
                "{body}",
                None,
            )),
            event: EventFields {
                id: header("X-Shopify-Webhook-Id"),
                event_type: header("X-Shopify-Topic"),
                timestamp: header("X-Shopify-Triggered-At"),
                object_id: json("/id"),
            },
            secret_chosen_by_us: false,
        },
        Provider::Slack => Preset {
            verification: Some(hmac(
                "X-Slack-Signature",
                SignatureFormat::Single,
                Hex,
                "v0=",
                "v0:{timestamp}:{body}",
                Some(TimestampSource::Header("x-slack-request-timestamp".into())),
            )),
            event: EventFields {
                id: json("/event_id"),
                event_type: json("/event/type"),
                timestamp: json("/event_time"),
                object_id: None,
            },
            secret_chosen_by_us: false,
        },
        Provider::StandardWebhooks => Preset {
            verification: Some(Verification {
                id_header: Some("webhook-id".into()),
                secret_format: SecretFormat::StandardWebhooks,
                ..hmac(
                    "webhook-signature",
                    SignatureFormat::StandardWebhooks,
                    Base64,
                    "",
                    "{id}.{timestamp}.{body}",
                    Some(TimestampSource::Header("webhook-timestamp".into())),
                )
            }),
            event: EventFields {
                id: header("webhook-id"),
                event_type: json("/type"),
                timestamp: header("webhook-timestamp"),
                object_id: json("/data/id"),
            },
            secret_chosen_by_us: true,
        },
        Provider::Generic => Preset {
            verification: None,
            event: EventFields {
                id: None,
                event_type: None,
                timestamp: None,
                object_id: None,
            },
            secret_chosen_by_us: true,
        },
    }
}

/// Collects field errors so that one pass reports all of them.
#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Runs a parse, recording its error under `field`.
    fn check<T>(&mut self, field: &str, parsed: Result<T, String>) -> Option<T> {
        parsed.map_err(|message| self.add(field, message)).ok()
    }
}

/// Parses a Kubernetes-style duration (`30s`, `5m`, `720h`, `1h30m`, `250ms`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty duration: write e.g. `30s`, `5m` or `720h`".into());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: write e.g. `30s`, `5m` or `720h`"))?;
        let seconds_per_unit = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "invalid duration {text:?}: unit {unit:?} is not one of ns, us, ms, s, m, h"
                ));
            }
        };
        total += Duration::try_from_secs_f64(value * seconds_per_unit)
            .map_err(|_| format!("invalid duration {text:?}: out of range"))?;
        rest = next;
    }
    Ok(total)
}

/// Parses `{body}`/`{timestamp}`/`{id}` templates.
fn parse_template(template: &str) -> Result<Vec<PayloadPart>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(PayloadPart::Literal(rest[..open].to_owned()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in {template:?}"))?
            + open;
        parts.push(match &rest[open + 1..close] {
            "body" => PayloadPart::Body,
            "timestamp" => PayloadPart::Timestamp,
            "id" => PayloadPart::Id,
            other => {
                return Err(format!(
                    "unknown placeholder {{{other}}}: use {{body}}, {{timestamp}} or {{id}}"
                ));
            }
        });
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(PayloadPart::Literal(rest.to_owned()));
    }
    if !parts.contains(&PayloadPart::Body) {
        return Err(format!("{template:?} must contain {{body}}"));
    }
    Ok(parts)
}

/// An HTTP header name (RFC 9110 token), lower-cased.
fn parse_header_name(name: &str) -> Result<String, String> {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(is_token_char) {
        return Err(format!("{name:?} is not a valid HTTP header name"));
    }
    Ok(name.to_ascii_lowercase())
}

/// `header:NAME` or `json:/pointer`.
pub fn parse_field_source(text: &str) -> Result<FieldSource, String> {
    if let Some(name) = text.strip_prefix("header:") {
        return parse_header_name(name).map(FieldSource::Header);
    }
    if let Some(pointer) = text.strip_prefix("json:") {
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            return Err(format!(
                "{pointer:?} is not a JSON pointer: it must start with '/' (e.g. json:/data/id)"
            ));
        }
        let mut chars = pointer.chars();
        while let Some(c) = chars.next() {
            if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                return Err(format!(
                    "{pointer:?} is not a JSON pointer: '~' must be followed by 0 or 1"
                ));
            }
        }
        return Ok(FieldSource::JsonPointer(pointer.to_owned()));
    }
    Err(format!("{text:?} must be `header:NAME` or `json:/pointer`"))
}

fn resolve_verification(
    preset: Option<Verification>,
    overrides: Option<&VerificationSpec>,
    problems: &mut Problems,
) -> Option<Verification> {
    let default = VerificationSpec::default();
    let spec = overrides.unwrap_or(&default);
    let header = match (&spec.signature_header, &preset) {
        (Some(name), _) => {
            problems.check("spec.verification.signatureHeader", parse_header_name(name))?
        }
        (None, Some(preset)) => preset.signature_header.clone(),
        (None, None) => {
            problems.add(
                "spec.verification.signatureHeader",
                "required for provider generic",
            );
            return None;
        }
    };
    let base = preset.unwrap_or_else(|| {
        hmac(
            &header,
            SignatureFormat::Single,
            SignatureEncoding::Hex,
            "",
            "{body}",
            None,
        )
    });
    let timestamp = match &spec.timestamp_header {
        Some(name) => problems
            .check("spec.verification.timestampHeader", parse_header_name(name))
            .map(TimestampSource::Header),
        None => base.timestamp.clone(),
    };
    let id_header = match &spec.id_header {
        Some(name) => problems.check("spec.verification.idHeader", parse_header_name(name)),
        None => base.id_header.clone(),
    };
    let signed_payload = match &spec.signed_payload {
        Some(template) => {
            problems.check("spec.verification.signedPayload", parse_template(template))?
        }
        None => base.signed_payload.clone(),
    };
    if signed_payload.contains(&PayloadPart::Timestamp) && timestamp.is_none() {
        problems.add(
            "spec.verification.timestampHeader",
            "required because signedPayload uses {timestamp}",
        );
    }
    if signed_payload.contains(&PayloadPart::Id) && id_header.is_none() {
        problems.add(
            "spec.verification.idHeader",
            "required because signedPayload uses {id}",
        );
    }
    let tolerance = match &spec.tolerance {
        Some(text) => problems.check("spec.verification.tolerance", parse_duration(text))?,
        None => base.tolerance,
    };
    Some(Verification {
        signature_header: header,
        format: base.format,
        algorithm: spec.algorithm.unwrap_or(base.algorithm),
        encoding: spec.encoding.unwrap_or(base.encoding),
        prefix: spec.prefix.clone().unwrap_or(base.prefix),
        signed_payload,
        timestamp,
        id_header,
        tolerance,
        secret_format: base.secret_format,
    })
}

fn resolve_stream(
    namespace: &str,
    name: &str,
    spec: &StreamSpec,
    problems: &mut Problems,
) -> StreamSettings {
    let duration =
        |problems: &mut Problems, field: &str, value: &Option<String>, default: Duration| {
            value
                .as_deref()
                .and_then(|text| problems.check(field, parse_duration(text)))
                .unwrap_or(default)
        };
    let max_age = duration(
        problems,
        "spec.stream.maxAge",
        &spec.max_age,
        DEFAULT_MAX_AGE,
    );
    let duplicate_window = duration(
        problems,
        "spec.stream.duplicateWindow",
        &spec.duplicate_window,
        DEFAULT_DUPLICATE_WINDOW,
    );
    if duplicate_window > max_age {
        problems.add(
            "spec.stream.duplicateWindow",
            "must not be longer than stream.maxAge",
        );
    }
    if let Some(bytes) = spec.max_bytes.filter(|bytes| *bytes < 1) {
        problems.add(
            "spec.stream.maxBytes",
            format!("must be positive, got {bytes}"),
        );
    }
    let replicas = spec.replicas.unwrap_or(1);
    if !(1..=5).contains(&replicas) {
        problems.add(
            "spec.stream.replicas",
            format!("must be between 1 and 5, got {replicas}"),
        );
    }
    StreamSettings {
        name: naming::stream_name(namespace, name),
        subject_prefix: naming::subject_prefix(namespace, name),
        max_age,
        max_bytes: spec.max_bytes,
        replicas: usize::from(replicas),
        duplicate_window,
        deletion_policy: spec.deletion_policy.unwrap_or(DeletionPolicy::Delete),
    }
}

/// Checks `spec` and applies every default. `namespace` and `name` are the
/// resource's; all errors are reported together, each with its field path.
pub fn resolve(
    namespace: &str,
    name: &str,
    spec: &WebhookEndpointSpec,
) -> Result<ValidatedEndpoint, InvalidSpec> {
    let mut problems = Problems::default();
    if let Err(message) = naming::check_resource_name(name) {
        problems.add("metadata.name", message);
    }
    if let Err(message) = naming::check_namespace(namespace) {
        problems.add("metadata.namespace", message);
    }

    let preset = preset(spec.provider);
    let secret_key = spec
        .secret_ref
        .key
        .clone()
        .unwrap_or_else(|| DEFAULT_SECRET_KEY.into());
    if spec.secret_ref.name.trim().is_empty() {
        problems.add("spec.secretRef.name", "must not be empty");
    }
    if secret_key.trim().is_empty() {
        problems.add("spec.secretRef.key", "must not be empty");
    }
    let generate = spec.secret_ref.generate.unwrap_or(false);
    if generate && !preset.secret_chosen_by_us {
        problems.add(
            "spec.secretRef.generate",
            format!(
                "{} chooses the signing secret; copy it into the Secret instead",
                spec.provider
            ),
        );
    }

    let verification = resolve_verification(
        preset.verification,
        spec.verification.as_ref(),
        &mut problems,
    );

    let mut allowed = Vec::new();
    for (index, cidr) in spec.allowed_source_ranges.iter().enumerate() {
        // A bare address is a one-address range.
        let parsed = cidr
            .parse::<IpNet>()
            .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| format!("{cidr:?} is not a CIDR (e.g. 192.0.2.0/24 or 2001:db8::/32)"));
        if let Some(net) = problems.check(&format!("spec.allowedSourceRanges[{index}]"), parsed) {
            allowed.push(net);
        }
    }
    let hops = spec.trusted_proxy_hops.unwrap_or(0);
    if hops > 16 {
        problems.add(
            "spec.trustedProxyHops",
            format!("must be at most 16, got {hops}"),
        );
    }

    let ingress_spec = spec.ingress.clone().unwrap_or_default();
    let path = ingress_spec
        .path
        .clone()
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
    if let Some(host) = &ingress_spec.host
        && let Err(message) = naming::check_host(host)
    {
        problems.add("spec.ingress.host", message);
    }

    let request_spec = spec.request.clone().unwrap_or_default();
    let max_body_bytes = match request_spec.max_body_bytes {
        None => DEFAULT_MAX_BODY_BYTES,
        Some(0) => {
            problems.add("spec.request.maxBodyBytes", "must be at least 1");
            DEFAULT_MAX_BODY_BYTES
        }
        Some(bytes) => usize::try_from(bytes).unwrap_or(usize::MAX),
    };
    if request_spec
        .schema
        .as_ref()
        .is_some_and(|schema| !schema.is_object())
    {
        problems.add("spec.request.schema", "must be a JSON Schema object");
    }

    let event_spec = spec.event.clone().unwrap_or_default();
    let mut field = |path: &str, given: &Option<String>, preset: Option<FieldSource>| match given {
        Some(text) => problems.check(path, parse_field_source(text)),
        None => preset,
    };
    let event = EventFields {
        id: field("spec.event.id", &event_spec.id, preset.event.id),
        event_type: field(
            "spec.event.type",
            &event_spec.event_type,
            preset.event.event_type,
        ),
        timestamp: field(
            "spec.event.timestamp",
            &event_spec.timestamp,
            preset.event.timestamp,
        ),
        object_id: field(
            "spec.event.objectId",
            &event_spec.object_id,
            preset.event.object_id,
        ),
    };

    let stream = resolve_stream(
        namespace,
        name,
        &spec.stream.clone().unwrap_or_default(),
        &mut problems,
    );

    let consumer_spec = spec.consumer.clone().unwrap_or_default();
    let max_deliver = consumer_spec.max_deliver.unwrap_or(DEFAULT_MAX_DELIVER);
    if max_deliver < 1 {
        problems.add(
            "spec.consumer.maxDeliver",
            format!("must be at least 1, got {max_deliver}"),
        );
    }
    let backoff = match &consumer_spec.backoff {
        None => DEFAULT_BACKOFF.to_vec(),
        Some(list) if list.is_empty() => {
            problems.add(
                "spec.consumer.backoff",
                "must list at least one delay, or be left out",
            );
            DEFAULT_BACKOFF.to_vec()
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
    let ack_wait = match &consumer_spec.ack_wait {
        Some(text) => problems
            .check("spec.consumer.ackWait", parse_duration(text))
            .unwrap_or(DEFAULT_ACK_WAIT),
        None => DEFAULT_ACK_WAIT,
    };
    if ack_wait < Duration::from_secs(1) {
        problems.add("spec.consumer.ackWait", "must be at least 1s");
    }
    let batch_size = consumer_spec
        .batch_size
        .map_or(DEFAULT_BATCH_SIZE, |size| size as usize);
    if batch_size == 0 {
        problems.add("spec.consumer.batchSize", "must be at least 1");
    }
    let scaling_spec = consumer_spec.scaling.clone().unwrap_or_default();
    let scaling = Scaling {
        min_replicas: scaling_spec.min_replicas.unwrap_or(DEFAULT_MIN_REPLICAS),
        max_replicas: scaling_spec.max_replicas.unwrap_or(DEFAULT_MAX_REPLICAS),
        lag_threshold: scaling_spec.lag_threshold.unwrap_or(DEFAULT_LAG_THRESHOLD),
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
    let refetch = consumer_spec.refetch.as_ref().and_then(|refetch| {
        let template = &refetch.url_template;
        if !(template.starts_with("https://") || template.starts_with("http://")) {
            problems.add(
                "spec.consumer.refetch.urlTemplate",
                format!("{template:?} must be an http(s) URL"),
            );
            return None;
        }
        if !template.contains(OBJECT_ID_PLACEHOLDER) {
            problems.add(
                "spec.consumer.refetch.urlTemplate",
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
        Some(Refetch {
            url_template: template.clone(),
            auth_secret_ref: refetch.auth_secret_ref.clone(),
        })
    });
    for (path, reference) in [
        (
            "spec.consumer.databaseSecretRef",
            consumer_spec.database_secret_ref.as_ref(),
        ),
        (
            "spec.consumer.refetch.authSecretRef",
            consumer_spec
                .refetch
                .as_ref()
                .and_then(|refetch| refetch.auth_secret_ref.as_ref()),
        ),
    ] {
        if let Some(reference) = reference {
            if reference.name.trim().is_empty() {
                problems.add(format!("{path}.name"), "must not be empty");
            }
            if reference.key.trim().is_empty() {
                problems.add(format!("{path}.key"), "must not be empty");
            }
        }
    }

    let receiver_spec = spec.receiver.clone().unwrap_or_default();
    let receiver_replicas = receiver_spec.replicas.unwrap_or(DEFAULT_RECEIVER_REPLICAS);
    if receiver_replicas < 0 {
        problems.add("spec.receiver.replicas", "must not be negative");
    }

    match verification {
        Some(verification) if problems.0.is_empty() => Ok(ValidatedEndpoint {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            provider: spec.provider,
            secret: SecretSource {
                name: spec.secret_ref.name.clone(),
                key: secret_key,
                generate,
            },
            verification,
            source_filter: SourceFilter {
                allowed,
                trusted_proxy_hops: hops as usize,
            },
            ingress: Route {
                host: ingress_spec.host,
                path,
                class_name: ingress_spec.class_name,
                tls_secret_name: ingress_spec.tls_secret_name,
            },
            request: RequestRules {
                max_body_bytes,
                require_json: request_spec.require_json.unwrap_or(true),
                schema: request_spec.schema,
            },
            event,
            stream,
            consumer: ConsumerSettings {
                durable_name: naming::DURABLE_CONSUMER.to_owned(),
                database_secret_ref: consumer_spec.database_secret_ref,
                max_deliver,
                backoff,
                ack_wait,
                batch_size,
                scaling,
                refetch,
            },
            receiver: ReceiverSettings {
                replicas: receiver_replicas,
                resources: receiver_spec.resources,
                image: receiver_spec.image,
            },
        }),
        _ => Err(InvalidSpec(problems.0)),
    }
}

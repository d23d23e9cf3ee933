//! Resolving a spec: provider presets, defaults, and one precise message per wrong field.

use std::time::Duration;

use hookline_api::resolve::parse_duration;
use hookline_api::spec::*;
use hookline_api::validated::*;
use hookline_api::{FieldError, InvalidSpec, resolve};

fn spec(provider: Provider) -> WebhookEndpointSpec {
    WebhookEndpointSpec::new(provider, "webhook")
}

fn errors(spec: &WebhookEndpointSpec) -> Vec<FieldError> {
    match resolve("payments", "stripe", spec) {
        Ok(endpoint) => panic!("accepted: {endpoint:?}"),
        Err(InvalidSpec(errors)) => errors,
    }
}

fn assert_rejects(spec: &WebhookEndpointSpec, field: &str, message_part: &str) {
    let errors = errors(spec);
    assert!(
        errors
            .iter()
            .any(|err| err.field == field && err.message.contains(message_part)),
        "expected {field}: …{message_part}…, got {errors:?}"
    );
}

#[test]
fn stripe_defaults_follow_the_contract() {
    let endpoint = resolve("payments", "stripe", &spec(Provider::Stripe)).expect("valid");
    assert_eq!(endpoint.secret.key, "secret");
    assert_eq!(endpoint.verification.signature_header, "stripe-signature");
    assert_eq!(
        endpoint.verification.format,
        SignatureFormat::StripeKeyValue
    );
    assert_eq!(endpoint.verification.tolerance, Duration::from_secs(300));
    assert_eq!(
        endpoint.verification.signed_payload,
        [
            PayloadPart::Timestamp,
            PayloadPart::Literal(".".into()),
            PayloadPart::Body
        ]
    );
    assert_eq!(
        endpoint.event.id,
        Some(FieldSource::JsonPointer("/id".into()))
    );
    assert_eq!(
        endpoint.event.object_id,
        Some(FieldSource::JsonPointer("/data/object/id".into()))
    );
    assert_eq!(endpoint.route.path, "/payments/stripe");
    assert_eq!(endpoint.request.max_body_bytes, 1024 * 1024);
    assert_eq!(endpoint.stream.name, "HOOKLINE_payments_stripe");
    assert_eq!(
        endpoint.stream.subject_filter(),
        "hookline.payments.stripe.>"
    );
    assert_eq!(
        endpoint.stream.subject_for("invoice.paid"),
        "hookline.payments.stripe.invoice_paid"
    );
    assert_eq!(endpoint.stream.max_age, Duration::from_secs(30 * 24 * 3600));
    assert_eq!(endpoint.stream.duplicate_window, Duration::from_secs(120));
    assert_eq!(endpoint.stream.deletion_policy, DeletionPolicy::Delete);
    assert_eq!(endpoint.consumer.durable_name, "hookline-consumer");
    assert_eq!(endpoint.consumer.max_deliver, 10);
    assert_eq!(endpoint.consumer.backoff.len(), 5);
    assert_eq!(endpoint.key(), "payments/stripe");
}

#[test]
fn every_provider_preset_resolves() {
    for provider in Provider::ALL
        .into_iter()
        .filter(|p| *p != Provider::Generic)
    {
        let endpoint = resolve("default", "hooks", &spec(provider)).expect("preset is valid");
        assert!(!endpoint.verification.signature_header.is_empty());
        assert!(
            endpoint.event.id.is_some(),
            "{provider} has an event id source"
        );
    }
}

#[test]
fn standard_webhooks_signs_id_timestamp_and_body_with_a_decoded_secret() {
    let endpoint = resolve("default", "hooks", &spec(Provider::StandardWebhooks)).expect("valid");
    let verification = endpoint.verification;
    assert_eq!(verification.secret_format, SecretFormat::StandardWebhooks);
    assert_eq!(verification.id_header.as_deref(), Some("webhook-id"));
    assert_eq!(
        verification.timestamp,
        Some(TimestampSource::Header("webhook-timestamp".into()))
    );
}

#[test]
fn verification_overrides_apply_on_top_of_the_preset() {
    let mut spec = spec(Provider::Slack);
    spec.verification = Some(VerificationSpec {
        tolerance: Some("30s".into()),
        ..Default::default()
    });
    let endpoint = resolve("default", "slack", &spec).expect("valid");
    assert_eq!(endpoint.verification.tolerance, Duration::from_secs(30));
    assert_eq!(endpoint.verification.prefix, "v0=");
}

#[test]
fn generic_needs_a_signature_header() {
    assert_rejects(
        &spec(Provider::Generic),
        "spec.verification.signatureHeader",
        "required",
    );
}

#[test]
fn generic_template_placeholders_need_their_headers() {
    let mut spec = spec(Provider::Generic);
    spec.verification = Some(VerificationSpec {
        signature_header: Some("X-Sig".into()),
        signed_payload: Some("{id}:{timestamp}:{body}".into()),
        ..Default::default()
    });
    assert_rejects(&spec, "spec.verification.timestampHeader", "{timestamp}");
    assert_rejects(&spec, "spec.verification.idHeader", "{id}");
}

#[test]
fn bad_template_is_rejected() {
    let mut spec = spec(Provider::Generic);
    spec.verification = Some(VerificationSpec {
        signature_header: Some("X-Sig".into()),
        signed_payload: Some("{nonce}.{body}".into()),
        ..Default::default()
    });
    assert_rejects(
        &spec,
        "spec.verification.signedPayload",
        "unknown placeholder {nonce}",
    );
}

#[test]
fn bad_cidr_is_rejected_with_its_index() {
    let mut spec = spec(Provider::Stripe);
    spec.allowed_source_ranges = vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()];
    assert_rejects(&spec, "spec.allowedSourceRanges[1]", "is not a CIDR");
}

#[test]
fn bare_addresses_are_one_address_ranges() {
    let mut spec = spec(Provider::Stripe);
    spec.allowed_source_ranges = vec!["192.0.2.7".into()];
    let endpoint = resolve("default", "stripe", &spec).expect("valid");
    assert!(
        endpoint
            .source_filter
            .allows("192.0.2.7".parse().expect("ip"))
    );
    assert!(
        !endpoint
            .source_filter
            .allows("192.0.2.8".parse().expect("ip"))
    );
}

#[test]
fn bad_json_pointer_is_rejected() {
    let mut spec = spec(Provider::Stripe);
    spec.event = Some(EventSpec {
        id: Some("json:data.id".into()),
        ..Default::default()
    });
    assert_rejects(&spec, "spec.event.id", "is not a JSON pointer");
}

#[test]
fn bad_field_source_is_rejected() {
    let mut spec = spec(Provider::Stripe);
    spec.event = Some(EventSpec {
        object_id: Some("body:/id".into()),
        ..Default::default()
    });
    assert_rejects(
        &spec,
        "spec.event.objectId",
        "must be `header:NAME` or `json:/pointer`",
    );
}

#[test]
fn bad_duration_is_rejected() {
    let mut spec = spec(Provider::Stripe);
    spec.stream = Some(StreamSpec {
        max_age: Some("30d".into()),
        ..Default::default()
    });
    assert_rejects(&spec, "spec.stream.maxAge", "unit \"d\"");
}

#[test]
fn bad_backoff_entry_is_rejected_with_its_index() {
    let mut spec = spec(Provider::Stripe);
    spec.consumer = Some(ConsumerSpec {
        backoff: Some(vec!["1s".into(), "soon".into()]),
        ..Default::default()
    });
    assert_rejects(&spec, "spec.consumer.backoff[1]", "invalid duration");
}

#[test]
fn max_replicas_below_min_replicas_is_rejected() {
    let mut spec = spec(Provider::Stripe);
    spec.consumer = Some(ConsumerSpec {
        scaling: Some(ScalingSpec {
            min_replicas: Some(5),
            max_replicas: Some(2),
            lag_threshold: None,
        }),
        ..Default::default()
    });
    assert_rejects(
        &spec,
        "spec.consumer.scaling.maxReplicas",
        "at least minReplicas (5)",
    );
}

#[test]
fn path_must_start_with_a_slash() {
    let mut spec = spec(Provider::Stripe);
    spec.ingress = Some(IngressSpec {
        path: Some("stripe".into()),
        ..Default::default()
    });
    assert_rejects(&spec, "spec.ingress.path", "must start with '/'");
}

#[test]
fn empty_secret_key_is_rejected() {
    let mut spec = spec(Provider::Stripe);
    spec.secret_ref.key = Some(String::new());
    assert_rejects(&spec, "spec.secretRef.key", "must not be empty");
}

#[test]
fn generating_a_secret_the_provider_chooses_is_rejected() {
    let mut spec = spec(Provider::Stripe);
    spec.secret_ref.generate = Some(true);
    assert_rejects(
        &spec,
        "spec.secretRef.generate",
        "stripe chooses the signing secret",
    );
}

#[test]
fn refetch_needs_the_object_id_placeholder() {
    let mut spec = spec(Provider::Stripe);
    spec.consumer = Some(ConsumerSpec {
        refetch: Some(RefetchSpec {
            url_template: "https://api.stripe.com/v1/invoices".into(),
            auth_secret_ref: None,
            retry_for: None,
        }),
        ..Default::default()
    });
    assert_rejects(&spec, "spec.consumer.refetch.urlTemplate", "{objectId}");
}

#[test]
fn all_errors_are_reported_at_once() {
    let mut spec = spec(Provider::Stripe);
    spec.secret_ref.key = Some(String::new());
    spec.ingress = Some(IngressSpec {
        path: Some("x".into()),
        ..Default::default()
    });
    assert_eq!(errors(&spec).len(), 2);
}

#[test]
fn durations_parse_like_kubernetes_durations() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("720h"), Ok(Duration::from_secs(720 * 3600)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert!(parse_duration("").is_err());
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("m5").is_err());
}

#[test]
fn retry_delay_walks_the_backoff_list_and_repeats_the_last() {
    let endpoint = resolve("default", "stripe", &spec(Provider::Stripe)).expect("valid");
    let consumer = endpoint.consumer;
    assert_eq!(consumer.retry_delay(1), Duration::from_secs(1));
    assert_eq!(consumer.retry_delay(2), Duration::from_secs(5));
    assert_eq!(consumer.retry_delay(50), Duration::from_secs(600));
}

#[test]
fn refetch_url_encodes_the_object_id() {
    let refetch = Refetch {
        url_template: "https://api.example.com/v1/objects/{objectId}".into(),
        auth_secret_ref: None,
        retry_for: Duration::from_secs(60),
    };
    assert_eq!(
        refetch.url_for("in_1/../x"),
        "https://api.example.com/v1/objects/in_1%2F..%2Fx"
    );
}

#[test]
fn field_sources_read_headers_and_json() {
    let body =
        serde_json::json!({"id": "evt_1", "created": 1700000000, "data": {"object": {"id": ""}}});
    let header = |name: &str| (name == "x-id").then_some("hdr");
    assert_eq!(
        FieldSource::Header("x-id".into())
            .read(header, None)
            .as_deref(),
        Some("hdr")
    );
    assert_eq!(
        FieldSource::JsonPointer("/id".into())
            .read(header, Some(&body))
            .as_deref(),
        Some("evt_1")
    );
    assert_eq!(
        FieldSource::JsonPointer("/created".into())
            .read(header, Some(&body))
            .as_deref(),
        Some("1700000000")
    );
    assert_eq!(
        FieldSource::JsonPointer("/data/object/id".into()).read(header, Some(&body)),
        None
    );
}

#[test]
fn a_schema_that_does_not_compile_is_rejected() {
    let mut spec = spec(Provider::Generic);
    spec.verification = Some(VerificationSpec {
        signature_header: Some("X-Signature".into()),
        ..Default::default()
    });
    spec.request = Some(RequestSpec {
        schema: Some(serde_json::json!({"type": "string", "pattern": "(["})),
        ..Default::default()
    });
    assert_rejects(&spec, "spec.request.schema", "not a valid JSON Schema");
}

fn with_rate_limit(requests_per_second: f64, burst: Option<u32>) -> WebhookEndpointSpec {
    let mut spec = spec(Provider::Stripe);
    spec.request = Some(RequestSpec {
        rate_limit: Some(RateLimitSpec {
            requests_per_second,
            burst,
        }),
        ..Default::default()
    });
    spec
}

#[test]
fn no_rate_limit_is_the_default() {
    let endpoint = resolve("payments", "stripe", &spec(Provider::Stripe)).expect("valid");
    assert_eq!(endpoint.request.rate_limit, None);
}

#[test]
fn the_burst_defaults_to_the_rate_rounded_up_and_at_least_one() {
    let burst = |rate| {
        resolve("payments", "stripe", &with_rate_limit(rate, None))
            .expect("valid")
            .request
            .rate_limit
            .expect("a limit")
            .burst
    };
    assert_eq!(burst(10.0), 10);
    assert_eq!(burst(2.5), 3);
    assert_eq!(burst(0.2), 1);
}

#[test]
fn a_rate_of_zero_or_less_is_rejected() {
    assert_rejects(
        &with_rate_limit(0.0, None),
        "spec.request.rateLimit.requestsPerSecond",
        "greater than 0",
    );
    assert_rejects(
        &with_rate_limit(-1.0, None),
        "spec.request.rateLimit.requestsPerSecond",
        "greater than 0",
    );
}

#[test]
fn a_burst_of_zero_is_rejected() {
    assert_rejects(
        &with_rate_limit(5.0, Some(0)),
        "spec.request.rateLimit.burst",
        "at least 1",
    );
}

#[test]
fn each_receiver_enforces_its_share_of_the_endpoints_rate() {
    let limit = RateLimit {
        per_second: 10.0,
        burst: 5,
    };
    assert_eq!(
        limit.share(2),
        RateLimit {
            per_second: 5.0,
            burst: 3
        }
    );
    assert_eq!(limit.share(10).burst, 1, "never below one");
    assert_eq!(limit.share(0), limit, "no replicas counts as one");
}

#[test]
fn a_star_matches_any_run_of_characters_and_the_rest_is_literal() {
    let matches = |pattern: &str, text: &str| TypePattern::new(pattern).matches(text);
    assert!(matches("invoice.paid", "invoice.paid"));
    assert!(!matches("invoice.paid", "invoice.paid.late"));
    assert!(!matches("invoice.paid", "Invoice.paid"), "case-sensitive");
    assert!(matches("invoice.*", "invoice.paid"));
    assert!(matches("invoice.*", "invoice.payment.failed"), "dots too");
    assert!(matches("invoice.*", "invoice."), "an empty run too");
    assert!(!matches("invoice.*", "invoice"));
    assert!(matches("*.deleted", "customer.subscription.deleted"));
    assert!(matches("orders/*", "orders/create"), "Shopify's topics");
    assert!(matches("a*b*c", "a-b-b-c"));
    assert!(!matches("a*a", "a"), "the pieces may not overlap");
    assert!(matches("*", ""));
}

fn with_filter(accept: &[&str], ignore: &[&str]) -> WebhookEndpointSpec {
    let mut spec = spec(Provider::Stripe);
    spec.event = Some(EventSpec {
        accept: accept.iter().map(|p| p.to_string()).collect(),
        ignore: ignore.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    });
    spec
}

#[test]
fn ignore_wins_over_accept_and_without_accept_every_type_is_stored() {
    let filter = resolve(
        "payments",
        "stripe",
        &with_filter(&["invoice.*"], &["*.deleted"]),
    )
    .expect("valid")
    .event_filter;
    assert_eq!(filter.ignores(Some("invoice.paid")), None);
    assert_eq!(
        filter.ignores(Some("invoice.deleted")),
        Some(Ignored::By(&TypePattern::new("*.deleted")))
    );
    assert_eq!(
        filter.ignores(Some("customer.created")),
        Some(Ignored::NotAccepted)
    );
    assert_eq!(filter.ignores(None), Some(Ignored::NotAccepted));
    let open = resolve("payments", "stripe", &spec(Provider::Stripe))
        .expect("valid")
        .event_filter;
    assert_eq!(open.ignores(Some("anything")), None);
    assert_eq!(open.ignores(None), None);
}

#[test]
fn an_empty_pattern_is_rejected_with_its_index() {
    assert_rejects(
        &with_filter(&["invoice.*", ""], &[]),
        "spec.event.accept[1]",
        "must not be empty",
    );
    assert_rejects(
        &with_filter(&[], &["bad\ntype"]),
        "spec.event.ignore[0]",
        "control characters",
    );
}

fn pool_spec(yaml: &str) -> hookline_api::pool::WebhookPoolSpec {
    serde_yaml::from_str(yaml).expect("pool spec")
}

#[test]
fn a_pool_takes_the_endpoints_defaults_and_needs_at_least_one_consumer() {
    let pool = hookline_api::resolve_pool(
        "shop",
        "shared",
        &pool_spec("consumer: {databaseSecretRef: {name: db, key: url}}"),
    )
    .expect("valid");
    assert_eq!(pool.receiver.replicas, 2);
    assert_eq!(pool.consumer.scaling.min_replicas, 1);
    assert_eq!(pool.consumer.scaling.max_replicas, 10);
    assert_eq!(pool.consumer.scaling.lag_threshold, 1000);
    let err = hookline_api::resolve_pool(
        "shop",
        "shared",
        &pool_spec(
            "receiver: {replicas: -1}\nconsumer: {databaseSecretRef: {name: db, key: url}, scaling: {minReplicas: 0}}",
        ),
    )
    .expect_err("invalid")
    .to_string();
    assert!(
        err.contains("spec.receiver.replicas: must not be negative"),
        "{err}"
    );
    assert!(
        err.contains("spec.consumer.scaling.minReplicas: must be at least 1 for a pool"),
        "{err}"
    );
}

#[test]
fn a_pool_member_manifest_keeps_its_pool() {
    let endpoint = hookline_api::parse_manifest(
        "apiVersion: hookline.io/v1alpha1\nkind: WebhookEndpoint\nmetadata: {name: a}\nspec: {provider: github, secretRef: {name: s}, pool: shared}\n",
    )
    .expect("parses");
    assert_eq!(endpoint.spec.pool.as_deref(), Some("shared"));
    hookline_api::validate(&endpoint).expect("the data plane takes a member's manifest");
}

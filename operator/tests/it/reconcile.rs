//! Reconcile against an in-memory API and a real nats-server: what it applies,
//! what it reports, and that a steady state writes nothing.

use crate::support;

use std::time::Duration;

use async_nats::jetstream;
use hookline_api::conditions::{self, reasons};
use hookline_api::spec::{DeletionPolicy, StreamSpec};
use hookline_operator::build::ScaledObject;
use hookline_operator::reconcile::{FINALIZER, error_policy, reconcile};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use support::{Harness, example, secret};

const NS: &str = "payments";
const NAME: &str = "stripe";

async fn stripe(keda: bool) -> Harness {
    let harness = Harness::start(keda).await;
    harness.add_endpoint_with_secrets(&example("stripe.yaml"));
    harness
}

async fn stream_info(harness: &Harness, name: &str) -> Option<jetstream::stream::Info> {
    let js = jetstream::new(harness.ctx.nats.clone());
    let mut stream = js.get_stream(name).await.ok()?;
    stream.info().await.ok().cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_reconcile_adds_the_finalizer_then_applies_every_child_and_the_stream() {
    let mut harness = stripe(true).await;
    let first = harness.reconcile(NS, NAME).await.expect("reconcile");
    assert_eq!(first, Action::await_change(), "the finalizer comes first");
    assert_eq!(
        harness.endpoint(NS, NAME).metadata.finalizers,
        Some(vec![FINALIZER.to_owned()])
    );

    harness.reconcile(NS, NAME).await.expect("reconcile");
    let uid = harness.endpoint(NS, NAME).metadata.uid.expect("uid");
    let owned_by_endpoint = |object: serde_json::Value| {
        let owners = object["metadata"]["ownerReferences"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        owners.len() == 1 && owners[0]["uid"] == uid.as_str() && owners[0]["controller"] == true
    };
    for (api_version, kind, name) in [
        ("v1", "ConfigMap", "stripe-endpoint"),
        ("v1", "Service", "stripe-receiver"),
        ("networking.k8s.io/v1", "Ingress", "stripe-receiver"),
        ("policy/v1", "PodDisruptionBudget", "stripe-receiver"),
        ("apps/v1", "Deployment", "stripe-receiver"),
        ("apps/v1", "Deployment", "stripe-consumer"),
        ("keda.sh/v1alpha1", "ScaledObject", "stripe-consumer"),
    ] {
        let object = harness
            .fake
            .get(api_version, kind, NS, name)
            .unwrap_or_else(|| panic!("{kind} {name} was not applied"));
        assert!(
            owned_by_endpoint(object),
            "{kind} {name} is not owned by the endpoint"
        );
    }
    for call in harness
        .fake
        .writes()
        .iter()
        .filter(|call| call.verb == "patch")
    {
        if call.resource != "webhookendpoints" && call.resource != "events" {
            assert_eq!(
                call.content_type.as_deref(),
                Some("application/apply-patch+yaml"),
                "{call:?}"
            );
            assert_eq!(
                call.field_manager.as_deref(),
                Some("hookline-operator"),
                "{call:?}"
            );
        }
    }
    let info = stream_info(&harness, "HOOKLINE_payments_stripe")
        .await
        .expect("the stream exists");
    assert_eq!(info.config.subjects, ["hookline.payments.stripe.>"]);
    let js = jetstream::new(harness.ctx.nats.clone());
    js.get_stream("HOOKLINE_payments_stripe")
        .await
        .expect("stream")
        .consumer_info("hookline-consumer")
        .await
        .expect("the durable consumer exists");

    let status = harness.endpoint(NS, NAME).status.expect("status written");
    assert_eq!(status.stream.as_deref(), Some("HOOKLINE_payments_stripe"));
    assert_eq!(
        status.url.as_deref(),
        Some("https://hooks.example.com/stripe")
    );
    assert_eq!(status.observed_generation, Some(1));
    let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, conditions::ALL);
    assert_eq!(
        harness
            .condition(NS, NAME, conditions::SECRET_RESOLVED)
            .status,
        "True"
    );
    assert_eq!(
        harness.condition(NS, NAME, conditions::STREAM_READY).status,
        "True"
    );
    harness.expect_condition(
        NS,
        NAME,
        conditions::RECEIVER_AVAILABLE,
        "False",
        reasons::PROGRESSING,
    );
    let ready =
        harness.expect_condition(NS, NAME, conditions::READY, "False", reasons::PROGRESSING);
    assert!(
        ready.message.starts_with("rolling out:")
            && ready
                .message
                .contains("kubectl rollout status deployment stripe-receiver"),
        "{}",
        ready.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn available_deployments_make_the_endpoint_ready_with_an_event() {
    let mut harness = stripe(true).await;
    harness.settle(NS, NAME).await;
    harness.fake.make_deployments_available();
    let action = harness.reconcile(NS, NAME).await.expect("reconcile");
    assert!(
        support::is_resync(&action),
        "a Ready endpoint resyncs slowly, with jitter: {action:?}"
    );
    let ready = harness.expect_condition(NS, NAME, conditions::READY, "True", reasons::RECONCILED);
    assert!(
        ready.message.contains("https://hooks.example.com/stripe"),
        "{}",
        ready.message
    );
    harness.expect_condition(
        NS,
        NAME,
        conditions::SCALER_READY,
        "Unknown",
        reasons::WAITING_FOR_KEDA,
    );
    let events: Vec<_> = harness
        .fake
        .calls()
        .into_iter()
        .filter(|call| call.resource == "events" && call.verb == "create")
        .collect();
    assert!(!events.is_empty(), "becoming Ready publishes an Event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_reconcile_with_nothing_changed_writes_nothing() {
    let mut harness = stripe(true).await;
    harness.settle(NS, NAME).await;
    harness.fake.make_deployments_available();
    harness.reconcile(NS, NAME).await.expect("reconcile");
    harness.fake.clear_calls();

    harness.reconcile(NS, NAME).await.expect("steady reconcile");
    assert_eq!(harness.fake.writes(), [], "a steady state makes no write");
    let stream_before = stream_info(&harness, "HOOKLINE_payments_stripe")
        .await
        .expect("stream");
    harness.reconcile(NS, NAME).await.expect("steady reconcile");
    let stream_after = stream_info(&harness, "HOOKLINE_payments_stripe")
        .await
        .expect("stream");
    assert_eq!(stream_before.config, stream_after.config);
    assert_eq!(harness.fake.writes(), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_crd_that_drops_status_fields_does_not_make_a_write_loop() {
    let mut harness = stripe(true).await;
    harness.fake.prune_status_fields(&[
        "pending",
        "streamMessages",
        "streamBytes",
        "streamLimitBytes",
        "lastEventTime",
    ]);
    harness.settle(NS, NAME).await;
    harness.fake.make_deployments_available();
    harness.reconcile(NS, NAME).await.expect("reconcile");
    harness.fake.clear_calls();
    harness.reconcile(NS, NAME).await.expect("reconcile");
    harness.reconcile(NS, NAME).await.expect("reconcile");
    assert_eq!(
        harness.fake.writes(),
        [],
        "the status the server keeps is not written again and again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_patches_the_children_and_the_stream() {
    let mut harness = stripe(true).await;
    harness.settle(NS, NAME).await;
    harness.fake.make_deployments_available();
    harness.reconcile(NS, NAME).await.expect("reconcile");
    harness.expect_condition(NS, NAME, conditions::READY, "True", reasons::RECONCILED);
    let hash = |harness: &Harness| {
        harness
            .fake
            .typed::<Deployment>(NS, "stripe-receiver")
            .expect("receiver")
            .spec
            .expect("spec")
            .template
            .metadata
            .expect("meta")
            .annotations
            .expect("annotations")["hookline.io/config-hash"]
            .clone()
    };
    let before = hash(&harness);
    harness.edit_endpoint(NS, NAME, |object| {
        object["spec"]["stream"] = json!({"maxAge": "24h"});
        object["spec"]["receiver"] = json!({"replicas": 3});
        object["metadata"]["generation"] = json!(2);
    });
    harness.reconcile(NS, NAME).await.expect("reconcile");

    let receiver = harness
        .fake
        .typed::<Deployment>(NS, "stripe-receiver")
        .expect("receiver");
    assert_eq!(
        receiver.spec.as_ref().and_then(|spec| spec.replicas),
        Some(3)
    );
    assert_ne!(hash(&harness), before, "a spec change rolls the pods");
    let config_map = harness
        .fake
        .typed::<ConfigMap>(NS, "stripe-endpoint")
        .expect("config map");
    assert!(config_map.data.expect("data")["endpoint.yaml"].contains("maxAge: 24h"));
    let info = stream_info(&harness, "HOOKLINE_payments_stripe")
        .await
        .expect("stream");
    assert_eq!(info.config.max_age, Duration::from_secs(24 * 3600));
    assert_eq!(
        harness
            .endpoint(NS, NAME)
            .status
            .expect("status")
            .observed_generation,
        Some(2)
    );

    // Ready only once the Deployment controller has rolled the new template out.
    let ready =
        harness.expect_condition(NS, NAME, conditions::READY, "False", reasons::PROGRESSING);
    assert!(
        ready.message.starts_with("rolling out:"),
        "{}",
        ready.message
    );
    harness.fake.make_deployments_available();
    harness.reconcile(NS, NAME).await.expect("reconcile");
    harness.expect_condition(NS, NAME, conditions::READY, "True", reasons::RECONCILED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_spec_ingress_deletes_the_ingress_and_the_url_becomes_the_service() {
    let mut harness = stripe(true).await;
    harness.settle(NS, NAME).await;
    assert!(
        harness
            .fake
            .typed::<Ingress>(NS, "stripe-receiver")
            .is_some()
    );
    harness.edit_endpoint(NS, NAME, |object| {
        object["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("ingress");
    });
    harness.reconcile(NS, NAME).await.expect("reconcile");
    assert!(
        harness
            .fake
            .typed::<Ingress>(NS, "stripe-receiver")
            .is_none(),
        "the Ingress is pruned"
    );
    assert!(
        harness
            .fake
            .typed::<Service>(NS, "stripe-receiver")
            .is_some(),
        "the Service stays"
    );
    assert_eq!(
        harness
            .endpoint(NS, NAME)
            .status
            .expect("status")
            .url
            .as_deref(),
        Some("http://stripe-receiver.payments.svc/payments/stripe")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_children_the_endpoint_no_longer_has_are_pruned() {
    let mut harness = stripe(true).await;
    harness.settle(NS, NAME).await;
    harness.add_stale_children(NS, NAME, "stripe-v0");
    harness.reconcile(NS, NAME).await.expect("reconcile");
    for (api_version, kind) in [
        ("v1", "ConfigMap"),
        ("v1", "Service"),
        ("networking.k8s.io/v1", "Ingress"),
        ("policy/v1", "PodDisruptionBudget"),
        ("apps/v1", "Deployment"),
        ("keda.sh/v1alpha1", "ScaledObject"),
    ] {
        assert!(
            harness
                .fake
                .get(api_version, kind, NS, "stripe-v0")
                .is_none(),
            "stale {kind} left"
        );
    }
    assert!(
        harness
            .fake
            .typed::<Deployment>(NS, "stripe-receiver")
            .is_some(),
        "current children stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_child_is_put_back() {
    let mut harness = stripe(true).await;
    harness.settle(NS, NAME).await;
    harness
        .fake
        .edit("apps/v1", "Deployment", NS, "stripe-receiver", |object| {
            object["spec"]["replicas"] = json!(7);
        });
    harness
        .fake
        .remove("policy/v1", "PodDisruptionBudget", NS, "stripe-receiver");
    harness.reconcile(NS, NAME).await.expect("reconcile");
    let receiver = harness
        .fake
        .typed::<Deployment>(NS, "stripe-receiver")
        .expect("receiver");
    assert_eq!(receiver.spec.and_then(|spec| spec.replicas), Some(2));
    assert!(
        harness
            .fake
            .typed::<PodDisruptionBudget>(NS, "stripe-receiver")
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_is_named_and_a_secret_created_later_resolves_it() {
    let mut harness = Harness::start(true).await;
    let resource = example("stripe.yaml");
    harness.fake.insert(&resource);
    harness.fake.insert(&secret(
        NS,
        "hookline-postgres",
        "url",
        "postgres://db/hookline",
    ));
    let action = harness.settle(NS, NAME).await;
    assert!(
        action != Action::await_change(),
        "a missing Secret is retried"
    );
    let resolved = harness.expect_condition(
        NS,
        NAME,
        conditions::SECRET_RESOLVED,
        "False",
        reasons::SECRET_NOT_FOUND,
    );
    assert!(
        resolved.message.contains("payments/stripe-webhook"),
        "{}",
        resolved.message
    );
    assert!(
        resolved.message.contains("spec.secretRef"),
        "{}",
        resolved.message
    );
    harness.expect_condition(
        NS,
        NAME,
        conditions::READY,
        "False",
        reasons::SECRET_NOT_FOUND,
    );
    assert!(
        harness
            .fake
            .typed::<Deployment>(NS, "stripe-receiver")
            .is_some(),
        "children are applied anyway: pods start when the Secret appears"
    );

    harness
        .fake
        .insert(&secret(NS, "stripe-webhook", "secret", "whsec_abc"));
    harness.fake.make_deployments_available();
    harness.reconcile(NS, NAME).await.expect("reconcile");
    assert_eq!(
        harness
            .condition(NS, NAME, conditions::SECRET_RESOLVED)
            .status,
        "True"
    );
    assert_eq!(
        harness.condition(NS, NAME, conditions::READY).status,
        "True"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_is_named() {
    let mut harness = Harness::start(true).await;
    harness.add_endpoint_with_secrets(&example("stripe.yaml"));
    harness
        .fake
        .insert(&secret(NS, "stripe-webhook", "other", "x"));
    harness.settle(NS, NAME).await;
    let resolved = harness.expect_condition(
        NS,
        NAME,
        conditions::SECRET_RESOLVED,
        "False",
        reasons::SECRET_KEY_MISSING,
    );
    assert!(
        resolved.message.contains("has no key \"secret\""),
        "{}",
        resolved.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_creates_a_missing_signing_secret_once_owned_by_the_endpoint() {
    let mut harness = Harness::start(true).await;
    harness.add_endpoint_with_secrets(&example("github.yaml"));
    harness.settle("default", "github").await;
    let generated = harness
        .fake
        .typed::<Secret>("default", "github-webhook")
        .expect("generated");
    let value = generated.data.as_ref().expect("data")["secret"].0.clone();
    let text = String::from_utf8(value.clone()).expect("text");
    assert_eq!(text.len(), 64, "32 random bytes as hex");
    assert!(text.chars().all(|c| c.is_ascii_hexdigit()));
    let owner = &generated.metadata.owner_references.expect("owned")[0];
    assert_eq!(owner.kind, "WebhookEndpoint");
    harness.expect_condition(
        "default",
        "github",
        conditions::SECRET_RESOLVED,
        "True",
        reasons::SECRET_GENERATED,
    );

    harness
        .reconcile("default", "github")
        .await
        .expect("reconcile");
    let again = harness
        .fake
        .typed::<Secret>("default", "github-webhook")
        .expect("secret");
    assert_eq!(
        again.data.expect("data")["secret"].0,
        value,
        "never regenerated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_secrets_are_generated_in_whsec_form_and_existing_ones_kept() {
    let mut harness = Harness::start(true).await;
    harness.add_endpoint_with_secrets(&example("standard-webhooks.yaml"));
    let resource = example("standard-webhooks.yaml");
    let namespace = resource.metadata.namespace.clone().expect("namespace");
    let name = resource.metadata.name.clone().expect("name");
    let secret_name = resource.spec.secret_ref.name.clone();
    harness.settle(&namespace, &name).await;
    let generated = harness
        .fake
        .typed::<Secret>(&namespace, &secret_name)
        .expect("generated");
    let text = String::from_utf8(generated.data.expect("data")["secret"].0.clone()).expect("text");
    assert!(text.starts_with("whsec_"), "{text}");

    let mut other = Harness::start(true).await;
    other.add_endpoint_with_secrets(&resource);
    other.fake.insert(&secret(
        &namespace,
        &secret_name,
        "secret",
        "whsec_bXluZQ==",
    ));
    other.settle(&namespace, &name).await;
    let kept = other
        .fake
        .typed::<Secret>(&namespace, &secret_name)
        .expect("secret");
    assert_eq!(
        kept.data.expect("data")["secret"].0,
        b"whsec_bXluZQ==",
        "an existing Secret is never overwritten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_spec_is_reported_with_every_bad_field_and_nothing_is_applied() {
    let mut harness = stripe(true).await;
    harness.edit_endpoint(NS, NAME, |object| {
        object["spec"]["allowedSourceRanges"] = json!(["not-a-cidr"]);
        object["spec"]["consumer"]["backoff"] = json!(["1s", "soon"]);
    });
    let action = harness.settle(NS, NAME).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let ready =
        harness.expect_condition(NS, NAME, conditions::READY, "False", reasons::INVALID_SPEC);
    assert!(
        ready.message.contains("spec.allowedSourceRanges[0]"),
        "{}",
        ready.message
    );
    assert!(
        ready.message.contains("spec.consumer.backoff[1]"),
        "{}",
        ready.message
    );
    assert_eq!(
        harness.condition(NS, NAME, conditions::STREAM_READY).status,
        "Unknown"
    );
    assert!(
        harness.fake.all("Deployment").is_empty(),
        "nothing is applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_endpoint_needs_a_database_secret() {
    let mut harness = Harness::start(true).await;
    let mut resource = example("stripe.yaml");
    resource.spec.consumer = None;
    harness.add_endpoint_with_secrets(&resource);
    harness.settle(NS, NAME).await;
    let ready = harness.condition(NS, NAME, conditions::READY);
    assert_eq!(ready.reason, reasons::INVALID_SPEC);
    assert!(
        ready.message.contains("spec.consumer.databaseSecretRef"),
        "{}",
        ready.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_is_reported_children_are_applied_and_nats_back_recovers() {
    let mut harness = stripe(true).await;
    tokio::task::block_in_place(|| harness.nats.stop());
    for _ in 0..100 {
        if harness.ctx.nats.connection_state() != async_nats::connection::State::Connected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let action = harness.settle(NS, NAME).await;
    assert!(!support::is_resync(&action), "not the slow resync");
    let stream = harness.expect_condition(
        NS,
        NAME,
        conditions::STREAM_READY,
        "False",
        reasons::NATS_UNREACHABLE,
    );
    assert!(
        stream.message.contains(&harness.nats.url()),
        "{}",
        stream.message
    );
    assert!(
        harness
            .fake
            .typed::<Deployment>(NS, "stripe-receiver")
            .is_some()
    );

    tokio::task::block_in_place(|| harness.nats.restart()).expect("nats restarts");
    support::wait_connected(&harness.ctx.nats).await;
    harness.reconcile(NS, NAME).await.expect("reconcile");
    assert_eq!(
        harness.condition(NS, NAME, conditions::STREAM_READY).status,
        "True"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keda_the_consumer_runs_at_min_replicas_and_the_endpoint_is_still_ready() {
    let mut harness = stripe(false).await;
    harness.settle(NS, NAME).await;
    assert!(harness.fake.all("ScaledObject").is_empty());
    let consumer = harness
        .fake
        .typed::<Deployment>(NS, "stripe-consumer")
        .expect("consumer");
    assert_eq!(consumer.spec.and_then(|spec| spec.replicas), Some(1));
    harness.fake.make_deployments_available();
    harness.reconcile(NS, NAME).await.expect("reconcile");
    harness.expect_condition(
        NS,
        NAME,
        conditions::SCALER_READY,
        "False",
        reasons::KEDA_NOT_INSTALLED,
    );
    assert_eq!(
        harness.condition(NS, NAME, conditions::READY).status,
        "True"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keda_the_consumer_replicas_are_left_to_keda() {
    let mut harness = stripe(true).await;
    harness.settle(NS, NAME).await;
    let consumer = harness
        .fake
        .typed::<Deployment>(NS, "stripe-consumer")
        .expect("consumer");
    assert_eq!(consumer.spec.and_then(|spec| spec.replicas), None);
    let scaler = harness
        .fake
        .typed::<ScaledObject>(NS, "stripe-consumer")
        .expect("scaler");
    assert_eq!(scaler.spec.min_replica_count, Some(1));
    assert_eq!(
        scaler.spec.triggers[0].metadata["stream"],
        "HOOKLINE_payments_stripe"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_runs_the_finalizer_and_deletes_the_stream() {
    let mut harness = stripe(true).await;
    harness.settle(NS, NAME).await;
    assert!(
        stream_info(&harness, "HOOKLINE_payments_stripe")
            .await
            .is_some()
    );
    harness.mark_deleting(NS, NAME);
    harness.reconcile(NS, NAME).await.expect("cleanup");
    assert!(
        stream_info(&harness, "HOOKLINE_payments_stripe")
            .await
            .is_none(),
        "the stream is gone"
    );
    assert!(
        harness
            .fake
            .get("hookline.io/v1alpha1", "WebhookEndpoint", NS, NAME)
            .is_none(),
        "the finalizer was removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_policy_retain_keeps_the_stream() {
    let mut harness = Harness::start(true).await;
    let mut resource = example("stripe.yaml");
    resource.spec.stream = Some(StreamSpec {
        deletion_policy: Some(DeletionPolicy::Retain),
        ..Default::default()
    });
    harness.add_endpoint_with_secrets(&resource);
    harness.settle(NS, NAME).await;
    harness.mark_deleting(NS, NAME);
    harness.reconcile(NS, NAME).await.expect("cleanup");
    assert!(
        stream_info(&harness, "HOOKLINE_payments_stripe")
            .await
            .is_some(),
        "the stream is kept"
    );
    assert!(
        harness
            .fake
            .get("hookline.io/v1alpha1", "WebhookEndpoint", NS, NAME)
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_failure_is_an_error_that_requeues_with_growing_backoff() {
    let mut harness = stripe(true).await;
    harness.settle(NS, NAME).await;
    harness.fake.fail_with(Some(500));
    let endpoint = std::sync::Arc::new(harness.endpoint(NS, NAME));
    let error = reconcile(endpoint.clone(), harness.ctx.clone())
        .await
        .expect_err("the API fails");
    let first = error_policy(endpoint.clone(), &error, harness.ctx.clone());
    let second = error_policy(endpoint, &error, harness.ctx.clone());
    assert!(
        first != second,
        "the delay grows: {first:?} then {second:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_max_payload_below_the_body_limit_is_said_in_the_condition() {
    let mut harness = stripe(true).await;
    harness.settle(NS, NAME).await;
    let stream = harness.condition(NS, NAME, conditions::STREAM_READY);
    assert_eq!(stream.status, "True");
    assert_eq!(
        stream.reason,
        reasons::MAX_PAYLOAD_TOO_SMALL,
        "nats-server's default max_payload is 1 MiB, the default maxBodyBytes too"
    );
    assert!(
        stream.message.contains("raise max_payload"),
        "{}",
        stream.message
    );

    harness.edit_endpoint(NS, NAME, |object| {
        object["spec"]["request"] = json!({"maxBodyBytes": 262144});
    });
    harness.reconcile(NS, NAME).await.expect("reconcile");
    assert_eq!(
        harness.condition(NS, NAME, conditions::STREAM_READY).reason,
        reasons::STREAM_PROVISIONED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_removed_from_the_spec_is_removed_from_the_child() {
    let mut harness = stripe(true).await;
    harness.settle(NS, NAME).await;
    let ingress = harness
        .fake
        .get("networking.k8s.io/v1", "Ingress", NS, "stripe-receiver")
        .expect("ingress");
    assert!(ingress["spec"]["tls"].is_array(), "{ingress}");
    harness.edit_endpoint(NS, NAME, |object| {
        object["spec"]["ingress"] = json!({"path": "/tls"});
        object["spec"]["receiver"] = json!({"resources": {"limits": {"memory": "300Mi"}}});
        object["metadata"]["generation"] = json!(2);
    });
    harness.reconcile(NS, NAME).await.expect("reconcile");
    let limits = |harness: &Harness| {
        harness
            .fake
            .get("apps/v1", "Deployment", NS, "stripe-receiver")
            .expect("receiver")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
            .clone()
    };
    assert_eq!(limits(&harness)["memory"], "300Mi");
    harness.edit_endpoint(NS, NAME, |object| {
        object["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("receiver");
        object["metadata"]["generation"] = json!(3);
    });
    harness.reconcile(NS, NAME).await.expect("reconcile");

    let ingress = harness
        .fake
        .get("networking.k8s.io/v1", "Ingress", NS, "stripe-receiver")
        .expect("ingress");
    assert!(
        ingress["spec"].get("tls").is_none(),
        "tls removed: {ingress}"
    );
    assert!(
        ingress["spec"]["rules"][0].get("host").is_none(),
        "host removed: {ingress}"
    );
    assert_ne!(
        limits(&harness)["memory"],
        "300Mi",
        "the endpoint's limit is gone, the default is back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_child_loses_a_field_it_no_longer_has() {
    use hookline_operator::apply::Applier;
    use hookline_operator::build::{self, Cluster};

    let mut harness = stripe(true).await;
    harness.settle(NS, NAME).await;
    let endpoint = harness.endpoint(NS, NAME);
    let valid = hookline_operator::validate::validate(&endpoint).expect("valid");
    let uid = endpoint.metadata.uid.clone().expect("uid");
    let children = build::build(&valid, &harness.ctx.config, Cluster { keda: true });
    let mut with_extra = children.clone();
    let own = with_extra.workload.as_mut().expect("own pods");
    for meta in [
        &mut own.config_map.metadata,
        &mut own.receiver.metadata,
        &mut own.service.metadata,
        &mut with_extra.ingress.as_mut().expect("ingress").metadata,
        &mut own.disruption_budget.metadata,
        &mut own.consumer.metadata,
        &mut own.scaler.as_mut().expect("scaler").metadata,
    ] {
        meta.labels
            .get_or_insert_with(Default::default)
            .insert("test.hookline.io/extra".into(), "yes".into());
    }
    for (children, expected) in [(with_extra, true), (children, false)] {
        harness.fake.sync(&mut harness.writers);
        let applied = Applier {
            client: &harness.ctx.client,
            stores: &harness.ctx.stores,
            metrics: &harness.metrics,
            namespace: NS,
            owner_uid: &uid,
        }
        .apply(children)
        .await;
        assert!(applied.failures.is_empty(), "{:?}", applied.failures);
        for (api_version, kind, name) in [
            ("v1", "ConfigMap", "stripe-endpoint"),
            ("apps/v1", "Deployment", "stripe-receiver"),
            ("v1", "Service", "stripe-receiver"),
            ("networking.k8s.io/v1", "Ingress", "stripe-receiver"),
            ("policy/v1", "PodDisruptionBudget", "stripe-receiver"),
            ("apps/v1", "Deployment", "stripe-consumer"),
            ("keda.sh/v1alpha1", "ScaledObject", "stripe-consumer"),
        ] {
            let object = harness
                .fake
                .get(api_version, kind, NS, name)
                .unwrap_or_else(|| panic!("{kind} {name}"));
            assert_eq!(
                object["metadata"]["labels"]
                    .get("test.hookline.io/extra")
                    .is_some(),
                expected,
                "{kind} {name}: {}",
                object["metadata"]["labels"]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canonical_quantities_on_the_server_are_no_change() {
    let resources: k8s_openapi::api::core::v1::ResourceRequirements =
        serde_json::from_value(json!({"requests": {"cpu": "0.7", "memory": "0.5Gi"}}))
            .expect("resources");
    let mut harness = Harness::start_with(true, |config| {
        config.receiver_resources = resources;
    })
    .await;
    harness.add_endpoint_with_secrets(&example("stripe.yaml"));
    harness.settle(NS, NAME).await;
    harness
        .fake
        .edit("apps/v1", "Deployment", NS, "stripe-receiver", |object| {
            object["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"] =
                json!({"cpu": "700m", "memory": "512Mi"});
        });
    harness.fake.make_deployments_available();
    harness.reconcile(NS, NAME).await.expect("reconcile");
    harness.fake.clear_calls();
    for _ in 0..3 {
        harness.reconcile(NS, NAME).await.expect("reconcile");
    }
    let writes = harness.fake.writes();
    assert!(writes.is_empty(), "no write in a steady state: {writes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_map_to_the_same_label_get_children_of_their_own() {
    let mut harness = Harness::start(true).await;
    let mut names = Vec::new();
    for name in ["stripe.eu", "stripe-eu"] {
        let mut resource = example("stripe.yaml");
        resource.metadata.name = Some(name.into());
        resource.spec.ingress = None;
        harness.add_endpoint_with_secrets(&resource);
        names.push(name);
    }
    for name in &names {
        harness.settle(NS, name).await;
    }
    harness.fake.make_deployments_available();
    for name in &names {
        harness.reconcile(NS, name).await.expect("reconcile");
        harness.expect_condition(NS, name, conditions::READY, "True", reasons::RECONCILED);
    }
    let receivers: Vec<String> = harness
        .fake
        .all("Deployment")
        .iter()
        .map(|object| {
            object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .filter(|name| name.ends_with("-receiver"))
        .collect();
    assert_eq!(receivers.len(), 2, "{receivers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_of_the_same_name_that_is_not_the_endpoints_is_never_taken() {
    let mut harness = stripe(true).await;
    harness.fake.insert(&json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "stripe-endpoint", "namespace": NS},
        "data": {"mine": "yes"},
    }));
    harness.settle(NS, NAME).await;
    let ready =
        harness.expect_condition(NS, NAME, conditions::READY, "False", reasons::NAME_CONFLICT);
    assert!(
        ready.message.contains("ConfigMap payments/stripe-endpoint"),
        "{}",
        ready.message
    );
    let theirs = harness
        .fake
        .get("v1", "ConfigMap", NS, "stripe-endpoint")
        .expect("config map");
    assert_eq!(theirs["data"], json!({"mine": "yes"}), "left alone");
    assert!(theirs["metadata"].get("ownerReferences").is_none());
    assert!(
        harness
            .fake
            .typed::<Deployment>(NS, "stripe-receiver")
            .is_some(),
        "the other children are applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_child_is_said_in_the_status_and_the_rest_is_applied() {
    let mut harness = stripe(true).await;
    harness.settle(NS, NAME).await;
    harness.fake.make_deployments_available();
    harness.reconcile(NS, NAME).await.expect("reconcile");
    harness.expect_condition(NS, NAME, conditions::READY, "True", reasons::RECONCILED);

    let refusal = "admission webhook \"validate.nginx.ingress.kubernetes.io\" denied the request: path /tls is invalid";
    harness.fake.refuse("ingresses", Some(refusal));
    harness.edit_endpoint(NS, NAME, |object| {
        object["spec"]["ingress"]["path"] = json!("/tls");
        object["spec"]["receiver"] = json!({"replicas": 3});
        object["metadata"]["generation"] = json!(2);
    });
    let action = harness.reconcile(NS, NAME).await.expect("reconcile");
    assert!(!support::is_resync(&action), "retried sooner: {action:?}");
    let ready =
        harness.expect_condition(NS, NAME, conditions::READY, "False", reasons::APPLY_FAILED);
    assert!(
        ready.message.contains(refusal)
            && ready.message.contains("Ingress payments/stripe-receiver"),
        "{}",
        ready.message
    );
    let receiver = harness
        .fake
        .typed::<Deployment>(NS, "stripe-receiver")
        .expect("receiver");
    assert_eq!(
        receiver.spec.and_then(|spec| spec.replicas),
        Some(3),
        "the children after the refused one are applied"
    );
    let warnings: Vec<Value> = harness
        .events()
        .into_iter()
        .filter(|event| event["reason"] == reasons::APPLY_FAILED)
        .collect();
    assert_eq!(warnings.len(), 1, "one Warning Event");
    assert_eq!(warnings[0]["type"], "Warning");

    harness.fake.refuse("ingresses", None);
    harness.fake.make_deployments_available();
    harness.reconcile(NS, NAME).await.expect("reconcile");
    harness.expect_condition(NS, NAME, conditions::READY, "True", reasons::RECONCILED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffers_fill_and_cap_are_in_the_status_and_the_metrics() {
    let mut harness = stripe(true).await;
    harness.settle(NS, NAME).await;
    let status = harness.endpoint(NS, NAME).status.expect("status");
    assert_eq!(status.stream_bytes, Some(0));
    assert_eq!(
        status.stream_limit_bytes,
        Some(512 * 1024 * 1024),
        "the cap the receiver enforces, reserved nowhere"
    );

    jetstream::new(harness.ctx.nats.clone())
        .publish("hookline.payments.stripe.event", "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    harness.reconcile(NS, NAME).await.expect("reconcile");
    let label = hookline_operator::metrics::EndpointLabel {
        endpoint: format!("{NS}/{NAME}"),
    };
    let metrics = &harness.metrics;
    assert!(metrics.endpoint_stream_bytes.get_or_create(&label).get() > 0);
    assert_eq!(
        metrics
            .endpoint_stream_limit_bytes
            .get_or_create(&label)
            .get(),
        512 * 1024 * 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_figures_of_a_busy_endpoint_are_written_at_most_once_per_resync() {
    let mut harness = stripe(true).await;
    harness.settle(NS, NAME).await;
    harness.fake.make_deployments_available();
    harness.reconcile(NS, NAME).await.expect("reconcile");
    let js = jetstream::new(harness.ctx.nats.clone());
    harness.fake.clear_calls();
    for round in 0..5 {
        js.publish(
            format!("hookline.payments.stripe.event_{round}"),
            "{}".into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
        harness.reconcile(NS, NAME).await.expect("reconcile");
    }
    assert_eq!(
        harness.status_writes(),
        0,
        "figures written less than a resync ago are not written again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_owned_by_another_endpoint_is_neither_changed_nor_deleted() {
    use hookline_api::provision::{self, StreamOwner};

    let mut harness = stripe(true).await;
    let endpoint = harness.endpoint(NS, NAME);
    let valid = hookline_operator::validate::validate(&endpoint).expect("valid");
    let js = jetstream::new(harness.ctx.nats.clone());
    let other_cluster = StreamOwner::new("uid-in-another-cluster", NS, NAME);
    provision::ensure(&js, &valid.endpoint, Some(&other_cluster), &mut None)
        .await
        .expect("the other cluster's stream");
    harness.settle(NS, NAME).await;
    let stream = harness.expect_condition(
        NS,
        NAME,
        conditions::STREAM_READY,
        "False",
        reasons::STREAM_OWNED_ELSEWHERE,
    );
    assert!(
        stream.message.contains("uid-in-another-cluster"),
        "{}",
        stream.message
    );
    harness.mark_deleting(NS, NAME);
    harness.reconcile(NS, NAME).await.expect("cleanup");
    let info = stream_info(&harness, "HOOKLINE_payments_stripe")
        .await
        .expect("the other cluster's stream is still there");
    assert_eq!(
        info.config
            .metadata
            .get(provision::OWNER_UID_KEY)
            .map(String::as_str),
        Some("uid-in-another-cluster")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_endpoint_costs_one_jetstream_call_per_resync() {
    use futures::StreamExt;

    let mut harness = stripe(true).await;
    harness.settle(NS, NAME).await;
    harness.fake.make_deployments_available();
    harness.reconcile(NS, NAME).await.expect("reconcile");
    let watcher = hookline_api::nats::connect(&harness.nats.url(), &Default::default(), "count")
        .await
        .expect("NATS");
    support::wait_connected(&watcher).await;
    let mut calls = watcher.subscribe("$JS.API.>").await.expect("subscribe");
    watcher.flush().await.expect("flush");
    let before = support::answered_jetstream_calls(&harness.nats.monitor_url()).await;
    for _ in 0..3 {
        harness.reconcile(NS, NAME).await.expect("reconcile");
    }
    // nats-server's own count is exact once the calls are answered; the
    // subscriber says which they were, when it sees them in time.
    let made = support::answered_jetstream_calls(&harness.nats.monitor_url()).await - before;
    assert_eq!(made, 3, "one JetStream call per reconcile");
    let mut subjects = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), calls.next()).await
    {
        subjects.push(message.subject.to_string());
    }
    assert!(
        subjects
            .iter()
            .all(|subject| subject == "$JS.API.STREAM.INFO.HOOKLINE_payments_stripe"),
        "only STREAM.INFO of the endpoint's stream: {subjects:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_cluster_makes_streams_and_pods_with_its_name() {
    let mut harness = Harness::start_with(true, |config| {
        config.nats.cluster_name = Some("eu1".into());
    })
    .await;
    harness.add_endpoint_with_secrets(&example("stripe.yaml"));
    harness.settle(NS, NAME).await;
    let info = stream_info(&harness, "HOOKLINE-eu1_payments_stripe")
        .await
        .expect("the cluster's own stream");
    assert_eq!(info.config.subjects, vec!["hookline-eu1.payments.stripe.>"]);
    assert!(
        stream_info(&harness, "HOOKLINE_payments_stripe")
            .await
            .is_none()
    );
    for name in ["stripe-receiver", "stripe-consumer"] {
        let deployment = harness
            .fake
            .get("apps/v1", "Deployment", NS, name)
            .expect("deployment");
        let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
        assert!(
            env.as_array().is_some_and(|all| all
                .iter()
                .any(|var| var["name"] == "HOOKLINE_CLUSTER_NAME" && var["value"] == "eu1")),
            "{name}: {env}"
        );
    }
    let scaler = harness
        .fake
        .get("keda.sh/v1alpha1", "ScaledObject", NS, "stripe-consumer")
        .expect("scaler");
    assert_eq!(
        scaler["spec"]["triggers"][0]["metadata"]["stream"],
        "HOOKLINE-eu1_payments_stripe"
    );
    assert_eq!(
        harness
            .endpoint(NS, NAME)
            .status
            .and_then(|status| status.stream)
            .as_deref(),
        Some("HOOKLINE-eu1_payments_stripe")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_reconcile_reads_no_secret_and_a_changed_secret_is_read_again() {
    let mut harness = stripe(true).await;
    harness.settle(NS, NAME).await;
    harness.fake.clear_calls();
    harness.reconcile(NS, NAME).await.expect("reconcile");
    let secret_reads = |harness: &Harness| {
        harness
            .fake
            .calls()
            .iter()
            .filter(|call| call.resource == "secrets")
            .count()
    };
    assert_eq!(secret_reads(&harness), 0, "key names known at this version");

    // The key is renamed: the new version is read, and the missing key said.
    harness
        .fake
        .edit("v1", "Secret", NS, "stripe-webhook", |object| {
            object["data"] = json!({"other": "eA=="});
        });
    harness.reconcile(NS, NAME).await.expect("reconcile");
    assert_eq!(secret_reads(&harness), 1);
    harness.expect_condition(
        NS,
        NAME,
        conditions::SECRET_RESOLVED,
        "False",
        reasons::SECRET_KEY_MISSING,
    );
}

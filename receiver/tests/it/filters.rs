//! `spec.event.accept` and `ignore`, per provider (each finds the type its
//! own way): an accepted type is stored, a left-out one is answered 200
//! `ignored`, counted by type and never published; a forged request is
//! still 401.

use crate::common;

use common::*;

/// Posts a stored and an ignored event, both correctly signed, and checks
/// the answers, the stream and the count of the ignored type.
async fn one_stored_one_ignored(
    receiver: &Receiver,
    provider: &str,
    stored: (Headers, Vec<u8>),
    ignored: (Headers, Vec<u8>),
    ignored_type: &str,
) {
    let response = receiver.post(&stored.0, &stored.1).await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(answer["status"], "stored", "{answer}");

    let response = receiver.post(&ignored.0, &ignored.1).await;
    assert_eq!(response.status(), 200, "the provider must stop retrying");
    let answer: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(answer["status"], "ignored", "{answer}");
    assert_eq!(answer["eventType"], ignored_type);

    assert_eq!(receiver.messages().await.len(), 1, "only the accepted type");
    let metrics = receiver.metrics().await;
    for line in [
        format!(
            r#"hookline_receiver_ignored_events_total{{provider="{provider}",event_type="{ignored_type}"}} 1"#
        ),
        format!(r#"hookline_receiver_requests_total{{provider="{provider}",outcome="ignored"}} 1"#),
    ] {
        assert!(metrics.contains(&line), "{line} not in {metrics}");
    }
}

const STRIPE_SECRET: &str = "whsec_test_secret";

fn stripe_event(event_type: &str) -> (Headers, Vec<u8>) {
    let body = format!(
        r#"{{"id":"evt_{}","type":"{event_type}","created":1700000000,"data":{{"object":{{"id":"in_1"}}}}}}"#,
        event_type.replace('.', "_")
    )
    .into_bytes();
    (stripe(STRIPE_SECRET, &body, now()), body)
}

#[tokio::test(flavor = "multi_thread")]
async fn stripe_stores_accepted_types_and_ignores_the_rest() {
    let receiver = Receiver::start(
        &manifest(
            "stripe",
            "  event:\n    accept: [\"invoice.*\"]\n    ignore: [\"*.deleted\"]\n",
        ),
        STRIPE_SECRET,
    )
    .await;
    one_stored_one_ignored(
        &receiver,
        "stripe",
        stripe_event("invoice.paid"),
        stripe_event("customer.created"),
        "customer.created",
    )
    .await;
    // `ignore` wins over `accept`.
    let (headers, body) = stripe_event("invoice.deleted");
    let answer: serde_json::Value = receiver
        .post(&headers, &body)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["status"], "ignored");
    assert_eq!(receiver.messages().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_request_of_an_ignored_type_is_still_401() {
    let receiver = Receiver::start(
        &manifest("stripe", "  event:\n    ignore: [\"customer.*\"]\n"),
        STRIPE_SECRET,
    )
    .await;
    let (_, body) = stripe_event("customer.created");
    let forged = stripe("not the secret", &body, now());
    assert_eq!(receiver.post(&forged, &body).await.status(), 401);
    assert!(!receiver.metrics().await.contains("ignored_events_total{"));
}

const GITHUB_SECRET: &str = "It's a Secret to Everybody";

#[tokio::test(flavor = "multi_thread")]
async fn github_filters_on_the_event_header() {
    let receiver = Receiver::start(
        &manifest(
            "github",
            "  event:\n    accept: [issues, \"pull_request*\"]\n",
        ),
        GITHUB_SECRET,
    )
    .await;
    let body = br#"{"action":"opened"}"#.to_vec();
    let star = br#"{"action":"created"}"#.to_vec();
    one_stored_one_ignored(
        &receiver,
        "github",
        (github(GITHUB_SECRET, &body, "d-1", "issues"), body.clone()),
        (github(GITHUB_SECRET, &star, "d-2", "star"), star.clone()),
        "star",
    )
    .await;
}

const SHOPIFY_SECRET: &str = "shpss_0123456789abcdef";

#[tokio::test(flavor = "multi_thread")]
async fn shopify_filters_on_the_topic_header() {
    let receiver = Receiver::start(
        &manifest("shopify", "  event:\n    ignore: [\"customers/*\"]\n"),
        SHOPIFY_SECRET,
    )
    .await;
    let order = br#"{"id":1,"total_price":"10.00"}"#.to_vec();
    let customer = br#"{"id":2,"email":"jon@example.com"}"#.to_vec();
    one_stored_one_ignored(
        &receiver,
        "shopify",
        (
            shopify(SHOPIFY_SECRET, &order, "w-1", "orders/create"),
            order.clone(),
        ),
        (
            shopify(SHOPIFY_SECRET, &customer, "w-2", "customers/update"),
            customer.clone(),
        ),
        "customers/update",
    )
    .await;
}

const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

fn slack_event(id: &str, event_type: &str) -> (Headers, Vec<u8>) {
    let body = format!(
        r#"{{"type":"event_callback","event_id":"{id}","event_time":1700000000,"event":{{"type":"{event_type}","text":"hi"}}}}"#
    )
    .into_bytes();
    (slack(SLACK_SECRET, &body, now()), body)
}

#[tokio::test(flavor = "multi_thread")]
async fn slack_filters_on_the_inner_event_type_and_still_answers_its_challenge() {
    let receiver = Receiver::start(
        &manifest("slack", "  event:\n    accept: [app_mention]\n"),
        SLACK_SECRET,
    )
    .await;
    one_stored_one_ignored(
        &receiver,
        "slack",
        slack_event("Ev1", "app_mention"),
        slack_event("Ev2", "message"),
        "message",
    )
    .await;
    let body = br#"{"type":"url_verification","challenge":"c-1"}"#.to_vec();
    let response = receiver
        .post(&slack(SLACK_SECRET, &body, now()), &body)
        .await;
    let answer: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(answer, serde_json::json!({"challenge": "c-1"}));
}

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn standard_webhooks_event(id: &str, event_type: &str) -> (Headers, Vec<u8>) {
    let body = format!(
        r#"{{"type":"{event_type}","timestamp":"2024-01-02T03:04:05Z","data":{{"id":"ord_1"}}}}"#
    )
    .into_bytes();
    (standard_webhooks(SW_SECRET, &body, id, now()), body)
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_webhooks_filters_on_the_body_type() {
    let receiver = Receiver::start(
        &manifest("standardWebhooks", "  event:\n    accept: [\"order.*\"]\n"),
        SW_SECRET,
    )
    .await;
    one_stored_one_ignored(
        &receiver,
        "standardWebhooks",
        standard_webhooks_event("msg_1", "order.created"),
        standard_webhooks_event("msg_2", "invoice.created"),
        "invoice.created",
    )
    .await;
}

const GENERIC_SECRET: &str = "partner-shared-secret";

fn generic_event(id: &str, event_type: &str) -> (Headers, Vec<u8>) {
    let body = format!(r#"{{"id":"{id}","type":"{event_type}"}}"#).into_bytes();
    (generic(GENERIC_SECRET, &body, now()), body)
}

#[tokio::test(flavor = "multi_thread")]
async fn generic_filters_on_the_configured_type() {
    let manifest = example("generic.yaml").replace(
        "    objectId: json:/object/id\n",
        "    objectId: json:/object/id\n    ignore: [\"test.*\"]\n",
    );
    assert!(manifest.contains("ignore:"), "the example changed");
    let receiver = Receiver::start(&manifest, GENERIC_SECRET).await;
    one_stored_one_ignored(
        &receiver,
        "generic",
        generic_event("p-1", "shipment.delivered"),
        generic_event("p-2", "test.ping"),
        "test.ping",
    )
    .await;
}

//! Each provider: a valid request is stored exactly once with the right subject
//! and headers; a tampered body, a wrong secret, a missing signature header and
//! a stale or future timestamp are 401 and store nothing.

use crate::common;

use common::*;

/// What a stored message header must be.
enum Want {
    Is(&'static str),
    Present,
    Absent,
}

/// Signs `body` at `ts`, with the right key when the flag is set.
type Signer = Box<dyn Fn(bool, &[u8], i64) -> Headers>;

struct Case {
    manifest: String,
    /// The secret file.
    secrets: String,
    body: Vec<u8>,
    sign: Signer,
    signature_header: &'static str,
    timestamped: bool,
    subject: &'static str,
    event_id: &'static str,
    headers: Vec<(&'static str, Want)>,
}

async fn valid_request_is_stored_once(case: Case) {
    let receiver = Receiver::start(&case.manifest, &case.secrets).await;
    let headers = (case.sign)(true, &case.body, now());
    let response = receiver.post(&headers, &case.body).await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.expect("JSON answer");
    assert_eq!(answer["eventId"], case.event_id);
    assert_eq!(answer["duplicate"], false);

    let messages = receiver.messages().await;
    assert_eq!(messages.len(), 1, "exactly one message stored");
    let message = &messages[0];
    assert_eq!(message.subject.as_str(), case.subject);
    assert_eq!(
        message.payload.as_ref(),
        case.body.as_slice(),
        "raw body kept"
    );
    assert_eq!(header(message, "Nats-Msg-Id"), Some(case.event_id));
    assert_eq!(header(message, "Hookline-Event-Id"), Some(case.event_id));
    assert!(header(message, "Hookline-Received-At").is_some());
    let signature_copy = format!("Hookline-Http-{}", case.signature_header);
    assert!(
        message
            .headers
            .iter()
            .all(|(name, _)| !AsRef::<str>::as_ref(name).eq_ignore_ascii_case(&signature_copy)),
        "the signature header is not forwarded"
    );
    for (name, want) in &case.headers {
        let found = header(message, name);
        match want {
            Want::Is(value) => assert_eq!(found, Some(*value), "header {name}"),
            Want::Present => assert!(found.is_some(), "header {name} present"),
            Want::Absent => assert_eq!(found, None, "header {name} absent"),
        }
    }
}

async fn bad_signatures_are_401_and_store_nothing(case: Case) {
    let receiver = Receiver::start(&case.manifest, &case.secrets).await;
    let body = &case.body;
    let mut attempts: Vec<(&str, Headers, Vec<u8>)> = Vec::new();

    let mut tampered = body.clone();
    let last = tampered.len() - 2;
    tampered[last] ^= 0x01;
    attempts.push(("tampered body", (case.sign)(true, body, now()), tampered));
    attempts.push((
        "wrong secret",
        (case.sign)(false, body, now()),
        body.clone(),
    ));
    let missing: Headers = (case.sign)(true, body, now())
        .into_iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case(case.signature_header))
        .collect();
    attempts.push(("missing signature header", missing, body.clone()));
    if case.timestamped {
        attempts.push((
            "stale timestamp",
            (case.sign)(true, body, now() - 600),
            body.clone(),
        ));
        attempts.push((
            "future timestamp",
            (case.sign)(true, body, now() + 600),
            body.clone(),
        ));
    }

    for (what, headers, body) in attempts {
        let response = receiver.post(&headers, &body).await;
        assert_eq!(response.status(), 401, "{what}");
        let text = response.text().await.expect("body");
        let answer: serde_json::Value = serde_json::from_str(&text).expect("JSON error body");
        assert_eq!(answer["error"], "unauthorized", "{what}");
        for line in case.secrets.lines().filter(|line| !line.is_empty()) {
            assert!(!text.contains(line), "{what}: the secret is not echoed");
        }
    }
    assert!(receiver.messages().await.is_empty(), "nothing stored");
}

// ---- the cases ----

const STRIPE_SECRET: &str = "whsec_test_5Kp1n0tAr3alS3cr3t";

fn stripe_case() -> Case {
    Case {
        manifest: example("stripe.yaml"),
        secrets: format!("{STRIPE_SECRET}\n"),
        body: br#"{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","type":"invoice.paid","created":1700000000,"data":{"object":{"id":"in_1NG8Du2eZvKYlo2C","object":"invoice"}}}"#.to_vec(),
        sign: Box::new(|right, body, ts| {
            stripe(if right { STRIPE_SECRET } else { "whsec_someone_else" }, body, ts)
        }),
        signature_header: "Stripe-Signature",
        timestamped: true,
        subject: "hookline.payments.stripe.invoice_paid",
        event_id: "evt_1NG8Du2eZvKYlo2CUI79vXWy",
        headers: vec![
            ("Hookline-Event-Type", Want::Is("invoice.paid")),
            ("Hookline-Event-Timestamp", Want::Is("2023-11-14T22:13:20Z")),
            ("Hookline-Object-Id", Want::Is("in_1NG8Du2eZvKYlo2C")),
            ("Hookline-Endpoint", Want::Is("payments/stripe")),
            ("Hookline-Provider", Want::Is("stripe")),
            ("Hookline-Id-Source", Want::Is("provider")),
            ("Hookline-Content-Type", Want::Is("application/json; charset=utf-8")),
            ("Hookline-Http-User-Agent", Want::Is("Stripe/1.0 (+https://stripe.com/docs/webhooks)")),
            ("Hookline-Http-Stripe-Signature", Want::Absent),
        ],
    }
}

const GITHUB_SECRET: &str = "It's a Secret to Everybody";

fn github_case() -> Case {
    Case {
        manifest: example("github.yaml"),
        secrets: format!("{GITHUB_SECRET}\n"),
        body: br#"{"action":"opened","issue":{"id":1,"number":1347},"repository":{"full_name":"octocat/Hello-World"}}"#.to_vec(),
        sign: Box::new(|right, body, _| {
            github(
                if right { GITHUB_SECRET } else { "not the secret" },
                body,
                "72d3162e-cc78-11e3-81ab-4c9367dc0958",
                "issues",
            )
        }),
        signature_header: "X-Hub-Signature-256",
        timestamped: false,
        subject: "hookline.default.github.issues",
        event_id: "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        headers: vec![
            ("Hookline-Event-Type", Want::Is("issues")),
            ("Hookline-Event-Timestamp", Want::Absent),
            ("Hookline-Object-Id", Want::Absent),
            ("Hookline-Endpoint", Want::Is("default/github")),
            ("Hookline-Provider", Want::Is("github")),
            ("Hookline-Http-X-Github-Delivery", Want::Is("72d3162e-cc78-11e3-81ab-4c9367dc0958")),
            ("Hookline-Http-User-Agent", Want::Is("GitHub-Hookshot/abc123")),
        ],
    }
}

const SHOPIFY_SECRET: &str = "shpss_0123456789abcdef";

fn shopify_case() -> Case {
    Case {
        manifest: example("shopify.yaml"),
        secrets: format!("{SHOPIFY_SECRET}\n"),
        body: br#"{"id":820982911946154508,"email":"jon@example.com","total_price":"10.00"}"#
            .to_vec(),
        sign: Box::new(|right, body, _| {
            shopify(
                if right { SHOPIFY_SECRET } else { "shpss_other" },
                body,
                "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
                "orders/create",
            )
        }),
        signature_header: "X-Shopify-Hmac-Sha256",
        timestamped: false,
        subject: "hookline.shop.shopify.orders_create",
        event_id: "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        headers: vec![
            ("Hookline-Event-Type", Want::Is("orders/create")),
            (
                "Hookline-Event-Timestamp",
                Want::Is("2023-03-29T18:00:27.877041743Z"),
            ),
            ("Hookline-Object-Id", Want::Is("820982911946154508")),
            ("Hookline-Endpoint", Want::Is("shop/shopify")),
            ("Hookline-Provider", Want::Is("shopify")),
        ],
    }
}

const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

fn slack_case() -> Case {
    Case {
        manifest: example("slack.yaml"),
        secrets: format!("{SLACK_SECRET}\n"),
        body: br#"{"token":"z26uFbvR1xHJEdHE1OQiO6t8","team_id":"T061EG9RZ","type":"event_callback","event_id":"Ev0PV52K21","event_time":1700000000,"event":{"type":"app_mention","user":"U061F7AUR","text":"hi"}}"#.to_vec(),
        sign: Box::new(|right, body, ts| {
            slack(if right { SLACK_SECRET } else { "0000aaaa" }, body, ts)
        }),
        signature_header: "X-Slack-Signature",
        timestamped: true,
        subject: "hookline.default.slack.app_mention",
        event_id: "Ev0PV52K21",
        headers: vec![
            ("Hookline-Event-Type", Want::Is("app_mention")),
            ("Hookline-Event-Timestamp", Want::Is("2023-11-14T22:13:20Z")),
            ("Hookline-Object-Id", Want::Absent),
            ("Hookline-Provider", Want::Is("slack")),
            ("Hookline-Http-X-Slack-Request-Timestamp", Want::Present),
        ],
    }
}

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_OTHER: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn standard_webhooks_case() -> Case {
    Case {
        manifest: example("standard-webhooks.yaml"),
        secrets: format!("{SW_SECRET}\n"),
        body:
            br#"{"type":"order.created","timestamp":"2024-01-02T03:04:05Z","data":{"id":"ord_1"}}"#
                .to_vec(),
        sign: Box::new(|right, body, ts| {
            standard_webhooks(
                if right { SW_SECRET } else { SW_OTHER },
                body,
                "msg_2KWPBgLlAfxdpx2AI54pPJ85f1W",
                ts,
            )
        }),
        signature_header: "webhook-signature",
        timestamped: true,
        subject: "hookline.default.orders.order_created",
        event_id: "msg_2KWPBgLlAfxdpx2AI54pPJ85f1W",
        headers: vec![
            ("Hookline-Event-Type", Want::Is("order.created")),
            ("Hookline-Event-Timestamp", Want::Present),
            ("Hookline-Object-Id", Want::Is("ord_1")),
            ("Hookline-Endpoint", Want::Is("default/orders")),
            ("Hookline-Provider", Want::Is("standardWebhooks")),
        ],
    }
}

const SEED: [u8; 32] = [7; 32];
const OTHER_SEED: [u8; 32] = [9; 32];

fn standard_webhooks_ed25519_case() -> Case {
    Case {
        secrets: format!("{}\n", whpk(SEED)),
        sign: Box::new(|right, body, ts| {
            standard_webhooks_ed25519(
                if right { SEED } else { OTHER_SEED },
                body,
                "msg_ed25519_1",
                ts,
            )
        }),
        event_id: "msg_ed25519_1",
        ..standard_webhooks_case()
    }
}

const GENERIC_SECRET: &str = "partner-shared-secret";

fn generic_case() -> Case {
    Case {
        manifest: example("generic.yaml"),
        secrets: format!("{GENERIC_SECRET}\n"),
        body: br#"{"id":"p-1","type":"shipment.delivered","occurred_at":"2024-01-02T03:04:05+01:00","object":{"id":"shp_9"}}"#.to_vec(),
        sign: Box::new(|right, body, ts| {
            generic(if right { GENERIC_SECRET } else { "guess" }, body, ts)
        }),
        signature_header: "X-Signature",
        timestamped: true,
        subject: "hookline.default.partner.shipment_delivered",
        event_id: "p-1",
        headers: vec![
            ("Hookline-Event-Type", Want::Is("shipment.delivered")),
            ("Hookline-Event-Timestamp", Want::Is("2024-01-02T02:04:05Z")),
            ("Hookline-Object-Id", Want::Is("shp_9")),
            ("Hookline-Endpoint", Want::Is("default/partner")),
            ("Hookline-Provider", Want::Is("generic")),
        ],
    }
}

// ---- one test per provider and behaviour ----

#[tokio::test(flavor = "multi_thread")]
async fn stripe_valid_request_is_stored_once() {
    valid_request_is_stored_once(stripe_case()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stripe_bad_signatures_are_401_and_store_nothing() {
    bad_signatures_are_401_and_store_nothing(stripe_case()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn github_valid_request_is_stored_once() {
    valid_request_is_stored_once(github_case()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn github_bad_signatures_are_401_and_store_nothing() {
    bad_signatures_are_401_and_store_nothing(github_case()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shopify_valid_request_is_stored_once() {
    valid_request_is_stored_once(shopify_case()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shopify_bad_signatures_are_401_and_store_nothing() {
    bad_signatures_are_401_and_store_nothing(shopify_case()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slack_valid_request_is_stored_once() {
    valid_request_is_stored_once(slack_case()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slack_bad_signatures_are_401_and_store_nothing() {
    bad_signatures_are_401_and_store_nothing(slack_case()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_webhooks_valid_request_is_stored_once() {
    valid_request_is_stored_once(standard_webhooks_case()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_webhooks_bad_signatures_are_401_and_store_nothing() {
    bad_signatures_are_401_and_store_nothing(standard_webhooks_case()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_webhooks_ed25519_valid_request_is_stored_once() {
    valid_request_is_stored_once(standard_webhooks_ed25519_case()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_webhooks_ed25519_bad_signatures_are_401_and_store_nothing() {
    bad_signatures_are_401_and_store_nothing(standard_webhooks_ed25519_case()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn generic_valid_request_is_stored_once() {
    valid_request_is_stored_once(generic_case()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn generic_bad_signatures_are_401_and_store_nothing() {
    bad_signatures_are_401_and_store_nothing(generic_case()).await;
}

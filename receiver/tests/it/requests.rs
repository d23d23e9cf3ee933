//! The request pipeline beyond signatures: duplicates, size, JSON, media type,
//! schema, source address, the order of the checks, secret rotation, Slack's
//! challenge, and the health and metrics routes.

use crate::common;

use std::time::Duration;

use common::*;

const SECRET: &str = "It's a Secret to Everybody";

fn github_body(n: u32) -> Vec<u8> {
    format!(r#"{{"action":"opened","issue":{{"id":{n}}}}}"#).into_bytes()
}

fn github_signed(secret: &str, body: &[u8], delivery: &str) -> Headers {
    github(secret, body, delivery, "issues")
}

/// A GitHub endpoint with a small body limit and a schema.
fn github_manifest() -> String {
    manifest(
        "github",
        "  request:\n    maxBodyBytes: 200\n    schema:\n      type: object\n      required: [action]\n      properties:\n        action: {type: string}\n        issue:\n          type: object\n          properties:\n            id: {type: integer}\n",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_delivery_is_200_and_stored_once() {
    let receiver = Receiver::start(&github_manifest(), SECRET).await;
    let body = github_body(1);
    let headers = github_signed(SECRET, &body, "delivery-1");
    let first = receiver.post(&headers, &body).await;
    assert_eq!(first.status(), 200);
    let second = receiver.post(&headers, &body).await;
    assert_eq!(second.status(), 200);
    let answer: serde_json::Value = second.json().await.expect("JSON");
    assert_eq!(answer["eventId"], "delivery-1");
    assert_eq!(answer["duplicate"], true);
    assert_eq!(receiver.messages().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn body_over_the_limit_is_413() {
    let receiver = Receiver::start(&github_manifest(), SECRET).await;
    let body = format!(r#"{{"action":"{}"}}"#, "x".repeat(300)).into_bytes();
    let headers = github_signed(SECRET, &body, "big-1");
    assert_eq!(receiver.post(&headers, &body).await.status(), 413);

    // Without a Content-Length (chunked), the stream is cut at the limit too.
    let frames: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>> = body
        .chunks(64)
        .map(|chunk| {
            Ok(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(
                chunk,
            )))
        })
        .collect();
    let stream = http_body_util::StreamBody::new(futures::stream::iter(frames));
    let mut request = receiver
        .http
        .post(format!("{}{}", receiver.base, receiver.path))
        .body(reqwest::Body::wrap(stream));
    for (name, value) in &headers {
        request = request.header(name, value);
    }
    let response = request.send().await.expect("sent");
    assert_eq!(response.status(), 413);
    assert!(receiver.messages().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_body_that_is_not_json_is_400() {
    let receiver = Receiver::start(&github_manifest(), SECRET).await;
    let body = b"{not json".to_vec();
    let response = receiver
        .post(&github_signed(SECRET, &body, "bad-json"), &body)
        .await;
    assert_eq!(response.status(), 400);
    let answer: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(answer["error"], "invalid_json");
    assert!(receiver.messages().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn form_encoded_body_is_415() {
    let receiver = Receiver::start(&github_manifest(), SECRET).await;
    let body = b"payload=%7B%22action%22%3A%22opened%22%7D".to_vec();
    let mut headers = github_signed(SECRET, &body, "form-1");
    headers.retain(|(name, _)| name != "Content-Type");
    headers.push((
        "Content-Type".into(),
        "application/x-www-form-urlencoded".into(),
    ));
    assert_eq!(receiver.post(&headers, &body).await.status(), 415);
    assert!(receiver.messages().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_violation_is_422_and_names_the_failing_path() {
    let receiver = Receiver::start(&github_manifest(), SECRET).await;
    let body = br#"{"action":"opened","issue":{"id":"one"}}"#.to_vec();
    let response = receiver
        .post(&github_signed(SECRET, &body, "schema-1"), &body)
        .await;
    assert_eq!(response.status(), 422);
    let answer: serde_json::Value = response.json().await.expect("JSON");
    let message = answer["message"].as_str().expect("message");
    assert!(message.contains("/issue/id"), "{message}");
    assert!(receiver.messages().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn source_outside_the_allowed_ranges_is_403() {
    let receiver = Receiver::start(&example("generic.yaml"), "partner-secret").await;
    let body = br#"{"id":"p-1","type":"t"}"#.to_vec();
    let mut headers = generic("partner-secret", &body, now());
    headers.retain(|(name, _)| name != "X-Forwarded-For");
    headers.push(("X-Forwarded-For".into(), "198.51.100.7".into()));
    assert_eq!(receiver.post(&headers, &body).await.status(), 403);

    // A client-supplied entry left of the proxy's does not count (one trusted hop).
    headers.retain(|(name, _)| name != "X-Forwarded-For");
    headers.push(("X-Forwarded-For".into(), "203.0.113.5, 198.51.100.7".into()));
    assert_eq!(receiver.post(&headers, &body).await.status(), 403);

    // No proxy entry at all: the client is unknown.
    headers.retain(|(name, _)| name != "X-Forwarded-For");
    assert_eq!(receiver.post(&headers, &body).await.status(), 403);
    assert!(receiver.messages().await.is_empty());

    headers.push(("X-Forwarded-For".into(), "198.51.100.7, 203.0.113.5".into()));
    assert_eq!(receiver.post(&headers, &body).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn checks_run_in_the_contract_order() {
    let receiver = Receiver::start(&example("generic.yaml"), "partner-secret").await;
    // Large enough that reqwest is still writing when the early 403 and 413
    // are sent: the receiver must read and discard the rest (its lingering
    // close) or the client gets a reset instead of the answer.
    let huge = vec![b'x'; 4 * 1024 * 1024];
    let unsigned = vec![("X-Forwarded-For".to_owned(), "198.51.100.7".to_owned())];
    // Forbidden source beats size and signature.
    assert_eq!(receiver.post(&unsigned, &huge).await.status(), 403);
    // Size beats signature.
    let allowed = vec![("X-Forwarded-For".to_owned(), "203.0.113.5".to_owned())];
    assert_eq!(receiver.post(&allowed, &huge).await.status(), 413);
    // Signature beats JSON.
    assert_eq!(receiver.post(&allowed, b"not json").await.status(), 401);
    // JSON beats schema.
    let signed = generic("partner-secret", b"not json", now());
    assert_eq!(receiver.post(&signed, b"not json").await.status(), 400);
    // Schema (id and type required) before publishing.
    let body = br#"{"id":"p-2"}"#;
    let signed = generic("partner-secret", body, now());
    assert_eq!(receiver.post(&signed, body).await.status(), 422);
    assert!(receiver.messages().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_secrets_both_pass_and_a_removed_one_fails_without_restart() {
    let receiver = Receiver::start(&github_manifest(), "old-secret\n\nnew-secret\n").await;
    let body = github_body(7);
    let old = github_signed("old-secret", &body, "rot-1");
    let new = github_signed("new-secret", &body, "rot-2");
    assert_eq!(receiver.post(&old, &body).await.status(), 200);
    assert_eq!(receiver.post(&new, &body).await.status(), 200);

    receiver.write_secrets("new-secret\n");
    let old_again = github_signed("old-secret", &body, "rot-3");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = receiver.post(&old_again, &body).await.status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200, "before the reload the old secret still works");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new secret file was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new_again = github_signed("new-secret", &body, "rot-4");
    assert_eq!(receiver.post(&new_again, &body).await.status(), 200);
    assert!(
        receiver
            .metrics()
            .await
            .contains("hookline_receiver_secret_reloads_total 1")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_secret_file_is_not_ready_and_503() {
    let receiver = Receiver::start_with(
        tokio::task::block_in_place(|| hookline_e2e::NatsServer::start().expect("nats")),
        &github_manifest(),
        "\n",
        Options {
            wait_ready: false,
            ..Options::default()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!receiver.is_ready().await);
    let body = github_body(1);
    let response = receiver
        .post(&github_signed("anything", &body, "x"), &body)
        .await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));

    receiver.write_secrets("now-a-secret\n");
    receiver.wait_ready(Duration::from_secs(10)).await;
    let signed = github_signed("now-a-secret", &body, "y");
    assert_eq!(receiver.post(&signed, &body).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn slack_url_verification_is_answered_and_not_stored() {
    let secret = "8f742231b10e8888abcd99yyyzzz85a5";
    let receiver = Receiver::start(&example("slack.yaml"), secret).await;
    let body = br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let response = receiver.post(&slack(secret, body, now()), body).await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(
        answer,
        serde_json::json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
    );
    assert!(receiver.messages().await.is_empty());

    // Unsigned challenges are refused like anything else.
    let unsigned = vec![("Content-Type".to_owned(), "application/json".to_owned())];
    assert_eq!(receiver.post(&unsigned, body).await.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn event_without_provider_id_uses_idempotency_key_then_body_hash() {
    let manifest = manifest("generic", "  verification:\n    signatureHeader: X-Sig\n");
    let receiver = Receiver::start(&manifest, "k").await;
    let body = br#"{"hello":"world"}"#;
    let mac = hex::encode(hmac_sha256(b"k", &[body]));
    let mut headers = vec![
        ("X-Sig".to_owned(), mac),
        ("Content-Type".to_owned(), "application/json".to_owned()),
    ];
    let hashed: serde_json::Value = receiver
        .post(&headers, body)
        .await
        .json()
        .await
        .expect("JSON");
    // sha256 of the body, computed independently with ring.
    let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, body));
    assert_eq!(hashed["eventId"], digest.as_str());

    headers.push(("Idempotency-Key".to_owned(), "idem-42".to_owned()));
    let keyed: serde_json::Value = receiver
        .post(&headers, body)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(keyed["eventId"], "idem-42");
    let messages = receiver.messages().await;
    assert_eq!(messages.len(), 2);
    assert_eq!(
        header(&messages[0], "Hookline-Id-Source"),
        Some("body-hash")
    );
    assert_eq!(
        header(&messages[1], "Hookline-Id-Source"),
        Some("idempotency-key")
    );
    assert_eq!(
        messages[0].subject.as_str(),
        "hookline.default.test.unknown"
    );
    assert_eq!(header(&messages[0], "Hookline-Event-Type"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_metrics_and_unknown_routes() {
    let receiver = Receiver::start(&github_manifest(), SECRET).await;
    let get = |path: &str| receiver.http.get(format!("{}{path}", receiver.base)).send();
    assert_eq!(get("/healthz").await.expect("healthz").status(), 200);
    let ready: serde_json::Value = get("/readyz")
        .await
        .expect("readyz")
        .json()
        .await
        .expect("JSON");
    assert_eq!(ready["ready"], true);
    assert_eq!(get("/nowhere").await.expect("404").status(), 404);
    let wrong_method = get(&receiver.path).await.expect("405");
    assert_eq!(wrong_method.status(), 405);
    let post_health = receiver
        .http
        .post(format!("{}/healthz", receiver.base))
        .send()
        .await
        .expect("405");
    assert_eq!(post_health.status(), 405);
    let answer: serde_json::Value = post_health.json().await.expect("JSON error body");
    assert_eq!(answer["error"], "method_not_allowed");

    let body = github_body(3);
    receiver
        .post(&github_signed(SECRET, &body, "m-1"), &body)
        .await;
    receiver
        .post(&github_signed("wrong", &body, "m-2"), &body)
        .await;
    let metrics = receiver.metrics().await;
    for line in [
        r#"hookline_receiver_requests_total{provider="github",outcome="stored"} 1"#,
        r#"hookline_receiver_requests_total{provider="github",outcome="unauthorized"} 1"#,
        "hookline_receiver_request_duration_seconds_count{provider=\"github\"} 2",
        "hookline_receiver_publish_duration_seconds_count 1",
        "hookline_receiver_body_size_bytes_count 1",
        "hookline_receiver_secrets 1",
        "hookline_receiver_jetstream_ready 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
}

/// What a 503 says to the sender: retry, and nothing about our insides (no
/// stream name, no NATS error text; those go to the log).
const RETRY_ANSWER: &str =
    r#"{"error":"unavailable","message":"the event was not stored; retry in 5 s"}"#;

/// An archive capped at 4 KiB: JetStream itself refuses past it.
const SMALL_ARCHIVE: &str = "  stream:\n    retention: Archive\n    maxBytes: 4096\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_503_asks_for_a_retry_and_names_nothing_internal() {
    let receiver = Receiver::start(&manifest("github", SMALL_ARCHIVE), SECRET).await;
    for n in 0..20 {
        let body = format!(r#"{{"action":"opened","pad":"{}"}}"#, "p".repeat(500)).into_bytes();
        let response = receiver
            .post(
                &github_signed(SECRET, &body, &format!("refused-{n}")),
                &body,
            )
            .await;
        if response.status() == 503 {
            let answer: serde_json::Value = response.json().await.expect("JSON");
            let expected: serde_json::Value = serde_json::from_str(RETRY_ANSWER).expect("JSON");
            assert_eq!(answer, expected);
            return;
        }
        assert_eq!(response.status(), 200);
    }
    panic!("a full stream never answered 503");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_archive_is_503_never_200() {
    let receiver = Receiver::start(&manifest("github", SMALL_ARCHIVE), SECRET).await;
    let mut statuses = Vec::new();
    for n in 0..20 {
        let body = format!(r#"{{"action":"opened","pad":"{}"}}"#, "p".repeat(500)).into_bytes();
        let response = receiver
            .post(&github_signed(SECRET, &body, &format!("full-{n}")), &body)
            .await;
        if response.status() == 503 {
            assert!(response.headers().contains_key("retry-after"));
        }
        statuses.push(response.status().as_u16());
    }
    let stored = statuses.iter().filter(|status| **status == 200).count();
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|status| *status == 200 || *status == 503)
    );
    assert_eq!(
        receiver.messages().await.len(),
        stored,
        "every 200 is stored"
    );
}

/// A buffer capped at 2 KiB, which the receiver enforces.
const SMALL_BUFFER: &str = "  stream:\n    maxBytes: 2048\n";

fn padded(n: u32) -> Vec<u8> {
    format!(
        r#"{{"action":"opened","issue":{{"id":{n}}},"pad":"{}"}}"#,
        "p".repeat(500)
    )
    .into_bytes()
}

/// Posts new events, 50 ms apart, until one is answered `status`; returns
/// that answer and how many were answered otherwise.
async fn post_until(receiver: &Receiver, status: u16, prefix: &str) -> (reqwest::Response, u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for n in 0.. {
        let body = padded(n);
        let response = receiver
            .post(
                &github_signed(SECRET, &body, &format!("{prefix}-{n}")),
                &body,
            )
            .await;
        if response.status() == status {
            return (response, n);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never answered {status}; last {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_buffer_at_its_cap_is_503_with_retry_after_publishes_nothing_and_takes_events_again_once_drained()
 {
    let receiver = Receiver::start(&manifest("github", SMALL_BUFFER), SECRET).await;
    let (full, stored) = post_until(&receiver, 503, "fill").await;
    assert!(stored >= 2, "events are taken until the cap: {stored}");
    assert_eq!(
        full.headers().get("retry-after").map(|v| v.to_str().ok()),
        Some(Some("5"))
    );
    let answer: serde_json::Value = full.json().await.expect("JSON");
    assert_eq!(
        answer,
        serde_json::json!({"error": "buffer_full", "message": "the event was not stored; retry in 5 s"})
    );

    let held = receiver.stream_messages().await;
    for n in 0..3 {
        let body = padded(100 + n);
        let response = receiver
            .post(
                &github_signed(SECRET, &body, &format!("refused-{n}")),
                &body,
            )
            .await;
        assert_eq!(response.status(), 503);
    }
    assert_eq!(
        receiver.stream_messages().await,
        held,
        "nothing published while full"
    );
    let metrics = receiver.metrics().await;
    for line in [
        "hookline_receiver_buffer_limit_bytes 2048",
        r#"hookline_receiver_requests_total{provider="github",outcome="buffer_full"}"#,
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    assert!(
        !metrics.contains("hookline_receiver_buffer_bytes 0\n"),
        "the fill is exported:\n{metrics}"
    );

    // The consumer writes them to Postgres: acknowledged, they leave.
    drain(&receiver).await;
    let (_, refused) = post_until(&receiver, 200, "again").await;
    assert!(
        refused < 100,
        "the next probe (2 s) sees the room: {refused} refused"
    );
    assert!(
        receiver.is_ready().await,
        "a full buffer is not a reason to be unready"
    );
}

/// Acknowledges every event in the stream, as the consumer does after the commit.
async fn drain(receiver: &Receiver) {
    let js = async_nats::jetstream::new(
        async_nats::connect(receiver.nats.url())
            .await
            .expect("connect"),
    );
    let stream = js.get_stream(&receiver.stream).await.expect("stream");
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer("hookline-consumer")
        .await
        .expect("the durable consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(1000)
        .messages()
        .await
        .expect("fetch");
    while let Some(message) = futures::StreamExt::next(&mut batch).await {
        message.expect("message").double_ack().await.expect("ack");
    }
    assert_eq!(receiver.stream_messages().await, 0, "drained");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_trusted_hops_the_tcp_peer_is_checked_and_forwarded_for_is_ignored() {
    let allowed = Receiver::start(
        &manifest("github", "  allowedSourceRanges: [\"127.0.0.0/8\"]\n"),
        SECRET,
    )
    .await;
    let body = github_body(5);
    let mut headers = github_signed(SECRET, &body, "peer-1");
    headers.push(("X-Forwarded-For".into(), "198.51.100.7".into()));
    assert_eq!(allowed.post(&headers, &body).await.status(), 200);

    let refused = Receiver::start(
        &manifest("github", "  allowedSourceRanges: [\"10.0.0.0/8\"]\n"),
        SECRET,
    )
    .await;
    let mut headers = github_signed(SECRET, &body, "peer-2");
    headers.push(("X-Forwarded-For".into(), "10.1.2.3".into()));
    let response = refused.post(&headers, &body).await;
    assert_eq!(response.status(), 403);
    let answer: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(answer["error"], "forbidden");
}

#[tokio::test(flavor = "multi_thread")]
async fn stripe_header_with_several_v1_signatures_passes_when_any_matches() {
    let secret = "whsec_rolling";
    let receiver = Receiver::start(&example("stripe.yaml"), secret).await;
    let body = br#"{"id":"evt_multi","type":"charge.succeeded","created":1700000000,"data":{"object":{"id":"ch_1"}}}"#;
    let ts = now();
    let valid = hex::encode(hmac_sha256(
        secret.as_bytes(),
        &[ts.to_string().as_bytes(), b".", body],
    ));
    let header = format!(
        "t={ts},v1={},v1={valid},v0={}",
        "ab".repeat(32),
        "cd".repeat(32)
    );
    let headers = vec![
        ("Stripe-Signature".to_owned(), header),
        ("Content-Type".to_owned(), "application/json".to_owned()),
    ];
    assert_eq!(receiver.post(&headers, body).await.status(), 200);
}

/// The header block of a stored message as NATS carries it.
fn header_block_len(message: &async_nats::jetstream::message::StreamMessage) -> usize {
    let lines: usize = message
        .headers
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |value| format!("{name}: {}\r\n", value.as_str()).len())
        })
        .sum();
    "NATS/1.0\r\n\r\n".len() + lines
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_over_the_request_bound_are_431_with_a_json_body() {
    let receiver = Receiver::start(&github_manifest(), SECRET).await;
    let body = github_body(11);
    let mut headers = github_signed(SECRET, &body, "wide-1");
    headers.push(("X-Padding".into(), "p".repeat(40 * 1024)));
    let response = receiver.post(&headers, &body).await;
    assert_eq!(response.status(), 431);
    let answer: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(answer["error"], "headers_too_large");
    assert!(receiver.messages().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn one_200_kb_header_on_a_signed_request_is_431_never_503() {
    let receiver = Receiver::start(&github_manifest(), SECRET).await;
    let body = github_body(12);
    let mut headers = github_signed(SECRET, &body, "wide-2");
    headers.push(("X-Padding".into(), "p".repeat(200 * 1024)));
    assert_eq!(receiver.post(&headers, &body).await.status(), 431);
    assert!(receiver.messages().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_header_too_large_for_the_message_is_dropped_named_and_the_event_stored() {
    let receiver = Receiver::start(&github_manifest(), SECRET).await;
    let body = github_body(13);
    let mut headers = github_signed(SECRET, &body, "wide-3");
    headers.push(("X-Padding".into(), "p".repeat(20 * 1024)));
    assert_eq!(receiver.post(&headers, &body).await.status(), 200);
    let messages = receiver.messages().await;
    let message = &messages[0];
    assert!(header_block_len(message) <= hookline_api::headers::HEADER_ALLOWANCE);
    assert_eq!(
        header(message, "Hookline-Dropped-Headers"),
        Some("x-padding")
    );
    assert_eq!(
        header(message, "Hookline-Http-X-Github-Event"),
        Some("issues")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn many_headers_fit_in_the_message_and_it_names_the_ones_left_out() {
    let receiver = Receiver::start(&github_manifest(), SECRET).await;
    let body = github_body(14);
    let mut headers = github_signed(SECRET, &body, "wide-4");
    for n in 0..80 {
        headers.push((format!("X-Filler-{n:02}"), "f".repeat(300)));
    }
    assert_eq!(receiver.post(&headers, &body).await.status(), 200);
    let messages = receiver.messages().await;
    let message = &messages[0];
    let size = header_block_len(message);
    assert!(
        size <= hookline_api::headers::HEADER_ALLOWANCE,
        "{size} bytes of headers"
    );
    let dropped = header(message, "Hookline-Dropped-Headers").expect("marker");
    assert!(dropped.ends_with("x-filler-79"), "{dropped}");
    assert_eq!(header(message, "Hookline-Event-Id"), Some("wide-4"));
    assert!(header(message, "Hookline-Http-X-Filler-00").is_some());
}

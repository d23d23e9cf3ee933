//! Failures around the receiver: NATS dying and coming back, NATS down at
//! start, and a graceful shutdown with a request in flight.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;

const SECRET: &str = "It's a Secret to Everybody";

fn body(n: u32) -> Vec<u8> {
    format!(r#"{{"action":"opened","issue":{{"id":{n}}}}}"#).into_bytes()
}

fn signed(body: &[u8], delivery: &str) -> Headers {
    github(SECRET, body, delivery, "issues")
}

/// Posts new events until one is stored; returns its delivery id.
async fn post_until_stored(receiver: &Receiver, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    for attempt in 0.. {
        let delivery = format!("retry-{attempt}");
        let payload = body(attempt);
        let response = receiver.post(&signed(&payload, &delivery), &payload).await;
        if response.status() == 200 {
            return delivery;
        }
        assert_eq!(response.status(), 503);
        assert!(
            Instant::now() < deadline,
            "not stored again within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_killed_gives_503_with_retry_after_and_a_restart_brings_200_back() {
    let mut receiver = Receiver::start(&manifest("github", ""), SECRET).await;
    let first = body(1);
    assert_eq!(
        receiver
            .post(&signed(&first, "before"), &first)
            .await
            .status(),
        200
    );

    tokio::task::block_in_place(|| receiver.nats.kill());
    let payload = body(2);
    let started = Instant::now();
    let response = receiver.post(&signed(&payload, "during"), &payload).await;
    assert_eq!(response.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "503 within the 2 s publish timeout, took {:?}",
        started.elapsed()
    );
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().ok()),
        Some(Some("5"))
    );
    let answer: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(answer["error"], "unavailable");
    assert_eq!(
        answer["message"], "the event was not stored; retry in 5 s",
        "a 503 names nothing internal"
    );
    assert!(!receiver.is_ready().await);

    tokio::task::block_in_place(|| receiver.nats.restart().expect("restart nats"));
    let stored = post_until_stored(&receiver, Duration::from_secs(15)).await;
    let ids: Vec<String> = receiver
        .messages()
        .await
        .iter()
        .filter_map(|m| header(m, "Nats-Msg-Id").map(str::to_owned))
        .collect();
    assert!(
        ids.contains(&"before".to_owned()),
        "stored before the crash: {ids:?}"
    );
    assert!(ids.contains(&stored), "stored after the restart: {ids:?}");
    receiver.wait_ready(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn starts_while_nats_is_down_and_becomes_ready_when_it_is_up() {
    let mut nats = tokio::task::block_in_place(|| hookline_e2e::NatsServer::start().expect("nats"));
    tokio::task::block_in_place(|| nats.kill());
    let mut receiver = Receiver::start_with(
        nats,
        &manifest("github", ""),
        SECRET,
        Options {
            wait_ready: false,
            ..Options::default()
        },
    )
    .await;
    let health = receiver
        .http
        .get(format!("{}/healthz", receiver.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    assert!(!receiver.is_ready().await);
    let payload = body(1);
    assert_eq!(
        receiver
            .post(&signed(&payload, "early"), &payload)
            .await
            .status(),
        503
    );

    tokio::task::block_in_place(|| receiver.nats.restart().expect("start nats"));
    // --provision creates the stream once NATS is reachable.
    receiver.wait_ready(Duration::from_secs(15)).await;
    let payload = body(2);
    assert_eq!(
        receiver
            .post(&signed(&payload, "later"), &payload)
            .await
            .status(),
        200
    );
    assert_eq!(receiver.messages().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_finishes_the_request_in_flight_then_stops_accepting() {
    let mut receiver = Receiver::start(&manifest("github", ""), SECRET).await;
    let payload = body(9);
    let headers = signed(&payload, "in-flight");

    // A request whose body is still uploading when shutdown begins.
    let (tx, rx) = futures::channel::mpsc::unbounded::<bytes::Bytes>();
    let frames = rx.map(|chunk| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk)));
    let mut request = receiver
        .http
        .post(format!("{}{}", receiver.base, receiver.path))
        .header("Content-Length", payload.len().to_string())
        .body(reqwest::Body::wrap(http_body_util::StreamBody::new(frames)));
    for (name, value) in &headers {
        request = request.header(name, value);
    }
    let in_flight = tokio::spawn(request.send());
    let half = payload.len() / 2;
    tx.unbounded_send(bytes::Bytes::copy_from_slice(&payload[..half]))
        .expect("send first half");
    tokio::time::sleep(Duration::from_millis(200)).await;

    receiver.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.unbounded_send(bytes::Bytes::copy_from_slice(&payload[half..]))
        .expect("send second half");
    drop(tx);

    let response = in_flight.await.expect("task").expect("answered");
    assert_eq!(response.status(), 200, "the in-flight request is stored");
    receiver.stop().await.expect("run returns Ok");
    assert!(
        receiver
            .http
            .get(format!("{}/healthz", receiver.base))
            .send()
            .await
            .is_err(),
        "no longer accepting"
    );
    assert_eq!(receiver.messages().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_provision_a_lost_stream_is_made_again() {
    let receiver = Receiver::start(&manifest("github", ""), SECRET).await;
    let client = async_nats::connect(receiver.nats.url())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    js.delete_stream(&receiver.stream)
        .await
        .expect("delete stream");

    // Until it is back, requests are 503 (never 200); then the first stored
    // event is the only message of the new stream.
    let stored = post_until_stored(&receiver, Duration::from_secs(10)).await;
    let ids: Vec<String> = receiver
        .messages()
        .await
        .iter()
        .filter_map(|m| header(m, "Nats-Msg-Id").map(str::to_owned))
        .collect();
    assert_eq!(ids, vec![stored]);
}

/// Makes the endpoint's stream and durable consumer as the operator would.
async fn provision(
    receiver_nats: &hookline_e2e::NatsServer,
    manifest: &str,
) -> async_nats::jetstream::Context {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("endpoint.yaml");
    std::fs::write(&path, manifest).expect("write manifest");
    let endpoint = hookline_api::load_manifest(&path).expect("valid manifest");
    let client = async_nats::connect(receiver_nats.url())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    hookline_api::provision::provision(&js, &endpoint)
        .await
        .expect("provision");
    js
}

/// A stream with interest retention and its durable consumer, as a hand-made
/// stream or an older Hookline had them (provisioning keeps an existing
/// stream's retention): such a stream keeps nothing while no consumer exists.
async fn interest_stream(
    nats: &hookline_e2e::NatsServer,
    manifest: &str,
) -> async_nats::jetstream::Context {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("endpoint.yaml");
    std::fs::write(&path, manifest).expect("write manifest");
    let endpoint = hookline_api::load_manifest(&path).expect("valid manifest");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let config = async_nats::jetstream::stream::Config {
        retention: async_nats::jetstream::stream::RetentionPolicy::Interest,
        ..hookline_api::provision::stream_config(&endpoint)
    };
    js.create_stream(config).await.expect("interest stream");
    hookline_api::provision::provision(&js, &endpoint)
        .await
        .expect("durable consumer");
    js
}

async fn readyz(receiver: &Receiver) -> (u16, serde_json::Value) {
    let response = receiver
        .http
        .get(format!("{}/readyz", receiver.base))
        .send()
        .await
        .expect("readyz");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

async fn wait_until_not_ready(receiver: &Receiver, limit: Duration) {
    let deadline = Instant::now() + limit;
    while receiver.is_ready().await {
        assert!(Instant::now() < deadline, "still ready after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interest_stream_without_its_durable_consumer_gets_503_never_200() {
    let nats = tokio::task::block_in_place(|| hookline_e2e::NatsServer::start().expect("nats"));
    let manifest = manifest("github", "");
    let js = interest_stream(&nats, &manifest).await;
    // Without --provision, as in a cluster: the operator made stream and consumer.
    let receiver = Receiver::start_with(
        nats,
        &manifest,
        SECRET,
        Options {
            provision: false,
            ..Options::default()
        },
    )
    .await;
    let payload = body(1);
    assert_eq!(
        receiver
            .post(&signed(&payload, "kept"), &payload)
            .await
            .status(),
        200
    );

    let stream = js.get_stream(&receiver.stream).await.expect("stream");
    stream
        .delete_consumer("hookline-consumer")
        .await
        .expect("delete the durable consumer");
    wait_until_not_ready(&receiver, Duration::from_secs(5)).await;
    let (status, ready) = readyz(&receiver).await;
    assert_eq!(status, 503);
    assert_eq!(ready["streamReachable"], true);
    assert_eq!(ready["consumerPresent"], false);

    let payload = body(2);
    let response = receiver.post(&signed(&payload, "nobody"), &payload).await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|value| value.to_str().ok()),
        Some(Some("5"))
    );
    assert_eq!(receiver.stream_messages().await, 0, "nothing was published");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recreated_durable_consumer_brings_200_back() {
    let nats = tokio::task::block_in_place(|| hookline_e2e::NatsServer::start().expect("nats"));
    let manifest = manifest("github", "");
    let js = interest_stream(&nats, &manifest).await;
    let receiver = Receiver::start_with(
        nats,
        &manifest,
        SECRET,
        Options {
            provision: false,
            ..Options::default()
        },
    )
    .await;
    let stream = js.get_stream(&receiver.stream).await.expect("stream");
    stream
        .delete_consumer("hookline-consumer")
        .await
        .expect("delete the durable consumer");
    wait_until_not_ready(&receiver, Duration::from_secs(5)).await;

    provision(&receiver.nats, &manifest).await;
    receiver.wait_ready(Duration::from_secs(5)).await;
    let payload = body(3);
    assert_eq!(
        receiver
            .post(&signed(&payload, "back"), &payload)
            .await
            .status(),
        200
    );
    assert_eq!(receiver.stream_messages().await, 1, "kept for the consumer");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_provision_a_deleted_durable_consumer_of_an_interest_stream_is_made_again() {
    let nats = tokio::task::block_in_place(|| hookline_e2e::NatsServer::start().expect("nats"));
    let manifest = manifest("github", "");
    interest_stream(&nats, &manifest).await;
    let receiver = Receiver::start_with(nats, &manifest, SECRET, Options::default()).await;
    let client = async_nats::connect(receiver.nats.url())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(&receiver.stream).await.expect("stream");
    stream
        .delete_consumer("hookline-consumer")
        .await
        .expect("delete the durable consumer");

    let deadline = Instant::now() + Duration::from_secs(10);
    while stream.consumer_info("hookline-consumer").await.is_err() {
        assert!(Instant::now() < deadline, "the consumer was not made again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored = post_until_stored(&receiver, Duration::from_secs(10)).await;
    let ids: Vec<String> = receiver
        .messages()
        .await
        .iter()
        .filter_map(|m| header(m, "Nats-Msg-Id").map(str::to_owned))
        .collect();
    assert_eq!(ids, vec![stored], "the event is kept for the consumer");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_durable_consumer_stops_publishing_before_the_next_probe() {
    let nats = tokio::task::block_in_place(|| hookline_e2e::NatsServer::start().expect("nats"));
    let manifest = manifest("github", "");
    let js = interest_stream(&nats, &manifest).await;
    let receiver = Receiver::start_with(
        nats,
        &manifest,
        SECRET,
        Options {
            provision: false,
            ..Options::default()
        },
    )
    .await;
    let stream = js.get_stream(&receiver.stream).await.expect("stream");
    stream
        .delete_consumer("hookline-consumer")
        .await
        .expect("delete the durable consumer");
    // JetStream's deletion advisory, not the 2 s probe, turns readiness off.
    wait_until_not_ready(&receiver, Duration::from_millis(500)).await;
}

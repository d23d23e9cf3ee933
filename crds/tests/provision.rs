//! The shared provisioning function against a real nats-server.
#![cfg(feature = "jetstream")]

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::RetentionPolicy;
use futures::StreamExt;
use hookline_api::provision::{delete_stream, provision};
use hookline_api::spec::{Provider, StreamRetention, StreamSpec, WebhookEndpointSpec};
use hookline_e2e::NatsServer;

fn spec(max_age: &str) -> WebhookEndpointSpec {
    WebhookEndpointSpec {
        stream: Some(StreamSpec {
            max_age: Some(max_age.into()),
            ..Default::default()
        }),
        ..WebhookEndpointSpec::new(Provider::Github, "gh")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn provision_creates_then_updates_and_delete_removes() {
    let nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server starts");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);

    let endpoint = hookline_api::resolve("ci", "github", &spec("720h")).expect("valid");
    provision(&js, &endpoint).await.expect("create");
    provision(&js, &endpoint).await.expect("idempotent");

    let mut stream = js
        .get_stream("HOOKLINE_ci_github")
        .await
        .expect("stream exists");
    let info = stream.info().await.expect("info");
    assert_eq!(info.config.subjects, ["hookline.ci.github.>"]);
    assert_eq!(info.config.max_age, Duration::from_secs(720 * 3600));
    assert_eq!(
        info.config.discard,
        async_nats::jetstream::stream::DiscardPolicy::New
    );
    let consumer = stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("hookline-consumer")
        .await
        .expect("durable consumer exists");
    assert_eq!(
        consumer.cached_info().config.ack_policy,
        async_nats::jetstream::consumer::AckPolicy::Explicit
    );

    let updated = hookline_api::resolve("ci", "github", &spec("24h")).expect("valid");
    provision(&js, &updated).await.expect("update");
    let info = stream.info().await.expect("info");
    assert_eq!(info.config.max_age, Duration::from_secs(24 * 3600));

    delete_stream(&js, &updated.stream.name)
        .await
        .expect("delete");
    delete_stream(&js, &updated.stream.name)
        .await
        .expect("deleting a missing stream is fine");
    assert!(js.get_stream("HOOKLINE_ci_github").await.is_err());
}

fn with_retention(retention: StreamRetention) -> WebhookEndpointSpec {
    WebhookEndpointSpec {
        stream: Some(StreamSpec {
            retention: Some(retention),
            ..Default::default()
        }),
        ..WebhookEndpointSpec::new(Provider::Github, "gh")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_buffer_stream_lets_acknowledged_events_go_keeps_the_others_and_is_capped() {
    let nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server starts");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let endpoint = hookline_api::resolve("ci", "buffer", &with_retention(StreamRetention::Buffer))
        .expect("valid");
    provision(&js, &endpoint).await.expect("create");
    let mut stream = js.get_stream("HOOKLINE_ci_buffer").await.expect("stream");
    let config = stream.info().await.expect("info").config.clone();
    assert_eq!(config.retention, RetentionPolicy::WorkQueue);
    assert_eq!(config.max_bytes, 512 * 1024 * 1024);

    js.publish("hookline.ci.buffer.push", "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let consumer: PullConsumer = stream
        .get_consumer("hookline-consumer")
        .await
        .expect("consumer");
    let mut messages = consumer
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .expect("fetch");
    let message = messages.next().await.expect("one").expect("message");
    message.double_ack().await.expect("ack");
    assert_eq!(
        stream.info().await.expect("info").state.messages,
        0,
        "written events leave a buffer"
    );

    // Unlike an interest stream, a work queue keeps what arrives while its
    // consumer is gone.
    stream
        .delete_consumer("hookline-consumer")
        .await
        .expect("delete the consumer");
    js.publish("hookline.ci.buffer.push", "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    assert_eq!(
        stream.info().await.expect("info").state.messages,
        1,
        "kept without a consumer"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_archive_stream_is_uncapped_and_an_existing_streams_retention_is_kept() {
    let nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server starts");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let archive = hookline_api::resolve("ci", "switch", &with_retention(StreamRetention::Archive))
        .expect("valid");
    provision(&js, &archive).await.expect("create");
    let mut stream = js.get_stream("HOOKLINE_ci_switch").await.expect("stream");
    let config = stream.info().await.expect("info").config.clone();
    assert_eq!(config.retention, RetentionPolicy::Limits);
    assert_eq!(
        config.max_bytes, -1,
        "an archive is not capped unless asked"
    );

    let buffer = hookline_api::resolve("ci", "switch", &with_retention(StreamRetention::Buffer))
        .expect("valid");
    provision(&js, &buffer).await.expect("switching provisions");
    let config = stream.info().await.expect("info").config.clone();
    assert_eq!(
        config.max_bytes,
        512 * 1024 * 1024,
        "the rest of the update applies"
    );
    assert_eq!(
        config.retention,
        RetentionPolicy::Limits,
        "NATS keeps a stream's retention"
    );
    let stats = hookline_api::provision::stats(&js, &buffer)
        .await
        .expect("stats");
    assert_eq!(
        stats.retention,
        Some(StreamRetention::Archive),
        "the stats say so"
    );
}

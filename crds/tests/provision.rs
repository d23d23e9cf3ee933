//! The shared provisioning function against a real nats-server.
#![cfg(feature = "jetstream")]

use std::time::Duration;

use hookline_api::provision::{delete_stream, provision};
use hookline_api::spec::{Provider, StreamSpec, WebhookEndpointSpec};
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

    delete_stream(&js, &updated).await.expect("delete");
    delete_stream(&js, &updated)
        .await
        .expect("deleting a missing stream is fine");
    assert!(js.get_stream("HOOKLINE_ci_github").await.is_err());
}

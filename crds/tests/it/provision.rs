//! The shared provisioning function against a real nats-server.
#![cfg(feature = "jetstream")]

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::RetentionPolicy;
use futures::StreamExt;
use hookline_api::provision::{
    Cleanup, Ensured, OWNER_ENDPOINT_KEY, OWNER_UID_KEY, PoolConsumerChanges, ProvisionError,
    StreamOwner, StreamStats, delete_owned, delete_stream, diagnose, ensure, ensure_listed,
    ensure_pool_consumer, ensure_pool_stream, explain, pool_consumer_config, pool_stream_config,
    provision, release, shared_bytes, stream_config,
};
use hookline_api::spec::{Provider, StreamRetention, StreamSpec, WebhookEndpointSpec};
use hookline_api::validated::StreamLimits;
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
async fn a_buffer_stream_lets_acknowledged_events_go_keeps_the_others_and_reserves_nothing() {
    let nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server starts");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let endpoint = hookline_api::resolve("ci", "buffer", &with_retention(StreamRetention::Buffer))
        .expect("valid");
    provision(&js, &endpoint).await.expect("create");
    let mut stream = js.get_stream("HOOKLINE_ci_buffer").await.expect("stream");
    let config = stream.info().await.expect("info").config.clone();
    assert_eq!(config.retention, RetentionPolicy::WorkQueue);
    assert_eq!(
        config.max_bytes, -1,
        "JetStream would reserve a max_bytes on its store; the receiver enforces the cap"
    );

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

    let mut switched = with_retention(StreamRetention::Buffer);
    if let Some(stream) = switched.stream.as_mut() {
        stream.max_age = Some("24h".into());
    }
    let buffer = hookline_api::resolve("ci", "switch", &switched).expect("valid");
    provision(&js, &buffer).await.expect("switching provisions");
    let config = stream.info().await.expect("info").config.clone();
    assert_eq!(
        config.max_age,
        Duration::from_secs(24 * 3600),
        "the rest of the update applies"
    );
    assert_eq!(config.max_bytes, -1, "still an uncapped archive");
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
    assert_eq!(stats.limit_bytes, None, "and that nothing caps it");
}

/// Counts the JetStream API requests every client of the server makes, by
/// subscribing to `$JS.API.>` from a second connection.
struct ApiCalls {
    subscription: async_nats::Subscriber,
}

impl ApiCalls {
    async fn watch(nats: &NatsServer) -> ApiCalls {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let subscription = client.subscribe("$JS.API.>").await.expect("subscribe");
        client.flush().await.expect("flush");
        ApiCalls { subscription }
    }

    /// The subjects requested since the last call, API prefix dropped.
    async fn take(&mut self) -> Vec<String> {
        let mut subjects = Vec::new();
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(300), self.subscription.next()).await
        {
            let subject = message.subject.as_str();
            subjects.push(subject.trim_start_matches("$JS.API.").to_owned());
        }
        subjects
    }
}

async fn connect(nats: &NatsServer) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"))
}

fn start() -> NatsServer {
    tokio::task::block_in_place(NatsServer::start).expect("nats-server starts")
}

fn ready(outcome: Result<Ensured, ProvisionError>) -> StreamStats {
    match outcome.expect("provisioned") {
        Ensured::Ready(stats) => stats,
        other => panic!("expected Ready, got {other:?}"),
    }
}

async fn metadata(js: &async_nats::jetstream::Context, name: &str) -> HashMap<String, String> {
    js.get_stream(name)
        .await
        .expect("stream exists")
        .cached_info()
        .config
        .metadata
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_steady_buffer_endpoint_costs_one_stream_info() {
    let nats = start();
    let js = connect(&nats).await;
    let mut calls = ApiCalls::watch(&nats).await;
    let endpoint = hookline_api::resolve("ci", "steady", &with_retention(StreamRetention::Buffer))
        .expect("valid");
    let owner = StreamOwner::new("uid-1", "ci", "steady");
    let mut known = None;

    ready(ensure(&js, &endpoint, Some(&owner), &mut known).await);
    let first = calls.take().await;
    assert!(
        first.contains(&"STREAM.CREATE.HOOKLINE_ci_steady".to_owned()),
        "{first:?}"
    );
    js.publish("hookline.ci.steady.push", "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    calls.take().await;

    let stats = ready(ensure(&js, &endpoint, Some(&owner), &mut known).await);
    assert_eq!(calls.take().await, ["STREAM.INFO.HOOKLINE_ci_steady"]);
    assert_eq!(stats.messages, 1);
    assert_eq!(
        stats.pending, 1,
        "a buffer's messages are its pending events"
    );
    assert!(stats.last_stored.is_some());
    assert_eq!(stats.retention, Some(StreamRetention::Buffer));
    assert!(stats.bytes > 0, "the buffer's fill: {}", stats.bytes);
    assert_eq!(
        stats.limit_bytes,
        Some(512 * 1024 * 1024),
        "the cap the receiver enforces"
    );

    ready(ensure(&js, &endpoint, Some(&owner), &mut known).await);
    assert_eq!(calls.take().await, ["STREAM.INFO.HOOKLINE_ci_steady"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_steady_archive_endpoint_also_reads_its_consumer_for_pending() {
    let nats = start();
    let js = connect(&nats).await;
    let mut calls = ApiCalls::watch(&nats).await;
    let endpoint = hookline_api::resolve("ci", "log", &with_retention(StreamRetention::Archive))
        .expect("valid");
    let mut known = None;
    ready(ensure(&js, &endpoint, None, &mut known).await);
    js.publish("hookline.ci.log.push", "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    calls.take().await;

    let stats = ready(ensure(&js, &endpoint, None, &mut known).await);
    assert_eq!(
        calls.take().await,
        [
            "STREAM.INFO.HOOKLINE_ci_log",
            "CONSUMER.INFO.HOOKLINE_ci_log.hookline-consumer"
        ]
    );
    assert_eq!((stats.messages, stats.pending), (1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_spec_updates_the_stream_once() {
    let nats = start();
    let js = connect(&nats).await;
    let mut calls = ApiCalls::watch(&nats).await;
    let owner = StreamOwner::new("uid-1", "ci", "github");
    let mut known = None;
    let endpoint = hookline_api::resolve("ci", "github", &spec("720h")).expect("valid");
    ready(ensure(&js, &endpoint, Some(&owner), &mut known).await);
    calls.take().await;

    let updated = hookline_api::resolve("ci", "github", &spec("24h")).expect("valid");
    ready(ensure(&js, &updated, Some(&owner), &mut known).await);
    assert_eq!(
        calls.take().await,
        [
            "STREAM.INFO.HOOKLINE_ci_github",
            "STREAM.UPDATE.HOOKLINE_ci_github"
        ]
    );
    let info = js
        .get_stream("HOOKLINE_ci_github")
        .await
        .expect("stream")
        .cached_info()
        .clone();
    assert_eq!(info.config.max_age, Duration::from_secs(24 * 3600));
    assert_eq!(
        info.config.metadata.get(OWNER_UID_KEY).map(String::as_str),
        Some("uid-1"),
        "the update keeps the mark"
    );
    calls.take().await;

    ready(ensure(&js, &updated, Some(&owner), &mut known).await);
    assert_eq!(calls.take().await, ["STREAM.INFO.HOOKLINE_ci_github"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_consumer_is_recreated() {
    let nats = start();
    let js = connect(&nats).await;
    let mut calls = ApiCalls::watch(&nats).await;
    let endpoint = hookline_api::resolve("ci", "gone", &with_retention(StreamRetention::Buffer))
        .expect("valid");
    let mut known = None;
    ready(ensure(&js, &endpoint, None, &mut known).await);
    js.get_stream("HOOKLINE_ci_gone")
        .await
        .expect("stream")
        .delete_consumer("hookline-consumer")
        .await
        .expect("delete the consumer");
    calls.take().await;

    ready(ensure(&js, &endpoint, None, &mut known).await);
    let made = calls.take().await;
    assert_eq!(made.len(), 2, "{made:?}");
    assert_eq!(made[0], "STREAM.INFO.HOOKLINE_ci_gone");
    // The create subject ends with the filter subject.
    assert!(
        made[1].starts_with("CONSUMER.CREATE.HOOKLINE_ci_gone.hookline-consumer"),
        "{made:?}"
    );
    js.get_stream("HOOKLINE_ci_gone")
        .await
        .expect("stream")
        .consumer_info("hookline-consumer")
        .await
        .expect("the durable consumer is back");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_made_anew_gets_its_consumer_back() {
    let nats = start();
    let js = connect(&nats).await;
    let endpoint = hookline_api::resolve("ci", "anew", &with_retention(StreamRetention::Buffer))
        .expect("valid");
    let mut known = None;
    ready(ensure(&js, &endpoint, None, &mut known).await);
    delete_stream(&js, "HOOKLINE_ci_anew")
        .await
        .expect("delete");
    ready(ensure(&js, &endpoint, None, &mut known).await);
    js.get_stream("HOOKLINE_ci_anew")
        .await
        .expect("stream made anew")
        .consumer_info("hookline-consumer")
        .await
        .expect("with its durable consumer");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unmarked_stream_is_adopted_by_the_first_owner() {
    let nats = start();
    let js = connect(&nats).await;
    let endpoint = hookline_api::resolve("ci", "old", &spec("720h")).expect("valid");
    provision(&js, &endpoint).await.expect("--provision");
    assert!(
        !metadata(&js, "HOOKLINE_ci_old")
            .await
            .contains_key(OWNER_UID_KEY),
        "no owner, no mark"
    );

    let owner = StreamOwner::new("uid-1", "ci", "old");
    ready(ensure(&js, &endpoint, Some(&owner), &mut None).await);
    let marked = metadata(&js, "HOOKLINE_ci_old").await;
    assert_eq!(marked.get(OWNER_UID_KEY).map(String::as_str), Some("uid-1"));
    assert_eq!(
        marked.get(OWNER_ENDPOINT_KEY).map(String::as_str),
        Some("ci/old")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_owned_elsewhere_is_neither_changed_nor_deleted() {
    let nats = start();
    let js = connect(&nats).await;
    let first = StreamOwner::new("uid-cluster-a", "ci", "shared");
    let second = StreamOwner::new("uid-cluster-b", "ci", "shared");
    let endpoint = hookline_api::resolve("ci", "shared", &spec("720h")).expect("valid");
    ready(ensure(&js, &endpoint, Some(&first), &mut None).await);
    js.get_stream("HOOKLINE_ci_shared")
        .await
        .expect("stream")
        .delete_consumer("hookline-consumer")
        .await
        .expect("delete the consumer");

    let changed = hookline_api::resolve("ci", "shared", &spec("24h")).expect("valid");
    let mut known = None;
    let outcome = ensure(&js, &changed, Some(&second), &mut known)
        .await
        .expect("answered");
    let Ensured::OwnedElsewhere(mark) = outcome else {
        panic!("expected OwnedElsewhere, got {outcome:?}");
    };
    assert_eq!(mark.uid, "uid-cluster-a");
    assert_eq!(mark.endpoint.as_deref(), Some("ci/shared"));
    assert!(known.is_none());
    let mut stream = js.get_stream("HOOKLINE_ci_shared").await.expect("stream");
    assert_eq!(
        stream.info().await.expect("info").config.max_age,
        Duration::from_secs(720 * 3600),
        "not updated"
    );
    assert!(
        stream.consumer_info("hookline-consumer").await.is_err(),
        "its consumer is not touched"
    );

    assert_eq!(
        delete_owned(&js, "HOOKLINE_ci_shared", &second)
            .await
            .expect("answered"),
        Cleanup::OwnedElsewhere(mark.clone())
    );
    assert_eq!(
        release(&js, "HOOKLINE_ci_shared", &second)
            .await
            .expect("answered"),
        Cleanup::OwnedElsewhere(mark)
    );
    assert!(js.get_stream("HOOKLINE_ci_shared").await.is_ok(), "kept");

    assert_eq!(
        delete_owned(&js, "HOOKLINE_ci_shared", &first)
            .await
            .expect("deleted"),
        Cleanup::Done
    );
    assert_eq!(
        delete_owned(&js, "HOOKLINE_ci_shared", &first)
            .await
            .expect("answered"),
        Cleanup::Missing
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn provisioning_without_an_owner_updates_but_keeps_the_mark() {
    let nats = start();
    let js = connect(&nats).await;
    let owner = StreamOwner::new("uid-1", "ci", "mixed");
    let endpoint = hookline_api::resolve("ci", "mixed", &spec("720h")).expect("valid");
    ready(ensure(&js, &endpoint, Some(&owner), &mut None).await);

    let changed = hookline_api::resolve("ci", "mixed", &spec("24h")).expect("valid");
    provision(&js, &changed).await.expect("--provision");
    let info = js
        .get_stream("HOOKLINE_ci_mixed")
        .await
        .expect("stream")
        .cached_info()
        .clone();
    assert_eq!(info.config.max_age, Duration::from_secs(24 * 3600));
    assert_eq!(
        info.config.metadata.get(OWNER_UID_KEY).map(String::as_str),
        Some("uid-1")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_released_stream_is_adopted_by_the_next_endpoint_of_that_name() {
    let nats = start();
    let js = connect(&nats).await;
    let endpoint = hookline_api::resolve("ci", "kept", &spec("720h")).expect("valid");
    let earlier = StreamOwner::new("uid-earlier", "ci", "kept");
    ready(ensure(&js, &endpoint, Some(&earlier), &mut None).await);
    js.publish("hookline.ci.kept.push", "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");

    assert_eq!(
        release(&js, "HOOKLINE_ci_kept", &earlier)
            .await
            .expect("released"),
        Cleanup::Done
    );
    assert!(
        !metadata(&js, "HOOKLINE_ci_kept")
            .await
            .contains_key(OWNER_UID_KEY)
    );

    let later = StreamOwner::new("uid-later", "ci", "kept");
    let stats = ready(ensure(&js, &endpoint, Some(&later), &mut None).await);
    assert_eq!(stats.messages, 1, "the retained events are there");
    assert_eq!(
        metadata(&js, "HOOKLINE_ci_kept")
            .await
            .get(OWNER_UID_KEY)
            .map(String::as_str),
        Some("uid-later")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overlap_names_the_stream_that_holds_the_subjects() {
    let nats = start();
    let js = connect(&nats).await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "EVERYTHING".into(),
        subjects: vec!["hookline.>".into()],
        ..Default::default()
    })
    .await
    .expect("a stream over every endpoint's subjects");
    let endpoint = hookline_api::resolve("ci", "clash", &spec("720h")).expect("valid");
    let err = ensure(&js, &endpoint, None, &mut None)
        .await
        .expect_err("refused");
    assert_eq!(
        err.error_code(),
        Some(async_nats::jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP)
    );
    let message = explain(&js, &endpoint, &err).await;
    assert!(
        message.starts_with("NATS refused stream HOOKLINE_ci_clash: its subjects hookline.ci.clash.> overlap with those of stream EVERYTHING;"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_no_room_diagnosis_reads_the_accounts_reservation() {
    let nats = start();
    let js = connect(&nats).await;
    let mut capped = with_retention(StreamRetention::Archive);
    if let Some(stream) = capped.stream.as_mut() {
        stream.max_bytes = Some(512 * 1024 * 1024);
    }
    let endpoint = hookline_api::resolve("ci", "room", &capped).expect("valid");
    ready(ensure(&js, &endpoint, None, &mut None).await);
    // The answer NATS gives when the store cannot hold another reservation.
    let refusal: async_nats::jetstream::Error = serde_json::from_value(serde_json::json!({
        "code": 500,
        "err_code": async_nats::jetstream::ErrorCode::INSUFFICIENT_RESOURCES.0,
        "description": "insufficient storage resources available",
    }))
    .expect("a JetStream API error");
    let err = ProvisionError::Stream {
        stream: "HOOKLINE_ci_room".into(),
        action: "create",
        source: async_nats::jetstream::context::CreateStreamError::new(
            async_nats::jetstream::context::CreateStreamErrorKind::JetStream(refusal),
        )
        .into(),
    };
    let diagnosis = diagnose(&js, &endpoint, &err).await;
    let storage = diagnosis.storage.expect("the account's figures");
    assert_eq!(storage.reserved, 512 * 1024 * 1024, "the archive's cap");
    let message = err.describe(&endpoint, &diagnosis);
    assert!(
        message.contains("(maxBytes 512 MiB; 512 MiB reserved"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_list_connects_past_a_seed_that_is_down() {
    let nats = start();
    let down = format!("nats://127.0.0.1:{}", hookline_e2e::free_port());
    let list = format!("{down},{}", nats.url());
    let client = hookline_api::nats::connect(&list, &Default::default(), "list-test")
        .await
        .expect("a list is a valid --nats-url");
    let js = async_nats::jetstream::new(client);
    tokio::time::timeout(Duration::from_secs(20), js.query_account())
        .await
        .expect("connected through the second server in time")
        .expect("JetStream answers");
}

/// The NATS Helm chart's default JetStream file store.
const CHART_FILE_STORE: u64 = 10 * 1024 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_default_endpoints_fit_the_nats_charts_default_file_store() {
    let nats =
        tokio::task::block_in_place(|| NatsServer::start_with_max_file_store(CHART_FILE_STORE))
            .expect("nats-server starts");
    let js = connect(&nats).await;
    let endpoints: Vec<_> = (0..1000)
        .map(|index| {
            hookline_api::resolve("fleet", &format!("endpoint-{index}"), &spec("720h"))
                .expect("valid")
        })
        .collect();
    let outcomes: Vec<_> = futures::stream::iter(&endpoints)
        .map(|endpoint| {
            let js = js.clone();
            async move { ensure(&js, endpoint, None, &mut None).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let refused: Vec<_> = outcomes
        .iter()
        .filter_map(|outcome| outcome.as_ref().err())
        .collect();
    assert!(
        refused.is_empty(),
        "{} of 1000 default endpoints provisioned; the first refusal: {}",
        1000 - refused.len(),
        refused[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_buffer_made_with_a_reservation_loses_it_on_the_next_resync_and_then_holds_still() {
    let nats = start();
    let js = connect(&nats).await;
    let endpoint = hookline_api::resolve("ci", "old", &with_retention(StreamRetention::Buffer))
        .expect("valid");
    // What earlier Hooklines made: the buffer's cap as the stream's max_bytes.
    let mut reserving = hookline_api::provision::stream_config(&endpoint);
    reserving.max_bytes = 512 * 1024 * 1024;
    js.create_stream(reserving).await.expect("an old buffer");
    let mut calls = ApiCalls::watch(&nats).await;
    let owner = StreamOwner::new("uid-1", "ci", "old");
    let mut known = None;

    ready(ensure(&js, &endpoint, Some(&owner), &mut known).await);
    let first = calls.take().await;
    assert!(
        first.contains(&"STREAM.UPDATE.HOOKLINE_ci_old".to_owned()),
        "{first:?}"
    );
    let config = js
        .get_stream("HOOKLINE_ci_old")
        .await
        .expect("stream")
        .cached_info()
        .config
        .clone();
    assert_eq!(config.max_bytes, -1, "the reservation is gone");
    assert_eq!(config.retention, RetentionPolicy::WorkQueue);
    calls.take().await;

    ready(ensure(&js, &endpoint, Some(&owner), &mut known).await);
    assert_eq!(calls.take().await, ["STREAM.INFO.HOOKLINE_ci_old"]);
}

fn shared_member(name: &str) -> hookline_api::ValidatedEndpoint {
    hookline_api::resolve("ci", name, &with_retention(StreamRetention::Buffer))
        .expect("valid")
        .in_shared_stream(None, "shop", StreamLimits::default())
}

/// Publishes one event of `member` with event id `id`, stored.
async fn publish_member(
    js: &async_nats::jetstream::Context,
    member: &hookline_api::ValidatedEndpoint,
    id: &str,
) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", member.stream.message_id(id).as_ref());
    let ack = js
        .publish_with_headers(member.stream.subject_for("push"), headers, "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    assert!(
        !ack.duplicate,
        "the same event id of two members is two events"
    );
}

async fn consumer_names(js: &async_nats::jetstream::Context, stream: &str) -> Vec<String> {
    let mut names: Vec<String> = js
        .get_stream(stream)
        .await
        .expect("stream")
        .consumer_names()
        .map(|name| name.expect("name"))
        .collect()
        .await;
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn members_of_a_shared_stream_make_no_durable_and_count_their_own_messages() {
    let nats = start();
    let js = connect(&nats).await;
    let mut calls = ApiCalls::watch(&nats).await;
    let (first, second) = (shared_member("first"), shared_member("second.eu"));
    assert_eq!(first.stream.name, "HOOKLINE_ci_POOL_shop");
    assert_eq!(
        first.stream.subject_for("a.b"),
        "hookline.ci.POOL_shop.first.a_b"
    );
    assert_eq!(
        second.consumer.durable_name, "hookline-consumer",
        "the pool's one durable"
    );
    assert_eq!(second.stream.message_id("evt_1"), "second.eu:evt_1");
    let (mut known_first, mut known_second) = (None, None);

    ready(ensure(&js, &first, None, &mut known_first).await);
    ready(ensure(&js, &second, None, &mut known_second).await);
    publish_member(&js, &first, "evt_1").await;
    publish_member(&js, &second, "evt_1").await;
    publish_member(&js, &second, "evt_2").await;
    calls.take().await;

    let stats = ready(ensure(&js, &second, None, &mut known_second).await);
    assert_eq!(
        (stats.messages, stats.pending),
        (2, 2),
        "the member's own events only"
    );
    assert_eq!(
        calls.take().await,
        ["STREAM.INFO.HOOKLINE_ci_POOL_shop"],
        "a member without a listing costs one STREAM.INFO, filtered on its subjects"
    );
    assert!(
        consumer_names(&js, "HOOKLINE_ci_POOL_shop")
            .await
            .is_empty(),
        "members make no durable"
    );
    let info = js
        .get_stream("HOOKLINE_ci_POOL_shop")
        .await
        .expect("the pool's stream")
        .cached_info()
        .clone();
    assert_eq!(info.config.retention, RetentionPolicy::WorkQueue);
    assert_eq!(info.config.max_bytes, -1, "nothing reserved");
    assert_eq!(info.config.subjects, ["hookline.ci.POOL_shop.>"]);
    assert_eq!(
        shared_bytes(2, info.state.messages, info.state.bytes),
        info.state.bytes * 2 / 3
    );

    // With its count from the pool's fresh listing, no call at all.
    calls.take().await;
    let stats = ready(ensure_listed(&js, &second, None, &mut known_second, Some(5)).await);
    assert_eq!((stats.messages, stats.pending), (5, 5));
    assert!(calls.take().await.is_empty(), "the listing answers");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pools_stream_info_counts_each_members_messages_in_one_call() {
    let nats = start();
    let js = connect(&nats).await;
    let (first, second) = (shared_member("first"), shared_member("second.eu"));
    let config = pool_stream_config(
        "HOOKLINE_ci_POOL_shop",
        vec![
            "hookline.ci.POOL_shop.first.>".to_owned(),
            "hookline.ci.POOL_shop.second_eu.>".to_owned(),
        ],
        "ci/shop",
        StreamLimits::default(),
    );
    let owner = StreamOwner::new("pool-uid", "ci", "shop");
    let made = ensure_pool_stream(&js, config.clone(), "hookline.ci.POOL_shop", Some(&owner))
        .await
        .expect("made")
        .expect("ours");
    assert!(made.member_messages.is_empty());
    publish_member(&js, &first, "evt_1").await;
    for id in ["evt_1", "evt_2", "evt_3"] {
        publish_member(&js, &second, id).await;
    }
    // Two event types of one member are summed.
    js.publish("hookline.ci.POOL_shop.second_eu.other", "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");

    let mut calls = ApiCalls::watch(&nats).await;
    let state = ensure_pool_stream(&js, config, "hookline.ci.POOL_shop", Some(&owner))
        .await
        .expect("read")
        .expect("ours");
    assert_eq!(
        calls.take().await,
        ["STREAM.INFO.HOOKLINE_ci_POOL_shop"],
        "a steady pool stream: one STREAM.INFO with its counts"
    );
    assert_eq!(
        state.member_messages,
        HashMap::from([("first".to_owned(), 1), ("second_eu".to_owned(), 4)])
    );
    assert_eq!(state.info.state.messages, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pools_one_durable_replaces_the_member_durables_and_keeps_every_message() {
    let nats = start();
    let js = connect(&nats).await;
    let (first, second) = (shared_member("first"), shared_member("second"));
    let name = "HOOKLINE_ci_POOL_shop";
    ready(ensure(&js, &first, None, &mut None).await);
    let stream = js.get_stream(name).await.expect("stream");
    // The earlier layout: a durable per member, filtered on its subjects.
    for member in ["first", "second"] {
        stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some(format!("hookline-consumer-{member}")),
                filter_subject: format!("hookline.ci.POOL_shop.{member}.>"),
                ..Default::default()
            })
            .await
            .expect("a member's durable");
    }
    publish_member(&js, &first, "evt_1").await;
    publish_member(&js, &second, "evt_1").await;
    publish_member(&js, &second, "evt_2").await;
    // One delivered and not acknowledged when its durable goes.
    let delivered: PullConsumer = stream
        .get_consumer("hookline-consumer-second")
        .await
        .expect("durable");
    let mut batch = delivered
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .expect("fetch");
    batch.next().await.expect("one").expect("message");

    let wanted = pool_consumer_config("ci/shop", 2);
    let mut changes = ensure_pool_consumer(&js, name, &wanted)
        .await
        .expect("ensured");
    changes.deleted.sort();
    assert_eq!(
        changes,
        PoolConsumerChanges {
            deleted: vec![
                "hookline-consumer-first".to_owned(),
                "hookline-consumer-second".to_owned()
            ],
            applied: true,
        }
    );
    assert_eq!(consumer_names(&js, name).await, ["hookline-consumer"]);
    let info = js
        .get_stream(name)
        .await
        .expect("stream")
        .cached_info()
        .clone();
    assert_eq!(info.state.messages, 3, "no message lost");
    let pool: PullConsumer = js
        .get_stream(name)
        .await
        .expect("stream")
        .get_consumer("hookline-consumer")
        .await
        .expect("the pool's durable");
    let config = &pool.cached_info().config;
    assert_eq!(config.filter_subject, "", "unfiltered");
    assert_eq!(config.max_ack_pending, 20_000);
    assert_eq!(
        pool.cached_info().num_pending,
        3,
        "every message, the one in flight too"
    );

    // A steady state: one CONSUMER.LIST and nothing changed.
    let mut calls = ApiCalls::watch(&nats).await;
    let changes = ensure_pool_consumer(&js, name, &wanted)
        .await
        .expect("steady");
    assert_eq!(changes, PoolConsumerChanges::default());
    assert_eq!(calls.take().await, [format!("CONSUMER.LIST.{name}")]);

    // Its settings follow the pool's.
    let more = pool_consumer_config("ci/shop", 3);
    let changes = ensure_pool_consumer(&js, name, &more)
        .await
        .expect("updated");
    assert!(changes.applied);
    let pool: PullConsumer = js
        .get_stream(name)
        .await
        .expect("stream")
        .get_consumer("hookline-consumer")
        .await
        .expect("the pool's durable");
    assert_eq!(pool.cached_info().config.max_ack_pending, 30_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_consumer_on_the_pools_stream_is_left_alone_and_the_refusal_reported() {
    let nats = start();
    let js = connect(&nats).await;
    let name = "HOOKLINE_ci_POOL_shop";
    ready(ensure(&js, &shared_member("first"), None, &mut None).await);
    js.get_stream(name)
        .await
        .expect("stream")
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("someone-elses".to_owned()),
            filter_subject: "hookline.ci.POOL_shop.first.>".to_owned(),
            ..Default::default()
        })
        .await
        .expect("a consumer of someone else");
    let refused = ensure_pool_consumer(&js, name, &pool_consumer_config("ci/shop", 1)).await;
    assert!(
        matches!(refused, Err(ProvisionError::Consumer { .. })),
        "{refused:?}"
    );
    assert_eq!(consumer_names(&js, name).await, ["someone-elses"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pools_stream_takes_the_pools_limits_and_members_never_change_them() {
    let nats = start();
    let js = connect(&nats).await;
    let limits = StreamLimits {
        max_age: Duration::from_secs(3600),
        ..StreamLimits::default()
    };
    let member = hookline_api::resolve("ci", "first", &with_retention(StreamRetention::Buffer))
        .expect("valid")
        .in_shared_stream(None, "shop", limits);
    let config = pool_stream_config(
        "HOOKLINE_ci_POOL_shop",
        vec!["hookline.ci.POOL_shop.>".to_owned()],
        "ci/shop",
        limits,
    );
    assert_eq!(
        stream_config(&member),
        config,
        "a member makes the pool's stream as the pool does"
    );
    let owner = StreamOwner::new("pool-uid", "ci", "shop");
    let prefix = "hookline.ci.POOL_shop";
    let info = ensure_pool_stream(&js, config.clone(), prefix, Some(&owner))
        .await
        .expect("made")
        .expect("ours")
        .info;
    assert_eq!(info.config.max_age, Duration::from_secs(3600));

    let other = hookline_api::resolve("ci", "second", &with_retention(StreamRetention::Buffer))
        .expect("valid")
        .in_shared_stream(None, "shop", StreamLimits::default());
    ready(ensure(&js, &other, None, &mut None).await);
    let kept = js
        .get_stream("HOOKLINE_ci_POOL_shop")
        .await
        .expect("stream");
    assert_eq!(
        kept.cached_info().config.max_age,
        Duration::from_secs(3600),
        "left as the pool set it"
    );

    let longer = StreamLimits::default();
    let changed = pool_stream_config(
        "HOOKLINE_ci_POOL_shop",
        vec!["hookline.ci.POOL_shop.first.>".to_owned()],
        "ci/shop",
        longer,
    );
    let info = ensure_pool_stream(&js, changed, prefix, Some(&owner))
        .await
        .expect("updated")
        .expect("ours")
        .info;
    assert_eq!(info.config.max_age, longer.max_age);
    assert_eq!(
        info.config.subjects,
        ["hookline.ci.POOL_shop.first.>"],
        "a member that left gets no more events"
    );
    let foreign = StreamOwner::new("another-uid", "ci", "shop");
    assert!(
        ensure_pool_stream(&js, config, prefix, Some(&foreign))
            .await
            .expect("read")
            .is_err(),
        "another owner's pool stream is left alone"
    );
}

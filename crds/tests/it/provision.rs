//! The shared provisioning function against a real nats-server.
#![cfg(feature = "jetstream")]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::RetentionPolicy;
use futures::StreamExt;
use hookline_api::provision::{
    Cleanup, Ensured, Listed, OWNER_ENDPOINT_KEY, OWNER_UID_KEY, ProvisionError, StreamOwner,
    StreamStats, delete_owned, delete_stream, diagnose, ensure, ensure_listed, ensure_pool_stream,
    explain, list_pending, pool_stream_config, provision, release, shared_bytes, stream_config,
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

#[tokio::test(flavor = "multi_thread")]
async fn members_of_a_shared_stream_each_get_a_durable_on_their_subjects_and_their_own_pending() {
    let nats = start();
    let js = connect(&nats).await;
    let mut calls = ApiCalls::watch(&nats).await;
    let member = |name: &str| {
        hookline_api::resolve("ci", name, &with_retention(StreamRetention::Buffer))
            .expect("valid")
            .in_shared_stream(None, "shop", StreamLimits::default())
    };
    let (first, second) = (member("first"), member("second.eu"));
    assert_eq!(first.stream.name, "HOOKLINE_ci_POOL_shop");
    assert_eq!(
        first.stream.subject_for("a.b"),
        "hookline.ci.POOL_shop.first.a_b"
    );
    assert_eq!(second.consumer.durable_name, "hookline-consumer-second_eu");
    assert_eq!(second.stream.message_id("evt_1"), "second.eu:evt_1");
    let (mut known_first, mut known_second) = (None, None);

    ready(ensure(&js, &first, None, &mut known_first).await);
    ready(ensure(&js, &second, None, &mut known_second).await);
    for (subject, id) in [
        (
            first.stream.subject_for("push"),
            first.stream.message_id("evt_1"),
        ),
        (
            second.stream.subject_for("push"),
            second.stream.message_id("evt_1"),
        ),
        (
            second.stream.subject_for("push"),
            second.stream.message_id("evt_2"),
        ),
    ] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_ref());
        let ack = js
            .publish_with_headers(subject, headers, "{}".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
        assert!(
            !ack.duplicate,
            "the same event id of two members is two events"
        );
    }
    calls.take().await;

    let stats = ready(ensure(&js, &second, None, &mut known_second).await);
    assert_eq!(stats.pending, 2, "the member's own events only");
    assert_eq!(
        calls.take().await,
        ["CONSUMER.INFO.HOOKLINE_ci_POOL_shop.hookline-consumer-second_eu"],
        "a steady member costs one CONSUMER.INFO"
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
}

#[tokio::test(flavor = "multi_thread")]
async fn a_settled_member_takes_its_pending_from_a_later_listing_and_is_made_again_when_it_lacks_it()
 {
    let nats = start();
    let js = connect(&nats).await;
    let mut calls = ApiCalls::watch(&nats).await;
    let member = |name: &str| {
        hookline_api::resolve("ci", name, &with_retention(StreamRetention::Buffer))
            .expect("valid")
            .in_shared_stream(None, "shop", StreamLimits::default())
    };
    let (first, second) = (member("first"), member("second"));
    let before_made = Instant::now();
    let (mut known_first, mut known_second) = (None, None);
    ready(ensure(&js, &first, None, &mut known_first).await);
    ready(ensure(&js, &second, None, &mut known_second).await);
    for _ in 0..2 {
        js.publish(second.stream.subject_for("push"), "{}".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    calls.take().await;

    let taken = Instant::now();
    let listing = list_pending(&js, "HOOKLINE_ci_POOL_shop")
        .await
        .expect("listed");
    assert_eq!(
        calls.take().await,
        ["CONSUMER.LIST.HOOKLINE_ci_POOL_shop"],
        "one page of up to 256"
    );
    assert_eq!(
        listing,
        HashMap::from([
            ("hookline-consumer-first".to_owned(), 0),
            ("hookline-consumer-second".to_owned(), 2),
        ])
    );
    let listed = |pending: Option<u64>| Some(Listed { taken, pending });

    let stats = ready(ensure_listed(&js, &second, None, &mut known_second, listed(Some(2))).await);
    assert_eq!((stats.messages, stats.pending), (2, 2));
    assert!(calls.take().await.is_empty(), "the listing answers");

    // A listing asked for before the durable was made says nothing of it.
    let early = Some(Listed {
        taken: before_made,
        pending: Some(99),
    });
    let stats = ready(ensure_listed(&js, &second, None, &mut known_second, early).await);
    assert_eq!(stats.pending, 2);
    assert_eq!(
        calls.take().await,
        ["CONSUMER.INFO.HOOKLINE_ci_POOL_shop.hookline-consumer-second"]
    );

    // A durable a later listing lacks is made again, with its events.
    js.delete_consumer_from_stream("hookline-consumer-second", "HOOKLINE_ci_POOL_shop")
        .await
        .expect("deleted");
    calls.take().await;
    let stats = ready(ensure_listed(&js, &second, None, &mut known_second, listed(None)).await);
    assert_eq!(stats.pending, 2);
    assert!(
        calls
            .take()
            .await
            .iter()
            .any(|call| call.starts_with("CONSUMER.CREATE.HOOKLINE_ci_POOL_shop")),
        "made again"
    );
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
    let info = ensure_pool_stream(&js, config.clone(), Some(&owner))
        .await
        .expect("made")
        .expect("ours");
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
    let info = ensure_pool_stream(&js, changed, Some(&owner))
        .await
        .expect("updated")
        .expect("ours");
    assert_eq!(info.config.max_age, longer.max_age);
    assert_eq!(
        info.config.subjects,
        ["hookline.ci.POOL_shop.first.>"],
        "a member that left gets no more events"
    );
    let foreign = StreamOwner::new("another-uid", "ci", "shop");
    assert!(
        ensure_pool_stream(&js, config, Some(&foreign))
            .await
            .expect("read")
            .is_err(),
        "another owner's pool stream is left alone"
    );
}

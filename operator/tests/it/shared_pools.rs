//! A WebhookPool with a shared stream (`spec.stream`) against the in-memory
//! API with a real nats-server: the pool stream lists its served members'
//! subjects and has one durable, the pool's (member durables of the earlier
//! layout go, their events stay), a member's pending is its messages there,
//! a joining member's own stream is retired and deleted once drained, a
//! leaving member is drained before the pool forgets it, a deleted member's
//! events go (or, with `Retain`, are drained), and what a member of such a
//! pool cannot set.

use crate::support;

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use hookline_api::conditions::{self, reasons};
use hookline_api::provision::OWNER_UID_KEY;
use hookline_api::spec::WebhookEndpoint;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde_json::{Value, json};
use support::{Harness, answered_jetstream_calls, secret};

const NS: &str = "shop";
const POOL: &str = "shared";
const POOL_STREAM: &str = "HOOKLINE_shop_POOL_shared";

fn shared_pool() -> Value {
    json!({
        "apiVersion": "hookline.io/v1alpha1",
        "kind": "WebhookPool",
        "metadata": {"name": POOL, "namespace": NS, "generation": 1},
        "spec": {
            "consumer": {"databaseSecretRef": {"name": "db", "key": "url"}},
            "stream": {"maxAge": "24h"},
        },
    })
}

fn endpoint(name: &str, pool: Option<&str>, stream: Option<Value>) -> WebhookEndpoint {
    let mut spec = json!({
        "provider": "github",
        "secretRef": {"name": format!("{name}-signing")},
        "ingress": {"host": "hooks.example.com"},
        // Below the test server's max_payload, so StreamReady says Provisioned.
        "request": {"maxBodyBytes": 65536},
    });
    match pool {
        Some(pool) => spec["pool"] = json!(pool),
        None => spec["consumer"] = json!({"databaseSecretRef": {"name": "db", "key": "url"}}),
    }
    if let Some(stream) = stream {
        spec["stream"] = stream;
    }
    serde_json::from_value(json!({
        "apiVersion": "hookline.io/v1alpha1",
        "kind": "WebhookEndpoint",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }))
    .expect("endpoint")
}

/// Stores the database Secret and, per endpoint, its signing Secret and itself.
fn add(harness: &Harness, endpoints: &[WebhookEndpoint]) {
    harness
        .fake
        .insert(&secret(NS, "db", "url", "postgres://db/hooks"));
    for endpoint in endpoints {
        let name = endpoint.metadata.name.clone().expect("name");
        harness.fake.insert(&secret(
            NS,
            &format!("{name}-signing"),
            "secret",
            &format!("key-of-{name}"),
        ));
        harness.fake.insert(endpoint);
    }
}

fn members(names: &[&str]) -> Vec<WebhookEndpoint> {
    names
        .iter()
        .map(|name| endpoint(name, Some(POOL), None))
        .collect()
}

/// Endpoints settled (finalizer, then a pass), the pool reconciled with its
/// Deployments available, and every endpoint once more.
async fn converge(harness: &mut Harness, names: &[&str]) {
    for name in names {
        harness.settle(NS, name).await;
    }
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    harness.fake.make_deployments_available();
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    for name in names {
        harness.reconcile(NS, name).await.expect("member");
    }
}

fn js(harness: &Harness) -> jetstream::Context {
    jetstream::new(harness.ctx.nats.clone())
}

async fn stream_info(harness: &Harness, name: &str) -> Option<jetstream::stream::Info> {
    let mut stream = js(harness).get_stream(name).await.ok()?;
    stream.info().await.ok().cloned()
}

/// The durable's filter subject, if it exists.
async fn durable(harness: &Harness, stream: &str, name: &str) -> Option<String> {
    let stream = js(harness).get_stream(stream).await.ok()?;
    let consumer: jetstream::consumer::PullConsumer = stream.get_consumer(name).await.ok()?;
    Some(consumer.cached_info().config.filter_subject.clone())
}

/// The names of the consumers on `stream`, sorted.
async fn consumers(harness: &Harness, stream: &str) -> Vec<String> {
    let stream = js(harness).get_stream(stream).await.expect("stream");
    let mut names: Vec<String> = stream
        .consumer_names()
        .map(|name| name.expect("a consumer name"))
        .collect()
        .await;
    names.sort();
    names
}

/// Publishes `count` events to `subject`, each stored.
async fn publish(harness: &Harness, subject: &str, count: usize) {
    let js = js(harness);
    for index in 0..count {
        js.publish(subject.to_owned(), format!("event {index}").into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
}

/// What a pool consumer does: fetches and acknowledges every event of
/// `durable` (up to 100), until the stream holds none of them. Returns how
/// many it acknowledged.
async fn drain(harness: &Harness, stream: &str, durable: &str) -> usize {
    let stream = js(harness).get_stream(stream).await.expect("stream");
    let consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer(durable).await.expect("durable");
    let mut messages = consumer
        .fetch()
        .max_messages(100)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .expect("fetch");
    let mut acknowledged = 0;
    while let Some(message) = messages.next().await {
        message.expect("message").double_ack().await.expect("ack");
        acknowledged += 1;
    }
    acknowledged
}

fn subjects(info: &jetstream::stream::Info) -> Vec<&str> {
    info.config.subjects.iter().map(String::as_str).collect()
}

fn keys<T>(map: Option<std::collections::BTreeMap<String, T>>) -> Vec<String> {
    map.unwrap_or_default().into_keys().collect()
}

/// The pool keeps `left`'s manifest (beside b's, the one member served),
/// not its signing key, while the stream holds its events, and says so.
fn assert_keeps_draining(harness: &Harness, left: &str) {
    let map: ConfigMap = harness
        .fake
        .typed(NS, "shared-pool-endpoints")
        .expect("ConfigMap");
    let mut manifests = vec![format!("{left}.yaml"), "b.yaml".to_owned()];
    manifests.sort();
    assert_eq!(
        keys(map.data),
        manifests,
        "{left}'s manifest stays while its events wait"
    );
    let secrets: Secret = harness
        .fake
        .typed(NS, "shared-pool-secrets")
        .expect("Secret");
    assert_eq!(keys(secrets.data), ["b"], "{left} is not served");
    let ready = pool_ready(harness);
    assert!(
        ready
            .message
            .contains(&format!("keeps draining 1 that left: {left}")),
        "{}",
        ready.message
    );
}

fn pool_condition(
    harness: &Harness,
    type_: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    harness
        .pool(NS, POOL)
        .status
        .expect("pool status")
        .conditions
        .into_iter()
        .find(|condition| condition.type_ == type_)
        .expect("the condition")
}

fn pool_ready(harness: &Harness) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    pool_condition(harness, conditions::READY)
}

fn pool_stream_ready(
    harness: &Harness,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    pool_condition(harness, conditions::STREAM_READY)
}

fn args(harness: &Harness, deployment: &str) -> Vec<String> {
    let deployment: Deployment = harness.fake.typed(NS, deployment).expect("Deployment");
    let value = serde_json::to_value(deployment).expect("JSON");
    value["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// An endpoint's pending events and stream bytes, as its metrics have them.
fn figures(harness: &Harness, name: &str) -> (i64, i64) {
    let label = hookline_operator::metrics::EndpointLabel {
        endpoint: format!("{NS}/{name}"),
    };
    let metrics = &harness.metrics;
    (
        metrics.endpoint_pending.get_or_create(&label).get(),
        metrics.endpoint_stream_bytes.get_or_create(&label).get(),
    )
}

/// Counts the JetStream API calls nats-server answers from its start
/// ([`answered_jetstream_calls`]).
struct Calls {
    before: u64,
}

impl Calls {
    async fn start(harness: &Harness) -> Calls {
        Calls {
            before: answered_jetstream_calls(&harness.nats.monitor_url()).await,
        }
    }

    async fn made(self, harness: &Harness) -> usize {
        let made = answered_jetstream_calls(&harness.nats.monitor_url()).await - self.before;
        usize::try_from(made).expect("a count")
    }
}

/// JetStream API calls one reconcile of each of `names` makes.
async fn calls_of_a_resync(harness: &mut Harness, names: &[&str]) -> usize {
    let calls = Calls::start(harness).await;
    for name in names {
        harness.reconcile(NS, name).await.expect("resync");
    }
    calls.made(harness).await
}

/// JetStream API calls one reconcile of the pool makes.
async fn calls_of_a_pool_resync(harness: &mut Harness) -> usize {
    let calls = Calls::start(harness).await;
    harness.reconcile_pool(NS, POOL).await.expect("pool resync");
    calls.made(harness).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_stream_lists_each_served_member_and_has_the_pools_one_durable() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&shared_pool());
    add(&harness, &members(&["b", "a"]));
    converge(&mut harness, &["a", "b"]).await;

    let info = stream_info(&harness, POOL_STREAM)
        .await
        .expect("the pool's stream");
    assert_eq!(
        subjects(&info),
        [
            "hookline.shop.POOL_shared.a.>",
            "hookline.shop.POOL_shared.b.>"
        ]
    );
    assert_eq!(info.config.max_age, Duration::from_secs(24 * 3600));
    let pool = harness.pool(NS, POOL);
    assert_eq!(
        info.config.metadata.get(OWNER_UID_KEY),
        pool.metadata.uid.as_ref(),
        "marked as the pool's"
    );
    assert_eq!(
        consumers(&harness, POOL_STREAM).await,
        ["hookline-consumer"],
        "one durable, no member's"
    );
    assert_eq!(
        durable(&harness, POOL_STREAM, "hookline-consumer").await,
        Some(String::new()),
        "unfiltered: every member's events"
    );
    for name in ["a", "b"] {
        assert!(
            stream_info(&harness, &format!("HOOKLINE_shop_{name}"))
                .await
                .is_none(),
            "no stream of its own"
        );
        let status = harness.endpoint(NS, name).status.expect("status");
        assert_eq!(status.stream.as_deref(), Some(POOL_STREAM));
        harness.expect_condition(
            NS,
            name,
            conditions::STREAM_READY,
            "True",
            reasons::STREAM_PROVISIONED,
        );
        harness.expect_condition(NS, name, conditions::READY, "True", reasons::RECONCILED);
    }
    let ready = pool_ready(&harness);
    assert_eq!(ready.status, "True", "{}", ready.message);
    let stream_ready = pool
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|condition| condition.type_ == conditions::STREAM_READY)
        .expect("a shared pool's StreamReady");
    assert_eq!(stream_ready.status, "True", "{}", stream_ready.message);
    for deployment in ["shared-pool-receiver", "shared-pool-consumer"] {
        assert!(
            args(&harness, deployment).contains(&"--shared-stream=shared".to_owned()),
            "{deployment}: {:?}",
            args(&harness, deployment)
        );
    }

    // A member's figures are its own: its pending, and its share of the bytes.
    publish(&harness, "hookline.shop.POOL_shared.a.push", 3).await;
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    harness.reconcile(NS, "a").await.expect("a");
    harness.reconcile(NS, "b").await.expect("b");
    // (The status takes new figures once per resync; the metrics at once.)
    let held = stream_info(&harness, POOL_STREAM)
        .await
        .expect("pool stream");
    let all_bytes = i64::try_from(held.state.bytes).expect("bytes");
    assert_eq!(
        figures(&harness, "a"),
        (3, all_bytes),
        "all the events are a's"
    );
    assert_eq!(figures(&harness, "b"), (0, 0));
    assert_eq!(harness.metrics.pool_lag("shop/shared"), Some((3, 2)));

    // A steady member costs no JetStream call while its pool's listing is fresh.
    assert_eq!(calls_of_a_resync(&mut harness, &["a", "b"]).await, 0);
    let stream_ready = harness.expect_condition(
        NS,
        "a",
        conditions::STREAM_READY,
        "True",
        reasons::STREAM_PROVISIONED,
    );
    assert!(
        stream_ready.message.starts_with(
            "stream HOOKLINE_shop_POOL_shared with durable consumer hookline-consumer"
        ),
        "{}",
        stream_ready.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_members_own_stream_is_retired_and_deleted_only_once_drained() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&shared_pool());
    add(&harness, &[endpoint("a", None, None)]);
    harness.settle(NS, "a").await;
    publish(&harness, "hookline.shop.a.push", 2).await;

    harness.edit_endpoint(NS, "a", |object| {
        object["spec"]["pool"] = json!(POOL);
        object["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("consumer");
    });
    converge(&mut harness, &["a"]).await;
    let own = stream_info(&harness, "HOOKLINE_shop_a")
        .await
        .expect("kept while it holds events");
    assert_eq!(subjects(&own), ["hookline_retired.shop.a"]);
    assert_eq!(own.state.messages, 2);
    assert_eq!(
        own.config.retention,
        jetstream::stream::RetentionPolicy::WorkQueue
    );
    let stream_ready = harness.expect_condition(
        NS,
        "a",
        conditions::STREAM_READY,
        "True",
        reasons::STREAM_PROVISIONED,
    );
    assert!(
        stream_ready.message.contains(
            "its own stream HOOKLINE_shop_a takes no more events and still holds 2 event(s)"
        ),
        "{}",
        stream_ready.message
    );
    assert_eq!(
        figures(&harness, "a").0,
        2,
        "the pool's consumer drains them"
    );
    harness.reconcile(NS, "a").await.expect("resync");
    assert!(
        stream_info(&harness, "HOOKLINE_shop_a").await.is_some(),
        "never deleted while it holds events"
    );

    // The pool's consumer drains it through its durable, then it goes.
    drain(&harness, "HOOKLINE_shop_a", "hookline-consumer").await;
    harness.reconcile(NS, "a").await.expect("resync");
    assert!(
        stream_info(&harness, "HOOKLINE_shop_a").await.is_none(),
        "deleted once drained"
    );
    assert_eq!(figures(&harness, "a").0, 0);
    // Once its own stream is gone, no call: its pool's listing answers.
    assert_eq!(calls_of_a_resync(&mut harness, &["a"]).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_leaves_before_its_own_stream_drained_gets_its_subjects_back() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&shared_pool());
    add(&harness, &[endpoint("a", None, None)]);
    harness.settle(NS, "a").await;
    publish(&harness, "hookline.shop.a.push", 1).await;
    harness.edit_endpoint(NS, "a", |object| {
        object["spec"]["pool"] = json!(POOL);
        object["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("consumer");
    });
    converge(&mut harness, &["a"]).await;
    let own = stream_info(&harness, "HOOKLINE_shop_a").await.expect("own");
    assert_eq!(subjects(&own), ["hookline_retired.shop.a"]);

    harness.edit_endpoint(NS, "a", |object| {
        object["spec"].as_object_mut().expect("spec").remove("pool");
        object["spec"]["consumer"] = json!({"databaseSecretRef": {"name": "db", "key": "url"}});
    });
    harness.reconcile(NS, "a").await.expect("dedicated again");
    let own = stream_info(&harness, "HOOKLINE_shop_a").await.expect("own");
    assert_eq!(subjects(&own), ["hookline.shop.a.>"]);
    assert_eq!(own.state.messages, 1, "its events are still there");
    let status = harness.endpoint(NS, "a").status.expect("status");
    assert_eq!(status.stream.as_deref(), Some("HOOKLINE_shop_a"));
    harness.expect_condition(
        NS,
        "a",
        conditions::STREAM_READY,
        "True",
        reasons::STREAM_PROVISIONED,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_member_stays_in_the_config_map_while_the_pool_stream_holds_its_events() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&shared_pool());
    add(&harness, &members(&["a", "b"]));
    converge(&mut harness, &["a", "b"]).await;
    publish(&harness, "hookline.shop.POOL_shared.a.push", 2).await;

    harness.edit_endpoint(NS, "a", |object| {
        object["spec"].as_object_mut().expect("spec").remove("pool");
        object["spec"]["consumer"] = json!({"databaseSecretRef": {"name": "db", "key": "url"}});
    });
    harness.reconcile(NS, "a").await.expect("dedicated");
    let own = stream_info(&harness, "HOOKLINE_shop_a")
        .await
        .expect("its own stream, made again");
    assert_eq!(subjects(&own), ["hookline.shop.a.>"]);
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    let info = stream_info(&harness, POOL_STREAM)
        .await
        .expect("pool stream");
    assert_eq!(
        subjects(&info),
        ["hookline.shop.POOL_shared.b.>"],
        "its subject is out at once"
    );
    assert_keeps_draining(&harness, "a");
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    let map: ConfigMap = harness
        .fake
        .typed(NS, "shared-pool-endpoints")
        .expect("map");
    assert_eq!(keys(map.data), ["a.yaml", "b.yaml"], "still pending");

    // The pool's consumer writes them through the pool's one durable.
    assert_eq!(drain(&harness, POOL_STREAM, "hookline-consumer").await, 2);
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    let map: ConfigMap = harness
        .fake
        .typed(NS, "shared-pool-endpoints")
        .expect("map");
    assert_eq!(keys(map.data), ["b.yaml"], "dropped once drained");
    let ready = pool_ready(&harness);
    assert!(
        !ready.message.contains("keeps draining"),
        "{}",
        ready.message
    );
    assert_eq!(
        consumers(&harness, POOL_STREAM).await,
        ["hookline-consumer"],
        "nothing of a's to delete in JetStream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_member_purges_only_its_subjects_and_one_that_retains_them_is_drained() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&shared_pool());
    let mut all = members(&["a", "b"]);
    all.push(endpoint(
        "c",
        Some(POOL),
        Some(json!({"deletionPolicy": "Retain"})),
    ));
    add(&harness, &all);
    converge(&mut harness, &["a", "b", "c"]).await;
    publish(&harness, "hookline.shop.POOL_shared.a.push", 2).await;
    publish(&harness, "hookline.shop.POOL_shared.b.push", 3).await;
    publish(&harness, "hookline.shop.POOL_shared.c.push", 4).await;

    harness.mark_deleting(NS, "a");
    harness.reconcile(NS, "a").await.expect("cleanup");
    assert!(
        harness
            .fake
            .get("hookline.io/v1alpha1", "WebhookEndpoint", NS, "a")
            .is_none(),
        "the finalizer was removed"
    );
    let info = stream_info(&harness, POOL_STREAM)
        .await
        .expect("pool stream");
    assert_eq!(info.state.messages, 7, "b's and c's are all there");
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    let map: ConfigMap = harness
        .fake
        .typed(NS, "shared-pool-endpoints")
        .expect("map");
    assert_eq!(
        keys(map.data),
        ["b.yaml", "c.yaml"],
        "a is dropped at once: nothing of it is left to write"
    );

    harness.mark_deleting(NS, "c");
    harness.reconcile(NS, "c").await.expect("cleanup");
    let info = stream_info(&harness, POOL_STREAM)
        .await
        .expect("pool stream");
    assert_eq!(info.state.messages, 7, "Retain keeps c's events");

    // Its events are drained under its last manifest, as a leaving member's.
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    let info = stream_info(&harness, POOL_STREAM)
        .await
        .expect("pool stream");
    assert_eq!(subjects(&info), ["hookline.shop.POOL_shared.b.>"]);
    assert_keeps_draining(&harness, "c");
    assert_eq!(
        consumers(&harness, POOL_STREAM).await,
        ["hookline-consumer"]
    );

    assert_eq!(drain(&harness, POOL_STREAM, "hookline-consumer").await, 7);
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    let map: ConfigMap = harness
        .fake
        .typed(NS, "shared-pool-endpoints")
        .expect("map");
    assert_eq!(keys(map.data), ["b.yaml"], "dropped once drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_a_shared_stream_is_a_buffer_and_leaves_the_limits_to_its_pool() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&shared_pool());
    add(
        &harness,
        &[
            endpoint(
                "a",
                Some(POOL),
                Some(
                    json!({"retention": "Archive", "maxAge": "1h", "replicas": 3,
                    "duplicateWindow": "1m"}),
                ),
            ),
            endpoint(
                "b",
                Some(POOL),
                Some(json!({"maxBytes": 1048576, "deletionPolicy": "Retain"})),
            ),
        ],
    );
    harness.settle(NS, "a").await;
    let ready =
        harness.expect_condition(NS, "a", conditions::READY, "False", reasons::INVALID_SPEC);
    for field in [
        "spec.stream.retention: WebhookPool shared has a shared stream, which holds Buffers only",
        "spec.stream.maxAge: WebhookPool shared's shared stream sets it for every member",
        "spec.stream.replicas: WebhookPool shared's shared stream sets it for every member",
        "spec.stream.duplicateWindow: WebhookPool shared's shared stream sets it for every member",
    ] {
        assert!(
            ready.message.contains(field),
            "{field} in {}",
            ready.message
        );
    }
    converge(&mut harness, &["b"]).await;
    harness.expect_condition(NS, "b", conditions::READY, "True", reasons::RECONCILED);
    let status = harness.endpoint(NS, "b").status.expect("status");
    assert_eq!(status.stream_limit_bytes, Some(1_048_576), "its own cap");
    let info = stream_info(&harness, POOL_STREAM)
        .await
        .expect("pool stream");
    assert_eq!(subjects(&info), ["hookline.shop.POOL_shared.b.>"]);

    // The same endpoints in a pool without a shared stream are fine.
    let mut plain = Harness::start(true).await;
    let mut pool = shared_pool();
    pool["spec"].as_object_mut().expect("spec").remove("stream");
    plain.fake.insert(&pool);
    add(
        &plain,
        &[endpoint(
            "a",
            Some(POOL),
            Some(json!({"retention": "Archive", "maxAge": "1h"})),
        )],
    );
    plain.settle(NS, "a").await;
    plain.expect_condition(
        NS,
        "a",
        conditions::STREAM_READY,
        "True",
        reasons::STREAM_PROVISIONED,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_a_shared_stream_cannot_refetch() {
    let refetching = || {
        let mut member = endpoint("a", Some(POOL), None);
        let mut spec = serde_json::to_value(&member.spec).expect("spec");
        spec["consumer"] =
            json!({"refetch": {"urlTemplate": "https://api.example.com/items/{objectId}"}});
        spec["event"] = json!({"objectId": "json:/id"});
        member.spec = serde_json::from_value(spec).expect("spec");
        member
    };
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&shared_pool());
    add(&harness, &[refetching()]);
    harness.settle(NS, "a").await;
    let ready =
        harness.expect_condition(NS, "a", conditions::READY, "False", reasons::INVALID_SPEC);
    assert!(
        ready.message.contains(
            "spec.consumer.refetch: WebhookPool shared has a shared stream, whose one durable"
        ),
        "{}",
        ready.message
    );
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    let map: ConfigMap = harness
        .fake
        .typed(NS, "shared-pool-endpoints")
        .expect("ConfigMap");
    assert!(keys(map.data).is_empty(), "not served");

    // The same endpoint in a pool without a shared stream is fine.
    let mut plain = Harness::start(true).await;
    let mut pool = shared_pool();
    pool["spec"].as_object_mut().expect("spec").remove("stream");
    plain.fake.insert(&pool);
    add(&plain, &[refetching()]);
    plain.settle(NS, "a").await;
    let findings = plain.endpoint(NS, "a").status.expect("status").conditions;
    assert!(
        findings
            .iter()
            .all(|condition| condition.reason != reasons::INVALID_SPEC),
        "{findings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_spec_stream_was_removed_keeps_its_shared_stream_and_says_so() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&shared_pool());
    add(&harness, &members(&["a"]));
    converge(&mut harness, &["a"]).await;

    // An API server without the CRD's rule would let this through.
    harness
        .fake
        .edit("hookline.io/v1alpha1", "WebhookPool", NS, POOL, |object| {
            object["spec"]
                .as_object_mut()
                .expect("spec")
                .remove("stream");
            object["metadata"]["generation"] = json!(2);
        });
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    harness.reconcile(NS, "a").await.expect("member");
    let ready = pool_ready(&harness);
    assert!(
        ready
            .message
            .contains("a pool's shared stream cannot be turned off"),
        "{}",
        ready.message
    );
    assert!(args(&harness, "shared-pool-consumer").contains(&"--shared-stream=shared".to_owned()));
    let info = stream_info(&harness, POOL_STREAM)
        .await
        .expect("pool stream");
    assert_eq!(subjects(&info), ["hookline.shop.POOL_shared.a.>"]);
    assert_eq!(
        info.config.max_age,
        hookline_api::defaults::MAX_AGE,
        "the default limits"
    );
    let status = harness.endpoint(NS, "a").status.expect("status");
    assert_eq!(status.stream.as_deref(), Some(POOL_STREAM));
    assert!(stream_info(&harness, "HOOKLINE_shop_a").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_pools_listing_fresh_members_make_no_call_and_the_pool_two() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&shared_pool());
    let names = ["a", "b", "c"];
    add(&harness, &members(&names));
    converge(&mut harness, &names).await;
    publish(&harness, "hookline.shop.POOL_shared.a.push", 2).await;

    // One STREAM.INFO (with the messages per subject) and one CONSUMER.LIST.
    assert_eq!(calls_of_a_pool_resync(&mut harness).await, 1 + 1);
    assert_eq!(calls_of_a_resync(&mut harness, &names).await, 0);
    assert_eq!(figures(&harness, "a").0, 2, "pending, from the listing");
    assert_eq!(figures(&harness, "b").0, 0);
    harness.expect_condition(NS, "a", conditions::READY, "True", reasons::RECONCILED);

    // A member joining after the pool's listing takes its count from it too.
    add(&harness, &members(&["d"]));
    harness.settle(NS, "d").await;
    assert_eq!(calls_of_a_resync(&mut harness, &["d"]).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_fresh_listing_a_member_reads_its_own_count_with_one_stream_info() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&shared_pool());
    add(&harness, &members(&["a", "b"]));
    converge(&mut harness, &["a", "b"]).await;
    publish(&harness, "hookline.shop.POOL_shared.a.push", 3).await;
    publish(&harness, "hookline.shop.POOL_shared.b.push", 1).await;

    harness.ctx.shared.forget_stream("shop/shared");
    assert_eq!(calls_of_a_resync(&mut harness, &["a"]).await, 1);
    assert_eq!(figures(&harness, "a").0, 3, "its own messages only");
    assert_eq!(
        consumers(&harness, POOL_STREAM).await,
        ["hookline-consumer"],
        "and no durable of its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_members_pending_is_its_messages_in_the_pool_stream() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&shared_pool());
    add(&harness, &members(&["a", "b", "c"]));
    // The pool lists their subjects, they get events, and the pool's
    // listing counts them before the members write their first status.
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    publish(&harness, "hookline.shop.POOL_shared.a.push", 3).await;
    publish(&harness, "hookline.shop.POOL_shared.a.pull", 1).await;
    publish(&harness, "hookline.shop.POOL_shared.b.push", 5).await;
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    converge(&mut harness, &["a", "b", "c"]).await;

    for (name, pending) in [("a", 4), ("b", 5), ("c", 0)] {
        let status = harness.endpoint(NS, name).status.expect("status");
        assert_eq!(status.pending, Some(pending), "{name}'s status");
        assert_eq!(figures(&harness, name).0, pending, "{name}'s metric");
    }
    // Delivered and not acknowledged, they still count.
    let stream = js(&harness).get_stream(POOL_STREAM).await.expect("stream");
    let pool: jetstream::consumer::PullConsumer = stream
        .get_consumer("hookline-consumer")
        .await
        .expect("the pool's durable");
    let mut batch = pool
        .fetch()
        .max_messages(9)
        .messages()
        .await
        .expect("fetch");
    for _ in 0..9 {
        batch.next().await.expect("a message").expect("message");
    }
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    harness.reconcile(NS, "a").await.expect("a");
    assert_eq!(figures(&harness, "a").0, 4);
    assert_eq!(harness.metrics.pool_lag("shop/shared"), Some((9, 3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_stream_of_member_durables_gets_the_pools_one_durable_and_loses_no_event() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&shared_pool());
    add(&harness, &members(&["a", "b"]));
    // The stream as an earlier operator left it: a durable per member,
    // filtered on its subjects, and events waiting.
    let js = js(&harness);
    let config = hookline_api::provision::pool_stream_config(
        POOL_STREAM,
        vec![
            "hookline.shop.POOL_shared.a.>".to_owned(),
            "hookline.shop.POOL_shared.b.>".to_owned(),
        ],
        "shop/shared",
        hookline_api::validated::StreamLimits::default(),
    );
    let stream = js.create_stream(config).await.expect("the old stream");
    for name in ["a", "b"] {
        stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some(format!("hookline-consumer-{name}")),
                filter_subject: format!("hookline.shop.POOL_shared.{name}.>"),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .expect("a member's durable");
    }
    publish(&harness, "hookline.shop.POOL_shared.a.push", 2).await;
    publish(&harness, "hookline.shop.POOL_shared.b.push", 3).await;
    // One of b's in flight when its durable goes.
    let old: jetstream::consumer::PullConsumer = stream
        .get_consumer("hookline-consumer-b")
        .await
        .expect("b's durable");
    let mut batch = old.fetch().max_messages(1).messages().await.expect("fetch");
    batch.next().await.expect("one").expect("message");

    converge(&mut harness, &["a", "b"]).await;
    assert_eq!(
        consumers(&harness, POOL_STREAM).await,
        ["hookline-consumer"],
        "the member durables are gone, the pool's made"
    );
    let info = stream_info(&harness, POOL_STREAM)
        .await
        .expect("pool stream");
    assert_eq!(info.state.messages, 5, "every event is still there");
    assert_eq!(figures(&harness, "a").0, 2);
    assert_eq!(figures(&harness, "b").0, 3);
    let stream_ready = pool_stream_ready(&harness);
    assert_eq!(stream_ready.status, "True", "{}", stream_ready.message);
    // And the pool's durable delivers them all, the one in flight too.
    assert_eq!(drain(&harness, POOL_STREAM, "hookline-consumer").await, 5);
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    harness.reconcile(NS, "b").await.expect("b");
    assert_eq!(figures(&harness, "b").0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_durable_deleted_behind_the_operators_back_is_made_again_at_its_next_reconcile() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&shared_pool());
    add(&harness, &members(&["a"]));
    converge(&mut harness, &["a"]).await;
    publish(&harness, "hookline.shop.POOL_shared.a.push", 2).await;

    js(&harness)
        .delete_consumer_from_stream("hookline-consumer", POOL_STREAM)
        .await
        .expect("deleted");
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    assert_eq!(
        durable(&harness, POOL_STREAM, "hookline-consumer").await,
        Some(String::new()),
        "made again"
    );
    assert_eq!(drain(&harness, POOL_STREAM, "hookline-consumer").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_the_pools_durable_cannot_share_the_stream_with_is_reported() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&shared_pool());
    add(&harness, &members(&["a"]));
    converge(&mut harness, &["a"]).await;
    js(&harness)
        .delete_consumer_from_stream("hookline-consumer", POOL_STREAM)
        .await
        .expect("deleted");
    js(&harness)
        .get_stream(POOL_STREAM)
        .await
        .expect("stream")
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("someone-elses".to_owned()),
            filter_subject: "hookline.shop.POOL_shared.a.>".to_owned(),
            ..Default::default()
        })
        .await
        .expect("someone else's durable");

    harness.reconcile_pool(NS, POOL).await.expect("pool");
    let stream_ready = pool_stream_ready(&harness);
    assert_eq!(
        (stream_ready.status.as_str(), stream_ready.reason.as_str()),
        ("False", reasons::STREAM_REFUSED),
        "{}",
        stream_ready.message
    );
    assert!(
        stream_ready.message.contains("nothing drains it"),
        "{}",
        stream_ready.message
    );
    assert_eq!(pool_ready(&harness).status, "False");
    assert_eq!(
        consumers(&harness, POOL_STREAM).await,
        ["someone-elses"],
        "left alone"
    );
    let map: ConfigMap = harness
        .fake
        .typed(NS, "shared-pool-endpoints")
        .expect("ConfigMap");
    assert_eq!(
        keys(map.data),
        ["a.yaml"],
        "its subjects are listed: a stays served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pool_keeps_its_members_events_for_the_pool_made_again_and_an_empty_stream_goes()
{
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&shared_pool());
    add(&harness, &members(&["a", "b"]));
    converge(&mut harness, &["a", "b"]).await;
    publish(&harness, "hookline.shop.POOL_shared.a.push", 2).await;
    let pool_is_gone = |harness: &Harness| {
        harness
            .fake
            .get("hookline.io/v1alpha1", "WebhookPool", NS, POOL)
            .is_none()
    };

    harness.mark_pool_deleting(NS, POOL);
    harness
        .reconcile_pool_once(NS, POOL)
        .await
        .expect("cleanup");
    assert!(pool_is_gone(&harness), "the finalizer was removed");
    let info = stream_info(&harness, POOL_STREAM)
        .await
        .expect("kept: it holds a's events");
    assert_eq!(info.state.messages, 2);
    assert_eq!(
        subjects(&info),
        ["hookline.shop.POOL_shared._none"],
        "it takes no new events"
    );
    assert_eq!(
        info.config.metadata.get(OWNER_UID_KEY),
        None,
        "released for the pool made again"
    );

    // The pool made again (a new UID) takes it over for its members.
    harness.fake.insert(&shared_pool());
    let uid = harness.pool(NS, POOL).metadata.uid.expect("uid");
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    let info = stream_info(&harness, POOL_STREAM)
        .await
        .expect("pool stream");
    assert_eq!(info.state.messages, 2, "a's events are still there");
    assert_eq!(
        subjects(&info),
        [
            "hookline.shop.POOL_shared.a.>",
            "hookline.shop.POOL_shared.b.>"
        ]
    );
    assert_eq!(info.config.metadata.get(OWNER_UID_KEY), Some(&uid));

    // Drained, then deleted again: an empty stream goes with its pool.
    assert_eq!(drain(&harness, POOL_STREAM, "hookline-consumer").await, 2);
    harness.mark_pool_deleting(NS, POOL);
    harness
        .reconcile_pool_once(NS, POOL)
        .await
        .expect("cleanup");
    assert!(pool_is_gone(&harness));
    assert!(
        stream_info(&harness, POOL_STREAM).await.is_none(),
        "deleted with its pool"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_lag_is_as_fresh_as_its_listing_without_waiting_for_its_members() {
    let mut harness = Harness::start(true).await;
    harness.fake.insert(&shared_pool());
    add(&harness, &members(&["a", "b"]));
    converge(&mut harness, &["a", "b"]).await;
    assert_eq!(harness.metrics.pool_lag("shop/shared"), Some((0, 2)));

    publish(&harness, "hookline.shop.POOL_shared.a.push", 3).await;
    publish(&harness, "hookline.shop.POOL_shared.b.push", 4).await;
    harness.reconcile_pool(NS, POOL).await.expect("pool");
    assert_eq!(
        harness.metrics.pool_lag("shop/shared"),
        Some((7, 2)),
        "read by the pool's listing, no member reconciled"
    );
}

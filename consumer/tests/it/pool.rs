//! A pool consumer (`--endpoint-dir`) in this process against real
//! nats-server and Postgres: several endpoints in one directory, isolation,
//! and manifests that come, go and change while it runs.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use common::{FAST, Running, TestEvent, count, metric, publish, wait_until};
use hookline_api::ValidatedEndpoint;
use hookline_consumer::PoolConfig;
use hookline_consumer::config::shared_member;
use hookline_e2e::{ChildProcess, free_port};
use hookline_e2e::{NatsServer, Postgres};
use serde_json::Value;
use sqlx::PgPool;
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(30);

/// NATS, Postgres, and a directory of endpoint manifests, each provisioned.
struct Pool {
    nats: NatsServer,
    pg: Postgres,
    /// Where manifests are written before they are moved into `dir`.
    spare: TempDir,
    dir: TempDir,
    js: jetstream::Context,
    endpoints: BTreeMap<String, ValidatedEndpoint>,
    /// `--shared-stream`: the pool whose one stream every endpoint's events go to.
    shared_stream: Option<&'static str>,
}

/// The pool of the shared-stream tests.
const POOL: &str = "hooks";

fn manifest(name: &str, consumer: &str) -> String {
    format!(
        "apiVersion: hookline.io/v1alpha1\nkind: WebhookEndpoint\nmetadata:\n  name: {name}\n  namespace: test\n\
         spec:\n  provider: stripe\n  secretRef: {{name: s, key: k}}\n  consumer:\n    {consumer}\n"
    )
}

impl Pool {
    /// Starts the servers and provisions endpoints `names` (all `FAST`);
    /// those in `in_dir` get their manifest in the directory now.
    async fn start(names: &[&str], in_dir: &[&str]) -> Pool {
        let nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server starts");
        Pool::start_on(nats, FAST, names, in_dir).await
    }

    /// [`Pool::start`] on `nats`, the endpoints' consumers set as `consumer` says.
    async fn start_on(nats: NatsServer, consumer: &str, names: &[&str], in_dir: &[&str]) -> Pool {
        Pool::start_in(nats, consumer, names, in_dir, None).await
    }

    /// [`Pool::start`] for members of [`POOL`]'s shared stream: the pool's
    /// stream and each member's durable provisioned, no stream of their own.
    async fn start_shared(names: &[&str], in_dir: &[&str]) -> Pool {
        let nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server starts");
        Pool::start_in(nats, FAST, names, in_dir, Some(POOL)).await
    }

    async fn start_in(
        nats: NatsServer,
        consumer: &str,
        names: &[&str],
        in_dir: &[&str],
        shared_stream: Option<&'static str>,
    ) -> Pool {
        let pg = tokio::task::block_in_place(Postgres::start).expect("postgres starts");
        let client = async_nats::connect(nats.url()).await.expect("connect NATS");
        let js = jetstream::new(client);
        let mut pool = Pool {
            nats,
            pg,
            spare: tempfile::tempdir().expect("temp dir"),
            dir: tempfile::tempdir().expect("temp dir"),
            js,
            endpoints: BTreeMap::new(),
            shared_stream,
        };
        for name in names {
            let path = pool.spare.path().join(format!("{name}.yaml"));
            std::fs::write(&path, manifest(name, consumer)).expect("write manifest");
            let mut endpoint = hookline_api::load_manifest(&path).expect("valid manifest");
            if let Some(pool) = shared_stream {
                endpoint = shared_member(endpoint, None, pool);
            }
            hookline_api::provision::provision(&pool.js, &endpoint)
                .await
                .expect("provision");
            pool.endpoints.insert((*name).to_owned(), endpoint);
        }
        for name in in_dir {
            pool.add(name);
        }
        pool
    }

    /// Moves `name`'s manifest into the directory (a rename: never half written).
    fn add(&self, name: &str) {
        let file = format!("{name}.yaml");
        std::fs::copy(self.spare.path().join(&file), self.spare.path().join("tmp")).expect("copy");
        std::fs::rename(self.spare.path().join("tmp"), self.dir.path().join(file))
            .expect("move into the directory");
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.path().join(format!("{name}.yaml"))).expect("remove");
    }

    fn write(&self, file: &str, text: &str) {
        let tmp = self.spare.path().join("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(tmp, self.dir.path().join(file)).expect("move into the directory");
    }

    fn config(&self) -> PoolConfig {
        PoolConfig {
            poll_interval: Duration::from_millis(200),
            shared_stream: self.shared_stream.map(str::to_owned),
            ..PoolConfig::new(self.dir.path().to_owned(), &self.nats.url(), &self.pg.url())
        }
    }

    async fn db(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.pg.url())
            .await
            .expect("connect Postgres")
    }

    async fn publish(&self, name: &str, event: &TestEvent) {
        publish(&self.js, &self.endpoints[name], event).await;
    }

    /// What the pool's stream holds of member `name` (a work queue: what is
    /// not acknowledged yet), by its per-subject counts.
    async fn unfinished(&self, name: &str) -> u64 {
        use futures::TryStreamExt;
        let endpoint = &self.endpoints[name];
        let stream = self
            .js
            .get_stream(&endpoint.stream.name)
            .await
            .expect("stream");
        let counts: Vec<(String, usize)> = stream
            .info_with_subjects(endpoint.stream.subject_filter())
            .await
            .expect("stream info")
            .try_collect()
            .await
            .expect("subjects");
        counts.iter().map(|(_, count)| *count as u64).sum()
    }

    /// Gives member `name` a stream of its own holding `events`, as it had
    /// before it joined the pool's shared stream, then moves that stream's
    /// subjects to the retired one, as the operator does when it joins.
    async fn own_stream_with(&self, name: &str, events: &[TestEvent]) -> ValidatedEndpoint {
        let own = self.endpoints[name].own_stream(None);
        hookline_api::provision::provision(&self.js, &own)
            .await
            .expect("provision the own stream");
        for event in events {
            publish(&self.js, &own, event).await;
        }
        let mut stream = self.js.get_stream(&own.stream.name).await.expect("stream");
        let mut config = stream.info().await.expect("stream info").config.clone();
        config.subjects = vec![hookline_api::naming::retired_subject_in(
            None,
            &own.namespace,
            &own.name,
        )];
        self.js
            .update_stream(&config)
            .await
            .expect("retire the own stream's subjects");
        own
    }

    /// Messages in `endpoint`'s stream, `None` once it is gone.
    async fn stream_messages(&self, endpoint: &ValidatedEndpoint) -> Option<u64> {
        let mut stream = self.js.get_stream(&endpoint.stream.name).await.ok()?;
        Some(stream.info().await.ok()?.state.messages)
    }

    /// Messages in `name`'s stream (a work queue: what is not acknowledged).
    async fn in_stream(&self, name: &str) -> u64 {
        let mut stream = self
            .js
            .get_stream(&self.endpoints[name].stream.name)
            .await
            .expect("stream");
        stream.info().await.expect("stream info").state.messages
    }
}

/// A pool consumer running in this process.
impl Running {
    async fn start_pool(config: PoolConfig) -> Running {
        Running::spawn(|listener, stopped| hookline_consumer::run_pool(config, listener, stopped))
            .await
    }

    async fn readyz(&self) -> (u16, Value) {
        let Ok(response) = reqwest::get(format!("http://127.0.0.1:{}/readyz", self.port)).await
        else {
            return (0, Value::Null);
        };
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn wait_ready(&self) {
        wait_until("ready", WAIT, || async { self.readyz().await.0 == 200 }).await;
    }

    async fn endpoint_metric(&self, name: &str, endpoint: &str) -> f64 {
        metric_of(self.port, name, endpoint).await
    }
}

/// A series of `/metrics` for one endpoint (0 when absent).
async fn metric_of(port: u16, name: &str, endpoint: &str) -> f64 {
    let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    let prefix = format!("{name}{{endpoint=\"{endpoint}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

async fn rows(db: &PgPool, endpoint: &str) -> i64 {
    count(
        db,
        &format!("SELECT count(*) FROM hookline.events WHERE endpoint = '{endpoint}'"),
    )
    .await
}

async fn wait_rows(db: &PgPool, endpoint: &str, expected: i64) {
    wait_until(&format!("{expected} rows of {endpoint}"), WAIT, || async {
        rows(db, endpoint).await == expected
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_of_the_directory_is_stored_under_its_name_and_deduplicated_on_its_own() {
    let pool = Pool::start(&["a", "b", "c"], &["a", "b", "c"]).await;
    let db = pool.db().await;
    let consumer = Running::start_pool(pool.config()).await;
    consumer.wait_ready().await;
    let (_, ready) = consumer.readyz().await;
    assert_eq!(
        ready["endpoints"],
        serde_json::json!({"test/a": true, "test/b": true, "test/c": true})
    );

    // One event id at every endpoint: three events, not duplicates.
    for name in ["a", "b", "c"] {
        pool.publish(
            name,
            &TestEvent::invoice("evt_1", "invoice.created", "in_1", 10, name),
        )
        .await;
    }
    // A copy at a (past JetStream's dedupe) is a duplicate at a only.
    let mut copy = TestEvent::invoice("evt_1", "invoice.created", "in_1", 10, "a");
    copy.msg_id = Some("evt_1-copy".into());
    pool.publish("a", &copy).await;
    for i in 0..20 {
        pool.publish("b", &TestEvent::plain(&format!("b-{i}")))
            .await;
    }
    wait_rows(&db, "test/a", 1).await;
    wait_rows(&db, "test/b", 21).await;
    wait_rows(&db, "test/c", 1).await;
    wait_until("a's duplicate counted", WAIT, || async {
        consumer
            .endpoint_metric("hookline_consumer_duplicates_total", "test/a")
            .await
            == 1.0
    })
    .await;
    // Each object projection is its endpoint's own.
    let states: Vec<(String, String)> = sqlx::query_as(
        "SELECT endpoint, state ->> 'status' FROM hookline.objects WHERE object_id = 'in_1' ORDER BY endpoint",
    )
    .fetch_all(&db)
    .await
    .expect("projections");
    let expected: Vec<(String, String)> = ["a", "b", "c"]
        .iter()
        .map(|name| (format!("test/{name}"), (*name).to_owned()))
        .collect();
    assert_eq!(states, expected);
    assert_eq!(
        consumer
            .endpoint_metric("hookline_consumer_events_processed_total", "test/b")
            .await,
        21.0
    );
    assert_eq!(
        consumer
            .endpoint_metric("hookline_consumer_duplicates_total", "test/b")
            .await,
        0.0
    );
    assert_eq!(
        metric(consumer.port, "hookline_consumer_endpoints").await,
        3.0
    );
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_at_its_endpoint_only_and_the_other_keeps_flowing() {
    let pool = Pool::start(&["a", "b"], &["a", "b"]).await;
    let db = pool.db().await;
    let consumer = Running::start_pool(pool.config()).await;
    consumer.wait_ready().await;
    // As the soak does: Postgres refuses these ids, as a user's own
    // constraint or trigger would; here at endpoint a only.
    sqlx::query(
        "ALTER TABLE hookline.events ADD CONSTRAINT pool_poison \
         CHECK (endpoint <> 'test/a' OR event_id NOT LIKE 'poison-%')",
    )
    .execute(&db)
    .await
    .expect("constraint");

    for i in 0..30 {
        pool.publish("a", &TestEvent::plain(&format!("a-{i}")))
            .await;
        pool.publish("b", &TestEvent::plain(&format!("b-{i}")))
            .await;
        if i % 10 == 5 {
            pool.publish("a", &TestEvent::plain(&format!("poison-{i}")))
                .await;
            // The same id is no poison at b.
            pool.publish("b", &TestEvent::plain(&format!("poison-{i}")))
                .await;
        }
    }
    wait_rows(&db, "test/a", 30).await;
    wait_rows(&db, "test/b", 33).await;
    wait_until("a's poison dead-lettered", WAIT, || async {
        count(
            &db,
            "SELECT count(*) FROM hookline.dead_letters WHERE endpoint = 'test/a'",
        )
        .await
            == 3
    })
    .await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM hookline.dead_letters WHERE endpoint <> 'test/a'"
        )
        .await,
        0
    );
    let error: String =
        sqlx::query_scalar("SELECT error FROM hookline.dead_letters WHERE event_id = 'poison-5'")
            .fetch_one(&db)
            .await
            .expect("dead letter");
    assert!(error.contains("pool_poison"), "{error}");
    assert_eq!(
        consumer
            .endpoint_metric("hookline_consumer_dead_letters_total", "test/a")
            .await,
        3.0
    );
    assert_eq!(
        consumer
            .endpoint_metric("hookline_consumer_dead_letters_total", "test/b")
            .await,
        0.0
    );
    assert_eq!(
        consumer
            .endpoint_metric("hookline_consumer_batch_failures_total", "test/b")
            .await,
        0.0
    );
    wait_until("both streams drained", WAIT, || async {
        pool.in_stream("a").await == 0 && pool.in_stream("b").await == 0
    })
    .await;
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_added_removed_or_changed_while_running_are_followed_without_losing_events() {
    let pool = Pool::start(&["a", "b"], &["a"]).await;
    let db = pool.db().await;
    let consumer = Running::start_pool(pool.config()).await;
    consumer.wait_ready().await;

    // b's events wait in its stream until its manifest arrives.
    for i in 0..20 {
        pool.publish("b", &TestEvent::plain(&format!("b-{i}")))
            .await;
    }
    pool.publish("a", &TestEvent::plain("a-first")).await;
    wait_rows(&db, "test/a", 1).await;
    assert_eq!(rows(&db, "test/b").await, 0);
    pool.add("b");
    wait_rows(&db, "test/b", 20).await;
    assert_eq!(
        metric(consumer.port, "hookline_consumer_endpoints").await,
        2.0
    );

    // A manifest that does not validate is skipped, said in /readyz, and
    // holds nothing back.
    pool.write(
        "broken.yaml",
        &manifest("broken", FAST).replace("stripe", "carrier-pigeon"),
    );
    wait_until("broken.yaml skipped", WAIT, || async {
        consumer.readyz().await.1["skipped"]["broken.yaml"]
            .as_str()
            .is_some_and(|reason| reason.contains("spec.provider"))
    })
    .await;
    assert_eq!(consumer.readyz().await.0, 200);
    assert_eq!(
        metric(consumer.port, "hookline_consumer_manifests_skipped").await,
        1.0
    );

    // A changed manifest restarts its loop; events keep flowing.
    pool.write(
        "b.yaml",
        &manifest("b", &FAST.replace("batchSize: 50", "batchSize: 5")),
    );
    for i in 20..40 {
        pool.publish("b", &TestEvent::plain(&format!("b-{i}")))
            .await;
    }
    wait_rows(&db, "test/b", 40).await;

    // Removed while its events arrive: the loop stops, finishing the batch in
    // hand; every event published before is stored or still in the stream.
    const PUBLISHED: i64 = 300;
    let publisher = {
        let js = pool.js.clone();
        let endpoint = pool.endpoints["a"].clone();
        tokio::spawn(async move {
            // Paced, so the removal comes while events still arrive.
            for i in 0..PUBLISHED {
                publish(&js, &endpoint, &TestEvent::plain(&format!("a-{i}"))).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    wait_until("a consuming the burst", WAIT, || async {
        rows(&db, "test/a").await > 5
    })
    .await;
    pool.remove("a");
    wait_until("a no longer served", WAIT, || async {
        consumer.readyz().await.1["endpoints"]
            .get("test/a")
            .is_none()
    })
    .await;
    publisher.await.expect("publisher");
    // Let the loop finish its batch and its acknowledgements reach NATS.
    wait_until("a's loop settled", WAIT, || async {
        let stored = rows(&db, "test/a").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        rows(&db, "test/a").await == stored
    })
    .await;
    let stored = rows(&db, "test/a").await - 1;
    let waiting = pool.in_stream("a").await as i64;
    assert!(
        stored < PUBLISHED,
        "the removal came before the burst was drained"
    );
    assert!(
        stored + waiting >= PUBLISHED,
        "lost events: {stored} stored + {waiting} in the stream < {PUBLISHED}"
    );
    wait_until("a's series dropped", WAIT, || async {
        metric(consumer.port, "hookline_consumer_endpoints").await == 1.0
            && !reqwest::get(format!("http://127.0.0.1:{}/metrics", consumer.port))
                .await
                .expect("metrics")
                .text()
                .await
                .unwrap_or_default()
                .contains("endpoint=\"test/a\"")
    })
    .await;
    // b never noticed.
    pool.publish("b", &TestEvent::plain("b-after")).await;
    wait_rows(&db, "test/b", 41).await;

    // Back again: the rest is consumed, each event once.
    pool.add("a");
    wait_rows(&db, "test/a", PUBLISHED + 1).await;
    wait_until("a drained", WAIT, || async {
        pool.in_stream("a").await == 0
    })
    .await;
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_with_two_namespaces_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("a.yaml"), manifest("a", FAST)).expect("write");
    std::fs::write(
        dir.path().join("b.yaml"),
        manifest("b", FAST).replace("namespace: test", "namespace: other"),
    )
    .expect("write");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let config = PoolConfig::new(
        PathBuf::from(dir.path()),
        "nats://127.0.0.1:1",
        "postgres://x@127.0.0.1:1/db",
    );
    let err = hookline_consumer::run_pool(config, listener, std::future::pending())
        .await
        .expect_err("two namespaces");
    let text = err.to_string();
    assert!(text.contains("different namespaces"), "{text}");
    assert!(text.contains("b.yaml is in other"), "{text}");
    let _: &Path = dir.path();
}

/// Endpoints with a backlog each, started together: their first pulls
/// together asked NATS for more than it lets one client leave unread, NATS
/// cut the pool's connection off as a slow consumer, and the events of the
/// lost pulls waited `ackWait` (here 30 s) for their redelivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlogged_endpoints_starting_together_never_make_nats_cut_the_pool_off() {
    const ENDPOINTS: usize = 12;
    const EVENTS: usize = 40;
    const PAYLOAD: usize = 16 << 10;
    let nats = tokio::task::block_in_place(|| NatsServer::start_with_max_pending(1 << 20))
        .expect("nats-server starts");
    let names: Vec<String> = (0..ENDPOINTS).map(|i| format!("e{i:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let pool = Pool::start_on(nats, "ackWait: 30s", &names, &[]).await;
    let filler = "x".repeat(PAYLOAD);
    for name in &names {
        for i in 0..EVENTS {
            let mut event = TestEvent::invoice(
                &format!("evt_{name}_{i}"),
                "invoice.paid",
                "in_1",
                1,
                "paid",
            );
            event.body =
                serde_json::json!({"id": event.id, "type": "invoice.paid", "filler": filler})
                    .to_string()
                    .into_bytes();
            pool.publish(name, &event).await;
        }
        pool.add(name);
    }
    let backlog = ENDPOINTS * EVENTS * PAYLOAD;
    assert!(
        backlog > 4 << 20,
        "the backlog ({backlog} bytes) outgrows max_pending"
    );

    let running = Running::start_pool(PoolConfig {
        pull_budget_bytes: 256 << 10,
        ..pool.config()
    })
    .await;
    let db = pool.db().await;
    // Well within ackWait: nothing waited for a redelivery.
    wait_until("every event stored", Duration::from_secs(20), || async {
        count(&db, "SELECT count(*) FROM hookline.events").await == (ENDPOINTS * EVENTS) as i64
    })
    .await;
    let log = pool.nats.log();
    assert!(
        !log.contains("Slow Consumer"),
        "NATS cut a client off:\n{log}"
    );
    running.stop().await;
}

/// The binary as a pool's consumer Deployment runs it, with `--shared-stream`.
fn spawn_shared_binary(pool: &Pool) -> (ChildProcess, u16) {
    let port = free_port();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hookline-consumer"));
    command
        .arg("--endpoint-dir")
        .arg(pool.dir.path())
        .args(["--shared-stream", POOL])
        .args(["--nats-url", &pool.nats.url()])
        .args(["--database-url", &pool.pg.url()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "info");
    (
        ChildProcess::spawn(&mut command).expect("spawn consumer"),
        port,
    )
}

/// The log lines at `WARN` or `ERROR`.
fn complaints(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| line.contains("\"level\":\"WARN\"") || line.contains("\"level\":\"ERROR\""))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_shared_stream_are_stored_under_their_names_each_once() {
    let pool = Pool::start_shared(&["a", "b"], &["a", "b"]).await;
    let db = pool.db().await;
    let consumer = Running::start_pool(pool.config()).await;
    consumer.wait_ready().await;
    let (_, ready) = consumer.readyz().await;
    assert_eq!(
        ready["endpoints"],
        serde_json::json!({"test/a": true, "test/b": true})
    );

    // One event id at both members: two events (their message ids differ by
    // the member's prefix, so the pool stream's dedupe keeps both).
    for name in ["a", "b"] {
        pool.publish(
            name,
            &TestEvent::invoice("evt_1", "invoice.created", "in_1", 10, name),
        )
        .await;
    }
    // The same message again is dropped by JetStream; a copy past its dedupe
    // is a duplicate at a only.
    pool.publish(
        "a",
        &TestEvent::invoice("evt_1", "invoice.created", "in_1", 10, "a"),
    )
    .await;
    let mut copy = TestEvent::invoice("evt_1", "invoice.created", "in_1", 10, "a");
    copy.msg_id = Some("evt_1-copy".into());
    pool.publish("a", &copy).await;
    for i in 0..20 {
        pool.publish("b", &TestEvent::plain(&format!("b-{i}")))
            .await;
    }
    wait_rows(&db, "test/a", 1).await;
    wait_rows(&db, "test/b", 21).await;
    wait_until("a's duplicate counted", WAIT, || async {
        consumer
            .endpoint_metric("hookline_consumer_duplicates_total", "test/a")
            .await
            == 1.0
    })
    .await;
    let states: Vec<(String, String)> = sqlx::query_as(
        "SELECT endpoint, state ->> 'status' FROM hookline.objects WHERE object_id = 'in_1' ORDER BY endpoint",
    )
    .fetch_all(&db)
    .await
    .expect("projections");
    assert_eq!(
        states,
        [("test/a".into(), "a".into()), ("test/b".into(), "b".into())]
    );
    assert_eq!(
        consumer
            .endpoint_metric("hookline_consumer_events_processed_total", "test/b")
            .await,
        21.0
    );
    assert_eq!(
        consumer
            .endpoint_metric("hookline_consumer_duplicates_total", "test/b")
            .await,
        0.0
    );
    // Everything came from the one stream: acknowledged there, and no
    // member has a stream of its own.
    wait_until("the pool's stream drained", WAIT, || async {
        pool.in_stream("a").await == 0
    })
    .await;
    for name in ["a", "b"] {
        let own = pool.endpoints[name].own_stream(None);
        assert_eq!(pool.stream_messages(&own).await, None, "{name}");
    }
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_stream_members_poison_is_dead_lettered_for_it_only_and_the_other_keeps_flowing() {
    let pool = Pool::start_shared(&["a", "b"], &["a", "b"]).await;
    let db = pool.db().await;
    let consumer = Running::start_pool(pool.config()).await;
    consumer.wait_ready().await;
    sqlx::query(
        "ALTER TABLE hookline.events ADD CONSTRAINT pool_poison \
         CHECK (endpoint <> 'test/a' OR event_id NOT LIKE 'poison-%')",
    )
    .execute(&db)
    .await
    .expect("constraint");

    for i in 0..30 {
        pool.publish("a", &TestEvent::plain(&format!("a-{i}")))
            .await;
        pool.publish("b", &TestEvent::plain(&format!("b-{i}")))
            .await;
        if i % 10 == 5 {
            pool.publish("a", &TestEvent::plain(&format!("poison-{i}")))
                .await;
            pool.publish("b", &TestEvent::plain(&format!("poison-{i}")))
                .await;
        }
    }
    wait_rows(&db, "test/a", 30).await;
    wait_rows(&db, "test/b", 33).await;
    wait_until("a's poison dead-lettered", WAIT, || async {
        count(
            &db,
            "SELECT count(*) FROM hookline.dead_letters WHERE endpoint = 'test/a'",
        )
        .await
            == 3
    })
    .await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM hookline.dead_letters WHERE endpoint <> 'test/a'"
        )
        .await,
        0
    );
    // The dead letter keeps the subject it came from: the member's in the pool's stream.
    let subject: String =
        sqlx::query_scalar("SELECT subject FROM hookline.dead_letters WHERE event_id = 'poison-5'")
            .fetch_one(&db)
            .await
            .expect("dead letter");
    assert_eq!(subject, pool.endpoints["a"].stream.subject_for("ping"));
    assert_eq!(
        consumer
            .endpoint_metric("hookline_consumer_dead_letters_total", "test/a")
            .await,
        3.0
    );
    for metric in [
        "hookline_consumer_dead_letters_total",
        "hookline_consumer_batch_failures_total",
    ] {
        assert_eq!(
            consumer.endpoint_metric(metric, "test/b").await,
            0.0,
            "{metric}"
        );
    }
    // Terminated: nothing of either member left in the pool's stream.
    wait_until("the pool's stream drained", WAIT, || async {
        pool.in_stream("a").await == 0
    })
    .await;
    consumer.stop().await;
}

/// The join: a member's events stored in its own stream before it joined
/// the pool's shared stream wait there (its subjects retired), while new ones
/// go to the pool's. Both are consumed, one row per event, until the
/// operator deletes the emptied own stream; that loop then ends quietly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_own_stream_is_drained_beside_the_pools_until_it_is_deleted() {
    let pool = Pool::start_shared(&["a", "b"], &["a", "b"]).await;
    let db = pool.db().await;
    let mut before: Vec<TestEvent> = (0..30)
        .map(|i| TestEvent::plain(&format!("own-{i}")))
        .collect();
    let twice = TestEvent::invoice("twice", "invoice.paid", "in_1", 10, "paid");
    before.push(twice.clone());
    let own = pool.own_stream_with("a", &before).await;
    assert_eq!(pool.stream_messages(&own).await, Some(31));

    let (mut consumer, port) = spawn_shared_binary(&pool);
    // Sent again after the join (a provider's retry): one row still.
    pool.publish("a", &twice).await;
    for i in 0..10 {
        pool.publish("a", &TestEvent::plain(&format!("pool-{i}")))
            .await;
        pool.publish("b", &TestEvent::plain(&format!("b-{i}")))
            .await;
    }
    wait_rows(&db, "test/a", 41).await;
    wait_rows(&db, "test/b", 10).await;
    wait_until(
        "the copy of 'twice' counted as a duplicate",
        WAIT,
        || async { metric_of(port, "hookline_consumer_duplicates_total", "test/a").await == 1.0 },
    )
    .await;
    wait_until("the own stream drained", WAIT, || async {
        pool.stream_messages(&own).await == Some(0)
    })
    .await;

    // The operator deletes the emptied stream: its loop ends, quietly.
    pool.js
        .delete_stream(&own.stream.name)
        .await
        .expect("delete the own stream");
    wait_until("the drain loop ended", WAIT, || async {
        consumer
            .log()
            .contains("the drained stream or its durable consumer is gone")
    })
    .await;
    pool.publish("a", &TestEvent::plain("after")).await;
    wait_rows(&db, "test/a", 42).await;
    assert_eq!(rows(&db, "test/a").await, 42);
    let log = consumer.log();
    assert!(complaints(&log).is_empty(), "{log}");
    assert!(
        consumer.terminate().is_some_and(|status| status.success()),
        "{}",
        consumer.log()
    );
}

/// An own stream whose durable was never made (or was deleted) but still
/// holds events gets one, as provisioning makes it. nats-server 2.15 takes
/// its usual filter though the stream's subjects are retired (one that
/// refused it would get a durable without a filter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_stream_without_its_durable_is_drained_through_a_new_one() {
    let pool = Pool::start_shared(&["a"], &["a"]).await;
    let db = pool.db().await;
    let before: Vec<TestEvent> = (0..12)
        .map(|i| TestEvent::plain(&format!("own-{i}")))
        .collect();
    let own = pool.own_stream_with("a", &before).await;
    let stream = pool.js.get_stream(&own.stream.name).await.expect("stream");
    stream
        .delete_consumer(&own.consumer.durable_name)
        .await
        .expect("delete the durable");
    let consumer = Running::start_pool(pool.config()).await;
    consumer.wait_ready().await;
    pool.publish("a", &TestEvent::plain("pool-0")).await;
    wait_rows(&db, "test/a", 13).await;
    wait_until("the own stream drained", WAIT, || async {
        pool.stream_messages(&own).await == Some(0)
    })
    .await;
    let durable = stream
        .consumer_info(&own.consumer.durable_name)
        .await
        .expect("the durable was made");
    let filter = durable.config.filter_subject;
    assert!(
        filter == own.stream.subject_filter() || filter.is_empty(),
        "{filter}"
    );
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_stream_members_events_wait_in_the_stream_until_it_is_served() {
    // b served later: its events wait in the pool's stream meanwhile.
    let pool = Pool::start_shared(&["a", "b"], &["a"]).await;
    let db = pool.db().await;
    for i in 0..30 {
        pool.publish("b", &TestEvent::plain(&format!("b-{i}")))
            .await;
    }
    for i in 0..120 {
        pool.publish("a", &TestEvent::plain(&format!("a-{i}")))
            .await;
    }
    let consumer = Running::start_pool(pool.config()).await;
    consumer.wait_ready().await;
    wait_rows(&db, "test/a", 120).await;
    // The pool's one durable brought b's too: kept, not written, and still
    // counted as b's in the pool's stream.
    wait_until("a's events acknowledged", WAIT, || async {
        pool.unfinished("a").await == 0
    })
    .await;
    assert_eq!(pool.unfinished("b").await, 30);
    assert_eq!(pool.in_stream("b").await, 30);
    assert_eq!(rows(&db, "test/b").await, 0);
    pool.add("b");
    wait_rows(&db, "test/b", 30).await;
    wait_until("b's events acknowledged", WAIT, || async {
        pool.unfinished("b").await == 0
    })
    .await;
    // Waiting for its manifest spent none of b's deliveries.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM hookline.events WHERE endpoint = 'test/b' AND deliveries > 1"
        )
        .await,
        0
    );
    consumer.stop().await;
}

/// `replay --shared-stream`: a member's dead letters go back to its subject
/// in the pool's stream, with its message-id prefix, whether they came from
/// there or from its own stream before it joined (whose subjects are retired).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_puts_a_members_dead_letters_into_the_pools_stream() {
    let pool = Pool::start_shared(&["a"], &["a"]).await;
    let db = pool.db().await;
    let consumer = Running::start_pool(pool.config()).await;
    consumer.wait_ready().await;
    let member = &pool.endpoints["a"];
    let own = member.own_stream(None);
    let letters = [
        (
            "from-pool",
            member.stream.subject_for("ping"),
            "a:from-pool",
        ),
        ("from-own", own.stream.subject_for("ping"), "from-own"),
    ];
    for (event_id, subject, msg_id) in &letters {
        sqlx::query(
            "INSERT INTO hookline.dead_letters (endpoint, event_id, event_type, subject, stream_sequence, \
                 headers, payload, error, deliveries) \
             VALUES ('test/a', $1, 'ping', $2, 1, $3, $4, 'boom', 3)",
        )
        .bind(event_id)
        .bind(subject)
        .bind(serde_json::json!({
            "Nats-Msg-Id": msg_id,
            "Hookline-Event-Id": event_id,
            "Hookline-Event-Type": "ping",
            "Hookline-Received-At": "2026-01-01T00:00:00Z",
        }))
        .bind(serde_json::json!({"id": event_id}).to_string().into_bytes())
        .execute(&db)
        .await
        .expect("dead letter");
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookline-consumer"))
        .arg("replay")
        .arg("--endpoint")
        .arg(pool.spare.path().join("a.yaml"))
        .args(["--shared-stream", POOL])
        .args(["--nats-url", &pool.nats.url()])
        .args(["--database-url", &pool.pg.url()])
        .env_remove("HOOKLINE_ENDPOINT")
        .output()
        .expect("run replay");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("replayed 2 dead letter(s) of test/a"),
        "{stdout}"
    );
    wait_rows(&db, "test/a", 2).await;
    // Both went through the pool's stream (a work queue: stored, then taken).
    let mut stream = pool
        .js
        .get_stream(&member.stream.name)
        .await
        .expect("stream");
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.state.last_sequence, 2);
    // Each under the member's prefixed id: the same again is a duplicate.
    for (event_id, _, _) in &letters {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("a:{event_id}").as_str());
        let ack = pool
            .js
            .publish_with_headers(member.stream.subject_for("ping"), headers, "{}".into())
            .await
            .expect("publish")
            .await
            .expect("PubAck");
        assert!(ack.duplicate, "{event_id}");
    }
    consumer.stop().await;
}

//! The consumer in this process against real nats-server and Postgres.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use common::{Env, FAST, Running, TestEvent, count, wait_until};
use hookline_consumer::store::{self, Selection, WriteError};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn wait_for_rows(env: &Env, sql: &str, expected: i64) {
    let db = env.db().await;
    wait_until(&format!("{sql} = {expected}"), WAIT, || async {
        count(&db, sql).await == expected
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_stored_with_its_headers_payload_and_a_notification() {
    let env = Env::start(FAST).await;
    let db = env.db().await;
    let mut listener = sqlx::postgres::PgListener::connect(&env.pg.url())
        .await
        .expect("listener");
    let consumer = Running::start(env.config()).await;
    // The schema exists once the consumer is ready.
    wait_until("ready", WAIT, || async {
        reqwest::get(format!("http://127.0.0.1:{}/readyz", consumer.port))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    listener.listen("hookline_events").await.expect("LISTEN");

    env.publish(&TestEvent::invoice(
        "evt_1",
        "invoice.created",
        "in_1",
        10,
        "draft",
    ))
    .await;
    let notification = tokio::time::timeout(WAIT, listener.recv())
        .await
        .expect("notified in time")
        .expect("notification");
    let payload: Value = serde_json::from_str(notification.payload()).expect("JSON payload");
    assert_eq!(
        payload,
        json!({"endpoint": "test/shop", "event_id": "evt_1"})
    );

    let row: (String, String, String, Option<String>, i32, Value, Value, bool) = sqlx::query_as(
        "SELECT endpoint, event_type, to_char(event_timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), \
                object_id, deliveries, headers, payload, payload_raw IS NULL \
         FROM hookline.events WHERE event_id = 'evt_1'",
    )
    .fetch_one(&db)
    .await
    .expect("row");
    assert_eq!(row.0, "test/shop");
    assert_eq!(row.1, "invoice.created");
    assert_eq!(row.2, "2026-01-01 00:00:10");
    assert_eq!(row.3.as_deref(), Some("in_1"));
    assert_eq!(row.4, 1);
    assert_eq!(row.5["Hookline-Http-User-Agent"], "Stripe/1.0");
    assert_eq!(row.6["data"]["object"]["status"], "draft");
    assert!(row.7);

    let state: Value =
        sqlx::query_scalar("SELECT state FROM hookline.objects WHERE object_id = 'in_1'")
            .fetch_one(&db)
            .await
            .expect("projection");
    assert_eq!(
        state,
        json!({"id": "in_1", "object": "invoice", "status": "draft"})
    );
    // The metric follows the commit (which sent the notification) closely.
    wait_until("processed counted", WAIT, || async {
        consumer
            .metric("hookline_consumer_events_processed_total")
            .await
            == 1.0
    })
    .await;
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_delivered_many_times_is_one_row_and_changes_nothing() {
    let env = Env::start(FAST).await;
    let db = env.db().await;
    let consumer = Running::start(env.config()).await;
    let original = TestEvent::invoice("evt_dup", "invoice.paid", "in_d", 10, "paid");
    env.publish(&original).await;
    wait_for_rows(&env, "SELECT count(*) FROM hookline.events", 1).await;
    let updated_at: String = sqlx::query_scalar(
        "SELECT updated_at::text FROM hookline.objects WHERE object_id = 'in_d'",
    )
    .fetch_one(&db)
    .await
    .expect("projection");

    // Four more copies past JetStream's dedupe (other Nats-Msg-Id), one with
    // a different body: the first stored copy is the event.
    for copy in 1..=4 {
        let mut again = TestEvent::invoice(
            "evt_dup",
            "invoice.paid",
            "in_d",
            10,
            &format!("changed{copy}"),
        );
        again.msg_id = Some(format!("evt_dup-copy-{copy}"));
        env.publish(&again).await;
    }
    wait_until("4 duplicates counted", WAIT, || async {
        consumer.metric("hookline_consumer_duplicates_total").await == 4.0
    })
    .await;
    assert_eq!(count(&db, "SELECT count(*) FROM hookline.events").await, 1);
    let (payload_status, state_status, updated_again): (String, String, String) = sqlx::query_as(
        "SELECT e.payload #>> '{data,object,status}', o.state ->> 'status', o.updated_at::text \
         FROM hookline.events e JOIN hookline.objects o USING (endpoint, object_id)",
    )
    .fetch_one(&db)
    .await
    .expect("rows");
    assert_eq!(payload_status, "paid");
    assert_eq!(state_status, "paid");
    assert_eq!(updated_again, updated_at);
    assert_eq!(
        consumer
            .metric("hookline_consumer_events_processed_total")
            .await,
        1.0
    );
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newer_state_wins_whatever_the_arrival_order() {
    let env = Env::start(FAST).await;
    let db = env.db().await;
    // in_a: paid before created, in one batch (published before the consumer starts).
    env.publish(&TestEvent::invoice(
        "evt_a2",
        "invoice.paid",
        "in_a",
        20,
        "paid",
    ))
    .await;
    env.publish(&TestEvent::invoice(
        "evt_a1",
        "invoice.created",
        "in_a",
        10,
        "draft",
    ))
    .await;
    // in_c: in order.
    env.publish(&TestEvent::invoice(
        "evt_c1",
        "invoice.created",
        "in_c",
        10,
        "draft",
    ))
    .await;
    env.publish(&TestEvent::invoice(
        "evt_c2",
        "invoice.paid",
        "in_c",
        20,
        "paid",
    ))
    .await;
    // in_t: same time, the larger event id wins, even when it arrives first.
    env.publish(&TestEvent::invoice(
        "evt_t2",
        "invoice.paid",
        "in_t",
        30,
        "paid",
    ))
    .await;
    env.publish(&TestEvent::invoice(
        "evt_t1",
        "invoice.voided",
        "in_t",
        30,
        "void",
    ))
    .await;
    let consumer = Running::start(env.config()).await;
    wait_for_rows(&env, "SELECT count(*) FROM hookline.events", 6).await;

    // in_b: paid stored first, created arrives in a later batch.
    env.publish(&TestEvent::invoice(
        "evt_b2",
        "invoice.paid",
        "in_b",
        20,
        "paid",
    ))
    .await;
    wait_for_rows(&env, "SELECT count(*) FROM hookline.events", 7).await;
    env.publish(&TestEvent::invoice(
        "evt_b1",
        "invoice.created",
        "in_b",
        10,
        "draft",
    ))
    .await;
    wait_for_rows(&env, "SELECT count(*) FROM hookline.events", 8).await;

    let states: HashMap<String, (String, String)> = sqlx::query_as::<_, (String, String, String)>(
        "SELECT object_id, last_event_id, state ->> 'status' FROM hookline.objects",
    )
    .fetch_all(&db)
    .await
    .expect("projections")
    .into_iter()
    .map(|(object, event, status)| (object, (event, status)))
    .collect();
    assert_eq!(states["in_a"], ("evt_a2".into(), "paid".into()));
    assert_eq!(states["in_b"], ("evt_b2".into(), "paid".into()));
    assert_eq!(states["in_c"], ("evt_c2".into(), "paid".into()));
    assert_eq!(states["in_t"], ("evt_t2".into(), "paid".into()));
    // in_b for sure; in_a and in_t depending on how the first messages were batched.
    assert!(
        consumer
            .metric("hookline_consumer_out_of_order_ignored_total")
            .await
            >= 1.0
    );
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_far_longer_than_the_retries_turns_no_event_into_a_dead_letter() {
    // Three deliveries 200 ms and 400 ms apart would be spent in 0.6 s; the
    // outage lasts more than ten times that, and several `ackWait`s.
    let mut env = Env::start(
        "maxDeliver: 3\n    backoff: [200ms, 400ms]\n    ackWait: 2s\n    batchSize: 20",
    )
    .await;
    let db = env.db().await;
    let consumer = Running::start(env.config()).await;
    let readyz = format!("http://127.0.0.1:{}/readyz", consumer.port);
    for i in 0..20 {
        env.publish(&TestEvent::plain(&format!("before-{i}"))).await;
    }
    wait_for_rows(&env, "SELECT count(*) FROM hookline.events", 20).await;
    db.close().await;

    tokio::task::block_in_place(|| env.pg.stop());
    for i in 0..50 {
        env.publish(&TestEvent::invoice(
            &format!("during-{i}"),
            "invoice.updated",
            &format!("in_{}", i % 5),
            i,
            "open",
        ))
        .await;
    }
    wait_until("events held while Postgres is down", WAIT, || async {
        consumer.metric("hookline_consumer_held_total").await >= 1.0
    })
    .await;
    let status = reqwest::get(&readyz).await.expect("readyz").status();
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        consumer.metric("hookline_consumer_retries_total").await,
        0.0,
        "no delivery is spent while the database is away"
    );

    tokio::task::block_in_place(|| env.pg.restart()).expect("postgres restarts");
    wait_for_rows(&env, "SELECT count(*) FROM hookline.events", 70).await;
    let db = env.db().await;
    assert_eq!(
        count(&db, "SELECT count(DISTINCT event_id) FROM hookline.events").await,
        70
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM hookline.dead_letters").await,
        0
    );
    assert_eq!(count(&db, "SELECT count(*) FROM hookline.objects").await, 5);
    wait_until("ready again", WAIT, || async {
        reqwest::get(&readyz)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    wait_until("nothing unfinished", WAIT, || async {
        env.unfinished().await == 0
    })
    .await;
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_the_others_still_flow() {
    let env = Env::start(FAST).await;
    let db = env.db().await;
    let consumer = Running::start(env.config()).await;
    env.publish(&TestEvent::plain("good-1")).await;
    let mut not_json = TestEvent::plain("poison-body");
    not_json.body = b"{not json".to_vec();
    env.publish(&not_json).await;
    let mut bad_time = TestEvent::plain("poison-time");
    bad_time.timestamp = Some("last tuesday".into());
    env.publish(&bad_time).await;
    // Postgres text cannot hold NUL: caught before the batch, kept without the id column.
    env.publish(&TestEvent::plain("nul\0id")).await;
    env.publish(&TestEvent::plain("good-2")).await;

    wait_for_rows(&env, "SELECT count(*) FROM hookline.dead_letters", 3).await;
    wait_for_rows(&env, "SELECT count(*) FROM hookline.events", 2).await;
    let nul: (Option<String>, String, Value) = sqlx::query_as(
        "SELECT event_id, error, headers FROM hookline.dead_letters WHERE event_id IS NULL",
    )
    .fetch_one(&db)
    .await
    .expect("dead letter without id");
    assert!(nul.1.contains("NUL"), "{}", nul.1);
    assert_eq!(nul.2["Hookline-Event-Id"], "nul\u{FFFD}id");
    let letters: Vec<(String, String, i32, Vec<u8>, Value)> = sqlx::query_as(
        "SELECT event_id, error, deliveries, payload, headers FROM hookline.dead_letters \
         WHERE event_id IS NOT NULL ORDER BY event_id",
    )
    .fetch_all(&db)
    .await
    .expect("dead letters");
    assert_eq!(letters[0].0, "poison-body");
    assert!(letters[0].1.contains("not JSON"), "{}", letters[0].1);
    assert_eq!(letters[0].2, 1, "permanent errors are not retried");
    assert_eq!(letters[0].3, b"{not json");
    assert_eq!(letters[0].4["Hookline-Event-Id"], "poison-body");
    assert_eq!(letters[1].0, "poison-time");
    assert!(letters[1].1.contains("RFC 3339"), "{}", letters[1].1);
    // Terminated: nothing is left for JetStream to redeliver.
    wait_until("nothing unfinished", WAIT, || async {
        env.unfinished().await == 0
    })
    .await;
    assert_eq!(
        consumer
            .metric("hookline_consumer_dead_letters_total")
            .await,
        3.0
    );
    consumer.stop().await;
}

/// A stand-in for the provider's API: `GET /v1/invoices/{id}`.
#[derive(Clone, Default)]
struct Provider {
    /// id → (status code, body).
    objects: Arc<Mutex<HashMap<String, (u16, Value)>>>,
    authorizations: Arc<Mutex<Vec<String>>>,
}

impl Provider {
    async fn start(&self) -> u16 {
        async fn invoice(
            State(provider): State<Provider>,
            Path(id): Path<String>,
            headers: HeaderMap,
        ) -> (StatusCode, axum::Json<Value>) {
            if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
                provider
                    .authorizations
                    .lock()
                    .expect("lock")
                    .push(auth.to_owned());
            }
            let found = provider.objects.lock().expect("lock").get(&id).cloned();
            match found {
                Some((status, body)) => (
                    StatusCode::from_u16(status).expect("status"),
                    axum::Json(body),
                ),
                None => (
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({"error": "no such invoice"})),
                ),
            }
        }
        let app = axum::Router::new()
            .route("/v1/invoices/{id}", get(invoice))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    fn set(&self, id: &str, status: u16, body: Value) {
        self.objects
            .lock()
            .expect("lock")
            .insert(id.to_owned(), (status, body));
    }
}

async fn refetch_env(
    provider: &Provider,
    max_deliver: u32,
    retry_for: &str,
) -> (Env, std::path::PathBuf) {
    let port = provider.start().await;
    let env = Env::start(&format!(
        "maxDeliver: {max_deliver}\n    backoff: [100ms, 200ms]\n    ackWait: 2s\n    batchSize: 50\n    \
         refetch:\n      urlTemplate: http://127.0.0.1:{port}/v1/invoices/{{objectId}}\n      \
         authSecretRef: {{name: stripe-api, key: token}}\n      retryFor: {retry_for}"
    ))
    .await;
    let auth = env.dir.path().join("token");
    std::fs::write(&auth, "Bearer sk_test_123\n").expect("write token");
    (env, auth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refetch_stores_the_providers_state_with_the_secret_as_authorization() {
    let provider = Provider::default();
    provider.set(
        "in_r",
        200,
        json!({"id": "in_r", "status": "paid", "amount_paid": 4200}),
    );
    let (env, auth) = refetch_env(&provider, 3, "3s").await;
    let db = env.db().await;
    // Paid arrives first, created second: the provider's state is stored either way.
    env.publish(&TestEvent::invoice(
        "evt_r2",
        "invoice.paid",
        "in_r",
        20,
        "paid",
    ))
    .await;
    env.publish(&TestEvent::invoice(
        "evt_r1",
        "invoice.created",
        "in_r",
        10,
        "draft",
    ))
    .await;
    let mut config = env.config();
    config.refetch_auth_file = Some(auth);
    let consumer = Running::start(config).await;
    wait_for_rows(&env, "SELECT count(*) FROM hookline.events", 2).await;
    let (last, state): (String, Value) = sqlx::query_as(
        "SELECT last_event_id, state FROM hookline.objects WHERE object_id = 'in_r'",
    )
    .fetch_one(&db)
    .await
    .expect("projection");
    assert_eq!(last, "evt_r2");
    assert_eq!(
        state,
        json!({"id": "in_r", "status": "paid", "amount_paid": 4200})
    );
    let authorizations = provider.authorizations.lock().expect("lock").clone();
    assert!(!authorizations.is_empty());
    assert!(authorizations.iter().all(|a| a == "Bearer sk_test_123"));
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_stays_down_past_retry_for_makes_a_dead_letter() {
    let provider = Provider::default();
    provider.set("in_down", 503, json!({"error": "maintenance"}));
    provider.set("in_flaky", 500, json!({"error": "oops"}));
    let (env, auth) = refetch_env(&provider, 3, "3s").await;
    let db = env.db().await;
    let mut config = env.config();
    config.refetch_auth_file = Some(auth);
    let consumer = Running::start(config).await;
    env.publish(&TestEvent::invoice(
        "evt_down",
        "invoice.paid",
        "in_down",
        20,
        "paid",
    ))
    .await;
    env.publish(&TestEvent::invoice(
        "evt_flaky",
        "invoice.paid",
        "in_flaky",
        20,
        "paid",
    ))
    .await;
    // in_flaky recovers after its first failure and is stored normally.
    wait_until("a first retry", WAIT, || async {
        consumer.metric("hookline_consumer_retries_total").await >= 2.0
    })
    .await;
    provider.set("in_flaky", 200, json!({"id": "in_flaky", "status": "paid"}));

    wait_for_rows(&env, "SELECT count(*) FROM hookline.dead_letters", 1).await;
    wait_for_rows(&env, "SELECT count(*) FROM hookline.events", 1).await;
    let (event_id, deliveries, error): (String, i32, String) =
        sqlx::query_as("SELECT event_id, deliveries, error FROM hookline.dead_letters")
            .fetch_one(&db)
            .await
            .expect("dead letter");
    assert_eq!(event_id, "evt_down");
    assert!(deliveries >= 1, "{deliveries}");
    assert!(error.contains("refetch.retryFor"), "{error}");
    assert!(error.contains("503"), "{error}");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM hookline.events WHERE event_id = 'evt_flaky'"
        )
        .await,
        1
    );
    wait_until("nothing unfinished", WAIT, || async {
        env.unfinished().await == 0
    })
    .await;
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_outage_longer_than_max_deliver_retries_loses_nothing() {
    let provider = Provider::default();
    provider.set("in_1", 503, json!({"error": "maintenance"}));
    // maxDeliver 2 with 100 ms and 200 ms: spent in 0.3 s; the outage lasts 3 s.
    let (env, auth) = refetch_env(&provider, 2, "1h").await;
    let db = env.db().await;
    let mut config = env.config();
    config.refetch_auth_file = Some(auth);
    let consumer = Running::start(config).await;
    env.publish(&TestEvent::invoice(
        "evt_1",
        "invoice.paid",
        "in_1",
        20,
        "paid",
    ))
    .await;
    wait_until("retries while the provider is down", WAIT, || async {
        consumer.metric("hookline_consumer_retries_total").await >= 3.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    provider.set("in_1", 200, json!({"id": "in_1", "status": "paid"}));
    wait_for_rows(&env, "SELECT count(*) FROM hookline.events", 1).await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM hookline.dead_letters").await,
        0
    );
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_4xx_is_a_dead_letter_that_replay_processes_once() {
    let provider = Provider::default();
    let (env, auth) = refetch_env(&provider, 5, "24h").await;
    let db = env.db().await;
    let mut config = env.config();
    config.refetch_auth_file = Some(auth);
    let consumer = Running::start(config).await;
    env.publish(&TestEvent::invoice(
        "evt_x",
        "invoice.paid",
        "in_x",
        20,
        "paid",
    ))
    .await;
    wait_for_rows(&env, "SELECT count(*) FROM hookline.dead_letters", 1).await;
    let (deliveries, error): (i32, String) =
        sqlx::query_as("SELECT deliveries, error FROM hookline.dead_letters")
            .fetch_one(&db)
            .await
            .expect("dead letter");
    assert_eq!(deliveries, 1, "a 4xx is permanent");
    assert!(error.contains("404"), "{error}");
    assert_eq!(count(&db, "SELECT count(*) FROM hookline.events").await, 0);

    // The provider now knows the invoice: replay it (twice; the second finds nothing).
    provider.set("in_x", 200, json!({"id": "in_x", "status": "paid"}));
    let selection = Selection {
        event_ids: vec!["evt_x".into()],
        ..Selection::default()
    };
    let replayed = hookline_consumer::replay::replay(&env.config(), &selection)
        .await
        .expect("replay");
    assert_eq!(replayed, 1);
    let again = hookline_consumer::replay::replay(&env.config(), &Selection::default())
        .await
        .expect("replay again");
    assert_eq!(again, 0);
    wait_for_rows(&env, "SELECT count(*) FROM hookline.events", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM hookline.events WHERE event_id = 'evt_x'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM hookline.dead_letters WHERE replayed_at IS NOT NULL"
        )
        .await,
        1
    );
    let state: Value =
        sqlx::query_scalar("SELECT state FROM hookline.objects WHERE object_id = 'in_x'")
            .fetch_one(&db)
            .await
            .expect("projection");
    assert_eq!(state["status"], "paid");
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_bodies_are_kept_raw_when_the_endpoint_allows_them() {
    let env = Env::start_with(FAST, "  request: {requireJson: false}\n").await;
    let db = env.db().await;
    let consumer = Running::start(env.config()).await;
    let mut raw = TestEvent::plain("raw-1");
    raw.body = b"a=1&b=\x00\xff".to_vec();
    env.publish(&raw).await;
    wait_for_rows(&env, "SELECT count(*) FROM hookline.events", 1).await;
    let (payload, bytes): (Option<Value>, Option<Vec<u8>>) =
        sqlx::query_as("SELECT payload, payload_raw FROM hookline.events")
            .fetch_one(&db)
            .await
            .expect("row");
    assert_eq!(payload, None);
    assert_eq!(bytes.as_deref(), Some(&b"a=1&b=\x00\xff"[..]));
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_acknowledges_everything_it_committed() {
    let env =
        Env::start("maxDeliver: 3\n    backoff: [100ms]\n    ackWait: 30s\n    batchSize: 50")
            .await;
    for i in 0..600 {
        env.publish(&TestEvent::plain(&format!("g-{i}"))).await;
    }
    let db = env.db().await;
    let first = Running::start(env.config()).await;
    wait_until("some rows", WAIT, || async {
        count(&db, "SELECT count(*) FROM hookline.events").await > 0
    })
    .await;
    first.stop().await;
    let stored = count(&db, "SELECT count(*) FROM hookline.events").await;
    // ackWait is 30 s: anything the first one committed but did not ack would
    // come back as a duplicate; what it had not started it handed back at once.
    let second = Running::start(env.config()).await;
    wait_for_rows(&env, "SELECT count(*) FROM hookline.events", 600).await;
    // Acks follow the metrics, so once all is acked the metrics are final.
    wait_until("nothing unfinished", WAIT, || async {
        env.unfinished().await == 0
    })
    .await;
    assert_eq!(
        second.metric("hookline_consumer_duplicates_total").await,
        0.0
    );
    assert_eq!(
        second
            .metric("hookline_consumer_events_processed_total")
            .await,
        (600 - stored) as f64
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_safely_from_many_instances_at_once() {
    let pg = tokio::task::block_in_place(hookline_e2e::Postgres::start).expect("postgres");
    let options = store::connect_options(&pg.url()).expect("url");
    let runs: Vec<_> = (0..6)
        .map(|_| {
            let options = options.clone();
            tokio::spawn(async move { store::migrate(&options).await })
        })
        .collect();
    for run in runs {
        run.await.expect("join").expect("migrates");
    }
    store::migrate(&options).await.expect("migrates again");
    let tables = pg
        .psql("SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'hookline'")
        .expect("psql");
    assert_eq!(tables, "_sqlx_migrations,dead_letters,events,objects");
    // The test server (PostgreSQL 15, Debian's build) has lz4: large values use it.
    let compressed = pg
        .psql(
            "SELECT string_agg(attrelid::regclass || '.' || attname || '=' || attcompression::text, ',' \
             ORDER BY attrelid::regclass::text, attname) FROM pg_attribute \
             WHERE attrelid::regclass::text LIKE 'hookline.%' AND attcompression <> ''",
        )
        .expect("psql");
    assert_eq!(
        compressed,
        "hookline.dead_letters.payload=l,hookline.events.headers=l,hookline.events.payload=l,\
         hookline.events.payload_raw=l,hookline.objects.state=l"
    );
}

/// A consumer whose database user does not own the tables (a DBA migrated
/// them) still starts when a later migration only tunes storage: the lz4 one
/// is skipped with a warning, not a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_does_not_own_the_tables_still_migrates() {
    let pg = tokio::task::block_in_place(hookline_e2e::Postgres::start).expect("postgres");
    let owner = store::connect_options(&pg.url()).expect("url");
    store::migrate(&owner).await.expect("migrates as the owner");
    // As if the owner had applied every migration but the lz4 one.
    pg.psql(
        "DELETE FROM hookline._sqlx_migrations WHERE description = 'lz4 compression'; \
         ALTER TABLE hookline.events ALTER COLUMN payload SET COMPRESSION pglz; \
         CREATE ROLE app LOGIN; \
         GRANT USAGE, CREATE ON SCHEMA hookline TO app; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA hookline TO app",
    )
    .expect("psql");
    let app = store::connect_options(&pg.url().replace("postgres@", "app@")).expect("url");
    store::migrate(&app)
        .await
        .expect("a non-owner migrates (lz4 skipped)");
    let applied = pg
        .psql(
            "SELECT count(*) FROM hookline._sqlx_migrations WHERE description = 'lz4 compression'",
        )
        .expect("psql");
    assert_eq!(applied, "1");
    let compression = pg
        .psql("SELECT attcompression FROM pg_attribute WHERE attrelid = 'hookline.events'::regclass AND attname = 'payload'")
        .expect("psql");
    assert_eq!(compression, "p", "nothing changed without ownership");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_sweep_deletes_only_old_events_of_its_endpoint() {
    let pg = tokio::task::block_in_place(hookline_e2e::Postgres::start).expect("postgres");
    let options = store::connect_options(&pg.url()).expect("url");
    store::migrate(&options).await.expect("migrates");
    pg.psql(
        "INSERT INTO hookline.events (endpoint, event_id, event_type, received_at, deliveries, headers) \
         SELECT e, e || i || '-' || d, 't', now() - make_interval(days => d), 1, '{}' \
         FROM unnest(ARRAY['a/x', 'b/y']) e, generate_series(1, 5) i, unnest(ARRAY[1, 40]) d",
    )
    .expect("rows");
    let pool = store::pool(&options, 2, Duration::from_secs(10));
    let deleted = store::sweep(&pool, "a/x", Duration::from_secs(30 * 86_400), 2)
        .await
        .expect("sweep");
    assert_eq!(deleted, 5);
    assert_eq!(
        pg.psql("SELECT endpoint, count(*) FROM hookline.events GROUP BY 1 ORDER BY 1")
            .expect("psql"),
        "a/x|5\nb/y|10"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consuming_resumes_after_nats_restarts() {
    let mut env = Env::start(FAST).await;
    let consumer = Running::start(env.config()).await;
    for i in 0..10 {
        env.publish(&TestEvent::plain(&format!("n1-{i}"))).await;
    }
    wait_for_rows(&env, "SELECT count(*) FROM hookline.events", 10).await;
    tokio::task::block_in_place(|| env.nats.restart()).expect("nats-server restarts");
    // The test's own client reconnects too; publishing waits for it.
    let mut published = 0;
    while published < 10 {
        let event = TestEvent::plain(&format!("n2-{published}"));
        let Ok(Ok(ack)) = tokio::time::timeout(
            Duration::from_secs(5),
            env.js.publish_with_headers(
                env.endpoint.stream.subject_for("ping"),
                {
                    let mut map = async_nats::HeaderMap::new();
                    map.insert("Nats-Msg-Id", event.id.as_str());
                    map.insert("Hookline-Event-Id", event.id.as_str());
                    map
                },
                event.body.clone().into(),
            ),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if ack.await.is_ok() {
            published += 1;
        }
    }
    wait_for_rows(&env, "SELECT count(*) FROM hookline.events", 20).await;
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_error_in_a_batch_is_permanent_and_a_lost_connection_unavailable() {
    use hookline_consumer::decode::{Body, Event};
    let mut pg = tokio::task::block_in_place(hookline_e2e::Postgres::start).expect("postgres");
    let options = store::connect_options(&pg.url()).expect("url");
    store::migrate(&options).await.expect("migrates");
    let pool = store::pool(&options, 2, Duration::from_secs(10));
    let event = |id: &str, body: &str| Event {
        event_id: id.into(),
        event_type: "t".into(),
        event_timestamp: None,
        object_id: Some("o".into()),
        received_at: chrono::Utc::now(),
        headers: "{}".into(),
        body: Body::Json(body.into()),
        state: Some(body.into()),
    };
    let (good, bad) = (event("good", "{}"), event("bad", "{not json"));
    let row = |event| store::Row {
        endpoint: "a/b",
        event,
        deliveries: 1,
        state: event.state.as_deref(),
        path: None,
    };
    let err = store::write_batch(&pool, &[row(&good), row(&bad)])
        .await
        .expect_err("the bad body fails the batch");
    assert!(matches!(err, WriteError::Rejected(_)), "{err}");
    // Nothing of the failed batch was kept; alone, the good one is stored.
    let written = store::write_batch(&pool, &[row(&good)])
        .await
        .expect("stored");
    assert!(
        written
            .inserted
            .contains(&("a/b".to_owned(), "good".to_owned()))
    );

    tokio::task::block_in_place(|| pg.stop());
    let err = store::write_batch(&pool, &[row(&good)])
        .await
        .expect_err("database down");
    assert!(matches!(err, WriteError::Unavailable(_)), "{err}");
}

/// A pool's shared stream writes its members' events in one transaction:
/// each row keeps its endpoint's dedupe, projection path and ordering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transaction_writes_many_endpoints_each_by_its_own_rules() {
    use hookline_consumer::decode::{Body, Event, Projection};
    let pg = tokio::task::block_in_place(hookline_e2e::Postgres::start).expect("postgres");
    let options = store::connect_options(&pg.url()).expect("url");
    store::migrate(&options).await.expect("migrates");
    let pool = store::pool(&options, 2, Duration::from_secs(10));
    let event = |id: &str, at: i64, body: &str| Event {
        event_id: id.into(),
        event_type: "t".into(),
        event_timestamp: chrono::DateTime::from_timestamp(at, 0),
        object_id: Some("o".into()),
        received_at: chrono::Utc::now(),
        headers: "{}".into(),
        body: Body::Json(body.into()),
        state: None,
    };
    let nested = Projection::Path(vec!["data".into(), "object".into()])
        .path_json()
        .expect("a path");
    let whole = Projection::Path(vec![]).path_json().expect("a path");
    let newer = event("e1", 200, r#"{"data":{"object":{"v":"new"}}}"#);
    let older = event("e2", 100, r#"{"data":{"object":{"v":"old"}}}"#);
    let row = |endpoint, event, path| store::Row {
        endpoint,
        event,
        deliveries: 1,
        state: None,
        path: Some(path),
    };
    // The same event id and object id at two endpoints, each with its own path.
    let rows = [
        row("shop/a", &newer, nested.as_str()),
        row("shop/a", &older, nested.as_str()),
        row("shop/b", &newer, whole.as_str()),
    ];
    let written = store::write_batch(&pool, &rows).await.expect("stored");
    assert_eq!(written.inserted.len(), 3, "{written:?}");
    assert!(
        written
            .out_of_order
            .contains(&("shop/a".to_owned(), "e2".to_owned())),
        "{written:?}"
    );
    let state = |endpoint: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, serde_json::Value>(
                "SELECT state FROM hookline.objects WHERE endpoint = $1 AND object_id = 'o'",
            )
            .bind(endpoint)
            .fetch_one(&pool)
            .await
            .expect("a projection")
        }
    };
    assert_eq!(state("shop/a").await, serde_json::json!({"v": "new"}));
    assert_eq!(
        state("shop/b").await,
        serde_json::json!({"data": {"object": {"v": "new"}}})
    );
    // Written again, each is a duplicate of its own endpoint's.
    let again = store::write_batch(&pool, &rows).await.expect("stored");
    assert!(again.inserted.is_empty(), "{again:?}");
    // An older event of b, alone, moves nothing.
    let written = store::write_batch(&pool, &[row("shop/b", &older, whole.as_str())])
        .await
        .expect("stored");
    assert_eq!(written.out_of_order.len(), 1);
    assert_eq!(
        state("shop/b").await,
        serde_json::json!({"data": {"object": {"v": "new"}}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_an_id_is_one_dead_letter_however_often_it_fails() {
    let pg = tokio::task::block_in_place(hookline_e2e::Postgres::start).expect("postgres");
    let options = store::connect_options(&pg.url()).expect("url");
    store::migrate(&options).await.expect("migrates");
    let pool = store::pool(&options, 2, Duration::from_secs(10));
    let letter = |deliveries| store::DeadLetter {
        event_id: None,
        event_type: None,
        subject: "hookline.a.b.unknown".into(),
        stream_sequence: 7,
        headers: "{}".into(),
        payload: b"{not json".to_vec(),
        error: "not JSON".into(),
        deliveries,
    };
    for deliveries in [1, 2] {
        store::write_dead_letters(&pool, "a/b", &[letter(deliveries)])
            .await
            .expect("written");
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM hookline.dead_letters").await,
        1
    );
    assert_eq!(
        count(
            &pool,
            "SELECT max(deliveries)::bigint FROM hookline.dead_letters"
        )
        .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_on_the_stream_are_dead_letters_with_a_reason_and_nothing_stops() {
    let env = Env::start(FAST).await;
    let db = env.db().await;
    let consumer = Running::start(env.config()).await;
    let subject = env.endpoint.stream.subject_for("x");
    let raw = |headers: &[(&str, &str)], body: Vec<u8>| {
        let mut map = async_nats::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        (map, body)
    };
    let long_id = "x".repeat(600);
    let hostile = [
        // No headers at all.
        raw(&[], b"{}".to_vec()),
        // Only JetStream's id: it is the event id (the receiver sets both);
        // the rest defaults, so this one is stored.
        raw(&[("Nats-Msg-Id", "only-msg-id")], b"{}".to_vec()),
        // An id over the limit the receiver enforces.
        raw(
            &[("Nats-Msg-Id", "long"), ("Hookline-Event-Id", &long_id)],
            b"{}".to_vec(),
        ),
        // A received-at that is no time, and a huge body that is not JSON.
        raw(
            &[
                ("Nats-Msg-Id", "huge"),
                ("Hookline-Event-Id", "huge"),
                ("Hookline-Received-At", "yesterday"),
            ],
            vec![b'#'; 900 * 1024],
        ),
    ];
    for (headers, body) in hostile {
        env.js
            .publish_with_headers(subject.clone(), headers, body.into())
            .await
            .expect("publish")
            .await
            .expect("PubAck");
    }
    env.publish(&TestEvent::plain("good-after")).await;
    wait_for_rows(&env, "SELECT count(*) FROM hookline.events", 2).await;
    wait_for_rows(&env, "SELECT count(*) FROM hookline.dead_letters", 3).await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM hookline.events WHERE event_id IN ('only-msg-id', 'good-after')"
        )
        .await,
        2
    );
    let errors: Vec<String> =
        sqlx::query_scalar("SELECT error FROM hookline.dead_letters ORDER BY stream_sequence")
            .fetch_all(&db)
            .await
            .expect("dead letters");
    assert!(
        errors.iter().all(|error| !error.trim().is_empty()),
        "every dead letter says why: {errors:?}"
    );
    wait_until("nothing unfinished", WAIT, || async {
        env.unfinished().await == 0
    })
    .await;
    let status = reqwest::get(format!("http://127.0.0.1:{}/readyz", consumer.port))
        .await
        .expect("readyz")
        .status();
    assert_eq!(
        status,
        reqwest::StatusCode::OK,
        "the consumer keeps running"
    );
    consumer.stop().await;
}

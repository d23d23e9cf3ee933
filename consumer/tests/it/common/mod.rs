//! Shared test support: real servers, a test endpoint, publishing with the
//! receiver's header contract, an in-process consumer, polling helpers.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::future::BoxFuture;
use hookline_api::{ValidatedEndpoint, headers};
use hookline_consumer::Config;
use hookline_e2e::{NatsServer, Postgres};
use sqlx::PgPool;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// NATS and Postgres for one test, a manifest on disk, and a client of each.
pub struct Env {
    pub nats: NatsServer,
    pub pg: Postgres,
    pub dir: TempDir,
    pub manifest: PathBuf,
    pub endpoint: ValidatedEndpoint,
    pub js: jetstream::Context,
    pub client: async_nats::Client,
}

/// The consumer settings of the test endpoint: fast retries, short ack wait.
pub const FAST: &str =
    "maxDeliver: 3\n    backoff: [100ms, 200ms]\n    ackWait: 2s\n    batchSize: 50";

impl Env {
    /// Starts NATS and Postgres, writes a Stripe endpoint manifest whose
    /// `spec.consumer` holds `consumer` (YAML, indented by 4), provisions it.
    pub async fn start(consumer: &str) -> Env {
        Self::start_with(consumer, "").await
    }

    /// Like [`Env::start`] with extra `spec` lines (indented by 2).
    pub async fn start_with(consumer: &str, extra_spec: &str) -> Env {
        let nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server starts");
        let pg = tokio::task::block_in_place(Postgres::start).expect("postgres starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let manifest = dir.path().join("endpoint.yaml");
        let text = format!(
            "apiVersion: hookline.io/v1alpha1\nkind: WebhookEndpoint\nmetadata:\n  name: shop\n  namespace: test\n\
             spec:\n  provider: stripe\n  secretRef: {{name: s, key: k}}\n{extra_spec}  consumer:\n    {consumer}\n"
        );
        std::fs::write(&manifest, text).expect("write manifest");
        let endpoint = hookline_api::load_manifest(&manifest).expect("valid manifest");
        let client = async_nats::connect(nats.url()).await.expect("connect NATS");
        let js = jetstream::new(client.clone());
        hookline_api::provision::provision(&js, &endpoint)
            .await
            .expect("provision");
        Env {
            nats,
            pg,
            dir,
            manifest,
            endpoint,
            js,
            client,
        }
    }

    /// A consumer config for this environment.
    pub fn config(&self) -> Config {
        Config::new(self.endpoint.clone(), &self.nats.url(), &self.pg.url())
    }

    /// A test-side pool for assertions.
    pub async fn db(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.pg.url())
            .await
            .expect("connect Postgres")
    }

    /// Publishes `event` as the receiver would.
    pub async fn publish(&self, event: &TestEvent) {
        publish(&self.js, &self.endpoint, event).await;
    }

    /// Messages JetStream still has to deliver or see acknowledged.
    pub async fn unfinished(&self) -> u64 {
        let mut consumer: jetstream::consumer::PullConsumer = self
            .js
            .get_stream(&self.endpoint.stream.name)
            .await
            .expect("stream")
            .get_consumer(&self.endpoint.consumer.durable_name)
            .await
            .expect("consumer");
        let info = consumer.info().await.expect("consumer info");
        info.num_pending + info.num_ack_pending as u64
    }
}

/// An event to publish.
#[derive(Clone, Debug)]
pub struct TestEvent {
    pub id: String,
    pub event_type: String,
    pub timestamp: Option<String>,
    pub object_id: Option<String>,
    pub body: Vec<u8>,
    /// `Nats-Msg-Id` when not the event id (to get past JetStream's dedupe).
    pub msg_id: Option<String>,
}

impl TestEvent {
    /// A Stripe-like invoice event; `second` is the event time (seconds after 2026-01-01).
    pub fn invoice(
        id: &str,
        event_type: &str,
        invoice: &str,
        second: u32,
        status: &str,
    ) -> TestEvent {
        let timestamp = format!(
            "2026-01-01T{:02}:{:02}:{:02}Z",
            second / 3600,
            (second / 60) % 60,
            second % 60
        );
        let body = serde_json::json!({
            "id": id,
            "object": "event",
            "type": event_type,
            "created": 1_767_225_600 + second,
            "data": {"object": {"id": invoice, "object": "invoice", "status": status}},
        });
        TestEvent {
            id: id.to_owned(),
            event_type: event_type.to_owned(),
            timestamp: Some(timestamp),
            object_id: Some(invoice.to_owned()),
            body: body.to_string().into_bytes(),
            msg_id: None,
        }
    }

    /// A plain event without object.
    pub fn plain(id: &str) -> TestEvent {
        TestEvent {
            id: id.to_owned(),
            event_type: "ping".to_owned(),
            timestamp: None,
            object_id: None,
            body: serde_json::json!({"id": id}).to_string().into_bytes(),
            msg_id: None,
        }
    }
}

pub async fn publish(js: &jetstream::Context, endpoint: &ValidatedEndpoint, event: &TestEvent) {
    let mut map = HeaderMap::new();
    // In a pool's shared stream, prefixed by the endpoint's name as the receiver does.
    let msg_id = endpoint
        .stream
        .message_id(event.msg_id.as_deref().unwrap_or(&event.id));
    map.insert(headers::MSG_ID, msg_id.as_ref());
    map.insert(headers::EVENT_ID, event.id.as_str());
    map.insert(headers::EVENT_TYPE, event.event_type.as_str());
    if let Some(timestamp) = &event.timestamp {
        map.insert(headers::EVENT_TIMESTAMP, timestamp.as_str());
    }
    if let Some(object_id) = &event.object_id {
        map.insert(headers::OBJECT_ID, object_id.as_str());
    }
    map.insert(
        headers::RECEIVED_AT,
        chrono::Utc::now()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            .as_str(),
    );
    map.insert(headers::ENDPOINT, endpoint.key().as_str());
    map.insert(headers::PROVIDER, "stripe");
    map.insert(headers::CONTENT_TYPE, "application/json");
    map.insert(headers::ID_SOURCE, "provider");
    map.insert("Hookline-Http-User-Agent", "Stripe/1.0");
    js.publish_with_headers(
        endpoint.stream.subject_for(&event.event_type),
        map,
        event.body.clone().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("PubAck");
}

/// A consumer running in this process, serving on a loopback port of its own.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<hookline_consumer::Result<()>>,
    pub port: u16,
}

impl Running {
    pub async fn start(config: Config) -> Running {
        Running::spawn(|listener, stopped| hookline_consumer::run(config, listener, stopped)).await
    }

    /// Runs `run` (the consumer's `run` or `run_pool`) on a loopback port of
    /// its own, with a shutdown signal that [`Running::stop`] fires.
    pub async fn spawn<F, Fut>(run: F) -> Running
    where
        F: FnOnce(tokio::net::TcpListener, BoxFuture<'static, ()>) -> Fut,
        Fut: Future<Output = hookline_consumer::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let task = tokio::spawn(run(
            listener,
            Box::pin(async move {
                let _ = stopped.await;
            }),
        ));
        Running {
            stop: Some(stop),
            task,
            port,
        }
    }

    /// Asks for a graceful shutdown and waits for the run to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("consumer stops within 30 s")
            .expect("task joins")
            .expect("the run returns Ok");
    }

    pub async fn metric(&self, name: &str) -> f64 {
        metric(self.port, name).await
    }
}

/// A value from `/metrics` on `port` (0 when absent or unreachable).
pub async fn metric(port: u16, name: &str) -> f64 {
    let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// Polls `check` every 50 ms until it is true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn count(db: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap_or(-1)
}

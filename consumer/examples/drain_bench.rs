//! Drain benchmark (not a test): how fast one `hookline-consumer` process
//! moves a backlog of 5 KB events from JetStream into Postgres, against the
//! ceiling of the same Postgres: the same rows written by multi-row
//! `INSERT … ON CONFLICT DO NOTHING` in transactions of 100.
//!
//! ```text
//! cargo run --release --example drain_bench -- [EVENTS] [CONCURRENCY] \
//!     [--batch-size N] [--consumer-bin PATH] [--postgres-setting NAME=VALUE]…
//! ```
//!
//! Checks that every event is stored exactly once (distinct = stored = sent)
//! and that each invoice's projection holds its newest state. For the drain
//! and each ceiling it prints the CPU per row of Postgres, of the client and
//! (drain) of nats-server, the WAL per row, and what Postgres' backends
//! waited on; then the most rows/s the machine's cores allow at the drain's
//! CPU per row, which says whether a faster consumer could help at all.
//!
//! Real nats-server and Postgres (default durability: fsync and
//! synchronous_commit on) on loopback, started by `hookline-e2e`. The events
//! are published straight to the stream with the receiver's header contract
//! (not through the receiver's HTTP front, which is another process and
//! another benchmark). Bodies are Stripe-like invoice events whose bulk is
//! random base64 text, so they compress poorly, about 5 KB each; every three
//! events share an invoice (created, updated, paid), so the projection sees
//! inserts and updates.

use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use chrono::{SecondsFormat, Utc};
use hookline_api::{ValidatedEndpoint, headers};
use hookline_consumer::decode::headers_json;
use hookline_e2e::proc_stats::{MachineCpu, command_cpu_seconds, cpu_seconds, status_number};
use hookline_e2e::{ChildProcess, NatsServer, Postgres, free_port};
use rand::Rng;
use sqlx::{PgPool, QueryBuilder};

const BODY_BYTES: usize = 5 * 1024;
const CEILING_BATCH: usize = 100;
/// What Postgres alone does with several transactions in flight (the
/// consumer's default `--concurrency`): an upper bound for the consumer's own
/// overlap on this machine, printed next to the ratio.
const PARALLEL_CONNECTIONS: usize = 4;

struct Generated {
    id: String,
    event_type: &'static str,
    timestamp: String,
    object_id: String,
    received_at: String,
    body: String,
}

fn random_base64(rng: &mut impl Rng, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..64)] as char)
        .collect()
}

fn generate(n: usize) -> Vec<Generated> {
    let mut rng = rand::rng();
    let base = 1_767_225_600_i64;
    let types = ["invoice.created", "invoice.updated", "invoice.paid"];
    let statuses = ["draft", "open", "paid"];
    (0..n)
        .map(|i| {
            let id = format!("evt_{}", random_base64(&mut rng, 24).replace(['+', '/'], "x"));
            let object_id = format!("in_{:08}", i / 3);
            let created = base + i as i64;
            let mut body = serde_json::json!({
                "id": id,
                "object": "event",
                "api_version": "2024-06-20",
                "created": created,
                "type": types[i % 3],
                "livemode": false,
                "pending_webhooks": 1,
                "request": {"id": format!("req_{}", random_base64(&mut rng, 14)), "idempotency_key": random_base64(&mut rng, 36)},
                "data": {"object": {
                    "id": object_id,
                    "object": "invoice",
                    "customer": format!("cus_{}", random_base64(&mut rng, 14)),
                    "status": statuses[i % 3],
                    "amount_due": rng.random_range(100..100_000),
                    "currency": "eur",
                    "lines": {"object": "list", "data": [
                        {"id": format!("il_{}", random_base64(&mut rng, 24)), "description": random_base64(&mut rng, 400), "amount": 1200},
                        {"id": format!("il_{}", random_base64(&mut rng, 24)), "description": random_base64(&mut rng, 400), "amount": 800},
                    ]},
                    "metadata": {},
                }},
            });
            let current = body.to_string().len();
            let filler = BODY_BYTES.saturating_sub(current + 40);
            body["data"]["object"]["metadata"]["notes"] =
                serde_json::Value::String(random_base64(&mut rng, filler));
            Generated {
                id,
                event_type: types[i % 3],
                timestamp: chrono::DateTime::from_timestamp(created, 0)
                    .unwrap_or_default()
                    .to_rfc3339_opts(SecondsFormat::Secs, true),
                object_id,
                received_at: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
                body: body.to_string(),
            }
        })
        .collect()
}

fn headers_for(endpoint: &ValidatedEndpoint, event: &Generated) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(headers::MSG_ID, event.id.as_str());
    map.insert(headers::EVENT_ID, event.id.as_str());
    map.insert(headers::EVENT_TYPE, event.event_type);
    map.insert(headers::EVENT_TIMESTAMP, event.timestamp.as_str());
    map.insert(headers::OBJECT_ID, event.object_id.as_str());
    map.insert(headers::RECEIVED_AT, event.received_at.as_str());
    map.insert(headers::ENDPOINT, endpoint.key().as_str());
    map.insert(headers::PROVIDER, "stripe");
    map.insert(headers::CONTENT_TYPE, "application/json; charset=utf-8");
    map.insert(headers::ID_SOURCE, "provider");
    map.insert(
        "Hookline-Http-User-Agent",
        "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    );
    map
}

/// One measured write: rows/s, how many of the machine's cores were busy,
/// and the write-ahead log written per row (bytes).
struct Measured {
    rate: f64,
    busy_cores: f64,
    wal_per_row: f64,
    /// What the writing backends waited on (see [`sample_waits`]).
    waits: String,
    /// CPU µs per row of Postgres and of the client (this benchmark, or the consumer).
    postgres_us: f64,
    client_us: f64,
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} rows/s, {:.2} cores busy, CPU µs/row Postgres {:.1} client {:.1}, WAL {:.0} B/row; backends: {}",
            self.rate,
            self.busy_cores,
            self.postgres_us,
            self.client_us,
            self.wal_per_row,
            self.waits
        )
    }
}

/// CPU seconds used so far by Postgres (every process), nats-server and this
/// benchmark (the ceilings' client), to tell each one's cost per row.
#[derive(Clone, Copy)]
struct CpuUse {
    postgres: f64,
    nats: f64,
    client: f64,
}

impl CpuUse {
    fn now(nats_pid: Option<u32>) -> CpuUse {
        CpuUse {
            postgres: command_cpu_seconds("postgres"),
            nats: nats_pid.and_then(cpu_seconds).unwrap_or(0.0),
            client: cpu_seconds(std::process::id()).unwrap_or(0.0),
        }
    }

    /// µs per row of each since `earlier`.
    fn per_row_since(&self, earlier: &CpuUse, rows: usize) -> CpuUse {
        let per_row = |now: f64, then: f64| (now - then) * 1e6 / rows.max(1) as f64;
        CpuUse {
            postgres: per_row(self.postgres, earlier.postgres),
            nats: per_row(self.nats, earlier.nats),
            client: per_row(self.client, earlier.client),
        }
    }
}

/// Where the write-ahead log is now, in bytes.
async fn wal_position(db: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8")
        .fetch_one(db)
        .await
        .expect("WAL position")
}

/// What Postgres' active backends wait on, sampled every few milliseconds
/// from [`WaitSampler::start`] to [`WaitSampler::finish`].
struct WaitSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<String>,
}

impl WaitSampler {
    fn start(db: &PgPool) -> WaitSampler {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(sample_waits(db.clone(), stopped));
        WaitSampler { stop, task }
    }

    /// The share of samples per wait event ("CPU" when none), which tells
    /// whether writers were bound by the CPU, the WAL, or a lock.
    async fn finish(self) -> String {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

async fn sample_waits(db: PgPool, mut stop: tokio::sync::oneshot::Receiver<()>) -> String {
    let mut seen: std::collections::BTreeMap<String, u64> = Default::default();
    let mut samples = 0_u64;
    loop {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity \
             WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
        .fetch_all(&db)
        .await
        .unwrap_or_default();
        for (event,) in rows {
            *seen.entry(event).or_default() += 1;
        }
        samples += 1;
        tokio::select! {
            _ = &mut stop => break,
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    let mut shares: Vec<(String, u64)> = seen.into_iter().collect();
    shares.sort_by_key(|share| std::cmp::Reverse(share.1));
    shares
        .iter()
        .take(6)
        .map(|(event, n)| format!("{event} {:.2}", *n as f64 / samples.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn count(db: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap_or(-1)
}

/// The ceiling: the same rows, multi-row INSERT … ON CONFLICT DO NOTHING, 100
/// per transaction, over `connections` connections (each its own share of the
/// rows). `rows` are the events with their headers as stored (JSON text).
async fn ceiling(
    db: &PgPool,
    key: &str,
    rows: &[(&Generated, String)],
    table: &str,
    connections: usize,
) -> Measured {
    sqlx::query(&format!(
        "CREATE TABLE hookline.{table} (LIKE hookline.events INCLUDING ALL)"
    ))
    .execute(db)
    .await
    .expect("ceiling table");
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(db.acquire().await.expect("connection"));
    }
    let wal = wal_position(db).await;
    let waits = WaitSampler::start(db);
    let cpu = MachineCpu::now().expect("/proc/stat");
    // nats-server has no part in the ceiling.
    let used = CpuUse::now(None);
    let started = Instant::now();
    let share = rows.len().div_ceil(connections.max(1));
    let writers = conns.iter_mut().zip(rows.chunks(share)).map(|(conn, rows)| {
        async move {
            for chunk in rows.chunks(CEILING_BATCH) {
                let mut tx = sqlx::Connection::begin(&mut **conn).await.expect("begin");
                let mut insert = QueryBuilder::new(format!(
                    "INSERT INTO hookline.{table} (endpoint, event_id, event_type, event_timestamp, \
                     object_id, received_at, deliveries, headers, payload) "
                ));
                insert.push_values(chunk, |mut row, (e, h)| {
                    row.push_bind(key)
                        .push_bind(&e.id)
                        .push_bind(e.event_type)
                        .push_bind(&e.timestamp)
                        .push_unseparated("::timestamptz")
                        .push_bind(&e.object_id)
                        .push_bind(&e.received_at)
                        .push_unseparated("::timestamptz")
                        .push_bind(1_i32)
                        .push_bind(h)
                        .push_unseparated("::jsonb")
                        .push_bind(&e.body)
                        .push_unseparated("::jsonb");
                });
                insert.push(" ON CONFLICT (endpoint, event_id) DO NOTHING");
                insert.build().execute(&mut *tx).await.expect("insert");
                tx.commit().await.expect("commit");
            }
        }
    });
    futures::future::join_all(writers).await;
    let rate = rows.len() as f64 / started.elapsed().as_secs_f64();
    let busy_cores = MachineCpu::now()
        .expect("/proc/stat")
        .busy_cores_since(&cpu);
    let cost = CpuUse::now(None).per_row_since(&used, rows.len());
    let waits = waits.finish().await;
    let measured = Measured {
        rate,
        busy_cores,
        wal_per_row: (wal_position(db).await - wal) as f64 / rows.len() as f64,
        waits,
        postgres_us: cost.postgres,
        client_us: cost.client,
    };
    let stored = count(db, &format!("SELECT count(*) FROM hookline.{table}")).await;
    assert_eq!(stored, rows.len() as i64);
    measured
}

async fn metric(port: u16, name: &str) -> f64 {
    let text = match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return -1.0,
    };
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[derive(clap::Parser)]
struct Cli {
    /// Events in the backlog.
    #[arg(default_value_t = 50_000)]
    events: usize,
    /// The consumer's `--concurrency` (default: its own default).
    concurrency: Option<String>,
    /// The endpoint's `consumer.batchSize`.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// The consumer binary to measure (default: the workspace's, built first).
    #[arg(long)]
    consumer_bin: Option<std::path::PathBuf>,
    /// SQL run after the migrations and before anything is written (repeatable),
    /// e.g. to try a storage setting: the ceiling's tables copy the events
    /// table's settings.
    #[arg(long)]
    sql: Vec<String>,
    /// A server setting `NAME=VALUE` Postgres starts with (repeatable), e.g.
    /// `wal_buffers=64MB`: the ceilings run on the same server.
    #[arg(long = "postgres-setting", value_parser = parse_setting)]
    postgres_settings: Vec<(String, String)>,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=VALUE"))?;
    Ok((name.to_owned(), value.to_owned()))
}

#[tokio::main]
async fn main() {
    let cli = <Cli as clap::Parser>::parse();
    let n = cli.events;
    let binary = match &cli.consumer_bin {
        Some(path) => path.clone(),
        None => tokio::task::block_in_place(|| hookline_e2e::workspace_bin("hookline-consumer")),
    };

    let nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server");
    let server_settings: Vec<(&str, &str)> = cli
        .postgres_settings
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let pg =
        tokio::task::block_in_place(|| Postgres::start_with(&server_settings)).expect("postgres");
    let settings = pg
        .psql("SELECT string_agg(name || '=' || setting, ' ') FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers', 'max_wal_size', 'wal_buffers')")
        .expect("settings");
    println!("postgres: {settings}");
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = dir.path().join("endpoint.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: hookline.io/v1alpha1\nkind: WebhookEndpoint\nmetadata: {{name: stripe, namespace: bench}}\n\
         spec:\n  provider: stripe\n  secretRef: {{name: s, key: k}}\n  consumer:\n    batchSize: {}\n    ackWait: 30s\n  stream:\n    maxBytes: 2147483648\n",
            cli.batch_size
        ),
    )
    .expect("manifest");
    let endpoint = hookline_api::load_manifest(&manifest).expect("manifest");
    let client = async_nats::connect(nats.url()).await.expect("NATS");
    let js = jetstream::new(client.clone());
    hookline_api::provision::provision(&js, &endpoint)
        .await
        .expect("provision");

    let started = Instant::now();
    let events = generate(n);
    let mean = events.iter().map(|e| e.body.len()).sum::<usize>() / n.max(1);
    println!(
        "generated {n} events, mean body {mean} bytes, in {:.1?}",
        started.elapsed()
    );

    let started = Instant::now();
    for chunk in events.chunks(1000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for event in chunk {
            acks.push(
                js.publish_with_headers(
                    endpoint.stream.subject_for(event.event_type),
                    headers_for(&endpoint, event),
                    event.body.clone().into(),
                )
                .await
                .expect("publish"),
            );
        }
        for ack in acks {
            ack.await.expect("PubAck");
        }
    }
    println!(
        "pre-loaded the stream: {:.0} events/s",
        n as f64 / started.elapsed().as_secs_f64()
    );

    // Schema first (a consumer run with nothing to do would also make it).
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(PARALLEL_CONNECTIONS as u32 + 2)
        .connect(&pg.url())
        .await
        .expect("Postgres");
    hookline_consumer::store::migrate(
        &hookline_consumer::store::connect_options(&pg.url()).expect("url"),
    )
    .await
    .expect("migrate");
    for statement in &cli.sql {
        sqlx::query(statement).execute(&db).await.expect("--sql");
        println!("ran: {statement}");
    }

    // The ceilings' rows: the events with their headers as the consumer stores them.
    let key = endpoint.key();
    let rows: Vec<(&Generated, String)> = events
        .iter()
        .map(|e| (e, headers_json(Some(&headers_for(&endpoint, e)))))
        .collect();
    let ceiling_before = ceiling(&db, &key, &rows, "ceiling_before", 1).await;
    println!("ceiling (before the drain): {ceiling_before}");

    let port = free_port();
    let mut command = Command::new(&binary);
    command
        .arg("--endpoint")
        .arg(&manifest)
        .args(["--nats-url", &nats.url(), "--database-url", &pg.url()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn");
    if let Some(concurrency) = &cli.concurrency {
        command.args(["--concurrency", concurrency]);
    }
    let concurrency = cli.concurrency.as_deref().unwrap_or("default");
    let wal = wal_position(&db).await;
    let waits = WaitSampler::start(&db);
    let machine = MachineCpu::now().expect("/proc/stat");
    let nats_pid = nats.pid();
    let used = CpuUse::now(nats_pid);
    let started = Instant::now();
    let mut consumer = ChildProcess::spawn(&mut command).expect("consumer");
    let mut peak_kib = 0;
    loop {
        if let Some(kib) = status_number(consumer.id(), "VmHWM") {
            peak_kib = peak_kib.max(kib);
        }
        // The consumer's own count: a `count(*)` of the growing table every
        // few milliseconds took a tenth of the machine's CPU during the drain.
        if metric(port, "hookline_consumer_events_processed_total").await >= n as f64 {
            break;
        }
        assert!(
            consumer.is_running(),
            "consumer exited: {}",
            consumer.log_tail(20)
        );
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "drain too slow"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed();
    let busy_cores = MachineCpu::now()
        .expect("/proc/stat")
        .busy_cores_since(&machine);
    let cost = CpuUse::now(nats_pid).per_row_since(&used, n);
    let waits = waits.finish().await;
    let wal_per_row = (wal_position(&db).await - wal) as f64 / n as f64;
    let (first, last): (f64, f64) = sqlx::query_as(
        "SELECT extract(epoch FROM min(processed_at))::float8, extract(epoch FROM max(processed_at))::float8 FROM hookline.events",
    )
    .fetch_one(&db)
    .await
    .expect("times");
    let drain = n as f64 / (last - first).max(1e-9);
    let cpu = cpu_seconds(consumer.id()).unwrap_or(-1.0);
    let whole = Measured {
        rate: n as f64 / wall.as_secs_f64(),
        busy_cores,
        wal_per_row,
        waits,
        postgres_us: cost.postgres,
        client_us: cpu * 1e6 / n as f64,
    };
    let duplicates = metric(port, "hookline_consumer_duplicates_total").await;
    let processed = metric(port, "hookline_consumer_events_processed_total").await;
    if let Some(kib) = status_number(consumer.id(), "VmHWM") {
        peak_kib = peak_kib.max(kib);
    }
    let stopped = consumer.terminate();

    let stored = count(&db, "SELECT count(*) FROM hookline.events").await;
    let distinct = count(&db, "SELECT count(DISTINCT event_id) FROM hookline.events").await;
    let objects = count(&db, "SELECT count(*) FROM hookline.objects").await;
    let paid = count(
        &db,
        "SELECT count(*) FROM hookline.objects WHERE state->>'status' = 'paid'",
    )
    .await;

    let ceiling_after = ceiling(&db, &key, &rows, "ceiling_after", 1).await;
    println!("ceiling (after the drain): {ceiling_after}");
    let best = if ceiling_before.rate >= ceiling_after.rate {
        ceiling_before
    } else {
        ceiling_after
    };
    let parallel = ceiling(&db, &key, &rows, "ceiling_parallel", PARALLEL_CONNECTIONS).await;

    println!();
    println!(
        "events:                 {n} x ~{mean} B, batchSize {}, concurrency {concurrency}",
        cli.batch_size
    );
    println!("cores:                     {}", machine.cores());
    println!("drain (first→last commit): {drain:.0} rows/s");
    println!("drain (spawn→all stored):  {whole} ({wall:.2?})");
    println!("ceiling (best of two):     {best}");
    println!(
        "ratio:                     {:.0} %",
        100.0 * drain / best.rate
    );
    println!(
        "the same INSERTs over {PARALLEL_CONNECTIONS} connections: {parallel} ({:.2}x the ceiling)",
        parallel.rate / best.rate
    );
    // The most this machine's cores allow the drain, were every one busy with
    // it and nothing waited: what Postgres, nats-server and the consumer each
    // spent per row, against the ceiling's rate.
    let drain_us = whole.postgres_us + whole.client_us + cost.nats;
    let most = machine.cores() as f64 * 1e6 / drain_us;
    println!(
        "drain CPU µs/row:          Postgres {:.1}, consumer {:.1}, nats-server {:.1}: these {} cores allow at most {most:.0} rows/s ({:.2}x the ceiling)",
        whole.postgres_us,
        whole.client_us,
        cost.nats,
        machine.cores(),
        most / best.rate
    );
    println!(
        "stored {stored}, distinct {distinct}, processed metric {processed}, duplicates {duplicates}"
    );
    println!("objects {objects}, of which paid {paid}");
    println!(
        "consumer peak RSS:         {:.1} MiB",
        peak_kib as f64 / 1024.0
    );
    println!("consumer CPU (user+sys):   {cpu:.2} s");
    println!("consumer exit:             {stopped:?}");
    assert_eq!(stored, n as i64, "every event stored");
    assert_eq!(distinct, n as i64, "exactly once");
    // Every three events share an invoice, created, updated then paid.
    assert_eq!(
        objects,
        n.div_ceil(3) as i64,
        "one projection row per invoice"
    );
    assert_eq!(
        paid,
        (n / 3) as i64,
        "each complete invoice holds its newest state"
    );
}

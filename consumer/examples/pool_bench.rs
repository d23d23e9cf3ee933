//! Pool benchmark (not a test): how fast one pool consumer (`--endpoint-dir`)
//! drains many endpoints' streams, against one endpoint's drain of the same
//! number of events by the single-endpoint consumer (`--endpoint`).
//!
//! ```text
//! cargo run --release -p hookline-consumer --example pool_bench -- \
//!     [ENDPOINTS] [EVENTS_PER_ENDPOINT] [--concurrency N] [--database-connections N]
//!     [--shared-stream]
//! ```
//!
//! Defaults: 100 endpoints × 100 events. Real nats-server and Postgres
//! (default durability) on loopback, started by `hookline-e2e`; the consumer
//! runs in this process (`run_pool`, then `run`), after the backlog is
//! published and the schema migrated, so the time is the drain's alone (for
//! the pool: binding every durable consumer included). Events are 1 KB
//! Stripe-like invoice events, every three sharing an invoice. Prints each
//! drain's events/s, the CPU per event of this process, of Postgres and of
//! nats-server, nats-server's CPU with no client after the pool's drain, and
//! the pool's rate as a share of the single endpoint's. With
//! `--shared-stream` the pool's endpoints are members of one stream (a
//! `WebhookPool` with `spec.stream`, the consumer's `--shared-stream`),
//! drained through the pool's one durable on it; the single endpoint keeps
//! its own. The pool's events are published in rounds (one event of each
//! endpoint, then the next), so streams hold them mixed as busy endpoints
//! send them.
//! It also prints what the shared stream still holds right after the drain
//! (acknowledgements nats-server has not applied yet), and deletes it before
//! the single endpoint's drain.
//!
//! Each drain's peak RSS is this process's from the drain's start (the
//! consumer runs here with the binary's allocator, mimalloc; what the
//! benchmark itself holds is counted too, so it is an upper bound).

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use chrono::{SecondsFormat, Utc};
use hookline_api::{ValidatedEndpoint, headers};
use hookline_consumer::{Config, PoolConfig};
use hookline_e2e::proc_stats::{
    command_cpu_seconds, cpu_seconds, peak_rss_mib, reset_peak_rss, rss_mib,
};
use hookline_e2e::{NatsServer, Postgres};
use sqlx::PgPool;

/// As the consumer binary: its drain is measured with the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const NAMESPACE: &str = "bench";
const BODY_BYTES: usize = 1024;
/// How often the drain's waits are sampled.
const POLL: Duration = Duration::from_millis(20);
/// PubAcks awaited together when publishing.
const PUBLISH_WINDOW: usize = 100;
/// How long nats-server's idle CPU is measured after the pool's drain.
const IDLE_WINDOW: Duration = Duration::from_secs(5);
/// How often a slow drain says how far it got.
const PROGRESS: Duration = Duration::from_secs(5);

struct Args {
    endpoints: usize,
    per_endpoint: usize,
    concurrency: Option<u16>,
    database_connections: Option<u32>,
    /// `-c key=value` settings for the benchmark's Postgres.
    postgres_settings: Vec<(String, String)>,
    /// The pool's endpoints in one shared stream instead of a stream each.
    shared_stream: bool,
}

/// The pool whose stream the endpoints share with `--shared-stream`.
const POOL: &str = "bench-pool";

fn args() -> BenchResult<Args> {
    let mut args = Args {
        endpoints: 100,
        per_endpoint: 100,
        concurrency: None,
        database_connections: None,
        postgres_settings: Vec::new(),
        shared_stream: false,
    };
    let mut positional = 0;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--concurrency" => {
                args.concurrency = Some(it.next().ok_or("--concurrency N")?.parse()?)
            }
            "--database-connections" => {
                args.database_connections =
                    Some(it.next().ok_or("--database-connections N")?.parse()?)
            }
            "--shared-stream" => args.shared_stream = true,
            "--postgres-setting" => {
                let setting = it.next().ok_or("--postgres-setting KEY=VALUE")?;
                let (key, value) = setting
                    .split_once('=')
                    .ok_or("--postgres-setting KEY=VALUE")?;
                args.postgres_settings.push((key.into(), value.into()));
            }
            number => {
                match positional {
                    0 => args.endpoints = number.parse()?,
                    1 => args.per_endpoint = number.parse()?,
                    _ => return Err(format!("unexpected argument {number}").into()),
                }
                positional += 1;
            }
        }
    }
    Ok(args)
}

fn manifest(name: &str) -> String {
    format!(
        "apiVersion: hookline.io/v1alpha1\nkind: WebhookEndpoint\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n\
         spec:\n  provider: stripe\n  secretRef: {{name: s, key: k}}\n"
    )
}

/// Writes `name`'s manifest into `dir`, provisions its stream (or, a member
/// of `shared`'s stream, that stream when missing) and durable consumer.
async fn endpoint(
    js: &jetstream::Context,
    dir: &std::path::Path,
    name: &str,
    shared: Option<&str>,
) -> BenchResult<(std::path::PathBuf, ValidatedEndpoint)> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, manifest(name))?;
    let mut endpoint = hookline_api::load_manifest(&path)?;
    if let Some(pool) = shared {
        endpoint = hookline_consumer::config::shared_member(endpoint, None, pool);
    }
    hookline_api::provision::provision(js, &endpoint).await?;
    Ok((path, endpoint))
}

/// Publishes `count` events to each of `endpoints`' streams, in rounds
/// (event 0 of each endpoint, then event 1 of each, …): the streams are
/// stored mixed, as many busy endpoints' events arrive, so a pool's shared
/// stream brings each pull's events from many members. [`PUBLISH_WINDOW`]
/// at a time before waiting for their PubAcks (the client bounds the
/// PubAcks in flight: holding more stalls the publisher).
async fn publish(
    js: &jetstream::Context,
    endpoints: &[ValidatedEndpoint],
    count: usize,
) -> BenchResult<()> {
    let filler = "x".repeat(BODY_BYTES.saturating_sub(200));
    let mut acks = Vec::with_capacity(PUBLISH_WINDOW);
    for i in 0..count {
        for endpoint in endpoints {
            let id = format!("evt_{}_{i:06}", endpoint.name);
            let object = format!("in_{:06}", i / 3);
            let created = 1_767_225_600 + i as i64;
            let body = serde_json::json!({
                "id": id, "object": "event", "type": "invoice.updated", "created": created,
                "data": {"object": {"id": object, "object": "invoice", "status": "open", "notes": filler}},
            });
            let mut map = HeaderMap::new();
            map.insert(headers::MSG_ID, endpoint.stream.message_id(&id).as_ref());
            map.insert(headers::EVENT_ID, id.as_str());
            map.insert(headers::EVENT_TYPE, "invoice.updated");
            let timestamp = chrono::DateTime::from_timestamp(created, 0)
                .unwrap_or_default()
                .to_rfc3339_opts(SecondsFormat::Secs, true);
            map.insert(headers::EVENT_TIMESTAMP, timestamp.as_str());
            map.insert(headers::OBJECT_ID, object.as_str());
            let received = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
            map.insert(headers::RECEIVED_AT, received.as_str());
            map.insert(headers::ENDPOINT, endpoint.key().as_str());
            map.insert(headers::PROVIDER, "stripe");
            map.insert(headers::CONTENT_TYPE, "application/json");
            map.insert(headers::ID_SOURCE, "provider");
            acks.push(
                js.publish_with_headers(
                    endpoint.stream.subject_for("invoice.updated"),
                    map,
                    body.to_string().into(),
                )
                .await?,
            );
            if acks.len() == PUBLISH_WINDOW {
                for ack in acks.drain(..) {
                    ack.await?;
                }
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// What the active backends wait on now (`CPU` when on none), one word each.
async fn waits(db: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity \
         WHERE backend_type = 'client backend' AND state = 'active' AND pid <> pg_backend_pid()",
    )
    .fetch_all(db)
    .await
    .unwrap_or_default()
}

/// WAL bytes, full-page images and checkpoints so far.
async fn wal(db: &PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT w.wal_bytes::bigint, w.wal_fpi, b.checkpoints_timed + b.checkpoints_req \
         FROM pg_stat_wal w, pg_stat_bgwriter b",
    )
    .fetch_one(db)
    .await
    .unwrap_or((0, 0, 0))
}

/// One drain's rate and costs.
struct Drained {
    /// Samples of what Postgres's active backends waited on, most seen first.
    waits: Vec<(String, usize)>,
    /// WAL written (MiB), full-page images, checkpoints, during the drain.
    wal: (f64, i64, i64),
    seconds: f64,
    rate: f64,
    client_us: f64,
    postgres_us: f64,
    nats_us: f64,
    /// This process's RSS at the drain's start and its peak over the drain
    /// (MiB; NaN when unknown).
    rss_mib: (f64, f64),
}

impl std::fmt::Display for Drained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} events/s ({:.2} s), CPU µs/event: consumer {:.0}, Postgres {:.0}, nats-server {:.0}; peak RSS {:.1} MiB ({:.1} at its start)",
            self.rate,
            self.seconds,
            self.client_us,
            self.postgres_us,
            self.nats_us,
            self.rss_mib.1,
            self.rss_mib.0
        )?;
        let (mib, fpi, checkpoints) = self.wal;
        write!(
            f,
            "; WAL {mib:.0} MiB, {fpi} full-page images, {checkpoints} checkpoints; waits:"
        )?;
        for (wait, count) in self.waits.iter().take(6) {
            write!(f, " {wait} {count}")?;
        }
        Ok(())
    }
}

/// Starts `consumer` (a future that runs until its shutdown future ends),
/// waits until `total` rows are stored, stops it.
async fn drain<F>(
    db: &PgPool,
    nats: &NatsServer,
    total: usize,
    consumer: impl FnOnce(tokio::net::TcpListener, tokio::sync::oneshot::Receiver<()>) -> F,
) -> BenchResult<Drained>
where
    F: std::future::Future<Output = hookline_consumer::Result<()>> + Send + 'static,
{
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let client_before = cpu_seconds(std::process::id()).unwrap_or(0.0);
    let postgres_before = command_cpu_seconds("postgres");
    let nats_cpu = || nats.pid().and_then(cpu_seconds).unwrap_or(0.0);
    let nats_before = nats_cpu();
    let wal_before = wal(db).await;
    let mut waited: std::collections::HashMap<String, usize> = Default::default();
    // Progress is counted from the NOTIFY each stored event sends: polling
    // `count(*)` (a scan of the growing table) or the consumer's `/metrics`
    // (series of 1,000 endpoints) cost more than the drain itself.
    let mut notifications = sqlx::postgres::PgListener::connect_with(db).await?;
    notifications
        .listen(hookline_consumer::store::NOTIFY_CHANNEL)
        .await?;
    let mut now = 0;
    let mut poll = tokio::time::interval(POLL);
    let pid = std::process::id();
    let rss_at_start = if reset_peak_rss(pid) {
        rss_mib(pid).unwrap_or(f64::NAN)
    } else {
        f64::NAN
    };
    let started = Instant::now();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let task = tokio::spawn(consumer(listener, stopped));
    let mut reported = Instant::now();
    while now < total {
        tokio::select! {
            notification = notifications.recv() => {
                notification?;
                now += 1;
                continue;
            }
            _ = poll.tick() => {}
        }
        for wait in waits(db).await {
            *waited.entry(wait).or_default() += 1;
        }
        if task.is_finished() {
            return Err("the consumer stopped early".into());
        }
        if reported.elapsed() >= PROGRESS {
            eprintln!(
                "… {now} of {total} stored after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            reported = Instant::now();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let per_event = |now: f64, then: f64| (now - then) * 1e6 / total as f64;
    let wal_after = wal(db).await;
    let mut waits: Vec<(String, usize)> = waited.into_iter().collect();
    waits.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    let drained = Drained {
        waits,
        wal: (
            (wal_after.0 - wal_before.0) as f64 / (1 << 20) as f64,
            wal_after.1 - wal_before.1,
            wal_after.2 - wal_before.2,
        ),
        seconds,
        rate: total as f64 / seconds,
        client_us: per_event(
            cpu_seconds(std::process::id()).unwrap_or(0.0),
            client_before,
        ),
        postgres_us: per_event(command_cpu_seconds("postgres"), postgres_before),
        nats_us: per_event(nats_cpu(), nats_before),
        rss_mib: (rss_at_start, peak_rss_mib(pid).unwrap_or(f64::NAN)),
    };
    let _ = stop.send(());
    task.await??;
    Ok(drained)
}

/// nats-server's CPU over [`IDLE_WINDOW`], in cores.
async fn nats_idle(nats: &NatsServer) -> f64 {
    let cpu = || nats.pid().and_then(cpu_seconds).unwrap_or(0.0);
    let before = cpu();
    tokio::time::sleep(IDLE_WINDOW).await;
    (cpu() - before) / IDLE_WINDOW.as_secs_f64()
}

async fn reset(db: &PgPool) -> BenchResult<()> {
    sqlx::query("TRUNCATE hookline.events, hookline.objects, hookline.dead_letters")
        .execute(db)
        .await?;
    sqlx::query("CHECKPOINT").execute(db).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> BenchResult<()> {
    let args = args()?;
    if std::env::var_os("RUST_LOG").is_some() {
        hookline_api::runtime::init_logging("info");
    }
    let total = args.endpoints * args.per_endpoint;
    let nats = tokio::task::block_in_place(NatsServer::start)?;
    let settings: Vec<(&str, &str)> = args
        .postgres_settings
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    let pg = tokio::task::block_in_place(|| Postgres::start_with(&settings))?;
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client);
    hookline_consumer::store::migrate(&hookline_consumer::store::connect_options(&pg.url())?)
        .await?;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg.url())
        .await?;

    // The pool: N endpoints × M events, one process.
    let dir = tempfile::tempdir()?;
    let published = Instant::now();
    let mut endpoints = Vec::with_capacity(args.endpoints);
    for i in 0..args.endpoints {
        let shared = args.shared_stream.then_some(POOL);
        let (_, endpoint) = endpoint(&js, dir.path(), &format!("e{i:04}"), shared).await?;
        endpoints.push(endpoint);
    }
    publish(&js, &endpoints, args.per_endpoint).await?;
    eprintln!(
        "{} endpoints provisioned, {total} events published in {:.1} s",
        args.endpoints,
        published.elapsed().as_secs_f64()
    );
    let mut pool_config = PoolConfig::new(dir.path().to_owned(), &nats.url(), &pg.url());
    pool_config.shared_stream = args.shared_stream.then(|| POOL.to_owned());
    if let Some(concurrency) = args.concurrency {
        pool_config.concurrency = concurrency;
        pool_config.database_connections =
            hookline_consumer::config::default_database_connections(concurrency);
    }
    if let Some(connections) = args.database_connections {
        pool_config.database_connections = connections;
    }
    let (concurrency, connections) = (pool_config.concurrency, pool_config.database_connections);
    reset(&db).await?;
    let pool = drain(&db, &nats, total, |listener, stopped| async move {
        hookline_consumer::run_pool(pool_config, listener, async move {
            let _ = stopped.await;
        })
        .await
    })
    .await?;

    // Every event stored and acknowledged: what the shared stream still holds
    // is acknowledgements nats-server has not applied yet.
    let unapplied = if args.shared_stream {
        let name = hookline_api::naming::pool_stream_name_in(None, NAMESPACE, POOL);
        Some(js.get_stream(&name).await?.info().await?.state.messages)
    } else {
        None
    };
    // What the pool's streams and durables cost nats-server once drained,
    // with no client left.
    let idle = nats_idle(&nats).await;
    // nats-server applied the acknowledgements of a shared stream with 1,000
    // member durables far slower than they came (about 2,700 a second on a
    // core, on 2 busy cores), for tens of seconds after the drain: deleted,
    // the stream leaves the single endpoint's drain alone.
    let idle_after_delete = if args.shared_stream {
        js.delete_stream(&hookline_api::naming::pool_stream_name_in(
            None, NAMESPACE, POOL,
        ))
        .await?;
        Some(nats_idle(&nats).await)
    } else {
        None
    };

    // One endpoint, the same number of events.
    let single_dir = tempfile::tempdir()?;
    let (_, single) = endpoint(&js, single_dir.path(), "single", None).await?;
    publish(&js, std::slice::from_ref(&single), total).await?;
    let mut config = Config::new(single, &nats.url(), &pg.url());
    if let Some(concurrency) = args.concurrency {
        config.concurrency = concurrency;
    }
    let single_concurrency = config.concurrency;
    reset(&db).await?;
    let one = drain(&db, &nats, total, |listener, stopped| async move {
        hookline_consumer::run(config, listener, async move {
            let _ = stopped.await;
        })
        .await
    })
    .await?;

    println!(
        "pool:   {} endpoints × {} events{}, concurrency {concurrency} per endpoint, {connections} database connections: {pool}",
        args.endpoints,
        args.per_endpoint,
        if args.shared_stream {
            " in one shared stream"
        } else {
            ""
        }
    );
    println!(
        "single: 1 endpoint × {total} events, concurrency {single_concurrency}, {} database connections: {one}",
        u32::from(single_concurrency) + 2
    );
    println!(
        "nats-server with no client after the pool's drain: {:.0} % of a core",
        idle * 100.0
    );
    if let Some(messages) = unapplied {
        println!(
            "the shared stream right after the drain (every event stored and acknowledged): {messages} messages still in it"
        );
    }
    if let Some(idle) = idle_after_delete {
        println!(
            "nats-server once the pool's stream is deleted: {:.0} % of a core",
            idle * 100.0
        );
    }
    println!(
        "ratio (pool / single events/s): {:.2}",
        pool.rate / one.rate
    );
    let slow_consumers = nats.log().matches("Slow Consumer").count();
    if slow_consumers > 0 {
        println!(
            "nats-server: {slow_consumers} slow-consumer disconnects (the client fell behind its output buffer)"
        );
    }
    // The server's log (e.g. auto_explain's plans) outlives the temp dir when asked.
    if let Some(path) = std::env::var_os("POOL_BENCH_POSTGRES_LOG") {
        std::fs::write(path, pg.log())?;
    }
    Ok(())
}

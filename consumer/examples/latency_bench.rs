//! Accept → commit latency benchmark (not a test): Stripe-signed 5 KB events sent
//! at a fixed rate through the real `hookline-receiver` to the real
//! `hookline-consumer`, timed from the moment the request is sent until Postgres
//! delivers the `NOTIFY hookline_events` of its row — which happens only after
//! the consumer's transaction has committed.
//!
//! ```text
//! cargo run --release --example latency_bench -- [RATE] [SECONDS] [CONSUMERS] [Buffer|Archive]
//! ```
//!
//! Defaults: 1000 requests/s for 30 s, one consumer, a `Buffer` stream.
//! Everything runs on loopback (nats-server and Postgres started by
//! `hookline-e2e`); the load stops by itself. `HOOKLINE_BIN_DIR` names the
//! binaries to measure (otherwise the workspace's are built).
//!
//! The whole is broken down by stage, per event, from times the pipeline
//! already has (one wall clock, as every process runs on this machine): the
//! receiver's `Hookline-Received-At`, JetStream's stored time, and the
//! consumer's `hookline_consumer::stages` debug line (delivered, batch
//! started, committed), which this benchmark turns on. Binaries without that
//! line get the whole only. For the slowest 1 % it also prints the mean of each
//! stage: where the tail lives.
//!
//! `LATENCY_BENCH_POSTGRES=synchronous_commit=off` (any `name=value,…`)
//! changes the test Postgres's settings for the run.
//!
//! Also prints what the load cost: each process's CPU (millicores, from
//! `/proc/PID/stat` over the load; Postgres summed over every process named
//! `postgres` on the machine) and RSS (now and peak), and the disk the
//! stream's JetStream store used once every event was committed: the sizing
//! figures of the docs come from here.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use hookline_consumer::consume::STAGES_TARGET;
use hookline_e2e::Pipeline;
use hookline_e2e::proc_stats::{MachineCpu, command_cpu_seconds, cpu_seconds, status_number};
use sha2::Sha256;

const SECRET: &str = "whsec_latency_bench_not_real";
/// Postgres settings for the run (`name=value,…`, by `ALTER SYSTEM`).
const POSTGRES_SETTINGS: &str = "LATENCY_BENCH_POSTGRES";
/// The endpoint; `{retention}` is `Buffer` or `Archive`.
const MANIFEST: &str = "apiVersion: hookline.io/v1alpha1
kind: WebhookEndpoint
metadata: {name: latency, namespace: bench}
spec:
  provider: stripe
  secretRef: {name: bench}
  ingress: {path: /stripe}
  stream: {retention: {retention}}
";

/// Bytes of the files below `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => disk_bytes(&entry.path()),
            _ => entry.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

fn signed(id: &str, padding: &str) -> (String, String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let body = format!(
        r#"{{"id":"{id}","type":"invoice.paid","created":{now},"data":{{"object":{{"id":"in_{id}","padding":"{padding}"}}}}}}"#
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(format!("{now}.{body}").as_bytes());
    (
        body,
        format!("t={now},v1={}", hex::encode(mac.finalize().into_bytes())),
    )
}

/// Microseconds since the Unix epoch: the one clock every process here shares.
fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// What the sender saw of one request.
struct Sent {
    sent: i64,
    answered: i64,
    ok: bool,
}

/// What the consumer's stage line says of one event (µs since the epoch).
#[derive(Clone, Copy)]
struct Stages {
    received_at: i64,
    published: i64,
    delivered: i64,
    started: i64,
    committed: i64,
}

/// The stage lines of the consumer log at `path`, by event id.
fn read_stages(path: &Path, into: &mut HashMap<String, Stages>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    for line in text.lines().filter(|line| line.contains(STAGES_TARGET)) {
        let Ok(json) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let fields = &json["fields"];
        let time = |name: &str| fields[name].as_i64();
        let line = || {
            let stages = Stages {
                received_at: time("received_at")?,
                published: time("published")?,
                delivered: time("delivered")?,
                started: time("started")?,
                committed: time("committed")?,
            };
            Some((fields["event_id"].as_str()?, stages))
        };
        if let Some((id, stages)) = line() {
            into.insert(id.to_owned(), stages);
        }
    }
}

/// The stages of the breakdown: name, and its length (ms) from the sender's
/// times, the consumer's and the `NOTIFY`'s arrival.
type Stage = (&'static str, fn(&Sent, &Stages, i64) -> i64);
const STAGES: [Stage; 8] = [
    ("sent -> receiver accepted (Received-At)", |s, t, _| {
        t.received_at - s.sent
    }),
    ("receiver -> stored by JetStream", |_, t, _| {
        t.published - t.received_at
    }),
    (
        "stored -> 200 at the sender (PubAck + answer)",
        |s, t, _| s.answered - t.published,
    ),
    ("stored -> delivered to the consumer", |_, t, _| {
        t.delivered - t.published
    }),
    ("delivered -> batch started", |_, t, _| {
        t.started - t.delivered
    }),
    ("batch started -> committed", |_, t, _| {
        t.committed - t.started
    }),
    ("committed -> NOTIFY at the listener", |_, t, notified| {
        notified - t.committed
    }),
    ("whole: sent -> NOTIFY", |s, _, notified| notified - s.sent),
];

/// p50/p99/p99.9/max of each stage, and its mean over the slowest 1 % of
/// the whole (where the tail lives).
fn print_breakdown(rows: &[(&Sent, Stages, i64)]) {
    let whole = |row: &(&Sent, Stages, i64)| row.2 - row.0.sent;
    let mut by_whole: Vec<&(&Sent, Stages, i64)> = rows.iter().collect();
    by_whole.sort_by_key(|row| whole(row));
    let tail = &by_whole[by_whole.len() - by_whole.len().div_ceil(100)..];
    println!(
        "stage breakdown of {} events, ms: p50 / p99 / p99.9 / max | mean over the slowest 1 % ({} events)",
        rows.len(),
        tail.len()
    );
    for (name, length) in STAGES {
        let mut ms: Vec<f64> = rows
            .iter()
            .map(|(sent, stages, notified)| length(sent, stages, *notified) as f64 / 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        let tail_mean = tail
            .iter()
            .map(|(sent, stages, notified)| length(sent, stages, *notified) as f64 / 1000.0)
            .sum::<f64>()
            / tail.len() as f64;
        println!(
            "  {name:<46} {:>7.2} {:>7.2} {:>7.2} {:>7.2} | {tail_mean:>7.2}",
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            percentile(&ms, 0.999),
            ms[ms.len() - 1],
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rate: u64 = args.next().map_or(Ok(1000), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(30), |a| a.parse())?;
    let consumers: usize = args.next().map_or(Ok(1), |a| a.parse())?;
    let retention = args.next().unwrap_or_else(|| "Buffer".into());
    if !["Buffer", "Archive"].contains(&retention.as_str()) {
        return Err(format!("retention must be Buffer or Archive, not {retention:?}").into());
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average before: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    let dir = tempfile::tempdir()?;
    let manifest = dir.path().join("endpoint.yaml");
    std::fs::write(&manifest, MANIFEST.replace("{retention}", &retention))?;
    let log_filter = format!("warn,{STAGES_TARGET}=debug");
    let mut pipeline =
        tokio::task::block_in_place(|| Pipeline::start(&manifest, SECRET, &log_filter))?;
    let mut more_consumers = tokio::task::block_in_place(|| {
        (2..=consumers)
            .map(|n| {
                pipeline
                    .consumer
                    .another(dir.path().join(format!("consumer-{n}.log")))
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    let processes: Vec<(String, u32)> =
        std::iter::once(("receiver".to_owned(), &pipeline.receiver))
            .chain(
                std::iter::once(&pipeline.consumer)
                    .chain(&more_consumers)
                    .enumerate()
                    .map(|(n, service)| (format!("consumer {}", n + 1), service)),
            )
            .filter_map(|(name, service)| Some((name, service.id()?)))
            .chain(
                pipeline
                    .nats
                    .pid()
                    .map(|pid| ("nats-server".to_owned(), pid)),
            )
            .chain(std::iter::once((
                "this benchmark".to_owned(),
                std::process::id(),
            )))
            .collect();

    // E.g. `synchronous_commit=off`, to see what the commit's flush costs.
    if let Ok(settings) = std::env::var(POSTGRES_SETTINGS) {
        for setting in settings.split(',').filter(|s| !s.is_empty()) {
            let (name, value) = setting
                .split_once('=')
                .ok_or_else(|| format!("{POSTGRES_SETTINGS}: {setting:?} is not NAME=VALUE"))?;
            tokio::task::block_in_place(|| {
                pipeline
                    .postgres
                    .psql(&format!("ALTER SYSTEM SET {name} = '{value}'"))
            })?;
        }
        tokio::task::block_in_place(|| pipeline.postgres.psql("SELECT pg_reload_conf()"))?;
        println!("postgres settings: {settings}");
    }

    let mut listener = sqlx::postgres::PgListener::connect(&pipeline.postgres.url()).await?;
    listener.listen("hookline_events").await?;
    let notified_at: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let collector = {
        let notified_at = notified_at.clone();
        tokio::spawn(async move {
            while let Ok(notification) = listener.recv().await {
                let arrived = now_micros();
                if let Ok(payload) =
                    serde_json::from_str::<serde_json::Value>(notification.payload())
                    && let Some(id) = payload["event_id"].as_str()
                    && let Ok(mut notified_at) = notified_at.lock()
                {
                    notified_at.insert(id.to_owned(), arrived);
                }
            }
        })
    };

    let padding = "q".repeat(4900);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let url = format!("{}/stripe", pipeline.receiver.url());
    let total = rate * seconds;
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / u32::try_from(rate)?);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let cpu_before: Vec<Option<f64>> = processes.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
    let postgres_before = command_cpu_seconds("postgres");
    let machine_before = MachineCpu::now();
    let mut requests = Vec::with_capacity(usize::try_from(total)?);
    for n in 0..total {
        ticker.tick().await;
        let (id, client, url) = (format!("evt_lat_{n:08}"), client.clone(), url.clone());
        let (body, signature) = signed(&id, &padding);
        requests.push(tokio::spawn(async move {
            let sent = now_micros();
            let response = client
                .post(&url)
                .header("content-type", "application/json")
                .header("stripe-signature", signature)
                .body(body)
                .send()
                .await;
            let answered = now_micros();
            let ok = response.is_ok_and(|r| r.status() == 200);
            (id, Sent { sent, answered, ok })
        }));
    }
    let mut sent: HashMap<String, Sent> = HashMap::with_capacity(requests.len());
    for request in requests {
        if let Ok((id, request)) = request.await {
            sent.insert(id, request);
        }
    }
    let accepted = sent.values().filter(|s| s.ok).count() as u64;
    let load_seconds = started.elapsed().as_secs_f64();
    let cpu_used: Vec<Option<f64>> = processes
        .iter()
        .zip(&cpu_before)
        .map(|((_, pid), before)| Some(cpu_seconds(*pid)? - (*before)?))
        .collect();
    let postgres_used = command_cpu_seconds("postgres") - postgres_before;
    let busy_cores = machine_before
        .zip(MachineCpu::now())
        .map(|(before, now)| now.busy_cores_since(&before));
    let offered = total as f64 / load_seconds;
    let deadline = Instant::now() + Duration::from_secs(300);
    while notified_at.lock().map_or(0, |n| n.len() as u64) < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    collector.abort();

    let notified_at = std::mem::take(&mut *notified_at.lock().map_err(|_| "collector panicked")?);
    let mut latencies: Vec<f64> = notified_at
        .iter()
        .filter_map(|(id, done)| Some((done - sent.get(id)?.sent) as f64 / 1000.0))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let rows = tokio::task::block_in_place(|| {
        pipeline
            .postgres
            .psql("select count(*) from hookline.events")
    })?;
    println!(
        "offered {offered:.0} req/s for {seconds} s: {accepted}/{total} accepted (200), {rows} rows, {} commits seen",
        latencies.len()
    );
    if !latencies.is_empty() {
        println!(
            "accept -> commit latency ms: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            percentile(&latencies, 0.999),
            latencies[latencies.len() - 1]
        );
    }

    let memory: Vec<(u64, u64)> = processes
        .iter()
        .map(|(_, pid)| {
            (
                status_number(*pid, "VmRSS").unwrap_or_default(),
                status_number(*pid, "VmHWM").unwrap_or_default(),
            )
        })
        .collect();
    // The consumers write their stage lines until they stop.
    tokio::task::block_in_place(|| {
        pipeline.receiver.terminate();
        pipeline.consumer.terminate();
        for consumer in &mut more_consumers {
            consumer.terminate();
        }
    });
    let mut stages = HashMap::new();
    for consumer in std::iter::once(&pipeline.consumer).chain(&more_consumers) {
        read_stages(consumer.log_path(), &mut stages);
    }
    let breakdown: Vec<(&Sent, Stages, i64)> = notified_at
        .iter()
        .filter_map(|(id, notified)| Some((sent.get(id)?, *stages.get(id)?, *notified)))
        .collect();
    if breakdown.is_empty() {
        println!("no stage lines from the consumer (a binary without them): whole only");
    } else {
        print_breakdown(&breakdown);
    }

    for (((name, _), cpu), (rss, peak)) in processes.iter().zip(&cpu_used).zip(&memory) {
        let millicores = cpu.map_or("?".into(), |cpu| {
            format!("{:.0}", cpu / load_seconds * 1000.0)
        });
        println!(
            "{name}: CPU {millicores} millicores over the load, RSS {rss} KiB (peak {peak} KiB)"
        );
    }
    println!(
        "postgres (every process of that name): CPU {:.0} millicores over the load; the machine: {} of {} cores busy",
        postgres_used / load_seconds * 1000.0,
        busy_cores.map_or("?".into(), |cores| format!("{cores:.2}")),
        MachineCpu::now().map_or(0, |cpu| cpu.cores()),
    );
    println!(
        "JetStream store on disk after the drain ({retention}): {:.1} MiB",
        disk_bytes(pipeline.nats.store_dir()) as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

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
//! `hookline-e2e`); the load stops by itself.
//!
//! Also prints what the load cost: each process's CPU (millicores, from
//! `/proc/PID/stat` over the load) and RSS (now and peak), and the disk the
//! stream's JetStream store used once every event was committed: the sizing
//! figures of the docs come from here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use hookline_e2e::Pipeline;
use hookline_e2e::proc_stats::{cpu_seconds, status_number};
use sha2::Sha256;
use tokio::sync::Mutex;

const SECRET: &str = "whsec_latency_bench_not_real";
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
fn disk_bytes(dir: &std::path::Path) -> u64 {
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

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
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

    let dir = tempfile::tempdir()?;
    let manifest = dir.path().join("endpoint.yaml");
    std::fs::write(&manifest, MANIFEST.replace("{retention}", &retention))?;
    let mut pipeline = tokio::task::block_in_place(|| Pipeline::start(&manifest, SECRET, "warn"))?;
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
            .collect();

    let mut listener = sqlx::postgres::PgListener::connect(&pipeline.postgres.url()).await?;
    listener.listen("hookline_events").await?;
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let committed_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let collector = {
        let committed_at = committed_at.clone();
        tokio::spawn(async move {
            while let Ok(notification) = listener.recv().await {
                let arrived = Instant::now();
                if let Ok(payload) =
                    serde_json::from_str::<serde_json::Value>(notification.payload())
                    && let Some(id) = payload["event_id"].as_str()
                {
                    committed_at.lock().await.insert(id.to_owned(), arrived);
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
    let mut requests = Vec::with_capacity(usize::try_from(total)?);
    for n in 0..total {
        ticker.tick().await;
        let (id, client, url, sent_at) = (
            format!("evt_lat_{n:08}"),
            client.clone(),
            url.clone(),
            sent_at.clone(),
        );
        let (body, signature) = signed(&id, &padding);
        requests.push(tokio::spawn(async move {
            sent_at.lock().await.insert(id.clone(), Instant::now());
            let response = client
                .post(&url)
                .header("content-type", "application/json")
                .header("stripe-signature", signature)
                .body(body)
                .send()
                .await;
            response.is_ok_and(|r| r.status() == 200)
        }));
    }
    let mut accepted = 0u64;
    for request in requests {
        accepted += u64::from(request.await.unwrap_or(false));
    }
    let load_seconds = started.elapsed().as_secs_f64();
    let cpu_used: Vec<Option<f64>> = processes
        .iter()
        .zip(&cpu_before)
        .map(|((_, pid), before)| Some(cpu_seconds(*pid)? - (*before)?))
        .collect();
    let offered = total as f64 / load_seconds;
    let deadline = Instant::now() + Duration::from_secs(300);
    while (committed_at.lock().await.len() as u64) < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    collector.abort();

    let sent_at = sent_at.lock().await;
    let committed_at = committed_at.lock().await;
    let mut latencies: Vec<f64> = committed_at
        .iter()
        .filter_map(|(id, done)| {
            sent_at
                .get(id)
                .map(|sent| done.duration_since(*sent).as_secs_f64() * 1000.0)
        })
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
    for ((name, pid), cpu) in processes.iter().zip(&cpu_used) {
        let millicores = cpu.map_or("?".into(), |cpu| {
            format!("{:.0}", cpu / load_seconds * 1000.0)
        });
        println!(
            "{name}: CPU {millicores} millicores over the load, RSS {} KiB (peak {} KiB)",
            status_number(*pid, "VmRSS").unwrap_or_default(),
            status_number(*pid, "VmHWM").unwrap_or_default()
        );
    }
    println!(
        "JetStream store on disk after the drain ({retention}): {:.1} MiB",
        disk_bytes(pipeline.nats.store_dir()) as f64 / (1024.0 * 1024.0)
    );
    tokio::task::block_in_place(|| {
        pipeline.receiver.terminate();
        pipeline.consumer.terminate();
        for consumer in &mut more_consumers {
            consumer.terminate();
        }
    });
    Ok(())
}

//! Accept → commit latency benchmark (not a test): Stripe-signed 5 KB events sent
//! at a fixed rate through the real `hookline-receiver` to the real
//! `hookline-consumer`, timed from the moment the request is sent until Postgres
//! delivers the `NOTIFY hookline_events` of its row — which happens only after
//! the consumer's transaction has committed.
//!
//! ```text
//! cargo run --release --example latency_bench -- [RATE] [SECONDS]
//! ```
//!
//! Defaults: 1000 requests/s for 30 s. Everything runs on loopback (nats-server
//! and Postgres started by `hookline-e2e`); the load stops by itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use hookline_e2e::Pipeline;
use sha2::Sha256;
use tokio::sync::Mutex;

const SECRET: &str = "whsec_latency_bench_not_real";
const MANIFEST: &str = "apiVersion: hookline.io/v1alpha1
kind: WebhookEndpoint
metadata: {name: latency, namespace: bench}
spec:
  provider: stripe
  secretRef: {name: bench}
  ingress: {path: /stripe}
";

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

    let dir = tempfile::tempdir()?;
    let manifest = dir.path().join("endpoint.yaml");
    std::fs::write(&manifest, MANIFEST)?;
    let mut pipeline = tokio::task::block_in_place(|| Pipeline::start(&manifest, SECRET, "warn"))?;

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
    let offered = total as f64 / started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
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
    for (name, service) in [
        ("receiver", &pipeline.receiver),
        ("consumer", &pipeline.consumer),
    ] {
        let status = service
            .id()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .unwrap_or_default();
        let peak = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .unwrap_or("?")
            .trim()
            .to_owned();
        println!("{name} peak RSS {peak}");
    }
    tokio::task::block_in_place(|| {
        pipeline.receiver.terminate();
        pipeline.consumer.terminate();
    });
    Ok(())
}

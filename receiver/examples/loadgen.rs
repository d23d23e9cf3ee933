//! The receiver's benchmark (not a test): signed 5 KB Stripe-style events with
//! unique ids at a fixed concurrency, against the real `hookline-receiver`
//! binary and, in the same run on the same nats-server, against the ceiling of
//! this design: a minimal HTTP handler that only publishes the body with
//! `Nats-Msg-Id` and answers after the PubAck (no verification, no parsing).
//!
//! ```text
//! cargo run --release --example loadgen -- \
//!     --concurrency 64 --duration 10s --warmup 2s --rounds 4
//! ```
//!
//! Prints accepted req/s, p50/p99/p99.9 latency and errors for each round of
//! each server (rounds alternate which goes first, to spread the noise of a
//! shared machine), the mean ratio, and each server's peak RSS (VmHWM). Both
//! servers and the client use mimalloc, like the receiver binary.
//!
//! Everything runs on loopback: a local nats-server (hookline-e2e) and two
//! local HTTP servers; every loop is bounded by `--duration`.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use clap::{Parser, Subcommand};
use hmac::{Hmac, Mac};
use hookline_e2e::{ChildProcess, NatsServer, free_port, workspace_bin};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sha2::Sha256;

/// The same allocator as the receiver, so the ceiling differs from it only by
/// the work the receiver does (and the client side is the same for both).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "whsec_benchmark_secret_not_real";
const MANIFEST: &str = "apiVersion: hookline.io/v1alpha1
kind: WebhookEndpoint
metadata:
  name: load
  namespace: bench
spec:
  provider: stripe
  secretRef:
    name: bench
  ingress:
    path: /stripe
";

const CEILING: &str = "ceiling (publish + PubAck only)";
const RECEIVER: &str = "hookline-receiver";

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Option<Mode>,
    /// Open connections, each sending one request at a time.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured time per server.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured load before each measurement.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// Body size in bytes.
    #[arg(long, default_value_t = 5120)]
    body_bytes: usize,
    /// Which servers to measure: both, ceiling or receiver.
    #[arg(long, default_value = "both")]
    target: String,
    /// Measurements of each server, alternating which goes first.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

#[derive(Subcommand)]
enum Mode {
    /// The ceiling server (started by the benchmark itself).
    Ceiling {
        #[arg(long)]
        nats_url: String,
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        subject: String,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    hookline_api::resolve::parse_duration(text)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Some(Mode::Ceiling {
            ref nats_url,
            listen,
            ref subject,
        }) => runtime.block_on(ceiling_server(nats_url, listen, subject.clone())),
        None => runtime.block_on(benchmark(&cli)),
    }
}

// ---- the ceiling: publish with Nats-Msg-Id, answer after the PubAck ----

struct Ceiling {
    js: async_nats::jetstream::Context,
    subject: String,
}

async fn ceiling_server(
    nats_url: &str,
    listen: SocketAddr,
    subject: String,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = async_nats::connect(nats_url).await?;
    let state = Arc::new(Ceiling {
        js: async_nats::jetstream::new(client),
        subject,
    });
    let app = axum::Router::new()
        .route("/stripe", post(ceiling_handler))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn ceiling_handler(
    State(state): State<Arc<Ceiling>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let id = headers
        .get("x-event-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let message = async_nats::jetstream::message::PublishMessage::build()
        .payload(body)
        .message_id(id);
    match state.js.send_publish(state.subject.clone(), message).await {
        Ok(ack) => match ack.await {
            Ok(_) => StatusCode::OK,
            Err(_) => StatusCode::SERVICE_UNAVAILABLE,
        },
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

// ---- the load ----

/// A 5 KB Stripe-style event with a unique id, and its signature header.
struct EventMaker {
    padding: String,
    key: Hmac<Sha256>,
}

impl EventMaker {
    fn new(body_bytes: usize) -> Result<EventMaker, hmac::digest::InvalidLength> {
        let skeleton = Self::render("evt_x_000000000000", "");
        let padding = "x".repeat(body_bytes.saturating_sub(skeleton.len()));
        Ok(EventMaker {
            padding,
            key: Hmac::new_from_slice(SECRET.as_bytes())?,
        })
    }

    fn render(id: &str, padding: &str) -> String {
        format!(
            r#"{{"id":"{id}","object":"event","type":"invoice.paid","created":1700000000,"data":{{"object":{{"id":"in_{id}","object":"invoice","padding":"{padding}"}}}}}}"#
        )
    }

    fn make(&self, id: &str) -> (Bytes, String) {
        let body = Self::render(id, &self.padding);
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let mut mac = self.key.clone();
        mac.update(ts.to_string().as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        (Bytes::from(body), format!("t={ts},v1={signature}"))
    }
}

#[derive(Default)]
struct Totals {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u32>,
}

/// Load from `concurrency` connections for `warmup + duration`; only requests
/// started after the warm-up are measured.
async fn load(
    address: SocketAddr,
    prefix: &str,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    maker: Arc<EventMaker>,
) -> (Totals, Duration) {
    let started = Instant::now();
    let measure_from = started + warmup;
    let stop_at = measure_from + duration;
    let counter = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let counter = counter.clone();
        let maker = maker.clone();
        let prefix = prefix.to_owned();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut totals = Totals::default();
            'connection: while Instant::now() < stop_at && !stop.load(Ordering::Relaxed) {
                let Ok(tcp) = tokio::net::TcpStream::connect(address).await else {
                    totals.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let Ok((mut sender, connection)) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
                else {
                    totals.errors += 1;
                    continue;
                };
                tokio::spawn(connection);
                loop {
                    let now = Instant::now();
                    if now >= stop_at {
                        break 'connection;
                    }
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let id = format!("evt_{prefix}_{n:012}");
                    let (body, signature) = maker.make(&id);
                    let Ok(request) = hyper::Request::post("/stripe")
                        .header("host", "localhost")
                        .header("content-type", "application/json")
                        .header("stripe-signature", signature)
                        .header("x-event-id", &id)
                        .body(Full::new(body))
                    else {
                        totals.errors += 1;
                        continue;
                    };
                    if sender.ready().await.is_err() {
                        totals.errors += 1;
                        continue 'connection;
                    }
                    let sent = Instant::now();
                    let measured = sent >= measure_from;
                    match sender.send_request(request).await {
                        Ok(response) => {
                            let status = response.status();
                            let _ = response.into_body().collect().await;
                            if measured {
                                let micros = sent.elapsed().as_micros();
                                totals
                                    .latencies_us
                                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
                                if status == StatusCode::OK {
                                    totals.ok += 1;
                                } else {
                                    totals.errors += 1;
                                }
                            }
                        }
                        Err(_) => {
                            if measured {
                                totals.errors += 1;
                            }
                            continue 'connection;
                        }
                    }
                }
            }
            totals
        }));
    }
    let mut all = Totals::default();
    for task in tasks {
        if let Ok(totals) = task.await {
            all.ok += totals.ok;
            all.errors += totals.errors;
            all.latencies_us.extend(totals.latencies_us);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let measured = Instant::now().saturating_duration_since(measure_from);
    (all, measured)
}

struct Report {
    name: &'static str,
    rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    errors: u64,
    peak_rss_mib: f64,
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    f64::from(sorted[index]) / 1000.0
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|value| {
                    value
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

async fn wait_listening(address: SocketAddr, child: &mut ChildProcess) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(address).await.is_err() {
        assert!(child.is_running(), "server exited:\n{}", child.log_tail(30));
        assert!(Instant::now() < deadline, "server not listening");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn measure(
    name: &'static str,
    prefix: &str,
    address: SocketAddr,
    child: &mut ChildProcess,
    cli: &Cli,
    maker: Arc<EventMaker>,
) -> Report {
    wait_listening(address, child).await;
    let (mut totals, measured) = load(
        address,
        prefix,
        cli.concurrency,
        cli.warmup,
        cli.duration,
        maker,
    )
    .await;
    totals.latencies_us.sort_unstable();
    Report {
        name,
        rate: totals.ok as f64 / measured.as_secs_f64(),
        p50: percentile(&totals.latencies_us, 0.50),
        p99: percentile(&totals.latencies_us, 0.99),
        p999: percentile(&totals.latencies_us, 0.999),
        errors: totals.errors,
        peak_rss_mib: peak_rss_mib(child.id()),
    }
}

async fn benchmark(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    let nats = tokio::task::block_in_place(NatsServer::start)?;
    let dir = tempfile::tempdir()?;
    let manifest = dir.path().join("endpoint.yaml");
    std::fs::write(&manifest, MANIFEST)?;
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n"))?;
    let endpoint = hookline_api::load_manifest(&manifest)?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    hookline_api::provision::provision(&js, &endpoint).await?;
    let subject = endpoint.stream.subject_for("invoice.paid");
    let maker = Arc::new(EventMaker::new(cli.body_bytes)?);
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    println!(
        "loadgen: {} connections, {:?} warm-up + {:?} measured, {} byte bodies, nats-server {}",
        cli.concurrency,
        cli.warmup,
        cli.duration,
        maker.make("evt_x_000000000000").0.len(),
        nats.url()
    );

    let mut ceiling = None;
    if cli.target == "both" || cli.target == "ceiling" {
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = Command::new(std::env::current_exe()?);
        command.args([
            "ceiling",
            "--nats-url",
            &nats.url(),
            "--listen",
            &address.to_string(),
            "--subject",
            &subject,
        ]);
        ceiling = Some((ChildProcess::spawn(&mut command)?, address));
    }
    let mut receiver = None;
    if cli.target == "both" || cli.target == "receiver" {
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let binary = tokio::task::block_in_place(|| workspace_bin("hookline-receiver"));
        let mut command = Command::new(binary);
        command
            .arg("--endpoint")
            .arg(&manifest)
            .arg("--secret-file")
            .arg(&secret)
            .args(["--nats-url", &nats.url(), "--listen", &address.to_string()])
            .env("RUST_LOG", "warn");
        receiver = Some((ChildProcess::spawn(&mut command)?, address));
    }

    // Rounds alternate which server goes first, so neither always meets the
    // bigger stream or the warmer machine.
    let mut rows: Vec<(usize, Report)> = Vec::new();
    for round in 0..cli.rounds {
        let mut order = vec![(CEILING, &mut ceiling), (RECEIVER, &mut receiver)];
        if round % 2 == 1 {
            order.reverse();
        }
        for (name, server) in order {
            let Some((child, address)) = server.as_mut() else {
                continue;
            };
            let prefix = format!("{}{run_id}x{round}", &name[..1]);
            let report = measure(name, &prefix, *address, child, cli, maker.clone()).await;
            rows.push((round + 1, report));
        }
    }
    if let Some((child, _)) = &receiver {
        let tail = child.log_tail(5);
        if !tail.trim().is_empty() {
            println!("receiver log tail:\n{tail}");
        }
    }

    println!(
        "{:<6} {:<34} {:>10} {:>9} {:>9} {:>9} {:>8} {:>10}",
        "round", "server", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "peak RSS"
    );
    for (round, report) in &rows {
        println!(
            "{:<6} {:<34} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>7.1} MiB",
            round,
            report.name,
            report.rate,
            report.p50,
            report.p99,
            report.p999,
            report.errors,
            report.peak_rss_mib
        );
    }
    let mean = |name: &str| {
        let rates: Vec<f64> = rows
            .iter()
            .filter(|(_, report)| report.name == name)
            .map(|(_, report)| report.rate)
            .collect();
        rates.iter().sum::<f64>() / rates.len().max(1) as f64
    };
    let (ceiling_rate, receiver_rate) = (mean(CEILING), mean(RECEIVER));
    if ceiling_rate > 0.0 && receiver_rate > 0.0 {
        println!(
            "mean over {} round(s): ceiling {ceiling_rate:.0} req/s, receiver {receiver_rate:.0} req/s, receiver / ceiling: {:.1}%",
            cli.rounds,
            100.0 * receiver_rate / ceiling_rate
        );
    }
    let stored = js
        .get_stream(&endpoint.stream.name)
        .await?
        .get_info()
        .await?;
    println!("messages in the stream: {}", stored.state.messages);
    Ok(())
}

//! The receiver's benchmark (not a test): signed events with unique ids at a
//! fixed concurrency, as Stripe, GitHub or Standard Webhooks send them
//! (`--provider`, `--body-bytes`), against the real `hookline-receiver` binary
//! and, in the same run on the same nats-server, against the ceiling of this
//! design: a minimal HTTP handler that only publishes the body with
//! `Nats-Msg-Id` and answers after the PubAck (no verification, no parsing).
//! With `--with-headers`, also against that handler publishing the header
//! block the receiver would (made by the receiver's own code): what the
//! contract's headers cost apart from the receiver's checks. All get the very
//! same requests.
//!
//! ```text
//! cargo run --release --example loadgen -- \
//!     --provider github --body-bytes 5120 \
//!     --concurrency 64 --duration 10s --warmup 2s --rounds 4 [--with-headers]
//! ```
//!
//! Prints accepted req/s, p50/p99/p99.9 latency and errors for each round of
//! each server (rounds alternate which goes first, to spread the noise of a
//! shared machine), the mean ratios, and each server's peak RSS (VmHWM) and
//! CPU per request (its own, nats-server's, and the whole machine's). Then it times the
//! receiver's steps without I/O, and the least any receiver must add to the
//! ceiling (HMAC over the body, a JSON check), and says what ratio each would
//! allow at best: the part of the gap no receiver can close. Both
//! servers and the client use mimalloc, like the receiver binary. The
//! receiver runs at its default log level (`info`), as it is deployed.
//!
//! The stream is an `Archive` (limits retention, no size cap) that is purged
//! before every measurement: a `Buffer` with nobody consuming would fill its
//! 512 MiB in seconds, and every measurement starts from the same empty
//! stream (how throughput changes as a stream grows is `--preload`'s subject).
//! `--preload N` stores N messages of `--preload-bytes` first and purges
//! nothing, to measure both servers against a large stream.
//!
//! `--callgrind DIR` runs both servers under `valgrind --tool=callgrind`
//! (counters zeroed when the warm-up ends, dumped when the measurement ends,
//! into DIR), to compare their instructions per request; use a low
//! concurrency and a few seconds, valgrind is some 50 times slower.
//!
//! `loadgen pool --endpoints 1000` measures the pool receiver instead
//! (`--endpoint-dir`): its RSS with that many endpoints loaded (idle, and
//! after the load), req/s with the requests spread over every endpoint
//! against the same binary serving one endpoint (`--endpoint`, and a pool of
//! one) at the same concurrency, rounds alternating the order, and the time
//! from an endpoint's manifest and secret written to its first 200; the same
//! pool with `--shared-stream` (one stream, a subject per endpoint, and the
//! stream's one durable consumer) is measured beside it. Each measurement
//! starts on a restarted nats-server with every stream purged.
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
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::{Parser, Subcommand, ValueEnum};
use hmac::{Hmac, Mac};
use hookline_e2e::proc_stats::{MachineCpu, cpu_seconds, peak_rss_mib};
use hookline_e2e::{ChildProcess, NatsServer, free_port, workspace_bin};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sha2::Sha256;

/// The same allocator as the receiver, so the ceiling differs from it only by
/// the work the receiver does (and the client side is the same for both).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Stripe's and GitHub's secret is used as text; Standard Webhooks' is
/// `whsec_` and the base64 of the key bytes (these, base64-encoded).
const SECRET: &str = "whsec_benchmark_secret_not_real";
const STANDARD_WEBHOOKS_KEY: &[u8] = b"benchmark-key-not-real-32-bytes!";

/// The sender being imitated: its signature scheme, headers and body shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Provider {
    Stripe,
    Github,
    StandardWebhooks,
}

impl Provider {
    fn manifest_name(self) -> &'static str {
        match self {
            Provider::Stripe => "stripe",
            Provider::Github => "github",
            Provider::StandardWebhooks => "standardWebhooks",
        }
    }

    /// The endpoint: the provider's preset, an `Archive` stream (see the
    /// module comment) and the path every request goes to.
    fn manifest(self) -> String {
        self.endpoint("load", PATH)
    }

    /// Endpoint `bench/<name>` on `path`, otherwise as [`Provider::manifest`].
    fn endpoint(self, name: &str, path: &str) -> String {
        format!(
            "apiVersion: hookline.io/v1alpha1
kind: WebhookEndpoint
metadata:
  name: {name}
  namespace: bench
spec:
  provider: {}
  secretRef:
    name: bench
  ingress:
    path: {path}
  stream:
    retention: Archive
",
            self.manifest_name()
        )
    }

    fn secret(self) -> String {
        match self {
            Provider::Stripe | Provider::Github => SECRET.to_owned(),
            Provider::StandardWebhooks => {
                format!("whsec_{}", BASE64.encode(STANDARD_WEBHOOKS_KEY))
            }
        }
    }

    fn event_type(self) -> &'static str {
        match self {
            Provider::Stripe | Provider::StandardWebhooks => "invoice.paid",
            Provider::Github => "issues",
        }
    }
}

const PATH: &str = "/hooks";

/// The `WebhookPool` of `loadgen pool`'s `--shared-stream` receiver.
const SHARED_POOL: &str = "loadgen";

const CEILING: &str = "ceiling (publish + PubAck only)";
const CEILING_HEADERS: &str = "ceiling + the receiver's headers";
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
    /// Whose requests to send: their signature, headers and body shape.
    #[arg(long, value_enum, default_value = "stripe")]
    provider: Provider,
    /// Messages stored in the stream before the first measurement; with it
    /// the stream is never purged, so it keeps growing through the rounds.
    #[arg(long, default_value_t = 0)]
    preload: u64,
    /// Body size of the preloaded messages.
    #[arg(long, default_value_t = 1024)]
    preload_bytes: usize,
    /// Run both servers under callgrind, writing the profiles into this directory.
    #[arg(long)]
    callgrind: Option<std::path::PathBuf>,
    /// The receiver binary to measure (default: the workspace's, built first).
    #[arg(long)]
    receiver_bin: Option<std::path::PathBuf>,
    /// Which servers to measure: both, ceiling or receiver.
    #[arg(long, default_value = "both")]
    target: String,
    /// Also measure the ceiling publishing the header block the receiver
    /// would (built by the receiver's own code, nothing verified or
    /// parsed): what carrying the contract's headers costs, apart from the
    /// receiver's checks.
    #[arg(long)]
    with_headers: bool,
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
        /// Publish with the header block the receiver would make for this
        /// endpoint's requests.
        #[arg(long)]
        headers_of: Option<std::path::PathBuf>,
        /// Also take `POST /p/<i>` and publish it to this subject with `{}`
        /// replaced by `i`: the ceiling of a pool, one stream per path.
        #[arg(long)]
        pool_subjects: Option<String>,
    },
    /// The pool receiver (`--endpoint-dir`, and with `--shared-stream`): RSS
    /// with ENDPOINTS loaded, req/s spread over them against one endpoint
    /// (`--endpoint`, and a pool of one) at the same concurrency, and the
    /// time from a manifest and secret added to the first 200.
    Pool {
        /// Endpoints in the big pool, all `--provider`, one namespace.
        #[arg(long, default_value_t = 1000)]
        endpoints: usize,
        /// Endpoints added one by one to time their first 200.
        #[arg(long, default_value_t = 10)]
        additions: usize,
        /// Measure only the servers whose name contains one of these (for
        /// profiling one of them); the ratios of those left out are NaN.
        #[arg(long)]
        only: Vec<String>,
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
            ref headers_of,
            ref pool_subjects,
        }) => runtime.block_on(ceiling_server(
            nats_url,
            listen,
            subject.clone(),
            headers_of.as_deref(),
            pool_subjects.clone(),
        )),
        Some(Mode::Pool {
            endpoints,
            additions,
            ref only,
        }) => runtime.block_on(pool_benchmark(&cli, endpoints, additions, only)),
        None => runtime.block_on(benchmark(&cli)),
    }
}

/// The one path of the single-endpoint measurements.
fn one_path() -> Arc<[String]> {
    Arc::from([PATH.to_owned()])
}

// ---- the pool: many endpoints from one receiver ----

/// A server measured by `loadgen pool`: its name, its program and flags,
/// the paths its load goes to.
type Configuration = (
    &'static str,
    std::path::PathBuf,
    Vec<std::ffi::OsString>,
    Arc<[String]>,
);

/// Writes members `range` (manifest and secret file) into `dir`.
fn write_members(
    dir: &std::path::Path,
    provider: Provider,
    range: std::ops::Range<usize>,
) -> std::io::Result<()> {
    for i in range {
        std::fs::write(
            dir.join("secrets").join(format!("m{i}")),
            format!("{}\n", provider.secret()),
        )?;
        std::fs::write(
            dir.join("endpoints").join(format!("m{i}.yaml")),
            provider.endpoint(&format!("m{i}"), &format!("/p/{i}")),
        )?;
    }
    Ok(())
}

/// `VmRSS` and `VmHWM` of `pid` in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    (
        hookline_e2e::proc_stats::rss_mib(pid).unwrap_or(f64::NAN),
        peak_rss_mib(pid).unwrap_or(f64::NAN),
    )
}

/// Starts a server with `args` and waits until it answers `/readyz`.
async fn start_server(
    binary: &std::path::Path,
    args: &[&std::ffi::OsStr],
    nats_url: &str,
) -> Result<(ChildProcess, SocketAddr, Duration), Box<dyn std::error::Error>> {
    let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut command = Command::new(binary);
    command
        .args(args)
        .args(["--nats-url", nats_url, "--listen", &address.to_string()])
        .env_remove("RUST_LOG");
    let started = Instant::now();
    let mut child = ChildProcess::spawn(&mut command)?;
    if !wait_ready(address, &mut child).await {
        return Err("the server was not ready within 300 s".into());
    }
    Ok((child, address, started.elapsed()))
}

/// Waits for `GET /readyz` 200 (over hyper's client connection, as the load).
async fn wait_ready(address: SocketAddr, child: &mut ChildProcess) -> bool {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if status_of(address, "GET", "/readyz").await == Some(StatusCode::OK) {
            return true;
        }
        assert!(
            child.is_running(),
            "receiver exited:\n{}",
            child.log_tail(30)
        );
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One request without a body on a fresh connection; its status.
async fn status_of(address: SocketAddr, method: &str, path: &str) -> Option<StatusCode> {
    let tcp = tokio::net::TcpStream::connect(address).await.ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    Some(response.status())
}

/// One signed event to `path` on a fresh connection; its status.
async fn post_signed(
    address: SocketAddr,
    path: &str,
    maker: &EventMaker,
    id: &str,
) -> Option<StatusCode> {
    let tcp = tokio::net::TcpStream::connect(address).await.ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(connection);
    let signed = maker.make(id);
    let mut request = hyper::Request::post(path).header("host", "localhost");
    for (name, value) in &signed.headers {
        request = request.header(*name, value);
    }
    let response = sender
        .send_request(request.body(Full::new(signed.body)).ok()?)
        .await
        .ok()?;
    Some(response.status())
}

async fn pool_benchmark(
    cli: &Cli,
    endpoints: usize,
    additions: usize,
    only: &[String],
) -> Result<(), Box<dyn std::error::Error>> {
    let mut nats = tokio::task::block_in_place(NatsServer::start)?;
    let binary = match &cli.receiver_bin {
        Some(path) => path.clone(),
        None => tokio::task::block_in_place(|| workspace_bin("hookline-receiver")),
    };
    let maker = Arc::new(EventMaker::new(cli.provider, cli.body_bytes)?);
    let big = tempfile::tempdir()?;
    let small = tempfile::tempdir()?;
    for dir in [big.path(), small.path()] {
        std::fs::create_dir(dir.join("endpoints"))?;
        std::fs::create_dir(dir.join("secrets"))?;
    }
    write_members(big.path(), cli.provider, 0..endpoints)?;
    write_members(small.path(), cli.provider, 0..1)?;
    let single = tempfile::tempdir()?;
    let manifest = single.path().join("endpoint.yaml");
    std::fs::write(&manifest, cli.provider.manifest())?;
    let secret = single.path().join("secret");
    std::fs::write(&secret, format!("{}\n", cli.provider.secret()))?;

    // Every stream exists before the first measurement, whichever goes first
    // (the receivers' --provision then only finds them).
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let single_endpoint = hookline_api::load_manifest(&manifest)?;
    hookline_api::provision::provision(&js, &single_endpoint).await?;
    let mut member_subject = String::new();
    for i in 0..endpoints {
        let member =
            hookline_api::load_manifest(&big.path().join("endpoints").join(format!("m{i}.yaml")))?;
        hookline_api::provision::provision(&js, &member).await?;
        // The same member in the pool's one stream (made over the whole
        // pool's subjects, with its one durable, by the first).
        let shared = member
            .clone()
            .in_shared_stream(None, SHARED_POOL, Default::default());
        hookline_api::provision::provision(&js, &shared).await?;
        if i == 0 {
            member_subject = member
                .stream
                .subject_for(cli.provider.event_type())
                .replacen("m0", "m{}", 1);
        }
    }
    let single_subject = single_endpoint
        .stream
        .subject_for(cli.provider.event_type());
    // One stream with a subject per endpoint (set as an endpoint's stream
    // is): what one stream per pool would cost NATS.
    let mut shared = js
        .get_stream(&single_endpoint.stream.name)
        .await?
        .info()
        .await?
        .config
        .clone();
    shared.name = "LOADGEN_POOL_SUBJECTS".into();
    shared.subjects = vec!["loadgen.pool.>".into()];
    js.create_stream(shared).await?;

    println!(
        "loadgen pool: {endpoints} {:?} endpoints, {} byte bodies, {} connections, {:?} warm-up + {:?} measured, {} rounds",
        cli.provider,
        maker.make("evt_x_000000000000").body.len(),
        cli.concurrency,
        cli.warmup,
        cli.duration,
        cli.rounds,
    );
    let pool_args = |dir: &std::path::Path| -> Vec<std::ffi::OsString> {
        vec![
            "--endpoint-dir".into(),
            dir.join("endpoints").into(),
            "--secret-dir".into(),
            dir.join("secrets").into(),
            "--provision".into(),
        ]
    };
    let ceiling_args = |subject: &str, pool_subjects: Option<&str>| -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> =
            vec!["ceiling".into(), "--subject".into(), subject.into()];
        if let Some(pattern) = pool_subjects {
            args.extend(["--pool-subjects".into(), pattern.into()]);
        }
        args
    };
    let big_paths: Arc<[String]> = (0..endpoints).map(|i| format!("/p/{i}")).collect();
    let this = std::env::current_exe()?;
    let mut shared_args = pool_args(big.path());
    shared_args.extend(["--shared-stream".into(), SHARED_POOL.into()]);
    let configurations: [Configuration; 7] = [
        (
            "single --endpoint",
            binary.clone(),
            vec![
                "--endpoint".into(),
                manifest.clone().into(),
                "--secret-file".into(),
                secret.clone().into(),
                "--provision".into(),
            ],
            one_path(),
        ),
        (
            "pool of 1",
            binary.clone(),
            pool_args(small.path()),
            Arc::from(["/p/0".to_owned()]),
        ),
        (
            "pool of N",
            binary.clone(),
            pool_args(big.path()),
            big_paths.clone(),
        ),
        (
            "pool of N, shared",
            binary.clone(),
            shared_args,
            big_paths.clone(),
        ),
        (
            "ceiling, 1 stream",
            this.clone(),
            ceiling_args(&single_subject, None),
            one_path(),
        ),
        (
            "ceiling, N streams",
            this.clone(),
            ceiling_args(&single_subject, Some(&member_subject)),
            big_paths.clone(),
        ),
        (
            "ceiling, N subjects",
            this,
            ceiling_args(&single_subject, Some("loadgen.pool.m{}.event")),
            big_paths,
        ),
    ];
    println!(
        "{:<6} {:<19} {:>8} {:>9} {:>8} {:>7} {:>12} {:>12} {:>12} {:>11} {:>11}",
        "round",
        "server",
        "start s",
        "req/s",
        "p99 ms",
        "errors",
        "idle RSS",
        "RSS after",
        "peak RSS",
        "CPU µs/req",
        "nats µs/req"
    );
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); configurations.len()];
    for round in 0..cli.rounds {
        let mut order: Vec<usize> = (0..configurations.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for index in order {
            let (name, program, args, paths) = &configurations[index];
            if !only.is_empty() && !only.iter().any(|wanted| name.contains(wanted.as_str())) {
                continue;
            }
            // A fresh nats-server for each measurement: one that had just
            // taken a thousand streams' traffic (pool of N, N streams) spent
            // a quarter more per request on the next measurement, whichever
            // it was.
            tokio::task::block_in_place(|| nats.restart())?;
            purge_all(&async_nats::jetstream::new(
                async_nats::connect(nats.url()).await?,
            ))
            .await?;
            let args: Vec<&std::ffi::OsStr> = args.iter().map(|arg| arg.as_os_str()).collect();
            let (mut child, address, started) = start_server(program, &args, &nats.url()).await?;
            // Let start-up's allocations settle before reading the idle RSS.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let (idle, _) = rss_mib(child.id());
            let prefix = format!(
                "p{index}r{round}t{}",
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or_default()
            );
            let (pid, nats_pid, warmup) = (child.id(), nats.pid(), cli.warmup);
            let cpu_at_start = tokio::spawn(async move {
                tokio::time::sleep(warmup).await;
                (cpu_seconds(pid).unwrap_or(f64::NAN), nats_seconds(nats_pid))
            });
            let (mut totals, measured) = load(
                address,
                &prefix,
                cli.concurrency,
                cli.warmup,
                cli.duration,
                maker.clone(),
                paths.clone(),
            )
            .await;
            let (cpu_started, nats_started) = cpu_at_start.await.unwrap_or((f64::NAN, f64::NAN));
            let answered = totals.latencies_us.len().max(1) as f64;
            let cpu_us = (cpu_seconds(pid).unwrap_or(f64::NAN) - cpu_started) * 1e6 / answered;
            let nats_us = (nats_seconds(nats_pid) - nats_started) * 1e6 / answered;
            totals.latencies_us.sort_unstable();
            let rate = totals.ok as f64 / measured.as_secs_f64();
            rates[index].push(rate);
            let (after, peak) = rss_mib(child.id());
            println!(
                "{:<6} {:<19} {:>8.1} {:>9.0} {:>8.2} {:>7} {:>8.1} MiB {:>8.1} MiB {:>8.1} MiB {:>11.1} {:>11.1}",
                round + 1,
                name,
                started.as_secs_f64(),
                rate,
                percentile(&totals.latencies_us, 0.99),
                totals.errors,
                idle,
                after,
                peak,
                cpu_us,
                nats_us,
            );
            if index == 2 && round + 1 == cli.rounds {
                time_additions(
                    big.path(),
                    cli.provider,
                    endpoints,
                    additions,
                    address,
                    &maker,
                )
                .await?;
            }
            child.signal(hookline_e2e::Signal::Term)?;
            let _ = tokio::task::block_in_place(|| child.wait_timeout(Duration::from_secs(30)));
        }
    }
    // A server left out by `--only` has no mean, and its ratios are NaN.
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len() as f64;
    let spread = |values: &[f64]| {
        let low = values.iter().copied().fold(f64::INFINITY, f64::min);
        let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{low:.0}..{high:.0}")
    };
    for (index, (name, _, _, _)) in configurations.iter().enumerate() {
        if rates[index].is_empty() {
            continue;
        }
        println!(
            "{name:<19} mean {:>8.0} req/s (rounds {})",
            mean(&rates[index]),
            spread(&rates[index])
        );
    }
    println!(
        "ratio pool of N / single: {:.3}; pool of N, shared stream / single: {:.3}; pool of N / pool of 1: {:.3}; ceiling N streams / 1 stream: {:.3}; ceiling N subjects (1 stream) / 1 stream: {:.3}",
        mean(&rates[2]) / mean(&rates[0]),
        mean(&rates[3]) / mean(&rates[0]),
        mean(&rates[2]) / mean(&rates[1]),
        mean(&rates[5]) / mean(&rates[4]),
        mean(&rates[6]) / mean(&rates[4]),
    );
    Ok(())
}

/// Empties every stream that holds messages, so each measurement starts
/// on the empty streams the first one had: nats-server slowed down as the
/// earlier measurements' messages piled up (one endpoint's rate fell from
/// 27,000 to 20,000 req/s between the first and the last measurement of a
/// run), which favoured whichever server went first.
async fn purge_all(js: &async_nats::jetstream::Context) -> Result<(), Box<dyn std::error::Error>> {
    use futures::StreamExt;
    let mut streams = js.streams();
    let mut full = Vec::new();
    while let Some(info) = streams.next().await {
        let info = info?;
        if info.state.messages > 0 {
            full.push(info.config.name);
        }
    }
    for name in full {
        js.get_stream_no_info(&name).await?.purge().await?;
    }
    Ok(())
}

/// Adds members one at a time to the running pool and times each from its
/// files written to its first 200 (polling every 20 ms); prints the median.
async fn time_additions(
    dir: &std::path::Path,
    provider: Provider,
    first: usize,
    additions: usize,
    address: SocketAddr,
    maker: &EventMaker,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut times = Vec::new();
    for i in first..first + additions {
        let started = Instant::now();
        write_members(dir, provider, i..i + 1)?;
        let path = format!("/p/{i}");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let id = format!("evt_add_{i}_{attempt}");
            if post_signed(address, &path, maker, &id).await == Some(StatusCode::OK) {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("{path}: no 200 within 30 s").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "added endpoint to first 200 (ms, {} additions): median {:.0}, min {:.0}, max {:.0}",
        times.len(),
        times.get(times.len() / 2).copied().unwrap_or(f64::NAN),
        times.first().copied().unwrap_or(f64::NAN),
        times.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

// ---- the ceiling: publish with Nats-Msg-Id, answer after the PubAck ----

struct Ceiling {
    js: async_nats::jetstream::Context,
    subject: String,
    /// With `--headers-of`: the receiver's header context for that endpoint.
    headers: Option<hookline_receiver::event::HeaderContext>,
    /// With `--pool-subjects`: the subject of `/p/<i>`, `{}` standing for `i`.
    pool_subjects: Option<String>,
}

async fn ceiling_server(
    nats_url: &str,
    listen: SocketAddr,
    subject: String,
    headers_of: Option<&std::path::Path>,
    pool_subjects: Option<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = async_nats::connect(nats_url).await?;
    let headers = match headers_of {
        Some(manifest) => Some(hookline_receiver::event::HeaderContext::new(
            &hookline_api::load_manifest(manifest)?,
        )),
        None => None,
    };
    let state = Arc::new(Ceiling {
        js: async_nats::jetstream::new(client),
        subject,
        headers,
        pool_subjects,
    });
    let app = axum::Router::new()
        .route(PATH, post(ceiling_handler))
        .fallback(ceiling_handler)
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn ceiling_handler(
    State(state): State<Arc<Ceiling>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    // Anything but a POST is a readiness check (the pool benchmark's).
    if method != axum::http::Method::POST {
        return StatusCode::OK;
    }
    let subject = match (&state.pool_subjects, uri.path().strip_prefix("/p/")) {
        (Some(pattern), Some(index)) => pattern.replace("{}", index),
        (None, Some(_)) => return StatusCode::NOT_FOUND,
        (_, None) => state.subject.clone(),
    };
    let id = headers
        .get("x-event-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let sent = match &state.headers {
        Some(context) => {
            let block = contract_headers(context, id, &headers);
            state.js.publish_with_headers(subject, block, body).await
        }
        None => {
            let message = async_nats::jetstream::message::PublishMessage::build()
                .payload(body)
                .message_id(id);
            state.js.send_publish(subject, message).await
        }
    };
    match sent {
        Ok(ack) => match ack.await {
            Ok(_) => StatusCode::OK,
            Err(_) => StatusCode::SERVICE_UNAVAILABLE,
        },
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The header block the receiver publishes for this request, by its own
/// code; the event's type, time and object id (which the receiver reads
/// from the body) are values of the same shape.
fn contract_headers(
    context: &hookline_receiver::event::HeaderContext,
    id: String,
    request: &HeaderMap,
) -> async_nats::HeaderMap {
    use hookline_receiver::event;
    let info = event::EventInfo {
        object_id: Some(format!("in_{id}")),
        id,
        id_source: "provider",
        event_type: Some("invoice.paid".to_owned()),
        timestamp: Some("2023-11-14T22:13:20Z".to_owned()),
    };
    event::message_headers(context, &info, &info.id, request, &event::now_rfc3339())
}

// ---- where a request's CPU goes, without I/O ----

/// µs per request of each step, timed on this machine with the receiver's own
/// code, and of the least any receiver must do that the ceiling does not.
struct StepCosts {
    /// `Verifier::verify`: the signature header, the timestamp, the HMAC.
    verify_us: f64,
    /// `parse_json`: the body's media type and the JSON read of the pointers.
    json_us: f64,
    /// `event::extract` and `event::message_headers`: the event's fields and
    /// the NATS message's headers.
    message_us: f64,
    /// The least: HMAC-SHA256 over the body (hmac + sha2, as the receiver).
    hmac_us: f64,
    /// The least: checking the body is JSON (serde_json reading into nothing).
    json_check_us: f64,
}

fn step_costs(
    maker: &EventMaker,
    endpoint: &hookline_api::ValidatedEndpoint,
    secret: &str,
) -> StepCosts {
    use hookline_receiver::checks::{body::parse_json, signature::Verifier};
    use hookline_receiver::event;
    use hookline_receiver::secrets::SecretSet;

    const AT_LEAST: Duration = Duration::from_millis(500);
    let signed = maker.make("evt_step_costs_000000");
    let body = &signed.body[..];
    let mut headers = HeaderMap::new();
    for (name, value) in &signed.headers {
        if let Ok(value) = value.parse() {
            headers.insert(*name, value);
        }
    }
    let scheme = &endpoint.verification;
    let secrets = SecretSet::parse(secret, scheme.secret_format, scheme.algorithm);
    let verifier = Verifier::new(scheme.clone());
    let reader = hookline_receiver::state::json_reader(endpoint, false);
    let fields = event::Fields::new(&endpoint.event);
    let context = event::HeaderContext::new(endpoint);
    let require_json = endpoint.request.require_json;
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
    )
    .unwrap_or_default();
    let json = parse_json(&reader, &headers, body, require_json).unwrap_or_default();
    let per_call = |work: &dyn Fn() -> usize| {
        let started = Instant::now();
        let mut calls = 0_u32;
        let mut sink = 0;
        while started.elapsed() < AT_LEAST {
            sink += std::hint::black_box(work());
            calls += 1;
        }
        std::hint::black_box(sink);
        started.elapsed().as_secs_f64() * 1e6 / f64::from(calls.max(1))
    };
    StepCosts {
        verify_us: per_call(&|| {
            usize::from(verifier.verify(&headers, body, &secrets, now).is_ok())
        }),
        json_us: per_call(&|| {
            usize::from(parse_json(&reader, &headers, body, require_json).is_ok())
        }),
        message_us: per_call(&|| {
            event::extract(&fields, &headers, json.as_ref(), body).map_or(0, |info| {
                event::message_headers(&context, &info, &info.id, &headers, &event::now_rfc3339())
                    .len()
            })
        }),
        hmac_us: per_call(&|| maker.sign(&[b"1700000000.", body]).len()),
        json_check_us: per_call(&|| {
            usize::from(serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok())
        }),
    }
}

// ---- the load ----

/// One request as the provider sends it.
struct Signed {
    body: Bytes,
    headers: Vec<(&'static str, String)>,
}

/// Events of the provider's shape, `body_bytes` long, each with a unique
/// id and signed as the provider signs.
struct EventMaker {
    provider: Provider,
    padding: String,
    key: Hmac<Sha256>,
}

impl EventMaker {
    fn new(
        provider: Provider,
        body_bytes: usize,
    ) -> Result<EventMaker, hmac::digest::InvalidLength> {
        let skeleton = Self::render(provider, "evt_x_000000000000", "");
        let padding = "x".repeat(body_bytes.saturating_sub(skeleton.len()));
        let key: &[u8] = match provider {
            Provider::Stripe | Provider::Github => SECRET.as_bytes(),
            Provider::StandardWebhooks => STANDARD_WEBHOOKS_KEY,
        };
        Ok(EventMaker {
            provider,
            padding,
            key: Hmac::new_from_slice(key)?,
        })
    }

    fn render(provider: Provider, id: &str, padding: &str) -> String {
        match provider {
            Provider::Stripe => format!(
                r#"{{"id":"{id}","object":"event","type":"invoice.paid","created":1700000000,"data":{{"object":{{"id":"in_{id}","object":"invoice","padding":"{padding}"}}}}}}"#
            ),
            Provider::Github => format!(
                r#"{{"action":"opened","issue":{{"id":1,"number":7,"title":"{id}","body":"{padding}"}},"repository":{{"id":2,"full_name":"hookline/bench"}},"sender":{{"login":"octocat","id":3}}}}"#
            ),
            Provider::StandardWebhooks => format!(
                r#"{{"type":"invoice.paid","timestamp":"2023-11-14T22:13:20Z","data":{{"id":"in_{id}","object":"invoice","padding":"{padding}"}}}}"#
            ),
        }
    }

    fn sign(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = self.key.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }

    fn make(&self, id: &str) -> Signed {
        let body = Self::render(self.provider, id, &self.padding);
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
            .to_string();
        let mut headers = vec![
            ("content-type", "application/json".to_owned()),
            ("x-event-id", id.to_owned()),
        ];
        match self.provider {
            Provider::Stripe => {
                let signature = self.sign(&[ts.as_bytes(), b".", body.as_bytes()]);
                headers.push((
                    "user-agent",
                    "Stripe/1.0 (+https://stripe.com/docs/webhooks)".into(),
                ));
                headers.push((
                    "stripe-signature",
                    format!("t={ts},v1={}", hex::encode(signature)),
                ));
            }
            Provider::Github => {
                let signature = self.sign(&[body.as_bytes()]);
                headers.push(("user-agent", "GitHub-Hookshot/044aadd".into()));
                headers.push(("x-github-event", "issues".into()));
                headers.push(("x-github-delivery", id.to_owned()));
                headers.push(("x-github-hook-id", "292430182".into()));
                headers.push((
                    "x-hub-signature-256",
                    format!("sha256={}", hex::encode(signature)),
                ));
            }
            Provider::StandardWebhooks => {
                let signature =
                    self.sign(&[id.as_bytes(), b".", ts.as_bytes(), b".", body.as_bytes()]);
                headers.push(("user-agent", "Svix-Webhooks/1.24.0".into()));
                headers.push(("webhook-id", id.to_owned()));
                headers.push(("webhook-timestamp", ts));
                headers.push((
                    "webhook-signature",
                    format!("v1,{}", BASE64.encode(signature)),
                ));
            }
        }
        Signed {
            body: Bytes::from(body),
            headers,
        }
    }
}

#[derive(Default)]
struct Totals {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u32>,
}

/// Load from `concurrency` connections for `warmup + duration`; only requests
/// started after the warm-up are measured. Request `n` goes to
/// `paths[n % paths.len()]` (one path, or a pool's endpoints in turn).
async fn load(
    address: SocketAddr,
    prefix: &str,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    maker: Arc<EventMaker>,
    paths: Arc<[String]>,
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
        let paths = paths.clone();
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
                    let signed = maker.make(&id);
                    let path = paths
                        .get(usize::try_from(n).unwrap_or_default() % paths.len().max(1))
                        .map_or(PATH, String::as_str);
                    let mut request = hyper::Request::post(path).header("host", "localhost");
                    for (name, value) in &signed.headers {
                        request = request.header(*name, value);
                    }
                    let Ok(request) = request.body(Full::new(signed.body)) else {
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
    answered: u64,
    p50: f64,
    p99: f64,
    p999: f64,
    errors: u64,
    peak_rss_mib: f64,
    /// Messages in the stream when the measurement ended.
    stored: u64,
    /// The server's CPU time (user + system) per answered request, in µs.
    cpu_us: f64,
    /// The whole machine's (client, nats-server, server) per answered request, in µs.
    machine_us: f64,
    /// nats-server's CPU time per answered request, in µs.
    nats_us: f64,
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    f64::from(sorted[index]) / 1000.0
}

async fn wait_listening(address: SocketAddr, child: &mut ChildProcess) {
    // Valgrind takes a while to start a server.
    let deadline = Instant::now() + Duration::from_secs(180);
    while tokio::net::TcpStream::connect(address).await.is_err() {
        assert!(child.is_running(), "server exited:\n{}", child.log_tail(30));
        assert!(Instant::now() < deadline, "server not listening");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `callgrind_control ACTION PID` (`--zero`, `--dump`).
fn callgrind_control(action: &str, pid: u32) {
    let status = Command::new("callgrind_control")
        .args([action, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status();
    if !status.is_ok_and(|status| status.success()) {
        eprintln!("callgrind_control {action} {pid} failed");
    }
}

/// Where both servers publish: the endpoint's stream, and the nats-server
/// process that keeps it (for its CPU time).
struct Nats<'a> {
    stream: &'a async_nats::jetstream::stream::Stream,
    pid: Option<u32>,
}

/// nats-server's CPU seconds so far (NaN when unknown).
fn nats_seconds(pid: Option<u32>) -> f64 {
    pid.and_then(cpu_seconds).unwrap_or(f64::NAN)
}

/// The whole stream, as the measurement ends.
async fn stream_messages(stream: &async_nats::jetstream::stream::Stream) -> u64 {
    match stream.get_info().await {
        Ok(info) => info.state.messages,
        Err(_) => 0,
    }
}

async fn measure(
    name: &'static str,
    prefix: &str,
    address: SocketAddr,
    child: &mut ChildProcess,
    cli: &Cli,
    maker: Arc<EventMaker>,
    nats: &Nats<'_>,
) -> Report {
    let (stream, nats_pid) = (nats.stream, nats.pid);
    wait_listening(address, child).await;
    if cli.preload == 0 {
        // Every measurement starts from the same empty stream.
        if let Err(err) = stream.purge().await {
            eprintln!("cannot purge the stream: {err}");
        }
    }
    let mut cpu_used = f64::NAN;
    let mut machine_used = f64::NAN;
    let mut nats_used = f64::NAN;
    let (mut totals, measured) = if cli.callgrind.is_some() {
        // Warm up, then count only the measured load's instructions.
        let warm = format!("{prefix}w");
        load(
            address,
            &warm,
            cli.concurrency,
            Duration::ZERO,
            cli.warmup,
            maker.clone(),
            one_path(),
        )
        .await;
        callgrind_control("--zero", child.id());
        let measured = load(
            address,
            prefix,
            cli.concurrency,
            Duration::ZERO,
            cli.duration,
            maker,
            one_path(),
        )
        .await;
        callgrind_control("--dump", child.id());
        measured
    } else {
        let pid = child.id();
        let warmup = cli.warmup;
        let cpu_at_start = tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            (
                cpu_seconds(pid).unwrap_or(f64::NAN),
                MachineCpu::now(),
                nats_seconds(nats_pid),
            )
        });
        let measured = load(
            address,
            prefix,
            cli.concurrency,
            cli.warmup,
            cli.duration,
            maker,
            one_path(),
        )
        .await;
        let (started, machine, nats_started) =
            cpu_at_start.await.unwrap_or((f64::NAN, None, f64::NAN));
        cpu_used = cpu_seconds(pid).unwrap_or(f64::NAN) - started;
        nats_used = nats_seconds(nats_pid) - nats_started;
        if let (Some(before), Some(after)) = (machine, MachineCpu::now()) {
            machine_used = after.busy_cores_since(&before) * measured.1.as_secs_f64();
        }
        measured
    };
    totals.latencies_us.sort_unstable();
    Report {
        name,
        rate: totals.ok as f64 / measured.as_secs_f64(),
        answered: totals.latencies_us.len() as u64,
        p50: percentile(&totals.latencies_us, 0.50),
        p99: percentile(&totals.latencies_us, 0.99),
        p999: percentile(&totals.latencies_us, 0.999),
        errors: totals.errors,
        peak_rss_mib: peak_rss_mib(child.id()).unwrap_or(f64::NAN),
        stored: stream_messages(stream).await,
        cpu_us: cpu_used * 1e6 / totals.latencies_us.len().max(1) as f64,
        machine_us: machine_used * 1e6 / totals.latencies_us.len().max(1) as f64,
        nats_us: nats_used * 1e6 / totals.latencies_us.len().max(1) as f64,
    }
}

/// Stores `count` messages of `bytes` random-ish bytes, without message ids
/// (they would be older than the duplicate window in a real stream).
async fn preload(
    js: &async_nats::jetstream::Context,
    subject: &str,
    count: u64,
    bytes: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    const IN_FLIGHT: u64 = 2000;
    let started = Instant::now();
    let filler: Vec<u8> = (0..bytes)
        .map(|index| b'a' + u8::try_from(index * 7919 % 26).unwrap_or(0))
        .collect();
    let body = Bytes::from(filler);
    let mut sent = 0;
    while sent < count {
        let batch = IN_FLIGHT.min(count - sent);
        let mut acks = Vec::with_capacity(usize::try_from(batch)?);
        for _ in 0..batch {
            acks.push(js.publish(subject.to_owned(), body.clone()).await?);
        }
        for ack in acks {
            ack.await?;
        }
        sent += batch;
        if sent % 1_000_000 < IN_FLIGHT {
            println!(
                "preloaded {sent} messages ({:.0} msg/s)",
                sent as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// The command that starts a server: itself, or under callgrind.
fn server_command(cli: &Cli, name: &str, program: &std::path::Path) -> Command {
    match &cli.callgrind {
        Some(dir) => {
            let mut command = Command::new("valgrind");
            command
                .arg("--tool=callgrind")
                .arg(format!(
                    "--callgrind-out-file={}/{name}.%p.out",
                    dir.display()
                ))
                .arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Starts this example as the ceiling server (publishing the receiver's
/// headers for the endpoint in `headers_of`, when given) on a free port.
fn spawn_ceiling(
    cli: &Cli,
    name: &str,
    nats_url: &str,
    subject: &str,
    headers_of: Option<&std::path::Path>,
) -> Result<(ChildProcess, SocketAddr), Box<dyn std::error::Error>> {
    let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut command = server_command(cli, name, &std::env::current_exe()?);
    command.args([
        "ceiling",
        "--nats-url",
        nats_url,
        "--listen",
        &address.to_string(),
        "--subject",
        subject,
    ]);
    if let Some(manifest) = headers_of {
        command.arg("--headers-of").arg(manifest);
    }
    Ok((ChildProcess::spawn(&mut command)?, address))
}

async fn benchmark(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    let nats = tokio::task::block_in_place(NatsServer::start)?;
    let dir = tempfile::tempdir()?;
    let manifest = dir.path().join("endpoint.yaml");
    std::fs::write(&manifest, cli.provider.manifest())?;
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{}\n", cli.provider.secret()))?;
    let endpoint = hookline_api::load_manifest(&manifest)?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    hookline_api::provision::provision(&js, &endpoint).await?;
    let stream = js.get_stream(&endpoint.stream.name).await?;
    let subject = endpoint.stream.subject_for(cli.provider.event_type());
    let maker = Arc::new(EventMaker::new(cli.provider, cli.body_bytes)?);
    if let Some(dir) = &cli.callgrind {
        std::fs::create_dir_all(dir)?;
    }
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    println!(
        "loadgen: {:?} requests, {} byte bodies, {} connections, {:?} warm-up + {:?} measured, nats-server {}",
        cli.provider,
        maker.make("evt_x_000000000000").body.len(),
        cli.concurrency,
        cli.warmup,
        cli.duration,
        nats.url()
    );
    if cli.preload > 0 {
        preload(&js, &subject, cli.preload, cli.preload_bytes).await?;
        let info = js
            .get_stream(&endpoint.stream.name)
            .await?
            .get_info()
            .await?;
        println!(
            "stream preloaded: {} messages, {:.2} GB",
            info.state.messages,
            info.state.bytes as f64 / 1e9
        );
    }

    let mut ceiling = None;
    if cli.target == "both" || cli.target == "ceiling" {
        ceiling = Some(spawn_ceiling(cli, "ceiling", &nats.url(), &subject, None)?);
    }
    let mut ceiling_headers = None;
    if cli.with_headers {
        ceiling_headers = Some(spawn_ceiling(
            cli,
            "ceiling-headers",
            &nats.url(),
            &subject,
            Some(&manifest),
        )?);
    }
    let mut receiver = None;
    if cli.target == "both" || cli.target == "receiver" {
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let binary = match &cli.receiver_bin {
            Some(path) => path.clone(),
            None => tokio::task::block_in_place(|| workspace_bin("hookline-receiver")),
        };
        let mut command = server_command(cli, "receiver", &binary);
        command
            .arg("--endpoint")
            .arg(&manifest)
            .arg("--secret-file")
            .arg(&secret)
            .args(["--nats-url", &nats.url(), "--listen", &address.to_string()])
            // The default log level, as deployed.
            .env_remove("RUST_LOG");
        receiver = Some((ChildProcess::spawn(&mut command)?, address));
    }

    // Rounds alternate which server goes first, so neither always meets the
    // warmer machine (or, with --preload, the bigger stream).
    let target = Nats {
        stream: &stream,
        pid: nats.pid(),
    };
    let mut rows: Vec<(usize, Report)> = Vec::new();
    for round in 0..cli.rounds {
        let mut order = vec![
            (CEILING, &mut ceiling),
            (CEILING_HEADERS, &mut ceiling_headers),
            (RECEIVER, &mut receiver),
        ];
        if round % 2 == 1 {
            order.reverse();
        }
        for (name, server) in order {
            let Some((child, address)) = server.as_mut() else {
                continue;
            };
            let prefix = format!("{}{run_id}x{round}", name.len());
            let report = measure(name, &prefix, *address, child, cli, maker.clone(), &target).await;
            rows.push((round + 1, report));
        }
    }
    if let Some((child, _)) = &receiver {
        let tail: Vec<String> = child
            .log_tail(50)
            .lines()
            .filter(|line| !line.contains("\"level\":\"INFO\""))
            .map(str::to_owned)
            .collect();
        if !tail.is_empty() {
            println!(
                "receiver log tail (warnings and errors):\n{}",
                tail.join("\n")
            );
        }
    }

    println!(
        "{:<6} {:<34} {:>10} {:>9} {:>9} {:>9} {:>8} {:>10} {:>12} {:>10} {:>12} {:>12}",
        "round",
        "server",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "peak RSS",
        "stream msgs",
        "CPU µs/req",
        "nats µs/req",
        "machine µs/req"
    );
    for (round, report) in &rows {
        println!(
            "{:<6} {:<34} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>7.1} MiB {:>12} {:>10.1} {:>12.1} {:>12.1}",
            round,
            report.name,
            report.rate,
            report.p50,
            report.p99,
            report.p999,
            report.errors,
            report.peak_rss_mib,
            report.stored,
            report.cpu_us,
            report.nats_us,
            report.machine_us
        );
    }
    if cli.callgrind.is_some() {
        for (round, report) in &rows {
            println!(
                "callgrind round {round} {}: {} requests answered while counted",
                report.name, report.answered
            );
        }
    }
    let mean = |name: &str, field: fn(&Report) -> f64| {
        let values: Vec<f64> = rows
            .iter()
            .filter(|(_, report)| report.name == name)
            .map(|(_, report)| field(report))
            .collect();
        values.iter().sum::<f64>() / values.len().max(1) as f64
    };
    let (ceiling_rate, receiver_rate) = (mean(CEILING, |r| r.rate), mean(RECEIVER, |r| r.rate));
    let (ceiling_p99, receiver_p99) = (mean(CEILING, |r| r.p99), mean(RECEIVER, |r| r.p99));
    let (ceiling_cpu, receiver_cpu) = (mean(CEILING, |r| r.cpu_us), mean(RECEIVER, |r| r.cpu_us));
    if ceiling_rate > 0.0 && receiver_rate > 0.0 {
        println!(
            "mean over {} round(s): ceiling {ceiling_rate:.0} req/s p99 {ceiling_p99:.2} ms {ceiling_cpu:.1} CPU µs/req, receiver {receiver_rate:.0} req/s p99 {receiver_p99:.2} ms {receiver_cpu:.1} CPU µs/req; receiver / ceiling: {:.1}% of req/s, p99 {:.2}x",
            cli.rounds,
            100.0 * receiver_rate / ceiling_rate,
            receiver_p99 / ceiling_p99
        );
    }
    let with_headers = mean(CEILING_HEADERS, |r| r.rate);
    if cli.with_headers && ceiling_rate > 0.0 && with_headers > 0.0 {
        let per_request =
            |name, field: fn(&Report) -> f64| mean(name, field) - mean(CEILING, field);
        println!(
            "the receiver's headers alone: {:.1}% of the ceiling's req/s (+{:.1} µs/req whole machine, of which nats-server +{:.1}, the server +{:.1}); the receiver: {:.1}% of the ceiling with its headers",
            100.0 * with_headers / ceiling_rate,
            per_request(CEILING_HEADERS, |r| r.machine_us),
            per_request(CEILING_HEADERS, |r| r.nats_us),
            per_request(CEILING_HEADERS, |r| r.cpu_us),
            100.0 * receiver_rate / with_headers
        );
    }
    let ceiling_machine = mean(CEILING, |r| r.machine_us);
    if ceiling_machine > 0.0 && cli.callgrind.is_none() {
        let steps = step_costs(&maker, &endpoint, &cli.provider.secret());
        let own = steps.verify_us + steps.json_us + steps.message_us;
        let least = steps.hmac_us + steps.json_check_us;
        println!(
            "the receiver's steps without I/O, µs/req: verify {:.2}, JSON {:.2}, event and message headers {:.2}; total {own:.2}",
            steps.verify_us, steps.json_us, steps.message_us
        );
        println!(
            "the least any receiver must add (HMAC {:.2} + JSON check {:.2} µs) to the ceiling's whole machine ({ceiling_machine:.1} µs/req): at most {:.1}% of the ceiling here; \
             the receiver's steps alone: at most {:.1}%",
            steps.hmac_us,
            steps.json_check_us,
            100.0 * ceiling_machine / (ceiling_machine + least),
            100.0 * ceiling_machine / (ceiling_machine + own)
        );
    }
    Ok(())
}

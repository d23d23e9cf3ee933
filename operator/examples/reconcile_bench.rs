//! Reconciles many WebhookEndpoints against the in-memory API of the tests and
//! a real nats-server, as the controller would: time per reconcile (validate,
//! secrets, stream, build, apply, status), the JetStream API calls of each
//! pass (a steady one: one per endpoint), peak RSS, and the writes of a
//! steady-state pass (must be 0).
//!
//! ```sh
//! cargo run --release -p hookline-operator --example reconcile_bench -- 1000
//! ```

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hookline_e2e::proc_stats::peak_rss_mib;
use hookline_operator::reconcile::reconcile;
use support::{Harness, answered_jetstream_calls, example};

/// One reconcile of every endpoint; the time of each.
async fn pass(harness: &mut Harness, endpoints: &[(String, String)]) -> Vec<Duration> {
    harness.sync();
    let mut times = Vec::with_capacity(endpoints.len());
    for (namespace, name) in endpoints {
        let endpoint = Arc::new(harness.endpoint(namespace, name));
        let started = Instant::now();
        reconcile(endpoint, harness.ctx.clone())
            .await
            .unwrap_or_else(|err| panic!("{namespace}/{name}: {err}"));
        times.push(started.elapsed());
    }
    times
}

fn summary(label: &str, mut times: Vec<Duration>, writes: usize, jetstream_calls: usize) {
    times.sort();
    let total: Duration = times.iter().sum();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!(
        "{label:<28} {:>5} reconciles  mean {:>7.2} ms  p50 {:>7.2} ms  p99 {:>7.2} ms  writes {writes}  JetStream API calls {jetstream_calls} ({:.2} per endpoint)",
        times.len(),
        total.as_secs_f64() * 1e3 / times.len() as f64,
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        jetstream_calls as f64 / times.len() as f64,
    );
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(1000);
    let mut harness = Harness::start(true).await;
    let mut endpoints = Vec::with_capacity(count);
    for index in 0..count {
        let mut resource = example("stripe.yaml");
        let namespace = format!("team-{}", index % 10);
        let name = format!("stripe-{index}");
        resource.metadata.namespace = Some(namespace.clone());
        resource.metadata.name = Some(name.clone());
        // JetStream reserves each stream's maxBytes on its volume: keep
        // 1,000 buffers within a small test server's store.
        resource.spec.stream = Some(hookline_api::spec::StreamSpec {
            max_bytes: Some(16 * 1024 * 1024),
            ..Default::default()
        });
        harness.add_endpoint_with_secrets(&resource);
        endpoints.push((namespace, name));
    }
    println!(
        "{count} endpoints, in-memory API, nats-server {}",
        harness.nats.url()
    );

    let monitor = harness.nats.monitor_url();
    let measure = async |label: &str, harness: &mut Harness| {
        harness.fake.clear_calls();
        let calls_before = answered_jetstream_calls(&monitor).await;
        let times = pass(harness, &endpoints).await;
        let calls = answered_jetstream_calls(&monitor).await - calls_before;
        let calls = usize::try_from(calls).unwrap_or(usize::MAX);
        summary(label, times, harness.fake.writes().len(), calls);
    };
    measure("add finalizer", &mut harness).await;
    measure("first apply (create all)", &mut harness).await;
    harness.fake.make_deployments_available();
    measure("pods available (status)", &mut harness).await;
    measure("steady state", &mut harness).await;
    let ready = endpoints
        .iter()
        .filter(|(namespace, name)| {
            harness
                .condition(namespace, name, hookline_api::conditions::READY)
                .status
                == "True"
        })
        .count();
    println!(
        "Ready {ready} of {count}; peak RSS {:.1} MiB (the in-memory API's copies included)",
        peak_rss_mib(std::process::id()).unwrap_or_default()
    );
}

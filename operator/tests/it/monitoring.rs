//! Every metric the chart's alerts and dashboard use is one the binaries
//! really export: the running receiver and consumer (real processes, real
//! nats-server and Postgres) and the operator's `/metrics` are scraped.

use crate::support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hookline_e2e::soak::providers;
use hookline_e2e::{ChildProcess, NatsServer, Postgres, free_port, workspace_bin};
use tower::ServiceExt;

/// Metric names as PromQL sees them, from an OpenMetrics exposition.
fn exported(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|suffix| format!("{name}{suffix}")));
        }
    }
    names
}

async fn scrape(client: &reqwest::Client, port: u16, process: &mut ChildProcess) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|response| response.status().is_success());
        if ready {
            break;
        }
        assert!(process.exit_status().is_none(), "{}", process.log_tail(30));
        assert!(
            Instant::now() < deadline,
            "not ready:\n{}",
            process.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("text")
}

/// The metric names the chart's rules and dashboard query (in an `expr`),
/// and those its alert texts name (a histogram by its family name).
fn used_by_the_chart() -> (BTreeSet<String>, BTreeSet<String>) {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/hookline");
    let output = Command::new("helm")
        .args([
            "template",
            "hookline",
            chart,
            "--set",
            "metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true",
        ])
        .output()
        .expect("helm runs (python3 .ci/install-helm.py /usr/local/bin/helm)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rendered = String::from_utf8(output.stdout).expect("utf-8");
    let (mut queried, mut named) = (BTreeSet::new(), BTreeSet::new());
    for line in rendered.lines() {
        let used = if line.contains("expr") {
            &mut queried
        } else {
            &mut named
        };
        let mut rest = line;
        while let Some(start) = rest.find("hookline_") {
            let tail = &rest[start..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            used.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    assert!(queried.len() > 5, "the chart queries metrics: {queried:?}");
    (queried, named)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_dashboard_use_is_exported() {
    let nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server starts");
    let postgres = tokio::task::block_in_place(Postgres::start).expect("Postgres starts");
    let manifest = support::examples_dir().join("stripe.yaml");
    let dir = tempfile::tempdir().expect("temp dir");
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "whsec_monitoring").expect("secret");
    let client = reqwest::Client::new();

    let receiver_port = free_port();
    let mut receiver = ChildProcess::spawn(
        Command::new(tokio::task::block_in_place(|| {
            workspace_bin("hookline-receiver")
        }))
        .arg("--endpoint")
        .arg(&manifest)
        .arg("--secret-file")
        .arg(&secret_file)
        .args(["--nats-url", &nats.url(), "--provision"])
        .arg(format!("--listen=127.0.0.1:{receiver_port}")),
    )
    .expect("receiver starts");
    let consumer_port = free_port();
    let mut consumer = ChildProcess::spawn(
        Command::new(tokio::task::block_in_place(|| {
            workspace_bin("hookline-consumer")
        }))
        .arg("--endpoint")
        .arg(&manifest)
        .args([
            "--nats-url",
            &nats.url(),
            "--database-url",
            &postgres.url(),
            "--provision",
        ])
        .arg(format!("--listen=127.0.0.1:{consumer_port}")),
    )
    .expect("consumer starts");
    scrape(&client, receiver_port, &mut receiver).await;
    // One event, so every labelled series exists too.
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let (body, headers) = providers::delivery(
        providers::Provider::Stripe,
        "whsec_monitoring",
        "evt_metrics",
        i64::try_from(ts).expect("a time in range"),
    );
    let mut request = client
        .post(format!("http://127.0.0.1:{receiver_port}/stripe"))
        .header("Content-Type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let answer = request.send().await.expect("receiver answers");
    assert_eq!(answer.status(), 200);

    let mut names = exported(&scrape(&client, receiver_port, &mut receiver).await);
    names.extend(exported(
        &scrape(&client, consumer_port, &mut consumer).await,
    ));
    // The operator's /metrics after reconciling an endpoint and failing once,
    // so its labelled families have series.
    let mut harness = support::Harness::start(true).await;
    harness.add_endpoint_with_secrets(&support::example("stripe.yaml"));
    harness.settle("payments", "stripe").await;
    hookline_operator::reconcile::error_policy(
        std::sync::Arc::new(harness.endpoint("payments", "stripe")),
        &hookline_operator::Error::MissingObjectKey("payments/stripe".into(), ".metadata.uid"),
        harness.ctx.clone(),
    );
    let health = hookline_operator::http::Health {
        metrics: harness.metrics.clone(),
        ..Default::default()
    };
    let operator = hookline_operator::http::router(health)
        .oneshot(
            http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .expect("request"),
        )
        .await
        .expect("operator answers");
    let body = axum::body::to_bytes(operator.into_body(), usize::MAX)
        .await
        .expect("body");
    names.extend(exported(&String::from_utf8_lossy(&body)));

    let (queried, named) = used_by_the_chart();
    let missing: Vec<String> = queried.difference(&names).cloned().collect();
    assert!(
        missing.is_empty(),
        "the chart queries metrics nobody exports: {missing:?}\nexported: {names:?}"
    );
    let unknown: Vec<&String> = named
        .iter()
        .filter(|name| !names.contains(*name) && !names.contains(&format!("{name}_bucket")))
        .collect();
    assert!(
        unknown.is_empty(),
        "the chart's alert texts name metrics nobody exports: {unknown:?}\nexported: {names:?}"
    );
}

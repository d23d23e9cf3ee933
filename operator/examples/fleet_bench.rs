//! The real `hookline-operator` binary with many endpoints: against the
//! stand-in API server (`fakekube.py`, set `HOOKLINE_FAKEKUBE`) and a
//! nats-server with the official NATS chart's 10 GiB JetStream store. Reports
//! the time until every endpoint is Ready, the operator's peak RSS, the writes
//! of a steady state (changed ones must be 0) and the JetStream API calls per
//! endpoint per resync. A benchmark, not a test.
//!
//! With `pooled` the endpoints of each namespace join one `WebhookPool`
//! there (its members keep their streams and Ingresses; the pool has the
//! pods), and every pool is waited for as well; with `shared` the pools have
//! a shared stream (`spec.stream`), one stream per pool instead of per member.
//!
//! ```sh
//! cargo build --release -p hookline-operator
//! HOOKLINE_BIN_DIR=target/release HOOKLINE_FAKEKUBE=../shared/tools/fakekube.py \
//!   cargo run --release -p hookline-operator --example fleet_bench -- 1000 20 [pooled|shared]
//! ```

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use hookline_api::pool::WebhookPool;
use hookline_api::spec::WebhookEndpoint;
use hookline_e2e::fakekube::FakeKube;
use hookline_e2e::proc_stats::peak_rss_mib;
use hookline_e2e::{ChildProcess, NatsServer, free_port, workspace_bin};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use support::fakekube::{apply_endpoint, create_stripe_secrets, install_crd, install_pool_crd};
use support::{answered_jetstream_calls, example};

/// The resync the steady state is measured over.
const RESYNC_SECONDS: u64 = 30;
/// The official NATS chart's default JetStream file store.
const CHART_FILE_STORE: u64 = 10 * 1024 * 1024 * 1024;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let namespaces: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let layout = args.next();
    let shared = layout.as_deref() == Some("shared");
    let pooled = shared || layout.as_deref() == Some("pooled");
    let fake = tokio::task::block_in_place(|| FakeKube::start(true));
    let nats =
        tokio::task::block_in_place(|| NatsServer::start_with_max_file_store(CHART_FILE_STORE))
            .expect("nats-server starts");
    let client = fake.client().await;
    install_crd(&client).await;
    install_pool_crd(&client).await;
    for index in 0..namespaces {
        let namespace = format!("team-{index}");
        create_stripe_secrets(&client, &namespace).await;
        if pooled {
            apply_pool(&client, &namespace, shared).await;
        }
    }
    let applied = Instant::now();
    for index in 0..count {
        let mut resource = example("stripe.yaml");
        let namespace = format!("team-{}", index % namespaces);
        resource.metadata.namespace = Some(namespace.clone());
        resource.metadata.name = Some(format!("stripe-{index}"));
        resource.spec.ingress = Some(
            serde_json::from_value(serde_json::json!({
                "host": "hooks.example.com", "path": format!("/{namespace}/stripe-{index}")
            }))
            .expect("ingress"),
        );
        if pooled {
            resource.spec.pool = Some(POOL.into());
            resource.spec.consumer = None;
        }
        apply_endpoint(&client, &resource).await;
    }
    println!(
        "{count} endpoints in {namespaces} namespaces applied in {:.1} s ({}); nats-server store {} GiB",
        applied.elapsed().as_secs_f64(),
        if shared {
            "one WebhookPool with a shared stream per namespace".to_owned()
        } else if pooled {
            "one WebhookPool per namespace".to_owned()
        } else {
            "dedicated pods".to_owned()
        },
        CHART_FILE_STORE >> 30
    );

    let port = free_port();
    let started = Instant::now();
    let mut command = Command::new(workspace_bin("hookline-operator"));
    command
        .arg("run")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("--identity=bench")
        .arg("--lease-namespace=default")
        .arg(format!("--resync-interval={RESYNC_SECONDS}s"))
        .arg(format!("--service-url=http://127.0.0.1:{port}"))
        .env("KUBECONFIG", fake.kubeconfig())
        .env("HOOKLINE_NATS_URL", nats.url())
        .env("RUST_LOG", "warn");
    let mut operator = ChildProcess::spawn(&mut command).expect("operator starts");
    let endpoints: Api<WebhookEndpoint> = Api::all(client.clone());
    let pools: Api<WebhookPool> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut last_report = Instant::now();
    loop {
        let all = endpoints.list(&ListParams::default()).await.expect("list");
        let ready = all
            .items
            .iter()
            .filter(|endpoint| {
                endpoint.status.as_ref().is_some_and(|status| {
                    status
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        let pools_ready = if pooled {
            pools
                .list(&ListParams::default())
                .await
                .expect("list pools")
                .items
                .iter()
                .filter(|pool| {
                    pool.status.as_ref().is_some_and(|status| {
                        status
                            .conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                })
                .count()
        } else {
            namespaces
        };
        if ready == count && pools_ready == namespaces {
            break;
        }
        assert!(
            operator.exit_status().is_none() && Instant::now() < deadline,
            "{ready} of {count} Ready:\n{}",
            operator.log_tail(20)
        );
        if last_report.elapsed() > Duration::from_secs(30) {
            println!(
                "  {ready} of {count} Ready after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "all {count} Ready {:.1} s after the operator started{}",
        started.elapsed().as_secs_f64(),
        if pooled { " (and every pool)" } else { "" }
    );

    // A steady state: one resync and a half of writes and JetStream calls.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let calls_before = answered_jetstream_calls(&nats.monitor_url()).await;
    fake.hook(reqwest::Method::POST, "/_fake/reset-requests")
        .await;
    let window = Duration::from_secs(RESYNC_SECONDS * 3 / 2);
    tokio::time::sleep(window).await;
    let requests = fake.hook(reqwest::Method::GET, "/_fake/requests").await;
    let requests = requests.as_array().cloned().unwrap_or_default();
    let leases = |request: &serde_json::Value| {
        request["path"]
            .as_str()
            .is_some_and(|path| path.contains("/leases/"))
    };
    let changed = requests
        .iter()
        .filter(|request| !leases(request) && request["changed"] != false)
        .count();
    let unchanged = requests
        .iter()
        .filter(|request| !leases(request) && request["changed"] == false)
        .count();
    let calls = answered_jetstream_calls(&nats.monitor_url()).await - calls_before;
    println!(
        "steady state over {:.0} s (resync {RESYNC_SECONDS} s): changed writes {changed}, unchanged writes {unchanged}, JetStream API calls {calls} = {:.2} per endpoint per resync",
        window.as_secs_f64(),
        calls as f64 / count as f64 / (window.as_secs_f64() / RESYNC_SECONDS as f64)
    );
    println!(
        "operator peak RSS {:.1} MiB",
        peak_rss_mib(operator.id()).unwrap_or_default()
    );
}

/// The pool every endpoint of the namespace joins in `pooled` mode.
const POOL: &str = "shared";

async fn apply_pool(client: &kube::Client, namespace: &str, shared: bool) {
    let mut spec = serde_json::json!({
        "consumer": {"databaseSecretRef": {"name": "hookline-postgres", "key": "url"}},
    });
    if shared {
        spec["stream"] = serde_json::json!({});
    }
    let pool: WebhookPool = serde_json::from_value(serde_json::json!({
        "apiVersion": "hookline.io/v1alpha1", "kind": "WebhookPool",
        "metadata": {"name": POOL, "namespace": namespace},
        "spec": spec,
    }))
    .expect("pool");
    Api::<WebhookPool>::namespaced(client.clone(), namespace)
        .patch(
            POOL,
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&pool),
        )
        .await
        .expect("pool applied");
}

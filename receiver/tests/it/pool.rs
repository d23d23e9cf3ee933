//! `--endpoint-dir`: one receiver serving the endpoints of a directory, each
//! by its host and path, with its own secret, limits and stream (or, with
//! `--shared-stream`, its own subjects of the pool's one stream); reloaded
//! while serving without dropping a request.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use hookline_e2e::NatsServer;
use hookline_receiver::{Config, Endpoints, run};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A pool receiver served by `run` on a loopback port, with its own
/// nats-server, reading `endpoints/` and `secrets/` of a temporary directory
/// every 100 ms.
struct Pool {
    nats: NatsServer,
    base: String,
    dir: TempDir,
    http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<hookline_receiver::Result<()>>>,
}

/// A manifest of `shop/<name>` for `provider`, on `path` and, when given,
/// `host`; `extra` are more spec lines (indented two spaces).
fn member(name: &str, provider: &str, host: Option<&str>, path: &str, extra: &str) -> String {
    let host = host.map_or(String::new(), |host| format!("    host: {host}\n"));
    format!(
        "apiVersion: hookline.io/v1alpha1\nkind: WebhookEndpoint\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  provider: {provider}\n  secretRef:\n    name: {name}-secret\n  ingress:\n{host}    path: {path}\n{extra}"
    )
}

impl Pool {
    /// Writes `members` (file name, manifest) and `secrets` (endpoint name,
    /// text), then starts the receiver and waits until it is ready.
    async fn start(members: &[(&str, String)], secrets: &[(&str, &str)]) -> Pool {
        Pool::start_with(members, secrets, |_| {}).await
    }

    /// [`Pool::start`] with `--shared-stream POOL` and, when `provision`,
    /// `--provision` (which makes the pool's stream over the whole pool).
    async fn start_shared(
        members: &[(&str, String)],
        secrets: &[(&str, &str)],
        pool: &str,
        provision: bool,
    ) -> Pool {
        Pool::start_with(members, secrets, |config| {
            config.provision = provision;
            if let Endpoints::Pool { shared_stream, .. } = &mut config.endpoints {
                *shared_stream = Some(pool.to_owned());
            }
        })
        .await
    }

    /// [`Pool::start`] with the configuration changed by `configure` first.
    async fn start_with(
        members: &[(&str, String)],
        secrets: &[(&str, &str)],
        configure: impl FnOnce(&mut Config),
    ) -> Pool {
        let nats = tokio::task::block_in_place(|| NatsServer::start().expect("nats-server"));
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("endpoints")).expect("endpoints dir");
        std::fs::create_dir(dir.path().join("secrets")).expect("secrets dir");
        let mut pool = Pool {
            nats,
            base: String::new(),
            dir,
            http: reqwest::Client::new(),
            shutdown: None,
            task: None,
        };
        for (file, text) in members {
            pool.write_manifest(file, text);
        }
        for (name, text) in secrets {
            pool.write_secret(name, text);
        }
        let mut config = Config::pool(
            pool.endpoint_dir(),
            pool.dir.path().join("secrets"),
            pool.nats.url(),
        );
        config.provision = true;
        config.publish_timeout = Duration::from_secs(2);
        config.secret_poll_interval = Duration::from_millis(100);
        config.shutdown_timeout = Duration::from_secs(10);
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        pool.base = format!("http://{}", listener.local_addr().expect("addr"));
        let (shutdown, signal) = oneshot::channel::<()>();
        pool.shutdown = Some(shutdown);
        pool.task = Some(tokio::spawn(run(config, listener, async move {
            let _ = signal.await;
        })));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(response) = pool.http.get(format!("{}/readyz", pool.base)).send().await
                && response.status() == 200
            {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "pool not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pool
    }

    fn endpoint_dir(&self) -> PathBuf {
        self.dir.path().join("endpoints")
    }

    /// Like the kubelet: write aside, then rename over.
    fn write_manifest(&self, file: &str, text: &str) {
        swap_in(&self.endpoint_dir(), file, text);
    }

    fn remove_manifest(&self, file: &str) {
        std::fs::remove_file(self.endpoint_dir().join(file)).expect("remove manifest");
    }

    fn write_secret(&self, name: &str, text: &str) {
        swap_in(&self.dir.path().join("secrets"), name, text);
    }

    async fn post(
        &self,
        host: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Host", host)
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send().await.expect("request sent")
    }

    async fn get_json(&self, path: &str) -> serde_json::Value {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("JSON")
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// The messages in `stream`.
    async fn stream_messages(&self, stream: &str) -> u64 {
        let client = async_nats::connect(self.nats.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(stream).await.expect("stream exists");
        stream.info().await.expect("stream info").state.messages
    }

    /// Posts what `request` makes (a fresh event each time) until it is
    /// answered `status`, within 5 s (a few polls of the directories).
    async fn until_status<F>(&self, status: u16, request: F) -> reqwest::Response
    where
        F: Fn(u32) -> (String, String, Headers, Vec<u8>),
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        for n in 0.. {
            let (host, path, headers, body) = request(n);
            let response = self.post(&host, &path, &headers, &body).await;
            if response.status() == status {
                return response;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never answered {status}; last {}",
                response.status()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        unreachable!()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn swap_in(dir: &Path, file: &str, text: &str) {
    let staged = dir.join(format!(".{file}.new"));
    std::fs::write(&staged, text).expect("write");
    std::fs::rename(&staged, dir.join(file)).expect("rename");
}

fn issue(n: u32) -> Vec<u8> {
    format!(r#"{{"action":"opened","issue":{{"id":{n}}}}}"#).into_bytes()
}

fn charge(n: u32) -> Vec<u8> {
    format!(r#"{{"id":"evt_{n}","type":"charge.succeeded","created":1,"data":{{"object":{{"id":"ch_{n}"}}}}}}"#)
        .into_bytes()
}

fn order(n: u32) -> Vec<u8> {
    format!(r#"{{"id":{n},"note":"order"}}"#).into_bytes()
}

const STRIPE_SECRET: &str = "whsec_stripe_pool";
const GITHUB_SECRET: &str = "github pool secret";
const FALLBACK_SECRET: &str = "github fallback secret";
const SHOPIFY_SECRET: &str = "shopify pool secret";

/// Stripe on `pay.example.com/hooks`, GitHub on `code.example.com/hooks`,
/// another GitHub on `/hooks` of any other host, Shopify on `/shop`.
fn four_members() -> Vec<(&'static str, String)> {
    vec![
        (
            "a-stripe.yaml",
            member("stripe", "stripe", Some("pay.example.com"), "/hooks", ""),
        ),
        (
            "b-github.yaml",
            member("github", "github", Some("code.example.com"), "/hooks", ""),
        ),
        (
            "c-fallback.yaml",
            member("fallback", "github", None, "/hooks", ""),
        ),
        (
            "d-shopify.yaml",
            member("shopify", "shopify", None, "/shop", ""),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_are_served_by_host_and_path_each_verified_with_its_own_secret() {
    let pool = Pool::start(
        &four_members(),
        &[
            ("stripe", STRIPE_SECRET),
            ("github", GITHUB_SECRET),
            ("fallback", FALLBACK_SECRET),
            ("shopify", SHOPIFY_SECRET),
        ],
    )
    .await;
    let ts = now();

    // The host is matched without its port and whatever its case.
    let body = charge(1);
    let response = pool
        .post(
            "PAY.example.com:443",
            "/hooks",
            &stripe(STRIPE_SECRET, &body, ts),
            &body,
        )
        .await;
    assert_eq!(response.status(), 200);
    let body = issue(1);
    let headers = github(GITHUB_SECRET, &body, "g-1", "issues");
    assert_eq!(
        pool.post("code.example.com", "/hooks", &headers, &body)
            .await
            .status(),
        200
    );
    // Another host's /hooks is the hostless endpoint's, with its own secret.
    let headers = github(FALLBACK_SECRET, &body, "f-1", "issues");
    assert_eq!(
        pool.post("other.example.org", "/hooks", &headers, &body)
            .await
            .status(),
        200
    );
    let body = order(1);
    let headers = shopify(SHOPIFY_SECRET, &body, "s-1", "orders/create");
    assert_eq!(
        pool.post("anything", "/shop", &headers, &body)
            .await
            .status(),
        200
    );

    // One endpoint's secret is no other's.
    let body = issue(2);
    let headers = github(FALLBACK_SECRET, &body, "g-2", "issues");
    assert_eq!(
        pool.post("code.example.com", "/hooks", &headers, &body)
            .await
            .status(),
        401
    );
    let body = charge(2);
    let wrong = stripe("whsec_someone_else", &body, ts);
    assert_eq!(
        pool.post("pay.example.com", "/hooks", &wrong, &body)
            .await
            .status(),
        401
    );
    let body = order(2);
    let headers = shopify(SHOPIFY_SECRET, &body, "s-2", "orders/create");
    assert_eq!(pool.post("x", "/shop", &headers, &body).await.status(), 200);

    // Paths and methods as with one endpoint.
    assert_eq!(pool.post("x", "/nope", &headers, &body).await.status(), 404);
    let get = pool
        .http
        .get(format!("{}/shop", pool.base))
        .send()
        .await
        .expect("get");
    assert_eq!(get.status(), 405);

    for (stream, stored) in [
        ("HOOKLINE_shop_stripe", 1),
        ("HOOKLINE_shop_github", 1),
        ("HOOKLINE_shop_fallback", 1),
        ("HOOKLINE_shop_shopify", 2),
    ] {
        assert_eq!(pool.stream_messages(stream).await, stored, "{stream}");
    }

    let endpoints = pool.get_json("/endpoints").await;
    let listed = endpoints["endpoints"].as_array().expect("a list");
    assert_eq!(listed.len(), 4, "{endpoints}");
    let stripe_entry = listed
        .iter()
        .find(|entry| entry["endpoint"] == "shop/stripe")
        .expect("shop/stripe listed");
    assert_eq!(stripe_entry["host"], "pay.example.com");
    assert_eq!(stripe_entry["path"], "/hooks");
    assert_eq!(stripe_entry["secrets"], 1);
    assert_eq!(stripe_entry["streamReachable"], true);
    let hash = stripe_entry["manifestHash"].as_str().expect("a hash");
    // The operator compares it with the hash of the manifest it wrote in the
    // pool's ConfigMap (the file's text) before it says the member is Served.
    let stripe_text = &four_members()[0].1;
    assert_eq!(hash, hookline_api::pool_dir::manifest_hash(stripe_text));
    let fallback = listed
        .iter()
        .find(|entry| entry["endpoint"] == "shop/fallback")
        .expect("listed");
    assert_eq!(fallback["host"], serde_json::Value::Null);
    assert_eq!(endpoints["skipped"], serde_json::json!({}));

    let metrics = pool.metrics().await;
    for line in [
        r#"hookline_receiver_requests_total{provider="stripe",outcome="stored",endpoint="shop/stripe"} 1"#,
        r#"hookline_receiver_requests_total{provider="stripe",outcome="unauthorized",endpoint="shop/stripe"} 1"#,
        r#"hookline_receiver_requests_total{provider="shopify",outcome="stored",endpoint="shop/shopify"} 2"#,
        r#"hookline_receiver_endpoints{state="served"} 4"#,
        r#"hookline_receiver_endpoints{state="skipped"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn body_limits_and_rate_limits_are_each_endpoints_own() {
    let members = [
        (
            "small.yaml",
            member(
                "small",
                "github",
                None,
                "/small",
                "  request:\n    maxBodyBytes: 1024\n    rateLimit:\n      requestsPerSecond: 0.1\n      burst: 1\n",
            ),
        ),
        ("large.yaml", member("large", "github", None, "/large", "")),
    ];
    let pool = Pool::start(
        &members,
        &[("small", GITHUB_SECRET), ("large", GITHUB_SECRET)],
    )
    .await;
    let big = format!(r#"{{"action":"opened","pad":"{}"}}"#, "p".repeat(4000)).into_bytes();
    let headers = github(GITHUB_SECRET, &big, "big-1", "issues");
    assert_eq!(pool.post("h", "/small", &headers, &big).await.status(), 413);
    assert_eq!(pool.post("h", "/large", &headers, &big).await.status(), 200);

    for n in 0..3 {
        let body = issue(n);
        let headers = github(GITHUB_SECRET, &body, &format!("r-{n}"), "issues");
        let expected = if n == 0 { 200 } else { 429 };
        assert_eq!(
            pool.post("h", "/small", &headers, &body).await.status(),
            expected
        );
        let headers = github(GITHUB_SECRET, &body, &format!("l-{n}"), "issues");
        assert_eq!(
            pool.post("h", "/large", &headers, &body).await.status(),
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_added_changed_and_removed_under_load_drop_no_request() {
    let members = [
        ("kept.yaml", member("kept", "github", None, "/kept", "")),
        (
            "changed.yaml",
            member("changed", "github", None, "/changed", ""),
        ),
        (
            "removed.yaml",
            member("removed", "github", None, "/removed", ""),
        ),
    ];
    let pool = Arc::new(
        Pool::start(
            &members,
            &[
                ("kept", GITHUB_SECRET),
                ("changed", GITHUB_SECRET),
                ("removed", GITHUB_SECRET),
                ("added", GITHUB_SECRET),
            ],
        )
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for worker in 0..8 {
        let (pool, stop, sent) = (pool.clone(), stop.clone(), sent.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let path = if n % 2 == 0 { "/kept" } else { "/changed" };
                let body = issue(worker * 1_000_000 + n);
                let headers = github(GITHUB_SECRET, &body, &format!("w{worker}-{n}"), "issues");
                let response = pool.post("h", path, &headers, &body).await;
                assert_eq!(response.status(), 200, "{path} during reloads");
                sent.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    pool.write_manifest(
        "changed.yaml",
        &member(
            "changed",
            "github",
            None,
            "/changed",
            "  request:\n    maxBodyBytes: 200000\n",
        ),
    );
    pool.write_manifest("added.yaml", &member("added", "github", None, "/added", ""));
    pool.remove_manifest("removed.yaml");

    let added = pool
        .until_status(200, |n| {
            let body = issue(n);
            let headers = github(GITHUB_SECRET, &body, &format!("a-{n}"), "issues");
            ("h".into(), "/added".into(), headers, body)
        })
        .await;
    assert_eq!(added.status(), 200);
    pool.until_status(404, |n| {
        let body = issue(n);
        let headers = github(GITHUB_SECRET, &body, &format!("x-{n}"), "issues");
        ("h".into(), "/removed".into(), headers, body)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in load {
        worker.await.expect("no request failed");
    }
    assert!(sent.load(Ordering::Relaxed) > 50, "a load ran");

    let endpoints = pool.get_json("/endpoints").await;
    let names: Vec<_> = endpoints["endpoints"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|entry| entry["endpoint"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["shop/added", "shop/changed", "shop/kept"]);
    let metrics = pool.metrics().await;
    assert!(!metrics.contains("shop/removed"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_secret_file_is_503_for_its_endpoint_only_until_it_is_delivered_and_rotated() {
    let members = [
        ("late.yaml", member("late", "github", None, "/late", "")),
        ("other.yaml", member("other", "github", None, "/other", "")),
    ];
    let pool = Pool::start(&members, &[("other", GITHUB_SECRET)]).await;
    let body = issue(1);
    let headers = github(GITHUB_SECRET, &body, "l-1", "issues");
    let response = pool.post("h", "/late", &headers, &body).await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().ok()),
        Some(Some("5"))
    );
    let answer: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(answer["error"], "unavailable");
    assert_eq!(
        pool.post("h", "/other", &headers, &body).await.status(),
        200
    );
    let ready = pool
        .http
        .get(format!("{}/readyz", pool.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(
        ready.status(),
        200,
        "one endpoint's missing secret keeps the pool ready"
    );
    let endpoints = pool.get_json("/endpoints").await;
    let late = endpoints["endpoints"]
        .as_array()
        .expect("a list")
        .iter()
        .find(|entry| entry["endpoint"] == "shop/late")
        .expect("listed")
        .clone();
    assert_eq!(late["secrets"], 0);

    pool.write_secret("late", GITHUB_SECRET);
    pool.until_status(200, |n| {
        let body = issue(100 + n);
        let headers = github(GITHUB_SECRET, &body, &format!("l2-{n}"), "issues");
        ("h".into(), "/late".into(), headers, body)
    })
    .await;

    pool.write_secret("late", "the rotated secret\n");
    pool.until_status(401, |n| {
        let body = issue(200 + n);
        let headers = github(GITHUB_SECRET, &body, &format!("l3-{n}"), "issues");
        ("h".into(), "/late".into(), headers, body)
    })
    .await;
    let body = issue(300);
    let headers = github("the rotated secret", &body, "l4", "issues");
    assert_eq!(pool.post("h", "/late", &headers, &body).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_endpoints_on_one_host_and_path_the_later_file_is_skipped() {
    let members = [
        (
            "a.yaml",
            member("first", "github", Some("h.example"), "/same", ""),
        ),
        (
            "b.yaml",
            member("second", "github", Some("h.example"), "/same", ""),
        ),
        ("c.yaml", member("third", "github", None, "/same", "")),
    ];
    let pool = Pool::start(
        &members,
        &[
            ("first", GITHUB_SECRET),
            ("second", GITHUB_SECRET),
            ("third", GITHUB_SECRET),
        ],
    )
    .await;
    let endpoints = pool.get_json("/endpoints").await;
    let reason = endpoints["skipped"]["b.yaml"]
        .as_str()
        .expect("b.yaml skipped");
    assert!(reason.contains("shop/first"), "{reason}");
    let names: Vec<_> = endpoints["endpoints"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|entry| entry["endpoint"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["shop/first", "shop/third"]);
    let body = issue(1);
    let headers = github(GITHUB_SECRET, &body, "d-1", "issues");
    assert_eq!(
        pool.post("h.example", "/same", &headers, &body)
            .await
            .status(),
        200
    );
    assert_eq!(pool.stream_messages("HOOKLINE_shop_first").await, 1);
    let metrics = pool.metrics().await;
    assert!(metrics.contains(r#"hookline_receiver_endpoints{state="skipped"} 1"#));
    assert!(
        !metrics.contains("shop/second"),
        "no series of a skipped endpoint: {metrics}"
    );
}

/// A buffer capped at 2 KiB, which the receiver enforces.
const SMALL_BUFFER: &str = "  stream:\n    maxBytes: 2048\n";

#[tokio::test(flavor = "multi_thread")]
async fn one_endpoints_full_buffer_is_503_buffer_full_for_it_alone() {
    let members = [
        (
            "full.yaml",
            member("full", "github", None, "/full", SMALL_BUFFER),
        ),
        ("free.yaml", member("free", "github", None, "/free", "")),
    ];
    let pool = Pool::start(
        &members,
        &[("full", GITHUB_SECRET), ("free", GITHUB_SECRET)],
    )
    .await;
    let padded = |n: u32| {
        format!(
            r#"{{"action":"opened","issue":{{"id":{n}}},"pad":"{}"}}"#,
            "p".repeat(500)
        )
        .into_bytes()
    };
    let full = pool
        .until_status(503, |n| {
            let body = padded(n);
            let headers = github(GITHUB_SECRET, &body, &format!("fill-{n}"), "issues");
            ("h".into(), "/full".into(), headers, body)
        })
        .await;
    let answer: serde_json::Value = full.json().await.expect("JSON");
    assert_eq!(answer["error"], "buffer_full");
    for n in 0..5 {
        let body = padded(1000 + n);
        let headers = github(GITHUB_SECRET, &body, &format!("free-{n}"), "issues");
        assert_eq!(pool.post("h", "/free", &headers, &body).await.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_on_the_endpoints_path_still_takes_its_posts() {
    let members = [(
        "listing.yaml",
        member("listing", "github", None, "/endpoints", ""),
    )];
    let pool = Pool::start(&members, &[("listing", GITHUB_SECRET)]).await;
    let body = issue(1);
    let headers = github(GITHUB_SECRET, &body, "e-1", "issues");
    assert_eq!(
        pool.post("h", "/endpoints", &headers, &body).await.status(),
        200
    );
    let listed = pool.get_json("/endpoints").await;
    assert_eq!(listed["endpoints"][0]["endpoint"], "shop/listing");
}

/// JetStream API calls nats-server has answered so far (its `/jsz`).
async fn jetstream_api_calls(nats: &NatsServer) -> u64 {
    let jsz: serde_json::Value = reqwest::get(format!("{}/jsz", nats.monitor_url()))
        .await
        .expect("/jsz")
        .json()
        .await
        .expect("JSON");
    jsz["api"]["total"].as_u64().expect("api.total")
}

/// Busy endpoints' stream figures are refreshed by one listing a second for
/// the pool, not by one or two JetStream calls per endpoint per second
/// (about 2,000 calls/s behind 1,000 busy endpoints).
#[tokio::test(flavor = "multi_thread")]
async fn busy_endpoints_figures_come_from_one_listing_a_second_for_the_pool() {
    const ENDPOINTS: u32 = 10;
    let members: Vec<(String, String)> = (0..ENDPOINTS)
        .map(|i| {
            let name = format!("busy{i}");
            let manifest = member(&name, "github", None, &format!("/busy{i}"), "");
            (format!("{name}.yaml"), manifest)
        })
        .collect();
    let members: Vec<(&str, String)> = members
        .iter()
        .map(|(file, text)| (file.as_str(), text.clone()))
        .collect();
    let names: Vec<String> = (0..ENDPOINTS).map(|i| format!("busy{i}")).collect();
    let secrets: Vec<(&str, &str)> = names
        .iter()
        .map(|name| (name.as_str(), GITHUB_SECRET))
        .collect();
    let pool = Pool::start(&members, &secrets).await;
    let send = |i: u32, n: u32| {
        let body = issue(n);
        let headers = github(GITHUB_SECRET, &body, &format!("d-{i}-{n}"), "issues");
        let pool = &pool;
        async move {
            pool.post("h", &format!("/busy{i}"), &headers, &body)
                .await
                .status()
        }
    };
    // Each endpoint's first request probes its stream on its own.
    for i in 0..ENDPOINTS {
        assert_eq!(send(i, 0).await, 200);
    }
    let before = jetstream_api_calls(&pool.nats).await;
    let started = tokio::time::Instant::now();
    let mut n = 1;
    while started.elapsed() < Duration::from_secs(3) {
        for i in 0..ENDPOINTS {
            assert_eq!(send(i, n).await, 200);
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = jetstream_api_calls(&pool.nats).await - before;
    // Three or four listings; probing each endpoint would be 30 to 60 calls.
    assert!(
        calls <= 6,
        "{calls} JetStream API calls in 3 s for {ENDPOINTS} busy endpoints"
    );
}

// ---- `--shared-stream`: every member in the pool's one stream ----

/// The `WebhookPool` whose stream the shared tests use.
const SHARED_POOL: &str = "hooks";

/// `HOOKLINE_shop_POOL_hooks`.
fn pool_stream() -> String {
    hookline_api::naming::pool_stream_name_in(None, "shop", SHARED_POOL)
}

/// `hookline.shop.POOL_hooks.<name>`: a member's subjects start with it.
fn member_prefix(name: &str) -> String {
    let pool = hookline_api::naming::pool_subject_prefix_in(None, "shop", SHARED_POOL);
    hookline_api::naming::pool_member_subject_prefix(&pool, name)
}

/// GitHub members `alpha` on `/alpha` and `beta` on `/beta`, `extra` spec
/// lines for `alpha`.
fn alpha_and_beta(alpha_extra: &str) -> [(&'static str, String); 2] {
    [
        (
            "alpha.yaml",
            member("alpha", "github", None, "/alpha", alpha_extra),
        ),
        ("beta.yaml", member("beta", "github", None, "/beta", "")),
    ]
}

const ALPHA_AND_BETA_SECRETS: [(&str, &str); 2] =
    [("alpha", GITHUB_SECRET), ("beta", GITHUB_SECRET)];

impl Pool {
    /// A signed GitHub `issues` event with delivery id `id` to `path`.
    async fn deliver(&self, path: &str, id: &str) -> reqwest::Response {
        let body = issue(7);
        let headers = github(GITHUB_SECRET, &body, id, "issues");
        self.post("h", path, &headers, &body).await
    }

    async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.nats.url()).await.expect("connect");
        async_nats::jetstream::new(client)
    }

    /// Every message of `stream`: subject and `Nats-Msg-Id`, in order.
    async fn subjects_and_ids(&self, stream: &str) -> Vec<(String, String)> {
        let js = self.jetstream().await;
        let mut stream = js.get_stream(stream).await.expect("stream exists");
        let state = stream.info().await.expect("stream info").state.clone();
        let mut messages = Vec::new();
        for sequence in state.first_sequence..=state.last_sequence {
            let Ok(message) = stream.get_raw_message(sequence).await else {
                continue;
            };
            let id = message
                .headers
                .get(hookline_api::headers::MSG_ID)
                .map(|id| id.as_str().to_owned())
                .unwrap_or_default();
            messages.push((message.subject.to_string(), id));
        }
        messages
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_stream_members_store_on_their_own_subjects_with_prefixed_message_ids() {
    let pool = Pool::start_shared(
        &alpha_and_beta(""),
        &ALPHA_AND_BETA_SECRETS,
        SHARED_POOL,
        true,
    )
    .await;
    assert_eq!(pool.deliver("/alpha", "a-1").await.status(), 200);
    assert_eq!(pool.deliver("/beta", "b-1").await.status(), 200);
    assert_eq!(pool.deliver("/alpha", "a-2").await.status(), 200);

    let stored = pool.subjects_and_ids(&pool_stream()).await;
    let ids: Vec<&str> = stored.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids, ["alpha:a-1", "beta:b-1", "alpha:a-2"]);
    for (subject, id) in &stored {
        let name = id.split(':').next().expect("prefixed");
        assert!(
            subject.starts_with(&format!("{}.", member_prefix(name))),
            "{id} on {subject}"
        );
    }
    let js = pool.jetstream().await;
    for own in ["HOOKLINE_shop_alpha", "HOOKLINE_shop_beta"] {
        assert!(js.get_stream(own).await.is_err(), "no stream {own}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_event_id_is_stored_once_per_member_of_a_shared_stream() {
    let pool = Pool::start_shared(
        &alpha_and_beta(""),
        &ALPHA_AND_BETA_SECRETS,
        SHARED_POOL,
        true,
    )
    .await;
    for path in ["/alpha", "/beta"] {
        let answer: serde_json::Value = pool
            .deliver(path, "same-1")
            .await
            .json()
            .await
            .expect("JSON");
        assert_eq!(answer["duplicate"], false, "{path}: {answer}");
    }
    let again = pool.deliver("/alpha", "same-1").await;
    assert_eq!(again.status(), 200);
    let again: serde_json::Value = again.json().await.expect("JSON");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(pool.stream_messages(&pool_stream()).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_member_of_a_shared_stream_is_503_while_the_others_store() {
    let pool = Pool::start_shared(
        &alpha_and_beta(SMALL_BUFFER),
        &ALPHA_AND_BETA_SECRETS,
        SHARED_POOL,
        true,
    )
    .await;
    let padded = |n: u32| {
        format!(
            r#"{{"action":"opened","issue":{{"id":{n}}},"pad":"{}"}}"#,
            "p".repeat(500)
        )
        .into_bytes()
    };
    let full = pool
        .until_status(503, |n| {
            let body = padded(n);
            let headers = github(GITHUB_SECRET, &body, &format!("fill-{n}"), "issues");
            ("h".into(), "/alpha".into(), headers, body)
        })
        .await;
    assert!(full.headers().get("retry-after").is_some());
    let answer: serde_json::Value = full.json().await.expect("JSON");
    assert_eq!(answer["error"], "buffer_full");
    // beta stores well past alpha's cap: its fill is its own, not the stream's.
    for n in 0..10 {
        let body = padded(1000 + n);
        let headers = github(GITHUB_SECRET, &body, &format!("free-{n}"), "issues");
        assert_eq!(pool.post("h", "/beta", &headers, &body).await.status(), 200);
    }
    // Each member's fill is its own share of the stream, kept per member.
    let fill = |metrics: &str, name: &str| {
        metrics
            .lines()
            .find(|line| {
                line.starts_with("hookline_receiver_buffer_bytes{")
                    && line.contains(&format!("endpoint=\"shop/{name}\""))
            })
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no buffer fill of {name}: {metrics}"))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut n = 10;
    loop {
        // Figures are refreshed for members whose requests find them stale.
        let body = padded(1000 + n);
        let headers = github(GITHUB_SECRET, &body, &format!("free-{n}"), "issues");
        assert_eq!(pool.post("h", "/beta", &headers, &body).await.status(), 200);
        n += 1;
        let metrics = pool.metrics().await;
        let (alpha, beta) = (fill(&metrics, "alpha"), fill(&metrics, "beta"));
        if beta > 0.0 {
            assert!(alpha >= 2048.0, "{metrics}");
            assert!(alpha > beta, "{metrics}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_the_shared_stream_does_not_list_is_503_with_retry_after() {
    let pool = Pool::start_shared(
        &alpha_and_beta(""),
        &ALPHA_AND_BETA_SECRETS,
        SHARED_POOL,
        false,
    )
    .await;
    // As the operator keeps it: a filter per member it serves, beta's not (yet).
    let config = hookline_api::provision::pool_stream_config(
        &pool_stream(),
        vec![format!("{}.>", member_prefix("alpha"))],
        "shop/hooks",
        Default::default(),
    );
    pool.jetstream()
        .await
        .create_stream(config)
        .await
        .expect("pool stream");
    assert_eq!(pool.deliver("/alpha", "a-1").await.status(), 200);
    for id in ["b-1", "b-2"] {
        let refused = pool.deliver("/beta", id).await;
        assert_eq!(refused.status(), 503, "{id}");
        assert!(refused.headers().get("retry-after").is_some(), "{id}");
        let answer: serde_json::Value = refused.json().await.expect("JSON");
        assert_eq!(answer["error"], "unavailable", "{answer}");
    }
    assert_eq!(pool.stream_messages(&pool_stream()).await, 1);
}

/// Busy members of a shared stream are settled by one read of the stream a
/// second, whatever their number.
#[tokio::test(flavor = "multi_thread")]
async fn busy_members_of_a_shared_stream_cost_one_read_a_second() {
    const MEMBERS: u32 = 10;
    let names: Vec<String> = (0..MEMBERS).map(|i| format!("busy{i}")).collect();
    let members: Vec<(String, String)> = names
        .iter()
        .map(|name| {
            let manifest = member(name, "github", None, &format!("/{name}"), "");
            (format!("{name}.yaml"), manifest)
        })
        .collect();
    let members: Vec<(&str, String)> = members
        .iter()
        .map(|(file, text)| (file.as_str(), text.clone()))
        .collect();
    let secrets: Vec<(&str, &str)> = names
        .iter()
        .map(|name| (name.as_str(), GITHUB_SECRET))
        .collect();
    let pool = Pool::start_shared(&members, &secrets, SHARED_POOL, true).await;
    // Each member's first request probes on its own.
    for name in &names {
        assert_eq!(
            pool.deliver(&format!("/{name}"), &format!("{name}-0"))
                .await
                .status(),
            200
        );
    }
    let before = jetstream_api_calls(&pool.nats).await;
    let started = tokio::time::Instant::now();
    let mut n: u64 = 1;
    while started.elapsed() < Duration::from_secs(3) {
        for name in &names {
            let id = format!("{name}-{n}");
            assert_eq!(pool.deliver(&format!("/{name}"), &id).await.status(), 200);
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = jetstream_api_calls(&pool.nats).await - before;
    // Three or four reads; a read per member would be 30 or more.
    assert!(
        calls <= 6,
        "{calls} JetStream API calls in 3 s for {MEMBERS} busy members"
    );
    assert_eq!(
        pool.stream_messages(&pool_stream()).await,
        u64::from(MEMBERS) * n
    );
}

//! Shared test support: a receiver served by `run` on port 0 next to a real
//! nats-server, and signatures made by code independent of the receiver's
//! verifier (`ring` HMAC per the providers' documentation, the
//! `standardwebhooks` crate, `ed25519-dalek` signing).
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::message::StreamMessage;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hookline_e2e::{ChildProcess, NatsServer};
use hookline_receiver::{Config, run};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

pub fn example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// A minimal manifest `default/test` for `provider`, with `extra` spec lines
/// (indented two spaces).
pub fn manifest(provider: &str, extra: &str) -> String {
    format!(
        "apiVersion: hookline.io/v1alpha1\nkind: WebhookEndpoint\nmetadata:\n  name: test\n  namespace: default\nspec:\n  provider: {provider}\n  secretRef:\n    name: test-secret\n{extra}"
    )
}

// ---- independent signers ----

pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut context = ring::hmac::Context::with_key(&key);
    for part in parts {
        context.update(part);
    }
    context.sign().as_ref().to_vec()
}

pub type Headers = Vec<(String, String)>;

fn h(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_owned(), value.into())
}

/// Stripe: `t=<ts>,v1=<hex HMAC-SHA256 of "<ts>.<body>">`, the secret used as is.
pub fn stripe(secret: &str, body: &[u8], ts: i64) -> Headers {
    let mac = hmac_sha256(secret.as_bytes(), &[ts.to_string().as_bytes(), b".", body]);
    vec![
        h(
            "Stripe-Signature",
            format!("t={ts},v1={}", hex::encode(mac)),
        ),
        h("Content-Type", "application/json; charset=utf-8"),
        h(
            "User-Agent",
            "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        ),
    ]
}

/// GitHub: `sha256=<hex HMAC-SHA256 of the body>`.
pub fn github(secret: &str, body: &[u8], delivery: &str, event: &str) -> Headers {
    let mac = hmac_sha256(secret.as_bytes(), &[body]);
    vec![
        h(
            "X-Hub-Signature-256",
            format!("sha256={}", hex::encode(mac)),
        ),
        h("X-GitHub-Delivery", delivery),
        h("X-GitHub-Event", event),
        h("Content-Type", "application/json"),
        h("User-Agent", "GitHub-Hookshot/abc123"),
    ]
}

/// Shopify: base64 HMAC-SHA256 of the body.
pub fn shopify(secret: &str, body: &[u8], webhook_id: &str, topic: &str) -> Headers {
    let mac = hmac_sha256(secret.as_bytes(), &[body]);
    vec![
        h("X-Shopify-Hmac-Sha256", STANDARD.encode(mac)),
        h("X-Shopify-Webhook-Id", webhook_id),
        h("X-Shopify-Topic", topic),
        h("X-Shopify-Triggered-At", "2023-03-29T18:00:27.877041743Z"),
        h("Content-Type", "application/json"),
    ]
}

/// Slack: `v0=<hex HMAC-SHA256 of "v0:<ts>:<body>">`.
pub fn slack(secret: &str, body: &[u8], ts: i64) -> Headers {
    let mac = hmac_sha256(
        secret.as_bytes(),
        &[b"v0:", ts.to_string().as_bytes(), b":", body],
    );
    vec![
        h("X-Slack-Signature", format!("v0={}", hex::encode(mac))),
        h("X-Slack-Request-Timestamp", ts.to_string()),
        h("Content-Type", "application/json"),
    ]
}

/// Standard Webhooks, signed by the `standardwebhooks` crate.
pub fn standard_webhooks(secret: &str, body: &[u8], id: &str, ts: i64) -> Headers {
    let signature = standardwebhooks::Webhook::new(secret)
        .expect("whsec secret")
        .sign(id, ts, body)
        .expect("sign");
    vec![
        h("webhook-id", id),
        h("webhook-timestamp", ts.to_string()),
        h("webhook-signature", signature),
        h("Content-Type", "application/json"),
    ]
}

/// Standard Webhooks asymmetric `v1a`: ed25519 over `<id>.<ts>.<body>`.
pub fn standard_webhooks_ed25519(seed: [u8; 32], body: &[u8], id: &str, ts: i64) -> Headers {
    use ed25519_dalek::Signer;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let message = [id.as_bytes(), b".", ts.to_string().as_bytes(), b".", body].concat();
    let signature = key.sign(&message);
    vec![
        h("webhook-id", id),
        h("webhook-timestamp", ts.to_string()),
        h(
            "webhook-signature",
            format!("v1a,{}", STANDARD.encode(signature.to_bytes())),
        ),
        h("Content-Type", "application/json"),
    ]
}

/// The `whpk_` line for the ed25519 key with `seed`.
pub fn whpk(seed: [u8; 32]) -> String {
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    format!("whpk_{}", STANDARD.encode(key.verifying_key().to_bytes()))
}

/// The generic example: `X-Signature: sha256=<hex HMAC of "<ts>.<body>">`,
/// from an allowed source behind one proxy.
pub fn generic(secret: &str, body: &[u8], ts: i64) -> Headers {
    let mac = hmac_sha256(secret.as_bytes(), &[ts.to_string().as_bytes(), b".", body]);
    vec![
        h("X-Signature", format!("sha256={}", hex::encode(mac))),
        h("X-Timestamp", ts.to_string()),
        h("X-Forwarded-For", "203.0.113.5"),
        h("Content-Type", "application/json"),
    ]
}

// ---- the receiver under test ----

/// A receiver served by `run` on a loopback port, with its own nats-server.
pub struct Receiver {
    pub nats: NatsServer,
    pub base: String,
    pub path: String,
    pub stream: String,
    pub secret_path: PathBuf,
    pub dir: TempDir,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<hookline_receiver::Result<()>>>,
}

pub struct Options {
    pub publish_timeout: Duration,
    pub wait_ready: bool,
    /// `--provision`: the receiver makes the stream and durable consumer.
    pub provision: bool,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Options {
    fn default() -> Self {
        let defaults = Config::new(
            hookline_api::resolve(
                "default",
                "defaults",
                &hookline_api::WebhookEndpointSpec::new(hookline_api::spec::Provider::Github, "s"),
            )
            .expect("valid"),
            PathBuf::new(),
            String::new(),
        );
        Options {
            publish_timeout: Duration::from_secs(2),
            wait_ready: true,
            provision: true,
            request_timeout: defaults.request_timeout,
            header_read_timeout: defaults.header_read_timeout,
            max_connections: defaults.max_connections,
        }
    }
}

impl Receiver {
    pub async fn start(manifest: &str, secrets: &str) -> Receiver {
        let nats = tokio::task::block_in_place(|| NatsServer::start().expect("nats-server"));
        Receiver::start_with(nats, manifest, secrets, Options::default()).await
    }

    pub async fn start_with(
        nats: NatsServer,
        manifest: &str,
        secrets: &str,
        options: Options,
    ) -> Receiver {
        let dir = tempfile::tempdir().expect("temp dir");
        let manifest_path = dir.path().join("endpoint.yaml");
        std::fs::write(&manifest_path, manifest).expect("write manifest");
        let secret_path = dir.path().join("secret");
        std::fs::write(&secret_path, secrets).expect("write secrets");
        let endpoint = hookline_api::load_manifest(&manifest_path).expect("valid manifest");
        let path = endpoint.route.path.clone();
        let stream = endpoint.stream.name.clone();
        let mut config = Config::new(endpoint, secret_path.clone(), nats.url());
        config.provision = options.provision;
        config.publish_timeout = options.publish_timeout;
        config.request_timeout = options.request_timeout;
        config.header_read_timeout = options.header_read_timeout;
        config.max_connections = options.max_connections;
        config.secret_poll_interval = Duration::from_millis(100);
        config.shutdown_timeout = Duration::from_secs(10);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(run(config, listener, async move {
            let _ = signal.await;
        }));
        let receiver = Receiver {
            nats,
            base,
            path,
            stream,
            secret_path,
            dir,
            http: reqwest::Client::new(),
            shutdown: Some(shutdown),
            task: Some(task),
        };
        if options.wait_ready {
            receiver.wait_ready(Duration::from_secs(15)).await;
        }
        receiver
    }

    /// `host:port` where it serves, for raw TCP clients.
    pub fn address(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    /// The number of messages in the endpoint's stream.
    pub async fn stream_messages(&self) -> u64 {
        let client = async_nats::connect(self.nats.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(&self.stream).await.expect("stream exists");
        stream.get_info().await.expect("stream info").state.messages
    }

    /// Asks `/readyz` on a connection closed after the answer, so polling
    /// leaves no idle connection behind (tests count connections).
    pub async fn is_ready(&self) -> bool {
        let request = self
            .http
            .get(format!("{}/readyz", self.base))
            .header("Connection", "close");
        matches!(
            request.send().await,
            Ok(response) if response.status() == 200
        )
    }

    pub async fn wait_ready(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.is_ready().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "receiver not ready after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn post(&self, headers: &[(String, String)], body: &[u8]) -> reqwest::Response {
        self.post_to(&self.path, headers, body).await
    }

    pub async fn post_to(
        &self,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send().await.expect("request sent")
    }

    /// Every message in the endpoint's stream, in order.
    pub async fn messages(&self) -> Vec<StreamMessage> {
        let client = async_nats::connect(self.nats.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(&self.stream).await.expect("stream exists");
        let info = stream.get_info().await.expect("stream info");
        if info.state.messages == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for sequence in info.state.first_sequence..=info.state.last_sequence {
            if let Ok(message) = stream.get_raw_message(sequence).await {
                out.push(message);
            }
        }
        out
    }

    pub fn write_secrets(&self, text: &str) {
        // Like a Kubernetes Secret volume: write aside, then rename over.
        let staged = self.dir.path().join("secret.new");
        std::fs::write(&staged, text).expect("write secrets");
        std::fs::rename(&staged, &self.secret_path).expect("swap secrets");
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Signals shutdown (like SIGTERM) without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(&mut self) -> hookline_receiver::Result<()> {
        self.begin_shutdown();
        match self.task.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("run returned in time")
                .expect("run did not panic"),
            None => Ok(()),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The value of header `name` of a stored message.
pub fn header<'a>(message: &'a StreamMessage, name: &str) -> Option<&'a str> {
    message.headers.get(name).map(|value| value.as_str())
}

// ---- raw HTTP/1.1 over TCP, for what an HTTP library would not send ----

/// A request head: `POST path HTTP/1.1`, `Host`, then `headers`, then the
/// blank line. No `Content-Length` unless `headers` has one.
pub fn raw_head(path: &str, headers: &[(String, String)]) -> Vec<u8> {
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: localhost\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// What a client that writes its whole request before reading gets: writes
/// `request` completely (failing the test if the server resets first), then
/// reads until the server closes; returns everything read.
pub async fn write_all_then_read(address: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream
        .write_all(request)
        .await
        .expect("the whole request is written before the server closes");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .expect("the answer is read, not reset");
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of a raw answer (`HTTP/1.1 413 Payload Too Large` → 413).
pub fn status_of(answer: &str) -> u16 {
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

/// The body of a raw answer (after the blank line).
pub fn body_of(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// Waits until the receiver binary running as `child` answers `GET
/// {base}/readyz` with 200; fails with its log if it exits or takes longer
/// than `limit`.
pub async fn wait_until_binary_ready(child: &mut ChildProcess, base: &str, limit: Duration) {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(response) = http.get(format!("{base}/readyz")).send().await
            && response.status() == 200
        {
            return;
        }
        assert!(child.is_running(), "receiver exited:\n{}", child.log());
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready:\n{}",
            child.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

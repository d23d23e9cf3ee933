//! `kubectl hookline` against the stand-in API server (`fakekube.py` from the
//! development tools, which people who clone the project do not have) and
//! the real pipeline: a real `nats-server`, Postgres, one real
//! `hookline-receiver` per shipped example (every provider) and a real
//! `hookline-consumer` for Stripe. Each endpoint is stored in fakekube with
//! its Secret and a `status.url` pointing at its receiver.
//!
//! fakekube serves no `pods/exec`: the consumer commands the plugin runs in
//! the consumer pod (`dead-letters`, `replay`, `tail`, `send --wait`) run
//! here as the same `hookline-consumer` subcommand on this machine, with the
//! environment the operator gives the pod (`LocalExec`). Finding the pod and
//! the exec transport are what this does not test.
//!
//! Ignored by default; `.ci/run` runs it with `--ignored`. Set
//! `HOOKLINE_FAKEKUBE` to the script (default `../shared/tools/fakekube.py`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::future::BoxFuture;
use hookline_api::WebhookEndpoint;
use hookline_e2e::fakekube::FakeKube;
use hookline_e2e::{ChildProcess, NatsServer, Postgres, free_port, workspace_bin};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use kubectl_hookline::cli::Cli;
use kubectl_hookline::{Context, Error, Exec};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWrite};

/// Runs `hookline-consumer <args>` here, with the environment the operator
/// gives the consumer pod, in place of an exec into it.
struct LocalExec {
    manifest: PathBuf,
    nats_url: String,
    database_url: String,
}

impl Exec for LocalExec {
    fn run<'a>(
        &'a self,
        _namespace: &'a str,
        _endpoint: &'a str,
        args: &'a [String],
        out: &'a mut (dyn AsyncWrite + Unpin + Send),
    ) -> BoxFuture<'a, kubectl_hookline::Result<i32>> {
        Box::pin(async move {
            let mut child = tokio::process::Command::new(workspace_bin("hookline-consumer"))
                .args(args)
                .env("HOOKLINE_ENDPOINT", &self.manifest)
                .env("HOOKLINE_NATS_URL", &self.nats_url)
                .env("HOOKLINE_DATABASE_URL", &self.database_url)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            if let Some(mut stdout) = child.stdout.take() {
                tokio::io::copy(&mut stdout, out).await?;
            }
            let status = child.wait().await?;
            Ok(status.code().unwrap_or(1))
        })
    }
}

/// One example endpoint with its receiver.
struct Endpoint {
    name: String,
    namespace: String,
    manifest: PathBuf,
    /// `http://127.0.0.1:<port>`, as a port-forward would give.
    base: String,
    _receiver: ChildProcess,
}

/// The examples' secrets, in each provider's format.
fn secret_for(example: &str) -> &'static str {
    match example {
        "stripe.yaml" => "whsec_test_stripe\nwhsec_old_rotated",
        "shopify.yaml" => "shpss_test_shopify",
        "standard-webhooks.yaml" => "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        _ => "0123456789abcdef0123456789abcdef",
    }
}

const EXAMPLES: [&str; 6] = [
    "stripe.yaml",
    "github.yaml",
    "shopify.yaml",
    "slack.yaml",
    "standard-webhooks.yaml",
    "generic.yaml",
];

/// Stores the example, its Secret and a status pointing at a real receiver.
async fn start_endpoint(client: &Client, nats: &NatsServer, dir: &Path, example: &str) -> Endpoint {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(example);
    let mut resource: WebhookEndpoint =
        hookline_api::parse_manifest(&std::fs::read_to_string(&path).expect("example"))
            .expect("parses");
    // The generic example only takes requests from its partner's range.
    resource.spec.allowed_source_ranges = Vec::new();
    let name = resource.name_any();
    let namespace = resource.namespace().expect("namespace");
    let endpoint = hookline_api::validate(&resource).expect("valid");
    let manifest = dir.join(example);
    std::fs::write(&manifest, serde_yaml::to_string(&resource).expect("YAML")).expect("manifest");
    let secret_file = dir.join(format!("{example}.secret"));
    std::fs::write(&secret_file, secret_for(example)).expect("secret file");

    let port = free_port();
    let mut command = Command::new(workspace_bin("hookline-receiver"));
    command
        .arg("--endpoint")
        .arg(&manifest)
        .arg("--secret-file")
        .arg(&secret_file)
        .args(["--nats-url", &nats.url(), "--provision"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn");
    let receiver = ChildProcess::spawn(&mut command).expect("receiver starts");

    let endpoints: Api<WebhookEndpoint> = Api::namespaced(client.clone(), &namespace);
    endpoints
        .patch(
            &name,
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&resource),
        )
        .await
        .expect("endpoint stored");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": endpoint.secret.name, "namespace": namespace},
        "stringData": {endpoint.secret.key.clone(): secret_for(example)},
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret stored");
    let url = format!("http://127.0.0.1:{port}{}", endpoint.route.path);
    endpoints
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "url": url,
                "pending": 0,
                "lastEventTime": "2026-12-01T10:00:00Z",
                "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "",
                    "lastTransitionTime": "2026-12-01T10:00:00Z"}],
            }})),
        )
        .await
        .expect("status written");
    let ready = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if reqwest::get(&ready)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "receiver for {example} not ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Endpoint {
        name,
        namespace,
        manifest,
        base: format!("http://127.0.0.1:{port}"),
        _receiver: receiver,
    }
}

/// Runs `kubectl hookline <args>` in-process; the output and the result.
async fn plugin(context: &Context, args: &[&str]) -> (String, kubectl_hookline::Result<()>) {
    let cli = Cli::try_parse_from(std::iter::once("kubectl-hookline").chain(args.iter().copied()))
        .expect("flags parse");
    let mut out = Vec::new();
    let result = kubectl_hookline::run(&cli, context, &mut out).await;
    (String::from_utf8_lossy(&out).into_owned(), result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs fakekube.py from the development tools; .ci/run runs it"]
async fn kubectl_hookline_lists_sends_and_works_the_consumer() {
    let fake = tokio::task::block_in_place(|| FakeKube::start(false));
    let nats = tokio::task::block_in_place(NatsServer::start).expect("nats-server starts");
    let pg = tokio::task::block_in_place(Postgres::start).expect("postgres starts");
    let client = fake.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "webhookendpoints.hookline.io",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&hookline_api::crd()),
    )
    .await
    .expect("CRD applied");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut endpoints = Vec::new();
    for example in EXAMPLES {
        endpoints.push(start_endpoint(&client, &nats, dir.path(), example).await);
    }
    let stripe = &endpoints[0];
    let mut consumer = {
        let mut command = Command::new(workspace_bin("hookline-consumer"));
        command
            .arg("--endpoint")
            .arg(&stripe.manifest)
            .args(["--nats-url", &nats.url(), "--database-url", &pg.url()])
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .env("RUST_LOG", "warn");
        ChildProcess::spawn(&mut command).expect("consumer starts")
    };
    let context = Context {
        client: client.clone(),
        namespace: "default".into(),
        exec: Box::new(LocalExec {
            manifest: stripe.manifest.clone(),
            nats_url: nats.url(),
            database_url: pg.url(),
        }),
    };

    // Every provider's sample, signed with its Secret, is stored (200); a
    // forged one is refused (401).
    for endpoint in &endpoints {
        let (out, result) = plugin(
            &context,
            &["send", &endpoint.name, "-n", &endpoint.namespace],
        )
        .await;
        assert!(result.is_ok(), "{}: {result:?}\n{out}", endpoint.name);
        assert!(out.contains("HTTP 200 OK"), "{out}");
        assert!(out.contains(r#""status":"stored""#), "{out}");
        let (out, result) = plugin(
            &context,
            &[
                "send",
                &endpoint.name,
                "-n",
                &endpoint.namespace,
                "--bad-signature",
            ],
        )
        .await;
        assert!(result.is_ok(), "{}: {result:?}\n{out}", endpoint.name);
        assert!(out.contains("HTTP 401 Unauthorized"), "{out}");
    }

    // A body of one's own, then waited for until the consumer stored it.
    let body = dir.path().join("event.json");
    std::fs::write(
        &body,
        r#"{"id":"evt_from_file","object":"event","type":"charge.failed","created":1700000000,"data":{"object":{"id":"ch_1"}}}"#,
    )
    .expect("body");
    let (out, result) = plugin(
        &context,
        &[
            "-n",
            "payments",
            "send",
            "stripe",
            "--file",
            body.to_str().expect("utf-8"),
            "--wait",
        ],
    )
    .await;
    assert!(result.is_ok(), "{result:?}\n{out}");
    assert!(
        out.lines()
            .any(|line| line
                .starts_with("evt_from_file  charge.failed  2023-11-14T22:13:20.000Z  ch_1")),
        "{out}"
    );

    // `--url` (a port-forward) without a path gets the endpoint's.
    let github = &endpoints[1];
    let (out, result) = plugin(&context, &["send", "github", "--url", &github.base]).await;
    assert!(result.is_ok(), "{result:?}\n{out}");
    assert!(
        out.starts_with(&format!("POST {}/github\n", github.base)),
        "{out}"
    );

    // list: a wider `kubectl get whe`, in one namespace or all.
    let github: Api<WebhookEndpoint> = Api::namespaced(client.clone(), "default");
    github
        .patch_status(
            "github",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "False",
                "reason": "SecretMissing", "message": "Secret default/github-webhook does not exist",
                "lastTransitionTime": "2026-12-01T10:00:00Z"}]}})),
        )
        .await
        .expect("status");
    let (out, result) = plugin(&context, &["list"]).await;
    assert!(result.is_ok(), "{result:?}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAME "), "{out}");
    assert!(lines[0].contains("READY   URL"), "{out}");
    assert_eq!(lines.len(), 5, "four endpoints in default:\n{out}");
    let github_line = lines
        .iter()
        .find(|l| l.starts_with("github "))
        .expect("github row");
    assert!(
        github_line.contains("False")
            && github_line.ends_with("SecretMissing: Secret default/github-webhook does not exist"),
        "{out}"
    );
    let (out, _) = plugin(&context, &["list", "-A"]).await;
    assert!(out.starts_with("NAMESPACE "), "{out}");
    assert!(out.contains("\npayments    stripe "), "{out}");
    assert_eq!(out.lines().count(), 7, "{out}");
    let (out, _) = plugin(&context, &["list", "-A", "-o", "json"]).await;
    let rows: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(rows.as_array().map(Vec::len), Some(6));
    assert_eq!(rows[0]["namespace"], "default");
    let (out, _) = plugin(&context, &["list", "-n", "shop", "-o", "yaml"]).await;
    assert!(out.contains("name: shopify"), "{out}");

    // Dead letters and replay, through the consumer's subcommands.
    pg.psql(
        "INSERT INTO hookline.dead_letters (endpoint, event_id, event_type, payload, error, deliveries, failed_at) \
         VALUES ('payments/stripe', 'evt_dead', 'invoice.paid', \
                 convert_to('{\"id\":\"evt_dead\",\"type\":\"invoice.paid\"}', 'UTF8'), 'boom', 10, '2026-12-01T09:00:00Z')",
    )
    .expect("dead letter");
    let (out, result) = plugin(&context, &["-n", "payments", "dead-letters", "stripe"]).await;
    assert!(result.is_ok(), "{result:?}");
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.contains("evt_dead") && l.ends_with("boom")),
        "{out}"
    );
    let (out, result) = plugin(
        &context,
        &[
            "-n",
            "payments",
            "replay",
            "stripe",
            "--event-id",
            "evt_dead",
        ],
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert!(
        out.contains("replayed 1 dead letter(s) of payments/stripe"),
        "{out}"
    );

    // tail: follows what is stored from now on, until stopped.
    let (writer, reader) = tokio::io::duplex(64 * 1024);
    let tail = {
        let client = client.clone();
        let exec = LocalExec {
            manifest: stripe.manifest.clone(),
            nats_url: nats.url(),
            database_url: pg.url(),
        };
        tokio::spawn(async move {
            let context = Context {
                client,
                namespace: "payments".into(),
                exec: Box::new(exec),
            };
            let cli = Cli::try_parse_from(["kubectl-hookline", "tail", "stripe"]).expect("flags");
            let mut writer = writer;
            kubectl_hookline::run(&cli, &context, &mut writer).await
        })
    };
    let mut lines = tokio::io::BufReader::new(reader).lines();
    let header = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("tail starts")
        .expect("read");
    assert_eq!(header.as_deref(), Some("EVENT ID  TYPE  TIME  OBJECT"));
    let (out, result) = plugin(
        &context,
        &[
            "-n",
            "payments",
            "send",
            "stripe",
            "--type",
            "invoice.created",
        ],
    )
    .await;
    assert!(result.is_ok(), "{result:?}\n{out}");
    let id = out
        .lines()
        .find_map(|line| line.strip_prefix("event id: "))
        .expect("event id printed")
        .to_owned();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("tail prints the event")
        .expect("read")
        .expect("a line");
    assert!(
        line.starts_with(&format!("{id}  invoice.created  ")),
        "{line}"
    );
    tail.abort();

    // No operator runs here, so no receiver Deployment: a port-forward names
    // the Deployment whose pods it looks for.
    let (_, result) = plugin(
        &context,
        &["send", "stripe", "-n", "payments", "--via-port-forward"],
    )
    .await;
    assert!(
        matches!(&result, Err(Error::Exec(why)) if why.contains("payments/stripe-receiver")),
        "{result:?}"
    );

    // A missing endpoint and a missing Secret are named.
    let (_, result) = plugin(&context, &["send", "nope"]).await;
    assert!(
        matches!(&result, Err(Error::NotFound(what)) if what == "default/nope"),
        "{result:?}"
    );
    assert!(consumer.terminate().is_some_and(|s| s.success()));
}

/// The binary itself: the kubeconfig's context and namespace, one line and
/// exit code 1 on failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs fakekube.py from the development tools; .ci/run runs it"]
async fn the_binary_uses_the_kubeconfig_and_says_what_failed() {
    let fake = tokio::task::block_in_place(|| FakeKube::start(false));
    let bin = env!("CARGO_BIN_EXE_kubectl-hookline");
    let run = |args: &[&str]| {
        let output = Command::new(bin)
            .args(args)
            .env("KUBECONFIG", fake.kubeconfig())
            .output()
            .expect("runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // A context the kubeconfig does not have is named.
    let (code, _, stderr) = tokio::task::block_in_place(|| run(&["list", "--context", "nope"]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: kubeconfig: ") && stderr.contains("nope"),
        "{stderr}"
    );
    let client = fake.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    crds.patch(
        "webhookendpoints.hookline.io",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&hookline_api::crd()),
    )
    .await
    .expect("CRD applied");
    let (code, stdout, stderr) = tokio::task::block_in_place(|| run(&["list"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "No WebhookEndpoints found in default namespace.\n");
    let (code, _, stderr) =
        tokio::task::block_in_place(|| run(&["send", "stripe", "-n", "payments"]));
    assert_eq!(code, Some(1));
    assert_eq!(stderr, "error: WebhookEndpoint payments/stripe not found\n");
    let (code, stdout, _) = tokio::task::block_in_place(|| run(&["--help"]));
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("kubectl hookline send stripe --bad-signature"),
        "{stdout}"
    );
}

//! The real `hookline-receiver` binary: the contract's flags and environment
//! variables, one-line errors, and SIGTERM.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::*;
use hookline_e2e::{ChildProcess, NatsServer, Signal, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_hookline-receiver");
const SECRET: &str = "It's a Secret to Everybody";

fn run_to_end(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(BIN)
        .args(args)
        .env_remove("HOOKLINE_ENDPOINT")
        .env_remove("HOOKLINE_SECRET_FILE")
        .env_remove("HOOKLINE_ENDPOINT_DIR")
        .env_remove("HOOKLINE_SECRET_DIR")
        .env_remove("HOOKLINE_SHARED_STREAM")
        .env_remove("HOOKLINE_NATS_URL")
        .envs(envs.iter().copied())
        .output()
        .expect("run binary");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_one_line_error(stderr: &str) {
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn unknown_flag_is_a_one_line_error() {
    let (code, stderr) = run_to_end(&["--endpont", "x"], &[]);
    assert_eq!(code, Some(2));
    assert_one_line_error(&stderr);
    assert!(stderr.contains("--endpont"), "{stderr}");
}

#[test]
fn missing_flags_are_named_on_one_line() {
    let (code, stderr) = run_to_end(&[], &[]);
    assert_eq!(code, Some(2));
    assert_one_line_error(&stderr);
    assert!(stderr.contains("--endpoint"), "{stderr}");
}

#[test]
fn endpoint_and_endpoint_dir_are_one_or_the_other_each_with_its_secrets() {
    let nats = ["--nats-url", "nats://127.0.0.1:1"];
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "--endpoint",
                "e.yaml",
                "--secret-file",
                "s",
                "--endpoint-dir",
                "d",
                "--secret-dir",
                "s",
            ],
            "cannot be used with",
        ),
        (&[], "--endpoint"),
        (&["--endpoint-dir", "d"], "--secret-dir"),
        (&["--endpoint", "e.yaml"], "--secret-file"),
        (
            &[
                "--endpoint-dir",
                "d",
                "--secret-file",
                "s",
                "--secret-dir",
                "s",
            ],
            "cannot be used with",
        ),
    ];
    for (args, named) in cases {
        let args: Vec<&str> = args.iter().chain(nats.iter()).copied().collect();
        let (code, stderr) = run_to_end(&args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_one_line_error(&stderr);
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}

#[test]
fn a_shared_stream_is_only_for_a_pool() {
    let args = [
        "--endpoint",
        "e.yaml",
        "--secret-file",
        "s",
        "--nats-url",
        "nats://127.0.0.1:1",
    ];
    let by_flag: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--shared-stream", "hooks"])
        .collect();
    for (args, envs) in [
        (&by_flag[..], &[][..]),
        (&args[..], &[("HOOKLINE_SHARED_STREAM", "hooks")][..]),
    ] {
        let (code, stderr) = run_to_end(args, envs);
        assert_eq!(code, Some(2), "{args:?} {envs:?}: {stderr}");
        assert_one_line_error(&stderr);
        assert!(stderr.contains("--shared-stream"), "{stderr}");
    }
}

#[test]
fn a_pool_of_two_namespaces_at_start_is_a_one_line_error_naming_them() {
    let dir = tempfile::tempdir().expect("dir");
    let endpoints = dir.path().join("endpoints");
    std::fs::create_dir(&endpoints).expect("mkdir");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).expect("mkdir");
    std::fs::write(endpoints.join("a.yaml"), manifest("github", "")).expect("write");
    std::fs::write(
        endpoints.join("b.yaml"),
        manifest("github", "").replace("namespace: default", "namespace: billing"),
    )
    .expect("write");
    let (code, stderr) = run_to_end(
        &[
            "--endpoint-dir",
            endpoints.to_str().expect("utf-8"),
            "--secret-dir",
            secrets.to_str().expect("utf-8"),
            "--nats-url",
            "nats://127.0.0.1:1",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert_one_line_error(&stderr);
    assert!(stderr.contains("different namespaces"), "{stderr}");
    assert!(stderr.contains("b.yaml is in billing"), "{stderr}");
    assert!(stderr.contains("a.yaml is in default"), "{stderr}");
}

#[test]
fn invalid_manifest_is_a_one_line_error_naming_the_field() {
    let dir = tempfile::tempdir().expect("dir");
    let endpoint = dir.path().join("endpoint.yaml");
    std::fs::write(&endpoint, manifest("paypal", "")).expect("write");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s").expect("write");
    let (code, stderr) = run_to_end(
        &[
            "--endpoint",
            endpoint.to_str().expect("utf-8"),
            "--secret-file",
            secret.to_str().expect("utf-8"),
            "--nats-url",
            "nats://127.0.0.1:1",
        ],
        &[],
    );
    assert_eq!(code, Some(1));
    assert_one_line_error(&stderr);
    assert!(stderr.contains("spec.provider"), "{stderr}");
}

#[test]
fn missing_secret_file_is_a_one_line_error() {
    let dir = tempfile::tempdir().expect("dir");
    let endpoint = dir.path().join("endpoint.yaml");
    std::fs::write(&endpoint, manifest("github", "")).expect("write");
    let (code, stderr) = run_to_end(
        &[],
        &[
            ("HOOKLINE_ENDPOINT", endpoint.to_str().expect("utf-8")),
            ("HOOKLINE_SECRET_FILE", "/nonexistent/secret"),
            ("HOOKLINE_NATS_URL", "nats://127.0.0.1:1"),
        ],
    );
    assert_eq!(code, Some(1));
    assert_one_line_error(&stderr);
    assert!(stderr.contains("/nonexistent/secret"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_configured_by_environment_stores_events_and_exits_on_sigterm() {
    let nats = tokio::task::block_in_place(|| NatsServer::start().expect("nats-server"));
    let dir = tempfile::tempdir().expect("dir");
    let endpoint = dir.path().join("endpoint.yaml");
    std::fs::write(&endpoint, example("github.yaml")).expect("write");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("write");
    let port = free_port();
    let mut command = Command::new(BIN);
    command
        .arg("--provision")
        .env("HOOKLINE_ENDPOINT", &endpoint)
        .env("HOOKLINE_SECRET_FILE", &secret)
        .env("HOOKLINE_NATS_URL", nats.url())
        .env("HOOKLINE_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info");
    let mut child = ChildProcess::spawn(&mut command).expect("spawn receiver");
    let base = format!("http://127.0.0.1:{port}");
    wait_until_binary_ready(&mut child, &base, Duration::from_secs(20)).await;
    let http = reqwest::Client::new();

    let body = br#"{"action":"created","hook_id":42}"#;
    let mut request = http.post(format!("{base}/github")).body(body.to_vec());
    for (name, value) in github(SECRET, body, "bin-1", "ping") {
        request = request.header(name, value);
    }
    let response = request.send().await.expect("post");
    assert_eq!(response.status(), 200);

    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream("HOOKLINE_default_github")
        .await
        .expect("stream");
    let message = stream.get_raw_message(1).await.expect("message 1");
    assert_eq!(message.subject.as_str(), "hookline.default.github.ping");

    child.signal(Signal::Term).expect("SIGTERM");
    let status = tokio::task::block_in_place(|| child.wait_timeout(Duration::from_secs(15)))
        .expect("exited after SIGTERM");
    assert!(status.success(), "exit status {status}");
    let log = child.log();
    assert!(!log.contains(SECRET), "the secret is never logged");
    for line in log.lines().filter(|line| !line.trim().is_empty()) {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("JSON log line: {line}"));
        assert!(parsed.get("level").is_some(), "{line}");
    }
}

#[test]
fn a_misspelt_field_is_warned_of_with_its_path() {
    let dir = tempfile::tempdir().expect("dir");
    let endpoint = dir.path().join("endpoint.yaml");
    std::fs::write(
        &endpoint,
        manifest(
            "github",
            "  request:\n    rateLimt: {requestsPerSecond: 5}\n",
        ),
    )
    .expect("write");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s").expect("write");
    let mut command = Command::new(BIN);
    command
        .env("HOOKLINE_ENDPOINT", &endpoint)
        .env("HOOKLINE_SECRET_FILE", &secret)
        // Nobody listens: the warning comes before any connection.
        .env(
            "HOOKLINE_NATS_URL",
            format!("nats://127.0.0.1:{}", free_port()),
        )
        .env("HOOKLINE_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("RUST_LOG", "info");
    let mut child = ChildProcess::spawn(&mut command).expect("spawn receiver");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !child.log().contains("spec.request.rateLimt") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = child.log();
    assert!(child.is_running(), "it still starts:\n{log}");
    assert!(
        log.lines().any(|line| line.contains("\"WARN\"")
            && line.contains("spec.request.rateLimt")
            && line.contains("unknown field")),
        "{log}"
    );
}

//! The real `hookline-consumer` binary: flags, crashes, several instances,
//! signals, the `replay` subcommand.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{Env, TestEvent, count, metric, wait_until};
use hookline_e2e::{ChildProcess, Signal, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_hookline-consumer");
const WAIT: Duration = Duration::from_secs(60);

/// Starts the binary for `env`; returns the process and its metrics port.
fn spawn(env: &Env, extra: &[&str]) -> (ChildProcess, u16) {
    let port = free_port();
    let mut command = Command::new(BIN);
    command
        .arg("--endpoint")
        .arg(&env.manifest)
        .args(["--nats-url", &env.nats.url()])
        .args(["--database-url", &env.pg.url()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("RUST_LOG", "info");
    (
        ChildProcess::spawn(&mut command).expect("spawn consumer"),
        port,
    )
}

async fn publish_plain(env: &Env, prefix: &str, count: usize) {
    // Pipelined: wait for the PubAcks after sending all.
    let mut acks = Vec::with_capacity(count);
    for i in 0..count {
        let event = TestEvent::plain(&format!("{prefix}-{i}"));
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id.as_str());
        headers.insert("Hookline-Event-Id", event.id.as_str());
        headers.insert("Hookline-Event-Type", "ping");
        headers.insert("Hookline-Received-At", "2026-01-01T00:00:00Z");
        headers.insert("Hookline-Endpoint", "test/shop");
        acks.push(
            env.js
                .publish_with_headers(
                    env.endpoint.stream.subject_for("ping"),
                    headers,
                    event.body.into(),
                )
                .await
                .expect("publish"),
        );
    }
    for ack in acks {
        ack.await.expect("PubAck");
    }
}

fn run_to_end(args: &[&str], env_vars: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(BIN);
    command.args(args);
    for (key, value) in env_vars {
        command.env(key, value);
    }
    for key in [
        "HOOKLINE_ENDPOINT",
        "HOOKLINE_NATS_URL",
        "HOOKLINE_DATABASE_URL",
        "HOOKLINE_LISTEN",
    ] {
        if !env_vars.iter().any(|(k, _)| k == &key) {
            command.env_remove(key);
        }
    }
    let output = command.output().expect("run binary");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_flag_is_one_line_and_a_non_zero_exit() {
    let (code, _, stderr) = run_to_end(&["--no-such-flag"], &[]);
    assert_eq!(code, 2);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
    assert!(!stderr.contains("panicked"));

    let (code, _, stderr) = run_to_end(&["--listen", "not-an-address"], &[]);
    assert_eq!(code, 2);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn missing_or_wrong_settings_are_one_line_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.yaml");
    let missing = missing.to_str().expect("utf-8");
    let dir_path = dir.path().to_str().expect("utf-8");
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--endpoint", missing],
            vec![],
            "--nats-url is required",
        ),
        (
            vec![
                "--nats-url",
                "nats://127.0.0.1:1",
                "--database-url",
                "postgres://x@127.0.0.1/db",
            ],
            vec![],
            "--endpoint is required",
        ),
        (
            vec![],
            vec![
                ("HOOKLINE_ENDPOINT", missing),
                ("HOOKLINE_NATS_URL", "nats://127.0.0.1:1"),
                ("HOOKLINE_DATABASE_URL", "postgres://x@127.0.0.1/db"),
            ],
            "cannot read",
        ),
        (
            vec![
                "--endpoint",
                missing,
                "--nats-url",
                "nats://127.0.0.1:1",
                "--database-url",
                "mysql://nope",
            ],
            vec![],
            "not a valid Postgres URL",
        ),
        (
            vec!["--endpoint", missing, "--shared-stream", "hooks"],
            vec![],
            "--shared-stream is for --endpoint-dir",
        ),
        (
            vec!["--endpoint", missing, "--endpoint-dir", dir_path],
            vec![],
            "--endpoint and --endpoint-dir exclude each other",
        ),
        (
            vec![
                "--endpoint-dir",
                missing,
                "--nats-url",
                "nats://127.0.0.1:1",
                "--database-url",
                "postgres://x@127.0.0.1/db",
            ],
            vec![],
            "not a directory",
        ),
    ];
    for (args, env_vars, expected) in cases {
        let (code, _, stderr) = run_to_end(&args, &env_vars);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_batch_loses_and_doubles_nothing() {
    let env =
        Env::start("maxDeliver: 5\n    backoff: [100ms]\n    ackWait: 2s\n    batchSize: 100")
            .await;
    publish_plain(&env, "k", 3000).await;
    let db = env.db().await;
    let (mut first, _) = spawn(&env, &[]);
    wait_until("a few batches", WAIT, || async {
        count(&db, "SELECT count(*) FROM hookline.events").await >= 300
    })
    .await;
    first.kill();
    let at_kill = count(&db, "SELECT count(*) FROM hookline.events").await;
    assert!(
        at_kill < 3000,
        "killed too late to be mid-stream ({at_kill})"
    );

    let (mut second, port) = spawn(&env, &[]);
    wait_until("every event", WAIT, || async {
        count(&db, "SELECT count(*) FROM hookline.events").await == 3000
    })
    .await;
    assert_eq!(
        count(&db, "SELECT count(DISTINCT event_id) FROM hookline.events").await,
        3000
    );
    wait_until("nothing unfinished", WAIT, || async {
        env.unfinished().await == 0
    })
    .await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM hookline.events").await,
        3000
    );
    let processed = metric(port, "hookline_consumer_events_processed_total").await;
    let duplicates = metric(port, "hookline_consumer_duplicates_total").await;
    eprintln!(
        "killed at {at_kill} rows; the successor stored {processed}, saw {duplicates} duplicates"
    );
    assert!(processed > 0.0);
    assert!(
        second.terminate().is_some_and(|s| s.success()),
        "{}",
        second.log_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_share_the_work_without_duplicates() {
    let env =
        Env::start("maxDeliver: 5\n    backoff: [100ms]\n    ackWait: 5s\n    batchSize: 20").await;
    publish_plain(&env, "s", 3000).await;
    let db = env.db().await;
    let (mut a, port_a) = spawn(&env, &["--concurrency", "1"]);
    let (mut b, port_b) = spawn(&env, &["--concurrency", "1"]);
    wait_until("every event", WAIT, || async {
        count(&db, "SELECT count(*) FROM hookline.events").await == 3000
    })
    .await;
    wait_until("nothing unfinished", WAIT, || async {
        env.unfinished().await == 0
    })
    .await;
    let processed_a = metric(port_a, "hookline_consumer_events_processed_total").await;
    let processed_b = metric(port_b, "hookline_consumer_events_processed_total").await;
    assert!(
        processed_a > 0.0 && processed_b > 0.0,
        "a {processed_a}, b {processed_b}"
    );
    assert_eq!(processed_a + processed_b, 3000.0);
    assert_eq!(
        count(&db, "SELECT count(DISTINCT event_id) FROM hookline.events").await,
        3000
    );
    assert!(
        a.terminate().is_some_and(|s| s.success()),
        "{}",
        a.log_tail(20)
    );
    assert!(
        b.terminate().is_some_and(|s| s.success()),
        "{}",
        b.log_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_work_in_hand_and_exits_zero() {
    let env =
        Env::start("maxDeliver: 5\n    backoff: [100ms]\n    ackWait: 30s\n    batchSize: 100")
            .await;
    publish_plain(&env, "t", 2000).await;
    let db = env.db().await;
    let (mut first, port) = spawn(&env, &[]);
    wait_until("ready", WAIT, || async {
        reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    wait_until("some rows", WAIT, || async {
        count(&db, "SELECT count(*) FROM hookline.events").await > 0
    })
    .await;
    first.signal(Signal::Term).expect("SIGTERM");
    let status = first.wait_timeout(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        first.log_tail(20)
    );
    assert!(first.log().contains("stopped"));
    // What it committed it acknowledged: a successor sees no duplicate.
    let (mut second, port) = spawn(&env, &[]);
    wait_until("every event", WAIT, || async {
        count(&db, "SELECT count(*) FROM hookline.events").await == 2000
    })
    .await;
    assert_eq!(
        metric(port, "hookline_consumer_duplicates_total").await,
        0.0
    );
    assert!(second.terminate().is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_on_stdout_and_stderr_stays_empty() {
    let env = Env::start(common::FAST).await;
    let port = free_port();
    let child = Command::new(BIN)
        .arg("--endpoint")
        .arg(&env.manifest)
        .args(["--nats-url", &env.nats.url()])
        .args(["--database-url", &env.pg.url()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn consumer");
    wait_until("ready", WAIT, || async {
        reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    hookline_e2e::send_signal(child.id(), Signal::Term).expect("SIGTERM");
    let output = tokio::task::block_in_place(|| child.wait_with_output()).expect("exits");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let messages: Vec<String> = stdout
        .lines()
        .map(|line| {
            let parsed: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|_| panic!("JSON log line: {line}"));
            parsed["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    for expected in ["starting", "consuming", "stopped"] {
        assert!(messages.iter().any(|m| m == expected), "{messages:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_subcommand_republishes_dead_letters_once() {
    let env =
        Env::start("maxDeliver: 3\n    backoff: [100ms]\n    ackWait: 2s\n    batchSize: 10").await;
    let db = env.db().await;
    let (mut consumer, _) = spawn(&env, &["--provision"]);
    wait_until("schema", WAIT, || async {
        count(&db, "SELECT count(*) FROM hookline.dead_letters").await == 0
    })
    .await;
    // Dead letters as an earlier failure (say, a bug since fixed) left them:
    // dl-1 as the consumer writes them, dl-2 as a person might, by hand.
    let event = TestEvent::invoice("dl-1", "invoice.paid", "in_dl", 10, "paid");
    sqlx::query(
        "INSERT INTO hookline.dead_letters (endpoint, event_id, event_type, subject, stream_sequence, \
             headers, payload, error, deliveries, failed_at) \
         VALUES ('test/shop', 'dl-1', 'invoice.paid', $1, 7, $2, $3, 'boom', 3, '2026-01-01T00:00:00Z')",
    )
    .bind(env.endpoint.stream.subject_for("invoice.paid"))
    .bind(serde_json::json!({
        "Nats-Msg-Id": "dl-1",
        "Hookline-Event-Id": "dl-1",
        "Hookline-Event-Type": "invoice.paid",
        "Hookline-Event-Timestamp": event.timestamp,
        "Hookline-Object-Id": "in_dl",
        "Hookline-Received-At": "2026-01-01T00:00:00Z",
    }))
    .bind(event.body)
    .execute(&db)
    .await
    .expect("dead letter dl-1");
    sqlx::query(
        "INSERT INTO hookline.dead_letters (endpoint, event_id, event_type, payload, failed_at) \
         VALUES ('test/shop', 'dl-2', 'invoice.paid', convert_to('{\"id\":\"dl-2\"}', 'UTF8'), '2026-02-01T00:00:00Z')",
    )
    .execute(&db)
    .await
    .expect("dead letter dl-2");
    let manifest = env.manifest.to_str().expect("utf-8");
    let replay = |filter: &[&str]| {
        let mut args = vec!["replay", "--endpoint", manifest];
        args.extend_from_slice(filter);
        let nats = env.nats.url();
        let pg = env.pg.url();
        run_to_end(
            &args,
            &[("HOOKLINE_NATS_URL", &nats), ("HOOKLINE_DATABASE_URL", &pg)],
        )
    };
    // By time range: only dl-2.
    let (code, stdout, stderr) = replay(&["--since", "2026-01-15T00:00:00Z"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("replayed 1 dead letter"), "{stdout}");
    wait_until("dl-2 stored", WAIT, || async {
        count(
            &db,
            "SELECT count(*) FROM hookline.events WHERE event_id = 'dl-2'",
        )
        .await
            == 1
    })
    .await;
    // All the rest, then again: nothing left.
    let (code, stdout, _) = replay(&["--all"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("replayed 1 dead letter"), "{stdout}");
    let (code, stdout, _) = replay(&["--event-id", "dl-1"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("replayed 0 dead letter"), "{stdout}");
    wait_until("dl-1 stored", WAIT, || async {
        count(&db, "SELECT count(*) FROM hookline.events").await == 2
    })
    .await;
    wait_until("nothing unfinished", WAIT, || async {
        env.unfinished().await == 0
    })
    .await;
    assert_eq!(count(&db, "SELECT count(*) FROM hookline.events").await, 2);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM hookline.dead_letters WHERE replayed_at IS NULL"
        )
        .await,
        0
    );
    assert!(consumer.terminate().is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_event_and_tail_read_what_the_consumer_stored() {
    let env = Env::start(common::FAST).await;
    let db = env.db().await;
    let (mut consumer, _) = spawn(&env, &["--provision"]);
    wait_until("schema", WAIT, || async {
        count(&db, "SELECT count(*) FROM hookline.dead_letters").await == 0
    })
    .await;
    sqlx::query(
        "INSERT INTO hookline.dead_letters (endpoint, event_id, event_type, error, deliveries, failed_at) \
         VALUES ('test/shop', 'dl-1', 'invoice.paid', 'boom', 3, '2026-01-01T00:00:00Z'), \
                ('other/shop', 'dl-x', 'invoice.paid', 'not ours', 3, '2026-01-01T00:00:00Z')",
    )
    .execute(&db)
    .await
    .expect("dead letters");
    let manifest = env.manifest.to_str().expect("utf-8");
    let pg = env.pg.url();
    let vars = [("HOOKLINE_DATABASE_URL", pg.as_str())];

    // Only the endpoint's own, without a NATS URL.
    let (code, stdout, stderr) = run_to_end(&["dead-letters", "--endpoint", manifest], &vars);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("ID   EVENT ID   TYPE"), "{stdout}");
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[1].contains("dl-1") && lines[1].ends_with("boom"),
        "{stdout}"
    );
    let (code, stdout, _) = run_to_end(
        &["dead-letters", "--endpoint", manifest, "-o", "json"],
        &vars,
    );
    assert_eq!(code, 0);
    let row: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(row["eventId"], "dl-1");
    assert_eq!(row["deliveries"], 3);

    // `event`: absent (exit 1), then waited for while it is published.
    let (code, _, stderr) = run_to_end(&["event", "ev-1", "--endpoint", manifest], &vars);
    assert_eq!(code, 1);
    assert!(stderr.contains("event ev-1 is not stored"), "{stderr}");
    let mut tail = {
        let mut command = Command::new(BIN);
        command
            .args(["tail", "--endpoint", manifest, "-o", "json"])
            .env("HOOKLINE_DATABASE_URL", &pg);
        ChildProcess::spawn(&mut command).expect("tail starts")
    };
    let waiting = {
        let manifest = manifest.to_owned();
        let pg = pg.clone();
        tokio::task::spawn_blocking(move || {
            run_to_end(
                &[
                    "event",
                    "ev-1",
                    "--wait",
                    "30s",
                    "--endpoint",
                    &manifest,
                    "-o",
                    "json",
                ],
                &[("HOOKLINE_DATABASE_URL", &pg)],
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.publish(&TestEvent::invoice(
        "ev-1",
        "invoice.paid",
        "in_1",
        10,
        "paid",
    ))
    .await;
    let (code, stdout, stderr) = waiting.await.expect("joined");
    assert_eq!(code, 0, "{stderr}");
    let row: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(row["eventId"], "ev-1");
    assert_eq!(row["objectId"], "in_1");
    env.publish(&TestEvent::invoice(
        "ev-2",
        "invoice.paid",
        "in_1",
        20,
        "paid",
    ))
    .await;
    wait_until("tail printed both", WAIT, || {
        let log = tail.log_tail(10);
        async move { log.contains(r#""eventId":"ev-1""#) && log.contains(r#""eventId":"ev-2""#) }
    })
    .await;
    assert!(
        tail.terminate().is_some_and(|s| s.success()),
        "tail stops on SIGTERM"
    );
    assert!(consumer.terminate().is_some_and(|s| s.success()));
}

//! The whole pipeline outside a cluster, as a user runs it: the real
//! `hookline-receiver` and `hookline-consumer` binaries started from the shipped
//! Stripe example with `--provision`, a real nats-server and Postgres.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hookline_e2e::soak::providers::{self, EventData, Provider};
use hookline_e2e::{Pipeline, Postgres};

const SECRET: &str = "whsec_e2e_pipeline_secret";

fn manifest() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/stripe.yaml"
    ))
}

/// `Stripe-Signature` for `body` at `timestamp`, as the soak signs it.
fn stripe_signature(timestamp: u64, body: &str) -> String {
    let event = EventData {
        id: "",
        object: None,
        time: 0,
        poison: false,
        padding: 0,
    };
    let now = i64::try_from(timestamp).expect("a time in range");
    providers::sign(Provider::Stripe, SECRET, &event, body, now)
        .headers
        .into_iter()
        .find_map(|(name, value)| (name == "Stripe-Signature").then_some(value))
        .expect("Stripe signs in Stripe-Signature")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Polls `sql` until it returns `expected`, for up to 30 s; what it returned
/// last. Blocks: call it inside `block_in_place`.
fn wait_for_rows(postgres: &Postgres, sql: &str, expected: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = postgres.psql(sql).unwrap_or_default();
        if found == expected || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_events_become_one_row_each_and_the_newest_state_wins() {
    let mut pipeline = tokio::task::block_in_place(|| Pipeline::start(manifest(), SECRET, "info"))
        .expect("the pipeline starts");
    let client = reqwest::Client::new();

    let url = format!("{}/stripe", pipeline.receiver.url());
    let created = now() - 60;
    let events = [
        // The newer event arrives first; the older one must not overwrite it.
        format!(
            r#"{{"id":"evt_2","type":"invoice.paid","created":{},"data":{{"object":{{"id":"in_1","status":"paid"}}}}}}"#,
            created + 30
        ),
        format!(
            r#"{{"id":"evt_1","type":"invoice.created","created":{created},"data":{{"object":{{"id":"in_1","status":"draft"}}}}}}"#
        ),
        format!(
            r#"{{"id":"evt_2","type":"invoice.paid","created":{},"data":{{"object":{{"id":"in_1","status":"paid"}}}}}}"#,
            created + 30
        ),
    ];
    for body in &events {
        let response = client
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Stripe-Signature", stripe_signature(now(), body))
            .body(body.clone())
            .send()
            .await
            .expect("request sent");
        assert_eq!(
            response.status(),
            200,
            "{}",
            response.text().await.unwrap_or_default()
        );
    }
    let forged = client
        .post(&url)
        .header("Content-Type", "application/json")
        .header(
            "Stripe-Signature",
            format!("t={},v1={}", now(), "0".repeat(64)),
        )
        .body(r#"{"id":"evt_forged","type":"invoice.paid"}"#)
        .send()
        .await
        .expect("request sent");
    assert_eq!(forged.status(), 401);

    let rows = tokio::task::block_in_place(|| {
        wait_for_rows(
            &pipeline.postgres,
            "select string_agg(event_id || ':' || event_type, ',' order by event_id) from hookline.events",
            "evt_1:invoice.created,evt_2:invoice.paid",
        )
    });
    assert_eq!(
        rows,
        "evt_1:invoice.created,evt_2:invoice.paid",
        "consumer log:\n{}",
        pipeline.consumer.log_tail(40)
    );
    let state = tokio::task::block_in_place(|| {
        wait_for_rows(
            &pipeline.postgres,
            "select endpoint || ' ' || object_id || ' ' || last_event_id || ' ' || (state->>'status') from hookline.objects",
            "payments/stripe in_1 evt_2 paid",
        )
    });
    assert_eq!(state, "payments/stripe in_1 evt_2 paid");

    for service in [&mut pipeline.receiver, &mut pipeline.consumer] {
        let status =
            tokio::task::block_in_place(|| service.terminate()).expect("exits after SIGTERM");
        assert!(
            status.success(),
            "exited with {status}:\n{}",
            service.log_tail(20)
        );
    }
}

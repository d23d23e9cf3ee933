//! The endpoint's rate limit (`spec.request.rateLimit`): 429 with
//! `Retry-After` past it, nothing stored, and only events that would be
//! stored spend it.

use crate::common;

use common::*;

const SECRET: &str = "It's a Secret to Everybody";

fn body(n: u32) -> Vec<u8> {
    format!(r#"{{"action":"opened","issue":{{"id":{n}}}}}"#).into_bytes()
}

/// A GitHub endpoint that takes `burst` events at once, then one every 10 s.
fn limited(burst: u32) -> String {
    manifest(
        "github",
        &format!(
            "  request:\n    rateLimit:\n      requestsPerSecond: 0.1\n      burst: {burst}\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_burst_is_429_with_retry_after_and_nothing_is_stored() {
    let receiver = Receiver::start(&limited(2), SECRET).await;
    for n in 0..2 {
        let body = body(n);
        let headers = github(SECRET, &body, &format!("d-{n}"), "issues");
        assert_eq!(receiver.post(&headers, &body).await.status(), 200);
    }
    let body = body(2);
    let response = receiver
        .post(&github(SECRET, &body, "d-2", "issues"), &body)
        .await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    let answer: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(answer["error"], "rate_limited");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|message| message.contains("retry in")),
        "{answer}"
    );
    assert_eq!(receiver.messages().await.len(), 2);
    assert!(receiver.metrics().await.contains(
        r#"hookline_receiver_requests_total{provider="github",outcome="rate_limited"} 1"#
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_requests_spend_none_of_the_limit() {
    let receiver = Receiver::start(&limited(1), SECRET).await;
    let body = body(1);
    for n in 0..5 {
        let forged = github("not the secret", &body, &format!("f-{n}"), "issues");
        assert_eq!(receiver.post(&forged, &body).await.status(), 401);
    }
    let signed = github(SECRET, &body, "d-1", "issues");
    assert_eq!(receiver.post(&signed, &body).await.status(), 200);
}

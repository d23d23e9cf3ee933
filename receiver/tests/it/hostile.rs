//! Hostile input against the running receiver: forged, garbled and repeated
//! signature headers for every provider, hostile timestamps, bodies over the
//! limit or lying about their length, malformed chunking, invalid UTF-8, JSON
//! nested 100,000 levels deep or with repeated keys, ids with control
//! characters, too many headers. Each gets the contract's status, nothing of
//! it reaches the stream, the receiver keeps serving, and (on the real binary)
//! its memory stays bounded over 10,000 such requests.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::*;
use futures::StreamExt;
use hookline_e2e::proc_stats::status_number;
use hookline_e2e::{ChildProcess, NatsServer, free_port};
use reqwest::header::HeaderValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_hookline-receiver");

/// One provider's endpoint, secret and way of signing.
struct Provider {
    name: &'static str,
    manifest: String,
    secret: &'static str,
    signature: &'static str,
    /// Signs a time (in `t=` or a header of its own); GitHub and Shopify do not.
    timed: bool,
    body: &'static [u8],
}

fn providers() -> Vec<Provider> {
    vec![
        Provider {
            name: "stripe",
            manifest: manifest("stripe", ""),
            secret: "whsec_hostile",
            signature: "Stripe-Signature",
            timed: true,
            body: br#"{"id":"evt_1","type":"invoice.paid","created":1700000000,"data":{"object":{"id":"in_1"}}}"#,
        },
        Provider {
            name: "github",
            manifest: manifest("github", ""),
            secret: "gh-secret",
            signature: "X-Hub-Signature-256",
            timed: false,
            body: br#"{"action":"opened"}"#,
        },
        Provider {
            name: "shopify",
            manifest: manifest("shopify", ""),
            secret: "shp-secret",
            signature: "X-Shopify-Hmac-Sha256",
            timed: false,
            body: br#"{"id":1}"#,
        },
        Provider {
            name: "slack",
            manifest: manifest("slack", ""),
            secret: "slack-secret",
            signature: "X-Slack-Signature",
            timed: true,
            body: br#"{"type":"event_callback","event_id":"Ev1","event":{"type":"message"}}"#,
        },
        Provider {
            name: "standardWebhooks",
            manifest: manifest("standardWebhooks", ""),
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            signature: "webhook-signature",
            timed: true,
            body: br#"{"type":"order.created","data":{"id":"o1"}}"#,
        },
        Provider {
            name: "generic",
            manifest: example("generic.yaml"),
            secret: "partner-secret",
            signature: "X-Signature",
            timed: true,
            body: br#"{"id":"p-1","type":"t"}"#,
        },
    ]
}

impl Provider {
    /// A correctly signed request for `body` with `ts` as the signing time,
    /// written as text so times no integer holds can be signed too.
    fn sign_at(&self, body: &[u8], ts: &str) -> Headers {
        let secret = self.secret.as_bytes();
        let h = |name: &str, value: String| (name.to_owned(), value);
        let json = h("Content-Type", "application/json".into());
        match self.name {
            "stripe" => {
                let mac = hmac_sha256(secret, &[ts.as_bytes(), b".", body]);
                vec![
                    h(self.signature, format!("t={ts},v1={}", hex::encode(mac))),
                    json,
                ]
            }
            "github" => github(self.secret, body, "hostile-1", "issues"),
            "shopify" => shopify(self.secret, body, "hostile-1", "orders/create"),
            "slack" => {
                let mac = hmac_sha256(secret, &[b"v0:", ts.as_bytes(), b":", body]);
                vec![
                    h(self.signature, format!("v0={}", hex::encode(mac))),
                    h("X-Slack-Request-Timestamp", ts.to_owned()),
                    json,
                ]
            }
            "standardWebhooks" => {
                let key = STANDARD
                    .decode(self.secret.trim_start_matches("whsec_"))
                    .expect("whsec_ secret");
                let mac = hmac_sha256(&key, &[b"msg_1.", ts.as_bytes(), b".", body]);
                vec![
                    h("webhook-id", "msg_1".into()),
                    h("webhook-timestamp", ts.to_owned()),
                    h(self.signature, format!("v1,{}", STANDARD.encode(mac))),
                    json,
                ]
            }
            "generic" => {
                let mac = hmac_sha256(secret, &[ts.as_bytes(), b".", body]);
                vec![
                    h(self.signature, format!("sha256={}", hex::encode(mac))),
                    h("X-Timestamp", ts.to_owned()),
                    h("X-Forwarded-For", "203.0.113.5".into()),
                    json,
                ]
            }
            other => panic!("no signer for {other}"),
        }
    }

    fn sign(&self, body: &[u8]) -> Headers {
        self.sign_at(body, &now().to_string())
    }
}

/// Request headers as header values, which unlike text may hold any byte.
type Values = Vec<(String, HeaderValue)>;

/// `headers` as header values.
fn values(headers: &Headers) -> Values {
    headers
        .iter()
        .map(|(name, value)| (name.clone(), text(value)))
        .collect()
}

/// `headers` with every value of `name` replaced by `replacements` (none: removed).
fn with(headers: &Headers, name: &str, replacements: &[HeaderValue]) -> Values {
    let mut out = values(headers);
    out.retain(|(key, _)| !key.eq_ignore_ascii_case(name));
    out.extend(
        replacements
            .iter()
            .map(|value| (name.to_owned(), value.clone())),
    );
    out
}

fn text(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("header value")
}

async fn send(receiver: &Receiver, headers: &Values, body: &[u8]) -> u16 {
    let mut request = receiver
        .http
        .post(format!("{}{}", receiver.base, receiver.path))
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(name, value.clone());
    }
    request.send().await.expect("answered").status().as_u16()
}

/// The receiver still answers, and the stream holds exactly `stored` messages.
async fn still_serving_and_holding(receiver: &Receiver, stored: u64) {
    let health = receiver
        .http
        .get(format!("{}/healthz", receiver.base))
        .send()
        .await
        .expect("still serving");
    assert_eq!(health.status(), 200);
    assert_eq!(receiver.stream_messages().await, stored);
}

// ---- signatures ----

#[tokio::test(flavor = "multi_thread")]
async fn missing_wrong_or_repeated_signature_headers_are_401_for_every_provider() {
    for provider in providers() {
        let receiver = Receiver::start(&provider.manifest, provider.secret).await;
        let body = provider.body;
        let valid = provider.sign(body);
        let signature = valid
            .iter()
            .find(|(name, _)| name == provider.signature)
            .map(|(_, value)| text(value))
            .expect("signature header");
        let forged = Provider {
            secret: "whsec_bm90IHRoZSBzZWNyZXQgYXQgYWxs",
            ..provider.clone_shape()
        }
        .sign(body);
        let forged_signature = forged
            .iter()
            .find(|(name, _)| name == provider.signature)
            .map(|(_, value)| text(value))
            .expect("signature header");
        let cases = [
            ("missing", with(&valid, provider.signature, &[])),
            (
                "wrong secret",
                with(
                    &valid,
                    provider.signature,
                    std::slice::from_ref(&forged_signature),
                ),
            ),
            (
                "repeated, valid first",
                with(
                    &valid,
                    provider.signature,
                    &[signature.clone(), forged_signature.clone()],
                ),
            ),
            (
                "repeated, valid twice",
                with(
                    &valid,
                    provider.signature,
                    &[signature.clone(), signature.clone()],
                ),
            ),
        ];
        for (case, headers) in cases {
            assert_eq!(
                send(&receiver, &headers, body).await,
                401,
                "{}: {case}",
                provider.name
            );
        }
        // The control: the same request signed once, correctly.
        assert_eq!(
            send(
                &receiver,
                &with(&valid, provider.signature, &[signature]),
                body
            )
            .await,
            200,
            "{}: valid",
            provider.name
        );
        still_serving_and_holding(&receiver, 1).await;
    }
}

impl Provider {
    /// The same provider, to build a variant with struct update syntax.
    fn clone_shape(&self) -> Provider {
        Provider {
            name: self.name,
            manifest: self.manifest.clone(),
            secret: self.secret,
            signature: self.signature,
            timed: self.timed,
            body: self.body,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signature_made_for_another_body_is_401_for_every_provider() {
    for provider in providers() {
        let receiver = Receiver::start(&provider.manifest, provider.secret).await;
        let other = br#"{"id":"evt_2","type":"refund","amount":1000000}"#;
        let headers = values(&provider.sign(other));
        assert_eq!(
            send(&receiver, &headers, provider.body).await,
            401,
            "{}",
            provider.name
        );
        still_serving_and_holding(&receiver, 0).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_in_every_providers_signature_header_is_refused() {
    let now = now();
    let many_v1 = format!("t={now},{}", "v1=00,".repeat(3000));
    let many_sw = "v1,AAAA ".repeat(2000);
    let garbage: Vec<(&str, HeaderValue, u16)> = vec![
        (
            "non-ASCII bytes",
            HeaderValue::from_bytes(b"t=1,v1=\xff\xfe\xc3\xa9").expect("obs-text"),
            401,
        ),
        ("empty", text(""), 401),
        ("a tab and spaces", text(" \t v1=\t "), 401),
        ("thousands of v1= entries", text(&many_v1), 401),
        ("thousands of v1, entries", text(&many_sw), 401),
        ("30 KB of garbage", text(&"z".repeat(30 * 1024)), 401),
        ("a 64 KB header", text(&"z".repeat(64 * 1024)), 431),
    ];
    for provider in providers() {
        let receiver = Receiver::start(&provider.manifest, provider.secret).await;
        let valid = provider.sign(provider.body);
        for (case, value, status) in &garbage {
            let headers = with(&valid, provider.signature, std::slice::from_ref(value));
            assert_eq!(
                send(&receiver, &headers, provider.body).await,
                *status,
                "{}: {case}",
                provider.name
            );
        }
        still_serving_and_holding(&receiver, 0).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_times_that_overflow_are_negative_or_far_from_now_are_401() {
    let ten_years = (now() + 10 * 365 * 86_400).to_string();
    let times = [
        "99999999999999999999999",
        "-1",
        "0",
        "-9223372036854775808",
        "9223372036854775807",
        ten_years.as_str(),
        "1e10",
        "1700000000.5",
        "",
    ];
    for provider in providers() {
        if !provider.timed {
            continue;
        }
        let receiver = Receiver::start(&provider.manifest, provider.secret).await;
        for ts in times {
            // Validly signed over the hostile time: only the time rule refuses it.
            let headers = values(&provider.sign_at(provider.body, ts));
            assert_eq!(
                send(&receiver, &headers, provider.body).await,
                401,
                "{}: t={ts:?}",
                provider.name
            );
        }
        still_serving_and_holding(&receiver, 0).await;
    }
}

// ---- bodies ----

const SECRET: &str = "gh-secret";

fn github_signed(body: &[u8], delivery: &str) -> Headers {
    github(SECRET, body, delivery, "issues")
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_the_limit_are_413_with_or_without_content_length() {
    let receiver = Receiver::start(&manifest("github", ""), SECRET).await;
    let body = vec![b' '; 4 * 1024 * 1024];
    let headers = values(&github_signed(&body, "big"));
    assert_eq!(
        send(&receiver, &headers, &body).await,
        413,
        "Content-Length"
    );

    let frames = body.chunks(64 * 1024).map(|chunk| {
        Ok::<_, std::io::Error>(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(
            chunk,
        )))
    });
    let stream = http_body_util::StreamBody::new(futures::stream::iter(frames.collect::<Vec<_>>()));
    let mut request = receiver
        .http
        .post(format!("{}{}", receiver.base, receiver.path))
        .body(reqwest::Body::wrap(stream));
    for (name, value) in &headers {
        request = request.header(name, value.clone());
    }
    let response = request.send().await.expect("answered");
    assert_eq!(response.status(), 413, "chunked");
    still_serving_and_holding(&receiver, 0).await;
}

/// Connects and writes the request's head and `body` (which may be shorter
/// than the head's Content-Length), leaving the connection open.
async fn write_head_and_body(
    receiver: &Receiver,
    headers: &[(String, String)],
    body: &[u8],
) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(receiver.address())
        .await
        .expect("connect");
    stream
        .write_all(&raw_head(&receiver.path, headers))
        .await
        .expect("head");
    stream.write_all(body).await.expect("body");
    stream
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_shorter_than_its_content_length_is_400_at_end_of_file() {
    let receiver = Receiver::start(&manifest("github", ""), SECRET).await;
    let body = br#"{"action":"opened"}"#;
    let mut headers = github_signed(body, "short");
    headers.push(("Content-Length".into(), "1000".into()));
    let mut stream = write_head_and_body(&receiver, &headers, body).await;
    stream.shutdown().await.expect("end of file");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("answer");
    assert_eq!(status_of(&answer), 400, "{answer}");
    still_serving_and_holding(&receiver, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_stops_short_of_its_content_length_is_408_at_the_request_timeout() {
    let request_timeout = Duration::from_secs(2);
    let receiver = Receiver::start_with(
        tokio::task::block_in_place(|| NatsServer::start().expect("nats")),
        &manifest("github", ""),
        SECRET,
        Options {
            request_timeout,
            ..Options::default()
        },
    )
    .await;
    let body = br#"{"action":"opened"}"#;
    let mut headers = github_signed(body, "stalled");
    headers.push(("Content-Length".into(), "1000".into()));
    let mut stream = write_head_and_body(&receiver, &headers, body).await;
    let started = Instant::now();
    let mut answer = vec![0u8; 4096];
    let read = stream.read(&mut answer).await.expect("answer");
    let answer = String::from_utf8_lossy(&answer[..read]).into_owned();
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(started.elapsed() < request_timeout + Duration::from_secs(2));
    still_serving_and_holding(&receiver, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_past_the_content_length_are_a_second_request_never_part_of_the_event() {
    let receiver = Receiver::start(&manifest("github", ""), SECRET).await;
    let body = br#"{"action":"opened"}"#;
    let mut headers = github_signed(body, "exact");
    headers.push(("Content-Length".into(), body.len().to_string()));
    let mut request = raw_head(&receiver.path, &headers);
    request.extend_from_slice(body);
    request.extend_from_slice(b"{\"smuggled\":true}\r\n\r\n");
    let answer = write_all_then_read(&receiver.address(), &request).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    let messages = receiver.messages().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].payload.as_ref(), body);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_chunked_body_is_stored_like_any_other() {
    let receiver = Receiver::start(&manifest("github", ""), SECRET).await;
    let body = br#"{"action":"opened","issue":{"id":42}}"#;
    let mut headers = github_signed(body, "chunked");
    headers.push(("Transfer-Encoding".into(), "chunked".into()));
    headers.push(("Connection".into(), "close".into()));
    let mut request = raw_head(&receiver.path, &headers);
    for chunk in body.chunks(7) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = write_all_then_read(&receiver.address(), &request).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let messages = receiver.messages().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].payload.as_ref(), body);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_chunked_coding_is_400() {
    let receiver = Receiver::start(&manifest("github", ""), SECRET).await;
    let body = br#"{"action":"opened"}"#;
    let mut headers = github_signed(body, "bad-chunks");
    headers.push(("Transfer-Encoding".into(), "chunked".into()));
    let mut request = raw_head(&receiver.path, &headers);
    request.extend_from_slice(b"zz\r\n{\"action\":\"opened\"}\r\n0\r\n\r\n");
    let answer = write_all_then_read(&receiver.address(), &request).await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    still_serving_and_holding(&receiver, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_in_a_signed_json_body_is_400() {
    let receiver = Receiver::start(&manifest("github", ""), SECRET).await;
    let body = b"{\"action\":\"\xff\xfe\xc0\"}";
    let headers = values(&github_signed(body, "utf8"));
    assert_eq!(send(&receiver, &headers, body).await, 400);
    still_serving_and_holding(&receiver, 0).await;
}

/// `{"action":"opened","x":[[[…]]]}`, `levels` deep.
fn nested(levels: usize) -> Vec<u8> {
    format!(
        r#"{{"action":"opened","x":{}{}}}"#,
        "[".repeat(levels),
        "]".repeat(levels)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn json_nested_100k_levels_deep_is_400_without_a_stack_overflow() {
    let schema = "  request:\n    schema:\n      type: object\n";
    for (reader, extra) in [("sparse reader", ""), ("full reader (schema)", schema)] {
        let receiver = Receiver::start(&manifest("github", extra), SECRET).await;
        let body = nested(100_000);
        let headers = values(&github_signed(&body, "deep"));
        assert_eq!(send(&receiver, &headers, &body).await, 400, "{reader}");
        // Nesting JSON parsers commonly take (serde_json's limit is 128) passes.
        let body = nested(100);
        let headers = values(&github_signed(&body, "shallow"));
        assert_eq!(send(&receiver, &headers, &body).await, 200, "{reader}");
        still_serving_and_holding(&receiver, 1).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_with_a_repeated_key_is_stored_with_its_last_value_like_postgres_jsonb() {
    let provider = &providers()[0];
    let receiver = Receiver::start(&provider.manifest, provider.secret).await;
    let body = br#"{"id":"evt_first","type":"invoice.paid","id":"evt_last","created":1700000000,"data":{"object":{"id":"in_1"}}}"#;
    let response = receiver.post(&provider.sign(body), body).await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(answer["eventId"], "evt_last");
    let messages = receiver.messages().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].payload.as_ref(),
        body,
        "the body is kept as sent"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_with_control_characters_are_400() {
    let stripe = &providers()[0];
    let receiver = Receiver::start(&stripe.manifest, stripe.secret).await;
    let body = br#"{"id":"evt_\u0001x","type":"invoice.paid","created":1700000000,"data":{"object":{"id":"in_1"}}}"#;
    assert_eq!(receiver.post(&stripe.sign(body), body).await.status(), 400);
    let body = br#"{"id":"evt_1","type":"invoice\npaid","created":1700000000,"data":{"object":{"id":"in_1"}}}"#;
    assert_eq!(receiver.post(&stripe.sign(body), body).await.status(), 400);
    still_serving_and_holding(&receiver, 0).await;

    let receiver = Receiver::start(&manifest("github", ""), SECRET).await;
    let body = br#"{"action":"opened"}"#;
    let headers = with(
        &github_signed(body, "x"),
        "X-GitHub-Delivery",
        &[text("delivery\twith-a-tab")],
    );
    assert_eq!(send(&receiver, &headers, body).await, 400);
    still_serving_and_holding(&receiver, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn more_than_100_header_fields_are_431() {
    let receiver = Receiver::start(&manifest("github", ""), SECRET).await;
    let body = br#"{"action":"opened"}"#;
    let mut headers = github_signed(body, "crowded");
    for n in 0..150 {
        headers.push((format!("X-N-{n}"), "1".into()));
    }
    let headers = values(&headers);
    assert_eq!(send(&receiver, &headers, body).await, 431);
    still_serving_and_holding(&receiver, 0).await;
}

// ---- the real binary, 10,000 hostile requests ----

/// How much the receiver's resident memory may grow over 10,000 hostile
/// requests. Measured here: 10 to 15 MiB, the same after 30,000 requests, so
/// it is the allocator settling (mimalloc keeps freed pages for reuse, per
/// thread), not a leak. The bound is four times that, yet a leak of 7 KiB a
/// request (any of these bodies, 20 to 300 KiB, or a request's header map)
/// crosses it. The measured growth is printed (`--nocapture`).
const RSS_GROWTH_BOUND_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_hostile_requests_leave_the_binary_up_with_memory_bounded() {
    let nats = tokio::task::block_in_place(|| NatsServer::start().expect("nats-server"));
    let dir = tempfile::tempdir().expect("dir");
    let endpoint = dir.path().join("endpoint.yaml");
    std::fs::write(
        &endpoint,
        manifest("github", "  request:\n    maxBodyBytes: 262144\n"),
    )
    .expect("write");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("write");
    let port = free_port();
    let mut command = Command::new(BIN);
    command
        .args(["--provision", "--listen", &format!("127.0.0.1:{port}")])
        .env("HOOKLINE_ENDPOINT", &endpoint)
        .env("HOOKLINE_SECRET_FILE", &secret)
        .env("HOOKLINE_NATS_URL", nats.url())
        .env("RUST_LOG", "warn");
    let mut child = ChildProcess::spawn(&mut command).expect("spawn receiver");
    let base = format!("http://127.0.0.1:{port}");
    wait_until_binary_ready(&mut child, &base, Duration::from_secs(30)).await;
    let http = reqwest::Client::new();

    // The kinds of hostile request, each with the status it must get.
    let url = format!("{base}/default/test");
    let small = br#"{"action":"opened"}"#.to_vec();
    let deep = nested(100_000);
    let oversized = vec![b' '; 300 * 1024];
    let bad_utf8 = b"{\"action\":\"\xff\"}".to_vec();
    let control_id = br#"{"action":"opened"}"#.to_vec();
    let signed = |body: &[u8]| values(&github_signed(body, "hostile"));
    let kinds: Vec<(&str, Values, Vec<u8>, u16)> = vec![
        (
            "wrong signature",
            values(&github("wrong", &small, "w", "issues")),
            small.clone(),
            401,
        ),
        (
            "no signature",
            with(&github_signed(&small, "n"), "X-Hub-Signature-256", &[]),
            small.clone(),
            401,
        ),
        (
            "repeated signature",
            with(
                &github_signed(&small, "r"),
                "X-Hub-Signature-256",
                &[text("sha256=00"), text("sha256=01")],
            ),
            small.clone(),
            401,
        ),
        (
            "garbage signature",
            with(
                &github_signed(&small, "g"),
                "X-Hub-Signature-256",
                &[text(&"v1=00,".repeat(3000))],
            ),
            small.clone(),
            401,
        ),
        (
            "headers over the bound",
            with(
                &github_signed(&small, "h"),
                "X-Padding",
                &[text(&"p".repeat(40 * 1024))],
            ),
            small.clone(),
            431,
        ),
        (
            "body over the limit",
            signed(&oversized),
            oversized.clone(),
            413,
        ),
        ("100k levels of JSON", signed(&deep), deep.clone(), 400),
        ("invalid UTF-8", signed(&bad_utf8), bad_utf8.clone(), 400),
        (
            "control character in the id",
            with(
                &github_signed(&control_id, "c"),
                "X-GitHub-Delivery",
                &[text("a\tb")],
            ),
            control_id.clone(),
            400,
        ),
        (
            "another body's signature",
            signed(&small),
            deep.clone(),
            401,
        ),
    ];

    let pid = child.id();
    // Warm up (first-use allocations, connection pool), then measure.
    for (case, headers, body, _) in &kinds {
        let mut request = http.post(&url).body(body.clone());
        for (name, value) in headers {
            request = request.header(name, value.clone());
        }
        request
            .send()
            .await
            .unwrap_or_else(|err| panic!("warm-up {case}: {err}"));
    }
    let before = status_number(pid, "VmRSS").expect("VmRSS of the receiver");
    let started = Instant::now();
    let statuses: Vec<(usize, u16)> = futures::stream::iter(0..10_000usize)
        .map(|n| {
            let (_, headers, body, _) = &kinds[n % kinds.len()];
            let mut request = http.post(&url).body(body.clone());
            for (name, value) in headers {
                request = request.header(name, value.clone());
            }
            async move {
                let status = request.send().await.map(|r| r.status().as_u16());
                (n, status.unwrap_or(0))
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let after = status_number(pid, "VmRSS").expect("VmRSS of the receiver");
    println!(
        "10,000 hostile requests in {:?}: VmRSS {before} KiB before, {after} KiB after",
        started.elapsed()
    );

    for (n, status) in statuses {
        let (case, _, _, expected) = &kinds[n % kinds.len()];
        assert_eq!(status, *expected, "request {n}: {case}");
    }
    assert!(child.is_running(), "the receiver died:\n{}", child.log());
    assert!(
        after.saturating_sub(before) <= RSS_GROWTH_BOUND_KIB,
        "VmRSS grew from {before} KiB to {after} KiB"
    );
    let health = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);

    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream("HOOKLINE_default_test")
        .await
        .expect("stream");
    let info = stream.get_info().await.expect("info");
    assert_eq!(info.state.messages, 0, "nothing hostile was stored");
}

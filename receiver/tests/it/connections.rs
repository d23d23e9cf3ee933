//! Connections as a hostile or careless client makes them: answers given
//! before the body is read reach a client that writes its whole request
//! first; half-sent requests, trickled bodies and idle connections are cut at
//! their bounds; the connection cap makes newcomers wait, not fail. Raw TCP
//! clients throughout: an HTTP library would not behave this badly.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use hookline_receiver::connections::{HEADER_PARSE_LIMIT, LINGER_MAX_TIME};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "It's a Secret to Everybody";

/// Four times the default `maxBodyBytes` (1 MiB).
const FOUR_MIB: usize = 4 * 1024 * 1024;

fn content_length(length: usize) -> (String, String) {
    ("Content-Length".to_owned(), length.to_string())
}

/// A request whose head declares `body` by Content-Length.
fn request(path: &str, mut headers: Headers, body: &[u8]) -> Vec<u8> {
    headers.push(content_length(body.len()));
    let mut request = raw_head(path, &headers);
    request.extend_from_slice(body);
    request
}

/// `body` in chunked transfer coding, 64 KiB a chunk.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 1000 + 16);
    for chunk in body.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn an_early_413_reaches_clients_that_write_the_whole_body_before_reading() {
    let receiver = Receiver::start(&manifest("github", ""), SECRET).await;
    let body = vec![b'x'; FOUR_MIB];
    let request = request(
        &receiver.path,
        github(SECRET, &body, "big", "issues"),
        &body,
    );
    let address = receiver.address();
    let answers: Vec<String> = futures::stream::iter(0..32)
        .map(|_| write_all_then_read(&address, &request))
        .buffer_unordered(8)
        .collect()
        .await;
    for answer in &answers {
        assert_eq!(status_of(answer), 413, "{answer}");
        let error: serde_json::Value = serde_json::from_str(body_of(answer)).expect("JSON body");
        assert_eq!(error["error"], "too_large");
    }
    assert_eq!(receiver.stream_messages().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_given_before_the_body_is_read_reaches_such_a_client() {
    let receiver = Receiver::start(&example("generic.yaml"), "partner-secret").await;
    let body = vec![b'x'; FOUR_MIB];
    let path = receiver.path.clone();
    let from = |ip: &str| vec![("X-Forwarded-For".to_owned(), ip.to_owned())];
    let allowed = from("203.0.113.5");
    let mut chunked_request = raw_head(
        &path,
        &[
            allowed[0].clone(),
            ("Transfer-Encoding".to_owned(), "chunked".to_owned()),
        ],
    );
    chunked_request.extend_from_slice(&chunked(&body));
    let large_header = |size: usize| {
        let mut headers = allowed.clone();
        headers.push(("X-Padding".to_owned(), "p".repeat(size)));
        request(&path, headers, &body)
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "source not allowed",
            request(&path, from("198.51.100.7"), &body),
            403,
        ),
        (
            "unknown path",
            request("/elsewhere", allowed.clone(), &body),
            404,
        ),
        (
            "wrong method on the path",
            {
                let mut get = request(&path, allowed.clone(), &body);
                get.splice(..4, b"GET".iter().copied());
                get
            },
            405,
        ),
        (
            "over maxBodyBytes by Content-Length",
            request(&path, allowed.clone(), &body),
            413,
        ),
        ("over maxBodyBytes, chunked", chunked_request, 413),
        ("headers over the bound", large_header(40 * 1024), 431),
        (
            "headers over the parser's limit",
            large_header(HEADER_PARSE_LIMIT + 1024),
            431,
        ),
    ];
    for (case, request, expected) in cases {
        let answer = write_all_then_read(&receiver.address(), &request).await;
        assert_eq!(status_of(&answer), expected, "{case}: {answer}");
    }
    assert_eq!(receiver.stream_messages().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_stops_sending_after_its_answer_is_cut_off_at_the_lingering_bound() {
    let receiver = Receiver::start(&manifest("github", ""), SECRET).await;
    let mut stream = tokio::net::TcpStream::connect(receiver.address())
        .await
        .expect("connect");
    let head = raw_head(&receiver.path, &[content_length(1 << 40)]);
    stream.write_all(&head).await.expect("head");
    let started = Instant::now();
    let chunk = vec![b'x'; 64 * 1024];
    let cut_off = tokio::time::timeout(LINGER_MAX_TIME + Duration::from_secs(5), async {
        loop {
            if stream.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        cut_off.is_ok(),
        "still accepting bytes after {:?}",
        started.elapsed()
    );
    let health = receiver
        .http
        .get(format!("{}/healthz", receiver.base))
        .send()
        .await
        .expect("still serving");
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_that_stall_in_the_request_line_are_closed_at_the_header_bound() {
    let receiver = Receiver::start(&manifest("github", ""), SECRET).await;
    let bound = Options::default().header_read_timeout;
    let address = receiver.address();
    let stalled: Vec<_> = (0..400)
        .map(|_| {
            let address = address.clone();
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(&address)
                    .await
                    .expect("connect");
                stream.write_all(b"POST /defa").await.expect("half a line");
                let opened = Instant::now();
                let mut rest = Vec::new();
                // End of file or a reset: either way the server let go.
                let _ = stream.read_to_end(&mut rest).await;
                opened.elapsed()
            })
        })
        .collect();

    // Meanwhile the endpoint serves as usual.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = br#"{"action":"opened"}"#;
    let response = receiver
        .post(&github(SECRET, body, "served", "issues"), body)
        .await;
    assert_eq!(response.status(), 200);

    for task in stalled {
        let held = task.await.expect("client task");
        assert!(
            held <= bound + Duration::from_secs(3),
            "a stalled connection was held {held:?}, bound {bound:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickled_body_is_cut_by_the_request_timeout() {
    let request_timeout = Duration::from_secs(2);
    let receiver = Receiver::start_with(
        tokio::task::block_in_place(|| hookline_e2e::NatsServer::start().expect("nats")),
        &manifest("github", ""),
        SECRET,
        Options {
            request_timeout,
            ..Options::default()
        },
    )
    .await;
    let body = br#"{"action":"opened","pad":"................................"}"#;
    let head = request(&receiver.path, github(SECRET, body, "slow", "issues"), b"");
    let head = &head[..head.len()]; // Content-Length: 0 is replaced below
    let head = String::from_utf8_lossy(head).replace(
        "Content-Length: 0",
        &format!("Content-Length: {}", body.len()),
    );
    let stream = tokio::net::TcpStream::connect(receiver.address())
        .await
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await.expect("head");
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for byte in body.iter() {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut answer = vec![0u8; 4096];
    let read = reader.read(&mut answer).await.expect("an answer");
    let answer = String::from_utf8_lossy(&answer[..read]).into_owned();
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(
        started.elapsed() < request_timeout + Duration::from_secs(2),
        "answered after {:?}",
        started.elapsed()
    );
    trickle.abort();
    assert_eq!(receiver.stream_messages().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn past_max_connections_a_new_connection_waits_until_one_closes() {
    let receiver = Receiver::start_with(
        tokio::task::block_in_place(|| hookline_e2e::NatsServer::start().expect("nats")),
        &manifest("github", ""),
        SECRET,
        Options {
            max_connections: 2,
            ..Options::default()
        },
    )
    .await;
    let address = receiver.address();
    let idle_one = tokio::net::TcpStream::connect(&address).await.expect("1");
    let _idle_two = tokio::net::TcpStream::connect(&address).await.expect("2");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let body = br#"{"action":"opened"}"#;
    let waiting = tokio::spawn({
        let mut headers = github(SECRET, body, "third", "issues");
        headers.push(("Connection".to_owned(), "close".to_owned()));
        let request = request(&receiver.path, headers, body);
        let address = address.clone();
        async move { write_all_then_read(&address, &request).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "answered past the connection cap");

    drop(idle_one);
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("answered once a connection closed")
        .expect("client task");
    assert_eq!(status_of(&answer), 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_early_answer_says_connection_close_so_a_pooled_client_is_not_caught_out() {
    let receiver = Receiver::start(&manifest("github", ""), SECRET).await;
    let big = vec![b'x'; FOUR_MIB];
    let small = br#"{"action":"opened"}"#;
    for n in 0..10 {
        // One client, one pool: the refused request's connection must not be reused.
        let refused = receiver
            .post(&github(SECRET, &big, "big", "issues"), &big)
            .await;
        assert_eq!(refused.status(), 413);
        assert_eq!(
            refused.headers().get("connection").map(|v| v.to_str().ok()),
            Some(Some("close"))
        );
        let delivery = format!("next-{n}");
        let next = receiver
            .post(&github(SECRET, small, &delivery, "issues"), small)
            .await;
        assert_eq!(next.status(), 200);
    }
}

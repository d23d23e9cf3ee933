//! The test servers themselves: they really start, crash, restart and clean up.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use hookline_e2e::{ChildProcess, NatsServer, Postgres, free_port};

fn tcp_connects(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// Just enough of the NATS client protocol to call the JetStream API.
struct RawNats {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_sid: u32,
}

impl RawNats {
    fn connect(port: u16) -> RawNats {
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect to NATS");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let writer = stream.try_clone().expect("clone stream");
        let mut conn = RawNats {
            reader: BufReader::new(stream),
            writer,
            next_sid: 1,
        };
        let info = conn.line();
        assert!(info.starts_with("INFO "), "expected INFO, got {info:?}");
        conn.send("CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n");
        loop {
            match conn.line().as_str() {
                "PONG" => return conn,
                line if line.starts_with("-ERR") => panic!("NATS refused CONNECT: {line}"),
                _ => {}
            }
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read from NATS");
        line.trim_end().to_owned()
    }

    fn send(&mut self, text: &str) {
        self.writer
            .write_all(text.as_bytes())
            .expect("write to NATS");
    }

    /// Publishes `payload` to `subject` and returns the first reply.
    fn request(&mut self, subject: &str, payload: &str) -> String {
        let sid = self.next_sid;
        self.next_sid += 1;
        let inbox = format!("_INBOX.test.{sid}");
        self.send(&format!(
            "SUB {inbox} {sid}\r\nPUB {subject} {inbox} {}\r\n{payload}\r\n",
            payload.len()
        ));
        loop {
            let line = self.line();
            if line == "PING" {
                self.send("PONG\r\n");
            } else if let Some(rest) = line.strip_prefix("MSG ") {
                let len: usize = rest
                    .split_whitespace()
                    .last()
                    .and_then(|n| n.parse().ok())
                    .expect("MSG length");
                let mut body = vec![0; len + 2];
                self.reader.read_exact(&mut body).expect("MSG payload");
                body.truncate(len);
                self.send(&format!("UNSUB {sid}\r\n"));
                return String::from_utf8(body).expect("UTF-8 reply");
            } else if line.starts_with("-ERR") {
                panic!("NATS error for {subject}: {line}");
            }
        }
    }
}

#[test]
fn nats_survives_a_crash_and_restarts_in_place() {
    let mut nats = NatsServer::start().expect("start nats-server");
    let port = nats.port();
    let store = nats.store_dir().to_path_buf();
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
    assert!(nats.monitor_url().starts_with("http://127.0.0.1:"));
    assert!(nats.is_running());
    assert!(tcp_connects(port));

    // Store one message durably in a file-backed stream.
    let mut conn = RawNats::connect(port);
    let created = conn.request(
        "$JS.API.STREAM.CREATE.ORDERS",
        r#"{"name":"ORDERS","subjects":["orders.>"],"storage":"file"}"#,
    );
    assert!(!created.contains("\"error\""), "stream create: {created}");
    let ack = conn.request("orders.1", "hello");
    assert!(ack.contains("\"seq\":1"), "publish ack: {ack}");
    drop(conn);

    nats.kill();
    assert!(!nats.is_running());
    assert!(!tcp_connects(port), "connect must fail after kill");

    nats.restart().expect("restart nats-server");
    assert!(nats.is_running());
    assert_eq!(nats.port(), port);
    assert_eq!(nats.store_dir(), store);
    assert!(tcp_connects(port));
    let info = RawNats::connect(port).request("$JS.API.STREAM.INFO.ORDERS", "");
    assert!(
        info.contains("\"messages\":1,"),
        "the acknowledged message must survive the crash: {info}"
    );

    // A graceful stop and a restart keep it too.
    nats.stop();
    assert!(!tcp_connects(port));
    nats.restart().expect("second restart");
    let info = RawNats::connect(port).request("$JS.API.STREAM.INFO.ORDERS", "");
    assert!(info.contains("\"messages\":1,"), "{info}");
    assert!(nats.log().contains("Server is ready"));
}

#[test]
fn nats_drop_kills_the_server_and_removes_the_store() {
    let nats = NatsServer::start().expect("start nats-server");
    let port = nats.port();
    let store = nats.store_dir().to_path_buf();
    assert!(store.is_dir());
    drop(nats);
    assert!(!tcp_connects(port));
    assert!(!store.exists());
}

#[test]
fn postgres_keeps_committed_rows_across_stop_and_restart() {
    let mut pg = Postgres::start().expect("start postgres");
    let port = pg.port();
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    );
    assert_eq!(pg.psql("select 1").expect("select 1"), "1");
    assert_eq!(pg.psql("show fsync").expect("show fsync"), "on");
    pg.psql("create table t (id int primary key, name text); insert into t values (1, 'one')")
        .expect("create and insert");

    pg.stop();
    assert!(!pg.is_running());
    assert!(!tcp_connects(port));
    assert!(pg.psql("select 1").is_err());

    pg.restart().expect("restart postgres");
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("select id, name from t").expect("select"), "1|one");
}

#[test]
fn postgres_recovers_committed_rows_after_a_crash() {
    let mut pg = Postgres::start().expect("start postgres");
    pg.psql("create table t (id int); insert into t values (42)")
        .expect("create and insert");
    pg.kill();
    assert!(!pg.is_running());
    pg.restart().expect("restart after crash");
    assert_eq!(pg.psql("select id from t").expect("select"), "42");
    assert!(
        pg.log().contains("automatic recovery in progress"),
        "kill must look like a crash to Postgres:\n{}",
        pg.log()
    );
}

#[test]
fn postgres_takes_extra_settings_and_cleans_up_on_drop() {
    let pg = Postgres::start_with(&[("work_mem", "7MB"), ("max_connections", "30")])
        .expect("start postgres");
    assert_eq!(pg.psql("show work_mem").expect("show"), "7MB");
    assert_eq!(pg.psql("show max_connections").expect("show"), "30");
    let err = pg
        .psql("select * from missing_table")
        .expect_err("must fail");
    assert!(err.to_string().contains("missing_table"), "{err}");

    let port = pg.port();
    let data_dir = pg.data_dir().to_path_buf();
    assert!(data_dir.join("PG_VERSION").is_file());
    drop(pg);
    assert!(!tcp_connects(port));
    assert!(!data_dir.exists());
}

#[test]
fn child_process_captures_output_and_terminates() {
    let mut child = ChildProcess::spawn(
        Command::new("sh").args(["-c", "echo to-stdout; echo to-stderr >&2; exec sleep 30"]),
    )
    .expect("spawn sh");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !child.log().contains("to-stderr") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = child.log();
    assert!(
        log.contains("to-stdout") && log.contains("to-stderr"),
        "{log}"
    );
    assert!(child.is_running());

    let status = child.terminate().expect("exit status");
    assert!(!status.success());
    assert!(!child.is_running());
}

#[test]
fn child_process_escalates_to_sigkill_and_drop_reaps() {
    // `trap '' TERM` is inherited across exec, so `sleep` ignores SIGTERM.
    let mut child =
        ChildProcess::spawn(Command::new("sh").args(["-c", "trap '' TERM; exec sleep 30"]))
            .expect("spawn sh");
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    child.terminate_within(Duration::from_millis(300));
    assert!(!child.is_running());
    assert!(started.elapsed() < Duration::from_secs(5));

    let child = ChildProcess::spawn(Command::new("sleep").arg("30")).expect("spawn");
    let pid = child.id();
    let log_path = child.log_path().to_path_buf();
    drop(child);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!log_path.exists());
}

#[test]
fn free_ports_are_distinct() {
    let ports: std::collections::HashSet<u16> = (0..20).map(|_| free_port()).collect();
    assert_eq!(ports.len(), 20);
}

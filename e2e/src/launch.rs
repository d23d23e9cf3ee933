//! The start-up every process the test support launches shares: spawn with its
//! output in a log, wait until it is ready (or has exited, or a bound has
//! passed), and start again on fresh ports when another process took a port
//! between choosing it and binding it.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::{
    error::{Result, TestServerError},
    process::{ChildProcess, LOG_TAIL_LINES, file_tail},
};

/// How often readiness is checked while waiting.
const POLL: Duration = Duration::from_millis(50);
/// Attempts with fresh ports when another process took ours in the meantime.
const START_ATTEMPTS: usize = 3;

/// A process started on free loopback ports.
pub(crate) trait Launch {
    /// Takes fresh free ports for the next attempt.
    fn take_ports(&mut self) -> Result<()>;
    /// Spawns the process and waits until it is ready (see [`spawn_until_ready`]);
    /// on an error, nothing of this attempt is left running.
    fn spawn_and_wait(&mut self) -> Result<()>;
    /// Whether the last attempt failed because a port was already in use.
    fn port_was_taken(&self) -> bool;
}

/// Starts `server` on fresh ports, again (a few times) when a port it chose
/// was taken before it could bind it.
pub(crate) fn start_on_free_ports(server: &mut impl Launch) -> Result<()> {
    let mut attempt = 1;
    loop {
        server.take_ports()?;
        match server.spawn_and_wait() {
            Ok(()) => return Ok(()),
            Err(_) if attempt < START_ATTEMPTS && server.port_was_taken() => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Spawns `command` into `slot`, its output appended to `log_path`, and polls
/// `ready` until it says yes. An exit first is [`TestServerError::Exited`]
/// (the slot is emptied); no readiness within `timeout` is
/// [`TestServerError::NotReady`], with the process still in the slot for the
/// caller to stop its own way. `what` names the process in errors.
pub(crate) fn spawn_until_ready(
    slot: &mut Option<ChildProcess>,
    command: &mut Command,
    what: &str,
    log_path: &Path,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let process = slot.insert(ChildProcess::spawn_with_log(command, log_path)?);
    let started = Instant::now();
    loop {
        if let Some(status) = process.exit_status() {
            *slot = None;
            return Err(TestServerError::Exited {
                what: what.to_owned(),
                status: status.to_string(),
                log_tail: file_tail(log_path, LOG_TAIL_LINES),
            });
        }
        if ready() {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(TestServerError::NotReady {
                what: what.to_owned(),
                waited: timeout,
                log_tail: file_tail(log_path, LOG_TAIL_LINES),
            });
        }
        thread::sleep(POLL);
    }
}

/// Whether `GET path` on a loopback `port` answers 200.
pub(crate) fn http_ok(port: u16, path: &str) -> bool {
    http_get(port, path).is_some_and(|(status, _)| status == 200)
}

/// `GET path` on a loopback `port`: the status and the body, or `None` when
/// nothing answered within a second (HTTP/1.0 on a plain socket: the
/// start-up loop blocks, and needs no client library).
pub(crate) fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    let timeout = Some(Duration::from_secs(1));
    stream.set_read_timeout(timeout).ok()?;
    stream.set_write_timeout(timeout).ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    if stream.read_to_end(&mut response).is_err() && response.is_empty() {
        return None;
    }
    let response = String::from_utf8_lossy(&response);
    let status = response
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or_else(String::new, |(_, body)| body.to_owned());
    Some((status, body))
}

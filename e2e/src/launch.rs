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

/// Whether `GET path` on a loopback `port` answers 200 (HTTP/1.0, no client
/// library: this crate has no async runtime).
pub(crate) fn http_ok(port: u16, path: &str) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let timeout = Some(Duration::from_secs(1));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return false;
    }
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = Vec::new();
    if stream.read_to_end(&mut response).is_err() && response.is_empty() {
        return false;
    }
    let response = String::from_utf8_lossy(&response);
    response
        .lines()
        .next()
        .is_some_and(|status| status.split_whitespace().nth(1) == Some("200"))
}

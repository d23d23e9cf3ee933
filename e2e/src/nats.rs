//! [`NatsServer`]: a real `nats-server` with JetStream on free loopback ports.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use tempfile::TempDir;

use crate::{
    binaries::find_binary,
    error::{Result, io_err},
    launch::{Launch, http_ok, spawn_until_ready, start_on_free_ports},
    ports::try_free_port,
    process::{ChildProcess, LOG_TAIL_LINES, Signal, file_tail},
};

/// Start-up is a few hundred milliseconds; this bound only catches a hung server.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// JetStream flushes its store on a graceful stop; give it time before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A `nats-server -js` process with its own store dir, killed on drop.
///
/// [`NatsServer::restart`] keeps the ports and the store dir, so JetStream
/// streams and messages survive [`NatsServer::kill`] (a crash) or
/// [`NatsServer::stop`].
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    monitor_port: u16,
    store_dir: PathBuf,
    log_path: PathBuf,
    /// A config file (`-c`), for settings with no command-line flag.
    config: Option<PathBuf>,
    process: Option<ChildProcess>,
    /// Removed on drop, after the process is gone (see `Drop`).
    dir: TempDir,
}

impl NatsServer {
    /// Starts a server and waits until JetStream is ready.
    pub fn start() -> Result<NatsServer> {
        NatsServer::start_with(None)
    }

    /// Starts a server whose JetStream file store holds `bytes` (its
    /// `max_file_store`), as a production server's volume does: JetStream
    /// then refuses a stream whose reservation no longer fits.
    pub fn start_with_max_file_store(bytes: u64) -> Result<NatsServer> {
        NatsServer::start_with(Some(format!(
            "jetstream {{\n  max_file_store: {bytes}\n}}\n"
        )))
    }

    /// Starts a server that cuts a client off as a slow consumer once `bytes`
    /// of its output wait unread (its `max_pending`; 64 MiB by default).
    pub fn start_with_max_pending(bytes: u64) -> Result<NatsServer> {
        NatsServer::start_with(Some(format!("max_pending: {bytes}\n")))
    }

    fn start_with(config: Option<String>) -> Result<NatsServer> {
        let binary = find_binary(
            "nats-server",
            &["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"],
            "PATH or /usr/sbin",
            "apt-get install -y nats-server",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("hookline-nats-")
            .tempdir()
            .map_err(io_err("creating a temp dir for nats-server"))?;
        let store_dir = dir.path().join("store");
        fs::create_dir(&store_dir).map_err(io_err(format!("creating {}", store_dir.display())))?;
        let config = match config {
            Some(text) => {
                let path = dir.path().join("nats-server.conf");
                fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
                Some(path)
            }
            None => None,
        };
        let mut server = NatsServer {
            binary,
            port: 0,
            monitor_port: 0,
            log_path: dir.path().join("nats-server.log"),
            store_dir,
            config,
            process: None,
            dir,
        };
        start_on_free_ports(&mut server)?;
        Ok(server)
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The monitoring endpoint, `http://127.0.0.1:MPORT` (`/varz`, `/jsz`, `/healthz`).
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The monitoring port.
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// The JetStream store dir (`-sd`), kept across restarts.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// Everything the server logged, across restarts.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The server's process id while it runs (for its CPU time in benchmarks).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::id)
    }

    /// Whether the server process is alive.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ChildProcess::is_running)
    }

    /// Graceful stop (SIGTERM, then SIGKILL after a grace period); no-op when stopped.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop_with(Signal::Term, STOP_GRACE);
        }
    }

    /// SIGKILL, simulating a crash; no-op when stopped.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the server again in place: same ports, same store dir. Stops it
    /// gracefully first if it is still running.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn_and_wait()
    }
}

impl Launch for NatsServer {
    fn take_ports(&mut self) -> Result<()> {
        self.port = try_free_port().map_err(io_err("finding a free port"))?;
        self.monitor_port = try_free_port().map_err(io_err("finding a free port"))?;
        Ok(())
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let mut command = Command::new(&self.binary);
        command
            .current_dir(self.dir.path())
            .arg("-js")
            .arg("-sd")
            .arg(&self.store_dir)
            .args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-m")
            .arg(self.monitor_port.to_string());
        if let Some(config) = &self.config {
            // Flags override the file, so only what no flag sets goes there.
            command.arg("-c").arg(config);
        }
        let monitor_port = self.monitor_port;
        let started = spawn_until_ready(
            &mut self.process,
            &mut command,
            &format!("nats-server on port {}", self.port),
            &self.log_path,
            READY_TIMEOUT,
            // Answers 200 once JetStream is up.
            || http_ok(monitor_port, "/healthz?js-enabled-only=true"),
        );
        if started.is_err() {
            self.kill();
        }
        started
    }

    fn port_was_taken(&self) -> bool {
        file_tail(&self.log_path, LOG_TAIL_LINES).contains("address already in use")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Kill before the TempDir field drops, so the store is removed last.
        self.kill();
    }
}

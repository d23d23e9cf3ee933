//! [`Pipeline`]: the whole pipeline on loopback, as a user runs it outside a
//! cluster: nats-server, Postgres, and the real `hookline-receiver` and
//! `hookline-consumer` binaries started from one manifest with `--provision`.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::Duration,
};

use tempfile::TempDir;

use crate::{
    binaries::try_workspace_bin,
    error::{Result, io_err},
    launch::{Launch, http_ok, spawn_until_ready, start_on_free_ports},
    nats::NatsServer,
    ports::try_free_port,
    postgres::Postgres,
    process::{ChildProcess, LOG_TAIL_LINES, file_tail},
};

/// Covers provisioning and migrations on a slow machine; both binaries are
/// usually ready within a second.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The servers and both binaries of one endpoint, stopped on drop.
///
/// The receiver is configured by flags and the consumer by `HOOKLINE_*`
/// environment variables, so a test of the pipeline covers both ways.
#[derive(Debug)]
pub struct Pipeline {
    pub receiver: Service,
    pub consumer: Service,
    pub nats: NatsServer,
    pub postgres: Postgres,
    /// Holds the secret file.
    _dir: TempDir,
}

impl Pipeline {
    /// Starts nats-server and Postgres, then both binaries for the manifest at
    /// `manifest` with `secret` as the signing secret and `log_filter` as their
    /// `RUST_LOG`; returns once both answer `/readyz` with 200.
    pub fn start(manifest: &Path, secret: &str, log_filter: &str) -> Result<Pipeline> {
        let nats = NatsServer::start()?;
        let postgres = Postgres::start()?;
        let dir = tempfile::Builder::new()
            .prefix("hookline-pipeline-")
            .tempdir()
            .map_err(io_err("creating a temp dir for the pipeline"))?;
        let secret_file = dir.path().join("secret");
        fs::write(&secret_file, format!("{secret}\n"))
            .map_err(io_err(format!("writing {}", secret_file.display())))?;

        let receiver_args = [
            "--endpoint".into(),
            manifest.into(),
            "--secret-file".into(),
            secret_file.into(),
            "--nats-url".into(),
            nats.url().into(),
            "--provision".into(),
        ];
        let receiver = Service::start(
            "hookline-receiver",
            Listen::Flag,
            &receiver_args,
            &[("RUST_LOG", log_filter.into())],
            dir.path(),
        )?;
        let consumer_env = [
            ("RUST_LOG", log_filter.into()),
            ("HOOKLINE_ENDPOINT", manifest.into()),
            ("HOOKLINE_NATS_URL", nats.url().into()),
            ("HOOKLINE_DATABASE_URL", postgres.url().into()),
        ];
        let consumer = Service::start(
            "hookline-consumer",
            Listen::Environment,
            &["--provision".into()],
            &consumer_env,
            dir.path(),
        )?;
        Ok(Pipeline {
            receiver,
            consumer,
            nats,
            postgres,
            _dir: dir,
        })
    }
}

/// How a binary is told its `--listen` address.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Listen {
    Flag,
    Environment,
}

/// One of the workspace's binaries, serving HTTP on a loopback port; killed
/// on drop.
#[derive(Debug)]
pub struct Service {
    name: &'static str,
    binary: PathBuf,
    listen: Listen,
    args: Vec<OsString>,
    envs: Vec<(&'static str, OsString)>,
    port: u16,
    log_path: PathBuf,
    process: Option<ChildProcess>,
}

impl Service {
    fn start(
        name: &'static str,
        listen: Listen,
        args: &[OsString],
        envs: &[(&'static str, OsString)],
        dir: &Path,
    ) -> Result<Service> {
        Self::start_logging_to(name, listen, args, envs, dir.join(format!("{name}.log")))
    }

    /// Starts the workspace binary `name` on a free port with its output
    /// appended to `log_path` (several instances of one binary each need
    /// their own), and waits until it answers `/readyz` with 200.
    pub(crate) fn start_logging_to(
        name: &'static str,
        listen: Listen,
        args: &[OsString],
        envs: &[(&'static str, OsString)],
        log_path: PathBuf,
    ) -> Result<Service> {
        let mut service = Service {
            name,
            binary: try_workspace_bin(name)?,
            listen,
            args: args.to_vec(),
            envs: envs.to_vec(),
            port: 0,
            log_path,
            process: None,
        };
        start_on_free_ports(&mut service)?;
        Ok(service)
    }

    /// `http://127.0.0.1:PORT`, where it serves.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::id)
    }

    /// The last `lines` lines of what it wrote to stdout and stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path, lines)
    }

    /// SIGTERM, then SIGKILL after a grace period; its exit status.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.process.as_mut().and_then(ChildProcess::terminate)
    }

    /// SIGTERM, then SIGKILL after `grace`; its exit status.
    pub fn terminate_within(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.process
            .as_mut()
            .and_then(|process| process.terminate_within(grace))
    }

    /// SIGKILL (a crash); its exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.process.as_mut().and_then(ChildProcess::kill)
    }

    /// Whether the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ChildProcess::is_running)
    }

    /// Whether it answers `GET /readyz` with 200 now.
    pub fn is_ready(&self) -> bool {
        http_ok(self.port, "/readyz")
    }

    /// Starts it again in place: same port, flags and log (appended); kills
    /// the old process first if it still runs. Returns once `/readyz` answers 200.
    pub fn restart(&mut self) -> Result<()> {
        if let Some(mut old) = self.process.take() {
            old.kill();
        }
        self.spawn_and_wait()
    }

    /// One more instance of it, with the same flags and environment, on a
    /// port of its own and logging to `log_path`; returns once it is ready.
    pub fn another(&self, log_path: PathBuf) -> Result<Service> {
        Self::start_logging_to(self.name, self.listen, &self.args, &self.envs, log_path)
    }

    /// The loopback port it serves on (kept by [`Service::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The file its stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

impl Launch for Service {
    fn take_ports(&mut self) -> Result<()> {
        self.port = try_free_port().map_err(io_err("finding a free port"))?;
        Ok(())
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let address = format!("127.0.0.1:{}", self.port);
        let mut command = Command::new(&self.binary);
        command.args(&self.args);
        for (key, value) in &self.envs {
            command.env(key, value);
        }
        match self.listen {
            Listen::Flag => command.args(["--listen", &address]),
            Listen::Environment => command.env("HOOKLINE_LISTEN", &address),
        };
        let port = self.port;
        let started = spawn_until_ready(
            &mut self.process,
            &mut command,
            &format!("{} on port {port}", self.name),
            &self.log_path,
            READY_TIMEOUT,
            || http_ok(port, "/readyz"),
        );
        if started.is_err() {
            self.process = None;
        }
        started
    }

    fn port_was_taken(&self) -> bool {
        file_tail(&self.log_path, LOG_TAIL_LINES).contains("Address already in use")
    }
}

//! [`ChildProcess`]: a child that is killed when the guard drops, with its
//! output captured in a log file, plus the signal and log helpers the servers use.

use std::{
    fs::{self, OpenOptions},
    io,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::error::{Result, TestServerError, io_err};

/// How long [`ChildProcess::terminate`] waits after SIGTERM before SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// How many log lines error messages quote.
pub(crate) const LOG_TAIL_LINES: usize = 30;

/// A Unix signal, sent with the `kill` command so the crate needs no libc binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: ask for a graceful shutdown.
    Term,
    /// SIGINT: Ctrl-C (Postgres: fast shutdown).
    Int,
    /// SIGQUIT (Postgres: immediate shutdown, crash recovery on the next start).
    Quit,
    /// SIGHUP (reload configuration).
    Hup,
    /// SIGKILL: cannot be caught; simulates a crash.
    Kill,
}

impl Signal {
    /// The name `kill -s` takes.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Quit => "QUIT",
            Signal::Hup => "HUP",
            Signal::Kill => "KILL",
        }
    }
}

/// Sends `signal` to `pid` with the `kill` command (falling back to the shell
/// builtin when `/usr/bin/kill` is missing).
pub fn send_signal(pid: u32, signal: Signal) -> Result<()> {
    let pid_arg = pid.to_string();
    let run = |cmd: &mut Command| {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    };
    let status = match run(Command::new("kill").args(["-s", signal.name(), &pid_arg])) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            run(Command::new("sh").args(["-c", "kill -s \"$0\" \"$1\"", signal.name(), &pid_arg]))
        }
        other => other,
    }
    .map_err(io_err(format!("running `kill -s {} {pid}`", signal.name())))?;
    if status.success() {
        Ok(())
    } else {
        Err(TestServerError::CommandFailed {
            command: format!("kill -s {} {pid}", signal.name()),
            status: status.to_string(),
            output: String::from("(no such process?)"),
        })
    }
}

/// The last `lines` lines of the file at `path` (lossy UTF-8); a note when unreadable.
pub(crate) fn file_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A spawned process that is killed (SIGKILL) and reaped when dropped, so it
/// never outlives the test; its stdout and stderr go to one log file.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    log_path: PathBuf,
    /// Holds the log's temp dir alive when [`ChildProcess::spawn`] made one.
    _log_dir: Option<TempDir>,
}

impl ChildProcess {
    /// Spawns `command` with stdin closed and stdout+stderr written to a log
    /// file in a fresh temp dir (removed when the guard drops).
    pub fn spawn(command: &mut Command) -> Result<ChildProcess> {
        let dir = tempfile::Builder::new()
            .prefix("hookline-log-")
            .tempdir()
            .map_err(io_err("creating a temp dir for a process log"))?;
        let log_path = dir.path().join("output.log");
        let mut process = Self::spawn_with_log(command, log_path)?;
        process._log_dir = Some(dir);
        Ok(process)
    }

    /// Like [`ChildProcess::spawn`] but appends to `log_path`, so a server that
    /// is restarted keeps one log across its runs.
    pub fn spawn_with_log(
        command: &mut Command,
        log_path: impl Into<PathBuf>,
    ) -> Result<ChildProcess> {
        let log_path = log_path.into();
        let name = program_name(command);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(format!("opening log file {}", log_path.display())))?;
        let log_err = log.try_clone().map_err(io_err(format!(
            "duplicating log file {}",
            log_path.display()
        )))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(io_err(format!("spawning {name}")))?;
        Ok(ChildProcess {
            name,
            child,
            status: None,
            log_path,
            _log_dir: None,
        })
    }

    /// The process id (still valid after exit until the guard drops).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The program's file name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exit status once the process has exited (reaping it), else `None`.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            // An error here means the child was already reaped elsewhere: treat
            // it as still unknown rather than inventing a status.
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
            }
        }
        self.status
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the process unless it has already exited (and so may
    /// have had its pid reused).
    pub fn signal(&mut self, signal: Signal) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        send_signal(self.id(), signal)
    }

    /// SIGTERM, wait up to [`DEFAULT_GRACE`], then SIGKILL; returns the exit status.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.terminate_within(DEFAULT_GRACE)
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns the exit status
    /// (`None` only if the process could not be reaped at all).
    pub fn terminate_within(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.stop_with(Signal::Term, grace)
    }

    /// Sends `signal`, waits up to `grace`, then SIGKILLs; returns the exit status.
    pub fn stop_with(&mut self, signal: Signal, grace: Duration) -> Option<ExitStatus> {
        if self.signal(signal).is_ok()
            && let Some(status) = self.wait_timeout(grace)
        {
            return Some(status);
        }
        self.kill()
    }

    /// SIGKILL (simulating a crash) and reap; returns the exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            // Fails only when the process has already exited; `wait` then reaps it.
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.status = Some(status);
            }
        }
        self.status
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path, lines)
    }

    /// Where the output goes.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn program_name(command: &Command) -> String {
    Path::new(command.get_program())
        .file_name()
        .unwrap_or(command.get_program())
        .to_string_lossy()
        .into_owned()
}

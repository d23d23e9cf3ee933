//! [`Postgres`]: a real Postgres cluster made with `initdb` in a temp dir.

use std::{
    env, fs,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use tempfile::TempDir;

use crate::{
    binaries::{find_in, missing, path_dirs, postgres_bin_dir},
    error::{Result, TestServerError, io_err},
    launch::{Launch, spawn_until_ready, start_on_free_ports},
    ports::try_free_port,
    proc_stats,
    process::{ChildProcess, LOG_TAIL_LINES, Signal, file_tail, send_signal},
};

/// Covers crash recovery on a slow machine; a normal start takes well under a second.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// A fast shutdown writes a checkpoint; give it time before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// An immediate shutdown only waits for the server's own children.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// What the postmaster logs once it accepts connections (messages are in English:
/// the cluster is made with locale C).
const READY_LINE: &str = "database system is ready to accept connections";

/// A Postgres server on a free loopback port with trust authentication for user
/// `postgres`, stopped on drop (its temp dir, with the data, is then removed).
///
/// [`Postgres::restart`] keeps the port and the data dir, so committed rows
/// survive [`Postgres::stop`] and [`Postgres::kill`].
#[derive(Debug)]
pub struct Postgres {
    /// Prefixes commands that must run as the `postgres` user (empty unless root).
    run_as: Vec<String>,
    postgres: PathBuf,
    pg_isready: Option<PathBuf>,
    psql: Option<PathBuf>,
    port: u16,
    settings: Vec<(String, String)>,
    data_dir: PathBuf,
    log_path: PathBuf,
    process: Option<ChildProcess>,
    /// Removed on drop, after the server is gone (see `Drop`).
    dir: TempDir,
}

impl Postgres {
    /// Starts a server with the default (durable: `fsync=on`) settings.
    pub fn start() -> Result<Postgres> {
        Self::start_with(&[])
    }

    /// Starts a server with extra `-c key=value` settings (they override ours).
    pub fn start_with(settings: &[(&str, &str)]) -> Result<Postgres> {
        let bin_dir = postgres_bin_dir()?;
        let initdb = bin_dir.join("initdb");
        let postgres = find_in("postgres", std::slice::from_ref(&bin_dir)).ok_or_else(|| {
            missing(
                "postgres",
                &bin_dir.display().to_string(),
                "apt-get install -y postgresql",
            )
        })?;
        let pg_isready = find_in("pg_isready", std::slice::from_ref(&bin_dir));
        // The client of the same version first; Debian's /usr/bin/psql is a wrapper.
        let psql = find_in("psql", &[vec![bin_dir.clone()], path_dirs()].concat());

        // initdb and the server refuse to run as root.
        let root = is_root();
        let run_as = if root {
            as_postgres_prefix()?
        } else {
            Vec::new()
        };
        let dir = temp_dir(root)?;
        let data_dir = dir.path().join("data");

        let mut initdb_cmd = command(&run_as, &initdb);
        initdb_cmd
            .current_dir(dir.path())
            .arg("-D")
            .arg(&data_dir)
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C",
                // Only initdb's own flush of the template files; the server keeps fsync on.
                "--no-sync",
            ]);
        run(&mut initdb_cmd, "initdb")?;

        let mut server = Postgres {
            run_as,
            postgres,
            pg_isready,
            psql,
            port: 0,
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            log_path: dir.path().join("postgres.log"),
            data_dir,
            process: None,
            dir,
        };
        start_on_free_ports(&mut server)?;
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory, kept across restarts.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Everything the server logged, across restarts.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Whether the server process is alive.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ChildProcess::is_running)
    }

    /// Fast shutdown (SIGINT: abort sessions, checkpoint, exit); no-op when stopped.
    pub fn stop(&mut self) {
        self.shut_down(Signal::Int, STOP_GRACE);
    }

    /// Immediate shutdown (SIGQUIT, what `pg_ctl stop -m immediate` sends): no
    /// checkpoint, so the next start runs crash recovery from the WAL, exactly
    /// as after a crash. SIGKILL is not used because the postmaster's children
    /// would outlive it and keep the shared memory, blocking a restart.
    pub fn kill(&mut self) {
        self.shut_down(Signal::Quit, KILL_GRACE);
    }

    /// Starts the server again in place: same port, same data. Stops it
    /// (fast shutdown) first if it is still running.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn_and_wait()
    }

    /// Runs `psql -At -c SQL` against the server and returns its stdout without
    /// the trailing newline (rows on lines, columns separated by `|`).
    pub fn psql(&self, sql: &str) -> Result<String> {
        let psql = self.psql.as_ref().ok_or_else(|| {
            missing(
                "psql",
                "PATH or /usr/lib/postgresql/*/bin",
                "apt-get install -y postgresql-client",
            )
        })?;
        let mut cmd = Command::new(psql);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .env_remove("PGHOSTADDR");
        let output = run(&mut cmd, &format!("psql -c {sql:?}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        Ok(stdout.trim_end_matches('\n').to_owned())
    }

    fn shut_down(&mut self, signal: Signal, grace: Duration) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        let target = self.postmaster_pid(&mut process);
        if process.is_running() && send_signal(target, signal).is_ok() {
            process.wait_timeout(grace);
        }
        if process.is_running() && target != process.id() {
            let _ = send_signal(target, Signal::Kill);
        }
        process.kill();
    }

    /// The postmaster's pid. It is our child's pid unless a `runuser` wrapper
    /// forked it, in which case `postmaster.pid` names it (trusted only when
    /// its parent is our child, so a stale file never gets a stranger signalled).
    fn postmaster_pid(&self, process: &mut ChildProcess) -> u32 {
        let child = process.id();
        let from_file = fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok());
        match from_file {
            Some(pid)
                if pid != child
                    && proc_stats::status_number(pid, "PPid") == Some(u64::from(child)) =>
            {
                pid
            }
            _ => child,
        }
    }
}

impl Launch for Postgres {
    fn take_ports(&mut self) -> Result<()> {
        self.port = try_free_port().map_err(io_err("finding a free port"))?;
        Ok(())
    }

    fn spawn_and_wait(&mut self) -> Result<()> {
        let log_start = fs::metadata(&self.log_path).map_or(0, |m| m.len());
        let mut cmd = command(&self.run_as, &self.postgres);
        cmd.current_dir(self.dir.path())
            .arg("-D")
            .arg(&self.data_dir);
        let socket_dir = self.dir.path().display().to_string();
        let defaults = [
            ("port", self.port.to_string()),
            ("listen_addresses", "127.0.0.1".to_owned()),
            ("unix_socket_directories", socket_dir),
            ("logging_collector", "off".to_owned()),
        ];
        let extra = self.settings.iter().map(|(k, v)| (k.as_str(), v.clone()));
        for (key, value) in defaults.iter().map(|(k, v)| (*k, v.clone())).chain(extra) {
            cmd.arg("-c").arg(format!("{key}={value}"));
        }
        let (port, log_path, pg_isready) = (self.port, &self.log_path, self.pg_isready.as_deref());
        let started = spawn_until_ready(
            &mut self.process,
            &mut cmd,
            &format!("postgres on port {port}"),
            log_path,
            READY_TIMEOUT,
            || logged_since(log_path, log_start, READY_LINE) && accepts(port, pg_isready),
        );
        if started.is_err() {
            self.kill();
        }
        started
    }

    fn port_was_taken(&self) -> bool {
        file_tail(&self.log_path, LOG_TAIL_LINES).contains("Address already in use")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Stop before the TempDir field drops, so the data is removed last.
        self.kill();
    }
}

/// Whether the effective uid is 0 (`/proc/self` is owned by it).
fn is_root() -> bool {
    match fs::metadata("/proc/self") {
        Ok(meta) => meta.uid() == 0,
        Err(_) => Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0"),
    }
}

/// The command prefix that runs a program as `postgres`: `setpriv` when present
/// (it execs, so our child *is* the postmaster), else `runuser` (which forks).
fn as_postgres_prefix() -> Result<Vec<String>> {
    let user_exists = Command::new("id")
        .args(["-u", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !user_exists {
        return Err(TestServerError::Environment(
            "running as root, Postgres must run as user `postgres`, which does not exist: \
             install it with `apt-get install -y postgresql` or run the tests as another user"
                .to_owned(),
        ));
    }
    let dirs = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    if let Some(setpriv) = find_in("setpriv", &dirs) {
        return Ok(vec![
            setpriv.display().to_string(),
            "--reuid=postgres".into(),
            "--regid=postgres".into(),
            "--init-groups".into(),
            "--".into(),
        ]);
    }
    if let Some(runuser) = find_in("runuser", &dirs) {
        return Ok(vec![
            runuser.display().to_string(),
            "-u".into(),
            "postgres".into(),
            "--".into(),
        ]);
    }
    Err(missing(
        "setpriv or runuser",
        "/usr/bin or /usr/sbin",
        "apt-get install -y util-linux",
    ))
}

/// `program`, prefixed with `run_as` when that is not empty.
fn command(run_as: &[String], program: &Path) -> Command {
    match run_as.split_first() {
        Some((wrapper, args)) => {
            let mut cmd = Command::new(wrapper);
            cmd.args(args).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// A temp dir for the cluster. As root it is handed to `postgres`, under a base
/// whose every ancestor that user can traverse.
fn temp_dir(root: bool) -> Result<TempDir> {
    let builder = || {
        let mut builder = tempfile::Builder::new();
        builder.prefix("hookline-pg-");
        builder
    };
    if !root {
        return builder()
            .tempdir()
            .map_err(io_err("creating a temp dir for Postgres"));
    }
    let base = [env::temp_dir(), PathBuf::from("/tmp")]
        .into_iter()
        .find(|base| traversable_by_others(base))
        .ok_or_else(|| {
            TestServerError::Environment(format!(
                "neither {} nor /tmp can be entered by user `postgres`; set TMPDIR to such a directory",
                env::temp_dir().display()
            ))
        })?;
    let dir = builder()
        .tempdir_in(&base)
        .map_err(io_err(format!("creating a temp dir in {}", base.display())))?;
    // 0700 like tempfile made it, but owned by postgres.
    let mut chown = Command::new("chown");
    chown.arg("postgres").arg(dir.path());
    run(&mut chown, "chown postgres")?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("chmod 0700 {}", dir.path().display())))?;
    Ok(dir)
}

/// Whether `dir` and each of its ancestors has the "others may search" bit.
fn traversable_by_others(dir: &Path) -> bool {
    dir.is_absolute()
        && dir
            .ancestors()
            .all(|d| fs::metadata(d).is_ok_and(|m| m.is_dir() && m.mode() & 0o001 != 0))
}

/// Runs `cmd` to completion; an error carries its stdout and stderr.
fn run(cmd: &mut Command, what: &str) -> Result<Output> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("running {what}")))?;
    if output.status.success() {
        return Ok(output);
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    Err(TestServerError::CommandFailed {
        command: what.to_owned(),
        status: output.status.to_string(),
        output: lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n"),
    })
}

/// Whether the log, from byte `start` on, contains `needle`.
fn logged_since(log: &Path, start: u64, needle: &str) -> bool {
    fs::read(log).is_ok_and(|bytes| {
        let start = usize::try_from(start)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).contains(needle)
    })
}

/// Whether the server takes connections: `pg_isready` when installed, else a TCP connect.
fn accepts(port: u16, pg_isready: Option<&Path>) -> bool {
    match pg_isready {
        Some(pg_isready) => Command::new(pg_isready)
            .args([
                "-q",
                "-t",
                "2",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success()),
        None => TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(1),
        )
        .is_ok(),
    }
}

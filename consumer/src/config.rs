//! The command line (every flag also an environment variable) and the
//! validated [`Config`] it becomes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use hookline_api::ValidatedEndpoint;
use hookline_api::nats::NatsAuth;
use hookline_api::runtime::NatsArgs;
use hookline_api::validated::StreamLimits;

use crate::inspect::Format;
use crate::store::Selection;
use crate::{Error, Result};

/// Drains a WebhookEndpoint's JetStream stream into Postgres.
#[derive(Debug, Parser)]
#[command(name = "hookline-consumer", version, about, long_about = None)]
pub struct Cli {
    /// The WebhookEndpoint manifest (the YAML `kubectl apply` takes).
    #[arg(long, env = "HOOKLINE_ENDPOINT", global = true, value_name = "FILE")]
    pub endpoint: Option<PathBuf>,
    /// A directory of WebhookEndpoint manifests (`*.yaml`, one namespace),
    /// each consumed by a loop of its own, reloaded while running; instead of
    /// `--endpoint`. `replay` still takes `--endpoint`.
    #[arg(long, env = "HOOKLINE_ENDPOINT_DIR", value_name = "DIR")]
    pub endpoint_dir: Option<PathBuf>,
    /// The `WebhookPool` whose one stream holds the events of every endpoint
    /// of `--endpoint-dir` (a subject each): each endpoint is consumed from
    /// it through its own durable `hookline-consumer-<name>`, and what is left
    /// in its own stream is drained too. For `--endpoint-dir` and `replay`.
    #[arg(long, env = "HOOKLINE_SHARED_STREAM", value_name = "POOL", global = true,
          value_parser = parse_pool_name)]
    pub shared_stream: Option<String>,
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "HOOKLINE_NATS_URL", global = true, value_name = "URL")]
    pub nats_url: Option<String>,
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Postgres URL.
    #[arg(
        long,
        env = "HOOKLINE_DATABASE_URL",
        global = true,
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HOOKLINE_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Create or update the stream and durable consumer first (outside a cluster).
    #[arg(long, env = "HOOKLINE_PROVISION")]
    pub provision: bool,
    /// File holding the `Authorization` header value for `consumer.refetch`
    /// (the key of `refetch.authSecretRef`, mounted); re-read on every call.
    #[arg(long, env = "HOOKLINE_REFETCH_AUTH_FILE", value_name = "FILE")]
    pub refetch_auth_file: Option<PathBuf>,
    /// Batches processed at once (their commits overlap).
    #[arg(long, env = "HOOKLINE_CONCURRENCY", default_value_t = CONCURRENCY,
          value_parser = clap::value_parser!(u16).range(1..=MAX_CONCURRENCY))]
    pub concurrency: u16,
    /// Postgres connections shared by every endpoint of `--endpoint-dir`
    /// (default: twice `--concurrency`, plus 2).
    #[arg(long, env = "HOOKLINE_DATABASE_CONNECTIONS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub database_connections: Option<u32>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish dead letters into the stream again (same event ids) and mark
    /// them replayed. Without a filter: every dead letter not replayed yet.
    Replay(ReplayArgs),
    /// List the endpoint's dead letters (not replayed yet; --all for every one).
    DeadLetters(DeadLettersArgs),
    /// Print one stored event; with --wait, wait until it is stored.
    Event(EventArgs),
    /// Print each newly stored event of the endpoint (LISTEN hookline_events)
    /// until SIGTERM or Ctrl-C.
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    /// Also dead letters replayed already.
    #[arg(long)]
    pub all: bool,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct EventArgs {
    /// The event id.
    pub event_id: String,
    /// Wait this long for the event to be stored (e.g. 30s); exit code 1 if it is not.
    #[arg(long, value_name = "DURATION", value_parser = parse_wait)]
    pub wait: Option<Duration>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
}

fn parse_pool_name(text: &str) -> std::result::Result<String, String> {
    hookline_api::naming::check_resource_name(text).map(|()| text.to_owned())
}

fn parse_wait(text: &str) -> std::result::Result<Duration, String> {
    hookline_api::resolve::parse_duration(text)
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Every dead letter not replayed yet (the default without filters).
    #[arg(long, conflicts_with_all = ["event_id", "since", "until"])]
    pub all: bool,
    /// Only this event id (repeatable).
    #[arg(long = "event-id", alias = "id", value_name = "ID")]
    pub event_id: Vec<String>,
    /// Only dead letters that failed at or after this RFC 3339 time.
    #[arg(long, alias = "from", value_name = "TIME", value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only dead letters that failed before this RFC 3339 time.
    #[arg(long, alias = "to", value_name = "TIME", value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
}

fn parse_time(text: &str) -> std::result::Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|err| format!("not an RFC 3339 time (e.g. 2026-01-31T12:00:00Z): {err}"))
}

impl ReplayArgs {
    pub fn selection(&self) -> Selection {
        Selection {
            event_ids: self.event_id.clone(),
            since: self.since,
            until: self.until,
        }
    }
}

/// Batches in flight per process by default: while some commit, others are
/// fetched and decoded, and their commits share WAL flushes. Draining a
/// backlog of 5 KB events on 2 cores (drain_bench, 40,000 events): 2 in
/// flight 10.2k rows/s, 4 in flight 11.6k, 8 in flight 11.8k. Four keeps
/// nearly all of that with six database connections per pod (ten pods stay
/// within Postgres' default 100 connections) and matches the four batches
/// per pod that `max_ack_pending` leaves room for.
pub const CONCURRENCY: u16 = 4;
/// Most batches in flight per process; more only queues on the database pool.
const MAX_CONCURRENCY: i64 = 64;

/// Everything `run` and `replay` need, checked.
#[derive(Clone)]
pub struct Config {
    pub endpoint: ValidatedEndpoint,
    pub nats_url: String,
    /// Credentials and TLS of the NATS connection.
    pub nats_auth: NatsAuth,
    /// May hold a password: never logged (see the `Debug` impl).
    pub database_url: String,
    pub provision: bool,
    pub refetch_auth_file: Option<PathBuf>,
    /// Batches in flight at once.
    pub concurrency: u16,
    /// How often the retention sweep runs.
    pub sweep_interval: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("endpoint", &self.endpoint.key())
            .field("nats_url", &self.nats_url)
            .field("nats_auth", &self.nats_auth)
            .field("database_url", &"<redacted>")
            .field("provision", &self.provision)
            .field("refetch_auth_file", &self.refetch_auth_file)
            .field("concurrency", &self.concurrency)
            .field("sweep_interval", &self.sweep_interval)
            .finish()
    }
}

/// How often the retention sweep runs by default.
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

impl Config {
    /// A config with the defaults for everything but the three required values.
    pub fn new(endpoint: ValidatedEndpoint, nats_url: &str, database_url: &str) -> Config {
        Config {
            endpoint,
            nats_url: nats_url.to_owned(),
            nats_auth: NatsAuth::default(),
            database_url: database_url.to_owned(),
            provision: false,
            refetch_auth_file: None,
            concurrency: CONCURRENCY,
            sweep_interval: SWEEP_INTERVAL,
        }
    }

    /// The required values and the NATS credentials from the command line,
    /// defaults for the rest: what `replay` needs.
    pub fn from_required(cli: &Cli) -> Result<Config> {
        let (mut endpoint, nats_url, database_url) = required(cli)?;
        if let Some(pool) = &cli.shared_stream {
            endpoint = shared_member(endpoint, cli.nats.cluster_name.as_deref(), pool);
        }
        Ok(Config {
            nats_auth: cli.nats.auth(),
            ..Config::new(endpoint, &nats_url, &database_url)
        })
    }

    /// Checks the whole command line and reads the manifest: what `run` needs.
    pub fn from_cli(cli: &Cli) -> Result<Config> {
        if cli.database_connections.is_some() {
            return Err(Error::Config(
                "--database-connections is for --endpoint-dir (one endpoint uses --concurrency plus 2)".into(),
            ));
        }
        if cli.shared_stream.is_some() {
            return Err(Error::Config(
                "--shared-stream is for --endpoint-dir (a pool's endpoints) and replay, not --endpoint".into(),
            ));
        }
        let config = Config {
            provision: cli.provision,
            refetch_auth_file: cli.refetch_auth_file.clone(),
            concurrency: cli.concurrency,
            ..Config::from_required(cli)?
        };
        config.check()?;
        Ok(config)
    }

    /// Cross-checks the flags against the manifest.
    pub fn check(&self) -> Result<()> {
        crate::store::connect_options(&self.database_url)?;
        if let Some(refetch) = &self.endpoint.consumer.refetch
            && refetch.auth_secret_ref.is_some()
            && self.refetch_auth_file.is_none()
        {
            return Err(Error::Config(
                "spec.consumer.refetch.authSecretRef is set: pass --refetch-auth-file (HOOKLINE_REFETCH_AUTH_FILE) with the mounted secret".into(),
            ));
        }
        if let Some(path) = &self.refetch_auth_file
            && !path.is_file()
        {
            return Err(Error::Config(format!(
                "--refetch-auth-file {}: no such file",
                path.display()
            )));
        }
        Ok(())
    }
}

/// The endpoint's key (`namespace/name`) and the database URL: all that the
/// read-only subcommands (`dead-letters`, `event`, `tail`) need.
pub fn inspect_target(cli: &Cli) -> Result<(String, String)> {
    let path = cli
        .endpoint
        .as_ref()
        .ok_or_else(|| missing("--endpoint", "HOOKLINE_ENDPOINT"))?;
    let database_url = cli
        .database_url
        .clone()
        .filter(|url| !url.trim().is_empty())
        .ok_or_else(|| missing("--database-url", "HOOKLINE_DATABASE_URL"))?;
    crate::store::connect_options(&database_url)?;
    Ok((hookline_api::load_manifest(path)?.key(), database_url))
}

fn missing(flag: &str, env: &str) -> Error {
    Error::Config(format!("{flag} is required (or set {env})"))
}

/// The NATS URL and the database URL, each required.
fn urls(cli: &Cli) -> Result<(String, String)> {
    let nats_url = cli
        .nats_url
        .clone()
        .filter(|url| !url.trim().is_empty())
        .ok_or_else(|| missing("--nats-url", "HOOKLINE_NATS_URL"))?;
    let database_url = cli
        .database_url
        .clone()
        .filter(|url| !url.trim().is_empty())
        .ok_or_else(|| missing("--database-url", "HOOKLINE_DATABASE_URL"))?;
    crate::store::connect_options(&database_url)?;
    Ok((nats_url, database_url))
}

/// The manifest, NATS URL and database URL, each required.
pub fn required(cli: &Cli) -> Result<(ValidatedEndpoint, String, String)> {
    let path = cli.endpoint.as_ref().ok_or_else(|| {
        if cli.endpoint_dir.is_some() && cli.command.is_some() {
            Error::Config(
                "replay is per endpoint: pass --endpoint FILE (--endpoint-dir is for consuming)"
                    .into(),
            )
        } else {
            missing("--endpoint", "HOOKLINE_ENDPOINT")
        }
    })?;
    let (nats_url, database_url) = urls(cli)?;
    let endpoint = hookline_api::load_manifest(path)?.in_cluster(cli.nats.cluster_name.as_deref());
    Ok((endpoint, nats_url, database_url))
}

/// `endpoint` as a member of `pool`'s shared stream. The limits are the
/// defaults: they only matter when `--provision` makes the pool's stream, and
/// the operator, which makes it in a cluster, sets the pool's own.
pub fn shared_member(
    endpoint: ValidatedEndpoint,
    cluster_name: Option<&str>,
    pool: &str,
) -> ValidatedEndpoint {
    endpoint.in_shared_stream(cluster_name, pool, StreamLimits::default())
}

/// How often `--endpoint-dir` is read again: a ConfigMap update reaches the
/// pod's files within the kubelet's sync period (about a minute), so 2 s adds
/// little, and reading a few hundred small files costs nothing.
const DIR_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Everything a pool consumer (`--endpoint-dir`) needs, checked; its
/// endpoints come from the directory while it runs.
#[derive(Clone)]
pub struct PoolConfig {
    pub endpoint_dir: PathBuf,
    /// `--cluster-name`, applied to every manifest's stream and subjects.
    pub cluster_name: Option<String>,
    /// `--shared-stream`: the pool whose one stream holds every endpoint's
    /// events; `None`: each endpoint has its own stream.
    pub shared_stream: Option<String>,
    pub nats_url: String,
    pub nats_auth: NatsAuth,
    /// May hold a password: never logged (see the `Debug` impl).
    pub database_url: String,
    pub provision: bool,
    /// Batches in flight at once, per endpoint.
    pub concurrency: u16,
    /// Size of the Postgres pool every endpoint shares.
    pub database_connections: u32,
    pub sweep_interval: Duration,
    /// How often the directory is read again.
    pub poll_interval: Duration,
    /// What the batch pulls of every endpoint may have on their way from
    /// NATS at once (`DEFAULT_PULL_BUDGET_BYTES`; below nats-server's `max_pending`).
    pub pull_budget_bytes: usize,
}

impl std::fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolConfig")
            .field("endpoint_dir", &self.endpoint_dir)
            .field("cluster_name", &self.cluster_name)
            .field("shared_stream", &self.shared_stream)
            .field("nats_url", &self.nats_url)
            .field("nats_auth", &self.nats_auth)
            .field("database_url", &"<redacted>")
            .field("provision", &self.provision)
            .field("concurrency", &self.concurrency)
            .field("database_connections", &self.database_connections)
            .field("sweep_interval", &self.sweep_interval)
            .field("poll_interval", &self.poll_interval)
            .field("pull_budget_bytes", &self.pull_budget_bytes)
            .finish()
    }
}

/// The default pool size: one endpoint holds at most `concurrency`
/// connections (one per batch in flight), so the others always keep at least
/// `concurrency` plus the spare ones for probes and sweeps.
pub fn default_database_connections(concurrency: u16) -> u32 {
    2 * u32::from(concurrency) + crate::lifecycle::SPARE_CONNECTIONS
}

impl PoolConfig {
    /// A config with the defaults for everything but the three required values.
    pub fn new(endpoint_dir: PathBuf, nats_url: &str, database_url: &str) -> PoolConfig {
        PoolConfig {
            endpoint_dir,
            cluster_name: None,
            shared_stream: None,
            nats_url: nats_url.to_owned(),
            nats_auth: NatsAuth::default(),
            database_url: database_url.to_owned(),
            provision: false,
            concurrency: CONCURRENCY,
            database_connections: default_database_connections(CONCURRENCY),
            sweep_interval: SWEEP_INTERVAL,
            poll_interval: DIR_POLL_INTERVAL,
            pull_budget_bytes: crate::consume::DEFAULT_PULL_BUDGET_BYTES,
        }
    }

    /// Checks the command line for `--endpoint-dir`; the manifests are read by `run_pool`.
    pub fn from_cli(cli: &Cli) -> Result<PoolConfig> {
        let dir = cli
            .endpoint_dir
            .clone()
            .ok_or_else(|| missing("--endpoint-dir", "HOOKLINE_ENDPOINT_DIR"))?;
        if cli.endpoint.is_some() {
            return Err(Error::Config(
                "--endpoint and --endpoint-dir exclude each other: one endpoint, or a directory of them".into(),
            ));
        }
        if cli.refetch_auth_file.is_some() {
            return Err(Error::Config(
                "--refetch-auth-file is for one endpoint: a pool's endpoints cannot use consumer.refetch.authSecretRef yet".into(),
            ));
        }
        if !dir.is_dir() {
            return Err(Error::Config(format!(
                "--endpoint-dir {}: not a directory",
                dir.display()
            )));
        }
        let (nats_url, database_url) = urls(cli)?;
        Ok(PoolConfig {
            cluster_name: cli.nats.cluster_name.clone(),
            shared_stream: cli.shared_stream.clone(),
            nats_auth: cli.nats.auth(),
            provision: cli.provision,
            concurrency: cli.concurrency,
            database_connections: cli
                .database_connections
                .unwrap_or_else(|| default_database_connections(cli.concurrency)),
            ..PoolConfig::new(dir, &nats_url, &database_url)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn replay_filters_parse_before_or_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "hookline-consumer",
            "--endpoint",
            "e.yaml",
            "replay",
            "--nats-url",
            "nats://x",
            "--event-id",
            "a",
            "--id",
            "b",
            "--since",
            "2026-01-01T00:00:00Z",
        ])
        .expect("parses");
        let Some(Command::Replay(args)) = &cli.command else {
            panic!("replay expected")
        };
        assert_eq!(args.event_id, ["a", "b"]);
        assert!(args.since.is_some());
        assert_eq!(cli.nats_url.as_deref(), Some("nats://x"));
    }

    #[test]
    fn endpoint_and_endpoint_dir_exclude_each_other() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cli = Cli::try_parse_from([
            "hookline-consumer",
            "--endpoint",
            "e.yaml",
            "--endpoint-dir",
            dir.path().to_str().expect("utf-8"),
            "--nats-url",
            "nats://x",
            "--database-url",
            "postgres://x@h/db",
        ])
        .expect("parses");
        let err = PoolConfig::from_cli(&cli).expect_err("both");
        assert!(err.to_string().contains("exclude each other"), "{err}");
    }

    #[test]
    fn replay_wants_one_endpoint_not_a_directory() {
        let cli = Cli::try_parse_from([
            "hookline-consumer",
            "--endpoint-dir",
            "/tmp",
            "replay",
            "--nats-url",
            "nats://x",
        ])
        .expect("parses");
        let err = required(&cli).expect_err("no --endpoint");
        assert!(err.to_string().contains("replay is per endpoint"), "{err}");
    }

    #[test]
    fn shared_stream_is_for_a_pool_or_replay_not_one_endpoint() {
        let cli = Cli::try_parse_from([
            "hookline-consumer",
            "--endpoint",
            "e.yaml",
            "--shared-stream",
            "p",
            "--nats-url",
            "nats://x",
            "--database-url",
            "postgres://x@h/db",
        ])
        .expect("parses");
        let err = Config::from_cli(&cli).expect_err("one endpoint");
        let text = err.to_string();
        assert!(
            text.contains("--shared-stream is for --endpoint-dir"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn shared_stream_names_a_pool_and_is_taken_after_replay_too() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cli = Cli::try_parse_from([
            "hookline-consumer",
            "--endpoint-dir",
            dir.path().to_str().expect("utf-8"),
            "--nats-url",
            "nats://x",
            "--database-url",
            "postgres://x@h/db",
            "--shared-stream",
            "hooks",
        ])
        .expect("parses");
        let config = PoolConfig::from_cli(&cli).expect("valid");
        assert_eq!(config.shared_stream.as_deref(), Some("hooks"));
        let cli = Cli::try_parse_from([
            "hookline-consumer",
            "--endpoint",
            "e.yaml",
            "replay",
            "--shared-stream",
            "hooks",
        ])
        .expect("parses");
        assert_eq!(cli.shared_stream.as_deref(), Some("hooks"));
        let err = Cli::try_parse_from(["hookline-consumer", "--shared-stream", "Not_A_Name"])
            .expect_err("not a resource name");
        assert!(err.to_string().contains("DNS label"), "{err}");
    }

    #[test]
    fn a_pool_shares_twice_the_concurrency_plus_spares_by_default() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cli = Cli::try_parse_from([
            "hookline-consumer",
            "--endpoint-dir",
            dir.path().to_str().expect("utf-8"),
            "--nats-url",
            "nats://x",
            "--database-url",
            "postgres://x@h/db",
            "--concurrency",
            "3",
        ])
        .expect("parses");
        let config = PoolConfig::from_cli(&cli).expect("valid");
        assert_eq!(config.concurrency, 3);
        assert_eq!(config.database_connections, 8);
    }

    #[test]
    fn a_missing_flag_is_named() {
        let cli =
            Cli::try_parse_from(["hookline-consumer", "--endpoint", "e.yaml"]).expect("parses");
        let err = required(&cli).expect_err("missing nats url");
        assert_eq!(
            err.to_string(),
            "--nats-url is required (or set HOOKLINE_NATS_URL)"
        );
    }
}

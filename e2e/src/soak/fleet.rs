//! The processes of a soak: nats-server, Postgres, and the [`Pods`] serving
//! the [`Endpoint`]s: one per dedicated endpoint, and a pool's.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::endpoint::{self, Endpoint, Pods, SMALL_STREAM_BYTES, Settings};
use super::providers::Provider;
use crate::error::{Result, TestServerError, io_err};
use crate::launch::http_get;
use crate::nats::NatsServer;
use crate::postgres::Postgres;

/// A stream's state as JetStream's monitoring reports it.
#[derive(Clone, Debug)]
pub struct StreamState {
    pub name: String,
    pub messages: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: u64,
    /// Not yet delivered.
    pub pending: u64,
}

impl StreamState {
    fn drained(&self) -> bool {
        self.messages == 0 && self.ack_pending == 0 && self.pending == 0
    }
}

/// Every process of the soak; all are stopped on drop.
#[derive(Debug)]
pub struct Fleet {
    pub endpoints: Vec<Endpoint>,
    /// The pool's pods first, then each dedicated endpoint's.
    pub pods: Vec<Pods>,
    pub nats: NatsServer,
    pub postgres: Postgres,
    settings: Settings,
    /// Manifests, secrets and every binary's log.
    dir: TempDir,
}

impl Fleet {
    /// Starts nats-server, Postgres and every endpoint's processes (the
    /// endpoints side by side); `secrets` gives each provider its secret.
    pub fn start(log_filter: &str, secret: impl Fn(Provider) -> String) -> Result<Fleet> {
        let nats = NatsServer::start()?;
        let postgres = Postgres::start()?;
        let dir = tempfile::Builder::new()
            .prefix("hookline-soak-")
            .tempdir()
            .map_err(io_err("creating a temp dir for the soak"))?;
        let settings = Settings {
            nats_url: nats.url(),
            database_url: postgres.url(),
            log_filter: log_filter.to_owned(),
            dir: dir.path().to_path_buf(),
        };
        let (endpoints, mut pods) = endpoint::write_all(secret, dir.path())?;
        thread::scope(|scope| {
            let starts: Vec<_> = pods
                .iter_mut()
                .enumerate()
                .map(|(index, pods)| {
                    let settings = &settings;
                    let (receivers, consumers) = endpoint::sizes(index);
                    scope.spawn(move || -> Result<()> {
                        for number in 1..=receivers {
                            let receiver = pods.start_receiver(settings, number)?;
                            pods.receivers.push(receiver);
                        }
                        for _ in 0..consumers {
                            let consumer = pods.start_consumer(settings)?;
                            pods.consumers.push(consumer);
                        }
                        Ok(())
                    })
                })
                .collect();
            starts.into_iter().try_for_each(|start| {
                start.join().unwrap_or_else(|_| {
                    Err(TestServerError::Environment(
                        "a thread starting an endpoint's processes panicked".into(),
                    ))
                })
            })
        })?;
        // Poison must fail for its own reason, whatever else fails: Postgres
        // refuses it as a user's own constraint or trigger would (the
        // consumers have created the tables by now).
        postgres.psql(
            "ALTER TABLE hookline.events ADD CONSTRAINT soak_poison \
             CHECK (event_id NOT LIKE 'poison-%')",
        )?;
        Ok(Fleet {
            endpoints,
            pods,
            nats,
            postgres,
            settings,
            dir,
        })
    }

    /// The endpoint whose stream is small enough to fill.
    pub fn small_stream(&self) -> usize {
        self.endpoints
            .iter()
            .position(|endpoint| endpoint.max_bytes == SMALL_STREAM_BYTES)
            .unwrap_or(0)
    }

    /// Starts a new consumer in place of the one at `index` of `pods`
    /// (after it was killed): a new process, port and log.
    pub fn replace_consumer(&mut self, pods: usize, index: usize) -> Result<()> {
        let settings = self.settings.clone();
        let pods = &mut self.pods[pods];
        let consumer = pods.start_consumer(&settings)?;
        if let Some(slot) = pods.consumers.get_mut(index) {
            *slot = consumer;
        }
        Ok(())
    }

    /// Every process that is not running, or not ready: nothing may need a
    /// restart the schedule did not make.
    pub fn problems(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.nats.is_running() {
            problems.push("nats-server is not running".to_owned());
        }
        if !self.postgres.is_running() {
            problems.push("postgres is not running".to_owned());
        }
        for pods in &mut self.pods {
            let key = pods.name.clone();
            let services = pods
                .receivers
                .iter_mut()
                .map(|s| ("receiver", s))
                .chain(pods.consumers.iter_mut().map(|s| ("consumer", s)));
            for (role, service) in services {
                let name = format!("{key} {role} ({})", service.log_path().display());
                if !service.is_running() {
                    problems.push(format!("{name} is not running"));
                } else if !service.is_ready() {
                    problems.push(format!("{name} does not answer /readyz with 200"));
                }
            }
        }
        problems
    }

    /// Waits until every process runs and is ready.
    pub fn wait_ready(&mut self, bound: Duration) -> Result<()> {
        let deadline = Instant::now() + bound;
        loop {
            let problems = self.problems();
            if problems.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.failure(&format!(
                    "not every process was ready within {bound:?}: {}",
                    problems.join("; ")
                )));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every stream's state, from nats-server's monitoring (`/jsz`).
    pub fn streams(&self) -> Option<Vec<StreamState>> {
        let (status, body) = http_get(
            self.nats.monitor_port(),
            "/jsz?accounts=true&streams=true&consumers=true",
        )?;
        if status != 200 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let number = |value: &serde_json::Value| value.as_u64().unwrap_or(0);
        let mut streams = Vec::new();
        for account in json["account_details"].as_array().into_iter().flatten() {
            for stream in account["stream_detail"].as_array().into_iter().flatten() {
                let consumers = stream["consumer_detail"].as_array();
                let sum = |field: &str| {
                    consumers
                        .into_iter()
                        .flatten()
                        .map(|consumer| number(&consumer[field]))
                        .sum()
                };
                streams.push(StreamState {
                    name: stream["name"].as_str().unwrap_or_default().to_owned(),
                    messages: number(&stream["state"]["messages"]),
                    ack_pending: sum("num_ack_pending"),
                    pending: sum("num_pending"),
                });
            }
        }
        Some(streams)
    }

    /// Waits until every stream is empty and nothing is pending: with
    /// interest retention, every event has been written (or dead-lettered)
    /// and acknowledged.
    pub fn wait_drained(&self, bound: Duration) -> Result<Vec<StreamState>> {
        let deadline = Instant::now() + bound;
        loop {
            let streams = self.streams().unwrap_or_default();
            let expected: std::collections::BTreeSet<&str> =
                self.endpoints.iter().map(|e| e.stream.as_str()).collect();
            if streams.len() == expected.len() && streams.iter().all(StreamState::drained) {
                return Ok(streams);
            }
            if Instant::now() > deadline {
                return Err(self.failure(&format!(
                    "the streams were not drained within {bound:?}: {streams:?}"
                )));
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Every log the processes wrote, by file: the binaries' (including those
    /// killed or replaced), nats-server's and Postgres'.
    pub fn logs(&self) -> Result<Vec<(String, String)>> {
        let mut logs = vec![
            ("nats-server".to_owned(), self.nats.log()),
            ("postgres".to_owned(), self.postgres.log()),
        ];
        let entries =
            fs::read_dir(self.dir.path()).map_err(io_err("listing the soak's log files"))?;
        for entry in entries {
            let path = entry
                .map_err(io_err("listing the soak's log files"))?
                .path();
            if path.extension().is_some_and(|ext| ext == "log") {
                let bytes =
                    fs::read(&path).map_err(io_err(format!("reading {}", path.display())))?;
                logs.push((
                    file_name(&path),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
        }
        logs.sort();
        Ok(logs)
    }

    /// Writes every log (see [`Fleet::logs`]) into `dir`, made if missing.
    pub fn copy_logs(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        for (name, text) in self.logs()? {
            let path = dir.join(if name.ends_with(".log") {
                name
            } else {
                format!("{name}.log")
            });
            fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
        }
        // JetStream's own view of the streams and consumers, at the end.
        if let Some((_, jsz)) = http_get(
            self.nats.monitor_port(),
            "/jsz?accounts=true&streams=true&consumers=true&config=true",
        ) {
            let path = dir.join("jsz.json");
            fs::write(&path, jsz).map_err(io_err(format!("writing {}", path.display())))?;
        }
        Ok(())
    }

    /// The last `lines` lines of every log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let logs = self.logs().unwrap_or_default();
        logs.iter()
            .map(|(name, text)| {
                let all: Vec<&str> = text.lines().collect();
                format!(
                    "--- {name} (last {lines} lines)\n{}",
                    all[all.len().saturating_sub(lines)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// An error saying `what`, with the tails of every log.
    pub fn failure(&self, what: &str) -> TestServerError {
        TestServerError::Failed {
            what: what.to_owned(),
            details: self.log_tails(12),
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

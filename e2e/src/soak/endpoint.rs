//! One soak endpoint: its shipped example manifest moved to the soak's
//! namespace with the soak's stream settings, and its real receivers and
//! consumers, all started with `--provision`.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use super::providers::Provider;
use crate::error::{Result, TestServerError, io_err};
use crate::pipeline::{Listen, Service};

/// The namespace every soak endpoint is moved to.
pub const NAMESPACE: &str = "soak";

/// Each endpoint's stream cap. JetStream reserves every stream's `maxBytes`
/// on its volume up front: six default buffers (512 MiB) would need 3 GiB of
/// free disk, which a CI machine need not have.
const STREAM_BYTES: i64 = 64 << 20;
/// The cap of the endpoint whose stream the schedule fills: about fifty events.
pub(super) const SMALL_STREAM_BYTES: i64 = 64 << 10;
/// Every stream's duplicate window, shorter than the defaults (2m; 5m in the
/// Standard Webhooks example) so that redeliveries sent after the load reach
/// the second dedupe layer, Postgres's unique key, as a provider's
/// redeliveries hours later do.
pub const DUPLICATE_WINDOW: &str = "15s";

/// How many of each process an endpoint runs, and its stream cap.
pub(super) struct Layout {
    pub(super) provider: Provider,
    pub(super) receivers: usize,
    pub(super) consumers: usize,
    max_bytes: i64,
}

/// Stripe runs two receivers (the senders go round them) and two consumers;
/// Standard Webhooks two consumers and the small stream that is filled.
pub(super) const LAYOUT: [Layout; 6] = [
    Layout {
        provider: Provider::Stripe,
        receivers: 2,
        consumers: 2,
        max_bytes: STREAM_BYTES,
    },
    Layout {
        provider: Provider::Github,
        receivers: 1,
        consumers: 1,
        max_bytes: STREAM_BYTES,
    },
    Layout {
        provider: Provider::Shopify,
        receivers: 1,
        consumers: 1,
        max_bytes: STREAM_BYTES,
    },
    Layout {
        provider: Provider::Slack,
        receivers: 1,
        consumers: 1,
        max_bytes: STREAM_BYTES,
    },
    Layout {
        provider: Provider::StandardWebhooks,
        receivers: 1,
        consumers: 2,
        max_bytes: SMALL_STREAM_BYTES,
    },
    Layout {
        provider: Provider::Generic,
        receivers: 1,
        consumers: 1,
        max_bytes: STREAM_BYTES,
    },
];

/// One endpoint and its processes.
#[derive(Debug)]
pub struct Endpoint {
    pub provider: Provider,
    /// `namespace/name`: the `endpoint` column in Postgres.
    pub key: String,
    /// The path its receivers serve.
    pub path: String,
    pub secret: String,
    pub max_bytes: i64,
    manifest: PathBuf,
    secret_file: PathBuf,
    pub receivers: Vec<Service>,
    pub consumers: Vec<Service>,
    /// Consumers started so far (their logs are numbered).
    consumers_started: usize,
}

/// What every process is started with.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    pub(super) nats_url: String,
    pub(super) database_url: String,
    pub(super) log_filter: String,
    pub(super) dir: PathBuf,
}

impl Endpoint {
    /// Writes the endpoint's manifest (the shipped example in the soak's
    /// namespace, with `layout`'s stream cap) and its secret file.
    pub(super) fn write(layout: &Layout, secret: String, dir: &Path) -> Result<Endpoint> {
        let example = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(layout.provider.example());
        let text = fs::read_to_string(&example)
            .map_err(io_err(format!("reading {}", example.display())))?;
        let bad = |what: &str| TestServerError::Failed {
            what: format!("{} cannot be used for the soak", example.display()),
            details: what.to_owned(),
        };
        let mut manifest: Value = serde_yaml::from_str(&text).map_err(|e| bad(&e.to_string()))?;
        set(&mut manifest, &["metadata", "namespace"], NAMESPACE.into());
        set(
            &mut manifest,
            &["spec", "stream", "maxBytes"],
            layout.max_bytes.into(),
        );
        set(
            &mut manifest,
            &["spec", "stream", "duplicateWindow"],
            DUPLICATE_WINDOW.into(),
        );
        let name = manifest["metadata"]["name"]
            .as_str()
            .ok_or_else(|| bad("metadata.name is missing"))?
            .to_owned();
        // The documented default path is /<namespace>/<name>.
        let path = manifest["spec"]["ingress"]["path"]
            .as_str()
            .map_or_else(|| format!("/{NAMESPACE}/{name}"), str::to_owned);
        let manifest_path = dir.join(format!("{name}.yaml"));
        let yaml = serde_yaml::to_string(&manifest).map_err(|e| bad(&e.to_string()))?;
        fs::write(&manifest_path, yaml)
            .map_err(io_err(format!("writing {}", manifest_path.display())))?;
        let secret_file = dir.join(format!("{name}.secret"));
        fs::write(&secret_file, format!("{secret}\n"))
            .map_err(io_err(format!("writing {}", secret_file.display())))?;
        Ok(Endpoint {
            provider: layout.provider,
            key: format!("{NAMESPACE}/{name}"),
            path,
            secret,
            max_bytes: layout.max_bytes,
            manifest: manifest_path,
            secret_file,
            receivers: Vec::new(),
            consumers: Vec::new(),
            consumers_started: 0,
        })
    }

    /// The name in file names: the key without its namespace.
    pub(super) fn name(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or(&self.key)
    }

    /// Its stream, named as the contract says: `HOOKLINE_<namespace>_<name>`
    /// (the soak's names need no sanitizing).
    pub fn stream(&self) -> String {
        format!("HOOKLINE_{NAMESPACE}_{}", self.name())
    }

    pub(super) fn start_receiver(&self, settings: &Settings, number: usize) -> Result<Service> {
        let args: Vec<OsString> = vec![
            "--endpoint".into(),
            self.manifest.clone().into(),
            "--secret-file".into(),
            self.secret_file.clone().into(),
            "--nats-url".into(),
            settings.nats_url.clone().into(),
            "--provision".into(),
        ];
        Service::start_logging_to(
            "hookline-receiver",
            Listen::Flag,
            &args,
            &[("RUST_LOG", settings.log_filter.clone().into())],
            settings
                .dir
                .join(format!("{}-receiver-{number}.log", self.name())),
        )
    }

    pub(super) fn start_consumer(&mut self, settings: &Settings) -> Result<Service> {
        self.consumers_started += 1;
        let args: Vec<OsString> = vec![
            "--endpoint".into(),
            self.manifest.clone().into(),
            "--nats-url".into(),
            settings.nats_url.clone().into(),
            "--database-url".into(),
            settings.database_url.clone().into(),
            "--provision".into(),
        ];
        Service::start_logging_to(
            "hookline-consumer",
            Listen::Flag,
            &args,
            &[("RUST_LOG", settings.log_filter.clone().into())],
            settings.dir.join(format!(
                "{}-consumer-{}.log",
                self.name(),
                self.consumers_started
            )),
        )
    }
}

/// Sets `value` at `path` in a YAML mapping, making the mappings on the way.
fn set(document: &mut Value, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = document;
    for key in parents {
        if !node.get(*key).is_some_and(Value::is_mapping)
            && let Some(mapping) = node.as_mapping_mut()
        {
            mapping.insert((*key).into(), Value::Mapping(Mapping::new()));
        }
        let Some(next) = node.get_mut(*key) else {
            return;
        };
        node = next;
    }
    if let Some(mapping) = node.as_mapping_mut() {
        mapping.insert((*last).into(), value);
    }
}

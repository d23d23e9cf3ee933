//! The soak's endpoints: each a shipped example manifest moved to the soak's
//! namespace with the soak's stream settings; and the [`Pods`] serving
//! them, the real receivers and consumers started with `--provision`: one
//! endpoint's own, or a pool's serving several endpoints from directories.

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

/// A dedicated endpoint: its provider, how many of each process it runs,
/// and its stream cap.
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

/// The pool: endpoints of three providers (named `<example>-pooled`) served
/// by two pool receivers (`--endpoint-dir`, `--secret-dir`) and one pool
/// consumer (`--endpoint-dir`), beside the dedicated endpoints; their events
/// share the pool's one stream (`--shared-stream`).
pub(super) const POOL_MEMBERS: [Provider; 3] =
    [Provider::Stripe, Provider::Github, Provider::Generic];
pub(super) const POOL_RECEIVERS: usize = 2;
pub(super) const POOL_CONSUMERS: usize = 1;
/// The pool's name: in log file names and its shared stream's name.
const POOL_NAME: &str = "pool";
/// The pool's shared stream (`HOOKLINE_<ns>_POOL_<pool>`).
const POOL_STREAM: &str = "HOOKLINE_soak_POOL_pool";

/// One endpoint as the senders and the checks see it.
#[derive(Debug)]
pub struct Endpoint {
    pub provider: Provider,
    /// `namespace/name`: the `endpoint` column in Postgres.
    pub key: String,
    /// The path its receivers serve.
    pub path: String,
    pub secret: String,
    pub max_bytes: i64,
    /// Index of the [`Pods`] serving it.
    pub pods: usize,
    /// The stream its events wait in: its own, named as the contract says
    /// (`HOOKLINE_<namespace>_<name>`, the soak's names need no sanitizing),
    /// or the pool's shared one.
    pub stream: String,
}

/// What a set of pods is started with: one endpoint's manifest and secret
/// file, or a pool's directories.
#[derive(Clone, Debug)]
enum Serves {
    Endpoint {
        manifest: PathBuf,
        secret_file: PathBuf,
    },
    Pool {
        endpoint_dir: PathBuf,
        secret_dir: PathBuf,
    },
}

/// The receivers and consumers serving one endpoint (its own) or a pool's
/// members: what a fault kills and restarts.
#[derive(Debug)]
pub struct Pods {
    /// The endpoint's name, or the pool's: the prefix of its log files.
    pub name: String,
    serves: Serves,
    /// Indexes of the endpoints served.
    pub members: Vec<usize>,
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

/// Every endpoint's manifest and secret written, and the pods that serve
/// them, not started yet: the pool's pods first, then one per dedicated
/// endpoint in [`LAYOUT`]'s order.
pub(super) fn write_all(
    secret: impl Fn(Provider) -> String,
    dir: &Path,
) -> Result<(Vec<Endpoint>, Vec<Pods>)> {
    let endpoint_dir = dir.join("pool-endpoints");
    let secret_dir = dir.join("pool-secrets");
    for made in [&endpoint_dir, &secret_dir] {
        fs::create_dir_all(made).map_err(io_err(format!("creating {}", made.display())))?;
    }
    let mut endpoints = Vec::new();
    let mut pods = vec![Pods::new(
        POOL_NAME.into(),
        Serves::Pool {
            endpoint_dir: endpoint_dir.clone(),
            secret_dir: secret_dir.clone(),
        },
    )];
    for provider in POOL_MEMBERS {
        let written = Written::new(provider, STREAM_BYTES, Some(&endpoint_dir))?;
        let secret = secret(provider);
        write_file(&secret_dir.join(&written.name), &format!("{secret}\n"))?;
        pods[0].members.push(endpoints.len());
        endpoints.push(written.endpoint(secret, 0, true));
    }
    for layout in &LAYOUT {
        let written = Written::new(layout.provider, layout.max_bytes, None)?;
        let manifest = dir.join(format!("{}.yaml", written.name));
        write_file(&manifest, &written.yaml)?;
        let secret = secret(layout.provider);
        let secret_file = dir.join(format!("{}.secret", written.name));
        write_file(&secret_file, &format!("{secret}\n"))?;
        let mut own = Pods::new(
            written.name.clone(),
            Serves::Endpoint {
                manifest,
                secret_file,
            },
        );
        own.members.push(endpoints.len());
        endpoints.push(written.endpoint(secret, pods.len(), false));
        pods.push(own);
    }
    Ok((endpoints, pods))
}

/// How many receivers and consumers the pods at `index` of [`write_all`]'s
/// list run.
pub(super) fn sizes(index: usize) -> (usize, usize) {
    match index.checked_sub(1) {
        None => (POOL_RECEIVERS, POOL_CONSUMERS),
        Some(dedicated) => LAYOUT
            .get(dedicated)
            .map_or((1, 1), |layout| (layout.receivers, layout.consumers)),
    }
}

/// A shipped example made a soak endpoint: in the soak's namespace, with the
/// soak's stream settings; a pool member is renamed `<name>-pooled`, serves
/// `/soak/<name>-pooled` on any host and is written into the pool's directory.
struct Written {
    provider: Provider,
    name: String,
    path: String,
    max_bytes: i64,
    yaml: String,
}

impl Written {
    fn new(provider: Provider, max_bytes: i64, pool_dir: Option<&Path>) -> Result<Written> {
        let example = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(provider.example());
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
            max_bytes.into(),
        );
        set(
            &mut manifest,
            &["spec", "stream", "duplicateWindow"],
            DUPLICATE_WINDOW.into(),
        );
        let mut name = manifest["metadata"]["name"]
            .as_str()
            .ok_or_else(|| bad("metadata.name is missing"))?
            .to_owned();
        if pool_dir.is_some() {
            name.push_str("-pooled");
            set(&mut manifest, &["metadata", "name"], name.clone().into());
            set(
                &mut manifest,
                &["spec", "ingress", "path"],
                format!("/{NAMESPACE}/{name}").into(),
            );
            // The soak's senders name no host; a pool receiver routes by it.
            if let Some(ingress) = manifest["spec"]["ingress"].as_mapping_mut() {
                ingress.remove("host");
            }
        }
        // The documented default path is /<namespace>/<name>.
        let path = manifest["spec"]["ingress"]["path"]
            .as_str()
            .map_or_else(|| format!("/{NAMESPACE}/{name}"), str::to_owned);
        let yaml = serde_yaml::to_string(&manifest).map_err(|e| bad(&e.to_string()))?;
        if let Some(dir) = pool_dir {
            write_file(&dir.join(format!("{name}.yaml")), &yaml)?;
        }
        Ok(Written {
            provider,
            name,
            path,
            max_bytes,
            yaml,
        })
    }

    fn endpoint(self, secret: String, pods: usize, pooled: bool) -> Endpoint {
        let stream = if pooled {
            POOL_STREAM.to_owned()
        } else {
            format!("HOOKLINE_{NAMESPACE}_{}", self.name)
        };
        Endpoint {
            provider: self.provider,
            key: format!("{NAMESPACE}/{}", self.name),
            path: self.path,
            secret,
            max_bytes: self.max_bytes,
            pods,
            stream,
        }
    }
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(io_err(format!("writing {}", path.display())))
}

impl Pods {
    fn new(name: String, serves: Serves) -> Pods {
        Pods {
            name,
            serves,
            members: Vec::new(),
            receivers: Vec::new(),
            consumers: Vec::new(),
            consumers_started: 0,
        }
    }

    /// Whether these are a pool's pods.
    pub fn is_pool(&self) -> bool {
        matches!(self.serves, Serves::Pool { .. })
    }

    /// What names the endpoint(s) served, for the receiver and the consumer.
    fn endpoint_args(&self, receiver: bool) -> Vec<OsString> {
        let (flag, path, secret_flag, secret) = match &self.serves {
            Serves::Endpoint {
                manifest,
                secret_file,
            } => ("--endpoint", manifest, "--secret-file", secret_file),
            Serves::Pool {
                endpoint_dir,
                secret_dir,
            } => ("--endpoint-dir", endpoint_dir, "--secret-dir", secret_dir),
        };
        let mut args = vec![flag.into(), path.into()];
        if self.is_pool() {
            args.extend(["--shared-stream".into(), POOL_NAME.into()]);
        }
        if receiver {
            args.extend([secret_flag.into(), secret.into()]);
        }
        args
    }

    pub(super) fn start_receiver(&self, settings: &Settings, number: usize) -> Result<Service> {
        let mut args = self.endpoint_args(true);
        args.extend([
            "--nats-url".into(),
            settings.nats_url.clone().into(),
            "--provision".into(),
        ]);
        Service::start_logging_to(
            "hookline-receiver",
            Listen::Flag,
            &args,
            &[("RUST_LOG", settings.log_filter.clone().into())],
            settings
                .dir
                .join(format!("{}-receiver-{number}.log", self.name)),
        )
    }

    pub(super) fn start_consumer(&mut self, settings: &Settings) -> Result<Service> {
        self.consumers_started += 1;
        let mut args = self.endpoint_args(false);
        args.extend([
            "--nats-url".into(),
            settings.nats_url.clone().into(),
            "--database-url".into(),
            settings.database_url.clone().into(),
            "--provision".into(),
        ]);
        Service::start_logging_to(
            "hookline-consumer",
            Listen::Flag,
            &args,
            &[("RUST_LOG", settings.log_filter.clone().into())],
            settings.dir.join(format!(
                "{}-consumer-{}.log",
                self.name, self.consumers_started
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

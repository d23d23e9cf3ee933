//! What the operator's tests share: the in-memory API, a real nats-server,
//! and a reconcile harness that drives the real `reconcile` as the controller would.

#![allow(dead_code)]

pub mod fake_api;
pub mod fakekube;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fake_api::FakeApi;
use hookline_api::pool::WebhookPool;
use hookline_api::spec::WebhookEndpoint;
use hookline_e2e::NatsServer;
use hookline_operator::apply::{self, ChildWriters};
use hookline_operator::config::OperatorConfig;
use hookline_operator::metrics::Metrics;
use hookline_operator::reconcile::{Context, FINALIZER, reconcile};
use hookline_operator::secrets::SecretIndex;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::Value;

/// The repository's `examples/` directory.
pub fn examples_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
}

/// Runs `program` with `args`: whether it succeeded, and its stdout and
/// stderr. Panics with `hint` (how to install it) when it cannot run.
pub fn run(program: &str, args: &[&str], hint: &str) -> (bool, String) {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("{program} not runnable ({err}): {hint}"));
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// `kubernetes-validate --strict` against Kubernetes 1.32 of the YAML `files`.
pub fn kubernetes_validate(files: &[&str]) -> (bool, String) {
    let mut args = vec!["--strict", "--kubernetes-version", "1.32.0"];
    args.extend(files);
    run(
        "kubernetes-validate",
        &args,
        "install it with `pip install kubernetes-validate`",
    )
}

/// The custom resources of the YAML `files` against KEDA's and the
/// Prometheus operator's own models (`e2e/schemas/validate_custom_resources.py`).
pub fn validate_custom_resources(files: &[&str]) -> (bool, String) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../e2e/schemas/validate_custom_resources.py"
    );
    let mut args = vec![script];
    args.extend(files);
    run(
        "python3",
        &args,
        "python3 with `pip install cloudcoil-models-keda cloudcoil-models-prometheus-operator pyyaml`",
    )
}

/// What the real `hookline-operator ARGS` prints; it must succeed.
pub fn operator_output(args: &[&str]) -> String {
    let output = std::process::Command::new(hookline_e2e::workspace_bin("hookline-operator"))
        .args(args)
        .output()
        .expect("hookline-operator runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// The YAML documents of `text` (comment-only ones left out).
pub fn documents(text: &str) -> Vec<Value> {
    text.split("---\n")
        .filter_map(|document| serde_yaml::from_str::<Option<Value>>(document).expect("YAML"))
        .collect()
}

/// Every example manifest, parsed.
pub fn examples() -> Vec<(String, WebhookEndpoint)> {
    let mut all: Vec<(String, WebhookEndpoint)> = std::fs::read_dir(examples_dir())
        .expect("examples/ is readable")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("example is readable");
            let resource = hookline_api::parse_manifest(&text).expect("example parses");
            (
                path.file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into_owned(),
                resource,
            )
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// One example by file name.
pub fn example(file: &str) -> WebhookEndpoint {
    examples()
        .into_iter()
        .find(|(name, _)| name == file)
        .map(|(_, resource)| resource)
        .unwrap_or_else(|| panic!("no example {file}"))
}

/// A Secret with one key.
pub fn secret(namespace: &str, name: &str, key: &str, value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            key.to_owned(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// The operator under test: the fake API, a real nats-server and the context
/// `reconcile` runs with.
pub struct Harness {
    pub fake: FakeApi,
    pub nats: NatsServer,
    pub ctx: Arc<Context>,
    pub writers: ChildWriters,
    /// The Secret watch's cache, as the controller keeps it.
    pub secret_writer: Writer<PartialObjectMeta<Secret>>,
    /// The endpoint and pool watches' caches.
    pub endpoint_writer: Writer<WebhookEndpoint>,
    pub pool_writer: Writer<WebhookPool>,
    pub metrics: Arc<Metrics>,
}

impl Harness {
    pub async fn start(keda: bool) -> Harness {
        Harness::start_with(keda, |_| {}).await
    }

    /// A harness whose operator configuration `configure` changes.
    pub async fn start_with(keda: bool, configure: impl FnOnce(&mut OperatorConfig)) -> Harness {
        let nats = tokio::task::block_in_place(NatsServer::start)
            .expect("nats-server starts (apt-get install -y nats-server)");
        let fake = FakeApi::new(keda);
        let client = fake.client();
        let mut config = OperatorConfig {
            nats: hookline_operator::config::NatsSettings {
                url: nats.url(),
                ..Default::default()
            },
            ..OperatorConfig::default()
        };
        configure(&mut config);
        let nats_client =
            hookline_api::nats::connect(&nats.url(), &Default::default(), "operator-test")
                .await
                .expect("NATS client");
        wait_connected(&nats_client).await;
        let (stores, writers) = apply::stores();
        let metrics = Arc::new(Metrics::new());
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "hookline-operator".into(),
                instance: Some("test".into()),
            },
        );
        let (secret_store, secret_writer) = reflector::store();
        let (endpoint_store, endpoint_writer) = reflector::store();
        let (pool_store, pool_writer) = reflector::store();
        let ctx = Arc::new(
            Context::new(
                client,
                config,
                nats_client,
                stores,
                metrics.clone(),
                recorder,
                Duration::from_secs(60),
            )
            .with_secret_index(SecretIndex::new(secret_store))
            .with_pools(pool_store, endpoint_store),
        );
        Harness {
            fake,
            nats,
            ctx,
            writers,
            secret_writer,
            endpoint_writer,
            pool_writer,
            metrics,
        }
    }

    /// Stores `resource` and the Secrets every example reads.
    pub fn add_endpoint_with_secrets(&self, resource: &WebhookEndpoint) {
        let namespace = resource
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        self.fake.insert(resource);
        let spec = &resource.spec;
        if !spec.secret_ref.generate.unwrap_or(false) {
            let key = spec
                .secret_ref
                .key
                .clone()
                .unwrap_or_else(|| "secret".into());
            self.fake.insert(&secret(
                &namespace,
                &spec.secret_ref.name,
                &key,
                "whsec_dGVzdA==",
            ));
        }
        if let Some(database) = spec
            .consumer
            .as_ref()
            .and_then(|consumer| consumer.database_secret_ref.as_ref())
        {
            self.fake.insert(&secret(
                &namespace,
                &database.name,
                &database.key,
                "postgres://localhost/hookline",
            ));
        }
    }

    /// Stores one object of every child kind named `name`, owned by the
    /// endpoint: what an older operator with other names would have left.
    pub fn add_stale_children(&self, namespace: &str, endpoint: &str, name: &str) {
        let owner = self.endpoint(namespace, endpoint);
        let metadata = serde_json::json!({
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "hookline-operator"},
            "ownerReferences": [{"apiVersion": "hookline.io/v1alpha1", "kind": "WebhookEndpoint",
                "name": endpoint, "uid": owner.metadata.uid, "controller": true}],
        });
        for (api_version, kind, spec) in [
            ("v1", "ConfigMap", serde_json::Value::Null),
            (
                "v1",
                "Service",
                serde_json::json!({"ports": [{"port": 80}]}),
            ),
            ("networking.k8s.io/v1", "Ingress", serde_json::json!({})),
            ("policy/v1", "PodDisruptionBudget", serde_json::json!({})),
            (
                "apps/v1",
                "Deployment",
                serde_json::json!({"selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c"}]}}}),
            ),
            (
                "keda.sh/v1alpha1",
                "ScaledObject",
                serde_json::json!({"scaleTargetRef": {"name": "x"}, "triggers": []}),
            ),
        ] {
            let mut object =
                serde_json::json!({"apiVersion": api_version, "kind": kind, "metadata": metadata});
            if !spec.is_null() {
                object["spec"] = spec;
            }
            self.fake.insert(&object);
        }
    }

    /// Copies every stored child and Secret into the operator's caches, as
    /// its watches would.
    pub fn sync(&mut self) {
        self.fake.sync(&mut self.writers);
        self.secret_writer
            .apply_watcher_event(&watcher::Event::Init);
        for secret in self.fake.all("Secret") {
            let meta: PartialObjectMeta<Secret> =
                serde_json::from_value(secret).expect("secret metadata");
            self.secret_writer
                .apply_watcher_event(&watcher::Event::InitApply(meta));
        }
        self.secret_writer
            .apply_watcher_event(&watcher::Event::InitDone);
        fill(&mut self.endpoint_writer, &self.fake.all("WebhookEndpoint"));
        fill(&mut self.pool_writer, &self.fake.all("WebhookPool"));
    }

    /// One reconcile of the stored pool, with the caches as its watches
    /// would have them.
    /// One pass of the pool's reconcile, as the controller runs it: a pool
    /// without the finalizer yet gets it first (one reconcile, which waits
    /// for that change), then the pass.
    pub async fn reconcile_pool(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<Action, hookline_operator::Error> {
        if !self
            .pool(namespace, name)
            .finalizers()
            .iter()
            .any(|f| f == FINALIZER)
        {
            self.reconcile_pool_once(namespace, name).await?;
        }
        self.reconcile_pool_once(namespace, name).await
    }

    /// One call of the pool's reconcile, whatever it does.
    pub async fn reconcile_pool_once(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<Action, hookline_operator::Error> {
        self.sync();
        hookline_operator::pool::reconcile(Arc::new(self.pool(namespace, name)), self.ctx.clone())
            .await
    }

    /// The stored pool.
    pub fn pool(&self, namespace: &str, name: &str) -> WebhookPool {
        self.fake
            .typed::<WebhookPool>(namespace, name)
            .unwrap_or_else(|| panic!("no pool {namespace}/{name}"))
    }

    /// Changes the stored endpoint as `kubectl edit` would.
    pub fn edit_endpoint(
        &self,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut serde_json::Value),
    ) {
        self.fake.edit(
            "hookline.io/v1alpha1",
            "WebhookEndpoint",
            namespace,
            name,
            change,
        );
    }

    /// Marks the endpoint as being deleted, as `kubectl delete` does while a
    /// finalizer is on it.
    pub fn mark_deleting(&self, namespace: &str, name: &str) {
        self.edit_endpoint(namespace, name, |object| {
            object["metadata"]["deletionTimestamp"] = serde_json::json!("2026-11-30T00:00:05Z");
        });
    }

    /// Marks the pool as being deleted, as `kubectl delete` does while a
    /// finalizer is on it.
    pub fn mark_pool_deleting(&self, namespace: &str, name: &str) {
        self.fake.edit(
            "hookline.io/v1alpha1",
            "WebhookPool",
            namespace,
            name,
            |object| {
                object["metadata"]["deletionTimestamp"] = serde_json::json!("2026-11-30T00:00:05Z");
            },
        );
    }

    /// Status writes (`patch` of `webhookendpoints/status`) since the calls were cleared.
    pub fn status_writes(&self) -> usize {
        self.fake
            .writes()
            .iter()
            .filter(|call| call.resource == "webhookendpoints/status")
            .count()
    }

    /// Warning Events published since the calls were cleared, by reason.
    pub fn events(&self) -> Vec<Value> {
        self.fake.all("Event")
    }

    /// The stored endpoint.
    pub fn endpoint(&self, namespace: &str, name: &str) -> WebhookEndpoint {
        self.fake
            .typed::<WebhookEndpoint>(namespace, name)
            .unwrap_or_else(|| panic!("no endpoint {namespace}/{name}"))
    }

    /// One reconcile of the stored endpoint, with the caches as its watches
    /// would have them.
    pub async fn reconcile(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<Action, hookline_operator::Error> {
        self.sync();
        reconcile(Arc::new(self.endpoint(namespace, name)), self.ctx.clone()).await
    }

    /// The first reconcile adds the finalizer (and waits for the change); the
    /// second runs the whole pass. Returns the second's action.
    pub async fn settle(&mut self, namespace: &str, name: &str) -> Action {
        self.reconcile(namespace, name)
            .await
            .expect("first reconcile");
        self.reconcile(namespace, name)
            .await
            .expect("second reconcile")
    }

    /// A condition of the stored endpoint, checked to have `status` and `reason`.
    pub fn expect_condition(
        &self,
        namespace: &str,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> Condition {
        let condition = self.condition(namespace, name, type_);
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            (status, reason),
            "{type_}: {}",
            condition.message
        );
        condition
    }

    /// A condition of the stored endpoint.
    pub fn condition(&self, namespace: &str, name: &str, type_: &str) -> Condition {
        self.endpoint(namespace, name)
            .status
            .unwrap_or_default()
            .conditions
            .into_iter()
            .find(|condition| condition.type_ == type_)
            .unwrap_or_else(|| panic!("no condition {type_}"))
    }
}

/// Replaces what `writer`'s cache holds by `objects`, as a relist would.
fn fill<K>(writer: &mut Writer<K>, objects: &[Value])
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned,
{
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        let typed: K = serde_json::from_value(object.clone()).expect("stored object deserialises");
        writer.apply_watcher_event(&watcher::Event::InitApply(typed));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
}

/// When `action` runs the reconcile again, read from its `Debug` form (kube
/// offers no getter).
pub fn requeue_after(action: &Action) -> Option<Duration> {
    let text = format!("{action:?}");
    let inner = text.split_once("Some(")?.1.split_once(')')?.0;
    let (number, scale) = if let Some(ms) = inner.strip_suffix("ms") {
        (ms, 1e-3)
    } else {
        (inner.strip_suffix('s')?, 1.0)
    };
    number
        .parse::<f64>()
        .ok()
        .map(|n| Duration::from_secs_f64(n * scale))
}

/// Whether `action` is the resync of a Ready endpoint (60 s, ±10 % jitter).
pub fn is_resync(action: &Action) -> bool {
    requeue_after(action).is_some_and(|after| (54.0..=66.0).contains(&after.as_secs_f64()))
}

/// Waits (bounded) until the client is connected.
pub async fn wait_connected(client: &async_nats::Client) {
    for _ in 0..200 {
        if client.connection_state() == async_nats::connection::State::Connected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no NATS connection within 2 s");
}

/// JetStream API calls nats-server has answered since it started, by its
/// own count (`/jsz` at `monitor_url`): exact once the calls have their
/// answers, which a subscriber on `$JS.API.>` would see only some time later.
pub async fn answered_jetstream_calls(monitor_url: &str) -> u64 {
    let jsz: serde_json::Value = reqwest::get(format!("{monitor_url}/jsz"))
        .await
        .expect("/jsz")
        .json()
        .await
        .expect("JSON");
    jsz["api"]["total"].as_u64().expect("api.total")
}

//! The stand-in API server (`fakekube.py` from the development tools) as
//! the operator's binary tests and benchmarks use it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hookline_api::spec::WebhookEndpoint;
use hookline_e2e::ChildProcess;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use serde_json::Value;

/// A running `fakekube.py`, killed on drop.
pub struct FakeKube {
    _process: ChildProcess,
    state: tempfile::TempDir,
    pub port: u16,
}

impl FakeKube {
    pub fn start(keda: bool) -> FakeKube {
        FakeKube::start_with(keda, &[])
    }

    /// With `flags` besides the usual ones (e.g. `--deployment-delay`).
    pub fn start_with(keda: bool, flags: &[&str]) -> FakeKube {
        let script = std::env::var_os("HOOKLINE_FAKEKUBE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/fakekube.py")
            });
        assert!(
            script.is_file(),
            "{} not found: set HOOKLINE_FAKEKUBE to fakekube.py",
            script.display()
        );
        let state = tempfile::tempdir().expect("state dir");
        let mut command = Command::new("python3");
        command
            .arg(&script)
            .args(["--port", "0", "--quiet", "--keda"])
            .arg(keda.to_string())
            .args(flags)
            .arg("--state-dir")
            .arg(state.path());
        let mut process =
            ChildProcess::spawn(&mut command).expect("fakekube starts (pip install pyyaml)");
        let port_file = state.path().join("port");
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|text| text.trim().parse().ok())
            {
                break port;
            }
            assert!(
                process.exit_status().is_none(),
                "fakekube exited:\n{}",
                process.log_tail(20)
            );
            assert!(
                Instant::now() < deadline,
                "fakekube wrote no port:\n{}",
                process.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        FakeKube {
            _process: process,
            state,
            port,
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.state.path().join("kubeconfig")
    }

    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig()).expect("kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("config");
        Client::try_from(config).expect("client")
    }

    pub async fn hook(&self, method: reqwest::Method, path: &str) -> Value {
        reqwest::Client::new()
            .request(method, format!("http://127.0.0.1:{}{path}", self.port))
            .send()
            .await
            .expect("fakekube answers")
            .json()
            .await
            .expect("JSON")
    }

    /// `POST /_fake/config` with `config`.
    pub async fn configure(&self, config: Value) -> Value {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/_fake/config", self.port))
            .json(&config)
            .send()
            .await
            .expect("fakekube answers")
            .json()
            .await
            .expect("JSON")
    }

    /// Writes since the last reset, except Lease renewals (leader election
    /// renews every few seconds by design).
    pub async fn writes_besides_leases(&self) -> Vec<Value> {
        let requests = self.hook(reqwest::Method::GET, "/_fake/requests").await;
        requests
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|request| {
                !request["path"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("/leases/")
            })
            .filter(|request| request["changed"] != false)
            .collect()
    }
}

pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "webhookendpoints.hookline.io",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&hookline_api::crd()),
    )
    .await
    .expect("CRD applied");
}

pub async fn apply_endpoint(client: &Client, resource: &WebhookEndpoint) {
    let api: Api<WebhookEndpoint> =
        Api::namespaced(client.clone(), &resource.namespace().expect("namespace"));
    api.patch(
        &resource.name_any(),
        &PatchParams::apply("kubectl").force(),
        &Patch::Apply(resource),
    )
    .await
    .expect("endpoint applied");
}

pub async fn create_secret(client: &Client, value: Secret) {
    let api: Api<Secret> = Api::namespaced(client.clone(), &value.namespace().expect("namespace"));
    api.create(&PostParams::default(), &value)
        .await
        .expect("secret created");
}

/// The Secrets the Stripe example reads, in `namespace`.
pub async fn create_stripe_secrets(client: &Client, namespace: &str) {
    create_secret(
        client,
        super::secret(namespace, "stripe-webhook", "secret", "whsec_test"),
    )
    .await;
    create_secret(
        client,
        super::secret(
            namespace,
            "hookline-postgres",
            "url",
            "postgres://db/hookline",
        ),
    )
    .await;
}

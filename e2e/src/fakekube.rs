//! The stand-in Kubernetes API server (`fakekube.py` from the development
//! tools, `HOOKLINE_FAKEKUBE`) as the operator's and the plugin's tests and
//! benchmarks start it: a process on a free port with its state directory,
//! a kube client from its kubeconfig, and its test hooks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;

use crate::ChildProcess;

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
        // The kubeconfig may be written just after the port.
        while !state.path().join("kubeconfig").is_file() {
            assert!(
                Instant::now() < deadline,
                "fakekube wrote no kubeconfig:\n{}",
                process.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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

//! What a pool's receiver pods serve: each ready pod's `GET /endpoints`
//! (the hash of each manifest it loaded), so that a member is `Served` once
//! every receiver serves its current manifest, not once the ConfigMap holds
//! it: a mounted ConfigMap reaches the pods within the kubelet's sync period
//! (about a minute), and a provider's test event sent meanwhile got a 404.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use futures::future::join_all;
use hookline_api::pool_dir::manifest_hash;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::core::Selector;
use kube::{Api, Client};
use serde::Deserialize;
use tracing::debug;

use crate::build::pod::HTTP_PORT_NAME;

/// How long one pod's `/endpoints` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the pool's ready receiver pods said, at the pool's last reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Loaded {
    /// What each pod that answered serves.
    Pods(Vec<PodServes>),
    /// No pod answered (none ready, or none reachable: a NetworkPolicy): why.
    NotProbed(String),
}

/// One receiver pod's `GET /endpoints`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodServes {
    /// Endpoint key (`namespace/name`) → hash of the manifest it serves.
    pub served: HashMap<String, String>,
    /// Manifest file → why the pod does not serve it (e.g. its host and
    /// path are another member's).
    pub skipped: HashMap<String, String>,
}

impl Loaded {
    /// Of the pods that answered, how many serve `manifest` for `key`, and
    /// how many answered; `None` when none did.
    pub fn serving(&self, key: &str, manifest: &str) -> Option<(usize, usize)> {
        let Loaded::Pods(pods) = self else {
            return None;
        };
        let hash = manifest_hash(manifest);
        let serving = pods
            .iter()
            .filter(|pod| pod.served.get(key) == Some(&hash))
            .count();
        Some((serving, pods.len()))
    }

    /// Why a pod does not serve manifest `file`, if one skipped it.
    pub fn skipped(&self, file: &str) -> Option<&str> {
        let Loaded::Pods(pods) = self else {
            return None;
        };
        pods.iter()
            .find_map(|pod| pod.skipped.get(file).map(String::as_str))
    }

    /// Whether some pod does not serve one of `members` (key, manifest
    /// file, manifest) yet, and may still load it: a skipped manifest waits
    /// for an edit, not for time.
    pub fn lags_behind<'a>(
        &self,
        mut members: impl Iterator<Item = (String, String, &'a str)>,
    ) -> bool {
        members.any(|(key, file, manifest)| {
            self.skipped(&file).is_none()
                && self
                    .serving(&key, manifest)
                    .is_some_and(|(serving, answered)| serving < answered)
        })
    }
}

/// `GET /endpoints` of a receiver, as far as it is read here.
#[derive(Deserialize)]
struct Served {
    endpoints: Vec<ServedEndpoint>,
    #[serde(default)]
    skipped: HashMap<String, String>,
}

#[derive(Deserialize)]
struct ServedEndpoint {
    endpoint: String,
    #[serde(rename = "manifestHash")]
    manifest_hash: Option<String>,
}

/// Asks each ready pod of `receiver` (one LIST, then one GET per pod, at
/// once) what it serves.
pub async fn probe(client: &Client, namespace: &str, receiver: &Deployment) -> Loaded {
    let Some(http) = http_client() else {
        return Loaded::NotProbed("no HTTP client could be built".into());
    };
    // An empty selector would list every pod of the namespace.
    let Some(selector) = receiver
        .spec
        .as_ref()
        .and_then(|spec| Selector::try_from(spec.selector.clone()).ok())
        .filter(|selector| !selector.selects_all())
    else {
        return Loaded::NotProbed("the receiver Deployment has no selector".into());
    };
    let Some(port) = http_port(receiver) else {
        return Loaded::NotProbed(format!("the receiver has no port named {HTTP_PORT_NAME}"));
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let listed = match pods
        .list(&ListParams::default().labels_from(&selector))
        .await
    {
        Ok(listed) => listed,
        Err(err) => return Loaded::NotProbed(format!("cannot list the receiver pods: {err}")),
    };
    let addresses: Vec<String> = listed.items.iter().filter_map(ready_address).collect();
    if addresses.is_empty() {
        return Loaded::NotProbed("no receiver pod is ready".into());
    }
    let answers = join_all(addresses.iter().map(|address| ask(http, address, port))).await;
    let mut pods = Vec::new();
    let mut failure = None;
    for answer in answers {
        match answer {
            Ok(served) => pods.push(served),
            Err(err) => failure = Some(err),
        }
    }
    match (pods.is_empty(), failure) {
        (true, Some(err)) => Loaded::NotProbed(err),
        _ => Loaded::Pods(pods),
    }
}

fn http_client() -> Option<&'static reqwest::Client> {
    static CLIENT: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .timeout(PROBE_TIMEOUT)
                .build()
                .ok()
        })
        .as_ref()
}

/// The receiver container's `http` port.
fn http_port(receiver: &Deployment) -> Option<i32> {
    receiver
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|container| container.ports.iter().flatten())
        .find(|port| port.name.as_deref() == Some(HTTP_PORT_NAME))
        .map(|port| port.container_port)
}

/// A pod's IP when it is Ready and not on its way out.
fn ready_address(pod: &Pod) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|condition| condition.type_ == "Ready" && condition.status == "True");
    ready.then(|| status.pod_ip.clone()).flatten()
}

/// One pod's `/endpoints`: what it serves and what it skipped.
async fn ask(http: &reqwest::Client, address: &str, port: i32) -> Result<PodServes, String> {
    // An IPv6 address goes in brackets.
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_owned()
    };
    let url = format!("http://{host}:{port}/endpoints");
    let served: Served = http
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|err| format!("{url}: {err}"))?
        .json()
        .await
        .map_err(|err| format!("{url}: {err}"))?;
    debug!(url, endpoints = served.endpoints.len(), "probed a receiver");
    Ok(PodServes {
        served: served
            .endpoints
            .into_iter()
            .filter_map(|one| Some((one.endpoint, one.manifest_hash?)))
            .collect(),
        skipped: served.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(served: &[&[(&str, &str)]]) -> Loaded {
        Loaded::Pods(
            served
                .iter()
                .map(|pod| PodServes {
                    served: pod
                        .iter()
                        .map(|(key, manifest)| ((*key).to_owned(), manifest_hash(manifest)))
                        .collect(),
                    skipped: HashMap::new(),
                })
                .collect(),
        )
    }

    fn member(manifest: &str) -> std::iter::Once<(String, String, &str)> {
        std::iter::once(("shop/a".to_owned(), "a.yaml".to_owned(), manifest))
    }

    #[test]
    fn a_member_is_served_by_the_pods_that_hold_its_current_manifest() {
        let loaded = pods(&[&[("shop/a", "v2")], &[("shop/a", "v1")]]);
        assert_eq!(loaded.serving("shop/a", "v2"), Some((1, 2)));
        assert_eq!(loaded.serving("shop/b", "v1"), Some((0, 2)));
        assert!(loaded.lags_behind(member("v2")));
        let caught_up = pods(&[&[("shop/a", "v2")], &[("shop/a", "v2")]]);
        assert!(!caught_up.lags_behind(member("v2")));
        let unknown = Loaded::NotProbed("no receiver pod is ready".into());
        assert_eq!(unknown.serving("shop/a", "v2"), None);
        assert!(!unknown.lags_behind(member("v2")));
    }

    #[test]
    fn a_skipped_manifest_says_why_and_is_not_waited_for() {
        let mut loaded = pods(&[&[("shop/b", "v1")]]);
        if let Loaded::Pods(pods) = &mut loaded {
            pods[0].skipped.insert(
                "a.yaml".into(),
                "shop/b is served on that host and path".into(),
            );
        }
        assert_eq!(
            loaded.skipped("a.yaml"),
            Some("shop/b is served on that host and path")
        );
        assert_eq!(loaded.serving("shop/a", "v1"), Some((0, 1)));
        assert!(!loaded.lags_behind(member("v1")));
    }
}

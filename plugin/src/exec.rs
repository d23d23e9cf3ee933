//! Runs a `hookline-consumer` subcommand where the endpoint's consumer runs,
//! as `kubectl cnpg psql` does: an exec into a ready pod of the Deployment
//! `<name>-consumer`. The pod's environment already holds the manifest, the
//! NATS URL and the database URL (the operator puts them there for this), so
//! the command needs no flags and the laptop no database access.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use hookline_api::naming;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{AttachParams, ListParams};
use kube::{Api, Client};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::{Context, Error, Result};

/// The consumer's binary in the image.
pub const CONSUMER: &str = "hookline-consumer";
/// The consumer container's name in its pod.
const CONTAINER: &str = "consumer";

/// Runs `hookline-consumer <args>` for an endpoint, copying its standard
/// output to `out` as it comes (so `tail` streams) and its errors to stderr;
/// returns its exit code.
pub trait Exec: Send + Sync {
    fn run<'a>(
        &'a self,
        namespace: &'a str,
        endpoint: &'a str,
        args: &'a [String],
        out: &'a mut (dyn AsyncWrite + Unpin + Send),
    ) -> BoxFuture<'a, Result<i32>>;
}

/// Runs a consumer command and turns a failing exit code into an error
/// (the command has said why on stderr).
pub async fn consumer(
    context: &Context,
    namespace: &str,
    endpoint: &str,
    args: &[String],
    out: &mut (dyn AsyncWrite + Unpin + Send),
) -> Result<()> {
    match context.exec.run(namespace, endpoint, args, out).await? {
        0 => Ok(()),
        code => Err(Error::Failed(code)),
    }
}

/// Exec into the endpoint's consumer pod through the API server.
pub struct PodExec {
    pub client: Client,
}

impl Exec for PodExec {
    fn run<'a>(
        &'a self,
        namespace: &'a str,
        endpoint: &'a str,
        args: &'a [String],
        out: &'a mut (dyn AsyncWrite + Unpin + Send),
    ) -> BoxFuture<'a, Result<i32>> {
        Box::pin(async move {
            let pod = consumer_pod(&self.client, namespace, endpoint).await?;
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            let mut command = vec![CONSUMER.to_owned()];
            command.extend_from_slice(args);
            let params = AttachParams::default()
                .container(CONTAINER)
                .stdin(false)
                .stdout(true)
                .stderr(true);
            let mut process = pods.exec(&pod, command, &params).await?;
            let status = process.take_status();
            let mut stdout = process.stdout();
            let mut stderr = process.stderr();
            let copy_out = async {
                if let Some(stdout) = stdout.as_mut() {
                    tokio::io::copy(stdout, out).await?;
                }
                out.flush().await
            };
            let copy_err = async {
                if let Some(stderr) = stderr.as_mut() {
                    tokio::io::copy(stderr, &mut tokio::io::stderr()).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            let (written, _) = tokio::join!(copy_out, copy_err);
            written?;
            let status = match status {
                Some(status) => status.await,
                None => None,
            };
            process
                .join()
                .await
                .map_err(|err| Error::Exec(format!("exec in pod {pod}: {err}")))?;
            Ok(exit_code(status.as_ref()))
        })
    }
}

/// The exit code in the exec's final status: 0 on `Success`, the
/// `ExitCode` cause when the command failed, 1 when none is given.
fn exit_code(status: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>) -> i32 {
    let Some(status) = status else { return 1 };
    if status.status.as_deref() == Some("Success") {
        return 0;
    }
    status
        .details
        .as_ref()
        .and_then(|details| details.causes.as_ref())
        .and_then(|causes| {
            causes
                .iter()
                .find(|cause| cause.reason.as_deref() == Some("ExitCode"))
        })
        .and_then(|cause| cause.message.as_deref()?.parse().ok())
        .unwrap_or(1)
}

/// A running pod of the endpoint's consumer Deployment.
pub async fn consumer_pod(client: &Client, namespace: &str, endpoint: &str) -> Result<String> {
    running_pod(client, namespace, endpoint, "consumer").await
}

/// A running pod of the endpoint's `component` Deployment (`receiver`,
/// `consumer`), found by the Deployment's own selector (so it follows the
/// operator's labels).
pub async fn running_pod(
    client: &Client,
    namespace: &str,
    endpoint: &str,
    component: &str,
) -> Result<String> {
    let deployment_name = naming::child_name(endpoint, component);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = deployments.get_opt(&deployment_name).await?.ok_or_else(|| {
        Error::Exec(format!(
            "no Deployment {namespace}/{deployment_name}: is the operator running, and {endpoint} a WebhookEndpoint?"
        ))
    })?;
    let labels: BTreeMap<String, String> = deployment
        .spec
        .and_then(|spec| spec.selector.match_labels)
        .unwrap_or_default();
    let selector = labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut running: Vec<String> = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|pod| {
            pod.status
                .as_ref()
                .and_then(|status| status.phase.as_deref())
                == Some("Running")
                && pod.metadata.deletion_timestamp.is_none()
        })
        .filter_map(|pod| pod.metadata.name)
        .collect();
    running.sort();
    running.into_iter().next().ok_or_else(|| {
        Error::Exec(format!(
            "no running pod of Deployment {namespace}/{deployment_name} (kubectl get pods -n {namespace} -l {selector})"
        ))
    })
}

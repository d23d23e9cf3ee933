//! `send --via-port-forward`: a local port that forwards each connection to
//! a receiver pod through the API server, as `kubectl port-forward` does, for
//! an endpoint whose URL the laptop cannot reach.

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use tokio::net::TcpListener;

use crate::{Error, Result};

/// The receiver's port in the pods the operator makes (`--listen 0.0.0.0:8080`).
pub const RECEIVER_PORT: u16 = 8080;

/// Listens on a free loopback port and forwards every connection to `port`
/// of `pod`; the forwarding stops with the process.
pub async fn local_port(
    client: &Client,
    namespace: &str,
    pod: &str,
    port: u16,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|err| Error::Exec(format!("cannot listen on a local port: {err}")))?;
    let local = listener
        .local_addr()
        .map_err(|err| Error::Exec(format!("cannot read the local port: {err}")))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = pod.to_owned();
    tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            let pods = pods.clone();
            let pod = pod.clone();
            tokio::spawn(async move {
                let forwarded = async {
                    let mut forwarder = pods.portforward(&pod, &[port]).await?;
                    let mut upstream = forwarder.take_stream(port).ok_or_else(|| {
                        Error::Exec(format!("no stream for port {port} of pod {pod}"))
                    })?;
                    tokio::io::copy_bidirectional(&mut connection, &mut upstream)
                        .await
                        .map_err(|err| Error::Exec(format!("port-forward to pod {pod}: {err}")))?;
                    drop(upstream);
                    forwarder
                        .join()
                        .await
                        .map_err(|err| Error::Exec(format!("port-forward to pod {pod}: {err}")))
                };
                if let Err(err) = forwarded.await {
                    eprintln!("kubectl-hookline: {err}");
                }
            });
        }
    });
    Ok(local)
}

//! `kubectl hookline send`: one signed delivery to the endpoint's receiver,
//! the receiver's answer, and with `--wait` the stored event.

use std::time::Duration;

use hookline_api::WebhookEndpoint;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::cli::SendArgs;
use crate::sign::{self, Options};
use crate::{Context, Error, Result, exec};

/// How long the receiver may take to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one event; fails (after printing the answer) unless the receiver
/// answered as expected: 2xx, or 401 with `--bad-signature`.
pub async fn send(
    context: &Context,
    namespace: &str,
    args: &SendArgs,
    out: &mut (dyn AsyncWrite + Unpin + Send),
) -> Result<()> {
    let api: Api<WebhookEndpoint> = Api::namespaced(context.client.clone(), namespace);
    let resource = api
        .get_opt(&args.name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("{namespace}/{}", args.name)))?;
    let mut resource = resource;
    resource.metadata.namespace = Some(namespace.to_owned());
    let endpoint = hookline_api::validate(&resource)?;
    let secret = read_secret(
        context,
        namespace,
        &endpoint.secret.name,
        &endpoint.secret.key,
    )
    .await?;
    let body = match &args.file {
        Some(path) => Some(std::fs::read(path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let delivery = sign::delivery(
        &endpoint,
        &secret,
        &Options {
            event_type: args.event_type.clone(),
            body,
            forge: args.bad_signature,
            now: chrono::Utc::now().timestamp(),
            event_id: None,
        },
    )?;
    let status_url = resource
        .status
        .as_ref()
        .and_then(|status| status.url.clone());
    let forwarded = match args.via_port_forward {
        true => {
            let pod = crate::exec::running_pod(&context.client, namespace, &args.name, "receiver")
                .await?;
            let local = crate::forward::local_port(
                &context.client,
                namespace,
                &pod,
                crate::forward::RECEIVER_PORT,
            )
            .await?;
            Some(format!("http://{local}"))
        }
        false => None,
    };
    let url = target_url(
        forwarded.as_deref().or(args.url.as_deref()),
        status_url.as_deref(),
        &endpoint.route.path,
    )
    .ok_or_else(|| {
        Error::Usage(format!(
            "{namespace}/{} has no status.url (no spec.ingress.host): pass --via-port-forward, or --url, e.g. after \
                 `kubectl port-forward -n {namespace} svc/{} 8080:80`, --url http://localhost:8080",
            args.name,
            hookline_api::naming::child_name(&args.name, "receiver"),
        ))
    })?;
    let signed_with = if args.bad_signature {
        "a forged signature".to_owned()
    } else {
        format!(
            "Secret {}/{} key {}",
            namespace, endpoint.secret.name, endpoint.secret.key
        )
    };
    out.write_all(
        format!(
            "POST {url}\nevent {} ({}), {} in {}\n",
            delivery.event_id,
            delivery.event_type,
            signed_with,
            endpoint.verification.signature_header,
        )
        .as_bytes(),
    )
    .await?;
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|source| Error::Http {
            url: url.clone(),
            source,
        })?;
    let mut request = client.post(&url).body(delivery.body.clone());
    for (name, value) in &delivery.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = request.send().await.map_err(|source| Error::Http {
        url: url.clone(),
        source,
    })?;
    let status = response.status();
    let answer = response.text().await.unwrap_or_default();
    out.write_all(format!("HTTP {status}\n{}\n", answer.trim_end()).as_bytes())
        .await?;
    let expected = if args.bad_signature {
        status == reqwest::StatusCode::UNAUTHORIZED
    } else {
        status.is_success()
    };
    if !expected {
        out.flush().await?;
        return Err(Error::Failed(1));
    }
    if args.bad_signature {
        out.write_all(b"refused, as a forged signature must be\n")
            .await?;
        return Ok(());
    }
    let event_id = serde_json::from_str::<serde_json::Value>(&answer)
        .ok()
        .and_then(|value| value["eventId"].as_str().map(str::to_owned))
        .unwrap_or(delivery.event_id);
    if args.wait {
        let timeout = format!("{}ms", args.timeout.as_millis());
        let argv = vec![
            "event".to_owned(),
            event_id.clone(),
            "--wait".into(),
            timeout,
        ];
        out.write_all(
            format!("waiting until {event_id} is stored (from the consumer pod)...\n").as_bytes(),
        )
        .await?;
        out.flush().await?;
        exec::consumer(context, namespace, &args.name, &argv, out).await?;
    } else {
        out.write_all(format!("event id: {event_id}\n").as_bytes())
            .await?;
    }
    Ok(())
}

/// The first line of the signing Secret's key, as the receiver's first key.
async fn read_secret(context: &Context, namespace: &str, name: &str, key: &str) -> Result<String> {
    let secret_error = |message: String| Error::Secret {
        secret: format!("{namespace}/{name}"),
        message,
    };
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), namespace);
    let secret = secrets
        .get_opt(name)
        .await?
        .ok_or_else(|| secret_error("not found".into()))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|value| value.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|data| data.get(key))
                .map(|text| text.clone().into_bytes())
        })
        .ok_or_else(|| secret_error(format!("no key {key:?}")))?;
    String::from_utf8(bytes).map_err(|_| secret_error(format!("key {key:?} is not text")))
}

/// `--url` (with the endpoint's path added when it gives none), else `status.url`.
pub fn target_url(flag: Option<&str>, status: Option<&str>, path: &str) -> Option<String> {
    match flag {
        Some(url) => {
            let trimmed = url.trim_end_matches('/');
            let without_scheme = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
            if without_scheme.contains('/') {
                Some(url.to_owned())
            } else {
                Some(format!("{trimmed}{path}"))
            }
        }
        None => status.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_a_path_gets_the_endpoints() {
        assert_eq!(
            target_url(Some("http://localhost:8080"), None, "/default/stripe").as_deref(),
            Some("http://localhost:8080/default/stripe")
        );
        assert_eq!(
            target_url(
                Some("http://localhost:8080/x"),
                Some("https://h/p"),
                "/default/stripe"
            )
            .as_deref(),
            Some("http://localhost:8080/x")
        );
        assert_eq!(
            target_url(None, Some("https://h/p"), "/d/s").as_deref(),
            Some("https://h/p")
        );
        assert_eq!(target_url(None, None, "/d/s"), None);
    }
}

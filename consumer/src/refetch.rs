//! Reading an object's current state from the provider's API (`consumer.refetch`),
//! the source of truth, instead of trusting the event's payload.

use std::path::PathBuf;
use std::time::Duration;

use hookline_api::validated::Refetch;
use reqwest::StatusCode;

use crate::decode::postgres_json;

/// How long one provider call may take before it counts as a transient failure.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the provider may take, a part of [`REQUEST_TIMEOUT`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a refetch failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefetchError {
    /// Worth retrying: 5xx, 408, 429, timeout, connection trouble.
    #[error("refetch transient failure: {0}")]
    Transient(String),
    /// Retrying will not help: any other 4xx, or an answer that is not JSON.
    #[error("refetch permanent failure: {0}")]
    Permanent(String),
}

/// Calls the provider for objects of one endpoint.
#[derive(Clone, Debug)]
pub struct Refetcher {
    settings: Refetch,
    /// File whose content is the `Authorization` header value; re-read on every
    /// call so a rotated Secret (a mounted file) is used without a restart.
    auth_file: Option<PathBuf>,
    client: reqwest::Client,
}

impl Refetcher {
    pub fn new(settings: Refetch, auth_file: Option<PathBuf>) -> crate::Result<Refetcher> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("hookline-consumer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| crate::Error::Config(format!("cannot build the HTTP client: {err}")))?;
        Ok(Refetcher {
            settings,
            auth_file,
            client,
        })
    }

    /// The object's current state as JSON text.
    pub async fn fetch(&self, object_id: &str) -> Result<String, RefetchError> {
        let url = self.settings.url_for(object_id);
        let mut request = self
            .client
            .get(&url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(path) = &self.auth_file {
            let value = tokio::fs::read_to_string(path).await.map_err(|err| {
                RefetchError::Transient(format!("cannot read {}: {err}", path.display()))
            })?;
            request = request.header(reqwest::header::AUTHORIZATION, value.trim());
        }
        // Errors name the URL (from the spec, not a secret), never the auth header.
        let response = request
            .send()
            .await
            .map_err(|err| RefetchError::Transient(format!("GET {url}: {}", without_url(&err))))?;
        let status = response.status();
        if !status.is_success() {
            let message = format!("GET {url}: provider answered {status}");
            return Err(if is_transient_status(status) {
                RefetchError::Transient(message)
            } else {
                RefetchError::Permanent(message)
            });
        }
        let body = response
            .bytes()
            .await
            .map_err(|err| RefetchError::Transient(format!("GET {url}: {}", without_url(&err))))?;
        postgres_json(&body)
            .ok_or_else(|| RefetchError::Permanent(format!("GET {url}: the answer is not JSON")))
    }
}

fn is_transient_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_redirection()
}

fn without_url(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

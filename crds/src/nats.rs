//! The one way every Hookline process connects to NATS: URL, credentials file
//! or user and password, TLS with a private CA, and the same reconnect policy.

use std::path::PathBuf;
use std::time::Duration;

/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest pause between reconnect attempts: a restarted server is found
/// again within about a second.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Credentials and TLS settings of a NATS connection. The password is never
/// printed (see the `Debug` impl).
#[derive(Clone, Default)]
pub struct NatsAuth {
    /// A `.creds` file (JWT and nkey seed).
    pub creds_file: Option<PathBuf>,
    /// PEM CA certificate that signed the server's certificate; implies TLS.
    pub tls_ca_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAuth")
            .field("creds_file", &self.creds_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Why no NATS client could be made; nothing here is retried by the client.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot read NATS credentials {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--nats-user and --nats-password go together; give both or neither")]
    IncompleteUserPassword,
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect { url: String, message: String },
}

/// Starts a client named `name` and returns at once: the first connection and
/// every reconnect happen in the background, forever, so a process can serve
/// (and report not ready) while NATS is down. Errors only for settings no
/// retry can fix.
pub async fn connect(
    url: &str,
    auth: &NatsAuth,
    name: &str,
) -> Result<async_nats::Client, NatsError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(CONNECT_TIMEOUT)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64).saturating_mul(100)).min(MAX_RECONNECT_DELAY)
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("disconnected from NATS; reconnecting")
                }
                other => tracing::debug!(event = %other, "NATS client event"),
            }
        });
    if let Some(path) = &auth.creds_file {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| NatsError::Credentials {
                    path: path.clone(),
                    source,
                })?;
    }
    match (&auth.user, &auth.password) {
        (Some(user), Some(password)) => {
            options = options.user_and_password(user.clone(), password.clone());
        }
        (None, None) => {}
        _ => return Err(NatsError::IncompleteUserPassword),
    }
    if let Some(path) = &auth.tls_ca_file {
        options = options
            .add_root_certificates(path.clone())
            .require_tls(true);
    }
    options
        .connect(server_list(url))
        .await
        .map_err(|err| NatsError::Connect {
            url: url.to_owned(),
            message: err.to_string(),
        })
}

/// `nats://a:4222,nats://b:4222` as the list of servers every NATS client
/// takes (the client tries them in turn, so a seed node that is down does not
/// stop the first connection); blanks around the commas are allowed.
fn server_list(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|server| !server.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_url_is_a_list_of_servers() {
        assert_eq!(
            server_list("nats://a:4222, nats://b:4222,"),
            ["nats://a:4222", "nats://b:4222"]
        );
        assert_eq!(server_list("nats://a:4222"), ["nats://a:4222"]);
    }
}

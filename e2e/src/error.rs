//! The one error type of the test-support library.

use std::{fmt, io, time::Duration};

/// Why a test server or helper could not do its job.
///
/// `Debug` prints the same text as `Display`, so the message a test shows after
/// `.expect(..)` is readable (log tails keep their line breaks).
#[derive(thiserror::Error)]
pub enum TestServerError {
    /// A server binary is not installed; `hint` is the command that installs it.
    #[error("{binary} not found on {searched}: install it with `{hint}`")]
    BinaryMissing {
        binary: String,
        searched: String,
        hint: String,
    },

    /// An I/O operation failed; `context` says which.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// A server was started but did not become ready in time.
    #[error("{what} was not ready after {waited:?}; last lines of its log:\n{log_tail}")]
    NotReady {
        what: String,
        waited: Duration,
        log_tail: String,
    },

    /// A server process exited while we waited for it to become ready.
    #[error("{what} exited during start-up ({status}); last lines of its log:\n{log_tail}")]
    Exited {
        what: String,
        status: String,
        log_tail: String,
    },

    /// A helper command (`initdb`, `psql`, `cargo build`, ...) failed.
    #[error("`{command}` failed ({status}):\n{output}")]
    CommandFailed {
        command: String,
        status: String,
        output: String,
    },

    /// The environment cannot run the server (e.g. root without a `postgres` user).
    #[error("{0}")]
    Environment(String),

    /// A step of a scenario could not be done or did not finish within its
    /// bound; `details` says what was seen (usually the tails of the logs).
    #[error("{what}\n{details}")]
    Failed { what: String, details: String },
}

impl fmt::Debug for TestServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `Result` with [`TestServerError`] as the default error.
pub type Result<T, E = TestServerError> = std::result::Result<T, E>;

/// Builds a `map_err` closure that wraps an `io::Error` with context.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> TestServerError {
    let context = context.into();
    move |source| TestServerError::Io { context, source }
}

//! The error type of the test kit.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while starting, using or stopping a throwaway
/// server. Messages say what to do about it: which package to install, which
/// log to read (its last lines are included).
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// A server binary is not installed (or not where the kit looks).
    #[error("{binary} not found; {hint}")]
    BinaryNotFound {
        /// The missing program, e.g. `initdb`.
        binary: String,
        /// What to install, e.g. `install the postgresql-15 package (apt-get install postgresql-15)`.
        hint: String,
    },

    /// The system user a server must run as does not exist.
    #[error("system user {user} not found; {hint}")]
    UserNotFound {
        /// The user name, e.g. `postgres`.
        user: String,
        /// What to do about it.
        hint: String,
    },

    /// A file system or process operation failed.
    #[error("{what}: {error}")]
    Io {
        /// What the kit was doing, e.g. `creating /tmp/callosum-testkit-...`.
        what: String,
        /// The underlying error.
        error: std::io::Error,
    },

    /// A helper program (initdb, mariadb-install-db) exited with an error.
    #[error("{command} failed ({status}):\n{output}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The tail of its output.
        output: String,
    },

    /// The server process exited while the kit waited for it to accept connections.
    #[error("{server} exited during startup ({status}); last lines of {}:\n{log_tail}", log.display())]
    ServerExited {
        /// `postgresql` or `mariadb`.
        server: &'static str,
        /// Its exit status.
        status: String,
        /// The server's log file.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },

    /// The server did not accept connections before the deadline.
    #[error("{server} did not accept connections within {timeout:?} (last error: {last_error}); last lines of {}:\n{log_tail}", log.display())]
    NotReady {
        /// `postgresql` or `mariadb`.
        server: &'static str,
        /// How long the kit waited.
        timeout: Duration,
        /// The last connection error.
        last_error: String,
        /// The server's log file.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },

    /// A server did not stop before the deadline (it was then killed).
    #[error("{server} did not stop within {timeout:?}")]
    StopTimeout {
        /// `postgresql` or `mariadb`.
        server: &'static str,
        /// How long the kit waited.
        timeout: Duration,
    },

    /// [`wait_until`](super::wait_until) gave up.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// The condition, as the caller described it.
        what: String,
        /// How long it waited.
        timeout: Duration,
    },

    /// A PostgreSQL statement issued by the kit failed.
    #[error("postgresql: {context}: {error}")]
    Postgres {
        /// What the kit was doing.
        context: String,
        /// The driver error.
        error: tokio_postgres::Error,
    },

    /// A MariaDB statement issued by the kit failed.
    #[error("mariadb: {context}: {error}")]
    MariaDb {
        /// What the kit was doing.
        context: String,
        /// The driver error.
        error: mysql_async::Error,
    },
}

impl TestkitError {
    pub(crate) fn io(what: impl Into<String>, error: std::io::Error) -> Self {
        TestkitError::Io {
            what: what.into(),
            error,
        }
    }
}

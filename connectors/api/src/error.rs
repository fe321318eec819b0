//! Errors that cross a seam, classified once into transient and permanent.

use std::error::Error as StdError;
use std::fmt;

/// What went wrong, in terms the agent acts on. Each connector maps its
/// driver's errors to one of these; [`ErrorKind::class`] is the one place
/// that decides retry versus dead-letter/halt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The connection was refused, lost or timed out.
    Connection,
    /// The server is starting up, shutting down or out of connections.
    ServerUnavailable,
    /// Deadlock, lock wait timeout or serialization failure.
    Contention,
    /// The change log's disk failed (I/O error, disk full).
    LogStorage,
    /// A value the target column cannot hold, or a type Callosum cannot convert.
    Conversion,
    /// The target rejected a row (unique, foreign key, not null, check).
    Constraint,
    /// A table or column is missing or has no primary key.
    Schema,
    /// The user lacks a privilege.
    Permission,
    /// The server is not configured for replication (wal_level, binlog format …).
    ServerConfig,
    /// The resume position is gone from the server (purged binlog, dropped slot).
    PositionLost,
    /// The server sent something Callosum does not understand.
    Protocol,
    /// Invalid configuration.
    Config,
    /// A bug in Callosum itself (a worker panicked). Halts the pipeline and
    /// says so; never retried, never blamed on the data.
    Internal,
    /// The target's checkpoint row carries a newer lease epoch than this
    /// agent's: another agent took over the pipeline (active/standby). The
    /// target transaction was rolled back; the agent steps down. Never
    /// dead-letters anything.
    Fenced,
}

/// Whether an error may go away by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry with backoff.
    Transient,
    /// Retrying cannot help: dead-letter the transaction or halt the pipeline.
    Permanent,
}

impl ErrorKind {
    /// Every kind, in declaration order (the metrics create a zero series
    /// of `callosum_errors_total` for each, so the first error of a kind is
    /// an increase, not a new series).
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::Connection,
        ErrorKind::ServerUnavailable,
        ErrorKind::Contention,
        ErrorKind::LogStorage,
        ErrorKind::Conversion,
        ErrorKind::Constraint,
        ErrorKind::Schema,
        ErrorKind::Permission,
        ErrorKind::ServerConfig,
        ErrorKind::PositionLost,
        ErrorKind::Protocol,
        ErrorKind::Config,
        ErrorKind::Internal,
        ErrorKind::Fenced,
    ];

    pub fn class(self) -> ErrorClass {
        match self {
            ErrorKind::Connection | ErrorKind::ServerUnavailable | ErrorKind::Contention => {
                ErrorClass::Transient
            }
            ErrorKind::LogStorage
            | ErrorKind::Conversion
            | ErrorKind::Constraint
            | ErrorKind::Schema
            | ErrorKind::Permission
            | ErrorKind::ServerConfig
            | ErrorKind::PositionLost
            | ErrorKind::Protocol
            | ErrorKind::Config
            | ErrorKind::Internal
            | ErrorKind::Fenced => ErrorClass::Permanent,
        }
    }

    /// Whether the target refused the data of the transaction being applied
    /// (a value, a constraint, a missing table or column), as opposed to
    /// failing for every transaction alike. Only these go to the dead-letter
    /// queue; every other permanent error halts the pipeline.
    pub fn rejects_data(self) -> bool {
        matches!(
            self,
            ErrorKind::Conversion | ErrorKind::Constraint | ErrorKind::Schema
        )
    }

    /// Label value for `callosum_errors_total{kind}`.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection",
            ErrorKind::ServerUnavailable => "server_unavailable",
            ErrorKind::Contention => "contention",
            ErrorKind::LogStorage => "log_storage",
            ErrorKind::Conversion => "conversion",
            ErrorKind::Constraint => "constraint",
            ErrorKind::Schema => "schema",
            ErrorKind::Permission => "permission",
            ErrorKind::ServerConfig => "server_config",
            ErrorKind::PositionLost => "position_lost",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Config => "config",
            ErrorKind::Internal => "internal",
            ErrorKind::Fenced => "fenced",
        }
    }
}

/// An error from a source, sink or the log: what failed, why, and (where
/// Callosum knows) how the operator fixes it. Never carries row values.
#[derive(Debug)]
pub struct ConnectorError {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: Option<String>,
    pub source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl ConnectorError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hint: None,
            source: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    pub fn class(&self) -> ErrorClass {
        self.kind.class()
    }

    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }
}

impl fmt::Display for ConnectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

impl StdError for ConnectorError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connection_availability_and_contention_are_retried() {
        assert!(ConnectorError::new(ErrorKind::Connection, "x").is_transient());
        assert!(ConnectorError::new(ErrorKind::Contention, "x").is_transient());
        assert!(!ConnectorError::new(ErrorKind::Constraint, "x").is_transient());
        assert!(!ConnectorError::new(ErrorKind::LogStorage, "x").is_transient());
    }

    #[test]
    fn all_lists_every_kind_once_in_declaration_order() {
        // a new kind fails to compile here until it has a place, and the
        // assertions fail until ALL has it at that place
        fn place(kind: ErrorKind) -> usize {
            match kind {
                ErrorKind::Connection => 0,
                ErrorKind::ServerUnavailable => 1,
                ErrorKind::Contention => 2,
                ErrorKind::LogStorage => 3,
                ErrorKind::Conversion => 4,
                ErrorKind::Constraint => 5,
                ErrorKind::Schema => 6,
                ErrorKind::Permission => 7,
                ErrorKind::ServerConfig => 8,
                ErrorKind::PositionLost => 9,
                ErrorKind::Protocol => 10,
                ErrorKind::Config => 11,
                ErrorKind::Internal => 12,
                ErrorKind::Fenced => 13,
            }
        }
        const LAST: ErrorKind = ErrorKind::Fenced;
        assert_eq!(
            ErrorKind::ALL.len(),
            place(LAST) + 1,
            "the last place is the last kind"
        );
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(place(*kind), i, "{kind:?}");
        }
        let labels: std::collections::BTreeSet<_> =
            ErrorKind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(labels.len(), ErrorKind::ALL.len());
    }

    #[test]
    fn display_says_what_why_and_fix() {
        let e = ConnectorError::new(ErrorKind::ServerConfig, "wal_level is replica")
            .with_hint("set wal_level=logical and restart PostgreSQL");
        assert_eq!(
            e.to_string(),
            "wal_level is replica; set wal_level=logical and restart PostgreSQL"
        );
    }
}

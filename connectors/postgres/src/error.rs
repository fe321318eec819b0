//! Mapping of PostgreSQL, driver and I/O errors to [`ConnectorError`]s: one
//! [`classify`] decides the [`ErrorKind`] (and a hint) from the SQLSTATE and
//! message, both for the replication connection and for tokio-postgres.

use std::io;

use callosum_api::{ConnectorError, ErrorKind};

use crate::replication::ReplicationError;

/// The kind and, where Callosum knows it, the operator's fix for a server
/// error with SQLSTATE `code` and primary `message`.
pub fn classify(code: &str, message: &str) -> (ErrorKind, Option<&'static str>) {
    let lower = message.to_ascii_lowercase();
    if lower.contains("wal_level") {
        return (
            ErrorKind::ServerConfig,
            Some("logical decoding needs wal_level = logical: run `ALTER SYSTEM SET wal_level = logical` and restart PostgreSQL"),
        );
    }
    match code {
        // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections
        "57P01" | "57P02" | "57P03" | "53300" => (ErrorKind::ServerUnavailable, None),
        // object_in_use: the slot is active for another process
        "55006" => (
            ErrorKind::ServerUnavailable,
            Some("another process is using the replication slot; stop it (see pg_replication_slots.active_pid) or give this store its own slot"),
        ),
        // configuration_limit_exceeded: all slots or wal senders in use
        "53400" => (
            ErrorKind::ServerConfig,
            Some("raise max_replication_slots / max_wal_senders in postgresql.conf and restart, or drop unused slots"),
        ),
        "53000" | "53100" | "53200" => (ErrorKind::ServerUnavailable, None),
        "42501" => (
            ErrorKind::Permission,
            Some("grant the role what it lacks, e.g. `ALTER ROLE <user> REPLICATION`, `GRANT SELECT ON <table> TO <user>`; `callosum check` lists every missing privilege"),
        ),
        "28000" => (
            ErrorKind::Permission,
            Some("allow the connection in pg_hba.conf (a logical replication connection matches on the database name, not `replication`) and reload"),
        ),
        "28P01" => (
            ErrorKind::Permission,
            Some("check the user and password (password_env / password_file / url)"),
        ),
        "3D000" => (ErrorKind::Config, Some("check the database name in the url")),
        "55P03" => (ErrorKind::Contention, Some(callosum_api::LOCK_TIMEOUT_HINT)),
        "40001" | "40P01" => (ErrorKind::Contention, None),
        // undefined_object: the slot or publication was dropped
        "42704" if lower.contains("replication slot") => (
            ErrorKind::PositionLost,
            Some("the replication slot is gone; changes since the last acknowledged position are lost: re-snapshot the tables"),
        ),
        "42704" => (ErrorKind::Schema, None),
        "58P01" if lower.contains("already been removed") => (
            ErrorKind::PositionLost,
            Some("the WAL needed to resume was removed; re-snapshot the tables"),
        ),
        "55000" if lower.contains("invalidated") || lower.contains("cannot read from logical replication slot") => (
            ErrorKind::PositionLost,
            Some("the replication slot was invalidated (max_slot_wal_keep_size); drop it and re-snapshot the tables"),
        ),
        "55000" => (ErrorKind::ServerConfig, None),
        "0A000" => (ErrorKind::ServerConfig, None),
        c if c.starts_with("08") => (ErrorKind::Connection, None),
        c if c.starts_with("42") => (ErrorKind::Schema, None),
        c if c.starts_with("22") => (ErrorKind::Conversion, None),
        c if c.starts_with("23") => (ErrorKind::Constraint, None),
        _ => (ErrorKind::Protocol, None),
    }
}

fn io_kind(_err: &io::Error) -> ErrorKind {
    // Refused, reset, aborted, EOF, timed out, broken pipe: all mean the
    // connection is gone and a reconnect may help.
    ErrorKind::Connection
}

/// Converts a replication connection error, `context` saying what was being
/// done (`"start replication"`).
pub fn from_replication(store: &str, context: &str, err: ReplicationError) -> ConnectorError {
    match err {
        ReplicationError::Server(e) => {
            let (kind, hint) = classify(&e.code, &e.message);
            let mut out = ConnectorError::new(
                kind,
                format!(
                    "postgres store `{store}`: {context} failed: {} ({})",
                    e.message, e.code
                ),
            );
            if let Some(h) = hint.map(str::to_string).or(e.hint.clone()) {
                out = out.with_hint(h);
            }
            out
        }
        ReplicationError::Io(e) => ConnectorError::new(
            io_kind(&e),
            format!("postgres store `{store}`: {context} failed: connection lost"),
        )
        .with_source(e),
        ReplicationError::StreamEnded => ConnectorError::new(
            ErrorKind::Connection,
            format!("postgres store `{store}`: {context} failed: the server ended the replication stream"),
        ),
        ReplicationError::Config(m) => ConnectorError::new(
            ErrorKind::Config,
            format!("postgres store `{store}`: {m}"),
        ),
        ReplicationError::Auth(m) => ConnectorError::new(
            ErrorKind::Permission,
            format!("postgres store `{store}`: authentication failed: {m}"),
        ),
        ReplicationError::TlsRefused => crate::tls::tls_refused(store),
        ReplicationError::Tls(e) => crate::tls::tls_failure(store, &e),
        e @ ReplicationError::Protocol(_) => ConnectorError::new(
            ErrorKind::Protocol,
            format!("postgres store `{store}`: {context} failed: {e}"),
        ),
    }
}

/// Converts a tokio-postgres error.
pub fn from_sql(store: &str, context: &str, err: tokio_postgres::Error) -> ConnectorError {
    if let Some(db) = err.as_db_error() {
        let (kind, hint) = classify(db.code().code(), db.message());
        let message = format!(
            "postgres store `{store}`: {context} failed: {} ({})",
            db.message(),
            db.code().code()
        );
        let hint = hint.map(str::to_string).or(db.hint().map(str::to_string));
        let mut out = ConnectorError::new(kind, message);
        if let Some(h) = hint {
            out = out.with_hint(h);
        }
        return out;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    let mut is_io = err.is_closed();
    while let Some(s) = source {
        is_io |= s.is::<io::Error>();
        source = s.source();
    }
    let text = err.to_string();
    let kind = if is_io
        || text.starts_with("error connecting")
        || text.starts_with("timeout")
        || text.starts_with("error communicating")
    {
        ErrorKind::Connection
    } else if text.contains("password missing") {
        ErrorKind::Config
    } else {
        ErrorKind::Protocol
    };
    ConnectorError::new(kind, format!("postgres store `{store}`: {context} failed"))
        .with_source(err)
}

/// Whether the server's primary message for SQLSTATE `code` may quote a
/// row value (class 22, data exceptions: `invalid input syntax for type
/// integer: "…"`, `value "…" is out of range …`). Constraint violations
/// (class 23) name the constraint in the message and keep values in the
/// detail, which is never passed on.
pub fn message_may_hold_values(code: &str) -> bool {
    code.starts_with("22")
}

/// Converts a tokio-postgres error from a connection that writes row values
/// (the sink): like [`from_sql`], but a server message that may quote a
/// value is replaced by its SQLSTATE, so the error never carries row values.
pub fn from_sql_without_values(
    store: &str,
    context: &str,
    err: tokio_postgres::Error,
) -> ConnectorError {
    let Some(db) = err.as_db_error() else {
        return from_sql(store, context, err);
    };
    let code = db.code().code();
    if !message_may_hold_values(code) {
        return from_sql(store, context, err);
    }
    let (kind, hint) = classify(code, db.message());
    let mut out = ConnectorError::new(
        kind,
        format!(
            "postgres store `{store}`: {context} failed: a value the target column cannot hold ({code})"
        ),
    );
    if let Some(h) = hint {
        out = out.with_hint(h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_sqlstates() {
        assert_eq!(
            classify("57P01", "terminating").0,
            ErrorKind::ServerUnavailable
        );
        assert_eq!(
            classify("57P03", "starting up").0,
            ErrorKind::ServerUnavailable
        );
        assert_eq!(
            classify("53300", "too many").0,
            ErrorKind::ServerUnavailable
        );
        assert_eq!(
            classify("42501", "permission denied").0,
            ErrorKind::Permission
        );
        assert_eq!(
            classify("55006", "slot active").0,
            ErrorKind::ServerUnavailable
        );
        let (kind, hint) = classify("55000", "logical decoding requires wal_level >= logical");
        assert_eq!(kind, ErrorKind::ServerConfig);
        assert!(hint
            .unwrap()
            .contains("ALTER SYSTEM SET wal_level = logical"));
        assert_eq!(
            classify("42704", "replication slot \"s\" does not exist").0,
            ErrorKind::PositionLost
        );
        assert_eq!(classify("08006", "x").0, ErrorKind::Connection);
        assert_eq!(classify("40P01", "deadlock").0, ErrorKind::Contention);
        assert_eq!(classify("40001", "serialization").0, ErrorKind::Contention);
        assert_eq!(
            classify("55P03", "lock not available").0,
            ErrorKind::Contention
        );
        assert_eq!(classify("23505", "duplicate key").0, ErrorKind::Constraint);
        assert_eq!(classify("23502", "null value").0, ErrorKind::Constraint);
        assert_eq!(classify("22001", "too long").0, ErrorKind::Conversion);
        assert_eq!(classify("22P02", "invalid input").0, ErrorKind::Conversion);
        assert_eq!(classify("42P01", "no such table").0, ErrorKind::Schema);
        assert_eq!(classify("42703", "no such column").0, ErrorKind::Schema);
        assert!(message_may_hold_values("22P02"));
        assert!(!message_may_hold_values("23505"));
    }

    #[test]
    fn io_errors_are_connection_errors() {
        let e = from_replication(
            "crm",
            "read",
            ReplicationError::Io(io::ErrorKind::ConnectionReset.into()),
        );
        assert_eq!(e.kind, ErrorKind::Connection);
        assert!(e.to_string().contains("crm"));
    }
}

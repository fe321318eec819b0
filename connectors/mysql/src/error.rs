//! The one place that maps mysql_async errors to [`ErrorKind`]s.

use callosum_api::{ConnectorError, ErrorKind};
use mysql_async::{DriverError, Error};

/// Classifies a server error code.
///
/// Transient: 1213 deadlock and 1205 lock wait timeout (`Contention`), 1040
/// too many connections, 1203 user connection limit, 1053 shutdown in
/// progress (`ServerUnavailable`), 2002/2003/2006/2013 and killed or timed-out
/// connections (`Connection`). Everything else is permanent.
pub fn kind_of_code(code: u16) -> ErrorKind {
    match code {
        1205 | 1213 => ErrorKind::Contention,
        1040 | 1053 | 1203 => ErrorKind::ServerUnavailable,
        2002 | 2003 | 2006 | 2013 | 1927 | 4031 => ErrorKind::Connection,
        1062 | 1451 | 1452 | 1048 | 1364 | 3819 | 4025 => ErrorKind::Constraint,
        1264 | 1406 | 1366 | 1292 | 1265 | 1367 => ErrorKind::Conversion,
        1146 | 1054 | 1049 | 1051 => ErrorKind::Schema,
        1142 | 1143 | 1044 | 1045 | 1227 | 1370 => ErrorKind::Permission,
        _ => ErrorKind::Protocol,
    }
}

/// Whether the server's message for `code` may quote row values (for
/// example `Duplicate entry '42' for key …`). Such messages are not passed on.
fn message_may_hold_values(code: u16) -> bool {
    matches!(
        code,
        1062 | 1366 | 1292 | 1367 | 1265 | 1264 | 1406 | 3819 | 4025
    )
}

/// Turns a driver error into a [`ConnectorError`] whose message says what
/// Callosum was doing (`doing`, e.g. `applying a batch to erp.orders`) in
/// which store. Never contains row values: server messages that may quote
/// values are replaced by their code.
pub fn classify(err: Error, store: &str, doing: &str) -> ConnectorError {
    match err {
        Error::Server(server) => {
            let kind = kind_of_code(server.code);
            let text = if message_may_hold_values(server.code) {
                format!(
                    "{doing} in store `{store}` failed: server error {} ({}){}",
                    server.code,
                    server.state,
                    describe(server.code)
                )
            } else {
                format!(
                    "{doing} in store `{store}` failed: server error {} ({}): {}",
                    server.code, server.state, server.message
                )
            };
            let e = ConnectorError::new(kind, text);
            match kind {
                ErrorKind::Permission => e.with_hint(
                    "grant the user SELECT, INSERT, UPDATE, DELETE on the target tables and \
                     CREATE, SELECT, INSERT, UPDATE on callosum_checkpoint (see `callosum check`)",
                ),
                ErrorKind::Schema => {
                    e.with_hint("create the missing table or column in the target, then restart")
                }
                ErrorKind::Contention if server.code == 1205 => {
                    e.with_hint(callosum_api::LOCK_TIMEOUT_HINT)
                }
                _ => e,
            }
        }
        Error::Io(io) => ConnectorError::new(
            ErrorKind::Connection,
            format!("{doing} in store `{store}` failed: connection error"),
        )
        .with_source(io),
        Error::Driver(driver) => {
            let kind = match driver {
                DriverError::ConnectionClosed | DriverError::PoolDisconnected => {
                    ErrorKind::Connection
                }
                _ => ErrorKind::Protocol,
            };
            ConnectorError::new(kind, format!("{doing} in store `{store}` failed"))
                .with_source(driver)
        }
        Error::Url(_) => ConnectorError::new(
            ErrorKind::Config,
            format!("the url of store `{store}` is not a valid mysql url"),
        )
        .with_hint("expected mysql://user@host:port/database"),
        Error::Other(other) => ConnectorError::new(
            ErrorKind::Protocol,
            format!("{doing} in store `{store}` failed: {other}"),
        ),
    }
}

fn describe(code: u16) -> &'static str {
    match code {
        1062 => ": duplicate key",
        1366 | 1367 | 1292 | 1265 => ": a value the target column cannot hold",
        1264 => ": value out of range for a target column",
        1406 => ": value too long for a target column",
        3819 | 4025 => ": check constraint violated",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_async::ServerError;

    fn server(code: u16, message: &str) -> Error {
        Error::Server(ServerError {
            code,
            message: message.into(),
            state: "23000".into(),
        })
    }

    #[test]
    fn codes_map_to_kinds() {
        use ErrorKind::*;
        for (code, kind) in [
            (1213, Contention),
            (1205, Contention),
            (1040, ServerUnavailable),
            (1053, ServerUnavailable),
            (2002, Connection),
            (2003, Connection),
            (2006, Connection),
            (2013, Connection),
            (1062, Constraint),
            (1451, Constraint),
            (1452, Constraint),
            (1048, Constraint),
            (3819, Constraint),
            (1264, Conversion),
            (1406, Conversion),
            (1146, Schema),
            (1054, Schema),
            (1142, Permission),
            (1044, Permission),
            (1045, Permission),
        ] {
            assert_eq!(kind_of_code(code), kind, "{code}");
        }
        assert!(kind_of_code(1213).class() == callosum_api::ErrorClass::Transient);
    }

    #[test]
    fn value_bearing_messages_are_dropped() {
        let e = classify(
            server(1062, "Duplicate entry 'secret-42' for key 'PRIMARY'"),
            "erp",
            "applying a batch",
        );
        assert_eq!(e.kind, ErrorKind::Constraint);
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(e.to_string().contains("1062"));
        let e = classify(
            server(1146, "Table 'erp.x' doesn't exist"),
            "erp",
            "applying",
        );
        assert_eq!(e.kind, ErrorKind::Schema);
        assert!(e.to_string().contains("erp.x"));
    }

    #[test]
    fn io_errors_are_connection_errors() {
        let e = classify(
            Error::Io(mysql_async::IoError::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            ))),
            "erp",
            "committing",
        );
        assert_eq!(e.kind, ErrorKind::Connection);
        assert!(e.is_transient());
    }
}

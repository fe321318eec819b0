//! MySQL/MariaDB connector for Callosum: the sink ([`MySqlSink`]) and its
//! `check` ([`check_target`]); the binlog source ([`MySqlSource`]) and its
//! `check` ([`check_source`]).
//!
//! The sink applies batches planned by [`callosum_api::batch`] as multi-row
//! `INSERT … ON DUPLICATE KEY UPDATE` and `DELETE … IN (…)` statements with
//! literals escaped for a `NO_BACKSLASH_ESCAPES` session, converting every
//! value to its target column's type as the catalog describes it.

mod binlog_event;
mod binlog_stream;
pub mod charset;
mod check;
pub mod convert;
pub mod error;
mod grants;
pub mod jsonb;
pub mod keys;
mod lease;
pub mod pg_text;
pub mod row_value;
mod sink;
mod source;
mod source_check;
mod statement;
mod stream_event;
mod time_zone;
mod tls;

pub use check::{check_key_collations, check_target};
pub use error::{classify, kind_of_code};
pub use lease::{MySqlLease, MySqlLeaseConfig};
pub use row_value::ZeroDates;
pub use sink::{
    redact_url, MySqlSink, MySqlSinkConfig, MAX_ROWS_PER_STATEMENT, MAX_STATEMENT_BYTES, SQL_MODE,
};
pub use source::{connect_sql, MySqlSource, MySqlSourceConfig, HEARTBEAT_PERIOD, READ_TIMEOUT};
pub use source_check::check_source;
pub use time_zone::parse_time_zone;

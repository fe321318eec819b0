//! MySQL/MariaDB connector for Callosum: the sink ([`MySqlSink`]) and its
//! `check` ([`check_target`]).
//!
//! The sink applies batches planned by [`callosum_api::batch`] as multi-row
//! `INSERT … ON DUPLICATE KEY UPDATE` and `DELETE … IN (…)` statements with
//! literals escaped for a `NO_BACKSLASH_ESCAPES` session, converting every
//! value to its target column's type as the catalog describes it.

mod check;
pub mod convert;
pub mod error;
mod sink;

pub use check::check_target;
pub use error::{classify, kind_of_code};
pub use sink::{
    redact_url, MySqlSink, MySqlSinkConfig, MAX_ROWS_PER_STATEMENT, MAX_STATEMENT_BYTES, SQL_MODE,
};

//! PostgreSQL connector for Callosum: a logical replication source
//! ([`PgSource`], streaming `pgoutput` over a thin replication client of
//! its own, [`replication`]) and the prerequisite check ([`check()`]).
//!
//! Layout:
//! - [`replication`]: the replication wire protocol (startup, auth,
//!   replication commands, CopyBoth, status updates);
//! - [`pgoutput`]: a pure decoder of pgoutput messages;
//! - [`text_value`]: text-format values to [`callosum_api::Value`];
//! - [`source`]: [`PgSource`], the [`callosum_api::Source`];
//! - [`check`](mod@check): `callosum check` for a PostgreSQL source store;
//! - [`error`]: the one place that classifies server and I/O errors.

pub mod check;
pub mod error;
pub mod pgoutput;
pub mod replication;
pub mod source;
mod stream;
pub mod text_value;

pub use check::check;
pub use error::classify;
pub use source::{PgSource, PgSourceConfig, DEFAULT_STATUS_INTERVAL};

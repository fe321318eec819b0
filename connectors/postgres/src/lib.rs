//! PostgreSQL connector for Callosum: a logical replication source
//! ([`PgSource`], streaming `pgoutput` over a thin replication client of
//! its own, [`replication`]) with its prerequisite check ([`check()`]), and
//! a sink ([`PgSink`]) with its own ([`check_target`]).
//!
//! Layout:
//! - [`replication`]: the replication wire protocol (startup, auth,
//!   replication commands, CopyBoth, status updates);
//! - [`pgoutput`]: a pure decoder of pgoutput messages;
//! - [`text_value`]: text-format values to [`callosum_api::Value`];
//! - [`source`]: [`PgSource`], the [`callosum_api::Source`];
//! - [`check`](mod@check): `callosum check` for a PostgreSQL source store;
//! - [`sink`]: [`PgSink`], the [`callosum_api::Sink`], with
//!   [`sink_convert`] (values to the target column's binary format) and
//!   [`check_target`] (`callosum check` for a PostgreSQL target store);
//! - [`error`]: the one place that classifies server and I/O errors.

pub mod check;
pub mod error;
pub mod lease;
pub mod pgoutput;
pub mod replication;
pub mod sink;
mod sink_check;
pub mod sink_convert;
pub mod source;
mod stream;
pub mod text_value;
mod tls;

pub use check::{advice, check};
pub use error::classify;
pub use lease::{take_over_slot, PgLease, PgLeaseConfig};
pub use sink::{ensure_checkpoint_table, PgSink, PgSinkConfig, UpsertStrategy};
pub use sink_check::check_target;
pub use source::{PgSource, PgSourceConfig, DEFAULT_READ_TIMEOUT, DEFAULT_STATUS_INTERVAL};

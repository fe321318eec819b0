//! The contract between Callosum's sources, its change log and its sinks.
//!
//! Every crate of the workspace speaks in these types: a source turns a store's
//! replication stream into [`SourceMessage`]s, the change log stores them as
//! [`ChangeEvent`]s grouped into committed transactions, and a sink applies
//! batches of whole transactions to its target store. The traits at each seam
//! ([`Source`], [`Sink`]) state their guarantees in their docs; the change log's
//! contract lives with the log itself in the agent crate, since only the agent
//! touches sled.

pub mod batch;
mod error;
pub mod lease;
pub mod mapping;
mod position;
pub mod table_map;
mod tls;
mod value;

pub use error::{ConnectorError, ErrorClass, ErrorKind};
pub use lease::{Acquired, Fence, LeaseHolder, LeaseStore, LEASE_TABLE};
pub use position::{Lsn, Position};
pub use tls::{TlsFailure, TlsMode, TlsSettings};
pub use value::{Interval, Value, ValueKind};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::future::Future;
use std::sync::Arc;

/// The name of the table, in every target store, that holds one row per
/// pipeline with the source position of the last applied transaction.
pub const CHECKPOINT_TABLE: &str = "callosum_checkpoint";

/// The name of the table, in every target store next to
/// [`CHECKPOINT_TABLE`], that holds each pipeline's dead letters: rows
/// `(pipeline, id, part, payload)`, the payload opaque bytes the agent
/// encodes. The durable home of a pipeline's dead-letter queue (the agent's
/// `data_dir` holds a working copy), so that a lost `data_dir` loses none.
/// No pipeline captures it.
pub const DEAD_LETTER_TABLE: &str = "callosum_dead_letter";

/// The largest payload of one [`DEAD_LETTER_TABLE`] row (1 MiB): one
/// statement with it stays below the default `max_allowed_packet` of every
/// MariaDB/MySQL server in use (16 MiB on MariaDB 10.2+, 64 MiB on MySQL 8,
/// 4 MiB on MySQL 5.7, where a 4 MiB payload plus its statement would not
/// fit).
pub const MAX_DEAD_LETTER_PART_BYTES: usize = 1 << 20;

/// The pipeline whose dead letters a sink with checkpoint row
/// `checkpoint_key` reads and writes: `<pipeline>` for the pipeline's own
/// sink and for its dead-letter replay's (`<pipeline>/dead_letters`).
pub fn dead_letter_owner(checkpoint_key: &str) -> &str {
    checkpoint_key
        .split_once('/')
        .map_or(checkpoint_key, |(p, _)| p)
}

/// The pipelines that write into a captured store whose own writes the store's
/// source keeps instead of dropping as echo: checkpoint-row pipeline name →
/// the pipeline's source store (the transaction's [`TransactionMeta::origin`]).
/// A Callosum write of a pipeline not listed here is dropped whole, as every
/// echo is between two stores.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EchoOrigins(std::collections::BTreeMap<String, String>);

impl EchoOrigins {
    pub fn new(pipelines: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(pipelines.into_iter().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The origin store of a transaction that wrote the checkpoint row keyed
    /// `checkpoint_key` (`<pipeline>`, or `<pipeline>/dead_letters` for a
    /// dead-letter replay); `None`: drop the transaction as echo.
    pub fn origin_of(&self, checkpoint_key: &str) -> Option<&str> {
        self.0
            .get(dead_letter_owner(checkpoint_key))
            .map(String::as_str)
    }
}

/// A table as its store names it: `schema.table` on PostgreSQL,
/// `database.table` on MySQL/MariaDB.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableId {
    /// PostgreSQL schema or MySQL database.
    pub namespace: String,
    pub name: String,
}

impl TableId {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses `ns.table`, or a bare `table` in `default_namespace`.
    pub fn parse(text: &str, default_namespace: &str) -> Self {
        match text.split_once('.') {
            Some((ns, name)) => Self::new(ns, name),
            None => Self::new(default_namespace, text),
        }
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.namespace, self.name)
    }
}

/// The shape of a captured table as the source saw it when the change was
/// made. Shared between the events of a transaction through an [`Arc`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableSchema {
    pub table: TableId,
    pub columns: Vec<ColumnSchema>,
}

impl TableSchema {
    /// Indexes of the key columns (the replica identity / primary key), in
    /// column order.
    pub fn key_indexes(&self) -> Vec<usize> {
        self.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_key)
            .map(|(i, _)| i)
            .collect()
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSchema {
    pub name: String,
    /// The source's own type name (`int8`, `numeric`, `varchar`, …), for
    /// error messages and conversions that need it.
    pub source_type: String,
    pub is_key: bool,
}

/// One row: values in the column order of its [`TableSchema`].
pub type Row = Vec<Value>;

/// One row change of a committed source transaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RowChange {
    Insert {
        row: Row,
    },
    /// `old_key` holds the key columns' old values (in column order, other
    /// columns [`Value::Null`]) when the update changed the key, `None`
    /// otherwise. Columns of `row` may be [`Value::Unchanged`].
    Update {
        old_key: Option<Row>,
        row: Row,
    },
    /// `key` holds at least the key columns (others may be [`Value::Null`]).
    Delete {
        key: Row,
    },
    Truncate,
}

/// A row change with the table it belongs to. Held in the change log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub schema: Arc<TableSchema>,
    pub change: RowChange,
}

/// Metadata of a committed source transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionMeta {
    /// The position identifying this transaction, strictly increasing in
    /// commit order within one source store. Sinks store it as their
    /// checkpoint and skip every transaction at or below it.
    pub position: Position,
    /// The position the source may acknowledge upstream once this
    /// transaction is durable in the change log (for PostgreSQL the end LSN of
    /// the commit record; the place to resume from).
    pub resume_position: Position,
    /// Commit time at the source, microseconds since the Unix epoch.
    pub commit_time_micros: i64,
    /// The store this transaction first came from when Callosum itself wrote
    /// it into this source (read from the checkpoint row it carries), `None`
    /// for the application's own writes. A sink skips transactions that
    /// originated in its own target store (no echo, design.md §3).
    pub origin: Option<String>,
}

/// What a [`Source`] yields, in source commit order.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceMessage {
    /// A transaction starts. Its changes follow, then [`SourceMessage::Commit`].
    Begin,
    Change(ChangeEvent),
    /// The transaction begun last is committed.
    Commit(TransactionMeta),
    /// The transaction begun last is discarded (for example Callosum's own
    /// write, recognised by a change to [`CHECKPOINT_TABLE`], or a
    /// transaction the log already holds). Nothing of it reaches the log.
    Discard {
        resume_position: Position,
    },
    /// Nothing is in flight and the store's stream has advanced to this
    /// position with nothing for us (idle captured tables): once every
    /// earlier transaction is durable, the source may acknowledge it.
    Progress(Position),
}

/// A captured store's stream of committed transactions.
///
/// Guarantees:
/// - messages come in source commit order; a transaction is
///   `Begin`, its changes, then `Commit` (or `Discard`), never interleaved;
/// - [`Source::acknowledge`] is the only way the source tells its store that
///   it may forget history. The caller must call it only with positions the
///   change log has durably flushed; the source never acknowledges on its own;
/// - after a restart from `resume_from`, transactions with a position at or
///   below it are not yielded (or yielded as `Discard`).
pub trait Source: Send {
    /// Next message; waits for the store. Cancel-safe: dropping the future
    /// loses no message that was not yet returned.
    fn next(&mut self) -> impl Future<Output = Result<SourceMessage, ConnectorError>> + Send;

    /// Tells the store that everything up to `position` (a `resume_position`
    /// or `Progress` position) is durable downstream.
    fn acknowledge(
        &mut self,
        position: &Position,
    ) -> impl Future<Output = Result<(), ConnectorError>> + Send;
}

/// A target store that applies whole source transactions exactly once.
///
/// Guarantees:
/// - [`Sink::checkpoint`] returns the position written by the last committed
///   [`Sink::commit`] (or `None` for a new pipeline);
/// - between [`Sink::begin`] and [`Sink::commit`] nothing is visible in the
///   target; the checkpoint row is the first row written in the target
///   transaction and commits atomically with the data;
/// - on error the target transaction is rolled back: the caller retries the
///   same batch from `begin`;
/// - the pipeline's dead letters live in [`DEAD_LETTER_TABLE`] (created on
///   connect next to the checkpoint table), keyed by
///   [`dead_letter_owner`] of the checkpoint key, so a replay's sink sees
///   the pipeline's dead letters. A dead letter is written and removed only
///   inside a target transaction that also writes a checkpoint row, so it
///   commits (or not) with the checkpoint that moves past it (or with its
///   replay); [`Sink::discard_dead_letters`] is the one exception.
pub trait Sink: Send {
    /// The checkpoint position stored in the target for this pipeline.
    fn checkpoint(
        &mut self,
    ) -> impl Future<Output = Result<Option<Position>, ConnectorError>> + Send;

    /// Starts a target transaction and writes the checkpoint row.
    fn begin(
        &mut self,
        checkpoint: &Position,
    ) -> impl Future<Output = Result<(), ConnectorError>> + Send;

    /// Applies changes inside the open target transaction. May be called
    /// several times (a large source transaction is applied in chunks).
    fn apply(
        &mut self,
        events: &[ChangeEvent],
    ) -> impl Future<Output = Result<(), ConnectorError>> + Send;

    /// Commits the target transaction.
    fn commit(&mut self) -> impl Future<Output = Result<(), ConnectorError>> + Send;

    /// Rolls back the open target transaction, if any.
    fn rollback(&mut self) -> impl Future<Output = Result<(), ConnectorError>> + Send;

    /// Inside the open target transaction: stores `payload` (at most
    /// [`MAX_DEAD_LETTER_PART_BYTES`]) as part `part` of the pipeline's dead
    /// letter `id`, replacing what that part held.
    fn store_dead_letter_part(
        &mut self,
        id: u64,
        part: u32,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), ConnectorError>> + Send;

    /// Inside the open target transaction: deletes every part of the
    /// pipeline's dead letter `id` (nothing when there is none).
    fn remove_dead_letter(
        &mut self,
        id: u64,
    ) -> impl Future<Output = Result<(), ConnectorError>> + Send;

    /// Outside a target transaction: the ids of the pipeline's stored dead
    /// letters, ascending.
    fn dead_letter_ids(&mut self) -> impl Future<Output = Result<Vec<u64>, ConnectorError>> + Send;

    /// Outside a target transaction: part `part` of the pipeline's dead
    /// letter `id`, `None` when the target holds no such part.
    fn dead_letter_part(
        &mut self,
        id: u64,
        part: u32,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, ConnectorError>> + Send;

    /// Outside a target transaction: deletes the pipeline's dead letters
    /// `ids` in a target transaction of its own, without a checkpoint row
    /// (nothing is applied; the table is captured by no pipeline, so the
    /// delete reaches no source). Durable when it returns.
    fn discard_dead_letters(
        &mut self,
        ids: &[u64],
    ) -> impl Future<Output = Result<(), ConnectorError>> + Send;

    /// Reads the target tables of the source tables `tables` from the
    /// catalog again, outside a target transaction, and forgets what was
    /// cached about those that changed. Returns whether any changed: the
    /// apply loop then retries, once, a batch the target refused with a
    /// [`ErrorKind::Schema`] or [`ErrorKind::Conversion`] error, because
    /// the operator may have altered the target while the sink ran (a
    /// column widened, dropped and added with another type). The default
    /// caches nothing: `false`.
    fn refresh_targets(
        &mut self,
        tables: &[TableId],
    ) -> impl Future<Output = Result<bool, ConnectorError>> + Send {
        let _ = tables;
        async { Ok(false) }
    }
}

/// How long a sink's statement waits for a row or table lock that another
/// transaction in the target holds (an application's transaction left
/// open, a `LOCK TABLE`) before it fails with [`ErrorKind::Contention`]:
/// the batch is rolled back and retried with backoff, and the pipeline
/// shows `retrying` with the reason instead of waiting without a sign.
pub const TARGET_LOCK_TIMEOUT_SECONDS: u64 = 10;

/// The hint of a lock wait that timed out in a target.
pub const LOCK_TIMEOUT_HINT: &str = "another transaction in the target holds a lock on rows or tables this batch writes (an application's transaction left open, a LOCK TABLE); the batch is retried until the lock is released";

/// A prerequisite that `callosum check` found missing: what is wrong and how
/// the operator fixes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckProblem {
    /// The store (config name) the problem is in.
    pub store: String,
    /// What is wrong, e.g. `wal_level is replica`.
    pub problem: String,
    /// How to fix it, e.g. `set wal_level = logical in postgresql.conf and restart`.
    pub fix: String,
}

impl fmt::Display for CheckProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {}\n    fix: {}",
            self.store, self.problem, self.fix
        )
    }
}

/// A risk that `callosum check` points out without failing: the set-up
/// works today, and this is what would make it fail later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckAdvice {
    /// The store (config name) the advice is about.
    pub store: String,
    /// What could go wrong, e.g. `max_slot_wal_keep_size is unlimited`.
    pub risk: String,
    /// What the operator can do about it.
    pub advice: String,
}

impl fmt::Display for CheckAdvice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {}\n    advice: {}",
            self.store, self.risk, self.advice
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_origins_name_the_pipelines_source_store_also_for_replays() {
        let origins = EchoOrigins::new([("erp_to_crm".to_string(), "erp".to_string())]);
        assert_eq!(origins.origin_of("erp_to_crm"), Some("erp"));
        assert_eq!(origins.origin_of("erp_to_crm/dead_letters"), Some("erp"));
        assert_eq!(origins.origin_of("crm_to_erp"), None);
    }

    #[test]
    fn a_replay_sink_owns_its_pipelines_dead_letters() {
        assert_eq!(dead_letter_owner("erp_to_crm"), "erp_to_crm");
        assert_eq!(dead_letter_owner("erp_to_crm/dead_letters"), "erp_to_crm");
    }
}

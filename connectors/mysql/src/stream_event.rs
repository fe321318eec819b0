//! What the binlog stream state machine ([`crate::binlog_stream`]) reads:
//! events as `binlog_event.rs` decodes them, without I/O, and the catalog
//! facts the caller looks up for a table map.

use std::collections::HashSet;

use callosum_api::{Position, TableId};

use crate::row_value::ColumnDef;

/// What every event header says that the stream needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// Seconds since the Unix epoch.
    pub timestamp: u32,
    /// The offset just past this event in the current binlog file; 0 for
    /// artificial events.
    pub log_pos: u64,
    pub event_size: u32,
}

/// A MariaDB GTID event: the start of a transaction (event group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MariaGtid {
    pub domain: u32,
    pub server: u32,
    pub sequence: u64,
    /// The group is one statement (DDL) without `BEGIN`/`COMMIT`.
    pub standalone: bool,
    /// The group ends with `XA PREPARE` (its rows may still roll back).
    pub prepared_xa: bool,
}

impl MariaGtid {
    pub fn position(&self) -> Position {
        Position::MariaGtid {
            domain: self.domain,
            server: self.server,
            sequence: self.sequence,
        }
    }
}

/// A table map with the metadata decoding needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableMap {
    pub table_id: u64,
    pub table: TableId,
    pub columns: Vec<ColumnDef>,
    /// Indexes of the primary key columns.
    pub primary_key: Vec<usize>,
    /// The map carried column names (`binlog_row_metadata=FULL`).
    pub names_known: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowsKind {
    Write,
    Update,
    Delete,
}

/// A WRITE/UPDATE/DELETE_ROWS event (v1 or v2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowsEvent {
    pub kind: RowsKind,
    pub table_id: u64,
    /// Columns in the before image (update, delete).
    pub before: Vec<bool>,
    /// Columns in the after image (write, update).
    pub after: Vec<bool>,
    /// The row images.
    pub data: Vec<u8>,
}

/// A binlog event as the stream state understands it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// The stream continues in `file` (artificial or real rotate).
    Rotate {
        file: String,
    },
    MariaGtid(MariaGtid),
    /// `Query BEGIN`.
    Begin,
    /// `XID`, `Query COMMIT` (MyISAM), `Query ROLLBACK` (non-transactional
    /// changes that stay), `XA COMMIT … ONE PHASE` (and a one-phase
    /// `XA_PREPARE` event).
    Commit,
    /// `TRUNCATE [TABLE] t`: every row of `t` goes.
    Truncate(TableId),
    /// A row change logged as statement text (`binlog_format=STATEMENT` or
    /// `MIXED` in some session); `table` is `None` when it cannot be told.
    StatementDml {
        verb: &'static str,
        table: Option<TableId>,
    },
    /// `XA START xid` (MySQL): an XA transaction begins; its changes are
    /// held until its group ends.
    XaStart,
    /// `XA_PREPARE` event: the XA transaction's group ends prepared; its
    /// changes wait for `XA COMMIT`/`XA ROLLBACK` of `xid` in a later group.
    XaPrepare {
        xid: String,
    },
    /// `XA COMMIT xid` (`commit`) or `XA ROLLBACK xid` of a prepared XA
    /// transaction: a group of its own.
    XaEnd {
        xid: String,
        commit: bool,
    },
    /// Any other statement (DDL, `SAVEPOINT`, …).
    Statement,
    TableMap(TableMap),
    Rows(RowsEvent),
    /// The server is idle; `file` is its current binlog file.
    Heartbeat {
        file: Option<String>,
    },
    /// Events with no bearing on transactions (format description, GTID
    /// list, binlog checkpoint, annotate rows, …).
    Ignored,
}

/// Which kind of [`Position`] the stream yields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PositionKind {
    /// MariaDB GTIDs of one replication domain.
    Gtid,
    /// Binlog file and offset of the end of each transaction.
    File,
}

/// Catalog facts about a captured table that the binlog cannot tell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refinement {
    /// Columns declared `tinyint(1)`.
    pub tiny1: HashSet<String>,
    /// Text columns holding JSON (MariaDB `json`, a `json_valid` check).
    pub json: HashSet<String>,
}

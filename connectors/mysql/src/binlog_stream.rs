//! The pure part of [`crate::MySqlSource`]: turns decoded binlog events into
//! [`SourceMessage`]s — transaction framing (MariaDB GTID / `BEGIN` to `XID`
//! or `COMMIT`), positions, echo suppression, resume filtering, the table
//! map cache and row decoding. No I/O: the catalog look-up a captured
//! table's map needs (`tinyint(1)`, MariaDB `json`) is done by the caller
//! between [`StreamState::pending_table`] and [`StreamState::install_table`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use callosum_api::{
    ChangeEvent, ColumnSchema, ConnectorError, EchoOrigins, ErrorKind, Position, Row, RowChange,
    SourceMessage, TableId, TableSchema, TransactionMeta, Value, CHECKPOINT_TABLE,
};
use tracing::{debug, info};

use crate::row_value::{decode_image_with, ColumnDef, Image, ValueError, ZeroDates};
pub use crate::stream_event::{
    EventHeader, MariaGtid, PositionKind, Refinement, RowsEvent, RowsKind, StreamEvent, TableMap,
};

struct TableState {
    schema: Arc<TableSchema>,
    columns: Vec<ColumnDef>,
    captured: bool,
    checkpoint: bool,
    names_known: bool,
}

struct Txn {
    gtid: Option<MariaGtid>,
    standalone: bool,
    /// An XA transaction (MariaDB GTID flagged prepared, or `XA START`): its
    /// changes go to `held` until the group ends.
    xa: bool,
    held: Vec<ChangeEvent>,
    /// The resume position before this group ([`StreamState::reported`]
    /// when it began).
    since: Option<Position>,
    /// Nothing more of it is yielded; it ends with `Discard`.
    discard: bool,
    /// It is at or before the resume position (its changes were not read).
    before_resume: bool,
    changes: u64,
    /// The store a Callosum-applied transaction came from (its checkpoint
    /// row names a pipeline of [`StreamState::echo_origins`]).
    origin: Option<String>,
}

/// Stream state of one binlog connection.
pub struct StreamState {
    store: String,
    zero_dates: ZeroDates,
    /// The store's `time_zone` for DATETIME columns; `None` is UTC.
    time_zone: Option<chrono_tz::Tz>,
    tables: HashSet<TableId>,
    kind: PositionKind,
    resume_from: Option<Position>,
    /// The current binlog file.
    file: String,
    /// The GTID domain of the stream (GTID positions order within one).
    domain: Option<u32>,
    /// The last GTID this connection sent: within a domain, sequences only
    /// grow.
    last_gtid: Option<MariaGtid>,
    by_id: HashMap<u64, TableState>,
    schemas: HashMap<TableId, Arc<TableSchema>>,
    /// Per table: the column names of the map the refinement was looked up
    /// for, and the refinement.
    refinements: HashMap<TableId, (Vec<String>, Refinement)>,
    pending: Option<TableMap>,
    /// A `TRUNCATE` of a captured table whose schema the stream has not
    /// seen yet: the caller reads it from the catalog and calls
    /// [`StreamState::resolve_truncate`].
    pending_truncate: Option<(EventHeader, TableId)>,
    txn: Option<Txn>,
    out: VecDeque<SourceMessage>,
    /// The last position yielded (Commit, Discard, Progress) or resumed from.
    reported: Option<Position>,
    /// Callosum's writes to keep, tagged with their origin, instead of
    /// dropping them as echo.
    echo_origins: EchoOrigins,
    /// The change log's newest committed transaction: transactions at or
    /// below it are re-sent after a restart that resumed before a prepared
    /// XA transaction, and end as `Discard`.
    logged_through: Option<Position>,
    /// Prepared XA transactions waiting for `XA COMMIT`/`XA ROLLBACK`, in
    /// prepare order.
    prepared: Vec<PreparedXa>,
}

/// A prepared XA transaction whose `XA COMMIT` or `XA ROLLBACK` has not
/// come yet.
struct PreparedXa {
    xid: String,
    changes: Vec<ChangeEvent>,
    origin: Option<String>,
    /// The resume position before its prepare group: no resume position
    /// yielded passes it while the XA transaction is pending, so that a
    /// restart reads the prepare again.
    since: Option<Position>,
}

impl StreamState {
    /// `start` is where streaming starts when there is no `resume_from`
    /// (the server's current position): it is yielded as `Progress` first,
    /// so that a restart resumes there instead of at a newer "current".
    pub fn new(
        store: &str,
        zero_dates: ZeroDates,
        tables: &[TableId],
        kind: PositionKind,
        resume_from: Option<Position>,
        start: Option<Position>,
        file: &str,
    ) -> Self {
        let mut out = VecDeque::new();
        let mut reported = resume_from.clone();
        if resume_from.is_none() {
            if let Some(start) = start {
                out.push_back(SourceMessage::Progress(start.clone()));
                reported = Some(start);
            }
        }
        let domain = match (&resume_from, &reported) {
            (Some(Position::MariaGtid { domain, .. }), _)
            | (_, Some(Position::MariaGtid { domain, .. })) => Some(*domain),
            _ => None,
        };
        StreamState {
            store: store.to_string(),
            zero_dates,
            time_zone: None,
            tables: tables.iter().cloned().collect(),
            kind,
            resume_from,
            file: file.to_string(),
            domain,
            last_gtid: None,
            by_id: HashMap::new(),
            schemas: HashMap::new(),
            refinements: HashMap::new(),
            pending: None,
            pending_truncate: None,
            txn: None,
            out,
            reported,
            echo_origins: EchoOrigins::default(),
            logged_through: None,
            prepared: Vec::new(),
        }
    }

    /// The change log's newest committed transaction position: transactions
    /// at or below it (re-sent because the resume position stayed before a
    /// prepared XA transaction) end as `Discard`.
    pub fn set_logged_through(&mut self, position: Option<Position>) {
        self.logged_through = position;
    }

    /// Prepared XA transactions not yet committed or rolled back.
    #[cfg(test)]
    pub fn pending_xa(&self) -> usize {
        self.prepared.len()
    }

    /// `position`, or the resume position before the earliest pending
    /// prepared XA transaction when that is older.
    fn capped(&self, position: Position) -> Position {
        match self.prepared.iter().find_map(|p| p.since.as_ref()) {
            Some(since) if since.partial_cmp(&position).is_some_and(|o| o.is_lt()) => since.clone(),
            _ => position,
        }
    }

    fn is_logged(&self, position: &Position) -> bool {
        self.logged_through
            .as_ref()
            .is_some_and(|l| position.partial_cmp(l).is_some_and(|o| o.is_le()))
    }

    /// Keeps Callosum's writes of these pipelines, with their origin store.
    pub fn set_echo_origins(&mut self, echo_origins: EchoOrigins) {
        self.echo_origins = echo_origins;
    }

    /// The next message to yield.
    pub fn pop(&mut self) -> Option<SourceMessage> {
        self.out.pop_front()
    }

    /// The current binlog file.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// A captured table's map waiting for [`Self::install_table`] (kept
    /// here so that `next` stays cancel-safe).
    pub fn pending_table(&self) -> Option<&TableMap> {
        self.pending.as_ref()
    }

    pub fn err(&self, kind: ErrorKind, message: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::new(kind, format!("mysql store `{}`: {message}", self.store))
    }

    fn is_captured(&self, table: &TableId) -> bool {
        self.tables.contains(table)
    }

    fn needs_lookup(&self, map: &TableMap) -> bool {
        if !self.is_captured(&map.table) || map.table.name == CHECKPOINT_TABLE {
            return false;
        }
        let names: Vec<&str> = map.columns.iter().map(|c| c.name.as_str()).collect();
        match self.refinements.get(&map.table) {
            Some((known, _)) => known.iter().map(String::as_str).ne(names),
            None => true,
        }
    }

    /// Installs a table map (clearing the pending one) with the catalog's
    /// `refinement` (`None`: use the cached one, if it was looked up for the
    /// same column names). Keeps the table's schema `Arc` when its shape did
    /// not change.
    /// DATETIME columns hold local times of `zone` (`None`: UTC).
    pub fn set_time_zone(&mut self, zone: Option<chrono_tz::Tz>) {
        self.time_zone = zone;
    }

    pub fn install_table(&mut self, mut map: TableMap, refinement: Option<Refinement>) {
        for c in &mut map.columns {
            c.zone = self.time_zone;
        }
        let names: Vec<String> = map.columns.iter().map(|c| c.name.clone()).collect();
        if let Some(r) = refinement {
            self.refinements
                .insert(map.table.clone(), (names.clone(), r));
        }
        if let Some((known, r)) = self.refinements.get(&map.table) {
            if *known == names {
                for c in &mut map.columns {
                    c.tiny1 = r.tiny1.contains(&c.name);
                    c.json =
                        r.json.contains(&c.name) && c.charset != crate::row_value::BINARY_CHARSET;
                }
            }
        }
        let columns = map
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| ColumnSchema {
                name: c.name.clone(),
                source_type: c.source_type(),
                is_key: map.primary_key.contains(&i),
            })
            .collect();
        let schema = TableSchema {
            table: map.table.clone(),
            columns,
        };
        let schema = match self.schemas.get(&map.table) {
            Some(old) if **old == schema => old.clone(),
            old => {
                if old.is_some() {
                    info!(table = %map.table, "table definition changed");
                }
                let schema = Arc::new(schema);
                self.schemas.insert(map.table.clone(), schema.clone());
                schema
            }
        };
        let captured = self.is_captured(&map.table);
        let checkpoint = map.table.name == CHECKPOINT_TABLE;
        self.by_id.insert(
            map.table_id,
            TableState {
                schema,
                columns: map.columns,
                captured,
                checkpoint,
                names_known: map.names_known,
            },
        );
        self.pending = None;
    }

    fn position_at(&self, header: &EventHeader) -> Position {
        Position::Binlog {
            file: self.file.clone(),
            offset: header.log_pos,
        }
    }

    fn is_held(&self, position: &Position) -> bool {
        self.resume_from
            .as_ref()
            .is_some_and(|r| position.partial_cmp(r).is_some_and(|o| o.is_le()))
    }

    fn start_txn(&mut self, header: &EventHeader, gtid: Option<MariaGtid>) {
        let held = match (self.kind, &gtid) {
            (PositionKind::Gtid, Some(g)) => self.is_held(&g.position()),
            (PositionKind::File, _) if header.log_pos > 0 => {
                // A transaction that starts before the resume position is
                // already in the log.
                let start = Position::Binlog {
                    file: self.file.clone(),
                    offset: header.log_pos.saturating_sub(header.event_size.into()),
                };
                self.resume_from
                    .as_ref()
                    .is_some_and(|r| start.partial_cmp(r).is_some_and(|o| o.is_lt()))
            }
            _ => false,
        };
        self.txn = Some(Txn {
            gtid,
            standalone: gtid.is_some_and(|g| g.standalone),
            xa: gtid.is_some_and(|g| g.prepared_xa),
            held: Vec::new(),
            since: self.reported.clone(),
            discard: held,
            before_resume: held,
            changes: 0,
            origin: None,
        });
        self.out.push_back(SourceMessage::Begin);
    }

    fn finish_txn(&mut self, header: &EventHeader) -> Result<(), ConnectorError> {
        let Some(txn) = self.txn.take() else {
            debug!("commit outside a transaction");
            return Ok(());
        };
        let position = match (self.kind, txn.gtid) {
            (PositionKind::Gtid, Some(g)) => g.position(),
            (PositionKind::Gtid, None) => {
                return Err(self.err(
                    ErrorKind::Protocol,
                    "the server sent a transaction without a GTID on a GTID stream",
                ))
            }
            (PositionKind::File, _) => self.position_at(header),
        };
        let is_new = match &self.reported {
            Some(r) => position.partial_cmp(r) == Some(std::cmp::Ordering::Greater),
            None => true,
        };
        if txn.discard || txn.changes == 0 || !is_new || self.is_logged(&position) {
            let resume_position = if is_new {
                position
            } else {
                self.reported.clone().unwrap_or(position)
            };
            self.reported = Some(resume_position.clone());
            let resume_position = self.capped(resume_position);
            self.out
                .push_back(SourceMessage::Discard { resume_position });
        } else {
            self.reported = Some(position.clone());
            let resume_position = self.capped(position.clone());
            self.out.push_back(SourceMessage::Commit(TransactionMeta {
                position,
                resume_position,
                commit_time_micros: i64::from(header.timestamp) * 1_000_000,
                origin: txn.origin,
            }));
        }
        Ok(())
    }

    /// Handles one event; what it yields is queued for [`Self::pop`].
    pub fn handle(
        &mut self,
        header: &EventHeader,
        event: StreamEvent,
    ) -> Result<(), ConnectorError> {
        match event {
            StreamEvent::Rotate { file } => {
                if file != self.file {
                    debug!(file = %file, "binlog file rotated");
                }
                self.file = file;
                if self.txn.is_none() {
                    self.by_id.clear();
                }
            }
            StreamEvent::MariaGtid(g) => {
                if self.txn.is_some() {
                    return Err(self.err(
                        ErrorKind::Protocol,
                        "the server sent a GTID event inside a transaction",
                    ));
                }
                if self.kind == PositionKind::Gtid {
                    match self.domain {
                        None => self.domain = Some(g.domain),
                        Some(d) if d != g.domain => {
                            return Err(self
                                .err(
                                    ErrorKind::ServerConfig,
                                    format_args!(
                                        "the binlog holds GTIDs of replication domains {d} and {}; \
                                         Callosum orders GTID positions within one domain",
                                        g.domain
                                    ),
                                )
                                .with_hint(
                                    "use one gtid_domain_id for the captured server, or reset \
                                     this store's change log so that the source restarts with \
                                     binlog file positions",
                                ))
                        }
                        Some(_) => {}
                    }
                    if let Some(last) = self.last_gtid {
                        if last.domain == g.domain && g.sequence <= last.sequence {
                            return Err(self
                                .err(
                                    ErrorKind::PositionLost,
                                    format_args!(
                                        "the binlog's GTID sequence went backwards from {}-{}-{} \
                                         to {}-{}-{}; its transactions cannot be ordered after \
                                         the ones already replicated",
                                        last.domain,
                                        last.server,
                                        last.sequence,
                                        g.domain,
                                        g.server,
                                        g.sequence
                                    ),
                                )
                                .with_hint(
                                    "the server's GTIDs were reset or set by hand (gtid_seq_no, \
                                     RESET MASTER, a failover without GTID continuity); set \
                                     gtid_strict_mode=ON, then reset this store's change log and \
                                     resynchronise the tables from a snapshot",
                                ));
                        }
                    }
                    self.last_gtid = Some(g);
                }
                self.start_txn(header, Some(g));
            }
            StreamEvent::Begin => {
                if self.txn.is_none() {
                    self.start_txn(header, None);
                }
            }
            StreamEvent::Commit => {
                // a one-phase XA commit: its held changes are the
                // transaction's
                if let Some(t) = &mut self.txn {
                    for change in std::mem::take(&mut t.held) {
                        self.out.push_back(SourceMessage::Change(change));
                    }
                }
                self.finish_txn(header)?
            }
            StreamEvent::XaStart => {
                if self.txn.is_none() {
                    self.start_txn(header, None);
                }
                if let Some(t) = &mut self.txn {
                    t.xa = true;
                }
            }
            StreamEvent::XaPrepare { xid } => self.xa_prepare(header, xid)?,
            StreamEvent::XaEnd { xid, commit } => self.xa_end(header, xid, commit)?,
            StreamEvent::Truncate(table) => {
                if !self.is_captured(&table) {
                    return self.handle(header, StreamEvent::Statement);
                }
                match self.schemas.get(&table).cloned() {
                    Some(schema) => self.truncate(header, schema)?,
                    None => self.pending_truncate = Some((*header, table)),
                }
            }
            StreamEvent::StatementDml { verb, table } => {
                let captured = table.as_ref().is_none_or(|t| self.is_captured(t));
                let held = self.txn.as_ref().is_some_and(|t| t.discard);
                if captured && !held {
                    let what = match &table {
                        Some(t) => format!("table {t}"),
                        None => "a table it cannot name (multi-table statement)".to_string(),
                    };
                    return Err(self
                        .err(
                            ErrorKind::ServerConfig,
                            format_args!(
                                "the binlog holds an {verb} statement on {what} logged as \
                                 SQL text (statement-based binlog), which Callosum cannot \
                                 replicate row for row"
                            ),
                        )
                        .with_hint(
                            "set binlog_format=ROW globally and make sure no session overrides \
                             it (SET SESSION binlog_format); then resynchronise the table, since \
                             the change is not in the target",
                        ));
                }
                self.handle(header, StreamEvent::Statement)?;
            }
            StreamEvent::Statement => match &self.txn {
                Some(t) if t.standalone => self.finish_txn(header)?,
                Some(_) => {}
                None => {
                    // A statement outside any transaction (DDL without a
                    // GTID): the stream has moved past it.
                    if self.kind == PositionKind::File && header.log_pos > 0 {
                        let position = self.position_at(header);
                        self.progress(position);
                    }
                }
            },
            StreamEvent::TableMap(map) => {
                if self.needs_lookup(&map) {
                    self.pending = Some(map);
                } else {
                    self.install_table(map, None);
                }
            }
            StreamEvent::Rows(rows) => self.rows(rows)?,
            StreamEvent::Heartbeat { file } => {
                if self.txn.is_none() && self.kind == PositionKind::File && header.log_pos > 0 {
                    let position = Position::Binlog {
                        file: file.unwrap_or_else(|| self.file.clone()),
                        offset: header.log_pos,
                    };
                    self.progress(position);
                }
            }
            StreamEvent::Ignored => {}
        }
        Ok(())
    }

    /// A `TRUNCATE` of a captured table whose schema the stream has not
    /// seen: the caller reads it from the catalog (`None`: the table is
    /// gone, so nothing is truncated) and calls [`Self::resolve_truncate`].
    pub fn pending_truncate(&self) -> Option<&TableId> {
        self.pending_truncate.as_ref().map(|(_, t)| t)
    }

    pub fn resolve_truncate(&mut self, schema: Option<TableSchema>) -> Result<(), ConnectorError> {
        let Some((header, table)) = self.pending_truncate.take() else {
            return Ok(());
        };
        match schema {
            Some(schema) => {
                let schema = Arc::new(schema);
                self.schemas.insert(table, schema.clone());
                self.truncate(&header, schema)
            }
            None => self.handle(&header, StreamEvent::Statement),
        }
    }

    /// `TRUNCATE` of a captured table: its own transaction (a MariaDB
    /// standalone GTID group, or a bare query event on MySQL).
    fn truncate(
        &mut self,
        header: &EventHeader,
        schema: Arc<TableSchema>,
    ) -> Result<(), ConnectorError> {
        if self.txn.is_none() {
            self.start_txn(header, None);
        }
        if let Some(t) = &mut self.txn {
            if !t.discard {
                for change in std::mem::take(&mut t.held) {
                    self.out.push_back(SourceMessage::Change(change));
                }
                t.changes += 1;
                self.out.push_back(SourceMessage::Change(ChangeEvent {
                    schema,
                    change: RowChange::Truncate,
                }));
            }
        }
        self.finish_txn(header)
    }

    fn progress(&mut self, position: Position) {
        let advanced = match &self.reported {
            Some(r) => position.partial_cmp(r) == Some(std::cmp::Ordering::Greater),
            None => true,
        };
        if advanced {
            self.reported = Some(position.clone());
            let position = self.capped(position);
            self.out.push_back(SourceMessage::Progress(position));
        }
    }

    /// The group of an XA transaction ends prepared: its changes are held
    /// by XID and the group itself ends as `Discard` (nothing of it is in
    /// the log until `XA COMMIT`).
    fn xa_prepare(&mut self, header: &EventHeader, xid: String) -> Result<(), ConnectorError> {
        let Some(txn) = &mut self.txn else {
            debug!("xa prepare outside a transaction");
            return Ok(());
        };
        let changes = std::mem::take(&mut txn.held);
        // a group at or before the resume position was prepared before
        // the stream started: its changes were not read, and its XA COMMIT
        // is a gap (see `xa_end`)
        if !txn.before_resume {
            if self.prepared.iter().any(|p| p.xid == xid) {
                return Err(self.err(
                    ErrorKind::Protocol,
                    format_args!("the XA transaction {xid} was prepared twice"),
                ));
            }
            let since = txn.since.clone();
            let origin = txn.origin.clone();
            let changes = if txn.discard { Vec::new() } else { changes };
            debug!(xid = %xid, changes = changes.len(), "xa transaction prepared: changes held until xa commit");
            self.prepared.push(PreparedXa {
                xid,
                changes,
                origin,
                since,
            });
        }
        if let Some(t) = &mut self.txn {
            // a prepared group never commits by itself
            t.discard = true;
        }
        self.finish_txn(header)
    }

    /// `XA COMMIT xid` yields the held changes as a transaction at this
    /// group's position; `XA ROLLBACK xid` drops them.
    fn xa_end(
        &mut self,
        header: &EventHeader,
        xid: String,
        commit: bool,
    ) -> Result<(), ConnectorError> {
        if self.txn.is_none() {
            self.start_txn(header, None);
        }
        let found = self.prepared.iter().position(|p| p.xid == xid);
        let held = found.map(|i| self.prepared.remove(i));
        // re-read after a restart, and already in the log: its prepare may
        // be before where the stream resumed
        let logged = match (self.kind, self.txn.as_ref().and_then(|t| t.gtid)) {
            (PositionKind::Gtid, Some(g)) => self.is_logged(&g.position()),
            (PositionKind::Gtid, None) => false,
            (PositionKind::File, _) => self.is_logged(&self.position_at(header)),
        };
        let Some(txn) = &mut self.txn else {
            return Ok(());
        };
        match held {
            Some(prepared) if commit && !txn.discard => {
                debug!(xid = %xid, changes = prepared.changes.len(), "xa transaction committed");
                txn.changes += prepared.changes.len() as u64;
                if txn.origin.is_none() {
                    txn.origin = prepared.origin;
                }
                for change in prepared.changes {
                    self.out.push_back(SourceMessage::Change(change));
                }
            }
            Some(_) => debug!(xid = %xid, commit, "xa transaction ended with nothing to replicate"),
            None if txn.discard || !commit || logged => {
                // at or before the resume position, already in the log, or
                // rolled back: nothing of it can reach the log
            }
            None => {
                return Err(self
                    .err(
                        ErrorKind::PositionLost,
                        format_args!(
                            "the XA transaction {xid} was committed, but it was prepared before \
                             the position capture started from, so its changes were not read"
                        ),
                    )
                    .with_hint(
                        "its changes may be missing from the targets: resynchronise the \
                         captured tables from a snapshot (reset this store's change log); \
                         avoid starting capture while XA transactions are prepared \
                         (XA RECOVER lists them)",
                    ))
            }
        }
        self.finish_txn(header)
    }

    fn rows(&mut self, rows: RowsEvent) -> Result<(), ConnectorError> {
        let Some(txn) = &self.txn else {
            return Err(self.err(
                ErrorKind::Protocol,
                "the server sent a row event outside a transaction",
            ));
        };
        let Some(table) = self.by_id.get(&rows.table_id) else {
            return Err(self.err(
                ErrorKind::Protocol,
                format_args!(
                    "the server sent a row event for table id {} without its table map",
                    rows.table_id
                ),
            ));
        };
        if table.checkpoint {
            let origin = self.checkpoint_origin(table, &rows);
            if let Some(t) = &mut self.txn {
                match origin {
                    Some(origin) if t.origin.is_none() => {
                        debug!(origin = %origin, "transaction was applied by callosum: kept with its origin");
                        t.origin = Some(origin);
                    }
                    Some(_) => {}
                    None => t.discard = true,
                }
            }
            return Ok(());
        }
        if !table.captured || txn.discard {
            return Ok(());
        }
        let xa = txn.xa;
        let schema = table.schema.clone();
        if !table.names_known {
            return Err(self
                .err(
                    ErrorKind::ServerConfig,
                    format_args!(
                        "the binlog has no column names for table {} (binlog_row_metadata is not FULL)",
                        schema.table
                    ),
                )
                .with_hint("set binlog_row_metadata=FULL in the server config and restart"));
        }
        let keys = schema.key_indexes();
        if keys.is_empty() {
            return Err(self
                .err(
                    ErrorKind::Schema,
                    format_args!("table {} has no primary key", schema.table),
                )
                .with_hint(
                    "add a primary key to the table, or remove it from the pipeline's `tables`",
                ));
        }
        let changes = self.decode_rows(table, &rows, &keys)?;
        let n = changes.len() as u64;
        let events = changes.into_iter().map(|change| ChangeEvent {
            schema: schema.clone(),
            change,
        });
        if let Some(t) = &mut self.txn {
            if xa {
                t.held.extend(events);
            } else {
                self.out.extend(events.map(SourceMessage::Change));
            }
            t.changes += n;
        }
        Ok(())
    }

    /// The origin store of a write to the checkpoint table when its row
    /// names a pipeline of `echo_origins`; `None`: drop it as echo.
    fn checkpoint_origin(&self, table: &TableState, rows: &RowsEvent) -> Option<String> {
        if self.echo_origins.is_empty() {
            return None;
        }
        let column = table.schema.column_index("pipeline")?;
        // the first row image: the after image of a write, else the before
        // image (the key is in it)
        let present = match rows.kind {
            RowsKind::Write => &rows.after,
            RowsKind::Update | RowsKind::Delete => &rows.before,
        };
        let (image, _) = decode_image_with(
            &table.columns,
            present,
            &rows.data,
            self.zero_dates,
            &[column],
        )
        .ok()?;
        match image.get(column)? {
            Some(Value::Text(key)) => self.echo_origins.origin_of(key).map(str::to_string),
            _ => None,
        }
    }

    fn image<'a>(
        &self,
        table: &TableState,
        keys: &[usize],
        present: &[bool],
        data: &'a [u8],
    ) -> Result<Image<'a>, ConnectorError> {
        let schema = &table.schema;
        decode_image_with(&table.columns, present, data, self.zero_dates, keys).map_err(|(i, e)| {
            let column = &schema.columns[i.min(schema.columns.len().saturating_sub(1))];
            let kind = match e {
                ValueError::Truncated => ErrorKind::Protocol,
                _ => ErrorKind::Conversion,
            };
            let err = self.err(
                kind,
                format_args!(
                    "table {} column {} (type {}): {e}",
                    schema.table, column.name, column.source_type
                ),
            );
            match e {
                ValueError::ZeroDate if self.zero_dates == ZeroDates::Null => err.with_hint(
                    "the column is part of the primary key, where zero_dates = \"null\" does not \
                     apply: replace its zero dates in the source with real dates (and enable \
                     NO_ZERO_DATE and NO_ZERO_IN_DATE in sql_mode)",
                ),
                ValueError::ZeroDate => err.with_hint(
                    "replace zero dates in the source with NULL or a real date (and enable \
                     NO_ZERO_DATE and NO_ZERO_IN_DATE in sql_mode), or set zero_dates = \"null\" \
                     on this store to replicate them as NULL",
                ),
                ValueError::Unsupported => err.with_hint(
                    "leave the table out of `tables`, or change the column to a supported type",
                ),
                _ => err,
            }
        })
    }

    fn decode_rows(
        &self,
        table: &TableState,
        rows: &RowsEvent,
        keys: &[usize],
    ) -> Result<Vec<RowChange>, ConnectorError> {
        let schema = &table.schema;
        let image = |present: &[bool], data| self.image(table, keys, present, data);
        let image_config = |what: &str| {
            self.err(
                ErrorKind::ServerConfig,
                format_args!(
                    "the binlog lacks columns of table {} in a {what} image (binlog_row_image is not FULL)",
                    schema.table
                ),
            )
            .with_hint("set binlog_row_image=FULL in the server config and restart")
        };
        let mut out = Vec::new();
        let mut data: &[u8] = &rows.data;
        while !data.is_empty() {
            match rows.kind {
                RowsKind::Write => {
                    let (after, rest) = image(&rows.after, data)?;
                    data = rest;
                    let row: Option<Row> = after.into_iter().collect();
                    out.push(RowChange::Insert {
                        row: row.ok_or_else(|| image_config("insert"))?,
                    });
                }
                RowsKind::Delete => {
                    let (before, rest) = image(&rows.before, data)?;
                    data = rest;
                    if keys.iter().any(|&k| before[k].is_none()) {
                        return Err(image_config("delete"));
                    }
                    out.push(RowChange::Delete {
                        key: before
                            .into_iter()
                            .map(|v| v.unwrap_or(Value::Null))
                            .collect(),
                    });
                }
                RowsKind::Update => {
                    let (before, rest) = image(&rows.before, data)?;
                    let (after, rest) = image(&rows.after, rest)?;
                    data = rest;
                    if keys.iter().any(|&k| before[k].is_none()) {
                        return Err(image_config("update"));
                    }
                    let changed = keys.iter().any(|&k| {
                        after[k]
                            .as_ref()
                            .is_some_and(|a| Some(a) != before[k].as_ref())
                    });
                    let old_key = changed.then(|| {
                        before
                            .iter()
                            .enumerate()
                            .map(|(i, v)| {
                                if keys.contains(&i) {
                                    v.clone().unwrap_or(Value::Null)
                                } else {
                                    Value::Null
                                }
                            })
                            .collect()
                    });
                    let row = after
                        .into_iter()
                        .map(|v| v.unwrap_or(Value::Unchanged))
                        .collect();
                    out.push(RowChange::Update { old_key, row });
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_async::consts::ColumnType;

    fn col(name: &str, ty: ColumnType) -> ColumnDef {
        let mut c = ColumnDef::new(name, ty, &[]);
        if ty == ColumnType::MYSQL_TYPE_VARCHAR {
            c.meta = vec![100, 0];
            c.charset = 45;
        }
        c
    }

    /// `db.a(id bigint pk, v varchar, f tinyint)`, id 1.
    fn map_a() -> TableMap {
        TableMap {
            table_id: 1,
            table: TableId::new("db", "a"),
            columns: vec![
                col("id", ColumnType::MYSQL_TYPE_LONGLONG),
                col("v", ColumnType::MYSQL_TYPE_VARCHAR),
                col("f", ColumnType::MYSQL_TYPE_TINY),
            ],
            primary_key: vec![0],
            names_known: true,
        }
    }

    fn map(id: u64, db: &str, name: &str, key: bool) -> TableMap {
        TableMap {
            table_id: id,
            table: TableId::new(db, name),
            columns: vec![col("id", ColumnType::MYSQL_TYPE_LONGLONG)],
            primary_key: if key { vec![0] } else { vec![] },
            names_known: true,
        }
    }

    fn state(kind: PositionKind, resume_from: Option<Position>) -> StreamState {
        let mut s = StreamState::new(
            "erp",
            ZeroDates::Error,
            &[TableId::new("db", "a"), TableId::new("db", "nokey")],
            kind,
            resume_from,
            None,
            "bin.000001",
        );
        s.handle(&h(0), StreamEvent::TableMap(map_a())).unwrap();
        let pending = s
            .pending_table()
            .cloned()
            .expect("captured map waits for look-up");
        s.install_table(
            pending,
            Some(Refinement {
                tiny1: ["f".to_string()].into(),
                json: HashSet::new(),
            }),
        );
        for m in [
            map(2, "db", CHECKPOINT_TABLE, true),
            map(3, "db", "other", true),
            map(4, "db", "nokey", false),
        ] {
            s.handle(&h(0), StreamEvent::TableMap(m)).unwrap();
            if let Some(p) = s.pending_table().cloned() {
                s.install_table(p, Some(Refinement::default()));
            }
        }
        s
    }

    fn h(log_pos: u64) -> EventHeader {
        EventHeader {
            timestamp: 7,
            log_pos,
            event_size: 10,
        }
    }

    fn gtid(seq: u64) -> StreamEvent {
        StreamEvent::MariaGtid(MariaGtid {
            domain: 0,
            server: 1,
            sequence: seq,
            standalone: false,
            prepared_xa: false,
        })
    }

    fn a_row(id: u8, v: &[u8], f: u8) -> Vec<u8> {
        let mut b = vec![0u8, id, 0, 0, 0, 0, 0, 0, 0, v.len() as u8];
        b.extend_from_slice(v);
        b.push(f);
        b
    }

    fn write(table_id: u64, data: Vec<u8>) -> StreamEvent {
        let n = if table_id == 1 { 3 } else { 1 };
        StreamEvent::Rows(RowsEvent {
            kind: RowsKind::Write,
            table_id,
            before: vec![],
            after: vec![true; n],
            data,
        })
    }

    fn drain(s: &mut StreamState) -> Vec<SourceMessage> {
        std::iter::from_fn(|| s.pop()).collect()
    }

    fn gtid_pos(seq: u64) -> Position {
        Position::MariaGtid {
            domain: 0,
            server: 1,
            sequence: seq,
        }
    }

    #[test]
    fn gtid_transaction_is_begin_changes_commit() {
        let mut s = state(PositionKind::Gtid, None);
        s.handle(&h(100), gtid(5)).unwrap();
        let mut data = a_row(1, b"x", 1);
        data.extend(a_row(2, b"yz", 0));
        s.handle(&h(200), write(1, data)).unwrap();
        s.handle(&h(300), StreamEvent::Commit).unwrap();
        let out = drain(&mut s);
        assert_eq!(out.len(), 4, "{out:?}");
        assert_eq!(out[0], SourceMessage::Begin);
        let SourceMessage::Change(c) = &out[2] else {
            panic!("{out:?}")
        };
        assert_eq!(
            c.change,
            RowChange::Insert {
                row: vec![Value::Int(2), Value::Text("yz".into()), Value::Int(0)]
            }
        );
        assert_eq!(c.schema.columns[0].source_type, "bigint");
        assert!(c.schema.columns[0].is_key);
        assert_eq!(c.schema.columns[2].source_type, "tinyint(1)");
        assert_eq!(
            out[3],
            SourceMessage::Commit(TransactionMeta {
                position: gtid_pos(5),
                resume_position: gtid_pos(5),
                commit_time_micros: 7_000_000,
                origin: None,
            })
        );
    }

    #[test]
    fn file_positions_are_the_end_of_the_commit_event() {
        let mut s = state(PositionKind::File, None);
        s.handle(&h(100), StreamEvent::Begin).unwrap();
        s.handle(&h(200), write(1, a_row(1, b"x", 1))).unwrap();
        s.handle(&h(300), StreamEvent::Commit).unwrap();
        let out = drain(&mut s);
        let SourceMessage::Commit(meta) = &out[2] else {
            panic!("{out:?}")
        };
        let end = Position::Binlog {
            file: "bin.000001".into(),
            offset: 300,
        };
        assert_eq!(meta.position, end);
        assert_eq!(meta.resume_position, end);
        // MyISAM: BEGIN … Query COMMIT; then a rotation.
        s.handle(&h(400), StreamEvent::Begin).unwrap();
        s.handle(&h(0), StreamEvent::TableMap(map_a())).unwrap();
        assert!(s.pending_table().is_none(), "refinement is cached");
        s.handle(&h(500), write(1, a_row(2, b"x", 1))).unwrap();
        s.handle(&h(600), StreamEvent::Commit).unwrap();
        s.handle(
            &h(0),
            StreamEvent::Rotate {
                file: "bin.000002".into(),
            },
        )
        .unwrap();
        s.handle(&h(0), StreamEvent::TableMap(map_a())).unwrap();
        s.handle(&h(150), StreamEvent::Begin).unwrap();
        s.handle(&h(200), write(1, a_row(3, b"x", 1))).unwrap();
        s.handle(&h(250), StreamEvent::Commit).unwrap();
        let positions: Vec<Position> = drain(&mut s)
            .into_iter()
            .filter_map(|m| match m {
                SourceMessage::Commit(meta) => Some(meta.position),
                _ => None,
            })
            .collect();
        assert_eq!(positions.len(), 2);
        assert!(positions[0] < positions[1]);
    }

    #[test]
    fn checkpoint_writes_discard_the_whole_transaction() {
        let mut s = state(PositionKind::Gtid, None);
        s.handle(&h(100), gtid(5)).unwrap();
        s.handle(&h(150), write(2, vec![0, 1, 0, 0, 0, 0, 0, 0, 0]))
            .unwrap();
        s.handle(&h(200), write(1, a_row(1, b"x", 1))).unwrap();
        s.handle(&h(300), StreamEvent::Commit).unwrap();
        assert_eq!(
            drain(&mut s),
            [
                SourceMessage::Begin,
                SourceMessage::Discard {
                    resume_position: gtid_pos(5)
                }
            ]
        );
    }

    #[test]
    fn uncaptured_tables_and_ddl_are_discarded() {
        let mut s = state(PositionKind::Gtid, None);
        s.handle(&h(100), gtid(5)).unwrap();
        s.handle(&h(200), write(3, vec![0, 1, 0, 0, 0, 0, 0, 0, 0]))
            .unwrap();
        s.handle(&h(300), StreamEvent::Commit).unwrap();
        let mut ddl = MariaGtid {
            domain: 0,
            server: 1,
            sequence: 6,
            standalone: true,
            prepared_xa: false,
        };
        s.handle(&h(400), StreamEvent::MariaGtid(ddl)).unwrap();
        s.handle(&h(500), StreamEvent::Statement).unwrap();
        assert_eq!(
            drain(&mut s),
            [
                SourceMessage::Begin,
                SourceMessage::Discard {
                    resume_position: gtid_pos(5)
                },
                SourceMessage::Begin,
                SourceMessage::Discard {
                    resume_position: gtid_pos(6)
                }
            ]
        );
        ddl.domain = 1;
        ddl.sequence = 7;
        let err = s.handle(&h(600), StreamEvent::MariaGtid(ddl)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ServerConfig);
    }

    #[test]
    fn transactions_at_or_before_resume_from_are_discarded() {
        let mut s = state(PositionKind::Gtid, Some(gtid_pos(5)));
        for (seq, expect_commit) in [(4, false), (5, false), (6, true)] {
            s.handle(&h(100), gtid(seq)).unwrap();
            s.handle(&h(200), write(1, a_row(1, b"x", 1))).unwrap();
            s.handle(&h(300), StreamEvent::Commit).unwrap();
            let out = drain(&mut s);
            assert_eq!(
                matches!(out.last(), Some(SourceMessage::Commit(_))),
                expect_commit,
                "{seq}: {out:?}"
            );
            if let Some(SourceMessage::Discard { resume_position }) = out.last() {
                assert_eq!(*resume_position, gtid_pos(5), "never goes back");
            }
        }
        let resume = Position::Binlog {
            file: "bin.000001".into(),
            offset: 300,
        };
        let mut s = state(PositionKind::File, Some(resume));
        // Starts at 290 (< 300): already held.
        s.handle(&h(300), StreamEvent::Begin).unwrap();
        s.handle(&h(350), write(1, a_row(1, b"x", 1))).unwrap();
        s.handle(&h(400), StreamEvent::Commit).unwrap();
        assert!(matches!(
            drain(&mut s).last(),
            Some(SourceMessage::Discard { .. })
        ));
        // Starts at 400 (≥ 300): new.
        s.handle(&h(410), StreamEvent::Begin).unwrap();
        s.handle(&h(450), write(1, a_row(1, b"x", 1))).unwrap();
        s.handle(&h(500), StreamEvent::Commit).unwrap();
        assert!(matches!(
            drain(&mut s).last(),
            Some(SourceMessage::Commit(_))
        ));
    }

    #[test]
    fn updates_and_deletes() {
        let mut s = state(PositionKind::Gtid, None);
        s.handle(&h(100), gtid(5)).unwrap();
        let mut data = a_row(1, b"x", 1);
        data.extend(a_row(1, b"y", 1)); // key unchanged
        data.extend(a_row(1, b"y", 1));
        data.extend(a_row(2, b"y", 1)); // key changed
        s.handle(
            &h(200),
            StreamEvent::Rows(RowsEvent {
                kind: RowsKind::Update,
                table_id: 1,
                before: vec![true; 3],
                after: vec![true; 3],
                data,
            }),
        )
        .unwrap();
        s.handle(
            &h(250),
            StreamEvent::Rows(RowsEvent {
                kind: RowsKind::Delete,
                table_id: 1,
                before: vec![true; 3],
                after: vec![],
                data: a_row(2, b"y", 1),
            }),
        )
        .unwrap();
        let changes: Vec<RowChange> = drain(&mut s)
            .into_iter()
            .filter_map(|m| match m {
                SourceMessage::Change(c) => Some(c.change),
                _ => None,
            })
            .collect();
        let row = |id: i64| vec![Value::Int(id), Value::Text("y".into()), Value::Int(1)];
        assert_eq!(
            changes,
            [
                RowChange::Update {
                    old_key: None,
                    row: row(1)
                },
                RowChange::Update {
                    old_key: Some(vec![Value::Int(1), Value::Null, Value::Null]),
                    row: row(2)
                },
                RowChange::Delete { key: row(2) },
            ]
        );
    }

    #[test]
    fn tables_without_key_and_bad_values_fail_without_values() {
        let mut s = state(PositionKind::Gtid, None);
        s.handle(&h(100), gtid(5)).unwrap();
        let err = s
            .handle(&h(200), write(4, vec![0, 1, 0, 0, 0, 0, 0, 0, 0]))
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Schema);
        assert!(err.to_string().contains("db.nokey"), "{err}");
        let mut data = a_row(1, b"x", 1);
        data[10] = 0xff; // invalid UTF-8: carried as Value::Undecodable, the
                         // sink refuses it by name; capture goes on
        s.handle(&h(200), write(1, data)).unwrap();
        let err = s.handle(&h(200), write(1, vec![0, 1, 2])).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Protocol);
    }

    /// A stream capturing `db.dated(id bigint pk, born date)`, table id 5,
    /// inside a transaction.
    fn dated(zero_dates: ZeroDates) -> StreamState {
        let mut s = StreamState::new(
            "erp",
            zero_dates,
            &[TableId::new("db", "dated")],
            PositionKind::Gtid,
            None,
            None,
            "bin.000001",
        );
        let map = TableMap {
            table_id: 5,
            table: TableId::new("db", "dated"),
            columns: vec![
                col("id", ColumnType::MYSQL_TYPE_LONGLONG),
                col("born", ColumnType::MYSQL_TYPE_DATE),
            ],
            primary_key: vec![0],
            names_known: true,
        };
        s.handle(&h(0), StreamEvent::TableMap(map)).unwrap();
        let pending = s.pending_table().cloned().unwrap();
        s.install_table(pending, Some(Refinement::default()));
        s.handle(&h(100), gtid(5)).unwrap();
        s
    }

    fn dated_insert(born: [u8; 3]) -> StreamEvent {
        let mut data = vec![0u8, 1, 0, 0, 0, 0, 0, 0, 0];
        data.extend_from_slice(&born);
        StreamEvent::Rows(RowsEvent {
            kind: RowsKind::Write,
            table_id: 5,
            before: vec![],
            after: vec![true; 2],
            data,
        })
    }

    #[test]
    fn zero_dates_are_an_error_naming_the_column_and_the_option() {
        let mut s = dated(ZeroDates::Error);
        let err = s.handle(&h(200), dated_insert([0, 0, 0])).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conversion);
        let msg = err.to_string();
        for part in [
            "erp",
            "db.dated",
            "column born",
            "type date",
            "zero date",
            "zero_dates = \"null\"",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
    }

    #[test]
    fn zero_dates_become_null_when_configured() {
        let mut s = dated(ZeroDates::Null);
        drain(&mut s);
        // 2024-00-10: a zero month is a zero date too.
        let born = ((2024u32 << 9) | 10).to_le_bytes();
        s.handle(&h(200), dated_insert([born[0], born[1], born[2]]))
            .unwrap();
        let changes: Vec<RowChange> = drain(&mut s)
            .into_iter()
            .filter_map(|m| match m {
                SourceMessage::Change(c) => Some(c.change),
                _ => None,
            })
            .collect();
        assert_eq!(
            changes,
            vec![RowChange::Insert {
                row: vec![Value::Int(1), Value::Null]
            }]
        );
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut s = state(PositionKind::Gtid, None);
        assert_eq!(
            s.handle(&h(200), write(1, a_row(1, b"x", 1)))
                .unwrap_err()
                .kind,
            ErrorKind::Protocol
        );
        s.handle(&h(100), gtid(5)).unwrap();
        assert_eq!(
            s.handle(&h(200), write(99, vec![0])).unwrap_err().kind,
            ErrorKind::Protocol
        );
        assert_eq!(
            s.handle(&h(300), gtid(6)).unwrap_err().kind,
            ErrorKind::Protocol
        );
    }

    #[test]
    fn progress_from_start_heartbeats_and_statements() {
        let start = Position::Binlog {
            file: "bin.000001".into(),
            offset: 100,
        };
        let mut s = StreamState::new(
            "erp",
            ZeroDates::Error,
            &[],
            PositionKind::File,
            None,
            Some(start.clone()),
            "bin.000001",
        );
        assert_eq!(drain(&mut s), [SourceMessage::Progress(start)]);
        s.handle(&h(100), StreamEvent::Heartbeat { file: None })
            .unwrap();
        assert!(drain(&mut s).is_empty(), "not advanced");
        s.handle(&h(150), StreamEvent::Statement).unwrap();
        s.handle(
            &h(4),
            StreamEvent::Heartbeat {
                file: Some("bin.000002".into()),
            },
        )
        .unwrap();
        assert_eq!(
            drain(&mut s),
            [
                SourceMessage::Progress(Position::Binlog {
                    file: "bin.000001".into(),
                    offset: 150
                }),
                SourceMessage::Progress(Position::Binlog {
                    file: "bin.000002".into(),
                    offset: 4
                })
            ]
        );
        s.handle(&h(10), StreamEvent::Begin).unwrap();
        s.handle(&h(300), StreamEvent::Heartbeat { file: None })
            .unwrap();
        assert_eq!(
            drain(&mut s),
            [SourceMessage::Begin],
            "none inside a transaction"
        );
    }

    #[test]
    fn an_unchanged_table_map_keeps_its_schema_arc() {
        let mut s = state(PositionKind::Gtid, None);
        let schema = |s: &mut StreamState, seq: u64| {
            s.handle(&h(100), gtid(seq)).unwrap();
            s.handle(&h(200), write(1, a_row(1, b"x", 1))).unwrap();
            s.handle(&h(300), StreamEvent::Commit).unwrap();
            match &drain(s)[1] {
                SourceMessage::Change(c) => c.schema.clone(),
                other => panic!("{other:?}"),
            }
        };
        let first = schema(&mut s, 1);
        let mut again = map_a();
        again.table_id = 9;
        s.handle(&h(0), StreamEvent::TableMap(again.clone()))
            .unwrap();
        assert!(Arc::ptr_eq(&first, &schema(&mut s, 2)));
        let mut changed = map_a();
        changed.columns[1].name = "w".into();
        s.handle(&h(0), StreamEvent::TableMap(changed)).unwrap();
        let pending = s
            .pending_table()
            .cloned()
            .expect("new names: look up again");
        s.install_table(pending, Some(Refinement::default()));
        assert!(!Arc::ptr_eq(&first, &schema(&mut s, 3)));
    }

    fn standalone(seq: u64) -> StreamEvent {
        StreamEvent::MariaGtid(MariaGtid {
            domain: 0,
            server: 1,
            sequence: seq,
            standalone: true,
            prepared_xa: false,
        })
    }

    #[test]
    fn truncate_of_a_mapped_table_is_its_own_transaction() {
        let mut s = state(PositionKind::Gtid, None);
        s.handle(&h(100), standalone(5)).unwrap();
        s.handle(&h(200), StreamEvent::Truncate(TableId::new("db", "a")))
            .unwrap();
        let out = drain(&mut s);
        assert_eq!(out.len(), 3, "{out:?}");
        let SourceMessage::Change(c) = &out[1] else {
            panic!("{out:?}")
        };
        assert_eq!(c.change, RowChange::Truncate);
        assert_eq!(c.schema.table, TableId::new("db", "a"));
        assert!(matches!(&out[2], SourceMessage::Commit(m) if m.position == gtid_pos(5)));
        assert!(s.pending_truncate().is_none());
    }

    #[test]
    fn truncate_of_an_unmapped_table_waits_for_the_catalog() {
        let mut s = state(PositionKind::File, None);
        drain(&mut s);
        let nokey = TableId::new("db", "nokey");
        let fresh = StreamState::new(
            "erp",
            ZeroDates::Error,
            std::slice::from_ref(&nokey),
            PositionKind::File,
            None,
            None,
            "bin.000001",
        );
        s = fresh;
        s.handle(&h(500), StreamEvent::Truncate(nokey.clone()))
            .unwrap();
        assert_eq!(s.pending_truncate(), Some(&nokey));
        assert!(drain(&mut s).is_empty());
        let schema = TableSchema {
            table: nokey.clone(),
            columns: vec![ColumnSchema {
                name: "id".into(),
                source_type: "bigint".into(),
                is_key: true,
            }],
        };
        s.resolve_truncate(Some(schema)).unwrap();
        let out = drain(&mut s);
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(matches!(&out[1], SourceMessage::Change(c) if c.change == RowChange::Truncate));
        assert!(matches!(&out[2], SourceMessage::Commit(m) if m.position
            == Position::Binlog { file: "bin.000001".into(), offset: 500 }));
    }

    #[test]
    fn truncate_of_another_table_is_just_a_statement() {
        let mut s = state(PositionKind::Gtid, None);
        s.handle(&h(100), standalone(5)).unwrap();
        s.handle(&h(200), StreamEvent::Truncate(TableId::new("db", "other")))
            .unwrap();
        let out = drain(&mut s);
        assert!(
            out.iter().all(|m| !matches!(m, SourceMessage::Change(_))),
            "{out:?}"
        );
        assert!(s.pending_truncate().is_none());
    }

    #[test]
    fn statement_dml_on_a_captured_table_halts_by_name() {
        let mut s = state(PositionKind::Gtid, None);
        s.handle(&h(100), gtid(5)).unwrap();
        s.handle(&h(150), StreamEvent::Begin).unwrap();
        let err = s
            .handle(
                &h(200),
                StreamEvent::StatementDml {
                    verb: "INSERT",
                    table: Some(TableId::new("db", "a")),
                },
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ServerConfig);
        assert!(err.to_string().contains("db.a"), "{err}");
        assert!(format!("{err:?}").contains("binlog_format=ROW"), "{err:?}");
        let err = s
            .handle(
                &h(200),
                StreamEvent::StatementDml {
                    verb: "UPDATE",
                    table: None,
                },
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ServerConfig);
        s.handle(
            &h(200),
            StreamEvent::StatementDml {
                verb: "INSERT",
                table: Some(TableId::new("db", "other")),
            },
        )
        .unwrap();
    }

    #[test]
    fn a_gtid_sequence_going_backwards_halts() {
        let mut s = state(PositionKind::Gtid, None);
        s.handle(&h(100), gtid(5)).unwrap();
        s.handle(&h(200), StreamEvent::Commit).unwrap();
        let err = s.handle(&h(300), gtid(5)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::PositionLost);
        assert!(err.to_string().contains("0-1-5"), "{err}");
        let mut s = state(PositionKind::Gtid, None);
        s.handle(&h(100), gtid(5)).unwrap();
        s.handle(&h(200), StreamEvent::Commit).unwrap();
        s.handle(&h(300), gtid(6)).unwrap();
    }

    fn gtid_xa(seq: u64) -> StreamEvent {
        StreamEvent::MariaGtid(MariaGtid {
            domain: 0,
            server: 1,
            sequence: seq,
            standalone: false,
            prepared_xa: true,
        })
    }

    fn xa_end(xid: &str, commit: bool) -> StreamEvent {
        StreamEvent::XaEnd {
            xid: xid.into(),
            commit,
        }
    }

    fn xa_prepare(xid: &str) -> StreamEvent {
        StreamEvent::XaPrepare { xid: xid.into() }
    }

    fn commit_meta(out: &[SourceMessage]) -> Vec<&TransactionMeta> {
        out.iter()
            .filter_map(|m| match m {
                SourceMessage::Commit(meta) => Some(meta),
                _ => None,
            })
            .collect()
    }

    fn inserted_ids(out: &[SourceMessage]) -> Vec<i64> {
        out.iter()
            .filter_map(|m| match m {
                SourceMessage::Change(ChangeEvent {
                    change: RowChange::Insert { row },
                    ..
                }) => match row[0] {
                    Value::Int(id) => Some(id),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_prepared_xa_is_held_until_its_commit_and_caps_resume_positions() {
        let mut s = state(PositionKind::Gtid, Some(gtid_pos(4)));
        // prepare group 5: held, ends as Discard at the position before it
        s.handle(&h(100), gtid_xa(5)).unwrap();
        s.handle(&h(200), write(1, a_row(1, b"x", 0))).unwrap();
        s.handle(&h(300), xa_prepare("X'78',X'',1")).unwrap();
        assert_eq!(
            drain(&mut s),
            vec![
                SourceMessage::Begin,
                SourceMessage::Discard {
                    resume_position: gtid_pos(4)
                }
            ]
        );
        assert_eq!(s.pending_xa(), 1);
        // a normal transaction commits at its own position, but its resume
        // position stays before the prepare
        s.handle(&h(400), gtid(6)).unwrap();
        s.handle(&h(500), write(1, a_row(2, b"y", 0))).unwrap();
        s.handle(&h(600), StreamEvent::Commit).unwrap();
        let out = drain(&mut s);
        assert_eq!(inserted_ids(&out), vec![2]);
        let meta = commit_meta(&out);
        assert_eq!(meta[0].position, gtid_pos(6));
        assert_eq!(meta[0].resume_position, gtid_pos(4));
        // XA COMMIT: the held rows at the commit group's position
        s.handle(&h(700), gtid(7)).unwrap();
        s.handle(&h(800), xa_end("X'78',X'',1", true)).unwrap();
        let out = drain(&mut s);
        assert_eq!(out[0], SourceMessage::Begin);
        assert_eq!(inserted_ids(&out), vec![1]);
        let meta = commit_meta(&out);
        assert_eq!(meta[0].position, gtid_pos(7));
        assert_eq!(meta[0].resume_position, gtid_pos(7));
        assert_eq!(s.pending_xa(), 0);
    }

    #[test]
    fn a_rolled_back_xa_never_reaches_the_log() {
        let mut s = state(PositionKind::Gtid, Some(gtid_pos(4)));
        s.handle(&h(100), gtid_xa(5)).unwrap();
        s.handle(&h(200), write(1, a_row(1, b"x", 0))).unwrap();
        s.handle(&h(300), xa_prepare("X'78',X'',1")).unwrap();
        s.handle(&h(400), gtid(6)).unwrap();
        s.handle(&h(500), xa_end("X'78',X'',1", false)).unwrap();
        let out = drain(&mut s);
        assert!(inserted_ids(&out).is_empty(), "{out:?}");
        assert!(commit_meta(&out).is_empty(), "{out:?}");
        assert_eq!(
            out.last(),
            Some(&SourceMessage::Discard {
                resume_position: gtid_pos(6)
            })
        );
        assert_eq!(s.pending_xa(), 0);
    }

    #[test]
    fn transactions_the_log_holds_are_discarded_after_a_restart() {
        let mut s = state(PositionKind::Gtid, Some(gtid_pos(4)));
        s.set_logged_through(Some(gtid_pos(6)));
        s.handle(&h(100), gtid_xa(5)).unwrap();
        s.handle(&h(200), write(1, a_row(1, b"x", 0))).unwrap();
        s.handle(&h(300), xa_prepare("X'78',X'',1")).unwrap();
        s.handle(&h(400), gtid(6)).unwrap();
        s.handle(&h(500), write(1, a_row(2, b"y", 0))).unwrap();
        s.handle(&h(600), StreamEvent::Commit).unwrap();
        s.handle(&h(700), gtid(7)).unwrap();
        s.handle(&h(800), xa_end("X'78',X'',1", true)).unwrap();
        let out = drain(&mut s);
        let meta = commit_meta(&out);
        assert_eq!(meta.len(), 1, "{out:?}");
        assert_eq!(meta[0].position, gtid_pos(7));
        assert!(out.contains(&SourceMessage::Discard {
            resume_position: gtid_pos(4)
        }));
    }

    #[test]
    fn an_xa_commit_whose_prepare_was_not_read_halts_naming_the_xid() {
        // started after the prepare: a gap
        let mut s = state(PositionKind::Gtid, Some(gtid_pos(4)));
        s.handle(&h(100), gtid(5)).unwrap();
        let err = s.handle(&h(200), xa_end("X'78',X'',1", true)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::PositionLost);
        assert!(err.to_string().contains("X'78',X'',1"), "{err}");
        // a rollback of an unknown XA loses nothing
        let mut s = state(PositionKind::Gtid, Some(gtid_pos(4)));
        s.handle(&h(100), gtid(5)).unwrap();
        s.handle(&h(200), xa_end("X'78',X'',1", false)).unwrap();
        // prepare and commit both at or before the resume position
        let mut s = state(PositionKind::Gtid, Some(gtid_pos(9)));
        s.handle(&h(100), gtid_xa(5)).unwrap();
        s.handle(&h(200), write(1, a_row(1, b"x", 0))).unwrap();
        s.handle(&h(300), xa_prepare("X'78',X'',1")).unwrap();
        s.handle(&h(400), gtid(6)).unwrap();
        s.handle(&h(500), xa_end("X'78',X'',1", true)).unwrap();
        assert!(commit_meta(&drain(&mut s)).is_empty());
        // prepared at or before the resume position, committed after it
        let mut s = state(PositionKind::Gtid, Some(gtid_pos(5)));
        s.handle(&h(100), gtid_xa(5)).unwrap();
        s.handle(&h(200), write(1, a_row(1, b"x", 0))).unwrap();
        s.handle(&h(300), xa_prepare("X'78',X'',1")).unwrap();
        s.handle(&h(400), gtid(6)).unwrap();
        let err = s.handle(&h(500), xa_end("X'78',X'',1", true)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::PositionLost);
    }

    #[test]
    fn mysql_xa_groups_in_file_positions() {
        let file = |offset| Position::Binlog {
            file: "bin.000001".into(),
            offset,
        };
        let mut s = state(PositionKind::File, Some(file(50)));
        // XA START … XA END … XA_PREPARE
        s.handle(&h(100), StreamEvent::XaStart).unwrap();
        s.handle(&h(200), write(1, a_row(1, b"x", 0))).unwrap();
        s.handle(&h(250), StreamEvent::Statement).unwrap();
        s.handle(&h(300), xa_prepare("X'78',X'',1")).unwrap();
        // one phase: a normal transaction
        s.handle(&h(400), StreamEvent::XaStart).unwrap();
        s.handle(&h(500), write(1, a_row(2, b"y", 0))).unwrap();
        s.handle(&h(600), StreamEvent::Commit).unwrap();
        // XA COMMIT: a query event of its own
        s.handle(&h(700), xa_end("X'78',X'',1", true)).unwrap();
        let out = drain(&mut s);
        assert_eq!(inserted_ids(&out), vec![2, 1]);
        let meta = commit_meta(&out);
        assert_eq!(meta[0].position, file(600));
        assert_eq!(meta[0].resume_position, file(50));
        assert_eq!(meta[1].position, file(700));
        assert_eq!(meta[1].resume_position, file(700));
    }

    /// One event group of the XA model.
    #[derive(Clone, Debug)]
    enum Group {
        Normal,
        Prepare(u8),
        End(u8, bool),
    }

    fn groups(ops: &[(u8, u8)]) -> Vec<Group> {
        let mut pending = HashSet::new();
        let mut out = Vec::new();
        for &(op, k) in ops {
            match op {
                0 => out.push(Group::Normal),
                1 if pending.insert(k) => out.push(Group::Prepare(k)),
                2 | 3 if pending.remove(&k) => out.push(Group::End(k, op == 2)),
                _ => {}
            }
        }
        out
    }

    /// Feeds groups `from..` (group i has GTID sequence i + 1).
    fn feed(s: &mut StreamState, groups: &[Group], from: usize) -> Vec<Vec<SourceMessage>> {
        let mut per_group = Vec::new();
        for (i, g) in groups.iter().enumerate().skip(from) {
            let seq = i as u64 + 1;
            let hd = h(seq * 100);
            let xid = |k: u8| format!("X'{k:02X}',X'',1");
            match g {
                Group::Normal => {
                    s.handle(&hd, gtid(seq)).unwrap();
                    s.handle(&hd, write(1, a_row(seq as u8, b"n", 0))).unwrap();
                    s.handle(&hd, StreamEvent::Commit).unwrap();
                }
                Group::Prepare(k) => {
                    s.handle(&hd, gtid_xa(seq)).unwrap();
                    s.handle(&hd, write(1, a_row(seq as u8, b"x", 0))).unwrap();
                    s.handle(&hd, xa_prepare(&xid(*k))).unwrap();
                }
                Group::End(k, commit) => {
                    s.handle(&hd, gtid(seq)).unwrap();
                    s.handle(&hd, xa_end(&xid(*k), *commit)).unwrap();
                }
            }
            per_group.push(drain(s));
        }
        per_group
    }

    /// What the change log holds: (position, inserted ids) per committed
    /// transaction, and the resume position it records.
    fn log_of(messages: &[SourceMessage]) -> (Vec<(Position, Vec<i64>)>, Option<Position>) {
        let mut log = Vec::new();
        let mut resume = None;
        let mut open = Vec::new();
        for m in messages {
            match m {
                SourceMessage::Begin => open.clear(),
                SourceMessage::Change(_) => open.push(m.clone()),
                SourceMessage::Commit(meta) => {
                    log.push((meta.position.clone(), inserted_ids(&open)));
                    resume = Some(meta.resume_position.clone());
                }
                SourceMessage::Discard { resume_position } => {
                    resume = Some(resume_position.clone())
                }
                SourceMessage::Progress(p) => resume = Some(p.clone()),
            }
        }
        (log, resume)
    }

    proptest::proptest! {
        /// Committed XA transactions reach the log once, at their commit's
        /// position, rolled back ones never; a crash after any group and a
        /// restart from the resume position the log holds (with the log's
        /// newest position) yields exactly the rest.
        #[test]
        fn xa_transactions_replicate_exactly_once_across_restarts(
            ops in proptest::collection::vec((0u8..4, 0u8..3), 0..40),
        ) {
            let groups = groups(&ops);
            let mut s = state(PositionKind::Gtid, Some(gtid_pos(0)));
            let per_group = feed(&mut s, &groups, 0);
            let all: Vec<SourceMessage> = per_group.iter().flatten().cloned().collect();
            let (full, _) = log_of(&all);
            // the model
            let mut expected = Vec::new();
            let mut prepared_at = HashMap::new();
            for (i, g) in groups.iter().enumerate() {
                let seq = i as u64 + 1;
                match g {
                    Group::Normal => expected.push((gtid_pos(seq), vec![seq as i64])),
                    Group::Prepare(k) => {
                        prepared_at.insert(*k, seq);
                    }
                    Group::End(k, true) => {
                        expected.push((gtid_pos(seq), vec![prepared_at[k] as i64]))
                    }
                    Group::End(..) => {}
                }
            }
            proptest::prop_assert_eq!(&full, &expected);
            for crash in 0..=groups.len() {
                let before: Vec<SourceMessage> =
                    per_group[..crash].iter().flatten().cloned().collect();
                let (mut log, resume) = log_of(&before);
                let resume = resume.unwrap_or(gtid_pos(0));
                let Position::MariaGtid { sequence, .. } = resume else {
                    unreachable!()
                };
                let mut s = state(PositionKind::Gtid, Some(resume));
                s.set_logged_through(log.last().map(|(p, _)| p.clone()));
                let after: Vec<SourceMessage> =
                    feed(&mut s, &groups, sequence as usize).into_iter().flatten().collect();
                log.extend(log_of(&after).0);
                proptest::prop_assert_eq!(&log, &expected, "crash after group {}", crash);
            }
        }
    }
}

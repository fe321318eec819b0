//! The pure part of [`crate::PgSource`]: turns decoded pgoutput messages and
//! keepalives into [`SourceMessage`]s (transaction framing, echo
//! suppression, resume filtering, relation cache, value conversion). No I/O:
//! catalog look-ups for relations are done by the caller between
//! [`StreamState::pending_relation`] and [`StreamState::install_relation`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use callosum_api::{
    ChangeEvent, ColumnSchema, ConnectorError, EchoOrigins, ErrorKind, Lsn, Position, Row,
    RowChange, SourceMessage, TableId, TableSchema, TransactionMeta, Value, CHECKPOINT_TABLE,
};
use tracing::{debug, info};

use crate::pgoutput::{
    OldTupleKind, PgOutputMessage, Relation, Tuple, TupleValue, PG_EPOCH_OFFSET_MICROS,
};
use crate::text_value;

/// What the source knows about a relation (table) of the stream.
struct RelationState {
    schema: Arc<TableSchema>,
    type_oids: Vec<u32>,
    captured: bool,
    checkpoint: bool,
}

/// The transaction being streamed.
struct Txn {
    final_lsn: u64,
    /// Nothing more of it is yielded; it ends with `Discard`.
    discard: bool,
    /// Changes yielded so far.
    changes: u64,
    /// The store a Callosum-applied transaction came from (its checkpoint
    /// row names a pipeline of [`StreamState::echo_origins`]).
    origin: Option<String>,
}

/// Stream state of one replication session.
pub(crate) struct StreamState {
    store: String,
    tables: HashSet<TableId>,
    relations: HashMap<u32, RelationState>,
    type_names: HashMap<u32, String>,
    /// Non-built-in type oids looked up in the catalog → the oid whose text
    /// form their values have: a domain's base type, else the type itself.
    decode_as: HashMap<u32, u32>,
    /// Transactions committing before this (a `resume_position`) are
    /// already held downstream.
    resume_from: Option<Lsn>,
    txn: Option<Txn>,
    out: VecDeque<SourceMessage>,
    /// A relation message waiting for catalog look-ups (kept here so that
    /// `next` stays cancel-safe).
    pending_relation: Option<Relation>,
    progress_reported: Lsn,
    /// Callosum's writes to keep, tagged with their origin, instead of
    /// dropping them as echo.
    echo_origins: EchoOrigins,
}

impl StreamState {
    pub fn new(store: &str, tables: &[TableId], resume_from: Option<Lsn>, start: Lsn) -> Self {
        StreamState {
            store: store.to_string(),
            tables: tables.iter().cloned().collect(),
            relations: HashMap::new(),
            type_names: HashMap::new(),
            decode_as: HashMap::new(),
            resume_from,
            txn: None,
            out: VecDeque::new(),
            pending_relation: None,
            progress_reported: start,
            echo_origins: EchoOrigins::default(),
        }
    }

    /// Keeps Callosum's writes of these pipelines, with their origin store.
    pub fn set_echo_origins(&mut self, echo_origins: EchoOrigins) {
        self.echo_origins = echo_origins;
    }

    /// The next message to yield.
    pub fn pop(&mut self) -> Option<SourceMessage> {
        self.out.pop_front()
    }

    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// A relation that needs [`Self::install_relation`] before any further
    /// message is handled.
    pub fn pending_relation(&self) -> Option<&Relation> {
        self.pending_relation.as_ref()
    }

    /// A keepalive: between transactions, the stream's new position becomes
    /// `Progress`.
    pub fn keepalive(&mut self, wal_end: Lsn) {
        if self.txn.is_none() && wal_end > self.progress_reported {
            self.progress_reported = wal_end;
            self.out
                .push_back(SourceMessage::Progress(Position::Pg(wal_end)));
        }
    }

    fn table_of(rel: &Relation) -> TableId {
        let namespace = if rel.namespace.is_empty() {
            "pg_catalog"
        } else {
            rel.namespace.as_str()
        };
        TableId::new(namespace, rel.name.clone())
    }

    /// Whether changes of `rel` are yielded.
    pub fn is_captured(&self, rel: &Relation) -> bool {
        self.tables.contains(&Self::table_of(rel))
    }

    /// Non-built-in type oids of `rel` not looked up in the catalog yet.
    pub fn unknown_type_oids(&self, rel: &Relation) -> Vec<u32> {
        let unknown: HashSet<u32> = rel
            .columns
            .iter()
            .map(|c| c.type_oid)
            .filter(|oid| {
                text_value::builtin_type_name(*oid).is_none() && !self.decode_as.contains_key(oid)
            })
            .collect();
        unknown.into_iter().collect()
    }

    /// Records a catalog look-up: the type's name and the oid its values
    /// decode as (its base type for a domain).
    pub fn set_type(&mut self, oid: u32, name: String, decode_as: u32) {
        self.type_names.insert(oid, name);
        self.decode_as.insert(oid, decode_as);
    }

    #[cfg(test)]
    pub fn set_type_name(&mut self, oid: u32, name: String) {
        self.type_names.insert(oid, name);
    }

    /// Installs `rel` (clearing the pending relation), keeping the old
    /// schema `Arc` when nothing changed. `primary_key` overrides the
    /// replica identity flags as key columns (for REPLICA IDENTITY FULL).
    pub fn install_relation(&mut self, rel: &Relation, primary_key: Option<HashSet<String>>) {
        let table = Self::table_of(rel);
        let captured = self.tables.contains(&table);
        let checkpoint = rel.name == CHECKPOINT_TABLE;
        let columns = rel
            .columns
            .iter()
            .map(|c| ColumnSchema {
                name: c.name.clone(),
                source_type: text_value::builtin_type_name(c.type_oid)
                    .map(str::to_string)
                    .or_else(|| self.type_names.get(&c.type_oid).cloned())
                    .unwrap_or_else(|| format!("oid {}", c.type_oid)),
                is_key: match &primary_key {
                    Some(pk) => pk.contains(&c.name),
                    None => c.is_key(),
                },
            })
            .collect();
        let mut state = RelationState {
            schema: Arc::new(TableSchema { table, columns }),
            type_oids: rel
                .columns
                .iter()
                .map(|c| *self.decode_as.get(&c.type_oid).unwrap_or(&c.type_oid))
                .collect(),
            captured,
            checkpoint,
        };
        if let Some(old) = self.relations.get(&rel.id) {
            if old.schema == state.schema && old.type_oids == state.type_oids {
                state.schema = old.schema.clone();
            } else {
                info!(table = %state.schema.table, "table definition changed");
            }
        }
        self.relations.insert(rel.id, state);
        self.pending_relation = None;
    }

    pub fn err(&self, kind: ErrorKind, message: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::new(kind, format!("postgres store `{}`: {message}", self.store))
    }

    pub fn handle(&mut self, msg: PgOutputMessage) -> Result<(), ConnectorError> {
        match msg {
            PgOutputMessage::Begin(b) => {
                if self.txn.is_some() {
                    return Err(self.err(
                        ErrorKind::Protocol,
                        "pgoutput sent BEGIN inside a transaction",
                    ));
                }
                let already_held = self.resume_from.is_some_and(|r| b.final_lsn < r.0);
                self.txn = Some(Txn {
                    final_lsn: b.final_lsn,
                    discard: already_held,
                    changes: 0,
                    origin: None,
                });
                self.out.push_back(SourceMessage::Begin);
            }
            PgOutputMessage::Commit(c) => {
                let txn = self.txn.take().ok_or_else(|| {
                    self.err(
                        ErrorKind::Protocol,
                        "pgoutput sent COMMIT outside a transaction",
                    )
                })?;
                if txn.final_lsn != c.commit_lsn {
                    debug!(begin = %Lsn(txn.final_lsn), commit = %Lsn(c.commit_lsn), "commit lsn differs from begin's final lsn");
                }
                self.progress_reported = self.progress_reported.max(Lsn(c.end_lsn));
                let resume_position = Position::Pg(Lsn(c.end_lsn));
                if txn.discard || txn.changes == 0 {
                    self.out
                        .push_back(SourceMessage::Discard { resume_position });
                } else {
                    self.out.push_back(SourceMessage::Commit(TransactionMeta {
                        position: Position::Pg(Lsn(c.commit_lsn)),
                        resume_position,
                        commit_time_micros: c.commit_time.saturating_add(PG_EPOCH_OFFSET_MICROS),
                        origin: txn.origin,
                    }));
                }
            }
            PgOutputMessage::Origin(o) => {
                debug!(origin = %o.name, "transaction has a replication origin");
            }
            PgOutputMessage::Type(t) => {
                self.type_names.insert(t.oid, t.name);
            }
            PgOutputMessage::Relation(r) => {
                self.pending_relation = Some(r);
            }
            PgOutputMessage::Insert(i) => {
                self.note_checkpoint_write(i.relation_id, &i.new);
                if self.yields_change(i.relation_id)? {
                    let rel = self.relation(i.relation_id)?;
                    let row = self.convert_tuple(rel, i.new, None)?;
                    self.push_change(i.relation_id, RowChange::Insert { row });
                }
            }
            PgOutputMessage::Update(u) => {
                self.note_checkpoint_write(u.relation_id, &u.new);
                if self.yields_change(u.relation_id)? {
                    let rel = self.relation(u.relation_id)?;
                    let old = match u.old {
                        Some((kind, tuple)) => Some((kind, self.convert_tuple(rel, tuple, None)?)),
                        None => None,
                    };
                    let full_old = match &old {
                        Some((OldTupleKind::Full, row)) => Some(row),
                        _ => None,
                    };
                    let row = self.convert_tuple(rel, u.new, full_old)?;
                    let old_key = old.and_then(|(_, old)| changed_key(&rel.schema, &old, &row));
                    self.push_change(u.relation_id, RowChange::Update { old_key, row });
                }
            }
            PgOutputMessage::Delete(d) => {
                if self.yields_change(d.relation_id)? {
                    let rel = self.relation(d.relation_id)?;
                    let key = self.convert_tuple(rel, d.old, None)?;
                    self.push_change(d.relation_id, RowChange::Delete { key });
                }
            }
            PgOutputMessage::Truncate(t) => {
                for id in t.relation_ids {
                    if self.yields_change(id)? {
                        self.push_change(id, RowChange::Truncate);
                    }
                }
            }
        }
        Ok(())
    }

    fn relation(&self, id: u32) -> Result<&RelationState, ConnectorError> {
        self.relations.get(&id).ok_or_else(|| {
            self.err(
                ErrorKind::Protocol,
                format_args!("pgoutput sent a change for unknown relation {id}"),
            )
        })
    }

    /// A write of the checkpoint row keyed by a pipeline of
    /// `echo_origins`: the transaction is kept, tagged with its origin store
    /// (instead of being discarded by [`Self::yields_change`]).
    fn note_checkpoint_write(&mut self, id: u32, tuple: &Tuple) {
        let Some(rel) = self.relations.get(&id).filter(|r| r.checkpoint) else {
            return;
        };
        let key = rel
            .schema
            .column_index("pipeline")
            .and_then(|i| tuple.get(i))
            .and_then(|v| match v {
                TupleValue::Text(bytes) => std::str::from_utf8(bytes).ok(),
                _ => None,
            });
        let origin = key.and_then(|k| self.echo_origins.origin_of(k));
        if let (Some(origin), Some(txn)) = (origin, self.txn.as_mut()) {
            if txn.origin.is_none() {
                debug!(origin = %origin, "transaction was applied by callosum: kept with its origin");
            }
            txn.origin = Some(origin.to_string());
        }
    }

    /// Whether a change to relation `id` is to be yielded; marks the
    /// transaction discarded when the change is Callosum's own checkpoint
    /// (unless it carries an origin to keep).
    fn yields_change(&mut self, id: u32) -> Result<bool, ConnectorError> {
        let rel = self.relation(id)?;
        let (checkpoint, captured) = (rel.checkpoint, rel.captured);
        let Some(txn) = self.txn.as_mut() else {
            return Err(self.err(
                ErrorKind::Protocol,
                "pgoutput sent a change outside a transaction",
            ));
        };
        if checkpoint && txn.origin.is_some() {
            return Ok(false);
        }
        if checkpoint && !txn.discard {
            debug!(
                "transaction writes the checkpoint table: discarding it as callosum's own write"
            );
            txn.discard = true;
        }
        Ok(!txn.discard && captured)
    }

    fn push_change(&mut self, id: u32, change: RowChange) {
        if let (Some(rel), Some(txn)) = (self.relations.get(&id), self.txn.as_mut()) {
            txn.changes += 1;
            self.out.push_back(SourceMessage::Change(ChangeEvent {
                schema: rel.schema.clone(),
                change,
            }));
        }
    }

    /// Converts a tuple to a row; `u` columns become [`Value::Unchanged`]
    /// unless `fill` (the full old row) has them.
    fn convert_tuple(
        &self,
        rel: &RelationState,
        tuple: Tuple,
        fill: Option<&Row>,
    ) -> Result<Row, ConnectorError> {
        if tuple.len() != rel.type_oids.len() {
            return Err(self.err(
                ErrorKind::Protocol,
                format_args!(
                    "pgoutput sent {} columns for table {} which has {}",
                    tuple.len(),
                    rel.schema.table,
                    rel.type_oids.len()
                ),
            ));
        }
        tuple
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                TupleValue::Null => Ok(Value::Null),
                TupleValue::UnchangedToast => Ok(fill
                    .and_then(|old| old.get(i))
                    .filter(|v| !v.is_unchanged())
                    .cloned()
                    .unwrap_or(Value::Unchanged)),
                // Never an error: a value capture cannot decode is carried as
                // Value::Undecodable and refused by the sink of the pipeline
                // concerned, so one column never halts the whole store.
                TupleValue::Text(bytes) => Ok(text_value::decode(
                    rel.type_oids[i],
                    &rel.schema.columns[i].source_type,
                    bytes,
                )),
                TupleValue::Binary(_) => Err(self.err(
                    ErrorKind::Protocol,
                    "pgoutput sent a binary value, which was not requested",
                )),
            })
            .collect()
    }
}

/// `Some(old key values, other columns Null)` when a key column of `new`
/// differs from `old`.
fn changed_key(schema: &TableSchema, old: &Row, new: &Row) -> Option<Row> {
    let keys = schema.key_indexes();
    let changed = keys.iter().any(|&i| {
        let (o, n) = (&old[i], &new[i]);
        !o.is_unchanged() && !n.is_unchanged() && o != n
    });
    changed.then(|| {
        old.iter()
            .enumerate()
            .map(|(i, v)| {
                if schema.columns[i].is_key {
                    v.clone()
                } else {
                    Value::Null
                }
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::{Begin, Commit, Delete, Insert, RelationColumn, Truncate, Update};

    fn col(name: &str, type_oid: u32, key: bool) -> RelationColumn {
        RelationColumn {
            flags: u8::from(key),
            name: name.into(),
            type_oid,
            type_modifier: -1,
        }
    }

    fn relation(id: u32, name: &str, columns: Vec<RelationColumn>) -> Relation {
        Relation {
            id,
            namespace: "public".into(),
            name: name.into(),
            replica_identity: b'd',
            columns,
        }
    }

    fn t(s: &str) -> TupleValue {
        TupleValue::Text(s.as_bytes().to_vec())
    }

    /// A stream over `public.a(id int8 key, v text, n inet)` (id 1),
    /// `public.callosum_checkpoint` (id 2) and the uncaptured `public.other`
    /// (id 3).
    fn state(resume_from: Option<Lsn>) -> StreamState {
        let mut s = StreamState::new("crm", &[TableId::new("public", "a")], resume_from, Lsn(0));
        for rel in [
            relation(
                1,
                "a",
                vec![
                    col("id", 20, true),
                    col("v", 25, false),
                    col("n", 869, false),
                ],
            ),
            relation(2, CHECKPOINT_TABLE, vec![col("pipeline", 25, true)]),
            relation(3, "other", vec![col("id", 20, true)]),
        ] {
            s.handle(PgOutputMessage::Relation(rel.clone())).unwrap();
            assert_eq!(s.pending_relation(), Some(&rel));
            if rel.id == 1 {
                assert_eq!(s.unknown_type_oids(&rel), vec![869]);
                s.set_type_name(869, "inet".into());
            }
            s.install_relation(&rel, None);
        }
        s
    }

    fn begin(s: &mut StreamState, final_lsn: u64) {
        s.handle(PgOutputMessage::Begin(Begin {
            final_lsn,
            commit_time: 0,
            xid: 1,
        }))
        .unwrap();
    }

    fn commit(s: &mut StreamState, commit_lsn: u64, end_lsn: u64) {
        s.handle(PgOutputMessage::Commit(Commit {
            flags: 0,
            commit_lsn,
            end_lsn,
            commit_time: 1,
        }))
        .unwrap();
    }

    fn insert(s: &mut StreamState, relation_id: u32, new: Tuple) -> Result<(), ConnectorError> {
        s.handle(PgOutputMessage::Insert(Insert { relation_id, new }))
    }

    fn drain(s: &mut StreamState) -> Vec<SourceMessage> {
        std::iter::from_fn(|| s.pop()).collect()
    }

    fn row_a(id: &str) -> Tuple {
        vec![t(id), t("v"), TupleValue::Null]
    }

    #[test]
    fn a_transaction_is_begin_changes_commit_with_positions() {
        let mut s = state(None);
        begin(&mut s, 100);
        insert(&mut s, 1, row_a("1")).unwrap();
        commit(&mut s, 100, 120);
        let out = drain(&mut s);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], SourceMessage::Begin);
        let SourceMessage::Change(c) = &out[1] else {
            panic!()
        };
        assert_eq!(
            c.change,
            RowChange::Insert {
                row: vec![Value::Int(1), Value::Text("v".into()), Value::Null]
            }
        );
        assert_eq!(c.schema.columns[2].source_type, "inet");
        assert_eq!(
            out[2],
            SourceMessage::Commit(TransactionMeta {
                position: Position::Pg(Lsn(100)),
                resume_position: Position::Pg(Lsn(120)),
                commit_time_micros: 1 + PG_EPOCH_OFFSET_MICROS,
                origin: None,
            })
        );
    }

    #[test]
    fn checkpoint_writes_discard_the_whole_transaction() {
        let mut s = state(None);
        begin(&mut s, 100);
        insert(&mut s, 2, vec![t("erp_to_crm")]).unwrap();
        insert(&mut s, 1, row_a("1")).unwrap();
        commit(&mut s, 100, 120);
        assert_eq!(
            drain(&mut s),
            [
                SourceMessage::Begin,
                SourceMessage::Discard {
                    resume_position: Position::Pg(Lsn(120))
                }
            ]
        );
        // Checkpoint last: the change already yielded is dropped by the
        // consumer on Discard.
        begin(&mut s, 200);
        insert(&mut s, 1, row_a("2")).unwrap();
        s.handle(PgOutputMessage::Update(Update {
            relation_id: 2,
            old: None,
            new: vec![t("erp_to_crm")],
        }))
        .unwrap();
        insert(&mut s, 1, row_a("3")).unwrap();
        commit(&mut s, 200, 220);
        let out = drain(&mut s);
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(matches!(out[2], SourceMessage::Discard { .. }));
    }

    #[test]
    fn transactions_before_resume_from_are_discarded() {
        let mut s = state(Some(Lsn(100)));
        begin(&mut s, 90);
        insert(&mut s, 1, row_a("1")).unwrap();
        commit(&mut s, 90, 100);
        assert_eq!(
            drain(&mut s),
            [
                SourceMessage::Begin,
                SourceMessage::Discard {
                    resume_position: Position::Pg(Lsn(100))
                }
            ]
        );
        // A commit record starting exactly at the resume position is new.
        begin(&mut s, 100);
        insert(&mut s, 1, row_a("2")).unwrap();
        commit(&mut s, 100, 130);
        assert!(matches!(drain(&mut s)[2], SourceMessage::Commit(_)));
    }

    #[test]
    fn uncaptured_tables_are_skipped_and_empty_transactions_discarded() {
        let mut s = state(None);
        begin(&mut s, 100);
        insert(&mut s, 3, vec![t("1")]).unwrap();
        s.handle(PgOutputMessage::Truncate(Truncate {
            options: 0,
            relation_ids: vec![3, 1],
        }))
        .unwrap();
        commit(&mut s, 100, 120);
        let out = drain(&mut s);
        assert_eq!(out.len(), 3, "{out:?}");
        let SourceMessage::Change(c) = &out[1] else {
            panic!()
        };
        assert_eq!(c.change, RowChange::Truncate);
        assert_eq!(c.schema.table, TableId::new("public", "a"));

        begin(&mut s, 200);
        insert(&mut s, 3, vec![t("2")]).unwrap();
        commit(&mut s, 200, 220);
        assert!(matches!(drain(&mut s)[1], SourceMessage::Discard { .. }));
    }

    #[test]
    fn progress_only_between_transactions_and_only_forward() {
        let mut s = state(None);
        s.keepalive(Lsn(50));
        assert_eq!(
            drain(&mut s),
            [SourceMessage::Progress(Position::Pg(Lsn(50)))]
        );
        s.keepalive(Lsn(50));
        s.keepalive(Lsn(40));
        assert!(drain(&mut s).is_empty());
        begin(&mut s, 100);
        s.keepalive(Lsn(90));
        assert_eq!(drain(&mut s), [SourceMessage::Begin]);
        insert(&mut s, 1, row_a("1")).unwrap();
        commit(&mut s, 100, 120);
        drain(&mut s);
        s.keepalive(Lsn(110));
        assert!(drain(&mut s).is_empty(), "behind the last commit");
        s.keepalive(Lsn(130));
        assert_eq!(
            drain(&mut s),
            [SourceMessage::Progress(Position::Pg(Lsn(130)))]
        );
    }

    #[test]
    fn updates_keep_unchanged_toast_and_report_key_changes() {
        let mut s = state(None);
        begin(&mut s, 100);
        // Unchanged TOAST, no old tuple.
        s.handle(PgOutputMessage::Update(Update {
            relation_id: 1,
            old: None,
            new: vec![t("1"), TupleValue::UnchangedToast, TupleValue::Null],
        }))
        .unwrap();
        // Old key equal to the new one (sent because the key is toasted).
        s.handle(PgOutputMessage::Update(Update {
            relation_id: 1,
            old: Some((
                OldTupleKind::Key,
                vec![t("1"), TupleValue::Null, TupleValue::Null],
            )),
            new: vec![t("1"), t("x"), TupleValue::Null],
        }))
        .unwrap();
        // Key change.
        s.handle(PgOutputMessage::Update(Update {
            relation_id: 1,
            old: Some((
                OldTupleKind::Key,
                vec![t("1"), TupleValue::Null, TupleValue::Null],
            )),
            new: vec![t("2"), TupleValue::UnchangedToast, TupleValue::Null],
        }))
        .unwrap();
        // Full old row fills unchanged TOAST.
        s.handle(PgOutputMessage::Update(Update {
            relation_id: 1,
            old: Some((OldTupleKind::Full, vec![t("2"), t("big"), TupleValue::Null])),
            new: vec![t("2"), TupleValue::UnchangedToast, TupleValue::Null],
        }))
        .unwrap();
        s.handle(PgOutputMessage::Delete(Delete {
            relation_id: 1,
            old_kind: OldTupleKind::Key,
            old: vec![t("2"), TupleValue::Null, TupleValue::Null],
        }))
        .unwrap();
        let changes: Vec<RowChange> = drain(&mut s)
            .into_iter()
            .filter_map(|m| match m {
                SourceMessage::Change(c) => Some(c.change),
                _ => None,
            })
            .collect();
        let v = |s: &str| Value::Text(s.into());
        assert_eq!(
            changes,
            [
                RowChange::Update {
                    old_key: None,
                    row: vec![Value::Int(1), Value::Unchanged, Value::Null]
                },
                RowChange::Update {
                    old_key: None,
                    row: vec![Value::Int(1), v("x"), Value::Null]
                },
                RowChange::Update {
                    old_key: Some(vec![Value::Int(1), Value::Null, Value::Null]),
                    row: vec![Value::Int(2), Value::Unchanged, Value::Null]
                },
                RowChange::Update {
                    old_key: None,
                    row: vec![Value::Int(2), v("big"), Value::Null]
                },
                RowChange::Delete {
                    key: vec![Value::Int(2), Value::Null, Value::Null]
                },
            ]
        );
    }

    #[test]
    fn values_of_any_type_never_fail_capture() {
        let mut s = state(None);
        begin(&mut s, 100);
        // A type without a conversion of its own is carried as text.
        insert(&mut s, 1, vec![t("1"), t("v"), t("10.1.2.3")]).unwrap();
        // A value that cannot be decoded is carried, named, for the sink to
        // refuse in the pipeline concerned; the reason has no value.
        insert(&mut s, 1, vec![t("one"), t("v"), TupleValue::Null]).unwrap();
        commit(&mut s, 100, 120);
        let rows: Vec<Row> = drain(&mut s)
            .into_iter()
            .filter_map(|m| match m {
                SourceMessage::Change(c) => match c.change {
                    RowChange::Insert { row } => Some(row),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(rows[0][2], Value::Text("10.1.2.3".into()));
        let Value::Undecodable { type_name, reason } = &rows[1][0] else {
            panic!("{:?}", rows[1][0]);
        };
        assert_eq!(type_name, "int8");
        assert!(!reason.contains("one"), "{reason}");
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut s = state(None);
        assert_eq!(
            insert(&mut s, 1, row_a("1")).unwrap_err().kind,
            ErrorKind::Protocol,
            "change outside a transaction"
        );
        begin(&mut s, 100);
        assert_eq!(
            insert(&mut s, 99, row_a("1")).unwrap_err().kind,
            ErrorKind::Protocol
        );
        assert_eq!(
            insert(&mut s, 1, vec![t("1")]).unwrap_err().kind,
            ErrorKind::Protocol,
            "wrong column count"
        );
    }

    #[test]
    fn an_unchanged_relation_keeps_its_schema_arc() {
        let mut s = state(None);
        let schema = |s: &mut StreamState| {
            begin(s, 100);
            insert(s, 1, row_a("1")).unwrap();
            commit(s, 100, 120);
            match &drain(s)[1] {
                SourceMessage::Change(c) => c.schema.clone(),
                other => panic!("{other:?}"),
            }
        };
        let first = schema(&mut s);
        let rel = relation(
            1,
            "a",
            vec![
                col("id", 20, true),
                col("v", 25, false),
                col("n", 869, false),
            ],
        );
        s.install_relation(&rel, None);
        assert!(Arc::ptr_eq(&first, &schema(&mut s)));
        let mut changed = rel.clone();
        changed.columns[1].name = "w".into();
        s.install_relation(&changed, None);
        assert!(!Arc::ptr_eq(&first, &schema(&mut s)));
    }
}

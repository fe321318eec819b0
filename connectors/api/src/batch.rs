//! The batch planner shared by every sink: turns the changes of several whole
//! source transactions (applied in one target transaction) into their net
//! effect per `(table, key)`, as ordered steps a sink can issue as a few
//! multi-row statements.
//!
//! Guarantees of [`plan`] (checked by a property test against a model table):
//! - applying the steps in order to a table that was in step with the source
//!   before the batch leaves it in the state the raw changes, applied one by
//!   one, would have left it in;
//! - per key, the last change wins: an insert or a full update becomes an
//!   upsert of the whole row, a delete a delete;
//! - an update whose row holds [`Value::Unchanged`] columns is merged into an
//!   earlier upsert of the same key in the batch when there is one; otherwise
//!   it stays a partial upsert whose [`Step::Upsert::present`] mask leaves the
//!   unchanged columns out, so they are never written;
//! - a key-changing update becomes a delete of the old key plus an upsert of
//!   the new row; when that row has unchanged columns and no earlier full row
//!   of the old key is in the batch, it becomes a [`Step::UpdateKey`] barrier:
//!   everything planned before it for that table is emitted first, and it
//!   runs in order;
//! - a truncate is a barrier: everything before it for that table is dropped
//!   and a [`Step::Truncate`] is emitted in order;
//! - between barriers, a table's deletes come first (one step per schema),
//!   then its upserts grouped by present-column set, groups in the order of
//!   their first row and rows in the order of their last change. Deleting
//!   first can only free unique values, so unique secondary keys that the
//!   source moved from a deleted row to another row apply cleanly;
//! - [`Value::Unchanged`] never appears in a present column of a step.
//!
//! Unique secondary keys ([`plan_with`]): when the target table has unique
//! keys besides its primary key, a row whose unique values changed in the
//! batch must not be moved past rows changed after it (a value it gave up
//! may have been taken by one of them; a value it takes may be given up by
//! one of them). So when a key changes again after other rows of its table
//! changed, and its unique values (or its existence) differ from what is
//! pending for it, the table's pending ops are emitted first as a sub-plan
//! and the change starts the next one. A change that keeps the unique
//! values stays at the key's earlier place. Within a sub-plan every row's
//! unique values take their final value at its place in source order, so
//! applying the steps row by row never holds a value twice when the source,
//! applying the changes one by one, did not. Swaps, moves and cycles of
//! unique values across transactions thus apply; a swap the source made in
//! one statement or with a deferred constraint (a temporary duplicate) is
//! refused by the target as a constraint error, never applied to the wrong
//! row.
//!
//! Schema barrier: when a table's schema changes within the batch (an
//! `ALTER TABLE` between two of its changes), its pending changes are
//! emitted first; changes written under different schemas are never merged
//! into one net effect, and every step carries the schema its rows were
//! written under, so a sink maps each by its own column list.
//!
//! Tables are independent of each other: steps of different tables may be
//! interleaved in any order (sinks disable foreign-key checks for the batch).

use crate::{ChangeEvent, RowChange, TableId, TableSchema, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// One planned statement group, in the schema of the events it came from.
#[derive(Clone, Debug, PartialEq)]
pub enum Step<'a> {
    /// Remove every row of the table.
    Truncate { schema: &'a Arc<TableSchema> },
    /// Delete the rows with these keys. Each entry is a row in `schema`'s
    /// column order of which only the key columns are meaningful. Keys are
    /// distinct.
    Delete {
        schema: &'a Arc<TableSchema>,
        keys: Vec<&'a [Value]>,
    },
    /// Insert these rows, or update the existing rows with the same key.
    /// Only columns whose `present` flag is set are written; every row holds
    /// a real value (never [`Value::Unchanged`]) in those columns. Keys are
    /// distinct.
    Upsert {
        schema: &'a Arc<TableSchema>,
        present: Vec<bool>,
        rows: Vec<Cow<'a, [Value]>>,
    },
    /// `UPDATE … SET <present columns of row> WHERE key = old_key`: a
    /// key-changing update whose new row has unchanged columns. The row at
    /// `old_key` exists and the new key is free when this step runs.
    UpdateKey {
        schema: &'a Arc<TableSchema>,
        old_key: &'a [Value],
        row: &'a [Value],
    },
}

impl<'a> Step<'a> {
    pub fn schema(&self) -> &'a Arc<TableSchema> {
        match self {
            Step::Truncate { schema }
            | Step::Delete { schema, .. }
            | Step::Upsert { schema, .. }
            | Step::UpdateKey { schema, .. } => schema,
        }
    }

    pub fn table(&self) -> &'a TableId {
        &self.schema().table
    }

    /// Rows the step touches (1 for truncate and key updates).
    pub fn row_count(&self) -> usize {
        match self {
            Step::Delete { keys, .. } => keys.len(),
            Step::Upsert { rows, .. } => rows.len(),
            Step::Truncate { .. } | Step::UpdateKey { .. } => 1,
        }
    }
}

/// Two schemas are the same table shape: the same `Arc`, or equal content
/// (events read back from the change log carry separate `Arc`s).
pub fn same_schema(a: &Arc<TableSchema>, b: &Arc<TableSchema>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

/// Plans `events` (whole source transactions in commit order). See the
/// module docs for the guarantees.
pub fn plan(events: &[ChangeEvent]) -> Vec<Step<'_>> {
    plan_with(events, |_: &TableSchema| Vec::new())
}

/// Plans `events` for a target whose tables have unique keys besides their
/// primary keys: `unique_keys(schema)` gives the columns (positions in
/// `schema`) of each such key of the table `schema` maps to. Called once
/// per table and schema in the batch. Tables without unique keys are
/// planned exactly as by [`plan`]. See the module docs.
pub fn plan_with<F>(events: &[ChangeEvent], mut unique_keys: F) -> Vec<Step<'_>>
where
    F: FnMut(&TableSchema) -> Vec<Vec<usize>>,
{
    let mut planner = Planner::default();
    for event in events {
        planner.add(event, &mut unique_keys);
    }
    planner.finish()
}

/// The target's unique keys (`keys`: column indexes of the target table,
/// `name`: a target column's name) as positions in `schema`, matched by
/// name, for [`plan_with`]. A key column the source does not have keeps
/// its value on every write and is left out.
pub fn unique_key_positions<'n>(
    schema: &TableSchema,
    keys: &[Vec<usize>],
    name: impl Fn(usize) -> &'n str,
) -> Vec<Vec<usize>> {
    keys.iter()
        .map(|key| {
            key.iter()
                .filter_map(|&t| schema.column_index(name(t)))
                .collect()
        })
        .collect()
}

/// A 64-bit fingerprint of the key of `row` (values in the column order of
/// `schema`): equal keys of one table give equal fingerprints; different keys
/// give different ones except with a probability of about 2⁻⁶⁴. Deterministic
/// within a build, not a stable on-disk format. For the dead-letter queue,
/// which holds back later changes of the rows a dead-lettered transaction
/// changes without keeping the keys themselves in memory.
pub fn key_fingerprint(schema: &TableSchema, row: &[Value]) -> u64 {
    // SipHash with fixed keys: the same for every hasher made by `new`
    let mut hasher = std::hash::DefaultHasher::new();
    KeyRef { schema, row }.hash(&mut hasher);
    hasher.finish()
}

/// Calls `f` with the key fingerprint ([`key_fingerprint`]) of every row
/// `change` touches: the row of an insert, the new and (when the key changed)
/// old key of an update, the key of a delete; none for a truncate.
pub fn for_each_key_fingerprint(schema: &TableSchema, change: &RowChange, mut f: impl FnMut(u64)) {
    match change {
        RowChange::Insert { row } => f(key_fingerprint(schema, row)),
        RowChange::Update { old_key, row } => {
            f(key_fingerprint(schema, row));
            if let Some(old_key) = old_key {
                f(key_fingerprint(schema, old_key));
            }
        }
        RowChange::Delete { key } => f(key_fingerprint(schema, key)),
        RowChange::Truncate => {}
    }
}

/// The key columns of a row, hashed and compared by value.
#[derive(Clone, Copy, Debug)]
struct KeyRef<'a> {
    schema: &'a TableSchema,
    row: &'a [Value],
}

impl<'a> KeyRef<'a> {
    fn values(&self) -> impl Iterator<Item = &'a Value> + 'a {
        self.schema
            .columns
            .iter()
            .zip(self.row)
            .filter(|(c, _)| c.is_key)
            .map(|(_, v)| v)
    }
}

impl PartialEq for KeyRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.values().eq(other.values())
    }
}

impl Eq for KeyRef<'_> {}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for v in self.values() {
            hash_value(v, state);
        }
    }
}

fn hash_value<H: Hasher>(v: &Value, state: &mut H) {
    std::mem::discriminant(v).hash(state);
    match v {
        Value::Null | Value::Unchanged => {}
        Value::Bool(b) => b.hash(state),
        Value::Int(i) => i.hash(state),
        Value::UInt(u) => u.hash(state),
        Value::Float(f) => f.to_bits().hash(state),
        Value::Decimal(s) | Value::Text(s) | Value::Uuid(s) | Value::Json(s) => s.hash(state),
        Value::Bytes(b) => b.hash(state),
        Value::Date(d) => d.hash(state),
        Value::Time(t) => t.hash(state),
        Value::Timestamp(t) => t.hash(state),
        Value::TimestampTz(t) => t.hash(state),
        Value::Interval(i) => i.hash(state),
        Value::Infinity { negative } => negative.hash(state),
        Value::ZonedTimestamp(t) => t.hash(state),
        Value::Undecodable { type_name, reason } => {
            type_name.hash(state);
            reason.hash(state);
        }
    }
}

#[derive(Debug)]
enum PendingOp<'a> {
    Upsert(Cow<'a, [Value]>),
    Delete(&'a [Value]),
}

#[derive(Debug)]
struct Pending<'a> {
    schema: &'a Arc<TableSchema>,
    op: PendingOp<'a>,
}

#[derive(Debug)]
struct TableState<'a> {
    table: &'a TableId,
    /// Key → index of its pending op in `ops`.
    index: HashMap<KeyRef<'a>, usize>,
    /// Pending ops in the order of each key's last change; superseded
    /// entries are `None`.
    ops: Vec<Option<Pending<'a>>>,
    /// The schema `unique` was computed for.
    unique_schema: Option<&'a Arc<TableSchema>>,
    /// Column sets of the target's unique secondary keys, positions in
    /// `unique_schema`; empty: the table has none (set-based fast path).
    unique: Vec<Vec<usize>>,
}

#[derive(Debug, Default)]
struct Planner<'a> {
    tables: Vec<TableState<'a>>,
    steps: Vec<Step<'a>>,
}

fn has_unchanged(row: &[Value]) -> bool {
    row.iter().any(Value::is_unchanged)
}

/// `base` overwritten by the columns of `over` that are not unchanged.
fn merge(base: &[Value], over: &[Value]) -> Vec<Value> {
    base.iter()
        .zip(over)
        .map(|(b, o)| {
            if o.is_unchanged() {
                b.clone()
            } else {
                o.clone()
            }
        })
        .collect()
}

impl<'a> TableState<'a> {
    fn set(&mut self, key: KeyRef<'a>, pending: Pending<'a>) {
        let at = self.ops.len();
        self.ops.push(Some(pending));
        if let Some(old) = self.index.insert(key, at) {
            self.ops[old] = None;
        }
    }

    fn get(&self, key: &KeyRef<'a>) -> Option<&Pending<'a>> {
        self.index.get(key).and_then(|&i| self.ops[i].as_ref())
    }

    /// Before a change of `key` that sets `row` (`None`: deletes it): with
    /// unique secondary keys, emits the pending ops as a sub-plan when the
    /// key changed earlier, other rows changed since, and the change does
    /// not keep the key's pending unique values. Returns whether the
    /// change may replace the pending op in place instead (same unique
    /// values, other rows changed since).
    fn split_before(
        &mut self,
        key: &KeyRef<'a>,
        row: Option<&[Value]>,
        steps: &mut Vec<Step<'a>>,
    ) -> bool {
        if self.unique.is_empty() {
            return false;
        }
        let Some(&at) = self.index.get(key) else {
            return false;
        };
        // the last op is always live (a superseded op is never the last):
        // other rows changed since iff the key's op is not the last one
        if at + 1 == self.ops.len() {
            return false;
        }
        let keeps = match (&self.ops[at], row) {
            // deletes are emitted first: deleting earlier only frees values
            (_, None) => return false,
            (
                Some(Pending {
                    schema,
                    op: PendingOp::Upsert(pending),
                }),
                Some(row),
            ) if self.unique_schema.is_some_and(|u| same_schema(u, schema)) => {
                self.unique.iter().flatten().all(|&c| {
                    row[c].is_unchanged() || (!pending[c].is_unchanged() && pending[c] == row[c])
                })
            }
            _ => false,
        };
        if !keeps {
            self.flush(steps);
        }
        keeps
    }

    /// Replaces the pending op of `key` where it stands.
    fn replace(&mut self, key: &KeyRef<'a>, pending: Pending<'a>) {
        let at = self.index[key];
        self.ops[at] = Some(pending);
    }

    /// Plans a delete of `key`. With unique keys it takes the place of the
    /// key's pending op: should the key come back later in the batch, its
    /// row still holds its values until then, and [`Self::split_before`]
    /// must see that other rows changed since.
    fn set_delete(&mut self, key: KeyRef<'a>, pending: Pending<'a>) {
        if !self.unique.is_empty() && self.index.contains_key(&key) {
            self.replace(&key, pending);
        } else {
            self.set(key, pending);
        }
    }

    /// Emits the pending ops: deletes first, then upserts grouped by
    /// present-column set (with unique keys: only consecutive rows).
    fn flush(&mut self, steps: &mut Vec<Step<'a>>) {
        self.index.clear();
        let first_upsert_group = steps.len();
        let mut deletes: Vec<Step<'a>> = Vec::new();
        for pending in self.ops.drain(..).flatten() {
            match pending.op {
                PendingOp::Delete(key) => {
                    let group = deletes.iter_mut().find_map(|s| match s {
                        Step::Delete { schema, keys } if same_schema(schema, pending.schema) => {
                            Some(keys)
                        }
                        _ => None,
                    });
                    match group {
                        Some(keys) => keys.push(key),
                        None => deletes.push(Step::Delete {
                            schema: pending.schema,
                            keys: vec![key],
                        }),
                    }
                }
                PendingOp::Upsert(row) => {
                    // with unique keys, rows keep their order: a row joins
                    // only the group right before it
                    let from = if self.unique.is_empty() {
                        first_upsert_group
                    } else {
                        steps.len().saturating_sub(1).max(first_upsert_group)
                    };
                    let group = steps[from..].iter_mut().find_map(|s| match s {
                        Step::Upsert {
                            schema,
                            present,
                            rows,
                        } if same_schema(schema, pending.schema)
                            && present
                                .iter()
                                .zip(row.iter())
                                .all(|(p, v)| *p != v.is_unchanged()) =>
                        {
                            Some(rows)
                        }
                        _ => None,
                    });
                    match group {
                        Some(rows) => rows.push(row),
                        None => steps.push(Step::Upsert {
                            schema: pending.schema,
                            present: row.iter().map(|v| !v.is_unchanged()).collect(),
                            rows: vec![row],
                        }),
                    }
                }
            }
        }
        steps.splice(first_upsert_group..first_upsert_group, deletes);
    }
}

impl<'a> Planner<'a> {
    fn table(&mut self, table: &'a TableId) -> usize {
        match self.tables.iter().position(|t| t.table == table) {
            Some(i) => i,
            None => {
                self.tables.push(TableState {
                    table,
                    index: HashMap::new(),
                    ops: Vec::new(),
                    unique_schema: None,
                    unique: Vec::new(),
                });
                self.tables.len() - 1
            }
        }
    }

    fn add<F>(&mut self, event: &'a ChangeEvent, unique_keys: &mut F)
    where
        F: FnMut(&TableSchema) -> Vec<Vec<usize>>,
    {
        let schema = &event.schema;
        let t = self.table(&schema.table);
        let state = &mut self.tables[t];
        if !state.unique_schema.is_some_and(|u| same_schema(u, schema)) {
            // Schema barrier: changes written under another schema of the
            // table (an `ALTER TABLE` in between) are never merged with
            // these into one net effect; each run keeps its own schema.
            if state.unique_schema.is_some() {
                state.flush(&mut self.steps);
            }
            state.unique = unique_keys(schema);
            state.unique.retain(|k| !k.is_empty());
            state.unique_schema = Some(schema);
        }
        let key_of = |row: &'a [Value]| KeyRef {
            schema: schema.as_ref(),
            row,
        };
        match &event.change {
            RowChange::Insert { row } | RowChange::Update { old_key: None, row } => {
                let key = key_of(row);
                let in_place = self.tables[t].split_before(&key, Some(row), &mut self.steps);
                self.upsert(t, schema, key, row, in_place);
            }
            RowChange::Update {
                old_key: Some(old),
                row,
            } => {
                let (old_k, new_k) = (key_of(old), key_of(row));
                if old_k == new_k {
                    let in_place = self.tables[t].split_before(&new_k, Some(row), &mut self.steps);
                    self.upsert(t, schema, new_k, row, in_place);
                    return;
                }
                let state = &mut self.tables[t];
                if state.split_before(&new_k, Some(row), &mut self.steps) {
                    state.flush(&mut self.steps);
                }
                if !has_unchanged(row) {
                    let state = &mut self.tables[t];
                    state.set_delete(
                        old_k,
                        Pending {
                            schema,
                            op: PendingOp::Delete(old),
                        },
                    );
                    state.set(
                        new_k,
                        Pending {
                            schema,
                            op: PendingOp::Upsert(Cow::Borrowed(row)),
                        },
                    );
                } else {
                    let state = &mut self.tables[t];
                    let merged = match state.get(&old_k) {
                        Some(Pending {
                            schema: base_schema,
                            op: PendingOp::Upsert(base),
                        }) if same_schema(base_schema, schema) && !has_unchanged(base) => {
                            Some(merge(base, row))
                        }
                        _ => None,
                    };
                    match merged {
                        Some(full) => {
                            state.set_delete(
                                old_k,
                                Pending {
                                    schema,
                                    op: PendingOp::Delete(old),
                                },
                            );
                            state.set(
                                new_k,
                                Pending {
                                    schema,
                                    op: PendingOp::Upsert(Cow::Owned(full)),
                                },
                            );
                        }
                        None => {
                            state.flush(&mut self.steps);
                            self.steps.push(Step::UpdateKey {
                                schema,
                                old_key: old,
                                row,
                            });
                        }
                    }
                }
            }
            RowChange::Delete { key } => {
                self.tables[t].set_delete(
                    key_of(key),
                    Pending {
                        schema,
                        op: PendingOp::Delete(key),
                    },
                );
            }
            RowChange::Truncate => {
                let state = &mut self.tables[t];
                state.index.clear();
                state.ops.clear();
                let table = state.table;
                self.steps.retain(|s| s.table() != table);
                self.steps.push(Step::Truncate { schema });
            }
        }
    }

    /// Plans an upsert of `row`; `in_place`: replaces the key's pending op
    /// where it stands instead of moving it to the end.
    fn upsert(
        &mut self,
        t: usize,
        schema: &'a Arc<TableSchema>,
        key: KeyRef<'a>,
        row: &'a [Value],
        in_place: bool,
    ) {
        let state = &mut self.tables[t];
        if !has_unchanged(row) {
            let pending = Pending {
                schema,
                op: PendingOp::Upsert(Cow::Borrowed(row)),
            };
            if in_place {
                state.replace(&key, pending);
            } else {
                state.set(key, pending);
            }
            return;
        }
        let merged = match state.get(&key) {
            Some(Pending {
                schema: base_schema,
                op: PendingOp::Upsert(base),
            }) => {
                if same_schema(base_schema, schema) {
                    Some(merge(base, row))
                } else {
                    // A schema change between the two: apply what came
                    // before, then this row as a partial upsert.
                    state.flush(&mut self.steps);
                    None
                }
            }
            _ => None,
        };
        let in_place = in_place && merged.is_some();
        let op = match merged {
            Some(row) => PendingOp::Upsert(Cow::Owned(row)),
            None => PendingOp::Upsert(Cow::Borrowed(row)),
        };
        if in_place {
            self.tables[t].replace(&key, Pending { schema, op });
        } else {
            self.tables[t].set(key, Pending { schema, op });
        }
    }

    fn finish(mut self) -> Vec<Step<'a>> {
        for state in &mut self.tables {
            state.flush(&mut self.steps);
        }
        self.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_fingerprints_follow_the_key_only() {
        let s = TableSchema {
            table: TableId::new("public", "t"),
            columns: vec![
                ColumnSchema {
                    name: "id".into(),
                    source_type: "int8".into(),
                    is_key: true,
                },
                ColumnSchema {
                    name: "v".into(),
                    source_type: "text".into(),
                    is_key: false,
                },
            ],
        };
        let row = |id: i64, v: &str| vec![Value::Int(id), Value::Text(v.into())];
        assert_eq!(
            key_fingerprint(&s, &row(1, "a")),
            key_fingerprint(&s, &row(1, "b"))
        );
        assert_eq!(
            key_fingerprint(&s, &row(1, "a")),
            key_fingerprint(&s, &[Value::Int(1), Value::Null])
        );
        assert_ne!(
            key_fingerprint(&s, &row(1, "a")),
            key_fingerprint(&s, &row(2, "a"))
        );
        let mut seen = Vec::new();
        let moved = RowChange::Update {
            old_key: Some(vec![Value::Int(1), Value::Null]),
            row: row(2, "a"),
        };
        for_each_key_fingerprint(&s, &moved, |k| seen.push(k));
        assert_eq!(
            seen,
            vec![
                key_fingerprint(&s, &row(2, "a")),
                key_fingerprint(&s, &row(1, "a"))
            ]
        );
        for_each_key_fingerprint(&s, &RowChange::Truncate, |_| panic!("no row"));
    }

    use crate::ColumnSchema;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn schema(name: &str) -> Arc<TableSchema> {
        let col = |name: &str, is_key| ColumnSchema {
            name: name.into(),
            source_type: "int8".into(),
            is_key,
        };
        Arc::new(TableSchema {
            table: TableId::new("public", name),
            columns: vec![
                col("k1", true),
                col("k2", true),
                col("a", false),
                col("b", false),
            ],
        })
    }

    fn ev(schema: &Arc<TableSchema>, change: RowChange) -> ChangeEvent {
        ChangeEvent {
            schema: schema.clone(),
            change,
        }
    }

    fn row(k: i64, a: Value, b: Value) -> Vec<Value> {
        vec![Value::Int(k), Value::Int(0), a, b]
    }

    #[test]
    fn last_change_wins_and_deletes_come_first() {
        let s = schema("t");
        let events = vec![
            ev(
                &s,
                RowChange::Insert {
                    row: row(1, Value::Int(1), Value::Int(1)),
                },
            ),
            ev(
                &s,
                RowChange::Insert {
                    row: row(2, Value::Int(2), Value::Int(2)),
                },
            ),
            ev(
                &s,
                RowChange::Update {
                    old_key: None,
                    row: row(1, Value::Int(9), Value::Int(9)),
                },
            ),
            ev(
                &s,
                RowChange::Delete {
                    key: row(2, Value::Null, Value::Null),
                },
            ),
        ];
        let steps = plan(&events);
        assert_eq!(steps.len(), 2);
        assert!(matches!(&steps[0], Step::Delete { keys, .. } if keys.len() == 1));
        match &steps[1] {
            Step::Upsert { rows, present, .. } => {
                assert_eq!(present, &vec![true; 4]);
                assert_eq!(rows.len(), 1);
                assert_eq!(rows[0][2], Value::Int(9));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn partial_update_merges_into_earlier_upsert() {
        let s = schema("t");
        let events = vec![
            ev(
                &s,
                RowChange::Insert {
                    row: row(1, Value::Int(1), Value::Int(1)),
                },
            ),
            ev(
                &s,
                RowChange::Update {
                    old_key: None,
                    row: row(1, Value::Unchanged, Value::Int(5)),
                },
            ),
        ];
        let steps = plan(&events);
        assert_eq!(
            steps,
            vec![Step::Upsert {
                schema: &s,
                present: vec![true; 4],
                rows: vec![Cow::Owned(row(1, Value::Int(1), Value::Int(5)))],
            }]
        );
    }

    #[test]
    fn partial_update_without_base_stays_partial() {
        let s = schema("t");
        let events = vec![ev(
            &s,
            RowChange::Update {
                old_key: None,
                row: row(1, Value::Unchanged, Value::Int(5)),
            },
        )];
        match &plan(&events)[0] {
            Step::Upsert { present, .. } => assert_eq!(present, &vec![true, true, false, true]),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn partial_key_change_is_an_ordered_barrier() {
        let s = schema("t");
        let events = vec![
            ev(
                &s,
                RowChange::Delete {
                    key: row(2, Value::Null, Value::Null),
                },
            ),
            ev(
                &s,
                RowChange::Update {
                    old_key: Some(row(1, Value::Null, Value::Null)),
                    row: row(2, Value::Unchanged, Value::Int(5)),
                },
            ),
            ev(
                &s,
                RowChange::Insert {
                    row: row(1, Value::Int(7), Value::Int(7)),
                },
            ),
        ];
        let steps = plan(&events);
        assert!(matches!(steps[0], Step::Delete { .. }));
        assert!(matches!(steps[1], Step::UpdateKey { .. }));
        assert!(matches!(steps[2], Step::Upsert { .. }));
    }

    #[test]
    fn a_schema_change_ends_the_run() {
        let old = schema("t");
        // ALTER TABLE t DROP COLUMN a
        let mut columns = old.columns.clone();
        columns.remove(2);
        let new = Arc::new(TableSchema {
            table: old.table.clone(),
            columns,
        });
        let new_row = |k: i64, b: i64| vec![Value::Int(k), Value::Int(0), Value::Int(b)];
        let events = vec![
            ev(
                &old,
                RowChange::Insert {
                    row: row(1, Value::Int(10), Value::Int(20)),
                },
            ),
            ev(
                &old,
                RowChange::Insert {
                    row: row(2, Value::Int(11), Value::Int(21)),
                },
            ),
            ev(
                &new,
                RowChange::Update {
                    old_key: None,
                    row: new_row(1, 30),
                },
            ),
            ev(&new, RowChange::Delete { key: new_row(2, 0) }),
        ];
        let steps = plan(&events);
        assert_eq!(steps.len(), 3, "{steps:?}");
        match &steps[0] {
            Step::Upsert { schema, rows, .. } => {
                assert!(Arc::ptr_eq(schema, &old));
                assert_eq!(rows.len(), 2);
                assert_eq!(rows[0].len(), 4);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            matches!(&steps[1], Step::Delete { schema, keys } if Arc::ptr_eq(schema, &new) && keys.len() == 1)
        );
        match &steps[2] {
            Step::Upsert { schema, rows, .. } => {
                assert!(Arc::ptr_eq(schema, &new));
                assert_eq!(rows[0].as_ref(), new_row(1, 30).as_slice());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn truncate_drops_what_came_before() {
        let s = schema("t");
        let u = schema("u");
        let events = vec![
            ev(
                &s,
                RowChange::Insert {
                    row: row(1, Value::Int(1), Value::Int(1)),
                },
            ),
            ev(
                &u,
                RowChange::Insert {
                    row: row(1, Value::Int(1), Value::Int(1)),
                },
            ),
            ev(&s, RowChange::Truncate),
            ev(
                &s,
                RowChange::Insert {
                    row: row(2, Value::Int(1), Value::Int(1)),
                },
            ),
        ];
        let steps = plan(&events);
        assert_eq!(steps.len(), 3);
        assert!(matches!(steps[0], Step::Truncate { .. }));
        assert_eq!(steps.iter().filter(|s| s.table().name == "t").count(), 2);
    }

    #[test]
    fn groups_by_present_column_set_in_first_row_order() {
        let s = schema("t");
        let events = vec![
            ev(
                &s,
                RowChange::Update {
                    old_key: None,
                    row: row(1, Value::Unchanged, Value::Int(1)),
                },
            ),
            ev(
                &s,
                RowChange::Insert {
                    row: row(2, Value::Int(1), Value::Int(1)),
                },
            ),
            ev(
                &s,
                RowChange::Update {
                    old_key: None,
                    row: row(3, Value::Unchanged, Value::Int(1)),
                },
            ),
            ev(
                &s,
                RowChange::Insert {
                    row: row(4, Value::Int(1), Value::Int(1)),
                },
            ),
        ];
        let steps = plan(&events);
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].row_count(), 2);
        assert!(matches!(&steps[0], Step::Upsert { present, .. } if !present[2]));
    }

    #[test]
    fn a_unique_value_moved_between_rows_applies_in_source_order() {
        // row 1 held a = 7; it gives it up, row 2 takes it, row 1 changes again
        let s = schema(UNIQUE_TABLE);
        let events = vec![
            ev(
                &s,
                RowChange::Update {
                    old_key: None,
                    row: row(1, Value::Int(8), Value::Int(0)),
                },
            ),
            ev(
                &s,
                RowChange::Insert {
                    row: row(2, Value::Int(7), Value::Int(0)),
                },
            ),
            ev(
                &s,
                RowChange::Update {
                    old_key: None,
                    row: row(1, Value::Int(8), Value::Int(1)),
                },
            ),
        ];
        let mut target = Model::new();
        target.insert(
            (UNIQUE_TABLE.into(), 1),
            row(1, Value::Int(7), Value::Int(0)),
        );
        let mut unaware = target.clone();
        assert!(apply_steps(&mut unaware, &plan(&events)).is_err());
        let steps = plan_with(&events, unique_keys);
        apply_steps(&mut target, &steps).unwrap();
        assert_eq!(target[&(UNIQUE_TABLE.into(), 1)][3], Value::Int(1));
        assert_eq!(target[&(UNIQUE_TABLE.into(), 2)][2], Value::Int(7));
        // a change that keeps the unique values stays in place: one statement
        assert_eq!(steps.len(), 1);
    }

    #[test]
    fn unique_values_swapped_through_a_spare_value_split_the_plan() {
        let s = schema(UNIQUE_TABLE);
        let set_a = |k: i64, a: i64| {
            ev(
                &s,
                RowChange::Update {
                    old_key: None,
                    row: row(k, Value::Int(a), Value::Int(0)),
                },
            )
        };
        // rows 1 and 2 hold 1 and 2 and swap them through 0
        let events = vec![set_a(1, 0), set_a(2, 1), set_a(1, 2)];
        let mut target = Model::new();
        for k in [1, 2] {
            target.insert(
                (UNIQUE_TABLE.into(), k),
                row(k, Value::Int(k), Value::Int(0)),
            );
        }
        let steps = plan_with(&events, unique_keys);
        assert_eq!(steps.len(), 2);
        apply_steps(&mut target, &steps).unwrap();
        assert_eq!(target[&(UNIQUE_TABLE.into(), 1)][2], Value::Int(2));
        assert_eq!(target[&(UNIQUE_TABLE.into(), 2)][2], Value::Int(1));
    }

    // ---- property test against a model table ----

    type Model = BTreeMap<(String, i64), Vec<Value>>;

    #[derive(Clone, Debug)]
    struct OpSpec {
        table: usize,
        kind: u8,
        key: i64,
        new_key: i64,
        a: i64,
        b: i64,
        unchanged: u8,
    }

    fn op_spec() -> impl Strategy<Value = OpSpec> {
        (
            0usize..2,
            0u8..20,
            0i64..5,
            0i64..5,
            0i64..100,
            0i64..100,
            0u8..4,
        )
            .prop_map(|(table, kind, key, new_key, a, b, unchanged)| OpSpec {
                table,
                kind,
                key,
                new_key,
                a,
                b,
                unchanged,
            })
    }

    fn key_of(row: &[Value]) -> i64 {
        match row[0] {
            Value::Int(k) => k,
            _ => unreachable!(),
        }
    }

    /// Turns specs into a valid change stream (as a source would see it)
    /// starting from `state`, which it evolves with full rows.
    fn generate(
        schemas: &[Arc<TableSchema>],
        state: &mut Model,
        specs: &[OpSpec],
    ) -> Vec<ChangeEvent> {
        let mut events = Vec::new();
        for spec in specs {
            let s = &schemas[spec.table];
            let tname = s.table.name.clone();
            let exists = state.contains_key(&(tname.clone(), spec.key));
            // t1 has a unique key on `a`: few values, so rows collide,
            // swap, move and cycle them
            let unique = tname == UNIQUE_TABLE;
            let a = if unique { spec.a % 6 } else { spec.a };
            let full = row(spec.key, Value::Int(a), Value::Int(spec.b));
            // the source refuses a change that would hold `a` twice
            let taken = |state: &Model, new: &[Value], except: Option<i64>| {
                unique
                    && state
                        .iter()
                        .any(|((t, k), r)| *t == tname && Some(*k) != except && r[2] == new[2])
            };
            let with_unchanged = |mut r: Vec<Value>| {
                if spec.unchanged & 1 != 0 {
                    r[2] = Value::Unchanged;
                }
                if spec.unchanged & 2 != 0 {
                    r[3] = Value::Unchanged;
                }
                r
            };
            match spec.kind {
                19 => {
                    state.retain(|(t, _), _| *t != tname);
                    events.push(ev(s, RowChange::Truncate));
                }
                _ if !exists && taken(state, &full, None) => {}
                _ if !exists => {
                    state.insert((tname, spec.key), full.clone());
                    events.push(ev(s, RowChange::Insert { row: full }));
                }
                0..=7 => {
                    let sent = with_unchanged(full);
                    let merged = merge(&state[&(tname.clone(), spec.key)], &sent);
                    if taken(state, &merged, Some(spec.key)) {
                        continue;
                    }
                    state.insert((tname, spec.key), merged);
                    events.push(ev(
                        s,
                        RowChange::Update {
                            old_key: None,
                            row: sent,
                        },
                    ));
                }
                8..=12 if !state.contains_key(&(tname.clone(), spec.new_key)) => {
                    let mut sent = with_unchanged(full);
                    sent[0] = Value::Int(spec.new_key);
                    let merged = merge(&state[&(tname.clone(), spec.key)], &sent);
                    if taken(state, &merged, Some(spec.key)) {
                        continue;
                    }
                    state.remove(&(tname.clone(), spec.key));
                    state.insert((tname, spec.new_key), merged);
                    let old_key = row(spec.key, Value::Null, Value::Null);
                    events.push(ev(
                        s,
                        RowChange::Update {
                            old_key: Some(old_key),
                            row: sent,
                        },
                    ));
                }
                _ => {
                    state.remove(&(tname, spec.key));
                    events.push(ev(
                        s,
                        RowChange::Delete {
                            key: row(spec.key, Value::Null, Value::Null),
                        },
                    ));
                }
            }
        }
        events
    }

    const UNIQUE_TABLE: &str = "t1";

    fn unique_keys(schema: &TableSchema) -> Vec<Vec<usize>> {
        if schema.table.name == UNIQUE_TABLE {
            vec![vec![2]]
        } else {
            Vec::new()
        }
    }

    /// A row of the unique table that holds another row's `a`.
    fn unique_violation(model: &Model) -> Option<String> {
        let mut seen = std::collections::HashSet::new();
        model
            .iter()
            .filter(|((t, _), _)| t == UNIQUE_TABLE)
            .find(|(_, r)| !seen.insert(format!("{:?}", r[2])))
            .map(|((_, k), _)| format!("row {k} takes a unique value another row holds"))
    }

    /// Applies planned steps with the semantics a SQL target gives them,
    /// row by row, failing where the target would fail or silently diverge.
    fn apply_steps(model: &mut Model, steps: &[Step<'_>]) -> Result<(), String> {
        for step in steps {
            apply_step(model, step)?;
        }
        Ok(())
    }

    fn apply_step(model: &mut Model, step: &Step<'_>) -> Result<(), String> {
        for step in std::iter::once(step) {
            let t = step.table().name.clone();
            match step {
                Step::Truncate { .. } => model.retain(|(name, _), _| *name != t),
                Step::Delete { keys, .. } => {
                    for k in keys {
                        model.remove(&(t.clone(), key_of(k)));
                    }
                }
                Step::Upsert { present, rows, .. } => {
                    let mut seen = std::collections::HashSet::new();
                    for r in rows {
                        if !seen.insert(key_of(r)) {
                            return Err("duplicate key in one upsert".into());
                        }
                        for (p, v) in present.iter().zip(r.iter()) {
                            if *p == v.is_unchanged() {
                                return Err("row does not match its column set".into());
                            }
                        }
                        match model.get_mut(&(t.clone(), key_of(r))) {
                            Some(old) => {
                                for (i, v) in r.iter().enumerate() {
                                    if present[i] {
                                        old[i] = v.clone();
                                    }
                                }
                            }
                            None => {
                                if present.iter().any(|p| !p) {
                                    return Err("partial upsert of a missing row".into());
                                }
                                model.insert((t.clone(), key_of(r)), r.to_vec());
                            }
                        }
                        if let Some(violation) = unique_violation(model) {
                            return Err(violation);
                        }
                    }
                }
                Step::UpdateKey { old_key, row, .. } => {
                    let old = model
                        .remove(&(t.clone(), key_of(old_key)))
                        .ok_or("key update of a missing row")?;
                    if model.contains_key(&(t.clone(), key_of(row))) {
                        return Err("key update onto an existing key".into());
                    }
                    model.insert((t.clone(), key_of(row)), merge(&old, row));
                    if let Some(violation) = unique_violation(model) {
                        return Err(violation);
                    }
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn planned_steps_reach_the_same_state_as_raw_changes(
            before in proptest::collection::vec(op_spec(), 0..12),
            batch in proptest::collection::vec(op_spec(), 0..40),
        ) {
            let schemas = vec![schema("t0"), schema("t1")];
            let mut source = Model::new();
            // History before the batch: the target is in step with it.
            let before: Vec<OpSpec> = before.into_iter().filter(|s| s.kind != 19).collect();
            generate(&schemas, &mut source, &before);
            let mut target = source.clone();
            let events = generate(&schemas, &mut source, &batch);
            let steps = plan_with(&events, unique_keys);
            let applied = apply_steps(&mut target, &steps);
            prop_assert!(applied.is_ok(), "{:?}", applied);
            prop_assert_eq!(target, source);
        }
    }
}

//! Table maps: a source table's changes turned into changes of a target
//! table with other names, a subset of the columns, value maps, constants,
//! a row filter and a key of the target's own choosing (an external key:
//! `customers.crm_id` holds `accounts.id` while `customer_no` is generated
//! by the target). Pure: the agent's `MappedSink` runs every batch through
//! [`CompiledMap::transform`] before the target's sink sees it, and the
//! sinks find target rows by the key of the [`TableSchema`] built here.
//!
//! Row-filter rules for changes are PostgreSQL's (pgoutput's row filters):
//!
//! | change | new row matches | does not match |
//! |---|---|---|
//! | insert | upsert | nothing |
//! | update | upsert | delete by key, or nothing with [`Unmatched::Keep`] |
//! | delete | delete by key (idempotent) | — |
//!
//! An update that does not match deletes whether or not the old row
//! matched: the old row's other values are not in the change, and a delete
//! of a row that is not there changes nothing. An update of the source key
//! deletes the old key's target row and upserts the new one, so the target
//! row is created again (its generated columns are new): an update by the
//! old key would find nothing when the old row did not match, and lose the
//! row. An upsert whose row holds [`Value::Unchanged`] columns (PostgreSQL
//! unchanged TOAST) is the sinks' concern: they leave those columns out, so
//! a row inserted that way gets the target's defaults for them. A filter
//! column that is [`Value::Unchanged`] is refused by name (its value is not
//! known), as is a truncate, which would empty a target that may hold rows
//! of its own.

pub mod filter;

use crate::{ChangeEvent, ColumnSchema, ConnectorError, ErrorKind, Row, RowChange, TableId};
use crate::{TableSchema, Value};
use filter::{Filter, FilterEvalError};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

/// What happens in the target to a row that stops matching the filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unmatched {
    /// Deleted, as PostgreSQL's row filters do.
    #[default]
    Delete,
    /// Kept as it was last carried (a lost deal keeps its sales order).
    Keep,
}

/// `source value → target value` for one column, with an optional
/// default for values not listed. Source values are matched by their text:
/// text as is, integers and decimals in decimal, booleans as `true` and
/// `false`.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueMap {
    pub values: BTreeMap<String, Value>,
    pub default: Option<Value>,
}

/// One carried column.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnRule {
    pub source: String,
    pub target: String,
    pub values: Option<ValueMap>,
}

/// A map from one source table to one target table, as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct TableMap {
    pub source: TableId,
    pub target: TableId,
    /// The filter's text (for messages) and its parsed form.
    pub filter: Option<(String, Filter<String>)>,
    pub unmatched: Unmatched,
    /// Only these columns are carried.
    pub columns: Vec<ColumnRule>,
    /// Target columns set to the same value in every carried row.
    pub constants: Vec<(String, Value)>,
    /// Target columns that hold the source key; `None`: the renamed
    /// source key columns.
    pub key: Option<Vec<String>>,
}

/// What is wrong with a map itself, whatever the source schema.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("carries no column; name at least the key columns in `columns`")]
    NoColumns,
    #[error("target column `{0}` is written twice; each target column takes one source column or constant")]
    TargetTwice(String),
    #[error("source column `{0}` is carried twice; carry it once")]
    SourceTwice(String),
    #[error("constant `{0}` is also a mapped column; remove one of them")]
    ConstantIsMapped(String),
    #[error("key column `{0}` is not a target column of `columns`; the key must hold the carried source key")]
    KeyNotMapped(String),
    #[error("key column `{0}` has a value map; the key must hold the source key's own values")]
    KeyValueMapped(String),
    #[error("key column `{0}` is listed twice")]
    KeyTwice(String),
}

impl TableMap {
    /// Checks what holds whatever the source schema ([`MapError`]).
    pub fn validate(&self) -> Vec<MapError> {
        let mut problems = Vec::new();
        if self.columns.is_empty() {
            problems.push(MapError::NoColumns);
        }
        let mut targets = std::collections::BTreeSet::new();
        let mut sources = std::collections::BTreeSet::new();
        for rule in &self.columns {
            if !targets.insert(rule.target.as_str()) {
                problems.push(MapError::TargetTwice(rule.target.clone()));
            }
            if !sources.insert(rule.source.as_str()) {
                problems.push(MapError::SourceTwice(rule.source.clone()));
            }
        }
        for (name, _) in &self.constants {
            if targets.contains(name.as_str()) {
                problems.push(MapError::ConstantIsMapped(name.clone()));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for key in self.key.iter().flatten() {
            if !seen.insert(key.as_str()) {
                problems.push(MapError::KeyTwice(key.clone()));
            }
            match self.columns.iter().find(|r| &r.target == key) {
                None => problems.push(MapError::KeyNotMapped(key.clone())),
                Some(r) if r.values.is_some() => {
                    problems.push(MapError::KeyValueMapped(key.clone()))
                }
                Some(_) => {}
            }
        }
        problems
    }

    /// Compiles the map for rows written under `schema` (the source
    /// table's schema): the target-shaped schema and how to fill each of its
    /// columns. Fails with a `Schema` error naming the map and the column
    /// when the source lacks a mapped or filter column, or when the key is
    /// not the source's key.
    pub fn compile(&self, schema: &Arc<TableSchema>) -> Result<CompiledMap, ConnectorError> {
        let schema_error = |what: String, hint: String| {
            ConnectorError::new(ErrorKind::Schema, format!("map {self}: {what}")).with_hint(hint)
        };
        let mut slots = Vec::with_capacity(self.columns.len() + self.constants.len());
        let mut columns = Vec::with_capacity(slots.capacity());
        let source_keys: Vec<usize> = schema.key_indexes();
        let mut key_targets = Vec::new();
        for rule in &self.columns {
            let Some(s) = schema.column_index(&rule.source) else {
                return Err(schema_error(
                    format!("source column `{}` does not exist", rule.source),
                    format!(
                        "fix the column's name in the map, or add `{}` to `{}`",
                        rule.source, self.source
                    ),
                ));
            };
            let is_key = match &self.key {
                Some(key) => key.contains(&rule.target),
                None => schema.columns[s].is_key,
            };
            if is_key {
                key_targets.push(s);
            }
            let source_type = match &rule.values {
                Some(map) => value_map_type(map).to_owned(),
                None => schema.columns[s].source_type.clone(),
            };
            columns.push(ColumnSchema {
                name: rule.target.clone(),
                source_type,
                is_key,
            });
            slots.push(match &rule.values {
                Some(map) => Slot::Mapped(s, map.clone()),
                None => Slot::Column(s),
            });
        }
        let mut carried_keys = key_targets.clone();
        carried_keys.sort_unstable();
        if carried_keys != source_keys {
            let names = |idx: &[usize]| {
                idx.iter()
                    .map(|&i| format!("`{}`", schema.columns[i].name))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(schema_error(
                format!(
                    "the key carries source columns [{}], but the source key of `{}` is [{}]",
                    names(&carried_keys),
                    self.source,
                    names(&source_keys)
                ),
                "carry every source key column, renamed, and make exactly those target columns the map's `key`".to_owned(),
            ));
        }
        for (name, value) in &self.constants {
            columns.push(ColumnSchema {
                name: name.clone(),
                source_type: value_type(value).to_owned(),
                is_key: false,
            });
            slots.push(Slot::Constant(value.clone()));
        }
        let filter = match &self.filter {
            Some((text, parsed)) => {
                Some(parsed.bind(&|c| schema.column_index(c)).map_err(|column| {
                    schema_error(
                        format!(
                            "filter `{text}` names column `{column}`, which `{}` does not have",
                            self.source
                        ),
                        "fix the column's name in `where`".to_owned(),
                    )
                })?)
            }
            None => None,
        };
        Ok(CompiledMap {
            name: self.to_string(),
            source: schema.clone(),
            source_names: schema.columns.iter().map(|c| c.name.clone()).collect(),
            target: Arc::new(TableSchema {
                table: self.target.clone(),
                columns,
            }),
            slots,
            filter,
            unmatched: self.unmatched,
        })
    }
}

impl fmt::Display for TableMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` → `{}`", self.source, self.target)
    }
}

/// The source type name given to a value-mapped column: that of its
/// target values when they all have one kind, else `text`.
fn value_map_type(map: &ValueMap) -> &'static str {
    let mut types = map.values.values().chain(&map.default).map(value_type);
    let first = types.next().unwrap_or("text");
    if types.all(|t| t == first) {
        first
    } else {
        "text"
    }
}

fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Bool(_) => "bool",
        Value::Int(_) => "int8",
        Value::Float(_) => "float8",
        _ => "text",
    }
}

/// How a target column is filled.
#[derive(Clone, Debug)]
enum Slot {
    /// From this source column.
    Column(usize),
    /// From this source column through a value map.
    Mapped(usize, ValueMap),
    Constant(Value),
}

/// A map compiled against one source schema.
#[derive(Debug)]
pub struct CompiledMap {
    /// The map as configured, for messages (`` `a.b` → `c.d` ``).
    name: String,
    source: Arc<TableSchema>,
    /// The source's column names, for the filter's errors.
    source_names: Vec<String>,
    /// The target-shaped schema: target table, target column names, the
    /// map's key as its key.
    target: Arc<TableSchema>,
    slots: Vec<Slot>,
    filter: Option<Filter<usize>>,
    unmatched: Unmatched,
}

impl CompiledMap {
    /// The schema of the changes [`CompiledMap::transform`] yields.
    pub fn target_schema(&self) -> &Arc<TableSchema> {
        &self.target
    }

    /// The target changes of one source change, appended to `out`.
    /// Fails with a `Conversion` error naming the map and the column
    /// (never the value) when a value has no mapping, a filter column's
    /// value is not known, or for a truncate.
    pub fn transform(
        &self,
        change: &RowChange,
        out: &mut Vec<ChangeEvent>,
    ) -> Result<(), ConnectorError> {
        let event = |change| ChangeEvent {
            schema: self.target.clone(),
            change,
        };
        match change {
            RowChange::Insert { row } => {
                if self.matches(row)? {
                    out.push(event(RowChange::Insert {
                        row: self.target_row(row)?,
                    }));
                }
            }
            RowChange::Update { old_key, row } => {
                let matches = self.matches(row)?;
                if let Some(old) = old_key {
                    if matches || self.unmatched == Unmatched::Delete {
                        out.push(event(RowChange::Delete {
                            key: self.key_row(old),
                        }));
                    }
                }
                if matches {
                    out.push(event(RowChange::Update {
                        old_key: None,
                        row: self.target_row(row)?,
                    }));
                } else if self.unmatched == Unmatched::Delete {
                    out.push(event(RowChange::Delete {
                        key: self.key_row(row),
                    }));
                }
            }
            RowChange::Delete { key } => out.push(event(RowChange::Delete {
                key: self.key_row(key),
            })),
            RowChange::Truncate => {
                return Err(ConnectorError::new(
                    ErrorKind::Conversion,
                    format!(
                        "map {}: a truncate of `{}` is not carried through a map, since the target may hold rows of its own",
                        self.name, self.source.table
                    ),
                )
                .with_hint(format!(
                    "delete the rows that came from `{}` in `{}` by hand, then discard this dead letter",
                    self.source.table, self.target.table
                )))
            }
        }
        Ok(())
    }

    fn matches(&self, row: &Row) -> Result<bool, ConnectorError> {
        let Some(filter) = &self.filter else {
            return Ok(true);
        };
        filter.matches(row, &self.source_names).map_err(|err| {
            let hint = match &err {
                FilterEvalError::Unchanged { column } => format!(
                    "set REPLICA IDENTITY FULL on `{}` so updates carry `{column}`, or filter on another column",
                    self.source.table
                ),
                FilterEvalError::Mismatch { column, .. } => format!(
                    "compare `{column}` with a literal of its type in `where`"
                ),
            };
            ConnectorError::new(
                ErrorKind::Conversion,
                format!(
                    "map {}: cannot test a row of `{}` against the filter: {err}",
                    self.name, self.source.table
                ),
            )
            .with_hint(hint)
        })
    }

    /// The target row of a whole source row.
    fn target_row(&self, row: &Row) -> Result<Row, ConnectorError> {
        self.slots
            .iter()
            .enumerate()
            .map(|(t, slot)| match slot {
                Slot::Column(s) => Ok(row[*s].clone()),
                Slot::Mapped(s, map) => self.map_value(&row[*s], map, *s, t),
                Slot::Constant(v) => Ok(v.clone()),
            })
            .collect()
    }

    /// The target key row (other columns NULL) of a source row holding at
    /// least the key columns.
    fn key_row(&self, row: &Row) -> Row {
        self.slots
            .iter()
            .zip(&self.target.columns)
            .map(|(slot, column)| match slot {
                Slot::Column(s) if column.is_key => row[*s].clone(),
                _ => Value::Null,
            })
            .collect()
    }

    fn map_value(
        &self,
        value: &Value,
        map: &ValueMap,
        s: usize,
        t: usize,
    ) -> Result<Value, ConnectorError> {
        let word = match value {
            Value::Null | Value::Unchanged => return Ok(value.clone()),
            Value::Text(w) | Value::Decimal(w) | Value::Uuid(w) => std::borrow::Cow::Borrowed(w.as_str()),
            Value::Int(i) => i.to_string().into(),
            Value::UInt(i) => i.to_string().into(),
            Value::Bool(b) => b.to_string().into(),
            other => {
                return Err(self.unmapped(
                    s,
                    t,
                    format!("value maps take text, integer, decimal and boolean values, and it holds a {:?} value", other.kind()),
                    "map the column without `values`, or map a column of one of those types".to_owned(),
                ))
            }
        };
        match map.values.get(word.as_ref()).or(map.default.as_ref()) {
            Some(v) => Ok(v.clone()),
            None => Err(self.unmapped(
                s,
                t,
                "its value is a word missing from `values`, and the map has no `default`".to_owned(),
                format!(
                    "add the word to `values` of column `{}` (or set a `default`) and replay the dead letter; `callosum dlq` shows the transaction",
                    self.source.columns[s].name
                ),
            )),
        }
    }

    fn unmapped(&self, s: usize, t: usize, why: String, hint: String) -> ConnectorError {
        ConnectorError::new(
            ErrorKind::Conversion,
            format!(
                "map {}: cannot map column `{}` of `{}` to `{}`: {why}",
                self.name,
                self.source.columns[s].name,
                self.source.table,
                self.target.columns[t].name
            ),
        )
        .with_hint(hint)
    }
}

/// How many source schemas of one table stay compiled (rows of one batch
/// may have been written before and after a few `ALTER TABLE`s).
const SCHEMAS_PER_TABLE: usize = 4;

/// A pipeline's maps, by source table, with each compiled per source
/// schema on first use.
#[derive(Debug)]
pub struct TableMaps {
    maps: HashMap<TableId, TableMap>,
    compiled: HashMap<TableId, Vec<CompiledMap>>,
}

impl TableMaps {
    /// At most one map per source table (the config checks it; a later
    /// one would replace an earlier one here).
    pub fn new(maps: impl IntoIterator<Item = TableMap>) -> Self {
        Self {
            maps: maps.into_iter().map(|m| (m.source.clone(), m)).collect(),
            compiled: HashMap::new(),
        }
    }

    /// The target table of source table `source`, if it is mapped.
    pub fn target_of(&self, source: &TableId) -> Option<&TableId> {
        self.maps.get(source).map(|m| &m.target)
    }

    /// Appends the target changes of `events` to `out`, in order. A table
    /// without a map is refused with a `Schema` error (the pipeline reads
    /// only its maps' tables, so this is a bug, not data).
    pub fn transform(
        &mut self,
        events: &[ChangeEvent],
        out: &mut Vec<ChangeEvent>,
    ) -> Result<(), ConnectorError> {
        for event in events {
            self.compiled_for(&event.schema)?
                .transform(&event.change, out)?;
        }
        Ok(())
    }

    fn compiled_for(&mut self, schema: &Arc<TableSchema>) -> Result<&CompiledMap, ConnectorError> {
        let table = &schema.table;
        let Some(map) = self.maps.get(table) else {
            return Err(ConnectorError::new(
                ErrorKind::Schema,
                format!("table `{table}` has no map in this pipeline"),
            )
            .with_hint(format!("add a map with source = \"{table}\"")));
        };
        let compiled = self.compiled.entry(table.clone()).or_default();
        let at = match compiled
            .iter()
            .position(|c| crate::batch::same_schema(&c.source, schema))
        {
            Some(at) => {
                // events read back from the log share one `Arc` per record
                // batch: the next event of this one compares by pointer
                compiled[at].source = schema.clone();
                at
            }
            None => {
                if compiled.len() >= SCHEMAS_PER_TABLE {
                    compiled.remove(0);
                }
                compiled.push(map.compile(schema)?);
                compiled.len() - 1
            }
        };
        Ok(&compiled[at])
    }
}

#[cfg(test)]
mod tests;

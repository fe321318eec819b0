//! How a source table's schema maps onto a target table's columns by name:
//! the engine-independent part of every sink's column map.

use crate::batch::same_schema;
use crate::{TableId, TableSchema};
use std::collections::HashMap;
use std::sync::Arc;

/// How one source schema maps onto its target table.
#[derive(Debug)]
pub struct ColumnMap {
    pub schema: Arc<TableSchema>,
    /// Target column index per source column.
    pub target: Vec<usize>,
    /// Source column index per target primary-key column.
    pub key_sources: Vec<usize>,
}

/// Why a source schema does not fit its target table; each sink words the
/// error itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The source column at this index has no target column of its name.
    MissingColumn(usize),
    /// The target primary-key column at this index (into the target's
    /// columns) is not a key column of the source.
    KeyNotInSource(usize),
}

impl ColumnMap {
    /// Maps `schema` onto a target with these column names and primary key
    /// (indexes into `columns`, in key order).
    pub fn new(
        schema: &Arc<TableSchema>,
        columns: &[&str],
        primary_key: &[usize],
    ) -> Result<ColumnMap, Mismatch> {
        let target = schema
            .columns
            .iter()
            .enumerate()
            .map(|(s, c)| {
                columns
                    .iter()
                    .position(|&name| name == c.name)
                    .ok_or(Mismatch::MissingColumn(s))
            })
            .collect::<Result<_, _>>()?;
        let key_sources = primary_key
            .iter()
            .map(|&k| match schema.column_index(columns[k]) {
                Some(s) if schema.columns[s].is_key => Ok(s),
                _ => Err(Mismatch::KeyNotInSource(k)),
            })
            .collect::<Result<_, _>>()?;
        Ok(ColumnMap {
            schema: schema.clone(),
            target,
            key_sources,
        })
    }
}

/// How many source schemas of one table a sink keeps mapped: a batch read
/// back from the log may hold rows written before and after a few `ALTER
/// TABLE`s, and each row must be mapped by the schema it was written under.
const MAPS_PER_TABLE: usize = 4;

/// A sink's column maps, a few per table: one per source schema seen
/// recently, so rows written before and after a schema change in one batch
/// each land in their own columns.
#[derive(Debug, Default)]
pub struct ColumnMaps {
    tables: HashMap<TableId, Vec<ColumnMap>>,
}

impl ColumnMaps {
    /// The map for rows written under `schema`, when there is one.
    pub fn get(&self, schema: &Arc<TableSchema>) -> Option<&ColumnMap> {
        self.tables
            .get(&schema.table)?
            .iter()
            .find(|m| same_schema(&m.schema, schema))
    }

    /// Whether some schema of `table` is mapped (a new schema of a mapped
    /// table is a schema change).
    pub fn has_table(&self, table: &TableId) -> bool {
        self.tables.get(table).is_some_and(|m| !m.is_empty())
    }

    /// Adds a map, dropping the oldest of its table beyond a few.
    pub fn insert(&mut self, map: ColumnMap) {
        let maps = self.tables.entry(map.schema.table.clone()).or_default();
        maps.retain(|m| !same_schema(&m.schema, &map.schema));
        if maps.len() >= MAPS_PER_TABLE {
            maps.remove(0);
        }
        maps.push(map);
    }

    /// Forgets every map of `table`: its target columns changed, so the
    /// target indexes they hold are stale.
    pub fn forget(&mut self, table: &TableId) {
        self.tables.remove(table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ColumnSchema, TableId};

    fn schema() -> Arc<TableSchema> {
        let col = |name: &str, is_key| ColumnSchema {
            name: name.into(),
            source_type: "text".into(),
            is_key,
        };
        Arc::new(TableSchema {
            table: TableId::new("public", "orders"),
            columns: vec![col("id", true), col("note", false), col("status", false)],
        })
    }

    #[test]
    fn maps_by_name() {
        let map = ColumnMap::new(&schema(), &["id", "status", "note", "extra"], &[0]).unwrap();
        assert_eq!(map.target, vec![0, 2, 1]);
        assert_eq!(map.key_sources, vec![0]);
    }

    #[test]
    fn names_the_mismatch() {
        let missing = ColumnMap::new(&schema(), &["id", "note"], &[0]).unwrap_err();
        assert_eq!(missing, Mismatch::MissingColumn(2));
        let columns = ["note", "id", "status"];
        let not_key = ColumnMap::new(&schema(), &columns, &[1, 0]).unwrap_err();
        assert_eq!(not_key, Mismatch::KeyNotInSource(0));
    }

    #[test]
    fn keeps_one_map_per_source_schema() {
        let old = schema();
        let mut cols = old.columns.clone();
        cols.swap(1, 2);
        let new = Arc::new(TableSchema {
            table: old.table.clone(),
            columns: cols,
        });
        let names = ["id", "note", "status"];
        let mut maps = ColumnMaps::default();
        assert!(!maps.has_table(&old.table));
        maps.insert(ColumnMap::new(&old, &names, &[0]).unwrap());
        maps.insert(ColumnMap::new(&new, &names, &[0]).unwrap());
        assert_eq!(maps.get(&old).unwrap().target, vec![0, 1, 2]);
        assert_eq!(maps.get(&new).unwrap().target, vec![0, 2, 1]);
        // an equal schema read back from the log finds its map
        assert_eq!(
            maps.get(&Arc::new((*new).clone())).unwrap().target,
            vec![0, 2, 1]
        );
        maps.forget(&old.table);
        assert!(maps.get(&old).is_none() && !maps.has_table(&old.table));
    }
}

//! How a source table's schema maps onto a target table's columns by name:
//! the engine-independent part of every sink's column map.

use crate::TableSchema;
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
}

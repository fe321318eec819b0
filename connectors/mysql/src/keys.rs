//! The target's keys beyond its primary key: unique indexes (for the batch
//! planner, which must not reorder rows that hand a unique value on) and
//! key columns that compare case- or accent-insensitively (which merge keys
//! the source tells apart).

use crate::error::classify;
use callosum_api::{ConnectorError, TableId};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};

/// Reads the unique indexes of `table` other than its primary key, as
/// indexes into `columns` (the table's columns in catalog order). An index
/// on an expression (MySQL's functional key parts, which have no column
/// name) counts as one over every column: any change may change it.
pub(crate) async fn read_unique_keys(
    conn: &mut Conn,
    store: &str,
    table: &TableId,
    columns: &[String],
) -> Result<Vec<Vec<usize>>, ConnectorError> {
    let rows: Vec<Row> = conn
        .exec(
            "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
             AND INDEX_NAME <> 'PRIMARY' ORDER BY INDEX_NAME, SEQ_IN_INDEX",
            (&table.namespace, &table.name),
        )
        .await
        .map_err(|e| classify(e, store, &format!("reading the unique keys of `{table}`")))?;
    let mut keys: Vec<(String, Vec<usize>)> = Vec::new();
    for row in rows {
        let index: String = row.get_opt(0).and_then(Result::ok).unwrap_or_default();
        let column: Option<String> = row.get_opt(1).and_then(Result::ok).flatten();
        let positions: Vec<usize> = match column {
            Some(name) => columns
                .iter()
                .position(|c| *c == name)
                .into_iter()
                .collect(),
            None => (0..columns.len()).collect(),
        };
        match keys.last_mut() {
            Some((name, cols)) if *name == index => cols.extend(positions),
            _ => keys.push((index, positions)),
        }
    }
    Ok(keys.into_iter().map(|(_, cols)| cols).collect())
}

/// Whether a collation compares case- or accent-insensitively: `_ci` and
/// `_ai` collations, MySQL 8's `utf8mb4_0900_ai_ci` included. `_bin`, `_cs`
/// and `_as_cs` collations tell such strings apart.
pub fn collation_merges_case(collation: &str) -> bool {
    let c = collation.to_ascii_lowercase();
    c.ends_with("_ci") || c.contains("_ai_") || c.ends_with("_ai") || c.contains("_ci_")
}

/// A key column (primary or unique key) of a target table.
#[derive(Clone, Debug)]
pub(crate) struct KeyColumn {
    pub name: String,
    pub collation: String,
    /// e.g. `varchar(32)`.
    pub column_type: String,
    pub nullable: bool,
}

/// Key columns (primary key and unique keys) of `table` with a collation
/// that merges case or accents.
pub(crate) async fn insensitive_key_columns(
    conn: &mut Conn,
    store: &str,
    table: &TableId,
) -> Result<Vec<KeyColumn>, ConnectorError> {
    let rows: Vec<(String, String, String, String)> = conn
        .exec(
            "SELECT DISTINCT c.COLUMN_NAME, c.COLLATION_NAME, c.COLUMN_TYPE, c.IS_NULLABLE \
             FROM information_schema.COLUMNS c \
             JOIN information_schema.STATISTICS s ON s.TABLE_SCHEMA = c.TABLE_SCHEMA \
             AND s.TABLE_NAME = c.TABLE_NAME AND s.COLUMN_NAME = c.COLUMN_NAME \
             WHERE c.TABLE_SCHEMA = ? AND c.TABLE_NAME = ? AND s.NON_UNIQUE = 0 \
             AND c.COLLATION_NAME IS NOT NULL ORDER BY c.COLUMN_NAME",
            (&table.namespace, &table.name),
        )
        .await
        .map_err(|e| {
            classify(
                e,
                store,
                &format!("reading the key collations of `{table}`"),
            )
        })?;
    Ok(rows
        .into_iter()
        .filter(|(_, collation, _, _)| collation_merges_case(collation))
        .map(|(name, collation, column_type, nullable)| KeyColumn {
            name,
            collation,
            column_type,
            nullable: nullable == "YES",
        })
        .collect())
}

/// The collation that tells apart what `collation` merges: the character
/// set's `_bin` collation.
pub(crate) fn binary_collation(collation: &str) -> String {
    let charset = collation.split('_').next().unwrap_or(collation);
    format!("{charset}_bin")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insensitive_collations_are_recognised() {
        for c in [
            "utf8mb4_general_ci",
            "utf8mb4_unicode_ci",
            "utf8mb4_0900_ai_ci",
            "latin1_swedish_ci",
            "utf8mb4_uca1400_ai_ci",
        ] {
            assert!(collation_merges_case(c), "{c}");
        }
        for c in [
            "utf8mb4_bin",
            "utf8mb4_0900_as_cs",
            "binary",
            "latin1_general_cs",
        ] {
            assert!(!collation_merges_case(c), "{c}");
        }
    }
}

//! Which rows the dead-letter queue holds changes of, so that later changes
//! of those rows queue behind them.

use callosum_api::batch::for_each_key_fingerprint;
use callosum_api::{ChangeEvent, RowChange, TableId};
use std::collections::HashMap;

/// The rows (and truncated tables) that queued transactions change, each
/// with the newest dead letter that changes it.
///
/// Rows are kept as 64-bit key fingerprints, not keys, so a queued
/// 1,000,000-row transaction costs a few tens of megabytes, not its rows. A
/// fingerprint collision (about 2⁻⁶⁴ per pair) only queues an unrelated
/// transaction too, which replay applies in order all the same.
#[derive(Debug, Default)]
pub struct BlockedRows {
    tables: HashMap<TableId, BlockedTable>,
}

#[derive(Debug, Default)]
struct BlockedTable {
    /// A queued transaction truncates the table: every later change of it
    /// queues behind that one (the newest such).
    truncated_by: Option<u64>,
    /// Row key fingerprint → newest dead letter that changes the row.
    rows: HashMap<u64, u64>,
    /// Newest dead letter that changes anything in the table.
    newest: u64,
}

impl BlockedRows {
    /// No queued transaction: nothing is held back.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Records that dead letter `id` holds `event`.
    pub fn add(&mut self, id: u64, event: &ChangeEvent) {
        let table = self.tables.entry(event.schema.table.clone()).or_default();
        table.newest = table.newest.max(id);
        if matches!(event.change, RowChange::Truncate) {
            table.truncated_by = Some(table.truncated_by.map_or(id, |t| t.max(id)));
        }
        for_each_key_fingerprint(&event.schema, &event.change, |key| {
            let newest = table.rows.entry(key).or_insert(id);
            *newest = (*newest).max(id);
        });
    }

    /// The newest dead letter that `events` (one whole source transaction)
    /// must queue behind, if any: one of them changes a row a queued
    /// transaction changes, or a table a queued transaction truncates, or
    /// truncates a table a queued transaction changes.
    pub fn blocking(&self, events: &[ChangeEvent]) -> Option<u64> {
        if self.tables.is_empty() {
            return None;
        }
        let mut behind: Option<u64> = None;
        let mut note = |id: u64| behind = Some(behind.map_or(id, |b| b.max(id)));
        for event in events {
            let Some(table) = self.tables.get(&event.schema.table) else {
                continue;
            };
            if matches!(event.change, RowChange::Truncate) {
                note(table.newest);
                continue;
            }
            if let Some(id) = table.truncated_by {
                note(id);
            }
            for_each_key_fingerprint(&event.schema, &event.change, |key| {
                if let Some(&id) = table.rows.get(&key) {
                    note(id);
                }
            });
        }
        behind
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callosum_api::{ColumnSchema, TableSchema, Value};
    use std::sync::Arc;

    fn schema(table: &str) -> Arc<TableSchema> {
        Arc::new(TableSchema {
            table: TableId::new("public", table),
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
        })
    }

    fn insert(table: &str, id: i64, v: &str) -> ChangeEvent {
        ChangeEvent {
            schema: schema(table),
            change: RowChange::Insert {
                row: vec![Value::Int(id), Value::Text(v.into())],
            },
        }
    }

    fn delete(table: &str, id: i64) -> ChangeEvent {
        ChangeEvent {
            schema: schema(table),
            change: RowChange::Delete {
                key: vec![Value::Int(id), Value::Null],
            },
        }
    }

    fn truncate(table: &str) -> ChangeEvent {
        ChangeEvent {
            schema: schema(table),
            change: RowChange::Truncate,
        }
    }

    #[test]
    fn nothing_queued_blocks_nothing() {
        let blocked = BlockedRows::default();
        assert!(blocked.is_empty());
        assert_eq!(blocked.blocking(&[insert("a", 1, "x")]), None);
    }

    #[test]
    fn a_later_change_of_a_queued_row_queues_behind_the_newest() {
        let mut blocked = BlockedRows::default();
        blocked.add(1, &insert("a", 1, "x"));
        blocked.add(3, &insert("a", 1, "y"));
        blocked.add(2, &insert("a", 2, "z"));
        // the key decides, not the other columns
        assert_eq!(blocked.blocking(&[delete("a", 1)]), Some(3));
        assert_eq!(blocked.blocking(&[insert("a", 2, "other")]), Some(2));
        assert_eq!(
            blocked.blocking(&[insert("a", 5, "q"), delete("a", 2)]),
            Some(2)
        );
        // other rows and other tables flow
        assert_eq!(blocked.blocking(&[insert("a", 4, "x")]), None);
        assert_eq!(blocked.blocking(&[insert("b", 1, "x")]), None);
    }

    #[test]
    fn an_update_that_moves_a_key_is_checked_under_both_keys() {
        let mut blocked = BlockedRows::default();
        blocked.add(7, &insert("a", 1, "x"));
        let moved_from_queued = ChangeEvent {
            schema: schema("a"),
            change: RowChange::Update {
                old_key: Some(vec![Value::Int(1), Value::Null]),
                row: vec![Value::Int(9), Value::Text("x".into())],
            },
        };
        assert_eq!(
            blocked.blocking(std::slice::from_ref(&moved_from_queued)),
            Some(7)
        );
        let mut blocked = BlockedRows::default();
        blocked.add(8, &moved_from_queued);
        assert_eq!(blocked.blocking(&[delete("a", 9)]), Some(8));
        assert_eq!(blocked.blocking(&[delete("a", 1)]), Some(8));
    }

    #[test]
    fn truncates_block_whole_tables_both_ways() {
        let mut blocked = BlockedRows::default();
        blocked.add(4, &truncate("a"));
        assert_eq!(blocked.blocking(&[insert("a", 100, "x")]), Some(4));
        assert_eq!(blocked.blocking(&[insert("b", 100, "x")]), None);

        let mut blocked = BlockedRows::default();
        blocked.add(5, &insert("a", 1, "x"));
        assert_eq!(blocked.blocking(&[truncate("a")]), Some(5));
        assert_eq!(blocked.blocking(&[truncate("b")]), None);
    }
}

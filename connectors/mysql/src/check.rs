//! `callosum check` for a MySQL/MariaDB target: what is missing and how to
//! fix it.

use crate::grants::Grants;
use crate::keys::{binary_collation, insensitive_key_columns};
use crate::sink::{dead_letter_ddl, open, read_table, MySqlSinkConfig};
use callosum_api::{CheckProblem, ConnectorError, TableId, CHECKPOINT_TABLE, DEAD_LETTER_TABLE};

/// Checks a target before a pipeline runs: every target table exists, has a
/// primary key and holds every source column (`source_columns` lists the
/// source tables' column names where known, keyed by source table; tables
/// not listed are checked for existence and key only); the user may create
/// (or, when it exists, write) `callosum_checkpoint` and
/// `callosum_dead_letter` and write the target tables.
///
/// Returns every problem found, each with its fix; `Err` only when the store
/// cannot be reached or queried at all.
///
/// Privileges are read from `information_schema` (global, database and
/// table grants of the current user); grants held only through a role are
/// not seen and are reported as missing.
pub async fn check_target(
    config: &MySqlSinkConfig,
    source_columns: &[(TableId, Vec<String>)],
) -> Result<Vec<CheckProblem>, ConnectorError> {
    let store = &config.store;
    let (mut conn, database) = open(config).await?;
    let mut problems = Vec::new();
    let problem = |problem: String, fix: String| CheckProblem {
        store: store.clone(),
        problem,
        fix,
    };
    let grants = Grants::read(&mut conn, store).await?;
    let user = &grants.user;
    let has = |privilege: &str, table: &TableId| grants.on_table(privilege, table);

    let checkpoint = TableId::new(&database, CHECKPOINT_TABLE);
    let checkpoint_exists = read_table(&mut conn, store, &checkpoint).await?.is_some();
    let mut needed = vec!["SELECT", "INSERT", "UPDATE"];
    if !checkpoint_exists {
        needed.push("CREATE");
    }
    let missing: Vec<&str> = needed
        .into_iter()
        .filter(|p| !has(p, &checkpoint))
        .collect();
    if !missing.is_empty() {
        let list = missing.join(", ");
        problems.push(problem(
            format!("user {user} lacks {list} on `{checkpoint}`, which Callosum writes in every applied transaction"),
            if checkpoint_exists {
                format!("GRANT {list} ON `{database}`.`{CHECKPOINT_TABLE}` TO {user};")
            } else {
                format!("GRANT {list} ON `{database}`.* TO {user}; (or create the table as an administrator: CREATE TABLE `{database}`.`{CHECKPOINT_TABLE}` (pipeline VARCHAR(255) NOT NULL PRIMARY KEY, source_position VARCHAR(255) NOT NULL, applied_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), transactions BIGINT NOT NULL DEFAULT 0, epoch BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB; and grant SELECT, INSERT, UPDATE on it)")
            },
        ));
    }

    let dead_letters = TableId::new(&database, DEAD_LETTER_TABLE);
    let dead_letters_exist = read_table(&mut conn, store, &dead_letters).await?.is_some();
    let mut needed = vec!["SELECT", "INSERT", "UPDATE", "DELETE"];
    if !dead_letters_exist {
        needed.push("CREATE");
    }
    let missing: Vec<&str> = needed
        .into_iter()
        .filter(|p| !has(p, &dead_letters))
        .collect();
    if !missing.is_empty() {
        let list = missing.join(", ");
        problems.push(problem(
            format!("user {user} lacks {list} on `{dead_letters}`, which holds the pipelines' dead letters"),
            if dead_letters_exist {
                format!("GRANT {list} ON `{database}`.`{DEAD_LETTER_TABLE}` TO {user};")
            } else {
                format!(
                    "GRANT {list} ON `{database}`.* TO {user}; (or create the table as an administrator: {}; and grant SELECT, INSERT, UPDATE, DELETE on it)",
                    dead_letter_ddl(&database)
                )
            },
        ));
    }

    for (source, target) in &config.tables {
        let Some(table) = read_table(&mut conn, store, target).await? else {
            problems.push(problem(
                format!("target table `{target}` (for source `{source}`) does not exist"),
                format!("create `{target}` with the columns and primary key of `{source}`"),
            ));
            continue;
        };
        if table.primary_key.is_empty() {
            problems.push(problem(
                format!("target table `{target}` has no primary key"),
                format!(
                    "ALTER TABLE `{}`.`{}` ADD PRIMARY KEY (…the key columns of `{source}`…);",
                    target.namespace, target.name
                ),
            ));
        }
        if let Some((_, columns)) = source_columns.iter().find(|(t, _)| t == source) {
            let missing: Vec<&str> = columns
                .iter()
                .filter(|c| !table.columns.iter().any(|t| &t.name == *c))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                problems.push(problem(
                    format!(
                        "target table `{target}` lacks column(s) {} of source `{source}`",
                        missing
                            .iter()
                            .map(|c| format!("`{c}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    format!(
                        "ALTER TABLE `{}`.`{}` ADD COLUMN … for each missing column",
                        target.namespace, target.name
                    ),
                ));
            }
        }
        let missing: Vec<&str> = ["SELECT", "INSERT", "UPDATE", "DELETE"]
            .into_iter()
            .filter(|p| !has(p, target))
            .collect();
        if !missing.is_empty() {
            let list = missing.join(", ");
            problems.push(problem(
                format!("user {user} lacks {list} on target table `{target}`"),
                format!(
                    "GRANT {list} ON `{}`.`{}` TO {user};",
                    target.namespace, target.name
                ),
            ));
        }
    }
    if let Err(err) = conn.disconnect().await {
        tracing::debug!(store = %store, error = %err, "disconnect after check failed");
    }
    Ok(problems)
}

/// Checks that the target's key columns tell apart what the source's do: a
/// primary or unique key column of a target table whose collation merges
/// case or accents (`_ci`, `_ai`, MariaDB's default) is a problem unless
/// the source column merges them too. `source_insensitive` lists, per
/// source table, the columns the source itself compares case-insensitively
/// (none for PostgreSQL). At apply time such a merge is refused: the
/// second of `Bob` and `bob` goes to the dead-letter queue.
///
/// `Err` only when the store cannot be reached or queried at all.
pub async fn check_key_collations(
    config: &MySqlSinkConfig,
    source_insensitive: &[(TableId, Vec<String>)],
) -> Result<Vec<CheckProblem>, ConnectorError> {
    let store = &config.store;
    let (mut conn, _) = open(config).await?;
    let mut problems = Vec::new();
    for (source, target) in &config.tables {
        let merged_by_source = source_insensitive
            .iter()
            .find(|(t, _)| t == source)
            .map(|(_, columns)| columns.as_slice())
            .unwrap_or_default();
        for column in insensitive_key_columns(&mut conn, store, target).await? {
            if merged_by_source.contains(&column.name) {
                continue;
            }
            problems.push(CheckProblem {
                store: store.clone(),
                problem: format!(
                    "key column `{}` of target table `{target}` compares case- or \
                     accent-insensitively (collation {}) while source `{source}` tells such \
                     keys apart: two source rows whose keys differ only so would be one \
                     target row (Callosum dead-letters the second instead of overwriting)",
                    column.name, column.collation
                ),
                fix: format!(
                    "ALTER TABLE `{}`.`{}` MODIFY `{}` {} COLLATE {}{};",
                    target.namespace,
                    target.name,
                    column.name,
                    column.column_type,
                    binary_collation(&column.collation),
                    if column.nullable {
                        " NULL"
                    } else {
                        " NOT NULL"
                    }
                ),
            });
        }
    }
    if let Err(err) = conn.disconnect().await {
        tracing::debug!(store = %store, error = %err, "disconnect after check failed");
    }
    Ok(problems)
}

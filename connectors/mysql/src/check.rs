//! `callosum check` for a MySQL/MariaDB target: what is missing and how to
//! fix it.

use crate::sink::{open, read_table, MySqlSinkConfig};
use callosum_api::{CheckProblem, ConnectorError, TableId, CHECKPOINT_TABLE};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use std::collections::HashSet;

/// The current user's privileges as `(privilege, database, table)`;
/// `None` database means global, `None` table database-wide.
type Privileges = HashSet<(String, Option<String>, Option<String>)>;

/// Checks a target before a pipeline runs: every target table exists, has a
/// primary key and holds every source column (`source_columns` lists the
/// source tables' column names where known, keyed by source table; tables
/// not listed are checked for existence and key only); the user may create
/// (or, when it exists, write) `callosum_checkpoint` and write the target
/// tables.
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
    let (user, privileges) = privileges(&mut conn, store).await?;
    let has = |privilege: &str, table: &TableId| {
        privileges.iter().any(|(p, db, t)| {
            p == privilege
                && match (db, t) {
                    (None, _) => true,
                    (Some(db), None) => unescape(db) == table.namespace,
                    (Some(db), Some(t)) => *db == table.namespace && *t == table.name,
                }
        })
    };

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
                format!("GRANT {list} ON `{database}`.* TO {user}; (or create the table as an administrator: CREATE TABLE `{database}`.`{CHECKPOINT_TABLE}` (pipeline VARCHAR(255) NOT NULL PRIMARY KEY, source_position VARCHAR(255) NOT NULL, applied_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), transactions BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB; and grant SELECT, INSERT, UPDATE on it)")
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

/// `erp\_data` as granted → `erp_data`.
fn unescape(db: &str) -> String {
    db.replace('\\', "")
}

async fn privileges(conn: &mut Conn, store: &str) -> Result<(String, Privileges), ConnectorError> {
    let fail = |e| crate::error::classify(e, store, "reading the user's privileges");
    let grantee: Option<String> = conn
        .query_first(
            "SELECT CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', \
             SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')",
        )
        .await
        .map_err(fail)?;
    let grantee = grantee.unwrap_or_default();
    let rows: Vec<(String, Option<String>, Option<String>)> = conn
        .exec(
            "SELECT PRIVILEGE_TYPE, NULL, NULL FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = ? \
             UNION ALL SELECT PRIVILEGE_TYPE, TABLE_SCHEMA, NULL FROM information_schema.SCHEMA_PRIVILEGES WHERE GRANTEE = ? \
             UNION ALL SELECT PRIVILEGE_TYPE, TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLE_PRIVILEGES WHERE GRANTEE = ?",
            (&grantee, &grantee, &grantee),
        )
        .await
        .map_err(fail)?;
    Ok((grantee, rows.into_iter().collect()))
}

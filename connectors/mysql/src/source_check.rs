//! `callosum check` for a captured MariaDB/MySQL store: what the binlog
//! source needs and how to fix what is missing.

use std::collections::HashMap;

use callosum_api::{CheckProblem, ConnectorError, TableId};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::grants::Grants;
use crate::source::{open_sql, source_error, MySqlSourceConfig};

/// Checks a captured store: binary logging on, `binlog_format=ROW`,
/// `binlog_row_image=FULL`, `binlog_row_metadata=FULL`, (MariaDB)
/// `log_bin_compress=OFF`; the user holds REPLICATION SLAVE and REPLICATION
/// CLIENT (or BINLOG MONITOR) globally and SELECT on every captured table;
/// every captured table exists and has a primary key.
///
/// Returns every problem found, each with its fix; `Err` only when the store
/// cannot be reached or queried at all.
///
/// Privileges are read from `information_schema` (global, database and
/// table grants of the current user); grants held only through a role are
/// not seen and are reported as missing.
pub async fn check_source(config: &MySqlSourceConfig) -> Result<Vec<CheckProblem>, ConnectorError> {
    let store = &config.store;
    let mut conn = open_sql(store, &config.url, config.password.as_deref(), &config.tls).await?;
    let mut problems = Vec::new();
    let mut problem = |problem: String, fix: String| {
        problems.push(CheckProblem {
            store: store.clone(),
            problem,
            fix,
        })
    };

    let vars = variables(&mut conn, store).await?;
    let var = |name: &str| vars.get(name).map(|v| v.to_ascii_uppercase());
    if var("log_bin").as_deref() != Some("ON") {
        problem(
            "binary logging is disabled (log_bin is OFF)".into(),
            "start the server with log_bin (e.g. log_bin=mysql-bin in the [mysqld] section) and \
             a unique server_id, then restart"
                .into(),
        );
    }
    let expect = [
        ("binlog_format", "ROW"),
        ("binlog_row_image", "FULL"),
        ("binlog_row_metadata", "FULL"),
    ];
    for (name, wanted) in expect {
        match var(name) {
            Some(v) if v == wanted => {}
            Some(v) => problem(
                format!("{name} is {v}"),
                format!("set {name}={wanted} in the server config and restart"),
            ),
            None => problem(
                format!("the server has no {name} setting"),
                "upgrade to MariaDB 10.5+ or MySQL 8.0+ and set binlog_row_metadata=FULL".into(),
            ),
        }
    }
    if var("log_bin_compress").as_deref() == Some("ON") {
        problem(
            "log_bin_compress is ON: compressed binlog events cannot be decoded".into(),
            "set log_bin_compress=OFF in the server config and restart".into(),
        );
    }
    if var("binlog_transaction_compression").as_deref() == Some("ON") {
        problem(
            "binlog_transaction_compression is ON: compressed transactions cannot be decoded yet"
                .into(),
            "set binlog_transaction_compression=OFF in the server config and restart".into(),
        );
    }

    let grants = Grants::read(&mut conn, store).await?;
    let user = &grants.user;
    let global = |p: &str| grants.global(p) || grants.global("ALL PRIVILEGES");
    if !global("REPLICATION SLAVE") {
        problem(
            format!("user {user} lacks REPLICATION SLAVE, which reading the binlog needs"),
            format!("GRANT REPLICATION SLAVE ON *.* TO {user};"),
        );
    }
    if !global("REPLICATION CLIENT") && !global("BINLOG MONITOR") && !global("SUPER") {
        problem(
            format!(
                "user {user} lacks REPLICATION CLIENT (BINLOG MONITOR on MariaDB 10.5+), which \
                 reading the binlog position needs"
            ),
            format!("GRANT REPLICATION CLIENT ON *.* TO {user};"),
        );
    }

    for table in &config.tables {
        let key: Option<Vec<String>> = table_key(&mut conn, store, table).await?;
        match key {
            None => problem(
                format!("captured table `{table}` does not exist"),
                format!("create `{table}` or remove it from the pipeline's `tables`"),
            ),
            Some(key) if key.is_empty() => problem(
                format!("captured table `{table}` has no primary key"),
                format!(
                    "ALTER TABLE `{}`.`{}` ADD PRIMARY KEY (…);",
                    table.namespace, table.name
                ),
            ),
            Some(_) => {}
        }
        let charsets: Vec<(String, String, String)> = conn
            .exec(
                "SELECT COLUMN_NAME, CHARACTER_SET_NAME, COLUMN_TYPE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CHARACTER_SET_NAME IS NOT NULL \
                 ORDER BY ORDINAL_POSITION",
                (&table.namespace, &table.name),
            )
            .await
            .map_err(|e| source_error(e, store, &format!("reading the columns of `{table}`")))?;
        for (column, charset, column_type) in charsets {
            if !crate::charset::Charset::is_supported_name(&charset) {
                problem(
                    format!(
                        "column `{column}` of captured table `{table}` uses character set \
                         {charset}, which Callosum does not decode: its values would be refused"
                    ),
                    format!(
                        "ALTER TABLE `{}`.`{}` MODIFY `{column}` {column_type} CHARACTER SET utf8mb4;",
                        table.namespace, table.name
                    ),
                );
            }
        }
        let may_select =
            grants.on_table("SELECT", table) || grants.on_table("ALL PRIVILEGES", table);
        if !may_select {
            problem(
                format!("user {user} lacks SELECT on captured table `{table}`"),
                format!(
                    "GRANT SELECT ON `{}`.`{}` TO {user};",
                    table.namespace, table.name
                ),
            );
        }
    }
    if let Err(err) = conn.disconnect().await {
        tracing::debug!(store = %store, error = %err, "disconnect after check failed");
    }
    Ok(problems)
}

async fn variables(
    conn: &mut Conn,
    store: &str,
) -> Result<HashMap<String, String>, ConnectorError> {
    let rows: Vec<(String, String)> = conn
        .query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', \
             'binlog_row_image', 'binlog_row_metadata', 'log_bin_compress', \
             'binlog_transaction_compression')",
        )
        .await
        .map_err(|e| source_error(e, store, "reading the server's binlog settings"))?;
    Ok(rows
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect())
}

/// The primary key columns of `table`; `None` when it does not exist.
async fn table_key(
    conn: &mut Conn,
    store: &str,
    table: &TableId,
) -> Result<Option<Vec<String>>, ConnectorError> {
    let fail = |e| source_error(e, store, &format!("looking up `{table}`"));
    let exists: Option<u8> = conn
        .exec_first(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (&table.namespace, &table.name),
        )
        .await
        .map_err(fail)?;
    if exists.is_none() {
        return Ok(None);
    }
    let key: Vec<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY'",
            (&table.namespace, &table.name),
        )
        .await
        .map_err(fail)?;
    Ok(Some(key))
}

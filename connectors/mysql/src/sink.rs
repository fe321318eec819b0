//! The MySQL/MariaDB sink: applies planned batches with multi-row
//! `INSERT … ON DUPLICATE KEY UPDATE` and `DELETE … IN (…)` statements over
//! the text protocol.

use crate::convert::{write_quoted, write_source_literal, TargetType};
use crate::error::classify;
use crate::keys;
use callosum_api::batch::{plan_with, unique_key_positions, Step};
use callosum_api::mapping::{ColumnMap, ColumnMaps, Mismatch};
use callosum_api::{
    ChangeEvent, ConnectorError, ErrorKind, Fence, Position, Sink, TableId, TableSchema,
    TlsSettings, Value, CHECKPOINT_TABLE,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Row};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use tracing::{debug, info, warn};

mod dead_letters;
pub(crate) use dead_letters::dead_letter_ddl;

/// Most rows in one statement.
pub const MAX_ROWS_PER_STATEMENT: usize = 1000;
/// A statement is closed once it passes this many bytes (well under the
/// default `max_allowed_packet` of 16 MiB; one row may still exceed it).
pub const MAX_STATEMENT_BYTES: usize = 4 << 20;

/// The session's `sql_mode`: strict, literal-safe (`'` is the only escape),
/// `0` in an auto-increment column is a value, no silent engine swap.
pub const SQL_MODE: &str =
    "STRICT_ALL_TABLES,NO_BACKSLASH_ESCAPES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION";

/// Everything the sink needs to reach its target and find its tables.
#[derive(Clone)]
pub struct MySqlSinkConfig {
    /// The store's config name (used in messages).
    pub store: String,
    /// `mysql://user@host:port/database`; the database holds
    /// `callosum_checkpoint`.
    pub url: String,
    /// Overrides the url's password when set. Never logged.
    pub password: Option<String>,
    /// The pipeline's name: the key of its checkpoint row.
    pub pipeline: String,
    /// `(source table, target table)` pairs.
    pub tables: Vec<(TableId, TableId)>,
    /// The store's `time_zone`: its datetime columns hold local times of
    /// this zone; `None` is UTC.
    pub time_zone: Option<chrono_tz::Tz>,
    /// `tls` and `tls_ca_file` of the store.
    pub tls: TlsSettings,
    /// The lease epoch every checkpoint write carries (active/standby).
    pub fence: Fence,
}

impl fmt::Debug for MySqlSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlSinkConfig")
            .field("store", &self.store)
            .field("url", &redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("pipeline", &self.pipeline)
            .field("tables", &self.tables)
            .field("fence", &self.fence)
            .finish()
    }
}

/// The url without its password, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<invalid url>".into();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{}", &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

/// A target column as the catalog describes it.
#[derive(Clone, Debug)]
pub(crate) struct TargetColumn {
    pub name: String,
    /// `COLUMN_TYPE`, e.g. `varchar(32)`, for messages.
    pub column_type: String,
    pub ty: TargetType,
}

/// A target table as the catalog describes it.
#[derive(Clone, Debug)]
pub(crate) struct TargetTable {
    pub id: TableId,
    pub columns: Vec<TargetColumn>,
    /// Indexes into `columns`, in primary-key order. Empty: no primary key.
    pub primary_key: Vec<usize>,
    /// Unique keys besides the primary key, indexes into `columns`.
    pub unique_keys: Vec<Vec<usize>>,
    /// Per column (`None` for most): for a column of the primary key or a
    /// unique key whose collation merges case or accents (`Bob` = `bob`),
    /// the `_bin` collation to compare it under, so a delete or key update
    /// touches only the source's row.
    pub key_collations: Vec<Option<String>>,
}

/// Reads the columns and primary key of `db.table`; `None` when the table
/// does not exist.
pub(crate) async fn read_table(
    conn: &mut Conn,
    store: &str,
    table: &TableId,
) -> Result<Option<TargetTable>, ConnectorError> {
    let rows: Vec<Row> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_MAXIMUM_LENGTH, \
             NUMERIC_PRECISION, NUMERIC_SCALE, DATETIME_PRECISION \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
            (&table.namespace, &table.name),
        )
        .await
        .map_err(|e| classify(e, store, &format!("reading the columns of `{table}`")))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let bad_row = || {
        ConnectorError::new(
            ErrorKind::Protocol,
            format!("unexpected catalog row for `{table}` in store `{store}`"),
        )
    };
    let mut columns = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.get_opt(0).and_then(Result::ok).ok_or_else(bad_row)?;
        let data_type: String = row.get_opt(1).and_then(Result::ok).ok_or_else(bad_row)?;
        let column_type: String = row.get_opt(2).and_then(Result::ok).ok_or_else(bad_row)?;
        let num = |i: usize| {
            row.get_opt::<Option<u64>, _>(i)
                .and_then(Result::ok)
                .flatten()
        };
        let ty = TargetType::from_catalog(&data_type, &column_type, num(3), num(4), num(5), num(6));
        columns.push(TargetColumn {
            name,
            column_type,
            ty,
        });
    }
    mark_json_columns(conn, table, &mut columns).await;
    let pk: Vec<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' \
             ORDER BY ORDINAL_POSITION",
            (&table.namespace, &table.name),
        )
        .await
        .map_err(|e| classify(e, store, &format!("reading the primary key of `{table}`")))?;
    let primary_key: Vec<usize> = pk
        .iter()
        .filter_map(|name| columns.iter().position(|c| &c.name == name))
        .collect();
    let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
    let unique_keys = keys::read_unique_keys(conn, store, table, &names).await?;
    let insensitive = keys::insensitive_key_columns(conn, store, table).await?;
    let key_collations = columns
        .iter()
        .map(|column| {
            insensitive
                .iter()
                .find(|c| c.name == column.name)
                .map(|c| keys::binary_collation(&c.collation))
        })
        .collect();
    Ok(Some(TargetTable {
        id: table.clone(),
        columns,
        primary_key,
        unique_keys,
        key_collations,
    }))
}

/// MariaDB's `JSON` is `LONGTEXT` with a `CHECK (json_valid(col))`: such
/// columns are [`TargetType::Json`]. MySQL has a native json type and no
/// `TABLE_NAME` in `CHECK_CONSTRAINTS`: when the query fails, nothing is
/// marked.
async fn mark_json_columns(conn: &mut Conn, table: &TableId, columns: &mut [TargetColumn]) {
    if !columns
        .iter()
        .any(|c| matches!(c.ty, TargetType::Text { .. }))
    {
        return;
    }
    let checks: Result<Vec<String>, _> = conn
        .exec(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
            (&table.namespace, &table.name),
        )
        .await;
    let Ok(checks) = checks else { return };
    for check in checks {
        let clause: String = check
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        for column in columns.iter_mut() {
            if matches!(column.ty, TargetType::Text { .. })
                && clause == format!("json_valid(`{}`)", column.name.to_ascii_lowercase())
            {
                column.ty = TargetType::Json;
            }
        }
    }
}

/// Opens a connection with the sink's session settings.
pub(crate) async fn open(config: &MySqlSinkConfig) -> Result<(Conn, String), ConnectorError> {
    let store = &config.store;
    let opts = Opts::from_url(&config.url).map_err(|_| {
        ConnectorError::new(
            ErrorKind::Config,
            format!("the url of store `{store}` is not a valid mysql url"),
        )
        .with_hint("expected mysql://user@host:port/database")
    })?;
    let Some(database) = opts.db_name().map(str::to_string) else {
        return Err(ConnectorError::new(
            ErrorKind::Config,
            format!("the url of store `{store}` names no database"),
        )
        .with_hint("add the database to the url: mysql://user@host:port/database"));
    };
    let mut builder = OptsBuilder::from_opts(opts).ssl_opts(crate::tls::ssl_opts(&config.tls));
    if let Some(password) = &config.password {
        builder = builder.pass(Some(password.clone()));
    }
    let mut conn = Conn::new(builder).await.map_err(|e| {
        crate::tls::tls_failure(&e, store).unwrap_or_else(|| classify(e, store, "connecting"))
    })?;
    // foreign_key_checks=0: the source already enforced its foreign keys, and
    // a batch is applied as its net effect, whose order may differ from the
    // source's statement order. unique_checks stays on. The lock waits are
    // bounded (row and metadata locks), so that an application's open
    // transaction shows as a retry with its reason, not a silent stall.
    conn.query_drop(format!(
        "SET time_zone = '+00:00', sql_mode = '{SQL_MODE}', foreign_key_checks = 0, \
         innodb_lock_wait_timeout = {lock}, lock_wait_timeout = {lock}",
        lock = callosum_api::TARGET_LOCK_TIMEOUT_SECONDS
    ))
    .await
    .map_err(|e| classify(e, store, "setting up the session"))?;
    Ok((conn, database))
}

/// Appends `` `name` `` with backticks doubled.
pub(crate) fn push_ident(out: &mut String, name: &str) {
    out.push('`');
    for c in name.chars() {
        if c == '`' {
            out.push('`');
        }
        out.push(c);
    }
    out.push('`');
}

pub(crate) fn push_table(out: &mut String, table: &TableId) {
    push_ident(out, &table.namespace);
    out.push('.');
    push_ident(out, &table.name);
}

/// A sink that applies whole source transactions to a MySQL or MariaDB
/// database exactly once.
///
/// Guarantees (beyond [`Sink`]'s):
/// - the session runs with `time_zone = '+00:00'` (timestamps are stored as
///   UTC), strict `sql_mode` and `foreign_key_checks = 0` (the source
///   enforced its keys; batches apply as net effect);
/// - values are converted to each target column's type from the catalog; a
///   value the column cannot hold is a `Conversion` error naming store,
///   table, column, target type and source type, never the value;
/// - a truncate is applied as `DELETE FROM`, which (unlike `TRUNCATE`) stays
///   inside the target transaction;
/// - after any error inside a transaction the sink rolls it back; after a
///   `Connection` error the caller reconnects with [`MySqlSink::connect`].
pub struct MySqlSink {
    config: MySqlSinkConfig,
    conn: Conn,
    database: String,
    /// Target table per source table.
    tables: HashMap<TableId, TargetTable>,
    /// Column maps per source schema (a batch may span an `ALTER TABLE`).
    maps: ColumnMaps,
    /// Reused statement buffer.
    sql: String,
    in_transaction: bool,
}

impl fmt::Debug for MySqlSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlSink")
            .field("config", &self.config)
            .field("database", &self.database)
            .field("in_transaction", &self.in_transaction)
            .finish()
    }
}

impl MySqlSink {
    /// Connects, sets up the session, creates `callosum_checkpoint` and
    /// `callosum_dead_letter` in the url's database if they are missing, and reads every target table's
    /// columns and primary key. Fails with `Schema` when a target table is
    /// missing or has no primary key.
    pub async fn connect(config: MySqlSinkConfig) -> Result<MySqlSink, ConnectorError> {
        let (mut conn, database) = open(&config).await?;
        let store = config.store.clone();
        let checkpoint = TableId::new(&database, CHECKPOINT_TABLE);
        if read_table(&mut conn, &store, &checkpoint).await?.is_none() {
            let mut ddl = String::from("CREATE TABLE IF NOT EXISTS ");
            push_table(&mut ddl, &checkpoint);
            ddl.push_str(
                " (pipeline VARCHAR(255) NOT NULL PRIMARY KEY, \
                 source_position VARCHAR(255) NOT NULL, \
                 applied_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
                 transactions BIGINT NOT NULL DEFAULT 0, \
                 epoch BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB",
            );
            conn.query_drop(ddl)
                .await
                .map_err(|e| classify(e, &store, &format!("creating `{checkpoint}`")))?;
            info!(store = %store, table = %checkpoint, "created checkpoint table");
        }
        let dead_letters = TableId::new(&database, callosum_api::DEAD_LETTER_TABLE);
        if read_table(&mut conn, &store, &dead_letters)
            .await?
            .is_none()
        {
            conn.query_drop(dead_letter_ddl(&database))
                .await
                .map_err(|e| classify(e, &store, &format!("creating `{dead_letters}`")))?;
            info!(store = %store, table = %dead_letters, "created dead-letter table");
        }
        ensure_epoch_column(&mut conn, &store, &checkpoint).await?;
        if let Some(timeout) = config.fence.idle_transaction_timeout {
            // a paused former leader's open transaction must not hold the
            // checkpoint row (and the new leader's fence) until it wakes up;
            // MariaDB only (MySQL has no such variable: its fence then
            // waits for the paused agent's connection to time out)
            let seconds = timeout.as_secs_f64().ceil().max(1.0) as u64;
            if let Err(err) = conn
                .query_drop(format!(
                    "SET SESSION idle_write_transaction_timeout = {seconds}"
                ))
                .await
            {
                warn!(store = %store, error = %err, "cannot set idle_write_transaction_timeout: a paused former leader's open transaction delays a takeover until its connection times out");
            }
        }
        let mut tables = HashMap::new();
        for (source, target) in &config.tables {
            let Some(mut table) = read_table(&mut conn, &store, target).await? else {
                return Err(ConnectorError::new(
                    ErrorKind::Schema,
                    format!("target table `{target}` does not exist in store `{store}`"),
                )
                .with_hint(format!("create `{target}` with the columns of `{source}`")));
            };
            if let Some(zone) = config.time_zone {
                for c in &mut table.columns {
                    if let TargetType::DateTime { fsp } = c.ty {
                        c.ty = TargetType::ZonedDateTime { fsp, zone };
                    }
                }
            }
            if table.primary_key.is_empty() {
                return Err(ConnectorError::new(
                    ErrorKind::Schema,
                    format!("target table `{target}` in store `{store}` has no primary key"),
                )
                .with_hint(format!(
                    "add a primary key to `{target}` matching the key of `{source}`"
                )));
            }
            tables.insert(source.clone(), table);
        }
        info!(store = %store, pipeline = %config.pipeline, tables = tables.len(), "connected to target");
        Ok(MySqlSink {
            config,
            conn,
            database,
            tables,
            maps: ColumnMaps::default(),
            sql: String::with_capacity(64 * 1024),
            in_transaction: false,
        })
    }

    fn checkpoint_table(&self) -> TableId {
        TableId::new(&self.database, CHECKPOINT_TABLE)
    }

    /// Best-effort rollback after a failure inside a transaction.
    async fn abort(&mut self) {
        if self.in_transaction {
            self.in_transaction = false;
            if let Err(err) = self.conn.query_drop("ROLLBACK").await {
                warn!(store = %self.config.store, error = %err, "rollback after a failed apply failed");
            }
        }
    }

    /// Ensures a column map for `schema`, the schema its rows were written
    /// under. A new schema of a table already mapped (the source altered
    /// it) re-reads the target table first, and so does a schema that does
    /// not fit the target as it was read: an operator's `ALTER TABLE` on
    /// the target is picked up without a restart.
    async fn map_for(&mut self, schema: &Arc<TableSchema>) -> Result<(), ConnectorError> {
        if self.maps.get(schema).is_some() {
            return Ok(());
        }
        let mut reread = false;
        if self.maps.has_table(&schema.table) {
            self.reread_target(&schema.table).await?;
            reread = true;
        }
        let map = match self.build_map(schema) {
            Err(err) if !reread && err.kind == ErrorKind::Schema => {
                self.reread_target(&schema.table).await?;
                self.build_map(schema)?
            }
            other => other?,
        };
        self.maps.insert(map);
        Ok(())
    }

    /// Reads `source`'s target table from the catalog again; when it
    /// changed, forgets the table's column maps and returns `true`.
    async fn reread_target(&mut self, source: &TableId) -> Result<bool, ConnectorError> {
        let store = &self.config.store;
        let Some(old) = self.tables.get(source) else {
            return Ok(false); // build_map names the unconfigured table
        };
        let id = old.id.clone();
        let Some(table) = read_table(&mut self.conn, store, &id).await? else {
            return Err(ConnectorError::new(
                ErrorKind::Schema,
                format!("target table `{id}` does not exist in store `{store}`"),
            )
            .with_hint(format!("create `{id}` with the columns of `{source}`")));
        };
        if table.primary_key.is_empty() {
            return Err(ConnectorError::new(
                ErrorKind::Schema,
                format!("target table `{id}` in store `{store}` has no primary key"),
            )
            .with_hint(format!(
                "add a primary key to `{id}` matching the key of `{source}`"
            )));
        }
        let same = old.primary_key == table.primary_key
            && old.columns.len() == table.columns.len()
            && old
                .columns
                .iter()
                .zip(&table.columns)
                .all(|(a, b)| a.name == b.name && a.column_type == b.column_type);
        if !same {
            info!(store = %store, pipeline = %self.config.pipeline, table = %id, "target table changed: columns read again");
            self.maps.forget(source);
        }
        self.tables.insert(source.clone(), table);
        Ok(!same)
    }

    /// A column map of `schema` onto its target table as last read.
    fn build_map(&self, schema: &Arc<TableSchema>) -> Result<ColumnMap, ConnectorError> {
        let source = &schema.table;
        let store = &self.config.store;
        let table = self.tables.get(source).ok_or_else(|| {
            ConnectorError::new(
                ErrorKind::Schema,
                format!(
                    "table `{source}` is not configured for pipeline `{}` into store `{store}`",
                    self.config.pipeline
                ),
            )
        })?;
        let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        ColumnMap::new(schema, &names, &table.primary_key, &table.unique_keys).map_err(|m| match m {
            Mismatch::MissingColumn(s) => {
                let column = &schema.columns[s].name;
                ConnectorError::new(
                    ErrorKind::Schema,
                    format!(
                        "column `{column}` of `{source}` is missing in target table `{}` of store `{store}`",
                        table.id
                    ),
                )
                .with_hint(format!("add column `{column}` to `{}`", table.id))
            }
            Mismatch::KeyNotUnique(k) => {
                let key = key_names(schema);
                ConnectorError::new(
                    ErrorKind::Schema,
                    format!(
                        "the key of `{source}` ({key}) is neither the primary key of target table `{}` \
                         in store `{store}` (primary key column `{}` is not a key column of the source) \
                         nor a unique key of it",
                        table.id, table.columns[k].name
                    ),
                )
                .with_hint(format!(
                    "make the target's primary key the source table's key, or add a unique index on ({key}) to `{}`",
                    table.id
                ))
            }
        })
    }

    async fn apply_steps(&mut self, events: &[ChangeEvent]) -> Result<(), ConnectorError> {
        let tables = &self.tables;
        let steps = plan_with(events, |schema| match tables.get(&schema.table) {
            Some(table) => {
                unique_key_positions(schema, &table.unique_keys, |t| &table.columns[t].name)
            }
            None => Vec::new(),
        });
        for step in &steps {
            self.map_for(step.schema()).await?;
            let source = step.table();
            let doing = match step {
                Step::Truncate { .. } => "truncating",
                Step::Delete { .. } => "deleting",
                Step::Upsert { .. } => "upserting",
                Step::UpdateKey { .. } => "updating a key",
            };
            let mut done = 0;
            loop {
                // each step by the schema its rows were written under
                let map = self.maps.get(step.schema()).expect("mapped above");
                let table = &self.tables[source];
                self.sql.clear();
                let end =
                    build_statement(&mut self.sql, step, done, map, table, &self.config.store)?;
                let target = &table.id;
                let what = format!("{doing} rows of `{target}`");
                let sql = std::mem::take(&mut self.sql);
                let result = self.conn.query_drop(&sql).await;
                self.sql = sql;
                match result {
                    Ok(()) => {}
                    Err(mysql_async::Error::Server(e))
                        if matches!(step, Step::Upsert { .. }) && is_key_guard(&e, table) =>
                    {
                        return Err(key_collision(&self.config.store, table));
                    }
                    Err(e) => return Err(classify(e, &self.config.store, &what)),
                }
                done = end;
                if done >= step.row_count() {
                    break;
                }
            }
        }
        debug!(store = %self.config.store, events = events.len(), statements = steps.len(), "applied batch");
        Ok(())
    }
}

/// `` `a`, `b` ``: the key columns of `schema`, for messages.
fn key_names(schema: &TableSchema) -> String {
    schema
        .key_indexes()
        .iter()
        .map(|&i| format!("`{}`", schema.columns[i].name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The guard of an upsert's `ON DUPLICATE KEY UPDATE` ([`push_key_guard`])
/// refused the row it matched.
fn is_key_guard(err: &mysql_async::ServerError, table: &TargetTable) -> bool {
    let guard = &table.columns[table.primary_key[0]].name;
    err.code == 1048 && err.message.contains(&format!("'{guard}'"))
}

fn key_collision(store: &str, table: &TargetTable) -> ConnectorError {
    let key: Vec<&str> = table
        .primary_key
        .iter()
        .map(|&k| table.columns[k].name.as_str())
        .collect();
    let key = key.join("`, `");
    ConnectorError::new(
        ErrorKind::Constraint,
        format!(
            "upserting rows of `{}` in store `{store}` failed: a row matched another row of the              target, through primary key `{key}` under the target's collation or through a              unique key, which it would have overwritten",
            table.id
        ),
    )
    .with_hint(format!(
        "if `{}` has key columns with a case- or accent-insensitive collation (`_ci`, `_ai`),          alter them to a `_bin` collation (`callosum check` lists them); otherwise the source          swapped unique values within one transaction, which the target cannot apply row by row",
        table.id
    ))
}

/// The first assignment of every upsert's `ON DUPLICATE KEY UPDATE`: the
/// row the insert collided with must be the row with the inserted key (the
/// map's: the primary key, or the unique key holding the source's key),
/// byte for byte. Otherwise (a unique key matched another row, or a
/// `_ci` primary key matched `Bob` for `bob`) it sets the NOT NULL key to
/// NULL, which fails with error 1048 in the strict session instead of
/// overwriting that row. Assignments see the row's values before the
/// update, so it must come first.
fn push_key_guard(sql: &mut String, table: &TargetTable, map: &ColumnMap) {
    let first = &table.columns[table.primary_key[0]].name;
    push_ident(sql, first);
    sql.push_str("=IF(");
    for (n, &k) in map.key_targets.iter().enumerate() {
        if n > 0 {
            sql.push_str(" AND ");
        }
        let name = &table.columns[k].name;
        sql.push_str("CAST(");
        push_ident(sql, name);
        sql.push_str(" AS BINARY)<=>CAST(VALUES(");
        push_ident(sql, name);
        sql.push_str(") AS BINARY)");
    }
    sql.push(',');
    push_ident(sql, first);
    sql.push_str(",NULL)");
}

fn conversion_error(
    store: &str,
    table: &TargetTable,
    target_column: usize,
    schema: &TableSchema,
    source_column: usize,
    value: &Value,
    reason: &str,
) -> ConnectorError {
    let col = &table.columns[target_column];
    let src = &schema.columns[source_column];
    ConnectorError::new(
        ErrorKind::Conversion,
        format!(
            "cannot write column `{}` of `{}` in store `{store}`: a {:?} value of source type {} \
             for target type {}: {reason}",
            col.name,
            table.id,
            value.kind(),
            src.source_type,
            col.column_type
        ),
    )
    .with_hint(format!(
        "widen `{}`.`{}` to hold the source's {} values, or fix the source row",
        table.id, col.name, src.source_type
    ))
}

fn write_value(
    out: &mut String,
    value: &Value,
    store: &str,
    table: &TargetTable,
    target_column: usize,
    schema: &TableSchema,
    source_column: usize,
) -> Result<(), ConnectorError> {
    let source_type = &schema.columns[source_column].source_type;
    write_source_literal(out, value, source_type, &table.columns[target_column].ty)
        .map_err(|r| conversion_error(store, table, target_column, schema, source_column, value, r))
}

/// Builds the statement for `step` starting at row `from`; returns the index
/// after the last row it holds (chunks: ≤ [`MAX_ROWS_PER_STATEMENT`] rows,
/// closed past [`MAX_STATEMENT_BYTES`]).
fn build_statement(
    sql: &mut String,
    step: &Step<'_>,
    from: usize,
    map: &ColumnMap,
    table: &TargetTable,
    store: &str,
) -> Result<usize, ConnectorError> {
    let schema = step.schema().as_ref();
    match step {
        Step::Truncate { .. } => {
            sql.push_str("DELETE FROM ");
            push_table(sql, &table.id);
            Ok(1)
        }
        Step::Delete { keys, .. } => {
            sql.push_str("DELETE FROM ");
            push_table(sql, &table.id);
            sql.push_str(" WHERE ");
            let exact = map
                .key_targets
                .iter()
                .any(|&t| table.key_collations[t].is_some());
            if exact {
                sql.push('(');
            }
            let end = push_key_list(sql, keys, from, None, map, table, store, schema)?;
            if exact {
                // the index finds the rows equal under the column's
                // collation; of those, only the byte-equal ones (`bob`,
                // not `Bob`) are the source's rows
                sql.push_str(") AND (");
                push_key_list(sql, keys, from, Some(end), map, table, store, schema)?;
                sql.push(')');
            }
            Ok(end)
        }
        Step::Upsert { present, rows, .. } => {
            sql.push_str("INSERT INTO ");
            push_table(sql, &table.id);
            sql.push_str(" (");
            let mut first = true;
            for (s, _) in present.iter().enumerate().filter(|(_, p)| **p) {
                if !first {
                    sql.push(',');
                }
                first = false;
                push_ident(sql, &table.columns[map.target[s]].name);
            }
            sql.push_str(") VALUES ");
            let mut i = from;
            while i < rows.len()
                && i - from < MAX_ROWS_PER_STATEMENT
                && sql.len() < MAX_STATEMENT_BYTES
            {
                if i > from {
                    sql.push(',');
                }
                sql.push('(');
                let mut first = true;
                for (s, value) in rows[i].iter().enumerate() {
                    if !present[s] {
                        continue;
                    }
                    if !first {
                        sql.push(',');
                    }
                    first = false;
                    write_value(sql, value, store, table, map.target[s], schema, s)?;
                }
                sql.push(')');
                i += 1;
            }
            sql.push_str(" ON DUPLICATE KEY UPDATE ");
            push_key_guard(sql, table, map);
            for (s, _) in present.iter().enumerate().filter(|(_, p)| **p) {
                let t = map.target[s];
                if table.primary_key.contains(&t) || map.key_targets.contains(&t) {
                    continue;
                }
                sql.push(',');
                push_values_assignment(sql, &table.columns[t].name);
            }
            Ok(i)
        }
        Step::UpdateKey { old_key, row, .. } => {
            sql.push_str("UPDATE ");
            push_table(sql, &table.id);
            sql.push_str(" SET ");
            let mut first = true;
            for (s, value) in row.iter().enumerate() {
                if value.is_unchanged() {
                    continue;
                }
                if !first {
                    sql.push(',');
                }
                first = false;
                push_ident(sql, &table.columns[map.target[s]].name);
                sql.push('=');
                write_value(sql, value, store, table, map.target[s], schema, s)?;
            }
            sql.push_str(" WHERE ");
            for (n, &s) in map.key_sources.iter().enumerate() {
                if n > 0 {
                    sql.push_str(" AND ");
                }
                push_ident(sql, &table.columns[map.target[s]].name);
                sql.push('=');
                write_value(sql, &old_key[s], store, table, map.target[s], schema, s)?;
                if let Some(collation) = &table.key_collations[map.key_targets[n]] {
                    // only the byte-equal row of those the index finds
                    sql.push_str(" AND ");
                    push_ident(sql, &table.columns[map.target[s]].name);
                    sql.push_str(" COLLATE ");
                    sql.push_str(collation);
                    sql.push('=');
                    write_value(sql, &old_key[s], store, table, map.target[s], schema, s)?;
                }
            }
            Ok(1)
        }
    }
}

/// `key IN (…)` (single-column key) or an OR of equalities over
/// `keys[from..]`, up to the statement limits, or exactly up to `exact_to`
/// with every key column compared under its `_bin` collation
/// ([`TargetTable::key_collations`]). Returns the end of the rows written.
#[allow(clippy::too_many_arguments)]
fn push_key_list(
    sql: &mut String,
    keys: &[&[Value]],
    from: usize,
    exact_to: Option<usize>,
    map: &ColumnMap,
    table: &TargetTable,
    store: &str,
    schema: &TableSchema,
) -> Result<usize, ConnectorError> {
    let single = map.key_sources.len() == 1;
    let push_column = |sql: &mut String, n: usize| {
        let t = map.key_targets[n];
        push_ident(sql, &table.columns[t].name);
        if let (Some(_), Some(collation)) = (exact_to, &table.key_collations[t]) {
            sql.push_str(" COLLATE ");
            sql.push_str(collation);
        }
    };
    if single {
        push_column(sql, 0);
        sql.push_str(" IN (");
    }
    let mut i = from;
    while match exact_to {
        Some(end) => i < end,
        None => {
            i < keys.len() && i - from < MAX_ROWS_PER_STATEMENT && sql.len() < MAX_STATEMENT_BYTES
        }
    } {
        let key = keys[i];
        if single {
            if i > from {
                sql.push(',');
            }
            let s = map.key_sources[0];
            write_value(sql, &key[s], store, table, map.target[s], schema, s)?;
        } else {
            // OR of equalities: both MariaDB and MySQL use the
            // primary key's range access for it.
            if i > from {
                sql.push_str(" OR ");
            }
            sql.push('(');
            for (n, &s) in map.key_sources.iter().enumerate() {
                if n > 0 {
                    sql.push_str(" AND ");
                }
                push_column(sql, n);
                sql.push('=');
                write_value(sql, &key[s], store, table, map.target[s], schema, s)?;
            }
            sql.push(')');
        }
        i += 1;
    }
    if single {
        sql.push(')');
    }
    Ok(i)
}

fn push_values_assignment(sql: &mut String, name: &str) {
    push_ident(sql, name);
    sql.push_str("=VALUES(");
    push_ident(sql, name);
    sql.push(')');
}

/// Adds the lease `epoch` column to a checkpoint table created before it
/// existed. Two agents may race: the loser's "duplicate column" is success.
async fn ensure_epoch_column(
    conn: &mut Conn,
    store: &str,
    checkpoint: &TableId,
) -> Result<(), ConnectorError> {
    let mut sql = String::from(
        "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE COLUMN_NAME = 'epoch' AND TABLE_SCHEMA = ",
    );
    write_quoted(&mut sql, &checkpoint.namespace);
    sql.push_str(" AND TABLE_NAME = ");
    write_quoted(&mut sql, &checkpoint.name);
    let present: Option<u64> = conn
        .query_first(sql)
        .await
        .map_err(|e| classify(e, store, "reading the checkpoint table's columns"))?;
    if present.unwrap_or(0) > 0 {
        return Ok(());
    }
    let mut alter = String::from("ALTER TABLE ");
    push_table(&mut alter, checkpoint);
    alter.push_str(" ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0");
    match conn.query_drop(alter).await {
        Ok(()) => {
            info!(store = %store, "added the epoch column to the checkpoint table");
            Ok(())
        }
        Err(mysql_async::Error::Server(server)) if server.code == 1060 => Ok(()),
        Err(e) => Err(classify(e, store, "adding the epoch column to the checkpoint table")
            .with_hint(format!(
                "as a user with ALTER on it run ALTER TABLE {checkpoint} ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0"
            ))),
    }
}

/// The error of a checkpoint write refused because the row carries a newer
/// lease epoch than `epoch`.
fn fenced(store: &str, pipeline: &str, epoch: i64) -> ConnectorError {
    ConnectorError::new(
        ErrorKind::Fenced,
        format!(
            "the checkpoint of pipeline `{pipeline}` in store `{store}` carries a newer lease epoch than this agent's ({epoch}): another agent took over"
        ),
    )
    .with_hint("this agent steps down; check that every agent of this config has the same [lease] section")
}

impl MySqlSink {
    /// Fences the checkpoint rows `keys` (a pipeline's and its replay's):
    /// stores this sink's epoch in each, creating a row without a position
    /// where there is none yet, unless a row already carries a newer epoch
    /// (`Fenced`). Waits for a transaction of a former leader that holds a
    /// row to end; after it, that leader's checkpoint writes fail.
    pub async fn fence(&mut self, keys: &[String]) -> Result<(), ConnectorError> {
        let epoch = self.config.fence.epoch;
        let table = self.checkpoint_table();
        let mut sql = String::from("INSERT INTO ");
        push_table(&mut sql, &table);
        sql.push_str(" (pipeline, source_position, applied_at, transactions, epoch) VALUES ");
        for (i, key) in keys.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            write_quoted(&mut sql, key);
            sql.push_str(&format!(", '', UTC_TIMESTAMP(6), 0, {epoch})"));
        }
        sql.push_str(
            " ON DUPLICATE KEY UPDATE epoch = IF(epoch <= VALUES(epoch), VALUES(epoch), epoch)",
        );
        let store = self.config.store.clone();
        self.conn
            .query_drop(sql)
            .await
            .map_err(|e| classify(e, &store, "fencing the checkpoint rows"))?;
        let mut check = String::from("SELECT pipeline FROM ");
        push_table(&mut check, &table);
        check.push_str(" WHERE pipeline IN (");
        for (i, key) in keys.iter().enumerate() {
            if i > 0 {
                check.push(',');
            }
            write_quoted(&mut check, key);
        }
        check.push_str(&format!(") AND epoch > {epoch} LIMIT 1"));
        let newer: Option<String> = self
            .conn
            .query_first(check)
            .await
            .map_err(|e| classify(e, &store, "reading the fenced checkpoint rows"))?;
        match newer {
            None => Ok(()),
            Some(pipeline) => Err(fenced(&store, &pipeline, epoch)),
        }
    }
}

impl Sink for MySqlSink {
    async fn refresh_targets(&mut self, tables: &[TableId]) -> Result<bool, ConnectorError> {
        if self.in_transaction {
            self.abort().await;
        }
        let mut changed = false;
        for table in tables {
            changed |= self.reread_target(table).await?;
        }
        Ok(changed)
    }

    async fn checkpoint(&mut self) -> Result<Option<Position>, ConnectorError> {
        self.sql.clear();
        self.sql.push_str("SELECT source_position FROM ");
        let table = self.checkpoint_table();
        push_table(&mut self.sql, &table);
        self.sql.push_str(" WHERE pipeline = ");
        write_quoted(&mut self.sql, &self.config.pipeline);
        // a row fenced before its pipeline's first commit has no position
        self.sql.push_str(" AND source_position <> ''");
        let sql = std::mem::take(&mut self.sql);
        let result: Result<Option<String>, _> = self.conn.query_first(&sql).await;
        self.sql = sql;
        let store = &self.config.store;
        let text = result.map_err(|e| classify(e, store, "reading the checkpoint"))?;
        text.map(|t| {
            t.parse::<Position>().map_err(|e| {
                ConnectorError::new(
                    ErrorKind::Protocol,
                    format!(
                        "the checkpoint of pipeline `{}` in store `{store}` is not a position: {e}",
                        self.config.pipeline
                    ),
                )
                .with_hint(format!("fix or delete the row in {CHECKPOINT_TABLE}"))
            })
        })
        .transpose()
    }

    async fn begin(&mut self, checkpoint: &Position) -> Result<(), ConnectorError> {
        if self.in_transaction {
            self.abort().await;
        }
        let table = self.checkpoint_table();
        self.sql.clear();
        self.sql.push_str("START TRANSACTION; INSERT INTO ");
        push_table(&mut self.sql, &table);
        self.sql
            .push_str(" (pipeline, source_position, applied_at, transactions, epoch) VALUES (");
        write_quoted(&mut self.sql, &self.config.pipeline);
        self.sql.push(',');
        write_quoted(&mut self.sql, &checkpoint.to_string());
        // fencing: a row holding a newer epoch makes the first assignment
        // set the key to NULL, which the strict session refuses (1048)
        // whatever the client's CLIENT_FOUND_ROWS setting
        let epoch = self.config.fence.epoch;
        self.sql.push_str(&format!(
            ", UTC_TIMESTAMP(6), 1, {epoch}) ON DUPLICATE KEY UPDATE \
             pipeline = IF(epoch <= VALUES(epoch), pipeline, NULL), \
             source_position = VALUES(source_position), applied_at = VALUES(applied_at), \
             transactions = transactions + 1, epoch = VALUES(epoch)"
        ));
        self.in_transaction = true;
        let sql = std::mem::take(&mut self.sql);
        let result = self.conn.query_drop(&sql).await;
        self.sql = sql;
        let result = result.map_err(|e| match &e {
            mysql_async::Error::Server(server) if server.code == 1048 => {
                fenced(&self.config.store, &self.config.pipeline, epoch)
            }
            _ => classify(e, &self.config.store, "writing the checkpoint"),
        });
        if result.is_err() {
            self.abort().await;
        }
        result
    }

    async fn apply(&mut self, events: &[ChangeEvent]) -> Result<(), ConnectorError> {
        if !self.in_transaction {
            return Err(ConnectorError::new(
                ErrorKind::Protocol,
                format!(
                    "apply called outside a transaction for pipeline `{}`",
                    self.config.pipeline
                ),
            ));
        }
        let result = self.apply_steps(events).await;
        if result.is_err() {
            self.abort().await;
        }
        result
    }

    async fn commit(&mut self) -> Result<(), ConnectorError> {
        self.in_transaction = false;
        self.conn
            .query_drop("COMMIT")
            .await
            .map_err(|e| classify(e, &self.config.store, "committing"))
    }

    async fn rollback(&mut self) -> Result<(), ConnectorError> {
        self.in_transaction = false;
        self.conn
            .query_drop("ROLLBACK")
            .await
            .map_err(|e| classify(e, &self.config.store, "rolling back"))
    }

    async fn store_dead_letter_part(
        &mut self,
        id: u64,
        part: u32,
        payload: &[u8],
    ) -> Result<(), ConnectorError> {
        self.store_part(id, part, payload).await
    }

    async fn remove_dead_letter(&mut self, id: u64) -> Result<(), ConnectorError> {
        self.remove_entry(id).await
    }

    async fn dead_letter_ids(&mut self) -> Result<Vec<u64>, ConnectorError> {
        self.entry_ids().await
    }

    async fn dead_letter_part(
        &mut self,
        id: u64,
        part: u32,
    ) -> Result<Option<Vec<u8>>, ConnectorError> {
        self.entry_part(id, part).await
    }

    async fn discard_dead_letters(&mut self, ids: &[u64]) -> Result<(), ConnectorError> {
        self.discard_entries(ids).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callosum_api::{ColumnSchema, RowChange};

    fn target() -> TargetTable {
        let col = |name: &str, ty: TargetType, column_type: &str| TargetColumn {
            name: name.into(),
            column_type: column_type.into(),
            ty,
        };
        TargetTable {
            id: TableId::new("erp", "orders"),
            columns: vec![
                col(
                    "id",
                    TargetType::Int {
                        min: i64::MIN as i128,
                        max: i64::MAX as i128,
                    },
                    "bigint(20)",
                ),
                col("status", TargetType::Char { max_chars: 4 }, "varchar(4)"),
                col("note", TargetType::Text { max_bytes: 65535 }, "text"),
            ],
            primary_key: vec![0],
            unique_keys: Vec::new(),
            key_collations: vec![None; 3],
        }
    }

    fn schema() -> Arc<TableSchema> {
        let col = |name: &str, t: &str, is_key| ColumnSchema {
            name: name.into(),
            source_type: t.into(),
            is_key,
        };
        Arc::new(TableSchema {
            table: TableId::new("public", "orders"),
            columns: vec![
                col("id", "int8", true),
                col("note", "text", false),
                col("status", "varchar", false),
            ],
        })
    }

    fn sink_parts(schema: &Arc<TableSchema>) -> (ColumnMap, TargetTable) {
        let map = ColumnMap {
            schema: schema.clone(),
            target: vec![0, 2, 1],
            key_targets: vec![0],
            key_sources: vec![0],
        };
        (map, target())
    }

    fn build_all(events: &[ChangeEvent]) -> Result<Vec<String>, ConnectorError> {
        let s = events[0].schema.clone();
        let (map, table) = sink_parts(&s);
        let mut out = Vec::new();
        for step in callosum_api::batch::plan(events) {
            let mut from = 0;
            loop {
                let mut sql = String::new();
                from = build_statement(&mut sql, &step, from, &map, &table, "erp")?;
                out.push(sql);
                if from >= step.row_count() {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn ev(s: &Arc<TableSchema>, change: RowChange) -> ChangeEvent {
        ChangeEvent {
            schema: s.clone(),
            change,
        }
    }

    #[test]
    fn builds_multi_row_upserts_and_deletes() {
        let s = schema();
        let r = |id, note: &str| {
            vec![
                Value::Int(id),
                Value::Text(note.into()),
                Value::Text("new".into()),
            ]
        };
        let events = vec![
            ev(&s, RowChange::Insert { row: r(1, "it's") }),
            ev(&s, RowChange::Insert { row: r(2, "b") }),
            ev(
                &s,
                RowChange::Delete {
                    key: vec![Value::Int(3), Value::Null, Value::Null],
                },
            ),
            ev(
                &s,
                RowChange::Delete {
                    key: vec![Value::Int(4), Value::Null, Value::Null],
                },
            ),
            ev(
                &s,
                RowChange::Update {
                    old_key: None,
                    row: vec![Value::Int(5), Value::Unchanged, Value::Text("x".into())],
                },
            ),
        ];
        let sql = build_all(&events).unwrap();
        assert_eq!(
            sql,
            vec![
                "DELETE FROM `erp`.`orders` WHERE `id` IN (3,4)".to_string(),
                "INSERT INTO `erp`.`orders` (`id`,`note`,`status`) VALUES (1,'it''s','new'),(2,'b','new') \
                 ON DUPLICATE KEY UPDATE `id`=IF(CAST(`id` AS BINARY)<=>CAST(VALUES(`id`) AS BINARY),`id`,NULL),`note`=VALUES(`note`),`status`=VALUES(`status`)"
                    .to_string(),
                "INSERT INTO `erp`.`orders` (`id`,`status`) VALUES (5,'x') \
                 ON DUPLICATE KEY UPDATE `id`=IF(CAST(`id` AS BINARY)<=>CAST(VALUES(`id`) AS BINARY),`id`,NULL),`status`=VALUES(`status`)"
                    .to_string(),
            ]
        );
    }

    #[test]
    fn builds_key_update_and_truncate() {
        let s = schema();
        let events = vec![ev(
            &s,
            RowChange::Update {
                old_key: Some(vec![Value::Int(1), Value::Null, Value::Null]),
                row: vec![Value::Int(2), Value::Unchanged, Value::Text("x".into())],
            },
        )];
        assert_eq!(
            build_all(&events).unwrap(),
            vec!["UPDATE `erp`.`orders` SET `id`=2,`status`='x' WHERE `id`=1".to_string()]
        );
        let events = vec![ev(&s, RowChange::Truncate)];
        assert_eq!(
            build_all(&events).unwrap(),
            vec!["DELETE FROM `erp`.`orders`".to_string()]
        );
    }

    #[test]
    fn chunks_large_steps() {
        let s = schema();
        let events: Vec<_> = (0..2500)
            .map(|i| {
                ev(
                    &s,
                    RowChange::Insert {
                        row: vec![Value::Int(i), Value::Null, Value::Null],
                    },
                )
            })
            .collect();
        let sql = build_all(&events).unwrap();
        assert_eq!(sql.len(), 3);
        assert!(sql[2].contains("(2499,NULL,NULL)"));
        assert!(!sql[1].contains("(999,"));
    }

    #[test]
    fn conversion_errors_name_the_column_but_not_the_value() {
        let s = schema();
        let events = vec![ev(
            &s,
            RowChange::Insert {
                row: vec![
                    Value::Int(1),
                    Value::Null,
                    Value::Text("secret-too-long".into()),
                ],
            },
        )];
        let err = build_all(&events).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conversion);
        let text = err.to_string();
        assert!(text.contains("`status`"), "{text}");
        assert!(text.contains("erp.orders"), "{text}");
        assert!(text.contains("varchar(4)"), "{text}");
        assert!(text.contains("source type varchar"), "{text}");
        assert!(text.contains("store `erp`"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn composite_keys_delete_with_or_of_equalities() {
        let mut table = target();
        table.primary_key = vec![0, 1];
        let mut sch = (*schema()).clone();
        sch.columns[2].is_key = true;
        let s = Arc::new(sch);
        let map = ColumnMap {
            schema: s.clone(),
            target: vec![0, 2, 1],
            key_targets: vec![0, 1],
            key_sources: vec![0, 2],
        };
        let keys: Vec<Vec<Value>> = vec![
            vec![Value::Int(1), Value::Null, Value::Text("a".into())],
            vec![Value::Int(2), Value::Null, Value::Text("b".into())],
        ];
        let step = Step::Delete {
            schema: &s,
            keys: keys.iter().map(|k| k.as_slice()).collect(),
        };
        let mut sql = String::new();
        build_statement(&mut sql, &step, 0, &map, &table, "erp").unwrap();
        assert_eq!(
            sql,
            "DELETE FROM `erp`.`orders` WHERE (`id`=1 AND `status`='a') OR (`id`=2 AND `status`='b')"
        );
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("mysql://u:pw@h:3306/db"), "mysql://u@h:3306/db");
        assert_eq!(redact_url("mysql://h:3306/db"), "mysql://h:3306/db");
    }
}

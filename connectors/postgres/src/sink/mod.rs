//! [`PgSink`]: a [`Sink`] that applies planned batches to PostgreSQL tables
//! set-based, with every value sent in binary and converted to the target
//! column's type ([`crate::sink_convert`]).
//!
//! Upserts take one of three paths ([`UpsertStrategy`]), all ending in
//! `INSERT … ON CONFLICT (primary key) DO UPDATE SET c = EXCLUDED.c`:
//! - *values*: a multi-row `INSERT … VALUES ($1,…),(…)` prepared once per
//!   table, column set and row count (at most [`MAX_BIND_PARAMETERS`]
//!   parameters and [`MAX_VALUES_ROWS`] rows per statement);
//! - *unnest*: `INSERT … SELECT * FROM unnest($1::type[], …)`, one array
//!   parameter per column, one prepared statement per table and column set;
//! - *copy*: binary `COPY` into a per-connection temporary staging table,
//!   then one `INSERT … SELECT … ON CONFLICT` merge.
//!
//! [`UpsertStrategy::Auto`] (the default) picks *unnest* below
//! [`COPY_THRESHOLD`] rows and *copy* from there (*unnest* again when the
//! role may not create temporary tables). Measured on the design's `orders`
//! table (`examples/pg_sink_strategies.rs`, PostgreSQL 15 on 2 cores):
//! *unnest* matched or beat *values* from 10 rows up and tied *copy* up to
//! about 5,000 rows (≈100–220k rows/s at 1,000–5,000 rows); *copy* pulled
//! ahead only at 20,000 rows (≈10–15%), its fixed cost being two more round
//! trips per step. Deletes are `DELETE … WHERE k =
//! ANY($1)` (or `(k1, k2) IN (SELECT * FROM unnest($1, $2))` for composite
//! keys).

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use callosum_api::batch::{plan_with, unique_key_positions, Step};
use callosum_api::mapping::{ColumnMap, ColumnMaps, Mismatch};
use callosum_api::{
    ChangeEvent, ConnectorError, ErrorKind, Fence, Position, Sink, TableId, TableSchema,
    TlsSettings, Value, CHECKPOINT_TABLE,
};
use futures_util::SinkExt;
use tokio::task::JoinHandle;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, Statement};
use tracing::{debug, info, warn};

use crate::error::from_sql_without_values;
use crate::replication::{quote_ident, quote_literal};
use crate::sink_convert::{encode, PgType, Reason};
use crate::source::pg_config;

mod dead_letters;
mod statements;
pub(crate) use dead_letters::{dead_letter_ddl, dead_letter_table};
use statements::*;

/// PostgreSQL's limit on bind parameters in one statement.
pub const MAX_BIND_PARAMETERS: usize = 65_535;
/// Most rows in one multi-row `VALUES` upsert.
pub const MAX_VALUES_ROWS: usize = 1000;
/// [`UpsertStrategy::Auto`] uses `COPY` + merge for upsert steps of at least
/// this many rows and `unnest` below (the measured crossover, see the
/// module docs).
pub const COPY_THRESHOLD: usize = 5000;
/// Most rows (keys) per unnest statement and per `COPY` + merge.
pub const MAX_ARRAY_ROWS: usize = 50_000;
/// The schema that holds [`CHECKPOINT_TABLE`].
pub const CHECKPOINT_SCHEMA: &str = "public";

/// Everything the sink needs to reach its target and find its tables.
#[derive(Clone, PartialEq, Eq)]
pub struct PgSinkConfig {
    /// The store's config name (used in messages).
    pub store: String,
    /// `postgres://user@host:port/database` (or key=value form). Never logged.
    pub url: String,
    /// Overrides the url's password when set. Never logged.
    pub password: Option<String>,
    /// The pipeline's name: the key of its checkpoint row.
    pub pipeline: String,
    /// `(source table, target schema.table)` pairs.
    pub tables: Vec<(TableId, TableId)>,
    /// `tls` and `tls_ca_file` of the store.
    pub tls: TlsSettings,
    /// The lease epoch every checkpoint write carries (active/standby).
    pub fence: Fence,
}

impl fmt::Debug for PgSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSinkConfig")
            .field("store", &self.store)
            .field("url", &"<redacted>")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("pipeline", &self.pipeline)
            .field("tables", &self.tables)
            .field("fence", &self.fence)
            .finish()
    }
}

/// How [`PgSink`] sends upsert steps. The default, [`UpsertStrategy::Auto`],
/// is what the agent uses; the others exist to measure and compare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpsertStrategy {
    /// `Unnest` below [`COPY_THRESHOLD`] rows, `Copy` from there (`Unnest`
    /// when temporary tables cannot be created).
    #[default]
    Auto,
    /// Multi-row `INSERT … VALUES … ON CONFLICT` with bind parameters.
    Values,
    /// `INSERT … SELECT * FROM unnest($1::type[], …) ON CONFLICT`.
    Unnest,
    /// Binary `COPY` into a temporary staging table, then one merge.
    Copy,
}

/// A target column as the catalog describes it.
#[derive(Clone, Debug)]
pub(crate) struct TargetColumn {
    pub name: String,
    /// `format_type` of the column's type, e.g. `character varying(32)`.
    pub display: String,
    pub ty: PgType,
    /// The base type (domains resolved) with the column's typmod, for the
    /// staging table.
    pub base_display: String,
    /// The base type without typmod (`format_type(oid, -1)`: `bpchar`, not
    /// `character`, which would mean `char(1)`), for array casts.
    pub base_name: String,
    /// The base type's oid: the element type of array parameters.
    pub base_oid: u32,
}

impl TargetColumn {
    /// Values are sent as text and cast to the column's type in SQL
    /// ([`PgType::ViaText`]).
    fn via_text(&self) -> bool {
        self.ty == PgType::ViaText
    }

    /// The type of the column's parameters and staged values: `text` for
    /// [`PgType::ViaText`] columns, else the base type.
    fn param_type(&self) -> &str {
        if self.via_text() {
            "text"
        } else {
            &self.base_name
        }
    }

    /// `expr` cast to the column's type when its values travel as text.
    fn cast(&self, expr: &str) -> String {
        if self.via_text() {
            format!("{expr}::{}", self.display)
        } else {
            expr.to_string()
        }
    }
}

/// A target table as the catalog describes it.
#[derive(Clone, Debug)]
pub(crate) struct TargetTable {
    pub id: TableId,
    pub columns: Vec<TargetColumn>,
    /// Indexes into `columns`, in primary-key order. Empty: no primary key.
    pub primary_key: Vec<usize>,
    /// Another table's foreign key references this one: `TRUNCATE` would
    /// fail, truncate steps use `DELETE`.
    pub referenced: bool,
    /// Unique indexes besides the primary key, indexes into `columns`; an
    /// index on expressions or with a predicate counts as one over every
    /// column (any change may change it).
    pub unique_keys: Vec<Vec<usize>>,
}

/// Reads the columns and primary key of `schema.table` (an ordinary or
/// partitioned table); `None` when it does not exist.
pub(crate) async fn read_table(
    client: &Client,
    store: &str,
    table: &TableId,
) -> Result<Option<TargetTable>, ConnectorError> {
    let fail = |e| from_sql_without_values(store, &format!("read the catalog of `{table}`"), e);
    let Some(rel) = client
        .query_opt(
            "SELECT c.oid, EXISTS (SELECT 1 FROM pg_constraint f \
                                   WHERE f.contype = 'f' AND f.confrelid = c.oid) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.namespace, &table.name],
        )
        .await
        .map_err(fail)?
    else {
        return Ok(None);
    };
    let oid: u32 = rel.get(0);
    let referenced: bool = rel.get(1);
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                    b.oid, b.typname::text, b.typtype::text, m.typmod, \
                    format_type(b.oid, m.typmod), format_type(b.oid, -1) \
             FROM pg_attribute a \
             JOIN pg_type t ON t.oid = a.atttypid \
             JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
             CROSS JOIN LATERAL (SELECT CASE WHEN t.typtype = 'd' THEN t.typtypmod \
                                             ELSE a.atttypmod END AS typmod) m \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(fail)?;
    let columns: Vec<TargetColumn> = rows
        .iter()
        .map(|r| {
            let typname: String = r.get(3);
            let typtype: String = r.get(4);
            let typmod: i32 = r.get(5);
            TargetColumn {
                name: r.get(0),
                display: r.get(1),
                ty: PgType::from_catalog(&typname, &typtype, typmod),
                base_oid: r.get(2),
                base_display: r.get(6),
                base_name: r.get(7),
            }
        })
        .collect();
    let pk = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[&oid],
        )
        .await
        .map_err(fail)?;
    let primary_key = pk
        .iter()
        .filter_map(|r| {
            let name: String = r.get(0);
            columns.iter().position(|c| c.name == name)
        })
        .collect();
    let unique = client
        .query(
            "SELECT ARRAY(SELECT a.attname::text \
                          FROM unnest(i.indkey::int2[]) AS k(attnum) \
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum), \
                    i.indexprs IS NOT NULL OR i.indpred IS NOT NULL \
             FROM pg_index i \
             WHERE i.indrelid = $1 AND i.indisunique AND NOT i.indisprimary",
            &[&oid],
        )
        .await
        .map_err(fail)?;
    let unique_keys = unique
        .iter()
        .map(|r| {
            let names: Vec<String> = r.get(0);
            let whole: bool = r.get(1);
            if whole {
                return (0..columns.len()).collect();
            }
            names
                .iter()
                .filter_map(|name| columns.iter().position(|c| &c.name == name))
                .collect()
        })
        .collect();
    Ok(Some(TargetTable {
        id: table.clone(),
        columns,
        primary_key,
        referenced,
        unique_keys,
    }))
}

/// Aborts the connection task when the sink is dropped.
#[derive(Debug)]
pub(crate) struct ConnectionTask(pub(crate) JoinHandle<()>);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens a connection and sets up the session: UTC, standard-conforming
/// strings. `synchronous_commit` is left at the server's setting.
pub(crate) async fn open(
    config: &PgSinkConfig,
) -> Result<(Client, ConnectionTask), ConnectorError> {
    let store = &config.store;
    let pg = pg_config(store, &config.url, config.password.as_deref(), &config.tls)?;
    let connected = crate::tls::connect(store, &pg, &config.tls, "connect").await?;
    let (client, task) = (connected.client, ConnectionTask(connected.task));
    client
        .batch_execute(&format!(
            "SET TIME ZONE 'UTC'; SET standard_conforming_strings = on; SET lock_timeout = '{}s'",
            callosum_api::TARGET_LOCK_TIMEOUT_SECONDS
        ))
        .await
        .map_err(|e| from_sql_without_values(store, "set up the session", e))?;
    Ok((client, task))
}

/// `"schema"."table"`.
pub(crate) fn push_table(out: &mut String, table: &TableId) {
    out.push_str(&quote_ident(&table.namespace));
    out.push('.');
    out.push_str(&quote_ident(&table.name));
}

/// The checkpoint table's id.
pub(crate) fn checkpoint_table() -> TableId {
    TableId::new(CHECKPOINT_SCHEMA, CHECKPOINT_TABLE)
}

/// The DDL of the checkpoint table.
pub(crate) fn checkpoint_ddl() -> String {
    let mut ddl = String::from("CREATE TABLE IF NOT EXISTS ");
    push_table(&mut ddl, &checkpoint_table());
    ddl.push_str(
        " (pipeline text PRIMARY KEY, source_position text NOT NULL, \
         applied_at timestamptz NOT NULL, transactions bigint NOT NULL DEFAULT 0, \
         epoch bigint NOT NULL DEFAULT 0)",
    );
    ddl
}

/// Adds the lease `epoch` column to a checkpoint table created before it
/// existed (under the same advisory lock as the table's creation).
fn add_epoch_column_sql() -> String {
    let mut sql =
        format!("BEGIN; SELECT pg_advisory_xact_lock({CHECKPOINT_DDL_LOCK}); ALTER TABLE ");
    push_table(&mut sql, &checkpoint_table());
    sql.push_str(" ADD COLUMN IF NOT EXISTS epoch bigint NOT NULL DEFAULT 0; COMMIT");
    sql
}

/// Creates the checkpoint and dead-letter tables when missing (an older
/// agent created the checkpoint table without the dead-letter table) and
/// adds the checkpoint table's `epoch` column when the table predates it.
/// Each runs only when needed: a role may lack `CREATE` on the schema when
/// an administrator created the tables, and the `ALTER` takes an exclusive
/// lock on the table.
async fn ensure_checkpoint_columns(client: &Client, store: &str) -> Result<(), ConnectorError> {
    let row = client
        .query_one(
            "SELECT to_regclass('public.callosum_checkpoint') IS NOT NULL \
             AND to_regclass('public.callosum_dead_letter') IS NOT NULL, \
             to_regclass('public.callosum_checkpoint') IS NULL OR EXISTS (SELECT 1 FROM pg_attribute \
             WHERE attrelid = to_regclass('public.callosum_checkpoint') AND attname = 'epoch' AND NOT attisdropped)",
            &[],
        )
        .await
        .map_err(|e| from_sql_without_values(store, "read the checkpoint table's columns", e))?;
    let (tables_exist, has_epoch): (bool, bool) = (row.get(0), row.get(1));
    if !tables_exist {
        client
            .batch_execute(&create_checkpoint_sql())
            .await
            .map_err(|e| from_sql_without_values(store, "create the checkpoint table", e))?;
        info!(store = %store, table = %checkpoint_table(), "created checkpoint table");
    }
    if !has_epoch {
        client
            .batch_execute(&add_epoch_column_sql())
            .await
            .map_err(|e| {
                from_sql_without_values(store, "add the epoch column to the checkpoint table", e)
                    .with_hint(format!(
                        "as the table's owner run ALTER TABLE {CHECKPOINT_SCHEMA}.{CHECKPOINT_TABLE} ADD COLUMN epoch bigint NOT NULL DEFAULT 0"
                    ))
            })?;
        info!(store = %store, "added the epoch column to the checkpoint table");
    }
    Ok(())
}

/// [`checkpoint_ddl`] made safe to run from several sessions at once: two
/// concurrent `CREATE TABLE IF NOT EXISTS` of one table race on the catalog
/// (one fails with a unique violation on `pg_type`), so creators take a
/// transaction-scoped advisory lock first.
/// The dead-letter table ([`dead_letter_ddl`]) is created with it.
fn create_checkpoint_sql() -> String {
    format!(
        "BEGIN; SELECT pg_advisory_xact_lock({CHECKPOINT_DDL_LOCK}); {}; {}; COMMIT",
        checkpoint_ddl(),
        dead_letter_ddl()
    )
}

/// Advisory lock key serialising the creation of the checkpoint table
/// (`callosum` in ASCII).
const CHECKPOINT_DDL_LOCK: i64 = 0x63616c6c6f73756d;

/// Creates `public.callosum_checkpoint` (and `public.callosum_dead_letter`)
/// in the sink's store if it is missing. The agent calls it before a PostgreSQL source of the same store
/// connects, so that the source's publication includes the table and
/// Callosum's own writes are recognised from the first transaction (echo
/// suppression).
pub async fn ensure_checkpoint_table(config: &PgSinkConfig) -> Result<(), ConnectorError> {
    let (client, _task) = open(config).await?;
    ensure_checkpoint_columns(&client, &config.store).await
}

/// A target table with the sink's per-connection state for it.
#[derive(Debug)]
struct Target {
    table: TargetTable,
    /// The temporary staging table (`pg_temp."callosum_stage_N"`), when the
    /// user may create temporary tables.
    stage: Option<String>,
    /// The staging table holds rows merged earlier in the open transaction
    /// (it is emptied at commit and rollback by `ON COMMIT DELETE ROWS`).
    stage_used: bool,
    /// After the target table changed: the `CREATE TEMP TABLE IF NOT
    /// EXISTS` of its new staging table, run before its first use in each
    /// transaction (a rolled-back transaction takes the table with it).
    stage_ddl: Option<String>,
}

/// `CREATE TEMP TABLE IF NOT EXISTS` of a staging table for `table`.
fn stage_ddl(name: &str, table: &TargetTable) -> String {
    let columns: Vec<String> = table
        .columns
        .iter()
        .map(|c| {
            let ty = if c.via_text() {
                "text"
            } else {
                &c.base_display
            };
            format!("{} {ty}", quote_ident(&c.name))
        })
        .collect();
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS {name} ({}) ON COMMIT DELETE ROWS",
        columns.join(", ")
    )
}

/// The target's columns are the ones `old` describes (names and types, in
/// order) and so is its primary key.
fn same_columns(old: &TargetTable, new: &TargetTable) -> bool {
    old.primary_key == new.primary_key
        && old.columns.len() == new.columns.len()
        && old.columns.iter().zip(&new.columns).all(|(a, b)| {
            a.name == b.name && a.display == b.display && a.base_display == b.base_display
        })
}

/// The connection and what is cached on it.
struct Conn {
    client: Client,
    store: String,
    statements: HashMap<String, Statement>,
    /// Encoded parameters (or COPY data) of the statement being built.
    arena: BytesMut,
    /// The SQLSTATE and message of the last failed statement, to tell which
    /// column a type refused ([`Ctx::name_text_columns`]). It may hold a
    /// value: never logged or put into an error.
    last_db_error: Option<(String, String)>,
}

impl Conn {
    async fn statement(&mut self, sql: &str) -> Result<Statement, ConnectorError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        if self.statements.len() >= 512 {
            self.statements.clear();
        }
        let statement = self
            .client
            .prepare(sql)
            .await
            .map_err(|e| from_sql_without_values(&self.store, "prepare a statement", e))?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    /// Executes `sql` (prepared once, cached) with parameters given as
    /// ranges of the arena.
    async fn execute(
        &mut self,
        sql: &str,
        params: &[Option<Range<usize>>],
        cache: bool,
        doing: &str,
    ) -> Result<u64, ConnectorError> {
        let arena = std::mem::take(&mut self.arena);
        let result = if cache {
            match self.statement(sql).await {
                Ok(statement) => {
                    let raw = params.iter().map(|p| Raw(p.clone().map(|r| &arena[r])));
                    self.client.execute_raw(&statement, raw).await
                }
                Err(err) => {
                    self.arena = arena;
                    return Err(err);
                }
            }
        } else {
            let raw = params.iter().map(|p| Raw(p.clone().map(|r| &arena[r])));
            self.client.execute_raw(sql, raw).await
        };
        self.arena = arena;
        result.map_err(|e| {
            self.last_db_error = e
                .as_db_error()
                .map(|db| (db.code().code().to_string(), db.message().to_string()));
            from_sql_without_values(&self.store, doing, e)
        })
    }

    async fn simple(&self, sql: &str, doing: &str) -> Result<(), ConnectorError> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| from_sql_without_values(&self.store, doing, e))
    }
}

/// A sink that applies whole source transactions to PostgreSQL tables
/// exactly once.
///
/// Guarantees (beyond [`Sink`]'s):
/// - the checkpoint lives in `public.callosum_checkpoint` (created on
///   connect when missing), whatever the target tables' schemas: the
///   PostgreSQL source recognises Callosum's own transactions by a write to
///   a table of that name and adds `public.callosum_checkpoint` to its
///   publication, so the same store can be captured without echo;
/// - [`Sink::begin`] sends `BEGIN` and the checkpoint upsert in one round
///   trip: the checkpoint row is the first row change of every target
///   transaction;
/// - the session runs with `TimeZone = UTC` and, where the role may set it,
///   `session_replication_role = replica`, as PostgreSQL's own logical
///   replication workers do: foreign keys are not checked and ordinary
///   triggers do not fire (the source already enforced both; batches apply
///   as their net effect). Without the privilege both stay on;
/// - values are converted to each target column's type as the catalog
///   describes it (domains as their base type) and sent in binary; a value
///   the column cannot hold is a `Conversion` error naming store, table,
///   column, target type and source type, never the value. Server errors
///   that could quote a value are reduced to their SQLSTATE;
/// - an update's [`Value::Unchanged`] columns are left out of the statement;
/// - a truncate is a transactional `TRUNCATE` (`DELETE` when another table's
///   foreign key references the table);
/// - after any error inside a transaction the sink rolls it back; after a
///   `Connection` error the caller reconnects with [`PgSink::connect`].
pub struct PgSink {
    config: PgSinkConfig,
    conn: Conn,
    _task: ConnectionTask,
    /// Target per source table.
    targets: HashMap<TableId, Target>,
    /// Column maps per source schema (a batch may span an `ALTER TABLE`).
    maps: ColumnMaps,
    /// Staging tables created after a target table changed.
    stage_generation: u32,
    strategy: UpsertStrategy,
    in_transaction: bool,
}

impl fmt::Debug for PgSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSink")
            .field("config", &self.config)
            .field("strategy", &self.strategy)
            .field("in_transaction", &self.in_transaction)
            .finish_non_exhaustive()
    }
}

impl PgSink {
    /// Connects, sets up the session, creates `public.callosum_checkpoint`
    /// and `public.callosum_dead_letter` if they are missing, reads every target table's columns and primary key
    /// and creates a temporary staging table per target table (when the
    /// role has the `TEMPORARY` privilege). Fails with `Schema` naming store
    /// and table when a target table is missing or has no primary key.
    pub async fn connect(config: PgSinkConfig) -> Result<PgSink, ConnectorError> {
        let (client, task) = open(&config).await?;
        let store = config.store.clone();
        let conn = Conn {
            client,
            store: store.clone(),
            statements: HashMap::new(),
            arena: BytesMut::with_capacity(64 * 1024),
            last_db_error: None,
        };
        match conn
            .client
            .batch_execute("SET session_replication_role = replica")
            .await
        {
            Ok(()) => {
                debug!(store = %store, "foreign-key checks and triggers off for the sink session")
            }
            Err(err) => info!(
                store = %store,
                error = %err,
                "cannot set session_replication_role: foreign keys stay checked in the target"
            ),
        }
        ensure_checkpoint_columns(&conn.client, &store).await?;
        if let Some(timeout) = config.fence.idle_transaction_timeout {
            // a paused former leader's open transaction must not hold the
            // checkpoint row (and the new leader's fence) until it wakes up
            conn.simple(
                &format!(
                    "SET idle_in_transaction_session_timeout = {}",
                    timeout.as_millis().max(1)
                ),
                "set idle_in_transaction_session_timeout",
            )
            .await?;
        }
        let may_stage: bool = conn
            .client
            .query_one(
                "SELECT has_database_privilege(current_database(), 'TEMPORARY')",
                &[],
            )
            .await
            .map_err(|e| from_sql_without_values(&store, "check the TEMPORARY privilege", e))?
            .get(0);
        if !may_stage {
            warn!(store = %store, "the role may not create temporary tables: large batches use the slower unnest path");
        }
        let mut targets = HashMap::new();
        for (i, (source, target)) in config.tables.iter().enumerate() {
            let Some(table) = read_table(&conn.client, &store, target).await? else {
                return Err(ConnectorError::new(
                    ErrorKind::Schema,
                    format!("postgres store `{store}`: target table `{target}` does not exist"),
                )
                .with_hint(format!(
                    "create `{target}` with the columns and key of `{source}`"
                )));
            };
            if table.primary_key.is_empty() {
                return Err(ConnectorError::new(
                    ErrorKind::Schema,
                    format!("postgres store `{store}`: target table `{target}` has no primary key"),
                )
                .with_hint(format!(
                    "add a primary key to `{target}` matching the key of `{source}`"
                )));
            }
            let stage = if may_stage {
                let name = format!("pg_temp.{}", quote_ident(&format!("callosum_stage_{i}")));
                conn.simple(
                    &stage_ddl(&name, &table),
                    &format!("create the staging table for `{target}`"),
                )
                .await?;
                Some(name)
            } else {
                None
            };
            targets.insert(
                source.clone(),
                Target {
                    table,
                    stage,
                    stage_used: false,
                    stage_ddl: None,
                },
            );
        }
        info!(store = %store, pipeline = %config.pipeline, tables = targets.len(), "connected to target");
        Ok(PgSink {
            config,
            conn,
            _task: task,
            targets,
            maps: ColumnMaps::default(),
            stage_generation: 0,
            strategy: UpsertStrategy::Auto,
            in_transaction: false,
        })
    }

    /// Chooses how upserts are sent (for measurements; the default
    /// [`UpsertStrategy::Auto`] is the fastest measured). `Copy` falls back
    /// to `Unnest` when the role may not create temporary tables.
    pub fn set_upsert_strategy(&mut self, strategy: UpsertStrategy) {
        self.strategy = strategy;
    }

    /// Best-effort rollback after a failure inside a transaction.
    async fn abort(&mut self) {
        if self.in_transaction {
            self.in_transaction = false;
            if let Err(err) = self.conn.client.batch_execute("ROLLBACK").await {
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

    /// Reads `source`'s target table from the catalog again; when its
    /// columns changed, forgets the table's column maps, moves its staging
    /// table to one with the new columns and returns `true`.
    async fn reread_target(&mut self, source: &TableId) -> Result<bool, ConnectorError> {
        let store = &self.config.store;
        let Some(target) = self.targets.get_mut(source) else {
            return Ok(false); // build_map names the unconfigured table
        };
        let id = target.table.id.clone();
        let Some(table) = read_table(&self.conn.client, store, &id).await? else {
            return Err(ConnectorError::new(
                ErrorKind::Schema,
                format!("postgres store `{store}`: target table `{id}` does not exist"),
            )
            .with_hint(format!(
                "create `{id}` with the columns and key of `{source}`"
            )));
        };
        if table.primary_key.is_empty() {
            return Err(ConnectorError::new(
                ErrorKind::Schema,
                format!("postgres store `{store}`: target table `{id}` has no primary key"),
            )
            .with_hint(format!(
                "add a primary key to `{id}` matching the key of `{source}`"
            )));
        }
        if same_columns(&target.table, &table) {
            target.table = table;
            return Ok(false);
        }
        info!(store = %store, pipeline = %self.config.pipeline, table = %id, "target table changed: columns read again");
        if target.stage.is_some() {
            self.stage_generation += 1;
            let name = format!(
                "pg_temp.{}",
                quote_ident(&format!("callosum_stage_v{}", self.stage_generation))
            );
            target.stage_ddl = Some(stage_ddl(&name, &table));
            target.stage = Some(name);
            target.stage_used = false;
        }
        target.table = table;
        self.maps.forget(source);
        Ok(true)
    }

    /// A column map of `schema` onto its target table as last read.
    fn build_map(&self, schema: &Arc<TableSchema>) -> Result<ColumnMap, ConnectorError> {
        let source = &schema.table;
        let store = &self.config.store;
        let table = &self
            .targets
            .get(source)
            .ok_or_else(|| {
                ConnectorError::new(
                    ErrorKind::Schema,
                    format!(
                        "postgres store `{store}`: table `{source}` is not configured for pipeline `{}`",
                        self.config.pipeline
                    ),
                )
            })?
            .table;
        let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        ColumnMap::new(schema, &names, &table.primary_key, &table.unique_keys).map_err(|m| match m {
            Mismatch::MissingColumn(s) => {
                let column = &schema.columns[s].name;
                ConnectorError::new(
                    ErrorKind::Schema,
                    format!(
                        "postgres store `{store}`: column `{column}` of source table `{source}` is missing in target table `{}`",
                        table.id
                    ),
                )
                .with_hint(format!("add column `{column}` to `{}`", table.id))
            }
            Mismatch::KeyNotUnique(k) => {
                let key: Vec<String> = schema
                    .key_indexes()
                    .iter()
                    .map(|&i| format!("`{}`", schema.columns[i].name))
                    .collect();
                let key = key.join(", ");
                ConnectorError::new(
                    ErrorKind::Schema,
                    format!(
                        "postgres store `{store}`: the key of source table `{source}` ({key}) is neither \
                         the primary key of target table `{}` (primary key column `{}` is not a key \
                         column of the source) nor a unique key of it",
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
        let targets = &self.targets;
        let steps = plan_with(events, |schema| match targets.get(&schema.table) {
            Some(target) => unique_key_positions(schema, &target.table.unique_keys, |t| {
                &target.table.columns[t].name
            }),
            None => Vec::new(),
        });
        let strategy = self.strategy;
        for step in &steps {
            // each step by the schema its rows were written under
            self.map_for(step.schema()).await?;
            let source = step.table();
            let target = self.targets.get_mut(source).expect("mapped above");
            let map = self.maps.get(step.schema()).expect("mapped above");
            let ctx = Ctx {
                store: &self.config.store,
                table: &target.table,
                map,
            };
            self.conn.last_db_error = None;
            let conn = &mut self.conn;
            let result = async {
                match step {
                    Step::Truncate { .. } => {
                        let mut sql = String::from(if target.table.referenced {
                            "DELETE FROM "
                        } else {
                            "TRUNCATE "
                        });
                        push_table(&mut sql, &target.table.id);
                        conn.simple(&sql, &format!("truncate `{}`", target.table.id))
                            .await?;
                    }
                    Step::Delete { keys, .. } => {
                        for chunk in keys.chunks(MAX_ARRAY_ROWS) {
                            delete_keys(conn, &ctx, chunk).await?;
                        }
                    }
                    Step::Upsert { present, rows, .. } => {
                        let rows: Vec<&[Value]> = rows.iter().map(|r| r.as_ref()).collect();
                        let chosen = match strategy {
                            UpsertStrategy::Auto if rows.len() < COPY_THRESHOLD => {
                                UpsertStrategy::Unnest
                            }
                            UpsertStrategy::Auto | UpsertStrategy::Copy => {
                                if target.stage.is_some() {
                                    UpsertStrategy::Copy
                                } else {
                                    UpsertStrategy::Unnest
                                }
                            }
                            other => other,
                        };
                        match chosen {
                            UpsertStrategy::Values => {
                                upsert_values(conn, &ctx, present, &rows).await?
                            }
                            UpsertStrategy::Copy => {
                                let stage =
                                    target.stage.as_deref().expect("chosen only with a stage");
                                if let (Some(ddl), false) = (&target.stage_ddl, target.stage_used) {
                                    conn.simple(ddl, "create the staging table").await?;
                                }
                                for chunk in rows.chunks(MAX_ARRAY_ROWS) {
                                    upsert_copy(
                                        conn,
                                        &ctx,
                                        stage,
                                        target.stage_used,
                                        present,
                                        chunk,
                                    )
                                    .await?;
                                    target.stage_used = true;
                                }
                            }
                            _ => {
                                for chunk in rows.chunks(MAX_ARRAY_ROWS) {
                                    upsert_unnest(conn, &ctx, present, chunk).await?;
                                }
                            }
                        }
                    }
                    Step::UpdateKey { old_key, row, .. } => {
                        update_key(conn, &ctx, old_key, row).await?;
                    }
                }
                Ok::<(), ConnectorError>(())
            }
            .await;
            if let Err(err) = result {
                return Err(match self.conn.last_db_error.take() {
                    Some((code, message)) => ctx.name_refusing_columns(err, &code, &message),
                    None => err,
                });
            }
        }
        Ok(())
    }
}

/// The error of a checkpoint write refused because the row carries a newer
/// lease epoch than `epoch`.
fn fenced(store: &str, pipeline: &str, epoch: i64) -> ConnectorError {
    ConnectorError::new(
        ErrorKind::Fenced,
        format!(
            "postgres store `{store}`: the checkpoint of pipeline `{pipeline}` carries a newer lease epoch than this agent's ({epoch}): another agent took over"
        ),
    )
    .with_hint("this agent steps down; check that every agent of this config has the same [lease] section")
}

impl PgSink {
    /// Fences the checkpoint rows `keys` (a pipeline's and its replay's):
    /// stores this sink's epoch in each, creating a row without a position
    /// where there is none yet, unless a row already carries a newer epoch
    /// (`Fenced`). Waits for a transaction of a former leader that holds a
    /// row to end; after it, that leader's checkpoint writes fail.
    pub async fn fence(&mut self, keys: &[String]) -> Result<(), ConnectorError> {
        let epoch = self.config.fence.epoch;
        let mut sql = String::from("INSERT INTO ");
        push_table(&mut sql, &checkpoint_table());
        sql.push_str(
            " AS c (pipeline, source_position, applied_at, transactions, epoch) \
             SELECT k, '', now(), 0, $2 FROM unnest($1::text[]) AS k \
             ON CONFLICT (pipeline) DO UPDATE SET epoch = EXCLUDED.epoch WHERE c.epoch <= EXCLUDED.epoch",
        );
        let store = &self.config.store;
        self.conn
            .client
            .execute(&sql, &[&keys, &epoch])
            .await
            .map_err(|e| from_sql_without_values(store, "fence the checkpoint rows", e))?;
        let mut check = String::from("SELECT pipeline, epoch FROM ");
        push_table(&mut check, &checkpoint_table());
        check.push_str(" WHERE pipeline = ANY($1) AND epoch > $2");
        let newer = self
            .conn
            .client
            .query(&check, &[&keys, &epoch])
            .await
            .map_err(|e| from_sql_without_values(store, "read the fenced checkpoint rows", e))?;
        match newer.first() {
            None => Ok(()),
            Some(row) => {
                let pipeline: String = row.get(0);
                Err(fenced(store, &pipeline, epoch))
            }
        }
    }
}

impl Sink for PgSink {
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
        let mut sql = String::from("SELECT source_position FROM ");
        push_table(&mut sql, &checkpoint_table());
        // a row fenced before its pipeline's first commit has no position
        sql.push_str(" WHERE pipeline = $1 AND source_position <> ''");
        let store = &self.config.store;
        let row = self
            .conn
            .client
            .query_opt(&sql, &[&self.config.pipeline])
            .await
            .map_err(|e| from_sql_without_values(store, "read the checkpoint", e))?;
        row.map(|r| {
            let text: String = r.get(0);
            text.parse::<Position>().map_err(|e| {
                ConnectorError::new(
                    ErrorKind::Protocol,
                    format!(
                        "postgres store `{store}`: the checkpoint of pipeline `{}` is not a position: {e}",
                        self.config.pipeline
                    ),
                )
                .with_hint(format!("fix or delete the row in {CHECKPOINT_SCHEMA}.{CHECKPOINT_TABLE}"))
            })
        })
        .transpose()
    }

    async fn begin(&mut self, checkpoint: &Position) -> Result<(), ConnectorError> {
        if self.in_transaction {
            self.abort().await;
        }
        for target in self.targets.values_mut() {
            target.stage_used = false;
        }
        let epoch = self.config.fence.epoch;
        let mut sql = String::from("BEGIN; INSERT INTO ");
        push_table(&mut sql, &checkpoint_table());
        sql.push_str(" AS c (pipeline, source_position, applied_at, transactions, epoch) VALUES (");
        sql.push_str(&quote_literal(&self.config.pipeline));
        sql.push(',');
        sql.push_str(&quote_literal(&checkpoint.to_string()));
        sql.push_str(&format!(
            ", now(), 1, {epoch}) ON CONFLICT (pipeline) DO UPDATE SET \
             source_position = EXCLUDED.source_position, applied_at = EXCLUDED.applied_at, \
             transactions = c.transactions + 1, epoch = EXCLUDED.epoch \
             WHERE c.epoch <= EXCLUDED.epoch"
        ));
        self.in_transaction = true;
        let result =
            self.conn.client.simple_query(&sql).await.map_err(|e| {
                from_sql_without_values(&self.config.store, "write the checkpoint", e)
            });
        let result = result.and_then(|messages| {
            // BEGIN, then the upsert: 0 rows when a newer epoch holds the row
            let written = messages
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::CommandComplete(rows) => Some(*rows),
                    _ => None,
                })
                .nth(1);
            if written == Some(1) {
                Ok(())
            } else {
                Err(fenced(&self.config.store, &self.config.pipeline, epoch))
            }
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
        if !self.in_transaction {
            return Err(ConnectorError::new(
                ErrorKind::Protocol,
                format!(
                    "commit called without an open transaction for pipeline `{}` (it was rolled back)",
                    self.config.pipeline
                ),
            ));
        }
        self.in_transaction = false;
        self.conn.simple("COMMIT", "commit").await
    }

    async fn rollback(&mut self) -> Result<(), ConnectorError> {
        self.in_transaction = false;
        self.conn.simple("ROLLBACK", "roll back").await
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
    use callosum_api::ColumnSchema;

    fn column(name: &str, ty: PgType, display: &str, base: &str) -> TargetColumn {
        TargetColumn {
            name: name.into(),
            display: display.into(),
            ty,
            base_display: display.into(),
            base_name: base.into(),
            base_oid: 0,
        }
    }

    fn parts() -> (TargetTable, ColumnMap) {
        let table = TargetTable {
            id: TableId::new("erp", "order lines"),
            columns: vec![
                column("id", PgType::Int8, "bigint", "bigint"),
                column(
                    "status",
                    PgType::Varchar { max_chars: Some(4) },
                    "character varying(4)",
                    "character varying",
                ),
                column("note", PgType::Text, "text", "text"),
            ],
            primary_key: vec![0],
            referenced: false,
            unique_keys: Vec::new(),
        };
        let col = |name: &str, t: &str, is_key| ColumnSchema {
            name: name.into(),
            source_type: t.into(),
            is_key,
        };
        let map = ColumnMap {
            schema: Arc::new(TableSchema {
                table: TableId::new("public", "orders"),
                columns: vec![
                    col("id", "int8", true),
                    col("note", "text", false),
                    col("status", "varchar", false),
                ],
            }),
            target: vec![0, 2, 1],
            key_targets: vec![0],
            key_sources: vec![0],
        };
        (table, map)
    }

    #[test]
    fn builds_upsert_clauses() {
        let (table, map) = parts();
        let ctx = Ctx {
            store: "crm",
            table: &table,
            map: &map,
        };
        assert_eq!(
            ctx.insert_head(&[0, 1, 2]),
            r#"INSERT INTO "erp"."order lines" ("id","note","status")"#
        );
        assert_eq!(
            ctx.on_conflict(&[0, 2]),
            r#" ON CONFLICT ("id") DO UPDATE SET "status"=EXCLUDED."status""#
        );
        assert_eq!(ctx.on_conflict(&[0]), r#" ON CONFLICT ("id") DO NOTHING"#);
        assert_eq!(
            ctx.array_params(&[0, 2], 1),
            "$1::bigint[],$2::character varying[]"
        );
    }

    #[test]
    fn conversion_errors_name_the_column_but_not_the_value() {
        let (table, map) = parts();
        let ctx = Ctx {
            store: "crm",
            table: &table,
            map: &map,
        };
        let mut out = BytesMut::new();
        let err = ctx
            .encode(2, &Value::Text("secret-too-long".into()), &mut out)
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conversion);
        let text = err.to_string();
        for expected in [
            "`status`",
            "erp.order lines",
            "character varying(4)",
            "type varchar",
            "store `crm`",
            "public.orders",
        ] {
            assert!(text.contains(expected), "{expected}: {text}");
        }
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn arrays_are_binary_with_null_flag() {
        let (table, map) = parts();
        let ctx = Ctx {
            store: "crm",
            table: &table,
            map: &map,
        };
        let rows = [
            vec![Value::Int(1), Value::Null, Value::Null],
            vec![Value::Null, Value::Null, Value::Null],
        ];
        let mut out = BytesMut::new();
        ctx.encode_array(0, rows.iter().map(|r| r.as_slice()), &mut out)
            .unwrap();
        let mut expected = Vec::new();
        for v in [1i32, 1, 0, 2, 1, 8] {
            expected.extend_from_slice(&v.to_be_bytes());
        }
        expected.extend_from_slice(&1i64.to_be_bytes());
        expected.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(out.to_vec(), expected);
    }

    #[test]
    fn config_debug_hides_secrets() {
        let config = PgSinkConfig {
            tls: Default::default(),
            store: "crm".into(),
            url: "postgres://u:pw@h/db".into(),
            password: Some("secret".into()),
            pipeline: "p".into(),
            tables: vec![],
            fence: Default::default(),
        };
        let text = format!("{config:?}");
        assert!(!text.contains("pw"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}

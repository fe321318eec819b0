//! [`MySqlSource`]: a [`Source`] that streams a MariaDB/MySQL server's
//! committed transactions from its row-based binlog.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use callosum_api::{
    ColumnSchema, ConnectorError, EchoOrigins, ErrorKind, Position, Source, SourceMessage, TableId,
    TableSchema, TlsSettings,
};
use futures_util::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts, OptsBuilder, Row};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tracing::{debug, info, Instrument};

use crate::binlog_event::convert;
use crate::binlog_stream::{PositionKind, Refinement, StreamState};
use crate::error::classify;
use crate::row_value::ZeroDates;
use crate::sink::redact_url;

/// How often an idle server sends a heartbeat (`MASTER_HEARTBEAT_PERIOD`).
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(1);

/// With no event nor heartbeat for this long, the connection is presumed
/// dead (a transient [`ErrorKind::Connection`] error).
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Configuration of one captured MariaDB/MySQL store.
#[derive(Clone, PartialEq, Eq)]
pub struct MySqlSourceConfig {
    /// The store's config name, for errors and logs.
    pub store: String,
    /// `mysql://user[:password]@host[:port]/database`. Never logged.
    pub url: String,
    /// Overrides the url's password. Never logged.
    pub password: Option<String>,
    /// The replica id the binlog connection registers with; unique among
    /// the server's replicas and Callosum sources (a second connection with
    /// the same id makes the server drop the first).
    pub server_id: u32,
    /// The captured tables (`database.table`).
    pub tables: Vec<TableId>,
    /// What a zero date (`0000-00-00`, a zero month or day) decodes to: a
    /// conversion error (the default) or `Null` (outside the primary key).
    pub zero_dates: ZeroDates,
    /// The zone of the store's `DATETIME` local times (`time_zone`);
    /// `None` is UTC.
    pub time_zone: Option<chrono_tz::Tz>,
    /// Callosum's own writes to this store that are kept, tagged with their
    /// origin store, instead of dropped as echo (a store feeding several
    /// pipelines); empty: every Callosum write is dropped.
    pub echo_origins: EchoOrigins,
    /// `tls` and `tls_ca_file` of the store (binlog and catalog connections).
    pub tls: TlsSettings,
    /// When set, the `net_write_timeout` of the binlog dump session: the
    /// server ends a dump whose reader has not taken its events for this
    /// long. With `[lease]` (the lease's duration): a paused former
    /// leader's dump, blocked on a full socket, would otherwise hold the
    /// `server_id` (and keep the new leader's dump waiting) for the
    /// server's default 60 s.
    pub dump_write_timeout: Option<Duration>,
}

impl fmt::Debug for MySqlSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlSourceConfig")
            .field("store", &self.store)
            .field("url", &redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("server_id", &self.server_id)
            .field("tables", &self.tables)
            .field("zero_dates", &self.zero_dates)
            .field("time_zone", &self.time_zone)
            .field("echo_origins", &self.echo_origins)
            .field("dump_write_timeout", &self.dump_write_timeout)
            .finish()
    }
}

/// Opens a SQL connection to the store of `config` (encrypted as its `tls`
/// says) for the agent's own queries.
pub async fn connect_sql(config: &MySqlSourceConfig) -> Result<Conn, ConnectorError> {
    open_sql(
        &config.store,
        &config.url,
        config.password.as_deref(),
        &config.tls,
    )
    .await
}

/// Opens a SQL connection to the store, encrypted as `tls` says.
pub(crate) async fn open_sql(
    store: &str,
    url: &str,
    password: Option<&str>,
    tls: &TlsSettings,
) -> Result<Conn, ConnectorError> {
    let opts = Opts::from_url(url).map_err(|_| {
        ConnectorError::new(
            ErrorKind::Config,
            format!("the url of store `{store}` is not a valid mysql url"),
        )
        .with_hint("expected mysql://user@host:port/database")
    })?;
    let mut builder = OptsBuilder::from_opts(opts).ssl_opts(crate::tls::ssl_opts(tls));
    if let Some(password) = password {
        builder = builder.pass(Some(password.to_string()));
    }
    Conn::new(builder).await.map_err(|e| {
        crate::tls::tls_failure(&e, store).unwrap_or_else(|| source_error(e, store, "connecting"))
    })
}

/// [`classify`], plus what only a binlog reader meets: error 1236 (the
/// server cannot send from the requested position) and the source's own
/// privilege hint.
pub(crate) fn source_error(err: mysql_async::Error, store: &str, doing: &str) -> ConnectorError {
    if let mysql_async::Error::Server(server) = &err {
        if server.code == 1236 {
            let message = server.message.to_ascii_lowercase();
            let lost = [
                "could not find",
                "purged",
                "not in the master's binlog",
                "position > file size",
            ]
            .iter()
            .any(|m| message.contains(m));
            if lost {
                return ConnectorError::new(
                    ErrorKind::PositionLost,
                    format!(
                        "{doing} in store `{store}` failed: the binlog position to resume from is \
                         gone from the server (error 1236: {})",
                        server.message
                    ),
                )
                .with_hint(
                    "changes since then are lost to Callosum: re-snapshot the captured tables \
                     and reset this store's change log; keep binlogs longer \
                     (binlog_expire_logs_seconds) so that it does not happen again",
                );
            }
            return ConnectorError::new(
                ErrorKind::Protocol,
                format!(
                    "{doing} in store `{store}` failed: the server stopped the binlog stream \
                     (error 1236: {})",
                    server.message
                ),
            );
        }
    }
    let mut e = classify(err, store, doing);
    if e.kind == ErrorKind::Permission {
        e.hint = Some(
            "grant the user REPLICATION SLAVE and REPLICATION CLIENT (BINLOG MONITOR on \
             MariaDB 10.5+) ON *.* and SELECT on the captured tables (see `callosum check`)"
                .into(),
        );
    }
    e
}

/// A MariaDB/MySQL binlog source.
///
/// Guarantees, in addition to those of [`Source`]:
/// - transactions come whole and in commit (binlog) order: `Begin` when
///   the transaction's first event arrives, its changes as their row events
///   arrive, then `Commit` or `Discard`. The source never buffers a
///   transaction, so a 1,000,000-row transaction does not need 1,000,000
///   rows of memory; after `Discard` the consumer drops what it got since
///   `Begin`. Transactions that touch a table named
///   [`callosum_api::CHECKPOINT_TABLE`] (in any database: Callosum's own
///   writes), that change no captured table (including DDL and other
///   databases' transactions), or that are at or before `resume_from` end
///   with `Discard`;
/// - positions: on MariaDB, `MariaGtid` positions (`position` =
///   `resume_position` = the transaction's GTID; resuming from it with
///   `@slave_connect_state` streams the next transaction); on MySQL, on
///   MariaDB resumed from a file position, or when the binlog holds GTIDs of
///   several domains, `Binlog` positions (`position` = `resume_position` =
///   the binlog file and the offset just past the transaction's `XID` or
///   `COMMIT` event). Either is strictly increasing in commit order;
/// - XA transactions: the changes of a prepared XA group are held in memory
///   until `XA COMMIT` of its XID, which yields them as one transaction at
///   the commit's position; `XA ROLLBACK` drops them, and the prepared group
///   itself ends with `Discard`. While one is prepared, `resume_position`,
///   `Discard` and `Progress` positions stay at the resume position before
///   its prepare (a restart reads it again); transactions at or below
///   [`MySqlSource::connect_after`]'s `logged_through` end with `Discard`.
///   An `XA COMMIT` whose prepare was before the stream's start fails with
///   [`ErrorKind::PositionLost`] naming the XID;
/// - `commit_time_micros` is the commit event's header timestamp (whole
///   seconds);
/// - started without `resume_from`, the first message is `Progress(the
///   server's current position)`; afterwards `Progress` is yielded between
///   transactions when the stream moves with nothing for us (heartbeats
///   after a rotation, statements outside transactions);
/// - a captured table without a primary key fails with
///   [`ErrorKind::Schema`] on its first change; a value Callosum cannot
///   represent (zero date, negative time, …) with [`ErrorKind::Conversion`]
///   naming store, table, column and type — never the value; with
///   [`ZeroDates::Null`], a zero date outside the primary key is `Null`
///   instead (even in a `NOT NULL` column, which the binlog cannot tell:
///   the target's constraint then rejects it);
/// - a resume position the server no longer has fails with
///   [`ErrorKind::PositionLost`], from [`MySqlSource::connect`]; it is never
///   skipped;
/// - [`Source::acknowledge`] tells the server nothing: a binlog reader has no
///   way to, and binlogs are kept by the server's retention settings, not
///   by replicas. It only records the position ([`MySqlSource::acknowledged`]);
/// - [`Source::next`] is cancel-safe.
///
/// After `next` returns an error, drop the source and connect again.
pub struct MySqlSource {
    config: MySqlSourceConfig,
    span: tracing::Span,
    /// The catalog connection, lent to one look-up task at a time.
    sql: Arc<Mutex<Conn>>,
    /// Catalog look-ups run as tasks of their own: a cancelled `next()`
    /// leaves the task running (instead of dropping a half-read reply on the
    /// connection, which desynchronises it) and the next call awaits it.
    refining: Option<JoinHandle<Result<Refinement, ConnectorError>>>,
    reading_schema: Option<JoinHandle<Result<Option<TableSchema>, ConnectorError>>>,
    mariadb: bool,
    stream: BinlogStream,
    state: StreamState,
    acked: Option<Position>,
}

impl fmt::Debug for MySqlSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlSource")
            .field("store", &self.config.store)
            .field("server_id", &self.config.server_id)
            .field("file", &self.state.file())
            .field("acked", &self.acked)
            .finish_non_exhaustive()
    }
}

/// Where the dump starts.
enum Start {
    Gtid(String),
    File(String, u64),
}

impl MySqlSource {
    /// Connects to the store and starts streaming from `resume_from` (a
    /// `resume_position` or `Progress` position the change log holds) or,
    /// when `None`, from the server's current position.
    ///
    /// Fails with [`ErrorKind::Schema`] naming every configured table that
    /// does not exist, with [`ErrorKind::PositionLost`] when the server no
    /// longer has `resume_from`, and with [`ErrorKind::Config`] for a
    /// position of another kind of store.
    pub async fn connect(
        config: MySqlSourceConfig,
        resume_from: Option<Position>,
    ) -> Result<MySqlSource, ConnectorError> {
        Self::connect_after(config, resume_from, None).await
    }

    /// [`Self::connect`] for a change log whose newest committed transaction
    /// is at `logged_through`: while an XA transaction is prepared, resume
    /// positions stay before its prepare, so a restart reads again
    /// transactions committed after it; those at or below `logged_through`
    /// end as `Discard` instead of entering the log twice.
    pub async fn connect_after(
        config: MySqlSourceConfig,
        resume_from: Option<Position>,
        logged_through: Option<Position>,
    ) -> Result<MySqlSource, ConnectorError> {
        let span = tracing::info_span!("mysql_source", store = %config.store);
        Self::connect_inner(config, resume_from, logged_through, span.clone())
            .instrument(span)
            .await
    }

    async fn connect_inner(
        config: MySqlSourceConfig,
        resume_from: Option<Position>,
        logged_through: Option<Position>,
        span: tracing::Span,
    ) -> Result<MySqlSource, ConnectorError> {
        let store = config.store.clone();
        let password = config.password.as_deref();
        let mut sql = open_sql(&store, &config.url, password, &config.tls).await?;
        let fail = |doing: &'static str| {
            let store = store.as_str();
            move |e| source_error(e, store, doing)
        };
        let version: String = sql
            .query_first("SELECT VERSION()")
            .await
            .map_err(fail("reading the server version"))?
            .unwrap_or_default();
        let mariadb = version.to_ascii_lowercase().contains("mariadb");

        let missing = missing_tables(&mut sql, &store, &config.tables).await?;
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|t| t.to_string()).collect();
            return Err(ConnectorError::new(
                ErrorKind::Schema,
                format!(
                    "mysql store `{store}`: configured table {} does not exist",
                    names.join(", ")
                ),
            )
            .with_hint("create the table or remove it from the pipeline's `tables`"));
        }

        let (kind, start, start_position) = match &resume_from {
            Some(Position::MariaGtid {
                domain,
                server,
                sequence,
            }) => {
                if !mariadb {
                    return Err(ConnectorError::new(
                        ErrorKind::Config,
                        format!("mysql store `{store}`: cannot resume from the MariaDB GTID {} on a MySQL server", resume_from.as_ref().map(ToString::to_string).unwrap_or_default()),
                    ));
                }
                (
                    PositionKind::Gtid,
                    Start::Gtid(format!("{domain}-{server}-{sequence}")),
                    None,
                )
            }
            Some(Position::Binlog { file, offset }) => {
                (PositionKind::File, Start::File(file.clone(), *offset), None)
            }
            Some(other) => {
                return Err(ConnectorError::new(
                    ErrorKind::Config,
                    format!(
                        "mysql store `{store}`: cannot resume from non-binlog position {other}"
                    ),
                ))
            }
            None => {
                let (file, offset) = master_status(&mut sql, &store).await?;
                let gtids: Option<String> = if mariadb {
                    sql.query_first("SELECT @@GLOBAL.gtid_binlog_pos")
                        .await
                        .map_err(fail("reading @@gtid_binlog_pos"))?
                } else {
                    None
                };
                let gtids: Vec<&str> = gtids
                    .as_deref()
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .collect();
                match (mariadb, gtids.as_slice()) {
                    (true, [one]) => {
                        let position: Position = format!("gtid:{one}").parse().map_err(|e| {
                            ConnectorError::new(
                                ErrorKind::Protocol,
                                format!("mysql store `{store}`: unexpected @@gtid_binlog_pos: {e}"),
                            )
                        })?;
                        (
                            PositionKind::Gtid,
                            Start::Gtid((*one).to_string()),
                            Some(position),
                        )
                    }
                    // No GTID yet: start at the current file position; the
                    // transactions that follow carry GTIDs.
                    (true, []) => (PositionKind::Gtid, Start::File(file, offset), None),
                    (true, several) => {
                        info!(domains = several.len(), "the binlog holds GTIDs of several domains; using binlog file positions");
                        (
                            PositionKind::File,
                            Start::File(file.clone(), offset),
                            Some(Position::Binlog { file, offset }),
                        )
                    }
                    (false, _) => (
                        PositionKind::File,
                        Start::File(file.clone(), offset),
                        Some(Position::Binlog { file, offset }),
                    ),
                }
            }
        };

        let mut dump = open_sql(&store, &config.url, password, &config.tls).await?;
        dump.query_drop(format!(
            "SET @master_heartbeat_period = {}",
            HEARTBEAT_PERIOD.as_nanos()
        ))
        .await
        .map_err(fail("setting the heartbeat period"))?;
        if let Some(timeout) = config.dump_write_timeout {
            let seconds = timeout.as_secs_f64().ceil().max(1.0) as u64;
            dump.query_drop(format!("SET SESSION net_write_timeout = {seconds}"))
                .await
                .map_err(fail("setting net_write_timeout"))?;
        }
        if mariadb {
            dump.query_drop("SET @mariadb_slave_capability = 4")
                .await
                .map_err(fail("announcing GTID support"))?;
        }
        let request = BinlogStreamRequest::new(config.server_id);
        let (request, file) = match &start {
            Start::Gtid(state) => {
                dump.exec_drop("SET @slave_connect_state = ?", (state,))
                    .await
                    .map_err(fail("setting the GTID to resume from"))?;
                (request, String::new())
            }
            Start::File(file, offset) => (
                request.with_filename(file.as_bytes()).with_pos(*offset),
                file.clone(),
            ),
        };
        let stream = dump
            .get_binlog_stream(request)
            .await
            .map_err(fail("requesting the binlog"))?;
        let mut state = StreamState::new(
            &store,
            config.zero_dates,
            &config.tables,
            kind,
            resume_from.clone(),
            start_position,
            &file,
        );
        state.set_time_zone(config.time_zone);
        state.set_logged_through(logged_through);
        state.set_echo_origins(config.echo_origins.clone());
        let mut source = MySqlSource {
            config,
            span,
            sql: Arc::new(Mutex::new(sql)),
            refining: None,
            reading_schema: None,
            mariadb,
            stream,
            state,
            acked: None,
        };
        // The server reports a position it does not have on the first read:
        // surface it here.
        source.read_event().await?;
        info!(
            server_id = source.config.server_id,
            resume_from = %resume_from.map(|p| p.to_string()).unwrap_or_else(|| "current position".into()),
            "binlog streaming started"
        );
        Ok(source)
    }

    /// The last position passed to [`Source::acknowledge`].
    pub fn acknowledged(&self) -> Option<&Position> {
        self.acked.as_ref()
    }

    /// Reads one event from the server into the stream state.
    async fn read_event(&mut self) -> Result<(), ConnectorError> {
        let store = &self.config.store;
        let event = match tokio::time::timeout(READ_TIMEOUT, self.stream.next()).await {
            Err(_) => {
                return Err(ConnectorError::new(
                    ErrorKind::Connection,
                    format!(
                        "mysql store `{store}`: no binlog event nor heartbeat for {} s",
                        READ_TIMEOUT.as_secs()
                    ),
                ))
            }
            Ok(None) => {
                return Err(ConnectorError::new(
                    ErrorKind::Connection,
                    format!("mysql store `{store}`: the server closed the binlog stream"),
                ))
            }
            Ok(Some(event)) => event.map_err(|e| source_error(e, store, "reading the binlog"))?,
        };
        let (header, decoded) =
            convert(&event).map_err(|what| self.state.err(ErrorKind::Protocol, what))?;
        self.state.handle(&header, decoded)
    }

    async fn next_inner(&mut self) -> Result<SourceMessage, ConnectorError> {
        loop {
            if let Some(msg) = self.state.pop() {
                return Ok(msg);
            }
            if let Some(map) = self.state.pending_table().cloned() {
                // Stays pending until resolved; a cancelled call leaves the
                // look-up running and the next one awaits it.
                let task = self.refining.get_or_insert_with(|| {
                    tokio::spawn(
                        refinement(
                            self.sql.clone(),
                            self.config.store.clone(),
                            map.table.clone(),
                            self.mariadb,
                        )
                        .instrument(self.span.clone()),
                    )
                });
                let result = task.await;
                self.refining = None;
                let refinement = result.map_err(|e| lookup_failed(&self.config.store, e))??;
                self.state.install_table(map, Some(refinement));
                continue;
            }
            if let Some(table) = self.state.pending_truncate().cloned() {
                // Stays pending until resolved, like a table map.
                let task = self.reading_schema.get_or_insert_with(|| {
                    tokio::spawn(
                        catalog_schema(self.sql.clone(), self.config.store.clone(), table)
                            .instrument(self.span.clone()),
                    )
                });
                let result = task.await;
                self.reading_schema = None;
                let schema = result.map_err(|e| lookup_failed(&self.config.store, e))??;
                self.state.resolve_truncate(schema)?;
                continue;
            }
            self.read_event().await?;
        }
    }
}

/// A look-up task that panicked or was cancelled.
fn lookup_failed(store: &str, err: tokio::task::JoinError) -> ConnectorError {
    ConnectorError::new(
        ErrorKind::Internal,
        format!("mysql store `{store}`: a catalog look-up task failed: {err}"),
    )
}

/// The schema of `table` as the catalog shows it now (`None`: the table
/// is gone), for a `TRUNCATE` of a table the stream has no map of yet.
async fn catalog_schema(
    sql: Arc<Mutex<Conn>>,
    store: String,
    table: TableId,
) -> Result<Option<TableSchema>, ConnectorError> {
    let doing = format!("reading the columns of `{table}`");
    let rows: Vec<(String, String, String)> = sql
        .lock()
        .await
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_KEY FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (&table.namespace, &table.name),
        )
        .await
        .map_err(|e| source_error(e, &store, &doing))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let columns = rows
        .into_iter()
        .map(|(name, data_type, key)| ColumnSchema {
            name,
            source_type: data_type.to_ascii_lowercase(),
            is_key: key == "PRI",
        })
        .collect();
    Ok(Some(TableSchema { table, columns }))
}

/// What the catalog says that the binlog does not: `tinyint(1)` columns
/// and, on MariaDB, text columns with a `json_valid` check (`json`).
/// The catalog shows the table as it is now; names that no longer match
/// the table map are simply not refined.
async fn refinement(
    sql: Arc<Mutex<Conn>>,
    store: String,
    t: TableId,
    mariadb: bool,
) -> Result<Refinement, ConnectorError> {
    let doing = format!("reading the columns of `{t}`");
    let mut sql = sql.lock().await;
    let rows: Vec<(String, String)> = sql
        .exec(
            "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (&t.namespace, &t.name),
        )
        .await
        .map_err(|e| source_error(e, &store, &doing))?;
    let mut r = Refinement::default();
    for (name, column_type) in rows {
        if column_type.to_ascii_lowercase().starts_with("tinyint(1)") {
            r.tiny1.insert(name);
        }
    }
    if mariadb {
        let checks: Vec<String> = sql
            .exec(
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
                 WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
                (&t.namespace, &t.name),
            )
            .await
            .map_err(|e| source_error(e, &store, &doing))?;
        for check in checks {
            if let Some(column) = json_valid_column(&check) {
                r.json.insert(column);
            }
        }
    }
    debug!(table = %t, tiny1 = r.tiny1.len(), json = r.json.len(), "table map refined from the catalog");
    Ok(r)
}

/// `json_valid(`doc`)` → `doc`.
fn json_valid_column(check: &str) -> Option<String> {
    let inner = check
        .trim()
        .strip_prefix("json_valid(")?
        .strip_suffix(')')?
        .trim();
    let name = inner.strip_prefix('`')?.strip_suffix('`')?;
    Some(name.replace("``", "`"))
}

/// The server's current binlog file and position.
pub(crate) async fn master_status(
    sql: &mut Conn,
    store: &str,
) -> Result<(String, u64), ConnectorError> {
    let row: Option<Row> = match sql.query_first("SHOW MASTER STATUS").await {
        Ok(row) => row,
        // MySQL 8.4 renamed it.
        Err(mysql_async::Error::Server(e)) if e.code == 1064 => sql
            .query_first("SHOW BINARY LOG STATUS")
            .await
            .map_err(|e| source_error(e, store, "reading the binlog position"))?,
        Err(e) => return Err(source_error(e, store, "reading the binlog position")),
    };
    let parsed = row.and_then(|row| {
        let file: String = row.get_opt(0)?.ok()?;
        let position: u64 = row.get_opt(1)?.ok()?;
        Some((file, position))
    });
    parsed.ok_or_else(|| {
        ConnectorError::new(
            ErrorKind::ServerConfig,
            format!("mysql store `{store}`: binary logging is disabled"),
        )
        .with_hint("start the server with log_bin (and binlog_format=ROW) — see `callosum check`")
    })
}

/// Which of `tables` do not exist.
pub(crate) async fn missing_tables(
    sql: &mut Conn,
    store: &str,
    tables: &[TableId],
) -> Result<Vec<TableId>, ConnectorError> {
    let mut missing = Vec::new();
    for t in tables {
        let found: Option<u8> = sql
            .exec_first(
                "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&t.namespace, &t.name),
            )
            .await
            .map_err(|e| source_error(e, store, "looking up the captured tables"))?;
        if found.is_none() {
            missing.push(t.clone());
        }
    }
    Ok(missing)
}

impl Source for MySqlSource {
    async fn next(&mut self) -> Result<SourceMessage, ConnectorError> {
        let span = self.span.clone();
        self.next_inner().instrument(span).await
    }

    /// Records `position`; the server is told nothing (see the type's docs).
    async fn acknowledge(&mut self, position: &Position) -> Result<(), ConnectorError> {
        match position {
            Position::Binlog { .. } | Position::MariaGtid { .. } => {
                self.acked = Some(position.clone());
                Ok(())
            }
            other => Err(self.state.err(
                ErrorKind::Config,
                format_args!("cannot acknowledge non-binlog position {other}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_checks_name_their_column() {
        assert_eq!(json_valid_column("json_valid(`doc`)"), Some("doc".into()));
        assert_eq!(json_valid_column("`a` > 0"), None);
    }

    #[test]
    fn purged_positions_are_position_lost() {
        let err = |message: &str| {
            source_error(
                mysql_async::Error::Server(mysql_async::ServerError {
                    code: 1236,
                    message: message.into(),
                    state: "HY000".into(),
                }),
                "erp",
                "reading the binlog",
            )
        };
        let e = err("Could not find first log file name in binary log index file");
        assert_eq!(e.kind, ErrorKind::PositionLost);
        assert!(e.to_string().contains("re-snapshot"), "{e}");
        assert_eq!(
            err("Could not find GTID state requested by slave in any binlog files").kind,
            ErrorKind::PositionLost
        );
        assert_eq!(err("bogus data in log event").kind, ErrorKind::Protocol);
    }

    #[test]
    fn config_debug_hides_secrets() {
        let c = MySqlSourceConfig {
            tls: Default::default(),
            store: "erp".into(),
            url: "mysql://u:secret@h/db".into(),
            password: Some("hunter2".into()),
            server_id: 1,
            tables: vec![],
            zero_dates: ZeroDates::Error,
            time_zone: None,
            echo_origins: EchoOrigins::default(),
            dump_write_timeout: None,
        };
        let text = format!("{c:?}");
        assert!(
            !text.contains("secret") && !text.contains("hunter2"),
            "{text}"
        );
    }
}

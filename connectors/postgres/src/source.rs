//! [`PgSource`]: a [`Source`] that streams a PostgreSQL database's committed
//! transactions from a logical replication slot with the `pgoutput` plugin.

use std::collections::HashSet;
use std::time::Duration;

use callosum_api::{
    ConnectorError, EchoOrigins, ErrorKind, Lsn, Position, Source, SourceMessage, TableId,
    TlsSettings, CHECKPOINT_TABLE,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, Instrument};

use crate::error::{from_replication, from_sql};
use crate::pgoutput::{self, Relation};
use crate::replication::{quote_ident, ReplicationClient, ReplicationMessage, SlotSnapshot};
use crate::stream::StreamState;

/// How often a standby status update is sent without being asked.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// How long the replication stream may stay silent before the connection
/// is taken for half-open (a peer or a network device gone without a
/// reset) and dropped, for the capture to reconnect. The source asks the
/// server for a keepalive every status interval while idle, and the server
/// sends one at least every `wal_sender_timeout / 2` (30 s by default) even
/// while it decodes a large transaction; 90 s leaves room for both.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(90);

/// Configuration of one captured PostgreSQL store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgSourceConfig {
    /// The store's config name, for errors and logs.
    pub store: String,
    /// `postgres://user[:password]@host[:port]/database[?…]` (or key=value
    /// form). Never logged.
    pub url: String,
    /// Overrides the url's password. Never logged.
    pub password: Option<String>,
    pub slot: String,
    pub publication: String,
    /// The captured tables (`schema.table`).
    pub tables: Vec<TableId>,
    /// Callosum's own writes to this store that are kept, tagged with their
    /// origin store, instead of dropped as echo (a store feeding several
    /// pipelines); empty: every Callosum write is dropped.
    pub echo_origins: EchoOrigins,
    /// Whether the slot is told only what every target applied (the store's
    /// `acknowledge = "applied"`): a slot confirmed past `resume_from` then
    /// only means the targets hold what lies between, and streaming starts
    /// at the slot. Otherwise (`"logged"`) that is a gap: `PositionLost`.
    pub confirmed_means_applied: bool,
    /// `tls` and `tls_ca_file` of the store: both the catalog and the
    /// replication connection use them.
    pub tls: TlsSettings,
}

impl PgSourceConfig {
    /// The parsed url with [`Self::password`] applied. The error never
    /// repeats the url (it may hold a password).
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, ConnectorError> {
        pg_config(&self.store, &self.url, self.password.as_deref(), &self.tls)
    }
}

/// Parses a store's url and applies `password` (which overrides the url's),
/// the application name `callosum` and the TLS requirement of `tls` (the
/// store's `tls` decides, not an `sslmode` of the url). The error never
/// repeats the url (it may hold a password). Shared by the source, the sink
/// and their checks.
pub(crate) fn pg_config(
    store: &str,
    url: &str,
    password: Option<&str>,
    tls: &TlsSettings,
) -> Result<tokio_postgres::Config, ConnectorError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
        ConnectorError::new(
            ErrorKind::Config,
            format!(
                "postgres store `{store}`: the url is not a valid PostgreSQL connection string"
            ),
        )
        .with_hint("use postgres://user@host:port/database")
    })?;
    if let Some(password) = password {
        config.password(password.as_bytes());
    }
    if config.get_application_name().is_none() {
        config.application_name("callosum");
    }
    config.ssl_mode(if tls.enabled() {
        tokio_postgres::config::SslMode::Require
    } else {
        tokio_postgres::config::SslMode::Disable
    });
    Ok(config)
}

/// A PostgreSQL logical replication source.
///
/// Guarantees, in addition to those of [`Source`]:
/// - transactions come whole and in commit order: `Begin`, its changes,
///   then `Commit` or `Discard`. A `Discard` may follow changes already
///   yielded: the consumer drops everything since the last `Begin` (the
///   source never buffers a transaction, so a 1,000,000-row transaction does
///   not need 1,000,000 rows of memory). Transactions that touch a table
///   named [`CHECKPOINT_TABLE`] (Callosum's own writes), that yield no change
///   of a captured table, or that commit before `resume_from` end with
///   `Discard`;
/// - `Commit` carries `position = Pg(commit LSN)`, `resume_position = Pg(end
///   LSN of the commit record)`;
/// - updates carry [`Value::Unchanged`](callosum_api::Value::Unchanged) for unchanged TOASTed columns (filled
///   from the old row when the table has REPLICA IDENTITY FULL), never
///   `Null`; `old_key` is `Some` only when a key column changed;
/// - `Progress(Pg(lsn))` is yielded only between transactions, when the
///   server reports its stream has advanced past everything yielded;
/// - the slot is only ever told positions passed to
///   [`Source::acknowledge`] (or `resume_from` / the slot's own confirmed
///   position at start): keepalive replies and periodic status updates
///   report that position, never more;
/// - [`Source::next`] is cancel-safe.
///
/// After `next` returns an error, drop the source and connect again.
pub struct PgSource {
    config: PgSourceConfig,
    span: tracing::Span,
    sql: tokio_postgres::Client,
    sql_task: JoinHandle<()>,
    repl: ReplicationClient,
    state: StreamState,
    acked: Lsn,
    status_interval: Duration,
    next_status_at: Instant,
    /// When the server was last heard from, and how long it may be silent.
    last_heard: Instant,
    read_timeout: Duration,
}

impl std::fmt::Debug for PgSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSource")
            .field("store", &self.config.store)
            .field("slot", &self.config.slot)
            .field("acked", &self.acked)
            .finish_non_exhaustive()
    }
}

impl Drop for PgSource {
    fn drop(&mut self) {
        self.sql_task.abort();
    }
}

/// Connects a tokio-postgres client to the store of `config` (encrypted as
/// its `tls` says) for the agent's own queries; the connection runs in the
/// returned task (which ends when the client is dropped).
pub async fn connect_sql(
    config: &PgSourceConfig,
) -> Result<(tokio_postgres::Client, JoinHandle<()>), ConnectorError> {
    sql_connect(&config.store, &config.pg_config()?, &config.tls).await
}

/// Connects a tokio-postgres client for catalog queries (encrypted as `tls`
/// says) and spawns its connection task.
pub(crate) async fn sql_connect(
    store: &str,
    config: &tokio_postgres::Config,
    tls: &TlsSettings,
) -> Result<(tokio_postgres::Client, JoinHandle<()>), ConnectorError> {
    let connected = crate::tls::connect(store, config, tls, "connect").await?;
    Ok((connected.client, connected.task))
}

/// `"schema"."table"`.
pub(crate) fn quote_table(t: &TableId) -> String {
    format!("{}.{}", quote_ident(&t.namespace), quote_ident(&t.name))
}

/// Which of `tables` do not exist (as ordinary or partitioned tables).
pub(crate) async fn missing_tables(
    store: &str,
    sql: &tokio_postgres::Client,
    tables: &[TableId],
) -> Result<Vec<TableId>, ConnectorError> {
    let mut missing = Vec::new();
    for t in tables {
        let row = sql
            .query_opt(
                "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&t.namespace, &t.name],
            )
            .await
            .map_err(|e| from_sql(store, "look up table", e))?;
        if row.is_none() {
            missing.push(t.clone());
        }
    }
    Ok(missing)
}

/// The replication slot as `pg_replication_slots` shows it.
pub(crate) struct SlotInfo {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub confirmed_flush: Option<Lsn>,
    pub wal_status: Option<String>,
    pub active: bool,
}

pub(crate) async fn slot_info(
    store: &str,
    sql: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<SlotInfo>, ConnectorError> {
    let row = sql
        .query_opt(
            "SELECT plugin::text, database::text, confirmed_flush_lsn::text, wal_status, active \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| from_sql(store, "look up replication slot", e))?;
    Ok(row.map(|r| SlotInfo {
        plugin: r.get(0),
        database: r.get(1),
        confirmed_flush: r.get::<_, Option<String>>(2).and_then(|s| s.parse().ok()),
        wal_status: r.get(3),
        active: r.get(4),
    }))
}

impl PgSource {
    /// Connects to the store, makes sure the publication (with the
    /// configured tables and `public.callosum_checkpoint` when it exists) and
    /// the replication slot exist, and starts streaming from `resume_from`
    /// (a `resume_position` / `Progress` position the change log holds, or
    /// a target's checkpoint when the log is empty) or, when `None`, from
    /// the slot's confirmed position.
    ///
    /// Fails with [`ErrorKind::Schema`] naming every configured table that
    /// does not exist, and with [`ErrorKind::PositionLost`] when
    /// `resume_from` is given but the slot is gone or invalidated, or has
    /// confirmed a position past `resume_from` while the slot is told what
    /// was logged rather than applied (the changes between would be
    /// skipped; [`PgSourceConfig::confirmed_means_applied`]).
    pub async fn connect(
        config: PgSourceConfig,
        resume_from: Option<Position>,
    ) -> Result<PgSource, ConnectorError> {
        let span = tracing::info_span!("pg_source", store = %config.store);
        Self::connect_inner(config, resume_from, span.clone())
            .instrument(span)
            .await
    }

    async fn connect_inner(
        config: PgSourceConfig,
        resume_from: Option<Position>,
        span: tracing::Span,
    ) -> Result<PgSource, ConnectorError> {
        let store = config.store.clone();
        let resume_from = match resume_from {
            None => None,
            Some(Position::Pg(lsn)) => Some(lsn),
            Some(other) => {
                return Err(ConnectorError::new(
                    ErrorKind::Config,
                    format!(
                    "postgres store `{store}`: cannot resume from non-PostgreSQL position {other}"
                ),
                ))
            }
        };
        let pg_config = config.pg_config()?;
        let (sql, sql_task) = sql_connect(&store, &pg_config, &config.tls).await?;
        let guard = AbortOnDrop(Some(sql_task));

        let missing = missing_tables(&store, &sql, &config.tables).await?;
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|t| t.to_string()).collect();
            return Err(ConnectorError::new(
                ErrorKind::Schema,
                format!(
                    "postgres store `{store}`: configured table {} does not exist",
                    names.join(", ")
                ),
            )
            .with_hint("create the table or remove it from the pipeline's `tables`"));
        }
        ensure_publication(&store, &sql, &config.publication, &config.tables).await?;

        let slot = slot_info(&store, &sql, &config.slot).await?;
        let mut repl = ReplicationClient::connect(
            &pg_config,
            None,
            crate::tls::client_config(&store, &config.tls)?,
        )
        .await
        .map_err(|e| from_replication(&store, "open replication connection", e))?;
        let identity = repl
            .identify_system()
            .await
            .map_err(|e| from_replication(&store, "IDENTIFY_SYSTEM", e))?;
        debug!(system_id = %identity.system_id, timeline = identity.timeline, wal = %identity.xlog_pos, "replication connection ready");

        let confirmed = match slot {
            Some(info) => {
                if info.plugin.as_deref() != Some("pgoutput") {
                    return Err(ConnectorError::new(
                        ErrorKind::Config,
                        format!(
                            "postgres store `{store}`: replication slot `{}` exists but is not a pgoutput logical slot",
                            config.slot
                        ),
                    )
                    .with_hint("configure another slot name, or drop the slot with pg_drop_replication_slot"));
                }
                if info.database.is_some() && info.database != identity.dbname {
                    return Err(ConnectorError::new(
                        ErrorKind::Config,
                        format!(
                            "postgres store `{store}`: replication slot `{}` belongs to another database",
                            config.slot
                        ),
                    )
                    .with_hint("give each database its own slot name"));
                }
                if info.wal_status.as_deref() == Some("lost") {
                    return Err(ConnectorError::new(
                        ErrorKind::PositionLost,
                        format!(
                            "postgres store `{store}`: replication slot `{}` was invalidated and lost the WAL to resume from",
                            config.slot
                        ),
                    )
                    .with_hint("drop the slot and re-snapshot the tables; raise max_slot_wal_keep_size to avoid it"));
                }
                info.confirmed_flush.unwrap_or(Lsn(0))
            }
            None => {
                if let Some(lsn) = resume_from {
                    return Err(ConnectorError::new(
                        ErrorKind::PositionLost,
                        format!(
                            "postgres store `{store}`: replication slot `{}` does not exist, but Callosum resumes from {lsn} (the change log's position, or a target's checkpoint)",
                            config.slot
                        ),
                    )
                    .with_hint("the slot was dropped and the changes since then are lost: re-snapshot the tables; to start afresh instead, delete the pipelines' rows from callosum_checkpoint in their targets and move data_dir aside"));
                }
                let created = repl
                    .create_logical_slot(&config.slot, SlotSnapshot::Nothing)
                    .await
                    .map_err(|e| from_replication(&store, "create replication slot", e))?;
                info!(slot = %config.slot, consistent_point = %created.consistent_point, "created replication slot");
                created.consistent_point
            }
        };
        if let Some(r) = resume_from {
            if r < confirmed && config.confirmed_means_applied {
                info!(resume_from = %r, confirmed = %confirmed, "the slot confirmed what the targets applied past the resume position; streaming from the slot's position");
            } else if r < confirmed {
                // The slot was acknowledged past what the change log holds
                // (a data_dir restored from a backup or copied from another
                // agent): the server would start at `confirmed`, and what
                // lies between was never applied from this log.
                return Err(ConnectorError::new(
                    ErrorKind::PositionLost,
                    format!(
                        "postgres store `{store}`: replication slot `{}` has confirmed {confirmed}, past the resume position {r}; the changes between them can no longer be read",
                        config.slot
                    ),
                )
                .with_hint("the slot was told more than was applied: the change log is older than the slot (data_dir restored from a backup, or lost with acknowledge = \"logged\"), or another agent used the slot; re-snapshot the pipelines' tables from this store"));
            }
        }
        let start = resume_from.unwrap_or(confirmed).max(confirmed);
        let publication = quote_ident(&config.publication);
        repl.start_replication(
            &config.slot,
            start,
            &[("proto_version", "1"), ("publication_names", &publication)],
        )
        .await
        .map_err(|e| from_replication(&store, "start replication", e))?;
        info!(slot = %config.slot, publication = %config.publication, start = %start, "streaming started");

        let sql_task = guard.disarm();
        let mut state = StreamState::new(&config.store, &config.tables, resume_from, start);
        state.set_echo_origins(config.echo_origins.clone());
        Ok(PgSource {
            config,
            span,
            sql,
            sql_task,
            repl,
            state,
            acked: start,
            status_interval: DEFAULT_STATUS_INTERVAL,
            next_status_at: Instant::now() + DEFAULT_STATUS_INTERVAL,
            last_heard: Instant::now(),
            read_timeout: DEFAULT_READ_TIMEOUT,
        })
    }

    /// Changes how often an unrequested status update (asking the server
    /// for a keepalive, hence `Progress`) is sent. Default 10 s.
    pub fn set_status_interval(&mut self, interval: Duration) {
        self.status_interval = interval.max(Duration::from_millis(10));
        self.next_status_at = Instant::now() + self.status_interval;
    }

    /// Changes how long the stream may stay silent before the connection is
    /// dropped as half-open ([`DEFAULT_READ_TIMEOUT`]); keep it well above
    /// the status interval.
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.read_timeout = timeout;
    }

    /// The last position acknowledged to the server.
    pub fn acknowledged(&self) -> Lsn {
        self.acked
    }

    /// Bytes of WAL the slot retains: the server's current WAL position minus
    /// the slot's confirmed position (`callosum_source_lag_bytes`).
    pub async fn source_lag_bytes(&self) -> Result<u64, ConnectorError> {
        let row = self
            .sql
            .query_opt(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.config.slot],
            )
            .await
            .map_err(|e| from_sql(&self.config.store, "read slot lag", e))?;
        let lag: Option<i64> = row.and_then(|r| r.get(0));
        Ok(lag.unwrap_or(0).max(0) as u64)
    }

    async fn next_inner(&mut self) -> Result<SourceMessage, ConnectorError> {
        loop {
            if let Some(msg) = self.state.pop() {
                return Ok(msg);
            }
            if let Some(rel) = self.state.pending_relation().cloned() {
                // Stays pending until resolved: a cancelled look-up is redone.
                self.resolve_relation(&rel).await?;
                continue;
            }
            self.repl
                .flush()
                .await
                .map_err(|e| from_replication(&self.config.store, "send status update", e))?;
            if Instant::now() >= self.next_status_at {
                // Asking for a reply makes the server send a keepalive with
                // its current position: that is how idle stretches become
                // `Progress`.
                let idle = !self.state.in_transaction();
                self.repl
                    .queue_status_update(self.acked, self.acked, self.acked, idle);
                self.next_status_at = Instant::now() + self.status_interval;
                continue;
            }
            let silent_until = self.last_heard + self.read_timeout;
            if Instant::now() >= silent_until {
                return Err(ConnectorError::new(
                    ErrorKind::Connection,
                    format!(
                        "postgres store `{}`: nothing from the server on the replication connection for {} s although keepalives were asked for: the connection is half-open or the server hangs",
                        self.config.store,
                        self.read_timeout.as_secs()
                    ),
                )
                .with_hint("the capture reconnects; if it keeps happening, check the network between the agent and the server"));
            }
            let deadline = self.next_status_at.min(silent_until);
            let msg = tokio::select! {
                msg = self.repl.recv() => msg,
                _ = tokio::time::sleep_until(deadline) => continue,
            };
            let msg = msg
                .map_err(|e| from_replication(&self.config.store, "read replication stream", e))?;
            self.last_heard = Instant::now();
            match msg {
                ReplicationMessage::Keepalive {
                    wal_end,
                    reply_requested,
                    ..
                } => {
                    self.state.keepalive(Lsn(wal_end));
                    if reply_requested {
                        // Never more than what the caller acknowledged.
                        self.repl
                            .queue_status_update(self.acked, self.acked, self.acked, false);
                        self.repl.flush().await.map_err(|e| {
                            from_replication(&self.config.store, "answer keepalive", e)
                        })?;
                    }
                }
                ReplicationMessage::XLogData { data, .. } => {
                    let decoded = pgoutput::decode(&data).map_err(|e| {
                        self.state.err(
                            ErrorKind::Protocol,
                            format_args!("cannot decode pgoutput message: {e}"),
                        )
                    })?;
                    self.state.handle(decoded)?;
                }
            }
        }
    }

    /// Looks up what a relation message needs from the catalog: names of
    /// types not known yet and, for REPLICA IDENTITY FULL, the primary key.
    async fn resolve_relation(&mut self, rel: &Relation) -> Result<(), ConnectorError> {
        let store = self.config.store.clone();
        if !self.state.is_captured(rel) {
            self.state.install_relation(rel, None);
            return Ok(());
        }
        let unknown = self.state.unknown_type_oids(rel);
        if !unknown.is_empty() {
            let rows = self
                .sql
                .query(
                    // Each type with the base type of its domain chain
                    // (itself when not a domain).
                    "WITH RECURSIVE b(oid, base) AS ( \
                         SELECT oid, oid FROM pg_type WHERE oid = ANY($1) \
                         UNION ALL \
                         SELECT b.oid, t.typbasetype FROM b JOIN pg_type t ON t.oid = b.base \
                         WHERE t.typtype = 'd') \
                     SELECT b.oid, t.typname::text, b.base FROM b \
                     JOIN pg_type t ON t.oid = b.oid \
                     JOIN pg_type bt ON bt.oid = b.base WHERE bt.typtype <> 'd'",
                    &[&unknown],
                )
                .await
                .map_err(|e| from_sql(&store, "look up column types", e))?;
            for row in rows {
                self.state.set_type(row.get(0), row.get(1), row.get(2));
            }
        }
        let mut primary_key: Option<HashSet<String>> = None;
        if rel.replica_identity == b'f' {
            let rows = self
                .sql
                .query(
                    "SELECT a.attname::text FROM pg_index i \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                     WHERE i.indrelid = $1 AND i.indisprimary",
                    &[&rel.id],
                )
                .await
                .map_err(|e| from_sql(&store, "look up primary key", e))?;
            if !rows.is_empty() {
                primary_key = Some(rows.iter().map(|r| r.get(0)).collect());
            }
        }
        self.state.install_relation(rel, primary_key);
        Ok(())
    }

    async fn acknowledge_inner(&mut self, position: &Position) -> Result<(), ConnectorError> {
        let Position::Pg(lsn) = position else {
            return Err(self.state.err(
                ErrorKind::Config,
                format_args!("cannot acknowledge non-PostgreSQL position {position}"),
            ));
        };
        if *lsn > self.acked {
            self.acked = *lsn;
            self.repl.queue_status_update(*lsn, *lsn, *lsn, false);
            self.next_status_at = Instant::now() + self.status_interval;
        }
        self.repl
            .flush()
            .await
            .map_err(|e| from_replication(&self.config.store, "send status update", e))
    }
}

/// Creates the publication, or adds the configured tables it lacks. Also
/// publishes `public.callosum_checkpoint` when that table exists, so that
/// Callosum's own writes can be recognised.
pub(crate) async fn ensure_publication(
    store: &str,
    sql: &tokio_postgres::Client,
    publication: &str,
    tables: &[TableId],
) -> Result<(), ConnectorError> {
    let mut wanted: Vec<TableId> = tables.to_vec();
    let checkpoint = TableId::new("public", CHECKPOINT_TABLE);
    if !wanted.contains(&checkpoint)
        && missing_tables(store, sql, std::slice::from_ref(&checkpoint))
            .await?
            .is_empty()
    {
        wanted.push(checkpoint);
    } else if !wanted.contains(&checkpoint) {
        debug!(
            "table public.callosum_checkpoint does not exist yet: callosum's own writes to this store cannot be told apart until the source reconnects after it is created"
        );
    }
    let existing = sql
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| from_sql(store, "look up publication", e))?;
    let list = |ts: &[TableId]| ts.iter().map(quote_table).collect::<Vec<_>>().join(", ");
    match existing {
        None => {
            let stmt = format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(publication),
                list(&wanted)
            );
            sql.batch_execute(&stmt)
                .await
                .map_err(|e| from_sql(store, "create publication", e))?;
            info!(publication = %publication, tables = wanted.len(), "created publication");
        }
        Some(row) if row.get::<_, bool>(0) => {}
        Some(_) => {
            let rows = sql
                .query(
                    "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                    &[&publication],
                )
                .await
                .map_err(|e| from_sql(store, "look up publication tables", e))?;
            let have: HashSet<TableId> = rows
                .iter()
                .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect();
            let add: Vec<TableId> = wanted.into_iter().filter(|t| !have.contains(t)).collect();
            if !add.is_empty() {
                let stmt = format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    quote_ident(publication),
                    list(&add)
                );
                sql.batch_execute(&stmt)
                    .await
                    .map_err(|e| from_sql(store, "add tables to publication", e))?;
                info!(publication = %publication, added = add.len(), "added tables to publication");
            }
        }
    }
    Ok(())
}

/// Aborts the catalog connection task if `connect` fails half-way.
struct AbortOnDrop(Option<JoinHandle<()>>);

impl AbortOnDrop {
    fn disarm(mut self) -> JoinHandle<()> {
        self.0.take().expect("armed")
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

impl Source for PgSource {
    fn next(
        &mut self,
    ) -> impl std::future::Future<Output = Result<SourceMessage, ConnectorError>> + Send {
        let span = self.span.clone();
        self.next_inner().instrument(span)
    }

    fn acknowledge(
        &mut self,
        position: &Position,
    ) -> impl std::future::Future<Output = Result<(), ConnectorError>> + Send {
        let span = self.span.clone();
        let position = position.clone();
        async move { self.acknowledge_inner(&position).await }.instrument(span)
    }
}

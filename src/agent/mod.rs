//! Pipeline wiring: one capture worker per source store, one apply worker
//! per pipeline, the truncation task and the HTTP listener, with retries of
//! transient failures and a clean stop on SIGINT/SIGTERM.

mod apply_worker;
mod lease_worker;

use apply_worker::ApplyWorker;

use crate::mapped_sink::MappedSink;
use anyhow::Context;
use callosum_api::{
    ConnectorError, EchoOrigins, ErrorClass, ErrorKind, Fence, Position, Sink, Source,
    SourceMessage, TableId,
};
use callosum_mysql::{MySqlSink, MySqlSinkConfig, MySqlSource, MySqlSourceConfig};
use callosum_postgres::{PgSink, PgSinkConfig, PgSource, PgSourceConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn, Instrument};

use crate::capture::{self, AckPolicy, CaptureObserver};
use crate::config::{Acknowledge, Config, PipelineConfig, StoreConfig};
use crate::dead_letter::{DeadLetterControl, PipelineDeadLetters};
use crate::http::{AgentStatus, PipelineState};
use crate::log::{ChangeLog, LogWriter};
use crate::metrics::{Metrics, StoreMetrics};
use crate::retry::RetryPolicy;

/// How often applied transactions are removed from the log.
const TRUNCATE_EVERY: Duration = Duration::from_secs(1);
/// A change-log flush pending this long means the log's disk has failed:
/// sled waits forever on a full disk instead of returning an error. Healthy
/// flushes take milliseconds.
const LOG_FLUSH_STALL: Duration = Duration::from_secs(30);
/// How long a graceful stop may take before the agent gives up on it: a
/// worker stuck in a change-log flush (a full disk) never finishes. Nothing
/// unflushed was acknowledged, so exiting without it loses nothing.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often `callosum_source_lag_bytes` is read from a PostgreSQL slot:
/// an alerting signal, not a hot path.
const SLOT_LAG_EVERY: Duration = Duration::from_secs(5);

/// A running agent: its workers, metrics and status.
pub struct Agent {
    workers: JoinSet<()>,
    shutdown: watch::Sender<bool>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<AgentStatus>,
    /// Where the HTTP listener is bound (the configured address, or the
    /// port the OS picked for `:0`).
    pub http_addr: SocketAddr,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

/// Runs the agent until SIGINT or SIGTERM, then stops it gracefully.
pub async fn run_until_signal(config: Config) -> anyhow::Result<()> {
    let agent = Agent::start(config).await?;
    info!(listen = %agent.http_addr, "callosum running");
    let notifier = crate::service::spawn_notifier(agent.status.clone());
    wait_for_signal().await;
    notifier.abort();
    crate::service::stopping();
    info!("stopping: finishing batches, flushing the log, acknowledging");
    if tokio::time::timeout(STOP_TIMEOUT, agent.stop())
        .await
        .is_err()
    {
        anyhow::bail!(
            "the agent did not stop within {} s: a worker did not finish, most likely stuck in a change-log flush on a full or failing disk; exiting without it (nothing that was not flushed was acknowledged, so a restart loses nothing)",
            STOP_TIMEOUT.as_secs()
        );
    }
    info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

impl Agent {
    /// Opens the log, binds the HTTP listener and starts every worker.
    pub async fn start(config: Config) -> anyhow::Result<Agent> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
        let log_dir = config.data_dir.join("log");
        let log = tokio::task::spawn_blocking(move || ChangeLog::open(&log_dir))
            .await?
            .context("cannot open the change log in data_dir")?;
        let metrics = Arc::new(Metrics::new());
        let status = Arc::new(AgentStatus::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("cannot listen on {} ([http] listen)", config.http.listen))?;
        let http_addr = listener.local_addr()?;
        let mut workers = JoinSet::new();
        // each pipeline's dead-letter queue: read by /dlq, changed only by
        // the pipeline's apply worker, which /dlq sends commands to
        let mut dead_letters = DeadLetterControl::new();
        let all_pipelines: Vec<String> = config.pipelines.iter().map(|p| p.name.clone()).collect();
        let mut commands = BTreeMap::new();
        for pipeline in &config.pipelines {
            let (sender, receiver) = mpsc::channel(8);
            dead_letters.insert(
                pipeline.name.clone(),
                PipelineDeadLetters {
                    queue: log.dead_letters(&pipeline.name)?,
                    commands: sender,
                },
            );
            commands.insert(pipeline.name.clone(), receiver);
        }
        let admin_token = config
            .http
            .admin_token()
            .context("cannot read the admin token of [http]")?
            .map(Arc::new);
        {
            let metrics = metrics.clone();
            let status = status.clone();
            let dead_letters = dead_letters.clone();
            let mut stop = shutdown_rx.clone();
            let halt = halter(&status, &metrics, "http", all_pipelines.clone());
            workers.spawn(crate::panics::supervise(
                "http listener",
                async move {
                    let shutdown = async move { crate::shutdown::requested(&mut stop).await };
                    if let Err(err) = crate::http::serve(
                        listener,
                        metrics,
                        status,
                        dead_letters,
                        admin_token,
                        shutdown,
                    )
                    .await
                    {
                        error!(error = %err, "http listener failed");
                    }
                },
                halt,
            ));
        }

        let pipelines = Pipelines {
            config: config.clone(),
            log,
            metrics: metrics.clone(),
            status: status.clone(),
            dead_letters,
            commands,
            shutdown: shutdown_rx.clone(),
        };
        match config.lease.clone() {
            None => pipelines.spawn(Fence::default(), false, &mut workers)?,
            Some(lease) => {
                for pipeline in &config.pipelines {
                    status.set_state(&pipeline.name, PipelineState::Standby, None);
                }
                let halt = halter(&status, &metrics, "lease", all_pipelines.clone());
                let span = tracing::info_span!("lease", store = %lease.store);
                workers.spawn(crate::panics::supervise(
                    "lease worker",
                    lease_worker::run(lease, pipelines).instrument(span),
                    halt,
                ));
            }
        }
        Ok(Agent {
            workers,
            shutdown,
            metrics,
            status,
            http_addr,
        })
    }

    /// Asks every worker to stop (capture flushes and acknowledges, apply
    /// finishes its batch) and waits for them.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        while self.workers.join_next().await.is_some() {}
    }
}

/// Everything the pipelines' workers need, until they start: at once
/// without `[lease]`, once the lease is taken with it.
struct Pipelines {
    config: Config,
    log: ChangeLog,
    metrics: Arc<Metrics>,
    status: Arc<AgentStatus>,
    dead_letters: DeadLetterControl,
    commands: BTreeMap<String, mpsc::Receiver<crate::dead_letter::DeadLetterCommand>>,
    shutdown: watch::Receiver<bool>,
}

impl Pipelines {
    /// Starts the capture, apply, truncation and flush-watch workers into
    /// `workers`. Every target transaction carries `fence`; `steps_down`:
    /// a fenced write makes the agent step down (with `[lease]`) instead of
    /// halting the pipeline.
    fn spawn(
        self,
        fence: Fence,
        steps_down: bool,
        workers: &mut JoinSet<()>,
    ) -> anyhow::Result<()> {
        let Pipelines {
            config,
            log,
            metrics,
            status,
            dead_letters,
            mut commands,
            shutdown: shutdown_rx,
        } = self;
        let all_pipelines: Vec<String> = config.pipelines.iter().map(|p| p.name.clone()).collect();
        for pipeline in &config.pipelines {
            status.set_state(&pipeline.name, PipelineState::Starting, None);
        }

        // one capture worker per store that feeds a pipeline
        let mut readers_by_store: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut tables_by_store: BTreeMap<String, BTreeSet<TableId>> = BTreeMap::new();
        for pipeline in &config.pipelines {
            let from = &config.stores[&pipeline.from];
            readers_by_store
                .entry(pipeline.from.clone())
                .or_default()
                .push(pipeline.name.clone());
            tables_by_store
                .entry(pipeline.from.clone())
                .or_default()
                .extend(pipeline.source_tables(from));
        }
        for (store_name, tables) in &tables_by_store {
            let writer = log.writer(store_name)?;
            let echo_targets = config
                .pipelines
                .iter()
                .filter(|p| &p.to == store_name)
                .map(|p| sink_config(p, &config.stores[&p.from], &config.stores[&p.to]))
                .collect::<Result<Vec<_>, _>>()?;
            let reader_sinks = config
                .pipelines
                .iter()
                .filter(|p| &p.from == store_name)
                .map(|p| {
                    let sink = sink_config(p, &config.stores[&p.from], &config.stores[&p.to])?;
                    Ok((p.name.clone(), sink))
                })
                .collect::<Result<Vec<_>, ConnectorError>>()?;
            let rule = match &config.stores[store_name] {
                StoreConfig::Postgres(pg) => pg.acknowledge,
                // a binlog server is told nothing: resuming from the
                // targets' checkpoints is what keeps a lost log lossless
                StoreConfig::Mysql(_) => Acknowledge::Applied,
            };
            let worker = CaptureWorker {
                store: store_name.clone(),
                ack: AckPolicy {
                    rule,
                    pipelines: readers_by_store[store_name].clone(),
                },
                reader_sinks,
                config: config.stores[store_name].clone(),
                tables: tables.iter().cloned().collect(),
                echo_targets,
                echo_origins: EchoOrigins::new(config.echo_origins(store_name)),
                pipelines: readers_by_store[store_name].clone(),
                metrics: metrics.store(store_name),
                status: status.clone(),
                dump_write_timeout: fence.idle_transaction_timeout,
            };
            if let Ok(SourceConfig::Postgres(source)) =
                source_config(store_name, &config.stores[store_name], Vec::new())
            {
                let span = tracing::info_span!("slot_lag", store = %store_name);
                let halt = halter(
                    &status,
                    &metrics,
                    store_name,
                    readers_by_store[store_name].clone(),
                );
                workers.spawn(crate::panics::supervise(
                    "slot lag reporter",
                    report_slot_lag(source, metrics.store(store_name), shutdown_rx.clone())
                        .instrument(span),
                    halt,
                ));
            }
            let span = tracing::info_span!("capture", store = %store_name);
            // a capture panic halts every pipeline of the store
            let halt = halter(
                &status,
                &metrics,
                store_name,
                readers_by_store[store_name].clone(),
            );
            workers.spawn(crate::panics::supervise(
                "capture worker",
                worker.run(writer, shutdown_rx.clone()).instrument(span),
                halt,
            ));
        }
        for pipeline in &config.pipelines {
            let worker = ApplyWorker {
                pipeline: pipeline.clone(),
                from: config.stores[&pipeline.from].clone(),
                to: config.stores[&pipeline.to].clone(),
                log: log.clone(),
                dead_letters: dead_letters[&pipeline.name].queue.clone(),
                commands: commands
                    .remove(&pipeline.name)
                    .expect("one command channel per pipeline"),
                metrics: metrics.pipeline(&pipeline.name),
                status: status.clone(),
                fence,
                steps_down,
            };
            let span = tracing::info_span!("apply", pipeline = %pipeline.name);
            let halt = halter(
                &status,
                &metrics,
                &pipeline.name,
                vec![pipeline.name.clone()],
            );
            workers.spawn(crate::panics::supervise(
                "apply worker",
                worker.run(shutdown_rx.clone()).instrument(span),
                halt,
            ));
        }
        workers.spawn(crate::panics::supervise(
            "log flush watcher",
            watch_log_flushes(
                log.clone(),
                readers_by_store.clone(),
                metrics.clone(),
                status.clone(),
                shutdown_rx.clone(),
            ),
            halter(&status, &metrics, "log", all_pipelines.clone()),
        ));
        {
            let log = log.clone();
            let mut stop = shutdown_rx.clone();
            let halt = halter(&status, &metrics, "log", all_pipelines.clone());
            workers.spawn(crate::panics::supervise(
                "log truncation",
                async move {
                    loop {
                        tokio::select! {
                            _ = crate::shutdown::requested(&mut stop) => return,
                            _ = tokio::time::sleep(TRUNCATE_EVERY) => {}
                        }
                        for (store, pipelines) in &readers_by_store {
                            let log = log.clone();
                            let store = store.clone();
                            let pipelines = pipelines.clone();
                            let result = tokio::task::spawn_blocking(move || {
                                let names: Vec<&str> =
                                    pipelines.iter().map(String::as_str).collect();
                                log.truncate_applied(&store, &names)
                            })
                            .await;
                            match result {
                                Ok(Err(err)) => {
                                    warn!(error = %err, "failed to truncate the change log")
                                }
                                Err(err) if err.is_panic() => {
                                    std::panic::resume_unwind(err.into_panic())
                                }
                                _ => {}
                            }
                        }
                    }
                },
                halt,
            ));
        }
        Ok(())
    }
}

/// What a panic of a worker serving `pipelines` does: halts each of them
/// with the error in `/status` and counts it under `component`.
fn halter(
    status: &Arc<AgentStatus>,
    metrics: &Arc<Metrics>,
    component: &str,
    pipelines: Vec<String>,
) -> impl FnOnce(ConnectorError) {
    let (status, metrics, component) = (status.clone(), metrics.clone(), component.to_owned());
    move |err| {
        metrics.record_error(&component, err.kind);
        for pipeline in &pipelines {
            status.set_state(pipeline, PipelineState::Halted, Some(&err.to_string()));
        }
    }
}

/// Halts the pipelines of a store whose change-log flush has been pending for
/// [`LOG_FLUSH_STALL`]: the capture worker is stuck inside sled and cannot
/// report it itself. Nothing past the last durable flush was acknowledged,
/// so moving `data_dir` to a healthy disk and restarting loses nothing.
async fn watch_log_flushes(
    log: ChangeLog,
    readers_by_store: BTreeMap<String, Vec<String>>,
    metrics: Arc<Metrics>,
    status: Arc<AgentStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reported = BTreeSet::new();
    loop {
        if sleep_or_stop(Duration::from_secs(1), &mut shutdown).await {
            return;
        }
        for (store, pipelines) in &readers_by_store {
            let stalled =
                matches!(log.flush_pending_for(store), Ok(Some(d)) if d >= LOG_FLUSH_STALL);
            if !stalled || !reported.insert(store.clone()) {
                continue;
            }
            let err = ConnectorError::new(
                callosum_api::ErrorKind::LogStorage,
                format!(
                    "the change log of store `{store}` has not finished a flush in {} s: its disk is full or failing",
                    LOG_FLUSH_STALL.as_secs()
                ),
            )
            .with_hint("free space or fix the disk of data_dir (or move data_dir to a healthy disk) and restart; nothing after the last flush was acknowledged, so nothing is lost");
            error!(store = %store, error = %err, "capture stopped");
            metrics.record_error(store, err.kind);
            for pipeline in pipelines {
                status.set_state(pipeline, PipelineState::Halted, Some(&err.to_string()));
            }
        }
    }
}

/// Keeps `callosum_source_lag_bytes` of a PostgreSQL store current: the
/// server's WAL position minus the slot's confirmed position, i.e. the WAL
/// the server retains for Callosum. Uses its own connection, so a slow
/// catalog query never stalls capture; failures are retried at the next tick.
async fn report_slot_lag(
    source: PgSourceConfig,
    metrics: StoreMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        if sleep_or_stop(SLOT_LAG_EVERY, &mut shutdown).await {
            return;
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match callosum_postgres::source::connect_sql(&source).await {
                Ok((c, _connection)) => Some(c),
                Err(err) if err.is_transient() => {
                    tracing::debug!(error = %err, "cannot read the slot's lag");
                    None
                }
                Err(_) => return,
            };
        }
        let Some(c) = &client else { continue };
        let lag = c
            .query_opt(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1",
                &[&source.slot],
            )
            .await;
        match lag {
            Ok(row) => {
                let bytes: i64 = row.and_then(|r| r.get::<_, Option<i64>>(0)).unwrap_or(0);
                metrics.source_lag_bytes.set(bytes.max(0));
            }
            Err(err) => {
                tracing::debug!(error = %err, "cannot read the slot's lag");
                client = None;
            }
        }
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Waits `delay` unless the agent stops first; returns whether it stops.
async fn sleep_or_stop(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = crate::shutdown::requested(shutdown) => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

/// A captured store's source, whatever its engine.
enum AnySource {
    // boxed: both are large and there is one per store
    Postgres(Box<PgSource>),
    Mysql(Box<MySqlSource>),
}

impl Source for AnySource {
    async fn next(&mut self) -> Result<SourceMessage, ConnectorError> {
        match self {
            AnySource::Postgres(source) => source.next().await,
            AnySource::Mysql(source) => source.next().await,
        }
    }

    async fn acknowledge(&mut self, position: &Position) -> Result<(), ConnectorError> {
        match self {
            AnySource::Postgres(source) => source.acknowledge(position).await,
            AnySource::Mysql(source) => source.acknowledge(position).await,
        }
    }
}

/// A pipeline's target, whatever its engine.
pub(crate) enum AnySink {
    // boxed: both are large and there is one per pipeline
    Mysql(Box<MySqlSink>),
    Postgres(Box<PgSink>),
}

macro_rules! on_sink {
    ($sink:expr, $inner:ident => $call:expr) => {
        match $sink {
            AnySink::Mysql($inner) => $call,
            AnySink::Postgres($inner) => $call,
        }
    };
}

impl AnySink {
    /// Stores the sink's epoch in the checkpoint rows `keys`
    /// ([`PgSink::fence`], [`MySqlSink::fence`]).
    async fn fence(&mut self, keys: &[String]) -> Result<(), ConnectorError> {
        on_sink!(self, sink => sink.fence(keys).await)
    }
}

impl Sink for AnySink {
    async fn checkpoint(&mut self) -> Result<Option<Position>, ConnectorError> {
        on_sink!(self, sink => sink.checkpoint().await)
    }
    async fn begin(&mut self, checkpoint: &Position) -> Result<(), ConnectorError> {
        on_sink!(self, sink => sink.begin(checkpoint).await)
    }
    async fn apply(&mut self, events: &[callosum_api::ChangeEvent]) -> Result<(), ConnectorError> {
        on_sink!(self, sink => sink.apply(events).await)
    }
    async fn commit(&mut self) -> Result<(), ConnectorError> {
        on_sink!(self, sink => sink.commit().await)
    }
    async fn rollback(&mut self) -> Result<(), ConnectorError> {
        on_sink!(self, sink => sink.rollback().await)
    }
    async fn refresh_targets(
        &mut self,
        tables: &[callosum_api::TableId],
    ) -> Result<bool, ConnectorError> {
        on_sink!(self, sink => sink.refresh_targets(tables).await)
    }
    async fn store_dead_letter_part(
        &mut self,
        id: u64,
        part: u32,
        payload: &[u8],
    ) -> Result<(), ConnectorError> {
        on_sink!(self, sink => sink.store_dead_letter_part(id, part, payload).await)
    }
    async fn remove_dead_letter(&mut self, id: u64) -> Result<(), ConnectorError> {
        on_sink!(self, sink => sink.remove_dead_letter(id).await)
    }
    async fn dead_letter_ids(&mut self) -> Result<Vec<u64>, ConnectorError> {
        on_sink!(self, sink => sink.dead_letter_ids().await)
    }
    async fn dead_letter_part(
        &mut self,
        id: u64,
        part: u32,
    ) -> Result<Option<Vec<u8>>, ConnectorError> {
        on_sink!(self, sink => sink.dead_letter_part(id, part).await)
    }
    async fn discard_dead_letters(&mut self, ids: &[u64]) -> Result<(), ConnectorError> {
        on_sink!(self, sink => sink.discard_dead_letters(ids).await)
    }
}

fn store_password(store: &StoreConfig) -> Result<Option<String>, ConnectorError> {
    store
        .password()
        .map(|p| p.map(|s| s.expose().to_string()))
        .map_err(|err| ConnectorError::new(callosum_api::ErrorKind::Config, err.to_string()))
}

/// How to connect to a store's log.
#[derive(Clone, Debug)]
pub(crate) enum SourceConfig {
    Postgres(PgSourceConfig),
    Mysql(MySqlSourceConfig),
}

impl SourceConfig {
    /// `logged_through`: the change log's newest committed transaction
    /// (the MySQL source discards re-sent transactions at or below it).
    async fn connect(
        self,
        resume: Option<Position>,
        logged_through: Option<Position>,
    ) -> Result<AnySource, ConnectorError> {
        Ok(match self {
            SourceConfig::Postgres(config) => {
                AnySource::Postgres(Box::new(PgSource::connect(config, resume).await?))
            }
            SourceConfig::Mysql(config) => AnySource::Mysql(Box::new(
                MySqlSource::connect_after(config, resume, logged_through).await?,
            )),
        })
    }
}

/// How to connect to a pipeline's target.
#[derive(Clone, Debug)]
pub(crate) enum SinkConfig {
    Postgres(PgSinkConfig),
    Mysql(MySqlSinkConfig),
}

impl SinkConfig {
    /// The same sink, its checkpoint writes fenced by `fence`.
    pub(crate) fn with_fence(mut self, fence: Fence) -> Self {
        match &mut self {
            SinkConfig::Postgres(config) => config.fence = fence,
            SinkConfig::Mysql(config) => config.fence = fence,
        }
        self
    }

    async fn connect(self) -> Result<AnySink, ConnectorError> {
        Ok(match self {
            SinkConfig::Postgres(config) => {
                AnySink::Postgres(Box::new(PgSink::connect(config).await?))
            }
            SinkConfig::Mysql(config) => {
                AnySink::Mysql(Box::new(MySqlSink::connect(config).await?))
            }
        })
    }
}

/// The source of a store, capturing `tables`.
pub(crate) fn source_config(
    name: &str,
    store: &StoreConfig,
    tables: Vec<TableId>,
) -> Result<SourceConfig, ConnectorError> {
    let password = store_password(store)?;
    Ok(match store {
        StoreConfig::Postgres(pg) => SourceConfig::Postgres(PgSourceConfig {
            store: name.to_string(),
            url: pg.url.clone(),
            password,
            slot: pg.slot_name(name),
            publication: pg.publication_name(name),
            tables,
            echo_origins: EchoOrigins::default(),
            confirmed_means_applied: pg.acknowledge == Acknowledge::Applied,
            tls: pg.tls.clone(),
        }),
        StoreConfig::Mysql(mysql) => SourceConfig::Mysql(MySqlSourceConfig {
            store: name.to_string(),
            url: mysql.url.clone(),
            password,
            server_id: mysql.server_id,
            tables,
            zero_dates: match mysql.zero_dates {
                crate::config::ZeroDates::Error => callosum_mysql::ZeroDates::Error,
                crate::config::ZeroDates::Null => callosum_mysql::ZeroDates::Null,
            },
            time_zone: mysql.time_zone,
            echo_origins: EchoOrigins::default(),
            tls: mysql.tls.clone(),
            dump_write_timeout: None,
        }),
    })
}

/// The sink of a pipeline, connected, behind the pipeline's table maps
/// (mirror mode: none), its checkpoint writes fenced by `fence`, as every
/// path that applies changes uses it.
pub(super) async fn connect_pipeline_sink(
    pipeline: &PipelineConfig,
    from: &StoreConfig,
    to: &StoreConfig,
    fence: Fence,
) -> Result<MappedSink<AnySink>, ConnectorError> {
    let sink = sink_config(pipeline, from, to)?
        .with_fence(fence)
        .connect()
        .await?;
    Ok(MappedSink::new(sink, pipeline.table_maps(from, to)))
}

/// The sink of a pipeline: the tables it writes, each under the table its
/// events arrive as ([`PipelineConfig::sink_tables`]).
pub(crate) fn sink_config(
    pipeline: &PipelineConfig,
    from: &StoreConfig,
    to: &StoreConfig,
) -> Result<SinkConfig, ConnectorError> {
    let password = store_password(to)?;
    let tables = pipeline.sink_tables(from, to);
    Ok(match to {
        StoreConfig::Mysql(mysql) => SinkConfig::Mysql(MySqlSinkConfig {
            store: pipeline.to.clone(),
            url: mysql.url.clone(),
            password,
            pipeline: pipeline.name.clone(),
            tables,
            time_zone: mysql.time_zone,
            tls: mysql.tls.clone(),
            fence: Fence::default(),
        }),
        StoreConfig::Postgres(pg) => SinkConfig::Postgres(PgSinkConfig {
            store: pipeline.to.clone(),
            url: pg.url.clone(),
            password,
            pipeline: pipeline.name.clone(),
            tables,
            tls: pg.tls.clone(),
            fence: Fence::default(),
        }),
    })
}

struct CaptureWorker {
    store: String,
    ack: AckPolicy,
    /// The sinks of the pipelines reading this store, by pipeline: their
    /// checkpoints are where an empty change log resumes.
    reader_sinks: Vec<(String, SinkConfig)>,
    config: StoreConfig,
    tables: Vec<TableId>,
    /// Sinks of pipelines that write into this store.
    echo_targets: Vec<SinkConfig>,
    /// Which of their writes the source keeps, with their origin store.
    echo_origins: EchoOrigins,
    pipelines: Vec<String>,
    metrics: StoreMetrics,
    status: Arc<AgentStatus>,
    /// With `[lease]`: the binlog dump's `net_write_timeout`
    /// ([`MySqlSourceConfig::dump_write_timeout`]).
    dump_write_timeout: Option<Duration>,
}

struct StoreObserver<'a> {
    metrics: &'a StoreMetrics,
    status: &'a AgentStatus,
    pipelines: &'a [String],
}

impl CaptureObserver for StoreObserver<'_> {
    fn committed(&mut self, events: u64) {
        self.metrics.source_events.inc_by(events);
    }

    fn acknowledged(&mut self, position: &Position) {
        let text = position.to_string();
        for pipeline in self.pipelines {
            self.status.set_source_position(pipeline, &text);
        }
    }
}

impl CaptureWorker {
    async fn run(self, mut writer: LogWriter, mut shutdown: watch::Receiver<bool>) {
        let mut retry = RetryPolicy::default();
        loop {
            if crate::shutdown::is_requested(&shutdown) {
                return;
            }
            let result = self
                .capture_once(&mut writer, &mut shutdown, &mut retry)
                .await;
            let err = match result {
                Ok(()) => return,
                Err(err) => err,
            };
            self.metrics.record_error(err.kind);
            for pipeline in &self.pipelines {
                self.status.set_error(pipeline, &err.to_string());
                self.status.set_source_connected(pipeline, false);
            }
            // what was committed before the failure is still good: make it
            // durable now (without acknowledging; the next connection does)
            writer.abandon_open();
            if err.class() == ErrorClass::Transient {
                if let Err(flush_err) = writer.flush().await {
                    error!(error = %flush_err, "change log flush failed; capture stops without acknowledging");
                    self.halt(&ConnectorError::from(flush_err));
                    return;
                }
                let delay = retry.next_delay();
                self.metrics.retries.inc();
                warn!(error = %err, attempt = retry.attempts(), delay_ms = delay.as_millis() as u64, "capture failed, retrying");
                if sleep_or_stop(delay, &mut shutdown).await {
                    return;
                }
            } else {
                error!(error = %err, "capture stopped");
                self.halt(&err);
                return;
            }
        }
    }

    fn halt(&self, err: &ConnectorError) {
        for pipeline in &self.pipelines {
            self.status
                .set_state(pipeline, PipelineState::Halted, Some(&err.to_string()));
        }
    }

    async fn capture_once(
        &self,
        writer: &mut LogWriter,
        shutdown: &mut watch::Receiver<bool>,
        retry: &mut RetryPolicy,
    ) -> Result<(), ConnectorError> {
        let mut config = source_config(&self.store, &self.config, self.tables.clone())?;
        match &mut config {
            SourceConfig::Postgres(c) => c.echo_origins = self.echo_origins.clone(),
            SourceConfig::Mysql(c) => {
                c.echo_origins = self.echo_origins.clone();
                c.dump_write_timeout = self.dump_write_timeout;
            }
        }
        // a store that is also a target: its checkpoint table must exist
        // before the publication is made, or Callosum's own writes to it
        // would be captured and sent back
        for target in &self.echo_targets {
            if let SinkConfig::Postgres(target) = target {
                callosum_postgres::ensure_checkpoint_table(target).await?;
            }
        }
        let resume = match writer.resume_position() {
            Some(position) => Some(position),
            None => self.oldest_target_checkpoint().await?,
        };
        let logged_through = writer.last_position().map_err(ConnectorError::from)?;
        let mut source = config.connect(resume.clone(), logged_through).await?;
        info!(resume = %resume.as_ref().map_or("slot".to_string(), |p| p.to_string()), "capturing");
        for pipeline in &self.pipelines {
            self.status.set_source_connected(pipeline, true);
        }
        retry.reset();
        let mut observer = StoreObserver {
            metrics: &self.metrics,
            status: &self.status,
            pipelines: &self.pipelines,
        };
        capture::capture(&mut source, writer, &self.ack, &mut observer, shutdown).await
    }

    /// Where a source resumes when the change log holds nothing (a first
    /// start, or a `data_dir` that was lost): the oldest checkpoint among
    /// the targets of the store's pipelines, so that what was captured but
    /// not applied is read again from the source (the slot, acknowledged
    /// only up to what was applied, or the binlog). `None` when no target
    /// has a checkpoint yet: a first start begins at the slot or at the
    /// binlog's current position. A pipeline without a checkpoint while
    /// others have one starts where they resume.
    async fn oldest_target_checkpoint(&self) -> Result<Option<Position>, ConnectorError> {
        let mut oldest: Option<(String, Position)> = None;
        for (pipeline, sink) in &self.reader_sinks {
            let mut sink = sink.clone().connect().await?;
            let Some(checkpoint) = sink.checkpoint().await? else {
                continue;
            };
            let older = match &oldest {
                None => true,
                Some((_, current)) => match checkpoint.partial_cmp(current) {
                    Some(order) => order.is_lt(),
                    None => {
                        return Err(ConnectorError::new(
                            ErrorKind::PositionLost,
                            format!(
                                "store `{}`: the checkpoints of pipeline `{pipeline}` ({checkpoint}) and of the store's other pipelines ({current}) cannot be compared",
                                self.store
                            ),
                        )
                        .with_hint("each pipeline's checkpoint row must come from this store; delete a stale row from callosum_checkpoint in that pipeline's target"))
                    }
                },
            };
            if older {
                oldest = Some((pipeline.clone(), checkpoint));
            }
        }
        if let Some((pipeline, position)) = &oldest {
            info!(pipeline = %pipeline, resume = %position, "change log is empty: resuming from the oldest target checkpoint");
        }
        Ok(oldest.map(|(_, position)| position))
    }
}

/// `callosum status`: asks the running agent over its HTTP listener.
pub async fn print_status(config: &Config) -> anyhow::Result<()> {
    let body = crate::http::fetch_status(config.http.listen)
        .await
        .with_context(|| {
            format!(
                "cannot reach the agent on {} ([http] listen); is `callosum run` running?",
                config.http.listen
            )
        })?;
    print!("{}", crate::http::format_status(&body));
    Ok(())
}

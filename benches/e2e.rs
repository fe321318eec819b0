//! End-to-end benchmark: throwaway servers from the test kit, the workload
//! of design.md §7, the release agent as a child process (so its own peak
//! RSS can be read from /proc), and a report in markdown and JSON.
//!
//! ```text
//! cargo bench --bench e2e -- --quick        # a tenth of the sizes, ~5 min
//! cargo bench --bench e2e                   # full sizes
//! cargo bench --bench e2e -- --only drain   # scenarios whose name contains "drain"
//! ```
//!
//! See BENCHMARKS.md for what each scenario measures and how.

use callosum::testkit::{MariaDbServer, PgServer};
use mysql_async::prelude::Queryable;
use serde_json::{json, Value as Json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Res<T> = anyhow::Result<T>;

/// Rows per transaction of the backlog workload.
const TXN_SIZE: i64 = 100;
/// Rows per statement of the plain-client baseline.
const BASELINE_BATCH: usize = 500;
/// How long a drain may take before the scenario fails.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1800);

const PG_DDL: &str = "CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL,
    status varchar(32) NOT NULL,
    amount numeric(12,2) NOT NULL,
    note varchar(200),
    updated_at timestamp NOT NULL
)";

const MY_DDL: &str = "CREATE TABLE orders (
    id BIGINT PRIMARY KEY,
    customer_id BIGINT NOT NULL,
    status VARCHAR(32) NOT NULL,
    amount DECIMAL(12,2) NOT NULL,
    note VARCHAR(200),
    updated_at DATETIME(6) NOT NULL
)";

// ---------------------------------------------------------------- options

#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    only: Vec<String>,
    build: bool,
    latency_seconds: u64,
}

/// `--acknowledge applied|logged`: the `acknowledge` of every PostgreSQL
/// source store (unset: the agent's default, `applied`), to measure what
/// acknowledging only after apply costs.
static ACKNOWLEDGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            quick: false,
            only: Vec::new(),
            build: true,
            latency_seconds: 0,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--no-build" => o.build = false,
                "--only" => o.only.extend(args.next()),
                "--acknowledge" => {
                    let rule = args.next().unwrap_or_default();
                    assert!(
                        rule == "applied" || rule == "logged",
                        "--acknowledge takes applied or logged"
                    );
                    let _ = ACKNOWLEDGE.set(rule);
                }
                "--latency-seconds" => {
                    o.latency_seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(0)
                }
                _ => {} // `--bench` and friends from cargo
            }
        }
        if o.latency_seconds == 0 {
            o.latency_seconds = if o.quick { 12 } else { 60 };
        }
        o
    }
    fn drain_changes(&self) -> i64 {
        if self.quick {
            100_000
        } else {
            1_000_000
        }
    }
    fn single_changes(&self) -> i64 {
        if self.quick {
            10_000
        } else {
            100_000
        }
    }
    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| scenario.contains(o.as_str()))
    }
}

// ---------------------------------------------------------------- results

#[derive(Debug, Clone, Default)]
struct Outcome {
    scenario: String,
    status: &'static str,
    reason: Option<String>,
    changes: Option<i64>,
    seconds: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    peak_rss_bytes: Option<u64>,
    extra: Vec<(&'static str, Json)>,
}

impl Outcome {
    fn new(scenario: &str) -> Outcome {
        Outcome {
            scenario: scenario.to_string(),
            status: "ok",
            ..Outcome::default()
        }
    }
    fn skipped(scenario: &str, reason: impl Into<String>) -> Outcome {
        Outcome {
            status: "skipped",
            reason: Some(reason.into()),
            ..Outcome::new(scenario)
        }
    }
    fn failed(scenario: &str, err: &anyhow::Error) -> Outcome {
        Outcome {
            status: "failed",
            reason: Some(format!("{err:#}")),
            ..Outcome::new(scenario)
        }
    }
    fn rate(&self) -> Option<f64> {
        Some(self.changes? as f64 / self.seconds?)
    }
    fn to_json(&self) -> Json {
        let mut m = serde_json::Map::new();
        m.insert("scenario".into(), json!(self.scenario));
        m.insert("status".into(), json!(self.status));
        let mut put = |k: &str, v: Json| {
            if !v.is_null() {
                m.insert(k.into(), v);
            }
        };
        put("reason", json!(self.reason));
        put("changes", json!(self.changes));
        put("seconds", json!(self.seconds.map(round3)));
        put("changes_per_s", json!(self.rate().map(|r| r.round())));
        put("p50_ms", json!(self.p50_ms.map(round3)));
        put("p99_ms", json!(self.p99_ms.map(round3)));
        put("max_ms", json!(self.max_ms.map(round3)));
        put("peak_rss_bytes", json!(self.peak_rss_bytes));
        for (k, v) in &self.extra {
            put(k, v.clone());
        }
        Json::Object(m)
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

// ---------------------------------------------------------------- workload

/// How many transactions back updates and deletes reach: more than an
/// apply batch (5,000 changes = 50 transactions of 100), so the agent's
/// net-effect planner cannot fold an insert and its later update or delete
/// into one statement (only the first `LAG` transactions touch their own rows).
const LAG: i64 = 60;

/// The workload of design.md §7 in transactions of `size` changes (a
/// multiple of 10): transaction `k` inserts `size/2` new rows, updates 40 %
/// (the first rows of transaction `k - LAG`) and deletes 10 % (the last rows
/// of transaction `k - LAG`). The first `LAG` transactions update and delete
/// rows they inserted themselves; the next `LAG` delete already-updated rows
/// instead. Every statement touches exactly its share of rows.
#[derive(Debug, Clone, Copy)]
struct Txn {
    ins: (i64, i64),
    upd: (i64, i64),
    del: (i64, i64),
}

fn txn(k: i64, size: i64) -> Txn {
    let (h, u, d) = (size / 2, size * 2 / 5, size / 10);
    let first = |k: i64| h * k + 1;
    let old = if k < LAG { k } else { k - LAG };
    let del = if (LAG..2 * LAG).contains(&k) {
        first(old) + u - d
    } else {
        first(old) + u
    };
    Txn {
        ins: (first(k), first(k) + h - 1),
        upd: (first(old), first(old) + u - 1),
        del: (del, del + d - 1),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Engine {
    Pg,
    My,
}

/// Values of row `id` as SQL literals (same text on both engines).
fn row_literals(id: i64, updated: bool) -> String {
    let cents = (id * 37) % 1_000_000 + if updated { 100 } else { 0 };
    let secs = id % 86_400;
    let day = 1 + (id / 86_400) % 28 + i64::from(updated);
    format!(
        "({id},{},'{}',{}.{:02},'order {id}: two pallets, deliver to the back door','2024-02-{day:02} {:02}:{:02}:{:02}')",
        id % 997,
        if updated { "shipped" } else { "new" },
        cents / 100,
        cents % 100,
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
    )
}

fn insert_sql(out: &mut String, ids: impl Iterator<Item = i64>) {
    out.push_str("INSERT INTO orders VALUES ");
    for (n, id) in ids.enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(&row_literals(id, false));
    }
    out.push(';');
}

fn update_sql(out: &mut String, engine: Engine, from: i64, to: i64) {
    let day = match engine {
        Engine::Pg => "interval '1 day'",
        Engine::My => "INTERVAL 1 DAY",
    };
    let _ = write!(
        out,
        "UPDATE orders SET status='shipped', amount=amount+1, updated_at=updated_at+{day} WHERE id BETWEEN {from} AND {to};"
    );
}

fn delete_sql(out: &mut String, from: i64, to: i64) {
    let _ = write!(out, "DELETE FROM orders WHERE id BETWEEN {from} AND {to};");
}

/// The SQL of transaction `k` in multi-row statements (`size` changes in
/// one transaction), or as `size` one-row transactions.
fn txn_sql(out: &mut String, engine: Engine, k: i64, size: i64, one_row_txns: bool) {
    let t = txn(k, size);
    if !one_row_txns {
        out.push_str("BEGIN;");
        insert_sql(out, t.ins.0..=t.ins.1);
        update_sql(out, engine, t.upd.0, t.upd.1);
        delete_sql(out, t.del.0, t.del.1);
        out.push_str("COMMIT;");
        return;
    }
    for id in t.ins.0..=t.ins.1 {
        out.push_str("BEGIN;");
        insert_sql(out, std::iter::once(id));
        out.push_str("COMMIT;");
    }
    for id in t.upd.0..=t.upd.1 {
        out.push_str("BEGIN;");
        update_sql(out, engine, id, id);
        out.push_str("COMMIT;");
    }
    for id in t.del.0..=t.del.1 {
        out.push_str("BEGIN;");
        delete_sql(out, id, id);
        out.push_str("COMMIT;");
    }
}

/// Source database handle.
enum Db {
    Pg(tokio_postgres::Client),
    My(mysql_async::Pool),
}

impl Db {
    async fn connect(engine: Engine, url: &str) -> Res<Db> {
        Ok(match engine {
            Engine::Pg => {
                let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                Db::Pg(client)
            }
            Engine::My => Db::My(mysql_async::Pool::new(url)),
        })
    }
    fn engine(&self) -> Engine {
        match self {
            Db::Pg(_) => Engine::Pg,
            Db::My(_) => Engine::My,
        }
    }
    async fn exec(&self, sql: &str) -> Res<()> {
        match self {
            Db::Pg(c) => c.batch_execute(sql).await?,
            Db::My(p) => p.get_conn().await?.query_drop(sql).await?,
        }
        Ok(())
    }
    /// First column of the first row, as text.
    async fn scalar(&self, sql: &str) -> Res<Option<String>> {
        Ok(match self {
            Db::Pg(c) => c
                .simple_query(sql)
                .await?
                .into_iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                }),
            Db::My(p) => {
                let row: Option<mysql_async::Row> = p.get_conn().await?.query_first(sql).await?;
                row.and_then(|r| {
                    r.get_opt::<Option<String>, _>(0)
                        .and_then(Result::ok)
                        .flatten()
                })
            }
        })
    }
    async fn rows(&self, sql: &str) -> Res<Vec<String>> {
        Ok(match self {
            Db::Pg(c) => c
                .simple_query(sql)
                .await?
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some(r.get(0).unwrap_or("").to_string())
                    }
                    _ => None,
                })
                .collect(),
            Db::My(p) => p.get_conn().await?.query::<String, _>(sql).await?,
        })
    }
    /// count, sum(id), sum(amount) of `orders`, as text.
    async fn digest(&self) -> Res<String> {
        let sql = match self.engine() {
            Engine::Pg => "SELECT count(*)::text || '/' || coalesce(sum(id),0)::text || '/' || coalesce(sum(amount),0)::text FROM orders",
            Engine::My => "SELECT CONCAT(count(*), '/', coalesce(sum(id),0), '/', coalesce(sum(amount),0)) FROM orders",
        };
        Ok(self.scalar(sql).await?.unwrap_or_default())
    }
    /// Every row of `orders` in canonical text, ordered by id.
    async fn all_rows(&self) -> Res<Vec<String>> {
        let sql = match self.engine() {
            Engine::Pg => "SELECT concat_ws('|', id, customer_id, status, amount, note, to_char(updated_at, 'YYYY-MM-DD HH24:MI:SS.US')) FROM orders ORDER BY id",
            Engine::My => "SELECT CONCAT_WS('|', id, customer_id, status, amount, note, DATE_FORMAT(updated_at, '%Y-%m-%d %H:%i:%s.%f')) FROM orders ORDER BY id",
        };
        self.rows(sql).await
    }
}

/// Writes `changes` changes in transactions of `size` (one-row
/// transactions when `one_row_txns`), as fast as one client can; returns
/// the seconds it took.
async fn load_workload(db: &Db, changes: i64, one_row_txns: bool) -> Res<f64> {
    let started = Instant::now();
    if let Db::Pg(c) = db {
        // the loader's commits need not wait for the WAL flush
        c.batch_execute("SET synchronous_commit = off").await?;
    }
    let txns = changes / TXN_SIZE;
    let per_trip = if one_row_txns { 2 } else { 20 };
    let mut sql = String::with_capacity(1 << 20);
    let mut k = 0;
    while k < txns {
        sql.clear();
        for _ in 0..per_trip.min(txns - k) {
            txn_sql(&mut sql, db.engine(), k, TXN_SIZE, one_row_txns);
            k += 1;
        }
        db.exec(&sql).await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// What "caught up" means for a source: a position the target's checkpoint
/// (or the native subscription's origin) must reach.
#[derive(Debug, Clone)]
enum Marker {
    /// The WAL insert position read just before the last transaction: only
    /// that transaction's commit LSN is at or above it.
    Lsn(u64),
    /// MariaDB GTID `domain-server-seq` after the last transaction.
    Gtid(u32, u64),
}

async fn pg_insert_lsn(c: &tokio_postgres::Client) -> Res<u64> {
    let row = c
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?;
    parse_lsn(row.get(0)).ok_or_else(|| anyhow::anyhow!("bad lsn"))
}

fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

fn parse_gtid(s: &str) -> Option<(u32, u64)> {
    // possibly several domains: take the first
    let first = s.split(',').next()?.trim();
    let mut parts = first.split('-');
    let domain = parts.next()?.parse().ok()?;
    let _server: u32 = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    Some((domain, seq))
}

/// Loads the workload and returns the marker the drain must reach.
async fn load_marked(db: &Db, changes: i64, one_row_txns: bool) -> Res<(f64, Marker)> {
    // all but the last transaction, then the marker, then the last one
    let txns = changes / TXN_SIZE;
    let head = (txns - 1) * TXN_SIZE;
    let mut seconds = load_workload(db, head, one_row_txns).await?;
    let started = Instant::now();
    let mut sql = String::new();
    txn_sql(&mut sql, db.engine(), txns - 1, TXN_SIZE, one_row_txns);
    // the marker goes just before the very last source transaction
    let pieces: Vec<&str> = sql.split_inclusive("COMMIT;").collect();
    let (last, rest) = pieces.split_last().expect("a transaction");
    if !rest.is_empty() {
        db.exec(&rest.concat()).await?;
    }
    let marker = match db {
        Db::Pg(c) => Marker::Lsn(pg_insert_lsn(c).await?),
        Db::My(_) => Marker::Gtid(0, 0),
    };
    db.exec(last).await?;
    let marker = match (db, marker) {
        (Db::My(_), _) => {
            let pos = db
                .scalar("SELECT @@gtid_binlog_pos")
                .await?
                .unwrap_or_default();
            let (d, s) = parse_gtid(&pos).unwrap_or((0, 0));
            Marker::Gtid(d, s)
        }
        (_, m) => m,
    };
    seconds += started.elapsed().as_secs_f64();
    Ok((seconds, marker))
}

// ---------------------------------------------------------------- the agent

struct Agent {
    child: Child,
    stderr: PathBuf,
}

impl Agent {
    fn start(bin: &Path, dir: &Path, config: &str, tag: &str) -> Res<Agent> {
        let cfg = dir.join("callosum.toml");
        std::fs::write(&cfg, config)?;
        let stderr = dir.join(format!("agent-{tag}.log"));
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&cfg)
            .env(
                "CALLOSUM_LOG",
                std::env::var("CALLOSUM_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(
                dir.join(format!("agent-{tag}.out")),
            )?))
            .stderr(Stdio::from(std::fs::File::create(&stderr)?))
            .spawn()?;
        Ok(Agent { child, stderr })
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
    /// `Some(log)` when the agent has exited or a worker stopped (the
    /// process then stays up, serving `/status`).
    fn exited(&mut self) -> Option<String> {
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("agent exited ({status}): {}", log.trim())),
            _ if log.contains("pipeline halted") || log.contains("capture stopped") => Some(log),
            _ => None,
        }
    }
    /// CPU seconds (user + system) the agent used so far.
    fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.pid())
    }
    /// Peak resident set size (VmHWM) so far.
    fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
    /// SIGTERM, then wait (SIGKILL after 60 s).
    async fn stop(mut self) -> Res<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                anyhow::bail!("the agent did not stop within 60 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// CPU seconds (user + system) of one process, all its threads.
fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // fields after the command name (which may hold spaces)
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime, stime are fields 14, 15 (1-based); `rest` starts at field 3
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of a server: the process and its children (PostgreSQL
/// backends, WAL senders, apply workers).
fn server_cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let mut total = process_cpu_seconds(pid);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let ppid = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .and_then(|r| r.1.split_whitespace().nth(1).map(str::to_string))
                })
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(pid) {
                total += process_cpu_seconds(child);
            }
        }
    }
    total
}

/// One pipeline's config: a source and a target store.
struct Pipeline {
    name: String,
    from_engine: Engine,
    from_url: String,
    to_engine: Engine,
    to_url: String,
    /// Slot (PostgreSQL source): unique in the cluster.
    slot: String,
    server_id: u32,
}

impl Pipeline {
    fn toml(&self, data_dir: &Path, listen: &str) -> String {
        let store = |name: &str, engine: Engine, url: &str, source: bool| {
            match engine {
            Engine::Pg if source => format!(
                "[stores.{name}]\nkind = \"postgres\"\nurl = \"{url}\"\nslot = \"{slot}\"\npublication = \"{slot}\"\n{acknowledge}",
                slot = self.slot,
                acknowledge = ACKNOWLEDGE
                    .get()
                    .map(|rule| format!("acknowledge = \"{rule}\"\n"))
                    .unwrap_or_default()
            ),
            Engine::Pg => format!("[stores.{name}]\nkind = \"postgres\"\nurl = \"{url}\"\n"),
            Engine::My => format!(
                "[stores.{name}]\nkind = \"mysql\"\nurl = \"{url}\"\nserver_id = {}\n",
                self.server_id
            ),
        }
        };
        let table = match self.from_engine {
            Engine::Pg => "public.orders".to_string(),
            Engine::My => {
                let db = self
                    .from_url
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .split('?')
                    .next()
                    .unwrap_or("");
                format!("{db}.orders")
            }
        };
        format!(
            "data_dir = \"{}\"\n\n[http]\nlisten = \"{listen}\"\n\n{}\n{}\n[[pipelines]]\nname = \"{}\"\nfrom = \"src\"\nto = \"dst\"\ntables = [\"{table}\"]\non_error = \"halt\"\n",
            data_dir.display(),
            store("src", self.from_engine, &self.from_url, true),
            store("dst", self.to_engine, &self.to_url, false),
            self.name,
        )
    }
}

/// A name unique in this run (slots and subscriptions are cluster-wide).
fn next_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{prefix}_{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The pipeline's checkpoint position in its target, if any.
async fn checkpoint(target: &Db, pipeline: &str) -> Option<String> {
    target
        .scalar(&format!(
            "SELECT source_position FROM callosum_checkpoint WHERE pipeline = '{pipeline}'"
        ))
        .await
        .ok()
        .flatten()
}

fn reached(position: &str, marker: &Marker) -> bool {
    match marker {
        Marker::Lsn(m) => position
            .strip_prefix("pg:")
            .and_then(parse_lsn)
            .is_some_and(|l| l >= *m),
        Marker::Gtid(d, s) => position
            .strip_prefix("gtid:")
            .and_then(parse_gtid)
            .is_some_and(|(pd, ps)| pd == *d && ps >= *s),
    }
}

/// A pipeline prepared for a backlog drain: its slot exists (its first run
/// stopped), the workload is not written yet.
struct Prepared {
    pipeline: Pipeline,
    data_dir: tempfile::TempDir,
    target: Db,
}

/// Starts the agent once so that it creates its slot (PostgreSQL) or
/// records its binlog start (MariaDB), then stops it. `Err(reason)` with
/// the agent's message when it cannot run this pipeline.
async fn prepare(bin: &Path, pipeline: Pipeline, source: &Db) -> Res<Result<Prepared, String>> {
    let data_dir = tempfile::Builder::new()
        .prefix("callosum-bench-")
        .tempdir()?;
    let target = Db::connect(pipeline.to_engine, &pipeline.to_url).await?;
    let config = pipeline.toml(data_dir.path(), &format!("127.0.0.1:{}", free_port()?));
    let mut agent = Agent::start(bin, data_dir.path(), &config, "prepare")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(log) = agent.exited() {
            return Ok(Err(short_reason(&log)));
        }
        let ready = match source {
            Db::Pg(c) => c
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active AND confirmed_flush_lsn IS NOT NULL",
                    &[&pipeline.slot],
                )
                .await?
                .is_some(),
            // no slot to wait for: let the binlog source connect, then
            // give it time to record its start position
            Db::My(_) => checkpoint(&target, &pipeline.name).await.is_some() || {
                tokio::time::sleep(Duration::from_secs(3)).await;
                agent.exited().is_none()
            },
        };
        if ready {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agent did not get ready in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the agent's own checkpoint table must not be mistaken for progress
    agent.stop().await?;
    Ok(Ok(Prepared {
        pipeline,
        data_dir,
        target,
    }))
}

fn short_reason(log: &str) -> String {
    let mut plain = String::with_capacity(log.len());
    let mut in_escape = false;
    for c in log.chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, c) => plain.push(c),
        }
    }
    let log = plain.as_str();
    if let Some(i) = log.find("not available in this version") {
        let start = log[..i].rfind("error=").map_or(0, |s| s + 6);
        let end = log[i..].find(';').map_or(log.len(), |e| i + e);
        return log[start..end].trim().to_string();
    }
    for needle in ["not available in this version", "Error", "error"] {
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            return line.trim().chars().take(300).collect();
        }
    }
    log.chars().take(300).collect()
}

/// Starts the prepared agent on the written backlog and times it until the
/// target's checkpoint reaches `marker`; then checks the target against
/// the source row for row.
async fn drain(
    bin: &Path,
    scenario: &str,
    p: Prepared,
    source: &Db,
    marker: &Marker,
    changes: i64,
    servers: (Option<u32>, Option<u32>),
) -> Res<Outcome> {
    let config = p
        .pipeline
        .toml(p.data_dir.path(), &format!("127.0.0.1:{}", free_port()?));
    let cpu_before = (server_cpu_seconds(servers.0), server_cpu_seconds(servers.1));
    let started = Instant::now();
    let mut agent = Agent::start(bin, p.data_dir.path(), &config, "drain")?;
    // CALLOSUM_BENCH_PERF=<dir>: profile the agent during the drain
    let perf = match std::env::var_os("CALLOSUM_BENCH_PERF") {
        Some(dir) => Some(
            Command::new("perf")
                .args([
                    "record",
                    "-F",
                    "999",
                    "-g",
                    "-p",
                    &agent.pid().to_string(),
                    "-o",
                ])
                .arg(Path::new(&dir).join(format!("{scenario}.perf.data")))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        ),
        None => None,
    };
    let mut rss = 0u64;
    loop {
        if let Some(log) = agent.exited() {
            anyhow::bail!("{}", short_reason(&log));
        }
        rss = rss.max(agent.peak_rss().unwrap_or(0));
        if let Some(pos) = checkpoint(&p.target, &p.pipeline.name).await {
            if reached(&pos, marker) {
                break;
            }
        }
        anyhow::ensure!(started.elapsed() < DRAIN_TIMEOUT, "drain timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    rss = rss.max(agent.peak_rss().unwrap_or(0));
    let agent_cpu = agent.cpu_seconds();
    let cpu = (
        server_cpu_seconds(servers.0) - cpu_before.0,
        server_cpu_seconds(servers.1) - cpu_before.1,
    );
    if let Some(mut perf) = perf {
        let _ = Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status();
        let _ = perf.wait();
    }
    agent.stop().await?;
    let mut out = Outcome::new(scenario);
    out.changes = Some(changes);
    out.seconds = Some(seconds);
    out.peak_rss_bytes = Some(rss);
    out.extra.push(("agent_cpu_s", json!(round3(agent_cpu))));
    out.extra
        .push(("source_server_cpu_s", json!(round3(cpu.0))));
    out.extra
        .push(("target_server_cpu_s", json!(round3(cpu.1))));
    eprintln!(
        "  cpu seconds: agent {agent_cpu:.1}, source server {:.1}, target server {:.1}",
        cpu.0, cpu.1
    );
    verify(source, &p.target).await?;
    out.extra.push(("verified", json!(true)));
    eprintln!(
        "  {scenario}: {changes} changes in {seconds:.2} s ({:.0}/s), peak RSS {} MB",
        changes as f64 / seconds,
        rss >> 20
    );
    Ok(out)
}

/// count + sums, then every row.
async fn verify(source: &Db, target: &Db) -> Res<()> {
    let (a, b) = (source.digest().await?, target.digest().await?);
    anyhow::ensure!(
        a == b,
        "target differs from source: {a} vs {b} (count/sum id/sum amount)"
    );
    let (a, b) = (source.all_rows().await?, target.all_rows().await?);
    if a != b {
        let first = a.iter().zip(&b).position(|(x, y)| x != y);
        anyhow::bail!(
            "target rows differ from source ({} vs {} rows); first difference at {first:?}: {:?} vs {:?}",
            a.len(),
            b.len(),
            first.map(|i| &a[i]),
            first.map(|i| &b[i]),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- native PG

/// PostgreSQL's own logical replication of the same backlog: a publication
/// and a slot made before the workload, a disabled subscription on the
/// target server, enabled after the workload and timed until its origin
/// reaches the marker.
struct Native {
    target: Db,
    sub_client: tokio_postgres::Client,
}

async fn native_prepare(source: &Db, src_url: &str, target_url: &str, name: &str) -> Res<Native> {
    let Db::Pg(c) = source else { unreachable!() };
    c.batch_execute(&format!("CREATE PUBLICATION {name} FOR TABLE orders"))
        .await?;
    c.batch_execute(&format!(
        "SELECT pg_create_logical_replication_slot('{name}', 'pgoutput')"
    ))
    .await?;
    let target = Db::connect(Engine::Pg, target_url).await?;
    target.exec(PG_DDL).await?;
    let (sub_client, conn) = tokio_postgres::connect(target_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let conninfo = pg_conninfo(src_url);
    sub_client
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION {name} CONNECTION '{conninfo}' PUBLICATION {name} \
             WITH (create_slot = false, slot_name = '{name}', enabled = false, copy_data = false)"
        ))
        .await?;
    Ok(Native { target, sub_client })
}

/// `postgres://user@host:port/db` → `host=… port=… user=… dbname=…`.
fn pg_conninfo(url: &str) -> String {
    let u = url::Url::parse(url).expect("test kit url");
    let mut s = format!(
        "host={} port={} dbname={}",
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(5432),
        u.path().trim_start_matches('/')
    );
    if !u.username().is_empty() {
        let _ = write!(s, " user={}", u.username());
    }
    if let Some(p) = u.password() {
        let _ = write!(s, " password={p}");
    }
    s
}

async fn native_drain(
    scenario: &str,
    n: Native,
    name: &str,
    source: &Db,
    marker: &Marker,
    changes: i64,
    servers: (Option<u32>, Option<u32>),
) -> Res<Outcome> {
    let Marker::Lsn(lsn) = marker else {
        unreachable!()
    };
    let cpu_before = (server_cpu_seconds(servers.0), server_cpu_seconds(servers.1));
    let started = Instant::now();
    n.sub_client
        .batch_execute(&format!("ALTER SUBSCRIPTION {name} ENABLE"))
        .await?;
    let mut rss = 0u64;
    loop {
        // the apply worker's pid, for its RSS
        if let Ok(Some(row)) = n
            .sub_client
            .query_opt(
                "SELECT pid FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL",
                &[&name],
            )
            .await
        {
            let pid: i32 = row.get(0);
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(kb) = status
                    .lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|k| k.parse::<u64>().ok())
                {
                    rss = rss.max(kb * 1024);
                }
            }
        }
        let pos = n
            .sub_client
            .query_opt(
                "SELECT remote_lsn::text FROM pg_replication_origin_status s \
                 JOIN pg_subscription sub ON s.external_id = 'pg_' || sub.oid WHERE sub.subname = $1",
                &[&name],
            )
            .await?
            .and_then(|r| r.get::<_, Option<String>>(0));
        if pos
            .as_deref()
            .and_then(parse_lsn)
            .is_some_and(|l| l >= *lsn)
        {
            break;
        }
        anyhow::ensure!(started.elapsed() < DRAIN_TIMEOUT, "native drain timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = (
        server_cpu_seconds(servers.0) - cpu_before.0,
        server_cpu_seconds(servers.1) - cpu_before.1,
    );
    n.sub_client
        .batch_execute(&format!("ALTER SUBSCRIPTION {name} DISABLE"))
        .await?;
    verify(source, &n.target).await?;
    let mut out = Outcome::new(scenario);
    out.changes = Some(changes);
    out.seconds = Some(seconds);
    out.peak_rss_bytes = Some(rss);
    out.extra.push(("verified", json!(true)));
    out.extra
        .push(("source_server_cpu_s", json!(round3(cpu.0))));
    out.extra
        .push(("target_server_cpu_s", json!(round3(cpu.1))));
    out.extra.push((
        "note",
        json!("peak RSS is the subscriber's apply worker (shared buffers it touched included)"),
    ));
    eprintln!(
        "  {scenario}: {changes} changes in {seconds:.2} s ({:.0}/s)",
        changes as f64 / seconds
    );
    Ok(out)
}

// ---------------------------------------------------------------- baseline

/// The same changes from a plain client: per 500 changes of the stream,
/// their net effect as one 500-row-at-most upsert and one delete, autocommit.
async fn baseline(scenario: &str, target: &Db, changes: i64) -> Res<Outcome> {
    target
        .exec(match target.engine() {
            Engine::Pg => PG_DDL,
            Engine::My => MY_DDL,
        })
        .await?;
    // the stream as (id, Some(updated) | None for delete)
    let mut stream: Vec<(i64, Option<bool>)> = Vec::with_capacity(changes as usize);
    for k in 0..changes / TXN_SIZE {
        let t = txn(k, TXN_SIZE);
        stream.extend((t.ins.0..=t.ins.1).map(|id| (id, Some(false))));
        stream.extend((t.upd.0..=t.upd.1).map(|id| (id, Some(true))));
        stream.extend((t.del.0..=t.del.1).map(|id| (id, None)));
    }
    let upsert_tail = match target.engine() {
        Engine::Pg => " ON CONFLICT (id) DO UPDATE SET customer_id=EXCLUDED.customer_id, status=EXCLUDED.status, amount=EXCLUDED.amount, note=EXCLUDED.note, updated_at=EXCLUDED.updated_at",
        Engine::My => " ON DUPLICATE KEY UPDATE customer_id=VALUES(customer_id), status=VALUES(status), amount=VALUES(amount), note=VALUES(note), updated_at=VALUES(updated_at)",
    };
    // build every statement first: only the target's work is timed
    let mut statements = Vec::new();
    for chunk in stream.chunks(BASELINE_BATCH) {
        let mut last: std::collections::BTreeMap<i64, (usize, Option<bool>)> = Default::default();
        for (n, (id, op)) in chunk.iter().enumerate() {
            last.insert(*id, (n, *op));
        }
        let mut net: Vec<(usize, i64, Option<bool>)> =
            last.into_iter().map(|(id, (n, op))| (n, id, op)).collect();
        net.sort();
        let deletes: Vec<String> = net
            .iter()
            .filter(|(_, _, op)| op.is_none())
            .map(|(_, id, _)| id.to_string())
            .collect();
        if !deletes.is_empty() {
            statements.push(format!(
                "DELETE FROM orders WHERE id IN ({})",
                deletes.join(",")
            ));
        }
        let rows: Vec<String> = net
            .iter()
            .filter_map(|(_, id, op)| op.map(|updated| row_literals(*id, updated)))
            .collect();
        if !rows.is_empty() {
            statements.push(format!(
                "INSERT INTO orders VALUES {}{upsert_tail}",
                rows.join(",")
            ));
        }
    }
    let started = Instant::now();
    match target {
        Db::Pg(c) => {
            for s in &statements {
                c.simple_query(s).await?;
            }
        }
        Db::My(p) => {
            let mut conn = p.get_conn().await?;
            for s in &statements {
                conn.query_drop(s).await?;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut out = Outcome::new(scenario);
    out.changes = Some(changes);
    out.seconds = Some(seconds);
    out.extra.push(("statements", json!(statements.len())));
    eprintln!(
        "  {scenario}: {changes} changes in {seconds:.2} s ({:.0}/s)",
        changes as f64 / seconds
    );
    Ok(out)
}

// ---------------------------------------------------------------- latency

/// Offered load at `rate` changes/s for `seconds` through a running
/// PostgreSQL → MariaDB agent, in transactions of 10 changes every
/// `10/rate` s. Latency is measured directly: the client notes when each
/// commit returned; a poller reads the target's `max(id)` every 2 ms (each
/// transaction inserts the next ids, so `max(id)` says which transactions
/// are applied); latency = first poll that sees the transaction − commit.
async fn latency(
    bin: &Path,
    scenario: &str,
    pg: &PgServer,
    my: &MariaDbServer,
    rate: u64,
    seconds: u64,
) -> Res<Outcome> {
    const SIZE: i64 = 10;
    let src_url = pg.fresh_database("lat_src").await?;
    let dst_url = my.fresh_database("lat_dst").await?;
    let source = Db::connect(Engine::Pg, &src_url).await?;
    source.exec(PG_DDL).await?;
    let target = Db::connect(Engine::My, &dst_url).await?;
    target.exec(MY_DDL).await?;
    let pipeline = Pipeline {
        name: format!("lat_{rate}"),
        from_engine: Engine::Pg,
        from_url: src_url.clone(),
        to_engine: Engine::My,
        to_url: dst_url.clone(),
        slot: next_name("bench_slot"),
        server_id: 4201,
    };
    let dir = tempfile::Builder::new()
        .prefix("callosum-bench-")
        .tempdir()?;
    let port = free_port()?;
    let mut agent = Agent::start(
        bin,
        dir.path(),
        &pipeline.toml(dir.path(), &format!("127.0.0.1:{port}")),
        "latency",
    )?;
    let Db::Pg(src) = &source else { unreachable!() };
    let deadline = Instant::now() + Duration::from_secs(60);
    while src
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active AND confirmed_flush_lsn IS NOT NULL",
            &[&pipeline.slot],
        )
        .await?
        .is_none()
    {
        if let Some(log) = agent.exited() {
            return Ok(Outcome::skipped(scenario, short_reason(&log)));
        }
        anyhow::ensure!(Instant::now() < deadline, "slot not ready in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let txns = (rate * seconds) as i64 / SIZE;
    let interval = Duration::from_secs_f64(SIZE as f64 / rate as f64);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(i64, Instant)>();
    let writer = {
        let src_url = src_url.clone();
        tokio::spawn(async move {
            let db = Db::connect(Engine::Pg, &src_url).await?;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut sql = String::new();
            for k in 0..txns {
                tick.tick().await;
                sql.clear();
                txn_sql(&mut sql, Engine::Pg, k, SIZE, false);
                db.exec(&sql).await?;
                let _ = tx.send((txn(k, SIZE).ins.1, Instant::now()));
            }
            Res::Ok(())
        })
    };
    let mut pending: std::collections::VecDeque<(i64, Instant)> = Default::default();
    let mut lat_ms: Vec<f64> = Vec::with_capacity(txns as usize);
    let mut conn = match &target {
        Db::My(p) => p.get_conn().await?,
        Db::Pg(_) => unreachable!(),
    };
    let mut rss_samples = Vec::new();
    let started = Instant::now();
    let mut last_rss = Instant::now();
    while (lat_ms.len() as i64) < txns {
        while let Ok(item) = rx.try_recv() {
            pending.push_back(item);
        }
        if !pending.is_empty() {
            let max: Option<i64> = conn
                .query_first::<Option<i64>, _>("SELECT max(id) FROM orders")
                .await?
                .flatten();
            let seen = Instant::now();
            let max = max.unwrap_or(0);
            while pending.front().is_some_and(|(id, _)| *id <= max) {
                let (_, committed) = pending.pop_front().unwrap();
                lat_ms.push(seen.saturating_duration_since(committed).as_secs_f64() * 1000.0);
            }
        }
        if let Some(log) = agent.exited() {
            anyhow::bail!("{}", short_reason(&log));
        }
        if last_rss.elapsed() > Duration::from_secs(1) {
            rss_samples.push(agent.peak_rss().unwrap_or(0));
            last_rss = Instant::now();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(seconds * 3 + 120),
            "latency run did not finish"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    writer.await??;
    let offered_seconds = started.elapsed().as_secs_f64();
    let rss = agent.peak_rss();
    let hist = scrape_latency_histogram(port).await.ok();
    agent.stop().await?;
    verify(&source, &target).await?;
    lat_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| lat_ms[((lat_ms.len() as f64 - 1.0) * p).round() as usize];
    let mut out = Outcome::new(scenario);
    out.changes = Some(txns * SIZE);
    out.seconds = Some(offered_seconds);
    out.p50_ms = Some(pct(0.50));
    out.p99_ms = Some(pct(0.99));
    out.max_ms = lat_ms.last().copied();
    out.peak_rss_bytes = rss;
    out.extra.push(("offered_changes_per_s", json!(rate)));
    out.extra.push(("transaction_size", json!(SIZE)));
    if let Some(h) = hist {
        out.extra.push(("agent_histogram_p99_le_ms", json!(h)));
    }
    eprintln!(
        "  {scenario}: p50 {:.1} ms p99 {:.1} ms max {:.1} ms, peak RSS {} MB",
        out.p50_ms.unwrap(),
        out.p99_ms.unwrap(),
        out.max_ms.unwrap(),
        rss.unwrap_or(0) >> 20
    );
    Ok(out)
}

/// The upper bound (ms) of the bucket holding the 99th percentile of the
/// agent's own `callosum_end_to_end_latency_seconds`, a cross-check.
async fn scrape_latency_histogram(port: u16) -> Res<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    let buckets: Vec<(f64, f64)> = body
        .lines()
        .filter(|l| l.starts_with("callosum_end_to_end_latency_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    let total = buckets.iter().map(|b| b.1).fold(0.0, f64::max);
    anyhow::ensure!(total > 0.0, "empty histogram");
    let p99 = buckets
        .iter()
        .filter(|b| b.1 >= total * 0.99)
        .map(|b| b.0)
        .fold(f64::INFINITY, f64::min);
    Ok(p99 * 1000.0)
}

// ---------------------------------------------------------------- scenarios

struct Servers {
    pg_src: PgServer,
    pg_dst: PgServer,
    my_src: MariaDbServer,
    my_dst: MariaDbServer,
}

/// A backlog to write once and drain through each of `targets` (and
/// PostgreSQL's own replication when `native` names that scenario).
struct Backlog {
    src_engine: Engine,
    one_row: bool,
    changes: i64,
    targets: Vec<(&'static str, Engine)>,
    native: Option<&'static str>,
}

/// One backlog: a fresh source database with the table, the pipelines
/// prepared (slots made), the native subscription (PostgreSQL sources),
/// the workload written once, then each drain in turn.
async fn backlog(
    bin: &Path,
    s: &Servers,
    opts: &Opts,
    spec: &Backlog,
    results: &mut Vec<Outcome>,
) -> Res<()> {
    let Backlog {
        src_engine,
        one_row,
        changes,
        ref targets,
        native,
    } = *spec;
    let wanted: Vec<&(&str, Engine)> = targets.iter().filter(|(n, _)| opts.wants(n)).collect();
    let native = native.filter(|n| opts.wants(n));
    if wanted.is_empty() && native.is_none() {
        return Ok(());
    }
    let src_url = match src_engine {
        Engine::Pg => s.pg_src.fresh_database("src").await?,
        Engine::My => s.my_src.fresh_database("src").await?,
    };
    let source = Db::connect(src_engine, &src_url).await?;
    source
        .exec(match src_engine {
            Engine::Pg => PG_DDL,
            Engine::My => MY_DDL,
        })
        .await?;
    let mut prepared = Vec::new();
    for (i, (scenario, engine)) in wanted.iter().enumerate() {
        let to_url = match engine {
            Engine::Pg => s.pg_dst.fresh_database("dst").await?,
            Engine::My => s.my_dst.fresh_database("dst").await?,
        };
        let target = Db::connect(*engine, &to_url).await?;
        target
            .exec(match engine {
                Engine::Pg => PG_DDL,
                Engine::My => MY_DDL,
            })
            .await?;
        let pipeline = Pipeline {
            name: format!("bench_{i}"),
            from_engine: src_engine,
            from_url: src_url.clone(),
            to_engine: *engine,
            to_url,
            slot: next_name("bench_slot"),
            server_id: 4201 + i as u32,
        };
        eprintln!("{scenario}: preparing the agent (slot / start position)");
        match prepare(bin, pipeline, &source).await {
            Ok(Ok(p)) => prepared.push((scenario.to_string(), *engine, p)),
            Ok(Err(reason)) => {
                eprintln!("  {scenario}: skipped: {reason}");
                results.push(Outcome::skipped(scenario, reason));
            }
            Err(e) => results.push(Outcome::failed(scenario, &e)),
        }
    }
    let native_name = next_name("bench_native");
    let native_sub = match native {
        Some(n) => {
            let dst = s.pg_dst.fresh_database("native").await?;
            Some((
                n,
                native_prepare(&source, &src_url, &dst, &native_name).await?,
            ))
        }
        None => None,
    };
    if prepared.is_empty() && native_sub.is_none() {
        return Ok(());
    }
    eprintln!(
        "writing the backlog: {changes} changes in {} transactions…",
        if one_row { "1-row" } else { "100-row" }
    );
    let (load_s, marker) = load_marked(&source, changes, one_row).await?;
    eprintln!(
        "  written in {load_s:.1} s ({:.0} changes/s); marker {marker:?}",
        changes as f64 / load_s
    );
    let src_pid = match src_engine {
        Engine::Pg => s.pg_src.pid(),
        Engine::My => s.my_src.pid(),
    };
    let pid_of = |s: &Servers, e: &Engine| match e {
        Engine::Pg => s.pg_dst.pid(),
        Engine::My => s.my_dst.pid(),
    };
    for (scenario, engine, p) in prepared {
        eprintln!("{scenario}: draining");
        match drain(
            bin,
            &scenario,
            p,
            &source,
            &marker,
            changes,
            (src_pid, pid_of(s, &engine)),
        )
        .await
        {
            Ok(mut o) => {
                o.extra.push((
                    "source_write_changes_per_s",
                    json!((changes as f64 / load_s).round()),
                ));
                results.push(o)
            }
            Err(e) => {
                eprintln!("  {scenario}: failed: {e:#}");
                results.push(Outcome::failed(&scenario, &e))
            }
        }
    }
    if let Some((scenario, n)) = native_sub {
        eprintln!("{scenario}: draining through a subscription");
        match native_drain(
            scenario,
            n,
            &native_name,
            &source,
            &marker,
            changes,
            (src_pid, s.pg_dst.pid()),
        )
        .await
        {
            Ok(o) => results.push(o),
            Err(e) => {
                eprintln!("  {scenario}: failed: {e:#}");
                results.push(Outcome::failed(scenario, &e))
            }
        }
    }
    Ok(())
}

fn agent_binary(opts: &Opts) -> Res<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            // <target>/release/deps/e2e-<hash>
            let exe = std::env::current_exe()?;
            exe.ancestors()
                .nth(3)
                .map(Path::to_path_buf)
                .unwrap_or_else(|| root.join("target"))
        }
    };
    let bin = target_dir.join("release").join("callosum");
    if opts.build || !bin.exists() {
        eprintln!("building the release agent (cargo build --release --bin callosum)…");
        let status = Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
            .args(["build", "--release", "--bin", "callosum"])
            .current_dir(root)
            .env("CARGO_TARGET_DIR", &target_dir)
            .status()?;
        anyhow::ensure!(
            status.success(),
            "cargo build --release --bin callosum failed"
        );
    }
    Ok(bin)
}

fn machine() -> Json {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse().ok())
        })
        .unwrap_or(0);
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_bytes": mem_kb * 1024,
    })
}

fn find<'a>(results: &'a [Outcome], name: &str) -> Option<&'a Outcome> {
    results
        .iter()
        .find(|o| o.scenario == name && o.status == "ok")
}

fn ratio(results: &[Outcome], a: &str, b: &str) -> Option<f64> {
    Some(find(results, a)?.rate()? / find(results, b)?.rate()?)
}

fn report(opts: &Opts, results: &[Outcome], target_dir: &Path) -> Res<()> {
    let r_native = ratio(results, "pg_to_pg_drain", "pg_to_pg_native_drain");
    let r_my = ratio(results, "pg_to_mariadb_drain", "mariadb_client_upsert_500");
    let r_pg = ratio(results, "mariadb_to_pg_drain", "pg_client_upsert_500");
    let p99_5k = find(results, "pg_to_mariadb_latency_5000").and_then(|o| o.p99_ms);
    let rss_stream = results
        .iter()
        .filter(|o| o.scenario.contains("latency") && o.status == "ok")
        .filter_map(|o| o.peak_rss_bytes)
        .max();
    let target = |v: Option<f64>, ok: bool| match v {
        None => json!({"status": "not measured"}),
        Some(v) => json!({"value": round3(v), "met": ok}),
    };
    let doc = json!({
        "mode": if opts.quick { "quick" } else { "full" },
        "machine": machine(),
        "scenarios": results.iter().map(Outcome::to_json).collect::<Vec<_>>(),
        "ratio_pg_to_pg_vs_native": r_native.map(round3),
        "targets": {
            "pg_to_pg_vs_native_ge_1_5": target(r_native, r_native.is_some_and(|r| r >= 1.5)),
            "pg_to_mariadb_vs_client_upsert_ge_0_8": target(r_my, r_my.is_some_and(|r| r >= 0.8)),
            "mariadb_to_pg_vs_client_upsert_ge_0_8": target(r_pg, r_pg.is_some_and(|r| r >= 0.8)),
            "p99_ms_at_5000_per_s_lt_50": target(p99_5k, p99_5k.is_some_and(|p| p < 50.0)),
            "streaming_rss_mb_lt_150": target(rss_stream.map(|b| b as f64 / 1048576.0), rss_stream.is_some_and(|b| b < 150 << 20)),
        },
    });
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| scenario | status | changes | seconds | changes/s | p50 ms | p99 ms | max ms | peak RSS MB |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for o in results {
        let status = match &o.reason {
            Some(r) => format!("{}: {}", o.status, r.replace('|', "/")),
            None => o.status.to_string(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            o.scenario,
            status,
            o.changes.map_or("–".into(), |c| c.to_string()),
            fmt_opt(o.seconds, 2),
            fmt_opt(o.rate(), 0),
            fmt_opt(o.p50_ms, 1),
            fmt_opt(o.p99_ms, 1),
            fmt_opt(o.max_ms, 1),
            o.peak_rss_bytes
                .map_or("–".into(), |b| format!("{:.0}", b as f64 / 1048576.0)),
        );
    }
    let _ = writeln!(md, "\n| target | value | met |\n|---|---:|---|");
    for (name, v) in doc["targets"].as_object().unwrap() {
        let _ = writeln!(
            md,
            "| {name} | {} | {} |",
            v.get("value").map_or("–".to_string(), |x| x.to_string()),
            v.get("met")
                .map_or("not measured".to_string(), |x| x.to_string()),
        );
    }
    let dir = target_dir.join("callosum-bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&doc)?)?;
    std::fs::write(dir.join("report.md"), &md)?;
    println!("\n{md}");
    println!("report: {}", dir.join("report.json").display());
    Ok(())
}

async fn run(opts: Opts) -> Res<()> {
    let bin = agent_binary(&opts)?;
    let target_dir = bin
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("target"))
        .to_path_buf();
    eprintln!("starting throwaway servers (2 × PostgreSQL, 2 × MariaDB)…");
    let pg_settings: &[(&str, &str)] = &[("max_wal_size", "4GB"), ("checkpoint_timeout", "30min")];
    let servers = tokio::task::spawn_blocking(move || -> Res<Servers> {
        Ok(Servers {
            pg_src: PgServer::start(pg_settings)?,
            pg_dst: PgServer::start(pg_settings)?,
            my_src: MariaDbServer::start(&[])?,
            my_dst: MariaDbServer::start(&[])?,
        })
    })
    .await??;
    let mut results = Vec::new();
    let n = opts.drain_changes();
    let n1 = opts.single_changes();

    // plain-client baselines: what each target accepts as 500-row upserts
    for (scenario, engine) in [
        ("mariadb_client_upsert_500", Engine::My),
        ("pg_client_upsert_500", Engine::Pg),
    ] {
        if !opts.wants(scenario) {
            continue;
        }
        eprintln!("{scenario}: {n} changes from a plain client");
        let url = match engine {
            Engine::Pg => servers.pg_dst.fresh_database("baseline").await?,
            Engine::My => servers.my_dst.fresh_database("baseline").await?,
        };
        let db = Db::connect(engine, &url).await?;
        results.push(
            baseline(scenario, &db, n)
                .await
                .unwrap_or_else(|e| Outcome::failed(scenario, &e)),
        );
    }

    let backlogs = [
        Backlog {
            src_engine: Engine::Pg,
            one_row: false,
            changes: n,
            targets: vec![
                ("pg_to_mariadb_drain", Engine::My),
                ("pg_to_pg_drain", Engine::Pg),
            ],
            native: Some("pg_to_pg_native_drain"),
        },
        Backlog {
            src_engine: Engine::My,
            one_row: false,
            changes: n,
            targets: vec![("mariadb_to_pg_drain", Engine::Pg)],
            native: None,
        },
        Backlog {
            src_engine: Engine::Pg,
            one_row: true,
            changes: n1,
            targets: vec![
                ("pg_to_mariadb_drain_1row", Engine::My),
                ("pg_to_pg_drain_1row", Engine::Pg),
            ],
            native: Some("pg_to_pg_native_drain_1row"),
        },
    ];
    for spec in &backlogs {
        if let Err(e) = backlog(&bin, &servers, &opts, spec, &mut results).await {
            eprintln!("backlog failed: {e:#}");
            for (t, _) in &spec.targets {
                if opts.wants(t) && !results.iter().any(|o| o.scenario == *t) {
                    results.push(Outcome::failed(t, &e));
                }
            }
        }
    }

    for rate in [1000u64, 5000] {
        let scenario = format!("pg_to_mariadb_latency_{rate}");
        if !opts.wants(&scenario) {
            continue;
        }
        eprintln!(
            "{scenario}: {rate} changes/s for {} s",
            opts.latency_seconds
        );
        let o = latency(
            &bin,
            &scenario,
            &servers.pg_src,
            &servers.my_dst,
            rate,
            opts.latency_seconds,
        )
        .await
        .unwrap_or_else(|e| {
            eprintln!("  {scenario}: failed: {e:#}");
            Outcome::failed(&scenario, &e)
        });
        results.push(o);
    }

    report(&opts, &results, &target_dir)
}

fn main() {
    let opts = Opts::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // on Ctrl-C / SIGTERM, dropping `run` kills the agents it started (the
    // test kit stops the servers on exit)
    let result = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = run(opts) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated")),
        }
    });
    if let Err(e) = result {
        eprintln!("benchmark failed: {e:#}");
        std::process::exit(1);
    }
}

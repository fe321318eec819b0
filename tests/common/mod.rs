//! Shared helpers of the integration tests: fresh databases on the test
//! kit's servers, the agent's config, and row-for-row comparison of a
//! PostgreSQL table with its MariaDB mirror.
#![allow(dead_code)]

pub mod agent_process;
pub mod audit;
pub mod schema;
pub mod store_db;

use mysql_async::prelude::Queryable;
use std::path::Path;
use std::time::Duration;

use callosum::testkit::{self, MariaDbServer, PgServer};

/// A pipeline's two databases, fresh for one test.
pub struct Databases {
    pub pg_url: String,
    pub mysql_url: String,
    pub pg: tokio_postgres::Client,
    pub mysql: mysql_async::Pool,
}

pub async fn fresh_databases(prefix: &str) -> Databases {
    fresh_databases_on(PgServer::shared(), MariaDbServer::shared(), prefix).await
}

/// Fresh databases on the given servers (a test's own, or the shared ones).
pub async fn fresh_databases_on(
    pg_server: &PgServer,
    mysql_server: &MariaDbServer,
    prefix: &str,
) -> Databases {
    init_logging();
    let pg_url = pg_server.fresh_database(prefix).await.unwrap();
    let mysql_url = mysql_server.fresh_database(prefix).await.unwrap();
    let pg = pg_client(&pg_url).await;
    let mysql = mysql_async::Pool::new(mysql_url.as_str());
    Databases {
        pg_url,
        mysql_url,
        pg,
        mysql,
    }
}

/// The agent's logs in the test output, filtered by `CALLOSUM_LOG`
/// (default: warnings).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CALLOSUM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

pub async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

pub async fn mysql_exec(pool: &mysql_async::Pool, sql: &str) {
    let mut conn = pool.get_conn().await.unwrap();
    conn.query_drop(sql).await.unwrap();
}

/// The replication slot of a test's database: slots are cluster-wide, so
/// each test database gets its own.
pub fn slot_name(db: &Databases) -> String {
    let database = db.pg_url.rsplit('/').next().unwrap();
    format!("slot_{database}")
}

/// A pipeline of a test config: name, from store, to store (`crm` is the
/// PostgreSQL store, `erp` the MariaDB one), tables.
pub struct TestPipeline<'a> {
    pub name: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub tables: &'a [&'a str],
}

/// The agent's config for one PostgreSQL → MariaDB pipeline `pg_to_mysql`.
pub fn config_toml(db: &Databases, data_dir: &Path, tables: &[&str], listen: &str) -> String {
    let pipeline = TestPipeline {
        name: "pg_to_mysql",
        from: "crm",
        to: "erp",
        tables,
    };
    config_toml_with(db, data_dir, &[pipeline], listen)
}

/// The agent's config for any pipelines between the test's two databases.
pub fn config_toml_with(
    db: &Databases,
    data_dir: &Path,
    pipelines: &[TestPipeline],
    listen: &str,
) -> String {
    let mut text = stores_toml(db, data_dir, listen);
    for p in pipelines {
        let tables = p
            .tables
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        text += &format!(
            "\n[[pipelines]]\nname = \"{}\"\nfrom = \"{}\"\nto = \"{}\"\ntables = [{tables}]\non_error = \"halt\"\n",
            p.name, p.from, p.to
        );
    }
    text
}

/// Binlog connections to one server need distinct replica ids: tests of one
/// binary run in parallel against the shared server.
pub fn unique_server_id() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    100_000
        + (std::process::id() % 10_000) * 100
        + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn stores_toml(db: &Databases, data_dir: &Path, listen: &str) -> String {
    format!(
        r#"data_dir = "{data_dir}"

[http]
listen = "{listen}"

[stores.crm]
kind = "postgres"
url = "{pg_url}"
slot = "{slot}"

[stores.erp]
kind = "mysql"
url = "{mysql_url}"
server_id = {server_id}
"#,
        data_dir = data_dir.display(),
        pg_url = db.pg_url,
        mysql_url = db.mysql_url,
        slot = slot_name(db),
        server_id = unique_server_id(),
    )
}

/// The value of a counter or gauge sample `name{pipeline="…"}` in the
/// Prometheus text of an agent.
pub fn metric(text: &str, name: &str, pipeline: &str) -> f64 {
    let prefix = format!("{name}{{pipeline=\"{pipeline}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in metrics"))
}

/// How a column's text is compared.
#[derive(Clone, Copy, Debug)]
pub enum Compare {
    Exact,
    /// Parsed as JSON documents (key order and spacing aside).
    Json,
    /// Parsed as floating point numbers.
    Float,
}

/// A table compared across the two engines: the SELECT lists that render
/// each column as canonical text on each side.
pub struct MirroredTable {
    pub name: &'static str,
    pub pg_select: &'static str,
    pub mysql_select: &'static str,
    pub compare: &'static [Compare],
}

pub type Rows = Vec<Vec<Option<String>>>;

pub async fn pg_rows(pg: &tokio_postgres::Client, sql: &str) -> Rows {
    pg.simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

pub async fn mysql_rows(pool: &mysql_async::Pool, sql: &str) -> Rows {
    let mut conn = pool.get_conn().await.unwrap();
    conn.query_drop("SET time_zone = '+00:00'").await.unwrap();
    let rows: Vec<mysql_async::Row> = conn.query(sql).await.unwrap();
    rows.into_iter()
        .map(|row| {
            (0..row.len())
                .map(|i| match row.as_ref(i).unwrap() {
                    mysql_async::Value::NULL => None,
                    mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
                    other => Some(other.as_sql(true).trim_matches('\'').to_string()),
                })
                .collect()
        })
        .collect()
}

fn same(a: &Option<String>, b: &Option<String>, how: Compare) -> bool {
    match (a, b, how) {
        (Some(a), Some(b), Compare::Json) => {
            serde_json::from_str::<serde_json::Value>(a).ok()
                == serde_json::from_str::<serde_json::Value>(b).ok()
        }
        (Some(a), Some(b), Compare::Float) => a.parse::<f64>().ok() == b.parse::<f64>().ok(),
        _ => a == b,
    }
}

/// `None` when both sides hold the same rows; otherwise a description of
/// the first differences (row counts, first differing rows).
pub async fn difference(db: &Databases, table: &MirroredTable) -> Option<String> {
    let pg = pg_rows(
        &db.pg,
        &format!("SELECT {} FROM {} ORDER BY 1", table.pg_select, table.name),
    )
    .await;
    let my = mysql_rows(
        &db.mysql,
        &format!(
            "SELECT {} FROM {} ORDER BY 1",
            table.mysql_select, table.name
        ),
    )
    .await;
    if pg.len() != my.len() {
        return Some(format!(
            "{}: {} rows in PostgreSQL, {} in MariaDB",
            table.name,
            pg.len(),
            my.len()
        ));
    }
    let mut diffs = Vec::new();
    for (p, m) in pg.iter().zip(&my) {
        let equal = p.len() == m.len()
            && p.iter()
                .zip(m)
                .zip(
                    table
                        .compare
                        .iter()
                        .chain(std::iter::repeat(&Compare::Exact)),
                )
                .all(|((a, b), how)| same(a, b, *how));
        if !equal {
            diffs.push(format!("pg {p:?}\n   my {m:?}"));
            if diffs.len() >= 3 {
                break;
            }
        }
    }
    (!diffs.is_empty()).then(|| format!("{}:\n   {}", table.name, diffs.join("\n   ")))
}

/// Waits until every table is equal on both sides, or panics with the
/// differences.
pub async fn wait_until_mirrored(db: &Databases, tables: &[&MirroredTable], timeout: Duration) {
    let started = std::time::Instant::now();
    loop {
        let mut last = None;
        for table in tables {
            if let Some(diff) = difference(db, table).await {
                last = Some(diff);
                break;
            }
        }
        match last {
            None => return,
            Some(diff) if started.elapsed() > timeout => {
                panic!("tables still differ after {timeout:?}:\n{diff}")
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Waits with the test kit's helper and panics with `what` on timeout.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    testkit::wait_until(what, timeout, condition).await.unwrap();
}

/// Waits until the agent captures the MariaDB binlog into PostgreSQL, for
/// the plain `orders` table on both sides: a binlog source starts at the
/// server's position when it connects, so order `id` is written (and
/// rewritten) until it arrives.
pub async fn wait_for_binlog_capture(db: &Databases, id: i64) {
    wait_for("the binlog capture", Duration::from_secs(60), || async {
        mysql_exec(
            &db.mysql,
            &format!("INSERT INTO orders VALUES ({id}, 1, 'first', 1.00, 'x') ON DUPLICATE KEY UPDATE customer_id = customer_id + 1"),
        )
        .await;
        db.pg
            .query_opt("SELECT 1 FROM orders WHERE id = $1", &[&id])
            .await
            .unwrap()
            .is_some()
    })
    .await;
}

/// Waits until the agent has created its replication slot: changes
/// committed before that are not captured (there is no initial snapshot yet).
pub async fn wait_for_slot(db: &Databases) {
    let slot = slot_name(db);
    wait_for("the agent to create its replication slot", Duration::from_secs(60), || async {
        db.pg
            .query_opt(
                // a slot is listed while it still waits for a consistent
                // point; confirmed_flush_lsn is set once it has one
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active AND confirmed_flush_lsn IS NOT NULL",
                &[&slot],
            )
            .await
            .unwrap()
            .is_some()
    })
    .await;
}

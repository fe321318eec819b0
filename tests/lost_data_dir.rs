//! The agent's disk is not the only copy of what it captured: a source is
//! acknowledged only up to what every pipeline applied (`acknowledge =
//! "applied"`, the default), and an empty change log resumes from the
//! targets' checkpoints. So an agent killed while its target was blocked,
//! whose `data_dir` is then deleted, loses nothing when it starts again; with
//! `acknowledge = "logged"` the same loss halts the pipeline with
//! `PositionLost` instead of streaming on with a gap.

mod common;

use common::agent_process::{self, http_get, write_config};
use common::schema::{create_plain_orders, PLAIN_ORDERS as ORDERS};
use common::{Databases, TestPipeline};
use mysql_async::prelude::Queryable;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::process::Child;

const ROWS: i64 = 2_000;

/// One scenario at a time: a target blocked with an open transaction on the
/// shared PostgreSQL server makes another test's slot creation wait for it
/// (a logical slot waits for running transactions).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn free_listen() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Prints the agent's log when the test fails.
struct ShowLogOnPanic(std::path::PathBuf);

impl Drop for ShowLogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "agent log, last lines:\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

fn spawn_agent(config: &Path, log: &Path) -> Child {
    agent_process::spawn_agent(config, log, &[("CALLOSUM_LOG", "info")])
}

/// `callosum_source_events_total{store}`: changes the agent captured.
async fn captured(listen: SocketAddr, store: &str) -> f64 {
    let prefix = format!("callosum_source_events_total{{store=\"{store}\"}} ");
    http_get(listen, "/metrics")
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Inserts `ROWS` orders from id `first` in transactions of 100.
async fn insert_pg(db: &Databases, first: i64) {
    for chunk in (first..first + ROWS).step_by(100) {
        let values: Vec<String> = (chunk..chunk + 100)
            .map(|id| format!("({id}, {}, 'new', {}.50, 'n{id}')", id % 7, id % 100))
            .collect();
        db.pg
            .batch_execute(&format!("INSERT INTO orders VALUES {}", values.join(",")))
            .await
            .unwrap();
    }
}

async fn insert_mysql(db: &Databases, first: i64) {
    for chunk in (first..first + ROWS).step_by(100) {
        let values: Vec<String> = (chunk..chunk + 100)
            .map(|id| format!("({id}, {}, 'new', {}.50, 'n{id}')", id % 7, id % 100))
            .collect();
        common::mysql_exec(
            &db.mysql,
            &format!("INSERT INTO orders VALUES {}", values.join(",")),
        )
        .await;
    }
}

/// What the source loses along with the agent's `data_dir`.
#[derive(Clone, Copy, PartialEq)]
enum SourceLoses {
    Nothing,
    /// The PostgreSQL slot is dropped.
    Slot,
    /// The MariaDB binlog files holding the rows are purged.
    Binlog,
}

/// Which way the scenario runs.
#[derive(Clone, Copy, PartialEq)]
enum Direction {
    PgToMysql,
    MysqlToPg,
}

/// Starts the agent, replicates a first row (so the target has a
/// checkpoint), blocks the target table, writes `ROWS` rows into the source,
/// waits until the agent captured them (the log flushes within 5 ms), kills
/// it with SIGKILL, deletes its `data_dir`, unblocks the target and starts
/// the agent again. Returns the new agent and its HTTP address.
async fn lose_data_dir_while_target_blocked(
    db: &Databases,
    dir: &Path,
    direction: Direction,
    acknowledge: Option<&str>,
    source_loses: SourceLoses,
) -> (Child, SocketAddr, std::path::PathBuf) {
    let listen = free_listen();
    let data_dir = dir.join("data");
    let pipeline = match direction {
        Direction::PgToMysql => TestPipeline {
            name: "pg_to_mysql",
            from: "crm",
            to: "erp",
            tables: &["public.orders"],
        },
        Direction::MysqlToPg => TestPipeline {
            name: "mysql_to_pg",
            from: "erp",
            to: "crm",
            tables: &["orders"],
        },
    };
    let mut toml = common::config_toml_with(db, &data_dir, &[pipeline], &listen.to_string());
    if let Some(rule) = acknowledge {
        toml = toml.replacen(
            "[stores.crm]\n",
            &format!("[stores.crm]\nacknowledge = \"{rule}\"\n"),
            1,
        );
    }
    let config = write_config(dir, &toml);
    let agent_log = dir.join("agent.log");
    let _show_log = ShowLogOnPanic(agent_log.clone());
    let mut agent = spawn_agent(&config, &agent_log);
    let source_store = match direction {
        Direction::PgToMysql => {
            common::wait_for_slot(db).await;
            db.pg
                .batch_execute("INSERT INTO orders VALUES (1, 1, 'first', 1.00, 'x')")
                .await
                .unwrap();
            "crm"
        }
        Direction::MysqlToPg => {
            common::wait_for_binlog_capture(db, 1).await;
            "erp"
        }
    };
    common::wait_until_mirrored(db, &[&ORDERS], Duration::from_secs(60)).await;

    // block the target table: the agent captures and logs, but cannot apply
    let mut mysql_lock = None;
    let pg_lock = match direction {
        Direction::PgToMysql => {
            let mut conn = db.mysql.get_conn().await.unwrap();
            conn.query_drop("LOCK TABLES orders WRITE").await.unwrap();
            mysql_lock = Some(conn);
            None
        }
        Direction::MysqlToPg => {
            let lock = common::pg_client(&db.pg_url).await;
            lock.batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
            Some(lock)
        }
    };
    match direction {
        Direction::PgToMysql => insert_pg(db, 1_000).await,
        Direction::MysqlToPg => insert_mysql(db, 1_000).await,
    }
    common::wait_for(
        "the agent to capture every row",
        Duration::from_secs(60),
        || async { captured(listen, source_store).await >= (ROWS + 1) as f64 },
    )
    .await;
    // the log flushes within 5 ms; acknowledged positions follow within 1 s
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let status = agent_process::kill(&mut agent).await;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    std::fs::remove_dir_all(&data_dir).unwrap();
    if source_loses == SourceLoses::Binlog {
        purge_binlogs(db).await;
    }
    if source_loses == SourceLoses::Slot {
        // the killed agent's walsender may hold the slot for a moment
        let slot = common::slot_name(db);
        common::wait_for(
            "the slot to be dropped",
            Duration::from_secs(30),
            || async {
                db.pg
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await
                    .is_ok()
            },
        )
        .await;
    }
    if let Some(mut conn) = mysql_lock {
        conn.query_drop("UNLOCK TABLES").await.unwrap();
    }
    if let Some(lock) = pg_lock {
        lock.batch_execute("ROLLBACK").await.unwrap();
    }
    let listen_again = free_listen();
    let toml = toml.replace(&listen.to_string(), &listen_again.to_string());
    let config = write_config(dir, &toml);
    (spawn_agent(&config, &agent_log), listen_again, agent_log)
}

/// Rotates the binlog and purges every file but the newest. PURGE silently
/// keeps files a lingering dump thread still reads (the killed agent's):
/// retried until only the newest is left.
async fn purge_binlogs(db: &Databases) {
    common::mysql_exec(&db.mysql, "FLUSH BINARY LOGS").await;
    common::wait_for(
        "the old binlogs to be purged",
        Duration::from_secs(60),
        || async {
            let logs = common::mysql_rows(&db.mysql, "SHOW BINARY LOGS").await;
            let newest = logs.last().unwrap()[0].clone().unwrap();
            common::mysql_exec(&db.mysql, &format!("PURGE BINARY LOGS TO '{newest}'")).await;
            logs.len() == 1
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_to_mysql_loses_nothing_with_the_data_dir() {
    let _serial = SERIAL.lock().await;
    let db = common::fresh_databases("lost_dir_pg").await;
    create_plain_orders(&db).await;
    common::audit::install_mysql(&db.mysql).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, _, agent_log) = lose_data_dir_while_target_blocked(
        &db,
        dir.path(),
        Direction::PgToMysql,
        None,
        SourceLoses::Nothing,
    )
    .await;
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(120)).await;
    common::audit::assert_strictly_increasing(
        &common::audit::mysql_positions(&db.mysql).await,
        &format!("agent log: {}", agent_log.display()),
    );
    agent.start_kill().unwrap();
    let _ = agent.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_to_pg_loses_nothing_with_the_data_dir() {
    let _serial = SERIAL.lock().await;
    let db = common::fresh_databases("lost_dir_my").await;
    create_plain_orders(&db).await;
    common::audit::install_pg(&db.pg).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, _, agent_log) = lose_data_dir_while_target_blocked(
        &db,
        dir.path(),
        Direction::MysqlToPg,
        None,
        SourceLoses::Nothing,
    )
    .await;
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(120)).await;
    common::audit::assert_strictly_increasing(
        &common::audit::pg_positions(&db.pg).await,
        &format!("agent log: {}", agent_log.display()),
    );
    agent.start_kill().unwrap();
    let _ = agent.wait().await;
}

/// With `acknowledge = "logged"` the slot was told about rows only the lost
/// log held: the pipeline halts with `PositionLost`, naming the slot's
/// position and the target's, instead of streaming on with a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_after_a_lost_logged_data_dir_halts_by_name() {
    let _serial = SERIAL.lock().await;
    let db = common::fresh_databases("lost_dir_logged").await;
    create_plain_orders(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, listen, agent_log) = lose_data_dir_while_target_blocked(
        &db,
        dir.path(),
        Direction::PgToMysql,
        Some("logged"),
        SourceLoses::Nothing,
    )
    .await;
    common::wait_for(
        "the pipeline to halt on the gap",
        Duration::from_secs(60),
        || async {
            let status = http_get(listen, "/status").await;
            status.contains("halted") && status.contains("past the resume position")
        },
    )
    .await;
    let metrics = http_get(listen, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("callosum_errors_total")
                && l.contains("kind=\"position_lost\"")
                && !l.ends_with(" 0")),
        "agent log: {}",
        agent_log.display()
    );
    let rows = common::mysql_rows(&db.mysql, "SELECT COUNT(*) FROM orders").await;
    assert_eq!(
        rows[0][0].as_deref(),
        Some("1"),
        "nothing after the gap is applied"
    );
    agent.start_kill().unwrap();
    let _ = agent.wait().await;
}

/// The slot is dropped along with `data_dir` (or re-created by someone):
/// the changes after the target's checkpoint are gone from the source too.
/// Before, a new slot was created silently and streaming went on without
/// them; now the pipeline halts with `PositionLost` and says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_with_a_lost_data_dir_halts_by_name() {
    let _serial = SERIAL.lock().await;
    let db = common::fresh_databases("lost_dir_slot").await;
    create_plain_orders(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, listen, _) = lose_data_dir_while_target_blocked(
        &db,
        dir.path(),
        Direction::PgToMysql,
        None,
        SourceLoses::Slot,
    )
    .await;
    common::wait_for(
        "the pipeline to halt on the dropped slot",
        Duration::from_secs(60),
        || async {
            let status = http_get(listen, "/status").await;
            status.contains("halted") && status.contains("does not exist")
        },
    )
    .await;
    let slots = db
        .pg
        .query(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&common::slot_name(&db)],
        )
        .await
        .unwrap();
    assert!(slots.is_empty(), "no new slot is created over the gap");
    agent.start_kill().unwrap();
    let _ = agent.wait().await;
}

/// The binlog that held the rows the target had not applied is purged while
/// the agent is down with its `data_dir` lost: nothing can provide them, so
/// the pipeline halts with `PositionLost`, says the position is gone and
/// what to do, and applies nothing past the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_binlog_with_a_lost_data_dir_halts_by_name() {
    let _serial = SERIAL.lock().await;
    let db = common::fresh_databases("lost_dir_purged").await;
    create_plain_orders(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, listen, agent_log) = lose_data_dir_while_target_blocked(
        &db,
        dir.path(),
        Direction::MysqlToPg,
        None,
        SourceLoses::Binlog,
    )
    .await;
    common::wait_for(
        "the pipeline to halt on the purged binlog",
        Duration::from_secs(60),
        || async {
            let status = http_get(listen, "/status").await;
            status.contains("halted") && status.contains("purged")
        },
    )
    .await;
    let status = http_get(listen, "/status").await;
    assert!(status.contains("snapshot"), "says what to do: {status}");
    let metrics = http_get(listen, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("callosum_errors_total")
                && l.contains("kind=\"position_lost\"")
                && !l.ends_with(" 0")),
        "agent log: {}",
        agent_log.display()
    );
    let rows: i64 = db
        .pg
        .query_one("SELECT COUNT(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "nothing after the gap is applied");
    agent.start_kill().unwrap();
    let _ = agent.wait().await;
}

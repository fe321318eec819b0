//! Active/standby agents on one config (`[lease]`): two agent processes with
//! their own `data_dir` and listener, one lease row in the target store,
//! PostgreSQL → MariaDB and MariaDB → PostgreSQL.
//! Only the lease holder applies; when it dies (SIGKILL) the standby takes
//! over within 30 s from the targets' checkpoints; when it is paused
//! (SIGSTOP) longer than its lease, the standby takes over and the former
//! leader, woken up (SIGCONT), applies nothing and exits to step down.
//!
//! The checkpoint audit records every checkpoint write with its epoch: real
//! writes (the `transactions` counter moves) must have strictly increasing
//! positions (no transaction applied twice) and never-decreasing epochs (no
//! write of a former leader after its successor's).

mod common;

use common::agent_process::{self, http_get, write_config};
use common::schema::{create_plain_orders, PLAIN_ORDERS as ORDERS};
use common::{Databases, TestPipeline};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Child;

/// One scenario at a time: each runs two agents and a write load on a
/// machine of two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Exit status of an agent that stepped down (`EX_TEMPFAIL`).
const EXIT_STEPPED_DOWN: i32 = 75;

fn free_listen() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Prints both agents' logs when the test fails.
struct ShowLogOnPanic(Vec<PathBuf>);

impl Drop for ShowLogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for path in &self.0 {
                let log = std::fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!(
                    "{}, last lines:\n{}",
                    path.display(),
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
        }
    }
}

/// One of the two agents.
struct TestAgent {
    name: &'static str,
    listen: SocketAddr,
    child: Child,
}

impl TestAgent {
    /// Starts agent `name` on the shared config text `toml` (data_dir,
    /// listener and holder made its own).
    fn start(dir: &Path, toml: &str, name: &'static str) -> (TestAgent, PathBuf) {
        let listen = free_listen();
        let own_dir = dir.join(name);
        std::fs::create_dir_all(&own_dir).unwrap();
        let toml = toml
            .replace("@DATA_DIR@", &own_dir.join("data").display().to_string())
            .replace("@LISTEN@", &listen.to_string())
            .replace("@HOLDER@", name);
        let config = write_config(&own_dir, &toml);
        let log = own_dir.join("agent.log");
        let child = agent_process::spawn_agent(&config, &log, &[("CALLOSUM_LOG", "info")]);
        (
            TestAgent {
                name,
                listen,
                child,
            },
            log,
        )
    }

    async fn status(&self) -> serde_json::Value {
        let text = http_get(self.listen, "/status").await;
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
    }

    async fn role(&self) -> Option<String> {
        self.status().await["lease"]["role"]
            .as_str()
            .map(str::to_owned)
    }

    async fn wait_for_role(&self, role: &str, timeout: Duration) {
        let what = format!("agent {} to be {role}", self.name);
        common::wait_for(&what, timeout, || async {
            self.role().await.as_deref() == Some(role)
        })
        .await;
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("agent running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }
}

/// Which way the scenario replicates; the lease row lives in the target.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Direction {
    PgToMysql,
    MysqlToPg,
}

const PIPELINE: &str = "pipe";

/// `POST path` (no body) to an agent's listener.
async fn http_post(listen: SocketAddr, path: String) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(listen).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {listen}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    })
    .await
    .unwrap()
}

/// The config of both agents, with the lease row in the target store;
/// `@DATA_DIR@`, `@LISTEN@` and `@HOLDER@` are filled per agent.
fn shared_config(db: &Databases, duration: &str, direction: Direction) -> String {
    let (from, to, tables): (_, _, &[&str]) = match direction {
        Direction::PgToMysql => ("crm", "erp", &["public.orders"]),
        Direction::MysqlToPg => ("erp", "crm", &["orders"]),
    };
    let pipeline = TestPipeline {
        name: PIPELINE,
        from,
        to,
        tables,
    };
    let toml = common::config_toml_with(db, Path::new("@DATA_DIR@"), &[pipeline], "@LISTEN@");
    format!("{toml}\n[lease]\nstore = \"{to}\"\nduration = \"{duration}\"\nholder = \"@HOLDER@\"\n")
}

/// The checkpoint audit of the target, with the epoch and the transaction
/// counter of each write.
async fn install_audit(db: &Databases, direction: Direction) {
    if direction == Direction::MysqlToPg {
        db.pg
            .batch_execute(
                "CREATE TABLE callosum_checkpoint (pipeline text PRIMARY KEY, source_position text NOT NULL, applied_at timestamptz NOT NULL, transactions bigint NOT NULL DEFAULT 0);
                 CREATE TABLE checkpoint_audit (seq bigserial PRIMARY KEY, pipeline text, source_position text, transactions bigint, epoch bigint);",
            )
            .await
            .unwrap();
        return;
    }
    for ddl in [
        "CREATE TABLE callosum_checkpoint (pipeline VARCHAR(255) NOT NULL PRIMARY KEY, source_position VARCHAR(255) NOT NULL, applied_at TIMESTAMP(6) NOT NULL, transactions BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB",
        "CREATE TABLE checkpoint_audit (seq BIGINT AUTO_INCREMENT PRIMARY KEY, pipeline VARCHAR(255), source_position VARCHAR(255), transactions BIGINT, epoch BIGINT) ENGINE=InnoDB",
    ] {
        common::mysql_exec(&db.mysql, ddl).await;
    }
}

/// The triggers need the `epoch` column, which the first agent adds to the
/// table created without it (as one created before leases existed).
async fn install_audit_triggers(db: &Databases, direction: Direction) {
    if direction == Direction::MysqlToPg {
        // ALWAYS: the sink's session runs with session_replication_role = replica
        db.pg
            .batch_execute(
                "CREATE FUNCTION audit_checkpoint() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN INSERT INTO checkpoint_audit (pipeline, source_position, transactions, epoch) VALUES (NEW.pipeline, NEW.source_position, NEW.transactions, NEW.epoch); RETURN NEW; END $$;
                 CREATE TRIGGER audit AFTER INSERT OR UPDATE ON callosum_checkpoint FOR EACH ROW EXECUTE FUNCTION audit_checkpoint();
                 ALTER TABLE callosum_checkpoint ENABLE ALWAYS TRIGGER audit;",
            )
            .await
            .unwrap();
        return;
    }
    for ddl in [
        "CREATE TRIGGER audit_insert AFTER INSERT ON callosum_checkpoint FOR EACH ROW INSERT INTO checkpoint_audit (pipeline, source_position, transactions, epoch) VALUES (NEW.pipeline, NEW.source_position, NEW.transactions, NEW.epoch)",
        "CREATE TRIGGER audit_update AFTER UPDATE ON callosum_checkpoint FOR EACH ROW INSERT INTO checkpoint_audit (pipeline, source_position, transactions, epoch) VALUES (NEW.pipeline, NEW.source_position, NEW.transactions, NEW.epoch)",
    ] {
        common::mysql_exec(&db.mysql, ddl).await;
    }
}

/// Checks the audit: the applying writes of the pipeline (those that move
/// its transaction counter; a fence only stores an epoch) have strictly
/// increasing positions, and no write carries an older epoch than one
/// before it. Returns the epochs seen, in order, deduplicated.
async fn assert_audit(db: &Databases, direction: Direction, context: &str) -> Vec<i64> {
    let rows = match direction {
        Direction::PgToMysql => {
            common::mysql_rows(
                &db.mysql,
                "SELECT source_position, CAST(transactions AS CHAR), CAST(epoch AS CHAR) FROM checkpoint_audit WHERE pipeline = 'pipe' ORDER BY seq",
            )
            .await
        }
        Direction::MysqlToPg => {
            common::pg_rows(
                &db.pg,
                "SELECT source_position, transactions::text, epoch::text FROM checkpoint_audit WHERE pipeline = 'pipe' ORDER BY seq",
            )
            .await
        }
    };
    let mut positions = Vec::new();
    let mut epochs: Vec<i64> = Vec::new();
    let mut last_count: Option<i64> = None;
    for row in rows {
        let position = row[0].clone().unwrap();
        let count: i64 = row[1].as_deref().unwrap().parse().unwrap();
        let epoch: i64 = row[2].as_deref().unwrap().parse().unwrap();
        if let Some(&last) = epochs.last() {
            assert!(
                epoch >= last,
                "a checkpoint write of epoch {epoch} came after one of epoch {last}: a former leader committed ({context})"
            );
        }
        if epochs.last() != Some(&epoch) {
            epochs.push(epoch);
        }
        if last_count != Some(count) && !position.is_empty() {
            positions.push(position);
        }
        last_count = Some(count);
    }
    assert!(!positions.is_empty(), "nothing was applied ({context})");
    common::audit::assert_strictly_increasing(&positions, context);
    epochs
}

/// Inserts one row per source transaction, with ids from 1 up, until
/// stopped; returns how many it committed.
fn start_load(
    db: &Databases,
    direction: Direction,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<i64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (pg_url, mysql_url) = (db.pg_url.clone(), db.mysql_url.clone());
    let flag = stop.clone();
    let load = tokio::spawn(async move {
        let pg = common::pg_client(&pg_url).await;
        let mysql = mysql_async::Pool::new(mysql_url.as_str());
        let next = AtomicI64::new(1);
        while !flag.load(Ordering::Relaxed) {
            let id = next.fetch_add(1, Ordering::Relaxed);
            match direction {
                Direction::PgToMysql => {
                    pg.execute(
                        "INSERT INTO orders VALUES ($1::bigint, $1::bigint % 7, 'new', 1.50, 'load')",
                        &[&id],
                    )
                    .await
                    .unwrap();
                }
                Direction::MysqlToPg => {
                    common::mysql_exec(
                        &mysql,
                        &format!(
                            "INSERT INTO orders VALUES ({id}, {}, 'new', 1.50, 'load')",
                            id % 7
                        ),
                    )
                    .await
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        next.load(Ordering::Relaxed) - 1
    });
    (stop, load)
}

async fn target_rows(db: &Databases, direction: Direction) -> i64 {
    let rows = match direction {
        Direction::PgToMysql => {
            common::mysql_rows(&db.mysql, "SELECT CAST(COUNT(*) AS CHAR) FROM orders").await
        }
        Direction::MysqlToPg => common::pg_rows(&db.pg, "SELECT count(*)::text FROM orders").await,
    };
    rows[0][0].as_deref().unwrap().parse().unwrap()
}

async fn wait_for_target_rows(db: &Databases, direction: Direction, at_least: i64, what: &str) {
    common::wait_for(what, Duration::from_secs(60), || async {
        target_rows(db, direction).await >= at_least
    })
    .await;
}

/// Starts agent a, waits for it to be active and streaming, then agent b,
/// which must stay standby and show a as the active agent.
async fn start_pair(
    db: &Databases,
    dir: &Path,
    toml: &str,
    direction: Direction,
) -> (TestAgent, TestAgent, ShowLogOnPanic) {
    let (a, a_log) = TestAgent::start(dir, toml, "agent_a");
    let (b, b_log) = TestAgent::start(dir, toml, "agent_b");
    let guard = ShowLogOnPanic(vec![a_log, b_log]);
    // whichever takes the lease first is "a"
    let deadline = Instant::now() + Duration::from_secs(60);
    let (a, b) = loop {
        if a.role().await.as_deref() == Some("active") {
            break (a, b);
        }
        if b.role().await.as_deref() == Some("active") {
            break (b, a);
        }
        assert!(Instant::now() < deadline, "no agent took the lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // capture starts where the source is when it connects: ready means
    // connected, so the load's first row is captured
    common::wait_for(
        "the active agent to be ready",
        Duration::from_secs(60),
        || async {
            http_get(a.listen, "/readyz")
                .await
                .starts_with("HTTP/1.1 200")
        },
    )
    .await;
    install_audit_triggers(db, direction).await;
    let standby = b.status().await;
    assert_eq!(standby["lease"]["role"], "standby", "{standby}");
    assert_eq!(
        standby["pipelines"][PIPELINE]["state"], "standby",
        "{standby}"
    );
    assert!(
        !http_get(b.listen, "/readyz")
            .await
            .starts_with("HTTP/1.1 200"),
        "a standby is not ready"
    );
    // only the active agent applies: a standby refuses a replay
    let refused = http_post(b.listen, format!("/dlq/{PIPELINE}/replay")).await;
    assert!(
        refused.starts_with("HTTP/1.1 409") && refused.contains("standby"),
        "{refused}"
    );
    common::wait_for(
        "the standby to see the active agent",
        Duration::from_secs(30),
        || async { b.status().await["lease"]["active_holder"] == a.name },
    )
    .await;
    (a, b, guard)
}

/// SIGKILL of the active agent during a load: the standby takes over
/// within 30 s, the target ends equal to the source, nothing twice.
async fn killed_leader(direction: Direction, prefix: &str, duration: &str) {
    let _serial = SERIAL.lock().await;
    let db = common::fresh_databases(prefix).await;
    create_plain_orders(&db).await;
    install_audit(&db, direction).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = shared_config(&db, duration, direction);
    let (mut a, b, _logs) = start_pair(&db, dir.path(), &toml, direction).await;

    let (stop, load) = start_load(&db, direction);
    wait_for_target_rows(&db, direction, 200, "the active agent to apply the load").await;
    let status = agent_process::kill(&mut a.child).await;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let killed = Instant::now();
    b.wait_for_role("active", Duration::from_secs(30)).await;
    let before = target_rows(&db, direction).await;
    wait_for_target_rows(&db, direction, before + 100, "the new leader to apply").await;
    let took_over = killed.elapsed();
    assert!(
        took_over < Duration::from_secs(30),
        "the standby applied {took_over:?} after the leader died"
    );
    stop.store(true, Ordering::Relaxed);
    let inserted = load.await.unwrap();
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(60)).await;
    assert_eq!(target_rows(&db, direction).await, inserted);
    let epochs = assert_audit(&db, direction, "after the takeover from a killed leader").await;
    assert_eq!(epochs.len(), 2, "two leaders, two epochs: {epochs:?}");
    let status = b.status().await;
    assert_eq!(status["pipelines"][PIPELINE]["state"], "streaming");
    assert_eq!(status["pipelines"][PIPELINE]["dead_letters"], 0);
    assert_eq!(status["lease"]["epoch"], epochs[1]);
    eprintln!("{direction:?}: takeover after SIGKILL: {took_over:?} (lease {duration})");
}

/// SIGSTOP of the active agent for longer than its lease during a load:
/// the standby takes over and applies; SIGCONT: the former leader applies
/// nothing and exits to step down.
async fn paused_leader(direction: Direction, prefix: &str) {
    let _serial = SERIAL.lock().await;
    let db = common::fresh_databases(prefix).await;
    create_plain_orders(&db).await;
    install_audit(&db, direction).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = shared_config(&db, "3s", direction);
    let (mut a, b, _logs) = start_pair(&db, dir.path(), &toml, direction).await;

    let (stop, load) = start_load(&db, direction);
    wait_for_target_rows(&db, direction, 200, "the active agent to apply the load").await;
    // paused mid-load: it may hold an open target transaction and the slot
    a.signal("-STOP");
    let paused = Instant::now();
    b.wait_for_role("active", Duration::from_secs(30)).await;
    let before = target_rows(&db, direction).await;
    wait_for_target_rows(&db, direction, before + 100, "the new leader to apply").await;
    let took_over = paused.elapsed();
    assert!(took_over < Duration::from_secs(30), "{took_over:?}");

    a.signal("-CONT");
    let exit = tokio::time::timeout(Duration::from_secs(30), a.child.wait())
        .await
        .expect("the former leader steps down")
        .unwrap();
    assert_eq!(exit.code(), Some(EXIT_STEPPED_DOWN), "{exit:?}");

    let before = target_rows(&db, direction).await;
    wait_for_target_rows(
        &db,
        direction,
        before + 50,
        "the new leader to go on applying",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let inserted = load.await.unwrap();
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(60)).await;
    assert_eq!(target_rows(&db, direction).await, inserted);
    let epochs = assert_audit(&db, direction, "after the paused leader woke up").await;
    assert_eq!(epochs.len(), 2, "two leaders, two epochs: {epochs:?}");
    let status = b.status().await;
    assert_eq!(status["pipelines"][PIPELINE]["state"], "streaming");
    assert_eq!(status["pipelines"][PIPELINE]["dead_letters"], 0);
    eprintln!("{direction:?}: takeover after SIGSTOP: {took_over:?} (lease 3 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_to_mysql_the_standby_takes_over_from_a_killed_leader_without_applying_twice() {
    // the default lease: a takeover within 30 s is the promise
    killed_leader(Direction::PgToMysql, "standby_kill_pg", "15s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_to_mysql_a_paused_leader_that_wakes_up_applies_nothing_and_steps_down() {
    paused_leader(Direction::PgToMysql, "standby_pause_pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_to_pg_the_standby_takes_over_from_a_killed_leader_without_applying_twice() {
    killed_leader(Direction::MysqlToPg, "standby_kill_my", "5s").await;
}

/// The former leader's binlog dump (same `server_id`) is ended by the
/// server when the new leader's registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_to_pg_a_paused_leader_that_wakes_up_applies_nothing_and_steps_down() {
    paused_leader(Direction::MysqlToPg, "standby_pause_my").await;
}

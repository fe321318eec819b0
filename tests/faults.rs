//! Faults caused for real: the target server stopped, the source server
//! restarted or killed, a value the target rejects, a one-million-row
//! transaction under a memory bound.

mod common;

use callosum::agent::Agent;
use callosum::config::Config;
use callosum::http::PipelineState;
use callosum::testkit::{MariaDbServer, PgServer};
use common::agent_process::{spawn_agent, write_pg_to_mysql_config};
use common::schema::{MYSQL_PLAIN_ORDERS as MYSQL_ORDERS, PLAIN_ORDERS as ORDERS};
use common::Databases;
use std::time::{Duration, Instant};

/// `note` is text here, VARCHAR(200) in MariaDB.
const PG_ORDERS: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(32), amount numeric(12,2), note text)";

async fn databases(pg: &PgServer, mysql: &MariaDbServer, prefix: &str) -> Databases {
    let db = common::fresh_databases_on(pg, mysql, prefix).await;
    db.pg.batch_execute(PG_ORDERS).await.unwrap();
    common::mysql_exec(&db.mysql, MYSQL_ORDERS).await;
    db
}

async fn start_agent(db: &Databases, data_dir: &std::path::Path) -> Agent {
    let toml = common::config_toml(db, data_dir, &["public.orders"], "127.0.0.1:0");
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    common::wait_for_slot(db).await;
    agent
}

/// Writes transactions of 5 changes to orders, ids from `first`, until
/// `until`; retries while the source server is down (the client
/// reconnects). Returns the next id.
async fn write_for(url: &str, first: i64, until: Instant) -> i64 {
    let mut id = first;
    let mut pg = common::pg_client(url).await;
    while Instant::now() < until {
        let sql = format!(
            "BEGIN; INSERT INTO orders VALUES ({id}, 1, 'new', 1.00, 'n'), ({}, 2, 'new', 2.00, 'n'), ({}, 3, 'new', 3.00, 'n');
             UPDATE orders SET status = 'paid' WHERE id = {id}; DELETE FROM orders WHERE id = {}; COMMIT;",
            id + 1,
            id + 2,
            id + 1
        );
        match pg.batch_execute(&sql).await {
            Ok(()) => id += 3,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Ok((client, conn)) =
                    tokio_postgres::connect(url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    pg = client;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_down_for_a_minute_then_catches_up() {
    let mysql = tokio::task::spawn_blocking(|| MariaDbServer::start(&[]))
        .await
        .unwrap()
        .unwrap();
    let db = databases(PgServer::shared(), &mysql, "target_down").await;
    let data_dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&db, data_dir.path()).await;
    let next = write_for(&db.pg_url, 0, Instant::now() + Duration::from_secs(2)).await;
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(60)).await;

    mysql.stop_fast().unwrap();
    // the source keeps writing for 60 s while the target is down
    write_for(&db.pg_url, next, Instant::now() + Duration::from_secs(60)).await;
    let state = agent.status.get("pg_to_mysql").unwrap().state;
    assert_eq!(
        state,
        PipelineState::Retrying,
        "the pipeline backs off while the target is down"
    );
    mysql.restart().unwrap();
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(120)).await;
    let metrics = agent.metrics.encode();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("callosum_retries_total{component=\"pg_to_mysql\"}")
                && !l.ends_with(" 0")
        ),
        "retries are counted:\n{metrics}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_restarted_fast_and_killed_mid_stream_loses_nothing() {
    let pg = tokio::task::spawn_blocking(|| PgServer::start(&[]))
        .await
        .unwrap()
        .unwrap();
    let db = databases(&pg, MariaDbServer::shared(), "source_restart").await;
    let data_dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&db, data_dir.path()).await;
    let url = db.pg_url.clone();
    let writer =
        tokio::spawn(
            async move { write_for(&url, 0, Instant::now() + Duration::from_secs(20)).await },
        );
    tokio::time::sleep(Duration::from_secs(4)).await;
    pg.stop_fast().unwrap();
    pg.restart().unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    pg.kill();
    pg.restart().unwrap();
    writer.await.unwrap();
    let db = Databases {
        pg: common::pg_client(&db.pg_url).await,
        ..db
    };
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(120)).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_the_target_rejects_halts_the_pipeline_and_status_says_why() {
    let db = databases(PgServer::shared(), MariaDbServer::shared(), "poison").await;
    let data_dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&db, data_dir.path()).await;
    db.pg
        .batch_execute("INSERT INTO orders VALUES (1, 1, 'ok', 1.00, 'fits')")
        .await
        .unwrap();
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(60)).await;
    // note is text in PostgreSQL, VARCHAR(200) in MariaDB
    db.pg
        .batch_execute("INSERT INTO orders VALUES (2, 1, 'poison', 1.00, repeat('x', 300)); INSERT INTO orders VALUES (3, 1, 'after', 1.00, 'n')")
        .await
        .unwrap();
    common::wait_for("the pipeline to halt", Duration::from_secs(60), || async {
        agent
            .status
            .get("pg_to_mysql")
            .is_some_and(|s| s.state == PipelineState::Halted)
    })
    .await;
    let error = agent.status.get("pg_to_mysql").unwrap().last_error.unwrap();
    assert!(error.contains("note"), "names the column: {error}");
    assert!(error.contains("orders"), "names the table: {error}");
    assert!(!error.contains("xxxxxxxx"), "never the value: {error}");
    assert!(
        agent.status.readiness().is_err(),
        "/readyz is not ready while halted"
    );
    // nothing after the poison row was applied: order is kept
    let rows =
        common::mysql_rows(&db.mysql, "SELECT CAST(id AS CHAR) FROM orders ORDER BY id").await;
    assert_eq!(rows, vec![vec![Some("1".to_string())]]);
    agent.stop().await;
}

fn peak_rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_transaction_replicates_in_bounded_memory() {
    let db = databases(PgServer::shared(), MariaDbServer::shared(), "million").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_pg_to_mysql_config(&db, dir.path(), &["public.orders"]);
    let mut agent = spawn_agent(&config, &dir.path().join("agent.log"), &[]);
    let pid = agent.id().unwrap();
    common::wait_for_slot(&db).await;
    db.pg
        .batch_execute(
            "INSERT INTO orders SELECT g, g % 1000, 'bulk', (g % 10000) + 0.25, 'a note of some length for row ' || g
               FROM generate_series(1, 1000000) g",
        )
        .await
        .unwrap();
    common::wait_for(
        "the million rows in MariaDB",
        Duration::from_secs(900),
        || async {
            common::mysql_rows(&db.mysql, "SELECT CAST(count(*) AS CHAR) FROM orders").await
                == vec![vec![Some("1000000".to_string())]]
        },
    )
    .await;
    let rss = peak_rss_bytes(pid);
    eprintln!(
        "peak RSS of the agent over a 1,000,000-row transaction: {} MB",
        rss >> 20
    );
    assert!(
        rss < 300 << 20,
        "the log is the spill: peak RSS {} MB must stay under 300 MB",
        rss >> 20
    );
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(120)).await;
    agent.start_kill().unwrap();
    let _ = agent.wait().await;
}

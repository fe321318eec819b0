//! MariaDB XA transactions replicated to PostgreSQL by the agent, against
//! real servers: committed ones arrive once and in commit order, rolled back
//! ones never, and a crash between `XA PREPARE` and `XA COMMIT` loses and
//! repeats nothing.

mod common;

use std::time::Duration;

use callosum::agent::Agent;
use callosum::config::Config;
use callosum::testkit::{MariaDbServer, PgServer};
use common::agent_process::{self, spawn_agent, write_config};
use common::schema::PLAIN_ORDERS;
use common::{Databases, TestPipeline};
use mysql_async::prelude::Queryable;

const WAIT: Duration = Duration::from_secs(60);

const PIPELINE: TestPipeline<'static> = TestPipeline {
    name: "mysql_to_pg",
    from: "erp",
    to: "crm",
    tables: &["orders"],
};

/// Orders plus a PostgreSQL table recording the order in which the sink
/// inserted them (the trigger fires under `session_replication_role =
/// replica` too).
async fn create_schema(db: &Databases) {
    common::schema::create_plain_orders(db).await;
    db.pg
        .batch_execute(
            "CREATE TABLE arrivals (seq bigserial PRIMARY KEY, id bigint);
             CREATE FUNCTION record_arrival() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO arrivals (id) VALUES (NEW.id); RETURN NEW; END $$;
             CREATE TRIGGER arrival AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION record_arrival();
             ALTER TABLE orders ENABLE ALWAYS TRIGGER arrival;",
        )
        .await
        .unwrap();
}

async fn arrivals(db: &Databases) -> Vec<i64> {
    db.pg
        .query("SELECT id FROM arrivals WHERE id >= 0 ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn wait_arrivals(db: &Databases, expected: &[i64]) {
    common::wait_for(&format!("arrivals {expected:?}"), WAIT, || async {
        arrivals(db).await.len() >= expected.len()
    })
    .await;
    assert_eq!(arrivals(db).await, expected);
}

/// Waits until the agent streams: inserts a marker row until it arrives.
async fn wait_connected(db: &Databases) {
    common::wait_for("the agent to connect", WAIT, || async {
        common::mysql_exec(
            &db.mysql,
            "INSERT INTO orders (id) VALUES (-1) ON DUPLICATE KEY UPDATE customer_id = coalesce(customer_id, 0) + 1",
        )
        .await;
        db.pg
            .query_opt("SELECT 1 FROM orders WHERE id = -1", &[])
            .await
            .unwrap()
            .is_some()
    })
    .await;
}

/// Runs `XA START; INSERT …; XA END; XA PREPARE` for `xid` and disconnects,
/// leaving the transaction prepared for another session to end.
async fn prepare(db: &Databases, xid: &str, ids: &[i64]) {
    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&db.mysql_url).unwrap())
        .await
        .unwrap();
    conn.query_drop(format!("XA START '{xid}'")).await.unwrap();
    for id in ids {
        conn.query_drop(format!(
            "INSERT INTO orders (id, status) VALUES ({id}, 'xa')"
        ))
        .await
        .unwrap();
    }
    conn.query_drop(format!("XA END '{xid}'")).await.unwrap();
    conn.query_drop(format!("XA PREPARE '{xid}'"))
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
}

/// `XA COMMIT`/`XA ROLLBACK` from another session: the server detaches the
/// prepared transaction from its session when that disconnect is processed,
/// which may be a moment after the client closed it.
async fn end_xa(db: &Databases, sql: &str) {
    let mut conn = db.mysql.get_conn().await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match conn.query_drop(sql).await {
            Ok(()) => return,
            Err(mysql_async::Error::Server(e)) if e.code == 1397 || e.code == 1399 => {
                assert!(std::time::Instant::now() < deadline, "{sql}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xa_transactions_replicate_when_committed_in_commit_order() {
    let db = common::fresh_databases("xa_order").await;
    create_schema(&db).await;
    let data_dir = tempfile::tempdir().unwrap();
    let toml = common::config_toml_with(&db, data_dir.path(), &[PIPELINE], "127.0.0.1:0");
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    wait_connected(&db).await;

    // committed: the rows arrive
    prepare(&db, "xa-order-1", &[1, 2]).await;
    end_xa(&db, "XA COMMIT 'xa-order-1'").await;
    wait_arrivals(&db, &[1, 2]).await;

    // rolled back: nothing of it arrives, the transaction after it does
    prepare(&db, "xa-order-2", &[3]).await;
    end_xa(&db, "XA ROLLBACK 'xa-order-2'").await;
    common::mysql_exec(&db.mysql, "INSERT INTO orders (id) VALUES (4)").await;
    wait_arrivals(&db, &[1, 2, 4]).await;

    // interleaved: prepared first, committed after a normal transaction
    prepare(&db, "xa-order-3", &[5]).await;
    common::mysql_exec(&db.mysql, "INSERT INTO orders (id) VALUES (6)").await;
    wait_arrivals(&db, &[1, 2, 4, 6]).await;
    end_xa(&db, "XA COMMIT 'xa-order-3'").await;
    // one phase: an ordinary transaction
    let mut conn = db.mysql.get_conn().await.unwrap();
    for sql in [
        "XA START 'xa-order-4'",
        "INSERT INTO orders (id) VALUES (7)",
        "XA END 'xa-order-4'",
        "XA COMMIT 'xa-order-4' ONE PHASE",
    ] {
        conn.query_drop(sql).await.unwrap();
    }
    drop(conn);
    wait_arrivals(&db, &[1, 2, 4, 6, 5, 7]).await;
    common::wait_until_mirrored(&db, &[&PLAIN_ORDERS], WAIT).await;
    assert!(
        agent.status.readiness().is_ok(),
        "the pipeline still streams"
    );
    agent.stop().await;
}

/// `GET /metrics` of the agent; empty while it does not answer.
async fn metrics(listen: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(listen).await else {
        return String::new();
    };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body).await;
    body
}

fn source_events(metrics: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix("callosum_source_events_total{store=\"erp\"} ")
            .and_then(|v| v.trim().parse().ok())
    })
}

/// SIGKILL between `XA PREPARE` and `XA COMMIT`, after a later normal
/// transaction is in PostgreSQL: after the restart the XA rows arrive once,
/// and the normal transaction (read again, since the resume position stayed
/// before the prepare) does not enter the change log a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_xa_prepare_and_commit_loses_and_repeats_nothing() {
    // a server of its own: a prepared XA transaction of another test's
    // database would be a gap for an agent started after its prepare
    let mariadb = MariaDbServer::start(&[]).unwrap();
    let db = common::fresh_databases_on(PgServer::shared(), &mariadb, "xa_crash").await;
    create_schema(&db).await;
    common::audit::install_pg(&db.pg).await;
    let dir = tempfile::tempdir().unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = write_config(
        dir.path(),
        &common::config_toml_with(
            &db,
            &dir.path().join("data"),
            &[PIPELINE],
            &listen.to_string(),
        ),
    );
    let agent_log = dir.path().join("agent.log");
    let mut agent = spawn_agent(&config, &agent_log, &[]);
    wait_connected(&db).await;

    prepare(&db, "xa-crash", &[10, 11]).await;
    common::mysql_exec(&db.mysql, "INSERT INTO orders (id) VALUES (12)").await;
    wait_arrivals(&db, &[12]).await;
    agent_process::kill(&mut agent).await;

    let mut agent = spawn_agent(&config, &agent_log, &[]);
    common::wait_for("the restarted agent's metrics", WAIT, || async {
        source_events(&metrics(listen).await).is_some()
    })
    .await;
    end_xa(&db, "XA COMMIT 'xa-crash'").await;
    common::mysql_exec(&db.mysql, "INSERT INTO orders (id) VALUES (13)").await;
    wait_arrivals(&db, &[12, 10, 11, 13]).await;
    common::wait_until_mirrored(&db, &[&PLAIN_ORDERS], WAIT).await;
    // the restarted agent logged the XA's two rows and row 13, not row 12
    // again
    common::wait_for("the restarted agent to count its events", WAIT, || async {
        source_events(&metrics(listen).await).is_some_and(|n| n >= 3.0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(source_events(&metrics(listen).await), Some(3.0));
    common::audit::assert_strictly_increasing(
        &common::audit::pg_positions(&db.pg).await,
        "mysql_to_pg",
    );
    agent_process::kill(&mut agent).await;
}

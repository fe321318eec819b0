//! Both directions under load while the agent is SIGKILLed at ten random
//! moments: afterwards both sides are equal and the checkpoint audits of
//! both targets prove no transaction was applied twice.

mod common;

use common::agent_process;
use common::schema::{create_plain_orders, PLAIN_ORDERS as ORDERS};
use common::TestPipeline;
use mysql_async::prelude::Queryable;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Changes each side writes: 200,000 in all.
const CHANGES_PER_SIDE: i64 = 100_000;
/// Source transactions each side writes (10 changes each).
const TXNS_PER_SIDE: i64 = CHANGES_PER_SIDE / 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_during_200k_changes_in_both_directions() {
    let db = common::fresh_databases("stress").await;
    create_plain_orders(&db).await;
    common::audit::install_mysql(&db.mysql).await;
    common::audit::install_pg(&db.pg).await;
    let dir = tempfile::tempdir().unwrap();
    let config = agent_process::write_config(
        dir.path(),
        &common::config_toml_with(
            &db,
            &dir.path().join("data"),
            &[
                TestPipeline {
                    name: "pg_to_mysql",
                    from: "crm",
                    to: "erp",
                    tables: &["public.orders"],
                },
                TestPipeline {
                    name: "mysql_to_pg",
                    from: "erp",
                    to: "crm",
                    tables: &["orders"],
                },
            ],
            "127.0.0.1:0",
        ),
    );
    let log = dir.path().join("agent.log");
    let mut agent = agent_process::spawn_agent(&config, &log, &[]);
    common::wait_for_slot(&db).await;
    // the binlog source starts where the server is when it first connects
    common::wait_for("the binlog source to capture", Duration::from_secs(60), || async {
        common::mysql_exec(&db.mysql, "INSERT INTO orders (id) VALUES (0) ON DUPLICATE KEY UPDATE customer_id = coalesce(customer_id, 0) + 1").await;
        db.pg.query_opt("SELECT 1 FROM orders WHERE id = 0", &[]).await.unwrap().is_some()
    })
    .await;

    // PostgreSQL writes odd ids, MariaDB even ids: 10-change transactions
    // of inserts, updates of an earlier row, and deletes
    // transactions committed by each writer: the kills are placed in the
    // load's progress, not in wall-clock time, so they land mid-stream
    // however fast the machine writes
    let pg_written = Arc::new(AtomicI64::new(0));
    let mysql_written = Arc::new(AtomicI64::new(0));
    let pg_writer = {
        let url = db.pg_url.clone();
        let written = pg_written.clone();
        tokio::spawn(async move {
            let pg = common::pg_client(&url).await;
            for t in 0..TXNS_PER_SIDE {
                let mut sql = String::from("BEGIN;");
                for i in 0..8 {
                    let id = (t * 8 + i) * 2 + 1;
                    sql += &format!("INSERT INTO orders VALUES ({id}, {t}, 'pg', 1.25, 'crm');");
                }
                let old = (t.max(1) * 8 - 7) * 2 - 1;
                sql += &format!("UPDATE orders SET status = 'pg-upd' WHERE id = {old};");
                sql += &format!("DELETE FROM orders WHERE id = {};", old + 2);
                sql += "COMMIT;";
                pg.batch_execute(&sql).await.unwrap();
                written.store(t + 1, Ordering::Relaxed);
            }
        })
    };
    let mysql_writer = {
        let pool = db.mysql.clone();
        let written = mysql_written.clone();
        tokio::spawn(async move {
            let mut conn = pool.get_conn().await.unwrap();
            for t in 0..TXNS_PER_SIDE {
                let values: Vec<String> = (0..8)
                    .map(|i| format!("({}, {t}, 'erp', 2.50, 'erp')", (t * 8 + i) * 2 + 2))
                    .collect();
                let old = (t.max(1) * 8 - 7) * 2;
                conn.query_drop("START TRANSACTION").await.unwrap();
                conn.query_drop(format!("INSERT INTO orders VALUES {}", values.join(",")))
                    .await
                    .unwrap();
                conn.query_drop(format!(
                    "UPDATE orders SET status = 'erp-upd' WHERE id = {old}"
                ))
                .await
                .unwrap();
                conn.query_drop(format!("DELETE FROM orders WHERE id = {}", old + 2))
                    .await
                    .unwrap();
                conn.query_drop("COMMIT").await.unwrap();
                written.store(t + 1, Ordering::Relaxed);
            }
        })
    };

    // ten random moments between 5 % and 90 % of the load
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261127);
    let mut moments: Vec<i64> = (0..10)
        .map(|_| rng.gen_range(TXNS_PER_SIDE / 20..TXNS_PER_SIDE * 9 / 10))
        .collect();
    moments.sort_unstable();
    for moment in moments {
        let progress = || {
            pg_written
                .load(Ordering::Relaxed)
                .min(mysql_written.load(Ordering::Relaxed))
        };
        while progress() < moment {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        agent_process::kill(&mut agent).await;
        agent = agent_process::spawn_agent(&config, &log, &[]);
    }
    assert!(
        !(pg_writer.is_finished() && mysql_writer.is_finished()),
        "the kills must happen mid-stream"
    );
    pg_writer.await.unwrap();
    mysql_writer.await.unwrap();
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(300)).await;
    let mysql_audit = common::audit::mysql_positions(&db.mysql).await;
    let pg_audit = common::audit::pg_positions(&db.pg).await;
    assert!(
        mysql_audit.len() > 10 && pg_audit.len() > 10,
        "both targets were written"
    );
    common::audit::assert_strictly_increasing(&mysql_audit, "pg_to_mysql");
    common::audit::assert_strictly_increasing(&pg_audit, "mysql_to_pg");
    agent_process::kill(&mut agent).await;
}

//! An application's transaction left open on a target row stalls the
//! pipeline visibly: within the sink's lock timeout the pipeline shows
//! `retrying` with the reason, and once the lock is released every change
//! arrives. Both target engines.

mod common;

use callosum::agent::Agent;
use callosum::config::Config;
use callosum::http::PipelineState;
use common::schema::{create_plain_orders, PLAIN_ORDERS as ORDERS};
use common::TestPipeline;
use mysql_async::prelude::Queryable;
use std::time::Duration;

/// The lock timeout plus backoff and slack.
const SHOWN_WITHIN: Duration = Duration::from_secs(callosum_api::TARGET_LOCK_TIMEOUT_SECONDS + 20);

async fn start(db: &common::Databases, dir: &std::path::Path, pipeline: TestPipeline<'_>) -> Agent {
    let toml = common::config_toml_with(db, &dir.join("data"), &[pipeline], "127.0.0.1:0");
    Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap()
}

async fn wait_retrying_on_a_lock(agent: &Agent, pipeline: &str) {
    common::wait_for(
        "the pipeline to show the lock wait",
        SHOWN_WITHIN,
        || async {
            agent.status.get(pipeline).is_some_and(|s| {
                s.state == PipelineState::Retrying
                    && s.last_error.as_deref().is_some_and(|e| {
                        let e = e.to_lowercase();
                        e.contains("lock") && e.contains("another transaction in the target")
                    })
            })
        },
    )
    .await;
}

async fn wait_streaming(agent: &Agent, pipeline: &str) {
    common::wait_for(
        "the pipeline to stream again",
        Duration::from_secs(60),
        || async {
            agent
                .status
                .get(pipeline)
                .is_some_and(|s| s.state == PipelineState::Streaming)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_held_in_a_mariadb_target_shows_as_retrying_then_arrives() {
    let db = common::fresh_databases("lock_my").await;
    create_plain_orders(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start(
        &db,
        dir.path(),
        TestPipeline {
            name: "crm_to_erp",
            from: "crm",
            to: "erp",
            tables: &["public.orders"],
        },
    )
    .await;
    common::wait_for_slot(&db).await;
    db.pg
        .batch_execute("INSERT INTO orders VALUES (1, 1, 'new', 1.00, 'a')")
        .await
        .unwrap();
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(60)).await;

    // the application holds row 1 in an open transaction
    let mut app = db.mysql.get_conn().await.unwrap();
    app.query_drop("START TRANSACTION").await.unwrap();
    app.query_drop("SELECT * FROM orders WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    db.pg
        .batch_execute("UPDATE orders SET status = 'paid' WHERE id = 1")
        .await
        .unwrap();
    wait_retrying_on_a_lock(&agent, "crm_to_erp").await;

    app.query_drop("ROLLBACK").await.unwrap();
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(60)).await;
    wait_streaming(&agent, "crm_to_erp").await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_held_in_a_postgres_target_shows_as_retrying_then_arrives() {
    let db = common::fresh_databases("lock_pg").await;
    create_plain_orders(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start(
        &db,
        dir.path(),
        TestPipeline {
            name: "erp_to_crm",
            from: "erp",
            to: "crm",
            tables: &["orders"],
        },
    )
    .await;
    common::wait_for_binlog_capture(&db, 1).await;
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(60)).await;

    let app = common::pg_client(&db.pg_url).await;
    app.batch_execute("BEGIN; SELECT * FROM orders WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    common::mysql_exec(&db.mysql, "UPDATE orders SET status = 'paid' WHERE id = 1").await;
    wait_retrying_on_a_lock(&agent, "erp_to_crm").await;

    app.batch_execute("ROLLBACK").await.unwrap();
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(60)).await;
    wait_streaming(&agent, "erp_to_crm").await;
    agent.stop().await;
}

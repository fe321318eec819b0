//! Fan-out from one store to two targets and the three-store echo rule
//! (design.md §3) against real servers: the CRM on PostgreSQL, the ERP and
//! the warehouse on MariaDB (two databases of one server, two stores).

mod common;

use callosum::agent::Agent;
use callosum::config::Config;
use callosum::http::PipelineState;
use callosum::testkit::{MariaDbServer, PgServer};
use mysql_async::prelude::Queryable;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

const PG_SCHEMA: &str = "
CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id int PRIMARY KEY, item text NOT NULL);
CREATE TABLE stock (id int PRIMARY KEY, qty int NOT NULL);
";

const ERP_SCHEMA: &[&str] = &[
    "CREATE TABLE accounts (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL)",
    "CREATE TABLE stock (id INT PRIMARY KEY, qty INT NOT NULL)",
    // every row write the ERP sees, its own and Callosum's: an echo of the
    // ERP's own stock changes would add rows here
    "CREATE TABLE stock_writes (n INT AUTO_INCREMENT PRIMARY KEY, stock_id INT NOT NULL)",
    "CREATE TRIGGER stock_ins BEFORE INSERT ON stock FOR EACH ROW INSERT INTO stock_writes (stock_id) VALUES (NEW.id)",
    "CREATE TRIGGER stock_upd BEFORE UPDATE ON stock FOR EACH ROW INSERT INTO stock_writes (stock_id) VALUES (NEW.id)",
];

const WAREHOUSE_SCHEMA: &[&str] = &[
    "CREATE TABLE orders (id INT PRIMARY KEY, item VARCHAR(100) NOT NULL)",
    "CREATE TABLE stock (id INT PRIMARY KEY, qty INT NOT NULL)",
];

fn unique_server_id() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    200_000
        + (std::process::id() % 10_000) * 10
        + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn config_toml(
    data_dir: &std::path::Path,
    crm: &str,
    slot: &str,
    erp: &str,
    warehouse: &str,
) -> String {
    format!(
        r#"data_dir = "{data_dir}"

[http]
listen = "127.0.0.1:0"

[stores.crm]
kind = "postgres"
url = "{crm}"
slot = "{slot}"

[stores.erp]
kind = "mysql"
url = "{erp}"
server_id = {erp_id}

[stores.warehouse]
kind = "mysql"
url = "{warehouse}"
server_id = {warehouse_id}

[[pipelines]]
name = "crm_to_erp"
from = "crm"
to = "erp"
tables = ["public.accounts", "public.stock"]

[[pipelines]]
name = "crm_to_warehouse"
from = "crm"
to = "warehouse"
tables = ["public.orders", "public.stock"]

[[pipelines]]
name = "erp_to_crm"
from = "erp"
to = "crm"
tables = ["stock"]
"#,
        data_dir = data_dir.display(),
        erp_id = unique_server_id(),
        warehouse_id = unique_server_id(),
    )
}

async fn mysql_pairs(pool: &mysql_async::Pool, sql: &str) -> Vec<(i32, String)> {
    let mut conn = pool.get_conn().await.unwrap();
    conn.query(sql).await.unwrap()
}

async fn pg_pairs(pg: &tokio_postgres::Client, sql: &str) -> Vec<(i32, String)> {
    pg.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

const STOCK_MYSQL: &str = "SELECT id, CAST(qty AS CHAR) FROM stock ORDER BY id";
const STOCK_PG: &str = "SELECT id, qty::text FROM stock ORDER BY id";

fn pairs(rows: &[(i32, &str)]) -> Vec<(i32, String)> {
    rows.iter().map(|(i, s)| (*i, s.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pipeline_gets_its_tables_and_erp_changes_reach_the_warehouse_without_echo() {
    common::init_logging();
    let crm_url = PgServer::shared().fresh_database("fanout").await.unwrap();
    let erp_url = MariaDbServer::shared()
        .fresh_database("fanerp")
        .await
        .unwrap();
    let warehouse_url = MariaDbServer::shared()
        .fresh_database("fanwh")
        .await
        .unwrap();
    let crm = common::pg_client(&crm_url).await;
    let erp = mysql_async::Pool::new(erp_url.as_str());
    let warehouse = mysql_async::Pool::new(warehouse_url.as_str());
    crm.batch_execute(PG_SCHEMA).await.unwrap();
    for ddl in ERP_SCHEMA {
        common::mysql_exec(&erp, ddl).await;
    }
    for ddl in WAREHOUSE_SCHEMA {
        common::mysql_exec(&warehouse, ddl).await;
    }
    let slot = format!("slot_{}", crm_url.rsplit('/').next().unwrap());
    let data_dir = tempfile::tempdir().unwrap();
    let toml = config_toml(data_dir.path(), &crm_url, &slot, &erp_url, &warehouse_url);
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    common::wait_for("the agent's replication slot", WAIT, || async {
        crm.query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active AND confirmed_flush_lsn IS NOT NULL",
            &[&slot],
        )
        .await
        .unwrap()
        .is_some()
    })
    .await;

    // CRM: transactions mixing both pipelines' tables, and one of one
    // pipeline's tables only
    crm.batch_execute(
        "BEGIN; INSERT INTO accounts VALUES (1, 'ada'); INSERT INTO orders VALUES (1, 'bolts'); COMMIT;
         INSERT INTO orders VALUES (2, 'nuts');
         BEGIN; INSERT INTO stock VALUES (1, 10), (2, 20); INSERT INTO accounts VALUES (2, 'bob'); COMMIT;",
    )
    .await
    .unwrap();
    // ERP: its own stock change, which must reach the warehouse through
    // the CRM, and never come back to the ERP
    common::mysql_exec(&erp, "INSERT INTO stock VALUES (100, 5)").await;
    common::mysql_exec(&erp, "UPDATE stock SET qty = 6 WHERE id = 100").await;

    let expected_stock = pairs(&[(1, "10"), (2, "20"), (100, "6")]);
    common::wait_for(
        "the warehouse to get orders and stock of both stores",
        WAIT,
        || async {
            mysql_pairs(&warehouse, STOCK_MYSQL).await == expected_stock
                && mysql_pairs(&warehouse, "SELECT id, item FROM orders ORDER BY id").await
                    == pairs(&[(1, "bolts"), (2, "nuts")])
        },
    )
    .await;
    common::wait_for("the CRM to get the ERP's stock", WAIT, || async {
        pg_pairs(&crm, STOCK_PG).await == expected_stock
    })
    .await;
    // a marker after everything: once it is in the ERP, crm_to_erp has
    // passed the CRM transactions that carried the ERP's own stock change
    crm.batch_execute("INSERT INTO accounts VALUES (3, 'marker')")
        .await
        .unwrap();
    common::wait_for(
        "the ERP to get the CRM's accounts and stock",
        WAIT,
        || async {
            mysql_pairs(&erp, "SELECT id, name FROM accounts ORDER BY id").await
                == pairs(&[(1, "ada"), (2, "bob"), (3, "marker")])
        },
    )
    .await;
    assert_eq!(mysql_pairs(&erp, STOCK_MYSQL).await, expected_stock);
    let writes: Vec<(i32, String)> = mysql_pairs(
        &erp,
        "SELECT stock_id, CAST(COUNT(*) AS CHAR) FROM stock_writes GROUP BY stock_id ORDER BY stock_id",
    )
    .await;
    assert_eq!(
        writes,
        pairs(&[(1, "1"), (2, "1"), (100, "2")]),
        "the ERP's own stock change came back to it (echo), or the CRM's came twice"
    );
    // nothing halted or dead-lettered ("not configured for pipeline"), and
    // every pipeline caught up
    common::wait_for("every pipeline to catch up", WAIT, || async {
        ["crm_to_erp", "crm_to_warehouse", "erp_to_crm"]
            .iter()
            .all(|p| agent.status.get(p).is_some_and(|s| s.pending_events == 0))
    })
    .await;
    for pipeline in ["crm_to_erp", "crm_to_warehouse", "erp_to_crm"] {
        let status = agent.status.get(pipeline).unwrap();
        assert_eq!(
            status.state,
            PipelineState::Streaming,
            "{pipeline}: {status:?}"
        );
        assert_eq!(status.dead_letters, 0, "{pipeline}: {status:?}");
    }
    agent.stop().await;
}

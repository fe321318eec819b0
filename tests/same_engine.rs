//! Any source pairs with any sink: PostgreSQL → PostgreSQL and
//! MariaDB → MariaDB, against the real servers.

mod common;

use callosum::agent::Agent;
use callosum::config::Config;
use callosum::testkit::{MariaDbServer, PgServer};
use std::time::Duration;

const PG_ORDERS: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(32), amount numeric(12,2), note text, updated_at timestamptz)";
const MYSQL_ORDERS: &str = "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id BIGINT, status VARCHAR(32), amount DECIMAL(12,2), note TEXT, updated_at TIMESTAMP(6) NULL)";
const PG_SELECT: &str = "SELECT id::text, customer_id::text, status, amount::text, note, to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM orders ORDER BY id";
const MYSQL_SELECT: &str = "SELECT CAST(id AS CHAR), CAST(customer_id AS CHAR), status, CAST(amount AS CHAR), note, DATE_FORMAT(updated_at, '%Y-%m-%d %H:%i:%s.%f') FROM orders ORDER BY id";

fn config(data_dir: &std::path::Path, stores: &str, tables: &str) -> Config {
    let toml = format!(
        r#"data_dir = "{}"

[http]
listen = "127.0.0.1:0"

{stores}

[[pipelines]]
name = "a_to_b"
from = "a"
to = "b"
tables = [{tables}]
on_error = "halt"
"#,
        data_dir.display()
    );
    Config::from_toml(&toml).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_postgres() {
    common::init_logging();
    let a_url = PgServer::shared().fresh_database("pg_a").await.unwrap();
    let b_url = PgServer::shared().fresh_database("pg_b").await.unwrap();
    let a = common::pg_client(&a_url).await;
    let b = common::pg_client(&b_url).await;
    a.batch_execute(PG_ORDERS).await.unwrap();
    b.batch_execute(PG_ORDERS).await.unwrap();
    let slot = format!("slot_{}", a_url.rsplit('/').next().unwrap());
    let stores = format!(
        "[stores.a]\nkind = \"postgres\"\nurl = \"{a_url}\"\nslot = \"{slot}\"\n\n[stores.b]\nkind = \"postgres\"\nurl = \"{b_url}\""
    );
    let data_dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(config(data_dir.path(), &stores, "\"public.orders\""))
        .await
        .unwrap();
    common::wait_for("the slot to be consistent", Duration::from_secs(60), || async {
        a.query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn IS NOT NULL",
            &[&slot],
        )
        .await
        .unwrap()
        .is_some()
    })
    .await;
    a.batch_execute(
        "INSERT INTO orders SELECT g, g % 7, 'new', g + 0.5, repeat('n', (g % 50)::int), timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute' FROM generate_series(1, 3000) g;
         BEGIN; UPDATE orders SET status = 'paid', note = NULL WHERE id % 3 = 0; UPDATE orders SET id = id + 100000 WHERE id % 11 = 0; COMMIT;
         DELETE FROM orders WHERE id % 5 = 0;",
    )
    .await
    .unwrap();
    let expected = common::pg_rows(&a, PG_SELECT).await;
    common::wait_for("b to equal a", Duration::from_secs(60), || async {
        common::pg_rows(&b, PG_SELECT).await == expected
    })
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_to_mariadb() {
    common::init_logging();
    let a_url = MariaDbServer::shared()
        .fresh_database("my_a")
        .await
        .unwrap();
    let b_url = MariaDbServer::shared()
        .fresh_database("my_b")
        .await
        .unwrap();
    let a = mysql_async::Pool::new(a_url.as_str());
    let b = mysql_async::Pool::new(b_url.as_str());
    common::mysql_exec(&a, MYSQL_ORDERS).await;
    common::mysql_exec(&b, MYSQL_ORDERS).await;
    let stores = format!(
        "[stores.a]\nkind = \"mysql\"\nurl = \"{a_url}\"\nserver_id = {}\n\n[stores.b]\nkind = \"mysql\"\nurl = \"{b_url}\"\nserver_id = {}",
        200_000 + std::process::id() % 10_000,
        300_000 + std::process::id() % 10_000
    );
    let data_dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(config(data_dir.path(), &stores, "\"orders\""))
        .await
        .unwrap();
    // the binlog source starts at the server's position when it first connects
    common::wait_for(
        "the pipeline to stream",
        Duration::from_secs(60),
        || async { agent.status.readiness().is_ok() },
    )
    .await;
    common::wait_for("the source to capture", Duration::from_secs(60), || async {
        common::mysql_exec(&a, "INSERT INTO orders (id) VALUES (0) ON DUPLICATE KEY UPDATE customer_id = coalesce(customer_id, 0) + 1").await;
        !common::mysql_rows(&b, "SELECT id FROM orders WHERE id = 0").await.is_empty()
    })
    .await;
    for statement in [
        "INSERT INTO orders SELECT seq, seq % 7, 'new', seq + 0.5, REPEAT('n', seq % 50), TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq MINUTE FROM seq_1_to_3000",
        "UPDATE orders SET status = 'paid', note = NULL WHERE id % 3 = 0",
        "UPDATE orders SET id = id + 100000 WHERE id % 11 = 0",
        "DELETE FROM orders WHERE id % 5 = 0",
    ] {
        common::mysql_exec(&a, statement).await;
    }
    let expected = common::mysql_rows(&a, MYSQL_SELECT).await;
    common::wait_for("b to equal a", Duration::from_secs(60), || async {
        common::mysql_rows(&b, MYSQL_SELECT).await == expected
    })
    .await;
    agent.stop().await;
}

//! `callosum demo`: throwaway PostgreSQL (the CRM) and MariaDB (the ERP) on
//! free local ports, a CRM workload, PostgreSQL → MariaDB replication, and
//! live counts of both sides until Ctrl-C or `--seconds`.

use anyhow::Context;
use std::time::{Duration, Instant};

use crate::agent::Agent;
use crate::config::Config;
use crate::testkit::{MariaDbServer, PgServer};

/// The CRM tables, on PostgreSQL.
const CRM_SCHEMA: &str = "
CREATE TABLE accounts (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    email varchar(200),
    active boolean NOT NULL DEFAULT true,
    credit_limit numeric(12,2),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL,
    status varchar(32) NOT NULL,
    amount numeric(12,2) NOT NULL,
    note varchar(200),
    updated_at timestamp NOT NULL DEFAULT now()
);";

/// The same tables on the ERP side, in MariaDB's types.
const ERP_SCHEMA: &[&str] = &[
    "CREATE TABLE accounts (
        id BIGINT PRIMARY KEY,
        name TEXT NOT NULL,
        email VARCHAR(200),
        active TINYINT(1) NOT NULL DEFAULT 1,
        credit_limit DECIMAL(12,2),
        updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
    )",
    "CREATE TABLE orders (
        id BIGINT PRIMARY KEY,
        customer_id BIGINT NOT NULL,
        status VARCHAR(32) NOT NULL,
        amount DECIMAL(12,2) NOT NULL,
        note VARCHAR(200),
        updated_at DATETIME(6) NOT NULL
    )",
];

/// Runs the demo.
pub async fn run(seconds: Option<u64>, rate: u32) -> anyhow::Result<()> {
    println!("starting throwaway PostgreSQL and MariaDB servers (a few seconds)…");
    let pg = tokio::task::spawn_blocking(|| PgServer::start(&[])).await??;
    let mariadb = tokio::task::spawn_blocking(|| MariaDbServer::start(&[])).await??;
    let crm_url = pg.fresh_database("crm").await?;
    let erp_url = mariadb.fresh_database("erp").await?;

    let (crm, crm_conn) = tokio_postgres::connect(&crm_url, tokio_postgres::NoTls)
        .await
        .context("cannot connect to the demo PostgreSQL")?;
    tokio::spawn(crm_conn);
    crm.batch_execute(CRM_SCHEMA).await?;
    let erp_pool = mysql_async::Pool::new(erp_url.as_str());
    {
        use mysql_async::prelude::Queryable;
        let mut erp = erp_pool.get_conn().await?;
        for ddl in ERP_SCHEMA {
            erp.query_drop(*ddl).await?;
        }
    }

    let data_dir = tempfile::Builder::new()
        .prefix("callosum-demo-")
        .tempdir()?;
    let config_text = format!(
        r#"data_dir = "{data_dir}"

[http]
listen = "127.0.0.1:0"

[stores.crm]
kind = "postgres"
url = "{crm_url}"

[stores.erp]
kind = "mysql"
url = "{erp_url}"
server_id = 4201

[[pipelines]]
name = "crm_to_erp"
from = "crm"
to = "erp"
tables = ["public.accounts", "public.orders"]
on_error = "halt"
"#,
        data_dir = data_dir.path().display()
    );
    let config = Config::from_toml(&config_text)?;
    println!("\nconfig:\n{config_text}");
    println!("CRM (PostgreSQL): {crm_url}\nERP (MariaDB):    {erp_url}\n");

    let agent = Agent::start(config).await?;
    println!(
        "agent running; metrics on http://{}/metrics, status on http://{}/status\n",
        agent.http_addr, agent.http_addr
    );

    // changes committed before the slot has a consistent point are not
    // captured (there is no initial snapshot yet): start writing after it
    let ready_by = Instant::now() + Duration::from_secs(60);
    while crm
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'callosum_crm' AND confirmed_flush_lsn IS NOT NULL",
            &[],
        )
        .await?
        .is_none()
    {
        anyhow::ensure!(Instant::now() < ready_by, "the replication slot was not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let workload = tokio::spawn(write_workload(crm_url.clone(), rate));
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = ticker.tick() => {
                print_counts(&crm, &erp_pool, &agent).await?;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
        }
    }
    workload.abort();
    println!("\nworkload stopped; waiting for the ERP to catch up…");
    let caught_up = Instant::now() + Duration::from_secs(30);
    loop {
        let (crm_rows, erp_rows) = table_digests(&crm, &erp_pool).await?;
        if crm_rows == erp_rows {
            println!("both sides agree: {crm_rows:?} (table, rows, sum of ids)");
            break;
        }
        if Instant::now() > caught_up {
            println!("not caught up after 30 s: CRM {crm_rows:?}, ERP {erp_rows:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agent.stop().await;
    erp_pool.disconnect().await?;
    Ok(())
}

/// Inserts, updates and deletes CRM rows at about `rate` changes/s in
/// transactions of a few changes.
async fn write_workload(crm_url: String, rate: u32) -> anyhow::Result<()> {
    let (crm, conn) = tokio_postgres::connect(&crm_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let mut next_id: i64 = 1;
    let per_tick = (rate / 10).max(1) as i64;
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    loop {
        ticker.tick().await;
        let mut sql = String::from("BEGIN;");
        for _ in 0..per_tick {
            let id = next_id;
            next_id += 1;
            match id % 10 {
                // mostly new orders, some status changes, a few deletes
                0..=5 => sql.push_str(&format!(
                    "INSERT INTO orders VALUES ({id}, {cust}, 'new', {amount}.50, 'demo order', now());",
                    cust = id % 97,
                    amount = id % 1000
                )),
                6 | 7 => sql.push_str(&format!(
                    "UPDATE orders SET status = 'shipped', updated_at = now() WHERE id = {};",
                    id - 5
                )),
                8 => sql.push_str(&format!(
                    "INSERT INTO accounts (id, name, email, credit_limit) VALUES ({id}, 'Account {id}', 'a{id}@example.com', 5000.00);"
                )),
                _ => sql.push_str(&format!("DELETE FROM orders WHERE id = {};", id - 9)),
            }
        }
        sql.push_str("COMMIT;");
        crm.batch_execute(&sql).await?;
    }
}

async fn table_digests(
    crm: &tokio_postgres::Client,
    erp: &mysql_async::Pool,
) -> anyhow::Result<(Vec<(String, i64, i64)>, Vec<(String, i64, i64)>)> {
    use mysql_async::prelude::Queryable;
    let mut crm_rows = Vec::new();
    let mut erp_rows = Vec::new();
    let mut conn = erp.get_conn().await?;
    for table in ["accounts", "orders"] {
        let row = crm
            .query_one(
                &format!("SELECT count(*)::int8, coalesce(sum(id), 0)::int8 FROM {table}"),
                &[],
            )
            .await?;
        crm_rows.push((table.to_string(), row.get(0), row.get(1)));
        let (count, sum): (i64, i64) = conn
            .query_first(format!(
                "SELECT count(*), CAST(coalesce(sum(id), 0) AS SIGNED) FROM {table}"
            ))
            .await?
            .unwrap_or((0, 0));
        erp_rows.push((table.to_string(), count, sum));
    }
    Ok((crm_rows, erp_rows))
}

async fn print_counts(
    crm: &tokio_postgres::Client,
    erp: &mysql_async::Pool,
    agent: &Agent,
) -> anyhow::Result<()> {
    let (crm_rows, erp_rows) = table_digests(crm, erp).await?;
    let snapshot = agent.status.snapshot();
    let pipeline = snapshot.pipelines.get("crm_to_erp");
    println!(
        "CRM accounts {:>6} orders {:>6} | ERP accounts {:>6} orders {:>6} | state {} lag {:.3}s pending {}",
        crm_rows[0].1,
        crm_rows[1].1,
        erp_rows[0].1,
        erp_rows[1].1,
        pipeline.map_or("-".to_string(), |p| format!("{:?}", p.state).to_lowercase()),
        pipeline.map_or(0.0, |p| p.lag_seconds),
        pipeline.map_or(0, |p| p.pending_events),
    );
    Ok(())
}

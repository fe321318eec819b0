//! Table maps against real servers, on the sample schemas
//! (deploy/crm-postgres.sql, deploy/erp-mariadb.sql): CRM (PostgreSQL) →
//! ERP (MariaDB) accounts → customers and won deals → sales orders, with
//! renames, value maps, constants, row filters and external keys (the ERP
//! numbers its rows itself; Callosum finds them by the CRM's uuid in a
//! UNIQUE column); a deal won → lost → won; a word without a mapping
//! dead-lettered by name while the pipeline streams on; and the reverse
//! placement (CRM on MariaDB, ERP on PostgreSQL) for one map.

mod common;

use callosum::agent::Agent;
use callosum::config::Config;
use callosum::dead_letter::api::{fetch_dead_letters, replay_dead_letters};
use callosum::http::PipelineState;
use common::{mysql_rows, pg_rows, Databases, Rows};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
const CRM_SCHEMA: &str = include_str!("../deploy/crm-postgres.sql");
const ERP_SCHEMA: &str = include_str!("../deploy/erp-mariadb.sql");

const ACCOUNTS_MAP: &str = r#"
[[pipelines.maps]]
source = "public.accounts"
target = "customers"
where = "stage <> 'lead'"
[pipelines.maps.columns]
id = "crm_id"
name = "name"
billing_city = "city"
stage = { to = "status", values = { prospect = "P", customer = "A", churned = "X" } }
[pipelines.maps.constants]
source_system = "crm"
"#;

/// Won deals → sales orders, with `extra` keys of the map (`unmatched`).
fn orders_map(filter: &str, values: &str, extra: &str) -> String {
    format!(
        r#"
[[pipelines.maps]]
source = "public.opportunities"
target = "sales_orders"
where = "{filter}"
{extra}
[pipelines.maps.columns]
id = "crm_opportunity_id"
account_id = "crm_account_id"
title = "title"
amount = "total"
close_date = "order_date"
stage = {{ to = "status", values = {{ {values} }} }}
[pipelines.maps.constants]
source_system = "crm"
"#
    )
}

const WON: &str = "stage = 'won' AND amount > 0";

async fn erp_schema(pool: &mysql_async::Pool) {
    for statement in ERP_SCHEMA.split(";\n").filter(|s| {
        s.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
    }) {
        common::mysql_exec(pool, statement).await;
    }
}

/// Fresh CRM and ERP databases with the sample schemas, and an agent
/// running pipeline `crm_to_erp` with `maps`.
async fn start(prefix: &str, maps: &str) -> (Databases, Agent, tempfile::TempDir) {
    start_after(prefix, maps, None).await
}

/// [`start`], with `erp_ddl` run in the ERP before the agent starts.
async fn start_after(
    prefix: &str,
    maps: &str,
    erp_ddl: Option<&str>,
) -> (Databases, Agent, tempfile::TempDir) {
    let db = common::fresh_databases(prefix).await;
    db.pg.batch_execute(CRM_SCHEMA).await.unwrap();
    erp_schema(&db.mysql).await;
    if let Some(ddl) = erp_ddl {
        common::mysql_exec(&db.mysql, ddl).await;
    }
    let data_dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&db, data_dir.path(), maps).await;
    common::wait_for_slot(&db).await;
    (db, agent, data_dir)
}

/// An agent running pipeline `crm_to_erp` with `maps`.
async fn start_agent(db: &Databases, data_dir: &std::path::Path, maps: &str) -> Agent {
    let mut toml = common::config_toml_with(db, data_dir, &[], "127.0.0.1:0");
    toml += &format!(
        "\n[[pipelines]]\nname = \"crm_to_erp\"\nfrom = \"crm\"\nto = \"erp\"\non_error = \"dead_letter\"\n{maps}"
    );
    Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap()
}

async fn crm(db: &Databases, sql: &str) {
    db.pg.batch_execute(sql).await.unwrap();
}

const ACME: &str = "00000000-0000-0000-0000-00000000000a";
const DEAL: &str = "00000000-0000-0000-0000-0000000000d1";

async fn orders(db: &Databases) -> Rows {
    mysql_rows(
        &db.mysql,
        "SELECT crm_opportunity_id, crm_account_id, title, status, CAST(total AS CHAR), \
         CAST(order_date AS CHAR), source_system FROM sales_orders ORDER BY crm_opportunity_id",
    )
    .await
}

fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
    values.iter().map(|v| v.map(str::to_string)).collect()
}

fn won_order(id: &str, total: &str) -> Vec<Option<String>> {
    row(&[
        Some(id),
        Some(ACME),
        Some("bolts"),
        Some("confirmed"),
        Some(total),
        Some("2026-01-31"),
        Some("crm"),
    ])
}

async fn wait_for_orders(db: &Databases, what: &str, expected: &Rows) {
    common::wait_for(what, WAIT, || async { orders(db).await == *expected }).await;
}

async fn order_numbers(db: &Databases) -> Vec<Option<String>> {
    mysql_rows(
        &db.mysql,
        "SELECT CAST(order_no AS CHAR) FROM sales_orders ORDER BY order_no",
    )
    .await
    .into_iter()
    .map(|mut r| r.remove(0))
    .collect()
}

fn assert_streaming(agent: &Agent) {
    let status = agent.status.get("crm_to_erp").unwrap();
    assert_eq!(status.state, PipelineState::Streaming, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_become_customers_numbered_by_the_erp_and_found_by_crm_id() {
    let (db, agent, _dir) = start("map_accounts", ACCOUNTS_MAP).await;
    // the ERP's own customer, which no CRM change may touch
    common::mysql_exec(
        &db.mysql,
        "INSERT INTO customers (name, status, credit_limit) VALUES ('walk-in', 'A', 500)",
    )
    .await;
    crm(
        &db,
        &format!(
            "INSERT INTO accounts (id, name, stage, billing_city) VALUES ('{ACME}', 'Acme', 'customer', 'Lyon');
             INSERT INTO accounts (name, stage) VALUES ('a lead', 'lead');
             UPDATE accounts SET name = 'Acme SA' WHERE id = '{ACME}';"
        ),
    )
    .await;
    let customers = || async {
        mysql_rows(
            &db.mysql,
            "SELECT CAST(customer_no AS CHAR), crm_id, name, status, city, source_system, \
             CAST(credit_limit AS CHAR) FROM customers ORDER BY customer_no",
        )
        .await
    };
    let walk_in = row(&[
        Some("1"),
        None,
        Some("walk-in"),
        Some("A"),
        None,
        Some("erp"),
        Some("500.00"),
    ]);
    let acme = |stage: &str| {
        row(&[
            Some("2"),
            Some(ACME),
            Some("Acme SA"),
            Some(stage),
            Some("Lyon"),
            Some("crm"),
            // the ERP's default: a column no map writes keeps the ERP's value
            Some("0.00"),
        ])
    };
    let expected = vec![walk_in.clone(), acme("A")];
    common::wait_for("the account to become customer 2", WAIT, || async {
        customers().await == expected
    })
    .await;
    // the ERP's own field survives CRM updates, the mapped ones follow them
    common::mysql_exec(
        &db.mysql,
        "UPDATE customers SET credit_limit = 900 WHERE customer_no = 2",
    )
    .await;
    crm(
        &db,
        &format!("UPDATE accounts SET stage = 'churned' WHERE id = '{ACME}'"),
    )
    .await;
    let mut churned = acme("X");
    churned[6] = Some("900.00".into());
    let expected = vec![walk_in.clone(), churned];
    common::wait_for(
        "the churned account to block the customer",
        WAIT,
        || async { customers().await == expected },
    )
    .await;
    // an account that becomes a lead again stops matching: deleted by crm_id
    crm(
        &db,
        &format!("UPDATE accounts SET stage = 'lead' WHERE id = '{ACME}'"),
    )
    .await;
    let expected = vec![walk_in.clone()];
    common::wait_for("the customer to be deleted by crm_id", WAIT, || async {
        customers().await == expected
    })
    .await;
    assert_streaming(&agent);
    agent.stop().await;
}

/// A deal won, lost and won again, with `extra` map keys; returns the
/// databases after the second win.
async fn won_lost_won(prefix: &str, extra: &str, while_lost: Rows) {
    let maps = orders_map(WON, "won = \"confirmed\"", extra);
    let (db, agent, _dir) = start(prefix, &maps).await;
    crm(
        &db,
        &format!(
            "INSERT INTO accounts (id, name, stage) VALUES ('{ACME}', 'Acme', 'customer');
             INSERT INTO opportunities (id, account_id, title, stage, amount, close_date)
               VALUES ('{DEAL}', '{ACME}', 'bolts', 'open', 100, '2026-01-31');
             INSERT INTO opportunities (account_id, title, stage, amount)
               VALUES ('{ACME}', 'nuts', 'won', 0);"
        ),
    )
    .await;
    crm(
        &db,
        &format!("UPDATE opportunities SET stage = 'won' WHERE id = '{DEAL}'"),
    )
    .await;
    wait_for_orders(
        &db,
        "the won deal to become an order",
        &vec![won_order(DEAL, "100.00")],
    )
    .await;
    let first = order_numbers(&db).await;
    crm(
        &db,
        &format!("UPDATE opportunities SET stage = 'lost', amount = 90 WHERE id = '{DEAL}'"),
    )
    .await;
    wait_for_orders(&db, "the lost deal's order", &while_lost).await;
    crm(
        &db,
        &format!("UPDATE opportunities SET stage = 'won', amount = 120 WHERE id = '{DEAL}'"),
    )
    .await;
    wait_for_orders(
        &db,
        "the deal won again to be one order",
        &vec![won_order(DEAL, "120.00")],
    )
    .await;
    let numbers = order_numbers(&db).await;
    assert_eq!(numbers.len(), 1, "the order is present once: {numbers:?}");
    if while_lost.is_empty() {
        assert_ne!(
            numbers, first,
            "deleted when lost, the order is new: the ERP numbers it"
        );
    } else {
        assert_eq!(numbers, first, "kept when lost, the order is the same row");
    }
    assert_streaming(&agent);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deal_won_lost_won_has_its_order_deleted_while_lost() {
    won_lost_won("map_wlw", "", Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deal_won_lost_won_keeps_its_order_with_unmatched_keep() {
    won_lost_won(
        "map_wlw_keep",
        "unmatched = \"keep\"",
        vec![won_order(DEAL, "100.00")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_without_a_mapping_is_dead_lettered_by_name_while_the_pipeline_streams_on() {
    let maps = orders_map(
        "amount > 0",
        "won = \"confirmed\", lost = \"cancelled\", open = \"draft\"",
        "",
    );
    let (db, agent, dir) = start("map_unmapped", &maps).await;
    crm(
        &db,
        &format!(
            "INSERT INTO accounts (id, name, stage) VALUES ('{ACME}', 'Acme', 'customer');
             INSERT INTO opportunities (account_id, title, stage, amount) VALUES ('{ACME}', 'gears', 'proposal', 5);"
        ),
    )
    .await;
    crm(
        &db,
        &format!(
            "INSERT INTO opportunities (id, account_id, title, stage, amount, close_date)
               VALUES ('{DEAL}', '{ACME}', 'bolts', 'won', 100, '2026-01-31');"
        ),
    )
    .await;
    wait_for_orders(
        &db,
        "the later won deal to arrive",
        &vec![won_order(DEAL, "100.00")],
    )
    .await;
    let list = fetch_dead_letters(agent.http_addr, Some("crm_to_erp"))
        .await
        .unwrap();
    let entries = &list.pipelines["crm_to_erp"];
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert_eq!(entry.reason_kind, "conversion");
    assert!(
        entry.message.contains("`stage`") && entry.message.contains("public.opportunities"),
        "{}",
        entry.message
    );
    assert!(
        entry.message.contains("missing from `values`"),
        "{}",
        entry.message
    );
    assert!(
        !entry.message.contains("proposal"),
        "no row value in the message: {}",
        entry.message
    );
    // the dead letter holds the source's events, which a replay maps again
    assert_eq!(entry.tables, vec!["public.opportunities".to_string()]);
    assert_streaming(&agent);
    agent.stop().await;

    // the word added to the map, the replay carries the deal
    let maps = orders_map(
        "amount > 0",
        "won = \"confirmed\", lost = \"cancelled\", open = \"draft\", proposal = \"draft\"",
        "",
    );
    let agent = start_agent(&db, dir.path(), &maps).await;
    common::wait_for("the pipeline to stream again", WAIT, || async {
        agent
            .status
            .get("crm_to_erp")
            .is_some_and(|s| s.state == PipelineState::Streaming)
    })
    .await;
    let report = replay_dead_letters(agent.http_addr, "crm_to_erp", None)
        .await
        .unwrap();
    assert_eq!(
        (report.replayed.len(), report.remaining),
        (1, 0),
        "{report:?}"
    );
    let statuses = mysql_rows(
        &db.mysql,
        "SELECT title, status FROM sales_orders ORDER BY title",
    )
    .await;
    assert_eq!(
        statuses,
        vec![
            row(&[Some("bolts"), Some("confirmed")]),
            row(&[Some("gears"), Some("draft")])
        ]
    );
    agent.stop().await;
}

const REVERSE_CRM: &[&str] = &["CREATE TABLE opportunities (
        id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
        title VARCHAR(200) NOT NULL,
        stage ENUM('open', 'proposal', 'won', 'lost') NOT NULL DEFAULT 'open',
        amount DECIMAL(14, 2) NOT NULL)"];

const REVERSE_ERP: &str = "
CREATE TABLE sales_orders (
    order_no bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    crm_opportunity_id text UNIQUE,
    title text NOT NULL,
    status text NOT NULL CHECK (status IN ('draft', 'confirmed', 'cancelled')),
    total numeric(14, 2) NOT NULL,
    source_system text NOT NULL DEFAULT 'erp');
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn won_deals_become_sales_orders_with_the_crm_on_mariadb_and_the_erp_on_postgres() {
    let db = common::fresh_databases("map_reverse").await;
    for ddl in REVERSE_CRM {
        common::mysql_exec(&db.mysql, ddl).await;
    }
    db.pg.batch_execute(REVERSE_ERP).await.unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let mut toml = common::config_toml_with(&db, data_dir.path(), &[], "127.0.0.1:0");
    toml += r#"
[[pipelines]]
name = "crm_to_erp"
from = "erp"
to = "crm"
on_error = "halt"

[[pipelines.maps]]
source = "opportunities"
target = "public.sales_orders"
where = "stage = 'won' AND amount > 0"
[pipelines.maps.columns]
id = "crm_opportunity_id"
title = "title"
amount = "total"
stage = { to = "status", values = { won = "confirmed" } }
[pipelines.maps.constants]
source_system = "crm"
"#;
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    common::wait_for("the pipeline to stream", WAIT, || async {
        agent
            .status
            .get("crm_to_erp")
            .is_some_and(|s| s.state == PipelineState::Streaming)
    })
    .await;
    // the binlog position is taken when the source connects: write until
    // the first deal arrives
    let orders = || async {
        pg_rows(
            &db.pg,
            "SELECT crm_opportunity_id, title, status, total::text, source_system \
             FROM sales_orders ORDER BY crm_opportunity_id",
        )
        .await
    };
    let mut n = 0;
    common::wait_for("the first won deal to arrive", WAIT, || {
        n += 1;
        let sql = format!(
            "INSERT INTO opportunities VALUES ('00000000-0000-0000-0000-{n:012}', 'probe', 'won', 1)"
        );
        let (mysql, orders) = (&db.mysql, &orders);
        async move {
            common::mysql_exec(mysql, &sql).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            !orders().await.is_empty()
        }
    })
    .await;
    common::mysql_exec(&db.mysql, "DELETE FROM opportunities").await;
    common::mysql_exec(
        &db.mysql,
        &format!("INSERT INTO opportunities VALUES ('{DEAL}', 'bolts', 'open', 100)"),
    )
    .await;
    common::mysql_exec(
        &db.mysql,
        &format!("UPDATE opportunities SET stage = 'won' WHERE id = '{DEAL}'"),
    )
    .await;
    let expected = vec![row(&[
        Some(DEAL),
        Some("bolts"),
        Some("confirmed"),
        Some("100.00"),
        Some("crm"),
    ])];
    common::wait_for(
        "the won deal to become an order in PostgreSQL",
        WAIT,
        || async { orders().await == expected },
    )
    .await;
    common::mysql_exec(
        &db.mysql,
        &format!("UPDATE opportunities SET stage = 'lost' WHERE id = '{DEAL}'"),
    )
    .await;
    common::wait_for("the lost deal's order to be deleted", WAIT, || async {
        orders().await.is_empty()
    })
    .await;
    let status = agent.status.get("crm_to_erp").unwrap();
    assert_eq!(status.state, PipelineState::Streaming, "{status:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_a_unique_key_of_the_target_is_refused_by_name() {
    let drop_key = "ALTER TABLE customers DROP INDEX customers_crm_id";
    let (db, agent, _dir) = start_after("map_nokey", ACCOUNTS_MAP, Some(drop_key)).await;
    crm(
        &db,
        &format!("INSERT INTO accounts (id, name, stage) VALUES ('{ACME}', 'Acme', 'customer')"),
    )
    .await;
    let queued = || async {
        fetch_dead_letters(agent.http_addr, Some("crm_to_erp"))
            .await
            .map(|mut l| l.pipelines.remove("crm_to_erp").unwrap_or_default())
            .unwrap_or_default()
    };
    common::wait_for("the account to be dead-lettered", WAIT, || async {
        !queued().await.is_empty()
    })
    .await;
    let entries = queued().await;
    let entry = &entries[0];
    assert_eq!(entry.reason_kind, "schema");
    assert!(
        entry.message.contains("`crm_id`") && entry.message.contains("nor a unique key"),
        "{}",
        entry.message
    );
    assert!(
        entry
            .hint
            .as_deref()
            .unwrap_or("")
            .contains("add a unique index on (`crm_id`)"),
        "{:?}",
        entry.hint
    );
    let customers = mysql_rows(&db.mysql, "SELECT crm_id FROM customers").await;
    assert!(customers.is_empty(), "{customers:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_looks_for_the_maps_target_tables_not_the_source_tables() {
    let db = common::fresh_databases("map_check").await;
    db.pg.batch_execute(CRM_SCHEMA).await.unwrap();
    erp_schema(&db.mysql).await;
    common::mysql_exec(&db.mysql, "DROP TABLE sales_orders").await;
    let dir = tempfile::tempdir().unwrap();
    let mut toml = common::config_toml_with(&db, dir.path(), &[], "127.0.0.1:0");
    toml += &format!(
        "\n[[pipelines]]\nname = \"crm_to_erp\"\nfrom = \"crm\"\nto = \"erp\"\n{ACCOUNTS_MAP}{}",
        orders_map(WON, "won = \"confirmed\"", "")
    );
    let problems = callosum::check::problems(&Config::from_toml(&toml).unwrap()).await;
    let about_tables: Vec<_> = problems
        .iter()
        .filter(|p| {
            ["customers", "sales_orders", "accounts", "opportunities"]
                .iter()
                .any(|t| p.problem.contains(&format!(".{t}`")))
        })
        .collect();
    assert_eq!(about_tables.len(), 1, "{problems:#?}");
    assert!(
        about_tables[0]
            .problem
            .contains("sales_orders` (for source")
            && about_tables[0].problem.contains("does not exist"),
        "{problems:#?}"
    );
}

//! The users of `deploy/sql/` hold exactly what Callosum needs: with them
//! `callosum check` finds nothing and both directions replicate; without one
//! of their grants `check` names it with the fix.

mod common;

use callosum::config::Config;
use common::schema::{create_plain_orders, PLAIN_ORDERS as ORDERS};
use common::{Databases, TestPipeline};
use std::time::Duration;

fn script(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/sql")
            .join(name),
    )
    .unwrap()
}

/// The statements of `text` without comments, split at `;`.
fn statements(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn database_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// Runs a PostgreSQL script of `deploy/sql` in `db`'s database, its role
/// renamed to `role` (roles are cluster-wide), as psql would with
/// `-v password=…`.
async fn run_pg_script(db: &Databases, name: &str, role: &str, generic: &str) {
    for statement in statements(&script(name)) {
        let statement = statement
            .replace(":'password'", "'not-needed-with-trust'")
            .replace(generic, role);
        db.pg.batch_execute(&statement).await.unwrap_or_else(|e| {
            panic!("{name}: {statement}: {e}");
        });
    }
}

/// Runs a MariaDB script of `deploy/sql` against `db`'s database.
async fn run_mariadb_script(db: &Databases, name: &str, user: &str, generic: &str) {
    let database = database_of(&db.mysql_url);
    for statement in statements(&script(name)) {
        let statement = statement
            .replace("erp.", &format!("`{database}`."))
            .replace(generic, user)
            .replace("change-me", "least-privilege-pw");
        common::mysql_exec(&db.mysql, &statement).await;
    }
}

fn with_user(url: &str, user: &str, password: Option<&str>) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    match password {
        Some(pw) => format!("{scheme}://{user}:{pw}@{host}"),
        None => format!("{scheme}://{user}@{host}"),
    }
}

fn config(
    db: &Databases,
    dir: &std::path::Path,
    pipeline: TestPipeline,
    pg_user: &str,
    my_user: &str,
) -> Config {
    let toml = common::config_toml_with(db, &dir.join("data"), &[pipeline], "127.0.0.1:0")
        .replace(&db.pg_url, &with_user(&db.pg_url, pg_user, None))
        .replace(
            &db.mysql_url,
            &with_user(&db.mysql_url, my_user, Some("least-privilege-pw")),
        );
    Config::from_toml(&toml).unwrap()
}

async fn assert_check_passes(config: &Config) {
    let problems = callosum::check::problems(config).await;
    assert!(
        problems.is_empty(),
        "with exactly the scripts' grants, check finds nothing:\n{}",
        problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

async fn assert_check_names(config: &Config, needles: &[&str]) {
    let problems = callosum::check::problems(config).await;
    let all = problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in needles {
        assert!(all.contains(needle), "check names `{needle}`:\n{all}");
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", common::unique_server_id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_capture_and_mariadb_apply_users_suffice() {
    let db = common::fresh_databases("least_pg_my").await;
    create_plain_orders(&db).await;
    let capture = unique("callosum_capture");
    let apply = unique("callosum_apply");
    // the publication of the script is named for the store `crm`
    run_pg_script(&db, "postgres-capture.sql", &capture, "callosum_capture").await;
    run_mariadb_script(&db, "mariadb-apply.sql", &apply, "callosum_apply").await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = TestPipeline {
        name: "crm_to_erp",
        from: "crm",
        to: "erp",
        tables: &["public.orders"],
    };
    let config = config(&db, dir.path(), pipeline, &capture, &apply);
    assert_check_passes(&config).await;

    let agent = callosum::agent::Agent::start(config.clone()).await.unwrap();
    common::wait_for_slot(&db).await;
    db.pg
        .batch_execute(
            "INSERT INTO orders VALUES (1, 1, 'new', 1.00, 'a'), (2, 2, 'new', 2.00, 'b');
             UPDATE orders SET status = 'paid' WHERE id = 1; DELETE FROM orders WHERE id = 2",
        )
        .await
        .unwrap();
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(60)).await;
    agent.stop().await;
    // the agent created its tables, and check still passes
    assert_check_passes(&config).await;

    db.pg
        .batch_execute(&format!("REVOKE SELECT ON public.orders FROM {capture}"))
        .await
        .unwrap();
    common::mysql_exec(
        &db.mysql,
        &format!(
            "REVOKE DELETE ON `{}`.orders FROM '{apply}'@'%'",
            database_of(&db.mysql_url)
        ),
    )
    .await;
    assert_check_names(&config, &["lacks SELECT on table public.orders", "DELETE"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_capture_and_postgres_apply_users_suffice() {
    let db = common::fresh_databases("least_my_pg").await;
    create_plain_orders(&db).await;
    let capture = unique("callosum_capture");
    let apply = unique("callosum_apply");
    run_mariadb_script(&db, "mariadb-capture.sql", &capture, "callosum_capture").await;
    run_pg_script(&db, "postgres-apply.sql", &apply, "callosum_apply").await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = TestPipeline {
        name: "erp_to_crm",
        from: "erp",
        to: "crm",
        tables: &["orders"],
    };
    let config = config(&db, dir.path(), pipeline, &apply, &capture);
    assert_check_passes(&config).await;

    let agent = callosum::agent::Agent::start(config.clone()).await.unwrap();
    common::wait_for_binlog_capture(&db, 1).await;
    common::mysql_exec(
        &db.mysql,
        "INSERT INTO orders VALUES (2, 2, 'new', 2.00, 'b'); DELETE FROM orders WHERE id = 2; TRUNCATE orders; INSERT INTO orders VALUES (3, 3, 'new', 3.00, 'c')",
    )
    .await;
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(60)).await;
    agent.stop().await;
    assert_check_passes(&config).await;

    common::mysql_exec(
        &db.mysql,
        &format!("REVOKE REPLICATION SLAVE ON *.* FROM '{capture}'@'%'"),
    )
    .await;
    db.pg
        .batch_execute(&format!("REVOKE TRUNCATE ON public.orders FROM {apply}"))
        .await
        .unwrap();
    assert_check_names(&config, &["REPLICATION SLAVE", "TRUNCATE"]).await;
}

//! Schema changes with changes pending, against real servers: rows written
//! before and after an `ALTER TABLE` in the source land in one batch and
//! each is applied with the schema it was written under; an operator's
//! `ALTER TABLE` on the target is picked up without a restart.

mod common;

use callosum::agent::Agent;
use callosum::config::Config;
use common::{Databases, TestPipeline};
use std::time::Duration;

async fn start_agent(
    db: &Databases,
    data_dir: &std::path::Path,
    pipeline: TestPipeline<'_>,
) -> Agent {
    let from_pg = pipeline.from == "crm";
    let toml = common::config_toml_with(db, data_dir, &[pipeline], "127.0.0.1:0");
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    if from_pg {
        common::wait_for_slot(db).await;
    }
    common::wait_for(
        "the pipeline to stream",
        Duration::from_secs(60),
        || async { agent.status.readiness().is_ok() },
    )
    .await;
    agent
}

/// Waits until `target()` returns what `source()` does.
async fn wait_equal<S, SF, T, TF>(what: &str, source: S, target: T)
where
    S: Fn() -> SF,
    SF: std::future::Future<Output = common::Rows>,
    T: Fn() -> TF,
    TF: std::future::Future<Output = common::Rows>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (s, t) = (source().await, target().await);
        if s == t {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: target differs from source\nsource: {s:?}\ntarget: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// MariaDB → PostgreSQL: while the agent is stopped, the source adds a
/// column `AFTER` another, one `FIRST` and drops one, with inserts, updates
/// and deletes under each schema; restarted, the agent applies all of it in
/// one batch. Then, streaming, the operator adds a column on the target
/// before the source does: picked up without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_alter_after_first_and_drop_with_changes_pending() {
    let db = common::fresh_databases("ddl_my").await;
    common::mysql_exec(
        &db.mysql,
        "CREATE TABLE items (id INT PRIMARY KEY, a INT, b VARCHAR(20))",
    )
    .await;
    db.pg
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, a int, b varchar(20), c int, d int)",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = || TestPipeline {
        name: "mysql_to_pg",
        from: "erp",
        to: "crm",
        tables: &["items"],
    };
    let agent = start_agent(&db, dir.path(), pipeline()).await;
    common::mysql_exec(
        &db.mysql,
        "INSERT INTO items VALUES (1, 10, 'one'), (2, 20, 'two'), (3, 30, 'three')",
    )
    .await;
    let source = || {
        common::mysql_rows(
            &db.mysql,
            "SELECT CAST(id AS CHAR), b FROM items ORDER BY id",
        )
    };
    let target = || common::pg_rows(&db.pg, "SELECT id::text, b FROM items ORDER BY id");
    wait_equal("before the changes", source, target).await;
    agent.stop().await;

    // changes pending in the log: the agent is stopped
    for sql in [
        "INSERT INTO items VALUES (4, 40, 'four')",
        "UPDATE items SET a = 11, b = 'uno' WHERE id = 1",
        "ALTER TABLE items ADD COLUMN c INT AFTER id",
        "INSERT INTO items VALUES (5, 500, 50, 'five')",
        "UPDATE items SET c = 200, b = 'dos' WHERE id = 2",
        "DELETE FROM items WHERE id = 3",
        "ALTER TABLE items ADD COLUMN d INT FIRST",
        "INSERT INTO items VALUES (6000, 6, 600, 60, 'six')",
        "UPDATE items SET d = 4000, a = 41 WHERE id = 4",
        "ALTER TABLE items DROP COLUMN a",
        "INSERT INTO items VALUES (7000, 7, 700, 'seven')",
        "UPDATE items SET b = 'cinq' WHERE id = 5",
        "DELETE FROM items WHERE id = 6",
        "UPDATE items SET id = 8 WHERE id = 1",
    ] {
        common::mysql_exec(&db.mysql, sql).await;
    }
    let agent = start_agent(&db, dir.path(), pipeline()).await;
    let source = || {
        common::mysql_rows(
            &db.mysql,
            "SELECT CAST(id AS CHAR), CAST(c AS CHAR), CAST(d AS CHAR), b FROM items ORDER BY id",
        )
    };
    let target = || {
        common::pg_rows(
            &db.pg,
            "SELECT id::text, c::text, d::text, b FROM items ORDER BY id",
        )
    };
    wait_equal("after ALTER … AFTER, FIRST and DROP COLUMN", source, target).await;
    // the dropped column keeps the values written before the drop
    let a = common::pg_rows(&db.pg, "SELECT id::text, a::text FROM items ORDER BY id").await;
    let a: Vec<_> = a
        .iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone()))
        .collect();
    assert_eq!(
        a,
        vec![
            ("2".into(), Some("20".into())),
            ("4".into(), Some("41".into())),
            ("5".into(), Some("50".into())),
            ("7".into(), None),
            // a key change is a delete and an insert without the column
            ("8".into(), None),
        ]
    );

    // streaming: the operator adds the column on the target first
    db.pg
        .batch_execute("ALTER TABLE items ADD COLUMN e text")
        .await
        .unwrap();
    common::mysql_exec(
        &db.mysql,
        "ALTER TABLE items ADD COLUMN e VARCHAR(10) AFTER c",
    )
    .await;
    common::mysql_exec(
        &db.mysql,
        "INSERT INTO items (id, c, d, b, e) VALUES (9, 900, 9000, 'nine', 'neun')",
    )
    .await;
    let source = || {
        common::mysql_rows(
            &db.mysql,
            "SELECT CAST(id AS CHAR), e, b FROM items ORDER BY id",
        )
    };
    let target = || common::pg_rows(&db.pg, "SELECT id::text, e, b FROM items ORDER BY id");
    wait_equal("after the target's own ALTER", source, target).await;
    agent.stop().await;
}

/// PostgreSQL → MariaDB: ADD and DROP COLUMN while the agent is stopped,
/// with changes under each schema pending in the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_add_and_drop_column_with_changes_pending() {
    let db = common::fresh_databases("ddl_pg").await;
    db.pg
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, a int, b text)")
        .await
        .unwrap();
    common::mysql_exec(
        &db.mysql,
        "CREATE TABLE items (id INT PRIMARY KEY, a INT, b VARCHAR(20), c INT)",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = || TestPipeline {
        name: "pg_to_mysql",
        from: "crm",
        to: "erp",
        tables: &["public.items"],
    };
    let agent = start_agent(&db, dir.path(), pipeline()).await;
    db.pg
        .batch_execute("INSERT INTO items VALUES (1, 10, 'one'), (2, 20, 'two'), (3, 30, 'three')")
        .await
        .unwrap();
    let source = || common::pg_rows(&db.pg, "SELECT id::text, b FROM items ORDER BY id");
    let target = || {
        common::mysql_rows(
            &db.mysql,
            "SELECT CAST(id AS CHAR), b FROM items ORDER BY id",
        )
    };
    wait_equal("before the changes", source, target).await;
    agent.stop().await;
    db.pg
        .batch_execute(
            "INSERT INTO items VALUES (4, 40, 'four');
             UPDATE items SET a = 11 WHERE id = 1;
             ALTER TABLE items DROP COLUMN a;
             INSERT INTO items VALUES (5, 'five');
             UPDATE items SET b = 'dos' WHERE id = 2;
             ALTER TABLE items ADD COLUMN c int;
             INSERT INTO items VALUES (6, 'six', 60);
             UPDATE items SET c = 40, b = 'vier' WHERE id = 4;
             DELETE FROM items WHERE id = 3;",
        )
        .await
        .unwrap();
    let agent = start_agent(&db, dir.path(), pipeline()).await;
    let source = || common::pg_rows(&db.pg, "SELECT id::text, b, c::text FROM items ORDER BY id");
    let target = || {
        common::mysql_rows(
            &db.mysql,
            "SELECT CAST(id AS CHAR), b, CAST(c AS CHAR) FROM items ORDER BY id",
        )
    };
    wait_equal("after DROP and ADD COLUMN", source, target).await;
    let a = common::mysql_rows(&db.mysql, "SELECT CAST(a AS CHAR) FROM items ORDER BY id").await;
    assert_eq!(
        a,
        vec![
            vec![Some("11".to_string())],
            vec![Some("20".to_string())],
            vec![Some("40".to_string())],
            vec![None],
            vec![None],
        ]
    );
    agent.stop().await;
}

//! Keys beyond the primary key, end to end against real servers with the
//! agent running as users run it: unique values that move, swap and cycle
//! between rows across source transactions that share one target
//! transaction (both directions), and a MariaDB primary key whose
//! case-insensitive collation would merge two PostgreSQL rows.

mod common;

use callosum::agent::Agent;
use callosum::config::Config;
use callosum::dead_letter::api::fetch_dead_letters;
use common::{Databases, MirroredTable, TestPipeline};
use mysql_async::prelude::Queryable;
use std::time::Duration;

/// The same tables on both engines. `gate` lets the test hold the apply
/// worker at one transaction while the next ones pile up in the log, so
/// they reach the target as one batch.
const PG_SCHEMA: &str = "
CREATE TABLE accounts (id int PRIMARY KEY, email varchar(64) NOT NULL UNIQUE, last_login int NOT NULL DEFAULT 0);
CREATE TABLE gate (id int PRIMARY KEY, n int);
CREATE TABLE users (name varchar(32) PRIMARY KEY, n int);
";

const MYSQL_SCHEMA: &[&str] = &[
    "CREATE TABLE accounts (id INT PRIMARY KEY, email VARCHAR(64) NOT NULL UNIQUE, last_login INT NOT NULL DEFAULT 0)",
    "CREATE TABLE gate (id INT PRIMARY KEY, n INT)",
    "CREATE TABLE users (name VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci PRIMARY KEY, n INT)",
];

/// Rows both sides hold before the agent starts (it captures no snapshot).
const SEED: &[&str] = &[
    "INSERT INTO accounts (id, email) VALUES (1, 'x'), (2, 'b'), (3, 'c'), (6, 'p'), (7, 'q'), (8, 'r')",
    "INSERT INTO gate VALUES (1, 0)",
];

/// Each its own source transaction, in this order, all in one batch:
/// - move: row 1 gives up `x`, new row 5 takes it, row 1 changes again;
/// - swap: rows 2 and 3 swap `b` and `c` through a spare value;
/// - cycle: rows 6, 7, 8 rotate `p`, `q`, `r` through a spare value;
/// - a value moved from a deleted row to a row changed before the delete.
const CHANGES: &[&str] = &[
    "UPDATE accounts SET email = 'y' WHERE id = 1",
    "INSERT INTO accounts (id, email) VALUES (5, 'x')",
    "UPDATE accounts SET last_login = 1 WHERE id = 1",
    "UPDATE accounts SET email = 'tmp' WHERE id = 2",
    "UPDATE accounts SET email = 'b' WHERE id = 3",
    "UPDATE accounts SET email = 'c' WHERE id = 2",
    "UPDATE accounts SET email = 'tmp' WHERE id = 6",
    "UPDATE accounts SET email = 'p' WHERE id = 7",
    "UPDATE accounts SET email = 'q' WHERE id = 8",
    "UPDATE accounts SET email = 'r' WHERE id = 6",
    "UPDATE accounts SET last_login = 2 WHERE id = 7",
    "DELETE FROM accounts WHERE id = 5",
    "UPDATE accounts SET email = 'x', last_login = 3 WHERE id = 3",
];

const ACCOUNTS: MirroredTable = MirroredTable {
    name: "accounts",
    pg_select: "id::text, email, last_login::text",
    mysql_select: "CAST(id AS CHAR), email, CAST(last_login AS CHAR)",
    compare: &[],
};

const GATE: MirroredTable = MirroredTable {
    name: "gate",
    pg_select: "id::text, n::text",
    mysql_select: "CAST(id AS CHAR), CAST(n AS CHAR)",
    compare: &[],
};

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    PgToMysql,
    MysqlToPg,
}

async fn databases(prefix: &str) -> Databases {
    let db = common::fresh_databases(prefix).await;
    db.pg.batch_execute(PG_SCHEMA).await.unwrap();
    for ddl in MYSQL_SCHEMA {
        common::mysql_exec(&db.mysql, ddl).await;
    }
    db
}

async fn source_exec(db: &Databases, direction: Direction, sql: &str) {
    match direction {
        Direction::PgToMysql => db.pg.batch_execute(sql).await.unwrap(),
        Direction::MysqlToPg => common::mysql_exec(&db.mysql, sql).await,
    }
}

async fn start_agent(
    db: &Databases,
    data_dir: &std::path::Path,
    direction: Direction,
    tables: &[&str],
    on_error: &str,
    listen: &str,
) -> Agent {
    let pipeline = match direction {
        Direction::PgToMysql => TestPipeline {
            name: "unique",
            from: "crm",
            to: "erp",
            tables,
        },
        Direction::MysqlToPg => TestPipeline {
            name: "unique",
            from: "erp",
            to: "crm",
            tables,
        },
    };
    let toml = common::config_toml_with(db, data_dir, &[pipeline], listen)
        .replace("on_error = \"halt\"", &format!("on_error = \"{on_error}\""));
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    if direction == Direction::PgToMysql {
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

/// Holds a lock on the target's `gate` table until dropped by `release`.
enum GateLock {
    Pg(tokio_postgres::Client),
    Mysql(mysql_async::Conn),
}

async fn lock_gate(db: &Databases, direction: Direction) -> GateLock {
    match direction {
        Direction::PgToMysql => {
            let mut conn = db.mysql.get_conn().await.unwrap();
            conn.query_drop("LOCK TABLES gate WRITE").await.unwrap();
            GateLock::Mysql(conn)
        }
        Direction::MysqlToPg => {
            let client = common::pg_client(&db.pg_url).await;
            client
                .batch_execute("BEGIN; LOCK TABLE gate IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
            GateLock::Pg(client)
        }
    }
}

async fn release(lock: GateLock) {
    match lock {
        GateLock::Pg(client) => client.batch_execute("COMMIT").await.unwrap(),
        GateLock::Mysql(mut conn) => conn.query_drop("UNLOCK TABLES").await.unwrap(),
    }
}

async fn unique_values_move_swap_and_cycle(direction: Direction, prefix: &str) {
    let db = databases(prefix).await;
    for sql in SEED {
        db.pg.batch_execute(sql).await.unwrap();
        common::mysql_exec(&db.mysql, sql).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(
        &db,
        dir.path(),
        direction,
        &["accounts", "gate"],
        "halt",
        "127.0.0.1:0",
    )
    .await;
    let lock = lock_gate(&db, direction).await;
    source_exec(&db, direction, "UPDATE gate SET n = 1 WHERE id = 1").await;
    // the apply worker now waits for the lock with the gate's transaction
    tokio::time::sleep(Duration::from_secs(1)).await;
    for sql in CHANGES {
        source_exec(&db, direction, sql).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    release(lock).await;
    common::wait_until_mirrored(&db, &[&ACCOUNTS, &GATE], Duration::from_secs(60)).await;
    let status = agent.status.get("unique").unwrap();
    assert_eq!(status.last_error, None);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unique_values_move_swap_and_cycle_postgres_to_mariadb() {
    unique_values_move_swap_and_cycle(Direction::PgToMysql, "uk_pg_my").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unique_values_move_swap_and_cycle_mariadb_to_postgres() {
    unique_values_move_swap_and_cycle(Direction::MysqlToPg, "uk_my_pg").await;
}

/// `Bob` and `bob` are two rows in PostgreSQL and one key in a MariaDB
/// column with a `_ci` collation: the second is dead-lettered by name
/// instead of overwriting the first, and the rest flows.
#[tokio::test(flavor = "multi_thread")]
async fn keys_merged_by_the_target_collation_are_dead_lettered() {
    let db = databases("uk_ci").await;
    let dir = tempfile::tempdir().unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let agent = start_agent(
        &db,
        dir.path(),
        Direction::PgToMysql,
        &["users"],
        "dead_letter",
        &listen.to_string(),
    )
    .await;
    db.pg
        .batch_execute("INSERT INTO users VALUES ('Bob', 1)")
        .await
        .unwrap();
    db.pg
        .batch_execute("INSERT INTO users VALUES ('bob', 2)")
        .await
        .unwrap();
    db.pg
        .batch_execute("INSERT INTO users VALUES ('Carol', 3)")
        .await
        .unwrap();
    common::wait_for("Carol to arrive", Duration::from_secs(60), || async {
        common::mysql_rows(&db.mysql, "SELECT name FROM users WHERE name = 'Carol'")
            .await
            .len()
            == 1
    })
    .await;
    let rows = common::mysql_rows(
        &db.mysql,
        "SELECT name, CAST(n AS CHAR) FROM users ORDER BY n",
    )
    .await;
    assert_eq!(
        rows,
        vec![
            vec![Some("Bob".to_string()), Some("1".to_string())],
            vec![Some("Carol".to_string()), Some("3".to_string())],
        ]
    );
    let list = fetch_dead_letters(listen, Some("unique")).await.unwrap();
    let entries = &list.pipelines["unique"];
    assert_eq!(entries.len(), 1, "one dead letter: the insert of `bob`");
    let entry = &entries[0];
    assert_eq!(entry.reason_kind, "constraint");
    assert!(entry.message.contains("users"), "{}", entry.message);
    assert!(
        !entry.message.to_lowercase().contains("bob"),
        "no row values in messages: {}",
        entry.message
    );
    agent.stop().await;
}

/// `callosum check` names a target key column whose collation merges what
/// the source tells apart, with the ALTER that fixes it; after the fix, and
/// for a source that merges the same keys itself, it is quiet.
#[tokio::test(flavor = "multi_thread")]
async fn check_names_case_insensitive_target_keys() {
    let db = databases("uk_check").await;
    let dir = tempfile::tempdir().unwrap();
    let collation_problems = |direction: Direction| {
        let pipeline = match direction {
            Direction::PgToMysql => TestPipeline {
                name: "unique",
                from: "crm",
                to: "erp",
                tables: &["users", "accounts"],
            },
            Direction::MysqlToPg => TestPipeline {
                name: "unique",
                from: "erp",
                to: "crm",
                tables: &["users", "accounts"],
            },
        };
        let toml = common::config_toml_with(&db, dir.path(), &[pipeline], "127.0.0.1:0");
        async move {
            let config = Config::from_toml(&toml).unwrap();
            callosum::check::problems(&config)
                .await
                .into_iter()
                .filter(|p| p.problem.contains("insensitive"))
                .collect::<Vec<_>>()
        }
    };
    let found = collation_problems(Direction::PgToMysql).await;
    let named: Vec<&str> = ["`email`", "`name`"]
        .into_iter()
        .filter(|c| found.iter().any(|p| p.problem.contains(c)))
        .collect();
    assert_eq!((found.len(), named.len()), (2, 2), "{found:?}");
    for problem in &found {
        assert!(problem.problem.contains("utf8mb4_general_ci"));
        assert!(
            problem.fix.contains("COLLATE utf8mb4_bin"),
            "{}",
            problem.fix
        );
    }
    // a PostgreSQL target compares keys as the MariaDB source does
    assert!(collation_problems(Direction::MysqlToPg).await.is_empty());
    // the fixes as printed make the check quiet
    for problem in &found {
        common::mysql_exec(&db.mysql, problem.fix.trim_end_matches(';')).await;
    }
    assert!(collation_problems(Direction::PgToMysql).await.is_empty());
}

//! PostgreSQL → MariaDB replication against real servers: mixed workloads,
//! every supported type, unchanged TOAST, the idle slot, and `check`.

mod common;

use callosum::agent::Agent;
use callosum::config::Config;
use common::schema::{self, LINE_ITEMS, ORDERS};
use common::{Compare, Databases, MirroredTable};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::time::Duration;

/// Besides orders and line_items (`common::schema`).
const PG_SCHEMA: &str = "
CREATE TABLE type_zoo (
    id int PRIMARY KEY,
    b bool, i2 int2, i4 int4, i8 int8, num numeric(20,6), f4 float4, f8 float8,
    t text, vc varchar(100), ch char(8), by bytea, d date, tm time, ts timestamp,
    tstz timestamptz, u uuid, j json, jb jsonb
);
CREATE TABLE uncaptured (id bigserial PRIMARY KEY, payload text);
";

/// Besides orders and line_items (`common::schema`).
const MYSQL_SCHEMA: &[&str] = &[
    "CREATE TABLE type_zoo (id INT PRIMARY KEY, b TINYINT(1), i2 SMALLINT, i4 INT, i8 BIGINT, num DECIMAL(20,6), f4 FLOAT, f8 DOUBLE, t LONGTEXT, vc VARCHAR(100), ch CHAR(8), `by` LONGBLOB, d DATE, tm TIME(6), ts DATETIME(6), tstz TIMESTAMP(6) NULL, u CHAR(36), j JSON, jb JSON)",
];

const TYPE_ZOO: MirroredTable = MirroredTable {
    name: "type_zoo",
    pg_select: "id::text, b::int::text, i2::text, i4::text, i8::text, num::text, f4::text, f8::text, t, vc, rtrim(ch), encode(by, 'hex'), d::text, to_char('2000-01-01'::date + tm, 'HH24:MI:SS.US'), to_char(ts, 'YYYY-MM-DD HH24:MI:SS.US'), to_char(tstz AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), u::text, j::text, jb::text",
    mysql_select: "CAST(id AS CHAR), CAST(b AS CHAR), CAST(i2 AS CHAR), CAST(i4 AS CHAR), CAST(i8 AS CHAR), CAST(num AS CHAR), CAST(f4 AS CHAR), CAST(f8 AS CHAR), t, vc, ch, LOWER(HEX(`by`)), CAST(d AS CHAR), TIME_FORMAT(tm, '%H:%i:%s.%f'), DATE_FORMAT(ts, '%Y-%m-%d %H:%i:%s.%f'), DATE_FORMAT(tstz, '%Y-%m-%d %H:%i:%s.%f'), u, j, jb",
    compare: &[
        Compare::Exact, Compare::Exact, Compare::Exact, Compare::Exact, Compare::Exact,
        Compare::Exact, Compare::Float, Compare::Float, Compare::Exact, Compare::Exact,
        Compare::Exact, Compare::Exact, Compare::Exact, Compare::Exact, Compare::Exact,
        Compare::Exact, Compare::Exact, Compare::Json, Compare::Json,
    ],
};

async fn create_schemas(db: &Databases) {
    schema::create_orders_and_line_items(db).await;
    db.pg.batch_execute(PG_SCHEMA).await.unwrap();
    for ddl in MYSQL_SCHEMA {
        common::mysql_exec(&db.mysql, ddl).await;
    }
}

fn tables() -> Vec<&'static str> {
    vec!["public.orders", "public.line_items", "public.type_zoo"]
}

async fn start_agent(db: &Databases, data_dir: &std::path::Path) -> Agent {
    let toml = common::config_toml(db, data_dir, &tables(), "127.0.0.1:0");
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    common::wait_for_slot(db).await;
    agent
}

/// A SQL literal for each type_zoo column, from a seed; every few rows NULLs.
fn type_zoo_values(rng: &mut StdRng, id: i64) -> String {
    if rng.gen_ratio(1, 10) {
        return format!("{id}, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL");
    }
    let text_len = rng.gen_range(0..60);
    let text: String = (0..text_len)
        .map(|_| ['a', 'é', '€', '\'', '\\', ' ', 'Z', '漢', '"', '%'][rng.gen_range(0..10)])
        .collect();
    let text = text.replace('\'', "''");
    let bytes: String = (0..rng.gen_range(0..20))
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect();
    let day = rng.gen_range(0..20_000);
    let micros = rng.gen_range(0..86_400_000_000i64);
    let b = rng.gen_bool(0.5);
    let i2 = rng.gen::<i16>();
    let i4 = rng.gen::<i32>();
    let i8 = rng.gen::<i64>();
    let num_int = rng.gen_range(-99_999_999_999_999i64..99_999_999_999_999);
    let num = format!("{num_int}.{:06}", rng.gen_range(0..1_000_000));
    let f4 = rng.gen_range(-10_000..10_000) as f64 + 0.5;
    let f8 = rng.gen_range(-1_000_000..1_000_000) as f64 * 0.25;
    let t = text.replace('\\', "\\\\");
    let vc = format!("vc-{}", rng.gen::<u32>());
    let ch = format!("c{}", rng.gen_range(0..1000));
    let tzday = rng.gen_range(0..9_000);
    let u = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        rng.gen::<u32>(),
        rng.gen::<u16>(),
        rng.gen_range(0..0xfff),
        rng.gen_range(0..0xfff),
        rng.gen::<u64>() & 0xffff_ffff_ffff
    );
    let scalars = format!("{id}, {b}, {i2}, {i4}, {i8}, {num}, {f4}, {f8}");
    let texts = format!("E'{t}', '{vc}', '{ch}', '\\x{bytes}'");
    let times = format!(
        "date '1990-01-01' + {day}, time '00:00' + interval '{micros} microseconds', \
         timestamp '1990-01-01' + interval '{micros} microseconds' + {day} * interval '1 day', \
         timestamptz '2000-01-01 00:00:00+00' + interval '{micros} microseconds' + {tzday} * interval '1 day'"
    );
    let json =
        format!("'{{\"k\": {i4}, \"s\": \"{vc}\"}}', '{{\"nested\": {{\"a\": [1, 2, {i2}]}}}}'");
    format!("{scalars}, {texts}, {times}, '{u}', {json}")
}

/// Writes `changes` random changes over the three tables in transactions
/// of 1 to 20 statements, some touching several tables, with key updates.
/// Returns the number of changes written.
async fn random_workload(
    pg: &tokio_postgres::Client,
    seed: u64,
    changes: usize,
    id_base: i64,
) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut orders: BTreeSet<i64> = BTreeSet::new();
    let mut lines: BTreeSet<(i64, i32)> = BTreeSet::new();
    let mut zoo: BTreeSet<i64> = BTreeSet::new();
    let mut next_id = id_base;
    let mut written = 0;
    while written < changes {
        let statements = rng.gen_range(1..=20).min(changes - written);
        let mut sql = String::from("BEGIN;");
        for _ in 0..statements {
            next_id += 1;
            let id = next_id;
            let roll = rng.gen_range(0..100);
            let table = rng.gen_range(0..3);
            let empty = match table {
                0 => orders.is_empty(),
                1 => lines.is_empty(),
                _ => zoo.is_empty(),
            };
            // 60% inserts, 25% updates, 15% deletes
            let roll = if empty { 0 } else { roll };
            match (table, roll) {
                (0, 0..=59) => {
                    sql += &format!(
                        "INSERT INTO orders VALUES ({id}, {c}, 'new', {a}.{cents:02}, 'n{id}', timestamp '2024-01-01' + interval '{s} seconds');",
                        c = rng.gen_range(1..500), a = rng.gen_range(0..99_999), cents = rng.gen_range(0..100), s = rng.gen_range(0..10_000_000)
                    );
                    orders.insert(id);
                }
                (0, 60..=84) => {
                    let key = *orders.iter().nth(rng.gen_range(0..orders.len())).unwrap();
                    if rng.gen_ratio(1, 8) {
                        // primary-key update
                        sql += &format!(
                            "UPDATE orders SET id = {id}, status = 'rekeyed' WHERE id = {key};"
                        );
                        orders.remove(&key);
                        orders.insert(id);
                    } else {
                        sql += &format!("UPDATE orders SET status = 's{}', amount = amount + 1, note = NULL WHERE id = {key};", rng.gen_range(0..9));
                    }
                }
                (0, _) => {
                    let key = *orders.iter().nth(rng.gen_range(0..orders.len())).unwrap();
                    sql += &format!("DELETE FROM orders WHERE id = {key};");
                    orders.remove(&key);
                }
                (1, 0..=59) => {
                    let line = (id / 3, (id % 3) as i32);
                    if lines.insert(line) {
                        sql += &format!(
                            "INSERT INTO line_items VALUES ({}, {}, 'p{}', {}, {}.{:02});",
                            line.0,
                            line.1,
                            rng.gen_range(0..300),
                            rng.gen_range(1..50),
                            rng.gen_range(0..9999),
                            rng.gen_range(0..100)
                        );
                    } else {
                        sql += &format!("UPDATE line_items SET qty = qty + 1 WHERE order_id = {} AND line_no = {};", line.0, line.1);
                    }
                }
                (1, 60..=84) => {
                    let key = *lines.iter().nth(rng.gen_range(0..lines.len())).unwrap();
                    if rng.gen_ratio(1, 6) {
                        let new = (id, 7);
                        sql += &format!("UPDATE line_items SET order_id = {}, line_no = {} WHERE order_id = {} AND line_no = {};", new.0, new.1, key.0, key.1);
                        lines.remove(&key);
                        lines.insert(new);
                    } else {
                        sql += &format!("UPDATE line_items SET price = NULL, product = 'x{}' WHERE order_id = {} AND line_no = {};", rng.gen_range(0..50), key.0, key.1);
                    }
                }
                (1, _) => {
                    let key = *lines.iter().nth(rng.gen_range(0..lines.len())).unwrap();
                    sql += &format!(
                        "DELETE FROM line_items WHERE order_id = {} AND line_no = {};",
                        key.0, key.1
                    );
                    lines.remove(&key);
                }
                (_, 0..=59) => {
                    sql += &format!(
                        "INSERT INTO type_zoo VALUES ({});",
                        type_zoo_values(&mut rng, id)
                    );
                    zoo.insert(id);
                }
                (_, 60..=84) => {
                    let key = *zoo.iter().nth(rng.gen_range(0..zoo.len())).unwrap();
                    let values = type_zoo_values(&mut rng, key);
                    sql += &format!("UPDATE type_zoo SET (id, b, i2, i4, i8, num, f4, f8, t, vc, ch, by, d, tm, ts, tstz, u, j, jb) = ROW({values}) WHERE id = {key};");
                }
                (_, _) => {
                    let key = *zoo.iter().nth(rng.gen_range(0..zoo.len())).unwrap();
                    sql += &format!("DELETE FROM type_zoo WHERE id = {key};");
                    zoo.remove(&key);
                }
            }
        }
        sql += "COMMIT;";
        pg.batch_execute(&sql).await.unwrap();
        written += statements;
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_changes_and_a_50k_row_transaction_replicate_row_for_row() {
    let db = common::fresh_databases("mixed").await;
    create_schemas(&db).await;
    let data_dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&db, data_dir.path()).await;

    let started = std::time::Instant::now();
    let written = random_workload(&db.pg, 7, 20_000, 0).await;
    // one 50,000-row transaction
    db.pg
        .batch_execute(
            "BEGIN;
             INSERT INTO orders SELECT g, g % 100, 'bulk', (g % 1000) + 0.99, 'bulk ' || g, timestamp '2024-06-01' + g * interval '1 second'
               FROM generate_series(10000000, 10049999) g;
             COMMIT;",
        )
        .await
        .unwrap();
    let written_in = started.elapsed();
    common::wait_until_mirrored(
        &db,
        &[&ORDERS, &LINE_ITEMS, &TYPE_ZOO],
        Duration::from_secs(180),
    )
    .await;
    // reported, not asserted: numbers belong in benchmarks
    eprintln!(
        "{} changes written in {:.2}s, target equal {:.2}s after the last commit; peak RSS of this test process (agent + workload): {}",
        written + 50_000,
        written_in.as_secs_f64(),
        (started.elapsed() - written_in).as_secs_f64(),
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .unwrap_or("VmHWM: ?")
    );
    let metrics = agent.metrics.encode();
    assert!(metrics.contains("callosum_applied_events_total{pipeline=\"pg_to_mysql\"}"));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_text_left_untouched_by_an_update_stays_intact() {
    let db = common::fresh_databases("toast").await;
    create_schemas(&db).await;
    let data_dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&db, data_dir.path()).await;
    // 20 kB of incompressible text: stored out of line (TOAST)
    db.pg
        .batch_execute(
            "INSERT INTO type_zoo (id, t, i4)
               SELECT 1, string_agg(md5(g::text), ''), 0 FROM generate_series(1, 640) g;",
        )
        .await
        .unwrap();
    common::wait_until_mirrored(&db, &[&TYPE_ZOO], Duration::from_secs(60)).await;
    db.pg
        .batch_execute("UPDATE type_zoo SET i4 = i4 + 1 WHERE id = 1; UPDATE type_zoo SET i4 = i4 + 1 WHERE id = 1;")
        .await
        .unwrap();
    common::wait_for("the update to arrive", Duration::from_secs(60), || async {
        let rows = common::mysql_rows(
            &db.mysql,
            "SELECT CAST(i4 AS CHAR), CAST(LENGTH(t) AS CHAR) FROM type_zoo WHERE id = 1",
        )
        .await;
        rows == vec![vec![Some("2".to_string()), Some("20480".to_string())]]
    })
    .await;
    common::wait_until_mirrored(&db, &[&TYPE_ZOO], Duration::from_secs(10)).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_captured_tables_do_not_hold_back_the_slot() {
    let db = common::fresh_databases("idle").await;
    create_schemas(&db).await;
    let data_dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&db, data_dir.path()).await;
    db.pg
        .batch_execute("INSERT INTO orders (id) VALUES (1)")
        .await
        .unwrap();
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(60)).await;

    let before = slot_lsn(&db).await;
    // only an uncaptured table is written from now on
    for _ in 0..20 {
        db.pg
            .batch_execute("INSERT INTO uncaptured (payload) SELECT repeat('x', 500) FROM generate_series(1, 200)")
            .await
            .unwrap();
    }
    let written_to: i64 = db
        .pg
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
        .await
        .unwrap()
        .get(0);
    assert!(written_to > before);
    common::wait_for(
        "confirmed_flush_lsn to pass the uncaptured writes",
        Duration::from_secs(60),
        || async { slot_lsn(&db).await >= written_to },
    )
    .await;
    agent.stop().await;
}

async fn slot_lsn(db: &Databases) -> i64 {
    db.pg.query_one(
        "SELECT (confirmed_flush_lsn - '0/0')::int8 FROM pg_replication_slots WHERE slot_name = $1",
        &[&common::slot_name(db)],
    )
    .await
    .unwrap()
    .get::<_, i64>(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_wal_level_replica_with_the_fix() {
    let server = tokio::task::spawn_blocking(|| {
        callosum::testkit::PgServer::start(&[("wal_level", "replica")])
    })
    .await
    .unwrap()
    .unwrap();
    let db = common::fresh_databases_on(
        &server,
        callosum::testkit::MariaDbServer::shared(),
        "walreplica",
    )
    .await;
    db.pg
        .batch_execute("CREATE TABLE orders (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    common::mysql_exec(&db.mysql, "CREATE TABLE orders (id BIGINT PRIMARY KEY)").await;
    let dir = tempfile::tempdir().unwrap();
    let config =
        common::agent_process::write_pg_to_mysql_config(&db, dir.path(), &["public.orders"]);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_callosum"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("wal_level"), "stdout:\n{stdout}");
    assert!(
        stdout.contains("logical"),
        "the fix names wal_level = logical:\n{stdout}"
    );
}

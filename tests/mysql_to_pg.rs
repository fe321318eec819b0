//! MariaDB → PostgreSQL replication and both directions at once, against
//! real servers: every MySQL type, echo suppression, crashes, a purged
//! binlog.

mod common;

use callosum::agent::Agent;
use callosum::config::Config;
use common::agent_process::{self, spawn_agent, write_config};
use common::schema::{self, LINE_ITEMS, ORDERS};
use common::{Compare, Databases, MirroredTable, TestPipeline};
use mysql_async::prelude::Queryable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::time::Duration;

/// Besides orders and line_items (`common::schema`).
const MYSQL_SCHEMA: &[&str] = &[
    "CREATE TABLE type_zoo (id INT PRIMARY KEY, flag TINYINT(1), ti TINYINT, si SMALLINT, mi MEDIUMINT, i INT, bi BIGINT, ubi BIGINT UNSIGNED, ui INT UNSIGNED, dec_ DECIMAL(20,6), f FLOAT, d DOUBLE, c CHAR(8), vc VARCHAR(100), t TEXT, b BLOB, vb VARBINARY(16), dt DATE, tm TIME(6), dtm DATETIME(6), ts TIMESTAMP(6) NULL, y YEAR, j JSON, e ENUM('red','green','blue'), s SET('a','b','c'), bt BIT(8))",
];

/// Besides orders and line_items (`common::schema`).
const PG_SCHEMA: &str = "
CREATE TABLE type_zoo (id int PRIMARY KEY, flag bool, ti int2, si int2, mi int4, i int4, bi int8, ubi numeric(20,0), ui int8, dec_ numeric(20,6), f float4, d float8, c char(8), vc varchar(100), t text, b bytea, vb bytea, dt date, tm time, dtm timestamp, ts timestamptz, y int2, j jsonb, e text, s text, bt int4);
";

const TYPE_ZOO: MirroredTable = MirroredTable {
    name: "type_zoo",
    pg_select: "id::text, flag::int::text, ti::text, si::text, mi::text, i::text, bi::text, ubi::text, ui::text, dec_::text, f::text, d::text, rtrim(c), vc, t, encode(b, 'hex'), encode(vb, 'hex'), dt::text, to_char('2000-01-01'::date + tm, 'HH24:MI:SS.US'), to_char(dtm, 'YYYY-MM-DD HH24:MI:SS.US'), to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), y::text, j::text, e, s, bt::text",
    mysql_select: "CAST(id AS CHAR), CAST(flag AS CHAR), CAST(ti AS CHAR), CAST(si AS CHAR), CAST(mi AS CHAR), CAST(i AS CHAR), CAST(bi AS CHAR), CAST(ubi AS CHAR), CAST(ui AS CHAR), CAST(dec_ AS CHAR), CAST(f AS CHAR), CAST(d AS CHAR), c, vc, t, LOWER(HEX(b)), LOWER(HEX(vb)), CAST(dt AS CHAR), TIME_FORMAT(tm, '%H:%i:%s.%f'), DATE_FORMAT(dtm, '%Y-%m-%d %H:%i:%s.%f'), DATE_FORMAT(ts, '%Y-%m-%d %H:%i:%s.%f'), CAST(y AS CHAR), j, e, s, CAST(bt + 0 AS CHAR)",
    compare: &[
        Compare::Exact, Compare::Exact, Compare::Exact, Compare::Exact, Compare::Exact,
        Compare::Exact, Compare::Exact, Compare::Exact, Compare::Exact, Compare::Exact,
        Compare::Float, Compare::Float, Compare::Exact, Compare::Exact, Compare::Exact,
        Compare::Exact, Compare::Exact, Compare::Exact, Compare::Exact, Compare::Exact,
        Compare::Exact, Compare::Exact, Compare::Json, Compare::Exact, Compare::Exact,
        Compare::Exact,
    ],
};

async fn create_schemas(db: &Databases) {
    schema::create_orders_and_line_items(db).await;
    db.pg.batch_execute(PG_SCHEMA).await.unwrap();
    for ddl in MYSQL_SCHEMA {
        common::mysql_exec(&db.mysql, ddl).await;
    }
}

fn mysql_to_pg(tables: &'static [&'static str]) -> TestPipeline<'static> {
    TestPipeline {
        name: "mysql_to_pg",
        from: "erp",
        to: "crm",
        tables,
    }
}

async fn start_agent(
    db: &Databases,
    data_dir: &std::path::Path,
    pipelines: &[TestPipeline<'_>],
) -> Agent {
    let toml = common::config_toml_with(db, data_dir, pipelines, "127.0.0.1:0");
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    if pipelines.iter().any(|p| p.from == "crm") {
        common::wait_for_slot(db).await;
    }
    wait_streaming(&agent).await;
    agent
}

/// Waits until every pipeline streams: the binlog source starts at the
/// server's current position when it first connects.
async fn wait_streaming(agent: &Agent) {
    common::wait_for(
        "every pipeline to stream",
        Duration::from_secs(60),
        || async { agent.status.readiness().is_ok() },
    )
    .await;
}

fn zoo_values(rng: &mut StdRng, id: i64) -> String {
    if rng.gen_ratio(1, 10) {
        let nulls = vec!["NULL"; 25].join(", ");
        return format!("{id}, {nulls}");
    }
    let text: String = (0..rng.gen_range(0..40))
        .map(|_| ['a', 'é', '€', '\'', '\\', ' ', 'Z', '漢', '"'][rng.gen_range(0..9)])
        .collect();
    let text = text.replace('\\', "\\\\").replace('\'', "''");
    let hex: String = (0..rng.gen_range(0..16))
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect();
    let dec = format!(
        "{}.{:06}",
        rng.gen_range(-99_999_999_999_999i64..99_999_999_999_999),
        rng.gen_range(0..1_000_000)
    );
    let scalars = format!(
        "{id}, {flag}, {ti}, {si}, {mi}, {i}, {bi}, {ubi}, {ui}, {dec}, {f}, {d}",
        flag = rng.gen_range(0..2),
        ti = rng.gen::<i8>(),
        si = rng.gen::<i16>(),
        mi = rng.gen_range(-8_388_608..8_388_607),
        i = rng.gen::<i32>(),
        bi = rng.gen::<i64>(),
        ubi = rng.gen::<u64>(),
        ui = rng.gen::<u32>(),
        f = rng.gen_range(-10_000..10_000) as f64 + 0.5,
        d = rng.gen_range(-1_000_000..1_000_000) as f64 * 0.25,
    );
    let texts = format!(
        "'c{}', 'vc-{}', '{text}', X'{hex}', X'{hex}'",
        rng.gen_range(0..1000),
        rng.gen::<u32>()
    );
    let day = rng.gen_range(0..20_000);
    let micros = rng.gen_range(0..86_400_000_000i64);
    let times = format!(
        "DATE '1990-01-01' + INTERVAL {day} DAY, SEC_TO_TIME({micros} / 1000000), \
         TIMESTAMP '1990-01-01 00:00:00' + INTERVAL {day} DAY + INTERVAL {micros} MICROSECOND, \
         TIMESTAMP '2000-01-01 00:00:00' + INTERVAL {tzday} DAY + INTERVAL {micros} MICROSECOND",
        tzday = rng.gen_range(0..9_000)
    );
    let rest = format!(
        "{y}, '{{\"k\": {k}, \"nested\": [1, 2]}}', '{e}', '{s}', b'{bits:08b}'",
        y = rng.gen_range(1901..2155),
        k = rng.gen::<i32>(),
        e = ["red", "green", "blue"][rng.gen_range(0..3)],
        s = ["", "a", "b,c", "a,b,c"][rng.gen_range(0..4)],
        bits = rng.gen::<u8>()
    );
    format!("{scalars}, {texts}, {times}, {rest}")
}

/// `changes` random changes over the three MariaDB tables in transactions
/// of 1 to 20 statements, with key updates.
async fn random_mysql_workload(pool: &mysql_async::Pool, seed: u64, changes: usize) {
    let mut conn = pool.get_conn().await.unwrap();
    conn.query_drop("SET time_zone = '+00:00'").await.unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut orders: BTreeSet<i64> = BTreeSet::new();
    let mut lines: BTreeSet<(i64, i32)> = BTreeSet::new();
    let mut zoo: BTreeSet<i64> = BTreeSet::new();
    let mut next_id = 0i64;
    let mut written = 0;
    while written < changes {
        let statements = rng.gen_range(1..=20).min(changes - written);
        let mut sql = vec!["START TRANSACTION".to_string()];
        for _ in 0..statements {
            next_id += 1;
            let id = next_id;
            let table = rng.gen_range(0..3);
            let empty = match table {
                0 => orders.is_empty(),
                1 => lines.is_empty(),
                _ => zoo.is_empty(),
            };
            let roll = if empty { 0 } else { rng.gen_range(0..100) };
            let pick = |set: &BTreeSet<i64>, rng: &mut StdRng| {
                *set.iter().nth(rng.gen_range(0..set.len())).unwrap()
            };
            match (table, roll) {
                (0, 0..=59) => {
                    sql.push(format!(
                        "INSERT INTO orders VALUES ({id}, {}, 'new', {}.{:02}, 'n{id}', TIMESTAMP '2024-01-01 00:00:00' + INTERVAL {} SECOND)",
                        rng.gen_range(1..500), rng.gen_range(0..99_999), rng.gen_range(0..100), rng.gen_range(0..10_000_000)
                    ));
                    orders.insert(id);
                }
                (0, 60..=84) => {
                    let key = pick(&orders, &mut rng);
                    if rng.gen_ratio(1, 8) {
                        sql.push(format!(
                            "UPDATE orders SET id = {id}, status = 'rekeyed' WHERE id = {key}"
                        ));
                        orders.remove(&key);
                        orders.insert(id);
                    } else {
                        sql.push(format!("UPDATE orders SET status = 's{}', amount = amount + 1, note = NULL WHERE id = {key}", rng.gen_range(0..9)));
                    }
                }
                (0, _) => {
                    let key = pick(&orders, &mut rng);
                    sql.push(format!("DELETE FROM orders WHERE id = {key}"));
                    orders.remove(&key);
                }
                (1, 0..=59) => {
                    let line = (id / 3, (id % 3) as i32);
                    if lines.insert(line) {
                        sql.push(format!(
                            "INSERT INTO line_items VALUES ({}, {}, 'p{}', {}, {}.{:02})",
                            line.0,
                            line.1,
                            rng.gen_range(0..300),
                            rng.gen_range(1..50),
                            rng.gen_range(0..9999),
                            rng.gen_range(0..100)
                        ));
                    }
                }
                (1, 60..=84) => {
                    let key = *lines.iter().nth(rng.gen_range(0..lines.len())).unwrap();
                    if rng.gen_ratio(1, 6) {
                        sql.push(format!("UPDATE line_items SET order_id = {id}, line_no = 7 WHERE order_id = {} AND line_no = {}", key.0, key.1));
                        lines.remove(&key);
                        lines.insert((id, 7));
                    } else {
                        sql.push(format!("UPDATE line_items SET price = NULL, qty = qty + 1 WHERE order_id = {} AND line_no = {}", key.0, key.1));
                    }
                }
                (1, _) => {
                    let key = *lines.iter().nth(rng.gen_range(0..lines.len())).unwrap();
                    sql.push(format!(
                        "DELETE FROM line_items WHERE order_id = {} AND line_no = {}",
                        key.0, key.1
                    ));
                    lines.remove(&key);
                }
                (_, 0..=59) => {
                    sql.push(format!(
                        "INSERT INTO type_zoo VALUES ({})",
                        zoo_values(&mut rng, id)
                    ));
                    zoo.insert(id);
                }
                (_, 60..=84) => {
                    let key = pick(&zoo, &mut rng);
                    sql.push(format!(
                        "REPLACE INTO type_zoo VALUES ({})",
                        zoo_values(&mut rng, key)
                    ));
                }
                (_, _) => {
                    let key = pick(&zoo, &mut rng);
                    sql.push(format!("DELETE FROM type_zoo WHERE id = {key}"));
                    zoo.remove(&key);
                }
            }
        }
        sql.push("COMMIT".to_string());
        for statement in &sql {
            conn.query_drop(statement).await.unwrap();
        }
        written += statements;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_changes_replicate_to_postgres_row_for_row() {
    let db = common::fresh_databases("my2pg").await;
    create_schemas(&db).await;
    let data_dir = tempfile::tempdir().unwrap();
    let agent = start_agent(
        &db,
        data_dir.path(),
        &[mysql_to_pg(&["orders", "line_items", "type_zoo"])],
    )
    .await;
    random_mysql_workload(&db.mysql, 11, 20_000).await;
    common::wait_until_mirrored(
        &db,
        &[&ORDERS, &LINE_ITEMS, &TYPE_ZOO],
        Duration::from_secs(180),
    )
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_at_once_without_echo() {
    let db = common::fresh_databases("bidir").await;
    create_schemas(&db).await;
    let data_dir = tempfile::tempdir().unwrap();
    let agent = start_agent(
        &db,
        data_dir.path(),
        &[
            TestPipeline {
                name: "pg_to_mysql",
                from: "crm",
                to: "erp",
                tables: &["public.orders"],
            },
            mysql_to_pg(&["orders"]),
        ],
    )
    .await;
    let run_for = Duration::from_secs(30);
    // PostgreSQL writes odd ids, MariaDB even ids: disjoint rows
    let pg_writer = {
        let url = db.pg_url.clone();
        tokio::spawn(async move {
            let pg = common::pg_client(&url).await;
            let started = std::time::Instant::now();
            let mut transactions = 0u64;
            let mut id = 1i64;
            while started.elapsed() < run_for {
                pg.batch_execute(&format!(
                    "BEGIN; INSERT INTO orders VALUES ({id}, 1, 'pg', 1.50, 'from crm', timestamp '2024-01-01 10:00:00'); \
                     UPDATE orders SET status = 'pg-updated' WHERE id = {prev}; COMMIT;",
                    prev = (id - 2).max(1)
                ))
                .await
                .unwrap();
                transactions += 1;
                id += 2;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            transactions
        })
    };
    let mysql_writer = {
        let pool = db.mysql.clone();
        tokio::spawn(async move {
            let mut conn = pool.get_conn().await.unwrap();
            let started = std::time::Instant::now();
            let mut transactions = 0u64;
            let mut id = 2i64;
            while started.elapsed() < run_for {
                conn.query_drop("START TRANSACTION").await.unwrap();
                conn.query_drop(format!(
                    "INSERT INTO orders VALUES ({id}, 2, 'erp', 2.50, 'from erp', '2024-01-01 11:00:00')"
                ))
                .await
                .unwrap();
                if id > 2 {
                    conn.query_drop(format!("DELETE FROM orders WHERE id = {}", id - 2))
                        .await
                        .unwrap();
                }
                conn.query_drop("COMMIT").await.unwrap();
                transactions += 1;
                id += 2;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            transactions
        })
    };
    let pg_transactions = pg_writer.await.unwrap();
    let mysql_transactions = mysql_writer.await.unwrap();
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(120)).await;
    // no ping-pong: each side applied exactly what the other side committed
    common::wait_for(
        "applied counts to settle",
        Duration::from_secs(30),
        || async {
            let text = agent.metrics.encode();
            common::metric(&text, "callosum_applied_transactions_total", "pg_to_mysql") as u64
                == pg_transactions
                && common::metric(&text, "callosum_applied_transactions_total", "mysql_to_pg")
                    as u64
                    == mysql_transactions
        },
    )
    .await;
    // and it stays so: nothing comes back later
    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = agent.metrics.encode();
    assert_eq!(
        common::metric(&text, "callosum_applied_transactions_total", "pg_to_mysql") as u64,
        pg_transactions
    );
    assert_eq!(
        common::metric(&text, "callosum_applied_transactions_total", "mysql_to_pg") as u64,
        mysql_transactions
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_mysql_to_pg_neither_loses_nor_repeats() {
    let db = common::fresh_databases("mycrash").await;
    create_schemas(&db).await;
    common::audit::install_pg(&db.pg).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &common::config_toml_with(
            &db,
            &dir.path().join("data"),
            &[mysql_to_pg(&["orders"])],
            "127.0.0.1:0",
        ),
    );
    let agent_log = dir.path().join("agent.log");
    let spawn = || spawn_agent(&config, &agent_log, &[]);
    let mut agent = spawn();
    // the binlog source starts at the current position: wait for its checkpoint table write
    common::wait_for("the agent to connect", Duration::from_secs(60), || async {
        common::mysql_exec(
            &db.mysql,
            "INSERT INTO orders (id) VALUES (-1) ON DUPLICATE KEY UPDATE customer_id = coalesce(customer_id, 0) + 1",
        )
        .await;
        db.pg
            .query_opt("SELECT 1 FROM orders WHERE id = -1", &[])
            .await
            .unwrap()
            .is_some()
    })
    .await;
    let writer = {
        let pool = db.mysql.clone();
        tokio::spawn(async move {
            let mut conn = pool.get_conn().await.unwrap();
            for t in 0..2_500i64 {
                conn.query_drop("START TRANSACTION").await.unwrap();
                for i in 0..10 {
                    let id = t * 10 + i;
                    conn.query_drop(format!(
                        "INSERT INTO orders VALUES ({id}, {}, 'new', {}.25, 'o{id}', NULL)",
                        id % 13,
                        id % 1000
                    ))
                    .await
                    .unwrap();
                    if id % 3 == 0 && id >= 10 {
                        conn.query_drop(format!(
                            "UPDATE orders SET status = 'paid', amount = amount + 1 WHERE id = {}",
                            id - 10
                        ))
                        .await
                        .unwrap();
                    }
                    if id % 7 == 0 && id >= 20 {
                        conn.query_drop(format!("DELETE FROM orders WHERE id = {}", id - 20))
                            .await
                            .unwrap();
                    }
                }
                conn.query_drop("COMMIT").await.unwrap();
            }
        })
    };
    let audit_len = || async {
        db.pg
            .query_one("SELECT count(*) FROM checkpoint_audit", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    for kill in 1..=3 {
        let seen = audit_len().await;
        common::wait_for(
            &format!("batches before kill {kill}"),
            Duration::from_secs(60),
            || async { audit_len().await >= seen + 3 },
        )
        .await;
        agent_process::kill(&mut agent).await;
        agent = spawn();
    }
    assert!(!writer.is_finished(), "the kills must happen mid-stream");
    writer.await.unwrap();
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(120)).await;
    common::audit::assert_strictly_increasing(
        &common::audit::pg_positions(&db.pg).await,
        "mysql_to_pg",
    );
    agent.start_kill().unwrap();
    let _ = agent.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_binlog_stops_the_pipeline_with_a_clear_error() {
    common::init_logging();
    // a server of its own: purging the shared server's binlog would break other tests
    let server = tokio::task::spawn_blocking(|| callosum::testkit::MariaDbServer::start(&[]))
        .await
        .unwrap()
        .unwrap();
    let db =
        common::fresh_databases_on(callosum::testkit::PgServer::shared(), &server, "purge").await;
    create_schemas(&db).await;
    let data_dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&db, data_dir.path(), &[mysql_to_pg(&["orders"])]).await;
    common::mysql_exec(
        &db.mysql,
        "INSERT INTO orders (id, status) VALUES (1, 'before')",
    )
    .await;
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(60)).await;
    agent.stop().await;

    // while the agent is down: more changes, then their binlog is purged
    common::mysql_exec(
        &db.mysql,
        "INSERT INTO orders (id, status) VALUES (2, 'while down')",
    )
    .await;
    common::mysql_exec(&db.mysql, "FLUSH BINARY LOGS").await;
    common::mysql_exec(
        &db.mysql,
        "INSERT INTO orders (id, status) VALUES (3, 'after flush')",
    )
    .await;
    common::mysql_exec(&db.mysql, "FLUSH BINARY LOGS").await;
    // PURGE silently keeps files a lingering dump thread still reads: retry
    // until only the newest file is left
    common::wait_for(
        "the old binlogs to be purged",
        Duration::from_secs(60),
        || async {
            let mut conn = db.mysql.get_conn().await.unwrap();
            let logs: Vec<String> = conn
                .query::<mysql_async::Row, _>("SHOW BINARY LOGS")
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<String, _>(0).unwrap())
                .collect();
            let newest = logs.last().unwrap().clone();
            conn.query_drop(format!("PURGE BINARY LOGS TO '{newest}'"))
                .await
                .unwrap();
            logs.len() == 1
        },
    )
    .await;

    let toml = common::config_toml_with(
        &db,
        data_dir.path(),
        &[mysql_to_pg(&["orders"])],
        "127.0.0.1:0",
    );
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    common::wait_for("the pipeline to halt", Duration::from_secs(60), || async {
        agent
            .status
            .get("mysql_to_pg")
            .is_some_and(|s| s.state == callosum::http::PipelineState::Halted)
    })
    .await;
    let status = agent.status.get("mysql_to_pg").unwrap();
    let error = status.last_error.unwrap_or_default();
    assert!(
        error.contains("purged") || error.contains("no longer"),
        "error says the position is gone: {error}"
    );
    assert!(error.contains("snapshot"), "error says what to do: {error}");
    // nothing after the gap was applied
    let ids: Vec<i64> = db
        .pg
        .query("SELECT id FROM orders ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![1]);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_on_mariadb_empties_the_postgres_table() {
    let db = common::fresh_databases("my2pg_trunc").await;
    create_schemas(&db).await;
    let data_dir = tempfile::tempdir().unwrap();
    let tables = &["orders", "line_items"];
    let agent = start_agent(&db, data_dir.path(), &[mysql_to_pg(tables)]).await;
    common::mysql_exec(
        &db.mysql,
        "INSERT INTO orders (id, status) VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    )
    .await;
    common::mysql_exec(
        &db.mysql,
        "INSERT INTO line_items (order_id, line_no, product, qty) VALUES (1, 1, 'p', 1), (1, 2, 'q', 2)",
    )
    .await;
    common::wait_until_mirrored(&db, &[&ORDERS, &LINE_ITEMS], Duration::from_secs(60)).await;

    // a table the stream has a map of
    common::mysql_exec(&db.mysql, "TRUNCATE TABLE orders").await;
    common::mysql_exec(
        &db.mysql,
        "INSERT INTO orders (id, status) VALUES (10, 'after')",
    )
    .await;
    common::wait_until_mirrored(&db, &[&ORDERS, &LINE_ITEMS], Duration::from_secs(60)).await;
    agent.stop().await;

    // after a restart, the first event: no map yet, the schema comes from
    // the catalog; comments and backquotes as a client may send them
    let agent = start_agent(&db, data_dir.path(), &[mysql_to_pg(tables)]).await;
    common::mysql_exec(&db.mysql, "/* tidy up */ truncate `line_items`").await;
    common::mysql_exec(
        &db.mysql,
        "INSERT INTO line_items (order_id, line_no, product, qty) VALUES (10, 1, 'r', 3)",
    )
    .await;
    common::wait_until_mirrored(&db, &[&ORDERS, &LINE_ITEMS], Duration::from_secs(60)).await;
    let n: i64 = db
        .pg
        .query_one("SELECT count(*) FROM line_items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_format_dml_halts_the_pipeline_by_name() {
    let db = common::fresh_databases("my2pg_stmt").await;
    create_schemas(&db).await;
    let data_dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&db, data_dir.path(), &[mysql_to_pg(&["orders"])]).await;
    let mut conn = db.mysql.get_conn().await.unwrap();
    conn.query_drop("SET SESSION binlog_format = 'STATEMENT'")
        .await
        .unwrap();
    conn.query_drop("INSERT INTO orders (id, status) VALUES (1, 'lost')")
        .await
        .unwrap();
    drop(conn);
    common::wait_for("the pipeline to halt", Duration::from_secs(60), || async {
        agent
            .status
            .get("mysql_to_pg")
            .is_some_and(|s| s.state == callosum::http::PipelineState::Halted)
    })
    .await;
    let error = agent
        .status
        .get("mysql_to_pg")
        .unwrap()
        .last_error
        .unwrap_or_default();
    assert!(error.contains("orders"), "error names the table: {error}");
    assert!(
        error.contains("INSERT"),
        "error names the statement: {error}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gtid_sequence_going_backwards_halts_instead_of_skipping() {
    common::init_logging();
    // a server of its own: a backwards GTID would halt other tests' streams
    let server = tokio::task::spawn_blocking(|| callosum::testkit::MariaDbServer::start(&[]))
        .await
        .unwrap()
        .unwrap();
    let db = common::fresh_databases_on(callosum::testkit::PgServer::shared(), &server, "gtidback")
        .await;
    create_schemas(&db).await;
    let data_dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&db, data_dir.path(), &[mysql_to_pg(&["orders"])]).await;
    common::mysql_exec(&db.mysql, "INSERT INTO orders (id, status) VALUES (1, 'a')").await;
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(60)).await;
    let mut conn = db.mysql.get_conn().await.unwrap();
    conn.query_drop("SET SESSION gtid_seq_no = 1")
        .await
        .unwrap();
    conn.query_drop("INSERT INTO orders (id, status) VALUES (2, 'b')")
        .await
        .unwrap();
    drop(conn);
    common::wait_for("the pipeline to halt", Duration::from_secs(60), || async {
        agent
            .status
            .get("mysql_to_pg")
            .is_some_and(|s| s.state == callosum::http::PipelineState::Halted)
    })
    .await;
    let error = agent
        .status
        .get("mysql_to_pg")
        .unwrap()
        .last_error
        .unwrap_or_default();
    assert!(error.contains("backwards"), "error says why: {error}");
    agent.stop().await;
}

//! Compares the PostgreSQL sink's upsert strategies (multi-row `VALUES`,
//! `unnest` arrays, binary `COPY` + merge, and `Auto`) on the design's
//! `orders` table against the test kit's PostgreSQL.
//!
//! Run: `cargo run --release --example pg_sink_strategies [rounds] [batch sizes]`,
//! e.g. `… pg_sink_strategies 7 1,10,100,1000,5000` (the default).
//!
//! For each batch size and strategy it applies `rounds` target transactions
//! (begin + apply + commit) of fresh inserts, of full-row updates of
//! existing rows, and of the design's mix (50% inserts, 40% updates, 10%
//! deletes), each starting from the same vacuumed 100,000-row table, and
//! prints the median rows/s. Numbers are only comparable within one run.

use std::sync::Arc;
use std::time::Instant;

use callosum::testkit::PgServer;
use callosum_api::{
    ChangeEvent, ColumnSchema, Lsn, Position, RowChange, Sink, TableId, TableSchema, Value,
};
use callosum_postgres::{PgSink, PgSinkConfig, UpsertStrategy};
use chrono::NaiveDate;
use tokio_postgres::NoTls;

const DDL: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, \
                   status varchar(32), amount numeric(12,2), note varchar(200), updated_at timestamp)";

fn schema() -> Arc<TableSchema> {
    let cols = [
        ("id", "int8"),
        ("customer_id", "int8"),
        ("status", "varchar"),
        ("amount", "numeric"),
        ("note", "varchar"),
        ("updated_at", "timestamp"),
    ];
    Arc::new(TableSchema {
        table: TableId::new("public", "orders"),
        columns: cols
            .iter()
            .map(|(n, t)| ColumnSchema {
                name: n.to_string(),
                source_type: t.to_string(),
                is_key: *n == "id",
            })
            .collect(),
    })
}

fn row(id: i64, version: i64) -> Vec<Value> {
    let ts = NaiveDate::from_ymd_opt(2024, 5, 1)
        .unwrap()
        .and_hms_micro_opt(12, 0, 0, (id % 1_000_000) as u32)
        .unwrap();
    vec![
        Value::Int(id),
        Value::Int(id % 5000),
        Value::Text(if version == 0 { "new" } else { "shipped" }.into()),
        Value::Decimal(format!("{}.{:02}", id % 100_000, version % 100)),
        Value::Text(format!("order {id} note, version {version}")),
        Value::Timestamp(ts),
    ]
}

/// Rows in the table before each measurement.
const PRELOAD: i64 = 100_000;

#[derive(Clone, Copy, Debug)]
enum Workload {
    Insert,
    Update,
    Mixed,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(7);
    let server = PgServer::shared();
    let url = server.fresh_database("pg_sink_strategies").await.unwrap();
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(DDL).await.unwrap();
    let mut sink = PgSink::connect(PgSinkConfig {
        tls: Default::default(),
        store: "bench".into(),
        url: url.clone(),
        password: None,
        pipeline: "bench".into(),
        tables: vec![(
            TableId::new("public", "orders"),
            TableId::new("public", "orders"),
        )],
        fence: Default::default(),
    })
    .await
    .unwrap();
    let s = schema();
    let mut next_id;
    let mut position = 1u64;
    println!("batch  workload  strategy  median rows/s");
    let batches: Vec<usize> = std::env::args()
        .nth(2)
        .map(|b| {
            b.split(',')
                .map(|x| x.parse().expect("batch size"))
                .collect()
        })
        .unwrap_or_else(|| vec![1, 10, 100, 1000, 5000]);
    for batch in batches {
        for workload in [Workload::Insert, Workload::Update, Workload::Mixed] {
            for strategy in [
                UpsertStrategy::Values,
                UpsertStrategy::Unnest,
                UpsertStrategy::Copy,
                UpsertStrategy::Auto,
            ] {
                // The same starting point for every measurement: PRELOAD
                // rows above the ids used so far, a vacuumed table.
                client
                    .batch_execute(&format!(
                        "TRUNCATE orders; INSERT INTO orders SELECT g, g % 5000, 'new', \
                         ((g % 100000) || '.00')::numeric, 'order ' || g || ' note, version 0', \
                         '2024-05-01 12:00:00' FROM generate_series(1, {PRELOAD}) g"
                    ))
                    .await
                    .unwrap();
                client.batch_execute("VACUUM ANALYZE orders").await.unwrap();
                next_id = PRELOAD;
                sink.set_upsert_strategy(strategy);
                let mut rates = Vec::with_capacity(rounds);
                for round in 0..rounds + 1 {
                    let events: Vec<ChangeEvent> = match workload {
                        Workload::Insert => (0..batch)
                            .map(|_| {
                                next_id += 1;
                                ChangeEvent {
                                    schema: s.clone(),
                                    change: RowChange::Insert {
                                        row: row(next_id, 0),
                                    },
                                }
                            })
                            .collect(),
                        Workload::Update => (0..batch as i64)
                            .map(|i| ChangeEvent {
                                schema: s.clone(),
                                change: RowChange::Update {
                                    old_key: None,
                                    row: row(next_id - i, round as i64 + 1),
                                },
                            })
                            .collect(),
                        Workload::Mixed => (0..batch)
                            .map(|i| match i % 10 {
                                0..=4 => {
                                    next_id += 1;
                                    ChangeEvent {
                                        schema: s.clone(),
                                        change: RowChange::Insert {
                                            row: row(next_id, 0),
                                        },
                                    }
                                }
                                5..=8 => ChangeEvent {
                                    schema: s.clone(),
                                    change: RowChange::Update {
                                        old_key: None,
                                        row: row(next_id - 2 * batch as i64 - i as i64, 7),
                                    },
                                },
                                _ => {
                                    let mut key = vec![Value::Null; 6];
                                    key[0] = Value::Int(next_id - 3 * batch as i64 - i as i64);
                                    ChangeEvent {
                                        schema: s.clone(),
                                        change: RowChange::Delete { key },
                                    }
                                }
                            })
                            .collect(),
                    };
                    position += 1;
                    let started = Instant::now();
                    sink.begin(&Position::Pg(Lsn(position))).await.unwrap();
                    sink.apply(&events).await.unwrap();
                    sink.commit().await.unwrap();
                    let elapsed = started.elapsed().as_secs_f64();
                    if round > 0 {
                        // The first round warms up statement caches.
                        rates.push(batch as f64 / elapsed);
                    }
                }
                rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
                println!(
                    "{batch:>5}  {:<8}  {:<8}  {:>10.0}",
                    format!("{workload:?}"),
                    format!("{strategy:?}"),
                    rates[rates.len() / 2]
                );
            }
        }
    }
}

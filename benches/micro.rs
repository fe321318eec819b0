//! Criterion micro-benchmarks of the hot paths, on the design's `orders`
//! row shape (design.md §7): pgoutput decoding, change-log append + flush
//! and read, batch planning and MariaDB statement building.
//!
//! `cargo bench --bench micro` (all), `cargo bench --bench micro -- plan`
//! (one group). Binlog row decoding is not here yet: the MariaDB binlog
//! source has no public decoder entry point in `callosum_mysql`.

use callosum::log::ChangeLog;
use callosum_api::batch::{plan, Step};
use callosum_api::{
    ChangeEvent, ColumnSchema, Lsn, Position, RowChange, TableId, TableSchema, TransactionMeta,
    Value,
};
use callosum_mysql::convert::{write_literal, write_quoted, TargetType};
use callosum_postgres::pgoutput::{self, PgOutputMessage};
use callosum_postgres::text_value::{self, oid};
use chrono::NaiveDate;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::sync::Arc;

/// Column types of `orders`, as PostgreSQL type OIDs.
const ORDERS_OIDS: [u32; 6] = [
    oid::INT8,
    oid::INT8,
    oid::VARCHAR,
    oid::NUMERIC,
    oid::VARCHAR,
    oid::TIMESTAMP,
];

fn orders_schema() -> Arc<TableSchema> {
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
            .map(|(name, ty)| ColumnSchema {
                name: name.to_string(),
                source_type: ty.to_string(),
                is_key: *name == "id",
            })
            .collect(),
    })
}

/// The text form of an `orders` row, as pgoutput sends it.
fn row_text(id: i64, updated: bool) -> [String; 6] {
    [
        id.to_string(),
        (id % 997).to_string(),
        if updated { "shipped" } else { "new" }.to_string(),
        format!(
            "{}.{:02}",
            (id * 37) % 10_000 + i64::from(updated),
            id % 100
        ),
        format!("order {id}: two pallets, deliver to the back door"),
        format!(
            "2024-03-{:02} 10:{:02}:{:02}",
            id % 28 + 1,
            id % 60,
            id % 60
        ),
    ]
}

fn row_values(id: i64, updated: bool) -> Vec<Value> {
    let day = NaiveDate::from_ymd_opt(2024, 3, (id % 28 + 1) as u32).unwrap();
    let [_, _, status, amount, note, _] = row_text(id, updated);
    vec![
        Value::Int(id),
        Value::Int(id % 997),
        Value::Text(status),
        Value::Decimal(amount),
        Value::Text(note),
        Value::Timestamp(
            day.and_hms_opt(10, (id % 60) as u32, (id % 60) as u32)
                .unwrap(),
        ),
    ]
}

fn push_tuple(out: &mut Vec<u8>, cols: &[String]) {
    out.extend_from_slice(&(cols.len() as i16).to_be_bytes());
    for c in cols {
        out.push(b't');
        out.extend_from_slice(&(c.len() as i32).to_be_bytes());
        out.extend_from_slice(c.as_bytes());
    }
}

/// pgoutput Insert (`I`) and Update (`U`, no old tuple: the key did not
/// change) messages of `orders` rows.
fn pgoutput_messages(n: i64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let update = i % 2 == 1;
            let mut m = vec![if update { b'U' } else { b'I' }];
            m.extend_from_slice(&16_384u32.to_be_bytes());
            m.push(b'N');
            push_tuple(&mut m, &row_text(i + 1, update));
            m
        })
        .collect()
}

fn bench_pgoutput(c: &mut Criterion) {
    let messages = pgoutput_messages(1000);
    let bytes: usize = messages.iter().map(Vec::len).sum();
    let mut g = c.benchmark_group("pgoutput");
    g.throughput(Throughput::Elements(messages.len() as u64));
    g.bench_function("decode_insert_update_1000", |b| {
        b.iter(|| {
            for m in &messages {
                black_box(pgoutput::decode(black_box(m)).unwrap());
            }
        })
    });
    // decoding plus the text → Value conversion the source does per column
    g.bench_function("decode_and_convert_1000", |b| {
        b.iter(|| {
            for m in &messages {
                let tuple = match pgoutput::decode(m).unwrap() {
                    PgOutputMessage::Insert(i) => i.new,
                    PgOutputMessage::Update(u) => u.new,
                    _ => unreachable!(),
                };
                let row: Vec<Value> = tuple
                    .into_iter()
                    .zip(ORDERS_OIDS)
                    .map(|(v, oid)| match v {
                        pgoutput::TupleValue::Text(t) => text_value::convert(oid, t).unwrap(),
                        _ => Value::Null,
                    })
                    .collect();
                black_box(row);
            }
        })
    });
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("decode_insert_update_1000_bytes", |b| {
        b.iter(|| {
            for m in &messages {
                black_box(pgoutput::decode(black_box(m)).unwrap());
            }
        })
    });
    g.finish();
}

/// The workload of design.md §7 as change events, in transactions of
/// `size` changes (a multiple of 10), as the e2e benchmark writes it from
/// transaction 120 on: half inserts, 40 % updates and 10 % deletes of the
/// rows of the transaction 60 back (so no key repeats within 50 transactions).
fn workload(schema: &Arc<TableSchema>, txns: i64, size: i64) -> Vec<Vec<ChangeEvent>> {
    const FROM: i64 = 120;
    const LAG: i64 = 60;
    let (h, u, d) = (size / 2, size * 2 / 5, size / 10);
    let first = |k: i64| h * k + 1;
    let ev = |change| ChangeEvent {
        schema: schema.clone(),
        change,
    };
    let key = |id: i64| {
        let mut k = vec![Value::Null; 6];
        k[0] = Value::Int(id);
        k
    };
    (FROM..FROM + txns)
        .map(|k| {
            let mut t = Vec::with_capacity(size as usize);
            for id in first(k)..first(k) + h {
                t.push(ev(RowChange::Insert {
                    row: row_values(id, false),
                }));
            }
            let old = first(k - LAG);
            for id in old..old + u {
                t.push(ev(RowChange::Update {
                    old_key: None,
                    row: row_values(id, true),
                }));
            }
            for id in old + u..old + u + d {
                t.push(ev(RowChange::Delete { key: key(id) }));
            }
            t
        })
        .collect()
}

fn bench_change_log(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let schema = orders_schema();
    // 100 transactions of 100 changes: 10,000 events per iteration
    let txns = workload(&schema, 100, 100);
    let events: u64 = txns.iter().map(|t| t.len() as u64).sum();
    let mut g = c.benchmark_group("change_log");
    g.throughput(Throughput::Elements(events));
    g.sample_size(20);

    let dir = tempfile::tempdir().unwrap();
    let log = ChangeLog::open(&dir.path().join("log")).unwrap();
    let mut writer = log.writer("bench").unwrap();
    let mut lsn = 0u64;
    g.bench_function("append_flush_100x100", |b| {
        b.iter_batched(
            || txns.clone(),
            |txns| {
                for t in txns {
                    writer.begin();
                    for e in t {
                        writer.append(e).unwrap();
                    }
                    lsn += 100;
                    writer
                        .commit(TransactionMeta {
                            position: Position::Pg(Lsn(lsn)),
                            resume_position: Position::Pg(Lsn(lsn + 1)),
                            commit_time_micros: 0,
                        })
                        .unwrap();
                }
                rt.block_on(writer.flush()).unwrap();
            },
            BatchSize::PerIteration,
        )
    });

    // a log holding exactly one iteration's worth, read whole each time
    let dir = tempfile::tempdir().unwrap();
    let log = ChangeLog::open(&dir.path().join("log")).unwrap();
    let mut writer = log.writer("bench").unwrap();
    for (k, t) in txns.iter().enumerate() {
        writer.begin();
        for e in t {
            writer.append(e.clone()).unwrap();
        }
        let lsn = (k as u64 + 1) * 100;
        writer
            .commit(TransactionMeta {
                position: Position::Pg(Lsn(lsn)),
                resume_position: Position::Pg(Lsn(lsn + 1)),
                commit_time_micros: 0,
            })
            .unwrap();
    }
    rt.block_on(writer.flush()).unwrap();
    g.bench_function("read_100x100", |b| {
        b.iter(|| {
            let mut reader = log.reader("bench", "p").unwrap();
            reader.seek_after(None).unwrap();
            let mut out = Vec::with_capacity(5000);
            let mut read = 0u64;
            loop {
                let batch = reader.peek_transactions(5000).unwrap();
                if batch.is_empty() {
                    break;
                }
                for (seq, txn) in &batch {
                    reader.read_events(txn, 0, txn.events, &mut out).unwrap();
                    reader.mark_applied(*seq, txn).unwrap();
                }
                read += out.len() as u64;
                out.clear();
            }
            assert_eq!(read, events);
        })
    });
    g.finish();
}

fn bench_plan(c: &mut Criterion) {
    let schema = orders_schema();
    // 5 transactions of 100: one 500-change apply batch
    let events: Vec<ChangeEvent> = workload(&schema, 5, 100).into_iter().flatten().collect();
    let mut g = c.benchmark_group("plan");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("plan_500_changes", |b| {
        b.iter(|| black_box(plan(black_box(&events))))
    });
    // one apply batch of the agent's default size
    let big: Vec<ChangeEvent> = workload(&schema, 50, 100).into_iter().flatten().collect();
    g.throughput(Throughput::Elements(big.len() as u64));
    g.bench_function("plan_5000_changes", |b| {
        b.iter(|| black_box(plan(black_box(&big))))
    });
    g.finish();
}

/// The MariaDB statements of a planned batch, built the way the sink builds
/// them (`INSERT … ON DUPLICATE KEY UPDATE` and `DELETE … IN`), with the
/// public `write_literal`; the sink's own `build_statement` is private.
fn build_mysql_statements(steps: &[Step<'_>], types: &[TargetType], sql: &mut Vec<String>) {
    const COLS: [&str; 6] = [
        "id",
        "customer_id",
        "status",
        "amount",
        "note",
        "updated_at",
    ];
    for step in steps {
        let mut s = String::with_capacity(64 * 1024);
        match step {
            Step::Delete { keys, .. } => {
                s.push_str("DELETE FROM `orders` WHERE `id` IN (");
                for (i, key) in keys.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    write_literal(&mut s, &key[0], &types[0]).unwrap();
                }
                s.push(')');
            }
            Step::Upsert { present, rows, .. } => {
                s.push_str("INSERT INTO `orders` (");
                for (i, c) in COLS.iter().enumerate().filter(|(i, _)| present[*i]) {
                    if i > 0 {
                        s.push(',');
                    }
                    s.push('`');
                    s.push_str(c);
                    s.push('`');
                }
                s.push_str(") VALUES ");
                for (r, row) in rows.iter().enumerate() {
                    if r > 0 {
                        s.push(',');
                    }
                    s.push('(');
                    for (i, v) in row.iter().enumerate().filter(|(i, _)| present[*i]) {
                        if i > 0 {
                            s.push(',');
                        }
                        write_literal(&mut s, v, &types[i]).unwrap();
                    }
                    s.push(')');
                }
                s.push_str(" ON DUPLICATE KEY UPDATE ");
                for (i, c) in COLS.iter().enumerate().skip(1) {
                    if i > 1 {
                        s.push(',');
                    }
                    s.push_str(&format!("`{c}`=VALUES(`{c}`)"));
                }
            }
            _ => unreachable!("the workload has no truncates or key changes"),
        }
        sql.push(s);
    }
}

fn bench_mysql_statements(c: &mut Criterion) {
    let schema = orders_schema();
    let types = [
        TargetType::from_catalog("bigint", "bigint(20)", None, Some(19), Some(0), None),
        TargetType::from_catalog("bigint", "bigint(20)", None, Some(19), Some(0), None),
        TargetType::from_catalog("varchar", "varchar(32)", Some(32), None, None, None),
        TargetType::from_catalog("decimal", "decimal(12,2)", None, Some(12), Some(2), None),
        TargetType::from_catalog("varchar", "varchar(200)", Some(200), None, None, None),
        TargetType::from_catalog("datetime", "datetime(6)", None, None, None, Some(6)),
    ];
    let events: Vec<ChangeEvent> = workload(&schema, 5, 100).into_iter().flatten().collect();
    let steps = plan(&events);
    let mut g = c.benchmark_group("mysql_sink");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("build_statements_500_changes", |b| {
        let mut sql = Vec::new();
        b.iter(|| {
            sql.clear();
            build_mysql_statements(black_box(&steps), &types, &mut sql);
            black_box(&sql);
        })
    });
    g.bench_function("plan_and_build_500_changes", |b| {
        let mut sql = Vec::new();
        b.iter(|| {
            sql.clear();
            let steps = plan(black_box(&events));
            build_mysql_statements(&steps, &types, &mut sql);
            black_box(&sql);
        })
    });
    // write_literal alone, over every value of a 500-row upsert batch
    let upsert_rows: Vec<Vec<Value>> = (1..=500).map(|id| row_values(id, id % 2 == 0)).collect();
    g.throughput(Throughput::Elements(upsert_rows.len() as u64));
    g.bench_function("write_literal_500_rows", |b| {
        let mut s = String::with_capacity(128 * 1024);
        b.iter(|| {
            s.clear();
            for row in &upsert_rows {
                for (v, ty) in row.iter().zip(&types) {
                    write_literal(&mut s, v, ty).unwrap();
                    s.push(',');
                }
            }
            black_box(&s);
        })
    });
    g.bench_function("write_quoted_500_notes", |b| {
        let mut s = String::with_capacity(64 * 1024);
        b.iter(|| {
            s.clear();
            for row in &upsert_rows {
                if let Value::Text(t) = &row[4] {
                    write_quoted(&mut s, t);
                }
            }
            black_box(&s);
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_pgoutput,
    bench_change_log,
    bench_plan,
    bench_mysql_statements
);
criterion_main!(benches);

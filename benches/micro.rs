//! Criterion micro-benchmarks of the hot paths, on the design's `orders`
//! row shape (design.md §7): pgoutput decoding, binlog row-image decoding,
//! change-log append + flush and read, batch planning, table maps and
//! MariaDB statement building.
//!
//! `cargo bench --bench micro` (all), `cargo bench --bench micro -- plan`
//! (one group).

use callosum::log::ChangeLog;
use callosum_api::batch::{plan, Step};
use callosum_api::table_map::{filter, ColumnRule, TableMap, TableMaps, Unmatched, ValueMap};
use callosum_api::{
    ChangeEvent, ColumnSchema, Lsn, Position, RowChange, TableId, TableSchema, TransactionMeta,
    Value,
};
use callosum_mysql::convert::{write_literal, write_quoted, TargetType};
use callosum_mysql::row_value::{decode_image, ColumnDef};
use callosum_postgres::pgoutput::{self, PgOutputMessage};
use callosum_postgres::text_value::{self, oid};
use chrono::NaiveDate;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mysql_async::consts::ColumnType;
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

/// `orders` as a MariaDB 10.11 table map describes it (utf8mb4 text,
/// `mysql56_temporal_format`): bigint ×2, varchar(32) (128 bytes: 1-byte
/// length), decimal(12,2), varchar(200) (800 bytes: 2-byte length),
/// datetime(6) as DATETIME2.
fn orders_binlog_columns() -> Vec<ColumnDef> {
    const UTF8MB4_GENERAL_CI: u16 = 45;
    let text = |name: &str, max_bytes: u16| {
        let mut c = ColumnDef::new(
            name,
            ColumnType::MYSQL_TYPE_VARCHAR,
            &max_bytes.to_le_bytes(),
        );
        c.charset = UTF8MB4_GENERAL_CI;
        c
    };
    vec![
        ColumnDef::new("id", ColumnType::MYSQL_TYPE_LONGLONG, &[]),
        ColumnDef::new("customer_id", ColumnType::MYSQL_TYPE_LONGLONG, &[]),
        text("status", 32 * 4),
        ColumnDef::new("amount", ColumnType::MYSQL_TYPE_NEWDECIMAL, &[12, 2]),
        text("note", 200 * 4),
        ColumnDef::new("updated_at", ColumnType::MYSQL_TYPE_DATETIME2, &[6]),
    ]
}

/// Appends the full row image of [`row_values`]`(id, updated)` as MariaDB
/// writes it: the null bitmap, then each value in its binlog format.
fn push_binlog_image(out: &mut Vec<u8>, id: i64, updated: bool) {
    let [_, _, status, amount, note, _] = row_text(id, updated);
    out.push(0); // null bitmap of 6 columns: none NULL
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(id % 997).to_le_bytes());
    out.push(status.len() as u8);
    out.extend_from_slice(status.as_bytes());
    // DECIMAL(12,2): 10 integer digits = 1 digit in 1 byte + 9 in 4 bytes
    // (big-endian), 2 fraction digits in 1 byte; positive: sign bit set.
    let (int, frac) = amount.split_once('.').unwrap();
    let (int, frac): (u64, u8) = (int.parse().unwrap(), frac.parse().unwrap());
    out.push((int / 1_000_000_000) as u8 ^ 0x80);
    out.extend_from_slice(&((int % 1_000_000_000) as u32).to_be_bytes());
    out.push(frac);
    out.extend_from_slice(&(note.len() as u16).to_le_bytes());
    out.extend_from_slice(note.as_bytes());
    // DATETIME2(6): 40-bit big-endian packed date-time (offset 2^39), then
    // the microseconds in 3 big-endian bytes.
    let (y, mo, d, h, mi, s) = (2024i64, 3, id % 28 + 1, 10, id % 60, id % 60);
    let packed = ((((y * 13 + mo) << 5) | d) << 17) | (h << 12) | (mi << 6) | s;
    out.extend_from_slice(&((packed + 0x80_0000_0000) as u64).to_be_bytes()[3..]);
    out.extend_from_slice(&0u32.to_be_bytes()[1..]);
}

/// Decodes the rows data of a WRITE_ROWS event the way the binlog source
/// does (`decode_rows`, `RowsKind::Write`): image after image to the end.
fn decode_write_rows(columns: &[ColumnDef], present: &[bool], mut data: &[u8]) -> Vec<RowChange> {
    let mut out = Vec::with_capacity(100);
    while !data.is_empty() {
        let (after, rest) = decode_image(columns, present, data).unwrap();
        data = rest;
        let row: Option<Vec<Value>> = after.into_iter().collect();
        out.push(RowChange::Insert { row: row.unwrap() });
    }
    out
}

/// Decodes the rows data of an UPDATE_ROWS event: a before and an after
/// image per row (`binlog_row_image=FULL`).
fn decode_update_rows(columns: &[ColumnDef], present: &[bool], mut data: &[u8]) -> Vec<RowChange> {
    let mut out = Vec::with_capacity(100);
    while !data.is_empty() {
        let (before, rest) = decode_image(columns, present, data).unwrap();
        let (after, rest) = decode_image(columns, present, rest).unwrap();
        data = rest;
        let old_key = (after[0] != before[0]).then(|| {
            let mut k = vec![Value::Null; before.len()];
            k[0] = before[0].clone().unwrap();
            k
        });
        let row = after
            .into_iter()
            .map(|v| v.unwrap_or(Value::Unchanged))
            .collect();
        out.push(RowChange::Update { old_key, row });
    }
    out
}

fn bench_binlog(c: &mut Criterion) {
    let columns = orders_binlog_columns();
    let present = [true; 6];
    // 10 WRITE_ROWS / UPDATE_ROWS events of 100 rows each: 1,000 rows.
    let writes: Vec<Vec<u8>> = (0..10)
        .map(|e| {
            let mut body = Vec::with_capacity(100 * 128);
            for id in e * 100 + 1..=e * 100 + 100 {
                push_binlog_image(&mut body, id, false);
            }
            body
        })
        .collect();
    let updates: Vec<Vec<u8>> = (0..10)
        .map(|e| {
            let mut body = Vec::with_capacity(200 * 128);
            for id in e * 100 + 1..=e * 100 + 100 {
                push_binlog_image(&mut body, id, false);
                push_binlog_image(&mut body, id, true);
            }
            body
        })
        .collect();
    // the images decode to exactly the rows they were built from
    for (e, (w, u)) in writes.iter().zip(&updates).enumerate() {
        let first = e as i64 * 100 + 1;
        for (id, change) in (first..).zip(decode_write_rows(&columns, &present, w)) {
            assert_eq!(
                change,
                RowChange::Insert {
                    row: row_values(id, false)
                }
            );
        }
        for (id, change) in (first..).zip(decode_update_rows(&columns, &present, u)) {
            assert_eq!(
                change,
                RowChange::Update {
                    old_key: None,
                    row: row_values(id, true)
                }
            );
        }
    }
    let mut g = c.benchmark_group("binlog");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("decode_write_rows_1000", |b| {
        b.iter(|| {
            for body in &writes {
                black_box(decode_write_rows(&columns, &present, black_box(body)));
            }
        })
    });
    g.bench_function("decode_update_rows_1000", |b| {
        b.iter(|| {
            for body in &updates {
                black_box(decode_update_rows(&columns, &present, black_box(body)));
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
                            origin: None,
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
                origin: None,
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

/// `orders` → `sales_orders`: every column renamed, a filter that half the
/// changes pass (`status = 'shipped' AND amount > 0`: the updates), a
/// value map and a constant; deletes pass by key.
fn orders_map() -> TableMap {
    let rename = |source: &str, target: &str| ColumnRule {
        source: source.into(),
        target: target.into(),
        values: None,
    };
    let text = "status = 'shipped' AND amount > 0";
    TableMap {
        source: TableId::new("public", "orders"),
        target: TableId::new("erp", "sales_orders"),
        filter: Some((text.into(), filter::parse(text).unwrap())),
        unmatched: Unmatched::Delete,
        columns: vec![
            rename("id", "crm_order_id"),
            rename("customer_id", "customer_ref"),
            ColumnRule {
                source: "status".into(),
                target: "state".into(),
                values: Some(ValueMap {
                    values: [("new", "N"), ("shipped", "S")]
                        .iter()
                        .map(|(k, v)| (k.to_string(), Value::Text(v.to_string())))
                        .collect(),
                    default: None,
                }),
            },
            rename("amount", "total"),
            rename("note", "remark"),
            rename("updated_at", "changed_at"),
        ],
        constants: vec![("source_system".into(), Value::Text("crm".into()))],
        key: None,
    }
}

fn bench_table_map(c: &mut Criterion) {
    let schema = orders_schema();
    // one apply batch of the agent's default size, as read back from the
    // log (the schema `Arc` of the batch)
    let events: Vec<ChangeEvent> = workload(&schema, 50, 100).into_iter().flatten().collect();
    let mut maps = TableMaps::new([orders_map()]);
    let mut out = Vec::with_capacity(events.len());
    let mut g = c.benchmark_group("table_map");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("transform_5000_changes", |b| {
        b.iter(|| {
            out.clear();
            maps.transform(black_box(&events), &mut out).unwrap();
            black_box(out.len())
        })
    });
    g.bench_function("transform_and_plan_5000_changes", |b| {
        b.iter(|| {
            out.clear();
            maps.transform(black_box(&events), &mut out).unwrap();
            black_box(plan(&out).len())
        })
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
    bench_binlog,
    bench_change_log,
    bench_plan,
    bench_table_map,
    bench_mysql_statements
);
criterion_main!(benches);

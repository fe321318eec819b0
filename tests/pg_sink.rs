//! The PostgreSQL sink against a real PostgreSQL (the test kit's shared
//! server, one fresh database per test).

mod common;

use std::sync::Arc;

use callosum::testkit::PgServer;
use callosum_api::{
    ChangeEvent, ColumnSchema, ErrorKind, Lsn, Position, RowChange, Sink, TableId, TableSchema,
    Value,
};
use callosum_postgres::{check_target, PgSink, PgSinkConfig, UpsertStrategy};
use chrono::{NaiveDate, NaiveTime, TimeZone, Utc};
use common::store_db::{fresh_pg_db, PgDb as Db};

const STRATEGIES: [UpsertStrategy; 3] = [
    UpsertStrategy::Values,
    UpsertStrategy::Unnest,
    UpsertStrategy::Copy,
];

const ORDERS_DDL: &str = "CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint,
    status varchar(32),
    amount numeric(12,2),
    note varchar(200),
    updated_at timestamp
)";

async fn fresh(prefix: &str, ddl: &str) -> Db {
    fresh_pg_db(PgServer::shared(), prefix, ddl).await
}

fn config(db: &Db, tables: &[&str]) -> PgSinkConfig {
    PgSinkConfig {
        tls: Default::default(),
        store: "crm".into(),
        url: db.url.clone(),
        password: None,
        pipeline: "erp_to_crm".into(),
        tables: tables
            .iter()
            .map(|t| (TableId::new("erp", *t), TableId::new("public", *t)))
            .collect(),
        fence: Default::default(),
    }
}

fn schema(table: &str, columns: &[(&str, &str)], keys: &[&str]) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        table: TableId::new("erp", table),
        columns: columns
            .iter()
            .map(|(name, t)| ColumnSchema {
                name: name.to_string(),
                source_type: t.to_string(),
                is_key: keys.contains(name),
            })
            .collect(),
    })
}

fn orders_schema() -> Arc<TableSchema> {
    schema(
        "orders",
        &[
            ("id", "int8"),
            ("customer_id", "int8"),
            ("status", "varchar"),
            ("amount", "numeric"),
            ("note", "varchar"),
            ("updated_at", "timestamp"),
        ],
        &["id"],
    )
}

fn order(id: i64, note: &str) -> Vec<Value> {
    let day = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    vec![
        Value::Int(id),
        Value::Int(7),
        Value::Text("new".into()),
        Value::Decimal("-12.50".into()),
        Value::Text(note.into()),
        Value::Timestamp(day.and_hms_micro_opt(13, 5, 7, 120).unwrap()),
    ]
}

fn ev(schema: &Arc<TableSchema>, change: RowChange) -> ChangeEvent {
    ChangeEvent {
        schema: schema.clone(),
        change,
    }
}

fn insert(schema: &Arc<TableSchema>, row: Vec<Value>) -> ChangeEvent {
    ev(schema, RowChange::Insert { row })
}

fn key_only(schema: &Arc<TableSchema>, id: i64) -> Vec<Value> {
    let mut row = vec![Value::Null; schema.columns.len()];
    row[0] = Value::Int(id);
    row
}

fn pos(n: u64) -> Position {
    Position::Pg(Lsn(n))
}

async fn setup(prefix: &str, ddl: &str, tables: &[&str]) -> (Db, PgSink) {
    let db = fresh(prefix, ddl).await;
    let sink = PgSink::connect(config(&db, tables))
        .await
        .expect("connect sink");
    (db, sink)
}

async fn apply_one(sink: &mut PgSink, at: u64, events: &[ChangeEvent]) {
    sink.begin(&pos(at)).await.unwrap();
    sink.apply(events).await.unwrap();
    sink.commit().await.unwrap();
}

async fn ids(db: &Db, table: &str) -> Vec<i64> {
    db.client
        .query(&format!("SELECT id FROM {table} ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Every column of row `id` as the server's text output.
async fn row_text(db: &Db, table: &str, columns: &[&str], id: i64) -> Vec<Option<String>> {
    let list: Vec<String> = columns.iter().map(|c| format!("{c}::text")).collect();
    let row = db
        .client
        .query_one(
            &format!("SELECT {} FROM {table} WHERE id = $1", list.join(", ")),
            &[&id],
        )
        .await
        .unwrap();
    (0..columns.len()).map(|i| row.get(i)).collect()
}

async fn checkpoint_row(db: &Db) -> Option<(String, i64)> {
    db.client
        .query_opt(
            "SELECT source_position, transactions FROM public.callosum_checkpoint \
             WHERE pipeline = 'erp_to_crm'",
            &[],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

const KINDS_DDL: &str = "
    CREATE TYPE mood AS ENUM ('small', 'large');
    CREATE DOMAIN short_text AS varchar(5);
    CREATE TABLE kinds (
        id bigint PRIMARY KEY,
        b bool, i2 int2, i4 int4, i8 int8, n numeric(12,2), nu numeric,
        f4 float4, f8 float8, t text, vc varchar(10), c char(4), by bytea,
        d date, tm time(3), ts timestamp, tstz timestamptz, u uuid, j json, jb jsonb,
        m mood, dom short_text
    )";

const KINDS: [&str; 22] = [
    "id", "b", "i2", "i4", "i8", "n", "nu", "f4", "f8", "t", "vc", "c", "by", "d", "tm", "ts",
    "tstz", "u", "j", "jb", "m", "dom",
];

const UID: &str = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";

fn s(text: &str) -> Option<String> {
    Some(text.to_string())
}

#[tokio::test]
async fn postgres_source_values_land_in_target_types_on_every_path() {
    let (db, mut sink) = setup("pgsink_pg_types", KINDS_DDL, &["kinds"]).await;
    let types = [
        "int8",
        "bool",
        "int2",
        "int4",
        "int8",
        "numeric",
        "numeric",
        "float4",
        "float8",
        "text",
        "varchar",
        "bpchar",
        "bytea",
        "date",
        "time",
        "timestamp",
        "timestamptz",
        "uuid",
        "json",
        "jsonb",
        "text",
        "varchar",
    ];
    let columns: Vec<(&str, &str)> = KINDS.iter().copied().zip(types).collect();
    let sch = schema("kinds", &columns, &["id"]);
    let day = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    let row = |id: i64| {
        vec![
            Value::Int(id),
            Value::Bool(true),
            Value::Int(-32768),
            Value::Int(2_000_000_000),
            Value::Int(i64::MAX),
            Value::Decimal("-1234567890.50".into()),
            Value::Decimal("123456789012345678901234567890.000000000000000000001".into()),
            Value::Float(0.5),
            Value::Float(-2.25e-300),
            Value::Text("it's \"quoted\" ✓".into()),
            Value::Text("ünïcödé".into()),
            Value::Text("ab".into()),
            Value::Bytes(vec![0, 0x27, 0xff]),
            Value::Date(day),
            Value::Time(NaiveTime::from_hms_milli_opt(1, 2, 3, 450).unwrap()),
            Value::Timestamp(day.and_hms_micro_opt(13, 5, 7, 120).unwrap()),
            Value::TimestampTz(Utc.with_ymd_and_hms(2024, 3, 1, 10, 0, 0).unwrap()),
            Value::Uuid(UID.into()),
            Value::Json(r#"{"a": [1, "it's"]}"#.into()),
            Value::Json(r#"{"b": 2, "a": 1}"#.into()),
            Value::Text("large".into()),
            Value::Text("short".into()),
        ]
    };
    for (n, strategy) in STRATEGIES.iter().enumerate() {
        sink.set_upsert_strategy(*strategy);
        apply_one(&mut sink, 10 + n as u64, &[insert(&sch, row(n as i64 + 1))]).await;
    }
    // A NULL in every nullable column.
    let mut nulls = vec![Value::Null; KINDS.len()];
    nulls[0] = Value::Int(99);
    sink.set_upsert_strategy(UpsertStrategy::Auto);
    apply_one(&mut sink, 20, &[insert(&sch, nulls)]).await;

    let expected = vec![
        None,
        s("true"),
        s("-32768"),
        s("2000000000"),
        s("9223372036854775807"),
        s("-1234567890.50"),
        s("123456789012345678901234567890.000000000000000000001"),
        s("0.5"),
        s("-2.25e-300"),
        s("it's \"quoted\" ✓"),
        s("ünïcödé"),
        s("ab"),
        s("\\x0027ff"),
        s("2024-02-29"),
        s("01:02:03.45"),
        s("2024-02-29 13:05:07.00012"),
        s("2024-03-01 10:00:00+00"),
        s(UID),
        s(r#"{"a": [1, "it's"]}"#),
        s(r#"{"a": 1, "b": 2}"#),
        s("large"),
        s("short"),
    ];
    for id in 1..=3 {
        let mut got = row_text(&db, "kinds", &KINDS, id).await;
        got[0] = None;
        assert_eq!(
            got,
            expected,
            "row {id} ({:?})",
            STRATEGIES[id as usize - 1]
        );
    }
    let nulls = row_text(&db, "kinds", &KINDS, 99).await;
    assert!(nulls[1..].iter().all(Option::is_none), "{nulls:?}");
}

#[tokio::test]
async fn mysql_source_values_land_in_target_types_on_every_path() {
    let ddl = "CREATE TABLE m (
        id bigint PRIMARY KEY, flag bool, yr int2, big int8, ubig numeric(20,0), bits int8,
        amount numeric(10,3), f4 float4, f8 float8, label text, tags varchar(20),
        payload bytea, born date, at_time time, dt timestamp(3), stamped timestamptz,
        doc jsonb, doc_text json, uid uuid, uid_bin uuid, small int2
    )";
    let (db, mut sink) = setup("pgsink_my_types", ddl, &["m"]).await;
    let columns = [
        ("id", "bigint"),
        ("flag", "tinyint(1)"),
        ("yr", "year"),
        ("big", "bigint unsigned"),
        ("ubig", "bigint unsigned"),
        ("bits", "bit(10)"),
        ("amount", "decimal(10,3)"),
        ("f4", "float"),
        ("f8", "double"),
        ("label", "enum('small','large')"),
        ("tags", "set('a','b','c')"),
        ("payload", "varbinary(16)"),
        ("born", "date"),
        ("at_time", "time(6)"),
        ("dt", "datetime(3)"),
        ("stamped", "timestamp(6)"),
        ("doc", "json"),
        ("doc_text", "longtext"),
        ("uid", "char(36)"),
        ("uid_bin", "binary(16)"),
        ("small", "tinyint unsigned"),
    ];
    let sch = schema("m", &columns, &["id"]);
    let day = NaiveDate::from_ymd_opt(1999, 12, 31).unwrap();
    let row = |id: i64| {
        vec![
            Value::Int(id),
            Value::Int(1),
            Value::Int(2024),
            Value::UInt(9_000_000_000_000_000_000),
            Value::UInt(u64::MAX),
            Value::UInt(1023),
            Value::Decimal("-0.125".into()),
            Value::Float(1.5),
            Value::Float(1e300),
            Value::Text("large".into()),
            Value::Text("a,c".into()),
            Value::Bytes(vec![1, 2, 3]),
            Value::Date(day),
            Value::Time(NaiveTime::from_hms_micro_opt(23, 59, 59, 999_999).unwrap()),
            Value::Timestamp(day.and_hms_milli_opt(23, 59, 59, 125).unwrap()),
            Value::TimestampTz(Utc.with_ymd_and_hms(2038, 1, 19, 3, 14, 7).unwrap()),
            Value::Json(r#"{"k": true}"#.into()),
            Value::Text(r#"[1, 2]"#.into()),
            Value::Text(UID.to_uppercase()),
            Value::Bytes((0..16).collect()),
            Value::UInt(255),
        ]
    };
    for (n, strategy) in STRATEGIES.iter().enumerate() {
        sink.set_upsert_strategy(*strategy);
        apply_one(&mut sink, 10 + n as u64, &[insert(&sch, row(n as i64 + 1))]).await;
    }
    let names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
    let expected = vec![
        None,
        s("true"),
        s("2024"),
        s("9000000000000000000"),
        s("18446744073709551615"),
        s("1023"),
        s("-0.125"),
        s("1.5"),
        s("1e+300"),
        s("large"),
        s("a,c"),
        s("\\x010203"),
        s("1999-12-31"),
        s("23:59:59.999999"),
        s("1999-12-31 23:59:59.125"),
        s("2038-01-19 03:14:07+00"),
        s(r#"{"k": true}"#),
        s("[1, 2]"),
        s(UID),
        s("00010203-0405-0607-0809-0a0b0c0d0e0f"),
        s("255"),
    ];
    for id in 1..=3 {
        let mut got = row_text(&db, "m", &names, id).await;
        got[0] = None;
        assert_eq!(got, expected, "row {id}");
    }
}

#[tokio::test]
async fn text_columns_take_any_scalar_in_canonical_form() {
    let ddl = "CREATE TABLE texts (id bigint PRIMARY KEY, a text, b text, c text, d text, \
               e varchar(40), f text, g text, h text, i text, j text, k bpchar(24))";
    let (db, mut sink) = setup("pgsink_texts", ddl, &["texts"]).await;
    let names = ["id", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"];
    let types = [
        "int8",
        "bool",
        "int4",
        "float8",
        "numeric",
        "timestamptz",
        "date",
        "time",
        "timestamp",
        "uuid",
        "jsonb",
        "bigint unsigned",
    ];
    let sch = schema(
        "texts",
        &names.iter().copied().zip(types).collect::<Vec<_>>(),
        &["id"],
    );
    let day = NaiveDate::from_ymd_opt(2024, 1, 2).unwrap();
    let row = |id| {
        vec![
            Value::Int(id),
            Value::Bool(false),
            Value::Int(-42),
            Value::Float(0.1),
            Value::Decimal("3.140".into()),
            Value::TimestampTz(Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()),
            Value::Date(day),
            Value::Time(NaiveTime::from_hms_micro_opt(3, 4, 5, 6).unwrap()),
            Value::Timestamp(day.and_hms_opt(3, 4, 5).unwrap()),
            Value::Uuid(UID.into()),
            Value::Json("[true]".into()),
            Value::UInt(u64::MAX),
        ]
    };
    for (n, strategy) in STRATEGIES.iter().enumerate() {
        sink.set_upsert_strategy(*strategy);
        apply_one(&mut sink, 1 + n as u64, &[insert(&sch, row(n as i64 + 1))]).await;
    }
    for id in 1..=3 {
        let mut got = row_text(&db, "texts", &names, id).await;
        got[0] = None;
        assert_eq!(
            got,
            vec![
                None,
                s("false"),
                s("-42"),
                s("0.1"),
                s("3.140"),
                s("2024-01-02 03:04:05+00"),
                s("2024-01-02"),
                s("03:04:05.000006"),
                s("2024-01-02 03:04:05"),
                s(UID),
                s("[true]"),
                s("18446744073709551615"),
            ]
        );
    }
}

#[tokio::test]
async fn checkpoint_is_the_first_change_and_is_read_back() {
    let (db, mut sink) = setup("pgsink_checkpoint", ORDERS_DDL, &["orders"]).await;
    let sch = orders_schema();
    assert_eq!(sink.checkpoint().await.unwrap(), None);
    let slot = format!("t_{}", db.name);
    db.client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
            &[&slot],
        )
        .await
        .unwrap();
    for (n, id) in [(100u64, 1i64), (200, 2)] {
        apply_one(&mut sink, n, &[insert(&sch, order(id, "x"))]).await;
    }
    // One big batch through COPY as well.
    let many: Vec<ChangeEvent> = (10..500).map(|i| insert(&sch, order(i, "y"))).collect();
    apply_one(&mut sink, 300, &many).await;
    assert_eq!(sink.checkpoint().await.unwrap(), Some(pos(300)));
    assert_eq!(checkpoint_row(&db).await, Some((pos(300).to_string(), 3)));

    let changes: Vec<String> = db
        .client
        .query(
            "SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL)",
            &[&slot],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    db.client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    let mut transactions = 0;
    for (i, line) in changes.iter().enumerate() {
        if line.starts_with("BEGIN") {
            transactions += 1;
            assert!(
                changes[i + 1].starts_with("table public.callosum_checkpoint:"),
                "first change of a transaction: {}",
                changes[i + 1]
            );
        }
    }
    assert_eq!(transactions, 3, "{changes:?}");

    // A new connection reads the same checkpoint.
    let mut again = PgSink::connect(config(&db, &["orders"])).await.unwrap();
    assert_eq!(again.checkpoint().await.unwrap(), Some(pos(300)));
}

#[tokio::test]
async fn rollback_leaves_nothing() {
    let (db, mut sink) = setup("pgsink_rollback", ORDERS_DDL, &["orders"]).await;
    let sch = orders_schema();
    apply_one(&mut sink, 1, &[insert(&sch, order(1, "x"))]).await;
    for strategy in STRATEGIES {
        sink.set_upsert_strategy(strategy);
        sink.begin(&pos(2)).await.unwrap();
        let mut events: Vec<ChangeEvent> = (2..200).map(|i| insert(&sch, order(i, "x"))).collect();
        events.push(ev(
            &sch,
            RowChange::Delete {
                key: key_only(&sch, 1),
            },
        ));
        sink.apply(&events).await.unwrap();
        sink.rollback().await.unwrap();
        assert_eq!(ids(&db, "orders").await, vec![1]);
        assert_eq!(sink.checkpoint().await.unwrap(), Some(pos(1)));
        assert_eq!(checkpoint_row(&db).await, Some((pos(1).to_string(), 1)));
    }
    // The staging table is empty again: the next batch applies only its rows.
    apply_one(&mut sink, 3, &[insert(&sch, order(3, "x"))]).await;
    assert_eq!(ids(&db, "orders").await, vec![1, 3]);
}

#[tokio::test]
async fn values_the_column_cannot_hold_are_conversion_errors_naming_the_column() {
    let ddl = "CREATE TYPE mood AS ENUM ('small', 'large');
               CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int2, status varchar(32),
                                    amount numeric(12,2), note varchar(200), updated_at timestamp(0),
                                    m mood)";
    let (db, mut sink) = setup("pgsink_conversion", ddl, &["orders"]).await;
    let mut columns: Vec<(&str, &str)> = vec![
        ("id", "int8"),
        ("customer_id", "int8"),
        ("status", "varchar"),
        ("amount", "numeric"),
        ("note", "varchar"),
        ("updated_at", "timestamp"),
    ];
    let sch = schema("orders", &columns, &["id"]);
    let mut ok = order(1, "x");
    ok[5] = Value::Timestamp(
        NaiveDate::from_ymd_opt(2024, 1, 1)
            .unwrap()
            .and_hms_opt(1, 2, 3)
            .unwrap(),
    );
    apply_one(&mut sink, 1, &[insert(&sch, ok.clone())]).await;

    let secret = "secret-".repeat(40);
    let mut too_long = ok.clone();
    too_long[0] = Value::Int(2);
    too_long[4] = Value::Text(secret.clone());
    let mut out_of_range = ok.clone();
    out_of_range[0] = Value::Int(3);
    out_of_range[1] = Value::Int(4_000_012);
    let mut too_precise = ok.clone();
    too_precise[0] = Value::Int(4);
    too_precise[3] = Value::Decimal("7777777.123".into());
    let mut fractional = ok.clone();
    fractional[0] = Value::Int(5);
    fractional[5] = order(5, "")[5].clone();
    // Binary data is refused by a text column, never written as `\x` hex.
    let mut binary = ok.clone();
    binary[0] = Value::Int(7);
    binary[4] = Value::Bytes(b"secret".to_vec());
    for strategy in STRATEGIES {
        sink.set_upsert_strategy(strategy);
        for (row, column, target_type, hidden) in [
            (&too_long, "`note`", "character varying(200)", "secret"),
            (&out_of_range, "`customer_id`", "smallint", "4000012"),
            (&too_precise, "`amount`", "numeric(12,2)", "7777777"),
            (&fractional, "`updated_at`", "timestamp(0)", "13:05"),
            (&binary, "`note`", "Bytes value", "736563726574"),
        ] {
            sink.begin(&pos(2)).await.unwrap();
            let err = sink.apply(&[insert(&sch, row.clone())]).await.unwrap_err();
            assert_eq!(err.kind, ErrorKind::Conversion, "{err}");
            let text = err.to_string();
            assert!(text.contains(column), "{text}");
            assert!(text.contains(target_type), "{text}");
            assert!(
                text.contains("crm") && text.contains("public.orders"),
                "{text}"
            );
            assert!(!text.contains(hidden), "{text}");
            // The sink rolled back: the checkpoint is unchanged, commit refuses.
            assert!(sink.commit().await.is_err());
            assert_eq!(sink.checkpoint().await.unwrap(), Some(pos(1)));
        }
    }
    // A value only the server can reject (an enum label): its message, which
    // quotes the value, is reduced to the SQLSTATE.
    columns.push(("m", "enum('small','large','secret-label')"));
    let with_enum = schema("orders", &columns, &["id"]);
    let mut bad_label = ok.clone();
    bad_label[0] = Value::Int(6);
    bad_label.push(Value::Text("secret-label".into()));
    sink.begin(&pos(2)).await.unwrap();
    let err = sink
        .apply(&[insert(&with_enum, bad_label)])
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conversion, "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");
    assert!(err.to_string().contains("22P02"), "{err}");
    assert_eq!(ids(&db, "orders").await, vec![1]);
}

#[tokio::test]
async fn partial_upserts_leave_unchanged_columns_untouched() {
    let (db, mut sink) = setup("pgsink_partial", ORDERS_DDL, &["orders"]).await;
    let sch = orders_schema();
    let n = 300i64;
    let all: Vec<ChangeEvent> = (1..=n)
        .map(|i| insert(&sch, order(i, "big toasted note")))
        .collect();
    apply_one(&mut sink, 1, &all).await;

    // Per strategy, a partial update (note and amount unchanged) of a slice
    // of rows, big enough for COPY.
    for (k, strategy) in STRATEGIES.iter().enumerate() {
        sink.set_upsert_strategy(*strategy);
        let updates: Vec<ChangeEvent> = (1..=n)
            .filter(|i| i % 3 == k as i64)
            .map(|i| {
                let mut row = vec![Value::Unchanged; sch.columns.len()];
                row[0] = Value::Int(i);
                row[1] = Value::Null;
                row[2] = Value::Text(format!("shipped-{k}"));
                ev(&sch, RowChange::Update { old_key: None, row })
            })
            .collect();
        apply_one(&mut sink, 2 + k as u64, &updates).await;
    }
    let rows = db
        .client
        .query(
            "SELECT id, customer_id, status, amount::text, note FROM orders ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), n as usize);
    for r in rows {
        let id: i64 = r.get(0);
        let customer: Option<i64> = r.get(1);
        let status: String = r.get(2);
        let amount: String = r.get(3);
        let note: String = r.get(4);
        assert_eq!(customer, None);
        assert_eq!(status, format!("shipped-{}", id % 3));
        assert_eq!(amount, "-12.50");
        assert_eq!(note, "big toasted note");
    }
}

#[tokio::test]
async fn key_changing_updates_move_the_row() {
    let (db, mut sink) = setup("pgsink_key_change", ORDERS_DDL, &["orders"]).await;
    let sch = orders_schema();
    apply_one(
        &mut sink,
        1,
        &[insert(&sch, order(1, "one")), insert(&sch, order(2, "two"))],
    )
    .await;
    // Full row: 1 → 10. Partial row (note unchanged): 2 → 20.
    let mut partial = order(20, "ignored");
    partial[4] = Value::Unchanged;
    partial[2] = Value::Text("moved".into());
    apply_one(
        &mut sink,
        2,
        &[
            ev(
                &sch,
                RowChange::Update {
                    old_key: Some(key_only(&sch, 1)),
                    row: order(10, "ten"),
                },
            ),
            ev(
                &sch,
                RowChange::Update {
                    old_key: Some(key_only(&sch, 2)),
                    row: partial,
                },
            ),
        ],
    )
    .await;
    let rows: Vec<(i64, String, String)> = db
        .client
        .query("SELECT id, status, note FROM orders ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (10, "new".into(), "ten".into()),
            (20, "moved".into(), "two".into())
        ]
    );
}

#[tokio::test]
async fn deletes_by_single_and_composite_keys() {
    let ddl = "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(32),
                                    amount numeric(12,2), note varchar(200), updated_at timestamp);
               CREATE TABLE lines (order_id bigint, line int4, qty int4, PRIMARY KEY (order_id, line))";
    let (db, mut sink) = setup("pgsink_deletes", ddl, &["orders", "lines"]).await;
    let sch = orders_schema();
    let lines = schema(
        "lines",
        &[("order_id", "int8"), ("line", "int4"), ("qty", "int4")],
        &["order_id", "line"],
    );
    let mut events: Vec<ChangeEvent> = (1..=100).map(|i| insert(&sch, order(i, "x"))).collect();
    for o in 1..=3 {
        for l in 1..=3 {
            events.push(insert(
                &lines,
                vec![Value::Int(o), Value::Int(l), Value::Int(1)],
            ));
        }
    }
    apply_one(&mut sink, 1, &events).await;
    let mut deletes: Vec<ChangeEvent> = (1..=100)
        .filter(|i| i % 2 == 0)
        .map(|i| {
            ev(
                &sch,
                RowChange::Delete {
                    key: key_only(&sch, i),
                },
            )
        })
        .collect();
    for (o, l) in [(1, 1), (2, 2), (3, 3), (3, 9)] {
        deletes.push(ev(
            &lines,
            RowChange::Delete {
                key: vec![Value::Int(o), Value::Int(l), Value::Null],
            },
        ));
    }
    apply_one(&mut sink, 2, &deletes).await;
    assert_eq!(
        ids(&db, "orders").await,
        (1..=100).filter(|i| i % 2 == 1).collect::<Vec<i64>>()
    );
    let left: Vec<(i64, i32)> = db
        .client
        .query("SELECT order_id, line FROM lines ORDER BY 1, 2", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(left, vec![(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)]);
}

#[tokio::test]
async fn truncate_applies_in_order_inside_the_transaction() {
    let ddl = "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(32),
                                    amount numeric(12,2), note varchar(200), updated_at timestamp);
               CREATE TABLE lines (order_id bigint REFERENCES orders, line int4, qty int4,
                                   PRIMARY KEY (order_id, line))";
    let (db, mut sink) = setup("pgsink_truncate", ddl, &["orders"]).await;
    let sch = orders_schema();
    apply_one(&mut sink, 1, &[insert(&sch, order(1, "x"))]).await;
    let batch = [
        insert(&sch, order(2, "x")),
        ev(&sch, RowChange::Truncate),
        insert(&sch, order(5, "x")),
    ];
    sink.begin(&pos(2)).await.unwrap();
    sink.apply(&batch).await.unwrap();
    sink.rollback().await.unwrap();
    assert_eq!(ids(&db, "orders").await, vec![1]);
    apply_one(&mut sink, 2, &batch).await;
    assert_eq!(ids(&db, "orders").await, vec![5]);

    // An unreferenced table is truncated with TRUNCATE.
    let (db, mut sink) = setup("pgsink_truncate2", ORDERS_DDL, &["orders"]).await;
    apply_one(&mut sink, 1, &[insert(&sch, order(1, "x"))]).await;
    apply_one(&mut sink, 2, &batch).await;
    assert_eq!(ids(&db, "orders").await, vec![5]);
}

#[tokio::test]
async fn a_large_transaction_applies_in_chunks_inside_one_target_transaction() {
    let (db, mut sink) = setup("pgsink_large", ORDERS_DDL, &["orders"]).await;
    let sch = orders_schema();
    sink.begin(&pos(7)).await.unwrap();
    let total = 50_000i64;
    let chunk = 5_000i64;
    for start in (0..total).step_by(chunk as usize) {
        let mut events: Vec<ChangeEvent> = (start..start + chunk)
            .map(|i| insert(&sch, order(i, "bulk")))
            .collect();
        // Each chunk also updates and deletes rows of the previous one.
        if start > 0 {
            events.push(ev(
                &sch,
                RowChange::Delete {
                    key: key_only(&sch, start - 1),
                },
            ));
            let mut row = order(start - 2, "changed");
            row[2] = Value::Text("updated".into());
            events.push(ev(&sch, RowChange::Update { old_key: None, row }));
        }
        sink.apply(&events).await.unwrap();
        let visible: i64 = db
            .client
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(visible, 0, "nothing is visible before commit");
    }
    sink.commit().await.unwrap();
    let chunks = total / chunk;
    let row = db
        .client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE status = 'updated') FROM orders",
            &[],
        )
        .await
        .unwrap();
    let (count, updated): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(count, total - (chunks - 1));
    assert_eq!(updated, chunks - 1);
    assert_eq!(checkpoint_row(&db).await, Some((pos(7).to_string(), 1)));
}

#[tokio::test]
async fn connect_fails_on_missing_table_key_or_column_and_check_lists_problems() {
    let db = fresh(
        "pgsink_schema",
        "CREATE TABLE nokey (id bigint, name text);
         CREATE TABLE orders (id bigint PRIMARY KEY, status text);",
    )
    .await;
    let err = PgSink::connect(config(&db, &["nope"])).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Schema);
    assert!(
        err.to_string().contains("public.nope") && err.to_string().contains("crm"),
        "{err}"
    );
    let err = PgSink::connect(config(&db, &["nokey"])).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Schema);
    assert!(err.to_string().contains("primary key"), "{err}");

    // A source column the target lacks.
    let mut sink = PgSink::connect(config(&db, &["orders"])).await.unwrap();
    sink.begin(&pos(1)).await.unwrap();
    let err = sink
        .apply(&[insert(&orders_schema(), order(1, "x"))])
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Schema);
    let text = err.to_string();
    assert!(
        text.contains("`customer_id`") && text.contains("public.orders") && text.contains("crm"),
        "{text}"
    );
    assert_eq!(sink.checkpoint().await.unwrap(), None);

    // check: missing table, missing key, missing columns.
    let mut cfg = config(&db, &["nope", "nokey", "orders"]);
    let problems = check_target(
        &cfg,
        &[(
            TableId::new("erp", "orders"),
            vec!["id".into(), "status".into(), "customer_id".into()],
        )],
    )
    .await
    .unwrap();
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 3, "{text:#?}");
    assert!(
        text[0].contains("public.nope") && text[0].contains("does not exist"),
        "{text:#?}"
    );
    assert!(
        text[1].contains("no primary key") && text[1].contains("ALTER TABLE"),
        "{text:#?}"
    );
    assert!(text[2].contains("`customer_id`"), "{text:#?}");

    // check as a role without privileges.
    let role = format!("r_{}", db.name);
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
             GRANT SELECT ON orders TO {role};"
        ))
        .await
        .unwrap();
    cfg.url = cfg.url.replacen("postgres@", &format!("{role}@"), 1);
    cfg.tables.retain(|(s, _)| s.name == "orders");
    let problems = check_target(&cfg, &[]).await.unwrap();
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 3, "{text:#?}");
    assert!(
        text[0].contains("SELECT, INSERT, UPDATE") && text[0].contains("callosum_checkpoint"),
        "{text:#?}"
    );
    assert!(
        text[1].contains("SELECT, INSERT, UPDATE, DELETE")
            && text[1].contains("callosum_dead_letter"),
        "{text:#?}"
    );
    assert!(
        text[2].contains("INSERT, UPDATE, DELETE, TRUNCATE") && text[2].contains("GRANT"),
        "{text:#?}"
    );
    // Without the checkpoint table, the role could not create it.
    db.client
        .batch_execute("DROP TABLE public.callosum_checkpoint")
        .await
        .unwrap();
    let problems = check_target(&cfg, &[]).await.unwrap();
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 3, "{text:#?}");
    assert!(
        text[0].contains("may not create") && text[0].contains("GRANT CREATE ON SCHEMA"),
        "{text:#?}"
    );
}

/// Several source transactions in one batch hand a unique value from one
/// row to another (the issue's sequence): applied in source order on every
/// upsert path, where the net effect in order of last change would fail
/// with 23505 on every retry.
#[tokio::test]
async fn unique_values_moved_between_rows_in_one_batch_apply() {
    let ddl = "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, \
               last_login int NOT NULL)";
    let s = schema(
        "accounts",
        &[("id", "int8"), ("email", "varchar"), ("last_login", "int4")],
        &["id"],
    );
    let row = |id: i64, email: &str, login: i64| {
        vec![Value::Int(id), Value::Text(email.into()), Value::Int(login)]
    };
    let update = |r: Vec<Value>| {
        ev(
            &s,
            RowChange::Update {
                old_key: None,
                row: r,
            },
        )
    };
    for (n, strategy) in STRATEGIES.iter().enumerate() {
        let (db, mut sink) = setup(&format!("pg_unique_move_{n}"), ddl, &["accounts"]).await;
        sink.set_upsert_strategy(*strategy);
        db.client
            .batch_execute("INSERT INTO accounts VALUES (1, 'x', 0), (2, 'b', 0), (3, 'c', 0)")
            .await
            .unwrap();
        apply_one(
            &mut sink,
            1,
            &[
                // move: row 1 gives up x, row 4 takes it, row 1 changes again
                update(row(1, "y", 0)),
                insert(&s, row(4, "x", 0)),
                update(row(1, "y", 1)),
                // swap through a spare value
                update(row(2, "tmp", 0)),
                update(row(3, "b", 0)),
                update(row(2, "c", 0)),
            ],
        )
        .await;
        let rows: Vec<(i64, String, i32)> = db
            .client
            .query(
                "SELECT id, email, last_login FROM accounts ORDER BY id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert_eq!(
            rows,
            vec![
                (1, "y".into(), 1),
                (2, "c".into(), 0),
                (3, "b".into(), 0),
                (4, "x".into(), 0),
            ],
            "{strategy:?}"
        );
    }
}

/// Columns of types the sink does not encode (`inet`, arrays, ranges,
/// composites, a domain over an array, …) take the value's text, cast by
/// the statement, on every upsert path, in deletes and in key updates (an
/// `inet` primary key and an `Unchanged` column force the `UPDATE … WHERE`
/// step); a value the type refuses names the column, never the value.
#[tokio::test]
async fn types_cast_by_the_server_on_every_path() {
    let ddl = "CREATE TYPE addr AS (street text, zip int4);
        CREATE DOMAIN tags AS text[] CHECK (cardinality(VALUE) < 3);
        CREATE TABLE hosts (ip inet PRIMARY KEY, net cidr, arr int4[], r int4range, a addr,
            tg tags, ttz timetz, note text)";
    let (db, mut sink) = setup("pgsink_via_text", ddl, &["hosts"]).await;
    let columns = [
        ("ip", "varchar"),
        ("net", "varchar"),
        ("arr", "_int4"),
        ("r", "int4range"),
        ("a", "addr"),
        ("tg", "_text"),
        ("ttz", "timetz"),
        ("note", "text"),
    ];
    let sch = schema("hosts", &columns, &["ip"]);
    let text = |s: &str| Value::Text(s.into());
    let row = |ip: &str| {
        vec![
            text(ip),
            text("10.0.0.0/8"),
            text("{{1,NULL},{3,4}}"),
            text("[1,5)"),
            text("(\"Straße 5, \"\"Hof\"\"\",12345)"),
            text("{\"a b\",ü}"),
            text("13:14:15.5+05:30"),
            text("n"),
        ]
    };
    let ips = ["10.0.0.1", "::1", "2001:db8::1/64"];
    for (n, strategy) in STRATEGIES.iter().enumerate() {
        sink.set_upsert_strategy(*strategy);
        apply_one(&mut sink, 10 + n as u64, &[insert(&sch, row(ips[n]))]).await;
    }
    let all = "SELECT ip::text, net::text, arr::text, r::text, a::text, tg::text, ttz::text, note \
               FROM hosts ORDER BY ip";
    let got = common::pg_rows(&db.client, all).await;
    assert_eq!(got.len(), 3);
    for r in &got {
        assert_eq!(
            r[1..],
            [
                s("10.0.0.0/8"),
                s("{{1,NULL},{3,4}}"),
                s("[1,5)"),
                s("(\"Straße 5, \"\"Hof\"\"\",12345)"),
                s("{\"a b\",ü}"),
                s("13:14:15.5+05:30"),
                s("n"),
            ]
        );
    }
    // a key update with an unchanged column, and a delete, by inet keys
    let key = |ip: &str| {
        let mut k = vec![Value::Null; columns.len()];
        k[0] = text(ip);
        k
    };
    let mut moved = row("10.0.0.9");
    moved[7] = Value::Unchanged;
    sink.set_upsert_strategy(UpsertStrategy::Auto);
    apply_one(
        &mut sink,
        20,
        &[
            ev(
                &sch,
                RowChange::Update {
                    old_key: Some(key("10.0.0.1")),
                    row: moved,
                },
            ),
            ev(&sch, RowChange::Delete { key: key("::1") }),
        ],
    )
    .await;
    let ips_now = common::pg_rows(&db.client, "SELECT ip::text FROM hosts ORDER BY ip").await;
    assert_eq!(
        ips_now,
        vec![vec![s("10.0.0.9/32")], vec![s("2001:db8::1/64")]]
    );

    // refused by the type: named by column, never the value
    for (column, value, ty) in [
        (0, "not-an-ip", "inet"),
        (2, "{1,x}", "integer[]"),
        (5, "{a,b,c}", "tags"),
    ] {
        let mut bad = row("10.9.9.9");
        bad[column] = text(value);
        sink.begin(&pos(30)).await.unwrap();
        let err = sink.apply(&[insert(&sch, bad)]).await.unwrap_err();
        let name = columns[column].0;
        assert!(
            matches!(err.kind, ErrorKind::Conversion | ErrorKind::Constraint),
            "{err}"
        );
        assert!(
            err.message.contains(&format!("`{name}` ({ty})")),
            "names {name}: {}",
            err.message
        );
        assert!(
            !err.message.contains(value),
            "never the value: {}",
            err.message
        );
    }
}

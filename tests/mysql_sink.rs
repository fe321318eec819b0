//! The MySQL/MariaDB sink against a real MariaDB (the test kit's shared
//! server, one fresh database per test).

mod common;

use std::sync::Arc;

use callosum::testkit::MariaDbServer;
use callosum_api::{
    ChangeEvent, ColumnSchema, ErrorKind, Lsn, Position, RowChange, Sink, TableId, TableSchema,
    Value,
};
use callosum_mysql::{check_target, MySqlSink, MySqlSinkConfig};
use chrono::{NaiveDate, TimeZone, Utc};
use common::store_db::{fresh_mysql_db, MySqlDb as Db};
use mysql_async::prelude::Queryable;

const ORDERS_DDL: &str = "CREATE TABLE orders (
    id BIGINT PRIMARY KEY,
    customer_id BIGINT,
    status VARCHAR(32),
    amount DECIMAL(12,2),
    note VARCHAR(200),
    updated_at DATETIME(6),
    flag TINYINT(1),
    small TINYINT UNSIGNED,
    ratio DOUBLE,
    payload VARBINARY(16),
    born DATE,
    at_time TIME(3),
    stamped TIMESTAMP(6) NULL,
    uid CHAR(36),
    uid_bin BINARY(16),
    doc JSON
)";

async fn fresh(prefix: &str) -> Db {
    fresh_mysql_db(MariaDbServer::shared(), prefix).await
}

fn config(db: &Db, tables: &[&str]) -> MySqlSinkConfig {
    MySqlSinkConfig {
        tls: Default::default(),
        store: "erp".into(),
        url: db.url.clone(),
        password: None,
        pipeline: "crm_to_erp".into(),
        tables: tables
            .iter()
            .map(|t| (TableId::new("public", *t), TableId::new(&db.database, *t)))
            .collect(),
        time_zone: None,
        fence: Default::default(),
    }
}

fn orders_schema() -> Arc<TableSchema> {
    let cols = [
        ("id", "int8"),
        ("customer_id", "int8"),
        ("status", "varchar"),
        ("amount", "numeric"),
        ("note", "varchar"),
        ("updated_at", "timestamp"),
        ("flag", "bool"),
        ("small", "int2"),
        ("ratio", "float8"),
        ("payload", "bytea"),
        ("born", "date"),
        ("at_time", "time"),
        ("stamped", "timestamptz"),
        ("uid", "uuid"),
        ("uid_bin", "uuid"),
        ("doc", "jsonb"),
    ];
    Arc::new(TableSchema {
        table: TableId::new("public", "orders"),
        columns: cols
            .iter()
            .map(|(name, t)| ColumnSchema {
                name: name.to_string(),
                source_type: t.to_string(),
                is_key: *name == "id",
            })
            .collect(),
    })
}

const UID: &str = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";

fn full_row(id: i64, note: &str) -> Vec<Value> {
    let day = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    vec![
        Value::Int(id),
        Value::Int(7),
        Value::Text("new".into()),
        Value::Decimal("-12.50".into()),
        Value::Text(note.into()),
        Value::Timestamp(day.and_hms_micro_opt(13, 5, 7, 120).unwrap()),
        Value::Bool(true),
        Value::UInt(200),
        Value::Float(0.25),
        Value::Bytes(vec![0, 0x27, 0xff]),
        Value::Date(day),
        Value::Time(chrono::NaiveTime::from_hms_milli_opt(1, 2, 3, 450).unwrap()),
        Value::TimestampTz(Utc.with_ymd_and_hms(2024, 3, 1, 10, 0, 0).unwrap()),
        Value::Uuid(UID.into()),
        Value::Uuid(UID.into()),
        Value::Json(r#"{"a": "it's"}"#.into()),
    ]
}

fn insert(schema: &Arc<TableSchema>, row: Vec<Value>) -> ChangeEvent {
    ChangeEvent {
        schema: schema.clone(),
        change: RowChange::Insert { row },
    }
}

fn key_only(schema: &Arc<TableSchema>, id: i64) -> Vec<Value> {
    let mut row = vec![Value::Null; schema.columns.len()];
    row[0] = Value::Int(id);
    row
}

fn pos(n: u64) -> Position {
    Position::Pg(Lsn(n))
}

async fn setup(prefix: &str) -> (Db, MySqlSink) {
    let mut db = fresh(prefix).await;
    db.conn.query_drop(ORDERS_DDL).await.unwrap();
    let sink = MySqlSink::connect(config(&db, &["orders"])).await.unwrap();
    (db, sink)
}

async fn ids(db: &mut Db) -> Vec<i64> {
    db.conn
        .query("SELECT id FROM orders ORDER BY id")
        .await
        .unwrap()
}

async fn checkpoint_row(db: &mut Db) -> Option<(String, i64)> {
    db.conn
        .query_first("SELECT source_position, transactions FROM callosum_checkpoint WHERE pipeline = 'crm_to_erp'")
        .await
        .unwrap()
}

#[tokio::test]
async fn applies_rows_with_target_types() {
    let (mut db, mut sink) = setup("sink_types").await;
    let s = orders_schema();
    sink.begin(&pos(10)).await.unwrap();
    sink.apply(&[
        insert(&s, full_row(1, "it's ok")),
        insert(&s, full_row(2, "b")),
    ])
    .await
    .unwrap();
    sink.commit().await.unwrap();

    let row: mysql_async::Row = db
        .conn
        .query_first(
            "SELECT id, customer_id, status, CAST(amount AS CHAR), note, \
             CAST(updated_at AS CHAR), flag, small, ratio, HEX(payload), CAST(born AS CHAR), \
             CAST(at_time AS CHAR), CAST(stamped AS CHAR), uid, HEX(uid_bin), \
             JSON_VALUE(doc, '$.a') FROM orders WHERE id = 1",
        )
        .await
        .unwrap()
        .unwrap();
    let text = |i: usize| row.get::<Option<String>, _>(i).unwrap().unwrap_or_default();
    assert_eq!(text(0), "1");
    assert_eq!(text(1), "7");
    assert_eq!(text(2), "new");
    assert_eq!(text(3), "-12.50");
    assert_eq!(text(4), "it's ok");
    assert_eq!(text(5), "2024-02-29 13:05:07.000120");
    assert_eq!(text(6), "1");
    assert_eq!(text(7), "200");
    assert_eq!(text(8), "0.25");
    assert_eq!(text(9), "0027FF");
    assert_eq!(text(10), "2024-02-29");
    assert_eq!(text(11), "01:02:03.450");
    assert_eq!(text(12), "2024-03-01 10:00:00.000000", "stored as UTC");
    assert_eq!(text(13), UID);
    assert_eq!(text(14), "0A1B2C3D4E5F60718293A4B5C6D7E8F9");
    assert_eq!(text(15), "it's");
    assert_eq!(ids(&mut db).await, vec![1, 2]);
}

/// A store with `time_zone = "Europe/Berlin"`: an instant lands in a
/// DATETIME as Berlin's local time (summer and winter), in a TIMESTAMP as
/// UTC; a zone-less timestamp lands as it is.
#[tokio::test]
async fn datetimes_of_a_zoned_store_hold_its_local_time() {
    let mut db = fresh("sink_zone").await;
    db.conn.query_drop(ORDERS_DDL).await.unwrap();
    let mut zoned = config(&db, &["orders"]);
    zoned.time_zone = Some(chrono_tz::Europe::Berlin);
    let mut sink = MySqlSink::connect(zoned).await.unwrap();
    let s = orders_schema();
    let instant = |m: u32| chrono::Utc.with_ymd_and_hms(2024, m, 1, 10, 0, 0).unwrap();
    let mut summer = key_only(&s, 1);
    summer[5] = Value::TimestampTz(instant(7));
    summer[12] = Value::TimestampTz(instant(7));
    let mut winter = key_only(&s, 2);
    winter[5] = Value::TimestampTz(instant(1));
    let mut local = key_only(&s, 3);
    local[5] = Value::Timestamp(instant(1).naive_utc());
    sink.begin(&pos(10)).await.unwrap();
    sink.apply(&[insert(&s, summer), insert(&s, winter), insert(&s, local)])
        .await
        .unwrap();
    sink.commit().await.unwrap();
    db.conn
        .query_drop("SET time_zone = '+00:00'")
        .await
        .unwrap();
    let rows: Vec<(i64, Option<String>, Option<String>)> = db
        .conn
        .query("SELECT id, CAST(updated_at AS CHAR), CAST(stamped AS CHAR) FROM orders ORDER BY id")
        .await
        .unwrap();
    let text = |s: &str| Some(s.to_string());
    assert_eq!(
        rows,
        vec![
            (
                1,
                text("2024-07-01 12:00:00.000000"),
                text("2024-07-01 10:00:00.000000")
            ),
            (2, text("2024-01-01 11:00:00.000000"), None),
            (3, text("2024-01-01 10:00:00.000000"), None),
        ]
    );
}

#[tokio::test]
async fn checkpoint_is_written_with_the_data_and_read_back() {
    let (mut db, mut sink) = setup("sink_checkpoint").await;
    let s = orders_schema();
    assert_eq!(sink.checkpoint().await.unwrap(), None);
    for (n, id) in [(100u64, 1i64), (200, 2)] {
        sink.begin(&pos(n)).await.unwrap();
        sink.apply(&[insert(&s, full_row(id, "x"))]).await.unwrap();
        sink.commit().await.unwrap();
    }
    assert_eq!(sink.checkpoint().await.unwrap(), Some(pos(200)));
    assert_eq!(
        checkpoint_row(&mut db).await,
        Some((pos(200).to_string(), 2))
    );
    // A new connection reads the same checkpoint.
    let mut again = MySqlSink::connect(config(&db, &["orders"])).await.unwrap();
    assert_eq!(again.checkpoint().await.unwrap(), Some(pos(200)));
}

#[tokio::test]
async fn rollback_leaves_nothing() {
    let (mut db, mut sink) = setup("sink_rollback").await;
    let s = orders_schema();
    sink.begin(&pos(1)).await.unwrap();
    sink.apply(&[insert(&s, full_row(1, "x"))]).await.unwrap();
    sink.commit().await.unwrap();

    sink.begin(&pos(2)).await.unwrap();
    sink.apply(&[
        insert(&s, full_row(2, "x")),
        ChangeEvent {
            schema: s.clone(),
            change: RowChange::Delete {
                key: key_only(&s, 1),
            },
        },
    ])
    .await
    .unwrap();
    sink.rollback().await.unwrap();
    assert_eq!(ids(&mut db).await, vec![1]);
    assert_eq!(sink.checkpoint().await.unwrap(), Some(pos(1)));
    assert_eq!(checkpoint_row(&mut db).await, Some((pos(1).to_string(), 1)));
}

#[tokio::test]
async fn values_the_column_cannot_hold_are_conversion_errors_naming_the_column() {
    let (mut db, mut sink) = setup("sink_conversion").await;
    let s = orders_schema();
    sink.begin(&pos(1)).await.unwrap();
    sink.apply(&[insert(&s, full_row(1, "x"))]).await.unwrap();
    sink.commit().await.unwrap();

    let secret = "secret-".repeat(40);
    let mut too_long = full_row(2, &secret);
    too_long[4] = Value::Text(secret.clone());
    let mut out_of_range = full_row(3, "x");
    out_of_range[7] = Value::Int(256);
    for (row, column, target_type) in [
        (too_long, "`note`", "varchar(200)"),
        (out_of_range, "`small`", "tinyint(3) unsigned"),
    ] {
        sink.begin(&pos(2)).await.unwrap();
        let err = sink.apply(&[insert(&s, row)]).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conversion, "{err}");
        let text = err.to_string();
        assert!(text.contains(column), "{text}");
        assert!(text.contains(target_type), "{text}");
        assert!(text.contains("erp"), "{text}");
        assert!(!text.contains("secret") && !text.contains("256"), "{text}");
        // The sink rolled back: the checkpoint is unchanged.
        sink.rollback().await.unwrap();
        assert_eq!(sink.checkpoint().await.unwrap(), Some(pos(1)));
    }
    assert_eq!(ids(&mut db).await, vec![1]);
}

#[tokio::test]
async fn partial_upsert_leaves_unchanged_columns_untouched() {
    let (mut db, mut sink) = setup("sink_partial").await;
    let s = orders_schema();
    sink.begin(&pos(1)).await.unwrap();
    sink.apply(&[insert(&s, full_row(1, "big toasted note"))])
        .await
        .unwrap();
    sink.commit().await.unwrap();

    let mut partial = vec![Value::Unchanged; s.columns.len()];
    partial[0] = Value::Int(1);
    partial[2] = Value::Text("shipped".into());
    sink.begin(&pos(2)).await.unwrap();
    sink.apply(&[ChangeEvent {
        schema: s.clone(),
        change: RowChange::Update {
            old_key: None,
            row: partial,
        },
    }])
    .await
    .unwrap();
    sink.commit().await.unwrap();
    let row: Option<(String, String, i64)> = db
        .conn
        .query_first("SELECT status, note, customer_id FROM orders WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(row, Some(("shipped".into(), "big toasted note".into(), 7)));
}

#[tokio::test]
async fn key_changing_updates_move_the_row() {
    let (mut db, mut sink) = setup("sink_key_change").await;
    let s = orders_schema();
    sink.begin(&pos(1)).await.unwrap();
    sink.apply(&[
        insert(&s, full_row(1, "one")),
        insert(&s, full_row(2, "two")),
    ])
    .await
    .unwrap();
    sink.commit().await.unwrap();

    // Full row: 1 → 10. Partial row (note unchanged): 2 → 20.
    let mut partial = full_row(20, "ignored");
    partial[4] = Value::Unchanged;
    partial[2] = Value::Text("moved".into());
    sink.begin(&pos(2)).await.unwrap();
    sink.apply(&[
        ChangeEvent {
            schema: s.clone(),
            change: RowChange::Update {
                old_key: Some(key_only(&s, 1)),
                row: full_row(10, "ten"),
            },
        },
        ChangeEvent {
            schema: s.clone(),
            change: RowChange::Update {
                old_key: Some(key_only(&s, 2)),
                row: partial,
            },
        },
    ])
    .await
    .unwrap();
    sink.commit().await.unwrap();
    let rows: Vec<(i64, String, String)> = db
        .conn
        .query("SELECT id, status, note FROM orders ORDER BY id")
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![
            (10, "new".into(), "ten".into()),
            (20, "moved".into(), "two".into())
        ]
    );
}

#[tokio::test]
async fn truncate_stays_inside_the_transaction() {
    let (mut db, mut sink) = setup("sink_truncate").await;
    let s = orders_schema();
    sink.begin(&pos(1)).await.unwrap();
    sink.apply(&[insert(&s, full_row(1, "x"))]).await.unwrap();
    sink.commit().await.unwrap();
    sink.begin(&pos(2)).await.unwrap();
    sink.apply(&[
        ChangeEvent {
            schema: s.clone(),
            change: RowChange::Truncate,
        },
        insert(&s, full_row(5, "x")),
    ])
    .await
    .unwrap();
    sink.rollback().await.unwrap();
    assert_eq!(ids(&mut db).await, vec![1]);
    sink.begin(&pos(2)).await.unwrap();
    sink.apply(&[
        ChangeEvent {
            schema: s.clone(),
            change: RowChange::Truncate,
        },
        insert(&s, full_row(5, "x")),
    ])
    .await
    .unwrap();
    sink.commit().await.unwrap();
    assert_eq!(ids(&mut db).await, vec![5]);
}

#[tokio::test]
async fn connect_fails_on_missing_table_or_key_and_check_lists_problems() {
    let mut db = fresh("sink_schema").await;
    let err = MySqlSink::connect(config(&db, &["nope"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Schema);
    assert!(
        err.to_string().contains("nope") && err.to_string().contains("erp"),
        "{err}"
    );

    db.conn
        .query_drop("CREATE TABLE nokey (id BIGINT, name TEXT)")
        .await
        .unwrap();
    let err = MySqlSink::connect(config(&db, &["nokey"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Schema);
    assert!(err.to_string().contains("primary key"), "{err}");

    db.conn
        .query_drop("CREATE TABLE narrow (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    let cfg = config(&db, &["nope", "nokey", "narrow"]);
    let problems = check_target(
        &cfg,
        &[(
            TableId::new("public", "narrow"),
            vec!["id".into(), "name".into()],
        )],
    )
    .await
    .unwrap();
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 3, "{text:#?}");
    assert!(text[0].contains("does not exist"), "{text:#?}");
    assert!(text[1].contains("no primary key"), "{text:#?}");
    assert!(text[2].contains("`name`"), "{text:#?}");
    assert!(problems
        .iter()
        .all(|p| !p.fix.is_empty() && p.store == "erp"));

    // A source column missing in the target is a Schema error at apply.
    let mut sink = MySqlSink::connect(config(&db, &["narrow"])).await.unwrap();
    let schema = Arc::new(TableSchema {
        table: TableId::new("public", "narrow"),
        columns: vec![
            ColumnSchema {
                name: "id".into(),
                source_type: "int8".into(),
                is_key: true,
            },
            ColumnSchema {
                name: "name".into(),
                source_type: "text".into(),
                is_key: false,
            },
        ],
    });
    sink.begin(&pos(1)).await.unwrap();
    let err = sink
        .apply(&[insert(
            &schema,
            vec![Value::Int(1), Value::Text("a".into())],
        )])
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Schema);
    assert!(err.to_string().contains("`name`"), "{err}");
}

#[tokio::test]
async fn check_reports_missing_privileges() {
    let mut db = fresh("sink_privileges").await;
    db.conn
        .query_drop("CREATE TABLE orders (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    let user = db.database.clone();
    db.conn
        .query_drop(format!(
            "CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'; \
             GRANT SELECT ON `{}`.* TO '{user}'@'%'",
            db.database
        ))
        .await
        .unwrap();
    let mut cfg = config(&db, &["orders"]);
    cfg.url = db.url.replacen("root@", &format!("{user}@"), 1);
    cfg.password = Some("pw".into());
    let problems = check_target(&cfg, &[]).await.unwrap();
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 3, "{text:#?}");
    assert!(
        text[0].contains("callosum_checkpoint") && text[0].contains("CREATE"),
        "{text:#?}"
    );
    assert!(
        text[1].contains("callosum_dead_letter") && text[1].contains("DELETE, CREATE"),
        "{text:#?}"
    );
    assert!(text[2].contains("INSERT, UPDATE, DELETE"), "{text:#?}");
    assert!(!text.iter().any(|t| t.contains("pw")), "{text:#?}");
    let err = MySqlSink::connect(cfg).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permission, "{err}");
}

/// A PostgreSQL source with a deferred unique constraint can insert a row
/// holding another row's unique value and move the other row off it later
/// in the same transaction. The target cannot apply that row by row: the
/// insert's `ON DUPLICATE KEY UPDATE` matches the other row through the
/// unique key. It must be refused by name, never overwrite the other row.
#[tokio::test]
async fn an_upsert_matching_another_row_by_a_unique_key_is_refused() {
    let mut db = fresh("sink_unique_guard").await;
    db.conn
        .query_drop(
            "CREATE TABLE accounts (id BIGINT PRIMARY KEY, email VARCHAR(64) NOT NULL UNIQUE, \
             last_login INT NOT NULL)",
        )
        .await
        .unwrap();
    db.conn
        .query_drop("INSERT INTO accounts VALUES (1, 'a', 1)")
        .await
        .unwrap();
    let mut sink = MySqlSink::connect(config(&db, &["accounts"]))
        .await
        .unwrap();
    let s = Arc::new(TableSchema {
        table: TableId::new("public", "accounts"),
        columns: [
            ("id", "int8", true),
            ("email", "text", false),
            ("last_login", "int4", false),
        ]
        .iter()
        .map(|(name, t, key)| ColumnSchema {
            name: name.to_string(),
            source_type: t.to_string(),
            is_key: *key,
        })
        .collect(),
    });
    let row = |id: i64, email: &str, login: i64| {
        vec![Value::Int(id), Value::Text(email.into()), Value::Int(login)]
    };
    sink.begin(&pos(1)).await.unwrap();
    let err = sink
        .apply(&[
            insert(&s, row(3, "a", 3)),
            ChangeEvent {
                schema: s.clone(),
                change: RowChange::Update {
                    old_key: None,
                    row: row(1, "c", 1),
                },
            },
        ])
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Constraint, "{err}");
    let text = err.to_string();
    assert!(text.contains("accounts"), "{text}");
    assert!(!text.contains("'a'"), "no row values: {text}");
    sink.rollback().await.unwrap();
    let rows: Vec<(i64, String, i64)> = db
        .conn
        .query("SELECT id, email, last_login FROM accounts ORDER BY id")
        .await
        .unwrap();
    assert_eq!(rows, vec![(1, "a".to_string(), 1)]);
}

/// A `_ci` primary key finds `Bob` for `bob`: deleting or re-keying the
/// source's `bob` (which the target never got, e.g. dead-lettered and
/// discarded) must leave the target's `Bob` alone.
#[tokio::test]
async fn deletes_and_key_updates_touch_only_the_byte_equal_key() {
    let mut db = fresh("sink_ci_delete").await;
    db.conn
        .query_drop(
            "CREATE TABLE users (name VARCHAR(32) CHARACTER SET utf8mb4 \
             COLLATE utf8mb4_general_ci PRIMARY KEY, n INT)",
        )
        .await
        .unwrap();
    db.conn
        .query_drop("INSERT INTO users VALUES ('Bob', 1), ('Ann', 2)")
        .await
        .unwrap();
    let mut sink = MySqlSink::connect(config(&db, &["users"])).await.unwrap();
    let s = Arc::new(TableSchema {
        table: TableId::new("public", "users"),
        columns: [("name", "varchar", true), ("n", "int4", false)]
            .iter()
            .map(|(name, t, key)| ColumnSchema {
                name: name.to_string(),
                source_type: t.to_string(),
                is_key: *key,
            })
            .collect(),
    });
    let key = |name: &str| vec![Value::Text(name.into()), Value::Null];
    sink.begin(&pos(1)).await.unwrap();
    sink.apply(&[
        ChangeEvent {
            schema: s.clone(),
            change: RowChange::Delete { key: key("bob") },
        },
        ChangeEvent {
            schema: s.clone(),
            change: RowChange::Update {
                old_key: Some(key("ann")),
                row: vec![Value::Text("Zed".into()), Value::Unchanged],
            },
        },
    ])
    .await
    .unwrap();
    sink.commit().await.unwrap();
    let rows: Vec<(String, i32)> = db
        .conn
        .query("SELECT name, n FROM users ORDER BY name")
        .await
        .unwrap();
    assert_eq!(rows, vec![("Ann".to_string(), 2), ("Bob".to_string(), 1)]);
}

//! The MariaDB/MySQL binlog source against a real MariaDB (the test kit's
//! shared server, one fresh database per test; the binlog is shared by all
//! of them, so every test captures only its own database's tables).

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use callosum::testkit::{wait_until, MariaDbServer};
use callosum_api::{
    ChangeEvent, ErrorKind, Position, RowChange, Source, SourceMessage, TableId, TransactionMeta,
    Value,
};
use callosum_mysql::{check_source, MySqlSource, MySqlSourceConfig, ZeroDates};
use chrono::{DateTime, NaiveDate, NaiveTime};
use common::store_db::{fresh_mysql_db as fresh_on, MySqlDb as Db};
use mysql_async::prelude::Queryable;

const WAIT: Duration = Duration::from_secs(30);

async fn fresh(prefix: &str) -> Db {
    fresh_on(MariaDbServer::shared(), prefix).await
}

/// A replica id no other source of this test run uses.
fn server_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    50_000 + (std::process::id() % 1000) * 100 + NEXT.fetch_add(1, Ordering::Relaxed)
}

fn config(db: &Db, tables: &[&str]) -> MySqlSourceConfig {
    MySqlSourceConfig {
        tls: Default::default(),
        store: "erp".into(),
        url: db.url.clone(),
        password: None,
        server_id: server_id(),
        tables: tables
            .iter()
            .map(|t| TableId::new(&db.database, *t))
            .collect(),
        zero_dates: ZeroDates::Error,
        time_zone: None,
        echo_origins: callosum_api::EchoOrigins::default(),
        dump_write_timeout: None,
    }
}

async fn next(source: &mut MySqlSource) -> SourceMessage {
    let m = tokio::time::timeout(WAIT, source.next())
        .await
        .expect("a message in time")
        .expect("next");
    m
}

/// The next committed transaction (discarded ones and progress skipped).
async fn next_commit(source: &mut MySqlSource) -> (Vec<ChangeEvent>, TransactionMeta) {
    let mut changes = Vec::new();
    loop {
        match next(source).await {
            SourceMessage::Begin => changes.clear(),
            SourceMessage::Change(c) => changes.push(c),
            SourceMessage::Discard { .. } => changes.clear(),
            SourceMessage::Commit(meta) => return (changes, meta),
            SourceMessage::Progress(_) => {}
        }
    }
}

fn rows(changes: &[ChangeEvent]) -> Vec<(String, RowChange)> {
    changes
        .iter()
        .map(|c| (c.schema.table.name.clone(), c.change.clone()))
        .collect()
}

/// A position in file mode: the server's current file and offset.
async fn current_file_position(conn: &mut mysql_async::Conn) -> Position {
    let row: mysql_async::Row = conn
        .query_first("SHOW MASTER STATUS")
        .await
        .unwrap()
        .unwrap();
    Position::Binlog {
        file: row.get(0).unwrap(),
        offset: row.get(1).unwrap(),
    }
}

const ALL_TYPES: &str = "CREATE TABLE t (
    id BIGINT PRIMARY KEY,
    flag TINYINT(1),
    small TINYINT UNSIGNED,
    big BIGINT UNSIGNED,
    med MEDIUMINT,
    amount DECIMAL(12,3),
    ratio DOUBLE,
    f FLOAT,
    born DATE,
    at_dt DATETIME(6),
    stamped TIMESTAMP(3) NULL,
    at_time TIME(2),
    y YEAR,
    e ENUM('red','green'),
    s SET('p','q','r'),
    b BIT(10),
    doc JSON,
    raw VARBINARY(10),
    fixed BINARY(4),
    note TEXT,
    blobby BLOB,
    code CHAR(5),
    name VARCHAR(300)
) ENGINE=InnoDB";

#[tokio::test]
async fn streams_inserts_updates_and_deletes_of_every_type() {
    let mut db = fresh("src_types").await;
    db.conn.query_drop(ALL_TYPES).await.unwrap();
    let mut source = MySqlSource::connect(config(&db, &["t"]), None)
        .await
        .expect("connect");
    db.conn
        .query_drop(
            "INSERT INTO t VALUES (1, 1, 255, 18446744073709551615, -8388608, -12.5, 2.25, 1.5, \
             '2024-02-29', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.5', '12:34:56.78', \
             2024, 'green', 'p,r', b'1010101010', '{\"a\": [1, 2]}', x'00ff', x'0102', 'héllo ✓', \
             x'01', 'ab', REPEAT('x', 300))",
        )
        .await
        .unwrap();
    db.conn
        .query_drop("INSERT INTO t (id) VALUES (2)")
        .await
        .unwrap();
    let (changes, meta) = next_commit(&mut source).await;
    assert!(
        matches!(meta.position, Position::MariaGtid { .. }),
        "{meta:?}"
    );
    assert_eq!(meta.position, meta.resume_position);
    let now = chrono::Utc::now().timestamp_micros();
    assert!(
        (now - meta.commit_time_micros).abs() < 120_000_000,
        "{meta:?}"
    );
    assert_eq!(changes.len(), 1);
    let schema = &changes[0].schema;
    let types: Vec<&str> = schema
        .columns
        .iter()
        .map(|c| c.source_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "bigint",
            "tinyint(1)",
            "tinyint unsigned",
            "bigint unsigned",
            "mediumint",
            "decimal",
            "double",
            "float",
            "date",
            "datetime",
            "timestamp",
            "time",
            "year",
            "enum",
            "set",
            "bit",
            "json",
            "varbinary",
            "binary",
            "text",
            "blob",
            "char",
            "varchar"
        ]
    );
    assert_eq!(schema.key_indexes(), vec![0]);
    let RowChange::Insert { row } = &changes[0].change else {
        panic!("{:?}", changes[0].change)
    };
    let expected = vec![
        Value::Int(1),
        Value::Int(1),
        Value::UInt(255),
        Value::UInt(u64::MAX),
        Value::Int(-8_388_608),
        Value::Decimal("-12.500".into()),
        Value::Float(2.25),
        Value::Float(1.5),
        Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()),
        Value::Timestamp(
            NaiveDate::from_ymd_opt(2024, 1, 2)
                .unwrap()
                .and_hms_micro_opt(3, 4, 5, 123_456)
                .unwrap(),
        ),
        // The timestamp: compared below with the instant the server stored.
        row[10].clone(),
        Value::Time(NaiveTime::from_hms_micro_opt(12, 34, 56, 780_000).unwrap()),
        Value::Int(2024),
        Value::Text("green".into()),
        Value::Text("p,r".into()),
        Value::UInt(0b10_1010_1010),
        Value::Json("{\"a\": [1, 2]}".into()),
        Value::Bytes(vec![0, 0xff]),
        Value::Bytes(vec![1, 2, 0, 0]),
        Value::Text("héllo ✓".into()),
        Value::Bytes(vec![1]),
        Value::Text("ab".into()),
        Value::Text("x".repeat(300)),
    ];
    assert_eq!(row, &expected);
    let stored: i64 = db
        .conn
        .query_first("SELECT FLOOR(UNIX_TIMESTAMP(stamped) * 1000) FROM t WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row[10],
        Value::TimestampTz(DateTime::from_timestamp_millis(stored).unwrap())
    );
    let (changes, _) = next_commit(&mut source).await;
    let RowChange::Insert { row } = &changes[0].change else {
        panic!()
    };
    assert_eq!(row[0], Value::Int(2));
    assert!(row[1..].iter().all(|v| *v == Value::Null), "{row:?}");

    db.conn
        .query_drop("UPDATE t SET note = 'changed' WHERE id = 1")
        .await
        .unwrap();
    let (changes, _) = next_commit(&mut source).await;
    let RowChange::Update { old_key, row } = &changes[0].change else {
        panic!("{:?}", changes[0].change)
    };
    assert_eq!(*old_key, None);
    assert_eq!(row[19], Value::Text("changed".into()));
    assert_eq!(row[22], Value::Text("x".repeat(300)), "full after image");

    db.conn
        .query_drop("UPDATE t SET id = 10 WHERE id = 1")
        .await
        .unwrap();
    let (changes, _) = next_commit(&mut source).await;
    let RowChange::Update { old_key, row } = &changes[0].change else {
        panic!("{:?}", changes[0].change)
    };
    let old_key = old_key.as_ref().expect("key changed");
    assert_eq!(old_key[0], Value::Int(1));
    assert!(old_key[1..].iter().all(|v| *v == Value::Null));
    assert_eq!(row[0], Value::Int(10));

    db.conn
        .query_drop("DELETE FROM t WHERE id = 10")
        .await
        .unwrap();
    let (changes, _) = next_commit(&mut source).await;
    let RowChange::Delete { key } = &changes[0].change else {
        panic!("{:?}", changes[0].change)
    };
    assert_eq!(key[0], Value::Int(10));
    assert_eq!(key[19], Value::Text("changed".into()), "full before image");
}

#[tokio::test]
async fn groups_transactions_and_drops_echo_and_other_tables() {
    let mut db = fresh("src_txn").await;
    for ddl in [
        "CREATE TABLE a (id INT PRIMARY KEY, v VARCHAR(10))",
        "CREATE TABLE b (id INT PRIMARY KEY)",
        "CREATE TABLE c (id INT PRIMARY KEY)",
        "CREATE TABLE callosum_checkpoint (pipeline VARCHAR(100) PRIMARY KEY, source_position VARCHAR(100))",
        "CREATE TABLE m (id INT PRIMARY KEY) ENGINE=MyISAM",
    ] {
        db.conn.query_drop(ddl).await.unwrap();
    }
    let mut source = MySqlSource::connect(config(&db, &["a", "b", "m"]), None)
        .await
        .expect("connect");
    let first = next(&mut source).await;
    assert!(
        matches!(first, SourceMessage::Progress(Position::MariaGtid { .. })),
        "{first:?}"
    );
    db.conn
        .query_drop(
            "BEGIN; INSERT INTO a VALUES (1, 'x'); INSERT INTO c VALUES (1); \
             INSERT INTO b VALUES (1); UPDATE a SET v = 'y' WHERE id = 1; COMMIT",
        )
        .await
        .unwrap();
    // Callosum's own write: the checkpoint row first, then data.
    db.conn
        .query_drop(
            "BEGIN; INSERT INTO callosum_checkpoint VALUES ('p', 'gtid:0-1-1'); \
             INSERT INTO a VALUES (2, 'echo'); COMMIT",
        )
        .await
        .unwrap();
    db.conn
        .query_drop("INSERT INTO c VALUES (2)")
        .await
        .unwrap();
    db.conn
        .query_drop("INSERT INTO m VALUES (7)")
        .await
        .unwrap();

    let (changes, first) = next_commit(&mut source).await;
    assert_eq!(
        rows(&changes),
        [
            (
                "a".to_string(),
                RowChange::Insert {
                    row: vec![Value::Int(1), Value::Text("x".into())]
                }
            ),
            (
                "b".to_string(),
                RowChange::Insert {
                    row: vec![Value::Int(1)]
                }
            ),
            (
                "a".to_string(),
                RowChange::Update {
                    old_key: None,
                    row: vec![Value::Int(1), Value::Text("y".into())]
                }
            ),
        ]
    );
    // The echo and the unconfigured table's transaction are discarded; the
    // MyISAM write (ends with Query COMMIT) comes next.
    let (changes, second) = next_commit(&mut source).await;
    assert_eq!(
        rows(&changes),
        [(
            "m".to_string(),
            RowChange::Insert {
                row: vec![Value::Int(7)]
            }
        )]
    );
    assert!(second.position > first.position);
}

#[tokio::test]
async fn resumes_by_gtid_without_loss_or_repeat() {
    let mut db = fresh("src_gtid").await;
    db.conn
        .query_drop("CREATE TABLE a (id INT PRIMARY KEY)")
        .await
        .unwrap();
    let cfg = config(&db, &["a"]);
    let mut source = MySqlSource::connect(cfg.clone(), None).await.unwrap();
    db.conn
        .query_drop("INSERT INTO a VALUES (1)")
        .await
        .unwrap();
    let (_, meta) = next_commit(&mut source).await;
    source.acknowledge(&meta.resume_position).await.unwrap();
    assert_eq!(source.acknowledged(), Some(&meta.resume_position));
    drop(source);
    db.conn
        .query_drop("INSERT INTO a VALUES (2)")
        .await
        .unwrap();
    db.conn
        .query_drop("INSERT INTO a VALUES (3)")
        .await
        .unwrap();
    let mut source = MySqlSource::connect(cfg, Some(meta.resume_position.clone()))
        .await
        .unwrap();
    for id in [2, 3] {
        let (changes, next_meta) = next_commit(&mut source).await;
        assert_eq!(
            rows(&changes),
            [(
                "a".to_string(),
                RowChange::Insert {
                    row: vec![Value::Int(id)]
                }
            )]
        );
        assert!(next_meta.position > meta.position);
    }
}

#[tokio::test]
async fn resumes_by_file_position_across_rotation_and_reports_idle_progress() {
    let mut db = fresh("src_file").await;
    db.conn
        .query_drop("CREATE TABLE a (id INT PRIMARY KEY)")
        .await
        .unwrap();
    let cfg = config(&db, &["a"]);
    let start = current_file_position(&mut db.conn).await;
    let mut source = MySqlSource::connect(cfg.clone(), Some(start))
        .await
        .unwrap();
    db.conn
        .query_drop("INSERT INTO a VALUES (1)")
        .await
        .unwrap();
    let (_, one) = next_commit(&mut source).await;
    let Position::Binlog { file: file1, .. } = &one.position else {
        panic!("{one:?}")
    };
    db.conn.query_drop("FLUSH BINARY LOGS").await.unwrap();
    // The stream moves into the new file (other tests' transactions on the
    // shared server are discarded, an idle server sends heartbeats).
    loop {
        let position = match next(&mut source).await {
            SourceMessage::Progress(p) => p,
            SourceMessage::Discard { resume_position } => resume_position,
            _ => continue,
        };
        assert!(position > one.position);
        match &position {
            Position::Binlog { file, .. } if file != file1 => break,
            _ => {}
        }
    }
    db.conn
        .query_drop("INSERT INTO a VALUES (2)")
        .await
        .unwrap();
    let (changes, two) = next_commit(&mut source).await;
    assert_eq!(
        rows(&changes),
        [(
            "a".to_string(),
            RowChange::Insert {
                row: vec![Value::Int(2)]
            }
        )]
    );
    assert!(two.position > one.position);
    drop(source);

    db.conn
        .query_drop("INSERT INTO a VALUES (3)")
        .await
        .unwrap();
    // Resume from the first transaction: the second and third come again,
    // the first does not.
    let mut source = MySqlSource::connect(cfg, Some(one.resume_position.clone()))
        .await
        .unwrap();
    for id in [2, 3] {
        let (changes, _) = next_commit(&mut source).await;
        assert_eq!(
            rows(&changes),
            [(
                "a".to_string(),
                RowChange::Insert {
                    row: vec![Value::Int(id)]
                }
            )]
        );
    }
}

#[tokio::test]
async fn tables_without_primary_key_and_zero_dates_fail_honestly() {
    let mut db = fresh("src_fail").await;
    db.conn
        .query_drop("CREATE TABLE nokey (v INT); CREATE TABLE d (id INT PRIMARY KEY, born DATE)")
        .await
        .unwrap();
    let mut source = MySqlSource::connect(config(&db, &["nokey"]), None)
        .await
        .unwrap();
    db.conn
        .query_drop("INSERT INTO nokey VALUES (42)")
        .await
        .unwrap();
    let err = loop {
        match tokio::time::timeout(WAIT, source.next()).await.unwrap() {
            Ok(_) => continue,
            Err(err) => break err,
        }
    };
    assert_eq!(err.kind, ErrorKind::Schema, "{err}");
    assert!(err.to_string().contains("nokey"), "{err}");

    let mut source = MySqlSource::connect(config(&db, &["d"]), None)
        .await
        .unwrap();
    db.conn
        .query_drop("SET SESSION sql_mode = ''; INSERT INTO d VALUES (1, '0000-00-00')")
        .await
        .unwrap();
    let err = loop {
        match tokio::time::timeout(WAIT, source.next()).await.unwrap() {
            Ok(_) => continue,
            Err(err) => break err,
        }
    };
    assert_eq!(err.kind, ErrorKind::Conversion, "{err}");
    let msg = err.to_string();
    for part in [
        "erp",
        ".d",
        "column born",
        "date",
        "zero date",
        "zero_dates = \"null\"",
    ] {
        assert!(msg.contains(part), "{msg}");
    }
}

#[tokio::test]
async fn zero_dates_become_null_when_configured() {
    let mut db = fresh("src_zero").await;
    db.conn
        .query_drop(
            "CREATE TABLE z (id INT PRIMARY KEY, born DATE, at_dt DATETIME(6), \
             stamped TIMESTAMP NULL, fine DATE); \
             CREATE TABLE zk (born DATE PRIMARY KEY)",
        )
        .await
        .unwrap();
    let mut c = config(&db, &["z"]);
    c.zero_dates = ZeroDates::Null;
    let mut source = MySqlSource::connect(c, None).await.unwrap();
    // MariaDB accepts zero dates (and a zero month or day) only outside
    // strict mode.
    db.conn
        .query_drop(
            "SET SESSION sql_mode = ''; \
             INSERT INTO z VALUES (1, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00', '2024-02-29'), \
             (2, '2024-00-10', '2024-03-00 12:00:00', NULL, NULL)",
        )
        .await
        .unwrap();
    let (changes, _) = next_commit(&mut source).await;
    let fine = Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap());
    assert_eq!(
        rows(&changes),
        vec![
            (
                "z".to_string(),
                RowChange::Insert {
                    row: vec![Value::Int(1), Value::Null, Value::Null, Value::Null, fine]
                }
            ),
            (
                "z".to_string(),
                RowChange::Insert {
                    row: vec![
                        Value::Int(2),
                        Value::Null,
                        Value::Null,
                        Value::Null,
                        Value::Null
                    ]
                }
            ),
        ]
    );

    // In a primary key, a zero date stays an error.
    let mut c = config(&db, &["zk"]);
    c.zero_dates = ZeroDates::Null;
    let mut source = MySqlSource::connect(c, None).await.unwrap();
    db.conn
        .query_drop("INSERT INTO zk VALUES ('0000-00-00')")
        .await
        .unwrap();
    let err = loop {
        match tokio::time::timeout(WAIT, source.next()).await.unwrap() {
            Ok(_) => continue,
            Err(err) => break err,
        }
    };
    assert_eq!(err.kind, ErrorKind::Conversion, "{err}");
    let msg = err.to_string();
    for part in ["erp", ".zk", "column born", "primary key"] {
        assert!(msg.contains(part), "{msg}");
    }
}

#[tokio::test]
async fn a_purged_position_is_position_lost() {
    let server = MariaDbServer::start(&[]).expect("start a server of our own");
    let mut db = fresh_on(&server, "src_purge").await;
    db.conn
        .query_drop("CREATE TABLE a (id INT PRIMARY KEY)")
        .await
        .unwrap();
    let cfg = config(&db, &["a"]);
    let file_position = current_file_position(&mut db.conn).await;
    let mut source = MySqlSource::connect(cfg.clone(), None).await.unwrap();
    db.conn
        .query_drop("INSERT INTO a VALUES (1)")
        .await
        .unwrap();
    let (_, meta) = next_commit(&mut source).await;
    drop(source);

    // Idle heartbeats move a file-position stream into a new binlog file.
    let mut source = MySqlSource::connect(cfg.clone(), Some(file_position.clone()))
        .await
        .unwrap();
    let (_, by_file) = next_commit(&mut source).await;
    db.conn.query_drop("FLUSH BINARY LOGS").await.unwrap();
    let Position::Binlog { file: current, .. } = current_file_position(&mut db.conn).await else {
        unreachable!()
    };
    loop {
        match next(&mut source).await {
            SourceMessage::Progress(p) => {
                assert!(p > by_file.position, "{p}");
                if matches!(&p, Position::Binlog { file, .. } if *file == current) {
                    break;
                }
            }
            other => panic!("idle server, yet {other:?}"),
        }
    }
    drop(source);

    db.conn
        .query_drop("INSERT INTO a VALUES (2)")
        .await
        .unwrap();
    db.conn.query_drop("FLUSH BINARY LOGS").await.unwrap();
    let Position::Binlog { file: current, .. } = current_file_position(&mut db.conn).await else {
        unreachable!()
    };
    // A dump thread still reading an old file keeps it from being purged:
    // retry until the server noticed the dropped sources.
    let conn = std::sync::Arc::new(tokio::sync::Mutex::new(db.conn));
    wait_until("old binlogs purged", WAIT, || {
        let conn = conn.clone();
        let current = current.clone();
        async move {
            let mut conn = conn.lock().await;
            conn.query_drop(format!("PURGE BINARY LOGS TO '{current}'"))
                .await
                .unwrap();
            let oldest: Option<(String, u64)> = conn.query_first("SHOW BINARY LOGS").await.unwrap();
            oldest.is_some_and(|(file, _)| file == current)
        }
    })
    .await
    .unwrap();
    for resume in [meta.resume_position, file_position] {
        let err = MySqlSource::connect(cfg.clone(), Some(resume.clone()))
            .await
            .expect_err("position is gone");
        assert_eq!(err.kind, ErrorKind::PositionLost, "{resume}: {err}");
        assert!(err.to_string().contains("re-snapshot"), "{err}");
    }
    drop(conn);
    let _ = server.stop_fast();
}

#[tokio::test]
async fn check_lists_every_problem_with_its_fix() {
    let mut db = fresh("src_check").await;
    db.conn
        .query_drop("CREATE TABLE good (id INT PRIMARY KEY); CREATE TABLE nokey (v INT)")
        .await
        .unwrap();
    assert_eq!(check_source(&config(&db, &["good"])).await.unwrap(), vec![]);
    let problems = check_source(&config(&db, &["good", "nokey", "missing"]))
        .await
        .unwrap();
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 2, "{text:#?}");
    assert!(text[0].contains("has no primary key"), "{text:#?}");
    assert!(text[1].contains("does not exist"), "{text:#?}");
    // A character set Callosum does not decode, named with the fix.
    db.conn
        .query_drop(
            "CREATE TABLE cyr (id INT PRIMARY KEY, name VARCHAR(10) CHARACTER SET cp1251, \
             l VARCHAR(10) CHARACTER SET latin1, u VARCHAR(10) CHARACTER SET utf16)",
        )
        .await
        .unwrap();
    let problems = check_source(&config(&db, &["cyr"])).await.unwrap();
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 1, "{text:#?}");
    assert!(
        text[0].contains("`name`") && text[0].contains("cp1251"),
        "{text:#?}"
    );
    assert!(
        problems[0].fix.contains("CHARACTER SET utf8mb4"),
        "{text:#?}"
    );

    let server = MariaDbServer::start(&["--binlog-format=STATEMENT"]).expect("start");
    let db = fresh_on(&server, "src_check_stmt").await;
    let problems = check_source(&config(&db, &[])).await.unwrap();
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 1, "{text:#?}");
    assert_eq!(problems[0].problem, "binlog_format is STATEMENT");
    assert!(problems[0].fix.contains("binlog_format=ROW"), "{text:#?}");
    drop(db);
    let _ = server.stop_fast();
}

#[tokio::test]
async fn a_large_transaction_streams_in_row_events() {
    let mut db = fresh("src_large").await;
    db.conn
        .query_drop("CREATE TABLE a (id INT PRIMARY KEY, v VARCHAR(20))")
        .await
        .unwrap();
    let mut source = MySqlSource::connect(config(&db, &["a"]), None)
        .await
        .unwrap();
    db.conn
        .query_drop("INSERT INTO a SELECT seq, CONCAT('row ', seq) FROM seq_1_to_50000")
        .await
        .unwrap();
    let (changes, _) = next_commit(&mut source).await;
    assert_eq!(changes.len(), 50_000);
    assert_eq!(
        changes[49_999].change,
        RowChange::Insert {
            row: vec![Value::Int(50_000), Value::Text("row 50000".into())]
        }
    );
}

/// `next` is cancelled whenever the capture loop's flush or acknowledgement
/// timer fires first. A cancelled catalog look-up (a new table's first
/// change) must not leave the catalog connection half-read: the look-up runs
/// on, and the next call finishes it.
#[tokio::test]
async fn next_is_cancel_safe_during_catalog_lookups() {
    let mut db = fresh("src_cancel").await;
    let tables = ["c1", "c2", "c3", "c4", "c5"];
    for t in tables {
        db.conn
            .query_drop(format!(
                "CREATE TABLE {t} (id INT PRIMARY KEY, flag TINYINT(1), doc LONGTEXT CHECK (json_valid(doc)))"
            ))
            .await
            .unwrap();
    }
    let mut src = MySqlSource::connect(config(&db, &tables), None)
        .await
        .unwrap();
    for t in tables {
        db.conn
            .query_drop(format!("INSERT INTO {t} VALUES (1, 1, '{{}}')"))
            .await
            .unwrap();
    }
    let mut commits = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while commits < tables.len() {
        assert!(tokio::time::Instant::now() < deadline, "{commits} commits");
        // far shorter than a catalog query: most calls are cancelled mid-way
        match tokio::time::timeout(Duration::from_micros(200), src.next()).await {
            Err(_) => continue,
            Ok(Ok(SourceMessage::Commit(_))) => commits += 1,
            Ok(Ok(_)) => {}
            Ok(Err(err)) => panic!("next failed after cancelled calls: {err}"),
        }
    }
}

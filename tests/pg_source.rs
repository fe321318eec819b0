//! The PostgreSQL source against a real server (the test kit's shared
//! PostgreSQL 15, `wal_level = logical`; one fresh database per test).

mod common;

use std::sync::Arc;
use std::time::Duration;

use callosum::testkit::{wait_until, PgServer};
use callosum_api::{
    ChangeEvent, ErrorKind, Lsn, Position, RowChange, Source, SourceMessage, TableId,
    TransactionMeta, Value,
};
use callosum_postgres::{check, PgSource, PgSourceConfig};
use chrono::{NaiveDate, NaiveTime};
use common::store_db::{fresh_pg_db as fresh_db, PgDb as Db};
use tokio_postgres::{Client, NoTls};

const WAIT: Duration = Duration::from_secs(30);

async fn db(prefix: &str, ddl: &str) -> Db {
    fresh_db(PgServer::shared(), prefix, ddl).await
}

fn config(db: &Db, tables: &[&str]) -> PgSourceConfig {
    PgSourceConfig {
        tls: Default::default(),
        store: "crm".into(),
        url: db.url.clone(),
        password: None,
        slot: format!("s_{}", db.name),
        publication: "callosum_crm".into(),
        tables: tables.iter().map(|t| TableId::parse(t, "public")).collect(),
        echo_origins: callosum_api::EchoOrigins::default(),
        confirmed_means_applied: false,
    }
}

async fn next(src: &mut PgSource) -> SourceMessage {
    tokio::time::timeout(WAIT, src.next())
        .await
        .expect("a message within the deadline")
        .expect("no source error")
}

/// The next transaction: its changes and how it ended (Commit or Discard).
/// Progress messages before it are skipped.
async fn next_txn(src: &mut PgSource) -> (Vec<ChangeEvent>, SourceMessage) {
    loop {
        match next(src).await {
            SourceMessage::Progress(_) => continue,
            SourceMessage::Begin => break,
            other => panic!("expected Begin, got {other:?}"),
        }
    }
    let mut changes = Vec::new();
    loop {
        match next(src).await {
            SourceMessage::Change(c) => changes.push(c),
            end @ (SourceMessage::Commit(_) | SourceMessage::Discard { .. }) => {
                return (changes, end)
            }
            other => panic!("unexpected {other:?} inside a transaction"),
        }
    }
}

async fn next_commit(src: &mut PgSource) -> (Vec<ChangeEvent>, TransactionMeta) {
    match next_txn(src).await {
        (changes, SourceMessage::Commit(meta)) => (changes, meta),
        (_, other) => panic!("expected Commit, got {other:?}"),
    }
}

/// Drops the source, then its slot (once the server released it).
async fn finish(src: PgSource, db: &Db, slot: &str) {
    drop(src);
    let client = &db.client;
    wait_until("slot released", WAIT, || async {
        client
            .query_one(
                "SELECT NOT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
    })
    .await
    .unwrap();
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

const BIG: &str = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i)";

#[tokio::test]
async fn streams_inserts_updates_deletes_truncates_in_whole_transactions() {
    let db = db(
        "pg_src_dml",
        "CREATE TABLE a (id int8 PRIMARY KEY, name text, big text);
         ALTER TABLE a ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE TABLE b (id int4 PRIMARY KEY, v varchar(20));",
    )
    .await;
    let cfg = config(&db, &["public.a", "public.b"]);
    let slot = cfg.slot.clone();
    let mut src = PgSource::connect(cfg, None).await.unwrap();

    // One transaction over two tables.
    db.client
        .batch_execute(&format!(
            "BEGIN; INSERT INTO a VALUES (1, 'x', {BIG}); INSERT INTO b VALUES (7, 'seven'); COMMIT;"
        ))
        .await
        .unwrap();
    let (changes, t1) = next_commit(&mut src).await;
    assert_eq!(changes.len(), 2);
    let schema_a = changes[0].schema.clone();
    assert_eq!(schema_a.table, TableId::new("public", "a"));
    let cols: Vec<(&str, &str, bool)> = schema_a
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.source_type.as_str(), c.is_key))
        .collect();
    assert_eq!(
        cols,
        [
            ("id", "int8", true),
            ("name", "text", false),
            ("big", "text", false)
        ]
    );
    let RowChange::Insert { row } = &changes[0].change else {
        panic!("expected insert")
    };
    assert_eq!(row[0], Value::Int(1));
    assert!(matches!(&row[2], Value::Text(s) if s.len() == 12_800));
    assert_eq!(changes[1].schema.table, TableId::new("public", "b"));
    assert_eq!(
        changes[1].change,
        RowChange::Insert {
            row: vec![Value::Int(7), text("seven")]
        }
    );
    let (Position::Pg(commit), Position::Pg(end)) = (&t1.position, &t1.resume_position) else {
        panic!("pg positions")
    };
    assert!(commit < end);
    let now = chrono::Utc::now().timestamp_micros();
    assert!((now - t1.commit_time_micros).abs() < 60_000_000);

    // Update of another column: the big TOASTed value arrives Unchanged.
    db.client
        .batch_execute("UPDATE a SET name = 'y' WHERE id = 1")
        .await
        .unwrap();
    let (changes, t2) = next_commit(&mut src).await;
    assert!(t2.position > t1.position);
    assert!(
        Arc::ptr_eq(&changes[0].schema, &schema_a),
        "schema Arc is shared"
    );
    assert_eq!(
        changes[0].change,
        RowChange::Update {
            old_key: None,
            row: vec![Value::Int(1), text("y"), Value::Unchanged]
        }
    );

    // Key change: old key values, other columns Null.
    db.client
        .batch_execute("UPDATE a SET id = 2 WHERE id = 1")
        .await
        .unwrap();
    let (changes, _) = next_commit(&mut src).await;
    assert_eq!(
        changes[0].change,
        RowChange::Update {
            old_key: Some(vec![Value::Int(1), Value::Null, Value::Null]),
            row: vec![Value::Int(2), text("y"), Value::Unchanged]
        }
    );

    db.client
        .batch_execute("DELETE FROM a WHERE id = 2")
        .await
        .unwrap();
    let (changes, _) = next_commit(&mut src).await;
    assert_eq!(
        changes[0].change,
        RowChange::Delete {
            key: vec![Value::Int(2), Value::Null, Value::Null]
        }
    );

    db.client.batch_execute("TRUNCATE a, b").await.unwrap();
    let (changes, _) = next_commit(&mut src).await;
    let mut truncated: Vec<String> = changes
        .iter()
        .map(|c| {
            assert_eq!(c.change, RowChange::Truncate);
            c.schema.table.to_string()
        })
        .collect();
    truncated.sort();
    assert_eq!(truncated, ["public.a", "public.b"]);

    // A schema change gives a new schema.
    db.client
        .batch_execute(
            "ALTER TABLE a ADD COLUMN extra int4; INSERT INTO a VALUES (3, 'z', 'small', 5)",
        )
        .await
        .unwrap();
    let (changes, _) = next_commit(&mut src).await;
    assert!(!Arc::ptr_eq(&changes[0].schema, &schema_a));
    assert_eq!(changes[0].schema.columns.len(), 4);
    assert_eq!(
        changes[0].change,
        RowChange::Insert {
            row: vec![Value::Int(3), text("z"), text("small"), Value::Int(5)]
        }
    );

    finish(src, &db, &slot).await;
}

#[tokio::test]
async fn replica_identity_full_fills_unchanged_toast_and_keys_by_primary_key() {
    let db = db(
        "pg_src_full",
        "CREATE TABLE f (id int8 PRIMARY KEY, name text, big text);
         ALTER TABLE f ALTER COLUMN big SET STORAGE EXTERNAL;
         ALTER TABLE f REPLICA IDENTITY FULL;",
    )
    .await;
    let cfg = config(&db, &["public.f"]);
    let slot = cfg.slot.clone();
    let mut src = PgSource::connect(cfg, None).await.unwrap();
    db.client
        .batch_execute(&format!("INSERT INTO f VALUES (1, 'x', {BIG})"))
        .await
        .unwrap();
    let (changes, _) = next_commit(&mut src).await;
    let keys: Vec<bool> = changes[0].schema.columns.iter().map(|c| c.is_key).collect();
    assert_eq!(keys, [true, false, false]);
    db.client
        .batch_execute("UPDATE f SET name = 'y' WHERE id = 1")
        .await
        .unwrap();
    let (changes, _) = next_commit(&mut src).await;
    let RowChange::Update { old_key, row } = &changes[0].change else {
        panic!("expected update")
    };
    assert_eq!(old_key, &None);
    assert!(matches!(&row[2], Value::Text(s) if s.len() == 12_800));
    db.client.batch_execute("DELETE FROM f").await.unwrap();
    let (changes, _) = next_commit(&mut src).await;
    let RowChange::Delete { key } = &changes[0].change else {
        panic!("expected delete")
    };
    assert_eq!(key[0], Value::Int(1));
    finish(src, &db, &slot).await;
}

#[tokio::test]
async fn converts_every_supported_type() {
    let db = db(
        "pg_src_types",
        "CREATE TABLE t (id int8 PRIMARY KEY, b bool, i2 int2, i4 int4, n numeric(12,2),
            nn numeric, f4 float4, f8 float8, fnan float8, finf float8, tx text, vc varchar(10),
            bc char(4), by bytea, d date, tm time, ts timestamp, tz timestamptz, u uuid,
            j json, jb jsonb, nul text)",
    )
    .await;
    let cfg = config(&db, &["public.t"]);
    let slot = cfg.slot.clone();
    let mut src = PgSource::connect(cfg, None).await.unwrap();
    db.client
        .batch_execute(
            "SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'SQL, DMY';
             INSERT INTO t VALUES (9223372036854775807, true, -32768, 2147483647, -12.50,
                'NaN', 1.5, 0.1, 'NaN', '-Infinity', 'héllo', 'vc', 'ab', '\\x00ff10',
                '2024-02-29', '13:45:01.5', '2024-01-02 03:04:05.000006',
                '2024-01-02 08:34:05.000006+05:30', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
                '{\"a\": [1, 2]}', '{\"b\": true}', NULL)",
        )
        .await
        .unwrap();
    let (changes, _) = next_commit(&mut src).await;
    let types: Vec<&str> = changes[0]
        .schema
        .columns
        .iter()
        .map(|c| c.source_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "int8",
            "bool",
            "int2",
            "int4",
            "numeric",
            "numeric",
            "float4",
            "float8",
            "float8",
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
            "text"
        ]
    );
    let RowChange::Insert { row } = &changes[0].change else {
        panic!("expected insert")
    };
    let ts = NaiveDate::from_ymd_opt(2024, 1, 2)
        .unwrap()
        .and_hms_micro_opt(3, 4, 5, 6)
        .unwrap();
    assert_eq!(row[0], Value::Int(i64::MAX));
    assert_eq!(row[1], Value::Bool(true));
    assert_eq!(row[2], Value::Int(-32768));
    assert_eq!(row[3], Value::Int(2147483647));
    assert_eq!(row[4], Value::Decimal("-12.50".into()));
    assert_eq!(row[5], Value::Decimal("NaN".into()));
    assert_eq!(row[6], Value::Float(1.5));
    assert_eq!(row[7], Value::Float(0.1));
    assert!(matches!(row[8], Value::Float(f) if f.is_nan()));
    assert_eq!(row[9], Value::Float(f64::NEG_INFINITY));
    assert_eq!(row[10], text("héllo"));
    assert_eq!(row[11], text("vc"));
    assert_eq!(row[12], text("ab  "));
    assert_eq!(row[13], Value::Bytes(vec![0, 255, 16]));
    assert_eq!(
        row[14],
        Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap())
    );
    assert_eq!(
        row[15],
        Value::Time(NaiveTime::from_hms_milli_opt(13, 45, 1, 500).unwrap())
    );
    assert_eq!(row[16], Value::Timestamp(ts));
    assert_eq!(row[17], Value::TimestampTz(ts.and_utc()));
    assert_eq!(
        row[18],
        Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())
    );
    assert_eq!(row[19], Value::Json("{\"a\": [1, 2]}".into()));
    assert_eq!(row[20], Value::Json("{\"b\": true}".into()));
    assert_eq!(row[21], Value::Null);
    finish(src, &db, &slot).await;
}

/// Types without a conversion of their own never halt capture: they are
/// carried as text (enum, citext-like, inet, money, ranges, arrays, timetz),
/// intervals and infinities exactly, and `time '24:00:00'` as a 24 h duration.
#[tokio::test]
async fn every_column_type_is_carried_and_never_halts_capture() {
    let db = db(
        "pg_src_types",
        "CREATE TYPE deal_stage AS ENUM ('lead', 'won');
         CREATE DOMAIN positive AS int4 CHECK (VALUE > 0);
         CREATE TABLE net (id int4 PRIMARY KEY, addr inet, stage deal_stage, p positive,
             tags text[], span interval, r int4range, tz timetz, m money, d date,
             ts timestamptz, t time, far date)",
    )
    .await;
    let cfg = config(&db, &["public.net"]);
    let slot = cfg.slot.clone();
    let mut src = PgSource::connect(cfg, None).await.unwrap();
    db.client
        .batch_execute(
            "INSERT INTO net VALUES (1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
             INSERT INTO net VALUES (2, '10.11.12.13', 'won', 7, '{\"a b\",ü,😀}',
                 '1 year 2 mons -3 days 04:05:06.000007', '[1,5)', '13:14:15.5+05:30', 12.34,
                 'infinity', '-infinity', '24:00:00', '5874897-12-31')",
        )
        .await
        .unwrap();
    // One transaction (one simple query): a row of NULLs, a row of values.
    let (changes, _) = next_commit(&mut src).await;
    assert_eq!(changes[0].schema.columns[1].source_type, "inet");
    assert_eq!(changes[0].schema.columns[2].source_type, "deal_stage");
    let RowChange::Insert { row } = &changes[1].change else {
        panic!("{:?}", changes[1].change)
    };
    let text = |s: &str| Value::Text(s.into());
    assert_eq!(row[1], text("10.11.12.13"));
    assert_eq!(row[2], text("won"));
    assert_eq!(row[3], Value::Int(7));
    assert_eq!(row[4], text("{\"a b\",ü,😀}"));
    assert_eq!(
        row[5],
        Value::Interval(callosum_api::Interval {
            months: 14,
            days: -3,
            micros: 14_706_000_007
        })
    );
    assert_eq!(row[6], text("[1,5)"));
    assert_eq!(row[7], text("13:14:15.5+05:30"));
    assert!(
        matches!(&row[8], Value::Text(m) if m.contains("12.34")),
        "{:?}",
        row[8]
    );
    assert_eq!(row[9], Value::Infinity { negative: false });
    assert_eq!(row[10], Value::Infinity { negative: true });
    assert_eq!(
        row[11],
        Value::Interval(callosum_api::Interval::from_micros(86_400_000_000))
    );
    let Value::Undecodable { type_name, reason } = &row[12] else {
        panic!("{:?}", row[12])
    };
    assert_eq!(type_name, "date");
    assert!(!reason.contains("5874897"), "{reason} has no row values");
    finish(src, &db, &slot).await;
}

#[tokio::test]
async fn own_writes_to_the_checkpoint_table_are_discarded() {
    let db = db(
        "pg_src_echo",
        "CREATE TABLE a (id int8 PRIMARY KEY, v text);
         CREATE TABLE callosum_checkpoint (pipeline text PRIMARY KEY, source_position text, applied_at timestamp);",
    )
    .await;
    let cfg = config(&db, &["public.a"]);
    let slot = cfg.slot.clone();
    let mut src = PgSource::connect(cfg, None).await.unwrap();
    let published: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'callosum_crm' AND tablename = 'callosum_checkpoint'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(published, 1, "the checkpoint table is published");

    // Callosum's sink: the checkpoint row first.
    db.client
        .batch_execute(
            "BEGIN;
             INSERT INTO callosum_checkpoint VALUES ('erp_to_crm', 'binlog:b.1:4', now());
             INSERT INTO a VALUES (1, 'applied');
             COMMIT;",
        )
        .await
        .unwrap();
    // The checkpoint written last: changes already yielded, then Discard.
    db.client
        .batch_execute(
            "BEGIN;
             INSERT INTO a VALUES (2, 'applied');
             UPDATE callosum_checkpoint SET source_position = 'binlog:b.1:9';
             COMMIT;",
        )
        .await
        .unwrap();
    db.client
        .batch_execute("INSERT INTO a VALUES (3, 'user')")
        .await
        .unwrap();

    let (changes, end) = next_txn(&mut src).await;
    assert!(changes.is_empty());
    assert!(matches!(end, SourceMessage::Discard { .. }), "{end:?}");
    let (changes, end) = next_txn(&mut src).await;
    assert_eq!(changes.len(), 1);
    assert!(matches!(end, SourceMessage::Discard { .. }), "{end:?}");
    let (changes, _) = next_commit(&mut src).await;
    assert_eq!(
        changes[0].change,
        RowChange::Insert {
            row: vec![Value::Int(3), text("user")]
        }
    );
    finish(src, &db, &slot).await;
}

#[tokio::test]
async fn resumes_after_acknowledged_position_without_repeats() {
    let db = db("pg_src_resume", "CREATE TABLE a (id int8 PRIMARY KEY)").await;
    let cfg = config(&db, &["public.a"]);
    let slot = cfg.slot.clone();
    let mut src = PgSource::connect(cfg.clone(), None).await.unwrap();
    for id in 1..=3 {
        db.client
            .execute("INSERT INTO a VALUES ($1)", &[&(id as i64)])
            .await
            .unwrap();
    }
    let id_of = |changes: &[ChangeEvent]| match &changes[0].change {
        RowChange::Insert { row } => row[0].clone(),
        other => panic!("{other:?}"),
    };
    let (c1, t1) = next_commit(&mut src).await;
    assert_eq!(id_of(&c1), Value::Int(1));
    src.acknowledge(&t1.resume_position).await.unwrap();
    let (_, t2) = next_commit(&mut src).await;
    let (_, _t3) = next_commit(&mut src).await;
    wait_until("the slot confirms t1", WAIT, || async {
        Position::Pg(confirmed(&db.client, &slot).await) == t1.resume_position
    })
    .await
    .unwrap();
    drop(src);

    // The change log holds t1 and t2: resume from t2's end.
    let mut src = connect_retrying(cfg.clone(), Some(t2.resume_position.clone())).await;
    let (c, _) = next_commit(&mut src).await;
    assert_eq!(id_of(&c), Value::Int(3), "nothing up to t2 again");
    drop(src);

    // Without a resume position: from the slot's confirmed position (t1).
    let mut src = connect_retrying(cfg.clone(), None).await;
    let (c, _) = next_commit(&mut src).await;
    assert_eq!(id_of(&c), Value::Int(2));
    finish(src, &db, &slot).await;
}

/// A change log restored from a backup resumes behind what the slot has
/// confirmed: with `acknowledge = "logged"`, streaming from the slot would
/// skip changes no target applied, so the source refuses with
/// `PositionLost` instead of warning and going on. With `"applied"` the
/// slot confirmed only what the targets hold, and streaming starts there.
#[tokio::test]
async fn a_log_older_than_the_slot_is_a_lost_position_when_the_slot_is_told_what_was_logged() {
    let db = db("pg_src_behind", "CREATE TABLE a (id int8 PRIMARY KEY)").await;
    let cfg = config(&db, &["public.a"]);
    let slot = cfg.slot.clone();
    let mut src = PgSource::connect(cfg.clone(), None).await.unwrap();
    for id in 1..=2 {
        db.client
            .execute("INSERT INTO a VALUES ($1)", &[&(id as i64)])
            .await
            .unwrap();
    }
    let (_, t1) = next_commit(&mut src).await;
    let (_, t2) = next_commit(&mut src).await;
    src.acknowledge(&t2.resume_position).await.unwrap();
    wait_until("the slot confirms t2", WAIT, || async {
        Position::Pg(confirmed(&db.client, &slot).await) == t2.resume_position
    })
    .await
    .unwrap();
    drop(src);

    // The restored log holds only t1.
    let deadline = tokio::time::Instant::now() + WAIT;
    let err = loop {
        match PgSource::connect(cfg.clone(), Some(t1.resume_position.clone())).await {
            Ok(_) => panic!("resuming behind the slot's confirmed position must fail"),
            Err(err) if err.is_transient() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(err) => break err,
        }
    };
    assert_eq!(err.kind, ErrorKind::PositionLost, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&t1.resume_position.as_lsn().unwrap().to_string()),
        "{text}"
    );
    assert!(
        text.contains(&t2.resume_position.as_lsn().unwrap().to_string()),
        "{text}"
    );
    assert!(
        err.hint.as_deref().unwrap_or("").contains("re-snapshot"),
        "{err:?}"
    );

    // Told only what was applied, the slot's position is safe to start at.
    let applied = PgSourceConfig {
        tls: Default::default(),
        confirmed_means_applied: true,
        ..cfg.clone()
    };
    let src = connect_retrying(applied, Some(t1.resume_position.clone())).await;
    drop(src);

    // The log that holds t2 resumes normally.
    let src = connect_retrying(cfg.clone(), Some(t2.resume_position.clone())).await;
    finish(src, &db, &slot).await;
}

async fn confirmed(client: &Client, slot: &str) -> Lsn {
    client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse::<Lsn>()
        .unwrap()
}

/// The previous walsender may still hold the slot for a moment (55006).
async fn connect_retrying(cfg: PgSourceConfig, resume: Option<Position>) -> PgSource {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match PgSource::connect(cfg.clone(), resume.clone()).await {
            Ok(src) => return src,
            Err(err) if err.is_transient() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(err) => panic!("connect: {err}"),
        }
    }
}

#[tokio::test]
async fn progress_when_only_unpublished_tables_are_written() {
    let db = db(
        "pg_src_progress",
        "CREATE TABLE a (id int8 PRIMARY KEY); CREATE TABLE other (id int8 PRIMARY KEY)",
    )
    .await;
    let cfg = config(&db, &["public.a"]);
    let slot = cfg.slot.clone();
    let mut src = PgSource::connect(cfg, None).await.unwrap();
    src.set_status_interval(Duration::from_millis(200));
    let start: Lsn = db
        .client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    for id in 1..=5 {
        db.client
            .execute("INSERT INTO other VALUES ($1)", &[&(id as i64)])
            .await
            .unwrap();
    }
    let after: Lsn = db
        .client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    let progressed = loop {
        match next(&mut src).await {
            SourceMessage::Progress(Position::Pg(lsn)) if lsn >= after => break lsn,
            SourceMessage::Progress(_) => continue,
            other => panic!("expected only Progress, got {other:?}"),
        }
    };
    assert!(progressed > start);
    src.acknowledge(&Position::Pg(progressed)).await.unwrap();
    let client = &db.client;
    wait_until("the slot confirms the progress", WAIT, || async {
        confirmed(client, &slot).await >= progressed
    })
    .await
    .unwrap();
    finish(src, &db, &slot).await;
}

#[tokio::test]
async fn answers_keepalives_so_the_server_keeps_the_connection() {
    let server = PgServer::start(&[("wal_sender_timeout", "1s")]).expect("server");
    let db = fresh_db(
        &server,
        "pg_src_keepalive",
        "CREATE TABLE a (id int8 PRIMARY KEY)",
    )
    .await;
    let cfg = config(&db, &["public.a"]);
    let slot = cfg.slot.clone();
    let mut src = PgSource::connect(cfg, None).await.unwrap();
    // Idle for several timeouts while reading: only Progress may come.
    let idle_until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < idle_until {
        match tokio::time::timeout_at(idle_until, src.next()).await {
            Err(_) => break,
            Ok(Ok(SourceMessage::Progress(_))) => {}
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    db.client
        .batch_execute("INSERT INTO a VALUES (1)")
        .await
        .unwrap();
    let (changes, _) = next_commit(&mut src).await;
    assert_eq!(changes.len(), 1);
    finish(src, &db, &slot).await;
}

#[tokio::test]
async fn next_is_cancel_safe() {
    let db = db(
        "pg_src_cancel",
        "CREATE TABLE a (id int8 PRIMARY KEY, v text)",
    )
    .await;
    let cfg = config(&db, &["public.a"]);
    let slot = cfg.slot.clone();
    let mut src = PgSource::connect(cfg, None).await.unwrap();
    db.client
        .batch_execute(&format!(
            "INSERT INTO a SELECT i, {BIG} FROM generate_series(1, 200) i"
        ))
        .await
        .unwrap();
    // Poll with tiny timeouts: frames are read partially and the futures
    // dropped; nothing may be lost or duplicated.
    let mut ids = Vec::new();
    let mut committed = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !committed {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        match tokio::time::timeout(Duration::from_micros(50), src.next()).await {
            Err(_) => continue,
            Ok(msg) => match msg.unwrap() {
                SourceMessage::Change(c) => match c.change {
                    RowChange::Insert { row } => ids.push(row[0].clone()),
                    other => panic!("{other:?}"),
                },
                SourceMessage::Commit(_) => committed = true,
                _ => {}
            },
        }
    }
    assert_eq!(ids, (1..=200).map(Value::Int).collect::<Vec<_>>());
    finish(src, &db, &slot).await;
}

#[tokio::test]
async fn connect_fails_naming_a_missing_table_and_adds_tables_to_the_publication() {
    let db = db(
        "pg_src_pub",
        "CREATE TABLE a (id int8 PRIMARY KEY); CREATE TABLE b (id int8 PRIMARY KEY);
         CREATE PUBLICATION callosum_crm FOR TABLE a;",
    )
    .await;
    let err = PgSource::connect(config(&db, &["public.a", "public.nope"]), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Schema);
    assert!(err.to_string().contains("public.nope"), "{err}");

    let cfg = config(&db, &["public.a", "public.b"]);
    let slot = cfg.slot.clone();
    let src = PgSource::connect(cfg, None).await.unwrap();
    let n: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'callosum_crm'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    assert!(src.source_lag_bytes().await.is_ok());
    finish(src, &db, &slot).await;
}

#[tokio::test]
async fn check_lists_every_problem_with_its_fix() {
    let db = db(
        "pg_src_check",
        "CREATE TABLE a (id int8 PRIMARY KEY); CREATE TABLE nopk (v text);
         CREATE ROLE callosum_check_user LOGIN;",
    )
    .await;
    let mut cfg = config(&db, &["public.a", "public.nopk", "public.missing"]);
    let problems = check(&cfg).await.unwrap();
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    let all = text.join("\n");
    assert!(
        all.contains("public.nopk") && all.contains("REPLICA IDENTITY FULL"),
        "{all}"
    );
    assert!(all.contains("public.missing"), "{all}");
    assert!(!all.contains("wal_level"), "{all}");
    assert!(problems
        .iter()
        .all(|p| p.store == "crm" && !p.fix.is_empty()));

    // An unprivileged user: no REPLICATION, no SELECT, no CREATE.
    cfg.url = cfg
        .url
        .replace("postgres://postgres@", "postgres://callosum_check_user@");
    cfg.tables = vec![TableId::new("public", "a")];
    let problems = check(&cfg).await.unwrap();
    let all = problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(all.contains("REPLICATION"), "{all}");
    assert!(all.contains("SELECT"), "{all}");
    assert!(all.contains("CREATE"), "{all}");
    db.client
        .batch_execute("DROP ROLE callosum_check_user")
        .await
        .ok();
}

#[tokio::test]
async fn wal_level_replica_is_reported_by_check_and_connect() {
    let server = PgServer::start(&[("wal_level", "replica")]).expect("server");
    let db = fresh_db(
        &server,
        "pg_src_wal",
        "CREATE TABLE a (id int8 PRIMARY KEY)",
    )
    .await;
    let cfg = config(&db, &["public.a"]);
    let problems = check(&cfg).await.unwrap();
    let p = problems
        .iter()
        .find(|p| p.problem.contains("wal_level"))
        .expect("a wal_level problem");
    assert!(
        p.fix.contains("ALTER SYSTEM SET wal_level = logical"),
        "{p}"
    );
    // a server of its own: its WAL retention may be changed here
    let advice = callosum_postgres::advice(&cfg).await.unwrap();
    assert!(
        advice
            .iter()
            .any(|a| a.risk.contains("max_slot_wal_keep_size is unlimited")),
        "{advice:?}"
    );
    for statement in [
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'",
        "SELECT pg_reload_conf()",
    ] {
        db.client.batch_execute(statement).await.unwrap();
    }
    common::wait_for(
        "the capped WAL retention to be seen",
        Duration::from_secs(10),
        || async { callosum_postgres::advice(&cfg).await.unwrap().is_empty() },
    )
    .await;
    let err = PgSource::connect(cfg, None).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::ServerConfig, "{err}");
    assert!(err.to_string().contains("wal_level"), "{err}");
}

#[tokio::test]
async fn authenticates_with_scram_md5_and_cleartext_passwords() {
    let server = PgServer::start(&[]).expect("server");
    let db = fresh_db(
        &server,
        "pg_src_auth",
        "CREATE TABLE a (id int8 PRIMARY KEY);
         CREATE ROLE scram_u LOGIN SUPERUSER PASSWORD 'sekret';
         SET password_encryption = 'md5';
         CREATE ROLE md5_u LOGIN SUPERUSER PASSWORD 'sekret';
         RESET password_encryption;
         CREATE ROLE clear_u LOGIN SUPERUSER PASSWORD 'sekret';",
    )
    .await;
    let hba = server.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host all scram_u 127.0.0.1/32 scram-sha-256\n\
             host all md5_u 127.0.0.1/32 md5\n\
             host all clear_u 127.0.0.1/32 password\n{old}"
        ),
    )
    .unwrap();
    db.client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    // The reload is asynchronous: wait until a wrong password is refused.
    let wrong = db
        .url
        .replace("postgres://postgres@", "postgres://scram_u:wrong@");
    wait_until("pg_hba.conf reloaded", WAIT, || async {
        tokio_postgres::connect(&wrong, NoTls).await.is_err()
    })
    .await
    .unwrap();

    for user in ["scram_u", "md5_u", "clear_u"] {
        let mut cfg = config(&db, &["public.a"]);
        cfg.url = db
            .url
            .replace("postgres://postgres@", &format!("postgres://{user}@"));
        cfg.slot = format!("s_{user}");
        cfg.password = Some("sekret".into());
        let slot = cfg.slot.clone();
        let src = PgSource::connect(cfg.clone(), None)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        finish(src, &db, &slot).await;

        cfg.password = Some("wrong-password".into());
        let err = PgSource::connect(cfg, None).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Permission, "{user}: {err}");
        assert!(!err.to_string().contains("wrong-password"), "{err}");
    }
}

/// A TCP proxy to `upstream` that can stop forwarding in both directions
/// while keeping every connection open: a half-open connection as a dead
/// peer or a stateful firewall leaves it.
struct FreezingProxy {
    addr: std::net::SocketAddr,
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl FreezingProxy {
    async fn start(upstream: std::net::SocketAddr) -> FreezingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(Self::pump(client_read, server_write, flag.clone()));
                tokio::spawn(Self::pump(server_read, client_write, flag.clone()));
            }
        });
        FreezingProxy { addr, frozen }
    }

    /// Copies `from` to `to`, holding what it read while frozen.
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        frozen: Arc<std::sync::atomic::AtomicBool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            while frozen.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_silent_half_open_replication_connection_is_dropped_for_a_reconnect() {
    let db = db("pg_src_halfopen", "CREATE TABLE a (id int8 PRIMARY KEY)").await;
    let mut cfg = config(&db, &["public.a"]);
    let server: std::net::SocketAddr = format!("127.0.0.1:{}", PgServer::shared().port())
        .parse()
        .unwrap();
    let proxy = FreezingProxy::start(server).await;
    cfg.url = cfg.url.replace(
        &format!(":{}/", server.port()),
        &format!(":{}/", proxy.addr.port()),
    );
    let slot = cfg.slot.clone();
    let mut src = PgSource::connect(cfg, None).await.unwrap();
    src.set_status_interval(Duration::from_millis(200));
    src.set_read_timeout(Duration::from_secs(3));
    db.client
        .batch_execute("INSERT INTO a VALUES (1)")
        .await
        .unwrap();
    // streaming works through the proxy, and idle keepalives keep it alive
    // longer than the read timeout
    loop {
        if let SourceMessage::Commit(_) = next(&mut src).await {
            break;
        }
    }
    let quiet = tokio::time::Instant::now();
    while quiet.elapsed() < Duration::from_secs(5) {
        let _ = next(&mut src).await;
    }

    proxy.freeze();
    let frozen_at = tokio::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match src.next().await {
                Ok(_) => continue,
                Err(err) => break err,
            }
        }
    })
    .await
    .expect("a silent connection is given up within the read timeout");
    assert!(frozen_at.elapsed() < Duration::from_secs(10));
    assert_eq!(err.kind, ErrorKind::Connection, "{err}");
    assert!(err.is_transient(), "reconnected, not halted: {err}");
    assert!(err.to_string().contains("half-open"), "{err}");
    // the walsender behind the frozen proxy holds the slot until its own
    // timeout: end it
    let _ = db
        .client
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&slot],
        )
        .await;
    finish(src, &db, &slot).await;
}

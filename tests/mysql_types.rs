//! MariaDB → PostgreSQL, value by value, against real servers: one table
//! with edge values of the types TYPES.md maps (TIME durations, FLOAT,
//! DATETIME in a store `time_zone`, TIMESTAMP, latin1 as cp1252, utf16,
//! ucs2, utf8mb4, JSON, DECIMAL(65,30), BIGINT UNSIGNED, DATE, VARBINARY);
//! every value arrives equal after the map, or its transaction is
//! dead-lettered with an error naming table, column, type and value kind.

mod common;

use callosum::agent::Agent;
use callosum::config::Config;
use callosum::dead_letter::api::fetch_dead_letters;
use common::TestPipeline;
use mysql_async::prelude::Queryable;
use std::net::SocketAddr;
use std::time::Duration;

const MYSQL_TABLE: &str = "CREATE TABLE vals (id INT PRIMARY KEY, tm TIME(6), dur TIME(6), \
     f FLOAT, fd FLOAT, dt DATETIME(6), dtl DATETIME(6), ts TIMESTAMP(6) NULL, \
     l1 VARCHAR(40) CHARACTER SET latin1, u16 VARCHAR(40) CHARACTER SET utf16, \
     u2 VARCHAR(40) CHARACTER SET ucs2, u8 VARCHAR(40) CHARACTER SET utf8mb4, j JSON, \
     d DECIMAL(65,30), bi BIGINT UNSIGNED, dd DATE, vb VARBINARY(16), vbt VARBINARY(16), \
     cy VARCHAR(10) CHARACTER SET cp1251)";

const PG_TABLE: &str = "CREATE TABLE vals (id int PRIMARY KEY, tm time, dur interval, \
     f real, fd float8, dt timestamptz, dtl timestamp, ts timestamptz, l1 text, u16 text, \
     u2 text, u8 text, j jsonb, d numeric(65,30), bi numeric(20,0), dd date, vb bytea, \
     vbt text, cy text)";

/// PostgreSQL's text of each column; `dt` (an instant) in the store's zone.
const PG_SELECT: &str = "SELECT id::text, tm::text, dur::text, f::text, fd::text, \
     to_char(dt AT TIME ZONE 'Europe/Berlin', 'YYYY-MM-DD HH24:MI:SS.US'), \
     (dt AT TIME ZONE 'UTC')::text, dtl::text, (ts AT TIME ZONE 'UTC')::text, l1, u16, u2, u8, \
     j::text, d::text, bi::text, dd::text, encode(vb, 'hex'), vbt, cy FROM vals ORDER BY vals.id";

const PIPELINE: &str = "mysql_to_pg";

fn free_listen_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

async fn mysql_batch(pool: &mysql_async::Pool, statements: &[&str]) {
    let mut conn = pool.get_conn().await.unwrap();
    conn.query_drop("SET time_zone = '+00:00'").await.unwrap();
    for s in statements {
        conn.query_drop(*s).await.unwrap();
    }
}

fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
    values.iter().map(|v| v.map(str::to_string)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mariadb_value_arrives_equal_or_is_refused_by_name() {
    let db = common::fresh_databases("mytypes").await;
    db.pg.batch_execute(PG_TABLE).await.unwrap();
    common::mysql_exec(&db.mysql, MYSQL_TABLE).await;
    // a second pipeline of the same store, which must keep streaming
    db.pg
        .batch_execute("CREATE TABLE other (id int PRIMARY KEY)")
        .await
        .unwrap();
    common::mysql_exec(&db.mysql, "CREATE TABLE other (id INT PRIMARY KEY)").await;
    let data_dir = tempfile::tempdir().unwrap();
    let listen = free_listen_addr();
    let pipelines = [
        TestPipeline {
            name: PIPELINE,
            from: "erp",
            to: "crm",
            tables: &["vals"],
        },
        TestPipeline {
            name: "other_pipeline",
            from: "erp",
            to: "crm",
            tables: &["other"],
        },
    ];
    let toml = common::config_toml_with(&db, data_dir.path(), &pipelines, &listen.to_string())
        .replace("on_error = \"halt\"", "on_error = \"dead_letter\"")
        .replace(
            "\nserver_id = ",
            "\ntime_zone = \"Europe/Berlin\"\nserver_id = ",
        );
    assert!(toml.contains("time_zone = \"Europe/Berlin\""));
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    common::wait_for(
        "the pipeline to stream",
        Duration::from_secs(60),
        || async { agent.status.readiness().is_ok() },
    )
    .await;

    mysql_batch(
        &db.mysql,
        &[
            // minimum-ish values, cp1252 bytes in latin1, emoji in utf16
            "INSERT INTO vals VALUES (1, '00:00:00', '-838:59:59', 0.1, 0.1, \
             '1900-01-01 00:00:00', '1000-01-01 00:00:00', '1970-01-01 00:00:01', \
             X'80939495e9', X'd83dde0000e9', X'006800e9006c006c006f20ac', '漢字😀', \
             '{\"a\": [1, 2.5, \"x\"]}', \
             '-99999999999999999999999999999999999.999999999999999999999999999999', \
             18446744073709551615, '1000-01-01', X'00ff', NULL, NULL)",
            // maximum values, the five bytes cp1252 leaves undefined, empty strings
            "INSERT INTO vals VALUES (2, '23:59:59.999999', '838:59:59', 3.40282e38, 1.17549e-38, \
             '9999-12-31 23:59:59.999999', '9999-12-31 23:59:59.999999', \
             '2038-01-19 03:14:07.999999', X'818d8f909d', '', '', '', '[]', \
             '99999999999999999999999999999999999.999999999999999999999999999999', 0, \
             '9999-12-31', X'', NULL, NULL)",
            "INSERT INTO vals (id) VALUES (3)",
            // in the spring-forward gap and in the autumn overlap of Europe/Berlin
            "INSERT INTO vals (id, dt, dtl) VALUES (4, '2024-03-31 02:30:00', '2024-03-31 02:30:00')",
            "INSERT INTO vals (id, dt, dtl) VALUES (5, '2024-10-27 02:30:00', '2024-10-27 02:30:00')",
            // 6-digit fractions
            "INSERT INTO vals (id, tm, dur, dt, dtl, ts) VALUES (6, '12:34:56.123456', \
             '-00:00:00.000001', '2024-07-01 12:00:00.654321', '2024-07-01 12:00:00.654321', \
             '2024-07-01 12:00:00.654321')",
            // refused, one transaction each: a duration into a time column,
            // binary data into text, a character set Callosum does not decode
            "INSERT INTO vals (id, tm) VALUES (10, '-01:00:00')",
            "INSERT INTO vals (id, vbt) VALUES (11, X'41')",
            "INSERT INTO vals (id, cy) VALUES (12, 'abc')",
            "INSERT INTO vals (id, u8) VALUES (20, 'after the refusals')",
        ],
    )
    .await;
    common::wait_for("row 20 in PostgreSQL", Duration::from_secs(60), || async {
        common::pg_rows(&db.pg, "SELECT 1 FROM vals WHERE id = 20")
            .await
            .len()
            == 1
    })
    .await;

    let nulls = |id: &'static str| {
        let mut r = vec![Some(id)];
        r.extend([None; 19]);
        r
    };
    let mut r4 = nulls("4");
    r4[6] = Some("2024-03-31 01:30:00"); // the offset before the gap: +01
    r4[7] = Some("2024-03-31 02:30:00");
    r4[5] = Some("2024-03-31 03:30:00.000000");
    let mut r5 = nulls("5");
    r5[6] = Some("2024-10-27 00:30:00"); // the earlier instant: +02
    r5[7] = Some("2024-10-27 02:30:00");
    r5[5] = Some("2024-10-27 02:30:00.000000");
    let mut r20 = nulls("20");
    r20[12] = Some("after the refusals");
    let expected = vec![
        row(&[
            Some("1"),
            Some("00:00:00"),
            Some("-838:59:59"),
            Some("0.1"),
            Some("0.1"),
            Some("1900-01-01 00:00:00.000000"),
            Some("1899-12-31 23:00:00"),
            Some("1000-01-01 00:00:00"),
            Some("1970-01-01 00:00:01"),
            Some("€“”•é"),
            Some("😀é"),
            Some("héllo€"),
            Some("漢字😀"),
            Some(r#"{"a": [1, 2.5, "x"]}"#),
            Some("-99999999999999999999999999999999999.999999999999999999999999999999"),
            Some("18446744073709551615"),
            Some("1000-01-01"),
            Some("00ff"),
            None,
            None,
        ]),
        row(&[
            Some("2"),
            Some("23:59:59.999999"),
            Some("838:59:59"),
            Some("3.40282e+38"),
            Some("1.17549e-38"),
            Some("9999-12-31 23:59:59.999999"),
            Some("9999-12-31 22:59:59.999999"),
            Some("9999-12-31 23:59:59.999999"),
            Some("2038-01-19 03:14:07.999999"),
            Some("\u{81}\u{8d}\u{8f}\u{90}\u{9d}"),
            Some(""),
            Some(""),
            Some(""),
            Some("[]"),
            Some("99999999999999999999999999999999999.999999999999999999999999999999"),
            Some("0"),
            Some("9999-12-31"),
            Some(""),
            None,
            None,
        ]),
        row(&nulls("3")),
        row(&r4),
        row(&r5),
        row(&[
            Some("6"),
            Some("12:34:56.123456"),
            Some("-00:00:00.000001"),
            None,
            None,
            Some("2024-07-01 12:00:00.654321"),
            Some("2024-07-01 10:00:00.654321"),
            Some("2024-07-01 12:00:00.654321"),
            Some("2024-07-01 12:00:00.654321"),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        ]),
        row(&r20),
    ];
    let got = common::pg_rows(&db.pg, PG_SELECT).await;
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e, "row {:?}", e[0]);
    }
    assert_eq!(got.len(), expected.len(), "{got:?}");

    // Text columns equal MariaDB's own conversion of their bytes to UTF-8.
    let mysql_text = common::mysql_rows(
        &db.mysql,
        "SELECT CONVERT(l1 USING utf8mb4), CONVERT(u16 USING utf8mb4), \
         CONVERT(u2 USING utf8mb4) FROM vals WHERE id IN (1, 2) ORDER BY id",
    )
    .await;
    for (m, g) in mysql_text.iter().zip(&got) {
        assert_eq!(m[..], g[9..12], "MariaDB's own conversion");
    }

    // The three refused transactions, by name.
    let list = fetch_dead_letters(listen, Some(PIPELINE)).await.unwrap();
    let queued = &list.pipelines[PIPELINE];
    assert_eq!(queued.len(), 3, "{queued:?}");
    for (entry, column, source_type, kind) in [
        (&queued[0], "`tm`", "time", "Interval"),
        (&queued[1], "`vbt`", "varbinary", "Bytes"),
        (&queued[2], "`cy`", "varchar", "Undecodable"),
    ] {
        assert_eq!(entry.reason_kind, "conversion", "{}", entry.message);
        for part in [column, "vals", source_type, kind] {
            assert!(entry.message.contains(part), "{part}: {}", entry.message);
        }
        assert!(!entry.message.contains("abc"), "{}", entry.message);
    }
    // the store's other pipeline streams on, and so does this one
    common::mysql_exec(&db.mysql, "INSERT INTO other VALUES (1)").await;
    common::wait_for(
        "the other pipeline's row",
        Duration::from_secs(60),
        || async { common::pg_rows(&db.pg, "SELECT 1 FROM other").await.len() == 1 },
    )
    .await;
    for pipeline in [PIPELINE, "other_pipeline"] {
        assert_eq!(
            agent.status.get(pipeline).unwrap().state,
            callosum::http::PipelineState::Streaming,
            "{pipeline}"
        );
    }
    agent.stop().await;
}

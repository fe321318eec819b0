//! Every PostgreSQL type of TYPES.md, end to end through the agent into
//! MariaDB columns of their natural target types: edge values (min, max,
//! NULL, empty, non-ASCII) arrive equal after the documented map; values
//! MariaDB cannot hold (NaN, infinity, dates beyond chrono) are refused as
//! dead letters naming table, column, type and value kind, while a second
//! pipeline from the same PostgreSQL store keeps streaming.

mod common;

use callosum::dead_letter::api::fetch_dead_letters;
use callosum::http::PipelineState;
use callosum::testkit::{MariaDbServer, PgServer};
use common::agent_process::{kill, spawn_agent, write_config};
use common::{Compare, MirroredTable, TestPipeline};
use std::net::SocketAddr;
use std::time::Duration;

const ZOO_PIPELINE: &str = "zoo_to_mysql";
const OTHER_PIPELINE: &str = "other_to_mysql";

/// `(column, PostgreSQL type, MariaDB type, PostgreSQL select, MariaDB
/// select, comparison)`: the select expressions render both sides as the
/// same text after TYPES.md's map.
const COLUMNS: &[(&str, &str, &str, &str, &str, Compare)] = &[
    (
        "b",
        "bool",
        "tinyint(1)",
        "b::int::text",
        "b",
        Compare::Exact,
    ),
    ("i2", "int2", "smallint", "i2::text", "i2", Compare::Exact),
    ("i4", "int4", "int", "i4::text", "i4", Compare::Exact),
    ("i8", "int8", "bigint", "i8::text", "i8", Compare::Exact),
    (
        "f4",
        "float4",
        "float",
        "f4::float8::text",
        "CAST(f4 AS DOUBLE)",
        Compare::Float,
    ),
    ("f8", "float8", "double", "f8::text", "f8", Compare::Float),
    (
        "n",
        "numeric",
        "decimal(30,6)",
        "n::text",
        "n",
        Compare::Exact,
    ),
    ("t", "text", "text", "t", "t", Compare::Exact),
    (
        "vc",
        "varchar(20)",
        "varchar(20)",
        "vc",
        "vc",
        Compare::Exact,
    ),
    ("c", "char(3)", "char(3)", "c::text", "c", Compare::Exact),
    (
        "ci",
        "citext",
        "varchar(50)",
        "ci::text",
        "ci",
        Compare::Exact,
    ),
    (
        "bin",
        "bytea",
        "blob",
        "encode(bin, 'hex')",
        "LOWER(HEX(bin))",
        Compare::Exact,
    ),
    ("j", "json", "json", "j::text", "j", Compare::Json),
    ("jb", "jsonb", "json", "jb::text", "jb", Compare::Json),
    ("u", "uuid", "char(36)", "u::text", "u", Compare::Exact),
    (
        "d",
        "date",
        "date",
        "d::text",
        "CAST(d AS CHAR)",
        Compare::Exact,
    ),
    (
        "tm",
        "time",
        "time(6)",
        "extract(epoch FROM tm)::text",
        "TIME_TO_SEC(tm)",
        Compare::Float,
    ),
    (
        "ts",
        "timestamp",
        "datetime(6)",
        "to_char(ts, 'YYYY-MM-DD HH24:MI:SS.US')",
        "DATE_FORMAT(ts, '%Y-%m-%d %H:%i:%s.%f')",
        Compare::Exact,
    ),
    (
        "tstz",
        "timestamptz",
        "datetime(6)",
        "to_char(tstz AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
        "DATE_FORMAT(tstz, '%Y-%m-%d %H:%i:%s.%f')",
        Compare::Exact,
    ),
    // any interval into text: ISO 8601, as PostgreSQL prints it with
    // IntervalStyle iso_8601
    (
        "iv",
        "interval",
        "varchar(64)",
        "iv::text",
        "iv",
        Compare::Exact,
    ),
    // an interval with days into TIME: days as 24 hours
    (
        "ivd",
        "interval",
        "time(6)",
        "extract(epoch FROM ivd)::text",
        "TIME_TO_SEC(ivd)",
        Compare::Float,
    ),
    ("dom", "positive", "int", "dom::text", "dom", Compare::Exact),
    (
        "st",
        "deal_stage",
        "enum('lead','won')",
        "st::text",
        "st",
        Compare::Exact,
    ),
    // arrays and composites into JSON: JSON arrays
    (
        "ia",
        "int4[]",
        "json",
        "to_json(ia)::text",
        "ia",
        Compare::Json,
    ),
    (
        "ta",
        "text[]",
        "json",
        "to_json(ta)::text",
        "ta",
        Compare::Json,
    ),
    (
        "ma",
        "int8[]",
        "json",
        "to_json(ma)::text",
        "ma",
        Compare::Json,
    ),
    (
        "comp",
        "address",
        "json",
        "CASE WHEN comp::text IS NULL THEN NULL \
         ELSE json_build_array((comp).street, (comp).zip::text)::text END",
        "comp",
        Compare::Json,
    ),
    // an array into a text column stays PostgreSQL's text
    ("tat", "text[]", "text", "tat::text", "tat", Compare::Exact),
    (
        // inet in its output form (`::text` adds the /32)
        "ip",
        "inet",
        "varchar(50)",
        "ip",
        "ip",
        Compare::Exact,
    ),
    (
        "net",
        "cidr",
        "varchar(50)",
        "net::text",
        "net",
        Compare::Exact,
    ),
    (
        "mac",
        "macaddr",
        "varchar(20)",
        "mac::text",
        "mac",
        Compare::Exact,
    ),
    // money into DECIMAL: the number
    (
        "mon",
        "money",
        "decimal(20,2)",
        "mon::numeric::text",
        "mon",
        Compare::Exact,
    ),
    (
        "r",
        "int4range",
        "varchar(50)",
        "r::text",
        "r",
        Compare::Exact,
    ),
    (
        "tr",
        "tstzrange",
        "varchar(100)",
        "tr::text",
        "tr",
        Compare::Exact,
    ),
    (
        "ttz",
        "timetz",
        "varchar(30)",
        "ttz::text",
        "ttz",
        Compare::Exact,
    ),
    (
        "bits",
        "bit(4)",
        "varchar(10)",
        "bits::text",
        "bits",
        Compare::Exact,
    ),
    (
        "vb",
        "varbit",
        "varchar(10)",
        "vb::text",
        "vb",
        Compare::Exact,
    ),
    (
        "pt",
        "point",
        "varchar(50)",
        "pt::text",
        "pt",
        Compare::Exact,
    ),
    (
        "mac8",
        "macaddr8",
        "varchar(30)",
        "mac8::text",
        "mac8",
        Compare::Exact,
    ),
    (
        "tsv",
        "tsvector",
        "text",
        "tsv::text",
        "tsv",
        Compare::Exact,
    ),
    ("x", "xml", "text", "x::text", "x", Compare::Exact),
];

/// Rows 1–3: NULLs, minimums and empties, maximums and non-ASCII. One value
/// per column, in [`COLUMNS`] order.
const ROWS: &[&[&str]] = &[
    &[
        "false",
        "-32768",
        "-2147483648",
        "-9223372036854775808",
        "-3.4028235e38",
        "-1.7976931348623157e308",
        "-99999999999999999999999.999999",
        "''",
        "''",
        "''",
        "''",
        "''::bytea",
        "'{}'",
        "'[]'",
        "'00000000-0000-0000-0000-000000000000'",
        "'1000-01-01'",
        "'00:00:00'",
        "'1000-01-01 00:00:00'",
        "'1970-01-01 00:00:00+00'",
        "'-178000000 years'",
        "'-34 days -22:59:59'",
        "1",
        "'lead'",
        "'{}'",
        "'{}'",
        "'{}'",
        "ROW('', NULL)",
        "'{}'",
        "'0.0.0.0'",
        "'0.0.0.0/0'",
        "'00:00:00:00:00:00'",
        "'-92233720368547758.08'",
        "'empty'",
        "'(,)'",
        "'00:00:00+15:59'",
        "B'0000'",
        "B''",
        "'(0,0)'",
        "'00:00:00:00:00:00:00:00'",
        "''",
        "''",
    ],
    &[
        "true",
        "32767",
        "2147483647",
        "9223372036854775807",
        "3.4028235e38",
        "1.7976931348623157e308",
        "99999999999999999999999.999999",
        "'héllo wörld 🎉 ✓ 日本'",
        "repeat('ü😀', 10)",
        "'ñé'",
        "'MiXeD Çase'",
        "'\\x00ff27'",
        "'{\"a\": [1, \"é\", null], \"b\": {\"c\": 1.5}}'",
        "'{\"emoji\": \"🎉\", \"n\": -0.000001}'",
        "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
        "'9999-12-31'",
        "'23:59:59.999999'",
        "'9999-12-31 23:59:59.999999'",
        "'2038-01-19 03:14:07.999999+00'",
        "'1 year 2 mons -3 days 04:05:06.000007'",
        "'1 day 02:00:00.000001'",
        "2147483647",
        "'won'",
        "'{1,2,NULL}'",
        "'{\"a b\",c,\"NULL\",\"\",\"é🎉\",\"q\\\"uote\",NULL}'",
        "'{{1,2},{3,NULL}}'",
        "ROW('Straße 5, \"Hof\"', 12345)",
        "'{\"a b\",c}'",
        "'2001:db8::ff00:42:8329/64'",
        "'10.0.0.0/8'",
        "'08:00:2b:01:02:03'",
        "'92233720368547758.07'",
        "'[1,5)'",
        "'[2024-01-01 00:00:00+00,infinity)'",
        "'13:14:15.5+05:30'",
        "B'1111'",
        "B'101'",
        "'(-1.5,2e+100)'",
        "'08:00:2b:01:02:03:04:05'",
        "'a fat:2 cat ''é'''",
        "'<a b=\"1\">é 🎉</a>'",
    ],
];

/// One PostgreSQL transaction per value MariaDB cannot hold: `(id, column,
/// value, source type, value kind)`.
const POISON: &[(i32, &str, &str, &str, &str)] = &[
    (4, "f8", "'NaN'", "float8", "Float"),
    (5, "f4", "'-Infinity'", "float4", "Float"),
    (6, "n", "'NaN'", "numeric", "Decimal"),
    (7, "ts", "'infinity'", "timestamp", "Infinity"),
    (8, "tstz", "'-infinity'", "timestamptz", "Infinity"),
    (9, "d", "'5874897-12-31'", "date", "Undecodable"),
    (10, "d", "'0099-01-01 BC'", "date", "Date"),
    (11, "ivd", "'1 mon'", "interval", "Interval"),
    (12, "ivd", "'35 days'", "interval", "Interval"),
];

fn free_listen_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn zoo_table() -> MirroredTable {
    let pg = std::iter::once("id::text")
        .chain(COLUMNS.iter().map(|c| c.3))
        .collect::<Vec<_>>()
        .join(", ");
    let my = std::iter::once("id")
        .chain(COLUMNS.iter().map(|c| c.4))
        .collect::<Vec<_>>()
        .join(", ");
    let compare: Vec<Compare> = std::iter::once(Compare::Exact)
        .chain(COLUMNS.iter().map(|c| c.5))
        .collect();
    MirroredTable {
        // the rows MariaDB can hold: not the refused ones
        name: "(SELECT * FROM zoo WHERE id < 4 OR id > 20) AS zoo",
        pg_select: leak(pg),
        mysql_select: leak(my),
        compare: Box::leak(compare.into_boxed_slice()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_postgres_type_reaches_mariadb_or_is_refused_by_name() {
    let db =
        common::fresh_databases_on(PgServer::shared(), MariaDbServer::shared(), "every_type").await;
    let citext = db
        .pg
        .query_opt(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'citext'",
            &[],
        )
        .await
        .unwrap()
        .is_some();
    assert!(citext, "the test kit's PostgreSQL has citext");
    let pg_columns: Vec<String> = COLUMNS
        .iter()
        .map(|(name, pg, ..)| format!("{name} {pg}"))
        .collect();
    db.pg
        .batch_execute(&format!(
            "CREATE EXTENSION IF NOT EXISTS citext;
             CREATE TYPE deal_stage AS ENUM ('lead', 'won');
             CREATE DOMAIN positive AS int4 CHECK (VALUE > 0);
             CREATE TYPE address AS (street text, zip int4);
             CREATE TABLE zoo (id int4 PRIMARY KEY, {});
             CREATE TABLE other (id int4 PRIMARY KEY, note text);",
            pg_columns.join(", ")
        ))
        .await
        .unwrap();
    let my_columns: Vec<String> = COLUMNS
        .iter()
        .map(|(name, _, my, ..)| format!("`{name}` {my}"))
        .collect();
    common::mysql_exec(
        &db.mysql,
        &format!(
            "CREATE TABLE zoo (id int PRIMARY KEY, {}) DEFAULT CHARSET = utf8mb4",
            my_columns.join(", ")
        ),
    )
    .await;
    common::mysql_exec(
        &db.mysql,
        "CREATE TABLE other (id int PRIMARY KEY, note text) DEFAULT CHARSET = utf8mb4",
    )
    .await;

    let work = tempfile::tempdir().unwrap();
    let listen = free_listen_addr();
    let toml = common::config_toml_with(
        &db,
        &work.path().join("data"),
        &[
            TestPipeline {
                name: ZOO_PIPELINE,
                from: "crm",
                to: "erp",
                tables: &["public.zoo"],
            },
            TestPipeline {
                name: OTHER_PIPELINE,
                from: "crm",
                to: "erp",
                tables: &["public.other"],
            },
        ],
        &listen.to_string(),
    );
    // the zoo's refusals are dead letters; the other pipeline halts on any
    // error, so its streaming proves it saw none
    let toml = toml.replacen("on_error = \"halt\"", "on_error = \"dead_letter\"", 1);
    let config = write_config(work.path(), &toml);
    let log = work.path().join("agent.log");
    let mut agent = spawn_agent(&config, &log, &[]);
    common::wait_for_slot(&db).await;

    // row 1: NULL in every column
    db.pg
        .batch_execute("INSERT INTO zoo (id) VALUES (1)")
        .await
        .unwrap();
    for (n, row) in ROWS.iter().enumerate() {
        assert_eq!(row.len(), COLUMNS.len(), "row {}", n + 2);
        db.pg
            .batch_execute(&format!(
                "INSERT INTO zoo VALUES ({}, {})",
                n + 2,
                row.join(", ")
            ))
            .await
            .unwrap();
    }
    for (id, column, value, ..) in POISON {
        db.pg
            .batch_execute(&format!(
                "INSERT INTO zoo (id, {column}) VALUES ({id}, {value})"
            ))
            .await
            .unwrap();
    }
    // a later row of the other pipeline, and a later good zoo row
    db.pg
        .batch_execute("INSERT INTO other VALUES (1, 'later')")
        .await
        .unwrap();
    db.pg
        .batch_execute("INSERT INTO zoo (id, t) VALUES (99, 'after the refusals')")
        .await
        .unwrap();

    common::wait_for(
        "the other pipeline's row in MariaDB",
        Duration::from_secs(90),
        || async {
            common::mysql_rows(&db.mysql, "SELECT note FROM other").await
                == vec![vec![Some("later".to_string())]]
        },
    )
    .await;
    common::wait_for(
        "every refused transaction dead-lettered",
        Duration::from_secs(90),
        || async {
            fetch_dead_letters(listen, Some(ZOO_PIPELINE))
                .await
                .map(|l| l.pipelines[ZOO_PIPELINE].len() == POISON.len())
                .unwrap_or(false)
        },
    )
    .await;

    // rows 1–3 and 99 arrived equal
    db.pg
        .batch_execute("SET IntervalStyle = iso_8601; SET TimeZone = 'UTC'")
        .await
        .unwrap();
    let zoo = zoo_table();
    common::wait_until_mirrored(&db, &[&zoo], Duration::from_secs(30)).await;
    let ids = common::mysql_rows(&db.mysql, "SELECT id FROM zoo ORDER BY id").await;
    let ids: Vec<&str> = ids.iter().map(|r| r[0].as_deref().unwrap()).collect();
    assert_eq!(ids, ["1", "2", "3", "99"]);

    // each refusal names table, column, source type and value kind
    let list = fetch_dead_letters(listen, Some(ZOO_PIPELINE))
        .await
        .unwrap();
    let letters = &list.pipelines[ZOO_PIPELINE];
    for ((id, column, _, source_type, kind), letter) in POISON.iter().zip(letters) {
        let m = &letter.message;
        assert!(m.contains("`zoo`") || m.contains("zoo"), "row {id}: {m}");
        assert!(
            m.contains(&format!("`{column}`")),
            "row {id} names {column}: {m}"
        );
        assert!(m.contains(source_type), "row {id} names {source_type}: {m}");
        assert!(m.contains(kind), "row {id} names the kind {kind}: {m}");
        assert!(
            !m.contains("5874897") && !m.contains("92233720368547758"),
            "{m}"
        );
    }

    // both pipelines stream
    let status = callosum::http::fetch_status(listen).await.unwrap();
    assert_eq!(
        status.pipelines[OTHER_PIPELINE].state,
        PipelineState::Streaming
    );
    assert_eq!(
        status.pipelines[ZOO_PIPELINE].state,
        PipelineState::Streaming
    );
    assert_eq!(
        status.pipelines[ZOO_PIPELINE].dead_letters,
        POISON.len() as u64
    );
    kill(&mut agent).await;
}

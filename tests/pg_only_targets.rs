//! PostgreSQL target columns of types Callosum does not encode natively
//! (`inet`, `cidr`, `macaddr`, `citext`, arrays, ranges, composites, a
//! domain, …): values travel as text and the statement casts them, so the
//! server's input function checks them. Against the real servers: MariaDB
//! → PostgreSQL into such columns, a value the type refuses dead-lettered
//! naming table and column, and PostgreSQL → PostgreSQL of every type
//! through each upsert path, deletes and key updates.

mod common;

use callosum::agent::Agent;
use callosum::config::Config;
use callosum::dead_letter::api::fetch_dead_letters;
use callosum::testkit::{MariaDbServer, PgServer};
use common::TestPipeline;
use std::time::Duration;

const PG_TYPES: &str = "CREATE EXTENSION IF NOT EXISTS citext;
     CREATE TYPE deal_stage AS ENUM ('lead', 'won');
     CREATE DOMAIN positive AS int4 CHECK (VALUE > 0);
     CREATE DOMAIN tags AS text[] CHECK (cardinality(VALUE) < 5);
     CREATE TYPE address AS (street text, zip int4);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_values_into_postgres_only_types_are_cast_by_the_server() {
    let db =
        common::fresh_databases_on(PgServer::shared(), MariaDbServer::shared(), "pg_only").await;
    db.pg
        .batch_execute(&format!(
            "{PG_TYPES}
             CREATE TABLE leads (id int4 PRIMARY KEY, st deal_stage, ip inet, net cidr,
                 mac macaddr, ci citext, dom positive, arr int4[], t tags, rng int4range,
                 addr address, en deal_stage);
             CREATE TABLE hosts (addr inet PRIMARY KEY, note text);"
        ))
        .await
        .unwrap();
    common::mysql_exec(
        &db.mysql,
        "CREATE TABLE leads (id int PRIMARY KEY, st varchar(10), ip varchar(50),
             net varchar(50), mac varchar(20), ci varchar(20), dom int, arr varchar(50),
             t varchar(50), rng varchar(50), addr varchar(50), en enum('lead', 'won'))
             DEFAULT CHARSET = utf8mb4",
    )
    .await;
    common::mysql_exec(
        &db.mysql,
        "CREATE TABLE hosts (addr varchar(50) PRIMARY KEY, note text) DEFAULT CHARSET = utf8mb4",
    )
    .await;
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let data_dir = tempfile::tempdir().unwrap();
    let toml = common::config_toml_with(
        &db,
        data_dir.path(),
        &[TestPipeline {
            name: "erp_to_crm",
            from: "erp",
            to: "crm",
            tables: &["leads", "hosts"],
        }],
        &listen.to_string(),
    )
    .replace("on_error = \"halt\"", "on_error = \"dead_letter\"");
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    common::wait_for(
        "the pipeline to stream",
        Duration::from_secs(60),
        || async { agent.status.readiness().is_ok() },
    )
    .await;
    // the binlog source starts at the server's position when it connects
    common::wait_for("the source to capture", Duration::from_secs(60), || async {
        common::mysql_exec(
            &db.mysql,
            // each try must change the row, or the binlog gets no event
            "INSERT INTO hosts VALUES ('10.0.0.1', 'probe') ON DUPLICATE KEY UPDATE note = IF(note = 'probe', 'probe again', 'probe')",
        )
        .await;
        !common::pg_rows(&db.pg, "SELECT 1 FROM hosts")
            .await
            .is_empty()
    })
    .await;

    for statement in [
        "UPDATE hosts SET note = 'probe' WHERE addr = '10.0.0.1'",
        "INSERT INTO leads VALUES (1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
        "INSERT INTO leads VALUES (2, 'won', '2001:db8::1/64', '10.0.0.0/8', '08:00:2b:01:02:03',
             'MiXeD Çase', 7, '{1,NULL,3}', '{\"a b\",ü}', '[1,5)', '(\"Straße 5\",12345)', 'lead')",
        // one statement, many rows: the unnest path
        "INSERT INTO leads SELECT seq, 'lead', CONCAT('10.0.', seq, '.1'), NULL, NULL, CONCAT('n', seq),
             seq, CONCAT('{', seq, '}'), '{}', CONCAT('[', seq, ',', seq + 2, ')'), NULL, 'won'
             FROM seq_10_to_60",
        "UPDATE leads SET ip = '192.168.0.1', arr = '{{1,2},{3,4}}' WHERE id = 2",
        "DELETE FROM leads WHERE id = 10",
        // an inet primary key: deletes and key updates through text
        "INSERT INTO hosts VALUES ('10.0.0.2', 'two'), ('::1', 'v6')",
        "UPDATE hosts SET addr = '10.0.0.3' WHERE addr = '10.0.0.2'",
        "DELETE FROM hosts WHERE addr = '::1'",
    ] {
        common::mysql_exec(&db.mysql, statement).await;
    }
    let pg_leads = "SELECT id, st::text, ip::text, net::text, mac::text, ci::text, dom::text, \
                    arr::text, t::text, rng::text, addr::text, en::text FROM leads ORDER BY id";
    let my_leads = "SELECT id, st, CASE WHEN ip LIKE '%/%' OR ip LIKE '%:%' OR ip IS NULL THEN ip \
                    ELSE CONCAT(ip, '/32') END, net, mac, ci, dom, \
                    arr, t, rng, addr, en \
                    FROM leads ORDER BY id";
    common::wait_for(
        "leads and hosts in PostgreSQL",
        Duration::from_secs(60),
        || async {
            common::pg_rows(&db.pg, "SELECT addr::text, note FROM hosts ORDER BY 1").await
                == vec![
                    vec![Some("10.0.0.1/32".to_string()), Some("probe".to_string())],
                    vec![Some("10.0.0.3/32".to_string()), Some("two".to_string())],
                ]
                && common::pg_rows(&db.pg, "SELECT count(*) FROM leads").await
                    == vec![vec![Some("52".to_string())]]
        },
    )
    .await;
    // what MariaDB holds as text is PostgreSQL's canonical form, but for
    // inet's implied /32
    let expected = common::mysql_rows(&db.mysql, my_leads).await;
    let got = common::pg_rows(&db.pg, pg_leads).await;
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g, e);
    }

    // values the types refuse: each transaction dead-lettered, naming the
    // table and the column, never the value
    for (id, column, value) in [
        (100, "st", "'lost'"),
        (101, "ip", "'not-an-address'"),
        (102, "dom", "-5"),
        (103, "arr", "'{1,x}'"),
        (104, "t", "'{a,b,c,d,e}'"),
    ] {
        common::mysql_exec(
            &db.mysql,
            &format!("INSERT INTO leads (id, {column}) VALUES ({id}, {value})"),
        )
        .await;
    }
    common::mysql_exec(&db.mysql, "INSERT INTO hosts VALUES ('10.9.9.9', 'later')").await;
    common::wait_for(
        "the later row and five dead letters",
        Duration::from_secs(60),
        || async {
            let later = common::pg_rows(&db.pg, "SELECT note FROM hosts WHERE addr = '10.9.9.9'")
                .await
                == vec![vec![Some("later".to_string())]];
            let letters = fetch_dead_letters(listen, Some("erp_to_crm"))
                .await
                .map(|l| l.pipelines["erp_to_crm"].len())
                .unwrap_or(0);
            later && letters == 5
        },
    )
    .await;
    let list = fetch_dead_letters(listen, Some("erp_to_crm"))
        .await
        .unwrap();
    for ((column, ty), letter) in [
        ("st", "deal_stage"),
        ("ip", "inet"),
        ("dom", "positive"),
        ("arr", "integer[]"),
        ("t", "tags"),
    ]
    .iter()
    .zip(&list.pipelines["erp_to_crm"])
    {
        let m = &letter.message;
        assert!(m.contains("leads"), "names the table: {m}");
        assert!(
            m.contains(&format!("`{column}` ({ty})")),
            "names column {column}: {m}"
        );
        for value in ["lost", "not-an-address", "-5", "{1,x}", "a,b,c,d,e"] {
            assert!(!m.contains(value), "never the value: {m}");
        }
    }
    agent.stop().await;
}

/// Every PostgreSQL type of TYPES.md, PostgreSQL → PostgreSQL: the
/// target's rows equal the source's, through the unnest path (small
/// batches), the COPY path (a large transaction), deletes and key updates
/// by an `inet` key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_postgres_type_postgres_to_postgres() {
    common::init_logging();
    let a_url = PgServer::shared().fresh_database("pg_all_a").await.unwrap();
    let b_url = PgServer::shared().fresh_database("pg_all_b").await.unwrap();
    let a = common::pg_client(&a_url).await;
    let b = common::pg_client(&b_url).await;
    let ddl = format!(
        "{PG_TYPES}
         CREATE TABLE zoo (id int4 PRIMARY KEY, b bool, i2 int2, i8 int8, f4 float4, f8 float8,
             n numeric, t text, vc varchar(20), c char(3), ci citext, bin bytea, j json, jb jsonb,
             u uuid, d date, tm time, ts timestamp, tstz timestamptz, iv interval, dom positive,
             st deal_stage, ia int4[], ta text[], ma int8[], tg tags, comp address, ip inet,
             net cidr, mac macaddr, mac8 macaddr8, mon money, r int4range, tr tstzrange,
             ttz timetz, bits bit(4), vb varbit, pt point, tsv tsvector);
         CREATE TABLE hosts (addr inet PRIMARY KEY, note text);"
    );
    a.batch_execute(&ddl).await.unwrap();
    b.batch_execute(&ddl).await.unwrap();
    let slot = format!("slot_{}", a_url.rsplit('/').next().unwrap());
    let data_dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"data_dir = "{}"

[http]
listen = "127.0.0.1:0"

[stores.a]
kind = "postgres"
url = "{a_url}"
slot = "{slot}"

[stores.b]
kind = "postgres"
url = "{b_url}"

[[pipelines]]
name = "a_to_b"
from = "a"
to = "b"
tables = ["public.zoo", "public.hosts"]
on_error = "halt"
"#,
        data_dir.path().display()
    );
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    common::wait_for("the slot to be consistent", Duration::from_secs(60), || async {
        a.query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn IS NOT NULL",
            &[&slot],
        )
        .await
        .unwrap()
        .is_some()
    })
    .await;
    a.batch_execute(
        "INSERT INTO zoo (id) VALUES (1);
         INSERT INTO zoo VALUES (2, false, -32768, -9223372036854775808, '-Infinity', 'NaN', 'NaN',
             '', '', '', '', '', '{}', '[]', '00000000-0000-0000-0000-000000000000',
             '-infinity', '00:00:00', '-infinity', '-infinity', '-178000000 years', 1, 'lead',
             '{}', '{}', '{}', '{}', ROW('', NULL), '0.0.0.0', '0.0.0.0/0', '00:00:00:00:00:00',
             '00:00:00:00:00:00:00:00', '-92233720368547758.08', 'empty', '(,)',
             '00:00:00+15:59', B'0000', B'', '(0,0)', '');
         INSERT INTO zoo VALUES (3, true, 32767, 9223372036854775807, 'Infinity', '1.7976931348623157e308',
             '99999999999999999999999.000001', 'héllo 🎉 ✓ 日本', repeat('ü😀', 10), 'ñé', 'MiXeD',
             '\\x00ff27', '{\"a\": [1, \"é\"]}', '{\"emoji\": \"🎉\"}',
             'ffffffff-ffff-ffff-ffff-ffffffffffff', '262000-12-31',
             '24:00:00', '262000-01-01 00:00:00.000001', 'infinity',
             '1 year 2 mons -3 days 04:05:06.000007', 2147483647, 'won',
             '{1,2,NULL}', '{\"a b\",c,\"NULL\",\"\",\"q\\\"uote\"}', '{{1,2},{3,NULL}}',
             '{x,y}', ROW('Straße 5, \"Hof\"', 12345), '2001:db8::ff00:42:8329/64', '10.0.0.0/8',
             '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', '92233720368547758.07', '[1,5)',
             '[2024-01-01 00:00:00+00,infinity)', '13:14:15.5+05:30', B'1111', B'101',
             '(-1.5,2e+100)', 'a fat:2 cat');",
    )
    .await
    .unwrap();
    // a large transaction: the COPY path; then small ones: unnest
    a.batch_execute(
        "INSERT INTO zoo (id, ip, ia, r, st, comp, tg, mon)
             SELECT g, ('10.1.' || (g / 256) || '.' || (g % 256))::inet, ARRAY[g, -g],
                 int4range(g, g + 10), 'won', ROW('s' || g, g)::address, ARRAY['t' || g], g::numeric::money
             FROM generate_series(100, 5600) g",
    )
    .await
    .unwrap();
    a.batch_execute(
        "UPDATE zoo SET ia = '{7}', ip = '::1', comp = ROW('upd', 1)::address WHERE id % 97 = 0;
         DELETE FROM zoo WHERE id % 89 = 0;
         INSERT INTO hosts VALUES ('10.0.0.1', 'one'), ('10.0.0.2', 'two'), ('::1', 'v6');
         UPDATE hosts SET addr = '10.0.0.3' WHERE addr = '10.0.0.2';
         DELETE FROM hosts WHERE addr = '::1';",
    )
    .await
    .unwrap();
    let select = "SELECT z::text FROM zoo z ORDER BY id";
    let hosts = "SELECT h::text FROM hosts h ORDER BY addr";
    let expected = common::pg_rows(&a, select).await;
    let expected_hosts = common::pg_rows(&a, hosts).await;
    assert_eq!(
        expected.len(),
        3 + 5501 - 61,
        "ids 100..=5600 less the multiples of 89"
    );
    common::wait_for("b to equal a", Duration::from_secs(90), || async {
        common::pg_rows(&b, select).await == expected
            && common::pg_rows(&b, hosts).await == expected_hosts
    })
    .await;
    agent.stop().await;
}

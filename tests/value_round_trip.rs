//! Random values of every type a source decodes travel decode → change log
//! (`log::codec`) → sink encoding, and come out as the source's own text
//! form. The servers are the oracle: PostgreSQL renders each random value's
//! canonical text (what pgoutput would send) and reads back the sink's
//! binary encoding; MariaDB reads back the sink's literal next to the
//! value's text form in a column of the same type.
//!
//! Each type's values go through one query per step (arrays, multi-row
//! inserts), so thousands of values take a few seconds. The random seed is
//! printed; set `CALLOSUM_SEED` to replay a failure.

mod common;

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use callosum::log::codec;
use callosum::testkit::{MariaDbServer, PgServer};
use callosum_api::{ChangeEvent, ColumnSchema, RowChange, TableId, TableSchema, Value};
use callosum_postgres::sink_convert::{self, PgType};
use callosum_postgres::text_value;
use mysql_async::prelude::Queryable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::types::{to_sql_checked, IsNull, Kind, ToSql, Type};

/// Values per type.
const N: usize = 2000;

fn rng() -> StdRng {
    let seed = std::env::var("CALLOSUM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("CALLOSUM_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// The values through the change log's record-batch encoding, as the apply
/// side reads them back.
fn through_the_log(source_type: &str, values: Vec<Value>) -> Vec<Value> {
    let schema = Arc::new(TableSchema {
        table: TableId::new("public", "t"),
        columns: vec![ColumnSchema {
            name: "c".into(),
            source_type: source_type.into(),
            is_key: false,
        }],
    });
    let events: Vec<ChangeEvent> = values
        .into_iter()
        .map(|v| ChangeEvent {
            schema: schema.clone(),
            change: RowChange::Insert { row: vec![v] },
        })
        .collect();
    let bytes = codec::encode_batch(&events).unwrap();
    let decoded = codec::decode_batch(&bytes).unwrap();
    assert_eq!(
        format!("{decoded:?}"),
        format!("{events:?}"),
        "the log changed a {source_type} value"
    );
    decoded
        .into_iter()
        .map(|e| match e.change {
            RowChange::Insert { mut row } => row.remove(0),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// PostgreSQL

/// A parameter already in binary form, of whatever type the statement says.
#[derive(Debug)]
struct Raw(Vec<u8>);

impl ToSql for Raw {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A one-dimensional binary array of `elements` (each already encoded).
fn binary_array(element_oid: u32, elements: &[Vec<u8>]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_i32(1); // dimensions
    out.put_i32(0); // no NULLs
    out.put_u32(element_oid);
    out.put_i32(elements.len() as i32);
    out.put_i32(1); // lower bound
    for e in elements {
        out.put_i32(e.len() as i32);
        out.put_slice(e);
    }
    out.to_vec()
}

fn digits(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

fn random_text(rng: &mut StdRng, max: usize) -> String {
    let len = rng.gen_range(0..=max);
    (0..len)
        .map(|_| match rng.gen_range(0..4) {
            0 => char::from(rng.gen_range(b' '..=b'~')),
            1 => rng.gen_range('\u{1}'..='\u{7ff}'),
            2 => rng.gen_range('\u{800}'..='\u{d7ff}'),
            _ => rng.gen_range('\u{10000}'..='\u{10ffff}'),
        })
        .collect()
}

/// `YYYY-MM-DD[ BC]` for any day PostgreSQL and chrono both hold.
fn random_pg_date(rng: &mut StdRng) -> (String, bool) {
    // 4713-11-24 BC .. 262142-12-31 (chrono's limit; later dates are
    // carried as undecodable, see TYPES.md).
    // A third each: BC, this era's usual years, anything.
    let (min, max) = match rng.gen_range(0..3) {
        0 => ((-4713, 11, 24), (0, 12, 31)),
        1 => ((1, 1, 1), (9999, 12, 31)),
        _ => ((-4713, 11, 24), (262_142, 12, 31)),
    };
    let day = |(y, m, d)| chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap();
    let (min, max) = (day(min), day(max));
    let span = (max - min).num_days();
    let d = min + chrono::Duration::days(rng.gen_range(0..=span));
    use chrono::Datelike;
    if d.year() <= 0 {
        (
            format!("{:04}-{:02}-{:02}", 1 - d.year(), d.month(), d.day()),
            true,
        )
    } else {
        (
            format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day()),
            false,
        )
    }
}

fn random_pg_time(rng: &mut StdRng) -> String {
    let micros = rng.gen_range(0..86_400_000_000i64);
    let frac_digits = rng.gen_range(0..=6);
    let frac = micros % 1_000_000;
    let secs = micros / 1_000_000;
    let mut s = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac_digits > 0 {
        let f = format!("{frac:06}");
        s.push('.');
        s.push_str(&f[..frac_digits]);
    }
    s
}

fn random_timestamp(rng: &mut StdRng, zone: bool) -> String {
    if rng.gen_ratio(1, 50) {
        return if rng.gen() { "infinity" } else { "-infinity" }.into();
    }
    let (date, bc) = random_pg_date(rng);
    let mut s = format!("{date} {}", random_pg_time(rng));
    if zone {
        let offset = rng.gen_range(-15 * 60..=15 * 60i32);
        let sign = if offset < 0 { '-' } else { '+' };
        s.push_str(&format!(
            "{sign}{:02}:{:02}",
            offset.abs() / 60,
            offset.abs() % 60
        ));
    }
    if bc {
        s.push_str(" BC");
    }
    s
}

fn random_json(rng: &mut StdRng, depth: u32) -> serde_json::Value {
    use serde_json::Value as J;
    match rng.gen_range(0..if depth > 2 { 5 } else { 7 }) {
        0 => J::Null,
        1 => J::Bool(rng.gen()),
        2 => J::from(rng.gen::<i64>()),
        3 => J::from(rng.gen::<f64>() * 1e6),
        4 => J::String(random_text(rng, 10).replace('\0', "")),
        5 => J::Array(
            (0..rng.gen_range(0..4))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
        _ => J::Object(
            (0..rng.gen_range(0..4))
                .map(|_| (random_text(rng, 6), random_json(rng, depth + 1)))
                .collect(),
        ),
    }
}

/// Random input texts of one PostgreSQL type (any form the server reads).
fn random_pg_input(rng: &mut StdRng, ty: &str) -> String {
    match ty {
        "int2" => rng.gen::<i16>().to_string(),
        "int4" => rng.gen::<i32>().to_string(),
        "int8" => rng.gen::<i64>().to_string(),
        "numeric" => match rng.gen_range(0..40) {
            0 => "NaN".into(),
            1 => "Infinity".into(),
            2 => "-Infinity".into(),
            _ => {
                let sign = if rng.gen() { "-" } else { "" };
                let int_len = rng.gen_range(1..40);
                let int = digits(rng, int_len);
                let frac_len = rng.gen_range(0..30);
                let frac = digits(rng, frac_len);
                if frac.is_empty() {
                    format!("{sign}{int}")
                } else {
                    format!("{sign}{int}.{frac}")
                }
            }
        },
        "float4" => match rng.gen_range(0..40) {
            0 => "NaN".into(),
            1 => "Infinity".into(),
            2 => "-Infinity".into(),
            _ => loop {
                let f = f32::from_bits(rng.gen());
                if f.is_finite() {
                    break format!("{f:e}");
                }
            },
        },
        "float8" => match rng.gen_range(0..40) {
            0 => "NaN".into(),
            1 => "Infinity".into(),
            2 => "-Infinity".into(),
            _ => loop {
                let f = f64::from_bits(rng.gen());
                if f.is_finite() {
                    break format!("{f:e}");
                }
            },
        },
        "bool" => if rng.gen() { "t" } else { "f" }.into(),
        "text" | "varchar" | "bpchar" | "varchar(40)" => random_text(rng, 40),
        "bytea" => {
            let n = rng.gen_range(0..64);
            let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            let mut s = String::from("\\x");
            for b in bytes {
                s.push_str(&format!("{b:02x}"));
            }
            s
        }
        "date" => {
            if rng.gen_ratio(1, 50) {
                return if rng.gen() { "infinity" } else { "-infinity" }.into();
            }
            let (d, bc) = random_pg_date(rng);
            if bc {
                format!("{d} BC")
            } else {
                d
            }
        }
        "timestamp" => random_timestamp(rng, false),
        "timestamptz" => random_timestamp(rng, true),
        "time" => {
            if rng.gen_ratio(1, 50) {
                "24:00:00".into()
            } else {
                random_pg_time(rng)
            }
        }
        "timetz" => {
            let offset = rng.gen_range(-15 * 60..=15 * 60i32);
            let sign = if offset < 0 { '-' } else { '+' };
            format!(
                "{}{sign}{:02}:{:02}",
                random_pg_time(rng),
                offset.abs() / 60,
                offset.abs() % 60
            )
        }
        "interval" => {
            let months: i32 = rng.gen_range(-200_000..200_000);
            let days: i32 = rng.gen_range(-100_000..100_000);
            let micros: i64 = rng.gen_range(-1_000_000_000_000_000..1_000_000_000_000_000);
            format!("{months} months {days} days {micros} microseconds")
        }
        "uuid" => {
            let u = uuid::Uuid::from_bytes(rng.gen());
            if rng.gen() {
                u.to_string().to_uppercase()
            } else {
                u.to_string()
            }
        }
        "json" | "jsonb" => {
            let doc = random_json(rng, 0);
            if rng.gen() {
                serde_json::to_string_pretty(&doc).unwrap()
            } else {
                doc.to_string()
            }
        }
        "inet" => format!(
            "{}.{}.{}.{}/{}",
            rng.gen::<u8>(),
            rng.gen::<u8>(),
            rng.gen::<u8>(),
            rng.gen::<u8>(),
            rng.gen_range(0..=32)
        ),
        "macaddr" => (0..6)
            .map(|_| format!("{:02x}", rng.gen::<u8>()))
            .collect::<Vec<_>>()
            .join(":"),
        "int4range" => {
            let a = rng.gen_range(-1000..1000);
            format!("[{a},{})", a + rng.gen_range(0..1000))
        }
        "text[]" => format!(
            "{{{}}}",
            (0..rng.gen_range(0..4))
                .map(|_| {
                    let t = random_text(rng, 6);
                    format!("\"{}\"", t.replace('\\', "\\\\").replace('"', "\\\""))
                })
                .collect::<Vec<_>>()
                .join(",")
        ),
        "money" => format!(
            "{}.{:02}",
            rng.gen_range(-1_000_000..1_000_000),
            rng.gen_range(0..100)
        ),
        "bit(12)" => (0..12).map(|_| if rng.gen() { '1' } else { '0' }).collect(),
        other => panic!("no generator for {other}"),
    }
}

/// The PostgreSQL types of the test: (type as written in SQL, `typname` of
/// the same-type target column, `atttypmod`). A target of `None` means
/// the value is carried as text and written into a text column (TYPES.md:
/// a target column of a type Callosum does not encode is refused).
const PG_TYPES: &[(&str, Option<(&str, i32)>)] = &[
    ("int2", Some(("int2", -1))),
    ("int4", Some(("int4", -1))),
    ("int8", Some(("int8", -1))),
    ("numeric", Some(("numeric", -1))),
    ("float4", Some(("float4", -1))),
    ("float8", Some(("float8", -1))),
    ("bool", Some(("bool", -1))),
    ("text", Some(("text", -1))),
    ("varchar", Some(("varchar", -1))),
    ("varchar(40)", Some(("varchar", 44))),
    ("bpchar", Some(("bpchar", -1))),
    ("bytea", Some(("bytea", -1))),
    ("date", Some(("date", -1))),
    ("timestamp", Some(("timestamp", -1))),
    ("timestamptz", Some(("timestamptz", -1))),
    ("time", Some(("time", -1))),
    ("interval", Some(("interval", -1))),
    ("uuid", Some(("uuid", -1))),
    ("json", Some(("json", -1))),
    ("jsonb", Some(("jsonb", -1))),
    ("timetz", None),
    ("inet", None),
    ("macaddr", None),
    ("int4range", None),
    ("text[]", None),
    ("money", None),
    ("bit(12)", None),
];

#[tokio::test(flavor = "multi_thread")]
async fn postgres_values_come_out_of_the_pg_sink_as_the_source_text() {
    let url = PgServer::shared().fresh_database("vrt").await.unwrap();
    let pg = common::pg_client(&url).await;
    // The replication session's settings (TYPES.md).
    pg.batch_execute(
        "SET TimeZone = 'UTC'; SET DateStyle = ISO; SET IntervalStyle = iso_8601; \
         SET bytea_output = hex; SET extra_float_digits = 3",
    )
    .await
    .unwrap();
    let mut rng = rng();
    for (ty, target) in PG_TYPES {
        let inputs: Vec<String> = (0..N).map(|_| random_pg_input(&mut rng, ty)).collect();
        // What pgoutput sends: the type's output function, in order.
        let rows = pg
            .query(
                &format!(
                    "SELECT x::{ty}::text, pg_typeof(x::{ty})::regtype::oid, \
                     (SELECT typname FROM pg_type WHERE oid = pg_typeof(x::{ty})) \
                     FROM unnest($1::text[]) WITH ORDINALITY AS u(x, n) ORDER BY n"
                ),
                &[&inputs],
            )
            .await
            .unwrap_or_else(|e| panic!("{ty}: {e}"));
        let source_texts: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let type_oid: u32 = rows[0].get(1);
        let typname: String = rows[0].get(2);
        let decoded: Vec<Value> = source_texts
            .iter()
            .map(|t| text_value::decode(type_oid, &typname, t.clone().into_bytes()))
            .collect();
        let applied = through_the_log(&typname, decoded);
        let (target_sql, pg_type) = match target {
            Some((name, typmod)) => (ty.to_string(), PgType::from_catalog(name, "b", *typmod)),
            None => ("text".to_string(), PgType::Text),
        };
        let mut encoded = Vec::with_capacity(N);
        for (value, text) in applied.iter().zip(&source_texts) {
            let mut out = BytesMut::new();
            match sink_convert::encode(value, &pg_type, &typname, &mut out) {
                Ok(true) => encoded.push(out.to_vec()),
                other => panic!("{ty}: {text:?} decoded as {value:?} encodes as {other:?}"),
            }
        }
        let statement = pg
            .prepare(&format!(
                "SELECT x::text FROM unnest($1::{target_sql}[]) WITH ORDINALITY AS u(x, n) \
                 ORDER BY n"
            ))
            .await
            .unwrap();
        let Kind::Array(element) = statement.params()[0].kind() else {
            panic!("{ty}: not an array parameter");
        };
        let array = Raw(binary_array(element.oid(), &encoded));
        let rows = pg
            .query(&statement, &[&array])
            .await
            .unwrap_or_else(|e| panic!("{ty}: the server refused the sink's encoding: {e}"));
        let mut mismatches = 0;
        for ((row, text), value) in rows.iter().zip(&source_texts).zip(&applied) {
            let written: String = row.get(0);
            if &written != text {
                mismatches += 1;
                if mismatches <= 5 {
                    eprintln!("{ty}: source {text:?} -> {value:?} -> target {written:?}");
                }
            }
        }
        assert_eq!(rows.len(), N, "{ty}");
        assert_eq!(mismatches, 0, "{ty}: {mismatches} of {N} values changed");
    }
}

// ---------------------------------------------------------------------------
// MariaDB

use callosum_mysql::convert::{write_literal, TargetType};
use callosum_mysql::row_value::{decode_image_with, ColumnDef};
use callosum_mysql::ZeroDates;
use mysql_async::consts::ColumnType as CT;

/// One random value of a MariaDB column: its binlog row-image bytes and the
/// SQL literal of the same value as MariaDB reads it (the oracle's side).
struct MyValue {
    image: Vec<u8>,
    literal: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// A string literal of `bytes` in character set `charset`, read by the
/// server itself (`_latin1 X'E9'`).
fn charset_literal(charset: &str, bytes: &[u8]) -> String {
    format!("_{charset} X'{}'", hex(bytes))
}

fn length_prefixed(prefix: usize, bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u64).to_le_bytes()[..prefix].to_vec();
    out.extend_from_slice(bytes);
    out
}

const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];

/// MySQL's binary DECIMAL(precision, scale) of `±int.frac` (digit strings,
/// `int` at most precision − scale digits, `frac` exactly scale digits).
fn binary_decimal(
    negative: bool,
    int: &str,
    frac: &str,
    precision: usize,
    scale: usize,
) -> Vec<u8> {
    let intg = precision - scale;
    let int = format!("{int:0>intg$}");
    let mut out = Vec::new();
    let mut put = |digits: &str, n: usize| {
        let v: u64 = if digits.is_empty() {
            0
        } else {
            digits.parse().unwrap()
        };
        out.extend_from_slice(&v.to_be_bytes()[8 - n..]);
    };
    let lead = intg % 9;
    put(&int[..lead], DIG2BYTES[lead]);
    for g in 0..intg / 9 {
        put(&int[lead + 9 * g..lead + 9 * g + 9], 4);
    }
    for g in 0..scale / 9 {
        put(&frac[9 * g..9 * g + 9], 4);
    }
    let tail = scale % 9;
    put(&frac[scale - tail..], DIG2BYTES[tail]);
    if negative {
        for b in &mut out {
            *b = !*b;
        }
    }
    out[0] ^= 0x80;
    out
}

/// `[-]HHH:MM:SS.ffffff` of `micros`.
fn duration_text(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let a = micros.unsigned_abs();
    let s = a / 1_000_000;
    format!(
        "{sign}{:02}:{:02}:{:02}.{:06}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        a % 1_000_000
    )
}

const LABELS: [&str; 5] = ["lead", "won", "lost", "on hold", "O'Brien"];

/// The MariaDB columns of the test: DDL type, the table map's column and a
/// generator.
#[allow(clippy::type_complexity)]
fn mariadb_types() -> Vec<(&'static str, ColumnDef, fn(&mut StdRng) -> MyValue)> {
    fn def(ty: CT, meta: &[u8], unsigned: bool, charset: u16) -> ColumnDef {
        let mut c = ColumnDef::new("a", ty, meta);
        c.unsigned = unsigned;
        c.charset = charset;
        c
    }
    fn int<const N: usize, const UNSIGNED: bool>(rng: &mut StdRng) -> MyValue {
        let raw: u64 = rng.gen::<u64>() >> (64 - 8 * N);
        let text = if UNSIGNED {
            raw.to_string()
        } else {
            let shift = 64 - 8 * N as u32;
            (((raw << shift) as i64) >> shift).to_string()
        };
        MyValue {
            image: raw.to_le_bytes()[..N].to_vec(),
            literal: format!("'{text}'"),
        }
    }
    fn decimal(rng: &mut StdRng) -> MyValue {
        let negative = rng.gen();
        let int_len = rng.gen_range(0..=20);
        let int = digits(rng, int_len);
        let frac = digits(rng, 10);
        MyValue {
            image: binary_decimal(negative, &int, &frac, 30, 10),
            literal: format!(
                "'{}{}.{frac}'",
                if negative { "-" } else { "" },
                if int.is_empty() { "0" } else { &int }
            ),
        }
    }
    fn float(rng: &mut StdRng) -> MyValue {
        let f = loop {
            let f = f32::from_bits(rng.gen());
            if f.is_normal() || f == 0.0 {
                break f;
            }
        };
        MyValue {
            image: f.to_bits().to_le_bytes().to_vec(),
            literal: format!("'{f:e}'"),
        }
    }
    fn double(rng: &mut StdRng) -> MyValue {
        let f = loop {
            let f = f64::from_bits(rng.gen());
            if f.is_normal() || f == 0.0 {
                break f;
            }
        };
        MyValue {
            image: f.to_bits().to_le_bytes().to_vec(),
            literal: format!("'{f:e}'"),
        }
    }
    fn ymd(rng: &mut StdRng) -> (u32, u32, u32) {
        let d = chrono::NaiveDate::from_ymd_opt(1000, 1, 1).unwrap()
            + chrono::Duration::days(rng.gen_range(0..3_287_181));
        use chrono::Datelike;
        (d.year() as u32, d.month(), d.day())
    }
    fn date(rng: &mut StdRng) -> MyValue {
        if rng.gen_ratio(1, 20) {
            // A zero date: NULL with zero_dates = "null" (TYPES.md).
            return MyValue {
                image: vec![0, 0, 0],
                literal: "NULL".into(),
            };
        }
        let (y, m, d) = ymd(rng);
        let v = (y << 9) | (m << 5) | d;
        MyValue {
            image: v.to_le_bytes()[..3].to_vec(),
            literal: format!("'{y:04}-{m:02}-{d:02}'"),
        }
    }
    fn datetime(rng: &mut StdRng) -> MyValue {
        if rng.gen_ratio(1, 20) {
            let mut image = 0x80_0000_0000u64.to_be_bytes()[3..].to_vec();
            image.extend_from_slice(&[0, 0, 0]);
            return MyValue {
                image,
                literal: "NULL".into(),
            };
        }
        let (y, mo, d) = ymd(rng);
        let (h, mi, s) = (
            rng.gen_range(0..24u64),
            rng.gen_range(0..60u64),
            rng.gen_range(0..60u64),
        );
        let us: u32 = rng.gen_range(0..1_000_000);
        let ym = u64::from(y) * 13 + u64::from(mo);
        let int_part = (((ym << 5) | u64::from(d)) << 17) | (h << 12) | (mi << 6) | s;
        let mut image = (int_part + 0x80_0000_0000).to_be_bytes()[3..].to_vec();
        image.extend_from_slice(&us.to_be_bytes()[1..]);
        MyValue {
            image,
            literal: format!("'{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}'"),
        }
    }
    fn timestamp(rng: &mut StdRng) -> MyValue {
        if rng.gen_ratio(1, 20) {
            return MyValue {
                image: vec![0; 7],
                literal: "NULL".into(),
            };
        }
        let secs: u32 = rng.gen_range(1..=i32::MAX as u32);
        let us: u32 = rng.gen_range(0..1_000_000);
        let mut image = secs.to_be_bytes().to_vec();
        image.extend_from_slice(&us.to_be_bytes()[1..]);
        let t = chrono::DateTime::from_timestamp(i64::from(secs), us * 1000).unwrap();
        MyValue {
            image,
            literal: format!("'{}'", t.format("%Y-%m-%d %H:%M:%S%.6f")),
        }
    }
    fn time(rng: &mut StdRng) -> MyValue {
        const MAX: i64 = 838 * 3_600_000_000 + 59 * 60_000_000 + 59_999_999;
        let micros = match rng.gen_range(0..3) {
            0 => rng.gen_range(0..86_400_000_000),
            _ => rng.gen_range(-MAX..=MAX),
        };
        let a = micros.unsigned_abs() as i64;
        let s = a / 1_000_000;
        let hms = ((s / 3600) << 12) | ((s / 60 % 60) << 6) | (s % 60);
        let abs = (hms << 24) + a % 1_000_000;
        let packed = if micros < 0 { -abs } else { abs };
        MyValue {
            image: ((packed + 0x8000_0000_0000) as u64).to_be_bytes()[2..].to_vec(),
            literal: format!("'{}'", duration_text(micros)),
        }
    }
    fn year(rng: &mut StdRng) -> MyValue {
        let b: u8 = rng.gen_range(0..=255);
        MyValue {
            image: vec![b],
            literal: if b == 0 {
                "'0000'".into()
            } else {
                format!("'{}'", 1900 + u32::from(b))
            },
        }
    }
    fn bit(rng: &mut StdRng) -> MyValue {
        let v: u16 = rng.gen_range(0..1 << 12);
        MyValue {
            image: v.to_be_bytes().to_vec(),
            literal: format!("b'{v:b}'"),
        }
    }
    fn enumeration(rng: &mut StdRng) -> MyValue {
        let i = rng.gen_range(0..LABELS.len());
        MyValue {
            image: vec![i as u8 + 1],
            literal: format!("'{}'", LABELS[i].replace('\'', "''")),
        }
    }
    fn set(rng: &mut StdRng) -> MyValue {
        let bits: u8 = rng.gen_range(0..1 << LABELS.len());
        let members: Vec<String> = (0..LABELS.len())
            .filter(|i| bits & (1 << i) != 0)
            .map(|i| LABELS[i].replace('\'', "''"))
            .collect();
        MyValue {
            image: vec![bits],
            literal: format!("'{}'", members.join(",")),
        }
    }
    fn utf8mb4(rng: &mut StdRng) -> MyValue {
        let s = random_text(rng, 40);
        MyValue {
            image: length_prefixed(1, s.as_bytes()),
            literal: charset_literal("utf8mb4", s.as_bytes()),
        }
    }
    fn latin1(rng: &mut StdRng) -> MyValue {
        let n = rng.gen_range(0..=40);
        let bytes: Vec<u8> = (0..n).map(|_| rng.gen_range(1..=255)).collect();
        MyValue {
            image: length_prefixed(1, &bytes),
            literal: charset_literal("latin1", &bytes),
        }
    }
    fn ucs2(rng: &mut StdRng) -> MyValue {
        let n = rng.gen_range(0..=40);
        let bytes: Vec<u8> = (0..n)
            .flat_map(|_| {
                let c = loop {
                    let c: u16 = rng.gen_range(1..=0xfffd);
                    if !(0xd800..0xe000).contains(&c) {
                        break c;
                    }
                };
                c.to_be_bytes()
            })
            .collect();
        MyValue {
            image: length_prefixed(1, &bytes),
            literal: charset_literal("ucs2", &bytes),
        }
    }
    fn text(rng: &mut StdRng) -> MyValue {
        let s = random_text(rng, 200);
        MyValue {
            image: length_prefixed(2, s.as_bytes()),
            literal: charset_literal("utf8mb4", s.as_bytes()),
        }
    }
    fn char_column(rng: &mut StdRng) -> MyValue {
        // char(10) utf8mb4: the binlog drops trailing spaces, as does the
        // column.
        let s: String = random_text(rng, 10).trim_end_matches(' ').to_string();
        MyValue {
            image: length_prefixed(1, s.as_bytes()),
            literal: charset_literal("utf8mb4", s.as_bytes()),
        }
    }
    fn blob(rng: &mut StdRng) -> MyValue {
        let n = rng.gen_range(0..300);
        let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        MyValue {
            image: length_prefixed(2, &bytes),
            literal: format!("X'{}'", hex(&bytes)),
        }
    }
    fn json(rng: &mut StdRng) -> MyValue {
        let s = random_json(rng, 0).to_string();
        MyValue {
            image: length_prefixed(4, s.as_bytes()),
            literal: charset_literal("utf8mb4", s.as_bytes()),
        }
    }
    let labels = |mut c: ColumnDef| {
        c.labels = LABELS.iter().map(|l| l.to_string()).collect();
        c
    };
    let mut json_def = def(CT::MYSQL_TYPE_BLOB, &[4], false, 45);
    json_def.json = true;
    vec![
        (
            "tinyint",
            def(CT::MYSQL_TYPE_TINY, &[], false, 0),
            int::<1, false>,
        ),
        (
            "tinyint unsigned",
            def(CT::MYSQL_TYPE_TINY, &[], true, 0),
            int::<1, true>,
        ),
        (
            "smallint",
            def(CT::MYSQL_TYPE_SHORT, &[], false, 0),
            int::<2, false>,
        ),
        (
            "smallint unsigned",
            def(CT::MYSQL_TYPE_SHORT, &[], true, 0),
            int::<2, true>,
        ),
        (
            "mediumint",
            def(CT::MYSQL_TYPE_INT24, &[], false, 0),
            int::<3, false>,
        ),
        (
            "mediumint unsigned",
            def(CT::MYSQL_TYPE_INT24, &[], true, 0),
            int::<3, true>,
        ),
        (
            "int",
            def(CT::MYSQL_TYPE_LONG, &[], false, 0),
            int::<4, false>,
        ),
        (
            "int unsigned",
            def(CT::MYSQL_TYPE_LONG, &[], true, 0),
            int::<4, true>,
        ),
        (
            "bigint",
            def(CT::MYSQL_TYPE_LONGLONG, &[], false, 0),
            int::<8, false>,
        ),
        (
            "bigint unsigned",
            def(CT::MYSQL_TYPE_LONGLONG, &[], true, 0),
            int::<8, true>,
        ),
        (
            "decimal(30,10)",
            def(CT::MYSQL_TYPE_NEWDECIMAL, &[30, 10], false, 0),
            decimal,
        ),
        ("float", def(CT::MYSQL_TYPE_FLOAT, &[4], false, 0), float),
        ("double", def(CT::MYSQL_TYPE_DOUBLE, &[8], false, 0), double),
        ("date", def(CT::MYSQL_TYPE_DATE, &[], false, 0), date),
        (
            "datetime(6)",
            def(CT::MYSQL_TYPE_DATETIME2, &[6], false, 0),
            datetime,
        ),
        (
            "timestamp(6) NULL",
            def(CT::MYSQL_TYPE_TIMESTAMP2, &[6], false, 0),
            timestamp,
        ),
        ("time(6)", def(CT::MYSQL_TYPE_TIME2, &[6], false, 0), time),
        ("year", def(CT::MYSQL_TYPE_YEAR, &[], false, 0), year),
        ("bit(12)", def(CT::MYSQL_TYPE_BIT, &[4, 1], false, 0), bit),
        (
            "enum('lead','won','lost','on hold','O''Brien')",
            labels(def(CT::MYSQL_TYPE_ENUM, &[0xf7, 1], false, 0)),
            enumeration,
        ),
        (
            "set('lead','won','lost','on hold','O''Brien')",
            labels(def(CT::MYSQL_TYPE_SET, &[0xf8, 1], false, 0)),
            set,
        ),
        (
            "varchar(40) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
            def(CT::MYSQL_TYPE_VARCHAR, &[160, 0], false, 46),
            utf8mb4,
        ),
        (
            "char(10) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
            def(CT::MYSQL_TYPE_STRING, &[0xfe, 40], false, 46),
            char_column,
        ),
        (
            "varchar(40) CHARACTER SET latin1 COLLATE latin1_bin",
            def(CT::MYSQL_TYPE_VARCHAR, &[40, 0], false, 47),
            latin1,
        ),
        (
            "varchar(40) CHARACTER SET ucs2 COLLATE ucs2_bin",
            def(CT::MYSQL_TYPE_VARCHAR, &[80, 0], false, 90),
            ucs2,
        ),
        (
            "text CHARACTER SET utf8mb4",
            def(CT::MYSQL_TYPE_BLOB, &[2], false, 45),
            text,
        ),
        ("blob", def(CT::MYSQL_TYPE_BLOB, &[2], false, 63), blob),
        ("json", json_def, json),
    ]
}

/// `DATA_TYPE`, `COLUMN_TYPE` and the four lengths the sink reads.
type CatalogRow = (
    String,
    String,
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<u64>,
);

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_values_come_out_of_the_mariadb_sink_as_the_source_value() {
    let url = MariaDbServer::shared().fresh_database("vrt").await.unwrap();
    let pool = mysql_async::Pool::new(url.as_str());
    let mut conn = pool.get_conn().await.unwrap();
    // The sink's session (time_zone UTC, its sql_mode).
    conn.query_drop(format!(
        "SET NAMES utf8mb4, time_zone = '+00:00', sql_mode = '{}'",
        callosum_mysql::SQL_MODE
    ))
    .await
    .unwrap();
    let mut rng = rng();
    for (i, (ddl, column, generate)) in mariadb_types().into_iter().enumerate() {
        let table = format!("t{i}");
        conn.query_drop(format!(
            "CREATE TABLE {table} (n int PRIMARY KEY, a {ddl}, b {ddl})"
        ))
        .await
        .unwrap_or_else(|e| panic!("{ddl}: {e}"));
        let catalog: Vec<CatalogRow> = conn
            .exec(
                "SELECT DATA_TYPE, COLUMN_TYPE, CHARACTER_MAXIMUM_LENGTH, NUMERIC_PRECISION, \
                 NUMERIC_SCALE, DATETIME_PRECISION FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = 'a'",
                (&table,),
            )
            .await
            .unwrap();
        let (data_type, column_type, chars, precision, scale, fsp) = catalog[0].clone();
        let target =
            TargetType::from_catalog(&data_type, &column_type, chars, precision, scale, fsp);
        let values: Vec<MyValue> = (0..N).map(|_| generate(&mut rng)).collect();
        let decoded: Vec<Value> = values
            .iter()
            .map(|v| {
                let mut data = vec![0u8]; // null bitmap
                data.extend_from_slice(&v.image);
                let (mut row, rest) = decode_image_with(
                    std::slice::from_ref(&column),
                    &[true],
                    &data,
                    ZeroDates::Null,
                    &[],
                )
                .unwrap_or_else(|e| panic!("{ddl}: {} does not decode: {e:?}", v.literal));
                assert!(rest.is_empty(), "{ddl}: {} left bytes", v.literal);
                row.remove(0).unwrap()
            })
            .collect();
        let applied = through_the_log(&column.source_type(), decoded);
        let mut rows = Vec::with_capacity(N);
        for (n, (value, expected)) in applied.iter().zip(&values).enumerate() {
            let mut literal = String::new();
            write_literal(&mut literal, value, &target).unwrap_or_else(|e| {
                panic!(
                    "{ddl} ({target:?}): {} decoded as {value:?} is refused: {e}",
                    expected.literal
                )
            });
            rows.push(format!("({n}, {literal}, {})", expected.literal));
        }
        conn.query_drop(format!(
            "INSERT INTO {table} (n, a, b) VALUES {}",
            rows.join(", ")
        ))
        .await
        .unwrap_or_else(|e| panic!("{ddl}: {e}"));
        let mismatches: Vec<(i64, Option<String>, Option<String>)> = conn
            .query(format!(
                "SELECT n, HEX(a), HEX(b) FROM {table} \
                 WHERE NOT (a <=> b) OR NOT (BINARY a <=> BINARY b) ORDER BY n LIMIT 5"
            ))
            .await
            .unwrap();
        for (n, a, b) in &mismatches {
            eprintln!(
                "{ddl}: source {} -> {:?} -> written HEX {a:?}, expected HEX {b:?}",
                values[*n as usize].literal, applied[*n as usize]
            );
        }
        assert!(mismatches.is_empty(), "{ddl}: values changed");
    }
}

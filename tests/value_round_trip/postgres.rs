//! PostgreSQL values: random input rendered by the server, decoded as
//! pgoutput text, through the log, encoded by the PostgreSQL sink and read
//! back by the server.

use super::*;

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

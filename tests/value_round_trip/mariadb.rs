//! MariaDB values: row-image bytes built here, decoded, through the log,
//! written as the MariaDB sink's literal and compared by the server.

use super::*;

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

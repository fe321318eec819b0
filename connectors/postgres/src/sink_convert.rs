//! [`Value`] → the binary wire format of a PostgreSQL *target* column's type.
//!
//! The sink reads each target column's type from the catalog
//! ([`PgType::from_catalog`]) and encodes every value with [`encode`] into
//! the binary format PostgreSQL's `*_recv` functions read: the same bytes
//! serve as a bind parameter, an element of an array parameter and a field
//! of a binary `COPY`. Nothing is ever rendered into SQL text.
//!
//! Conversions (anything else is an error; [`Value::Null`] is NULL for every
//! type — a `NOT NULL` column then fails in the server as a constraint error):
//!
//! | value | target types |
//! |---|---|
//! | `Bool` | bool, int2/int4/int8 and numeric (0/1), text types |
//! | `Int` | int2/int4/int8 (range-checked), numeric (integer digits checked), float4/float8 (only when exact), bool (0/1, only from a MySQL `tinyint(1)`/`boolean` source column), text types |
//! | `UInt` | as `Int` (int8 up to 2⁶³−1) |
//! | `Float` | float4 (range-checked), float8, numeric (NaN always; ±Infinity only unconstrained; digits checked), text types |
//! | `Decimal` | numeric (precision and scale checked; trailing fractional zeros are free), float4/float8, int2/int4/int8 (no fractional part), text types |
//! | `Text` | text, varchar(n), bpchar(n) (length in characters), enum (the server checks the label), uuid (parsed), json/jsonb (validated) |
//! | `Json` | json/jsonb (validated), text types |
//! | `Bytes` | bytea, uuid (exactly 16 bytes); never text types (refused, not written as `\x` hex) |
//! | `Date` | date, timestamp/timestamptz (midnight, UTC), text types |
//! | `Time` | time, text types |
//! | `Timestamp` | timestamp, timestamptz (read as UTC), date (midnight only), text types |
//! | `TimestampTz` | timestamptz, timestamp (its UTC wall-clock time), date (UTC midnight only), text types |
//! | `Uuid` | uuid, text types |
//! | `ZonedTimestamp` | timestamp (its local time), timestamptz (its instant), text types |
//! | `Interval` | interval, text types (ISO 8601) |
//! | any but `Bytes` | any other type ([`PgType::ViaText`]: `inet`, `citext`, arrays, ranges, domains over them, …): its text as for a text column, cast to the column's type by the statement |
//!
//! "Text types" are text, varchar(n) and bpchar(n): they take any scalar
//! rendered canonically ([`render_text`]): `true`/`false`, decimal digits,
//! the shortest round-tripping float (`NaN`, `Infinity`), ISO dates and
//! times (`2024-02-29 13:05:07.00012`, timestamptz with `+00`), UUIDs and
//! JSON as they are.
//!
//! Fractional seconds beyond the column's declared precision are an error,
//! not rounded; so are values outside PostgreSQL's range (dates before
//! 4714-11-24 BC) and text holding NUL characters. Errors are a static
//! [`Reason`]: they say why, never what the value was.

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};
use callosum_api::Value;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};

/// What a target column can hold, from `pg_attribute`/`pg_type` (domains
/// resolved to their base type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgType {
    Bool,
    Int2,
    Int4,
    Int8,
    /// `numeric(precision, scale)`, or unconstrained (`None`).
    Numeric {
        precision_scale: Option<(u32, u32)>,
    },
    Float4,
    Float8,
    Text,
    /// `varchar(n)`; `None`: unlimited.
    Varchar {
        max_chars: Option<u32>,
    },
    /// `char(n)` (blank-padded by the server).
    Bpchar {
        max_chars: Option<u32>,
    },
    Bytea,
    Date,
    /// Fractional-second precision 0..=6 (6 when not declared).
    Time {
        precision: u32,
    },
    Timestamp {
        precision: u32,
    },
    TimestampTz {
        precision: u32,
    },
    Uuid,
    Json,
    Jsonb,
    /// A user-defined enum: the label's text; the server checks membership.
    Enum,
    Interval,
    /// Any other type (`inet`, `cidr`, `macaddr`, `citext`, arrays, ranges,
    /// composites, …): the value is sent as text (rendered as for a text
    /// column) and the statement casts it (`$1::text::inet`), so the
    /// server's input function validates it; a value the type rejects fails
    /// the statement.
    ViaText,
}

impl PgType {
    /// The type from the base type's `typname`, its `typtype` (`e` for
    /// enums) and the column's `atttypmod` (`-1`: none).
    pub fn from_catalog(typname: &str, typtype: &str, typmod: i32) -> PgType {
        if typtype == "e" {
            return PgType::Enum;
        }
        let precision = || {
            if typmod < 0 {
                6
            } else {
                (typmod as u32).min(6)
            }
        };
        let chars = || {
            // varchar/bpchar typmod is the length plus the 4-byte header.
            (typmod >= 4).then(|| (typmod - 4) as u32)
        };
        match typname {
            "bool" => PgType::Bool,
            "int2" => PgType::Int2,
            "int4" => PgType::Int4,
            "int8" => PgType::Int8,
            "numeric" => PgType::Numeric {
                precision_scale: (typmod >= 4).then(|| {
                    let t = (typmod - 4) as u32;
                    // The scale is an 11-bit signed field since PG 15; a
                    // negative scale is treated as 0 digits after the point.
                    let scale = t & 0x7ff;
                    let scale = if scale & 0x400 != 0 { 0 } else { scale };
                    ((t >> 16) & 0xffff, scale)
                }),
            },
            "float4" => PgType::Float4,
            "float8" => PgType::Float8,
            "text" => PgType::Text,
            "varchar" => PgType::Varchar { max_chars: chars() },
            "bpchar" => PgType::Bpchar { max_chars: chars() },
            "bytea" => PgType::Bytea,
            "date" => PgType::Date,
            "time" => PgType::Time {
                precision: precision(),
            },
            "timestamp" => PgType::Timestamp {
                precision: precision(),
            },
            "timestamptz" => PgType::TimestampTz {
                precision: precision(),
            },
            "uuid" => PgType::Uuid,
            "json" => PgType::Json,
            "jsonb" => PgType::Jsonb,
            "interval" => PgType::Interval,
            _ => PgType::ViaText,
        }
    }

    fn is_text(&self) -> bool {
        matches!(
            self,
            PgType::Text | PgType::Varchar { .. } | PgType::Bpchar { .. }
        )
    }
}

/// Why a value cannot be written to its column. Static text: never the value.
pub type Reason = &'static str;

const NOT_CONVERTIBLE: Reason = "the source type cannot be converted to the target type";
const OUT_OF_RANGE: Reason = "out of range for the target type";
const TOO_LONG: Reason = "too long for the target column";
const NUL_IN_TEXT: Reason = "text holding a NUL character cannot be stored";
const BINARY_INTO_TEXT: Reason =
    "binary data cannot be written to a text column (make the target column bytea)";
const FRACTIONAL_SECONDS: Reason = "has fractional seconds beyond the target column's precision";

/// Microseconds from the Unix epoch to PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from 0001-01-01 (CE day 1) to 2000-01-01.
const PG_EPOCH_CE_DAYS: i32 = 730_120;

/// The earliest date PostgreSQL stores: 4714-11-24 BC (Julian day 0).
fn min_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(-4713, 11, 24).expect("valid date")
}

/// Whether a MySQL source column of this type is a boolean (`tinyint(1)`,
/// which MySQL also reports for `BOOLEAN`).
fn is_mysql_bool(source_type: &str) -> bool {
    let t = source_type.trim().to_ascii_lowercase();
    t.starts_with("tinyint(1)") || t == "bool" || t == "boolean"
}

/// Appends the binary encoding of `v` for a column of type `ty` to `out`.
/// Returns `Ok(false)` (and writes nothing) for NULL. `source_type` is the
/// source column's type name ([`callosum_api::ColumnSchema::source_type`]).
pub fn encode(
    v: &Value,
    ty: &PgType,
    source_type: &str,
    out: &mut BytesMut,
) -> Result<bool, Reason> {
    use PgType as T;
    match (v, ty) {
        (Value::Null, _) => return Ok(false),
        (Value::Unchanged, _) => return Err("an unchanged (unsent) value cannot be written"),
        (Value::Undecodable { .. }, _) => {
            return Err(
                "the source could not decode this value (an unsupported character set, \
                        bytes invalid in the column's character set, or malformed JSON)",
            )
        }
        (_, T::ViaText) => return encode(v, &T::Text, source_type, out),

        (Value::Bool(b), T::Bool) => out.put_u8(*b as u8),
        (Value::Bool(b), T::Int2 | T::Int4 | T::Int8 | T::Numeric { .. }) => {
            encode_integer(*b as i128, ty, out)?
        }

        (Value::Int(i), T::Bool) if is_mysql_bool(source_type) => match i {
            0 | 1 => out.put_u8(*i as u8),
            _ => return Err("only 0 and 1 convert to bool"),
        },
        (Value::UInt(u), T::Bool) if is_mysql_bool(source_type) => match u {
            0 | 1 => out.put_u8(*u as u8),
            _ => return Err("only 0 and 1 convert to bool"),
        },
        (Value::Int(i), _) if !ty.is_text() => encode_integer(*i as i128, ty, out)?,
        (Value::UInt(u), _) if !ty.is_text() => encode_integer(*u as i128, ty, out)?,

        (Value::Float(f), T::Float8) => out.put_f64(*f),
        (Value::Float(f), T::Float4) => {
            if f.is_finite() && f.abs() > f32::MAX as f64 {
                return Err(OUT_OF_RANGE);
            }
            out.put_f32(*f as f32)
        }
        (Value::Float(f), T::Numeric { precision_scale }) => {
            let text = if f.is_nan() {
                "NaN".to_string()
            } else if f.is_infinite() {
                if *f > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
            } else {
                format!("{f}")
            };
            encode_numeric(&text, *precision_scale, out)?
        }

        (Value::Decimal(d), T::Numeric { precision_scale }) => {
            encode_numeric(d, *precision_scale, out)?
        }
        (Value::Decimal(d), T::Float4 | T::Float8) => {
            let parsed = parse_decimal(d)?;
            let f: f64 = match parsed.special {
                Some(Special::NaN) => f64::NAN,
                Some(Special::Infinity) => f64::INFINITY,
                Some(Special::NegInfinity) => f64::NEG_INFINITY,
                None => d.parse().map_err(|_| "not a valid decimal")?,
            };
            if matches!(ty, T::Float4) {
                if f.is_finite() && f.abs() > f32::MAX as f64 {
                    return Err(OUT_OF_RANGE);
                }
                out.put_f32(f as f32)
            } else {
                out.put_f64(f)
            }
        }
        (Value::Decimal(d), T::Int2 | T::Int4 | T::Int8) => {
            let parsed = parse_decimal(d)?;
            if parsed.special.is_some() {
                return Err(OUT_OF_RANGE);
            }
            if parsed.frac.bytes().any(|c| c != b'0') {
                return Err("has a fractional part that an integer column cannot hold");
            }
            let mut n: i128 = 0;
            for c in parsed.int.bytes() {
                n = n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add((c - b'0') as i128))
                    .ok_or(OUT_OF_RANGE)?;
            }
            encode_integer(if parsed.negative { -n } else { n }, ty, out)?
        }

        (Value::Text(s), T::Enum) => put_text(s, out)?,
        (Value::Text(s) | Value::Uuid(s), T::Uuid) => out.put_slice(&parse_uuid(s)?),
        (Value::Bytes(b), T::Uuid) => {
            if b.len() != 16 {
                return Err("only 16 bytes convert to uuid");
            }
            out.put_slice(b)
        }
        (Value::Text(s) | Value::Json(s), T::Json) => {
            validate_json(s)?;
            out.put_slice(s.as_bytes())
        }
        (Value::Text(s) | Value::Json(s), T::Jsonb) => {
            validate_json(s)?;
            if s.contains("\\u0000") {
                return Err("jsonb cannot hold a \\u0000 escape");
            }
            out.put_u8(1);
            out.put_slice(s.as_bytes())
        }

        (Value::Bytes(b), T::Bytea) => out.put_slice(b),

        (Value::Date(d), T::Date) => put_date(d, out)?,
        (Value::Date(d), T::Timestamp { precision } | T::TimestampTz { precision }) => {
            put_timestamp(&d.and_time(NaiveTime::MIN), *precision, out)?
        }
        (Value::Time(t), T::Time { precision }) => {
            let micros = time_micros(t, *precision)?;
            out.put_i64(micros)
        }
        (Value::Timestamp(ts), T::Timestamp { precision } | T::TimestampTz { precision }) => {
            put_timestamp(ts, *precision, out)?
        }
        (Value::TimestampTz(ts), T::Timestamp { precision } | T::TimestampTz { precision }) => {
            put_timestamp(&ts.naive_utc(), *precision, out)?
        }
        (Value::Timestamp(ts), T::Date) => put_date_of(ts, out)?,
        // A MariaDB DATETIME in its store's time_zone: the local time into a
        // column without zone, the instant into a zoned one.
        (Value::ZonedTimestamp(ts), T::Timestamp { precision }) => {
            put_timestamp(&ts.naive_local(), *precision, out)?
        }
        (Value::ZonedTimestamp(ts), T::TimestampTz { precision }) => {
            put_timestamp(&ts.naive_utc(), *precision, out)?
        }
        // PostgreSQL's ±infinity: DATEVAL_NOBEGIN/NOEND and
        // DT_NOBEGIN/NOEND of the binary formats.
        (Value::Infinity { negative }, T::Date) => {
            out.put_i32(if *negative { i32::MIN } else { i32::MAX })
        }
        (Value::Infinity { negative }, T::Timestamp { .. } | T::TimestampTz { .. }) => {
            out.put_i64(if *negative { i64::MIN } else { i64::MAX })
        }
        // `time '24:00:00'` arrives as a 24 h duration; a time column holds
        // every duration from 00:00:00 to 24:00:00.
        (Value::Interval(i), T::Time { precision })
            if i.months == 0 && i.days == 0 && (0..=86_400_000_000).contains(&i.micros) =>
        {
            let unit = 10i64.pow(6 - (*precision).min(6));
            if i.micros % unit != 0 {
                return Err("has more fractional seconds than the target column's precision");
            }
            out.put_i64(i.micros)
        }
        (Value::Interval(i), T::Interval) => {
            out.put_i64(i.micros);
            out.put_i32(i.days);
            out.put_i32(i.months)
        }
        (Value::Bytes(_), T::Text | T::Varchar { .. } | T::Bpchar { .. }) => {
            return Err(BINARY_INTO_TEXT)
        }
        (Value::TimestampTz(ts), T::Date) => put_date_of(&ts.naive_utc(), out)?,

        (_, T::Text) => put_text(&render_text(v)?, out)?,
        (_, T::Varchar { max_chars }) => {
            let s = render_text(v)?;
            if let Some(max) = max_chars {
                if s.chars().count() > *max as usize {
                    return Err(TOO_LONG);
                }
            }
            put_text(&s, out)?
        }
        (_, T::Bpchar { max_chars }) => {
            let s = render_text(v)?;
            if let Some(max) = max_chars {
                // Like the server: characters beyond the length may only be
                // trailing spaces (which it drops).
                if s.chars().skip(*max as usize).any(|c| c != ' ') {
                    return Err(TOO_LONG);
                }
            }
            put_text(&s, out)?
        }

        _ => return Err(NOT_CONVERTIBLE),
    }
    Ok(true)
}

fn put_text(s: &str, out: &mut BytesMut) -> Result<(), Reason> {
    if s.as_bytes().contains(&0) {
        return Err(NUL_IN_TEXT);
    }
    out.put_slice(s.as_bytes());
    Ok(())
}

fn encode_integer(n: i128, ty: &PgType, out: &mut BytesMut) -> Result<(), Reason> {
    match ty {
        PgType::Int2 => out.put_i16(i16::try_from(n).map_err(|_| OUT_OF_RANGE)?),
        PgType::Int4 => out.put_i32(i32::try_from(n).map_err(|_| OUT_OF_RANGE)?),
        PgType::Int8 => out.put_i64(i64::try_from(n).map_err(|_| OUT_OF_RANGE)?),
        PgType::Float8 => {
            let f = n as f64;
            if f as i128 != n {
                return Err("cannot be represented exactly by the target float type");
            }
            out.put_f64(f)
        }
        PgType::Float4 => {
            let f = n as f32;
            if f as i128 != n {
                return Err("cannot be represented exactly by the target float type");
            }
            out.put_f32(f)
        }
        PgType::Numeric { precision_scale } => {
            encode_numeric(&n.to_string(), *precision_scale, out)?
        }
        _ => return Err(NOT_CONVERTIBLE),
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Special {
    NaN,
    Infinity,
    NegInfinity,
}

/// A decimal's parts: integer digits without leading zeros, fractional
/// digits as written.
#[derive(Debug)]
struct Decimal<'a> {
    negative: bool,
    int: &'a str,
    frac: &'a str,
    special: Option<Special>,
}

fn parse_decimal(text: &str) -> Result<Decimal<'_>, Reason> {
    const INVALID: Reason = "not a valid decimal";
    let special = match text {
        "NaN" | "nan" => Some(Special::NaN),
        "Infinity" | "infinity" | "+Infinity" | "inf" => Some(Special::Infinity),
        "-Infinity" | "-infinity" | "-inf" => Some(Special::NegInfinity),
        _ => None,
    };
    if special.is_some() {
        return Ok(Decimal {
            negative: special == Some(Special::NegInfinity),
            int: "",
            frac: "",
            special,
        });
    }
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
    {
        return Err(INVALID);
    }
    Ok(Decimal {
        negative,
        int: int.trim_start_matches('0'),
        frac,
        special: None,
    })
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// Encodes decimal text as PostgreSQL's binary numeric (base-10000 digits),
/// checking it against `numeric(precision, scale)` when constrained.
pub fn encode_numeric(
    text: &str,
    precision_scale: Option<(u32, u32)>,
    out: &mut BytesMut,
) -> Result<(), Reason> {
    let d = parse_decimal(text)?;
    if let Some(special) = d.special {
        let sign = match special {
            Special::NaN => NUMERIC_NAN,
            _ if precision_scale.is_some() => {
                return Err("infinity cannot be stored in a numeric column with a precision")
            }
            Special::Infinity => NUMERIC_PINF,
            Special::NegInfinity => NUMERIC_NINF,
        };
        out.put_i16(0);
        out.put_i16(0);
        out.put_u16(sign);
        out.put_u16(0);
        return Ok(());
    }
    let frac_significant = d.frac.trim_end_matches('0');
    if let Some((precision, scale)) = precision_scale {
        if frac_significant.len() > scale as usize {
            return Err("has more fractional digits than the target column's scale");
        }
        if d.int.len() > precision.saturating_sub(scale) as usize {
            return Err("has more integer digits than the target column's precision allows");
        }
    }
    // The server's limits for unconstrained numeric.
    if d.int.len() > 131_072 || d.frac.len() > 16_383 {
        return Err(OUT_OF_RANGE);
    }
    let dscale = match precision_scale {
        Some((_, scale)) => d.frac.len().min(scale as usize).max(frac_significant.len()),
        None => d.frac.len(),
    };
    // Base-10000 groups: the integer part padded on the left, the fraction
    // (its significant digits) on the right.
    let int_groups = d.int.len().div_ceil(4);
    let mut groups: Vec<i16> = Vec::with_capacity(int_groups + frac_significant.len() / 4 + 1);
    let pad = int_groups * 4 - d.int.len();
    let mut acc = 0i16;
    let mut n = pad;
    for c in d.int.bytes() {
        acc = acc * 10 + (c - b'0') as i16;
        n += 1;
        if n % 4 == 0 {
            groups.push(acc);
            acc = 0;
        }
    }
    let mut n = 0;
    for c in frac_significant.bytes() {
        acc = acc * 10 + (c - b'0') as i16;
        n += 1;
        if n % 4 == 0 {
            groups.push(acc);
            acc = 0;
        }
    }
    if n % 4 != 0 {
        for _ in n % 4..4 {
            acc *= 10;
        }
        groups.push(acc);
    }
    let mut weight = int_groups as i32 - 1;
    let leading = groups.iter().take_while(|g| **g == 0).count();
    weight -= leading as i32;
    let trailing = groups[leading..]
        .iter()
        .rev()
        .take_while(|g| **g == 0)
        .count();
    let digits = &groups[leading..groups.len() - trailing];
    if digits.len() > i16::MAX as usize || weight > i16::MAX as i32 || weight < i16::MIN as i32 {
        return Err(OUT_OF_RANGE);
    }
    let sign = if d.negative && !digits.is_empty() {
        NUMERIC_NEG
    } else {
        NUMERIC_POS
    };
    out.put_i16(digits.len() as i16);
    out.put_i16(if digits.is_empty() { 0 } else { weight as i16 });
    out.put_u16(sign);
    out.put_u16(dscale as u16);
    for g in digits {
        out.put_i16(*g);
    }
    Ok(())
}

fn put_date(d: &NaiveDate, out: &mut BytesMut) -> Result<(), Reason> {
    if *d < min_date() {
        return Err(OUT_OF_RANGE);
    }
    out.put_i32(d.num_days_from_ce() - PG_EPOCH_CE_DAYS);
    Ok(())
}

fn put_date_of(ts: &NaiveDateTime, out: &mut BytesMut) -> Result<(), Reason> {
    if ts.time() != NaiveTime::MIN {
        return Err("has a time of day that a date column cannot hold");
    }
    put_date(&ts.date(), out)
}

/// Microseconds of a time of day, checked against `precision`.
fn time_micros(t: &NaiveTime, precision: u32) -> Result<i64, Reason> {
    let nanos = t.nanosecond();
    if nanos >= 1_000_000_000 {
        return Err("leap seconds cannot be stored");
    }
    check_fraction(nanos, precision)?;
    Ok(t.num_seconds_from_midnight() as i64 * 1_000_000 + (nanos / 1000) as i64)
}

fn check_fraction(nanos: u32, precision: u32) -> Result<(), Reason> {
    let unit = 10u32.pow(9 - precision.min(6));
    // (`is_multiple_of` needs Rust 1.87; the workspace supports 1.85.)
    if nanos / unit * unit != nanos {
        return Err(FRACTIONAL_SECONDS);
    }
    Ok(())
}

fn put_timestamp(ts: &NaiveDateTime, precision: u32, out: &mut BytesMut) -> Result<(), Reason> {
    if ts.date() < min_date() {
        return Err(OUT_OF_RANGE);
    }
    let micros_of_day = time_micros(&ts.time(), precision)?;
    let days = (ts.date().num_days_from_ce() - PG_EPOCH_CE_DAYS) as i64;
    out.put_i64(days * 86_400_000_000 + micros_of_day);
    Ok(())
}

/// Microseconds since the Unix epoch → the binary timestamp (for tests).
pub fn pg_timestamp_micros(unix_micros: i64) -> i64 {
    unix_micros - PG_EPOCH_MICROS
}

fn parse_uuid(s: &str) -> Result<[u8; 16], Reason> {
    const INVALID: Reason = "not a valid uuid";
    let s = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(s);
    let bytes = s.as_bytes();
    let hex: Vec<u8> = match bytes.len() {
        32 => bytes.to_vec(),
        36 => {
            for (i, c) in bytes.iter().enumerate() {
                if matches!(i, 8 | 13 | 18 | 23) != (*c == b'-') {
                    return Err(INVALID);
                }
            }
            bytes.iter().copied().filter(|c| *c != b'-').collect()
        }
        _ => return Err(INVALID),
    };
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let hi = hex_digit(pair[0]).ok_or(INVALID)?;
        let lo = hex_digit(pair[1]).ok_or(INVALID)?;
        out[i] = hi << 4 | lo;
    }
    Ok(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn validate_json(s: &str) -> Result<(), Reason> {
    serde_json::from_str::<serde::de::IgnoredAny>(s)
        .map(|_| ())
        .map_err(|_| "not a valid JSON document")
}

/// The canonical text of a scalar, for text columns. `Cow::Borrowed` for
/// values that already are text.
pub fn render_text(v: &Value) -> Result<std::borrow::Cow<'_, str>, Reason> {
    use std::borrow::Cow;
    Ok(match v {
        Value::Null | Value::Unchanged => return Err(NOT_CONVERTIBLE),
        Value::Text(s) | Value::Decimal(s) | Value::Uuid(s) | Value::Json(s) => Cow::Borrowed(s),
        Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Value::Int(i) => Cow::Owned(i.to_string()),
        Value::UInt(u) => Cow::Owned(u.to_string()),
        Value::Float(f) => Cow::Owned(render_float(*f)),
        Value::Bytes(b) => {
            let mut s = String::with_capacity(2 + b.len() * 2);
            s.push_str("\\x");
            for byte in b {
                let _ = write!(s, "{byte:02x}");
            }
            Cow::Owned(s)
        }
        Value::Date(d) => Cow::Owned(render_date(d)),
        Value::Time(t) => Cow::Owned(render_time(t)),
        Value::Timestamp(ts) => Cow::Owned(render_timestamp(ts)),
        Value::TimestampTz(ts) => Cow::Owned(render_timestamptz(ts)),
        Value::Interval(i) => Cow::Owned(i.to_string()),
        Value::Infinity { negative } => {
            Cow::Borrowed(if *negative { "-infinity" } else { "infinity" })
        }
        Value::ZonedTimestamp(ts) => {
            Cow::Owned(ts.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        }
        Value::Undecodable { .. } => return Err(NOT_CONVERTIBLE),
    })
}

fn render_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{f}")
    }
}

fn render_date(d: &NaiveDate) -> String {
    if d.year() <= 0 {
        // ISO with PostgreSQL's era suffix: year 0 is 1 BC.
        format!("{:04}-{:02}-{:02} BC", 1 - d.year(), d.month(), d.day())
    } else {
        format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
    }
}

fn render_time(t: &NaiveTime) -> String {
    let mut s = format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second());
    let micros = t.nanosecond() / 1000;
    if micros > 0 {
        let frac = format!("{micros:06}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s
}

fn render_timestamp(ts: &NaiveDateTime) -> String {
    let date = render_date(&ts.date());
    match date.strip_suffix(" BC") {
        Some(d) => format!("{d} {} BC", render_time(&ts.time())),
        None => format!("{date} {}", render_time(&ts.time())),
    }
}

fn render_timestamptz(ts: &DateTime<Utc>) -> String {
    let naive = ts.naive_utc();
    let date = render_date(&naive.date());
    match date.strip_suffix(" BC") {
        Some(d) => format!("{d} {}+00 BC", render_time(&naive.time())),
        None => format!("{date} {}+00", render_time(&naive.time())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn enc(v: &Value, ty: &PgType) -> Result<Option<Vec<u8>>, Reason> {
        enc_from(v, ty, "test")
    }

    fn enc_from(v: &Value, ty: &PgType, source_type: &str) -> Result<Option<Vec<u8>>, Reason> {
        let mut out = BytesMut::new();
        Ok(encode(v, ty, source_type, &mut out)?.then(|| out.to_vec()))
    }

    fn ok(v: &Value, ty: &PgType) -> Vec<u8> {
        enc(v, ty).unwrap().unwrap()
    }

    fn numeric(p: u32, s: u32) -> PgType {
        PgType::Numeric {
            precision_scale: Some((p, s)),
        }
    }

    const ANY_NUMERIC: PgType = PgType::Numeric {
        precision_scale: None,
    };

    /// Decodes binary numeric to its text (as the server's numeric_out).
    fn numeric_text(b: &[u8]) -> String {
        let i16_at = |i: usize| i16::from_be_bytes([b[i], b[i + 1]]);
        let ndigits = i16_at(0) as usize;
        let weight = i16_at(2) as i32;
        let sign = u16::from_be_bytes([b[4], b[5]]);
        let dscale = u16::from_be_bytes([b[6], b[7]]) as usize;
        match sign {
            NUMERIC_NAN => return "NaN".into(),
            NUMERIC_PINF => return "Infinity".into(),
            NUMERIC_NINF => return "-Infinity".into(),
            _ => {}
        }
        let digits: Vec<i16> = (0..ndigits).map(|k| i16_at(8 + 2 * k)).collect();
        let mut int = String::new();
        for w in (0..=weight).rev() {
            let idx = (weight - w) as usize;
            let g = digits.get(idx).copied().unwrap_or(0);
            if int.is_empty() {
                if g != 0 {
                    int = g.to_string();
                }
            } else {
                int.push_str(&format!("{g:04}"));
            }
        }
        if int.is_empty() {
            int.push('0');
        }
        let mut frac = String::new();
        let mut k = 1;
        while frac.len() < dscale {
            let idx = weight + k;
            let g = if idx >= 0 {
                digits.get(idx as usize).copied().unwrap_or(0)
            } else {
                0
            };
            frac.push_str(&format!("{g:04}"));
            k += 1;
        }
        frac.truncate(dscale);
        let sign = if sign == NUMERIC_NEG { "-" } else { "" };
        if dscale > 0 {
            format!("{sign}{int}.{frac}")
        } else {
            format!("{sign}{int}")
        }
    }

    #[test]
    fn catalog_types() {
        assert_eq!(
            PgType::from_catalog("varchar", "b", 36),
            PgType::Varchar {
                max_chars: Some(32)
            }
        );
        assert_eq!(
            PgType::from_catalog("varchar", "b", -1),
            PgType::Varchar { max_chars: None }
        );
        assert_eq!(
            PgType::from_catalog("numeric", "b", ((12 << 16) | 2) + 4),
            numeric(12, 2)
        );
        assert_eq!(PgType::from_catalog("numeric", "b", -1), ANY_NUMERIC);
        assert_eq!(
            PgType::from_catalog("timestamp", "b", 3),
            PgType::Timestamp { precision: 3 }
        );
        assert_eq!(
            PgType::from_catalog("timestamptz", "b", -1),
            PgType::TimestampTz { precision: 6 }
        );
        assert_eq!(PgType::from_catalog("mood", "e", -1), PgType::Enum);
        assert_eq!(PgType::from_catalog("inet", "b", -1), PgType::ViaText);
    }

    #[test]
    fn bools() {
        assert_eq!(ok(&Value::Bool(true), &PgType::Bool), vec![1]);
        assert_eq!(ok(&Value::Bool(true), &PgType::Int4), vec![0, 0, 0, 1]);
        assert_eq!(numeric_text(&ok(&Value::Bool(false), &ANY_NUMERIC)), "0");
        assert_eq!(ok(&Value::Bool(false), &PgType::Text), b"false");
        assert!(enc(&Value::Bool(true), &PgType::Date).is_err());
        // MySQL tinyint(1) → bool.
        assert_eq!(
            enc_from(&Value::Int(1), &PgType::Bool, "tinyint(1)").unwrap(),
            Some(vec![1])
        );
        assert_eq!(
            enc_from(&Value::Int(0), &PgType::Bool, "tinyint(1)").unwrap(),
            Some(vec![0])
        );
        assert!(enc_from(&Value::Int(2), &PgType::Bool, "tinyint(1)").is_err());
        assert!(enc_from(&Value::Int(1), &PgType::Bool, "int8").is_err());
        assert!(enc_from(&Value::Int(1), &PgType::Bool, "tinyint(4)").is_err());
    }

    #[test]
    fn integers_are_range_checked() {
        assert_eq!(ok(&Value::Int(-2), &PgType::Int2), (-2i16).to_be_bytes());
        assert_eq!(
            ok(&Value::Int(70000), &PgType::Int4),
            70000i32.to_be_bytes()
        );
        assert_eq!(
            ok(&Value::Int(i64::MIN), &PgType::Int8),
            i64::MIN.to_be_bytes()
        );
        assert_eq!(enc(&Value::Int(40000), &PgType::Int2), Err(OUT_OF_RANGE));
        assert_eq!(enc(&Value::Int(1 << 31), &PgType::Int4), Err(OUT_OF_RANGE));
        assert_eq!(ok(&Value::UInt(200), &PgType::Int2), 200i16.to_be_bytes());
        assert_eq!(
            ok(&Value::UInt(i64::MAX as u64), &PgType::Int8),
            i64::MAX.to_be_bytes()
        );
        assert_eq!(
            enc(&Value::UInt(u64::MAX), &PgType::Int8),
            Err(OUT_OF_RANGE)
        );
        assert_eq!(
            numeric_text(&ok(&Value::UInt(u64::MAX), &numeric(20, 0))),
            "18446744073709551615"
        );
        assert!(enc(&Value::UInt(u64::MAX), &numeric(19, 0)).is_err());
        assert!(enc(&Value::Int(1000), &numeric(5, 2)).is_err());
        assert_eq!(numeric_text(&ok(&Value::Int(999), &numeric(5, 2))), "999");
        assert_eq!(ok(&Value::Int(3), &PgType::Float8), 3f64.to_be_bytes());
        assert_eq!(ok(&Value::Int(3), &PgType::Float4), 3f32.to_be_bytes());
        assert!(enc(&Value::Int((1 << 53) + 1), &PgType::Float8).is_err());
        assert!(enc(&Value::Int((1 << 24) + 1), &PgType::Float4).is_err());
        assert_eq!(ok(&Value::Int(-5), &PgType::Text), b"-5");
        assert_eq!(
            ok(&Value::UInt(5), &PgType::Varchar { max_chars: Some(1) }),
            b"5"
        );
        assert_eq!(
            enc(&Value::Int(-5), &PgType::Varchar { max_chars: Some(1) }),
            Err(TOO_LONG)
        );
        // MySQL year → int2.
        assert_eq!(ok(&Value::Int(2024), &PgType::Int2), 2024i16.to_be_bytes());
        assert!(enc(&Value::Int(1), &PgType::Date).is_err());
        assert!(enc(&Value::Int(1), &PgType::Bytea).is_err());
    }

    #[test]
    fn floats() {
        assert_eq!(
            ok(&Value::Float(0.25), &PgType::Float8),
            0.25f64.to_be_bytes()
        );
        assert_eq!(
            ok(&Value::Float(0.25), &PgType::Float4),
            0.25f32.to_be_bytes()
        );
        assert_eq!(
            enc(&Value::Float(1e300), &PgType::Float4),
            Err(OUT_OF_RANGE)
        );
        assert_eq!(
            ok(&Value::Float(f64::NAN), &PgType::Float8),
            f64::NAN.to_be_bytes()
        );
        assert_eq!(
            numeric_text(&ok(&Value::Float(-1.5), &numeric(4, 2))),
            "-1.5"
        );
        assert!(enc(&Value::Float(1.234), &numeric(4, 2)).is_err());
        assert_eq!(
            numeric_text(&ok(&Value::Float(f64::NAN), &numeric(4, 2))),
            "NaN"
        );
        assert!(enc(&Value::Float(f64::INFINITY), &numeric(4, 2)).is_err());
        assert_eq!(
            numeric_text(&ok(&Value::Float(f64::NEG_INFINITY), &ANY_NUMERIC)),
            "-Infinity"
        );
        assert_eq!(ok(&Value::Float(0.1), &PgType::Text), b"0.1");
        assert_eq!(ok(&Value::Float(f64::INFINITY), &PgType::Text), b"Infinity");
        assert!(enc(&Value::Float(1.0), &PgType::Int8).is_err());
    }

    #[test]
    fn decimals() {
        let d = |s: &str| Value::Decimal(s.into());
        assert_eq!(numeric_text(&ok(&d("-12.50"), &numeric(12, 2))), "-12.50");
        assert_eq!(numeric_text(&ok(&d("0.0001"), &ANY_NUMERIC)), "0.0001");
        assert_eq!(numeric_text(&ok(&d("12345.6"), &ANY_NUMERIC)), "12345.6");
        assert_eq!(numeric_text(&ok(&d("10000"), &ANY_NUMERIC)), "10000");
        assert_eq!(numeric_text(&ok(&d("-0.00"), &ANY_NUMERIC)), "0.00");
        assert_eq!(numeric_text(&ok(&d("NaN"), &numeric(3, 1))), "NaN");
        assert_eq!(numeric_text(&ok(&d("1.500"), &numeric(3, 1))), "1.5");
        assert!(enc(&d("1.55"), &numeric(3, 1)).is_err());
        assert!(enc(&d("100.5"), &numeric(3, 1)).is_err());
        assert!(enc(&d("Infinity"), &numeric(3, 1)).is_err());
        assert!(enc(&d("1e5"), &ANY_NUMERIC).is_err());
        assert!(enc(&d("."), &ANY_NUMERIC).is_err());
        assert_eq!(ok(&d("2.5"), &PgType::Float8), 2.5f64.to_be_bytes());
        assert_eq!(ok(&d("2.5"), &PgType::Float4), 2.5f32.to_be_bytes());
        assert_eq!(ok(&d("NaN"), &PgType::Float8), f64::NAN.to_be_bytes());
        assert_eq!(ok(&d("42.000"), &PgType::Int4), 42i32.to_be_bytes());
        assert_eq!(ok(&d("-42"), &PgType::Int8), (-42i64).to_be_bytes());
        assert!(enc(&d("42.5"), &PgType::Int4).is_err());
        assert!(enc(&d("40000"), &PgType::Int2).is_err());
        assert!(enc(
            &d("99999999999999999999999999999999999999999"),
            &PgType::Int8
        )
        .is_err());
        assert_eq!(ok(&d("-1.50"), &PgType::Text), b"-1.50");
        assert!(enc(&d("1"), &PgType::Bool).is_err());
    }

    #[test]
    fn text_types() {
        let t = |s: &str| Value::Text(s.into());
        assert_eq!(
            ok(&t("héllo"), &PgType::Varchar { max_chars: Some(5) }),
            "héllo".as_bytes()
        );
        assert_eq!(
            enc(&t("héllo!"), &PgType::Varchar { max_chars: Some(5) }),
            Err(TOO_LONG)
        );
        assert_eq!(
            ok(&t("ab  "), &PgType::Bpchar { max_chars: Some(2) }),
            b"ab  "
        );
        assert_eq!(
            enc(&t("abc"), &PgType::Bpchar { max_chars: Some(2) }),
            Err(TOO_LONG)
        );
        assert_eq!(ok(&t("x"), &PgType::Text), b"x");
        assert_eq!(enc(&t("a\0b"), &PgType::Text), Err(NUL_IN_TEXT));
        assert_eq!(ok(&t("small"), &PgType::Enum), b"small");
        assert!(enc(&t("1"), &PgType::Int4).is_err());
        assert!(enc(&t("x"), &PgType::Bytea).is_err());
        assert!(enc(&t("2024-01-01"), &PgType::Date).is_err());
    }

    #[test]
    fn uuids() {
        let expected: Vec<u8> = (0..16u8).map(|i| i * 17).collect();
        let text = "00112233-4455-6677-8899-aabbccddeeff";
        assert_eq!(ok(&Value::Uuid(text.into()), &PgType::Uuid), expected);
        assert_eq!(
            ok(&Value::Text(text.to_uppercase()), &PgType::Uuid),
            expected
        );
        assert_eq!(
            ok(&Value::Text(text.replace('-', "")), &PgType::Uuid),
            expected
        );
        assert_eq!(ok(&Value::Bytes(expected.clone()), &PgType::Uuid), expected);
        assert!(enc(&Value::Bytes(vec![1; 15]), &PgType::Uuid).is_err());
        assert!(enc(&Value::Text("not-a-uuid".into()), &PgType::Uuid).is_err());
        assert!(enc(
            &Value::Text("00112233x4455-6677-8899-aabbccddeeff".into()),
            &PgType::Uuid
        )
        .is_err());
        assert_eq!(
            ok(&Value::Uuid(text.into()), &PgType::Text),
            text.as_bytes()
        );
        assert!(enc(
            &Value::Uuid(text.into()),
            &PgType::Varchar {
                max_chars: Some(32)
            }
        )
        .is_err());
    }

    #[test]
    fn json() {
        let j = |s: &str| Value::Json(s.into());
        assert_eq!(ok(&j(r#"{"a":1}"#), &PgType::Json), br#"{"a":1}"#);
        assert_eq!(ok(&j(r#"{"a":1}"#), &PgType::Jsonb), b"\x01{\"a\":1}");
        assert_eq!(
            ok(&Value::Text("[1,2]".into()), &PgType::Jsonb),
            b"\x01[1,2]"
        );
        assert!(enc(&j("{"), &PgType::Json).is_err());
        assert!(enc(&Value::Text("nope".into()), &PgType::Jsonb).is_err());
        assert!(enc(&j(r#""\u0000""#), &PgType::Jsonb).is_err());
        assert_eq!(ok(&j("[1]"), &PgType::Text), b"[1]");
        assert!(enc(&j("[1]"), &PgType::Int4).is_err());
    }

    #[test]
    fn bytes() {
        assert_eq!(
            ok(&Value::Bytes(vec![0, 0x27, 0xff]), &PgType::Bytea),
            vec![0, 0x27, 0xff]
        );
        // Binary data is refused by text columns, not written as hex.
        for ty in [
            PgType::Text,
            PgType::Varchar { max_chars: None },
            PgType::Bpchar { max_chars: None },
        ] {
            assert_eq!(
                enc(&Value::Bytes(vec![0, 0xff]), &ty),
                Err(BINARY_INTO_TEXT)
            );
        }
        // A zoned DATETIME: local time into timestamp, instant into timestamptz.
        let zoned = chrono::DateTime::parse_from_rfc3339("2024-07-01T12:00:00+02:00").unwrap();
        let local = NaiveDate::from_ymd_opt(2024, 7, 1)
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap();
        assert_eq!(
            ok(
                &Value::ZonedTimestamp(zoned),
                &PgType::Timestamp { precision: 6 }
            ),
            ok(
                &Value::Timestamp(local),
                &PgType::Timestamp { precision: 6 }
            )
        );
        assert_eq!(
            ok(
                &Value::ZonedTimestamp(zoned),
                &PgType::TimestampTz { precision: 6 }
            ),
            ok(
                &Value::Timestamp(local - chrono::Duration::hours(2)),
                &PgType::TimestampTz { precision: 6 }
            )
        );
        let iv = callosum_api::Interval::from_micros(-90_000_000);
        assert_eq!(
            ok(&Value::Interval(iv), &PgType::Interval),
            [(-90_000_000i64).to_be_bytes().to_vec(), vec![0; 8]].concat()
        );
        assert!(enc(&Value::Bytes(vec![1]), &PgType::Json).is_err());
        let inf = |negative| Value::Infinity { negative };
        assert_eq!(ok(&inf(false), &PgType::Date), i32::MAX.to_be_bytes());
        assert_eq!(
            ok(&inf(true), &PgType::TimestampTz { precision: 6 }),
            i64::MIN.to_be_bytes()
        );
        let day = Value::Interval(callosum_api::Interval::from_micros(86_400_000_000));
        assert_eq!(
            ok(&day, &PgType::Time { precision: 0 }),
            86_400_000_000i64.to_be_bytes()
        );
        let past = Value::Interval(callosum_api::Interval::from_micros(86_400_000_001));
        assert!(enc(&past, &PgType::Time { precision: 6 }).is_err());
        assert!(enc(&inf(false), &PgType::Int8).is_err());
    }

    #[test]
    fn dates_and_times() {
        let day = NaiveDate::from_ymd_opt(2000, 1, 2).unwrap();
        assert_eq!(ok(&Value::Date(day), &PgType::Date), 1i32.to_be_bytes());
        assert_eq!(
            ok(&Value::Date(day), &PgType::Timestamp { precision: 0 }),
            86_400_000_000i64.to_be_bytes()
        );
        assert_eq!(
            ok(&Value::Date(day), &PgType::TimestampTz { precision: 6 }),
            86_400_000_000i64.to_be_bytes()
        );
        assert_eq!(ok(&Value::Date(day), &PgType::Text), b"2000-01-02");
        let early = NaiveDate::from_ymd_opt(-5000, 1, 1).unwrap();
        assert_eq!(enc(&Value::Date(early), &PgType::Date), Err(OUT_OF_RANGE));
        assert_eq!(
            ok(
                &Value::Date(NaiveDate::from_ymd_opt(0, 3, 1).unwrap()),
                &PgType::Text
            ),
            b"0001-03-01 BC"
        );

        let t = NaiveTime::from_hms_micro_opt(1, 2, 3, 450_000).unwrap();
        assert_eq!(
            ok(&Value::Time(t), &PgType::Time { precision: 3 }),
            3_723_450_000i64.to_be_bytes()
        );
        assert_eq!(
            enc(&Value::Time(t), &PgType::Time { precision: 0 }),
            Err(FRACTIONAL_SECONDS)
        );
        assert_eq!(ok(&Value::Time(t), &PgType::Text), b"01:02:03.45");
        assert!(enc(&Value::Time(t), &PgType::Timestamp { precision: 6 }).is_err());

        let ts = day.and_hms_micro_opt(0, 0, 1, 5).unwrap();
        let micros = (86_400_000_000i64 + 1_000_005).to_be_bytes();
        assert_eq!(
            ok(&Value::Timestamp(ts), &PgType::Timestamp { precision: 6 }),
            micros
        );
        assert_eq!(
            ok(&Value::Timestamp(ts), &PgType::TimestampTz { precision: 6 }),
            micros
        );
        assert_eq!(
            enc(&Value::Timestamp(ts), &PgType::Timestamp { precision: 5 }),
            Err(FRACTIONAL_SECONDS)
        );
        let utc = Utc.from_utc_datetime(&ts);
        assert_eq!(
            ok(
                &Value::TimestampTz(utc),
                &PgType::TimestampTz { precision: 6 }
            ),
            micros
        );
        assert_eq!(
            ok(
                &Value::TimestampTz(utc),
                &PgType::Timestamp { precision: 6 }
            ),
            micros
        );
        assert_eq!(
            ok(&Value::Timestamp(ts), &PgType::Text),
            b"2000-01-02 00:00:01.000005"
        );
        assert_eq!(
            ok(&Value::TimestampTz(utc), &PgType::Text),
            b"2000-01-02 00:00:01.000005+00"
        );
        // date from a timestamp: midnight only
        let midnight = day.and_time(NaiveTime::MIN);
        assert_eq!(
            ok(&Value::Timestamp(midnight), &PgType::Date),
            1i32.to_be_bytes()
        );
        assert_eq!(
            ok(
                &Value::TimestampTz(Utc.from_utc_datetime(&midnight)),
                &PgType::Date
            ),
            1i32.to_be_bytes()
        );
        assert!(enc(&Value::Timestamp(ts), &PgType::Date).is_err());
        assert!(enc(&Value::Timestamp(ts), &PgType::Time { precision: 6 }).is_err());
        // Unix epoch helper.
        assert_eq!(pg_timestamp_micros(PG_EPOCH_MICROS), 0);
    }

    #[test]
    fn null_unchanged_and_types_sent_as_text() {
        assert_eq!(enc(&Value::Null, &PgType::ViaText), Ok(None));
        assert_eq!(enc(&Value::Null, &PgType::Int4), Ok(None));
        assert!(enc(&Value::Unchanged, &PgType::Int4).is_err());
        // any other type: the text the server's input function reads
        assert_eq!(
            enc(&Value::Text("10.1.2.3/24".into()), &PgType::ViaText),
            Ok(Some(b"10.1.2.3/24".to_vec()))
        );
        assert_eq!(
            enc(&Value::Int(1), &PgType::ViaText),
            Ok(Some(b"1".to_vec()))
        );
        assert!(enc(&Value::Bytes(vec![1]), &PgType::ViaText).is_err());
        assert!(enc(&Value::Text("a\0b".into()), &PgType::ViaText).is_err());
    }

    proptest! {
        #[test]
        fn ints_round_trip(i in any::<i64>()) {
            let b = ok(&Value::Int(i), &PgType::Int8);
            prop_assert_eq!(i64::from_be_bytes(b.try_into().unwrap()), i);
            let b = ok(&Value::Int(i), &ANY_NUMERIC);
            prop_assert_eq!(numeric_text(&b), i.to_string());
            let b = ok(&Value::Int(i), &PgType::Text);
            prop_assert_eq!(String::from_utf8(b).unwrap(), i.to_string());
        }

        #[test]
        fn unsigned_round_trip(u in any::<u64>()) {
            let b = ok(&Value::UInt(u), &ANY_NUMERIC);
            prop_assert_eq!(numeric_text(&b), u.to_string());
        }

        #[test]
        fn decimals_round_trip(
            negative in any::<bool>(),
            int in "[1-9][0-9]{0,30}|0",
            frac in "[0-9]{0,20}",
        ) {
            let text = match (negative, frac.is_empty()) {
                (n, true) => format!("{}{int}", if n { "-" } else { "" }),
                (n, false) => format!("{}{int}.{frac}", if n { "-" } else { "" }),
            };
            let b = ok(&Value::Decimal(text.clone()), &ANY_NUMERIC);
            let back = numeric_text(&b);
            // -0 and -0.000 come back without a sign, like the server's.
            let expected = if text.trim_start_matches('-').bytes().all(|c| c == b'0' || c == b'.') {
                text.trim_start_matches('-').to_string()
            } else {
                text.clone()
            };
            prop_assert_eq!(back, expected);
            let b = ok(&Value::Decimal(text.clone()), &numeric(60, 25));
            let back = numeric_text(&b);
            prop_assert_eq!(back.trim_start_matches('-'), text.trim_start_matches('-'));
        }

        #[test]
        fn timestamps_round_trip(micros in -210_000_000_000_000_000i64..9_000_000_000_000_000i64) {
            let ts = DateTime::from_timestamp_micros(micros).unwrap();
            let b = ok(&Value::TimestampTz(ts), &PgType::TimestampTz { precision: 6 });
            prop_assert_eq!(i64::from_be_bytes(b.try_into().unwrap()), pg_timestamp_micros(micros));
            let b = ok(&Value::Timestamp(ts.naive_utc()), &PgType::Timestamp { precision: 6 });
            prop_assert_eq!(i64::from_be_bytes(b.try_into().unwrap()), pg_timestamp_micros(micros));
        }
    }
}

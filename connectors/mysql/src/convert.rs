//! Target column types read from the catalog, and [`Value`]s written as SQL
//! literals of those types.
//!
//! Literals are safe to splice into statements only in a session with
//! `sql_mode` containing `NO_BACKSLASH_ESCAPES` (the sink sets it): strings
//! are quoted with `'` doubled, bytes are hex literals, numbers are
//! validated digit strings.

use callosum_api::Value;
use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use std::fmt::Write;

/// What a target column can hold, from `information_schema.COLUMNS`.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetType {
    /// tinyint … bigint, signed or unsigned: the inclusive range.
    Int {
        min: i128,
        max: i128,
    },
    /// year: 1901..=2155 (or 0).
    Year,
    Decimal {
        precision: u32,
        scale: u32,
    },
    /// float (single precision).
    Float,
    /// double / real.
    Double,
    /// char / varchar: length in characters.
    Char {
        max_chars: u64,
    },
    /// tinytext … longtext: length in bytes.
    Text {
        max_bytes: u64,
    },
    /// enum / set: the server checks membership.
    Enum,
    /// binary / varbinary / blobs: length in bytes.
    Binary {
        max_bytes: u64,
    },
    Date,
    Time {
        fsp: u32,
    },
    DateTime {
        fsp: u32,
    },
    /// A datetime of a store with a `time_zone`: instants are written as
    /// local times of `zone`.
    ZonedDateTime {
        fsp: u32,
        zone: chrono_tz::Tz,
    },
    Timestamp {
        fsp: u32,
    },
    /// MySQL's native json (MariaDB reports its JSON as longtext).
    Json,
    /// MariaDB 10.7+ native uuid.
    Uuid,
    /// Anything else: every non-null value is a conversion error.
    Unsupported,
}

impl TargetType {
    /// Builds the type from catalog columns (`DATA_TYPE`, `COLUMN_TYPE`,
    /// `CHARACTER_MAXIMUM_LENGTH`, `NUMERIC_PRECISION`, `NUMERIC_SCALE`,
    /// `DATETIME_PRECISION`).
    pub fn from_catalog(
        data_type: &str,
        column_type: &str,
        char_max: Option<u64>,
        precision: Option<u64>,
        scale: Option<u64>,
        datetime_precision: Option<u64>,
    ) -> TargetType {
        let data_type = data_type.to_ascii_lowercase();
        let unsigned = column_type.to_ascii_lowercase().contains("unsigned");
        let int = |bits: u32| {
            if unsigned {
                TargetType::Int {
                    min: 0,
                    max: (1i128 << bits) - 1,
                }
            } else {
                TargetType::Int {
                    min: -(1i128 << (bits - 1)),
                    max: (1i128 << (bits - 1)) - 1,
                }
            }
        };
        let fsp = datetime_precision.unwrap_or(0).min(6) as u32;
        match data_type.as_str() {
            "tinyint" | "bool" | "boolean" => int(8),
            "smallint" => int(16),
            "mediumint" => int(24),
            "int" | "integer" => int(32),
            "bigint" => int(64),
            "year" => TargetType::Year,
            // bit(n): an integer of n bits (NUMERIC_PRECISION is n).
            "bit" => TargetType::Int {
                min: 0,
                max: (1i128 << precision.unwrap_or(1).clamp(1, 64)) - 1,
            },
            "decimal" | "numeric" | "dec" | "fixed" => TargetType::Decimal {
                precision: precision.unwrap_or(10) as u32,
                scale: scale.unwrap_or(0) as u32,
            },
            "float" => TargetType::Float,
            "double" | "real" | "double precision" => TargetType::Double,
            "char" | "varchar" | "nchar" | "nvarchar" => TargetType::Char {
                max_chars: char_max.unwrap_or(u64::MAX),
            },
            "tinytext" => TargetType::Text { max_bytes: 255 },
            "text" => TargetType::Text { max_bytes: 65_535 },
            "mediumtext" => TargetType::Text {
                max_bytes: 16_777_215,
            },
            "longtext" => TargetType::Text {
                max_bytes: u32::MAX as u64,
            },
            "enum" | "set" => TargetType::Enum,
            "binary" | "varbinary" => TargetType::Binary {
                max_bytes: char_max.unwrap_or(u64::MAX),
            },
            "tinyblob" => TargetType::Binary { max_bytes: 255 },
            "blob" => TargetType::Binary { max_bytes: 65_535 },
            "mediumblob" => TargetType::Binary {
                max_bytes: 16_777_215,
            },
            "longblob" => TargetType::Binary {
                max_bytes: u32::MAX as u64,
            },
            "date" => TargetType::Date,
            "time" => TargetType::Time { fsp },
            "datetime" => TargetType::DateTime { fsp },
            "timestamp" => TargetType::Timestamp { fsp },
            "json" => TargetType::Json,
            "uuid" => TargetType::Uuid,
            _ => TargetType::Unsupported,
        }
    }
}

/// Why a value cannot be written to its column. Static text: never the value.
pub type Reason = &'static str;

const NOT_CONVERTIBLE: Reason = "the source type cannot be converted to the target type";

/// [`write_literal`] for a value of a source column of type `source_type`
/// (its [`callosum_api::ColumnSchema::source_type`]): PostgreSQL text forms
/// that a column of another kind holds converted first ([`crate::pg_text`]):
/// arrays (`_int4`, …) and composites into a JSON column as JSON arrays,
/// `money` into decimal and float columns as its number. Into text columns
/// they stay PostgreSQL's text.
pub fn write_source_literal(
    out: &mut String,
    v: &Value,
    source_type: &str,
    ty: &TargetType,
) -> Result<(), Reason> {
    use crate::pg_text;
    match (v, ty) {
        (Value::Text(s), TargetType::Json) if pg_text::is_array_type(source_type) => {
            let kind = pg_text::ElementKind::of_array_type(source_type);
            write_quoted(out, &pg_text::array_to_json(s, kind)?);
        }
        (Value::Text(s), TargetType::Json) if pg_text::may_be_composite(source_type, s) => {
            write_quoted(out, &pg_text::composite_to_json(s)?);
        }
        (Value::Text(s), TargetType::Decimal { .. } | TargetType::Float | TargetType::Double)
            if source_type == "money" =>
        {
            let number = Value::Decimal(pg_text::money_to_decimal(s)?);
            write_literal(out, &number, ty)?;
        }
        _ => write_literal(out, v, ty)?,
    }
    Ok(())
}

/// Appends `v` as a SQL literal for a column of type `ty`.
///
/// Conversions (anything else is an error; `Null` is `NULL` for every type):
///
/// | value | target types |
/// |---|---|
/// | `Bool` | integer types, decimal, float, double (as 0/1) |
/// | `Int`, `UInt` | integer types and year (range-checked), decimal (integer digits checked), float, double, char/varchar/text (as digits) |
/// | `Float` | float, double, decimal (NaN and infinity rejected) |
/// | `Decimal` | decimal (precision and scale checked; trailing fractional zeros are free), float, double, integer types (no fractional part) |
/// | `Text` | char/varchar (length in characters), text types (length in bytes), enum, set, json, uuid |
/// | `Json` | json, char/varchar, text types |
/// | `Bytes` | binary/varbinary/blob types (length in bytes) |
/// | `Date` | date, datetime, timestamp |
/// | `Time` | time |
/// | `Interval` | time (no months; days as 24 h; within ±838:59:59), char/varchar/text (ISO 8601) |
/// | `ZonedTimestamp` | datetime (its local time), timestamp (its instant) |
///
/// In a store with a `time_zone`, datetime columns are
/// [`TargetType::ZonedDateTime`]: `TimestampTz` and `ZonedTimestamp` are
/// written as the zone's local time of their instant; `Timestamp` and `Date`
/// as they are.
/// | `Timestamp`, `TimestampTz` (as UTC) | datetime, timestamp (range-checked), date (midnight only) |
/// | `Uuid` | char(≥36)/varchar/text, binary(16), uuid |
///
/// Fractional seconds beyond the column's precision are an error, not
/// rounded. Errors say why, never what the value was. [`Value::Unchanged`]
/// is an error: the planner keeps it out of every statement.
pub fn write_literal(out: &mut String, v: &Value, ty: &TargetType) -> Result<(), Reason> {
    use TargetType as T;
    match (v, ty) {
        (Value::Null, _) => out.push_str("NULL"),
        (Value::Unchanged, _) => return Err("an unchanged (unsent) value cannot be written"),
        (_, T::Unsupported) => return Err("the target type is not supported"),

        (Value::Bool(b), T::Int { .. } | T::Decimal { .. } | T::Float | T::Double) => {
            out.push(if *b { '1' } else { '0' })
        }

        (Value::Int(i), _) => write_integer(out, *i as i128, ty)?,
        (Value::UInt(u), _) => write_integer(out, *u as i128, ty)?,

        (Value::Float(f), T::Float | T::Double | T::Decimal { .. }) => {
            if !f.is_finite() {
                return Err("NaN and infinity cannot be stored");
            }
            match ty {
                // float4's extremes arrive as their shortest text
                // (3.4028235e38), just above f32::MAX as a double: written
                // as the single-precision value they name
                T::Float if (*f as f32).is_infinite() => {
                    return Err("out of range for a single-precision float")
                }
                T::Float => {
                    let _ = write!(out, "{:?}", f64::from(*f as f32));
                }
                T::Decimal { precision, scale } => {
                    let text = format!("{f}");
                    write_decimal(out, &text, *precision, *scale)?;
                }
                _ => {
                    let _ = write!(out, "{f:?}");
                }
            }
        }

        (Value::Decimal(d), T::Decimal { precision, scale }) => {
            write_decimal(out, d, *precision, *scale)?
        }
        (Value::Decimal(d), T::Float | T::Double) => {
            if d.eq_ignore_ascii_case("nan")
                || d.eq_ignore_ascii_case("infinity")
                || d.eq_ignore_ascii_case("-infinity")
            {
                return Err("NaN and infinity cannot be stored");
            }
            let parsed = parse_decimal(d)?;
            if matches!(ty, T::Float) && parsed.int_digits > 38 {
                return Err("out of range for a single-precision float");
            }
            out.push_str(d);
        }
        (Value::Decimal(d), T::Int { .. } | T::Year) => {
            let parsed = parse_decimal(d)?;
            if parsed.frac_significant > 0 {
                return Err("has a fractional part that an integer column cannot hold");
            }
            let whole = &d[..parsed.int_end];
            let n: i128 = whole
                .parse()
                .map_err(|_| "out of range for the target integer type")?;
            write_integer(out, n, ty)?;
        }

        (Value::Text(s) | Value::Json(s), T::Char { max_chars }) => {
            check_chars(s, *max_chars)?;
            write_quoted(out, s);
        }
        (Value::Text(s) | Value::Json(s), T::Text { max_bytes }) => {
            if s.len() as u64 > *max_bytes {
                return Err("too long for the target column");
            }
            write_quoted(out, s);
        }
        (Value::Text(s) | Value::Json(s), T::Json) | (Value::Text(s), T::Enum | T::Uuid) => {
            write_quoted(out, s)
        }

        (Value::Bytes(b), T::Binary { max_bytes }) => {
            if b.len() as u64 > *max_bytes {
                return Err("too long for the target column");
            }
            write_hex(out, b);
        }

        (Value::Date(d), T::Date) => write_date(out, d)?,
        (Value::Date(d), T::DateTime { fsp } | T::Timestamp { fsp }) => {
            write_datetime(out, &d.and_time(NaiveTime::MIN), ty, *fsp)?
        }
        (Value::Time(t), T::Time { fsp }) => {
            out.push('\'');
            write_time(out, t, *fsp)?;
            out.push('\'');
        }
        (Value::Timestamp(ts), T::DateTime { fsp } | T::Timestamp { fsp }) => {
            write_datetime(out, ts, ty, *fsp)?
        }
        (Value::TimestampTz(ts), T::DateTime { fsp } | T::Timestamp { fsp }) => {
            write_datetime(out, &ts.naive_utc(), ty, *fsp)?
        }
        // A DATETIME of a store with a time_zone: its local time into a
        // datetime, its instant (UTC) into a timestamp.
        (Value::Date(d), T::ZonedDateTime { fsp, .. }) => {
            write_datetime(out, &d.and_time(NaiveTime::MIN), ty, *fsp)?
        }
        (Value::Timestamp(ts), T::ZonedDateTime { fsp, .. }) => write_datetime(out, ts, ty, *fsp)?,
        (Value::TimestampTz(ts), T::ZonedDateTime { fsp, zone }) => {
            write_datetime(out, &ts.with_timezone(zone).naive_local(), ty, *fsp)?
        }
        (Value::ZonedTimestamp(ts), T::ZonedDateTime { fsp, zone }) => {
            write_datetime(out, &ts.with_timezone(zone).naive_local(), ty, *fsp)?
        }
        (Value::ZonedTimestamp(ts), T::DateTime { fsp }) => {
            write_datetime(out, &ts.naive_local(), ty, *fsp)?
        }
        (Value::ZonedTimestamp(ts), T::Timestamp { fsp }) => {
            write_datetime(out, &ts.naive_utc(), ty, *fsp)?
        }
        (Value::Interval(i), T::Time { fsp }) => write_duration(out, i, *fsp)?,
        // Any interval into a text column: ISO 8601 (PostgreSQL's iso_8601
        // style), exact for months, days and microseconds alike.
        (Value::Interval(i), T::Char { .. } | T::Text { .. }) => {
            let text = Value::Text(i.to_string());
            return write_literal(out, &text, ty);
        }
        (Value::Infinity { .. }, _) => {
            return Err("an infinite date or timestamp has no equivalent in the target type")
        }
        (Value::Undecodable { .. }, _) => {
            return Err("the source could not decode the value of this type")
        }
        (Value::Timestamp(ts), T::Date) => {
            if ts.time() != NaiveTime::MIN {
                return Err("has a time of day that a date column cannot hold");
            }
            write_date(out, &ts.date())?;
        }

        (Value::Uuid(u), T::Char { .. } | T::Text { .. } | T::Uuid | T::Binary { .. }) => {
            let bytes = parse_uuid(u)?;
            match ty {
                T::Binary { max_bytes } => {
                    if *max_bytes < 16 {
                        return Err("too long for the target column");
                    }
                    write_hex(out, &bytes);
                }
                T::Char { max_chars } if *max_chars < 36 => {
                    return Err("too long for the target column")
                }
                _ => write_quoted(out, u),
            }
        }

        _ => return Err(NOT_CONVERTIBLE),
    }
    Ok(())
}

fn write_integer(out: &mut String, n: i128, ty: &TargetType) -> Result<(), Reason> {
    match ty {
        TargetType::Int { min, max } => {
            if n < *min || n > *max {
                return Err("out of range for the target integer type");
            }
        }
        TargetType::Year => {
            if n != 0 && !(1901..=2155).contains(&n) {
                return Err("out of range for a year column");
            }
        }
        TargetType::Decimal { precision, scale } => {
            let digits = n.unsigned_abs().checked_ilog10().map_or(1, |d| d + 1);
            if digits > precision.saturating_sub(*scale) {
                return Err("has more integer digits than the target precision and scale allow");
            }
        }
        TargetType::Float | TargetType::Double => {}
        TargetType::Char { max_chars } => {
            let len = n.unsigned_abs().checked_ilog10().map_or(1, |d| d + 1) + u32::from(n < 0);
            if u64::from(len) > *max_chars {
                return Err("too long for the target column");
            }
            let _ = write!(out, "'{n}'");
            return Ok(());
        }
        // a JSON column (MariaDB's is a checked longtext): the digits are
        // a JSON number
        TargetType::Text { .. } | TargetType::Json => {
            let _ = write!(out, "'{n}'");
            return Ok(());
        }
        _ => return Err(NOT_CONVERTIBLE),
    }
    let _ = write!(out, "{n}");
    Ok(())
}

struct ParsedDecimal {
    /// End of the integer part (sign included).
    int_end: usize,
    /// Integer digits without leading zeros.
    int_digits: u32,
    /// Fractional digits up to the last non-zero one.
    frac_significant: u32,
}

/// Accepts `[+-]digits[.digits]` (at least one digit) only.
fn parse_decimal(text: &str) -> Result<ParsedDecimal, Reason> {
    const BAD: Reason = "is not a finite decimal number (NaN and infinity cannot be stored)";
    let bytes = text.as_bytes();
    let mut i = 0;
    if matches!(bytes.first(), Some(b'+' | b'-')) {
        i = 1;
    }
    let int_start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    let int_end = i;
    let mut frac = &bytes[0..0];
    if i < bytes.len() {
        if bytes[i] != b'.' {
            return Err(BAD);
        }
        frac = &bytes[i + 1..];
        if !frac.iter().all(u8::is_ascii_digit) {
            return Err(BAD);
        }
    }
    if int_end == int_start && frac.is_empty() {
        return Err(BAD);
    }
    let int_part = &bytes[int_start..int_end];
    let int_digits = int_part.iter().skip_while(|b| **b == b'0').count() as u32;
    let frac_significant = frac.iter().rposition(|b| *b != b'0').map_or(0, |p| p + 1) as u32;
    Ok(ParsedDecimal {
        int_end,
        int_digits,
        frac_significant,
    })
}

fn write_decimal(out: &mut String, text: &str, precision: u32, scale: u32) -> Result<(), Reason> {
    let p = parse_decimal(text)?;
    if p.int_digits > precision.saturating_sub(scale) {
        return Err("has more integer digits than the target precision and scale allow");
    }
    if p.frac_significant > scale {
        return Err("has more fractional digits than the target scale allows");
    }
    // Validated: only sign, digits and a point; safe unquoted.
    out.push_str(text);
    Ok(())
}

fn check_chars(s: &str, max_chars: u64) -> Result<(), Reason> {
    // Bytes ≥ characters: count characters only when the bytes exceed.
    if s.len() as u64 > max_chars && s.chars().count() as u64 > max_chars {
        return Err("too long for the target column");
    }
    Ok(())
}

/// `'…'` with `'` doubled (the session has `NO_BACKSLASH_ESCAPES`).
pub fn write_quoted(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('\'');
    let mut rest = s;
    while let Some(at) = rest.find('\'') {
        out.push_str(&rest[..=at]);
        out.push('\'');
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out.push('\'');
}

fn write_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(bytes.len() * 2 + 3);
    out.push_str("X'");
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out.push('\'');
}

fn parse_uuid(u: &str) -> Result<[u8; 16], Reason> {
    const BAD: Reason = "is not a hyphenated UUID";
    let b = u.as_bytes();
    if b.len() != 36 {
        return Err(BAD);
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut i = 0;
    while i < 36 {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b[i] != b'-' {
                return Err(BAD);
            }
            i += 1;
            continue;
        }
        let hi = (b[i] as char).to_digit(16).ok_or(BAD)?;
        let lo = (b[i + 1] as char).to_digit(16).ok_or(BAD)?;
        out[n] = (hi * 16 + lo) as u8;
        n += 1;
        i += 2;
    }
    Ok(out)
}

fn write_date(out: &mut String, d: &NaiveDate) -> Result<(), Reason> {
    if !(0..=9999).contains(&d.year()) {
        return Err("out of range for the target date type");
    }
    let _ = write!(out, "'{:04}-{:02}-{:02}'", d.year(), d.month(), d.day());
    Ok(())
}

/// A duration into a TIME column: no months, days counted as 24 hours (as
/// PostgreSQL compares intervals: `1 day 02:00` is `26:00:00`), within
/// MySQL's ±838:59:59.
fn write_duration(out: &mut String, i: &callosum_api::Interval, fsp: u32) -> Result<(), Reason> {
    if i.months != 0 {
        return Err("an interval with months cannot be stored in a time column");
    }
    let total = i64::from(i.days)
        .checked_mul(86_400_000_000)
        .and_then(|d| d.checked_add(i.micros))
        .ok_or("out of range for a time column (±838:59:59)")?;
    let abs = total.unsigned_abs();
    if abs > 838 * 3_600_000_000 + 59 * 60_000_000 + 59_000_000 {
        return Err("out of range for a time column (±838:59:59)");
    }
    let unit = 10u64.pow(6 - fsp.min(6));
    if abs % unit != 0 {
        return Err("has more fractional seconds than the target column's precision");
    }
    let secs = abs / 1_000_000;
    let sign = if total < 0 { "-" } else { "" };
    let _ = write!(
        out,
        "'{sign}{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    if fsp > 0 {
        let _ = write!(
            out,
            ".{:0width$}",
            (abs % 1_000_000) / unit,
            width = fsp as usize
        );
    }
    out.push('\'');
    Ok(())
}

fn write_time(out: &mut String, t: &NaiveTime, fsp: u32) -> Result<(), Reason> {
    // A leap second (nanosecond ≥ 1e9) cannot be stored.
    let nanos = t.nanosecond();
    if nanos >= 1_000_000_000 {
        return Err("is a leap second, which the target type cannot hold");
    }
    let _ = write!(out, "{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second());
    let unit = 10u32.pow(9 - fsp);
    if nanos % unit != 0 {
        return Err("has more fractional seconds than the target column's precision");
    }
    if fsp > 0 {
        let _ = write!(out, ".{:0width$}", nanos / unit, width = fsp as usize);
    }
    Ok(())
}

fn write_datetime(
    out: &mut String,
    ts: &NaiveDateTime,
    ty: &TargetType,
    fsp: u32,
) -> Result<(), Reason> {
    let in_range = match ty {
        TargetType::Timestamp { .. } => {
            let min = NaiveDate::from_ymd_opt(1970, 1, 1)
                .and_then(|d| d.and_hms_opt(0, 0, 1))
                .expect("valid constant");
            let max = NaiveDate::from_ymd_opt(2038, 1, 19)
                .and_then(|d| d.and_hms_micro_opt(3, 14, 7, 999_999))
                .expect("valid constant");
            (min..=max).contains(ts)
        }
        _ => (0..=9999).contains(&ts.year()),
    };
    if !in_range {
        return Err("out of range for the target date/time type");
    }
    let d = ts.date();
    let _ = write!(out, "'{:04}-{:02}-{:02} ", d.year(), d.month(), d.day());
    write_time(out, &ts.time(), fsp)?;
    out.push('\'');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn lit(v: Value, ty: TargetType) -> Result<String, Reason> {
        let mut s = String::new();
        write_literal(&mut s, &v, &ty).map(|_| s)
    }

    fn ty(data_type: &str, column_type: &str) -> TargetType {
        TargetType::from_catalog(data_type, column_type, None, None, None, None)
    }

    #[test]
    fn integers_are_range_checked_per_type() {
        let cases = [
            ("tinyint", "tinyint(4)", -128i128, 127i128),
            ("tinyint", "tinyint(3) unsigned", 0, 255),
            ("smallint", "smallint(6)", -32768, 32767),
            ("smallint", "smallint unsigned", 0, 65535),
            ("mediumint", "mediumint", -8_388_608, 8_388_607),
            ("mediumint", "mediumint unsigned", 0, 16_777_215),
            ("int", "int(11)", i32::MIN as i128, i32::MAX as i128),
            ("int", "int(10) unsigned", 0, u32::MAX as i128),
            ("bigint", "bigint(20)", i64::MIN as i128, i64::MAX as i128),
            ("bigint", "bigint(20) unsigned", 0, u64::MAX as i128),
        ];
        for (dt, ct, min, max) in cases {
            let t = ty(dt, ct);
            assert_eq!(t, TargetType::Int { min, max }, "{ct}");
            let v = |n: i128| {
                if n < 0 {
                    Value::Int(n as i64)
                } else {
                    Value::UInt(n as u64)
                }
            };
            assert_eq!(lit(v(min), t.clone()).unwrap(), min.to_string());
            assert_eq!(lit(v(max), t.clone()).unwrap(), max.to_string());
            if max < u64::MAX as i128 {
                assert!(lit(v(max + 1), t.clone()).is_err(), "{ct} max+1");
            }
            if min > i64::MIN as i128 {
                assert!(lit(v(min - 1), t.clone()).is_err(), "{ct} min-1");
            }
        }
        assert!(lit(Value::Int(-1), ty("bigint", "bigint unsigned")).is_err());
        assert!(lit(Value::UInt(u64::MAX), ty("bigint", "bigint")).is_err());
    }

    #[test]
    fn bools_become_zero_or_one() {
        let t = ty("tinyint", "tinyint(1)");
        assert_eq!(lit(Value::Bool(true), t.clone()).unwrap(), "1");
        assert_eq!(lit(Value::Bool(false), t).unwrap(), "0");
        assert!(lit(Value::Bool(true), ty("varchar", "varchar(5)")).is_err());
    }

    #[test]
    fn bits_take_integers_of_their_width() {
        let t = TargetType::from_catalog("bit", "bit(12)", None, Some(12), None, None);
        assert_eq!(lit(Value::UInt(4095), t.clone()).unwrap(), "4095");
        assert!(lit(Value::UInt(4096), t.clone()).is_err());
        assert!(lit(Value::Int(-1), t).is_err());
        let t = TargetType::from_catalog("bit", "bit(64)", None, Some(64), None, None);
        assert_eq!(lit(Value::UInt(u64::MAX), t).unwrap(), u64::MAX.to_string());
    }

    #[test]
    fn decimals_check_precision_and_scale() {
        let t = TargetType::from_catalog("decimal", "decimal(12,2)", None, Some(12), Some(2), None);
        assert_eq!(
            lit(Value::Decimal("-12.50".into()), t.clone()).unwrap(),
            "-12.50"
        );
        assert_eq!(
            lit(Value::Decimal("1234567890.1".into()), t.clone()).unwrap(),
            "1234567890.1"
        );
        assert_eq!(
            lit(Value::Decimal("0.100".into()), t.clone()).unwrap(),
            "0.100"
        );
        assert!(lit(Value::Decimal("12345678901".into()), t.clone()).is_err());
        assert!(lit(Value::Decimal("1.125".into()), t.clone()).is_err());
        assert!(lit(Value::Decimal("NaN".into()), t.clone()).is_err());
        assert!(lit(Value::Decimal("1e5".into()), t.clone()).is_err());
        assert!(lit(Value::Decimal("1;drop".into()), t.clone()).is_err());
        assert!(lit(Value::Decimal("".into()), t.clone()).is_err());
        assert_eq!(
            lit(Value::Int(1234567890), t.clone()).unwrap(),
            "1234567890"
        );
        assert!(lit(Value::Int(12345678901), t.clone()).is_err());
        assert_eq!(lit(Value::Float(2.5), t.clone()).unwrap(), "2.5");
        assert!(lit(Value::Float(f64::NAN), t).is_err());
        let i = ty("int", "int(11)");
        assert_eq!(
            lit(Value::Decimal("42.00".into()), i.clone()).unwrap(),
            "42"
        );
        assert!(lit(Value::Decimal("42.5".into()), i).is_err());
    }

    #[test]
    fn floats_reject_nan_and_infinity() {
        for t in [ty("float", "float"), ty("double", "double")] {
            assert_eq!(lit(Value::Float(1.5), t.clone()).unwrap(), "1.5");
            assert_eq!(
                lit(Value::Float(1e300), ty("double", "double")).unwrap(),
                "1e300"
            );
            assert!(lit(Value::Float(f64::NAN), t.clone()).is_err());
            assert!(lit(Value::Float(f64::INFINITY), t.clone()).is_err());
            assert!(lit(Value::Float(f64::NEG_INFINITY), t.clone()).is_err());
        }
        assert!(lit(Value::Float(1e300), ty("float", "float")).is_err());
        // float4's largest value as PostgreSQL prints it
        assert_eq!(
            lit(Value::Float(-3.4028235e38), ty("float", "float")).unwrap(),
            format!("{:?}", f64::from(f32::MIN))
        );
        assert!(lit(Value::Decimal("NaN".into()), ty("double", "double")).is_err());
    }

    #[test]
    fn text_is_quoted_and_length_checked_in_characters() {
        let t = TargetType::from_catalog("varchar", "varchar(3)", Some(3), None, None, None);
        assert_eq!(lit(Value::Text("a'b".into()), t.clone()).unwrap(), "'a''b'");
        assert_eq!(lit(Value::Text("héé".into()), t.clone()).unwrap(), "'héé'");
        assert_eq!(
            lit(Value::Text("a\\'".into()), t.clone()).unwrap(),
            "'a\\'''"
        );
        assert!(lit(Value::Text("abcd".into()), t.clone()).is_err());
        assert!(lit(Value::Bytes(vec![1]), t).is_err());
        assert!(lit(Value::Text("x".repeat(256)), ty("tinytext", "tinytext")).is_err());
        assert_eq!(lit(Value::Int(-12), ty("text", "text")).unwrap(), "'-12'");
        assert!(lit(Value::Int(-12), TargetType::Char { max_chars: 2 }).is_err());
        assert_eq!(
            lit(Value::Text("a".into()), ty("enum", "enum('a')")).unwrap(),
            "'a'"
        );
    }

    #[test]
    fn bytes_are_hex_literals() {
        let t = TargetType::from_catalog("varbinary", "varbinary(2)", Some(2), None, None, None);
        assert_eq!(
            lit(Value::Bytes(vec![0, 0xAB]), t.clone()).unwrap(),
            "X'00AB'"
        );
        assert_eq!(lit(Value::Bytes(vec![]), t.clone()).unwrap(), "X''");
        assert!(lit(Value::Bytes(vec![1, 2, 3]), t).is_err());
        assert_eq!(
            lit(Value::Bytes(vec![0x27]), ty("blob", "blob")).unwrap(),
            "X'27'"
        );
    }

    #[test]
    fn pg_only_values_into_mariadb_columns() {
        let iv = Value::Interval(callosum_api::Interval {
            months: 14,
            days: -3,
            micros: 1_500_000,
        });
        assert_eq!(
            lit(iv.clone(), ty("varchar", "varchar(32)")).unwrap(),
            "'P1Y2M-3DT1.5S'"
        );
        assert!(lit(iv, ty("time", "time(6)")).is_err());
        // days count as 24 hours into a TIME column, within ±838:59:59
        let days = |days, micros| {
            Value::Interval(callosum_api::Interval {
                months: 0,
                days,
                micros,
            })
        };
        assert_eq!(
            lit(days(1, 2 * 3_600_000_000), ty("time", "time")).unwrap(),
            "'26:00:00'"
        );
        assert_eq!(
            lit(days(-1, -1), TargetType::Time { fsp: 6 }).unwrap(),
            "'-24:00:00.000001'"
        );
        assert_eq!(
            lit(days(1, -2 * 3_600_000_000), ty("time", "time")).unwrap(),
            "'22:00:00'"
        );
        assert_eq!(
            lit(
                days(34, 22 * 3_600_000_000 + 3_599_000_000),
                ty("time", "time")
            )
            .unwrap(),
            "'838:59:59'"
        );
        assert!(lit(days(35, 0), ty("time", "time")).is_err());
        assert!(lit(days(i32::MAX, i64::MAX), ty("time", "time")).is_err());
        let inf = Value::Infinity { negative: true };
        assert!(lit(inf.clone(), ty("date", "date")).is_err());
        assert!(lit(inf, ty("datetime", "datetime(6)")).is_err());
        let bad = Value::Undecodable {
            type_name: "date".into(),
            reason: "invalid or out-of-range date value".into(),
        };
        assert!(lit(bad, ty("text", "text")).is_err());
    }

    #[test]
    fn dates_times_and_timestamps() {
        let d = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
        assert_eq!(
            lit(Value::Date(d), ty("date", "date")).unwrap(),
            "'2024-02-29'"
        );
        let t6 = TargetType::from_catalog("datetime", "datetime(6)", None, None, None, Some(6));
        let t0 = ty("datetime", "datetime");
        let ts = d.and_hms_micro_opt(13, 5, 7, 120).unwrap();
        assert_eq!(
            lit(Value::Timestamp(ts), t6.clone()).unwrap(),
            "'2024-02-29 13:05:07.000120'"
        );
        assert!(lit(Value::Timestamp(ts), t0.clone()).is_err());
        let whole = d.and_hms_opt(13, 5, 7).unwrap();
        assert_eq!(
            lit(Value::Timestamp(whole), t0.clone()).unwrap(),
            "'2024-02-29 13:05:07'"
        );
        assert_eq!(
            lit(Value::Date(d), t0.clone()).unwrap(),
            "'2024-02-29 00:00:00'"
        );
        let tz = Utc.from_utc_datetime(&whole);
        assert_eq!(
            lit(Value::TimestampTz(tz), t0).unwrap(),
            "'2024-02-29 13:05:07'"
        );
        let stamp =
            TargetType::from_catalog("timestamp", "timestamp(3)", None, None, None, Some(3));
        let ms = d.and_hms_milli_opt(1, 2, 3, 450).unwrap();
        assert_eq!(
            lit(Value::Timestamp(ms), stamp.clone()).unwrap(),
            "'2024-02-29 01:02:03.450'"
        );
        let old = NaiveDate::from_ymd_opt(1960, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        assert!(lit(Value::Timestamp(old), stamp.clone()).is_err());
        let far = NaiveDate::from_ymd_opt(2040, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        assert!(lit(Value::Timestamp(far), stamp).is_err());
        let time = NaiveTime::from_hms_micro_opt(23, 59, 1, 500_000).unwrap();
        let tt = TargetType::from_catalog("time", "time(1)", None, None, None, Some(1));
        assert_eq!(lit(Value::Time(time), tt.clone()).unwrap(), "'23:59:01.5'");
        let iv = |m: i64| Value::Interval(callosum_api::Interval::from_micros(m));
        assert_eq!(
            lit(iv(-3_723_500_000), tt.clone()).unwrap(),
            "'-01:02:03.5'"
        );
        assert_eq!(
            lit(iv(838 * 3_600_000_000), ty("time", "time")).unwrap(),
            "'838:00:00'"
        );
        assert!(lit(iv(839 * 3_600_000_000), tt.clone()).is_err());
        assert!(lit(iv(1), ty("time", "time")).is_err());
        let zoned = chrono::DateTime::parse_from_rfc3339("2024-07-01T12:00:00+02:00").unwrap();
        assert_eq!(
            lit(Value::ZonedTimestamp(zoned), ty("datetime", "datetime")).unwrap(),
            "'2024-07-01 12:00:00'"
        );
        assert_eq!(
            lit(Value::ZonedTimestamp(zoned), ty("timestamp", "timestamp")).unwrap(),
            "'2024-07-01 10:00:00'"
        );
        let berlin = TargetType::ZonedDateTime {
            fsp: 0,
            zone: chrono_tz::Europe::Berlin,
        };
        let instant = Utc.with_ymd_and_hms(2024, 1, 15, 11, 0, 0).unwrap();
        assert_eq!(
            lit(Value::TimestampTz(instant), berlin.clone()).unwrap(),
            "'2024-01-15 12:00:00'"
        );
        assert_eq!(
            lit(Value::ZonedTimestamp(zoned), berlin.clone()).unwrap(),
            "'2024-07-01 12:00:00'"
        );
        assert_eq!(
            lit(Value::Timestamp(instant.naive_utc()), berlin).unwrap(),
            "'2024-01-15 11:00:00'"
        );
        assert!(lit(Value::Time(time), ty("time", "time")).is_err());
        assert_eq!(
            lit(
                Value::Timestamp(d.and_hms_opt(0, 0, 0).unwrap()),
                ty("date", "date")
            )
            .unwrap(),
            "'2024-02-29'"
        );
        assert!(lit(Value::Timestamp(whole), ty("date", "date")).is_err());
    }

    #[test]
    fn uuids_as_text_or_binary16() {
        let u = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";
        let c36 = TargetType::from_catalog("char", "char(36)", Some(36), None, None, None);
        assert_eq!(lit(Value::Uuid(u.into()), c36).unwrap(), format!("'{u}'"));
        let b16 = TargetType::from_catalog("binary", "binary(16)", Some(16), None, None, None);
        assert_eq!(
            lit(Value::Uuid(u.into()), b16).unwrap(),
            "X'0A1B2C3D4E5F60718293A4B5C6D7E8F9'"
        );
        assert!(lit(Value::Uuid(u.into()), TargetType::Char { max_chars: 32 }).is_err());
        assert!(lit(Value::Uuid("nope'".into()), ty("uuid", "uuid")).is_err());
        assert_eq!(
            lit(Value::Uuid(u.into()), ty("uuid", "uuid")).unwrap(),
            format!("'{u}'")
        );
    }

    #[test]
    fn json_goes_to_json_or_text() {
        let doc = r#"{"a":"it's"}"#;
        assert_eq!(
            lit(Value::Json(doc.into()), ty("json", "json")).unwrap(),
            r#"'{"a":"it''s"}'"#
        );
        assert!(lit(Value::Json(doc.into()), ty("longtext", "longtext")).is_ok());
        assert!(lit(Value::Json(doc.into()), ty("int", "int")).is_err());
        assert_eq!(lit(Value::Int(-5), TargetType::Json).unwrap(), "'-5'");
    }

    #[test]
    fn null_is_null_everywhere_and_unchanged_never_written() {
        assert_eq!(lit(Value::Null, ty("int", "int")).unwrap(), "NULL");
        assert_eq!(
            lit(Value::Null, ty("geometry", "geometry")).unwrap(),
            "NULL"
        );
        assert!(lit(Value::Unchanged, ty("int", "int")).is_err());
        assert!(lit(Value::Int(1), ty("geometry", "geometry")).is_err());
    }

    #[test]
    fn postgresql_text_forms_by_source_type() {
        let src = |v: Value, source: &str, ty: TargetType| {
            let mut s = String::new();
            write_source_literal(&mut s, &v, source, &ty).map(|_| s)
        };
        let text = |s: &str| Value::Text(s.into());
        assert_eq!(
            src(text("{1,2,NULL}"), "_int4", TargetType::Json).unwrap(),
            "'[1,2,null]'"
        );
        assert_eq!(
            src(text(r#"{"it's",c}"#), "_text", TargetType::Json).unwrap(),
            r#"'["it''s","c"]'"#
        );
        assert_eq!(
            src(text(r#"(1,"x y")"#), "address", TargetType::Json).unwrap(),
            r#"'["1","x y"]'"#
        );
        // into a text column they stay PostgreSQL's text
        assert_eq!(
            src(text("{1,2}"), "_int4", ty("longtext", "longtext")).unwrap(),
            "'{1,2}'"
        );
        assert!(src(text("{1,2"), "_int4", TargetType::Json).is_err());
        let dec = TargetType::Decimal {
            precision: 12,
            scale: 2,
        };
        assert_eq!(
            src(text("-$1,234.56"), "money", dec.clone()).unwrap(),
            "-1234.56"
        );
        assert!(src(text("1.234,56 €"), "money", dec.clone()).is_err());
        assert!(src(text("$1.00"), "text", dec).is_err());
    }

    #[test]
    fn years() {
        assert_eq!(
            lit(Value::Int(2024), ty("year", "year(4)")).unwrap(),
            "2024"
        );
        assert!(lit(Value::Int(1800), ty("year", "year(4)")).is_err());
    }
}

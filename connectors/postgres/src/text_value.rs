//! PostgreSQL text-format values (as pgoutput sends them) to [`Value`].
//!
//! The replication session sets `TimeZone=UTC`, `DateStyle=ISO`,
//! `bytea_output=hex` and `extra_float_digits=3`, so the server's output
//! functions produce the canonical forms parsed here; the parsers still accept
//! any UTC offset and the `escape` bytea format.
//!
//! `IntervalStyle=iso_8601` too, so intervals arrive as `P1Y2M3DT4H5M6.5S`.
//!
//! [`decode`] never fails: capture must not halt a store for a value. Types
//! without a conversion of their own (enums, domains of them, citext, inet,
//! money, ranges, arrays, timetz, …) are carried as their PostgreSQL text
//! form and the sink decides; a value that cannot be decoded (a date beyond
//! chrono's range, invalid UTF-8) becomes [`Value::Undecodable`], which the
//! sink refuses by name for the pipeline concerned. Errors never contain the
//! value: only what kind of value failed.

use callosum_api::{Interval, Value};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use thiserror::Error;

/// Type oids of the built-in types Callosum converts.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// Why a text value could not be converted. Never carries the value.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TextValueError {
    /// Callosum has no conversion for this type.
    #[error("unsupported type")]
    Unsupported,
    /// The text is not a valid value of the type (or is out of the range
    /// Callosum can represent, such as `infinity` dates).
    #[error("invalid or out-of-range {0} value")]
    Invalid(&'static str),
}

/// The `pg_type.typname` of the built-in types Callosum converts, `None` for
/// every other type (look those up in `pg_type`).
pub fn builtin_type_name(type_oid: u32) -> Option<&'static str> {
    Some(match type_oid {
        oid::BOOL => "bool",
        oid::BYTEA => "bytea",
        oid::INT8 => "int8",
        oid::INT2 => "int2",
        oid::INT4 => "int4",
        oid::TEXT => "text",
        oid::JSON => "json",
        oid::FLOAT4 => "float4",
        oid::FLOAT8 => "float8",
        oid::BPCHAR => "bpchar",
        oid::VARCHAR => "varchar",
        oid::DATE => "date",
        oid::TIME => "time",
        oid::TIMESTAMP => "timestamp",
        oid::TIMESTAMPTZ => "timestamptz",
        oid::INTERVAL => "interval",
        oid::NUMERIC => "numeric",
        oid::UUID => "uuid",
        oid::JSONB => "jsonb",
        _ => return None,
    })
}

/// Whether [`convert`] handles values of this type.
pub fn is_supported(type_oid: u32) -> bool {
    builtin_type_name(type_oid).is_some()
}

/// Decodes one text-format value of a column of type `type_oid` (named
/// `type_name`, for [`Value::Undecodable`]). Never fails and never panics.
pub fn decode(type_oid: u32, type_name: &str, text: Vec<u8>) -> Value {
    let undecodable = |reason: String| Value::Undecodable {
        type_name: type_name.to_string(),
        reason,
    };
    if !is_supported(type_oid) {
        return match String::from_utf8(text) {
            Ok(text) => Value::Text(text),
            Err(_) => undecodable("the text form is not valid UTF-8".into()),
        };
    }
    match convert(type_oid, text) {
        Ok(value) => value,
        Err(err) => undecodable(err.to_string()),
    }
}

/// Converts one text-format value of a built-in type `type_oid` to a
/// [`Value`] (see [`decode`] for every type).
pub fn convert(type_oid: u32, text: Vec<u8>) -> Result<Value, TextValueError> {
    if !is_supported(type_oid) {
        return Err(TextValueError::Unsupported);
    }
    if type_oid == oid::BYTEA {
        return parse_bytea(&text).map(Value::Bytes);
    }
    let text = String::from_utf8(text).map_err(|_| TextValueError::Invalid("UTF-8 text"))?;
    Ok(match type_oid {
        oid::BOOL => match text.as_str() {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => return Err(TextValueError::Invalid("bool")),
        },
        oid::INT2 | oid::INT4 | oid::INT8 => Value::Int(
            text.parse()
                .map_err(|_| TextValueError::Invalid("integer"))?,
        ),
        oid::FLOAT4 | oid::FLOAT8 => Value::Float(parse_float(&text)?),
        oid::NUMERIC => {
            if !is_numeric_text(&text) {
                return Err(TextValueError::Invalid("numeric"));
            }
            Value::Decimal(text)
        }
        oid::TEXT | oid::VARCHAR | oid::BPCHAR => Value::Text(text),
        oid::DATE | oid::TIMESTAMP | oid::TIMESTAMPTZ if text == "infinity" => {
            Value::Infinity { negative: false }
        }
        oid::DATE | oid::TIMESTAMP | oid::TIMESTAMPTZ if text == "-infinity" => {
            Value::Infinity { negative: true }
        }
        oid::DATE => Value::Date(parse_date(&text)?),
        // PostgreSQL's time holds 24:00:00, a time of day chrono lacks: carry
        // it exactly as a 24 h duration.
        oid::TIME if text == "24:00:00" => Value::Interval(Interval::from_micros(86_400_000_000)),
        oid::TIME => Value::Time(parse_time(&text)?),
        oid::TIMESTAMP => Value::Timestamp(parse_timestamp(&text)?),
        oid::TIMESTAMPTZ => Value::TimestampTz(parse_timestamptz(&text)?),
        oid::INTERVAL => Value::Interval(parse_interval(&text)?),
        oid::UUID => {
            if !is_uuid_text(&text) {
                return Err(TextValueError::Invalid("uuid"));
            }
            Value::Uuid(text.to_ascii_lowercase())
        }
        oid::JSON | oid::JSONB => Value::Json(text),
        _ => return Err(TextValueError::Unsupported),
    })
}

/// ISO 8601 as PostgreSQL writes it with `IntervalStyle=iso_8601`: every
/// field carries its own sign, e.g. `P-1Y2M3DT-4H5M-6.5S`; `PT0S` for zero.
fn parse_interval(text: &str) -> Result<Interval, TextValueError> {
    const INVALID: TextValueError = TextValueError::Invalid("interval");
    let rest = text.strip_prefix('P').ok_or(INVALID)?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return Err(INVALID),
        None => (rest, None),
    };
    let mut out = Interval {
        months: 0,
        days: 0,
        micros: 0,
    };
    if date.is_empty() && time.is_none() {
        return Err(INVALID);
    }
    for (number, unit) in fields(date).ok_or(INVALID)? {
        let n: i32 = number.parse().map_err(|_| INVALID)?;
        let (field, add) = match unit {
            'Y' => (&mut out.months, n.checked_mul(12)),
            'M' => (&mut out.months, Some(n)),
            'D' => (&mut out.days, Some(n)),
            _ => return Err(INVALID),
        };
        *field = add.and_then(|add| field.checked_add(add)).ok_or(INVALID)?;
    }
    for (number, unit) in fields(time.unwrap_or("")).ok_or(INVALID)? {
        let micros = match unit {
            'H' | 'M' => {
                let n: i64 = number.parse().map_err(|_| INVALID)?;
                n.checked_mul(if unit == 'H' {
                    3_600_000_000
                } else {
                    60_000_000
                })
            }
            'S' => parse_seconds_micros(number),
            _ => None,
        }
        .ok_or(INVALID)?;
        out.micros = out.micros.checked_add(micros).ok_or(INVALID)?;
    }
    Ok(out)
}

/// Splits `1Y-2M3D` into `("1", 'Y'), ("-2", 'M'), ("3", 'D')`.
fn fields(text: &str) -> Option<Vec<(&str, char)>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c.is_ascii_uppercase() {
            let number = &text[start..i];
            let digits = number.strip_prefix('-').unwrap_or(number);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                return None;
            }
            if c != 'S' && digits.contains('.') {
                return None;
            }
            out.push((number, c));
            start = i + 1;
        }
    }
    (start == text.len()).then_some(out)
}

/// `-6.5` seconds as microseconds (at most 6 fraction digits).
fn parse_seconds_micros(number: &str) -> Option<i64> {
    let (negative, digits) = match number.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, number),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() || fraction.len() > 6 || fraction.contains('.') {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let fraction: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<6}").parse().ok()?
    };
    let micros = whole.checked_mul(1_000_000)?.checked_add(fraction)?;
    Some(if negative { -micros } else { micros })
}

fn parse_float(text: &str) -> Result<f64, TextValueError> {
    match text {
        "NaN" => Ok(f64::NAN),
        "Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        _ => text
            .parse::<f64>()
            .map_err(|_| TextValueError::Invalid("float")),
    }
}

fn is_numeric_text(text: &str) -> bool {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        return true;
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match digits.split_once('.') {
        Some((int, frac)) => all_digits(int) && all_digits(frac),
        None => all_digits(digits),
    }
}

fn is_uuid_text(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `\x0aff…` (hex) or the legacy escape format.
fn parse_bytea(text: &[u8]) -> Result<Vec<u8>, TextValueError> {
    const INVALID: TextValueError = TextValueError::Invalid("bytea");
    if let Some(hex) = text.strip_prefix(b"\\x") {
        if hex.len() % 2 != 0 {
            return Err(INVALID);
        }
        return hex
            .chunks_exact(2)
            .map(|p| Some(hex_digit(p[0])? << 4 | hex_digit(p[1])?))
            .collect::<Option<Vec<u8>>>()
            .ok_or(INVALID);
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] != b'\\' {
            out.push(text[i]);
            i += 1;
        } else if text.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let oct = text.get(i + 1..i + 4).ok_or(INVALID)?;
            if !oct.iter().all(|c| (b'0'..=b'7').contains(c)) || oct[0] > b'3' {
                return Err(INVALID);
            }
            out.push((oct[0] - b'0') << 6 | (oct[1] - b'0') << 3 | (oct[2] - b'0'));
            i += 4;
        }
    }
    Ok(out)
}

/// Splits a trailing ` BC` era marker.
fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (text, false),
    }
}

fn parse_date(text: &str) -> Result<NaiveDate, TextValueError> {
    let (text, bc) = strip_bc(text);
    parse_date_body(text, bc)
}

fn parse_date_body(text: &str, bc: bool) -> Result<NaiveDate, TextValueError> {
    const INVALID: TextValueError = TextValueError::Invalid("date");
    let mut parts = text.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(INVALID);
    };
    let all_digits =
        |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
    if !(all_digits(y) && all_digits(m) && all_digits(d)) {
        return Err(INVALID);
    }
    let y: i32 = y.parse().map_err(|_| INVALID)?;
    // ISO year numbering: 1 BC is year 0.
    let y = if bc { 1 - y } else { y };
    NaiveDate::from_ymd_opt(
        y,
        m.parse().map_err(|_| INVALID)?,
        d.parse().map_err(|_| INVALID)?,
    )
    .ok_or(INVALID)
}

fn parse_time(text: &str) -> Result<NaiveTime, TextValueError> {
    NaiveTime::parse_from_str(text, "%H:%M:%S%.f").map_err(|_| TextValueError::Invalid("time"))
}

fn parse_timestamp(text: &str) -> Result<NaiveDateTime, TextValueError> {
    let (body, bc) = strip_bc(text);
    parse_timestamp_body(body, bc)
}

fn parse_timestamp_body(text: &str, bc: bool) -> Result<NaiveDateTime, TextValueError> {
    const INVALID: TextValueError = TextValueError::Invalid("timestamp");
    let (date, time) = text.split_once(' ').ok_or(INVALID)?;
    let date = parse_date_body(date, bc).map_err(|_| INVALID)?;
    let time = NaiveTime::parse_from_str(time, "%H:%M:%S%.f").map_err(|_| INVALID)?;
    Ok(date.and_time(time))
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]±HH[:MM[:SS]][ BC]`.
fn parse_timestamptz(text: &str) -> Result<DateTime<Utc>, TextValueError> {
    const INVALID: TextValueError = TextValueError::Invalid("timestamptz");
    let (body, bc) = strip_bc(text);
    let (date, rest) = body.split_once(' ').ok_or(INVALID)?;
    let sign_at = rest.find(['+', '-']).ok_or(INVALID)?;
    let (time, offset) = rest.split_at(sign_at);
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let mut seconds = 0i32;
    let mut parts = 0;
    for (i, part) in offset[1..].split(':').enumerate() {
        if i > 2 || part.len() != 2 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(INVALID);
        }
        let n: i32 = part.parse().map_err(|_| INVALID)?;
        seconds += n * [3600, 60, 1][i];
        parts += 1;
    }
    if parts == 0 {
        return Err(INVALID);
    }
    let offset = FixedOffset::east_opt(sign * seconds).ok_or(INVALID)?;
    let local =
        parse_timestamp_body(&body[..date.len() + 1 + time.len()], bc).map_err(|_| INVALID)?;
    offset
        .from_local_datetime(&local)
        .single()
        .map(|t| t.with_timezone(&Utc))
        .ok_or(INVALID)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn conv(type_oid: u32, text: &str) -> Result<Value, TextValueError> {
        convert(type_oid, text.as_bytes().to_vec())
    }

    #[test]
    fn scalars() {
        assert_eq!(conv(oid::BOOL, "t"), Ok(Value::Bool(true)));
        assert_eq!(conv(oid::BOOL, "f"), Ok(Value::Bool(false)));
        assert!(conv(oid::BOOL, "x").is_err());
        assert_eq!(conv(oid::INT2, "-32768"), Ok(Value::Int(-32768)));
        assert_eq!(
            conv(oid::INT8, "9223372036854775807"),
            Ok(Value::Int(i64::MAX))
        );
        assert_eq!(conv(oid::FLOAT8, "1.5"), Ok(Value::Float(1.5)));
        assert_eq!(conv(oid::FLOAT4, "1.1"), Ok(Value::Float(1.1)));
        assert_eq!(
            conv(oid::FLOAT8, "Infinity"),
            Ok(Value::Float(f64::INFINITY))
        );
        assert_eq!(
            conv(oid::FLOAT8, "-Infinity"),
            Ok(Value::Float(f64::NEG_INFINITY))
        );
        assert!(matches!(conv(oid::FLOAT4, "NaN"), Ok(Value::Float(f)) if f.is_nan()));
        assert_eq!(
            conv(oid::NUMERIC, "-12.50"),
            Ok(Value::Decimal("-12.50".into()))
        );
        assert_eq!(conv(oid::NUMERIC, "NaN"), Ok(Value::Decimal("NaN".into())));
        assert!(conv(oid::NUMERIC, "1.").is_err());
        assert!(conv(oid::NUMERIC, "1e5").is_err());
        assert_eq!(conv(oid::BPCHAR, "ab  "), Ok(Value::Text("ab  ".into())));
        assert_eq!(
            conv(oid::UUID, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
            Ok(Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()))
        );
        assert_eq!(
            conv(oid::JSONB, r#"{"a": 1}"#),
            Ok(Value::Json(r#"{"a": 1}"#.into()))
        );
        assert_eq!(conv(869, "127.0.0.1"), Err(TextValueError::Unsupported));
        assert_eq!(
            decode(869, "inet", b"127.0.0.1".to_vec()),
            Value::Text("127.0.0.1".into())
        );
        assert!(matches!(
            decode(16_385, "deal_stage", vec![0xff]),
            Value::Undecodable { ref type_name, .. } if type_name == "deal_stage"
        ));
    }

    #[test]
    fn bytea_hex_and_escape() {
        assert_eq!(
            conv(oid::BYTEA, r"\x00ff10"),
            Ok(Value::Bytes(vec![0, 255, 16]))
        );
        assert_eq!(conv(oid::BYTEA, r"\x"), Ok(Value::Bytes(vec![])));
        assert!(conv(oid::BYTEA, r"\x0").is_err());
        assert!(conv(oid::BYTEA, r"\xzz").is_err());
        assert_eq!(
            conv(oid::BYTEA, r"a\\b\000\377"),
            Ok(Value::Bytes(vec![b'a', b'\\', b'b', 0, 255]))
        );
        assert!(conv(oid::BYTEA, r"\9").is_err());
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(
            conv(oid::DATE, "2024-02-29"),
            Ok(Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()))
        );
        assert_eq!(
            conv(oid::DATE, "0044-03-15 BC"),
            Ok(Value::Date(NaiveDate::from_ymd_opt(-43, 3, 15).unwrap()))
        );
        assert_eq!(
            conv(oid::DATE, "infinity"),
            Ok(Value::Infinity { negative: false })
        );
        assert_eq!(
            conv(oid::TIMESTAMP, "-infinity"),
            Ok(Value::Infinity { negative: true })
        );
        assert_eq!(
            conv(oid::TIME, "13:45:01.5"),
            Ok(Value::Time(
                NaiveTime::from_hms_milli_opt(13, 45, 1, 500).unwrap()
            ))
        );
        assert_eq!(
            conv(oid::TIME, "24:00:00"),
            Ok(Value::Interval(Interval::from_micros(86_400_000_000)))
        );
        assert!(conv(oid::TIME, "24:00:01").is_err());
        let ts = NaiveDate::from_ymd_opt(2024, 1, 2)
            .unwrap()
            .and_hms_micro_opt(3, 4, 5, 6)
            .unwrap();
        assert_eq!(
            conv(oid::TIMESTAMP, "2024-01-02 03:04:05.000006"),
            Ok(Value::Timestamp(ts))
        );
        assert_eq!(
            conv(oid::TIMESTAMPTZ, "2024-01-02 03:04:05.000006+00"),
            Ok(Value::TimestampTz(ts.and_utc()))
        );
        assert_eq!(
            conv(oid::TIMESTAMPTZ, "2024-01-02 08:34:05.000006+05:30"),
            Ok(Value::TimestampTz(ts.and_utc()))
        );
        assert_eq!(
            conv(oid::TIMESTAMPTZ, "2024-01-01 23:04:05.000006-04"),
            Ok(Value::TimestampTz(ts.and_utc()))
        );
        assert!(conv(oid::TIMESTAMPTZ, "2024-01-02 03:04:05").is_err());
        assert_eq!(
            conv(oid::TIMESTAMPTZ, "infinity"),
            Ok(Value::Infinity { negative: false })
        );
        // Beyond chrono's years: carried as undecodable, never an error.
        assert_eq!(
            decode(oid::DATE, "date", b"5874897-12-31".to_vec()),
            Value::Undecodable {
                type_name: "date".into(),
                reason: "invalid or out-of-range date value".into()
            }
        );
        assert_eq!(
            conv(oid::TIMESTAMP, "0001-01-01 00:00:00 BC"),
            Ok(Value::Timestamp(
                NaiveDate::from_ymd_opt(0, 1, 1)
                    .unwrap()
                    .and_hms_opt(0, 0, 0)
                    .unwrap()
            ))
        );
    }

    #[test]
    fn intervals() {
        let iv = |months, days, micros| {
            Ok(Value::Interval(Interval {
                months,
                days,
                micros,
            }))
        };
        assert_eq!(conv(oid::INTERVAL, "PT0S"), iv(0, 0, 0));
        assert_eq!(
            conv(oid::INTERVAL, "P1Y2M3DT4H5M6.5S"),
            iv(14, 3, 14_706_500_000)
        );
        assert_eq!(
            conv(oid::INTERVAL, "P-1Y-2M3DT-4H-5M-6.000001S"),
            iv(-14, 3, -14_706_000_001)
        );
        assert_eq!(conv(oid::INTERVAL, "PT-0.5S"), iv(0, 0, -500_000));
        for bad in [
            "",
            "P",
            "PT",
            "1D",
            "P1",
            "P1.5D",
            "PT1.1234567S",
            "P1X",
            "P--1D",
        ] {
            assert!(conv(oid::INTERVAL, bad).is_err(), "{bad}");
        }
    }

    fn interval_strategy() -> impl Strategy<Value = Interval> {
        (any::<i32>(), any::<i32>(), any::<i64>()).prop_map(|(months, days, micros)| Interval {
            months,
            days,
            micros,
        })
    }

    proptest! {
        /// The log codec's Display form (ISO 8601, PostgreSQL's sign rules)
        /// is what the server sends: decode inverts it for every interval.
        #[test]
        fn intervals_round_trip_through_iso_text(i in interval_strategy()) {
            prop_assert_eq!(conv(oid::INTERVAL, &i.to_string()), Ok(Value::Interval(i)));
        }

        #[test]
        fn unknown_types_carry_their_text(text in ".*") {
            prop_assert_eq!(decode(16_385, "deal_stage", text.clone().into_bytes()), Value::Text(text));
        }

        #[test]
        fn decode_never_panics(type_oid in prop::sample::select(vec![16u32, 17, 20, 21, 23, 25, 114, 700, 701, 1042, 1043, 1082, 1083, 1114, 1184, 1186, 1700, 2950, 3802, 869]),
                        bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = decode(type_oid, "t", bytes);
        }

        #[test]
        fn never_panics(type_oid in prop::sample::select(vec![16u32, 17, 20, 21, 23, 25, 114, 700, 701, 1042, 1043, 1082, 1083, 1114, 1184, 1700, 2950, 3802, 869]),
                        bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = convert(type_oid, bytes);
        }

        #[test]
        fn timestamps_round_trip_through_postgres_text(secs in -62_000_000_000i64..250_000_000_000, micros in 0u32..1_000_000) {
            let t = DateTime::from_timestamp(secs, micros * 1000).unwrap();
            let text = if t.year() <= 0 {
                format!("{:04}{}+00 BC", 1 - t.year(), t.format("-%m-%d %H:%M:%S%.6f"))
            } else {
                format!("{}+00", t.format("%Y-%m-%d %H:%M:%S%.6f"))
            };
            prop_assert_eq!(conv(oid::TIMESTAMPTZ, &text), Ok(Value::TimestampTz(t)));
        }
    }

    use chrono::Datelike;
}

//! Column values as they travel from a source to a sink.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use serde::{Deserialize, Serialize};

/// One column value, typed by what the source knows. The sink converts it to
/// the *target column's* type, read from the target's catalog, and fails with
/// an error naming store, table, column and type when it cannot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    /// PostgreSQL unchanged TOAST: the update did not touch this column and
    /// the source did not send its value. Never written as NULL: sinks leave
    /// the column out of the update.
    Unchanged,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    /// Exact decimal in its canonical text form (`-12.50`, `NaN`).
    Decimal(String),
    Text(String),
    Bytes(Vec<u8>),
    Date(NaiveDate),
    Time(NaiveTime),
    Timestamp(NaiveDateTime),
    /// An instant; sinks store it as UTC.
    TimestampTz(DateTime<Utc>),
    /// Canonical lowercase hyphenated form.
    Uuid(String),
    /// JSON document text.
    Json(String),
    /// A duration: PostgreSQL `interval`, and MySQL `TIME` values that are
    /// not a time of day (negative, or 24 h and over).
    Interval(Interval),
    /// PostgreSQL's `infinity` (or `-infinity` when `negative`) of a date or
    /// timestamp column: later (earlier) than every other value.
    Infinity {
        negative: bool,
    },
    /// A local date-time of a MariaDB/MySQL `DATETIME` column in a store with
    /// a configured `time_zone`, with the offset that zone had at that moment.
    /// Sinks write the local time into a column without zone and the instant
    /// into a zoned one.
    ZonedTimestamp(#[serde(with = "zoned_text")] DateTime<FixedOffset>),
    /// A value the source sent but Callosum cannot decode. Capture carries it
    /// instead of halting the store; the sink refuses it as a conversion error
    /// for the pipeline concerned (dead letter or halt, per `on_error`).
    /// `reason` never holds the value itself.
    Undecodable {
        type_name: String,
        reason: String,
    },
}

/// [`Value::ZonedTimestamp`] as text with the offset's seconds: a zone's
/// local mean time before its first standard offset has them (Berlin's is
/// +00:53:28), and chrono's own serde form (RFC 3339) drops them, which
/// moved the instant by up to 59 seconds through the change log. The text
/// is a string like chrono's, so logs written before still read (their
/// offsets had whole minutes or were already cut).
mod zoned_text {
    use chrono::{DateTime, FixedOffset, NaiveDateTime};
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    const LOCAL: &str = "%Y-%m-%dT%H:%M:%S%.f";

    pub fn serialize<S: Serializer>(ts: &DateTime<FixedOffset>, s: S) -> Result<S::Ok, S::Error> {
        let local = ts.naive_local().format(LOCAL);
        let offset = ts.offset().local_minus_utc();
        let sign = if offset < 0 { '-' } else { '+' };
        let a = offset.unsigned_abs();
        s.collect_str(&format_args!(
            "{local}{sign}{:02}:{:02}:{:02}",
            a / 3600,
            a / 60 % 60,
            a % 60
        ))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<FixedOffset>, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text)
            .or_else(|| text.parse().ok())
            .ok_or_else(|| D::Error::custom("invalid zoned timestamp"))
    }

    /// `<local>±hh:mm:ss`, as [`serialize`] writes it.
    fn parse(text: &str) -> Option<DateTime<FixedOffset>> {
        let at = text.len().checked_sub(9)?;
        let (local, offset) = (text.get(..at)?, text.get(at..)?.as_bytes());
        let sign = match offset[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let field = |i: usize| -> Option<i32> {
            let d = offset.get(i..i + 2)?;
            d.iter()
                .all(u8::is_ascii_digit)
                .then(|| i32::from(d[0] - b'0') * 10 + i32::from(d[1] - b'0'))
        };
        if offset[3] != b':' || offset[6] != b':' {
            return None;
        }
        let seconds = field(1)? * 3600 + field(4)? * 60 + field(7)?;
        let offset = FixedOffset::east_opt(sign * seconds)?;
        let local = NaiveDateTime::parse_from_str(local, LOCAL).ok()?;
        local.and_local_timezone(offset).single()
    }
}

/// A duration with PostgreSQL's three fields, so that `1 mon` and `30 days`
/// stay distinct. MySQL `TIME` durations use `micros` only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Interval {
    pub months: i32,
    pub days: i32,
    pub micros: i64,
}

impl Interval {
    /// A duration of `micros` microseconds (MySQL `TIME`).
    pub fn from_micros(micros: i64) -> Self {
        Interval {
            months: 0,
            days: 0,
            micros,
        }
    }
}

impl std::fmt::Display for Interval {
    /// ISO 8601 with PostgreSQL's sign rules per field (PostgreSQL's
    /// `IntervalStyle = iso_8601`), e.g. `P1Y2M3DT-4H5M6.000007S`; `PT0S`
    /// for zero.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.months == 0 && self.days == 0 && self.micros == 0 {
            return f.write_str("PT0S");
        }
        f.write_str("P")?;
        let (years, months) = (self.months / 12, self.months % 12);
        if years != 0 {
            write!(f, "{years}Y")?;
        }
        if months != 0 {
            write!(f, "{months}M")?;
        }
        if self.days != 0 {
            write!(f, "{}D", self.days)?;
        }
        if self.micros != 0 {
            f.write_str("T")?;
            let sign = if self.micros < 0 { "-" } else { "" };
            let abs = self.micros.unsigned_abs();
            let (hours, rest) = (abs / 3_600_000_000, abs % 3_600_000_000);
            let (minutes, rest) = (rest / 60_000_000, rest % 60_000_000);
            let (seconds, fraction) = (rest / 1_000_000, rest % 1_000_000);
            if hours != 0 {
                write!(f, "{sign}{hours}H")?;
            }
            if minutes != 0 {
                write!(f, "{sign}{minutes}M")?;
            }
            if seconds != 0 || fraction != 0 {
                write!(f, "{sign}{seconds}")?;
                if fraction != 0 {
                    let digits = format!("{fraction:06}");
                    write!(f, ".{}", digits.trim_end_matches('0'))?;
                }
                f.write_str("S")?;
            }
        }
        Ok(())
    }
}

/// The kind of a [`Value`], for error messages and metrics (never the value
/// itself: row values are not logged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    Null,
    Unchanged,
    Bool,
    Int,
    UInt,
    Float,
    Decimal,
    Text,
    Bytes,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Uuid,
    Json,
    Interval,
    Infinity,
    ZonedTimestamp,
    Undecodable,
}

impl Value {
    pub fn kind(&self) -> ValueKind {
        match self {
            Value::Null => ValueKind::Null,
            Value::Unchanged => ValueKind::Unchanged,
            Value::Bool(_) => ValueKind::Bool,
            Value::Int(_) => ValueKind::Int,
            Value::UInt(_) => ValueKind::UInt,
            Value::Float(_) => ValueKind::Float,
            Value::Decimal(_) => ValueKind::Decimal,
            Value::Text(_) => ValueKind::Text,
            Value::Bytes(_) => ValueKind::Bytes,
            Value::Date(_) => ValueKind::Date,
            Value::Time(_) => ValueKind::Time,
            Value::Timestamp(_) => ValueKind::Timestamp,
            Value::TimestampTz(_) => ValueKind::TimestampTz,
            Value::Uuid(_) => ValueKind::Uuid,
            Value::Json(_) => ValueKind::Json,
            Value::Interval(_) => ValueKind::Interval,
            Value::Infinity { .. } => ValueKind::Infinity,
            Value::ZonedTimestamp(_) => ValueKind::ZonedTimestamp,
            Value::Undecodable { .. } => ValueKind::Undecodable,
        }
    }

    pub fn is_unchanged(&self) -> bool {
        matches!(self, Value::Unchanged)
    }
}

#[cfg(test)]
mod tests {
    use super::{Interval, Value};
    use chrono::{DateTime, FixedOffset, NaiveDate};

    #[test]
    fn zoned_timestamps_keep_the_seconds_of_their_offset() {
        let local = NaiveDate::from_ymd_opt(1850, 3, 1)
            .unwrap()
            .and_hms_micro_opt(12, 0, 0, 5)
            .unwrap();
        for seconds in [3208, -3208, 0, 19_800, -86_399] {
            let zone = FixedOffset::east_opt(seconds).unwrap();
            let v = Value::ZonedTimestamp(local.and_local_timezone(zone).unwrap());
            let bytes = bincode::serialize(&v).unwrap();
            assert_eq!(bincode::deserialize::<Value>(&bytes).unwrap(), v);
        }
        // What chrono's serde wrote before (whole-minute offsets) still reads:
        // the variant's index, then chrono's RFC 3339 string.
        let old: DateTime<FixedOffset> = "2024-03-31T03:30:00.25+02:00".parse().unwrap();
        let bytes = bincode::serialize(&(17u32, old)).unwrap();
        assert_eq!(
            bincode::deserialize::<Value>(&bytes).unwrap(),
            Value::ZonedTimestamp(old)
        );
    }

    #[test]
    fn intervals_print_as_iso_8601_with_signs_per_field() {
        let i = |months, days, micros| {
            Interval {
                months,
                days,
                micros,
            }
            .to_string()
        };
        assert_eq!(i(0, 0, 0), "PT0S");
        assert_eq!(i(14, 3, 0), "P1Y2M3D");
        assert_eq!(
            i(0, 0, -(4 * 3_600_000_000 + 5 * 60_000_000 + 6_000_007)),
            "PT-4H-5M-6.000007S"
        );
        assert_eq!(i(0, -1, 1_500_000), "P-1DT1.5S");
        assert_eq!(i(0, 0, 838 * 3_600_000_000), "PT838H");
    }
}

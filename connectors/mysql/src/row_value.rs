//! Binlog row images → [`Value`]s.
//!
//! Callosum decodes row images itself instead of using mysql_common's
//! `BinlogRow`: that decoder panics (integer overflow) on negative `TIME(n)`
//! values, re-parses the table map's optional metadata for every row and
//! cannot tell text from binary strings. This one never panics on any input
//! (a proptest feeds it arbitrary bytes) and never puts a row value in an
//! error.
//!
//! Mapping (the sink converts to the *target column's* type):
//!
//! | MySQL/MariaDB type | [`Value`] | `source_type` |
//! |---|---|---|
//! | tinyint … bigint | `Int` (`UInt` when unsigned) | `tinyint` … `bigint`, `+ unsigned`; `tinyint(1)` when the catalog says so (the binlog cannot tell; it stays `Int` so the sink decides whether it is a boolean) |
//! | decimal | `Decimal` (text with the column's scale) | `decimal` |
//! | float, double | `Float` (a float: the shortest text of its 32 bits) | `float`, `double` |
//! | char, varchar, text | `Text`, by the column's charset ([`crate::charset`]); `Undecodable` when it cannot | `char`, `varchar`, `tinytext` … `longtext` |
//! | binary, varbinary, blob, geometry | `Bytes` (binary(n) padded to n) | `binary`, `varbinary`, `tinyblob` … `longblob`, `geometry` |
//! | date | `Date` | `date` |
//! | time | `Time`; negative or ≥ 24 h: `Interval` | `time` |
//! | datetime | `Timestamp`; `ZonedTimestamp` in a store with a `time_zone` | `datetime` |
//! | timestamp | `TimestampTz` (UTC) | `timestamp` |
//! | year | `Int` (`0` for the zero year) | `year` |
//! | enum, set | `Text` of the label(s), set labels joined by `,` | `enum`, `set` |
//! | bit | `UInt` | `bit` |
//! | MariaDB json (longtext with a `json_valid` check) | `Json` | `json` |
//! | MySQL 8 json (binary) | `Json` | `json` |
//!
//! Zero dates (`0000-00-00`, a zero month or day, a zero `timestamp`) are a
//! conversion error, or `Null` outside the primary key with
//! [`ZeroDates::Null`] (the store's `zero_dates = "null"`). The binlog does
//! not say whether a column is nullable: a zero date in a `NOT NULL` column
//! becomes `Null` all the same, and the target's `NOT NULL` constraint
//! rejects it with its own error.
//! MySQL 8's binary JSON is decoded by [`crate::jsonb`] (`Undecodable` when
//! malformed).

use callosum_api::{Interval, Value};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use mysql_async::consts::ColumnType;

use crate::charset::Charset;

/// Collation id of the `binary` character set.
pub const BINARY_CHARSET: u16 = 63;

/// One column of a table map, with what decoding needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    /// The real type (`ENUM`/`SET`/`STRING` resolved from the metadata).
    pub ty: ColumnType,
    /// The type's table-map metadata (0 to 2 bytes).
    pub meta: Vec<u8>,
    pub unsigned: bool,
    /// Collation id; 0 when the table map did not say.
    pub charset: u16,
    /// Enum or set labels, in definition order.
    pub labels: Vec<String>,
    /// A text column holding JSON (MariaDB's `json`).
    pub json: bool,
    /// The catalog says `tinyint(1)`.
    pub tiny1: bool,
    /// The store's `time_zone` for `DATETIME` columns; `None` is UTC.
    pub zone: Option<Tz>,
}

impl ColumnDef {
    /// A column with no metadata beyond its type.
    pub fn new(name: &str, ty: ColumnType, meta: &[u8]) -> ColumnDef {
        ColumnDef {
            name: name.to_string(),
            ty,
            meta: meta.to_vec(),
            unsigned: false,
            charset: 0,
            labels: Vec::new(),
            json: false,
            tiny1: false,
            zone: None,
        }
    }

    fn meta_byte(&self, i: usize) -> u8 {
        self.meta.get(i).copied().unwrap_or(0)
    }

    fn meta_u16(&self) -> usize {
        usize::from(self.meta_byte(0)) | (usize::from(self.meta_byte(1)) << 8)
    }

    fn is_binary(&self) -> bool {
        self.charset == BINARY_CHARSET
    }

    /// The MySQL type name (see the module docs).
    pub fn source_type(&self) -> String {
        use ColumnType::*;
        let int = |name: &str| {
            if self.unsigned {
                format!("{name} unsigned")
            } else {
                name.to_string()
            }
        };
        match self.ty {
            MYSQL_TYPE_TINY if self.tiny1 => int("tinyint(1)"),
            MYSQL_TYPE_TINY => int("tinyint"),
            MYSQL_TYPE_SHORT => int("smallint"),
            MYSQL_TYPE_INT24 => int("mediumint"),
            MYSQL_TYPE_LONG => int("int"),
            MYSQL_TYPE_LONGLONG => int("bigint"),
            MYSQL_TYPE_FLOAT => "float".into(),
            MYSQL_TYPE_DOUBLE => "double".into(),
            MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL => "decimal".into(),
            MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => "date".into(),
            MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => "time".into(),
            MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => "datetime".into(),
            MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => "timestamp".into(),
            MYSQL_TYPE_YEAR => "year".into(),
            MYSQL_TYPE_BIT => "bit".into(),
            MYSQL_TYPE_ENUM => "enum".into(),
            MYSQL_TYPE_SET => "set".into(),
            MYSQL_TYPE_JSON => "json".into(),
            MYSQL_TYPE_GEOMETRY => "geometry".into(),
            MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING if self.is_binary() => "varbinary".into(),
            MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING => "varchar".into(),
            MYSQL_TYPE_STRING if self.is_binary() => "binary".into(),
            MYSQL_TYPE_STRING => "char".into(),
            MYSQL_TYPE_TINY_BLOB
            | MYSQL_TYPE_BLOB
            | MYSQL_TYPE_MEDIUM_BLOB
            | MYSQL_TYPE_LONG_BLOB
                if self.json =>
            {
                "json".into()
            }
            MYSQL_TYPE_TINY_BLOB
            | MYSQL_TYPE_BLOB
            | MYSQL_TYPE_MEDIUM_BLOB
            | MYSQL_TYPE_LONG_BLOB => {
                let size = match self.meta_byte(0) {
                    1 => "tiny",
                    3 => "medium",
                    4 => "long",
                    _ => "",
                };
                let kind = if self.is_binary() { "blob" } else { "text" };
                format!("{size}{kind}")
            }
            other => format!("type {}", other as u8),
        }
    }
}

/// What a zero date (`0000-00-00`, a zero month or day, a zero `timestamp`)
/// decodes to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ZeroDates {
    /// A conversion error ([`ValueError::ZeroDate`]). The default: silently
    /// turning data into NULL must be the operator's choice.
    #[default]
    Error,
    /// [`Value::Null`], except in a primary key column (a NULL key would
    /// change which row an update or delete addresses): there it stays an
    /// error.
    Null,
}

/// Why a value could not be decoded. Never holds the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueError {
    /// The row image ended early or is malformed.
    Truncated,
    /// A zero date or datetime (`0000-00-00`).
    ZeroDate,
    /// A value the target [`Value`] cannot hold (what, never the value).
    Invalid(&'static str),
    /// A type Callosum does not decode.
    Unsupported,
}

impl std::fmt::Display for ValueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueError::Truncated => f.write_str("the row image is truncated or malformed"),
            ValueError::ZeroDate => {
                f.write_str("holds a zero date (0000-00-00), which has no equivalent outside MySQL")
            }
            ValueError::Invalid(what) => f.write_str(what),
            ValueError::Unsupported => f.write_str("Callosum cannot decode this type yet"),
        }
    }
}

/// A cursor over a row image.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ValueError> {
        if n > self.buf.len() {
            return Err(ValueError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn le(&mut self, n: usize) -> Result<u64, ValueError> {
        Ok(self
            .take(n)?
            .iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn be(&mut self, n: usize) -> Result<u64, ValueError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }
}

/// A decoded row image: values (`None` for columns not in the image) and
/// the bytes after it.
pub type Image<'a> = (Vec<Option<Value>>, &'a [u8]);

/// Decodes the values of one row image: `present[i]` says whether column
/// `i` is in the image. On failure, says which column. A zero date is an
/// error ([`ZeroDates::Error`]); see [`decode_image_with`].
pub fn decode_image<'a>(
    columns: &[ColumnDef],
    present: &[bool],
    data: &'a [u8],
) -> Result<Image<'a>, (usize, ValueError)> {
    decode_image_with(columns, present, data, ZeroDates::Error, &[])
}

/// [`decode_image`], with zero dates decoded as `zero_dates` says, except
/// in the primary key's columns `keys`, where a zero date is always an
/// error.
pub fn decode_image_with<'a>(
    columns: &[ColumnDef],
    present: &[bool],
    data: &'a [u8],
    zero_dates: ZeroDates,
    keys: &[usize],
) -> Result<Image<'a>, (usize, ValueError)> {
    let count = present.iter().take(columns.len()).filter(|p| **p).count();
    let mut r = Reader { buf: data };
    let nulls = r.take(count.div_ceil(8)).map_err(|e| (0, e))?;
    let mut values = Vec::with_capacity(columns.len());
    let mut image_index = 0usize;
    for (i, column) in columns.iter().enumerate() {
        if !present.get(i).copied().unwrap_or(false) {
            values.push(None);
            continue;
        }
        let null = nulls[image_index / 8] & (1 << (image_index % 8)) != 0;
        image_index += 1;
        if null {
            values.push(Some(Value::Null));
            continue;
        }
        match decode_value(column, &mut r) {
            Ok(value) => values.push(Some(value)),
            // `decode_value` reports a zero date only after reading the
            // whole value, so the next column starts where it should.
            Err(ValueError::ZeroDate) if zero_dates == ZeroDates::Null && !keys.contains(&i) => {
                values.push(Some(Value::Null))
            }
            Err(e) => return Err((i, e)),
        }
    }
    Ok((values, r.buf))
}

fn decode_value(c: &ColumnDef, r: &mut Reader<'_>) -> Result<Value, ValueError> {
    use ColumnType::*;
    let int = |r: &mut Reader<'_>, n: usize| -> Result<Value, ValueError> {
        let raw = r.le(n)?;
        Ok(if c.unsigned {
            Value::UInt(raw)
        } else {
            let shift = 64 - 8 * n as u32;
            Value::Int(((raw << shift) as i64) >> shift)
        })
    };
    match c.ty {
        MYSQL_TYPE_TINY => int(r, 1),
        MYSQL_TYPE_SHORT => int(r, 2),
        MYSQL_TYPE_INT24 => int(r, 3),
        MYSQL_TYPE_LONG => int(r, 4),
        MYSQL_TYPE_LONGLONG => int(r, 8),
        MYSQL_TYPE_FLOAT => Ok(Value::Float(float32(f32::from_bits(r.le(4)? as u32)))),
        MYSQL_TYPE_DOUBLE => Ok(Value::Float(f64::from_bits(r.le(8)?))),
        MYSQL_TYPE_NEWDECIMAL => {
            decimal(r, c.meta_byte(0).into(), c.meta_byte(1).into()).map(Value::Decimal)
        }
        MYSQL_TYPE_YEAR => {
            let y = r.le(1)? as i64;
            Ok(Value::Int(if y == 0 { 0 } else { 1900 + y }))
        }
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => {
            let v = r.le(3)?;
            date((v >> 9) as i32, ((v >> 5) & 15) as u32, (v & 31) as u32).map(Value::Date)
        }
        MYSQL_TYPE_DATETIME2 => {
            let int_part = r.be(5)? as i64 - 0x80_0000_0000;
            let frac = fraction(r, c.meta_byte(0))?;
            if int_part < 0 {
                return Err(ValueError::Invalid("negative datetime"));
            }
            let ymd = int_part >> 17;
            let hms = int_part % (1 << 17);
            let ym = ymd >> 5;
            let d = date((ym / 13) as i32, (ym % 13) as u32, (ymd % 32) as u32)?;
            let t = time(
                (hms >> 12) as u32,
                ((hms >> 6) % 64) as u32,
                (hms % 64) as u32,
                frac,
            )?;
            Ok(local_datetime(c, NaiveDateTime::new(d, t)))
        }
        MYSQL_TYPE_DATETIME => {
            let v = r.le(8)?;
            let (d, t) = (v / 1_000_000, v % 1_000_000);
            let d = date(
                (d / 10_000) as i32,
                ((d / 100) % 100) as u32,
                (d % 100) as u32,
            )?;
            let t = time(
                (t / 10_000) as u32,
                ((t / 100) % 100) as u32,
                (t % 100) as u32,
                0,
            )?;
            Ok(local_datetime(c, NaiveDateTime::new(d, t)))
        }
        MYSQL_TYPE_TIMESTAMP2 => {
            let secs = r.be(4)? as i64;
            let frac = fraction(r, c.meta_byte(0))?;
            timestamp(secs, frac)
        }
        MYSQL_TYPE_TIMESTAMP => timestamp(r.le(4)? as i64, 0),
        MYSQL_TYPE_TIME2 => time2(r, c.meta_byte(0)).and_then(duration),
        MYSQL_TYPE_TIME => {
            let raw = r.le(3)?;
            let v = ((raw << 40) as i64) >> 40;
            let abs = v.unsigned_abs() as i64;
            let (h, m, s) = (abs / 10_000, (abs / 100) % 100, abs % 100);
            if m >= 60 || s >= 60 {
                return Err(ValueError::Invalid("an invalid time"));
            }
            let micros = ((h * 60 + m) * 60 + s) * 1_000_000;
            duration(if v < 0 { -micros } else { micros })
        }
        MYSQL_TYPE_JSON => {
            let prefix = usize::from(c.meta_byte(0));
            if !(1..=4).contains(&prefix) {
                return Err(ValueError::Truncated);
            }
            let n = r.le(prefix)? as usize;
            let bytes = r.take(n)?;
            Ok(match crate::jsonb::to_json_text(bytes) {
                Ok(text) => Value::Json(text),
                Err(reason) => undecodable(c, reason),
            })
        }
        MYSQL_TYPE_BIT => {
            let n = usize::from(c.meta_byte(1)) + usize::from(c.meta_byte(0) > 0);
            if n > 8 {
                return Err(ValueError::Truncated);
            }
            Ok(Value::UInt(r.be(n)?))
        }
        MYSQL_TYPE_ENUM => {
            let n = usize::from(c.meta_byte(1));
            if !(1..=2).contains(&n) {
                return Err(ValueError::Truncated);
            }
            let index = r.le(n)? as usize;
            if index == 0 {
                // The "error" member MySQL stores for an invalid value.
                return Ok(Value::Text(String::new()));
            }
            c.labels
                .get(index - 1)
                .map(|l| Value::Text(l.clone()))
                .ok_or(ValueError::Invalid(
                    "an enum index without a label (binlog_row_metadata is not FULL?)",
                ))
        }
        MYSQL_TYPE_SET => {
            let n = usize::from(c.meta_byte(1));
            if n > 8 {
                return Err(ValueError::Truncated);
            }
            let bits = r.le(n)?;
            let mut labels = Vec::new();
            for i in 0..(8 * n) {
                if bits & (1u64 << i) != 0 {
                    labels.push(
                        c.labels
                            .get(i)
                            .map(String::as_str)
                            .ok_or(ValueError::Invalid(
                                "a set member without a label (binlog_row_metadata is not FULL?)",
                            ))?,
                    );
                }
            }
            Ok(Value::Text(labels.join(",")))
        }
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING => {
            let prefix = if c.meta_u16() < 256 { 1 } else { 2 };
            let n = r.le(prefix)? as usize;
            string(c, r.take(n)?)
        }
        MYSQL_TYPE_STRING => {
            let (b0, b1) = (usize::from(c.meta_byte(0)), usize::from(c.meta_byte(1)));
            let max = if b0 & 0x30 != 0x30 {
                b1 | (((b0 & 0x30) ^ 0x30) << 4)
            } else {
                b1
            };
            let prefix = if max < 256 { 1 } else { 2 };
            let n = r.le(prefix)? as usize;
            let bytes = r.take(n)?;
            if c.is_binary() && bytes.len() < max {
                // The binlog strips binary(n)'s trailing zero bytes; the
                // column holds them.
                let mut padded = bytes.to_vec();
                padded.resize(max, 0);
                return Ok(Value::Bytes(padded));
            }
            string(c, bytes)
        }
        MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_GEOMETRY => {
            let prefix = usize::from(c.meta_byte(0));
            if !(1..=4).contains(&prefix) {
                return Err(ValueError::Truncated);
            }
            let n = r.le(prefix)? as usize;
            let bytes = r.take(n)?;
            if c.ty == MYSQL_TYPE_GEOMETRY {
                Ok(Value::Bytes(bytes.to_vec()))
            } else {
                string(c, bytes)
            }
        }
        _ => Err(ValueError::Unsupported),
    }
}

/// Text by the column's character set (never guessed); bytes that are not
/// valid in it, or a set Callosum does not decode, are
/// [`Value::Undecodable`]: the sink refuses them by name, capture goes on.
fn string(c: &ColumnDef, bytes: &[u8]) -> Result<Value, ValueError> {
    if c.is_binary() {
        return Ok(Value::Bytes(bytes.to_vec()));
    }
    let charset = Charset::of_collation(c.charset);
    if let Charset::Unsupported(name) = &charset {
        return Ok(Value::Undecodable {
            type_name: c.source_type(),
            reason: format!("character set {name}, which Callosum does not decode"),
        });
    }
    Ok(match charset.decode(bytes) {
        Ok(text) if c.json => Value::Json(text),
        Ok(text) => Value::Text(text),
        Err(reason) => undecodable(c, reason),
    })
}

fn undecodable(c: &ColumnDef, reason: &str) -> Value {
    Value::Undecodable {
        type_name: c.source_type(),
        reason: reason.to_string(),
    }
}

/// A FLOAT as the shortest decimal text of its 32-bit value, widened:
/// `0.1` stays `0.1` (not `0.10000000149011612`) in every target.
pub fn float32(f: f32) -> f64 {
    if !f.is_finite() {
        return f64::from(f);
    }
    f.to_string().parse().unwrap_or(f64::from(f))
}

/// A MySQL TIME in microseconds: a time of day when it is one (0 to under
/// 24 h), otherwise a duration.
fn duration(micros: i64) -> Result<Value, ValueError> {
    if (0..86_400_000_000).contains(&micros) {
        let secs = (micros / 1_000_000) as u32;
        return NaiveTime::from_num_seconds_from_midnight_opt(
            secs,
            (micros % 1_000_000) as u32 * 1000,
        )
        .map(Value::Time)
        .ok_or(ValueError::Invalid("an invalid time"));
    }
    Ok(Value::Interval(Interval::from_micros(micros)))
}

/// A DATETIME: the local time of the store's `time_zone`. UTC (the
/// default) keeps it a [`Value::Timestamp`]; another zone makes it a
/// [`Value::ZonedTimestamp`] with the offset the zone had then. A local time
/// in a DST gap takes the offset before the gap (as PostgreSQL does: 02:30
/// on a spring-forward night is 03:30 summer time); one in an overlap takes
/// the earlier instant (the summer-time offset).
fn local_datetime(c: &ColumnDef, local: NaiveDateTime) -> Value {
    let Some(zone) = c.zone else {
        return Value::Timestamp(local);
    };
    Value::ZonedTimestamp(zoned(zone, local))
}

/// `local` in `zone` with the offset the gap/overlap rule of
/// [`local_datetime`] gives.
pub fn zoned(zone: Tz, local: NaiveDateTime) -> DateTime<chrono::FixedOffset> {
    let offset = match zone.offset_from_local_datetime(&local) {
        chrono::LocalResult::Single(o) => o.fix(),
        chrono::LocalResult::Ambiguous(a, b) => {
            let (a, b) = (a.fix(), b.fix());
            // The earlier instant has the larger offset.
            if a.local_minus_utc() >= b.local_minus_utc() {
                a
            } else {
                b
            }
        }
        chrono::LocalResult::None => {
            // The offset in force just before the gap (gaps are at most
            // a few hours long).
            let before = local - chrono::Duration::hours(6);
            match zone.offset_from_local_datetime(&before).earliest() {
                Some(o) => o.fix(),
                None => chrono::FixedOffset::east_opt(0).expect("zero offset"),
            }
        }
    };
    offset
        .from_local_datetime(&local)
        .single()
        .unwrap_or_else(|| Utc.from_utc_datetime(&local).fixed_offset())
}

fn date(y: i32, m: u32, d: u32) -> Result<NaiveDate, ValueError> {
    if y == 0 || m == 0 || d == 0 {
        return Err(ValueError::ZeroDate);
    }
    NaiveDate::from_ymd_opt(y, m, d).ok_or(ValueError::Invalid("an invalid date"))
}

fn time(h: u32, m: u32, s: u32, micros: u32) -> Result<NaiveTime, ValueError> {
    if h >= 24 {
        return Err(ValueError::Invalid(
            "a time of 24 hours or more, which has no equivalent outside MySQL",
        ));
    }
    NaiveTime::from_hms_micro_opt(h, m, s, micros).ok_or(ValueError::Invalid("an invalid time"))
}

fn timestamp(secs: i64, micros: u32) -> Result<Value, ValueError> {
    if secs == 0 && micros == 0 {
        return Err(ValueError::ZeroDate);
    }
    DateTime::<Utc>::from_timestamp(secs, micros * 1000)
        .map(Value::TimestampTz)
        .ok_or(ValueError::Invalid("an invalid timestamp"))
}

/// The fractional seconds of DATETIME2/TIMESTAMP2, in microseconds.
fn fraction(r: &mut Reader<'_>, fsp: u8) -> Result<u32, ValueError> {
    Ok(match fsp {
        1 | 2 => r.be(1)? as u32 * 10_000,
        3 | 4 => r.be(2)? as u32 * 100,
        5 | 6 => r.be(3)? as u32,
        _ => 0,
    })
    .and_then(|us| {
        if us >= 1_000_000 {
            Err(ValueError::Invalid("an invalid fraction of a second"))
        } else {
            Ok(us)
        }
    })
}

/// TIME2: a packed big-endian value offset so that it sorts as unsigned
/// (MySQL's `my_time_packed_from_binary`); returns signed microseconds.
fn time2(r: &mut Reader<'_>, fsp: u8) -> Result<i64, ValueError> {
    let packed = match fsp {
        1..=4 => {
            let mut int_part = r.be(3)? as i64 - 0x80_0000;
            let (mut frac, wrap, scale) = if fsp <= 2 {
                (r.be(1)? as i64, 0x100, 10_000)
            } else {
                (r.be(2)? as i64, 0x1_0000, 100)
            };
            if int_part < 0 && frac != 0 {
                int_part += 1;
                frac -= wrap;
            }
            (int_part << 24) + frac * scale
        }
        5 | 6 => r.be(6)? as i64 - 0x8000_0000_0000,
        _ => (r.be(3)? as i64 - 0x80_0000) << 24,
    };
    let abs = packed.unsigned_abs() as i64;
    let micros = abs % (1 << 24);
    let int_part = abs >> 24;
    let (h, m, s) = (
        (int_part >> 12) % (1 << 10),
        (int_part >> 6) % 64,
        int_part % 64,
    );
    if micros >= 1_000_000 || m >= 60 || s >= 60 {
        return Err(ValueError::Invalid("an invalid time"));
    }
    let total = ((h * 60 + m) * 60 + s) * 1_000_000 + micros;
    Ok(if packed < 0 { -total } else { total })
}

/// A binary DECIMAL(precision, scale) that is exactly `bytes`, as text.
pub(crate) fn decimal_text(
    bytes: &[u8],
    precision: usize,
    scale: usize,
) -> Result<String, ValueError> {
    let mut r = Reader { buf: bytes };
    let text = decimal(&mut r, precision, scale)?;
    if !r.buf.is_empty() {
        return Err(ValueError::Truncated);
    }
    Ok(text)
}

const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];

/// MySQL's binary DECIMAL: groups of 9 digits in 4 big-endian bytes, a
/// partial leading and trailing group, the sign in the first bit, negative
/// values stored inverted.
fn decimal(r: &mut Reader<'_>, precision: usize, scale: usize) -> Result<String, ValueError> {
    if precision == 0 || scale > precision || precision > 65 {
        return Err(ValueError::Truncated);
    }
    let intg = precision - scale;
    let (intg0, intg0x) = (intg / 9, intg % 9);
    let (frac0, frac0x) = (scale / 9, scale % 9);
    let size = intg0 * 4 + DIG2BYTES[intg0x] + frac0 * 4 + DIG2BYTES[frac0x];
    let mut bytes = r.take(size)?.to_vec();
    let negative = bytes[0] & 0x80 == 0;
    bytes[0] ^= 0x80;
    if negative {
        for b in &mut bytes {
            *b = !*b;
        }
    }
    let mut d = Reader { buf: &bytes };
    let group = |d: &mut Reader<'_>, n: usize, digits: usize| -> Result<u64, ValueError> {
        let v = d.be(n)?;
        if v >= 10u64.pow(digits as u32) {
            return Err(ValueError::Invalid("a malformed decimal"));
        }
        Ok(v)
    };
    let mut int_text = String::new();
    if intg0x > 0 {
        int_text.push_str(&group(&mut d, DIG2BYTES[intg0x], intg0x)?.to_string());
    }
    for _ in 0..intg0 {
        int_text.push_str(&format!("{:09}", group(&mut d, 4, 9)?));
    }
    let int_text = int_text.trim_start_matches('0');
    let mut frac_text = String::new();
    for _ in 0..frac0 {
        frac_text.push_str(&format!("{:09}", group(&mut d, 4, 9)?));
    }
    if frac0x > 0 {
        let v = group(&mut d, DIG2BYTES[frac0x], frac0x)?;
        frac_text.push_str(&format!("{v:0width$}", width = frac0x));
    }
    let mut out = String::new();
    let zero = int_text.is_empty() && frac_text.bytes().all(|b| b == b'0');
    if negative && !zero {
        out.push('-');
    }
    out.push_str(if int_text.is_empty() { "0" } else { int_text });
    if !frac_text.is_empty() {
        out.push('.');
        out.push_str(&frac_text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Timelike;
    use proptest::prelude::*;
    use ColumnType::*;

    fn col(ty: ColumnType, meta: &[u8]) -> ColumnDef {
        ColumnDef::new("c", ty, meta)
    }

    fn one(c: &ColumnDef, bytes: &[u8]) -> Result<Value, ValueError> {
        let mut data = vec![0u8];
        data.extend_from_slice(bytes);
        let (values, rest) =
            decode_image(std::slice::from_ref(c), &[true], &data).map_err(|e| e.1)?;
        assert!(rest.is_empty(), "unconsumed bytes");
        Ok(values.into_iter().next().flatten().unwrap())
    }

    #[test]
    fn integers_signed_and_unsigned() {
        assert_eq!(one(&col(MYSQL_TYPE_TINY, &[]), &[0xff]), Ok(Value::Int(-1)));
        let mut u = col(MYSQL_TYPE_TINY, &[]);
        u.unsigned = true;
        assert_eq!(one(&u, &[0xff]), Ok(Value::UInt(255)));
        assert_eq!(
            one(&col(MYSQL_TYPE_INT24, &[]), &[0xfe, 0xff, 0xff]),
            Ok(Value::Int(-2))
        );
        let mut big = col(MYSQL_TYPE_LONGLONG, &[]);
        big.unsigned = true;
        assert_eq!(one(&big, &[0xff; 8]), Ok(Value::UInt(u64::MAX)));
        assert_eq!(big.source_type(), "bigint unsigned");
        let mut t1 = col(MYSQL_TYPE_TINY, &[]);
        t1.tiny1 = true;
        assert_eq!(t1.source_type(), "tinyint(1)");
        assert_eq!(one(&t1, &[1]), Ok(Value::Int(1)));
        assert_eq!(
            one(&col(MYSQL_TYPE_DOUBLE, &[8]), &2.25f64.to_le_bytes()),
            Ok(Value::Float(2.25))
        );
        assert_eq!(
            one(&col(MYSQL_TYPE_FLOAT, &[4]), &1.5f32.to_le_bytes()),
            Ok(Value::Float(1.5))
        );
    }

    #[test]
    fn decimals() {
        // DECIMAL(10,3) -12.500 and 1234567.001 as MySQL writes them.
        let c = col(MYSQL_TYPE_NEWDECIMAL, &[10, 3]);
        // intg 7 → 4 bytes, frac 3 → 2 bytes.
        let pos = |i: u32, f: u16| {
            let mut b = i.to_be_bytes().to_vec();
            b.extend_from_slice(&f.to_be_bytes());
            b[0] ^= 0x80;
            b
        };
        assert_eq!(
            one(&c, &pos(1_234_567, 1)),
            Ok(Value::Decimal("1234567.001".into()))
        );
        let neg: Vec<u8> = pos(12, 500).iter().map(|b| !b).collect();
        assert_eq!(one(&c, &neg), Ok(Value::Decimal("-12.500".into())));
        assert_eq!(one(&c, &pos(0, 0)), Ok(Value::Decimal("0.000".into())));
        // DECIMAL(20,0): 2 digits in 1 byte then 9 in 4 bytes, twice.
        let c = col(MYSQL_TYPE_NEWDECIMAL, &[20, 0]);
        let mut b = vec![0x80, 0, 0, 0, 1];
        b.extend_from_slice(&999_999_999u32.to_be_bytes());
        assert_eq!(one(&c, &b), Ok(Value::Decimal("1999999999".into())));
    }

    #[test]
    fn temporal() {
        // DATE 2024-02-29
        let v: u32 = (2024 << 9) | (2 << 5) | 29;
        assert_eq!(
            one(&col(MYSQL_TYPE_DATE, &[]), &v.to_le_bytes()[..3]),
            Ok(Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()))
        );
        assert_eq!(
            one(&col(MYSQL_TYPE_DATE, &[]), &[0, 0, 0]),
            Err(ValueError::ZeroDate)
        );
        // DATETIME2(6) 2024-01-02 03:04:05.123456
        let ym = 2024 * 13 + 1;
        let int_part: i64 = (((ym << 5) | 2) << 17) | (3 << 12) | (4 << 6) | 5;
        let mut b = ((int_part + 0x80_0000_0000) as u64).to_be_bytes()[3..].to_vec();
        b.extend_from_slice(&123_456u32.to_be_bytes()[1..]);
        let expected = NaiveDate::from_ymd_opt(2024, 1, 2)
            .unwrap()
            .and_hms_micro_opt(3, 4, 5, 123_456)
            .unwrap();
        assert_eq!(
            one(&col(MYSQL_TYPE_DATETIME2, &[6]), &b),
            Ok(Value::Timestamp(expected))
        );
        // TIMESTAMP2(3)
        let mut b = 1_700_000_000u32.to_be_bytes().to_vec();
        b.extend_from_slice(&5000u16.to_be_bytes()); // units of 100 µs
        assert_eq!(
            one(&col(MYSQL_TYPE_TIMESTAMP2, &[3]), &b),
            Ok(Value::TimestampTz(
                DateTime::from_timestamp(1_700_000_000, 500_000_000).unwrap()
            ))
        );
        assert_eq!(
            one(&col(MYSQL_TYPE_TIMESTAMP2, &[0]), &[0, 0, 0, 0]),
            Err(ValueError::ZeroDate)
        );
        // TIME2(2) 12:34:56.78 and -12:34:56.78
        let int_part: i64 = (12 << 12) | (34 << 6) | 56;
        let mut b = ((int_part + 0x80_0000) as u32).to_be_bytes()[1..].to_vec();
        b.push(78);
        assert_eq!(
            one(&col(MYSQL_TYPE_TIME2, &[2]), &b),
            Ok(Value::Time(
                NaiveTime::from_hms_micro_opt(12, 34, 56, 780_000).unwrap()
            ))
        );
        let mut b = ((0x80_0000 - int_part - 1) as u32).to_be_bytes()[1..].to_vec();
        b.push((256 - 78) as u8);
        let micros = ((12 * 60 + 34) * 60 + 56) * 1_000_000 + 780_000;
        assert_eq!(
            one(&col(MYSQL_TYPE_TIME2, &[2]), &b),
            Ok(Value::Interval(Interval::from_micros(-micros)))
        );
        // TIME2(0) 25:00:00 and 838:59:59 are durations.
        let int_part: i64 = 25 << 12;
        let b = ((int_part + 0x80_0000) as u32).to_be_bytes()[1..].to_vec();
        assert_eq!(
            one(&col(MYSQL_TYPE_TIME2, &[0]), &b),
            Ok(Value::Interval(Interval::from_micros(25 * 3_600_000_000)))
        );
        let int_part: i64 = (838 << 12) | (59 << 6) | 59;
        let b = ((int_part + 0x80_0000) as u32).to_be_bytes()[1..].to_vec();
        assert_eq!(
            one(&col(MYSQL_TYPE_TIME2, &[0]), &b),
            Ok(Value::Interval(Interval::from_micros(
                ((838 * 60 + 59) * 60 + 59) * 1_000_000
            )))
        );
        // TIME2(6) -00:00:00.000001
        let b = (0x8000_0000_0000u64 - 1).to_be_bytes()[2..].to_vec();
        assert_eq!(
            one(&col(MYSQL_TYPE_TIME2, &[6]), &b),
            Ok(Value::Interval(Interval::from_micros(-1)))
        );
        // Old TIME -1:02:03
        let raw = (-10_203i32).to_le_bytes()[..3].to_vec();
        assert_eq!(
            one(&col(MYSQL_TYPE_TIME, &[]), &raw),
            Ok(Value::Interval(Interval::from_micros(-3_723_000_000)))
        );
        assert_eq!(
            one(&col(MYSQL_TYPE_YEAR, &[]), &[124]),
            Ok(Value::Int(2024))
        );
        assert_eq!(one(&col(MYSQL_TYPE_YEAR, &[]), &[0]), Ok(Value::Int(0)));
    }

    /// Every zero date encoding, each followed by a tinyint 7.
    fn zero_date_images() -> Vec<(ColumnDef, Vec<u8>)> {
        let datetime2 = |y: i64, m: i64, d: i64| {
            let int_part: i64 = ((((y * 13 + m) << 5) | d) << 17) | (12 << 12);
            let mut b = ((int_part + 0x80_0000_0000) as u64).to_be_bytes()[3..].to_vec();
            b.extend_from_slice(&[0, 0, 0]); // fsp 6
            b
        };
        let date = |y: u32, m: u32, d: u32| ((y << 9) | (m << 5) | d).to_le_bytes()[..3].to_vec();
        vec![
            (col(MYSQL_TYPE_DATE, &[]), date(0, 0, 0)),
            (col(MYSQL_TYPE_DATE, &[]), date(2024, 0, 10)),
            (col(MYSQL_TYPE_DATE, &[]), date(2024, 3, 0)),
            (col(MYSQL_TYPE_DATETIME2, &[6]), datetime2(0, 0, 0)),
            (col(MYSQL_TYPE_DATETIME2, &[6]), datetime2(2024, 0, 10)),
            (col(MYSQL_TYPE_DATETIME, &[]), 0u64.to_le_bytes().to_vec()),
            (
                col(MYSQL_TYPE_DATETIME, &[]),
                20_240_010_120_000u64.to_le_bytes().to_vec(),
            ),
            (col(MYSQL_TYPE_TIMESTAMP2, &[3]), vec![0, 0, 0, 0, 0, 0]),
            (col(MYSQL_TYPE_TIMESTAMP, &[]), vec![0, 0, 0, 0]),
        ]
    }

    #[test]
    fn zero_dates_are_an_error_by_default() {
        for (c, bytes) in zero_date_images() {
            assert_eq!(one(&c, &bytes), Err(ValueError::ZeroDate), "{c:?}");
            let cols = [c.clone(), col(MYSQL_TYPE_TINY, &[])];
            let mut data = vec![0u8];
            data.extend_from_slice(&bytes);
            data.push(7);
            assert_eq!(
                decode_image(&cols, &[true, true], &data).unwrap_err(),
                (0, ValueError::ZeroDate),
                "{c:?}"
            );
        }
        let message = ValueError::ZeroDate.to_string();
        assert!(message.contains("zero date"), "{message}");
    }

    #[test]
    fn zero_dates_become_null_outside_the_key_when_configured() {
        for (c, bytes) in zero_date_images() {
            let cols = [c.clone(), col(MYSQL_TYPE_TINY, &[])];
            let mut data = vec![0u8];
            data.extend_from_slice(&bytes);
            data.push(7);
            data.push(9);
            let (values, rest) =
                decode_image_with(&cols, &[true, true], &data, ZeroDates::Null, &[1]).unwrap();
            // The whole value was consumed: the next column decodes.
            assert_eq!(
                values,
                vec![Some(Value::Null), Some(Value::Int(7))],
                "{c:?}"
            );
            assert_eq!(rest, &[9], "{c:?}");
            // In a primary key column it stays an error.
            assert_eq!(
                decode_image_with(&cols, &[true, true], &data, ZeroDates::Null, &[0]).unwrap_err(),
                (0, ValueError::ZeroDate),
                "{c:?}"
            );
        }
        // Real dates and other errors are untouched.
        let v: u32 = (2024 << 9) | (2 << 5) | 29;
        let data = [&[0u8][..], &v.to_le_bytes()[..3]].concat();
        let (values, _) = decode_image_with(
            &[col(MYSQL_TYPE_DATE, &[])],
            &[true],
            &data,
            ZeroDates::Null,
            &[],
        )
        .unwrap();
        assert_eq!(
            values,
            vec![Some(Value::Date(
                NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()
            ))]
        );
        let date_2024_02_30: u32 = (2024 << 9) | (2 << 5) | 30;
        let data = [&[0u8][..], &date_2024_02_30.to_le_bytes()[..3]].concat();
        assert!(matches!(
            decode_image_with(
                &[col(MYSQL_TYPE_DATE, &[])],
                &[true],
                &data,
                ZeroDates::Null,
                &[]
            ),
            Err((0, ValueError::Invalid(_)))
        ));
    }

    #[test]
    fn strings_enums_sets_bits() {
        let mut text = col(MYSQL_TYPE_VARCHAR, &[200, 0]);
        text.charset = 45;
        assert_eq!(
            one(&text, b"\x06h\xc3\xa9llo"),
            Ok(Value::Text("héllo".into()))
        );
        assert!(matches!(
            one(&text, b"\x01\xff"),
            Ok(Value::Undecodable { .. })
        ));
        let mut latin = text.clone();
        latin.charset = 8;
        assert_eq!(one(&latin, b"\x01\xe9"), Ok(Value::Text("é".into())));
        let mut bin = col(MYSQL_TYPE_STRING, &[0xfe, 3]);
        bin.charset = BINARY_CHARSET;
        assert_eq!(one(&bin, b"\x02ab"), Ok(Value::Bytes(b"ab\0".to_vec())));
        assert_eq!(bin.source_type(), "binary");
        let mut blob = col(MYSQL_TYPE_BLOB, &[2]);
        blob.charset = BINARY_CHARSET;
        assert_eq!(one(&blob, b"\x01\x00\x07"), Ok(Value::Bytes(vec![7])));
        assert_eq!(blob.source_type(), "blob");
        let mut json = col(MYSQL_TYPE_BLOB, &[4]);
        json.charset = 45;
        json.json = true;
        assert_eq!(one(&json, b"\x02\0\0\0{}"), Ok(Value::Json("{}".into())));
        assert_eq!(json.source_type(), "json");
        let mut e = col(MYSQL_TYPE_ENUM, &[0xf7, 1]);
        e.labels = vec!["x".into(), "y".into()];
        assert_eq!(one(&e, &[2]), Ok(Value::Text("y".into())));
        assert!(matches!(one(&e, &[3]), Err(ValueError::Invalid(_))));
        let mut s = col(MYSQL_TYPE_SET, &[0xf8, 1]);
        s.labels = vec!["p".into(), "q".into(), "r".into()];
        assert_eq!(one(&s, &[0b101]), Ok(Value::Text("p,r".into())));
        assert_eq!(
            one(&col(MYSQL_TYPE_BIT, &[2, 1]), &[0b10, 0xaa]),
            Ok(Value::UInt(0x2aa))
        );
    }

    #[test]
    fn null_bitmap_and_absent_columns() {
        let cols = vec![
            col(MYSQL_TYPE_TINY, &[]),
            col(MYSQL_TYPE_TINY, &[]),
            col(MYSQL_TYPE_TINY, &[]),
        ];
        // Columns 0 and 2 present; the second of them is NULL.
        let (values, rest) = decode_image(&cols, &[true, false, true], &[0b10, 7, 9]).unwrap();
        assert_eq!(values, vec![Some(Value::Int(7)), None, Some(Value::Null)]);
        assert_eq!(rest, &[9]);
        assert_eq!(
            decode_image(&cols, &[true, true, true], &[0, 1]).unwrap_err(),
            (1, ValueError::Truncated)
        );
    }

    #[test]
    fn float_is_the_shortest_text_of_its_32_bits() {
        let c = col(MYSQL_TYPE_FLOAT, &[4]);
        assert_eq!(one(&c, &0.1f32.to_le_bytes()), Ok(Value::Float(0.1)));
        assert_eq!(
            one(&c, &f32::MAX.to_le_bytes()),
            Ok(Value::Float(3.4028235e38))
        );
        assert_eq!(
            one(&c, &(-1e-45f32).to_le_bytes()),
            Ok(Value::Float(-1e-45))
        );
    }

    #[test]
    fn text_by_the_column_charset() {
        let mut c = col(MYSQL_TYPE_VARCHAR, &[200, 0]);
        c.charset = 8; // latin1_swedish_ci: cp1252
        assert_eq!(
            one(&c, b"\x05\x80\x93x\x94\xe9"),
            Ok(Value::Text("€“x”é".into()))
        );
        c.charset = 35; // ucs2_general_ci
        assert_eq!(one(&c, b"\x04\x20\xac\x00a"), Ok(Value::Text("€a".into())));
        c.charset = 54; // utf16_general_ci
        assert_eq!(
            one(&c, b"\x04\xd8\x3d\xde\x00"),
            Ok(Value::Text("😀".into()))
        );
        c.charset = 45;
        assert_eq!(
            one(&c, b"\x01\xff"),
            Ok(Value::Undecodable {
                type_name: "varchar".into(),
                reason: "text that is not valid UTF-8 in a utf8 column".into()
            })
        );
        c.charset = 51; // cp1251
        assert!(matches!(
            one(&c, b"\x01a"),
            Ok(Value::Undecodable { reason, .. }) if reason.contains("cp1251")
        ));
    }

    #[test]
    fn mysql_binary_json() {
        let c = col(MYSQL_TYPE_JSON, &[4]);
        let doc = serde_json::json!({"a": [1, "x€", null], "b": 0.5});
        let bin = crate::jsonb::encode(&doc, false);
        let mut b = (bin.len() as u32).to_le_bytes().to_vec();
        b.extend_from_slice(&bin);
        let Ok(Value::Json(text)) = one(&c, &b) else {
            panic!("not json")
        };
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            doc
        );
        assert!(matches!(
            one(&c, &[1, 0, 0, 0, 0x42]),
            Ok(Value::Undecodable { .. })
        ));
    }

    #[test]
    fn datetime_in_the_store_time_zone() {
        let ym = 2024 * 13 + 7;
        let dt2 = |ym: i64, d: i64, h: i64, m: i64| {
            let int_part: i64 = (((ym << 5) | d) << 17) | (h << 12) | (m << 6);
            ((int_part + 0x80_0000_0000) as u64).to_be_bytes()[3..].to_vec()
        };
        let mut c = col(MYSQL_TYPE_DATETIME2, &[0]);
        c.zone = Some(chrono_tz::Europe::Berlin);
        let Ok(Value::ZonedTimestamp(ts)) = one(&c, &dt2(ym, 1, 12, 0)) else {
            panic!("not zoned")
        };
        assert_eq!(ts.to_rfc3339(), "2024-07-01T12:00:00+02:00");
        // In the spring-forward gap: the offset before it.
        let Ok(Value::ZonedTimestamp(ts)) = one(&c, &dt2(2024 * 13 + 3, 31, 2, 30)) else {
            panic!("not zoned")
        };
        assert_eq!(ts.to_rfc3339(), "2024-03-31T02:30:00+01:00");
        // In the autumn overlap: the earlier instant.
        let Ok(Value::ZonedTimestamp(ts)) = one(&c, &dt2(2024 * 13 + 10, 27, 2, 30)) else {
            panic!("not zoned")
        };
        assert_eq!(ts.to_rfc3339(), "2024-10-27T02:30:00+02:00");
        c.zone = None;
        assert!(matches!(
            one(&c, &dt2(ym, 1, 12, 0)),
            Ok(Value::Timestamp(_))
        ));
    }

    fn any_type() -> impl Strategy<Value = ColumnType> {
        prop::sample::select(vec![
            MYSQL_TYPE_TINY,
            MYSQL_TYPE_SHORT,
            MYSQL_TYPE_INT24,
            MYSQL_TYPE_LONG,
            MYSQL_TYPE_LONGLONG,
            MYSQL_TYPE_FLOAT,
            MYSQL_TYPE_DOUBLE,
            MYSQL_TYPE_NEWDECIMAL,
            MYSQL_TYPE_DATE,
            MYSQL_TYPE_TIME,
            MYSQL_TYPE_TIME2,
            MYSQL_TYPE_DATETIME,
            MYSQL_TYPE_DATETIME2,
            MYSQL_TYPE_TIMESTAMP,
            MYSQL_TYPE_TIMESTAMP2,
            MYSQL_TYPE_YEAR,
            MYSQL_TYPE_BIT,
            MYSQL_TYPE_ENUM,
            MYSQL_TYPE_SET,
            MYSQL_TYPE_VARCHAR,
            MYSQL_TYPE_STRING,
            MYSQL_TYPE_BLOB,
            MYSQL_TYPE_GEOMETRY,
            MYSQL_TYPE_JSON,
        ])
    }

    proptest! {
        /// A FLOAT arrives as the shortest text of its 32-bit value.
        #[test]
        fn floats_keep_their_shortest_text(bits in any::<u32>()) {
            let f = f32::from_bits(bits);
            prop_assume!(f.is_finite());
            let Ok(Value::Float(v)) = one(&col(MYSQL_TYPE_FLOAT, &[4]), &bits.to_le_bytes()) else {
                panic!("not a float")
            };
            prop_assert_eq!(v as f32, f);
            prop_assert_eq!(v.to_string().parse::<f32>().unwrap().to_string(), f.to_string());
        }

        /// Every TIME2(6) MySQL can hold decodes to the same number of
        /// microseconds: a time of day or a duration.
        #[test]
        fn times_keep_their_microseconds(micros in -3_020_399_999_999i64..=3_020_399_999_999) {
            let abs = micros.unsigned_abs() as i64;
            let secs = abs / 1_000_000;
            let int_part = ((secs / 3600) << 12) | (((secs / 60) % 60) << 6) | (secs % 60);
            let packed = (int_part << 24) + abs % 1_000_000;
            let packed = if micros < 0 { -packed } else { packed };
            let b = ((packed + 0x8000_0000_0000) as u64).to_be_bytes()[2..].to_vec();
            let got = match one(&col(MYSQL_TYPE_TIME2, &[6]), &b).unwrap() {
                Value::Time(t) => {
                    i64::from(t.num_seconds_from_midnight()) * 1_000_000
                        + i64::from(t.nanosecond() / 1000)
                }
                Value::Interval(i) => {
                    prop_assert!(!(0..86_400_000_000).contains(&i.micros));
                    i.micros
                }
                other => panic!("{other:?}"),
            };
            prop_assert_eq!(got, micros);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            ty in any_type(),
            meta in prop::collection::vec(any::<u8>(), 0..3),
            charset in prop::sample::select(vec![0u16, 8, 11, 35, 45, 54, 56, 60, 63, 51]),
            data in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut c = col(ty, &meta);
            c.charset = charset;
            c.labels = vec!["a".into()];
            let _ = decode_image(std::slice::from_ref(&c), &[true], &data);
            let _ = decode_image_with(
                std::slice::from_ref(&c), &[true], &data, ZeroDates::Null, &[],
            );
            let _ = c.source_type();
        }
    }
}

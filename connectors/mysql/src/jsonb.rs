//! MySQL 8's binary JSON (the binlog's `JSON` column type, 245) → JSON text.
//!
//! A decoder of our own rather than mysql_common's: that one indexes its
//! input unchecked and can panic on a malformed value, and capture must
//! never panic for a value. This one returns an error for any malformed
//! input (a proptest feeds it arbitrary bytes) and keeps object members in
//! the order MySQL stores them (by key length, then bytes), which is the
//! order MySQL itself prints.
//!
//! Format (MySQL `json_binary.h`): a type byte, then the value. Objects and
//! arrays come in a small (16-bit offsets) and a large (32-bit) form:
//! element count, byte size, key entries (objects), value entries (type and
//! an offset from the container's start, or the value itself when it fits).

use std::fmt::Write as _;

const SMALL_OBJECT: u8 = 0x00;
const LARGE_OBJECT: u8 = 0x01;
const SMALL_ARRAY: u8 = 0x02;
const LARGE_ARRAY: u8 = 0x03;
const LITERAL: u8 = 0x04;
const INT16: u8 = 0x05;
const UINT16: u8 = 0x06;
const INT32: u8 = 0x07;
const UINT32: u8 = 0x08;
const INT64: u8 = 0x09;
const UINT64: u8 = 0x0a;
const DOUBLE: u8 = 0x0b;
const STRING: u8 = 0x0c;
const OPAQUE: u8 = 0x0f;

/// MySQL nests JSON at most 100 deep; anything deeper is malformed.
const MAX_DEPTH: usize = 150;

/// Why a binary JSON value did not decode. Never holds the value.
pub type JsonbError = &'static str;

const MALFORMED: JsonbError = "a malformed binary JSON value";

/// Decodes one binary JSON value into JSON text. An empty value is `null`
/// (MySQL writes that for a JSON NULL stored in a NOT NULL column).
pub fn to_json_text(bytes: &[u8]) -> Result<String, JsonbError> {
    let mut out = String::new();
    match bytes.split_first() {
        None => out.push_str("null"),
        Some((ty, rest)) => value(*ty, rest, 0, &mut out)?,
    }
    Ok(out)
}

fn slice(buf: &[u8], at: usize, n: usize) -> Result<&[u8], JsonbError> {
    buf.get(at..at.checked_add(n).ok_or(MALFORMED)?)
        .ok_or(MALFORMED)
}

fn le(buf: &[u8], at: usize, n: usize) -> Result<u64, JsonbError> {
    Ok(slice(buf, at, n)?
        .iter()
        .rev()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// A variable-length length: 7 bits a byte, high bit = more; at most 5
/// bytes. Returns (length, bytes used).
fn varlen(buf: &[u8], at: usize) -> Result<(usize, usize), JsonbError> {
    let mut len: u64 = 0;
    for i in 0..5 {
        let b = *buf.get(at + i).ok_or(MALFORMED)?;
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((usize::try_from(len).map_err(|_| MALFORMED)?, i + 1));
        }
    }
    Err(MALFORMED)
}

fn value(ty: u8, buf: &[u8], depth: usize, out: &mut String) -> Result<(), JsonbError> {
    if depth > MAX_DEPTH {
        return Err("binary JSON nested deeper than MySQL allows");
    }
    match ty {
        SMALL_OBJECT => container(buf, false, true, depth, out),
        LARGE_OBJECT => container(buf, true, true, depth, out),
        SMALL_ARRAY => container(buf, false, false, depth, out),
        LARGE_ARRAY => container(buf, true, false, depth, out),
        LITERAL => {
            out.push_str(match le(buf, 0, 1)? {
                0 => "null",
                1 => "true",
                2 => "false",
                _ => return Err(MALFORMED),
            });
            Ok(())
        }
        INT16 => write_num(out, le(buf, 0, 2)? as u16 as i16),
        UINT16 => write_num(out, le(buf, 0, 2)? as u16),
        INT32 => write_num(out, le(buf, 0, 4)? as u32 as i32),
        UINT32 => write_num(out, le(buf, 0, 4)? as u32),
        INT64 => write_num(out, le(buf, 0, 8)? as i64),
        UINT64 => write_num(out, le(buf, 0, 8)?),
        DOUBLE => {
            let f = f64::from_bits(le(buf, 0, 8)?);
            let n =
                serde_json::Number::from_f64(f).ok_or("a binary JSON double that is not finite")?;
            write_num(out, n)
        }
        STRING => {
            let (n, used) = varlen(buf, 0)?;
            let s = std::str::from_utf8(slice(buf, used, n)?)
                .map_err(|_| "a binary JSON string that is not UTF-8")?;
            write_str(out, s)
        }
        OPAQUE => opaque(buf, out),
        _ => Err(MALFORMED),
    }
}

fn write_num(out: &mut String, n: impl std::fmt::Display) -> Result<(), JsonbError> {
    write!(out, "{n}").map_err(|_| MALFORMED)
}

fn write_str(out: &mut String, s: &str) -> Result<(), JsonbError> {
    out.push_str(&serde_json::to_string(s).map_err(|_| MALFORMED)?);
    Ok(())
}

fn container(
    buf: &[u8],
    large: bool,
    object: bool,
    depth: usize,
    out: &mut String,
) -> Result<(), JsonbError> {
    let w = if large { 4 } else { 2 };
    let count = usize::try_from(le(buf, 0, w)?).map_err(|_| MALFORMED)?;
    let size = usize::try_from(le(buf, w, w)?).map_err(|_| MALFORMED)?;
    let buf = buf.get(..size).ok_or(MALFORMED)?;
    let key_entry = w + 2;
    let value_entry = 1 + w;
    let keys_at = 2 * w;
    let values_at = keys_at + if object { count * key_entry } else { 0 };
    if values_at
        .checked_add(count.checked_mul(value_entry).ok_or(MALFORMED)?)
        .is_none_or(|end| end > size)
    {
        return Err(MALFORMED);
    }
    out.push(if object { '{' } else { '[' });
    for i in 0..count {
        if i > 0 {
            out.push_str(", ");
        }
        if object {
            let at = keys_at + i * key_entry;
            let offset = usize::try_from(le(buf, at, w)?).map_err(|_| MALFORMED)?;
            let len = le(buf, at + w, 2)? as usize;
            let key = std::str::from_utf8(slice(buf, offset, len)?)
                .map_err(|_| "a binary JSON key that is not UTF-8")?;
            write_str(out, key)?;
            out.push_str(": ");
        }
        let at = values_at + i * value_entry;
        let ty = le(buf, at, 1)? as u8;
        let inlined = match ty {
            LITERAL | INT16 | UINT16 => true,
            INT32 | UINT32 => large,
            _ => false,
        };
        if inlined {
            value(ty, slice(buf, at + 1, w)?, depth + 1, out)?;
        } else {
            let offset = usize::try_from(le(buf, at + 1, w)?).map_err(|_| MALFORMED)?;
            value(ty, buf.get(offset..).ok_or(MALFORMED)?, depth + 1, out)?;
        }
    }
    out.push(if object { '}' } else { ']' });
    Ok(())
}

/// Opaque values: MySQL stores DECIMAL and temporal values inside JSON in
/// their own binary forms. Decimals become JSON numbers, dates and times
/// strings as MySQL prints them; any other opaque type is an error.
fn opaque(buf: &[u8], out: &mut String) -> Result<(), JsonbError> {
    let field_type = le(buf, 0, 1)? as u8;
    let (n, used) = varlen(buf, 1)?;
    let data = slice(buf, 1 + used, n)?;
    match field_type {
        // MYSQL_TYPE_NEWDECIMAL: precision, scale, then the binary decimal.
        246 => {
            let (precision, scale) = (le(data, 0, 1)? as usize, le(data, 1, 1)? as usize);
            let text = crate::row_value::decimal_text(&data[2..], precision, scale)
                .map_err(|_| "a malformed decimal in binary JSON")?;
            out.push_str(&text);
            Ok(())
        }
        // DATE, TIME, DATETIME, TIMESTAMP: a packed 64-bit integer.
        10 | 11 | 12 | 7 => {
            let packed = le(data, 0, 8)? as i64;
            let text = packed_temporal(field_type, packed)?;
            write_str(out, &text)
        }
        _ => Err("an opaque binary JSON value of a type Callosum does not decode"),
    }
}

/// MySQL's packed temporal integer (`my_time.h`): the low 24 bits are the
/// microseconds, the rest `((year*13+month)*32+day)*2^17 + hour*2^12 +
/// minute*2^6 + second` (for TIME, `hours` stand where the date is).
fn packed_temporal(field_type: u8, packed: i64) -> Result<String, JsonbError> {
    let negative = packed < 0;
    let abs = packed.unsigned_abs();
    let micros = abs % (1 << 24);
    let int_part = abs >> 24;
    let hms = int_part % (1 << 17);
    let (h, m, s) = (hms >> 12, (hms >> 6) % 64, hms % 64);
    let frac = if micros > 0 {
        format!(".{micros:06}")
    } else {
        String::new()
    };
    if field_type == 11 {
        let hours = (int_part >> 12) % (1 << 10);
        let sign = if negative { "-" } else { "" };
        return Ok(format!("{sign}{hours:02}:{m:02}:{s:02}{frac}"));
    }
    if negative {
        return Err("a negative date in binary JSON");
    }
    let ymd = int_part >> 17;
    let ym = ymd >> 5;
    let (y, mo, d) = (ym / 13, ym % 13, ymd % 32);
    if field_type == 10 {
        return Ok(format!("{y:04}-{mo:02}-{d:02}"));
    }
    Ok(format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02}{frac}"))
}

/// Encodes JSON into MySQL's binary form, as MySQL's `json_binary::serialize`
/// does (for tests, and for building binlog bytes without a MySQL 8 server).
#[cfg(test)]
pub fn encode(v: &serde_json::Value, large: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let (ty, body) = encode_value(v, large);
    out.push(ty);
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
fn encode_value(v: &serde_json::Value, large: bool) -> (u8, Vec<u8>) {
    use serde_json::Value as J;
    match v {
        J::Null => (LITERAL, vec![0]),
        J::Bool(b) => (LITERAL, vec![if *b { 1 } else { 2 }]),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                if let Ok(i) = i16::try_from(i) {
                    (INT16, i.to_le_bytes().to_vec())
                } else if let Ok(i) = i32::try_from(i) {
                    (INT32, i.to_le_bytes().to_vec())
                } else {
                    (INT64, i.to_le_bytes().to_vec())
                }
            } else if let Some(u) = n.as_u64() {
                (UINT64, u.to_le_bytes().to_vec())
            } else {
                (DOUBLE, n.as_f64().unwrap().to_le_bytes().to_vec())
            }
        }
        J::String(s) => {
            let mut b = Vec::new();
            let mut n = s.len();
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    b.push(byte);
                    break;
                }
                b.push(byte | 0x80);
            }
            b.extend_from_slice(s.as_bytes());
            (STRING, b)
        }
        J::Array(items) => {
            let entries: Vec<(Option<&str>, &serde_json::Value)> =
                items.iter().map(|v| (None, v)).collect();
            encode_container(&entries, large, false)
        }
        J::Object(map) => {
            // MySQL stores keys sorted by length, then bytes.
            let mut entries: Vec<(Option<&str>, &serde_json::Value)> =
                map.iter().map(|(k, v)| (Some(k.as_str()), v)).collect();
            entries.sort_by(|a, b| {
                let (a, b) = (a.0.unwrap(), b.0.unwrap());
                (a.len(), a).cmp(&(b.len(), b))
            });
            encode_container(&entries, large, true)
        }
    }
}

#[cfg(test)]
fn encode_container(
    entries: &[(Option<&str>, &serde_json::Value)],
    large: bool,
    object: bool,
) -> (u8, Vec<u8>) {
    let w = if large { 4 } else { 2 };
    let put = |out: &mut Vec<u8>, n: usize, w: usize| {
        out.extend_from_slice(&(n as u64).to_le_bytes()[..w]);
    };
    let header = 2 * w + if object { entries.len() * (w + 2) } else { 0 } + entries.len() * (1 + w);
    let mut tail = Vec::new();
    let mut key_entries = Vec::new();
    if object {
        for (k, _) in entries {
            let k = k.unwrap();
            put(&mut key_entries, header + tail.len(), w);
            put(&mut key_entries, k.len(), 2);
            tail.extend_from_slice(k.as_bytes());
        }
    }
    let mut value_entries = Vec::new();
    for (_, v) in entries {
        let (ty, body) = encode_value(v, large);
        value_entries.push(ty);
        let inlined = match ty {
            LITERAL | INT16 | UINT16 => true,
            INT32 | UINT32 => large,
            _ => false,
        };
        if inlined {
            let mut b = body.clone();
            b.resize(w, 0);
            value_entries.extend_from_slice(&b);
        } else {
            put(&mut value_entries, header + tail.len(), w);
            tail.extend_from_slice(&body);
        }
    }
    let mut out = Vec::new();
    put(&mut out, entries.len(), w);
    put(&mut out, header + tail.len(), w);
    out.extend_from_slice(&key_entries);
    out.extend_from_slice(&value_entries);
    out.extend_from_slice(&tail);
    let ty = match (object, large) {
        (true, false) => SMALL_OBJECT,
        (true, true) => LARGE_OBJECT,
        (false, false) => SMALL_ARRAY,
        (false, true) => LARGE_ARRAY,
    };
    (ty, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value as J};

    fn round_trip(v: &J) {
        for large in [false, true] {
            let text = to_json_text(&encode(v, large)).unwrap();
            let back: J = serde_json::from_str(&text).unwrap();
            assert_eq!(&back, v, "large = {large}: {text}");
        }
    }

    #[test]
    fn documents_round_trip() {
        round_trip(&json!(null));
        round_trip(&json!({"a": 1, "bb": [true, false, null, -70000, 1.5, "x€😀"], "": {}}));
        round_trip(&json!([i64::MIN, u64::MAX, 0.1, -32768, 65535, []]));
        assert_eq!(to_json_text(&[]).unwrap(), "null");
        // MySQL's order: keys by length, then bytes.
        assert_eq!(
            to_json_text(&encode(&json!({"bb": 1, "a": 2}), false)).unwrap(),
            r#"{"a": 2, "bb": 1}"#
        );
        assert_eq!(to_json_text(&encode(&json!(0.1), false)).unwrap(), "0.1");
    }

    #[test]
    fn opaque_decimal_and_datetime() {
        // DECIMAL(4,2) 12.50 inside JSON: type 246, length 4, precision,
        // scale, then the 1+1 byte binary decimal.
        let bytes = [OPAQUE, 246, 4, 4, 2, 0x80 | 12, 50];
        assert_eq!(to_json_text(&bytes).unwrap(), "12.50");
        // DATETIME 2024-01-02 03:04:05.000006
        let ym: i64 = 2024 * 13 + 1;
        let int_part = (((ym << 5) | 2) << 17) | (3 << 12) | (4 << 6) | 5;
        let packed = (int_part << 24) | 6;
        let mut bytes = vec![OPAQUE, 12, 8];
        bytes.extend_from_slice(&packed.to_le_bytes());
        assert_eq!(
            to_json_text(&bytes).unwrap(),
            "\"2024-01-02 03:04:05.000006\""
        );
        assert!(to_json_text(&[OPAQUE, 252, 1, 0]).is_err());
    }

    #[test]
    fn malformed_values_are_errors() {
        assert!(to_json_text(&[0x42]).is_err());
        assert!(to_json_text(&[SMALL_OBJECT, 5, 0, 2, 0]).is_err());
        assert!(to_json_text(&[STRING, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        // Deep nesting is refused, not a stack overflow.
        let mut deep = J::Null;
        for _ in 0..200 {
            deep = J::Array(vec![deep]);
        }
        assert!(to_json_text(&encode(&deep, false)).is_err());
    }

    fn any_json() -> impl Strategy<Value = J> {
        let leaf = prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            (any::<i32>(), 1..8i32).prop_map(|(i, k)| json!(f64::from(i) / 10f64.powi(k))),
            "\\PC{0,12}".prop_map(J::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(J::Array),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..6)
                    .prop_map(|m| J::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn encoded_documents_decode_equal(v in any_json(), large in any::<bool>()) {
            let text = to_json_text(&encode(&v, large)).unwrap();
            let back: J = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(back, v);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = to_json_text(&bytes);
        }
    }
}

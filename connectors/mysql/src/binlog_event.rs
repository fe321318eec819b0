//! mysql_async binlog [`Event`]s → [`StreamEvent`]s, and the raw decoders
//! for what mysql_async leaves undecoded.
//!
//! What mysql_async 0.37 (mysql_common 0.37) does and does not do, measured
//! against MariaDB 10.11:
//! - MariaDB's own events (160 annotate rows, 161 binlog checkpoint, 162
//!   GTID, 163 GTID list, 165–171 compressed events) are unknown to it:
//!   `read_data()` returns `Ok(None)`; the GTID event is decoded here from
//!   its raw bytes;
//! - it strips the CRC32 checksum of each event once it has seen the format
//!   description event, but never verifies it: [`convert`] does;
//! - the first, artificial Rotate event arrives before the format
//!   description, so its 4 checksum bytes stay stuck to the file name:
//!   [`rotate_file_name`] strips them when they are that event's CRC32;
//! - its row value decoder panics on negative `TIME(n)` values: rows are
//!   decoded by [`crate::row_value`] from `rows_data()` instead.

use callosum_api::TableId;
use mysql_async::binlog::events::{
    Event, EventData, OptionalMetaExtractor, OptionalMetadataField, RowsEventData, TableMapEvent,
};
use mysql_async::binlog::{BinlogChecksumAlg, EventType};
use mysql_async::consts::ColumnType;

use crate::binlog_stream::{EventHeader, MariaGtid, RowsEvent, RowsKind, StreamEvent, TableMap};
use crate::row_value::ColumnDef;
use crate::statement::{classify, Statement};

/// MariaDB event types mysql_async does not know.
pub const MARIA_ANNOTATE_ROWS: u8 = 160;
pub const MARIA_BINLOG_CHECKPOINT: u8 = 161;
pub const MARIA_GTID: u8 = 162;
pub const MARIA_GTID_LIST: u8 = 163;
pub const MARIA_START_ENCRYPTION: u8 = 164;
/// 165 (query) to 171 (delete rows v1): `log_bin_compress=ON`.
pub const MARIA_COMPRESSED: std::ops::RangeInclusive<u8> = 165..=171;

const FL_STANDALONE: u8 = 1;
const FL_PREPARED_XA: u8 = 64;

/// A decoding failure, described without row values.
pub type DecodeError = String;

/// Decodes a MariaDB GTID event body: sequence u64 LE, domain u32 LE,
/// flags u8 (then optional fields this does not need).
pub fn maria_gtid(data: &[u8], server: u32) -> Result<MariaGtid, DecodeError> {
    if data.len() < 13 {
        return Err(format!("GTID event of {} bytes is too short", data.len()));
    }
    let sequence = u64::from_le_bytes(data[0..8].try_into().unwrap_or_default());
    let domain = u32::from_le_bytes(data[8..12].try_into().unwrap_or_default());
    let flags = data[12];
    Ok(MariaGtid {
        domain,
        server,
        sequence,
        standalone: flags & FL_STANDALONE != 0,
        prepared_xa: flags & FL_PREPARED_XA != 0,
    })
}

/// CRC32 (IEEE), as binlog checksums use it.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &b in *part {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
    }
    !crc
}

/// The file name of a Rotate event body (position u64 LE, then the name).
/// `header` is the event's 19 raw header bytes: when the body's last 4
/// bytes are the CRC32 of header and the rest (the artificial Rotate that
/// precedes the format description), they are stripped.
pub fn rotate_file_name(header: &[u8], body: &[u8]) -> Result<String, DecodeError> {
    let name = body
        .get(8..)
        .ok_or_else(|| "rotate event is too short".to_string())?;
    let name = match name.len().checked_sub(4) {
        Some(cut) => {
            let (rest, tail) = body.split_at(body.len() - 4);
            let stored = u32::from_le_bytes(tail.try_into().unwrap_or_default());
            if crc32(&[header, rest]) == stored {
                &name[..cut]
            } else {
                name
            }
        }
        None => name,
    };
    let name = std::str::from_utf8(name)
        .map_err(|_| "rotate event names a file that is not UTF-8".to_string())?;
    if name.is_empty() {
        return Err("rotate event names no file".into());
    }
    Ok(name.to_string())
}

/// The 19 raw header bytes of `event`.
fn raw_header(event: &Event) -> [u8; 19] {
    let h = event.header();
    let mut out = [0u8; 19];
    out[0..4].copy_from_slice(&h.timestamp().to_le_bytes());
    out[4] = h.event_type_raw();
    out[5..9].copy_from_slice(&h.server_id().to_le_bytes());
    out[9..13].copy_from_slice(&h.event_size().to_le_bytes());
    out[13..17].copy_from_slice(&h.log_pos().to_le_bytes());
    out[17..19].copy_from_slice(&h.flags_raw().to_le_bytes());
    out
}

/// Classifies a query event's statement, run in database `default_db`.
pub fn query_kind(query: &[u8], default_db: &str) -> StreamEvent {
    let q = String::from_utf8_lossy(&query[..query.len().min(32)]);
    let q = q.trim().to_ascii_uppercase();
    if q == "BEGIN" {
        StreamEvent::Begin
    } else if q.starts_with("XA START") || q.starts_with("XA BEGIN") {
        StreamEvent::XaStart
    } else if q == "COMMIT" || q == "ROLLBACK" || q.starts_with("XA PREPARE") {
        StreamEvent::Commit
    } else if q.starts_with("XA COMMIT") || q.starts_with("XA ROLLBACK") {
        let commit = q.starts_with("XA COMMIT");
        let text = String::from_utf8_lossy(query).trim().to_ascii_uppercase();
        let rest = text[if commit { 9 } else { 11 }..].trim();
        match rest.strip_suffix("ONE PHASE") {
            // a one-phase commit ends its own group like COMMIT (MySQL)
            Some(_) if commit => StreamEvent::Commit,
            _ => StreamEvent::XaEnd {
                xid: normalize_xid(rest),
                commit,
            },
        }
    } else {
        match classify(
            &String::from_utf8_lossy(&query[..query.len().min(4096)]),
            default_db,
        ) {
            Statement::Truncate(table) => StreamEvent::Truncate(table),
            Statement::Dml { verb, table } => StreamEvent::StatementDml { verb, table },
            Statement::Other => StreamEvent::Statement,
        }
    }
}

/// An XID as the binlog's `XA …` statements spell it (`X'gtrid',X'bqual',format`),
/// without spaces and in upper case, so that an `XA_PREPARE` event's XID and
/// the later `XA COMMIT`'s text compare equal.
pub fn normalize_xid(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase()
}

/// Decodes an `XA_PREPARE_LOG_EVENT` body: one_phase u8, format id u32 LE,
/// gtrid length u32 LE, bqual length u32 LE, gtrid, bqual. Returns the XID
/// spelled as [`normalize_xid`] does, and whether it is a one-phase commit.
pub fn xa_prepare(data: &[u8]) -> Result<(String, bool), DecodeError> {
    let short = || format!("XA_PREPARE event of {} bytes is too short", data.len());
    if data.len() < 13 {
        return Err(short());
    }
    let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap_or_default());
    let one_phase = data[0] != 0;
    let format = u32_at(1) as i32;
    let (g, b) = (u32_at(5) as usize, u32_at(9) as usize);
    if g > 64 || b > 64 || data.len() < 13 + g + b {
        return Err(short());
    }
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02X}")).collect::<String>();
    let xid = format!(
        "X'{}',X'{}',{format}",
        hex(&data[13..13 + g]),
        hex(&data[13 + g..13 + g + b])
    );
    Ok((xid, one_phase))
}

/// Converts a mysql_async event; `Err` describes what could not be decoded.
pub fn convert(event: &Event) -> Result<(EventHeader, StreamEvent), DecodeError> {
    let h = event.header();
    let header = EventHeader {
        timestamp: h.timestamp(),
        log_pos: u64::from(h.log_pos()),
        event_size: h.event_size(),
    };
    if let Some(stored) = event.checksum() {
        if event.footer().get_checksum_alg()
            == Ok(Some(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32))
            && event.calc_checksum(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32)
                != u32::from_le_bytes(stored)
        {
            return Err(format!(
                "binlog event of type {} ending at offset {} fails its CRC32 checksum",
                h.event_type_raw(),
                h.log_pos()
            ));
        }
    }
    let raw_type = h.event_type_raw();
    let ev = match raw_type {
        MARIA_GTID => StreamEvent::MariaGtid(maria_gtid(event.data(), h.server_id())?),
        MARIA_ANNOTATE_ROWS
        | MARIA_BINLOG_CHECKPOINT
        | MARIA_GTID_LIST
        | MARIA_START_ENCRYPTION => StreamEvent::Ignored,
        t if MARIA_COMPRESSED.contains(&t) => {
            return Err(format!(
                "the binlog holds a compressed event (type {t}), which Callosum cannot decode \
                 (log_bin_compress=ON)"
            ))
        }
        t if t == EventType::ROTATE_EVENT as u8 => StreamEvent::Rotate {
            file: rotate_file_name(&raw_header(event), event.data())?,
        },
        t if t == EventType::HEARTBEAT_EVENT as u8 => {
            let name = String::from_utf8_lossy(event.data())
                .trim_end_matches('\0')
                .to_string();
            StreamEvent::Heartbeat {
                file: (!name.is_empty()).then_some(name),
            }
        }
        _ => match event.read_data() {
            Ok(Some(EventData::QueryEvent(q))) => {
                query_kind(q.query_raw(), &String::from_utf8_lossy(q.schema_raw()))
            }
            Ok(Some(EventData::XidEvent(_))) => StreamEvent::Commit,
            Ok(Some(EventData::XaPrepareLogEvent(data))) => match xa_prepare(&data)? {
                (_, true) => StreamEvent::Commit,
                (xid, false) => StreamEvent::XaPrepare { xid },
            },
            Ok(Some(EventData::TableMapEvent(tme))) => StreamEvent::TableMap(table_map(&tme)?),
            Ok(Some(EventData::RowsEvent(rows))) => StreamEvent::Rows(rows_event(&rows)?),
            Ok(Some(EventData::TransactionPayloadEvent(_))) => {
                return Err(
                    "the binlog holds a compressed transaction payload, which Callosum cannot \
                     decode yet (binlog_transaction_compression=ON)"
                        .into(),
                )
            }
            Ok(_) => StreamEvent::Ignored,
            Err(err) => {
                return Err(format!(
                    "cannot decode binlog event of type {raw_type}: {err}"
                ))
            }
        },
    };
    Ok((header, ev))
}

fn rows_event(rows: &RowsEventData<'_>) -> Result<RowsEvent, DecodeError> {
    let kind = match rows {
        RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => RowsKind::Write,
        RowsEventData::UpdateRowsEventV1(_) | RowsEventData::UpdateRowsEvent(_) => RowsKind::Update,
        RowsEventData::DeleteRowsEventV1(_) | RowsEventData::DeleteRowsEvent(_) => RowsKind::Delete,
        RowsEventData::PartialUpdateRowsEvent(_) => {
            return Err(
                "the binlog holds a partial JSON update, which Callosum cannot decode \
                 (binlog_row_value_options=PARTIAL_JSON)"
                    .into(),
            )
        }
    };
    Ok(RowsEvent {
        kind,
        table_id: rows.table_id(),
        before: rows
            .columns_before_image()
            .map(|b| b.iter().by_vals().collect())
            .unwrap_or_default(),
        after: rows
            .columns_after_image()
            .map(|b| b.iter().by_vals().collect())
            .unwrap_or_default(),
        data: rows.rows_data().to_vec(),
    })
}

/// Reads a table map and its optional metadata (`binlog_row_metadata`).
pub fn table_map(tme: &TableMapEvent<'_>) -> Result<TableMap, DecodeError> {
    let table = TableId::new(tme.database_name(), tme.table_name());
    let bad = |what: &str| format!("table map of {table}: {what}");
    let count = usize::try_from(tme.columns_count()).map_err(|_| bad("too many columns"))?;
    let extractor = OptionalMetaExtractor::new(tme.iter_optional_meta())
        .map_err(|e| bad(&format!("bad optional metadata: {e}")))?;
    let mut signedness = extractor.iter_signedness();
    let mut charsets = extractor.iter_charset();
    let mut enum_charsets = extractor.iter_enum_and_set_charset();
    let mut names: Vec<String> = Vec::new();
    let mut enum_labels: Vec<Vec<String>> = Vec::new();
    let mut set_labels: Vec<Vec<String>> = Vec::new();
    for field in tme.iter_optional_meta() {
        match field.map_err(|e| bad(&format!("bad optional metadata: {e}")))? {
            OptionalMetadataField::ColumnName(n) => {
                for name in n.iter_names() {
                    let name = name.map_err(|e| bad(&format!("bad column name: {e}")))?;
                    names.push(name.name().into_owned());
                }
            }
            OptionalMetadataField::EnumStrValue(v) => {
                for values in v.iter_values() {
                    let values = values.map_err(|e| bad(&format!("bad enum labels: {e}")))?;
                    enum_labels.push(
                        values
                            .values()
                            .iter()
                            .map(|l| l.value().into_owned())
                            .collect(),
                    );
                }
            }
            OptionalMetadataField::SetStrValue(v) => {
                for values in v.iter_values() {
                    let values = values.map_err(|e| bad(&format!("bad set labels: {e}")))?;
                    set_labels.push(
                        values
                            .values()
                            .iter()
                            .map(|l| l.value().into_owned())
                            .collect(),
                    );
                }
            }
            _ => {}
        }
    }
    let names_known = names.len() == count;
    let mut enum_labels = enum_labels.into_iter();
    let mut set_labels = set_labels.into_iter();
    let mut columns = Vec::with_capacity(count.min(4096));
    for i in 0..count {
        let ty = match tme.get_column_type(i) {
            Ok(Some(ty)) => ty,
            _ => return Err(bad(&format!("column {i} has an unknown type"))),
        };
        let meta = tme.get_column_metadata(i).unwrap_or(&[]);
        let name = match names.get(i) {
            Some(name) if names_known => name.clone(),
            _ => format!("@{}", i + 1),
        };
        let mut c = ColumnDef::new(&name, ty, meta);
        if ty.is_numeric_type() {
            c.unsigned = signedness.next().unwrap_or(false);
        }
        if ty.is_character_type() {
            c.charset = charsets.next().transpose().ok().flatten().unwrap_or(0);
        } else if ty.is_enum_or_set_type() {
            c.charset = enum_charsets.next().transpose().ok().flatten().unwrap_or(0);
        }
        if ty == ColumnType::MYSQL_TYPE_ENUM {
            c.labels = enum_labels.next().unwrap_or_default();
        } else if ty == ColumnType::MYSQL_TYPE_SET {
            c.labels = set_labels.next().unwrap_or_default();
        }
        columns.push(c);
    }
    let mut primary_key = Vec::new();
    for index in extractor.iter_primary_key() {
        let index = index.map_err(|e| bad(&format!("bad primary key metadata: {e}")))?;
        match usize::try_from(index) {
            Ok(i) if i < count => primary_key.push(i),
            _ => return Err(bad("primary key names a column out of range")),
        }
    }
    Ok(TableMap {
        table_id: tme.table_id(),
        table,
        columns,
        primary_key,
        names_known,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn gtid_event_bytes() {
        let data = [2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 41, 0, 0, 0, 0, 0, 0];
        let g = maria_gtid(&data, 3).unwrap();
        assert_eq!((g.domain, g.server, g.sequence), (7, 3, 2));
        assert!(g.standalone);
        assert!(!g.prepared_xa);
        let data = [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12];
        assert!(!maria_gtid(&data, 1).unwrap().standalone);
        assert!(maria_gtid(&data[..12], 1).is_err());
    }

    #[test]
    fn rotate_names_lose_their_checksum() {
        let header = [0u8; 19];
        let mut body = 4u64.to_le_bytes().to_vec();
        body.extend_from_slice(b"mysql-bin.000007");
        assert_eq!(
            rotate_file_name(&header, &body).unwrap(),
            "mysql-bin.000007"
        );
        let crc = crc32(&[&header, &body]);
        body.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(
            rotate_file_name(&header, &body).unwrap(),
            "mysql-bin.000007"
        );
        assert!(rotate_file_name(&header, &body[..8]).is_err());
    }

    #[test]
    fn xa_prepare_events_name_their_xid() {
        // one_phase 0, format 7, gtrid 01 02, bqual 03
        let data = [0u8, 7, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1, 2, 3];
        assert_eq!(
            xa_prepare(&data).unwrap(),
            ("X'0102',X'03',7".to_string(), false)
        );
        assert_eq!(
            xa_prepare(&data).unwrap().0,
            normalize_xid("X'0102', X'03', 7")
        );
        assert!(xa_prepare(&data[..14]).is_err());
    }

    #[test]
    fn crc32_matches_the_reference() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
    }

    #[test]
    fn queries_frame_transactions() {
        assert_eq!(query_kind(b"BEGIN", ""), StreamEvent::Begin);
        assert_eq!(query_kind(b"COMMIT", ""), StreamEvent::Commit);
        assert_eq!(query_kind(b"XA PREPARE 'x'", ""), StreamEvent::Commit);
        assert_eq!(
            query_kind(b"XA START X'7831',X'',1", ""),
            StreamEvent::XaStart
        );
        assert_eq!(
            query_kind(b"XA COMMIT X'7831',X'',1", ""),
            StreamEvent::XaEnd {
                xid: "X'7831',X'',1".into(),
                commit: true
            }
        );
        assert_eq!(
            query_kind(b"xa rollback X'ab', X'03', 7", ""),
            StreamEvent::XaEnd {
                xid: "X'AB',X'03',7".into(),
                commit: false
            }
        );
        assert_eq!(
            query_kind(b"XA COMMIT X'7831',X'',1 ONE PHASE", ""),
            StreamEvent::Commit
        );
        assert!(matches!(
            query_kind(b"XA END X'7831',X'',1", ""),
            StreamEvent::Statement
        ));
        assert_eq!(
            query_kind(b"ROLLBACK TO SAVEPOINT a", ""),
            StreamEvent::Statement
        );
        assert_eq!(
            query_kind(b"CREATE TABLE t (a int)", ""),
            StreamEvent::Statement
        );
        assert_eq!(query_kind(&[0xff, 0xfe], ""), StreamEvent::Statement);
    }

    proptest! {
        #[test]
        fn raw_decoders_never_panic(data in prop::collection::vec(any::<u8>(), 0..64), header in prop::collection::vec(any::<u8>(), 0..20)) {
            let _ = maria_gtid(&data, 1);
            let _ = rotate_file_name(&header, &data);
            let _ = query_kind(&data, "");
            let _ = xa_prepare(&data);
        }
    }
}

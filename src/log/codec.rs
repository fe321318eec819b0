//! The change log's on-disk format. The only place that knows bincode: every
//! value starts with a format-version byte so the format can change without
//! misreading old data.

use callosum_api::{ChangeEvent, Position, RowChange, TableId, TableSchema};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::LogError;

/// Version byte of every value this module writes. Version 2 added
/// [`TxnRecord::origin`] and [`TxnRecord::tables`]; version 1 values are
/// still read (every other value is the same in both).
pub const FORMAT_VERSION: u8 = 2;

/// The first format: transaction records without origin and tables.
const FORMAT_VERSION_1: u8 = 1;

/// A record batch: many events in one sled value. Table schemas are stored
/// once per batch and shared by the decoded events.
#[derive(Serialize, Deserialize)]
struct BatchBody {
    schemas: Vec<Arc<TableSchema>>,
    events: Vec<(u32, RowChange)>,
}

/// A committed transaction's index entry: where its events are in the record
/// batches, and what the sinks and the source need to know about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TxnRecord {
    pub position: Position,
    pub resume_position: Position,
    pub commit_time_micros: i64,
    /// Batch key and index of the first event.
    pub first_batch: u64,
    pub first_index: u32,
    /// Batch key of the last event (equal to `first_batch` for most).
    pub last_batch: u64,
    pub events: u64,
    /// Events committed to this log up to and including this transaction.
    pub cumulative_events: u64,
    /// The store a Callosum-applied transaction came from
    /// ([`callosum_api::TransactionMeta::origin`]).
    pub origin: Option<String>,
    /// Events per table, in the order tables first appear; `None` for a
    /// record of format version 1 (unknown without reading the events).
    pub tables: Option<Vec<(TableId, u64)>>,
    /// Not stored. `Some(n)`: a pipeline's reader narrowed `events` to the
    /// pipeline's own tables, and `n` is how many events the log holds for
    /// the transaction (see `LogReader::set_filter`).
    #[serde(skip)]
    pub stored_events: Option<u64>,
}

/// A [`TxnRecord`] as format version 1 stored it.
#[derive(Deserialize)]
struct TxnRecordV1 {
    position: Position,
    resume_position: Position,
    commit_time_micros: i64,
    first_batch: u64,
    first_index: u32,
    last_batch: u64,
    events: u64,
    cumulative_events: u64,
}

/// Decodes a transaction index entry of either format version.
pub fn decode_txn(bytes: &[u8]) -> Result<TxnRecord, LogError> {
    const WHAT: &str = "transaction record";
    match bytes.split_first() {
        Some((&FORMAT_VERSION_1, rest)) => {
            let v1: TxnRecordV1 =
                bincode::deserialize(rest).map_err(|_| LogError::Corrupt(WHAT))?;
            Ok(TxnRecord {
                position: v1.position,
                resume_position: v1.resume_position,
                commit_time_micros: v1.commit_time_micros,
                first_batch: v1.first_batch,
                first_index: v1.first_index,
                last_batch: v1.last_batch,
                events: v1.events,
                cumulative_events: v1.cumulative_events,
                origin: None,
                tables: None,
                stored_events: None,
            })
        }
        _ => decode(bytes, WHAT),
    }
}

/// The writer's durable state, written at every flush.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Head {
    pub next_txn_seq: u64,
    pub next_batch_key: u64,
    pub cumulative_events: u64,
    /// Where the source resumes: the resume position of the last durable
    /// transaction, or a later acknowledged idle position.
    pub resume_position: Option<Position>,
    /// Commit time of the last durable transaction (µs since epoch).
    pub last_commit_micros: i64,
}

/// What truncation removed, kept so that a sink whose checkpoint is older can
/// tell that it missed changes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Truncation {
    pub through_seq: Option<u64>,
    pub through_position: Option<Position>,
}

pub fn encode_batch(events: &[ChangeEvent]) -> Result<Vec<u8>, LogError> {
    let mut schemas: Vec<Arc<TableSchema>> = Vec::new();
    let mut body_events = Vec::with_capacity(events.len());
    for event in events {
        let index = match schemas.iter().rposition(|s| Arc::ptr_eq(s, &event.schema)) {
            Some(i) => i,
            None => {
                schemas.push(event.schema.clone());
                schemas.len() - 1
            }
        };
        body_events.push((index as u32, event.change.clone()));
    }
    encode(&BatchBody {
        schemas,
        events: body_events,
    })
}

pub fn decode_batch(bytes: &[u8]) -> Result<Vec<ChangeEvent>, LogError> {
    let body: BatchBody = decode(bytes, "record batch")?;
    body.events
        .into_iter()
        .map(|(index, change)| {
            let schema = body
                .schemas
                .get(index as usize)
                .ok_or(LogError::Corrupt("record batch refers to a missing schema"))?
                .clone();
            Ok(ChangeEvent { schema, change })
        })
        .collect()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, LogError> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serialize_into(&mut out, value).map_err(|e| LogError::Encode(e.to_string()))?;
    Ok(out)
}

pub fn decode<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, LogError> {
    match bytes.split_first() {
        Some((&(FORMAT_VERSION | FORMAT_VERSION_1), rest)) => {
            bincode::deserialize(rest).map_err(|_| LogError::Corrupt(what))
        }
        Some((&version, _)) => Err(LogError::UnsupportedFormat { what, version }),
        None => Err(LogError::Corrupt(what)),
    }
}

/// Part 0 of a dead letter in the target's `callosum_dead_letter`: the
/// entry, and how many parts of events follow it (parts 1 to `parts`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterHead {
    pub entry: super::DeadLetter,
    pub parts: u32,
}

/// Cuts a dead letter's record batches (as its queue stores them) into
/// target parts of at most `limit` bytes: the batches form one stream, each
/// prefixed by its length (u64 LE), cut every `limit` bytes, so a batch
/// larger than a part spans several and a part holds several small ones.
/// Memory: one part and one batch.
#[derive(Debug)]
pub struct PartSplitter {
    limit: usize,
    part: Vec<u8>,
}

impl PartSplitter {
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            part: Vec::new(),
        }
    }

    /// Adds one record batch; calls `full` with every part it filled.
    pub fn push<E>(
        &mut self,
        batch: &[u8],
        full: &mut dyn FnMut(Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let len = (batch.len() as u64).to_le_bytes();
        for mut bytes in [&len[..], batch] {
            while !bytes.is_empty() {
                let room = self.limit - self.part.len();
                let (now, later) = bytes.split_at(room.min(bytes.len()));
                self.part.extend_from_slice(now);
                bytes = later;
                if self.part.len() == self.limit {
                    full(std::mem::take(&mut self.part))?;
                }
            }
        }
        Ok(())
    }

    /// The last, partly filled part, if any.
    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.part.is_empty()).then_some(self.part)
    }
}

/// Joins target parts, in order, back into the record batches
/// [`PartSplitter`] cut them from.
#[derive(Debug, Default)]
pub struct PartJoiner {
    pending: Vec<u8>,
}

impl PartJoiner {
    /// Adds the next part and returns the batches it completed.
    pub fn push(&mut self, part: &[u8]) -> Vec<Vec<u8>> {
        self.pending.extend_from_slice(part);
        let mut batches = Vec::new();
        let mut at = 0usize;
        while let Some(prefix) = self.pending.get(at..at + 8) {
            let len = u64::from_le_bytes(prefix.try_into().expect("8 bytes")) as usize;
            let Some(batch) = at
                .checked_add(8 + len)
                .and_then(|end| self.pending.get(at + 8..end))
            else {
                break;
            };
            batches.push(batch.to_vec());
            at += 8 + len;
        }
        self.pending.drain(..at);
        batches
    }

    /// Fails when the parts ended inside a batch.
    pub fn finish(self) -> Result<(), LogError> {
        if self.pending.is_empty() {
            Ok(())
        } else {
            Err(LogError::Corrupt(
                "a dead letter's parts in the target end inside a record batch",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callosum_api::{ColumnSchema, TableId, Value};
    use proptest::prelude::*;

    fn schema(name: &str) -> Arc<TableSchema> {
        Arc::new(TableSchema {
            table: TableId::new("public", name),
            columns: vec![ColumnSchema {
                name: "id".into(),
                source_type: "int8".into(),
                is_key: true,
            }],
        })
    }

    #[test]
    fn batch_round_trips_and_shares_schemas() {
        let a = schema("a");
        let b = schema("b");
        let events: Vec<ChangeEvent> = (0..10)
            .map(|i| ChangeEvent {
                schema: if i % 2 == 0 { a.clone() } else { b.clone() },
                change: RowChange::Insert {
                    row: vec![Value::Int(i)],
                },
            })
            .collect();
        let bytes = encode_batch(&events).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        let decoded = decode_batch(&bytes).unwrap();
        assert_eq!(decoded, events);
        assert!(Arc::ptr_eq(&decoded[0].schema, &decoded[2].schema));
    }

    #[test]
    fn transaction_records_of_format_1_are_read() {
        #[derive(Serialize)]
        struct V1 {
            position: Position,
            resume_position: Position,
            commit_time_micros: i64,
            first_batch: u64,
            first_index: u32,
            last_batch: u64,
            events: u64,
            cumulative_events: u64,
        }
        let position = Position::Pg(callosum_api::Lsn(42));
        let mut bytes = vec![1u8];
        bincode::serialize_into(
            &mut bytes,
            &V1 {
                position: position.clone(),
                resume_position: position.clone(),
                commit_time_micros: 7,
                first_batch: 3,
                first_index: 4,
                last_batch: 5,
                events: 6,
                cumulative_events: 8,
            },
        )
        .unwrap();
        let txn = decode_txn(&bytes).unwrap();
        assert_eq!(
            (txn.first_batch, txn.events, txn.cumulative_events),
            (3, 6, 8)
        );
        assert_eq!((txn.origin, txn.tables), (None, None));
        let new = TxnRecord {
            origin: Some("erp".into()),
            tables: Some(vec![(TableId::new("public", "stock"), 6)]),
            ..decode_txn(&bytes).unwrap()
        };
        assert_eq!(decode_txn(&encode(&new).unwrap()).unwrap(), new);
    }

    /// Any value of every kind, with the extremes the sources produce:
    /// NaN and infinities, BC and far-future dates, 6-digit fractions,
    /// any unicode, empty and large byte strings.
    fn any_value() -> impl Strategy<Value = Value> {
        use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};
        let date = (-262_000i32..262_000, 1u32..=12, 1u32..=28)
            .prop_map(|(y, m, d)| NaiveDate::from_ymd_opt(y, m, d).unwrap());
        let time = (0u32..86_400, 0u32..1_000_000).prop_map(|(s, us)| {
            NaiveTime::from_num_seconds_from_midnight_opt(s, us * 1000).unwrap()
        });
        let timestamp = (date.clone(), time.clone()).prop_map(|(d, t)| NaiveDateTime::new(d, t));
        prop_oneof![
            Just(Value::Null),
            Just(Value::Unchanged),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(Value::UInt),
            prop_oneof![
                any::<f64>(),
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(-0.0)
            ]
            .prop_map(Value::Float),
            "-?[0-9]{1,40}(\\.[0-9]{1,30})?|NaN|-?Infinity".prop_map(Value::Decimal),
            any::<String>().prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Bytes),
            date.prop_map(Value::Date),
            time.prop_map(Value::Time),
            timestamp.clone().prop_map(Value::Timestamp),
            timestamp.clone().prop_map(|t| Value::TimestampTz(
                DateTime::<Utc>::from_naive_utc_and_offset(t, Utc)
            )),
            any::<u128>().prop_map(|u| Value::Uuid(format!("{u:032x}"))),
            any::<String>().prop_map(Value::Json),
            (any::<i32>(), any::<i32>(), any::<i64>()).prop_map(|(months, days, micros)| {
                Value::Interval(callosum_api::Interval {
                    months,
                    days,
                    micros,
                })
            }),
            any::<bool>().prop_map(|negative| Value::Infinity { negative }),
            (timestamp, -86_399i32..86_400).prop_map(|(t, offset)| {
                let zone = FixedOffset::east_opt(offset).unwrap();
                Value::ZonedTimestamp(DateTime::from_naive_utc_and_offset(t, zone))
            }),
            (any::<String>(), any::<String>())
                .prop_map(|(type_name, reason)| Value::Undecodable { type_name, reason }),
        ]
    }

    proptest! {
        /// Every value the sources decode comes back from the log as it
        /// went in (floats bit for bit, NaN included).
        #[test]
        fn values_round_trip_through_record_batches(
            rows in proptest::collection::vec(proptest::collection::vec(any_value(), 1..6), 1..20)
        ) {
            let a = schema("a");
            let events: Vec<ChangeEvent> = rows
                .into_iter()
                .map(|row| ChangeEvent { schema: a.clone(), change: RowChange::Insert { row } })
                .collect();
            let decoded = decode_batch(&encode_batch(&events).unwrap()).unwrap();
            prop_assert_eq!(decoded.len(), events.len());
            for (d, e) in decoded.iter().zip(&events) {
                let (RowChange::Insert { row: d }, RowChange::Insert { row: e }) = (&d.change, &e.change) else {
                    unreachable!()
                };
                for (d, e) in d.iter().zip(e) {
                    match (d, e) {
                        (Value::Float(d), Value::Float(e)) => prop_assert_eq!(d.to_bits(), e.to_bits()),
                        _ => prop_assert_eq!(d, e),
                    }
                }
                prop_assert_eq!(d.len(), e.len());
            }
        }
    }

    proptest! {
        /// Whatever the batch sizes and the part limit, the parts are at
        /// most the limit and join back into the same batches.
        #[test]
        fn dead_letter_parts_split_and_join(
            batches in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20),
            limit in 1usize..300,
        ) {
            let mut parts = Vec::new();
            let mut splitter = PartSplitter::new(limit);
            for batch in &batches {
                splitter.push::<()>(batch, &mut |part| { parts.push(part); Ok(()) }).unwrap();
            }
            parts.extend(splitter.finish());
            prop_assert!(parts.iter().all(|p| !p.is_empty() && p.len() <= limit));
            let mut joiner = PartJoiner::default();
            let mut joined = Vec::new();
            for part in &parts {
                joined.extend(joiner.push(part));
            }
            joiner.finish().unwrap();
            prop_assert_eq!(joined, batches);
        }
    }

    #[test]
    fn dead_letter_parts_missing_their_end_are_refused() {
        let mut parts = Vec::new();
        let mut splitter = PartSplitter::new(10);
        splitter
            .push::<()>(&[7u8; 25], &mut |part| {
                parts.push(part);
                Ok(())
            })
            .unwrap();
        assert_eq!(parts.len(), 3, "33 bytes: three full parts of 10");
        let mut joiner = PartJoiner::default();
        for part in &parts {
            assert!(joiner.push(part).is_empty());
        }
        assert!(joiner.finish().is_err());
    }

    #[test]
    fn unknown_format_version_is_refused() {
        let mut bytes = encode(&Head::default()).unwrap();
        bytes[0] = 99;
        assert!(matches!(
            decode::<Head>(&bytes, "head"),
            Err(LogError::UnsupportedFormat { version: 99, .. })
        ));
    }
}

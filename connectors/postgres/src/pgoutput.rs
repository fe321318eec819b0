//! A pure decoder for the `pgoutput` logical decoding protocol, version 1.
//!
//! [`decode`] turns the payload of one XLogData message into a
//! [`PgOutputMessage`]. It never panics: every malformed input (truncated,
//! unknown tag, bad lengths, trailing bytes, invalid UTF-8 in names) is a
//! [`DecodeError`]. Column values are left as the raw bytes pgoutput sent
//! (text format); [`crate::text_value`] converts them.
//!
//! Reference: PostgreSQL docs, "Logical Replication Message Formats".

use thiserror::Error;

/// Microseconds between the Unix epoch and the PostgreSQL epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// A malformed pgoutput message. Never contains column values.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("pgoutput message is empty")]
    Empty,
    #[error("pgoutput message `{tag}` is truncated at byte {offset}")]
    Truncated { tag: char, offset: usize },
    #[error("unknown pgoutput message tag {0:#04x}")]
    UnknownTag(u8),
    #[error("pgoutput message `{tag}` has {extra} unexpected trailing bytes")]
    TrailingBytes { tag: char, extra: usize },
    #[error("pgoutput message `{tag}` has an invalid {what}")]
    Invalid { tag: char, what: &'static str },
}

/// The transaction's first message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: u64,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time: i64,
    pub xid: u32,
}

/// The transaction's last message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    /// LSN of the commit record (equals [`Begin::final_lsn`]).
    pub commit_lsn: u64,
    /// End LSN of the commit record: where to resume after this transaction.
    pub end_lsn: u64,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time: i64,
}

/// Sent after `Begin` when the transaction was replayed with a replication
/// origin set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub commit_lsn: u64,
    pub name: String,
}

/// One column of a [`Relation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationColumn {
    /// Bit 0 set: the column is part of the replica identity.
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

impl RelationColumn {
    /// Whether the column is part of the relation's replica identity.
    pub fn is_key(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// Describes a table; sent before the first change to it in a session and
/// again whenever its definition may have changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    /// Schema name (empty means `pg_catalog`).
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

/// Describes a non-built-in data type used by a following relation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeMessage {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
}

/// One column of a tuple as pgoutput sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TupleValue {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an unchanged TOASTed value whose content was not sent.
    UnchangedToast,
    /// `t`: the value in text format.
    Text(Vec<u8>),
    /// `b`: the value in binary format (not requested by Callosum).
    Binary(Vec<u8>),
}

/// A row image: one value per column of the relation.
pub type Tuple = Vec<TupleValue>;

/// Which old row image an update or delete carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldTupleKind {
    /// `K`: only the replica identity columns (others are null).
    Key,
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insert {
    pub relation_id: u32,
    pub new: Tuple,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub relation_id: u32,
    /// Present when the key changed (`K`) or with REPLICA IDENTITY FULL (`O`).
    pub old: Option<(OldTupleKind, Tuple)>,
    pub new: Tuple,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    pub relation_id: u32,
    pub old_kind: OldTupleKind,
    pub old: Tuple,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncate {
    /// Bit 0: CASCADE, bit 1: RESTART IDENTITY.
    pub options: u8,
    pub relation_ids: Vec<u32>,
}

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgOutputMessage {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeMessage),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
}

/// Decodes one pgoutput message (the payload of one XLogData message).
///
/// Guarantees: never panics and never allocates more than a small multiple of
/// `data.len()`; the whole input must be consumed, or the message is invalid.
pub fn decode(data: &[u8]) -> Result<PgOutputMessage, DecodeError> {
    let (&tag, _) = data.split_first().ok_or(DecodeError::Empty)?;
    let mut r = Reader {
        data,
        pos: 1,
        tag: tag as char,
    };
    let msg = match tag {
        b'B' => PgOutputMessage::Begin(Begin {
            final_lsn: r.u64()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
        }),
        b'C' => PgOutputMessage::Commit(Commit {
            flags: r.u8()?,
            commit_lsn: r.u64()?,
            end_lsn: r.u64()?,
            commit_time: r.i64()?,
        }),
        b'O' => PgOutputMessage::Origin(Origin {
            commit_lsn: r.u64()?,
            name: r.string()?,
        }),
        b'R' => {
            let id = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let replica_identity = r.u8()?;
            let ncols = r.i16()?;
            if ncols < 0 {
                return Err(r.invalid("column count"));
            }
            // Each column needs at least 10 bytes: do not trust ncols for
            // the allocation.
            let mut columns = Vec::with_capacity((ncols as usize).min(r.remaining() / 10));
            for _ in 0..ncols {
                columns.push(RelationColumn {
                    flags: r.u8()?,
                    name: r.string()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            PgOutputMessage::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => PgOutputMessage::Type(TypeMessage {
            oid: r.u32()?,
            namespace: r.string()?,
            name: r.string()?,
        }),
        b'I' => {
            let relation_id = r.u32()?;
            match r.u8()? {
                b'N' => {}
                _ => return Err(r.invalid("tuple marker")),
            }
            PgOutputMessage::Insert(Insert {
                relation_id,
                new: r.tuple()?,
            })
        }
        b'U' => {
            let relation_id = r.u32()?;
            let mut old = None;
            let mut marker = r.u8()?;
            if marker == b'K' || marker == b'O' {
                let kind = if marker == b'K' {
                    OldTupleKind::Key
                } else {
                    OldTupleKind::Full
                };
                old = Some((kind, r.tuple()?));
                marker = r.u8()?;
            }
            if marker != b'N' {
                return Err(r.invalid("tuple marker"));
            }
            PgOutputMessage::Update(Update {
                relation_id,
                old,
                new: r.tuple()?,
            })
        }
        b'D' => {
            let relation_id = r.u32()?;
            let old_kind = match r.u8()? {
                b'K' => OldTupleKind::Key,
                b'O' => OldTupleKind::Full,
                _ => return Err(r.invalid("tuple marker")),
            };
            PgOutputMessage::Delete(Delete {
                relation_id,
                old_kind,
                old: r.tuple()?,
            })
        }
        b'T' => {
            let n = r.i32()?;
            if n < 0 {
                return Err(r.invalid("relation count"));
            }
            let options = r.u8()?;
            let mut relation_ids = Vec::with_capacity((n as usize).min(r.remaining() / 4));
            for _ in 0..n {
                relation_ids.push(r.u32()?);
            }
            PgOutputMessage::Truncate(Truncate {
                options,
                relation_ids,
            })
        }
        other => return Err(DecodeError::UnknownTag(other)),
    };
    if r.remaining() != 0 {
        return Err(DecodeError::TrailingBytes {
            tag: r.tag,
            extra: r.remaining(),
        });
    }
    Ok(msg)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    tag: char,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn invalid(&self, what: &'static str) -> DecodeError {
        DecodeError::Invalid {
            tag: self.tag,
            what,
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                tag: self.tag,
                offset: self.pos,
            });
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self) -> Result<String, DecodeError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated {
                tag: self.tag,
                offset: self.data.len(),
            })?;
        let s = std::str::from_utf8(&rest[..end]).map_err(|_| self.invalid("UTF-8 string"))?;
        self.pos += end + 1;
        Ok(s.to_owned())
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let ncols = self.i16()?;
        if ncols < 0 {
            return Err(self.invalid("column count"));
        }
        let mut values = Vec::with_capacity((ncols as usize).min(self.remaining()));
        for _ in 0..ncols {
            let value = match self.u8()? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                kind @ (b't' | b'b') => {
                    let len = self.i32()?;
                    if len < 0 {
                        return Err(self.invalid("value length"));
                    }
                    let bytes = self.take(len as usize)?.to_vec();
                    if kind == b't' {
                        TupleValue::Text(bytes)
                    } else {
                        TupleValue::Binary(bytes)
                    }
                }
                _ => return Err(self.invalid("tuple value kind")),
            };
            values.push(value);
        }
        Ok(values)
    }
}

#[cfg(test)]
pub(crate) mod encode {
    //! A pgoutput encoder for tests: the inverse of [`super::decode`].
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn tuple(out: &mut Vec<u8>, t: &Tuple) {
        out.extend_from_slice(&(t.len() as i16).to_be_bytes());
        for v in t {
            match v {
                TupleValue::Null => out.push(b'n'),
                TupleValue::UnchangedToast => out.push(b'u'),
                TupleValue::Text(b) | TupleValue::Binary(b) => {
                    out.push(if matches!(v, TupleValue::Text(_)) {
                        b't'
                    } else {
                        b'b'
                    });
                    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }

    fn old_kind(k: OldTupleKind) -> u8 {
        match k {
            OldTupleKind::Key => b'K',
            OldTupleKind::Full => b'O',
        }
    }

    pub fn encode(msg: &PgOutputMessage) -> Vec<u8> {
        let mut out = Vec::new();
        match msg {
            PgOutputMessage::Begin(b) => {
                out.push(b'B');
                out.extend_from_slice(&b.final_lsn.to_be_bytes());
                out.extend_from_slice(&b.commit_time.to_be_bytes());
                out.extend_from_slice(&b.xid.to_be_bytes());
            }
            PgOutputMessage::Commit(c) => {
                out.push(b'C');
                out.push(c.flags);
                out.extend_from_slice(&c.commit_lsn.to_be_bytes());
                out.extend_from_slice(&c.end_lsn.to_be_bytes());
                out.extend_from_slice(&c.commit_time.to_be_bytes());
            }
            PgOutputMessage::Origin(o) => {
                out.push(b'O');
                out.extend_from_slice(&o.commit_lsn.to_be_bytes());
                string(&mut out, &o.name);
            }
            PgOutputMessage::Relation(r) => {
                out.push(b'R');
                out.extend_from_slice(&r.id.to_be_bytes());
                string(&mut out, &r.namespace);
                string(&mut out, &r.name);
                out.push(r.replica_identity);
                out.extend_from_slice(&(r.columns.len() as i16).to_be_bytes());
                for c in &r.columns {
                    out.push(c.flags);
                    string(&mut out, &c.name);
                    out.extend_from_slice(&c.type_oid.to_be_bytes());
                    out.extend_from_slice(&c.type_modifier.to_be_bytes());
                }
            }
            PgOutputMessage::Type(t) => {
                out.push(b'Y');
                out.extend_from_slice(&t.oid.to_be_bytes());
                string(&mut out, &t.namespace);
                string(&mut out, &t.name);
            }
            PgOutputMessage::Insert(i) => {
                out.push(b'I');
                out.extend_from_slice(&i.relation_id.to_be_bytes());
                out.push(b'N');
                tuple(&mut out, &i.new);
            }
            PgOutputMessage::Update(u) => {
                out.push(b'U');
                out.extend_from_slice(&u.relation_id.to_be_bytes());
                if let Some((kind, old)) = &u.old {
                    out.push(old_kind(*kind));
                    tuple(&mut out, old);
                }
                out.push(b'N');
                tuple(&mut out, &u.new);
            }
            PgOutputMessage::Delete(d) => {
                out.push(b'D');
                out.extend_from_slice(&d.relation_id.to_be_bytes());
                out.push(old_kind(d.old_kind));
                tuple(&mut out, &d.old);
            }
            PgOutputMessage::Truncate(t) => {
                out.push(b'T');
                out.extend_from_slice(&(t.relation_ids.len() as i32).to_be_bytes());
                out.push(t.options);
                for id in &t.relation_ids {
                    out.extend_from_slice(&id.to_be_bytes());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::encode::encode;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_hand_built_begin_and_commit() {
        let mut b = vec![b'B'];
        b.extend_from_slice(&0x0000_0001_0000_0010u64.to_be_bytes());
        b.extend_from_slice(&1_000_000i64.to_be_bytes());
        b.extend_from_slice(&742u32.to_be_bytes());
        assert_eq!(
            decode(&b).unwrap(),
            PgOutputMessage::Begin(Begin {
                final_lsn: 0x1_0000_0010,
                commit_time: 1_000_000,
                xid: 742
            })
        );

        let mut c = vec![b'C', 0];
        c.extend_from_slice(&16u64.to_be_bytes());
        c.extend_from_slice(&48u64.to_be_bytes());
        c.extend_from_slice(&5i64.to_be_bytes());
        assert_eq!(
            decode(&c).unwrap(),
            PgOutputMessage::Commit(Commit {
                flags: 0,
                commit_lsn: 16,
                end_lsn: 48,
                commit_time: 5
            })
        );
    }

    #[test]
    fn decodes_hand_built_relation_and_update_with_old_key() {
        let mut r = vec![b'R'];
        r.extend_from_slice(&16385u32.to_be_bytes());
        r.extend_from_slice(b"public\0orders\0d");
        r.extend_from_slice(&2i16.to_be_bytes());
        r.push(1);
        r.extend_from_slice(b"id\0");
        r.extend_from_slice(&20u32.to_be_bytes());
        r.extend_from_slice(&(-1i32).to_be_bytes());
        r.push(0);
        r.extend_from_slice(b"note\0");
        r.extend_from_slice(&25u32.to_be_bytes());
        r.extend_from_slice(&(-1i32).to_be_bytes());
        let PgOutputMessage::Relation(rel) = decode(&r).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(rel.namespace, "public");
        assert_eq!(rel.name, "orders");
        assert_eq!(rel.replica_identity, b'd');
        assert!(rel.columns[0].is_key());
        assert!(!rel.columns[1].is_key());
        assert_eq!(rel.columns[1].type_oid, 25);

        let mut u = vec![b'U'];
        u.extend_from_slice(&16385u32.to_be_bytes());
        u.push(b'K');
        u.extend_from_slice(&2i16.to_be_bytes());
        u.extend_from_slice(b"t\0\0\0\x011n");
        u.push(b'N');
        u.extend_from_slice(&2i16.to_be_bytes());
        u.extend_from_slice(b"t\0\0\0\x012u");
        assert_eq!(
            decode(&u).unwrap(),
            PgOutputMessage::Update(Update {
                relation_id: 16385,
                old: Some((
                    OldTupleKind::Key,
                    vec![TupleValue::Text(b"1".to_vec()), TupleValue::Null]
                )),
                new: vec![TupleValue::Text(b"2".to_vec()), TupleValue::UnchangedToast],
            })
        );
    }

    #[test]
    fn rejects_malformed_input_with_typed_errors() {
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        assert_eq!(decode(b"Z"), Err(DecodeError::UnknownTag(b'Z')));
        assert!(matches!(
            decode(b"B\0\0"),
            Err(DecodeError::Truncated { tag: 'B', .. })
        ));
        // Insert with a bad tuple marker.
        assert!(matches!(
            decode(b"I\0\0\0\x01X\0\0"),
            Err(DecodeError::Invalid { tag: 'I', .. })
        ));
        // A value length beyond the message.
        assert!(matches!(
            decode(b"I\0\0\0\x01N\0\x01t\x7f\xff\xff\xff"),
            Err(DecodeError::Truncated { tag: 'I', .. })
        ));
        // Negative value length.
        assert!(matches!(
            decode(b"I\0\0\0\x01N\0\x01t\xff\xff\xff\xff"),
            Err(DecodeError::Invalid { tag: 'I', .. })
        ));
        // Trailing bytes.
        let mut t = encode(&PgOutputMessage::Truncate(Truncate {
            options: 0,
            relation_ids: vec![1],
        }));
        t.push(0);
        assert!(matches!(
            decode(&t),
            Err(DecodeError::TrailingBytes { extra: 1, .. })
        ));
        // A string without its terminator.
        assert!(matches!(
            decode(b"Y\0\0\0\x01public"),
            Err(DecodeError::Truncated { tag: 'Y', .. })
        ));
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_ é]{0,12}"
    }

    fn tuple_value() -> impl Strategy<Value = TupleValue> {
        prop_oneof![
            Just(TupleValue::Null),
            Just(TupleValue::UnchangedToast),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(TupleValue::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(TupleValue::Binary),
        ]
    }

    fn tuple() -> impl Strategy<Value = Tuple> {
        proptest::collection::vec(tuple_value(), 0..8)
    }

    fn old_kind() -> impl Strategy<Value = OldTupleKind> {
        prop_oneof![Just(OldTupleKind::Key), Just(OldTupleKind::Full)]
    }

    fn message() -> impl Strategy<Value = PgOutputMessage> {
        prop_oneof![
            (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
                PgOutputMessage::Begin(Begin {
                    final_lsn,
                    commit_time,
                    xid,
                })
            }),
            (any::<u8>(), any::<u64>(), any::<u64>(), any::<i64>()).prop_map(
                |(flags, commit_lsn, end_lsn, commit_time)| PgOutputMessage::Commit(Commit {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time
                })
            ),
            (any::<u64>(), name()).prop_map(|(commit_lsn, name)| PgOutputMessage::Origin(Origin {
                commit_lsn,
                name
            })),
            (
                any::<u32>(),
                name(),
                name(),
                any::<u8>(),
                proptest::collection::vec(
                    (any::<u8>(), name(), any::<u32>(), any::<i32>()).prop_map(
                        |(flags, name, type_oid, type_modifier)| RelationColumn {
                            flags,
                            name,
                            type_oid,
                            type_modifier
                        }
                    ),
                    0..6
                )
            )
                .prop_map(|(id, namespace, name, replica_identity, columns)| {
                    PgOutputMessage::Relation(Relation {
                        id,
                        namespace,
                        name,
                        replica_identity,
                        columns,
                    })
                }),
            (any::<u32>(), name(), name()).prop_map(|(oid, namespace, name)| {
                PgOutputMessage::Type(TypeMessage {
                    oid,
                    namespace,
                    name,
                })
            }),
            (any::<u32>(), tuple()).prop_map(|(relation_id, new)| PgOutputMessage::Insert(
                Insert { relation_id, new }
            )),
            (
                any::<u32>(),
                proptest::option::of((old_kind(), tuple())),
                tuple()
            )
                .prop_map(|(relation_id, old, new)| PgOutputMessage::Update(Update {
                    relation_id,
                    old,
                    new
                })),
            (any::<u32>(), old_kind(), tuple()).prop_map(|(relation_id, old_kind, old)| {
                PgOutputMessage::Delete(Delete {
                    relation_id,
                    old_kind,
                    old,
                })
            }),
            (any::<u8>(), proptest::collection::vec(any::<u32>(), 0..6)).prop_map(
                |(options, relation_ids)| PgOutputMessage::Truncate(Truncate {
                    options,
                    relation_ids
                })
            ),
        ]
    }

    proptest! {
        #[test]
        fn encoded_messages_round_trip(msg in message()) {
            prop_assert_eq!(decode(&encode(&msg)).unwrap(), msg);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn tagged_garbage_never_panics(
            tag in prop_oneof![Just(b'B'), Just(b'C'), Just(b'O'), Just(b'R'), Just(b'Y'), Just(b'I'), Just(b'U'), Just(b'D'), Just(b'T')],
            bytes in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let mut input = vec![tag];
            input.extend_from_slice(&bytes);
            let _ = decode(&input);
        }

        #[test]
        fn truncated_valid_messages_fail_cleanly(msg in message(), cut in any::<prop::sample::Index>()) {
            let bytes = encode(&msg);
            let cut = cut.index(bytes.len());
            prop_assert!(decode(&bytes[..cut]).is_err());
        }
    }
}

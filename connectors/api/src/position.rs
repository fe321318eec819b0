//! Source positions: one variant per kind of log, each with an explicit order.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A PostgreSQL WAL location.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid LSN `{s}`: expected HI/LO in hex"))?;
        let hi = u64::from_str_radix(hi, 16).map_err(|e| format!("invalid LSN `{s}`: {e}"))?;
        let lo = u64::from_str_radix(lo, 16).map_err(|e| format!("invalid LSN `{s}`: {e}"))?;
        if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
            return Err(format!("invalid LSN `{s}`: part out of range"));
        }
        Ok(Lsn((hi << 32) | lo))
    }
}

/// Where a change sits in its source store's log.
///
/// Positions of one variant are totally ordered; positions of different
/// variants never compare (`partial_cmp` is `None`): a pipeline's checkpoint
/// always comes from the same kind of source.
///
/// Text form (stored in the target's checkpoint table):
/// `pg:0/16B3748`, `binlog:mysql-bin.000003:4567`, `gtid:0-1-42`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Position {
    /// PostgreSQL: a WAL location (commit LSN for a transaction).
    Pg(Lsn),
    /// MySQL/MariaDB file and offset. Ordered by the file's numeric suffix,
    /// then offset.
    Binlog { file: String, offset: u64 },
    /// MariaDB GTID `domain-server-sequence`. Ordered by domain, then
    /// sequence (server id does not order).
    MariaGtid {
        domain: u32,
        server: u32,
        sequence: u64,
    },
}

impl Position {
    pub fn as_lsn(&self) -> Option<Lsn> {
        match self {
            Position::Pg(lsn) => Some(*lsn),
            _ => None,
        }
    }
}

fn binlog_file_number(file: &str) -> Option<u64> {
    file.rsplit_once('.').and_then(|(_, n)| n.parse().ok())
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (self, other) {
            (Position::Pg(a), Position::Pg(b)) => Some(a.cmp(b)),
            (
                Position::Binlog {
                    file: fa,
                    offset: oa,
                },
                Position::Binlog {
                    file: fb,
                    offset: ob,
                },
            ) => {
                let by_file = match (binlog_file_number(fa), binlog_file_number(fb)) {
                    (Some(a), Some(b)) => a.cmp(&b),
                    _ => fa.cmp(fb),
                };
                Some(by_file.then(oa.cmp(ob)))
            }
            (
                Position::MariaGtid {
                    domain: da,
                    sequence: sa,
                    ..
                },
                Position::MariaGtid {
                    domain: db,
                    sequence: sb,
                    ..
                },
            ) => Some(da.cmp(db).then(sa.cmp(sb))),
            _ => None,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Pg(lsn) => write!(f, "pg:{lsn}"),
            Position::Binlog { file, offset } => write!(f, "binlog:{file}:{offset}"),
            Position::MariaGtid {
                domain,
                server,
                sequence,
            } => {
                write!(f, "gtid:{domain}-{server}-{sequence}")
            }
        }
    }
}

impl FromStr for Position {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("invalid position `{s}`: expected KIND:VALUE"))?;
        match kind {
            "pg" => Ok(Position::Pg(rest.parse()?)),
            "binlog" => {
                let (file, offset) = rest.rsplit_once(':').ok_or_else(|| {
                    format!("invalid position `{s}`: expected binlog:FILE:OFFSET")
                })?;
                let offset = offset
                    .parse()
                    .map_err(|e| format!("invalid position `{s}`: {e}"))?;
                Ok(Position::Binlog {
                    file: file.to_string(),
                    offset,
                })
            }
            "gtid" => {
                let parts: Vec<&str> = rest.split('-').collect();
                let [domain, server, sequence] = parts[..] else {
                    return Err(format!("invalid position `{s}`: expected gtid:D-S-N"));
                };
                let bad = |e: std::num::ParseIntError| format!("invalid position `{s}`: {e}");
                Ok(Position::MariaGtid {
                    domain: domain.parse().map_err(bad)?,
                    server: server.parse().map_err(bad)?,
                    sequence: sequence.parse().map_err(bad)?,
                })
            }
            other => Err(format!("invalid position `{s}`: unknown kind `{other}`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lsn_text_matches_postgres() {
        assert_eq!(Lsn(0x16B3748).to_string(), "0/16B3748");
        assert_eq!("1/0".parse::<Lsn>().unwrap(), Lsn(1 << 32));
        assert!("16B3748".parse::<Lsn>().is_err());
    }

    #[test]
    fn binlog_positions_order_by_file_number_then_offset() {
        let a = Position::Binlog {
            file: "bin.000009".into(),
            offset: 900,
        };
        let b = Position::Binlog {
            file: "bin.000010".into(),
            offset: 4,
        };
        assert!(a < b);
    }

    #[test]
    fn positions_of_different_kinds_do_not_compare() {
        let a = Position::Pg(Lsn(1));
        let b = Position::MariaGtid {
            domain: 0,
            server: 1,
            sequence: 1,
        };
        assert_eq!(a.partial_cmp(&b), None);
    }

    proptest! {
        #[test]
        fn pg_position_round_trips_through_text(v in any::<u64>()) {
            let p = Position::Pg(Lsn(v));
            prop_assert_eq!(p.to_string().parse::<Position>().unwrap(), p);
        }

        #[test]
        fn pg_text_order_is_lsn_order(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(Position::Pg(Lsn(a)).partial_cmp(&Position::Pg(Lsn(b))), Some(a.cmp(&b)));
        }

        #[test]
        fn binlog_and_gtid_round_trip(n in 0u32..999_999, off in any::<u64>(), d in any::<u32>(), s in any::<u32>(), q in any::<u64>()) {
            let p = Position::Binlog { file: format!("mysql-bin.{n:06}"), offset: off };
            prop_assert_eq!(p.to_string().parse::<Position>().unwrap(), p);
            let g = Position::MariaGtid { domain: d, server: s, sequence: q };
            prop_assert_eq!(g.to_string().parse::<Position>().unwrap(), g);
        }
    }
}

//! Random values of every type a source decodes travel decode → change log
//! (`log::codec`) → sink encoding, and come out as the source's own text
//! form. The servers are the oracle: PostgreSQL renders each random value's
//! canonical text (what pgoutput would send) and reads back the sink's
//! binary encoding; MariaDB reads back the sink's literal next to the
//! value's text form in a column of the same type.
//!
//! Each type's values go through one query per step (arrays, multi-row
//! inserts), so thousands of values take a few seconds. The random seed is
//! printed; set `CALLOSUM_SEED` to replay a failure.

#[path = "../common/mod.rs"]
mod common;
mod mariadb;
mod postgres;

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use callosum::log::codec;
use callosum::testkit::{MariaDbServer, PgServer};
use callosum_api::{ChangeEvent, ColumnSchema, RowChange, TableId, TableSchema, Value};
use callosum_postgres::sink_convert::{self, PgType};
use callosum_postgres::text_value;
use mysql_async::prelude::Queryable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::types::{to_sql_checked, IsNull, Kind, ToSql, Type};

/// Values per type.
const N: usize = 2000;

fn rng() -> StdRng {
    let seed = std::env::var("CALLOSUM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("CALLOSUM_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// The values through the change log's record-batch encoding, as the apply
/// side reads them back.
fn through_the_log(source_type: &str, values: Vec<Value>) -> Vec<Value> {
    let schema = Arc::new(TableSchema {
        table: TableId::new("public", "t"),
        columns: vec![ColumnSchema {
            name: "c".into(),
            source_type: source_type.into(),
            is_key: false,
        }],
    });
    let events: Vec<ChangeEvent> = values
        .into_iter()
        .map(|v| ChangeEvent {
            schema: schema.clone(),
            change: RowChange::Insert { row: vec![v] },
        })
        .collect();
    let bytes = codec::encode_batch(&events).unwrap();
    let decoded = codec::decode_batch(&bytes).unwrap();
    assert_eq!(
        format!("{decoded:?}"),
        format!("{events:?}"),
        "the log changed a {source_type} value"
    );
    decoded
        .into_iter()
        .map(|e| match e.change {
            RowChange::Insert { mut row } => row.remove(0),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

fn digits(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

fn random_text(rng: &mut StdRng, max: usize) -> String {
    let len = rng.gen_range(0..=max);
    (0..len)
        .map(|_| match rng.gen_range(0..4) {
            0 => char::from(rng.gen_range(b' '..=b'~')),
            1 => rng.gen_range('\u{1}'..='\u{7ff}'),
            2 => rng.gen_range('\u{800}'..='\u{d7ff}'),
            _ => rng.gen_range('\u{10000}'..='\u{10ffff}'),
        })
        .collect()
}

fn random_json(rng: &mut StdRng, depth: u32) -> serde_json::Value {
    use serde_json::Value as J;
    match rng.gen_range(0..if depth > 2 { 5 } else { 7 }) {
        0 => J::Null,
        1 => J::Bool(rng.gen()),
        2 => J::from(rng.gen::<i64>()),
        3 => J::from(rng.gen::<f64>() * 1e6),
        4 => J::String(random_text(rng, 10).replace('\0', "")),
        5 => J::Array(
            (0..rng.gen_range(0..4))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
        _ => J::Object(
            (0..rng.gen_range(0..4))
                .map(|_| (random_text(rng, 6), random_json(rng, depth + 1)))
                .collect(),
        ),
    }
}

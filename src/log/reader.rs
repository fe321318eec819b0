//! A pipeline's read cursor over one source store's log.

use callosum_api::{ChangeEvent, Position, TableId};
use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::watch;

use super::codec::{self, TxnRecord};
use super::{key_seq, seq_key, LogError, StoreLog};

/// What a pipeline has yet to apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub transactions: u64,
    pub events: u64,
    /// Commit time (µs since epoch) of the oldest transaction not applied.
    pub oldest_commit_micros: Option<i64>,
}

/// Most transactions in one batch: transactions of other pipelines' tables
/// count no events, and a batch of them must still end.
const MAX_BATCH_TRANSACTIONS: usize = 10_000;

/// What of a store's log belongs to one pipeline: the store's log holds the
/// tables of every pipeline reading it, and the transactions Callosum
/// applied into the store from each pipeline's own target.
#[derive(Clone, Debug, Default)]
pub struct PipelineFilter {
    /// The pipeline's source tables.
    pub tables: HashSet<TableId>,
    /// Transactions that came from this store (the pipeline's target) are
    /// skipped whole: no echo.
    pub skip_origin: Option<String>,
}

/// Where a filtered read of one transaction stopped, so that reading its
/// next chunk does not scan it from the start again.
#[derive(Clone, Copy, Debug)]
struct FilteredCursor {
    first_batch: u64,
    first_index: u32,
    /// Events of the pipeline's tables passed so far.
    passed: u64,
    /// Stored events scanned so far.
    scanned: u64,
}

/// Reads committed transactions in order for one pipeline.
///
/// The reader only sees durable transactions. Its position is set from the
/// target's checkpoint ([`LogReader::seek_after`]), so a crash between the
/// target's commit and [`LogReader::mark_applied`] costs nothing: the cursor
/// stored here only decides what truncation may remove.
pub struct LogReader {
    store: Arc<StoreLog>,
    pipeline: String,
    next_seq: u64,
    durable: watch::Receiver<u64>,
    cached_batch: Option<(u64, Arc<Vec<ChangeEvent>>)>,
    applied_cumulative: Option<u64>,
    filter: Option<Arc<PipelineFilter>>,
    filtered_cursor: Option<FilteredCursor>,
    /// The target's checkpoint while transactions at or below it may still
    /// enter the log (a source resumed from an older checkpoint than this
    /// pipeline's: an empty log resumes from the oldest of the store's
    /// targets); cleared at the first transaction past it.
    floor: Option<Position>,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("store", &self.store.name)
            .field("pipeline", &self.pipeline)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl LogReader {
    pub(crate) fn new(store: Arc<StoreLog>, pipeline: &str) -> Self {
        let durable = store.durable.subscribe();
        Self {
            store,
            pipeline: pipeline.to_string(),
            next_seq: 0,
            durable,
            cached_batch: None,
            applied_cumulative: None,
            filter: None,
            filtered_cursor: None,
            floor: None,
        }
    }

    /// Reads only what belongs to the pipeline: [`Self::peek_transactions`]
    /// narrows each transaction's `events` to the pipeline's tables (zero
    /// for a transaction of other tables only, or one that came from
    /// `skip_origin`), and [`Self::read_events`] reads only those. Such
    /// transactions still pass through the apply loop, so the pipeline's
    /// checkpoint moves past them.
    pub fn set_filter(&mut self, filter: PipelineFilter) {
        self.filter = Some(Arc::new(filter));
    }

    /// `txn` as the pipeline sees it (see [`Self::set_filter`]).
    fn narrow(&self, mut txn: TxnRecord) -> Result<TxnRecord, LogError> {
        let Some(filter) = &self.filter else {
            return Ok(txn);
        };
        let wanted = if txn.origin.is_some() && txn.origin == filter.skip_origin {
            0
        } else {
            match &txn.tables {
                Some(tables) => tables
                    .iter()
                    .filter(|(t, _)| filter.tables.contains(t))
                    .map(|(_, n)| n)
                    .sum(),
                // format version 1: count them
                None => {
                    let mut n = 0;
                    self.scan(&txn, 0, |event| {
                        n += u64::from(filter.tables.contains(&event.schema.table));
                        true
                    })?;
                    n
                }
            }
        };
        if wanted != txn.events {
            txn.stored_events = Some(txn.events);
            txn.events = wanted;
        }
        Ok(txn)
    }

    /// Calls `f` on the stored events of `txn` from the `from`th on, until
    /// it returns false or the transaction ends; returns how many it saw.
    fn scan(
        &self,
        txn: &TxnRecord,
        from: u64,
        mut f: impl FnMut(&ChangeEvent) -> bool,
    ) -> Result<u64, LogError> {
        let stored = txn.stored_events.unwrap_or(txn.events);
        let mut to_skip = txn.first_index as u64 + from;
        let mut seen = 0u64;
        let mut batch_key = txn.first_batch;
        while from + seen < stored {
            let batch = self.load_batch(batch_key)?;
            let len = batch.len() as u64;
            if to_skip >= len {
                to_skip -= len;
            } else {
                let n = (len - to_skip).min(stored - from - seen) as usize;
                for event in &batch[to_skip as usize..to_skip as usize + n] {
                    seen += 1;
                    if !f(event) {
                        return Ok(seen);
                    }
                }
                to_skip = 0;
            }
            batch_key += 1;
        }
        Ok(seen)
    }

    /// Positions the reader on the first transaction after `checkpoint` (the
    /// target's stored position; `None` for a new pipeline). Fails when the
    /// log was truncated past it.
    pub fn seek_after(&mut self, checkpoint: Option<&Position>) -> Result<(), LogError> {
        let truncation = self.store.truncation()?;
        if let Some(through) = &truncation.through_position {
            let missed = match checkpoint {
                None => true,
                Some(cp) => match cp.partial_cmp(through) {
                    Some(order) => order == Ordering::Less,
                    None => {
                        return Err(LogError::IncomparablePosition {
                            checkpoint: cp.to_string(),
                            log_position: through.to_string(),
                        })
                    }
                },
            };
            if missed {
                return Err(LogError::Gap {
                    checkpoint: checkpoint.map_or("(none)".to_string(), |p| p.to_string()),
                    truncated_through: through.to_string(),
                });
            }
        }
        let start = truncation.through_seq.map_or(0, |s| s + 1);
        self.next_seq = start;
        self.applied_cumulative = None;
        self.floor = checkpoint.cloned();
        let durable = *self.durable.borrow();
        self.skip_at_or_below_floor(durable)
    }

    /// Waits until a durable transaction is there to read.
    pub async fn wait_for_transactions(&mut self) {
        let next = self.next_seq;
        // the sender lives as long as the store; an error means shutdown
        let _ = self.durable.wait_for(|durable| *durable > next).await;
    }

    /// Whether a durable transaction is there to read now.
    pub fn has_transactions(&self) -> bool {
        *self.durable.borrow() > self.next_seq
    }

    /// The next durable transactions, whole, starting at the cursor: as many
    /// as fit in `max_events` events, and at least one if there is any.
    /// Does not move the cursor, except past transactions at or below the
    /// checkpoint given to [`Self::seek_after`] that entered the log after
    /// it: the target holds them already.
    pub fn peek_transactions(
        &mut self,
        max_events: u64,
    ) -> Result<Vec<(u64, TxnRecord)>, LogError> {
        let durable = *self.durable.borrow();
        if self.floor.is_some() {
            self.skip_at_or_below_floor(durable)?;
        }
        let mut out = Vec::new();
        let mut events = 0u64;
        for entry in self
            .store
            .txns
            .range(seq_key(self.next_seq)..seq_key(durable))
        {
            let (key, value) = entry?;
            let txn = self.narrow(codec::decode_txn(&value)?)?;
            if !out.is_empty() && events + txn.events > max_events {
                break;
            }
            events += txn.events;
            out.push((key_seq(&key)?, txn));
            if events >= max_events || out.len() >= MAX_BATCH_TRANSACTIONS {
                break;
            }
        }
        Ok(out)
    }

    /// Moves the cursor past the durable transactions at or below
    /// [`Self::floor`], clearing it at the first one past it.
    fn skip_at_or_below_floor(&mut self, durable: u64) -> Result<(), LogError> {
        let Some(floor) = self.floor.clone() else {
            return Ok(());
        };
        for entry in self
            .store
            .txns
            .range(seq_key(self.next_seq)..seq_key(durable))
        {
            let (key, value) = entry?;
            let txn = codec::decode_txn(&value)?;
            match txn.position.partial_cmp(&floor) {
                Some(Ordering::Greater) => {
                    self.floor = None;
                    break;
                }
                Some(_) => {}
                None => {
                    return Err(LogError::IncomparablePosition {
                        checkpoint: floor.to_string(),
                        log_position: txn.position.to_string(),
                    })
                }
            }
            self.next_seq = key_seq(&key)? + 1;
            self.applied_cumulative = Some(txn.cumulative_events);
        }
        Ok(())
    }

    /// Appends to `out` up to `limit` events of `txn`, skipping its first
    /// `skip` events.
    pub fn read_events(
        &mut self,
        txn: &TxnRecord,
        skip: u64,
        limit: u64,
        out: &mut Vec<ChangeEvent>,
    ) -> Result<(), LogError> {
        if txn.stored_events.is_some() {
            return self.read_filtered(txn, skip, limit, out);
        }
        let wanted = txn.events.saturating_sub(skip).min(limit);
        let mut to_skip = txn.first_index as u64 + skip;
        let mut taken = 0u64;
        let mut batch_key = txn.first_batch;
        while taken < wanted {
            let batch = self.batch(batch_key)?;
            let len = batch.len() as u64;
            if to_skip >= len {
                to_skip -= len;
            } else {
                let from = to_skip as usize;
                let n = (len - to_skip).min(wanted - taken) as usize;
                out.extend_from_slice(&batch[from..from + n]);
                taken += n as u64;
                to_skip = 0;
            }
            batch_key += 1;
        }
        Ok(())
    }

    /// [`Self::read_events`] of a transaction narrowed to the pipeline's
    /// tables: `skip` and `limit` count the pipeline's events only.
    fn read_filtered(
        &mut self,
        txn: &TxnRecord,
        skip: u64,
        limit: u64,
        out: &mut Vec<ChangeEvent>,
    ) -> Result<(), LogError> {
        let wanted = txn.events.saturating_sub(skip).min(limit);
        if wanted == 0 {
            return Ok(());
        }
        let Some(filter) = self.filter.clone() else {
            return Err(LogError::Corrupt("a narrowed transaction without a filter"));
        };
        let mut cursor = match self.filtered_cursor {
            Some(c)
                if c.first_batch == txn.first_batch
                    && c.first_index == txn.first_index
                    && c.passed <= skip =>
            {
                c
            }
            _ => FilteredCursor {
                first_batch: txn.first_batch,
                first_index: txn.first_index,
                passed: 0,
                scanned: 0,
            },
        };
        let mut taken = 0u64;
        let scanned = self.scan(txn, cursor.scanned, |event| {
            if filter.tables.contains(&event.schema.table) {
                if cursor.passed >= skip {
                    out.push(event.clone());
                    taken += 1;
                }
                cursor.passed += 1;
            }
            taken < wanted
        })?;
        cursor.scanned += scanned;
        self.filtered_cursor = Some(cursor);
        Ok(())
    }

    fn batch(&mut self, key: u64) -> Result<Arc<Vec<ChangeEvent>>, LogError> {
        if let Some((cached, batch)) = &self.cached_batch {
            if *cached == key {
                return Ok(batch.clone());
            }
        }
        let batch = self.load_batch(key)?;
        self.cached_batch = Some((key, batch.clone()));
        Ok(batch)
    }

    fn load_batch(&self, key: u64) -> Result<Arc<Vec<ChangeEvent>>, LogError> {
        if let Some((cached, batch)) = &self.cached_batch {
            if *cached == key {
                return Ok(batch.clone());
            }
        }
        let bytes = self
            .store
            .records
            .get(seq_key(key))?
            .ok_or(LogError::Corrupt(
                "a transaction refers to a missing record batch",
            ))?;
        Ok(Arc::new(codec::decode_batch(&bytes)?))
    }

    /// Moves the cursor past transaction `seq` (applied and committed in the
    /// target) and stores it for truncation.
    pub fn mark_applied(&mut self, seq: u64, txn: &TxnRecord) -> Result<(), LogError> {
        self.next_seq = seq + 1;
        self.applied_cumulative = Some(txn.cumulative_events);
        self.store
            .cursors
            .insert(self.store.cursor_key(&self.pipeline), codec::encode(&seq)?)?;
        Ok(())
    }

    /// What is durable in the log and not yet applied by this pipeline.
    pub fn pending(&self) -> Result<Pending, LogError> {
        let durable = *self.durable.borrow();
        if durable <= self.next_seq {
            return Ok(Pending::default());
        }
        let first = self.store.txns.range(seq_key(self.next_seq)..).next();
        let last = self.store.txns.range(..seq_key(durable)).next_back();
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(Pending::default());
        };
        let first: TxnRecord = codec::decode_txn(&first?.1)?;
        let last: TxnRecord = codec::decode_txn(&last?.1)?;
        Ok(Pending {
            transactions: durable - self.next_seq,
            events: last.cumulative_events - (first.cumulative_events - first.events),
            oldest_commit_micros: Some(first.commit_time_micros),
        })
    }

    /// The sequence of the next transaction to read.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Moves the cursor past transaction `seq` without storing it: for a
    /// reader that reads ahead of what is applied.
    pub fn skip_past(&mut self, seq: u64) {
        self.next_seq = seq + 1;
    }

    /// A second reader of the same pipeline at the same place, to read ahead
    /// in another task. Only one of them should [`mark_applied`](Self::mark_applied).
    pub fn fork(&self) -> LogReader {
        let mut reader = LogReader::new(self.store.clone(), &self.pipeline);
        reader.next_seq = self.next_seq;
        reader.filter = self.filter.clone();
        reader.floor = self.floor.clone();
        reader
    }
}

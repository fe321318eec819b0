//! The single writer of one source store's log.

use callosum_api::{ChangeEvent, Position, TableId, TransactionMeta};
use std::sync::Arc;

use super::codec::{self, Head, TxnRecord};
use super::{key_seq, seq_key, LogError, StoreLog, HEAD_KEY};

/// Events per record batch: large enough that sled sees few, big values
/// (a per-event key caps near 100k events/s), small enough that a batch being
/// filled costs little memory.
pub const EVENTS_PER_BATCH: usize = 2048;

/// Appends committed source transactions to a store's log.
///
/// Use: `begin`, `append`…, `commit` (or `discard`) per transaction, and
/// `flush` whenever the source wants to acknowledge: only positions returned
/// by `flush` may be acknowledged upstream.
pub struct LogWriter {
    store: Arc<StoreLog>,
    head: Head,
    /// Events of the batch being filled (key `head.next_batch_key`).
    batch: Vec<ChangeEvent>,
    /// The open transaction, if any: where its first event is and how many.
    open: Option<OpenTxn>,
    /// Committed transactions not yet written to the index.
    committed: Vec<TxnRecord>,
    /// Events of `committed`, for `unflushed_events`.
    committed_events: u64,
    /// A newer idle resume position to record at the next flush.
    progress: Option<Position>,
}

struct OpenTxn {
    first_batch: u64,
    first_index: u32,
    events: u64,
    /// Events per table ([`TxnRecord::tables`]).
    tables: Vec<(TableId, u64)>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("store", &self.store.name)
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl LogWriter {
    /// Opens the writer, removing whatever a crash left after the last flush.
    pub(crate) fn recover(store: Arc<StoreLog>) -> Result<Self, LogError> {
        let head = store.head()?;
        let mut stale = sled::Batch::default();
        for entry in store.txns.range(seq_key(head.next_txn_seq)..) {
            stale.remove(entry?.0);
        }
        store.txns.apply_batch(stale)?;
        let mut stale = sled::Batch::default();
        for entry in store.records.range(seq_key(head.next_batch_key)..) {
            stale.remove(entry?.0);
        }
        store.records.apply_batch(stale)?;
        // sanity: the index ends below the head
        if let Some((key, _)) = store.txns.last()? {
            if key_seq(&key)? >= head.next_txn_seq {
                return Err(LogError::Corrupt("transaction index beyond head"));
            }
        }
        Ok(Self {
            store,
            head,
            batch: Vec::with_capacity(EVENTS_PER_BATCH),
            open: None,
            committed: Vec::new(),
            committed_events: 0,
            progress: None,
        })
    }

    /// Where the source resumes after a restart: transactions at or below it
    /// are already durable here (or were never wanted).
    pub fn resume_position(&self) -> Option<Position> {
        self.progress
            .clone()
            .or_else(|| self.committed.last().map(|t| t.resume_position.clone()))
            .or_else(|| self.head.resume_position.clone())
    }

    /// The position of the newest committed transaction this log holds
    /// (committed here, durable, or truncated away), `None` for a log that
    /// never held one.
    pub fn last_position(&self) -> Result<Option<Position>, LogError> {
        if let Some(t) = self.committed.last() {
            return Ok(Some(t.position.clone()));
        }
        if let Some((_, value)) = self.store.txns.last()? {
            return Ok(Some(codec::decode_txn(&value)?.position));
        }
        Ok(self.store.truncation()?.through_position)
    }

    /// The newest durable position every one of `pipelines` has applied to
    /// its target: the resume position of the last transaction all of them
    /// applied (their cursors, written after each target commit), or the
    /// durable head (idle progress included) when all of them applied
    /// everything the log holds. `None` when some pipeline has applied
    /// nothing yet. Never beyond the last flush.
    ///
    /// With `acknowledge = "applied"` this, not [`LogWriter::flush`]'s
    /// position, is what the source is told: a lost `data_dir` then loses
    /// nothing the source cannot send again.
    pub fn applied_by_all(&self, pipelines: &[String]) -> Result<Option<Position>, LogError> {
        if pipelines.is_empty() {
            return Ok(None);
        }
        let applied_below = self
            .store
            .applied_by_all(pipelines)?
            .map_or(0, |through| through + 1);
        if applied_below >= self.head.next_txn_seq {
            return Ok(self.head.resume_position.clone());
        }
        let Some(last_applied) = applied_below.checked_sub(1) else {
            return Ok(None);
        };
        if let Some(bytes) = self.store.txns.get(seq_key(last_applied))? {
            return Ok(Some(codec::decode_txn(&bytes)?.resume_position));
        }
        // truncated: it was the newest transaction truncation removed, whose
        // position (not later than its resume position) the mark keeps
        let mark = self.store.truncation()?;
        Ok(match mark.through_seq {
            Some(seq) if seq == last_applied => mark.through_position,
            _ => None,
        })
    }

    /// The durable resume position (what a restart would use now).
    pub fn durable_resume_position(&self) -> Option<&Position> {
        self.head.resume_position.as_ref()
    }

    /// Starts a transaction. A transaction still open is discarded.
    pub fn begin(&mut self) {
        if self.open.is_some() {
            self.drop_open();
        }
        self.open = Some(OpenTxn {
            first_batch: self.head.next_batch_key,
            first_index: self.batch.len() as u32,
            events: 0,
            tables: Vec::new(),
        });
    }

    /// Appends one change of the open transaction. Full record batches are
    /// written to sled (not yet flushed): a large transaction spills here
    /// instead of growing in memory.
    pub fn append(&mut self, event: ChangeEvent) -> Result<(), LogError> {
        let open = self
            .open
            .as_mut()
            .ok_or(LogError::Corrupt("change outside a transaction"))?;
        open.events += 1;
        let table = &event.schema.table;
        // most transactions change one table, or a few in runs
        match open.tables.iter_mut().rev().find(|(t, _)| t == table) {
            Some((_, n)) => *n += 1,
            None => open.tables.push((table.clone(), 1)),
        }
        self.batch.push(event);
        if self.batch.len() >= EVENTS_PER_BATCH {
            self.write_batch()?;
        }
        Ok(())
    }

    /// Commits the open transaction: it becomes durable and visible at the
    /// next [`LogWriter::flush`].
    pub fn commit(&mut self, meta: TransactionMeta) -> Result<(), LogError> {
        let open = self
            .open
            .take()
            .ok_or(LogError::Corrupt("commit outside a transaction"))?;
        if open.events == 0 {
            // nothing to apply: only remember how far the source got
            self.progress = Some(meta.resume_position);
            return Ok(());
        }
        let last_batch = self.head.next_batch_key;
        let cumulative = self.head.cumulative_events + self.committed_events + open.events;
        self.committed_events += open.events;
        self.committed.push(TxnRecord {
            position: meta.position,
            resume_position: meta.resume_position,
            commit_time_micros: meta.commit_time_micros,
            first_batch: open.first_batch,
            first_index: open.first_index,
            last_batch: if self.batch.is_empty() {
                last_batch - 1
            } else {
                last_batch
            },
            events: open.events,
            cumulative_events: cumulative,
            origin: meta.origin,
            tables: Some(open.tables),
            stored_events: None,
        });
        self.progress = None;
        Ok(())
    }

    /// Drops the open transaction (echo, or already in the log) and records
    /// that the source got past it.
    pub fn discard(&mut self, resume_position: Position) {
        self.drop_open();
        self.progress = Some(resume_position);
    }

    /// Drops the open transaction without recording progress: the source
    /// connection broke and the transaction will be sent again.
    pub fn abandon_open(&mut self) {
        self.drop_open();
    }

    /// Records that the source has nothing more up to `position`.
    pub fn progress(&mut self, position: Position) {
        if self.open.is_none() {
            self.progress = Some(position);
        }
    }

    /// Events of committed transactions not yet flushed.
    pub fn unflushed_events(&self) -> u64 {
        self.committed_events
    }

    /// Whether a flush would make anything new durable.
    pub fn has_unflushed(&self) -> bool {
        !self.committed.is_empty() || self.progress.is_some()
    }

    /// Whether a transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Writes committed transactions and the head, and waits until they are
    /// durable. Returns the position the source may now acknowledge.
    pub async fn flush(&mut self) -> Result<Option<Position>, LogError> {
        if !self.has_unflushed() {
            return Ok(self.head.resume_position.clone());
        }
        let _pending = FlushInProgress::start(self.store.clone());
        if !self.batch.is_empty() {
            // an open transaction continues in the next batch; its first
            // events stay where they are (a transaction's events are
            // contiguous across batch keys)
            self.write_batch()?;
        }
        let mut index = sled::Batch::default();
        let mut next_seq = self.head.next_txn_seq;
        for txn in &self.committed {
            index.insert(&seq_key(next_seq), codec::encode(txn)?);
            next_seq += 1;
        }
        self.store.txns.apply_batch(index)?;
        let mut head = self.head.clone();
        head.next_txn_seq = next_seq;
        head.cumulative_events += self.committed_events;
        if let Some(last) = self.committed.last() {
            head.last_commit_micros = last.commit_time_micros;
        }
        head.resume_position = self.resume_position();
        self.store.meta.insert(HEAD_KEY, codec::encode(&head)?)?;
        self.store.meta.flush_async().await?;
        self.head = head;
        self.committed.clear();
        self.committed_events = 0;
        self.progress = None;
        self.store.durable.send_replace(self.head.next_txn_seq);
        Ok(self.head.resume_position.clone())
    }

    fn write_batch(&mut self) -> Result<(), LogError> {
        let bytes = codec::encode_batch(&self.batch)?;
        self.store
            .records
            .insert(seq_key(self.head.next_batch_key), bytes)?;
        self.head.next_batch_key += 1;
        self.batch.clear();
        Ok(())
    }

    fn drop_open(&mut self) {
        if let Some(open) = self.open.take() {
            if open.first_batch == self.head.next_batch_key {
                self.batch.truncate(open.first_index as usize);
            } else {
                self.batch.clear();
            }
            // events already spilled to earlier batches stay there,
            // referenced by no transaction, until truncation removes them
        }
    }
}

/// Marks a flush as in progress for [`super::ChangeLog::flush_pending_for`]
/// until dropped, whatever path the flush takes.
struct FlushInProgress(Arc<StoreLog>);

impl FlushInProgress {
    fn start(store: Arc<StoreLog>) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(1)
            .max(1);
        store
            .flush_started_micros
            .store(now, std::sync::atomic::Ordering::Relaxed);
        Self(store)
    }
}

impl Drop for FlushInProgress {
    fn drop(&mut self) {
        self.0
            .flush_started_micros
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

//! A pipeline's dead-letter queue with the rows it holds back.

use callosum_api::{ChangeEvent, ConnectorError, Sink};

use super::{BlockedRows, DiscardReport, DiscardSelection};
use crate::log::{DeadLetter, DeadLetterReason, DeadLetters, LogError, LogReader, TxnRecord};

/// How much a dead-letter queue holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueSize {
    pub transactions: u64,
    pub events: u64,
}

/// One pipeline's dead-letter queue as its apply worker uses it: the stored
/// queue and the rows it holds back, kept in step.
#[derive(Debug)]
pub struct DeadLetterQueue {
    queue: DeadLetters,
    blocked: BlockedRows,
    size: QueueSize,
}

impl DeadLetterQueue {
    /// Opens `queue` and reads which rows its entries hold back.
    pub fn open(queue: DeadLetters) -> Result<Self, LogError> {
        let mut this = Self {
            queue,
            blocked: BlockedRows::default(),
            size: QueueSize::default(),
        };
        this.reload()?;
        Ok(this)
    }

    /// Reads the held-back rows again from the stored queue (after entries
    /// were replayed or discarded).
    pub fn reload(&mut self) -> Result<(), LogError> {
        let mut blocked = BlockedRows::default();
        let mut size = QueueSize::default();
        let mut events: Vec<ChangeEvent> = Vec::new();
        for entry in self.queue.list()? {
            let mut read = 0;
            while read < entry.events {
                events.clear();
                self.queue.read_events(&entry, read, 4096, &mut events)?;
                for event in &events {
                    blocked.add(entry.id, event);
                }
                read += events.len() as u64;
            }
            size.transactions += 1;
            size.events += entry.events;
        }
        self.blocked = blocked;
        self.size = size;
        Ok(())
    }

    /// The stored queue.
    pub fn stored(&self) -> &DeadLetters {
        &self.queue
    }

    /// Nothing is queued, so nothing is held back.
    pub fn is_empty(&self) -> bool {
        self.size.transactions == 0 && self.blocked.is_empty()
    }

    pub fn size(&self) -> QueueSize {
        self.size
    }

    /// The newest queued transaction that `events` (one whole source
    /// transaction) must queue behind, if any.
    pub fn blocking(&self, events: &[ChangeEvent]) -> Option<u64> {
        self.blocked.blocking(events)
    }

    /// Moves the log transaction `txn` into the queue, durably, and holds
    /// back its rows. Idempotent (see [`DeadLetters::add`]).
    pub async fn add(
        &mut self,
        reader: &mut LogReader,
        txn: &TxnRecord,
        reason: DeadLetterReason,
    ) -> Result<DeadLetter, LogError> {
        let blocked = &mut self.blocked;
        let mut added = false;
        let entry = self.queue.add(reader, txn, reason, &mut |id, event| {
            added = true;
            blocked.add(id, event);
        })?;
        self.queue.flush().await?;
        if added {
            self.size.transactions += 1;
            self.size.events += entry.events;
        }
        Ok(entry)
    }

    /// Drops entries without applying them, durably: from the target's
    /// dead-letter table through `sink` first, then from the queue (a crash
    /// in between leaves them in the queue only, and the start's
    /// reconciliation removes them).
    pub async fn discard<K: Sink>(
        &mut self,
        sink: &mut K,
        which: DiscardSelection,
    ) -> Result<DiscardReport, ConnectorError> {
        let ids: Vec<u64> = match which {
            DiscardSelection::One(id) => vec![id],
            DiscardSelection::All => self.queue.list()?.iter().map(|e| e.id).collect(),
        };
        sink.discard_dead_letters(&ids).await?;
        let mut discarded = Vec::new();
        for id in ids {
            if self.queue.remove(id)? {
                discarded.push(id);
            }
        }
        self.queue.flush().await?;
        self.reload()?;
        Ok(DiscardReport {
            discarded,
            remaining: self.size.transactions,
        })
    }
}

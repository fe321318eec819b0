//! The apply worker: reads whole transactions from the change log and
//! applies them to the target exactly once.
//!
//! Exactly-once rests on the target's checkpoint row, written in the same
//! target transaction as the data it covers: on start the worker reads it
//! and skips every transaction at or below it, so a crash anywhere (before,
//! during or after the target's commit) neither loses nor repeats a
//! transaction.

use callosum_api::{ChangeEvent, ConnectorError, Position, Sink};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::log::{LogReader, Pending, TxnRecord};

/// What the apply worker reports as it goes.
pub trait ApplyObserver: Send {
    /// A target transaction committed.
    fn applied(&mut self, batch: &AppliedBatch);
    /// What is left to apply, after each batch and when idle.
    fn pending(&mut self, pending: &Pending);
}

/// A committed target transaction.
#[derive(Debug)]
pub struct AppliedBatch<'a> {
    pub transactions: &'a [(u64, TxnRecord)],
    pub events: u64,
    pub duration: Duration,
    pub checkpoint: &'a Position,
}

/// Runs until `shutdown` turns true between two batches (returns `Ok`) or
/// the sink or the log fails (the open target transaction is rolled back
/// first). `max_batch_events` bounds both a target transaction made of
/// several source transactions and the chunks a large source transaction is
/// applied in (inside one target transaction).
pub async fn apply<K: Sink>(
    sink: &mut K,
    reader: &mut LogReader,
    max_batch_events: u64,
    observer: &mut impl ApplyObserver,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ConnectorError> {
    let checkpoint = sink.checkpoint().await?;
    reader.seek_after(checkpoint.as_ref())?;
    let mut events: Vec<ChangeEvent> = Vec::new();
    loop {
        if crate::shutdown::is_requested(shutdown) {
            return Ok(());
        }
        if !reader.has_transactions() {
            observer.pending(&reader.pending()?);
            tokio::select! {
                _ = crate::shutdown::requested(shutdown) => return Ok(()),
                _ = reader.wait_for_transactions() => {}
            }
        }
        let transactions = reader.peek_transactions(max_batch_events)?;
        let Some((last_seq, last)) = transactions.last() else {
            continue;
        };
        let started = Instant::now();
        let result = apply_batch(sink, reader, &transactions, max_batch_events, &mut events).await;
        let applied_events = match result {
            Ok(n) => n,
            Err(err) => {
                // best effort: the connection may be gone, and then so is the transaction
                let _ = sink.rollback().await;
                return Err(err);
            }
        };
        reader.mark_applied(*last_seq, last)?;
        observer.applied(&AppliedBatch {
            transactions: &transactions,
            events: applied_events,
            duration: started.elapsed(),
            checkpoint: &last.position,
        });
        observer.pending(&reader.pending()?);
    }
}

async fn apply_batch<K: Sink>(
    sink: &mut K,
    reader: &mut LogReader,
    transactions: &[(u64, TxnRecord)],
    max_batch_events: u64,
    events: &mut Vec<ChangeEvent>,
) -> Result<u64, ConnectorError> {
    let (_, last) = transactions.last().expect("a batch has a transaction");
    sink.begin(&last.position).await?;
    let mut total = 0u64;
    events.clear();
    for (_, txn) in transactions {
        let mut skip = 0u64;
        while skip < txn.events {
            let room = max_batch_events.saturating_sub(events.len() as u64).max(1);
            let before = events.len();
            reader.read_events(txn, skip, room, events)?;
            skip += (events.len() - before) as u64;
            if events.len() as u64 >= max_batch_events {
                sink.apply(events).await?;
                total += events.len() as u64;
                events.clear();
            }
        }
    }
    if !events.is_empty() {
        sink.apply(events).await?;
        total += events.len() as u64;
        events.clear();
    }
    sink.commit().await?;
    Ok(total)
}

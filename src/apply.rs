//! The apply worker: reads whole transactions from the change log and
//! applies them to the target exactly once.
//!
//! Exactly-once rests on the target's checkpoint row, written in the same
//! target transaction as the data it covers: on start the worker reads it
//! and skips every transaction at or below it, so a crash anywhere (before,
//! during or after the target's commit) neither loses nor repeats a
//! transaction.
//!
//! Reading and decoding the log runs one step ahead of the target: a
//! prefetch task prepares the next chunk of events while the sink waits for
//! the target to execute the current one (the end-to-end profile showed the
//! agent and the target taking turns). At most [`PREFETCH_CHUNKS`] chunks of
//! `max_batch_events` events wait, so memory stays bounded.

use callosum_api::{ChangeEvent, ConnectorError, ErrorKind, Position, Sink};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

use crate::log::{LogError, LogReader, Pending, TxnRecord};

/// Chunks the prefetch task may prepare ahead of the sink.
pub const PREFETCH_CHUNKS: usize = 2;

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

/// One target transaction, as the prefetch task hands it over: `Begin`,
/// one or more `Events` chunks, `Commit`.
enum Prepared {
    Begin(Arc<Vec<(u64, TxnRecord)>>),
    Events(Vec<ChangeEvent>),
    Commit,
}

/// Aborts the prefetch task when the worker returns, whatever the path.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
    let (prepared_tx, mut prepared) = mpsc::channel(PREFETCH_CHUNKS);
    let _prefetch = AbortOnDrop(tokio::spawn(prefetch(
        reader.fork(),
        max_batch_events,
        prepared_tx,
    )));
    loop {
        if crate::shutdown::is_requested(shutdown) {
            return Ok(());
        }
        let first = match prepared.try_recv() {
            Ok(message) => message,
            Err(mpsc::error::TryRecvError::Empty) => {
                observer.pending(&reader.pending()?);
                tokio::select! {
                    _ = crate::shutdown::requested(shutdown) => return Ok(()),
                    message = prepared.recv() => message.ok_or_else(prefetch_gone)?,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return Err(prefetch_gone()),
        };
        let Prepared::Begin(transactions) = first? else {
            return Err(out_of_step());
        };
        let (last_seq, last) = transactions.last().expect("a batch has a transaction");
        let started = Instant::now();
        let applied_events = match apply_batch(sink, &mut prepared, &last.position).await {
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

/// Applies one prepared target transaction, from after its `Begin` to its
/// `Commit`.
async fn apply_batch<K: Sink>(
    sink: &mut K,
    prepared: &mut mpsc::Receiver<Result<Prepared, LogError>>,
    checkpoint: &Position,
) -> Result<u64, ConnectorError> {
    sink.begin(checkpoint).await?;
    let mut total = 0u64;
    loop {
        match prepared.recv().await.ok_or_else(prefetch_gone)?? {
            Prepared::Events(events) => {
                sink.apply(&events).await?;
                total += events.len() as u64;
            }
            Prepared::Commit => break,
            Prepared::Begin(_) => return Err(out_of_step()),
        }
    }
    sink.commit().await?;
    Ok(total)
}

/// Reads whole transactions ahead of the sink and hands them over in
/// chunks of at most `max_batch_events` events. Stops when the receiver is
/// gone; a log error is handed over and ends it.
async fn prefetch(
    mut reader: LogReader,
    max_batch_events: u64,
    out: mpsc::Sender<Result<Prepared, LogError>>,
) {
    loop {
        if !reader.has_transactions() {
            reader.wait_for_transactions().await;
        }
        let result = prepare_batch(&mut reader, max_batch_events, &out).await;
        match result {
            Ok(true) => {}
            Ok(false) => return,
            Err(err) => {
                let _ = out.send(Err(err)).await;
                return;
            }
        }
    }
}

/// Prepares the next target transaction; `Ok(false)` when the receiver is gone.
async fn prepare_batch(
    reader: &mut LogReader,
    max_batch_events: u64,
    out: &mpsc::Sender<Result<Prepared, LogError>>,
) -> Result<bool, LogError> {
    let transactions = reader.peek_transactions(max_batch_events)?;
    let Some((last_seq, _)) = transactions.last() else {
        return Ok(true);
    };
    let last_seq = *last_seq;
    let transactions = Arc::new(transactions);
    if out
        .send(Ok(Prepared::Begin(transactions.clone())))
        .await
        .is_err()
    {
        return Ok(false);
    }
    let mut events: Vec<ChangeEvent> = Vec::new();
    for (_, txn) in transactions.iter() {
        let mut skip = 0u64;
        while skip < txn.events {
            let room = max_batch_events.saturating_sub(events.len() as u64).max(1);
            let before = events.len();
            reader.read_events(txn, skip, room, &mut events)?;
            skip += (events.len() - before) as u64;
            if events.len() as u64 >= max_batch_events {
                let chunk = std::mem::take(&mut events);
                if out.send(Ok(Prepared::Events(chunk))).await.is_err() {
                    return Ok(false);
                }
            }
        }
    }
    if !events.is_empty() && out.send(Ok(Prepared::Events(events))).await.is_err() {
        return Ok(false);
    }
    if out.send(Ok(Prepared::Commit)).await.is_err() {
        return Ok(false);
    }
    reader.skip_past(last_seq);
    Ok(true)
}

fn prefetch_gone() -> ConnectorError {
    ConnectorError::new(
        ErrorKind::LogStorage,
        "the change log reader stopped unexpectedly",
    )
    .with_hint("report this as a bug; restarting the agent resumes from the target's checkpoint")
}

fn out_of_step() -> ConnectorError {
    ConnectorError::new(
        ErrorKind::LogStorage,
        "the change log reader handed over a batch out of step",
    )
    .with_hint("report this as a bug; restarting the agent resumes from the target's checkpoint")
}

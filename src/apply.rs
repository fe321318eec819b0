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

use callosum_api::{ChangeEvent, ConnectorError, ErrorKind, Position, Sink, TableId};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::dead_letter::{DeadLetterCommand, DeadLetterQueue, QueueSize};
use crate::log::{DeadLetter, DeadLetterReason, LogError, LogReader, Pending, TxnRecord};

/// Chunks the prefetch task may prepare ahead of the sink.
pub const PREFETCH_CHUNKS: usize = 2;

/// What the apply worker reports as it goes.
pub trait ApplyObserver: Send {
    /// A target transaction committed.
    fn applied(&mut self, batch: &AppliedBatch);
    /// What is left to apply, after each batch and when idle.
    fn pending(&mut self, pending: &Pending);
    /// A source transaction went to the dead-letter queue, which now holds
    /// `queue`, and the target's checkpoint moved past it (nothing of it
    /// was applied); `cause` is the target's error (`None` when it was
    /// queued behind another dead letter).
    fn dead_lettered(&mut self, entry: &DeadLetter, cause: Option<ErrorKind>, queue: QueueSize);
}

/// A committed target transaction.
#[derive(Debug)]
pub struct AppliedBatch<'a> {
    pub transactions: &'a [(u64, TxnRecord)],
    pub events: u64,
    pub duration: Duration,
    pub checkpoint: &'a Position,
}

/// How [`apply`] batches and what it does with a transaction the target
/// rejects.
#[derive(Clone, Copy, Debug)]
pub struct ApplyOptions {
    /// Bounds both a target transaction made of several source transactions
    /// and the chunks a large source transaction is applied in (inside one
    /// target transaction).
    pub max_batch_events: u64,
    pub on_error: OnPermanentError,
}

/// What a pipeline does with a source transaction the target rejects for
/// good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnPermanentError {
    /// Move it to the dead-letter queue and go on.
    DeadLetter,
    /// Stop: [`apply`] returns the error.
    Halt,
}

/// Why [`apply`] returned without an error.
#[derive(Debug)]
pub enum ApplyStop {
    /// Shutdown was requested; the last batch is committed.
    Shutdown,
    /// The operator asked something of the dead-letter queue; the last
    /// batch is committed and nothing is open in the target.
    Command(DeadLetterCommand),
}

/// One target transaction, as the prefetch task hands it over: `Begin`,
/// one or more `Events` chunks, `Commit`.
enum Prepared {
    Begin(Arc<Vec<(u64, TxnRecord)>>),
    Events(Vec<ChangeEvent>),
    Commit,
}

type PreparedRx = mpsc::Receiver<Result<Prepared, LogError>>;

/// Aborts the prefetch task when the worker returns, whatever the path.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs until `shutdown` turns true or a dead-letter command arrives between
/// two batches (returns `Ok`), or the sink or the log fails (the open
/// target transaction is rolled back first).
///
/// Every source transaction that changes a row `dead_letters` holds back is
/// queued behind it. A permanent error of the target goes to the queue with
/// [`OnPermanentError::DeadLetter`]: a batch of several source transactions
/// is retried one transaction per target transaction to find the one the
/// target rejects; that one is stored in the queue (durably) and the
/// target's checkpoint moves past it in a target transaction of its own.
pub async fn apply<K: Sink>(
    sink: &mut K,
    reader: &mut LogReader,
    options: ApplyOptions,
    dead_letters: &mut DeadLetterQueue,
    observer: &mut impl ApplyObserver,
    shutdown: &mut watch::Receiver<bool>,
    commands: &mut mpsc::Receiver<DeadLetterCommand>,
) -> Result<ApplyStop, ConnectorError> {
    let ApplyOptions {
        max_batch_events,
        on_error,
    } = options;
    let checkpoint = sink.checkpoint().await?;
    reader.seek_after(checkpoint.as_ref())?;
    let (prepared_tx, mut prepared) = mpsc::channel(PREFETCH_CHUNKS);
    let _prefetch = AbortOnDrop(tokio::spawn(prefetch(
        reader.fork(),
        max_batch_events,
        prepared_tx,
    )));
    let mut applier = Applier {
        sink,
        reader,
        on_error,
        dead_letters,
        observer,
    };
    loop {
        if crate::shutdown::is_requested(shutdown) {
            return Ok(ApplyStop::Shutdown);
        }
        if let Ok(command) = commands.try_recv() {
            return Ok(ApplyStop::Command(command));
        }
        let first = match prepared.try_recv() {
            Ok(message) => message,
            Err(mpsc::error::TryRecvError::Empty) => {
                applier.observer.pending(&applier.reader.pending()?);
                tokio::select! {
                    _ = crate::shutdown::requested(shutdown) => return Ok(ApplyStop::Shutdown),
                    Some(command) = commands.recv() => return Ok(ApplyStop::Command(command)),
                    message = prepared.recv() => message.ok_or_else(prefetch_gone)?,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return Err(prefetch_gone()),
        };
        let Prepared::Begin(transactions) = first? else {
            return Err(out_of_step());
        };
        crate::panics::failpoint("apply");
        match transactions.as_slice() {
            [(seq, txn)] if txn.events > max_batch_events => {
                applier.apply_streamed(*seq, txn, &mut prepared).await?;
            }
            _ if applier.dead_letters.is_empty() => {
                applier.apply_batch(&transactions, &mut prepared).await?;
            }
            _ => {
                let events = receive_whole(&mut prepared).await?;
                applier.apply_group(&transactions, &events).await?;
            }
        }
        applier.observer.pending(&applier.reader.pending()?);
    }
}

/// The apply worker's state while it runs, so the steps below share it.
struct Applier<'a, K, O> {
    sink: &'a mut K,
    reader: &'a mut LogReader,
    on_error: OnPermanentError,
    dead_letters: &'a mut DeadLetterQueue,
    observer: &'a mut O,
}

/// Where each transaction's events are in a batch's events.
fn event_ranges(transactions: &[(u64, TxnRecord)]) -> Vec<std::ops::Range<usize>> {
    let mut at = 0usize;
    transactions
        .iter()
        .map(|(_, txn)| {
            let range = at..at + txn.events as usize;
            at = range.end;
            range
        })
        .collect()
}

impl<K: Sink, O: ApplyObserver> Applier<'_, K, O> {
    /// Applies whole source transactions (at most a chunk of events),
    /// queueing behind the dead-letter queue those that change rows it
    /// holds back. Boxed: it recurses through [`Applier::take_apart`].
    fn apply_group<'s>(
        &'s mut self,
        transactions: &'s [(u64, TxnRecord)],
        events: &'s [ChangeEvent],
    ) -> Pin<Box<dyn Future<Output = Result<(), ConnectorError>> + Send + 's>>
    where
        K: 's,
        O: 's,
    {
        Box::pin(async move {
            let ranges = event_ranges(transactions);
            if ranges.last().map_or(0, |r| r.end) != events.len() {
                return Err(out_of_step());
            }
            let mut run_start = 0;
            for (i, range) in ranges.iter().enumerate() {
                let Some(behind) = self.dead_letters.blocking(&events[range.clone()]) else {
                    continue;
                };
                let run = ranges[run_start].start..range.start;
                self.apply_run(&transactions[run_start..i], &events[run])
                    .await?;
                let (seq, txn) = &transactions[i];
                self.dead_letter(*seq, txn, queued_behind(behind), None)
                    .await?;
                run_start = i + 1;
            }
            let rest = ranges.get(run_start).map_or(events.len(), |r| r.start);
            self.apply_run(&transactions[run_start..], &events[rest..])
                .await
        })
    }

    /// Applies a prepared batch while the queue holds nothing back: the
    /// checkpoint row goes to the target while the prefetch task may still
    /// be decoding the batch's events. When the target rejects the data,
    /// the batch is taken apart ([`Applier::take_apart`]).
    async fn apply_batch(
        &mut self,
        transactions: &[(u64, TxnRecord)],
        prepared: &mut PreparedRx,
    ) -> Result<(), ConnectorError> {
        let started = Instant::now();
        let (_, last) = transactions.last().expect("a batch has a transaction");
        let on_error = self.on_error;
        let mut events = Vec::new();
        let result: Result<(), Failure> = async {
            self.sink
                .begin(&last.position)
                .await
                .map_err(Failure::Failed)?;
            events = receive_whole(prepared).await.map_err(Failure::Failed)?;
            if !events.is_empty() {
                self.sink
                    .apply(&events)
                    .await
                    .map_err(|err| data_failure(on_error, err))?;
            }
            self.sink
                .commit()
                .await
                .map_err(|err| data_failure(on_error, err))
        }
        .await;
        let outcome = self
            .settle(transactions, events.len() as u64, started, result)
            .await;
        self.resolve(transactions, &events, outcome).await
    }

    /// Applies transactions none of which the queue held back when the run
    /// started, as one target transaction; when the target rejects their
    /// data, see [`Applier::take_apart`].
    async fn apply_run(
        &mut self,
        transactions: &[(u64, TxnRecord)],
        events: &[ChangeEvent],
    ) -> Result<(), ConnectorError> {
        if transactions.is_empty() {
            return Ok(());
        }
        let outcome = self.commit(transactions, events).await;
        self.resolve(transactions, events, outcome).await
    }

    /// After one target transaction over whole transactions: a rejection of
    /// their data takes them apart; any other failure is returned.
    async fn resolve(
        &mut self,
        transactions: &[(u64, TxnRecord)],
        events: &[ChangeEvent],
        outcome: Result<(), Failure>,
    ) -> Result<(), ConnectorError> {
        let outcome = match outcome {
            Err(failure) => {
                self.retry_if_target_changed(transactions, events, failure)
                    .await
            }
            Ok(()) => Ok(()),
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(Failure::Rejected(err)) => self.take_apart(transactions, events, err).await,
            Err(Failure::Failed(err)) => Err(err),
            // only chunks of a streamed transaction are checked mid-way
            Err(Failure::QueuedBehind(_)) => Err(out_of_step()),
        }
    }

    /// A schema or conversion error may come from what the sink cached of
    /// the target rather than from the data: the operator altered the
    /// target table while the pipeline ran (widened a column, dropped it
    /// and added it with another type). The sink reads the batch's target
    /// tables again and, when one changed, the batch is applied once more;
    /// otherwise, or when that fails too, the failure stands (dead letter
    /// or halt).
    async fn retry_if_target_changed(
        &mut self,
        transactions: &[(u64, TxnRecord)],
        events: &[ChangeEvent],
        failure: Failure,
    ) -> Result<(), Failure> {
        let (Failure::Rejected(err) | Failure::Failed(err)) = &failure else {
            return Err(failure);
        };
        if events.is_empty() || !matches!(err.kind, ErrorKind::Schema | ErrorKind::Conversion) {
            return Err(failure);
        }
        let mut tables: Vec<TableId> = Vec::new();
        for event in events {
            if !tables.contains(&event.schema.table) {
                tables.push(event.schema.table.clone());
            }
        }
        match self.sink.refresh_targets(&tables).await {
            Ok(true) => {
                info!(error = %err, "the target changed since it was read: applying the batch again");
                self.commit(transactions, events).await
            }
            Ok(false) => Err(failure),
            Err(refresh) => {
                warn!(error = %refresh, "reading the target tables again failed");
                Err(failure)
            }
        }
    }

    /// The target rejected the data of `transactions` (with `err`): halves
    /// them until the transaction at fault is alone; it goes to the
    /// dead-letter queue, the others are applied (a batch of 5,000
    /// transactions with one poison costs about 25 attempts, not 5,000
    /// target transactions).
    async fn take_apart(
        &mut self,
        transactions: &[(u64, TxnRecord)],
        events: &[ChangeEvent],
        err: ConnectorError,
    ) -> Result<(), ConnectorError> {
        if let [(seq, txn)] = transactions {
            return self
                .dead_letter(*seq, txn, failure_reason(&err), Some(err.kind))
                .await;
        }
        let mid = transactions.len() / 2;
        let split = event_ranges(&transactions[..mid])
            .last()
            .map_or(0, |r| r.end);
        // halves go through apply_group again: the first half may queue a
        // transaction whose rows the second half changes
        self.apply_group(&transactions[..mid], &events[..split])
            .await?;
        self.apply_group(&transactions[mid..], &events[split..])
            .await
    }

    /// Applies `transactions` in one target transaction, checkpoint first,
    /// and reports it.
    async fn commit(
        &mut self,
        transactions: &[(u64, TxnRecord)],
        events: &[ChangeEvent],
    ) -> Result<(), Failure> {
        let started = Instant::now();
        let result = self.run_target_transaction(transactions, events).await;
        self.settle(transactions, events.len() as u64, started, result)
            .await
    }

    /// Begin (checkpoint row), apply, commit. Errors of the checkpoint row
    /// are never the data's fault.
    async fn run_target_transaction(
        &mut self,
        transactions: &[(u64, TxnRecord)],
        events: &[ChangeEvent],
    ) -> Result<(), Failure> {
        let (_, last) = transactions.last().expect("a run has a transaction");
        let on_error = self.on_error;
        self.sink
            .begin(&last.position)
            .await
            .map_err(Failure::Failed)?;
        if !events.is_empty() {
            self.sink
                .apply(events)
                .await
                .map_err(|err| data_failure(on_error, err))?;
        }
        self.sink
            .commit()
            .await
            .map_err(|err| data_failure(on_error, err))
    }

    /// After a target transaction over `transactions`: on success moves the
    /// cursor and reports it; on failure rolls back.
    async fn settle(
        &mut self,
        transactions: &[(u64, TxnRecord)],
        events: u64,
        started: Instant,
        result: Result<(), Failure>,
    ) -> Result<(), Failure> {
        if let Err(failure) = result {
            // best effort: the connection may be gone, and then so is the transaction
            let _ = self.sink.rollback().await;
            return Err(failure);
        }
        let (last_seq, last) = transactions.last().expect("a run has a transaction");
        self.reader
            .mark_applied(*last_seq, last)
            .map_err(|err| Failure::Failed(err.into()))?;
        self.observer.applied(&AppliedBatch {
            transactions,
            events,
            duration: started.elapsed(),
            checkpoint: &last.position,
        });
        Ok(())
    }

    /// Applies one source transaction too large for one chunk, chunk by
    /// chunk inside one target transaction.
    async fn apply_streamed(
        &mut self,
        seq: u64,
        txn: &TxnRecord,
        prepared: &mut PreparedRx,
    ) -> Result<(), ConnectorError> {
        let started = Instant::now();
        let on_error = self.on_error;
        let mut applied = 0u64;
        let result: Result<(), Failure> = async {
            self.sink
                .begin(&txn.position)
                .await
                .map_err(Failure::Failed)?;
            loop {
                let message = prepared
                    .recv()
                    .await
                    .ok_or_else(prefetch_gone)
                    .and_then(|m| m.map_err(ConnectorError::from))
                    .map_err(Failure::Failed)?;
                match message {
                    Prepared::Events(events) => {
                        if let Some(behind) = self.dead_letters.blocking(&events) {
                            return Err(Failure::QueuedBehind(behind));
                        }
                        self.sink
                            .apply(&events)
                            .await
                            .map_err(|err| data_failure(on_error, err))?;
                        applied += events.len() as u64;
                    }
                    Prepared::Commit => break,
                    Prepared::Begin(_) => return Err(Failure::Failed(out_of_step())),
                }
            }
            self.sink
                .commit()
                .await
                .map_err(|err| data_failure(on_error, err))
        }
        .await;
        let transactions = [(seq, txn.clone())];
        let (reason, cause) = match self.settle(&transactions, applied, started, result).await {
            Ok(()) => return Ok(()),
            Err(Failure::QueuedBehind(behind)) => (queued_behind(behind), None),
            Err(Failure::Rejected(err)) => (failure_reason(&err), Some(err.kind)),
            Err(Failure::Failed(err)) => return Err(err),
        };
        skip_to_commit(prepared).await?;
        self.dead_letter(seq, txn, reason, cause).await
    }

    /// Stores the source transaction in the dead-letter queue (durably),
    /// then, in a target transaction of its own, moves the target's
    /// checkpoint past it and stores it in the target's dead-letter table
    /// ([`crate::dead_letter::target`]). A crash in between leaves it in the
    /// queue only: on restart the queue is reconciled with the target (it
    /// is removed) and the transaction, still above the checkpoint, comes
    /// again.
    async fn dead_letter(
        &mut self,
        seq: u64,
        txn: &TxnRecord,
        reason: DeadLetterReason,
        cause: Option<ErrorKind>,
    ) -> Result<(), ConnectorError> {
        let entry = self.dead_letters.add(self.reader, txn, reason).await?;
        warn!(
            dead_letter = entry.id,
            position = %entry.position,
            events = entry.events,
            kind = %entry.reason.kind,
            behind = ?entry.reason.behind,
            error = %entry.reason.message,
            "source transaction dead-lettered"
        );
        crate::panics::failpoint("dead_letter_stored");
        // the checkpoint and the dead letter: nothing of it is applied
        let stored = async {
            self.sink.begin(&txn.position).await?;
            crate::dead_letter::target::store(&mut *self.sink, self.dead_letters.stored(), &entry)
                .await?;
            self.sink.commit().await
        }
        .await;
        if let Err(err) = stored {
            // best effort: the connection may be gone, and then so is the transaction
            let _ = self.sink.rollback().await;
            return Err(err);
        }
        self.reader.mark_applied(seq, txn)?;
        self.observer
            .dead_lettered(&entry, cause, self.dead_letters.size());
        Ok(())
    }
}

/// Why a target transaction did not commit.
enum Failure {
    /// The target refused the transaction's data for good, and the
    /// pipeline dead-letters: take the batch apart.
    Rejected(ConnectorError),
    /// A chunk changes rows the dead-letter queue holds back.
    QueuedBehind(u64),
    /// Anything else (connection, checkpoint row, log): retry or halt.
    Failed(ConnectorError),
}

/// Classifies an error of the target while it applied data: whether the
/// transaction goes to the dead-letter queue is decided here, once.
fn data_failure(on_error: OnPermanentError, err: ConnectorError) -> Failure {
    if on_error == OnPermanentError::DeadLetter && err.kind.rejects_data() {
        Failure::Rejected(err)
    } else {
        Failure::Failed(err)
    }
}

fn queued_behind(behind: u64) -> DeadLetterReason {
    DeadLetterReason {
        kind: "queued".to_owned(),
        message: format!(
            "changes rows that dead letter #{behind} changes; queued behind it to keep their order"
        ),
        hint: Some(format!("replay or discard dead letter #{behind} first")),
        behind: Some(behind),
    }
}

fn failure_reason(err: &ConnectorError) -> DeadLetterReason {
    DeadLetterReason {
        kind: err.kind.label().to_owned(),
        message: err.message.clone(),
        hint: err.hint.clone(),
        behind: None,
    }
}

/// The events of a prepared target transaction of at most one chunk, up to
/// its `Commit`.
async fn receive_whole(prepared: &mut PreparedRx) -> Result<Vec<ChangeEvent>, ConnectorError> {
    let mut all: Vec<ChangeEvent> = Vec::new();
    loop {
        match prepared.recv().await.ok_or_else(prefetch_gone)?? {
            Prepared::Events(events) if all.is_empty() => all = events,
            Prepared::Events(events) => all.extend(events),
            Prepared::Commit => return Ok(all),
            Prepared::Begin(_) => return Err(out_of_step()),
        }
    }
}

/// Drops the rest of a prepared target transaction, up to its `Commit`.
async fn skip_to_commit(prepared: &mut PreparedRx) -> Result<(), ConnectorError> {
    loop {
        match prepared.recv().await.ok_or_else(prefetch_gone)?? {
            Prepared::Events(_) => {}
            Prepared::Commit => return Ok(()),
            Prepared::Begin(_) => return Err(out_of_step()),
        }
    }
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
        crate::panics::failpoint("prefetch");
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

/// The prefetch task ends only by sending an error or when the worker is
/// gone: ending otherwise, it panicked.
fn prefetch_gone() -> ConnectorError {
    crate::panics::internal_error("the change log prefetch task")
}

fn out_of_step() -> ConnectorError {
    ConnectorError::new(
        ErrorKind::LogStorage,
        "the change log reader handed over a batch out of step",
    )
    .with_hint("report this as a bug; restarting the agent resumes from the target's checkpoint")
}

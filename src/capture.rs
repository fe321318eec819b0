//! The capture worker: moves a source's committed transactions into the
//! change log and acknowledges upstream only what the log has flushed — and,
//! by default, only what every pipeline reading the store has applied
//! ([`Acknowledge`]).

use callosum_api::{ConnectorError, Source, SourceMessage};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Acknowledge;
use crate::log::LogWriter;

/// How long a committed transaction may wait for its flush: bounds the
/// latency that batching flushes adds (fsync is cheap, ~7k/s here, but not
/// free per transaction).
pub const FLUSH_DELAY: Duration = Duration::from_millis(5);
/// Flush at once when this many committed events wait: bounds what a crash
/// makes the source resend.
pub const FLUSH_EVENTS: u64 = 20_000;
/// How often an idle position (no captured changes) is flushed and
/// acknowledged: keeps the slot from retaining WAL without a flush per
/// keepalive.
pub const PROGRESS_FLUSH_DELAY: Duration = Duration::from_secs(1);

/// How often, with [`Acknowledge::Applied`], the source is told what the
/// pipelines applied since: the slot's WAL is freed this much later than the
/// apply, never sooner.
pub const APPLIED_ACK_INTERVAL: Duration = Duration::from_secs(1);

/// What the source is told it may forget.
#[derive(Clone, Debug)]
pub struct AckPolicy {
    pub rule: Acknowledge,
    /// The pipelines reading the store (their log cursors).
    pub pipelines: Vec<String>,
}

/// What the capture worker reports as it goes.
pub trait CaptureObserver: Send {
    /// `events` changes of committed transactions entered the log (not yet
    /// flushed).
    fn committed(&mut self, events: u64);
    /// The log flushed and the source acknowledged `position`.
    fn acknowledged(&mut self, position: &callosum_api::Position);
}

/// Runs until `shutdown` turns true (then flushes, acknowledges and returns
/// `Ok`) or the source or the log fails.
///
/// Invariant: `source.acknowledge` is only called with a position returned
/// by [`LogWriter::flush`] or, with [`Acknowledge::Applied`], by
/// [`LogWriter::applied_by_all`] capped at it; acknowledged positions never
/// go back.
pub async fn capture<S: Source>(
    source: &mut S,
    writer: &mut LogWriter,
    policy: &AckPolicy,
    observer: &mut impl CaptureObserver,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ConnectorError> {
    let mut flush_at: Option<Instant> = None;
    let mut events_in_txn = 0u64;
    let mut acked = Acknowledged::default();
    let mut applied_tick = tokio::time::interval(APPLIED_ACK_INTERVAL);
    applied_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ack_applied = policy.rule == Acknowledge::Applied;
    loop {
        if writer.unflushed_events() >= FLUSH_EVENTS {
            flush_and_acknowledge(source, writer, policy, &mut acked, observer).await?;
            flush_at = None;
        }
        tokio::select! {
            biased;
            _ = crate::shutdown::requested(shutdown) => {
                writer.abandon_open();
                flush_and_acknowledge(source, writer, policy, &mut acked, observer).await?;
                return Ok(());
            }
            _ = sleep_until(flush_at), if flush_at.is_some() => {
                flush_and_acknowledge(source, writer, policy, &mut acked, observer).await?;
                flush_at = None;
            }
            _ = applied_tick.tick(), if ack_applied => {
                let flushed = writer.durable_resume_position().cloned();
                acknowledge_applied(source, writer, policy, flushed, &mut acked, observer).await?;
            }
            message = source.next() => match message? {
                SourceMessage::Begin => {
                    writer.begin();
                    events_in_txn = 0;
                }
                SourceMessage::Change(event) => {
                    writer.append(event)?;
                    events_in_txn += 1;
                }
                SourceMessage::Commit(meta) => {
                    crate::panics::failpoint("capture");
                    writer.commit(meta)?;
                    observer.committed(events_in_txn);
                    events_in_txn = 0;
                    flush_at = Some(earliest(flush_at, Instant::now() + FLUSH_DELAY));
                }
                SourceMessage::Discard { resume_position } => {
                    writer.discard(resume_position);
                    events_in_txn = 0;
                    flush_at = Some(earliest(flush_at, Instant::now() + PROGRESS_FLUSH_DELAY));
                }
                SourceMessage::Progress(position) => {
                    writer.progress(position);
                    flush_at = Some(earliest(flush_at, Instant::now() + PROGRESS_FLUSH_DELAY));
                }
            },
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn earliest(current: Option<Instant>, candidate: Instant) -> Instant {
    current.map_or(candidate, |c| c.min(candidate))
}

/// The newest position the source was told.
#[derive(Default)]
struct Acknowledged(Option<callosum_api::Position>);

impl Acknowledged {
    /// Whether `position` moves the acknowledgement forward.
    fn advances(&self, position: &callosum_api::Position) -> bool {
        self.0.as_ref().is_none_or(|last| position > last)
    }
}

async fn flush_and_acknowledge<S: Source>(
    source: &mut S,
    writer: &mut LogWriter,
    policy: &AckPolicy,
    acked: &mut Acknowledged,
    observer: &mut impl CaptureObserver,
) -> Result<(), ConnectorError> {
    if !writer.has_unflushed() {
        return Ok(());
    }
    let Some(flushed) = writer.flush().await? else {
        return Ok(());
    };
    match policy.rule {
        Acknowledge::Logged => {
            if acked.advances(&flushed) {
                source.acknowledge(&flushed).await?;
                observer.acknowledged(&flushed);
                acked.0 = Some(flushed);
            }
            Ok(())
        }
        Acknowledge::Applied => {
            acknowledge_applied(source, writer, policy, Some(flushed), acked, observer).await
        }
    }
}

/// Tells the source what every pipeline has applied, never beyond `flushed`.
async fn acknowledge_applied<S: Source>(
    source: &mut S,
    writer: &LogWriter,
    policy: &AckPolicy,
    flushed: Option<callosum_api::Position>,
    acked: &mut Acknowledged,
    observer: &mut impl CaptureObserver,
) -> Result<(), ConnectorError> {
    let (Some(flushed), Some(applied)) = (flushed, writer.applied_by_all(&policy.pipelines)?)
    else {
        return Ok(());
    };
    let position = match applied.partial_cmp(&flushed) {
        Some(std::cmp::Ordering::Greater) => flushed,
        Some(_) => applied,
        None => return Ok(()),
    };
    if acked.advances(&position) {
        source.acknowledge(&position).await?;
        observer.acknowledged(&position);
        acked.0 = Some(position);
    }
    Ok(())
}

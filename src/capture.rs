//! The capture worker: moves a source's committed transactions into the
//! change log and acknowledges upstream only what the log has flushed.

use callosum_api::{ConnectorError, Source, SourceMessage};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

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
/// by [`LogWriter::flush`].
pub async fn capture<S: Source>(
    source: &mut S,
    writer: &mut LogWriter,
    observer: &mut impl CaptureObserver,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ConnectorError> {
    let mut flush_at: Option<Instant> = None;
    let mut events_in_txn = 0u64;
    loop {
        if writer.unflushed_events() >= FLUSH_EVENTS {
            flush_and_acknowledge(source, writer, observer).await?;
            flush_at = None;
        }
        tokio::select! {
            biased;
            _ = crate::shutdown::requested(shutdown) => {
                writer.abandon_open();
                flush_and_acknowledge(source, writer, observer).await?;
                return Ok(());
            }
            _ = sleep_until(flush_at), if flush_at.is_some() => {
                flush_and_acknowledge(source, writer, observer).await?;
                flush_at = None;
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

async fn flush_and_acknowledge<S: Source>(
    source: &mut S,
    writer: &mut LogWriter,
    observer: &mut impl CaptureObserver,
) -> Result<(), ConnectorError> {
    if !writer.has_unflushed() {
        return Ok(());
    }
    if let Some(position) = writer.flush().await? {
        source.acknowledge(&position).await?;
        observer.acknowledged(&position);
    }
    Ok(())
}

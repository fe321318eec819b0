//! Replaying the dead-letter queue into the target, exactly once.
//!
//! The pipeline's checkpoint row is already past every queued transaction,
//! so replay keeps its own: a second row in the target's checkpoint table,
//! named [`replay_checkpoint_name`], written first in each replayed
//! transaction's target transaction, like the pipeline's own. Entries are
//! replayed oldest first and their positions grow with their ids, so an
//! entry at or below that row was applied by a replay that a crash
//! interrupted before it removed the entry: it is removed, not applied again.
//! The same target transaction deletes the entry from the target's
//! dead-letter table ([`super::target`]), so a restart after a lost
//! `data_dir` does not bring it back.

use callosum_api::{ChangeEvent, ConnectorError, ErrorKind, Position, Sink};
use std::cmp::Ordering;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{ReplayFailure, ReplayReport};
use crate::log::{DeadLetter, DeadLetters};

/// The checkpoint row replay writes for `pipeline`'s dead letters.
pub fn replay_checkpoint_name(pipeline: &str) -> String {
    format!("{pipeline}/dead_letters")
}

/// Applies the entries of `queue` oldest first, up to and including
/// `through` (every entry when `None`), each in its own target transaction
/// through `sink` — a sink whose checkpoint row is
/// [`replay_checkpoint_name`] — in chunks of at most `max_chunk_events`.
/// Stops at the first entry that fails and reports it; the entries before it
/// are applied and removed. A shutdown request stops it between two chunks
/// (the entry in progress is rolled back and stays queued). `Err` only when
/// replay could not start (the target's replay checkpoint could not be
/// read) or the queue failed.
pub async fn replay<K: Sink>(
    sink: &mut K,
    queue: &DeadLetters,
    through: Option<u64>,
    max_chunk_events: u64,
    shutdown: &watch::Receiver<bool>,
) -> Result<ReplayReport, ConnectorError> {
    let mut report = ReplayReport::default();
    let replayed_through = sink.checkpoint().await?;
    let entries = queue.list()?;
    for entry in &entries {
        if through.is_some_and(|t| entry.id > t) {
            break;
        }
        if already_applied(replayed_through.as_ref(), &entry.position) {
            queue.remove(entry.id)?;
            queue.flush().await?;
            info!(
                dead_letter = entry.id,
                "dead letter was already replayed, removed"
            );
            report.already_applied.push(entry.id);
            continue;
        }
        if let Err(err) = apply_entry(sink, queue, entry, max_chunk_events, shutdown).await {
            // best effort: the connection may be gone, and then so is the transaction
            let _ = sink.rollback().await;
            warn!(dead_letter = entry.id, error = %err, "replay of a dead letter failed");
            report.failed = Some(ReplayFailure {
                id: entry.id,
                error: err.to_string(),
            });
            break;
        }
        queue.remove(entry.id)?;
        queue.flush().await?;
        info!(
            dead_letter = entry.id,
            events = entry.events,
            "dead letter replayed"
        );
        report.replayed.push(entry.id);
    }
    report.remaining = queue.list()?.len() as u64;
    Ok(report)
}

fn already_applied(replayed_through: Option<&Position>, position: &Position) -> bool {
    replayed_through.is_some_and(|through| {
        matches!(
            position.partial_cmp(through),
            Some(Ordering::Less | Ordering::Equal)
        )
    })
}

async fn apply_entry<K: Sink>(
    sink: &mut K,
    queue: &DeadLetters,
    entry: &DeadLetter,
    max_chunk_events: u64,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), ConnectorError> {
    sink.begin(&entry.position).await?;
    let mut events: Vec<ChangeEvent> = Vec::new();
    let mut applied = 0u64;
    while applied < entry.events {
        if crate::shutdown::is_requested(shutdown) {
            return Err(ConnectorError::new(
                ErrorKind::Connection,
                "the agent is stopping: replay was interrupted and rolled back",
            )
            .with_hint("replay again once the agent runs"));
        }
        events.clear();
        queue.read_events(entry, applied, max_chunk_events.max(1), &mut events)?;
        sink.apply(&events).await?;
        applied += events.len() as u64;
    }
    // the target's copy goes with the replay, atomically
    sink.remove_dead_letter(entry.id).await?;
    sink.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use callosum_api::Lsn;

    #[test]
    fn entries_at_or_below_the_replay_checkpoint_were_applied() {
        let at = |lsn| Position::Pg(Lsn(lsn));
        assert!(!already_applied(None, &at(10)));
        assert!(already_applied(Some(&at(10)), &at(10)));
        assert!(already_applied(Some(&at(10)), &at(9)));
        assert!(!already_applied(Some(&at(10)), &at(11)));
    }
}

//! The target as the durable home of a pipeline's dead letters.
//!
//! The queue in `data_dir` ([`DeadLetters`]) is the working copy the apply
//! worker and `/dlq` read; the target's `callosum_dead_letter`
//! ([`callosum_api::DEAD_LETTER_TABLE`]) is authoritative:
//!
//! - **Add** (`apply.rs`): the transaction is copied into the queue and
//!   flushed, then one target transaction writes the checkpoint row past it
//!   and the entry ([`store`]) and commits. So a target whose checkpoint is
//!   past a dead letter holds it, and the source (acknowledged only up to
//!   the targets' checkpoints) may forget it. Crash windows: after the
//!   queue's flush and before the target's commit, the queue holds an entry
//!   the target does not, and the target's checkpoint is below it: on
//!   restart [`reconcile`] removes it, and the log (or the source, after a
//!   lost `data_dir`) delivers the transaction again, which fails again and
//!   is dead-lettered again under a new id (or applies, if the cause was
//!   fixed meanwhile). After the commit and before the cursor moves, the
//!   queue and the target agree. The other order (target first) would
//!   need the events in memory or read twice; this one reads them from the
//!   queue once, as record batches.
//! - **Replay** (`replay.rs`): each entry's target transaction writes the
//!   replay checkpoint row, applies the events and deletes the entry's rows;
//!   then the queue removes it. A crash in between leaves an entry in the
//!   queue only: [`reconcile`] (or replay's own checkpoint) removes it.
//! - **Discard** (`queue.rs`): the target's rows first, then the queue.
//! - **Start** ([`reconcile`]): the target wins. Entries in the target and
//!   not in the queue (a lost or older `data_dir`) are restored under the
//!   same ids, and new ids continue after the largest; entries in the queue
//!   and not in the target are removed (replayed or discarded by a
//!   transaction whose queue removal a crash interrupted, or the add window
//!   above). A queue an agent from before this copy filled
//!   ([`DeadLetters::in_target`] false) is first written to the target
//!   once, each entry the target's checkpoint covers, in one target
//!   transaction that rewrites the checkpoint row unchanged.

use callosum_api::{ConnectorError, ErrorKind, Position, Sink, MAX_DEAD_LETTER_PART_BYTES};
use std::cmp::Ordering;
use std::collections::BTreeSet;
use tracing::{info, warn};

use crate::log::codec::{self, DeadLetterHead, PartJoiner, PartSplitter};
use crate::log::{DeadLetter, DeadLetters};

/// Inside the sink's open target transaction: writes `entry`, whose record
/// batches `queue` holds, as parts of at most
/// [`MAX_DEAD_LETTER_PART_BYTES`]: part 0 the entry ([`DeadLetterHead`]),
/// then the batches ([`PartSplitter`]). Replaces whatever the target held
/// under that id.
pub async fn store<K: Sink>(
    sink: &mut K,
    queue: &DeadLetters,
    entry: &DeadLetter,
) -> Result<(), ConnectorError> {
    sink.remove_dead_letter(entry.id).await?;
    let mut splitter = PartSplitter::new(MAX_DEAD_LETTER_PART_BYTES);
    let mut part = 0u32;
    for chunk in queue.chunks(entry.id) {
        let chunk = chunk?;
        let mut full = Vec::new();
        splitter
            .push::<()>(&chunk, &mut |p| {
                full.push(p);
                Ok(())
            })
            .expect("collecting parts cannot fail");
        for bytes in full {
            part += 1;
            sink.store_dead_letter_part(entry.id, part, &bytes).await?;
        }
    }
    if let Some(bytes) = splitter.finish() {
        part += 1;
        sink.store_dead_letter_part(entry.id, part, &bytes).await?;
    }
    let head = codec::encode(&DeadLetterHead {
        entry: entry.clone(),
        parts: part,
    })?;
    sink.store_dead_letter_part(entry.id, 0, &head).await
}

fn damaged(pipeline: &str, id: u64, what: &str) -> ConnectorError {
    ConnectorError::new(
        ErrorKind::Protocol,
        format!("dead letter #{id} of pipeline `{pipeline}` in the target is damaged: {what}"),
    )
    .with_hint(format!(
        "inspect the rows of callosum_dead_letter with pipeline = '{pipeline}' and id = {id}; \
         delete them to drop the dead letter"
    ))
}

/// Reads dead letter `id` from the target into `queue` (its record batches,
/// then its entry, so an entry the queue holds is whole). Not durable until
/// the queue is flushed.
async fn restore<K: Sink>(
    sink: &mut K,
    queue: &DeadLetters,
    id: u64,
) -> Result<DeadLetter, ConnectorError> {
    let pipeline = queue.pipeline().to_owned();
    let head = sink
        .dead_letter_part(id, 0)
        .await?
        .ok_or_else(|| damaged(&pipeline, id, "its entry (part 0) is missing"))?;
    let head: DeadLetterHead = codec::decode(&head, "dead letter in the target")
        .map_err(|err| damaged(&pipeline, id, &err.to_string()))?;
    if head.entry.id != id {
        return Err(damaged(&pipeline, id, "its entry names another id"));
    }
    let mut joiner = PartJoiner::default();
    let mut index = 0u64;
    for part in 1..=head.parts {
        let bytes = sink
            .dead_letter_part(id, part)
            .await?
            .ok_or_else(|| damaged(&pipeline, id, &format!("part {part} is missing")))?;
        for batch in joiner.push(&bytes) {
            queue
                .restore_chunk(id, index, &batch)
                .map_err(|err| damaged(&pipeline, id, &err.to_string()))?;
            index += 1;
        }
    }
    joiner
        .finish()
        .map_err(|err| damaged(&pipeline, id, &err.to_string()))?;
    queue.restore_entry(&head.entry)?;
    Ok(head.entry)
}

/// What [`reconcile`] changed in the queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Entries of an older agent's queue written to the target.
    pub exported: Vec<u64>,
    /// Entries restored from the target.
    pub restored: Vec<u64>,
    /// Entries the target no longer holds, removed from the queue.
    pub removed: Vec<u64>,
}

impl Reconciled {
    pub fn changed_queue(&self) -> bool {
        !self.restored.is_empty() || !self.removed.is_empty()
    }
}

/// Makes `queue` hold what the target holds (see the module docs), durably.
/// Runs on the pipeline's own sink, outside a target transaction, before
/// the pipeline applies anything.
pub async fn reconcile<K: Sink>(
    sink: &mut K,
    queue: &DeadLetters,
) -> Result<Reconciled, ConnectorError> {
    let mut done = Reconciled::default();
    if !queue.in_target()? {
        done.exported = export_older_queue(sink, queue).await?;
        queue.mark_in_target()?;
        queue.flush().await?;
    }
    let in_target: BTreeSet<u64> = sink.dead_letter_ids().await?.into_iter().collect();
    let local: BTreeSet<u64> = queue.list()?.iter().map(|e| e.id).collect();
    for &id in local.difference(&in_target) {
        queue.remove(id)?;
        done.removed.push(id);
    }
    for &id in in_target.difference(&local) {
        restore(sink, queue, id).await?;
        done.restored.push(id);
    }
    queue.flush().await?;
    if !done.removed.is_empty() {
        warn!(
            dead_letters = ?done.removed,
            "dead letters the target does not hold removed: replayed or discarded before a crash, or stored by a transaction that did not commit (the log delivers that one again)"
        );
    }
    if !done.restored.is_empty() {
        info!(dead_letters = ?done.restored, "dead letters restored from the target");
    }
    Ok(done)
}

/// Writes the entries an agent from before the target copy left only in
/// `queue` to the target, in one target transaction that rewrites the
/// target's checkpoint unchanged. Entries above the checkpoint are left
/// out: their checkpoint move never committed, so the log delivers them
/// again (and [`reconcile`] removes them).
async fn export_older_queue<K: Sink>(
    sink: &mut K,
    queue: &DeadLetters,
) -> Result<Vec<u64>, ConnectorError> {
    let entries = queue.list()?;
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let Some(checkpoint) = sink.checkpoint().await? else {
        return Ok(Vec::new());
    };
    let in_target: BTreeSet<u64> = sink.dead_letter_ids().await?.into_iter().collect();
    let export: Vec<&DeadLetter> = entries
        .iter()
        .filter(|e| !in_target.contains(&e.id) && covered(&checkpoint, &e.position))
        .collect();
    if export.is_empty() {
        return Ok(Vec::new());
    }
    let written = async {
        sink.begin(&checkpoint).await?;
        for entry in &export {
            store(sink, queue, entry).await?;
        }
        sink.commit().await
    }
    .await;
    if let Err(err) = written {
        // best effort: the connection may be gone, and then so is the transaction
        let _ = sink.rollback().await;
        return Err(err);
    }
    let ids: Vec<u64> = export.iter().map(|e| e.id).collect();
    info!(dead_letters = ?ids, "dead letters of an older agent written to the target");
    Ok(ids)
}

/// The checkpoint is at or past `position` (or cannot be compared with it:
/// keep the dead letter rather than lose it).
fn covered(checkpoint: &Position, position: &Position) -> bool {
    !matches!(position.partial_cmp(checkpoint), Some(Ordering::Greater))
}

#[cfg(test)]
mod tests {
    use super::*;
    use callosum_api::Lsn;

    #[test]
    fn an_older_queue_exports_what_the_checkpoint_moved_past() {
        let at = |lsn| Position::Pg(Lsn(lsn));
        assert!(covered(&at(10), &at(10)));
        assert!(covered(&at(10), &at(9)));
        assert!(!covered(&at(10), &at(11)));
    }
}

//! The dead-letter queue of each pipeline, in the log's sled database.
//!
//! A dead-lettered transaction is copied out of its store's log (which
//! truncation will empty) into the queue: its entry (why, where, when) and
//! its events in record batches of the same format as the log's. Trees:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `dead_letters` | pipeline `\0` id (u64 BE) | [`DeadLetter`] |
//! | `dead_letter_events` | pipeline `\0` id (u64 BE) chunk (u64 BE) | record batch |
//! | `dead_letter_ids` | pipeline | the next id (u64), so ids are never reused |
//! | `dead_letter_target` | pipeline | present once the queue's entries were written to the target |
//!
//! This queue is the working copy: the target's `callosum_dead_letter` is
//! the durable home (see `crate::dead_letter::target`), so a lost
//! `data_dir` loses no dead letter. Entries are copied to and from the
//! target as their record batches, unchanged ([`DeadLetters::chunks`],
//! [`DeadLetters::restore_chunk`], [`DeadLetters::restore_entry`]).
//!
//! An entry is written after its events, so an entry that exists is whole.
//! Ids grow in source commit order, so a queue read in id order is the
//! order the transactions must be replayed in.

use callosum_api::{ChangeEvent, Position, TableId};
use serde::{Deserialize, Serialize};

use super::codec::{self, TxnRecord};
use super::{LogError, LogReader};

/// Events per record batch of a dead-lettered transaction.
const CHUNK_EVENTS: u64 = 2048;

/// Why a transaction is in the dead-letter queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterReason {
    /// The error kind (`constraint`, `conversion`, `schema`, …), or
    /// `queued` for a transaction held back behind another dead letter.
    pub kind: String,
    /// What failed, naming store, table, column and type, never a value.
    pub message: String,
    /// How the operator fixes it.
    pub hint: Option<String>,
    /// The dead letter this one is queued behind: it changes rows that one
    /// changes, so it must not be applied before it.
    pub behind: Option<u64>,
}

/// One dead-lettered source transaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Grows in source commit order within the pipeline; never reused.
    pub id: u64,
    /// The source transaction's position.
    pub position: Position,
    /// Commit time at the source (µs since the Unix epoch).
    pub commit_time_micros: i64,
    /// When it was dead-lettered (µs since the Unix epoch).
    pub dead_lettered_at_micros: i64,
    /// Row changes it holds.
    pub events: u64,
    /// The source tables it changes, sorted.
    pub tables: Vec<TableId>,
    pub reason: DeadLetterReason,
}

/// One pipeline's dead-letter queue.
#[derive(Clone)]
pub struct DeadLetters {
    db: sled::Db,
    pipeline: String,
    entries: sled::Tree,
    events: sled::Tree,
    ids: sled::Tree,
    target: sled::Tree,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    pub(crate) fn open(db: &sled::Db, pipeline: &str) -> Result<Self, LogError> {
        Ok(Self {
            db: db.clone(),
            pipeline: pipeline.to_owned(),
            entries: db.open_tree("dead_letters")?,
            events: db.open_tree("dead_letter_events")?,
            ids: db.open_tree("dead_letter_ids")?,
            target: db.open_tree("dead_letter_target")?,
        })
    }

    /// The pipeline this queue belongs to.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    fn prefix(&self) -> Vec<u8> {
        let mut key = self.pipeline.as_bytes().to_vec();
        key.push(0);
        key
    }

    fn entry_key(&self, id: u64) -> Vec<u8> {
        let mut key = self.prefix();
        key.extend_from_slice(&id.to_be_bytes());
        key
    }

    fn chunk_key(&self, id: u64, chunk: u64) -> Vec<u8> {
        let mut key = self.entry_key(id);
        key.extend_from_slice(&chunk.to_be_bytes());
        key
    }

    /// Copies the log transaction `txn` (read through `reader`) into the
    /// queue with `reason`, calling `observe` with the new entry's id and
    /// each of its events.
    ///
    /// Idempotent: when the newest entry already holds this transaction (a
    /// crash came after it was stored but before the target's checkpoint
    /// moved past it), that entry is returned and nothing is written. Not
    /// durable until [`DeadLetters::flush`].
    pub fn add(
        &self,
        reader: &mut LogReader,
        txn: &TxnRecord,
        reason: DeadLetterReason,
        observe: &mut dyn FnMut(u64, &ChangeEvent),
    ) -> Result<DeadLetter, LogError> {
        let newest = self.newest()?;
        let newest_id = match newest {
            Some(newest) if newest.position == txn.position => return Ok(newest),
            Some(newest) => Some(newest.id),
            None => None,
        };
        let id = self.next_id(newest_id)?;
        // leftovers of a copy a crash interrupted
        self.remove_events(id)?;
        let mut tables = Vec::new();
        let mut chunk = Vec::new();
        let mut copied = 0u64;
        let mut chunk_index = 0u64;
        while copied < txn.events {
            chunk.clear();
            reader.read_events(txn, copied, CHUNK_EVENTS, &mut chunk)?;
            if chunk.is_empty() {
                return Err(LogError::Corrupt(
                    "a transaction holds fewer events than its index says",
                ));
            }
            for event in &chunk {
                if !tables.contains(&event.schema.table) {
                    tables.push(event.schema.table.clone());
                }
                observe(id, event);
            }
            self.events.insert(
                self.chunk_key(id, chunk_index),
                codec::encode_batch(&chunk)?,
            )?;
            copied += chunk.len() as u64;
            chunk_index += 1;
        }
        tables.sort();
        let entry = DeadLetter {
            id,
            position: txn.position.clone(),
            commit_time_micros: txn.commit_time_micros,
            dead_lettered_at_micros: now_micros(),
            events: txn.events,
            tables,
            reason,
        };
        self.ids
            .insert(self.pipeline.as_bytes(), codec::encode(&(id + 1))?)?;
        self.entries
            .insert(self.entry_key(id), codec::encode(&entry)?)?;
        Ok(entry)
    }

    /// The id after the stored counter and after the newest entry's id.
    fn next_id(&self, newest_id: Option<u64>) -> Result<u64, LogError> {
        let stored = match self.ids.get(self.pipeline.as_bytes())? {
            Some(bytes) => codec::decode::<u64>(&bytes, "dead-letter id")?,
            None => 1,
        };
        Ok(stored.max(newest_id.map_or(1, |id| id + 1)))
    }

    fn newest(&self) -> Result<Option<DeadLetter>, LogError> {
        match self.entries.scan_prefix(self.prefix()).next_back() {
            Some(entry) => Ok(Some(codec::decode(&entry?.1, "dead letter")?)),
            None => Ok(None),
        }
    }

    /// Every entry, oldest (lowest id) first.
    pub fn list(&self) -> Result<Vec<DeadLetter>, LogError> {
        self.entries
            .scan_prefix(self.prefix())
            .map(|entry| codec::decode(&entry?.1, "dead letter"))
            .collect()
    }

    /// The entry `id`, if the queue holds it.
    pub fn get(&self, id: u64) -> Result<Option<DeadLetter>, LogError> {
        match self.entries.get(self.entry_key(id))? {
            Some(bytes) => Ok(Some(codec::decode(&bytes, "dead letter")?)),
            None => Ok(None),
        }
    }

    /// Appends to `out` up to `limit` events of `entry`, skipping its first
    /// `skip` events.
    pub fn read_events(
        &self,
        entry: &DeadLetter,
        skip: u64,
        limit: u64,
        out: &mut Vec<ChangeEvent>,
    ) -> Result<(), LogError> {
        let end = entry.events.min(skip.saturating_add(limit));
        let mut at = skip;
        while at < end {
            let chunk = at / CHUNK_EVENTS;
            let bytes =
                self.events
                    .get(self.chunk_key(entry.id, chunk))?
                    .ok_or(LogError::Corrupt(
                        "a dead letter refers to a missing record batch",
                    ))?;
            let events = codec::decode_batch(&bytes)?;
            let from = (at % CHUNK_EVENTS) as usize;
            let n = ((end - at) as usize).min(events.len().saturating_sub(from));
            if n == 0 {
                return Err(LogError::Corrupt(
                    "a dead letter holds fewer events than its entry says",
                ));
            }
            out.extend_from_slice(&events[from..from + n]);
            at += n as u64;
        }
        Ok(())
    }

    /// Removes entry `id` and its events; `false` when it was not there.
    /// Not durable until [`DeadLetters::flush`].
    pub fn remove(&self, id: u64) -> Result<bool, LogError> {
        // entry first: a crash in between leaves only events no entry
        // refers to, and ids are never reused
        let existed = self.entries.remove(self.entry_key(id))?.is_some();
        self.remove_events(id)?;
        Ok(existed)
    }

    fn remove_events(&self, id: u64) -> Result<(), LogError> {
        let mut batch = sled::Batch::default();
        for entry in self.events.scan_prefix(self.entry_key(id)) {
            batch.remove(entry?.0);
        }
        self.events.apply_batch(batch)?;
        Ok(())
    }

    /// The stored record batches of entry `id`, in order: what
    /// [`DeadLetters::restore_chunk`] takes back.
    pub fn chunks(&self, id: u64) -> impl Iterator<Item = Result<Vec<u8>, LogError>> + '_ {
        self.events
            .scan_prefix(self.entry_key(id))
            .map(|item| Ok(item?.1.to_vec()))
    }

    /// Stores record batch `index` of entry `id` as [`DeadLetters::chunks`]
    /// returned it (restoring an entry from the target). The entry follows
    /// with [`DeadLetters::restore_entry`]. Not durable until
    /// [`DeadLetters::flush`].
    pub fn restore_chunk(&self, id: u64, index: u64, batch: &[u8]) -> Result<(), LogError> {
        // refuse what the queue could not read back
        codec::decode_batch(batch)?;
        self.events.insert(self.chunk_key(id, index), batch)?;
        Ok(())
    }

    /// Stores `entry` (its record batches restored before) under its own id,
    /// and moves the next id past it. Not durable until
    /// [`DeadLetters::flush`].
    pub fn restore_entry(&self, entry: &DeadLetter) -> Result<(), LogError> {
        let next = self.next_id(Some(entry.id))?;
        self.ids
            .insert(self.pipeline.as_bytes(), codec::encode(&next)?)?;
        self.entries
            .insert(self.entry_key(entry.id), codec::encode(entry)?)?;
        Ok(())
    }

    /// Whether this queue's entries were written to the target: `false`
    /// for a queue an agent from before the target copy filled (its
    /// entries are in this queue only), and for a new one.
    pub fn in_target(&self) -> Result<bool, LogError> {
        Ok(self.target.contains_key(self.pipeline.as_bytes())?)
    }

    /// Records that every entry of this queue is in the target, and every
    /// later one will be. Not durable until [`DeadLetters::flush`].
    pub fn mark_in_target(&self) -> Result<(), LogError> {
        self.target
            .insert(self.pipeline.as_bytes(), codec::encode(&true)?)?;
        Ok(())
    }

    /// Makes every change to the queue durable.
    pub async fn flush(&self) -> Result<(), LogError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

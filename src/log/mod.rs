//! The change log: an embedded, durable, ordered log of committed source
//! transactions, one per source store, on sled.
//!
//! This module is the only code that touches sled (and, through [`codec`],
//! bincode). Layout of one sled database, per source store `S`:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `S/records` | batch key, u64 big-endian | record batch: many events ([`codec`]) |
//! | `S/txns` | transaction sequence, u64 big-endian | [`codec::TxnRecord`]: position and event range |
//! | `S/meta` | `head`, `truncation` | writer state, truncation mark |
//! | `cursors` | `S` `\0` pipeline | last applied transaction sequence |
//! | `dead_letters`, `dead_letter_events`, `dead_letter_ids`, `dead_letter_target` | pipeline `\0` … | each pipeline's dead-letter queue ([`DeadLetters`]), the working copy of the target's |
//!
//! Guarantees:
//! - a transaction is visible to readers only after [`LogWriter::flush`] made
//!   it durable; its events are never split or reordered;
//! - [`LogWriter::flush`] returns the only position a source may acknowledge;
//! - after a crash, whatever was not flushed is gone and the source resends it
//!   from [`LogWriter::resume_position`].

pub mod codec;
mod dead_letters;
mod reader;
mod writer;

pub use codec::TxnRecord;
pub use dead_letters::{DeadLetter, DeadLetterReason, DeadLetters};
pub use reader::{LogReader, Pending, PipelineFilter};
pub use writer::LogWriter;

use callosum_api::{ConnectorError, ErrorKind, Position};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Errors of the change log. All of them are permanent for the pipeline: a
/// log that cannot write must stop the source before it acknowledges.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("change log storage failed: {0}")]
    Storage(#[from] sled::Error),
    #[error("change log entry is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("change log {what} has format version {version}, which this build cannot read")]
    UnsupportedFormat { what: &'static str, version: u8 },
    #[error("cannot encode change log entry: {0}")]
    Encode(String),
    #[error("the change log no longer holds the changes after {checkpoint}: it was truncated through {truncated_through}")]
    Gap {
        checkpoint: String,
        truncated_through: String,
    },
    #[error("the checkpoint {checkpoint} cannot be compared with the log's positions ({log_position}): was the pipeline's source changed?")]
    IncomparablePosition {
        checkpoint: String,
        log_position: String,
    },
    #[error("store `{0}` already has a log writer")]
    WriterInUse(String),
    #[error("the change log in {0} is locked by another process")]
    InUse(String),
}

impl From<LogError> for ConnectorError {
    fn from(err: LogError) -> Self {
        let (kind, hint) = match &err {
            LogError::Storage(_) => (
                ErrorKind::LogStorage,
                "check the disk of data_dir (space, permissions, I/O errors) and restart; nothing unflushed was acknowledged",
            ),
            LogError::Corrupt(_) | LogError::UnsupportedFormat { .. } => (
                ErrorKind::LogStorage,
                "the data_dir was written by another Callosum version or is damaged; restore it or start with an empty data_dir and re-snapshot",
            ),
            LogError::Encode(_) => (ErrorKind::LogStorage, "report this as a bug"),
            LogError::Gap { .. } | LogError::IncomparablePosition { .. } => (
                ErrorKind::PositionLost,
                "the target missed changes the log no longer holds; re-snapshot the pipeline's tables",
            ),
            LogError::WriterInUse(_) | LogError::InUse(_) => {
                (ErrorKind::Config, "run one agent per data_dir")
            }
        };
        ConnectorError::new(kind, err.to_string()).with_hint(hint)
    }
}

/// How long [`ChangeLog::open`] waits for the directory's lock: long enough
/// for the tasks of an agent stopped in this process to let go of it.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The sled trees of one source store, shared by its writer and readers.
pub(crate) struct StoreLog {
    pub(crate) name: String,
    pub(crate) records: sled::Tree,
    pub(crate) txns: sled::Tree,
    pub(crate) meta: sled::Tree,
    pub(crate) cursors: sled::Tree,
    /// The next transaction sequence not yet durable: readers may read below it.
    pub(crate) durable: watch::Sender<u64>,
    /// When the flush in progress started (µs since the epoch), 0 when none:
    /// sled does not return an error when its disk fills up, it waits
    /// forever, so a stalled flush is how a failed disk shows.
    pub(crate) flush_started_micros: std::sync::atomic::AtomicI64,
    writer_taken: Mutex<bool>,
}

impl StoreLog {
    fn cursor_key(&self, pipeline: &str) -> Vec<u8> {
        let mut key = self.name.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(pipeline.as_bytes());
        key
    }

    pub(crate) fn head(&self) -> Result<codec::Head, LogError> {
        match self.meta.get(HEAD_KEY)? {
            Some(bytes) => codec::decode(&bytes, "head"),
            None => Ok(codec::Head::default()),
        }
    }

    /// The last transaction every one of `pipelines` has applied (the
    /// minimum of their cursors); `None` when one of them has applied
    /// nothing yet, or there are none.
    pub(crate) fn applied_by_all(
        &self,
        pipelines: &[impl AsRef<str>],
    ) -> Result<Option<u64>, LogError> {
        let mut through: Option<u64> = None;
        for pipeline in pipelines {
            let Some(bytes) = self.cursors.get(self.cursor_key(pipeline.as_ref()))? else {
                return Ok(None);
            };
            let applied = codec::decode::<u64>(&bytes, "cursor")?;
            through = Some(through.map_or(applied, |t| t.min(applied)));
        }
        Ok(through)
    }

    pub(crate) fn truncation(&self) -> Result<codec::Truncation, LogError> {
        match self.meta.get(TRUNCATION_KEY)? {
            Some(bytes) => codec::decode(&bytes, "truncation mark"),
            None => Ok(codec::Truncation::default()),
        }
    }
}

const HEAD_KEY: &[u8] = b"head";
const TRUNCATION_KEY: &[u8] = b"truncation";

/// The change log of every source store, in one sled database under `data_dir`.
#[derive(Clone)]
pub struct ChangeLog {
    db: sled::Db,
    stores: Arc<Mutex<HashMap<String, Arc<StoreLog>>>>,
}

impl std::fmt::Debug for ChangeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeLog").finish_non_exhaustive()
    }
}

impl ChangeLog {
    /// Opens (or creates) the log in `dir`. Blocks the thread up to
    /// [`LOCK_WAIT`] while another handle still holds the directory's lock
    /// (an agent in this process that is still shutting down); after that,
    /// another agent uses `dir`: [`LogError::InUse`].
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        let config = sled::Config::new()
            .path(dir)
            // flushes are explicit: one per batch, before acknowledging
            .flush_every_ms(None)
            .cache_capacity(64 * 1024 * 1024);
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                // sled reports its lock as an `Other` I/O error
                Err(sled::Error::Io(err)) if err.to_string().contains("could not acquire lock") => {
                    if std::time::Instant::now() >= deadline {
                        return Err(LogError::InUse(dir.display().to_string()));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(err) => return Err(err.into()),
            }
        };
        Ok(Self {
            db,
            stores: Arc::default(),
        })
    }

    pub(crate) fn store(&self, name: &str) -> Result<Arc<StoreLog>, LogError> {
        let mut stores = self.stores.lock().expect("log store map poisoned");
        if let Some(store) = stores.get(name) {
            return Ok(store.clone());
        }
        let records = self.db.open_tree(format!("{name}/records"))?;
        let txns = self.db.open_tree(format!("{name}/txns"))?;
        let meta = self.db.open_tree(format!("{name}/meta"))?;
        let cursors = self.db.open_tree("cursors")?;
        let mut store = StoreLog {
            name: name.to_string(),
            records,
            txns,
            meta,
            cursors,
            durable: watch::channel(0).0,
            flush_started_micros: std::sync::atomic::AtomicI64::new(0),
            writer_taken: Mutex::new(false),
        };
        let head = store.head()?;
        store.durable = watch::channel(head.next_txn_seq).0;
        let store = Arc::new(store);
        stores.insert(name.to_string(), store.clone());
        Ok(store)
    }

    /// The single writer of `store`'s log. Recovers from a crash first: what
    /// was written after the last flush is removed.
    pub fn writer(&self, store: &str) -> Result<LogWriter, LogError> {
        let store = self.store(store)?;
        {
            let mut taken = store.writer_taken.lock().expect("writer flag poisoned");
            if *taken {
                return Err(LogError::WriterInUse(store.name.clone()));
            }
            *taken = true;
        }
        LogWriter::recover(store)
    }

    /// A reader of `store`'s log for `pipeline`.
    pub fn reader(&self, store: &str, pipeline: &str) -> Result<LogReader, LogError> {
        Ok(LogReader::new(self.store(store)?, pipeline))
    }

    /// The dead-letter queue of `pipeline`.
    pub fn dead_letters(&self, pipeline: &str) -> Result<DeadLetters, LogError> {
        DeadLetters::open(&self.db, pipeline)
    }

    /// Removes every transaction that all of `pipelines` have applied.
    /// Returns how many transactions were removed.
    pub fn truncate_applied(&self, store: &str, pipelines: &[&str]) -> Result<u64, LogError> {
        let store = self.store(store)?;
        let Some(through) = store.applied_by_all(pipelines)? else {
            return Ok(0);
        };
        truncate_through(&store, through)
    }

    /// The position the source of `store` resumes from.
    pub fn resume_position(&self, store: &str) -> Result<Option<Position>, LogError> {
        Ok(self.store(store)?.head()?.resume_position)
    }

    /// How long the flush in progress for `store` has been waiting, if one
    /// is. A flush that never returns is how a full or failed disk shows
    /// (sled waits instead of failing).
    pub fn flush_pending_for(&self, store: &str) -> Result<Option<std::time::Duration>, LogError> {
        let started = self
            .store(store)?
            .flush_started_micros
            .load(std::sync::atomic::Ordering::Relaxed);
        if started == 0 {
            return Ok(None);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(started);
        Ok(Some(std::time::Duration::from_micros(
            (now - started).max(0) as u64,
        )))
    }

    /// Bytes the sled database takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, LogError> {
        Ok(self.db.size_on_disk()?)
    }

    /// Durably flushes everything written so far.
    pub async fn flush(&self) -> Result<(), LogError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn key_seq(key: &[u8]) -> Result<u64, LogError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| LogError::Corrupt("key is not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Removes transactions with sequence ≤ `through` and the record batches only
/// they use, and records what was removed.
fn truncate_through(store: &StoreLog, through: u64) -> Result<u64, LogError> {
    let mut removed = 0u64;
    let mut last_removed: Option<TxnRecord> = None;
    let mut txn_batch = sled::Batch::default();
    for entry in store.txns.range(..=seq_key(through)) {
        let (key, value) = entry?;
        last_removed = Some(codec::decode_txn(&value)?);
        txn_batch.remove(key);
        removed += 1;
    }
    let Some(last_removed) = last_removed else {
        return Ok(0);
    };
    // Batches strictly before the first batch still referenced can go.
    let keep_from = match store.txns.range(seq_key(through + 1)..).next() {
        Some(entry) => {
            let (_, value) = entry?;
            codec::decode_txn(&value)?.first_batch
        }
        None => last_removed.last_batch + 1,
    };
    let mut record_batch = sled::Batch::default();
    for entry in store.records.range(..seq_key(keep_from)) {
        let (key, _) = entry?;
        record_batch.remove(key);
    }
    let mark = codec::Truncation {
        through_seq: Some(through),
        through_position: Some(last_removed.position),
    };
    // Mark first: a crash between the steps leaves a mark that is at most
    // ahead of the data, which only makes gap detection stricter.
    store.meta.insert(TRUNCATION_KEY, codec::encode(&mark)?)?;
    store.txns.apply_batch(txn_batch)?;
    store.records.apply_batch(record_batch)?;
    Ok(removed)
}

#[cfg(test)]
mod tests;

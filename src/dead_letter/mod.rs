//! The dead-letter queue as the operator and the apply worker see it.
//!
//! With `on_error = "dead_letter"`, a source transaction that the target
//! rejects for good (a constraint, a value the target type cannot hold, a
//! missing column) is copied into the pipeline's queue in the change log
//! ([`crate::log::DeadLetters`]) with its reason, then written to the
//! target's `callosum_dead_letter` in the target transaction that moves the
//! checkpoint past it ([`target`]: the target is the durable home, the
//! queue in `data_dir` the working copy), and the pipeline goes on. Every later transaction that
//! changes a row a queued transaction changes is queued behind it
//! ([`BlockedRows`]), so replaying the queue in order restores the source's
//! order for those rows.
//!
//! The queue changes only inside the pipeline's apply worker, between two
//! target transactions: the HTTP endpoint sends it a [`DeadLetterCommand`]
//! and waits for the answer. Replay is exactly-once through a second
//! checkpoint row in the target (see [`replay`]).

pub mod api;
mod blocked;
mod queue;
mod replay;
pub mod target;

pub use blocked::BlockedRows;
pub use queue::{DeadLetterQueue, QueueSize};
pub use replay::{replay, replay_checkpoint_name};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio::sync::{mpsc, oneshot};

use crate::log::DeadLetters;

/// What the operator asks of a pipeline's dead-letter queue.
#[derive(Debug)]
pub enum DeadLetterCommand {
    /// Apply the queued transactions in order, oldest first, up to and
    /// including `through` (all when `None`); stop at the first that fails.
    Replay {
        through: Option<u64>,
        reply: oneshot::Sender<Result<ReplayReport, String>>,
    },
    /// Drop queued transactions without applying them.
    Discard {
        which: DiscardSelection,
        reply: oneshot::Sender<Result<DiscardReport, String>>,
    },
}

/// Which entries [`DeadLetterCommand::Discard`] drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiscardSelection {
    One(u64),
    All,
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// Entries applied to the target now, in order.
    pub replayed: Vec<u64>,
    /// Entries the target already held (a replay a crash interrupted after
    /// the target's commit): removed from the queue, not applied again.
    pub already_applied: Vec<u64>,
    /// The entry that failed, and why; replay stopped there and it and
    /// every later entry are still queued.
    pub failed: Option<ReplayFailure>,
    /// Entries still queued.
    pub remaining: u64,
}

/// The entry a replay stopped at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayFailure {
    pub id: u64,
    pub error: String,
}

/// What a discard did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscardReport {
    pub discarded: Vec<u64>,
    /// Entries still queued.
    pub remaining: u64,
}

/// One pipeline's queue (to read) and its apply worker's command channel
/// (to change it).
#[derive(Clone, Debug)]
pub struct PipelineDeadLetters {
    pub queue: DeadLetters,
    pub commands: mpsc::Sender<DeadLetterCommand>,
}

/// Every pipeline's dead-letter queue, by pipeline name: what `/dlq` serves.
pub type DeadLetterControl = BTreeMap<String, PipelineDeadLetters>;

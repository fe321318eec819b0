//! The seam between the agent's active/standby state machine and the store
//! that holds the lease row, and how a sink fences its target transactions.
//!
//! Two agents with the same `[lease]` exclude each other through one row of
//! [`LEASE_TABLE`] in a configured store. Expiry is decided by the store's
//! clock, never an agent's: an agent's own view of its lease (its monotonic
//! clock) is only ever shorter than the store's. Each acquisition gets a new,
//! larger `epoch`, which every target transaction of the active agent writes
//! into its checkpoint row ([`Fence`]): a former leader that wakes up from a
//! pause cannot commit anything once the new leader fenced the targets.

use std::future::Future;
use std::time::Duration;

use crate::ConnectorError;

/// The table, in the lease store, that holds one row per lease name:
/// `(name PK, holder, epoch, expires_at)`.
pub const LEASE_TABLE: &str = "callosum_lease";

/// How a sink's target transactions are fenced against a former leader.
///
/// The default (epoch 0, no timeout) is the single-agent behaviour: every
/// checkpoint write still requires the stored epoch to be ≤ 0, so an agent
/// without `[lease]` is fenced out of a target that an agent with a lease
/// took over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fence {
    /// The active agent's lease epoch. A checkpoint write succeeds only
    /// where the stored epoch is ≤ this one, and stores this one.
    pub epoch: i64,
    /// When set, the target session ends a transaction left idle this long
    /// (PostgreSQL `idle_in_transaction_session_timeout`, MariaDB
    /// `idle_write_transaction_timeout`): a paused former leader's open
    /// transaction holding the checkpoint row would otherwise block the new
    /// leader's fence until it wakes up.
    pub idle_transaction_timeout: Option<Duration>,
}

/// One lease acquisition: the epoch that fences every target transaction of
/// the holder until it loses the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acquired {
    /// Larger than every epoch handed out before for this lease name, also
    /// to the same holder.
    pub epoch: i64,
}

/// Who holds a lease, as the store sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseHolder {
    pub holder: String,
    pub epoch: i64,
    /// Whether `expires_at` is in the past by the store's clock.
    pub expired: bool,
}

/// The store that holds the lease row.
///
/// Guarantees:
/// - at most one holder has an unexpired lease of a name at any instant of
///   the store's clock: [`LeaseStore::try_acquire`] takes the row only if it
///   is free or expired, in one atomic conditional write;
/// - every successful acquisition returns an epoch larger than any returned
///   before for that name (a restart of the same holder included);
/// - [`LeaseStore::renew`] extends the lease only while the row still
///   carries the caller's epoch, and says when it does not;
/// - expiry is `now + duration` on the store's clock, taken when the
///   statement runs, so an agent that starts its own `duration` timer
///   before sending the statement never believes in a lease the store
///   already considers expired (both clocks run at the same rate).
///
/// All calls may be repeated after a `Connection` error; a lost connection
/// is reconnected by the next call.
pub trait LeaseStore: Send {
    /// Creates the lease table when missing and takes the lease for
    /// `holder` if it is free or expired; `None` when someone else holds
    /// it.
    fn try_acquire(
        &mut self,
        holder: &str,
        duration: Duration,
    ) -> impl Future<Output = Result<Option<Acquired>, ConnectorError>> + Send;

    /// Extends the lease of `epoch` by `duration` from now; `false` when the
    /// row no longer carries `epoch` (someone took over).
    fn renew(
        &mut self,
        epoch: i64,
        duration: Duration,
    ) -> impl Future<Output = Result<bool, ConnectorError>> + Send;

    /// Gives up the lease of `epoch` (a graceful stop) so that a standby
    /// takes over without waiting for the expiry. Nothing when the row no
    /// longer carries `epoch`.
    fn release(&mut self, epoch: i64) -> impl Future<Output = Result<(), ConnectorError>> + Send;

    /// The current holder, `None` when the row does not exist.
    fn holder(
        &mut self,
    ) -> impl Future<Output = Result<Option<LeaseHolder>, ConnectorError>> + Send;
}

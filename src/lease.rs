//! The active/standby state machine's timing decisions, without I/O.
//!
//! A standby tries to take the lease every [`LeaseTiming::retry_every`]. An
//! active agent renews every [`LeaseTiming::renew_every`] and believes in
//! its lease only until `sent + duration`, where `sent` is the instant (of
//! its monotonic clock) at which it *sent* the last successful acquisition
//! or renewal. The store sets `expires_at = now + duration` by its own clock
//! when it runs the statement, which is after `sent`: so the agent's view
//! of its lease always ends before the store's, whatever the two clocks
//! read, as long as they run at the same rate. A renewal the store refuses
//! (the row carries another epoch) is a loss at once; one that fails
//! (connection) is retried until the lease would end. The I/O around it
//! is `agent::lease_worker`; fencing in the targets covers what timing
//! cannot (a process paused between a check and a commit).

use std::time::{Duration, Instant};

/// How often a standby retries and an active agent renews.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    pub duration: Duration,
}

impl LeaseTiming {
    /// Renewal period: a third of the lease, so two renewals may fail in a
    /// row before it ends.
    pub fn renew_every(&self) -> Duration {
        self.duration / 3
    }

    /// How often a standby tries to take the lease: a takeover comes at most
    /// this long after the lease expired.
    pub fn retry_every(&self) -> Duration {
        self.duration / 3
    }
}

/// What came of a renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// The store extended the lease.
    Renewed,
    /// The row carries another epoch: someone took over.
    Refused,
    /// No answer (connection, timeout): the lease may still be ours.
    Failed,
}

/// Why an active agent stops applying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// The store says another agent holds the lease now.
    TakenOver,
    /// No renewal succeeded before the lease would end by this agent's
    /// clock (the lease store unreachable, or this process was paused).
    Expired,
}

/// A lease this agent holds, as its monotonic clock sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldLease {
    pub epoch: i64,
    timing: LeaseTiming,
    valid_until: Instant,
}

impl HeldLease {
    /// The acquisition of `epoch`, whose statement was sent at `sent`.
    pub fn acquired(epoch: i64, timing: LeaseTiming, sent: Instant) -> Self {
        Self {
            epoch,
            timing,
            valid_until: sent + timing.duration,
        }
    }

    /// The instant at which this agent must have stopped applying unless a
    /// renewal succeeds first.
    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }

    /// Whether the lease is still this agent's at `now`.
    pub fn check(&self, now: Instant) -> Result<(), Loss> {
        if now < self.valid_until {
            Ok(())
        } else {
            Err(Loss::Expired)
        }
    }

    /// Records the outcome of a renewal sent at `sent` and answered (or
    /// given up) at `now`. A success extends the lease to `sent + duration`
    /// (never shortens it); a refusal is a loss at once; a failure keeps
    /// what was held. Then checks the lease at `now`.
    pub fn renewal(&mut self, outcome: Renewal, sent: Instant, now: Instant) -> Result<(), Loss> {
        match outcome {
            Renewal::Refused => return Err(Loss::TakenOver),
            Renewal::Renewed => {
                // a renewal answered after the lease already ended by our
                // clock does not revive it: workers may have been stopped
                // (and the store may have let someone else in meanwhile)
                self.check(now)?;
                self.valid_until = self.valid_until.max(sent + self.timing.duration);
            }
            Renewal::Failed => {}
        }
        self.check(now)
    }

    /// When the next renewal is due after one sent at `sent`.
    pub fn next_renewal(&self, sent: Instant) -> Instant {
        sent + self.timing.renew_every()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TIMING: LeaseTiming = LeaseTiming {
        duration: Duration::from_secs(15),
    };

    #[test]
    fn renew_and_retry_every_third_of_the_lease() {
        assert_eq!(TIMING.renew_every(), Duration::from_secs(5));
        assert_eq!(TIMING.retry_every(), Duration::from_secs(5));
    }

    #[test]
    fn a_refused_renewal_is_a_loss_at_once() {
        let t0 = Instant::now();
        let mut lease = HeldLease::acquired(3, TIMING, t0);
        let sent = t0 + Duration::from_secs(5);
        assert_eq!(
            lease.renewal(Renewal::Refused, sent, sent + Duration::from_millis(1)),
            Err(Loss::TakenOver)
        );
    }

    #[test]
    fn failed_renewals_keep_the_lease_until_it_ends_by_our_clock() {
        let t0 = Instant::now();
        let mut lease = HeldLease::acquired(3, TIMING, t0);
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(lease.renewal(Renewal::Failed, at(5), at(6)), Ok(()));
        assert_eq!(lease.renewal(Renewal::Failed, at(10), at(14)), Ok(()));
        assert_eq!(
            lease.renewal(Renewal::Failed, at(14), at(15)),
            Err(Loss::Expired)
        );
    }

    #[test]
    fn a_process_paused_past_its_lease_steps_down_even_if_the_renewal_then_succeeds() {
        // SIGSTOP after sending the renewal at 5 s, SIGCONT at 40 s: the
        // store may already have given the lease to someone else
        let t0 = Instant::now();
        let mut lease = HeldLease::acquired(3, TIMING, t0);
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(
            lease.renewal(Renewal::Renewed, at(5), at(40)),
            Err(Loss::Expired)
        );
        assert_eq!(lease.check(at(40)), Err(Loss::Expired));
    }

    #[test]
    fn a_renewal_extends_from_when_it_was_sent() {
        let t0 = Instant::now();
        let mut lease = HeldLease::acquired(3, TIMING, t0);
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(lease.renewal(Renewal::Renewed, at(5), at(7)), Ok(()));
        assert_eq!(lease.valid_until(), at(20));
        assert_eq!(lease.next_renewal(at(5)), at(10));
    }

    /// One renewal: sent `after` ms past the previous send, the store runs
    /// it `store_delay` ms after sending, answered `answer_delay` ms after
    /// the store ran it.
    fn renewal() -> impl Strategy<Value = (u64, u64, u64, u8)> {
        (0u64..20_000, 0u64..3_000, 0u64..3_000, 0u8..10)
    }

    proptest! {
        /// The agent never believes in its lease at an instant the store
        /// already considers it expired: whatever the delays, failures and
        /// pauses, every instant at which `check` passes lies before the
        /// store's `expires_at` of the last successful statement.
        #[test]
        fn the_agent_never_outlives_the_stores_lease(
            acquire_delay in 0u64..3_000,
            renewals in proptest::collection::vec(renewal(), 0..30),
        ) {
            let t0 = Instant::now();
            let ms = Duration::from_millis;
            let duration = TIMING.duration;
            let mut lease = HeldLease::acquired(1, TIMING, t0);
            // the store's expiry, on the same time line (clocks at the same rate)
            let mut store_expiry = t0 + ms(acquire_delay) + duration;
            let mut sent = t0;
            let mut answered = t0 + ms(acquire_delay);
            for (after, store_delay, answer_delay, kind) in renewals {
                // one connection: a renewal is sent after the previous answer
                sent = (sent + ms(after)).max(answered);
                let ran = sent + ms(store_delay);
                let now = ran + ms(answer_delay);
                answered = now;
                // the store renews only while nobody else took the lease,
                // i.e. while it is unexpired by its own clock
                let outcome = match kind {
                    0 => Renewal::Refused,
                    1..=3 => Renewal::Failed,
                    _ if ran < store_expiry => Renewal::Renewed,
                    _ => Renewal::Refused,
                };
                if outcome == Renewal::Renewed {
                    store_expiry = ran + duration;
                }
                let verdict = lease.renewal(outcome, sent, now);
                if outcome == Renewal::Refused {
                    prop_assert_eq!(verdict, Err(Loss::TakenOver));
                    break;
                }
                if verdict.is_err() {
                    break;
                }
                prop_assert!(lease.valid_until() <= store_expiry);
                prop_assert!(now < store_expiry);
            }
        }
    }
}

//! How long to wait before retrying a transient failure. The only module
//! that knows the `backoff` crate (it carries an "unmaintained" notice; see
//! deny.toml), so it can be swapped without touching the workers.

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use std::time::Duration;

/// First wait after a failure.
pub const INITIAL_DELAY: Duration = Duration::from_millis(200);
/// Longest wait between attempts: an outage is noticed within this long of
/// its end.
pub const MAX_DELAY: Duration = Duration::from_secs(10);

/// Exponential backoff with jitter, capped at [`MAX_DELAY`], never giving up:
/// a transient failure is retried until it goes away or the agent stops.
#[derive(Debug)]
pub struct RetryPolicy {
    inner: ExponentialBackoff,
    attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new(INITIAL_DELAY, MAX_DELAY)
    }
}

impl RetryPolicy {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let inner = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(initial)
            .with_max_interval(max)
            .with_multiplier(2.0)
            .with_randomization_factor(0.3)
            .with_max_elapsed_time(None)
            .build();
        Self { inner, attempts: 0 }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts += 1;
        self.inner.next_backoff().unwrap_or(MAX_DELAY)
    }

    /// Attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Call after a success: the next failure starts from the initial delay.
    pub fn reset(&mut self) {
        self.inner.reset();
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_and_stay_capped() {
        let mut policy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..12).map(|_| policy.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(70) && delays[0] <= Duration::from_millis(130));
        assert!(delays[3] > delays[0]);
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(2600)));
        assert_eq!(policy.attempts(), 12);
        policy.reset();
        assert!(policy.next_delay() <= Duration::from_millis(130));
    }
}

//! Throwaway database servers for tests, `callosum demo` and benchmarks.
//!
//! [`PgServer`] and [`MariaDbServer`] each start a real server in a scratch
//! directory under the system temp dir (`callosum-testkit-<pid>-...`), on a
//! free port of 127.0.0.1, configured for change data capture (PostgreSQL
//! `wal_level = logical`; MariaDB row-based binlog with full row images and
//! full metadata). They never touch the system services on 5432/3306.
//!
//! Typical use in an integration test: one shared server per test binary,
//! one fresh database per test, and [`wait_until`] instead of sleeps:
//!
//! ```no_run
//! # async fn example() -> Result<(), callosum::testkit::TestkitError> {
//! use callosum::testkit::{wait_until, PgServer};
//! use std::time::Duration;
//!
//! let url = PgServer::shared().fresh_database("capture").await?;
//! wait_until("the row to arrive", Duration::from_secs(10), || async {
//!     true // query the target here
//! })
//! .await?;
//! # let _ = url;
//! # Ok(())
//! # }
//! ```
//!
//! Lifetime: servers are spawned from one dedicated thread with a
//! parent-death signal, so they die with the process even when it is killed;
//! servers from `start` are stopped and their directory removed on drop;
//! shared servers are stopped and removed by an exit hook, and directories of
//! processes that died without cleaning up are swept at the next start.
//!
//! Binaries: PostgreSQL is found through `$CALLOSUM_PG_BINDIR`, `pg_config
//! --bindir` or the newest `/usr/lib/postgresql/*/bin`; MariaDB's `mariadbd`
//! and `mariadb-install-db` through `$PATH` and the usual sbin directories.
//! Data directories are sparse copies of a template initialised once per
//! server version and user under the temp dir (PostgreSQL copies then get
//! their own system identifier); set `CALLOSUM_TESTKIT_NO_TEMPLATE` to run
//! initdb / `mariadb-install-db` every time. When the process runs as root, PostgreSQL runs as the `postgres` system
//! user (so the temp dir must be reachable by that user) and MariaDB with
//! `--user=root`.

mod error;
mod mariadb;
mod postgres;
mod process;

use std::future::Future;
use std::time::Duration;

pub use error::TestkitError;
pub use mariadb::MariaDbServer;
pub use postgres::PgServer;

/// Set this environment variable to run initdb / mariadb-install-db for
/// every server instead of copying a cached template data directory.
pub const NO_TEMPLATE_ENV: &str = "CALLOSUM_TESTKIT_NO_TEMPLATE";

/// How long a server may take to accept connections after it was spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a clean stop may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// How often [`wait_until`] polls.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `condition` (every ~50 ms) until it returns true; after `timeout`
/// returns [`TestkitError::Timeout`] naming `what`. Use it instead of bare
/// sleeps in tests. The condition is checked at least once, and once more at
/// the deadline.
pub async fn wait_until<F, Fut>(
    what: &str,
    timeout: Duration,
    mut condition: F,
) -> Result<(), TestkitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            tracing::debug!(
                what,
                timeout_ms = timeout.as_millis() as u64,
                "wait timed out"
            );
            return Err(TestkitError::Timeout {
                what: what.to_string(),
                timeout,
            });
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_valid_and_unique() {
        let a = process::unique_database_name("My-Test");
        let b = process::unique_database_name("My-Test");
        assert_ne!(a, b);
        assert!(a.starts_with("my_test_"), "{a}");
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        let long = process::unique_database_name(&"x".repeat(100));
        assert!(long.len() <= 63, "{long}");
        assert!(process::unique_database_name("1abc").starts_with("d1abc_"));
    }

    #[tokio::test]
    async fn wait_until_times_out_with_what() {
        let err = wait_until("the impossible", Duration::from_millis(120), || async {
            false
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("the impossible"), "{err}");

        let mut calls = 0;
        wait_until("the third call", Duration::from_secs(5), || {
            calls += 1;
            let done = calls >= 3;
            async move { done }
        })
        .await
        .unwrap();
        assert_eq!(calls, 3);
    }
}

//! A panic in a worker halts what the worker served, visibly: never a task
//! that silently stopped while `/status` still says streaming.
//!
//! Every worker future runs under [`supervise`]; a panic becomes a
//! `ConnectorError` of kind [`ErrorKind::Internal`] ("internal error:
//! <worker> panicked") that the caller turns into a halt in `/status` and
//! `callosum_errors_total{kind="internal"}`. The panic's payload is never
//! put in the error or the log unless it is a static string: a formatted
//! payload could hold a row value (invariant 8). [`install_hook`] replaces
//! the default hook, which would print it, with one that logs the location.

use callosum_api::{ConnectorError, ErrorKind};
use futures_util::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use tracing::error;

/// The error a panic of `worker` becomes.
pub fn internal_error(worker: &str) -> ConnectorError {
    ConnectorError::new(
        ErrorKind::Internal,
        format!("internal error: {worker} panicked"),
    )
    .with_hint(
        "report this as a bug with the agent log (it names where the panic happened); \
             restarting the agent resumes from the target's checkpoint",
    )
}

/// Runs `worker` to its end; when it panics, calls `on_panic` with the
/// error the panic became.
pub async fn supervise<F>(name: &str, worker: F, on_panic: impl FnOnce(ConnectorError))
where
    F: Future<Output = ()>,
{
    if AssertUnwindSafe(worker).catch_unwind().await.is_err() {
        let err = internal_error(name);
        error!(worker = name, error = %err, "worker panicked, halting what it served");
        on_panic(err);
    }
}

/// Logs a panic's location (and its payload only when it is a static
/// string, which cannot hold a row value) instead of printing the payload.
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        match info.payload().downcast_ref::<&'static str>() {
            Some(message) => error!(location = %location, message, "panic"),
            None => error!(location = %location, "panic"),
        }
    }));
}

/// Test failpoint: panics when `CALLOSUM_TEST_PANIC` names `worker`. Only in
/// debug builds; a release build never reads the variable.
pub fn failpoint(worker: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("CALLOSUM_TEST_PANIC").is_ok_and(|v| v == worker) {
        panic!("test failpoint");
    }
    #[cfg(not(debug_assertions))]
    let _ = worker;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_internal_error_without_its_payload() {
        let mut got = None;
        let secret = String::from("row value 4111");
        supervise(
            "apply worker",
            async {
                if !secret.is_empty() {
                    panic!("{secret}");
                }
            },
            |err| got = Some(err),
        )
        .await;
        let err = got.expect("the panic is reported");
        assert_eq!(err.kind, ErrorKind::Internal);
        let text = err.to_string();
        assert!(
            text.contains("internal error: apply worker panicked"),
            "{text}"
        );
        assert!(!text.contains("4111"), "{text}");
        let mut called = false;
        supervise("capture worker", async {}, |_| called = true).await;
        assert!(!called);
    }
}

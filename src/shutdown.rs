//! The agent-wide stop signal: a `watch` channel that turns `true` once.

use tokio::sync::watch;

/// Resolves when a stop was requested (or the agent that could request it is
/// gone). Holds no borrow of the channel across an await, so futures that
/// wait on it stay `Send`.
pub async fn requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// Whether a stop was requested.
pub fn is_requested(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow()
}

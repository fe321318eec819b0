//! The agent as a systemd service (`Type=notify`, `deploy/systemd/`): it
//! tells the service manager it is ready once every pipeline streams (the
//! same rule as `/readyz`) or, with `[lease]`, once it waits as a standby
//! (it started as it should; `/readyz` stays not ready), keeps a one-line status of its pipelines'
//! states, pings the watchdog while its runtime runs, and says when it
//! stops. Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op.

use sd_notify::NotifyState;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::http::{AgentStatus, LeaseRole, PipelineState, StatusReport};

/// How often readiness and the status line are looked at (and the watchdog
/// pinged, unless its interval asks for more often).
const POLL: Duration = Duration::from_secs(1);

/// Starts the task that notifies the service manager; abort it on the way
/// out (then call [`stopping`]).
pub fn spawn_notifier(status: Arc<AgentStatus>) -> JoinHandle<()> {
    let watchdog = sd_notify::watchdog_enabled();
    // ping at half the watchdog interval, as sd_watchdog_enabled(3) advises
    let every = watchdog.map_or(POLL, |w| (w / 2).min(POLL));
    tokio::spawn(async move {
        let mut ready = false;
        let mut shown = String::new();
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let report = status.snapshot();
            let line = status_line(&report);
            let mut states = Vec::new();
            if !ready && (all_streaming(&report) || is_standby(&report)) {
                ready = true;
                states.push(NotifyState::Ready);
            }
            if line != shown {
                states.push(NotifyState::Status(&line));
            }
            if watchdog.is_some() {
                states.push(NotifyState::Watchdog);
            }
            if !states.is_empty() {
                if let Err(err) = sd_notify::notify(&states) {
                    warn!(error = %err, "cannot notify the service manager");
                }
            }
            shown = line;
        }
    })
}

/// Tells the service manager that the agent is stopping.
pub fn stopping() {
    if let Err(err) = sd_notify::notify(&[NotifyState::Stopping]) {
        warn!(error = %err, "cannot notify the service manager");
    }
}

/// Ready as `/readyz` is: at least one pipeline, and every pipeline
/// streaming with its source connected (which is what `snapshot` shows as
/// streaming). Taken from the same report as the status line, so that
/// READY=1 and the line saying so go together.
fn all_streaming(report: &StatusReport) -> bool {
    !report.pipelines.is_empty()
        && report
            .pipelines
            .values()
            .all(|s| s.state == PipelineState::Streaming)
}

/// A standby (`[lease]`): it waits for the lease, which is what it should
/// do, so the service started; the start must not time out.
fn is_standby(report: &StatusReport) -> bool {
    report
        .lease
        .as_ref()
        .is_some_and(|lease| lease.role == LeaseRole::Standby)
}

/// One line for `systemctl status`: how many pipelines stream, and those
/// that do not with their state. Never an error text (it could be long).
pub fn status_line(report: &StatusReport) -> String {
    if is_standby(report) {
        let active = report
            .lease
            .as_ref()
            .and_then(|lease| lease.active_holder.clone())
            .map_or(String::new(), |holder| format!(" (active agent: {holder})"));
        return format!("standby: waiting for the lease{active}");
    }
    let total = report.pipelines.len();
    let others: Vec<String> = report
        .pipelines
        .iter()
        .filter(|(_, s)| s.state != PipelineState::Streaming)
        .map(|(name, s)| format!("{name} {}", s.state))
        .collect();
    let streaming = total - others.len();
    if others.is_empty() {
        format!("{streaming} of {total} pipelines streaming")
    } else {
        format!(
            "{streaming} of {total} pipelines streaming; {}",
            others.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_names_the_pipelines_that_do_not_stream() {
        let status = AgentStatus::new();
        status.set_state("a", PipelineState::Streaming, None);
        status.set_source_connected("a", true);
        assert_eq!(
            status_line(&status.snapshot()),
            "1 of 1 pipelines streaming"
        );
        assert!(all_streaming(&status.snapshot()));
        status.set_state("b", PipelineState::Halted, Some("duplicate key"));
        status.register("c");
        assert_eq!(
            status_line(&status.snapshot()),
            "1 of 3 pipelines streaming; b halted, c starting"
        );
        assert!(!all_streaming(&status.snapshot()));
        // applying, but its source is not connected: not streaming
        let status = AgentStatus::new();
        status.set_state("a", PipelineState::Streaming, None);
        assert_eq!(
            status_line(&status.snapshot()),
            "0 of 1 pipelines streaming; a starting"
        );
        assert!(!all_streaming(&status.snapshot()));
        assert!(!all_streaming(&AgentStatus::new().snapshot()));
    }

    #[test]
    fn a_standby_is_a_started_service_and_says_whom_it_waits_for() {
        let status = AgentStatus::new();
        status.set_state("a", PipelineState::Standby, None);
        status.set_lease(crate::http::LeaseStatus {
            holder: "host-b".into(),
            epoch: Some(4),
            role: LeaseRole::Standby,
            active_holder: Some("host-a".into()),
        });
        let report = status.snapshot();
        assert!(is_standby(&report));
        assert!(!all_streaming(&report));
        assert!(status.readiness().is_err(), "/readyz: not ready");
        assert_eq!(
            status_line(&report),
            "standby: waiting for the lease (active agent: host-a)"
        );
    }
}

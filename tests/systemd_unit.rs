//! `deploy/systemd/callosum.service`: a unit systemd accepts without a
//! warning, hardened (systemd's own exposure score), and consistent with the
//! agent: `Type=notify` (the agent sends READY=1, see tests/crash.rs), a stop
//! timeout longer than the agent's own, a watchdog the agent pings.
//!
//! Needs `systemd-analyze` (Debian package `systemd`).

use callosum::agent::STOP_TIMEOUT;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn unit_text() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/callosum.service"),
    )
    .unwrap()
}

/// The value of `key=` in the unit (the last one, as systemd reads it).
fn setting(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
}

fn seconds(value: &str) -> Duration {
    let digits = value.trim_end_matches('s');
    Duration::from_secs(
        digits
            .parse()
            .unwrap_or_else(|_| panic!("seconds: {value}")),
    )
}

/// The unit with `ExecStart` pointing at the binary under test, in `dir`.
fn unit_under_test(dir: &Path) -> std::path::PathBuf {
    let text = unit_text().replace("/usr/local/bin/callosum", env!("CARGO_BIN_EXE_callosum"));
    let path = dir.join("callosum.service");
    std::fs::write(&path, text).unwrap();
    path
}

fn systemd_analyze(args: &[&str]) -> (bool, String) {
    let output = Command::new("systemd-analyze")
        .args(args)
        .output()
        .unwrap_or_else(|err| {
            panic!("cannot run systemd-analyze ({err}): install it with `apt-get install systemd`")
        });
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn systemd_accepts_the_unit_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    let (ok, out) = systemd_analyze(&["verify", unit.to_str().unwrap()]);
    assert!(ok, "{out}");
    // verify exits 0 on unknown keys and bad values, and warns
    let warnings: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("callosum.service"))
        .collect();
    assert!(warnings.is_empty(), "{out}");
}

#[test]
fn the_unit_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    let (_, out) = systemd_analyze(&["security", "--offline=true", unit.to_str().unwrap()]);
    let score: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for callosum.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    assert!(score <= 2.0, "exposure {score} (0 best, 10 worst):\n{out}");
}

#[test]
fn the_unit_matches_what_the_agent_does() {
    let unit = unit_text();
    assert_eq!(setting(&unit, "Type").as_deref(), Some("notify"));
    assert_eq!(setting(&unit, "KillSignal").as_deref(), Some("SIGTERM"));
    let stop = seconds(&setting(&unit, "TimeoutStopSec").unwrap());
    assert!(
        stop > STOP_TIMEOUT,
        "systemd must let the agent's own {STOP_TIMEOUT:?} stop timeout run out first"
    );
    let watchdog = seconds(&setting(&unit, "WatchdogSec").unwrap());
    assert!(
        watchdog >= Duration::from_secs(4),
        "the agent pings at most every second"
    );
    assert_eq!(
        setting(&unit, "StateDirectory").as_deref(),
        Some("callosum")
    );
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/callosum.example.toml"),
    )
    .unwrap();
    assert!(
        example.contains("data_dir = \"/var/lib/callosum\""),
        "the example config keeps its log in the unit's state directory"
    );
}

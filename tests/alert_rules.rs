//! The alert rules in `deploy/prometheus/alerts.yml`: valid for Prometheus,
//! behaving as their unit tests say (`promtool test rules`), and querying
//! only metrics that the agent exports and METRICS.md documents.
//!
//! Needs `promtool` (Debian package `prometheus`; `.ci/run` installs it).

use callosum::metrics::Metrics;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(deploy_dir())
        .output()
        .unwrap_or_else(|err| {
            panic!("cannot run promtool ({err}): install it with `apt-get install prometheus`")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn rules_are_valid_prometheus_rules() {
    let out = promtool(&["check", "rules", "alerts.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn rules_fire_and_stay_quiet_as_their_unit_tests_say() {
    let out = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Every `callosum_*` name the rules' expressions query.
fn metric_names_in_rules() -> BTreeSet<String> {
    let rules = std::fs::read_to_string(deploy_dir().join("alerts.yml")).unwrap();
    let mut names = BTreeSet::new();
    for expr in rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("expr:"))
    {
        for (start, _) in expr.match_indices("callosum_") {
            names.insert(
                expr[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    names
}

#[test]
fn rules_query_only_exported_and_documented_metrics() {
    let names = metric_names_in_rules();
    assert!(
        names.contains("callosum_lag_seconds") && names.contains("callosum_pipeline_state"),
        "{names:?}"
    );
    let documented =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("METRICS.md")).unwrap();
    let metrics = Metrics::new();
    metrics.pipeline("crm_to_erp");
    metrics.store("crm");
    metrics.set_pipeline_states([("crm_to_erp", "streaming")], &["streaming", "halted"]);
    // an agent with [lease] exports it from its start
    metrics.lease_active.with_label_values(&["host-a"]).set(1);
    let exported = metrics.encode();
    for name in &names {
        assert!(
            documented.contains(&format!("`{name}`")),
            "{name} is used by an alert rule but not documented in METRICS.md"
        );
        assert!(
            exported.contains(&format!("# TYPE {name} ")),
            "{name} is used by an alert rule but the agent does not export it"
        );
    }
}

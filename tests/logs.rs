//! The agent's log as a log shipper reads it: with `log_format = "json"`
//! one JSON object per line, the lines of a pipeline carrying its name in
//! their spans; never a colour code in a file.

mod common;

use common::agent_process::{self, write_config};
use common::schema::{create_plain_orders, PLAIN_ORDERS as ORDERS};
use common::TestPipeline;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_pipeline_named() {
    let db = common::fresh_databases("json_logs").await;
    create_plain_orders(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "log_format = \"json\"\n{}",
        common::config_toml_with(
            &db,
            &dir.path().join("data"),
            &[TestPipeline {
                name: "crm_to_erp",
                from: "crm",
                to: "erp",
                tables: &["public.orders"],
            }],
            "127.0.0.1:0",
        )
    );
    let config = write_config(dir.path(), &toml);
    let agent_log = dir.path().join("agent.log");
    let mut agent = agent_process::spawn_agent(&config, &agent_log, &[]);
    common::wait_for_slot(&db).await;
    db.pg
        .batch_execute("INSERT INTO orders VALUES (1, 1, 'new', 1.00, 'secret-note')")
        .await
        .unwrap();
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(60)).await;
    agent_process::kill(&mut agent).await;

    let log = std::fs::read_to_string(&agent_log).unwrap();
    assert!(!log.contains('\x1b'), "no colour codes");
    assert!(!log.contains("secret-note"), "no row values");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object ({e}): {l}"))
        })
        .collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        assert!(
            line["timestamp"].is_string() && line["level"].is_string(),
            "{line}"
        );
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
    let of_pipeline = |line: &serde_json::Value| {
        line["spans"].as_array().is_some_and(|spans| {
            spans
                .iter()
                .any(|s| s["pipeline"].as_str() == Some("crm_to_erp"))
        })
    };
    assert!(
        lines
            .iter()
            .any(|l| of_pipeline(l) && l["fields"]["message"] == "applying"),
        "the apply worker's lines name their pipeline: {log}"
    );
}

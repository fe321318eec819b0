//! A real Prometheus server scrapes a running agent on loopback, with the
//! alert rules of `deploy/prometheus/alerts.yml` loaded: its query API
//! returns `callosum_lag_seconds` and `callosum_pipeline_state` for each
//! pipeline, and the rules evaluate without error against the live series.
//! Every query of the Grafana dashboard (`deploy/grafana/callosum.json`) is
//! valid PromQL that Prometheus answers, and every metric it and the rules
//! use is in the agent's `/metrics` and in METRICS.md (the agent runs with a
//! `[lease]`, whose metrics an alert queries).
//!
//! Needs the `prometheus` server binary (Debian package `prometheus`;
//! `.ci/run` installs it).

mod common;

use common::agent_process::{self, write_config};
use common::schema::create_plain_orders;
use common::TestPipeline;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

fn free_listen() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `GET path` on `addr`; the body, empty while nothing answers.
async fn get(addr: SocketAddr, path: String) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
            return String::new();
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let mut text = String::new();
        if stream.write_all(request.as_bytes()).is_ok() {
            let _ = stream.read_to_string(&mut text);
        }
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    })
    .await
    .unwrap()
}

/// `text` percent-encoded for a query string.
fn url_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The reply to an instant query, parsed (`Null` while nothing answers).
async fn query_reply(prometheus: SocketAddr, promql: &str) -> serde_json::Value {
    let path = format!("/api/v1/query?query={}", url_encoded(promql));
    let body = get(prometheus, path).await;
    // chunked transfer encoding: the JSON object lies between the first `{`
    // and the last `}`
    let (Some(start), Some(end)) = (body.find('{'), body.rfind('}')) else {
        return serde_json::Value::Null;
    };
    serde_json::from_str(&body[start..=end]).unwrap_or(serde_json::Value::Null)
}

/// The `result` of an instant query.
async fn query(prometheus: SocketAddr, promql: &str) -> Vec<serde_json::Value> {
    query_reply(prometheus, promql).await["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Every `callosum_*` and `process_*` metric name in `expr`, without the
/// `_bucket`/`_sum`/`_count` suffix of a histogram's series.
fn metric_names(expr: &str, names: &mut BTreeSet<String>) {
    for prefix in ["callosum_", "process_"] {
        for (start, _) in expr.match_indices(prefix) {
            if expr[..start].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = expr[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name)
                .to_owned();
            names.insert(base);
        }
    }
}

/// The queries of the Grafana dashboard, with its variables set to "all".
fn dashboard_queries() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/callosum.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$pipeline", ".*")
                .replace("$store", ".*")
                .replace("$__rate_interval", "1m")
        })
        .collect()
}

/// The expressions of the alert rules.
fn alert_expressions() -> Vec<String> {
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml"),
    )
    .unwrap();
    rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("expr:"))
        .map(|e| e.trim().to_owned())
        .collect()
}

fn pipelines_in(result: &[serde_json::Value]) -> Vec<String> {
    let mut names: Vec<String> = result
        .iter()
        .filter_map(|s| s["metric"]["pipeline"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn prometheus_config(dir: &Path, agent: SocketAddr) -> std::path::PathBuf {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: callosum\n    static_configs:\n      - targets: ['{agent}']\n",
            rules.display()
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_pipelines_lag_and_state() {
    let db = common::fresh_databases("prom_scrape").await;
    create_plain_orders(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let agent_listen = free_listen();
    let toml = common::config_toml_with(
        &db,
        &dir.path().join("data"),
        &[
            TestPipeline {
                name: "crm_to_erp",
                from: "crm",
                to: "erp",
                tables: &["public.orders"],
            },
            TestPipeline {
                name: "erp_to_crm",
                from: "erp",
                to: "crm",
                tables: &["orders"],
            },
        ],
        &agent_listen.to_string(),
    );
    // with a lease, so that the lease metrics (and the alert on them) are live
    let toml = format!("{toml}\n[lease]\nstore = \"erp\"\nduration = \"5s\"\n");
    let config = write_config(dir.path(), &toml);
    let mut agent = agent_process::spawn_agent(&config, &dir.path().join("agent.log"), &[]);

    let prometheus_listen = free_listen();
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            prometheus_config(dir.path(), agent_listen).display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prometheus_listen}"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("prometheus.log")).unwrap(),
        ))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| {
            panic!("cannot start prometheus ({err}): install it with `apt-get install prometheus`")
        });

    let both = vec!["crm_to_erp".to_owned(), "erp_to_crm".to_owned()];
    common::wait_for(
        "prometheus to return the lag of each pipeline",
        Duration::from_secs(60),
        || async { pipelines_in(&query(prometheus_listen, "callosum_lag_seconds").await) == both },
    )
    .await;
    common::wait_for(
        "prometheus to see each pipeline streaming",
        Duration::from_secs(60),
        || async {
            pipelines_in(
                &query(
                    prometheus_listen,
                    "callosum_pipeline_state{state=\"streaming\"} == 1",
                )
                .await,
            ) == both
        },
    )
    .await;
    // the alert rules loaded and evaluate cleanly against the live series
    common::wait_for(
        "the alert rules to be evaluated",
        Duration::from_secs(30),
        || async {
            let rules = get(prometheus_listen, "/api/v1/rules".to_owned()).await;
            rules.contains("CallosumPipelineHalted") && rules.contains("\"health\":\"ok\"")
        },
    )
    .await;
    let rules = get(prometheus_listen, "/api/v1/rules".to_owned()).await;
    assert!(!rules.contains("\"health\":\"err\""), "{rules}");
    let firing = query(prometheus_listen, "ALERTS{alertstate=\"firing\"}").await;
    assert!(
        firing.is_empty(),
        "no alert fires on a healthy agent: {firing:?}"
    );

    // the dashboard: every query answered, every metric exported and documented
    let queries = dashboard_queries();
    assert!(queries.len() >= 12, "{queries:?}");
    for promql in &queries {
        let reply = query_reply(prometheus_listen, promql).await;
        assert_eq!(reply["status"], "success", "{promql}: {reply}");
    }
    let mut names = BTreeSet::new();
    for expr in queries.iter().chain(alert_expressions().iter()) {
        metric_names(expr, &mut names);
    }
    let exported = agent_process::http_get(agent_listen, "/metrics").await;
    let documented =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("METRICS.md")).unwrap();
    for name in &names {
        assert!(
            exported.contains(&format!("# TYPE {name} ")),
            "{name} is queried by the dashboard or an alert, but the agent does not export it"
        );
        assert!(
            documented.contains(&format!("`{name}`")) || name.starts_with("process_"),
            "{name} is queried by the dashboard or an alert, but METRICS.md does not document it"
        );
    }
    for must in [
        "callosum_lag_seconds",
        "callosum_source_lag_bytes",
        "callosum_dead_letter_events",
        "callosum_errors_total",
        "process_resident_memory_bytes",
    ] {
        assert!(
            names.contains(must),
            "the dashboard shows {must}: {names:?}"
        );
    }

    prometheus.start_kill().unwrap();
    let _ = prometheus.wait().await;
    agent_process::kill(&mut agent).await;
}

//! A real Prometheus server scrapes a running agent on loopback, with the
//! alert rules of `deploy/prometheus/alerts.yml` loaded: its query API
//! returns `callosum_lag_seconds` and `callosum_pipeline_state` for each
//! pipeline, and the rules evaluate without error against the live series.
//!
//! Needs the `prometheus` server binary (Debian package `prometheus`;
//! `.ci/run` installs it).

mod common;

use common::agent_process::{self, write_config};
use common::schema::create_plain_orders;
use common::TestPipeline;
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

/// The `result` of an instant query, parsed.
async fn query(prometheus: SocketAddr, promql: &str) -> Vec<serde_json::Value> {
    let body = get(prometheus, format!("/api/v1/query?query={promql}")).await;
    // chunked transfer encoding: the JSON object lies between the first `{`
    // and the last `}`
    let (Some(start), Some(end)) = (body.find('{'), body.rfind('}')) else {
        return Vec::new();
    };
    let Ok(reply) = serde_json::from_str::<serde_json::Value>(&body[start..=end]) else {
        return Vec::new();
    };
    reply["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
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
                    "callosum_pipeline_state%7Bstate%3D%22streaming%22%7D%3D%3D1",
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
    let firing = query(prometheus_listen, "ALERTS%7Balertstate%3D%22firing%22%7D").await;
    assert!(
        firing.is_empty(),
        "no alert fires on a healthy agent: {firing:?}"
    );

    prometheus.start_kill().unwrap();
    let _ = prometheus.wait().await;
    agent_process::kill(&mut agent).await;
}

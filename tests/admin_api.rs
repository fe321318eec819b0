//! The admin routes of a running agent (`/dlq`: customer rows, replay,
//! discard) behind `[http] token_file`: refused without the token, and
//! `callosum dlq` sends it from the same config; the refusal is logged
//! without the token. A listener other hosts can reach needs a token.

mod common;

use common::agent_process::{self, http_get, write_config};
use common::schema::create_plain_orders;
use common::TestPipeline;
use std::time::Duration;

const TOKEN: &str = "k7-admin-token-for-tests";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_needs_the_admin_token_and_the_cli_sends_it() {
    let db = common::fresh_databases("admin_api").await;
    create_plain_orders(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let toml = common::config_toml_with(
        &db,
        &dir.path().join("data"),
        &[TestPipeline {
            name: "crm_to_erp",
            from: "crm",
            to: "erp",
            tables: &["public.orders"],
        }],
        &listen.to_string(),
    )
    .replacen(
        "[http]\n",
        &format!("[http]\ntoken_file = \"{}\"\n", token_file.display()),
        1,
    );
    let config = write_config(dir.path(), &toml);
    let agent_log = dir.path().join("agent.log");
    let mut agent = agent_process::spawn_agent(&config, &agent_log, &[]);
    common::wait_for("the agent to listen", Duration::from_secs(30), || async {
        !http_get(listen, "/healthz").await.is_empty()
    })
    .await;

    // without the token: 401, and the scrapers' routes stay open
    let reply = http_get(listen, "/dlq").await;
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
    assert!(http_get(listen, "/status")
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(http_get(listen, "/metrics")
        .await
        .starts_with("HTTP/1.1 200"));

    // the CLI reads the token from the config
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_callosum"))
        .args(["dlq", "list", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("no dead letters"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    agent_process::kill(&mut agent).await;
    let log = std::fs::read_to_string(&agent_log).unwrap();
    assert!(log.contains("admin request refused"), "{log}");
    assert!(!log.contains(TOKEN), "the token is never logged");
}

#[tokio::test]
async fn a_listener_other_hosts_reach_needs_a_token() {
    let db = common::fresh_databases("admin_open").await;
    let dir = tempfile::tempdir().unwrap();
    let toml = common::config_toml_with(
        &db,
        &dir.path().join("data"),
        &[TestPipeline {
            name: "crm_to_erp",
            from: "crm",
            to: "erp",
            tables: &["public.orders"],
        }],
        "0.0.0.0:0",
    );
    let err = callosum::config::Config::from_toml(&toml).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("http.listen"), "{text}");
    assert!(text.contains("token_file"), "{text}");
}

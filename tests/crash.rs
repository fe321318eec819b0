//! Crash tests: the agent binary is killed with SIGKILL mid-stream and
//! restarted; afterwards the target equals the source and the checkpoint
//! audit proves no source transaction was applied twice.

mod common;

use common::agent_process::{self, write_config, write_pg_to_mysql_config};
use common::schema::{create_plain_orders, PLAIN_ORDERS as ORDERS};
use std::path::Path;
use std::time::Duration;
use tokio::process::Child;

fn spawn_agent(config: &Path, log: &Path) -> Child {
    agent_process::spawn_agent(config, log, &[("CALLOSUM_LOG", "info")])
}

/// Inserts, updates and deletes orders in 10-statement transactions.
async fn write_orders(url: String, transactions: i64) {
    let pg = common::pg_client(&url).await;
    for t in 0..transactions {
        let mut sql = String::from("BEGIN;");
        for i in 0..10 {
            let id = t * 10 + i;
            sql += &format!(
                "INSERT INTO orders VALUES ({id}, {}, 'new', {}.25, 'o{id}');",
                id % 13,
                id % 1000
            );
            if id % 3 == 0 && id >= 10 {
                sql += &format!(
                    "UPDATE orders SET status = 'paid', amount = amount + 1 WHERE id = {};",
                    id - 10
                );
            }
            if id % 7 == 0 && id >= 20 {
                sql += &format!("DELETE FROM orders WHERE id = {};", id - 20);
            }
        }
        sql += "COMMIT;";
        pg.batch_execute(&sql).await.unwrap();
        // paced, so that the kills fall in the middle of the stream
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_neither_loses_nor_repeats_a_transaction() {
    let db = common::fresh_databases("crash").await;
    create_plain_orders(&db).await;
    common::audit::install_mysql(&db.mysql).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_pg_to_mysql_config(&db, dir.path(), &["public.orders"]);
    let agent_log = dir.path().join("agent.log");

    let mut agent = spawn_agent(&config, &agent_log);
    common::wait_for_slot(&db).await;
    let writer = tokio::spawn(write_orders(db.pg_url.clone(), 3_000));

    for kill in 1..=3 {
        // let the agent apply a few batches since its (re)start, then kill it
        let seen = common::audit::mysql_positions(&db.mysql).await.len();
        common::wait_for(
            &format!("the agent to apply batches before kill {kill}"),
            Duration::from_secs(60),
            || async { common::audit::mysql_positions(&db.mysql).await.len() >= seen + 3 },
        )
        .await;
        let status = agent_process::kill(&mut agent).await;
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        agent = spawn_agent(&config, &agent_log);
    }
    assert!(
        !writer.is_finished(),
        "the kills must happen mid-stream; make the workload longer"
    );
    writer.await.unwrap();
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(120)).await;

    let positions = common::audit::mysql_positions(&db.mysql).await;
    assert!(positions.len() > 6);
    common::audit::assert_strictly_increasing(
        &positions,
        &format!("agent log: {}", agent_log.display()),
    );
    agent.start_kill().unwrap();
    let _ = agent.wait().await;
}

/// Messages the agent sends to the service manager's notify socket.
struct NotifySocket {
    path: std::path::PathBuf,
    received: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().extend(text.lines().map(str::to_owned));
            }
        });
        NotifySocket { path, received }
    }

    fn lines(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

/// SIGTERM stops the agent gracefully with exit code 0, and under systemd
/// (`Type=notify`, `deploy/systemd/callosum.service`) the service manager
/// hears READY=1 only once the pipeline streams, a status line, watchdog
/// pings, and STOPPING=1 on the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully_with_exit_zero() {
    let db = common::fresh_databases("sigterm").await;
    create_plain_orders(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_pg_to_mysql_config(&db, dir.path(), &["public.orders"]);
    let agent_log = dir.path().join("agent.log");
    let notify = NotifySocket::bind(dir.path());
    let mut agent = agent_process::spawn_agent(
        &config,
        &agent_log,
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    common::wait_for_slot(&db).await;
    write_orders(db.pg_url.clone(), 50).await;
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(60)).await;
    common::wait_for("READY=1", Duration::from_secs(30), || async {
        notify.lines().iter().any(|l| l == "READY=1")
    })
    .await;
    let lines = notify.lines();
    let ready = lines.iter().position(|l| l == "READY=1").unwrap();
    assert_eq!(
        lines.get(ready + 1).map(String::as_str),
        Some("STATUS=1 of 1 pipelines streaming"),
        "ready only once the pipeline streams: {lines:?}"
    );
    common::wait_for("watchdog pings", Duration::from_secs(10), || async {
        notify.lines().iter().filter(|l| *l == "WATCHDOG=1").count() >= 3
    })
    .await;
    let pid = agent.id().unwrap() as i32;
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(30), agent.wait())
        .await
        .expect("the agent stops within 30 s of SIGTERM")
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "agent log: {}",
        std::fs::read_to_string(&agent_log).unwrap()
    );
    assert!(
        notify.lines().iter().any(|l| l == "STOPPING=1"),
        "{:?}",
        notify.lines()
    );
}

/// A panic in a worker (the failpoint `CALLOSUM_TEST_PANIC`, debug builds
/// only) halts its pipeline visibly: `/status` and `callosum status` say
/// halted with the internal error, `callosum_errors_total{kind="internal"}`
/// counts it; the row values never reach the agent log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_halts_its_pipeline_visibly() {
    for (worker, shown) in [
        ("apply", "internal error: apply worker panicked"),
        ("capture", "internal error: capture worker panicked"),
        (
            "prefetch",
            "internal error: the change log prefetch task panicked",
        ),
    ] {
        // databases of its own: the slot is acknowledged only past what was
        // applied, so the row of a halted run would come again
        let db = common::fresh_databases(&format!("panic_{worker}")).await;
        create_plain_orders(&db).await;
        let pg = common::pg_client(&db.pg_url).await;
        let dir = tempfile::tempdir().unwrap();
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let toml = common::config_toml(
            &db,
            &dir.path().join("data"),
            &["public.orders"],
            &listen.to_string(),
        );
        let config = write_config(dir.path(), &toml);
        let agent_log = dir.path().join("agent.log");
        let mut agent = agent_process::spawn_agent(
            &config,
            &agent_log,
            &[("CALLOSUM_LOG", "info"), ("CALLOSUM_TEST_PANIC", worker)],
        );
        common::wait_for(
            &format!("the agent's http listener ({worker})"),
            Duration::from_secs(60),
            || async {
                agent_process::http_get(listen, "/status")
                    .await
                    .contains("pg_to_mysql")
            },
        )
        .await;
        common::wait_for_slot(&db).await;
        pg.batch_execute(&format!(
            "INSERT INTO orders VALUES ({id}, 1, 'secret-{worker}', 1.25, 'o')",
            id = 1000 + worker.len()
        ))
        .await
        .unwrap();
        common::wait_for(
            &format!("the {worker} panic to halt the pipeline"),
            Duration::from_secs(60),
            || async {
                let status = agent_process::http_get(listen, "/status").await;
                status.contains("halted") && status.contains(shown)
            },
        )
        .await;
        let metrics = agent_process::http_get(listen, "/metrics").await;
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("callosum_errors_total")
                    && l.contains("kind=\"internal\"")
                    && l.ends_with(" 1")),
            "{metrics}"
        );
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_callosum"))
            .args(["status", "--config"])
            .arg(&config)
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(text.contains("halted") && text.contains(shown), "{text}");
        agent_process::kill(&mut agent).await;
        let log = std::fs::read_to_string(&agent_log).unwrap();
        assert!(
            log.contains("worker panicked") || worker == "prefetch",
            "{log}"
        );
        assert!(
            !log.contains("secret-"),
            "row values in the agent log: {log}"
        );
        assert!(
            !log.contains('\x1b'),
            "colour codes in a log written to a file: {log:?}"
        );
    }
}

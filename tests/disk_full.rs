//! The change log's disk fills up: capture stops without acknowledging the
//! source, and after a restart on a healthy disk nothing is lost.
//!
//! Needs root to mount a small tmpfs (CI runs as root); elsewhere the test
//! says so and checks nothing.

mod common;

use callosum::agent::Agent;
use callosum::config::Config;
use callosum::http::PipelineState;
use common::MirroredTable;
use std::process::Command;
use std::time::Duration;

const ORDERS: MirroredTable = MirroredTable {
    name: "orders",
    pg_select: "id::text, note",
    mysql_select: "CAST(id AS CHAR), note",
    compare: &[],
};

/// A tmpfs of `size` mounted for the test's lifetime.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::Builder::new()
            .prefix("callosum-small-disk-")
            .tempdir()
            .ok()?
            .keep();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_disk_stops_capture_without_acknowledging_and_loses_nothing() {
    let Some(disk) = SmallDisk::mount("8m") else {
        eprintln!("cannot mount a tmpfs here (needs root): the disk-full test did not run");
        return;
    };
    let db = common::fresh_databases("disk_full").await;
    db.pg
        .batch_execute("CREATE TABLE orders (id bigint PRIMARY KEY, note text)")
        .await
        .unwrap();
    common::mysql_exec(
        &db.mysql,
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, note LONGTEXT)",
    )
    .await;
    let full_dir = disk.0.join("data");
    // the agent as a process of its own: a failed disk leaves a thread stuck
    // inside sled, which only a kill ends; `callosum status` asks it over HTTP
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let work = tempfile::tempdir().unwrap();
    let config = common::agent_process::write_config(
        work.path(),
        &common::config_toml(&db, &full_dir, &["public.orders"], &listen.to_string()),
    );
    let mut agent =
        common::agent_process::spawn_agent(&config, &work.path().join("agent.log"), &[]);
    common::wait_for_slot(&db).await;
    // ~40 MB of changes into an 8 MB log disk
    for batch in 0..40 {
        db.pg
            .batch_execute(&format!(
                "INSERT INTO orders SELECT g, repeat(md5(g::text), 32) FROM generate_series({}, {}) g",
                batch * 1000 + 1,
                batch * 1000 + 1000
            ))
            .await
            .unwrap();
    }
    common::wait_for(
        "capture to halt on the full disk",
        Duration::from_secs(180),
        || async {
            callosum::http::fetch_status(listen)
                .await
                .is_ok_and(|report| {
                    report
                        .pipelines
                        .get("pg_to_mysql")
                        .is_some_and(|p| p.state == PipelineState::Halted)
                })
        },
    )
    .await;
    let report = callosum::http::fetch_status(listen).await.unwrap();
    let error = report.pipelines["pg_to_mysql"]
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(
        error.contains("change log"),
        "the error names the change log: {error}"
    );
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_callosum"))
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && printed.contains("halted"),
        "`callosum status` shows it:\n{printed}"
    );
    let slot_lsn: i64 = db
        .pg
        .query_one(
            "SELECT (confirmed_flush_lsn - '0/0')::int8 FROM pg_replication_slots WHERE slot_name = $1",
            &[&common::slot_name(&db)],
        )
        .await
        .unwrap()
        .get(0);
    let end_lsn: i64 = db
        .pg
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        slot_lsn < end_lsn,
        "the source was not acknowledged past what the log could hold"
    );
    // SIGTERM cannot finish a flush that never returns: the agent gives up
    // after STOP_TIMEOUT and says why, instead of hanging
    let pid = agent.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exited = tokio::time::timeout(
        callosum::agent::STOP_TIMEOUT + Duration::from_secs(20),
        agent.wait(),
    )
    .await
    .expect("the agent exits after a stop that cannot finish")
    .unwrap();
    assert!(
        !exited.success(),
        "a stop that could not flush is not a success"
    );
    let agent_log = std::fs::read_to_string(work.path().join("agent.log")).unwrap();
    assert!(
        agent_log.contains("did not stop within"),
        "the agent says why it gave up"
    );

    // the operator moves the data_dir to a healthy disk and restarts
    let healthy = tempfile::tempdir().unwrap();
    let healthy_dir = healthy.path().join("data");
    let copied = Command::new("cp")
        .args(["-a"])
        .arg(&full_dir)
        .arg(&healthy_dir)
        .status()
        .unwrap();
    assert!(copied.success());
    drop(disk);
    let toml = common::config_toml(&db, &healthy_dir, &["public.orders"], "127.0.0.1:0");
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(300)).await;
    agent.stop().await;
}

//! The agent binary as a child process: its config file, its log file.

use super::{config_toml, Databases};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::{Child, Command};

/// Writes `toml` to `callosum.toml` in `dir` and returns the file's path.
pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let config = dir.join("callosum.toml");
    std::fs::write(&config, toml).unwrap();
    config
}

/// The config of one PostgreSQL → MariaDB pipeline of `tables` (see
/// [`config_toml`]), data in `dir/data`, written in `dir`.
pub fn write_pg_to_mysql_config(db: &Databases, dir: &Path, tables: &[&str]) -> PathBuf {
    let toml = config_toml(db, &dir.join("data"), tables, "127.0.0.1:0");
    write_config(dir, &toml)
}

/// Spawns `callosum run --config <config>` with the extra environment `env`,
/// its stderr appended to `log` and stdout discarded; killed on drop.
pub fn spawn_agent(config: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_callosum"))
        .args(["run", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Kills the agent with SIGKILL and waits for it to exit.
pub async fn kill(agent: &mut Child) -> std::process::ExitStatus {
    agent.start_kill().unwrap();
    agent.wait().await.unwrap()
}

/// `GET path` of the agent's HTTP listener; empty while it does not answer.
pub async fn http_get(listen: std::net::SocketAddr, path: &'static str) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(listen) else {
            return String::new();
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n");
        let mut text = String::new();
        if stream.write_all(request.as_bytes()).is_ok() {
            let _ = stream.read_to_string(&mut text);
        }
        text
    })
    .await
    .unwrap()
}

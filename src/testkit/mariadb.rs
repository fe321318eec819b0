//! Throwaway MariaDB servers.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use super::{process, TestkitError, READY_TIMEOUT, STOP_TIMEOUT};

const SERVER: &str = "mariadb";

const INSTALL_HINT: &str = "install the mariadb-server package (apt-get install mariadb-server)";

/// Where to look for the server binaries besides `$PATH`.
const SEARCH_DIRS: &[&str] = &[
    "/usr/sbin",
    "/usr/bin",
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/local/mysql/bin",
    "/usr/local/mysql/scripts",
];

/// A throwaway MariaDB server: its own data directory under the system temp
/// dir, its own free port on 127.0.0.1, user `root` with an empty password
/// over TCP, a row-based binlog with full row images and full metadata,
/// utf8mb4 by default.
///
/// The server dies with the process, however the process ends. Servers from
/// [`MariaDbServer::start`] are killed and their directory removed on drop.
pub struct MariaDbServer {
    port: u16,
    server_id: u32,
    base_dir: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    mariadbd: PathBuf,
    args: Vec<OsString>,
    child: Mutex<Option<Child>>,
    shared: bool,
}

impl std::fmt::Debug for MariaDbServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MariaDbServer")
            .field("port", &self.port)
            .field("server_id", &self.server_id)
            .field("data_dir", &self.data_dir)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

static SHARED: OnceLock<Result<MariaDbServer, String>> = OnceLock::new();

impl MariaDbServer {
    /// One server per process (test binary), started on first call. Panics
    /// with a clear message if it cannot start.
    pub fn shared() -> &'static MariaDbServer {
        let server = SHARED.get_or_init(|| {
            process::at_exit(shutdown_shared);
            MariaDbServer::launch(&[], true).map_err(|err| err.to_string())
        });
        match server {
            Ok(server) => server,
            Err(err) => panic!("cannot start the shared test MariaDB server: {err}"),
        }
    }

    /// A new server with extra `mariadbd` arguments, e.g.
    /// `&["--log-bin-compress=ON"]` (they come last, so they override the
    /// kit's own). Killed, and its directory removed, on drop.
    pub fn start(extra_args: &[&str]) -> Result<MariaDbServer, TestkitError> {
        MariaDbServer::launch(extra_args, false)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's `server_id` (unique among the kit's servers).
    pub fn server_id(&self) -> u32 {
        self.server_id
    }

    /// `mysql://root@127.0.0.1:PORT/DATABASE` (root, empty password, over TCP).
    pub fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a new, uniquely named database (its name starts with
    /// `prefix`, sanitised to a lowercase identifier) and returns its url.
    pub async fn fresh_database(&self, prefix: &str) -> Result<String, TestkitError> {
        let name = process::unique_database_name(prefix);
        let context = || format!("creating database {name}");
        let wrap = |error: mysql_async::Error| TestkitError::MariaDb {
            context: context(),
            error,
        };
        let opts = mysql_async::Opts::from_url(&self.root_url())
            .map_err(|err| wrap(mysql_async::Error::Url(err)))?;
        let mut conn = mysql_async::Conn::new(opts).await.map_err(wrap)?;
        conn.query_drop(format!("CREATE DATABASE `{name}`"))
            .await
            .map_err(wrap)?;
        conn.disconnect().await.map_err(wrap)?;
        tracing::debug!(database = %name, port = self.port, "created fresh mariadb database");
        Ok(self.url(&name))
    }

    /// The data directory (holds the binlog `mysql-bin.*` too).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The unix socket of the server.
    pub fn socket_path(&self) -> PathBuf {
        self.base_dir.join("mysqld.sock")
    }

    /// The server's error log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The server's pid, if it is running.
    pub fn pid(&self) -> Option<u32> {
        let mut guard = self.lock_child();
        let child = guard.as_mut()?;
        matches!(child.try_wait(), Ok(None)).then(|| child.id())
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// SIGKILLs the server (a crash). A no-op if it is not running.
    pub fn kill(&self) {
        if let Some(mut child) = self.lock_child().take() {
            tracing::debug!(port = self.port, pid = child.id(), "killing mariadb");
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Clean shutdown: SIGTERM, then waits for the process to exit. A no-op
    /// if it is not running.
    pub fn stop_fast(&self) -> Result<(), TestkitError> {
        let mut guard = self.lock_child();
        if let Some(mut child) = guard.take() {
            tracing::debug!(port = self.port, "stopping mariadb");
            if !process::stop_child(&mut child, libc::SIGTERM, STOP_TIMEOUT) {
                return Err(TestkitError::StopTimeout {
                    server: SERVER,
                    timeout: STOP_TIMEOUT,
                });
            }
        }
        Ok(())
    }

    /// Starts the server again with the same port, data directory and
    /// arguments (after [`kill`](Self::kill) or [`stop_fast`](Self::stop_fast);
    /// a running server is first stopped), and waits until it accepts
    /// connections.
    pub fn restart(&self) -> Result<(), TestkitError> {
        self.stop_fast()?;
        let started = Instant::now();
        loop {
            self.spawn()?;
            match self.wait_ready() {
                Ok(()) => break,
                Err(TestkitError::ServerExited { .. }) if started.elapsed() < READY_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(err) => return Err(err),
            }
        }
        tracing::debug!(
            port = self.port,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "restarted mariadb"
        );
        Ok(())
    }

    fn launch(extra_args: &[&str], shared: bool) -> Result<MariaDbServer, TestkitError> {
        let started = Instant::now();
        let mariadbd = find("mariadbd", &[])?;
        let install_db = find("mariadb-install-db", &["mysql_install_db"])?;
        let as_root = process::running_as_root();

        let base_dir = process::new_scratch_dir("mariadb")?;
        let mut server = MariaDbServer {
            port: 0,
            server_id: unique_server_id(),
            data_dir: base_dir.join("data"),
            log_path: base_dir.join("mariadb.log"),
            base_dir,
            mariadbd,
            args: Vec::new(),
            child: Mutex::new(None),
            shared,
        };
        // From here on, dropping `server` on error removes the directory.
        if std::env::var_os(super::NO_TEMPLATE_ENV).is_some() {
            install_db_into(&install_db, &server.data_dir, as_root)?;
        } else {
            let template = template_data_dir(&server.mariadbd, &install_db, as_root)?;
            process::copy_tree_sparse(&template, &server.data_dir, None, &|_| false)?;
        }
        let initialised = started.elapsed();

        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = process::free_port()?;
            server.args = server.server_args(as_root, extra_args);
            server.spawn()?;
            match server.wait_ready() {
                Ok(()) => break,
                // Another process took the port between our probe and bind.
                Err(TestkitError::ServerExited { ref log_tail, .. })
                    if attempt < 3 && log_tail.contains("already in use") =>
                {
                    tracing::debug!(port = server.port, "mariadb port taken, retrying");
                }
                Err(err) => return Err(err),
            }
        }
        tracing::debug!(
            port = server.port,
            data_dir = %server.data_dir.display(),
            install_db_ms = initialised.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "started mariadb"
        );
        Ok(server)
    }

    fn server_args(&self, as_root: bool, extra_args: &[&str]) -> Vec<OsString> {
        let dir = |name: &str| self.base_dir.join(name).display().to_string();
        let mut args: Vec<String> = vec![
            // --no-defaults must come first.
            "--no-defaults".into(),
            format!("--datadir={}", self.data_dir.display()),
            format!("--port={}", self.port),
            "--bind-address=127.0.0.1".into(),
            format!("--socket={}", dir("mysqld.sock")),
            format!("--pid-file={}", dir("mariadbd.pid")),
            format!("--log-error={}", self.log_path.display()),
            format!("--log-bin={}", self.data_dir.join("mysql-bin").display()),
            "--binlog-format=ROW".into(),
            "--binlog-row-image=FULL".into(),
            "--binlog-row-metadata=FULL".into(),
            format!("--server-id={}", self.server_id),
            "--innodb-flush-log-at-trx-commit=2".into(),
            "--sync-binlog=0".into(),
            "--skip-name-resolve".into(),
            "--innodb-buffer-pool-size=256M".into(),
            "--max-connections=500".into(),
            "--local-infile=1".into(),
            "--character-set-server=utf8mb4".into(),
            "--collation-server=utf8mb4_general_ci".into(),
        ];
        if as_root {
            args.push("--user=root".into());
        }
        args.extend(extra_args.iter().map(|a| a.to_string()));
        args.into_iter().map(OsString::from).collect()
    }

    fn spawn(&self) -> Result<(), TestkitError> {
        // Early failures (bad options) go to stderr before the error log is
        // open: send stdout and stderr to the same file.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|err| TestkitError::io(format!("opening {}", self.log_path.display()), err))?;
        let log_err = log
            .try_clone()
            .map_err(|err| TestkitError::io("duplicating the log file handle", err))?;
        let mut cmd = Command::new(&self.mariadbd);
        cmd.args(&self.args)
            .current_dir(&self.base_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let line = process::describe(&cmd);
        let child =
            process::spawn(cmd).map_err(|err| TestkitError::io(format!("starting {line}"), err))?;
        tracing::debug!(port = self.port, pid = child.id(), "spawned mariadb");
        *self.lock_child() = Some(child);
        Ok(())
    }

    /// `mysql://root@127.0.0.1:PORT` without a database.
    fn root_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// Polls until root can log in over TCP and run a query, the process
    /// exits, or the deadline passes.
    fn wait_ready(&self) -> Result<(), TestkitError> {
        let url = self.root_url();
        let deadline = Instant::now() + READY_TIMEOUT;
        process::block_on(async {
            loop {
                if let Some(status) = self.exit_status() {
                    return Err(TestkitError::ServerExited {
                        server: SERVER,
                        status,
                        log: self.log_path.clone(),
                        log_tail: process::log_tail(&self.log_path, 30),
                    });
                }
                let last_error = match probe(&url).await {
                    Ok(()) => return Ok(()),
                    Err(err) => err,
                };
                if Instant::now() >= deadline {
                    return Err(TestkitError::NotReady {
                        server: SERVER,
                        timeout: READY_TIMEOUT,
                        last_error,
                        log: self.log_path.clone(),
                        log_tail: process::log_tail(&self.log_path, 30),
                    });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })?
    }

    fn exit_status(&self) -> Option<String> {
        let mut guard = self.lock_child();
        match guard.as_mut().map(Child::try_wait) {
            None => Some("not running".into()),
            Some(Ok(None)) => None,
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Err(err)) => Some(err.to_string()),
        }
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.lock_child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        process::remove_dir(&self.base_dir);
    }
}

/// Exit hook: kill the shared server and remove its directory.
fn shutdown_shared() {
    if let Some(Ok(server)) = SHARED.get() {
        if let Ok(mut child) = server.child.try_lock() {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            process::remove_dir(&server.base_dir);
        }
    }
}

/// Logs in as root over TCP only (no switch to the unix socket), so a
/// success proves the url contract.
async fn probe(url: &str) -> Result<(), String> {
    let attempt = async {
        let opts = mysql_async::Opts::from_url(url).map_err(mysql_async::Error::Url)?;
        let opts = mysql_async::OptsBuilder::from_opts(opts).prefer_socket(false);
        let mut conn = mysql_async::Conn::new(opts).await?;
        conn.query_drop("SELECT 1").await?;
        conn.disconnect().await?;
        Ok::<(), mysql_async::Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("connection attempt timed out".into()),
    }
}

/// Runs `mariadb-install-db` into `data_dir` (which must not exist yet).
fn install_db_into(install_db: &Path, data_dir: &Path, as_root: bool) -> Result<(), TestkitError> {
    let mut cmd = Command::new(install_db);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data_dir.display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        .stdin(Stdio::null());
    if let Some(parent) = data_dir.parent() {
        cmd.current_dir(parent);
    }
    if as_root {
        cmd.arg("--user=root");
    }
    process::run_helper(cmd)
}

/// An initialised data directory to copy from, created once per MariaDB
/// version and user under the temp dir:
/// `callosum-testkit-template-mariadb-<version>-uid<euid>/data`.
///
/// `mariadb-install-db` takes most of a server's start time, while a sparse
/// copy of its result takes a few tens of milliseconds. Concurrent processes
/// may race to create the template: each builds its own candidate in a
/// scratch directory and renames it into place; rename is atomic and fails
/// when the target exists, so readers only ever see a complete template.
fn template_data_dir(
    mariadbd: &Path,
    install_db: &Path,
    as_root: bool,
) -> Result<PathBuf, TestkitError> {
    let version = Command::new(mariadbd)
        .arg("--version")
        .output()
        .map_err(|err| {
            TestkitError::io(format!("running {} --version", mariadbd.display()), err)
        })?;
    let version = process::name_fragment(
        String::from_utf8_lossy(&version.stdout)
            .split_whitespace()
            .nth(2)
            .unwrap_or("unknown"),
    );
    let uid = process::effective_uid();
    let template = std::env::temp_dir().join(format!(
        "{}template-mariadb-{version}-uid{uid}",
        process::DIR_PREFIX
    ));
    let data = template.join("data");
    if data.join("mysql").is_dir() {
        return Ok(data);
    }
    let candidate = process::new_scratch_dir("mariadb-template")?;
    let result = install_db_into(install_db, &candidate.join("data"), as_root);
    if let Err(err) = result {
        process::remove_dir(&candidate);
        return Err(err);
    }
    process::publish_template(&candidate, &template, &data.join("mysql"))?;
    Ok(data)
}

/// Finds a MariaDB program (or one of its older names), or says what to install.
fn find(name: &str, alternatives: &[&str]) -> Result<PathBuf, TestkitError> {
    std::iter::once(&name)
        .chain(alternatives)
        .find_map(|n| process::find_program(n, SEARCH_DIRS))
        .ok_or_else(|| TestkitError::BinaryNotFound {
            binary: name.into(),
            hint: INSTALL_HINT.into(),
        })
}

/// A server id unlikely to collide with other servers of this or another
/// test process (nor with small ids a test might pick for a replica).
fn unique_server_id() -> u32 {
    let pid = std::process::id() % 100_000;
    let n = (process::next_counter() % 100) as u32;
    1_000_000 + pid * 100 + n
}

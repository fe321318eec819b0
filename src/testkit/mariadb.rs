//! Throwaway MariaDB servers.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use mysql_async::prelude::Queryable;

use super::process::{self, ServerProcess};
use super::TestkitError;

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
    process: ServerProcess,
    server_id: u32,
    mariadbd: PathBuf,
    args: Vec<OsString>,
    shared: bool,
}

impl std::fmt::Debug for MariaDbServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MariaDbServer")
            .field("port", &self.port())
            .field("server_id", &self.server_id)
            .field("data_dir", &self.data_dir())
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
        self.process.port
    }

    /// The server's `server_id` (unique among the kit's servers).
    pub fn server_id(&self) -> u32 {
        self.server_id
    }

    /// `mysql://root@127.0.0.1:PORT/DATABASE` (root, empty password, over TCP).
    pub fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port())
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
        tracing::debug!(database = %name, port = self.port(), "created fresh mariadb database");
        Ok(self.url(&name))
    }

    /// The data directory (holds the binlog `mysql-bin.*` too).
    pub fn data_dir(&self) -> &Path {
        &self.process.data_dir
    }

    /// The unix socket of the server.
    pub fn socket_path(&self) -> PathBuf {
        self.process.base_dir.join("mysqld.sock")
    }

    /// The server's error log.
    pub fn log_path(&self) -> &Path {
        &self.process.log_path
    }

    /// The server's pid, if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// SIGKILLs the server (a crash). A no-op if it is not running.
    pub fn kill(&self) {
        self.process.kill();
    }

    /// Clean shutdown: SIGTERM, then waits for the process to exit. A no-op
    /// if it is not running.
    pub fn stop_fast(&self) -> Result<(), TestkitError> {
        self.process.stop()
    }

    /// Starts the server again with the same port, data directory and
    /// arguments (after [`kill`](Self::kill) or [`stop_fast`](Self::stop_fast);
    /// a running server is first stopped), and waits until it accepts
    /// connections.
    pub fn restart(&self) -> Result<(), TestkitError> {
        self.process.restart(|| self.boot())
    }

    fn launch(extra_args: &[&str], shared: bool) -> Result<MariaDbServer, TestkitError> {
        let started = Instant::now();
        let mariadbd = find("mariadbd", &[])?;
        let install_db = find("mariadb-install-db", &["mysql_install_db"])?;
        let as_root = process::running_as_root();

        let process = ServerProcess::new(
            SERVER,
            "mariadb",
            "mariadb.log",
            libc::SIGTERM,
            libc::SIGKILL,
        )?;
        let mut server = MariaDbServer {
            process,
            server_id: unique_server_id(),
            mariadbd,
            args: Vec::new(),
            shared,
        };
        // From here on, dropping `server` on error removes the directory.
        let data_dir = server.data_dir();
        if std::env::var_os(super::NO_TEMPLATE_ENV).is_some() {
            install_db_into(&install_db, data_dir, as_root)?;
        } else {
            let uid = process::effective_uid();
            let template =
                process::template_data_dir("mariadb", &server.mariadbd, uid, "mysql", |dir| {
                    install_db_into(&install_db, &dir.join("data"), as_root)
                })?;
            process::copy_tree_sparse(&template, data_dir, None, &|_| false)?;
        }
        let initialised = started.elapsed();
        process::start_on_free_port(SERVER, |port| {
            server.process.port = port;
            server.args = server.server_args(as_root, extra_args);
            server.boot()
        })?;
        tracing::debug!(
            port = server.port(),
            data_dir = %server.data_dir().display(),
            install_db_ms = initialised.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "started mariadb"
        );
        Ok(server)
    }

    fn server_args(&self, as_root: bool, extra_args: &[&str]) -> Vec<OsString> {
        let dir = |name: &str| self.process.base_dir.join(name).display().to_string();
        let mut args: Vec<String> = vec![
            // --no-defaults must come first.
            "--no-defaults".into(),
            format!("--datadir={}", self.process.data_dir.display()),
            format!("--port={}", self.port()),
            "--bind-address=127.0.0.1".into(),
            format!("--socket={}", dir("mysqld.sock")),
            format!("--pid-file={}", dir("mariadbd.pid")),
            format!("--log-error={}", self.process.log_path.display()),
            format!(
                "--log-bin={}",
                self.process.data_dir.join("mysql-bin").display()
            ),
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

    /// Spawns `mariadbd` and waits until root can log in over TCP and run a
    /// query. Early failures (bad options) go to stderr before the error log
    /// is open; stderr goes to the same file.
    fn boot(&self) -> Result<(), TestkitError> {
        let mut cmd = Command::new(&self.mariadbd);
        cmd.args(&self.args);
        let url = self.root_url();
        self.process.start(cmd, || probe(&url))
    }

    /// `mysql://root@127.0.0.1:PORT` without a database.
    fn root_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port())
    }
}

/// Exit hook: kill the shared server and remove its directory.
fn shutdown_shared() {
    if let Some(Ok(server)) = SHARED.get() {
        server.process.dispose();
    }
}

/// Logs in as root over TCP only (no switch to the unix socket), so a
/// success proves the url contract.
async fn probe(url: &str) -> Result<(), mysql_async::Error> {
    let opts = mysql_async::Opts::from_url(url).map_err(mysql_async::Error::Url)?;
    let opts = mysql_async::OptsBuilder::from_opts(opts).prefer_socket(false);
    let mut conn = mysql_async::Conn::new(opts).await?;
    conn.query_drop("SELECT 1").await?;
    conn.disconnect().await
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

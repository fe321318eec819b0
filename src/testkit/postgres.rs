//! Throwaway PostgreSQL servers.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use tokio_postgres::NoTls;

use super::process::{self, ServerProcess};
use super::TestkitError;

const SERVER: &str = "postgresql";

/// Settings written to every server's postgresql.conf, before the caller's.
const BASE_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "127.0.0.1"),
    ("wal_level", "logical"),
    ("max_replication_slots", "20"),
    ("max_wal_senders", "20"),
    ("fsync", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "128MB"),
];

const PG_HBA: &str = "\
# written by the callosum test kit: trust everything local
local all         all                 trust
local replication all                 trust
host  all         all   127.0.0.1/32  trust
host  replication all   127.0.0.1/32  trust
";

const INSTALL_HINT: &str = "install a PostgreSQL server package, e.g. postgresql-15 \
     (apt-get install postgresql-15), or set CALLOSUM_PG_BINDIR to the directory \
     holding initdb and postgres";

/// A throwaway PostgreSQL server: its own data directory under the system
/// temp dir, its own free port on 127.0.0.1, trust authentication for user
/// `postgres`, `wal_level = logical`.
///
/// When the process runs as root, the server runs as the `postgres` system
/// user (PostgreSQL refuses to run as root). The server dies with the
/// process, however the process ends. Servers from [`PgServer::start`] are
/// stopped and their directory removed on drop.
pub struct PgServer {
    process: ServerProcess,
    postgres_bin: PathBuf,
    run_as: Option<(u32, u32)>,
    shared: bool,
}

impl std::fmt::Debug for PgServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgServer")
            .field("port", &self.port())
            .field("data_dir", &self.data_dir())
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();

impl PgServer {
    /// One server per process (test binary), `wal_level = logical`, started
    /// on first call. Panics with a clear message if it cannot start.
    pub fn shared() -> &'static PgServer {
        let server = SHARED.get_or_init(|| {
            process::at_exit(shutdown_shared);
            PgServer::launch(&[], &[], true).map_err(|err| err.to_string())
        });
        match server {
            Ok(server) => server,
            Err(err) => panic!("cannot start the shared test PostgreSQL server: {err}"),
        }
    }

    /// A new server with extra postgresql.conf settings, e.g.
    /// `&[("wal_level", "replica")]`. Stopped, and its directory removed, on drop.
    pub fn start(settings: &[(&str, &str)]) -> Result<PgServer, TestkitError> {
        PgServer::launch(settings, &[], false)
    }

    /// A new server with extra settings and `files` (name, contents) written
    /// into its data directory before it starts, readable only by the
    /// server's user, e.g. a TLS certificate and key with
    /// `ssl_cert_file`/`ssl_key_file` naming them.
    pub fn start_with_files(
        settings: &[(&str, &str)],
        files: &[(&str, &[u8])],
    ) -> Result<PgServer, TestkitError> {
        PgServer::launch(settings, files, false)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE` (trust auth, no password).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port())
    }

    /// Creates a new, uniquely named database (its name starts with
    /// `prefix`, sanitised to a lowercase identifier) and returns its url.
    pub async fn fresh_database(&self, prefix: &str) -> Result<String, TestkitError> {
        let name = process::unique_database_name(prefix);
        let context = || format!("creating database {name}");
        let (client, connection) = tokio_postgres::connect(&self.url("postgres"), NoTls)
            .await
            .map_err(|error| TestkitError::Postgres {
                context: context(),
                error,
            })?;
        let task = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .map_err(|error| TestkitError::Postgres {
                context: context(),
                error,
            })?;
        drop(client);
        let _ = task.await;
        tracing::debug!(database = %name, port = self.port(), "created fresh postgresql database");
        Ok(self.url(&name))
    }

    /// The data directory (`PGDATA`); also the unix socket directory.
    pub fn data_dir(&self) -> &Path {
        &self.process.data_dir
    }

    /// The server's log file (stdout and stderr of `postgres`).
    pub fn log_path(&self) -> &Path {
        &self.process.log_path
    }

    /// The postmaster's pid, if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// SIGKILLs the postmaster (a crash); its backends exit on their own as
    /// they notice. A no-op if the server is not running.
    pub fn kill(&self) {
        self.process.kill();
    }

    /// Fast shutdown (what `pg_ctl stop -m fast` does: SIGINT, wait): clients
    /// are disconnected, a checkpoint is written. A no-op if not running.
    pub fn stop_fast(&self) -> Result<(), TestkitError> {
        self.process.stop()
    }

    /// Starts the server again on the same port and data directory (after
    /// [`kill`](Self::kill) or [`stop_fast`](Self::stop_fast); a running
    /// server is first stopped fast), and waits until it accepts connections.
    pub fn restart(&self) -> Result<(), TestkitError> {
        self.process.restart(|| self.boot())
    }

    fn launch(
        settings: &[(&str, &str)],
        files: &[(&str, &[u8])],
        shared: bool,
    ) -> Result<PgServer, TestkitError> {
        let started = Instant::now();
        let bindir = find_bindir()?;
        let postgres_bin = bindir.join("postgres");
        if !process::is_executable(&postgres_bin) {
            return Err(TestkitError::BinaryNotFound {
                binary: postgres_bin.display().to_string(),
                hint: INSTALL_HINT.into(),
            });
        }
        let run_as = if process::running_as_root() {
            Some(process::lookup_user("postgres").ok_or_else(|| {
                TestkitError::UserNotFound {
                    user: "postgres".into(),
                    hint: "PostgreSQL refuses to run as root, so the test kit runs it as the \
                       postgres system user; install the postgresql-15 package (it creates \
                       that user) or run the tests as an unprivileged user"
                        .into(),
                }
            })?)
        } else {
            None
        };

        // SIGINT: fast shutdown; SIGQUIT (on drop): immediate shutdown, the
        // postmaster stops its backends and waits for them.
        let process =
            ServerProcess::new(SERVER, "pg", "postgres.log", libc::SIGINT, libc::SIGQUIT)?;
        let mut server = PgServer {
            process,
            postgres_bin,
            run_as,
            shared,
        };
        // From here on, dropping `server` on error removes the directory.
        server.init(&bindir, settings)?;
        server.write_files(files)?;
        let initialised = started.elapsed();
        process::start_on_free_port(SERVER, |port| {
            server.process.port = port;
            server.append_conf(&[("port", &port.to_string())])?;
            server.boot()
        })?;
        tracing::debug!(
            port = server.port(),
            data_dir = %server.data_dir().display(),
            initdb_ms = initialised.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "started postgresql"
        );
        Ok(server)
    }

    /// Creates the data directory (a copy of the cached template, or initdb),
    /// then writes our postgresql.conf settings and pg_hba.conf.
    fn init(&self, bindir: &Path, settings: &[(&str, &str)]) -> Result<(), TestkitError> {
        if let Some((uid, gid)) = self.run_as {
            chown(&self.process.base_dir, uid, gid)?;
        }
        if std::env::var_os(super::NO_TEMPLATE_ENV).is_some() {
            initdb(bindir, &self.process.data_dir, self.run_as)?;
        } else {
            let template = template_data_dir(bindir, self.run_as)?;
            // WAL segments are not copied: pg_resetwal writes a fresh one.
            let is_wal_segment = |file: &Path| file.parent().is_some_and(|d| d.ends_with("pg_wal"));
            process::copy_tree_sparse(
                &template,
                &self.process.data_dir,
                self.run_as,
                &is_wal_segment,
            )?;
            self.new_system_identifier(bindir)?;
        }

        let socket_dir = self.process.data_dir.display().to_string();
        let mut all: Vec<(&str, &str)> = BASE_SETTINGS.to_vec();
        all.push(("unix_socket_directories", &socket_dir));
        all.extend_from_slice(settings);
        self.append_conf(&all)?;
        let hba = self.process.data_dir.join("pg_hba.conf");
        // Truncating keeps the file's owner (the postgres user when root).
        let mut file = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&hba)
            .map_err(|err| TestkitError::io(format!("opening {}", hba.display()), err))?;
        file.write_all(PG_HBA.as_bytes())
            .map_err(|err| TestkitError::io(format!("writing {}", hba.display()), err))
    }

    /// Writes `files` into the data directory, mode 0600, owned by the
    /// server's user.
    fn write_files(&self, files: &[(&str, &[u8])]) -> Result<(), TestkitError> {
        use std::os::unix::fs::OpenOptionsExt;
        for (name, contents) in files {
            let path = self.process.data_dir.join(name);
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .map_err(|err| TestkitError::io(format!("creating {}", path.display()), err))?;
            file.write_all(contents)
                .map_err(|err| TestkitError::io(format!("writing {}", path.display()), err))?;
            if let Some((uid, gid)) = self.run_as {
                chown(&path, uid, gid)?;
            }
        }
        Ok(())
    }

    /// Appends settings to postgresql.conf (later lines win).
    fn append_conf(&self, settings: &[(&str, &str)]) -> Result<(), TestkitError> {
        let conf = self.process.data_dir.join("postgresql.conf");
        let mut text = String::from("\n# callosum test kit\n");
        for (key, value) in settings {
            text.push_str(&format!("{key} = '{}'\n", value.replace('\'', "''")));
        }
        let mut file = OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(|err| TestkitError::io(format!("opening {}", conf.display()), err))?;
        file.write_all(text.as_bytes())
            .map_err(|err| TestkitError::io(format!("writing {}", conf.display()), err))
    }

    /// Gives a copied data directory its own system identifier, as initdb
    /// would have: patch `pg_control` (and its CRC), then `pg_resetwal -f`
    /// rewrites the WAL, whose page headers carry the identifier too. This
    /// is what pg_upgrade does to fresh clusters; the template was shut down
    /// cleanly by initdb.
    fn new_system_identifier(&self, bindir: &Path) -> Result<(), TestkitError> {
        let control = self.process.data_dir.join("global").join("pg_control");
        let mut bytes = std::fs::read(&control)
            .map_err(|err| TestkitError::io(format!("reading {}", control.display()), err))?;
        let identifier = new_identifier();
        set_system_identifier(&mut bytes, identifier).ok_or_else(|| {
            TestkitError::io(
                format!("patching {}", control.display()),
                std::io::Error::other("cannot locate the pg_control checksum"),
            )
        })?;
        // Overwrite in place: keeps the file's owner.
        let mut file = OpenOptions::new()
            .write(true)
            .open(&control)
            .map_err(|err| TestkitError::io(format!("opening {}", control.display()), err))?;
        file.write_all(&bytes)
            .map_err(|err| TestkitError::io(format!("writing {}", control.display()), err))?;
        drop(file);

        let mut cmd = Command::new(bindir.join("pg_resetwal"));
        cmd.arg("-f")
            .arg("-D")
            .arg(&self.process.data_dir)
            .current_dir(&self.process.base_dir)
            .stdin(Stdio::null());
        apply_user(&mut cmd, self.run_as);
        process::run_helper(cmd)?;
        tracing::debug!(
            system_identifier = identifier,
            "gave postgresql copy its own system identifier"
        );
        Ok(())
    }

    /// Spawns `postgres` and waits until a client can connect and run a query.
    fn boot(&self) -> Result<(), TestkitError> {
        let mut cmd = Command::new(&self.postgres_bin);
        cmd.arg("-D").arg(self.data_dir());
        apply_user(&mut cmd, self.run_as);
        let url = self.url("postgres");
        self.process.start(cmd, || probe(&url))
    }
}

/// Exit hook: stop the shared server and remove its directory.
fn shutdown_shared() {
    if let Some(Ok(server)) = SHARED.get() {
        server.process.dispose();
    }
}

async fn probe(url: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    let task = tokio::spawn(connection);
    client.simple_query("SELECT 1").await?;
    drop(client);
    let _ = task.await;
    Ok(())
}

fn apply_user(cmd: &mut Command, run_as: Option<(u32, u32)>) {
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), TestkitError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|err| TestkitError::io(format!("chown {} to postgres", path.display()), err))
}

/// Runs initdb into `data_dir` (which must not exist yet; its parent must be
/// writable by `run_as`).
fn initdb(bindir: &Path, data_dir: &Path, run_as: Option<(u32, u32)>) -> Result<(), TestkitError> {
    let mut cmd = Command::new(bindir.join("initdb"));
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        .arg("--locale=C")
        .stdin(Stdio::null());
    if let Some(parent) = data_dir.parent() {
        cmd.current_dir(parent);
    }
    apply_user(&mut cmd, run_as);
    process::run_helper(cmd)
}

/// An initdb'd data directory to copy from, created once per PostgreSQL
/// version and user (see [`process::template_data_dir`]).
fn template_data_dir(bindir: &Path, run_as: Option<(u32, u32)>) -> Result<PathBuf, TestkitError> {
    let uid = run_as.map_or_else(process::effective_uid, |(uid, _)| uid);
    let postgres = bindir.join("postgres");
    process::template_data_dir("pg", &postgres, uid, "PG_VERSION", |candidate| {
        if let Some((uid, gid)) = run_as {
            chown(candidate, uid, gid)?;
        }
        initdb(bindir, &candidate.join("data"), run_as)
    })
}

/// A fresh system identifier built like initdb's: seconds, microseconds and
/// pid bits, plus a counter so two copies made in the same microsecond differ.
fn new_identifier() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_secs() << 32)
        | (u64::from(now.subsec_micros()) << 12)
        | ((u64::from(std::process::id()) ^ process::next_counter()) & 0xFFF)
}

/// Sets `system_identifier` (the first 8 bytes of `pg_control`) and fixes
/// the CRC-32C that follows the control data. The CRC's offset depends on
/// the version; it is found as the offset where the stored CRC matches the
/// bytes before it. Returns `None` if no offset matches.
fn set_system_identifier(control: &mut [u8], identifier: u64) -> Option<()> {
    let limit = control.len().min(2048).saturating_sub(4);
    let offset = (8..=limit).step_by(4).find(|&off| {
        let stored = u32::from_le_bytes(control[off..off + 4].try_into().unwrap_or_default());
        crc32c(&control[..off]) == stored
    })?;
    control[..8].copy_from_slice(&identifier.to_le_bytes());
    let crc = crc32c(&control[..offset]);
    control[offset..offset + 4].copy_from_slice(&crc.to_le_bytes());
    Some(())
}

/// CRC-32C (Castagnoli), as PostgreSQL computes it.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The PostgreSQL binary directory: `$CALLOSUM_PG_BINDIR`, `pg_config
/// --bindir` (if it holds initdb), else the newest `/usr/lib/postgresql/*/bin`.
fn find_bindir() -> Result<PathBuf, TestkitError> {
    let has_initdb = |dir: &Path| process::is_executable(&dir.join("initdb"));
    if let Some(dir) = std::env::var_os("CALLOSUM_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if has_initdb(&dir) {
            return Ok(dir);
        }
        return Err(TestkitError::BinaryNotFound {
            binary: format!("initdb (in CALLOSUM_PG_BINDIR={})", dir.display()),
            hint: INSTALL_HINT.into(),
        });
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_initdb(&dir) {
                return Ok(dir);
            }
        }
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            has_initdb(&bin).then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    match newest {
        Some((_, bin)) => Ok(bin),
        None => Err(TestkitError::BinaryNotFound {
            binary: "initdb".into(),
            hint: INSTALL_HINT.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn system_identifier_patch_keeps_the_checksum_valid() {
        let mut control = vec![0u8; 8192];
        control[..8].copy_from_slice(&42u64.to_le_bytes());
        control[100..108].copy_from_slice(b"whatever");
        let crc = crc32c(&control[..296]);
        control[296..300].copy_from_slice(&crc.to_le_bytes());
        set_system_identifier(&mut control, 7).unwrap();
        assert_eq!(u64::from_le_bytes(control[..8].try_into().unwrap()), 7);
        let crc = u32::from_le_bytes(control[296..300].try_into().unwrap());
        assert_eq!(crc, crc32c(&control[..296]));
    }
}

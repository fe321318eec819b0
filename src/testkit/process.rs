//! Process plumbing shared by both servers: a spawner thread whose children
//! die with the process, signals, exit hooks, scratch directories, free ports,
//! binary lookup and a few small helpers.
//!
//! Lifetime rules:
//! - every server is spawned from one dedicated thread that never exits, with
//!   `PR_SET_PDEATHSIG = SIGKILL` set in the child after its credential change
//!   (the kernel clears it on setuid, and fires it when the spawning *thread*
//!   exits); so a server dies with the test process even on SIGKILL or abort;
//! - on a normal exit an `atexit` hook stops the shared servers and removes
//!   their directories;
//! - directories left behind by processes that died anyway are swept at the
//!   next start: each is named `callosum-testkit-<pid>-...` after its owner.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::future::Future;
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard, Once, OnceLock, PoisonError, TryLockError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{TestkitError, READY_TIMEOUT, STOP_TIMEOUT};

/// Prefix of every scratch directory the kit creates under the temp dir.
const DIR_PREFIX: &str = "callosum-testkit-";

type Job = Box<dyn FnOnce() + Send>;

/// The spawner thread's queue. The sender lives in a static, so the thread
/// never sees the channel close and never exits.
fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("callosum-testkit-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
                // Unreachable in practice; if the queue ever closes, keep the
                // thread alive so the children's parent-death signal stays armed.
                loop {
                    std::thread::park();
                }
            })
            .expect("cannot start the callosum testkit spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` from the spawner thread, with a parent-death signal, so the
/// child lives exactly as long as this process, whichever thread asked.
fn spawn(mut cmd: Command) -> io::Result<Child> {
    arm_parent_death_signal(&mut cmd);
    let (tx, rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = tx.send(cmd.spawn());
    });
    spawner()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send(job)
        .map_err(|_| io::Error::other("the testkit spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the testkit spawner thread is gone"))?
}

/// Makes the child receive SIGKILL when its parent thread (the spawner, which
/// lives as long as the process) goes away.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn arm_parent_death_signal(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child between fork and exec,
    // after std has applied uid/gid (so the setting survives the credential
    // change). It only calls async-signal-safe functions (prctl, getppid,
    // _exit), allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn arm_parent_death_signal(_cmd: &mut Command) {}

/// Sends `signal` to process `pid`.
#[allow(unsafe_code)]
fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is the id of
    // a child this process has not yet reaped, so it cannot have been reused.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits for `child` to exit, up to `timeout`; returns `None` on timeout.
fn wait_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `signal`, waits up to `timeout`, then SIGKILLs and reaps. Returns
/// whether the process exited within the timeout.
fn stop_child(child: &mut Child, signal: libc::c_int, timeout: Duration) -> bool {
    if let Ok(Some(_)) = child.try_wait() {
        return true;
    }
    if let Err(err) = send_signal(child.id(), signal) {
        tracing::debug!(pid = child.id(), error = %err, "cannot signal server");
    }
    match wait_timeout(child, timeout) {
        Ok(Some(_)) => true,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            false
        }
    }
}

/// A server process and its scratch directory: the lifecycle both servers
/// share. The directory is `base_dir`, the data directory `base_dir/data`;
/// stdout and stderr go to `log_path`. On drop the server is stopped (its
/// `quit_signal`, SIGKILL after 5 s) and the directory removed.
pub(crate) struct ServerProcess {
    /// `postgresql` or `mariadb`, for messages.
    pub(crate) name: &'static str,
    pub(crate) port: u16,
    pub(crate) base_dir: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) log_path: PathBuf,
    /// Clean shutdown, used by [`stop`](Self::stop).
    stop_signal: libc::c_int,
    /// Quick shutdown, used on drop and at exit.
    quit_signal: libc::c_int,
    child: Mutex<Option<Child>>,
}

impl ServerProcess {
    /// Creates a scratch directory `callosum-testkit-<pid>-<kind>-...` for a
    /// server that logs to `log_file` in it. The port is set later.
    pub(crate) fn new(
        name: &'static str,
        kind: &str,
        log_file: &str,
        stop_signal: libc::c_int,
        quit_signal: libc::c_int,
    ) -> Result<ServerProcess, TestkitError> {
        let base_dir = new_scratch_dir(kind)?;
        Ok(ServerProcess {
            name,
            port: 0,
            data_dir: base_dir.join("data"),
            log_path: base_dir.join(log_file),
            base_dir,
            stop_signal,
            quit_signal,
            child: Mutex::new(None),
        })
    }

    /// The server's pid, if it is running.
    pub(crate) fn pid(&self) -> Option<u32> {
        let mut guard = self.lock_child();
        let child = guard.as_mut()?;
        matches!(child.try_wait(), Ok(None)).then(|| child.id())
    }

    /// SIGKILLs the server (a crash). A no-op if it is not running.
    pub(crate) fn kill(&self) {
        if let Some(mut child) = self.lock_child().take() {
            tracing::debug!(port = self.port, pid = child.id(), "killing {}", self.name);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends the stop signal and waits for the process to exit (SIGKILL
    /// after [`STOP_TIMEOUT`]). A no-op if it is not running.
    pub(crate) fn stop(&self) -> Result<(), TestkitError> {
        if let Some(mut child) = self.lock_child().take() {
            tracing::debug!(port = self.port, "stopping {}", self.name);
            if !stop_child(&mut child, self.stop_signal, STOP_TIMEOUT) {
                return Err(TestkitError::StopTimeout {
                    server: self.name,
                    timeout: STOP_TIMEOUT,
                });
            }
        }
        Ok(())
    }

    /// Stops the server if it runs, then starts it again with `start` (see
    /// [`start`](Self::start)); retries while it exits during startup (after
    /// a kill, old PostgreSQL backends may hold the shared memory a moment).
    pub(crate) fn restart(
        &self,
        start: impl Fn() -> Result<(), TestkitError>,
    ) -> Result<(), TestkitError> {
        self.stop()?;
        let started = Instant::now();
        loop {
            match start() {
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
            "restarted {}",
            self.name
        );
        Ok(())
    }

    /// Spawns `cmd` in `base_dir` with its output appended to the log, then
    /// polls `probe` (a connection attempt, 5 s at most) until it succeeds,
    /// the process exits, or [`READY_TIMEOUT`] passes.
    pub(crate) fn start<F, Fut, E>(&self, mut cmd: Command, probe: F) -> Result<(), TestkitError>
    where
        F: Fn() -> Fut + Send,
        Fut: Future<Output = Result<(), E>> + Send,
        E: std::fmt::Display,
    {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|err| TestkitError::io(format!("opening {}", self.log_path.display()), err))?;
        let log_err = log
            .try_clone()
            .map_err(|err| TestkitError::io("duplicating the log file handle", err))?;
        cmd.current_dir(&self.base_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let line = describe(&cmd);
        let child = spawn(cmd).map_err(|err| TestkitError::io(format!("starting {line}"), err))?;
        tracing::debug!(port = self.port, pid = child.id(), "spawned {}", self.name);
        *self.lock_child() = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        block_on(async move {
            loop {
                if let Some(status) = self.exit_status() {
                    return Err(TestkitError::ServerExited {
                        server: self.name,
                        status,
                        log: self.log_path.clone(),
                        log_tail: log_tail(&self.log_path, 30),
                    });
                }
                let last_error = match tokio::time::timeout(Duration::from_secs(5), probe()).await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(err)) => err.to_string(),
                    Err(_) => "connection attempt timed out".to_string(),
                };
                if Instant::now() >= deadline {
                    return Err(TestkitError::NotReady {
                        server: self.name,
                        timeout: READY_TIMEOUT,
                        last_error,
                        log: self.log_path.clone(),
                        log_tail: log_tail(&self.log_path, 30),
                    });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })?
    }

    fn exit_status(&self) -> Option<String> {
        match self.lock_child().as_mut().map(Child::try_wait) {
            None => Some("not running".into()),
            Some(Ok(None)) => None,
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Err(err)) => Some(err.to_string()),
        }
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops the server quickly and removes its directory. Never waits for
    /// the child lock (an exit hook must not block): if another thread holds
    /// it, does nothing.
    pub(crate) fn dispose(&self) {
        let mut guard = match self.child.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if let Some(mut child) = guard.take() {
            stop_child(&mut child, self.quit_signal, Duration::from_secs(5));
        }
        remove_dir(&self.base_dir);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.dispose();
    }
}

/// Runs `start` (given a port that was just free) until it succeeds; retries
/// twice when the server exits because another process took the port between
/// the probe and the server's bind.
pub(crate) fn start_on_free_port(
    name: &str,
    mut start: impl FnMut(u16) -> Result<(), TestkitError>,
) -> Result<(), TestkitError> {
    let mut attempt = 1;
    loop {
        let port = free_port()?;
        match start(port) {
            Err(TestkitError::ServerExited { ref log_tail, .. })
                if attempt < 3 && log_tail.contains("already in use") =>
            {
                tracing::debug!(port, "{name} port taken, retrying");
                attempt += 1;
            }
            result => return result,
        }
    }
}

type ExitHook = fn();

static EXIT_HOOKS: Mutex<Vec<ExitHook>> = Mutex::new(Vec::new());

/// Runs `hook` when the process exits normally (returns from main or calls
/// `exit`). Used to stop shared servers and remove their directories.
pub(crate) fn at_exit(hook: ExitHook) {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(register_atexit);
    EXIT_HOOKS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(hook);
}

#[allow(unsafe_code)]
fn register_atexit() {
    // SAFETY: `run_exit_hooks` is a plain extern "C" function that never
    // unwinds (it catches panics) and only touches 'static data.
    let rc = unsafe { libc::atexit(run_exit_hooks) };
    if rc != 0 {
        tracing::debug!("cannot register testkit exit hook");
    }
}

extern "C" fn run_exit_hooks() {
    let _ = std::panic::catch_unwind(|| {
        // try_lock: never block process exit on a lock some other thread holds.
        let hooks = match EXIT_HOOKS.try_lock() {
            Ok(hooks) => hooks.clone(),
            Err(_) => return,
        };
        for hook in hooks {
            hook();
        }
    });
}

/// Creates a new scratch directory `<temp>/callosum-testkit-<pid>-<kind>-<n>-<nanos>`,
/// sweeping first (once per process) the directories of dead processes.
fn new_scratch_dir(kind: &str) -> Result<PathBuf, TestkitError> {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(sweep_stale_dirs);
    let dir = std::env::temp_dir().join(format!(
        "{DIR_PREFIX}{}-{kind}-{}-{}",
        std::process::id(),
        next_counter(),
        nanos()
    ));
    std::fs::create_dir(&dir)
        .map_err(|err| TestkitError::io(format!("creating {}", dir.display()), err))?;
    Ok(dir)
}

/// Removes scratch directories whose owning process is gone.
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || process_alive(pid) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::debug!(dir = %path.display(), "removed stale testkit directory"),
            Err(err) => {
                tracing::debug!(dir = %path.display(), error = %err, "cannot remove stale testkit directory")
            }
        }
    }
}

fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// Removes a directory tree, retrying briefly: processes that were just
/// killed may still be closing files in it.
fn remove_dir(dir: &Path) {
    for attempt in 0..5 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return,
            Err(err) if attempt == 4 => {
                tracing::debug!(dir = %dir.display(), error = %err, "cannot remove testkit directory");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16, TestkitError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|err| TestkitError::io("binding 127.0.0.1:0 to find a free port", err))?;
    let port = listener
        .local_addr()
        .map_err(|err| TestkitError::io("reading the address of a bound socket", err))?
        .port();
    Ok(port)
}

/// A process-wide counter, used in names.
pub(crate) fn next_counter() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

fn nanos() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// A random-looking lowercase suffix without the `rand` crate: the
/// process-randomly-seeded std hasher over counter and time.
fn random_suffix(len: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(next_counter());
    hasher.write_u32(nanos());
    hasher.write_u32(std::process::id());
    let mut value = hasher.finish();
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| {
            let c = alphabet[(value % 36) as usize] as char;
            value /= 36;
            c
        })
        .collect()
}

/// A unique database name starting with (a sanitised) `prefix`:
/// `prefix_<counter>_<pid>_<random>`, lowercase, a valid unquoted identifier
/// on both engines, at most 63 bytes.
pub(crate) fn unique_database_name(prefix: &str) -> String {
    let mut clean: String = prefix
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !clean.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        clean.insert(0, 'd');
    }
    let suffix = format!(
        "_{}_{}_{}",
        next_counter(),
        std::process::id(),
        random_suffix(6)
    );
    clean.truncate(63usize.saturating_sub(suffix.len()));
    clean + &suffix
}

/// The last `lines` lines of a log file (or a note that it cannot be read).
fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

/// Runs a future to completion on a private current-thread runtime in a
/// scoped thread, so synchronous code can use async drivers whether or not
/// the caller is itself inside a tokio runtime.
fn block_on<F>(fut: F) -> Result<F::Output, TestkitError>
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|err| TestkitError::io("building a tokio runtime", err))?;
                Ok(runtime.block_on(fut))
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Looks `name` up in `$PATH`, then in `extra_dirs`.
pub(crate) fn find_program(name: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(extra_dirs.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs a short-lived helper to completion; errors carry the output's tail.
pub(crate) fn run_helper(mut cmd: Command) -> Result<(), TestkitError> {
    let line = describe(&cmd);
    tracing::debug!(command = %line, "running testkit helper");
    let output = cmd
        .output()
        .map_err(|err| TestkitError::io(format!("running {line}"), err))?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    let all: Vec<&str> = text.lines().collect();
    Err(TestkitError::CommandFailed {
        command: line,
        status: output.status.to_string(),
        output: all[all.len().saturating_sub(30)..].join("\n"),
    })
}

/// A command line for messages.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether this process runs as root.
pub(crate) fn running_as_root() -> bool {
    effective_uid() == 0
}

/// The effective user id of this process.
#[allow(unsafe_code)]
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}

/// Copies a directory tree (directories and regular files, with their
/// permission bits), writing runs of zero bytes as holes: a fresh InnoDB redo
/// log is ~100 MB of zeros, and copying it densely costs as much as creating it.
/// With `owner`, everything copied is chowned to that uid and gid. Regular
/// files for which `skip_file` returns true are left out.
pub(crate) fn copy_tree_sparse(
    src: &Path,
    dst: &Path,
    owner: Option<(u32, u32)>,
    skip_file: &dyn Fn(&Path) -> bool,
) -> Result<(), TestkitError> {
    let io_err =
        |what: &str, path: &Path, err| TestkitError::io(format!("{what} {}", path.display()), err);
    let meta = std::fs::metadata(src).map_err(|err| io_err("reading", src, err))?;
    std::fs::create_dir(dst).map_err(|err| io_err("creating", dst, err))?;
    std::fs::set_permissions(dst, meta.permissions()).map_err(|err| io_err("chmod", dst, err))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dst, Some(uid), Some(gid))
            .map_err(|err| io_err("chown", dst, err))?;
    }
    for entry in std::fs::read_dir(src).map_err(|err| io_err("listing", src, err))? {
        let entry = entry.map_err(|err| io_err("listing", src, err))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let kind = entry
            .file_type()
            .map_err(|err| io_err("reading", &from, err))?;
        if kind.is_dir() {
            copy_tree_sparse(&from, &to, owner, skip_file)?;
        } else if kind.is_file() && !skip_file(&from) {
            copy_file_sparse(&from, &to).map_err(|err| io_err("copying", &from, err))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&to, Some(uid), Some(gid))
                    .map_err(|err| io_err("chown", &to, err))?;
            }
        }
    }
    Ok(())
}

/// A data directory to copy from, created once per server version and user
/// under the temp dir: `callosum-testkit-template-<kind>-<version>-uid<uid>/data`,
/// where `<version>` is the third word of `binary --version`. Initialising a
/// data directory takes most of a server's start time; a sparse copy takes a
/// fraction of it. `ready` names the entry of `data` that marks a complete
/// template. Concurrent processes may race to create it: each runs `build`
/// (which must create `<candidate>/data`) in its own scratch directory and
/// renames that into place (atomic; fails when the target exists), so readers
/// only ever see a complete template.
pub(crate) fn template_data_dir(
    kind: &str,
    binary: &Path,
    uid: u32,
    ready: &str,
    build: impl FnOnce(&Path) -> Result<(), TestkitError>,
) -> Result<PathBuf, TestkitError> {
    let version = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|err| TestkitError::io(format!("running {} --version", binary.display()), err))?;
    let version = name_fragment(
        String::from_utf8_lossy(&version.stdout)
            .split_whitespace()
            .nth(2)
            .unwrap_or("unknown"),
    );
    let template =
        std::env::temp_dir().join(format!("{DIR_PREFIX}template-{kind}-{version}-uid{uid}"));
    let data = template.join("data");
    if data.join(ready).exists() {
        return Ok(data);
    }
    let candidate = new_scratch_dir(&format!("{kind}-template"))?;
    if let Err(err) = build(&candidate) {
        remove_dir(&candidate);
        return Err(err);
    }
    match std::fs::rename(&candidate, &template) {
        Ok(()) => {
            tracing::debug!(template = %template.display(), "created testkit template data directory");
        }
        // Another process got there first: use theirs.
        Err(_) if data.join(ready).exists() => remove_dir(&candidate),
        Err(err) => {
            remove_dir(&candidate);
            return Err(TestkitError::io(
                format!("renaming {} to {}", candidate.display(), template.display()),
                err,
            ));
        }
    }
    Ok(data)
}

/// A version string reduced to a file-name fragment: `10.11.19-MariaDB-0+deb12u1`
/// becomes `10.11.19-mariadb-0-deb12u1`.
fn name_fragment(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn copy_file_sparse(from: &Path, to: &Path) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut input = std::fs::File::open(from)?;
    let meta = input.metadata()?;
    let mut output = std::fs::File::create(to)?;
    const CHUNK: usize = 64 * 1024;
    static ZEROS: [u8; CHUNK] = [0; CHUNK];
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        // Slice equality is a memcmp, fast even in unoptimised test builds.
        if buf[..n] == ZEROS[..n] {
            output.seek(SeekFrom::Current(n as i64))?;
        } else {
            output.write_all(&buf[..n])?;
        }
    }
    // Extends the file over a trailing hole.
    output.set_len(meta.len())?;
    output.set_permissions(meta.permissions())?;
    Ok(())
}

/// uid and gid of a system user, via `id`.
pub(crate) fn lookup_user(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").arg(flag).arg(user).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

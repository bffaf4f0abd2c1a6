//! Running one command: process spawning, namespaces, resource limits, and stopping the whole
//! process group.
//!
//! Owns the [`ProcessRunner`] seam (the real [`LocalRunner`] and whatever fake a test plugs in),
//! the resolution of `argv[0]` as REAPI 2.3 describes it, and the startup probe that decides
//! whether this host can sandbox. Does not know about leases, trees or the CAS.
//!
//! Every command starts in a new session (so its own process group), with exactly the
//! environment it was given, stdin from `/dev/null`, stdout and stderr to files. With
//! namespaces it also gets a private mount namespace whose `/tmp` is a per-action directory
//! (if the exec root itself lies under `/tmp`, it is bind-mounted back at the same path) and,
//! unless the action asked for `network=on`, a private network namespace with only loopback
//! (brought up). In that mount namespace, extra directories may be bind-mounted into the exec
//! root, and the exec root may be shown at a fixed path ([`Isolation::exec_root_at`]); the
//! working directory is entered after the mounts, so it may lie below that path. Resource
//! limits are set with `setrlimit` whether or not namespaces are used. Where the host allows
//! it ([`pid_namespaces`]), the command also runs in a PID namespace of its own with `/proc`
//! mounted for it, under a small init; when the command ends, the namespace ends with it, so
//! nothing it started survives it, not even a daemon that left its process group.
//!
//! The code between `fork` and `exec` ([`Prepared::enter`]) only makes raw system calls on
//! data prepared beforehand: no allocation, no locks, as async-signal-safety requires.
//!
//! Who forks: [`LocalRunner`] prepares everything here (checks, output files, [`Prepared`])
//! and hands the fork to the agent's spawner process (`spawner`), a small process that forks
//! cheaply and runs the same `Prepared::enter`; the agent forks itself only if no spawner could
//! start. Either way the caller sees the same [`ProcessExit`]; a spawner that dies mid-command
//! is [`SpawnError::SpawnerLost`], the agent's fault.
//!
//! Stopping (timeout or cancel): SIGTERM to the group, a grace period while the group still
//! exists, then SIGKILL. A command that exits normally has any leftover group members
//! SIGKILLed; without a PID namespace, that is all that stops a stray daemon.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::platform::{DEFAULT_NOFILE, Limits};
use crate::spawner::{SpawnedChild, Spawner, SpawnerCommand, WirePrepared};

/// Spawn attempts when `exec` reports ETXTBSY (an executable still open for writing somewhere:
/// the fork/exec race with a file another thread has just written).
const SPAWN_ATTEMPTS: u32 = 6;
/// First wait after ETXTBSY; doubled each time.
const SPAWN_BACKOFF: Duration = Duration::from_millis(10);
/// How often a stopping process group is checked for having exited.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// How one command is isolated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Isolation {
    /// Use Linux namespaces (only if the host supports them; see [`probe_namespaces`]).
    pub namespaces: bool,
    /// With namespaces: keep the host network (`network=on`) instead of a private one.
    pub network: bool,
    /// With namespaces: the directory mounted on `/tmp`.
    pub private_tmp: Option<PathBuf>,
    /// The exec root; with a private `/tmp`, re-exposed at its own path if it lies under
    /// `/tmp`.
    pub exec_root: Option<PathBuf>,
    /// With namespaces: also show the exec root at this absolute path (below the private
    /// `/tmp` if it lies under `/tmp`, so actions using the same path do not collide). The
    /// mount point is created if missing.
    pub exec_root_at: Option<PathBuf>,
    /// With namespaces: directories bind-mounted (source, target) before anything else, so
    /// the exec root's own mounts carry them; each target must exist.
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// Resource limits.
    pub limits: Limits,
}

/// One command to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// The executable, already resolved (see [`resolve_program`]).
    pub program: PathBuf,
    /// The arguments, `argv[0]` as given by the action.
    pub argv: Vec<String>,
    /// The complete environment; nothing is inherited.
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub cwd: PathBuf,
    /// File that receives stdout (created or truncated).
    pub stdout: PathBuf,
    /// File that receives stderr (created or truncated).
    pub stderr: PathBuf,
    /// Stop the command after this long.
    pub timeout: Option<Duration>,
    /// Namespaces and limits.
    pub isolation: Isolation,
}

/// How a command ended. Exit codes follow the shell: a command killed by signal N has 128+N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessExit {
    /// It ran to completion.
    Exited {
        /// Its exit code.
        exit_code: i32,
    },
    /// It ran past its timeout and was stopped.
    TimedOut {
        /// The timeout.
        after: Duration,
        /// Its exit code once stopped.
        exit_code: i32,
    },
    /// It was cancelled and stopped.
    Cancelled,
}

/// Why a command could not be started.
#[derive(Debug, Error)]
pub enum SpawnError {
    /// `argv` is empty.
    #[error("the command has no arguments")]
    NoArguments,
    /// `argv[0]` names nothing executable.
    #[error("command not found: \"{program}\" ({searched})")]
    NotFound {
        /// `argv[0]`.
        program: String,
        /// Where it was looked for.
        searched: String,
    },
    /// An argument, variable or path contains a NUL byte, or a variable name contains `=`.
    #[error("invalid command: {0}")]
    Invalid(String),
    /// The output files could not be created, or the exec root not opened.
    #[error("failed to prepare {path}: {source}")]
    Prepare {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The spawner process could not be started.
    #[error("failed to start the spawner process: {source}")]
    SpawnerStart {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The spawner process died before the command's end was known (the command was killed).
    #[error("the agent's spawner process died while the command ran")]
    SpawnerLost,
    /// `exec` (or the sandbox set-up before it) failed.
    #[error("failed to start {program}: {source}")]
    Exec {
        /// The resolved program.
        program: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl SpawnError {
    /// True if the action is at fault (missing or non-executable program, bad arguments), not
    /// the agent.
    pub fn is_user_error(&self) -> bool {
        match self {
            SpawnError::NoArguments | SpawnError::NotFound { .. } | SpawnError::Invalid(_) => true,
            SpawnError::Prepare { .. }
            | SpawnError::SpawnerStart { .. }
            | SpawnError::SpawnerLost => false,
            SpawnError::Exec { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ENOENT | libc::EACCES | libc::ENOEXEC | libc::ENOTDIR | libc::EISDIR)
            ),
        }
    }
}

/// Runs commands. The seam between a lease's pipeline and real processes.
pub trait ProcessRunner: Send + Sync + 'static {
    /// Runs `spec` to its end, its timeout, or `cancel`.
    fn run<'a>(
        &'a self,
        spec: &'a ProcessSpec,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ProcessExit, SpawnError>>;

    /// Starts `spec` and returns at once, for a process that outlives one command (a test
    /// runner's long-lived worker, see `worker`); `spec.timeout` is not applied (the caller
    /// stops it). `None` from runners that keep no long-lived processes (test fakes).
    fn start<'a>(
        &'a self,
        spec: &'a ProcessSpec,
    ) -> BoxFuture<'a, Result<Option<Started>, SpawnError>> {
        let _ = spec;
        Box::pin(async { Ok(None) })
    }
}

/// A process started with [`ProcessRunner::start`], in its own process group, which is
/// stopped whole: by [`Started::stop`], or killed when this is dropped.
#[derive(Debug)]
pub struct Started {
    child: Child,
    group: Pid,
    /// What asks the command to stop: SIGTERM, or [`STOP_SIGNAL`] in a PID namespace.
    stop_signal: Signal,
    kill_grace: Duration,
    /// The leader was reaped (its group id may be reused from then on).
    reaped: bool,
}

impl Started {
    /// Waits for the leader to exit, then kills what is left of its group; its exit code.
    pub async fn wait(&mut self) -> io::Result<i32> {
        let status = self.child.wait().await.map_err(io::Error::other)?;
        let _ = killpg(self.group, Signal::SIGKILL);
        self.reaped = true;
        Ok(exit_code(status))
    }

    /// Whether the leader has exited (reaping it if so; what is left of its group is killed).
    pub fn exited(&mut self) -> bool {
        if self.reaped {
            return true;
        }
        if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
            let _ = killpg(self.group, Signal::SIGKILL);
            self.reaped = true;
        }
        self.reaped
    }

    /// SIGTERM to the group, SIGKILL once the grace period is over; the leader's exit code.
    pub async fn stop(&mut self) -> i32 {
        if self.reaped {
            return 128 + libc::SIGKILL;
        }
        let status = stop_group(
            self.kill_grace,
            self.group,
            self.stop_signal,
            &mut self.child,
        )
        .await;
        self.reaped = true;
        status.ok().flatten().map_or(128 + libc::SIGKILL, exit_code)
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if !self.reaped {
            self.child.kill_group(self.group);
        }
    }
}

/// A running command: forked by this process, or by the spawner.
#[derive(Debug)]
enum Child {
    /// Forked here (no spawner).
    Local(tokio::process::Child),
    /// Forked by the spawner process.
    Spawned(SpawnedChild),
}

impl Child {
    async fn wait(&mut self) -> Result<ExitStatus, SpawnError> {
        match self {
            Child::Local(child) => child.wait().await.map_err(|source| SpawnError::Exec {
                program: PathBuf::from("(waiting)"),
                source,
            }),
            Child::Spawned(child) => child.wait().await,
        }
    }

    /// The exit status if the leader has exited; `Err` if that can no longer be known.
    fn try_wait(&mut self) -> Result<Option<ExitStatus>, SpawnError> {
        match self {
            Child::Local(child) => child.try_wait().map_err(|source| SpawnError::Exec {
                program: PathBuf::from("(waiting)"),
                source,
            }),
            Child::Spawned(child) => child.try_wait(),
        }
    }

    /// Signals the group while its leader is known not to be reaped (so `group` is still
    /// this command's).
    fn signal_group(&self, group: Pid, signal: Signal) {
        match self {
            Child::Local(_) => {
                let _ = killpg(group, signal);
            }
            Child::Spawned(child) => child.signal_group(signal),
        }
    }

    /// Kills the whole group now, without waiting.
    fn kill_group(&mut self, group: Pid) {
        self.signal_group(group, Signal::SIGKILL);
        if let Child::Local(child) = self {
            let _ = child.start_kill();
        }
    }
}

/// Runs commands as real processes on this host: through the spawner process if it has one,
/// else forking them itself.
#[derive(Debug, Clone)]
pub struct LocalRunner {
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Forks the commands; `None`: this process forks them.
    pub spawner: Option<Arc<Spawner>>,
}

impl LocalRunner {
    /// A runner that forks commands itself.
    pub fn in_process(kill_grace: Duration) -> LocalRunner {
        LocalRunner {
            kill_grace,
            spawner: None,
        }
    }

    /// A runner whose commands the spawner `command` starts; forking them itself (with a
    /// warning) if the spawner cannot start.
    pub async fn with_spawner(kill_grace: Duration, command: SpawnerCommand) -> LocalRunner {
        match Spawner::start(command.clone()).await {
            Ok(spawner) => LocalRunner {
                kill_grace,
                spawner: Some(Arc::new(spawner)),
            },
            Err(error) => {
                tracing::warn!(
                    %error,
                    program = %command.program.display(),
                    "the spawner process could not start: the agent forks commands itself"
                );
                LocalRunner::in_process(kill_grace)
            }
        }
    }
}

impl ProcessRunner for LocalRunner {
    fn run<'a>(
        &'a self,
        spec: &'a ProcessSpec,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ProcessExit, SpawnError>> {
        Box::pin(self.run_local(spec, cancel))
    }

    fn start<'a>(
        &'a self,
        spec: &'a ProcessSpec,
    ) -> BoxFuture<'a, Result<Option<Started>, SpawnError>> {
        Box::pin(async move {
            let (child, group, stop_signal) = spawn_child(spec, self.spawner.as_deref()).await?;
            Ok(Some(Started {
                child,
                group,
                stop_signal,
                kill_grace: self.kill_grace,
                reaped: false,
            }))
        })
    }
}

impl LocalRunner {
    async fn run_local(
        &self,
        spec: &ProcessSpec,
        cancel: &CancellationToken,
    ) -> Result<ProcessExit, SpawnError> {
        let (mut child, group, stop_signal) = spawn_child(spec, self.spawner.as_deref()).await?;
        let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
        let sleep_until_deadline = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => {
                let status = status?;
                // Whatever the command left behind in its group goes with it.
                let _ = killpg(group, Signal::SIGKILL);
                Ok(ProcessExit::Exited { exit_code: exit_code(status) })
            }
            () = sleep_until_deadline => {
                let status = stop_group(self.kill_grace, group, stop_signal, &mut child).await?;
                Ok(ProcessExit::TimedOut {
                    after: spec.timeout.unwrap_or_default(),
                    exit_code: status.map_or(128 + libc::SIGKILL, exit_code),
                })
            }
            () = cancel.cancelled() => {
                stop_group(self.kill_grace, group, stop_signal, &mut child).await?;
                Ok(ProcessExit::Cancelled)
            }
        }
    }
}

/// `stop_signal` to the group (SIGTERM, or [`STOP_SIGNAL`] for the stand-in and init of a
/// command in a PID namespace); SIGKILL once the grace period is over if any member is left.
/// Returns the leader's exit status; `Err` if the spawner died meanwhile (the group is then
/// killed).
async fn stop_group(
    kill_grace: Duration,
    group: Pid,
    stop_signal: Signal,
    child: &mut Child,
) -> Result<Option<ExitStatus>, SpawnError> {
    child.signal_group(group, stop_signal);
    let until = Instant::now() + kill_grace;
    let mut status = None;
    loop {
        if status.is_none() {
            // The leader must be reaped: a zombie still counts as a group member.
            status = child.try_wait()?;
        }
        if status.is_some() && killpg(group, None) == Err(Errno::ESRCH) {
            return Ok(status);
        }
        if Instant::now() >= until {
            break;
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
    match status {
        Some(status) => {
            let _ = killpg(group, Signal::SIGKILL);
            Ok(Some(status))
        }
        None => {
            child.signal_group(group, Signal::SIGKILL);
            let status = child.wait().await.ok();
            // What the leader left behind in its group goes with it.
            let _ = killpg(group, Signal::SIGKILL);
            Ok(status)
        }
    }
}

/// Starts `spec` in a new session (its own process group) with its isolation, through
/// `spawner` if given: the child and its group.
async fn spawn_child(
    spec: &ProcessSpec,
    spawner: Option<&Spawner>,
) -> Result<(Child, Pid, Signal), SpawnError> {
    let (argv0, rest) = spec.argv.split_first().ok_or(SpawnError::NoArguments)?;
    check_command(spec)?;
    let create = |path: &Path| {
        File::create(path).map_err(|source| SpawnError::Prepare {
            path: path.to_owned(),
            source,
        })
    };
    let stdout = create(&spec.stdout)?;
    let stderr = create(&spec.stderr)?;
    // The working directory is entered in `Prepared::enter`, after the mounts it may
    // depend on (std would enter it before `pre_exec` runs).
    let prepared = Prepared::new(&spec.isolation, Some(&spec.cwd))?;
    let stop_signal = if prepared.own_pids {
        STOP_SIGNAL
    } else {
        Signal::SIGTERM
    };
    if let Some(spawner) = spawner {
        let child = spawn_through(spawner, spec, &prepared, &stdout, &stderr).await?;
        let group = Pid::from_raw(child.pid());
        return Ok((Child::Spawned(child), group, stop_signal));
    }

    let mut command = std::process::Command::new(&spec.program);
    command
        .arg0(argv0)
        .args(rest)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    install_pre_exec(&mut command, prepared);
    let mut command = tokio::process::Command::from(command);

    let child = spawn_retrying(&mut command, &spec.program).await?;
    let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) else {
        return Err(SpawnError::Exec {
            program: spec.program.clone(),
            source: io::Error::other("child exited before its pid was known"),
        });
    };
    Ok((Child::Local(child), Pid::from_raw(pid), stop_signal))
}

/// Has the spawner start `spec`, retrying on ETXTBSY as [`spawn_retrying`] does.
async fn spawn_through(
    spawner: &Spawner,
    spec: &ProcessSpec,
    prepared: &Prepared,
    stdout: &File,
    stderr: &File,
) -> Result<SpawnedChild, SpawnError> {
    let program = spec.program.as_os_str().as_bytes();
    let mut wait = SPAWN_BACKOFF;
    let mut attempt = 1;
    loop {
        let started = spawner
            .spawn(
                program,
                &spec.argv,
                &spec.env,
                prepared.to_wire(),
                stdout,
                stderr,
            )
            .await?;
        match started {
            Ok(child) => return Ok(child),
            Err(libc::ETXTBSY) if attempt < SPAWN_ATTEMPTS => {
                tracing::debug!(program = %spec.program.display(), attempt, "exec hit ETXTBSY; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            Err(errno) => {
                return Err(SpawnError::Exec {
                    program: spec.program.clone(),
                    source: io::Error::from_raw_os_error(errno),
                });
            }
        }
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => -1,
    }
}

fn check_command(spec: &ProcessSpec) -> Result<(), SpawnError> {
    if let Some(arg) = spec.argv.iter().find(|a| a.contains('\0')) {
        return Err(SpawnError::Invalid(format!(
            "argument {arg:?} contains a NUL byte"
        )));
    }
    for (name, value) in &spec.env {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(SpawnError::Invalid(format!(
                "environment variable name {name:?} is empty or contains '=' or NUL"
            )));
        }
        if value.contains('\0') {
            return Err(SpawnError::Invalid(format!(
                "environment variable {name} contains a NUL byte"
            )));
        }
    }
    Ok(())
}

async fn spawn_retrying(
    command: &mut tokio::process::Command,
    program: &Path,
) -> Result<tokio::process::Child, SpawnError> {
    let mut wait = SPAWN_BACKOFF;
    let mut attempt = 1;
    loop {
        match command.spawn() {
            Ok(child) => return Ok(child),
            Err(error)
                if error.raw_os_error() == Some(libc::ETXTBSY) && attempt < SPAWN_ATTEMPTS =>
            {
                tracing::debug!(program = %program.display(), attempt, "exec hit ETXTBSY; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            Err(source) => {
                return Err(SpawnError::Exec {
                    program: program.to_owned(),
                    source,
                });
            }
        }
    }
}

#[expect(
    unsafe_code,
    reason = "pre_exec runs Prepared::enter between fork and exec; it only makes raw system \
              calls on data prepared before the fork"
)]
pub(crate) fn install_pre_exec(command: &mut std::process::Command, prepared: Prepared) {
    // SAFETY: `Prepared::enter` is async-signal-safe: it allocates nothing and takes no
    // locks, it only issues system calls on memory that was set up before the fork.
    unsafe {
        command.pre_exec(move || prepared.enter().map_err(io::Error::from));
    }
}

/// Everything the child needs between fork and exec, computed before the fork (by the agent,
/// which sends it to the spawner as [`WirePrepared`] when it has one).
#[derive(Debug)]
pub(crate) struct Prepared {
    namespaces: bool,
    private_network: bool,
    /// Recursive bind mounts made in order before /tmp is covered: extra directories into the
    /// exec root, the exec root at its fixed path, the exec root back at its own path when it
    /// lies under /tmp.
    binds: Vec<Bind>,
    /// Directory to bind on /tmp.
    tmp_source: Option<CString>,
    /// The working directory, entered last.
    cwd: Option<CString>,
    rlimits: Vec<(Resource, libc::rlim_t, libc::rlim_t)>,
    /// With a private network: a fresh network namespace, loopback up, made ahead of time for
    /// this command alone (the spawner keeps a few), joined instead of creating one.
    pub(crate) netns: Option<std::os::fd::OwnedFd>,
    /// SIGKILL the command when this process, its parent, dies (only for a single-threaded
    /// forker, the spawner: the signal follows the forking thread).
    pub(crate) die_with_parent: Option<Pid>,
    /// With namespaces: the command runs in its own PID namespace under a small init (see
    /// [`Prepared::enter_own_pids`]), so nothing it starts outlives it.
    own_pids: bool,
}

#[derive(Debug, PartialEq, Eq)]
struct Bind {
    source: CString,
    /// A host path, or a path inside the directory bound on /tmp (`TMP_SOURCE/<p below /tmp>`)
    /// for a path `p` the command sees under /tmp.
    target: CString,
}

fn c_path(path: &Path) -> Result<CString, SpawnError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| SpawnError::Invalid(format!("path {} contains NUL", path.display())))
}

fn create_mount_point(path: &Path) -> Result<(), SpawnError> {
    std::fs::create_dir_all(path).map_err(|source| SpawnError::Prepare {
        path: path.to_owned(),
        source,
    })
}

/// The resources `Prepared` may limit, numbered for the spawner's wire.
const WIRE_RESOURCES: [Resource; 4] = [
    Resource::RLIMIT_CORE,
    Resource::RLIMIT_NOFILE,
    Resource::RLIMIT_AS,
    Resource::RLIMIT_CPU,
];

/// Where a mount point for a path the command sees is made before /tmp is covered: a path
/// under /tmp goes inside the directory that will become /tmp (the recursive bind on /tmp
/// carries it along).
fn placed_before_tmp(private_tmp: Option<&Path>, path: &Path) -> PathBuf {
    match (private_tmp, path.strip_prefix("/tmp")) {
        (Some(tmp), Ok(below_tmp)) => tmp.join(below_tmp),
        _ => path.to_owned(),
    }
}

/// Where the sandbox bind-mounts the exec root, as (exec root, mount point) pairs: at the path
/// the action asked for, if any; and, when the exec root itself is under /tmp, at its own path
/// (which the private /tmp would otherwise hide).
fn exec_root_mounts(isolation: &Isolation) -> Vec<(&Path, PathBuf)> {
    let private_tmp = isolation.private_tmp.as_deref();
    let Some(root) = isolation.exec_root.as_deref() else {
        return Vec::new();
    };
    let mut mounts = Vec::new();
    if let Some(at) = &isolation.exec_root_at {
        mounts.push((root, placed_before_tmp(private_tmp, at)));
    }
    if private_tmp.is_some() && root.starts_with("/tmp") {
        mounts.push((root, placed_before_tmp(private_tmp, root)));
    }
    mounts
}

/// The mount points the sandbox makes inside a lease's private tmp directory `tmp` for an
/// exec root at `exec_root`, seen by the command at `exec_root_at` if set: what a tmp reused
/// for a later lease may keep (see `LeaseDirs::tidy_for_reuse`).
pub fn mount_points_in_tmp(
    tmp: &Path,
    exec_root: &Path,
    exec_root_at: Option<&Path>,
) -> Vec<PathBuf> {
    let isolation = Isolation {
        private_tmp: Some(tmp.to_owned()),
        exec_root: Some(exec_root.to_owned()),
        exec_root_at: exec_root_at.map(Path::to_owned),
        ..Isolation::default()
    };
    exec_root_mounts(&isolation)
        .into_iter()
        .map(|(_, point)| point)
        .filter(|point| point.starts_with(tmp) && point != tmp)
        .collect()
}

impl Prepared {
    /// As sent to the spawner.
    /// Whether the command gets a private network namespace.
    pub(crate) fn private_network(&self) -> bool {
        self.namespaces && self.private_network
    }

    pub(crate) fn to_wire(&self) -> WirePrepared {
        let bytes = |c: &CString| c.as_bytes().to_vec();
        WirePrepared {
            namespaces: self.namespaces,
            private_network: self.private_network,
            own_pids: self.own_pids,
            bind_sources: self.binds.iter().map(|b| bytes(&b.source)).collect(),
            bind_targets: self.binds.iter().map(|b| bytes(&b.target)).collect(),
            tmp_source: self.tmp_source.as_ref().map(bytes),
            cwd: self.cwd.as_ref().map(bytes),
            rlimits: self
                .rlimits
                .iter()
                .flat_map(|&(resource, soft, hard)| {
                    let code = WIRE_RESOURCES.iter().position(|&r| r == resource);
                    [code.unwrap_or(usize::MAX) as u64, soft, hard]
                })
                .collect(),
        }
    }

    /// As the spawner received it; anything malformed is an error.
    pub(crate) fn from_wire(wire: &WirePrepared) -> io::Result<Prepared> {
        let c = |bytes: &Vec<u8>| CString::new(bytes.clone()).map_err(io::Error::other);
        if wire.bind_sources.len() != wire.bind_targets.len()
            || !wire.rlimits.len().is_multiple_of(3)
        {
            return Err(io::Error::other("malformed sandbox in a spawn request"));
        }
        let binds = wire
            .bind_sources
            .iter()
            .zip(&wire.bind_targets)
            .map(|(source, target)| {
                Ok(Bind {
                    source: c(source)?,
                    target: c(target)?,
                })
            })
            .collect::<io::Result<_>>()?;
        let rlimits = wire
            .rlimits
            .chunks(3)
            .map(|triple| {
                let resource = usize::try_from(triple[0])
                    .ok()
                    .and_then(|code| WIRE_RESOURCES.get(code))
                    .ok_or_else(|| io::Error::other("unknown resource in a spawn request"))?;
                Ok((*resource, triple[1], triple[2]))
            })
            .collect::<io::Result<_>>()?;
        Ok(Prepared {
            namespaces: wire.namespaces,
            private_network: wire.private_network,
            binds,
            tmp_source: wire.tmp_source.as_ref().map(c).transpose()?,
            cwd: wire.cwd.as_ref().map(c).transpose()?,
            rlimits,
            netns: None,
            die_with_parent: None,
            own_pids: wire.namespaces && wire.own_pids,
        })
    }

    fn new(isolation: &Isolation, cwd: Option<&Path>) -> Result<Prepared, SpawnError> {
        Prepared::build(isolation, cwd, isolation.namespaces && pid_namespaces())
    }

    fn build(
        isolation: &Isolation,
        cwd: Option<&Path>,
        own_pids: bool,
    ) -> Result<Prepared, SpawnError> {
        let limits = &isolation.limits;
        let mut rlimits = vec![(Resource::RLIMIT_CORE, 0, 0)];
        let nofile = clamp_limit(
            Resource::RLIMIT_NOFILE,
            limits.nofile.unwrap_or(DEFAULT_NOFILE),
        );
        rlimits.push((Resource::RLIMIT_NOFILE, nofile, nofile));
        if let Some(bytes) = limits.address_space {
            let bytes = clamp_limit(Resource::RLIMIT_AS, bytes);
            rlimits.push((Resource::RLIMIT_AS, bytes, bytes));
        }
        if let Some(seconds) = limits.cpu_seconds {
            let seconds = clamp_limit(Resource::RLIMIT_CPU, seconds);
            rlimits.push((Resource::RLIMIT_CPU, seconds, seconds));
        }
        let mut prepared = Prepared {
            namespaces: isolation.namespaces,
            private_network: isolation.namespaces && !isolation.network,
            binds: Vec::new(),
            tmp_source: None,
            cwd: cwd.map(c_path).transpose()?,
            rlimits,
            netns: None,
            die_with_parent: None,
            own_pids,
        };
        if !isolation.namespaces {
            return Ok(prepared);
        }
        for (source, target) in &isolation.binds {
            prepared.binds.push(Bind {
                source: c_path(source)?,
                target: c_path(target)?,
            });
        }
        for (root, target) in exec_root_mounts(isolation) {
            create_mount_point(&target)?;
            prepared.binds.push(Bind {
                source: c_path(root)?,
                target: c_path(&target)?,
            });
        }
        if let Some(tmp) = &isolation.private_tmp {
            prepared.tmp_source = Some(c_path(tmp)?);
        }
        Ok(prepared)
    }

    /// Runs in the child between fork and exec: new session, limits, namespaces, working
    /// directory.
    fn enter(&self) -> Result<(), Errno> {
        if let Some(parent) = self.die_with_parent {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The parent may have died before that took effect.
            if nix::unistd::getppid() != parent {
                return Err(Errno::ESRCH);
            }
        }
        nix::unistd::setsid()?;
        let fd_limit = descriptor_limit();
        for &(resource, soft, hard) in &self.rlimits {
            nix::sys::resource::setrlimit(resource, soft, hard)?;
        }
        if self.namespaces {
            let mut flags = CloneFlags::CLONE_NEWNS;
            let fresh_network = self.private_network && self.netns.is_none();
            if fresh_network {
                flags |= CloneFlags::CLONE_NEWNET;
            }
            if self.own_pids {
                // For this process's children: the init forked below is its PID 1.
                flags |= CloneFlags::CLONE_NEWPID;
            }
            nix::sched::unshare(flags)?;
            if self.private_network
                && let Some(netns) = &self.netns
            {
                nix::sched::setns(netns, CloneFlags::CLONE_NEWNET)?;
            }
            // Mounts made below must not propagate back to the host.
            mount(None, c"/", MsFlags::MS_REC | MsFlags::MS_PRIVATE)?;
            for bind in &self.binds {
                mount(
                    Some(&bind.source),
                    &bind.target,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                )?;
            }
            if let Some(tmp) = &self.tmp_source {
                mount(Some(tmp), c"/tmp", MsFlags::MS_BIND | MsFlags::MS_REC)?;
            }
            if fresh_network {
                loopback_up()?;
            }
            if self.own_pids {
                enter_own_pids(fd_limit)?;
            }
        }
        if let Some(cwd) = &self.cwd {
            nix::unistd::chdir(cwd.as_c_str())?;
        }
        // The command starts with no signal blocked, whatever its forker blocks (the
        // spawner blocks the signals meant for the agent; std keeps the mask across `exec`).
        clear_signal_mask();
        Ok(())
    }
}

#[expect(unsafe_code, reason = "pthread_sigmask(2) on a local set")]
fn clear_signal_mask() {
    // SAFETY: async-signal-safe; the set is a local.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// In a namespace's init: the command's pid (its process group too, inside the namespace).
static COMMAND: AtomicI32 = AtomicI32::new(0);
/// How the agent asks a command in a PID namespace of its own to stop: sent to the stand-in's
/// process group, where the namespace's init takes it and passes a SIGTERM on to the
/// command's group. Not SIGTERM itself: a `pkill tessera` meant for the agent reaches the
/// stand-ins and inits too (they are forks of the spawner), and must not stop actions; a
/// namespace's init simply never gets a SIGTERM, having no handler for it.
pub(crate) const STOP_SIGNAL: Signal = Signal::SIGUSR2;

/// Set in a namespace's init when a stop of the action began ([`STOP_SIGNAL`] from outside
/// the namespace, where the agent is): the init has passed a SIGTERM on to the command's
/// process group, and when the command ends it asks the rest of the namespace to stop too
/// and waits for it to empty instead of ending it at once, so everything the command started
/// gets the grace period.
static STOPPING: AtomicBool = AtomicBool::new(false);

#[expect(
    unsafe_code,
    reason = "a signal handler reading its siginfo and errno, and calling kill(2)"
)]
extern "C" fn note_stop(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler; kill(2) is
    // async-signal-safe, and errno is this thread's.
    unsafe {
        // A sender outside the namespace shows as pid 0; one inside (a command signalling
        // the init) is not the agent stopping the action.
        let info = &*info;
        if info.si_code != libc::SI_USER || info.si_pid() != 0 {
            return;
        }
        let errno = *libc::__errno_location();
        STOPPING.store(true, Ordering::Relaxed);
        let command = COMMAND.load(Ordering::Relaxed);
        // To its process group; to the command alone in the instant before it made one.
        if command > 0 && libc::kill(-command, libc::SIGTERM) != 0 {
            libc::kill(command, libc::SIGTERM);
        }
        *libc::__errno_location() = errno;
    }
}

/// In the child, once its namespaces are made (the new PID namespace is for its children):
/// forks the namespace's init, which mounts a `/proc` of the namespace (so `ps`, `/proc/$$`
/// and the like see the command's processes, not the host's) and forks the command. Returns
/// in the command only (PID 2, leader of its own session and process group, as a command
/// without a PID namespace is), which goes on to `exec`.
///
/// Why an init: when a PID namespace's init ends, the kernel kills every process left in the
/// namespace and waits for them, so nothing the command started (a daemon that left its
/// process group with `setsid` included) outlives it. The init is not the command itself
/// because a namespace's init gets no signal it has no handler for, so the SIGTERM of a
/// graceful stop would never reach a command that relies on the default action; the agent
/// asks the init instead ([`STOP_SIGNAL`]), which passes a SIGTERM on to the command's group
/// ([`note_stop`]), as `tini -g` does.
///
/// The child itself stays outside, as the command's stand-in for whoever forked it
/// ([`stand_in`]): same pid as before, same process group (the one the agent signals), and it
/// ends as the command did. A failure before the command is forked (mounting `/proc`) returns
/// in the init, so the spawn fails with it as with any error here. `fd_limit` bounds the
/// descriptors to close where `close_range` is missing: the forker's own limit.
#[expect(
    unsafe_code,
    reason = "fork(2), signal masks and handlers in the forked child, with raw system calls only"
)]
fn enter_own_pids(fd_limit: u64) -> Result<(), Errno> {
    let stop = STOP_SIGNAL as libc::c_int;
    // SAFETY (whole function): this process is the single-threaded child of a fork; every
    // process here only makes async-signal-safe system calls on its own stack's memory.
    unsafe {
        // Everything blocked across the forks: the stand-in must never die of a signal meant
        // for the command (a stop's SIGTERM may come as soon as std sees `exec` succeed).
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        // Lets the init see whether its stand-in died before the init's death signal was set
        // (-1 on kernels without pidfds: then that window stays open).
        let stand_in_fd = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) as libc::c_int;
        let init = libc::fork();
        if init < 0 {
            return Err(Errno::last());
        }
        if init > 0 {
            stand_in(init, fd_limit);
        }
        // The init, PID 1 of the new namespace; it dies with its stand-in, and the namespace
        // with it.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(Errno::last());
        }
        if stand_in_fd >= 0 {
            let mut gone = libc::pollfd {
                fd: stand_in_fd,
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut gone, 1, 0) > 0 {
                exit_now(128 + libc::SIGKILL);
            }
        }
        nix::mount::mount(
            Some(c"proc"),
            c"/proc",
            Some(c"proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&CStr>,
        )?;
        let mut handler: libc::sigaction = std::mem::zeroed();
        handler.sa_sigaction = note_stop
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as libc::sighandler_t;
        handler.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut handler.sa_mask);
        libc::sigaction(stop, &handler, std::ptr::null_mut());
        let command = libc::fork();
        if command < 0 {
            return Err(Errno::last());
        }
        if command == 0 {
            // The command: default actions again (still blocked; `Prepared::enter` empties
            // the mask just before `exec`), and a session of its own inside the namespace.
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(stop, &default, std::ptr::null_mut());
            if libc::setsid() < 0 {
                return Err(Errno::last());
            }
            return Ok(());
        }
        COMMAND.store(command, Ordering::Relaxed);
        let mut unblock: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut unblock);
        libc::sigaddset(&mut unblock, stop);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &unblock, std::ptr::null_mut());
        reap_as_init(command, fd_limit)
    }
}

/// The stand-in: waits for the init and exits as it did (the init exits as the command did).
/// It keeps no descriptor (the one through which `std` learns that `exec` succeeded must
/// close once the command has run `exec`), and every signal but SIGKILL stays blocked, so
/// the command, not its stand-in, decides when the action ends.
#[expect(unsafe_code, reason = "waitpid(2) for the raw status")]
fn stand_in(init: libc::pid_t, fd_limit: u64) -> ! {
    close_descriptors_from(3, fd_limit);
    loop {
        let mut status = 0;
        // SAFETY: waits for this process's own child, writing into a local.
        if unsafe { libc::waitpid(init, &mut status, 0) } == init {
            if libc::WIFSIGNALED(status) {
                // Only SIGKILL ends an init from outside: so does the stand-in.
                // SAFETY: signals this very process.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            }
            exit_now(exit_code(ExitStatus::from_raw(status)));
        }
        if Errno::last() != Errno::EINTR {
            exit_now(127);
        }
    }
}

/// The init's life: reaps every process the namespace leaves to it until the command ends,
/// then exits with the command's exit code, which ends the namespace. During a stop
/// ([`STOPPING`]) it first sends what is left in the namespace a SIGTERM (a daemon outside the
/// command's group gets one too) and exits once the namespace is empty; the agent's SIGKILL at
/// the end of the grace period ends it through the stand-in.
#[expect(unsafe_code, reason = "waitpid(2) for the raw status, kill(2)")]
fn reap_as_init(command: libc::pid_t, fd_limit: u64) -> ! {
    close_descriptors_from(3, fd_limit);
    let mut code = None;
    let mut told_the_rest = false;
    loop {
        let mut status = 0;
        // SAFETY: waits for any child of this process, writing into a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            // ECHILD: every process of the namespace descends from the init, so it is empty.
            exit_now(code.unwrap_or(127));
        }
        if pid == command {
            code = Some(exit_code(ExitStatus::from_raw(status)));
        }
        let Some(code) = code else { continue };
        if !STOPPING.load(Ordering::Relaxed) {
            exit_now(code);
        }
        if !told_the_rest {
            told_the_rest = true;
            // SAFETY: kill(-1) from the init reaches every other process of its namespace.
            unsafe { libc::kill(-1, libc::SIGTERM) };
        }
    }
}

#[expect(
    unsafe_code,
    reason = "close_range(2) and close(2) on raw descriptor numbers"
)]
fn close_descriptors_from(first: u32, limit: u64) {
    // SAFETY: closes descriptors only; this process uses none of them afterwards.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) != 0 {
            // Kernels before 5.9: every number below the forker's limit.
            for fd in u64::from(first)..limit.clamp(4096, 1 << 20) {
                libc::close(fd as libc::c_int);
            }
        }
    }
}

/// The hard limit on open descriptors of the calling process, read before an action's own
/// limits replace it (every descriptor it holds is below it).
#[expect(unsafe_code, reason = "getrlimit(2) into a local")]
fn descriptor_limit() -> u64 {
    // SAFETY: async-signal-safe; writes into a local.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_max
        } else {
            1 << 16
        }
    }
}

#[expect(
    unsafe_code,
    reason = "_exit(2): leave without running anything of the parent's"
)]
fn exit_now(code: i32) -> ! {
    // SAFETY: async-signal-safe; never returns.
    unsafe { libc::_exit(code) }
}

/// The open-files limit commands get when the action does not ask for one.
pub fn default_nofile() -> u64 {
    clamp_limit(Resource::RLIMIT_NOFILE, DEFAULT_NOFILE)
}

/// `value`, lowered to the agent's own hard limit unless the agent may raise hard limits
/// (CAP_SYS_RESOURCE; being root is not enough in a container).
fn clamp_limit(resource: Resource, value: u64) -> u64 {
    if can_raise_limits() {
        return value;
    }
    match nix::sys::resource::getrlimit(resource) {
        Ok((_, hard)) => value.min(hard),
        Err(_) => value,
    }
}

/// Whether this process has CAP_SYS_RESOURCE in its effective set.
fn can_raise_limits() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        const CAP_SYS_RESOURCE: u32 = 24;
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
                u64::from_str_radix(hex.trim(), 16).ok()
            })
            .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
    })
}

fn mount(source: Option<&CStr>, target: &CStr, flags: MsFlags) -> Result<(), Errno> {
    nix::mount::mount(source, target, None::<&CStr>, flags, None::<&CStr>)
}

/// Brings up `lo` in a fresh network namespace (it starts down), so commands can still talk to
/// themselves over 127.0.0.1.
#[expect(
    unsafe_code,
    reason = "socket/ioctl/close on a stack ifreq: the only way to set interface flags"
)]
pub(crate) fn loopback_up() -> Result<(), Errno> {
    // SAFETY: plain system calls; `ifreq` is a C struct for which all-zero is valid, and the
    // union member read and written is the one SIOCGIFFLAGS/SIOCSIFFLAGS use.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(Errno::last());
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        request.ifr_name[0] = b'l' as libc::c_char;
        request.ifr_name[1] = b'o' as libc::c_char;
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut request);
        if rc == 0 {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &request);
        }
        let error = Errno::last();
        libc::close(fd);
        if rc < 0 { Err(error) } else { Ok(()) }
    }
}

/// Why this host cannot sandbox commands (see [`probe_namespaces`]).
#[derive(Debug, Error)]
pub enum ProbeError {
    /// The probe's sandbox could not even be prepared.
    #[error(transparent)]
    Prepare(#[from] SpawnError),
    /// Entering the namespaces failed in the probe child (often EPERM: not root, or user
    /// namespaces are off).
    #[error("{0}")]
    Enter(Errno),
    /// The probe child ended some other way than by exiting.
    #[error("probe child ended with {0:?}")]
    Ended(WaitStatus),
    /// Waiting for the probe child failed.
    #[error("waitpid failed: {0}")]
    Wait(Errno),
    /// The probe child could not be forked.
    #[error("fork failed: {0}")]
    Fork(Errno),
}

/// Whether commands run with namespaces also get a PID namespace of their own here: a new
/// PID namespace and a `/proc` mounted for it, tried once in a forked child (a container may
/// allow the other namespaces but not mounting `/proc`). Without it, what a command leaves
/// behind is killed by process group only, and a process that left the group can outlive it.
pub fn pid_namespaces() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        // The network left alone: only what a PID namespace adds is tried.
        let isolation = Isolation {
            namespaces: true,
            network: true,
            ..Isolation::default()
        };
        let probed = Prepared::build(&isolation, None, true)
            .map_err(ProbeError::from)
            .and_then(|prepared| fork_and_enter(&prepared));
        match probed {
            Ok(()) => true,
            Err(reason) => {
                tracing::warn!(
                    %reason,
                    "PID namespaces are not available: a process an action starts outside its \
                     process group can outlive the action"
                );
                false
            }
        }
    })
}

/// Checks, once, whether this host lets the agent run commands in namespaces the way
/// [`LocalRunner`] does (mount and network namespaces, a bind mount on /tmp, loopback up), by
/// doing exactly that in a forked child (then, once, whether it can also give them a PID
/// namespace: [`pid_namespaces`]). `scratch` is an empty directory to bind on /tmp.
/// Blocking; call it from a blocking thread.
pub fn probe_namespaces(scratch: &Path) -> Result<(), ProbeError> {
    let isolation = Isolation {
        namespaces: true,
        network: false,
        private_tmp: Some(scratch.to_owned()),
        ..Isolation::default()
    };
    // Without a PID namespace first: a host that refuses only that still sandboxes.
    let prepared = Prepared::build(&isolation, None, false)?;
    fork_and_enter(&prepared)?;
    pid_namespaces();
    Ok(())
}

#[expect(
    unsafe_code,
    reason = "fork(2) in a threaded process: the child only runs Prepared::enter and _exit"
)]
fn fork_and_enter(prepared: &Prepared) -> Result<(), ProbeError> {
    use nix::sys::wait::waitpid;
    use nix::unistd::ForkResult;
    // SAFETY: the child only calls async-signal-safe code (`Prepared::enter`) and `_exit`.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            let code = match prepared.enter() {
                Ok(()) => 0,
                Err(errno) => errno as i32,
            };
            // SAFETY: `_exit` is async-signal-safe and never returns.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                Ok(WaitStatus::Exited(_, code)) => {
                    return Err(ProbeError::Enter(Errno::from_raw(code)));
                }
                Ok(other) => return Err(ProbeError::Ended(other)),
                Err(Errno::EINTR) => continue,
                Err(error) => return Err(ProbeError::Wait(error)),
            }
        },
        Err(error) => Err(ProbeError::Fork(error)),
    }
}

/// Resolves `argv[0]` as REAPI 2.3 says: a path with a `/` is taken relative to the working
/// directory `cwd` (or as is, if absolute); a bare name is looked up in the command's own
/// `PATH` (its relative entries taken relative to `cwd`) if it sets one, else taken relative to
/// `cwd`. Never uses the agent's own `PATH`.
pub fn resolve_program(
    argv0: &str,
    env: &[(String, String)],
    cwd: &Path,
) -> Result<PathBuf, SpawnError> {
    if argv0.is_empty() {
        return Err(SpawnError::Invalid("argv[0] is empty".into()));
    }
    if argv0.contains('/') {
        return Ok(cwd.join(argv0));
    }
    let Some((_, path)) = env.iter().rev().find(|(name, _)| name == "PATH") else {
        return Ok(cwd.join(argv0));
    };
    for dir in path.split(':') {
        // An empty PATH entry means the current directory.
        let candidate = cwd.join(dir).join(argv0);
        let executable = std::fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if executable {
            return Ok(candidate);
        }
    }
    Err(SpawnError::NotFound {
        program: argv0.to_owned(),
        searched: format!("PATH={path}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn resolves_argv0_like_reapi() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path();
        std::fs::create_dir(cwd.join("bin")).unwrap();
        std::fs::write(cwd.join("bin/tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(cwd.join("bin/tool"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::write(cwd.join("bin/data"), "").unwrap();

        assert_eq!(
            resolve_program("/bin/sh", &[], cwd).unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(
            resolve_program("bin/tool", &[], cwd).unwrap(),
            cwd.join("bin/tool")
        );
        assert_eq!(resolve_program("tool", &[], cwd).unwrap(), cwd.join("tool"));
        assert_eq!(
            resolve_program("tool", &env(&[("PATH", "/nonexistent:bin")]), cwd).unwrap(),
            cwd.join("bin/tool")
        );
        assert_eq!(
            resolve_program("sh", &env(&[("PATH", "/usr/bin:/bin")]), cwd).unwrap(),
            PathBuf::from("/usr/bin/sh")
        );
        let err = resolve_program("data", &env(&[("PATH", "bin")]), cwd).unwrap_err();
        assert!(err.is_user_error());
        assert_eq!(err.to_string(), "command not found: \"data\" (PATH=bin)");
        assert!(resolve_program("", &[], cwd).is_err());
    }

    #[test]
    fn a_probe_that_cannot_enter_says_why() {
        // Not root: unshare fails; root: there is nothing to bind on /tmp. Either way the
        // child's errno comes back, typed.
        let error = probe_namespaces(Path::new("/nonexistent/tessera-probe")).unwrap_err();
        assert!(matches!(error, ProbeError::Enter(_)), "{error:?}");
        assert!(!error.to_string().is_empty());
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 128 + 9);
    }

    #[test]
    fn reexposes_an_exec_root_under_tmp() {
        let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
        let root = dir.path().join("x/0/root");
        let tmp = dir.path().join("x/0/tmp");
        std::fs::create_dir_all(&root).unwrap();
        let isolation = Isolation {
            namespaces: true,
            network: false,
            private_tmp: Some(tmp.clone()),
            exec_root: Some(root.clone()),
            ..Isolation::default()
        };
        let prepared = Prepared::new(&isolation, None).unwrap();
        let target = tmp.join(root.strip_prefix("/tmp").unwrap());
        assert_eq!(prepared.binds, [bind(&root, &target)]);
        assert!(target.is_dir(), "the mount point is made before the fork");

        let elsewhere = Isolation {
            exec_root: Some(PathBuf::from("/var/lib/agent/x/0/root")),
            ..isolation
        };
        assert!(Prepared::new(&elsewhere, None).unwrap().binds.is_empty());
    }

    fn bind(source: &Path, target: &Path) -> Bind {
        Bind {
            source: c_path(source).unwrap(),
            target: c_path(target).unwrap(),
        }
    }

    #[test]
    fn fixed_exec_roots_are_bound_after_their_inner_mounts() {
        let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
        let root = dir.path().join("x/0/root");
        let tmp = dir.path().join("x/0/tmp");
        let persist = dir.path().join("persist/abc");
        std::fs::create_dir_all(&root).unwrap();
        let at = PathBuf::from("/tmp/tessera-unit/repo");
        let isolation = Isolation {
            namespaces: true,
            private_tmp: Some(tmp.clone()),
            exec_root: Some(root.clone()),
            exec_root_at: Some(at.clone()),
            binds: vec![(persist.clone(), root.join("target"))],
            ..Isolation::default()
        };
        let prepared = Prepared::new(&isolation, Some(&at)).unwrap();
        let at_in_tmp = tmp.join("tessera-unit/repo");
        let root_in_tmp = tmp.join(root.strip_prefix("/tmp").unwrap());
        assert_eq!(
            prepared.binds,
            [
                bind(&persist, &root.join("target")),
                bind(&root, &at_in_tmp),
                bind(&root, &root_in_tmp),
            ]
        );
        assert!(at_in_tmp.is_dir(), "the mount point is in the private /tmp");
        assert!(!at.exists(), "nothing is made in the host's /tmp");
        assert_eq!(prepared.cwd.unwrap().as_bytes(), at.as_os_str().as_bytes());

        // Without namespaces nothing is mounted: the caller links the path instead.
        let plain = Isolation {
            namespaces: false,
            ..isolation
        };
        assert!(Prepared::new(&plain, None).unwrap().binds.is_empty());
    }
}

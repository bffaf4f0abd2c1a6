//! Builtin step actions: an action whose command is `tessera-builtin run-step <json>` (a job's
//! prepare, list or batch step, see `tessera_runners::step`) is not started as a program; the
//! agent runs the step itself with [`run_step`].
//!
//! The step's commands go through the same [`ProcessRunner`] as any action's command, with the
//! action's environment (plus each command's own variables), isolation, limits and
//! cancellation, and each in its own process group under its own timeout. Afterwards the agent
//! writes the [`StepReport`] to `.tessera/report.json` in the exec root and, for a prepare
//! step, puts the files it reported in `.tessera/prepared/` without copying their bytes where
//! the file system allows ([`keep_prepared_file`]); the lease pipeline then uploads them as the
//! action's declared outputs and keeps them in the agent's cache. A step whose tool failed ends with exit code 1 and a
//! [`StepReport::Failed`]: the tool's failure, not the agent's (no infrastructure retry), and
//! never cached.
//!
//! Prepare steps may ask to keep directories (cargo's `target`) between runs:
//! [`lay_out_persist`] puts an agent-local directory there, bind-mounted with namespaces or
//! symlinked without.
//!
//! A prepared file is a reflink of the reported one (its own inode sharing the extents,
//! copy-on-write: nothing done to either side ever shows in the other) where the file system
//! has them (btrfs, XFS), else a hard link (same inode), else a copy. A hard link is safe for
//! cargo's persistent `target`: rustc's linkers never rewrite an output in place (GNU ld and
//! gold unlink it first, lld and mold write a new file and rename it; cargo removes a file
//! before it hard-links an uplifted copy), so a rebuild gives the path a new inode and the
//! prepared link keeps the old bytes, as checked by rebuilding a crate with a link held to its
//! test binary. What must never happen to that shared inode is a change of mode: rustc refuses
//! to overwrite a read-only output ("output file ... is not writeable"). So nothing on the
//! agent changes the mode of a file with other links: masking replaces a file with a masked
//! copy, and the cache copies such a file in rather than linking it (see `cache`).
//!
//! Does not lay out inputs, upload or report to the coordinator (see `lease`).

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tessera_runners::step::{
    ExecuteError, PREPARED_DIR, REPORT_PATH, SCRATCH_DIR, Spawn, StepReport, StepSpec,
    execute_step, prepared_path,
};
use tessera_runners::{
    CommandOutput, CommandSpec, Prepared, Termination, TestResult, WORKER_REPLIES_ENV,
    WORKER_REQUESTS_ENV, WorkerInvocation,
};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::exec_root::{PathMap, persist_dir};
use crate::mask::SecretMask;
use crate::sandbox::{ProcessExit, ProcessRunner, ProcessSpec, SpawnError, resolve_program};
use crate::workdir::{LeaseDirs, remove_tree};
use crate::worker::{LeaseWorker, Served, Worker, WorkerHome, fifo_paths};

/// Most bytes of a command's stdout (and, separately, stderr) a step keeps: the end of it.
pub const OUTPUT_LIMIT: u64 = 4 * 1024 * 1024;

/// Longest command line shown in the step's log.
const LOG_ARGV_CHARS: usize = 300;

/// How a step action ended.
#[derive(Debug)]
pub enum StepEnd {
    /// The step ran and its report is written (a failed tool included).
    Reported(StepReport),
    /// The action's own timeout passed while a command was running.
    TimedOut {
        /// The action's timeout.
        after: Duration,
    },
    /// The lease was cancelled.
    Cancelled,
}

/// Why a step could not be run: the agent's trouble, not the step's.
#[derive(Debug, Error)]
pub enum StepError {
    /// A command could not be started for a reason that is not the action's fault, its output
    /// could not be read, or the step's scratch files could not be written.
    #[error("failed to run the step: {0}")]
    Run(#[source] ExecuteError<CommandError>),
    /// A local filesystem operation failed.
    #[error("failed to {op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Everything a step needs from its lease.
pub struct StepContext<'a> {
    /// The lease's secret values, masked in test results, the report and the step's log.
    pub mask: &'a SecretMask,
    /// Runs the commands.
    pub runner: &'a dyn ProcessRunner,
    /// The action's command as the lease pipeline prepared it: environment, isolation, limits,
    /// and the action's timeout (a deadline for the whole step).
    pub template: &'a ProcessSpec,
    /// Where the commands see the exec root, and where the agent finds what they see.
    pub map: &'a PathMap,
    /// The lease's directories.
    pub dirs: &'a LeaseDirs,
    /// The lease's cancellation.
    pub cancel: &'a CancellationToken,
    /// Receives the results of a batch step as they are read (JSON array of `TestResult`).
    pub results: &'a (dyn Fn(String) + Send + Sync),
    /// For a batch step that names its job's worker: the lease's hold on a long-lived worker
    /// (see `worker`); `None` runs every batch as a process of its own.
    pub worker: Option<&'a LeaseWorker>,
}

/// Runs `step`: its commands, then the report and the prepared files. Writes a short log to
/// the lease's stdout file.
pub async fn run_step(step: &StepSpec, ctx: &StepContext<'_>) -> Result<StepEnd, StepError> {
    let spawner = SandboxSpawner {
        ctx,
        deadline: ctx.template.timeout.map(|t| (Instant::now() + t, t)),
        seq: AtomicU32::new(0),
        log: Mutex::new(String::new()),
    };
    let scratch = ctx.dirs.root.join(SCRATCH_DIR);
    let ran = execute_step(step, &scratch, &spawner).await;
    if ctx.cancel.is_cancelled() {
        return Ok(StepEnd::Cancelled);
    }
    let report = match ran {
        Ok(report) => report,
        Err(ExecuteError::Spawn(CommandError::Cancelled)) => return Ok(StepEnd::Cancelled),
        Err(ExecuteError::Spawn(CommandError::ActionTimedOut { after })) => {
            return Ok(StepEnd::TimedOut { after });
        }
        // The tool is not there: the step's failure (reported), not the agent's.
        Err(ExecuteError::Spawn(CommandError::CouldNotStart { program, source }))
            if source.is_user_error() =>
        {
            StepReport::Failed {
                error: format!("could not start {program}: {source}; is it installed and on PATH?"),
            }
        }
        // The agent could not start it, read its output or write the scratch files.
        Err(error) => return Err(StepError::Run(error)),
    };
    let mut log = spawner
        .log
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let map = ctx.map.clone();
    let dirs = ctx.dirs.clone();
    let mask = ctx.mask.clone();
    tokio::task::spawn_blocking(move || {
        let report = match report {
            StepReport::Prepared { prepared } => match copy_prepared(&prepared, &map, &dirs.root) {
                Ok(()) => StepReport::Prepared { prepared },
                Err(error) => StepReport::Failed {
                    error: error.to_string(),
                },
            },
            other => other,
        };
        let report = mask_report(report, &mask);
        log.push_str(&summary(&report));
        mask.mask_in_place(&mut log);
        write_report(&report, &dirs.root)?;
        std::fs::write(&dirs.stdout, log.as_bytes()).map_err(io_error("write the step log"))?;
        std::fs::write(&dirs.stderr, b"").map_err(io_error("write the step log"))?;
        Ok(StepEnd::Reported(report))
    })
    .await
    .map_err(|e| StepError::Io {
        op: "finish the step".into(),
        source: io::Error::other(e.to_string()),
    })?
}

/// Why one of a step's commands did not run to an end: the step spawner's error, which
/// `execute_step` hands back to [`run_step`] as it is.
#[derive(Debug, Error)]
pub enum CommandError {
    /// The lease was cancelled while the command ran.
    #[error("cancelled")]
    Cancelled,
    /// The action's own timeout passed (not the command's: that is a test's timeout).
    #[error("the action timed out after {after:?}")]
    ActionTimedOut {
        /// The action's timeout.
        after: Duration,
    },
    /// The command could not be started.
    #[error("could not start {program}: {source}")]
    CouldNotStart {
        /// Its `argv[0]`.
        program: String,
        /// Why.
        #[source]
        source: SpawnError,
    },
    /// The command ran, but its output could not be read back.
    #[error("failed to read the output of {program}: {source}")]
    Output {
        /// Its `argv[0]`.
        program: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Runs a step's commands through the lease's process runner.
struct SandboxSpawner<'a> {
    ctx: &'a StepContext<'a>,
    /// When the action's timeout passes, and the timeout.
    deadline: Option<(Instant, Duration)>,
    seq: AtomicU32,
    log: Mutex<String>,
}

impl Spawn for SandboxSpawner<'_> {
    type Error = CommandError;

    async fn spawn(
        &self,
        command: &CommandSpec,
        timeout: Option<Duration>,
    ) -> Result<CommandOutput, CommandError> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let program = || command.argv.first().cloned().unwrap_or_default();
        let spec = self.process_spec(command, n)?;
        // The command's own timeout, unless the action's comes first.
        let (limit, action_bound) = self.limit(timeout);
        let action_timed_out = || CommandError::ActionTimedOut {
            after: self.deadline.map(|(_, t)| t).unwrap_or_default(),
        };
        if limit.is_some_and(|l| l.is_zero()) && action_bound {
            return Err(action_timed_out());
        }
        let spec = ProcessSpec {
            timeout: limit,
            ..spec
        };
        let started = Instant::now();
        let exit = self.ctx.runner.run(&spec, self.ctx.cancel).await;
        let elapsed = started.elapsed();
        let termination = match exit {
            Ok(ProcessExit::Exited { exit_code }) => Termination::Exited(exit_code),
            Ok(ProcessExit::TimedOut { .. }) if action_bound => return Err(action_timed_out()),
            Ok(ProcessExit::TimedOut { .. }) => Termination::TimedOut,
            Ok(ProcessExit::Cancelled) => return Err(CommandError::Cancelled),
            Err(source) => {
                return Err(CommandError::CouldNotStart {
                    program: program(),
                    source,
                });
            }
        };
        let (stdout_path, stderr_path) = (spec.stdout.clone(), spec.stderr.clone());
        let output_error = |source| CommandError::Output {
            program: program(),
            source,
        };
        let (stdout, stderr) = tokio::task::spawn_blocking(move || {
            let read = |path: &Path| {
                let text = read_tail(path, OUTPUT_LIMIT);
                let _ = std::fs::remove_file(path);
                text
            };
            Ok::<_, io::Error>((read(&stdout_path)?, read(&stderr_path)?))
        })
        .await
        .map_err(|e| output_error(io::Error::other(e)))?
        .map_err(output_error)?;
        self.note(&command.argv, termination, elapsed);
        Ok(CommandOutput {
            termination,
            stdout,
            stderr,
            elapsed,
        })
    }

    async fn worker_batch(
        &self,
        start: &WorkerInvocation,
        request: &str,
        timeout: Duration,
    ) -> Result<Option<(CommandOutput, bool)>, CommandError> {
        let Some(lease_worker) = self.ctx.worker else {
            return Ok(None);
        };
        let program = || start.command.argv.first().cloned().unwrap_or_default();
        let (limit, action_bound) = self.limit(Some(timeout));
        let action_timed_out = || CommandError::ActionTimedOut {
            after: self.deadline.map(|(_, t)| t).unwrap_or_default(),
        };
        if limit.is_some_and(|l| l.is_zero()) && action_bound {
            return Err(action_timed_out());
        }
        let mut held = lease_worker.held.lock().await;
        let mut started = false;
        let reusable = match held.as_mut() {
            Some(worker) => worker.serves(&start.command),
            None => false,
        };
        if !reusable {
            // A worker for another command (another rootdir), or one that died idle.
            *held = None;
            let n = self.seq.fetch_add(1, Ordering::Relaxed);
            let Some(worker) = self.start_worker(lease_worker, start, n).await? else {
                return Ok(None);
            };
            *held = Some(worker);
            started = true;
        }
        let Some(worker) = held.as_mut() else {
            return Ok(None);
        };
        let ran = worker
            .run(request, limit, self.ctx.cancel, OUTPUT_LIMIT)
            .await
            .map_err(|source| CommandError::Output {
                program: program(),
                source,
            })?;
        let termination = match ran.served {
            Served::Replied => Termination::Exited(0),
            Served::Exited(code) => Termination::Exited(code),
            Served::TimedOut if action_bound => {
                *held = None;
                return Err(action_timed_out());
            }
            Served::TimedOut => Termination::TimedOut,
            Served::Cancelled => {
                *held = None;
                return Err(CommandError::Cancelled);
            }
        };
        if !matches!(ran.served, Served::Replied) {
            *held = None;
        }
        let mut argv = vec!["(worker)".to_owned()];
        argv.extend(start.command.argv.iter().cloned());
        self.note(&argv, termination, ran.elapsed);
        Ok(Some((
            CommandOutput {
                termination,
                stdout: ran.stdout,
                stderr: ran.stderr,
                elapsed: ran.elapsed,
            },
            started,
        )))
    }

    async fn warm_worker(&self, start: &WorkerInvocation) -> Result<bool, CommandError> {
        let Some(lease_worker) = self.ctx.worker else {
            return Ok(false);
        };
        let mut held = lease_worker.held.lock().await;
        if held
            .as_mut()
            .is_some_and(|worker| worker.serves(&start.command))
        {
            return Ok(false);
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        // It collects while it waits in the pool for the job's first batch.
        *held = self.start_worker(lease_worker, start, n).await?;
        Ok(held.is_some())
    }

    fn results(&self, results: &[TestResult]) {
        if results.is_empty() {
            return;
        }
        let masked;
        let results = if self.ctx.mask.is_empty() {
            results
        } else {
            masked = masked_results(results.to_vec(), self.ctx.mask);
            &masked
        };
        match serde_json::to_string(results) {
            Ok(json) => (self.ctx.results)(json),
            Err(error) => tracing::warn!(%error, "failed to encode test results for progress"),
        }
    }
}

impl SandboxSpawner<'_> {
    /// A command's time limit: its own `timeout` unless the action's deadline comes first,
    /// and whether the action's deadline is the one that applies.
    fn limit(&self, timeout: Option<Duration>) -> (Option<Duration>, bool) {
        let left = self
            .deadline
            .map(|(at, _)| at.saturating_duration_since(Instant::now()));
        match (timeout, left) {
            (Some(own), Some(left)) if left < own => (Some(left), true),
            (None, Some(left)) => (Some(left), true),
            (own, _) => (own, false),
        }
    }

    /// Starts a worker for `start` in the lease's directories, named `n` among the step's
    /// commands; `None` when the process runner keeps no long-lived processes.
    async fn start_worker(
        &self,
        lease_worker: &LeaseWorker,
        start: &WorkerInvocation,
        n: u32,
    ) -> Result<Option<Worker>, CommandError> {
        let could_not_start = |source| CommandError::CouldNotStart {
            program: start.command.argv.first().cloned().unwrap_or_default(),
            source,
        };
        let write_error = |path: &Path, source| {
            could_not_start(SpawnError::Prepare {
                path: path.to_owned(),
                source,
            })
        };
        std::fs::create_dir_all(&start.dir).map_err(|e| write_error(&start.dir, e))?;
        for file in &start.files {
            std::fs::write(&file.path, &file.contents).map_err(|e| write_error(&file.path, e))?;
        }
        let mut spec = self.process_spec(&start.command, n)?;
        for (name, dir) in &start.prepend_paths {
            let dir = dir.display().to_string();
            match spec.env.iter_mut().find(|(k, _)| k == name) {
                Some((_, value)) if !value.is_empty() => *value = format!("{dir}:{value}"),
                Some((_, value)) => *value = dir,
                None => spec.env.push((name.clone(), dir)),
            }
        }
        let (requests, replies) = fifo_paths(&start.dir);
        spec.env
            .retain(|(k, _)| k != WORKER_REQUESTS_ENV && k != WORKER_REPLIES_ENV);
        spec.env.push((
            WORKER_REQUESTS_ENV.to_owned(),
            requests.display().to_string(),
        ));
        spec.env
            .push((WORKER_REPLIES_ENV.to_owned(), replies.display().to_string()));
        spec.stdout = self.ctx.dirs.base.join(format!("worker-{n}.stdout"));
        spec.stderr = self.ctx.dirs.base.join(format!("worker-{n}.stderr"));
        let home = WorkerHome {
            dirs: self.ctx.dirs.clone(),
            template: self.ctx.template.clone(),
            map: self.ctx.map.clone(),
        };
        let worker = Worker::start(
            &lease_worker.pool,
            self.ctx.runner,
            &start.command,
            &start.dir,
            spec,
            home,
        )
        .await
        .map_err(could_not_start)?;
        if worker.is_some() {
            tracing::info!(
                program = %start.command.argv.first().map_or("", String::as_str),
                dir = %self.ctx.dirs.base.display(),
                live = lease_worker.pool.live(),
                "started a test worker"
            );
        }
        Ok(worker)
    }

    /// The process for `command`: the action's environment with the command's on top (and
    /// `PWD`), its working directory (the exec root if it names none), its program looked up
    /// as the command will see it.
    fn process_spec(&self, command: &CommandSpec, n: u32) -> Result<ProcessSpec, CommandError> {
        let template = self.ctx.template;
        let map = self.ctx.map;
        let could_not_start = |source| CommandError::CouldNotStart {
            program: command.argv.first().cloned().unwrap_or_default(),
            source,
        };
        let argv0 = command
            .argv
            .first()
            .ok_or_else(|| could_not_start(SpawnError::NoArguments))?;
        let mut env: Vec<(String, String)> = template
            .env
            .iter()
            .filter(|(name, _)| !command.env.contains_key(name))
            .cloned()
            .collect();
        env.extend(command.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let cwd = match &command.cwd {
            Some(dir) => map.seen_root().join(dir),
            None => map.seen_root().to_owned(),
        };
        // Tools that ask the shell where they are get the path they were started at, even
        // where that is a symlink (a fixed exec root without namespaces).
        if !env.iter().any(|(name, _)| name == "PWD") {
            env.push(("PWD".to_owned(), cwd.display().to_string()));
        }
        // The agent looks the program up where it can see it, then names it as the command
        // will see it.
        let lookup_env: Vec<(String, String)> = env
            .iter()
            .map(|(name, value)| {
                if name != "PATH" {
                    return (name.clone(), value.clone());
                }
                let local: Vec<String> = value
                    .split(':')
                    .map(|dir| {
                        if dir.starts_with('/') {
                            map.to_local(Path::new(dir)).display().to_string()
                        } else {
                            dir.to_owned()
                        }
                    })
                    .collect();
                (name.clone(), local.join(":"))
            })
            .collect();
        let program =
            resolve_program(argv0, &lookup_env, &map.to_local(&cwd)).map_err(could_not_start)?;
        Ok(ProcessSpec {
            program: map.to_seen(&program),
            argv: command.argv.clone(),
            env,
            cwd,
            stdout: self.ctx.dirs.base.join(format!("step-{n}.stdout")),
            stderr: self.ctx.dirs.base.join(format!("step-{n}.stderr")),
            timeout: None,
            isolation: template.isolation.clone(),
        })
    }

    /// Adds a line about one command to the step's log.
    fn note(&self, argv: &[String], termination: Termination, elapsed: Duration) {
        let mut line = argv.join(" ");
        if line.chars().count() > LOG_ARGV_CHARS {
            line = line.chars().take(LOG_ARGV_CHARS).collect::<String>() + "...";
        }
        let mut log = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        log.push_str(&format!(
            "ran {line}: {termination} after {:.2}s\n",
            elapsed.as_secs_f64()
        ));
    }
}

/// The last `limit` bytes of a file, from the first line that starts inside them, decoded
/// lossily.
fn read_tail(path: &Path, limit: u64) -> io::Result<String> {
    read_since(path, 0, limit)
}

/// What `path` holds after byte `from`: at most its last `limit` bytes, from the first line
/// that starts inside them, decoded lossily; empty if the file does not exist.
pub(crate) fn read_since(path: &Path, from: u64, limit: u64) -> io::Result<String> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound && from > 0 => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = from.max(len.saturating_sub(limit));
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    if start > from
        && let Some(newline) = bytes.iter().position(|&b| b == b'\n')
    {
        bytes.drain(..=newline);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Why the files a prepare step reported could not be kept: the step's failure (its report
/// becomes [`StepReport::Failed`] with this message), not the agent's.
#[derive(Debug, Error)]
enum KeepPreparedError {
    /// A reported file lies outside the exec root, where later steps could not see it.
    #[error(
        "the prepare step reported {}, which is outside the exec root {}{hint}",
        .file.display(),
        .root.display()
    )]
    Outside {
        /// The file as reported.
        file: PathBuf,
        /// The exec root as the step saw it.
        root: PathBuf,
        /// What probably happened, or empty.
        hint: &'static str,
    },
    /// A reported file could not be copied.
    #[error("could not keep the prepared file {}: {source}", .file.display())]
    File {
        /// The file as reported.
        file: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A reported directory could not be created.
    #[error("could not keep the prepared directory {}: {source}", .dir.display())]
    Dir {
        /// The directory as reported.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Why a reported file under the agent's own work directory is outside the exec root.
const SEEN_THROUGH_HINT: &str = "; the tool saw through the exec root to this agent's work \
     directory, which happens without a mount namespace: cargo and nextest jobs need agents \
     with namespaces (run `tessera agent` as root)";

/// Puts the files a prepare step reported into `<lease root>/PREPARED_DIR`, at their paths
/// relative to the exec root, keeping their modes (see [`keep_prepared_file`]). Says which
/// file is missing or outside.
fn copy_prepared(
    prepared: &Prepared,
    map: &PathMap,
    lease_root: &Path,
) -> Result<(), KeepPreparedError> {
    let root = map.seen_root();
    for file in &prepared.files {
        let Some(relative) = prepared_path(root, file) else {
            return Err(KeepPreparedError::Outside {
                file: file.clone(),
                root: root.to_owned(),
                hint: if file.starts_with(lease_root) {
                    SEEN_THROUGH_HINT
                } else {
                    ""
                },
            });
        };
        let target = lease_root.join(PREPARED_DIR).join(&relative);
        target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| keep_prepared_file(&map.to_local(file), &target))
            .map_err(|source| KeepPreparedError::File {
                file: file.clone(),
                source,
            })?;
    }
    // Directories the later steps expect, such as CARGO_TARGET_TMPDIR: empty, so the output
    // tree carries them. One outside the exec root could not be seen later anyway.
    for dir in &prepared.dirs {
        let Some(relative) = prepared_path(root, dir) else {
            continue;
        };
        std::fs::create_dir_all(lease_root.join(PREPARED_DIR).join(&relative)).map_err(
            |source| KeepPreparedError::Dir {
                dir: dir.clone(),
                source,
            },
        )?;
    }
    Ok(())
}

/// How [`keep_prepared_file`] placed a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreparedBy {
    /// A reflink: a new inode sharing the bytes, copy-on-write.
    Reflink,
    /// A hard link: the same inode.
    HardLink,
    /// A copy of the bytes.
    Copy,
}

/// Places the file `from` at `to` (replacing a file there) as a reflink, else a hard link,
/// else a copy; see the module docs for why a hard link is safe. Keeps the mode. Blocking.
pub fn keep_prepared_file(from: &Path, to: &Path) -> io::Result<PreparedBy> {
    match std::fs::remove_file(to) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    if std::fs::symlink_metadata(from)?.file_type().is_symlink() {
        // A link would copy the symlink, not the file it names (`link(2)` does not follow
        // symlinks): the bytes are copied, as they always were.
        std::fs::copy(from, to)?;
        return Ok(PreparedBy::Copy);
    }
    if reflink(from, to)? {
        return Ok(PreparedBy::Reflink);
    }
    match std::fs::hard_link(from, to) {
        Ok(()) => return Ok(PreparedBy::HardLink),
        // Another file system, the link-count limit, or links not allowed here.
        Err(error) if link_refused(&error) => {}
        Err(error) => return Err(error),
    }
    std::fs::copy(from, to)?;
    Ok(PreparedBy::Copy)
}

/// Makes `to` a reflink of `from` (`FICLONE`) with `from`'s mode; `false` (and no `to`) where
/// the file system cannot.
#[expect(
    unsafe_code,
    reason = "the FICLONE ioctl has no safe wrapper in std, libc or nix"
)]
fn reflink(from: &Path, to: &Path) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let source = std::fs::File::open(from)?;
    let mode = source.metadata()?.permissions().mode() & 0o7777;
    let target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(to)?;
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are open
    // for the duration of the call.
    let cloned = unsafe { libc::ioctl(target.as_raw_fd(), libc::FICLONE, source.as_raw_fd()) };
    if cloned == 0 {
        // The mode given at creation is cut by the umask; the prepared file must keep its own.
        target.set_permissions(std::fs::Permissions::from_mode(mode))?;
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    drop(target);
    std::fs::remove_file(to)?;
    match error.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY | libc::ENOSYS) => {
            Ok(false)
        }
        _ => Err(error),
    }
}

/// Errors after which a copy can stand in for a hard link.
fn link_refused(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EXDEV | libc::EMLINK | libc::EPERM | libc::EOPNOTSUPP)
    )
}

fn write_report(report: &StepReport, lease_root: &Path) -> Result<(), StepError> {
    let path = lease_root.join(REPORT_PATH);
    let json = serde_json::to_vec(report).map_err(|e| StepError::Io {
        op: "encode the step report".into(),
        source: io::Error::other(e),
    })?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_error("create the report directory"))?;
    }
    std::fs::write(&path, json).map_err(io_error("write the step report"))
}

/// `report` with the secret values masked in what the tool printed: test output and failure
/// messages. Test names and paths are not masked: they come from the source, not from a run.
fn mask_report(report: StepReport, mask: &SecretMask) -> StepReport {
    if mask.is_empty() {
        return report;
    }
    match report {
        StepReport::Ran { results, startups } => StepReport::Ran {
            results: masked_results(results, mask),
            startups,
        },
        StepReport::Failed { error } => StepReport::Failed {
            error: mask.mask_str(&error),
        },
        other => other,
    }
}

/// `results` with the secret values masked in their output.
fn masked_results(mut results: Vec<TestResult>, mask: &SecretMask) -> Vec<TestResult> {
    for result in &mut results {
        mask.mask_in_place(&mut result.output);
    }
    results
}

/// The last line of the step's log.
fn summary(report: &StepReport) -> String {
    match report {
        StepReport::Prepared { prepared } => {
            format!("prepared: {} files kept\n", prepared.files.len())
        }
        StepReport::Listed { tests } => format!("listed {} tests\n", tests.len()),
        StepReport::Ran { results, .. } => format!("ran {} tests\n", results.len()),
        StepReport::Failed { error } => {
            let first = error.lines().next().unwrap_or_default();
            format!("step failed: {first}\n")
        }
    }
}

fn io_error(op: &str) -> impl FnOnce(io::Error) -> StepError + '_ {
    move |source| StepError::Io {
        op: op.to_owned(),
        source,
    }
}

/// Directories a prepare step keeps between runs, as laid out for one lease.
#[derive(Debug, Default)]
pub struct Persisted {
    /// With namespaces: (persistent directory, its place in the lease's exec root) to
    /// bind-mount.
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// (path relative to the exec root, persistent directory), for a [`PathMap`].
    pub mounts: Vec<(PathBuf, PathBuf)>,
}

/// Puts the persistent directory of each of a prepare step's `persist` paths in place under
/// `lease_root`, replacing whatever the input root had there: a mount point for a bind mount
/// with `namespaces`, else a symlink. The directories live in `persist_base`, named after the
/// job's `trust_domain`, `exec_root` (the path the step sees) and the relative path (see
/// [`persist_dir`]). Paths must have been checked
/// with [`check_persist_paths`]. Blocking.
pub fn lay_out_persist(
    step: &StepSpec,
    persist_base: &Path,
    trust_domain: &str,
    exec_root: &Path,
    lease_root: &Path,
    namespaces: bool,
) -> io::Result<Persisted> {
    let mut persisted = Persisted::default();
    let StepSpec::Prepare { persist, .. } = step else {
        return Ok(persisted);
    };
    for relative in persist {
        let dir = persist_dir(persist_base, trust_domain, exec_root, relative);
        std::fs::create_dir_all(&dir)?;
        let place = lease_root.join(relative);
        let existing = std::fs::symlink_metadata(&place).ok();
        if namespaces {
            if existing.is_some_and(|m| !m.is_dir()) {
                std::fs::remove_file(&place)?;
            }
            std::fs::create_dir_all(&place)?;
            persisted.binds.push((dir.clone(), place));
        } else {
            match existing {
                Some(meta) if meta.is_dir() => remove_tree(&place)?,
                Some(_) => std::fs::remove_file(&place)?,
                None => {}
            }
            if let Some(parent) = place.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::os::unix::fs::symlink(&dir, &place)?;
        }
        persisted.mounts.push((relative.clone(), dir));
    }
    Ok(persisted)
}

/// A prepare step's `persist` path that the agent may not keep: the action's fault.
#[derive(Debug, Error)]
#[error(
    "persist path {:?} must be a relative path of plain names outside .tessera",
    .path.display().to_string()
)]
pub struct PersistPathError {
    /// The path as the step gave it.
    pub path: PathBuf,
}

/// Checks a step's `persist` paths: relative, plain names only, not empty, and not inside
/// `.tessera` (the agent's own files).
pub fn check_persist_paths(step: &StepSpec) -> Result<(), PersistPathError> {
    let StepSpec::Prepare { persist, .. } = step else {
        return Ok(());
    };
    for path in persist {
        let plain = path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        let agents_own = path.starts_with(".tessera");
        if !plain || path.as_os_str().is_empty() || agents_own {
            return Err(PersistPathError { path: path.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_runners::{CommandRunner, RunnerConfig};

    fn prepare(persist: &[&str]) -> StepSpec {
        let runner = CommandRunner::new("/r", vec!["ls".into()], vec!["{tests}".into()]).unwrap();
        StepSpec::Prepare {
            runner: RunnerConfig::Command(runner),
            persist: persist.iter().map(PathBuf::from).collect(),
        }
    }

    #[test]
    fn persist_paths_are_plain_relative_names() {
        assert!(check_persist_paths(&prepare(&["target", "build/out"])).is_ok());
        for bad in ["/abs", "../up", "a/../b", "", ".tessera/x", "./x"] {
            assert!(check_persist_paths(&prepare(&[bad])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refused_persist_paths_are_named() {
        let error = check_persist_paths(&prepare(&["target", "/abs"])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "persist path \"/abs\" must be a relative path of plain names outside .tessera"
        );
    }

    #[test]
    fn prepared_files_are_kept_or_the_failure_says_which() {
        let dir = tempfile::tempdir().unwrap();
        let lease_root = dir.path().join("root");
        std::fs::create_dir_all(lease_root.join("target")).unwrap();
        std::fs::write(lease_root.join("target/t"), "bin").unwrap();
        let seen = Path::new("/tmp/t/repo");
        let map = PathMap::new(seen, &lease_root);
        let kept = Prepared {
            files: vec![seen.join("target/t")],
            ..Prepared::default()
        };
        copy_prepared(&kept, &map, &lease_root).unwrap();
        assert!(lease_root.join(PREPARED_DIR).join("target/t").is_file());
        // Reported twice (a retried step): replaced, not refused.
        copy_prepared(&kept, &map, &lease_root).unwrap();

        // Seen through the exec root into the agent's own directory: say why.
        let through = Prepared {
            files: vec![lease_root.join("target/t")],
            ..Prepared::default()
        };
        let error = copy_prepared(&through, &map, &lease_root).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "the prepare step reported {}, which is outside the exec root /tmp/t/repo{}",
                lease_root.join("target/t").display(),
                SEEN_THROUGH_HINT
            )
        );
        let gone = Prepared {
            files: vec![seen.join("target/gone")],
            ..Prepared::default()
        };
        let error = copy_prepared(&gone, &map, &lease_root).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("could not keep the prepared file /tmp/t/repo/target/gone: "),
            "{error}"
        );
    }

    #[test]
    fn prepared_files_share_bytes_without_a_copy_and_keep_their_mode() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let built = dir.path().join("target/debug/deps/suite-0123");
        std::fs::create_dir_all(built.parent().unwrap()).unwrap();
        std::fs::write(&built, b"\x7fELF test binary").unwrap();
        std::fs::set_permissions(&built, std::fs::Permissions::from_mode(0o750)).unwrap();
        let prepared = dir.path().join("prepared-suite");
        let by = keep_prepared_file(&built, &prepared).unwrap();
        // Same file system here: never a copy.
        assert_ne!(by, PreparedBy::Copy);
        let (a, b) = (
            std::fs::metadata(&built).unwrap(),
            std::fs::metadata(&prepared).unwrap(),
        );
        assert_eq!(b.permissions().mode() & 0o7777, 0o750);
        assert_eq!(by == PreparedBy::HardLink, a.ino() == b.ino());
        assert_eq!(std::fs::read(&prepared).unwrap(), b"\x7fELF test binary");
        // A rebuild replaces the built file, as rustc's linkers do: the prepared one keeps
        // the bytes it had.
        std::fs::remove_file(&built).unwrap();
        std::fs::write(&built, b"rebuilt").unwrap();
        assert_eq!(std::fs::read(&prepared).unwrap(), b"\x7fELF test binary");
        // The built file's mode is left alone (rustc cannot overwrite a read-only output).
        let again = keep_prepared_file(&built, &prepared).unwrap();
        assert_eq!(again, by);
        assert_eq!(std::fs::read(&prepared).unwrap(), b"rebuilt");
        assert_eq!(
            std::fs::metadata(&built).unwrap().permissions().mode() & 0o200,
            0o200
        );
    }

    #[test]
    fn persist_dirs_replace_the_inputs_and_survive_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("persist");
        let exec_root = Path::new("/tmp/t/repo");
        for namespaces in [false, true] {
            let lease_root = dir.path().join(format!("root-{namespaces}"));
            std::fs::create_dir_all(lease_root.join("target")).unwrap();
            std::fs::write(lease_root.join("target/stale"), "from the inputs").unwrap();
            let persisted = lay_out_persist(
                &prepare(&["target"]),
                &base,
                "ci:*",
                exec_root,
                &lease_root,
                namespaces,
            )
            .unwrap();
            let kept = persist_dir(&base, "ci:*", exec_root, Path::new("target"));
            assert!(kept.is_dir());
            assert_eq!(persisted.mounts, [(PathBuf::from("target"), kept.clone())]);
            if namespaces {
                assert_eq!(persisted.binds, [(kept, lease_root.join("target"))]);
            } else {
                assert!(persisted.binds.is_empty());
                assert_eq!(std::fs::read_link(lease_root.join("target")).unwrap(), kept);
                assert!(!lease_root.join("target/stale").exists());
            }
        }
    }

    #[test]
    fn tails_start_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        std::fs::write(&path, "first line\nsecond\nthird\n").unwrap();
        assert_eq!(
            read_tail(&path, 1000).unwrap(),
            "first line\nsecond\nthird\n"
        );
        assert_eq!(read_tail(&path, 10).unwrap(), "third\n");
    }

    #[test]
    fn reports_mask_what_the_tool_printed_not_test_names() {
        let mask = SecretMask::new(["s3cret-value"]);
        let result = |name: &str, output: &str| TestResult {
            id: tessera_runners::TestId::new("", name),
            outcome: tessera_runners::Outcome::Failed,
            duration: None,
            output: output.to_owned(),
        };
        let ran = StepReport::Ran {
            results: vec![
                result("prints_it", "got s3cret-value\n"),
                result("s3cret-value", "quiet"),
            ],
            startups: 1,
        };
        let StepReport::Ran { results, startups } = mask_report(ran, &mask) else {
            panic!("not a batch report");
        };
        assert_eq!(startups, 1);
        assert_eq!(results[0].output, "got ***\n");
        assert_eq!(results[1].id.name, "s3cret-value");
        let failed = StepReport::Failed {
            error: "list failed: s3cret-value".into(),
        };
        let StepReport::Failed { error } = mask_report(failed, &mask) else {
            panic!("not a failure");
        };
        assert_eq!(error, "list failed: ***");
        // A value with JSON's special characters is masked before encoding, so escaping
        // cannot hide it.
        let quoted = SecretMask::new(["pa\"ss\\word"]);
        let results = masked_results(vec![result("t", "pa\"ss\\word")], &quoted);
        let json = serde_json::to_string(&results).unwrap();
        assert!(json.contains(r#""output":"***""#), "{json}");
    }
}

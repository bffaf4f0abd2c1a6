//! Long-lived test workers: a test tool started once per slot and job, which then runs batch
//! after batch of that job's tests (`tessera_runners::Runner::worker_command`; pytest's
//! start-up and collection are often most of a small batch).
//!
//! A batch step names its job in `StepSpec::Batch.worker`. [`WorkerKey`] adds everything else
//! that decides how the tool runs (the input root, the command's environment, the platform
//! options, the step's runner and prepared settings), so a worker only ever serves batches
//! that a fresh process would have run identically, of the job that started it: never another
//! job's, whoever submitted it. A worker runs in the sandbox of the lease that started it (its
//! namespaces, its private `/tmp`, its exec root) and keeps that lease's directories: later
//! batches of the same key skip laying out their inputs and run in those directories, one
//! batch at a time.
//!
//! Between batches a worker waits in the [`WorkerPool`]. The pool holds at most as many
//! workers as the agent has slots (the oldest idle one goes when a new one needs room), stops
//! those idle for longer than its idle timeout, and removes a worker's directories when it
//! stops it. A worker that dies, times out or is cancelled mid-batch is stopped whole (its
//! process group) and never goes back to the pool; its batch reads like a process that ended
//! that way.
//!
//! The protocol with the tool (`tessera_runners::WorkerInvocation`): two FIFOs in the
//! worker's directory, requests and replies, one JSON line each way per batch. The agent opens
//! both read-write, so opening never blocks and the worker sees the end of its requests when
//! the agent closes them (or dies).
//!
//! Does not decide what a batch is or read its results (`tessera_runners::step`), and does not
//! lay out inputs or upload (the lease pipeline).

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tessera_runners::CommandSpec;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;

use crate::exec_root::PathMap;
use crate::layer::LayeredRoots;
use crate::sandbox::{ProcessRunner, ProcessSpec, Started};
use crate::workdir::{LeaseDirs, remove_tree};

/// How often the pool looks for workers idle too long.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Names the workers that may serve a batch: the job and everything that decides how its
/// tool runs. Built by the lease pipeline from the lease's action.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkerKey([u8; 32]);

impl WorkerKey {
    /// The key of `parts`, each length-prefixed so that no two lists collide.
    pub fn of(parts: &[&[u8]]) -> Self {
        let mut hasher = blake3::Hasher::new();
        for part in parts {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        WorkerKey(*hasher.finalize().as_bytes())
    }
}

/// Where a worker runs: the lease directories it keeps, and the command template and path map
/// of the lease that started it, which later leases of the same key run with.
#[derive(Debug, Clone)]
pub struct WorkerHome {
    /// The directories (exec root, `/tmp`, logs).
    pub dirs: LeaseDirs,
    /// The step's command template (environment, isolation, limits).
    pub template: ProcessSpec,
    /// Paths as the worker sees them and as the agent opens them.
    pub map: PathMap,
}

/// One running worker.
#[derive(Debug)]
pub struct Worker {
    process: Started,
    /// The command it was started with: a batch asking for another one gets another worker.
    command: CommandSpec,
    requests: pipe::Sender,
    replies: BufReader<pipe::Receiver>,
    stdout: PathBuf,
    stderr: PathBuf,
    home: WorkerHome,
    /// Counts this worker among the pool's live workers while it exists.
    _live: LiveGuard,
}

/// How a batch on a worker ended.
#[derive(Debug)]
pub enum Served {
    /// The worker answered; it can take the next batch.
    Replied,
    /// The worker exited before answering, with this exit code (shell style).
    Exited(i32),
    /// The batch ran past its limit; the worker was stopped.
    TimedOut,
    /// The lease was cancelled; the worker was stopped.
    Cancelled,
}

/// What a worker printed while it ran one batch, and how long the batch took.
#[derive(Debug)]
pub struct BatchOutput {
    /// How it ended.
    pub served: Served,
    /// Its stdout during the batch (the end of it, at most the limit given).
    pub stdout: String,
    /// Its stderr during the batch.
    pub stderr: String,
    /// From the request to the reply (or the end).
    pub elapsed: Duration,
}

impl Worker {
    /// Starts a worker: creates its FIFOs in `dir` (as both sides see it), then starts `spec`
    /// (whose environment must name them, see [`fifo_paths`]) with `runner`. `None` when the
    /// process runner keeps no long-lived processes.
    pub async fn start(
        pool: &WorkerPool,
        runner: &dyn ProcessRunner,
        command: &CommandSpec,
        dir: &Path,
        spec: ProcessSpec,
        home: WorkerHome,
    ) -> Result<Option<Worker>, crate::sandbox::SpawnError> {
        let (requests_path, replies_path) = fifo_paths(dir);
        let prepare = |path: &Path| crate::sandbox::SpawnError::Prepare {
            path: path.to_owned(),
            source: io::Error::last_os_error(),
        };
        for path in [&requests_path, &replies_path] {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(crate::sandbox::SpawnError::Prepare {
                        path: path.clone(),
                        source: e,
                    });
                }
                _ => {}
            }
            nix::unistd::mkfifo(
                path.as_path(),
                nix::sys::stat::Mode::from_bits_truncate(0o600),
            )
            .map_err(|_| prepare(path))?;
        }
        let open_error = |path: &Path| {
            let path = path.to_owned();
            move |source| crate::sandbox::SpawnError::Prepare { path, source }
        };
        // Read-write: opening never waits for the other side, and the worker sees the end of
        // its requests only when this side closes them.
        let requests = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&requests_path)
            .map_err(open_error(&requests_path))?;
        let replies = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&replies_path)
            .map_err(open_error(&replies_path))?;
        pool.make_room().await;
        let (stdout, stderr) = (spec.stdout.clone(), spec.stderr.clone());
        let Some(process) = runner.start(&spec).await? else {
            return Ok(None);
        };
        Ok(Some(Worker {
            process,
            command: command.clone(),
            requests,
            replies: BufReader::new(replies),
            stdout,
            stderr,
            home,
            _live: LiveGuard::new(&pool.live),
        }))
    }

    /// Whether this worker was started with `command` and is still running.
    pub fn serves(&mut self, command: &CommandSpec) -> bool {
        self.command == *command && !self.process.exited()
    }

    /// Where it runs.
    pub fn home(&self) -> &WorkerHome {
        &self.home
    }

    /// Sends `request` and waits for the reply, the worker's exit, `limit` or `cancel`
    /// (stopping the worker in the last two cases). Output beyond `output_limit` bytes per
    /// stream keeps its end.
    pub async fn run(
        &mut self,
        request: &str,
        limit: Option<Duration>,
        cancel: &CancellationToken,
        output_limit: u64,
    ) -> io::Result<BatchOutput> {
        let from = (file_len(&self.stdout), file_len(&self.stderr));
        let started = Instant::now();
        let deadline = async {
            match limit {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let exchange = async {
            let mut line = request.replace('\n', " ");
            line.push('\n');
            self.requests.write_all(line.as_bytes()).await?;
            let mut reply = String::new();
            loop {
                reply.clear();
                if self.replies.read_line(&mut reply).await? == 0 {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                }
                if !reply.trim().is_empty() {
                    return Ok(());
                }
            }
        };
        let served = tokio::select! {
            replied = exchange => match replied {
                Ok(()) => Served::Replied,
                // The worker went away: its exit says how.
                Err(_) => Served::Exited(self.process.wait().await?),
            },
            exit = self.process.wait() => Served::Exited(exit?),
            () = deadline => {
                self.process.stop().await;
                Served::TimedOut
            }
            () = cancel.cancelled() => {
                self.process.stop().await;
                Served::Cancelled
            }
        };
        let elapsed = started.elapsed();
        let (stdout_path, stderr_path) = (self.stdout.clone(), self.stderr.clone());
        let (stdout, stderr) = tokio::task::spawn_blocking(move || {
            (
                crate::step::read_since(&stdout_path, from.0, output_limit),
                crate::step::read_since(&stderr_path, from.1, output_limit),
            )
        })
        .await
        .map_err(io::Error::other)?;
        Ok(BatchOutput {
            served,
            stdout: stdout?,
            stderr: stderr?,
            elapsed,
        })
    }
}

/// The requests and replies FIFOs of a worker whose directory is `dir`.
pub fn fifo_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("requests.fifo"), dir.join("replies.fifo"))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Counts a live worker until dropped.
#[derive(Debug)]
struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn new(live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        LiveGuard(Arc::clone(live))
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A worker waiting for its next batch.
#[derive(Debug)]
struct Idle {
    key: WorkerKey,
    worker: Worker,
    since: Instant,
}

/// The agent's workers between batches. See the module docs.
#[derive(Debug)]
pub struct WorkerPool {
    idle: Mutex<Vec<Idle>>,
    /// Lease directories that belong to a worker (idle or serving a lease), not to the lease
    /// that created them: its clean-up leaves them alone.
    adopted: Mutex<HashSet<PathBuf>>,
    live: Arc<AtomicUsize>,
    capacity: usize,
    idle_timeout: Duration,
    /// Where a lease's exec root may be an overlay over a shared layer (`layer`): unmounted
    /// before a worker's directories are removed.
    layers: Option<Arc<LayeredRoots>>,
}

impl WorkerPool {
    /// A pool of at most `capacity` workers (the agent's slots) that stops workers idle for
    /// `idle_timeout`, checked by a task that ends when the pool is dropped; `layers` are the
    /// agent's, if its exec roots may be overlays.
    pub fn new(
        capacity: usize,
        idle_timeout: Duration,
        layers: Option<Arc<LayeredRoots>>,
    ) -> Arc<Self> {
        let pool = Arc::new(WorkerPool {
            idle: Mutex::new(Vec::new()),
            adopted: Mutex::new(HashSet::new()),
            live: Arc::new(AtomicUsize::new(0)),
            capacity: capacity.max(1),
            idle_timeout,
            layers,
        });
        tokio::spawn(reap(Arc::downgrade(&pool)));
        pool
    }

    /// An idle worker for `key`, if one is still running; taken out of the pool.
    pub fn take(&self, key: &WorkerKey) -> Option<Worker> {
        let mut dead = Vec::new();
        let found = {
            let mut idle = lock(&self.idle);
            let mut found = None;
            while let Some(at) = idle.iter().rposition(|i| i.key == *key) {
                let mut entry = idle.remove(at);
                if entry.worker.process.exited() {
                    dead.push(entry.worker);
                    continue;
                }
                found = Some(entry.worker);
                break;
            }
            found
        };
        for worker in dead {
            self.retire(worker);
        }
        found
    }

    /// Puts `worker` back to wait for the next batch of `key`; its directories are its own
    /// from now on.
    pub fn put(&self, key: WorkerKey, worker: Worker) {
        lock(&self.adopted).insert(worker.home.dirs.base.clone());
        lock(&self.idle).push(Idle {
            key,
            worker,
            since: Instant::now(),
        });
    }

    /// Whether `base` (a lease's directory) belongs to a worker.
    pub fn owns(&self, base: &Path) -> bool {
        lock(&self.adopted).contains(base)
    }

    /// Removes `dirs`, which a worker owned and no worker runs in any more.
    pub fn release_dirs(&self, dirs: &LeaseDirs) {
        lock(&self.adopted).remove(&dirs.base);
        let (base, root) = (dirs.base.clone(), dirs.root.clone());
        let layers = self.layers.clone();
        tokio::task::spawn_blocking(move || {
            // The overlay goes first: removing the directories must not reach into its layer.
            if let Some(layers) = layers
                && let Err(error) = layers.unmount(&root)
            {
                tracing::warn!(%error, dir = %root.display(), "failed to unmount a worker's exec root");
                return;
            }
            if let Err(error) = remove_tree(&base) {
                tracing::warn!(%error, dir = %base.display(), "failed to remove a worker's directory");
            }
        });
    }

    /// Workers running now (idle or serving a batch).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Stops the oldest idle workers until one more fits within the capacity.
    async fn make_room(&self) {
        loop {
            let oldest = {
                let mut idle = lock(&self.idle);
                if self.live() < self.capacity || idle.is_empty() {
                    return;
                }
                let at = idle
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, i)| i.since)
                    .map_or(0, |(at, _)| at);
                idle.remove(at)
            };
            tracing::debug!("stopping an idle test worker to make room");
            self.stop(oldest.worker).await;
        }
    }

    /// Stops a worker that is no longer needed and removes its directories.
    async fn stop(&self, mut worker: Worker) {
        worker.process.stop().await;
        self.release_dirs(&worker.home.dirs);
    }

    /// Drops a worker found dead, and its directories.
    fn retire(&self, worker: Worker) {
        self.release_dirs(&worker.home.dirs);
        drop(worker);
    }

    /// Stops the workers idle for longer than the idle timeout.
    async fn reap_idle(&self) {
        let expired: Vec<Idle> = {
            let mut idle = lock(&self.idle);
            let (expired, kept) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|i| i.since.elapsed() >= self.idle_timeout);
            *idle = kept;
            expired
        };
        for entry in expired {
            tracing::debug!("stopping a test worker idle for {:?}", self.idle_timeout);
            self.stop(entry.worker).await;
        }
    }
}

async fn reap(pool: Weak<WorkerPool>) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.reap_idle().await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A lease's hold on a worker of its key: the one it took from the pool or started, until the
/// lease ends and gives it back ([`LeaseWorker::finish`]).
#[derive(Debug)]
pub struct LeaseWorker {
    /// The agent's pool.
    pub pool: Arc<WorkerPool>,
    /// The lease's key.
    pub key: WorkerKey,
    /// The worker, between batches of the step.
    pub held: tokio::sync::Mutex<Option<Worker>>,
}

impl LeaseWorker {
    /// Gives the worker back to the pool, if the lease still holds a running one; it keeps the
    /// directories it runs in. Otherwise `dirs`, the directories the lease ran in, are removed
    /// when they belonged to a worker (the lease took one from the pool that is gone now).
    pub fn finish(self, dirs: &LeaseDirs) {
        let mut held = self.held.into_inner();
        if let Some(worker) = held.take_if(|worker| !worker.process.exited()) {
            debug_assert_eq!(worker.home.dirs.base, dirs.base);
            self.pool.put(self.key, worker);
        } else if self.pool.owns(&dirs.base) {
            self.pool.release_dirs(dirs);
        }
    }
}

//! One lease's pipeline: check → fetch → run → upload, ending in a [`RunOutcome`] and the
//! `LeaseResult` that reports it (see `lease` for every way a lease ends and what the
//! coordinator is told).
//!
//! A builtin step action (`tessera-builtin run-step ...`) runs through the same stages; only
//! the run differs (see `step`). An action with an `exec-root` platform property sees its input
//! root at that path (see `exec_root`).
//!
//! Secret values enter in one place, the processes' environment, and are masked in everything
//! the lease leaves before it is hashed: stdout, stderr, output files, a step's test results
//! and report, the lease's message (see `mask`).
//!
//! Does not talk to the coordinator (see `session`); progress goes out through a callback.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use tessera_cas::client::{CasClient, ClientError, blob_request};
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_net::client::Link;
use tessera_proto::reapi::{ActionResult, Command, ExecutedActionMetadata, compressor};
use tessera_proto::tessera::v1::{Lease, LeaseResult, LeaseStage};
use tessera_proto::time::from_proto_duration;
use tonic::Code;
use tracing::Instrument;

use crate::cache::LocalCache;
use crate::exec_root::{PathMap, SymlinkedRoot, check_disjoint};
use crate::layer::{LayerRef, LayeredRoots, layer_name};
use crate::lease::{LeaseCancel, LeaseError, Report, RunOutcome, Stage};
use crate::mask::SecretMask;
use crate::materialize::{
    InputTree, MaterializeError, MaterializeStats, create_dirs_within, fetch_input_tree,
    materialize, materialize_over, relative_components,
};
use crate::metrics::{AgentMetrics, overhead};
use crate::outputs::{
    OutputError, RequestedOutput, collect_outputs, file_blob, requested_outputs, upload,
};
use crate::platform::ExecutionOptions;
use crate::sandbox::{
    Isolation, ProcessExit, ProcessRunner, ProcessSpec, mount_points_in_tmp, resolve_program,
};
use crate::spare::{SpareDirs, Spares};
use crate::step::{StepContext, StepEnd, check_persist_paths, lay_out_persist, run_step};
use crate::workdir::{LeaseDirPool, LeaseDirs, Trash, WorkLayout, remove_tree};
use crate::worker::{LeaseWorker, WorkerKey, WorkerPool};
use tessera_runners::step::{
    REPORT_PATH, StepReport, StepSpec, TRUST_DOMAIN_ENV, is_secret_placeholder,
};

/// Upload attempts for a lease's outputs when the CAS is briefly unavailable.
const UPLOAD_ATTEMPTS: u32 = 5;
/// Wait before the first upload retry; doubled each time (0.25 + 0.5 + 1 + 2 s in all).
const UPLOAD_RETRY_FIRST: Duration = Duration::from_millis(250);

/// Whether a CAS call may succeed if simply tried again.
fn is_transient(error: &ClientError) -> bool {
    let code = match error {
        ClientError::Rpc { status, .. } => status.code(),
        ClientError::Blob { code, .. } => *code,
        _ => return false,
    };
    matches!(
        code,
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Aborted
    )
}

fn io_error(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> LeaseError {
    let op = op.into();
    move |source| LeaseError::Io { op, source }
}

/// CAS clients per (instance name, digest function), sharing one channel.
#[derive(Debug, Clone)]
pub struct CasClients {
    channel: Link,
    clients: Arc<Mutex<HashMap<(String, DigestFunction), CasClient>>>,
}

impl CasClients {
    /// Clients over `channel`.
    pub fn new(channel: Link) -> Self {
        CasClients {
            channel,
            clients: Arc::default(),
        }
    }

    /// The client for `instance` and `function`, created on first use.
    pub async fn get(
        &self,
        instance: &str,
        function: DigestFunction,
    ) -> Result<CasClient, ClientError> {
        let key = (instance.to_owned(), function);
        if let Some(client) = self.lock().get(&key) {
            return Ok(client.clone());
        }
        let client = CasClient::from_link(self.channel.clone(), instance, function).await?;
        self.lock().insert(key, client.clone());
        Ok(client)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, DigestFunction), CasClient>> {
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Everything a lease needs from the agent.
pub struct LeasePipeline {
    /// Reported as `ExecutedActionMetadata.worker`.
    pub agent_id: String,
    /// The local blob cache.
    pub cache: LocalCache,
    /// The CAS.
    pub cas: CasClients,
    /// Runs the commands.
    pub runner: Arc<dyn ProcessRunner>,
    /// Where lease directories go.
    pub layout: WorkLayout,
    /// Where finished leases' directories go (deleted in the background).
    pub trash: Trash,
    /// The directories leases run in, and those kept for reuse.
    pub dirs: LeaseDirPool,
    /// Empty directories that stand in for new ones (see [`crate::spare`]).
    pub spares: SpareDirs,
    /// Whether commands run in namespaces.
    pub namespaces: bool,
    /// Keep the directories of failed leases.
    pub keep_failed: bool,
    /// Long-lived test workers between batches (see `worker`); `None` runs every batch as
    /// processes of its own.
    pub workers: Option<Arc<WorkerPool>>,
    /// Layers for large input roots; `None` lays every root out file by file.
    pub layers: Option<Arc<LayeredRoots>>,
    /// Where each lease's time outside its command is recorded.
    pub metrics: AgentMetrics,
    /// Output bytes a result may carry inline, as the coordinator last said
    /// (`Welcome.inline_output_bytes`; 0 until then).
    pub inline_output_bytes: Arc<AtomicU64>,
}

impl std::fmt::Debug for LeasePipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasePipeline")
            .field("agent_id", &self.agent_id)
            .field("layout", &self.layout)
            .field("namespaces", &self.namespaces)
            .field("layers", &self.layers.is_some())
            .finish_non_exhaustive()
    }
}

/// What the lease asks for, checked before any work.
struct Plan {
    function: DigestFunction,
    input_root: Digest,
    command: Command,
    options: ExecutionOptions,
    outputs: Vec<RequestedOutput>,
    timeout: Option<Duration>,
    cas: CasClient,
    /// The builtin step the command asks for, if it is one.
    step: Option<StepSpec>,
    /// The value of each variable whose placeholder the command holds (see [`secret_values`]).
    secrets: HashMap<String, String>,
    /// Masks those values in what the lease leaves: stdout, stderr, outputs, test results.
    mask: SecretMask,
    /// The job's trust domain ([`TRUST_DOMAIN_ENV`]), empty when none: what the agent keeps
    /// between jobs (persisted directories, workers) is kept apart by it.
    trust_domain: String,
}

/// What a lease's stages leave behind for its end: the action's metadata, and the worker the
/// lease holds with the directories it ran in.
struct LeaseState {
    metadata: ExecutedActionMetadata,
    hold: Option<(LeaseWorker, LeaseDirs)>,
    /// How long the command (or the builtin step) ran; zero if it never started.
    command_time: Duration,
    /// Outputs that go with the result instead of uploaded (see `outputs::upload`).
    inline: Vec<(Digest, Bytes)>,
}

/// A lease ready to run: what it asks for, how to run it, the directories it runs in and, for
/// a batch of a job with long-lived workers, its hold on the worker those directories are
/// the worker's.
type Fetched = (Plan, Launch, LeaseDirs, Option<LeaseWorker>);

/// The input files `lease` carries (`Lease.input_files`), by the digest each claims (the cache
/// checks each against it before taking it); any that does not parse, or comes compressed, is
/// left out and fetched instead.
fn carried_files(lease: &Lease) -> HashMap<Digest, Bytes> {
    let Ok(function) = DigestFunction::from_request(lease.digest_function) else {
        return HashMap::new();
    };
    lease
        .input_files
        .iter()
        .filter(|blob| blob.compressor == compressor::Value::Identity as i32)
        .filter_map(|blob| {
            let digest = Digest::from_proto_opt(function, blob.digest.as_ref()).ok()?;
            Some((digest, blob.data.clone()))
        })
        .collect()
}

/// The key of the workers that may run `plan`'s step: `None` unless it is a batch naming its
/// job's worker. Everything that decides how the tool runs is in it, the job's trust domain
/// too; the tests and their timeout are not, nor secret values (their placeholders are).
fn worker_key(lease: &Lease, plan: &Plan) -> Option<WorkerKey> {
    let Some(StepSpec::Batch {
        runner,
        prepared,
        worker: Some(job),
        ..
    }) = &plan.step
    else {
        return None;
    };
    if !runner.runner().long_lived_worker() {
        return None;
    }
    let settings = serde_json::to_vec(&(runner, prepared)).ok()?;
    let mut env: Vec<(&str, &str)> = plan
        .command
        .environment_variables
        .iter()
        .map(|v| (v.name.as_str(), v.value.as_str()))
        .collect();
    env.sort_unstable();
    let env = serde_json::to_vec(&env).ok()?;
    let options = format!("{:?}", plan.options);
    Some(WorkerKey::of(&[
        plan.trust_domain.as_bytes(),
        job.as_bytes(),
        lease.instance_name.as_bytes(),
        plan.input_root.to_string().as_bytes(),
        &settings,
        &env,
        plan.command.working_directory.as_bytes(),
        options.as_bytes(),
    ]))
}

/// Why a lease's secret values do not fit its command. Messages name variables, never values.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The command holds a placeholder the lease has no value for.
    #[error(
        "environment variable {0} holds a secret's placeholder but the lease carries no value for it (secret values are not kept across coordinator restarts; run the job again)"
    )]
    Missing(String),
    /// The lease carries a value for a variable the command holds no placeholder in.
    #[error(
        "the lease carries a secret value for {0}, but the command's {0} is not a secret's placeholder"
    )]
    Unexpected(String),
    /// The lease carries two values for one variable.
    #[error("the lease carries two secret values for {0}")]
    Twice(String),
}

/// The value of each variable of `command` that holds a secret's placeholder
/// ([`is_secret_placeholder`]), from `lease.secrets`. Not trusted blindly: every placeholder
/// must have exactly one value, and every value a placeholder to replace.
fn secret_values(lease: &Lease, command: &Command) -> Result<HashMap<String, String>, SecretError> {
    let mut values = HashMap::with_capacity(lease.secrets.len());
    for secret in &lease.secrets {
        if values
            .insert(secret.name.clone(), secret.value.clone())
            .is_some()
        {
            return Err(SecretError::Twice(secret.name.clone()));
        }
        let placeholder = command
            .environment_variables
            .iter()
            .any(|v| v.name == secret.name && is_secret_placeholder(&v.value));
        if !placeholder {
            return Err(SecretError::Unexpected(secret.name.clone()));
        }
    }
    if let Some(var) = command
        .environment_variables
        .iter()
        .find(|v| is_secret_placeholder(&v.value) && !values.contains_key(&v.name))
    {
        return Err(SecretError::Missing(var.name.clone()));
    }
    Ok(values)
}

/// How a lease's input root gets into its exec root.
enum Layout {
    /// Its own files, linked from the cache one by one.
    Files(InputTree),
    /// An overlay over the shared layer of the root.
    Layer(LayerRef, Arc<LayeredRoots>),
}

/// How to run a lease once its inputs are laid out.
struct Launch {
    /// The command; for a step, the template of its commands (environment, isolation, limits,
    /// the action's timeout).
    spec: ProcessSpec,
    /// Paths as the command sees them and as the agent opens them.
    map: PathMap,
}

/// Runs a builtin step; its report is then in the exec root, and the exit code 0.
async fn run_builtin(
    step: &StepSpec,
    context: &StepContext<'_>,
) -> Result<ProcessExit, LeaseError> {
    Ok(match run_step(step, context).await? {
        // A failed step exits 1 so that no cache keeps it (a broken build is retried on the
        // next run); its report is uploaded all the same.
        StepEnd::Reported(StepReport::Failed { .. }) => ProcessExit::Exited { exit_code: 1 },
        StepEnd::Reported(_) => ProcessExit::Exited { exit_code: 0 },
        StepEnd::TimedOut { after } => ProcessExit::TimedOut {
            after,
            exit_code: 128 + libc::SIGKILL,
        },
        StepEnd::Cancelled => ProcessExit::Cancelled,
    })
}

/// Lays `tree` out over directories an earlier lease ran in (see [`LeaseDirPool`]); if that
/// fails (something the earlier command left cannot be removed), they go to the trash and the
/// tree is laid out afresh. Blocking.
fn lay_out_over(
    tree: &InputTree,
    cache: &LocalCache,
    dirs: &LeaseDirs,
    mount_points: &[PathBuf],
    trash: &Trash,
    spares: &Spares,
) -> Result<MaterializeStats, LeaseError> {
    let over = dirs
        .tidy_for_reuse(mount_points)
        .map_err(|e| MaterializeError::Io {
            op: "tidy",
            path: dirs.base.clone(),
            source: e,
        })
        .and_then(|()| materialize_over(tree, cache, spares, &dirs.root));
    match over {
        Ok(stats) => Ok(stats),
        // Only what is on disk can be cured by starting afresh.
        Err(error @ MaterializeError::Io { .. }) => {
            tracing::warn!(%error, dir = %dirs.base.display(), "failed to reuse a lease directory; laying the inputs out afresh");
            dirs.create_afresh(trash)
                .map_err(io_error(format!("create {}", dirs.base.display())))?;
            Ok(materialize(tree, cache, spares, &dirs.root)?)
        }
        Err(error) => Err(error.into()),
    }
}

fn timestamp(time: SystemTime) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp::from(time))
}

impl LeasePipeline {
    /// Runs `lease` in the directories numbered `seq`, reporting stages through `progress`.
    /// Leaves the directories for [`LeasePipeline::clean_up`].
    pub async fn run(
        &self,
        lease: &Lease,
        seq: u64,
        cancel: &LeaseCancel,
        progress: &(dyn Fn(LeaseStage) + Send + Sync),
        step_results: &(dyn Fn(String) + Send + Sync),
    ) -> (LeaseResult, RunOutcome) {
        let started = Instant::now();
        let mut state = LeaseState {
            metadata: ExecutedActionMetadata {
                worker: self.agent_id.clone(),
                worker_start_timestamp: timestamp(SystemTime::now()),
                ..ExecutedActionMetadata::default()
            },
            hold: None,
            command_time: Duration::ZERO,
            inline: Vec::new(),
        };
        let (outcome, result) = self
            .stages(lease, seq, cancel, progress, step_results, &mut state)
            .await;
        // A worker the lease started or took goes back to the pool, with the directories it
        // runs in.
        if let Some((worker, ran_in)) = state.hold.take() {
            worker.finish(&ran_in);
        }
        self.metrics
            .observe_overhead(overhead(started.elapsed(), state.command_time));
        let mut metadata = state.metadata;
        let result = result.map(|mut result| {
            metadata.worker_completed_timestamp = timestamp(SystemTime::now());
            result.execution_metadata = Some(metadata);
            result
        });
        let mut report = Report::of(&outcome);
        // An error may quote what the command printed.
        SecretMask::of_lease(lease).mask_in_place(&mut report.message);
        let mut answer = report.into_result(lease, result);
        if answer.result.is_some() && !state.inline.is_empty() {
            answer.digest_function = lease.digest_function;
            answer.blobs = state
                .inline
                .into_iter()
                .map(|(digest, data)| blob_request(&digest, data))
                .collect();
        }
        (answer, outcome)
    }

    async fn stages(
        &self,
        lease: &Lease,
        seq: u64,
        cancel: &LeaseCancel,
        progress: &(dyn Fn(LeaseStage) + Send + Sync),
        step_results: &(dyn Fn(String) + Send + Sync),
        state: &mut LeaseState,
    ) -> (RunOutcome, Option<ActionResult>) {
        let LeaseState {
            metadata,
            hold,
            command_time,
            inline,
        } = state;
        let fail = |stage, error| (RunOutcome::Error { stage, error }, None);
        let cancelled = || {
            (
                RunOutcome::Cancelled {
                    reason: cancel.reason(),
                },
                None,
            )
        };

        progress(LeaseStage::Fetching);
        metadata.input_fetch_start_timestamp = timestamp(SystemTime::now());
        let fetched = self
            .fetch(lease, seq, cancel)
            .instrument(tracing::info_span!("fetch inputs"))
            .await;
        let (plan, launch, dirs) = match fetched {
            Ok(Some((plan, launch, dirs, worker))) => {
                // A batch for a running worker runs where that worker does.
                if let Some(worker) = worker {
                    *hold = Some((worker, dirs.clone()));
                }
                (plan, launch, dirs)
            }
            Ok(None) => return cancelled(),
            Err(error) => return fail(Stage::Fetch, error),
        };
        let dirs = &dirs;
        metadata.input_fetch_completed_timestamp = timestamp(SystemTime::now());
        if cancel.token().is_cancelled() {
            return cancelled();
        }
        // Without namespaces a fixed exec root is a symlink, one lease at a time.
        let linked = match (&plan.options.exec_root, self.namespaces) {
            (Some(path), false) => {
                match SymlinkedRoot::acquire(path, &dirs.root, cancel.token()).await {
                    Ok(Some(linked)) => Some(linked),
                    Ok(None) => return cancelled(),
                    Err(error) => return fail(Stage::Execute, error.into()),
                }
            }
            _ => None,
        };

        progress(LeaseStage::Executing);
        metadata.execution_start_timestamp = timestamp(SystemTime::now());
        let command_started = Instant::now();
        let command_span = tracing::info_span!("command");
        let exit = async {
            match &plan.step {
                None => self
                    .runner
                    .run(&launch.spec, cancel.token())
                    .await
                    .map_err(LeaseError::from),
                Some(step) => {
                    let worker = hold.as_ref().map(|(worker, _)| worker);
                    let context = StepContext {
                        runner: self.runner.as_ref(),
                        template: &launch.spec,
                        map: &launch.map,
                        dirs,
                        cancel: cancel.token(),
                        results: step_results,
                        worker,
                        mask: &plan.mask,
                    };
                    run_builtin(step, &context).await
                }
            }
        }
        .instrument(command_span)
        .await;
        *command_time = command_started.elapsed();
        drop(linked);
        let exit = match exit {
            Ok(exit) => exit,
            Err(error) => return fail(Stage::Execute, error),
        };
        metadata.execution_completed_timestamp = timestamp(SystemTime::now());

        // A plain command that ended by itself in a PID namespace ended with everything it
        // started: its directories may serve a later lease (see `LeaseDirPool`) once its
        // outputs are uploaded (a cancelled upload may leave a blocking task at work there).
        // Not after a timeout or a cancel, which may end in a SIGKILL of the command's
        // stand-in that its namespace follows only a moment later; not for a signal's exit
        // code (the stand-in itself may have been killed, by the OOM killer say); not for a
        // builtin step, which may have stopped commands of its own that way (a lease held on
        // a long-lived worker is always one).
        let ended_by_itself = plan.step.is_none()
            && matches!(exit, ProcessExit::Exited { exit_code } if (0..128).contains(&exit_code));
        let (outcome, exit_code, requested) = match exit {
            ProcessExit::Cancelled => return cancelled(),
            ProcessExit::TimedOut { after, exit_code } => {
                // Only what the command printed: its outputs are unfinished.
                (RunOutcome::TimedOut { after }, exit_code, Vec::new())
            }
            ProcessExit::Exited { exit_code: 0 } => (RunOutcome::Passed, 0, plan.outputs.clone()),
            ProcessExit::Exited { exit_code } => (
                RunOutcome::Failed { exit_code },
                exit_code,
                plan.outputs.clone(),
            ),
        };
        progress(LeaseStage::Uploading);
        metadata.output_upload_start_timestamp = timestamp(SystemTime::now());
        let uploaded = tokio::select! {
            uploaded = self
                .upload(&plan, dirs, requested)
                .instrument(tracing::info_span!("upload outputs")) => uploaded,
            () = cancel.token().cancelled() => return cancelled(),
        };
        let mut result = match uploaded {
            Ok((result, blobs)) => {
                *inline = blobs;
                result
            }
            Err(error) => return fail(Stage::Upload, error),
        };
        metadata.output_upload_completed_timestamp = timestamp(SystemTime::now());
        result.exit_code = exit_code;
        if ended_by_itself {
            self.dirs.command_ended(seq);
        }
        (outcome, Some(result))
    }

    /// Checks the lease, fetches and lays out its inputs, and says how to run its command;
    /// `None` if cancelled while fetching; laying out, once begun, is not interrupted, so a
    /// cancelled lease never races its own clean-up.
    async fn fetch(
        &self,
        lease: &Lease,
        seq: u64,
        cancel: &LeaseCancel,
    ) -> Result<Option<Fetched>, LeaseError> {
        let plan = tokio::select! {
            plan = self.plan(lease) => plan?,
            () = cancel.token().cancelled() => return Ok(None),
        };
        let worker_key = self.workers.as_ref().zip(worker_key(lease, &plan));
        if let Some((pool, key)) = &worker_key
            && let Some(worker) = pool.take(key)
        {
            // Its inputs are laid out already: the worker runs in them.
            let home = worker.home().clone();
            let launch = Launch {
                spec: ProcessSpec {
                    timeout: plan.timeout,
                    ..home.template
                },
                map: home.map,
            };
            let held = LeaseWorker {
                pool: Arc::clone(pool),
                key: key.clone(),
                held: tokio::sync::Mutex::new(Some(worker)),
            };
            return Ok(Some((plan, launch, home.dirs, Some(held))));
        }
        let download = async {
            let tree = fetch_input_tree(
                &self.cache,
                &plan.cas,
                plan.input_root,
                &lease.input_directories,
            )
            .await?;
            let pins = self
                .cache
                .ensure(
                    &plan.cas,
                    &tree.file_digests(),
                    carried_files(lease),
                    &Arc::new(tree.executable_digests()),
                )
                .await
                .map_err(MaterializeError::from)?;
            Ok::<_, LeaseError>((plan, tree, pins))
        };
        let (plan, tree, pins) = tokio::select! {
            downloaded = download => downloaded?,
            () = cancel.token().cancelled() => return Ok(None),
        };
        let layout = self.layout_of(tree).await?;
        let claim = self
            .dirs
            .claim(seq, &lease.instance_name, &plan.trust_domain);
        let dirs = &claim.dirs;
        let cache = self.cache.clone();
        let trash = self.trash.clone();
        let lease_dirs = dirs.clone();
        let mount_points =
            mount_points_in_tmp(&dirs.tmp, &dirs.root, plan.options.exec_root.as_deref());
        let working_directory = plan.command.working_directory.clone();
        let outputs = plan.outputs.clone();
        let step = plan.step.clone();
        let persist_base = self.layout.persist_base();
        let trust_domain = plan.trust_domain.clone();
        let seen_root = plan
            .options
            .exec_root
            .clone()
            .unwrap_or_else(|| dirs.root.clone());
        let fixed_root = plan.options.exec_root.is_some();
        let namespaces = self.namespaces;
        let recycled = claim.recycled;
        // An overlay's root is another file system: nothing to rename there.
        let spares = match &layout {
            Layout::Layer(..) => Spares::none(),
            Layout::Files(_) => self.spares.of(claim.owner()),
        };
        let (stats, persisted) = tokio::task::spawn_blocking(move || {
            let stats = match layout {
                Layout::Files(tree) if recycled => Some(lay_out_over(
                    &tree,
                    &cache,
                    &lease_dirs,
                    &mount_points,
                    &trash,
                    &spares,
                )?),
                layout => {
                    let created = if recycled {
                        lease_dirs.create_afresh(&trash)
                    } else {
                        lease_dirs.create()
                    };
                    created.map_err(io_error(format!("create {}", lease_dirs.base.display())))?;
                    match layout {
                        Layout::Files(tree) => {
                            Some(materialize(&tree, &cache, &spares, &lease_dirs.root)?)
                        }
                        Layout::Layer(layer, layers) => {
                            layers
                                .mount(layer, &lease_dirs)
                                .map_err(MaterializeError::from)?;
                            None
                        }
                    }
                }
            };
            let cwd = relative_components(&working_directory).unwrap_or_default();
            if !create_dirs_within(&spares, &lease_dirs.root, &cwd)? {
                return Err(LeaseError::BadLease(format!(
                    "working directory \"{working_directory}\" is not a directory of the input root"
                )));
            }
            let cwd_path = lease_dirs.root.join(&working_directory);
            for output in &outputs {
                let components = output.components();
                if let Some((_, parents)) = components.split_last() {
                    // A parent that the inputs made a file or symlink is left alone.
                    create_dirs_within(&spares, &cwd_path, parents)?;
                }
            }
            // Kept directories only make sense at a path that stays the same.
            let persisted = match &step {
                Some(step) if fixed_root => lay_out_persist(
                    step,
                    &persist_base,
                    &trust_domain,
                    &seen_root,
                    &lease_dirs.root,
                    namespaces,
                )
                .map_err(io_error("lay out the persistent directories"))?,
                _ => Default::default(),
            };
            Ok::<_, LeaseError>((stats, persisted))
        })
        .await
        .map_err(|e| LeaseError::Io {
            op: "lay out inputs".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
        drop(pins); // Linked files keep their inodes even if the cache evicts them now.
        tracing::debug!(lease = %lease.lease_id, ?stats, layered = stats.is_none(), recycled, "inputs laid out");
        if stats.is_some() && persisted.mounts.is_empty() && persisted.binds.is_empty() {
            self.dirs.laid_out_file_by_file(seq);
        }

        let mut map = PathMap::new(
            plan.options
                .exec_root
                .clone()
                .unwrap_or_else(|| dirs.root.clone()),
            &dirs.root,
        );
        for (relative, local) in &persisted.mounts {
            map.mount(relative, local);
        }
        let cwd = map.seen_root().join(&plan.command.working_directory);
        // The one place secret values enter: the processes' environment, never the Command.
        let env: Vec<(String, String)> = plan
            .command
            .environment_variables
            .iter()
            .map(|v| {
                let value = plan.secrets.get(&v.name).unwrap_or(&v.value);
                (v.name.clone(), value.clone())
            })
            .collect();
        let program = match plan.step {
            // A step's commands are resolved one by one (see `step`).
            Some(_) => PathBuf::from(tessera_runners::step::BUILTIN_PROGRAM),
            None => {
                // Looked up where the agent sees the inputs, named as the command sees them.
                let local_cwd = dirs.root.join(&plan.command.working_directory);
                map.to_seen(&resolve_program(
                    &plan.command.arguments[0],
                    &env,
                    &local_cwd,
                )?)
            }
        };
        let spec = ProcessSpec {
            program,
            argv: plan.command.arguments.clone(),
            env,
            cwd,
            stdout: dirs.stdout.clone(),
            stderr: dirs.stderr.clone(),
            timeout: plan.timeout,
            isolation: Isolation {
                namespaces: self.namespaces,
                network: plan.options.network,
                private_tmp: Some(dirs.tmp.clone()),
                exec_root: Some(dirs.root.clone()),
                exec_root_at: plan.options.exec_root.clone(),
                binds: persisted.binds,
                limits: plan.options.limits,
            },
        };
        let worker = worker_key.map(|(pool, key)| LeaseWorker {
            pool: Arc::clone(pool),
            key,
            held: tokio::sync::Mutex::new(None),
        });
        Ok(Some((plan, Launch { spec, map }, dirs.clone(), worker)))
    }

    /// A layer for a large root where layers are on (built now if no lease has built it yet,
    /// or waited for if one is building it); the root's own files otherwise.
    async fn layout_of(&self, tree: InputTree) -> Result<Layout, MaterializeError> {
        let entries = tree.entry_count();
        let Some(layers) = self.layers.as_ref().filter(|l| l.wants(entries)) else {
            return Ok(Layout::Files(tree));
        };
        let name = layer_name(&tree.root);
        let cache = self.cache.clone();
        let layer = layers
            .store()
            .acquire(&name, entries, move |dir| {
                materialize(&tree, &cache, &Spares::none(), dir).map(drop)
            })
            .await?;
        Ok(Layout::Layer(layer, Arc::clone(layers)))
    }

    async fn plan(&self, lease: &Lease) -> Result<Plan, LeaseError> {
        let bad = |message: String| LeaseError::BadLease(message);
        let function =
            DigestFunction::from_request(lease.digest_function).map_err(|e| bad(e.to_string()))?;
        let action = lease
            .action
            .as_ref()
            .ok_or_else(|| bad("no action".into()))?;
        let command = lease
            .command
            .clone()
            .ok_or_else(|| bad("no command".into()))?;
        if command.arguments.is_empty() {
            return Err(bad("the command has no arguments".into()));
        }
        let input_root = Digest::from_proto_opt(function, action.input_root_digest.as_ref())
            .map_err(|e| bad(format!("input root digest: {e}")))?;
        relative_components(&command.working_directory).map_err(|reason| {
            bad(format!(
                "working directory \"{}\" {reason}",
                command.working_directory
            ))
        })?;
        let options = ExecutionOptions::from_platform(action.platform.as_ref())?;
        if let Some(exec_root) = &options.exec_root {
            check_disjoint(exec_root, self.layout.root())?;
        }
        let step = match StepSpec::from_argv(&command.arguments) {
            None => None,
            Some(Ok(step)) => {
                check_persist_paths(&step)?;
                Some(step)
            }
            Some(Err(error)) => return Err(error.into()),
        };
        let secrets = secret_values(lease, &command)?;
        let mask = SecretMask::new(secrets.values());
        let trust_domain = command
            .environment_variables
            .iter()
            .find(|v| v.name == TRUST_DOMAIN_ENV)
            .map(|v| v.value.clone())
            .unwrap_or_default();
        let outputs = requested_outputs(&command)?;
        let timeout = lease
            .timeout
            .and_then(|t| from_proto_duration(&t))
            .filter(|t| !t.is_zero());
        let cas = self.cas.get(&lease.instance_name, function).await?;
        Ok(Plan {
            function,
            input_root,
            command,
            options,
            outputs,
            timeout,
            cas,
            step,
            secrets,
            mask,
            trust_domain,
        })
    }

    /// Masks the lease's secret values in the requested outputs, stdout and stderr, then
    /// collects and uploads them.
    async fn upload(
        &self,
        plan: &Plan,
        dirs: &LeaseDirs,
        requested: Vec<RequestedOutput>,
    ) -> Result<(ActionResult, Vec<(Digest, Bytes)>), LeaseError> {
        let function = plan.function;
        let root = dirs.root.clone();
        // Where the agent sees the working directory (the command may see it elsewhere).
        let cwd = dirs.root.join(&plan.command.working_directory);
        let stdout = dirs.stdout.clone();
        let stderr = dirs.stderr.clone();
        let mask = plan.mask.clone();
        // A step's report is written by the agent with its values masked field by field.
        let masked_already: &[&str] = match plan.step {
            Some(_) => &[REPORT_PATH],
            None => &[],
        };
        let (mut collected, stdout, stderr) = tokio::task::spawn_blocking(move || {
            let collected =
                collect_outputs(&root, &cwd, &requested, function, &mask, masked_already)?;
            let stdout = file_blob(&stdout, function, &mask)?;
            let stderr = file_blob(&stderr, function, &mask)?;
            Ok::<_, OutputError>((collected, stdout, stderr))
        })
        .await
        .map_err(|e| LeaseError::Io {
            op: "collect outputs".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
        collected.result.stdout_digest = Some(stdout.0.to_proto());
        collected.result.stderr_digest = Some(stderr.0.to_proto());
        collected.blobs.push(stdout);
        collected.blobs.push(stderr);
        // The command has run: ride out a short CAS outage rather than waste the run.
        let inline_bytes = self.inline_output_bytes.load(Ordering::Relaxed);
        let mut wait = UPLOAD_RETRY_FIRST;
        let mut attempt = 1;
        loop {
            match upload(&plan.cas, &self.cache, &collected.blobs, inline_bytes).await {
                Ok(inline) => return Ok((collected.result, inline)),
                Err(OutputError::Upload(error))
                    if attempt < UPLOAD_ATTEMPTS && is_transient(&error) =>
                {
                    tracing::warn!(%error, attempt, retry_in = ?wait, "output upload failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Removes directories no lease will use: one rename into the trash, not worth a hop to a
    /// blocking thread; if the trash cannot take them (full, or the rename fails), deleted on
    /// a blocking thread, never on this one.
    async fn discard(&self, dirs: LeaseDirs) {
        match self.trash.try_discard(&dirs.base) {
            Ok(true) => return,
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "failed to clean up a lease directory"),
        }
        let trash = self.trash.clone();
        match tokio::task::spawn_blocking(move || trash.discard(&dirs.base)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "failed to clean up a lease directory"),
            Err(error) => tracing::warn!(%error, "lease clean-up task failed"),
        }
    }

    /// Gives the lease's directories back for a later lease (see [`LeaseDirPool`]), removes
    /// them (into the trash, deleted in the background), or keeps them under `kept/` if it
    /// failed and `keep_failed` is set.
    pub async fn clean_up(&self, lease: &Lease, seq: u64, outcome: &RunOutcome) {
        let Some(claim) = self.dirs.release(seq) else {
            // It never got as far as directories of its own.
            return;
        };
        let dirs = claim.dirs.clone();
        if self
            .workers
            .as_ref()
            .is_some_and(|pool| pool.owns(&dirs.base))
        {
            // A test worker runs in them now; the pool removes them when it stops it.
            return;
        }
        let keep = (self.keep_failed && outcome.is_failure())
            .then(|| self.layout.kept_dir(&lease.lease_id, lease.attempt));
        if keep.is_none()
            && let Some(evicted) = self.dirs.give_back(&claim)
        {
            // The oldest idle directory made room for this one.
            for dirs in evicted {
                self.discard(dirs).await;
            }
            return;
        }
        if keep.is_none() && self.layers.is_none() {
            self.discard(dirs).await;
            return;
        }
        let layers = self.layers.clone();
        let trash = self.trash.clone();
        let mask = SecretMask::of_lease(lease);
        let done = tokio::task::spawn_blocking(move || {
            // The overlay goes first: removing the lease's directories must not reach into
            // its layer.
            if let Some(layers) = layers {
                layers.unmount(&dirs.root).map_err(std::io::Error::other)?;
            }
            if let Some(kept) = keep {
                // What is kept for a look is what would have been uploaded: masked.
                mask.mask_tree(&dirs.base).map_err(std::io::Error::other)?;
                if let Some(parent) = kept.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                remove_tree(&kept)?;
                std::fs::rename(&dirs.base, &kept)?;
                tracing::info!(dir = %kept.display(), "kept the directory of a failed lease");
                return Ok(());
            }
            trash.discard(&dirs.base)
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "failed to clean up a lease directory"),
            Err(error) => tracing::warn!(%error, "lease clean-up task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_proto::reapi::command::EnvironmentVariable;
    use tessera_proto::tessera::v1::SecretEnv;

    use super::*;

    const PLACEHOLDER: &str =
        "tessera-secret:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn command(env: &[(&str, &str)]) -> Command {
        Command {
            environment_variables: env
                .iter()
                .map(|(name, value)| EnvironmentVariable {
                    name: (*name).to_owned(),
                    value: (*value).to_owned(),
                })
                .collect(),
            ..Command::default()
        }
    }

    fn lease(secrets: &[(&str, &str)]) -> Lease {
        Lease {
            secrets: secrets
                .iter()
                .map(|(name, value)| SecretEnv {
                    name: (*name).to_owned(),
                    value: (*value).to_owned(),
                })
                .collect(),
            ..Lease::default()
        }
    }

    #[test]
    fn secret_values_replace_exactly_their_placeholders() {
        let cmd = command(&[("PATH", "/bin"), ("TOKEN", PLACEHOLDER)]);
        let values = secret_values(&lease(&[("TOKEN", "s3cret")]), &cmd).unwrap();
        assert_eq!(values.len(), 1);
        assert_eq!(values["TOKEN"], "s3cret");
        assert!(secret_values(&lease(&[]), &command(&[("PATH", "/bin")])).is_ok());
    }

    #[test]
    fn secret_mismatches_name_the_variable_never_the_value() {
        let cases = [
            // A placeholder without its value: a coordinator that restarted.
            (
                lease(&[]),
                command(&[("TOKEN", PLACEHOLDER)]),
                "environment variable TOKEN holds a secret's placeholder but the lease carries no value",
            ),
            // A value for a variable that holds no placeholder.
            (
                lease(&[("PATH", "s3cret")]),
                command(&[("PATH", "/bin")]),
                "the lease carries a secret value for PATH, but",
            ),
            (
                lease(&[("OTHER", "s3cret")]),
                command(&[("TOKEN", PLACEHOLDER)]),
                "the lease carries a secret value for OTHER, but",
            ),
            (
                lease(&[("TOKEN", "s3cret"), ("TOKEN", "s3cret")]),
                command(&[("TOKEN", PLACEHOLDER)]),
                "the lease carries two secret values for TOKEN",
            ),
        ];
        for (lease, command, expected) in cases {
            let error = LeaseError::from(secret_values(&lease, &command).unwrap_err());
            assert_eq!(
                error.outcome(),
                tessera_proto::tessera::v1::LeaseOutcome::InvalidAction
            );
            let message = error.to_string();
            assert!(message.contains(expected), "{message}");
            assert!(!message.contains("s3cret"), "{message}");
        }
    }
}

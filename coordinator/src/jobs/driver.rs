//! Runs one job (DESIGN.md §5): prepare, list, answer cached tests, plan the rest into
//! batches that free slots pull, retry failures, and record everything.
//!
//! Every step is a REAPI action (`tessera_runners::step`) submitted through the Execution
//! service, so steps share the scheduler, fair share, leases, retries and the action cache
//! with every other client. Prepare and list actions are cacheable like any action; batch
//! actions are not (their tests are cached one by one in [`TestStore`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use prost::Message;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::store::BlobStore;
use tessera_proto::reapi::{
    Action, ActionResult, Command, ExecuteRequest, ExecutionPolicy, Platform, Tree,
    command::EnvironmentVariable, platform::Property,
};
use tessera_proto::tessera::v1::{
    JobFinished, JobPhase, JobResult, LogLine, PhaseChanged, Progress, QueuePosition, TestFinished,
    TestOutcome, TestRef, TestsPlanned, job_event::Kind,
};
use tessera_runners::step::{PREPARED_DIR, REPORT_PATH, StepReport, StepSpec};
use tessera_runners::{Outcome, Prepared, TestId, TestResult};
use tonic::Code;

use super::job::{Job, is_failure};
use super::overlay::overlay;
use super::planner::{BatchId, PlannerConfig, ShardPlanner};
use super::results::{SuiteKey, TestStore};
use crate::execution::platform::{AVOID_AGENT_PROPERTY, EXEC_ROOT_PROPERTY};
use crate::execution::scheduler::SchedulerHandle;
use crate::services::execution::{ExecutionService, Submitted};

/// Most bytes of one test's output kept in its event (the tail is kept).
const MAX_OUTPUT: usize = 64 * 1024;
/// Fixed time added to a batch action's timeout on top of its tests' deadlines.
const BATCH_SLACK: Duration = Duration::from_secs(60);
/// The longest batch the driver plans. Tests report as they finish either way; the cap
/// bounds what a lost agent takes with it (its batch runs again) and how long a slot keeps
/// work the planner could give a faster slot, at one batch overhead (tens of ms) per batch.
pub const MAX_BATCH: Duration = Duration::from_secs(10);

/// The planner settings every job runs with (also what `tessera-bench shard` measures).
pub fn planner_config() -> PlannerConfig {
    PlannerConfig {
        max_batch: Some(MAX_BATCH),
        ..PlannerConfig::default()
    }
}
/// How often a running job reports progress and its queue position.
const TICK: Duration = Duration::from_secs(1);

/// What every job driver shares.
#[derive(Clone)]
pub struct JobContext {
    /// The CAS.
    pub store: Arc<dyn BlobStore>,
    /// How steps are executed.
    pub exec: ExecutionService,
    /// For fleet size, queue positions and cancellation.
    pub scheduler: SchedulerHandle,
    /// Cached passes and durations.
    pub tests: TestStore,
    /// Deadline of a test when the job names none.
    pub default_test_timeout: Duration,
    /// Longest action timeout the coordinator accepts.
    pub max_action_timeout: Duration,
}

/// Why a job stopped early.
#[derive(Debug)]
enum Stop {
    /// The user's project is broken (prepare or list failed) or the spec cannot run.
    Error { message: String, log: String },
    /// The fleet failed the job.
    Infrastructure(String),
    /// Cancelled.
    Cancelled,
}

/// A step action that ran.
struct StepRun {
    report: StepReport,
    result: ActionResult,
    cached: bool,
}

/// Runs `job` to its end and emits its final event.
pub async fn run(ctx: JobContext, job: Arc<Job>) {
    let mut tally = Tally::default();
    let started = Instant::now();
    let stop = drive(&ctx, &job, &mut tally).await.err();
    let (result, message, log) = match stop {
        None if tally.failed + tally.timed_out > 0 => {
            (JobResult::Failed, String::new(), String::new())
        }
        None if tally.cancelled_by_fail_fast => (JobResult::Failed, String::new(), String::new()),
        None => (JobResult::Passed, String::new(), String::new()),
        Some(Stop::Error { message, log }) => (JobResult::Error, message, log),
        Some(Stop::Infrastructure(message)) => (JobResult::Infrastructure, message, String::new()),
        Some(Stop::Cancelled) => (
            JobResult::Cancelled,
            "the job was cancelled".to_owned(),
            String::new(),
        ),
    };
    // Whatever stopped the job, none of its operations keeps a slot.
    for name in job.operations() {
        let _ = ctx.scheduler.cancel(&name).await;
    }
    job.emit(Kind::Finished(JobFinished {
        result: result as i32,
        message,
        passed: tally.passed,
        failed: tally.failed,
        skipped: tally.skipped,
        flaky: tally.flaky,
        timed_out: tally.timed_out,
        cached: tally.cached,
        not_run: tally.not_run,
        wall: Some(proto_duration(started.elapsed())),
        serial: Some(proto_duration(tally.serial)),
        log,
    }));
}

/// Final outcomes counted so far.
#[derive(Debug, Default)]
struct Tally {
    passed: u32,
    failed: u32,
    skipped: u32,
    flaky: u32,
    timed_out: u32,
    cached: u32,
    not_run: u32,
    serial: Duration,
    cancelled_by_fail_fast: bool,
}

impl Tally {
    fn count(&mut self, outcome: TestOutcome) {
        match outcome {
            TestOutcome::Passed => self.passed += 1,
            TestOutcome::Flaky => self.flaky += 1,
            TestOutcome::Skipped => self.skipped += 1,
            TestOutcome::TimedOut => self.timed_out += 1,
            TestOutcome::Failed | TestOutcome::NoResult | TestOutcome::Unknown => self.failed += 1,
            TestOutcome::Cancelled => self.not_run += 1,
        }
    }
}

async fn drive(ctx: &JobContext, job: &Arc<Job>, tally: &mut Tally) -> Result<(), Stop> {
    let function = DigestFunction::from_request(job.spec.digest_function)
        .map_err(|e| stop_error(format!("digest_function: {e}")))?;
    let input_root = Digest::from_proto_opt(function, job.spec.input_root_digest.as_ref())
        .map_err(|e| stop_error(format!("input_root_digest: {e}")))?;
    let steps = Steps { ctx, job, function };
    let positions = tokio::spawn(report_queue_position(
        ctx.scheduler.clone(),
        Arc::clone(job),
    ));
    let outcome = async {
        // 1. Prepare.
        let (prepared, prepared_root) = if job.runner.runner().prepare_command().is_some() {
            job.emit(phase(JobPhase::Preparing, ""));
            let spec = StepSpec::Prepare {
                runner: job.runner.clone(),
                persist: job.spec.persist.iter().map(Into::into).collect(),
            };
            let run = steps
                .run(&spec, &input_root, true, None, None, None)
                .await?;
            let StepReport::Prepared { prepared } = run.report else {
                return Err(step_failed("prepare", run.report));
            };
            let root = steps.prepared_root(&input_root, &run.result).await?;
            if run.cached {
                job.emit(phase(JobPhase::Preparing, "prepare answered from cache"));
            }
            (prepared, root)
        } else {
            (Prepared::default(), input_root)
        };

        // 2. List.
        job.emit(phase(JobPhase::Listing, ""));
        let spec = StepSpec::List {
            runner: job.runner.clone(),
            prepared: prepared.clone(),
        };
        let run = steps
            .run(&spec, &prepared_root, true, None, None, None)
            .await?;
        let StepReport::Listed { tests } = run.report else {
            return Err(step_failed("list", run.report));
        };

        // 3. Cached passes, history.
        let suite = SuiteKey::new(&settings_key(job), &prepared_root.to_string());
        let mut to_run: Vec<(String, Option<Duration>)> = Vec::new();
        let mut ids: HashMap<String, TestId> = HashMap::new();
        let mut cached_events = Vec::new();
        {
            let store = ctx.tests.clone();
            let suite = suite.clone();
            let skip_cache = job.spec.skip_cache;
            let tests = tests.clone();
            let looked_up = tokio::task::spawn_blocking(move || {
                tests
                    .into_iter()
                    .map(|test| {
                        let cached = if skip_cache {
                            None
                        } else {
                            store.cached(&suite, &test)?
                        };
                        let history = store.history(&suite, &test)?;
                        Ok((test, cached, history))
                    })
                    .collect::<Result<Vec<_>, tessera_cas::meta::MetaError>>()
            })
            .await
            .map_err(|e| Stop::Infrastructure(format!("test lookup panicked: {e}")))?
            .map_err(|e| Stop::Infrastructure(format!("failed to read test history: {e}")))?;
            for (test, cached, history) in looked_up {
                let key = test_key(&test);
                if ids.contains_key(&key) {
                    continue;
                }
                ids.insert(key.clone(), test.clone());
                match cached {
                    Some(pass) => cached_events.push(TestFinished {
                        test: Some(test_ref(&test)),
                        outcome: TestOutcome::Passed as i32,
                        attempt: 1,
                        r#final: true,
                        cached: true,
                        duration: Some(proto_duration(pass.duration)),
                        ..Default::default()
                    }),
                    None => to_run.push((key, history)),
                }
            }
        }
        let slots = fleet_slots(&ctx.scheduler).await;
        let mut planner = ShardPlanner::new(to_run.clone(), slots, planner_config());
        job.emit(Kind::Planned(TestsPlanned {
            total: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            cached: u32::try_from(cached_events.len()).unwrap_or(u32::MAX),
            to_run: u32::try_from(to_run.len()).unwrap_or(u32::MAX),
            expected: Some(proto_duration(planner.expected_remaining())),
        }));
        for event in cached_events {
            tally.cached += 1;
            tally.count(TestOutcome::Passed);
            job.emit(Kind::Test(event));
        }
        if to_run.is_empty() {
            return Ok(());
        }

        // 4. Run.
        job.emit(phase(JobPhase::Running, ""));
        let mut runs = Runs {
            steps: &steps,
            job,
            prepared: &prepared,
            prepared_root,
            suite,
            ids,
            pending: to_run.iter().map(|(key, _)| key.clone()).collect(),
            attempts: HashMap::new(),
            failures: HashMap::new(),
            failed_on: HashMap::new(),
            open_batches: HashMap::new(),
            finished: HashMap::new(),
            tally,
        };
        runs.run(&mut planner, slots).await
    }
    .await;
    positions.abort();
    outcome
}

/// Runs the job's steps as actions.
struct Steps<'a> {
    ctx: &'a JobContext,
    job: &'a Arc<Job>,
    function: DigestFunction,
}

impl Steps<'_> {
    /// Executes `spec` on `root` and reads its report.
    async fn run(
        &self,
        spec: &StepSpec,
        root: &Digest,
        cacheable: bool,
        timeout: Option<Duration>,
        avoid_agent: Option<&str>,
        on_partial: Option<&(dyn Fn(String, Vec<TestResult>) + Send + Sync)>,
    ) -> Result<StepRun, Stop> {
        let spec_json = &self.job.spec;
        let mut env: Vec<EnvironmentVariable> = spec_json.environment.clone();
        env.sort_by(|a, b| a.name.cmp(&b.name));
        let mut properties: Vec<Property> = spec_json
            .platform
            .iter()
            .filter(|p| p.name != EXEC_ROOT_PROPERTY && p.name != AVOID_AGENT_PROPERTY)
            .cloned()
            .collect();
        if let Some(agent) = avoid_agent.filter(|a| !a.is_empty()) {
            properties.push(Property {
                name: AVOID_AGENT_PROPERTY.to_owned(),
                value: agent.to_owned(),
            });
        }
        properties.push(Property {
            name: EXEC_ROOT_PROPERTY.to_owned(),
            value: spec_json.exec_root.clone(),
        });
        properties.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
        let platform = Platform { properties };
        let prepare = matches!(spec, StepSpec::Prepare { .. });
        #[expect(
            deprecated,
            reason = "agents and v2.0 clients read the pre-2.1 output fields"
        )]
        let command = Command {
            arguments: spec.to_argv(),
            environment_variables: env,
            output_files: vec![REPORT_PATH.to_owned()],
            output_directories: if prepare {
                vec![PREPARED_DIR.to_owned()]
            } else {
                Vec::new()
            },
            platform: Some(platform.clone()),
            ..Default::default()
        };
        let command_bytes = command.encode_to_vec();
        let command_digest = self.function.digest_of(&command_bytes);
        let timeout = timeout
            .unwrap_or(self.ctx.max_action_timeout)
            .min(self.ctx.max_action_timeout);
        let action = Action {
            command_digest: Some(command_digest.to_proto()),
            input_root_digest: Some(root.to_proto()),
            timeout: Some(proto_duration(timeout)),
            do_not_cache: !cacheable,
            platform: Some(platform),
            ..Default::default()
        };
        let action_bytes = action.encode_to_vec();
        let action_digest = self.function.digest_of(&action_bytes);
        for (digest, bytes) in [
            (command_digest, command_bytes),
            (action_digest, action_bytes),
        ] {
            self.ctx
                .store
                .write(&digest, &bytes)
                .map_err(|e| Stop::Infrastructure(format!("failed to store a step action: {e}")))?;
        }
        let request = ExecuteRequest {
            instance_name: spec_json.instance_name.clone(),
            skip_cache_lookup: !cacheable,
            action_digest: Some(action_digest.to_proto()),
            execution_policy: Some(ExecutionPolicy {
                priority: spec_json.priority,
            }),
            digest_function: self.function.to_proto(),
            ..Default::default()
        };
        let submitter = if spec_json.submitter.is_empty() {
            "anonymous".to_owned()
        } else {
            spec_json.submitter.clone()
        };
        let submitted = self
            .ctx
            .exec
            .submit(submitter, request)
            .await
            .map_err(|status| match status.code() {
                Code::InvalidArgument | Code::FailedPrecondition => stop_error(format!(
                    "the {} step was refused: {}",
                    step_name(spec),
                    status.message()
                )),
                _ => Stop::Infrastructure(format!(
                    "the {} step could not be queued: {}",
                    step_name(spec),
                    status.message()
                )),
            })?;
        let (response, cached) = match submitted {
            Submitted::Cached(snapshot) => (snapshot.response, true),
            Submitted::Queued(mut rx) => {
                let name = rx.borrow().name.clone();
                self.job.add_operation(&name);
                let mut cancelled = false;
                let mut partials_seen = 0;
                let response = loop {
                    // Only what is new: the snapshot's partial results grow with the batch.
                    let response = {
                        let snapshot = rx.borrow_and_update();
                        if let Some(on_partial) = on_partial {
                            for partial in snapshot.partial.iter().skip(partials_seen) {
                                match serde_json::from_str::<Vec<TestResult>>(&partial.results_json)
                                {
                                    Ok(results) => on_partial(partial.agent.clone(), results),
                                    Err(error) => {
                                        tracing::warn!(%error, "undecodable step progress");
                                    }
                                }
                            }
                            partials_seen = snapshot.partial.len();
                        }
                        snapshot.response.clone()
                    };
                    if let Some(response) = response {
                        break Some(response);
                    }
                    tokio::select! {
                        changed = rx.changed() => if changed.is_err() { break None },
                        () = self.job.cancel.cancelled(), if !cancelled => {
                            cancelled = true;
                            let _ = self.ctx.scheduler.cancel(&name).await;
                        }
                    }
                };
                self.job.remove_operation(&name);
                if cancelled {
                    return Err(Stop::Cancelled);
                }
                (response, false)
            }
        };
        let response = response.ok_or_else(|| {
            Stop::Infrastructure("the coordinator stopped while a step was running".to_owned())
        })?;
        let status = response.status.unwrap_or_default();
        if status.code == Code::Cancelled as i32 {
            return Err(Stop::Cancelled);
        }
        if status.code != 0 {
            return Err(Stop::Infrastructure(format!(
                "the {} step failed on the fleet: {}",
                step_name(spec),
                status.message
            )));
        }
        let result = response.result.unwrap_or_default();
        let report = self.report(&result).await?;
        Ok(StepRun {
            report,
            result,
            cached: cached || response.cached_result,
        })
    }

    /// The step's report, from its output file.
    async fn report(&self, result: &ActionResult) -> Result<StepReport, Stop> {
        let Some(file) = result.output_files.iter().find(|f| f.path == REPORT_PATH) else {
            let stderr =
                self.read_inline_or_blob(&result.stderr_raw, result.stderr_digest.as_ref());
            return Err(Stop::Infrastructure(format!(
                "the step's agent returned no report (exit code {}): {}; is the agent a Tessera agent of this version?",
                result.exit_code,
                tail(&stderr, 2000)
            )));
        };
        let bytes = self.read(file.digest.as_ref())?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Stop::Infrastructure(format!("the step's report does not parse: {e}")))
    }

    fn read(&self, digest: Option<&tessera_proto::reapi::Digest>) -> Result<Vec<u8>, Stop> {
        let digest = Digest::from_proto_opt(self.function, digest)
            .map_err(|e| Stop::Infrastructure(format!("bad digest in a step result: {e}")))?;
        self.ctx
            .store
            .read(&digest)
            .map_err(|e| Stop::Infrastructure(format!("failed to read {digest}: {e}")))?
            .map(|b| b.to_vec())
            .ok_or_else(|| {
                Stop::Infrastructure(format!("blob {digest} of a step result is missing"))
            })
    }

    fn read_inline_or_blob(
        &self,
        inline: &[u8],
        digest: Option<&tessera_proto::reapi::Digest>,
    ) -> String {
        if !inline.is_empty() {
            return String::from_utf8_lossy(inline).into_owned();
        }
        self.read(digest)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The input root with what the prepare step built laid over it.
    async fn prepared_root(
        &self,
        input_root: &Digest,
        result: &ActionResult,
    ) -> Result<Digest, Stop> {
        let Some(dir) = result
            .output_directories
            .iter()
            .find(|d| d.path == PREPARED_DIR)
        else {
            return Ok(*input_root);
        };
        let tree_bytes = self.read(dir.tree_digest.as_ref())?;
        let tree = Tree::decode(tree_bytes.as_slice()).map_err(|e| {
            Stop::Infrastructure(format!("the prepare step's tree does not decode: {e}"))
        })?;
        let store = Arc::clone(&self.ctx.store);
        let function = self.function;
        let base = *input_root;
        tokio::task::spawn_blocking(move || overlay(store.as_ref(), function, &base, &tree))
            .await
            .map_err(|e| Stop::Infrastructure(format!("overlay panicked: {e}")))?
            .map_err(|e| {
                Stop::Infrastructure(format!("failed to build the prepared input root: {e}"))
            })
    }
}

/// The running phase of a job.
struct Runs<'a> {
    steps: &'a Steps<'a>,
    job: &'a Arc<Job>,
    prepared: &'a Prepared,
    prepared_root: Digest,
    suite: SuiteKey,
    ids: HashMap<String, TestId>,
    /// The tests to run (not answered from cache).
    pending: Vec<String>,
    /// Runs started per test.
    attempts: HashMap<String, u32>,
    /// Output of each failed run per test.
    failures: HashMap<String, Vec<String>>,
    /// The agent each test last failed on.
    failed_on: HashMap<String, String>,
    /// Running batches: their tests, and those already reported while they ran.
    open_batches: HashMap<BatchId, (HashSet<String>, HashSet<String>)>,
    /// Tests with a final outcome.
    finished: HashMap<String, TestOutcome>,
    tally: &'a mut Tally,
}

type BatchFuture<'a> = BoxFuture<'a, (BatchId, Vec<String>, Result<StepRun, Stop>)>;

/// Results a running batch reported before it ended: its batch, the agent, the results.
type Partial = (BatchId, String, Vec<TestResult>);

impl Runs<'_> {
    async fn run(&mut self, planner: &mut ShardPlanner, slots: usize) -> Result<(), Stop> {
        let started = Instant::now();
        let test_timeout = self
            .job
            .spec
            .test_timeout
            .as_ref()
            .and_then(|d| Duration::try_from(*d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(self.steps.ctx.default_test_timeout);
        let mut in_flight: FuturesUnordered<BatchFuture<'_>> = FuturesUnordered::new();
        let (partial_tx, mut partial_rx) = tokio::sync::mpsc::unbounded_channel::<Partial>();
        let mut stop: Option<Stop> = None;
        let mut slots = slots;
        let mut tick = tokio::time::interval(TICK);
        let steps = self.steps;
        loop {
            while stop.is_none() && in_flight.len() < slots {
                let Some(batch) = planner.next_batch(started.elapsed()) else {
                    break;
                };
                let tests: Vec<TestId> = batch.tests.iter().map(|k| self.ids[k].clone()).collect();
                for key in &batch.tests {
                    *self.attempts.entry(key.clone()).or_insert(0) += 1;
                }
                let spec = StepSpec::Batch {
                    runner: self.job.runner.clone(),
                    prepared: self.prepared.clone(),
                    tests,
                    test_timeout_ms: u64::try_from(test_timeout.as_millis()).unwrap_or(u64::MAX),
                };
                let timeout = test_timeout
                    .saturating_mul(u32::try_from(batch.tests.len()).unwrap_or(u32::MAX))
                    .saturating_add(BATCH_SLACK);
                let root = self.prepared_root;
                let keys = batch.tests.clone();
                let batch_id = batch.id;
                self.open_batches.insert(
                    batch_id,
                    (batch.tests.iter().cloned().collect(), HashSet::new()),
                );
                let partial_tx = partial_tx.clone();
                // A retry goes to another agent than the one its test failed on, where possible.
                let avoid = batch
                    .tests
                    .iter()
                    .find_map(|k| self.failed_on.get(k).cloned());
                in_flight.push(Box::pin(async move {
                    let on_partial = move |agent: String, results: Vec<TestResult>| {
                        let _ = partial_tx.send((batch_id, agent, results));
                    };
                    let run = steps
                        .run(
                            &spec,
                            &root,
                            false,
                            Some(timeout),
                            avoid.as_deref(),
                            Some(&on_partial),
                        )
                        .await;
                    (batch_id, keys, run)
                }));
            }
            if in_flight.is_empty() {
                break;
            }
            tokio::select! {
                Some((batch_id, keys, run)) = in_flight.next() => {
                    // Whatever the batch reported on its way comes first.
                    while let Ok((id, agent, results)) = partial_rx.try_recv() {
                        if let Some(s) = self.finish_partial(planner, id, &agent, results) {
                            stop.get_or_insert(s);
                        }
                    }
                    let (_, reported) = self.open_batches.remove(&batch_id).unwrap_or_default();
                    let keys: Vec<String> =
                        keys.into_iter().filter(|k| !reported.contains(k)).collect();
                    match run {
                        Ok(run) => {
                            if let Some(s) = self.finish_batch(planner, &keys, run) {
                                stop.get_or_insert(s);
                            }
                        }
                        Err(s) => {
                            planner.requeue(keys);
                            if stop.is_none() {
                                // Stop everything else: the rest of the job cannot end well.
                                for name in self.job.operations() {
                                    let _ = steps.ctx.scheduler.cancel(&name).await;
                                }
                            }
                            stop.get_or_insert(s);
                        }
                    }
                    self.progress(planner, in_flight.len(), slots).await;
                }
                Some((id, agent, results)) = partial_rx.recv() => {
                    if let Some(s) = self.finish_partial(planner, id, &agent, results) {
                        stop.get_or_insert(s);
                    }
                }
                () = self.job.cancel.cancelled(), if stop.is_none() => {
                    stop = Some(Stop::Cancelled);
                }
                _ = tick.tick() => {
                    let fleet = self.progress(planner, in_flight.len(), slots).await;
                    slots = fleet.max(1);
                }
            }
        }
        // Tests that never got a final outcome (cancelled, fail-fast, infrastructure).
        let mut left: Vec<String> = self
            .pending
            .iter()
            .filter(|k| !self.finished.contains_key(*k))
            .cloned()
            .collect();
        left.sort();
        for key in &left {
            let test = self.ids[key].clone();
            self.emit_final(key, &test, TestOutcome::Cancelled, None, String::new(), "");
        }
        match stop {
            None | Some(Stop::Error { .. }) if self.tally.cancelled_by_fail_fast => Ok(()),
            None => Ok(()),
            Some(s) => Err(s),
        }
    }

    /// Handles a finished batch; returns a reason to stop (fail-fast) if any.
    fn finish_batch(
        &mut self,
        planner: &mut ShardPlanner,
        keys: &[String],
        run: StepRun,
    ) -> Option<Stop> {
        let agent = run
            .result
            .execution_metadata
            .as_ref()
            .map(|m| m.worker.clone())
            .unwrap_or_default();
        let results: Vec<TestResult> = match run.report {
            StepReport::Ran { results } => results,
            StepReport::Failed { error } => keys
                .iter()
                .map(|k| TestResult {
                    id: self.ids[k].clone(),
                    outcome: Outcome::NoResult,
                    duration: None,
                    output: error.clone(),
                })
                .collect(),
            other => keys
                .iter()
                .map(|k| TestResult {
                    id: self.ids[k].clone(),
                    outcome: Outcome::NoResult,
                    duration: None,
                    output: format!("unexpected report from a batch: {other:?}"),
                })
                .collect(),
        };
        let mut by_key: HashMap<String, TestResult> =
            results.into_iter().map(|r| (test_key(&r.id), r)).collect();
        let results = keys
            .iter()
            .map(|key| {
                by_key.remove(key).unwrap_or_else(|| TestResult {
                    id: self.ids[key].clone(),
                    outcome: Outcome::NoResult,
                    duration: None,
                    output: "the runner reported nothing for this test".to_owned(),
                })
            })
            .collect();
        self.record_results(planner, &agent, results)
    }

    /// Handles results a batch reported while it ran: each test of the batch once.
    fn finish_partial(
        &mut self,
        planner: &mut ShardPlanner,
        batch: BatchId,
        agent: &str,
        results: Vec<TestResult>,
    ) -> Option<Stop> {
        let (tests, reported) = self.open_batches.get_mut(&batch)?;
        let fresh: Vec<TestResult> = results
            .into_iter()
            .filter(|r| {
                let key = test_key(&r.id);
                tests.contains(&key) && reported.insert(key)
            })
            .collect();
        if fresh.is_empty() {
            return None;
        }
        self.record_results(planner, agent, fresh)
    }

    /// Reports, records and (where retries are left) requeues finished tests; returns a
    /// reason to stop (fail-fast) if any.
    fn record_results(
        &mut self,
        planner: &mut ShardPlanner,
        agent: &str,
        results: Vec<TestResult>,
    ) -> Option<Stop> {
        let agent = agent.to_owned();
        let mut durations = Vec::new();
        let mut passes = Vec::new();
        let mut requeue = Vec::new();
        let mut stop = None;
        for result in results {
            let key = &test_key(&result.id);
            let Some(test) = self.ids.get(key).cloned() else {
                continue;
            };
            let attempt = self.attempts.get(key).copied().unwrap_or(1);
            if let Some(took) = result.duration {
                self.tally.serial += took;
            }
            match result.outcome {
                Outcome::Passed | Outcome::Skipped => {
                    let took = result.duration.unwrap_or_default();
                    let average = planner.record(key, took);
                    if result.duration.is_some() {
                        durations.push((test.clone(), average));
                    }
                    let outcome = if result.outcome == Outcome::Skipped {
                        TestOutcome::Skipped
                    } else if self.failures.contains_key(key) {
                        TestOutcome::Flaky
                    } else {
                        passes.push((test.clone(), took));
                        TestOutcome::Passed
                    };
                    self.emit_final(key, &test, outcome, result.duration, String::new(), &agent);
                }
                Outcome::Failed | Outcome::TimedOut | Outcome::NoResult => {
                    let outcome = match result.outcome {
                        Outcome::TimedOut => TestOutcome::TimedOut,
                        Outcome::NoResult => TestOutcome::NoResult,
                        _ => TestOutcome::Failed,
                    };
                    let output = tail(&result.output, MAX_OUTPUT);
                    self.failures
                        .entry(key.clone())
                        .or_default()
                        .push(output.clone());
                    self.failed_on.insert(key.clone(), agent.clone());
                    if attempt <= self.job.spec.retries && !self.job.cancel.is_cancelled() {
                        self.job.emit(Kind::Test(TestFinished {
                            test: Some(test_ref(&test)),
                            outcome: outcome as i32,
                            attempt,
                            r#final: false,
                            cached: false,
                            duration: result.duration.map(proto_duration),
                            output,
                            agent: agent.clone(),
                            failed_attempts: Vec::new(),
                        }));
                        requeue.push(key.clone());
                    } else {
                        let took = result.duration.unwrap_or_default();
                        let average = planner.record(key, took);
                        if result.duration.is_some() {
                            durations.push((test.clone(), average));
                        }
                        self.emit_final(key, &test, outcome, result.duration, output, &agent);
                        if self.job.spec.fail_fast && stop.is_none() {
                            self.tally.cancelled_by_fail_fast = true;
                            self.job.emit(Kind::Log(LogLine {
                                text: format!("--fail-fast: stopping after {test} failed"),
                            }));
                            stop = Some(Stop::Error {
                                message: String::new(),
                                log: String::new(),
                            });
                        }
                    }
                }
            }
        }
        if !requeue.is_empty() {
            planner.requeue(requeue);
        }
        if let Err(error) = self
            .steps
            .ctx
            .tests
            .record(&self.suite, &durations, &passes)
        {
            tracing::warn!(%error, job = %self.job.id, "failed to record test results");
        }
        if stop.is_some() {
            self.job.cancel.cancel();
        }
        stop
    }

    fn emit_final(
        &mut self,
        key: &str,
        test: &TestId,
        outcome: TestOutcome,
        duration: Option<Duration>,
        output: String,
        agent: &str,
    ) {
        self.finished.insert(key.to_owned(), outcome);
        self.tally.count(outcome);
        let failed_attempts = if outcome == TestOutcome::Flaky {
            self.failures.get(key).cloned().unwrap_or_default()
        } else {
            Vec::new()
        };
        self.job.emit(Kind::Test(TestFinished {
            test: Some(test_ref(test)),
            outcome: outcome as i32,
            attempt: self.attempts.get(key).copied().unwrap_or(0),
            r#final: true,
            cached: false,
            duration: duration.map(proto_duration),
            output: if is_failure(outcome) {
                output
            } else {
                String::new()
            },
            agent: agent.to_owned(),
            failed_attempts,
        }));
    }

    /// Emits a progress event and returns the fleet's slot count it saw (0 if unknown).
    async fn progress(&self, planner: &ShardPlanner, running: usize, slots: usize) -> usize {
        let (agents, busy, total_slots) = match self.steps.ctx.scheduler.stats().await {
            Ok((_, agents)) => (
                agents.len(),
                agents.iter().map(|a| a.running).sum::<usize>(),
                agents.iter().map(|a| a.slots as usize).sum::<usize>(),
            ),
            Err(_) => (0, 0, 0),
        };
        let eta = planner.expected_remaining() / u32::try_from(slots.max(1)).unwrap_or(1);
        self.job.emit(Kind::Progress(Progress {
            done: self.tally.done(),
            total: u32::try_from(self.ids.len()).unwrap_or(u32::MAX),
            running_batches: u32::try_from(running).unwrap_or(u32::MAX),
            agents: u32::try_from(agents).unwrap_or(u32::MAX),
            busy_slots: u32::try_from(busy).unwrap_or(u32::MAX),
            total_slots: u32::try_from(total_slots).unwrap_or(u32::MAX),
            eta: Some(proto_duration(eta)),
        }));
        total_slots
    }
}

impl Tally {
    fn done(&self) -> u32 {
        self.passed + self.failed + self.skipped + self.flaky + self.timed_out + self.not_run
    }
}

/// Emits the job's queue position whenever it changes, while it has queued operations.
async fn report_queue_position(scheduler: SchedulerHandle, job: Arc<Job>) {
    let mut last: Option<usize> = None;
    let mut tick = tokio::time::interval(TICK / 2);
    loop {
        tick.tick().await;
        let names = job.operations();
        let position = if names.is_empty() {
            None
        } else {
            scheduler.queue_position(names).await.ok().flatten()
        };
        let shown = position.unwrap_or(0);
        if last != Some(shown) && (position.is_some() || last.is_some()) {
            job.emit(Kind::Queue(QueuePosition {
                ahead: u32::try_from(shown).unwrap_or(u32::MAX),
            }));
        }
        if position.is_some() || last.is_some() {
            last = Some(shown);
        }
    }
}

async fn fleet_slots(scheduler: &SchedulerHandle) -> usize {
    scheduler
        .stats()
        .await
        .map(|(stats, _)| stats.slots)
        .unwrap_or(1)
        .max(1)
}

/// Everything besides the input root that decides a test's result, in a stable encoding.
fn settings_key(job: &Job) -> Vec<u8> {
    let spec = &job.spec;
    let mut key = Vec::new();
    let mut push = |part: &str| {
        key.extend_from_slice(&(part.len() as u64).to_le_bytes());
        key.extend_from_slice(part.as_bytes());
    };
    push(&spec.instance_name);
    push(&spec.digest_function.to_string());
    push(&spec.runner_json);
    push(&spec.exec_root);
    let mut env: Vec<_> = spec
        .environment
        .iter()
        .map(|v| (&v.name, &v.value))
        .collect();
    env.sort();
    for (name, value) in env {
        push(name);
        push(value);
    }
    push("--platform--");
    let mut platform: Vec<_> = spec.platform.iter().map(|p| (&p.name, &p.value)).collect();
    platform.sort();
    for (name, value) in platform {
        push(name);
        push(value);
    }
    key
}

fn test_key(test: &TestId) -> String {
    format!("{}\u{0}{}", test.group, test.name)
}

fn test_ref(test: &TestId) -> TestRef {
    TestRef {
        group: test.group.clone(),
        name: test.name.clone(),
    }
}

fn phase(phase: JobPhase, detail: &str) -> Kind {
    Kind::Phase(PhaseChanged {
        phase: phase as i32,
        detail: detail.to_owned(),
    })
}

fn step_name(spec: &StepSpec) -> &'static str {
    match spec {
        StepSpec::Prepare { .. } => "prepare",
        StepSpec::List { .. } => "list",
        StepSpec::Batch { .. } => "batch",
    }
}

fn stop_error(message: String) -> Stop {
    Stop::Error {
        message,
        log: String::new(),
    }
}

fn step_failed(step: &str, report: StepReport) -> Stop {
    match report {
        StepReport::Failed { error } => Stop::Error {
            message: format!(
                "the {step} step failed; fix the build or the test command and run again"
            ),
            log: tail(&error, MAX_OUTPUT),
        },
        other => Stop::Infrastructure(format!("unexpected report from the {step} step: {other:?}")),
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[... {start} bytes cut ...]\n{}", &text[start..])
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_cut_at_character_boundaries() {
        assert_eq!(tail("short", 10), "short");
        let cut = tail("ééééé", 3);
        assert!(cut.ends_with('é'), "{cut}");
        assert!(cut.starts_with("[... "), "{cut}");
    }

    #[test]
    fn failures_are_counted_as_failed() {
        let mut tally = Tally::default();
        for outcome in [
            TestOutcome::Passed,
            TestOutcome::Failed,
            TestOutcome::NoResult,
            TestOutcome::Flaky,
            TestOutcome::Cancelled,
        ] {
            tally.count(outcome);
        }
        assert_eq!(
            (tally.passed, tally.failed, tally.flaky, tally.not_run),
            (1, 2, 1, 1)
        );
        assert_eq!(tally.done(), 5);
    }
}

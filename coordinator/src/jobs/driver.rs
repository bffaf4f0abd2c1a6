//! Runs one job (DESIGN.md §5) through its phases: prepare, list, answer cached tests, then
//! run the rest (`batches.rs`), and emit the final event (`tally.rs`).
//!
//! The phases run once per matrix cell (`cells.rs`; a plain job is one unnamed cell), each
//! cell with its own environment, so its own prepare and list actions, cached passes and
//! history. The cells run side by side, not one after another: they share the fleet like any
//! jobs do, each planning its batches for its share of the slots, so a matrix run takes about
//! the time of its slowest cell on a fleet big enough for all of them, and a cell's build does
//! not wait for another cell's tests. A cell whose build is broken stops alone; a failure that
//! stops the job (an infrastructure failure, fail-fast, cancellation) stops every cell. The
//! job's final event counts every cell and says how each one ended.
//!
//! Every step is a REAPI action (`steps.rs`) submitted through the execution layer, so steps
//! share the scheduler, fair share, leases, retries and the action cache with every other
//! client. Prepare and list actions are cacheable like any action; batch actions are not
//! (their tests are cached one by one in [`TestStore`]).
//!
//! Why a job ends early is a [`Stop`]; a failing test is not one, unless the job runs with
//! fail-fast.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::meta::MetaError;
use tessera_cas::store::BlobStore;
use tessera_proto::reapi::ActionResult;
use tessera_proto::tessera::v1::{
    CellFinished, JobFinished, JobPhase, PhaseChanged, QueuePosition, TestFinished, TestOutcome,
    TestRef, TestsPlanned, job_event::Kind,
};
use tessera_proto::time::to_proto_duration;
use tessera_runners::step::{StepReport, StepSpec};
use tessera_runners::{Prepared, TestId};
use tokio_util::sync::CancellationToken;

use super::batches::RunPhase;
use super::cells::Cell;
use super::job::Job;
use super::planner::{PlannerConfig, ShardPlanner, Startups};
use super::quarantine::{QuarantineStore, Quarantined};
use super::results::{CachedPass, SuiteKey, TestStore};
use super::steps::{StepRequest, StepRun, Steps, step_failed, tests_have_network};
use super::tally::Tally;
use super::test_state::{TestEvent, TestTable};
use crate::execution::execute::Executor;
use crate::execution::scheduler::SchedulerHandle;

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
pub(super) const TICK: Duration = Duration::from_secs(1);

/// What every job driver shares.
#[derive(Clone)]
pub struct JobContext {
    /// Cancelled when the coordinator starts shutting down (before the scheduler stops).
    pub shutdown: CancellationToken,
    /// The CAS.
    pub store: Arc<dyn BlobStore>,
    /// How steps are executed.
    pub executor: Executor,
    /// For fleet size, queue positions and cancellation.
    pub scheduler: SchedulerHandle,
    /// Cached passes and durations.
    pub tests: TestStore,
    /// Quarantined tests, and the flake policy.
    pub quarantine: QuarantineStore,
    /// Deadline of a test when the job names none.
    pub default_test_timeout: Duration,
    /// Longest action timeout the coordinator accepts.
    pub max_action_timeout: Duration,
    /// Publishes the job's end to the webhooks.
    pub notifier: crate::notify::Notifier,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext").finish_non_exhaustive()
    }
}

/// Why a job (or one cell of it) stopped early.
#[derive(Debug, Clone)]
pub(super) enum Stop {
    /// The user's project is broken (prepare or list failed) or the spec cannot run.
    Error {
        /// What to tell the user.
        message: String,
        /// The end of the failed step's output.
        log: String,
    },
    /// A test failed and the job runs with fail-fast: the rest is not run.
    FailFast {
        /// The test.
        test: TestId,
    },
    /// The fleet failed the job.
    Infrastructure(String),
    /// Cancelled.
    Cancelled,
}

/// How [`run`] left a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It ran to its end (passed, failed, cancelled or failed on the fleet) and its final
    /// event was emitted.
    Finished,
    /// The coordinator is shutting down under it: no final event; the job's record must be
    /// kept so the next start runs it again.
    Interrupted,
}

/// Runs `job` to its end and emits its final event, unless the coordinator stops first.
pub async fn run(ctx: JobContext, job: Arc<Job>) -> Ended {
    let started = Instant::now();
    let cells = Cell::of(&job.spec);
    // Results restored after a restart stand and count, each in its cell (`journal.rs`).
    let mut tallies: Vec<Tally> = cells
        .iter()
        .map(|cell| {
            Tally::restored(
                job.restored()
                    .iter()
                    .filter(|((restored_in, _), _)| *restored_in == cell.name)
                    .map(|(_, test)| test),
            )
        })
        .collect();
    let (stops, before_cells) = match drive(&ctx, &job, &cells, &mut tallies).await {
        Ok(stops) => (stops, None),
        // No cell started: the job's own stop.
        Err(stop) => (vec![None; cells.len()], Some(stop)),
    };
    let stop = before_cells.clone().or_else(|| job_stop(&stops));
    if matches!(stop, Some(Stop::Infrastructure(_))) && ctx.shutdown.is_cancelled() {
        tracing::info!(job = %job.id, "job interrupted by shutdown; it runs again at the next start");
        return Ended::Interrupted;
    }
    for (cell, stop) in cells.iter().zip(&stops) {
        if let Some(Stop::FailFast { test }) = stop {
            tracing::info!(job = %job.id, cell = %cell.name, %test, "stopped by --fail-fast");
        }
    }
    // Whatever stopped the job, none of its operations keeps a slot.
    for name in job.operations() {
        let _ = ctx.scheduler.cancel(&name).await;
    }
    let ends: Vec<(&Cell, Tally, Option<Stop>)> = cells
        .iter()
        .zip(tallies)
        .zip(stops)
        .map(|((cell, tally), stop)| (cell, tally, stop))
        .collect();
    let last = finished(ends, before_cells, started.elapsed());
    let result = crate::metrics::job_result(last.result());
    tracing::Span::current().record("job.result", result);
    crate::metrics::metrics().job_finished(result, started.elapsed());
    let flaky = flaky_tests(&job);
    ctx.notifier.job_finished(crate::notify::FinishedJob {
        id: &job.id,
        spec: &job.spec,
        finished: &last,
        flaky: &flaky,
    });
    job.emit(Kind::Finished(last));
    Ended::Finished
}

/// The tests whose final outcome in `job` was flaky.
fn flaky_tests(job: &Job) -> Vec<TestRef> {
    let (events, _) = job.events_after(0);
    events
        .into_iter()
        .filter_map(|event| match event.kind {
            Some(Kind::Test(test)) if test.r#final && test.outcome() == TestOutcome::Flaky => {
                test.test
            }
            _ => None,
        })
        .collect()
}

/// Runs every cell of the job side by side, each counting into its tally; how each one
/// stopped, in the cells' order. An error is the job's own (nothing ran).
async fn drive(
    ctx: &JobContext,
    job: &Arc<Job>,
    cells: &[Cell],
    tallies: &mut [Tally],
) -> Result<Vec<Option<Stop>>, Stop> {
    let function = DigestFunction::from_request(job.spec.digest_function)
        .map_err(|e| stop_error(format!("digest_function: {e}")))?;
    let input_root = Digest::from_proto_opt(function, job.spec.input_root_digest.as_ref())
        .map_err(|e| stop_error(format!("input_root_digest: {e}")))?;
    let pinned = super::toolchain::pin(&ctx.scheduler, job).await?;
    let quarantined = quarantined(ctx, job).await?;
    let steps: Vec<Steps<'_>> = cells
        .iter()
        .map(|cell| Steps {
            ctx,
            job,
            function,
            pinned: pinned.clone(),
            cell,
        })
        .collect();
    let positions = tokio::spawn(report_queue_position(
        ctx.scheduler.clone(),
        Arc::clone(job),
    ));
    let runs = steps
        .iter()
        .zip(tallies.iter_mut())
        .map(|(steps, tally)| phases(steps, input_root, cells.len(), &quarantined, tally));
    let stops = futures::future::join_all(runs).await;
    positions.abort();
    Ok(stops.into_iter().map(Result::err).collect())
}

/// The tests of the job's project that are quarantined as it starts (every cell's).
async fn quarantined(ctx: &JobContext, job: &Job) -> Result<Quarantined, Stop> {
    let store = ctx.quarantine.clone();
    let (instance, project) = (job.spec.instance_name.clone(), job.spec.project.clone());
    tokio::task::spawn_blocking(move || store.quarantined(&instance, &project))
        .await
        .map_err(|e| Stop::Infrastructure(format!("quarantine lookup panicked: {e}")))?
        .map_err(|e| Stop::Infrastructure(format!("failed to read the quarantine: {e}")))
}

/// What stopped the job as a whole, given how each cell stopped: an infrastructure failure
/// first (the fleet failed the job), then a broken build, then fail-fast (its failure stopped
/// the other cells, which read as cancelled), then cancellation.
fn job_stop(stops: &[Option<Stop>]) -> Option<Stop> {
    let rank = |stop: &Stop| match stop {
        Stop::Infrastructure(_) => 3,
        Stop::Error { .. } => 2,
        Stop::FailFast { .. } => 1,
        Stop::Cancelled => 0,
    };
    stops.iter().flatten().max_by_key(|s| rank(s)).cloned()
}

/// The job's final event from how each cell ended: the counts of every cell and the job's
/// result ([`job_stop`], or `before_cells`, what stopped the job before any cell started); a
/// matrix job whose cells ran also says how each one ended, and its message and log are those
/// of every cell that stopped early, each under its cell's name.
fn finished(
    ends: Vec<(&Cell, Tally, Option<Stop>)>,
    before_cells: Option<Stop>,
    wall: Duration,
) -> JobFinished {
    let stops: Vec<Option<Stop>> = ends.iter().map(|(_, _, stop)| stop.clone()).collect();
    let mut total = Tally::default();
    for (_, tally, _) in &ends {
        total.add(tally);
    }
    let matrix = ends.iter().any(|(cell, _, _)| !cell.name.is_empty());
    if before_cells.is_some() || !matrix {
        return total.finished(before_cells.or_else(|| job_stop(&stops)), wall);
    }
    let mut finished = total.finished(job_stop(&stops), wall);
    let (mut messages, mut logs) = (Vec::new(), Vec::new());
    for (cell, tally, stop) in ends {
        let ended = tally.finished(stop, wall);
        if !ended.message.is_empty() {
            messages.push(format!("[{}] {}", cell.name, ended.message));
        }
        if !ended.log.is_empty() {
            logs.push(format!("== [{}] ==\n{}", cell.name, ended.log));
        }
        finished.cells.push(CellFinished {
            cell: cell.name.clone(),
            result: ended.result,
            message: ended.message,
        });
    }
    finished.message = messages.join("\n");
    finished.log = logs.join("\n");
    finished
}

/// Runs one cell of the job (`steps.cell`) through its phases, counting into `tally`;
/// `cells` run side by side; `quarantined` tests' failures do not fail it.
async fn phases(
    steps: &Steps<'_>,
    input_root: Digest,
    cells: usize,
    quarantined: &Quarantined,
    tally: &mut Tally,
) -> Result<(), Stop> {
    let (ctx, job, cell) = (steps.ctx, steps.job, steps.cell);
    let (prepared, prepared_root) = prepare(steps, input_root).await?;
    let (listed, list_wall, warmed) = list(steps, &prepared, prepared_root).await?;
    tally.tool_startups += warmed;
    let listed_count = listed.len();

    // Results restored after a restart stand (they are in the tally already); cached passes
    // answer at once; the rest is planned from its history.
    let suite = SuiteKey::new(
        &settings_key(steps),
        &prepared_root.to_string(),
        &history_scope(job, &cell.name),
    );
    let mut tests = TestTable::default();
    let mut listed_anew = Vec::with_capacity(listed.len());
    for test in listed {
        let Some(restored) = job.restored().get(&(cell.name.clone(), test.clone())) else {
            listed_anew.push(test);
            continue;
        };
        if !tests.insert(test.clone()) {
            continue;
        }
        let event = TestEvent::Restored {
            outcome: restored.outcome(),
            attempt: restored.attempt,
        };
        if let Err(error) = tests.apply(&test, event) {
            tracing::warn!(%error, job = %job.id, "ignored a restored result");
        }
    }
    let mut to_run: Vec<(TestId, Option<Duration>)> = Vec::new();
    let mut cached_events = Vec::new();
    let (looked_up, recorded_startup) =
        look_up(&ctx.tests, &suite, job.spec.skip_cache, listed_anew).await?;
    for (test, cached, history) in looked_up {
        if !tests.insert(test.clone()) {
            continue;
        }
        match cached {
            Some(pass) => {
                let event = if pass.skipped {
                    TestEvent::CachedSkip
                } else {
                    TestEvent::Cached
                };
                if let Err(error) = tests.apply(&test, event) {
                    tracing::warn!(%error, job = %job.id, "ignored a cached pass");
                }
                let outcome = if pass.skipped {
                    TestOutcome::Skipped
                } else {
                    TestOutcome::Passed
                };
                let in_quarantine = quarantined.contains(&test);
                cached_events.push(TestFinished {
                    test: Some(test_ref(&test)),
                    outcome: outcome as i32,
                    attempt: 1,
                    r#final: true,
                    cached: true,
                    duration: Some(to_proto_duration(pass.duration)),
                    cell: cell.name.clone(),
                    quarantined: in_quarantine,
                    ..Default::default()
                });
                // Its subtests, as the passing run reported them.
                for (name, skipped) in &pass.subtests {
                    let outcome = if *skipped {
                        TestOutcome::Skipped
                    } else {
                        TestOutcome::Passed
                    };
                    cached_events.push(TestFinished {
                        test: Some(test_ref(&TestId::new(&test.group, name))),
                        outcome: outcome as i32,
                        attempt: 1,
                        r#final: true,
                        cached: true,
                        subtest: true,
                        cell: cell.name.clone(),
                        quarantined: in_quarantine,
                        ..Default::default()
                    });
                }
            }
            None => to_run.push((test, history)),
        }
    }
    let to_run_count = to_run.len();
    // Cells run side by side: each plans for its share of the fleet.
    let slots = fleet_slots(&ctx.scheduler).await.div_ceil(cells);
    let config = job_planner_config(job, list_wall, listed_count, recorded_startup);
    let mut planner = ShardPlanner::new(to_run, slots, config);
    if job.spec.keep_files_together {
        let runner = job.runner.runner();
        planner.keep_together(|test: &TestId| runner.unit_of(test));
    }
    job.emit(Kind::Planned(TestsPlanned {
        total: u32::try_from(tests.len()).unwrap_or(u32::MAX),
        cached: u32::try_from(cached_events.iter().filter(|e| !e.subtest).count())
            .unwrap_or(u32::MAX),
        to_run: u32::try_from(to_run_count).unwrap_or(u32::MAX),
        expected: Some(to_proto_duration(planner.expected_remaining())),
        cell: cell.name.clone(),
    }));
    for event in cached_events {
        tally.cached += 1;
        tally.count_test(event.outcome(), event.quarantined);
        job.emit(Kind::Test(event));
    }
    if to_run_count == 0 {
        return Ok(());
    }

    job.emit(phase(cell, JobPhase::Running, ""));
    RunPhase::new(
        steps,
        &prepared,
        prepared_root,
        suite,
        tests,
        planner,
        quarantined,
        tally,
    )
    .run(slots)
    .await
}

/// The prepare step, if the runner has one: what it built, and the input root with its
/// products laid over.
async fn prepare(steps: &Steps<'_>, input_root: Digest) -> Result<(Prepared, Digest), Stop> {
    let job = steps.job;
    if job.runner.runner().prepare_command().is_none() {
        return Ok((Prepared::default(), input_root));
    }
    job.emit(phase(steps.cell, JobPhase::Preparing, ""));
    let spec = StepSpec::Prepare {
        runner: job.runner.clone(),
        persist: job.spec.persist.iter().map(Into::into).collect(),
    };
    let run = steps.run(StepRequest::cacheable(spec, input_root)).await?;
    let StepReport::Prepared { prepared } = run.report else {
        let had_network = job.spec.prepare_network || tests_have_network(&job.spec);
        return Err(step_failed("prepare", run.report, had_network));
    };
    let root = steps.prepared_root(&input_root, &run.result).await?;
    if run.cached {
        job.emit(phase(
            steps.cell,
            JobPhase::Preparing,
            "prepare answered from cache",
        ));
    }
    Ok((prepared, root))
}

/// The list step: the suite's tests, in the tool's order, and how long the tool ran (also
/// for a cached step: the run that filled the cache), if the agent said.
async fn list(
    steps: &Steps<'_>,
    prepared: &Prepared,
    prepared_root: Digest,
) -> Result<(Vec<TestId>, Option<Duration>, u32), Stop> {
    let job = steps.job;
    job.emit(phase(steps.cell, JobPhase::Listing, ""));
    let spec = StepSpec::List {
        runner: job.runner.clone(),
        prepared: prepared.clone(),
    };
    let (queued, listing_queued) = tokio::sync::oneshot::channel();
    let request = StepRequest {
        queued: Some(queued),
        ..StepRequest::cacheable(spec, prepared_root)
    };
    let listing = steps.run(request);
    let warming = warm_up(steps, prepared, prepared_root, listing_queued);
    tokio::pin!(listing, warming);
    // The list's answer waits for the warm-up's report (its start-up counts) a moment at
    // most: the worker is started either way.
    let (run, warmed) = tokio::select! {
        run = &mut listing => {
            let warmed = tokio::time::timeout(WARM_UP_REPORT_WAIT, &mut warming).await;
            (run?, warmed.unwrap_or(0))
        }
        warmed = &mut warming => (listing.await?, warmed),
    };
    let StepReport::Listed { tests } = run.report else {
        return Err(step_failed(
            "list",
            run.report,
            tests_have_network(&job.spec),
        ));
    };
    Ok((tests, execution_wall(&run.result), warmed))
}

/// For a runner with a long-lived worker ([`tessera_runners::Runner::long_lived_worker`]):
/// once the list step is `queued` (not answered from the action cache, so the tests will
/// probably run), a batch with no tests starts one of the job's workers on the fleet, so that
/// it collects the suite while the list step does instead of after it. Only with a slot to
/// spare beside the list step; a failure only means the first batch starts its worker itself.
async fn warm_up(
    steps: &Steps<'_>,
    prepared: &Prepared,
    root: Digest,
    queued: tokio::sync::oneshot::Receiver<()>,
) -> u32 {
    let job = steps.job;
    if !job.runner.runner().long_lived_worker() || queued.await.is_err() {
        return 0;
    }
    if fleet_slots(&steps.ctx.scheduler).await < 2 {
        return 0;
    }
    let spec = StepSpec::Batch {
        runner: job.runner.clone(),
        prepared: prepared.clone(),
        tests: Vec::new(),
        test_timeout_ms: 0,
        worker: Some(worker_name(job, steps.cell)),
    };
    let request = StepRequest {
        cacheable: false,
        timeout: Some(WARM_UP_TIMEOUT),
        ..StepRequest::cacheable(spec, root)
    };
    match steps.run(request).await {
        Ok(StepRun {
            report: StepReport::Ran { startups, .. },
            ..
        }) => startups,
        Ok(_) => 0,
        Err(error) => {
            tracing::debug!(job = %job.id, ?error, "warming up a test worker failed");
            0
        }
    }
}

/// How long the list step's answer waits for the warm-up's report, at most.
const WARM_UP_REPORT_WAIT: Duration = Duration::from_secs(1);

/// The longest a warm-up step (starting a worker, not waiting for it) may take.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// The name of `job`'s workers in `cell` (`StepSpec::Batch`'s `worker`): batches of one job
/// and cell may share a worker on an agent; other jobs' never.
pub(super) fn worker_name(job: &Job, cell: &Cell) -> String {
    format!("{}/{}", job.id, cell.name)
}

/// The planner settings of `job`: [`planner_config`] with what the job knows of its suite.
/// The tool's start-up is the suite's recorded one, else the list step's wall time (one
/// start-up plus collecting every test: an upper bound until the first batch measures it).
/// A test without history is first expected to take the list step's wall time over the
/// tests it listed (until this job's first results revise it).
fn job_planner_config(
    job: &Job,
    list_wall: Option<Duration>,
    listed: usize,
    recorded_startup: Option<Duration>,
) -> PlannerConfig {
    let list_wall = list_wall.unwrap_or_default();
    let unmeasured_test = match u32::try_from(listed) {
        Ok(n) if n > 0 => list_wall / n,
        _ => Duration::ZERO,
    };
    PlannerConfig {
        startup: recorded_startup.unwrap_or(list_wall),
        startups: if job.runner.runner().long_lived_worker() {
            Startups::PerSlot
        } else {
            Startups::PerBatch
        },
        unmeasured_test,
        ..planner_config()
    }
}

/// How long an action's command ran on its agent (inputs and outputs not included), from
/// its result's execution metadata; `None` if the agent did not say.
pub(super) fn execution_wall(result: &ActionResult) -> Option<Duration> {
    let metadata = result.execution_metadata.as_ref()?;
    let start = metadata.execution_start_timestamp.as_ref()?;
    let end = metadata.execution_completed_timestamp.as_ref()?;
    let nanos =
        |t: &prost_types::Timestamp| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    let took = u64::try_from(nanos(end) - nanos(start)).ok()?;
    Some(Duration::from_nanos(took))
}

/// A listed test, its cached pass (unless `skip_cache`) and its recorded duration.
type LookedUp = (TestId, Option<CachedPass>, Option<Duration>);

/// Each listed test with its cached pass (unless `skip_cache`) and its recorded duration, and
/// the suite's recorded tool start-up.
async fn look_up(
    store: &TestStore,
    suite: &SuiteKey,
    skip_cache: bool,
    tests: Vec<TestId>,
) -> Result<(Vec<LookedUp>, Option<Duration>), Stop> {
    let store = store.clone();
    let suite = suite.clone();
    tokio::task::spawn_blocking(move || {
        let startup = store.startup(&suite)?;
        let tests = tests
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
            .collect::<Result<Vec<_>, MetaError>>()?;
        Ok::<_, MetaError>((tests, startup))
    })
    .await
    .map_err(|e| Stop::Infrastructure(format!("test lookup panicked: {e}")))?
    .map_err(|e| Stop::Infrastructure(format!("failed to read test history: {e}")))
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

/// Everything besides the input root that decides a test's result in the cell `steps` run,
/// in a stable encoding.
fn settings_key(steps: &Steps<'_>) -> Vec<u8> {
    let (spec, pinned) = (&steps.job.spec, &steps.pinned);
    let mut key = Vec::new();
    let mut push = |part: &str| {
        key.extend_from_slice(&(part.len() as u64).to_le_bytes());
        key.extend_from_slice(part.as_bytes());
    };
    push(&spec.instance_name);
    push(&spec.digest_function.to_string());
    // The runner without its test selection: a test picked by `-k` or a path answers from the
    // pass it had when the whole suite ran.
    let runner = serde_json::to_string(&steps.job.runner.key_settings())
        .unwrap_or_else(|_| spec.runner_json.clone());
    push(&runner);
    push(&spec.exec_root);
    // The cell's environment: the job's with the cell's variables laid over it.
    let mut env: Vec<_> = steps
        .cell
        .environment
        .iter()
        .map(|v| (&v.name, &v.value))
        .collect();
    env.sort();
    for (name, value) in env {
        push(name);
        push(value);
    }
    // Secrets by their placeholders (so a pass is cached per value, and the value is not
    // here); nothing for a job without secrets, whose key stays what it was.
    let secrets = steps.job.secrets.environment().unwrap_or_default();
    if !secrets.is_empty() {
        push("--secrets--");
        for var in &secrets {
            push(&var.name);
            push(&var.value);
        }
    }
    push("--platform--");
    let mut platform: Vec<_> = spec
        .platform
        .iter()
        .chain(pinned)
        .map(|p| (&p.name, &p.value))
        .collect();
    platform.sort();
    for (name, value) in platform {
        push(name);
        push(value);
    }
    key
}

/// What a suite's duration history is shared across (`results.rs`): the instance, the
/// project, the runner's kind and its settings (without test selection) with the exec root
/// written as `<exec_root>`, and the matrix `cell`. The exec root is named after the
/// checkout's directory, which differs between two clones of one project, and the runner's
/// paths lie under it; the rest of its settings are the same on every machine. Not the
/// submitter, the environment (`HOME`, `PATH`, ...) or the platform: CI and laptops share
/// what they learn. Empty (history keyed by [`settings_key`], as before) for a job that names
/// no project: a client older than the field.
pub(super) fn history_scope(job: &Job, cell: &str) -> Vec<u8> {
    let spec = &job.spec;
    if spec.project.is_empty() {
        return Vec::new();
    }
    let runner = serde_json::to_string(&job.runner.key_settings())
        .unwrap_or_else(|_| spec.runner_json.clone());
    let mut key = Vec::new();
    for part in [
        spec.instance_name.as_str(),
        spec.project.as_str(),
        &without_exec_root(&runner, &spec.exec_root),
        cell,
    ] {
        key.extend_from_slice(&(part.len() as u64).to_le_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key
}

/// `json` with every path `exec_root` (or under it) starting at `<exec_root>` instead.
fn without_exec_root(json: &str, exec_root: &str) -> String {
    let root = serde_json::to_string(exec_root).unwrap_or_default();
    let root = root.trim_matches('"');
    if root.is_empty() {
        return json.to_owned();
    }
    let mut out = String::with_capacity(json.len());
    let mut rest = json;
    while let Some(at) = rest.find(root) {
        let after = &rest[at + root.len()..];
        out.push_str(&rest[..at]);
        // Only whole path components: `/x/ab` is not under `/x/a`.
        if after.starts_with(['/', '"']) {
            out.push_str("<exec_root>");
        } else {
            out.push_str(root);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// A test as events name it.
pub(super) fn test_ref(test: &TestId) -> TestRef {
    TestRef {
        group: test.group.clone(),
        name: test.name.clone(),
    }
}

fn phase(cell: &Cell, phase: JobPhase, detail: &str) -> Kind {
    Kind::Phase(PhaseChanged {
        phase: phase as i32,
        detail: detail.to_owned(),
        cell: cell.name.clone(),
    })
}

fn stop_error(message: String) -> Stop {
    Stop::Error {
        message,
        log: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use tessera_proto::reapi::command::EnvironmentVariable;
    use tessera_proto::tessera::v1::{JobResult, JobSpec};
    use tessera_runners::{PytestRunner, RunnerConfig};

    use super::*;

    fn cell(name: &str) -> Cell {
        Cell {
            name: name.to_owned(),
            environment: Vec::new(),
        }
    }

    fn tally(passed: u32, failed: u32) -> Tally {
        let mut tally = Tally::default();
        for _ in 0..passed {
            tally.count(TestOutcome::Passed);
        }
        for _ in 0..failed {
            tally.count(TestOutcome::Failed);
        }
        tally
    }

    #[test]
    fn the_job_stops_for_its_worst_cell() {
        let broken = stop_error("the prepare step failed".to_owned());
        let fail_fast = Stop::FailFast {
            test: TestId::new("g", "t"),
        };
        let infra = Stop::Infrastructure("lost".to_owned());
        assert!(job_stop(&[None, None]).is_none());
        assert!(matches!(
            job_stop(&[Some(Stop::Cancelled), Some(fail_fast.clone())]),
            Some(Stop::FailFast { .. })
        ));
        assert!(matches!(
            job_stop(&[Some(fail_fast), None, Some(broken.clone())]),
            Some(Stop::Error { .. })
        ));
        assert!(matches!(
            job_stop(&[Some(broken), Some(infra), None]),
            Some(Stop::Infrastructure(_))
        ));
    }

    #[test]
    fn a_matrix_job_counts_every_cell_and_says_how_each_ended() {
        let (a, b, c) = (cell("MODE=a"), cell("MODE=b"), cell("MODE=c"));
        let broken = Stop::Error {
            message: "the prepare step failed".to_owned(),
            log: "error[E0425]".to_owned(),
        };
        let ends = vec![
            (&a, tally(3, 0), None),
            (&b, tally(2, 1), None),
            (&c, Tally::default(), Some(broken)),
        ];
        let job = finished(ends, None, Duration::from_secs(1));
        assert_eq!((job.passed, job.failed), (5, 1));
        assert_eq!(job.result(), JobResult::Error);
        let results: Vec<(&str, JobResult)> = job
            .cells
            .iter()
            .map(|c| (c.cell.as_str(), c.result()))
            .collect();
        assert_eq!(
            results,
            [
                ("MODE=a", JobResult::Passed),
                ("MODE=b", JobResult::Failed),
                ("MODE=c", JobResult::Error)
            ]
        );
        assert_eq!(job.message, "[MODE=c] the prepare step failed");
        assert_eq!(job.log, "== [MODE=c] ==\nerror[E0425]");

        // A plain job is one unnamed cell: no cells in its final event.
        let plain = cell("");
        let job = finished(vec![(&plain, tally(1, 1), None)], None, Duration::ZERO);
        assert!(job.cells.is_empty());
        assert_eq!(job.result(), JobResult::Failed);

        // A job stopped before any cell started says so once, not once per cell.
        let missing_tool = stop_error("no agent has cargo".to_owned());
        let ends = vec![(&a, Tally::default(), None), (&b, Tally::default(), None)];
        let job = finished(ends, Some(missing_tool), Duration::ZERO);
        assert_eq!(job.result(), JobResult::Error);
        assert_eq!(job.message, "no agent has cargo");
        assert!(job.cells.is_empty());
    }

    /// A pytest job of `project`, submitted by `submitter` with `home`, from a checkout whose
    /// exec root is `exec_root`.
    fn job(project: &str, submitter: &str, home: &str, exec_root: &str) -> Arc<Job> {
        let runner = RunnerConfig::Pytest(
            PytestRunner::new(format!("{exec_root}/tests"))
                .root(exec_root)
                .args([
                    format!("--rootdir={exec_root}"),
                    "-p".to_owned(),
                    "no:cacheprovider".to_owned(),
                ]),
        );
        let spec = JobSpec {
            runner_json: serde_json::to_string(&runner).unwrap(),
            exec_root: exec_root.to_owned(),
            submitter: submitter.to_owned(),
            environment: vec![EnvironmentVariable {
                name: "HOME".to_owned(),
                value: home.to_owned(),
            }],
            project: project.to_owned(),
            ..JobSpec::default()
        };
        Job::new("j".to_owned(), spec, runner, 0, Default::default())
    }

    #[test]
    fn two_submitters_of_one_project_share_its_history() {
        let laptop = job(
            "github.com/acme/widget",
            "ann@laptop",
            "/home/ann",
            "/var/tmp/tessera/widget",
        );
        let ci = job(
            "github.com/acme/widget",
            "ci@runner-7",
            "/builds",
            "/var/tmp/tessera/widget-ci",
        );
        assert_eq!(history_scope(&laptop, ""), history_scope(&ci, ""));
        // Another project, another cell, or other runner settings: other histories.
        let other = job(
            "github.com/acme/gadget",
            "ann@laptop",
            "/home/ann",
            "/var/tmp/tessera/widget",
        );
        assert_ne!(history_scope(&laptop, ""), history_scope(&other, ""));
        assert_ne!(
            history_scope(&laptop, ""),
            history_scope(&laptop, "FLAG=on")
        );
        // A client that names no project keeps its history under its settings.
        let old = job("", "ann@laptop", "/home/ann", "/var/tmp/tessera/widget");
        assert!(history_scope(&old, "").is_empty());
    }

    #[test]
    fn only_whole_paths_under_the_exec_root_are_rewritten() {
        let json = r#"{"dir":"/x/a/tests","root":"/x/a","args":["--rootdir=/x/a","/x/ab"]}"#;
        assert_eq!(
            without_exec_root(json, "/x/a"),
            r#"{"dir":"<exec_root>/tests","root":"<exec_root>","args":["--rootdir=<exec_root>","/x/ab"]}"#
        );
    }

    #[test]
    fn a_step_runs_from_its_execution_start_to_its_completion() {
        use tessera_proto::reapi::ExecutedActionMetadata;
        let at = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
        let result = |start, end| ActionResult {
            execution_metadata: Some(ExecutedActionMetadata {
                execution_start_timestamp: start,
                execution_completed_timestamp: end,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            execution_wall(&result(at(10, 900_000_000), at(12, 100_000_000))),
            Some(Duration::from_millis(1200))
        );
        assert_eq!(execution_wall(&result(at(12, 0), at(10, 0))), None);
        assert_eq!(execution_wall(&result(None, at(10, 0))), None);
        assert_eq!(execution_wall(&ActionResult::default()), None);
    }

    #[test]
    fn the_list_step_sizes_a_first_run() {
        let job = job("p", "s", "/h", "/r");
        let config = job_planner_config(&job, Some(Duration::from_secs(4)), 2000, None);
        assert_eq!(config.startup, Duration::from_secs(4));
        assert_eq!(config.unmeasured_test, Duration::from_millis(2));
        // pytest runs its batches in a long-lived worker per slot.
        assert_eq!(config.startups, Startups::PerSlot);
        let recorded = Some(Duration::from_millis(700));
        let config = job_planner_config(&job, None, 0, recorded);
        assert_eq!(config.startup, Duration::from_millis(700));
        assert_eq!(config.unmeasured_test, Duration::ZERO);
    }
}

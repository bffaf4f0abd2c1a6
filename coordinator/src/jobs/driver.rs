//! Runs one job (DESIGN.md §5) through its phases: prepare, list, answer cached tests, then
//! run the rest (`batches.rs`), and emit the final event (`tally.rs`).
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
use tessera_proto::reapi::platform::Property;
use tessera_proto::tessera::v1::{
    JobPhase, PhaseChanged, QueuePosition, TestFinished, TestOutcome, TestRef, TestsPlanned,
    job_event::Kind,
};
use tessera_proto::time::to_proto_duration;
use tessera_runners::step::{StepReport, StepSpec};
use tessera_runners::{Prepared, TestId};
use tokio_util::sync::CancellationToken;

use super::batches::RunPhase;
use super::job::Job;
use super::planner::{PlannerConfig, ShardPlanner};
use super::results::{CachedPass, SuiteKey, TestStore};
use super::steps::{StepRequest, Steps, step_failed, tests_have_network};
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
    /// Deadline of a test when the job names none.
    pub default_test_timeout: Duration,
    /// Longest action timeout the coordinator accepts.
    pub max_action_timeout: Duration,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext").finish_non_exhaustive()
    }
}

/// Why a job stopped early.
#[derive(Debug)]
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
    // Results restored after a restart stand and count (`journal.rs`).
    let mut tally = Tally::restored(job.restored().values());
    let started = Instant::now();
    let stop = drive(&ctx, &job, &mut tally).await.err();
    if matches!(stop, Some(Stop::Infrastructure(_))) && ctx.shutdown.is_cancelled() {
        tracing::info!(job = %job.id, "job interrupted by shutdown; it runs again at the next start");
        return Ended::Interrupted;
    }
    if let Some(Stop::FailFast { test }) = &stop {
        tracing::info!(job = %job.id, %test, "stopped by --fail-fast");
    }
    // Whatever stopped the job, none of its operations keeps a slot.
    for name in job.operations() {
        let _ = ctx.scheduler.cancel(&name).await;
    }
    job.emit(Kind::Finished(tally.finished(stop, started.elapsed())));
    Ended::Finished
}

async fn drive(ctx: &JobContext, job: &Arc<Job>, tally: &mut Tally) -> Result<(), Stop> {
    let function = DigestFunction::from_request(job.spec.digest_function)
        .map_err(|e| stop_error(format!("digest_function: {e}")))?;
    let input_root = Digest::from_proto_opt(function, job.spec.input_root_digest.as_ref())
        .map_err(|e| stop_error(format!("input_root_digest: {e}")))?;
    let pinned = super::toolchain::pin(&ctx.scheduler, job).await?;
    let steps = Steps {
        ctx,
        job,
        function,
        pinned,
    };
    let positions = tokio::spawn(report_queue_position(
        ctx.scheduler.clone(),
        Arc::clone(job),
    ));
    let outcome = phases(&steps, input_root, tally).await;
    positions.abort();
    outcome
}

async fn phases(steps: &Steps<'_>, input_root: Digest, tally: &mut Tally) -> Result<(), Stop> {
    let (ctx, job) = (steps.ctx, steps.job);
    let (prepared, prepared_root) = prepare(steps, input_root).await?;
    let listed = list(steps, &prepared, prepared_root).await?;

    // Results restored after a restart stand (they are in the tally already); cached passes
    // answer at once; the rest is planned from its history.
    let suite = SuiteKey::new(
        &settings_key(job, &steps.pinned),
        &prepared_root.to_string(),
    );
    let mut tests = TestTable::default();
    let mut listed_anew = Vec::with_capacity(listed.len());
    for test in listed {
        let Some(restored) = job.restored().get(&test) else {
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
    for (test, cached, history) in
        look_up(&ctx.tests, &suite, job.spec.skip_cache, listed_anew).await?
    {
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
                cached_events.push(TestFinished {
                    test: Some(test_ref(&test)),
                    outcome: outcome as i32,
                    attempt: 1,
                    r#final: true,
                    cached: true,
                    duration: Some(to_proto_duration(pass.duration)),
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
                        ..Default::default()
                    });
                }
            }
            None => to_run.push((test, history)),
        }
    }
    let to_run_count = to_run.len();
    let slots = fleet_slots(&ctx.scheduler).await;
    let mut planner = ShardPlanner::new(to_run, slots, planner_config());
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
    }));
    for event in cached_events {
        tally.cached += 1;
        tally.count(event.outcome());
        job.emit(Kind::Test(event));
    }
    if to_run_count == 0 {
        return Ok(());
    }

    job.emit(phase(JobPhase::Running, ""));
    RunPhase::new(
        steps,
        &prepared,
        prepared_root,
        suite,
        tests,
        planner,
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
    job.emit(phase(JobPhase::Preparing, ""));
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
        job.emit(phase(JobPhase::Preparing, "prepare answered from cache"));
    }
    Ok((prepared, root))
}

/// The list step: the suite's tests, in the tool's order.
async fn list(
    steps: &Steps<'_>,
    prepared: &Prepared,
    prepared_root: Digest,
) -> Result<Vec<TestId>, Stop> {
    let job = steps.job;
    job.emit(phase(JobPhase::Listing, ""));
    let spec = StepSpec::List {
        runner: job.runner.clone(),
        prepared: prepared.clone(),
    };
    let run = steps
        .run(StepRequest::cacheable(spec, prepared_root))
        .await?;
    let StepReport::Listed { tests } = run.report else {
        return Err(step_failed(
            "list",
            run.report,
            tests_have_network(&job.spec),
        ));
    };
    Ok(tests)
}

/// Each listed test with its cached pass (unless `skip_cache`) and its recorded duration.
async fn look_up(
    store: &TestStore,
    suite: &SuiteKey,
    skip_cache: bool,
    tests: Vec<TestId>,
) -> Result<Vec<(TestId, Option<CachedPass>, Option<Duration>)>, Stop> {
    let store = store.clone();
    let suite = suite.clone();
    tokio::task::spawn_blocking(move || {
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
            .collect::<Result<Vec<_>, MetaError>>()
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

/// Everything besides the input root that decides a test's result, in a stable encoding.
fn settings_key(job: &Job, pinned: &[Property]) -> Vec<u8> {
    let spec = &job.spec;
    let mut key = Vec::new();
    let mut push = |part: &str| {
        key.extend_from_slice(&(part.len() as u64).to_le_bytes());
        key.extend_from_slice(part.as_bytes());
    };
    push(&spec.instance_name);
    push(&spec.digest_function.to_string());
    // The runner without its test selection: a test picked by `-k` or a path answers from the
    // pass it had when the whole suite ran.
    let runner = serde_json::to_string(&job.runner.key_settings())
        .unwrap_or_else(|_| spec.runner_json.clone());
    push(&runner);
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

/// A test as events name it.
pub(super) fn test_ref(test: &TestId) -> TestRef {
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

fn stop_error(message: String) -> Stop {
    Stop::Error {
        message,
        log: String::new(),
    }
}

//! The run phase of a job: free slots pull batches from the planner, each batch runs as one
//! step, and every result it reports (while it runs, and at its end) moves its test on in the
//! [`TestTable`], is told to the client, recorded for the next plan, and retried or counted.
//! A quarantined test's events say so, its failure does not stop a fail-fast job, and each
//! test's final outcome is a run in its flake window (`quarantine.rs`).
//!
//! Not here: a test's lifecycle rules (`test_state.rs`), how batches are cut (`planner.rs`),
//! how a step runs (`steps.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tessera_cas::digest::Digest;
use tessera_proto::tessera::v1::{LogLine, Progress, TestFinished, TestOutcome, job_event::Kind};
use tessera_proto::time::{from_proto_duration, to_proto_duration};
use tessera_runners::step::{StepReport, StepSpec};
use tessera_runners::{Outcome, Prepared, TestId, TestResult};
use tokio::sync::mpsc;

use super::driver::{Stop, TICK, execution_wall, test_ref, worker_name};
use super::job::{Job, is_failure};
use super::output;
use super::planner::{Batch, BatchId, ShardPlanner};
use super::quarantine::Quarantined;
use super::results::{CachedPass, Day, SuiteKey};
use super::steps::{StepRequest, StepRun, Steps, no_network_hint, tests_have_network};
use super::tally::Tally;
use super::test_state::{Failure, Final, TestEvent, TestState, TestTable};
use crate::history::BatchSpan;

/// Fixed time added to a batch action's timeout on top of its tests' deadlines.
const BATCH_SLACK: Duration = Duration::from_secs(60);

/// A running batch: its id, its tests, and how its step ended.
type BatchFuture<'a> = BoxFuture<'a, (BatchId, Vec<TestId>, Result<StepRun, Stop>)>;

/// Results a running batch reported before it ended: its batch, the agent, the results.
type Partial = (BatchId, String, Vec<TestResult>);

/// The run phase of one job.
pub(super) struct RunPhase<'a> {
    steps: &'a Steps<'a>,
    job: &'a Arc<Job>,
    prepared: &'a Prepared,
    prepared_root: Digest,
    suite: SuiteKey,
    tests: TestTable,
    planner: ShardPlanner<TestId>,
    /// The job's quarantined tests.
    quarantined: &'a Quarantined,
    tally: &'a mut Tally,
    /// Tool start-ups measured since the last write to the history.
    startups: Vec<Duration>,
}

impl<'a> RunPhase<'a> {
    /// Runs the queued tests of `tests` as `planner` cuts them, on `prepared_root`.
    #[expect(
        clippy::too_many_arguments,
        reason = "each is its own part of the phase's state, given at its one call site"
    )]
    pub(super) fn new(
        steps: &'a Steps<'a>,
        prepared: &'a Prepared,
        prepared_root: Digest,
        suite: SuiteKey,
        tests: TestTable,
        planner: ShardPlanner<TestId>,
        quarantined: &'a Quarantined,
        tally: &'a mut Tally,
    ) -> Self {
        RunPhase {
            steps,
            job: steps.job,
            prepared,
            prepared_root,
            suite,
            tests,
            planner,
            quarantined,
            tally,
            startups: Vec::new(),
        }
    }

    /// Runs until every test has its final outcome or the job stops; tests left without one
    /// end as cancelled.
    pub(super) async fn run(mut self, slots: usize) -> Result<(), Stop> {
        let started = Instant::now();
        let test_timeout = self
            .job
            .spec
            .test_timeout
            .as_ref()
            .and_then(from_proto_duration)
            .filter(|d| !d.is_zero())
            .unwrap_or(self.steps.ctx.default_test_timeout);
        let mut in_flight: FuturesUnordered<BatchFuture<'a>> = FuturesUnordered::new();
        let (partial_tx, mut partial_rx) = mpsc::unbounded_channel::<Partial>();
        let mut stop: Option<Stop> = None;
        let mut slots = slots;
        let mut tick = tokio::time::interval(TICK);
        let job = self.job;
        loop {
            while stop.is_none() && in_flight.len() < slots {
                let Some(batch) = self.planner.next_batch(started.elapsed()) else {
                    break;
                };
                in_flight.push(self.start(batch, test_timeout, &partial_tx));
            }
            if in_flight.is_empty() {
                break;
            }
            tokio::select! {
                Some((batch, tests, run)) = in_flight.next() => {
                    // Whatever the batch reported on its way comes first.
                    while let Ok((id, agent, results)) = partial_rx.try_recv() {
                        if let Some(s) = self.record(id, &agent, results) {
                            stop.get_or_insert(s);
                        }
                    }
                    let unreported: Vec<TestId> =
                        tests.into_iter().filter(|t| self.tests.running_in(t, batch)).collect();
                    match run {
                        Ok(run) => {
                            if let Some(s) = self.finish(batch, unreported, run) {
                                stop.get_or_insert(s);
                            }
                        }
                        Err(s) => {
                            self.planner.requeue(unreported);
                            if stop.is_none() {
                                // Stop everything else: the rest of the job cannot end well.
                                for name in job.operations() {
                                    let _ = self.steps.ctx.scheduler.cancel(&name).await;
                                }
                            }
                            stop.get_or_insert(s);
                        }
                    }
                    self.progress(in_flight.len(), slots).await;
                }
                Some((id, agent, results)) = partial_rx.recv() => {
                    if let Some(s) = self.record(id, &agent, results) {
                        stop.get_or_insert(s);
                    }
                }
                () = job.cancel.cancelled(), if stop.is_none() => {
                    stop = Some(Stop::Cancelled);
                }
                _ = tick.tick() => {
                    let fleet = self.progress(in_flight.len(), slots).await;
                    slots = fleet.max(1);
                }
            }
        }
        // Tests that never got a final outcome (cancelled, fail-fast, infrastructure). Not when
        // the coordinator is shutting down: the job runs again at the next start, and its
        // journal must not say these tests ended (they would never run).
        if self.steps.ctx.shutdown.is_cancelled() {
            return stop.map_or(Ok(()), Err);
        }
        for test in self.tests.unfinished() {
            match self.tests.apply(&test, TestEvent::Stopped) {
                Ok(TestState::Done(done)) => {
                    let quarantined = self.quarantined.contains(&test);
                    self.tally.count_test(done.outcome, quarantined);
                    let mut event = final_event(&self.steps.cell.name, &test, done, None, "");
                    event.quarantined = quarantined;
                    job.emit(Kind::Test(event));
                }
                other => tracing::warn!(?other, job = %job.id, "a stopped test did not end"),
            }
        }
        stop.map_or(Ok(()), Err)
    }

    /// Marks `batch`'s tests running and returns the step that runs them.
    fn start(
        &mut self,
        batch: Batch<TestId>,
        test_timeout: Duration,
        partial_tx: &mpsc::UnboundedSender<Partial>,
    ) -> BatchFuture<'a> {
        // A retry goes to another agent than the one its test failed on, where possible.
        let avoid_agent = batch
            .tests
            .iter()
            .find_map(|test| match self.tests.get(test) {
                Some(TestState::Retrying { failed_on, .. }) => Some(failed_on.clone()),
                _ => None,
            });
        for test in &batch.tests {
            let started = TestEvent::Started { batch: batch.id };
            if let Err(error) = self.tests.apply(test, started) {
                tracing::warn!(%error, job = %self.job.id, "the planner handed out a test that cannot start");
            }
        }
        let runner_has_worker = self.job.runner.runner().long_lived_worker();
        let spec = StepSpec::Batch {
            runner: self.job.runner.clone(),
            prepared: self.prepared.clone(),
            tests: batch.tests.clone(),
            test_timeout_ms: u64::try_from(test_timeout.as_millis()).unwrap_or(u64::MAX),
            // Batches of one job may share a long-lived worker on an agent; other jobs' never.
            worker: runner_has_worker.then(|| worker_name(self.job, self.steps.cell)),
        };
        self.tally.batches += 1;
        let timeout = test_timeout
            .saturating_mul(u32::try_from(batch.tests.len()).unwrap_or(u32::MAX))
            .saturating_add(BATCH_SLACK);
        let id = batch.id;
        let partial_tx = partial_tx.clone();
        let request = StepRequest {
            spec,
            root: self.prepared_root,
            cacheable: false,
            timeout: Some(timeout),
            avoid_agent,
            queued: None,
            partial_sink: Some(Box::new(move |agent, results| {
                let _ = partial_tx.send((id, agent, results));
            })),
        };
        let steps = self.steps;
        Box::pin(async move { (id, batch.tests, steps.run(request).await) })
    }

    /// Handles the end of `batch`'s step: one result for each of its `unreported` tests.
    fn finish(&mut self, batch: BatchId, unreported: Vec<TestId>, run: StepRun) -> Option<Stop> {
        let agent = run.agent();
        if let Some(span) = self.span_of(&run, &agent) {
            self.job.record_batch(span);
        }
        let no_result = |id: TestId, output: String| TestResult {
            id,
            outcome: Outcome::NoResult,
            duration: None,
            output,
        };
        if let StepReport::Ran { results, startups } = &run.report {
            self.tally.tool_startups += startups;
            if let Some(startup) = self.startup_of(&run, results, *startups) {
                self.planner.record_startup(startup);
                self.startups.push(startup);
            }
        }
        let results: Vec<TestResult> = match run.report {
            StepReport::Ran { results, .. } => {
                let mut by_id: HashMap<TestId, TestResult> =
                    results.into_iter().map(|r| (r.id.clone(), r)).collect();
                unreported
                    .into_iter()
                    .map(|id| {
                        by_id.remove(&id).unwrap_or_else(|| {
                            no_result(id, "the runner reported nothing for this test".to_owned())
                        })
                    })
                    .collect()
            }
            StepReport::Failed { error } => unreported
                .into_iter()
                .map(|id| no_result(id, error.clone()))
                .collect(),
            other => {
                let output = format!("unexpected report from a batch: {other:?}");
                unreported
                    .into_iter()
                    .map(|id| no_result(id, output.clone()))
                    .collect()
            }
        };
        self.record(batch, &agent, results)
    }

    /// Where `run` (a batch's step) spent its wall time, for the job's timeline: `None` when
    /// the agent did not say when it ran.
    fn span_of(&self, run: &StepRun, agent: &str) -> Option<BatchSpan> {
        let metadata = run.result.execution_metadata.as_ref()?;
        let unix_ms = |t: &prost_types::Timestamp| {
            let ms = t
                .seconds
                .checked_mul(1000)?
                .checked_add(i64::from(t.nanos / 1_000_000))?;
            u64::try_from(ms).ok()
        };
        let start = unix_ms(metadata.execution_start_timestamp.as_ref()?)?;
        let end = unix_ms(metadata.execution_completed_timestamp.as_ref()?)?;
        let (tests, failed) = match &run.report {
            StepReport::Ran { results, .. } => (
                results.len(),
                results
                    .iter()
                    .filter(|r| {
                        !matches!(
                            r.outcome,
                            Outcome::Passed | Outcome::Skipped | Outcome::Flaky
                        )
                    })
                    .count(),
            ),
            _ => (0, 0),
        };
        let created = self.job.created_unix_ms;
        Some(BatchSpan {
            agent: agent.to_owned(),
            cell: self.steps.cell.name.clone(),
            start_ms: start.saturating_sub(created),
            end_ms: end.max(start).saturating_sub(created),
            tests: u32::try_from(tests).unwrap_or(u32::MAX),
            failed: u32::try_from(failed).unwrap_or(u32::MAX),
        })
    }

    /// What one tool start-up of a batch that started `startups` processes cost: the command's
    /// wall time less its tests' durations (subtests run inside theirs), over the processes.
    /// `None` when a worker served it, the agent did not say how long it ran, or a test has
    /// no duration (a crash or a timeout: its time would count as start-up).
    fn startup_of(&self, run: &StepRun, results: &[TestResult], startups: u32) -> Option<Duration> {
        if startups == 0 {
            return None;
        }
        let runner = self.job.runner.runner();
        let tests: Duration = results
            .iter()
            .filter(|r| runner.subtest_parent(&r.id).is_none())
            .map(|r| r.duration)
            .sum::<Option<Duration>>()?;
        Some(execution_wall(&run.result)?.saturating_sub(tests) / startups)
    }

    /// Moves on each test `batch` is running that `results` names (once each), tells the
    /// client, records durations, clean passes and the start-ups measured since the last
    /// call, and requeues retries. Returns the reason to stop (fail-fast), if any.
    fn record(&mut self, batch: BatchId, agent: &str, results: Vec<TestResult>) -> Option<Stop> {
        let mut durations = Vec::new();
        let mut passes = Vec::new();
        let mut requeue = Vec::new();
        // Each test's final outcome, a run in its flake window: whether it was flaky.
        let mut runs = Vec::new();
        let mut stop = None;
        // Subtests (go's `TestX/case`) are reported with their parent's final result.
        let runner = self.job.runner.runner();
        let mut tests = Vec::with_capacity(results.len());
        let mut subtests_of: HashMap<TestId, Vec<TestResult>> = HashMap::new();
        for result in results {
            match runner.subtest_parent(&result.id) {
                None => tests.push(result),
                Some(parent) if self.tests.running_in(&parent, batch) => {
                    subtests_of.entry(parent).or_default().push(result);
                }
                Some(_) => {}
            }
        }
        for result in tests {
            // Not another batch's test, nor one this batch reported already.
            if !self.tests.running_in(&result.id, batch) {
                continue;
            }
            let test = result.id;
            let quarantined = self.quarantined.contains(&test);
            let attempt = self.tests.get(&test).map_or(0, TestState::attempt);
            if let Some(took) = result.duration {
                self.tally.serial += took;
            }
            let failure = match result.outcome {
                Outcome::Passed | Outcome::Skipped | Outcome::Flaky => None,
                Outcome::Failed => Some(Failure::Failed),
                Outcome::Error => Some(Failure::Error),
                Outcome::TimedOut => Some(Failure::TimedOut),
                Outcome::NoResult => Some(Failure::NoResult),
            };
            // Failures keep their output, and so does a pass the tool got only after its own
            // retries (the failed tries are in it).
            let keeps_output = failure.is_some() || result.outcome == Outcome::Flaky;
            let (output, output_digest) = if keeps_output {
                let output =
                    match no_network_hint(&result.output, tests_have_network(&self.job.spec)) {
                        Some(hint) => format!("tessera: {hint}\n{}", result.output),
                        None => result.output,
                    };
                output::capped(
                    output,
                    output::limit(self.job.spec.output_limit),
                    self.steps.function,
                    self.steps.ctx.store.as_ref(),
                    &test.to_string(),
                )
            } else {
                (String::new(), None)
            };
            let event = match (failure, result.outcome) {
                (Some(failure), _) => TestEvent::Failed {
                    failure,
                    output: output.clone(),
                    agent: agent.to_owned(),
                    retry: attempt <= self.job.spec.retries && !self.job.cancel.is_cancelled(),
                },
                (None, Outcome::Skipped) => TestEvent::Skipped,
                (None, Outcome::Flaky) => TestEvent::PassedAfterRetries {
                    output: output.clone(),
                },
                (None, _) => TestEvent::Passed,
            };
            let done = match self.tests.apply(&test, event) {
                Ok(TestState::Done(done)) => done,
                // Only a failure leads here.
                Ok(TestState::Retrying { .. }) => {
                    self.job.emit(Kind::Test(TestFinished {
                        test: Some(test_ref(&test)),
                        outcome: failure.map_or(TestOutcome::Failed, Failure::outcome) as i32,
                        attempt,
                        r#final: false,
                        cached: false,
                        duration: result.duration.map(to_proto_duration),
                        output,
                        agent: agent.to_owned(),
                        failed_attempts: Vec::new(),
                        output_digest: output_digest.map(|d| d.to_proto()),
                        subtest: false,
                        cell: self.steps.cell.name.clone(),
                        quarantined,
                    }));
                    // Its subtests are reported with the run that ends it.
                    subtests_of.remove(&test);
                    requeue.push(test);
                    continue;
                }
                Ok(other) => {
                    tracing::warn!(?other, "a reported test is neither done nor retrying");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, job = %self.job.id, "ignored a result that does not fit its test's state");
                    continue;
                }
            };
            let took = result.duration.unwrap_or_default();
            self.planner.record(&test, took);
            if result.duration.is_some() {
                durations.push((test.clone(), took));
            }
            let subtests = subtests_of.remove(&test).unwrap_or_default();
            if matches!(done.outcome, TestOutcome::Passed | TestOutcome::Skipped) {
                // Only clean passes and skips are cached: never a flaky pass.
                passes.push((
                    test.clone(),
                    CachedPass {
                        duration: took,
                        skipped: done.outcome == TestOutcome::Skipped,
                        subtests: subtests
                            .iter()
                            .map(|s| (s.id.name.clone(), s.outcome == Outcome::Skipped))
                            .collect(),
                    },
                ));
            }
            self.tally.count_test(done.outcome, quarantined);
            runs.push((test.clone(), done.outcome == TestOutcome::Flaky));
            let attempt = done.attempt;
            let mut event = final_event(&self.steps.cell.name, &test, done, result.duration, agent);
            if is_failure(done.outcome) {
                event.output_digest = output_digest.map(|d| d.to_proto());
            }
            event.quarantined = quarantined;
            self.job.emit(Kind::Test(event));
            let failed = is_failure(done.outcome);
            for sub in subtests {
                let mut event = self.subtest_event(sub, attempt, agent);
                // A subtest is quarantined with its parent.
                event.quarantined = quarantined;
                self.tally.count_test(event.outcome(), quarantined);
                self.job.emit(Kind::Test(event));
            }
            // A quarantined failure does not stop the job either.
            if failed && !quarantined && self.job.spec.fail_fast && stop.is_none() {
                self.job.emit(Kind::Log(LogLine {
                    text: format!("--fail-fast: stopping after {test} failed"),
                }));
                stop = Some(Stop::FailFast { test });
            }
        }
        if !requeue.is_empty() {
            self.planner.requeue(requeue);
        }
        if let Err(error) = self.steps.ctx.tests.record(
            &self.suite,
            &durations,
            &std::mem::take(&mut self.startups),
            &passes,
            Day::today(),
        ) {
            // Results still reach the client; only the cache and the history miss them. A
            // full disk is logged once per episode by the store itself.
            if error.is_out_of_space() {
                tracing::debug!(%error, job = %self.job.id, "failed to record test results");
            } else {
                tracing::warn!(%error, job = %self.job.id, "failed to record test results");
            }
        }
        let spec = &self.job.spec;
        if let Err(error) =
            self.steps
                .ctx
                .quarantine
                .observe(&spec.instance_name, &spec.project, &runs)
        {
            tracing::warn!(%error, job = %self.job.id, "failed to record flake windows");
        }
        if stop.is_some() {
            self.job.cancel.cancel();
        }
        stop
    }

    /// The final event of a subtest its parent's last run reported, as the tool reported it.
    fn subtest_event(&self, sub: TestResult, attempt: u32, agent: &str) -> TestFinished {
        let outcome = subtest_outcome(sub.outcome);
        let (output, output_digest) = if is_failure(outcome) {
            output::capped(
                sub.output,
                output::limit(self.job.spec.output_limit),
                self.steps.function,
                self.steps.ctx.store.as_ref(),
                &sub.id.to_string(),
            )
        } else {
            (String::new(), None)
        };
        TestFinished {
            test: Some(test_ref(&sub.id)),
            outcome: outcome as i32,
            attempt,
            r#final: true,
            cached: false,
            duration: sub.duration.map(to_proto_duration),
            output,
            agent: agent.to_owned(),
            failed_attempts: Vec::new(),
            output_digest: output_digest.map(|d| d.to_proto()),
            subtest: true,
            cell: self.steps.cell.name.clone(),
            quarantined: false,
        }
    }

    /// Emits a progress event and returns the fleet's slot count it saw (0 if unknown).
    async fn progress(&self, running: usize, slots: usize) -> usize {
        let (agents, busy, total_slots) = match self.steps.ctx.scheduler.stats().await {
            Ok((_, agents)) => (
                agents.len(),
                agents.iter().map(|a| a.running).sum::<usize>(),
                agents.iter().map(|a| a.slots as usize).sum::<usize>(),
            ),
            Err(_) => (0, 0, 0),
        };
        let eta = self.planner.expected_remaining() / u32::try_from(slots.max(1)).unwrap_or(1);
        self.job.emit(Kind::Progress(Progress {
            done: self.tally.done(),
            total: u32::try_from(self.tests.len()).unwrap_or(u32::MAX),
            running_batches: u32::try_from(running).unwrap_or(u32::MAX),
            agents: u32::try_from(agents).unwrap_or(u32::MAX),
            busy_slots: u32::try_from(busy).unwrap_or(u32::MAX),
            total_slots: u32::try_from(total_slots).unwrap_or(u32::MAX),
            eta: Some(to_proto_duration(eta)),
            cell: self.steps.cell.name.clone(),
        }));
        total_slots
    }
}

/// A subtest's outcome as clients see it.
fn subtest_outcome(outcome: Outcome) -> TestOutcome {
    match outcome {
        Outcome::Passed => TestOutcome::Passed,
        Outcome::Failed => TestOutcome::Failed,
        Outcome::Error => TestOutcome::Error,
        Outcome::Skipped => TestOutcome::Skipped,
        Outcome::Flaky => TestOutcome::Flaky,
        Outcome::TimedOut => TestOutcome::TimedOut,
        Outcome::NoResult => TestOutcome::NoResult,
    }
}

/// The event that tells the client `test`'s final outcome in the matrix cell `cell`.
fn final_event(
    cell: &str,
    test: &TestId,
    done: &Final,
    duration: Option<Duration>,
    agent: &str,
) -> TestFinished {
    TestFinished {
        test: Some(test_ref(test)),
        outcome: done.outcome as i32,
        attempt: done.attempt,
        r#final: true,
        cached: false,
        duration: duration.map(to_proto_duration),
        // The output of the run that ended it; a pass shows none.
        output: if is_failure(done.outcome) {
            done.failures.last().cloned().unwrap_or_default()
        } else {
            String::new()
        },
        agent: agent.to_owned(),
        failed_attempts: if done.outcome == TestOutcome::Flaky {
            done.failures.clone()
        } else {
            Vec::new()
        },
        output_digest: None,
        subtest: false,
        cell: cell.to_owned(),
        quarantined: false,
    }
}

//! One job's state as clients see it: its spec, its event log and its cancellation.
//!
//! Every event gets the next sequence number and stays in the log until the job is forgotten,
//! so `Jobs.Watch` replays a job from its first event and then follows it live. Watchers see
//! a prefix of the log: an event is shown only once what it says cannot be lost in a crash
//! (its final test result written and flushed, its number below the durable ceiling), which
//! [`Job::keep_journal`] takes care of; the rule and its tables are in `journal.rs`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tessera_proto::names::result_name;
use tessera_proto::tessera::v1::{
    JobEvent, JobFinished, JobPhase, JobResult, JobSpec, JobSummary, TestFinished, TestOutcome,
    job_event,
};
use tessera_runners::{RunnerConfig, TestId};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::journal::{Journal, Restored, SEQ_BLOCK};
use super::secrets::{JobSecrets, strip};
use crate::history::{BatchSpan, JobRecord};

/// A job, shared by its driver, its watchers and the registry.
#[derive(Debug)]
pub struct Job {
    /// Its id.
    pub id: String,
    /// What was submitted, without its secrets' values ([`super::secrets::strip`]).
    pub spec: JobSpec,
    /// Its secrets' values and placeholders, in memory only.
    pub secrets: JobSecrets,
    /// The runner named in the spec, parsed.
    pub runner: RunnerConfig,
    /// When it was accepted (Unix milliseconds).
    pub created_unix_ms: u64,
    started: Instant,
    state: Mutex<State>,
    /// The highest seq watchers may see.
    shown: watch::Sender<u64>,
    /// Wakes [`Job::keep_journal`]: events wait to be shown.
    hidden: Notify,
    /// Final results an earlier run of the coordinator made durable, by matrix cell (empty for
    /// a plain job) and test: the same test in two cells is two results.
    restored: BTreeMap<(String, TestId), TestFinished>,
    /// Cancelled by `Jobs.Cancel` (or the coordinator shutting down).
    pub cancel: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    /// By seq, ascending (with gaps after a restart).
    events: Vec<JobEvent>,
    next_seq: u64,
    /// Every event up to this seq may be shown.
    shown: u64,
    /// The durable ceiling: no event above it may be shown before it is raised.
    ceiling: u64,
    /// Final test events not yet written to the journal.
    unwritten: Vec<JobEvent>,
    phase: JobPhase,
    result: JobResult,
    done: u32,
    /// Tests planned, by matrix cell (a plain job's one unnamed cell): the job's total is the
    /// sum, each cell's latest plan counting once.
    planned: BTreeMap<String, u32>,
    /// Names of this job's operations in the scheduler that have not finished.
    operations: Vec<String>,
    /// Its batches that ended, for the dashboard's timeline.
    batches: Vec<BatchSpan>,
}

impl Job {
    /// A new job with an empty log; `secrets` are its spec's (which is stored stripped).
    pub fn new(
        id: String,
        spec: JobSpec,
        runner: RunnerConfig,
        created_unix_ms: u64,
        secrets: JobSecrets,
    ) -> Arc<Self> {
        Self::with_state(
            id,
            strip(&spec),
            secrets,
            runner,
            created_unix_ms,
            Instant::now(),
            State {
                next_seq: 1,
                ..State::default()
            },
            BTreeMap::new(),
        )
    }

    /// A job accepted by an earlier run of the coordinator, with the final results that run
    /// made durable: they keep their numbers, and new events are numbered above `ceiling`.
    pub fn restore(
        id: String,
        spec: JobSpec,
        runner: RunnerConfig,
        created_unix_ms: u64,
        restored: Restored,
    ) -> Arc<Self> {
        let last = restored.events.last().map_or(0, |e| e.seq);
        let top = restored.ceiling.max(last);
        let finals: BTreeMap<(String, TestId), TestFinished> = restored
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(job_event::Kind::Test(t)) if t.r#final => {
                    let test = t.test.clone().unwrap_or_default();
                    Some((
                        (t.cell.clone(), TestId::new(test.group, test.name)),
                        t.clone(),
                    ))
                }
                _ => None,
            })
            .collect();
        // Elapsed times go on from when the job was accepted, not from the restart.
        let age = u64::try_from(tessera_proto::time::unix_ms())
            .unwrap_or(0)
            .saturating_sub(created_unix_ms);
        let now = Instant::now();
        let started = now.checked_sub(Duration::from_millis(age)).unwrap_or(now);
        let state = State {
            done: u32::try_from(finals.len()).unwrap_or(u32::MAX),
            events: restored.events,
            next_seq: top + 1,
            shown: top,
            ceiling: top,
            ..State::default()
        };
        let secrets = JobSecrets::restored(&spec);
        Self::with_state(
            id,
            strip(&spec),
            secrets,
            runner,
            created_unix_ms,
            started,
            state,
            finals,
        )
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the two constructors' one common path"
    )]
    fn with_state(
        id: String,
        spec: JobSpec,
        secrets: JobSecrets,
        runner: RunnerConfig,
        created_unix_ms: u64,
        started: Instant,
        state: State,
        restored: BTreeMap<(String, TestId), TestFinished>,
    ) -> Arc<Self> {
        let shown = state.shown;
        Arc::new(Job {
            id,
            spec,
            secrets,
            runner,
            created_unix_ms,
            started,
            state: Mutex::new(state),
            shown: watch::channel(shown).0,
            hidden: Notify::new(),
            restored,
            cancel: CancellationToken::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Final results restored from an earlier run of the coordinator, by cell and test: clients
    /// may have seen them, so they stand, and their tests are not run again in their cell.
    pub fn restored(&self) -> &BTreeMap<(String, TestId), TestFinished> {
        &self.restored
    }

    /// Appends an event to the log; it is shown at once, or once it is durable.
    pub fn emit(&self, kind: job_event::Kind) {
        let mut state = self.lock();
        match &kind {
            job_event::Kind::Phase(p) => state.phase = p.phase(),
            job_event::Kind::Planned(p) => {
                state.planned.insert(p.cell.clone(), p.total);
            }
            job_event::Kind::Test(t) if t.r#final => state.done += 1,
            job_event::Kind::Finished(f) => {
                state.phase = JobPhase::Done;
                state.result = f.result();
            }
            _ => {}
        }
        let durable = matches!(&kind, job_event::Kind::Test(t) if t.r#final);
        let seq = state.next_seq;
        state.next_seq += 1;
        let event = JobEvent {
            seq,
            elapsed_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            kind: Some(kind),
        };
        if durable {
            state.unwritten.push(event.clone());
        }
        state.events.push(event);
        let show = !durable && state.shown + 1 == seq && seq <= state.ceiling;
        if show {
            state.shown = seq;
        }
        drop(state);
        if show {
            self.shown.send_replace(seq);
        }
        // Also when shown: the journal's keeper ends once the finished event is.
        self.hidden.notify_one();
    }

    /// Makes hidden events durable and shows them, until the job has finished and everything
    /// is shown (`true`) or `shutdown` is cancelled first (`false`). One task per job runs it,
    /// beside the driver; writes made while it waits on a flush go in its next batch.
    pub async fn keep_journal(&self, journal: &Journal, shutdown: &CancellationToken) -> bool {
        let mut failing = false;
        loop {
            let work = {
                let mut state = self.lock();
                let last = state.next_seq - 1;
                if state.shown >= last {
                    if state.phase == JobPhase::Done {
                        return true;
                    }
                    None
                } else {
                    let events = std::mem::take(&mut state.unwritten);
                    // Reserve ahead, so that progress and phase events rarely wait.
                    let ceiling =
                        (last + SEQ_BLOCK / 2 > state.ceiling).then_some(last + SEQ_BLOCK);
                    Some((events, last, ceiling))
                }
            };
            let Some((events, last, ceiling)) = work else {
                tokio::select! {
                    () = self.hidden.notified() => continue,
                    () = shutdown.cancelled() => return false,
                }
            };
            let written = match journal.write(&self.id, &events, ceiling) {
                Ok(()) => tokio::select! {
                    flushed = journal.flush() => flushed,
                    () = shutdown.cancelled() => return false,
                },
                Err(error) => Err(error),
            };
            let mut state = self.lock();
            match written {
                Ok(()) => {
                    if let Some(ceiling) = ceiling {
                        state.ceiling = state.ceiling.max(ceiling);
                    }
                    if failing {
                        tracing::info!(job = %self.id, "job events are durable again");
                        failing = false;
                    }
                }
                Err(error) => {
                    // Shown anyway: a full disk must not hide results (DESIGN.md §3). They are
                    // written with the next events.
                    let mut again = events;
                    again.append(&mut state.unwritten);
                    state.unwritten = again;
                    if !failing {
                        if error.is_out_of_space() {
                            tracing::debug!(%error, job = %self.id, "job events shown before they are durable");
                        } else {
                            tracing::warn!(%error, job = %self.id, "job events shown before they are durable");
                        }
                        failing = true;
                    }
                }
            }
            state.shown = state.shown.max(last);
            drop(state);
            self.shown.send_replace(last);
        }
    }

    /// Shown events after `seq`, and whether the log is complete (the job finished and its
    /// last event is shown).
    pub fn events_after(&self, seq: u64) -> (Vec<JobEvent>, bool) {
        let state = self.lock();
        let start = state.events.partition_point(|e| e.seq <= seq);
        let end = state.events.partition_point(|e| e.seq <= state.shown);
        let events = state.events.get(start..end).unwrap_or_default().to_vec();
        let complete = state.phase == JobPhase::Done && state.shown + 1 >= state.next_seq;
        (events, complete)
    }

    /// A receiver that changes whenever more events are shown.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shown.subscribe()
    }

    /// Whether the job has finished.
    pub fn finished(&self) -> bool {
        self.lock().phase == JobPhase::Done
    }

    /// Records an operation of this job in the scheduler.
    pub fn add_operation(&self, name: &str) {
        self.lock().operations.push(name.to_owned());
    }

    /// Forgets a finished operation.
    pub fn remove_operation(&self, name: &str) {
        self.lock().operations.retain(|n| n != name);
    }

    /// The job's operations that have not finished.
    pub fn operations(&self) -> Vec<String> {
        self.lock().operations.clone()
    }

    /// Records a batch that ended, for the timeline.
    pub fn record_batch(&self, span: BatchSpan) {
        self.lock().batches.push(span);
    }

    /// The batches that ended, in the order they ended.
    pub fn batches(&self) -> Vec<BatchSpan> {
        self.lock().batches.clone()
    }

    /// The shown final test results after `seq`, and the highest seq shown.
    pub fn final_tests_after(&self, seq: u64) -> (Vec<TestFinished>, u64) {
        let state = self.lock();
        let start = state.events.partition_point(|e| e.seq <= seq);
        let end = state.events.partition_point(|e| e.seq <= state.shown);
        let tests = state
            .events
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .filter_map(|e| match &e.kind {
                Some(job_event::Kind::Test(t)) if t.r#final => Some(t.clone()),
                _ => None,
            })
            .collect();
        (tests, state.shown)
    }

    /// Operations of other work ahead of this job's next one in the queue, as last reported
    /// (0 once it runs).
    pub fn queue_ahead(&self) -> u32 {
        let state = self.lock();
        if state.phase != JobPhase::Queued {
            return 0;
        }
        state
            .events
            .iter()
            .rev()
            .find_map(|e| match &e.kind {
                Some(job_event::Kind::Queue(q)) => Some(q.ahead),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// The job's end as its finished event tells it, once it has one.
    pub fn finished_event(&self) -> Option<JobFinished> {
        self.lock().events.iter().rev().find_map(|e| match &e.kind {
            Some(job_event::Kind::Finished(f)) => Some(f.clone()),
            _ => None,
        })
    }

    /// What the history keeps of the job once it has finished: its record, its final test
    /// results (in the order they were shown) and its batches.
    pub fn history_record(&self) -> (JobRecord, Vec<TestFinished>, Vec<BatchSpan>) {
        let (tests, _) = self.final_tests_after(0);
        let finished = self.finished_event().unwrap_or_default();
        let ms = |d: Option<&prost_types::Duration>| {
            d.and_then(tessera_proto::time::from_proto_duration)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        let summary = self.summary();
        let record = JobRecord {
            id: self.id.clone(),
            submitter: self.spec.submitter.clone(),
            title: self.spec.title.clone(),
            project: self.spec.project.clone(),
            instance: self.spec.instance_name.clone(),
            labels: self.spec.labels.clone().into_iter().collect(),
            created_unix_ms: self.created_unix_ms,
            wall_ms: ms(finished.wall.as_ref()).max(summary.elapsed_ms),
            serial_ms: ms(finished.serial.as_ref()),
            result: result_name(finished.result()).to_owned(),
            message: finished.message.clone(),
            passed: finished.passed,
            failed: finished.failed,
            skipped: finished.skipped,
            flaky: finished.flaky,
            timed_out: finished.timed_out,
            errors: finished.errors,
            cached: finished.cached,
            not_run: finished.not_run,
            quarantined: finished.quarantined,
            total: u32::try_from(tests.len()).unwrap_or(u32::MAX),
            batches: finished.batches,
        };
        (record, tests, self.batches())
    }

    /// One line of `Jobs.Status`.
    pub fn summary(&self) -> JobSummary {
        let state = self.lock();
        JobSummary {
            job_id: self.id.clone(),
            submitter: self.spec.submitter.clone(),
            title: self.spec.title.clone(),
            phase: state.phase as i32,
            result: state.result as i32,
            done: state.done,
            total: state.planned.values().sum(),
            created_unix_ms: self.created_unix_ms,
            elapsed_ms: state.events.last().map_or(0, |e| e.elapsed_ms).max(
                if state.phase == JobPhase::Done {
                    0
                } else {
                    u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
                },
            ),
            priority: self.spec.priority,
            prepare_network: self.spec.prepare_network,
            labels: self.spec.labels.clone(),
        }
    }
}

/// Whether an outcome counts as a failure of the job.
pub fn is_failure(outcome: TestOutcome) -> bool {
    matches!(
        outcome,
        TestOutcome::Failed | TestOutcome::Error | TestOutcome::TimedOut | TestOutcome::NoResult
    )
}

#[cfg(test)]
mod tests {
    use tessera_cas::meta::MemoryMetaStore;
    use tessera_proto::tessera::v1::{JobFinished, LogLine, TestRef, job_event::Kind};
    use tessera_runners::CommandRunner;

    use super::*;

    fn runner() -> RunnerConfig {
        RunnerConfig::Command(
            CommandRunner::new(
                "/tmp/x",
                vec!["list".into()],
                vec!["run".into(), "{tests}".into()],
            )
            .expect("runner"),
        )
    }

    fn passed(name: &str) -> Kind {
        Kind::Test(TestFinished {
            test: Some(TestRef {
                group: "g".into(),
                name: name.into(),
            }),
            outcome: TestOutcome::Passed as i32,
            r#final: true,
            ..TestFinished::default()
        })
    }

    fn log(text: &str) -> Kind {
        Kind::Log(LogLine { text: text.into() })
    }

    fn seqs(events: &[JobEvent]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    /// Waits until events up to `seq` are shown.
    async fn shown(job: &Job, seq: u64) {
        let mut rx = job.subscribe();
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| *s >= seq))
            .await
            .expect("shown in time")
            .expect("job alive");
    }

    #[test]
    fn a_matrix_jobs_total_is_the_sum_of_its_cells_plans() {
        let job = Job::new(
            "j".into(),
            JobSpec::default(),
            runner(),
            0,
            Default::default(),
        );
        let planned = |cell: &str, total: u32| {
            Kind::Planned(tessera_proto::tessera::v1::TestsPlanned {
                total,
                cell: cell.into(),
                ..Default::default()
            })
        };
        job.emit(planned("MODE=a", 2));
        job.emit(planned("MODE=b", 3));
        // A cell that plans again (after a restart) counts once.
        job.emit(planned("MODE=b", 3));
        assert_eq!(job.summary().total, 5);
    }

    /// A matrix job restored after a restart: the same test's results in two cells are two
    /// results, each standing in its own cell only.
    #[test]
    fn restored_results_are_kept_by_cell_and_test() {
        let in_cell = |seq: u64, cell: &str, outcome: TestOutcome| JobEvent {
            seq,
            elapsed_ms: 0,
            kind: Some(Kind::Test(TestFinished {
                test: Some(TestRef {
                    group: "g".into(),
                    name: "t".into(),
                }),
                outcome: outcome as i32,
                r#final: true,
                cell: cell.into(),
                ..TestFinished::default()
            })),
        };
        let restored = Restored {
            events: vec![
                in_cell(1, "MODE=a", TestOutcome::Passed),
                in_cell(2, "MODE=b", TestOutcome::Failed),
            ],
            ceiling: 1024,
        };
        let job = Job::restore("j".into(), JobSpec::default(), runner(), 0, restored);
        let restored = job.restored();
        assert_eq!(restored.len(), 2);
        let outcome = |cell: &str| {
            restored
                .get(&(cell.to_owned(), TestId::new("g", "t")))
                .map(TestFinished::outcome)
        };
        assert_eq!(outcome("MODE=a"), Some(TestOutcome::Passed));
        assert_eq!(outcome("MODE=b"), Some(TestOutcome::Failed));
        assert_eq!(outcome(""), None);
    }

    #[tokio::test]
    async fn nothing_is_shown_before_the_journal_has_it_and_a_restart_never_renumbers() {
        let meta = Arc::new(MemoryMetaStore::new());
        let journal = Journal::open(meta.clone()).expect("journal");
        let job = Job::new(
            "j".into(),
            JobSpec::default(),
            runner(),
            0,
            Default::default(),
        );

        // No keeper yet: neither a result nor a log line is shown (the log line's number is
        // not reserved yet either).
        job.emit(log("first"));
        job.emit(passed("a"));
        job.emit(log("second"));
        assert_eq!(job.events_after(0), (Vec::new(), false));

        let shutdown = CancellationToken::new();
        let keeper = {
            let (job, journal, shutdown) = (Arc::clone(&job), journal.clone(), shutdown.clone());
            tokio::spawn(async move { job.keep_journal(&journal, &shutdown).await })
        };
        shown(&job, 3).await;
        assert_eq!(seqs(&job.events_after(0).0), [1, 2, 3]);
        // Within the reserved block, a log line is shown at once.
        job.emit(log("third"));
        assert_eq!(seqs(&job.events_after(3).0), [4]);
        job.emit(passed("b"));
        shown(&job, 5).await;

        // The coordinator dies here. What comes back: the two results, with their numbers.
        shutdown.cancel();
        assert!(!keeper.await.expect("keeper"));
        let restored = journal.load("j").expect("load");
        assert_eq!(seqs(&restored.events), [2, 5]);
        let ceiling = restored.ceiling;
        assert!(ceiling >= 5, "{ceiling}");

        let job = Job::restore("j".into(), JobSpec::default(), runner(), 0, restored);
        assert_eq!(
            job.restored().keys().cloned().collect::<Vec<_>>(),
            [
                (String::new(), TestId::new("g", "a")),
                (String::new(), TestId::new("g", "b"))
            ]
        );
        assert_eq!(job.summary().done, 2);
        // A client that saw up to 4 re-attaches after 4: it gets b's result and then what the
        // new run says, numbered above anything the first run could have shown.
        assert_eq!(seqs(&job.events_after(4).0), [5]);
        let shutdown = CancellationToken::new();
        let keeper = {
            let (job, journal, shutdown) = (Arc::clone(&job), journal.clone(), shutdown.clone());
            tokio::spawn(async move { job.keep_journal(&journal, &shutdown).await })
        };
        job.emit(log("restarted"));
        job.emit(Kind::Finished(JobFinished::default()));
        assert!(keeper.await.expect("keeper"), "ends once all is shown");
        let (after, complete) = job.events_after(4);
        assert_eq!(seqs(&after), [5, ceiling + 1, ceiling + 2]);
        assert!(complete);
    }
}

//! One job's state as clients see it: its spec, its event log and its cancellation.
//!
//! Every event gets the next sequence number and stays in the log until the job is forgotten,
//! so `Jobs.Watch` replays a job from its first event and then follows it live.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tessera_proto::tessera::v1::{
    JobEvent, JobPhase, JobResult, JobSpec, JobSummary, TestOutcome, job_event,
};
use tessera_runners::RunnerConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A job, shared by its driver, its watchers and the registry.
#[derive(Debug)]
pub struct Job {
    /// Its id.
    pub id: String,
    /// What was submitted.
    pub spec: JobSpec,
    /// The runner named in the spec, parsed.
    pub runner: RunnerConfig,
    /// When it was accepted (Unix milliseconds).
    pub created_unix_ms: u64,
    started: Instant,
    state: Mutex<State>,
    seq: watch::Sender<u64>,
    /// Cancelled by `Jobs.Cancel` (or the coordinator shutting down).
    pub cancel: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    events: Vec<JobEvent>,
    phase: JobPhase,
    result: JobResult,
    done: u32,
    total: u32,
    /// Names of this job's operations in the scheduler that have not finished.
    operations: Vec<String>,
}

impl Job {
    /// A new job with an empty log.
    pub fn new(id: String, spec: JobSpec, runner: RunnerConfig, created_unix_ms: u64) -> Arc<Self> {
        Arc::new(Job {
            id,
            spec,
            runner,
            created_unix_ms,
            started: Instant::now(),
            state: Mutex::new(State::default()),
            seq: watch::channel(0).0,
            cancel: CancellationToken::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an event to the log and wakes the watchers.
    pub fn emit(&self, kind: job_event::Kind) {
        let seq = {
            let mut state = self.lock();
            match &kind {
                job_event::Kind::Phase(p) => state.phase = p.phase(),
                job_event::Kind::Planned(p) => state.total = p.total,
                job_event::Kind::Test(t) if t.r#final => state.done += 1,
                job_event::Kind::Finished(f) => {
                    state.phase = JobPhase::Done;
                    state.result = f.result();
                }
                _ => {}
            }
            let seq = state.events.len() as u64 + 1;
            state.events.push(JobEvent {
                seq,
                elapsed_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                kind: Some(kind),
            });
            seq
        };
        self.seq.send_replace(seq);
    }

    /// Events after `seq`, and whether the log is complete (the job finished).
    pub fn events_after(&self, seq: u64) -> (Vec<JobEvent>, bool) {
        let state = self.lock();
        let start = usize::try_from(seq)
            .unwrap_or(usize::MAX)
            .min(state.events.len());
        (
            state.events[start..].to_vec(),
            state.phase == JobPhase::Done,
        )
    }

    /// A receiver that changes whenever an event is added.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.seq.subscribe()
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
            total: state.total,
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

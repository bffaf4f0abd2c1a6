//! Waiting for what the servers announce, each wait with a deadline and a failure message that
//! says what did not happen: the stages of an operation stream (Execute, WaitExecution) and
//! the events of a job (Jobs.Watch). Log lines of child processes are awaited through
//! [`crate::ChildLog`], their exits through [`crate::wait_exit`].
//!
//! For the few states nobody announces, [`poll_until`] and [`blocking_poll_until`] ask again
//! every [`POLL_EVERY`]; every caller says in a comment why there is no event to wait for.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tessera_proto::longrunning::Operation;
use tessera_proto::reapi::execution_stage;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tessera_proto::tessera::v1::{
    JobEvent, JobFinished, JobSpec, SubmitJobRequest, WatchJobRequest, job_event,
};
use tonic::transport::Channel;

use crate::stage_of;

/// How often the polling helpers ask again.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// Reads `stream` until an update reports `stage` and returns that update. Panics after
/// `limit`, when the stream ends or fails, or when the operation finishes in another stage.
pub async fn wait_stage(
    stream: &mut tonic::Streaming<Operation>,
    stage: execution_stage::Value,
    limit: Duration,
) -> Operation {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let op = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!("the operation did not reach {stage:?} within {limit:?}; stages {seen:?}")
            })
            .unwrap_or_else(|| panic!("the stream ended before {stage:?}; stages {seen:?}"))
            .unwrap_or_else(|e| panic!("the stream failed before {stage:?}: {e}"));
        let now = stage_of(&op);
        if now == stage {
            return op;
        }
        seen.push(now);
        assert!(!op.done, "finished before it was seen {stage:?}: {op:?}");
    }
}

/// Watches job `job_id` from its first event until one satisfies `wanted` (described by
/// `what`) and returns it. Panics after `limit`, or when the job finishes (or its stream ends)
/// first.
pub async fn wait_job_event(
    jobs: &mut JobsClient<Channel>,
    job_id: &str,
    what: &str,
    limit: Duration,
    mut wanted: impl FnMut(&JobEvent) -> bool,
) -> JobEvent {
    let mut stream = jobs
        .watch(WatchJobRequest {
            job_id: job_id.to_owned(),
            after_seq: 0,
        })
        .await
        .expect("watch the job")
        .into_inner();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let event = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("job {job_id}: no {what} within {limit:?}"))
            .expect("job event stream")
            .unwrap_or_else(|| panic!("job {job_id}: the stream ended before {what}"));
        if wanted(&event) {
            return event;
        }
        if let Some(job_event::Kind::Finished(finished)) = &event.kind {
            panic!("job {job_id} finished before {what}: {finished:?}");
        }
    }
}

/// Submits `spec` and returns every event of the job until it finishes, and its final event
/// (see [`watch_job_to_end`]).
pub async fn run_job(
    jobs: &mut JobsClient<Channel>,
    spec: JobSpec,
) -> (Vec<JobEvent>, JobFinished) {
    let id = jobs
        .submit(SubmitJobRequest { spec: Some(spec) })
        .await
        .expect("submit the job")
        .into_inner()
        .job_id;
    watch_job_to_end(jobs, &id).await
}

/// Every event of job `job_id` from the start until it finishes (at most a minute), and its
/// final event. Events are printed as they come, for the failure output.
pub async fn watch_job_to_end(
    jobs: &mut JobsClient<Channel>,
    job_id: &str,
) -> (Vec<JobEvent>, JobFinished) {
    let mut stream = jobs
        .watch(WatchJobRequest {
            job_id: job_id.to_owned(),
            after_seq: 0,
        })
        .await
        .expect("watch the job")
        .into_inner();
    let mut events = Vec::new();
    let finished = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(event) = stream.message().await.expect("job event stream") {
            eprintln!("job event: {event:?}");
            events.push(event.clone());
            if let Some(job_event::Kind::Finished(f)) = event.kind {
                return f;
            }
        }
        panic!("job {job_id}: the stream ended without a finished event: {events:#?}");
    })
    .await
    .unwrap_or_else(|_| panic!("job {job_id} did not finish within a minute"));
    (events, finished)
}

/// Asks `check` every [`POLL_EVERY`] until it returns a value, for a state that no stream or
/// log announces; panics after `limit`, saying it waited for `what`.
pub async fn poll_until<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what} within {limit:?}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// [`poll_until`] for code that is not async: blocks the calling thread between checks.
pub fn blocking_poll_until<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "no {what} within {limit:?}");
        std::thread::sleep(POLL_EVERY);
    }
}

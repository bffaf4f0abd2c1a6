//! The jobs this coordinator has accepted: submit, watch, cancel, status, and recovery after
//! a restart. The `tessera.v1.Jobs` gRPC service (`services::jobs`) is a thin adapter over
//! [`JobRegistry`].
//!
//! Submit validates the spec (`validate.rs`), makes the job durable, starts its driver (and the
//! keeper of its journal, `journal.rs`) and returns its id. Jobs that had not finished when the
//! coordinator stopped go on when it starts: the final results clients may have seen come back
//! from the journal with their numbers and stand; the other tests run again (cached steps and
//! cached passes make that cheap). Nothing accepted is lost, nothing shown is renumbered.
//! A finished job's record and journal are removed together.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::Stream;
use prost::Message;
use tessera_cas::digest::Digest;
use tessera_cas::meta::{Batch, MetaError, MetadataStore, Table};
use tessera_proto::reapi::platform::Property;
use tessera_proto::tessera::v1::{
    AgentSummary, JobEvent, JobSpec, LogLine, StatusResponse, StoreSummary, job_event::Kind,
};
use tessera_runners::RunnerConfig;
use thiserror::Error;
use tracing::Instrument;

use super::driver::{self, JobContext};
use super::job::Job;
use super::journal::Journal;
use super::secrets::{JobSecrets, LOST_MESSAGE, PlaceholderKey, strip};
use super::validate::validate;
use crate::execution::execute::ExecuteError;
use crate::history::{JobHistory, LiveChange, LiveFeed};

/// Table of accepted jobs that have not finished: id → `JobSpec` (its secrets' values
/// stripped) with its creation time.
pub(crate) const TABLE: &str = "jobs";
/// Finished jobs kept for `Watch` and `Status`.
const KEEP_FINISHED: usize = 200;

/// Why a Jobs request failed.
#[derive(Debug, Error)]
pub enum JobsError {
    /// A field of the request is invalid.
    #[error("{field}: {problem}")]
    Invalid {
        /// The field, as the proto names it.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The job's input root has not been uploaded.
    #[error("input_root_digest: {0} is not in the CAS; upload the snapshot first")]
    InputRootMissing(Digest),
    /// No job with that id (never accepted, or finished and forgotten).
    #[error(
        "job \"{0}\" not found (finished jobs are kept for a while); `tessera status` lists the jobs"
    )]
    NotFound(String),
    /// The job could not be written to the metadata store.
    #[error("failed to record the job: {0}")]
    Record(#[source] MetaError),
    /// The job could not be made durable, so it was not accepted.
    #[error("failed to persist the job: {0}")]
    Persist(#[source] MetaError),
    /// The execution layer (the scheduler, for the fleet's status) failed.
    #[error(transparent)]
    Execution(#[from] ExecuteError),
}

/// Every job this coordinator knows: running ones, and the last finished ones.
#[derive(Clone)]
pub struct JobRegistry {
    ctx: JobContext,
    meta: Arc<dyn MetadataStore>,
    table: Table,
    journal: Journal,
    secret_key: PlaceholderKey,
    jobs: Arc<Mutex<Registry>>,
    /// Finished jobs for the dashboard; `None` when it keeps none.
    history: Option<JobHistory>,
    /// Changes of shown events, for live pages.
    feed: LiveFeed,
}

#[derive(Default)]
struct Registry {
    jobs: BTreeMap<String, Arc<Job>>,
    finished: VecDeque<String>,
}

impl std::fmt::Debug for JobRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRegistry").finish_non_exhaustive()
    }
}

impl JobRegistry {
    /// The registry; jobs left unfinished by an earlier run of the coordinator go on. Up to
    /// `keep_history` finished jobs are recorded in the history (0: none).
    pub fn start(
        ctx: JobContext,
        meta: Arc<dyn MetadataStore>,
        keep_history: usize,
    ) -> Result<Self, MetaError> {
        let table = meta.table(TABLE)?;
        let history = match keep_history {
            0 => None,
            keep => Some(JobHistory::open(Arc::clone(&meta), keep)?),
        };
        let registry = JobRegistry {
            history,
            feed: LiveFeed::new(),
            ctx,
            journal: Journal::open(Arc::clone(&meta))?,
            secret_key: PlaceholderKey::new(Arc::clone(&meta)),
            meta,
            table,
            jobs: Arc::new(Mutex::new(Registry::default())),
        };
        let mut resumed = 0;
        for entry in registry.table.scan_prefix(b"") {
            let (key, value) = entry?;
            let id = String::from_utf8_lossy(&key).into_owned();
            let Some((created, spec)) = decode_record(&value) else {
                tracing::warn!(job = %id, "dropping an undecodable job record");
                registry.forget_now(&id)?;
                continue;
            };
            let Ok(runner) = serde_json::from_str::<RunnerConfig>(&spec.runner_json) else {
                registry.forget_now(&id)?;
                continue;
            };
            let restored = registry.journal.load(&id)?;
            let job = Job::restore(id, spec, runner, created, restored);
            let kept = job.restored().len();
            let text = if let JobSecrets::Lost(_) = job.secrets {
                format!(
                    "the coordinator restarted; {kept} test results already reported stand, but the job's other steps cannot run: {LOST_MESSAGE}"
                )
            } else {
                format!(
                    "the coordinator restarted; the job goes on: {kept} test results already reported stand, the other tests run again (cached results are kept)"
                )
            };
            job.emit(Kind::Log(LogLine { text }));
            registry.launch(job);
            resumed += 1;
        }
        // Journals whose job record is gone (a crash between the two removals of an older
        // version, or a record dropped above).
        for id in registry.journal.jobs()? {
            if registry.table.get(id.as_bytes())?.is_none() {
                registry.forget_now(&id)?;
            }
        }
        if resumed > 0 {
            tracing::info!(resumed, "resumed unfinished jobs");
        }
        Ok(registry)
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes job `id`'s record and journal, in one batch.
    fn forget_now(&self, id: &str) -> Result<(), MetaError> {
        self.meta.apply_batch(self.forget_batch(id)?)
    }

    fn forget_batch(&self, id: &str) -> Result<Batch, MetaError> {
        let mut batch = Batch::new();
        batch.remove(TABLE, id.as_bytes());
        self.journal.forget(id, &mut batch)?;
        Ok(batch)
    }

    /// Removes a finished job's record and journal, so a restart does not run it again, and
    /// records it in the history in the same commit; on a full disk, retries until space
    /// returns (or the coordinator stops).
    async fn forget_record(&self, job: &Job) {
        let id = job.id.as_str();
        let mut delay = Duration::from_millis(200);
        let record = Arc::new(self.history.as_ref().map(|_| job.history_record()));
        loop {
            // Off the async threads: a large job's history is thousands of writes.
            let registry = self.clone();
            let (owned_id, record) = (id.to_owned(), Arc::clone(&record));
            let done = tokio::task::spawn_blocking(move || {
                let batch = registry.forget_batch(&owned_id)?;
                match (&registry.history, record.as_ref()) {
                    (Some(history), Some((record, tests, spans))) => {
                        history.record(record, tests, spans, batch)
                    }
                    _ => registry.meta.apply_batch(batch),
                }
            })
            .await;
            let Ok(done) = done else {
                tracing::warn!(job = %id, "failed to forget a finished job: its writer panicked");
                return;
            };
            match done {
                Ok(()) => return,
                Err(error) if error.is_out_of_space() => {
                    tracing::debug!(%error, job = %id, "finished job's record kept for now");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.ctx.shutdown.cancelled() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    tracing::warn!(%error, job = %id, "failed to forget a finished job");
                    return;
                }
            }
        }
    }

    fn launch(&self, job: Arc<Job>) {
        self.lock().jobs.insert(job.id.clone(), Arc::clone(&job));
        tokio::spawn(publish_changes(Arc::clone(&job), self.feed.clone()));
        let registry = self.clone();
        // The job's trace: the child of the call that submitted it (none after a restart).
        let span = tracing::info_span!(
            "job",
            otel.name = "job",
            job.id = %job.id,
            job.project = %job.spec.project,
            job.result = tracing::field::Empty,
        );
        tokio::spawn(async move {
            let keeper = {
                let job = Arc::clone(&job);
                let journal = registry.journal.clone();
                let shutdown = registry.ctx.shutdown.clone();
                tokio::spawn(async move { job.keep_journal(&journal, &shutdown).await })
            };
            let ended = driver::run(registry.ctx.clone(), Arc::clone(&job))
                .instrument(span)
                .await;
            // The keeper ends once the finished event is shown, or at shutdown.
            let all_shown = keeper.await.unwrap_or(false);
            if ended == driver::Ended::Interrupted || !all_shown {
                // Kept, so the next start goes on with it (a client may not have seen its
                // end yet).
                return;
            }
            registry.forget_record(&job).await;
            registry.feed.publish(LiveChange::Recorded {
                id: job.id.clone(),
                instance: job.spec.instance_name.clone(),
            });
            let mut jobs = registry.lock();
            jobs.finished.push_back(job.id.clone());
            while jobs.finished.len() > KEEP_FINISHED {
                if let Some(old) = jobs.finished.pop_front() {
                    jobs.jobs.remove(&old);
                }
            }
        });
    }

    /// The history of finished jobs, when it keeps any.
    pub fn history(&self) -> Option<&JobHistory> {
        self.history.as_ref()
    }

    /// The feed of changes live pages follow.
    pub fn feed(&self) -> &LiveFeed {
        &self.feed
    }

    /// The jobs in memory: every unfinished one and the last finished ones.
    pub fn jobs(&self) -> Vec<Arc<Job>> {
        self.lock().jobs.values().cloned().collect()
    }

    /// Job `id`, while it is in memory.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.lock().jobs.get(id).cloned()
    }

    fn job(&self, id: &str) -> Result<Arc<Job>, JobsError> {
        self.lock()
            .jobs
            .get(id)
            .cloned()
            .ok_or_else(|| JobsError::NotFound(id.to_owned()))
    }

    /// Accepts `spec`: checks it, makes it durable, starts its driver; returns the job's id.
    pub async fn submit(&self, spec: Option<JobSpec>) -> Result<String, JobsError> {
        let mut spec = spec.ok_or_else(|| JobsError::Invalid {
            field: "spec",
            problem: "missing".to_owned(),
        })?;
        let runner = validate(&mut spec, &self.ctx)?;
        let secrets = if spec.secrets.is_empty() {
            JobSecrets::default()
        } else {
            let key = self.secret_key.get().await.map_err(JobsError::Persist)?;
            JobSecrets::held(&spec, &key)
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        let created = u64::try_from(tessera_proto::time::unix_ms()).unwrap_or(0);
        // The record names the secrets but never holds their values (`secrets.rs`).
        self.table
            .insert(id.as_bytes(), &encode_record(created, &strip(&spec)))
            .map_err(JobsError::Record)?;
        self.meta.flush_async().await.map_err(JobsError::Persist)?;
        let job = Job::new(id.clone(), spec, runner, created, secrets);
        self.launch(job);
        tracing::info!(job = %id, "job accepted");
        Ok(id)
    }

    /// The events of job `id` after `after_seq`, and then its new events as they come, until
    /// it has finished.
    pub fn watch(
        &self,
        id: &str,
        after_seq: u64,
    ) -> Result<impl Stream<Item = JobEvent> + Send + 'static, JobsError> {
        let job = self.job(id)?;
        let rx = job.subscribe();
        Ok(futures::stream::unfold(
            (job, rx, after_seq, VecDeque::<JobEvent>::new(), false),
            |(job, mut rx, mut seq, mut pending, mut complete)| async move {
                loop {
                    if let Some(event) = pending.pop_front() {
                        seq = event.seq;
                        return Some((event, (job, rx, seq, pending, complete)));
                    }
                    if complete {
                        return None;
                    }
                    rx.borrow_and_update();
                    let (events, done) = job.events_after(seq);
                    if events.is_empty() && done {
                        return None;
                    }
                    complete = done;
                    pending.extend(events);
                    if pending.is_empty() && rx.changed().await.is_err() {
                        return None;
                    }
                }
            },
        ))
    }

    /// Cancels job `id`; whether it was still running.
    pub fn cancel(&self, id: &str) -> Result<bool, JobsError> {
        let job = self.job(id)?;
        let cancelled = !job.finished();
        job.cancel.cancel();
        Ok(cancelled)
    }

    /// Who submitted job `id` (its recorded submitter) and its instance name.
    pub fn owner(&self, id: &str) -> Result<(String, String), JobsError> {
        let job = self.job(id)?;
        Ok((job.spec.submitter.clone(), job.spec.instance_name.clone()))
    }

    /// How many unfinished jobs token `name` submitted (itself, or on behalf of someone).
    pub fn running_of(&self, name: &str) -> usize {
        self.lock()
            .jobs
            .values()
            .filter(|j| !j.finished() && owned_by(&j.spec.submitter, name))
            .count()
    }

    /// The jobs (running first, then newest first) and the fleet.
    pub async fn status(&self) -> Result<StatusResponse, JobsError> {
        let (stats, agents) = self
            .ctx
            .scheduler
            .stats()
            .await
            .map_err(ExecuteError::from)?;
        let agents = agents
            .into_iter()
            .map(|a| AgentSummary {
                agent_id: a.id,
                slots: a.slots,
                busy: u32::try_from(a.running).unwrap_or(u32::MAX),
                properties: a
                    .properties
                    .into_iter()
                    .map(|(name, value)| Property { name, value })
                    .collect(),
            })
            .collect();
        let registry = self.lock();
        let mut jobs: Vec<_> = registry
            .jobs
            .values()
            .map(|j| (j.finished(), j.summary()))
            .collect();
        jobs.sort_by(|(a_done, a), (b_done, b)| {
            a_done
                .cmp(b_done)
                .then(b.created_unix_ms.cmp(&a.created_unix_ms))
        });
        let blobs = self.ctx.store.stats();
        let meta = self.meta.space();
        Ok(StatusResponse {
            jobs: jobs.into_iter().map(|(_, s)| s).collect(),
            agents,
            queued_operations: u32::try_from(stats.queued).unwrap_or(u32::MAX),
            running_operations: u32::try_from(stats.leased).unwrap_or(u32::MAX),
            store: Some(StoreSummary {
                blobs: blobs.blobs,
                stored_bytes: blobs.stored_bytes,
                budget_bytes: if blobs.budget_bytes == u64::MAX {
                    0
                } else {
                    blobs.budget_bytes
                },
                blobs_out_of_space: blobs.space.full,
                blob_writes_refused: blobs.space.refused,
                metadata_out_of_space: meta.full,
                metadata_writes_refused: meta.refused,
            }),
        })
    }
}

/// Publishes every change of `job`'s shown events to `feed`, until the job has finished and
/// all of it is shown.
async fn publish_changes(job: Arc<Job>, feed: LiveFeed) {
    let mut shown = job.subscribe();
    loop {
        let seq = *shown.borrow_and_update();
        feed.publish(LiveChange::Job {
            id: job.id.clone(),
            seq,
            instance: job.spec.instance_name.clone(),
        });
        if job.events_after(seq).1 || shown.changed().await.is_err() {
            return;
        }
    }
}

fn encode_record(created: u64, spec: &JobSpec) -> Vec<u8> {
    let mut bytes = created.to_be_bytes().to_vec();
    bytes.extend_from_slice(&spec.encode_to_vec());
    bytes
}

pub(crate) fn decode_record(bytes: &[u8]) -> Option<(u64, JobSpec)> {
    let (created, spec) = bytes.split_at_checked(8)?;
    Some((
        u64::from_be_bytes(created.try_into().ok()?),
        JobSpec::decode(spec).ok()?,
    ))
}

/// Whether a job recorded with `submitter` belongs to token `name`: its own (`name`) or run on
/// someone's behalf (`name/WHO`).
pub fn owned_by(submitter: &str, name: &str) -> bool {
    submitter
        .strip_prefix(name)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_records_round_trip() {
        let spec = JobSpec {
            title: "cargo test".into(),
            ..Default::default()
        };
        let bytes = encode_record(42, &spec);
        assert_eq!(decode_record(&bytes), Some((42, spec)));
        assert_eq!(decode_record(b"short"), None);
    }
}

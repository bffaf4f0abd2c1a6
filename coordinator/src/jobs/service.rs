//! `tessera.v1.Jobs`: submit, watch, cancel and list test-suite jobs.
//!
//! Submit validates the spec (every field a client sends is checked here, with a message that
//! names it), makes the job durable, starts its driver and returns its id. Jobs that had not
//! finished when the coordinator stopped are started again when it starts: cached steps and
//! cached passes make the second run cheap, and nothing accepted is lost.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Component, Path};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::Stream;
use prost::Message;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::meta::{MetadataStore, Table};
use tessera_cas::resource::validate_instance_name;
use tessera_proto::tessera::v1::{
    AgentSummary, CancelJobRequest, CancelJobResponse, JobEvent, JobSpec, LogLine, StatusRequest,
    StatusResponse, SubmitJobRequest, SubmitJobResponse, WatchJobRequest, job_event::Kind,
    jobs_server,
};
use tessera_runners::RunnerConfig;
use tonic::{Request, Response, Status};

use super::driver::{self, JobContext};
use super::job::Job;
use crate::services::execution::PRIORITY_RANGE;

/// Table of accepted jobs that have not finished: id → `JobSpec` with its creation time.
const TABLE: &str = "jobs";
/// Finished jobs kept for `Watch` and `Status`.
const KEEP_FINISHED: usize = 200;
/// Most retries a job may ask for.
const MAX_RETRIES: u32 = 100;

/// The Jobs service and the registry of jobs.
#[derive(Clone)]
pub struct JobsService {
    ctx: JobContext,
    meta: Arc<dyn MetadataStore>,
    table: Table,
    jobs: Arc<Mutex<Registry>>,
}

#[derive(Default)]
struct Registry {
    jobs: BTreeMap<String, Arc<Job>>,
    finished: VecDeque<String>,
}

impl std::fmt::Debug for JobsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobsService").finish_non_exhaustive()
    }
}

impl JobsService {
    /// The service; jobs left unfinished by an earlier run of the coordinator start again.
    pub fn start(
        ctx: JobContext,
        meta: Arc<dyn MetadataStore>,
    ) -> Result<Self, tessera_cas::meta::MetaError> {
        let table = meta.table(TABLE)?;
        let service = JobsService {
            ctx,
            meta,
            table,
            jobs: Arc::new(Mutex::new(Registry::default())),
        };
        let mut resumed = 0;
        for entry in service.table.scan_prefix(b"") {
            let (key, value) = entry?;
            let id = String::from_utf8_lossy(&key).into_owned();
            let Some((created, spec)) = decode_record(&value) else {
                tracing::warn!(job = %id, "dropping an undecodable job record");
                service.table.remove(&key)?;
                continue;
            };
            let Ok(runner) = serde_json::from_str::<RunnerConfig>(&spec.runner_json) else {
                service.table.remove(&key)?;
                continue;
            };
            let job = Job::new(id, spec, runner, created);
            job.emit(Kind::Log(LogLine {
                text: "the coordinator restarted; the job starts again (cached results are kept)"
                    .to_owned(),
            }));
            service.launch(job);
            resumed += 1;
        }
        if resumed > 0 {
            tracing::info!(resumed, "resumed unfinished jobs");
        }
        Ok(service)
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn launch(&self, job: Arc<Job>) {
        self.lock().jobs.insert(job.id.clone(), Arc::clone(&job));
        let service = self.clone();
        tokio::spawn(async move {
            driver::run(service.ctx.clone(), Arc::clone(&job)).await;
            if let Err(error) = service.table.remove(job.id.as_bytes()) {
                tracing::warn!(%error, job = %job.id, "failed to forget a finished job");
            }
            let mut registry = service.lock();
            registry.finished.push_back(job.id.clone());
            while registry.finished.len() > KEEP_FINISHED {
                if let Some(old) = registry.finished.pop_front() {
                    registry.jobs.remove(&old);
                }
            }
        });
    }

    fn job(&self, id: &str) -> Result<Arc<Job>, Status> {
        self.lock().jobs.get(id).cloned().ok_or_else(|| {
            Status::not_found(format!(
                "job \"{id}\" not found (finished jobs are kept for a while); `tessera status` lists the jobs"
            ))
        })
    }

    async fn submit(&self, req: SubmitJobRequest) -> Result<String, Status> {
        let mut spec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: missing"))?;
        let runner = self.validate(&mut spec)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
        self.table
            .insert(id.as_bytes(), &encode_record(created, &spec))
            .map_err(|e| Status::internal(format!("failed to record the job: {e}")))?;
        self.meta
            .flush_async()
            .await
            .map_err(|e| Status::internal(format!("failed to persist the job: {e}")))?;
        let job = Job::new(id.clone(), spec, runner, created);
        self.launch(job);
        tracing::info!(job = %id, "job accepted");
        Ok(id)
    }

    /// Checks every field of `spec` and normalizes the environment (sorted by name).
    fn validate(&self, spec: &mut JobSpec) -> Result<RunnerConfig, Status> {
        let bad =
            |field: &str, problem: String| Status::invalid_argument(format!("{field}: {problem}"));
        validate_instance_name(&spec.instance_name)
            .map_err(|e| bad("instance_name", e.to_string()))?;
        let function = DigestFunction::from_request(spec.digest_function)
            .map_err(|e| bad("digest_function", e.to_string()))?;
        let root = Digest::from_proto_opt(function, spec.input_root_digest.as_ref())
            .map_err(|e| bad("input_root_digest", e.to_string()))?;
        if !self.ctx.store.contains(&root) {
            return Err(Status::failed_precondition(format!(
                "input_root_digest: {root} is not in the CAS; upload the snapshot first"
            )));
        }
        let runner: RunnerConfig = serde_json::from_str(&spec.runner_json)
            .map_err(|e| bad("runner_json", format!("not a runner configuration: {e}")))?;
        check_abs_path("exec_root", &spec.exec_root)?;
        for path in &spec.persist {
            let p = Path::new(path);
            if path.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
                return Err(bad(
                    "persist",
                    format!("\"{path}\" must be a relative path without `..`"),
                ));
            }
        }
        spec.environment.sort_by(|a, b| a.name.cmp(&b.name));
        for pair in spec.environment.windows(2) {
            if pair[0].name == pair[1].name {
                return Err(bad(
                    "environment",
                    format!("variable {} is set twice", pair[0].name),
                ));
            }
        }
        if let Some(var) = spec
            .environment
            .iter()
            .find(|v| v.name.is_empty() || v.name.contains('='))
        {
            return Err(bad(
                "environment",
                format!("invalid variable name \"{}\"", var.name),
            ));
        }
        if let Some(p) = spec.platform.iter().find(|p| p.name.is_empty()) {
            return Err(bad(
                "platform",
                format!("property with an empty name (value \"{}\")", p.value),
            ));
        }
        if spec.retries > MAX_RETRIES {
            return Err(bad(
                "retries",
                format!("{} is more than the limit of {MAX_RETRIES}", spec.retries),
            ));
        }
        if spec.priority < PRIORITY_RANGE.0 || spec.priority > PRIORITY_RANGE.1 {
            return Err(bad(
                "priority",
                format!(
                    "{} is outside {}..={}",
                    spec.priority, PRIORITY_RANGE.0, PRIORITY_RANGE.1
                ),
            ));
        }
        if let Some(timeout) = &spec.test_timeout {
            let timeout = Duration::try_from(*timeout)
                .map_err(|_| bad("test_timeout", "negative or out of range".to_owned()))?;
            if timeout > self.ctx.max_action_timeout {
                return Err(bad(
                    "test_timeout",
                    format!(
                        "{} is longer than the coordinator's limit of {}",
                        humantime::format_duration(timeout),
                        humantime::format_duration(self.ctx.max_action_timeout)
                    ),
                ));
            }
        }
        Ok(runner)
    }

    fn status(&self, agents: Vec<AgentSummary>, queued: u32, running: u32) -> StatusResponse {
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
        StatusResponse {
            jobs: jobs.into_iter().map(|(_, s)| s).collect(),
            agents,
            queued_operations: queued,
            running_operations: running,
        }
    }
}

fn check_abs_path(field: &str, path: &str) -> Result<(), Status> {
    let p = Path::new(path);
    let normal = p.is_absolute()
        && p.components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)))
        && p.components().count() > 1
        && p.components().collect::<std::path::PathBuf>().as_os_str() == p.as_os_str();
    if normal {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{field}: \"{path}\" must be an absolute, normalized path other than /"
        )))
    }
}

fn encode_record(created: u64, spec: &JobSpec) -> Vec<u8> {
    let mut bytes = created.to_be_bytes().to_vec();
    bytes.extend_from_slice(&spec.encode_to_vec());
    bytes
}

fn decode_record(bytes: &[u8]) -> Option<(u64, JobSpec)> {
    let (created, spec) = bytes.split_at_checked(8)?;
    Some((
        u64::from_be_bytes(created.try_into().ok()?),
        JobSpec::decode(spec).ok()?,
    ))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl jobs_server::Jobs for JobsService {
    async fn submit(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<SubmitJobResponse>, Status> {
        let job_id = JobsService::submit(self, request.into_inner()).await?;
        Ok(Response::new(SubmitJobResponse { job_id }))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        let job = self.job(&req.job_id)?;
        let rx = job.subscribe();
        let stream = futures::stream::unfold(
            (job, rx, req.after_seq, VecDeque::<JobEvent>::new(), false),
            |(job, mut rx, mut seq, mut pending, mut complete)| async move {
                loop {
                    if let Some(event) = pending.pop_front() {
                        seq = event.seq;
                        return Some((Ok(event), (job, rx, seq, pending, complete)));
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
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        let job = self.job(&request.into_inner().job_id)?;
        let cancelled = !job.finished();
        job.cancel.cancel();
        Ok(Response::new(CancelJobResponse { cancelled }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let (stats, agents) = self.ctx.scheduler.stats().await?;
        let agents = agents
            .into_iter()
            .map(|a| AgentSummary {
                agent_id: a.id,
                slots: a.slots,
                busy: u32::try_from(a.running).unwrap_or(u32::MAX),
                properties: a
                    .properties
                    .into_iter()
                    .map(|(name, value)| tessera_proto::reapi::platform::Property { name, value })
                    .collect(),
            })
            .collect();
        Ok(Response::new(self.status(
            agents,
            u32::try_from(stats.queued).unwrap_or(u32::MAX),
            u32::try_from(stats.leased).unwrap_or(u32::MAX),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_roots_must_be_absolute_and_normal() {
        assert!(check_abs_path("exec_root", "/tmp/tessera/x").is_ok());
        for bad in [
            "",
            "/",
            "tmp/x",
            "/tmp/../etc",
            "/tmp/./x",
            "/tmp//x",
            "/tmp/x/",
        ] {
            let err = check_abs_path("exec_root", bad).expect_err(bad);
            assert!(err.message().starts_with("exec_root:"), "{bad}: {err}");
        }
    }

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

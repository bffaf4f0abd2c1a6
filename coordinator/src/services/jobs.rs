//! `tessera.v1.Jobs`: submit, watch, cancel and list test-suite jobs, as thin adapters over
//! the job registry ([`JobRegistry`]). This file owns only what is gRPC: the status code of
//! each [`JobsError`].

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tessera_proto::tessera::v1::{
    CancelJobRequest, CancelJobResponse, JobEvent, JobSpec, StatusRequest, StatusResponse,
    SubmitJobRequest, SubmitJobResponse, WatchJobRequest, jobs_server,
};
use tonic::{Request, Response, Status};

use crate::auth::{AuditRecord, Auth, Caller, Role};
use crate::execution::execute::ExecuteError;
use crate::jobs::registry::{JobRegistry, JobsError, owned_by};
use crate::status::meta_error;

impl From<JobsError> for Status {
    fn from(error: JobsError) -> Status {
        match error {
            JobsError::Invalid { .. } => Status::invalid_argument(error.to_string()),
            JobsError::InputRootMissing(_) => Status::failed_precondition(error.to_string()),
            JobsError::NotFound(_) => Status::not_found(error.to_string()),
            // Retryable: the coordinator is shutting down.
            JobsError::Execution(ExecuteError::Stopped) => Status::unavailable(error.to_string()),
            JobsError::Record(ref inner) | JobsError::Persist(ref inner) => {
                meta_error(&error, inner)
            }
            JobsError::Execution(inner) => inner.into(),
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;

/// The Jobs service.
#[derive(Clone, Debug)]
pub struct JobsService {
    jobs: JobRegistry,
    auth: Option<Auth>,
}

/// Longest `on_behalf_of`.
const MAX_ON_BEHALF_OF: usize = 128;

impl JobsService {
    /// Serves `jobs`.
    pub fn new(jobs: JobRegistry) -> Self {
        JobsService { jobs, auth: None }
    }

    /// Records the submitter from the caller's token, checks ownership and limits against
    /// `auth`, and audits submissions and cancellations.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Sets who the job belongs to, from the caller (never from what the client claims), and
    /// its trust domain; admits it under the caller's limits.
    fn claim(&self, caller: &Caller, spec: &mut JobSpec) -> Result<(), Status> {
        caller.instance("Jobs.Submit", &spec.instance_name)?;
        let on_behalf_of = spec.on_behalf_of.trim().to_owned();
        if on_behalf_of.len() > MAX_ON_BEHALF_OF
            || on_behalf_of.chars().any(|c| c.is_control() || c == '/')
        {
            return Err(Status::invalid_argument(format!(
                "JobSpec.on_behalf_of must be at most {MAX_ON_BEHALF_OF} printable characters \
                 without '/'"
            )));
        }
        let principal = caller.principal();
        if principal.is_anonymous() {
            if !on_behalf_of.is_empty() {
                spec.submitter = on_behalf_of;
            }
            spec.trust_domain.clear();
            return Ok(());
        }
        if on_behalf_of.is_empty() {
            spec.submitter.clone_from(&principal.name);
        } else {
            if !matches!(principal.role, Role::Ci | Role::Admin) {
                let denied = Status::permission_denied(format!(
                    "token \"{}\" has role {}: only ci and admin tokens may submit on behalf \
                     of someone (--on-behalf-of)",
                    principal.name, principal.role
                ));
                if let Some(auth) = caller.auth() {
                    auth.audit
                        .denied(principal, "Jobs.Submit", &spec.instance_name, &denied);
                }
                return Err(denied);
            }
            spec.submitter = format!("{}/{on_behalf_of}", principal.name);
        }
        spec.trust_domain = principal.trust_domain();
        if let Some(auth) = caller.auth() {
            auth.limits
                .submit(principal, self.jobs.running_of(&principal.name))?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl jobs_server::Jobs for JobsService {
    async fn submit(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<SubmitJobResponse>, Status> {
        let caller = Caller::of(self.auth.as_ref(), &request);
        let mut spec = request.into_inner().spec;
        if let Some(spec) = &mut spec {
            self.claim(&caller, spec)?;
        }
        let (instance, submitter) = spec
            .as_ref()
            .map(|s| (s.instance_name.clone(), s.submitter.clone()))
            .unwrap_or_default();
        let job_id = self.jobs.submit(spec).await?;
        caller.record(AuditRecord {
            action: "job.submit",
            instance: &instance,
            object: &job_id,
            allowed: true,
            detail: &format!("submitter {submitter}"),
        });
        Ok(Response::new(SubmitJobResponse { job_id }))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = Caller::of(self.auth.as_ref(), &request);
        let req = request.into_inner();
        if caller.auth().is_some() {
            let (_, instance) = self.jobs.owner(&req.job_id)?;
            caller.instance("Jobs.Watch", &instance)?;
        }
        let events = self.jobs.watch(&req.job_id, req.after_seq)?;
        Ok(Response::new(Box::pin(events.map(Ok))))
    }

    async fn cancel(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        let caller = Caller::of(self.auth.as_ref(), &request);
        let job_id = request.into_inner().job_id;
        let (submitter, instance) = self.jobs.owner(&job_id)?;
        let principal = caller.principal();
        if !principal.is_anonymous()
            && principal.role != Role::Admin
            && !owned_by(&submitter, &principal.name)
        {
            let denied = Status::permission_denied(format!(
                "job {job_id} belongs to \"{submitter}\": only its submitter's token or an \
                 admin may cancel it"
            ));
            if let Some(auth) = caller.auth() {
                auth.audit
                    .denied(principal, "Jobs.Cancel", &instance, &denied);
            }
            return Err(denied);
        }
        let cancelled = self.jobs.cancel(&job_id)?;
        caller.record(AuditRecord {
            action: "job.cancel",
            instance: &instance,
            object: &job_id,
            allowed: true,
            detail: &format!("submitter {submitter}"),
        });
        Ok(Response::new(CancelJobResponse { cancelled }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.jobs.status().await?))
    }
}

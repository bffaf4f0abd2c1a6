//! `tessera.v1.Jobs`: submit, watch, cancel and list test-suite jobs, as thin adapters over
//! the job registry ([`JobRegistry`]). This file owns only what is gRPC: the status code of
//! each [`JobsError`].

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tessera_proto::tessera::v1::{
    CancelJobRequest, CancelJobResponse, JobEvent, StatusRequest, StatusResponse, SubmitJobRequest,
    SubmitJobResponse, WatchJobRequest, jobs_server,
};
use tonic::{Request, Response, Status};

use crate::execution::execute::ExecuteError;
use crate::jobs::registry::{JobRegistry, JobsError};
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
}

impl JobsService {
    /// Serves `jobs`.
    pub fn new(jobs: JobRegistry) -> Self {
        JobsService { jobs }
    }
}

#[tonic::async_trait]
impl jobs_server::Jobs for JobsService {
    async fn submit(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<SubmitJobResponse>, Status> {
        let job_id = self.jobs.submit(request.into_inner().spec).await?;
        Ok(Response::new(SubmitJobResponse { job_id }))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        let events = self.jobs.watch(&req.job_id, req.after_seq)?;
        Ok(Response::new(Box::pin(events.map(Ok))))
    }

    async fn cancel(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        let cancelled = self.jobs.cancel(&request.into_inner().job_id)?;
        Ok(Response::new(CancelJobResponse { cancelled }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.jobs.status().await?))
    }
}

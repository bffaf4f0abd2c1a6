//! `google.longrunning.Operations` for execution operations: GetOperation, CancelOperation
//! and WaitOperation. Listing and deleting are not offered.

use std::time::Duration;

use tessera_proto::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    ListOperationsResponse, Operation, WaitOperationRequest, operations_server,
};
use tonic::{Request, Response, Status};

use crate::execution::scheduler::SchedulerHandle;

/// Longest a WaitOperation call waits when the client sets no timeout.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// The Operations service.
#[derive(Clone, Debug)]
pub struct OperationsService {
    scheduler: SchedulerHandle,
}

impl OperationsService {
    /// Serves operations known to `scheduler`.
    pub fn new(scheduler: SchedulerHandle) -> Self {
        OperationsService { scheduler }
    }

    async fn get(&self, name: &str) -> Result<Operation, Status> {
        let rx = self
            .scheduler
            .watch(name)
            .await?
            .ok_or_else(|| Status::not_found(format!("operation \"{name}\" not found")))?;
        let snapshot = rx.borrow().clone();
        Ok(snapshot.to_operation())
    }
}

#[tonic::async_trait]
impl operations_server::Operations for OperationsService {
    async fn list_operations(
        &self,
        _request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        Err(Status::unimplemented(
            "ListOperations is not offered; use `tessera status`",
        ))
    }

    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        Ok(Response::new(self.get(&request.get_ref().name).await?))
    }

    async fn delete_operation(
        &self,
        _request: Request<DeleteOperationRequest>,
    ) -> Result<Response<()>, Status> {
        Err(Status::unimplemented(
            "DeleteOperation is not offered; finished operations expire on their own",
        ))
    }

    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        self.scheduler.cancel(&request.get_ref().name).await?;
        Ok(Response::new(()))
    }

    async fn wait_operation(
        &self,
        request: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let req = request.into_inner();
        let timeout = req
            .timeout
            .and_then(|t| u64::try_from(t.seconds).ok().map(Duration::from_secs))
            .filter(|t| !t.is_zero())
            .unwrap_or(DEFAULT_WAIT);
        let mut rx =
            self.scheduler.watch(&req.name).await?.ok_or_else(|| {
                Status::not_found(format!("operation \"{}\" not found", req.name))
            })?;
        let _ = tokio::time::timeout(timeout, rx.wait_for(|s| s.response.is_some())).await;
        let snapshot = rx.borrow().clone();
        Ok(Response::new(snapshot.to_operation()))
    }
}

//! `tessera.v1.Quarantine`: quarantine a test of a project, end it, list them, as thin
//! adapters over the [`QuarantineStore`] (which records every change in the audit log). The
//! authentication layer lets `admin` and `ci` tokens change quarantines and any job reader
//! list them; this file checks the caller's instance scope and owns the status codes.

use tessera_proto::tessera::v1::{
    AddQuarantineRequest, AddQuarantineResponse, ListQuarantineRequest, ListQuarantineResponse,
    RemoveQuarantineRequest, RemoveQuarantineResponse, TestRef, quarantine_server,
};
use tessera_runners::TestId;
use tonic::{Request, Response, Status};

use crate::auth::{Auth, principal};
use crate::jobs::quarantine::{QuarantineError, QuarantineKey, QuarantineStore};
use crate::status::meta_error;

impl From<QuarantineError> for Status {
    fn from(error: QuarantineError) -> Status {
        match error {
            QuarantineError::NoProject
            | QuarantineError::NoTest
            | QuarantineError::TooLong { .. } => Status::invalid_argument(error.to_string()),
            QuarantineError::NotQuarantined { .. } => Status::not_found(error.to_string()),
            QuarantineError::Meta(ref inner) => meta_error(&error, inner),
        }
    }
}

/// The Quarantine service.
#[derive(Clone, Debug)]
pub struct QuarantineService {
    store: QuarantineStore,
    auth: Auth,
}

impl QuarantineService {
    /// Serves `store`, checking callers' instances against `auth`.
    pub fn new(store: QuarantineStore, auth: Auth) -> Self {
        QuarantineService { store, auth }
    }
}

fn key(instance: String, project: String, test: Option<TestRef>) -> QuarantineKey {
    let test = test.unwrap_or_default();
    QuarantineKey {
        instance,
        project,
        test: TestId::new(test.group, test.name),
    }
}

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, QuarantineError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| Status::internal(format!("quarantine call failed: {e}")))?
        .map_err(Status::from)
}

#[tonic::async_trait]
impl quarantine_server::Quarantine for QuarantineService {
    async fn add(
        &self,
        request: Request<AddQuarantineRequest>,
    ) -> Result<Response<AddQuarantineResponse>, Status> {
        let caller = principal(&request);
        let req = request.into_inner();
        self.auth
            .check_instance(&caller, "Quarantine.Add", &req.instance_name)?;
        let key = key(req.instance_name, req.project, req.test);
        let store = self.store.clone();
        let entry = blocking(move || store.add(&caller, &key, &req.reason)).await?;
        Ok(Response::new(AddQuarantineResponse { entry: Some(entry) }))
    }

    async fn remove(
        &self,
        request: Request<RemoveQuarantineRequest>,
    ) -> Result<Response<RemoveQuarantineResponse>, Status> {
        let caller = principal(&request);
        let req = request.into_inner();
        self.auth
            .check_instance(&caller, "Quarantine.Remove", &req.instance_name)?;
        let key = key(req.instance_name, req.project, req.test);
        let store = self.store.clone();
        let entry = blocking(move || store.remove(&caller, &key)).await?;
        Ok(Response::new(RemoveQuarantineResponse {
            entry: Some(entry),
        }))
    }

    async fn list(
        &self,
        request: Request<ListQuarantineRequest>,
    ) -> Result<Response<ListQuarantineResponse>, Status> {
        let caller = principal(&request);
        let req = request.into_inner();
        self.auth
            .check_instance(&caller, "Quarantine.List", &req.instance_name)?;
        let store = self.store.clone();
        let entries = blocking(move || Ok(store.list(&req.instance_name, &req.project)?)).await?;
        Ok(Response::new(ListQuarantineResponse { entries }))
    }
}

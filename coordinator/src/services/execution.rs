//! REAPI `Execution`: Execute and WaitExecution.
//!
//! Execute answers from the action cache when it can (unless `skip_cache_lookup`), checks the
//! action's inputs (missing blobs give FAILED_PRECONDITION with `PreconditionFailure`
//! details), queues it with the scheduler (merging identical in-flight actions), and streams
//! the operation's stages until it is done. Errors found after acceptance go in
//! `ExecuteResponse.status`, never in `Operation.error`.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prost::Message;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::meta::MetadataStore;
use tessera_cas::resource::validate_instance_name;
use tessera_cas::store::BlobStore;
use tessera_proto::longrunning::Operation;
use tessera_proto::reapi::{
    ExecuteRequest, ExecuteResponse, RequestMetadata, WaitExecutionRequest, execution_server,
    execution_stage,
};
use tessera_proto::tessera::v1::OperationRecord;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::action_cache::ActionCache;
use crate::execution::inputs::{ExecLimits, InputError, resolve};
use crate::execution::operation::OpSnapshot;
use crate::execution::scheduler::{SchedulerError, SchedulerHandle};
use crate::status::{missing_blobs, store_error};

/// Priorities accepted (REAPI: lower runs sooner); advertised in Capabilities.
pub const PRIORITY_RANGE: (i32, i32) = (-1000, 1000);

impl From<InputError> for Status {
    fn from(error: InputError) -> Status {
        match &error {
            // REAPI: missing inputs are FAILED_PRECONDITION with one MISSING violation each.
            InputError::Missing(missing) => missing_blobs(error.to_string(), missing),
            InputError::Digest { .. }
            | InputError::Undecodable { .. }
            | InputError::Invalid(_)
            | InputError::Tree(_)
            | InputError::TimeoutTooLong { .. } => Status::invalid_argument(error.to_string()),
            InputError::Store(inner) => store_error(inner),
        }
    }
}

impl From<SchedulerError> for Status {
    fn from(error: SchedulerError) -> Status {
        match &error {
            SchedulerError::Stopped => Status::unavailable(error.to_string()),
            SchedulerError::UnknownPlatformKey(..) => Status::invalid_argument(error.to_string()),
            SchedulerError::NotFound(_) => Status::not_found(error.to_string()),
            SchedulerError::Meta(_) => Status::internal(error.to_string()),
        }
    }
}

/// Who is asking, for fair share: the build (correlated invocation) or the tool invocation
/// from REAPI request metadata.
pub(crate) fn requester<T>(request: &Request<T>) -> String {
    let metadata = request
        .metadata()
        .get_bin(tessera_proto::REQUEST_METADATA_HEADER)
        .and_then(|v| v.to_bytes().ok())
        .and_then(|b| RequestMetadata::decode(b).ok());
    match metadata {
        Some(m) if !m.correlated_invocations_id.is_empty() => m.correlated_invocations_id,
        Some(m) if !m.tool_invocation_id.is_empty() => m.tool_invocation_id,
        _ => request
            .remote_addr()
            .map_or_else(|| "anonymous".to_owned(), |a| a.ip().to_string()),
    }
}

type OperationStream = Pin<Box<dyn Stream<Item = Result<Operation, Status>> + Send>>;

/// Streams the operation's snapshots until it is done.
pub(crate) fn watch_stream(rx: watch::Receiver<OpSnapshot>) -> OperationStream {
    Box::pin(futures::stream::unfold(
        (rx, true, false),
        |(mut rx, first, finished)| async move {
            if finished {
                return None;
            }
            if !first && rx.changed().await.is_err() {
                let status =
                    Status::unavailable("the coordinator stopped; re-attach with WaitExecution");
                return Some((Err(status), (rx, false, true)));
            }
            let snapshot = rx.borrow_and_update().clone();
            let done = snapshot.response.is_some();
            Some((Ok(snapshot.to_operation()), (rx, false, done)))
        },
    ))
}

/// What [`ExecutionService::submit`] did with an action.
pub(crate) enum Submitted {
    /// Answered from the action cache: done.
    Cached(Box<OpSnapshot>),
    /// Queued (or merged into an identical running action): watch it.
    Queued(watch::Receiver<OpSnapshot>),
}

/// The Execution service.
#[derive(Clone)]
pub struct ExecutionService {
    store: Arc<dyn BlobStore>,
    cache: ActionCache,
    meta: Arc<dyn MetadataStore>,
    scheduler: SchedulerHandle,
    limits: ExecLimits,
}

impl ExecutionService {
    /// Executes against `store` and `cache` through `scheduler`.
    pub fn new(
        store: Arc<dyn BlobStore>,
        cache: ActionCache,
        meta: Arc<dyn MetadataStore>,
        scheduler: SchedulerHandle,
        limits: ExecLimits,
    ) -> Self {
        ExecutionService {
            store,
            cache,
            meta,
            scheduler,
            limits,
        }
    }

    async fn execute(
        &self,
        requester: String,
        req: ExecuteRequest,
    ) -> Result<OperationStream, Status> {
        Ok(match self.submit(requester, req).await? {
            Submitted::Cached(snapshot) => {
                Box::pin(futures::stream::iter([Ok(snapshot.to_operation())]))
            }
            Submitted::Queued(rx) => watch_stream(rx),
        })
    }

    /// Execute without the stream: answers from the action cache, or queues the action (for
    /// the job driver, which runs its steps as actions and watches them itself).
    pub(crate) async fn submit(
        &self,
        requester: String,
        req: ExecuteRequest,
    ) -> Result<Submitted, Status> {
        validate_instance_name(&req.instance_name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let function = DigestFunction::from_request(req.digest_function)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let digest = Digest::from_proto_opt(function, req.action_digest.as_ref())
            .map_err(|e| Status::invalid_argument(format!("action_digest: {e}")))?;
        let priority = req.execution_policy.as_ref().map_or(0, |p| p.priority);
        if priority < PRIORITY_RANGE.0 || priority > PRIORITY_RANGE.1 {
            return Err(Status::invalid_argument(format!(
                "priority {priority} is outside the supported range {}..={}",
                PRIORITY_RANGE.0, PRIORITY_RANGE.1
            )));
        }

        if !req.skip_cache_lookup {
            let cache = self.cache.clone();
            let instance = req.instance_name.clone();
            let hit = tokio::task::spawn_blocking(move || cache.get(&instance, &digest))
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
            if let Some(result) = hit {
                let snapshot = OpSnapshot {
                    name: format!("operations/cached-{}", uuid_v4()),
                    stage: execution_stage::Value::Completed,
                    action_digest: digest.to_proto(),
                    digest_function: function.to_proto(),
                    response: Some(ExecuteResponse {
                        result: Some(result),
                        cached_result: true,
                        status: Some(tessera_proto::rpc::Status::default()),
                        ..Default::default()
                    }),
                    partial: Vec::new(),
                };
                return Ok(Submitted::Cached(Box::new(snapshot)));
            }
        }

        let store = Arc::clone(&self.store);
        let limits = self.limits.clone();
        let resolved =
            tokio::task::spawn_blocking(move || resolve(store.as_ref(), function, digest, &limits))
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
        self.scheduler
            .check_platform(resolved.platform.clone())
            .await?;
        let do_not_cache = resolved.action.do_not_cache;
        let record = OperationRecord {
            name: format!("operations/{}", uuid_v4()),
            instance_name: req.instance_name.clone(),
            action_digest: Some(digest.to_proto()),
            digest_function: function.to_proto(),
            priority,
            requester,
            attempts: 0,
            done: false,
            response: None,
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0)),
            completed_unix_ms: 0,
            platform: resolved
                .platform
                .pairs()
                .iter()
                .map(|(name, value)| tessera_proto::reapi::platform::Property {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            timeout_ms: i64::try_from(resolved.timeout.as_millis()).unwrap_or(i64::MAX),
            leased_to: String::new(),
            action: Some(resolved.action),
            command: Some(resolved.command),
        };
        let (rx, created) = self
            .scheduler
            .submit(record, resolved.platform, !do_not_cache)
            .await?;
        if created {
            // The operation name is a promise: make it survive a crash before handing it out.
            self.meta
                .flush_async()
                .await
                .map_err(|e| Status::internal(format!("failed to persist the operation: {e}")))?;
        }
        Ok(Submitted::Queued(rx))
    }

    async fn wait(&self, req: WaitExecutionRequest) -> Result<OperationStream, Status> {
        let rx = self.scheduler.watch(&req.name).await?.ok_or_else(|| {
            Status::not_found(format!(
                "operation \"{}\" not found; call Execute again",
                req.name
            ))
        })?;
        Ok(watch_stream(rx))
    }
}

fn uuid_v4() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[tonic::async_trait]
impl execution_server::Execution for ExecutionService {
    type ExecuteStream = OperationStream;

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let requester = requester(&request);
        Ok(Response::new(
            self.execute(requester, request.into_inner()).await?,
        ))
    }

    type WaitExecutionStream = OperationStream;

    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        Ok(Response::new(self.wait(request.into_inner()).await?))
    }
}

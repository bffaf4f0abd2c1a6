//! REAPI `Execution`: Execute and WaitExecution, as thin adapters over the execution layer
//! ([`Executor`]).
//!
//! Execute answers from the action cache when it can, or queues the action, and then streams
//! the operation's stages until it is done. Missing inputs give FAILED_PRECONDITION with
//! `PreconditionFailure` details. Errors found after acceptance go in
//! `ExecuteResponse.status`, never in `Operation.error`. This file owns only what is gRPC:
//! the status code of each [`ExecuteError`], who is asking (request metadata), and the
//! operation stream.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use prost::Message;
use tessera_proto::longrunning::Operation;
use tessera_proto::reapi::{
    ExecuteRequest, RequestMetadata, WaitExecutionRequest, execution_server,
};
use tonic::{Request, Response, Status};

use crate::auth::{Auth, Caller};
use crate::builds::{ActionKind, ActionRecord, BuildLog};
use crate::execution::execute::{ExecuteError, Executor, OperationWatch, Submitted};
use crate::execution::operation::OpSnapshot;
use crate::execution::scheduler::SchedulerError;
use crate::status::{meta_error, missing_blobs, store_error};

pub use crate::execution::execute::PRIORITY_RANGE;

impl From<ExecuteError> for Status {
    fn from(error: ExecuteError) -> Status {
        match error {
            ExecuteError::InstanceName(_)
            | ExecuteError::DigestFunction(_)
            | ExecuteError::ActionDigest(_)
            | ExecuteError::Priority(_)
            | ExecuteError::InvalidAction(_)
            | ExecuteError::UnknownPlatformKey { .. } => {
                Status::invalid_argument(error.to_string())
            }
            // REAPI: missing inputs are FAILED_PRECONDITION with one MISSING violation each.
            ExecuteError::MissingInputs(ref missing) => missing_blobs(error.to_string(), missing),
            ExecuteError::NotFound(_) => Status::not_found(error.to_string()),
            // Retryable: accepted operations survive the restart and WaitExecution finds them.
            ExecuteError::Stopped => {
                Status::unavailable(format!("{error}; re-attach with WaitExecution"))
            }
            ExecuteError::ActionCache(inner) => inner.into(),
            ExecuteError::Store(ref inner) => store_error(inner),
            ExecuteError::Meta(ref inner) | ExecuteError::Persist(ref inner) => {
                meta_error(&error, inner)
            }
            ExecuteError::Task(_) => Status::internal(error.to_string()),
        }
    }
}

/// What the scheduler's own errors mean to a gRPC client. Execute and WaitExecution never
/// see these (they get an [`ExecuteError`]); the Operations service's calls to the scheduler
/// do.
impl From<SchedulerError> for Status {
    fn from(error: SchedulerError) -> Status {
        match error {
            SchedulerError::NotFound(_) => Status::not_found(error.to_string()),
            other => ExecuteError::from(other).into(),
        }
    }
}

/// The REAPI request metadata the client sent, if any (and if it decodes).
pub(crate) fn request_metadata<T>(request: &Request<T>) -> Option<RequestMetadata> {
    request
        .metadata()
        .get_bin(tessera_proto::REQUEST_METADATA_HEADER)
        .and_then(|v| v.to_bytes().ok())
        .and_then(|b| RequestMetadata::decode(b).ok())
}

/// Who is asking, for fair share: the build (correlated invocation) or the tool invocation
/// from REAPI request metadata.
pub(crate) fn requester<T>(request: &Request<T>) -> String {
    match request_metadata(request) {
        Some(m) if !m.correlated_invocations_id.is_empty() => m.correlated_invocations_id,
        Some(m) if !m.tool_invocation_id.is_empty() => m.tool_invocation_id,
        _ => request
            .extensions()
            .get::<tessera_net::server::Peer>()
            .and_then(|peer| peer.addr)
            .map_or_else(|| "anonymous".to_owned(), |a| a.ip().to_string()),
    }
}

type OperationStream = Pin<Box<dyn Stream<Item = Result<Operation, Status>> + Send>>;

/// Where a finished operation is recorded for the `/builds` pages: the build log and the
/// caller's request metadata (which names the invocation and the action).
#[derive(Clone)]
struct BuildRecorder {
    log: BuildLog,
    metadata: RequestMetadata,
}

impl BuildRecorder {
    fn of<T>(log: Option<&BuildLog>, request: &Request<T>) -> Option<Self> {
        Some(BuildRecorder {
            log: log?.clone(),
            metadata: request_metadata(request)?,
        })
    }

    /// Records `snapshot` if it is done.
    fn finished(&self, snapshot: &OpSnapshot) {
        let Some(response) = &snapshot.response else {
            return;
        };
        let result = response.result.as_ref();
        let exit_code = result.map_or(0, |r| r.exit_code);
        // An execution that failed without a command exit code (timed out, lost inputs)
        // still failed.
        let failed = response.status.as_ref().is_some_and(|s| s.code != 0);
        let exit_code = if failed && exit_code == 0 {
            -1
        } else {
            exit_code
        };
        let digest = &snapshot.action_digest;
        self.log.record(
            &self.metadata,
            ActionRecord {
                action_digest: format!("{}/{}", digest.hash, digest.size_bytes),
                kind: ActionKind::executed(
                    response.cached_result,
                    exit_code,
                    result.and_then(|r| r.execution_metadata.as_ref()),
                ),
                at_unix_ms: crate::builds::now_unix_ms(),
            },
        );
    }
}

/// Streams the operation's snapshots until it is done, recording the last with `recorder`.
fn operation_stream(watch: OperationWatch, recorder: Option<BuildRecorder>) -> OperationStream {
    Box::pin(futures::stream::unfold(
        (watch, true, false),
        move |(mut watch, first, finished)| {
            let recorder = recorder.clone();
            async move {
                if finished {
                    return None;
                }
                if !first && let Err(error) = watch.changed().await {
                    return Some((Err(error.into()), (watch, false, true)));
                }
                let snapshot = watch.latest().clone();
                let done = snapshot.response.is_some();
                if done && let Some(recorder) = &recorder {
                    recorder.finished(&snapshot);
                }
                Some((Ok(snapshot.to_operation()), (watch, false, done)))
            }
        },
    ))
}

/// The Execution service.
#[derive(Clone, Debug)]
pub struct ExecutionService {
    executor: Executor,
    auth: Option<Auth>,
    builds: Option<BuildLog>,
}

impl ExecutionService {
    /// Serves `executor`.
    pub fn new(executor: Executor) -> Self {
        ExecutionService {
            executor,
            auth: None,
            builds: None,
        }
    }

    /// Records finished executions of REAPI clients that send request metadata in `builds`.
    pub fn with_builds(mut self, builds: BuildLog) -> Self {
        self.builds = Some(builds);
        self
    }

    /// Checks each caller's instance scope and Execute limits against `auth`.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    async fn execute(
        &self,
        requester: String,
        req: ExecuteRequest,
        recorder: Option<BuildRecorder>,
    ) -> Result<OperationStream, ExecuteError> {
        Ok(match self.executor.submit(requester, req).await? {
            Submitted::Cached(snapshot) => {
                if let Some(recorder) = &recorder {
                    recorder.finished(&snapshot);
                }
                Box::pin(futures::stream::iter([Ok(snapshot.to_operation())]))
            }
            Submitted::Queued(watch) => operation_stream(watch, recorder),
        })
    }

    async fn wait(
        &self,
        req: WaitExecutionRequest,
        recorder: Option<BuildRecorder>,
    ) -> Result<OperationStream, ExecuteError> {
        Ok(operation_stream(
            self.executor.wait(&req.name).await?,
            recorder,
        ))
    }
}

#[tonic::async_trait]
impl execution_server::Execution for ExecutionService {
    type ExecuteStream = OperationStream;

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let requester = requester(&request);
        let recorder = BuildRecorder::of(self.builds.as_ref(), &request);
        let caller = Caller::of(self.auth.as_ref(), &request);
        caller.instance("Execute", &request.get_ref().instance_name)?;
        // Held by the stream: the call counts as running until the client lets go of it.
        let inflight = match caller.auth() {
            Some(auth) => Some(auth.limits.execute(caller.principal())?),
            None => None,
        };
        let stream = self
            .execute(requester, request.into_inner(), recorder)
            .await?;
        Ok(Response::new(Box::pin(stream.map(move |item| {
            let _held = &inflight;
            item
        }))))
    }

    type WaitExecutionStream = OperationStream;

    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        let recorder = BuildRecorder::of(self.builds.as_ref(), &request);
        Ok(Response::new(
            self.wait(request.into_inner(), recorder).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use tessera_cas::digest::DigestFunction;
    use tonic::Code;

    use super::*;

    #[test]
    fn each_error_keeps_its_status_code() {
        let missing = DigestFunction::Sha256.digest_of(b"absent");
        let cases = [
            (ExecuteError::Priority(5000), Code::InvalidArgument),
            (
                ExecuteError::MissingInputs(vec![missing]),
                Code::FailedPrecondition,
            ),
            (
                ExecuteError::UnknownPlatformKey {
                    key: "colour".into(),
                    known: "os".into(),
                },
                Code::InvalidArgument,
            ),
            (
                ExecuteError::NotFound("operations/x".into()),
                Code::NotFound,
            ),
            (ExecuteError::Stopped, Code::Unavailable),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().starts_with(&message), "{status:?}");
        }
        assert_eq!(
            Status::from(ExecuteError::Stopped).message(),
            "the coordinator stopped; re-attach with WaitExecution"
        );
        assert_eq!(
            Status::from(ExecuteError::Priority(5000)).message(),
            "priority 5000 is outside the supported range -1000..=1000"
        );
    }

    /// A finished execution is recorded once, with its exit code; one that failed without an
    /// exit code counts as failed.
    #[tokio::test]
    async fn finished_executions_are_recorded_with_their_outcome() {
        use tessera_cas::meta::{MemoryMetaStore, MetadataStore};
        use tessera_proto::reapi::{
            ActionResult, Digest as ProtoDigest, ExecuteResponse, execution_stage,
        };
        use tokio_util::sync::CancellationToken;

        let meta: std::sync::Arc<dyn MetadataStore> = std::sync::Arc::new(MemoryMetaStore::new());
        let token = CancellationToken::new();
        let (log, writer) =
            BuildLog::start(std::sync::Arc::clone(&meta), 10, token.clone()).unwrap();
        let writer = tokio::spawn(writer);
        let snapshot = |action: &str, response: Option<ExecuteResponse>| OpSnapshot {
            name: "operations/x".into(),
            stage: execution_stage::Value::Completed,
            action_digest: ProtoDigest {
                hash: action.into(),
                size_bytes: 1,
            },
            digest_function: 0,
            response,
            partial: Vec::new(),
        };
        let recorder = |action_id: &str| BuildRecorder {
            log: log.clone(),
            metadata: RequestMetadata {
                correlated_invocations_id: "build".into(),
                action_id: action_id.into(),
                ..Default::default()
            },
        };
        recorder("running").finished(&snapshot("running", None));
        recorder("passed").finished(&snapshot(
            "passed",
            Some(ExecuteResponse {
                result: Some(ActionResult::default()),
                ..Default::default()
            }),
        ));
        recorder("timed-out").finished(&snapshot(
            "timed-out",
            Some(ExecuteResponse {
                status: Some(tessera_proto::rpc::Status {
                    code: tonic::Code::DeadlineExceeded as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        ));
        token.cancel();
        writer.await.unwrap();

        let detail = log.invocation("build").unwrap().unwrap();
        let outcomes: Vec<(&str, &ActionKind)> = detail
            .actions
            .iter()
            .map(|a| (a.action_id.as_str(), &a.kind))
            .collect();
        let ran = |exit_code| ActionKind::Executed {
            cached: false,
            exit_code,
            duration_ms: 0,
            agent: String::new(),
        };
        assert_eq!(
            outcomes,
            [("passed", &ran(0)), ("timed-out", &ran(-1))],
            "an operation not done is not recorded"
        );
        assert_eq!(detail.summary.failed, 1);
    }
}

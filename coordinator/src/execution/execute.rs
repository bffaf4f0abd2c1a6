//! Executing one action, for every caller: the REAPI `Execution` service and the job driver
//! (whose steps are actions) both come here, and get a typed [`ExecuteError`] back.
//!
//! [`Executor::submit`] checks the request (instance name, digest function, action digest,
//! priority), answers from the action cache when it can (unless `skip_cache_lookup`), checks
//! the action's inputs ([`inputs::resolve`]) and its platform, queues it with the scheduler
//! (which merges identical in-flight actions) and makes the new operation durable before its
//! name is handed out. [`Executor::wait`] re-attaches to an operation by name.
//!
//! Not here: gRPC. Status codes, request metadata and operation streams belong to
//! `services::execution`; this module never builds a `tonic::Status`.
//!
//! [`inputs::resolve`]: super::inputs::resolve

use std::sync::Arc;

use tessera_cas::digest::{Digest, DigestError, DigestFunction};
use tessera_cas::meta::{MetaError, MetadataStore};
use tessera_cas::resource::{ResourceError, validate_instance_name};
use tessera_cas::store::{BlobStore, StoreError};
use tessera_proto::reapi::{ExecuteRequest, ExecuteResponse, execution_stage, platform::Property};
use tessera_proto::tessera::v1::{OperationRecord, SecretEnv};
use tessera_runners::step::TRUST_DOMAIN_ENV;
use thiserror::Error;
use tokio::sync::watch;

use super::inputs::{ExecLimits, InputError, resolve};
use super::operation::OpSnapshot;
use super::scheduler::{SchedulerError, SchedulerHandle};
use crate::action_cache::{AcError, ActionCache};

/// Priorities accepted (REAPI: lower runs sooner); advertised in Capabilities.
pub const PRIORITY_RANGE: (i32, i32) = (-1000, 1000);

/// Why an action was not accepted, or an accepted one can no longer be followed.
#[derive(Debug, Error)]
pub enum ExecuteError {
    /// The request's instance name is malformed.
    #[error(transparent)]
    InstanceName(ResourceError),
    /// The request names an unknown digest function.
    #[error(transparent)]
    DigestFunction(DigestError),
    /// The request's action digest is malformed or missing.
    #[error("action_digest: {0}")]
    ActionDigest(#[source] DigestError),
    /// The request's priority is outside [`PRIORITY_RANGE`].
    #[error(
        "priority {0} is outside the supported range {min}..={max}",
        min = PRIORITY_RANGE.0,
        max = PRIORITY_RANGE.1
    )]
    Priority(i32),
    /// Blobs the action needs are not in the CAS; the client uploads them and tries again.
    #[error("{} blob(s) needed by the action are missing from the CAS, first {}", .0.len(), .0[0])]
    MissingInputs(Vec<Digest>),
    /// The action, its command or its input tree breaks a rule (never a missing blob or a
    /// store failure: those have their own variants).
    #[error(transparent)]
    InvalidAction(InputError),
    /// The platform names a key that no agent has declared and the configuration does not
    /// list.
    #[error(
        "unknown platform property \"{key}\": no agent has declared it and it is not configured (known: {known})"
    )]
    UnknownPlatformKey {
        /// The key.
        key: String,
        /// The keys that are known, as the scheduler lists them.
        known: String,
    },
    /// No operation of that name (never accepted, or finished and forgotten).
    #[error("operation \"{0}\" not found; call Execute again")]
    NotFound(String),
    /// The scheduler is gone: the coordinator is shutting down. This is the one spelling of
    /// that fact: a scheduler call that finds the actor gone ([`SchedulerError::Stopped`])
    /// and an [`OperationWatch`] that ends before its operation did both become this, and
    /// each caller adds what its own client should do about it.
    #[error("the coordinator stopped")]
    Stopped,
    /// The action cache failed.
    #[error(transparent)]
    ActionCache(AcError),
    /// The blob store failed while the inputs were checked.
    #[error(transparent)]
    Store(StoreError),
    /// The scheduler's metadata store failed.
    #[error(transparent)]
    Meta(MetaError),
    /// The new operation could not be made durable, so its name was not handed out.
    #[error("failed to persist the operation: {0}")]
    Persist(#[source] MetaError),
    /// A blocking task (cache lookup, input check) panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

impl From<InputError> for ExecuteError {
    fn from(error: InputError) -> Self {
        match error {
            InputError::Missing(missing) => ExecuteError::MissingInputs(missing),
            InputError::Store(inner) => ExecuteError::Store(inner),
            other => ExecuteError::InvalidAction(other),
        }
    }
}

impl From<SchedulerError> for ExecuteError {
    fn from(error: SchedulerError) -> Self {
        match error {
            SchedulerError::Stopped => ExecuteError::Stopped,
            SchedulerError::UnknownPlatformKey(key, known) => {
                ExecuteError::UnknownPlatformKey { key, known }
            }
            SchedulerError::NotFound(name) => ExecuteError::NotFound(name),
            SchedulerError::Meta(inner) => ExecuteError::Meta(inner),
        }
    }
}

/// What [`Executor::submit`] did with an action.
#[derive(Debug)]
pub enum Submitted {
    /// Answered from the action cache: done.
    Cached(Box<OpSnapshot>),
    /// Queued (or merged into an identical running action): watch it.
    Queued(OperationWatch),
}

/// An accepted operation's snapshots, followed until it is done.
#[derive(Debug)]
pub struct OperationWatch(watch::Receiver<OpSnapshot>);

impl OperationWatch {
    /// The operation's name.
    pub fn name(&self) -> String {
        self.0.borrow().name.clone()
    }

    /// The newest snapshot, marked as seen. Do not hold it across an `.await`.
    pub fn latest(&mut self) -> watch::Ref<'_, OpSnapshot> {
        self.0.borrow_and_update()
    }

    /// Waits until a snapshot newer than the last one seen arrives; [`ExecuteError::Stopped`]
    /// if the scheduler stopped first. Cancel-safe.
    pub async fn changed(&mut self) -> Result<(), ExecuteError> {
        self.0.changed().await.map_err(|_| ExecuteError::Stopped)
    }
}

/// Accepts actions for execution: the execution layer's entry point.
#[derive(Clone)]
pub struct Executor {
    store: Arc<dyn BlobStore>,
    cache: ActionCache,
    meta: Arc<dyn MetadataStore>,
    scheduler: SchedulerHandle,
    limits: ExecLimits,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").finish_non_exhaustive()
    }
}

impl Executor {
    /// Executes against `store` and `cache` through `scheduler`; new operations are flushed to
    /// `meta` before they are handed out.
    pub fn new(
        store: Arc<dyn BlobStore>,
        cache: ActionCache,
        meta: Arc<dyn MetadataStore>,
        scheduler: SchedulerHandle,
        limits: ExecLimits,
    ) -> Self {
        Executor {
            store,
            cache,
            meta,
            scheduler,
            limits,
        }
    }

    /// Answers `req` from the action cache, or queues its action on behalf of `requester`
    /// (the fair-share key). For REAPI clients: a Command that sets
    /// [`TRUST_DOMAIN_ENV`] is refused, since only the coordinator names a job's trust domain.
    pub async fn submit(
        &self,
        requester: String,
        req: ExecuteRequest,
    ) -> Result<Submitted, ExecuteError> {
        self.submit_inner(requester, req, Vec::new(), None).await
    }

    /// Like [`Executor::submit`], for a job's step: its Command may name the job's trust
    /// domain, and `secrets` (the job's secret values, whose placeholders the Command holds)
    /// go to the agent with the lease. They are kept in memory beside the queued operation,
    /// never in its record. `job` is the job's id, which the scheduler shows beside the
    /// operation's lease (in memory only too).
    pub async fn submit_step(
        &self,
        job: &str,
        requester: String,
        req: ExecuteRequest,
        secrets: Vec<SecretEnv>,
    ) -> Result<Submitted, ExecuteError> {
        self.submit_inner(requester, req, secrets, Some(job.to_owned()))
            .await
    }

    /// Submits for a REAPI client (`job` is `None`) or a job's step.
    async fn submit_inner(
        &self,
        requester: String,
        req: ExecuteRequest,
        secrets: Vec<SecretEnv>,
        job: Option<String>,
    ) -> Result<Submitted, ExecuteError> {
        validate_instance_name(&req.instance_name).map_err(ExecuteError::InstanceName)?;
        let function = DigestFunction::from_request(req.digest_function)
            .map_err(ExecuteError::DigestFunction)?;
        let digest = Digest::from_proto_opt(function, req.action_digest.as_ref())
            .map_err(ExecuteError::ActionDigest)?;
        let priority = req.execution_policy.as_ref().map_or(0, |p| p.priority);
        if priority < PRIORITY_RANGE.0 || priority > PRIORITY_RANGE.1 {
            return Err(ExecuteError::Priority(priority));
        }

        if !req.skip_cache_lookup
            && let Some(snapshot) = self.cached(&req.instance_name, function, digest).await?
        {
            return Ok(Submitted::Cached(Box::new(snapshot)));
        }

        let store = Arc::clone(&self.store);
        let limits = self.limits.clone();
        let resolved =
            tokio::task::spawn_blocking(move || resolve(store.as_ref(), function, digest, &limits))
                .await??;
        if job.is_none()
            && resolved
                .command
                .environment_variables
                .iter()
                .any(|v| v.name == TRUST_DOMAIN_ENV)
        {
            return Err(ExecuteError::InvalidAction(InputError::Invalid(format!(
                "command: {TRUST_DOMAIN_ENV} is set by the coordinator for job steps only; remove it from the environment"
            ))));
        }
        self.scheduler
            .check_platform(resolved.platform.clone())
            .await?;
        let do_not_cache = resolved.action.do_not_cache;
        let record = OperationRecord {
            name: format!("operations/{}", uuid_v4()),
            instance_name: req.instance_name,
            action_digest: Some(digest.to_proto()),
            digest_function: function.to_proto(),
            priority,
            requester,
            attempts: 0,
            done: false,
            response: None,
            created_unix_ms: tessera_proto::time::unix_ms(),
            completed_unix_ms: 0,
            platform: resolved
                .platform
                .pairs()
                .iter()
                .map(|(name, value)| Property {
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
            .submit(
                record,
                resolved.platform,
                !do_not_cache,
                (
                    secrets,
                    self.limits
                        .carried
                        .take(resolved.directories, resolved.files),
                ),
                job,
            )
            .await?;
        if created {
            // The operation name is a promise: make it survive a crash before handing it out.
            self.meta
                .flush_async()
                .await
                .map_err(ExecuteError::Persist)?;
        }
        Ok(Submitted::Queued(OperationWatch(rx)))
    }

    /// Re-attaches to the operation called `name`.
    pub async fn wait(&self, name: &str) -> Result<OperationWatch, ExecuteError> {
        self.scheduler
            .watch(name)
            .await?
            .map(OperationWatch)
            .ok_or_else(|| ExecuteError::NotFound(name.to_owned()))
    }

    /// The action cache's answer for `digest`, as a finished operation.
    async fn cached(
        &self,
        instance: &str,
        function: DigestFunction,
        digest: Digest,
    ) -> Result<Option<OpSnapshot>, ExecuteError> {
        let hit = self
            .cache
            .lookup(instance, digest, |result| result)
            .await
            .map_err(ExecuteError::ActionCache)?;
        crate::metrics::metrics().cache_lookup(hit.is_some());
        Ok(hit.map(|result| OpSnapshot {
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
        }))
    }
}

fn uuid_v4() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_errors_keep_their_meaning() {
        assert!(matches!(
            ExecuteError::from(SchedulerError::Stopped),
            ExecuteError::Stopped
        ));
        let unknown = ExecuteError::from(SchedulerError::UnknownPlatformKey(
            "colour".into(),
            "os, arch".into(),
        ));
        assert_eq!(
            unknown.to_string(),
            SchedulerError::UnknownPlatformKey("colour".into(), "os, arch".into()).to_string()
        );
    }

    #[test]
    fn input_errors_are_split_by_who_can_fix_them() {
        let missing = DigestFunction::Sha256.digest_of(b"absent");
        let error = ExecuteError::from(InputError::Missing(vec![missing]));
        assert_eq!(
            error.to_string(),
            InputError::Missing(vec![missing]).to_string()
        );
        assert!(matches!(error, ExecuteError::MissingInputs(ref d) if d == &[missing]));
        assert!(matches!(
            ExecuteError::from(InputError::Invalid("command".into())),
            ExecuteError::InvalidAction(_)
        ));
    }
}

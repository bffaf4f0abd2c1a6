//! REAPI `ActionCache`: GetActionResult and UpdateActionResult over [`ActionCache`].

use std::sync::Arc;

use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::store::BlobStore;
use tessera_proto::reapi::{
    ActionResult, GetActionResultRequest, RequestMetadata, UpdateActionResultRequest,
    action_cache_server,
};
use tonic::{Request, Response, Status};

use crate::action_cache::{AcError, ActionCache};
use crate::auth::{AuditRecord, Auth, Caller};
use crate::builds::{ActionKind, ActionRecord, BuildLog};
use crate::services::execution::request_metadata;
use crate::status::{meta_error, missing_blobs, store_error};

/// Most bytes inlined into one GetActionResult answer (stdout, stderr and files together).
const MAX_INLINE_BYTES: u64 = 2 * 1024 * 1024;

impl From<AcError> for Status {
    fn from(error: AcError) -> Status {
        match &error {
            AcError::Instance(_)
            | AcError::Digest(_)
            | AcError::MissingResult
            | AcError::InvalidResult(_) => Status::invalid_argument(error.to_string()),
            // REAPI: the client must upload outputs before the result; say which are missing.
            AcError::MissingOutputs(missing) => missing_blobs(error.to_string(), missing),
            AcError::Store(inner) => store_error(inner),
            AcError::Meta(inner) => meta_error(&error, inner),
            AcError::Undecodable(_) | AcError::Task(_) => Status::internal(error.to_string()),
        }
    }
}

/// The ActionCache service.
#[derive(Clone)]
pub struct ActionCacheService {
    cache: ActionCache,
    store: Arc<dyn BlobStore>,
    auth: Option<Auth>,
    builds: Option<BuildLog>,
}

impl ActionCacheService {
    /// Serves `cache`, inlining outputs from `store` when asked.
    pub fn new(cache: ActionCache, store: Arc<dyn BlobStore>) -> Self {
        ActionCacheService {
            cache,
            store,
            auth: None,
            builds: None,
        }
    }

    /// Records the lookups of REAPI clients that send request metadata in `builds`.
    pub fn with_builds(mut self, builds: BuildLog) -> Self {
        self.builds = Some(builds);
        self
    }

    /// Checks each caller's instance scope against `auth`, and audits writes.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    async fn get(
        &self,
        req: GetActionResultRequest,
        metadata: Option<RequestMetadata>,
    ) -> Result<ActionResult, Status> {
        let function = DigestFunction::from_request(req.digest_function).map_err(AcError::from)?;
        let action =
            Digest::from_proto_opt(function, req.action_digest.as_ref()).map_err(AcError::from)?;
        let instance = req.instance_name.clone();
        let store = Arc::clone(&self.store);
        let hit = self
            .cache
            .lookup(&instance, action, move |mut result| {
                inline_outputs(store.as_ref(), function, &req, &mut result);
                result
            })
            .await?;
        record_lookup(
            self.builds.as_ref(),
            metadata.as_ref(),
            &action,
            hit.is_some(),
        );
        hit.ok_or_else(|| not_cached(&action, &instance))
    }

    async fn update(&self, req: UpdateActionResultRequest) -> Result<ActionResult, Status> {
        let function = DigestFunction::from_request(req.digest_function).map_err(AcError::from)?;
        let action =
            Digest::from_proto_opt(function, req.action_digest.as_ref()).map_err(AcError::from)?;
        let result = req.action_result.ok_or(AcError::MissingResult)?;
        Ok(self
            .cache
            .update(&req.instance_name, &action, result)
            .await?)
    }
}

/// Counts a lookup and, for REAPI clients that send request metadata, records it in `builds`.
fn record_lookup(
    builds: Option<&BuildLog>,
    metadata: Option<&RequestMetadata>,
    action: &Digest,
    hit: bool,
) {
    crate::metrics::metrics().cache_lookup(hit);
    if let (Some(builds), Some(metadata)) = (builds, metadata) {
        let kind = if hit {
            ActionKind::CacheHit
        } else {
            ActionKind::CacheMiss
        };
        builds.record(
            metadata,
            ActionRecord {
                action_digest: format!("{}/{}", action.hash_hex(), action.size_bytes),
                kind,
                at_unix_ms: crate::builds::now_unix_ms(),
            },
        );
    }
}

fn not_cached(action: &Digest, instance: &str) -> Status {
    Status::not_found(format!(
        "no action result for {action} in instance \"{instance}\""
    ))
}

/// Fills `stdout_raw`, `stderr_raw` and output file `contents` as far as the request asks and
/// the inline budget allows. Inlining is a hint: anything that does not fit, or cannot be read,
/// is left for the client to fetch.
fn inline_outputs(
    store: &dyn BlobStore,
    function: DigestFunction,
    req: &GetActionResultRequest,
    result: &mut ActionResult,
) {
    let mut budget = MAX_INLINE_BYTES;
    let mut fetch = |digest: Option<&tessera_proto::reapi::Digest>| {
        let digest = Digest::from_proto_opt(function, digest).ok()?;
        if digest.size_bytes > budget {
            return None;
        }
        let data = store.read(&digest).ok()??;
        budget -= digest.size_bytes;
        Some(data)
    };
    if req.inline_stdout
        && let Some(data) = fetch(result.stdout_digest.as_ref())
    {
        result.stdout_raw = data;
    }
    if req.inline_stderr
        && let Some(data) = fetch(result.stderr_digest.as_ref())
    {
        result.stderr_raw = data;
    }
    for file in &mut result.output_files {
        if req.inline_output_files.contains(&file.path)
            && let Some(data) = fetch(file.digest.as_ref())
        {
            file.contents = data;
        }
    }
}

#[tonic::async_trait]
impl action_cache_server::ActionCache for ActionCacheService {
    async fn get_action_result(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        Caller::of(self.auth.as_ref(), &request)
            .instance("GetActionResult", &request.get_ref().instance_name)?;
        let metadata = self
            .builds
            .is_some()
            .then(|| request_metadata(&request))
            .flatten();
        Ok(Response::new(
            self.get(request.into_inner(), metadata).await?,
        ))
    }

    async fn update_action_result(
        &self,
        request: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let caller = Caller::of(self.auth.as_ref(), &request);
        let req = request.into_inner();
        caller.instance("UpdateActionResult", &req.instance_name)?;
        let instance = req.instance_name.clone();
        let action = req
            .action_digest
            .as_ref()
            .map(|d| format!("{}/{}", d.hash, d.size_bytes))
            .unwrap_or_default();
        let result = self.update(req).await?;
        caller.record(AuditRecord {
            action: "ac.update",
            instance: &instance,
            object: &action,
            allowed: true,
            ..Default::default()
        });
        Ok(Response::new(result))
    }
}

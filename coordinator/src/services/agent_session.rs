//! `tessera.v1.AgentSession`: the agent's long-lived stream. The first message must be Hello.
//! An agent that speaks another agent protocol version is refused (`CoordinatorMessage.refused`,
//! FAILED_PRECONDITION, naming both versions) before the scheduler hears of it; otherwise the
//! coordinator answers Welcome and hands the session to the scheduler, which sends leases on
//! it. Every later message is forwarded to the scheduler; when the stream ends, the scheduler
//! is told (the agent's leases then live until they expire, so an agent that reconnects in
//! time keeps them). Does not decide anything about leases (see the scheduler).
//!
//! A result may carry the lease's small outputs inline (protocol 3, up to
//! [`INLINE_OUTPUT_BYTES`]), saving the agent a FindMissingBlobs and a BatchUpdateBlobs per
//! action: they are verified and stored here, before the scheduler hears of the result, so the
//! scheduler still sees only results whose outputs are all in the CAS.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::Stream;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::store::{BlobStore, StoreError};
use tessera_proto::AGENT_PROTOCOL_VERSION;
use tessera_proto::reapi::batch_update_blobs_request;
use tessera_proto::reapi::compressor;
use tessera_proto::tessera::v1::{
    AgentMessage, CoordinatorMessage, Hello, LeaseOutcome, LeaseResult, Welcome, agent_message,
    agent_session_server, coordinator_message,
};
use tessera_proto::time::to_proto_duration;
use thiserror::Error;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::auth::{AuditRecord, Auth, Caller};
use crate::execution::platform::Platform;
use crate::execution::scheduler::SchedulerHandle;

/// Most slots one agent may declare.
const MAX_SLOTS: u32 = 4096;

/// Most output bytes one result may carry inline (`Welcome.inline_output_bytes`). Larger
/// outputs are uploaded through the CAS first, as before protocol 3. A megabyte costs a
/// few milliseconds on a slow link and spares two round trips.
pub const INLINE_OUTPUT_BYTES: u64 = 1 << 20;

/// This coordinator's release, named in refusals.
const VERSION: &str = env!("CARGO_PKG_VERSION");

static SESSIONS: AtomicU64 = AtomicU64::new(1);

/// An agent whose Hello names another agent protocol version than this coordinator's.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error(
    "agent {:?} speaks agent protocol {}{} ({}); this coordinator (tessera {coordinator}) \
     speaks protocol {protocol} only: run agents from the coordinator's release (see README \
     \"Upgrading a fleet\")",
    .agent_id,
    .agent_protocol,
    before_checks(*.agent_protocol),
    release(.agent_version),
    coordinator = VERSION,
    protocol = AGENT_PROTOCOL_VERSION
)]
pub struct ProtocolMismatch {
    /// The agent's id.
    pub agent_id: String,
    /// The protocol version its Hello names (0: absent, an agent from before version checks).
    pub agent_protocol: u32,
    /// Its release, as its Hello names it (may be empty).
    pub agent_version: String,
}

/// What an absent protocol version (0) means.
fn before_checks(protocol: u32) -> &'static str {
    if protocol == 0 {
        ", from before version checks"
    } else {
        ""
    }
}

/// An agent's release as a refusal names it.
fn release(version: &str) -> String {
    if version.is_empty() {
        "release unknown".to_owned()
    } else {
        format!("tessera {version}")
    }
}

/// Checks that `hello` speaks this coordinator's agent protocol.
pub fn check_protocol(hello: &Hello) -> Result<(), ProtocolMismatch> {
    if hello.protocol_version == AGENT_PROTOCOL_VERSION {
        return Ok(());
    }
    Err(ProtocolMismatch {
        agent_id: hello.agent_id.clone(),
        agent_protocol: hello.protocol_version,
        agent_version: hello.version.clone(),
    })
}

/// The AgentSession service.
#[derive(Clone)]
pub struct AgentSessionService {
    scheduler: SchedulerHandle,
    auth: Option<Auth>,
    notifier: crate::notify::Notifier,
    /// Where a result's inline outputs go; without it agents are offered none.
    store: Option<Arc<dyn BlobStore>>,
}

impl std::fmt::Debug for AgentSessionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSessionService")
            .field("scheduler", &self.scheduler)
            .field("inline_outputs", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl AgentSessionService {
    /// Connects agents to `scheduler`.
    pub fn new(scheduler: SchedulerHandle) -> Self {
        AgentSessionService {
            scheduler,
            auth: None,
            notifier: crate::notify::Notifier::default(),
            store: None,
        }
    }

    /// Lets results carry small outputs inline (protocol 3), stored in `store`.
    pub fn with_store(mut self, store: Arc<dyn BlobStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Publishes `agent.lost` through `notifier` when a session ends without a drain.
    pub fn with_notifier(mut self, notifier: crate::notify::Notifier) -> Self {
        self.notifier = notifier;
        self
    }

    /// Audits joins and leaves in `auth`, and ends a session when its token is revoked or
    /// expires.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }
}

/// How often a session re-checks its token's expiry (revocation is noticed at once).
const EXPIRY_CHECK: Duration = Duration::from_secs(5);

/// Resolves with the refusal once the session's token is revoked or has expired; never for
/// the anonymous principal (auth off).
async fn token_lost(caller: &Caller) -> Status {
    let (Some(auth), false) = (caller.auth(), caller.principal().is_anonymous()) else {
        return std::future::pending().await;
    };
    let mut changes = auth.tokens.changes();
    let mut tick = tokio::time::interval(EXPIRY_CHECK);
    loop {
        if let Err(status) = auth.tokens.still_valid(caller.principal()) {
            return status;
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
            }
            _ = tick.tick() => {}
        }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

/// A session that says only `refused`, then ends: the agent reads why instead of a bare
/// stream error, and (for FAILED_PRECONDITION) stops rather than retry.
fn refused(code: Code, message: String) -> SessionStream {
    let refusal = CoordinatorMessage {
        kind: Some(coordinator_message::Kind::Refused(
            tessera_proto::rpc::Status {
                code: code as i32,
                message,
                details: Vec::new(),
            },
        )),
    };
    Box::pin(tokio_stream::once(Ok(refusal)))
}

#[tonic::async_trait]
impl agent_session_server::AgentSession for AgentSessionService {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let caller = Caller::of(self.auth.as_ref(), &request);
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("agent session closed before Hello"))?;
        let Some(agent_message::Kind::Hello(hello)) = first.kind else {
            return Err(Status::invalid_argument(
                "the first message of an agent session must be Hello",
            ));
        };
        // First: an agent of another protocol may mean something else by the rest of Hello.
        if let Err(mismatch) = check_protocol(&hello) {
            tracing::warn!(agent = %hello.agent_id, %mismatch, "refusing an agent");
            return Ok(Response::new(refused(
                Code::FailedPrecondition,
                mismatch.to_string(),
            )));
        }
        if hello.agent_id.is_empty() || hello.agent_id.len() > 256 {
            return Err(Status::invalid_argument(
                "Hello.agent_id must be 1 to 256 characters",
            ));
        }
        if hello.slots == 0 || hello.slots > MAX_SLOTS {
            return Err(Status::invalid_argument(format!(
                "Hello.slots must be 1 to {MAX_SLOTS}, got {}",
                hello.slots
            )));
        }
        let session = SESSIONS.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let config = self.scheduler.config();
        let welcome = CoordinatorMessage {
            kind: Some(coordinator_message::Kind::Welcome(Welcome {
                heartbeat_interval: Some(to_proto_duration(config.heartbeat_interval())),
                lease_timeout: Some(to_proto_duration(config.lease_timeout)),
                inline_output_bytes: if self.store.is_some() {
                    INLINE_OUTPUT_BYTES
                } else {
                    0
                },
                // The scheduler has no use for them: an operation is EXECUTING from its lease.
                lease_stages: false,
            })),
        };
        tx.send(Ok(welcome))
            .await
            .map_err(|_| Status::internal("session closed"))?;
        let properties = Platform::new(hello.properties.into_iter().map(|p| (p.name, p.value)));
        let id = hello.agent_id;
        caller.record(AuditRecord {
            action: "agent.join",
            object: &id,
            allowed: true,
            detail: &format!("{} slots", hello.slots),
            ..Default::default()
        });
        let refusals = tx.clone();
        self.scheduler
            .agent_joined(id.clone(), session, properties, hello.slots, tx);
        let scheduler = self.scheduler.clone();
        let notifier = self.notifier.clone();
        let store = self.store.clone();
        // Results go to the scheduler in order, each once its inline outputs are stored;
        // heartbeats and the rest go at once, so a store that is slow to take outputs never
        // holds up the heartbeats that keep the agent's other leases alive.
        let (results, mut to_store) = tokio::sync::mpsc::unbounded_channel::<LeaseResult>();
        let forwarder = tokio::spawn({
            let scheduler = scheduler.clone();
            let id = id.clone();
            async move {
                while let Some(mut result) = to_store.recv().await {
                    take_inline_outputs(store.as_ref(), &id, &mut result).await;
                    scheduler.agent_message(
                        id.clone(),
                        session,
                        AgentMessage {
                            kind: Some(agent_message::Kind::Result(result)),
                        },
                    );
                }
            }
        });
        tokio::spawn(async move {
            // Why the session ended, when the agent did not say it was going (a drain).
            let mut lost_because: Option<String> = None;
            let mut drained = false;
            let lost = token_lost(&caller);
            tokio::pin!(lost);
            loop {
                let next = tokio::select! {
                    // Shutting down: let go of the stream so the connection can close.
                    () = scheduler.stopped() => {
                        drained = true;
                        break;
                    }
                    status = &mut lost => {
                        tracing::warn!(agent = %id, %status, "ending the session of an agent whose token is no longer valid");
                        let refusal = CoordinatorMessage {
                            kind: Some(coordinator_message::Kind::Refused(
                                tessera_proto::rpc::Status {
                                    code: status.code() as i32,
                                    message: status.message().to_owned(),
                                    details: Vec::new(),
                                },
                            )),
                        };
                        let _ = refusals.send(Ok(refusal)).await;
                        let _ = refusals.send(Err(status)).await;
                        drained = true;
                        break;
                    }
                    next = inbound.message() => next,
                };
                match next {
                    Ok(Some(message)) => {
                        if matches!(message.kind, Some(agent_message::Kind::Draining(_))) {
                            drained = true;
                        }
                        if let Some(agent_message::Kind::Result(result)) = message.kind {
                            let _ = results.send(result);
                            continue;
                        }
                        scheduler.agent_message(id.clone(), session, message);
                    }
                    Ok(None) => {
                        lost_because = Some("its session closed without a drain".to_owned());
                        break;
                    }
                    Err(status) => {
                        tracing::debug!(agent = %id, %status, "agent session broke");
                        lost_because = Some(format!("its session broke: {}", status.message()));
                        break;
                    }
                }
            }
            // Results already read reach the scheduler before it hears the agent left.
            drop(results);
            let _ = forwarder.await;
            scheduler.agent_left(id.clone(), session);
            if let Some(reason) = lost_because.filter(|_| !drained) {
                notifier.agent_lost(&id, &reason);
            }
            caller.record(AuditRecord {
                action: "agent.leave",
                object: &id,
                allowed: true,
                ..Default::default()
            });
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// How long storing a result's inline outputs is retried when the store, not the blobs, is
/// at fault (commits behind, a disk briefly full), before the result is given up as retryable,
/// as the agent used to ride out such trouble retrying its uploads. Only that agent's results
/// wait meanwhile, not its heartbeats.
const STORE_RETRY_FOR: Duration = Duration::from_secs(3);
const STORE_RETRY_FIRST: Duration = Duration::from_millis(50);

/// Stores the outputs `result` carries inline (on a blocking thread), before the scheduler
/// takes it. Blobs that are wrong (too many bytes, a bad digest, data that does not match it),
/// or blobs sent to a coordinator that offered to take none, make the result a retryable
/// failure that says why: its outputs are not all in the CAS, so the action runs again rather
/// than answer with blobs nobody can read. A store that cannot take them is retried for
/// [`STORE_RETRY_FOR`] first.
async fn take_inline_outputs(
    store: Option<&Arc<dyn BlobStore>>,
    agent: &str,
    result: &mut LeaseResult,
) {
    if result.blobs.is_empty() {
        return;
    }
    let blobs = std::mem::take(&mut result.blobs);
    let stored = match (store, DigestFunction::from_request(result.digest_function)) {
        (None, _) => Err("this coordinator takes no inline outputs".to_owned()),
        (_, Err(error)) => Err(error.to_string()),
        (Some(store), Ok(function)) => store_inline(store, function, blobs)
            .await
            .map(|()| function),
    };
    match stored {
        // What the blobs were stored as (0 reads as SHA-256): the scheduler compares it with
        // the action's.
        Ok(function) => result.digest_function = function.to_proto(),
        Err(why) => {
            tracing::warn!(%agent, lease = %result.lease_id, %why, "refusing a result's inline outputs");
            result.outcome = LeaseOutcome::Retryable as i32;
            result.message = format!("the result's inline outputs were refused: {why}");
            result.result = None;
        }
    }
}

/// Checks and stores `blobs` in one hop to a blocking thread; only a store that refused is
/// tried again.
async fn store_inline(
    store: &Arc<dyn BlobStore>,
    function: DigestFunction,
    blobs: Vec<batch_update_blobs_request::Request>,
) -> Result<(), String> {
    let first = {
        let store = Arc::clone(store);
        tokio::task::spawn_blocking(move || {
            let checked = checked_inline(function, blobs)?;
            Ok(match store_all(store.as_ref(), &checked, 0) {
                Ok(()) => None,
                Err(refusal) => Some((checked, refusal)),
            })
        })
        .await
        .unwrap_or_else(|error| Err(format!("the storing task failed: {error}")))?
    };
    match first {
        None => Ok(()),
        Some((checked, refusal)) => store_with_retries(store, checked, refusal).await,
    }
}

/// `blobs` (of the digest function `function`) with their digests parsed; their bytes
/// are checked against them as the store takes them ([`BlobStore::write`]).
fn checked_inline(
    function: DigestFunction,
    blobs: Vec<batch_update_blobs_request::Request>,
) -> Result<Vec<(Digest, bytes::Bytes)>, String> {
    let total = blobs
        .iter()
        .fold(0u64, |sum, blob| sum.saturating_add(blob.data.len() as u64));
    if total > INLINE_OUTPUT_BYTES {
        return Err(format!(
            "{total} bytes, more than the {INLINE_OUTPUT_BYTES} a result may carry"
        ));
    }
    blobs
        .into_iter()
        .enumerate()
        .map(|(i, blob)| {
            if blob.compressor != compressor::Value::Identity as i32 {
                return Err(format!(
                    "blobs[{i}]: compressor {} (inline outputs are uncompressed)",
                    blob.compressor
                ));
            }
            let digest = Digest::from_proto_opt(function, blob.digest.as_ref())
                .map_err(|e| format!("blobs[{i}].digest: {e}"))?;
            Ok((digest, blob.data))
        })
        .collect()
}

/// A blob the store refused (its place among the result's blobs, its digest), and why.
struct Refusal {
    index: usize,
    digest: Digest,
    error: StoreError,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "blobs[{}] ({}): {}", self.index, self.digest, self.error)
    }
}

/// Stores each of `blobs` from the one at `from` on; the store checks each against its digest.
fn store_all(
    store: &dyn BlobStore,
    blobs: &[(Digest, bytes::Bytes)],
    from: usize,
) -> Result<(), Box<Refusal>> {
    for (index, (digest, data)) in blobs.iter().enumerate().skip(from) {
        store.write(digest, data).map_err(|error| {
            Box::new(Refusal {
                index,
                digest: *digest,
                error,
            })
        })?;
    }
    Ok(())
}

/// Whether a store that refused a blob with `error` may take it a moment later (not bytes
/// that do not match their digest).
fn may_pass(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Full { .. }
            | StoreError::Io { .. }
            | StoreError::Meta(_)
            | StoreError::OutOfSpace { .. }
    )
}

/// Stores `blobs`, which the store refused once (`error`), on a blocking thread, trying again
/// from the refused blob until [`STORE_RETRY_FOR`] has passed while the refusal is one that
/// may pass.
async fn store_with_retries(
    store: &Arc<dyn BlobStore>,
    blobs: Vec<(Digest, bytes::Bytes)>,
    error: Box<Refusal>,
) -> Result<(), String> {
    let blobs = Arc::new(blobs);
    let deadline = tokio::time::Instant::now() + STORE_RETRY_FOR;
    let mut wait = STORE_RETRY_FIRST;
    let mut last = error;
    loop {
        let now = tokio::time::Instant::now();
        if !may_pass(&last.error) || now >= deadline {
            return Err(last.to_string());
        }
        tracing::debug!(refusal = %last, retry_in = ?wait, "inline outputs not stored yet; retrying");
        tokio::time::sleep(wait.min(deadline - now)).await;
        wait *= 2;
        let (store, todo, from) = (Arc::clone(store), Arc::clone(&blobs), last.index);
        match tokio::task::spawn_blocking(move || store_all(store.as_ref(), &todo, from)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => last = error,
            Err(error) => return Err(format!("the storing task failed: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(protocol_version: u32, version: &str) -> Hello {
        Hello {
            agent_id: "a1".to_owned(),
            slots: 1,
            version: version.to_owned(),
            protocol_version,
            ..Hello::default()
        }
    }

    fn blob(data: &[u8]) -> batch_update_blobs_request::Request {
        batch_update_blobs_request::Request {
            digest: Some(DigestFunction::Blake3.digest_of(data).to_proto()),
            data: bytes::Bytes::copy_from_slice(data),
            compressor: compressor::Value::Identity as i32,
        }
    }

    fn completed(blobs: Vec<batch_update_blobs_request::Request>) -> LeaseResult {
        LeaseResult {
            lease_id: "l".to_owned(),
            attempt: 1,
            result: Some(tessera_proto::reapi::ActionResult::default()),
            outcome: LeaseOutcome::Completed as i32,
            digest_function: DigestFunction::Blake3.to_proto(),
            blobs,
            ..LeaseResult::default()
        }
    }

    #[tokio::test]
    async fn inline_outputs_are_stored_before_the_result_goes_on() {
        let memory = Arc::new(tessera_cas::store::MemoryStore::new());
        let store: Arc<dyn BlobStore> = memory.clone();
        let mut result = completed(vec![blob(b"out"), blob(b"stdout"), blob(b"")]);
        take_inline_outputs(Some(&store), "a1", &mut result).await;
        assert_eq!(result.outcome(), LeaseOutcome::Completed);
        assert!(result.result.is_some());
        assert!(result.blobs.is_empty(), "the scheduler gets no blobs");
        for data in [&b"out"[..], b"stdout"] {
            let digest = DigestFunction::Blake3.digest_of(data);
            assert_eq!(store.read(&digest).unwrap().as_deref(), Some(data));
        }
    }

    #[tokio::test]
    async fn a_result_whose_inline_outputs_are_refused_runs_again() {
        let memory = Arc::new(tessera_cas::store::MemoryStore::new());
        let store: Arc<dyn BlobStore> = memory.clone();
        let mut longer = blob(b"what it says");
        longer.data = bytes::Bytes::from_static(b"something else");
        let mut lying = blob(b"what it says");
        lying.data = bytes::Bytes::from_static(b"what it sayz");
        let mut compressed = blob(b"x");
        compressed.compressor = compressor::Value::Zstd as i32;
        let mut no_digest = blob(b"y");
        no_digest.digest = None;
        let too_many = vec![blob(&vec![1u8; 600 * 1024]), blob(&vec![2u8; 600 * 1024])];
        let cases = [
            (vec![blob(b"fine"), longer], "blobs[1]"),
            (vec![lying], "blobs[0]"),
            (vec![compressed], "compressor"),
            (vec![no_digest], "blobs[0].digest"),
            (too_many, "more than the 1048576"),
        ];
        for (blobs, why) in cases {
            let mut result = completed(blobs);
            take_inline_outputs(Some(&store), "a1", &mut result).await;
            assert_eq!(result.outcome(), LeaseOutcome::Retryable, "{why}");
            assert!(result.result.is_none());
            assert!(result.message.contains(why), "{}", result.message);
        }
        // Without a store, nothing is taken inline.
        let mut result = completed(vec![blob(b"z")]);
        take_inline_outputs(None, "a1", &mut result).await;
        assert_eq!(result.outcome(), LeaseOutcome::Retryable);
        assert!(result.message.contains("takes no inline outputs"));
        // A result without blobs is left alone.
        let mut result = completed(Vec::new());
        take_inline_outputs(None, "a1", &mut result).await;
        assert_eq!(result.outcome(), LeaseOutcome::Completed);
    }

    /// A store that refuses its first `refusals` writes, as a full disk would.
    struct Refusing {
        inner: tessera_cas::store::MemoryStore,
        refusals: std::sync::atomic::AtomicUsize,
    }

    impl BlobStore for Refusing {
        fn find_missing(&self, digests: &[Digest]) -> Vec<Digest> {
            self.inner.find_missing(digests)
        }
        fn contains(&self, digest: &Digest) -> bool {
            self.inner.contains(digest)
        }
        fn touch(&self, digests: &[Digest]) {
            self.inner.touch(digests);
        }
        fn read(
            &self,
            digest: &Digest,
        ) -> Result<Option<bytes::Bytes>, tessera_cas::store::StoreError> {
            self.inner.read(digest)
        }
        fn open(
            &self,
            digest: &Digest,
            offset: u64,
        ) -> Result<Option<tessera_cas::store::BlobReader>, tessera_cas::store::StoreError>
        {
            self.inner.open(digest, offset)
        }
        fn write(
            &self,
            digest: &Digest,
            data: &[u8],
        ) -> Result<(), tessera_cas::store::StoreError> {
            let left = self.refusals.load(Ordering::SeqCst);
            if left > 0 {
                self.refusals.store(left - 1, Ordering::SeqCst);
                return Err(tessera_cas::store::StoreError::Io {
                    op: "failed to write",
                    path: "blob".into(),
                    source: std::io::Error::other("no space left"),
                });
            }
            self.inner.write(digest, data)
        }
        fn begin_upload(
            &self,
            digest: &Digest,
        ) -> Result<Box<dyn tessera_cas::store::Upload>, tessera_cas::store::StoreError> {
            self.inner.begin_upload(digest)
        }
        fn stats(&self) -> tessera_cas::store::StoreStats {
            self.inner.stats()
        }
    }

    #[tokio::test]
    async fn a_store_that_refuses_for_a_moment_is_tried_again_and_then_given_up() {
        for (refusals, taken) in [(3, true), (1000, false)] {
            let store: Arc<dyn BlobStore> = Arc::new(Refusing {
                inner: tessera_cas::store::MemoryStore::new(),
                refusals: refusals.into(),
            });
            let mut result = completed(vec![blob(b"out")]);
            take_inline_outputs(Some(&store), "a1", &mut result).await;
            let digest = DigestFunction::Blake3.digest_of(b"out");
            assert_eq!(store.contains(&digest), taken);
            if taken {
                assert_eq!(result.outcome(), LeaseOutcome::Completed);
            } else {
                assert_eq!(result.outcome(), LeaseOutcome::Retryable);
                assert!(
                    result.message.contains("no space left"),
                    "{}",
                    result.message
                );
            }
        }
    }

    #[test]
    fn agents_of_this_protocol_are_welcome() {
        assert_eq!(
            check_protocol(&hello(AGENT_PROTOCOL_VERSION, VERSION)),
            Ok(())
        );
    }

    #[test]
    fn refusals_say_which_versions_meet() {
        let older = check_protocol(&hello(1, "0.1.0")).unwrap_err();
        assert_eq!(
            older.to_string(),
            format!(
                "agent \"a1\" speaks agent protocol 1 (tessera 0.1.0); this coordinator \
                 (tessera {VERSION}) speaks protocol {AGENT_PROTOCOL_VERSION} only: run agents \
                 from the coordinator's release (see README \"Upgrading a fleet\")"
            )
        );
        let ancient = check_protocol(&hello(0, "")).unwrap_err().to_string();
        assert!(
            ancient.starts_with(
                "agent \"a1\" speaks agent protocol 0, from before version checks (release \
                 unknown); "
            ),
            "{ancient}"
        );
    }
}

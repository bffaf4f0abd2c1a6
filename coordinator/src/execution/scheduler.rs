//! The scheduler: one actor task owns every operation, the queue, the agents and their
//! leases. Services talk to it through [`SchedulerHandle`] (requests with `oneshot` replies);
//! clients watch operations through `watch` channels. Nothing here awaits I/O except its own
//! request channel and timer, so one slow client or agent never stalls scheduling.
//!
//! Durability: every accepted operation is written to the metadata table `operations` when it
//! is submitted (the Execute service flushes before acknowledging), and again when it is
//! leased and when it finishes. At start, finished operations are loaded for WaitExecution and
//! unfinished ones are queued again; a result for a lease from before the restart is refused,
//! because lease ids are never reused.
//!
//! Leases: an agent must list its running leases in a heartbeat at least every
//! `lease_timeout`; a lease not extended in time expires, its work is queued again with the
//! next attempt number, and a result that arrives for it later is refused. Infrastructure
//! failures are retried up to `max_attempts`, then the operation fails with UNAVAILABLE.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::meta::{MetaError, MetadataStore, Table};
use tessera_proto::reapi::{ExecuteResponse, execution_stage};
use tessera_proto::rpc;
use tessera_proto::tessera::v1::{
    AgentMessage, CancelLease, CoordinatorMessage, Lease, LeaseOutcome, LeaseProgress, LeaseResult,
    OperationRecord, agent_message, coordinator_message,
};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Code, Status};

use super::operation::{OpEvent, OpSnapshot, OpState, StepPartial, transition};
use super::platform::{Platform, is_execution_only};
use super::queue::FairQueue;
use crate::action_cache::ActionCache;

/// Metadata table of operation records.
pub const OPERATIONS_TABLE: &str = "operations";
/// Metadata table of platform keys ever declared by an agent.
pub const PLATFORM_KEYS_TABLE: &str = "platform_keys";
/// How often leases are checked for expiry.
const TICK: Duration = Duration::from_millis(200);

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// A lease expires when not extended by a heartbeat within this.
    pub lease_timeout: Duration,
    /// Attempts (first run included) before an operation fails on infrastructure errors.
    pub max_attempts: u32,
    /// How long finished operations stay available to WaitExecution / GetOperation.
    pub retention: Duration,
    /// Platform keys accepted even before any agent declares them.
    pub known_platform_keys: Vec<String>,
}

impl SchedulerConfig {
    /// How often agents are asked to send heartbeats.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.lease_timeout / 4).max(Duration::from_millis(100))
    }
}

/// Counters for tests, logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Operations queued now.
    pub queued: usize,
    /// Leases held now.
    pub leased: usize,
    /// Connected agents.
    pub agents: usize,
    /// Total slots of connected agents.
    pub slots: usize,
    /// Operations finished since start.
    pub completed: u64,
    /// Leases that expired since start.
    pub expired_leases: u64,
    /// Results refused because their lease was no longer current.
    pub stale_results: u64,
    /// Executions merged into an identical in-flight one.
    pub merged: u64,
}

/// A connected agent as seen by the status API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// Agent id.
    pub id: String,
    /// Declared properties.
    pub properties: Vec<(String, String)>,
    /// Slots.
    pub slots: u32,
    /// Leases it holds.
    pub running: usize,
    /// Whether it is draining.
    pub draining: bool,
}

/// Why a request to the scheduler failed.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The actor has stopped (the coordinator is shutting down).
    #[error("scheduler is shutting down")]
    Stopped,
    /// The platform names a key no agent or configuration knows.
    #[error(
        "unknown platform property \"{0}\": no agent has declared it and it is not configured (known: {1})"
    )]
    UnknownPlatformKey(String, String),
    /// No such operation.
    #[error("operation \"{0}\" not found")]
    NotFound(String),
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

type AgentTx = mpsc::Sender<Result<CoordinatorMessage, Status>>;

enum Request {
    Submit {
        record: Box<OperationRecord>,
        platform: Platform,
        mergeable: bool,
        reply: oneshot::Sender<Result<(watch::Receiver<OpSnapshot>, bool), SchedulerError>>,
    },
    CheckPlatform {
        platform: Platform,
        reply: oneshot::Sender<Result<(), SchedulerError>>,
    },
    Watch {
        name: String,
        reply: oneshot::Sender<Option<watch::Receiver<OpSnapshot>>>,
    },
    Cancel {
        name: String,
        reply: oneshot::Sender<Result<(), SchedulerError>>,
    },
    AgentJoined {
        id: String,
        session: u64,
        properties: Platform,
        slots: u32,
        tx: AgentTx,
    },
    AgentMessage {
        id: String,
        session: u64,
        message: Box<AgentMessage>,
    },
    AgentLeft {
        id: String,
        session: u64,
    },
    Stats {
        reply: oneshot::Sender<(SchedulerStats, Vec<AgentInfo>)>,
    },
    Position {
        names: Vec<String>,
        reply: oneshot::Sender<Option<usize>>,
    },
}

/// A cheap, cloneable way to talk to the scheduler actor.
#[derive(Clone, Debug)]
pub struct SchedulerHandle {
    tx: mpsc::UnboundedSender<Request>,
    config: Arc<SchedulerConfig>,
}

impl SchedulerHandle {
    /// The scheduler's settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, SchedulerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| SchedulerError::Stopped)?;
        rx.await.map_err(|_| SchedulerError::Stopped)
    }

    /// Queues an operation (or joins an identical in-flight one when `mergeable`). Returns a
    /// watch on it and whether a new operation was created (which the caller must flush).
    pub async fn submit(
        &self,
        record: OperationRecord,
        platform: Platform,
        mergeable: bool,
    ) -> Result<(watch::Receiver<OpSnapshot>, bool), SchedulerError> {
        self.ask(|reply| Request::Submit {
            record: Box::new(record),
            platform,
            mergeable,
            reply,
        })
        .await?
    }

    /// Refuses platforms with keys nobody declared.
    pub async fn check_platform(&self, platform: Platform) -> Result<(), SchedulerError> {
        self.ask(|reply| Request::CheckPlatform { platform, reply })
            .await?
    }

    /// A watch on an operation, if it is known.
    pub async fn watch(
        &self,
        name: &str,
    ) -> Result<Option<watch::Receiver<OpSnapshot>>, SchedulerError> {
        self.ask(|reply| Request::Watch {
            name: name.to_owned(),
            reply,
        })
        .await
    }

    /// Cancels an operation: removed from the queue, or its agent told to stop.
    pub async fn cancel(&self, name: &str) -> Result<(), SchedulerError> {
        self.ask(|reply| Request::Cancel {
            name: name.to_owned(),
            reply,
        })
        .await?
    }

    /// Counters and the connected agents.
    pub async fn stats(&self) -> Result<(SchedulerStats, Vec<AgentInfo>), SchedulerError> {
        self.ask(|reply| Request::Stats { reply }).await
    }

    /// How many queued operations would be picked before the first of `names` that is still
    /// queued (`None` when none of them is queued).
    pub async fn queue_position(
        &self,
        names: Vec<String>,
    ) -> Result<Option<usize>, SchedulerError> {
        self.ask(|reply| Request::Position { names, reply }).await
    }

    /// An agent's session opened.
    pub fn agent_joined(
        &self,
        id: String,
        session: u64,
        properties: Platform,
        slots: u32,
        tx: AgentTx,
    ) {
        let _ = self.tx.send(Request::AgentJoined {
            id,
            session,
            properties,
            slots,
            tx,
        });
    }

    /// A message arrived on an agent's session.
    pub fn agent_message(&self, id: String, session: u64, message: AgentMessage) {
        let _ = self.tx.send(Request::AgentMessage {
            id,
            session,
            message: Box::new(message),
        });
    }

    /// Resolves when the scheduler has stopped (the coordinator is shutting down).
    pub async fn stopped(&self) {
        self.tx.closed().await;
    }

    /// An agent's session closed.
    pub fn agent_left(&self, id: String, session: u64) {
        let _ = self.tx.send(Request::AgentLeft { id, session });
    }
}

struct Op {
    record: OperationRecord,
    platform: Platform,
    state: OpState,
    tx: watch::Sender<OpSnapshot>,
    merge_key: Option<Vec<u8>>,
    completed_at: Option<Instant>,
    partial: Vec<StepPartial>,
}

impl Op {
    /// An operation in `state`, its watch already showing that state.
    fn new(
        record: OperationRecord,
        platform: Platform,
        state: OpState,
        merge_key: Option<Vec<u8>>,
    ) -> Self {
        let op = Op {
            tx: watch::channel(OpSnapshot {
                name: record.name.clone(),
                stage: execution_stage::Value::Queued,
                action_digest: Default::default(),
                digest_function: 0,
                response: None,
                partial: Vec::new(),
            })
            .0,
            record,
            platform,
            state,
            merge_key,
            completed_at: None,
            partial: Vec::new(),
        };
        op.tx.send_replace(op.snapshot());
        op
    }

    fn snapshot(&self) -> OpSnapshot {
        OpSnapshot {
            name: self.record.name.clone(),
            stage: match self.state {
                OpState::Queued => execution_stage::Value::Queued,
                OpState::Leased { .. } => execution_stage::Value::Executing,
                OpState::Done => execution_stage::Value::Completed,
            },
            action_digest: self.record.action_digest.clone().unwrap_or_default(),
            digest_function: self.record.digest_function,
            response: if self.state == OpState::Done {
                Some(self.record.response.clone().unwrap_or_default())
            } else {
                None
            },
            partial: self.partial.clone(),
        }
    }
}

struct AgentEntry {
    session: u64,
    properties: Platform,
    slots: u32,
    tx: Option<AgentTx>,
    leases: HashSet<String>,
    draining: bool,
    /// The agent refused a lease for lack of room; no more until its next heartbeat.
    saturated: bool,
    /// When the agent last sent anything. An agent silent for a lease timeout is presumed
    /// frozen or cut off and gets no new work until it speaks again.
    last_heard: Instant,
}

impl AgentEntry {
    /// An agent known only from a lease recovered after a restart, until it reconnects.
    fn offline() -> Self {
        AgentEntry {
            session: 0,
            properties: Platform::default(),
            slots: 0,
            tx: None,
            leases: HashSet::new(),
            draining: false,
            saturated: false,
            last_heard: Instant::now(),
        }
    }
}

/// Lease ids are the operation's id and the attempt: unique, never reused, and the same after
/// a restart for a lease recovered from the record.
fn lease_id(operation: &str, attempt: u32) -> String {
    format!("{}#{attempt}", operation.trim_start_matches("operations/"))
}

struct Scheduler {
    config: Arc<SchedulerConfig>,
    table: Table,
    keys_table: Table,
    cache: ActionCache,
    ops: HashMap<String, Op>,
    queue: FairQueue,
    inflight: HashMap<Vec<u8>, String>,
    leases: HashMap<String, String>,
    agents: HashMap<String, AgentEntry>,
    known_keys: HashSet<String>,
    stats: SchedulerStats,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn status(code: Code, message: impl Into<String>) -> rpc::Status {
    rpc::Status {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    }
}

/// The digest function of operation `name`'s action.
fn result_function(ops: &HashMap<String, Op>, name: &str) -> i32 {
    ops.get(name).map_or(0, |op| op.record.digest_function)
}

/// How a lease ended: the result's outcome, or (from an agent of protocol 1) what its status
/// code meant.
fn lease_outcome(result: &LeaseResult) -> LeaseOutcome {
    match LeaseOutcome::try_from(result.outcome) {
        Ok(outcome) if outcome != LeaseOutcome::Unspecified => outcome,
        _ => match Code::from(result.status.as_ref().map_or(0, |s| s.code)) {
            Code::Ok => LeaseOutcome::Completed,
            Code::DeadlineExceeded => LeaseOutcome::TimedOut,
            Code::Cancelled => LeaseOutcome::Cancelled,
            Code::FailedPrecondition => LeaseOutcome::MissingInputs,
            Code::InvalidArgument => LeaseOutcome::InvalidAction,
            Code::ResourceExhausted => LeaseOutcome::Refused,
            _ => LeaseOutcome::Retryable,
        },
    }
}

fn merge_key(record: &OperationRecord) -> Vec<u8> {
    let mut key = record.instance_name.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&record.digest_function.to_le_bytes());
    if let Some(d) = &record.action_digest {
        key.extend_from_slice(d.hash.as_bytes());
        key.extend_from_slice(&d.size_bytes.to_le_bytes());
    }
    key
}

/// Starts the scheduler actor: loads persisted operations (finished ones kept, unfinished
/// ones queued again) and returns its handle and task. The actor stops when `stop` is
/// cancelled or every handle is dropped, releasing its hold on the metadata store.
pub fn start(
    config: SchedulerConfig,
    meta: &Arc<dyn MetadataStore>,
    cache: ActionCache,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(SchedulerHandle, tokio::task::JoinHandle<()>), SchedulerError> {
    let config = Arc::new(config);
    let table = meta.table(OPERATIONS_TABLE)?;
    let keys_table = meta.table(PLATFORM_KEYS_TABLE)?;
    let mut known_keys: HashSet<String> = config.known_platform_keys.iter().cloned().collect();
    for entry in keys_table.scan_prefix(b"") {
        let (key, _) = entry?;
        known_keys.insert(String::from_utf8_lossy(&key).into_owned());
    }
    let mut scheduler = Scheduler {
        config: Arc::clone(&config),
        table,
        keys_table,
        cache,
        ops: HashMap::new(),
        queue: FairQueue::new(),
        inflight: HashMap::new(),
        leases: HashMap::new(),
        agents: HashMap::new(),
        known_keys,
        stats: SchedulerStats::default(),
    };
    scheduler.recover()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(scheduler.run(rx, stop));
    Ok((SchedulerHandle { tx, config }, task))
}

impl Scheduler {
    fn recover(&mut self) -> Result<(), SchedulerError> {
        let now_ms = unix_ms();
        let retention_ms = i64::try_from(self.config.retention.as_millis()).unwrap_or(i64::MAX);
        let mut requeued = 0usize;
        let mut kept = 0usize;
        let mut expired = Vec::new();
        for entry in self.table.scan_prefix(b"") {
            let (key, value) = entry?;
            let Ok(record) = OperationRecord::decode(value.as_slice()) else {
                tracing::warn!("dropping undecodable operation record");
                expired.push(key);
                continue;
            };
            if record.done && now_ms.saturating_sub(record.completed_unix_ms) > retention_ms {
                expired.push(key);
                continue;
            }
            let platform = Platform::new(
                record
                    .platform
                    .iter()
                    .map(|p| (p.name.clone(), p.value.clone())),
            );
            let done = record.done;
            let mergeable = !record.action.as_ref().is_some_and(|a| a.do_not_cache);
            // A lease held when the coordinator stopped stays valid until it lapses: the agent
            // may still be running it and report the result when it reconnects.
            let state = if done {
                OpState::Done
            } else if !record.leased_to.is_empty() && record.attempts > 0 {
                OpState::Leased {
                    lease_id: lease_id(&record.name, record.attempts),
                    agent: record.leased_to.clone(),
                    attempt: record.attempts,
                    deadline: Instant::now() + self.config.lease_timeout,
                }
            } else {
                OpState::Queued
            };
            let mut op = Op::new(record, platform, state, None);
            op.completed_at = done.then(Instant::now);
            let name = op.record.name.clone();
            if done {
                kept += 1;
            } else {
                requeued += 1;
                if mergeable {
                    let key = merge_key(&op.record);
                    self.inflight.insert(key.clone(), name.clone());
                    op.merge_key = Some(key);
                }
                match &op.state {
                    OpState::Leased {
                        lease_id, agent, ..
                    } => {
                        self.leases.insert(lease_id.clone(), name.clone());
                        self.agents
                            .entry(agent.clone())
                            .or_insert_with(AgentEntry::offline)
                            .leases
                            .insert(lease_id.clone());
                    }
                    _ => self.queue.push(
                        name.clone(),
                        op.platform.clone(),
                        &op.record.requester,
                        op.record.priority,
                    ),
                }
            }
            self.ops.insert(name, op);
        }
        for key in expired {
            self.table.remove(&key)?;
        }
        if requeued + kept > 0 {
            tracing::info!(requeued, kept, "recovered operations");
        }
        Ok(())
    }

    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Request>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_gc = Instant::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                request = rx.recv() => {
                    let Some(request) = request else { return };
                    self.handle(request);
                    // Take whatever else is waiting before dispatching once.
                    while let Ok(request) = rx.try_recv() {
                        self.handle(request);
                    }
                }
                _ = tick.tick() => {
                    self.expire_leases();
                    if last_gc.elapsed() > Duration::from_secs(30) {
                        last_gc = Instant::now();
                        self.forget_old();
                    }
                }
            }
            self.dispatch();
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Submit {
                record,
                platform,
                mergeable,
                reply,
            } => {
                let _ = reply.send(self.submit(*record, platform, mergeable));
            }
            Request::CheckPlatform { platform, reply } => {
                let _ = reply.send(self.check_platform(&platform));
            }
            Request::Watch { name, reply } => {
                let _ = reply.send(self.ops.get(&name).map(|op| op.tx.subscribe()));
            }
            Request::Cancel { name, reply } => {
                let _ = reply.send(self.cancel(&name));
            }
            Request::AgentJoined {
                id,
                session,
                properties,
                slots,
                tx,
            } => self.agent_joined(id, session, properties, slots, tx),
            Request::AgentMessage {
                id,
                session,
                message,
            } => self.agent_message(&id, session, *message),
            Request::AgentLeft { id, session } => {
                if let Some(agent) = self.agents.get_mut(&id)
                    && agent.session == session
                {
                    tracing::info!(agent = %id, leases = agent.leases.len(), "agent disconnected");
                    agent.tx = None;
                }
            }
            Request::Position { names, reply } => {
                let position = names
                    .iter()
                    .filter_map(|name| self.queue.position(name))
                    .min();
                let _ = reply.send(position);
            }
            Request::Stats { reply } => {
                let agents = self
                    .agents
                    .iter()
                    .filter(|(_, a)| a.tx.is_some())
                    .map(|(id, a)| AgentInfo {
                        id: id.clone(),
                        properties: a.properties.pairs().to_vec(),
                        slots: a.slots,
                        running: a.leases.len(),
                        draining: a.draining,
                    })
                    .collect::<Vec<_>>();
                let mut stats = self.stats.clone();
                stats.queued = self.queue.len();
                stats.leased = self.leases.len();
                stats.agents = agents.len();
                stats.slots = agents.iter().map(|a| a.slots as usize).sum();
                let _ = reply.send((stats, agents));
            }
        }
    }

    fn check_platform(&self, platform: &Platform) -> Result<(), SchedulerError> {
        for key in platform.keys().filter(|k| !is_execution_only(k)) {
            if !self.known_keys.contains(key) {
                let mut known: Vec<&str> = self.known_keys.iter().map(String::as_str).collect();
                known.sort_unstable();
                return Err(SchedulerError::UnknownPlatformKey(
                    key.to_owned(),
                    known.join(", "),
                ));
            }
        }
        Ok(())
    }

    fn persist(&self, record: &OperationRecord) {
        if let Err(error) = self
            .table
            .insert(record.name.as_bytes(), &record.encode_to_vec())
        {
            tracing::error!(operation = %record.name, %error, "failed to persist operation");
        }
    }

    fn submit(
        &mut self,
        record: OperationRecord,
        platform: Platform,
        mergeable: bool,
    ) -> Result<(watch::Receiver<OpSnapshot>, bool), SchedulerError> {
        let key = merge_key(&record);
        if mergeable
            && let Some(existing) = self.inflight.get(&key)
            && let Some(op) = self.ops.get(existing)
            && op.state != OpState::Done
        {
            self.stats.merged += 1;
            return Ok((op.tx.subscribe(), false));
        }
        self.table
            .insert(record.name.as_bytes(), &record.encode_to_vec())?;
        let name = record.name.clone();
        self.queue.push(
            name.clone(),
            platform.clone(),
            &record.requester,
            record.priority,
        );
        let op = Op::new(
            record,
            platform,
            OpState::Queued,
            mergeable.then(|| key.clone()),
        );
        let rx = op.tx.subscribe();
        if mergeable {
            self.inflight.insert(key, name.clone());
        }
        self.ops.insert(name, op);
        Ok((rx, true))
    }

    fn agent_joined(
        &mut self,
        id: String,
        session: u64,
        properties: Platform,
        slots: u32,
        tx: AgentTx,
    ) {
        for key in properties.keys() {
            if self.known_keys.insert(key.to_owned())
                && let Err(error) = self.keys_table.insert(key.as_bytes(), b"")
            {
                tracing::warn!(%error, "failed to record platform key");
            }
        }
        tracing::info!(agent = %id, slots, properties = %properties, "agent connected");
        let entry = self.agents.entry(id).or_insert_with(|| AgentEntry {
            session,
            properties: properties.clone(),
            slots,
            tx: None,
            leases: HashSet::new(),
            draining: false,
            saturated: false,
            last_heard: Instant::now(),
        });
        // A reconnecting agent keeps its leases: it reports their results on the new session.
        entry.session = session;
        entry.properties = properties;
        entry.slots = slots;
        entry.tx = Some(tx);
        entry.draining = false;
        entry.last_heard = Instant::now();
    }

    fn agent_message(&mut self, id: &str, session: u64, message: AgentMessage) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        if agent.session != session {
            return;
        }
        agent.last_heard = Instant::now();
        match message.kind {
            Some(agent_message::Kind::Heartbeat(beat)) => {
                agent.saturated = false;
                let deadline = Instant::now() + self.config.lease_timeout;
                for lease_id in &beat.lease_ids {
                    if !agent.leases.contains(lease_id) {
                        continue;
                    }
                    if let Some(name) = self.leases.get(lease_id)
                        && let Some(op) = self.ops.get_mut(name)
                        && let OpState::Leased { deadline: d, .. } = &mut op.state
                    {
                        *d = deadline;
                    }
                }
            }
            Some(agent_message::Kind::Result(result)) => self.lease_result(id, result),
            Some(agent_message::Kind::Draining(_)) => {
                tracing::info!(agent = %id, "agent draining");
                agent.draining = true;
            }
            Some(agent_message::Kind::Progress(progress)) => {
                if !progress.step_results_json.is_empty() {
                    self.step_progress(id, progress);
                }
            }
            Some(agent_message::Kind::Hello(_)) | None => {}
        }
    }

    /// Test results of a running batch step: shown to the operation's watchers at once.
    fn step_progress(&mut self, agent_id: &str, progress: LeaseProgress) {
        let Some(name) = self.leases.get(&progress.lease_id) else {
            return;
        };
        let Some(op) = self.ops.get_mut(name) else {
            return;
        };
        let current = matches!(&op.state, OpState::Leased { lease_id, agent, .. }
            if *lease_id == progress.lease_id && agent == agent_id);
        if !current {
            return;
        }
        op.partial.push(StepPartial {
            agent: agent_id.to_owned(),
            results_json: progress.step_results_json,
        });
        op.tx.send_replace(op.snapshot());
    }

    fn lease_result(&mut self, agent_id: &str, result: LeaseResult) {
        let current = self.leases.get(&result.lease_id).and_then(|name| {
            self.ops.get(name).and_then(|op| match &op.state {
                OpState::Leased {
                    lease_id,
                    agent,
                    attempt,
                    ..
                } if *lease_id == result.lease_id
                    && agent == agent_id
                    && *attempt == result.attempt =>
                {
                    Some(name.clone())
                }
                _ => None,
            })
        });
        let Some(name) = current else {
            self.stats.stale_results += 1;
            tracing::info!(agent = %agent_id, lease = %result.lease_id, attempt = result.attempt,
                "refusing result for a lease that is no longer current");
            return;
        };
        self.release_lease(agent_id, &result.lease_id);
        let outcome = lease_outcome(&result);
        let message = if result.message.is_empty() {
            result
                .status
                .as_ref()
                .map(|s| s.message.clone())
                .unwrap_or_default()
        } else {
            result.message.clone()
        };
        let final_status = |code: Code| status(code, message.clone());
        let reported = match outcome {
            LeaseOutcome::Completed => Some(rpc::Status::default()),
            LeaseOutcome::TimedOut => Some(final_status(Code::DeadlineExceeded)),
            LeaseOutcome::Cancelled => Some(final_status(Code::Cancelled)),
            LeaseOutcome::InvalidAction => Some(final_status(Code::InvalidArgument)),
            LeaseOutcome::MissingInputs => {
                let function = DigestFunction::from_request(result_function(&self.ops, &name));
                let missing: Vec<Digest> = function
                    .map(|f| {
                        result
                            .missing
                            .iter()
                            .filter_map(|d| Digest::from_proto(f, d).ok())
                            .collect()
                    })
                    .unwrap_or_default();
                if missing.is_empty() {
                    // A legacy agent's status carries its own details.
                    Some(
                        result
                            .status
                            .clone()
                            .unwrap_or_else(|| final_status(Code::FailedPrecondition)),
                    )
                } else {
                    Some(crate::status::missing_blobs_status(
                        message.clone(),
                        &missing,
                    ))
                }
            }
            LeaseOutcome::Refused | LeaseOutcome::Retryable | LeaseOutcome::Unspecified => None,
        };
        if let Some(status) = reported {
            let response = ExecuteResponse {
                result: result.result,
                cached_result: false,
                status: Some(status),
                server_logs: Default::default(),
                message: String::new(),
            };
            self.finish(&name, response);
            return;
        }
        if outcome == LeaseOutcome::Refused {
            // The agent refused without starting (slots busy, draining): no attempt is spent,
            // and it gets no more work until its next heartbeat says what it runs.
            tracing::debug!(operation = %name, agent = %agent_id, %message, "lease refused");
            if let Some(agent) = self.agents.get_mut(agent_id) {
                agent.saturated = true;
            }
            if let Some(op) = self.ops.get_mut(&name) {
                op.record.attempts = op.record.attempts.saturating_sub(1);
            }
            self.retry_or_fail(&name, &message);
        } else {
            tracing::warn!(operation = %name, agent = %agent_id, ?outcome, %message,
                "infrastructure failure");
            self.retry_or_fail(&name, &format!("agent {agent_id}: {message}"));
        }
    }

    /// Removes the lease from the lease table and from the agent holding it.
    fn release_lease(&mut self, agent: &str, lease_id: &str) {
        self.leases.remove(lease_id);
        if let Some(agent) = self.agents.get_mut(agent) {
            agent.leases.remove(lease_id);
        }
    }

    fn retry_or_fail(&mut self, name: &str, why: &str) {
        let Some(op) = self.ops.get_mut(name) else {
            return;
        };
        if op.record.attempts >= self.config.max_attempts {
            let response = ExecuteResponse {
                status: Some(status(
                    Code::Unavailable,
                    format!(
                        "action failed {} times on agents; last failure: {why}",
                        op.record.attempts
                    ),
                )),
                ..Default::default()
            };
            self.finish(name, response);
            return;
        }
        match transition(&op.state, OpEvent::Requeued) {
            Ok(state) => op.state = state,
            Err(error) => {
                tracing::error!(%error, "scheduler bug");
                return;
            }
        }
        op.record.leased_to.clear();
        self.queue.push(
            name.to_owned(),
            op.platform.clone(),
            &op.record.requester,
            op.record.priority,
        );
        op.tx.send_replace(op.snapshot());
    }

    fn finish(&mut self, name: &str, response: ExecuteResponse) {
        let Some(op) = self.ops.get_mut(name) else {
            return;
        };
        let event = if response
            .status
            .as_ref()
            .is_some_and(|s| s.code == Code::Cancelled as i32)
        {
            OpEvent::Cancelled
        } else {
            OpEvent::Finished
        };
        match transition(&op.state, event) {
            Ok(state) => op.state = state,
            Err(error) => {
                tracing::error!(%error, "scheduler bug");
                return;
            }
        }
        self.queue.remove(name);
        let ok = response.status.as_ref().is_none_or(|s| s.code == 0);
        let cacheable = ok && !op.record.action.as_ref().is_some_and(|a| a.do_not_cache);
        if cacheable
            && let Some(result) = &response.result
            && let Ok(function) = DigestFunction::from_request(op.record.digest_function)
            && let Some(Ok(digest)) = op
                .record
                .action_digest
                .as_ref()
                .map(|d| Digest::from_proto(function, d))
            && let Err(error) =
                self.cache
                    .record_executed(&op.record.instance_name, &digest, result)
        {
            tracing::warn!(operation = %name, %error, "failed to cache result");
        }
        op.record.done = true;
        op.record.response = Some(response);
        op.record.completed_unix_ms = unix_ms();
        op.completed_at = Some(Instant::now());
        if let Some(key) = op.merge_key.take() {
            self.inflight.remove(&key);
        }
        op.tx.send_replace(op.snapshot());
        let record = op.record.clone();
        self.persist(&record);
        self.stats.completed += 1;
    }

    fn cancel(&mut self, name: &str) -> Result<(), SchedulerError> {
        let Some(op) = self.ops.get(name) else {
            return Err(SchedulerError::NotFound(name.to_owned()));
        };
        match op.state.clone() {
            OpState::Done => return Ok(()),
            OpState::Queued => {}
            OpState::Leased {
                lease_id, agent, ..
            } => {
                if let Some(tx) = self.agents.get(&agent).and_then(|a| a.tx.as_ref()) {
                    let _ = tx.try_send(Ok(CoordinatorMessage {
                        kind: Some(coordinator_message::Kind::Cancel(CancelLease {
                            lease_id: lease_id.clone(),
                        })),
                    }));
                }
                self.release_lease(&agent, &lease_id);
            }
        }
        let response = ExecuteResponse {
            status: Some(status(Code::Cancelled, "cancelled by the client")),
            ..Default::default()
        };
        self.finish(name, response);
        Ok(())
    }

    fn expire_leases(&mut self) {
        let now = Instant::now();
        let expired: Vec<(String, String, String)> = self
            .leases
            .values()
            .filter_map(|name| self.ops.get(name).map(|op| (name, op)))
            .filter_map(|(name, op)| match &op.state {
                OpState::Leased {
                    lease_id,
                    agent,
                    deadline,
                    ..
                } if *deadline <= now => Some((name.clone(), lease_id.clone(), agent.clone())),
                _ => None,
            })
            .collect();
        for (name, lease_id, agent) in expired {
            self.stats.expired_leases += 1;
            tracing::warn!(operation = %name, lease = %lease_id, agent = %agent, "lease expired; queueing again");
            if let Some(tx) = self.agents.get(&agent).and_then(|a| a.tx.as_ref()) {
                let _ = tx.try_send(Ok(CoordinatorMessage {
                    kind: Some(coordinator_message::Kind::Cancel(CancelLease {
                        lease_id: lease_id.clone(),
                    })),
                }));
            }
            self.release_lease(&agent, &lease_id);
            self.retry_or_fail(
                &name,
                &format!("lease expired on agent {agent} (no heartbeat)"),
            );
        }
    }

    fn forget_old(&mut self) {
        let retention = self.config.retention;
        let old: Vec<String> = self
            .ops
            .iter()
            .filter(|(_, op)| op.completed_at.is_some_and(|t| t.elapsed() > retention))
            .map(|(name, _)| name.clone())
            .collect();
        for name in old {
            self.ops.remove(&name);
            if let Err(error) = self.table.remove(name.as_bytes()) {
                tracing::warn!(%error, "failed to forget operation");
            }
        }
        self.agents
            .retain(|_, agent| agent.tx.is_some() || !agent.leases.is_empty());
    }

    fn dispatch(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let silent_after = self.config.lease_timeout;
        let ids: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, a)| a.last_heard.elapsed() < silent_after)
            .map(|(id, _)| id.clone())
            .collect();
        // With one agent there is nobody else to prefer.
        let avoid = ids.len() > 1;
        for id in ids {
            loop {
                if self.queue.is_empty() {
                    return;
                }
                let Some(agent) = self.agents.get(&id) else {
                    break;
                };
                let Some(tx) = agent.tx.clone() else {
                    break;
                };
                if agent.draining || agent.saturated || agent.leases.len() >= agent.slots as usize {
                    break;
                }
                let Some(name) = self
                    .queue
                    .pop_for(&agent.properties, avoid.then_some(id.as_str()))
                else {
                    break;
                };
                self.lease(&id, &name, &tx);
            }
        }
    }

    fn lease(&mut self, agent_id: &str, name: &str, tx: &AgentTx) {
        let Some(op) = self.ops.get_mut(name) else {
            return;
        };
        let attempt = op.record.attempts + 1;
        let lease_id = lease_id(&op.record.name, attempt);
        let deadline = Instant::now() + self.config.lease_timeout;
        let lease = Lease {
            lease_id: lease_id.clone(),
            attempt,
            instance_name: op.record.instance_name.clone(),
            action_digest: op.record.action_digest.clone(),
            digest_function: op.record.digest_function,
            action: op.record.action.clone(),
            command: op.record.command.clone(),
            timeout: Some(prost_types::Duration {
                seconds: op.record.timeout_ms / 1000,
                nanos: i32::try_from((op.record.timeout_ms % 1000) * 1_000_000).unwrap_or(0),
            }),
        };
        if tx
            .try_send(Ok(CoordinatorMessage {
                kind: Some(coordinator_message::Kind::Lease(lease)),
            }))
            .is_err()
        {
            // The session is gone or jammed: leave the work queued for another agent.
            self.queue.push(
                name.to_owned(),
                op.platform.clone(),
                &op.record.requester,
                op.record.priority,
            );
            if let Some(agent) = self.agents.get_mut(agent_id) {
                agent.tx = None;
            }
            return;
        }
        match transition(
            &op.state,
            OpEvent::Leased {
                lease_id: lease_id.clone(),
                agent: agent_id.to_owned(),
                attempt,
                deadline,
            },
        ) {
            Ok(state) => op.state = state,
            Err(error) => {
                tracing::error!(%error, "scheduler bug");
                return;
            }
        }
        op.record.attempts = attempt;
        op.record.leased_to = agent_id.to_owned();
        op.tx.send_replace(op.snapshot());
        let record = op.record.clone();
        self.persist(&record);
        self.leases.insert(lease_id.clone(), name.to_owned());
        if let Some(agent) = self.agents.get_mut(agent_id) {
            agent.leases.insert(lease_id);
        }
    }
}

//! The actor: one task owns every operation, the queue, the agents and their leases, and
//! handles one [`Request`] at a time. Submitting, cancelling, finishing and forgetting
//! operations live here; leases are in `leases`, the agent registry in `agents`, restart
//! recovery in `recovery`.
//!
//! Durability: every accepted operation is written to the metadata table `operations` when it
//! is submitted (the Execute service flushes before acknowledging), and again when it is
//! leased and when it finishes; the record written is always derived from the operation's
//! state ([`Operation::record`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::meta::{MetadataStore, Table};
use tessera_proto::reapi::ExecuteResponse;
use tessera_proto::tessera::v1::{OperationRecord, SecretEnv};
use tokio::sync::{mpsc, watch};

use super::agents::AgentRegistry;
use super::handle::{Request, SchedulerConfig, SchedulerError, SchedulerHandle, SchedulerStats};
use crate::action_cache::ActionCache;
use crate::execution::clock::{Clock, Stamp, SystemClock};
use crate::execution::inputs::Carried;
use crate::execution::operation::{OpEvent, OpSnapshot, OpState, Operation};
use crate::execution::platform::{Platform, is_execution_only};
use crate::execution::queue::FairQueue;

/// Metadata table of operation records.
pub const OPERATIONS_TABLE: &str = "operations";
/// Metadata table of platform keys ever declared by an agent.
pub const PLATFORM_KEYS_TABLE: &str = "platform_keys";
/// How often leases are checked for expiry.
const TICK: Duration = Duration::from_millis(200);
/// How often finished operations past retention are forgotten.
const GC_EVERY: Duration = Duration::from_secs(30);

/// An operation and what the scheduler keeps beside it.
pub(super) struct Op {
    pub(super) op: Operation,
    /// Its watchers.
    pub(super) tx: watch::Sender<OpSnapshot>,
    /// Its key among in-flight mergeable operations, until it finishes.
    pub(super) merge_key: Option<Vec<u8>>,
    /// The secret values its leases carry (a job step's `--secret-env`); in memory only, so
    /// an operation recovered after a restart has none.
    pub(super) secrets: Vec<SecretEnv>,
    /// The W3C trace context of the span that submitted it, handed to the agent with each
    /// lease so that the agent's spans are its children (empty when traces are off).
    pub(super) trace: HashMap<String, String>,
    /// The Directory messages and small files of its input tree, read when it was accepted,
    /// that each lease carries so the agent need not fetch them (none when the tree was not
    /// read or is large); in memory only, like `secrets`.
    pub(super) carried: Carried,
    /// The Tessera job it is a step of, when a job submitted it; in memory only, like
    /// `secrets`, so an operation recovered after a restart has none. Merged operations keep
    /// the first job's.
    pub(super) job: Option<String>,
    /// When it was last queued and last leased (for the wait and duration metrics and the
    /// fleet view). A lease recovered after a restart counts from the restart.
    pub(super) queued_at: Stamp,
    pub(super) leased_at: Option<Stamp>,
}

impl Op {
    pub(super) fn new(
        op: Operation,
        merge_key: Option<Vec<u8>>,
        secrets: Vec<SecretEnv>,
        carried: Carried,
        trace: HashMap<String, String>,
        job: Option<String>,
        now: Stamp,
    ) -> Self {
        let tx = watch::channel(op.snapshot()).0;
        let leased_at = matches!(op.state(), OpState::Leased { .. }).then_some(now);
        Op {
            op,
            tx,
            merge_key,
            secrets,
            carried,
            trace,
            job,
            queued_at: now,
            leased_at,
        }
    }

    /// Shows watchers the current state.
    pub(super) fn publish(&self) {
        self.tx.send_replace(self.op.snapshot());
    }
}

/// The scheduler's state; see the module docs.
pub(super) struct Scheduler {
    pub(super) config: Arc<SchedulerConfig>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) table: Table,
    pub(super) keys_table: Table,
    pub(super) cache: ActionCache,
    pub(super) ops: HashMap<String, Op>,
    pub(super) queue: FairQueue,
    /// Mergeable in-flight operations by merge key.
    pub(super) inflight: HashMap<Vec<u8>, String>,
    /// Lease id → operation name, for every lease held.
    pub(super) leases: HashMap<String, String>,
    pub(super) agents: AgentRegistry,
    pub(super) known_keys: HashSet<String>,
    pub(super) stats: SchedulerStats,
}

/// Starts the scheduler actor on the real clock: loads persisted operations (finished ones
/// kept, unfinished ones queued again) and returns its handle and task. The actor stops when
/// `stop` is cancelled or every handle is dropped, releasing its hold on the metadata store.
pub fn start(
    config: SchedulerConfig,
    meta: &Arc<dyn MetadataStore>,
    cache: ActionCache,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(SchedulerHandle, tokio::task::JoinHandle<()>), SchedulerError> {
    let scheduler = Scheduler::open(config, meta, cache, Arc::new(SystemClock))?;
    let config = Arc::clone(&scheduler.config);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(scheduler.run(rx, stop));
    Ok((SchedulerHandle::new(tx, config), task))
}

impl Scheduler {
    /// The scheduler with its persisted state recovered, not yet running.
    pub(super) fn open(
        config: SchedulerConfig,
        meta: &Arc<dyn MetadataStore>,
        cache: ActionCache,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SchedulerError> {
        let table = meta.table(OPERATIONS_TABLE)?;
        let keys_table = meta.table(PLATFORM_KEYS_TABLE)?;
        let mut known_keys: HashSet<String> = config.known_platform_keys.iter().cloned().collect();
        for entry in keys_table.scan_prefix(b"") {
            let (key, _) = entry?;
            known_keys.insert(String::from_utf8_lossy(&key).into_owned());
        }
        let mut scheduler = Scheduler {
            config: Arc::new(config),
            clock,
            table,
            keys_table,
            cache,
            ops: HashMap::new(),
            queue: FairQueue::new(),
            inflight: HashMap::new(),
            leases: HashMap::new(),
            agents: AgentRegistry::default(),
            known_keys,
            stats: SchedulerStats::default(),
        };
        scheduler.recover()?;
        Ok(scheduler)
    }

    pub(super) fn now(&self) -> Stamp {
        self.clock.now()
    }

    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Request>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_gc = self.now().instant;
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
                    let now = self.now().instant;
                    if now.saturating_duration_since(last_gc) > GC_EVERY {
                        last_gc = now;
                        self.forget_old();
                    }
                }
            }
            self.dispatch();
            self.publish_gauges();
        }
    }

    pub(super) fn handle(&mut self, request: Request) {
        match request {
            Request::Submit {
                record,
                platform,
                mergeable,
                secrets,
                carried,
                trace,
                job,
                reply,
            } => {
                let submitted =
                    self.submit(*record, platform, mergeable, (secrets, carried), trace, job);
                let _ = reply.send(submitted);
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
            Request::AgentLeft { id, session } => self.agents.left(&id, session),
            Request::Position { names, reply } => {
                let position = names
                    .iter()
                    .filter_map(|name| self.queue.position(name))
                    .min();
                let _ = reply.send(position);
            }
            Request::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Request::Fleet { reply } => {
                let _ = reply.send(self.fleet());
            }
        }
    }

    /// Sets the scheduler gauges of the metrics (queue depth, agents, slots) from the state.
    fn publish_gauges(&self) {
        let (agents, slots) = self.agents.counts();
        crate::metrics::metrics().set_scheduler(self.queue.len(), agents, slots, self.leases.len());
    }

    fn stats(&self) -> (SchedulerStats, Vec<super::handle::AgentInfo>) {
        let agents = self.agents.connected();
        let now = self.now().instant;
        let mut stats = self.stats.clone();
        stats.queued = self.queue.len();
        stats.leased = self.leases.len();
        stats.agents = agents.len();
        stats.slots = agents.iter().map(|a| a.slots as usize).sum();
        stats.oldest_queued = self
            .ops
            .iter()
            .filter(|(name, _)| self.queue.contains(name))
            .map(|(_, op)| now.saturating_duration_since(op.queued_at.instant))
            .max();
        (stats, agents)
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

    /// Writes the operation's record (derived from its state).
    pub(super) fn persist(&self, op: &Operation) {
        let record = op.record();
        if let Err(error) = self
            .table
            .insert(record.name.as_bytes(), &record.encode_to_vec())
        {
            // A full disk is logged once per episode by the store itself.
            if error.is_out_of_space() {
                tracing::debug!(operation = %record.name, %error, "failed to persist operation");
            } else {
                tracing::error!(operation = %record.name, %error, "failed to persist operation");
            }
        }
    }

    fn submit(
        &mut self,
        record: OperationRecord,
        platform: Platform,
        mergeable: bool,
        (secrets, carried): (Vec<SecretEnv>, Carried),
        trace: HashMap<String, String>,
        job: Option<String>,
    ) -> Result<(watch::Receiver<OpSnapshot>, bool), SchedulerError> {
        let key = merge_key(&record);
        if mergeable
            && let Some(existing) = self.inflight.get(&key)
            && let Some(op) = self.ops.get_mut(existing)
            && !op.op.is_done()
        {
            self.stats.merged += 1;
            // The same action holds the same placeholders, so the same values: an operation
            // that came without them (another client's) gets them.
            if op.secrets.is_empty() {
                op.secrets = secrets;
            }
            if op.job.is_none() {
                op.job = job;
            }
            return Ok((op.tx.subscribe(), false));
        }
        let op = Operation::new(record, platform);
        // Unlike later writes, this one's failure is the caller's: nothing was promised yet.
        let record = op.record();
        self.table
            .insert(record.name.as_bytes(), &record.encode_to_vec())?;
        let name = op.name().to_owned();
        enqueue(&mut self.queue, &op);
        let now = self.now();
        let op = Op::new(
            op,
            mergeable.then(|| key.clone()),
            secrets,
            carried,
            trace,
            job,
            now,
        );
        let rx = op.tx.subscribe();
        if mergeable {
            self.inflight.insert(key, name.clone());
        }
        self.ops.insert(name, op);
        Ok((rx, true))
    }

    fn cancel(&mut self, name: &str) -> Result<(), SchedulerError> {
        let Some(entry) = self.ops.get(name) else {
            return Err(SchedulerError::NotFound(name.to_owned()));
        };
        if entry.op.is_done() {
            return Ok(());
        }
        if let Some((lease_id, agent)) = entry.op.lease() {
            let agent = agent.to_owned();
            if let Some(entry) = self.agents.get(&agent) {
                entry.send_cancel(&lease_id);
            }
            self.release_lease(&agent, &lease_id);
        }
        let at = self.now();
        self.complete(name, OpEvent::Cancelled { at });
        Ok(())
    }

    /// Ends a leased operation with `response` (a successful result is cached once the
    /// operation has legally finished).
    pub(super) fn finish(&mut self, name: &str, response: ExecuteResponse) {
        let at = self.now();
        self.complete(
            name,
            OpEvent::Finished {
                response: Box::new(response),
                at,
            },
        );
    }

    /// Applies a finishing event (finished or cancelled) and does what follows: out of the
    /// queue and the in-flight index, watchers told, the record written.
    fn complete(&mut self, name: &str, event: OpEvent) {
        let Some(op) = self.ops.get_mut(name) else {
            return;
        };
        if let Err(error) = op.op.apply(event) {
            tracing::error!(%error, "scheduler bug");
            return;
        }
        self.queue.remove(name);
        if let Some(key) = op.merge_key.take() {
            self.inflight.remove(&key);
        }
        // No lease of it will carry them again.
        op.carried = Carried::default();
        let ran_for = op.leased_at.map(|at| {
            self.clock
                .now()
                .instant
                .saturating_duration_since(at.instant)
        });
        let entry = &self.ops[name];
        let op = &entry.op;
        if let OpState::Done { response, .. } = op.state() {
            // Cached before any watcher hears of it: a client that saw the operation done and
            // asks the action cache next (as build tools do) finds the result there.
            self.cache_result(op, response);
            crate::metrics::metrics().action_finished(action_outcome(response), ran_for);
        }
        entry.publish();
        self.persist(op);
        self.stats.completed += 1;
    }

    fn cache_result(&self, op: &Operation, response: &ExecuteResponse) {
        let spec = op.spec();
        let ok = response.status.as_ref().is_none_or(|s| s.code == 0);
        let cacheable = ok && !spec.action.as_ref().is_some_and(|a| a.do_not_cache);
        if cacheable
            && let Some(result) = &response.result
            && let Ok(function) = DigestFunction::from_request(spec.digest_function)
            && let Some(Ok(digest)) = spec
                .action_digest
                .as_ref()
                .map(|d| Digest::from_proto(function, d))
            && let Err(error) = self
                .cache
                .record_executed(&spec.instance_name, &digest, result)
        {
            tracing::warn!(operation = %spec.name, %error, "failed to cache result");
        }
    }

    /// Forgets finished operations older than the retention.
    pub(super) fn forget_old(&mut self) {
        let retention = self.config.retention;
        let now = self.now().instant;
        let old: Vec<String> = self
            .ops
            .iter()
            .filter(|(_, op)| match op.op.state() {
                OpState::Done { completed_at, .. } => {
                    now.saturating_duration_since(*completed_at) > retention
                }
                _ => false,
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in old {
            self.ops.remove(&name);
            if let Err(error) = self.table.remove(name.as_bytes()) {
                tracing::warn!(%error, "failed to forget operation");
            }
        }
        self.agents.forget_idle_disconnected();
    }
}

/// Puts a queued operation in the fair queue (a free function, so callers can hold the
/// operation borrowed from the scheduler's map while the queue changes).
pub(super) fn enqueue(queue: &mut FairQueue, op: &Operation) {
    let spec = op.spec();
    queue.push(
        spec.name.clone(),
        op.platform().clone(),
        &spec.requester,
        spec.priority,
    );
}

/// The key under which identical actions merge: instance, digest function and action digest.
pub(super) fn merge_key(record: &OperationRecord) -> Vec<u8> {
    let mut key = record.instance_name.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&record.digest_function.to_le_bytes());
    if let Some(d) = &record.action_digest {
        key.extend_from_slice(d.hash.as_bytes());
        key.extend_from_slice(&d.size_bytes.to_le_bytes());
    }
    key
}

/// The `tessera_actions_total` outcome of a final answer: `cancelled` (CANCELLED status),
/// `timed_out` (DEADLINE_EXCEEDED), `failed` (the command exited non-zero, or the client's
/// action could not run: missing inputs, an invalid action — as the agent counts them),
/// `infra_error` (any other error status, or no result) or `ok`.
pub(super) fn action_outcome(response: &ExecuteResponse) -> &'static str {
    let code = response.status.as_ref().map_or(0, |s| s.code);
    match tonic::Code::from_i32(code) {
        tonic::Code::Ok => match &response.result {
            Some(result) if result.exit_code == 0 => "ok",
            Some(_) => "failed",
            None => "infra_error",
        },
        tonic::Code::Cancelled => "cancelled",
        tonic::Code::DeadlineExceeded => "timed_out",
        tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => "failed",
        _ => "infra_error",
    }
}

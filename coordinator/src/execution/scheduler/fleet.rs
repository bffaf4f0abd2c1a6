//! The fleet view: what the dashboard's `/fleet` shows, built by the actor from its own state
//! in one request so that agents, leases and queue agree with each other. Owns the view types
//! and their construction; not their rendering (the dashboard's).
//!
//! Times are the scheduler clock's wall-clock half, in Unix milliseconds, except waits, which
//! are measured on its monotonic half.

use std::time::Duration;

use serde::Serialize;

use super::actor::Scheduler;
use super::agents::AgentEntry;
use crate::execution::operation::OpState;

/// What `/fleet` shows: the agents and the queue, as of one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetView {
    /// Connected agents, by id.
    pub agents: Vec<AgentView>,
    /// Requesters with queued work, in fair-share order (`position` 1, 2, ...).
    pub queue: Vec<RequesterQueue>,
    /// Queued operations in all.
    pub queued: usize,
}

/// One connected agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentView {
    /// Agent id.
    pub id: String,
    /// Declared properties.
    pub properties: Vec<(String, String)>,
    /// Slots.
    pub slots: u32,
    /// Whether it said it is shutting down (it gets no new work).
    pub draining: bool,
    /// Unix ms of the last message (heartbeat or any other) from the agent's session.
    pub last_heard_unix_ms: u64,
    /// Unix ms when its current session opened.
    pub connected_unix_ms: u64,
    /// The leases it holds, oldest first.
    pub leases: Vec<LeaseView>,
}

impl AgentView {
    /// Slots running a lease.
    pub fn busy(&self) -> usize {
        self.leases.len()
    }

    /// Slots free (none while it holds more leases than slots, as after it reconnects with
    /// fewer).
    pub fn idle(&self) -> usize {
        (self.slots as usize).saturating_sub(self.leases.len())
    }
}

/// One lease an agent holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseView {
    /// The operation's name (`operations/...`).
    pub operation: String,
    /// Who submitted it (the fair-share requester key).
    pub requester: String,
    /// The Tessera job it is a step of, when a job submitted it. `None` for REAPI clients'
    /// actions, and for operations recovered after a restart (the job is not persisted).
    pub job: Option<String>,
    /// The attempt this lease is (1 for the first).
    pub attempt: u32,
    /// Unix ms when it was leased (for a lease recovered after a restart: the restart).
    pub leased_unix_ms: u64,
}

/// One requester's queued work in fair-share order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequesterQueue {
    /// The requester (fair-share key: a job's submitter, or a REAPI client's invocation id).
    pub requester: String,
    /// Its queued operations.
    pub queued: usize,
    /// 1-based: the order in which the fair queue would serve this requester's next item
    /// relative to the other requesters right now (lowest priority value, then least virtual
    /// time, then first come), as an agent that satisfies every platform would see it.
    pub position: usize,
    /// Service received so far, divided by weight.
    pub virtual_time: f64,
    /// Its share weight.
    pub weight: f64,
    /// How long its longest-waiting queued operation has waited.
    pub oldest_wait_ms: u64,
}

impl Scheduler {
    /// The fleet as of now.
    pub(super) fn fleet(&self) -> FleetView {
        let mut agents: Vec<AgentView> = self
            .agents
            .connected_entries()
            .map(|(id, agent)| self.agent_view(id, agent))
            .collect();
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        let now = self.now().instant;
        let queue = self
            .queue
            .shares()
            .into_iter()
            .enumerate()
            .map(|(index, share)| {
                let waited = self.ops.get(&share.oldest).map_or(Duration::ZERO, |op| {
                    now.saturating_duration_since(op.queued_at.instant)
                });
                RequesterQueue {
                    requester: share.requester,
                    queued: share.queued,
                    position: index + 1,
                    virtual_time: share.vtime,
                    weight: share.weight,
                    oldest_wait_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                }
            })
            .collect();
        FleetView {
            agents,
            queue,
            queued: self.queue.len(),
        }
    }

    fn agent_view(&self, id: &str, agent: &AgentEntry) -> AgentView {
        let mut leases: Vec<LeaseView> = agent
            .leases
            .iter()
            .filter_map(|lease_id| {
                let op = self.ops.get(self.leases.get(lease_id)?)?;
                // The lease table holds current leases only, so this is the operation's
                // latest attempt; anything else would be a bookkeeping slip not worth showing.
                let OpState::Leased { attempt, .. } = op.op.state() else {
                    return None;
                };
                Some(LeaseView {
                    operation: op.op.name().to_owned(),
                    requester: op.op.spec().requester.clone(),
                    job: op.job.clone(),
                    attempt: *attempt,
                    leased_unix_ms: unix_ms(op.leased_at.map_or(0, |at| at.unix_ms)),
                })
            })
            .collect();
        leases.sort_by(|a, b| {
            (a.leased_unix_ms, &a.operation).cmp(&(b.leased_unix_ms, &b.operation))
        });
        AgentView {
            id: id.to_owned(),
            properties: agent.properties.pairs().to_vec(),
            slots: agent.slots,
            draining: agent.draining,
            last_heard_unix_ms: unix_ms(agent.last_heard.unix_ms),
            connected_unix_ms: unix_ms(agent.connected.unix_ms),
            leases,
        }
    }
}

/// A wall-clock stamp for display: before the epoch (a badly set clock) shows as 0.
fn unix_ms(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

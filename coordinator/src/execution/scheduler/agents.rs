//! The agent registry: every agent the scheduler knows, connected or not, with its session,
//! properties, slots and the leases it holds; and which of them can take work now.
//!
//! An agent is known from its first Hello, or, after a restart, from a lease a persisted
//! record says it held (until it reconnects or the lease lapses). A reconnecting agent keeps
//! its leases: it reports their results on the new session.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use tessera_proto::tessera::v1::{CancelLease, CoordinatorMessage, coordinator_message};

use super::handle::{AgentInfo, AgentTx};
use crate::execution::clock::Stamp;
use crate::execution::platform::Platform;

/// One agent.
pub(super) struct AgentEntry {
    /// The session its messages must come from (older sessions' messages are ignored).
    pub(super) session: u64,
    pub(super) properties: Platform,
    pub(super) slots: u32,
    /// Its session's sending half, while connected.
    pub(super) tx: Option<AgentTx>,
    /// Leases it holds.
    pub(super) leases: HashSet<String>,
    /// It said it is shutting down: no new work.
    pub(super) draining: bool,
    /// The agent refused a lease for lack of room; no more until its next heartbeat.
    pub(super) saturated: bool,
    /// When the agent last sent anything. An agent silent for a lease timeout is presumed
    /// frozen or cut off and gets no new work until it speaks again.
    pub(super) last_heard: Stamp,
    /// When its current session opened (when it became known, for an agent that has not
    /// connected since a restart).
    pub(super) connected: Stamp,
}

impl AgentEntry {
    /// An agent not connected yet (or known only from a recovered lease): no session, no
    /// slots, until its Hello says otherwise.
    fn offline(now: Stamp) -> Self {
        AgentEntry {
            session: 0,
            properties: Platform::default(),
            slots: 0,
            tx: None,
            leases: HashSet::new(),
            draining: false,
            saturated: false,
            last_heard: now,
            connected: now,
        }
    }

    /// Whether it can take one more lease now.
    pub(super) fn has_room(&self) -> bool {
        self.tx.is_some()
            && !self.draining
            && !self.saturated
            && self.leases.len() < self.slots as usize
    }

    /// Tells the agent to stop running `lease_id` (best effort: a jammed or closed session
    /// learns it when the lease lapses).
    pub(super) fn send_cancel(&self, lease_id: &str) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Ok(CoordinatorMessage {
                kind: Some(coordinator_message::Kind::Cancel(CancelLease {
                    lease_id: lease_id.to_owned(),
                })),
            }));
        }
    }
}

/// Every agent the scheduler knows, by id.
#[derive(Default)]
pub(super) struct AgentRegistry {
    agents: HashMap<String, AgentEntry>,
}

impl AgentRegistry {
    /// An agent's session opened (first time, or again).
    pub(super) fn joined(
        &mut self,
        id: String,
        session: u64,
        properties: Platform,
        slots: u32,
        tx: AgentTx,
        now: Stamp,
    ) {
        tracing::info!(agent = %id, slots, properties = %properties, "agent connected");
        let entry = self
            .agents
            .entry(id)
            .or_insert_with(|| AgentEntry::offline(now));
        entry.session = session;
        entry.properties = properties;
        entry.slots = slots;
        entry.tx = Some(tx);
        entry.draining = false;
        entry.last_heard = now;
        entry.connected = now;
    }

    /// An agent's session closed; its leases stay until they expire or it reconnects.
    pub(super) fn left(&mut self, id: &str, session: u64) {
        if let Some(agent) = self.agents.get_mut(id)
            && agent.session == session
        {
            tracing::info!(agent = %id, leases = agent.leases.len(), "agent disconnected");
            agent.tx = None;
        }
    }

    /// The agent, if `session` is its current one; marks it heard from at `now`.
    pub(super) fn heard_from(
        &mut self,
        id: &str,
        session: u64,
        now: Stamp,
    ) -> Option<&mut AgentEntry> {
        let agent = self.agents.get_mut(id)?;
        if agent.session != session {
            return None;
        }
        agent.last_heard = now;
        Some(agent)
    }

    /// The agent.
    pub(super) fn get(&self, id: &str) -> Option<&AgentEntry> {
        self.agents.get(id)
    }

    /// The agent, to change.
    pub(super) fn get_mut(&mut self, id: &str) -> Option<&mut AgentEntry> {
        self.agents.get_mut(id)
    }

    /// Records that `agent` holds `lease_id`; an agent known only from a recovered record is
    /// registered offline until it reconnects.
    pub(super) fn hold(&mut self, agent: &str, lease_id: String, now: Stamp) {
        self.agents
            .entry(agent.to_owned())
            .or_insert_with(|| AgentEntry::offline(now))
            .leases
            .insert(lease_id);
    }

    /// Forgets that `agent` holds `lease_id`.
    pub(super) fn release(&mut self, agent: &str, lease_id: &str) {
        if let Some(agent) = self.agents.get_mut(agent) {
            agent.leases.remove(lease_id);
        }
    }

    /// Agents heard from within `silent_after` of `now`: the ones that may get work.
    pub(super) fn responsive(
        &self,
        now: Instant,
        silent_after: std::time::Duration,
    ) -> Vec<String> {
        self.agents
            .iter()
            .filter(|(_, a)| now.saturating_duration_since(a.last_heard.instant) < silent_after)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The number of connected agents and their slots in all (cheap, for the metrics).
    pub(super) fn counts(&self) -> (usize, usize) {
        self.agents
            .values()
            .filter(|a| a.tx.is_some())
            .fold((0, 0), |(n, slots), a| (n + 1, slots + a.slots as usize))
    }

    /// Connected agents, for the status API.
    pub(super) fn connected(&self) -> Vec<AgentInfo> {
        self.agents
            .iter()
            .filter(|(_, a)| a.tx.is_some())
            .map(|(id, a)| AgentInfo {
                id: id.clone(),
                properties: a.properties.pairs().to_vec(),
                slots: a.slots,
                running: a.leases.len(),
                draining: a.draining,
            })
            .collect()
    }

    /// Connected agents with what they hold, for the fleet view.
    pub(super) fn connected_entries(&self) -> impl Iterator<Item = (&String, &AgentEntry)> {
        self.agents.iter().filter(|(_, a)| a.tx.is_some())
    }

    /// Forgets agents that are gone and hold nothing.
    pub(super) fn forget_idle_disconnected(&mut self) {
        self.agents
            .retain(|_, agent| agent.tx.is_some() || !agent.leases.is_empty());
    }
}

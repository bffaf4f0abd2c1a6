//! The scheduler: one actor task owns every operation, the queue, the agents and their
//! leases. Services talk to it through [`SchedulerHandle`] (requests with `oneshot` replies);
//! clients watch operations through `watch` channels. Nothing here awaits I/O except its own
//! request channel and timer, so one slow client or agent never stalls scheduling.
//!
//! - `handle`: the API (handle, requests, settings, counters, the error type);
//! - `actor`: the actor loop, submitting, cancelling, finishing and forgetting operations;
//! - `leases`: dispatch, heartbeats, results and expiry of leases;
//! - `agents`: the registry of agents and who can take work;
//! - `fleet`: the snapshot of agents, leases and queue that the dashboard's `/fleet` shows;
//! - `recovery`: rebuilding the state from persisted records after a restart.
//!
//! Operation states change only through `crate::execution::operation`'s transition function;
//! time comes from an injected [`crate::execution::clock::Clock`].

mod actor;
mod agents;
mod fleet;
mod handle;
mod leases;
mod recovery;
#[cfg(test)]
mod tests;

pub use actor::{OPERATIONS_TABLE, PLATFORM_KEYS_TABLE, start};
pub use fleet::{AgentView, FleetView, LeaseView, RequesterQueue};
pub use handle::{
    AgentInfo, AgentTx, SchedulerConfig, SchedulerError, SchedulerHandle, SchedulerStats,
};

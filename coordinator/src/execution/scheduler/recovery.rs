//! Recovery after a restart: every persisted operation is rebuilt from its record
//! ([`Operation::restore`]). Finished ones stay for WaitExecution until their retention runs
//! out (counted from the restart); unfinished ones are queued again, except that a lease the
//! record names stays valid until it lapses, because the agent may still be running it and
//! report the result when it reconnects. Lease ids are the operation and attempt, so a result
//! for any other attempt is refused.

use prost::Message;
use tessera_proto::tessera::v1::OperationRecord;

use super::actor::{Op, Scheduler, enqueue, merge_key};
use super::handle::SchedulerError;
use crate::execution::operation::{OpState, Operation};

impl Scheduler {
    /// Loads the persisted operations; drops undecodable records and finished ones past
    /// retention.
    pub(super) fn recover(&mut self) -> Result<(), SchedulerError> {
        let now = self.now();
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
            if record.done && now.unix_ms.saturating_sub(record.completed_unix_ms) > retention_ms {
                expired.push(key);
                continue;
            }
            let mergeable = !record.action.as_ref().is_some_and(|a| a.do_not_cache);
            let op = Operation::restore(record, now, self.config.lease_timeout);
            let name = op.name().to_owned();
            let mut merge = None;
            match op.state() {
                OpState::Done { .. } => kept += 1,
                OpState::Leased { agent, attempt, .. } => {
                    requeued += 1;
                    let lease_id = crate::execution::operation::lease_id(&name, *attempt);
                    self.leases.insert(lease_id.clone(), name.clone());
                    self.agents.hold(agent, lease_id, now);
                }
                OpState::Queued { .. } => {
                    requeued += 1;
                    enqueue(&mut self.queue, &op);
                }
            }
            if !op.is_done() && mergeable {
                let key = merge_key(op.spec());
                self.inflight.insert(key.clone(), name.clone());
                merge = Some(key);
            }
            // Secret values are never persisted: a recovered job step that needs them fails on
            // the agent, which names the variable (the job itself fails before that).
            // Nor is the job an operation belongs to (the record has no field for it).
            self.ops.insert(
                name,
                Op::new(
                    op,
                    merge,
                    Vec::new(),
                    Default::default(),
                    Default::default(),
                    None,
                    now,
                ),
            );
        }
        for key in expired {
            self.table.remove(&key)?;
        }
        if requeued + kept > 0 {
            tracing::info!(requeued, kept, "recovered operations");
        }
        Ok(())
    }
}

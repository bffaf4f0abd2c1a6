//! Leases: handing queued work to agents with room, what agents say about their leases
//! (heartbeats, progress, results), and expiry.
//!
//! An agent must list its running leases in a heartbeat at least every `lease_timeout`; a
//! lease not extended in time expires, its work is queued again with the next attempt number,
//! and a result that arrives for it later is refused. Infrastructure failures are retried up
//! to `max_attempts`, then the operation fails with UNAVAILABLE. How each [`LeaseOutcome`]
//! ends a lease:
//!
//! | outcome | operation | REAPI status the client sees |
//! | --- | --- | --- |
//! | COMPLETED | done | OK, with the result |
//! | TIMED_OUT | done | DEADLINE_EXCEEDED, with what the command left |
//! | CANCELLED | done | CANCELLED |
//! | MISSING_INPUTS | done | FAILED_PRECONDITION + `PreconditionFailure` (MISSING per blob) |
//! | INVALID_ACTION | done | INVALID_ARGUMENT |
//! | REFUSED | queued again, no attempt spent; the agent gets no work until its next heartbeat | — |
//! | RETRYABLE (and lease expiry) | queued again, or UNAVAILABLE once `max_attempts` are spent | UNAVAILABLE at the end |

use std::time::Duration;

use tessera_cas::digest::{Digest, DigestFunction};
use tessera_proto::reapi::ExecuteResponse;
use tessera_proto::rpc;
use tessera_proto::tessera::v1::{
    AgentMessage, CoordinatorMessage, Lease, LeaseOutcome, LeaseProgress, LeaseResult,
    agent_message, coordinator_message,
};
use tessera_proto::time::to_proto_duration;
use tonic::Code;

use super::actor::{Scheduler, enqueue};
use super::handle::AgentTx;
use crate::execution::operation::{OpEvent, OpState, StepPartial, lease_id};
use crate::execution::platform::Platform;

fn status(code: Code, message: impl Into<String>) -> rpc::Status {
    rpc::Status {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    }
}

impl Scheduler {
    pub(super) fn agent_joined(
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
        let now = self.now();
        self.agents.joined(id, session, properties, slots, tx, now);
    }

    pub(super) fn agent_message(&mut self, id: &str, session: u64, message: AgentMessage) {
        let now = self.now();
        let Some(agent) = self.agents.heard_from(id, session, now) else {
            return;
        };
        match message.kind {
            Some(agent_message::Kind::Heartbeat(beat)) => {
                agent.saturated = false;
                let deadline = now.instant + self.config.lease_timeout;
                let held: Vec<&String> = beat
                    .lease_ids
                    .iter()
                    .filter(|lease_id| agent.leases.contains(*lease_id))
                    .collect();
                for lease_id in held {
                    if let Some(name) = self.leases.get(lease_id)
                        && let Some(op) = self.ops.get_mut(name)
                        && let Err(error) = op.op.apply(OpEvent::Heartbeat { deadline })
                    {
                        tracing::error!(%error, "scheduler bug");
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

    /// The operation `lease_id` belongs to, if that lease is its current one, held by
    /// `agent_id` (and, when given, for `attempt`). The lease table holds only current leases
    /// (a lease is released when its operation is queued again or finishes), so finding `id`
    /// there is enough to know it is the operation's latest.
    fn current_lease(&self, id: &str, agent_id: &str, attempt: Option<u32>) -> Option<String> {
        let name = self.leases.get(id)?;
        let op = self.ops.get(name)?;
        match op.op.state() {
            OpState::Leased {
                agent,
                attempt: current,
                ..
            } if agent == agent_id && attempt.is_none_or(|a| a == *current) => Some(name.clone()),
            _ => None,
        }
    }

    /// Test results of a running batch step: shown to the operation's watchers at once.
    fn step_progress(&mut self, agent_id: &str, progress: LeaseProgress) {
        let Some(name) = self.current_lease(&progress.lease_id, agent_id, None) else {
            return;
        };
        let Some(op) = self.ops.get_mut(&name) else {
            return;
        };
        op.op.push_partial(StepPartial {
            agent: agent_id.to_owned(),
            results_json: progress.step_results_json,
        });
        op.publish();
    }

    pub(super) fn lease_result(&mut self, agent_id: &str, mut result: LeaseResult) {
        let Some(name) = self.current_lease(&result.lease_id, agent_id, Some(result.attempt))
        else {
            self.stats.stale_results += 1;
            tracing::info!(agent = %agent_id, lease = %result.lease_id, attempt = result.attempt,
                "refusing result for a lease that is no longer current");
            return;
        };
        self.release_lease(agent_id, &result.lease_id);
        // Inline outputs (stored before this, see `services::agent_session`) hashed with
        // another function than the action's are not its outputs.
        let function = self.ops[&name].op.spec().digest_function;
        if result.digest_function != 0
            && DigestFunction::from_request(result.digest_function)
                .ok()
                .zip(DigestFunction::from_request(function).ok())
                .is_none_or(|(sent, wanted)| sent != wanted)
        {
            result.message = format!(
                "the result's inline outputs are of digest function {}, the action's is {}",
                result.digest_function, function
            );
            result.outcome = LeaseOutcome::Retryable as i32;
            result.result = None;
        }
        let outcome = lease_outcome(&result);
        let message = if result.outcome == LeaseOutcome::Unspecified as i32 {
            format!("the agent's result names no outcome ({})", result.message)
        } else {
            result.message.clone()
        };
        let final_status = match outcome {
            LeaseOutcome::Completed => Some(rpc::Status::default()),
            LeaseOutcome::TimedOut => Some(status(Code::DeadlineExceeded, message.clone())),
            LeaseOutcome::Cancelled => Some(status(Code::Cancelled, message.clone())),
            LeaseOutcome::InvalidAction => Some(status(Code::InvalidArgument, message.clone())),
            LeaseOutcome::MissingInputs => Some(self.missing_inputs(&name, &result, &message)),
            LeaseOutcome::Refused | LeaseOutcome::Retryable | LeaseOutcome::Unspecified => None,
        };
        if let Some(status) = final_status {
            let response = ExecuteResponse {
                result: result.result,
                cached_result: false,
                status: Some(status),
                server_logs: Default::default(),
                message: String::new(),
            };
            self.finish(&name, response);
        } else if outcome == LeaseOutcome::Refused {
            tracing::debug!(operation = %name, agent = %agent_id, %message, "lease refused");
            if let Some(agent) = self.agents.get_mut(agent_id) {
                agent.saturated = true;
            }
            let spent = self.ops[&name].op.attempts().saturating_sub(1);
            if spent >= self.config.max_attempts {
                // Only after a restart with a lower limit than the record's attempts.
                self.fail_exhausted(&name, spent, &message);
            } else {
                self.requeue(&name, OpEvent::Refused);
            }
        } else {
            tracing::warn!(operation = %name, agent = %agent_id, ?outcome, %message,
                "infrastructure failure");
            self.retry_or_fail(&name, &format!("agent {agent_id}: {message}"));
        }
    }

    /// FAILED_PRECONDITION naming each blob the agent found missing.
    fn missing_inputs(&self, name: &str, result: &LeaseResult, message: &str) -> rpc::Status {
        let function = self
            .ops
            .get(name)
            .map_or(0, |op| op.op.spec().digest_function);
        let missing: Vec<Digest> = DigestFunction::from_request(function)
            .map(|f| {
                result
                    .missing
                    .iter()
                    .filter_map(|d| Digest::from_proto(f, d).ok())
                    .collect()
            })
            .unwrap_or_default();
        crate::status::missing_inputs_status(message.to_owned(), &missing)
    }

    /// Removes the lease from the lease table and from the agent holding it.
    pub(super) fn release_lease(&mut self, agent: &str, lease_id: &str) {
        self.leases.remove(lease_id);
        self.agents.release(agent, lease_id);
    }

    /// Queues a leased operation again (`event` is `Refused` or `Requeued`).
    fn requeue(&mut self, name: &str, event: OpEvent) {
        let Some(op) = self.ops.get_mut(name) else {
            return;
        };
        if let Err(error) = op.op.apply(event) {
            tracing::error!(%error, "scheduler bug");
            return;
        }
        op.publish();
        op.queued_at = self.clock.now();
        enqueue(&mut self.queue, &op.op);
    }

    /// After a lease ended without an answer: queued again, or failed once every attempt is
    /// spent.
    fn retry_or_fail(&mut self, name: &str, why: &str) {
        let Some(op) = self.ops.get(name) else {
            return;
        };
        let attempts = op.op.attempts();
        if attempts >= self.config.max_attempts {
            self.fail_exhausted(name, attempts, why);
        } else {
            self.requeue(name, OpEvent::Requeued);
        }
    }

    /// Ends an operation whose attempts are all spent with UNAVAILABLE.
    fn fail_exhausted(&mut self, name: &str, attempts: u32, why: &str) {
        let response = ExecuteResponse {
            status: Some(status(
                Code::Unavailable,
                format!("action failed {attempts} times on agents; last failure: {why}"),
            )),
            ..Default::default()
        };
        self.finish(name, response);
    }

    /// Queues again the work of every lease past its deadline.
    pub(super) fn expire_leases(&mut self) {
        let now = self.now().instant;
        let expired: Vec<(String, String, String)> = self
            .leases
            .iter()
            .filter_map(|(lease_id, name)| {
                let op = self.ops.get(name)?;
                match op.op.state() {
                    OpState::Leased {
                        agent, deadline, ..
                    } if *deadline <= now => Some((name.clone(), lease_id.clone(), agent.clone())),
                    _ => None,
                }
            })
            .collect();
        for (name, lease_id, agent) in expired {
            self.stats.expired_leases += 1;
            crate::metrics::metrics().lease_expired();
            tracing::warn!(operation = %name, lease = %lease_id, agent = %agent, "lease expired; queueing again");
            if let Some(entry) = self.agents.get(&agent) {
                entry.send_cancel(&lease_id);
            }
            self.release_lease(&agent, &lease_id);
            self.retry_or_fail(
                &name,
                &format!("lease expired on agent {agent} (no heartbeat)"),
            );
        }
    }

    /// Hands queued work to every responsive agent with room, until the queue or the room
    /// runs out.
    pub(super) fn dispatch(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let ids = self
            .agents
            .responsive(self.now().instant, self.config.lease_timeout);
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
                if !agent.has_room() {
                    break;
                }
                let Some(tx) = agent.tx.clone() else {
                    break;
                };
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

    /// Sends `agent_id` a lease on operation `name`, just taken from the queue.
    fn lease(&mut self, agent_id: &str, name: &str, tx: &AgentTx) {
        let now = self.now();
        let deadline = now.instant + self.config.lease_timeout;
        let Some(entry) = self.ops.get_mut(name) else {
            return;
        };
        let spec = entry.op.spec();
        let attempt = entry.op.attempts() + 1;
        let lease_id = lease_id(&spec.name, attempt);
        let lease = Lease {
            lease_id: lease_id.clone(),
            attempt,
            instance_name: spec.instance_name.clone(),
            action_digest: spec.action_digest.clone(),
            digest_function: spec.digest_function,
            action: spec.action.clone(),
            command: spec.command.clone(),
            timeout: Some(to_proto_duration(Duration::from_millis(
                u64::try_from(spec.timeout_ms).unwrap_or(0),
            ))),
            secrets: entry.secrets.clone(),
            trace_context: entry.trace.clone(),
            input_directories: entry.carried.directories().to_vec(),
            input_files: entry.carried.files().to_vec(),
        };
        if tx
            .try_send(Ok(CoordinatorMessage {
                kind: Some(coordinator_message::Kind::Lease(lease)),
            }))
            .is_err()
        {
            // The session is gone or jammed: leave the work queued for another agent.
            enqueue(&mut self.queue, &entry.op);
            if let Some(agent) = self.agents.get_mut(agent_id) {
                agent.tx = None;
            }
            return;
        }
        let event = OpEvent::Leased {
            agent: agent_id.to_owned(),
            deadline,
        };
        if let Err(error) = entry.op.apply(event) {
            tracing::error!(%error, "scheduler bug");
            return;
        }
        entry.publish();
        crate::metrics::metrics().action_leased(
            now.instant
                .saturating_duration_since(entry.queued_at.instant),
        );
        entry.leased_at = Some(now);
        let op = &self.ops[name].op;
        self.persist(op);
        self.leases.insert(lease_id.clone(), name.to_owned());
        self.agents.hold(agent_id, lease_id, now);
    }
}

/// How a lease ended. An agent of this protocol always says; a result without an outcome is
/// malformed and counts as a retryable failure of that agent.
fn lease_outcome(result: &LeaseResult) -> LeaseOutcome {
    match LeaseOutcome::try_from(result.outcome) {
        Ok(LeaseOutcome::Unspecified) | Err(_) => LeaseOutcome::Retryable,
        Ok(outcome) => outcome,
    }
}

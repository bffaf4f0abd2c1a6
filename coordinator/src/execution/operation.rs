//! The lifecycle of one operation: its state as an enum with one transition function, the
//! [`Operation`] that owns it (and derives the persisted record from it), and the snapshot that
//! clients watching it see.
//!
//! States are built only here: a new operation starts queued, a recovered one is rebuilt from
//! its record by replaying what the record says (`Recovered` for a lease held when the
//! coordinator stopped), and every later change is an [`OpEvent`] through [`transition`]:
//!
//! | state | event | next state |
//! | --- | --- | --- |
//! | `Queued { attempts: n }` | `Leased` | `Leased { attempt: n + 1 }` |
//! | `Queued { attempts: n ≥ 1 }` | `Recovered` | `Leased { attempt: n }` (the lease the record names) |
//! | `Leased` | `Heartbeat` | `Leased`, deadline moved |
//! | `Leased { attempt: n }` | `Refused` | `Queued { attempts: n - 1 }` (never started: no attempt spent) |
//! | `Leased { attempt: n }` | `Requeued` | `Queued { attempts: n }` (expired or infrastructure error) |
//! | `Leased` | `Finished` | `Done` |
//! | `Queued`, `Leased` | `Cancelled` | `Done` (status CANCELLED) |
//! | anything else | | [`IllegalTransition`] |
//!
//! Does not know about queues, agents or the metadata store: the scheduler does.

use std::time::{Duration, Instant};

use prost::Message;
use tessera_proto::longrunning::{Operation as LongrunningOperation, operation};
use tessera_proto::reapi::{
    Digest as ProtoDigest, ExecuteOperationMetadata, ExecuteResponse, execution_stage,
};
use tessera_proto::rpc;
use tessera_proto::tessera::v1::OperationRecord;
use thiserror::Error;

use super::clock::Stamp;
use super::platform::Platform;

/// Where an operation is.
#[derive(Debug, Clone, PartialEq)]
pub enum OpState {
    /// Waiting for an agent.
    Queued {
        /// Attempts started so far (and ended without a final answer).
        attempts: u32,
    },
    /// An agent holds a lease on it.
    Leased {
        /// The agent holding it.
        agent: String,
        /// The attempt this lease is (1 for the first).
        attempt: u32,
        /// When the lease expires unless heartbeats extend it.
        deadline: Instant,
    },
    /// Finished (with a result, an error status, or cancelled).
    Done {
        /// Attempts started in all.
        attempts: u32,
        /// The final answer.
        response: Box<ExecuteResponse>,
        /// When it finished, wall clock (persisted).
        completed_unix_ms: i64,
        /// When it finished (or was recovered finished), for retention.
        completed_at: Instant,
    },
}

/// What can happen to an operation.
#[derive(Debug, Clone, PartialEq)]
pub enum OpEvent {
    /// An agent took it: the next attempt starts.
    Leased {
        /// The agent.
        agent: String,
        /// The lease deadline.
        deadline: Instant,
    },
    /// After a restart: the record says `agent` held the latest attempt, which stays valid
    /// until `deadline` (the agent may still report it when it reconnects).
    Recovered {
        /// The agent named by the record.
        agent: String,
        /// The lease deadline.
        deadline: Instant,
    },
    /// The agent holding the lease says it still runs it.
    Heartbeat {
        /// The new deadline.
        deadline: Instant,
    },
    /// The agent refused the lease without starting it: queued again, no attempt spent.
    Refused,
    /// The lease ended without a usable result (expired, infrastructure error): queued again,
    /// the attempt spent.
    Requeued,
    /// A final answer arrived (result, error status, or retries exhausted).
    Finished {
        /// The answer.
        response: Box<ExecuteResponse>,
        /// When.
        at: Stamp,
    },
    /// The client cancelled it.
    Cancelled {
        /// When.
        at: Stamp,
    },
}

/// An event that does not apply to the state it arrived in.
#[derive(Debug, Error, PartialEq)]
#[error("illegal transition: {event:?} in state {state:?}")]
pub struct IllegalTransition {
    /// The state.
    pub state: OpState,
    /// The event.
    pub event: OpEvent,
}

/// The one place operation states change.
pub fn transition(state: &OpState, event: OpEvent) -> Result<OpState, Box<IllegalTransition>> {
    let next = match (state, &event) {
        (OpState::Queued { attempts }, OpEvent::Leased { agent, deadline }) => OpState::Leased {
            agent: agent.clone(),
            attempt: attempts + 1,
            deadline: *deadline,
        },
        (OpState::Queued { attempts }, OpEvent::Recovered { agent, deadline }) if *attempts > 0 => {
            OpState::Leased {
                agent: agent.clone(),
                attempt: *attempts,
                deadline: *deadline,
            }
        }
        (OpState::Leased { agent, attempt, .. }, OpEvent::Heartbeat { deadline }) => {
            OpState::Leased {
                agent: agent.clone(),
                attempt: *attempt,
                deadline: *deadline,
            }
        }
        (OpState::Leased { attempt, .. }, OpEvent::Refused) => OpState::Queued {
            attempts: attempt.saturating_sub(1),
        },
        (OpState::Leased { attempt, .. }, OpEvent::Requeued) => {
            OpState::Queued { attempts: *attempt }
        }
        (OpState::Leased { attempt, .. }, OpEvent::Finished { response, at }) => OpState::Done {
            attempts: *attempt,
            response: response.clone(),
            completed_unix_ms: at.unix_ms,
            completed_at: at.instant,
        },
        (
            OpState::Queued { attempts }
            | OpState::Leased {
                attempt: attempts, ..
            },
            OpEvent::Cancelled { at },
        ) => OpState::Done {
            attempts: *attempts,
            response: Box::new(cancelled_response()),
            completed_unix_ms: at.unix_ms,
            completed_at: at.instant,
        },
        _ => {
            return Err(Box::new(IllegalTransition {
                state: state.clone(),
                event,
            }));
        }
    };
    Ok(next)
}

/// What a cancelled operation answers.
fn cancelled_response() -> ExecuteResponse {
    ExecuteResponse {
        status: Some(rpc::Status {
            code: tonic::Code::Cancelled as i32,
            message: "cancelled by the client".to_owned(),
            details: Vec::new(),
        }),
        ..Default::default()
    }
}

/// Lease ids are the operation's id and the attempt: unique, never reused, and the same after
/// a restart for a lease recovered from the record.
pub fn lease_id(operation: &str, attempt: u32) -> String {
    format!("{}#{attempt}", operation.trim_start_matches("operations/"))
}

/// One operation: what to run (the record's fixed part) and where it is.
#[derive(Debug)]
pub struct Operation {
    /// Name, action, command, platform, priority, requester, timeouts: never changes. Its
    /// state fields (`attempts`, `leased_to`, `done`, `response`, `completed_unix_ms`) are
    /// not read; [`Operation::record`] fills them from the state.
    spec: OperationRecord,
    platform: Platform,
    state: OpState,
    partial: Vec<StepPartial>,
}

impl Operation {
    /// A new operation, queued.
    pub fn new(spec: OperationRecord, platform: Platform) -> Self {
        Operation {
            spec: fixed_part(spec),
            platform,
            state: OpState::Queued { attempts: 0 },
            partial: Vec::new(),
        }
    }

    /// An operation rebuilt from its persisted record after a restart: finished ones stay
    /// finished (retention counts from `now`), a lease the record names is honoured until
    /// `now + lease_timeout`, anything else is queued with the attempts it had spent.
    pub fn restore(record: OperationRecord, now: Stamp, lease_timeout: Duration) -> Self {
        let platform = Platform::new(
            record
                .platform
                .iter()
                .map(|p| (p.name.clone(), p.value.clone())),
        );
        let attempts = record.attempts;
        let state = if record.done {
            OpState::Done {
                attempts,
                response: Box::new(record.response.clone().unwrap_or_default()),
                completed_unix_ms: record.completed_unix_ms,
                completed_at: now.instant,
            }
        } else {
            OpState::Queued { attempts }
        };
        let leased_to = record.leased_to.clone();
        let mut op = Operation {
            spec: fixed_part(record),
            platform,
            state,
            partial: Vec::new(),
        };
        if !leased_to.is_empty() && matches!(op.state, OpState::Queued { attempts } if attempts > 0)
        {
            let recovered = OpEvent::Recovered {
                agent: leased_to,
                deadline: now.instant + lease_timeout,
            };
            if let Err(error) = op.apply(recovered) {
                tracing::error!(%error, "scheduler bug: cannot recover a lease");
            }
        }
        op
    }

    /// Applies `event` through [`transition`]; on an illegal one the state is unchanged.
    pub fn apply(&mut self, event: OpEvent) -> Result<(), Box<IllegalTransition>> {
        self.state = transition(&self.state, event)?;
        Ok(())
    }

    /// The operation's name (`operations/...`).
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The persisted fields that never change.
    pub fn spec(&self) -> &OperationRecord {
        &self.spec
    }

    /// The platform it needs.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// Where it is.
    pub fn state(&self) -> &OpState {
        &self.state
    }

    /// Whether it has finished.
    pub fn is_done(&self) -> bool {
        matches!(self.state, OpState::Done { .. })
    }

    /// Attempts started so far, the running one included.
    pub fn attempts(&self) -> u32 {
        match &self.state {
            OpState::Queued { attempts } | OpState::Done { attempts, .. } => *attempts,
            OpState::Leased { attempt, .. } => *attempt,
        }
    }

    /// The current lease's id and agent, when leased.
    pub fn lease(&self) -> Option<(String, &str)> {
        match &self.state {
            OpState::Leased { agent, attempt, .. } => {
                Some((lease_id(&self.spec.name, *attempt), agent.as_str()))
            }
            _ => None,
        }
    }

    /// Records results a running batch step reported, for watchers.
    pub fn push_partial(&mut self, partial: StepPartial) {
        self.partial.push(partial);
    }

    /// The record to persist: the fixed part plus what the state says.
    pub fn record(&self) -> OperationRecord {
        let mut record = self.spec.clone();
        match &self.state {
            OpState::Queued { attempts } => record.attempts = *attempts,
            OpState::Leased { agent, attempt, .. } => {
                record.attempts = *attempt;
                record.leased_to.clone_from(agent);
            }
            OpState::Done {
                attempts,
                response,
                completed_unix_ms,
                ..
            } => {
                record.attempts = *attempts;
                record.done = true;
                record.response = Some((**response).clone());
                record.completed_unix_ms = *completed_unix_ms;
            }
        }
        record
    }

    /// What watchers see now.
    pub fn snapshot(&self) -> OpSnapshot {
        let (stage, response) = match &self.state {
            OpState::Queued { .. } => (execution_stage::Value::Queued, None),
            OpState::Leased { .. } => (execution_stage::Value::Executing, None),
            OpState::Done { response, .. } => (
                execution_stage::Value::Completed,
                Some((**response).clone()),
            ),
        };
        OpSnapshot {
            name: self.spec.name.clone(),
            stage,
            action_digest: self.spec.action_digest.clone().unwrap_or_default(),
            digest_function: self.spec.digest_function,
            response,
            partial: self.partial.clone(),
        }
    }
}

/// `record` without its state fields.
fn fixed_part(mut record: OperationRecord) -> OperationRecord {
    record.attempts = 0;
    record.leased_to.clear();
    record.done = false;
    record.response = None;
    record.completed_unix_ms = 0;
    record
}

/// What a client watching an operation sees.
#[derive(Debug, Clone, PartialEq)]
pub struct OpSnapshot {
    /// Operation name.
    pub name: String,
    /// REAPI stage.
    pub stage: execution_stage::Value,
    /// The action.
    pub action_digest: ProtoDigest,
    /// Its digest function.
    pub digest_function: i32,
    /// Present when done.
    pub response: Option<ExecuteResponse>,
    /// Test results a builtin batch step reported before it ended, oldest first, over every
    /// attempt (see `tessera.v1.LeaseProgress.step_results_json`).
    pub partial: Vec<StepPartial>,
}

/// Test results an agent reported while a batch step was running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPartial {
    /// The agent running it.
    pub agent: String,
    /// JSON array of `tessera_runners::TestResult`.
    pub results_json: String,
}

impl OpSnapshot {
    /// As a `google.longrunning.Operation`: metadata always, the response once done, never
    /// `error` (REAPI: errors go in `ExecuteResponse.status`).
    pub fn to_operation(&self) -> LongrunningOperation {
        let metadata = ExecuteOperationMetadata {
            stage: self.stage as i32,
            action_digest: Some(self.action_digest.clone()),
            digest_function: self.digest_function,
            ..Default::default()
        };
        LongrunningOperation {
            name: self.name.clone(),
            metadata: Some(prost_types::Any {
                type_url:
                    "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata"
                        .to_owned(),
                value: metadata.encode_to_vec(),
            }),
            done: self.response.is_some(),
            result: self.response.as_ref().map(|response| {
                operation::Result::Response(prost_types::Any {
                    type_url: "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse"
                        .to_owned(),
                    value: response.encode_to_vec(),
                })
            }),
        }
    }
}

#[cfg(test)]
mod tests;

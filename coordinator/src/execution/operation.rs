//! The lifecycle of one operation, as an enum with one transition function, and the snapshot
//! that clients watching it see.

use std::time::Instant;

use prost::Message;
use tessera_proto::longrunning::{Operation, operation};
use tessera_proto::reapi::{
    Digest as ProtoDigest, ExecuteOperationMetadata, ExecuteResponse, execution_stage,
};
use thiserror::Error;

/// Where an operation is.
#[derive(Debug, Clone, PartialEq)]
pub enum OpState {
    /// Waiting for an agent.
    Queued,
    /// An agent holds a lease on it.
    Leased {
        /// The lease.
        lease_id: String,
        /// The agent holding it.
        agent: String,
        /// The attempt this lease is.
        attempt: u32,
        /// When the lease expires unless heartbeats extend it.
        deadline: Instant,
    },
    /// Finished (with a result, an error status, or cancelled).
    Done,
}

/// What can happen to an operation.
#[derive(Debug, Clone, PartialEq)]
pub enum OpEvent {
    /// An agent took it.
    Leased {
        /// The lease.
        lease_id: String,
        /// The agent.
        agent: String,
        /// The attempt number.
        attempt: u32,
        /// The lease deadline.
        deadline: Instant,
    },
    /// The lease ended without a usable result (expired, infrastructure error): run it again.
    Requeued,
    /// A final answer arrived (result, error status, or retries exhausted).
    Finished,
    /// The client cancelled it.
    Cancelled,
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
    match (state, event) {
        (
            OpState::Queued,
            OpEvent::Leased {
                lease_id,
                agent,
                attempt,
                deadline,
            },
        ) => Ok(OpState::Leased {
            lease_id,
            agent,
            attempt,
            deadline,
        }),
        (OpState::Leased { .. }, OpEvent::Requeued) => Ok(OpState::Queued),
        (OpState::Leased { .. } | OpState::Queued, OpEvent::Finished | OpEvent::Cancelled) => {
            Ok(OpState::Done)
        }
        (state, event) => Err(Box::new(IllegalTransition {
            state: state.clone(),
            event,
        })),
    }
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
    pub fn to_operation(&self) -> Operation {
        let metadata = ExecuteOperationMetadata {
            stage: self.stage as i32,
            action_digest: Some(self.action_digest.clone()),
            digest_function: self.digest_function,
            ..Default::default()
        };
        Operation {
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
mod tests {
    use super::*;

    fn leased() -> OpEvent {
        OpEvent::Leased {
            lease_id: "l1".into(),
            agent: "a".into(),
            attempt: 1,
            deadline: Instant::now(),
        }
    }

    #[test]
    fn the_normal_path_and_a_retry() {
        let s = transition(&OpState::Queued, leased()).unwrap();
        assert!(matches!(s, OpState::Leased { attempt: 1, .. }));
        let s = transition(&s, OpEvent::Requeued).unwrap();
        assert_eq!(s, OpState::Queued);
        let s = transition(&s, leased()).unwrap();
        assert_eq!(transition(&s, OpEvent::Finished).unwrap(), OpState::Done);
    }

    #[test]
    fn done_is_final_and_queued_work_cannot_be_requeued() {
        for event in [
            leased(),
            OpEvent::Requeued,
            OpEvent::Finished,
            OpEvent::Cancelled,
        ] {
            assert!(transition(&OpState::Done, event).is_err());
        }
        assert!(transition(&OpState::Queued, OpEvent::Requeued).is_err());
        let s = transition(&OpState::Queued, leased()).unwrap();
        assert!(
            transition(&s, leased()).is_err(),
            "a leased operation is not leased twice"
        );
    }

    #[test]
    fn snapshots_never_set_operation_error() {
        let snap = OpSnapshot {
            name: "operations/x".into(),
            stage: execution_stage::Value::Completed,
            action_digest: ProtoDigest::default(),
            digest_function: 1,
            response: Some(ExecuteResponse::default()),
            partial: Vec::new(),
        };
        let op = snap.to_operation();
        assert!(op.done);
        assert!(matches!(op.result, Some(operation::Result::Response(_))));
    }
}

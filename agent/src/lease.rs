//! How a lease ends: the typed outcome of one lease ([`RunOutcome`], [`LeaseError`]) and what
//! the coordinator is told about it ([`Report`]). The pipeline that produces the outcome is
//! `pipeline`; the session sends the report.
//!
//! A [`RunOutcome`] says what happened, not an error. The `LeaseOutcome` the coordinator is
//! told for every way a lease can end is chosen in one place, [`Report::of`]; it is Tessera's
//! own outcome, not a gRPC code: the coordinator alone decides what a REAPI client sees.
//!
//! | how the lease ended | outcome | result |
//! | --- | --- | --- |
//! | command ran (any exit code) | COMPLETED | outputs, stdout/stderr, exit code, metadata |
//! | timed out | TIMED_OUT | stdout/stderr so far, exit code |
//! | cancelled by the coordinator | CANCELLED | none |
//! | stopped because the agent is stopping | RETRYABLE | none |
//! | inputs missing from the CAS | MISSING_INPUTS, `missing` lists them | none |
//! | bad lease, tree, command, platform, outputs or step spec | INVALID_ACTION | none |
//! | a secret's placeholder without its value (or a value without a placeholder) | INVALID_ACTION | none |
//! | CAS unreachable, local cache full | RETRYABLE | none |
//! | local disk or other agent trouble | RETRYABLE | none |
//! | not started: slots busy or draining (`session`) | REFUSED | none |
//! | the agent's lease task failed (`session`) | RETRYABLE | none |
//!
//! Every outcome but COMPLETED carries a message saying why. For a lease with secret values,
//! everything in the result (stdout, stderr, output files, test results) and the message has
//! the values masked as `***` (see `mask`). The agent names missing blobs by digest only; the
//! coordinator builds the REAPI `PreconditionFailure` from them.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tessera_cas::client::ClientError;
use tessera_cas::digest::Digest;
use tessera_proto::reapi::ActionResult;
use tessera_proto::tessera::v1::{Lease, LeaseOutcome, LeaseResult};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::cache::FetchError;
use crate::exec_root::ExecRootError;
use crate::materialize::MaterializeError;
use crate::outputs::OutputError;
use crate::pipeline::SecretError;
use crate::platform::PlatformError;
use crate::sandbox::SpawnError;
use crate::step::{PersistPathError, StepError};
use tessera_runners::step::StepArgvError;

/// Where in the pipeline something happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Checking the lease, fetching and laying out inputs.
    Fetch,
    /// Running the command.
    Execute,
    /// Collecting and uploading outputs.
    Upload,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Fetch => "fetching inputs",
            Stage::Execute => "executing",
            Stage::Upload => "uploading outputs",
        })
    }
}

/// Why a lease was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The coordinator sent `CancelLease`.
    Coordinator,
    /// The agent is stopping (drain timeout or abort): the work should run elsewhere.
    AgentStopping,
}

/// Cancels one lease, remembering why (the first reason given wins).
#[derive(Debug, Clone, Default)]
pub struct LeaseCancel {
    token: CancellationToken,
    reason: Arc<OnceLock<CancelReason>>,
}

impl LeaseCancel {
    /// A lease that is not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels the lease.
    pub fn cancel(&self, reason: CancelReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Fires when the lease is cancelled.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Why it was cancelled (`Coordinator` if not known).
    pub fn reason(&self) -> CancelReason {
        self.reason
            .get()
            .copied()
            .unwrap_or(CancelReason::Coordinator)
    }
}

/// How a lease ended. An outcome, not an error: a failing command is a normal end.
#[derive(Debug)]
pub enum RunOutcome {
    /// The command exited 0.
    Passed,
    /// The command exited non-zero (or was killed by a signal: 128+N).
    Failed {
        /// Its exit code.
        exit_code: i32,
    },
    /// The command ran past the lease's timeout and was stopped.
    TimedOut {
        /// The timeout.
        after: Duration,
    },
    /// The lease was cancelled.
    Cancelled {
        /// By whom.
        reason: CancelReason,
    },
    /// The command did not run to an end: the action is malformed, its inputs are missing, or
    /// the agent failed. [`LeaseError::outcome`] says which.
    Error {
        /// Where it failed.
        stage: Stage,
        /// What went wrong.
        error: LeaseError,
    },
}

impl RunOutcome {
    /// True unless the command ran and exited 0.
    pub fn is_failure(&self) -> bool {
        !matches!(self, RunOutcome::Passed)
    }
}

/// Why a lease could not be run to an end.
#[derive(Debug, Error)]
pub enum LeaseError {
    /// The lease lacks the action or command, or its fields are malformed.
    #[error("malformed lease: {0}")]
    BadLease(String),
    /// The command names a builtin step, but not in the form the agent reads.
    #[error("malformed lease: {0}")]
    StepArgv(#[from] StepArgvError),
    /// A prepare step asks to keep a directory it may not.
    #[error("malformed lease: {0}")]
    PersistPath(#[from] PersistPathError),
    /// The action's platform asks for something the agent cannot read.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// The input root could not be fetched or laid out.
    #[error(transparent)]
    Inputs(#[from] MaterializeError),
    /// The command could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// Outputs could not be collected or uploaded.
    #[error(transparent)]
    Outputs(#[from] OutputError),
    /// The CAS could not be reached.
    #[error("failed to connect to the CAS: {0}")]
    Cas(#[from] ClientError),
    /// The fixed exec root could not be set up.
    #[error(transparent)]
    ExecRoot(#[from] ExecRootError),
    /// A builtin step could not be run.
    #[error(transparent)]
    Step(#[from] StepError),
    /// The lease's secret values do not fit its command's placeholders.
    #[error("malformed lease: {0}")]
    Secrets(#[from] SecretError),
    /// A local filesystem operation failed.
    #[error("failed to {op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl LeaseError {
    /// The outcome the coordinator is told: whose fault it is and whether to retry.
    pub fn outcome(&self) -> LeaseOutcome {
        use LeaseOutcome::{InvalidAction, MissingInputs, Retryable};
        match self {
            LeaseError::BadLease(_)
            | LeaseError::StepArgv(_)
            | LeaseError::PersistPath(_)
            | LeaseError::Secrets(_)
            | LeaseError::Platform(_) => InvalidAction,
            LeaseError::Inputs(error) => match error {
                MaterializeError::Fetch(FetchError::Missing(_)) => MissingInputs,
                MaterializeError::Fetch(FetchError::Cas(_) | FetchError::Evicted(_)) => Retryable,
                // No room in the local cache: another agent may have it.
                MaterializeError::Fetch(FetchError::Store(
                    tessera_cas::store::StoreError::Full { .. },
                )) => Retryable,
                MaterializeError::InvalidTree(_) | MaterializeError::Decode { .. } => InvalidAction,
                MaterializeError::Fetch(FetchError::Store(_) | FetchError::Task(_))
                | MaterializeError::NotCached(_)
                | MaterializeError::Io { .. } => Retryable,
            },
            LeaseError::Spawn(error) if error.is_user_error() => InvalidAction,
            LeaseError::ExecRoot(error) if error.is_user_error() => InvalidAction,
            // The host is in the way (a directory where the exec root goes, a disk error).
            LeaseError::ExecRoot(_) | LeaseError::Step(_) => Retryable,
            LeaseError::Outputs(error) if error.is_user_error() => InvalidAction,
            LeaseError::Outputs(OutputError::Upload(_)) | LeaseError::Cas(_) => Retryable,
            LeaseError::Spawn(_) | LeaseError::Outputs(_) | LeaseError::Io { .. } => Retryable,
        }
    }

    /// Blobs the CAS lacks, for `LeaseResult.missing`.
    pub fn missing_blobs(&self) -> &[Digest] {
        match self {
            LeaseError::Inputs(MaterializeError::Fetch(FetchError::Missing(digests))) => digests,
            _ => &[],
        }
    }
}

/// How a lease ended, as the coordinator is told: the fields of a `LeaseResult` besides the
/// action's result (see the table in the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The outcome.
    pub outcome: LeaseOutcome,
    /// Why, for every outcome but COMPLETED.
    pub message: String,
    /// For MISSING_INPUTS: the blobs the CAS lacks.
    pub missing: Vec<Digest>,
}

impl Report {
    /// An outcome with its message and no missing blobs.
    pub fn new(outcome: LeaseOutcome, message: impl Into<String>) -> Self {
        Report {
            outcome,
            message: message.into(),
            missing: Vec::new(),
        }
    }

    /// What the coordinator is told about a lease that ended with `outcome`.
    pub fn of(outcome: &RunOutcome) -> Self {
        match outcome {
            RunOutcome::Passed | RunOutcome::Failed { .. } => {
                Report::new(LeaseOutcome::Completed, "")
            }
            RunOutcome::TimedOut { after } => Report::new(
                LeaseOutcome::TimedOut,
                format!(
                    "command timed out after {}",
                    humantime::format_duration(*after)
                ),
            ),
            RunOutcome::Cancelled {
                reason: CancelReason::Coordinator,
            } => Report::new(LeaseOutcome::Cancelled, "lease cancelled"),
            // The work is fine; it should run elsewhere.
            RunOutcome::Cancelled {
                reason: CancelReason::AgentStopping,
            } => Report::new(
                LeaseOutcome::Retryable,
                "the agent stopped before the action finished",
            ),
            RunOutcome::Error { stage, error } => Report {
                outcome: error.outcome(),
                message: format!("{stage}: {error}"),
                missing: error.missing_blobs().to_vec(),
            },
        }
    }

    /// The `LeaseResult` answering `lease` with this outcome and `result`.
    pub fn into_result(self, lease: &Lease, result: Option<ActionResult>) -> LeaseResult {
        LeaseResult {
            lease_id: lease.lease_id.clone(),
            attempt: lease.attempt,
            result,
            outcome: self.outcome as i32,
            message: self.message,
            missing: self.missing.iter().map(Digest::to_proto).collect(),
            blobs: Vec::new(),
            digest_function: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tessera_cas::digest::DigestFunction;

    use super::*;

    #[test]
    fn outcomes_say_whose_fault_it_is() {
        let outcome = |outcome: RunOutcome| Report::of(&outcome).outcome;
        assert_eq!(outcome(RunOutcome::Passed), LeaseOutcome::Completed);
        assert_eq!(
            outcome(RunOutcome::Failed { exit_code: 1 }),
            LeaseOutcome::Completed
        );
        assert_eq!(
            outcome(RunOutcome::TimedOut {
                after: Duration::from_secs(1)
            }),
            LeaseOutcome::TimedOut
        );
        assert_eq!(
            outcome(RunOutcome::Cancelled {
                reason: CancelReason::Coordinator
            }),
            LeaseOutcome::Cancelled
        );
        assert_eq!(
            outcome(RunOutcome::Cancelled {
                reason: CancelReason::AgentStopping
            }),
            LeaseOutcome::Retryable
        );
        assert_eq!(
            outcome(RunOutcome::Error {
                stage: Stage::Fetch,
                error: LeaseError::BadLease("x".into())
            }),
            LeaseOutcome::InvalidAction
        );
    }

    #[test]
    fn errors_are_classified_as_before_outcomes_existed() {
        // Each row: the error, and the outcome standing for the gRPC code it used to carry.
        let full = tessera_cas::store::StoreError::Full {
            digest: DigestFunction::Sha256.digest_of(b"big"),
            needed: 1,
            budget: 0,
            pinned: 0,
        };
        let io = || std::io::Error::other("disk");
        let rows: Vec<(LeaseError, LeaseOutcome)> = vec![
            // FAILED_PRECONDITION
            (
                LeaseError::Inputs(MaterializeError::Fetch(FetchError::Missing(Vec::new()))),
                LeaseOutcome::MissingInputs,
            ),
            // UNAVAILABLE
            (
                LeaseError::Inputs(MaterializeError::Fetch(FetchError::Store(full))),
                LeaseOutcome::Retryable,
            ),
            // INTERNAL
            (
                LeaseError::Io {
                    op: "create".into(),
                    source: io(),
                },
                LeaseOutcome::Retryable,
            ),
            (
                LeaseError::Step(StepError::Io {
                    op: "write".into(),
                    source: io(),
                }),
                LeaseOutcome::Retryable,
            ),
            // INVALID_ARGUMENT
            (
                LeaseError::Spawn(SpawnError::NoArguments),
                LeaseOutcome::InvalidAction,
            ),
            (
                LeaseError::Spawn(SpawnError::Prepare {
                    path: PathBuf::from("/x"),
                    source: io(),
                }),
                LeaseOutcome::Retryable,
            ),
            (
                LeaseError::PersistPath(PersistPathError {
                    path: PathBuf::from("/abs"),
                }),
                LeaseOutcome::InvalidAction,
            ),
        ];
        for (error, expected) in rows {
            assert_eq!(error.outcome(), expected, "{error}");
        }
    }

    #[test]
    fn missing_inputs_are_named_by_digest() {
        let digest = DigestFunction::Sha256.digest_of(b"gone");
        let outcome = RunOutcome::Error {
            stage: Stage::Fetch,
            error: LeaseError::Inputs(MaterializeError::Fetch(FetchError::Missing(vec![digest]))),
        };
        let report = Report::of(&outcome);
        assert_eq!(report.outcome, LeaseOutcome::MissingInputs);
        assert!(
            report.message.contains(&digest.hash_hex()),
            "{}",
            report.message
        );
        assert_eq!(report.missing, [digest]);
        let lease = Lease {
            lease_id: "l".into(),
            attempt: 2,
            ..Lease::default()
        };
        let result = report.into_result(&lease, None);
        assert_eq!((result.lease_id.as_str(), result.attempt), ("l", 2));
        assert_eq!(result.outcome, LeaseOutcome::MissingInputs as i32);
        assert_eq!(result.missing, [digest.to_proto()]);
    }

    #[test]
    fn cancel_remembers_the_first_reason() {
        let cancel = LeaseCancel::new();
        assert!(!cancel.token().is_cancelled());
        cancel.cancel(CancelReason::AgentStopping);
        cancel.cancel(CancelReason::Coordinator);
        assert!(cancel.token().is_cancelled());
        assert_eq!(cancel.reason(), CancelReason::AgentStopping);
    }
}

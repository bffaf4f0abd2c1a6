//! The words for the protocol's enums in everything people and scripts read (JSON, JUnit,
//! pages, status lines): `passed`, `timed_out`, `infrastructure`, ... Written once, for the CLI
//! and the coordinator alike.

use crate::tessera::v1::{JobPhase, JobResult, TestOutcome};

/// The word for an outcome (`passed`, `timed_out`, ...).
pub fn outcome_name(outcome: TestOutcome) -> &'static str {
    match outcome {
        TestOutcome::Unknown => "unknown",
        TestOutcome::Passed => "passed",
        TestOutcome::Failed => "failed",
        TestOutcome::Error => "error",
        TestOutcome::Skipped => "skipped",
        TestOutcome::TimedOut => "timed_out",
        TestOutcome::Flaky => "flaky",
        TestOutcome::NoResult => "no_result",
        TestOutcome::Cancelled => "cancelled",
    }
}

/// The word for a job result (`passed`, `failed`, `error`, `infrastructure`, `cancelled`).
pub fn result_name(result: JobResult) -> &'static str {
    match result {
        JobResult::Unknown => "unknown",
        JobResult::Passed => "passed",
        JobResult::Failed => "failed",
        JobResult::Error => "error",
        JobResult::Infrastructure => "infrastructure",
        JobResult::Cancelled => "cancelled",
    }
}

/// The word for a phase.
pub fn phase_name(phase: JobPhase) -> &'static str {
    match phase {
        JobPhase::Unknown => "unknown",
        JobPhase::Queued => "queued",
        JobPhase::Preparing => "preparing",
        JobPhase::Listing => "listing",
        JobPhase::Running => "running",
        JobPhase::Done => "done",
    }
}

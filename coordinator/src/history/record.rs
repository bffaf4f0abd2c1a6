//! The records the history keeps, as they are stored (JSON, so a field added later reads as its
//! default in older records) and shown (the dashboard's JSON answers are these same shapes).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A finished job, as the jobs list shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobRecord {
    /// The job's id.
    pub id: String,
    /// Who submitted it (the token's name, `name/WHO` on someone's behalf).
    pub submitter: String,
    /// The command line it was submitted with.
    pub title: String,
    /// The project (`JobSpec.project`): quarantines are kept per project.
    pub project: String,
    /// The REAPI instance it ran in.
    pub instance: String,
    /// Its labels (`JobSpec.labels`).
    pub labels: BTreeMap<String, String>,
    /// When it was accepted, Unix ms.
    pub created_unix_ms: u64,
    /// Accepted to finished, ms.
    pub wall_ms: u64,
    /// Sum of the durations of the tests that ran, ms.
    pub serial_ms: u64,
    /// `passed`, `failed`, `error`, `infrastructure` or `cancelled` ([`result_name`]).
    pub result: String,
    /// For error, infrastructure and cancelled: what happened.
    pub message: String,
    /// Tests counted by final outcome.
    pub passed: u32,
    /// Failed tests (quarantined ones included).
    pub failed: u32,
    /// Skipped tests.
    pub skipped: u32,
    /// Tests that failed and then passed.
    pub flaky: u32,
    /// Tests that ran out of time.
    pub timed_out: u32,
    /// Tests whose final outcome is an error outside the test's body.
    pub errors: u32,
    /// Tests answered from the result cache.
    pub cached: u32,
    /// Tests that never ran (cancelled, fail-fast).
    pub not_run: u32,
    /// Quarantined tests that failed (not counted against the result).
    pub quarantined: u32,
    /// Final results recorded (the sum of the above, subtests included).
    pub total: u32,
    /// Batches handed to agents (every attempt counts).
    pub batches: u32,
}

impl JobRecord {
    /// The command that runs this job again, as the user would type it.
    pub fn rerun_command(&self) -> String {
        rerun_command(&self.title)
    }
}

/// The command that runs a job submitted with `title` (the command line, `spec::title`) again.
pub fn rerun_command(title: &str) -> String {
    let title = title.trim();
    if title.is_empty() {
        String::new()
    } else if title.starts_with("tessera ") {
        title.to_owned()
    } else {
        format!("tessera {title}")
    }
}

/// One batch of a job as it ran on an agent: where the wall time went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchSpan {
    /// The agent that ran it.
    pub agent: String,
    /// The matrix cell (empty for a plain run).
    pub cell: String,
    /// When it started and ended, ms after the job was accepted.
    pub start_ms: u64,
    /// See `start_ms`.
    pub end_ms: u64,
    /// Tests it ran.
    pub tests: u32,
    /// Of those, tests whose run failed.
    pub failed: u32,
}

/// One final result of a test in one job: a line of the test's history page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunRecord {
    /// The job.
    pub job: String,
    /// When the job was accepted, Unix ms.
    pub created_unix_ms: u64,
    /// [`outcome_name`] of the final outcome.
    pub outcome: String,
    /// How long the final run took, µs (0 when unknown).
    pub duration_us: u64,
    /// Runs it took (1: no retry).
    pub attempts: u32,
    /// Answered from the result cache.
    pub cached: bool,
    /// The agent of the final run (empty for cached results).
    pub agent: String,
    /// The job's REAPI instance.
    pub instance: String,
    /// The job's project and submitter, and the matrix cell.
    pub project: String,
    /// See `project`.
    pub submitter: String,
    /// See `project`.
    pub cell: String,
    /// Quarantined in that job.
    pub quarantined: bool,
}

/// A test's last runs (at most 64), one bit each, newest in bit 0: which were flaky (failed,
/// then passed on a retry) and which failed for good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlakeWindow {
    /// Runs recorded, at most 64.
    pub runs: u32,
    /// Bit i: the i-th newest run was flaky.
    pub flaky: u64,
    /// Bit i: the i-th newest run failed.
    pub failed: u64,
    /// When the newest run's job was accepted, Unix ms.
    pub last_unix_ms: u64,
}

impl FlakeWindow {
    /// The most runs a window holds.
    pub const CAPACITY: u32 = 64;

    /// The window with one more run, the newest.
    pub fn push(self, flaky: bool, failed: bool, at_unix_ms: u64) -> Self {
        FlakeWindow {
            runs: (self.runs + 1).min(Self::CAPACITY),
            flaky: (self.flaky << 1) | u64::from(flaky),
            failed: (self.failed << 1) | u64::from(failed),
            last_unix_ms: self.last_unix_ms.max(at_unix_ms),
        }
    }

    fn mask(&self, last: u32) -> (u64, u32) {
        let n = last.min(self.runs).min(Self::CAPACITY);
        let mask = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
        (mask, n)
    }

    /// Flaky runs among the newest `last`, and how many runs that is.
    pub fn flaky_in(&self, last: u32) -> (u32, u32) {
        let (mask, n) = self.mask(last);
        ((self.flaky & mask).count_ones(), n)
    }

    /// Failed runs among the newest `last`.
    pub fn failed_in(&self, last: u32) -> u32 {
        let (mask, _) = self.mask(last);
        (self.failed & mask).count_ones()
    }

    /// Flaky runs over runs among the newest `last` (0 with no runs).
    pub fn flake_rate(&self, last: u32) -> f64 {
        match self.flaky_in(last) {
            (_, 0) => 0.0,
            (flaky, n) => f64::from(flaky) / f64::from(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flake_window_keeps_the_newest_64_runs() {
        let mut w = FlakeWindow::default();
        assert_eq!(w.flake_rate(10), 0.0);
        w = w.push(true, false, 1);
        for t in 0..9 {
            w = w.push(false, t == 0, 2 + t);
        }
        assert_eq!(w.runs, 10);
        assert_eq!(w.flaky_in(10), (1, 10));
        assert_eq!(w.flaky_in(9), (0, 9), "the flaky run is the oldest");
        assert_eq!(w.failed_in(10), 1);
        assert!((w.flake_rate(20) - 0.1).abs() < 1e-9, "only 10 runs exist");
        for _ in 0..100 {
            w = w.push(true, false, 5);
        }
        assert_eq!(w.runs, 64);
        assert_eq!(w.flaky_in(64), (64, 64));
        assert_eq!(w.last_unix_ms, 10, "the newest time, not the last pushed");
    }

    #[test]
    fn the_rerun_command_is_what_the_user_typed() {
        assert_eq!(
            rerun_command("run -- pytest -x"),
            "tessera run -- pytest -x"
        );
        assert_eq!(
            rerun_command("tessera run -- cargo test"),
            "tessera run -- cargo test"
        );
        assert_eq!(rerun_command(""), "");
    }
}

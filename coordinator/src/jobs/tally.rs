//! Counting a job's final outcomes, and its last event: what the job's result is, given the
//! tally and the reason it stopped, if any. The counts are those of the final test events the
//! job emitted, restored ones included, so they agree with the tests its clients saw.
//!
//! A quarantined test (`quarantine.rs`) counts under its true outcome like any other, and a
//! quarantined failure also in `quarantined`; the result ignores exactly those.

use std::time::Duration;

use tessera_proto::tessera::v1::{JobFinished, JobResult, TestFinished, TestOutcome};
use tessera_proto::time::{from_proto_duration, to_proto_duration};

use super::driver::Stop;

/// Final outcomes counted so far.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) passed: u32,
    pub(super) failed: u32,
    pub(super) skipped: u32,
    pub(super) flaky: u32,
    pub(super) timed_out: u32,
    pub(super) errors: u32,
    /// Passes answered from the result cache (also counted in `passed`).
    pub(super) cached: u32,
    pub(super) not_run: u32,
    /// Failures (failed, error, timed out, no result) of quarantined tests (also counted under
    /// their outcome).
    pub(super) quarantined: u32,
    /// The sum of every run's duration, retries included.
    pub(super) serial: Duration,
    /// Batches handed to agents (every attempt).
    pub(super) batches: u32,
    /// Tool processes the agents started for the batches.
    pub(super) tool_startups: u32,
}

impl Tally {
    /// A tally that starts from the final results an earlier run of the coordinator reported.
    pub(super) fn restored<'a>(finals: impl IntoIterator<Item = &'a TestFinished>) -> Self {
        let mut tally = Tally::default();
        for test in finals {
            // Counted in the metrics by the run that reported it.
            tally.tally(test.outcome());
            if test.quarantined && fails_the_job(test.outcome()) {
                tally.quarantined += 1;
            }
            if test.cached {
                tally.cached += 1;
            }
            if let Some(took) = test.duration.as_ref().and_then(from_proto_duration) {
                tally.serial += took;
            }
        }
        tally
    }

    /// Adds `other`'s counts (another matrix cell of the same job) to these.
    pub(super) fn add(&mut self, other: &Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
        self.flaky += other.flaky;
        self.timed_out += other.timed_out;
        self.errors += other.errors;
        self.cached += other.cached;
        self.not_run += other.not_run;
        self.quarantined += other.quarantined;
        self.serial += other.serial;
        self.batches += other.batches;
        self.tool_startups += other.tool_startups;
    }

    /// Counts one final outcome, here and in the metrics (`tessera_tests_total`).
    pub(super) fn count(&mut self, outcome: TestOutcome) {
        self.tally(outcome);
        if let Some(label) = crate::metrics::test_outcome(outcome) {
            crate::metrics::metrics().test_finished(label);
        }
    }

    /// Counts the final outcome of a test that may be `quarantined`: a quarantined failure
    /// counts under its outcome and in `quarantined`.
    pub(super) fn count_test(&mut self, outcome: TestOutcome, quarantined: bool) {
        self.count(outcome);
        if quarantined && fails_the_job(outcome) {
            self.quarantined += 1;
        }
    }

    fn tally(&mut self, outcome: TestOutcome) {
        match outcome {
            TestOutcome::Passed => self.passed += 1,
            TestOutcome::Flaky => self.flaky += 1,
            TestOutcome::Skipped => self.skipped += 1,
            TestOutcome::TimedOut => self.timed_out += 1,
            TestOutcome::Failed | TestOutcome::NoResult | TestOutcome::Unknown => self.failed += 1,
            TestOutcome::Error => self.errors += 1,
            TestOutcome::Cancelled => self.not_run += 1,
        }
    }

    /// Tests with a final outcome.
    pub(super) fn done(&self) -> u32 {
        self.passed
            + self.failed
            + self.errors
            + self.skipped
            + self.flaky
            + self.timed_out
            + self.not_run
    }

    /// The job's last event: its result from `stop` (why it stopped early, if it did) and
    /// the tally, which ran for `wall`.
    pub(super) fn finished(&self, stop: Option<Stop>, wall: Duration) -> JobFinished {
        let (result, message, log) = match stop {
            // Quarantined failures are among these, and only they may be ignored.
            None if self.failed + self.errors + self.timed_out > self.quarantined => {
                (JobResult::Failed, String::new(), String::new())
            }
            None => (JobResult::Passed, String::new(), String::new()),
            // The failure that stopped it is in the tally and its test's event.
            Some(Stop::FailFast { .. }) => (JobResult::Failed, String::new(), String::new()),
            Some(Stop::Error { message, log }) => (JobResult::Error, message, log),
            Some(Stop::Infrastructure(message)) => {
                (JobResult::Infrastructure, message, String::new())
            }
            Some(Stop::Cancelled) => (
                JobResult::Cancelled,
                "the job was cancelled".to_owned(),
                String::new(),
            ),
        };
        JobFinished {
            result: result as i32,
            message,
            passed: self.passed,
            failed: self.failed,
            skipped: self.skipped,
            flaky: self.flaky,
            timed_out: self.timed_out,
            cached: self.cached,
            not_run: self.not_run,
            wall: Some(to_proto_duration(wall)),
            serial: Some(to_proto_duration(self.serial)),
            log,
            errors: self.errors,
            batches: self.batches,
            tool_startups: self.tool_startups,
            cells: Vec::new(),
            quarantined: self.quarantined,
        }
    }
}

/// Whether `outcome` fails a job (unless its test is quarantined): the outcomes counted in
/// `failed`, `errors` and `timed_out`.
fn fails_the_job(outcome: TestOutcome) -> bool {
    matches!(
        outcome,
        TestOutcome::Failed
            | TestOutcome::NoResult
            | TestOutcome::Unknown
            | TestOutcome::Error
            | TestOutcome::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use tessera_runners::TestId;

    use super::*;

    #[test]
    fn failures_are_counted_as_failed() {
        let mut tally = Tally::default();
        for outcome in [
            TestOutcome::Passed,
            TestOutcome::Failed,
            TestOutcome::NoResult,
            TestOutcome::Flaky,
            TestOutcome::Cancelled,
        ] {
            tally.count(outcome);
        }
        assert_eq!(
            (tally.passed, tally.failed, tally.flaky, tally.not_run),
            (1, 2, 1, 1)
        );
        assert_eq!(tally.done(), 5);
    }

    #[test]
    fn restored_results_count_as_they_were_reported() {
        let test = |outcome: TestOutcome, cached: bool| TestFinished {
            outcome: outcome as i32,
            r#final: true,
            cached,
            duration: Some(to_proto_duration(Duration::from_millis(500))),
            ..TestFinished::default()
        };
        let finals = [
            test(TestOutcome::Passed, true),
            test(TestOutcome::Failed, false),
            test(TestOutcome::Skipped, false),
        ];
        let tally = Tally::restored(&finals);
        assert_eq!(
            (tally.passed, tally.failed, tally.skipped, tally.cached),
            (1, 1, 1, 1)
        );
        assert_eq!(tally.done(), 3);
        assert_eq!(tally.serial, Duration::from_millis(1500));
        assert_eq!(
            tally.finished(None, Duration::ZERO).result(),
            JobResult::Failed
        );
    }

    #[test]
    fn quarantined_failures_are_reported_but_do_not_fail_the_job() {
        let mut tally = Tally::default();
        tally.count_test(TestOutcome::Passed, false);
        tally.count_test(TestOutcome::Failed, true);
        tally.count_test(TestOutcome::TimedOut, true);
        // A quarantined pass or flake is nothing to ignore.
        tally.count_test(TestOutcome::Flaky, true);
        let finished = tally.finished(None, Duration::ZERO);
        assert_eq!(finished.result(), JobResult::Passed);
        assert_eq!(
            (
                finished.failed,
                finished.timed_out,
                finished.flaky,
                finished.quarantined
            ),
            (1, 1, 1, 2)
        );
        // One failure that is not quarantined fails it.
        tally.count_test(TestOutcome::Error, false);
        assert_eq!(
            tally.finished(None, Duration::ZERO).result(),
            JobResult::Failed
        );

        // Restored results count their quarantine as they were reported.
        let restored = [TestFinished {
            outcome: TestOutcome::Failed as i32,
            r#final: true,
            quarantined: true,
            ..TestFinished::default()
        }];
        let tally = Tally::restored(&restored);
        assert_eq!((tally.failed, tally.quarantined), (1, 1));
        assert_eq!(
            tally.finished(None, Duration::ZERO).result(),
            JobResult::Passed
        );
    }

    #[test]
    fn the_result_follows_the_stop_and_then_the_tally() {
        let mut tally = Tally::default();
        tally.count(TestOutcome::Passed);
        let result = |tally: &Tally, stop| tally.finished(stop, Duration::ZERO).result();
        assert_eq!(result(&tally, None), JobResult::Passed);
        let fail_fast = Stop::FailFast {
            test: TestId::new("g", "t"),
        };
        assert_eq!(result(&tally, Some(fail_fast)), JobResult::Failed);
        assert_eq!(result(&tally, Some(Stop::Cancelled)), JobResult::Cancelled);
        tally.count(TestOutcome::TimedOut);
        assert_eq!(result(&tally, None), JobResult::Failed);
        let error = Stop::Error {
            message: "the list step failed".into(),
            log: "log".into(),
        };
        let finished = tally.finished(Some(error), Duration::ZERO);
        assert_eq!(finished.result(), JobResult::Error);
        assert_eq!(
            (finished.message.as_str(), finished.log.as_str()),
            ("the list step failed", "log")
        );
    }
}

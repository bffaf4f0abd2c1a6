//! What every view of a job needs: counts of final test results, the planned total, the last
//! progress report, the finished event, and the names of the words the views print.

use std::time::Duration;

use tessera_proto::tessera::v1::{
    JobEvent, JobFinished, JobPhase, JobResult, Progress, TestFinished, TestOutcome, TestsPlanned,
    job_event::Kind,
};
use tessera_proto::time::from_proto_duration;

use crate::exit::Exit;

/// A view of a job's events (human, JSON, JUnit).
pub trait EventSink {
    /// One event of the job, in `seq` order, each exactly once.
    fn event(&mut self, event: &JobEvent, tally: &Tally);
    /// A note from the client itself (re-attaching, cancelling), not from the job.
    fn note(&mut self, _text: &str) {}
    /// The job ended (after the finished event went through [`Self::event`]).
    fn close(&mut self, _tally: &Tally) {}
}

/// Counts of final results and the latest state of the job, updated event by event.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// The job's id.
    pub job_id: String,
    /// Last event seen; a re-attached watch asks for events after it.
    pub last_seq: u64,
    /// The current phase.
    pub phase: JobPhase,
    /// The plan, once the tests are listed.
    pub planned: Option<TestsPlanned>,
    /// The latest progress report.
    pub progress: Option<Progress>,
    /// Final results so far.
    pub passed: u32,
    /// Final failures so far (timed out and no result included).
    pub failed: u32,
    /// Errors so far (pytest's setup and import errors, go build failures).
    pub errors: u32,
    /// Skipped tests so far.
    pub skipped: u32,
    /// Flaky tests so far.
    pub flaky: u32,
    /// Tests answered from the cache so far.
    pub cached: u32,
    /// The finished event, once the job ended.
    pub finished: Option<JobFinished>,
}

impl Tally {
    /// A tally for the job `job_id`.
    pub fn new(job_id: impl Into<String>) -> Self {
        Self {
            job_id: job_id.into(),
            ..Self::default()
        }
    }

    /// Takes one event into account; returns false for an event already seen (a replay after
    /// re-attaching), which the views must skip.
    pub fn apply(&mut self, event: &JobEvent) -> bool {
        if event.seq != 0 && event.seq <= self.last_seq {
            return false;
        }
        self.last_seq = event.seq;
        match &event.kind {
            Some(Kind::Phase(p)) => self.phase = p.phase(),
            Some(Kind::Planned(p)) => self.planned = Some(*p),
            Some(Kind::Progress(p)) => self.progress = Some(*p),
            Some(Kind::Test(t)) if t.r#final => self.count(t),
            Some(Kind::Finished(f)) => {
                self.phase = JobPhase::Done;
                self.finished = Some(f.clone());
            }
            _ => {}
        }
        true
    }

    fn count(&mut self, test: &TestFinished) {
        if test.cached {
            self.cached += 1;
        }
        match test.outcome() {
            TestOutcome::Passed => self.passed += 1,
            TestOutcome::Flaky => self.flaky += 1,
            TestOutcome::Skipped => self.skipped += 1,
            TestOutcome::Failed | TestOutcome::TimedOut | TestOutcome::NoResult => {
                self.failed += 1;
            }
            TestOutcome::Error => self.errors += 1,
            TestOutcome::Cancelled | TestOutcome::Unknown => {}
        }
    }

    /// Tests with a final result so far.
    pub fn done(&self) -> u32 {
        self.passed + self.failed + self.errors + self.skipped + self.flaky
    }

    /// The exit code the job's result calls for; `None` while it runs.
    pub fn exit(&self) -> Option<Exit> {
        self.finished.as_ref().map(exit_for)
    }
}

/// The exit code for a finished job: flaky counts as passed; a broken build (prepare or list
/// failed) is the user's failure like a failing test.
pub fn exit_for(finished: &JobFinished) -> Exit {
    match finished.result() {
        JobResult::Passed => Exit::Success,
        JobResult::Failed | JobResult::Error => Exit::TestsFailed,
        JobResult::Cancelled => Exit::Interrupted,
        JobResult::Infrastructure | JobResult::Unknown => Exit::Infrastructure,
    }
}

/// The last line of every human report: `N passed, N failed`, then `, N errors`, `, N
/// skipped` and `, N flaky` when not zero. Timed-out tests are counted as failed (the line before it says
/// how many of them timed out).
pub fn summary_line(finished: &JobFinished) -> String {
    let mut line = format!(
        "{} passed, {} failed",
        finished.passed,
        finished.failed + finished.timed_out
    );
    if finished.errors > 0 {
        let s = if finished.errors == 1 { "" } else { "s" };
        line.push_str(&format!(", {} error{s}", finished.errors));
    }
    if finished.skipped > 0 {
        line.push_str(&format!(", {} skipped", finished.skipped));
    }
    if finished.flaky > 0 {
        line.push_str(&format!(", {} flaky", finished.flaky));
    }
    line
}

/// The line before the summary: wall time, serial time, speed-up and cache hits, plus timed-out
/// and not-run counts when there are any.
pub fn timing_line(finished: &JobFinished) -> String {
    let wall = duration(finished.wall.as_ref());
    let serial = duration(finished.serial.as_ref());
    let mut line = format!("wall {}, serial {}", seconds(wall), seconds(serial));
    if wall > Duration::ZERO && serial > Duration::ZERO {
        line.push_str(&format!(
            ", speed-up {:.1}x",
            serial.as_secs_f64() / wall.as_secs_f64()
        ));
    }
    line.push_str(&format!(", {} cached", finished.cached));
    if finished.timed_out > 0 {
        line.push_str(&format!(", {} timed out", finished.timed_out));
    }
    if finished.not_run > 0 {
        line.push_str(&format!(", {} not run", finished.not_run));
    }
    line
}

/// A protobuf duration as a std one (negative or missing: zero).
pub fn duration(d: Option<&prost_types::Duration>) -> Duration {
    d.and_then(from_proto_duration).unwrap_or_default()
}

/// `1.23s`, `45ms`, `2m03s`.
pub fn seconds(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.2}s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// The word for an outcome in JSON and JUnit (`passed`, `timed_out`, ...).
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

/// A test's display name: `group name`, or `name` without a group.
pub fn test_name(test: &TestFinished) -> String {
    match &test.test {
        Some(t) if t.group.is_empty() => t.name.clone(),
        Some(t) => format!("{} {}", t.group, t.name),
        None => String::from("?"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(passed: u32, failed: u32, skipped: u32, flaky: u32, timed_out: u32) -> JobFinished {
        JobFinished {
            passed,
            failed,
            skipped,
            flaky,
            timed_out,
            ..JobFinished::default()
        }
    }

    #[test]
    fn the_summary_line_names_skipped_and_flaky_only_when_present() {
        assert_eq!(
            summary_line(&finished(10, 0, 0, 0, 0)),
            "10 passed, 0 failed"
        );
        assert_eq!(
            summary_line(&finished(3, 1, 2, 1, 0)),
            "3 passed, 1 failed, 2 skipped, 1 flaky"
        );
        assert_eq!(
            summary_line(&finished(3, 0, 0, 2, 0)),
            "3 passed, 0 failed, 2 flaky"
        );
        // Timed out counts as failed.
        assert_eq!(summary_line(&finished(1, 1, 0, 0, 2)), "1 passed, 3 failed");
    }

    #[test]
    fn the_timing_line_has_the_speed_up() {
        let mut f = finished(1, 0, 0, 0, 1);
        f.wall = Some(prost_types::Duration {
            seconds: 2,
            nanos: 0,
        });
        f.serial = Some(prost_types::Duration {
            seconds: 7,
            nanos: 0,
        });
        f.cached = 4;
        f.not_run = 2;
        assert_eq!(
            timing_line(&f),
            "wall 2.00s, serial 7.00s, speed-up 3.5x, 4 cached, 1 timed out, 2 not run"
        );
    }

    #[test]
    fn exit_codes_follow_the_job_result() {
        let mut f = JobFinished::default();
        for (result, exit) in [
            (JobResult::Passed, Exit::Success),
            (JobResult::Failed, Exit::TestsFailed),
            (JobResult::Error, Exit::TestsFailed),
            (JobResult::Infrastructure, Exit::Infrastructure),
            (JobResult::Cancelled, Exit::Interrupted),
        ] {
            f.set_result(result);
            assert_eq!(exit_for(&f), exit, "{result:?}");
        }
    }

    #[test]
    fn replayed_events_are_skipped() {
        let mut tally = Tally::new("j");
        let event = |seq| JobEvent {
            seq,
            elapsed_ms: 0,
            kind: Some(Kind::Test(TestFinished {
                outcome: TestOutcome::Passed as i32,
                r#final: true,
                ..TestFinished::default()
            })),
        };
        assert!(tally.apply(&event(1)));
        assert!(tally.apply(&event(2)));
        assert!(!tally.apply(&event(2)));
        assert_eq!(tally.passed, 2);
    }
}

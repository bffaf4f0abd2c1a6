//! What every view of a job needs: counts of final test results, the planned total, the last
//! progress report, the finished event, and the names of the words the views print.
//!
//! The tally is also where the client keeps its promise that every view lists every test
//! exactly once (DESIGN.md §5.5), whatever the coordinator sends: events are taken in `seq`
//! order, each once; a test's first final result is the one every view shows, and a later
//! result for the same test (a coordinator that lost what it reported, then ran the test
//! again) is not shown, with a note when it says something else; the finished event's counts
//! are those of the tests shown, with a note when the coordinator counted otherwise; and a
//! planned test that never got a result fails the run as an infrastructure error instead of
//! vanishing.
//!
//! In a matrix run (`tessera run --matrix`) a test is a test of one cell: results are kept by
//! (cell, test), each cell's plan and counts are kept apart, and the job's plan is the sum of
//! its cells'. Views show a cell as `[NAME=v1]` ([`cell_label`]).

use std::collections::HashMap;
use std::time::Duration;

use tessera_proto::tessera::v1::{
    JobEvent, JobFinished, JobPhase, JobResult, Progress, TestFinished, TestOutcome, TestsPlanned,
    job_event::Kind,
};
use tessera_proto::time::from_proto_duration;

use crate::exit::Exit;

/// A view of a job's events (human, JSON, JUnit).
pub trait EventSink {
    /// One event of the job, in `seq` order, each exactly once, as [`Tally::apply`] passed it.
    fn event(&mut self, event: &JobEvent, tally: &Tally);
    /// A note from the client itself (re-attaching, cancelling), not from the job.
    fn note(&mut self, _text: &str) {}
    /// The job ended (after the finished event went through [`Self::event`]).
    fn close(&mut self, _tally: &Tally) {}
}

/// What [`Tally::apply`] made of an event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    /// The event the views show; `None` for one they must skip (seen already).
    pub event: Option<JobEvent>,
    /// Something the client noticed that the user must hear about.
    pub note: Option<String>,
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
    /// The plan, once the tests are listed (in a matrix run, the sum of the cells' plans).
    pub planned: Option<TestsPlanned>,
    /// Each cell's plan, by cell, as the cells planned (a plain run's one unnamed cell too).
    planned_cells: Vec<(String, TestsPlanned)>,
    /// The latest progress report.
    pub progress: Option<Progress>,
    /// Final results so far.
    pub passed: u32,
    /// Final failures so far (timed out and no result included).
    pub failed: u32,
    /// Of the failures, those that timed out.
    pub timed_out: u32,
    /// Errors so far (pytest's setup and import errors, go build failures).
    pub errors: u32,
    /// Skipped tests so far.
    pub skipped: u32,
    /// Flaky tests so far.
    pub flaky: u32,
    /// Tests that ended without running (the job was cancelled or stopped).
    pub not_run: u32,
    /// Tests answered from the cache so far.
    pub cached: u32,
    /// Of the failures and errors, those of quarantined tests (they do not fail the job).
    pub quarantined: u32,
    /// The first final outcome of each test shown, by cell, group and name.
    finals: HashMap<(String, String, String), TestOutcome>,
    /// Counts of the tests shown of each matrix cell (none in a plain run).
    cells: HashMap<String, JobFinished>,
    /// How many of them are subtests (never planned, so not held against the planned total).
    subtests: usize,
    /// The finished event, once the job ended (with the counts of the tests shown).
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

    /// Takes one event into account and says what the views show of it: nothing for an event
    /// seen already (a replay after re-attaching) or a second result for a test that has one;
    /// the finished event with the counts of the tests shown.
    pub fn apply(&mut self, event: JobEvent) -> Applied {
        if event.seq != 0 && event.seq <= self.last_seq {
            return Applied::default();
        }
        self.last_seq = event.seq;
        let mut note = None;
        match &event.kind {
            Some(Kind::Phase(p)) => self.phase = p.phase(),
            Some(Kind::Planned(p)) => self.plan(p),
            Some(Kind::Progress(p)) => self.progress = Some(p.clone()),
            Some(Kind::Test(t)) => {
                let (group, name) = t
                    .test
                    .as_ref()
                    .map(|r| (r.group.clone(), r.name.clone()))
                    .unwrap_or_default();
                let key = (t.cell.clone(), group, name);
                if let Some(first) = self.finals.get(&key) {
                    if t.r#final && t.outcome() != *first {
                        note = Some(format!(
                            "{} was reported again, {} this time; the first result, {}, stands",
                            shown_name(t),
                            outcome_name(t.outcome()),
                            outcome_name(*first)
                        ));
                    }
                    return Applied { event: None, note };
                }
                if t.r#final {
                    self.finals.insert(key, t.outcome());
                    self.subtests += usize::from(t.subtest);
                    self.count(t);
                }
            }
            Some(Kind::Finished(f)) => {
                self.phase = JobPhase::Done;
                let (finished, said) = self.reconcile(f.clone());
                note = said;
                self.finished = Some(finished.clone());
                return Applied {
                    event: Some(JobEvent {
                        kind: Some(Kind::Finished(finished)),
                        ..event
                    }),
                    note,
                };
            }
            _ => {}
        }
        Applied {
            event: Some(event),
            note,
        }
    }

    /// Takes a cell's plan (again, after a restart: the latest stands) into the job's.
    fn plan(&mut self, planned: &TestsPlanned) {
        match self
            .planned_cells
            .iter_mut()
            .find(|(cell, _)| *cell == planned.cell)
        {
            Some((_, plan)) => plan.clone_from(planned),
            None => self
                .planned_cells
                .push((planned.cell.clone(), planned.clone())),
        }
        let mut sum = TestsPlanned::default();
        let mut expected = Duration::ZERO;
        for (_, plan) in &self.planned_cells {
            sum.total += plan.total;
            sum.cached += plan.cached;
            sum.to_run += plan.to_run;
            expected += duration(plan.expected.as_ref());
        }
        sum.expected = Some(prost_types::Duration {
            seconds: i64::try_from(expected.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(expected.subsec_nanos()).unwrap_or(0),
        });
        self.planned = Some(sum);
    }

    /// Counts of the tests shown of the matrix cell `cell`, as a finished event's counts
    /// (`failed` without the timed out); zero for a cell that reported no test.
    pub fn cell_counts(&self, cell: &str) -> JobFinished {
        self.cells.get(cell).cloned().unwrap_or_default()
    }

    fn count(&mut self, test: &TestFinished) {
        if !test.cell.is_empty() {
            count_into(self.cells.entry(test.cell.clone()).or_default(), test);
        }
        if test.cached {
            self.cached += 1;
        }
        if test.quarantined && fails_the_job(test.outcome()) {
            self.quarantined += 1;
        }
        match test.outcome() {
            TestOutcome::Passed => self.passed += 1,
            TestOutcome::Flaky => self.flaky += 1,
            TestOutcome::Skipped => self.skipped += 1,
            TestOutcome::TimedOut => {
                self.failed += 1;
                self.timed_out += 1;
            }
            TestOutcome::Failed | TestOutcome::NoResult | TestOutcome::Unknown => {
                self.failed += 1;
            }
            TestOutcome::Error => self.errors += 1,
            TestOutcome::Cancelled => self.not_run += 1,
        }
    }

    /// The finished event with the counts of the tests shown, and what to tell the user when
    /// they are not the coordinator's or a planned test never got a result.
    fn reconcile(&self, mut finished: JobFinished) -> (JobFinished, Option<String>) {
        let ours = [
            self.passed,
            self.failed - self.timed_out,
            self.timed_out,
            self.errors,
            self.skipped,
            self.flaky,
            self.not_run,
            self.quarantined,
        ];
        let theirs = [
            finished.passed,
            finished.failed,
            finished.timed_out,
            finished.errors,
            finished.skipped,
            finished.flaky,
            finished.not_run,
            finished.quarantined,
        ];
        let mut notes = Vec::new();
        if ours != theirs {
            notes.push(format!(
                "the coordinator counted {}; the summary counts the {} tests reported",
                summary_line(&finished),
                self.finals.len()
            ));
        }
        [
            finished.passed,
            finished.failed,
            finished.timed_out,
            finished.errors,
            finished.skipped,
            finished.flaky,
            finished.not_run,
            finished.quarantined,
        ] = ours;
        finished.cached = self.cached;
        if matches!(finished.result(), JobResult::Passed | JobResult::Failed) {
            let missing = self.planned.as_ref().map_or(0, |p| {
                (p.total as usize).saturating_sub(self.finals.len() - self.subtests)
            });
            if missing > 0 {
                let message = format!(
                    "{missing} of the {} tests planned were never reported",
                    self.planned.as_ref().map_or(0, |p| p.total)
                );
                notes.push(message.clone());
                finished.set_result(JobResult::Infrastructure);
                finished.message = message;
            } else if self.failed + self.errors > self.quarantined {
                finished.set_result(JobResult::Failed);
            } else {
                finished.set_result(JobResult::Passed);
            }
        }
        let note = (!notes.is_empty()).then(|| notes.join("; "));
        (finished, note)
    }

    /// Tests with a final result so far.
    pub fn done(&self) -> u32 {
        self.passed + self.failed + self.errors + self.skipped + self.flaky
    }

    /// Planned tests with a final result so far: [`Tally::done`] without subtests, which are
    /// reported beside their parents but not planned (the progress bar's position).
    pub fn planned_done(&self) -> u32 {
        self.done()
            .saturating_sub(u32::try_from(self.subtests).unwrap_or(u32::MAX))
    }

    /// The exit code the job's result calls for; `None` while it runs.
    pub fn exit(&self) -> Option<Exit> {
        self.finished.as_ref().map(exit_for)
    }
}

/// Counts one final result into a finished event's counts (`failed` without the timed out).
fn count_into(counts: &mut JobFinished, test: &TestFinished) {
    if test.cached {
        counts.cached += 1;
    }
    if test.quarantined && fails_the_job(test.outcome()) {
        counts.quarantined += 1;
    }
    match test.outcome() {
        TestOutcome::Passed => counts.passed += 1,
        TestOutcome::Flaky => counts.flaky += 1,
        TestOutcome::Skipped => counts.skipped += 1,
        TestOutcome::TimedOut => counts.timed_out += 1,
        TestOutcome::Failed | TestOutcome::NoResult | TestOutcome::Unknown => counts.failed += 1,
        TestOutcome::Error => counts.errors += 1,
        TestOutcome::Cancelled => counts.not_run += 1,
    }
}

/// Whether `outcome` fails a job unless its test is quarantined (as the coordinator counts).
fn fails_the_job(outcome: TestOutcome) -> bool {
    matches!(
        outcome,
        TestOutcome::Failed
            | TestOutcome::NoResult
            | TestOutcome::Unknown
            | TestOutcome::TimedOut
            | TestOutcome::Error
    )
}

/// The exit code for a finished job: flaky counts as passed; a broken build (prepare or list
/// failed) is the user's failure like a failing test. In a matrix run: 3 if any cell hit an
/// infrastructure failure, else 1 if any cell failed, else 0 (130 when cancelled).
pub fn exit_for(finished: &JobFinished) -> Exit {
    let results =
        || std::iter::once(finished.result()).chain(finished.cells.iter().map(|c| c.result()));
    if results().any(|r| matches!(r, JobResult::Infrastructure | JobResult::Unknown)) {
        return Exit::Infrastructure;
    }
    if finished.result() == JobResult::Cancelled {
        return Exit::Interrupted;
    }
    if results().any(|r| matches!(r, JobResult::Failed | JobResult::Error)) {
        return Exit::TestsFailed;
    }
    Exit::Success
}

/// The last line of every human report: `N passed, N failed`, then `, N errors`, `, N
/// skipped`, `, N flaky` and `, N quarantined` (quarantined failures, also counted as failed
/// or errors) when not zero. Timed-out tests are counted as failed (the line before it says
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
    if finished.quarantined > 0 {
        line.push_str(&format!(", {} quarantined", finished.quarantined));
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

pub use tessera_proto::names::{outcome_name, phase_name, result_name};

/// A matrix cell as views show it: `[NAME=v1]` (`[A=1,B=x]` for several names); empty for a
/// plain run's unnamed cell.
pub fn cell_label(cell: &str) -> String {
    if cell.is_empty() {
        String::new()
    } else {
        format!("[{cell}]")
    }
}

/// A test's name as the human view and notes show it: [`test_name`], after its cell's label in
/// a matrix run.
pub fn shown_name(test: &TestFinished) -> String {
    if test.cell.is_empty() {
        test_name(test)
    } else {
        format!("{} {}", cell_label(&test.cell), test_name(test))
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
    fn a_matrix_run_exits_for_its_worst_cell() {
        use tessera_proto::tessera::v1::CellFinished;
        let job = |result: JobResult, cells: &[JobResult]| JobFinished {
            result: result as i32,
            cells: cells
                .iter()
                .enumerate()
                .map(|(i, r)| CellFinished {
                    cell: format!("A={i}"),
                    result: *r as i32,
                    message: String::new(),
                })
                .collect(),
            ..JobFinished::default()
        };
        use JobResult::{Cancelled, Error, Failed, Infrastructure, Passed};
        for (finished, exit) in [
            (job(Passed, &[Passed, Passed]), Exit::Success),
            (job(Failed, &[Passed, Failed]), Exit::TestsFailed),
            (job(Error, &[Error, Failed, Passed]), Exit::TestsFailed),
            // Whatever the job's own result says, a cell's infrastructure failure is exit 3.
            (job(Error, &[Error, Infrastructure]), Exit::Infrastructure),
            (job(Failed, &[Failed, Infrastructure]), Exit::Infrastructure),
            (job(Cancelled, &[Cancelled, Cancelled]), Exit::Interrupted),
            // Fail-fast in one cell stops the others: the job failed.
            (job(Failed, &[Failed, Cancelled]), Exit::TestsFailed),
        ] {
            assert_eq!(exit_for(&finished), exit, "{finished:?}");
        }
    }

    fn in_cell(seq: u64, cell: &str, name: &str, outcome: TestOutcome) -> JobEvent {
        let mut event = test_event(seq, name, outcome, true);
        if let Some(Kind::Test(t)) = &mut event.kind {
            t.cell = cell.to_owned();
        }
        event
    }

    fn planned_event(seq: u64, cell: &str, total: u32) -> JobEvent {
        JobEvent {
            seq,
            elapsed_ms: 0,
            kind: Some(Kind::Planned(TestsPlanned {
                total,
                cell: cell.to_owned(),
                ..TestsPlanned::default()
            })),
        }
    }

    #[test]
    fn a_test_of_two_cells_is_two_results_and_the_plan_is_the_cells_sum() {
        let mut tally = Tally::new("j");
        tally.apply(planned_event(1, "MODE=a", 2));
        tally.apply(planned_event(2, "MODE=b", 2));
        // A cell that plans again (after a restart) replaces its plan; it does not add to it.
        tally.apply(planned_event(3, "MODE=b", 2));
        assert_eq!(tally.planned.as_ref().map(|p| p.total), Some(4));
        assert!(
            tally
                .apply(in_cell(4, "MODE=a", "t", TestOutcome::Passed))
                .event
                .is_some()
        );
        assert!(
            tally
                .apply(in_cell(5, "MODE=b", "t", TestOutcome::Failed))
                .event
                .is_some()
        );
        // The same test of the same cell again is a repeat, said with its cell.
        let again = tally.apply(in_cell(6, "MODE=b", "t", TestOutcome::Passed));
        assert_eq!(again.event, None);
        assert_eq!(
            again.note.as_deref(),
            Some(
                "[MODE=b] g t was reported again, passed this time; the first result, failed, stands"
            )
        );
        tally.apply(in_cell(7, "MODE=a", "u", TestOutcome::TimedOut));
        assert_eq!((tally.passed, tally.failed, tally.timed_out), (1, 2, 1));
        let a = tally.cell_counts("MODE=a");
        assert_eq!((a.passed, a.failed, a.timed_out), (1, 0, 1));
        let b = tally.cell_counts("MODE=b");
        assert_eq!((b.passed, b.failed), (0, 1));
        assert_eq!(tally.cell_counts("MODE=c"), JobFinished::default());
        // Cell b's second test never reported: the run cannot pass as if it had.
        let applied = tally.apply(finished_event(
            8,
            JobFinished {
                result: JobResult::Failed as i32,
                passed: 1,
                failed: 1,
                timed_out: 1,
                ..JobFinished::default()
            },
        ));
        let finished = shown_finished(&applied);
        assert_eq!(finished.result(), JobResult::Infrastructure);
        assert_eq!(
            finished.message,
            "1 of the 4 tests planned were never reported"
        );
    }

    fn test_event(seq: u64, name: &str, outcome: TestOutcome, r#final: bool) -> JobEvent {
        JobEvent {
            seq,
            elapsed_ms: 0,
            kind: Some(Kind::Test(TestFinished {
                test: Some(tessera_proto::tessera::v1::TestRef {
                    group: "g".into(),
                    name: name.into(),
                }),
                outcome: outcome as i32,
                r#final,
                ..TestFinished::default()
            })),
        }
    }

    fn finished_event(seq: u64, f: JobFinished) -> JobEvent {
        JobEvent {
            seq,
            elapsed_ms: 0,
            kind: Some(Kind::Finished(f)),
        }
    }

    fn shown_finished(applied: &Applied) -> JobFinished {
        match applied.event.as_ref().and_then(|e| e.kind.clone()) {
            Some(Kind::Finished(f)) => f,
            other => panic!("not a finished event: {other:?}"),
        }
    }

    #[test]
    fn replayed_events_are_skipped() {
        let mut tally = Tally::new("j");
        assert!(
            tally
                .apply(test_event(1, "a", TestOutcome::Passed, true))
                .event
                .is_some()
        );
        assert!(
            tally
                .apply(test_event(2, "b", TestOutcome::Passed, true))
                .event
                .is_some()
        );
        assert_eq!(
            tally.apply(test_event(2, "b", TestOutcome::Passed, true)),
            Applied::default()
        );
        assert_eq!(tally.passed, 2);
    }

    /// The bug of issue 10: after a coordinator restart a client listed tests twice or not at
    /// all. Whatever the coordinator re-sends, each test is shown once and counted once.
    #[test]
    fn a_test_reported_again_is_shown_and_counted_once_and_a_contradiction_is_said() {
        let mut tally = Tally::new("j");
        tally.apply(test_event(1, "a", TestOutcome::Failed, false));
        tally.apply(test_event(2, "a", TestOutcome::Passed, true));
        tally.apply(test_event(3, "b", TestOutcome::Passed, true));
        // Renumbered after a restart: the same results again, one of them different.
        let same = tally.apply(test_event(10, "b", TestOutcome::Passed, true));
        assert_eq!(same, Applied::default());
        let retry = tally.apply(test_event(11, "a", TestOutcome::Failed, false));
        assert_eq!(retry, Applied::default(), "a retry of a finished test");
        let other = tally.apply(test_event(12, "a", TestOutcome::Failed, true));
        assert_eq!(other.event, None);
        assert_eq!(
            other.note.as_deref(),
            Some("g a was reported again, failed this time; the first result, passed, stands")
        );
        assert_eq!((tally.passed, tally.failed), (2, 0));

        // The coordinator counted the re-run too: the summary counts what was shown.
        let applied = tally.apply(finished_event(
            13,
            JobFinished {
                result: JobResult::Failed as i32,
                passed: 2,
                failed: 1,
                ..JobFinished::default()
            },
        ));
        let finished = shown_finished(&applied);
        assert_eq!((finished.passed, finished.failed), (2, 0));
        assert_eq!(finished.result(), JobResult::Passed);
        assert_eq!(
            applied.note.as_deref(),
            Some(
                "the coordinator counted 2 passed, 1 failed; the summary counts the 2 tests reported"
            )
        );
        assert_eq!(tally.exit(), Some(Exit::Success));
    }

    #[test]
    fn a_quarantined_failure_is_shown_and_counted_but_passes_the_run() {
        let mut tally = Tally::new("j");
        tally.apply(test_event(1, "a", TestOutcome::Passed, true));
        let mut failing = test_event(2, "b", TestOutcome::Failed, true);
        if let Some(Kind::Test(t)) = &mut failing.kind {
            t.quarantined = true;
        }
        tally.apply(failing);
        let applied = tally.apply(finished_event(
            3,
            JobFinished {
                result: JobResult::Passed as i32,
                passed: 1,
                failed: 1,
                quarantined: 1,
                ..JobFinished::default()
            },
        ));
        assert_eq!(applied.note, None);
        let finished = shown_finished(&applied);
        assert_eq!(finished.result(), JobResult::Passed);
        assert_eq!(summary_line(&finished), "1 passed, 1 failed, 1 quarantined");
        assert_eq!(tally.exit(), Some(Exit::Success));

        // Another failure, not quarantined, fails it.
        let mut tally = Tally::new("j");
        let mut failing = test_event(1, "b", TestOutcome::Failed, true);
        if let Some(Kind::Test(t)) = &mut failing.kind {
            t.quarantined = true;
        }
        tally.apply(failing);
        tally.apply(test_event(2, "c", TestOutcome::Error, true));
        let applied = tally.apply(finished_event(
            3,
            JobFinished {
                result: JobResult::Failed as i32,
                failed: 1,
                errors: 1,
                quarantined: 1,
                ..JobFinished::default()
            },
        ));
        assert_eq!(shown_finished(&applied).result(), JobResult::Failed);
        assert_eq!(tally.exit(), Some(Exit::TestsFailed));
    }

    #[test]
    fn a_planned_test_that_never_reported_fails_the_run() {
        let mut tally = Tally::new("j");
        tally.apply(JobEvent {
            seq: 1,
            elapsed_ms: 0,
            kind: Some(Kind::Planned(TestsPlanned {
                total: 3,
                ..TestsPlanned::default()
            })),
        });
        tally.apply(test_event(2, "a", TestOutcome::Passed, true));
        tally.apply(test_event(3, "b", TestOutcome::TimedOut, true));
        let applied = tally.apply(finished_event(
            4,
            JobFinished {
                result: JobResult::Failed as i32,
                passed: 1,
                timed_out: 1,
                ..JobFinished::default()
            },
        ));
        let finished = shown_finished(&applied);
        assert_eq!(finished.result(), JobResult::Infrastructure);
        assert_eq!(
            finished.message,
            "1 of the 3 tests planned were never reported"
        );
        assert_eq!((finished.failed, finished.timed_out), (0, 1));
        assert_eq!(tally.exit(), Some(Exit::Infrastructure));
    }
}

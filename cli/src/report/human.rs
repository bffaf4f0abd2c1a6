//! The human view: a progress bar on a terminal (tests done/total, passed, failed, flaky, busy
//! agent slots, ETA) with failures printed above it, or plain lines when stdout is not a
//! terminal. Both end with the same summary, whose last line is `N passed, N failed`.
//!
//! In a matrix run every line about one cell (its phases, its plan, its tests) starts with the
//! cell as `[NAME=v1]`, and the summary has a line per cell before the job's.

use std::io::Write;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tessera_proto::tessera::v1::{
    JobEvent, JobFinished, JobPhase, JobResult, TestFinished, TestOutcome, job_event::Kind,
};

use super::tally::{
    EventSink, Tally, cell_label, duration, phase_name, seconds, shown_name, summary_line,
    timing_line,
};

/// Lines of a failure's output shown (its end, where the assertion usually is).
const OUTPUT_LINES: usize = 40;
/// Characters of a failure's output shown.
const OUTPUT_CHARS: usize = 6000;

/// Human-readable output: with a live bar on a terminal, else plain lines on `out`.
pub struct Human<W: Write> {
    out: W,
    bar: Option<ProgressBar>,
    last_ahead: Option<u32>,
}

impl Human<std::io::Stdout> {
    /// On stdout, with the bar when `terminal`.
    pub fn stdout(terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
            bar.set_style(spinner_style());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            out: std::io::stdout(),
            bar,
            last_ahead: None,
        }
    }
}

impl<W: Write> Human<W> {
    /// Plain lines on `out`, no bar.
    pub fn plain(out: W) -> Self {
        Self {
            out,
            bar: None,
            last_ahead: None,
        }
    }

    /// The writer (for tests).
    pub fn into_inner(self) -> W {
        self.out
    }

    /// Prints a line (above the bar, if there is one).
    pub fn line(&mut self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => {
                let _ = writeln!(self.out, "{text}");
                let _ = self.out.flush();
            }
        }
    }

    fn status(&mut self, text: String) {
        match &self.bar {
            Some(bar) => bar.set_message(text),
            None => self.line(&text),
        }
    }

    fn test(&mut self, test: &TestFinished) {
        let name = shown_name(test);
        let took = seconds(duration(test.duration.as_ref()));
        let agent = if test.agent.is_empty() {
            String::new()
        } else {
            format!(", on {}", test.agent)
        };
        match (test.outcome(), test.r#final) {
            (
                TestOutcome::Failed
                | TestOutcome::Error
                | TestOutcome::TimedOut
                | TestOutcome::NoResult,
                false,
            ) => {
                self.line(&format!(
                    "RETRY   {name} (attempt {} {}{agent})",
                    test.attempt,
                    word(test.outcome())
                ));
            }
            (
                outcome @ (TestOutcome::Failed
                | TestOutcome::Error
                | TestOutcome::TimedOut
                | TestOutcome::NoResult),
                true,
            ) => {
                let label = match outcome {
                    TestOutcome::TimedOut => "TIMEOUT",
                    TestOutcome::NoResult => "NO RESULT",
                    TestOutcome::Error => "ERROR",
                    _ => "FAIL",
                };
                let quarantined = if test.quarantined {
                    ", quarantined: does not fail the job"
                } else {
                    ""
                };
                let mut text = format!(
                    "{label:<7} {name} ({took}, attempt {}{agent}{quarantined})",
                    test.attempt
                );
                let output = truncate_output(&test.output);
                if !output.is_empty() {
                    for line in output.lines() {
                        text.push_str("\n    ");
                        text.push_str(line);
                    }
                }
                self.line(&text);
            }
            (TestOutcome::Flaky, _) => {
                self.line(&format!(
                    "FLAKY   {name} (passed on attempt {} after {} failure{})",
                    test.attempt,
                    test.failed_attempts.len().max(1),
                    if test.failed_attempts.len() > 1 {
                        "s"
                    } else {
                        ""
                    }
                ));
            }
            _ => {}
        }
    }

    /// Bar position and message from the tally and the latest progress report.
    fn refresh_bar(&self, tally: &Tally) {
        let Some(bar) = &self.bar else {
            return;
        };
        let mut msg = format!(
            "{} passed, {} failed, {} flaky",
            tally.passed, tally.failed, tally.flaky
        );
        if tally.errors > 0 {
            msg.push_str(&format!(", {} errors", tally.errors));
        }
        // The job's plan, not the latest progress report's: in a matrix run that is one cell's.
        if let Some(planned) = &tally.planned {
            bar.set_length(u64::from(planned.total));
        }
        if let Some(p) = &tally.progress {
            msg.push_str(&format!(
                " | {} agents, {}/{} slots busy",
                p.agents, p.busy_slots, p.total_slots
            ));
            let eta = duration(p.eta.as_ref());
            if eta > Duration::ZERO {
                msg.push_str(&format!(" | ETA {}", seconds(eta)));
            }
        }
        bar.set_position(u64::from(tally.planned_done()));
        bar.set_message(msg);
    }
}

/// A matrix run's summary line per cell, in the job's order of cells: `[A=1] N passed, N
/// failed`, and how the cell ended when it did not run to its end.
fn cell_lines(finished: &JobFinished, tally: &Tally) -> Vec<String> {
    finished
        .cells
        .iter()
        .map(|cell| {
            let counts = tally.cell_counts(&cell.cell);
            let ended = match cell.result() {
                JobResult::Passed | JobResult::Failed => "",
                JobResult::Error => " (stopped: its prepare or list step failed)",
                JobResult::Infrastructure => " (stopped: infrastructure failure)",
                JobResult::Cancelled => " (cancelled)",
                JobResult::Unknown => " (no result)",
            };
            format!(
                "{} {}{ended}",
                cell_label(&cell.cell),
                summary_line(&counts)
            )
        })
        .collect()
}

fn word(outcome: TestOutcome) -> &'static str {
    match outcome {
        TestOutcome::TimedOut => "timed out",
        TestOutcome::NoResult => "gave no result",
        TestOutcome::Error => "had an error",
        _ => "failed",
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// The end of a test's output: at most [`OUTPUT_LINES`] lines and [`OUTPUT_CHARS`]
/// characters, with a note saying how much was left out.
pub fn truncate_output(output: &str) -> String {
    let trimmed = output.trim_end();
    let lines: Vec<&str> = trimmed.lines().collect();
    let start = lines.len().saturating_sub(OUTPUT_LINES);
    let mut kept = lines[start..].join("\n");
    let mut cut_chars = false;
    if kept.chars().count() > OUTPUT_CHARS {
        let skip = kept.chars().count() - OUTPUT_CHARS;
        kept = kept.chars().skip(skip).collect();
        cut_chars = true;
    }
    if start > 0 || cut_chars {
        format!(
            "... ({} of {} lines shown; --json and --junit have more, `tessera logs JOB TEST` all of it)\n{kept}",
            kept.lines().count(),
            lines.len()
        )
    } else {
        kept
    }
}

impl<W: Write> EventSink for Human<W> {
    fn event(&mut self, event: &JobEvent, tally: &Tally) {
        match &event.kind {
            Some(Kind::Phase(p)) => {
                if p.phase() == JobPhase::Done {
                    return;
                }
                let mut text = phase_name(p.phase()).to_owned();
                if !p.cell.is_empty() {
                    text = format!("{} {text}", cell_label(&p.cell));
                }
                if !p.detail.is_empty() {
                    text.push_str(&format!(" ({})", p.detail));
                }
                if let Some(bar) = &self.bar {
                    bar.set_message(text.clone());
                }
                if self.bar.is_none() || p.phase() != JobPhase::Queued {
                    self.line(&text);
                }
            }
            Some(Kind::Queue(q)) => {
                if self.last_ahead == Some(q.ahead) {
                    return;
                }
                self.last_ahead = Some(q.ahead);
                if q.ahead > 0 {
                    self.status(format!("queued: {} operations ahead", q.ahead));
                }
            }
            Some(Kind::Planned(p)) => {
                let mut text = format!("{} tests, {} cached", p.total, p.cached);
                if !p.cell.is_empty() {
                    text = format!("{} {text}", cell_label(&p.cell));
                }
                if p.to_run > 0 {
                    let expected = duration(p.expected.as_ref());
                    text.push_str(&format!(", {} to run", p.to_run));
                    if expected > Duration::ZERO {
                        text.push_str(&format!(" (about {} serial)", seconds(expected)));
                    }
                }
                self.line(&text);
                if let Some(bar) = &self.bar {
                    bar.set_style(bar_style());
                    bar.set_length(u64::from(
                        tally.planned.as_ref().map_or(p.total, |p| p.total),
                    ));
                    bar.set_position(u64::from(tally.planned_done()));
                }
            }
            Some(Kind::Test(t)) => {
                self.test(t);
                self.refresh_bar(tally);
            }
            Some(Kind::Progress(_)) => self.refresh_bar(tally),
            Some(Kind::Log(l)) => {
                for line in l.text.lines() {
                    self.line(line);
                }
            }
            Some(Kind::Finished(f)) => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                match f.result() {
                    JobResult::Passed | JobResult::Failed => {}
                    JobResult::Error => {
                        self.line(&format!("error: {}", f.message));
                        let log = truncate_output(&f.log);
                        for line in log.lines() {
                            self.line(&format!("    {line}"));
                        }
                    }
                    JobResult::Infrastructure => {
                        self.line(&format!("infrastructure failure: {}", f.message));
                    }
                    JobResult::Cancelled => self.line(&format!("cancelled: {}", f.message)),
                    JobResult::Unknown => self.line("the job ended without a result"),
                }
                for line in cell_lines(f, tally) {
                    self.line(&line);
                }
                self.line(&timing_line(f));
                self.line(&summary_line(f));
            }
            None => {}
        }
    }

    fn note(&mut self, text: &str) {
        self.line(&format!("tessera: {text}"));
    }

    fn close(&mut self, _tally: &Tally) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_proto::tessera::v1::{
        JobFinished, PhaseChanged, QueuePosition, TestRef, TestsPlanned,
    };

    use super::*;

    fn ev(seq: u64, kind: Kind) -> JobEvent {
        JobEvent {
            seq,
            elapsed_ms: 0,
            kind: Some(kind),
        }
    }

    fn passed(name: &str, cached: bool) -> Kind {
        Kind::Test(TestFinished {
            test: Some(TestRef {
                group: "g".into(),
                name: name.into(),
            }),
            outcome: TestOutcome::Passed as i32,
            attempt: 1,
            r#final: true,
            cached,
            ..TestFinished::default()
        })
    }

    #[test]
    fn plain_output_shows_phases_failures_and_the_summary() {
        let mut human = Human::plain(Vec::new());
        let mut tally = Tally::new("j");
        let events = vec![
            ev(1, Kind::Queue(QueuePosition { ahead: 3 })),
            ev(
                2,
                Kind::Phase(PhaseChanged {
                    phase: JobPhase::Preparing as i32,
                    detail: String::new(),
                    cell: String::new(),
                }),
            ),
            ev(
                3,
                Kind::Planned(TestsPlanned {
                    total: 3,
                    cached: 1,
                    to_run: 2,
                    expected: None,
                    cell: String::new(),
                }),
            ),
            ev(4, passed("cached", true)),
            ev(5, passed("good", false)),
            ev(
                6,
                Kind::Test(TestFinished {
                    test: Some(TestRef {
                        group: "g".into(),
                        name: "bad".into(),
                    }),
                    outcome: TestOutcome::Failed as i32,
                    attempt: 1,
                    r#final: true,
                    output: "assert 1 == 2".into(),
                    ..TestFinished::default()
                }),
            ),
            ev(
                7,
                Kind::Finished(JobFinished {
                    result: JobResult::Failed as i32,
                    passed: 2,
                    failed: 1,
                    cached: 1,
                    ..JobFinished::default()
                }),
            ),
        ];
        for e in events {
            if let Some(shown) = tally.apply(e).event {
                human.event(&shown, &tally);
            }
        }
        let text = String::from_utf8(human.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "queued: 3 operations ahead");
        assert_eq!(lines[1], "preparing");
        assert_eq!(lines[2], "3 tests, 1 cached, 2 to run");
        assert!(lines[3].starts_with("FAIL    g bad"), "{text}");
        assert_eq!(lines[4], "    assert 1 == 2");
        assert_eq!(*lines.last().unwrap(), "2 passed, 1 failed");
    }

    #[test]
    fn a_quarantined_failure_is_shown_as_such_and_summed_up() {
        let mut human = Human::plain(Vec::new());
        let mut tally = Tally::new("j");
        let events = vec![
            ev(
                1,
                Kind::Test(TestFinished {
                    test: Some(TestRef {
                        group: "g".into(),
                        name: "flaps".into(),
                    }),
                    outcome: TestOutcome::Failed as i32,
                    attempt: 1,
                    r#final: true,
                    quarantined: true,
                    ..TestFinished::default()
                }),
            ),
            ev(2, passed("good", false)),
            ev(
                3,
                Kind::Finished(JobFinished {
                    result: JobResult::Passed as i32,
                    passed: 1,
                    failed: 1,
                    quarantined: 1,
                    ..JobFinished::default()
                }),
            ),
        ];
        for e in events {
            if let Some(shown) = tally.apply(e).event {
                human.event(&shown, &tally);
            }
        }
        let text = String::from_utf8(human.into_inner()).unwrap();
        assert!(
            text.contains("FAIL    g flaps (0ms, attempt 1, quarantined: does not fail the job)"),
            "{text}"
        );
        assert_eq!(
            text.lines().last().unwrap(),
            "1 passed, 1 failed, 1 quarantined"
        );
    }

    #[test]
    fn a_matrix_run_shows_each_cell_and_sums_up_each_cell() {
        use tessera_proto::tessera::v1::CellFinished;
        let mut human = Human::plain(Vec::new());
        let mut tally = Tally::new("j");
        let in_cell = |cell: &str, kind: Kind| match kind {
            Kind::Test(mut t) => {
                t.cell = cell.into();
                Kind::Test(t)
            }
            other => other,
        };
        let mut failed = match passed("t", false) {
            Kind::Test(t) => t,
            _ => unreachable!(),
        };
        failed.outcome = TestOutcome::Failed as i32;
        failed.cell = "MODE=off".into();
        let events = vec![
            ev(
                1,
                Kind::Phase(PhaseChanged {
                    phase: JobPhase::Listing as i32,
                    detail: String::new(),
                    cell: "MODE=on".into(),
                }),
            ),
            ev(
                2,
                Kind::Planned(TestsPlanned {
                    total: 1,
                    to_run: 1,
                    cell: "MODE=on".into(),
                    ..TestsPlanned::default()
                }),
            ),
            ev(3, in_cell("MODE=on", passed("t", false))),
            ev(4, Kind::Test(failed)),
            ev(
                5,
                Kind::Finished(JobFinished {
                    result: JobResult::Error as i32,
                    message: "[MODE=x] the prepare step failed".into(),
                    passed: 1,
                    failed: 1,
                    cells: ["on", "off", "x"]
                        .iter()
                        .zip([JobResult::Passed, JobResult::Failed, JobResult::Error])
                        .map(|(value, result)| CellFinished {
                            cell: format!("MODE={value}"),
                            result: result as i32,
                            message: String::new(),
                        })
                        .collect(),
                    ..JobFinished::default()
                }),
            ),
        ];
        for e in events {
            if let Some(shown) = tally.apply(e).event {
                human.event(&shown, &tally);
            }
        }
        let text = String::from_utf8(human.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "[MODE=on] listing");
        assert_eq!(lines[1], "[MODE=on] 1 tests, 0 cached, 1 to run");
        assert!(lines[2].starts_with("FAIL    [MODE=off] g t"), "{text}");
        assert_eq!(lines[3], "error: [MODE=x] the prepare step failed");
        assert_eq!(lines[4], "[MODE=on] 1 passed, 0 failed");
        assert_eq!(lines[5], "[MODE=off] 0 passed, 1 failed");
        assert_eq!(
            lines[6],
            "[MODE=x] 0 passed, 0 failed (stopped: its prepare or list step failed)"
        );
        assert_eq!(*lines.last().unwrap(), "1 passed, 1 failed");
    }

    #[test]
    fn long_output_keeps_its_end() {
        let output: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let cut = truncate_output(&output);
        assert!(cut.starts_with("... (40 of 100 lines shown"), "{cut}");
        assert!(cut.ends_with("line 99"));
        assert!(!cut.contains("line 59\n"));
        assert_eq!(truncate_output("short\n"), "short");
    }
}

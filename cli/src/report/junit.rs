//! `--junit FILE`: a JUnit XML report of the job's final results.
//!
//! One `<testsuite>` per test group (tests without a group go to the suite `tessera`), one
//! `<testcase>` per test with its `time` in seconds. A failed or timed-out test has a
//! `<failure>` (type `failed` or `timeout`) whose text is its output; a test the tool said
//! nothing about has an `<error type="no_result">`; skipped and never-run (cancelled) tests
//! have `<skipped/>`. A flaky test is a passing test case with one `<flakyFailure>` per failed
//! attempt, its output in `<system-out>`, as Maven Surefire writes them.
//!
//! A quarantined test keeps its true outcome here too (a failure keeps its `<failure>`), and
//! its test case carries `<properties><property name="quarantined" value="true"/></properties>`
//! and a `<system-out>` note saying its failure did not fail the job. CI tools that read the
//! file (GitLab, Jenkins, GitHub test reporters) therefore still show the failure; only
//! `tessera run`'s exit code, which decides the pipeline step, ignores it.
//!
//! A matrix run (`tessera run --matrix`) has one `<testsuite>` per cell instead, named as views
//! show the cell (`[NAME=v1]`), in the order the cells reported first; a test case's
//! `classname` is its group and its `name` ends with the cell (`adds [NAME=v1]`), so tools that
//! key cases by class and name keep the cells' runs of a test apart.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use quick_xml::escape::escape;
use tessera_proto::tessera::v1::{JobEvent, TestFinished, TestOutcome, job_event::Kind};

use super::tally::{EventSink, Tally, cell_label, duration};

/// Suite name for tests without a group.
pub const UNGROUPED_SUITE: &str = "tessera";

/// Collects the final result of every test.
#[derive(Debug, Default)]
pub struct JunitReport {
    /// By group, then by name: the first final event of each test, of each matrix cell in the
    /// order the cells first reported (one unnamed cell in a plain run).
    cells: Vec<(String, Suites)>,
}

/// Final events by group, then by name.
type Suites = BTreeMap<String, BTreeMap<String, TestFinished>>;

impl JunitReport {
    /// An empty report.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a test's final result; the first one of a test stands (as in every view:
    /// `tally.rs`), so each test is one test case.
    pub fn record(&mut self, test: &TestFinished) {
        if !test.r#final {
            return;
        }
        let (group, name) = test
            .test
            .as_ref()
            .map(|t| (t.group.clone(), t.name.clone()))
            .unwrap_or_default();
        let index = match self.cells.iter().position(|(cell, _)| *cell == test.cell) {
            Some(index) => index,
            None => {
                self.cells.push((test.cell.clone(), Suites::new()));
                self.cells.len() - 1
            }
        };
        self.cells[index]
            .1
            .entry(group)
            .or_default()
            .entry(name)
            .or_insert_with(|| test.clone());
    }

    /// The report as XML.
    pub fn to_xml(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let all = self
            .cells
            .iter()
            .flat_map(|(_, suites)| suites.values().flat_map(|s| s.values()));
        let counts = Counts::of(all);
        out.push_str(&format!(
            "<testsuites name=\"tessera\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">\n",
            counts.tests, counts.failures, counts.errors, counts.skipped, counts.time
        ));
        for (cell, suites) in &self.cells {
            if cell.is_empty() {
                for (group, tests) in suites {
                    let suite = suite_name(group);
                    suite_open(&mut out, suite, tests.values());
                    for (name, test) in tests {
                        case(&mut out, suite, name, test);
                    }
                    out.push_str("  </testsuite>\n");
                }
                continue;
            }
            let label = cell_label(cell);
            suite_open(&mut out, &label, suites.values().flat_map(|s| s.values()));
            for (group, tests) in suites {
                for (name, test) in tests {
                    case(
                        &mut out,
                        suite_name(group),
                        &format!("{name} {label}"),
                        test,
                    );
                }
            }
            out.push_str("  </testsuite>\n");
        }
        out.push_str("</testsuites>\n");
        out
    }

    /// Writes the report to `path` (through a temporary file, so a reader never sees half).
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("xml.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(self.to_xml().as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    }
}

impl EventSink for JunitReport {
    fn event(&mut self, event: &JobEvent, _tally: &Tally) {
        if let Some(Kind::Test(test)) = &event.kind {
            self.record(test);
        }
    }
}

#[derive(Default)]
struct Counts {
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
    time: f64,
}

impl Counts {
    fn of<'a>(tests: impl IntoIterator<Item = &'a TestFinished>) -> Self {
        let mut c = Counts::default();
        for t in tests {
            c.tests += 1;
            c.time += duration(t.duration.as_ref()).as_secs_f64();
            match t.outcome() {
                TestOutcome::Failed | TestOutcome::TimedOut => c.failures += 1,
                TestOutcome::NoResult | TestOutcome::Error | TestOutcome::Unknown => c.errors += 1,
                TestOutcome::Skipped | TestOutcome::Cancelled => c.skipped += 1,
                TestOutcome::Passed | TestOutcome::Flaky => {}
            }
        }
        c
    }
}

/// The suite (or class) name of a test group.
fn suite_name(group: &str) -> &str {
    if group.is_empty() {
        UNGROUPED_SUITE
    } else {
        group
    }
}

/// Opens a `<testsuite>` named `name` holding `tests`.
fn suite_open<'a>(out: &mut String, name: &str, tests: impl IntoIterator<Item = &'a TestFinished>) {
    let counts = Counts::of(tests);
    out.push_str(&format!(
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">\n",
        text(name),
        counts.tests,
        counts.failures,
        counts.errors,
        counts.skipped,
        counts.time
    ));
}

fn case(out: &mut String, suite: &str, name: &str, test: &TestFinished) {
    let time = duration(test.duration.as_ref()).as_secs_f64();
    let open = format!(
        "    <testcase name=\"{}\" classname=\"{}\" time=\"{time:.3}\"",
        text(name),
        text(suite)
    );
    let body = match test.outcome() {
        TestOutcome::Passed => None,
        TestOutcome::Failed => Some(format!(
            "<failure message=\"failed\" type=\"failed\">{}</failure>",
            text(&test.output)
        )),
        TestOutcome::TimedOut => Some(format!(
            "<failure message=\"timed out\" type=\"timeout\">{}</failure>",
            text(&test.output)
        )),
        TestOutcome::Error => Some(format!(
            "<error message=\"error\" type=\"error\">{}</error>",
            text(&test.output)
        )),
        TestOutcome::NoResult | TestOutcome::Unknown => Some(format!(
            "<error message=\"no result\" type=\"no_result\">{}</error>",
            text(&test.output)
        )),
        TestOutcome::Skipped => Some("<skipped/>".to_owned()),
        TestOutcome::Cancelled => Some("<skipped message=\"not run: cancelled\"/>".to_owned()),
        TestOutcome::Flaky => {
            let attempts: Vec<&str> = if test.failed_attempts.is_empty() {
                vec![test.output.as_str()]
            } else {
                test.failed_attempts.iter().map(String::as_str).collect()
            };
            Some(
                attempts
                    .iter()
                    .enumerate()
                    .map(|(i, output)| {
                        format!(
                            "<flakyFailure message=\"attempt {} failed\" type=\"flaky\"><system-out>{}</system-out></flakyFailure>",
                            i + 1,
                            text(output)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n      "),
            )
        }
    };
    let body = if test.quarantined {
        let mut parts = vec![QUARANTINED_PROPERTY.to_owned()];
        parts.extend(body);
        parts.push(format!(
            "<system-out>{}</system-out>",
            text(QUARANTINED_NOTE)
        ));
        Some(parts.join("\n      "))
    } else {
        body
    };
    match body {
        None => out.push_str(&format!("{open}/>\n")),
        Some(body) => out.push_str(&format!("{open}>\n      {body}\n    </testcase>\n")),
    }
}

/// The property a quarantined test case carries.
const QUARANTINED_PROPERTY: &str =
    "<properties><property name=\"quarantined\" value=\"true\"/></properties>";

/// The note in a quarantined test case's `<system-out>`.
const QUARANTINED_NOTE: &str = "tessera: this test is quarantined: its outcome is reported, but a failure does not fail the job";

/// Escapes `s` for XML text and attribute values, dropping characters XML 1.0 cannot hold
/// (control characters other than tab, newline and carriage return; unpaired surrogates cannot
/// occur in a Rust string).
fn text(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|&c| {
            matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
        })
        .collect();
    escape(clean.as_str()).into_owned()
}

#[cfg(test)]
mod tests {
    use quick_xml::Reader;
    use quick_xml::events::Event;
    use tessera_proto::tessera::v1::TestRef;
    use tessera_runners::junit::{CaseStatus, parse};

    use super::*;

    fn test(group: &str, name: &str, outcome: TestOutcome, output: &str) -> TestFinished {
        TestFinished {
            test: Some(TestRef {
                group: group.into(),
                name: name.into(),
            }),
            outcome: outcome as i32,
            attempt: 1,
            r#final: true,
            duration: Some(prost_types::Duration {
                seconds: 0,
                nanos: 250_000_000,
            }),
            output: output.into(),
            ..TestFinished::default()
        }
    }

    fn report() -> JunitReport {
        let mut r = JunitReport::new();
        r.record(&test("calc", "adds", TestOutcome::Passed, ""));
        r.record(&test(
            "calc",
            "divides <by> \"zero\" & more",
            TestOutcome::Failed,
            "expected 1 < 2 & \u{1b}[31mred\u{1b}[0m ]]> done",
        ));
        r.record(&test("calc", "slow", TestOutcome::TimedOut, "killed"));
        r.record(&test("", "a.py::skipped", TestOutcome::Skipped, ""));
        let mut flaky = test("calc", "flaky", TestOutcome::Flaky, "");
        flaky.attempt = 3;
        flaky.failed_attempts = vec!["first <fail>".into(), "second fail".into()];
        r.record(&flaky);
        // A retry that is not final does not make a test case.
        let mut retry = test("calc", "retried", TestOutcome::Failed, "x");
        retry.r#final = false;
        r.record(&retry);
        // A test reported twice is one test case, with its first result.
        r.record(&test("calc", "adds", TestOutcome::Failed, "again"));
        r
    }

    #[test]
    fn the_report_parses_back_with_every_outcome() {
        let xml = report().to_xml();
        let cases = parse(&xml).unwrap();
        let find = |name: &str| cases.iter().find(|c| c.name == name).unwrap();
        assert_eq!(cases.len(), 5, "{xml}");
        assert_eq!(find("adds").status, CaseStatus::Passed);
        assert_eq!(find("adds").suite, "calc");
        assert_eq!(
            find("adds").time,
            Some(std::time::Duration::from_millis(250))
        );
        let failed = find("divides <by> \"zero\" & more");
        assert_eq!(failed.status, CaseStatus::Failed);
        assert!(
            failed
                .detail
                .contains("expected 1 < 2 & [31mred[0m ]]> done"),
            "{failed:?}"
        );
        assert_eq!(find("slow").status, CaseStatus::Failed);
        assert_eq!(find("slow").kind.as_deref(), Some("timeout"));
        assert_eq!(find("a.py::skipped").status, CaseStatus::Skipped);
        assert_eq!(find("a.py::skipped").suite, UNGROUPED_SUITE);
        assert_eq!(find("flaky").status, CaseStatus::Passed);
    }

    #[test]
    fn a_quarantined_failure_keeps_its_failure_and_says_it_is_quarantined() {
        let mut r = JunitReport::new();
        let mut t = test("calc", "flaps", TestOutcome::Failed, "boom");
        t.quarantined = true;
        r.record(&t);
        r.record(&test("calc", "adds", TestOutcome::Passed, ""));
        let xml = r.to_xml();
        let cases = parse(&xml).unwrap();
        let flaps = cases.iter().find(|c| c.name == "flaps").unwrap();
        assert_eq!(flaps.status, CaseStatus::Failed, "{xml}");
        assert!(flaps.detail.contains("boom"), "{flaps:?}");
        assert_eq!(
            xml.matches("<property name=\"quarantined\" value=\"true\"/>")
                .count(),
            1
        );
        assert!(
            xml.contains("quarantined: its outcome is reported"),
            "{xml}"
        );
        assert!(xml.contains("failures=\"1\""), "{xml}");
    }

    #[test]
    fn a_matrix_run_has_a_testsuite_per_cell() {
        let mut r = JunitReport::new();
        let in_cell = |cell: &str, group: &str, name: &str, outcome: TestOutcome| {
            let mut t = test(group, name, outcome, "out");
            t.cell = cell.into();
            t
        };
        r.record(&in_cell("MODE=on", "calc", "adds", TestOutcome::Passed));
        r.record(&in_cell("MODE=off", "calc", "adds", TestOutcome::Failed));
        r.record(&in_cell("MODE=on", "", "b.py::t", TestOutcome::Passed));
        r.record(&in_cell("MODE=off", "", "b.py::t", TestOutcome::Passed));
        // Again in one cell: its first result stands.
        r.record(&in_cell("MODE=on", "calc", "adds", TestOutcome::Failed));
        let xml = r.to_xml();
        assert_eq!(xml.matches("<testsuite ").count(), 2, "{xml}");
        assert!(
            xml.contains("<testsuite name=\"[MODE=on]\" tests=\"2\" failures=\"0\" errors=\"0\""),
            "{xml}"
        );
        assert!(
            xml.contains("<testsuite name=\"[MODE=off]\" tests=\"2\" failures=\"1\" errors=\"0\""),
            "{xml}"
        );
        assert!(xml.contains("<testsuites name=\"tessera\" tests=\"4\" failures=\"1\""));
        let cases = parse(&xml).unwrap();
        let status = |suite: &str, name: &str| {
            cases
                .iter()
                .find(|c| c.suite == suite && c.name == name)
                .map(|c| (c.classname.clone(), c.status))
                .unwrap_or_else(|| panic!("no {name} in {suite}: {xml}"))
        };
        assert_eq!(
            status("[MODE=on]", "adds [MODE=on]"),
            ("calc".to_owned(), CaseStatus::Passed)
        );
        assert_eq!(
            status("[MODE=off]", "adds [MODE=off]"),
            ("calc".to_owned(), CaseStatus::Failed)
        );
        assert_eq!(
            status("[MODE=off]", "b.py::t [MODE=off]"),
            (UNGROUPED_SUITE.to_owned(), CaseStatus::Passed)
        );
    }

    #[test]
    fn flaky_tests_carry_one_flaky_failure_per_failed_attempt() {
        let xml = report().to_xml();
        let mut reader = Reader::from_str(&xml);
        let mut in_flaky = false;
        let mut outputs = Vec::new();
        loop {
            match reader.read_event().unwrap() {
                Event::Start(e) if e.name().as_ref() == b"flakyFailure" => in_flaky = true,
                Event::End(e) if e.name().as_ref() == b"flakyFailure" => in_flaky = false,
                Event::Text(t) if in_flaky => outputs.push(t.decode().unwrap().into_owned()),
                Event::GeneralRef(r) if in_flaky => {
                    let name = r.decode().unwrap().into_owned();
                    if let Some(last) = outputs.last_mut() {
                        last.push_str(match name.as_str() {
                            "lt" => "<",
                            "gt" => ">",
                            _ => "?",
                        });
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        let joined = outputs.concat();
        assert!(joined.contains("first <fail>"), "{outputs:?}");
        assert!(joined.contains("second fail"), "{outputs:?}");
        assert_eq!(xml.matches("<flakyFailure").count(), 2);
        // Suite counts: calc has 4 cases (adds, divides, slow, flaky), 2 failures.
        assert!(
            xml.contains(
                "<testsuite name=\"calc\" tests=\"4\" failures=\"2\" errors=\"0\" skipped=\"0\""
            ),
            "{xml}"
        );
    }
}

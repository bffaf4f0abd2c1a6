//! A suite's answer as counts of passed, failed, errored and skipped tests: read from what a
//! tool run directly reports (pytest's `--junitxml` report, libtest's `test result:` lines,
//! `go test -json`'s events) and from `tessera run --json`'s `finished` line, so that
//! `tessera-bench suites` can check that both sides gave the same answer.
//!
//! Counts only, read the way the fidelity tests read each tool (`tests/world/direct.rs`), not
//! with `tessera-runners`' parsers: the check must not share code with what it checks. The
//! fidelity tests compare test by test; this is the benchmark's quick agreement check.

use std::collections::BTreeMap;
use std::fmt;

use quick_xml::events::{BytesStart, Event};

/// How many tests ended each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Passed (pytest's xpass too).
    pub passed: u64,
    /// Failed (timed out too).
    pub failed: u64,
    /// Errors (pytest's errors in set-up or collection, a Go package that did not build).
    pub errors: u64,
    /// Skipped (pytest's xfail, libtest's ignored).
    pub skipped: u64,
}

impl Counts {
    /// Every test counted.
    pub(crate) fn total(&self) -> u64 {
        self.passed + self.failed + self.errors + self.skipped
    }

    /// Tests that did not pass or skip: a re-run runs them again.
    pub(crate) fn failing(&self) -> u64 {
        self.failed + self.errors
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |v: u64| crate::report::thousands(usize::try_from(v).unwrap_or(usize::MAX));
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            n(self.passed),
            n(self.failed),
            n(self.skipped)
        )?;
        if self.errors > 0 {
            write!(f, ", {} errors", n(self.errors))?;
        }
        Ok(())
    }
}

/// An outcome, ordered from best to worst: a test reported twice counts as its worse one
/// (pytest writes a case twice when its teardown fails after its call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Passed,
    Skipped,
    Error,
    Failed,
}

fn tally<K>(outcomes: &BTreeMap<K, Outcome>) -> Counts {
    let mut counts = Counts::default();
    for outcome in outcomes.values() {
        match outcome {
            Outcome::Passed => counts.passed += 1,
            Outcome::Skipped => counts.skipped += 1,
            Outcome::Error => counts.errors += 1,
            Outcome::Failed => counts.failed += 1,
        }
    }
    counts
}

fn record<K: Ord>(outcomes: &mut BTreeMap<K, Outcome>, key: K, outcome: Outcome) {
    let entry = outcomes.entry(key).or_insert(outcome);
    *entry = (*entry).max(outcome);
}

/// Counts pytest's JUnit report: one test per (class name, name), `<failure>` failed,
/// `<error>` an error, `<skipped>` (xfail included) skipped, nothing inside passed.
pub(crate) fn pytest_junit(xml: &str) -> Result<Counts, String> {
    fn attribute(start: &BytesStart<'_>, key: &str) -> String {
        start
            .attributes()
            .flatten()
            .find(|a| a.key.local_name().as_ref() == key.as_bytes())
            .map(|a| String::from_utf8_lossy(&a.value).into_owned())
            .unwrap_or_default()
    }
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut outcomes = BTreeMap::new();
    // The open test case: its key and what its direct children said so far.
    let mut open: Option<((String, String), Outcome)> = None;
    let mut depth_in_case = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("bad XML at byte {}: {e}", reader.error_position()))?;
        let (start, empty) = match &event {
            Event::Start(start) => (start, false),
            Event::Empty(start) => (start, true),
            Event::End(end) => {
                if open.is_some() {
                    if depth_in_case == 0 && end.name().local_name().as_ref() == b"testcase" {
                        let (key, outcome) = open.take().expect("an open case");
                        record(&mut outcomes, key, outcome);
                    } else {
                        depth_in_case = depth_in_case.saturating_sub(1);
                    }
                }
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let tag = start.name().local_name().as_ref().to_vec();
        match open.as_mut() {
            None if tag == b"testcase" => {
                let key = (attribute(start, "classname"), attribute(start, "name"));
                if empty {
                    record(&mut outcomes, key, Outcome::Passed);
                } else {
                    open = Some((key, Outcome::Passed));
                }
            }
            Some((_, outcome)) => {
                if depth_in_case == 0 {
                    let said = match tag.as_slice() {
                        b"failure" => Some(Outcome::Failed),
                        b"error" => Some(Outcome::Error),
                        b"skipped" => Some(Outcome::Skipped),
                        _ => None,
                    };
                    if let Some(said) = said {
                        *outcome = (*outcome).max(said);
                    }
                }
                if !empty {
                    depth_in_case += 1;
                }
            }
            None => {}
        }
    }
    if open.is_some() {
        return Err("the report ends inside a <testcase>".to_owned());
    }
    Ok(tally(&outcomes))
}

/// Counts `cargo test`'s output: the sum of libtest's `test result: ok. N passed; M failed;
/// K ignored; ...` lines, one per test binary and one for the doctests (ignored counts as
/// skipped). `None` when there is no such line (the build failed).
pub(crate) fn libtest(text: &str) -> Option<Counts> {
    let mut counts = Counts::default();
    let mut seen = false;
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        seen = true;
        let rest = rest.split_once(". ").map_or(rest, |(_, figures)| figures);
        for part in rest.split(';') {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => counts.passed += n,
                "failed" => counts.failed += n,
                "ignored" => counts.skipped += n,
                _ => {}
            }
        }
    }
    seen.then_some(counts)
}

/// Counts `go test -json`'s events: each test and subtest (`TestX/case`) by its last `pass`,
/// `fail` or `skip` (a test that started and never ended failed: its binary died), and each
/// package whose tests did not build (`FAIL PKG [build failed]`) as an error.
pub(crate) fn go_json(text: &str) -> Counts {
    let mut outcomes: BTreeMap<(String, String), Outcome> = BTreeMap::new();
    let mut unbuilt = BTreeMap::new();
    let build_failed = |line: &str| -> Option<String> {
        let rest = line.trim_end().strip_prefix("FAIL\t")?;
        let (package, why) = rest.split_once(' ')?;
        matches!(why, "[build failed]" | "[setup failed]").then(|| package.to_owned())
    };
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            if let Some(package) = build_failed(line) {
                unbuilt.insert(package, Outcome::Error);
            }
            continue;
        };
        let package = event["Package"].as_str().unwrap_or_default().to_owned();
        let action = event["Action"].as_str().unwrap_or_default();
        let Some(test) = event["Test"].as_str() else {
            if action == "output"
                && let Some(package) = event["Output"].as_str().and_then(build_failed)
            {
                unbuilt.insert(package, Outcome::Error);
            }
            continue;
        };
        let key = (package, test.to_owned());
        match action {
            "run" => {
                outcomes.entry(key).or_insert(Outcome::Failed);
            }
            "pass" => {
                outcomes.insert(key, Outcome::Passed);
            }
            "fail" => {
                outcomes.insert(key, Outcome::Failed);
            }
            "skip" => {
                outcomes.insert(key, Outcome::Skipped);
            }
            _ => {}
        }
    }
    let mut counts = tally(&outcomes);
    counts.errors += unbuilt.len() as u64;
    counts
}

/// Counts a `tessera run --json` `finished` line: flaky tests passed in the end; timed out
/// and not run are not passes.
pub(crate) fn tessera_finished(finished: &serde_json::Value) -> Counts {
    let n = |field: &str| finished[field].as_u64().unwrap_or(0);
    Counts {
        passed: n("passed") + n("flaky"),
        failed: n("failed") + n("timed_out") + n("not_run"),
        errors: n("errors"),
        skipped: n("skipped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pytest_report_counts_each_case_once_by_its_worst_outcome() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="6">
<testcase classname="tests.test_a" name="test_ok[a&amp;b]" time="0.1"/>
<testcase classname="tests.test_a" name="test_fail"><failure message="boom">trace</failure><system-out>x</system-out></testcase>
<testcase classname="tests.test_a" name="test_skip"><skipped type="pytest.skip" message="no"/></testcase>
<testcase classname="tests.test_a" name="test_xfail"><skipped type="pytest.xfail" message="known"/></testcase>
<testcase classname="tests.test_a" name="test_teardown"/>
<testcase classname="tests.test_a" name="test_teardown"><error message="teardown failed"/></testcase>
</testsuite></testsuites>"#;
        assert_eq!(
            pytest_junit(xml),
            Ok(Counts {
                passed: 1,
                failed: 1,
                errors: 1,
                skipped: 2,
            })
        );
        assert!(pytest_junit("<testsuites><testcase name=\"x\">").is_err());
    }

    #[test]
    fn libtest_result_lines_are_summed_over_binaries_and_doctests() {
        let text = "\
     Running unittests src/lib.rs (target/debug/deps/smallvec-50a2)
test tests::grow ... ok
test result: ok. 90 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.05s

     Running tests/macros.rs (target/debug/deps/macros-0123)
test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

   Doc-tests smallvec
test result: ok. 20 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.20s
";
        assert_eq!(
            libtest(text),
            Some(Counts {
                passed: 113,
                failed: 1,
                errors: 0,
                skipped: 3,
            })
        );
        assert_eq!(libtest("error[E0425]: cannot find value `x`"), None);
    }

    #[test]
    fn go_events_count_tests_subtests_and_packages_that_did_not_build() {
        let text = r#"{"Action":"run","Package":"m/a","Test":"TestX"}
{"Action":"run","Package":"m/a","Test":"TestX/case_1"}
{"Action":"pass","Package":"m/a","Test":"TestX/case_1"}
{"Action":"fail","Package":"m/a","Test":"TestX"}
{"Action":"run","Package":"m/a","Test":"TestDies"}
{"Action":"skip","Package":"m/a","Test":"ExampleY"}
{"Action":"output","Package":"m/a","Output":"ok  \tm/a\t0.01s\n"}
FAIL	m/b [build failed]
"#;
        assert_eq!(
            go_json(text),
            Counts {
                passed: 1,
                failed: 2,
                errors: 1,
                skipped: 1,
            }
        );
    }

    #[test]
    fn a_finished_line_counts_flaky_as_passed_and_timeouts_as_failed() {
        let finished = serde_json::json!({
            "event": "finished", "passed": 10, "flaky": 1, "failed": 2, "timed_out": 1,
            "not_run": 0, "errors": 0, "skipped": 3,
        });
        let counts = tessera_finished(&finished);
        assert_eq!(counts.to_string(), "11 passed, 3 failed, 3 skipped");
        assert_eq!((counts.total(), counts.failing()), (17, 3));
    }
}

//! `tessera-bench crosscheck`: CI's proof that `tessera run` ran every test of the workspace,
//! no more and no fewer, and that they all passed (`.ci/test.sh`, mode `tessera`).
//!
//! The tests `tessera run --json --junit F -- cargo test --workspace` reported are held
//! against what the tools list on their own, so a bug in Tessera (a lost listing, a test
//! dropped between batches, a doctest never found) cannot hide a test:
//!
//! | source | what is read | a test's key |
//! | --- | --- | --- |
//! | `cargo nextest list --workspace --message-format json` | every `rust-suites.*.testcases` entry, ignored ones too (`cargo test` reports them as ignored, Tessera as skipped) | `BINARY_ID NAME` |
//! | `cargo test --workspace --doc -- --list` (stdout and stderr in one file) | `NAME: test` lines after cargo's `Doc-tests CRATE` | `doctest/CRATE NAME` |
//! | `tessera run --json` | every final `test` event (a go subtest is not a listed test) | `GROUP NAME`; a doctest's group `PACKAGE::doctest/CRATE` becomes `doctest/CRATE` |
//! | `tessera run --junit` | every `<testcase>` (`classname` is the group) | as `--json` |
//!
//! The check fails, naming each test, when a listed test was not reported, a reported test was
//! not listed, a test was reported twice, the JUnit file and the events disagree, a test did
//! not pass (flaky counts as passed, ignored as skipped), or the `finished` line says anything
//! but `passed` with nothing left not run. It reads files only: the script runs the tools.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use quick_xml::events::Event;
use serde_json::Value;

/// The group suffix by which `tessera run`'s cargo runner marks a library's doctests
/// (`PACKAGE::doctest/CRATE`, `runners/src/cargo.rs`).
const DOCTEST_GROUP_MARK: &str = "::doctest/";

/// Outcomes that count as a pass for CI: a flaky test passed on a retry, and a skip is an
/// ignored test, as `cargo test` reports it.
const GOOD_OUTCOMES: &[&str] = &["passed", "flaky", "skipped"];

/// Why an input file could not be read as what it should be.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InputError {
    /// A line or document is not the JSON it should be.
    #[error("{what}: {why}")]
    Json {
        /// Which input.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The JUnit file is not well-formed.
    #[error("JUnit report: {0}")]
    Junit(String),
}

/// What `tessera run` reported: its tests with their final outcome, and its `finished` line.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Reported {
    /// Each test's key and outcome.
    pub tests: BTreeMap<String, String>,
    /// Keys reported more than once.
    pub repeated: BTreeSet<String>,
    /// The `finished` line's `result`, `not_run` and `message`; `None` without one.
    pub finished: Option<(String, u64, String)>,
}

/// What is wrong, test by test; empty when CI may pass.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Findings {
    /// Listed by the tools, never reported by `tessera run`.
    pub missing: Vec<String>,
    /// Reported by `tessera run`, listed by neither tool.
    pub extra: Vec<String>,
    /// Reported twice in the events.
    pub repeated: Vec<String>,
    /// In the events but not the JUnit file, or the other way round.
    pub junit_differs: Vec<String>,
    /// Tests whose outcome was not a pass, with the outcome.
    pub not_passed: Vec<(String, String)>,
    /// What is wrong with the job as a whole (its `finished` line).
    pub job: Option<String>,
}

impl Findings {
    /// Whether CI may pass.
    pub(crate) fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.extra.is_empty()
            && self.repeated.is_empty()
            && self.junit_differs.is_empty()
            && self.not_passed.is_empty()
            && self.job.is_none()
    }
}

impl fmt::Display for Findings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = |title: &str, items: &[String]| -> fmt::Result {
            if items.is_empty() {
                return Ok(());
            }
            writeln!(f, "{title} ({}):", items.len())?;
            items.iter().try_for_each(|t| writeln!(f, "  {t}"))
        };
        list(
            "listed by cargo nextest list / cargo test --doc --list, not run by tessera run",
            &self.missing,
        )?;
        list("run by tessera run, listed by neither tool", &self.extra)?;
        list("reported more than once by tessera run", &self.repeated)?;
        list(
            "in tessera run's events or its JUnit report, not both",
            &self.junit_differs,
        )?;
        let failed: Vec<String> = self
            .not_passed
            .iter()
            .map(|(test, outcome)| format!("{test}: {outcome}"))
            .collect();
        list("did not pass", &failed)?;
        if let Some(job) = &self.job {
            writeln!(f, "the job: {job}")?;
        }
        Ok(())
    }
}

/// The key of a test `tessera run` reported under `group` and `name`.
fn tessera_key(group: &str, name: &str) -> String {
    match group.find(DOCTEST_GROUP_MARK) {
        Some(at) => format!("{} {name}", &group[at + 2..]),
        None if group.is_empty() => name.to_owned(),
        None => format!("{group} {name}"),
    }
}

/// The tests `cargo nextest list --message-format json` lists.
pub(crate) fn nextest_list(json: &str) -> Result<BTreeSet<String>, InputError> {
    let bad = |why: String| InputError::Json {
        what: "cargo nextest list",
        why,
    };
    // nextest prints one document; anything cargo printed before it is not JSON.
    let start = json
        .find('{')
        .ok_or_else(|| bad("no JSON object".to_owned()))?;
    let value: Value =
        serde_json::from_str(json[start..].trim_end()).map_err(|e| bad(e.to_string()))?;
    let suites = value["rust-suites"]
        .as_object()
        .ok_or_else(|| bad("no `rust-suites` object".to_owned()))?;
    let mut tests = BTreeSet::new();
    for (binary_id, suite) in suites {
        let cases = suite["testcases"]
            .as_object()
            .ok_or_else(|| bad(format!("{binary_id}: no `testcases` object")))?;
        tests.extend(cases.keys().map(|name| format!("{binary_id} {name}")));
    }
    Ok(tests)
}

/// The doctests `cargo test --doc -- --list` lists, from its stdout and stderr in one file
/// (cargo names each crate on stderr, `Doc-tests CRATE`, before rustdoc lists its doctests).
pub(crate) fn doctest_list(text: &str) -> Result<BTreeSet<String>, InputError> {
    let mut tests = BTreeSet::new();
    let mut krate: Option<&str> = None;
    for line in text.lines() {
        if let Some(name) = line.trim_start().strip_prefix("Doc-tests ") {
            krate = Some(name.trim());
        } else if let Some(test) = line.strip_suffix(": test") {
            let krate = krate.ok_or_else(|| InputError::Json {
                what: "cargo test --doc -- --list",
                why: format!("a doctest before any `Doc-tests CRATE` line: {line}"),
            })?;
            tests.insert(format!("doctest/{krate} {test}"));
        }
    }
    Ok(tests)
}

/// What `tessera run --json` reported.
pub(crate) fn tessera_events(lines: &str) -> Result<Reported, InputError> {
    let mut reported = Reported::default();
    for (n, line) in lines.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let event: Value = serde_json::from_str(line).map_err(|e| InputError::Json {
            what: "tessera run --json",
            why: format!("line {}: {e}", n + 1),
        })?;
        match event["event"].as_str() {
            Some("test") if event["final"] == true && event["subtest"] != true => {
                let key = tessera_key(
                    event["group"].as_str().unwrap_or_default(),
                    event["name"].as_str().unwrap_or_default(),
                );
                let outcome = event["outcome"].as_str().unwrap_or("unknown").to_owned();
                if reported.tests.insert(key.clone(), outcome).is_some() {
                    reported.repeated.insert(key);
                }
            }
            Some("finished") => {
                reported.finished = Some((
                    event["result"].as_str().unwrap_or("unknown").to_owned(),
                    event["not_run"].as_u64().unwrap_or(0),
                    event["message"].as_str().unwrap_or_default().to_owned(),
                ));
            }
            _ => {}
        }
    }
    Ok(reported)
}

/// The tests of a `tessera run --junit` report, by key.
pub(crate) fn junit_tests(xml: &str) -> Result<BTreeSet<String>, InputError> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut tests = BTreeSet::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e) | Event::Empty(e)) if e.name().as_ref() == b"testcase" => {
                let mut name = String::new();
                let mut classname = String::new();
                for attr in e.attributes() {
                    let attr = attr.map_err(|e| InputError::Junit(e.to_string()))?;
                    let value = attr
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|e| InputError::Junit(e.to_string()))?
                        .into_owned();
                    match attr.key.as_ref() {
                        b"name" => name = value,
                        b"classname" => classname = value,
                        _ => {}
                    }
                }
                tests.insert(tessera_key(&classname, &name));
            }
            Ok(Event::Eof) => return Ok(tests),
            Ok(_) => {}
            Err(e) => return Err(InputError::Junit(e.to_string())),
        }
    }
}

/// Holds what `tessera run` reported against what the tools list.
pub(crate) fn compare(
    listed: &BTreeSet<String>,
    reported: &Reported,
    junit: Option<&BTreeSet<String>>,
) -> Findings {
    let ran: BTreeSet<String> = reported.tests.keys().cloned().collect();
    let junit_differs = junit.map_or_else(Vec::new, |junit| {
        junit.symmetric_difference(&ran).cloned().collect()
    });
    let job = match &reported.finished {
        None => Some("no `finished` line: the run did not end".to_owned()),
        Some((result, not_run, message)) if result != "passed" || *not_run > 0 => Some(format!(
            "result {result}, {not_run} not run{}",
            if message.is_empty() {
                String::new()
            } else {
                format!(": {message}")
            }
        )),
        Some(_) => None,
    };
    Findings {
        missing: listed.difference(&ran).cloned().collect(),
        extra: ran.difference(listed).cloned().collect(),
        repeated: reported.repeated.iter().cloned().collect(),
        junit_differs,
        not_passed: reported
            .tests
            .iter()
            .filter(|(_, outcome)| !GOOD_OUTCOMES.contains(&outcome.as_str()))
            .map(|(test, outcome)| (test.clone(), outcome.clone()))
            .collect(),
        job,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEXTEST: &str = r#"   Compiling x v0.1.0
{"rust-build-meta":{},"test-count":3,"rust-suites":{
  "tessera-cas":{"binary-id":"tessera-cas","testcases":{
    "digest::tests::parses":{"ignored":false,"filter-match":{"status":"matches"}},
    "store::tests::slow":{"ignored":true,"filter-match":{"status":"mismatch","reason":"ignored"}}}},
  "tessera-tests::it":{"binary-id":"tessera-tests::it","testcases":{
    "jobs::cancel":{"ignored":false,"filter-match":{"status":"matches"}}}}}}
"#;

    const DOC_LIST: &str = "   Compiling tessera-cas v0.1.0
   Doc-tests tessera_cas
src/digest.rs - digest::Digest (line 12): test

1 test, 0 benchmarks
   Doc-tests tessera_config
0 tests, 0 benchmarks
";

    fn event(group: &str, name: &str, outcome: &str) -> String {
        serde_json::json!({
            "event": "test", "group": group, "name": name, "outcome": outcome,
            "final": true, "subtest": false,
        })
        .to_string()
    }

    fn finished(result: &str, not_run: u64) -> String {
        serde_json::json!({
            "event": "finished", "result": result, "not_run": not_run, "message": "",
        })
        .to_string()
    }

    fn listed() -> BTreeSet<String> {
        let mut all = nextest_list(NEXTEST).unwrap();
        all.extend(doctest_list(DOC_LIST).unwrap());
        all
    }

    fn events(lines: &[String]) -> Reported {
        tessera_events(&lines.join("\n")).unwrap()
    }

    fn full_run() -> Vec<String> {
        vec![
            r#"{"event":"submitted","job_id":"j1"}"#.to_owned(),
            event("tessera-cas", "digest::tests::parses", "passed"),
            event("tessera-cas", "store::tests::slow", "skipped"),
            event("tessera-tests::it", "jobs::cancel", "flaky"),
            event(
                "tessera-cas::doctest/tessera_cas",
                "src/digest.rs - digest::Digest (line 12)",
                "passed",
            ),
            finished("passed", 0),
        ]
    }

    #[test]
    fn the_tools_listings_give_keys_in_tessera_terms() {
        assert_eq!(
            listed().into_iter().collect::<Vec<_>>(),
            [
                "doctest/tessera_cas src/digest.rs - digest::Digest (line 12)",
                "tessera-cas digest::tests::parses",
                "tessera-cas store::tests::slow",
                "tessera-tests::it jobs::cancel",
            ]
        );
        assert!(nextest_list("error: no manifest").is_err());
        assert!(doctest_list("src/lib.rs - x (line 1): test\n").is_err());
    }

    #[test]
    fn a_run_that_reported_every_listed_test_passing_is_clean() {
        let findings = compare(&listed(), &events(&full_run()), None);
        assert!(findings.is_clean(), "{findings}");
    }

    #[test]
    fn a_test_lost_or_invented_by_tessera_is_named() {
        let mut lines = full_run();
        lines.remove(3);
        lines.insert(1, event("tessera-cas", "ghost", "passed"));
        let findings = compare(&listed(), &events(&lines), None);
        assert_eq!(findings.missing, ["tessera-tests::it jobs::cancel"]);
        assert_eq!(findings.extra, ["tessera-cas ghost"]);
        let text = findings.to_string();
        assert!(text.contains("not run by tessera run (1):\n  tessera-tests::it jobs::cancel"));
        assert!(text.contains("listed by neither tool (1):\n  tessera-cas ghost"));
    }

    #[test]
    fn failures_repeats_and_an_unfinished_job_fail_the_check() {
        let mut lines = full_run();
        lines[1] = event("tessera-cas", "digest::tests::parses", "timed_out");
        // The run ends without its `finished` line.
        let reported = events(&lines[..lines.len() - 1]);
        let findings = compare(&listed(), &reported, None);
        assert_eq!(
            findings.not_passed,
            [(
                "tessera-cas digest::tests::parses".to_owned(),
                "timed_out".to_owned()
            )]
        );
        assert!(findings.job.as_deref().unwrap().contains("no `finished`"));

        let mut lines = full_run();
        lines.insert(2, event("tessera-tests::it", "jobs::cancel", "passed"));
        *lines.last_mut().unwrap() = finished("failed", 2);
        let findings = compare(&listed(), &events(&lines), None);
        assert_eq!(findings.repeated, ["tessera-tests::it jobs::cancel"]);
        assert_eq!(findings.job.as_deref(), Some("result failed, 2 not run"));
        assert!(!findings.is_clean());
    }

    #[test]
    fn a_junit_report_that_differs_from_the_events_is_named() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites><testsuite name="tessera-cas">
<testcase name="digest::tests::parses" classname="tessera-cas" time="0.1"/>
<testcase name="store::tests::slow" classname="tessera-cas"><skipped/></testcase>
</testsuite><testsuite name="tessera-cas::doctest/tessera_cas">
<testcase name="src/digest.rs - digest::Digest (line 12)" classname="tessera-cas::doctest/tessera_cas"/>
</testsuite><testsuite name="tessera-tests::it">
<testcase name="jobs::cancel &amp; more" classname="tessera-tests::it"/>
</testsuite></testsuites>"#;
        let junit = junit_tests(xml).unwrap();
        let findings = compare(&listed(), &events(&full_run()), Some(&junit));
        assert_eq!(
            findings.junit_differs,
            [
                "tessera-tests::it jobs::cancel",
                "tessera-tests::it jobs::cancel & more"
            ]
        );
        assert!(junit_tests("<testsuites><testcase name=\"a></testsuites>").is_err());
    }

    #[test]
    fn go_subtests_and_attempts_before_the_final_one_are_not_tests_of_their_own() {
        let mut lines = full_run();
        let mut attempt: Value =
            serde_json::from_str(&event("tessera-cas", "x", "failed")).unwrap();
        attempt["final"] = Value::Bool(false);
        let mut subtest: Value =
            serde_json::from_str(&event("tessera-cas", "digest::tests::parses/a", "passed"))
                .unwrap();
        subtest["subtest"] = Value::Bool(true);
        lines.insert(1, attempt.to_string());
        lines.insert(1, subtest.to_string());
        assert!(compare(&listed(), &events(&lines), None).is_clean());
    }
}

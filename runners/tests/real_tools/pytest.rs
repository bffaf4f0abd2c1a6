//! The pytest runner on `examples/python-suite`, against `pytest -v`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tessera_runners::{CommandSpec, Outcome, PytestRunner, TestId, junit};

use crate::harness::{
    STATE_VAR, examples, execute, flaky_state, names, outcomes, path_str, prepare_and_list, result,
    run_all, run_batch, tool_available,
};

fn suite_dir() -> std::path::PathBuf {
    examples().join("python-suite")
}

fn pytest_available() -> bool {
    tool_available("pytest", &["python3", "-m", "pytest", "--version"])
}

fn runner(state: &Path) -> PytestRunner {
    PytestRunner::new(suite_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env(STATE_VAR, path_str(state))
}

/// `pytest -v`, read from its `NODE_ID STATUS` lines.
fn pytest_directly(state: &Path) -> BTreeMap<String, Outcome> {
    let spec = CommandSpec::new("python3")
        .args(["-m", "pytest", "-v", "-p", "no:cacheprovider", "--color=no"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env(STATE_VAR, path_str(state))
        .cwd(suite_dir());
    let output = execute(&spec);
    let mut reported = BTreeMap::new();
    for line in output.stdout.lines() {
        let mut words = line.split_whitespace();
        let (Some(id), Some(status)) = (words.next(), words.next()) else {
            continue;
        };
        if !id.contains("::") {
            continue;
        }
        let outcome = match status {
            "PASSED" | "XPASS" => Outcome::Passed,
            "FAILED" | "ERROR" => Outcome::Failed,
            "SKIPPED" | "XFAIL" => Outcome::Skipped,
            _ => continue,
        };
        reported.insert(id.to_owned(), outcome);
    }
    reported
}

#[test]
fn pytest_reports_what_pytest_reports() {
    if !pytest_available() {
        return;
    }
    let state = flaky_state();
    let runner = runner(state.path());
    let (prepared, tests) = prepare_and_list(&runner);
    assert_eq!(
        names(&tests),
        [
            "tests/sub/test_more.py::test_add",
            "tests/test_calc.py::TestGroup::test_error_in_fixture",
            "tests/test_calc.py::TestGroup::test_in_class",
            "tests/test_calc.py::test_add",
            "tests/test_calc.py::test_add_many",
            "tests/test_calc.py::test_flaky_once",
            "tests/test_calc.py::test_param[0.5-0.25-0.75]",
            "tests/test_calc.py::test_param[1-2-3]",
            "tests/test_calc.py::test_param[2-2-5]",
            "tests/test_calc.py::test_skipped",
            "tests/test_calc.py::test_slow",
            "tests/test_calc.py::test_wrong_answer",
        ]
    );

    let results = run_all(&runner, &prepared, &tests);
    let direct_state = flaky_state();
    assert_eq!(outcomes(&results), pytest_directly(direct_state.path()));

    let wrong = result(&results, "tests/test_calc.py::test_wrong_answer");
    assert_eq!(wrong.outcome, Outcome::Failed);
    for expected in ["assert (2 + 2) == 5", "about to compare", "to stderr"] {
        assert!(wrong.output.contains(expected), "{}", wrong.output);
    }
    let slow = result(&results, "tests/test_calc.py::test_slow");
    assert!(
        slow.duration.unwrap() >= Duration::from_millis(400),
        "{slow:?}"
    );
    let fixture = result(
        &results,
        "tests/test_calc.py::TestGroup::test_error_in_fixture",
    );
    assert_eq!(fixture.outcome, Outcome::Failed);
    assert!(
        fixture.output.contains("missing_fixture"),
        "{}",
        fixture.output
    );
}

#[test]
fn pytest_runs_exactly_the_batch_and_the_flaky_test_passes_on_retry() {
    if !pytest_available() {
        return;
    }
    let state = flaky_state();
    let runner = runner(state.path());
    // `test_add` also exists in another module and is a prefix of `test_add_many`.
    let batch = [
        "tests/test_calc.py::test_add",
        "tests/test_calc.py::test_param[2-2-5]",
        "tests/test_calc.py::test_flaky_once",
    ]
    .map(TestId::ungrouped);
    let prepared = Default::default();
    let timeout = Duration::from_secs(60);
    let first = run_batch(&runner, &prepared, &batch, timeout);
    let report = std::fs::read_to_string(PytestRunner::junit_path(first.scratch.path())).unwrap();
    let ran: Vec<String> = junit::parse(&report)
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c.classname, c.name))
        .collect();
    assert_eq!(
        ran,
        [
            "tests.test_calc test_add",
            "tests.test_calc test_param[2-2-5]",
            "tests.test_calc test_flaky_once"
        ]
    );
    let outcomes: Vec<Outcome> = first.results.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Passed, Outcome::Failed, Outcome::Failed]
    );
    let retry = run_batch(&runner, &prepared, &batch[2..], timeout);
    assert_eq!(retry.results[0].outcome, Outcome::Passed);
}

#[test]
fn pytest_exit_code_5_is_an_empty_suite() {
    if !pytest_available() {
        return;
    }
    let state = flaky_state();
    let runner = runner(state.path()).args(["-k", "no_test_has_this_name"]);
    let (_, tests) = prepare_and_list(&runner);
    assert!(tests.is_empty(), "{tests:?}");
}

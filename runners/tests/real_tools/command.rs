//! The generic command runner on `examples/command-suite/suite.sh`, against the suite's own
//! report, with results from JUnit XML and from exit codes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tessera_runners::{CommandRunner, CommandSpec, Outcome, Prepared, Runner, TestId, junit};

use crate::harness::{
    STATE_VAR, examples, execute, flaky_state, names, outcomes, path_str, prepare_and_list, result,
    run_all, run_batch,
};

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn suite_dir() -> std::path::PathBuf {
    examples().join("command-suite")
}

/// Runs tests named as arguments and reads the JUnit report.
fn junit_runner(state: &Path) -> CommandRunner {
    CommandRunner::new(
        suite_dir(),
        argv(&["sh", "suite.sh", "list"]),
        argv(&["sh", "suite.sh", "run", "--junit", "{junit}", "{tests}"]),
    )
    .unwrap()
    .env(STATE_VAR, path_str(state))
}

/// Runs tests named in a file, one per command, judged by the exit code.
fn exit_code_runner(state: &Path) -> CommandRunner {
    CommandRunner::new(
        suite_dir(),
        argv(&["sh", "suite.sh", "list"]),
        argv(&["sh", "suite.sh", "run", "--ids", "{tests_file}"]),
    )
    .unwrap()
    .env(STATE_VAR, path_str(state))
}

/// `sh suite.sh run`, read from its `PASS id` / `FAIL id` / `SKIP id` lines.
fn suite_directly(state: &Path) -> BTreeMap<String, Outcome> {
    let spec = CommandSpec::new("sh")
        .args(["suite.sh", "run"])
        .env(STATE_VAR, path_str(state))
        .cwd(suite_dir());
    let output = execute(&spec);
    output
        .stdout
        .lines()
        .map(|line| {
            let (status, id) = line.split_once(' ').unwrap();
            let outcome = match status {
                "PASS" => Outcome::Passed,
                "FAIL" => Outcome::Failed,
                "SKIP" => Outcome::Skipped,
                other => panic!("unexpected status {other:?}"),
            };
            (id.to_owned(), outcome)
        })
        .collect()
}

const SUITE_TESTS: [&str; 6] = [
    "env::flaky_once",
    "env::skipped",
    "math::add",
    "math::add_many",
    "math::slow_sum",
    "math::wrong_answer",
];

#[test]
fn command_with_junit_reports_what_the_suite_reports() {
    let state = flaky_state();
    let runner = junit_runner(state.path());
    let (prepared, tests) = prepare_and_list(&runner);
    assert_eq!(names(&tests), SUITE_TESTS);
    assert!(runner.times_tests_itself());

    let results = run_all(&runner, &prepared, &tests);
    let direct_state = flaky_state();
    assert_eq!(outcomes(&results), suite_directly(direct_state.path()));

    let wrong = result(&results, "math::wrong_answer");
    assert!(
        wrong.output.contains("expected 5, got 4"),
        "{}",
        wrong.output
    );
    let slow = result(&results, "math::slow_sum");
    assert!(
        slow.duration.unwrap() >= Duration::from_millis(300),
        "{slow:?}"
    );
}

#[test]
fn command_without_junit_judges_each_test_by_its_exit_code() {
    let state = flaky_state();
    let runner = exit_code_runner(state.path());
    let (prepared, tests) = prepare_and_list(&runner);
    assert!(!runner.times_tests_itself());

    let results = run_all(&runner, &prepared, &tests);
    let direct_state = flaky_state();
    // An exit code cannot say "skipped": the suite's skipped test exits 0.
    let expected: BTreeMap<String, Outcome> = suite_directly(direct_state.path())
        .into_iter()
        .map(|(id, o)| {
            (
                id,
                if o == Outcome::Skipped {
                    Outcome::Passed
                } else {
                    o
                },
            )
        })
        .collect();
    assert_eq!(outcomes(&results), expected);
    let slow = result(&results, "math::slow_sum");
    assert!(
        slow.duration.unwrap() >= Duration::from_millis(300),
        "{slow:?}"
    );
}

#[test]
fn command_runs_exactly_the_batch_and_the_flaky_test_passes_on_retry() {
    let state = flaky_state();
    let runner = junit_runner(state.path());
    let batch = ["math::add", "env::flaky_once"].map(TestId::ungrouped);
    let prepared = Prepared::default();
    let timeout = Duration::from_secs(60);
    let first = run_batch(&runner, &prepared, &batch, timeout);
    let report = std::fs::read_to_string(CommandRunner::junit_path(first.scratch.path())).unwrap();
    let ran: Vec<String> = junit::parse(&report)
        .unwrap()
        .iter()
        .map(|c| format!("{}::{}", c.classname, c.name))
        .collect();
    assert_eq!(ran, ["math::add", "env::flaky_once"]);
    let outcomes: Vec<Outcome> = first.results.iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, [Outcome::Passed, Outcome::Failed]);
    let retry = run_batch(&runner, &prepared, &batch[1..], timeout);
    assert_eq!(retry.results[0].outcome, Outcome::Passed);
}

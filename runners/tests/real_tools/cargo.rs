//! The cargo (libtest) runner on `examples/rust-suite`, against `cargo test`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tessera_runners::{
    CargoTestRunner, CommandSpec, Outcome, Prepared, Runner, Termination, TestId,
};

use crate::harness::{
    STATE_VAR, examples, execute, flaky_state, names, outcomes, path_str, prepare_and_list, result,
    run_all, run_batch, rust_target_dir,
};

/// Every test of the example suite, as both Rust runners name them.
pub(crate) const RUST_SUITE_TESTS: [&str; 9] = [
    "rust-suite tests::add_small",
    "rust-suite tests::add_small_many",
    "rust-suite tests::flaky_once",
    "rust-suite tests::ignored_test",
    "rust-suite tests::slow_sum",
    "rust-suite tests::wrong_answer",
    "rust-suite::integration add_small",
    "rust-suite::integration panics_with_message",
    "rust-suite::integration slow_integration",
];

fn suite_dir() -> std::path::PathBuf {
    examples().join("rust-suite")
}

fn runner(state: &Path) -> CargoTestRunner {
    CargoTestRunner::new(suite_dir())
        .env("CARGO_TARGET_DIR", path_str(&rust_target_dir()))
        .env(STATE_VAR, path_str(state))
}

/// `cargo test --no-fail-fast`, read from its human output: each `Running ... (binary)` line
/// says which binary the `test NAME ... STATUS` lines after it belong to.
fn cargo_test_directly(prepared: &Prepared, state: &Path) -> BTreeMap<String, Outcome> {
    let spec = CommandSpec::new("sh")
        .args(["-c", "cargo test --no-fail-fast --color never 2>&1"])
        .env("CARGO_TARGET_DIR", path_str(&rust_target_dir()))
        .env(STATE_VAR, path_str(state))
        .cwd(suite_dir());
    let output = execute(&spec);
    assert_eq!(
        output.termination,
        Termination::Exited(101),
        "{}",
        output.stdout
    );
    let mut reported = BTreeMap::new();
    let mut binary: Option<&str> = None;
    for line in output.stdout.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("Running ") {
            let exe = rest.rsplit_once(" (").unwrap().1.trim_end_matches(')');
            let file_name = Path::new(exe).file_name().unwrap();
            binary = prepared
                .test_binaries
                .iter()
                .find(|b| b.executable.file_name() == Some(file_name))
                .map(|b| b.id.as_str());
        } else if trimmed.starts_with("Doc-tests") {
            binary = None;
        } else if let Some((name, status)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "))
        {
            let outcome = match status.split(',').next().unwrap() {
                "ok" => Outcome::Passed,
                "FAILED" => Outcome::Failed,
                "ignored" => Outcome::Skipped,
                other => panic!("unexpected libtest status {other:?}"),
            };
            let binary = binary.expect("a test line inside a binary's section");
            reported.insert(format!("{binary} {name}"), outcome);
        }
    }
    reported
}

#[test]
fn cargo_reports_what_cargo_test_reports() {
    let state = flaky_state();
    let runner = runner(state.path());
    let (prepared, tests) = prepare_and_list(&runner);
    assert_eq!(names(&tests), RUST_SUITE_TESTS);
    assert!(
        !runner.times_tests_itself(),
        "libtest runs one test per process"
    );

    let results = run_all(&runner, &prepared, &tests);
    let direct_state = flaky_state();
    assert_eq!(
        outcomes(&results),
        cargo_test_directly(&prepared, direct_state.path())
    );

    let wrong = result(&results, "rust-suite tests::wrong_answer");
    assert_eq!(wrong.outcome, Outcome::Failed);
    assert!(wrong.output.contains("two and two"), "{}", wrong.output);
    assert!(
        wrong.output.contains("about to compare"),
        "{}",
        wrong.output
    );
    let fast = result(&results, "rust-suite tests::add_small");
    assert!(fast.output.contains("adding 2 and 2"), "{}", fast.output);
    let slow = result(&results, "rust-suite tests::slow_sum");
    assert!(
        slow.duration.unwrap() >= Duration::from_millis(400),
        "{slow:?}"
    );
    assert_eq!(
        result(&results, "rust-suite tests::flaky_once").outcome,
        Outcome::Failed,
        "a flaky test's first run fails"
    );
    assert_eq!(
        result(&results, "rust-suite tests::ignored_test").outcome,
        Outcome::Skipped
    );
}

#[test]
fn cargo_retry_of_the_flaky_test_passes() {
    let state = flaky_state();
    let runner = runner(state.path());
    let (prepared, _) = prepare_and_list(&runner);
    let flaky = [TestId::new("rust-suite", "tests::flaky_once")];
    let timeout = Duration::from_secs(60);
    let first = run_batch(&runner, &prepared, &flaky, timeout);
    assert_eq!(first.results[0].outcome, Outcome::Failed);
    let retry = run_batch(&runner, &prepared, &flaky, timeout);
    assert_eq!(retry.results[0].outcome, Outcome::Passed);
}

#[test]
fn cargo_runs_exactly_the_named_tests_of_one_binary() {
    let state = flaky_state();
    let runner = runner(state.path());
    let (prepared, _) = prepare_and_list(&runner);
    // Several tests in one process (no durations then), one of them a prefix of another's name
    // and one with the same name as a test in the other binary.
    let batch = [
        "tests::add_small",
        "tests::wrong_answer",
        "tests::ignored_test",
    ]
    .map(|n| TestId::new("rust-suite", n));
    let run = run_batch(&runner, &prepared, &batch, Duration::from_secs(60));
    let outcomes: Vec<Outcome> = run.results.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Passed, Outcome::Failed, Outcome::Skipped]
    );
    assert!(run.results.iter().all(|r| r.duration.is_none()));
    assert!(run.results[0].output.contains("adding 2 and 2"));
    assert!(run.results[1].output.contains("two and two"));
    assert!(
        run.output.stdout.contains("running 3 tests"),
        "{}",
        run.output.stdout
    );
}

#[test]
fn cargo_test_past_its_deadline_timed_out() {
    let state = flaky_state();
    let runner = runner(state.path());
    let (prepared, _) = prepare_and_list(&runner);
    let slow = [TestId::new("rust-suite", "tests::slow_sum")];
    let run = run_batch(&runner, &prepared, &slow, Duration::from_millis(100));
    assert_eq!(run.output.termination, Termination::TimedOut);
    assert_eq!(run.results[0].outcome, Outcome::TimedOut);
}

//! The nextest runner on `examples/rust-suite`, against `cargo nextest run`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tessera_runners::{CommandSpec, NextestRunner, Outcome, Runner, TestId, junit};

use crate::cargo::RUST_SUITE_TESTS;
use crate::harness::{
    STATE_VAR, examples, execute, flaky_state, names, outcomes, path_str, prepare_and_list, result,
    run_all, run_batch, rust_target_dir,
};

fn suite_dir() -> std::path::PathBuf {
    examples().join("rust-suite")
}

fn runner(state: &Path, archive_dir: &Path) -> NextestRunner {
    NextestRunner::new(suite_dir())
        .archive_file(archive_dir.join("rust-suite.tar.zst"))
        .env("CARGO_TARGET_DIR", path_str(&rust_target_dir()))
        .env(STATE_VAR, path_str(state))
}

/// `cargo nextest run`, read from its status lines (`PASS [ 0.01s] (1/8) binary-id test`).
fn nextest_directly(state: &Path) -> BTreeMap<String, Outcome> {
    let spec = CommandSpec::new("cargo")
        .args([
            "nextest",
            "run",
            "--no-fail-fast",
            "--retries",
            "0",
            "--color",
            "never",
        ])
        .args(["--status-level", "all", "--final-status-level", "none"])
        .env("CARGO_TARGET_DIR", path_str(&rust_target_dir()))
        .env(STATE_VAR, path_str(state))
        .cwd(suite_dir());
    let output = execute(&spec);
    let mut reported = BTreeMap::new();
    for line in output.stderr.lines().chain(output.stdout.lines()) {
        let line = line.trim_start();
        let Some((status, rest)) = line.split_once(" [") else {
            continue;
        };
        let outcome = match status {
            "PASS" => Outcome::Passed,
            "FAIL" | "SIGSEGV" | "SIGABRT" | "ABORT" => Outcome::Failed,
            "SKIP" => Outcome::Skipped,
            "TIMEOUT" => Outcome::TimedOut,
            _ => continue,
        };
        let rest = rest.split_once("] ").unwrap().1;
        let test = rest.split_once(") ").map_or(rest, |(_, t)| t);
        reported.insert(test.to_owned(), outcome);
    }
    reported
}

#[test]
fn nextest_reports_what_cargo_nextest_reports() {
    let state = flaky_state();
    let archive_dir = tempfile::tempdir().unwrap();
    let runner = runner(state.path(), archive_dir.path());
    let (prepared, tests) = prepare_and_list(&runner);
    // The same ids as the cargo runner gives the same tests.
    assert_eq!(names(&tests), RUST_SUITE_TESTS);
    assert!(runner.times_tests_itself());

    let results = run_all(&runner, &prepared, &tests);
    let direct_state = flaky_state();
    assert_eq!(outcomes(&results), nextest_directly(direct_state.path()));

    let wrong = result(&results, "rust-suite tests::wrong_answer");
    assert!(wrong.output.contains("two and two"), "{}", wrong.output);
    let fast = result(&results, "rust-suite tests::add_small");
    assert!(fast.output.contains("adding 2 and 2"), "{}", fast.output);
    let slow = result(&results, "rust-suite tests::slow_sum");
    assert!(
        slow.duration.unwrap() >= Duration::from_millis(400),
        "{slow:?}"
    );
    let ignored = result(&results, "rust-suite tests::ignored_test");
    assert_eq!(ignored.outcome, Outcome::Skipped);
}

#[test]
fn nextest_runs_exactly_the_batch_and_the_flaky_test_passes_on_retry() {
    let state = flaky_state();
    let archive_dir = tempfile::tempdir().unwrap();
    let runner = runner(state.path(), archive_dir.path());
    let (prepared, _) = prepare_and_list(&runner);
    // `add_small` exists in both binaries and is a prefix of `add_small_many`.
    let batch = [
        TestId::new("rust-suite", "tests::add_small"),
        TestId::new("rust-suite", "tests::flaky_once"),
    ];
    let timeout = Duration::from_secs(120);
    let first = run_batch(&runner, &prepared, &batch, timeout);
    let report = std::fs::read_to_string(NextestRunner::junit_path(first.scratch.path())).unwrap();
    let mut ran: Vec<String> = junit::parse(&report)
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c.suite, c.name))
        .collect();
    // nextest writes test cases in the order they finished, which varies from run to run.
    ran.sort();
    assert_eq!(
        ran,
        [
            "rust-suite tests::add_small",
            "rust-suite tests::flaky_once"
        ]
    );
    assert_eq!(first.results[1].outcome, Outcome::Failed);
    let retry = run_batch(&runner, &prepared, &batch[1..], timeout);
    assert_eq!(retry.results[0].outcome, Outcome::Passed);
}

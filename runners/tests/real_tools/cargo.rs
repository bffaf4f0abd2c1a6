//! The cargo (libtest) runner on `examples/rust-suite` and the fixtures under
//! `examples/rust-suite/fixtures`, against `cargo test` run directly: the same tests, test by
//! test, with the same outcomes, for `#[should_panic]` tests, doctests of editions 2021 and
//! 2024, `harness = false` targets, libtest's filters and `--ignored`, and a workspace of
//! crates depending on each other without a `Cargo.lock`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tessera_runners::cargo::{BinaryKind, TestArgs};
use tessera_runners::{
    CargoTestRunner, CommandSpec, Outcome, Prepared, Runner, Termination, TestBinary, TestId,
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

/// `cargo test --no-fail-fast ARGS` in `dir`, read from its human output: each `Running ...
/// (binary)` or `Doc-tests CRATE` line says which binary the `test NAME ... STATUS` lines after
/// it belong to; a target without harness passed unless cargo's closing list of failed targets
/// names it. `prepared` only names the binaries.
fn cargo_test_directly(
    dir: &Path,
    args: &[&str],
    prepared: &Prepared,
    state: &Path,
) -> BTreeMap<String, Outcome> {
    let mut command = vec!["cargo", "test", "--no-fail-fast", "--color", "never"];
    command.extend(args);
    let spec = CommandSpec::new("sh")
        .args(["-c", r#""$@" 2>&1"#, "sh"])
        .args(command)
        .env("CARGO_TARGET_DIR", path_str(&rust_target_dir()))
        .env(STATE_VAR, path_str(state))
        .cwd(dir);
    let output = execute(&spec);
    assert!(
        matches!(output.termination, Termination::Exited(0 | 101)),
        "{}",
        output.stdout
    );
    let mut reported = BTreeMap::new();
    let mut binary: Option<&TestBinary> = None;
    let mut failed_targets: Vec<String> = Vec::new();
    for line in output.stdout.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("Running ") {
            let exe = rest.rsplit_once(" (").unwrap().1.trim_end_matches(')');
            let file_name = Path::new(exe).file_name().unwrap();
            binary = prepared
                .test_binaries
                .iter()
                .find(|b| b.executable.file_name() == Some(file_name));
            if let Some(TestBinary {
                id,
                kind: BinaryKind::Plain { target },
                ..
            }) = binary
            {
                reported.insert(format!("{id} {target}"), Outcome::Passed);
            }
        } else if let Some(krate) = trimmed.strip_prefix("Doc-tests ") {
            let suffix = format!("::doctest/{krate}");
            binary = prepared
                .test_binaries
                .iter()
                .find(|b| b.id.ends_with(&suffix));
        } else if let Some((name, status)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.rsplit_once(" ... "))
        {
            let name = [" - should panic", " - compile fail", " - compile"]
                .iter()
                .find_map(|mode| name.strip_suffix(mode))
                .unwrap_or(name);
            let outcome = match status.split(',').next().unwrap() {
                "ok" => Outcome::Passed,
                "FAILED" => Outcome::Failed,
                "ignored" => Outcome::Skipped,
                other => panic!("unexpected libtest status {other:?}"),
            };
            let binary = binary.expect("a test line inside a binary's section");
            reported.insert(format!("{} {name}", binary.id), outcome);
        } else if let Some(target) = trimmed
            .strip_prefix("`--test ")
            .or_else(|| trimmed.strip_prefix("error: test failed, to rerun pass `--test "))
        {
            failed_targets.push(target.trim_end_matches('`').to_owned());
        }
    }
    for binary in &prepared.test_binaries {
        if let BinaryKind::Plain { target } = &binary.kind
            && failed_targets.contains(target)
        {
            reported.insert(format!("{} {target}", binary.id), Outcome::Failed);
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
        cargo_test_directly(&suite_dir(), &[], &prepared, direct_state.path())
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

fn fixture(name: &str) -> std::path::PathBuf {
    suite_dir().join("fixtures").join(name)
}

/// The runner for `cargo test CARGO_ARGS -- TEST_ARGS` in `dir`.
fn fixture_runner(dir: &Path, cargo_args: &[&str], test_args: &[&str]) -> CargoTestRunner {
    let test_args: Vec<String> = test_args.iter().map(|a| (*a).to_owned()).collect();
    CargoTestRunner::new(dir)
        .cargo_args(cargo_args.iter().copied())
        .test_args(TestArgs::parse(&test_args).unwrap())
        .env("CARGO_TARGET_DIR", path_str(&rust_target_dir()))
}

/// Runs `cargo test CARGO_ARGS -- TEST_ARGS` in `dir` through the runner and directly, asserts
/// that both report the same tests with the same outcomes, and returns them.
fn same_as_cargo_test(
    dir: &Path,
    cargo_args: &[&str],
    test_args: &[&str],
) -> BTreeMap<String, Outcome> {
    let runner = fixture_runner(dir, cargo_args, test_args);
    let (prepared, tests) = prepare_and_list(&runner);
    let through_runner = outcomes(&run_all(&runner, &prepared, &tests));
    let mut direct_args = cargo_args.to_vec();
    if !test_args.is_empty() {
        direct_args.push("--");
        direct_args.extend(test_args);
    }
    let state = flaky_state();
    let direct = cargo_test_directly(dir, &direct_args, &prepared, state.path());
    assert_eq!(
        through_runner,
        direct,
        "cargo test {direct_args:?} in {}",
        dir.display()
    );
    through_runner
}

fn count(outcomes: &BTreeMap<String, Outcome>, part: &str, outcome: Outcome) -> usize {
    outcomes
        .iter()
        .filter(|(id, o)| id.contains(part) && **o == outcome)
        .count()
}

#[test]
fn cargo_reports_should_panic_tests_doctests_and_plain_targets_as_cargo_test_does() {
    let outcomes = same_as_cargo_test(&fixture("mixed"), &[], &[]);
    // What the fixture is for, so that a change to it cannot quietly drop a case.
    assert_eq!(outcomes["mixed tests::panics"], Outcome::Passed);
    assert_eq!(
        outcomes["mixed tests::panics_with_message"],
        Outcome::Passed
    );
    assert_eq!(
        outcomes["mixed tests::panics_with_the_wrong_message"],
        Outcome::Failed
    );
    assert_eq!(outcomes["mixed tests::does_not_panic"], Outcome::Failed);
    assert_eq!(outcomes["mixed tests::needs_a_database"], Outcome::Skipped);
    assert_eq!(
        outcomes["mixed::plain_passes plain_passes"],
        Outcome::Passed
    );
    assert_eq!(outcomes["mixed::plain_fails plain_fails"], Outcome::Failed);
    let doctest = |line: u32| format!("mixed::doctest/mixed src/lib.rs - double (line {line})");
    // A plain, a should_panic, a no_run and a compile_fail doctest pass; ignore is ignored.
    for line in [6, 10, 14, 22] {
        assert_eq!(outcomes[&doctest(line)], Outcome::Passed, "line {line}");
    }
    assert_eq!(outcomes[&doctest(18)], Outcome::Skipped);
    assert_eq!(outcomes[&doctest(26)], Outcome::Failed);
    assert_eq!(count(&outcomes, "::doctest/", Outcome::Passed), 5);
}

#[test]
fn cargo_runs_merged_doctests_of_edition_2024() {
    let outcomes = same_as_cargo_test(&fixture("doctests-2024"), &[], &[]);
    let doctests = "doctests-2024::doctest/doctests_2024";
    assert_eq!(count(&outcomes, doctests, Outcome::Passed), 5);
    assert_eq!(count(&outcomes, doctests, Outcome::Failed), 1);
    assert_eq!(count(&outcomes, doctests, Outcome::Skipped), 1);
}

#[test]
fn cargo_selects_with_libtests_filters_as_libtest_does() {
    let mixed = fixture("mixed");
    // A substring filter reaches unit tests and doctests; targets without harness always run.
    let outcomes = same_as_cargo_test(&mixed, &[], &["panics", "half"]);
    assert_eq!(count(&outcomes, "tests::panics", Outcome::Passed), 2);
    assert_eq!(count(&outcomes, "::doctest/", Outcome::Passed), 1);
    assert!(outcomes.contains_key("mixed::plain_passes plain_passes"));
    assert!(!outcomes.contains_key("mixed tests::doubles"));
    let outcomes = same_as_cargo_test(&mixed, &["--lib"], &["--exact", "tests::panics"]);
    assert_eq!(outcomes.keys().collect::<Vec<_>>(), ["mixed tests::panics"]);
    let outcomes = same_as_cargo_test(&mixed, &["--lib"], &["tests::", "--skip", "panics"]);
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
}

#[test]
fn cargo_runs_ignored_tests_when_asked_as_libtest_does() {
    let mixed = fixture("mixed");
    let outcomes = same_as_cargo_test(&mixed, &[], &["--ignored"]);
    // The ignored unit test runs (and fails), the `ignore` doctest is compiled (and fails).
    assert_eq!(outcomes["mixed tests::needs_a_database"], Outcome::Failed);
    assert_eq!(count(&outcomes, "::doctest/", Outcome::Failed), 1);
    assert!(!outcomes.contains_key("mixed tests::doubles"));
    let outcomes = same_as_cargo_test(&mixed, &["--lib"], &["--include-ignored"]);
    assert_eq!(outcomes["mixed tests::needs_a_database"], Outcome::Failed);
    assert_eq!(outcomes["mixed tests::doubles"], Outcome::Passed);
}

#[test]
fn cargo_leaves_doctests_out_or_runs_only_them_as_cargo_does() {
    let mixed = fixture("mixed");
    let outcomes = same_as_cargo_test(&mixed, &["--lib", "--tests"], &[]);
    assert_eq!(count(&outcomes, "::doctest/", Outcome::Passed), 0);
    assert!(outcomes.contains_key("mixed::plain_fails plain_fails"));
    let outcomes = same_as_cargo_test(&mixed, &["--doc"], &[]);
    assert_eq!(outcomes.len(), 7, "{outcomes:?}");
    assert!(outcomes.keys().all(|id| id.contains("::doctest/")));
}

#[test]
fn cargo_doctests_need_only_the_prepared_files() {
    let runner = fixture_runner(&fixture("mixed"), &["--doc"], &[]);
    let (prepared, _) = prepare_and_list(&runner);
    let [binary] = prepared.test_binaries.as_slice() else {
        panic!("one doctest binary: {prepared:?}")
    };
    let BinaryKind::Doctests(doctests) = &binary.kind else {
        panic!("{binary:?}")
    };
    // Every library rustdoc is told about travels to the agents that list and run doctests.
    let externs: Vec<&str> = doctests
        .argv
        .iter()
        .filter_map(|a| a.split_once('=').filter(|_| a.contains(".rlib")))
        .map(|(_, path)| path)
        .collect();
    assert!(!externs.is_empty(), "{:?}", doctests.argv);
    for path in externs {
        assert!(
            prepared.files.iter().any(|f| f == Path::new(path)),
            "{path} is not among the prepared files"
        );
    }
    // Regression (thiserror): the crate includes its build script's output, so rustdoc cannot
    // even list the doctests without `OUT_DIR`'s files.
    let out_dir = Path::new(&doctests.env["OUT_DIR"]);
    assert!(
        prepared.files.contains(&out_dir.join("generated.rs")),
        "{} is not among the prepared files",
        out_dir.join("generated.rs").display()
    );
}

#[test]
fn cargo_tests_a_workspace_without_a_lock_file() {
    // A copy, since cargo writes the lock file it resolves.
    let copy = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .arg("-R")
        .arg(fixture("workspace"))
        .arg(copy.path())
        .status()
        .unwrap();
    assert!(status.success());
    let dir = copy.path().join("workspace");
    assert!(!dir.join("Cargo.lock").exists());
    let outcomes = same_as_cargo_test(&dir, &["--workspace"], &[]);
    assert_eq!(
        outcomes.keys().collect::<Vec<_>>(),
        [
            "ws-app tests::knows_its_package",
            "ws-app tests::more_than_the_answer",
            "ws-app::doctest/ws_app app/src/lib.rs - more (line 5)",
            "ws-app::uses_both both_crates_agree",
            "ws-core tests::answers",
            "ws-core::doctest/ws_core core/src/lib.rs - answer (line 5)",
            // Regression: a proc-macro crate's unit tests could not start (libstd-*.so not
            // found), which failed the whole workspace's list step.
            "ws-macros tests::runs_with_the_toolchains_libstd",
        ]
    );
    assert!(
        outcomes.values().all(|o| *o == Outcome::Passed),
        "{outcomes:?}"
    );
    // From a member's directory, as a user in it would run it.
    same_as_cargo_test(&dir.join("app"), &[], &[]);
}

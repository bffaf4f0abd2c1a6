//! The nextest runner on `examples/rust-suite` and on a crate with a `.config/nextest.toml`,
//! against `cargo nextest run`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tessera_runners::junit::{self, CaseStatus};
use tessera_runners::{CommandSpec, NextestRunner, Outcome, Runner, TestId};

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

/// A crate whose `.config/nextest.toml` sets the per-test settings nextest applies while it
/// runs a batch: a slow-timeout that terminates, `threads-required`, a test group of one thread,
/// a leak timeout, and retries for one flaky test; plus a `ci` profile that names its own JUnit
/// path, as CI profiles do.
const CONFIG_CRATE: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        r#"[package]
name = "nextest-config"
version = "0.1.0"
edition = "2021"
publish = false

[workspace]
"#,
    ),
    (
        "src/lib.rs",
        r#"#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn quick() {}

    #[test]
    fn sleeps_past_terminate_after() {
        std::thread::sleep(Duration::from_secs(30));
    }

    #[test]
    fn needs_two_threads() {}

    #[test]
    fn serial_one() {
        std::thread::sleep(Duration::from_millis(300));
    }

    #[test]
    fn serial_two() {
        std::thread::sleep(Duration::from_millis(300));
    }

    #[test]
    fn leaks_a_child() {
        std::process::Command::new("sleep").arg("2").spawn().unwrap();
    }

    #[test]
    fn flaky_once() {
        let dir = std::env::var("TESSERA_EXAMPLE_STATE_DIR").unwrap();
        let marker = std::path::Path::new(&dir).join("nextest-config-flaky");
        if !marker.exists() {
            std::fs::write(&marker, "ran once").unwrap();
            panic!("first attempt fails on purpose");
        }
    }

    #[test]
    fn fails() {
        assert_eq!(1, 2, "on purpose");
    }
}
"#,
    ),
    (
        ".config/nextest.toml",
        r#"[test-groups]
serial = { max-threads = 1 }

[profile.default]
slow-timeout = { period = "1s", terminate-after = 2 }
leak-timeout = "100ms"

[[profile.default.overrides]]
filter = "test(needs_two_threads)"
threads-required = 2

[[profile.default.overrides]]
filter = "test(/^tests::serial_/)"
test-group = "serial"

[[profile.default.overrides]]
filter = "test(flaky_once)"
retries = 2

[profile.ci]
slow-timeout = { period = "1s", terminate-after = 2 }

[profile.ci.junit]
path = "ci-junit.xml"
"#,
    ),
];

/// Writes [`CONFIG_CRATE`] into a fresh directory. Its tests build it into its own `target`
/// ([`config_target_dir`]): two of them run at once, and with one target directory shared, one
/// test's cargo rebuilt the binary (the copies' paths and mtimes differ) while the other's nextest
/// was starting tests from it, and a test failed to start.
fn config_crate() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, contents) in CONFIG_CRATE {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    dir
}

/// `cargo nextest run ARGS` in `dir`, read from its status lines; for a retried test the last
/// attempt's line (`TRY 2 PASS`) wins, and a leaky pass (`LEAK`) is a pass, as nextest counts
/// them.
fn nextest_run_directly(dir: &Path, state: &Path, args: &[&str]) -> BTreeMap<String, Outcome> {
    let spec = CommandSpec::new("cargo")
        .args(["nextest", "run", "--no-fail-fast", "--color", "never"])
        .args(["--status-level", "all", "--final-status-level", "none"])
        .args(args.iter().copied())
        .env("CARGO_TARGET_DIR", path_str(&config_target_dir(dir)))
        .env(STATE_VAR, path_str(state))
        .cwd(dir);
    let output = execute(&spec);
    let mut reported = BTreeMap::new();
    for line in output.stderr.lines().chain(output.stdout.lines()) {
        let Some((status, rest)) = line.trim_start().split_once(" [") else {
            continue;
        };
        // `TRY 2 PASS`: nextest ran it again after a failure and it passed, which nextest
        // counts as flaky.
        let (retried, status) = match status.trim_start().strip_prefix("TRY ") {
            Some(retry) => retry
                .split_once(' ')
                .map_or((false, retry), |(n, s)| (n != "1", s)),
            None => (false, status),
        };
        let outcome = match status.trim() {
            "PASS" | "LEAK" if retried => Outcome::Flaky,
            "PASS" | "LEAK" => Outcome::Passed,
            "FAIL" | "SIGSEGV" | "SIGABRT" | "ABORT" | "LEAK-FAIL" => Outcome::Failed,
            "SKIP" => Outcome::Skipped,
            "TIMEOUT" => Outcome::TimedOut,
            _ => continue,
        };
        let Some((_, rest)) = rest.split_once("] ") else {
            continue;
        };
        let test = rest.split_once(") ").map_or(rest, |(_, t)| t);
        reported.insert(test.to_owned(), outcome);
    }
    assert!(!reported.is_empty(), "{}", output.combined());
    reported
}

/// Where a copy of [`CONFIG_CRATE`] in `dir` is built: its own `target`, never shared.
fn config_target_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("target")
}

fn config_runner(dir: &Path, state: &Path, archive_dir: &Path) -> NextestRunner {
    NextestRunner::new(dir)
        .archive_file(archive_dir.join("nextest-config.tar.zst"))
        .env("CARGO_TARGET_DIR", path_str(&config_target_dir(dir)))
        .env(STATE_VAR, path_str(state))
}

#[test]
fn nextest_applies_the_projects_per_test_settings_in_a_batch() {
    let project = config_crate();
    let state = flaky_state();
    let archive_dir = tempfile::tempdir().unwrap();
    let runner = config_runner(project.path(), state.path(), archive_dir.path());
    let (prepared, tests) = prepare_and_list(&runner);
    assert_eq!(tests.len(), 8, "{tests:?}");
    let results = run_all(&runner, &prepared, &tests);
    let direct_state = flaky_state();
    let direct = nextest_run_directly(project.path(), direct_state.path(), &[]);
    assert_eq!(outcomes(&results), direct);
    // Each setting did what it is for, on both sides.
    let outcome = |name: &str| result(&results, &format!("nextest-config tests::{name}")).outcome;
    assert_eq!(outcome("sleeps_past_terminate_after"), Outcome::TimedOut);
    assert_eq!(
        outcome("flaky_once"),
        Outcome::Flaky,
        "retried by the profile, and never cached as a clean pass"
    );
    assert_eq!(outcome("leaks_a_child"), Outcome::Passed, "a leaky pass");
    assert_eq!(outcome("needs_two_threads"), Outcome::Passed);
    assert_eq!(outcome("fails"), Outcome::Failed);
    let timed_out = result(
        &results,
        "nextest-config tests::sleeps_past_terminate_after",
    );
    assert!(
        timed_out.duration.unwrap() < Duration::from_secs(10),
        "{timed_out:?}"
    );
}

#[test]
fn nextest_selects_with_e_at_list_time_and_reads_a_ci_profiles_own_junit() {
    let project = config_crate();
    let state = flaky_state();
    let archive_dir = tempfile::tempdir().unwrap();
    let expr = "test(/serial/) | test(quick) | test(sleeps)";
    let runner = config_runner(project.path(), state.path(), archive_dir.path())
        .profile("ci")
        .filters(["-E", expr]);
    let (prepared, tests) = prepare_and_list(&runner);
    assert_eq!(
        names(&tests),
        [
            "nextest-config tests::quick",
            "nextest-config tests::serial_one",
            "nextest-config tests::serial_two",
            "nextest-config tests::sleeps_past_terminate_after",
        ]
    );
    // The batch's run command names its tests exactly; the selection is not in it.
    let invocation = runner
        .run_command(&prepared, &tests, Path::new("/scratch"))
        .unwrap();
    assert!(!invocation.command.argv.iter().any(|a| a == expr));
    let results = run_all(&runner, &prepared, &tests);
    // Compared with the JUnit report the ci profile writes when run directly: nextest's status
    // lines also show the tests `-E` left out, as SKIP, but its report, like Tessera, has only
    // the tests that were selected.
    let direct_state = flaky_state();
    nextest_run_directly(
        project.path(),
        direct_state.path(),
        &["--profile", "ci", "-E", expr],
    );
    // nextest keeps its store in the workspace's `target/nextest`, whatever CARGO_TARGET_DIR says.
    let report = project.path().join("target/nextest/ci/ci-junit.xml");
    let xml = std::fs::read_to_string(&report).unwrap();
    let direct: BTreeMap<String, Outcome> = junit::parse(&xml)
        .unwrap()
        .iter()
        .map(|case| {
            let outcome = match case.status {
                _ if case.kind.as_deref() == Some("test timeout") => Outcome::TimedOut,
                CaseStatus::Passed => Outcome::Passed,
                CaseStatus::Skipped => Outcome::Skipped,
                CaseStatus::Failed | CaseStatus::Errored => Outcome::Failed,
            };
            (format!("{} {}", case.suite, case.name), outcome)
        })
        .collect();
    assert_eq!(outcomes(&results), direct);
    assert_eq!(
        result(
            &results,
            "nextest-config tests::sleeps_past_terminate_after"
        )
        .outcome,
        Outcome::TimedOut
    );
}

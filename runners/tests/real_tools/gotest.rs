//! The go test runner on `examples/go-suite` and its `edge/` module, against `go test -json`.
//!
//! The comparison is at `go test -json`'s own granularity: every test event, top-level tests
//! and subtests (`TestX/case`, which the runner reports after the requested tests), plus one
//! `[build failed]` (or `[package failed]`) error for each package that failed without a
//! failing test. Every subtest's status line must also appear in its parent's output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tessera_runners::gotest::{BUILD_FAILED, PACKAGE_FAILED};
use tessera_runners::{CommandSpec, GoTestRunner, Outcome, Prepared, TestId, TestResult};

use crate::harness::{
    STATE_VAR, examples, execute, flaky_state, names, outcomes, path_str, prepare_and_list, result,
    run_all, run_batch, tool_available,
};

fn suite_dir() -> PathBuf {
    examples().join("go-suite")
}

fn edge_dir() -> PathBuf {
    suite_dir().join("edge")
}

fn go_available() -> bool {
    tool_available("go", &["go", "version"])
}

fn runner(dir: PathBuf, state: &Path) -> GoTestRunner {
    // GOTOOLCHAIN=local: a newer go must not try to download another toolchain.
    GoTestRunner::new(dir)
        .packages(["./..."])
        .env("GOTOOLCHAIN", "local")
        .env(STATE_VAR, path_str(state))
}

/// What a direct `go test -json` run reported.
struct DirectRun {
    /// Top-level tests and failed packages, as Tessera names them.
    top_level: BTreeMap<String, Outcome>,
    /// `package parent/sub...` to the subtest's final action (`pass`, `fail`, `skip`).
    subtests: BTreeMap<String, String>,
}

/// `go test -count=1 -json FLAGS PACKAGES` in `dir`, read at go's top level (see the module doc).
fn go_test_directly(dir: &Path, state: &Path, flags: &[&str]) -> DirectRun {
    let spec = CommandSpec::new("go")
        .args(["test", "-count=1", "-json"])
        .args(flags.iter().copied())
        .env("GOTOOLCHAIN", "local")
        .env(STATE_VAR, path_str(state))
        .cwd(dir);
    let output = execute(&spec);
    let mut run = DirectRun {
        top_level: BTreeMap::new(),
        subtests: BTreeMap::new(),
    };
    let mut failed_packages = Vec::new();
    for line in output.stdout.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            // go 1.19 prints a build failure as plain text: `FAIL\t<pkg> [build failed]`.
            if let Some((package, reason)) = line
                .strip_prefix("FAIL\t")
                .and_then(|rest| rest.split_once(' '))
            {
                run.top_level
                    .insert(format!("{package} {reason}"), Outcome::Error);
            }
            continue;
        };
        let package = event["Package"].as_str().unwrap().to_owned();
        let action = event["Action"].as_str().unwrap();
        if !matches!(action, "pass" | "fail" | "skip") {
            continue;
        }
        match event["Test"].as_str() {
            None if action == "fail" => failed_packages.push(package),
            None => {}
            Some(test) if test.contains('/') => {
                run.subtests
                    .insert(format!("{package} {test}"), action.to_owned());
            }
            Some(test) => {
                let outcome = match action {
                    "pass" => Outcome::Passed,
                    "fail" => Outcome::Failed,
                    _ => Outcome::Skipped,
                };
                run.top_level.insert(format!("{package} {test}"), outcome);
            }
        }
    }
    // A package that failed with no failing test of its own failed outside any test.
    for package in failed_packages {
        let explained = run
            .top_level
            .iter()
            .any(|(id, o)| id.starts_with(&format!("{package} ")) && *o == Outcome::Failed);
        if !explained {
            run.top_level
                .insert(format!("{package} {PACKAGE_FAILED}"), Outcome::Error);
        }
    }
    run
}

impl DirectRun {
    /// Every test the direct run reported, subtests included, as Tessera names them.
    fn all(&self) -> BTreeMap<String, Outcome> {
        let mut all = self.top_level.clone();
        for (subtest, action) in &self.subtests {
            let outcome = match action.as_str() {
                "pass" => Outcome::Passed,
                "fail" => Outcome::Failed,
                _ => Outcome::Skipped,
            };
            all.insert(subtest.clone(), outcome);
        }
        all
    }
}

/// Every subtest the direct run reported appears in its top-level test's output with go's own
/// status line, so a reader of Tessera's report sees each subtest's outcome.
fn assert_subtests_reported(results: &[TestResult], direct: &DirectRun) {
    assert!(!direct.subtests.is_empty());
    for (subtest, action) in &direct.subtests {
        let (package, test) = subtest.split_once(' ').unwrap();
        let top = test.split('/').next().unwrap();
        let parent = result(results, &format!("{package} {top}"));
        let status = format!("--- {}: {test} ", action.to_uppercase());
        assert!(
            parent.output.contains(&status),
            "{subtest}: no `{status}` in the output of {top}:\n{}",
            parent.output
        );
    }
}

#[test]
fn go_reports_what_go_test_reports() {
    if !go_available() {
        return;
    }
    let state = flaky_state();
    let runner = runner(suite_dir(), state.path());
    let (prepared, tests) = prepare_and_list(&runner);
    assert_eq!(
        names(&tests),
        [
            "example.com/go-suite/calc ExampleAdd",
            "example.com/go-suite/calc TestAdd",
            "example.com/go-suite/calc TestAddMany",
            "example.com/go-suite/calc TestFlakyOnce",
            "example.com/go-suite/calc TestSkipped",
            "example.com/go-suite/calc TestSlow",
            "example.com/go-suite/calc TestSubtestFails",
            "example.com/go-suite/calc TestTable",
            "example.com/go-suite/calc TestWrongAnswer",
            "example.com/go-suite/strutil TestAdd",
        ]
    );

    let results = run_all(&runner, &prepared, &tests);
    let direct_state = flaky_state();
    let direct = go_test_directly(&suite_dir(), direct_state.path(), &["./..."]);
    assert_eq!(outcomes(&results), direct.all());
    assert_subtests_reported(&results, &direct);

    let wrong = result(&results, "example.com/go-suite/calc TestWrongAnswer");
    assert!(
        wrong.output.contains("Add(2, 2) = 4, want 5"),
        "{}",
        wrong.output
    );
    assert!(
        wrong.output.contains("about to compare"),
        "{}",
        wrong.output
    );
    let sub = result(&results, "example.com/go-suite/calc TestSubtestFails");
    assert!(sub.output.contains("sub failure"), "{}", sub.output);
    let slow = result(&results, "example.com/go-suite/calc TestSlow");
    assert!(
        slow.duration.unwrap() >= Duration::from_millis(400),
        "{slow:?}"
    );
}

#[test]
fn go_runs_exactly_the_batch_and_the_flaky_test_passes_on_retry() {
    if !go_available() {
        return;
    }
    let state = flaky_state();
    let runner = runner(suite_dir(), state.path());
    // `TestAdd` also exists in strutil and is a prefix of `TestAddMany`.
    let batch = ["TestAdd", "TestFlakyOnce"].map(|n| TestId::new("example.com/go-suite/calc", n));
    let prepared = Prepared::default();
    let timeout = Duration::from_secs(120);
    let first = run_batch(&runner, &prepared, &batch, timeout);
    let started: Vec<&str> = first
        .output
        .stdout
        .lines()
        .filter(|l| l.contains(r#""Action":"run""#))
        .collect();
    assert_eq!(started.len(), 2, "{started:#?}");
    assert!(
        started
            .iter()
            .all(|l| l.contains("example.com/go-suite/calc"))
    );
    let outcomes: Vec<Outcome> = first.results.iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, [Outcome::Passed, Outcome::Failed]);
    let retry = run_batch(&runner, &prepared, &batch[1..], timeout);
    assert_eq!(retry.results[0].outcome, Outcome::Passed);
}

/// The edge module: subtests of every shape, examples, a fuzz test's seed corpus, a package
/// whose tests do not compile and one whose `TestMain` fails the package, all in one `./...`.
#[test]
fn go_reports_subtests_examples_and_broken_packages_as_go_test_does() {
    if !go_available() {
        return;
    }
    let state = flaky_state();
    let runner = runner(edge_dir(), state.path());
    let (prepared, tests) = prepare_and_list(&runner);
    let listed = names(&tests);
    let edge = |name: &str| format!("example.com/go-edge/{name}");
    for expected in [
        edge("subtests ExampleDouble"),
        edge("subtests ExampleDouble_wrong"),
        edge("subtests FuzzDouble"),
        edge(&format!("broken {BUILD_FAILED}")),
        edge(&format!("mainfail {PACKAGE_FAILED}")),
        edge("mainfail TestFine"),
    ] {
        assert!(listed.contains(&expected), "{expected} not in {listed:#?}");
    }
    // Benchmarks and examples without an output comment are not run by `go test`.
    assert!(
        listed
            .iter()
            .all(|t| !t.contains("Benchmark") && !t.contains("unchecked")),
        "{listed:#?}"
    );

    let results = run_all(&runner, &prepared, &tests);
    let direct_state = flaky_state();
    let direct = go_test_directly(&edge_dir(), direct_state.path(), &["./..."]);
    assert_eq!(outcomes(&results), direct.all());
    assert_subtests_reported(&results, &direct);
    // The suite still exercises what it was written for.
    assert_eq!(
        direct.top_level[&edge(&format!("broken {BUILD_FAILED}"))],
        Outcome::Error
    );
    assert_eq!(
        direct.subtests[&edge("subtests TestNestedFails/broken/leaf")],
        "fail"
    );
    assert_eq!(
        direct.subtests[&edge("subtests TestSkippedSubtest/skips")],
        "skip"
    );

    let broken = result(&results, &edge(&format!("broken {BUILD_FAILED}")));
    assert!(
        broken.output.contains("undefined: notDefinedAnywhere"),
        "{}",
        broken.output
    );
    let example = result(&results, &edge("subtests ExampleDouble_wrong"));
    assert!(example.output.contains("want:"), "{}", example.output);
}

/// `-run` with a subtest level, `-tags` and `-short`: the same selection and outcomes as go.
#[test]
fn go_filters_with_run_as_go_does_and_honours_tags_and_short() {
    const RUN: &str = "TestNested/outer|TestLong|TestIntegration";
    if !go_available() {
        return;
    }
    let state = flaky_state();
    let flags = ["-tags", "integration", "-short"];
    let runner = runner(edge_dir(), state.path()).args(flags).run_filter(RUN);
    let (prepared, tests) = prepare_and_list(&runner);
    let edge = |name: &str| format!("example.com/go-edge/{name}");
    assert_eq!(
        names(&tests),
        [
            edge(&format!("broken {BUILD_FAILED}")),
            // mainfail's TestMain fails the package even with no test to list.
            edge(&format!("mainfail {PACKAGE_FAILED}")),
            edge("subtests TestLong"),
            edge("subtests TestNested"),
            edge("subtests TestNestedFails"),
            edge("tagged TestIntegration"),
        ]
    );
    let results = run_all(&runner, &prepared, &tests);
    let direct_state = flaky_state();
    let mut direct_flags = flags.to_vec();
    direct_flags.extend(["-run", RUN, "./..."]);
    let direct = go_test_directly(&edge_dir(), direct_state.path(), &direct_flags);
    assert_eq!(outcomes(&results), direct.all());
    assert_subtests_reported(&results, &direct);
    // `-short` skips TestLong; `TestNested/outer` runs one branch of TestNested's subtests and
    // none of TestNestedFails' (whose name `TestNested` also matches), so it passes.
    assert_eq!(
        result(&results, &edge("subtests TestLong")).outcome,
        Outcome::Skipped
    );
    assert_eq!(
        result(&results, &edge("subtests TestNestedFails")).outcome,
        Outcome::Passed
    );
    assert!(
        direct
            .subtests
            .contains_key(&edge("subtests TestNested/outer/deeper/leaf"))
    );
    assert!(
        !direct
            .subtests
            .contains_key(&edge("subtests TestNested/other"))
    );
    let nested = result(&results, &edge("subtests TestNested"));
    assert!(
        !nested.output.contains("TestNested/other"),
        "{}",
        nested.output
    );
}

//! The go test runner on `examples/go-suite`, against `go test -v`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tessera_runners::{CommandSpec, GoTestRunner, Outcome, Prepared, TestId};

use crate::harness::{
    STATE_VAR, examples, execute, flaky_state, names, outcomes, path_str, prepare_and_list, result,
    run_all, run_batch, tool_available,
};

fn suite_dir() -> std::path::PathBuf {
    examples().join("go-suite")
}

fn go_available() -> bool {
    tool_available("go", &["go", "version"])
}

fn runner(state: &Path) -> GoTestRunner {
    // GOTOOLCHAIN=local: a newer go must not try to download another toolchain.
    GoTestRunner::new(suite_dir())
        .env("GOTOOLCHAIN", "local")
        .env(STATE_VAR, path_str(state))
}

/// `go test -v ./...`, read from its top-level `--- PASS: Name (0.00s)` lines, each package's
/// lines followed by its `ok` or `FAIL` line.
fn go_test_directly(state: &Path) -> BTreeMap<String, Outcome> {
    let spec = CommandSpec::new("go")
        .args(["test", "-count=1", "-v", "./..."])
        .env("GOTOOLCHAIN", "local")
        .env(STATE_VAR, path_str(state))
        .cwd(suite_dir());
    let output = execute(&spec);
    let mut reported = BTreeMap::new();
    let mut pending = Vec::new();
    for line in output.stdout.lines() {
        if let Some(rest) = line.strip_prefix("--- ") {
            let (status, rest) = rest.split_once(": ").unwrap();
            let name = rest.split_whitespace().next().unwrap().to_owned();
            let outcome = match status {
                "PASS" => Outcome::Passed,
                "FAIL" => Outcome::Failed,
                "SKIP" => Outcome::Skipped,
                other => panic!("unexpected go test status {other:?}"),
            };
            pending.push((name, outcome));
        } else if let Some(package) = line
            .strip_prefix("ok  \t")
            .or_else(|| line.strip_prefix("FAIL\t"))
            .and_then(|rest| rest.split('\t').next())
        {
            for (name, outcome) in pending.drain(..) {
                reported.insert(format!("{package} {name}"), outcome);
            }
        }
    }
    reported
}

#[test]
fn go_reports_what_go_test_reports() {
    if !go_available() {
        return;
    }
    let state = flaky_state();
    let runner = runner(state.path());
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
    assert_eq!(outcomes(&results), go_test_directly(direct_state.path()));

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
    let runner = runner(state.path());
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

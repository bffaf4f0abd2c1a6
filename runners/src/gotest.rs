//! The go test runner (checked with Go 1.19, Debian 12's).
//!
//! - **list**: `go test -list . PACKAGES`: for each package, the names of its tests, benchmarks,
//!   fuzz tests and examples (with output) one a line, then `ok  <import path>  <time>`; a
//!   package without tests prints `?  <import path>  [no test files]`. Tests, fuzz tests (whose
//!   seed corpus `go test` runs) and examples become [`TestId`]s grouped by import path;
//!   benchmarks do not, since `go test` without `-bench` does not run them.
//! - **run**: `go test -count=1 -json -run '^(A|B)$' PACKAGE`, one package per command
//!   ([`Batching::PerGroup`]), since `-run` applies to every package named. `-count=1` keeps Go's
//!   test cache from answering: Tessera caches results itself.
//! - **results**: `go test -json` events (test2json). A top-level test's `pass`, `fail` or `skip`
//!   event gives its outcome and `Elapsed` (Go prints it with 10 ms resolution); its output,
//!   subtests' output included, comes from the `output` events. A test that never got a final
//!   event (the package failed to build, or an earlier test panicked and took the process
//!   down) has [`Outcome::NoResult`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    Batching, CommandOutput, CommandSpec, Outcome, Prepared, RunInvocation, Runner, RunnerError,
    TestId, TestResult, list_failed, unreported,
};

/// Runs tests with `go test`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoTestRunner {
    /// Where to run go: the module root.
    pub dir: PathBuf,
    /// Package patterns to list; `["./..."]` by default.
    #[serde(default = "default_packages")]
    pub packages: Vec<String>,
    /// Extra build and test flags for both listing and running, such as `-tags=integration` or
    /// `-race`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Variables for every command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_packages() -> Vec<String> {
    vec!["./...".to_owned()]
}

impl GoTestRunner {
    /// These settings without those that only select tests, for cache keys (see
    /// [`crate::RunnerConfig::key_settings`]).
    pub fn without_selection(&self) -> Self {
        self.clone()
    }

    /// Runs `go test` on `./...` in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            packages: default_packages(),
            args: Vec::new(),
            env: BTreeMap::new(),
        }
    }

    /// Lists these package patterns instead of `./...`.
    pub fn packages<I, S>(mut self, packages: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.packages = packages.into_iter().map(Into::into).collect();
        self
    }

    /// Adds build and test flags.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets a variable for every command.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    fn go_test(&self) -> CommandSpec {
        CommandSpec::new("go")
            .arg("test")
            .args(self.args.iter().cloned())
            .envs(&self.env)
            .cwd(&self.dir)
    }
}

impl Runner for GoTestRunner {
    fn name(&self) -> &'static str {
        "go"
    }

    fn list_command(&self, _prepared: &Prepared) -> CommandSpec {
        self.go_test()
            .args(["-list", "."])
            .args(self.packages.iter().cloned())
    }

    fn parse_list(
        &self,
        _prepared: &Prepared,
        output: &CommandOutput,
    ) -> Result<Vec<TestId>, RunnerError> {
        if !output.termination.success() {
            return Err(list_failed(output));
        }
        let mut tests = Vec::new();
        let mut pending: Vec<&str> = Vec::new();
        for line in output.stdout.lines() {
            let mut fields = line.split_whitespace();
            match (fields.next(), fields.next()) {
                (Some("ok"), Some(package)) => {
                    tests.extend(pending.drain(..).map(|name| TestId::new(package, name)));
                }
                (Some("?"), Some(_)) => pending.clear(),
                (Some(name), None) if is_runnable(name) => pending.push(name),
                _ => {}
            }
        }
        if !pending.is_empty() {
            return Err(RunnerError::UnexpectedOutput {
                tool: "go test",
                detail: format!("tests listed without a package: {}", pending.join(", ")),
            });
        }
        Ok(tests)
    }

    fn batching(&self) -> Batching {
        Batching::PerGroup
    }

    fn run_command(
        &self,
        _prepared: &Prepared,
        tests: &[TestId],
        _scratch: &Path,
    ) -> Result<RunInvocation, RunnerError> {
        let first = tests.first().ok_or(RunnerError::EmptyBatch)?;
        Batching::PerGroup.check("go", tests)?;
        let names: Vec<String> = tests.iter().map(|t| regex_quote(&t.name)).collect();
        let command = self
            .go_test()
            .args(["-count=1", "-json", "-run"])
            .arg(format!("^({})$", names.join("|")))
            .arg(&first.group);
        Ok(RunInvocation {
            command,
            files: Vec::new(),
        })
    }

    fn parse_results(
        &self,
        _prepared: &Prepared,
        tests: &[TestId],
        output: &CommandOutput,
        _scratch: &Path,
    ) -> Result<Vec<TestResult>, RunnerError> {
        let mut reports: BTreeMap<&str, Report> = BTreeMap::new();
        let mut package_output = String::new();
        // Lines that are not events (a build failure's messages, say) are not about one test.
        let events = output
            .stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<Event>(line).ok());
        for event in events {
            let Some(test) = event.test.as_deref() else {
                if event.action == "output" {
                    package_output.push_str(event.output.as_deref().unwrap_or_default());
                }
                continue;
            };
            // Subtests ("Parent/sub") belong to their top-level test.
            let top = test.split('/').next().unwrap_or(test);
            let Some(id) = tests.iter().find(|t| t.name == top) else {
                continue;
            };
            let report = reports.entry(id.name.as_str()).or_default();
            match event.action.as_str() {
                "output" => report
                    .output
                    .push_str(event.output.as_deref().unwrap_or_default()),
                "pass" | "fail" | "skip" if top == test => {
                    report.outcome = Some(match event.action.as_str() {
                        "pass" => Outcome::Passed,
                        "fail" => Outcome::Failed,
                        _ => Outcome::Skipped,
                    });
                    report.elapsed = event
                        .elapsed
                        .and_then(|secs| Duration::try_from_secs_f64(secs).ok());
                }
                _ => {}
            }
        }
        Ok(tests
            .iter()
            .map(|id| match reports.remove(id.name.as_str()) {
                Some(Report {
                    outcome: Some(outcome),
                    elapsed,
                    output: text,
                }) => TestResult {
                    id: id.clone(),
                    outcome,
                    duration: elapsed,
                    output: text,
                },
                partial => {
                    let mut result = unreported(id, output, "go test did not report this test");
                    let started = partial.map(|r| r.output).unwrap_or_default();
                    result.output = format!("{started}{package_output}{}", result.output);
                    result
                }
            })
            .collect())
    }
}

/// What the events said about one top-level test.
#[derive(Default)]
struct Report {
    outcome: Option<Outcome>,
    elapsed: Option<Duration>,
    output: String,
}

/// One `go test -json` event (`go doc test2json`).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Event {
    action: String,
    test: Option<String>,
    elapsed: Option<f64>,
    output: Option<String>,
}

/// Whether `go test -list` printed `name` as something `go test -run` runs.
fn is_runnable(name: &str) -> bool {
    ["Test", "Fuzz", "Example"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        && name.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Escapes regular-expression metacharacters (Go identifiers have none, but ids come from
/// outside).
fn regex_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::Termination;

    use super::*;

    fn output(termination: Termination, stdout: &str) -> CommandOutput {
        CommandOutput {
            termination,
            stdout: stdout.to_owned(),
            stderr: String::new(),
            elapsed: Duration::from_secs(1),
        }
    }

    #[test]
    fn list_groups_names_by_the_package_line_after_them() {
        let stdout = "TestA\nExampleA\nBenchmarkA\nok  \tm/a\t0.003s\n\
                      ?   \tm/none\t[no test files]\nTestA\nFuzzB\nok  \tm/b\t0.002s\n";
        let tests = GoTestRunner::new("/src")
            .parse_list(
                &Prepared::default(),
                &output(Termination::Exited(0), stdout),
            )
            .unwrap();
        assert_eq!(
            tests,
            [
                TestId::new("m/a", "TestA"),
                TestId::new("m/a", "ExampleA"),
                TestId::new("m/b", "TestA"),
                TestId::new("m/b", "FuzzB"),
            ]
        );
    }

    #[test]
    fn run_selects_exact_names_in_one_package() {
        let runner = GoTestRunner::new("/src").args(["-race"]);
        let tests = [TestId::new("m/a", "TestA"), TestId::new("m/a", "TestB")];
        let run = runner
            .run_command(&Prepared::default(), &tests, Path::new("/s"))
            .unwrap();
        assert_eq!(
            run.command.argv,
            [
                "go",
                "test",
                "-race",
                "-count=1",
                "-json",
                "-run",
                "^(TestA|TestB)$",
                "m/a"
            ]
        );
        let mixed = [TestId::new("m/a", "TestA"), TestId::new("m/b", "TestA")];
        assert!(
            runner
                .run_command(&Prepared::default(), &mixed, Path::new("/s"))
                .is_err()
        );
    }

    #[test]
    fn results_come_from_top_level_events() {
        let events = [
            r#"{"Action":"run","Package":"m/a","Test":"TestA"}"#,
            r#"{"Action":"output","Package":"m/a","Test":"TestA","Output":"=== RUN   TestA\n"}"#,
            r#"{"Action":"pass","Package":"m/a","Test":"TestA","Elapsed":0.25}"#,
            r#"{"Action":"run","Package":"m/a","Test":"TestT/x"}"#,
            r#"{"Action":"output","Package":"m/a","Test":"TestT/x","Output":"sub failed\n"}"#,
            r#"{"Action":"fail","Package":"m/a","Test":"TestT/x","Elapsed":0}"#,
            r#"{"Action":"fail","Package":"m/a","Test":"TestT","Elapsed":0.01}"#,
            r#"{"Action":"skip","Package":"m/a","Test":"TestS","Elapsed":0}"#,
            r#"{"Action":"run","Package":"m/a","Test":"TestPanic"}"#,
            r#"{"Action":"output","Package":"m/a","Test":"TestPanic","Output":"panic: boom\n"}"#,
            r#"{"Action":"output","Package":"m/a","Output":"FAIL\tm/a\t0.1s\n"}"#,
            r#"{"Action":"fail","Package":"m/a","Elapsed":0.1}"#,
        ]
        .join("\n");
        let tests = ["TestA", "TestT", "TestS", "TestPanic"].map(|n| TestId::new("m/a", n));
        let results = GoTestRunner::new("/src")
            .parse_results(
                &Prepared::default(),
                &tests,
                &output(Termination::Exited(1), &events),
                Path::new("/s"),
            )
            .unwrap();
        let outcomes: Vec<Outcome> = results.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Passed,
                Outcome::Failed,
                Outcome::Skipped,
                Outcome::NoResult
            ]
        );
        assert_eq!(results[0].duration, Some(Duration::from_millis(250)));
        assert_eq!(results[1].output, "sub failed\n");
        assert!(
            results[3].output.starts_with("panic: boom\nFAIL\tm/a"),
            "{}",
            results[3].output
        );
    }
}

//! The generic runner: any command that can list its tests and run a given subset.
//!
//! - **prepare** (optional): a fixed command, which must exit 0.
//! - **list**: a fixed command printing one test id a line (blank lines are ignored).
//! - **run**: a template, an argv in which these placeholders are replaced:
//!   - `{tests}`, as a whole argument: one argument per test id;
//!   - `{tests_file}`: path of a file in the scratch directory with one test id a line;
//!   - `{junit}`: path where the command should write a JUnit XML report;
//!   - `{scratch}`: the batch's scratch directory.
//!
//!   The template must use `{tests}` or `{tests_file}`, since it has to run exactly the batch.
//! - **results**: with `{junit}`, from the report: a case is the test whose id equals its
//!   `classname` and `name` joined by `.`, `::` or `/` (or its suite name and `name` joined by
//!   `::` or `.`), or else its bare `name`. A requested test missing from the report has
//!   [`Outcome::NoResult`]. Without `{junit}`, or when the command wrote no report, the exit code
//!   decides for the whole batch (0 passed, anything else failed): then the runner cannot time
//!   tests, so it runs one test per command ([`Batching::PerTest`]) and the command's
//!   wall-clock time is the test's duration. Exit codes know no skips: a skipped test passes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::junit::{self, CaseStatus, JunitCase};
use crate::{
    Batching, CommandOutput, CommandSpec, Outcome, Prepared, RunInvocation, Runner, RunnerError,
    ScratchFile, Termination, TestId, TestResult, check_prepare, list_failed, unreported,
};

/// Placeholder for the test ids, one argument each.
pub const TESTS: &str = "{tests}";
/// Placeholder for the path of a file listing the test ids.
pub const TESTS_FILE: &str = "{tests_file}";
/// Placeholder for the path the command writes its JUnit report to.
pub const JUNIT: &str = "{junit}";
/// Placeholder for the batch's scratch directory.
pub const SCRATCH: &str = "{scratch}";

/// Runs tests with any command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRunner {
    /// Working directory of every command.
    pub dir: PathBuf,
    /// Optional build step.
    #[serde(default)]
    pub prepare: Option<Vec<String>>,
    /// Prints one test id a line.
    pub list: Vec<String>,
    /// Runs the tests named by its placeholders.
    pub run: Vec<String>,
    /// Variables for every command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl CommandRunner {
    /// A runner with these list and run commands, checked.
    pub fn new(
        dir: impl Into<PathBuf>,
        list: Vec<String>,
        run: Vec<String>,
    ) -> Result<Self, RunnerError> {
        let runner = Self {
            dir: dir.into(),
            prepare: None,
            list,
            run,
            env: BTreeMap::new(),
        };
        runner.validate()?;
        Ok(runner)
    }

    /// Adds a build step.
    pub fn prepare(mut self, argv: Vec<String>) -> Self {
        self.prepare = Some(argv);
        self
    }

    /// Sets a variable for every command.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Checks the commands: none empty, and a run template that names its tests, with
    /// `{tests}` only as a whole argument. (Deserialized runners are checked when used.)
    pub fn validate(&self) -> Result<(), RunnerError> {
        if self.list.is_empty() || self.run.is_empty() {
            return Err(RunnerError::BadTemplate(
                "the list and run commands must not be empty".to_owned(),
            ));
        }
        if self.prepare.as_ref().is_some_and(Vec::is_empty) {
            return Err(RunnerError::BadTemplate(
                "the prepare command must not be empty".to_owned(),
            ));
        }
        if let Some(arg) = self.run.iter().find(|a| a.contains(TESTS) && *a != TESTS) {
            return Err(RunnerError::BadTemplate(format!(
                "{TESTS} must be a whole argument, not part of {arg:?}"
            )));
        }
        if !self
            .run
            .iter()
            .any(|a| a == TESTS || a.contains(TESTS_FILE))
        {
            return Err(RunnerError::BadTemplate(format!(
                "the run command must name its tests with {TESTS} or {TESTS_FILE}"
            )));
        }
        Ok(())
    }

    fn writes_junit(&self) -> bool {
        self.run.iter().any(|a| a.contains(JUNIT))
    }

    /// Where a run in `scratch` has its JUnit report written.
    pub fn junit_path(scratch: &Path) -> PathBuf {
        scratch.join("junit.xml")
    }

    fn tests_file_path(scratch: &Path) -> PathBuf {
        scratch.join("tests.txt")
    }

    fn spec(&self, argv: Vec<String>) -> CommandSpec {
        CommandSpec {
            argv,
            ..CommandSpec::default()
        }
        .envs(&self.env)
        .cwd(&self.dir)
    }
}

impl Runner for CommandRunner {
    fn name(&self) -> &'static str {
        "command"
    }

    fn prepare_command(&self) -> Option<CommandSpec> {
        self.prepare.clone().map(|argv| self.spec(argv))
    }

    fn parse_prepare(&self, output: &CommandOutput) -> Result<Prepared, RunnerError> {
        check_prepare(output)?;
        Ok(Prepared::default())
    }

    fn list_command(&self, _prepared: &Prepared) -> CommandSpec {
        self.spec(self.list.clone())
    }

    fn parse_list(
        &self,
        _prepared: &Prepared,
        output: &CommandOutput,
    ) -> Result<Vec<TestId>, RunnerError> {
        if !output.termination.success() {
            return Err(list_failed(output));
        }
        Ok(output
            .stdout
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(TestId::ungrouped)
            .collect())
    }

    fn batching(&self) -> Batching {
        if self.writes_junit() {
            Batching::Any
        } else {
            Batching::PerTest
        }
    }

    fn run_command(
        &self,
        _prepared: &Prepared,
        tests: &[TestId],
        scratch: &Path,
    ) -> Result<RunInvocation, RunnerError> {
        self.validate()?;
        if tests.is_empty() {
            return Err(RunnerError::EmptyBatch);
        }
        self.batching().check("command", tests)?;
        let tests_file = Self::tests_file_path(scratch);
        let junit = Self::junit_path(scratch);
        let mut argv = Vec::new();
        for arg in &self.run {
            if arg == TESTS {
                argv.extend(tests.iter().map(|t| t.name.clone()));
            } else {
                argv.push(
                    arg.replace(TESTS_FILE, &tests_file.display().to_string())
                        .replace(JUNIT, &junit.display().to_string())
                        .replace(SCRATCH, &scratch.display().to_string()),
                );
            }
        }
        let mut files = Vec::new();
        if self.run.iter().any(|a| a.contains(TESTS_FILE)) {
            let mut contents = String::new();
            for test in tests {
                contents.push_str(&test.name);
                contents.push('\n');
            }
            files.push(ScratchFile {
                path: tests_file,
                contents,
            });
        }
        Ok(RunInvocation {
            command: self.spec(argv),
            files,
        })
    }

    fn parse_results(
        &self,
        _prepared: &Prepared,
        tests: &[TestId],
        output: &CommandOutput,
        scratch: &Path,
    ) -> Result<Vec<TestResult>, RunnerError> {
        if self.writes_junit() {
            let path = Self::junit_path(scratch);
            match std::fs::read_to_string(&path) {
                Ok(xml) => {
                    let cases = junit::parse(&xml).map_err(|source| RunnerError::Junit {
                        path: path.clone(),
                        source,
                    })?;
                    return Ok(results_from_junit(tests, &cases, output));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(RunnerError::Io { path, source }),
            }
        }
        Ok(results_from_exit_code(tests, output))
    }
}

fn results_from_junit(
    tests: &[TestId],
    cases: &[JunitCase],
    output: &CommandOutput,
) -> Vec<TestResult> {
    tests
        .iter()
        .map(|id| match find_case(cases, &id.name) {
            Some(case) => TestResult {
                id: id.clone(),
                outcome: match case.status {
                    CaseStatus::Passed => Outcome::Passed,
                    CaseStatus::Skipped => Outcome::Skipped,
                    CaseStatus::Failed | CaseStatus::Errored => Outcome::Failed,
                },
                duration: case.time,
                output: case.combined_output(),
            },
            None => unreported(id, output, "the JUnit report does not mention this test"),
        })
        .collect()
}

/// The case for test id `id`: a qualified match first, then a bare name.
fn find_case<'a>(cases: &'a [JunitCase], id: &str) -> Option<&'a JunitCase> {
    let qualified = |c: &JunitCase| {
        let with = |prefix: &str, sep: &str| {
            !prefix.is_empty()
                && id.len() == prefix.len() + sep.len() + c.name.len()
                && id.starts_with(prefix)
                && id[prefix.len()..].starts_with(sep)
                && id.ends_with(c.name.as_str())
        };
        with(&c.classname, ".")
            || with(&c.classname, "::")
            || with(&c.classname, "/")
            || with(&c.suite, "::")
            || with(&c.suite, ".")
    };
    cases
        .iter()
        .find(|c| qualified(c))
        .or_else(|| cases.iter().find(|c| c.name == id))
}

fn results_from_exit_code(tests: &[TestId], output: &CommandOutput) -> Vec<TestResult> {
    let outcome = match output.termination {
        Termination::Exited(0) => Outcome::Passed,
        Termination::TimedOut => Outcome::TimedOut,
        Termination::Exited(_) | Termination::Signaled(_) => Outcome::Failed,
    };
    let duration = (tests.len() == 1).then_some(output.elapsed);
    let text = output.combined();
    tests
        .iter()
        .map(|id| TestResult {
            id: id.clone(),
            outcome,
            duration,
            output: text.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn argv(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    fn output(termination: Termination) -> CommandOutput {
        CommandOutput {
            termination,
            stdout: "out\n".to_owned(),
            stderr: "err\n".to_owned(),
            elapsed: Duration::from_millis(300),
        }
    }

    #[test]
    fn templates_must_name_their_tests() {
        let list = argv(&["./t", "list"]);
        assert!(CommandRunner::new("/", list.clone(), argv(&["./t", "run", "{tests}"])).is_ok());
        assert!(
            CommandRunner::new("/", list.clone(), argv(&["./t", "--ids={tests_file}"])).is_ok()
        );
        let err = CommandRunner::new("/", list.clone(), argv(&["./t", "run"])).unwrap_err();
        assert!(err.to_string().contains("must name its tests"), "{err}");
        let err =
            CommandRunner::new("/", list.clone(), argv(&["./t", "--only={tests}"])).unwrap_err();
        assert!(err.to_string().contains("whole argument"), "{err}");
        assert!(CommandRunner::new("/", Vec::new(), argv(&["{tests}"])).is_err());
    }

    #[test]
    fn placeholders_are_filled_in() {
        let runner = CommandRunner::new(
            "/src",
            argv(&["./t", "list"]),
            argv(&[
                "./t",
                "run",
                "--junit={junit}",
                "--ids",
                "{tests_file}",
                "--tmp={scratch}",
                "{tests}",
            ]),
        )
        .unwrap();
        assert_eq!(runner.batching(), Batching::Any);
        let tests = [TestId::ungrouped("a b"), TestId::ungrouped("c")];
        let run = runner
            .run_command(&Prepared::default(), &tests, Path::new("/s"))
            .unwrap();
        assert_eq!(
            run.command.argv,
            argv(&[
                "./t",
                "run",
                "--junit=/s/junit.xml",
                "--ids",
                "/s/tests.txt",
                "--tmp=/s",
                "a b",
                "c"
            ])
        );
        assert_eq!(run.files[0].contents, "a b\nc\n");
    }

    #[test]
    fn without_junit_one_test_per_command_judged_by_exit_code() {
        let runner =
            CommandRunner::new("/src", argv(&["./t", "list"]), argv(&["./t", "{tests}"])).unwrap();
        assert_eq!(runner.batching(), Batching::PerTest);
        assert!(!runner.times_tests_itself());
        let one = [TestId::ungrouped("a")];
        let scratch = Path::new("/nonexistent");
        for (termination, outcome) in [
            (Termination::Exited(0), Outcome::Passed),
            (Termination::Exited(3), Outcome::Failed),
            (Termination::Signaled(9), Outcome::Failed),
            (Termination::TimedOut, Outcome::TimedOut),
        ] {
            let result = &runner
                .parse_results(&Prepared::default(), &one, &output(termination), scratch)
                .unwrap()[0];
            assert_eq!(result.outcome, outcome);
            assert_eq!(result.duration, Some(Duration::from_millis(300)));
            assert_eq!(result.output, "out\nerr\n");
        }
    }

    #[test]
    fn junit_cases_match_qualified_ids_before_bare_names() {
        let cases = junit::parse(
            r#"<testsuite name="suite">
            <testcase classname="a" name="t"/>
            <testcase classname="b" name="t"><failure/></testcase>
            <testcase classname="c" name="u"><skipped/></testcase>
            </testsuite>"#,
        )
        .unwrap();
        let ids = ["b.t", "a::t", "u", "suite::u", "t", "nope"].map(TestId::ungrouped);
        let results = results_from_junit(&ids, &cases, &output(Termination::Exited(1)));
        let outcomes: Vec<Outcome> = results.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Failed,
                Outcome::Passed,
                Outcome::Skipped,
                Outcome::Skipped,
                Outcome::Passed,
                Outcome::NoResult
            ]
        );
    }
}

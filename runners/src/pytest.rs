//! The pytest runner (pytest 8.2 or later).
//!
//! - **list**: `pytest --collect-only --verbosity=-1`: one node id a line, then a blank line and
//!   a summary. `--verbosity=-1` rather than `-q`, so that a `-q` in the project's `addopts`
//!   cannot make it `-qq` (which prints counts per file instead of ids). Exit code 5 means the
//!   project has no tests: an empty list, not an error.
//! - **run**: the batch's node ids go into a file in the scratch directory, passed as
//!   `@ids.txt` (pytest reads one argument a line from it since 8.2, so ids with spaces or
//!   brackets need no quoting and a batch has no command-line limit), with
//!   `--junitxml=<scratch>/junit.xml -o junit_logging=all`. Any tests may share a command.
//! - **results**: the JUnit report. pytest names a case by `classname` (the file path with `/`
//!   turned into `.` and `.py` dropped, then the classes) and `name` (the function and its
//!   parameters); each requested node id is turned into that pair the way pytest does and looked
//!   up. `<failure>` and `<error>` (a setup or teardown error) are failures; `<skipped>` covers
//!   skips and expected failures.
//!
//! Both commands pass `-p no:cacheprovider` so that pytest writes no `.pytest_cache` into the
//! input root. Node ids are relative to pytest's rootdir, so the runner's directory should be
//! the rootdir (where `pytest.ini`, `pyproject.toml` or `setup.cfg` lives).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::junit::{self, CaseStatus, JunitCase};
use crate::{
    Batching, CommandOutput, CommandSpec, Outcome, Prepared, RunInvocation, Runner, RunnerError,
    ScratchFile, Termination, TestId, TestResult, list_failed, unreported,
};

/// Runs tests with pytest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PytestRunner {
    /// Where to run pytest: its rootdir.
    pub dir: PathBuf,
    /// The command that starts pytest; `["python3", "-m", "pytest"]` by default.
    #[serde(default = "default_pytest")]
    pub pytest: Vec<String>,
    /// Extra options for both listing and running, such as `-m "not slow"`. They must not name
    /// test paths: the run command names its tests itself.
    #[serde(default)]
    pub args: Vec<String>,
    /// Variables for every command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_pytest() -> Vec<String> {
    ["python3", "-m", "pytest"].map(String::from).to_vec()
}

/// pytest's exit code when it collected no tests.
const EXIT_NO_TESTS: i32 = 5;
/// pytest's exit code for a usage error, such as an argument file it does not understand.
const EXIT_USAGE_ERROR: i32 = 4;

impl PytestRunner {
    /// These settings without those that only select tests, for cache keys (see
    /// [`crate::RunnerConfig::key_settings`]).
    pub fn without_selection(&self) -> Self {
        self.clone()
    }

    /// Runs `python3 -m pytest` in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            pytest: default_pytest(),
            args: Vec::new(),
            env: BTreeMap::new(),
        }
    }

    /// Starts pytest with another command, such as `[".venv/bin/pytest"]`.
    pub fn pytest_command<I, S>(mut self, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.pytest = command.into_iter().map(Into::into).collect();
        self
    }

    /// Adds options for listing and running.
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

    /// Where a run in `scratch` gets its JUnit report.
    pub fn junit_path(scratch: &Path) -> PathBuf {
        scratch.join("junit.xml")
    }

    fn ids_path(scratch: &Path) -> PathBuf {
        scratch.join("ids.txt")
    }

    fn pytest(&self) -> CommandSpec {
        let mut spec = CommandSpec::default()
            .args(self.pytest.iter().cloned())
            .args(["-p", "no:cacheprovider"])
            .args(self.args.iter().cloned())
            .envs(&self.env)
            .cwd(&self.dir);
        if spec.argv.is_empty() {
            spec.argv = default_pytest();
        }
        spec
    }
}

impl Runner for PytestRunner {
    fn name(&self) -> &'static str {
        "pytest"
    }

    fn list_command(&self, _prepared: &Prepared) -> CommandSpec {
        self.pytest().args(["--collect-only", "--verbosity=-1"])
    }

    fn parse_list(
        &self,
        _prepared: &Prepared,
        output: &CommandOutput,
    ) -> Result<Vec<TestId>, RunnerError> {
        match output.termination {
            Termination::Exited(0) => {}
            Termination::Exited(EXIT_NO_TESTS) => return Ok(Vec::new()),
            _ => return Err(list_failed(output)),
        }
        // Ids come first, up to the blank line before the summary; a collected item's id always
        // has a "::" after its file, which keeps stray prints out.
        Ok(output
            .stdout
            .lines()
            .take_while(|line| !line.trim().is_empty())
            .filter(|line| line.contains("::"))
            .map(TestId::ungrouped)
            .collect())
    }

    fn batching(&self) -> Batching {
        Batching::Any
    }

    fn run_command(
        &self,
        _prepared: &Prepared,
        tests: &[TestId],
        scratch: &Path,
    ) -> Result<RunInvocation, RunnerError> {
        if tests.is_empty() {
            return Err(RunnerError::EmptyBatch);
        }
        let ids_path = Self::ids_path(scratch);
        let mut ids = String::new();
        for test in tests {
            ids.push_str(&test.name);
            ids.push('\n');
        }
        let command = self
            .pytest()
            .arg(format!(
                "--junitxml={}",
                Self::junit_path(scratch).display()
            ))
            .args(["-o", "junit_logging=all"])
            .arg(format!("@{}", ids_path.display()));
        Ok(RunInvocation {
            command,
            files: vec![ScratchFile {
                path: ids_path,
                contents: ids,
            }],
        })
    }

    fn parse_results(
        &self,
        _prepared: &Prepared,
        tests: &[TestId],
        output: &CommandOutput,
        scratch: &Path,
    ) -> Result<Vec<TestResult>, RunnerError> {
        let path = Self::junit_path(scratch);
        let cases = match std::fs::read_to_string(&path) {
            Ok(xml) => junit::parse(&xml).map_err(|source| RunnerError::Junit {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let ids_file = format!("@{}", Self::ids_path(scratch).display());
                if output.termination == Termination::Exited(EXIT_USAGE_ERROR)
                    && output.combined().contains(&ids_file)
                {
                    return Err(RunnerError::ToolTooOld {
                        tool: "pytest",
                        detail: "reading arguments from an @file needs pytest 8.2 or later"
                            .to_owned(),
                    });
                }
                let note = "pytest wrote no JUnit report";
                return Ok(tests
                    .iter()
                    .map(|id| unreported(id, output, note))
                    .collect());
            }
            Err(source) => return Err(RunnerError::Io { path, source }),
        };
        Ok(tests
            .iter()
            .map(|id| match find_case(&cases, &id.name) {
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
                None => unreported(id, output, "pytest did not report this test"),
            })
            .collect())
    }
}

/// The JUnit case pytest writes for `node_id`. The `--junit-prefix` option puts a prefix before
/// every classname, so a case whose classname merely ends with the expected one also matches.
fn find_case<'a>(cases: &'a [JunitCase], node_id: &str) -> Option<&'a JunitCase> {
    let (classname, name) = junit_names(node_id);
    let suffix = format!(".{classname}");
    cases
        .iter()
        .find(|c| c.name == name && c.classname == classname)
        .or_else(|| {
            cases
                .iter()
                .find(|c| c.name == name && c.classname.ends_with(&suffix))
        })
}

/// The (classname, name) pair pytest's junitxml plugin derives from a node id
/// (`mangle_test_address` in `_pytest/junitxml.py`): the file path with `/` turned into `.` and
/// `.py` dropped, then the classes, joined by `.`; the name is the last part with its parameters.
fn junit_names(node_id: &str) -> (String, String) {
    let (path, rest) = node_id.split_once("::").unwrap_or((node_id, ""));
    let path = path.replace('/', ".");
    let path = path.strip_suffix(".py").unwrap_or(&path).to_owned();
    if rest.is_empty() {
        return (String::new(), path);
    }
    // Parameters may contain "::"; only the part before the first "[" is split.
    let bracket = rest.find('[').unwrap_or(rest.len());
    let (names, params) = rest.split_at(bracket);
    let mut parts: Vec<&str> = names.split("::").collect();
    let last = parts.pop().unwrap_or_default();
    let classname = std::iter::once(path.as_str())
        .chain(parts)
        .collect::<Vec<_>>()
        .join(".");
    (classname, format!("{last}{params}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
    fn junit_names_follow_pytest() {
        let names = |id| junit_names(id);
        assert_eq!(
            names("tests/test_a.py::test_x"),
            ("tests.test_a".into(), "test_x".into())
        );
        assert_eq!(
            names("tests/test_a.py::TestC::test_x[1.5-a::b]"),
            ("tests.test_a.TestC".into(), "test_x[1.5-a::b]".into())
        );
        assert_eq!(
            names("test_top.py::test_y"),
            ("test_top".into(), "test_y".into())
        );
    }

    #[test]
    fn list_reads_ids_up_to_the_summary() {
        let stdout =
            "a/test_x.py::test_1\na/test_x.py::T::test_2[p q]\n\n2 tests collected in 0.01s\n";
        let runner = PytestRunner::new("/src");
        let tests = runner
            .parse_list(
                &Prepared::default(),
                &output(Termination::Exited(0), stdout),
            )
            .unwrap();
        assert_eq!(
            tests,
            [
                TestId::ungrouped("a/test_x.py::test_1"),
                TestId::ungrouped("a/test_x.py::T::test_2[p q]")
            ]
        );
    }

    #[test]
    fn exit_code_5_is_an_empty_suite_and_others_are_errors() {
        let runner = PytestRunner::new("/src");
        let none = output(Termination::Exited(5), "\nno tests collected in 0.01s\n");
        assert!(
            runner
                .parse_list(&Prepared::default(), &none)
                .unwrap()
                .is_empty()
        );
        let broken = output(Termination::Exited(2), "ERROR collecting a/test_x.py\n");
        assert!(matches!(
            runner.parse_list(&Prepared::default(), &broken),
            Err(RunnerError::ListFailed { .. })
        ));
    }

    #[test]
    fn run_passes_ids_through_a_file() {
        let runner = PytestRunner::new("/src").args(["-m", "not slow"]);
        let tests = [
            TestId::ungrouped("t.py::a"),
            TestId::ungrouped("t.py::b[x y]"),
        ];
        let run = runner
            .run_command(&Prepared::default(), &tests, Path::new("/s"))
            .unwrap();
        assert_eq!(
            run.command.argv,
            [
                "python3",
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-m",
                "not slow",
                "--junitxml=/s/junit.xml",
                "-o",
                "junit_logging=all",
                "@/s/ids.txt"
            ]
        );
        assert_eq!(run.files[0].contents, "t.py::a\nt.py::b[x y]\n");
    }

    #[test]
    fn results_match_cases_by_mangled_node_id() {
        let scratch = tempfile::tempdir().unwrap();
        std::fs::write(
            PytestRunner::junit_path(scratch.path()),
            r#"<testsuites><testsuite name="pytest">
            <testcase classname="t.test_a" name="test_ok" time="0.2"/>
            <testcase classname="t.test_a.TestC" name="test_p[1-2]" time="0.1"><failure message="assert">trace</failure></testcase>
            <testcase classname="t.test_a" name="test_s" time="0"><skipped message="later"/></testcase>
            <testcase classname="t.test_a" name="test_e" time="0"><error message="fixture"/></testcase>
            </testsuite></testsuites>"#,
        )
        .unwrap();
        let tests = [
            "t/test_a.py::test_ok",
            "t/test_a.py::TestC::test_p[1-2]",
            "t/test_a.py::test_s",
            "t/test_a.py::test_e",
            "t/test_a.py::test_missing",
        ]
        .map(TestId::ungrouped);
        let results = PytestRunner::new("/src")
            .parse_results(
                &Prepared::default(),
                &tests,
                &output(Termination::Exited(1), ""),
                scratch.path(),
            )
            .unwrap();
        let outcomes: Vec<Outcome> = results.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Passed,
                Outcome::Failed,
                Outcome::Skipped,
                Outcome::Failed,
                Outcome::NoResult
            ]
        );
        assert_eq!(results[0].duration, Some(Duration::from_millis(200)));
        assert_eq!(results[1].output, "assert\ntrace");
    }

    #[test]
    fn an_old_pytest_is_named_as_the_problem() {
        let scratch = tempfile::tempdir().unwrap();
        let mut out = output(Termination::Exited(4), "");
        out.stderr = format!(
            "ERROR: file or directory not found: @{}\n",
            scratch.path().join("ids.txt").display()
        );
        let err = PytestRunner::new("/src")
            .parse_results(
                &Prepared::default(),
                &[TestId::ungrouped("t.py::a")],
                &out,
                scratch.path(),
            )
            .unwrap_err();
        assert!(matches!(err, RunnerError::ToolTooOld { .. }), "{err}");
    }
}

//! The pytest runner (pytest 8.2 or later): which commands list and run a pytest suite, and how
//! their output becomes one outcome per node id, as pytest's own JUnit report gives it.
//!
//! - **list**: the user's options and selection (paths, node ids, `-k`, `-m`, `--deselect`),
//!   then `--collect-only --verbosity=0 -o verbosity_test_cases=-1`: the session header (whose
//!   `rootdir:` line says what node ids are relative to), then one node id a line. A `-q` in
//!   `addopts` or `PYTEST_ADDOPTS` comes before these options, so it cannot hide the header or
//!   turn the ids into per-file counts.
//! - **run**: the batch's node ids, made absolute under the rootdir, go into `@ids.txt` in the
//!   scratch directory (pytest reads one argument a line from it since 8.2: ids with spaces,
//!   brackets or `::` in parameters need no quoting). pytest starts in the user's directory (tests
//!   may open files relative to it), which need not be the rootdir: absolute ids resolve from
//!   anywhere. Selection options are not passed: the ids are the selection, and `-m`/`-k` would
//!   deselect them again. `--maxfail=0` undoes a `-x` from the configuration, which would stop
//!   a batch at its first failure and leave the rest of it unreported (fail-fast is the job's).
//! - **worker** ([`Runner::worker_command`]): pytest's start-up (imports, `conftest.py`,
//!   collection) is often most of a small batch, so a job's batches go to a long-lived pytest
//!   per slot instead: the list command's options without `--collect-only`, the group's
//!   rootdir pinned, plus `-p tessera_pytest_worker` (`pytest_worker.py`, written to the
//!   worker's directory and put on `PYTHONPATH`). It collects once, then runs each batch's node
//!   ids as they are sent and writes each batch's JUnit report with pytest's own junitxml
//!   plugin, so results read exactly as a process's do.
//! - **results**: the JUnit report, matched to node ids the way pytest's junitxml plugin names
//!   its cases (see [`junit_names`]).
//!
//! | pytest reports | JUnit (xunit2) | [`Outcome`] |
//! | --- | --- | --- |
//! | passed, xpass (not strict) | no child | `Passed` |
//! | failed, xpass strict, a failed subtest | `<failure>` | `Failed` |
//! | error in a fixture's setup or teardown | `<error>` | `Error` |
//! | failed, then an error in teardown | two cases: `<failure>`, `<error>` | `Failed` |
//! | skipped, xfail | `<skipped>` | `Skipped` |
//! | a file that fails to import | `<error>` named after the file | `Error` |
//!
//! **Collection errors.** A file that fails to import is listed under its own node id (the file's
//! path, such as `tests/test_bad.py`); running that id makes pytest collect the file again and
//! write the same error to its JUnit report, so it comes back as [`Outcome::Error`]. Without
//! `--continue-on-collection-errors` pytest run directly stops after collection ("Interrupted:
//! 1 error during collection") and runs no test, so the list is then those files alone; with it,
//! the list is the tests collected plus those files.
//!
//! **Test ids.** [`TestId::name`] is pytest's node id, exactly as pytest prints it (relative to
//! its rootdir). [`TestId::group`] is the rootdir relative to the project root ([`PytestRunner::root`]):
//! empty in the usual case where the configuration file sits at the project root, the
//! subdirectory for a Python project inside a larger repository, and an absolute path for a
//! rootdir outside the project.
//!
//! Both commands pass `-p no:cacheprovider` so that pytest writes no `.pytest_cache` into the
//! input root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::junit::{self, CaseStatus, JunitCase};
use crate::{
    Batching, CommandOutput, CommandSpec, Outcome, Prepared, RunInvocation, Runner, RunnerError,
    ScratchFile, Termination, TestId, TestResult, WorkerInvocation, list_failed, unreported,
};

/// Runs tests with pytest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PytestRunner {
    /// Where pytest runs: the directory the user ran it in. Paths in [`Self::selection`] are
    /// relative to it.
    pub dir: PathBuf,
    /// The project root, which [`TestId::group`] is relative to; `None` means [`Self::dir`].
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// The command that starts pytest; `["python3", "-m", "pytest"]` by default.
    #[serde(default = "default_pytest")]
    pub pytest: Vec<String>,
    /// Options for both listing and running that change which tests exist or how they run
    /// (`-p`, `-o`, `-W`, `--import-mode`, `--rootdir`, ...): part of every test's cache key.
    #[serde(default)]
    pub args: Vec<String>,
    /// What only selects tests (paths, node ids, `-k`, `-m`, `--deselect`, `--ignore`), for the
    /// list command alone: the run command names its tests itself.
    #[serde(default)]
    pub selection: Vec<String>,
    /// Variables for every command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_pytest() -> Vec<String> {
    ["python3", "-m", "pytest"].map(String::from).to_vec()
}

/// pytest's exit code when some tests failed (and, with `--collect-only
/// --continue-on-collection-errors`, when some files failed to import).
const EXIT_TESTS_FAILED: i32 = 1;
/// pytest's exit code when the session was interrupted, as by errors during collection.
const EXIT_INTERRUPTED: i32 = 2;
/// pytest's exit code for a usage error, such as an argument file it does not understand.
const EXIT_USAGE_ERROR: i32 = 4;
/// pytest's exit code when it collected no tests.
const EXIT_NO_TESTS: i32 = 5;

/// The module name of the worker plugin (`pytest_worker.py`), loaded with `-p`.
const WORKER_MODULE: &str = "tessera_pytest_worker";

/// The worker plugin: collects once, then runs the batches it is sent (see its docstring).
const WORKER_PLUGIN: &str = include_str!("pytest_worker.py");

/// Options that end every list command. They come after `addopts` and the user's options, so
/// they win: a header with the rootdir and one node id a line (a `-q` anywhere before cannot
/// change that), collection errors with their headlines, no colour codes.
const LIST_OPTIONS: &[&str] = &[
    "--collect-only",
    "--verbosity=0",
    "-o",
    "verbosity_test_cases=-1",
    "--color=no",
    "--tb=short",
];

impl PytestRunner {
    /// These settings without those that only select tests, for cache keys (see
    /// [`crate::RunnerConfig::key_settings`]): a test answers from the same cached pass whether
    /// it was selected by path, node id, `-k` or `-m`.
    pub fn without_selection(&self) -> Self {
        Self {
            selection: Vec::new(),
            ..self.clone()
        }
    }

    /// Runs `python3 -m pytest` in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            root: None,
            pytest: default_pytest(),
            args: Vec::new(),
            selection: Vec::new(),
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

    /// Sets the project root that test groups are relative to.
    pub fn root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
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

    /// Adds arguments that select tests, for listing only.
    pub fn select<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.selection.extend(args.into_iter().map(Into::into));
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

    fn project_root(&self) -> &Path {
        self.root.as_deref().unwrap_or(&self.dir)
    }

    /// The group of the tests pytest listed with `rootdir` (see the module doc). pytest prints
    /// its rootdir without `.` or `..`, so the root is compared the same way.
    fn group(&self, rootdir: &Path) -> String {
        match rootdir.strip_prefix(normalize(self.project_root())) {
            Ok(relative) => relative.display().to_string(),
            Err(_) => rootdir.display().to_string(),
        }
    }

    /// The rootdir of the tests in `group`: the inverse of [`Self::group`].
    fn rootdir(&self, group: &str) -> PathBuf {
        if group.is_empty() {
            self.project_root().to_path_buf()
        } else {
            // An absolute group replaces the root when joined.
            self.project_root().join(group)
        }
    }

    fn pytest(&self) -> CommandSpec {
        let pytest = if self.pytest.is_empty() {
            default_pytest()
        } else {
            self.pytest.clone()
        };
        CommandSpec::default()
            .args(pytest)
            .args(["-p", "no:cacheprovider"])
            .args(self.args.iter().cloned())
            .envs(&self.env)
            .cwd(&self.dir)
    }
}

impl Runner for PytestRunner {
    fn name(&self) -> &'static str {
        "pytest"
    }

    fn list_command(&self, _prepared: &Prepared) -> CommandSpec {
        self.pytest()
            .args(self.selection.iter().cloned())
            .args(LIST_OPTIONS.iter().copied())
    }

    fn parse_list(
        &self,
        _prepared: &Prepared,
        output: &CommandOutput,
    ) -> Result<Vec<TestId>, RunnerError> {
        let collected = Collection::read(&output.stdout);
        let errors = !collected.errors.is_empty();
        // Without --continue-on-collection-errors, pytest stops after collecting when a file
        // failed to import and runs none of the tests it printed: those files are the answer.
        let ids = match output.termination {
            Termination::Exited(0 | EXIT_NO_TESTS) if !errors => collected.ids,
            Termination::Exited(EXIT_TESTS_FAILED) if errors => collected.ids,
            Termination::Exited(EXIT_INTERRUPTED) if errors => Vec::new(),
            _ => return Err(list_failed(output)),
        };
        // pytest says "no tests" by its exit code alone; any other answer is read from the
        // listing, which must be there.
        if !collected.finished && output.termination != Termination::Exited(EXIT_NO_TESTS) {
            return Err(RunnerError::UnexpectedOutput {
                tool: "pytest",
                detail: "no `collected N items` line in the --collect-only output".to_owned(),
            });
        }
        // Without a header (`--no-header` in addopts) the rootdir is assumed to be where pytest
        // runs; if it is not, the run cannot find the ids and says so for each test.
        let rootdir = collected.rootdir.unwrap_or_else(|| self.dir.clone());
        let group = self.group(&rootdir);
        Ok(ids
            .into_iter()
            .chain(collected.errors)
            .map(|name| TestId::new(group.clone(), name))
            .collect())
    }

    /// The test's file: its node id up to the first `::` (within its rootdir group).
    fn unit_of(&self, test: &TestId) -> String {
        let file = test.name.split("::").next().unwrap_or(&test.name);
        format!("{}\0{file}", test.group)
    }

    fn batching(&self) -> Batching {
        Batching::Any
    }

    fn long_lived_worker(&self) -> bool {
        true
    }

    fn worker_command(
        &self,
        _prepared: &Prepared,
        group: &str,
        dir: &Path,
    ) -> Option<WorkerInvocation> {
        // Collects what the list step collected, named relative to the group's rootdir as
        // the list step named it.
        let command = self
            .pytest()
            .arg(format!("--rootdir={}", self.rootdir(group).display()))
            .args(["-p", WORKER_MODULE])
            .args(self.selection.iter().cloned())
            .arg("--maxfail=0")
            .args(["-o", "junit_logging=all"]);
        Some(WorkerInvocation {
            dir: dir.to_path_buf(),
            command,
            files: vec![ScratchFile {
                path: dir.join(format!("{WORKER_MODULE}.py")),
                contents: WORKER_PLUGIN.to_owned(),
            }],
            prepend_paths: vec![("PYTHONPATH".to_owned(), dir.to_path_buf())],
        })
    }

    fn worker_request(&self, tests: &[TestId], scratch: &Path) -> Result<String, RunnerError> {
        if tests.is_empty() {
            return Err(RunnerError::EmptyBatch);
        }
        let request = serde_json::json!({
            "ids": tests.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            "junit": Self::junit_path(scratch),
        });
        Ok(request.to_string())
    }

    fn run_command(
        &self,
        _prepared: &Prepared,
        tests: &[TestId],
        scratch: &Path,
    ) -> Result<RunInvocation, RunnerError> {
        let Some(first) = tests.first() else {
            return Err(RunnerError::EmptyBatch);
        };
        let ids_path = Self::ids_path(scratch);
        let mut ids = String::new();
        for test in tests {
            ids.push_str(&format!(
                "{}/{}\n",
                self.rootdir(&test.group).display(),
                test.name
            ));
        }
        let mut command = self.pytest();
        // Pinned so that pytest, finding its configuration from the absolute ids rather than from
        // the user's arguments, still names the tests relative to the same directory.
        if tests.iter().all(|t| t.group == first.group) {
            command = command.arg(format!(
                "--rootdir={}",
                self.rootdir(&first.group).display()
            ));
        }
        let command = command
            .arg("--maxfail=0")
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
        let names: Vec<(String, String)> = tests.iter().map(|t| junit_names(&t.name)).collect();
        Ok(tests
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let matching = cases_of(&cases, &id.name, &names[i]);
                // Two requested ids pytest names alike (`a/b.py` and `a.b.py`): the cases are
                // theirs in run order, if there is one each.
                let twins: Vec<usize> =
                    (0..tests.len()).filter(|&j| names[j] == names[i]).collect();
                let matching = match twins.len() {
                    1 => matching,
                    n if matching.len() == n => {
                        let nth = twins.iter().position(|&j| j == i).unwrap_or(0);
                        matching.get(nth).map(|c| vec![*c]).unwrap_or_default()
                    }
                    n => {
                        let note = format!(
                            "pytest's JUnit report names {n} tests of this batch `{} {}` and \
                             does not say which case is whose",
                            names[i].0, names[i].1
                        );
                        return unreported(id, output, &note);
                    }
                };
                if matching.is_empty() {
                    return unreported(id, output, "pytest did not report this test");
                }
                result_of(id, &matching)
            })
            .collect())
    }
}

/// `path` with `.` and `..` resolved by name, as pytest's `absolutepath` does.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// What a `--collect-only` listing says.
#[derive(Debug, Default, PartialEq)]
struct Collection {
    /// The `rootdir:` line of the header.
    rootdir: Option<PathBuf>,
    /// Whether the `collected N items` line came.
    finished: bool,
    /// Node ids of the tests collected, in pytest's order.
    ids: Vec<String>,
    /// Node ids of what failed to collect (usually a file), from the `ERROR collecting ID`
    /// headlines.
    errors: Vec<String>,
}

impl Collection {
    fn read(stdout: &str) -> Self {
        let mut collection = Self::default();
        let mut lines = stdout.lines();
        for line in lines.by_ref() {
            if let Some(dir) = line.strip_prefix("rootdir: ") {
                collection
                    .rootdir
                    .get_or_insert_with(|| PathBuf::from(dir.trim_end()));
            } else if line.starts_with("collected ") {
                collection.finished = true;
                break;
            }
        }
        // Then a blank line, the ids up to the next blank line, and the sections after them.
        let mut lines = lines.skip_while(|line| line.trim().is_empty());
        for line in lines.by_ref() {
            if line.trim().is_empty() {
                break;
            }
            // A collected item's id always has a "::" after its file; section rules have none.
            if line.contains("::") && !line.starts_with("==") {
                collection.ids.push(line.to_owned());
            }
        }
        for line in lines {
            if let Some(id) = collection_error_headline(line)
                && !collection.errors.iter().any(|e| e == id)
            {
                collection.errors.push(id.to_owned());
            }
        }
        collection
    }
}

/// The node id in a `____ ERROR collecting tests/test_bad.py ____` headline.
fn collection_error_headline(line: &str) -> Option<&str> {
    let title = line.strip_prefix('_')?.trim_start_matches('_');
    let title = title.strip_prefix(" ERROR collecting ")?;
    let title = title.strip_suffix('_')?.trim_end_matches('_');
    title.strip_suffix(' ')
}

/// The JUnit cases pytest wrote for the test `node_id`, whose JUnit names are `names`: usually
/// one, two when the test failed and then its teardown raised (pytest writes a case for each).
/// `--junit-prefix` puts a prefix before every classname, so a classname merely ending with the
/// expected one also matches. A file that failed to import (an id without `::`) also matches an
/// error case of a collector inside it (a class whose collection raised).
fn cases_of<'a>(
    cases: &'a [JunitCase],
    node_id: &str,
    (classname, name): &(String, String),
) -> Vec<&'a JunitCase> {
    let exact: Vec<&JunitCase> = cases
        .iter()
        .filter(|c| c.name == *name && c.classname == *classname)
        .collect();
    if !exact.is_empty() {
        return exact;
    }
    if !classname.is_empty() {
        let suffix = format!(".{classname}");
        return cases
            .iter()
            .filter(|c| c.name == *name && c.classname.ends_with(&suffix))
            .collect();
    }
    if node_id.contains("::") {
        return Vec::new();
    }
    let inside = format!("{name}.");
    cases
        .iter()
        .filter(|c| c.status == CaseStatus::Errored)
        .filter(|c| c.classname == *name || c.classname.starts_with(&inside))
        .collect()
}

/// One test's result from its JUnit cases: a failure wins over an error (the test's own body
/// failed; the error came after it, in teardown), an error over a skip, a skip over a pass.
fn result_of(id: &TestId, cases: &[&JunitCase]) -> TestResult {
    let has = |status| cases.iter().any(|c| c.status == status);
    let outcome = if has(CaseStatus::Failed) {
        Outcome::Failed
    } else if has(CaseStatus::Errored) {
        Outcome::Error
    } else if has(CaseStatus::Skipped) {
        Outcome::Skipped
    } else {
        Outcome::Passed
    };
    let output = cases
        .iter()
        .map(|c| c.combined_output())
        .filter(|o| !o.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    TestResult {
        id: id.clone(),
        outcome,
        duration: cases.iter().filter_map(|c| c.time).max(),
        output,
    }
}

/// The (classname, name) pair pytest's junitxml plugin derives from a node id, exactly as
/// `mangle_test_address` in `_pytest/junitxml.py` does: the parameters (from the first `[`)
/// are set aside, the rest is split at `::`, the file path's `/` become `.` and its `.py` is
/// dropped, the parameters go back on the last part, and all parts but the last are the
/// classname.
fn junit_names(node_id: &str) -> (String, String) {
    let (head, params) = node_id.split_at(node_id.find('[').unwrap_or(node_id.len()));
    let mut names: Vec<String> = head.split("::").map(str::to_owned).collect();
    let path = names[0].replace('/', ".");
    names[0] = path.strip_suffix(".py").unwrap_or(&path).to_owned();
    let name = names.pop().unwrap_or_default() + params;
    (names.join("."), name)
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

    fn list(runner: &PytestRunner, code: i32, stdout: &str) -> Result<Vec<TestId>, RunnerError> {
        runner.parse_list(
            &Prepared::default(),
            &output(Termination::Exited(code), stdout),
        )
    }

    const HEADER: &str = "\
============================= test session starts ==============================
platform linux -- Python 3.11.7, pytest-9.2.0, pluggy-1.7.0
rootdir: /x/proj
configfile: pytest.ini
";

    #[test]
    fn junit_names_follow_pytest() {
        for (id, classname, name) in [
            ("tests/test_a.py::test_x", "tests.test_a", "test_x"),
            (
                "tests/test_a.py::TestC::test_x[1.5-a::b]",
                "tests.test_a.TestC",
                "test_x[1.5-a::b]",
            ),
            (
                "t.py::TestOuter::TestInner::test_n",
                "t.TestOuter.TestInner",
                "test_n",
            ),
            ("t.py::test_p[x/y]", "t", "test_p[x/y]"),
            ("t.py::test_p[br[ack]et]", "t", "test_p[br[ack]et]"),
            ("test_top.py::test_y", "test_top", "test_y"),
            // A file that failed to import: its case has no classname.
            ("tests/test_bad.py", "", "tests.test_bad"),
        ] {
            assert_eq!(
                junit_names(id),
                (classname.to_owned(), name.to_owned()),
                "{id}"
            );
        }
    }

    #[test]
    fn list_reads_the_rootdir_and_the_ids() {
        let stdout = format!(
            "{HEADER}collected 2 items\n\na/test_x.py::test_1\na/test_x.py::T::test_2[p q]\n\n\
             ========================== 2 tests collected in 0.01s ==========================\n"
        );
        let runner = PytestRunner::new("/x/proj/a").root("/x/proj");
        assert_eq!(
            list(&runner, 0, &stdout).unwrap(),
            [
                TestId::ungrouped("a/test_x.py::test_1"),
                TestId::ungrouped("a/test_x.py::T::test_2[p q]")
            ]
        );
        // A Python project inside a larger repository: its tests are grouped under its folder.
        let in_monorepo = PytestRunner::new("/x/proj/a").root("/x");
        assert_eq!(list(&in_monorepo, 0, &stdout).unwrap()[0].group, "proj");
        let elsewhere = PytestRunner::new("/y").root("/y");
        assert_eq!(list(&elsewhere, 0, &stdout).unwrap()[0].group, "/x/proj");
    }

    #[test]
    fn exit_code_5_is_an_empty_suite_and_a_usage_error_fails_the_list() {
        let runner = PytestRunner::new("/x/proj");
        let none =
            format!("{HEADER}collected 0 items\n\n===== no tests collected in 0.01s =====\n");
        assert!(list(&runner, 5, &none).unwrap().is_empty());
        let usage = "ERROR: file or directory not found: nope\n";
        assert!(matches!(
            list(&runner, 4, usage),
            Err(RunnerError::ListFailed { .. })
        ));
        // Exit code 0 with ids but without the line that introduces them is not understood.
        assert!(matches!(
            list(&runner, 0, "t.py::a\n"),
            Err(RunnerError::UnexpectedOutput { .. })
        ));
    }

    const COLLECTION_ERRORS: &str = "\
collected 1 item / 2 errors

tests/test_a.py::test_a

==================================== ERRORS ====================================
______________________ ERROR collecting tests/test_bad.py ______________________
ImportError while importing test module '/x/proj/tests/test_bad.py'.
E   ModuleNotFoundError: No module named 'nonexistent_mod'
_ ERROR collecting tests/a very long path that fills the whole terminal width.py _
E   SyntaxError: invalid syntax
=========================== short test summary info ============================
ERROR tests/test_bad.py
";

    #[test]
    fn a_file_that_fails_to_import_is_listed_as_itself_and_nothing_else_runs() {
        let runner = PytestRunner::new("/x/proj");
        let stdout = format!(
            "{HEADER}{COLLECTION_ERRORS}!!!!!!!! Interrupted: 2 errors during collection !!!!!!!!\n"
        );
        assert_eq!(
            list(&runner, 2, &stdout).unwrap(),
            [
                TestId::ungrouped("tests/test_bad.py"),
                TestId::ungrouped("tests/a very long path that fills the whole terminal width.py")
            ]
        );
        // With --continue-on-collection-errors pytest runs the rest too (and exits 1).
        let names: Vec<String> = list(&runner, 1, &format!("{HEADER}{COLLECTION_ERRORS}"))
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names[..2], ["tests/test_a.py::test_a", "tests/test_bad.py"]);
        // An interruption without collection errors is not a listing.
        let interrupted =
            format!("{HEADER}collected 1 item\n\nt.py::a\n\n!!! KeyboardInterrupt !!!\n");
        assert!(list(&runner, 2, &interrupted).is_err());
    }

    #[test]
    fn the_list_command_selects_and_the_run_command_names_absolute_ids() {
        let runner = PytestRunner::new("/x/proj/sub")
            .root("/x/proj")
            .args(["-p", "xdist", "--import-mode=importlib"])
            .select(["../tests", "-m", "not slow"]);
        let listed = runner.list_command(&Prepared::default());
        assert_eq!(listed.cwd.as_deref(), Some(Path::new("/x/proj/sub")));
        assert_eq!(
            listed.argv[..11],
            [
                "python3",
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-p",
                "xdist",
                "--import-mode=importlib",
                "../tests",
                "-m",
                "not slow",
            ]
        );
        assert_eq!(listed.argv[11..], *LIST_OPTIONS);

        let tests = [
            TestId::ungrouped("tests/t.py::a"),
            TestId::ungrouped("tests/t.py::b[x y]"),
        ];
        let run = runner
            .run_command(&Prepared::default(), &tests, Path::new("/s"))
            .unwrap();
        assert_eq!(run.command.cwd.as_deref(), Some(Path::new("/x/proj/sub")));
        assert_eq!(
            run.command.argv,
            [
                "python3",
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-p",
                "xdist",
                "--import-mode=importlib",
                "--rootdir=/x/proj",
                "--maxfail=0",
                "--junitxml=/s/junit.xml",
                "-o",
                "junit_logging=all",
                "@/s/ids.txt"
            ]
        );
        assert_eq!(
            run.files[0].contents,
            "/x/proj/tests/t.py::a\n/x/proj/tests/t.py::b[x y]\n"
        );
        let grouped = [TestId::new("py", "tests/t.py::a")];
        let run = runner
            .run_command(&Prepared::default(), &grouped, Path::new("/s"))
            .unwrap();
        assert_eq!(run.files[0].contents, "/x/proj/py/tests/t.py::a\n");
    }

    #[test]
    fn selection_is_not_part_of_the_cache_key() {
        let plain = PytestRunner::new("/x").args(["-p", "no:randomly"]);
        let selected = plain.clone().select(["tests/test_a.py", "-k", "fast"]);
        assert_eq!(selected.without_selection(), plain);
        let other_option = plain.clone().args(["-W", "error"]);
        assert_ne!(other_option.without_selection(), plain);
    }

    fn results(xml: &str, tests: &[TestId]) -> Vec<TestResult> {
        let scratch = tempfile::tempdir().unwrap();
        std::fs::write(PytestRunner::junit_path(scratch.path()), xml).unwrap();
        PytestRunner::new("/src")
            .parse_results(
                &Prepared::default(),
                tests,
                &output(Termination::Exited(1), ""),
                scratch.path(),
            )
            .unwrap()
    }

    fn outcomes(results: &[TestResult]) -> Vec<Outcome> {
        results.iter().map(|r| r.outcome).collect()
    }

    #[test]
    fn outcomes_follow_pytest_junit_report() {
        // As pytest 9 writes them (xunit2), one case per line.
        let xml = r#"<testsuites><testsuite name="pytest">
            <testcase classname="t.test_a" name="test_ok" time="0.2"/>
            <testcase classname="t.test_a.TestC" name="test_p[1-2]" time="0.1"><failure message="assert">trace</failure></testcase>
            <testcase classname="t.test_a" name="test_s" time="0"><skipped type="pytest.skip" message="later"/></testcase>
            <testcase classname="t.test_a" name="test_e" time="0"><error message="failed on setup with &quot;fixture&quot;"/></testcase>
            <testcase classname="t.test_a" name="test_xfail" time="0"><skipped type="pytest.xfail" message="known"/></testcase>
            <testcase classname="t.test_a" name="test_xpass" time="0"/>
            <testcase classname="t.test_a" name="test_xpass_strict" time="0"><failure message="[XPASS(strict)] known"/></testcase>
            <testcase classname="t.test_a" name="test_then_teardown" time="0.1"><failure message="assert False"/></testcase>
            <testcase classname="t.test_a" name="test_then_teardown" time="0.3"><error message="failed on teardown"/></testcase>
            <testcase classname="t.test_a" name="test_teardown_only" time="0"><error message="failed on teardown"/></testcase>
            <testcase classname="" name="t.test_bad" time="0"><error message="collection failure">ImportError</error></testcase>
            </testsuite></testsuites>"#;
        let tests = [
            "t/test_a.py::test_ok",
            "t/test_a.py::TestC::test_p[1-2]",
            "t/test_a.py::test_s",
            "t/test_a.py::test_e",
            "t/test_a.py::test_xfail",
            "t/test_a.py::test_xpass",
            "t/test_a.py::test_xpass_strict",
            "t/test_a.py::test_then_teardown",
            "t/test_a.py::test_teardown_only",
            "t/test_bad.py",
            "t/test_a.py::test_missing",
        ]
        .map(TestId::ungrouped);
        let results = results(xml, &tests);
        assert_eq!(
            outcomes(&results),
            [
                Outcome::Passed,
                Outcome::Failed,
                Outcome::Skipped,
                Outcome::Error,
                Outcome::Skipped,
                Outcome::Passed,
                Outcome::Failed,
                Outcome::Failed,
                Outcome::Error,
                Outcome::Error,
                Outcome::NoResult
            ]
        );
        assert_eq!(results[0].duration, Some(Duration::from_millis(200)));
        assert_eq!(results[1].output, "assert\ntrace");
        // Both cases of a test that failed and then failed in teardown are its output.
        assert_eq!(results[7].output, "assert False\nfailed on teardown");
        assert_eq!(results[7].duration, Some(Duration::from_millis(300)));
        assert_eq!(results[9].output, "collection failure\nImportError");
    }

    #[test]
    fn a_class_that_fails_to_collect_is_its_file_error() {
        let xml = r#"<testsuite><testcase classname="t.test_a" name="TestX"><error message="collection failure"/></testcase></testsuite>"#;
        let results = results(xml, &[TestId::ungrouped("t/test_a.py")]);
        assert_eq!(outcomes(&results), [Outcome::Error]);
    }

    #[test]
    fn ids_pytest_names_alike_take_the_cases_in_run_order() {
        let xml = r#"<testsuite>
            <testcase classname="a.b" name="t"/>
            <testcase classname="a.b" name="t"><failure message="second"/></testcase>
            </testsuite>"#;
        let twins = [
            TestId::ungrouped("a/b.py::t"),
            TestId::ungrouped("a.b.py::t"),
        ];
        assert_eq!(
            outcomes(&results(xml, &twins)),
            [Outcome::Passed, Outcome::Failed]
        );
        // When the count does not add up, nobody can tell, and the result says so.
        let xml = r#"<testsuite><testcase classname="a.b" name="t"/></testsuite>"#;
        let unclear = results(xml, &twins);
        assert_eq!(outcomes(&unclear), [Outcome::NoResult, Outcome::NoResult]);
        assert!(
            unclear[0].output.contains("names 2 tests"),
            "{}",
            unclear[0].output
        );
    }

    #[test]
    fn a_junit_prefix_does_not_hide_the_cases() {
        let xml = r#"<testsuite><testcase classname="ci.t.test_a" name="test_x"/></testsuite>"#;
        let results = results(xml, &[TestId::ungrouped("t/test_a.py::test_x")]);
        assert_eq!(outcomes(&results), [Outcome::Passed]);
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

    #[test]
    fn old_job_specs_without_the_new_fields_still_read() {
        let json = r#"{"dir": "/src", "pytest": ["pytest"], "args": ["-x"], "env": {}}"#;
        let runner: PytestRunner = serde_json::from_str(json).unwrap();
        assert_eq!(runner.root, None);
        assert!(runner.selection.is_empty());
    }
}

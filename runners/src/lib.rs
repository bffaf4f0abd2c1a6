//! Test-runner adapters: how Tessera builds, lists and runs the tests of cargo (libtest),
//! cargo-nextest, pytest, go test and any other command, and how it reads what those tools print.
//!
//! An adapter does not run anything. It describes commands ([`CommandSpec`]) and parses their
//! output ([`CommandOutput`]); the agent runs the commands later, in its sandbox, on whatever
//! machine holds the work (DESIGN.md §5). A job goes through these steps, each driven by one
//! method of [`Runner`]:
//!
//! 1. **prepare** (optional, once per job): build what every later step needs, such as the test
//!    binaries. [`Runner::parse_prepare`] turns its output into a [`Prepared`] value that travels
//!    with the job.
//! 2. **list**: one command whose output [`Runner::parse_list`] turns into [`TestId`]s.
//! 3. **run**: for a batch of tests, [`Runner::run_command`] gives the command and any files to
//!    write into the batch's scratch directory first; [`Runner::parse_results`] gives exactly one
//!    [`TestResult`] per requested test, in request order, whatever the tool printed.
//!
//! [`Runner::batching`] says which tests may share one run command; a tool that cannot time each
//! test itself (plain libtest) runs one test per process and the caller's wall-clock time of that
//! process becomes the test's duration.
//!
//! What this crate does not own: retries and flaky detection (a job-level decision: a failure
//! followed by a pass is flaky), caching, timeouts (the caller kills a command and says so with
//! [`Termination::TimedOut`]), and how commands are sandboxed.
//!
//! | runner | prepare | list | run | results |
//! | --- | --- | --- | --- | --- |
//! | [`CargoTestRunner`] | `cargo test --no-run` | each binary `--list` | binary `--exact` | libtest's text |
//! | [`NextestRunner`] | `cargo nextest archive` | `nextest list` on the archive | `-E` filterset | JUnit |
//! | [`PytestRunner`] | none | `--collect-only` | node ids in an `@file` | JUnit |
//! | [`GoTestRunner`] | none | `go test -list` | `-run '^(A\|B)$'` per package | `-json` events |
//! | [`CommandRunner`] | optional | one id a line | template | JUnit, else exit code |

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod cargo;
pub mod command;
pub mod gotest;
pub mod junit;
pub mod nextest;
pub mod pytest;
pub mod step;
pub mod toolchain;

pub use cargo::{CargoTestRunner, TestBinary};
pub use command::CommandRunner;
pub use gotest::GoTestRunner;
pub use nextest::NextestRunner;
pub use pytest::PytestRunner;

/// One test, as the runner that listed it names it.
///
/// `group` is what the tool needs besides the name to find the test: the test binary's id for
/// cargo and nextest (nextest's binary id, such as `my-crate` or `my-crate::integration`, so the
/// two runners name the same tests the same way), the package import path for go, and empty for
/// pytest (whose node ids are complete) and generic commands.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TestId {
    /// Binary, package or other container of the test; may be empty.
    pub group: String,
    /// The test's name within its group.
    pub name: String,
}

impl TestId {
    /// A test inside a group.
    pub fn new(group: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            name: name.into(),
        }
    }

    /// A test whose name alone identifies it.
    pub fn ungrouped(name: impl Into<String>) -> Self {
        Self::new("", name)
    }
}

impl fmt::Display for TestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{} {}", self.group, self.name)
        }
    }
}

/// A command to run later: program and arguments, environment to add, working directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// Program followed by its arguments; never empty.
    pub argv: Vec<String>,
    /// Variables to set on top of the environment the command is started with.
    pub env: BTreeMap<String, String>,
    /// Working directory; `None` means wherever the caller starts it.
    pub cwd: Option<PathBuf>,
}

impl CommandSpec {
    /// A command running `program` with no arguments.
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            argv: vec![program.into()],
            ..Self::default()
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.argv.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.argv.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets environment variables.
    pub fn envs<'a>(mut self, vars: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.clone(), v.clone())));
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// A [`std::process::Command`] for this spec (inheriting the current environment), for
    /// callers that run commands locally.
    pub fn to_command(&self) -> Command {
        // An empty argv fails when started, like any program that does not exist.
        let (program, args) = self
            .argv
            .split_first()
            .map_or(("", &[][..]), |(p, a)| (p.as_str(), a));
        let mut command = Command::new(program);
        command.args(args).envs(&self.env);
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        command
    }
}

/// A file an adapter needs written before its run command starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScratchFile {
    /// Absolute path, inside the scratch directory given to [`Runner::run_command`].
    pub path: PathBuf,
    /// What to write.
    pub contents: String,
}

/// How to start a runner's long-lived worker: a process that runs one job's batches one after
/// another, so the tool's start-up (imports, collection) is paid once per slot instead of once
/// per batch (see [`Runner::worker_command`]).
///
/// The protocol is the same for every runner: whoever starts the worker creates two FIFOs and
/// names them in [`WORKER_REQUESTS_ENV`] and [`WORKER_REPLIES_ENV`]; it writes one request line
/// ([`Runner::worker_request`]) and waits for one reply line; the worker has then written the
/// batch's reports where [`Runner::parse_results`] reads them. Closing the requests FIFO ends
/// the worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInvocation {
    /// A directory private to the worker (the `dir` given to [`Runner::worker_command`]):
    /// its files, and the caller's FIFOs.
    pub dir: PathBuf,
    /// The command that starts the worker.
    pub command: CommandSpec,
    /// Files to write before starting it (a plugin, say).
    pub files: Vec<ScratchFile>,
    /// Variables that get a directory put in front of whatever value the worker's environment
    /// already gives them, `:`-separated (`PYTHONPATH` for a plugin).
    pub prepend_paths: Vec<(String, PathBuf)>,
}

/// Names the FIFO a worker reads its requests from, one JSON line each.
pub const WORKER_REQUESTS_ENV: &str = "TESSERA_WORKER_REQUESTS";
/// Names the FIFO a worker answers on, one line per request.
pub const WORKER_REPLIES_ENV: &str = "TESSERA_WORKER_REPLIES";

/// How to run one batch: the files to write, then the command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInvocation {
    /// The command to run once the files exist.
    pub command: CommandSpec,
    /// Files to write first (for example the list of test ids, or a tool config file).
    pub files: Vec<ScratchFile>,
}

impl RunInvocation {
    /// Writes [`Self::files`], creating parent directories, for callers that run locally.
    pub fn write_files(&self) -> std::io::Result<()> {
        for file in &self.files {
            if let Some(parent) = file.path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&file.path, &file.contents)?;
        }
        Ok(())
    }
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Termination {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it (Unix).
    Signaled(i32),
    /// The caller killed it because it ran past its deadline.
    TimedOut,
}

impl Termination {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == Self::Exited(0)
    }

    /// The termination recorded in a [`std::process::ExitStatus`].
    pub fn from_status(status: std::process::ExitStatus) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            if let Some(signal) = status.signal() {
                return Self::Signaled(signal);
            }
        }
        // Without a code and without a signal there is nothing better to report than failure.
        Self::Exited(status.code().unwrap_or(-1))
    }
}

impl fmt::Display for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(code) => write!(f, "exit code {code}"),
            Self::Signaled(signal) => write!(f, "killed by signal {signal}"),
            Self::TimedOut => f.write_str("timed out"),
        }
    }
}

/// What a finished (or killed) command left behind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutput {
    /// How it ended.
    pub termination: Termination,
    /// Standard output, lossily decoded as UTF-8.
    pub stdout: String,
    /// Standard error, lossily decoded as UTF-8.
    pub stderr: String,
    /// Wall-clock time from start to end.
    pub elapsed: Duration,
}

impl CommandOutput {
    /// Wraps what [`std::process::Command::output`] returned.
    pub fn from_process(output: &std::process::Output, elapsed: Duration) -> Self {
        Self {
            termination: Termination::from_status(output.status),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed,
        }
    }

    /// Standard output followed by standard error.
    pub fn combined(&self) -> String {
        let mut all = self.stdout.clone();
        if !all.is_empty() && !all.ends_with('\n') && !self.stderr.is_empty() {
            all.push('\n');
        }
        all.push_str(&self.stderr);
        all
    }

    /// The last `lines` lines of standard error (or of standard output if standard error is
    /// empty), for error messages.
    fn tail(&self, lines: usize) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let all: Vec<&str> = text.trim_end().lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// How one test ended. A failing test is an outcome, not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The tool reported a pass.
    Passed,
    /// The tool reported a failure, or the test's own process crashed.
    Failed,
    /// The tool reported an error outside the test's own body, which its JUnit report counts
    /// as an `<error>` rather than a `<failure>`: a pytest fixture's setup or teardown, a test
    /// file that failed to import, a go package that failed to build.
    Error,
    /// The tool skipped it (libtest's `#[ignore]`, `pytest.skip`, `t.Skip`, ...).
    Skipped,
    /// The tool ran it again itself after it failed, and it passed (nextest's retries): flaky,
    /// never cached. The failed tries' texts are in the result's output.
    Flaky,
    /// The command ran past its deadline before the tool reported this test.
    TimedOut,
    /// The tool ended without saying anything about this test: it crashed in an earlier test,
    /// failed to build, or never got to it. The caller decides (retry, or report as a failure).
    NoResult,
}

/// The result of one test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestResult {
    /// Which test.
    pub id: TestId,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it ran, as the tool measured it or, for one test per process, as the caller did;
    /// `None` when nobody knows.
    pub duration: Option<Duration>,
    /// What it printed, and the failure message where the tool gives one.
    pub output: String,
}

/// Which tests may share one run command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Batching {
    /// Any tests, and the tool times each one.
    Any,
    /// Tests of one [`TestId::group`] (one go package), and the tool times each one.
    PerGroup,
    /// One test per command: the tool cannot time tests itself, so the caller runs each test as
    /// its own process and its wall-clock time is the test's duration.
    PerTest,
}

impl Batching {
    /// Splits `tests` into the fewest batches this batching allows, keeping their order within
    /// each batch and ordering batches by their first test.
    pub fn split(self, tests: &[TestId]) -> Vec<Vec<TestId>> {
        match self {
            Self::Any if tests.is_empty() => Vec::new(),
            Self::Any => vec![tests.to_vec()],
            Self::PerTest => tests.iter().map(|t| vec![t.clone()]).collect(),
            Self::PerGroup => {
                let mut batches: Vec<Vec<TestId>> = Vec::new();
                for test in tests {
                    match batches.iter_mut().find(|b| b[0].group == test.group) {
                        Some(batch) => batch.push(test.clone()),
                        None => batches.push(vec![test.clone()]),
                    }
                }
                batches
            }
        }
    }

    /// Checks that `tests` may share one command, as [`Runner::run_command`] requires.
    pub fn check(self, runner: &'static str, tests: &[TestId]) -> Result<(), RunnerError> {
        let too_wide = match self {
            Self::Any => false,
            Self::PerGroup => tests.iter().any(|t| t.group != tests[0].group),
            Self::PerTest => tests.len() > 1,
        };
        if too_wide {
            return Err(RunnerError::BatchTooWide {
                runner,
                batching: self,
                tests: tests.len(),
            });
        }
        Ok(())
    }
}

/// What the prepare step produced that later steps need. It travels with the job from the
/// prepare action to the list and run actions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared {
    /// Test executables, for [`CargoTestRunner`]; empty for the other runners.
    #[serde(default)]
    pub test_binaries: Vec<TestBinary>,
    /// Every file the list and run steps need besides the job's input root (absolute paths:
    /// test binaries, the binaries tests run, a nextest archive). The agent that ran the
    /// prepare step uploads them, and every later step sees them at the same paths.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Directories the list and run steps expect to exist, created empty beside
    /// [`Self::files`] (cargo's `CARGO_TARGET_TMPDIR`, which integration tests write to).
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
}

/// Why an adapter could not do its part. Test failures are never errors (see [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The prepare command did not succeed, so there is nothing to list or run.
    #[error("prepare command failed ({termination}): {log}")]
    PrepareFailed {
        /// How the command ended.
        termination: Termination,
        /// The end of what it printed.
        log: String,
    },
    /// The list command did not succeed.
    #[error("list command failed ({termination}): {log}")]
    ListFailed {
        /// How the command ended.
        termination: Termination,
        /// The end of what it printed.
        log: String,
    },
    /// A tool printed something this adapter does not understand.
    #[error("unexpected output from {tool}: {detail}")]
    UnexpectedOutput {
        /// Which tool.
        tool: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// A JUnit report the tool wrote could not be parsed.
    #[error("failed to parse JUnit report {path}")]
    Junit {
        /// The report.
        path: PathBuf,
        /// What was wrong with it.
        #[source]
        source: junit::JunitError,
    },
    /// A result file exists but could not be read.
    #[error("failed to read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The tests of a batch cannot share one command (see [`Runner::batching`]).
    #[error("{runner} runs one {} per command, but the batch has {tests} tests", batching_unit(*.batching))]
    BatchTooWide {
        /// Which runner.
        runner: &'static str,
        /// What it allows.
        batching: Batching,
        /// How many tests the batch had.
        tests: usize,
    },
    /// A test names a group (test binary) that the prepare step did not produce.
    #[error("unknown test binary {group:?} (not built by the prepare step)")]
    UnknownGroup {
        /// The group.
        group: String,
    },
    /// A run was asked for with no tests in it.
    #[error("a run needs at least one test")]
    EmptyBatch,
    /// A worker request for a runner that has no long-lived worker.
    #[error("{runner} has no long-lived worker")]
    NoWorker {
        /// Which runner.
        runner: &'static str,
    },
    /// A generic command's run template is unusable.
    #[error("invalid run template: {0}")]
    BadTemplate(String),
    /// The installed tool lacks a feature the adapter needs.
    #[error("{tool} is too old: {detail}")]
    ToolTooOld {
        /// Which tool.
        tool: &'static str,
        /// What is missing and which version has it.
        detail: String,
    },
}

fn batching_unit(batching: Batching) -> &'static str {
    match batching {
        Batching::Any => "batch",
        Batching::PerGroup => "group of tests",
        Batching::PerTest => "test",
    }
}

/// A test-runner adapter. Implementations are plain data (their settings), so the same value
/// can describe commands on the coordinator and parse their output on an agent.
pub trait Runner: fmt::Debug + Send + Sync {
    /// Short name of the runner, such as `"pytest"`.
    fn name(&self) -> &'static str;

    /// The command that builds what listing and running need, run once per job; `None` if the
    /// runner needs none.
    fn prepare_command(&self) -> Option<CommandSpec> {
        None
    }

    /// Reads the prepare command's output. The default accepts any successful run.
    fn parse_prepare(&self, output: &CommandOutput) -> Result<Prepared, RunnerError> {
        check_prepare(output)?;
        Ok(Prepared::default())
    }

    /// The command that lists the tests.
    fn list_command(&self, prepared: &Prepared) -> CommandSpec;

    /// Reads the list command's output into test ids, in the tool's order.
    fn parse_list(
        &self,
        prepared: &Prepared,
        output: &CommandOutput,
    ) -> Result<Vec<TestId>, RunnerError>;

    /// Which tests may share one run command.
    fn batching(&self) -> Batching;

    /// For a subtest that [`Runner::parse_results`] reported beyond the requested tests, the
    /// requested test that created it; `None` for a test that is not a subtest. Subtests are
    /// reported as the tool reports them, but never listed, planned or run on their own.
    fn subtest_parent(&self, test: &TestId) -> Option<TestId> {
        let _ = test;
        None
    }

    /// The unit (file) `test` belongs to, for jobs that keep each unit's tests together in
    /// one run in listing order (order-dependent suites); by default its group (a test
    /// binary, a go package).
    fn unit_of(&self, test: &TestId) -> String {
        test.group.clone()
    }

    /// Whether the tool measures each test's duration itself. When it does not, the caller runs
    /// one test per command and uses the command's wall-clock time.
    fn times_tests_itself(&self) -> bool {
        self.batching() != Batching::PerTest
    }

    /// How to run exactly `tests` (which [`Self::batching`] must allow in one command), with
    /// `scratch` as an empty directory private to this run for the files the adapter writes and
    /// the reports the tool writes.
    fn run_command(
        &self,
        prepared: &Prepared,
        tests: &[TestId],
        scratch: &Path,
    ) -> Result<RunInvocation, RunnerError>;

    /// Whether this runner runs batches in a long-lived worker ([`Runner::worker_command`]),
    /// so its start-up is paid once per slot. The job driver then names the job on each batch
    /// step so that an agent can hand it to the worker it started for that job.
    fn long_lived_worker(&self) -> bool {
        false
    }

    /// How to start a worker for batches of tests of `group`, with `dir` as a directory
    /// private to the worker for the files the adapter writes; `None` when the runner has no
    /// worker.
    fn worker_command(
        &self,
        prepared: &Prepared,
        group: &str,
        dir: &Path,
    ) -> Option<WorkerInvocation> {
        let _ = (prepared, group, dir);
        None
    }

    /// The request line that asks a worker to run exactly `tests` (all of one group), with
    /// `scratch` as an empty directory private to this batch for its reports, which
    /// [`Runner::parse_results`] then reads as it reads a process's.
    fn worker_request(&self, tests: &[TestId], scratch: &Path) -> Result<String, RunnerError> {
        let _ = (tests, scratch);
        Err(RunnerError::NoWorker {
            runner: self.name(),
        })
    }

    /// Reads a run's output (and its reports under `scratch`) into one result per test of
    /// `tests`, in that order, followed by one result per subtest the tool reported for them
    /// (tests it created while running a requested one, such as go's `TestX/case`; see
    /// [`Runner::subtest_parent`]). Whatever else the tool reported is ignored.
    fn parse_results(
        &self,
        prepared: &Prepared,
        tests: &[TestId],
        output: &CommandOutput,
        scratch: &Path,
    ) -> Result<Vec<TestResult>, RunnerError>;
}

/// A runner's settings as one serializable value: what a job names as its runner, and part of
/// every test result's cache key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunnerConfig {
    /// `cargo test` binaries, one test per process.
    Cargo(CargoTestRunner),
    /// cargo-nextest, from an archive.
    Nextest(NextestRunner),
    /// pytest.
    Pytest(PytestRunner),
    /// go test.
    Go(GoTestRunner),
    /// Any command.
    Command(CommandRunner),
}

impl RunnerConfig {
    /// These settings as part of a test result's cache key: without the settings that only
    /// select which tests run (test paths, `-k`, name filters), so that a test selected another
    /// way answers from the same cached pass (DESIGN.md §5.3).
    pub fn key_settings(&self) -> RunnerConfig {
        match self {
            Self::Cargo(r) => Self::Cargo(r.without_selection()),
            Self::Nextest(r) => Self::Nextest(r.without_selection()),
            Self::Pytest(r) => Self::Pytest(r.without_selection()),
            Self::Go(r) => Self::Go(r.without_selection()),
            Self::Command(r) => Self::Command(r.clone()),
        }
    }

    /// The adapter these settings describe.
    pub fn runner(&self) -> &dyn Runner {
        match self {
            Self::Cargo(r) => r,
            Self::Nextest(r) => r,
            Self::Pytest(r) => r,
            Self::Go(r) => r,
            Self::Command(r) => r,
        }
    }
}

/// The prepare step's common check: it must have exited 0.
pub(crate) fn check_prepare(output: &CommandOutput) -> Result<(), RunnerError> {
    if output.termination.success() {
        Ok(())
    } else {
        Err(RunnerError::PrepareFailed {
            termination: output.termination,
            log: output.tail(20),
        })
    }
}

/// The list step's error for a command that did not succeed.
pub(crate) fn list_failed(output: &CommandOutput) -> RunnerError {
    RunnerError::ListFailed {
        termination: output.termination,
        log: output.tail(20),
    }
}

/// Result for a requested test the tool said nothing about.
pub(crate) fn unreported(id: &TestId, output: &CommandOutput, note: &str) -> TestResult {
    let outcome = if output.termination == Termination::TimedOut {
        Outcome::TimedOut
    } else {
        Outcome::NoResult
    };
    TestResult {
        id: id.clone(),
        outcome,
        duration: None,
        output: format!("{note} ({})\n{}", output.termination, output.tail(40)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(spec: &[(&str, &str)]) -> Vec<TestId> {
        spec.iter().map(|(g, n)| TestId::new(*g, *n)).collect()
    }

    #[test]
    fn batching_splits_by_what_the_tool_allows() {
        let tests = ids(&[("a", "1"), ("b", "2"), ("a", "3")]);
        assert_eq!(Batching::Any.split(&tests), vec![tests.clone()]);
        assert_eq!(Batching::PerTest.split(&tests).len(), 3);
        assert_eq!(
            Batching::PerGroup.split(&tests),
            vec![ids(&[("a", "1"), ("a", "3")]), ids(&[("b", "2")]),]
        );
        assert!(Batching::Any.split(&[]).is_empty());
    }

    #[test]
    fn batching_check_refuses_mixed_batches() {
        let mixed = ids(&[("a", "1"), ("b", "2")]);
        assert!(Batching::Any.check("x", &mixed).is_ok());
        let err = Batching::PerGroup.check("go", &mixed).unwrap_err();
        assert_eq!(
            err.to_string(),
            "go runs one group of tests per command, but the batch has 2 tests"
        );
        assert!(Batching::PerTest.check("cargo", &mixed[..1]).is_ok());
    }

    #[test]
    fn test_ids_display_like_nextest() {
        assert_eq!(
            TestId::new("crate::it", "mod::t").to_string(),
            "crate::it mod::t"
        );
        assert_eq!(TestId::ungrouped("a.py::t").to_string(), "a.py::t");
    }

    #[test]
    fn runner_config_round_trips_through_json() {
        let config = RunnerConfig::Pytest(PytestRunner::new("/src"));
        let json = serde_json::to_string(&config).unwrap();
        assert!(json.contains(r#""kind":"pytest""#), "{json}");
        let back: RunnerConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, config);
        assert_eq!(back.runner().name(), "pytest");
    }

    #[test]
    fn runner_config_refuses_unknown_settings() {
        let json = r#"{"kind": "go", "dir": "/src", "pakages": ["./..."]}"#;
        let err = serde_json::from_str::<RunnerConfig>(json).unwrap_err();
        assert!(err.to_string().contains("pakages"), "{err}");
        let json = r#"{"kind": "go", "dir": "/src"}"#;
        let config: RunnerConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config, RunnerConfig::Go(GoTestRunner::new("/src")));
    }
}

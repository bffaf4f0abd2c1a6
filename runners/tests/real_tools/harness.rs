//! The harness: runs an adapter's commands for real, as the agent will, and runs the tool
//! directly, so that each test can compare what the adapter reports with what the tool says.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_runners::{
    CommandOutput, CommandSpec, Outcome, Prepared, Runner, Termination, TestId, TestResult,
};

/// No command in these tests should come near this; it only keeps a hung tool from hanging CI.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// The repository's `examples/` folder.
pub(crate) fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Where the example Rust suite is built: ignored by git, shared by the cargo and nextest tests
/// (cargo's lock serializes them) and kept between runs so a rerun builds nothing.
pub(crate) fn rust_target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target-examples")
}

/// Whether `tool` can be started (`probe` is its version command). A missing tool skips the test
/// with a message, except under `CI=true`, where it fails it: CI installs every tool with
/// `.ci/install-deps.sh`.
pub(crate) fn tool_available(tool: &str, probe: &[&str]) -> bool {
    let found = Command::new(probe[0])
        .args(&probe[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{tool} is required under CI=true; .ci/install-deps.sh installs it");
        }
        eprintln!(
            "skipping: {tool} is not installed (`{}` failed)",
            probe.join(" ")
        );
    }
    found
}

/// Runs `spec` to completion, killing it after `timeout`. The environment a parent cargo or
/// nextest gave this test process (target directory, package variables, nextest's run
/// settings) is removed, so the example projects build and run as they would on their own.
pub(crate) fn execute_with_timeout(spec: &CommandSpec, timeout: Duration) -> CommandOutput {
    let mut command = spec.to_command();
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let inherited_from_runner = key.starts_with("NEXTEST")
            || key.starts_with("__NEXTEST")
            || (key.starts_with("CARGO_") && key != "CARGO_HOME");
        if inherited_from_runner && !spec.env.contains_key(key.as_ref()) {
            command.env_remove(key.as_ref());
        }
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("failed to start {:?}: {e}", spec.argv));
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let termination = if exits_within(&child, timeout) {
        Termination::from_status(child.wait().unwrap())
    } else {
        child.kill().unwrap();
        child.wait().unwrap();
        Termination::TimedOut
    };
    let elapsed = start.elapsed();
    CommandOutput {
        termination,
        stdout: String::from_utf8_lossy(&stdout.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&stderr.join().unwrap()).into_owned(),
        elapsed,
    }
}

/// Whether `child` exits within `limit`. The exit is awaited as an event: a helper thread
/// blocks in `waitid(WNOWAIT)`, which sees the exit without reaping the child, so the caller
/// can still kill it or collect its status.
fn exits_within(child: &Child, limit: Duration) -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while let Err(nix::errno::Errno::EINTR) =
            waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
        {}
        let _ = tx.send(());
    });
    rx.recv_timeout(limit).is_ok()
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).unwrap();
        bytes
    })
}

/// Runs `spec` with the default timeout.
pub(crate) fn execute(spec: &CommandSpec) -> CommandOutput {
    execute_with_timeout(spec, COMMAND_TIMEOUT)
}

/// Runs the prepare step (if any) and the list step, as a job's first two actions do.
pub(crate) fn prepare_and_list(runner: &dyn Runner) -> (Prepared, Vec<TestId>) {
    let prepared = match runner.prepare_command() {
        Some(spec) => runner
            .parse_prepare(&execute(&spec))
            .unwrap_or_else(|e| panic!("{} prepare: {e}", runner.name())),
        None => Prepared::default(),
    };
    let listed = execute(&runner.list_command(&prepared));
    let tests = runner
        .parse_list(&prepared, &listed)
        .unwrap_or_else(|e| panic!("{} list: {e}", runner.name()));
    (prepared, tests)
}

/// A batch that has run: its results and the scratch directory the tool wrote to.
pub(crate) struct Batch {
    pub(crate) results: Vec<TestResult>,
    pub(crate) output: CommandOutput,
    pub(crate) scratch: tempfile::TempDir,
}

/// Runs one batch as an agent will: a fresh scratch directory, the adapter's files, the command.
pub(crate) fn run_batch(
    runner: &dyn Runner,
    prepared: &Prepared,
    tests: &[TestId],
    timeout: Duration,
) -> Batch {
    let scratch = tempfile::tempdir().unwrap();
    let invocation = runner
        .run_command(prepared, tests, scratch.path())
        .unwrap_or_else(|e| panic!("{} run command: {e}", runner.name()));
    invocation.write_files().unwrap();
    let output = execute_with_timeout(&invocation.command, timeout);
    let results = runner
        .parse_results(prepared, tests, &output, scratch.path())
        .unwrap_or_else(|e| panic!("{} results: {e}", runner.name()));
    assert_eq!(
        results
            .iter()
            .take(tests.len())
            .map(|r| &r.id)
            .collect::<Vec<_>>(),
        tests.iter().collect::<Vec<_>>(),
        "one result per requested test, in order"
    );
    for extra in &results[tests.len()..] {
        let parent = runner.subtest_parent(&extra.id);
        assert!(
            parent.as_ref().is_some_and(|p| tests.contains(p)),
            "after the requested tests, only their subtests: {:?}",
            extra.id
        );
    }
    Batch {
        results,
        output,
        scratch,
    }
}

/// Runs `tests` in as few batches as the runner allows, and returns every result.
pub(crate) fn run_all(
    runner: &dyn Runner,
    prepared: &Prepared,
    tests: &[TestId],
) -> Vec<TestResult> {
    runner
        .batching()
        .split(tests)
        .iter()
        .flat_map(|batch| run_batch(runner, prepared, batch, COMMAND_TIMEOUT).results)
        .collect()
}

/// Outcomes by test id (`TestId`'s display form), for comparing with a direct run.
pub(crate) fn outcomes(results: &[TestResult]) -> BTreeMap<String, Outcome> {
    results
        .iter()
        .map(|r| (r.id.to_string(), r.outcome))
        .collect()
}

/// The result for the test displayed as `id`.
pub(crate) fn result<'a>(results: &'a [TestResult], id: &str) -> &'a TestResult {
    results
        .iter()
        .find(|r| r.id.to_string() == id)
        .unwrap_or_else(|| panic!("no result for {id}"))
}

/// Display forms of test ids, sorted.
pub(crate) fn names(tests: &[TestId]) -> Vec<String> {
    let mut names: Vec<String> = tests.iter().map(ToString::to_string).collect();
    names.sort();
    names
}

/// A fresh directory for the examples' flaky tests: their first run in it fails.
pub(crate) fn flaky_state() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The variable pointing the examples' flaky tests at their state directory.
pub(crate) const STATE_VAR: &str = "TESSERA_EXAMPLE_STATE_DIR";

/// A path as a string, for environment variables.
pub(crate) fn path_str(path: &Path) -> String {
    path.display().to_string()
}

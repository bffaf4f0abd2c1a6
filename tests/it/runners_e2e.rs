//! `tessera run` against each test tool run directly: for every runner (cargo, nextest, pytest,
//! go test, a generic command), the example suite is copied into a fresh git repository, run
//! once by the tool itself and once through the real `tessera` binary (an embedded cluster of
//! its own), and the two must report exactly the same outcome for every test.
//!
//! Both runs get a fresh `TESSERA_EXAMPLE_STATE_DIR`, so both see the flaky test's failing first
//! run; with `--retries 0` tessera must report it failed, as the tool does. Everything lives
//! under `/var/tmp` (`tessera_tests::VISIBLE_TMP`), not `/tmp`: each action gets a private
//! `/tmp`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tessera_runners::junit::{self, CaseStatus};
use tessera_tests::{in_ci, tessera_bin, wait_exit};

/// No command here should come near this; it only keeps a hung tool from hanging the suite.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// The variable pointing the examples' flaky tests at their state directory.
const STATE_VAR: &str = "TESSERA_EXAMPLE_STATE_DIR";

/// Test id (as `tessera run --json` names it) to outcome (in its words: `passed`, `failed`,
/// `skipped`, ...).
type Outcomes = BTreeMap<String, String>;

/// One test's scratch space: the copied project, state directories, reports, caches.
struct Workspace {
    dir: TempDir,
    /// The copy of the example, a git repository of its own.
    project: PathBuf,
}

impl Workspace {
    /// Copies `examples/<example>` (without build output) to a fresh git repository named like
    /// the example, so tessera's exec root is `/var/tmp/tessera/<example>`.
    fn new(example: &str) -> Self {
        let base = Path::new(tessera_tests::VISIBLE_TMP);
        std::fs::create_dir_all(base).expect("visible tmp");
        let dir = tempfile::Builder::new()
            .prefix("runners-e2e-")
            .tempdir_in(base)
            .expect("scratch dir");
        let project = dir.path().join(example);
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(example);
        copy_tree(&source, &project);
        let workspace = Workspace { dir, project };
        for args in [&["init", "-q"][..], &["add", "-A"]] {
            let output = workspace.run(Command::new("git").args(args), "git");
            assert!(output.success(), "git {args:?}: {}", output.text);
        }
        workspace
    }

    /// A new directory `name` in the scratch space.
    fn fresh_dir(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir(&path).expect("fresh dir");
        path
    }

    /// Runs `command` in the project, stdout and stderr interleaved in one log (as a terminal
    /// would show them), and returns its exit code and the log.
    fn run(&self, command: &mut Command, log_name: &str) -> Finished {
        let log_path = self.dir.path().join(format!("{log_name}.log"));
        let log = File::create(&log_path).expect("log file");
        command.stdout(log.try_clone().expect("log file"));
        let exit_code = self.wait_for(command, log, &log_path);
        Finished {
            exit_code,
            text: std::fs::read_to_string(&log_path).expect("read log"),
        }
    }

    /// Runs `command` (its stdout already set) in the project with the environment a parent
    /// cargo or nextest gave this process removed, so the example builds and runs as it would
    /// on its own, and stderr to `log`; `log_path` is shown if it hangs.
    fn wait_for(&self, command: &mut Command, log: File, log_path: &Path) -> Option<i32> {
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let inherited = key.starts_with("NEXTEST")
                || key.starts_with("__NEXTEST")
                || (key.starts_with("CARGO_") && key != "CARGO_HOME")
                || key == "TESSERA_COORDINATOR";
            if inherited {
                command.env_remove(key.as_ref());
            }
        }
        let mut child = command
            .current_dir(&self.project)
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {command:?}: {e}"));
        if let Some(status) = wait_exit(&mut child, COMMAND_TIMEOUT) {
            return status.code();
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{command:?} ran past {COMMAND_TIMEOUT:?}:\n{}",
            std::fs::read_to_string(log_path).unwrap_or_default()
        );
    }

    /// `tessera run --json --retries 0` with `args` (flags, then `--` and the test command) on an
    /// embedded cluster of its own, its flaky tests in a fresh state directory.
    fn tessera_run(&self, args: &[&str]) -> TesseraRun {
        let state = self.fresh_dir("tessera-state");
        let cache = self.fresh_dir("tessera-cache");
        let json_path = self.dir.path().join("tessera.jsonl");
        let log_path = self.dir.path().join("tessera.log");
        let mut command = Command::new(tessera_bin());
        command
            .args(["run", "--json", "--retries", "0", "--env"])
            .arg(format!("{STATE_VAR}={}", state.display()))
            .args(args)
            .env("XDG_CACHE_HOME", &cache)
            .env("TESSERA_SUBMITTER", "runners-e2e")
            .stdout(File::create(&json_path).expect("json file"));
        let log = File::create(&log_path).expect("log file");
        let exit_code = self.wait_for(&mut command, log, &log_path);
        let json = std::fs::read_to_string(&json_path).expect("read json lines");
        let mut run = TesseraRun {
            exit_code,
            outcomes: Outcomes::new(),
            finished: serde_json::Value::Null,
            transcript: format!(
                "{json}\n{}",
                std::fs::read_to_string(&log_path).expect("read log")
            ),
        };
        for line in json.lines() {
            let event: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{}", run.transcript));
            match event["event"].as_str() {
                Some("test") if event["final"] == true => {
                    let test = event["test"].as_str().expect("test id").to_owned();
                    let outcome = event["outcome"].as_str().expect("outcome").to_owned();
                    let earlier = run.outcomes.insert(test.clone(), outcome);
                    assert!(earlier.is_none(), "two final events for {test}");
                }
                Some("finished") => run.finished = event,
                _ => {}
            }
        }
        run
    }
}

/// How a command ended.
struct Finished {
    /// `None` if a signal ended it.
    exit_code: Option<i32>,
    /// What it printed (the log of [`Workspace::run`]).
    text: String,
}

impl Finished {
    fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// What `tessera run --json` reported.
struct TesseraRun {
    exit_code: Option<i32>,
    /// The final outcome of each test.
    outcomes: Outcomes,
    /// The `finished` event (`Null` if there was none).
    finished: serde_json::Value,
    /// Its stdout and stderr, for failure messages.
    transcript: String,
}

impl TesseraRun {
    /// Asserts that tessera reported exactly `direct`, counted them in its summary the same way,
    /// and exited with 1 (every example suite has failing tests).
    fn assert_agrees_with(&self, tool: &str, direct: &Outcomes) {
        let ids: std::collections::BTreeSet<&String> =
            self.outcomes.keys().chain(direct.keys()).collect();
        let differences: Vec<String> = ids
            .into_iter()
            .filter(|id| self.outcomes.get(*id) != direct.get(*id))
            .map(|id| {
                format!(
                    "  {id}: tessera {}, {tool} {}",
                    self.outcomes.get(id).map_or("(absent)", String::as_str),
                    direct.get(id).map_or("(absent)", String::as_str),
                )
            })
            .collect();
        assert!(
            differences.is_empty(),
            "tessera run and {tool} disagree:\n{}\n\ntessera run: {:#?}\n{tool}: {direct:#?}\n\n{}",
            differences.join("\n"),
            self.outcomes,
            self.transcript
        );
        let count = |outcome: &str| direct.values().filter(|o| *o == outcome).count() as u64;
        let summary = |key: &str| self.finished[key].as_u64();
        assert_eq!(
            [
                "passed",
                "failed",
                "skipped",
                "flaky",
                "timed_out",
                "not_run"
            ]
            .map(summary),
            [count("passed"), count("failed"), count("skipped"), 0, 0, 0].map(Some),
            "summary (passed, failed, skipped, flaky, timed_out, not_run) of {}",
            self.finished
        );
        assert_eq!(self.exit_code, Some(1), "{}", self.transcript);
        assert_eq!(self.finished["exit_code"], 1, "{}", self.finished);
    }
}

/// Copies the files under `from` to `to`, leaving out the build output and caches the
/// examples' `.gitignore` files name.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read example dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        if ["target", "__pycache__", ".pytest_cache"].contains(&name.to_str().unwrap_or("")) {
            continue;
        }
        let (source, dest) = (entry.path(), to.join(&name));
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&source, &dest);
        } else {
            std::fs::copy(&source, &dest).expect("copy file");
        }
    }
}

/// Whether `probe` (a tool's version command) runs. A missing tool skips the test with a
/// message, except under CI, which installs every tool (`.ci/install-deps.sh`).
fn tool_available(tool: &str, probe: &[&str]) -> bool {
    let found = Command::new(probe[0])
        .args(&probe[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            !in_ci(),
            "{tool} is required in CI; .ci/install-deps.sh installs it"
        );
        eprintln!(
            "skipping: {tool} is not installed (`{}` failed)",
            probe.join(" ")
        );
    }
    found
}

/// The outcome of a JUnit test case, in tessera's words: an `<error>` (a pytest fixture's
/// setup or teardown) is an error, as the tools' JUnit reports count it.
fn junit_outcome(status: CaseStatus) -> &'static str {
    match status {
        CaseStatus::Passed => "passed",
        CaseStatus::Failed => "failed",
        CaseStatus::Errored => "error",
        CaseStatus::Skipped => "skipped",
    }
}

/// Records `outcome` for `id`; a test reported twice (pytest reports a failing test's teardown
/// error as a second case) keeps its worst outcome, a failure before an error.
fn record(outcomes: &mut Outcomes, id: String, outcome: &str) {
    let entry = outcomes.entry(id).or_insert_with(|| outcome.to_owned());
    let rank = |o: &str| match o {
        "failed" => 2,
        "error" => 1,
        _ => 0,
    };
    if rank(outcome) > rank(entry) {
        outcome.clone_into(entry);
    }
}

/// The test cases of the JUnit report at `path`.
fn junit_cases(path: &Path, log: &str) -> Vec<junit::JunitCase> {
    let xml = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no JUnit report at {} ({e}):\n{log}", path.display()));
    junit::parse(&xml).expect("JUnit report parses")
}

/// The example Rust suite's package: its lib's test binary id, and the prefix of its
/// integration tests' (`rust-suite::integration`), as nextest and tessera name them.
const RUST_PACKAGE: &str = "rust-suite";

/// The binary id of the test target cargo names in `Running <source> (<path>)`:
/// `unittests src/lib.rs` is the lib, `tests/<name>.rs` an integration test.
fn cargo_binary_id(source: &str) -> String {
    let path = source.strip_prefix("unittests ").unwrap_or(source);
    match path
        .strip_prefix("tests/")
        .and_then(|p| p.strip_suffix(".rs"))
    {
        Some(target) => format!("{RUST_PACKAGE}::{target}"),
        None if path == "src/lib.rs" => RUST_PACKAGE.to_owned(),
        None => panic!("a test target this parser does not know: {source}"),
    }
}

/// `cargo test --no-fail-fast`, read from its human output: each `Running SOURCE (binary)` line
/// says which target the `test NAME ... STATUS` lines after it belong to. Doc-tests would be
/// recorded as `doc-tests NAME`.
fn cargo_test_directly(workspace: &Workspace) -> Outcomes {
    let state = workspace.fresh_dir("direct-state");
    let run = workspace.run(
        Command::new("cargo")
            .args(["test", "--no-fail-fast", "--color", "never"])
            .env(
                "CARGO_TARGET_DIR",
                workspace.dir.path().join("direct-target"),
            )
            .env(STATE_VAR, &state),
        "cargo-test",
    );
    assert_eq!(run.exit_code, Some(101), "{}", run.text);
    let mut outcomes = Outcomes::new();
    let mut binary: Option<String> = None;
    for line in run.text.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("Running ") {
            let (source, _) = rest.rsplit_once(" (").expect("Running SOURCE (PATH)");
            binary = Some(cargo_binary_id(source));
        } else if let Some(krate) = trimmed.strip_prefix("Doc-tests ") {
            binary = Some(format!("doc-tests {krate}"));
        } else if let Some((name, status)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "))
        {
            let outcome = match status.split(',').next().expect("status") {
                "ok" => "passed",
                "FAILED" => "failed",
                "ignored" => "skipped",
                other => panic!("unexpected libtest status {other:?} in:\n{}", run.text),
            };
            let binary = binary
                .as_ref()
                .expect("a test line inside a binary's section");
            record(&mut outcomes, format!("{binary} {name}"), outcome);
        }
    }
    outcomes
}

/// `cargo nextest run --no-fail-fast --retries 0` with a JUnit report. Nextest leaves the tests
/// it skips (ignored ones) out of the report, so they come from `cargo nextest list`; a test it
/// lists to run but does not report is recorded as `not reported`.
fn nextest_directly(workspace: &Workspace) -> Outcomes {
    let state = workspace.fresh_dir("direct-state");
    let store = workspace.dir.path().join("nextest-store");
    let config = workspace.dir.path().join("nextest.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\ndir = {:?}\n\n[profile.e2e.junit]\npath = \"junit.xml\"\n",
            store.display().to_string()
        ),
    )
    .expect("write nextest config");
    let nextest = |args: &[&str]| {
        let mut command = Command::new("cargo");
        command
            .arg("nextest")
            .args(args)
            .arg("--config-file")
            .arg(&config)
            .args(["--profile", "e2e", "--color", "never"])
            .env(
                "CARGO_TARGET_DIR",
                workspace.dir.path().join("direct-target"),
            )
            .env(STATE_VAR, &state);
        command
    };

    let list_path = workspace.dir.path().join("nextest-list.json");
    let mut list = nextest(&["list", "--message-format", "json"]);
    list.stdout(File::create(&list_path).expect("list file"));
    let list_log = workspace.dir.path().join("nextest-list.log");
    let code = workspace.wait_for(&mut list, File::create(&list_log).expect("log"), &list_log);
    assert_eq!(
        code,
        Some(0),
        "{}",
        std::fs::read_to_string(&list_log).unwrap_or_default()
    );
    let listed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&list_path).expect("read list"))
            .expect("nextest list JSON");

    let run = workspace.run(
        &mut nextest(&["run", "--no-fail-fast", "--retries", "0"]),
        "nextest",
    );
    assert_eq!(run.exit_code, Some(100), "{}", run.text);
    let mut outcomes = Outcomes::new();
    for case in junit_cases(&store.join("e2e/junit.xml"), &run.text) {
        record(
            &mut outcomes,
            format!("{} {}", case.suite, case.name),
            junit_outcome(case.status),
        );
    }
    let suites = listed["rust-suites"].as_object().expect("rust-suites");
    for (binary_id, suite) in suites {
        let cases = suite["testcases"].as_object().expect("testcases");
        for (name, case) in cases {
            let id = format!("{binary_id} {name}");
            let runs = case["filter-match"]["status"] == "matches";
            if !runs {
                record(&mut outcomes, id, "skipped");
            } else if !outcomes.contains_key(&id) {
                record(&mut outcomes, id, "not reported");
            }
        }
    }
    outcomes
}

/// Dotted module name (as pytest's JUnit `classname` starts) to file path, for every Python
/// file under `dir`, relative to `root`.
fn python_modules(root: &Path, dir: &Path, modules: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            python_modules(root, &path, modules);
        } else if path.extension().is_some_and(|e| e == "py") {
            let relative = path.strip_prefix(root).expect("under root");
            let file = relative.to_str().expect("utf-8 path").to_owned();
            let module = file.trim_end_matches(".py").replace('/', ".");
            modules.insert(module, file);
        }
    }
}

/// `python3 -m pytest --junitxml`, each case named by its node id: pytest's `classname` is the
/// node id's file (slashes as dots, without `.py`) and classes, joined by dots.
fn pytest_directly(workspace: &Workspace) -> Outcomes {
    let state = workspace.fresh_dir("direct-state");
    let report = workspace.dir.path().join("pytest.xml");
    let run = workspace.run(
        Command::new("python3")
            .args(["-m", "pytest", "-p", "no:cacheprovider"])
            .arg(format!("--junitxml={}", report.display()))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env(STATE_VAR, &state),
        "pytest",
    );
    assert_eq!(run.exit_code, Some(1), "{}", run.text);
    let mut modules = BTreeMap::new();
    python_modules(&workspace.project, &workspace.project, &mut modules);
    let mut outcomes = Outcomes::new();
    for case in junit_cases(&report, &run.text) {
        let (module, file) = modules
            .iter()
            .filter(|(module, _)| {
                case.classname == **module || case.classname.starts_with(&format!("{module}."))
            })
            .max_by_key(|(module, _)| module.len())
            .unwrap_or_else(|| panic!("no module for classname {}", case.classname));
        let mut node_id = file.clone();
        let classes = case.classname[module.len()..].trim_start_matches('.');
        for class in classes.split('.').filter(|c| !c.is_empty()) {
            node_id = format!("{node_id}::{class}");
        }
        record(
            &mut outcomes,
            format!("{node_id}::{}", case.name),
            junit_outcome(case.status),
        );
    }
    outcomes
}

/// `go test -json ./...`: the `pass`, `fail` and `skip` events of every test, subtests
/// (`Parent/Sub`) included, named `<import path> <TestName>` as tessera's go runner names them.
fn go_test_directly(workspace: &Workspace) -> Outcomes {
    let state = workspace.fresh_dir("direct-state");
    let events_path = workspace.dir.path().join("go-test.jsonl");
    let log_path = workspace.dir.path().join("go-test.log");
    let mut command = Command::new("go");
    command
        .args(["test", "-json", "-count=1", "./..."])
        .env("GOTOOLCHAIN", "local")
        .env(STATE_VAR, &state)
        .stdout(File::create(&events_path).expect("events file"));
    let code = workspace.wait_for(
        &mut command,
        File::create(&log_path).expect("log"),
        &log_path,
    );
    let events = std::fs::read_to_string(&events_path).expect("read events");
    assert_eq!(code, Some(1), "{events}");
    let mut outcomes = Outcomes::new();
    for line in events.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(package), Some(test)) = (event["Package"].as_str(), event["Test"].as_str())
        else {
            continue;
        };
        let outcome = match event["Action"].as_str() {
            Some("pass") => "passed",
            Some("fail") => "failed",
            Some("skip") => "skipped",
            _ => continue,
        };
        record(&mut outcomes, format!("{package} {test}"), outcome);
    }
    outcomes
}

/// `sh suite.sh run --junit FILE` (every test): ids are `classname::name`, as `suite.sh list`
/// prints them.
fn command_suite_directly(workspace: &Workspace) -> Outcomes {
    let state = workspace.fresh_dir("direct-state");
    let report = workspace.dir.path().join("command.xml");
    let run = workspace.run(
        Command::new("sh")
            .args(["suite.sh", "run", "--junit"])
            .arg(&report)
            .env(STATE_VAR, &state),
        "suite-sh",
    );
    assert_eq!(run.exit_code, Some(1), "{}", run.text);
    let mut outcomes = Outcomes::new();
    for case in junit_cases(&report, &run.text) {
        record(
            &mut outcomes,
            format!("{}::{}", case.classname, case.name),
            junit_outcome(case.status),
        );
    }
    outcomes
}

#[test]
fn cargo_test_through_tessera_reports_what_cargo_test_reports() {
    let workspace = Workspace::new("rust-suite");
    let tessera = workspace.tessera_run(&["--", "cargo", "test"]);
    tessera.assert_agrees_with("cargo test", &cargo_test_directly(&workspace));
}

#[test]
fn nextest_through_tessera_reports_what_cargo_nextest_reports() {
    if !tool_available("cargo-nextest", &["cargo", "nextest", "--version"]) {
        return;
    }
    let workspace = Workspace::new("rust-suite");
    let tessera = workspace.tessera_run(&["--", "cargo", "nextest", "run"]);
    tessera.assert_agrees_with("cargo nextest run", &nextest_directly(&workspace));
}

#[test]
fn pytest_through_tessera_reports_what_pytest_reports() {
    if !tool_available("pytest", &["python3", "-m", "pytest", "--version"]) {
        return;
    }
    let workspace = Workspace::new("python-suite");
    let tessera = workspace.tessera_run(&["--", "python3", "-m", "pytest"]);
    tessera.assert_agrees_with("pytest", &pytest_directly(&workspace));
}

#[test]
fn go_test_through_tessera_reports_what_go_test_reports() {
    if !tool_available("go", &["go", "version"]) {
        return;
    }
    let workspace = Workspace::new("go-suite");
    let tessera =
        workspace.tessera_run(&["--env", "GOTOOLCHAIN=local", "--", "go", "test", "./..."]);
    tessera.assert_agrees_with("go test", &go_test_directly(&workspace));
}

#[test]
fn a_command_through_tessera_reports_what_its_junit_reports() {
    let workspace = Workspace::new("command-suite");
    let tessera = workspace.tessera_run(&[
        "--list-command",
        "sh suite.sh list",
        "--",
        "sh",
        "suite.sh",
        "run",
        "--junit",
        "{junit}",
        "{tests}",
    ]);
    tessera.assert_agrees_with("suite.sh", &command_suite_directly(&workspace));
}

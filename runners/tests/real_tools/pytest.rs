//! The pytest runner against pytest run directly: on `examples/python-suite`, and on small
//! projects written into temporary directories, one per thing pytest users do (every outcome
//! and id shape, a subdirectory, collection errors, selection, configuration).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use tessera_runners::{CommandSpec, Outcome, Prepared, PytestRunner, Runner, TestId, junit};

use crate::harness::{
    STATE_VAR, examples, execute, flaky_state, names, outcomes, path_str, prepare_and_list, result,
    run_all, run_batch, tool_available,
};

fn suite_dir() -> std::path::PathBuf {
    examples().join("python-suite")
}

fn pytest_available() -> bool {
    tool_available("pytest", &["python3", "-m", "pytest", "--version"])
}

fn runner(state: &Path) -> PytestRunner {
    PytestRunner::new(suite_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env(STATE_VAR, path_str(state))
}

/// What pytest reports when run directly in `cwd` with `args`: each test's outcome by node id
/// relative to `rootdir`. Read from pytest's own terminal report (`-v` lines and the short
/// summary, whose ids are relative to `cwd`), not from its JUnit report, so that the adapter's
/// reading of JUnit is checked against something else. A test pytest reports twice (failed,
/// then an error in teardown; a failed subtest) counts once: failed over error over skipped
/// over passed.
fn pytest_directly(
    cwd: &Path,
    rootdir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> BTreeMap<String, Outcome> {
    let mut spec = CommandSpec::new("python3")
        .args(["-m", "pytest", "-p", "no:cacheprovider"])
        .args(args.iter().copied())
        .args(["--verbosity=1", "--color=no", "-rfE"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .cwd(cwd);
    for (key, value) in env {
        spec = spec.env(*key, *value);
    }
    let output = execute(&spec);
    let mut statuses: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for line in output.stdout.lines() {
        if let Some((id, status)) = verbose_line(line).or_else(|| summary_line(line)) {
            let id = normalize(&cwd.join(id.split("::").next().unwrap_or(id)))
                .strip_prefix(normalize(rootdir))
                .map(|path| {
                    let rest = id.find("::").map_or("", |i| &id[i..]);
                    format!("{}{rest}", path.display())
                })
                .unwrap_or_else(|_| panic!("{id} is not under {}", rootdir.display()));
            statuses.entry(id).or_default().insert(status);
        }
    }
    statuses
        .into_iter()
        .map(|(id, seen)| {
            let outcome = if seen.contains("FAILED") || seen.contains("SUBFAILED") {
                Outcome::Failed
            } else if seen.contains("ERROR") {
                Outcome::Error
            } else if seen.contains("SKIPPED") || seen.contains("XFAIL") {
                Outcome::Skipped
            } else {
                Outcome::Passed
            };
            (id, outcome)
        })
        .collect()
}

const STATUSES: &[&str] = &[
    "PASSED",
    "FAILED",
    "ERROR",
    "SKIPPED",
    "XFAIL",
    "XPASS",
    "SUBPASSED",
    "SUBFAILED",
    "SUBSKIPPED",
];

/// `tests/t.py::test_x[a b] PASSED   [ 50%]`: the id and its status.
fn verbose_line(line: &str) -> Option<(&str, &'static str)> {
    if !line.contains("::") || line.starts_with(|c: char| c.is_ascii_uppercase()) {
        return None;
    }
    STATUSES
        .iter()
        .filter_map(|status| {
            let at = line.find(&format!(" {status}"))?;
            let after = line[at + 1 + status.len()..].chars().next();
            matches!(after, None | Some(' ' | '(' | '[')).then_some((at, *status))
        })
        .min()
        .map(|(at, status)| (&line[..at], status))
}

/// `FAILED tests/t.py::test_x - assert 1`, `SUBFAILED(i=2) tests/t.py::T::test_s - ...`,
/// `ERROR tests/test_bad.py`: the id and its status.
fn summary_line(line: &str) -> Option<(&str, &'static str)> {
    let status = STATUSES.iter().find(|s| line.starts_with(*s))?;
    let before_message = line.split(" - ").next()?;
    let id = before_message
        .split(' ')
        .skip(1)
        .find(|word| word.contains("::") || word.ends_with(".py"))?;
    Some((id, status))
}

/// `path` with `.` and `..` resolved by name.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// A pytest project written into a temporary directory.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new(files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (path, contents) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        Self { dir }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// The runner as `tessera run` makes it for a user in `cwd`.
    fn runner(&self, cwd: &str) -> PytestRunner {
        PytestRunner::new(self.path(cwd))
            .root(self.dir.path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
    }
}

/// Each result's outcome by node id (without the group).
fn by_node_id(results: &[tessera_runners::TestResult]) -> BTreeMap<String, Outcome> {
    results
        .iter()
        .map(|r| (r.id.name.clone(), r.outcome))
        .collect()
}

#[test]
fn pytest_reports_what_pytest_reports() {
    if !pytest_available() {
        return;
    }
    let state = flaky_state();
    let runner = runner(state.path());
    let (prepared, tests) = prepare_and_list(&runner);
    assert_eq!(
        names(&tests),
        [
            "tests/sub/test_more.py::test_add",
            "tests/test_calc.py::TestGroup::test_error_in_fixture",
            "tests/test_calc.py::TestGroup::test_in_class",
            "tests/test_calc.py::test_add",
            "tests/test_calc.py::test_add_many",
            "tests/test_calc.py::test_flaky_once",
            "tests/test_calc.py::test_param[0.5-0.25-0.75]",
            "tests/test_calc.py::test_param[1-2-3]",
            "tests/test_calc.py::test_param[2-2-5]",
            "tests/test_calc.py::test_skipped",
            "tests/test_calc.py::test_slow",
            "tests/test_calc.py::test_wrong_answer",
        ]
    );

    let results = run_all(&runner, &prepared, &tests);
    let direct_state = flaky_state();
    let direct = pytest_directly(
        &suite_dir(),
        &suite_dir(),
        &[],
        &[(STATE_VAR, &path_str(direct_state.path()))],
    );
    assert_eq!(outcomes(&results), direct);

    let wrong = result(&results, "tests/test_calc.py::test_wrong_answer");
    assert_eq!(wrong.outcome, Outcome::Failed);
    for expected in ["assert (2 + 2) == 5", "about to compare", "to stderr"] {
        assert!(wrong.output.contains(expected), "{}", wrong.output);
    }
    let slow = result(&results, "tests/test_calc.py::test_slow");
    assert!(
        slow.duration.unwrap() >= Duration::from_millis(400),
        "{slow:?}"
    );
    let fixture = result(
        &results,
        "tests/test_calc.py::TestGroup::test_error_in_fixture",
    );
    assert_eq!(fixture.outcome, Outcome::Error);
    assert!(
        fixture.output.contains("missing_fixture"),
        "{}",
        fixture.output
    );
}

#[test]
fn pytest_runs_exactly_the_batch_and_the_flaky_test_passes_on_retry() {
    if !pytest_available() {
        return;
    }
    let state = flaky_state();
    let runner = runner(state.path());
    // `test_add` also exists in another module and is a prefix of `test_add_many`.
    let batch = [
        "tests/test_calc.py::test_add",
        "tests/test_calc.py::test_param[2-2-5]",
        "tests/test_calc.py::test_flaky_once",
    ]
    .map(TestId::ungrouped);
    let prepared = Default::default();
    let timeout = Duration::from_secs(60);
    let first = run_batch(&runner, &prepared, &batch, timeout);
    let report = std::fs::read_to_string(PytestRunner::junit_path(first.scratch.path())).unwrap();
    let ran: Vec<String> = junit::parse(&report)
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c.classname, c.name))
        .collect();
    assert_eq!(
        ran,
        [
            "tests.test_calc test_add",
            "tests.test_calc test_param[2-2-5]",
            "tests.test_calc test_flaky_once"
        ]
    );
    let outcomes: Vec<Outcome> = first.results.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Passed, Outcome::Failed, Outcome::Failed]
    );
    let retry = run_batch(&runner, &prepared, &batch[2..], timeout);
    assert_eq!(retry.results[0].outcome, Outcome::Passed);
}

#[test]
fn pytest_exit_code_5_is_an_empty_suite() {
    if !pytest_available() {
        return;
    }
    let state = flaky_state();
    let runner = runner(state.path()).args(["-k", "no_test_has_this_name"]);
    let (_, tests) = prepare_and_list(&runner);
    assert!(tests.is_empty(), "{tests:?}");
}

/// Every outcome pytest has, and the node id shapes that are hard to map to JUnit names.
const SHAPES: &str = r#"
import unittest
import pytest

def test_fixture_from_conftest(resource):
    assert resource == "ready"

def test_fail_and_teardown_error(bad_teardown):
    assert False

def test_pass_and_teardown_error(bad_teardown):
    pass

def test_setup_error(bad_setup):
    pass

@pytest.mark.skip(reason="later")
def test_skip():
    pass

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False

@pytest.mark.xfail(reason="known")
def test_xpass():
    pass

@pytest.mark.xfail(strict=True, reason="known")
def test_xpass_strict():
    pass

@pytest.mark.slow
@pytest.mark.parametrize("v", ["a::b", "sp ace", "\u00fcn\u00ef", "x/y", "br[ack]et", "-"])
def test_ids(v):
    assert v

class TestOuter:
    def test_plain(self):
        pass

    class TestInner:
        def test_nested(self):
            assert 1 == 2

class TestUnit(unittest.TestCase):
    def test_sub(self):
        for i in range(3):
            with self.subTest(i=i):
                self.assertLess(i, 2)

    def test_sub_passing(self):
        for i in range(3):
            with self.subTest(i=i):
                self.assertLess(i, 5)

    @unittest.skip("not here")
    def test_unittest_skip(self):
        pass

def test_pytest_subtests(subtests):
    for i in range(3):
        with subtests.test(msg="m", i=i):
            assert i != 1
"#;

const CONFTEST: &str = r#"
import pytest

@pytest.fixture
def resource():
    return "ready"

@pytest.fixture
def bad_teardown():
    yield
    raise RuntimeError("teardown boom")

@pytest.fixture
def bad_setup():
    raise RuntimeError("setup boom")
"#;

/// `-q` in addopts must not break the listing; `--strict-markers` makes an unknown marker an
/// error, so the configuration is visibly in force.
const PYPROJECT: &str = r#"
[tool.pytest.ini_options]
addopts = "-q --strict-markers"
markers = ["slow: slow tests"]
"#;

#[test]
fn every_outcome_and_id_shape_as_pytest_reports_them() {
    if !pytest_available() {
        return;
    }
    let project = Project::new(&[
        ("pyproject.toml", PYPROJECT),
        ("tests/conftest.py", CONFTEST),
        ("tests/test_shapes.py", SHAPES),
    ]);
    let runner = project.runner("");
    let (prepared, tests) = prepare_and_list(&runner);
    assert!(tests.iter().all(|t| t.group.is_empty()), "{tests:?}");
    let results = run_all(&runner, &prepared, &tests);
    let direct = pytest_directly(&project.path(""), &project.path(""), &[], &[]);
    // Each test once, with the outcome pytest gives it.
    assert_eq!(results.len(), tests.len());
    assert_eq!(by_node_id(&results), direct);
    // The cases this project exists for, so that a change to it cannot drop one quietly.
    let expect = |id: &str, outcome| {
        assert_eq!(
            direct.get(&format!("tests/test_shapes.py::{id}")),
            Some(&outcome),
            "{id}"
        );
    };
    expect("test_fixture_from_conftest", Outcome::Passed);
    expect("test_fail_and_teardown_error", Outcome::Failed);
    expect("test_pass_and_teardown_error", Outcome::Error);
    expect("test_setup_error", Outcome::Error);
    expect("test_skip", Outcome::Skipped);
    expect("test_xfail", Outcome::Skipped);
    expect("test_xpass", Outcome::Passed);
    expect("test_xpass_strict", Outcome::Failed);
    expect("test_ids[a::b]", Outcome::Passed);
    expect("test_ids[sp ace]", Outcome::Passed);
    expect(r"test_ids[\xfcn\xef]", Outcome::Passed);
    expect("test_ids[x/y]", Outcome::Passed);
    expect("test_ids[br[ack]et]", Outcome::Passed);
    expect("TestOuter::TestInner::test_nested", Outcome::Failed);
    expect("TestUnit::test_sub", Outcome::Failed);
    expect("TestUnit::test_sub_passing", Outcome::Passed);
    expect("TestUnit::test_unittest_skip", Outcome::Skipped);
    expect("test_pytest_subtests", Outcome::Failed);
    assert_eq!(direct.len(), 20, "{direct:#?}");

    // A teardown error after a failure is part of the failure's output.
    let both = result(
        &results,
        "tests/test_shapes.py::test_fail_and_teardown_error",
    );
    assert!(both.output.contains("teardown boom"), "{}", both.output);
}

#[test]
fn node_ids_and_markers_select_what_pytest_selects() {
    if !pytest_available() {
        return;
    }
    let project = Project::new(&[
        ("pyproject.toml", PYPROJECT),
        ("tests/conftest.py", CONFTEST),
        ("tests/test_shapes.py", SHAPES),
    ]);
    let selections: [&[&str]; 4] = [
        &[
            "tests/test_shapes.py::test_ids[a::b]",
            "tests/test_shapes.py::TestOuter",
        ],
        &["-m", "slow", "-k", "not sp"],
        &["tests", "--deselect", "tests/test_shapes.py::TestUnit"],
        &["tests/test_shapes.py::TestOuter::TestInner::test_nested"],
    ];
    for selection in selections {
        let runner = project.runner("").select(selection.iter().copied());
        let (prepared, tests) = prepare_and_list(&runner);
        let results = run_all(&runner, &prepared, &tests);
        let direct = pytest_directly(&project.path(""), &project.path(""), selection, &[]);
        assert_eq!(by_node_id(&results), direct, "{selection:?}");
        // What selects is not part of what decides a result.
        assert_eq!(runner.without_selection(), project.runner(""));
    }
}

#[test]
fn a_subdirectory_keeps_its_working_directory_and_finds_every_id() {
    if !pytest_available() {
        return;
    }
    // A Python project inside a larger repository: its rootdir is `py/`, and the user runs
    // pytest in `py/tests/unit`, where a test opens a file by a relative path.
    let project = Project::new(&[
        ("py/pytest.ini", "[pytest]\ntestpaths = tests\n"),
        ("py/tests/unit/data.txt", "hello\n"),
        (
            "py/tests/unit/test_files.py",
            "import os\n\ndef test_reads_relative():\n    assert open('data.txt').read() == 'hello\\n'\n\n\
             def test_cwd():\n    assert os.getcwd().endswith('unit')\n",
        ),
        (
            "py/tests/other/test_other.py",
            "def test_not_here():\n    pass\n",
        ),
    ]);
    let runner = project.runner("py/tests/unit");
    let (prepared, tests) = prepare_and_list(&runner);
    assert_eq!(
        tests,
        [
            TestId::new("py", "tests/unit/test_files.py::test_reads_relative"),
            TestId::new("py", "tests/unit/test_files.py::test_cwd"),
        ]
    );
    let results = run_all(&runner, &prepared, &tests);
    let direct = pytest_directly(
        &project.path("py/tests/unit"),
        &project.path("py"),
        &[],
        &[],
    );
    assert_eq!(by_node_id(&results), direct);
    assert!(
        results.iter().all(|r| r.outcome == Outcome::Passed),
        "{results:#?}"
    );

    // From the subdirectory, a path reaching up selects as it does directly.
    let up = runner.clone().select(["../other"]);
    let (prepared, tests) = prepare_and_list(&up);
    assert_eq!(
        names(&tests),
        ["py tests/other/test_other.py::test_not_here"]
    );
    assert_eq!(run_all(&up, &prepared, &tests)[0].outcome, Outcome::Passed);
}

#[test]
fn a_file_that_fails_to_import_is_an_error_under_its_own_name() {
    if !pytest_available() {
        return;
    }
    let project = Project::new(&[
        ("pytest.ini", "[pytest]\n"),
        ("tests/test_good.py", "def test_fine():\n    pass\n"),
        (
            "tests/test_bad.py",
            "import module_that_does_not_exist\n\ndef test_never():\n    pass\n",
        ),
    ]);
    // As directly: pytest stops after collecting and runs nothing else.
    let runner = project.runner("");
    let (prepared, tests) = prepare_and_list(&runner);
    assert_eq!(tests, [TestId::ungrouped("tests/test_bad.py")]);
    let results = run_all(&runner, &prepared, &tests);
    let direct = pytest_directly(&project.path(""), &project.path(""), &[], &[]);
    assert_eq!(by_node_id(&results), direct);
    assert_eq!(results[0].outcome, Outcome::Error);
    assert!(
        results[0].output.contains("module_that_does_not_exist"),
        "{}",
        results[0].output
    );

    // With --continue-on-collection-errors the other files run too.
    let runner = project.runner("").args(["--continue-on-collection-errors"]);
    let (prepared, tests) = prepare_and_list(&runner);
    let results = run_all(&runner, &prepared, &tests);
    let direct = pytest_directly(
        &project.path(""),
        &project.path(""),
        &["--continue-on-collection-errors"],
        &[],
    );
    assert_eq!(by_node_id(&results).len(), 2);
    assert_eq!(by_node_id(&results), direct);
}

#[test]
fn exitfirst_in_the_configuration_does_not_cut_a_batch_short() {
    if !pytest_available() {
        return;
    }
    let project = Project::new(&[
        (
            "tox.ini",
            "[pytest]\naddopts = -x\nmarkers =\n    slow: slow\n",
        ),
        (
            "test_order.py",
            "import pytest\n\ndef test_a_fails():\n    assert False\n\n\
             def test_b_passes():\n    pass\n\n@pytest.mark.slow\ndef test_c_slow():\n    pass\n",
        ),
    ]);
    let runner = project.runner("").select(["-m", "not slow"]);
    let (prepared, tests) = prepare_and_list(&runner);
    assert_eq!(
        names(&tests),
        [
            "test_order.py::test_a_fails",
            "test_order.py::test_b_passes"
        ]
    );
    let batch = run_batch(&runner, &prepared, &tests, Duration::from_secs(60));
    let outcomes: Vec<Outcome> = batch.results.iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, [Outcome::Failed, Outcome::Passed]);
    // The selection is the list's alone: the run does what it is given, here a test -m would
    // have deselected.
    let slow = [TestId::ungrouped("test_order.py::test_c_slow")];
    let batch = run_batch(&runner, &prepared, &slow, Duration::from_secs(60));
    assert_eq!(batch.results[0].outcome, Outcome::Passed);
    assert!(
        runner
            .list_command(&prepared)
            .argv
            .contains(&"not slow".to_owned())
    );
}

/// A long-lived pytest worker run as the agent runs one (`Runner::worker_command`): started
/// once, then sent batch after batch through its FIFOs.
struct LocalWorker {
    child: std::process::Child,
    requests: std::fs::File,
    replies: std::io::BufReader<std::fs::File>,
    _dir: tempfile::TempDir,
}

impl LocalWorker {
    fn start(runner: &PytestRunner, prepared: &Prepared, group: &str) -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let start = runner
            .worker_command(prepared, group, dir.path())
            .expect("pytest has a worker");
        assert_eq!(start.dir, dir.path());
        for file in &start.files {
            std::fs::write(&file.path, &file.contents).unwrap();
        }
        let (requests, replies) = (dir.path().join("requests"), dir.path().join("replies"));
        for fifo in [&requests, &replies] {
            let made = std::process::Command::new("mkfifo").arg(fifo).status();
            assert!(made.unwrap().success(), "mkfifo {}", fifo.display());
        }
        let open = |path: &Path| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(0)
                .open(path)
                .unwrap()
        };
        let (requests_file, replies_file) = (open(&requests), open(&replies));
        let mut command = start.command.to_command();
        for (name, path) in &start.prepend_paths {
            let old = std::env::var(name).unwrap_or_default();
            command.env(name, format!("{}:{old}", path.display()));
        }
        let child = command
            .env(tessera_runners::WORKER_REQUESTS_ENV, &requests)
            .env(tessera_runners::WORKER_REPLIES_ENV, &replies)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("out")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("err")).unwrap())
            .spawn()
            .unwrap();
        LocalWorker {
            child,
            requests: requests_file,
            replies: std::io::BufReader::new(replies_file),
            _dir: dir,
        }
    }

    /// Runs `tests` on the worker and reads their results as the agent does.
    fn batch(
        &mut self,
        runner: &PytestRunner,
        prepared: &Prepared,
        tests: &[TestId],
    ) -> Vec<tessera_runners::TestResult> {
        use std::io::{BufRead, Write};
        let scratch = tempfile::tempdir().unwrap();
        let request = runner.worker_request(tests, scratch.path()).unwrap();
        assert!(!request.contains('\n'), "one line: {request}");
        writeln!(self.requests, "{request}").unwrap();
        let mut reply = String::new();
        self.replies.read_line(&mut reply).unwrap();
        assert!(reply.contains("\"ran\""), "reply: {reply:?}");
        let output = tessera_runners::CommandOutput {
            termination: tessera_runners::Termination::Exited(0),
            stdout: String::new(),
            stderr: String::new(),
            elapsed: Duration::ZERO,
        };
        runner
            .parse_results(prepared, tests, &output, scratch.path())
            .unwrap()
    }
}

impl Drop for LocalWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_worker_reports_every_batch_as_a_process_per_batch_does() {
    if !pytest_available() {
        return;
    }
    let project = Project::new(&[
        ("pyproject.toml", PYPROJECT),
        ("tests/conftest.py", CONFTEST),
        ("tests/test_shapes.py", SHAPES),
    ]);
    let runner = project.runner("");
    let (prepared, tests) = prepare_and_list(&runner);
    let per_process = run_all(&runner, &prepared, &tests);
    let mut worker = LocalWorker::start(&runner, &prepared, "");
    let mut served = Vec::new();
    // Three batches, the last in reverse order, as the planner may hand them out.
    let third = tests.len() / 3;
    served.extend(worker.batch(&runner, &prepared, &tests[..third]));
    served.extend(worker.batch(&runner, &prepared, &tests[third..2 * third]));
    let mut last: Vec<TestId> = tests[2 * third..].to_vec();
    last.reverse();
    served.extend(worker.batch(&runner, &prepared, &last));
    assert_eq!(by_node_id(&served), by_node_id(&per_process));
    assert_eq!(served.len(), per_process.len());
    // Its output too: the teardown error after a failure is in the failure's output.
    let both = result(
        &served,
        "tests/test_shapes.py::test_fail_and_teardown_error",
    );
    assert!(both.output.contains("teardown boom"), "{}", both.output);
    // A test asked for again runs again.
    let again = worker.batch(&runner, &prepared, &tests[..1]);
    assert_eq!(again[0].outcome, by_node_id(&per_process)[&tests[0].name]);
}

#[test]
fn a_worker_keeps_its_process_and_reports_collection_errors_by_file() {
    if !pytest_available() {
        return;
    }
    let project = Project::new(&[
        ("pytest.ini", "[pytest]\n"),
        (
            "tests/test_state.py",
            "import os\n\ndef test_pid():\n    print('pid', os.getpid())\n    assert False\n",
        ),
        (
            "tests/test_bad.py",
            "import module_that_does_not_exist\n\ndef test_never():\n    pass\n",
        ),
    ]);
    let runner = project.runner("").args(["--continue-on-collection-errors"]);
    let (prepared, tests) = prepare_and_list(&runner);
    assert_eq!(tests.len(), 2, "{tests:?}");
    let mut worker = LocalWorker::start(&runner, &prepared, "");
    let pid_test = [TestId::ungrouped("tests/test_state.py::test_pid")];
    let first = worker.batch(&runner, &prepared, &pid_test);
    let second = worker.batch(&runner, &prepared, &pid_test);
    let pid = |results: &[tessera_runners::TestResult]| {
        let output = &results[0].output;
        let at = output.find("pid ").unwrap_or_else(|| panic!("{output}"));
        output[at..].split_whitespace().nth(1).unwrap().to_owned()
    };
    assert_eq!(pid(&first), pid(&second), "one process serves both batches");
    assert_eq!(pid(&first), worker.child.id().to_string());
    let bad = worker.batch(
        &runner,
        &prepared,
        &[TestId::ungrouped("tests/test_bad.py")],
    );
    assert_eq!(bad[0].outcome, Outcome::Error);
    assert!(
        bad[0].output.contains("module_that_does_not_exist"),
        "{}",
        bad[0].output
    );
}

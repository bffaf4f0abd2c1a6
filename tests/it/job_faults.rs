//! The client's view of a job survives faults (issue 10, DESIGN.md §5.5): a real `tessera run
//! --json --junit` process follows a pytest suite of a few hundred tests on a coordinator and
//! two agents, all real processes; one agent is SIGKILLed mid-job, then the coordinator is
//! SIGKILLed and restarted on the same data directory and port. The run must finish, and its
//! `--json` final test events, its JUnit file and its summary must each list every test
//! exactly once, with the outcome pytest gives it when run directly.
//!
//! The bug this pins: the restarted job numbered its events from 1 again while the client
//! re-attached after the last number it had seen, so a 765-test run said `765 passed` in its
//! summary and wrote 734 test cases to its JUnit file.
//!
//! Also here: with no coordinator, `run`, `watch` and `status` say so in one line naming the
//! URL, and exit 3.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tessera_runners::junit::{self, CaseStatus};
use tessera_tests::{
    AgentProcess, ServerProcess, free_port, in_ci, lines, tessera_bin, visible_tempdir, wait_exit,
};

/// Files and tests per file of the generated suite.
const FILES: usize = 6;
const TESTS_PER_FILE: usize = 50;
/// Final results the client has seen when the agent is killed, and when the coordinator is.
const KILL_AGENT_AFTER: usize = 30;
const KILL_COORDINATOR_AFTER: usize = 120;
/// Far more than the run needs (tens of seconds); only keeps a hang from hanging the suite.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// Test id (`file::name`, as `tessera run --json` names a pytest test) to outcome word.
type Outcomes = BTreeMap<String, String>;

/// Writes the suite: every test sleeps a little; some fail, some skip, one is an expected
/// failure (which pytest reports as skipped).
fn write_suite(project: &Path) {
    std::fs::create_dir_all(project).expect("project dir");
    for file in 0..FILES {
        let mut text = String::from("import time\nimport pytest\n\n");
        for test in 0..TESTS_PER_FILE {
            let n = file * TESTS_PER_FILE + test;
            let body = if n % 37 == 5 {
                format!("    time.sleep(0.04)\n    assert {n} == 0, 'fails on purpose'\n")
            } else if n % 41 == 7 {
                "    pytest.skip('skipped on purpose')\n".to_owned()
            } else if n == 100 {
                "    pytest.xfail('expected to fail')\n".to_owned()
            } else {
                "    time.sleep(0.04)\n".to_owned()
            };
            text.push_str(&format!("\ndef test_{test}():\n{body}"));
        }
        std::fs::write(project.join(format!("test_f{file}.py")), text).expect("write suite");
    }
}

fn pytest_available() -> bool {
    let found = Command::new("python3")
        .args(["-m", "pytest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(!in_ci(), "pytest is required in CI");
        eprintln!("skipping: pytest is not installed");
    }
    found
}

fn case_outcome(status: CaseStatus) -> &'static str {
    match status {
        CaseStatus::Passed => "passed",
        CaseStatus::Failed | CaseStatus::Errored => "failed",
        CaseStatus::Skipped => "skipped",
    }
}

/// `python3 -m pytest --junitxml` in `project`: each test's outcome, by node id.
fn pytest_directly(project: &Path, scratch: &Path) -> Outcomes {
    let report = scratch.join("direct.xml");
    let output = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(format!("--junitxml={}", report.display()))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(project)
        .output()
        .expect("run pytest");
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let xml = std::fs::read_to_string(&report).expect("direct JUnit report");
    junit::parse(&xml)
        .expect("direct JUnit parses")
        .into_iter()
        .map(|case| {
            (
                format!("{}.py::{}", case.classname, case.name),
                case_outcome(case.status).to_owned(),
            )
        })
        .collect()
}

/// `tessera` with the test's own `TESSERA_*` variables removed.
fn tessera(args: &[&str]) -> Command {
    let mut command = Command::new(tessera_bin());
    command.args(args).stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TESSERA_") {
            command.env_remove(name);
        }
    }
    command
}

/// The `tessera run` process and its JSON lines as they come.
struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Run {
    fn start(endpoint: &str, project: &Path, scratch: &Path, junit: &Path) -> Self {
        let stderr = scratch.join("tessera-run.stderr");
        let mut child = tessera(&["run", "--coordinator", endpoint, "--json", "--junit"])
            .arg(junit)
            .args(["--", "python3", "-m", "pytest"])
            .current_dir(project)
            .env("XDG_CACHE_HOME", scratch.join("cache"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start tessera run");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Run {
            child,
            lines,
            stderr,
        }
    }

    /// Reads JSON lines into `seen` until `count` final test events are among them.
    fn until_finals(&self, seen: &mut Vec<Value>, count: usize) {
        while finals(seen).len() < count {
            let line = self
                .lines
                .recv_timeout(RUN_LIMIT)
                .unwrap_or_else(|e| panic!("no {count} final results ({e}): {seen:#?}"));
            seen.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
        }
    }

    fn transcript(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// Every final test event's test id and outcome, in the order they came.
fn finals(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["event"] == "test" && e["final"] == true)
        .map(|e| {
            (
                e["test"].as_str().unwrap_or_default().to_owned(),
                e["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// `items` as a map, failing on any key listed twice (`what` says where they come from).
fn once_each(items: Vec<(String, String)>, what: &str) -> Outcomes {
    let mut map = Outcomes::new();
    let mut twice = Vec::new();
    for (id, outcome) in items {
        if let Some(first) = map.insert(id.clone(), outcome.clone()) {
            twice.push(format!("{id} ({first}, then {outcome})"));
        }
    }
    assert!(twice.is_empty(), "{what} lists tests twice: {twice:?}");
    map
}

fn assert_same(what: &str, got: &Outcomes, direct: &Outcomes) {
    let differences: Vec<String> = got
        .keys()
        .chain(direct.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|id| got.get(*id) != direct.get(*id))
        .map(|id| {
            format!(
                "{id}: {what} {:?}, pytest {:?}",
                got.get(id),
                direct.get(id)
            )
        })
        .collect();
    assert!(
        differences.is_empty(),
        "{what} differs from pytest run directly ({} tests vs {}):\n{}",
        got.len(),
        direct.len(),
        differences.join("\n")
    );
}

#[test]
fn a_run_through_an_agent_kill_and_a_coordinator_restart_lists_every_test_once() {
    through_an_agent_kill_and_a_restart(Signal::SIGKILL);
}

/// A graceful restart (SIGTERM, as `docker restart` and `systemctl restart` send) must not end
/// the tests that were running: the job goes on at the next start and runs them.
#[test]
fn a_graceful_coordinator_restart_loses_no_test_either() {
    through_an_agent_kill_and_a_restart(Signal::SIGTERM);
}

/// An agent SIGKILLed mid-job, then the coordinator stopped with `stop` and started again on
/// its data directory and port: every test is listed once, as pytest run directly says.
fn through_an_agent_kill_and_a_restart(stop: Signal) {
    if !pytest_available() {
        return;
    }
    let scratch = visible_tempdir();
    let project = scratch.path().join("job-faults-suite");
    write_suite(&project);
    let direct = pytest_directly(&project, scratch.path());
    assert_eq!(direct.len(), FILES * TESTS_PER_FILE);

    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let data = scratch.path().join("coordinator");
    let env = [("TESSERA_LEASE_TIMEOUT", "2s")];
    let mut server = ServerProcess::start_on(addr, &data, &[], &env);
    let endpoint = server.endpoint();
    let agents: Vec<AgentProcess> = (0..2)
        .map(|i| {
            let id = format!("agent-{i}");
            AgentProcess::start(&endpoint, &scratch.path().join(&id), &id, 2, &[])
        })
        .collect();
    for agent in &agents {
        agent
            .log
            .blocking_wait_for(lines::AGENT_CONNECTED, Duration::from_secs(30));
    }
    let mut agents = agents.into_iter();
    let (mut doomed, _survivor) = (agents.next().expect("agent 0"), agents.next());

    let junit_path = scratch.path().join("report.xml");
    let mut run = Run::start(&endpoint, &project, scratch.path(), &junit_path);
    let mut seen = Vec::new();
    run.until_finals(&mut seen, KILL_AGENT_AFTER);
    doomed.signal(Signal::SIGKILL);
    doomed
        .wait_exit(Duration::from_secs(10))
        .expect("the agent died");
    run.until_finals(&mut seen, KILL_COORDINATOR_AFTER);
    if stop == Signal::SIGKILL {
        server.kill();
    } else {
        assert!(
            server
                .signal_and_wait(stop, Duration::from_secs(30))
                .is_some(),
            "the coordinator stops on {stop}"
        );
    }
    let _server = ServerProcess::start_on(addr, &data, &[], &env);

    let status = wait_exit(&mut run.child, RUN_LIMIT);
    let transcript = run.transcript();
    assert!(
        status.is_some(),
        "tessera run did not finish:\n{transcript}"
    );
    seen.extend(
        run.lines
            .iter()
            .map(|l| serde_json::from_str::<Value>(&l).unwrap_or_else(|e| panic!("{e}: {l}"))),
    );
    // The processes' logs are echoed above, labelled.
    let context = format!("tessera run's stderr:\n{transcript}");

    // --json: each test once, as pytest says.
    let json = once_each(finals(&seen), "--json");
    assert_same("--json", &json, &direct);

    // JUnit: each test once, as pytest says.
    let xml = std::fs::read_to_string(&junit_path)
        .unwrap_or_else(|e| panic!("no JUnit report ({e}):\n{context}"));
    let cases = junit::parse(&xml).expect("the JUnit report parses");
    let junit = once_each(
        cases
            .into_iter()
            .map(|c| (c.name, case_outcome(c.status).to_owned()))
            .collect(),
        "the JUnit report",
    );
    assert_same("JUnit", &junit, &direct);

    // The summary counts the same tests.
    let finished = seen
        .iter()
        .find(|e| e["event"] == "finished")
        .unwrap_or_else(|| panic!("no finished event:\n{context}"));
    let count = |word: &str| direct.values().filter(|o| *o == word).count() as u64;
    assert_eq!(
        [
            "passed",
            "failed",
            "skipped",
            "errors",
            "flaky",
            "timed_out",
            "not_run"
        ]
        .map(|key| finished[key].as_u64()),
        [
            count("passed"),
            count("failed"),
            count("skipped"),
            0,
            0,
            0,
            0
        ]
        .map(Some),
        "{finished}"
    );
    assert_eq!(finished["result"], "failed", "{finished}");
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{context}");

    // The job went through the restart, keeping what the client had seen.
    let restarted = seen
        .iter()
        .filter_map(|e| e["text"].as_str())
        .find(|t| t.contains("coordinator restarted"))
        .unwrap_or_else(|| panic!("no restart in the job's log: {seen:#?}\n{context}"));
    let kept: usize = restarted
        .split("goes on: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of kept results in {restarted:?}"));
    assert!(
        kept >= KILL_COORDINATOR_AFTER,
        "every result the client saw before the crash stands: {restarted}"
    );
    // Numbers only go up: nothing the client saw was numbered again.
    let seqs: Vec<u64> = seen.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs not increasing: {seqs:?}"
    );
    assert!(
        !seen.iter().any(|e| e["event"] == "note"
            && e["text"]
                .as_str()
                .is_some_and(|t| t.contains("reported again"))),
        "the coordinator re-sent a result: {seen:#?}"
    );
}

/// Runs `tessera ARGS` and returns its exit code and what it printed on stderr.
fn fails_fast(args: &[&str], cwd: &Path) -> (Option<i32>, String) {
    let output = tessera(args)
        .current_dir(cwd)
        .env("XDG_CACHE_HOME", cwd.join("cache"))
        .output()
        .expect("run tessera");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn with_the_coordinator_down_each_command_says_so_in_one_line_and_exits_3() {
    let scratch = visible_tempdir();
    // A port nothing listens on.
    let url = format!("http://127.0.0.1:{}", free_port());
    let expected = format!(
        "tessera: cannot reach the coordinator at {url}: connection refused; is `tessera \
         coordinator` running there? (set --coordinator or TESSERA_COORDINATOR)\n"
    );
    for args in [
        vec!["status", "--coordinator", &url],
        vec!["watch", "some-job", "--coordinator", &url],
        vec!["cancel", "some-job", "--coordinator", &url],
        vec![
            "run",
            "--coordinator",
            &url,
            "--runner",
            "command",
            "--list-command",
            "echo a",
            "--",
            "echo",
            "{tests}",
        ],
    ] {
        let (code, stderr) = fails_fast(&args, scratch.path());
        assert_eq!(code, Some(3), "tessera {args:?}: {stderr}");
        assert_eq!(stderr, expected, "tessera {args:?}");
    }
}

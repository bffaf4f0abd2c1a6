//! Matrix runs (issue 11): `tessera run --matrix MODE=a,b` through the real `tessera` binary,
//! against a coordinator and a real agent, on a tiny suite whose tests read `MODE`. Each cell
//! runs with its own value and its own cache keys (a re-run answers every cell from the cache;
//! a changed value runs only its cell), every view names the cell, JUnit has a testsuite per
//! cell, the exit code is 0 or 1 over all cells, and bad input exits 2 naming the problem, in
//! the client and, for a direct API client, in the coordinator. A coordinator killed and
//! restarted under a matrix job keeps each cell's results apart.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use tessera_cas::digest::DigestFunction;
use tessera_proto::reapi::command::EnvironmentVariable;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tessera_proto::tessera::v1::{JobSpec, MatrixCell, SubmitJobRequest};
use tessera_runners::junit::{self, CaseStatus};
use tessera_runners::{CommandRunner, RunnerConfig};
use tessera_tests::{
    AgentProcess, ServerProcess, TestServer, free_port, tessera_bin, visible_tempdir, wait_exit,
};

/// `reads_mode` prints `MODE` and passes when it is set; `mode_is_known` fails for a mode other
/// than a, b or c. One process per test (no JUnit report): the exit code decides.
const SUITE: &str = r#"case "$1" in
list) echo reads_mode; echo mode_is_known ;;
run) shift
  for t in "$@"; do
    case "$t" in
    reads_mode) echo "MODE=$MODE"; [ -n "$MODE" ] || exit 1 ;;
    mode_is_known) case "$MODE" in a|b|c) ;; *) echo "unknown mode $MODE"; exit 1 ;; esac ;;
    esac
  done ;;
esac
"#;

/// What one `tessera run --json` reported.
struct Run {
    exit_code: Option<i32>,
    /// (cell, test) to (outcome, cached), from the final `test` lines.
    finals: BTreeMap<(String, String), (String, bool)>,
    /// The `finished` line.
    finished: serde_json::Value,
    /// stdout and stderr, for failure messages.
    transcript: String,
}

/// Runs `tessera run --json --junit <project>/../junit.xml ARGS --runner command ... -- sh
/// suite.sh run {tests}` in `project` against `endpoint`.
async fn tessera_run(endpoint: &str, project: &Path, args: &[&str]) -> Run {
    let scratch = project.parent().expect("scratch dir");
    let mut command = tokio::process::Command::new(tessera_bin());
    command
        .args(["run", "--coordinator", endpoint, "--json", "--junit"])
        .arg(scratch.join("junit.xml"))
        .args(args)
        .args([
            "--runner",
            "command",
            "--list-command",
            "sh suite.sh list",
            "--",
            "sh",
            "suite.sh",
            "run",
            "{tests}",
        ])
        .current_dir(project)
        .env("XDG_CACHE_HOME", scratch.join("cache"))
        .env("TESSERA_SUBMITTER", "matrix-it")
        .env_remove("MODE")
        .env_remove("TESSERA_COORDINATOR");
    let out = command.output().await.expect("tessera run");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let transcript = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let mut run = Run {
        exit_code: out.status.code(),
        finals: BTreeMap::new(),
        finished: serde_json::Value::Null,
        transcript,
    };
    for line in stdout.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{}", run.transcript));
        match event["event"].as_str() {
            Some("test") if event["final"] == true => {
                let key = (
                    event["cell"].as_str().expect("cell").to_owned(),
                    event["test"].as_str().expect("test").to_owned(),
                );
                let value = (
                    event["outcome"].as_str().expect("outcome").to_owned(),
                    event["cached"] == true,
                );
                let earlier = run.finals.insert(key.clone(), value);
                assert!(earlier.is_none(), "two final events for {key:?}");
            }
            Some("finished") => run.finished = event,
            _ => {}
        }
    }
    run
}

/// The expected finals: for each cell, each test with its outcome and whether it was cached.
fn finals(cells: &[(&str, [(&str, bool); 2])]) -> BTreeMap<(String, String), (String, bool)> {
    let mut out = BTreeMap::new();
    for (cell, tests) in cells {
        for (test, (outcome, cached)) in ["reads_mode", "mode_is_known"].iter().zip(tests) {
            out.insert(
                ((*cell).to_owned(), (*test).to_owned()),
                ((*outcome).to_owned(), *cached),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cell_runs_with_its_value_and_its_own_cache_keys() {
    let server = TestServer::start().await;
    let work = tempfile::tempdir().expect("work");
    let _agent =
        AgentProcess::start_connected(&server.endpoint, &work.path().join("agent"), "a", 2, &[])
            .await;
    let scratch = tempfile::tempdir().expect("scratch");
    let project = scratch.path().join("matrix-suite");
    std::fs::create_dir(&project).expect("project");
    std::fs::write(project.join("suite.sh"), SUITE).expect("write suite");
    let junit_path = scratch.path().join("junit.xml");

    // First run: both cells run everything, each test once per cell.
    let run = tessera_run(&server.endpoint, &project, &["--matrix", "MODE=a,b"]).await;
    assert_eq!(run.exit_code, Some(0), "{}", run.transcript);
    let ran = ("passed", false);
    assert_eq!(
        run.finals,
        finals(&[("[MODE=a]", [ran, ran]), ("[MODE=b]", [ran, ran])]),
        "{}",
        run.transcript
    );
    assert_eq!(run.finished["passed"], 4, "{}", run.transcript);
    let cells: Vec<(&str, &str)> = run.finished["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .map(|c| (c["cell"].as_str().unwrap(), c["result"].as_str().unwrap()))
        .collect();
    assert_eq!(cells, [("[MODE=a]", "passed"), ("[MODE=b]", "passed")]);

    // Nothing changed: every cell answers from the cache.
    let run = tessera_run(&server.endpoint, &project, &["--matrix", "MODE=a,b"]).await;
    assert_eq!(run.exit_code, Some(0), "{}", run.transcript);
    let cached = ("passed", true);
    assert_eq!(
        run.finals,
        finals(&[
            ("[MODE=a]", [cached, cached]),
            ("[MODE=b]", [cached, cached])
        ]),
        "{}",
        run.transcript
    );

    // One cell's value changed: only that cell runs.
    let run = tessera_run(&server.endpoint, &project, &["--matrix", "MODE=a,c"]).await;
    assert_eq!(run.exit_code, Some(0), "{}", run.transcript);
    assert_eq!(
        run.finals,
        finals(&[("[MODE=a]", [cached, cached]), ("[MODE=c]", [ran, ran])]),
        "{}",
        run.transcript
    );

    // A cell whose value the suite rejects fails the run (exit 1), and only its test fails,
    // with the output that shows the cell's value reached it.
    let run = tessera_run(&server.endpoint, &project, &["--matrix", "MODE=a,bad"]).await;
    assert_eq!(run.exit_code, Some(1), "{}", run.transcript);
    assert_eq!(
        run.finals,
        finals(&[
            ("[MODE=a]", [cached, cached]),
            ("[MODE=bad]", [ran, ("failed", false)])
        ]),
        "{}",
        run.transcript
    );
    assert_eq!(run.finished["result"], "failed", "{}", run.transcript);
    assert!(
        run.transcript.contains("unknown mode bad"),
        "{}",
        run.transcript
    );

    // JUnit: one testsuite per cell, each with its two tests.
    let xml = std::fs::read_to_string(&junit_path).expect("JUnit report");
    let cases = junit::parse(&xml).expect("JUnit parses");
    let by_suite: BTreeMap<(String, String), CaseStatus> = cases
        .into_iter()
        .map(|c| ((c.suite, c.name), c.status))
        .collect();
    let expected: BTreeMap<(String, String), CaseStatus> = [
        ("[MODE=a]", "reads_mode [MODE=a]", CaseStatus::Passed),
        ("[MODE=a]", "mode_is_known [MODE=a]", CaseStatus::Passed),
        ("[MODE=bad]", "reads_mode [MODE=bad]", CaseStatus::Passed),
        ("[MODE=bad]", "mode_is_known [MODE=bad]", CaseStatus::Failed),
    ]
    .into_iter()
    .map(|(s, n, status)| ((s.to_owned(), n.to_owned()), status))
    .collect();
    assert_eq!(by_suite, expected, "{xml}");
    assert_eq!(xml.matches("<testsuite ").count(), 2, "{xml}");
}

/// Runs `tessera run ARGS` against a coordinator that is not there: a refusal must come
/// before any connection (which would exit 3).
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let project = tempfile::tempdir().expect("project");
    std::fs::write(project.path().join("suite.sh"), SUITE).expect("write suite");
    let out = std::process::Command::new(tessera_bin())
        .current_dir(project.path())
        .args(["run", "--coordinator", "http://127.0.0.1:9"])
        .args(args)
        .args(["--list-command", "sh suite.sh list"])
        .args(["--", "sh", "suite.sh", "run", "{tests}"])
        .env_remove("TESSERA_COORDINATOR")
        .output()
        .expect("tessera run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_matrix_input_exits_2_naming_the_problem() {
    for (args, problem) in [
        (
            &["--matrix", "MODE="][..],
            "--matrix MODE=: empty value for MODE",
        ),
        (
            &["--matrix", "MODE=a,,b"],
            "--matrix MODE=a,,b: empty value for MODE",
        ),
        (
            &["--matrix", "MODE"],
            "--matrix MODE: expected NAME=VALUE[,VALUE...]",
        ),
        (
            &["--matrix", "2MODE=a"],
            "\"2MODE\" is not an environment variable name",
        ),
        (&["--matrix", "MODE=a,b,a"], "MODE=a is given twice"),
        (
            &["--matrix", "MODE=a", "--matrix", "MODE=a"],
            "MODE=a is given twice",
        ),
        (
            &["--env", "MODE=x", "--matrix", "MODE=a,b"],
            "--matrix MODE and --env MODE=x both set MODE",
        ),
        (
            &[
                "--matrix",
                "A=1,2,3,4,5,6,7,8",
                "--matrix",
                "B=1,2,3,4,5,6,7,8,9",
            ],
            "--matrix gives 8 × 9 cells, more than the limit of 64",
        ),
    ] {
        let (code, stderr) = refused(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(problem), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_refuses_bad_cells_from_an_api_client() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("suite");
    std::fs::write(dir.path().join("suite.sh"), SUITE).expect("write suite");
    let root = server.upload_dir(dir.path(), DigestFunction::Blake3).await;
    let exec_root = "/tmp/tessera-it/matrix-api";
    let runner = CommandRunner::new(
        exec_root,
        vec!["sh".into(), "suite.sh".into(), "list".into()],
        vec![
            "sh".into(),
            "suite.sh".into(),
            "run".into(),
            "{tests}".into(),
        ],
    )
    .expect("runner");
    let cell = |name: &str, vars: &[(&str, &str)]| MatrixCell {
        name: name.to_owned(),
        environment: vars
            .iter()
            .map(|(n, v)| EnvironmentVariable {
                name: (*n).to_owned(),
                value: (*v).to_owned(),
            })
            .collect(),
    };
    let mut jobs = JobsClient::new(server.channel().await);
    for (cells, problem) in [
        (
            vec![cell("MODE=", &[("MODE", "")])],
            "cells: cell MODE=: variable MODE has an empty value",
        ),
        (
            vec![
                cell("MODE=a", &[("MODE", "a")]),
                cell("MODE=a", &[("MODE", "b")]),
            ],
            "cells: cell MODE=a is given twice",
        ),
        (
            vec![cell("x", &[("MODE", "a")]), cell("y", &[("MODE", "a")])],
            "cells: cells x and y set the same variables to the same values",
        ),
        (
            vec![cell("bad", &[("MO-DE", "a")])],
            "\"MO-DE\" is not a valid environment variable name",
        ),
        (
            (0..65)
                .map(|i| cell(&format!("N={i}"), &[("N", &i.to_string())]))
                .collect(),
            "cells: 65 cells, more than the limit of 64",
        ),
    ] {
        let spec = JobSpec {
            digest_function: DigestFunction::Blake3.to_proto(),
            input_root_digest: Some(root.to_proto()),
            runner_json: serde_json::to_string(&RunnerConfig::Command(runner.clone()))
                .expect("json"),
            exec_root: exec_root.to_owned(),
            cells,
            ..Default::default()
        };
        let status = jobs
            .submit(SubmitJobRequest { spec: Some(spec) })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(problem), "{status:?}");
    }
}

/// Tests of the restart story's suite, and the results the client sees before the crash.
const RESTART_TESTS: usize = 20;
const KILL_COORDINATOR_AFTER: usize = 12;
/// Far more than the run needs (seconds); only keeps a hang from hanging the suite.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// `t00` .. `t19`, 0.1 s each; under `MODE=b` every fifth one fails, so the cells' results of
/// one test differ.
const RESTART_SUITE: &str = r#"case "$1" in
list) i=0; while [ $i -lt 20 ]; do printf 't%02d\n' $i; i=$((i+1)); done ;;
run) shift
  for t in "$@"; do
    sleep 0.1
    n=${t#t}; n=${n#0}
    if [ "$MODE" = b ] && [ $((n % 5)) -eq 0 ]; then echo "fails under b"; exit 1; fi
  done ;;
esac
"#;

/// The bug this would catch: a restarted job that keeps restored results by test alone takes
/// one cell's result for the other's, so a test of one cell is never run or reported again.
#[test]
fn a_coordinator_restart_keeps_each_cells_results_apart() {
    let scratch = visible_tempdir();
    let project = scratch.path().join("matrix-restart");
    std::fs::create_dir(&project).expect("project");
    std::fs::write(project.join("suite.sh"), RESTART_SUITE).expect("write suite");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let data = scratch.path().join("coordinator");
    let env = [("TESSERA_LEASE_TIMEOUT", "2s")];
    let mut server = ServerProcess::start_on(addr, &data, &[], &env);
    let endpoint = server.endpoint();
    let agent = AgentProcess::start(&endpoint, &scratch.path().join("agent"), "a", 1, &[]);
    agent.log.blocking_wait_for(
        tessera_tests::lines::AGENT_CONNECTED,
        Duration::from_secs(30),
    );

    let mut child = std::process::Command::new(tessera_bin())
        .args([
            "run",
            "--coordinator",
            &endpoint,
            "--json",
            "--matrix",
            "MODE=a,b",
        ])
        .args(["--list-command", "sh suite.sh list"])
        .args(["--", "sh", "suite.sh", "run", "{tests}"])
        .current_dir(&project)
        .env("XDG_CACHE_HOME", scratch.path().join("cache"))
        .env("TESSERA_SUBMITTER", "matrix-restart")
        .env_remove("TESSERA_COORDINATOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tessera run");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let finals = |seen: &[serde_json::Value]| {
        seen.iter()
            .filter(|e| e["event"] == "test" && e["final"] == true)
            .count()
    };
    while finals(&seen) < KILL_COORDINATOR_AFTER {
        let line = lines
            .recv_timeout(RUN_LIMIT)
            .unwrap_or_else(|e| panic!("no {KILL_COORDINATOR_AFTER} results ({e}): {seen:#?}"));
        seen.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
    }
    server.kill();
    let _server = ServerProcess::start_on(addr, &data, &[], &env);
    let status = wait_exit(&mut child, RUN_LIMIT).expect("tessera run finished");
    seen.extend(
        lines
            .iter()
            .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"))),
    );

    // Every test of every cell once, with its own cell's outcome.
    let mut got: BTreeMap<(String, String), String> = BTreeMap::new();
    for event in seen
        .iter()
        .filter(|e| e["event"] == "test" && e["final"] == true)
    {
        let key = (
            event["cell"].as_str().expect("cell").to_owned(),
            event["test"].as_str().expect("test").to_owned(),
        );
        let outcome = event["outcome"].as_str().expect("outcome").to_owned();
        assert!(got.insert(key.clone(), outcome).is_none(), "{key:?} twice");
    }
    let mut expected = BTreeMap::new();
    for mode in ["a", "b"] {
        for n in 0..RESTART_TESTS {
            let outcome = if mode == "b" && n % 5 == 0 {
                "failed"
            } else {
                "passed"
            };
            expected.insert(
                (format!("[MODE={mode}]"), format!("t{n:02}")),
                outcome.to_owned(),
            );
        }
    }
    assert_eq!(got, expected, "{seen:#?}");
    assert_eq!(status.code(), Some(1), "{seen:#?}");
    // The job went through the restart, every result the client saw standing (in its cell).
    let kept: usize = seen
        .iter()
        .filter_map(|e| e["text"].as_str())
        .find_map(|t| t.split("the job goes on: ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no restart in the job's log: {seen:#?}"));
    assert!(kept >= KILL_COORDINATOR_AFTER, "{kept} results kept");
    // What the client saw before the crash stood: the coordinator sent no result again.
    assert!(
        !seen.iter().any(|e| e["event"] == "note"
            && e["text"]
                .as_str()
                .is_some_and(|t| t.contains("reported again"))),
        "the coordinator re-sent a result: {seen:#?}"
    );
}

//! Builtin step actions end to end: a real coordinator in-process, a real agent, REAPI Execute,
//! real processes. Each step sees its input root at the fixed `exec-root` path, with namespaces
//! and without; prepare steps hand back what they built; a test past its own timeout is timed
//! out on its own, without the action.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tessera_agent::SandboxMode;
use tessera_cas::client::CasClient;
use tessera_cas::digest::{Digest, digest_message};
use tessera_cas::tree::build_tree;
use tessera_coordinator::{Coordinator, CoordinatorConfig};
use tessera_proto::longrunning::operation;
use tessera_proto::reapi::command::EnvironmentVariable;
use tessera_proto::reapi::execution_client::ExecutionClient;
use tessera_proto::reapi::platform::Property;
use tessera_proto::reapi::{
    Action, ActionResult, Command, Directory, ExecuteRequest, ExecuteResponse, Platform, Tree,
};
use tessera_runners::step::{PREPARED_DIR, REPORT_PATH, StepReport, StepSpec};
use tessera_runners::{
    CargoTestRunner, CommandRunner, Outcome, Prepared, RunnerConfig, TestId, TestResult,
};

use crate::harness::{F, PATIENCE, TestAgent, input_dir, namespaces_available};

/// A coordinator and one agent with two slots.
struct Cluster {
    coordinator: Option<Coordinator>,
    endpoint: String,
    agent: Option<TestAgent>,
    _data: tempfile::TempDir,
}

impl Cluster {
    async fn start(sandbox: SandboxMode) -> Self {
        let data = tempfile::tempdir().unwrap();
        let config = CoordinatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.path().join("data"),
            ..CoordinatorConfig::default()
        };
        let coordinator = Coordinator::start(&config)
            .await
            .expect("coordinator starts");
        let endpoint = format!("http://{}", coordinator.local_addr());
        let agent = TestAgent::start(&endpoint, |config| config.sandbox = sandbox);
        Cluster {
            coordinator: Some(coordinator),
            endpoint,
            agent: Some(agent),
            _data: data,
        }
    }

    async fn cas(&self) -> CasClient {
        CasClient::connect(&self.endpoint, "", F).await.unwrap()
    }

    async fn upload_dir(&self, dir: &Path) -> Digest {
        let tree = build_tree(dir, F).unwrap();
        let mut blobs: Vec<(Digest, Bytes)> = tree.directories.clone();
        for (digest, path) in &tree.files {
            blobs.push((*digest, Bytes::from(std::fs::read(path).unwrap())));
        }
        self.cas().await.upload(&blobs, false).await.unwrap();
        tree.root
    }

    /// Executes `step` as the coordinator would submit it, and waits for the response.
    #[expect(
        deprecated,
        reason = "the coordinator mirrors output paths in the old fields, as Bazel does"
    )]
    async fn execute(
        &self,
        step: &StepSpec,
        input_root: Digest,
        exec_root: &Path,
        env: &[(String, String)],
    ) -> ExecuteResponse {
        let mut outputs = vec![REPORT_PATH.to_owned()];
        let mut output_directories = Vec::new();
        if matches!(step, StepSpec::Prepare { .. }) {
            outputs.push(PREPARED_DIR.to_owned());
            output_directories.push(PREPARED_DIR.to_owned());
        }
        let mut environment_variables: Vec<EnvironmentVariable> = env
            .iter()
            .map(|(name, value)| EnvironmentVariable {
                name: name.clone(),
                value: value.clone(),
            })
            .collect();
        environment_variables.sort_by(|a, b| a.name.cmp(&b.name));
        let command = Command {
            arguments: step.to_argv(),
            environment_variables,
            output_paths: outputs,
            output_files: vec![REPORT_PATH.to_owned()],
            output_directories,
            ..Command::default()
        };
        let (command_digest, command_bytes) = digest_message(F, &command);
        let action = Action {
            command_digest: Some(command_digest.to_proto()),
            input_root_digest: Some(input_root.to_proto()),
            timeout: Some(Duration::from_secs(120).try_into().unwrap()),
            do_not_cache: true,
            platform: Some(Platform {
                properties: vec![Property {
                    name: "exec-root".into(),
                    value: exec_root.display().to_string(),
                }],
            }),
            ..Action::default()
        };
        let (action_digest, action_bytes) = digest_message(F, &action);
        self.cas()
            .await
            .upload(
                &[
                    (command_digest, command_bytes.into()),
                    (action_digest, action_bytes.into()),
                ],
                false,
            )
            .await
            .unwrap();
        let channel = tonic::transport::Channel::from_shared(self.endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut stream = ExecutionClient::new(channel)
            .execute(ExecuteRequest {
                action_digest: Some(action_digest.to_proto()),
                skip_cache_lookup: true,
                digest_function: F.to_proto(),
                ..ExecuteRequest::default()
            })
            .await
            .expect("execute")
            .into_inner();
        while let Some(op) = stream.message().await.expect("operation stream") {
            if op.done {
                return match op.result {
                    Some(operation::Result::Response(any)) => {
                        ExecuteResponse::decode(any.value.as_slice()).unwrap()
                    }
                    other => panic!("operation ended without a response: {other:?}"),
                };
            }
        }
        panic!("the operation stream ended before the operation was done");
    }

    /// The step's report, from a successful action.
    async fn report(&self, response: &ExecuteResponse) -> StepReport {
        let status = response.status.clone().unwrap_or_default();
        assert_eq!(status.code, 0, "action failed: {}", status.message);
        let result = response.result.as_ref().expect("an action result");
        assert_eq!(result.exit_code, 0);
        let file = result
            .output_files
            .iter()
            .find(|f| f.path == REPORT_PATH)
            .expect("the report is an output");
        let bytes = self.read(file.digest.as_ref()).await;
        serde_json::from_slice(&bytes).expect("the report parses")
    }

    async fn read(&self, digest: Option<&tessera_proto::reapi::Digest>) -> Bytes {
        let digest = Digest::from_proto_opt(F, digest).unwrap();
        self.cas().await.read(&digest, false).await.unwrap()
    }

    /// Every file under the output directory `path`: (relative path, contents, executable).
    async fn output_files(&self, result: &ActionResult, path: &str) -> Vec<(String, Bytes, bool)> {
        let dir = result
            .output_directories
            .iter()
            .find(|d| d.path == path)
            .unwrap_or_else(|| panic!("{path} is not an output directory"));
        let tree = Tree::decode(self.read(dir.tree_digest.as_ref()).await).unwrap();
        let children: Vec<(Digest, Directory)> = tree
            .children
            .iter()
            .map(|d| (digest_message(F, d).0, d.clone()))
            .collect();
        let mut files = Vec::new();
        let mut stack = vec![(String::new(), tree.root.unwrap())];
        while let Some((prefix, directory)) = stack.pop() {
            for file in &directory.files {
                let contents = self.read(file.digest.as_ref()).await;
                files.push((
                    format!("{prefix}{}", file.name),
                    contents,
                    file.is_executable,
                ));
            }
            for sub in &directory.directories {
                let digest = Digest::from_proto_opt(F, sub.digest.as_ref()).unwrap();
                let (_, child) = children.iter().find(|(d, _)| *d == digest).unwrap();
                stack.push((format!("{prefix}{}/", sub.name), child.clone()));
            }
        }
        files
    }

    async fn stop(mut self) {
        if let Some(agent) = self.agent.take() {
            agent.stop().await;
        }
        if let Some(coordinator) = self.coordinator.take() {
            coordinator.shutdown().await.unwrap();
        }
    }
}

/// A fresh exec root path under /tmp (it never exists on the host with namespaces).
fn exec_root() -> PathBuf {
    PathBuf::from(format!(
        "/tmp/tessera-it-{:016x}/repo",
        rand::random::<u64>()
    ))
}

const SUITE: &str = r#"#!/bin/sh
# A test suite: `tests.sh list`, `tests.sh run NAME`.
case "$1" in
  list) printf 'where\nok\nsleepy\n' ;;
  run)
    case "$2" in
      where)
        echo "pwd=$(pwd)"
        echo "physical=$(pwd -P)"
        echo "marker=$(cat "$ROOT/marker.txt")"
        test "$(cat "$ROOT/marker.txt")" = "$MARK" ;;
      ok) sleep 0.2 ;;
      sleepy) sleep 30 ;;
      *) exit 2 ;;
    esac ;;
esac
"#;

fn suite(root: &Path, mark: &str) -> RunnerConfig {
    let argv = |parts: &[&str]| parts.iter().map(|p| (*p).to_owned()).collect();
    let runner = CommandRunner::new(
        root,
        argv(&["./tests.sh", "list"]),
        argv(&["./tests.sh", "run", "{tests}"]),
    )
    .unwrap()
    .env("ROOT", root.display().to_string())
    .env("MARK", mark);
    RunnerConfig::Command(runner)
}

fn batch(runner: RunnerConfig, tests: &[&str], test_timeout_ms: u64) -> StepSpec {
    StepSpec::Batch {
        runner,
        prepared: Prepared::default(),
        tests: tests.iter().map(|t| TestId::ungrouped(*t)).collect(),
        test_timeout_ms,
        worker: None,
    }
}

fn path_env() -> Vec<(String, String)> {
    vec![("PATH".into(), "/usr/bin:/bin".into())]
}

fn ran(report: StepReport) -> Vec<TestResult> {
    match report {
        StepReport::Ran { results, .. } => results,
        other => panic!("expected results, got {other:?}"),
    }
}

fn modes() -> Vec<SandboxMode> {
    let mut modes = vec![SandboxMode::Off];
    if namespaces_available() {
        modes.push(SandboxMode::Auto);
    }
    modes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_see_their_input_root_at_the_exec_root_and_share_it() {
    for mode in modes() {
        let cluster = Cluster::start(mode).await;
        let root = exec_root();
        let mark = format!("mark-{}", rand::random::<u32>());
        let inputs = input_dir(&[("tests.sh", SUITE, true), ("marker.txt", &mark, false)]);
        let input_root = cluster.upload_dir(inputs.path()).await;

        // (a) The test finds its inputs at the fixed path, and runs there.
        let step = batch(suite(&root, &mark), &["where", "ok"], 10_000);
        let response = cluster.execute(&step, input_root, &root, &path_env()).await;
        let results = ran(cluster.report(&response).await);
        let where_ = &results[0];
        assert_eq!(
            where_.outcome,
            Outcome::Passed,
            "{mode:?}: {}",
            where_.output
        );
        assert!(where_.output.contains(&format!("marker={mark}")));
        assert!(
            where_.output.contains(&format!("pwd={}\n", root.display())),
            "{mode:?}: {}",
            where_.output
        );
        if mode == SandboxMode::Auto {
            // A mount, not a symlink: even the physical path is the fixed one.
            assert!(
                where_
                    .output
                    .contains(&format!("physical={}\n", root.display())),
                "{}",
                where_.output
            );
        }
        assert_eq!(results[1].outcome, Outcome::Passed);
        assert!(
            !root.exists(),
            "{mode:?}: nothing is left at the exec root path on the host"
        );

        // (c) Two actions with the same exec root at once, on one agent with two slots.
        let one = batch(suite(&root, &mark), &["where", "ok"], 10_000);
        let two = batch(suite(&root, &mark), &["ok", "where", "ok"], 10_000);
        let env = path_env();
        let (first, second) = tokio::join!(
            cluster.execute(&one, input_root, &root, &env),
            cluster.execute(&two, input_root, &root, &env),
        );
        for response in [first, second] {
            for result in ran(cluster.report(&response).await) {
                assert_eq!(
                    result.outcome,
                    Outcome::Passed,
                    "{mode:?}: {}",
                    result.output
                );
            }
        }
        cluster.stop().await;
        // Without namespaces the lock file stays beside the path.
        let _ = std::fs::remove_dir_all(root.parent().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_test_past_its_timeout_times_out_alone() {
    let cluster = Cluster::start(SandboxMode::Auto).await;
    let root = exec_root();
    let inputs = input_dir(&[("tests.sh", SUITE, true), ("marker.txt", "m", false)]);
    let input_root = cluster.upload_dir(inputs.path()).await;
    let started = Instant::now();
    // (d) `sleepy` sleeps 30 s; its test timeout is 3 s; the action's is 120 s.
    let step = batch(suite(&root, "m"), &["sleepy", "ok"], 3000);
    let response = cluster.execute(&step, input_root, &root, &path_env()).await;
    let results = ran(cluster.report(&response).await);
    assert_eq!(results[0].outcome, Outcome::TimedOut);
    assert_eq!(results[1].outcome, Outcome::Passed);
    assert!(started.elapsed() < PATIENCE, "took {:?}", started.elapsed());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_steps_and_exec_roots_are_the_actions_fault() {
    let cluster = Cluster::start(SandboxMode::Off).await;
    let inputs = input_dir(&[("tests.sh", SUITE, true)]);
    let input_root = cluster.upload_dir(inputs.path()).await;
    let step = batch(suite(Path::new("/tmp/x"), "m"), &["ok"], 1000);
    let response = cluster
        .execute(&step, input_root, Path::new("/tmp/../etc"), &path_env())
        .await;
    let status = response.status.unwrap_or_default();
    assert_eq!(status.code, tonic::Code::InvalidArgument as i32);
    assert!(status.message.contains("exec-root"), "{}", status.message);
    cluster.stop().await;
}

/// Where `cargo` is, and the variables it (through rustup) needs.
fn cargo_env() -> Option<Vec<(String, String)>> {
    let path = std::env::var("PATH").ok()?;
    let cargo_dir = path
        .split(':')
        .find(|dir| Path::new(dir).join("cargo").exists())?;
    let mut env = vec![("PATH".to_owned(), format!("{cargo_dir}:/usr/bin:/bin"))];
    for name in ["HOME", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"] {
        if let Ok(value) = std::env::var(name) {
            env.push((name.to_owned(), value));
        }
    }
    Some(env)
}

const TINY_LIB: &str = r#"
#[test]
fn reads_its_data() {
    // The path is fixed when the test is built: it must still hold in another action.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data.txt");
    assert_eq!(std::fs::read_to_string(path).unwrap(), "hello\n");
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prepare_hands_back_what_it_built_for_later_steps_at_the_same_path() {
    // Cargo asks the kernel where it runs, so only a mount (not a symlink) shows it the fixed
    // path.
    if !namespaces_available() {
        return;
    }
    let Some(env) = cargo_env() else {
        eprintln!("cargo not found; skipping");
        return;
    };
    let cluster = Cluster::start(SandboxMode::Auto).await;
    let root = exec_root();
    let sources = [
        (
            "Cargo.toml",
            "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
            false,
        ),
        ("src/lib.rs", TINY_LIB, false),
        ("data.txt", "hello\n", false),
    ];
    let inputs = input_dir(&sources);
    let input_root = cluster.upload_dir(inputs.path()).await;
    let runner = RunnerConfig::Cargo(CargoTestRunner::new(&root));

    // (b) Prepare: cargo builds into a kept `target`, the agent hands the test binary back.
    let prepare = StepSpec::Prepare {
        runner: runner.clone(),
        persist: vec![PathBuf::from("target")],
    };
    let response = cluster.execute(&prepare, input_root, &root, &env).await;
    let prepared = match cluster.report(&response).await {
        StepReport::Prepared { prepared } => prepared,
        other => panic!("expected a prepared report, got {other:?}"),
    };
    assert!(!prepared.files.is_empty(), "{prepared:?}");
    let result = response.result.as_ref().unwrap();
    let handed_back = cluster.output_files(result, PREPARED_DIR).await;
    for file in &prepared.files {
        let relative = file.strip_prefix(&root).unwrap().display().to_string();
        let found = handed_back.iter().find(|(path, _, _)| *path == relative);
        let (_, _, executable) = found.unwrap_or_else(|| panic!("{relative} not handed back"));
        assert!(executable, "{relative} keeps its executable bit");
    }
    let work_dir = cluster.agent.as_ref().unwrap().work_dir.path().to_owned();
    let kept: Vec<_> = std::fs::read_dir(work_dir.join("persist"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(kept.len(), 1);
    assert!(
        kept[0].path().join("debug").is_dir(),
        "cargo built into the kept dir"
    );

    // The prepared input root, as the coordinator lays it out: the inputs plus the files.
    let prepared_dir = input_dir(&sources);
    for (relative, contents, _) in &handed_back {
        let path = prepared_dir.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let prepared_root = cluster.upload_dir(prepared_dir.path()).await;

    let list = StepSpec::List {
        runner: runner.clone(),
        prepared: prepared.clone(),
    };
    let response = cluster.execute(&list, prepared_root, &root, &env).await;
    let tests = match cluster.report(&response).await {
        StepReport::Listed { tests } => tests,
        other => panic!("expected a list, got {other:?}"),
    };
    assert_eq!(tests.len(), 1, "{tests:?}");

    let run = StepSpec::Batch {
        runner,
        prepared,
        tests,
        test_timeout_ms: 30_000,
        worker: None,
    };
    let response = cluster.execute(&run, prepared_root, &root, &env).await;
    let results = ran(cluster.report(&response).await);
    assert_eq!(results[0].outcome, Outcome::Passed, "{}", results[0].output);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_step_stops_its_command_and_frees_the_exec_root() {
    use crate::harness::{FakeCoordinator, lease, set_platform};
    use tessera_proto::tessera::v1::coordinator_message::Kind as CoordinatorKind;
    use tessera_proto::tessera::v1::{CancelLease, LeaseOutcome, LeaseStage};
    for mode in modes() {
        let mut coordinator = FakeCoordinator::start().await;
        let inputs = input_dir(&[("tests.sh", SUITE, true), ("marker.txt", "m", false)]);
        let input_root = coordinator.upload_dir(inputs.path()).await;
        let _agent = TestAgent::start(&coordinator.endpoint, |c| c.sandbox = mode);
        let mut link = coordinator.link().await;
        let root = exec_root();
        let step = batch(suite(&root, "m"), &["sleepy"], 60_000);
        let argv = step.to_argv();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut sleepy = lease("sleepy", input_root, &argv);
        let root_value = root.display().to_string();
        set_platform(&mut sleepy, &[("exec-root", &root_value)]);
        link.lease(sleepy).await;
        link.wait_stage("sleepy", LeaseStage::Executing).await;
        link.send(CoordinatorKind::Cancel(CancelLease {
            lease_id: "sleepy".into(),
        }))
        .await;
        let answer = tokio::time::timeout(Duration::from_secs(5), link.result())
            .await
            .expect("cancel was not prompt");
        assert_eq!(answer.outcome(), LeaseOutcome::Cancelled, "{mode:?}");

        // A plain command with the same exec root runs next, there. (Without namespaces the
        // path is a symlink: the kernel's idea of the working directory is the lease's own.)
        let script = format!("cat {root_value}/marker.txt; echo; pwd -P");
        let mut plain = lease("pwd", input_root, &["sh", "-c", &script]);
        set_platform(&mut plain, &[("exec-root", &root_value)]);
        link.lease(plain).await;
        let answer = link.result().await;
        let result = answer.result.expect("a result");
        assert_eq!(result.exit_code, 0, "{mode:?}");
        let stdout = coordinator.read(result.stdout_digest.as_ref()).await;
        let stdout = String::from_utf8_lossy(&stdout);
        assert!(stdout.starts_with("m\n"), "{mode:?}: {stdout}");
        if mode == SandboxMode::Auto {
            assert_eq!(stdout, format!("m\n{root_value}\n"));
        }
        assert!(std::fs::symlink_metadata(&root).is_err(), "{mode:?}");
        let _ = std::fs::remove_dir_all(root.parent().unwrap());
    }
}

/// A pytest suite for the worker stories: one test prints its process id and fails (so its
/// output comes back), one kills its own process, one hangs.
const WORKER_SUITE: &[(&str, &str, bool)] = &[
    ("pytest.ini", "[pytest]\n", false),
    (
        "test_worker.py",
        "import os, time, uuid\n\n\
         PROCESS = f'{os.getpid()}-{uuid.uuid4().hex}'\n\n\
         def test_pid():\n    print('pid', PROCESS)\n    assert False\n\n\
         def test_die():\n    os._exit(3)\n\n\
         def test_hang():\n    time.sleep(60)\n",
        false,
    ),
];

/// `python3` with pytest, as this test process finds it.
fn pytest_env() -> Option<Vec<(String, String)>> {
    let found = std::process::Command::new("python3")
        .args(["-m", "pytest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "pytest is required under CI=true; .ci/install-deps.sh installs it"
        );
        eprintln!("skipping: pytest is not installed");
        return None;
    }
    Some(
        ["PATH", "HOME", "PYENV_ROOT"]
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
            .chain([("PYTHONDONTWRITEBYTECODE".to_owned(), "1".to_owned())])
            .collect(),
    )
}

fn pytest_batch(root: &Path, tests: &[&str], worker: Option<&str>, timeout_ms: u64) -> StepSpec {
    StepSpec::Batch {
        runner: RunnerConfig::Pytest(tessera_runners::PytestRunner::new(root)),
        prepared: Prepared::default(),
        tests: tests.iter().map(|t| TestId::ungrouped(*t)).collect(),
        test_timeout_ms: timeout_ms,
        worker: worker.map(str::to_owned),
    }
}

/// Runs `step`: its results and how many tool processes it started.
async fn run_counted(
    cluster: &Cluster,
    step: &StepSpec,
    input_root: Digest,
    root: &Path,
    env: &[(String, String)],
) -> (Vec<TestResult>, u32) {
    let response = cluster.execute(step, input_root, root, env).await;
    match cluster.report(&response).await {
        StepReport::Ran { results, startups } => (results, startups),
        other => panic!("expected results, got {other:?}"),
    }
}

/// What `test_pid` printed to tell its process from others: its pid (which a PID namespace
/// of its own may repeat) and a token drawn when the module was imported.
fn pid_of(results: &[TestResult]) -> String {
    let output = &results[0].output;
    let at = output.find("pid ").unwrap_or_else(|| panic!("{output}"));
    output[at..].split_whitespace().nth(1).unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_of_one_job_share_a_worker_and_another_jobs_never_do() {
    let Some(env) = pytest_env() else {
        return;
    };
    for mode in modes() {
        let cluster = Cluster::start(mode).await;
        let root = exec_root();
        let inputs = input_dir(WORKER_SUITE);
        let input_root = cluster.upload_dir(inputs.path()).await;
        let pid = ["test_worker.py::test_pid"];

        let first = pytest_batch(&root, &pid, Some("job-a"), 30_000);
        let (results, startups) = run_counted(&cluster, &first, input_root, &root, &env).await;
        assert_eq!(results[0].outcome, Outcome::Failed, "{mode:?}: {results:?}");
        assert_eq!(startups, 1, "{mode:?}: the first batch starts the worker");
        let worker_pid = pid_of(&results);
        // The job's next batch: the same process, no start-up, no inputs laid out again.
        let (results, startups) = run_counted(&cluster, &first, input_root, &root, &env).await;
        assert_eq!(
            (pid_of(&results), startups),
            (worker_pid.clone(), 0),
            "{mode:?}"
        );

        // Another job with everything else the same never reaches that worker.
        let other = pytest_batch(&root, &pid, Some("job-b"), 30_000);
        let (results, startups) = run_counted(&cluster, &other, input_root, &root, &env).await;
        assert_eq!(startups, 1, "{mode:?}");
        assert_ne!(pid_of(&results), worker_pid, "{mode:?}");
        // Nor does a batch that names no worker.
        let alone = pytest_batch(&root, &pid, None, 30_000);
        let (results, startups) = run_counted(&cluster, &alone, input_root, &root, &env).await;
        assert_eq!(startups, 1, "{mode:?}");
        assert_ne!(pid_of(&results), worker_pid, "{mode:?}");
        // And the first job's worker is still there for it.
        let (results, startups) = run_counted(&cluster, &first, input_root, &root, &env).await;
        assert_eq!((pid_of(&results), startups), (worker_pid, 0), "{mode:?}");
        cluster.stop().await;
        let _ = std::fs::remove_dir_all(root.parent().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_dies_or_hangs_is_replaced_and_its_batch_says_so() {
    let Some(env) = pytest_env() else {
        return;
    };
    let cluster = Cluster::start(SandboxMode::Auto).await;
    let root = exec_root();
    let inputs = input_dir(WORKER_SUITE);
    let input_root = cluster.upload_dir(inputs.path()).await;
    let pid = ["test_worker.py::test_pid"];
    let (results, _) = run_counted(
        &cluster,
        &pytest_batch(&root, &pid, Some("job"), 30_000),
        input_root,
        &root,
        &env,
    )
    .await;
    let first_pid = pid_of(&results);

    // A test that kills the worker: no result for it, and the next batch gets a new worker.
    let die = pytest_batch(&root, &["test_worker.py::test_die"], Some("job"), 30_000);
    let (results, startups) = run_counted(&cluster, &die, input_root, &root, &env).await;
    assert_eq!(startups, 0);
    assert_eq!(results[0].outcome, Outcome::NoResult, "{results:?}");
    assert!(
        results[0].output.contains("exit code 3"),
        "{}",
        results[0].output
    );
    let next = pytest_batch(&root, &pid, Some("job"), 30_000);
    let (results, startups) = run_counted(&cluster, &next, input_root, &root, &env).await;
    assert_eq!(startups, 1);
    let second_pid = pid_of(&results);
    assert_ne!(second_pid, first_pid);

    // A test past its timeout: timed out, the worker stopped, the next batch starts another.
    let started = Instant::now();
    let hang = pytest_batch(&root, &["test_worker.py::test_hang"], Some("job"), 2_000);
    let (results, _) = run_counted(&cluster, &hang, input_root, &root, &env).await;
    assert_eq!(results[0].outcome, Outcome::TimedOut, "{results:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let (results, startups) = run_counted(&cluster, &next, input_root, &root, &env).await;
    assert_eq!(startups, 1);
    assert_ne!(pid_of(&results), second_pid);
    cluster.stop().await;
}

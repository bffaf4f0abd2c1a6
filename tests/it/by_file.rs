//! Order-dependent suites (issue 10): with `keep_files_together` (`tessera run --by-file`) the
//! tests of one pytest file run together in one process in file order, so a test that needs
//! its file-mate to run first passes as it does under plain pytest, on a fleet of two agents
//! with small batches.

use std::collections::BTreeMap;

use tessera_cas::digest::DigestFunction;
use tessera_proto::reapi::command::EnvironmentVariable;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tessera_proto::tessera::v1::{JobSpec, TestOutcome, job_event::Kind};
use tessera_runners::{PytestRunner, RunnerConfig};
use tessera_tests::{AgentProcess, TestServer, in_ci, run_job};

/// Each file: `test_1_set` stores a value in the module, `test_2_read` needs it; fillers in
/// between make the file big enough that a planner left alone would split it.
fn ordered_file(n: usize) -> String {
    let mut text = String::from("STATE = {}\n\ndef test_1_set():\n    STATE['x'] = 1\n\n");
    for i in 0..6 {
        text.push_str(&format!("def test_1_{i}_filler():\n    pass\n\n"));
    }
    text.push_str(&format!(
        "def test_2_read():\n    assert STATE.get('x') == 1, 'file {n}: test_1_set ran elsewhere'\n"
    ));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_kept_together_runs_in_order_in_one_process() {
    if std::process::Command::new("python3")
        .args(["-m", "pytest", "--version"])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        assert!(!in_ci(), "pytest is required under CI");
        return;
    }
    let server = TestServer::start().await;
    let work = tempfile::tempdir().expect("work");
    let mut agents = Vec::new();
    for id in ["agent-0", "agent-1"] {
        agents.push(
            AgentProcess::start_connected(&server.endpoint, &work.path().join(id), id, 2, &[])
                .await,
        );
    }
    let dir = tempfile::tempdir().expect("suite");
    for n in 0..4 {
        std::fs::write(
            dir.path().join(format!("test_order_{n}.py")),
            ordered_file(n),
        )
        .expect("write");
    }
    let root = server.upload_dir(dir.path(), DigestFunction::Blake3).await;
    let exec_root = "/tmp/tessera-it/by-file";
    let runner = PytestRunner::new(exec_root).root(exec_root);
    let spec = JobSpec {
        digest_function: DigestFunction::Blake3.to_proto(),
        input_root_digest: Some(root.to_proto()),
        runner_json: serde_json::to_string(&RunnerConfig::Pytest(runner)).expect("json"),
        exec_root: exec_root.to_owned(),
        environment: vec![EnvironmentVariable {
            name: "PATH".into(),
            value: std::env::var("PATH").unwrap_or_default(),
        }],
        keep_files_together: true,
        skip_cache: true,
        ..Default::default()
    };
    let (events, finished) = run_job(&mut JobsClient::new(server.channel().await), spec).await;
    let outcomes: BTreeMap<String, TestOutcome> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Test(t)) if t.r#final => {
                Some((t.test.as_ref().unwrap().name.clone(), t.outcome()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(outcomes.len(), 32, "{outcomes:#?}");
    assert!(
        outcomes.values().all(|o| *o == TestOutcome::Passed),
        "{outcomes:#?}\n{finished:?}"
    );
}

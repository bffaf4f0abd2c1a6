//! A test's output (issue 10): events, JUnit and the terminal carry it capped at the job's
//! `output_limit`, head and tail kept and the cut said, and `tessera logs JOB TEST` prints the
//! whole of it from the CAS.

use tessera_cas::digest::DigestFunction;
use tessera_proto::reapi::command::EnvironmentVariable;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tessera_proto::tessera::v1::{JobSpec, SubmitJobRequest, TestOutcome, job_event::Kind};
use tessera_runners::{CommandRunner, RunnerConfig};
use tessera_tests::{AgentProcess, TestServer, tessera_bin, watch_job_to_end};

/// `loud` fails after printing 3000 numbered lines; `quiet` passes.
const SUITE: &str = r#"case "$1" in
list) echo loud; echo quiet ;;
run) shift
  for t in "$@"; do
    case "$t" in
    loud) i=0; while [ $i -lt 3000 ]; do echo "line $i of loud"; i=$((i+1)); done
          exit 1 ;;
    quiet) echo "ok $t" ;;
    esac
  done ;;
esac
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loud_failure_is_capped_in_events_and_whole_in_tessera_logs() {
    let server = TestServer::start().await;
    let work = tempfile::tempdir().expect("work");
    let _agent =
        AgentProcess::start_connected(&server.endpoint, &work.path().join("a"), "a", 2, &[]).await;

    let dir = tempfile::tempdir().expect("suite");
    std::fs::write(dir.path().join("suite.sh"), SUITE).expect("write suite");
    let root = server.upload_dir(dir.path(), DigestFunction::Blake3).await;
    let exec_root = "/tmp/tessera-it/loud";
    // Without a JUnit report the generic runner runs one test a command; its exit code decides.
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
    let spec = JobSpec {
        digest_function: DigestFunction::Blake3.to_proto(),
        input_root_digest: Some(root.to_proto()),
        runner_json: serde_json::to_string(&RunnerConfig::Command(runner)).expect("json"),
        exec_root: exec_root.to_owned(),
        environment: vec![EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        output_limit: 2048,
        ..Default::default()
    };
    let mut jobs = JobsClient::new(server.channel().await);
    let job = jobs
        .submit(SubmitJobRequest { spec: Some(spec) })
        .await
        .expect("submit")
        .into_inner()
        .job_id;
    let (events, finished) = watch_job_to_end(&mut jobs, &job).await;
    assert_eq!((finished.passed, finished.failed), (1, 1), "{finished:?}");
    let loud = events
        .iter()
        .find_map(|e| match &e.kind {
            Some(Kind::Test(t)) if t.r#final && t.test.as_ref().unwrap().name == "loud" => {
                Some(t.clone())
            }
            _ => None,
        })
        .expect("loud's final event");
    assert_eq!(loud.outcome(), TestOutcome::Failed);
    assert!(loud.output.len() < 2048 + 200, "{}", loud.output.len());
    assert!(loud.output.contains("line 0 of loud"), "head kept");
    assert!(loud.output.contains("line 2999 of loud"), "tail kept");
    assert!(
        loud.output.contains("bytes cut; `tessera logs"),
        "{}",
        loud.output
    );
    assert!(loud.output_digest.is_some());

    let out = std::process::Command::new(tessera_bin())
        .args(["logs", "--coordinator", &server.endpoint, &job, "loud"])
        .output()
        .expect("tessera logs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("== loud: attempt 1, failed, on a =="),
        "{stdout}"
    );
    for i in [0, 1500, 2999] {
        assert!(
            stdout.contains(&format!("line {i} of loud\n")),
            "line {i} missing"
        );
    }
    // A test the job does not have is named in a usage error.
    let out = std::process::Command::new(tessera_bin())
        .args(["logs", "--coordinator", &server.endpoint, &job, "nosuch"])
        .output()
        .expect("tessera logs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch"));
}

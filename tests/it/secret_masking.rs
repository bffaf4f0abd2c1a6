//! Secret values masked in what a job's tests print (issue 12, item 5: a value is "never
//! stored, logged, shown or sent"), with a real `tessera coordinator` and `tessera agent`: a
//! test that prints its secrets and writes them to a file fails, and its events, its whole
//! output in the CAS (what `tessera logs` prints), the coordinator's data directory and the
//! agent's work directory show `***` where the values were, never the values.

use std::time::Duration;

use nix::sys::signal::Signal;
use tessera_cas::client::CasClient;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_proto::reapi::command::EnvironmentVariable;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tessera_proto::tessera::v1::{JobResult, JobSpec, SecretEnv, TestOutcome, job_event::Kind};
use tessera_runners::{CommandRunner, RunnerConfig};
use tessera_tests::{AgentProcess, ServerProcess, run_job, upload_dir};
use tonic::transport::Channel;

use super::secrets::files_containing;

/// A plain value: distinctive enough that finding its bytes anywhere means it leaked.
const PLAIN: &str = "tsr-mask-4d2e9b1c-plain-value";
/// A value with the characters JSON escapes, so that an encoded copy cannot slip past a mask
/// that looks only for the raw bytes.
const QUOTED: &str = r#"tsr-mask-"7f3a"\back\slash"#;

/// `leaks` prints both values on stdout and stderr, writes them to a file and prints that,
/// pads its output past the job's output limit (so the whole of it goes to the CAS), and
/// fails (so its output is kept); `quiet` passes.
const SUITE: &str = r#"case "$1" in
list) echo leaks; echo quiet ;;
run) shift
  for t in "$@"; do
    case "$t" in
    leaks)
      printf 'stdout: %s and %s\n' "$PLAIN" "$QUOTED"
      printf 'stderr: %s\n' "$QUOTED" >&2
      printf '%s\n%s\n' "$PLAIN" "$QUOTED" > leak.txt
      printf 'file: '; cat leak.txt
      i=0; while [ $i -lt 200 ]; do echo "padding line $i"; i=$((i+1)); done
      printf 'last: %s\n' "$PLAIN"
      exit 1 ;;
    quiet) echo "ok $t" ;;
    esac
  done ;;
esac
"#;

/// Every way a value may be spelled where it leaked: as it is, JSON-escaped (the stores and
/// reports), Debug-escaped (the events below are searched in their Debug form).
fn spellings(value: &str) -> Vec<String> {
    let json = serde_json::to_string(value).expect("json");
    let debug = format!("{value:?}");
    let mut all = vec![
        value.to_owned(),
        json[1..json.len() - 1].to_owned(),
        debug[1..debug.len() - 1].to_owned(),
    ];
    all.dedup();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_a_test_prints_or_writes_show_as_stars_everywhere() {
    let dir = tessera_tests::visible_tempdir();
    let data_dir = dir.path().join("data");
    let mut server = ServerProcess::start(&data_dir, &[]);
    let endpoint = server.endpoint();
    let mut agent =
        AgentProcess::start_connected(&endpoint, &dir.path().join("agent"), "agent-0", 1, &[])
            .await;
    let cas = CasClient::connect(&endpoint, "", DigestFunction::Sha256)
        .await
        .expect("cas client");
    let mut jobs = JobsClient::new(
        Channel::from_shared(endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect"),
    );

    let suite = tempfile::tempdir().expect("suite dir");
    std::fs::write(suite.path().join("suite.sh"), SUITE).expect("write suite");
    let root = upload_dir(&cas, suite.path()).await;
    let exec_root = "/tmp/tessera-it/secret-masking";
    let sh = |verb: &str| vec!["sh".to_owned(), "suite.sh".to_owned(), verb.to_owned()];
    let mut run = sh("run");
    run.push("{tests}".to_owned());
    let runner = CommandRunner::new(exec_root, sh("list"), run).expect("runner");
    let secret = |name: &str, value: &str| SecretEnv {
        name: name.to_owned(),
        value: value.to_owned(),
    };
    let spec = JobSpec {
        digest_function: DigestFunction::Sha256.to_proto(),
        input_root_digest: Some(root.to_proto()),
        runner_json: serde_json::to_string(&RunnerConfig::Command(runner)).expect("json"),
        exec_root: exec_root.to_owned(),
        environment: vec![EnvironmentVariable {
            name: "PATH".to_owned(),
            value: "/usr/bin:/bin".to_owned(),
        }],
        secrets: vec![secret("PLAIN", PLAIN), secret("QUOTED", QUOTED)],
        output_limit: 1024,
        submitter: "masking-test".to_owned(),
        ..Default::default()
    };

    let (events, finished) = run_job(&mut jobs, spec).await;
    assert_eq!(finished.result(), JobResult::Failed, "{finished:?}");
    assert_eq!((finished.passed, finished.failed), (1, 1), "{finished:?}");
    let leaks = events
        .iter()
        .find_map(|e| match &e.kind {
            Some(Kind::Test(t))
                if t.r#final && t.test.as_ref().is_some_and(|t| t.name == "leaks") =>
            {
                Some(t.clone())
            }
            _ => None,
        })
        .expect("leaks' final event");
    assert_eq!(leaks.outcome(), TestOutcome::Failed);
    // The event's output is capped: its head and tail, masked.
    assert!(
        leaks.output.contains("stdout: *** and ***"),
        "{}",
        leaks.output
    );
    assert!(leaks.output.contains("last: ***"), "{}", leaks.output);

    // The whole output, as `tessera logs` prints it from the CAS.
    let digest = Digest::from_proto_opt(DigestFunction::Sha256, leaks.output_digest.as_ref())
        .expect("the whole output went to the CAS");
    let whole = cas.read(&digest, false).await.expect("read the output");
    let whole = String::from_utf8_lossy(&whole);
    for line in [
        "stdout: *** and ***\n",
        "stderr: ***\n",
        "file: ***\n***\n",
        "padding line 199\n",
        "last: ***\n",
    ] {
        assert!(whole.contains(line), "{line:?} missing from {whole}");
    }
    let shown = format!("{events:?}{finished:?}{whole}");

    // Stopped cleanly, so everything either means to keep is on disk.
    server.signal_and_wait(Signal::SIGTERM, Duration::from_secs(30));
    agent.signal(Signal::SIGTERM);
    agent.wait_exit(Duration::from_secs(30));
    // The search reads the stores: it finds there a test's name, a key of the test history
    // the coordinator keeps. (Not the masked output itself: the job's journal goes when the
    // job ends, and the whole output is stored zstd-compressed, so finding it in the files
    // depended on redb's freed pages not being reused yet.)
    assert!(!files_containing(&data_dir.join("meta"), b"quiet").is_empty());
    for value in [PLAIN, QUOTED] {
        for spelled in spellings(value) {
            assert!(!shown.contains(&spelled), "an event shows {spelled}");
            assert_eq!(
                server.log.count(&spelled),
                0,
                "the coordinator logged {spelled}"
            );
            assert_eq!(agent.log.count(&spelled), 0, "the agent logged {spelled}");
            let stored = files_containing(&data_dir, spelled.as_bytes());
            assert!(
                stored.is_empty(),
                "the coordinator stored {spelled}: {stored:?}"
            );
            let kept = files_containing(&agent.work_dir, spelled.as_bytes());
            assert!(kept.is_empty(), "the agent kept {spelled}: {kept:?}");
        }
    }
}

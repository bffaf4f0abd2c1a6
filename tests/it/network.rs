//! Network for a job's steps (issue 10, part 2), with real sandboxes: the prepare step (the
//! build) sees the host's network by default, the tests get only loopback, `--no-prepare-network`
//! takes the network from the build too, and `--network` (`network=on`) gives it to the tests.
//! "Sees the host's network" is judged by the interfaces in `/proc/net/dev` (which, unlike
//! `/sys/class/net`, always shows the reader's own network namespace): a private one has `lo`
//! alone.

use tessera_cas::digest::DigestFunction;
use tessera_proto::reapi::command::EnvironmentVariable;
use tessera_proto::reapi::platform::Property;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tessera_proto::tessera::v1::{JobFinished, JobResult, JobSpec, StatusRequest};
use tessera_runners::{CommandRunner, RunnerConfig};
use tessera_tests::{AgentProcess, TestServer, in_ci, run_job};

/// `loopback_only` passes when the test sees `lo` and nothing else.
const SUITE: &str = r#"interfaces() { tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; }
case "$1" in
list) echo loopback_only ;;
run) test "$(interfaces)" = lo ;;
esac
"#;

/// The prepare step succeeds only when it sees an interface besides `lo`.
const PREPARE: &str = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | grep -qvx lo";

async fn run(server: &TestServer, spec: JobSpec) -> JobFinished {
    run_job(&mut JobsClient::new(server.channel().await), spec)
        .await
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_build_gets_the_network_and_the_tests_only_loopback() {
    let host_interfaces =
        std::fs::read_to_string("/proc/net/dev").map_or(0, |t| t.lines().skip(2).count());
    let server = TestServer::start().await;
    let work = tempfile::tempdir().expect("work");
    let _agent =
        AgentProcess::start_connected(&server.endpoint, &work.path().join("a"), "a", 2, &[]).await;
    let status = JobsClient::new(server.channel().await)
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    // An agent offers network=off only where it can give an action its own network namespace.
    let sandboxed = status.agents.iter().any(|a| {
        a.properties
            .iter()
            .any(|p| p.name == "network" && p.value == "off")
    });
    if !sandboxed || host_interfaces < 2 {
        assert!(
            !in_ci(),
            "this test needs network namespaces and a host interface besides lo"
        );
        eprintln!("skipping: no network namespaces here, or only lo");
        return;
    }

    let dir = tempfile::tempdir().expect("suite");
    std::fs::write(dir.path().join("net.sh"), SUITE).expect("write suite");
    let root = server.upload_dir(dir.path(), DigestFunction::Blake3).await;
    let exec_root = "/tmp/tessera-it/network";
    let runner = CommandRunner::new(
        exec_root,
        vec!["sh".into(), "net.sh".into(), "list".into()],
        vec!["sh".into(), "net.sh".into(), "run".into(), "{tests}".into()],
    )
    .expect("runner")
    .prepare(vec!["sh".into(), "-c".into(), PREPARE.into()]);
    let spec = JobSpec {
        digest_function: DigestFunction::Blake3.to_proto(),
        input_root_digest: Some(root.to_proto()),
        runner_json: serde_json::to_string(&RunnerConfig::Command(runner)).expect("json"),
        exec_root: exec_root.to_owned(),
        environment: vec![EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        prepare_network: true,
        skip_cache: true,
        ..Default::default()
    };

    // The default of `tessera run`: the build sees the host, the test only loopback.
    let default = run(&server, spec.clone()).await;
    assert_eq!(
        (default.result(), default.passed),
        (JobResult::Passed, 1),
        "{default:?}"
    );
    // `--no-prepare-network`: the build sees only loopback too, and fails here.
    let offline = run(
        &server,
        JobSpec {
            prepare_network: false,
            ..spec.clone()
        },
    )
    .await;
    assert_eq!(offline.result(), JobResult::Error, "{offline:?}");
    assert!(
        offline.message.contains("prepare step failed"),
        "{offline:?}"
    );
    // `--network`: the tests see the host's interfaces too.
    let networked = run(
        &server,
        JobSpec {
            platform: vec![Property {
                name: "network".into(),
                value: "on".into(),
            }],
            ..spec
        },
    )
    .await;
    assert_eq!(
        (networked.result(), networked.failed),
        (JobResult::Failed, 1),
        "{networked:?}"
    );
}

//! Toolchain identity (issue 10): agents advertise the tools they have and a fingerprint of
//! each; a job needs its runner's tool and is pinned to one toolchain, which is part of every
//! test's cache key. Agents here get their toolchain value from `--property` (configured
//! properties override detected ones), standing in for a host whose toolchain was upgraded.
//! The module's `TestAdd/one` is a subtest: reported (and answered from the cache) as `go test
//! -json` reports it, beside its parent.

use tessera_cas::digest::DigestFunction;
use tessera_proto::reapi::command::EnvironmentVariable;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tessera_proto::tessera::v1::{JobFinished, JobResult, JobSpec};
use tessera_runners::{GoTestRunner, RunnerConfig};
use tessera_tests::{AgentProcess, TestServer, in_ci, run_job};

const MODULE: &[(&str, &str)] = &[
    ("go.mod", "module example.com/tc\n\ngo 1.19\n"),
    (
        "tc.go",
        "package tc\n\nfunc Add(a, b int) int { return a + b }\n",
    ),
    (
        "tc_test.go",
        "package tc\n\nimport \"testing\"\n\nfunc TestAdd(t *testing.T) {\n\tt.Run(\"one\", func(t *testing.T) {\n\t\tif Add(1, 2) != 3 {\n\t\t\tt.Fatal(\"no\")\n\t\t}\n\t})\n}\n\nfunc TestZero(t *testing.T) {\n\tif Add(0, 0) != 0 {\n\t\tt.Fatal(\"no\")\n\t}\n}\n",
    ),
];

async fn go_job(server: &TestServer, cache: &std::path::Path) -> JobSpec {
    let dir = tempfile::tempdir().expect("module dir");
    for (name, text) in MODULE {
        std::fs::write(dir.path().join(name), text).expect("write module");
    }
    let root = server.upload_dir(dir.path(), DigestFunction::Sha256).await;
    let exec_root = "/tmp/tessera-it/toolchain-go";
    let mut environment: Vec<EnvironmentVariable> = [
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("HOME", cache.display().to_string()),
        ("GOCACHE", cache.join("go-build").display().to_string()),
        ("GOFLAGS", "-mod=mod".to_owned()),
        ("GOPROXY", "off".to_owned()),
        ("GOTOOLCHAIN", "local".to_owned()),
    ]
    .into_iter()
    .map(|(name, value)| EnvironmentVariable {
        name: name.to_owned(),
        value,
    })
    .collect();
    environment.sort_by(|a, b| a.name.cmp(&b.name));
    JobSpec {
        digest_function: DigestFunction::Sha256.to_proto(),
        input_root_digest: Some(root.to_proto()),
        runner_json: serde_json::to_string(&RunnerConfig::Go(GoTestRunner::new(exec_root)))
            .expect("json"),
        exec_root: exec_root.to_owned(),
        environment,
        ..Default::default()
    }
}

async fn agent(
    server: &TestServer,
    work: &std::path::Path,
    id: &str,
    props: &[&str],
) -> AgentProcess {
    let mut extra = Vec::new();
    for prop in props {
        extra.extend(["--property", prop]);
    }
    AgentProcess::start_connected(&server.endpoint, &work.join(id), id, 2, &extra).await
}

async fn run(server: &TestServer, spec: JobSpec) -> JobFinished {
    run_job(&mut JobsClient::new(server.channel().await), spec)
        .await
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_toolchain_never_answers_from_an_old_pass() {
    if std::process::Command::new("go")
        .arg("version")
        .output()
        .is_err()
    {
        assert!(!in_ci(), "go is required under CI");
        return;
    }
    let server = TestServer::start().await;
    let work = tempfile::tempdir().expect("work");
    let cache = tessera_tests::visible_tempdir();
    let spec = go_job(&server, cache.path()).await;

    let old = agent(
        &server,
        work.path(),
        "old-go",
        &["toolchain.go=1.19.0+aaaaaaaaaaaa"],
    )
    .await;
    let first = run(&server, spec.clone()).await;
    assert_eq!(
        (first.result(), first.passed, first.cached),
        (JobResult::Passed, 3, 0),
        "{first:?}"
    );
    let again = run(&server, spec.clone()).await;
    assert_eq!((again.passed, again.cached), (3, 3), "{again:?}");

    // The host's go is upgraded: the same tests run again, then answer from the new passes.
    drop(old);
    let _new = agent(
        &server,
        work.path(),
        "new-go",
        &["toolchain.go=1.19.9+bbbbbbbbbbbb"],
    )
    .await;
    let upgraded = run(&server, spec.clone()).await;
    assert_eq!((upgraded.passed, upgraded.cached), (3, 0), "{upgraded:?}");
    let again = run(&server, spec).await;
    assert_eq!((again.passed, again.cached), (3, 3), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_tool_no_agent_has_is_refused_with_the_tool_named() {
    let server = TestServer::start().await;
    let work = tempfile::tempdir().expect("work");
    let cache = tessera_tests::visible_tempdir();
    // Configured `tool` replaces every detected one: this agent has no tools.
    let _bare = agent(&server, work.path(), "bare", &["tool=none"]).await;
    let finished = run(&server, go_job(&server, cache.path()).await).await;
    assert_eq!(finished.result(), JobResult::Error, "{finished:?}");
    assert!(finished.message.contains("has go"), "{}", finished.message);
    assert!(finished.message.contains("tool=go"), "{}", finished.message);
}

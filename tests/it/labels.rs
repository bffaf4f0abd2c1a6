//! Job labels (issue 15): `tessera run --label KEY=VALUE` and the CI system's environment label
//! a job; `tessera status` and `--json` show them; `name` defaults to the runner and the
//! command; bad labels are refused by the client (exit 2) and by the coordinator
//! (INVALID_ARGUMENT naming the label) whoever sends them.

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tessera_proto::tessera::v1::{JobSpec, SubmitJobRequest};
use tessera_tests::{AgentProcess, ServerProcess, visible_tempdir};

use super::metrics::{QUICK_SUITE, suite_run, tessera};

fn run(dir: &Path, endpoint: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let project = dir.join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("suite.sh"), QUICK_SUITE).unwrap();
    let flags: Vec<&str> = ["--json"].iter().chain(extra).copied().collect();
    let mut command = suite_run(dir, &project, endpoint, &flags);
    for (name, _) in std::env::vars() {
        // This test's own CI must not label the jobs it checks.
        if ["GITHUB_", "GITLAB_", "CI_", "BUILDKITE", "JENKINS_"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied()).output().unwrap()
}

fn submitted(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .to_owned();
    serde_json::from_str(&line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_travel_with_the_job_and_bad_ones_are_refused() {
    let tmp = visible_tempdir();
    let dir = tmp.path();
    let server = ServerProcess::start(&dir.join("data"), &[]);
    let endpoint = server.endpoint();
    let _agent =
        AgentProcess::start_connected(&endpoint, &dir.join("agent"), "labels", 2, &[]).await;

    let first = submitted(&run(
        dir,
        &endpoint,
        &["--label", "team=infra", "--label", "branch=feature/x"],
        &[],
    ));
    assert_eq!(first["event"], "submitted");
    assert_eq!(first["labels"]["team"], "infra");
    assert_eq!(first["labels"]["branch"], "feature/x");
    assert_eq!(first["labels"]["name"], "command: sh suite.sh run {tests}");
    let named = submitted(&run(dir, &endpoint, &["--label", "name=nightly"], &[]));
    assert_eq!(named["labels"]["name"], "nightly");
    // In GitHub Actions the branch, commit and pipeline come from its environment; a --label
    // of the same key wins.
    let github = [
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_REF_NAME", "main"),
        ("GITHUB_SHA", "0123abcd"),
        ("GITHUB_WORKFLOW", "ci"),
        ("GITHUB_SERVER_URL", "https://github.com"),
        ("GITHUB_REPOSITORY", "acme/widgets"),
        ("GITHUB_RUN_ID", "42"),
    ];
    let ci = submitted(&run(dir, &endpoint, &["--label", "pipeline=mine"], &github));
    assert_eq!(ci["labels"]["ci"], "github-actions");
    assert_eq!(ci["labels"]["branch"], "main");
    assert_eq!(ci["labels"]["commit"], "0123abcd");
    assert_eq!(
        ci["labels"]["pipeline_url"],
        "https://github.com/acme/widgets/actions/runs/42"
    );
    assert_eq!(ci["labels"]["pipeline"], "mine");

    let out = tessera(dir, &["status", "--coordinator", &endpoint, "--json"], None)
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == first["job_id"])
        .expect("the first job in status");
    assert_eq!(job["labels"]["team"], "infra");
    assert_eq!(job["labels"]["name"], "command: sh suite.sh run {tests}");
    let out = tessera(dir, &["status", "--coordinator", &endpoint], None)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("branch=feature/x team=infra") && table.contains("nightly"),
        "{table}"
    );

    // The client refuses a bad label before it uploads anything.
    for bad in ["Team=x", "novalue", "k=a\u{7}b"] {
        let out = run(dir, &endpoint, &["--label", bad], &[]);
        assert_eq!(out.status.code(), Some(2), "--label {bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--label"));
    }
    // The coordinator refuses one from any client, naming it.
    let mut jobs = JobsClient::connect(endpoint.clone()).await.unwrap();
    let spec = JobSpec {
        labels: [("Bad Key".to_owned(), "v".to_owned())].into(),
        ..Default::default()
    };
    let status = jobs
        .submit(SubmitJobRequest { spec: Some(spec) })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("label key \"Bad Key\""),
        "{}",
        status.message()
    );
}

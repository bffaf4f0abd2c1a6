//! Test-suite jobs end to end through `tessera.v1.Jobs`: a coordinator, real `tessera agent`
//! processes, and the example suites run by their real tools. Each test checks what a client
//! sees: per-test outcomes (flaky after a retry), the cached re-run, cancellation, bad specs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tessera_cas::client::CasClient;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_proto::reapi::command::EnvironmentVariable;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tessera_proto::tessera::v1::{
    CancelJobRequest, JobEvent, JobResult, JobSpec, StatusRequest, SubmitJobRequest, TestOutcome,
    WatchJobRequest, job_event::Kind,
};
use tessera_runners::{CommandRunner, RunnerConfig};
use tessera_tests::{
    AgentProcess, TestServer, in_ci, lines, poll_until, run_job, upload_dir, wait_job_event,
    watch_job_to_end,
};
use tonic::Code;
use tonic::transport::Channel;

/// A job running `sh NAME.sh list` and `sh NAME.sh run <ids>` from `script`, uploaded through
/// `client`, at exec root `/tmp/tessera-it/NAME`, with `PATH` set.
async fn script_job(client: &CasClient, name: &str, script: &str) -> JobSpec {
    let dir = tempfile::tempdir().expect("suite dir");
    let file = format!("{name}.sh");
    std::fs::write(dir.path().join(&file), script).expect("write suite");
    let root = upload_dir(client, dir.path()).await;
    let exec_root = format!("/tmp/tessera-it/{name}");
    let runner = CommandRunner::new(
        &exec_root,
        vec!["sh".into(), file.clone(), "list".into()],
        vec!["sh".into(), file, "run".into(), "{tests}".into()],
    )
    .expect("runner");
    JobSpec {
        digest_function: DigestFunction::Sha256.to_proto(),
        input_root_digest: Some(root.to_proto()),
        runner_json: serde_json::to_string(&RunnerConfig::Command(runner)).expect("json"),
        exec_root,
        environment: env(&[("PATH", "/usr/bin:/bin")]),
        ..Default::default()
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<EnvironmentVariable> {
    pairs
        .iter()
        .map(|(name, value)| EnvironmentVariable {
            name: (*name).to_owned(),
            value: (*value).to_owned(),
        })
        .collect()
}

/// A job spec running `examples/command-suite` from `root` at `exec_root`.
fn command_suite_spec(root: Digest, exec_root: &str, state_dir: &Path) -> JobSpec {
    let runner = CommandRunner::new(
        exec_root,
        vec!["sh".into(), "suite.sh".into(), "list".into()],
        vec![
            "sh".into(),
            "suite.sh".into(),
            "run".into(),
            "--junit".into(),
            "{junit}".into(),
            "{tests}".into(),
        ],
    )
    .expect("runner");
    JobSpec {
        digest_function: DigestFunction::Sha256.to_proto(),
        input_root_digest: Some(root.to_proto()),
        runner_json: serde_json::to_string(&RunnerConfig::Command(runner)).expect("json"),
        exec_root: exec_root.to_owned(),
        environment: env(&[
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            (
                "TESSERA_EXAMPLE_STATE_DIR",
                state_dir.to_str().expect("utf-8"),
            ),
        ]),
        retries: 1,
        submitter: "jobs-test".into(),
        title: "sh suite.sh".into(),
        ..Default::default()
    }
}

/// Final outcome per test id (`group name`), and whether it was cached.
fn finals(events: &[JobEvent]) -> BTreeMap<String, (TestOutcome, bool)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Test(t)) if t.r#final => {
                let test = t.test.clone().unwrap_or_default();
                let id = if test.group.is_empty() {
                    test.name
                } else {
                    format!("{} {}", test.group, test.name)
                };
                Some((id, (t.outcome(), t.cached)))
            }
            _ => None,
        })
        .collect()
}

struct Cluster {
    server: TestServer,
    _agents: Vec<AgentProcess>,
    _work: tempfile::TempDir,
}

async fn cluster(agents: usize, slots: u32) -> Cluster {
    let server = TestServer::start().await;
    let work = tempfile::tempdir().expect("work dir");
    let agents: Vec<AgentProcess> = (0..agents)
        .map(|i| {
            AgentProcess::start(
                &server.endpoint,
                &work.path().join(format!("agent-{i}")),
                &format!("agent-{i}"),
                slots,
                &[],
            )
        })
        .collect();
    for agent in &agents {
        agent
            .log
            .wait_for(lines::AGENT_CONNECTED, Duration::from_secs(30))
            .await;
    }
    let cluster = Cluster {
        server,
        _agents: agents,
        _work: work,
    };
    let mut jobs = JobsClient::new(cluster.server.channel().await);
    // No event says "the scheduler lists it", but it registers an agent before welcoming it,
    // so this normally holds at the first look.
    poll_until(
        "every agent in Status",
        Duration::from_secs(10),
        async || {
            let status = jobs
                .status(StatusRequest {})
                .await
                .expect("status")
                .into_inner();
            (status.agents.len() == cluster._agents.len()).then_some(())
        },
    )
    .await;
    cluster
}

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// State directories must survive the agent's private /tmp.
fn state_dir() -> tempfile::TempDir {
    tessera_tests::visible_tempdir()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_suite_runs_with_retries_then_answers_from_cache() {
    let cluster = cluster(2, 2).await;
    let mut jobs = JobsClient::new(cluster.server.channel().await);
    let root = cluster
        .server
        .upload_dir(&example("command-suite"), DigestFunction::Sha256)
        .await;
    let state = state_dir();
    let exec_root = "/tmp/tessera-it/command-suite";

    let (events, finished) =
        run_job(&mut jobs, command_suite_spec(root, exec_root, state.path())).await;
    let outcomes = finals(&events);
    let expected: BTreeMap<String, (TestOutcome, bool)> = [
        ("env::flaky_once", TestOutcome::Flaky),
        ("env::skipped", TestOutcome::Skipped),
        ("math::add", TestOutcome::Passed),
        ("math::add_many", TestOutcome::Passed),
        ("math::slow_sum", TestOutcome::Passed),
        ("math::wrong_answer", TestOutcome::Failed),
    ]
    .into_iter()
    .map(|(id, outcome)| (id.to_owned(), (outcome, false)))
    .collect();
    assert_eq!(outcomes, expected, "{events:#?}");
    assert_eq!(finished.result(), JobResult::Failed, "{finished:?}");
    assert_eq!(
        (
            finished.passed,
            finished.failed,
            finished.skipped,
            finished.flaky
        ),
        (3, 1, 1, 1)
    );
    // The command runner starts one process per batch, the retry's batch included.
    assert!(finished.batches >= 2, "{finished:?}");
    assert_eq!(finished.tool_startups, finished.batches, "{finished:?}");
    // The failing test ran twice (one retry), with its output each time.
    let wrong: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Test(t))
                if t.test
                    .as_ref()
                    .is_some_and(|r| r.name == "math::wrong_answer") =>
            {
                Some(t.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(wrong.len(), 2, "{wrong:#?}");
    assert!(!wrong[0].r#final && wrong[1].r#final);
    assert_ne!(
        wrong[0].agent, wrong[1].agent,
        "a retry goes to another agent where possible"
    );
    assert!(
        wrong[1].output.contains("expected 5, got 4"),
        "{}",
        wrong[1].output
    );
    let flaky = events
        .iter()
        .find_map(|e| match &e.kind {
            Some(Kind::Test(t)) if t.outcome() == TestOutcome::Flaky => Some(t.clone()),
            _ => None,
        })
        .expect("flaky event");
    assert_eq!(flaky.failed_attempts.len(), 1);
    assert!(flaky.failed_attempts[0].contains("first run fails on purpose"));

    // Unchanged re-run: clean passes and skips come from the cache (a skip is cached like a
    // pass); the flaky test (never cached) and the failing one run again.
    let (events, finished) =
        run_job(&mut jobs, command_suite_spec(root, exec_root, state.path())).await;
    let outcomes = finals(&events);
    for id in ["math::add", "math::add_many", "math::slow_sum"] {
        assert_eq!(
            outcomes[id],
            (TestOutcome::Passed, true),
            "{id}: {events:#?}"
        );
    }
    assert_eq!(outcomes["env::flaky_once"], (TestOutcome::Passed, false));
    assert_eq!(outcomes["math::wrong_answer"], (TestOutcome::Failed, false));
    assert_eq!(outcomes["env::skipped"], (TestOutcome::Skipped, true));
    assert_eq!(finished.cached, 4);
    assert!(
        events.iter().any(|e| matches!(&e.kind, Some(Kind::Phase(p)) if p.phase() == tessera_proto::tessera::v1::JobPhase::Listing)),
        "the list step still runs (answered by the action cache)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_stops_its_work_and_says_so() {
    let cluster = cluster(1, 2).await;
    let mut jobs = JobsClient::new(cluster.server.channel().await);
    let client = cluster.server.client(DigestFunction::Sha256).await;
    let spec = script_job(
        &client,
        "slow",
        "case \"$1\" in list) echo a; echo b; echo c;; *) sleep 30;; esac\n",
    )
    .await;
    let id = jobs
        .submit(SubmitJobRequest { spec: Some(spec) })
        .await
        .expect("submit")
        .into_inner()
        .job_id;
    // Wait until tests are running on the agent (the job's progress counts busy slots once
    // all three are planned), then cancel.
    wait_job_event(
        &mut jobs,
        &id,
        "progress with a busy slot",
        Duration::from_secs(60),
        |e| matches!(&e.kind, Some(Kind::Progress(p)) if p.total == 3 && p.busy_slots > 0),
    )
    .await;
    let started = std::time::Instant::now();
    let cancelled = jobs
        .cancel(CancelJobRequest { job_id: id.clone() })
        .await
        .expect("cancel")
        .into_inner();
    assert!(cancelled.cancelled);
    let (events, finished) = watch_job_to_end(&mut jobs, &id).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "cancel took {:?}",
        started.elapsed()
    );
    assert_eq!(finished.result(), JobResult::Cancelled, "{events:#?}");
    assert_eq!(finished.not_run, 3);
    let outcomes = finals(&events);
    assert!(
        outcomes.values().all(|(o, _)| *o == TestOutcome::Cancelled),
        "{outcomes:?}"
    );
    // The agent's slots are free again. Polled: the job has ended, so no job event follows,
    // and the scheduler announces no lease release.
    poll_until(
        "free agent slots after the cancel",
        Duration::from_secs(10),
        async || {
            let status = jobs
                .status(StatusRequest {})
                .await
                .expect("status")
                .into_inner();
            status.agents.iter().all(|a| a.busy == 0).then_some(())
        },
    )
    .await;
}

/// Changes one field of a good spec.
type Mutation = Box<dyn Fn(&mut JobSpec)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_job_specs_are_refused_with_the_field_named() {
    let server = TestServer::start().await;
    let mut jobs = JobsClient::new(server.channel().await);
    let root = server
        .upload_dir(&example("command-suite"), DigestFunction::Sha256)
        .await;
    let state = state_dir();
    let good = command_suite_spec(root, "/tmp/tessera-it/x", state.path());
    let cases: Vec<(&str, Mutation, Code)> = vec![
        (
            "runner_json",
            Box::new(|s| s.runner_json = "{\"kind\":\"rake\"}".into()),
            Code::InvalidArgument,
        ),
        (
            "exec_root",
            Box::new(|s| s.exec_root = "relative/path".into()),
            Code::InvalidArgument,
        ),
        (
            "exec_root",
            Box::new(|s| s.exec_root = "/tmp/../etc".into()),
            Code::InvalidArgument,
        ),
        (
            "input_root_digest",
            Box::new(|s| s.input_root_digest = None),
            Code::InvalidArgument,
        ),
        (
            "input_root_digest",
            Box::new(|s| {
                s.input_root_digest =
                    Some(DigestFunction::Sha256.digest_of(b"not uploaded").to_proto());
            }),
            Code::FailedPrecondition,
        ),
        (
            "environment",
            Box::new(|s| s.environment.push(s.environment[0].clone())),
            Code::InvalidArgument,
        ),
        (
            "priority",
            Box::new(|s| s.priority = 5000),
            Code::InvalidArgument,
        ),
        (
            "persist",
            Box::new(|s| s.persist = vec!["../up".into()]),
            Code::InvalidArgument,
        ),
        (
            "instance_name",
            Box::new(|s| s.instance_name = "a/../b".into()),
            Code::InvalidArgument,
        ),
    ];
    for (field, mutate, code) in cases {
        let mut spec = good.clone();
        mutate(&mut spec);
        let err = jobs
            .submit(SubmitJobRequest { spec: Some(spec) })
            .await
            .expect_err(field);
        assert_eq!(err.code(), code, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let err = jobs
        .watch(WatchJobRequest {
            job_id: "nope".into(),
            after_seq: 0,
        })
        .await
        .expect_err("unknown job");
    assert_eq!(err.code(), Code::NotFound);
    let _ = in_ci();
}

/// Variables a cargo build on this machine needs.
fn cargo_env(exec_root: &str, state: &Path) -> Vec<EnvironmentVariable> {
    let mut vars: Vec<(String, String)> = [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
    ]
    .iter()
    .filter_map(|name| std::env::var(name).ok().map(|v| ((*name).to_owned(), v)))
    .collect();
    vars.push(("CARGO_TARGET_DIR".into(), format!("{exec_root}/target")));
    vars.push((
        "TESSERA_EXAMPLE_STATE_DIR".into(),
        state.to_str().expect("utf-8").to_owned(),
    ));
    vars.sort();
    vars.into_iter()
        .map(|(name, value)| EnvironmentVariable { name, value })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cargo_suite_is_built_once_and_its_binaries_run_on_every_agent() {
    if std::process::Command::new("cargo")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(!in_ci(), "cargo is required under CI");
        return;
    }
    let cluster = cluster(2, 2).await;
    let mut jobs = JobsClient::new(cluster.server.channel().await);
    let root = cluster
        .server
        .upload_dir(&example("rust-suite"), DigestFunction::Sha256)
        .await;
    let state = state_dir();
    let exec_root = "/tmp/tessera-it/rust-suite";
    let runner = tessera_runners::CargoTestRunner::new(exec_root);
    let spec = JobSpec {
        digest_function: DigestFunction::Sha256.to_proto(),
        input_root_digest: Some(root.to_proto()),
        runner_json: serde_json::to_string(&RunnerConfig::Cargo(runner)).expect("json"),
        exec_root: exec_root.to_owned(),
        environment: cargo_env(exec_root, state.path()),
        retries: 1,
        persist: vec!["target".into()],
        ..Default::default()
    };
    let (events, finished) = run_job(&mut jobs, spec.clone()).await;
    let outcomes = finals(&events);
    let expected: BTreeMap<String, (TestOutcome, bool)> = [
        ("rust-suite tests::add_small", TestOutcome::Passed),
        ("rust-suite tests::add_small_many", TestOutcome::Passed),
        ("rust-suite tests::flaky_once", TestOutcome::Flaky),
        ("rust-suite tests::ignored_test", TestOutcome::Skipped),
        ("rust-suite tests::slow_sum", TestOutcome::Passed),
        ("rust-suite tests::wrong_answer", TestOutcome::Failed),
        ("rust-suite::integration add_small", TestOutcome::Passed),
        (
            "rust-suite::integration panics_with_message",
            TestOutcome::Failed,
        ),
        (
            "rust-suite::integration slow_integration",
            TestOutcome::Passed,
        ),
    ]
    .into_iter()
    .map(|(id, outcome)| (id.to_owned(), (outcome, false)))
    .collect();
    assert_eq!(outcomes, expected, "{finished:?}");
    // Both agents ran tests from the one build.
    let agents: std::collections::BTreeSet<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Test(t)) if !t.agent.is_empty() => Some(t.agent.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(agents.len(), 2, "{agents:?}");

    // The re-run answers the prepare and list steps from the action cache and the clean
    // passes and the skip from the test cache.
    let (events, finished) = run_job(&mut jobs, spec).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.kind, Some(Kind::Phase(p)) if p.detail.contains("from cache"))),
        "{events:#?}"
    );
    assert_eq!(finished.cached, 6, "{finished:?}");
}

/// A spec for a suite of `count` tests that each sleep `seconds`.
async fn sleepy_spec(server: &TestServer, count: usize, seconds: &str, submitter: &str) -> JobSpec {
    let script = format!(
        "case \"$1\" in list) i=0; while [ $i -lt {count} ]; do echo t$i; i=$((i+1)); done;; *) sleep {seconds};; esac\n"
    );
    let spec = script_job(
        &server.client(DigestFunction::Sha256).await,
        "sleepy",
        &script,
    )
    .await;
    JobSpec {
        submitter: submitter.to_owned(),
        // Every run really runs: these tests are about slots, not the cache.
        skip_cache: true,
        ..spec
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_ci_jobs_does_not_starve_a_developer() {
    let cluster = cluster(1, 2).await;
    let mut jobs = JobsClient::new(cluster.server.channel().await);
    // Three CI jobs: 3 × 8 tests × 0.5 s = 12 s of work for 2 slots.
    let mut ci = Vec::new();
    for _ in 0..3 {
        let spec = sleepy_spec(&cluster.server, 8, "0.5", "ci-pipeline").await;
        ci.push(
            jobs.submit(SubmitJobRequest { spec: Some(spec) })
                .await
                .expect("submit")
                .into_inner()
                .job_id,
        );
    }
    // Let the flood take both slots (each CI job runs, and its progress shows the fleet's
    // slots all busy), then a developer submits two tests.
    for id in &ci {
        wait_job_event(
            &mut jobs,
            id,
            "progress with every slot busy",
            Duration::from_secs(60),
            |e| matches!(&e.kind, Some(Kind::Progress(p)) if p.total_slots == 2 && p.busy_slots == 2),
        )
        .await;
    }
    let dev = sleepy_spec(&cluster.server, 2, "0.5", "dev@laptop").await;
    let started = std::time::Instant::now();
    let (_, finished) = run_job(&mut jobs, dev).await;
    let took = started.elapsed();
    assert_eq!(finished.result(), JobResult::Passed, "{finished:?}");
    let status = jobs
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let ci_running = status
        .jobs
        .iter()
        .filter(|j| {
            ci.contains(&j.job_id) && j.phase() != tessera_proto::tessera::v1::JobPhase::Done
        })
        .count();
    assert!(ci_running > 0, "the CI flood should still be running");
    // Fair share: the developer waits for at most one CI batch per slot, not for the flood.
    assert!(
        took < Duration::from_secs(6),
        "the developer's job took {took:?}"
    );
    for id in ci {
        let (_, finished) = watch_job_to_end(&mut jobs, &id).await;
        assert_eq!(finished.result(), JobResult::Passed, "{finished:?}");
        assert_eq!(finished.passed, 8);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_job_survives_a_coordinator_crash() {
    let data = tempfile::tempdir().expect("data dir");
    let mut server = tessera_tests::ServerProcess::start(&data.path().join("coordinator"), &[]);
    let work = tempfile::tempdir().expect("work dir");
    let _agent = AgentProcess::start(&server.endpoint(), work.path(), "agent-0", 2, &[]);
    let channel = Channel::from_shared(server.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut jobs = JobsClient::new(channel);
    let client = CasClient::connect(&server.endpoint(), "", DigestFunction::Sha256)
        .await
        .expect("cas client");
    let spec = script_job(
        &client,
        "crash",
        "case \"$1\" in list) for t in a b c d e f; do echo $t; done;; *) sleep 1;; esac\n",
    )
    .await;
    let id = jobs
        .submit(SubmitJobRequest { spec: Some(spec) })
        .await
        .expect("submit")
        .into_inner()
        .job_id;
    // A client follows the job until the first result is in; then the coordinator is killed
    // without warning and started again.
    let mut stream = jobs
        .watch(WatchJobRequest {
            job_id: id.clone(),
            after_seq: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut before = Vec::new();
    while !before
        .iter()
        .any(|e: &JobEvent| matches!(&e.kind, Some(Kind::Test(t)) if t.r#final))
    {
        let event = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .expect("a test result within a minute")
            .expect("event stream")
            .expect("the job runs");
        before.push(event);
    }
    let last_seen = before.last().map_or(0, |e| e.seq);
    server.kill();
    let mut server =
        tessera_tests::ServerProcess::start_on(server.addr, &server.data_dir.clone(), &[], &[]);
    let channel = Channel::from_shared(server.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("reconnect");
    let mut jobs = JobsClient::new(channel);

    // The client re-attaches after the last event it saw (the regression of issue 10: the
    // restarted job numbered its events from 1 again, so the client missed tests). It misses
    // nothing, and is told nothing twice: the results it saw stand, their tests do not run
    // again.
    let mut stream = jobs
        .watch(WatchJobRequest {
            job_id: id.clone(),
            after_seq: last_seen,
        })
        .await
        .expect("re-attach")
        .into_inner();
    let mut after = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("the job ends within a minute")
        .expect("event stream")
    {
        after.push(event);
    }
    assert!(after.iter().all(|e| e.seq > last_seen), "{after:#?}");
    let seen_before = finals(&before);
    let seen_after = finals(&after);
    assert!(
        seen_before.keys().all(|t| !seen_after.contains_key(t)),
        "reported again: before {seen_before:?}, after {seen_after:?}"
    );
    assert!(
        !after.iter().any(|e| matches!(&e.kind, Some(Kind::Test(t))
            if t.test.as_ref().is_some_and(|r| seen_before.contains_key(&r.name)))),
        "a test whose result the client saw ran again: {after:#?}"
    );
    assert_eq!(seen_before.len() + seen_after.len(), 6, "{after:#?}");
    let finished = after
        .iter()
        .find_map(|e| match &e.kind {
            Some(Kind::Finished(f)) => Some(f.clone()),
            _ => None,
        })
        .expect("the finished event");
    assert_eq!(finished.result(), JobResult::Passed, "{after:#?}");
    assert_eq!(finished.passed, 6, "{finished:?}");

    // A client that watches from the start gets every test exactly once too.
    let (events, finished) = watch_job_to_end(&mut jobs, &id).await;
    assert_eq!(finished.passed, 6, "{finished:?}");
    assert_eq!(finals(&events).len(), 6);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(&e.kind, Some(Kind::Test(t)) if t.r#final))
            .count(),
        6,
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.kind, Some(Kind::Log(l)) if l.text.contains("restarted"))),
        "{events:#?}"
    );
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_build_fails_the_job_with_its_log_and_is_not_cached() {
    let cluster = cluster(1, 1).await;
    let mut jobs = JobsClient::new(cluster.server.channel().await);
    let root = cluster
        .server
        .upload_dir(&example("command-suite"), DigestFunction::Sha256)
        .await;
    let state = state_dir();
    let mut spec = command_suite_spec(root, "/tmp/tessera-it/broken", state.path());
    let mut runner: RunnerConfig = serde_json::from_str(&spec.runner_json).expect("runner");
    if let RunnerConfig::Command(command) = &mut runner {
        command.prepare = Some(vec![
            "sh".into(),
            "-c".into(),
            "echo 'error[E0425]: cannot find value' >&2; exit 101".into(),
        ]);
    }
    spec.runner_json = serde_json::to_string(&runner).expect("json");
    for run in 0..2 {
        let (events, finished) = run_job(&mut jobs, spec.clone()).await;
        assert_eq!(finished.result(), JobResult::Error, "{events:#?}");
        assert!(
            finished.message.contains("prepare step failed"),
            "{}",
            finished.message
        );
        assert!(finished.log.contains("error[E0425]"), "{}", finished.log);
        assert!(
            !events.iter().any(
                |e| matches!(&e.kind, Some(Kind::Phase(p)) if p.detail.contains("from cache"))
            ),
            "run {run}: a failed prepare step must not be cached: {events:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_stream_per_test_while_their_batch_runs() {
    let cluster = cluster(1, 1).await;
    let mut jobs = JobsClient::new(cluster.server.channel().await);
    // Six tests without history plan as one-second estimates; the first batch takes three
    // of them: a1 and a2 pass at once, a3 sleeps.
    let client = cluster.server.client(DigestFunction::Sha256).await;
    let spec = script_job(
        &client,
        "stream",
        "case \"$1\" in list) for t in a1 a2 a3 a4 a5 a6; do echo $t; done;; run) [ \"$2\" = a3 ] && sleep 3; exit 0;; esac\n",
    )
    .await;
    let spec = JobSpec {
        skip_cache: true,
        ..spec
    };
    let (events, finished) = run_job(&mut jobs, spec).await;
    assert_eq!(finished.result(), JobResult::Passed, "{events:#?}");
    let at = |name: &str| {
        events
            .iter()
            .find_map(|e| match &e.kind {
                Some(Kind::Test(t)) if t.test.as_ref().is_some_and(|r| r.name == name) => {
                    Some(e.elapsed_ms)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no event for {name}: {events:#?}"))
    };
    // a1 is reported when it ends, not when its batch (held up by a3) ends.
    assert!(
        at("a1") + 2_000 < at("a3"),
        "a1 at {} ms, a3 at {} ms",
        at("a1"),
        at("a3")
    );
}

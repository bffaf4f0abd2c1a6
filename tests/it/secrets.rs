//! Secrets (`tessera run --secret-env`) and trust domains end to end, with a real `tessera
//! coordinator` and `tessera agent`: a secret's value reaches the steps and nothing else (not
//! the coordinator's data directory, the CAS included, not the agent's work directory, not a
//! log, not an event), and only a keyed hash of it enters cache keys; what an agent keeps
//! between jobs (a persisted directory) is never shared between trust domains (named by the
//! coordinator from the submitter's token).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use tessera_cas::client::CasClient;
use tessera_cas::digest::DigestFunction;
use tessera_net::client::{ClientAuth, Link, Token};
use tessera_proto::reapi::command::EnvironmentVariable;
use tessera_proto::tessera::v1::admin_client::AdminClient;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tessera_proto::tessera::v1::{
    CreateTokenRequest, JobEvent, JobFinished, JobResult, JobSpec, Role, SecretEnv,
    SubmitJobRequest, TestOutcome, WatchJobRequest, job_event::Kind,
};
use tessera_runners::{CommandRunner, RunnerConfig};
use tessera_tests::{
    AgentProcess, ServerProcess, free_port, run_job, upload_dir, wait_job_event, watch_job_to_end,
};
use tonic::transport::Channel;

/// The secret: distinctive enough that finding its bytes anywhere means it leaked.
const SECRET: &str = "tsr-e2e-secret-5c1f0d7a-value";
/// A second value, for the run that must miss the cache.
const OTHER_SECRET: &str = "tsr-e2e-secret-93be44c2-other";

fn env(pairs: &[(&str, &str)]) -> Vec<EnvironmentVariable> {
    pairs
        .iter()
        .map(|(name, value)| EnvironmentVariable {
            name: (*name).to_owned(),
            value: (*value).to_owned(),
        })
        .collect()
}

/// A job of one test, `check`, running `sh suite.sh ...` from `script` at exec root
/// `/tmp/tessera-it/NAME`, with `prepare` as its prepare command's argument when given.
async fn suite_job(cas: &CasClient, name: &str, script: &str, prepare: bool) -> JobSpec {
    let dir = tempfile::tempdir().expect("suite dir");
    std::fs::write(dir.path().join("suite.sh"), script).expect("write suite");
    let root = upload_dir(cas, dir.path()).await;
    let exec_root = format!("/tmp/tessera-it/{name}");
    let sh = |verb: &str| vec!["sh".to_owned(), "suite.sh".to_owned(), verb.to_owned()];
    let mut runner = CommandRunner::new(&exec_root, sh("list"), {
        let mut run = sh("run");
        run.push("{tests}".to_owned());
        run
    })
    .expect("runner");
    if prepare {
        runner = runner.prepare(sh("prepare"));
    }
    JobSpec {
        digest_function: DigestFunction::Sha256.to_proto(),
        input_root_digest: Some(root.to_proto()),
        runner_json: serde_json::to_string(&RunnerConfig::Command(runner)).expect("json"),
        exec_root,
        environment: env(&[("PATH", "/usr/bin:/bin")]),
        submitter: "secrets-test".to_owned(),
        ..Default::default()
    }
}

/// Final outcome and whether it was cached, per test name.
fn finals(events: &[JobEvent]) -> BTreeMap<String, (TestOutcome, bool)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Test(t)) if t.r#final => Some((
                t.test.clone().unwrap_or_default().name,
                (t.outcome(), t.cached),
            )),
            _ => None,
        })
        .collect()
}

/// Every regular file under `dir` (symlinks not followed) whose bytes contain `needle`.
pub(super) fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file()
                && let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

async fn jobs_client(endpoint: &str) -> JobsClient<Channel> {
    JobsClient::new(
        Channel::from_shared(endpoint.to_owned())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_the_steps_and_is_stored_nowhere() {
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
    let mut jobs = jobs_client(&endpoint).await;

    // The suite knows only a hash of the value it expects, so the input root (in the CAS)
    // does not hold the value either.
    let expected = DigestFunction::Sha256
        .digest_of(SECRET.as_bytes())
        .hash_hex();
    let script = format!(
        "case \"$1\" in\n\
         list) echo check;;\n\
         *) if [ \"$(printf %s \"$TOKEN\" | sha256sum | cut -d' ' -f1)\" = \"{expected}\" ]; \
         then echo 'TOKEN is the expected value'; \
         else echo 'TOKEN is not the expected value'; exit 1; fi;;\n\
         esac\n"
    );
    let spec = suite_job(&cas, "secrets", &script, false).await;
    let with_secret = |value: &str| JobSpec {
        secrets: vec![SecretEnv {
            name: "TOKEN".to_owned(),
            value: value.to_owned(),
        }],
        ..spec.clone()
    };

    // The step sees the value.
    let (events, finished) = run_job(&mut jobs, with_secret(SECRET)).await;
    assert_eq!(finished.result(), JobResult::Passed, "{finished:?}");
    assert_eq!(
        finals(&events),
        BTreeMap::from([("check".to_owned(), (TestOutcome::Passed, false))])
    );
    let mut all_events = format!("{events:?}{finished:?}");

    // The same value: answered from the cache.
    let (events, finished) = run_job(&mut jobs, with_secret(SECRET)).await;
    assert_eq!(finished.cached, 1, "{finished:?}");
    assert_eq!(
        finals(&events),
        BTreeMap::from([("check".to_owned(), (TestOutcome::Passed, true))])
    );
    all_events += &format!("{events:?}{finished:?}");

    // Another value: a new cache key, so the test runs, and sees the new value.
    let (events, finished) = run_job(&mut jobs, with_secret(OTHER_SECRET)).await;
    assert_eq!(finished.cached, 0, "{finished:?}");
    assert_eq!(
        finals(&events),
        BTreeMap::from([("check".to_owned(), (TestOutcome::Failed, false))])
    );
    all_events += &format!("{events:?}{finished:?}");

    // Stopped cleanly, so everything either meant to keep is on disk.
    server.signal_and_wait(Signal::SIGTERM, Duration::from_secs(30));
    agent.signal(Signal::SIGTERM);
    agent.wait_exit(Duration::from_secs(30));
    // The search reads the stores: it finds the suite (by the hash it holds) and the steps'
    // Commands (by their placeholders).
    assert!(!files_containing(&data_dir, expected.as_bytes()).is_empty());
    assert!(!files_containing(&data_dir, b"tessera-secret:").is_empty());
    for value in [SECRET, OTHER_SECRET] {
        assert!(!all_events.contains(value), "an event shows {value}");
        assert_eq!(server.log.count(value), 0, "the coordinator logged {value}");
        assert_eq!(agent.log.count(value), 0, "the agent logged {value}");
        let stored = files_containing(&data_dir, value.as_bytes());
        assert!(
            stored.is_empty(),
            "the coordinator stored {value}: {stored:?}"
        );
        let kept = files_containing(&agent.work_dir, value.as_bytes());
        assert!(kept.is_empty(), "the agent kept {value}: {kept:?}");
    }
}

/// A link to `endpoint` sending `token`.
async fn link(endpoint: &str, token: &str) -> Link {
    let auth = ClientAuth {
        token: Some(Token::new(token.to_owned()).expect("a valid token")),
        ..ClientAuth::default()
    };
    let channel = tessera_net::client::endpoint(endpoint, &auth)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    tessera_net::client::link(channel, &auth)
}

/// Creates a token of `role` named `name` with the `admin` token; returns its secret.
async fn create_token(endpoint: &str, admin: &str, role: Role, name: &str) -> String {
    AdminClient::new(link(endpoint, admin).await)
        .create_token(CreateTokenRequest {
            name: name.to_owned(),
            role: role as i32,
            ..Default::default()
        })
        .await
        .expect("create a token")
        .into_inner()
        .token
}

/// Submits `spec` through `jobs` and returns its events and final event (one minute at most).
async fn run_job_as(jobs: &mut JobsClient<Link>, spec: JobSpec) -> (Vec<JobEvent>, JobFinished) {
    let job_id = jobs
        .submit(SubmitJobRequest { spec: Some(spec) })
        .await
        .expect("submit the job")
        .into_inner()
        .job_id;
    let mut stream = jobs
        .watch(WatchJobRequest {
            job_id: job_id.clone(),
            after_seq: 0,
        })
        .await
        .expect("watch the job")
        .into_inner();
    let mut events = Vec::new();
    let finished = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(event) = stream.message().await.expect("job event stream") {
            events.push(event.clone());
            if let Some(Kind::Finished(finished)) = event.kind {
                return finished;
            }
        }
        panic!("job {job_id}: the stream ended without a finished event: {events:#?}");
    })
    .await
    .unwrap_or_else(|_| panic!("job {job_id} did not finish within a minute"));
    (events, finished)
}

/// The coordinator names each job's trust domain from its submitter's token (role and
/// instance scope), whatever the spec says: a developer's and a ci token's jobs never share
/// what the agent keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_directory_is_never_shared_between_trust_domains() {
    let dir = tessera_tests::visible_tempdir();
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, &["--auth", "tokens"]);
    let endpoint = server.endpoint();
    let admin = std::fs::read_to_string(data_dir.join("admin-token")).expect("admin token");
    let admin = admin.trim();
    let agent_token = create_token(&endpoint, admin, Role::Agent, "agent-0").await;
    let developer = create_token(&endpoint, admin, Role::Developer, "dev").await;
    let ci = create_token(&endpoint, admin, Role::Ci, "ci").await;
    let token_file = dir.path().join("agent.token");
    std::fs::write(&token_file, &agent_token).expect("write the agent token");
    let _agent = AgentProcess::start_connected(
        &endpoint,
        &dir.path().join("agent"),
        "agent-0",
        1,
        &["--token-file", token_file.to_str().expect("utf-8 path")],
    )
    .await;
    let cas = CasClient::from_link(
        link(&endpoint, &developer).await,
        "",
        DigestFunction::Sha256,
    )
    .await
    .expect("cas client");

    // The prepare step fails if an earlier job left a file in its kept directory, and leaves
    // one itself.
    let script = "case \"$1\" in\n\
         prepare) if [ -e cache/planted ]; then echo \"found a planted file from $(cat cache/planted)\"; exit 1; fi; \
         echo \"$TESSERA_TRUST_DOMAIN\" > cache/planted;;\n\
         list) echo ok;;\n\
         *) true;;\n\
         esac\n";
    let spec = JobSpec {
        persist: vec!["cache".to_owned()],
        ..suite_job(&cas, "trust-domains", script, true).await
    };
    // What a client claims is replaced by the token's domain.
    let run = |run: &str| JobSpec {
        trust_domain: "ci:*".to_owned(),
        environment: env(&[("PATH", "/usr/bin:/bin"), ("RUN", run)]),
        ..spec.clone()
    };
    let mut as_developer = JobsClient::new(link(&endpoint, &developer).await);
    let mut as_ci = JobsClient::new(link(&endpoint, &ci).await);

    let (_, first) = run_job_as(&mut as_developer, run("1")).await;
    assert_eq!(first.result(), JobResult::Passed, "{first:?}");

    // Another domain: its prepare step is not the developer's cached one, and its kept
    // directory is its own.
    let (events, ci_job) = run_job_as(&mut as_ci, run("1")).await;
    assert_eq!(ci_job.result(), JobResult::Passed, "{ci_job:?}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(&e.kind, Some(Kind::Phase(p)) if p.detail.contains("from cache"))),
        "the ci job's prepare step was answered with the developer's result: {events:#?}"
    );

    // The same domain (a new run, so its prepare step runs) finds what the first job planted.
    let (_, again) = run_job_as(&mut as_developer, run("2")).await;
    assert_eq!(again.result(), JobResult::Error, "{again:?}");
    assert!(
        again.log.contains("found a planted file from developer:*"),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_restored_after_a_restart_fails_rather_than_run_without_its_secrets() {
    let dir = tessera_tests::visible_tempdir();
    let data_dir = dir.path().join("data");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut server = ServerProcess::start_on(addr, &data_dir, &[], &[]);
    let endpoint = server.endpoint();
    let _agent =
        AgentProcess::start_connected(&endpoint, &dir.path().join("agent"), "agent-0", 1, &[])
            .await;
    let cas = CasClient::connect(&endpoint, "", DigestFunction::Sha256)
        .await
        .expect("cas client");
    let mut jobs = jobs_client(&endpoint).await;
    let script = "case \"$1\" in list) echo a; echo b;; *) sleep 5;; esac\n";
    let spec = JobSpec {
        secrets: vec![SecretEnv {
            name: "TOKEN".to_owned(),
            value: SECRET.to_owned(),
        }],
        ..suite_job(&cas, "secrets-restart", script, false).await
    };
    let id = jobs
        .submit(SubmitJobRequest { spec: Some(spec) })
        .await
        .expect("submit")
        .into_inner()
        .job_id;
    wait_job_event(
        &mut jobs,
        &id,
        "progress with a busy slot",
        Duration::from_secs(60),
        |e| matches!(&e.kind, Some(Kind::Progress(p)) if p.busy_slots > 0),
    )
    .await;
    server.kill();
    let server = ServerProcess::start_on(addr, &data_dir, &[], &[]);
    let mut jobs = jobs_client(&server.endpoint()).await;
    let (events, finished) = watch_job_to_end(&mut jobs, &id).await;
    assert_eq!(finished.result(), JobResult::Error, "{finished:?}");
    assert!(
        finished
            .message
            .contains("secret values are not kept across coordinator restarts; run the job again"),
        "{finished:?}"
    );
    assert!(!format!("{events:?}").contains(SECRET));
    assert_eq!(server.log.count(SECRET), 0);
    assert!(files_containing(&data_dir, SECRET.as_bytes()).is_empty());
}

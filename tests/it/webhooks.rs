//! Webhooks (issue 15) against a real HTTP receiver process (`tests/fixtures/
//! webhook_receiver.py`), a real coordinator configured with `[[webhooks]]` and a real agent:
//!
//! - `queue.stalled` while no agent can take the work; `job.finished` for every job,
//!   `job.failed` for the failing ones, `test.flaky` once for a test first seen flaky,
//!   `branch.broken` once when `main` goes from passing to failing (not again on the next
//!   failure) and `branch.fixed` when it passes again, `agent.lost` for a SIGKILLed agent:
//!   each once per occurrence;
//! - every body matches `deploy/webhooks/event.schema.json` (checked with Python's
//!   jsonschema) and its `X-Tessera-Signature` is what `openssl dgst -sha256 -hmac` computes,
//!   as the README shows;
//! - the receiver answers the first request 500: the same delivery comes again, same id;
//! - with the receiver down, a job's events wait in the outbox through a SIGKILL of the
//!   coordinator, and are delivered after its restart.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use tessera_tests::{AgentProcess, ServerProcess, free_port, in_ci, visible_tempdir};

use super::metrics::tessera;

const SECRET: &str = "s3cret-for-the-tests";
/// How long an expected delivery may take (retries back off from 1 s).
const DEADLINE: Duration = Duration::from_secs(30);

/// The receiver process, killed when dropped.
struct Receiver {
    child: Child,
    log: PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    /// Starts the receiver on `port`, logging to `log`; the first `fail` requests get 500.
    fn start(port: u16, log: &Path, fail: u32) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/webhook_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(log)
            .arg(fail.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening");
        Receiver {
            child,
            log: log.to_owned(),
        }
    }

    /// Every request received so far.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until a 2xx-answered delivery of `event` for which `matches` holds arrives.
    fn wait_for(&self, event: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            if let Some(found) = self.requests().into_iter().find(|r| {
                r["status"] == 200 && r["headers"]["x-tessera-event"] == event && matches(&body(r))
            }) {
                return found;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "no {event} delivery within {DEADLINE:?}; received: {:#?}",
                self.requests()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn body(request: &Value) -> Value {
    serde_json::from_str(request["body"].as_str().unwrap()).unwrap()
}

/// `sha256=` and what `openssl dgst -sha256 -hmac SECRET` prints for `body`.
fn openssl_signature(dir: &Path, body: &str) -> String {
    let file = dir.join("body.json");
    std::fs::write(&file, body).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", SECRET, "-r"])
        .arg(&file)
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    format!(
        "sha256={}",
        text.split_whitespace().next().unwrap_or_default()
    )
}

/// `tessera run --json` of the command-suite example on branch `main`: passing, or with its
/// failing test (`failing`). The flaky test flakes in a fresh `state` directory.
fn run(dir: &Path, endpoint: &str, state: &Path, branch: &str, failing: bool) -> Child {
    let project = dir.join("suite");
    if !project.exists() {
        std::fs::create_dir_all(&project).unwrap();
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/command-suite");
        std::fs::copy(example.join("suite.sh"), project.join("suite.sh")).unwrap();
    }
    let list = if failing {
        "sh suite.sh list"
    } else {
        "sh suite.sh list | grep -v wrong_answer"
    };
    tessera(dir, &["run", "--coordinator", endpoint, "--json"], None)
        .args(["--label", &format!("branch={branch}"), "--retries", "1"])
        .arg("--env")
        .arg(format!("TESSERA_EXAMPLE_STATE_DIR={}", state.display()))
        .args(["--runner", "command", "--list-command", list, "--"])
        .args(["sh", "suite.sh", "run", "--junit", "{junit}", "{tests}"])
        .current_dir(&project)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The job id and exit code of a finished run.
fn job_of(out: Output) -> (String, Option<i32>) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first: Value = stdout
        .lines()
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no submitted event: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (
        first["job_id"].as_str().unwrap().to_owned(),
        out.status.code(),
    )
}

fn python_has_jsonschema() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import jsonschema"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok || !in_ci(),
        "python3 with jsonschema is required under CI (kubernetes-validate brings it; \
         .ci/install-deps.sh)"
    );
    ok
}

#[test]
fn events_are_signed_delivered_once_each_retried_and_kept_through_a_crash() {
    if !python_has_jsonschema() {
        return;
    }
    let tmp = visible_tempdir();
    let dir = tmp.path();
    let port = free_port();
    let receiver = Receiver::start(port, &dir.join("received.jsonl"), 1);
    let config = dir.join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "queue_stall_after = \"2s\"\n\n[[webhooks]]\nurl = \"http://127.0.0.1:{port}/hooks/abc\"\n\
             secret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let data = dir.join("data");
    let config_arg = config.to_str().unwrap().to_owned();
    let mut server = ServerProcess::start_on(addr, &data, &["--config", &config_arg], &[]);
    let endpoint = server.endpoint();
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();

    // No agent yet: the first job's work waits, and the queue is reported stalled.
    let first = run(dir, &endpoint, &state, "main", false);
    let stalled = receiver.wait_for("queue.stalled", |_| true);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let agent = runtime.block_on(AgentProcess::start_connected(
        &endpoint,
        &dir.join("agent"),
        "hooked",
        2,
        &[],
    ));
    let (job_a, code) = job_of(first.wait_with_output().unwrap());
    assert_eq!(code, Some(0), "job A passes (its flaky test is retried)");
    // main: passed, failed, failed, passed.
    let (job_b, code) = job_of(
        run(dir, &endpoint, &state, "main", true)
            .wait_with_output()
            .unwrap(),
    );
    assert_eq!(code, Some(1));
    let (job_c, code) = job_of(
        run(dir, &endpoint, &state, "main", true)
            .wait_with_output()
            .unwrap(),
    );
    assert_eq!(code, Some(1));
    let (job_d, code) = job_of(
        run(dir, &endpoint, &state, "main", false)
            .wait_with_output()
            .unwrap(),
    );
    assert_eq!(code, Some(0));
    let is_job = |id: &str| {
        let id = id.to_owned();
        move |b: &Value| b["job"]["id"] == id.as_str()
    };
    receiver.wait_for("job.finished", is_job(&job_d));
    receiver.wait_for("branch.fixed", is_job(&job_d));
    receiver.wait_for("test.flaky", is_job(&job_a));
    receiver.wait_for("branch.broken", is_job(&job_b));
    receiver.wait_for("job.failed", is_job(&job_c));

    // The receiver goes down; a job's events wait in the outbox through a coordinator crash.
    drop(receiver);
    let (job_e, code) = job_of(
        run(dir, &endpoint, &state, "release", false)
            .wait_with_output()
            .unwrap(),
    );
    assert_eq!(code, Some(0));
    std::thread::sleep(Duration::from_millis(500));
    server.kill();
    let receiver = Receiver::start(port, &dir.join("received.jsonl"), 0);
    let server = ServerProcess::start_on(addr, &data, &["--config", &config_arg], &[]);
    receiver.wait_for("job.finished", is_job(&job_e));
    // The agent reconnects to the restarted coordinator, then dies.
    runtime.block_on(
        agent
            .log
            .wait_for_nth(tessera_tests::lines::AGENT_CONNECTED, 2, DEADLINE),
    );
    agent.signal(Signal::SIGKILL);
    receiver.wait_for("agent.lost", |b| b["agent"]["id"] == "hooked");
    drop(server);

    let requests = receiver.requests();
    // Every body matches the schema; every signature is the HMAC openssl computes.
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/webhooks/event.schema.json");
    let validator = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/validate_events.py");
    let checked = Command::new("python3")
        .arg(validator)
        .arg(&schema)
        .arg(dir.join("received.jsonl"))
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "schema: {}",
        String::from_utf8_lossy(&checked.stdout)
    );
    for request in &requests {
        let body = request["body"].as_str().unwrap();
        assert_eq!(
            request["headers"]["x-tessera-signature"],
            openssl_signature(dir, body).as_str(),
            "signature of {body}"
        );
        assert_eq!(
            request["headers"]["x-tessera-delivery"],
            self::body(request)["id"]
        );
        assert_eq!(request["path"], "/hooks/abc");
    }
    // The first request was answered 500 and came again with the same delivery id.
    let failed = &requests[0];
    assert_eq!(failed["status"], 500);
    let id = &failed["headers"]["x-tessera-delivery"];
    assert!(
        requests[1..]
            .iter()
            .any(|r| &r["headers"]["x-tessera-delivery"] == id && r["status"] == 200),
        "the failed delivery {id} came again"
    );
    assert_eq!(stalled["headers"]["x-tessera-event"], "queue.stalled");
    // Each event once per occurrence: distinct deliveries per event.
    let mut deliveries: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for request in &requests {
        deliveries
            .entry(
                request["headers"]["x-tessera-event"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
            .or_default()
            .insert(
                request["headers"]["x-tessera-delivery"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
    }
    let count = |event: &str| deliveries.get(event).map_or(0, BTreeSet::len);
    assert_eq!(count("job.finished"), 5, "{deliveries:#?}");
    assert_eq!(count("job.failed"), 2, "{deliveries:#?}");
    assert_eq!(count("branch.broken"), 1, "once, not on the second failure");
    assert_eq!(count("branch.fixed"), 1);
    assert_eq!(count("test.flaky"), 1);
    assert_eq!(count("queue.stalled"), 1);
    assert_eq!(count("agent.lost"), 1);
    // Nothing secret in any body.
    assert!(
        requests
            .iter()
            .all(|r| !r["body"].as_str().unwrap().contains(SECRET))
    );
}

#[test]
fn admins_add_list_and_remove_subscriptions_and_secrets_never_show() {
    let tmp = visible_tempdir();
    let dir = tmp.path();
    let config = dir.join("coordinator.toml");
    std::fs::write(
        &config,
        "[[webhooks]]\nurl = \"https://hooks.slack.com/services/T0/B0/credential\"\nformat = \"slack\"\n",
    )
    .unwrap();
    let server = ServerProcess::start(&dir.join("data"), &["--config", config.to_str().unwrap()]);
    let endpoint = server.endpoint();
    let secret_file = dir.join("hook.key");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let webhook = |args: &[&str]| {
        tessera(dir, &["webhook"], None)
            .args(args)
            .args(["--coordinator", &endpoint])
            .output()
            .unwrap()
    };
    let added = webhook(&[
        "add",
        "http://127.0.0.1:9/private/path",
        "--secret-file",
        secret_file.to_str().unwrap(),
        "--event",
        "job.failed",
        "--label",
        "branch=main",
    ]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let id = String::from_utf8_lossy(&added.stdout)
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_owned();
    let listed = webhook(&["list", "--json"]);
    let hooks: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(hooks.len(), 2, "{hooks:#?}");
    assert_eq!(hooks[0]["id"], "config-1");
    assert_eq!(hooks[0]["configured"], true);
    assert_eq!(hooks[0]["url"], "https://hooks.slack.com/…");
    assert_eq!(hooks[1]["id"], id.as_str());
    assert_eq!(hooks[1]["signed"], true);
    assert_eq!(hooks[1]["events"][0], "job.failed");
    assert_eq!(hooks[1]["labels"]["branch"], "main");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(!text.contains(SECRET) && !text.contains("credential") && !text.contains("private"));
    // Bad subscriptions are refused, naming what is wrong.
    let bad = webhook(&["add", "http://x/", "--event", "job.exploded"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("job.exploded"));
    let unsigned = webhook(&["add", "http://x/"]);
    assert_eq!(unsigned.status.code(), Some(2));
    // A configured one is removed from the file, not here.
    let configured = webhook(&["remove", "config-1"]);
    assert_ne!(configured.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&configured.stderr).contains("configuration file"));
    assert!(webhook(&["remove", &id]).status.success());
    assert_eq!(
        webhook(&["list", "--json"])
            .stdout
            .iter()
            .filter(|b| **b == b'\n')
            .count(),
        1
    );
    assert_eq!(server.log.count(SECRET), 0, "the secret is never logged");
    assert_eq!(server.log.count("credential"), 0, "nor the URL's path");
}

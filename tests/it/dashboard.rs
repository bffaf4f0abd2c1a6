//! The web dashboard (issue 16) in a real browser: Debian's chromium driven by Playwright
//! (`tests/fixtures/dashboard_browser.py`) against a real `tessera coordinator --http-listen`
//! and a real agent that ran real jobs with `tessera run`.
//!
//! This file sets the stage and judges the script's exit status; the script holds the checks:
//! - every page loads and shows what was run here: the passing, failing and flaky jobs on `/`,
//!   the failing job's tests, failure output, timeline and re-run command, the flaky test's
//!   history and its place on `/flaky`, the agent on `/fleet`, a build sent the way Bazel sends
//!   it on `/builds` and `/builds/{invocation}`; each page as JSON too;
//! - a job whose test waits on a gate file: once the gate opens, the finished test shows on the
//!   open job page within 1 s of the JSON showing it, without a reload;
//! - axe-core finds no serious or critical violation on the main pages;
//! - the skip link, the nav and the filter form work with the keyboard alone, focus visible;
//! - on a second coordinator with `--auth tokens`: the login form, the session cookie's flags,
//!   CSRF refusals, a reader offered no quarantine controls, logout.
//!
//! Screenshots of each page go to `$CARGO_TARGET_TMPDIR/dashboard/`. Without chromium or the
//! Python packages (`.ci/install-deps.sh` installs them) the test fails under CI and skips
//! otherwise.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use prost::Message;
use serde_json::Value;
use tessera_cas::client::CasClient;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_proto::REQUEST_METADATA_HEADER;
use tessera_proto::reapi::action_cache_client::ActionCacheClient;
use tessera_proto::reapi::execution_client::ExecutionClient;
use tessera_proto::reapi::{ExecuteRequest, GetActionResultRequest, RequestMetadata, ToolDetails};
use tessera_tests::{
    AgentProcess, ServerProcess, free_port, in_ci, response_of, upload_action, visible_tempdir,
    wait_exit,
};

use super::metrics::tessera;
use super::quarantine::create_token;

/// The browser Playwright drives: Debian's, since Playwright's own download is unreachable.
const CHROMIUM: &str = "/usr/bin/chromium";

/// One suite for every job here; `list SET` names the tests of one job. The ids have `/`, `::`
/// and brackets, as real ones do, so the `/tests/{key}` links must encode them.
/// `io/retry::flaps[odd]` fails on its odd runs (a counter in `$STATE`), so with `--retries 1`
/// it is flaky; `gate::opens` waits until `$GATE` exists (at most two minutes).
const SUITE: &str = "case \"$1\" in\n\
    list) case \"$2\" in\n\
      passing) echo 'math/add::steady'; echo 'math/add::zero';;\n\
      failing) echo 'math/add::steady'; echo 'math/add::broken[1]';;\n\
      flaky) echo 'io/retry::flaps[odd]';;\n\
      gated) echo 'gate::opens';;\n\
    esac;;\n\
    run) shift; for t in \"$@\"; do case \"$t\" in\n\
      'math/add::steady'|'math/add::zero') echo \"ok $t\";;\n\
      'math/add::broken[1]') echo 'broken on purpose: expected 4, got 5'; exit 1;;\n\
      'io/retry::flaps[odd]') n=$(cat \"$STATE/flaps\" 2>/dev/null || echo 0); n=$((n + 1));\n\
        echo $n > \"$STATE/flaps\";\n\
        if [ $((n % 2)) -eq 1 ]; then echo \"odd run $n fails\"; exit 1; fi;;\n\
      'gate::opens') i=0; until [ -e \"$GATE\" ]; do i=$((i + 1));\n\
        if [ $i -gt 2400 ]; then echo 'the gate never opened'; exit 1; fi; sleep 0.05; done;\n\
        echo 'the gate opened';;\n\
      *) echo \"no such test: $t\"; exit 2;;\n\
    esac; done;;\n\
    esac\n";

/// The failing test, whose output the job page must show.
const FAILING_TEST: &str = "math/add::broken[1]";
/// The flaky test, for `/tests/{key}` and `/flaky`.
const FLAKY_TEST: &str = "io/retry::flaps[odd]";
/// The test that waits on the gate.
const GATED_TEST: &str = "gate::opens";

/// Whether chromium and the Python packages are here; missing ones fail under CI.
fn browser_tools_present() -> bool {
    let python = Command::new("python3")
        .args([
            "-c",
            "import playwright.sync_api, axe_playwright_python.sync_playwright",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let chromium = Path::new(CHROMIUM).exists();
    if python && chromium {
        return true;
    }
    let missing = format!(
        "missing:{}{} (.ci/install-deps.sh installs them)",
        if chromium { "" } else { " Debian's chromium" },
        if python {
            ""
        } else {
            " python3 packages playwright, axe-playwright-python"
        }
    );
    assert!(
        !in_ci(),
        "the dashboard's browser test needs them under CI: {missing}"
    );
    eprintln!("skipping the dashboard's browser test: {missing}");
    false
}

/// One HTTP/1.1 GET of `path` on `base` (`http://HOST:PORT`) with extra header lines: the
/// status and the body.
fn http_get(base: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    tessera_tests::http_get(addr, path, headers).expect("the dashboard answers")
}

fn transcript(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A coordinator with its HTTP port on a free loopback port: it and the dashboard's base URL.
fn coordinator(data: &Path, extra: &[&str]) -> (ServerProcess, String) {
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let http_arg = http.to_string();
    let mut args = vec!["--http-listen", http_arg.as_str()];
    args.extend_from_slice(extra);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let server = ServerProcess::start_on(addr, data, &args, &[]);
    (server, format!("http://{http}"))
}

/// A project directory under `dir` holding [`SUITE`], and the state directory of its flaky test.
fn project(dir: &Path) -> (PathBuf, PathBuf) {
    let project = dir.join("widget");
    let state = dir.join("state");
    std::fs::create_dir_all(&project).expect("project dir");
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::write(project.join("suite.sh"), SUITE).expect("suite.sh");
    (project, state)
}

/// `tessera run --json --retries 1 --label suite=SET` of the tests `list SET` names, with
/// `extra_env` (`KEY=VALUE`) for the tests and `token` if auth is on; stdout piped.
fn run_set(
    dir: &Path,
    project: &Path,
    endpoint: &str,
    set: &str,
    extra_env: &[String],
    token: Option<&str>,
) -> Command {
    let label = format!("suite={set}");
    let list = format!("sh suite.sh list {set}");
    let mut command = tessera(dir, &["run", "--coordinator", endpoint, "--json"], token);
    command.args(["--retries", "1", "--label", &label]);
    for env in extra_env {
        command.args(["--env", env]);
    }
    command
        .args(["--runner", "command", "--list-command", &list, "--"])
        .args(["sh", "suite.sh", "run", "{tests}"])
        .current_dir(project)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// The job id in the first JSON line (`submitted`) of a `tessera run --json`.
fn job_id(first_line: &str) -> String {
    let event: Value = serde_json::from_str(first_line)
        .unwrap_or_else(|e| panic!("not a JSON event ({e}): {first_line:?}"));
    event["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job_id in the first event: {first_line}"))
        .to_owned()
}

/// Runs one set to its end: the job id, after checking the exit code.
fn run_to_end(mut command: Command, expected_exit: i32) -> String {
    let out = command.output().expect("tessera run");
    assert_eq!(
        out.status.code(),
        Some(expected_exit),
        "{}",
        transcript(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    job_id(stdout.lines().next().unwrap_or_default())
}

/// A `tessera run` still going: its child, and its job id once submitted.
struct RunningJob {
    child: Child,
    id: String,
}

impl RunningJob {
    /// Spawns `command` and reads its `submitted` event.
    fn start(mut command: Command) -> Self {
        let mut child = command.spawn().expect("spawn tessera run");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut first = String::new();
        stdout.read_line(&mut first).expect("read tessera run");
        if first.is_empty() {
            let mut stderr = String::new();
            let _ = child
                .stderr
                .take()
                .expect("piped stderr")
                .read_to_string(&mut stderr);
            panic!("tessera run printed no submitted event:\n{stderr}");
        }
        // The rest of the events are not needed; draining them keeps the pipe from filling.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        RunningJob {
            id: job_id(&first),
            child,
        }
    }

    /// Waits for the run to end (two minutes at most, the gated test's own bound) and checks
    /// its exit code.
    fn finish(mut self, expected_exit: i32) {
        let status = wait_exit(&mut self.child, Duration::from_secs(150))
            .unwrap_or_else(|| panic!("job {} did not end", self.id));
        assert_eq!(status.code(), Some(expected_exit), "job {}", self.id);
    }
}

/// `message` with `metadata` in the binary header where REAPI clients send it.
fn with_metadata<T>(metadata: &RequestMetadata, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert_bin(
        REQUEST_METADATA_HEADER,
        tonic::metadata::MetadataValue::from_bytes(&metadata.encode_to_vec()),
    );
    request
}

/// Executes `digest` to its end (a minute at most), with `metadata` if given; checks that the
/// command ran and exited 0.
async fn execute(
    channel: &tonic::transport::Channel,
    digest: &Digest,
    metadata: Option<&RequestMetadata>,
) {
    let message = ExecuteRequest {
        action_digest: Some(digest.to_proto()),
        ..Default::default()
    };
    let request = match metadata {
        Some(metadata) => with_metadata(metadata, message),
        None => tonic::Request::new(message),
    };
    let mut operations = ExecutionClient::new(channel.clone())
        .execute(request)
        .await
        .expect("Execute accepted")
        .into_inner();
    let response = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(op) = operations.message().await.expect("operation stream") {
            if op.done {
                return response_of(&op).expect("a done operation has a response");
            }
        }
        panic!("the operation stream ended before done");
    })
    .await
    .expect("the action ran within a minute");
    let exit = response.result.as_ref().map(|r| r.exit_code);
    assert_eq!(exit, Some(0), "the action ran: {response:?}");
}

/// A build as Bazel sends it to a remote executor, every call carrying `RequestMetadata` under
/// `invocation`, against a cache another build warmed for one of its two actions: `//gen:beta`
/// is a cache hit, `//gen:alpha` a miss that runs on an agent. Its hit ratio is 50 %.
async fn reapi_build(endpoint: &str, invocation: &str) {
    let cas = CasClient::connect(endpoint, "", DigestFunction::Sha256)
        .await
        .expect("CAS client connects");
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the coordinator");
    let mut cache = ActionCacheClient::new(channel.clone());
    for (target, warm) in [("beta", true), ("alpha", false)] {
        let script = format!("echo {target} > {target}.txt");
        let output = format!("{target}.txt");
        let digest =
            upload_action(&cas, &["sh", "-c", &script], &[output.as_str()], &[], false).await;
        if warm {
            execute(&channel, &digest, None).await;
        }
        let metadata = RequestMetadata {
            tool_details: Some(ToolDetails {
                tool_name: "bazel".to_owned(),
                tool_version: "7.4.1".to_owned(),
            }),
            action_id: digest.hash_hex(),
            tool_invocation_id: invocation.to_owned(),
            correlated_invocations_id: invocation.to_owned(),
            action_mnemonic: "Genrule".to_owned(),
            target_id: format!("//gen:{target}"),
            configuration_id: "k8-fastbuild".to_owned(),
        };
        let lookup = GetActionResultRequest {
            action_digest: Some(digest.to_proto()),
            ..Default::default()
        };
        let found = cache
            .get_action_result(with_metadata(&metadata, lookup))
            .await;
        match (warm, found) {
            (true, Ok(_)) => {}
            (false, Err(status)) if status.code() == tonic::Code::NotFound => {
                execute(&channel, &digest, Some(&metadata)).await;
            }
            (warm, found) => panic!("//gen:{target} (warm: {warm}): lookup gave {found:?}"),
        }
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser_shows_the_jobs_live_accessible_by_keyboard_and_behind_a_login()
{
    if !browser_tools_present() {
        return;
    }
    let tmp = visible_tempdir();
    let dir = tmp.path();
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).expect("screenshot dir");

    // Open: a passing job, a failing one, a flaky one, and one held open by the gate.
    let (server, base) = coordinator(&dir.join("data"), &[]);
    let endpoint = server.endpoint();
    let _agent =
        AgentProcess::start_connected(&endpoint, &dir.join("agent"), "agent-0", 2, &[]).await;
    let (project_dir, state) = project(dir);
    let state_env = vec![format!("STATE={}", state.display())];
    let run = |set: &str, env: &[String]| run_set(dir, &project_dir, &endpoint, set, env, None);
    let passing = run_to_end(run("passing", &[]), 0);
    let failing = run_to_end(run("failing", &[]), 1);
    let flaky = run_to_end(run("flaky", &state_env), 0);
    let invocation = "5bd4a4a1-ba5e-4c1d-9e0f-0da5b0a4d001";
    reapi_build(&endpoint, invocation).await;
    let gate = dir.join("gate");
    let gated = RunningJob::start(run("gated", &[format!("GATE={}", gate.display())]));

    // With auth: a ci token ran a flaky job (so /flaky offers quarantine controls) and a
    // reader token only looks.
    let auth_dir = dir.join("auth");
    let (auth_server, auth_base) = coordinator(&auth_dir.join("data"), &["--auth", "tokens"]);
    let auth_endpoint = auth_server.endpoint();
    let admin = std::fs::read_to_string(auth_dir.join("data/admin-token"))
        .expect("admin token")
        .trim()
        .to_owned();
    let agent_token = create_token(dir, &auth_endpoint, &admin, "agent", "agent-1");
    let ci = create_token(dir, &auth_endpoint, &admin, "ci", "ci-main");
    let reader = create_token(dir, &auth_endpoint, &admin, "reader", "viewer");
    let token_file = auth_dir.join("agent.token");
    std::fs::write(&token_file, format!("{agent_token}\n")).expect("token file");
    let _auth_agent = AgentProcess::start_connected(
        &auth_endpoint,
        &auth_dir.join("agent"),
        "agent-1",
        2,
        &["--token-file", token_file.to_str().expect("utf-8 path")],
    )
    .await;
    let auth_state = auth_dir.join("state");
    std::fs::create_dir_all(&auth_state).expect("state dir");
    let auth_env = [format!("STATE={}", auth_state.display())];
    let auth_flaky = run_to_end(
        run_set(
            dir,
            &project_dir,
            &auth_endpoint,
            "flaky",
            &auth_env,
            Some(&ci),
        ),
        0,
    );

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/dashboard_browser.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--base", &base, "--out"])
        .arg(&out_dir)
        .args(["--passed-job", &passing, "--failed-job", &failing])
        .args(["--flaky-job", &flaky, "--running-job", &gated.id])
        .args(["--failed-test", FAILING_TEST, "--flaky-test", FLAKY_TEST])
        .args(["--gated-test", GATED_TEST, "--gate"])
        .arg(&gate)
        .args(["--agent", "agent-0", "--failed-label", "suite=failing"])
        .args(["--invocation", invocation])
        .args(["--auth-base", &auth_base, "--auth-flaky-job", &auth_flaky])
        .env("DASHBOARD_READER_TOKEN", &reader)
        .env("DASHBOARD_WRITER_TOKEN", &ci)
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    // Whatever the script did, the gated job must end: open the gate.
    std::fs::write(&gate, "open\n").expect("open the gate");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "dashboard_browser.py: {}",
        transcript(&out)
    );
    gated.finish(0);

    // With auth off on loopback, another name for the port (DNS rebinding) gets nothing.
    let (status, body) = http_get(&base, "/", &[("Host", "evil.example")]);
    assert_eq!(status, 403, "a rebinding host is refused: {body}");
    assert_eq!(http_get(&base, "/", &[]).0, 200);
    // A token limited to another instance sees none of this instance's jobs.
    let scoped = super::quarantine::client(
        dir,
        dir,
        &auth_endpoint,
        &[
            "token",
            "create",
            "--role",
            "reader",
            "--name",
            "elsewhere",
            "--instance",
            "other",
        ],
        &admin,
    );
    assert!(scoped.status.success(), "{}", transcript(&scoped));
    let scoped = String::from_utf8(scoped.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let bearer = |token: &str| format!("Bearer {token}");
    let job_path = format!("/jobs/{auth_flaky}");
    let json = [("Accept", "application/json")];
    let as_reader = [json[0], ("Authorization", bearer(&reader).leak())];
    let as_scoped = [json[0], ("Authorization", bearer(&scoped).leak())];
    assert_eq!(http_get(&auth_base, &job_path, &as_reader).0, 200);
    let (status, body) = http_get(&auth_base, &job_path, &as_scoped);
    assert_eq!(status, 404, "another instance's job is not shown: {body}");
    let (_, body) = http_get(&auth_base, "/", &as_scoped);
    let listed: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(listed["jobs"], Value::Array(Vec::new()), "{body}");
    let (_, body) = http_get(&auth_base, "/", &as_reader);
    let listed: Value = serde_json::from_str(&body).expect("json");
    assert!(
        listed["jobs"]
            .as_array()
            .is_some_and(|jobs| !jobs.is_empty()),
        "{body}"
    );

    for page in [
        "jobs", "job", "test", "flaky", "fleet", "builds", "build", "login",
    ] {
        let shot = out_dir.join(format!("{page}.png"));
        assert!(shot.exists(), "no screenshot {}", shot.display());
        println!("screenshot: {}", shot.display());
    }
}

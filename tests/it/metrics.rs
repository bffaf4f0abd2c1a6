//! The coordinator's HTTP port (issue 13), shown with real processes: `tessera coordinator
//! --http-listen`, a `tessera agent`, a `tessera run` of a small suite, and plain HTTP GETs as
//! Prometheus would send them.
//!
//! - every family of the contract is there at zero before any work, `/healthz` and `/readyz`
//!   answer 200, and after a run the counters show it (job, tests, actions, calls, bytes);
//!   `promtool check metrics` is clean on both scrapes;
//! - with `--auth tokens`, `/metrics` needs a token (401 without, 200 with a reader token)
//!   unless `--metrics-public`; `/healthz` and `/readyz` stay open;
//! - with a small `--max-cas-bytes`, blobs written through ByteStream past the budget evict
//!   the oldest ones: the scrape shows `tessera_cas_evicted_bytes_total` counting them and
//!   `tessera_cas_bytes` within `tessera_cas_budget_bytes`.
//!
//! A missing `promtool` (Debian package `prometheus`) fails under CI and skips that check
//! otherwise.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tessera_cas::client::CasClient;
use tessera_cas::digest::DigestFunction;
use tessera_tests::{AgentProcess, ServerProcess, free_port, in_ci, noise, visible_tempdir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A suite of two quick tests for `tessera run --runner command`.
pub(super) const QUICK_SUITE: &str = "case \"$1\" in\n\
    list) echo first; echo second;;\n\
    run) shift; for t in \"$@\"; do echo \"ran $t\"; done;;\n\
    esac\n";

/// One HTTP/1.1 GET to `addr`: the status code and the body.
pub(super) async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the HTTP port");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: tessera\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("an answer within 10 s")
    .expect("read");
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name` (with its labels, as written) in a scrape.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from the scrape:\n{text}"))
}

/// `promtool check metrics` on a scrape must be clean; skipped without promtool outside CI.
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) if !in_ci() => {
            eprintln!("skipping promtool check: {error} (install Debian's prometheus)");
            return;
        }
        Err(error) => panic!("promtool is required under CI: {error}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\non:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tessera ARGS` with no `TESSERA_*` variable but `token`, and no client config file.
pub(super) fn tessera(dir: &Path, args: &[&str], token: Option<&str>) -> Command {
    let mut command = Command::new(tessera_tests::tessera_bin());
    command.args(args).stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TESSERA_") {
            command.env_remove(name);
        }
    }
    command
        .env("XDG_CONFIG_HOME", dir.join("no-config"))
        .env("XDG_CACHE_HOME", dir.join("cache"));
    if let Some(token) = token {
        command.env("TESSERA_TOKEN", token);
    }
    command
}

/// `tessera run --coordinator ENDPOINT EXTRA... --runner command` of the `suite.sh` in
/// `project` (`sh suite.sh list`, `sh suite.sh run {tests}`), with [`tessera`]'s clean
/// environment under `dir`.
pub(super) fn suite_run(dir: &Path, project: &Path, endpoint: &str, extra: &[&str]) -> Command {
    let mut command = tessera(dir, &["run", "--coordinator", endpoint], None);
    command
        .args(extra)
        .args([
            "--runner",
            "command",
            "--list-command",
            "sh suite.sh list",
            "--",
        ])
        .args(["sh", "suite.sh", "run", "{tests}"])
        .current_dir(project);
    command
}

/// Runs the two-test [`QUICK_SUITE`] with `tessera run` against `endpoint` (no token), from a
/// project under `dir`, and asserts that it passes.
pub(super) fn run_quick_suite(dir: &Path, endpoint: &str) {
    let project = dir.join("project");
    std::fs::create_dir_all(&project).expect("project dir");
    std::fs::write(project.join("suite.sh"), QUICK_SUITE).expect("suite.sh");
    let out = suite_run(dir, &project, endpoint, &[])
        .output()
        .expect("tessera run");
    assert!(
        out.status.success(),
        "tessera run: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A coordinator with its HTTP port on a free loopback port.
fn coordinator(dir: &Path, extra: &[&str]) -> (ServerProcess, SocketAddr) {
    coordinator_with_env(dir, extra, &[])
}

/// [`coordinator`] with extra `TESSERA_*` environment variables.
fn coordinator_with_env(
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (ServerProcess, SocketAddr) {
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let http_arg = http.to_string();
    let mut args = vec!["--http-listen", http_arg.as_str()];
    args.extend_from_slice(extra);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    (
        ServerProcess::start_on(addr, &dir.join("data"), &args, env),
        http,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_every_family_and_the_work_done() {
    let dir = visible_tempdir();
    let (server, http) = coordinator(dir.path(), &[]);
    assert_eq!(get(http, "/healthz", None).await, (200, "ok\n".to_owned()));
    assert_eq!(
        get(http, "/readyz", None).await,
        (200, "ready\n".to_owned())
    );

    let (status, before) = get(http, "/metrics", None).await;
    assert_eq!(status, 200, "{before}");
    for name in [
        "tessera_queue_depth",
        "tessera_queue_wait_seconds_count",
        "tessera_agents_connected",
        r#"tessera_slots{state="busy"}"#,
        r#"tessera_slots{state="idle"}"#,
        r#"tessera_actions_total{outcome="ok"}"#,
        r#"tessera_actions_total{outcome="failed"}"#,
        r#"tessera_actions_total{outcome="timed_out"}"#,
        r#"tessera_actions_total{outcome="cancelled"}"#,
        r#"tessera_actions_total{outcome="infra_error"}"#,
        "tessera_action_duration_seconds_count",
        "tessera_lease_expired_total",
        r#"tessera_action_cache_requests_total{result="hit"}"#,
        r#"tessera_action_cache_requests_total{result="miss"}"#,
        "tessera_cas_evicted_bytes_total",
        r#"tessera_cas_transfer_bytes_total{direction="read"}"#,
        r#"tessera_cas_transfer_bytes_total{direction="write"}"#,
        r#"tessera_jobs_total{result="passed"}"#,
        r#"tessera_jobs_total{result="failed"}"#,
        r#"tessera_jobs_total{result="error"}"#,
        r#"tessera_jobs_total{result="infrastructure"}"#,
        r#"tessera_jobs_total{result="cancelled"}"#,
        "tessera_job_duration_seconds_count",
        r#"tessera_tests_total{outcome="passed"}"#,
        r#"tessera_tests_total{outcome="failed"}"#,
        r#"tessera_tests_total{outcome="skipped"}"#,
        r#"tessera_tests_total{outcome="flaky"}"#,
        r#"tessera_tests_total{outcome="timed_out"}"#,
        r#"tessera_grpc_requests_total{service="Jobs",method="Submit",code="OK"}"#,
        r#"tessera_grpc_request_duration_seconds_count{service="ByteStream",method="Write"}"#,
    ] {
        assert_eq!(sample(&before, name), 0.0, "{name} at start");
    }
    sample(&before, "tessera_cas_bytes");
    promtool_check(&before);

    let _agent = AgentProcess::start_connected(
        &server.endpoint(),
        &dir.path().join("work"),
        "agent-0",
        2,
        &[],
    )
    .await;
    run_quick_suite(dir.path(), &server.endpoint());

    let (status, after) = get(http, "/metrics", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(&after, r#"tessera_jobs_total{result="passed"}"#),
        1.0
    );
    assert_eq!(sample(&after, "tessera_job_duration_seconds_count"), 1.0);
    assert_eq!(
        sample(&after, r#"tessera_tests_total{outcome="passed"}"#),
        2.0
    );
    assert!(sample(&after, r#"tessera_actions_total{outcome="ok"}"#) >= 1.0);
    assert!(sample(&after, "tessera_action_duration_seconds_count") >= 1.0);
    assert!(sample(&after, "tessera_queue_wait_seconds_count") >= 1.0);
    assert_eq!(sample(&after, "tessera_agents_connected"), 1.0);
    assert_eq!(sample(&after, "tessera_queue_depth"), 0.0);
    assert_eq!(sample(&after, r#"tessera_slots{state="idle"}"#), 2.0);
    assert_eq!(sample(&after, r#"tessera_slots{state="busy"}"#), 0.0);
    assert!(sample(&after, "tessera_cas_bytes") > 0.0);
    assert!(
        sample(
            &after,
            r#"tessera_cas_transfer_bytes_total{direction="write"}"#
        ) > 0.0
    );
    assert_eq!(
        sample(
            &after,
            r#"tessera_grpc_requests_total{service="Jobs",method="Submit",code="OK"}"#
        ),
        1.0
    );
    assert!(
        sample(
            &after,
            r#"tessera_grpc_requests_total{service="AgentSession",method="Session",code="OK"}"#
        ) >= 1.0
    );
    assert!(
        !after.contains("unknown"),
        "no unknown method was called:\n{after}"
    );
    promtool_check(&after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_reader_token_unless_public() {
    let dir = visible_tempdir();
    let (server, http) = coordinator(dir.path(), &["--auth", "tokens"]);
    let admin = std::fs::read_to_string(server.data_dir.join("admin-token"))
        .expect("admin token")
        .trim()
        .to_owned();
    let out = tessera(
        dir.path(),
        &[
            "token",
            "create",
            "--role",
            "reader",
            "--name",
            "prometheus",
            "--coordinator",
            &server.endpoint(),
        ],
        Some(&admin),
    )
    .output()
    .expect("tessera token create");
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reader = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();

    let (status, body) = get(http, "/metrics", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("Bearer"),
        "the refusal says what to send: {body}"
    );
    assert_eq!(get(http, "/metrics", Some("tsr_not_a_token")).await.0, 401);
    let (status, body) = get(http, "/metrics", Some(&reader)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("tessera_agents_connected"), "{body}");
    assert_eq!(get(http, "/healthz", None).await.0, 200);
    assert_eq!(get(http, "/readyz", None).await.0, 200);
    drop(server);

    let public = visible_tempdir();
    let (_server, http) = coordinator(public.path(), &["--auth", "tokens", "--metrics-public"]);
    let (status, body) = get(http, "/metrics", None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_past_the_cas_budget_are_evicted_and_counted() {
    const BUDGET: u64 = 64 * 1024;
    const BLOB: usize = 16 * 1024;
    let dir = visible_tempdir();
    // No recency protection: every blob not being written is a candidate at once.
    let (server, http) = coordinator_with_env(
        dir.path(),
        &["--max-cas-bytes", &BUDGET.to_string()],
        &[("TESSERA_CAS_PROTECT_RECENT", "0s")],
    );
    let (_, before) = get(http, "/metrics", None).await;
    assert_eq!(sample(&before, "tessera_cas_evicted_bytes_total"), 0.0);
    assert_eq!(sample(&before, "tessera_cas_budget_bytes"), BUDGET as f64);

    // Eight incompressible 16 KiB blobs, one ByteStream Write each: twice the budget.
    let client = CasClient::connect(&server.endpoint(), "", DigestFunction::Sha256)
        .await
        .expect("CAS client connects");
    let mut digests = Vec::new();
    for seed in 0..8 {
        let data = noise(BLOB, seed);
        let digest = DigestFunction::Sha256.digest_of(&data);
        client
            .write(&digest, data, false)
            .await
            .unwrap_or_else(|error| panic!("write of blob {seed} past the budget: {error}"));
        digests.push(digest);
    }
    let missing = client
        .find_missing(&digests)
        .await
        .expect("FindMissingBlobs");
    assert!(
        !missing.is_empty() && !missing.contains(&digests[7]),
        "the oldest blobs went, the newest stayed: missing {missing:?} of {digests:?}"
    );

    let (status, after) = get(http, "/metrics", None).await;
    assert_eq!(status, 200, "{after}");
    let evicted = sample(&after, "tessera_cas_evicted_bytes_total");
    let stored = sample(&after, "tessera_cas_bytes");
    assert!(
        evicted >= (missing.len() * BLOB) as f64,
        "{} blobs of {BLOB} bytes were evicted, the counter says {evicted}:\n{after}",
        missing.len()
    );
    assert!(
        stored > 0.0 && stored <= BUDGET as f64,
        "stored {stored} bytes, budget {BUDGET}:\n{after}"
    );
    // Noise does not compress, so the store keeps each blob raw: its stored size is its size.
    assert_eq!(
        evicted + stored,
        (digests.len() * BLOB) as f64,
        "every byte written is either stored or evicted:\n{after}"
    );
    promtool_check(&after);
}

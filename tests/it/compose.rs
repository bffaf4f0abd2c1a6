//! The Compose deployment (issue 14) with real containers: `deploy/images/build.sh` builds the
//! images (a static `tessera`, the coordinator `FROM scratch`, the agent on the Debian base of
//! `deploy/images/debian-base.sh`), and `docker-compose` (v1) starts
//! `deploy/compose/docker-compose.yml` as it is: a coordinator on a named volume and three
//! agents with the namespace sandbox on. The host's `tessera` and Bazel talk to it through the
//! published ports.
//!
//! - A `tessera run` of a cargo suite (built by Debian's cargo in the agents, tests asked to run
//!   with `sandbox=namespaces`) goes through an agent container killed (`docker kill`) while
//!   it runs a lease, another cut off (`docker network disconnect`) until the coordinator has
//!   expired its leases and then reconnected with its alias, and the coordinator container
//!   restarted on its volume: the run passes, every test is listed once, the summary counts
//!   each once, and the restarted coordinator's `/metrics` counts exactly the tests that
//!   finished after its restart.
//! - A Bazel remote build (`//... //slow:slow_test`, Bazel's retries off) during which the
//!   agent running a slow genrule gets `docker stop`: it drains (its lease finishes and is
//!   reported, no lease expires, the container exits 0) and every spawn ran remotely. After
//!   another coordinator restart and `bazel clean`, every spawn is a remote cache hit: the
//!   action cache and blobs were on the volume.
//!
//! Each run has its own Compose project (published ports picked free) and tears it down with
//! `down -v` on drop. Docker missing skips outside CI and fails under `CI=true`; Bazel follows
//! `bazel.rs`'s rules (its part is skipped when Bazel is, and the test holds Bazel's lock).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_tests::{blocking_poll_until, free_port, in_ci, lines, visible_tempdir, wait_exit};

use super::bazel::{self, Checkout};

/// Tests in the cargo suite; each sleeps [`TEST_SECONDS`], so the job lasts through the faults.
const TESTS: usize = 60;
const TEST_SECONDS: u64 = 3;
/// Longest wait for the fleet to come up, a fault to show, or a container to stop.
const STEP_LIMIT: Duration = Duration::from_secs(120);
/// Longest the cargo job may take, faults included.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// The images `deploy/images/build.sh` printed.
struct Images {
    coordinator: String,
    agent: String,
    /// Made from the host's `prometheus` when it has one (`build.sh --prometheus`).
    prometheus: Option<String>,
}

/// `docker` and `docker-compose` answer; `false` (skip) outside CI when they do not.
fn docker_or_skip() -> bool {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let docker = works("docker", &["info"]);
    let compose = works("docker-compose", &["version"]);
    if docker && compose {
        return true;
    }
    assert!(
        !in_ci(),
        "the Compose test needs Docker and docker-compose v1 under CI (docker info: {docker}, \
         docker-compose version: {compose})"
    );
    println!(
        "SKIP: Docker or docker-compose is not available (docker {docker}, compose {compose})"
    );
    false
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// Runs `deploy/images/build.sh` (debug profile: quicker to build, the same code), with
/// `--prometheus` when this host has Prometheus (required under CI: `.ci/install-deps.sh`
/// installs it).
fn build_images() -> Images {
    let started = Instant::now();
    let has_prometheus = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_prometheus || !in_ci(),
        "prometheus (Debian package) is required under CI"
    );
    if !has_prometheus {
        println!("SKIP (part): no prometheus binary, the monitoring profile is not started");
    }
    let mut command = Command::new(repo_root().join("deploy/images/build.sh"));
    if has_prometheus {
        command.arg("--prometheus");
    }
    let out = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run deploy/images/build.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "build.sh: {}\n{stdout}", out.status);
    let image = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} line from build.sh:\n{stdout}"))
            .to_owned()
    };
    println!("compose: images built in {:.1?}", started.elapsed());
    Images {
        coordinator: image("coordinator="),
        agent: image("agent="),
        prometheus: has_prometheus.then(|| image("prometheus=")),
    }
}

/// `docker ARGS`, which must succeed; its stdout.
fn docker(args: &[&str]) -> String {
    checked(
        Command::new("docker").args(args),
        &format!("docker {}", args.join(" ")),
    )
}

fn checked(command: &mut Command, what: &str) -> String {
    let out: Output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One Compose project of `deploy/compose/docker-compose.yml`, taken down (`down -v`) on drop.
struct Fleet {
    project: String,
    images: Images,
    grpc: SocketAddr,
    http: SocketAddr,
    /// Prometheus's published port, when the `monitoring` profile runs.
    prometheus: SocketAddr,
}

impl Fleet {
    fn up(images: Images) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos();
        let fleet = Fleet {
            project: format!("tessera-it-{}-{nanos}", std::process::id()),
            images,
            grpc: SocketAddr::from(([127, 0, 0, 1], free_port())),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            prometheus: SocketAddr::from(([127, 0, 0, 1], free_port())),
        };
        fleet.compose(&["up", "-d"]);
        fleet
    }

    fn command(&self, args: &[&str]) -> Command {
        let file = repo_root().join("deploy/compose/docker-compose.yml");
        let mut command = Command::new("docker-compose");
        command
            .arg("--project-name")
            .arg(&self.project)
            .arg("--file")
            .arg(file);
        if let Some(image) = &self.images.prometheus {
            command
                .args(["--profile", "monitoring"])
                .env("PROMETHEUS_IMAGE", image)
                .env("PROMETHEUS_UI", self.prometheus.to_string());
        }
        command
            .args(args)
            .env("COORDINATOR_IMAGE", &self.images.coordinator)
            .env("AGENT_IMAGE", &self.images.agent)
            .env("COORDINATOR_GRPC", self.grpc.to_string())
            .env("COORDINATOR_HTTP", self.http.to_string());
        command
    }

    /// `docker-compose ARGS` on this project, which must succeed; its stdout.
    fn compose(&self, args: &[&str]) -> String {
        checked(
            &mut self.command(args),
            &format!("docker-compose {}", args.join(" ")),
        )
    }

    /// The container id of `service`.
    fn container(&self, service: &str) -> String {
        let id = self.compose(&["ps", "--all", "-q", service]);
        assert!(!id.is_empty(), "no container for {service}");
        id
    }

    fn network(&self) -> String {
        format!("{}_default", self.project)
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// What `service` logged so far (both streams, colours removed).
    fn logs(&self, service: &str) -> String {
        let out = Command::new("docker")
            .args(["logs", &self.container(service)])
            .output()
            .expect("docker logs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        strip_ansi(&text)
    }

    /// The coordinator's `/metrics`, or `None` while it does not answer.
    fn try_scrape(&self) -> Option<String> {
        let (status, body) = http_get(self.http, "/metrics")?;
        (status == 200).then_some(body)
    }

    fn scrape(&self) -> String {
        self.try_scrape().expect("the coordinator serves /metrics")
    }

    /// Waits until the coordinator answers `/readyz` and has `agents` agents connected.
    fn wait_ready(&self, agents: u32) {
        blocking_poll_until(
            &format!("coordinator ready with {agents} agents"),
            STEP_LIMIT,
            || {
                let ready = http_get(self.http, "/readyz").is_some_and(|(s, _)| s == 200);
                let text = self.try_scrape()?;
                (ready && sample(&text, "tessera_agents_connected") == Some(f64::from(agents)))
                    .then_some(())
            },
        );
    }

    /// Whether the agent container of `service` has a lease directory in its work dir
    /// matching `pattern` (a shell glob under `x/`); the agent removes it after reporting.
    fn has_lease(&self, service: &str, pattern: &str) -> bool {
        let script = format!("ls -d /var/lib/tessera-agent/x/{pattern} >/dev/null 2>&1");
        Command::new("docker")
            .args(["exec", &self.container(service), "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The container's state: `(running, exit code)`.
    fn state(&self, service: &str) -> (bool, i64) {
        let out = docker(&[
            "inspect",
            "--format",
            "{{.State.Running}} {{.State.ExitCode}}",
            &self.container(service),
        ]);
        let (running, code) = out.split_once(' ').expect("inspect output");
        (running == "true", code.parse().expect("exit code"))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let status = self
            .command(&["down", "--volumes", "--remove-orphans", "--timeout", "10"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            eprintln!(
                "docker-compose down for {} failed: {status:?}",
                self.project
            );
        }
    }
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`): the logs colour field names.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One plain HTTP/1.1 GET: status and body, or `None` if nothing answers.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    tessera_tests::http_get(&addr.to_string(), path, &[])
}

/// The value of the sample `name` (labels as written) in a scrape.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.split(' ').next()?.parse().ok())
}

/// A cargo project of [`TESTS`] tests, for Debian 12's cargo and rustc 1.63 (hence a lock file
/// of version 3, which that cargo reads).
fn write_suite(project: &Path) {
    std::fs::create_dir_all(project.join("src")).expect("suite dirs");
    std::fs::create_dir_all(project.join("tests")).expect("suite dirs");
    std::fs::write(
        project.join("Cargo.toml"),
        "[package]\nname = \"compose-suite\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [workspace]\n",
    )
    .expect("Cargo.toml");
    std::fs::write(
        project.join("Cargo.lock"),
        "# This file is automatically @generated by Cargo.\n# It is not intended for manual \
         editing.\nversion = 3\n\n[[package]]\nname = \"compose-suite\"\nversion = \"0.1.0\"\n",
    )
    .expect("Cargo.lock");
    std::fs::write(
        project.join("src/lib.rs"),
        "pub fn square(x: u64) -> u64 {\n    x * x\n}\n",
    )
    .expect("lib.rs");
    let mut tests = String::from("use std::time::Duration;\n");
    for i in 0..TESTS {
        tests.push_str(&format!(
            "\n#[test]\nfn case_{i:02}() {{\n    std::thread::sleep(Duration::from_secs({TEST_SECONDS}));\n    \
             assert_eq!(compose_suite::square({i}), {});\n}}\n",
            i * i
        ));
    }
    std::fs::write(project.join("tests/slow.rs"), tests).expect("tests/slow.rs");
}

/// `tessera run --json` in progress, its JSON lines read as they come.
struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<Value>,
    stderr: PathBuf,
}

impl Run {
    fn start(endpoint: &str, project: &Path, scratch: &Path) -> Self {
        let stderr = scratch.join("tessera-run.stderr");
        let mut child = super::metrics::tessera(scratch, &["run", "--coordinator", endpoint], None)
            .args([
                "--json",
                "--platform",
                "sandbox=namespaces",
                "--",
                "cargo",
                "test",
            ])
            .current_dir(project)
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start tessera run");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Run {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Takes in the lines printed so far.
    fn read(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.push(&line);
        }
    }

    fn push(&mut self, line: &str) {
        let event = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        self.seen.push(event);
    }

    /// Reads until `count` final test results are in; the job must not end before.
    fn until_finals(&mut self, count: usize) {
        while finals(&self.seen).len() < count {
            let line = self.lines.recv_timeout(RUN_LIMIT).unwrap_or_else(|e| {
                panic!("no {count} final results ({e}):\n{}", self.transcript())
            });
            self.push(&line);
        }
    }

    /// The job is still running: the faults must land inside it.
    fn assert_running(&mut self, what: &str) {
        self.read();
        assert!(
            !self.seen.iter().any(|e| e["event"] == "finished"),
            "the job finished before {what}: make the suite longer\n{}",
            self.transcript()
        );
    }

    fn finish(&mut self) -> Option<i32> {
        let status = wait_exit(&mut self.child, RUN_LIMIT);
        assert!(
            status.is_some(),
            "tessera run did not finish:\n{}",
            self.transcript()
        );
        let rest: Vec<String> = self.lines.iter().collect();
        for line in rest {
            self.push(&line);
        }
        status.and_then(|s| s.code())
    }

    fn transcript(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every final test event's (test id, outcome), in the order they came.
fn finals(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["event"] == "test" && e["final"] == true)
        .map(|e| {
            (
                e["test"].as_str().unwrap_or_default().to_owned(),
                e["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_compose_fleet_keeps_every_result_through_kill_disconnect_restart_and_drains_on_stop() {
    // One Bazel server at a time on this machine, and the images are built once.
    let _serial = bazel::serial();
    if !docker_or_skip() {
        return;
    }
    let images = build_images();
    let scratch = visible_tempdir();
    let started = Instant::now();
    let fleet = Fleet::up(images);
    fleet.wait_ready(3);
    for agent in ["agent-1", "agent-2", "agent-3"] {
        let log = fleet.logs(agent);
        assert!(
            log.contains("sandbox=\"namespaces\""),
            "{agent} runs without the namespace sandbox:\n{log}"
        );
    }
    println!("compose: fleet up in {:.1?}", started.elapsed());

    cargo_job_through_faults(&fleet, scratch.path());
    if let Some(bazel) = bazel::bazel_or_skip() {
        bazel_build_through_a_drain(&fleet, &bazel, scratch.path());
    }
    // Whatever the faults stopped is back; Prometheus scrapes all of it.
    fleet.compose(&["start"]);
    fleet.wait_ready(3);
    if fleet.images.prometheus.is_some() {
        prometheus_scrapes_the_fleet(&fleet);
    }
    println!("compose: whole test {:.1?}", started.elapsed());
}

/// The cargo suite through a killed agent, a disconnected one and a coordinator restart.
fn cargo_job_through_faults(fleet: &Fleet, scratch: &Path) {
    let project = scratch.join("compose-suite");
    write_suite(&project);
    let mut run = Run::start(&fleet.endpoint(), &project, scratch);
    run.until_finals(3);

    // Kill agent-1 while it runs a lease, cut agent-2 off while it runs one.
    let expired_before = sample(&fleet.scrape(), "tessera_lease_expired_total").unwrap_or(0.0);
    blocking_poll_until("agent-1 running a lease", STEP_LIMIT, || {
        fleet.has_lease("agent-1", "*").then_some(())
    });
    run.assert_running("the agent kill");
    docker(&["kill", &fleet.container("agent-1")]);
    blocking_poll_until("agent-2 running a lease", STEP_LIMIT, || {
        fleet.has_lease("agent-2", "*").then_some(())
    });
    let agent_2 = fleet.container("agent-2");
    docker(&["network", "disconnect", &fleet.network(), &agent_2]);
    // The coordinator expires the cut-off agent's leases and queues them again.
    blocking_poll_until("agent-2's leases expired", STEP_LIMIT, || {
        fleet
            .logs("coordinator")
            .lines()
            .any(|l| l.contains("lease expired; queueing again") && l.contains("agent=agent-2"))
            .then_some(())
    });
    let expired = sample(&fleet.scrape(), "tessera_lease_expired_total").unwrap_or(0.0);
    assert!(expired > expired_before, "lease expiries counted");
    docker(&[
        "network",
        "connect",
        "--alias",
        "agent-2",
        &fleet.network(),
        &agent_2,
    ]);
    run.assert_running("the coordinator restart");

    // Restart the coordinator on its volume.
    docker(&["restart", "--time", "10", &fleet.container("coordinator")]);
    let status = run.finish();
    let transcript = run.transcript();
    let context = format!("tessera run's stderr:\n{transcript}");
    assert_eq!(status, Some(0), "tessera run failed:\n{context}");

    // Every test once, passed.
    let mut outcomes = BTreeMap::new();
    for (test, outcome) in finals(&run.seen) {
        let again = outcomes.insert(test.clone(), outcome);
        assert!(again.is_none(), "{test} listed twice:\n{context}");
    }
    assert_eq!(outcomes.len(), TESTS, "{outcomes:?}\n{context}");
    let not_passed: Vec<&Value> = run
        .seen
        .iter()
        .filter(|e| {
            e["test"]
                .as_str()
                .is_some_and(|t| outcomes.get(t).is_some_and(|o| o != "passed"))
                || e["event"] == "finished"
                || e["event"] == "note"
        })
        .collect();
    // Seen here (Dec 2026): after the coordinator's graceful restart (SIGTERM), the tests it
    // had not finished came back as final `cancelled` results, and the job "passed" with them
    // not run. Every test must run to its real outcome, whatever stopped the coordinator.
    assert!(
        outcomes.values().all(|o| o == "passed"),
        "not all passed (a `cancelled` here means the coordinator's shutdown ended tests that \
         its restart should have run): {not_passed:#?}\n{context}\ncoordinator:\n{}",
        fleet.logs("coordinator")
    );
    let finished = run
        .seen
        .iter()
        .find(|e| e["event"] == "finished")
        .unwrap_or_else(|| panic!("no finished event:\n{context}"));
    assert_eq!(
        [
            "passed",
            "failed",
            "skipped",
            "errors",
            "flaky",
            "timed_out",
            "not_run"
        ]
        .map(|key| finished[key].as_u64()),
        [TESTS as u64, 0, 0, 0, 0, 0, 0].map(Some),
        "{finished}"
    );
    let seqs: Vec<u64> = run.seen.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs: {seqs:?}");

    // The job went on after the restart; the restarted coordinator counts the tests that
    // finished after it, each once: the kept ones are not counted again.
    let restarted = run
        .seen
        .iter()
        .filter_map(|e| e["text"].as_str())
        .find(|t| t.contains("coordinator restarted; the job goes on"))
        .unwrap_or_else(|| panic!("no restart in the job's log: {:#?}\n{context}", run.seen));
    let kept: u64 = restarted
        .split("goes on: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of kept results in {restarted:?}"));
    let metrics = fleet.scrape();
    assert_eq!(
        sample(&metrics, r#"tessera_tests_total{outcome="passed"}"#),
        Some((TESTS as u64 - kept) as f64),
        "{restarted}\n{metrics}"
    );
    assert_eq!(
        sample(&metrics, r#"tessera_jobs_total{result="passed"}"#),
        Some(1.0),
        "{metrics}"
    );
    println!(
        "compose: cargo job of {TESTS} tests through kill, disconnect and coordinator restart \
         ({kept} results kept over the restart, {} late results refused)",
        fleet
            .logs("coordinator")
            .matches(lines::RESULT_REFUSED)
            .count()
    );
}

/// A Bazel remote build during which the agent running a slow genrule is stopped (drain);
/// then the coordinator restarted and a rebuild after `bazel clean` answered from its cache.
fn bazel_build_through_a_drain(fleet: &Fleet, bazel: &Path, scratch: &Path) {
    // agent-1 was killed above: bring it back (the restart policy may have done so already).
    fleet.compose(&["start", "agent-1"]);
    fleet.wait_ready(3);
    let executor = format!("--remote_executor=grpc://{}", fleet.grpc);
    let mut checkout = Checkout::new(bazel, scratch, "bazel");
    let expired_before = sample(&fleet.scrape(), "tessera_lease_expired_total");
    let refused_before = fleet
        .logs("coordinator")
        .matches(lines::RESULT_REFUSED)
        .count();

    let (cold, stopped) = std::thread::scope(|s| {
        let build = s.spawn(|| {
            checkout.run(&[
                "test",
                "//...",
                "//slow:slow_test",
                &executor,
                "--jobs=8",
                "--remote_retries=0",
            ])
        });
        let victim = blocking_poll_until("an agent running a //slow genrule", STEP_LIMIT, || {
            assert!(
                !build.is_finished(),
                "the build ended before any //slow genrule ran"
            );
            ["agent-1", "agent-2", "agent-3"]
                .into_iter()
                .find(|a| fleet.has_lease(a, "*/root/bazel-out/*/bin/slow"))
        });
        docker(&["stop", "--time", "120", &fleet.container(victim)]);
        (build.join().expect("bazel thread"), victim)
    });
    let cold = cold.ok();
    cold.report("compose, an agent drained mid-build");
    let actions = bazel::assert_all_remote(&cold);
    assert!(actions > 20, "{:?}", cold.processes());

    let (running, code) = fleet.state(stopped);
    assert!(!running, "{stopped} stopped");
    assert_eq!(
        code,
        0,
        "{stopped} exits 0 after draining:\n{}",
        fleet.logs(stopped)
    );
    // It began draining with the lease running, and finished it before it stopped.
    let log = fleet.logs(stopped);
    let drain = log
        .lines()
        .position(|l| l.contains("draining: taking no new leases"))
        .unwrap_or_else(|| panic!("{stopped} did not drain:\n{log}"));
    let after: Vec<&str> = log.lines().skip(drain).collect();
    assert!(
        !after[0].contains("running=0")
            && after.iter().any(|l| l.contains("command passed"))
            && after.iter().any(|l| l.contains("agent stopped")),
        "{stopped} drained with a lease running and finished it:\n{log}"
    );
    let metrics = fleet.scrape();
    assert_eq!(
        sample(&metrics, "tessera_lease_expired_total"),
        expired_before,
        "no lease was lost to the drain:\n{metrics}"
    );
    let refused = fleet
        .logs("coordinator")
        .matches(lines::RESULT_REFUSED)
        .count();
    assert_eq!(
        refused,
        refused_before,
        "the drained agent's results were all current:\n{}",
        fleet.logs("coordinator")
    );

    // The coordinator restarted on its volume answers everything from its cache.
    docker(&["restart", "--time", "10", &fleet.container("coordinator")]);
    fleet.compose(&["start", stopped]);
    fleet.wait_ready(3);
    checkout.run_ok(&["clean"]);
    let warm = checkout.run_ok(&["test", "//...", "//slow:slow_test", &executor, "--jobs=8"]);
    warm.report("compose, after a coordinator restart and bazel clean");
    let counts = warm.processes();
    assert_eq!(
        counts.get("remote cache hit").copied(),
        Some(actions),
        "every action answered by the restarted coordinator's cache: {counts:?}"
    );
    assert_eq!(bazel::non_internal(&counts), actions, "{counts:?}");
}

/// Prometheus (profile `monitoring`, `deploy/compose/prometheus.yml`) has the coordinator and
/// the three agents up, and loaded the alerting rules of `deploy/prometheus/`.
fn prometheus_scrapes_the_fleet(fleet: &Fleet) {
    let query = |path: &str| -> Option<Value> {
        let (status, body) = http_get(fleet.prometheus, path)?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    };
    let up = blocking_poll_until("Prometheus scraping all four targets", STEP_LIMIT, || {
        let answer = query("/api/v1/query?query=up")?;
        let mut up: Vec<String> = answer["data"]["result"]
            .as_array()?
            .iter()
            .filter(|r| r["value"][1] == "1")
            .map(|r| format!("{} {}", r["metric"]["job"], r["metric"]["instance"]))
            .collect();
        up.sort();
        (up.len() == 4).then_some(up)
    });
    assert_eq!(
        up,
        [
            r#""tessera-agent" "agent-1:9465""#,
            r#""tessera-agent" "agent-2:9465""#,
            r#""tessera-agent" "agent-3:9465""#,
            r#""tessera-coordinator" "coordinator:9464""#,
        ]
    );
    let rules = query("/api/v1/rules").expect("Prometheus answers /api/v1/rules");
    let groups = rules["data"]["groups"].as_array().map_or(0, Vec::len);
    assert!(groups > 0, "no rule groups loaded: {rules}");
    println!("compose: Prometheus scrapes {up:?}, {groups} rule groups");
}

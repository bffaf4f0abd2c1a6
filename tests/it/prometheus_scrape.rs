//! A real Prometheus scraping the fleet (issue 13): `prometheus` with a 1 s scrape interval
//! targets a `tessera coordinator --http-listen` and two `tessera agent --http-listen`, and
//! Prometheus's own query API then shows what an operator would see.
//!
//! - A small `tessera run` passes and one agent is killed with SIGKILL: the agents' own
//!   counters show the actions they ran, the agents went from 2 to 1, the job and its tests
//!   passed, and `up` is 1 for the coordinator and the surviving agent and 0 for the killed one.
//! - Bazel builds against the coordinator as its remote executor, with one slot per agent: the
//!   four 3 s `//slow` genrules it sends at once fill the queue, and the agent running one of
//!   them is frozen with SIGSTOP, so its lease expires and the action runs again on the other
//!   agent; the build passes. Prometheus shows the REAPI traffic (Execute, CAS, ByteStream,
//!   ActionCache calls; actions ok), a queue deeper than 0 and its waits counted, the lease
//!   expiry, and `up` 0 for the frozen agent until it is continued.
//!
//! A missing `prometheus` (Debian package `prometheus`) fails under CI and skips otherwise;
//! Bazel is found (or skipped) as in `bazel.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use tessera_tests::{AgentProcess, ServerProcess, free_port, in_ci, poll_until, visible_tempdir};

use super::bazel::{Checkout, assert_all_remote, bazel_or_skip, running_slow_lease, serial};
use super::metrics::{get, run_quick_suite};

/// How long Prometheus gets to show each expected state (it scrapes every second).
const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(20);

/// A `prometheus` child, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts `prometheus` scraping `coordinator` (job `coordinator`) and `agents` (job
    /// `agents`) every second, with its storage and log under `dir`; `None` (skip) when the
    /// binary is missing outside CI.
    fn start(dir: &Path, coordinator: SocketAddr, agents: &[SocketAddr]) -> Option<Self> {
        let agents = agents
            .iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = [
            "global:".to_owned(),
            "  scrape_interval: 1s".to_owned(),
            "  scrape_timeout: 1s".to_owned(),
            "scrape_configs:".to_owned(),
            "  - job_name: coordinator".to_owned(),
            format!("    static_configs: [{{targets: ['{coordinator}']}}]"),
            "  - job_name: agents".to_owned(),
            format!("    static_configs: [{{targets: [{agents}]}}]"),
        ]
        .join("\n");
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus.log");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let spawned = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        match spawned {
            Ok(child) => Some(Prometheus { child, addr }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                assert!(
                    !in_ci(),
                    "prometheus is required under CI (Debian package prometheus; \
                     .ci/install-deps.sh)"
                );
                eprintln!("skipping: prometheus is not installed (apt-get install prometheus)");
                None
            }
            Err(error) => panic!("failed to run prometheus: {error}"),
        }
    }

    /// The result vector of the instant query `promql`, as `(labels, value)` pairs; empty
    /// while Prometheus is not up yet or has no sample.
    async fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        // `get` panics when it cannot connect: probe first, as Prometheus may still start.
        if tokio::net::TcpStream::connect(self.addr).await.is_err() {
            return Vec::new();
        }
        let (status, body) = get(
            self.addr,
            &format!("/api/v1/query?query={}", percent_encode(promql)),
            None,
        )
        .await;
        if status != 200 {
            return Vec::new();
        }
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|error| panic!("Prometheus answered non-JSON ({error}): {body}"));
        json["data"]["result"]
            .as_array()
            .map(|results| {
                results
                    .iter()
                    .filter_map(|r| {
                        let value = r["value"][1].as_str()?.parse().ok()?;
                        Some((r["metric"].clone(), value))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Queries `promql` until `check` accepts its result, or panics at the deadline with the
    /// last result and Prometheus's log.
    async fn wait_until(
        &self,
        dir: &Path,
        promql: &str,
        check: impl Fn(&[(Value, f64)]) -> bool,
    ) -> Vec<(Value, f64)> {
        let start = Instant::now();
        loop {
            let result = self.query(promql).await;
            if check(&result) {
                return result;
            }
            if start.elapsed() > PROMETHEUS_DEADLINE {
                let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
                panic!(
                    "Prometheus did not show the expected {promql} within {PROMETHEUS_DEADLINE:?}; \
                     last result: {result:?}\nprometheus log:\n{log}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `text` percent-encoded for a URL query value.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The single value of a query result (panics unless there is exactly one series).
fn single(result: &[(Value, f64)]) -> Option<f64> {
    match result {
        [(_, value)] => Some(*value),
        _ => None,
    }
}

/// A check that the query result is one series with a value of at least `min`.
fn at_least(min: f64) -> impl Fn(&[(Value, f64)]) -> bool {
    move |r| single(r).is_some_and(|v| v >= min)
}

/// A check that the series of `instance` has the value `value` (in a result by instance).
fn instance_is(instance: SocketAddr, value: f64) -> impl Fn(&[(Value, f64)]) -> bool {
    let instance = instance.to_string();
    move |r| {
        r.iter().any(|(labels, v)| {
            labels["instance"].as_str() == Some(instance.as_str()) && *v == value
        })
    }
}

/// A free loopback address (for an HTTP port, or a coordinator's gRPC port).
fn http_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

/// Starts one connected agent per address in `http` (its `--http-listen`), with `slots`
/// slots, ids `agent-0`, `agent-1`, ... and work directories of the same names under `dir`.
async fn start_agents(
    server: &ServerProcess,
    dir: &Path,
    http: &[SocketAddr],
    slots: u32,
) -> Vec<AgentProcess> {
    let mut agents = Vec::new();
    for (i, http) in http.iter().enumerate() {
        let id = format!("agent-{i}");
        agents.push(
            AgentProcess::start_connected(
                &server.endpoint(),
                &dir.join(&id),
                &id,
                slots,
                &["--http-listen", &http.to_string()],
            )
            .await,
        );
    }
    agents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_the_work_and_the_lost_agent() {
    let dir = visible_tempdir();
    let coordinator_http = http_addr();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--http-listen", &coordinator_http.to_string()],
    );
    let agent_http = [http_addr(), http_addr()];
    let mut agents = start_agents(&server, dir.path(), &agent_http, 2).await;
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).expect("prometheus dir");
    let Some(prometheus) = Prometheus::start(&prom_dir, coordinator_http, &agent_http) else {
        return;
    };

    run_quick_suite(dir.path(), &server.endpoint());

    // Prometheus has seen both agents connected and all three targets up before one dies.
    prometheus
        .wait_until(&prom_dir, "tessera_agents_connected", |r| {
            single(r) == Some(2.0)
        })
        .await;
    prometheus
        .wait_until(&prom_dir, "sum(up)", |r| single(r) == Some(3.0))
        .await;
    // The agents' own families are scraped too: the run's actions ran on them.
    prometheus
        .wait_until(
            &prom_dir,
            r#"sum(tessera_agent_actions_total{outcome="ok"})"#,
            |r| single(r).is_some_and(|v| v >= 1.0),
        )
        .await;

    let mut killed = agents.remove(1);
    killed.signal(Signal::SIGKILL);
    assert!(
        killed.wait_exit(Duration::from_secs(10)).is_some(),
        "the agent dies on SIGKILL"
    );

    prometheus
        .wait_until(&prom_dir, "tessera_agents_connected", |r| {
            single(r) == Some(1.0)
        })
        .await;
    prometheus
        .wait_until(
            &prom_dir,
            "max_over_time(tessera_agents_connected[5m])",
            |r| single(r) == Some(2.0),
        )
        .await;
    prometheus
        .wait_until(&prom_dir, r#"tessera_jobs_total{result="passed"}"#, |r| {
            single(r).is_some_and(|v| v >= 1.0)
        })
        .await;
    prometheus
        .wait_until(&prom_dir, r#"tessera_tests_total{outcome="passed"}"#, |r| {
            single(r).is_some_and(|v| v >= 2.0)
        })
        .await;
    let expected_up = [
        (coordinator_http, 1.0),
        (agent_http[0], 1.0),
        (agent_http[1], 0.0),
    ];
    prometheus
        .wait_until(&prom_dir, "up", |r| {
            r.len() == expected_up.len()
                && expected_up.iter().all(|(addr, up)| {
                    r.iter().any(|(labels, value)| {
                        labels["instance"].as_str() == Some(addr.to_string().as_str())
                            && value == up
                    })
                })
        })
        .await;
}

/// The coordinator's lease timeout in the Bazel story: the frozen agent's lease expires this
/// long after its last heartbeat.
const LEASE_TIMEOUT: &str = "2s";

/// Longest the Bazel build may take to reach a `//slow` genrule (a Bazel server starts first).
const BUILD_LIMIT: Duration = Duration::from_secs(180);

#[test]
fn prometheus_sees_a_bazel_build_a_full_queue_and_an_expired_lease() {
    // One Bazel server at a time (see `bazel.rs`); the lock is held outside the runtime.
    let _serial = serial();
    let Some(bazel) = bazel_or_skip() else {
        return;
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(bazel_build_story(bazel));
}

/// The story of [`prometheus_sees_a_bazel_build_a_full_queue_and_an_expired_lease`].
async fn bazel_build_story(bazel: PathBuf) {
    let dir = visible_tempdir();
    let coordinator_http = http_addr();
    let server = ServerProcess::start_on(
        http_addr(),
        &dir.path().join("data"),
        &["--http-listen", &coordinator_http.to_string()],
        &[("TESSERA_LEASE_TIMEOUT", LEASE_TIMEOUT)],
    );
    // One slot each: the four //slow genrules Bazel sends at once cannot all run.
    let agent_http = [http_addr(), http_addr()];
    let agents = start_agents(&server, dir.path(), &agent_http, 1).await;
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).expect("prometheus dir");
    let Some(prometheus) = Prometheus::start(&prom_dir, coordinator_http, &agent_http) else {
        return;
    };
    // Every target scraped once before the build: the counters' increases start from zero.
    prometheus
        .wait_until(&prom_dir, "sum(up)", |r| single(r) == Some(3.0))
        .await;
    prometheus
        .wait_until(&prom_dir, "tessera_agents_connected", |r| {
            single(r) == Some(2.0)
        })
        .await;

    // Declared after `dir`, so its Bazel server is shut down before the directory goes.
    let mut checkout = Checkout::new(&bazel, dir.path(), "checkout");
    let executor = format!("--remote_executor=grpc://{}", server.addr);
    let build = std::thread::spawn(move || {
        let run = checkout.run(&[
            "test",
            "//slow:slow_test",
            "//tests:pass_test",
            &executor,
            "--jobs=8",
            "--remote_retries=0",
        ]);
        (checkout, run)
    });

    // Freeze the agent that runs a //slow genrule. Polled: an agent announces a lease, not
    // which action it runs; its lease directory is the sign (see `running_slow_lease`).
    let found = poll_until("agent running a //slow genrule", BUILD_LIMIT, async || {
        if build.is_finished() {
            return Some(None);
        }
        agents
            .iter()
            .enumerate()
            .find_map(|(i, a)| running_slow_lease(&a.work_dir).map(|_| Some(i)))
    })
    .await;
    let Some(frozen) = found else {
        let (_, run) = build.join().expect("the build thread");
        panic!(
            "the build ended before any agent ran a //slow genrule ({}):\n{}",
            run.status, run.stderr
        );
    };
    agents[frozen].signal(Signal::SIGSTOP);
    let frozen_http = agent_http[frozen];

    // The frozen agent stops heartbeating: its lease expires and Prometheus cannot scrape it.
    prometheus
        .wait_until(
            &prom_dir,
            "increase(tessera_lease_expired_total[5m])",
            at_least(1.0),
        )
        .await;
    prometheus
        .wait_until(&prom_dir, "up", instance_is(frozen_http, 0.0))
        .await;

    // The expired action runs again on the other agent and the build passes (every test).
    let (checkout, run) = tokio::task::spawn_blocking(move || build.join())
        .await
        .expect("join the build thread")
        .expect("the build thread");
    let run = run.ok();
    run.report("remote execution, an agent frozen mid-build, scraped by Prometheus");
    let actions = assert_all_remote(&run) as f64;
    drop(checkout);

    // Prometheus counted the REAPI traffic of the build: every remote action was an Execute
    // answered OK and an action run ok; inputs and outputs went through the CAS (the 5 MiB
    // gen/big.bin through ByteStream both ways); Bazel asked the action cache about each
    // action before sending it, and each was a miss.
    let grpc_ok = |service: &str, method: &str| {
        format!(
            "increase(tessera_grpc_requests_total\
             {{service=\"{service}\",method=\"{method}\",code=\"OK\"}}[5m])"
        )
    };
    for (promql, min) in [
        (grpc_ok("Execution", "Execute"), actions),
        (
            r#"increase(tessera_actions_total{outcome="ok"}[5m])"#.to_owned(),
            actions,
        ),
        (
            grpc_ok("ContentAddressableStorage", "FindMissingBlobs"),
            1.0,
        ),
        (grpc_ok("ByteStream", "Write"), 1.0),
        (grpc_ok("ByteStream", "Read"), 1.0),
        (
            r#"increase(tessera_action_cache_requests_total{result="miss"}[5m])"#.to_owned(),
            actions,
        ),
        // The queue filled: at some scrape actions waited for a slot, and every action's
        // wait for one was counted.
        ("max_over_time(tessera_queue_depth[5m])".to_owned(), 1.0),
        (
            "increase(tessera_queue_wait_seconds_count[5m])".to_owned(),
            actions,
        ),
    ] {
        let result = prometheus
            .wait_until(&prom_dir, &promql, at_least(min))
            .await;
        println!("prometheus: {promql} = {:?} (>= {min})", single(&result));
    }

    // Continued, the frozen agent is scraped again; then every process stops on drop.
    agents[frozen].signal(Signal::SIGCONT);
    prometheus
        .wait_until(&prom_dir, "up", instance_is(frozen_http, 1.0))
        .await;
}

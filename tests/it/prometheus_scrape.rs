//! A real Prometheus scraping the fleet (issue 13): `prometheus` with a 1 s scrape interval
//! targets a `tessera coordinator --http-listen` and two `tessera agent --http-listen`; a small
//! `tessera run` passes; one agent is killed with SIGKILL. Prometheus's own query API then shows
//! what an operator would see: the agents' own counters show the actions they ran, the agents
//! went from 2 to 1, the job and its tests passed, and `up` is 1 for the coordinator and the
//! surviving agent and 0 for the killed one.
//!
//! A missing `prometheus` (Debian package `prometheus`) fails under CI and skips otherwise.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use tessera_tests::{AgentProcess, ServerProcess, free_port, in_ci, visible_tempdir};

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

/// A free loopback address for an HTTP port.
fn http_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
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
    let mut agents = Vec::new();
    for (i, http) in agent_http.iter().enumerate() {
        let id = format!("agent-{i}");
        agents.push(
            AgentProcess::start_connected(
                &server.endpoint(),
                &dir.path().join(&id),
                &id,
                2,
                &["--http-listen", &http.to_string()],
            )
            .await,
        );
    }
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

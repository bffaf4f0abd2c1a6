//! The agent's HTTP port (`http_listen`): `/healthz`, `/readyz` (connected and not draining)
//! and `/metrics` with the contract's families, scraped from a real agent that ran one lease
//! against the fake coordinator (real CAS services).

use std::time::Duration;

use tessera_proto::tessera::v1::coordinator_message::Kind as CoordinatorKind;
use tessera_proto::tessera::v1::{Drain, LeaseOutcome, LeaseStage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{FakeCoordinator, PATIENCE, TestAgent, input_dir, lease};

/// A free loopback address (bound, read, released).
fn free_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

/// `GET path`: the status code and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers end");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status code");
    (status, body.to_owned())
}

/// Polls `/readyz` until it answers `want` (the agent's state changes in the background).
async fn wait_ready(addr: std::net::SocketAddr, want: u16) -> String {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let (status, body) = get(addr, "/readyz").await;
            if status == want {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("/readyz never answered {want}"))
}

/// The value of `series` (name with labels, as printed) in a scrape.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from the scrape:\n{text}"))
}

#[tokio::test]
async fn a_scrape_shows_the_lease_the_agent_ran() {
    let addr = free_addr();
    let mut coordinator = FakeCoordinator::start().await;
    let inputs = input_dir(&[("data.txt", "twelve bytes", false)]);
    let root = coordinator.upload_dir(inputs.path()).await;
    let agent = TestAgent::start(&coordinator.endpoint, |config| {
        config.http_listen = Some(addr);
    });
    let link = coordinator.link().await;
    assert_eq!(get(addr, "/healthz").await.0, 200);
    wait_ready(addr, 200).await;

    let (_, before) = get(addr, "/metrics").await;
    assert_eq!(sample(&before, "tessera_agent_slots{state=\"idle\"}"), 2.0);
    assert_eq!(
        sample(&before, "tessera_agent_actions_total{outcome=\"ok\"}"),
        0.0
    );

    let mut link = link;
    link.lease(lease("l1", root, &["sh", "-c", "cat data.txt"]))
        .await;
    let answer = link.result().await;
    assert_eq!(
        answer.outcome(),
        LeaseOutcome::Completed,
        "{}",
        answer.message
    );

    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(&text, "tessera_agent_actions_total{outcome=\"ok\"}"),
        1.0
    );
    for outcome in ["failed", "timed_out", "cancelled", "infra_error"] {
        let series = format!("tessera_agent_actions_total{{outcome=\"{outcome}\"}}");
        assert_eq!(sample(&text, &series), 0.0, "{series}");
    }
    assert_eq!(sample(&text, "tessera_agent_slots{state=\"busy\"}"), 0.0);
    assert_eq!(sample(&text, "tessera_agent_slots{state=\"idle\"}"), 2.0);
    assert!(sample(&text, "tessera_agent_fetch_bytes_total") >= 12.0);
    assert!(sample(&text, "tessera_agent_cache_bytes") >= 12.0);
    assert_eq!(
        sample(&text, "tessera_agent_action_overhead_seconds_count"),
        1.0
    );
    check_with_promtool(&text);

    // Draining with a lease running (an idle agent that drains exits at once): no longer
    // ready, still alive, busy slot counted.
    link.lease(lease("l2", root, &["sleep", "2"])).await;
    link.wait_stage("l2", LeaseStage::Executing).await;
    link.send(CoordinatorKind::Drain(Drain {})).await;
    let reason = wait_ready(addr, 503).await;
    assert!(reason.contains("draining"), "{reason}");
    assert_eq!(get(addr, "/healthz").await.0, 200);
    let (_, text) = get(addr, "/metrics").await;
    assert_eq!(sample(&text, "tessera_agent_slots{state=\"busy\"}"), 1.0);
    assert_eq!(link.result().await.outcome(), LeaseOutcome::Completed);
    agent.stop().await;
}

/// `promtool check metrics` on the scrape, where promtool is installed (it comes with
/// Debian's `prometheus`; tests/it/prometheus_rules.rs requires it under CI).
fn check_with_promtool(text: &str) {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: the scrape is not linted");
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the scrape");
    let output = child.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The port serves the classic text format (what promtool 2.42 lints) unless a scraper
    // asks for OpenMetrics; any complaint fails the test.
    let problems: Vec<&str> = report.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(problems.is_empty(), "promtool check metrics:\n{report}");
}

//! The session: heartbeats, reconnecting (leases keep running, results arrive on the next
//! stream), slots, draining on shutdown or on `Drain`, and abort.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tessera_agent::sandbox::{ProcessExit, ProcessRunner, ProcessSpec, SpawnError};
use tessera_proto::reapi::Directory;
use tessera_proto::tessera::v1::agent_message::Kind as AgentKind;
use tessera_proto::tessera::v1::coordinator_message::Kind as CoordinatorKind;
use tessera_proto::tessera::v1::{Drain, LeaseOutcome, LeaseStage};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::harness::{FakeCoordinator, TestAgent, lease};

#[tokio::test]
async fn heartbeats_list_the_running_leases() {
    let mut coordinator = FakeCoordinator::start().await;
    let empty = coordinator.upload_message(&Directory::default()).await;
    let _agent = TestAgent::start(&coordinator.endpoint, |_| {});
    let mut link = coordinator.link().await;
    link.lease(lease("hb", empty, &["sleep", "0.5"])).await;
    link.wait_stage("hb", LeaseStage::Executing).await;
    let seen = link.heartbeats.len();
    while link.heartbeats.len() < seen + 2 {
        link.next().await;
    }
    assert_eq!(link.heartbeats.last().unwrap(), &["hb".to_owned()]);
    let answer = link.result().await;
    assert_eq!(answer.outcome(), LeaseOutcome::Completed);
    let seen = link.heartbeats.len();
    while link.heartbeats.len() == seen {
        link.next().await;
    }
    assert!(link.heartbeats.last().unwrap().is_empty());
}

#[tokio::test]
async fn leases_survive_a_broken_stream_and_report_on_the_next_one() {
    let mut coordinator = FakeCoordinator::start().await;
    let empty = coordinator.upload_message(&Directory::default()).await;
    let _agent = TestAgent::start(&coordinator.endpoint, |_| {});
    let mut link = coordinator.link().await;
    link.lease(lease("r", empty, &["sh", "-c", "sleep 0.4; echo done"]))
        .await;
    link.wait_stage("r", LeaseStage::Executing).await;
    link.close();

    let mut again = coordinator.link().await;
    assert_eq!(again.hello.agent_id, "test-agent");
    // The first heartbeat after reconnecting claims the running lease.
    while again.heartbeats.is_empty() {
        again.next().await;
    }
    assert_eq!(again.heartbeats[0], ["r".to_owned()]);
    let answer = again.result().await;
    assert_eq!(answer.lease_id, "r");
    assert_eq!(answer.outcome(), LeaseOutcome::Completed);
    let stdout = coordinator
        .read(answer.result.unwrap().stdout_digest.as_ref())
        .await;
    assert_eq!(&stdout[..], b"done\n");
}

#[tokio::test]
async fn results_finished_while_the_coordinator_is_down_are_delivered_after() {
    let mut coordinator = FakeCoordinator::start().await;
    let addr = coordinator.addr;
    let empty = coordinator.upload_message(&Directory::default()).await;
    let _agent = TestAgent::start(&coordinator.endpoint, |_| {});
    let mut link = coordinator.link().await;
    link.lease(lease("down", empty, &["sleep", "0.2"])).await;
    link.wait_stage("down", LeaseStage::Executing).await;
    link.close();
    coordinator.stop();
    drop(coordinator);
    tokio::time::sleep(Duration::from_millis(600)).await;

    let mut restarted = FakeCoordinator::start_on(addr).await;
    let mut link = restarted.link().await;
    let answer = link.result().await;
    assert_eq!(answer.lease_id, "down");
    // The upload of stdout/stderr was retried until the CAS came back.
    assert_eq!(
        answer.outcome(),
        LeaseOutcome::Completed,
        "{}",
        answer.message
    );
}

#[tokio::test]
async fn an_agent_started_before_its_coordinator_keeps_trying() {
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let _agent = TestAgent::start(&format!("http://{addr}"), |_| {});
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut coordinator = FakeCoordinator::start_on(addr).await;
    let link = coordinator.link().await;
    assert_eq!(link.hello.agent_id, "test-agent");
}

#[tokio::test]
async fn shutdown_drains_running_leases_and_refuses_new_ones() {
    let mut coordinator = FakeCoordinator::start().await;
    let empty = coordinator.upload_message(&Directory::default()).await;
    let agent = TestAgent::start(&coordinator.endpoint, |_| {});
    let mut link = coordinator.link().await;
    link.lease(lease("running", empty, &["sleep", "0.3"])).await;
    link.wait_stage("running", LeaseStage::Executing).await;

    agent.shutdown.cancel();
    while !link.draining {
        link.next().await;
    }
    link.lease(lease("late", empty, &["true"])).await;
    let late = link.result().await;
    assert_eq!(late.lease_id, "late");
    assert_eq!(late.outcome(), LeaseOutcome::Refused);
    assert!(late.message.contains("draining"), "{}", late.message);

    let finished = link.result().await;
    assert_eq!(finished.lease_id, "running");
    assert_eq!(finished.outcome(), LeaseOutcome::Completed);
    link.wait_closed().await;
    agent.exited().await.unwrap();
}

#[tokio::test]
async fn a_drain_message_drains_too() {
    let mut coordinator = FakeCoordinator::start().await;
    let agent = TestAgent::start(&coordinator.endpoint, |_| {});
    let mut link = coordinator.link().await;
    link.send(CoordinatorKind::Drain(Drain {})).await;
    assert!(matches!(
        link.next().await,
        Some(AgentKind::Draining(_)) | Some(AgentKind::Heartbeat(_))
    ));
    link.wait_closed().await;
    assert!(link.draining);
    agent.exited().await.unwrap();
}

#[tokio::test]
async fn abort_stops_running_commands_and_reports_them_unavailable() {
    let mut coordinator = FakeCoordinator::start().await;
    let empty = coordinator.upload_message(&Directory::default()).await;
    let agent = TestAgent::start(&coordinator.endpoint, |_| {});
    let mut link = coordinator.link().await;
    link.lease(lease("long", empty, &["sleep", "30"])).await;
    link.wait_stage("long", LeaseStage::Executing).await;
    agent.shutdown.cancel();
    agent.abort.cancel();
    let answer = link.result().await;
    assert_eq!(
        answer.outcome(),
        LeaseOutcome::Retryable,
        "{}",
        answer.message
    );
    agent.exited().await.unwrap();
}

/// Runs nothing: each command waits for a permit, then "exits 0". Lets a test decide when
/// leases finish.
struct GatedRunner {
    gate: Arc<Semaphore>,
}

impl ProcessRunner for GatedRunner {
    fn run<'a>(
        &'a self,
        spec: &'a ProcessSpec,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ProcessExit, SpawnError>> {
        Box::pin(async move {
            std::fs::write(&spec.stdout, "").unwrap();
            std::fs::write(&spec.stderr, "").unwrap();
            tokio::select! {
                permit = self.gate.acquire() => {
                    permit.unwrap().forget();
                    Ok(ProcessExit::Exited { exit_code: 0 })
                }
                () = cancel.cancelled() => Ok(ProcessExit::Cancelled),
            }
        })
    }
}

#[tokio::test]
async fn leases_beyond_the_slots_are_refused_at_once() {
    let mut coordinator = FakeCoordinator::start().await;
    let empty = coordinator.upload_message(&Directory::default()).await;
    let gate = Arc::new(Semaphore::new(0));
    let runner: Arc<dyn ProcessRunner> = Arc::new(GatedRunner {
        gate: Arc::clone(&gate),
    });
    let work_dir = tempfile::tempdir().unwrap();
    let config = tessera_agent::AgentConfig {
        coordinator: coordinator.endpoint.clone(),
        work_dir: work_dir.path().to_owned(),
        slots: 1,
        id: Some("gated".into()),
        ..tessera_agent::AgentConfig::default()
    };
    let shutdown = CancellationToken::new();
    let abort = CancellationToken::new();
    let _guard = abort.clone().drop_guard();
    let agent = tokio::spawn(tessera_agent::Agent::run_with_runner(
        config,
        shutdown.clone(),
        abort,
        Some(runner),
    ));
    let mut link = coordinator.link().await;
    assert_eq!(link.hello.slots, 1);

    link.lease(lease("first", empty, &["true"])).await;
    link.wait_stage("first", LeaseStage::Executing).await;
    link.lease(lease("second", empty, &["true"])).await;
    let refused = link.result().await;
    assert_eq!(refused.lease_id, "second");
    assert_eq!(refused.outcome(), LeaseOutcome::Refused);
    assert!(refused.message.contains("slots"), "{}", refused.message);

    gate.add_permits(1);
    let done = link.result().await;
    assert_eq!(done.lease_id, "first");
    assert_eq!(done.outcome(), LeaseOutcome::Completed);

    // The slot is free again.
    link.lease(lease("third", empty, &["true"])).await;
    gate.add_permits(1);
    assert_eq!(link.result().await.lease_id, "third");

    shutdown.cancel();
    link.wait_closed().await;
    tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

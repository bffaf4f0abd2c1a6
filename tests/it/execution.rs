//! Remote execution through the coordinator with agents that speak the real agent protocol
//! but answer from the test: the Execute stream's stages, caching, merging, lease expiry and
//! stale results, retries, cancellation, re-attaching, platform checks and fair share.

use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_proto::longrunning::Operation;
use tessera_proto::reapi::execution_client::ExecutionClient;
use tessera_proto::reapi::{
    ActionResult, ExecuteRequest, ExecuteResponse, WaitExecutionRequest, execution_stage,
    platform::Property,
};
use tessera_proto::tessera::v1::agent_session_client::AgentSessionClient;
use tessera_proto::tessera::v1::{
    AgentMessage, Heartbeat, Hello, Lease, LeaseOutcome, LeaseResult, agent_message,
    coordinator_message,
};
use tessera_tests::{TestServer, response_of, stage_of, upload_action};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// An agent driven by the test: it receives leases on `leases` and answers with `send`.
struct ScriptedAgent {
    out: mpsc::Sender<AgentMessage>,
    leases: mpsc::Receiver<Lease>,
    frozen: std::sync::Arc<std::sync::atomic::AtomicU8>,
}

const FROZEN: u8 = 1;
const GONE: u8 = 2;

impl Drop for ScriptedAgent {
    fn drop(&mut self) {
        // Ends the heartbeats, so the session closes like a dead agent's.
        self.frozen.store(GONE, std::sync::atomic::Ordering::SeqCst);
    }
}

impl ScriptedAgent {
    async fn connect(
        server: &TestServer,
        id: &str,
        slots: u32,
        properties: &[(&str, &str)],
    ) -> Self {
        let (out, rx) = mpsc::channel(64);
        out.send(AgentMessage {
            kind: Some(agent_message::Kind::Hello(Hello {
                agent_id: id.to_owned(),
                properties: properties
                    .iter()
                    .map(|(k, v)| Property {
                        name: (*k).to_owned(),
                        value: (*v).to_owned(),
                    })
                    .collect(),
                slots,
                version: "test".to_owned(),
                protocol_version: tessera_proto::AGENT_PROTOCOL_VERSION,
            })),
        })
        .await
        .unwrap();
        let mut inbound = AgentSessionClient::new(server.channel().await)
            .session(ReceiverStream::new(rx))
            .await
            .expect("session opens")
            .into_inner();
        // Like a real agent, say "alive" regularly (without extending any lease).
        let beat = out.clone();
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(0));
        let stopped = frozen.clone();
        tokio::spawn(async move {
            loop {
                // A cadence, like a real agent's heartbeat timer: real time is the point.
                tokio::time::sleep(Duration::from_millis(100)).await;
                match stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    FROZEN => continue,
                    GONE => return,
                    _ => {}
                }
                let message = AgentMessage {
                    kind: Some(agent_message::Kind::Heartbeat(Heartbeat::default())),
                };
                if beat.send(message).await.is_err() {
                    return;
                }
            }
        });
        let (lease_tx, leases) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                if let Some(coordinator_message::Kind::Lease(lease)) = message.kind
                    && lease_tx.send(lease).await.is_err()
                {
                    return;
                }
            }
        });
        ScriptedAgent {
            out,
            leases,
            frozen,
        }
    }

    /// Stops the regular heartbeats, as SIGSTOP would.
    fn freeze(&mut self) {
        self.frozen
            .store(FROZEN, std::sync::atomic::Ordering::SeqCst);
    }

    async fn next_lease(&mut self) -> Lease {
        tokio::time::timeout(Duration::from_secs(10), self.leases.recv())
            .await
            .expect("a lease within 10 s")
            .expect("session open")
    }

    async fn heartbeat(&self, lease_ids: &[&str]) {
        self.send(agent_message::Kind::Heartbeat(Heartbeat {
            lease_ids: lease_ids.iter().map(|s| (*s).to_owned()).collect(),
        }))
        .await;
    }

    async fn finish(&self, lease: &Lease, exit_code: i32) {
        self.send(agent_message::Kind::Result(LeaseResult {
            lease_id: lease.lease_id.clone(),
            attempt: lease.attempt,
            result: Some(ActionResult {
                exit_code,
                ..Default::default()
            }),
            outcome: LeaseOutcome::Completed as i32,
            ..Default::default()
        }))
        .await;
    }

    async fn fail_infra(&self, lease: &Lease) {
        self.send(agent_message::Kind::Result(LeaseResult {
            lease_id: lease.lease_id.clone(),
            attempt: lease.attempt,
            result: None,
            outcome: LeaseOutcome::Retryable as i32,
            message: "disk on fire".to_owned(),
            ..Default::default()
        }))
        .await;
    }

    async fn send(&self, kind: agent_message::Kind) {
        self.out
            .send(AgentMessage { kind: Some(kind) })
            .await
            .unwrap();
    }
}

async fn execute(
    server: &TestServer,
    digest: &Digest,
    skip_cache: bool,
) -> tonic::Streaming<Operation> {
    ExecutionClient::new(server.channel().await)
        .execute(ExecuteRequest {
            action_digest: Some(digest.to_proto()),
            skip_cache_lookup: skip_cache,
            ..Default::default()
        })
        .await
        .expect("execute accepted")
        .into_inner()
}

/// Reads the stream to the end; returns the stages seen and the final response.
async fn drain(
    mut stream: tonic::Streaming<Operation>,
) -> (Vec<execution_stage::Value>, String, ExecuteResponse) {
    let mut stages = Vec::new();
    while let Some(op) = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("operation update within 20 s")
    {
        let op = op.expect("stream ok");
        stages.push(stage_of(&op));
        if op.done {
            return (
                stages,
                op.name.clone(),
                response_of(&op).expect("done carries a response"),
            );
        }
    }
    panic!("stream ended before done; stages {stages:?}");
}

async fn server(lease_timeout: Duration) -> TestServer {
    TestServer::start_with(|c| {
        c.lease_timeout = lease_timeout;
        c.max_attempts = 3;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_runs_once_then_comes_from_the_cache() {
    let server = server(Duration::from_secs(10)).await;
    let client = server.client(DigestFunction::Sha256).await;
    let mut agent = ScriptedAgent::connect(&server, "a1", 2, &[("OSFamily", "linux")]).await;
    let digest = upload_action(&client, &["true"], &[], &[], false).await;

    let stream = execute(&server, &digest, false).await;
    let lease = agent.next_lease().await;
    assert_eq!(lease.attempt, 1);
    assert_eq!(lease.command.as_ref().unwrap().arguments, vec!["true"]);
    agent.finish(&lease, 0).await;
    let (stages, _, response) = drain(stream).await;
    assert!(
        matches!(
            stages.first(),
            Some(execution_stage::Value::Queued | execution_stage::Value::Executing)
        ),
        "{stages:?}"
    );
    assert_eq!(stages.last(), Some(&execution_stage::Value::Completed));
    assert!(!response.cached_result);
    assert_eq!(response.status.unwrap_or_default().code, 0);

    let (stages, _, response) = drain(execute(&server, &digest, false).await).await;
    assert_eq!(stages, vec![execution_stage::Value::Completed]);
    assert!(
        response.cached_result,
        "second run answered from the action cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_actions_are_reported_and_not_cached() {
    let server = server(Duration::from_secs(10)).await;
    let client = server.client(DigestFunction::Sha256).await;
    let mut agent = ScriptedAgent::connect(&server, "a1", 1, &[]).await;
    let digest = upload_action(&client, &["false"], &[], &[], false).await;
    for _ in 0..2 {
        let stream = execute(&server, &digest, false).await;
        let lease = agent.next_lease().await;
        agent.finish(&lease, 1).await;
        let (_, _, response) = drain(stream).await;
        assert_eq!(response.result.unwrap().exit_code, 1);
        assert!(!response.cached_result);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_in_flight_actions_are_merged() {
    let server = server(Duration::from_secs(10)).await;
    let client = server.client(DigestFunction::Sha256).await;
    let mut agent = ScriptedAgent::connect(&server, "a1", 4, &[]).await;
    let digest = upload_action(&client, &["echo", "merged"], &[], &[], false).await;
    let first = execute(&server, &digest, false).await;
    let lease = agent.next_lease().await;
    let second = execute(&server, &digest, true).await;
    agent.finish(&lease, 0).await;
    let (_, a, _) = drain(first).await;
    let (_, b, _) = drain(second).await;
    assert_eq!(a, b, "both clients watched one operation");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), agent.next_lease())
            .await
            .is_err(),
        "the action ran once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_moves_the_work_and_its_late_result_is_refused() {
    let server = server(Duration::from_millis(800)).await;
    let client = server.client(DigestFunction::Sha256).await;
    let mut frozen = ScriptedAgent::connect(&server, "frozen", 1, &[]).await;
    frozen.freeze();
    let digest = upload_action(&client, &["sleep", "1"], &[], &[], false).await;
    let stream = execute(&server, &digest, false).await;
    let first = frozen.next_lease().await;
    // No heartbeats: the lease lapses. A healthy agent joins and gets attempt 2.
    let mut healthy = ScriptedAgent::connect(&server, "healthy", 1, &[]).await;
    let second = healthy.next_lease().await;
    assert_eq!(second.attempt, 2);
    assert_ne!(second.lease_id, first.lease_id);
    // The frozen agent wakes up and reports: refused, nothing counted.
    frozen.finish(&first, 0).await;
    healthy.finish(&second, 0).await;
    let (_, _, response) = drain(stream).await;
    assert_eq!(response.status.unwrap_or_default().code, 0);
    let coordinator_stats = server.wait_for_stats(|s| s.stale_results == 1).await;
    assert_eq!(coordinator_stats.completed, 1);
    assert!(coordinator_stats.expired_leases >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_long_lease_alive() {
    let server = server(Duration::from_millis(600)).await;
    let client = server.client(DigestFunction::Sha256).await;
    let mut agent = ScriptedAgent::connect(&server, "a1", 1, &[]).await;
    let digest = upload_action(&client, &["sleep", "2"], &[], &[], false).await;
    let stream = execute(&server, &digest, false).await;
    let lease = agent.next_lease().await;
    for _ in 0..10 {
        agent.heartbeat(&[&lease.lease_id]).await;
        // Real time: the heartbeats must span more than the lease timeout to prove anything.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    agent.finish(&lease, 0).await;
    let (_, _, response) = drain(stream).await;
    assert_eq!(response.status.unwrap_or_default().code, 0);
    let stats = server.wait_for_stats(|s| s.completed == 1).await;
    assert_eq!(stats.expired_leases, 0);
    assert_eq!(stats.stale_results, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infrastructure_failures_are_retried_then_fail_with_a_clear_status() {
    let server = server(Duration::from_secs(10)).await;
    let client = server.client(DigestFunction::Sha256).await;
    let mut agent = ScriptedAgent::connect(&server, "a1", 1, &[]).await;
    let digest = upload_action(&client, &["true"], &[], &[], false).await;
    let stream = execute(&server, &digest, false).await;
    for attempt in 1..=3 {
        let lease = agent.next_lease().await;
        assert_eq!(lease.attempt, attempt);
        agent.fail_infra(&lease).await;
    }
    let (_, _, response) = drain(stream).await;
    let status = response.status.unwrap();
    assert_eq!(status.code, tonic::Code::Unavailable as i32);
    assert!(
        status.message.contains("3 times") && status.message.contains("disk on fire"),
        "{}",
        status.message
    );
    // Not cached: a new Execute runs it again.
    let _again = execute(&server, &digest, false).await;
    agent.next_lease().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drops_its_stream_re_attaches_with_wait_execution() {
    let server = server(Duration::from_secs(10)).await;
    let client = server.client(DigestFunction::Sha256).await;
    let mut agent = ScriptedAgent::connect(&server, "a1", 1, &[]).await;
    let digest = upload_action(&client, &["true"], &[], &[], false).await;
    let mut stream = execute(&server, &digest, false).await;
    let name = stream.next().await.unwrap().unwrap().name;
    drop(stream);
    let lease = agent.next_lease().await;
    agent.finish(&lease, 0).await;
    let waited = ExecutionClient::new(server.channel().await)
        .wait_execution(WaitExecutionRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    let (_, waited_name, response) = drain(waited).await;
    assert_eq!(waited_name, name);
    assert_eq!(response.status.unwrap_or_default().code, 0);

    let missing = ExecutionClient::new(server.channel().await)
        .wait_execution(WaitExecutionRequest {
            name: "operations/nope".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_keys_nobody_declared_are_refused_and_known_ones_wait() {
    let server = server(Duration::from_secs(10)).await;
    let client = server.client(DigestFunction::Sha256).await;
    let unknown = upload_action(&client, &["true"], &[], &[("colour", "blue")], false).await;
    let err = ExecutionClient::new(server.channel().await)
        .execute(ExecuteRequest {
            action_digest: Some(unknown.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("colour"), "{}", err.message());

    // `pool` is configured but no agent offers pool=gpu: the action waits until one joins.
    let gpu = upload_action(&client, &["true"], &[], &[("pool", "gpu")], false).await;
    let stream = execute(&server, &gpu, false).await;
    let mut cpu_agent = ScriptedAgent::connect(&server, "cpu", 1, &[("pool", "cpu")]).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), cpu_agent.next_lease())
            .await
            .is_err()
    );
    let mut gpu_agent =
        ScriptedAgent::connect(&server, "gpu", 1, &[("pool", "gpu"), ("cores", "8")]).await;
    let lease = gpu_agent.next_lease().await;
    gpu_agent.finish(&lease, 0).await;
    drain(stream).await;

    // Numeric keys are at-least: cores=4 runs on the 8-core agent.
    let four = upload_action(
        &client,
        &["true"],
        &[],
        &[("cores", "4"), ("pool", "gpu")],
        false,
    )
    .await;
    let stream = execute(&server, &four, false).await;
    let lease = gpu_agent.next_lease().await;
    gpu_agent.finish(&lease, 0).await;
    drain(stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_operation_tells_its_agent() {
    use tessera_proto::longrunning::CancelOperationRequest;
    use tessera_proto::longrunning::operations_client::OperationsClient;
    let server = server(Duration::from_secs(10)).await;
    let client = server.client(DigestFunction::Sha256).await;
    let (out, rx) = mpsc::channel(8);
    out.send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_id: "a1".into(),
            slots: 1,
            protocol_version: tessera_proto::AGENT_PROTOCOL_VERSION,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound = AgentSessionClient::new(server.channel().await)
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let digest = upload_action(&client, &["sleep", "100"], &[], &[], false).await;
    let mut stream = execute(&server, &digest, false).await;
    let name = stream.next().await.unwrap().unwrap().name;
    let mut lease_id = String::new();
    while let Some(message) = inbound.message().await.unwrap() {
        match message.kind {
            Some(coordinator_message::Kind::Lease(lease)) => {
                lease_id = lease.lease_id;
                OperationsClient::new(server.channel().await)
                    .cancel_operation(CancelOperationRequest { name: name.clone() })
                    .await
                    .unwrap();
            }
            Some(coordinator_message::Kind::Cancel(cancel)) => {
                assert_eq!(cancel.lease_id, lease_id);
                break;
            }
            _ => {}
        }
    }
    let (_, _, response) = drain(stream).await;
    assert_eq!(response.status.unwrap().code, tonic::Code::Cancelled as i32);
    drop(out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_inputs_are_failed_precondition_with_details() {
    use tessera_proto::reapi::Action;
    let server = server(Duration::from_secs(10)).await;
    let client = server.client(DigestFunction::Sha256).await;
    let command = DigestFunction::Sha256.digest_of(b"not uploaded command");
    let root = DigestFunction::Sha256.digest_of(b"not uploaded root");
    let action = Action {
        command_digest: Some(command.to_proto()),
        input_root_digest: Some(root.to_proto()),
        ..Default::default()
    };
    let (digest, bytes) = tessera_cas::digest::digest_message(DigestFunction::Sha256, &action);
    client
        .upload(&[(digest, bytes.into())], false)
        .await
        .unwrap();
    let err = ExecutionClient::new(server.channel().await)
        .execute(ExecuteRequest {
            action_digest: Some(digest.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let details = tessera_proto::rpc::Status::decode(err.details()).unwrap();
    let failure =
        tessera_proto::rpc::PreconditionFailure::decode(details.details[0].value.as_slice())
            .unwrap();
    let subjects: Vec<&str> = failure
        .violations
        .iter()
        .map(|v| v.subject.as_str())
        .collect();
    assert!(
        subjects.contains(&format!("blobs/{}/{}", command.hash_hex(), command.size_bytes).as_str()),
        "{subjects:?}"
    );
    assert!(
        subjects.contains(&format!("blobs/{}/{}", root.hash_hex(), root.size_bytes).as_str()),
        "{subjects:?}"
    );
    assert!(failure.violations.iter().all(|v| v.r#type == "MISSING"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_operations_survive_a_coordinator_restart() {
    let mut first = server(Duration::from_secs(10)).await;
    let client = first.client(DigestFunction::Sha256).await;
    let queued = upload_action(&client, &["echo", "queued"], &[], &[], false).await;
    let finished = upload_action(&client, &["echo", "finished"], &[], &[], false).await;
    let mut agent = ScriptedAgent::connect(&first, "a1", 1, &[]).await;
    let done_stream = execute(&first, &finished, false).await;
    let lease = agent.next_lease().await;
    agent.finish(&lease, 0).await;
    let (_, done_name, _) = drain(done_stream).await;
    drop(agent);
    // Accepted while no agent is connected: stays queued.
    let mut stream = execute(&first, &queued, false).await;
    let queued_name = stream.next().await.unwrap().unwrap().name;
    drop(stream);
    first.stop().await;

    let data_dir = first.dir.path().join("data");
    let second = TestServer::start_with(|c| {
        c.data_dir = data_dir.clone();
        c.lease_timeout = Duration::from_secs(1);
    })
    .await;
    // The finished operation can still be waited on; the queued one runs once an agent joins.
    let (_, name, response) = drain(
        ExecutionClient::new(second.channel().await)
            .wait_execution(WaitExecutionRequest {
                name: done_name.clone(),
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(name, done_name);
    assert_eq!(response.status.unwrap_or_default().code, 0);
    let waiting = ExecutionClient::new(second.channel().await)
        .wait_execution(WaitExecutionRequest {
            name: queued_name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut agent = ScriptedAgent::connect(&second, "a2", 1, &[]).await;
    let lease = agent.next_lease().await;
    assert_eq!(
        lease.command.as_ref().unwrap().arguments,
        vec!["echo", "queued"]
    );
    agent.finish(&lease, 0).await;
    let (_, name, response) = drain(waiting).await;
    assert_eq!(name, queued_name);
    assert_eq!(response.status.unwrap_or_default().code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_held_across_a_coordinator_restart_still_counts() {
    let mut first = server(Duration::from_secs(10)).await;
    let client = first.client(DigestFunction::Sha256).await;
    let digest = upload_action(&client, &["sleep", "5"], &[], &[], false).await;
    let mut agent = ScriptedAgent::connect(&first, "steady", 1, &[]).await;
    let mut stream = execute(&first, &digest, false).await;
    let name = stream.next().await.unwrap().unwrap().name;
    drop(stream);
    let lease = agent.next_lease().await;
    drop(agent);
    first.stop().await;

    let data_dir = first.dir.path().join("data");
    let second = TestServer::start_with(|c| {
        c.data_dir = data_dir.clone();
        c.lease_timeout = Duration::from_secs(5);
    })
    .await;
    // The agent reconnects under the same id and reports the lease it kept running.
    let mut agent = ScriptedAgent::connect(&second, "steady", 1, &[]).await;
    agent.heartbeat(&[&lease.lease_id]).await;
    agent.finish(&lease, 0).await;
    let (_, _, response) = drain(
        ExecutionClient::new(second.channel().await)
            .wait_execution(WaitExecutionRequest { name })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(response.status.unwrap_or_default().code, 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), agent.next_lease())
            .await
            .is_err(),
        "the action was not run again"
    );
    let stats = second.wait_for_stats(|s| s.completed == 1).await;
    assert_eq!(stats.stale_results, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_carry_the_input_tree_and_results_their_small_outputs() {
    use tessera_proto::reapi::{OutputFile, batch_update_blobs_request};
    let server = server(Duration::from_secs(10)).await;
    let function = DigestFunction::Sha256;
    let client = server.client(function).await;
    let mut agent = ScriptedAgent::connect(&server, "a1", 2, &[("OSFamily", "linux")]).await;
    let digest = upload_action(&client, &["make", "out"], &["out"], &[], false).await;

    let stream = execute(&server, &digest, false).await;
    let lease = agent.next_lease().await;
    // The input root (empty) as read when the action was accepted: the agent need not ask.
    let action = lease.action.clone().unwrap();
    let root = Digest::from_proto_opt(function, action.input_root_digest.as_ref()).unwrap();
    let carried: Vec<Digest> = lease
        .input_directories
        .iter()
        .map(|d| function.digest_of(d))
        .collect();
    assert_eq!(carried, vec![root]);

    // Its output comes with the result, not through the CAS: the client reads it all the same.
    let made = b"made, and sent inline";
    let made_digest = function.digest_of(made);
    let inline = |data: &'static [u8], digest: Digest| {
        tessera_cas::client::blob_request(&digest, bytes::Bytes::from_static(data))
    };
    let answer = |lease: &Lease, blob: batch_update_blobs_request::Request| LeaseResult {
        lease_id: lease.lease_id.clone(),
        attempt: lease.attempt,
        result: Some(ActionResult {
            output_files: vec![OutputFile {
                path: "out".to_owned(),
                digest: Some(made_digest.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        outcome: LeaseOutcome::Completed as i32,
        digest_function: function.to_proto(),
        blobs: vec![blob],
        ..Default::default()
    };
    assert_eq!(
        client.find_missing(&[made_digest]).await.unwrap(),
        vec![made_digest]
    );
    agent
        .send(agent_message::Kind::Result(answer(
            &lease,
            inline(made, made_digest),
        )))
        .await;
    let (_, _, response) = drain(stream).await;
    assert_eq!(response.status.unwrap_or_default().code, 0);
    assert_eq!(&client.read(&made_digest, false).await.unwrap()[..], made);

    // Small input files come with the tree, each under its digest.
    let source = b"fn main() {}";
    let source_digest = function.digest_of(source);
    let root = tessera_proto::reapi::Directory {
        files: vec![tessera_proto::reapi::FileNode {
            name: "main.rs".to_owned(),
            digest: Some(source_digest.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let (root_digest, root_bytes) = tessera_cas::digest::digest_message(function, &root);
    let mut action = action.clone();
    action.input_root_digest = Some(root_digest.to_proto());
    let (with_files, action_bytes) = tessera_cas::digest::digest_message(function, &action);
    client
        .upload(
            &[
                (source_digest, bytes::Bytes::from_static(source)),
                (root_digest, root_bytes.into()),
                (with_files, action_bytes.into()),
            ],
            false,
        )
        .await
        .unwrap();
    let stream = execute(&server, &with_files, false).await;
    let lease = agent.next_lease().await;
    let files: Vec<(Digest, &[u8])> = lease
        .input_files
        .iter()
        .map(|blob| {
            let digest = Digest::from_proto_opt(function, blob.digest.as_ref()).unwrap();
            (digest, &blob.data[..])
        })
        .collect();
    assert_eq!(files, vec![(source_digest, &source[..])]);
    assert_eq!(lease.input_directories.len(), 1);
    agent.finish(&lease, 0).await;
    drain(stream).await;

    // A result whose inline output does not match its digest is not taken: the action runs
    // again, on the next attempt.
    let other = b"another output";
    let other_digest = function.digest_of(other);
    let stream = execute(&server, &digest, true).await;
    let lease = agent.next_lease().await;
    assert_eq!(lease.attempt, 1);
    let mut result = answer(&lease, inline(b"not what it says!", other_digest));
    result.result.as_mut().unwrap().output_files[0].digest = Some(other_digest.to_proto());
    agent.send(agent_message::Kind::Result(result)).await;
    let again = agent.next_lease().await;
    assert_eq!(
        again.attempt, 2,
        "the refused result counts as a failed attempt"
    );
    assert_eq!(
        client.find_missing(&[other_digest]).await.unwrap(),
        vec![other_digest],
        "nothing of the refused result was stored"
    );
    agent.finish(&again, 0).await;
    let (_, _, response) = drain(stream).await;
    assert_eq!(response.status.unwrap_or_default().code, 0);
}

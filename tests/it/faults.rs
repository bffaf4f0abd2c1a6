//! Faults with real processes: a `tessera coordinator` and `tessera agent`s as children of the
//! test, killed, frozen, restarted and cut off from the network while they work. In every
//! case the work finishes exactly once, with the result of the attempt that counted.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::sys::signal::Signal;
use tessera_cas::client::CasClient;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_proto::reapi::action_cache_client::ActionCacheClient;
use tessera_proto::reapi::execution_client::ExecutionClient;
use tessera_proto::reapi::{
    ExecuteRequest, ExecuteResponse, GetActionResultRequest, WaitExecutionRequest, execution_stage,
};
use tessera_tests::{
    AgentProcess, Netns, ServerProcess, free_port, in_ci, lines, response_of, upload_action,
    wait_stage,
};
use tonic::transport::Channel;

const LEASE_TIMEOUT: &str = "2s";

fn coordinator(dir: &std::path::Path, addr: SocketAddr) -> ServerProcess {
    ServerProcess::start_on(
        addr,
        &dir.join("data"),
        &[],
        &[
            ("TESSERA_LEASE_TIMEOUT", LEASE_TIMEOUT),
            // Some tests listen beyond loopback, inside this machine only.
            ("TESSERA_INSECURE_NO_TLS", "true"),
            ("TESSERA_INSECURE_NO_AUTH", "true"),
        ],
    )
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Starts an execution and returns its name once an agent is running it (the stream is
/// dropped then).
async fn execute_until_running(endpoint: &str, digest: &Digest) -> String {
    let mut stream = ExecutionClient::new(channel(endpoint).await)
        .execute(ExecuteRequest {
            action_digest: Some(digest.to_proto()),
            skip_cache_lookup: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    wait_stage(
        &mut stream,
        execution_stage::Value::Executing,
        Duration::from_secs(30),
    )
    .await
    .name
}

/// Waits for the operation to finish, re-attaching with WaitExecution through coordinator
/// restarts.
async fn wait_done(endpoint: &str, name: &str, limit: Duration) -> ExecuteResponse {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let Ok(channel) = Channel::from_shared(endpoint.to_owned())
            .unwrap()
            .connect()
            .await
        else {
            // A pause between reconnects, not a wait for a state: the server may be restarting.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(stream) = ExecutionClient::new(channel)
            .wait_execution(WaitExecutionRequest {
                name: name.to_owned(),
            })
            .await
        else {
            // The same pause before calling again.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        while let Ok(Some(Ok(op))) = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .map(|o| o.map(|r| r.map_err(|_| ())))
        {
            if let Some(response) = response_of(&op) {
                return response;
            }
        }
    }
    panic!("operation {name} did not finish within {limit:?}");
}

fn worker(response: &ExecuteResponse) -> String {
    response
        .result
        .as_ref()
        .and_then(|r| r.execution_metadata.as_ref())
        .map(|m| m.worker.clone())
        .unwrap_or_default()
}

fn assert_ok(response: &ExecuteResponse) {
    let status = response.status.clone().unwrap_or_default();
    assert_eq!(status.code, 0, "status: {status:?}");
    assert_eq!(
        response.result.as_ref().map(|r| r.exit_code),
        Some(0),
        "{response:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_action_costs_a_retry_not_a_result() {
    let dir = tempfile::tempdir().unwrap();
    let server = coordinator(dir.path(), loopback());
    let endpoint = server.endpoint();
    let mut doomed = AgentProcess::start(&endpoint, &dir.path().join("a"), "doomed", 1, &[]);
    let client = CasClient::connect(&endpoint, "", DigestFunction::Sha256)
        .await
        .unwrap();
    let digest = upload_action(
        &client,
        &["sh", "-c", "sleep 2; echo done > out.txt"],
        &["out.txt"],
        &[],
        false,
    )
    .await;
    let name = execute_until_running(&endpoint, &digest).await;

    let _survivor = AgentProcess::start(&endpoint, &dir.path().join("b"), "survivor", 1, &[]);
    doomed.signal(Signal::SIGKILL);
    doomed.wait_exit(Duration::from_secs(5)).expect("killed");

    let response = wait_done(&endpoint, &name, Duration::from_secs(60)).await;
    assert_ok(&response);
    assert_eq!(worker(&response), "survivor");
    let out = &response.result.as_ref().unwrap().output_files;
    assert_eq!(out.len(), 1, "{out:?}");
    let data = client
        .read(
            &Digest::from_proto(DigestFunction::Sha256, out[0].digest.as_ref().unwrap()).unwrap(),
            false,
        )
        .await
        .unwrap();
    assert_eq!(&data[..], b"done\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_loses_its_lease_and_its_late_result_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = coordinator(dir.path(), loopback());
    let endpoint = server.endpoint();
    let frozen = AgentProcess::start(&endpoint, &dir.path().join("a"), "frozen", 1, &[]);
    let client = CasClient::connect(&endpoint, "", DigestFunction::Sha256)
        .await
        .unwrap();
    let digest = upload_action(
        &client,
        &["sh", "-c", "sleep 1; echo done"],
        &[],
        &[],
        false,
    )
    .await;
    let name = execute_until_running(&endpoint, &digest).await;

    frozen.signal(Signal::SIGSTOP);
    let _healthy = AgentProcess::start(&endpoint, &dir.path().join("b"), "healthy", 1, &[]);
    let response = wait_done(&endpoint, &name, Duration::from_secs(60)).await;
    assert_ok(&response);
    assert_eq!(worker(&response), "healthy", "the work moved on");

    // Wake the frozen agent: whatever it reports now is refused, so the cached result stays
    // the healthy agent's.
    frozen.signal(Signal::SIGCONT);
    server
        .log
        .wait_for(lines::RESULT_REFUSED, Duration::from_secs(30))
        .await;
    let cached = ActionCacheClient::new(channel(&endpoint).await)
        .get_action_result(GetActionResultRequest {
            action_digest: Some(digest.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cached
            .execution_metadata
            .map(|m| m.worker)
            .unwrap_or_default(),
        "healthy",
        "the late result was not counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_build_keeps_every_accepted_operation() {
    let dir = tempfile::tempdir().unwrap();
    let addr = loopback();
    let mut server = coordinator(dir.path(), addr);
    let endpoint = server.endpoint();
    let _agent = AgentProcess::start(&endpoint, &dir.path().join("a"), "a", 1, &[]);
    let client = CasClient::connect(&endpoint, "", DigestFunction::Sha256)
        .await
        .unwrap();
    let mut names = Vec::new();
    let mut first = None;
    for i in 0..4 {
        let script = format!("sleep 0.5; echo {i} > out.txt");
        let digest = upload_action(&client, &["sh", "-c", &script], &["out.txt"], &[], false).await;
        let mut stream = ExecutionClient::new(channel(&endpoint).await)
            .execute(ExecuteRequest {
                action_digest: Some(digest.to_proto()),
                skip_cache_lookup: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        names.push(stream.next().await.unwrap().unwrap().name);
        first.get_or_insert(stream);
    }
    // Mid-build: one action running, the rest queued.
    let mut first = first.expect("four executions");
    wait_stage(
        &mut first,
        execution_stage::Value::Executing,
        Duration::from_secs(30),
    )
    .await;
    server.kill();
    let _restarted = coordinator(dir.path(), addr);
    for name in &names {
        let response = wait_done(&endpoint, name, Duration::from_secs(60)).await;
        assert_ok(&response);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_agent_finishes_its_work_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    let server = coordinator(dir.path(), loopback());
    let endpoint = server.endpoint();
    let mut agent = AgentProcess::start(&endpoint, &dir.path().join("a"), "a", 1, &[]);
    let client = CasClient::connect(&endpoint, "", DigestFunction::Sha256)
        .await
        .unwrap();
    let digest = upload_action(
        &client,
        &["sh", "-c", "sleep 1; echo drained"],
        &[],
        &[],
        false,
    )
    .await;
    let name = execute_until_running(&endpoint, &digest).await;
    // EXECUTING means the lease was sent; drain once the agent has taken it.
    agent
        .log
        .wait_for(lines::LEASE_ACCEPTED, Duration::from_secs(30))
        .await;
    agent.signal(Signal::SIGTERM);
    let response = wait_done(&endpoint, &name, Duration::from_secs(30)).await;
    assert_ok(&response);
    assert_eq!(worker(&response), "a");
    let status = agent
        .wait_exit(Duration::from_secs(15))
        .expect("agent exits after draining");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_from_the_network_loses_its_work_to_another() {
    let Some(netns) = Netns::create(7) else {
        assert!(
            !in_ci(),
            "network namespaces are required under CI (root and iproute2)"
        );
        eprintln!("SKIP: network namespaces need root and iproute2");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = coordinator(dir.path(), SocketAddr::from(([0, 0, 0, 0], port)));
    let endpoint = server.endpoint();
    // The isolated agent reaches the coordinator only through the veth link.
    let remote_endpoint = format!("http://{}:{port}", netns.host_ip);
    let mut isolated = netns
        .command(tessera_tests::tessera_bin())
        .args([
            "agent",
            "--coordinator",
            &remote_endpoint,
            "--slots",
            "1",
            "--id",
            "isolated",
            "--work-dir",
        ])
        .arg(dir.path().join("isolated"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let client = CasClient::connect(&endpoint, "", DigestFunction::Sha256)
        .await
        .unwrap();
    let digest = upload_action(
        &client,
        &["sh", "-c", "sleep 2; echo done"],
        &[],
        &[],
        false,
    )
    .await;
    let name = execute_until_running(&endpoint, &digest).await;

    netns.cut();
    let _local = AgentProcess::start(&endpoint, &dir.path().join("local"), "local", 1, &[]);
    let response = wait_done(&endpoint, &name, Duration::from_secs(60)).await;
    assert_ok(&response);
    assert_eq!(
        worker(&response),
        "local",
        "the work moved to a reachable agent"
    );
    let _ = isolated.kill();
    let _ = isolated.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drops_its_execute_stream_re_attaches_with_wait_execution() {
    let dir = tempfile::tempdir().unwrap();
    let server = coordinator(dir.path(), loopback());
    let endpoint = server.endpoint();
    let _agent = AgentProcess::start(&endpoint, &dir.path().join("a"), "a", 1, &[]);
    let client = CasClient::connect(&endpoint, "", DigestFunction::Sha256)
        .await
        .unwrap();
    let digest = upload_action(
        &client,
        &["sh", "-c", "sleep 1; echo kept > out.txt"],
        &["out.txt"],
        &[],
        false,
    )
    .await;
    // The client goes away (its stream and connection dropped) while the action runs...
    let name = execute_until_running(&endpoint, &digest).await;
    // ...and comes back on a new connection.
    let response = wait_done(&endpoint, &name, Duration::from_secs(30)).await;
    assert_ok(&response);
    assert_eq!(response.result.unwrap().output_files.len(), 1);
}

/// A client frozen mid-upload does not hold its upload. The client is a real `curl` sending a
/// ByteStream Write over HTTP/2 from its stdin: the first message (half of a 6 MiB blob, so
/// the upload has a writer thread of its own) and the first MiB of the second go in, then
/// curl is stopped with SIGSTOP, its connection still up (the kernel keeps answering for it).
/// The coordinator, a real process with `TESSERA_UPLOAD_IDLE_TIMEOUT=1s`, ends the Write and
/// parks it; QueryWriteStatus from another client reports the first message's bytes (the
/// second never came whole), and a Write from there completes the blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_frozen_mid_upload_does_not_hold_it() {
    use std::io::Write as _;

    use tessera_proto::bytestream::byte_stream_client::ByteStreamClient;
    use tessera_proto::bytestream::{QueryWriteStatusRequest, WriteRequest};

    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            !in_ci(),
            "curl is needed (the README's test command installs it)"
        );
        eprintln!("skipped: curl not found");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_on(
        loopback(),
        &dir.path().join("data"),
        &[],
        &[("TESSERA_UPLOAD_IDLE_TIMEOUT", "1s")],
    );
    let endpoint = server.endpoint();
    let data: Vec<u8> = (0..6usize << 20).map(|i| (i % 253) as u8).collect();
    let digest = DigestFunction::Sha256.digest_of(&data);
    let name = format!(
        "uploads/frozen/blobs/{}/{}",
        digest.hash_hex(),
        digest.size_bytes
    );
    let half = data.len() / 2;
    let frame = |offset: usize, end: usize| {
        tessera_proto::wire::framed(&WriteRequest {
            resource_name: if offset == 0 {
                name.clone()
            } else {
                String::new()
            },
            write_offset: offset as i64,
            finish_write: end == data.len(),
            data: bytes::Bytes::copy_from_slice(&data[offset..end]),
        })
        .to_vec()
    };
    // Once curl has read all this, all of the first message has left it: it holds back at
    // most its upload buffer (64 KiB), and the pipe at most as much again.
    let mut framed = frame(0, half);
    framed.extend_from_slice(&frame(half, data.len())[..1 << 20]);

    let mut curl = std::process::Command::new("curl")
        .args([
            "--silent",
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-T",
            "-",
            "-o",
            "/dev/null",
        ])
        .arg(format!("{endpoint}/google.bytestream.ByteStream/Write"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start curl");
    let curl_pid = nix::unistd::Pid::from_raw(i32::try_from(curl.id()).unwrap());
    // The message goes into curl's stdin, which stays open: no end of the request.
    let stdin = curl.stdin.take().unwrap();
    let stdin = tokio::task::spawn_blocking(move || {
        let mut stdin = stdin;
        stdin.write_all(&framed).expect("feed curl");
        stdin.flush().expect("feed curl");
        stdin
    })
    .await
    .unwrap();
    nix::sys::signal::kill(curl_pid, Signal::SIGSTOP).expect("stop curl");

    let line = server
        .log
        .wait_for(lines::UPLOAD_IDLE_PARKED, Duration::from_secs(30))
        .await;
    let state = std::fs::read_to_string(format!("/proc/{curl_pid}/stat")).unwrap();
    assert!(
        state.contains(") T "),
        "curl is still there, stopped, its connection up: {state}"
    );
    // Whole messages count: the first one.
    let channel = Channel::from_shared(endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let committed = ByteStreamClient::new(channel.clone())
        .query_write_status(QueryWriteStatusRequest {
            resource_name: name.clone(),
        })
        .await
        .expect("QueryWriteStatus")
        .into_inner()
        .committed_size;
    assert_eq!(committed, half as i64);
    assert!(line.contains(&format!("committed={half}")), "{line}");
    let offset = usize::try_from(committed).unwrap();
    let rest = WriteRequest {
        resource_name: name.clone(),
        write_offset: committed,
        finish_write: true,
        data: bytes::Bytes::copy_from_slice(&data[offset..]),
    };
    let written = ByteStreamClient::new(channel)
        .max_encoding_message_size(16 << 20)
        .write(futures::stream::iter([rest]))
        .await
        .expect("the upload resumes where the frozen client left it")
        .into_inner();
    assert_eq!(written.committed_size, digest.size_bytes as i64);
    let client = CasClient::connect(&endpoint, "", DigestFunction::Sha256)
        .await
        .unwrap();
    let read = client
        .read(&digest, false)
        .await
        .expect("the blob reads back");
    assert!(read == data, "the blob reads back whole");

    let _ = curl.kill();
    drop(stdin);
    let _ = curl.wait();
    assert_eq!(
        server.log.count("panicked"),
        0,
        "a panic in the coordinator"
    );
}

//! Outputs kept in place: what one action leaves (a prepare step's test binaries, say) is an
//! input of the next action on the same agent, which lays it out from the local cache and
//! downloads none of it (checked on `tessera_agent_fetch_bytes_total`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use prost::Message;
use tessera_cas::digest::Digest;
use tessera_proto::reapi::{Directory, DirectoryNode};
use tessera_proto::tessera::v1::LeaseOutcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{F, FakeCoordinator, TestAgent, command, input_dir, lease};

/// Size of the "test binary": above the batch limit, so it is streamed both ways.
const BINARY_BYTES: u64 = 3 * 1024 * 1024 + 17;

/// `tessera_agent_fetch_bytes_total` as the agent's `/metrics` shows it now.
async fn fetched_bytes(addr: std::net::SocketAddr) -> u64 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
        .lines()
        .find_map(|line| {
            line.strip_prefix("tessera_agent_fetch_bytes_total ")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no fetch counter in:\n{response}"))
}

/// Every file under `dir` named `name`.
fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else if entry.file_name() == name {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn the_next_action_on_the_agent_takes_the_outputs_from_its_cache() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut coordinator = FakeCoordinator::start().await;
    let empty = input_dir(&[]);
    let empty_root = coordinator.upload_dir(empty.path()).await;
    let agent = TestAgent::start(&coordinator.endpoint, |config| {
        config.http_listen = Some(addr);
    });
    let mut link = coordinator.link().await;

    // A prepare-like action: an executable "test binary" and a small data file, in an output
    // directory.
    let script = format!(
        "mkdir -p out && head -c {BINARY_BYTES} /dev/urandom > out/suite && chmod 755 out/suite \
         && echo fixture > out/data && sha256sum out/suite out/data"
    );
    let mut prepare = lease("prepare", empty_root, &["sh", "-c", &script]);
    command(&mut prepare).output_paths = vec!["out".into()];
    link.lease(prepare).await;
    let answer = link.result().await;
    assert_eq!(
        answer.outcome(),
        LeaseOutcome::Completed,
        "{}",
        answer.message
    );
    let built = answer.result.expect("an action result");
    assert_eq!(built.exit_code, 0);
    let sums = coordinator.read(built.stdout_digest.as_ref()).await;
    let out = &built.output_directories[0];
    let out_root = Digest::from_proto_opt(F, out.root_directory_digest.as_ref()).unwrap();

    // The suite's binary is in the agent's cache as an executable, read-only blob.
    let out_dir = Directory::decode(coordinator.read(Some(&out_root.to_proto())).await).unwrap();
    let suite = out_dir.files.iter().find(|f| f.name == "suite").unwrap();
    assert!(suite.is_executable);
    let suite_digest = Digest::from_proto_opt(F, suite.digest.as_ref()).unwrap();
    assert_eq!(suite_digest.size_bytes, BINARY_BYTES);
    let cached = find_named(agent.work_dir.path(), &suite_digest.hash_hex());
    assert_eq!(
        cached.len(),
        1,
        "the blob of the binary in the cache: {cached:?}"
    );
    let mode = std::fs::metadata(&cached[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o555);

    // The next action takes the outputs as its inputs (as a job's list and batch steps take
    // the prepared tree).
    let next_root = Directory {
        directories: vec![DirectoryNode {
            name: "out".into(),
            digest: Some(out_root.to_proto()),
        }],
        ..Directory::default()
    };
    let next_root = coordinator.upload_message(&next_root).await;
    let before = fetched_bytes(addr).await;
    let check = "test -x out/suite && test ! -x out/data && sha256sum out/suite out/data";
    link.lease(lease("batch", next_root, &["sh", "-c", check]))
        .await;
    let answer = link.result().await;
    assert_eq!(
        answer.outcome(),
        LeaseOutcome::Completed,
        "{}",
        answer.message
    );
    let ran = answer.result.expect("an action result");
    assert_eq!(ran.exit_code, 0, "inputs not laid out as built");
    assert_eq!(coordinator.read(ran.stdout_digest.as_ref()).await, sums);
    // Only the two Directory messages came over the network, none of the files.
    let root_bytes = Message::encoded_len(&Directory {
        directories: vec![DirectoryNode {
            name: "out".into(),
            digest: Some(out_root.to_proto()),
        }],
        ..Directory::default()
    }) as u64;
    let fetched = fetched_bytes(addr).await - before;
    assert_eq!(
        fetched,
        root_bytes + out_root.size_bytes,
        "fetched file bytes"
    );

    // The blob stayed intact through both actions.
    let kept = std::fs::read(&cached[0]).unwrap();
    assert_eq!(F.digest_of(&kept), suite_digest);
    drop(link);
    agent.stop().await;
}

//! Outputs kept in place: what one action leaves (a prepare step's test binaries, say) is an
//! input of the next action on the same agent, which lays the large files out from the local
//! cache and downloads none of them (checked on `tessera_agent_fetch_bytes_total`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use prost::Message;
use tessera_cas::digest::Digest;
use tessera_proto::reapi::{Directory, DirectoryNode};
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
    let built = link.run_completed(prepare).await;
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
    let ran = link
        .run_completed(lease("batch", next_root, &["sh", "-c", check]))
        .await;
    assert_eq!(ran.exit_code, 0, "inputs not laid out as built");
    assert_eq!(coordinator.read(ran.stdout_digest.as_ref()).await, sums);
    // Only the two Directory messages and the small file (left to batches) came over the
    // network, none of the binary.
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
        root_bytes + out_root.size_bytes + "fixture\n".len() as u64,
        "fetched bytes"
    );

    // The blob stayed intact through both actions.
    let kept = std::fs::read(&cached[0]).unwrap();
    assert_eq!(F.digest_of(&kept), suite_digest);
    drop(link);
    agent.stop().await;
}

/// Seconds between two timestamps of an action's metadata.
fn seconds(from: Option<&prost_types::Timestamp>, to: Option<&prost_types::Timestamp>) -> f64 {
    let at = |t: Option<&prost_types::Timestamp>| {
        let t = t.expect("timestamp");
        t.seconds as f64 + f64::from(t.nanos) / 1e9
    };
    at(to) - at(from)
}

/// Not a check but a measurement (see the "prepare outputs without copies"): a
/// prepare-like action leaves `TESSERA_MEASURE_MB` (default 512) MiB of executables in eight
/// files, then the next action on the same agent takes them as inputs. Prints the upload
/// stage of the first and the fetch stage of the second, and the bytes fetched. Run with
/// `cargo test -p tessera-agent --release --test it measure_ -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_outputs_round_trip() {
    let total_mb: u64 = std::env::var("TESSERA_MEASURE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let each = total_mb * 1024 * 1024 / 8;
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
    let script = format!(
        "mkdir -p out && for i in 1 2 3 4 5 6 7 8; do head -c {each} /dev/urandom > out/t$i; done \
         && chmod 755 out/t*"
    );
    let mut prepare = lease("prepare", empty_root, &["sh", "-c", &script]);
    prepare.timeout = Some(std::time::Duration::from_secs(600).try_into().unwrap());
    command(&mut prepare).output_paths = vec!["out".into()];
    let built = link.run_completed(prepare).await;
    let meta = built.execution_metadata.clone().unwrap();
    let upload = seconds(
        meta.output_upload_start_timestamp.as_ref(),
        meta.output_upload_completed_timestamp.as_ref(),
    );
    let out_root = built.output_directories[0].root_directory_digest.clone();
    let next_root = coordinator
        .upload_message(&Directory {
            directories: vec![DirectoryNode {
                name: "out".into(),
                digest: out_root,
            }],
            ..Directory::default()
        })
        .await;
    let before = fetched_bytes(addr).await;
    let mut next = lease("next", next_root, &["sh", "-c", "test -x out/t8"]);
    next.timeout = Some(std::time::Duration::from_secs(600).try_into().unwrap());
    let ran = link.run_completed(next).await;
    assert_eq!(ran.exit_code, 0);
    let meta = ran.execution_metadata.unwrap();
    let fetch = seconds(
        meta.input_fetch_start_timestamp.as_ref(),
        meta.input_fetch_completed_timestamp.as_ref(),
    );
    let fetched = fetched_bytes(addr).await - before;
    println!(
        "outputs round trip: {total_mb} MiB in 8 files; upload stage {upload:.3} s; \
         next action's fetch stage {fetch:.3} s; fetched {fetched} bytes"
    );
    drop(link);
    agent.stop().await;
}

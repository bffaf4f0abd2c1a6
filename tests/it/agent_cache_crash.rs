//! The agent's local blob cache through a crash (issue 9, item 4): an agent SIGKILLed and
//! restarted on the same work directory keeps the blobs it had or drops them cleanly, and never
//! hands an action a wrong byte, not even when a cached file was damaged while it was down.
//!
//! A real `tessera agent` runs actions that print the SHA-256 of their inputs (a small file
//! fetched in a batch, a large one streamed, an executable one); the test compares what the
//! action saw with what it uploaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use nix::sys::signal::Signal;
use tessera_cas::client::CasClient;
use tessera_cas::digest::{Digest, DigestFunction, digest_message};
use tessera_proto::reapi::command::EnvironmentVariable;
use tessera_proto::reapi::execution_client::ExecutionClient;
use tessera_proto::reapi::{Action, Command, Directory, ExecuteRequest, ExecuteResponse, FileNode};
use tessera_tests::{AgentProcess, TestServer, lines, noise, response_of};

/// The agent's log line when its cache is open, with `blobs=N`.
const CACHE_OPENED: &str = "blob store opened";
const PATIENCE: Duration = Duration::from_secs(60);

/// One input file of the action.
struct Input {
    name: &'static str,
    data: Bytes,
    executable: bool,
}

impl Input {
    fn digest(&self) -> Digest {
        DigestFunction::Sha256.digest_of(&self.data)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_keeps_or_drops_its_cached_blobs_and_never_serves_a_wrong_byte() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("agent");
    let cas = server.client(DigestFunction::Sha256).await;
    let inputs = [
        // Fetched in a BatchReadBlobs call.
        Input {
            name: "small.bin",
            data: noise(3000, 1),
            executable: false,
        },
        // Past the agent's batch limit: streamed with ByteStream.
        Input {
            name: "large.bin",
            data: noise(1536 * 1024, 2),
            executable: false,
        },
        // Materialized from the cache's executable twin.
        Input {
            name: "tool.bin",
            data: noise(5000, 3),
            executable: true,
        },
    ];
    let action = upload_hashing_action(&cas, &inputs).await;
    let expected: BTreeMap<String, String> = inputs
        .iter()
        .map(|i| (i.name.to_owned(), i.digest().hash_hex()))
        .collect();

    // The inputs go into the agent's cache.
    let mut agent = start_agent(&server, &work, 1).await;
    assert_eq!(run(&server, &cas, &action).await, expected);
    let cached = cached_files(&work);
    for input in &inputs {
        assert!(
            cached.contains_key(&input.digest()),
            "{} is not in the agent's cache after the action: {cached:?}",
            input.name
        );
    }

    // SIGKILL, restart: what the cache says it holds is exactly what is on disk, and right.
    agent.signal(Signal::SIGKILL);
    agent
        .wait_exit(Duration::from_secs(10))
        .expect("the agent dies on SIGKILL");
    drop(agent);
    let mut agent = start_agent(&server, &work, 2).await;
    let opened = agent.log.wait_for(CACHE_OPENED, PATIENCE).await;
    let blobs = field(&opened, "blobs").expect("blobs=N in the cache's open line");
    let cached = cached_files(&work);
    assert_eq!(
        blobs,
        cached.len() as u64,
        "the reopened cache counts {blobs} blobs but holds {} files: {cached:?}",
        cached.len()
    );
    let kept = inputs
        .iter()
        .filter(|i| cached.contains_key(&i.digest()))
        .count();
    eprintln!(
        "after SIGKILL the agent's cache kept {kept} of {} inputs ({blobs} blobs)",
        inputs.len()
    );
    assert_eq!(run(&server, &cas, &action).await, expected);

    // A clean stop, so the cache's index holds every input; then damage two cached files
    // while the agent is down: same length, one byte flipped.
    agent.signal(Signal::SIGTERM);
    let status = agent
        .wait_exit(PATIENCE)
        .expect("the agent stops on SIGTERM");
    assert!(status.success(), "agent exit: {status}");
    drop(agent);
    let cached = cached_files(&work);
    for input in inputs.iter().filter(|i| i.name != "large.bin") {
        let path = cached
            .get(&input.digest())
            .unwrap_or_else(|| panic!("{} is not cached after a clean stop", input.name));
        let mut bytes = std::fs::read(path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        // The cache's files are read-only.
        std::fs::remove_file(path).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    let _agent = start_agent(&server, &work, 3).await;
    let seen = run(&server, &cas, &action).await;
    let wrong: Vec<&String> = expected
        .iter()
        .filter(|(name, hash)| seen.get(*name) != Some(hash))
        .map(|(name, _)| name)
        .collect();
    assert!(
        wrong.is_empty(),
        "the agent handed the action corrupted cached inputs {wrong:?} (the action saw \
         {seen:?}, the inputs are {expected:?})"
    );
}

/// Starts `tessera agent` on `work` and waits until it is connected.
async fn start_agent(server: &TestServer, work: &Path, run: u32) -> AgentProcess {
    let agent = AgentProcess::start(&server.endpoint, work, &format!("agent#{run}"), 1, &[]);
    agent.log.wait_for(lines::AGENT_CONNECTED, PATIENCE).await;
    agent
}

/// Uploads `inputs` as the input root of an action printing `sha256sum` of each, never cached
/// (so every execution runs it), and returns the action's digest.
async fn upload_hashing_action(cas: &CasClient, inputs: &[Input]) -> Digest {
    let function = cas.function();
    let mut files: Vec<FileNode> = inputs
        .iter()
        .map(|i| FileNode {
            name: i.name.to_owned(),
            digest: Some(i.digest().to_proto()),
            is_executable: i.executable,
            ..Default::default()
        })
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let (root_digest, root_bytes) = digest_message(
        function,
        &Directory {
            files,
            ..Default::default()
        },
    );
    let names: Vec<&str> = inputs.iter().map(|i| i.name).collect();
    let command = Command {
        arguments: ["sha256sum"]
            .into_iter()
            .chain(names)
            .map(str::to_owned)
            .collect(),
        environment_variables: vec![EnvironmentVariable {
            name: "PATH".to_owned(),
            value: "/usr/bin:/bin".to_owned(),
        }],
        ..Default::default()
    };
    let (command_digest, command_bytes) = digest_message(function, &command);
    let action = Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(root_digest.to_proto()),
        do_not_cache: true,
        ..Default::default()
    };
    let (action_digest, action_bytes) = digest_message(function, &action);
    let mut blobs: Vec<(Digest, Bytes)> = inputs
        .iter()
        .map(|i| (i.digest(), i.data.clone()))
        .collect();
    blobs.push((root_digest, root_bytes.into()));
    blobs.push((command_digest, command_bytes.into()));
    blobs.push((action_digest, action_bytes.into()));
    cas.upload(&blobs, false).await.expect("upload the action");
    action_digest
}

/// Executes `action` and returns what its `sha256sum` printed: file name → hash.
async fn run(server: &TestServer, cas: &CasClient, action: &Digest) -> BTreeMap<String, String> {
    let mut stream = ExecutionClient::new(server.channel().await)
        .execute(ExecuteRequest {
            action_digest: Some(action.to_proto()),
            skip_cache_lookup: true,
            ..Default::default()
        })
        .await
        .expect("execute accepted")
        .into_inner();
    let response: ExecuteResponse = loop {
        let op = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("the action finishes in time")
            .expect("the stream lasts until the action is done")
            .expect("the stream does not fail");
        if let Some(response) = response_of(&op) {
            break response;
        }
    };
    let status = response.status.clone().unwrap_or_default();
    assert_eq!(status.code, 0, "execution status: {status:?}");
    let result = response.result.expect("a result");
    assert_eq!(result.exit_code, 0, "sha256sum failed: {result:?}");
    let stdout = match result.stdout_digest {
        Some(d) => cas
            .read(&Digest::from_proto(cas.function(), &d).unwrap(), false)
            .await
            .expect("read stdout"),
        None => result.stdout_raw,
    };
    String::from_utf8(stdout.to_vec())
        .expect("sha256sum prints text")
        .lines()
        .map(|line| {
            let (hash, name) = line.split_once("  ").expect("sha256sum's `hash  name`");
            (name.to_owned(), hash.to_owned())
        })
        .collect()
}

/// Every blob file in the agent's cache under `work`, by the digest its name claims; panics
/// if a file's content does not match its name (a wrong blob kept).
fn cached_files(work: &Path) -> BTreeMap<Digest, PathBuf> {
    let mut out = BTreeMap::new();
    for function in [DigestFunction::Sha256, DigestFunction::Blake3] {
        let root = work.join("cache/blobs").join(function.name());
        let Ok(shards) = std::fs::read_dir(&root) else {
            continue;
        };
        for shard in shards {
            for file in std::fs::read_dir(shard.unwrap().path()).unwrap() {
                let path = file.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let digest = function.digest_of(&data);
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                assert_eq!(
                    name,
                    digest.hash_hex(),
                    "the agent's cache keeps {} whose content does not match its name",
                    path.display()
                );
                out.insert(digest, path);
            }
        }
    }
    out
}

/// The value of `name=N` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
}

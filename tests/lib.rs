//! Shared harness for the workspace integration tests (`it/`): servers in-process and as real
//! processes, clients, and helpers to find the `tessera` binary and external tools.
//!
//! Tests wait on events, not on the clock: an operation's stages and a job's events
//! ([`wait_stage`], [`wait_job_event`]), a child process's log lines and exit ([`ChildLog`],
//! [`wait_exit`]). A sleep left in a test is there because real time must pass (a lease
//! timeout, "nothing happens for N seconds", a cadence), and says so; a state nobody announces
//! is polled with [`poll_until`], and the caller says why.
//!
//! - this file: the in-process server ([`TestServer`]), paths, data and REAPI helpers;
//! - `process.rs`: `tessera coordinator` / `tessera agent` child processes;
//! - `child_log.rs`: a child's stderr as lines to wait for;
//! - `certs.rs`: throw-away CAs and certificates made with `openssl` ([`Pki`]);
//! - `netns.rs`: network namespaces joined to the host by a veth link ([`Netns`]);
//! - `wait.rs`: waits on gRPC streams, and polling where there is no event;
//! - `world/`: the world's suites, fetched, run directly and through `tessera run`, compared.

mod certs;
mod child_log;
mod http;
mod netns;
mod process;
mod tmpfs;
mod wait;
pub mod world;

pub use certs::Pki;
pub use child_log::ChildLog;
pub use http::http_get;
pub use netns::Netns;
pub use process::{AgentProcess, ServerProcess, wait_exit};
pub use tmpfs::{Filler, Tmpfs};
pub use wait::{
    POLL_EVERY, blocking_poll_until, poll_until, run_job, wait_job_event, wait_stage,
    watch_job_to_end,
};

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;
use tessera_cas::client::CasClient;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_coordinator::{Coordinator, CoordinatorConfig};
use tonic::transport::Channel;

/// The log lines the harness waits for, named once: if the code rewords one, change it here
/// (`it/harness.rs` checks that each still occurs in the code it comes from).
pub mod lines {
    /// The coordinator has bound its port (`coordinator/src/server.rs`).
    pub const COORDINATOR_LISTENING: &str = "coordinator listening";
    /// A ByteStream Write received nothing for the idle timeout and was parked, with
    /// `resource` and `committed` (`coordinator/src/services/bytestream.rs`).
    pub const UPLOAD_IDLE_PARKED: &str = "upload received nothing; parked for resumption";
    /// An agent got the coordinator's Welcome: the scheduler registered it before sending it
    /// (`agent/src/session.rs`).
    pub const AGENT_CONNECTED: &str = "connected to the coordinator";
    /// An agent took a lease and starts its work (`agent/src/session.rs`).
    pub const LEASE_ACCEPTED: &str = "lease accepted";
    /// The scheduler refused a result for an attempt that no longer counts
    /// (`coordinator/src/execution/`).
    pub const RESULT_REFUSED: &str = "refusing result for a lease that is no longer current";
    /// A store began refusing writes for lack of space, once per episode, with a `store`
    /// field (`cas/src/space.rs`).
    pub const OUT_OF_SPACE: &str = "out of space: refusing writes until space returns";
    /// The episode ended: a write succeeded again; with `store` and `refused=<count>`
    /// (`cas/src/space.rs`).
    pub const SPACE_RETURNED: &str = "space returned: writes accepted again";
}

/// Uploads the directory at `dir` through `cas` (hashed with its digest function) and returns
/// its root digest.
pub async fn upload_dir(cas: &CasClient, dir: &Path) -> Digest {
    let tree = tessera_cas::tree::build_tree(dir, cas.function()).expect("tree of the directory");
    let mut blobs: Vec<(Digest, bytes::Bytes)> = tree.directories.clone();
    for (digest, path) in &tree.files {
        blobs.push((*digest, std::fs::read(path).expect("read a file").into()));
    }
    cas.upload(&blobs, false)
        .await
        .expect("upload the directory");
    tree.root
}

/// A coordinator running inside the test process on a free loopback port.
pub struct TestServer {
    coordinator: Option<Coordinator>,
    /// Its address.
    pub addr: SocketAddr,
    /// `http://addr`.
    pub endpoint: String,
    /// Its data directory (deleted on drop).
    pub dir: TempDir,
}

impl TestServer {
    /// Starts a coordinator with default settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a coordinator after `adjust` has changed its configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut CoordinatorConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = CoordinatorConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: dir.path().join("data"),
            ..CoordinatorConfig::default()
        };
        adjust(&mut config);
        let coordinator = Coordinator::start(&config)
            .await
            .expect("coordinator starts");
        let addr = coordinator.local_addr();
        TestServer {
            coordinator: Some(coordinator),
            addr,
            endpoint: format!("http://{addr}"),
            dir,
        }
    }

    /// A raw channel to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    /// A CAS client for instance `""` hashing with `function`.
    pub async fn client(&self, function: DigestFunction) -> CasClient {
        CasClient::connect(&self.endpoint, "", function)
            .await
            .expect("client connects")
    }

    /// Uploads the directory at `dir` (its tree and files, hashed with `function`) and returns
    /// its root digest: a job's input root.
    pub async fn upload_dir(&self, dir: &Path, function: DigestFunction) -> Digest {
        upload_dir(&self.client(function).await, dir).await
    }

    /// The running coordinator's scheduler.
    pub fn scheduler(&self) -> &tessera_coordinator::execution::scheduler::SchedulerHandle {
        self.coordinator
            .as_ref()
            .expect("server running")
            .scheduler()
    }

    /// The scheduler's counters once `ready` holds for them, or the last ones seen after 10 s
    /// (the caller asserts on them). Polls: the scheduler offers its counters only on request.
    pub async fn wait_for_stats(
        &self,
        ready: impl Fn(&tessera_coordinator::execution::scheduler::SchedulerStats) -> bool,
    ) -> tessera_coordinator::execution::scheduler::SchedulerStats {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (stats, _) = self.scheduler().stats().await.expect("scheduler stats");
            if ready(&stats) || tokio::time::Instant::now() > deadline {
                return stats;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Shuts the server down cleanly, keeping the data directory.
    pub async fn stop(&mut self) {
        if let Some(coordinator) = self.coordinator.take() {
            coordinator.shutdown().await.expect("clean shutdown");
        }
    }
}

/// Path of the `tessera` binary built by this workspace (`cargo build` puts it beside the
/// test binary's `deps/` directory).
pub fn tessera_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("TESSERA_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("tessera");
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build -p tessera-cli` (the README's test command does)",
        bin.display()
    );
    bin
}

/// Where tests keep files that sandboxed actions must see too: not under `/tmp`, since every
/// action gets a private `/tmp` (and a CI checkout, with its `CARGO_TARGET_TMPDIR`, may live
/// under `/tmp`).
pub const VISIBLE_TMP: &str = "/var/tmp/tessera-tests";

/// A fresh temporary directory under [`VISIBLE_TMP`].
pub fn visible_tempdir() -> TempDir {
    std::fs::create_dir_all(VISIBLE_TMP).expect("create the visible temp dir");
    tempfile::tempdir_in(VISIBLE_TMP).expect("temp dir")
}

/// A free loopback port (bound and released; a small race that tests accept).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Whether tests must not skip when a tool is missing (CI sets `CI=true`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// `len` bytes that zstd cannot shrink, the same for the same `seed` (xorshift64).
pub fn noise(len: usize, seed: u64) -> bytes::Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out.into()
}

/// The file holding `digest` in the disk store under `data_dir` (raw or `.zst`), if any.
pub fn blob_file(data_dir: &Path, digest: &tessera_cas::digest::Digest) -> Option<PathBuf> {
    let hash = digest.hash_hex();
    let raw = data_dir
        .join("cas/blobs")
        .join(digest.function.name())
        .join(&hash[..2])
        .join(&hash);
    [raw.with_extension("zst"), raw]
        .into_iter()
        .find(|p| p.exists())
}

/// Builds an Action with `arguments`, an empty input root and `output_paths`, uploads it
/// (Command, Action and root) through `client`, and returns the action digest.
pub async fn upload_action(
    client: &CasClient,
    arguments: &[&str],
    output_paths: &[&str],
    platform: &[(&str, &str)],
    do_not_cache: bool,
) -> tessera_cas::digest::Digest {
    use tessera_cas::digest::digest_message;
    use tessera_proto::reapi::{Action, Command, Directory, Platform, platform::Property};
    let function = client.function();
    let properties: Vec<Property> = platform
        .iter()
        .map(|(k, v)| Property {
            name: (*k).to_owned(),
            value: (*v).to_owned(),
        })
        .collect();
    let command = Command {
        arguments: arguments.iter().map(|a| (*a).to_owned()).collect(),
        output_paths: output_paths.iter().map(|p| (*p).to_owned()).collect(),
        environment_variables: vec![tessera_proto::reapi::command::EnvironmentVariable {
            name: "PATH".to_owned(),
            value: "/usr/bin:/bin".to_owned(),
        }],
        ..Default::default()
    };
    let (command_digest, command_bytes) = digest_message(function, &command);
    let (root_digest, root_bytes) = digest_message(function, &Directory::default());
    let action = Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(root_digest.to_proto()),
        do_not_cache,
        platform: (!properties.is_empty()).then_some(Platform { properties }),
        ..Default::default()
    };
    let (action_digest, action_bytes) = digest_message(function, &action);
    client
        .upload(
            &[
                (command_digest, command_bytes.into()),
                (root_digest, root_bytes.into()),
                (action_digest, action_bytes.into()),
            ],
            false,
        )
        .await
        .expect("upload action");
    action_digest
}

/// The `ExecuteResponse` of a finished operation (`None` while it runs). Panics if the server
/// set `Operation.error`, which REAPI forbids.
pub fn response_of(
    op: &tessera_proto::longrunning::Operation,
) -> Option<tessera_proto::reapi::ExecuteResponse> {
    use prost::Message;
    use tessera_proto::longrunning::operation;
    match &op.result {
        Some(operation::Result::Response(any)) => Some(
            tessera_proto::reapi::ExecuteResponse::decode(any.value.as_slice())
                .expect("ExecuteResponse decodes"),
        ),
        Some(operation::Result::Error(e)) => panic!("Operation.error must never be set: {e:?}"),
        None => None,
    }
}

/// The REAPI stage an operation reports in its metadata.
pub fn stage_of(
    op: &tessera_proto::longrunning::Operation,
) -> tessera_proto::reapi::execution_stage::Value {
    use prost::Message;
    let metadata = op.metadata.as_ref().expect("operation metadata");
    let meta = tessera_proto::reapi::ExecuteOperationMetadata::decode(metadata.value.as_slice())
        .expect("ExecuteOperationMetadata decodes");
    tessera_proto::reapi::execution_stage::Value::try_from(meta.stage).expect("known stage")
}

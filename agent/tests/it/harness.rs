//! A fake coordinator for the agent's tests: the real CAS, ByteStream and Capabilities services
//! of `tessera-coordinator` over an in-memory store, plus a minimal AgentSession server that
//! hands each new agent stream to the test, which then plays the coordinator's part by hand
//! (or refuses it, when the test asks).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use tessera_agent::{Agent, AgentConfig};
use tessera_cas::client::CasClient;
use tessera_cas::digest::{Digest, DigestFunction, digest_message};
use tessera_cas::store::{BlobStore, MemoryStore};
use tessera_cas::tree::build_tree;
use tessera_coordinator::services::bytestream::ByteStreamService;
use tessera_coordinator::services::capabilities::CapabilitiesService;
use tessera_coordinator::services::cas::CasService;
use tessera_proto::bytestream::byte_stream_server::ByteStreamServer;
use tessera_proto::reapi::capabilities_server::CapabilitiesServer;
use tessera_proto::reapi::command::EnvironmentVariable;
use tessera_proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use tessera_proto::reapi::platform::Property;
use tessera_proto::reapi::{Action, ActionResult, Command, Platform};
use tessera_proto::tessera::v1::agent_message::Kind as AgentKind;
use tessera_proto::tessera::v1::agent_session_server::{AgentSession, AgentSessionServer};
use tessera_proto::tessera::v1::coordinator_message::Kind as CoordinatorKind;
use tessera_proto::tessera::v1::{
    AgentMessage, CoordinatorMessage, Hello, Lease, LeaseResult, LeaseStage, Welcome,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// How long a test waits for anything before failing.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);
/// Heartbeat interval the fake coordinator asks for.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(100);

pub(crate) const F: DigestFunction = DigestFunction::Sha256;

/// One agent stream, as the fake coordinator sees it.
pub(crate) struct AgentLink {
    pub hello: Hello,
    to_agent: Option<mpsc::Sender<Result<CoordinatorMessage, Status>>>,
    from_agent: mpsc::UnboundedReceiver<AgentMessage>,
    /// Lease stages reported so far, in order.
    pub progress: Vec<(String, LeaseStage)>,
    /// Lease ids listed by the heartbeats received so far, one list per heartbeat.
    pub heartbeats: Vec<Vec<String>>,
    /// Whether the agent said it is draining.
    pub draining: bool,
    /// The `authorization` header the agent sent with the session call.
    pub authorization: Option<String>,
}

impl AgentLink {
    pub(crate) async fn send(&self, kind: CoordinatorKind) {
        self.to_agent
            .as_ref()
            .expect("link closed")
            .send(Ok(CoordinatorMessage { kind: Some(kind) }))
            .await
            .expect("agent stream gone");
    }

    pub(crate) async fn lease(&self, lease: Lease) {
        self.send(CoordinatorKind::Lease(lease)).await;
    }

    /// Ends the coordinator's side of the stream, as a coordinator restart would.
    pub(crate) fn close(&mut self) {
        self.to_agent = None;
    }

    /// Ends the stream with `status`, as the coordinator does when it revokes the token of an
    /// open session.
    pub(crate) async fn fail(&mut self, status: Status) {
        if let Some(to_agent) = self.to_agent.take() {
            to_agent.send(Err(status)).await.expect("agent stream gone");
        }
    }

    /// The next message from the agent, noting heartbeats, progress and draining on the way;
    /// `None` when the agent closed its side.
    pub(crate) async fn next(&mut self) -> Option<AgentKind> {
        let message = tokio::time::timeout(PATIENCE, self.from_agent.recv())
            .await
            .expect("the agent said nothing in time")?;
        let kind = message.kind.expect("message without kind");
        match &kind {
            AgentKind::Progress(p) => self.progress.push((
                p.lease_id.clone(),
                LeaseStage::try_from(p.stage).expect("known stage"),
            )),
            AgentKind::Heartbeat(h) => self.heartbeats.push(h.lease_ids.clone()),
            AgentKind::Draining(_) => self.draining = true,
            _ => {}
        }
        Some(kind)
    }

    /// Waits for the next result, skipping everything else.
    pub(crate) async fn result(&mut self) -> LeaseResult {
        loop {
            match self.next().await {
                Some(AgentKind::Result(result)) => return result,
                Some(_) => {}
                None => panic!("the agent closed the stream without a result"),
            }
        }
    }

    /// Sends `lease`, waits for its result and checks it completed; the action's result.
    pub(crate) async fn run_completed(&mut self, lease: Lease) -> ActionResult {
        self.lease(lease).await;
        let answer = self.result().await;
        assert_eq!(
            answer.outcome(),
            tessera_proto::tessera::v1::LeaseOutcome::Completed,
            "{}",
            answer.message
        );
        answer.result.expect("an action result")
    }

    /// Waits until the lease reaches `stage`.
    pub(crate) async fn wait_stage(&mut self, lease_id: &str, stage: LeaseStage) {
        while !self
            .progress
            .iter()
            .any(|(id, s)| id == lease_id && *s == stage)
        {
            assert!(
                !matches!(self.next().await, Some(AgentKind::Result(_)) | None),
                "lease ended before {stage:?}"
            );
        }
    }

    /// Waits until the agent closes its side of the stream.
    pub(crate) async fn wait_closed(&mut self) {
        while self.next().await.is_some() {}
    }
}

struct FakeSession {
    links: mpsc::UnboundedSender<AgentLink>,
    /// The refusal the next session gets instead of `Welcome`.
    refuse: Arc<Mutex<Option<tessera_proto::rpc::Status>>>,
    /// The error the next session call is answered with (as an authentication layer would).
    reject: Arc<Mutex<Option<Status>>>,
    /// What `Welcome` offers: inline output bytes, lease stages.
    offers: Arc<Mutex<(u64, bool)>>,
}

#[tonic::async_trait]
impl AgentSession for FakeSession {
    type SessionStream =
        Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send + 'static>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        if let Some(status) = self.reject.lock().unwrap().take() {
            return Err(status);
        }
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.and_then(|m| m.kind);
        let Some(AgentKind::Hello(hello)) = first else {
            return Err(Status::invalid_argument("expected Hello first"));
        };
        let refusal = self.refuse.lock().unwrap().take();
        if let Some(refusal) = refusal {
            let refused = CoordinatorMessage {
                kind: Some(CoordinatorKind::Refused(refusal)),
            };
            return Ok(Response::new(Box::pin(tokio_stream::once(Ok(refused)))));
        }
        let (to_agent, rx) = mpsc::channel(64);
        let (from_tx, from_agent) = mpsc::unbounded_channel();
        // Like a real coordinator, end our side once the agent has ended its own.
        let agent_done = CancellationToken::new();
        tokio::spawn({
            let agent_done = agent_done.clone();
            async move {
                while let Ok(Some(message)) = inbound.message().await {
                    if from_tx.send(message).is_err() {
                        break;
                    }
                }
                agent_done.cancel();
            }
        });
        let (inline_output_bytes, lease_stages) = *self.offers.lock().unwrap();
        let welcome = Welcome {
            heartbeat_interval: Some(HEARTBEAT.try_into().unwrap()),
            lease_timeout: Some(Duration::from_secs(3).try_into().unwrap()),
            inline_output_bytes,
            lease_stages,
        };
        to_agent
            .send(Ok(CoordinatorMessage {
                kind: Some(CoordinatorKind::Welcome(welcome)),
            }))
            .await
            .map_err(|_| Status::internal("gone"))?;
        let _ = self.links.send(AgentLink {
            hello,
            to_agent: Some(to_agent),
            from_agent,
            progress: Vec::new(),
            heartbeats: Vec::new(),
            draining: false,
            authorization,
        });
        let outbound = ReceiverStream::new(rx).take_until(agent_done.cancelled_owned());
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// The fake coordinator.
pub(crate) struct FakeCoordinator {
    pub addr: SocketAddr,
    pub endpoint: String,
    links: mpsc::UnboundedReceiver<AgentLink>,
    refuse: Arc<Mutex<Option<tessera_proto::rpc::Status>>>,
    reject: Arc<Mutex<Option<Status>>>,
    offers: Arc<Mutex<(u64, bool)>>,
    stop: CancellationToken,
}

impl FakeCoordinator {
    pub(crate) async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub(crate) async fn start_on(addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let blobs: Arc<dyn BlobStore> = Arc::new(MemoryStore::new());
        let (links_tx, links) = mpsc::unbounded_channel();
        let refuse = Arc::new(Mutex::new(None));
        let reject = Arc::new(Mutex::new(None));
        // Stages on: the tests wait for them.
        let offers = Arc::new(Mutex::new((0, true)));
        let stop = CancellationToken::new();
        let batch = 4 * 1024 * 1024;
        let router = tonic::transport::Server::builder()
            .add_service(CapabilitiesServer::new(CapabilitiesService::new(batch)))
            .add_service(ContentAddressableStorageServer::new(CasService::new(
                Arc::clone(&blobs),
                batch,
            )))
            .add_service(ByteStreamServer::new(ByteStreamService::new(blobs)))
            .add_service(AgentSessionServer::new(FakeSession {
                links: links_tx,
                refuse: Arc::clone(&refuse),
                reject: Arc::clone(&reject),
                offers: Arc::clone(&offers),
            }));
        tokio::spawn(router.serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            stop.clone().cancelled_owned(),
        ));
        FakeCoordinator {
            addr,
            endpoint: format!("http://{addr}"),
            links,
            refuse,
            reject,
            offers,
            stop,
        }
    }

    /// Sessions from now on are welcomed with these offers: output bytes a result may carry
    /// inline, and whether stages are wanted (by default none inline, stages on).
    pub(crate) fn offer(&self, inline_output_bytes: u64, lease_stages: bool) {
        *self.offers.lock().unwrap() = (inline_output_bytes, lease_stages);
    }

    /// The next agent stream is answered with `refused` (code and message) instead of
    /// `Welcome`, then closed.
    pub(crate) fn refuse_next(&self, code: tonic::Code, message: &str) {
        *self.refuse.lock().unwrap() = Some(tessera_proto::rpc::Status {
            code: code as i32,
            message: message.to_owned(),
            details: Vec::new(),
        });
    }

    /// The next session call is answered with `status` (no stream at all), as the
    /// coordinator's authentication does for a token it refuses.
    pub(crate) fn reject_next(&self, status: Status) {
        *self.reject.lock().unwrap() = Some(status);
    }

    /// The next agent stream to connect.
    pub(crate) async fn link(&mut self) -> AgentLink {
        tokio::time::timeout(PATIENCE, self.links.recv())
            .await
            .expect("no agent connected in time")
            .expect("server gone")
    }

    pub(crate) async fn cas(&self) -> CasClient {
        CasClient::connect(&self.endpoint, "", F).await.unwrap()
    }

    /// Uploads the tree of a local directory; returns its root digest.
    pub(crate) async fn upload_dir(&self, dir: &Path) -> Digest {
        let tree = build_tree(dir, F).unwrap();
        let mut blobs: Vec<(Digest, Bytes)> = tree.directories.clone();
        for (digest, path) in &tree.files {
            blobs.push((*digest, Bytes::from(std::fs::read(path).unwrap())));
        }
        self.cas().await.upload(&blobs, false).await.unwrap();
        tree.root
    }

    /// Uploads one message; returns its digest.
    pub(crate) async fn upload_message<M: Message>(&self, message: &M) -> Digest {
        let (digest, bytes) = digest_message(F, message);
        self.cas()
            .await
            .upload(&[(digest, Bytes::from(bytes))], false)
            .await
            .unwrap();
        digest
    }

    pub(crate) async fn read(&self, digest: Option<&tessera_proto::reapi::Digest>) -> Bytes {
        let digest = Digest::from_proto_opt(F, digest).unwrap();
        self.cas().await.read(&digest, false).await.unwrap()
    }

    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }
}

/// A lease for `arguments` over `input_root`, with `output_paths`.
pub(crate) fn lease(id: &str, input_root: Digest, arguments: &[&str]) -> Lease {
    Lease {
        lease_id: id.into(),
        attempt: 1,
        instance_name: String::new(),
        action_digest: None,
        digest_function: F.to_proto(),
        action: Some(Action {
            input_root_digest: Some(input_root.to_proto()),
            ..Action::default()
        }),
        command: Some(Command {
            arguments: arguments.iter().map(|a| (*a).to_owned()).collect(),
            environment_variables: vec![EnvironmentVariable {
                name: "PATH".into(),
                value: "/usr/bin:/bin".into(),
            }],
            ..Command::default()
        }),
        timeout: Some(Duration::from_secs(10).try_into().unwrap()),
        secrets: Vec::new(),
        trace_context: Default::default(),
        input_directories: Vec::new(),
        input_files: Vec::new(),
    }
}

pub(crate) fn command(lease: &mut Lease) -> &mut Command {
    lease.command.as_mut().unwrap()
}

pub(crate) fn set_platform(lease: &mut Lease, pairs: &[(&str, &str)]) {
    lease.action.as_mut().unwrap().platform = Some(Platform {
        properties: pairs
            .iter()
            .map(|(n, v)| Property {
                name: (*n).into(),
                value: (*v).into(),
            })
            .collect(),
    });
}

/// An agent running in the test process; aborted when dropped.
pub(crate) struct TestAgent {
    pub shutdown: CancellationToken,
    pub abort: CancellationToken,
    pub handle: tokio::task::JoinHandle<Result<(), tessera_agent::AgentError>>,
    pub work_dir: tempfile::TempDir,
    _abort_on_drop: tokio_util::sync::DropGuard,
}

impl TestAgent {
    pub(crate) fn start(endpoint: &str, adjust: impl FnOnce(&mut AgentConfig)) -> Self {
        Self::start_in(endpoint, tempfile::tempdir().unwrap(), adjust)
    }

    /// Starts an agent in an existing work directory.
    pub(crate) fn start_in(
        endpoint: &str,
        work_dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut AgentConfig),
    ) -> Self {
        let mut config = AgentConfig {
            coordinator: endpoint.to_owned(),
            work_dir: work_dir.path().to_owned(),
            slots: 2,
            id: Some("test-agent".into()),
            kill_grace: Duration::from_millis(200),
            ..AgentConfig::default()
        };
        adjust(&mut config);
        use_test_spawner();
        let shutdown = CancellationToken::new();
        let abort = CancellationToken::new();
        let handle = tokio::spawn(Agent::run_with_abort(
            config,
            shutdown.clone(),
            abort.clone(),
        ));
        TestAgent {
            shutdown,
            _abort_on_drop: abort.clone().drop_guard(),
            abort,
            handle,
            work_dir,
        }
    }

    /// Drains the agent, waits for it to exit, and hands back its work directory.
    pub(crate) async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("the agent did not exit in time")
            .expect("agent task panicked")
            .expect("agent failed");
        self.work_dir
    }

    /// Waits for the agent to exit.
    pub(crate) async fn exited(self) -> Result<(), tessera_agent::AgentError> {
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("the agent did not exit in time")
            .expect("agent task panicked")
    }
}

/// Writes `files` (path, contents, executable) under a fresh directory.
pub(crate) fn input_dir(files: &[(&str, &str, bool)]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for (path, contents, executable) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, contents).unwrap();
        let mode = if *executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    dir
}

/// How the tests start the agent's spawner: its own binary (this test binary's `main` is
/// libtest's, so it cannot re-execute itself as `tessera` does).
pub(crate) fn spawner_command() -> tessera_agent::spawner::SpawnerCommand {
    tessera_agent::spawner::SpawnerCommand {
        program: PathBuf::from(env!("CARGO_BIN_EXE_tessera-spawner")),
        args: Vec::new(),
    }
}

/// Makes agents started in this process fork their commands through the spawner.
pub(crate) fn use_test_spawner() {
    tessera_agent::spawner::set_command(spawner_command());
}

/// Whether this host lets the agent use namespaces (root, or a permissive kernel).
pub(crate) fn namespaces_available() -> bool {
    let scratch = tempfile::tempdir().unwrap();
    let available = tessera_agent::sandbox::probe_namespaces(scratch.path()).is_ok();
    if !available {
        eprintln!("namespaces not available on this host; skipping the sandbox checks");
    }
    available
}

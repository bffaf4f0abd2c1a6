//! The embedded cluster: a coordinator and in-process agents on loopback, for `tessera up` and
//! for a `tessera run` with no coordinator configured.
//!
//! State lives under `<cache dir>/cluster/`: `coordinator/` (its data directory, locked by its
//! metadata store), `agent-<i>/` (each agent's work directory), `lock` (held by the process
//! serving the cluster, so a second `tessera run` joins instead of starting another), and
//! `endpoint` (the URL, present while the cluster serves).
//!
//! Shutdown: the agents drain (running actions get [`AGENT_DRAIN`], then are stopped), then the
//! coordinator stops and flushes; the endpoint file goes first so no new client joins.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fs2::FileExt;
use tessera_agent::{Agent, AgentConfig, CancellationToken};
use tessera_coordinator::{Coordinator, CoordinatorConfig};
use tokio::task::JoinHandle;

use crate::exit::CliError;
use crate::paths;

/// How long agents get to finish running actions at shutdown.
const AGENT_DRAIN: Duration = Duration::from_secs(5);

/// Settings of an embedded cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The user cache directory.
    pub cache_dir: PathBuf,
    /// In-process agents.
    pub agents: u32,
    /// Slots per agent; `None` is one per core.
    pub slots: Option<u32>,
    /// Where the coordinator listens (loopback, free port by default).
    pub listen: SocketAddr,
}

impl ClusterOptions {
    /// One agent with a slot per core on a free loopback port.
    pub fn new(cache_dir: PathBuf) -> Self {
        Self {
            cache_dir,
            agents: 1,
            slots: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// The exclusive right to serve the embedded cluster of one cache directory.
#[derive(Debug)]
pub struct ClusterLock {
    file: File,
}

impl ClusterLock {
    /// Takes the lock if nobody holds it.
    pub fn try_acquire(cache_dir: &Path) -> Result<Option<Self>, CliError> {
        let dir = paths::cluster_dir(cache_dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| CliError::infra(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CliError::infra(format!("cannot open {}: {e}", path.display())))?;
        match file.try_lock_exclusive() {
            Ok(()) => Ok(Some(Self { file })),
            Err(_) => Ok(None),
        }
    }
}

impl Drop for ClusterLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}

/// A running embedded cluster.
pub struct EmbeddedCluster {
    coordinator: Coordinator,
    url: String,
    agents: Vec<JoinHandle<()>>,
    drain: CancellationToken,
    abort: CancellationToken,
    endpoint_file: PathBuf,
    started_in: Duration,
    _lock: ClusterLock,
}

impl std::fmt::Debug for EmbeddedCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCluster")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl EmbeddedCluster {
    /// Starts the coordinator and the agents and publishes the endpoint file. The caller
    /// holds `lock`.
    pub async fn start(options: &ClusterOptions, lock: ClusterLock) -> Result<Self, CliError> {
        let started = Instant::now();
        let dir = paths::cluster_dir(&options.cache_dir);
        let config = CoordinatorConfig {
            listen: options.listen,
            data_dir: dir.join("coordinator"),
            ..CoordinatorConfig::default()
        };
        let coordinator = Coordinator::start(&config)
            .await
            .map_err(|e| CliError::infra(format!("cannot start the embedded coordinator: {e}")))?;
        let url = format!("http://{}", coordinator.local_addr());
        let drain = CancellationToken::new();
        let abort = CancellationToken::new();
        let mut agents = Vec::new();
        for i in 0..options.agents {
            let mut config = AgentConfig {
                coordinator: url.clone(),
                work_dir: dir.join(format!("agent-{i}")),
                id: Some(format!("embedded-{i}")),
                ..AgentConfig::default()
            };
            if let Some(slots) = options.slots {
                config.slots = slots;
            }
            let (drain, abort) = (drain.clone(), abort.clone());
            agents.push(tokio::spawn(async move {
                if let Err(error) = Agent::run_with_abort(config, drain, abort).await {
                    tracing::error!(%error, agent = i, "embedded agent failed");
                }
            }));
        }
        let endpoint_file = paths::endpoint_file(&options.cache_dir);
        write_atomically(&endpoint_file, &format!("{url}\n")).map_err(|e| {
            CliError::infra(format!("cannot write {}: {e}", endpoint_file.display()))
        })?;
        Ok(Self {
            coordinator,
            url,
            agents,
            drain,
            abort,
            endpoint_file,
            started_in: started.elapsed(),
            _lock: lock,
        })
    }

    /// The coordinator's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How long starting took (coordinator open and listening, agents spawned, endpoint
    /// published).
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// A token that stops the coordinator when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.coordinator.shutdown_token()
    }

    /// Stops publishing the endpoint, so no new client joins.
    pub fn unpublish(&self) {
        if std::fs::read_to_string(&self.endpoint_file).is_ok_and(|text| text.trim() == self.url) {
            let _ = std::fs::remove_file(&self.endpoint_file);
        }
    }

    /// Shuts down: endpoint file, agents (drained for a while, then stopped), coordinator.
    pub async fn shutdown(self) -> Result<(), CliError> {
        self.unpublish();
        self.drain.cancel();
        let deadline = tokio::time::sleep(AGENT_DRAIN);
        tokio::pin!(deadline);
        let mut agents = futures::future::join_all(self.agents);
        tokio::select! {
            _ = &mut agents => {}
            () = &mut deadline => {
                self.abort.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(2), agents).await;
            }
        }
        self.coordinator
            .shutdown()
            .await
            .map_err(|e| CliError::infra(format!("embedded coordinator failed: {e}")))
    }
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

//! The Tessera agent: runs actions for a coordinator.
//!
//! It keeps one session with the coordinator (`session`), receives leases and runs each through
//! its pipeline (`pipeline`): fetch the input root into the local blob cache (`cache`), lay it
//! out in a private exec root (`materialize`; a large root once per agent, as a shared layer
//! under each lease's overlay mount: `layer`), run the command in its own process group,
//! sandboxed where the host allows (`sandbox`; forked by a small helper process, `spawner`,
//! rather than by the agent itself), mask the lease's secret values in what it left
//! (`mask`), collect and upload outputs (`outputs`), report
//! the result as one of the outcomes `lease` lists.
//! An action may ask to see its input root at a fixed path (`exec_root`); a job's steps arrive
//! as builtin actions that the agent runs itself (`step`).
//! `metrics` counts what operators alert on (served with `/healthz` and `/readyz` on
//! `--http-listen`). `config` loads the settings, `platform` says what the agent advertises
//! and how it reads an action's platform, `workdir` says where everything lives on disk.
//!
//! The agent never depends on the coordinator crate: they meet only in `tessera-proto`.

pub mod cache;
pub mod config;
pub mod exec_root;
pub mod layer;
pub mod lease;
pub mod mask;
pub mod materialize;
pub mod metrics;
pub mod outputs;
pub mod pipeline;
pub mod platform;
pub mod sandbox;
pub mod session;
pub mod spare;
pub mod spawner;
pub mod step;
pub mod workdir;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

pub use config::{AgentConfig, AgentOverrides, ConfigError, SandboxMode};
pub use lease::RunOutcome;
/// The token type [`Agent::run`] takes, re-exported so callers need not name `tokio-util`.
pub use tokio_util::sync::CancellationToken;

use crate::cache::LocalCache;
use crate::layer::{LayerSettings, LayerStore, LayeredRoots};
use crate::metrics::AgentMetrics;
use crate::pipeline::{CasClients, LeasePipeline};
use crate::platform::HostFacts;
use crate::sandbox::{LocalRunner, ProcessRunner};
use crate::spare::SpareDirs;
use crate::workdir::{Trash, WorkLayout};

/// The agent's version, sent in `Hello`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How often the local cache's access times are written back to its index.
const CACHE_PERSIST_EVERY: Duration = Duration::from_secs(30);

/// Why the agent could not start or run.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The work directory could not be prepared.
    #[error("failed to prepare the work directory {path}: {source}")]
    WorkDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The local blob cache could not be opened (is another agent using this work directory?).
    #[error(transparent)]
    Cache(#[from] cache::OpenError),
    /// The coordinator URL, the TLS files or the token are unusable.
    #[error(transparent)]
    Client(#[from] tessera_net::client::ClientError),
    /// A start-up task failed.
    #[error("agent start-up failed: {0}")]
    Startup(String),
    /// The HTTP port (`http_listen`) could not be opened.
    #[error(
        "failed to listen on {addr} for /metrics (http_listen): {source}; is another process \
         using the port?"
    )]
    Http {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The coordinator refused this agent for good: it speaks another agent protocol version
    /// (see README "Upgrading a fleet"), or it does not accept the agent's token.
    #[error("the coordinator refused this agent: {0}")]
    Refused(String),
}

/// The agent.
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// Runs the agent until `shutdown` is cancelled and the drain is done: running leases
    /// finish (bounded by their timeouts, or by `config.drain_timeout`) and their results are
    /// delivered. Returns an error if the agent cannot start, or if the coordinator refuses it
    /// for good ([`AgentError::Refused`]).
    pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
        Self::run_with_abort(config, shutdown, CancellationToken::new()).await
    }

    /// Like [`Agent::run`]; cancelling `abort` (a second Ctrl-C, say) additionally stops
    /// running commands at once, reports them RETRYABLE so they run elsewhere, and exits
    /// after a short attempt to deliver that.
    pub async fn run_with_abort(
        config: AgentConfig,
        shutdown: CancellationToken,
        abort: CancellationToken,
    ) -> Result<(), AgentError> {
        Self::run_with_runner(config, shutdown, abort, None).await
    }

    /// Like [`Agent::run_with_abort`], with commands run by `runner` instead of real
    /// processes (a test seam; `None` uses the real runner).
    pub async fn run_with_runner(
        config: AgentConfig,
        shutdown: CancellationToken,
        abort: CancellationToken,
        runner: Option<Arc<dyn ProcessRunner>>,
    ) -> Result<(), AgentError> {
        config.check()?;
        // Before anything else, so a bad token or certificate file is reported at once.
        let auth = config.client_auth()?;
        let endpoint = tessera_net::client::endpoint(&config.coordinator, &auth)?;
        let Prepared {
            layout,
            trash,
            spares,
            agent_id,
            cache,
            namespaces,
            layers,
        } = prepare(&config).await?;
        let metrics = AgentMetrics::new();
        let cache = cache.with_meters(metrics.cache_meters());
        let http_stop = CancellationToken::new();
        let http = match config.http_listen {
            Some(addr) => Some(serve_metrics(addr, metrics.clone(), http_stop.clone()).await?),
            None => None,
        };
        let facts = tokio::task::spawn_blocking(move || HostFacts::detect(namespaces))
            .await
            .map_err(|e| AgentError::Startup(format!("toolchain detection failed: {e}")))?;
        let properties = platform::advertised(&facts, &config.properties);
        tracing::info!(
            agent = %agent_id,
            work_dir = %layout.root().display(),
            slots = config.slots,
            sandbox = if namespaces { "namespaces" } else { "none" },
            layers = layers.is_some(),
            coordinator = %config.coordinator,
            token = auth.token.is_some(),
            client_cert = auth.client_cert.is_some(),
            "agent starting"
        );

        let channel = endpoint
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .initial_connection_window_size(32 * 1024 * 1024)
            .initial_stream_window_size(16 * 1024 * 1024)
            .connect_lazy();
        let channel = tessera_net::client::link(channel, &auth);
        let runner = match runner {
            Some(runner) => runner,
            None => Arc::new(local_runner(config.kill_grace).await),
        };
        let pipeline = Arc::new(LeasePipeline {
            agent_id: agent_id.clone(),
            cache: cache.clone(),
            cas: CasClients::new(channel.clone()),
            runner,
            // Directories are reused only where nothing a command starts outlives it.
            dirs: workdir::LeaseDirPool::new(
                layout.clone(),
                if config.recycle_dirs && namespaces && sandbox::pid_namespaces() {
                    usize::try_from(config.slots).unwrap_or(usize::MAX)
                } else {
                    0
                },
            ),
            layout,
            trash,
            spares,
            namespaces,
            keep_failed: config.keep_failed,
            workers: (!config.worker_idle.is_zero()).then(|| {
                worker::WorkerPool::new(
                    usize::try_from(config.slots).unwrap_or(usize::MAX),
                    config.worker_idle,
                    layers.clone(),
                )
            }),
            layers,
            metrics: metrics.clone(),
            inline_output_bytes: Arc::default(),
        });
        let hello = tessera_proto::tessera::v1::Hello {
            agent_id,
            properties,
            slots: config.slots,
            version: VERSION.to_owned(),
            protocol_version: tessera_proto::AGENT_PROTOCOL_VERSION,
        };

        let persist_stop = CancellationToken::new();
        let persist = tokio::spawn(persist_cache(cache.clone(), persist_stop.clone()));
        let end = session::run(
            session::SessionParams {
                channel,
                hello,
                slots: usize::try_from(config.slots).unwrap_or(usize::MAX),
                pipeline,
                drain_timeout: config.drain_timeout,
            },
            shutdown,
            abort,
        )
        .await;
        persist_stop.cancel();
        let _ = persist.await;
        http_stop.cancel();
        if let Some(http) = http {
            let _ = http.await;
        }
        if end.undelivered > 0 {
            tracing::warn!(
                undelivered = end.undelivered,
                "exiting with results the coordinator never received (it will retry that work)"
            );
        }
        tracing::info!("agent stopped");
        match end.refused {
            Some(message) => Err(AgentError::Refused(message)),
            None => Ok(()),
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `stop`. Binds before
/// returning, so a port in use fails the start. The agent has no TLS server certificate of its
/// own: the port is plain HTTP, meant for loopback; another address is allowed with a warning.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: AgentMetrics,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, AgentError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Http { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| AgentError::Http { addr, source })?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %bound,
            "the agent's /metrics port is reachable beyond this host, in plain HTTP (the agent \
             has no TLS server certificate): prefer a loopback address and a local scraper"
        );
    }
    tracing::info!(%bound, "serving /metrics, /healthz and /readyz");
    let handlers = tessera_net::http::HttpHandlers {
        metrics: Arc::new({
            let metrics = metrics.clone();
            move || metrics.encode()
        }),
        ready: Arc::new(move || metrics.readiness()),
        metrics_access: None,
        extra: None,
    };
    Ok(tokio::spawn(async move {
        if let Err(error) =
            tessera_net::http::serve_http(listener, None, handlers, stop.cancelled_owned()).await
        {
            tracing::warn!(%error, "the /metrics port stopped");
        }
    }))
}

/// The real runner: through a spawner process if this binary registered how to start one
/// (`spawner::set_command`), else forking commands from the agent itself.
async fn local_runner(kill_grace: Duration) -> LocalRunner {
    match spawner::command() {
        Some(command) => LocalRunner::with_spawner(kill_grace, command.clone()).await,
        None => {
            tracing::info!("no spawner registered: the agent forks commands itself");
            LocalRunner::in_process(kill_grace)
        }
    }
}

/// What [`prepare`] readies.
struct Prepared {
    layout: WorkLayout,
    /// Deletes lease directories in the background.
    trash: Trash,
    /// Empty directories that stand in for new ones.
    spares: SpareDirs,
    agent_id: String,
    cache: LocalCache,
    namespaces: bool,
    /// `None`: every input root is laid out file by file.
    layers: Option<Arc<LayeredRoots>>,
}

/// Prepares the work directory (detaching overlays a killed agent left mounted in it before
/// clearing it), the agent id, the local cache, the sandbox probe and the layers.
async fn prepare(config: &AgentConfig) -> Result<Prepared, AgentError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let work_error = |path: &std::path::Path| {
            let path = path.to_owned();
            move |source| AgentError::WorkDir { path, source }
        };
        std::fs::create_dir_all(&config.work_dir).map_err(work_error(&config.work_dir))?;
        // Absolute, because exec roots are bind-mounted by path.
        let root = std::fs::canonicalize(&config.work_dir).map_err(work_error(&config.work_dir))?;
        let layout = WorkLayout::new(root);
        let agent_id = config::agent_id(config.id.as_deref(), layout.root())
            .map_err(work_error(layout.root()))?;
        if let Err(error) = layer::unmount_stale(layout.root()) {
            tracing::warn!(%error, "failed to unmount the overlays a previous run left");
        }
        let trash = Trash::open(layout.trash_dir()).map_err(work_error(&layout.trash_dir()))?;
        layout
            .clear_exec_base(&trash)
            .map_err(work_error(&layout.exec_base()))?;
        let spares =
            SpareDirs::open(layout.spare_dir(), &trash).map_err(work_error(&layout.spare_dir()))?;
        let cache = LocalCache::open(layout.cache_dir(), config.max_cache_bytes)?;
        let namespaces = match config.sandbox {
            SandboxMode::Off => false,
            SandboxMode::Auto => {
                let scratch = layout.probe_dir();
                std::fs::create_dir_all(&scratch).map_err(work_error(&scratch))?;
                let probed = sandbox::probe_namespaces(&scratch);
                let _ = std::fs::remove_dir(&scratch);
                match probed {
                    Ok(()) => true,
                    Err(reason) => {
                        tracing::warn!(
                            %reason,
                            "Linux namespaces are not available: actions run without a \
                             sandbox (advertising sandbox=none)"
                        );
                        false
                    }
                }
            }
        };
        let layers = prepare_layers(&config, &layout)?;
        Ok(Prepared {
            layout,
            trash,
            spares,
            agent_id,
            cache,
            namespaces,
            layers,
        })
    })
    .await
    .map_err(|e| AgentError::Startup(e.to_string()))?
}

/// The layer store, if the settings ask for layers and a probe shows the host can mount
/// them. Blocking.
fn prepare_layers(
    config: &AgentConfig,
    layout: &WorkLayout,
) -> Result<Option<Arc<LayeredRoots>>, AgentError> {
    let dir = layout.layers_dir();
    let off = if !config.layers {
        Some("layers = false".to_owned())
    } else if config.keep_failed {
        Some("keep_failed: a kept directory must not depend on a layer".to_owned())
    } else {
        layer::probe_overlay(&layout.probe_dir())
            .err()
            .map(|error| format!("overlay mounts are not available: {error}"))
    };
    if let Some(reason) = off {
        tracing::warn!(
            %reason,
            "every input root is laid out file by file for every lease"
        );
        // Layers of an earlier run would otherwise stay on disk for good.
        workdir::remove_tree(&dir).map_err(|source| AgentError::WorkDir { path: dir, source })?;
        return Ok(None);
    }
    let settings = LayerSettings {
        min_entries: config.layer_min_entries,
        max_layers: config.max_layers,
        max_entries: config.max_layer_entries,
    };
    let store = LayerStore::open(dir.clone(), settings).map_err(|error| AgentError::WorkDir {
        path: dir,
        source: std::io::Error::other(error),
    })?;
    Ok(Some(Arc::new(LayeredRoots::new(store))))
}

async fn persist_cache(cache: LocalCache, stop: CancellationToken) {
    let mut tick = tokio::time::interval(CACHE_PERSIST_EVERY);
    tick.tick().await;
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        let cache = cache.clone();
        match tokio::task::spawn_blocking(move || cache.persist()).await {
            Ok(Err(error)) => tracing::warn!(%error, "failed to persist the local cache index"),
            Err(error) => tracing::warn!(%error, "cache persistence task failed"),
            Ok(Ok(())) => {}
        }
        if stopping {
            return;
        }
    }
}

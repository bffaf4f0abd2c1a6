//! The coordinator's lifecycle: open the stores under the data directory, bind, serve every
//! gRPC service on one port, run the background chores, and shut down as a protocol.
//!
//! Shutdown causes: the caller cancels the token (the CLI does so on SIGTERM or SIGINT), or
//! serving fails. On shutdown the server stops accepting connections, lets running calls
//! finish for up to [`DRAIN_DEADLINE`], then writes back access times and flushes the metadata
//! store before returning.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tessera_cas::meta::{MetaError, MetadataStore, RedbStore};
use tessera_cas::store::{BlobStore, DiskStore, DiskStoreOptions, StoreError};
use tessera_net::server::{TlsError, TlsFiles, TlsReloader};
use tessera_proto::longrunning::operations_server::OperationsServer;
use tessera_proto::reapi::action_cache_server::ActionCacheServer;
use tessera_proto::reapi::capabilities_server::CapabilitiesServer;
use tessera_proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use tessera_proto::reapi::execution_server::ExecutionServer;
use tessera_proto::tessera::v1::admin_server::AdminServer;
use tessera_proto::tessera::v1::agent_session_server::AgentSessionServer;
use tessera_proto::tessera::v1::backups_server::BackupsServer;
use tessera_proto::tessera::v1::jobs_server::JobsServer;
use tessera_proto::tessera::v1::quarantine_server::QuarantineServer;
use tessera_proto::tessera::v1::webhooks_server::WebhooksServer;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::action_cache::{AcError, ActionCache};
use crate::auth::{AuditLog, Auth, AuthLayer, Limiter, TokenError, TokenStore};
use crate::backup::{BackupSchedule, BackupService};
use crate::builds::{BuildLog, DEFAULT_KEEP};
use crate::config::AuthMode;
use crate::config::CoordinatorConfig;
use crate::execution::execute::Executor;
use crate::execution::inputs::ExecLimits;
use crate::execution::scheduler::{self, SchedulerConfig, SchedulerError, SchedulerHandle};
use crate::jobs::driver::JobContext;
use crate::jobs::quarantine::QuarantineStore;
use crate::jobs::registry::JobRegistry;
use crate::jobs::results::{HistoryLimits, TestStore};
use crate::metrics::layer::MetricsLayer;
use crate::notify::Notifier;
use crate::services::action_cache::ActionCacheService;
use crate::services::admin::AdminService;
use crate::services::agent_session::AgentSessionService;
use crate::services::bytestream::{ByteStreamRoutes, ByteStreamService};
use crate::services::capabilities::CapabilitiesService;
use crate::services::cas::CasService;
use crate::services::execution::ExecutionService;
use crate::services::jobs::JobsService;
use crate::services::operations::OperationsService;
use crate::services::quarantine::QuarantineService;
use crate::services::webhooks::WebhooksService;

/// Bytes of recently stored blob files the blob store also keeps in memory (blobs of up to a
/// quarter of it, 16 MiB at most).
const HOT_BLOB_BYTES: u64 = 64 * 1024 * 1024;

/// How long running calls may take to finish once shutdown starts.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How often the blob index is checkpointed: access times written back, the metadata store
/// flushed (so a crash leaves at most this much to adopt at the next start).
const WRITE_BACK_EVERY: Duration = Duration::from_secs(10);
/// Largest gRPC message accepted or sent: room for a full batch plus framing.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// How often the server PINGs an HTTP/2 connection that has been quiet.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a PING may go unanswered before the connection is dropped: generous, since the
/// answer may queue behind a send buffer of upload data on a slow link (hyper does not count
/// data that keeps arriving as an answer).
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the coordinator could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The data directory could not be created.
    #[error("failed to create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The metadata store could not be opened (often: another coordinator uses the directory).
    #[error(
        "failed to open the metadata store (is another coordinator using this --data-dir?): {0}"
    )]
    Meta(#[from] MetaError),
    /// The blob store could not be opened.
    #[error("failed to open the blob store: {0}")]
    Store(#[from] StoreError),
    /// The action cache could not be opened.
    #[error("failed to open the action cache: {0}")]
    ActionCache(#[from] AcError),
    /// The scheduler could not load its state.
    #[error("failed to start the scheduler: {0}")]
    Scheduler(#[from] SchedulerError),
    /// The listen address could not be bound.
    #[error(
        "failed to listen on {addr}: {source} (is the port in use? pick another with --listen)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The token store failed at start (the admin token could not be created or written).
    #[error("failed to set up authentication: {0}")]
    Auth(#[from] TokenError),
    /// The TLS certificate, key or client CA could not be loaded (a configuration error).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The HTTP address (`--http-listen`) could not be bound.
    #[error(
        "failed to listen for HTTP on {addr}: {source} (is the port in use? pick another with \
         --http-listen)"
    )]
    HttpBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A running coordinator.
pub struct Coordinator {
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    token: CancellationToken,
    tasks: TaskTracker,
    serve: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    tls: Option<TlsReloader>,
    store: DiskStore,
    scheduler: SchedulerHandle,
    scheduler_stop: CancellationToken,
    scheduler_task: tokio::task::JoinHandle<()>,
    builds: BuildLog,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// Opens the stores and starts serving on `config.listen` (port 0 picks a free port; see
    /// [`Coordinator::local_addr`]).
    pub async fn start(config: &CoordinatorConfig) -> Result<Self, ServerError> {
        // First, so that a bad certificate is reported before anything is opened.
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(TlsReloader::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.tls_client_ca.clone(),
            })?),
            _ => None,
        };
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let meta_dyn: Arc<dyn MetadataStore> =
            Arc::new(RedbStore::open(config.data_dir.join("meta"))?);
        let mut options = DiskStoreOptions::new(config.data_dir.join("cas"));
        options.budget_bytes = config.max_cas_bytes.unwrap_or(u64::MAX);
        options.protect_recent = config.cas_protect_recent;
        // Small blobs in the metadata store, journaled until each checkpoint's flush.
        options.inline_max = DiskStoreOptions::INLINE_MAX;
        // Blob files stored a moment ago, whole in memory too: the outputs a build tool
        // downloads right after an agent uploads them are served without reading,
        // decompressing and hashing their files again.
        options.hot_bytes = HOT_BLOB_BYTES;
        // Large blob files are served from the page cache's own pages: no file is linked out
        // of the coordinator's store or written after it is in place.
        options.map_reads = true;
        let store = {
            let meta_dyn = Arc::clone(&meta_dyn);
            tokio::task::spawn_blocking(move || DiskStore::open(meta_dyn, options))
                .await
                .map_err(|e| StoreError::Io {
                    op: "failed to open",
                    path: "blob store".into(),
                    source: std::io::Error::other(e),
                })??
        };
        let blobs: Arc<dyn BlobStore> = Arc::new(store.clone());
        let cache = ActionCache::open(Arc::clone(&meta_dyn), Arc::clone(&blobs))?;
        let token = CancellationToken::new();
        let scheduler_stop = CancellationToken::new();
        let (scheduler, scheduler_task) = scheduler::start(
            SchedulerConfig {
                lease_timeout: config.lease_timeout,
                max_attempts: config.max_attempts,
                retention: config.operation_retention,
                known_platform_keys: config.platform_keys.clone(),
            },
            &meta_dyn,
            cache.clone(),
            scheduler_stop.clone(),
        )?;
        let limits = ExecLimits {
            verified: Default::default(),
            carried: Default::default(),
            default_timeout: config.default_action_timeout,
            max_timeout: config.max_action_timeout,
            tree: tessera_cas::validate::TreeLimits::default(),
        };

        let executor = Executor::new(
            Arc::clone(&blobs),
            cache.clone(),
            Arc::clone(&meta_dyn),
            scheduler.clone(),
            limits,
        );
        let auth = Auth {
            mode: config.auth,
            tokens: TokenStore::open(Arc::clone(&meta_dyn))?,
            audit: AuditLog::open(&meta_dyn, config.audit_retention)?,
            limits: Limiter::new(config.limits),
        };
        // Quarantines are audited: the audit log opens first.
        let quarantine = QuarantineStore::open(
            Arc::clone(&meta_dyn),
            config.quarantine.policy(),
            auth.audit.clone(),
        )?;
        let notifier = Notifier::open(
            Arc::clone(&meta_dyn),
            config.webhooks.clone(),
            config.listen.to_string(),
        )?;
        let jobs = JobRegistry::start(
            JobContext {
                shutdown: token.clone(),
                store: Arc::clone(&blobs),
                executor: executor.clone(),
                scheduler: scheduler.clone(),
                tests: TestStore::open(
                    Arc::clone(&meta_dyn),
                    HistoryLimits {
                        runs: config.history_runs,
                        retention: config.history_retention,
                    },
                )?,
                quarantine: quarantine.clone(),
                default_test_timeout: config.default_action_timeout,
                max_action_timeout: config.max_action_timeout,
                notifier: notifier.clone(),
            },
            Arc::clone(&meta_dyn),
            config.dashboard_jobs,
        )?;

        if config.auth == AuthMode::Tokens
            && let Some(path) = auth.tokens.bootstrap(&config.data_dir).await?
        {
            tracing::warn!(
                file = %path.display(),
                "authentication is on and no token existed: wrote an admin token to this file \
                 (readable by this user only); create other tokens with `tessera token create`"
            );
        }

        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let tasks = TaskTracker::new();
        let (builds, builds_writer) =
            BuildLog::start(Arc::clone(&meta_dyn), DEFAULT_KEEP, token.clone())?;
        tasks.spawn(builds_writer);
        let dashboard = crate::dashboard::Dashboard::new(
            jobs.clone(),
            quarantine.clone(),
            scheduler.clone(),
            config.auth,
            auth.tokens.clone(),
            tls.is_some(),
            config.http_listen.is_some_and(|a| a.ip().is_loopback()),
            token.clone(),
            builds.clone(),
        );

        let batch = config.max_batch_total_size_bytes;
        let router = tonic::transport::Server::builder()
            // A peer that stops answering PINGs (its host gone, its network cut, the process
            // frozen) is dropped, and with it every call it had open.
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .max_frame_size(1024 * 1024)
            .initial_connection_window_size(32 * 1024 * 1024)
            .initial_stream_window_size(16 * 1024 * 1024)
            // A span per call, the child of the caller's when it sends a trace context.
            .layer(tessera_net::trace::GrpcSpanLayer)
            // Outside the auth layer, so refused calls are counted too.
            .layer(MetricsLayer::new(crate::metrics::metrics()))
            .layer(AuthLayer::new(
                config.auth,
                auth.tokens.clone(),
                auth.audit.clone(),
            ))
            .add_service(CapabilitiesServer::new(CapabilitiesService::new(batch)))
            .add_service(AdminServer::new(AdminService::new(auth.clone())))
            .add_service(WebhooksServer::new(
                WebhooksService::new(notifier.clone()).with_auth(auth.clone()),
            ))
            .add_service(QuarantineServer::new(QuarantineService::new(
                quarantine,
                auth.clone(),
            )))
            .add_service(BackupsServer::new(BackupService::new(
                Arc::clone(&meta_dyn),
                store.clone(),
            )))
            .add_service(
                ContentAddressableStorageServer::new(
                    CasService::new(Arc::clone(&blobs), batch).with_auth(auth.clone()),
                )
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(ByteStreamRoutes::new(
                ByteStreamService::new(Arc::clone(&blobs))
                    .with_auth(auth.clone())
                    .with_idle_timeout(config.upload_idle_timeout),
                MAX_MESSAGE_BYTES,
            ))
            .add_service(
                ActionCacheServer::new(
                    ActionCacheService::new(cache.clone(), Arc::clone(&blobs))
                        .with_auth(auth.clone())
                        .with_builds(builds.clone()),
                )
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                ExecutionServer::new(
                    ExecutionService::new(executor)
                        .with_auth(auth.clone())
                        .with_builds(builds.clone()),
                )
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                JobsServer::new(JobsService::new(jobs).with_auth(auth.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(OperationsServer::new(OperationsService::new(
                scheduler.clone(),
            )))
            .add_service(
                AgentSessionServer::new(
                    AgentSessionService::new(scheduler.clone())
                        .with_auth(auth.clone())
                        .with_notifier(notifier.clone())
                        .with_store(Arc::clone(&blobs)),
                )
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            );
        // Sets TCP_NODELAY on every socket (the builder's setting is ignored by
        // serve_with_incoming) and puts a `tessera_net::server::Peer` in every request.
        let incoming = tessera_net::server::incoming(listener, tls.clone());
        let serve = tokio::spawn(
            router.serve_with_incoming_shutdown(incoming, token.clone().cancelled_owned()),
        );

        tasks.spawn({
            let token = token.clone();
            let store = store.clone();
            async move {
                let mut tick = tokio::time::interval(WRITE_BACK_EVERY);
                loop {
                    tokio::select! {
                        () = token.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let store = store.clone();
                    let outcome = tokio::task::spawn_blocking(move || store.checkpoint()).await;
                    match outcome {
                        // Logged once per episode by the store; retried next time.
                        Ok(Err(error)) if error.is_out_of_space() => {
                            tracing::debug!(%error, "blob index checkpoint failed");
                        }
                        Ok(Err(error)) => tracing::warn!(%error, "blob index checkpoint failed"),
                        _ => {}
                    }
                }
            }
        });
        tasks.spawn(auth.audit.clone().sweep_until(token.clone()));
        if let Some((hooks, outbox, wake)) = notifier.parts() {
            tasks.spawn(crate::notify::deliver::run(
                outbox,
                hooks,
                wake,
                config.webhook_retention,
                token.clone(),
            ));
        }
        tasks.spawn(crate::notify::watch_queue(
            scheduler.clone(),
            notifier.clone(),
            config.queue_stall_after,
            token.clone(),
        ));
        if let (Some(dir), Some(interval)) = (&config.backup_dir, config.backup_interval) {
            let schedule = BackupSchedule {
                dir: dir.clone(),
                interval,
                keep: config.backup_keep,
            };
            tasks.spawn(crate::backup::schedule(
                schedule,
                Arc::clone(&meta_dyn),
                store.clone(),
                token.clone(),
            ));
        }
        let http_addr = match config.http_listen {
            None => None,
            Some(http_addr) => {
                let listener =
                    TcpListener::bind(http_addr)
                        .await
                        .map_err(|source| ServerError::HttpBind {
                            addr: http_addr,
                            source,
                        })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| ServerError::HttpBind {
                        addr: http_addr,
                        source,
                    })?;
                let mut handlers = http_handlers(config, &auth, &store, &meta_dyn, &token);
                handlers.extra = Some(crate::dashboard::router(dashboard));
                let http_tls = tls.clone();
                let shutdown = token.clone().cancelled_owned();
                tasks.spawn(async move {
                    if let Err(error) =
                        tessera_net::http::serve_http(listener, http_tls, handlers, shutdown).await
                    {
                        tracing::error!(%error, "HTTP port failed");
                    }
                });
                tracing::info!(addr = %bound, "serving the dashboard, /metrics, /healthz and /readyz");
                Some(bound)
            }
        };
        tasks.close();
        let tls_mode = match &tls {
            None => "off",
            Some(tls) if tls.mutual() => "mutual (client certificates required)",
            Some(_) => "on",
        };
        tracing::info!(
            %addr,
            data_dir = %config.data_dir.display(),
            tls = tls_mode,
            "coordinator listening"
        );
        Ok(Coordinator {
            addr,
            http_addr,
            token,
            tasks,
            serve,
            tls,
            store,
            scheduler,
            scheduler_stop,
            scheduler_task,
            builds,
        })
    }

    /// The scheduler (for status queries and tests).
    pub fn scheduler(&self) -> &SchedulerHandle {
        &self.scheduler
    }

    /// The Bazel (REAPI) invocations seen, for the `/builds` pages.
    pub fn builds(&self) -> &BuildLog {
        &self.builds
    }

    /// The TLS settings, when the gRPC port serves TLS; [`TlsReloader::reload`] re-reads the
    /// certificate files for new connections (the CLI does so on SIGHUP).
    pub fn tls(&self) -> Option<TlsReloader> {
        self.tls.clone()
    }

    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the HTTP port (`/metrics`, `/healthz`, `/readyz`), when it is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// A token that starts shutdown when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Runs until the shutdown token is cancelled, then shuts down.
    pub async fn run_until_shutdown(self) -> Result<(), ServerError> {
        self.token.cancelled().await;
        self.shutdown().await
    }

    /// Stops accepting work, drains running calls (bounded by [`DRAIN_DEADLINE`]), and makes
    /// the metadata durable.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        tracing::info!("coordinator shutting down");
        self.token.cancel();
        // Stopping the scheduler ends agent sessions and operation streams (clients re-attach
        // with WaitExecution after a restart); its state is already durable, since accepted
        // operations were flushed when they were accepted.
        self.scheduler_stop.cancel();
        let _ = self.scheduler_task.await;
        let mut serve = self.serve;
        let served = match tokio::time::timeout(DRAIN_DEADLINE, &mut serve).await {
            Ok(Ok(result)) => result.map_err(ServerError::from),
            Ok(Err(join)) => {
                tracing::error!(%join, "server task failed");
                Ok(())
            }
            Err(_) => {
                tracing::warn!("calls still running after the drain deadline; stopping anyway");
                serve.abort();
                let _ = serve.await;
                Ok(())
            }
        };
        self.tasks.wait().await;
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.checkpoint()).await {
            // Access times and blob records (the next start adopts the files of records it
            // lacks), and small blobs: this flush makes them durable and retires the inline
            // journal (without it, the next start replays the journal).
            Ok(Err(error)) => tracing::error!(%error, "final metadata checkpoint failed"),
            Err(error) => tracing::error!(%error, "final metadata checkpoint task failed"),
            Ok(Ok(())) => {}
        }
        served
    }
}

/// What the HTTP port serves: the metrics (with the CAS figures read from the store at
/// scrape time), readiness (the metadata store is open once started; not ready once shutdown
/// begins), and who may read `/metrics`: anyone with auth off or `metrics_public`, otherwise
/// any valid token (every role is reader-or-better for metrics).
fn http_handlers(
    config: &CoordinatorConfig,
    auth: &Auth,
    store: &DiskStore,
    meta: &Arc<dyn MetadataStore>,
    token: &CancellationToken,
) -> tessera_net::http::HttpHandlers {
    use tessera_net::http::{AccessDenied, HeaderMap, HttpHandlers};
    let store = store.clone();
    let budget = config.max_cas_bytes;
    let meta = Arc::clone(meta);
    let metrics = Arc::new(move || {
        let stats = store.stats();
        let metrics = crate::metrics::metrics();
        metrics.set_cas(stats.stored_bytes, stats.evicted_bytes);
        metrics.set_space(budget, store.space().full || meta.space().full);
        metrics.encode()
    });
    let shutting_down = token.clone();
    let ready = Arc::new(move || {
        if shutting_down.is_cancelled() {
            Err("shutting down: not accepting work".to_owned())
        } else {
            Ok(())
        }
    });
    let metrics_access: Option<tessera_net::http::MetricsAccess> =
        if config.auth == AuthMode::Tokens && !config.metrics_public {
            let tokens = auth.tokens.clone();
            Some(Arc::new(move |headers: &HeaderMap| {
                let Some(value) = headers.get("authorization") else {
                    return Err(AccessDenied::Unauthorized(
                        "no token: /metrics needs `Authorization: Bearer TOKEN` (a reader \
                         token or better; Prometheus: `authorization: {credentials_file: ...}`), \
                         or start the coordinator with --metrics-public"
                            .to_owned(),
                    ));
                };
                let denied = |status: tonic::Status| match status.code() {
                    tonic::Code::PermissionDenied => {
                        AccessDenied::Forbidden(status.message().to_owned())
                    }
                    _ => AccessDenied::Unauthorized(status.message().to_owned()),
                };
                let secret = crate::auth::layer::bearer(value).map_err(denied)?;
                // A reader token or better: every role but `agent` may read.
                tokens
                    .authenticate(secret, None)
                    .and_then(|principal| principal.check(crate::auth::Permission::JobRead))
                    .map_err(denied)
            }))
        } else {
            None
        };
    HttpHandlers {
        metrics,
        ready,
        metrics_access,
        extra: None,
    }
}

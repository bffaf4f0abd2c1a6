//! The coordinator under test: started in this process on its own Tokio runtime, as if it were
//! its own process, serving real gRPC on a loopback port with a disk store in a temporary
//! directory that is deleted afterwards. The benchmark's clients run on the caller's runtime.
//! With [`Security::TlsTokens`] it serves TLS with certificates made in that directory and
//! checks tokens, and hands out the [`Credentials`] its clients and agents present. With
//! [`Metrics::On`] it records metrics and serves its HTTP port, which a [`Scraper`] scrapes
//! until [`BenchServer::stop`]; with [`Metrics::Off`] recording is off for the process and
//! there is no HTTP port.

use std::path::{Path, PathBuf};

use tempfile::TempDir;
use tessera_cas::client::CasClient;
use tessera_cas::digest::DigestFunction;
use tessera_coordinator::config::AuthMode;
use tessera_coordinator::execution::scheduler::SchedulerHandle;
use tessera_coordinator::{Coordinator, CoordinatorConfig};
use tessera_net::client::ClientAuth;
use tokio::runtime::{Handle, Runtime};

use crate::compare::Setup;
use crate::error::BenchError;
use crate::link;
use crate::metrics::{Metrics, Scraper, Scrapes};
use crate::security::{self, Certificates, Credentials, Security};

/// A coordinator started in this process on its own runtime, as if it were its own process.
pub(crate) struct InProcess {
    runtime: Option<Runtime>,
    coordinator: Option<Coordinator>,
}

impl InProcess {
    /// Starts a coordinator with `config` on a new multi-threaded runtime.
    pub(crate) async fn start(config: CoordinatorConfig) -> Result<Self, BenchError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("coordinator")
            .build()
            .map_err(|source| BenchError::Io {
                what: "start the coordinator runtime",
                source,
            })?;
        let coordinator = runtime
            .spawn(async move { Coordinator::start(&config).await })
            .await??;
        Ok(InProcess {
            runtime: Some(runtime),
            coordinator: Some(coordinator),
        })
    }

    /// The coordinator (until [`InProcess::stop`]).
    pub(crate) fn coordinator(&self) -> &Coordinator {
        self.coordinator
            .as_ref()
            .expect("coordinator lives until stop")
    }

    /// The coordinator's runtime.
    pub(crate) fn handle(&self) -> Handle {
        self.runtime
            .as_ref()
            .expect("runtime lives until stop")
            .handle()
            .clone()
    }

    /// Shuts the coordinator down cleanly.
    pub(crate) async fn stop(&mut self) -> Result<(), BenchError> {
        if let Some(coordinator) = self.coordinator.take() {
            self.handle().spawn(coordinator.shutdown()).await??;
        }
        Ok(())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        // The caller is usually inside its own runtime, where blocking on this one is not
        // allowed; its tasks are simply abandoned.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A running coordinator and the runtime it runs on.
pub(crate) struct BenchServer {
    server: InProcess,
    endpoint: String,
    credentials: Credentials,
    scraper: Option<Scraper>,
    dir: TempDir,
}

impl BenchServer {
    /// Starts a coordinator with default settings on `127.0.0.1:0`, its data directory a fresh
    /// temporary directory under `parent` (or the system temporary directory), secured and
    /// with metrics as `setup` says.
    pub(crate) async fn start(parent: Option<&Path>, setup: Setup) -> Result<Self, BenchError> {
        let dir = match parent {
            Some(parent) => tempfile::Builder::new()
                .prefix("tessera-bench-")
                .tempdir_in(parent),
            None => tempfile::Builder::new().prefix("tessera-bench-").tempdir(),
        }
        .map_err(|source| BenchError::Io {
            what: "create the data directory",
            source,
        })?;
        let data_dir = dir.path().join("data");
        let mut config = CoordinatorConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            data_dir: data_dir.clone(),
            ..CoordinatorConfig::default()
        };
        let metrics_on = setup.metrics == Metrics::On;
        tessera_coordinator::metrics::set_recording(metrics_on);
        if metrics_on {
            config.http_listen = Some(([127, 0, 0, 1], 0).into());
        }
        let certificates = match setup.security {
            Security::Plain => None,
            Security::TlsTokens => {
                let certificates = Certificates::generate(&dir.path().join("tls"))?;
                config.tls_cert = Some(certificates.cert.clone());
                config.tls_key = Some(certificates.key.clone());
                config.auth = AuthMode::Tokens;
                config.limits = security::UNTHROTTLED;
                Some(certificates)
            }
        };
        let started = InProcess::start(config).await?;
        let addr = started.coordinator().local_addr();
        let http_addr = started.coordinator().http_addr();
        let mut server = BenchServer {
            server: started,
            endpoint: format!("http://{addr}"),
            credentials: Credentials::default(),
            scraper: None,
            dir,
        };
        let scheme = if certificates.is_some() {
            "https"
        } else {
            "http"
        };
        if let Some(certificates) = certificates {
            server.endpoint = format!("https://{addr}");
            server.credentials = Credentials::create(
                &server.endpoint,
                &certificates.ca,
                &data_dir.join("admin-token"),
            )
            .await?;
        }
        if let Some(http_addr) = http_addr {
            // Its clients' token: a developer may read /metrics.
            let url = format!("{scheme}://{http_addr}");
            server.scraper = Some(Scraper::start(&url, &server.credentials.clients).await?);
        }
        Ok(server)
    }

    /// A directory on the same filesystem as the store, for probes; deleted with it.
    pub(crate) fn scratch_dir(&self) -> PathBuf {
        self.dir.path().join("scratch")
    }

    /// The coordinator's runtime, for probes that should run where the server runs.
    pub(crate) fn handle(&self) -> Handle {
        self.server.handle()
    }

    /// `http://127.0.0.1:PORT`, or `https://` with TLS.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// What the bench's clients present (nothing on a plain coordinator).
    pub(crate) fn client_auth(&self) -> &ClientAuth {
        &self.credentials.clients
    }

    /// What simulated agents present (nothing on a plain coordinator).
    pub(crate) fn agent_auth(&self) -> &ClientAuth {
        &self.credentials.agents
    }

    /// The coordinator's scheduler, to see which agents have connected.
    pub(crate) fn scheduler(&self) -> SchedulerHandle {
        self.server.coordinator().scheduler().clone()
    }

    /// Waits until `count` agents are connected to the scheduler (at most 30 s).
    pub(crate) async fn wait_for_agents(&self, count: usize) -> Result<(), BenchError> {
        let scheduler = self.scheduler();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (stats, _) = scheduler
                .stats()
                .await
                .map_err(|e| BenchError::Unexpected(e.to_string()))?;
            if stats.agents >= count {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(BenchError::Unexpected(format!(
                    "only {} of {count} agents connected within 30 s",
                    stats.agents
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// A new client for instance `""` on `connections` HTTP/2 connections of its own (see
    /// `link::cas_client`), hashing with `function`.
    pub(crate) async fn client(
        &self,
        function: DigestFunction,
        connections: usize,
    ) -> Result<CasClient, BenchError> {
        link::cas_client(
            &self.endpoint,
            &self.credentials.clients,
            function,
            connections,
        )
        .await
    }

    /// Stops scraping, shuts the coordinator down cleanly and stops its runtime: what the
    /// scraper fetched (`None` with metrics off).
    pub(crate) async fn stop(mut self) -> Result<Option<Scrapes>, BenchError> {
        let scrapes = match self.scraper.take() {
            Some(scraper) => Some(scraper.stop().await),
            None => None,
        };
        self.server.stop().await?;
        scrapes.transpose()
    }
}

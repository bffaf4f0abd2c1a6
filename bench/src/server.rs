//! The coordinator under test: started in this process on its own Tokio runtime, as if it were
//! its own process, serving real gRPC on a loopback port with a disk store in a temporary
//! directory that is deleted afterwards. The benchmark's clients run on the caller's runtime.

use std::path::{Path, PathBuf};

use tempfile::TempDir;
use tessera_cas::client::CasClient;
use tessera_cas::digest::DigestFunction;
use tessera_coordinator::execution::scheduler::SchedulerHandle;
use tessera_coordinator::{Coordinator, CoordinatorConfig};
use tokio::runtime::{Handle, Runtime};

use crate::error::BenchError;

/// A running coordinator and the runtime it runs on.
pub(crate) struct BenchServer {
    runtime: Option<Runtime>,
    coordinator: Option<Coordinator>,
    endpoint: String,
    dir: TempDir,
}

impl BenchServer {
    /// Starts a coordinator with default settings on `127.0.0.1:0`, its data directory a fresh
    /// temporary directory under `parent` (or the system temporary directory).
    pub(crate) async fn start(parent: Option<&Path>) -> Result<Self, BenchError> {
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("coordinator")
            .build()
            .map_err(|source| BenchError::Io {
                what: "start the coordinator runtime",
                source,
            })?;
        let config = CoordinatorConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            data_dir: dir.path().join("data"),
            ..CoordinatorConfig::default()
        };
        let coordinator = runtime
            .spawn(async move { Coordinator::start(&config).await })
            .await??;
        let endpoint = format!("http://{}", coordinator.local_addr());
        Ok(BenchServer {
            runtime: Some(runtime),
            coordinator: Some(coordinator),
            endpoint,
            dir,
        })
    }

    /// A directory on the same filesystem as the store, for probes; deleted with it.
    pub(crate) fn scratch_dir(&self) -> PathBuf {
        self.dir.path().join("scratch")
    }

    /// The coordinator's runtime, for probes that should run where the server runs.
    pub(crate) fn handle(&self) -> Handle {
        self.runtime
            .as_ref()
            .expect("runtime lives until stop")
            .handle()
            .clone()
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The coordinator's scheduler, to see which agents have connected.
    pub(crate) fn scheduler(&self) -> SchedulerHandle {
        self.coordinator
            .as_ref()
            .expect("coordinator lives until stop")
            .scheduler()
            .clone()
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

    /// A new client (its own HTTP/2 connection) for instance `""`, hashing with `function`.
    pub(crate) async fn client(&self, function: DigestFunction) -> Result<CasClient, BenchError> {
        Ok(CasClient::connect(&self.endpoint, "", function).await?)
    }

    /// Shuts the coordinator down cleanly and stops its runtime.
    pub(crate) async fn stop(mut self) -> Result<(), BenchError> {
        if let Some(coordinator) = self.coordinator.take() {
            self.handle().spawn(coordinator.shutdown()).await??;
        }
        Ok(())
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        // The caller is usually inside its own runtime, where blocking on this one is not
        // allowed; its tasks are simply abandoned.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

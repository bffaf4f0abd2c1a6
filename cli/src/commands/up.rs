//! `tessera up`: serve the embedded cluster (a coordinator and local agents on loopback, see
//! [`crate::cluster`]) in the foreground until SIGTERM or SIGINT; `tessera run` on this machine
//! joins it.

use std::net::SocketAddr;

use tessera_coordinator::LogFormat;

use crate::cluster::{ClusterLock, ClusterOptions, EmbeddedCluster};
use crate::exit::{CliError, Exit};
use crate::signals::ShutdownSignal;
use crate::{connect, logging, paths};

/// `tessera up` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// In-process agents.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub agents: u32,
    /// Slots per agent [default: one per core].
    #[arg(long, value_name = "N")]
    pub slots: Option<u32>,
    /// Coordinator listen address (loopback unless you mean otherwise).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

/// `tessera up`: a cluster already serving this cache directory is a usage error (exit 2).
pub async fn up(args: UpArgs) -> Result<Exit, CliError> {
    logging::init_server(LogFormat::Text, "tessera-up", None)?;
    let cache_dir = paths::cache_dir();
    let Some(lock) = ClusterLock::try_acquire(&cache_dir)? else {
        let running = connect::running_cluster(&cache_dir).await;
        return Err(CliError::usage(format!(
            "an embedded cluster already runs{} (it holds {})",
            running.map(|u| format!(" at {u}")).unwrap_or_default(),
            paths::cluster_dir(&cache_dir).join("lock").display()
        )));
    };
    let options = ClusterOptions {
        agents: args.agents,
        slots: args.slots,
        listen: args.listen,
        ..ClusterOptions::new(cache_dir.clone())
    };
    let mut signal = ShutdownSignal::install();
    let cluster = EmbeddedCluster::start(&options, lock).await?;
    println!(
        "tessera: embedded cluster at {} ({} agent(s)), started in {} ms; state in {}",
        cluster.url(),
        args.agents,
        cluster.started_in().as_millis(),
        paths::cluster_dir(&cache_dir).display()
    );
    signal.recv().await;
    cluster.shutdown().await?;
    Ok(Exit::Success)
}

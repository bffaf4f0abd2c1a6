//! `tessera agent`: load the agent's settings, run it until a signal; the first SIGTERM or
//! SIGINT drains (no new leases, running ones finish and are reported), a second one stops
//! running actions at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tessera_agent::{Agent, AgentConfig, AgentOverrides, CancellationToken, SandboxMode};
use tessera_coordinator::LogFormat;

use crate::exit::{CliError, Exit};
use crate::logging;
use crate::signals::ShutdownSignal;

/// `tessera agent` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// TOML configuration file (unknown keys are errors). Also TESSERA_AGENT_CONFIG.
    #[arg(long, env = "TESSERA_AGENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Coordinator endpoint [default: http://127.0.0.1:8980]. Also TESSERA_COORDINATOR.
    #[arg(long, value_name = "URL")]
    pub coordinator: Option<String>,
    /// Directory for the agent's id, blob cache and exec roots [default: ./tessera-agent].
    /// Also TESSERA_AGENT_WORK_DIR.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Actions run at once [default: number of CPUs]. Also TESSERA_AGENT_SLOTS.
    #[arg(long, value_name = "N")]
    pub slots: Option<u32>,
    /// Extra platform property to advertise, KEY=VALUE; repeatable. Also
    /// TESSERA_AGENT_PROPERTIES=k=v,k=v.
    #[arg(long = "property", value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
    /// Agent id [default: generated once and kept in the work directory]. Also TESSERA_AGENT_ID.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Byte budget of the local blob cache [default: 10 GiB]. Also
    /// TESSERA_AGENT_MAX_CACHE_BYTES.
    #[arg(long, value_name = "BYTES")]
    pub max_cache_bytes: Option<u64>,
    /// Sandbox with Linux namespaces: auto (if the host allows) or off [default: auto].
    /// Also TESSERA_AGENT_SANDBOX.
    #[arg(long, value_name = "MODE")]
    pub sandbox: Option<SandboxMode>,
    /// Keep the directories of failed leases under WORK_DIR/kept/ for debugging.
    #[arg(long)]
    pub keep_failed: bool,
    /// Delete each lease's directory when it ends instead of reusing it for a later lease of
    /// the same trust domain (reuse is on only where each command runs in a PID namespace of
    /// its own). Also TESSERA_AGENT_RECYCLE_DIRS=false.
    #[arg(long)]
    pub no_recycle_dirs: bool,
    /// When draining, cancel leases still running after this long, e.g. "10m" [default: wait
    /// for their timeouts]. Also TESSERA_AGENT_DRAIN_TIMEOUT.
    #[arg(long, value_name = "DURATION", value_parser = tessera_config::parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// File holding the agent's token (role agent; `tessera token create --role agent`), for
    /// a coordinator with --auth tokens. Also TESSERA_AGENT_TOKEN_FILE; without either, the
    /// agent falls back to TESSERA_TOKEN, then TESSERA_TOKEN_FILE.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the coordinator's certificate; needed for an https://
    /// coordinator. Also TESSERA_AGENT_TLS_CA, falling back to TESSERA_TLS_CA.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a coordinator that requires one (mutual TLS).
    /// Also TESSERA_AGENT_TLS_CLIENT_CERT.
    #[arg(long, value_name = "FILE")]
    pub tls_client_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-client-cert. Also TESSERA_AGENT_TLS_CLIENT_KEY.
    #[arg(long, value_name = "FILE")]
    pub tls_client_key: Option<PathBuf>,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address, e.g.
    /// 127.0.0.1:9465 [default: off]. Plain HTTP: keep it on loopback (another address is
    /// served with a warning). Also TESSERA_AGENT_HTTP_LISTEN.
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<std::net::SocketAddr>,
    /// Export the agent's spans (one per action, children of the coordinator's) to this
    /// OTLP/gRPC collector, e.g. http://127.0.0.1:4317 [default: off]. For https://, the CA is
    /// read from OTEL_EXPORTER_OTLP_CERTIFICATE. Also TESSERA_AGENT_OTLP_ENDPOINT.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Log format: text or json [default: text]. Verbosity comes from RUST_LOG.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

impl AgentArgs {
    /// The settings these flags override.
    fn overrides(&self) -> AgentOverrides {
        AgentOverrides {
            coordinator: self.coordinator.clone(),
            work_dir: self.work_dir.clone(),
            slots: self.slots,
            properties: self.properties.clone(),
            id: self.id.clone(),
            max_cache_bytes: self.max_cache_bytes,
            sandbox: self.sandbox,
            keep_failed: self.keep_failed,
            no_recycle_dirs: self.no_recycle_dirs,
            drain_timeout: self.drain_timeout,
            token_file: self.token_file.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_client_cert: self.tls_client_cert.clone(),
            tls_client_key: self.tls_client_key.clone(),
            http_listen: self.http_listen,
            otlp_endpoint: self.otlp_endpoint.clone(),
        }
    }
}

/// `tessera agent`: a configuration error exits 2; an agent that cannot start or fails, 3.
pub async fn agent(args: AgentArgs) -> Result<Exit, CliError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = AgentConfig::load(args.config.as_deref(), &env, &args.overrides())?;
    logging::init_server(
        args.log_format,
        "tessera-agent",
        config.otlp_endpoint.as_deref(),
    )?;
    let shutdown = CancellationToken::new();
    let abort = CancellationToken::new();
    let mut signal = ShutdownSignal::install();
    tokio::spawn({
        let (shutdown, abort) = (shutdown.clone(), abort.clone());
        async move {
            signal.recv().await;
            shutdown.cancel();
            signal.recv().await;
            tracing::warn!("second signal: stopping running actions now");
            abort.cancel();
        }
    });
    Agent::run_with_abort(config, shutdown, abort).await?;
    Ok(Exit::Success)
}

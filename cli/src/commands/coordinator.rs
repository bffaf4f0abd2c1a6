//! `tessera coordinator`: load the coordinator's settings, serve until SIGTERM or SIGINT, then
//! drain and flush (the server's own shutdown protocol, in `tessera-coordinator`). SIGHUP
//! re-reads the TLS certificate files for new connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use tessera_coordinator::config::AuthMode;
use tessera_coordinator::{ConfigOverrides, Coordinator, CoordinatorConfig, LogFormat};
use tessera_net::server::TlsReloader;

use crate::exit::{CliError, Exit};
use crate::logging;
use crate::signals::ShutdownSignal;

/// `tessera coordinator` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorArgs {
    /// TOML configuration file (unknown keys are errors). Also TESSERA_CONFIG.
    #[arg(long, env = "TESSERA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:8980]. Also TESSERA_LISTEN.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Directory for all state [default: ./tessera-data]. Also TESSERA_DATA_DIR.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Byte budget for stored blobs; least recently used blobs are evicted beyond it.
    /// Also TESSERA_MAX_CAS_BYTES.
    #[arg(long, value_name = "BYTES")]
    pub max_cas_bytes: Option<u64>,
    /// Log format: text or json [default: text]. Verbosity comes from RUST_LOG.
    /// Also TESSERA_LOG_FORMAT.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// TLS certificate chain (PEM) for the gRPC port; with --tls-key, clients connect with
    /// https:// (Bazel: grpcs://). Re-read on SIGHUP. Also TESSERA_TLS_CERT.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert. Also TESSERA_TLS_KEY.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) of client certificates: every client must then present one signed by it
    /// (mutual TLS), in addition to its token. Also TESSERA_TLS_CLIENT_CA.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Authentication: none, or tokens (every call carries `authorization: Bearer TOKEN`; the
    /// first start writes an admin token to DATA_DIR/admin-token) [default: none].
    /// Also TESSERA_AUTH.
    #[arg(long, value_name = "MODE")]
    pub auth: Option<AuthMode>,
    /// Allow listening on a non-loopback address without TLS. Also TESSERA_INSECURE_NO_TLS.
    #[arg(long)]
    pub insecure_no_tls: bool,
    /// Allow listening on a non-loopback address without authentication.
    /// Also TESSERA_INSECURE_NO_AUTH.
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// HTTP address for /metrics (Prometheus), /healthz and /readyz [default: off]. Beyond
    /// loopback it follows the gRPC port's rules: TLS with the same certificate, and /metrics
    /// needs a reader token unless --metrics-public. Also TESSERA_HTTP_LISTEN.
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// Serve /metrics without a token even with --auth tokens. Also TESSERA_METRICS_PUBLIC.
    #[arg(long)]
    pub metrics_public: bool,
    /// Export traces over OTLP/gRPC to this endpoint (e.g. http://collector:4317) [default:
    /// off]: a span per gRPC call, per job and per action, children of the client's when the
    /// call carries a W3C trace context. For https://, the CA is read from
    /// OTEL_EXPORTER_OTLP_CERTIFICATE. Also TESSERA_OTLP_ENDPOINT.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Take scheduled backups into DIR (with --backup-interval): a consistent snapshot of the
    /// metadata and the blobs it needs, incremental by content; restore with `tessera restore
    /// --from DIR --data-dir DIR`. Also TESSERA_BACKUP_DIR.
    #[arg(long, value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Time between scheduled backups, e.g. 24h [default: off]. Also TESSERA_BACKUP_INTERVAL.
    #[arg(long, value_name = "DURATION", value_parser = tessera_config::parse_duration)]
    pub backup_interval: Option<std::time::Duration>,
    /// Scheduled backups kept, the newest [default: 7]. Also TESSERA_BACKUP_KEEP.
    #[arg(long, value_name = "N")]
    pub backup_keep: Option<usize>,
}

impl CoordinatorArgs {
    /// The settings these flags override.
    fn overrides(&self) -> ConfigOverrides {
        ConfigOverrides {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            max_cas_bytes: self.max_cas_bytes,
            log_format: self.log_format,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_client_ca: self.tls_client_ca.clone(),
            auth: self.auth,
            insecure_no_tls: self.insecure_no_tls,
            insecure_no_auth: self.insecure_no_auth,
            http_listen: self.http_listen,
            metrics_public: self.metrics_public,
            otlp_endpoint: self.otlp_endpoint.clone(),
            backup_dir: self.backup_dir.clone(),
            backup_interval: self.backup_interval,
            backup_keep: self.backup_keep,
        }
    }
}

/// `tessera coordinator`: a configuration error exits 2; failing to start or to serve, 3;
/// SIGTERM or SIGINT stop it cleanly, exit 0 (while it starts: where the start got to).
pub async fn coordinator(args: CoordinatorArgs) -> Result<Exit, CliError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = CoordinatorConfig::load(args.config.as_deref(), &env, &args.overrides())?;
    logging::init_server(
        config.log_format,
        "tessera-coordinator",
        config.otlp_endpoint.as_deref(),
    )?;
    let mut signal = ShutdownSignal::install();
    // A start can take a while (a store whose index was lost hashes every file): a signal
    // meanwhile stops it there (what it wrote is crash-safe).
    let server = tokio::select! {
        server = Coordinator::start(&config) => server?,
        () = signal.recv() => {
            tracing::info!("stopped while starting");
            return Ok(Exit::Success);
        }
    };
    let token = server.shutdown_token();
    tokio::spawn(async move {
        signal.recv().await;
        token.cancel();
    });
    tokio::spawn(reload_on_sighup(server.tls()));
    server.run_until_shutdown().await?;
    Ok(Exit::Success)
}

/// On every SIGHUP, re-reads the TLS files (`tls`: `None` when TLS is off) and logs the outcome;
/// a failed reload keeps the certificate in use and never stops the server. Ends with the
/// runtime (the server's shutdown ends `main`).
async fn reload_on_sighup(tls: Option<TlsReloader>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(error) => {
            tracing::warn!(%error, "cannot handle SIGHUP: TLS certificates will not be reloaded");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        match &tls {
            None => tracing::info!("received SIGHUP: TLS is off, nothing to reload"),
            Some(tls) => match tls.reload() {
                Ok(()) => tracing::info!(
                    cert = %tls.files().cert.display(),
                    "received SIGHUP: TLS certificate reloaded for new connections"
                ),
                Err(error) => tracing::error!(
                    %error,
                    "received SIGHUP: TLS reload failed; still serving the previous certificate"
                ),
            },
        }
    }
}

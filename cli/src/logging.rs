//! Log set-up of the `tessera` process, on stderr; verbosity comes from `RUST_LOG`.
//!
//! The servers (`coordinator`, `agent`, `up`) log at info in the chosen format; the client
//! commands (`run`, `watch`, `cancel`, `status`) warn only, so the embedded cluster a run may
//! start stays quiet under its progress display.

use tessera_coordinator::LogFormat;
use tracing_subscriber::EnvFilter;

/// Logging for a server command: info unless `RUST_LOG` says otherwise, in `format`.
pub fn init_server(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Logging for a client command: warnings only unless `RUST_LOG` says otherwise.
pub fn init_client() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

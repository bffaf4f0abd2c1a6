//! Log set-up of the `tessera` process, on stderr; verbosity comes from `RUST_LOG`.
//!
//! The servers (`coordinator`, `agent`, `up`) log at info in the chosen format; the client
//! commands (`run`, `watch`, `cancel`, `status`) warn only, so the embedded cluster a run may
//! start stays quiet under its progress display.
//!
//! With an OTLP endpoint, the process's spans are also exported ([`tessera_net::trace`]):
//! every span of Tessera's own crates at info or above, whatever `RUST_LOG` keeps on stderr,
//! so a quiet client still sends its whole trace.

use tessera_coordinator::LogFormat;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::exit::CliError;

/// A layer of the process's subscriber.
type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Logging for a server command: info unless `RUST_LOG` says otherwise, in `format`; spans
/// exported as `service` when `otlp` names a collector. A bad endpoint is a usage error.
pub fn init_server(format: LogFormat, service: &str, otlp: Option<&str>) -> Result<(), CliError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let stderr: BoxedLayer = match format {
        LogFormat::Text => stderr.with_filter(filter).boxed(),
        LogFormat::Json => stderr.json().with_filter(filter).boxed(),
    };
    init(stderr, service, otlp)
}

/// Logging for a client command: warnings only unless `RUST_LOG` says otherwise; spans
/// exported as `tessera-cli` when `otlp` names a collector.
pub fn init_client(otlp: Option<&str>) -> Result<(), CliError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter)
        .boxed();
    init(stderr, "tessera-cli", otlp)
}

/// Installs `stderr` and, with an endpoint, the OTLP export of Tessera's spans.
fn init(stderr: BoxedLayer, service: &str, otlp: Option<&str>) -> Result<(), CliError> {
    let mut layers = vec![stderr];
    if let Some(endpoint) = otlp {
        let export = tessera_net::trace::export(service, endpoint)
            .map_err(|error| CliError::usage(format!("{error}; check --otlp-endpoint")))?;
        layers.push(
            export
                .with_filter(Targets::new().with_target("tessera", Level::INFO))
                .boxed(),
        );
    }
    tracing_subscriber::registry().with(layers).init();
    Ok(())
}

//! `tessera tunnel`: a local TLS forwarder for REAPI clients that cannot do TLS themselves
//! (Debian's Bazel 4.2.3: its netty's JDK TLS provider lacks ALPN, so `grpcs://` fails before
//! connecting). It listens on loopback only and forwards each connection over verified TLS to
//! the coordinator (`tessera_net::tunnel`), until SIGINT or SIGTERM.
//!
//! The coordinator, the CA and the client certificate come from the client configuration like
//! every client command's (`crate::client_config`: file, `TESSERA_*` variables, flags). The
//! token does not: the client sends its own `authorization` header through the tunnel.

use std::net::SocketAddr;
use std::path::PathBuf;

use tessera_net::client::ClientAuth;
use tessera_net::tunnel::{self, TlsDialer};
use tokio::net::TcpListener;

use crate::client_config::{ClientConfig, ClientFlags};
use crate::exit::{CliError, Exit};
use crate::signals::ShutdownSignal;

/// Where the tunnel listens unless told otherwise (the coordinator's default port plus one).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8981";

/// `tessera tunnel` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct TunnelArgs {
    /// The coordinator's https:// URL (the first of a comma list is used) [default:
    /// TESSERA_COORDINATOR, else `coordinator` in the client config file].
    #[arg(long, value_name = "URL")]
    pub coordinator: Option<String>,
    /// Loopback address and port the client connects to in plain text (a non-loopback
    /// address is refused: that hop must not leave this machine).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// CA certificate (PEM) that signed the coordinator's certificate [default:
    /// TESSERA_TLS_CA, else `tls_ca` in the client config file].
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

/// `tessera tunnel`: bad settings exit 2, a port that cannot be bound exits 3; otherwise it
/// runs until SIGINT or SIGTERM and exits 0.
pub async fn tunnel(args: TunnelArgs) -> Result<Exit, CliError> {
    check_loopback(args.listen)?;
    let config = ClientConfig::from_process(&ClientFlags {
        coordinator: args.coordinator.clone(),
        token_file: None,
        tls_ca: args.tls_ca.clone(),
    })?;
    let url = config.coordinators.first().ok_or_else(|| {
        CliError::usage(
            "tessera tunnel needs the coordinator's URL: --coordinator https://HOST:PORT (or \
             TESSERA_COORDINATOR, or `coordinator` in the client config file)",
        )
    })?;
    // No token: the client's own header goes through.
    let auth = ClientAuth {
        tls_ca: config.tls_ca.clone(),
        client_cert: config.tls_client_cert.clone(),
        client_key: config.tls_client_key.clone(),
        token: None,
    };
    let mut signal = ShutdownSignal::install();
    let dialer = TlsDialer::new(url, &auth).map_err(|e| CliError::usage(e.to_string()))?;
    let listener = TcpListener::bind(args.listen).await.map_err(|e| {
        CliError::infra(format!(
            "cannot listen on {}: {e} (is another tunnel running? choose another port with \
             --listen)",
            args.listen
        ))
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::infra(format!("cannot read the tunnel's own address: {e}")))?;
    tracing::info!("tunnel listening on {addr} -> {url}; point Bazel at grpc://{addr}");
    tunnel::forward(listener, dialer, async move { signal.recv().await }).await;
    tracing::info!("tunnel stopped");
    Ok(Exit::Success)
}

/// Refuses a listening address off loopback: the client's side of the tunnel is plain text.
fn check_loopback(listen: SocketAddr) -> Result<(), CliError> {
    if listen.ip().is_loopback() {
        return Ok(());
    }
    Err(CliError::usage(format!(
        "--listen {listen} is not a loopback address: the connection from the client to the \
         tunnel is plain text and must not leave this machine; use 127.0.0.1:PORT or \
         [::1]:PORT (the tunnel's side toward the coordinator is TLS)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_accepted() {
        for ok in ["127.0.0.1:8981", "127.0.0.2:1", "[::1]:8981"] {
            check_loopback(ok.parse().unwrap()).unwrap();
        }
        for refused in ["0.0.0.0:8981", "10.1.2.3:8981", "[::]:8981"] {
            let err = check_loopback(refused.parse().unwrap()).unwrap_err();
            assert_eq!(err.exit(), Exit::Usage);
            assert!(err.to_string().contains("not a loopback address"), "{err}");
        }
    }
}

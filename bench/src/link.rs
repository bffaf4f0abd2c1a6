//! How the bench's clients reach a coordinator: every connection it makes (CAS clients,
//! Execute callers, simulated agents, the Admin calls that create tokens) goes through
//! [`connect`], so each one gets the same TLS and token as the others of its kind, and a
//! plain run and a secure run differ only in the [`ClientAuth`] passed in.

use tessera_cas::client::CasClient;
use tessera_cas::digest::DigestFunction;
use tessera_net::client::{ClientAuth, Link};

use crate::error::BenchError;

/// What a connection carries, which decides its HTTP/2 settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Traffic {
    /// Small calls (Execute, agent sessions, Admin): the transport's defaults.
    Calls,
    /// Blob transfers: 1 MiB frames and large windows, as [`CasClient::connect`] uses, so a
    /// transfer is not held back by flow control.
    Blobs,
}

/// A new HTTP/2 connection to `url` (`http://` or `https://`), connected now so that no timed
/// call pays for it, that sends `auth`'s token with every call.
pub(crate) async fn connect(
    url: &str,
    auth: &ClientAuth,
    traffic: Traffic,
) -> Result<Link, BenchError> {
    let endpoint = tessera_net::client::endpoint(url, auth)?.tcp_nodelay(true);
    let endpoint = match traffic {
        Traffic::Calls => endpoint,
        Traffic::Blobs => endpoint
            .max_frame_size(1024 * 1024)
            .initial_connection_window_size(32 * 1024 * 1024)
            .initial_stream_window_size(16 * 1024 * 1024),
    };
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| BenchError::Connect {
            endpoint: url.to_owned(),
            source,
        })?;
    Ok(tessera_net::client::link(channel, auth))
}

/// Connections of a CAS client made for the `cas` benchmark's transfer rows: ByteStream
/// transfers take them in turn ([`CasClient::with_transfer_links`]). Measured on the 2-core
/// VM, BLAKE3 2 × 256 MiB, eight transfers each: one connection 1,108 MB/s down and
/// 1,327 MB/s up (medians), two 1,210 and 1,475 MB/s; four were no faster than two.
pub(crate) const CAS_CONNECTIONS: usize = 2;

/// A CAS client for instance `""` on `connections` connections of its own (at least one; its
/// ByteStream transfers take them in turn), hashing with `function`.
pub(crate) async fn cas_client(
    url: &str,
    auth: &ClientAuth,
    function: DigestFunction,
    connections: usize,
) -> Result<CasClient, BenchError> {
    let link = connect(url, auth, Traffic::Blobs).await?;
    let mut transfer_links = Vec::with_capacity(connections.saturating_sub(1));
    for _ in 1..connections {
        transfer_links.push(connect(url, auth, Traffic::Blobs).await?);
    }
    Ok(CasClient::from_link(link, "", function)
        .await?
        .with_transfer_links(transfer_links))
}

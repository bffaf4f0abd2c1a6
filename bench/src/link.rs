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

/// A CAS client for instance `""` on its own connection, hashing with `function`.
pub(crate) async fn cas_client(
    url: &str,
    auth: &ClientAuth,
    function: DigestFunction,
) -> Result<CasClient, BenchError> {
    let link = connect(url, auth, Traffic::Blobs).await?;
    Ok(CasClient::from_link(link, "", function).await?)
}

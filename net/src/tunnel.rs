//! TLS on behalf of a client that cannot do it (`tessera tunnel`): connections accepted on a
//! local port are forwarded byte for byte to the coordinator over TLS.
//!
//! Why: some REAPI clients cannot speak TLS. Debian's `bazel-bootstrap` (Bazel 4.2.3) is built
//! against a netty whose JDK TLS provider lacks ALPN, so its `grpcs://` fails before
//! connecting. Through a tunnel on loopback it talks plain gRPC to the tunnel, and the tunnel
//! makes the TLS connection the coordinator requires.
//!
//! - [`TlsDialer`]: one coordinator URL and the rustls settings to reach it ([`client_config`]:
//!   the CA as the only trust root, the client certificate when one is configured, ALPN `h2`);
//!   [`TlsDialer::connect_tls`] opens one verified TLS connection.
//! - [`forward`]: the accept loop; each connection gets its own TLS connection, and a failed
//!   handshake closes that connection only (logged with its cause).
//!
//! It never looks inside the bytes: the client's own `authorization` header goes through as
//! sent. It does not choose the listening address or check that it is loopback (the command
//! does: the plaintext hop must not leave the machine).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::ServerName;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::Endpoint;

use crate::client::{ClientAuth, ClientError, parse_certificates, parse_key, read_file};

/// How long connecting to the coordinator and the TLS handshake may take, together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept error that is not about one connection (out of file descriptors,
/// say), so the accept loop does not spin while the cause lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Why one TLS connection to the coordinator could not be opened.
#[derive(Debug, Error)]
pub enum DialError {
    /// The TCP connection failed (nothing listening, no route, name not resolved).
    #[error("cannot reach the coordinator at {url}: {source}")]
    Connect {
        /// The coordinator's URL.
        url: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed: the certificate does not verify, or the coordinator refused
    /// ours.
    #[error("TLS with the coordinator at {url} failed: {source}{hint}")]
    Handshake {
        /// The coordinator's URL.
        url: String,
        /// What to check, when the cause says (empty otherwise).
        hint: String,
        /// The cause (a rustls error inside an I/O error).
        #[source]
        source: io::Error,
    },
    /// Connecting and the handshake took longer than [`CONNECT_TIMEOUT`].
    #[error("the coordinator at {url} did not complete a TLS connection within {after:?}")]
    TimedOut {
        /// The coordinator's URL.
        url: String,
        /// The time allowed.
        after: Duration,
    },
}

/// The rustls client settings for `url`: the CA in `auth.tls_ca` as the only trust root,
/// `auth`'s client certificate when set, ALPN `h2` (gRPC). The token is not used: the tunnel
/// forwards the client's own.
pub fn client_config(url: &str, auth: &ClientAuth) -> Result<rustls::ClientConfig, ClientError> {
    let ca_path = auth.tls_ca.as_deref().ok_or_else(|| ClientError::NeedsCa {
        url: url.to_owned(),
    })?;
    let mut roots = RootCertStore::empty();
    for cert in parse_certificates(ca_path, &read_file(ca_path, "CA certificate")?)? {
        roots.add(cert).map_err(|e| ClientError::Pem {
            path: ca_path.to_owned(),
            problem: format!("unusable CA certificate: {e}"),
            expected: "CA CERTIFICATE",
        })?;
    }
    #[expect(
        deprecated,
        reason = "ring is the provider we build with (no aws-lc), as for the server and tonic"
    )]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| ClientError::Rustls {
            url: url.to_owned(),
            source,
        })?
        .with_root_certificates(roots);
    let mut config = match (&auth.client_cert, &auth.client_key) {
        (Some(cert), Some(key)) => {
            let chain = parse_certificates(cert, &read_file(cert, "client certificate")?)?;
            let private = parse_key(key, &read_file(key, "client key")?)?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|source| ClientError::Identity {
                    cert: cert.clone(),
                    key: key.clone(),
                    source,
                })?
        }
        (Some(_), None) => {
            return Err(ClientError::HalfIdentity {
                given: "certificate",
            });
        }
        (None, Some(_)) => return Err(ClientError::HalfIdentity { given: "key" }),
        (None, None) => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Opens TLS connections to one coordinator, verified against its CA and its URL's host.
#[derive(Clone)]
pub struct TlsDialer {
    url: String,
    /// The URL's host as a TCP connection takes it (an IPv6 address without brackets).
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    /// Whether a client certificate is presented (for the hint when the coordinator wants one).
    identity: bool,
}

impl std::fmt::Debug for TlsDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsDialer")
            .field("url", &self.url)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl TlsDialer {
    /// A dialer for `url` (`https://HOST:PORT`; the port defaults to 443), trusting
    /// `auth.tls_ca` and presenting `auth`'s client certificate when set. Files are read and
    /// checked here, before any connection.
    pub fn new(url: &str, auth: &ClientAuth) -> Result<Self, ClientError> {
        let bad = |reason: String| ClientError::Url {
            url: url.to_owned(),
            reason,
        };
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| bad(e.to_string()))?;
        let uri = endpoint.uri();
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") => {
                return Err(ClientError::NotHttps {
                    url: url.to_owned(),
                });
            }
            Some(other) => return Err(bad(format!("unsupported scheme \"{other}\""))),
            None => return Err(bad("it has no scheme".to_owned())),
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("it has no host".to_owned()))?;
        // An IPv6 host comes bracketed; the certificate names the bare address.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| bad(format!("\"{host}\" is not a valid server name: {e}")))?;
        let port = uri.port_u16().unwrap_or(443);
        let config = client_config(url, auth)?;
        Ok(TlsDialer {
            url: url.to_owned(),
            host,
            port,
            server_name,
            connector: TlsConnector::from(Arc::new(config)),
            identity: auth.client_cert.is_some(),
        })
    }

    /// The coordinator's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One TLS connection to the coordinator (TCP_NODELAY set), within [`CONNECT_TIMEOUT`].
    pub async fn connect_tls(&self) -> Result<TlsStream<TcpStream>, DialError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.connect_now())
            .await
            .unwrap_or_else(|_| {
                Err(DialError::TimedOut {
                    url: self.url.clone(),
                    after: CONNECT_TIMEOUT,
                })
            })
    }

    async fn connect_now(&self) -> Result<TlsStream<TcpStream>, DialError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| DialError::Connect {
                url: self.url.clone(),
                source,
            })?;
        // Without it, gRPC replies stall on delayed ACKs (~40 ms each).
        let _ = tcp.set_nodelay(true);
        self.connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| DialError::Handshake {
                url: self.url.clone(),
                hint: self.hint(&source),
                source,
            })
    }

    /// What to check for a failed TLS connection, from rustls's reason.
    fn hint(&self, error: &io::Error) -> String {
        use rustls::Error as E;
        let Some(cause) = rustls_cause(error) else {
            return String::new();
        };
        match cause {
            E::InvalidCertificate(CertificateError::UnknownIssuer) => {
                " (the coordinator's certificate is not signed by the CA given with --tls-ca \
                 or TESSERA_TLS_CA)"
                    .to_owned()
            }
            E::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!(
                " (the coordinator's certificate does not name \"{}\": use the host name it \
                 was issued for in the URL)",
                self.host
            ),
            E::AlertReceived(_) if !self.identity => {
                " (if the coordinator requires client certificates, set \
                 TESSERA_TLS_CLIENT_CERT and TESSERA_TLS_CLIENT_KEY, or tls_client_cert and \
                 tls_client_key in the client config file)"
                    .to_owned()
            }
            _ => String::new(),
        }
    }
}

/// The rustls error inside an I/O error from tokio-rustls, if it is one.
fn rustls_cause(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

fn is_tls(error: &io::Error) -> bool {
    rustls_cause(error).is_some()
}

/// Accepts connections on `listener` until `shutdown` completes, and forwards each to the
/// coordinator over its own TLS connection. A connection whose TLS connection fails is closed
/// and logged (warn, with the cause); the others go on. Open connections are dropped when it
/// returns.
pub async fn forward(listener: TcpListener, dialer: TlsDialer, shutdown: impl Future<Output = ()>) {
    let dialer = Arc::new(dialer);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connections so the set does not grow with every client.
            Some(_) = connections.join_next() => continue,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                connections.spawn(forward_one(client, peer, Arc::clone(&dialer)));
            }
            Err(error) => {
                tracing::warn!(%error, "tunnel: failed to accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    connections.shutdown().await;
}

async fn forward_one(mut client: TcpStream, peer: SocketAddr, dialer: Arc<TlsDialer>) {
    let _ = client.set_nodelay(true);
    let mut tls = match dialer.connect_tls().await {
        Ok(tls) => tls,
        Err(error) => {
            tracing::warn!("tunnel: closing the connection from {peer}: {error}");
            return;
        }
    };
    tracing::debug!("tunnel: {peer} connected to {}", dialer.url());
    match tokio::io::copy_bidirectional(&mut client, &mut tls).await {
        Ok((up, down)) => {
            tracing::debug!("tunnel: {peer} closed ({up} bytes up, {down} bytes down)");
        }
        // Under TLS 1.3 the coordinator checks our client certificate after the handshake,
        // so its refusal arrives here.
        Err(error) if is_tls(&error) => tracing::warn!(
            "tunnel: the coordinator at {} closed the connection from {peer}: {error}{}",
            dialer.url(),
            dialer.hint(&error)
        ),
        // Either side may reset; that ends this connection only.
        Err(error) => tracing::debug!("tunnel: {peer} ended: {error}"),
    }
}

//! The server side: the stream of accepted connections a tonic server serves (plain TCP, or
//! TLS over TCP), each with the [`Peer`] info that tonic puts in every request's extensions.
//!
//! - [`TlsReloader`] owns the TLS settings: the certificate chain, its key and, for mutual
//!   TLS, the CA client certificates must be signed by. [`TlsReloader::reload`] re-reads the
//!   files for new connections; open connections keep the settings they started with.
//! - [`incoming`] accepts connections: `TCP_NODELAY` on every socket (without it, replies
//!   stall on delayed ACKs, ~40 ms), TLS handshakes run side by side with a deadline, so a
//!   slow or hostile client never holds up the others, and a failed handshake drops only that
//!   connection.
//!
//! It does not decide what a peer may do: authorization reads [`Peer`] and the request's
//! token elsewhere.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{FuturesUnordered, Stream, StreamExt};
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept error that is not about one connection (out of file descriptors,
/// say), so the accept loop does not spin while the cause lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Where the server's TLS settings live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM), the server's own certificate first.
    pub cert: PathBuf,
    /// Private key (PEM) of the first certificate.
    pub key: PathBuf,
    /// CA (PEM) that must have signed every client's certificate; `None`: clients present
    /// none (plain TLS).
    pub client_ca: Option<PathBuf>,
}

/// Which of the [`TlsFiles`] a [`TlsError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// The certificate chain.
    Cert,
    /// The private key.
    Key,
    /// The client CA.
    ClientCa,
}

impl std::fmt::Display for TlsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsFile::Cert => "TLS certificate (--tls-cert)",
            TlsFile::Key => "TLS key (--tls-key)",
            TlsFile::ClientCa => "client CA (--tls-client-ca)",
        })
    }
}

/// Why the TLS settings could not be loaded.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read (often: it does not exist).
    #[error("failed to read the {file} {path}: {source}")]
    Read {
        /// Which file.
        file: TlsFile,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file holds no PEM item of the kind it should.
    #[error("the {file} {path} holds no {expected} (expected a PEM file with one)")]
    Empty {
        /// Which file.
        file: TlsFile,
        /// The file.
        path: PathBuf,
        /// What it should hold.
        expected: &'static str,
    },
    /// A file is not valid PEM.
    #[error("the {file} {path} is not valid PEM: {reason}")]
    Pem {
        /// Which file.
        file: TlsFile,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key is not the one the certificate was issued for.
    #[error(
        "the TLS key {key} does not match the certificate {cert} (give the key the \
         certificate was issued for)"
    )]
    KeyMismatch {
        /// The certificate chain.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
    /// rustls refused the certificate or the key.
    #[error("the TLS certificate {cert} or its key {key} is unusable: {source}")]
    Unusable {
        /// The certificate chain.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// A client CA certificate is unusable.
    #[error("the client CA (--tls-client-ca) {path} is unusable: {reason}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The server's TLS settings, re-readable: cheap to clone, every clone sees a reload.
#[derive(Clone)]
pub struct TlsReloader {
    shared: Arc<Shared>,
    /// ALPN `h2` and `http/1.1` instead of `h2` only (the HTTP port: Prometheus and curl
    /// may speak either).
    http_alpn: bool,
}

struct Shared {
    files: TlsFiles,
    /// Never held across an await; a connection takes its own `Arc` of the config.
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader")
            .field("files", &self.shared.files)
            .finish_non_exhaustive()
    }
}

impl TlsReloader {
    /// Reads and checks the files.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = server_config(&files)?;
        Ok(TlsReloader {
            shared: Arc::new(Shared {
                files,
                current: RwLock::new(Arc::new(config)),
            }),
            http_alpn: false,
        })
    }

    /// Re-reads the files; new connections use them, open ones keep theirs. On error the
    /// settings in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(server_config(&self.shared.files)?);
        *self
            .shared
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// The files the settings come from.
    pub fn files(&self) -> &TlsFiles {
        &self.shared.files
    }

    /// Whether clients must present a certificate (mutual TLS).
    pub fn mutual(&self) -> bool {
        self.shared.files.client_ca.is_some()
    }

    /// The same settings (and reloads) offering ALPN `h2` and `http/1.1`, for an HTTP port
    /// rather than gRPC.
    pub fn with_http_alpn(&self) -> TlsReloader {
        TlsReloader {
            shared: Arc::clone(&self.shared),
            http_alpn: true,
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        let config = Arc::clone(
            &self
                .shared
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if self.http_alpn {
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            return TlsAcceptor::from(Arc::new(config));
        }
        TlsAcceptor::from(config)
    }
}

/// The rustls settings `files` describe: ALPN `h2` only (gRPC; grpc-java, Bazel's client,
/// refuses a server that does not negotiate it), and, with a client CA, a verifier that
/// requires a certificate it signed.
fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    #[expect(
        deprecated,
        reason = "ring is the provider we build with (no aws-lc); its post-quantum key \
                  exchange is not in ring's provider yet, and tonic's client uses the same one"
    )]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certificates(TlsFile::Cert, &files.cert)?;
    let key = read_key(&files.key)?;
    let unusable = |source| TlsError::Unusable {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(unusable)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let bad = |reason: String| TlsError::ClientCa {
                path: path.clone(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            for cert in read_certificates(TlsFile::ClientCa, path)? {
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| bad(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|error| match error {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            },
            other => unusable(other),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn read(file: TlsFile, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        file,
        path: path.to_owned(),
        source,
    })
}

fn read_certificates(file: TlsFile, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(file, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            file,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            file,
            path: path.to_owned(),
            expected: "certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(TlsFile::Key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            file: TlsFile::Key,
            path: path.to_owned(),
            expected: "private key",
        },
        other => TlsError::Pem {
            file: TlsFile::Key,
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })
}

/// What the server knows about the other end of a connection; tonic puts it in every
/// request's extensions (`request.extensions().get::<Peer>()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The client's address (`None` if the socket could not tell).
    pub addr: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Whether the client presented a certificate (the verifier has checked it).
    pub client_cert: bool,
}

/// An accepted connection: plain TCP or TLS over TCP.
pub struct Conn {
    io: Io,
    peer: Peer,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("peer", &self.peer).finish()
    }
}

impl Conn {
    /// What is known about the client.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

impl Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections accepted on `listener`, with TLS when `tls` is given, for
/// `tonic::transport::Server::serve_with_incoming`. It never ends by itself: an accept error
/// is yielded (tonic logs it and goes on), a failed or timed-out handshake is logged at debug
/// and dropped. Handshakes in progress live inside the stream and end with it.
pub fn incoming(
    listener: TcpListener,
    tls: Option<TlsReloader>,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let acceptor = Acceptor {
        listener,
        tls,
        handshakes: FuturesUnordered::new(),
    };
    futures::stream::unfold(acceptor, |mut acceptor| async move {
        let next = acceptor.next().await;
        Some((next, acceptor))
    })
}

type Handshake = Pin<Box<dyn Future<Output = Option<Conn>> + Send>>;

struct Acceptor {
    listener: TcpListener,
    tls: Option<TlsReloader>,
    handshakes: FuturesUnordered<Handshake>,
}

impl Acceptor {
    /// The next connection ready to serve. Cancel-safe: accepting and polling handshakes
    /// both are.
    async fn next(&mut self) -> io::Result<Conn> {
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, addr) = match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            if !is_per_connection(&error) {
                                tokio::time::sleep(ACCEPT_BACKOFF).await;
                            }
                            return Err(error);
                        }
                    };
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%addr, %error, "failed to set TCP_NODELAY");
                    }
                    match &self.tls {
                        None => {
                            let peer = Peer { addr: Some(addr), tls: false, client_cert: false };
                            return Ok(Conn { io: Io::Plain(stream), peer });
                        }
                        Some(tls) => self.handshakes.push(Box::pin(handshake(tls.acceptor(), stream, addr))),
                    }
                }
                Some(done) = self.handshakes.next(), if !self.handshakes.is_empty() => {
                    if let Some(conn) = done {
                        return Ok(conn);
                    }
                }
            }
        }
    }
}

/// Runs one TLS handshake; `None` (logged at debug) if it fails or takes too long.
async fn handshake(acceptor: TlsAcceptor, stream: TcpStream, addr: SocketAddr) -> Option<Conn> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|certs| !certs.is_empty());
            let peer = Peer {
                addr: Some(addr),
                tls: true,
                client_cert,
            };
            Some(Conn {
                io: Io::Tls(Box::new(tls)),
                peer,
            })
        }
        Ok(Err(error)) => {
            tracing::debug!(%addr, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%addr, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            None
        }
    }
}

/// Whether an accept error concerns only the connection being accepted (try the next one at
/// once) rather than the listener or the process (back off).
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

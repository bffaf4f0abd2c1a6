//! A TLS tunnel for clients that cannot speak TLS themselves: it listens on a loopback port
//! and forwards each connection to the coordinator over TLS (verifying the server's
//! certificate against a CA, offering ALPN `h2`), so everything that leaves the test's client
//! is encrypted and reaches the coordinator's TLS port like any other TLS client.
//!
//! Why it exists: Debian's `bazel-bootstrap` (Bazel 4.2.3) is built against Debian's netty,
//! whose JDK TLS provider lacks ALPN, so its `grpcs://` fails before connecting ("JDK
//! provider does not support ALPN protocol"). Through the tunnel, Bazel still talks to the
//! TLS port with its token; only the TLS handshake is made on its behalf.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

/// A running tunnel (stopped on drop).
pub struct TlsTunnel {
    /// Where clients connect, in plain text: `127.0.0.1:PORT`.
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TlsTunnel {
    /// Forwards connections to `target` over TLS, expecting a certificate for `server_name`
    /// signed by the CA in `ca` (PEM).
    pub fn start(target: SocketAddr, server_name: &str, ca: &Path) -> TlsTunnel {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).expect("read the CA") {
            roots
                .add(cert.expect("a PEM certificate"))
                .expect("a usable CA");
        }
        #[expect(
            deprecated,
            reason = "ring is the provider the workspace builds with, as tessera-net does"
        )]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from(server_name.to_owned()).expect("a server name");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tunnel runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the tunnel");
        let addr = listener.local_addr().expect("tunnel address");
        runtime.spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (connector, name) = (connector.clone(), name.clone());
                tokio::spawn(async move {
                    let Ok(tcp) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tcp.set_nodelay(true);
                    let _ = inbound.set_nodelay(true);
                    match connector.connect(name, tcp).await {
                        Ok(mut tls) => {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut tls).await;
                        }
                        Err(error) => eprintln!("tls tunnel: handshake with {target}: {error}"),
                    }
                });
            }
        });
        TlsTunnel {
            addr,
            runtime: Some(runtime),
        }
    }
}

impl Drop for TlsTunnel {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

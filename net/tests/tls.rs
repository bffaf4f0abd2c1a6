//! TLS end to end: a tonic server on `tessera_net::server::incoming`, reached through
//! `tessera_net::client` and, in plain text, through `tessera_net::tunnel`, with real
//! certificates made by the `openssl` command for each run (two CAs, servers for `localhost`/`127.0.0.1` and for another name, client certificates).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_net::client::{self, ClientAuth, ClientError, Token};
use tessera_net::server::{self, Peer, TlsError, TlsFiles, TlsReloader};
use tessera_net::tunnel::{self, DialError, TlsDialer};
use tessera_proto::reapi::capabilities_client::CapabilitiesClient;
use tessera_proto::reapi::capabilities_server::{Capabilities, CapabilitiesServer};
use tessera_proto::reapi::{GetCapabilitiesRequest, ServerCapabilities};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Whether tests must not skip for a missing tool.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A throw-away PKI made with `openssl`.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// `None` (test skipped) only when `openssl` is missing outside CI.
    fn create() -> Option<Pki> {
        if Command::new("openssl").arg("version").output().is_err() {
            assert!(!in_ci(), "openssl is required in CI");
            eprintln!("skipping: openssl is not installed");
            return None;
        }
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        pki.ca("ca");
        pki.ca("ca2");
        let server = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n";
        pki.leaf("server", "ca", "localhost", server);
        pki.leaf("server2", "ca2", "localhost", server);
        pki.leaf(
            "elsewhere",
            "ca",
            "elsewhere",
            "subjectAltName=DNS:elsewhere.example\nextendedKeyUsage=serverAuth\n",
        );
        let client = "extendedKeyUsage=clientAuth\n";
        pki.leaf("client", "ca", "agent-1", client);
        pki.leaf("client2", "ca2", "agent-2", client);
        Some(pki)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=Test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    fn leaf(&self, name: &str, ca: &str, cn: &str, extensions: &str) {
        std::fs::write(self.path(&format!("{name}.ext")), extensions).unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// Server files for `name`, with the client CA `client_ca` (mutual TLS) if given.
    fn server_files(&self, name: &str, client_ca: Option<&str>) -> TlsFiles {
        TlsFiles {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}.key")),
            client_ca: client_ca.map(|ca| self.path(&format!("{ca}.pem"))),
        }
    }

    /// Client settings trusting `ca`, presenting `identity`'s certificate if given.
    fn client(&self, ca: &str, identity: Option<&str>) -> ClientAuth {
        ClientAuth {
            tls_ca: Some(self.path(&format!("{ca}.pem"))),
            client_cert: identity.map(|n| self.path(&format!("{n}.pem"))),
            client_key: identity.map(|n| self.path(&format!("{n}.key"))),
            token: None,
        }
    }
}

/// What the handler saw of one call.
#[derive(Debug, Clone)]
struct Seen {
    peer: Option<Peer>,
    authorization: Option<String>,
}

#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<Mutex<Vec<Seen>>>,
}

#[tonic::async_trait]
impl Capabilities for Recorder {
    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        let seen = Seen {
            peer: request.extensions().get::<Peer>().cloned(),
            authorization: request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        self.calls.lock().unwrap().push(seen);
        Ok(Response::new(ServerCapabilities::default()))
    }
}

/// A server on a free loopback port; stops when dropped.
struct TestServer {
    addr: SocketAddr,
    recorder: Recorder,
    stop: CancellationToken,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TestServer {
    async fn start(tls: Option<TlsReloader>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorder = Recorder::default();
        let stop = CancellationToken::new();
        let router = tonic::transport::Server::builder()
            .add_service(CapabilitiesServer::new(recorder.clone()));
        tokio::spawn(router.serve_with_incoming_shutdown(
            server::incoming(listener, tls),
            stop.clone().cancelled_owned(),
        ));
        TestServer {
            addr,
            recorder,
            stop,
        }
    }

    fn url(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://{host}:{}", self.addr.port())
    }

    fn last_call(&self) -> Seen {
        self.recorder.calls.lock().unwrap().last().cloned().unwrap()
    }
}

async fn connect(url: &str, auth: &ClientAuth) -> Result<Channel, String> {
    let endpoint = client::endpoint(url, auth).map_err(|e| e.to_string())?;
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

async fn call_on(channel: Channel, auth: &ClientAuth) -> Result<(), String> {
    CapabilitiesClient::new(client::link(channel, auth))
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .map(drop)
        .map_err(|status| format!("{status:?}"))
}

/// One call on a new connection.
async fn call(url: &str, auth: &ClientAuth) -> Result<(), String> {
    call_on(connect(url, auth).await?, auth).await
}

#[tokio::test]
async fn https_reaches_the_handler_with_peer_and_token() {
    let Some(pki) = Pki::create() else { return };
    let tls = TlsReloader::load(pki.server_files("server", None)).unwrap();
    assert!(!tls.mutual());
    let server = TestServer::start(Some(tls)).await;
    let mut auth = pki.client("ca", None);
    auth.token = Some(Token::new("tok-123".into()).unwrap());

    for host in ["localhost", "127.0.0.1"] {
        call(&server.url("https", host), &auth).await.unwrap();
        let seen = server.last_call();
        let peer = seen.peer.expect("Peer in the request's extensions");
        assert!(peer.tls && !peer.client_cert, "{peer:?}");
        assert!(peer.addr.unwrap().ip().is_loopback());
        assert_eq!(seen.authorization.as_deref(), Some("Bearer tok-123"));
    }
}

#[tokio::test]
async fn plain_tcp_still_works_without_tls() {
    let server = TestServer::start(None).await;
    let auth = ClientAuth::default();
    call(&server.url("http", "127.0.0.1"), &auth).await.unwrap();
    let seen = server.last_call();
    let peer = seen.peer.unwrap();
    assert!(!peer.tls && !peer.client_cert);
    assert_eq!(peer.addr.unwrap().ip().to_string(), "127.0.0.1");
    assert_eq!(seen.authorization, None, "no token, no header");
}

#[tokio::test]
async fn a_server_signed_by_another_ca_is_refused() {
    let Some(pki) = Pki::create() else { return };
    let server = TestServer::start(Some(
        TlsReloader::load(pki.server_files("server", None)).unwrap(),
    ))
    .await;
    let err = call(&server.url("https", "localhost"), &pki.client("ca2", None))
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(server.recorder.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_server_certificate_for_another_name_is_refused() {
    let Some(pki) = Pki::create() else { return };
    let server = TestServer::start(Some(
        TlsReloader::load(pki.server_files("elsewhere", None)).unwrap(),
    ))
    .await;
    let err = call(&server.url("https", "localhost"), &pki.client("ca", None))
        .await
        .unwrap_err();
    assert!(err.contains("NotValidForName"), "{err}");
    assert!(server.recorder.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_client_ca() {
    let Some(pki) = Pki::create() else { return };
    let tls = TlsReloader::load(pki.server_files("server", Some("ca"))).unwrap();
    assert!(tls.mutual());
    let server = TestServer::start(Some(tls)).await;
    let url = server.url("https", "localhost");

    call(&url, &pki.client("ca", None))
        .await
        .expect_err("no client certificate");
    call(&url, &pki.client("ca", Some("client2")))
        .await
        .expect_err("a client certificate from another CA");
    assert!(server.recorder.calls.lock().unwrap().is_empty());

    call(&url, &pki.client("ca", Some("client"))).await.unwrap();
    let peer = server.last_call().peer.unwrap();
    assert!(peer.tls && peer.client_cert, "{peer:?}");
}

#[tokio::test]
async fn reload_swaps_the_certificate_for_new_connections_only() {
    let Some(pki) = Pki::create() else { return };
    let files = TlsFiles {
        cert: pki.path("live.pem"),
        key: pki.path("live.key"),
        client_ca: None,
    };
    std::fs::copy(pki.path("server.pem"), &files.cert).unwrap();
    std::fs::copy(pki.path("server.key"), &files.key).unwrap();
    let tls = TlsReloader::load(files.clone()).unwrap();
    let server = TestServer::start(Some(tls.clone())).await;
    let url = server.url("https", "localhost");
    let old_ca = pki.client("ca", None);
    let new_ca = pki.client("ca2", None);

    let open = connect(&url, &old_ca).await.unwrap();
    call_on(open.clone(), &old_ca).await.unwrap();

    // A broken file is refused and the settings in use stay.
    std::fs::write(&files.key, "garbage\n").unwrap();
    let err = tls.reload().unwrap_err();
    assert!(matches!(err, TlsError::Empty { .. }), "{err}");
    call(&url, &old_ca).await.unwrap();

    std::fs::copy(pki.path("server2.pem"), &files.cert).unwrap();
    std::fs::copy(pki.path("server2.key"), &files.key).unwrap();
    tls.reload().unwrap();

    call(&url, &new_ca).await.unwrap();
    call(&url, &old_ca)
        .await
        .expect_err("new connections get the new certificate");
    call_on(open, &old_ca)
        .await
        .expect("the open connection keeps going");
}

#[tokio::test]
async fn a_silent_client_does_not_hold_up_others() {
    let Some(pki) = Pki::create() else { return };
    let server = TestServer::start(Some(
        TlsReloader::load(pki.server_files("server", None)).unwrap(),
    ))
    .await;
    // Connects and never starts the handshake; and one that sends garbage.
    let _silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut garbage = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut garbage, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    call(&server.url("https", "localhost"), &pki.client("ca", None))
        .await
        .unwrap();
    assert!(
        started.elapsed() < server::HANDSHAKE_TIMEOUT / 2,
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn load_errors_name_the_file_and_the_problem() {
    let Some(pki) = Pki::create() else { return };
    let message = |files: TlsFiles| TlsReloader::load(files).unwrap_err().to_string();

    let mut files = pki.server_files("server", None);
    files.cert = pki.path("missing.pem");
    let err = message(files);
    assert!(
        err.contains("missing.pem") && err.contains("--tls-cert"),
        "{err}"
    );

    let mut files = pki.server_files("server", None);
    files.cert = pki.path("server.ext");
    let err = message(files);
    assert!(
        err.contains("server.ext") && err.contains("no certificate"),
        "{err}"
    );

    let mut files = pki.server_files("server", None);
    files.key = pki.path("server.pem");
    let err = message(files);
    assert!(
        err.contains("no private key") && err.contains("--tls-key"),
        "{err}"
    );

    let mut files = pki.server_files("server", None);
    files.key = pki.path("server2.key");
    let err = message(files);
    assert!(err.contains("does not match"), "{err}");

    let mut files = pki.server_files("server", None);
    files.client_ca = Some(pki.path("nope.pem"));
    let err = message(files);
    assert!(
        err.contains("nope.pem") && err.contains("--tls-client-ca"),
        "{err}"
    );
}

#[test]
fn client_files_are_checked_before_connecting() {
    let Some(pki) = Pki::create() else { return };
    let mut auth = pki.client("ca", Some("client"));
    auth.client_key = None;
    let err = client::endpoint("https://localhost:1", &auth).unwrap_err();
    assert!(err.to_string().contains("--tls-client-key"), "{err}");

    let mut auth = pki.client("ca", Some("client"));
    auth.client_key = Some(pki.path("client.pem"));
    let err = client::endpoint("https://localhost:1", &auth).unwrap_err();
    assert!(err.to_string().contains("no private key"), "{err}");
}

/// A tunnel on a free loopback port forwarding to `url` with `auth`; stops with `stop`.
async fn start_tunnel(url: &str, auth: &ClientAuth, stop: &CancellationToken) -> String {
    let dialer = TlsDialer::new(url, auth).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tunnel::forward(
        listener,
        dialer,
        stop.clone().cancelled_owned(),
    ));
    format!("http://{addr}")
}

#[tokio::test]
async fn a_plain_client_reaches_a_tls_server_through_the_tunnel() {
    let Some(pki) = Pki::create() else { return };
    let server = TestServer::start(Some(
        TlsReloader::load(pki.server_files("server", None)).unwrap(),
    ))
    .await;
    let stop = CancellationToken::new();
    let tunnel = start_tunnel(
        &server.url("https", "localhost"),
        &pki.client("ca", None),
        &stop,
    )
    .await;
    let plain = ClientAuth {
        token: Some(Token::new("tok-through".into()).unwrap()),
        ..ClientAuth::default()
    };
    // Two calls on one connection, then one on another: each connection gets its own TLS.
    let channel = connect(&tunnel, &plain).await.unwrap();
    call_on(channel.clone(), &plain).await.unwrap();
    call_on(channel, &plain).await.unwrap();
    call(&tunnel, &plain).await.unwrap();

    let seen = server.last_call();
    let peer = seen.peer.unwrap();
    assert!(peer.tls && !peer.client_cert, "{peer:?}");
    assert_eq!(
        seen.authorization.as_deref(),
        Some("Bearer tok-through"),
        "the client's own header goes through"
    );
    assert_eq!(server.recorder.calls.lock().unwrap().len(), 3);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), async {
        while tokio::net::TcpStream::connect(tunnel.trim_start_matches("http://"))
            .await
            .is_ok()
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the tunnel stops listening when shut down");
}

#[tokio::test]
async fn the_tunnel_presents_the_client_certificate_for_mutual_tls() {
    let Some(pki) = Pki::create() else { return };
    let server = TestServer::start(Some(
        TlsReloader::load(pki.server_files("server", Some("ca"))).unwrap(),
    ))
    .await;
    let url = server.url("https", "localhost");
    let stop = CancellationToken::new();

    let without = start_tunnel(&url, &pki.client("ca", None), &stop).await;
    call(&without, &ClientAuth::default())
        .await
        .expect_err("no client certificate");
    assert!(server.recorder.calls.lock().unwrap().is_empty());

    let with = start_tunnel(&url, &pki.client("ca", Some("client")), &stop).await;
    call(&with, &ClientAuth::default()).await.unwrap();
    let peer = server.last_call().peer.unwrap();
    assert!(peer.tls && peer.client_cert, "{peer:?}");
}

#[tokio::test]
async fn a_failed_handshake_closes_that_connection_only_and_names_the_cause() {
    let Some(pki) = Pki::create() else { return };
    let files = TlsFiles {
        cert: pki.path("tunnel-live.pem"),
        key: pki.path("tunnel-live.key"),
        client_ca: None,
    };
    // First a certificate from another CA, then one for another name.
    std::fs::copy(pki.path("server2.pem"), &files.cert).unwrap();
    std::fs::copy(pki.path("server2.key"), &files.key).unwrap();
    let tls = TlsReloader::load(files.clone()).unwrap();
    let server = TestServer::start(Some(tls.clone())).await;
    let url = server.url("https", "localhost");
    let dialer = TlsDialer::new(&url, &pki.client("ca", None)).unwrap();
    let stop = CancellationToken::new();
    let tunnel = start_tunnel(&url, &pki.client("ca", None), &stop).await;

    let err = dialer.connect_tls().await.map(drop).unwrap_err();
    assert!(
        matches!(err, DialError::Handshake { .. })
            && err.to_string().contains("UnknownIssuer")
            && err
                .to_string()
                .contains("not signed by the CA given with --tls-ca"),
        "{err}"
    );
    call(&tunnel, &ClientAuth::default())
        .await
        .expect_err("another CA");

    std::fs::copy(pki.path("elsewhere.pem"), &files.cert).unwrap();
    std::fs::copy(pki.path("elsewhere.key"), &files.key).unwrap();
    tls.reload().unwrap();
    let err = dialer.connect_tls().await.map(drop).unwrap_err();
    assert!(
        err.to_string()
            .contains("certificate does not name \"localhost\""),
        "{err}"
    );
    call(&tunnel, &ClientAuth::default())
        .await
        .expect_err("another name");
    assert!(server.recorder.calls.lock().unwrap().is_empty());

    // The same tunnel serves the next connection once the certificate is right.
    std::fs::copy(pki.path("server.pem"), &files.cert).unwrap();
    std::fs::copy(pki.path("server.key"), &files.key).unwrap();
    tls.reload().unwrap();
    call(&tunnel, &ClientAuth::default()).await.unwrap();

    drop(server);
    let err = dialer.connect_tls().await.map(drop).unwrap_err();
    assert!(matches!(err, DialError::Connect { .. }), "{err}");
}

#[test]
fn tunnel_settings_are_checked_before_listening() {
    let Some(pki) = Pki::create() else { return };
    let err = TlsDialer::new("http://localhost:1", &pki.client("ca", None)).unwrap_err();
    assert!(matches!(err, ClientError::NotHttps { .. }), "{err}");
    let err = TlsDialer::new("https://localhost:1", &ClientAuth::default()).unwrap_err();
    assert!(err.to_string().contains("--tls-ca"), "{err}");

    let mut auth = pki.client("ca", Some("client"));
    auth.client_key = Some(pki.path("client2.key"));
    let err = TlsDialer::new("https://localhost:1", &auth).unwrap_err();
    assert!(
        matches!(err, ClientError::Identity { .. }) && err.to_string().contains("client2.key"),
        "{err}"
    );
    auth.client_key = None;
    let err = TlsDialer::new("https://localhost:1", &auth).unwrap_err();
    assert!(err.to_string().contains("--tls-client-key"), "{err}");
}

/// One HTTP/1.1 GET over `stream`: the status line and the body.
async fn http_get<S>(mut stream: S, path: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn the_http_port_serves_tls_with_the_grpc_certificate() {
    use tessera_net::http::{HttpHandlers, serve_http};
    let Some(pki) = Pki::create() else { return };
    let tls = TlsReloader::load(pki.server_files("server", None)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let handlers = HttpHandlers {
        metrics: Arc::new(|| "# EOF\n".to_owned()),
        ready: Arc::new(|| Ok(())),
        metrics_access: None,
        extra: None,
    };
    tokio::spawn(serve_http(
        listener,
        Some(tls),
        handlers,
        stop.clone().cancelled_owned(),
    ));

    // Prometheus and curl offer both protocols; a client that only speaks HTTP/1.1 too.
    let url = format!("https://localhost:{}", addr.port());
    let mut config = tunnel::client_config(&url, &pki.client("ca", None)).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let response = http_get(stream, "/healthz").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // Plain HTTP on the TLS port gets no answer.
    let plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(15), http_get(plain, "/healthz"))
        .await
        .unwrap_or_default();
    assert!(!response.contains("200"), "{response}");
    stop.cancel();
}

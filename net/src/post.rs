//! One HTTP/1.1 POST to a URL (`http://` or `https://`, verified against the system's trust
//! roots), for outgoing notifications. No redirects, no connection reuse: a webhook gets a few
//! requests a minute at most, each on its own connection, each bounded by a timeout.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls_pki_types::ServerName;
use thiserror::Error;
use tokio::net::TcpStream;
use tonic::codegen::http::{Request, Uri};

/// Why a POST got no answer.
#[derive(Debug, Error)]
pub enum PostError {
    /// The URL is not one this client can reach.
    #[error("bad URL: {0}")]
    Url(String),
    /// Connecting, the TLS handshake, or the exchange failed.
    #[error("{0}")]
    Io(String),
    /// No answer within the time limit.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// POSTs `body` to `url` with `headers` and returns the status code (read, with at most 64 KiB
/// of the answer's body, so the connection ends cleanly). Errors never include the URL's path
/// or query, which may hold a credential.
pub async fn post(
    url: &str,
    headers: &[(&str, String)],
    body: Bytes,
    limit: Duration,
) -> Result<u16, PostError> {
    match tokio::time::timeout(limit, exchange(url, headers, body)).await {
        Ok(result) => result,
        Err(_) => Err(PostError::Timeout(limit)),
    }
}

async fn exchange(url: &str, headers: &[(&str, String)], body: Bytes) -> Result<u16, PostError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| PostError::Url("does not parse".to_owned()))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(PostError::Url("not http:// or https://".to_owned())),
    };
    let host = uri
        .host()
        .ok_or_else(|| PostError::Url("no host".to_owned()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().rsplit('@').next().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| PostError::Io(format!("connect to {host}:{port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let mut request = Request::post(path)
        .header("host", authority)
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .header("user-agent", concat!("tessera/", env!("CARGO_PKG_VERSION")));
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| PostError::Url(format!("bad request: {e}")))?;
    if https {
        let name = ServerName::try_from(host.clone())
            .map_err(|e| PostError::Url(format!("bad host name: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(client_config())
            .connect(name, tcp)
            .await
            .map_err(|e| PostError::Io(format!("TLS with {host}: {e}")))?;
        send(hyper_util::rt::TokioIo::new(tls), request).await
    } else {
        send(hyper_util::rt::TokioIo::new(tcp), request).await
    }
}

async fn send<T>(io: T, request: Request<Full<Bytes>>) -> Result<u16, PostError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| PostError::Io(format!("HTTP handshake: {e}")))?;
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| PostError::Io(format!("HTTP exchange: {e}")))?;
    let status = response.status().as_u16();
    // Read (a bounded part of) the answer so the exchange completes.
    let mut body = response.into_body();
    let mut read = 0usize;
    while read < 64 * 1024 {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
    }
    drop(sender);
    driver.abort();
    Ok(status)
}

/// The TLS client settings: the system's trust roots (read once).
fn client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            #[expect(
                deprecated,
                reason = "ring is the provider we build with (no aws-lc), as for the server and tonic"
            )]
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            Arc::new(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

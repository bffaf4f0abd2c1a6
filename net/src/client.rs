//! The client side of a connection to the coordinator: the [`Endpoint`] (TLS for `https://`
//! URLs, with the CA that signed the coordinator's certificate as the only trust root and an
//! optional client certificate for mutual TLS) and the [`Link`] (a channel that adds
//! `authorization: Bearer TOKEN` to every call).
//!
//! It does not choose timeouts, retries or window sizes: callers chain their own onto the
//! endpoint. It does not know where the settings come from (flags, variables, config files):
//! callers fill a [`ClientAuth`].

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How a client proves who it is and checks whom it talks to.
#[derive(Default, Clone, Debug)]
pub struct ClientAuth {
    /// CA certificate(s) (PEM) that signed the coordinator's certificate; required for
    /// `https://` URLs, ignored for `http://`.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate chain (PEM), for coordinators that require mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Bearer token sent with every call.
    pub token: Option<Token>,
}

/// A bearer token: the secret a caller presents in `authorization: Bearer TOKEN`.
///
/// `Debug` and `Display` never show it; only [`Token::secret`] does.
#[derive(Clone)]
pub struct Token {
    secret: String,
    /// `Bearer SECRET`, checked once, marked sensitive (never indexed by HPACK).
    header: MetadataValue<Ascii>,
}

impl Token {
    /// A token from its text: refuses an empty one or one with characters other than visible
    /// ASCII (they could not travel in a header, and are most likely a copy-paste mistake).
    pub fn new(secret: String) -> Result<Self, ClientError> {
        if secret.is_empty() {
            return Err(ClientError::Token {
                reason: "it is empty",
            });
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::Token {
                reason: "it has characters other than visible ASCII (spaces, control \
                         characters or non-ASCII)",
            });
        }
        let mut header: MetadataValue<Ascii> =
            format!("Bearer {secret}")
                .parse()
                .map_err(|_| ClientError::Token {
                    reason: "it cannot be sent as a gRPC header",
                })?;
        header.set_sensitive(true);
        Ok(Token { secret, header })
    }

    /// Reads a token from a file (surrounding whitespace, such as a final newline, is
    /// trimmed); errors name the file.
    pub fn read_file(path: &Path) -> Result<Self, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClientError::Read {
            what: "token file",
            path: path.to_owned(),
            source,
        })?;
        Token::new(text.trim().to_owned()).map_err(|error| match error {
            ClientError::Token { reason } => ClientError::TokenFile {
                path: path.to_owned(),
                reason,
            },
            other => other,
        })
    }

    /// The secret itself, for the rare caller that must send or store it.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Self) -> bool {
        self.secret == other.secret
    }
}

impl Eq for Token {}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A channel to the coordinator that carries the caller's token and trace context on every
/// call.
pub type Link = InterceptedService<Channel, CallHeaders>;

/// The interceptor of a [`Link`]: adds `authorization: Bearer TOKEN` when a token is set, and
/// the calling span's trace context when it is exported ([`crate::trace::inject`]).
#[derive(Clone, Default)]
pub struct CallHeaders {
    header: Option<MetadataValue<Ascii>>,
}

impl CallHeaders {
    /// An interceptor sending `token` (none: calls go out without `authorization`).
    pub fn new(token: Option<&Token>) -> Self {
        CallHeaders {
            header: token.map(|t| t.header.clone()),
        }
    }
}

impl std::fmt::Debug for CallHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallHeaders")
            .field("token", &self.header.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Interceptor for CallHeaders {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        crate::trace::inject(request.metadata_mut());
        Ok(request)
    }
}

/// Why a client could not be set up.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The URL does not parse or has the wrong scheme.
    #[error(
        "invalid coordinator URL \"{url}\": {reason} (expected http://HOST:PORT, or \
         https://HOST:PORT for TLS)"
    )]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// An `http://` URL where only TLS makes sense (the tunnel).
    #[error(
        "{url} is not an https:// URL: the tunnel is for coordinators that require TLS (an \
         http:// coordinator needs no tunnel: point the client at it directly)"
    )]
    NotHttps {
        /// The URL.
        url: String,
    },
    /// An `https://` URL without a CA to verify the server with.
    #[error(
        "{url}: https:// needs --tls-ca FILE (or TESSERA_TLS_CA): the CA certificate (PEM) \
         that signed the coordinator's certificate"
    )]
    NeedsCa {
        /// The URL.
        url: String,
    },
    /// Only one of the client certificate and its key was given.
    #[error(
        "a client certificate needs both its certificate and its key (--tls-client-cert and \
         --tls-client-key); only the {given} was given"
    )]
    HalfIdentity {
        /// Which of the two was given ("certificate" or "key").
        given: &'static str,
    },
    /// A file could not be read.
    #[error("failed to read the {what} {path}: {source}")]
    Read {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: {problem} (expected a PEM {expected})")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// What the file should hold.
        expected: &'static str,
    },
    /// A token given directly is unusable.
    #[error("the token is unusable: {reason}")]
    Token {
        /// What is wrong.
        reason: &'static str,
    },
    /// A token file holds an unusable token.
    #[error("the token in {path} is unusable: {reason} (the file should hold the token alone)")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// tonic refused the TLS settings.
    #[error("failed to set up TLS for {url}: {source}")]
    Tls {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// rustls refused the TLS settings (outside tonic: the tunnel's own connections).
    #[error("failed to set up TLS for {url}: {source}")]
    Rustls {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the client certificate or its key (often: the key of another
    /// certificate).
    #[error(
        "the client certificate {cert} or its key {key} is unusable: {source} (give the key \
         the certificate was issued for)"
    )]
    Identity {
        /// The certificate chain.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
}

/// The endpoint for `url` (`http://HOST:PORT` or `https://HOST:PORT`): for `https://`, TLS
/// that trusts only `auth.tls_ca`, verifies that the server's certificate names the URL's
/// host, and presents `auth.client_cert` when set. Files are read (and checked) here, so a
/// bad file is reported before any connection attempt.
pub fn endpoint(url: &str, auth: &ClientAuth) -> Result<Endpoint, ClientError> {
    let bad = |reason: String| ClientError::Url {
        url: url.to_owned(),
        reason,
    };
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| bad(e.to_string()))?;
    let uri = endpoint.uri().clone();
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("it has no host".to_owned()))?;
    match uri.scheme_str() {
        Some("http") => return Ok(endpoint),
        Some("https") => {}
        Some(other) => return Err(bad(format!("unsupported scheme \"{other}\""))),
        None => return Err(bad("it has no scheme".to_owned())),
    }
    let ca_path = auth.tls_ca.as_deref().ok_or_else(|| ClientError::NeedsCa {
        url: url.to_owned(),
    })?;
    let ca = read_pem_certificates(ca_path, "CA certificate")?;
    // An IPv6 host comes bracketed; the certificate names the bare address.
    let domain = host.trim_start_matches('[').trim_end_matches(']');
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(domain);
    match (&auth.client_cert, &auth.client_key) {
        (Some(cert), Some(key)) => {
            let cert = read_pem_certificates(cert, "client certificate")?;
            let key = read_pem_key(key)?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        (Some(_), None) => {
            return Err(ClientError::HalfIdentity {
                given: "certificate",
            });
        }
        (None, Some(_)) => return Err(ClientError::HalfIdentity { given: "key" }),
        (None, None) => {}
    }
    endpoint.tls_config(tls).map_err(|source| ClientError::Tls {
        url: url.to_owned(),
        source,
    })
}

/// A link over `channel` that sends `auth.token` with every call.
pub fn link(channel: Channel, auth: &ClientAuth) -> Link {
    InterceptedService::new(channel, CallHeaders::new(auth.token.as_ref()))
}

/// The file's bytes; an error names the file and what it should hold.
pub(crate) fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The file's bytes, once checked to hold at least one PEM certificate.
fn read_pem_certificates(path: &Path, what: &'static str) -> Result<Vec<u8>, ClientError> {
    let pem = read_file(path, what)?;
    parse_certificates(path, &pem)?;
    Ok(pem)
}

/// The certificates in `pem` (read from `path`, named in errors): at least one.
pub(crate) fn parse_certificates(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Pem {
            path: path.to_owned(),
            problem: format!("malformed PEM: {e}"),
            expected: "CERTIFICATE",
        })?;
    if certs.is_empty() {
        return Err(ClientError::Pem {
            path: path.to_owned(),
            problem: "no certificate in it".to_owned(),
            expected: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// The file's bytes, once checked to hold a PEM private key.
fn read_pem_key(path: &Path) -> Result<Vec<u8>, ClientError> {
    let pem = read_file(path, "client key")?;
    parse_key(path, &pem)?;
    Ok(pem)
}

/// The private key in `pem` (read from `path`, named in errors).
pub(crate) fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, ClientError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| ClientError::Pem {
        path: path.to_owned(),
        problem: match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no private key in it".to_owned(),
            other => format!("malformed PEM: {other}"),
        },
        expected: "PRIVATE KEY",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_refuse_what_cannot_be_a_header() {
        assert!(matches!(
            Token::new(String::new()),
            Err(ClientError::Token { .. })
        ));
        assert!(Token::new("has space".into()).is_err());
        assert!(Token::new("tab\there".into()).is_err());
        assert!(Token::new("café".into()).is_err());
        let token = Token::new("tsr_abc.DEF-123".into()).unwrap();
        assert_eq!(token.secret(), "tsr_abc.DEF-123");
    }

    #[test]
    fn tokens_never_print() {
        let token = Token::new("s3cret".into()).unwrap();
        let shown = format!(
            "{token} {token:?} {:?} {:?}",
            CallHeaders::new(Some(&token)),
            ClientAuth {
                token: Some(token.clone()),
                ..ClientAuth::default()
            }
        );
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn token_files_are_trimmed_and_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "  tok-1\n").unwrap();
        assert_eq!(Token::read_file(&good).unwrap().secret(), "tok-1");

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = Token::read_file(&empty).unwrap_err().to_string();
        assert!(
            err.contains("empty") && err.contains(&*empty.to_string_lossy()),
            "{err}"
        );

        let missing = dir.path().join("missing");
        let err = Token::read_file(&missing).unwrap_err().to_string();
        assert!(
            err.contains("token file") && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn bearer_adds_the_header_only_with_a_token() {
        let token = Token::new("abc".into()).unwrap();
        let request = CallHeaders::new(Some(&token))
            .call(tonic::Request::new(()))
            .unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer abc"
        );
        let request = CallHeaders::new(None)
            .call(tonic::Request::new(()))
            .unwrap();
        assert!(request.metadata().get("authorization").is_none());
    }

    #[test]
    fn endpoints_check_scheme_and_ca() {
        let none = ClientAuth::default();
        endpoint("http://127.0.0.1:8980", &none).unwrap();
        let with_ca = ClientAuth {
            tls_ca: Some("/nonexistent/ca.pem".into()),
            ..ClientAuth::default()
        };
        endpoint("http://127.0.0.1:8980", &with_ca).expect("http ignores the CA");

        let err = endpoint("https://coordinator:8980", &none).unwrap_err();
        assert!(
            err.to_string()
                .contains("https:// needs --tls-ca FILE (or TESSERA_TLS_CA)"),
            "{err}"
        );
        let err = endpoint("https://coordinator:8980", &with_ca).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");

        let err = endpoint("ftp://coordinator:8980", &none).unwrap_err();
        assert!(err.to_string().contains("unsupported scheme"), "{err}");
        let err = endpoint("coordinator:8980", &none).unwrap_err();
        assert!(matches!(err, ClientError::Url { .. }), "{err}");
    }

    #[test]
    fn pem_files_must_hold_what_they_claim() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let auth = ClientAuth {
            tls_ca: Some(junk.clone()),
            ..ClientAuth::default()
        };
        let err = endpoint("https://localhost:1", &auth)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no certificate") && err.contains("junk.pem"),
            "{err}"
        );

        let err = read_pem_key(&junk).unwrap_err().to_string();
        assert!(err.contains("no private key"), "{err}");
    }
}

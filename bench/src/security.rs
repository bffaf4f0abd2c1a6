//! `--security`: the `cas` and `sched` rows measured against a plain coordinator, one with TLS
//! and tokens, or both, the second case ending with what TLS and token checks cost.
//!
//! A secure coordinator gets certificates made at bench start by the `openssl` command (a CA
//! and a server certificate for `IP:127.0.0.1` and `DNS:localhost`) and `auth = tokens`; the
//! bench reads the admin token the first start writes, and through the Admin service creates
//! the tokens it runs with: `developer` for clients, `agent` for agents. Per-token limits are
//! raised so that they never throttle the benchmark (that would measure a policy, not a cost)
//! while every call still goes through them.
//!
//! With `both`, [`crate::compare`] pairs each plain row with the secure row in the same place;
//! the rows the issue names (FindMissingBlobs and scheduler capacity) must keep at least
//! [`MIN_SHARE`] of the plain figure.

use std::path::{Path, PathBuf};
use std::process::Command;

use tessera_coordinator::config::Limits;
use tessera_net::client::{ClientAuth, Link, Token};
use tessera_proto::tessera::v1::admin_client::AdminClient;
use tessera_proto::tessera::v1::{CreateTokenRequest, Role};

use crate::error::BenchError;
use crate::link::{self, Traffic};

/// Least share of the plain figure a targeted row must keep with TLS and tokens.
pub(crate) const MIN_SHARE: f64 = 0.9;

/// Per-token limits high enough never to throttle a benchmark: the checks run, the buckets
/// never run dry.
pub(crate) const UNTHROTTLED: Limits = Limits {
    execute_rate: 10_000_000,
    execute_burst: 10_000_000,
    execute_inflight: 1_000_000,
    submit_rate: 10_000_000,
    submit_burst: 10_000_000,
    jobs_inflight: 1_000_000,
    upload_bytes_rate: 1 << 50,
    upload_bytes_burst: 1 << 50,
};

/// [`UNTHROTTLED`] as the `tessera coordinator` process reads it from its environment.
pub(crate) fn unthrottled_env() -> [(&'static str, String); 8] {
    let l = UNTHROTTLED;
    [
        ("TESSERA_LIMIT_EXECUTE_RATE", l.execute_rate.to_string()),
        ("TESSERA_LIMIT_EXECUTE_BURST", l.execute_burst.to_string()),
        (
            "TESSERA_LIMIT_EXECUTE_INFLIGHT",
            l.execute_inflight.to_string(),
        ),
        ("TESSERA_LIMIT_SUBMIT_RATE", l.submit_rate.to_string()),
        ("TESSERA_LIMIT_SUBMIT_BURST", l.submit_burst.to_string()),
        ("TESSERA_LIMIT_JOBS_INFLIGHT", l.jobs_inflight.to_string()),
        (
            "TESSERA_LIMIT_UPLOAD_BYTES_RATE",
            l.upload_bytes_rate.to_string(),
        ),
        (
            "TESSERA_LIMIT_UPLOAD_BYTES_BURST",
            l.upload_bytes_burst.to_string(),
        ),
    ]
}

/// How the coordinator under test is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Security {
    /// Plain HTTP/2 on loopback, no tokens (the default, and what the other rows measure).
    Plain,
    /// TLS on the gRPC port and `auth = tokens`.
    TlsTokens,
}

impl Security {
    /// How the report names it.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Security::Plain => "plain",
            Security::TlsTokens => "TLS + tokens",
        }
    }
}

/// `--security`: which coordinators to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum SecurityArg {
    /// Plain HTTP/2, no tokens.
    #[default]
    Plain,
    /// TLS (certificates made with `openssl`) and tokens.
    TlsTokens,
    /// Both, one after the other, then the cost of TLS and tokens per row.
    Both,
}

impl SecurityArg {
    /// The coordinators to measure, in order.
    pub(crate) fn modes(self) -> &'static [Security] {
        match self {
            SecurityArg::Plain => &[Security::Plain],
            SecurityArg::TlsTokens => &[Security::TlsTokens],
            SecurityArg::Both => &[Security::Plain, Security::TlsTokens],
        }
    }

    /// The flag as typed, for the report's command line (empty for the default).
    pub(crate) fn flag(self) -> &'static str {
        match self {
            SecurityArg::Plain => "",
            SecurityArg::TlsTokens => " --security tls-tokens",
            SecurityArg::Both => " --security both",
        }
    }
}

/// A CA and a server certificate it signed, as PEM files.
#[derive(Debug, Clone)]
pub(crate) struct Certificates {
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// The server's certificate (for `IP:127.0.0.1` and `DNS:localhost`).
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

impl Certificates {
    /// Makes a fresh CA and server certificate in `dir` with the `openssl` command (P-256
    /// keys, valid for two days).
    pub(crate) fn generate(dir: &Path) -> Result<Self, BenchError> {
        std::fs::create_dir_all(dir).map_err(|source| BenchError::Io {
            what: "create the certificate directory",
            source,
        })?;
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let (ca_key, ca) = (path("ca.key"), path("ca.pem"));
        let (key, csr, cert) = (path("server.key"), path("server.csr"), path("server.pem"));
        let ext = path("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName = IP:127.0.0.1, DNS:localhost\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = serverAuth\n",
        )
        .map_err(|source| BenchError::Io {
            what: "write the certificate extensions",
            source,
        })?;
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        openssl(&[
            &["req", "-x509", "-nodes", "-days", "2"],
            &ec[..],
            &[
                "-keyout",
                &ca_key,
                "-out",
                &ca,
                "-subj",
                "/CN=tessera-bench CA",
            ],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ])?;
        openssl(&[
            &["req", "-nodes"],
            &ec[..],
            &["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"],
        ])?;
        openssl(&[&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &cert,
            "-extfile",
            &ext,
        ]])?;
        Ok(Certificates {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
        })
    }
}

/// Runs `openssl` with the concatenated `args`; an error names the command and its stderr.
fn openssl(args: &[&[&str]]) -> Result<(), BenchError> {
    let args: Vec<&str> = args.concat();
    let output = Command::new("openssl").args(&args).output().map_err(|e| {
        BenchError::Tool(format!(
            "failed to run openssl ({e}); --security tls-tokens makes its certificates \
                 with it: install it (Debian: apt-get install openssl)"
        ))
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(BenchError::Tool(format!(
        "`openssl {}` failed with {}: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

/// What the bench's clients and agents present to a coordinator.
#[derive(Debug, Clone, Default)]
pub(crate) struct Credentials {
    /// Clients (CAS, Execute): a `developer` token.
    pub clients: ClientAuth,
    /// Agents: an `agent` token.
    pub agents: ClientAuth,
}

impl Credentials {
    /// With the admin token in `admin_token_file` (the coordinator's `DATA_DIR/admin-token`),
    /// creates a `developer` and an `agent` token on the coordinator at `url` (trusting `ca`).
    pub(crate) async fn create(
        url: &str,
        ca: &Path,
        admin_token_file: &Path,
    ) -> Result<Self, BenchError> {
        let trusting = |token: Option<Token>| ClientAuth {
            tls_ca: Some(ca.to_owned()),
            token,
            ..ClientAuth::default()
        };
        let admin = trusting(Some(Token::read_file(admin_token_file)?));
        let mut client = AdminClient::new(link::connect(url, &admin, Traffic::Calls).await?);
        let clients = create_token(&mut client, "bench-client", Role::Developer).await?;
        let agents = create_token(&mut client, "bench-agent", Role::Agent).await?;
        Ok(Credentials {
            clients: trusting(Some(clients)),
            agents: trusting(Some(agents)),
        })
    }
}

async fn create_token(
    client: &mut AdminClient<Link>,
    name: &str,
    role: Role,
) -> Result<Token, BenchError> {
    let secret = client
        .create_token(CreateTokenRequest {
            name: name.to_owned(),
            role: role as i32,
            ..Default::default()
        })
        .await
        .map_err(|status| BenchError::Rpc {
            call: "CreateToken",
            status,
        })?
        .into_inner()
        .token;
    Ok(Token::new(secret)?)
}

/// Waits (at most 30 s) for `path` to exist: a child coordinator writes its admin token
/// after it starts listening.
pub(crate) fn wait_for_file(path: &Path) -> Result<(), BenchError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !path.is_file() {
        if std::time::Instant::now() > deadline {
            return Err(BenchError::Tool(format!(
                "the coordinator did not write {} within 30 s (see its log)",
                path.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// The report's note about a run with TLS and tokens.
pub(crate) fn secure_note() -> String {
    "TLS + tokens: the coordinator serves TLS 1.3 (rustls, P-256 certificate made by openssl \
     at start) with auth = tokens; clients present a developer token, agents an agent token, \
     every call authenticated, authorized and counted against per-token limits raised so that \
     they never throttle."
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_name_loopback() {
        if std::env::var_os("CI").is_none()
            && Command::new("openssl").arg("version").output().is_err()
        {
            eprintln!("skipped: no openssl (CI unset)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let certs = Certificates::generate(dir.path()).expect("openssl makes certificates");
        let text = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&certs.cert)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("IP Address:127.0.0.1") && text.contains("DNS:localhost"),
            "{text}"
        );
        let verify = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&certs.ca)
            .arg(&certs.cert)
            .output()
            .unwrap();
        assert!(verify.status.success(), "{verify:?}");
    }
}

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
//! The comparison pairs each plain row with the secure row in the same place and keeps the
//! secure figure as a share of the plain one (for latencies and CPU, the plain cost over the
//! secure cost, so that a share always reads as "throughput kept"). The rows the issue names
//! (FindMissingBlobs and scheduler capacity) must keep at least [`MIN_SHARE`] of it.

use std::path::{Path, PathBuf};
use std::process::Command;

use tessera_coordinator::config::Limits;
use tessera_net::client::{ClientAuth, Link, Token};
use tessera_proto::tessera::v1::admin_client::AdminClient;
use tessera_proto::tessera::v1::{CreateTokenRequest, Role};

use crate::error::BenchError;
use crate::link::{self, Traffic};
use crate::report::{Check, Report, Row};

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

/// One report from the runs of `arg`: the single run's, or for `both` every plain row beside
/// its secure twin, then one comparison row per pair with a figure to compare; `targeted`
/// says which pairs are held to [`MIN_SHARE`]. The rows are tagged with their security in
/// the measurement column.
pub(crate) fn combine(
    arg: SecurityArg,
    mut runs: Vec<(Security, Report)>,
    targeted: impl Fn(&Row) -> bool,
) -> Result<Report, BenchError> {
    // A command line copied from the arguments already has the flag.
    let with_flag = |command: &mut String| {
        if !command.contains("--security") {
            command.push_str(arg.flag());
        }
    };
    if runs.len() == 1 {
        let (security, mut report) = runs.remove(0);
        with_flag(&mut report.environment.command);
        if security == Security::TlsTokens {
            report.notes.push(secure_note());
        }
        return Ok(report);
    }
    let (Some((_, secure)), Some((_, plain))) = (runs.pop(), runs.pop()) else {
        return Err(BenchError::Unexpected(
            "--security both ran fewer than two benchmarks".to_owned(),
        ));
    };
    if plain.rows.len() != secure.rows.len() {
        return Err(BenchError::Unexpected(format!(
            "the plain run has {} rows and the secure run {}",
            plain.rows.len(),
            secure.rows.len()
        )));
    }
    let mut rows = Vec::with_capacity(plain.rows.len() * 3);
    let mut comparisons = Vec::new();
    for (plain_row, secure_row) in plain.rows.iter().zip(&secure.rows) {
        if plain_row.measurement != secure_row.measurement {
            return Err(BenchError::Unexpected(format!(
                "row \"{}\" of the plain run faces \"{}\" in the secure run",
                plain_row.measurement, secure_row.measurement
            )));
        }
        rows.push(tagged(plain_row, Security::Plain));
        rows.push(tagged(secure_row, Security::TlsTokens));
        if let Some(check) = compare(&plain_row.check, &secure_row.check, targeted(plain_row)) {
            comparisons.push(Row {
                measurement: format!("{}: TLS + tokens / plain", plain_row.measurement),
                digest: plain_row.digest.clone(),
                workload: plain_row.workload.clone(),
                check,
            });
        }
    }
    rows.extend(comparisons);
    let mut environment = plain.environment;
    with_flag(&mut environment.command);
    let mut notes = plain.notes;
    notes.push(secure_note());
    notes.push(format!(
        "Comparison rows: the secure figure as a share of the plain one (for latencies and CPU, \
         the plain cost over the secure cost); FindMissingBlobs and scheduler capacity must keep \
         at least {:.0}%. The two runs follow each other on the same machine, so part of any \
         difference is noise: rerun before reading much into a few percent.",
        MIN_SHARE * 100.0
    ));
    Ok(Report {
        environment,
        layout: plain.layout,
        rows,
        notes,
    })
}

fn secure_note() -> String {
    "TLS + tokens: the coordinator serves TLS 1.3 (rustls, P-256 certificate made by openssl \
     at start) with auth = tokens; clients present a developer token, agents an agent token, \
     every call authenticated, authorized and counted against per-token limits raised so that \
     they never throttle."
        .to_owned()
}

fn tagged(row: &Row, security: Security) -> Row {
    Row {
        measurement: format!("{} [{}]", row.measurement, security.label()),
        ..row.clone()
    }
}

/// The comparison of two measurements of the same row, if it has a figure to compare.
fn compare(plain: &Check, secure: &Check, targeted: bool) -> Option<Check> {
    let (plain_figure, unit, lower_is_better) = figure(plain)?;
    let (secure_figure, _, _) = figure(secure)?;
    Some(Check::Secured {
        plain: plain_figure,
        secure: secure_figure,
        unit,
        lower_is_better,
        min_share: targeted.then_some(MIN_SHARE),
    })
}

/// The figure a row is judged by, its unit, and whether lower is better.
fn figure(check: &Check) -> Option<(f64, String, bool)> {
    match *check {
        Check::Throughput { mb_per_s, .. } => Some((mb_per_s, "MB/s".to_owned(), false)),
        Check::Rate { unit, per_s, .. } => Some((per_s, format!("{unit}/s"), false)),
        Check::Latency { p50_ms, .. } => Some((p50_ms, "ms p50".to_owned(), true)),
        Check::CpuPerAction { ms, .. } => Some((ms, "ms CPU/action".to_owned(), true)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Environment, Layout, Verdict};

    fn report(p50_ms: f64, per_s: f64) -> Report {
        Report {
            environment: Environment::here("cmd", None),
            layout: Layout::Execution,
            rows: vec![
                Row {
                    measurement: "FindMissingBlobs".to_owned(),
                    digest: String::new(),
                    workload: "w".to_owned(),
                    check: Check::Latency {
                        calls: 3,
                        p50_ms,
                        p99_ms: p50_ms,
                        max_p50_ms: 20.0,
                    },
                },
                Row {
                    measurement: "ByteStream small writes".to_owned(),
                    digest: String::new(),
                    workload: "w".to_owned(),
                    check: Check::Rate {
                        unit: "writes",
                        per_s,
                        p50_ms: 1.0,
                        p99_ms: 1.0,
                        min_per_s: None,
                        bare_spawn_ms: None,
                    },
                },
            ],
            notes: Vec::new(),
        }
    }

    #[test]
    fn both_pairs_rows_and_judges_only_the_targeted_ones() {
        let runs = vec![
            (Security::Plain, report(2.0, 1000.0)),
            (Security::TlsTokens, report(2.5, 500.0)),
        ];
        let combined = combine(SecurityArg::Both, runs, |row| {
            row.measurement == "FindMissingBlobs"
        })
        .unwrap();
        let names: Vec<&str> = combined
            .rows
            .iter()
            .map(|r| r.measurement.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "FindMissingBlobs [plain]",
                "FindMissingBlobs [TLS + tokens]",
                "ByteStream small writes [plain]",
                "ByteStream small writes [TLS + tokens]",
                "FindMissingBlobs: TLS + tokens / plain",
                "ByteStream small writes: TLS + tokens / plain",
            ]
        );
        // 2.0 / 2.5 = 80% of the plain throughput: below 90%.
        assert_eq!(combined.rows[4].verdict(), Verdict::Miss);
        // Half the rate, but no target on this row.
        assert_eq!(combined.rows[5].verdict(), Verdict::NoTarget);
        assert!(combined.environment.command.ends_with("--security both"));
    }

    #[test]
    fn shares_at_the_limit_pass() {
        let secured = |plain, secure, lower_is_better| Check::Secured {
            plain,
            secure,
            unit: "x".to_owned(),
            lower_is_better,
            min_share: Some(MIN_SHARE),
        };
        assert_eq!(secured(100.0, 90.0, false).verdict(), Verdict::Pass);
        assert_eq!(secured(100.0, 89.0, false).verdict(), Verdict::Miss);
        assert_eq!(secured(9.0, 10.0, true).verdict(), Verdict::Pass);
        assert_eq!(secured(8.0, 10.0, true).verdict(), Verdict::Miss);
    }

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

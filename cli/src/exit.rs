//! The documented exit codes of `tessera`, the error type that carries one to `main`, and the
//! one place that prints that error.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | every test passed (flaky tests count as passed), or the command did what it was asked |
//! | 1 | tests failed (timed-out tests count as failed), or the prepare or list step failed: the build under test is broken |
//! | 2 | usage or bad input: flags, configuration (file, `TESSERA_*` variables), an unsupported runner combination, a job the coordinator refused (`INVALID_ARGUMENT`), a token it refused (`UNAUTHENTICATED`) or one that does not allow the call (`PERMISSION_DENIED`), a coordinator certificate that does not verify |
//! | 3 | infrastructure: coordinator unreachable (one line: its URL, the cause, what to do), the fleet lost the job (`JOB_RESULT_INFRASTRUCTURE`), the watch stream could not be re-attached, a server that cannot bind or open its data directory |
//! | 130 | interrupted (Ctrl-C or SIGTERM): the job was cancelled |
//!
//! A matrix run (`tessera run --matrix`) exits 3 if any cell hit an infrastructure failure,
//! else 1 if any cell failed (tests or its prepare or list step), else 0; 130 when interrupted.
//!
//! Every command returns `Result<Exit, CliError>`; [`exit_code`] turns that into the process's
//! exit code and prints the error, once, as `tessera: <message>`.

use std::process::ExitCode;

use tessera_agent::AgentError;
use tessera_config::ConfigError;
use tessera_coordinator::ServerError;

/// One of `tessera`'s exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every test passed (flaky ones included), or the command did what it was asked.
    Success = 0,
    /// Tests failed, or the job could not prepare or list its tests.
    TestsFailed = 1,
    /// Usage errors and bad input.
    Usage = 2,
    /// Coordinator, agents or the network failed.
    Infrastructure = 3,
    /// Interrupted by SIGINT or SIGTERM; the job was cancelled.
    Interrupted = 130,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// Text for `--help` listing the exit codes.
pub const EXIT_CODES_HELP: &str = "Exit codes: 0 all tests passed (flaky counts as passed), \
1 tests failed (timed out counts as failed) or the prepare/list step failed, \
2 usage or bad input (also a refused token, a token without the right role, a certificate that does not verify), 3 infrastructure (coordinator unreachable, job lost), 130 interrupted (Ctrl-C or SIGTERM; the job is cancelled). \
A --matrix run exits 3 if any cell hit an infrastructure failure, else 1 if any cell failed, else 0.";

/// Why a command stopped early; each variant maps to one exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags or input, with what to do instead (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The command's configuration is unusable (exit 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The coordinator or the machinery around it failed (exit 3).
    #[error("{0}")]
    Infrastructure(String),
    /// `tessera coordinator` could not start, or failed while serving (exit 3).
    #[error(transparent)]
    Coordinator(#[from] ServerError),
    /// `tessera agent` could not start, or failed while running (exit 3).
    #[error(transparent)]
    Agent(#[from] AgentError),
}

impl CliError {
    /// The exit code for this error.
    pub fn exit(&self) -> Exit {
        match self {
            Self::Usage(_) | Self::Config(_) => Exit::Usage,
            // Unreadable or mismatched certificate files are configuration mistakes.
            Self::Coordinator(ServerError::Tls(_)) => Exit::Usage,
            // So are an agent's unreadable token, CA or client certificate files.
            Self::Agent(AgentError::Client(_)) => Exit::Usage,
            Self::Infrastructure(_) | Self::Coordinator(_) | Self::Agent(_) => Exit::Infrastructure,
        }
    }

    /// A usage error.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::Usage(message.into())
    }

    /// An infrastructure error.
    pub fn infra(message: impl Into<String>) -> Self {
        Self::Infrastructure(message.into())
    }

    /// The coordinator (at `url`, when known) did not answer: one line saying where, why
    /// (`cause`, as [`transport_cause`] words it) and what to do.
    ///
    /// A TLS failure (the certificate does not verify, the server does not speak TLS) is a
    /// configuration problem, not an absent coordinator: a usage error saying what to check.
    pub fn unreachable(url: Option<&str>, cause: &str) -> Self {
        let at = url.map(|u| format!(" at {u}")).unwrap_or_default();
        if is_tls_failure(cause) {
            return Self::Usage(format!(
                "TLS with the coordinator{at} failed: {cause}; check the CA certificate \
                 (--tls-ca or TESSERA_TLS_CA) and that the URL's host name is in the \
                 coordinator's certificate"
            ));
        }
        // A coordinator that requires client certificates closes the handshake of a client
        // without one: it looks like a closed connection from here.
        let mtls = if url.is_some_and(|u| u.starts_with("https://")) && cause.contains("closed") {
            " If it requires client certificates (mutual TLS), set TESSERA_TLS_CLIENT_CERT and \
             TESSERA_TLS_CLIENT_KEY (or tls_client_cert and tls_client_key in the client config)."
        } else {
            ""
        };
        Self::Infrastructure(format!(
            "cannot reach the coordinator{at}: {cause}; is `tessera coordinator` running{there}? \
             (set --coordinator or TESSERA_COORDINATOR){mtls}",
            there = if url.is_some() { " there" } else { "" }
        ))
    }

    /// Classifies a gRPC status from the coordinator: the caller's fault (bad input, unknown
    /// job) is a usage error, no answer at all is [`CliError::unreachable`], anything else is
    /// infrastructure.
    pub fn from_status(call: &str, status: &tonic::Status) -> Self {
        use tonic::Code;
        if let Some(cause) = transport_failure(status) {
            return Self::unreachable(None, &cause);
        }
        let message = format!("{call}: {} ({:?})", status.message(), status.code());
        match status.code() {
            Code::Unauthenticated => Self::Usage(format!(
                "the coordinator refused the token: {} ({call}; set TESSERA_TOKEN or \
                 --token-file, see README \"Deploying on a network\")",
                status.message()
            )),
            Code::Unimplemented => Self::Infrastructure(format!(
                "the coordinator does not offer {call} ({}); is it an older version of \
                 tessera, or started without the feature?",
                if status.message().is_empty() {
                    "Unimplemented"
                } else {
                    status.message()
                }
            )),
            Code::PermissionDenied => Self::Usage(format!(
                "{call}: {}: your token's role/instances do not allow this",
                status.message()
            )),
            Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::AlreadyExists => Self::Usage(message),
            _ => Self::Infrastructure(message),
        }
    }
}

/// The cause of `status` in a few words when it is a transport failure (the coordinator never
/// answered, or the connection broke), `None` when the coordinator itself sent it: tonic gives
/// a status made from a transport error that error as its source.
pub fn transport_failure(status: &tonic::Status) -> Option<String> {
    std::error::Error::source(status).map(transport_cause)
}

/// Whether a transport failure's cause is TLS (certificate verification, handshake).
fn is_tls_failure(cause: &str) -> bool {
    let cause = cause.to_ascii_lowercase();
    [
        "certificate",
        "handshake",
        "tls",
        "unknownissuer",
        "notvalidforname",
    ]
    .iter()
    .any(|word| cause.contains(word))
}

/// The innermost cause of a transport error, in words: an I/O error's kind where there is one
/// (`connection refused`), else the last message of the chain; never a debug dump.
pub fn transport_cause(error: &(dyn std::error::Error + 'static)) -> String {
    use std::io::ErrorKind as K;
    let mut current = Some(error);
    let mut last = error.to_string();
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                K::ConnectionRefused => "connection refused".to_owned(),
                K::TimedOut => "connection timed out".to_owned(),
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                    "connection lost".to_owned()
                }
                K::HostUnreachable | K::NetworkUnreachable => "no route to host".to_owned(),
                K::AddrNotAvailable => "address not available".to_owned(),
                _ => io.to_string(),
            };
        }
        last = e.to_string();
        current = e.source();
    }
    last
}

/// The process exit code for a command's `result`. An error is printed here, once, on stderr.
pub fn exit_code(result: Result<Exit, CliError>) -> ExitCode {
    match result {
        Ok(exit) => exit.into(),
        Err(error) => {
            eprintln!("tessera: {error}");
            error.exit().into()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tessera_coordinator::{ConfigOverrides, CoordinatorConfig};

    use super::*;

    #[test]
    fn each_error_knows_its_exit_code() {
        let env = BTreeMap::from([("TESSERA_LISTN".to_owned(), "x".to_owned())]);
        let config = CoordinatorConfig::load(None, &env, &ConfigOverrides::default()).unwrap_err();
        let error = CliError::from(config);
        assert_eq!(error.exit(), Exit::Usage);
        assert!(
            error
                .to_string()
                .starts_with("unknown environment variable TESSERA_LISTN")
        );
        assert_eq!(CliError::usage("bad flag").exit(), Exit::Usage);
        assert_eq!(CliError::infra("unreachable").exit(), Exit::Infrastructure);
        let status = tonic::Status::unavailable("down");
        assert_eq!(
            CliError::from_status("Submit", &status).exit(),
            Exit::Infrastructure
        );
        let status = tonic::Status::invalid_argument("no");
        assert_eq!(CliError::from_status("Submit", &status).exit(), Exit::Usage);
        let status = tonic::Status::unimplemented("");
        let error = CliError::from_status("ReadAudit", &status);
        assert_eq!(error.exit(), Exit::Infrastructure);
        assert!(
            error
                .to_string()
                .starts_with("the coordinator does not offer ReadAudit (Unimplemented)")
        );
    }

    #[test]
    fn a_refused_token_says_what_to_set() {
        let status = tonic::Status::unauthenticated("unknown token");
        let error = CliError::from_status("Submit", &status);
        assert_eq!(error.exit(), Exit::Usage);
        assert_eq!(
            error.to_string(),
            "the coordinator refused the token: unknown token (Submit; set TESSERA_TOKEN or \
             --token-file, see README \"Deploying on a network\")"
        );
        let status = tonic::Status::permission_denied("a reader token cannot submit jobs");
        let error = CliError::from_status("Submit", &status);
        assert_eq!(error.exit(), Exit::Usage);
        assert_eq!(
            error.to_string(),
            "Submit: a reader token cannot submit jobs: your token's role/instances do not \
             allow this"
        );
    }

    #[test]
    fn a_certificate_that_does_not_verify_is_configuration() {
        let error = CliError::unreachable(
            Some("https://ci.example:9090"),
            "invalid peer certificate: UnknownIssuer",
        );
        assert_eq!(error.exit(), Exit::Usage);
        let text = error.to_string();
        assert!(
            text.starts_with("TLS with the coordinator at https://ci.example:9090 failed"),
            "{text}"
        );
        assert!(text.contains("--tls-ca"), "{text}");
    }

    #[test]
    fn an_unreachable_coordinator_is_one_line_with_what_to_do() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let status = tonic::Status::from_error(Box::new(refused));
        let error = CliError::from_status("Status", &status);
        assert_eq!(error.exit(), Exit::Infrastructure);
        assert_eq!(
            error.to_string(),
            "cannot reach the coordinator: connection refused; is `tessera coordinator` running? \
             (set --coordinator or TESSERA_COORDINATOR)"
        );
        let error = CliError::unreachable(Some("http://127.0.0.1:9090"), "connection refused");
        assert_eq!(
            error.to_string(),
            "cannot reach the coordinator at http://127.0.0.1:9090: connection refused; is \
             `tessera coordinator` running there? (set --coordinator or TESSERA_COORDINATOR)"
        );
        // A status the coordinator sent is not a transport failure.
        assert_eq!(transport_failure(&tonic::Status::unavailable("busy")), None);
    }
}

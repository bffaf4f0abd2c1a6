//! The documented exit codes of `tessera`, and the error type that carries one to `main`.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | every test passed (flaky tests count as passed) |
//! | 1 | tests failed (timed-out tests count as failed), or the prepare or list step failed: the build under test is broken |
//! | 2 | usage or bad input: flags, an unsupported runner combination, a job the coordinator refused (`INVALID_ARGUMENT`) |
//! | 3 | infrastructure: coordinator unreachable, the fleet lost the job (`JOB_RESULT_INFRASTRUCTURE`), the watch stream could not be re-attached |
//! | 130 | interrupted (Ctrl-C or SIGTERM): the job was cancelled |

use std::process::ExitCode;

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
2 usage or bad input, 3 infrastructure (coordinator unreachable, job lost), 130 interrupted (Ctrl-C or SIGTERM; the job is cancelled).";

/// Why a client command stopped early; each variant maps to one exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags or input, with what to do instead (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The coordinator or the machinery around it failed (exit 3).
    #[error("{0}")]
    Infrastructure(String),
}

impl CliError {
    /// The exit code for this error.
    pub fn exit(&self) -> Exit {
        match self {
            Self::Usage(_) => Exit::Usage,
            Self::Infrastructure(_) => Exit::Infrastructure,
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

    /// Classifies a gRPC status from the coordinator: the caller's fault (bad input, unknown
    /// job) is a usage error, anything else is infrastructure.
    pub fn from_status(call: &str, status: &tonic::Status) -> Self {
        use tonic::Code;
        let message = format!("{call}: {} ({:?})", status.message(), status.code());
        match status.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated => Self::Usage(message),
            _ => Self::Infrastructure(message),
        }
    }
}

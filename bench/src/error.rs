//! Why a benchmark could not run. A missed target is not an error: it is a row in the report.

use tessera_cas::client::ClientError;
use tessera_coordinator::ServerError;
use thiserror::Error;

/// Why a benchmark could not run.
#[derive(Debug, Error)]
pub(crate) enum BenchError {
    /// The in-process coordinator failed to start or to stop cleanly.
    #[error("coordinator failed: {0}")]
    Server(#[from] ServerError),
    /// A client call to the coordinator failed.
    #[error("client call failed: {0}")]
    Client(#[from] ClientError),
    /// A gRPC call the benchmark makes itself (Execute, an agent session) failed.
    #[error("{call} failed: {status}")]
    Rpc {
        /// The call.
        call: &'static str,
        /// What the server said.
        #[source]
        status: tonic::Status,
    },
    /// A connection to the coordinator could not be made.
    #[error("failed to connect to {endpoint}: {source}")]
    Connect {
        /// Where to.
        endpoint: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// A client could not be set up for the coordinator (its URL, CA file or token).
    #[error("client setup failed: {0}")]
    Net(#[from] tessera_net::client::ClientError),
    /// A tool the benchmark drives (Bazel, the `tessera` binary) is missing or failed.
    #[error("{0}")]
    Tool(String),
    /// A local operation (runtime, temporary directory, loopback socket) failed.
    #[error("failed to {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A benchmark task panicked or was cancelled.
    #[error("benchmark task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The server answered something that makes the measurement meaningless (a short read,
    /// a wrong committed size, present blobs reported missing, an action that did not pass,
    /// ...).
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

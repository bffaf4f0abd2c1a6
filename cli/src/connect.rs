//! Finding and reaching a coordinator: the configured ones ([`ClientConfig`]: flag, environment,
//! client config file), tried in order with their TLS files and token; else the embedded
//! cluster named by the endpoint file (if it answers), on loopback without TLS or token.
//!
//! A coordinator that does not answer is one line naming its URL, the cause and what to do
//! ([`CliError::unreachable`]), never a transport error's debug dump. What it does not own: TLS
//! and the bearer header (`tessera_net::client`), which status means what ([`crate::exit`]).

use std::path::Path;
use std::time::Duration;

use tessera_net::client::{ClientAuth, Link};
use tessera_proto::tessera::v1::StatusRequest;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tonic::transport::Endpoint;

use crate::client_config::ClientConfig;
use crate::exit::{CliError, transport_cause, transport_failure};
use crate::paths;

/// How long a coordinator gets to answer before it counts as not running.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long connecting to one coordinator may take (TLS handshake included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `http://` added to a bare `host:port`.
pub fn normalize(url: &str) -> String {
    let url = url.trim();
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// A coordinator to call: its URL (for messages) and the link to it, carrying the TLS and
/// token it was configured with.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The coordinator's URL.
    pub url: String,
    /// Calls go through this (`JobsClient::new(link)`); it reconnects by itself later (a
    /// restarted coordinator).
    pub link: Link,
}

impl Connection {
    /// A failed call of this connection (see [`call_failed`]).
    pub fn failed(&self, call: &str, status: &tonic::Status) -> CliError {
        call_failed(&self.url, call, status)
    }
}

fn endpoint(url: &str, auth: &ClientAuth) -> Result<Endpoint, CliError> {
    Ok(tessera_net::client::endpoint(url, auth)
        .map_err(|e| CliError::usage(e.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

/// A connection to `url`, connected now: a coordinator that is not there is said at once.
pub async fn connect(url: &str, auth: &ClientAuth) -> Result<Connection, CliError> {
    let channel = endpoint(url, auth)?
        .connect()
        .await
        .map_err(|e| CliError::unreachable(Some(url), &transport_cause(&e)))?;
    Ok(Connection {
        url: url.to_owned(),
        link: tessera_net::client::link(channel, auth),
    })
}

/// A connection to the embedded cluster at `url`: loopback, no TLS, no token.
pub async fn connect_embedded(url: &str) -> Result<Connection, CliError> {
    connect(url, &ClientAuth::default()).await
}

/// The first of the configured coordinators that answers; when none does, one error naming
/// each and why. `None` when no coordinator is configured.
pub async fn configured(config: &ClientConfig) -> Result<Option<Connection>, CliError> {
    let Some((last, before)) = config.coordinators.split_last() else {
        return Ok(None);
    };
    let auth = config.auth()?;
    let mut causes = Vec::new();
    for url in before {
        match connect(url, &auth).await {
            Ok(connection) => return Ok(Some(connection)),
            Err(CliError::Infrastructure(message)) => causes.push(message),
            Err(other) => return Err(other),
        }
    }
    match connect(last, &auth).await {
        Ok(connection) => Ok(Some(connection)),
        Err(CliError::Infrastructure(message)) if !causes.is_empty() => {
            causes.push(message);
            Err(CliError::infra(format!(
                "none of the {} configured coordinators answered: {}",
                causes.len(),
                causes.join("; ")
            )))
        }
        Err(other) => Err(other),
    }
}

/// A failed call to the coordinator at `url`: a transport failure as
/// [`CliError::unreachable`], anything the coordinator said as [`CliError::from_status`].
pub fn call_failed(url: &str, call: &str, status: &tonic::Status) -> CliError {
    match transport_failure(status) {
        Some(cause) => CliError::unreachable(Some(url), &cause),
        None => CliError::from_status(call, status),
    }
}

/// Whether an embedded cluster at `url` answers Jobs.Status within `timeout`.
pub async fn answers(url: &str, timeout: Duration) -> bool {
    let Ok(endpoint) = endpoint(url, &ClientAuth::default()) else {
        return false;
    };
    let mut jobs = JobsClient::new(endpoint.connect_lazy());
    matches!(
        tokio::time::timeout(timeout, jobs.status(StatusRequest {})).await,
        Ok(Ok(_))
    )
}

/// The URL in the embedded cluster's endpoint file, if the cluster answers.
pub async fn running_cluster(cache_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(paths::endpoint_file(cache_dir)).ok()?;
    let url = normalize(text.lines().next()?);
    answers(&url, PROBE_TIMEOUT).await.then_some(url)
}

/// The coordinator for `watch`, `cancel`, `status`, `logs`, `token` and `audit`: the configured
/// ones, else the running embedded cluster; none is an infrastructure error that says how to
/// get one.
pub async fn existing(config: &ClientConfig, cache_dir: &Path) -> Result<Connection, CliError> {
    if let Some(connection) = configured(config).await? {
        return Ok(connection);
    }
    match running_cluster(cache_dir).await {
        Some(url) => connect_embedded(&url).await,
        None => Err(CliError::infra(
            "no coordinator: pass --coordinator URL (or set TESSERA_COORDINATOR, or `coordinator` \
             in the client config file), or start one with `tessera up`",
        )),
    }
}

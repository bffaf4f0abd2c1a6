//! Finding and reaching a coordinator: `--coordinator`, else `TESSERA_COORDINATOR`, else the
//! embedded cluster named by the endpoint file (if it answers). A coordinator that does not
//! answer is one line naming its URL, the cause and what to do ([`CliError::unreachable`]),
//! never a transport error's debug dump.

use std::path::Path;
use std::time::Duration;

use tessera_proto::tessera::v1::StatusRequest;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tonic::transport::{Channel, Endpoint};

use crate::exit::{CliError, transport_cause, transport_failure};
use crate::paths;

/// How long a coordinator gets to answer before it counts as not running.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// `http://` added to a bare `host:port`.
pub fn normalize(url: &str) -> String {
    let url = url.trim();
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// The coordinator configured by flag or environment, if any.
pub fn configured(flag: Option<&str>) -> Option<String> {
    flag.map(str::to_owned)
        .or_else(|| std::env::var("TESSERA_COORDINATOR").ok())
        .filter(|u| !u.trim().is_empty())
        .map(|u| normalize(&u))
}

fn endpoint(url: &str) -> Result<Endpoint, CliError> {
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|e| CliError::usage(format!("bad coordinator URL {url}: {e}")))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

/// A lazily connecting channel to `url`.
pub fn channel(url: &str) -> Result<Channel, CliError> {
    Ok(endpoint(url)?.connect_lazy())
}

/// A channel to `url`, connected now: a coordinator that is not there is said at once. The
/// channel reconnects by itself later (a restarted coordinator).
pub async fn connect(url: &str) -> Result<Channel, CliError> {
    endpoint(url)?
        .connect()
        .await
        .map_err(|e| CliError::unreachable(Some(url), &transport_cause(&e)))
}

/// A failed call to the coordinator at `url`: a transport failure as
/// [`CliError::unreachable`], anything the coordinator said as [`CliError::from_status`].
pub fn call_failed(url: &str, call: &str, status: &tonic::Status) -> CliError {
    match transport_failure(status) {
        Some(cause) => CliError::unreachable(Some(url), &cause),
        None => CliError::from_status(call, status),
    }
}

/// Whether a coordinator at `url` answers Jobs.Status within `timeout`.
pub async fn answers(url: &str, timeout: Duration) -> bool {
    let Ok(channel) = channel(url) else {
        return false;
    };
    let mut jobs = JobsClient::new(channel);
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

/// The coordinator for `watch`, `cancel` and `status`: configured, else the running embedded
/// cluster; none is an infrastructure error that says how to get one.
pub async fn existing(flag: Option<&str>, cache_dir: &Path) -> Result<String, CliError> {
    if let Some(url) = configured(flag) {
        return Ok(url);
    }
    running_cluster(cache_dir).await.ok_or_else(|| {
        CliError::infra(
            "no coordinator: pass --coordinator URL (or set TESSERA_COORDINATOR), or start one with `tessera up`",
        )
    })
}

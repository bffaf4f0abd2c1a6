//! Finding and reaching a coordinator: `--coordinator`, else `TESSERA_COORDINATOR`, else the
//! embedded cluster named by the endpoint file (if it answers).

use std::path::Path;
use std::time::Duration;

use tessera_proto::tessera::v1::StatusRequest;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tonic::transport::{Channel, Endpoint};

use crate::exit::CliError;
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

/// A lazily connecting channel to `url`.
pub fn channel(url: &str) -> Result<Channel, CliError> {
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|e| CliError::usage(format!("bad coordinator URL {url}: {e}")))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect_lazy())
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

//! `--metrics`: the `cas` and `sched` rows measured with the coordinator's metrics on (the
//! default, as deployed), off, or both, the last ending with what metrics cost.
//!
//! With metrics on, the in-process coordinator records every metric and serves its HTTP port,
//! and a [`Scraper`] in the bench fetches `/metrics` every [`SCRAPE_INTERVAL`] during the run,
//! as Prometheus would but more often than its default 15 s, so the cost of encoding the
//! registry is in the figures too. With metrics off, recording is switched off for the process
//! (`tessera_coordinator::metrics::set_recording(false)`: the switch exists for this
//! benchmark) and there is no HTTP port.
//!
//! The switch reaches only the coordinator in this process: the `sched` rows with real agents
//! run `tessera coordinator` child processes, which always record, so `--metrics off|both`
//! leaves those rows out.
//!
//! The comparison ([`crate::compare`]) keeps the figure with metrics on as a share of the one
//! without; FindMissingBlobs and scheduler capacity must keep at least [`MIN_SHARE`].

use std::time::Duration;

use tessera_net::client::{ClientAuth, Link};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::codegen::{Body as _, Service as _, http};

use crate::error::BenchError;
use crate::link::{self, Traffic};

/// Least share of the figure without metrics a targeted row must keep with them.
pub(crate) const MIN_SHARE: f64 = 0.95;

/// How often the bench scrapes `/metrics` while metrics are on (Prometheus's default: 15 s).
pub(crate) const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// Whether the coordinator under test records metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Metrics {
    /// Recording off, no HTTP port.
    Off,
    /// Recording on, the HTTP port served and scraped (the default, and as deployed).
    On,
}

impl Metrics {
    /// How the report names it.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Metrics::Off => "metrics off",
            Metrics::On => "metrics on",
        }
    }
}

/// `--metrics`: with which metrics settings to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum MetricsArg {
    /// Recorded, and `/metrics` scraped every second.
    #[default]
    On,
    /// Not recorded, no HTTP port.
    Off,
    /// Off, then on, then the cost of metrics per row.
    Both,
}

impl MetricsArg {
    /// The settings to measure, in order (the baseline first).
    pub(crate) fn modes(self) -> &'static [Metrics] {
        match self {
            MetricsArg::On => &[Metrics::On],
            MetricsArg::Off => &[Metrics::Off],
            MetricsArg::Both => &[Metrics::Off, Metrics::On],
        }
    }

    /// The flag as typed, for the report's command line (empty for the default).
    pub(crate) fn flag(self) -> &'static str {
        match self {
            MetricsArg::On => "",
            MetricsArg::Off => " --metrics off",
            MetricsArg::Both => " --metrics both",
        }
    }
}

/// What a [`Scraper`] fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Scrapes {
    /// Successful scrapes.
    pub count: u64,
    /// Bytes of the last one.
    pub last_bytes: usize,
}

impl Scrapes {
    /// The report's note about them.
    pub(crate) fn note(self) -> String {
        format!(
            "Metrics on: the coordinator recorded every metric and its HTTP port was scraped \
             every {} s during the run ({} scrapes of /metrics, the last {} bytes).",
            SCRAPE_INTERVAL.as_secs(),
            self.count,
            self.last_bytes
        )
    }
}

/// The report's note about a run with metrics off.
pub(crate) fn off_note() -> String {
    "Metrics off: recording switched off in the coordinator's process \
     (tessera_coordinator::metrics::set_recording(false), which only the benchmark calls), \
     no HTTP port, no scrapes."
        .to_owned()
}

/// Fetches `/metrics` from a coordinator's HTTP port every [`SCRAPE_INTERVAL`] on the caller's
/// runtime until [`Scraper::stop`]; a failed scrape ends it and is reported by `stop`.
pub(crate) struct Scraper {
    stop: CancellationToken,
    task: JoinHandle<Result<Scrapes, BenchError>>,
}

impl Scraper {
    /// Connects to `url` (`http://` or `https://`, the coordinator's HTTP port) presenting
    /// `auth`, scrapes once (so a port that cannot be scraped fails the start), then every
    /// [`SCRAPE_INTERVAL`].
    pub(crate) async fn start(url: &str, auth: &ClientAuth) -> Result<Self, BenchError> {
        let mut link = link::connect(url, auth, Traffic::Calls).await?;
        let first = scrape(&mut link).await?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut scrapes = Scrapes {
                count: 1,
                last_bytes: first,
            };
            let mut ticks = tokio::time::interval(SCRAPE_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    () = stopped.cancelled() => return Ok(scrapes),
                    _ = ticks.tick() => {
                        scrapes.last_bytes = scrape(&mut link).await?;
                        scrapes.count += 1;
                    }
                }
            }
        });
        Ok(Scraper { stop, task })
    }

    /// Stops scraping: what was fetched, or why a scrape failed.
    pub(crate) async fn stop(self) -> Result<Scrapes, BenchError> {
        self.stop.cancel();
        self.task.await?
    }
}

/// One `GET /metrics` over `link` (HTTP/2, with the link's token): the body's length, which
/// must hold a Tessera family.
async fn scrape(link: &mut Link) -> Result<usize, BenchError> {
    let failed = |why: String| BenchError::Unexpected(format!("scrape of /metrics: {why}"));
    let request = http::Request::get("/metrics")
        .body(tonic::body::Body::empty())
        .map_err(|e| failed(e.to_string()))?;
    std::future::poll_fn(|cx| link.poll_ready(cx))
        .await
        .map_err(|e| failed(e.to_string()))?;
    let response = link
        .call(request)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let status = response.status();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx))
        .await
        .transpose()
        .map_err(|e| failed(e.to_string()))?
    {
        if let Ok(data) = frame.into_data() {
            text.extend_from_slice(&data);
        }
    }
    let text = String::from_utf8_lossy(&text);
    if !status.is_success() {
        return Err(failed(format!("HTTP {status}: {}", text.trim())));
    }
    if !text.contains("tessera_grpc_requests_total") {
        return Err(failed(format!(
            "the answer has no tessera_grpc_requests_total: {text:.200}"
        )));
    }
    Ok(text.len())
}

//! `tessera-bench cas`: the content store as clients see it, through [`CasClient`] over real
//! gRPC to an in-process coordinator with a disk store.
//!
//! Measures, each beside its limits and target (the targets come from the issue that asked for
//! this benchmark):
//! - ByteStream upload and download of fresh random blobs (incompressible, so they are stored
//!   raw and compression cannot flatter the result), per digest function and size, up to four
//!   blobs in flight as a build client moves them (a large download itself comes as parallel
//!   ranged Reads, see [`CasClient::read`]): at least 60% of the lower of the single-core hash
//!   rate and the loopback TCP rate, both measured just before. Uploads also show how fast the same bytes
//!   go into new files on the store's filesystem, for context only.
//! - FindMissingBlobs with Bazel's batch of 15,000 digests, half present: p50 at most 20 ms.
//! - 4 KiB blobs each uploaded by its own ByteStream Write, many in flight as Bazel does with
//!   `--jobs`: at least 10,000 writes per second (issue 17).
//!
//! With `--security tls-tokens` the same rows run against a coordinator with TLS and tokens;
//! with `both`, against each, and FindMissingBlobs must keep 90% of its plain throughput.
//! With `--metrics off` they run with the coordinator's metrics off; with `both`, off then on
//! (recorded and scraped every second), and FindMissingBlobs must keep 95% of its throughput
//! without metrics ([`compare::combine`]).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};
use tessera_cas::client::CasClient;
use tessera_cas::digest::{Digest, DigestFunction};
use tokio::task::JoinSet;

use crate::compare::{self, Modes, Setup};
use crate::cpu;
use crate::error::BenchError;
use crate::limits::{self, mb_per_s};
use crate::metrics::Metrics;
use crate::report::{Check, Environment, Layout, Report, Row, percentile, thousands};
use crate::security::{self, Security};
use crate::server::BenchServer;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// A large transfer must reach this share of the lower of its two limits.
const TRANSFER_SHARE: f64 = 0.6;
/// Blobs moved at once, as a client with several to move does (Bazel uploads and downloads
/// up to `--jobs` at a time).
const TRANSFERS_IN_FLIGHT: usize = 4;
/// Largest median FindMissingBlobs latency allowed, milliseconds.
const FIND_MISSING_MAX_P50_MS: f64 = 20.0;
/// Fewest small writes per second allowed.
const SMALL_WRITES_MIN_PER_S: f64 = 10_000.0;
/// Digests per FindMissingBlobs call in Bazel.
const BAZEL_FIND_MISSING_BATCH: usize = 15_000;
/// Size of the blobs made present for FindMissingBlobs.
const PRESENT_BLOB_BYTES: usize = 64;
/// Blobs per BatchUpdateBlobs call when making them present.
const PRESENT_BATCH: usize = 1_000;

/// Blobs of one size moved one after another.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transfer {
    /// Bytes per blob.
    pub size: usize,
    /// Distinct blobs uploaded, then downloaded.
    pub count: usize,
}

/// What one `cas` run measures.
#[derive(Debug, Clone)]
pub(crate) struct CasPlan {
    /// The command line that selects this plan, for the report.
    pub command: &'static str,
    /// Digest functions the transfers run with.
    pub functions: Vec<DigestFunction>,
    /// Transfer sizes.
    pub transfers: Vec<Transfer>,
    /// Bytes hashed to measure a function's single-core rate.
    pub hash_probe_bytes: usize,
    /// Digests per FindMissingBlobs call (half present, half missing).
    pub find_missing_digests: usize,
    /// FindMissingBlobs calls timed.
    pub find_missing_calls: usize,
    /// Small blobs written.
    pub small_writes: usize,
    /// Bytes per small blob.
    pub small_write_bytes: usize,
    /// Small writes in flight at once.
    pub small_writes_in_flight: usize,
}

impl CasPlan {
    /// The benchmark the README quotes.
    pub(crate) fn full() -> Self {
        CasPlan {
            command: "cargo run --release -p tessera-bench -- cas",
            functions: DigestFunction::ALL.to_vec(),
            transfers: vec![
                Transfer {
                    size: MIB,
                    count: 64,
                },
                Transfer {
                    size: 256 * MIB,
                    count: 2,
                },
            ],
            hash_probe_bytes: 64 * MIB,
            find_missing_digests: BAZEL_FIND_MISSING_BATCH,
            find_missing_calls: 100,
            small_writes: 20_000,
            small_write_bytes: 4 * KIB,
            small_writes_in_flight: 32,
        }
    }

    /// A smoke run: smaller blobs and fewer calls, same targets.
    pub(crate) fn quick() -> Self {
        CasPlan {
            command: "cargo run --release -p tessera-bench -- cas --quick",
            transfers: vec![
                Transfer {
                    size: MIB,
                    count: 16,
                },
                Transfer {
                    size: 16 * MIB,
                    count: 2,
                },
            ],
            hash_probe_bytes: 16 * MIB,
            find_missing_calls: 20,
            small_writes: 2_000,
            ..CasPlan::full()
        }
    }
}

/// Runs `plan` against a coordinator set up as each of `modes`' setups asks, one after the
/// other, each with its data under `data_parent`.
pub(crate) async fn run(
    plan: &CasPlan,
    data_parent: Option<&Path>,
    modes: Modes,
) -> Result<Report, BenchError> {
    let mut runs = Vec::new();
    for setup in modes.setups() {
        progress(&format!(
            "coordinator: {}, {}",
            setup.security.label(),
            setup.metrics.label()
        ));
        runs.push(run_once(plan, data_parent, setup).await?);
    }
    compare::combine(modes, runs, |row| row.measurement == FIND_MISSING)
}

/// The FindMissingBlobs row's measurement: the row the issue holds to the cost target.
const FIND_MISSING: &str = "FindMissingBlobs";

/// Starts a coordinator with its data under `data_parent`, runs `plan` against it, stops it.
async fn run_once(
    plan: &CasPlan,
    data_parent: Option<&Path>,
    setup: Setup,
) -> Result<Report, BenchError> {
    let server = BenchServer::start(data_parent, setup).await?;
    let environment = Environment::here(plan.command, data_parent);
    let measured = measure(plan, &server).await;
    let stopped = server.stop().await;
    let rows = measured?;
    let scrapes = stopped?;
    let mut notes = Vec::new();
    if setup.security == Security::TlsTokens {
        notes.push(security::secure_note());
    }
    notes.extend(scrapes.map(|scrapes| scrapes.note()));
    if setup.metrics == Metrics::Off {
        notes.push(crate::metrics::off_note());
    }
    Ok(Report {
        environment,
        layout: Layout::Cas,
        rows,
        notes,
    })
}

async fn measure(plan: &CasPlan, server: &BenchServer) -> Result<Vec<Row>, BenchError> {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut clients = Vec::new();
    for &function in &plan.functions {
        let client = server
            .client(function, crate::link::CAS_CONNECTIONS)
            .await?;
        warm_up(&client, &mut rng).await?;
        clients.push(client);
    }
    let mut rows = Vec::new();
    for transfer in &plan.transfers {
        for client in &clients {
            rows.extend(transfer_rows(server, client, *transfer, plan, &mut rng).await?);
        }
    }
    let sha256 = server.client(DigestFunction::Sha256, 1).await?;
    warm_up(&sha256, &mut rng).await?;
    rows.push(find_missing_row(&sha256, plan, &mut rng).await?);
    rows.push(small_writes_row(&sha256, plan, &mut rng).await?);
    Ok(rows)
}

fn random_bytes(rng: &mut SmallRng, len: usize) -> Bytes {
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    Bytes::from(data)
}

fn progress(message: &str) {
    eprintln!("tessera-bench: {message}");
}

fn size_label(bytes: usize) -> String {
    if bytes >= MIB {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{} KiB", bytes / KIB)
    }
}

/// One untimed upload and download, so that no measurement pays for connection start-up.
async fn warm_up(client: &CasClient, rng: &mut SmallRng) -> Result<(), BenchError> {
    let data = random_bytes(rng, MIB);
    let digest = client.function().digest_of(&data);
    client.write(&digest, data, false).await?;
    client.read(&digest, false).await?;
    Ok(())
}

/// Upload then download rows for one transfer size and digest function.
async fn transfer_rows(
    server: &BenchServer,
    client: &CasClient,
    transfer: Transfer,
    plan: &CasPlan,
    rng: &mut SmallRng,
) -> Result<[Row; 2], BenchError> {
    let function = client.function();
    let workload = format!(
        "{} × {}",
        thousands(transfer.count),
        size_label(transfer.size)
    );
    progress(&format!("{function}: limits for {workload}"));
    let hash = limits::hash_rate(function, random_bytes(rng, plan.hash_probe_bytes)).await?;
    let blob = random_bytes(rng, transfer.size);
    let tcp = limits::tcp_rate(&server.handle(), blob.clone(), transfer.count).await?;
    let disk = limits::disk_write_rate(server.scratch_dir(), blob.clone(), transfer.count).await?;
    let plain_dir = server.scratch_dir().join("plain");
    let count = transfer.count;
    let (plain_up, plain_down) = tokio::task::spawn_blocking(move || {
        let up = limits::plain_verified_rate(
            function,
            blob.clone(),
            count,
            limits::Keep::Files(plain_dir),
        )?;
        let down = limits::plain_verified_rate(function, blob, count, limits::Keep::Memory)?;
        Ok::<_, BenchError>((up, down))
    })
    .await??;
    progress(&format!("{function}: ByteStream {workload}"));
    let (upload, download) = transfer_rates(client, transfer, rng).await?;
    let row = |measurement: &str,
               mb_per_s: f64,
               plain_mb_per_s: f64,
               disk_write_mb_per_s: Option<f64>| Row {
        measurement: measurement.to_owned(),
        digest: function.to_string(),
        workload: workload.clone(),
        check: Check::Throughput {
            mb_per_s,
            hash_limit_mb_per_s: hash,
            tcp_limit_mb_per_s: tcp,
            disk_write_mb_per_s,
            plain_mb_per_s,
            share: TRANSFER_SHARE,
        },
    };
    Ok([
        row("ByteStream upload", upload, plain_up, Some(disk)),
        row("ByteStream download", download, plain_down, None),
    ])
}

/// Uploads `transfer.count` fresh blobs, [`TRANSFERS_IN_FLIGHT`] at a time, then downloads
/// each (verified by the client) the same way; returns the upload and download rates in MB/s.
/// Generating and hashing the blobs before upload is not timed: a client knows its digests
/// before it uploads.
async fn transfer_rates(
    client: &CasClient,
    transfer: Transfer,
    rng: &mut SmallRng,
) -> Result<(f64, f64), BenchError> {
    let function = client.function();
    let blobs: Vec<(Digest, Bytes)> = (0..transfer.count)
        .map(|_| {
            let data = random_bytes(rng, transfer.size);
            (function.digest_of(&data), data)
        })
        .collect();
    let before = Usage::now()?;
    let start = Instant::now();
    in_flight(blobs.clone(), |(digest, data)| {
        let client = client.clone();
        async move {
            let committed = client.write(&digest, data, false).await?;
            if committed != digest.size_i64() {
                return Err(BenchError::Unexpected(format!(
                    "upload of {digest} committed {committed} bytes"
                )));
            }
            Ok(())
        }
    })
    .await?;
    let uploading = start.elapsed();
    let upload_usage = Usage::now()?.since(before);
    let digests: Vec<Digest> = blobs.into_iter().map(|(digest, _)| digest).collect();
    let before = Usage::now()?;
    let start = Instant::now();
    in_flight(digests, |digest| {
        let client = client.clone();
        async move {
            let data = client.read(&digest, false).await?;
            if data.len() != transfer.size {
                return Err(BenchError::Unexpected(format!(
                    "download of {digest} returned {} bytes",
                    data.len()
                )));
            }
            Ok(())
        }
    })
    .await?;
    let downloading = start.elapsed();
    let download_usage = Usage::now()?.since(before);
    let total = (transfer.size * transfer.count) as u64;
    // Context for comparing builds on a noisy machine: the rate moves with what else runs,
    // the CPU both ends spend per byte less, and the page faults (fresh memory touched) not
    // at all.
    let gb = total as f64 / 1e9;
    let per_gb = |cpu: Duration| cpu.as_secs_f64() / gb;
    progress(&format!(
        "{function}: client and server per GB: upload {:.2} s CPU, {:.0} page faults; \
         download {:.2} s CPU, {:.0} page faults",
        per_gb(upload_usage.cpu),
        upload_usage.faults as f64 / gb,
        per_gb(download_usage.cpu),
        download_usage.faults as f64 / gb,
    ));
    Ok((mb_per_s(total, uploading), mb_per_s(total, downloading)))
}

/// This process's CPU time and minor page faults (0 if unknown) so far, or since an earlier
/// reading.
#[derive(Clone, Copy)]
struct Usage {
    cpu: Duration,
    faults: u64,
}

impl Usage {
    fn now() -> Result<Usage, BenchError> {
        let faults = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
            .map_or(0, |usage| {
                u64::try_from(usage.minor_page_faults()).unwrap_or(0)
            });
        Ok(Usage {
            cpu: cpu::process("self")?.own,
            faults,
        })
    }

    fn since(self, earlier: Usage) -> Usage {
        Usage {
            cpu: self.cpu.saturating_sub(earlier.cpu),
            faults: self.faults.saturating_sub(earlier.faults),
        }
    }
}

/// Runs `transfer` on each of `items`, each on its own task, at most [`TRANSFERS_IN_FLIGHT`]
/// at once; the first error ends the run.
async fn in_flight<T, F, Fut>(items: Vec<T>, transfer: F) -> Result<(), BenchError>
where
    T: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<(), BenchError>> + Send + 'static,
{
    let mut running = JoinSet::new();
    for item in items {
        if running.len() >= TRANSFERS_IN_FLIGHT
            && let Some(joined) = running.join_next().await
        {
            joined??;
        }
        running.spawn(transfer(item));
    }
    while let Some(joined) = running.join_next().await {
        joined??;
    }
    Ok(())
}

/// FindMissingBlobs with half of the digests present, the same list every call.
async fn find_missing_row(
    client: &CasClient,
    plan: &CasPlan,
    rng: &mut SmallRng,
) -> Result<Row, BenchError> {
    let function = client.function();
    let total = plan.find_missing_digests;
    let missing = total - total / 2;
    progress(&format!("FindMissingBlobs: storing {} blobs", total / 2));
    let present: Vec<(Digest, Bytes)> = (0..total / 2)
        .map(|_| {
            let data = random_bytes(rng, PRESENT_BLOB_BYTES);
            (function.digest_of(&data), data)
        })
        .collect();
    for batch in present.chunks(PRESENT_BATCH) {
        client.batch_update(batch.to_vec(), false).await?;
    }
    let mut digests: Vec<Digest> = present.iter().map(|(digest, _)| *digest).collect();
    digests
        .extend((0..missing).map(|_| function.digest_of(&random_bytes(rng, PRESENT_BLOB_BYTES))));
    digests.shuffle(rng);

    progress(&format!(
        "FindMissingBlobs: {} calls of {} digests",
        plan.find_missing_calls,
        thousands(total)
    ));
    let mut samples = Vec::with_capacity(plan.find_missing_calls);
    // The first call is untimed: it only warms caches.
    for call in 0..=plan.find_missing_calls {
        let start = Instant::now();
        let answer = client.find_missing(&digests).await?;
        let elapsed = start.elapsed();
        if answer.len() != missing {
            return Err(BenchError::Unexpected(format!(
                "FindMissingBlobs reported {} of {total} digests missing, expected {missing}",
                answer.len()
            )));
        }
        if call > 0 {
            samples.push(elapsed.as_secs_f64() * 1e3);
        }
    }
    Ok(Row {
        measurement: FIND_MISSING.to_owned(),
        digest: function.to_string(),
        workload: format!("{} digests, half present", thousands(total)),
        check: Check::Latency {
            calls: samples.len(),
            p50_ms: percentile(&samples, 0.5),
            p99_ms: percentile(&samples, 0.99),
            max_p50_ms: FIND_MISSING_MAX_P50_MS,
        },
    })
}

/// Distinct small blobs, each its own ByteStream Write, `small_writes_in_flight` at a time on
/// one connection.
async fn small_writes_row(
    client: &CasClient,
    plan: &CasPlan,
    rng: &mut SmallRng,
) -> Result<Row, BenchError> {
    let function = client.function();
    let blobs: Arc<Vec<(Digest, Bytes)>> = Arc::new(
        (0..plan.small_writes)
            .map(|_| {
                let data = random_bytes(rng, plan.small_write_bytes);
                (function.digest_of(&data), data)
            })
            .collect(),
    );
    progress(&format!(
        "ByteStream: {} writes of {}, {} in flight",
        thousands(plan.small_writes),
        size_label(plan.small_write_bytes),
        plan.small_writes_in_flight
    ));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut writers = JoinSet::new();
    for _ in 0..plan.small_writes_in_flight {
        let client = client.clone();
        let blobs = Arc::clone(&blobs);
        let next = Arc::clone(&next);
        writers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let Some((digest, data)) = blobs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return Ok::<_, BenchError>(latencies);
                };
                let start = Instant::now();
                let committed = client.write(digest, data.clone(), false).await?;
                latencies.push(start.elapsed().as_secs_f64() * 1e3);
                if committed != digest.size_i64() {
                    return Err(BenchError::Unexpected(format!(
                        "upload of {digest} committed {committed} bytes"
                    )));
                }
            }
        });
    }
    let mut latencies = Vec::with_capacity(plan.small_writes);
    while let Some(joined) = writers.join_next().await {
        latencies.extend(joined??);
    }
    let elapsed = start.elapsed();
    Ok(Row {
        measurement: "ByteStream small writes".to_owned(),
        digest: function.to_string(),
        workload: format!(
            "{} × {}, {} in flight",
            thousands(plan.small_writes),
            size_label(plan.small_write_bytes),
            plan.small_writes_in_flight
        ),
        check: Check::Rate {
            unit: "writes",
            per_s: plan.small_writes as f64 / elapsed.as_secs_f64().max(1e-9),
            p50_ms: percentile(&latencies, 0.5),
            p99_ms: percentile(&latencies, 0.99),
            min_per_s: Some(SMALL_WRITES_MIN_PER_S),
            bare_spawn_ms: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MetricsArg;
    use crate::security::SecurityArg;

    /// Small enough for a debug build in CI; exercises every measurement end to end.
    fn smoke() -> CasPlan {
        CasPlan {
            command: "smoke test",
            transfers: vec![
                Transfer {
                    size: 64 * KIB,
                    count: 4,
                },
                Transfer {
                    size: MIB,
                    count: 1,
                },
            ],
            hash_probe_bytes: MIB,
            find_missing_calls: 3,
            small_writes: 200,
            small_writes_in_flight: 8,
            ..CasPlan::full()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn smoke_plan_measures_every_row() {
        let report = run(&smoke(), None, Modes::default())
            .await
            .expect("benchmark runs");
        // Upload and download per size and function, then FindMissingBlobs and small writes.
        assert_eq!(report.rows.len(), 2 * 2 * 2 + 2);
        for row in &report.rows {
            let values = match row.check {
                Check::Throughput {
                    mb_per_s,
                    hash_limit_mb_per_s,
                    tcp_limit_mb_per_s,
                    disk_write_mb_per_s,
                    plain_mb_per_s,
                    ..
                } => {
                    let mut values = vec![
                        mb_per_s,
                        hash_limit_mb_per_s,
                        tcp_limit_mb_per_s,
                        plain_mb_per_s,
                    ];
                    values.extend(disk_write_mb_per_s);
                    values
                }
                Check::Latency { p50_ms, p99_ms, .. } => vec![p50_ms, p99_ms],
                Check::Rate {
                    per_s,
                    p50_ms,
                    p99_ms,
                    ..
                } => vec![per_s, p50_ms, p99_ms],
                ref other => panic!("unexpected row {other:?}"),
            };
            assert!(values.iter().all(|v| v.is_finite() && *v > 0.0), "{row:?}");
        }
        let table = report.to_markdown();
        assert_eq!(table.matches("\n| ").count(), 1 + report.rows.len());
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
        assert_eq!(
            json["rows"].as_array().map(Vec::len),
            Some(report.rows.len())
        );
    }

    /// `--security both`: every row twice, then the comparison rows, FindMissingBlobs held to
    /// the target.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_compares_every_row_with_tls_and_tokens() {
        if std::env::var_os("CI").is_none()
            && std::process::Command::new("openssl")
                .arg("version")
                .output()
                .is_err()
        {
            eprintln!("skipped: no openssl (CI unset)");
            return;
        }
        let modes = Modes::new(SecurityArg::Both, MetricsArg::On).unwrap();
        let report = run(&smoke(), None, modes)
            .await
            .expect("benchmark runs with and without TLS and tokens");
        let single = 2 * 2 * 2 + 2;
        // Every row plain and secure, then one comparison per row.
        assert_eq!(report.rows.len(), 3 * single);
        let targeted: Vec<_> = report
            .rows
            .iter()
            .filter(|row| {
                matches!(
                    row.check,
                    Check::Compared {
                        min_share: Some(_),
                        ..
                    }
                )
            })
            .map(|row| row.measurement.as_str())
            .collect();
        assert_eq!(targeted, ["FindMissingBlobs: TLS + tokens / plain"]);
        assert!(report.to_markdown().contains("% of plain"));
    }

    /// `--metrics both`: every row without and with metrics, then the comparison rows,
    /// FindMissingBlobs held to the target; the run with metrics was scraped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_both_compares_every_row_with_metrics_off() {
        let modes = Modes::new(SecurityArg::Plain, MetricsArg::Both).unwrap();
        let report = run(&smoke(), None, modes)
            .await
            .expect("benchmark runs with and without metrics");
        let single = 2 * 2 * 2 + 2;
        assert_eq!(report.rows.len(), 3 * single);
        let targeted: Vec<_> = report
            .rows
            .iter()
            .filter(|row| {
                matches!(
                    row.check,
                    Check::Compared {
                        min_share: Some(_),
                        ..
                    }
                )
            })
            .map(|row| row.measurement.as_str())
            .collect();
        assert_eq!(targeted, ["FindMissingBlobs: metrics on / metrics off"]);
        assert!(report.to_markdown().contains("% of metrics off"));
        assert!(
            report
                .notes
                .iter()
                .any(|note| note.starts_with("[metrics on] Metrics on: ")),
            "{:?}",
            report.notes
        );
    }
}

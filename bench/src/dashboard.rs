//! `tessera-bench dashboard`: how long the coordinator takes to answer the dashboard's pages
//! when its history is full.
//!
//! 1. **Fill.** A real metadata store ([`RedbStore`]) in a temporary data directory, filled
//!    through [`JobHistory::record`], the same call the coordinator makes when a job finishes:
//!    10,000 jobs holding 1,000,000 test results (`--quick`: 1,000 and 100,000). One job has
//!    5,000 tests of its own; the others each run about a hundred of a few hundred tests spread
//!    over a few projects, so every such test has hundreds or thousands of runs. A share of the
//!    results are cached, flaky, failed (with output) or skipped; jobs have labels, several
//!    submitters and batch spans over a few agents. The store is flushed once at the end.
//! 2. **Pages.** A coordinator started in this process on that data directory, its HTTP port
//!    on loopback, and `GET`s over one kept-alive HTTP/1.1 connection of `/`, `/?result=failed`,
//!    `/jobs/{the 5,000-test job}`, `/tests/{a test with many runs}` and `/flaky`, each as HTML
//!    and as JSON (`Accept: application/json`), a few warm-ups then the timed requests one
//!    after another.
//!
//! Each row reports the server's own time from the answer's `Server-Timing: app;dur=<ms>`
//! header (the target: p95 ≤ [`MAX_P95_MS`]) and, for context, the latency the client saw and
//! the answer's size. Not here: what history costs a job ([`crate::job`], `--history`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use tempfile::TempDir;
use tessera_cas::meta::{Batch, MetadataStore, RedbStore};
use tessera_coordinator::CoordinatorConfig;
use tessera_coordinator::history::{BatchSpan, JobHistory, JobRecord, test_key};
use tessera_proto::tessera::v1::{TestFinished, TestOutcome, TestRef};

use crate::error::BenchError;
use crate::report::{self, Check, Environment, Layout, Report, Row};
use crate::server::InProcess;

/// Largest p95 of the server's time for one page, ms (from the issue).
pub(crate) const MAX_P95_MS: f64 = 100.0;
/// Tests of the one big job.
const BIG_JOB_TESTS: usize = 5_000;
/// Projects the other jobs belong to, and the tests each project's suite has.
const PROJECTS: [&str; 4] = ["web", "api", "core", "cli"];
const SUITE_TESTS: usize = 125;
const SUBMITTERS: [&str; 6] = ["alice", "bob", "carol", "ci/dave", "ci/erin", "frank"];
const BRANCHES: [&str; 4] = ["main", "main", "release-2.1", "feature/login"];
const AGENTS: usize = 8;
/// Tests per batch span.
const BATCH_TESTS: usize = 10;
/// How long one request may take before the benchmark gives up.
const REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// What one `dashboard` run measures.
#[derive(Debug, Clone)]
pub(crate) struct DashboardPlan {
    /// The command line that selects this plan, for the report.
    pub command: String,
    /// Jobs recorded.
    pub jobs: usize,
    /// Test results recorded over all jobs (the big job's included).
    pub results: usize,
    /// Untimed requests per page before the timed ones.
    pub warmup: usize,
    /// Timed requests per page.
    pub requests: usize,
}

impl DashboardPlan {
    /// The store: 10,000 jobs, 1,000,000 results; 50 requests per page.
    pub(crate) fn full() -> Self {
        DashboardPlan {
            command: "cargo run --release -p tessera-bench -- dashboard".to_owned(),
            jobs: 10_000,
            results: 1_000_000,
            warmup: 3,
            requests: 50,
        }
    }

    /// A smoke run: 1,000 jobs, 100,000 results; 20 requests per page. The targets stay.
    pub(crate) fn quick() -> Self {
        DashboardPlan {
            command: "cargo run --release -p tessera-bench -- dashboard --quick".to_owned(),
            jobs: 1_000,
            results: 100_000,
            requests: 20,
            ..DashboardPlan::full()
        }
    }
}

/// Runs `plan` with its data directory under `data_parent`.
pub(crate) async fn run(
    plan: &DashboardPlan,
    data_parent: Option<&Path>,
) -> Result<Report, BenchError> {
    let environment = Environment::here(&plan.command, data_parent);
    let dir = match data_parent {
        Some(parent) => tempfile::Builder::new()
            .prefix("tessera-bench-dashboard-")
            .tempdir_in(parent),
        None => tempfile::Builder::new()
            .prefix("tessera-bench-dashboard-")
            .tempdir(),
    }
    .map_err(|source| BenchError::Io {
        what: "create the data directory",
        source,
    })?;
    let data_dir = dir.path().join("data");
    progress(&format!(
        "filling the history: {} jobs, {} test results",
        report::thousands(plan.jobs),
        report::thousands(plan.results)
    ));
    let filled = {
        let (plan, meta_dir) = (plan.clone(), data_dir.join("meta"));
        tokio::task::spawn_blocking(move || fill(&plan, &meta_dir)).await??
    };
    progress(&format!(
        "filled in {:.1} s (then flushed in {:.2} s); starting the coordinator",
        filled.fill.as_secs_f64(),
        filled.flush.as_secs_f64()
    ));
    let server = PageServer::start(&dir, plan.jobs).await?;
    let measured = measure(plan, &server, &filled).await;
    server.stop().await?;
    let pages = measured?;
    Ok(summarize(plan, environment, &filled, &pages))
}

fn progress(message: &str) {
    eprintln!("tessera-bench: {message}");
}

/// What the fill wrote, and what the pages ask for.
#[derive(Debug, Clone)]
struct Filled {
    /// Time spent in `record` calls (and building their inputs).
    fill: Duration,
    /// The final flush.
    flush: Duration,
    /// Results recorded.
    results: usize,
    /// Of those, flaky and failed.
    flaky: usize,
    failed: usize,
    /// Distinct test keys.
    tests: usize,
    /// The job with [`BIG_JOB_TESTS`] tests.
    big_job: String,
    /// A test most jobs ran, and its runs (not counting its cached answers).
    busy_test: String,
    busy_runs: usize,
}

/// A deterministic generator (SplitMix64): the same store on every run.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }
}

/// The test `index` of `project`'s suite, named as its tool would (pytest ids with brackets,
/// Rust paths with `::`, Go subtests with `/`), so the pages' URL-encoding is exercised.
fn suite_test(project: &str, index: usize) -> TestRef {
    match project {
        "web" => TestRef {
            group: format!("tests/test_views_{}.py", index / 25),
            name: format!("TestViews::test_case_{index}[chromium-{}]", index % 3),
        },
        "api" => TestRef {
            group: "api/handlers".to_owned(),
            name: format!("TestHandler/case_{index}"),
        },
        "core" => TestRef {
            group: "tessera-core".to_owned(),
            name: format!("store::tests::case_{index}"),
        },
        _ => TestRef {
            group: String::new(),
            name: format!("cli_spec_{index}.sh"),
        },
    }
}

/// Output of a failed run: long enough to look like a real traceback.
fn failure_output(test: &TestRef, attempt: u32) -> String {
    let mut text = format!(
        "=== {} {} (attempt {attempt})\nassertion failed: left == right\n",
        test.group, test.name
    );
    for frame in 0..30 {
        text.push_str(&format!(
            "  at frame_{frame} (src/module_{frame}.rs:{}:{})\n",
            frame * 7 + 11,
            frame % 40
        ));
    }
    text
}

/// One result of `test` in a job, drawn from `dice`; `flaky_prone` tests flake more often.
fn result(dice: &mut Dice, test: TestRef, flaky_prone: bool, agent: &str) -> TestFinished {
    let micros = 2_000 + dice.next() % 1_500_000;
    let mut event = TestFinished {
        attempt: 1,
        r#final: true,
        duration: Some(prost_types::Duration {
            seconds: i64::try_from(micros / 1_000_000).unwrap_or(0),
            nanos: i32::try_from((micros % 1_000_000) * 1_000).unwrap_or(0),
        }),
        agent: agent.to_owned(),
        ..TestFinished::default()
    };
    if dice.chance(0.35) {
        event.cached = true;
        event.agent.clear();
        event.set_outcome(TestOutcome::Passed);
    } else if dice.chance(if flaky_prone { 0.15 } else { 0.003 }) {
        event.set_outcome(TestOutcome::Flaky);
        event.attempt = 2;
        event.failed_attempts = vec![failure_output(&test, 1)];
    } else if dice.chance(0.004) {
        event.set_outcome(TestOutcome::Failed);
        event.attempt = 2;
        event.output = failure_output(&test, 2);
    } else if dice.chance(0.02) {
        event.set_outcome(TestOutcome::Skipped);
    } else {
        event.set_outcome(TestOutcome::Passed);
    }
    event.test = Some(test);
    event
}

/// The job record of `tests`, with its counts.
fn job_record(
    dice: &mut Dice,
    index: usize,
    project: &str,
    created_unix_ms: u64,
    tests: &[TestFinished],
    spans: &[BatchSpan],
) -> JobRecord {
    let mut job = JobRecord {
        id: format!("j-{index:05}-{:08x}", dice.next() as u32),
        submitter: SUBMITTERS[dice.below(SUBMITTERS.len())].to_owned(),
        project: project.to_owned(),
        created_unix_ms,
        batches: u32::try_from(spans.len()).unwrap_or(u32::MAX),
        ..JobRecord::default()
    };
    job.title = match project {
        "web" => "run -- pytest -q tests".to_owned(),
        "api" => "run -- go test ./...".to_owned(),
        "core" => "run -- cargo test --workspace".to_owned(),
        _ => "run --runner command -- sh run.sh {tests}".to_owned(),
    };
    job.labels
        .insert("branch".to_owned(), BRANCHES[dice.below(4)].to_owned());
    if job.submitter.starts_with("ci/") {
        job.labels.insert("ci".to_owned(), "true".to_owned());
        job.labels
            .insert("pipeline".to_owned(), format!("{}", 40_000 + index));
    }
    for event in tests {
        let us = event.duration.as_ref().map_or(0, |d| {
            u64::try_from(d.seconds).unwrap_or(0) * 1_000_000
                + u64::try_from(d.nanos).unwrap_or(0) / 1_000
        });
        if !event.cached {
            job.serial_ms += us / 1_000;
        }
        match event.outcome() {
            TestOutcome::Passed if event.cached => {
                job.passed += 1;
                job.cached += 1;
            }
            TestOutcome::Passed => job.passed += 1,
            TestOutcome::Flaky => {
                job.passed += 1;
                job.flaky += 1;
            }
            TestOutcome::Failed => job.failed += 1,
            TestOutcome::Skipped => job.skipped += 1,
            _ => job.errors += 1,
        }
        job.total += 1;
    }
    job.wall_ms = spans.iter().map(|s| s.end_ms).max().unwrap_or(0) + 150;
    job.result = if dice.chance(0.003) {
        job.message = "cancelled by alice".to_owned();
        "cancelled".to_owned()
    } else if job.failed > 0 {
        "failed".to_owned()
    } else {
        "passed".to_owned()
    };
    job
}

/// Batch spans for `tests`: [`BATCH_TESTS`] a batch, on agent slots one after another.
fn spans_for(tests: &[TestFinished], slots: usize) -> Vec<BatchSpan> {
    let mut clock = vec![40u64; slots];
    let mut spans = Vec::new();
    for (n, chunk) in tests.chunks(BATCH_TESTS).enumerate() {
        let slot = n % slots;
        let ms: u64 = chunk
            .iter()
            .filter(|e| !e.cached)
            .filter_map(|e| e.duration.as_ref())
            .map(|d| {
                u64::try_from(d.seconds).unwrap_or(0) * 1_000
                    + u64::try_from(d.nanos).unwrap_or(0) / 1_000_000
            })
            .sum::<u64>()
            + 60;
        let start = clock[slot];
        clock[slot] += ms;
        spans.push(BatchSpan {
            agent: format!("agent-{}", slot % AGENTS),
            cell: String::new(),
            start_ms: start,
            end_ms: start + ms,
            tests: u32::try_from(chunk.len()).unwrap_or(u32::MAX),
            failed: u32::try_from(
                chunk
                    .iter()
                    .filter(|e| matches!(e.outcome(), TestOutcome::Failed | TestOutcome::Flaky))
                    .count(),
            )
            .unwrap_or(u32::MAX),
        });
    }
    spans
}

/// Fills the store in `meta_dir` as `plan` says, flushes and closes it.
fn fill(plan: &DashboardPlan, meta_dir: &Path) -> Result<Filled, BenchError> {
    let meta_error = |what: &str, e: tessera_cas::meta::MetaError| {
        BenchError::Unexpected(format!("failed to {what} the history: {e}"))
    };
    if plan.jobs < 2 || plan.results < BIG_JOB_TESTS + plan.jobs - 1 {
        return Err(BenchError::Unexpected(format!(
            "a fill needs at least 2 jobs and {BIG_JOB_TESTS} + one result per other job"
        )));
    }
    let meta: Arc<dyn MetadataStore> =
        Arc::new(RedbStore::open(meta_dir).map_err(|e| meta_error("open", e))?);
    let history =
        JobHistory::open(Arc::clone(&meta), plan.jobs).map_err(|e| meta_error("open", e))?;
    let mut dice = Dice(0x7e55_e7a0);
    // The other jobs share the rest evenly (the first `extra` one more each).
    let others = plan.jobs - 1;
    let rest = plan.results - BIG_JOB_TESTS;
    let (per_job, extra) = (rest / others, rest % others);
    if per_job + 1 > SUITE_TESTS {
        return Err(BenchError::Unexpected(format!(
            "{} results over {others} jobs is more than a suite of {SUITE_TESTS} tests a job",
            report::thousands(rest)
        )));
    }
    // Recent enough to look live; a job every 30 s before now.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let first_ms = now_ms.saturating_sub(plan.jobs as u64 * 30_000);
    let big_index = plan.jobs - plan.jobs / 10;
    let mut filled = Filled {
        fill: Duration::ZERO,
        flush: Duration::ZERO,
        results: 0,
        flaky: 0,
        failed: 0,
        tests: PROJECTS.len() * SUITE_TESTS + BIG_JOB_TESTS,
        big_job: String::new(),
        busy_test: test_key(&suite_test(PROJECTS[0], 0)),
        busy_runs: 0,
    };
    let started = Instant::now();
    let mut other = 0usize;
    for index in 0..plan.jobs {
        let created = first_ms + index as u64 * 30_000;
        let (project, tests) = if index == big_index {
            let tests: Vec<TestFinished> = (0..BIG_JOB_TESTS)
                .map(|n| {
                    let test = TestRef {
                        group: format!("monorepo/pkg_{:03}", n / 50),
                        name: format!("test_{n}"),
                    };
                    let agent = format!("agent-{}", n % AGENTS);
                    result(&mut dice, test, n % 97 == 0, &agent)
                })
                .collect();
            ("monorepo", tests)
        } else {
            let count = per_job + usize::from(other < extra);
            other += 1;
            let project = PROJECTS[dice.below(PROJECTS.len())];
            // A window of the suite; the first test (the busy one) runs in every job of the
            // first project.
            let offset = dice.below(SUITE_TESTS - count + 1);
            let tests: Vec<TestFinished> = std::iter::once(0)
                .chain((offset..offset + count).filter(|&n| n != 0))
                .take(count)
                .map(|n| {
                    let agent = format!("agent-{}", dice.below(AGENTS));
                    result(&mut dice, suite_test(project, n), n % 13 == 5, &agent)
                })
                .collect();
            // Its runs: a cached answer is listed with its job but is not a run of the test.
            if project == PROJECTS[0] && tests.first().is_some_and(|t| !t.cached) {
                filled.busy_runs += 1;
            }
            (project, tests)
        };
        let spans = spans_for(&tests, 4);
        let job = job_record(&mut dice, index, project, created, &tests, &spans);
        if index == big_index {
            filled.big_job = job.id.clone();
        }
        filled.results += tests.len();
        filled.flaky += usize::try_from(job.flaky).unwrap_or(0);
        filled.failed += usize::try_from(job.failed).unwrap_or(0);
        history
            .record(&job, &tests, &spans, Batch::new())
            .map_err(|e| meta_error("write", e))?;
        if (index + 1) % (plan.jobs / 10).max(1) == 0 {
            progress(&format!(
                "  {} jobs recorded in {:.1} s",
                report::thousands(index + 1),
                started.elapsed().as_secs_f64()
            ));
        }
    }
    filled.fill = started.elapsed();
    let flushing = Instant::now();
    meta.flush().map_err(|e| meta_error("flush", e))?;
    filled.flush = flushing.elapsed();
    if history.len() != plan.jobs {
        return Err(BenchError::Unexpected(format!(
            "the history keeps {} jobs after recording {}",
            history.len(),
            plan.jobs
        )));
    }
    // Closed before the coordinator opens the same file.
    drop(history);
    drop(meta);
    Ok(filled)
}

/// The coordinator on the filled data directory, in this process, and its HTTP port.
struct PageServer {
    server: InProcess,
    http: std::net::SocketAddr,
}

impl PageServer {
    async fn start(dir: &TempDir, jobs: usize) -> Result<Self, BenchError> {
        let config = CoordinatorConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            http_listen: Some(([127, 0, 0, 1], 0).into()),
            data_dir: dir.path().join("data"),
            // Keep every filled job (the default keeps 10,000).
            dashboard_jobs: jobs.max(CoordinatorConfig::default().dashboard_jobs),
            ..CoordinatorConfig::default()
        };
        let server = InProcess::start(config).await?;
        let http = server.coordinator().http_addr().ok_or_else(|| {
            BenchError::Unexpected("the coordinator serves no HTTP port".to_owned())
        })?;
        Ok(PageServer { server, http })
    }

    async fn stop(mut self) -> Result<(), BenchError> {
        self.server.stop().await
    }
}

/// A page as requested.
#[derive(Debug, Clone)]
struct Page {
    /// How the report names it.
    name: String,
    /// The request's path and query.
    path: String,
    /// `Accept: application/json`.
    json: bool,
    /// Text the answer must contain (so an empty or wrong page does not pass as fast).
    must_contain: String,
}

/// One page's timings.
#[derive(Debug, Clone)]
struct Timed {
    page: Page,
    /// The server's time per request (`Server-Timing`), ms.
    server_ms: Vec<f64>,
    /// Request sent to the whole body read, ms.
    client_ms: Vec<f64>,
    /// Body bytes of the last answer.
    bytes: usize,
}

/// `text` percent-encoded for one path segment: everything but unreserved characters.
fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn pages(filled: &Filled) -> Vec<Page> {
    let busy = &filled.busy_test;
    let mut pages = Vec::new();
    for json in [false, true] {
        let kind = if json { "JSON" } else { "HTML" };
        // Job ids, test names and keys have no character HTML or JSON escapes, so the raw
        // text must appear in both.
        for (name, path, must_contain) in [
            ("`/` (jobs)".to_owned(), "/".to_owned(), "j-".to_owned()),
            (
                "`/?result=failed`".to_owned(),
                "/?result=failed".to_owned(),
                "j-".to_owned(),
            ),
            (
                format!(
                    "`/jobs/{{id}}` ({} tests)",
                    report::thousands(BIG_JOB_TESTS)
                ),
                format!("/jobs/{}", encode_segment(&filled.big_job)),
                "monorepo/pkg_099".to_owned(),
            ),
            (
                format!(
                    "`/tests/{{key}}` ({} runs)",
                    report::thousands(filled.busy_runs)
                ),
                format!("/tests/{}", encode_segment(busy)),
                "j-".to_owned(),
            ),
            (
                "`/flaky`".to_owned(),
                "/flaky".to_owned(),
                "case_".to_owned(),
            ),
        ] {
            pages.push(Page {
                name: format!("{name}, {kind}"),
                path,
                json,
                must_contain,
            });
        }
    }
    pages
}

/// A kept-alive HTTP/1.1 connection to the coordinator's HTTP port.
struct PageClient {
    sender: SendRequest<Empty<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
    host: String,
}

/// One answer.
struct Answer {
    server_ms: f64,
    client_ms: f64,
    body: Bytes,
}

impl PageClient {
    async fn connect(addr: std::net::SocketAddr) -> Result<Self, BenchError> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| BenchError::Io {
                what: "connect to the coordinator's HTTP port",
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| BenchError::Unexpected(format!("HTTP handshake: {e}")))?;
        let driver = tokio::spawn(async move {
            // The connection ends when the client is dropped; an error shows in the next send.
            let _ = connection.await;
        });
        Ok(PageClient {
            sender,
            driver,
            host: addr.to_string(),
        })
    }

    /// `GET page`: it must answer 200 with a `Server-Timing` header and the page's text.
    async fn get(&mut self, page: &Page) -> Result<Answer, BenchError> {
        let failed = |why: String| BenchError::Unexpected(format!("GET {}: {why}", page.path));
        let request = hyper::Request::get(page.path.as_str())
            .header("host", self.host.as_str())
            .header(
                "accept",
                if page.json {
                    "application/json"
                } else {
                    "text/html"
                },
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| failed(e.to_string()))?;
        let started = Instant::now();
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| failed(e.to_string()))?;
            let response = self
                .sender
                .send_request(request)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| failed(e.to_string()))?
                .to_bytes();
            Ok::<_, BenchError>((parts, body))
        };
        let (parts, body) = tokio::time::timeout(REQUEST_LIMIT, exchange)
            .await
            .map_err(|_| failed(format!("no answer within {REQUEST_LIMIT:?}")))??;
        let client_ms = started.elapsed().as_secs_f64() * 1e3;
        if parts.status != hyper::StatusCode::OK {
            return Err(failed(format!(
                "HTTP {}: {}",
                parts.status,
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )));
        }
        let timing = parts
            .headers
            .get("server-timing")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| failed("no Server-Timing header".to_owned()))?;
        let server_ms = server_time(timing)
            .ok_or_else(|| failed(format!("Server-Timing without app;dur=: {timing}")))?;
        if page.json {
            serde_json::from_slice::<serde_json::Value>(&body)
                .map_err(|e| failed(format!("the JSON answer does not parse: {e}")))?;
        }
        if !String::from_utf8_lossy(&body).contains(&page.must_contain) {
            return Err(failed(format!(
                "the answer ({} bytes) does not mention {:?}",
                body.len(),
                page.must_contain
            )));
        }
        Ok(Answer {
            server_ms,
            client_ms,
            body,
        })
    }
}

impl Drop for PageClient {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The `dur` of the `app` metric of a `Server-Timing` header value (`app;dur=12.5`, maybe
/// among others).
fn server_time(header: &str) -> Option<f64> {
    header.split(',').find_map(|metric| {
        let mut params = metric.trim().split(';');
        if params.next()?.trim() != "app" {
            return None;
        }
        params.find_map(|p| p.trim().strip_prefix("dur=")?.trim().parse().ok())
    })
}

async fn measure(
    plan: &DashboardPlan,
    server: &PageServer,
    filled: &Filled,
) -> Result<Vec<Timed>, BenchError> {
    let mut client = PageClient::connect(server.http).await?;
    let mut timed = Vec::new();
    for page in pages(filled) {
        progress(&format!(
            "{}: {} requests (+{} warm-up)",
            page.name, plan.requests, plan.warmup
        ));
        for _ in 0..plan.warmup {
            client.get(&page).await?;
        }
        let mut run = Timed {
            page,
            server_ms: Vec::with_capacity(plan.requests),
            client_ms: Vec::with_capacity(plan.requests),
            bytes: 0,
        };
        for _ in 0..plan.requests {
            let answer = client.get(&run.page).await?;
            run.server_ms.push(answer.server_ms);
            run.client_ms.push(answer.client_ms);
            run.bytes = answer.body.len();
        }
        timed.push(run);
    }
    Ok(timed)
}

fn summarize(
    plan: &DashboardPlan,
    environment: Environment,
    filled: &Filled,
    pages: &[Timed],
) -> Report {
    let workload = format!(
        "{} jobs, {} results",
        report::thousands(plan.jobs),
        report::thousands(filled.results)
    );
    let rows = pages
        .iter()
        .map(|timed| {
            let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
            Row {
                measurement: timed.page.name.clone(),
                digest: String::new(),
                workload: workload.clone(),
                check: Check::ServerTime {
                    samples: timed.server_ms.len(),
                    p50_ms: report::percentile(&timed.server_ms, 0.5),
                    p95_ms: report::percentile(&timed.server_ms, 0.95),
                    max_ms: max(&timed.server_ms),
                    client_p50_ms: report::percentile(&timed.client_ms, 0.5),
                    client_p95_ms: report::percentile(&timed.client_ms, 0.95),
                    client_max_ms: max(&timed.client_ms),
                    bytes: timed.bytes,
                    max_p95_ms: MAX_P95_MS,
                },
            }
        })
        .collect();
    let notes = vec![
        format!(
            "Store: a RedbStore filled through JobHistory::record (the coordinator's own write \
             path, one commit per job, one flush at the end) with {} jobs and {} test results \
             ({} flaky, {} failed with output; about 35% cached) over {} distinct tests: one job \
             of {} tests, the others about {} tests each from one of {} projects' suites of {} \
             tests; 6 submitters, branch and CI labels, batch spans on {AGENTS} agents. Filled \
             in {:.1} s, flushed in {:.2} s.",
            report::thousands(plan.jobs),
            report::thousands(filled.results),
            report::thousands(filled.flaky),
            report::thousands(filled.failed),
            report::thousands(filled.tests),
            report::thousands(BIG_JOB_TESTS),
            (plan.results - BIG_JOB_TESTS) / (plan.jobs - 1),
            PROJECTS.len(),
            SUITE_TESTS,
            filled.fill.as_secs_f64(),
            filled.flush.as_secs_f64()
        ),
        format!(
            "Pages: a coordinator started in this process on that data directory; {} GETs per \
             page (after {} warm-ups) one after another over one kept-alive HTTP/1.1 \
             connection, HTML (`Accept: text/html`) and JSON (`Accept: application/json`). \
             Server = the answer's `Server-Timing: app;dur=` (p95 must be ≤ {MAX_P95_MS} ms); \
             client = request sent to body read, for context. The test page is `{}`.",
            plan.requests, plan.warmup, filled.busy_test
        ),
    ];
    Report {
        environment,
        layout: Layout::Execution,
        rows,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_timing_is_read_from_the_app_metric() {
        assert_eq!(server_time("app;dur=12.5"), Some(12.5));
        assert_eq!(server_time("db;dur=3, app;desc=\"x\";dur=7"), Some(7.0));
        assert_eq!(server_time("db;dur=3"), None);
        assert_eq!(server_time("app"), None);
    }

    #[test]
    fn test_keys_are_encoded_as_one_path_segment() {
        assert_eq!(
            encode_segment("tests/a.py T::t[x-1]"),
            "tests%2Fa.py%20T%3A%3At%5Bx-1%5D"
        );
    }

    #[test]
    fn a_small_fill_records_every_job_and_result() {
        let dir = tempfile::tempdir().unwrap();
        let plan = DashboardPlan {
            jobs: 20,
            results: BIG_JOB_TESTS + 19 * 50 + 7,
            ..DashboardPlan::quick()
        };
        let filled = fill(&plan, &dir.path().join("meta")).unwrap();
        assert_eq!(filled.results, plan.results);
        let meta: Arc<dyn MetadataStore> =
            Arc::new(RedbStore::open(dir.path().join("meta")).unwrap());
        let history = JobHistory::open(meta, 100).unwrap();
        assert_eq!(history.len(), 20);
        assert_eq!(history.tests(&filled.big_job).unwrap().len(), BIG_JOB_TESTS);
        let runs = history.runs(&filled.busy_test, 1_000).unwrap();
        assert_eq!(runs.len(), filled.busy_runs);
    }
}

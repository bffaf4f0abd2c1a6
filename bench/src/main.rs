//! `tessera-bench`: measures Tessera on this machine and prints each result beside the limits
//! or baselines measured in the same run and the target it is held to. A doorway: parse flags,
//! run one benchmark, print the report, map the outcome to an exit code.
//!
//! Exit codes: 0 measured (with `--check`: and every target passed), 1 `--check` and a target
//! was missed, 2 usage error, 3 the benchmark could not run.

mod actions;
mod answers;
mod batch;
mod bazel;
mod cas;
mod compare;
mod cpu;
mod crosscheck;
mod dashboard;
mod error;
mod job;
mod limits;
mod link;
mod metrics;
mod processes;
mod reopen;
mod report;
mod sched;
mod security;
mod selfrun;
mod server;
mod shard;
mod sim_agent;
mod suite_repo;
mod suites;
mod world;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::bazel::BazelPlan;
use crate::cas::CasPlan;
use crate::compare::Modes;
use crate::dashboard::DashboardPlan;
use crate::error::BenchError;
use crate::job::{HistoryArg, JobPlan};
use crate::metrics::MetricsArg;
use crate::reopen::ReopenPlan;
use crate::report::{Report, Verdict};
use crate::sched::SchedPlan;
use crate::security::SecurityArg;
use crate::suites::SuitesPlan;

/// Exit code when `--check` is given and a target was missed.
const EXIT_MISSED: u8 = 1;
/// Exit code for a usage error (as clap uses).
const EXIT_USAGE: u8 = 2;
/// Exit code when the benchmark could not run.
const EXIT_INFRA: u8 = 3;

#[derive(Parser)]
#[command(
    name = "tessera-bench",
    about = "Benchmarks for Tessera, run against an in-process coordinator",
    after_help = "Exit codes: 0 measured, 1 --check and a target missed, 2 usage error, 3 the benchmark could not run."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Content store: ByteStream throughput (1 MiB and 256 MiB blobs, SHA-256 and BLAKE3),
    /// FindMissingBlobs latency for 15,000 digests, and 4 KiB ByteStream writes per second.
    ///
    /// Runs a coordinator in this process (its own runtime, real gRPC over loopback TCP, a
    /// disk store in a temporary directory) and prints a markdown table.
    Cas(CasArgs),
    /// Scheduler: actions per second and submit-to-lease latency with many simulated agents,
    /// then real `/bin/true` actions through real agents with their CPU cost per action.
    ///
    /// The simulated part runs the coordinator in this process; the real part runs
    /// `tessera coordinator` and `tessera agent` child processes from the `tessera` binary
    /// beside this one (build it with `cargo build --release -p tessera-cli`). Clients speak
    /// real gRPC over loopback TCP.
    Sched(SchedArgs),
    /// Bazel on the fixture workspace: remote execution against a local build (cold, and fully
    /// cached), and the coordinator's and agents' CPU per remote action.
    ///
    /// Runs `tessera coordinator` and `tessera agent` as child processes from the `tessera`
    /// binary beside this one (build it with `cargo build --release -p tessera-cli`) and
    /// Debian's Bazel 4.2.3 (installed with `.ci/install-deps.sh` if missing).
    Bazel(BazelArgs),
    /// Sharding: how evenly the shard planner spreads a heavy-tailed suite of 2,000 tests over
    /// 4, 16 and 64 slots, beside static longest-first and count partitioning.
    ///
    /// A simulation on a simulated clock (the noise off, then slot speeds and run times
    /// varying), then a real run of sleeping tests on threads, timed by the wall clock.
    Shard(ShardArgs),
    /// Test jobs: a cached re-run of 1,000 tests in a 10,000-file repository, timed as the
    /// whole `tessera run` process (with a coordinator, and with zero setup), and the fixed
    /// overhead of one batch action on an agent.
    ///
    /// Runs `tessera coordinator`, `tessera agent`, `tessera up` and `tessera run` as child
    /// processes from the `tessera` binary beside this one (build it with `cargo build
    /// --release -p tessera-cli`), and `git` to make the fixture repository.
    Job(JobArgs),
    /// Blob store start-up with a large store: fills a disk store with 100,000 blobs, then
    /// times reopening it after a clean close, after its index was lost (every file hashed and
    /// adopted, beside this machine's hash rate for the same files) and after adoption.
    ///
    /// Runs the real disk store and metadata store in this process (no coordinator, no gRPC)
    /// in a temporary directory.
    Reopen(ReopenArgs),
    /// Real suites (the fidelity tests' pinned world suites, each whole): a first `tessera
    /// run` against the project's command run directly, a cached re-run, tool start-ups and
    /// batches, and whether both answers count the same.
    ///
    /// Fetches the suites with tests/world/fetch.sh into ~/.cache/tessera-world, then runs
    /// each directly and through a fresh `tessera coordinator` and one `tessera agent` with a
    /// slot per core (child processes of the `tessera` binary beside this one: build it with
    /// `cargo build --release -p tessera-cli`). Needs python3, cargo and go (the Go sources
    /// from Debian: .ci/install-deps.sh); leave a suite out with --suite.
    Suites(SuitesArgs),
    /// Dashboard pages with a full history: fills a metadata store with 10,000 finished jobs
    /// and 1,000,000 test results through the coordinator's history, then times the server
    /// (its `Server-Timing`) for `/`, `/?result=failed`, `/jobs/{id}` of a 5,000-test job,
    /// `/tests/{key}` and `/flaky`, as HTML and as JSON.
    ///
    /// Runs the real metadata store and a coordinator in this process (its own runtime, its
    /// HTTP port on loopback) in a temporary directory.
    Dashboard(DashboardArgs),
    /// Our own suite: cold and warm `tessera run -- cargo test --workspace` on the embedded
    /// cluster against `cargo nextest run --workspace` (and `cargo test --doc`), on fresh clones
    /// of HEAD with fresh target directories and cluster state, in one run; then whether
    /// `tessera run` reported exactly the tests the tools list, all passed.
    ///
    /// Runs the `tessera` binary beside this one (build it with `cargo build --release -p
    /// tessera-cli`), cargo and cargo-nextest as child processes. About 20 minutes for the
    /// workspace on 2 cores; --quick tests one small crate. The figures behind `.ci/test.sh`'s
    /// default runner.
    #[command(name = "self")]
    SelfRun(SelfArgs),
    /// Not a benchmark: CI's check (`.ci/test.sh`, mode `tessera`) that `tessera run` ran
    /// exactly the tests `cargo nextest list` and `cargo test --doc -- --list` list, and that
    /// every one passed. Names each test missing, extra, repeated or not passed.
    ///
    /// Exit codes: 0 the same tests, all passed; 1 a difference or a failure; 3 an input
    /// could not be read.
    Crosscheck(CrosscheckArgs),
}

#[derive(Args)]
struct SelfArgs {
    /// Only `-p tessera-config` on both sides, to try the benchmark out. The targets stay the
    /// same.
    #[arg(long)]
    quick: bool,
    /// Only these packages on both sides (repeat, or separate with commas) [default: the
    /// workspace].
    #[arg(
        long = "package",
        short = 'p',
        value_name = "NAME",
        value_delimiter = ','
    )]
    packages: Vec<String>,
    /// The `tessera` binary [default: `tessera` beside this executable].
    #[arg(long, value_name = "PATH")]
    tessera: Option<PathBuf>,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct CrosscheckArgs {
    /// `tessera run --json`'s output.
    #[arg(long, value_name = "FILE")]
    events: PathBuf,
    /// `tessera run --junit`'s report, held against the events too.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// `cargo nextest list --message-format json`'s output.
    #[arg(long, value_name = "FILE")]
    nextest_list: PathBuf,
    /// `cargo test --doc -- --list`'s stdout and stderr, in one file.
    #[arg(long, value_name = "FILE")]
    doc_list: PathBuf,
}

#[derive(Args)]
struct DashboardArgs {
    /// 1,000 jobs and 100,000 results instead of 10,000 and 1,000,000; 20 requests a page
    /// instead of 50. The targets stay the same.
    #[arg(long)]
    quick: bool,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct SuitesArgs {
    /// One cached re-run per suite instead of 3. The targets stay the same.
    #[arg(long)]
    quick: bool,
    /// Only these suites (repeat, or separate with commas) [default: all: dateutil,
    /// markupsafe, more-itertools, smallvec, thiserror-workspace, memoffset, go-cmp,
    /// pkg-errors].
    #[arg(long = "suite", value_name = "NAME", value_delimiter = ',')]
    suites: Vec<String>,
    /// The `tessera` binary [default: `tessera` beside this executable].
    #[arg(long, value_name = "PATH")]
    tessera: Option<PathBuf>,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct ReopenArgs {
    /// 10,000 blobs instead of 100,000, fewer reopens and one adoption. The targets stay the
    /// same.
    #[arg(long)]
    quick: bool,
    /// Blobs to fill the store with [default: 100,000; 10,000 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    blobs: Option<u64>,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct JobArgs {
    /// 3 re-runs per mode instead of 5, and 15 batches instead of 50. The targets stay the
    /// same.
    #[arg(long)]
    quick: bool,
    /// The history of finished jobs the dashboard shows: on (recorded, as deployed), off
    /// (`TESSERA_DASHBOARD_JOBS=0`), or both, then what the history costs a job on the
    /// coordinator (the job's time there with it must stay within 105% of the time without).
    /// `off` and `both` measure the `--coordinator` mode only (the embedded clusters of zero
    /// setup always record), with three times the re-runs for `both`, interleaved.
    #[arg(long, value_enum, default_value_t)]
    history: HistoryArg,
    /// The `tessera` binary [default: `tessera` beside this executable].
    #[arg(long, value_name = "PATH")]
    tessera: Option<PathBuf>,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct ShardArgs {
    /// Fewer seeds and a real run of a few seconds. The targets stay the same.
    #[arg(long)]
    quick: bool,
    /// Fixed overhead of one batch, milliseconds [default: the planner's default, 50].
    #[arg(long, value_name = "MS")]
    overhead_ms: Option<u64>,
    /// The pull planner's minimum batch, milliseconds [default: the planner's default].
    #[arg(long, value_name = "MS")]
    min_batch_ms: Option<u64>,
    /// The pull planner's batch share, in (0, 1] [default: the planner's default].
    #[arg(long, value_name = "SHARE")]
    batch_share: Option<f64>,
    /// The pull planner's longest batch, milliseconds; 0 for no cap [default: the job
    /// driver's, 10,000].
    #[arg(long, value_name = "MS")]
    max_batch_ms: Option<u64>,
    /// Skip the real run with sleeping tests.
    #[arg(long)]
    no_real: bool,
    /// Print the report as JSON instead of a markdown table.
    #[arg(long)]
    json: bool,
    /// Exit with code 1 if any target is missed.
    #[arg(long)]
    check: bool,
}

/// Flags every benchmark takes.
#[derive(Args)]
struct Output {
    /// Print the report as JSON instead of a markdown table.
    #[arg(long)]
    json: bool,
    /// Exit with code 1 if any target is missed.
    #[arg(long)]
    check: bool,
    /// Directory under which the temporary data directories are created
    /// [default: the system temporary directory]. Put it on the disk you want to measure.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct CasArgs {
    /// Smaller workloads for a smoke run (16 MiB instead of 256 MiB blobs, fewer calls).
    /// The targets stay the same.
    #[arg(long)]
    quick: bool,
    /// The coordinator under test: plain, with TLS and tokens (certificates made with
    /// `openssl`), or both one after the other, then what TLS and tokens cost per row
    /// (FindMissingBlobs must keep 90% of its plain throughput).
    #[arg(long, value_enum, default_value_t)]
    security: SecurityArg,
    /// The coordinator's metrics: on (recorded, /metrics scraped every second), off (not
    /// recorded, no HTTP port), or both one after the other, then what metrics cost per row
    /// (FindMissingBlobs must keep 95% of its throughput without them). Not with `--security
    /// both`.
    #[arg(long, value_enum, default_value_t)]
    metrics: MetricsArg,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct SchedArgs {
    /// Fewer actions for a smoke run (2,000 instead of 20,000; one sandbox mode). The targets
    /// stay the same.
    #[arg(long)]
    quick: bool,
    /// Simulated agents [default: 50].
    #[arg(long, value_name = "N")]
    agents: Option<usize>,
    /// Slots per simulated agent [default: 4].
    #[arg(long, value_name = "N")]
    slots: Option<u32>,
    /// Actions timed against the simulated agents [default: 20,000].
    #[arg(long, value_name = "N")]
    actions: Option<usize>,
    /// Load levels to measure, as Execute calls in flight at once [default: 16,64].
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    in_flight: Vec<usize>,
    /// Real agents for the `/bin/true` part [default: 2].
    #[arg(long, value_name = "N")]
    real_agents: Option<usize>,
    /// Slots per real agent [default: 2].
    #[arg(long, value_name = "N")]
    real_slots: Option<u32>,
    /// Real actions timed per sandbox mode [default: 2,000].
    #[arg(long, value_name = "N")]
    real_actions: Option<usize>,
    /// The `tessera` binary for the real agents [default: `tessera` beside this executable].
    #[arg(long, value_name = "PATH")]
    tessera: Option<PathBuf>,
    /// The coordinators under test: plain, with TLS and tokens (certificates made with
    /// `openssl`), or both one after the other, then what TLS and tokens cost per row
    /// (scheduler capacity must keep 90% of its plain figure).
    #[arg(long, value_enum, default_value_t)]
    security: SecurityArg,
    /// The in-process coordinator's metrics: on (recorded, /metrics scraped every second),
    /// off (not recorded, no HTTP port), or both one after the other, then what metrics cost
    /// per row (scheduler capacity must keep 95% of its figure without them). `off` and
    /// `both` leave out the real-agent rows (child processes always record). Not with
    /// `--security both`.
    #[arg(long, value_enum, default_value_t)]
    metrics: MetricsArg,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct BazelArgs {
    /// One run of each build instead of three.
    #[arg(long)]
    quick: bool,
    /// Runs of each build; the medians are reported [default: 3].
    #[arg(long, value_name = "N")]
    runs: Option<usize>,
    /// The `tessera` binary [default: `tessera` beside this executable].
    #[arg(long, value_name = "PATH")]
    tessera: Option<PathBuf>,
    #[command(flatten)]
    output: Output,
}

fn main() -> ExitCode {
    // As `tessera` does: the in-process coordinator and clients are measured as they run.
    tessera_cas::alloc::keep_freed_memory();
    let cli = Cli::parse();
    match cli.command {
        Command::Cas(args) => {
            let plan = if args.quick {
                CasPlan::quick()
            } else {
                CasPlan::full()
            };
            let modes = match Modes::new(args.security, args.metrics) {
                Ok(modes) => modes,
                Err(why) => return usage(&why),
            };
            let data = args.output.data_dir.clone();
            finish(
                block_on(async move { cas::run(&plan, data.as_deref(), modes).await }),
                &args.output,
            )
        }
        Command::Sched(args) => {
            let modes = match Modes::new(args.security, args.metrics) {
                Ok(modes) => modes,
                Err(why) => return usage(&why),
            };
            let mut plan = if args.quick {
                SchedPlan::quick()
            } else {
                SchedPlan::full()
            };
            let overridden = args.agents.is_some()
                || args.slots.is_some()
                || args.actions.is_some()
                || !args.in_flight.is_empty()
                || args.real_agents.is_some()
                || args.real_slots.is_some()
                || args.real_actions.is_some();
            plan.agents = args.agents.unwrap_or(plan.agents);
            plan.slots = args.slots.unwrap_or(plan.slots);
            plan.actions = args.actions.unwrap_or(plan.actions);
            if !args.in_flight.is_empty() {
                plan.loads = args.in_flight.clone();
            }
            plan.real.agents = args.real_agents.unwrap_or(plan.real.agents);
            plan.real.slots = args.real_slots.unwrap_or(plan.real.slots);
            plan.real.actions = args.real_actions.unwrap_or(plan.real.actions);
            if overridden {
                plan.command = std::env::args().collect::<Vec<_>>().join(" ");
            }
            plan.real.tessera = args.tessera.clone();
            let data = args.output.data_dir.clone();
            finish(
                block_on(async move { sched::run(&plan, data.as_deref(), modes).await }),
                &args.output,
            )
        }
        Command::Shard(args) => run_shard(&args),
        Command::Job(args) => {
            let mut plan = if args.quick {
                JobPlan::quick()
            } else {
                JobPlan::full()
            };
            plan.tessera = args.tessera.clone();
            plan.with_history(args.history);
            let data = args.output.data_dir.clone();
            finish(
                block_on(async move { job::run(&plan, data.as_deref()).await }),
                &args.output,
            )
        }
        Command::Reopen(args) => {
            let mut plan = if args.quick {
                ReopenPlan::quick()
            } else {
                ReopenPlan::full()
            };
            if let Some(blobs) = args.blobs {
                plan.blobs = usize::try_from(blobs).unwrap_or(usize::MAX);
                plan.command = std::env::args().collect::<Vec<_>>().join(" ");
            }
            finish(
                reopen::run(&plan, args.output.data_dir.as_deref()),
                &args.output,
            )
        }
        Command::Suites(args) => run_suites(&args),
        Command::Dashboard(args) => {
            let plan = if args.quick {
                DashboardPlan::quick()
            } else {
                DashboardPlan::full()
            };
            let data = args.output.data_dir.clone();
            finish(
                block_on(async move { dashboard::run(&plan, data.as_deref()).await }),
                &args.output,
            )
        }
        Command::SelfRun(args) => {
            let mut plan = if args.quick {
                selfrun::SelfPlan::quick()
            } else {
                selfrun::SelfPlan::full()
            };
            if !args.packages.is_empty() {
                plan.packages = args.packages.clone();
                plan.command = std::env::args().collect::<Vec<_>>().join(" ");
            }
            plan.tessera = args.tessera.clone();
            finish(
                selfrun::run(&plan, args.output.data_dir.as_deref()),
                &args.output,
            )
        }
        Command::Crosscheck(args) => run_crosscheck(&args),
        Command::Bazel(args) => {
            let mut plan = if args.quick {
                BazelPlan::quick()
            } else {
                BazelPlan::full()
            };
            if let Some(runs) = args.runs {
                plan.runs = runs.max(1);
                plan.command = std::env::args().collect::<Vec<_>>().join(" ");
            }
            plan.tessera = args.tessera.clone();
            let data = args.output.data_dir.clone();
            finish(
                block_on(async move { bazel::run(&plan, data.as_deref()).await }),
                &args.output,
            )
        }
    }
}

/// Reports a usage error.
fn usage(why: &str) -> ExitCode {
    eprintln!("tessera-bench: {why}");
    ExitCode::from(EXIT_USAGE)
}

/// Runs `benchmark` on a fresh client runtime.
fn block_on(
    benchmark: impl Future<Output = Result<Report, BenchError>>,
) -> Result<Report, BenchError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-main")
        .build()
        .map_err(|source| BenchError::Io {
            what: "start the client runtime",
            source,
        })?
        .block_on(benchmark)
}

/// Prints the report and maps the outcome to the exit code.
fn finish(outcome: Result<Report, BenchError>, output: &Output) -> ExitCode {
    let report = match outcome {
        Ok(report) => report,
        Err(error) => {
            eprintln!("tessera-bench: {error}");
            return ExitCode::from(EXIT_INFRA);
        }
    };
    if output.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_markdown());
    }
    if output.check && report.rows.iter().any(|row| row.verdict() == Verdict::Miss) {
        return ExitCode::from(EXIT_MISSED);
    }
    ExitCode::SUCCESS
}

/// Runs the `suites` benchmark (child processes only: no runtime).
fn run_suites(args: &SuitesArgs) -> ExitCode {
    let suites = match world::select(&args.suites) {
        Ok(suites) => suites,
        Err(why) => {
            return usage(&format!("--suite: {why}"));
        }
    };
    let mut plan = if args.quick {
        SuitesPlan::quick(suites)
    } else {
        SuitesPlan::full(suites)
    };
    if !args.suites.is_empty() {
        plan.command = std::env::args().collect::<Vec<_>>().join(" ");
    }
    plan.tessera = args.tessera.clone();
    finish(
        suites::run(&plan, args.output.data_dir.as_deref()),
        &args.output,
    )
}

/// CI's cross-check of `tessera run` against the tools' listings.
fn run_crosscheck(args: &CrosscheckArgs) -> ExitCode {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let checked = (|| {
        let mut listed =
            crosscheck::nextest_list(&read(&args.nextest_list)?).map_err(|e| e.to_string())?;
        listed.extend(crosscheck::doctest_list(&read(&args.doc_list)?).map_err(|e| e.to_string())?);
        let reported =
            crosscheck::tessera_events(&read(&args.events)?).map_err(|e| e.to_string())?;
        let junit = match &args.junit {
            Some(path) => Some(crosscheck::junit_tests(&read(path)?).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok::<_, String>((
            listed.len(),
            crosscheck::compare(&listed, &reported, junit.as_ref()),
        ))
    })();
    match checked {
        Ok((listed, findings)) if findings.is_clean() => {
            println!("crosscheck: tessera run ran the {listed} tests the tools list, all passed");
            ExitCode::SUCCESS
        }
        Ok((listed, findings)) => {
            eprint!(
                "crosscheck: tessera run against the {listed} tests the tools list:\n{findings}"
            );
            ExitCode::from(EXIT_MISSED)
        }
        Err(why) => {
            eprintln!("crosscheck: {why}");
            ExitCode::from(EXIT_INFRA)
        }
    }
}

/// Runs the `shard` benchmark (no coordinator, no runtime: a simulation and sleeping threads).
fn run_shard(args: &ShardArgs) -> ExitCode {
    let mut plan = if args.quick {
        shard::ShardPlan::quick()
    } else {
        shard::ShardPlan::full()
    };
    if let Some(ms) = args.overhead_ms {
        plan.planner.batch_overhead = std::time::Duration::from_millis(ms);
    }
    if let Some(ms) = args.min_batch_ms {
        plan.planner.min_batch = std::time::Duration::from_millis(ms);
    }
    if let Some(share) = args.batch_share {
        if !(share > 0.0 && share <= 1.0) {
            return usage(&format!("--batch-share must be in (0, 1], not {share}"));
        }
        plan.planner.batch_share = share;
    }
    if let Some(ms) = args.max_batch_ms {
        plan.planner.max_batch = (ms > 0).then(|| std::time::Duration::from_millis(ms));
    }
    if args.no_real {
        plan.real = None;
    }
    let custom = args.max_batch_ms.is_some()
        || args.overhead_ms.is_some()
        || args.min_batch_ms.is_some()
        || args.batch_share.is_some()
        || args.no_real;
    if custom {
        plan.command = std::env::args().collect::<Vec<_>>().join(" ");
    }
    let report = shard::run(&plan);
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_markdown());
    }
    if args.check && report.missed() {
        return ExitCode::from(EXIT_MISSED);
    }
    ExitCode::SUCCESS
}

//! `tessera-bench`: measures Tessera on this machine and prints each result beside the limits
//! measured in the same run and the target it is held to. A doorway: parse flags, run one
//! benchmark, print the report, map the outcome to an exit code.
//!
//! Exit codes: 0 measured (with `--check`: and every target passed), 1 `--check` and a target
//! was missed, 2 usage error, 3 the benchmark could not run.

mod cas;
mod error;
mod limits;
mod report;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::cas::CasPlan;
use crate::error::BenchError;
use crate::report::Verdict;

/// Exit code when `--check` is given and a target was missed.
const EXIT_MISSED: u8 = 1;
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
}

#[derive(Args)]
struct CasArgs {
    /// Smaller workloads for a smoke run (16 MiB instead of 256 MiB blobs, fewer calls).
    /// The targets stay the same.
    #[arg(long)]
    quick: bool,
    /// Print the report as JSON instead of a markdown table.
    #[arg(long)]
    json: bool,
    /// Exit with code 1 if any target is missed.
    #[arg(long)]
    check: bool,
    /// Directory under which the coordinator's temporary data directory is created
    /// [default: the system temporary directory]. Put it on the disk you want to measure.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Cas(args) => run_cas(&args),
    }
}

fn run_cas(args: &CasArgs) -> ExitCode {
    let plan = if args.quick {
        CasPlan::quick()
    } else {
        CasPlan::full()
    };
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-client")
        .build()
        .map_err(|source| BenchError::Io {
            what: "start the client runtime",
            source,
        })
        .and_then(|runtime| runtime.block_on(cas::run(&plan, args.data_dir.as_deref())));
    let report = match outcome {
        Ok(report) => report,
        Err(error) => {
            eprintln!("tessera-bench: {error}");
            return ExitCode::from(EXIT_INFRA);
        }
    };
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_markdown());
    }
    if args.check && report.rows.iter().any(|row| row.verdict() == Verdict::Miss) {
        return ExitCode::from(EXIT_MISSED);
    }
    ExitCode::SUCCESS
}

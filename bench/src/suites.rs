//! `tessera-bench suites`: first runs of real suites through Tessera against their tools run
//! directly, on this machine (issue 11, "How to show it").
//!
//! The suites are the world's suites of the fidelity tests ([`crate::world`]), each whole as
//! its project documents it. For each, on fresh copies of its tree:
//!
//! 1. **direct**: the project's command run directly, spawn to exit; for Rust a cold `cargo
//!    test` (a copy without `target/`).
//! 2. **first**: `tessera run --coordinator URL --json -- <the same command>` against a
//!    `tessera coordinator` with a fresh data directory and one `tessera agent` with a fresh
//!    work directory (so no result cache, no history, no persisted `target/`) and a slot per
//!    core; wall time of the whole `tessera` process. Its `finished` line gives the counts,
//!    the tool start-ups and the batches.
//! 3. **cached**: the same `tessera run` again, nothing changed, timed the same way.
//!
//! Both sides get the same environment (the variables the fidelity tests pass, the suite's
//! virtualenv or Go settings). Rust dependencies are fetched beforehand with `cargo fetch`
//! into the shared `CARGO_HOME` (in a third copy, since a crate published without a lock file
//! gets one), and both sides build with `CARGO_NET_OFFLINE=true`, so neither downloads. Each Go
//! side gets a fresh `GOCACHE` of its own, so neither reuses the other's builds or test
//! results. The counts of passed, failed, errors and skipped must agree between the direct run
//! and Tessera's answer ([`crate::answers`]).
//!
//! Targets (issue 11): a pytest suite of at least 500 tests that runs at least 10 s directly:
//! first ≤ 0.75 × direct; a Rust crate, build included: first ≤ 1.1 × the cold direct `cargo
//! test`; a cached re-run ≤ 300 ms (median) when nothing failed. Go suites: figures only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::answers::{self, Counts};
use crate::error::BenchError;
use crate::processes::{Cluster, tessera_binary};
use crate::report::{self, Check, Environment, Layout, Report, Row, Tail};
use crate::world::{Fetched, Tool, WorldSuite};

/// A pytest suite is held to [`PYTEST_MAX_RATIO`] from this many tests...
const PYTEST_MIN_TESTS: u64 = 500;
/// ... when it runs at least this long directly.
const PYTEST_MIN_DIRECT: Duration = Duration::from_secs(10);
/// Largest first run of such a pytest suite, as a share of the direct run.
const PYTEST_MAX_RATIO: f64 = 0.75;
/// Largest first run of a Rust crate, build included, as a share of a cold direct `cargo test`.
const CARGO_MAX_RATIO: f64 = 1.1;
/// Largest median of a cached re-run when nothing failed, ms.
const MAX_RERUN_MS: f64 = 300.0;
/// Longest one run (direct, or one `tessera run`) may take before the benchmark gives up.
const RUN_LIMIT: Duration = Duration::from_secs(1200);
/// Where the scratch directory goes without `--data-dir`: not under `/tmp`, since sandboxed
/// actions get a private `/tmp` and the Go caches there must be the ones the agent's actions
/// see.
const DEFAULT_PARENT: &str = "/var/tmp";
/// The variables both sides get from this process, as in the fidelity tests
/// (`tests/world/direct.rs`): what the tools need, nothing of the benchmark's own.
const COMMON_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "CI",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
];

/// What one `suites` run measures.
#[derive(Debug, Clone)]
pub(crate) struct SuitesPlan {
    /// The command line that selects this plan, for the report.
    pub command: String,
    /// The suites, in order.
    pub suites: Vec<WorldSuite>,
    /// Timed cached re-runs per suite.
    pub reruns: usize,
    /// The `tessera` binary (`None`: beside this executable).
    pub tessera: Option<PathBuf>,
}

impl SuitesPlan {
    /// The benchmark the README quotes: every suite, 3 cached re-runs each.
    pub(crate) fn full(suites: Vec<WorldSuite>) -> Self {
        SuitesPlan {
            command: "cargo run --release -p tessera-bench -- suites".to_owned(),
            suites,
            reruns: 3,
            tessera: None,
        }
    }

    /// One cached re-run per suite; the same suites, runs and targets otherwise.
    pub(crate) fn quick(suites: Vec<WorldSuite>) -> Self {
        SuitesPlan {
            command: "cargo run --release -p tessera-bench -- suites --quick".to_owned(),
            reruns: 1,
            ..SuitesPlan::full(suites)
        }
    }
}

/// The direct run of a suite.
#[derive(Debug)]
struct DirectRun {
    wall: Duration,
    status: ExitStatus,
    /// What the tool reported; `Err` says why it could not be read.
    counts: Result<Counts, String>,
}

/// One `tessera run`.
#[derive(Debug)]
struct TesseraRun {
    wall: Duration,
    exit: Option<i32>,
    /// Its `finished` line; `Err` says why there is none.
    finished: Result<serde_json::Value, String>,
}

impl TesseraRun {
    fn counts(&self) -> Result<Counts, String> {
        self.finished
            .as_ref()
            .map(answers::tessera_finished)
            .map_err(Clone::clone)
    }

    fn field(&self, name: &str) -> u64 {
        self.finished
            .as_ref()
            .map_or(0, |f| f[name].as_u64().unwrap_or(0))
    }
}

/// Everything measured on one suite.
#[derive(Debug)]
struct SuiteRuns {
    suite: WorldSuite,
    direct: DirectRun,
    first: TesseraRun,
    reruns: Vec<TesseraRun>,
}

fn progress(message: &str) {
    eprintln!("tessera-bench: {message}");
}

/// Runs `plan` with its scratch directories under `data_parent` (default `/var/tmp`).
pub(crate) fn run(plan: &SuitesPlan, data_parent: Option<&Path>) -> Result<Report, BenchError> {
    let environment = Environment::here(
        &plan.command,
        Some(data_parent.unwrap_or(Path::new(DEFAULT_PARENT))),
    );
    let binary = tessera_binary(plan.tessera.as_deref())?;
    // Every suite is fetched before anything is timed: a missing one fails at once.
    let mut fetched = Vec::new();
    for suite in &plan.suites {
        progress(&format!("fetching {}", suite.name));
        fetched.push(suite.fetch()?);
    }
    let scratch = tempfile::Builder::new()
        .prefix("tessera-bench-suites-")
        .tempdir_in(data_parent.unwrap_or(Path::new(DEFAULT_PARENT)))
        .map_err(|source| BenchError::Io {
            what: "create the scratch directory",
            source,
        })?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut runs = Vec::new();
    for (suite, fetched) in plan.suites.iter().zip(&fetched) {
        let dir = scratch.path().join(suite.name);
        runs.push(measure(plan, suite, fetched, &binary, &dir, cores)?);
    }
    Ok(summarize(environment, cores, &runs))
}

/// The variables both sides of `suite` get.
fn suite_env(suite: &WorldSuite, fetched: &Fetched) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = COMMON_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect();
    env.extend(fetched.env.clone());
    if suite.tool == Tool::Cargo {
        env.insert("CARGO_NET_OFFLINE".to_owned(), "true".to_owned());
    }
    env
}

/// Direct, first and cached runs of one suite, in `dir`.
fn measure(
    plan: &SuitesPlan,
    suite: &WorldSuite,
    fetched: &Fetched,
    binary: &Path,
    dir: &Path,
    cores: usize,
) -> Result<SuiteRuns, BenchError> {
    let io = |what| move |source| BenchError::Io { what, source };
    std::fs::create_dir_all(dir).map_err(io("create a suite's scratch directory"))?;
    let env = suite_env(suite, fetched);
    if suite.tool == Tool::Cargo {
        progress(&format!("{}: cargo fetch", suite.name));
        let copy = dir.join("prefetch");
        suite.copy(fetched, &copy)?;
        let mut online = env.clone();
        online.remove("CARGO_NET_OFFLINE");
        let argv = ["cargo".to_owned(), "fetch".to_owned()];
        let log = dir.join("prefetch.log");
        let (_, status) = run_timed(&argv, &copy, &online, &log, &log, RUN_LIMIT)?;
        if !status.success() {
            return Err(BenchError::Tool(format!(
                "{}: cargo fetch failed ({status}); see {}",
                suite.name,
                log.display()
            )));
        }
    }

    progress(&format!("{}: direct run", suite.name));
    let direct = run_directly(suite, fetched, &env, dir)?;
    progress(&format!(
        "{}: direct {:.1} s, {}",
        suite.name,
        direct.wall.as_secs_f64(),
        direct
            .counts
            .as_ref()
            .map_or_else(Clone::clone, ToString::to_string)
    ));

    // A name of its own: the exec root is /var/tmp/tessera/<name> on the agents.
    let copy = dir
        .join("tessera")
        .join(format!("{}-{:08x}", suite.name, rand::random::<u32>()));
    suite.copy(fetched, &copy)?;
    let mut env = env;
    env.insert(
        "XDG_CACHE_HOME".to_owned(),
        dir.join("cli-cache").display().to_string(),
    );
    env.insert("NO_COLOR".to_owned(), "1".to_owned());
    if suite.tool == Tool::Go {
        env.insert(
            "GOCACHE".to_owned(),
            dir.join("go-build-tessera").display().to_string(),
        );
    }
    let slots = u32::try_from(cores).unwrap_or(u32::MAX);
    let cluster = Cluster::start(binary, &dir.join("cluster"), 1, slots, &[])?;
    let url = cluster.endpoint();
    let invocation = Invocation {
        binary,
        copy: &copy,
        env: &env,
        url: &url,
        command: suite.command,
        logs: dir,
    };
    let measured = (|| {
        progress(&format!("{}: first tessera run", suite.name));
        let first = invocation.run("first")?;
        progress(&format!(
            "{}: first {:.1} s, {}",
            suite.name,
            first.wall.as_secs_f64(),
            first.counts().map_or_else(|e| e, |c| c.to_string())
        ));
        let mut reruns = Vec::with_capacity(plan.reruns);
        for n in 0..plan.reruns {
            progress(&format!(
                "{}: cached re-run {}/{}",
                suite.name,
                n + 1,
                plan.reruns
            ));
            reruns.push(invocation.run(&format!("rerun-{n}"))?);
        }
        Ok::<_, BenchError>((first, reruns))
    })();
    cluster.stop()?;
    let (first, reruns) = measured?;
    Ok(SuiteRuns {
        suite: *suite,
        direct,
        first,
        reruns,
    })
}

/// The suite's command run directly in a fresh copy, with what its tool reports read.
fn run_directly(
    suite: &WorldSuite,
    fetched: &Fetched,
    env: &BTreeMap<String, String>,
    dir: &Path,
) -> Result<DirectRun, BenchError> {
    let copy = dir.join("direct").join(suite.name);
    suite.copy(fetched, &copy)?;
    let mut env = env.clone();
    let mut argv: Vec<String> = suite.command.iter().map(|s| (*s).to_owned()).collect();
    let report = dir.join("direct.xml");
    match suite.tool {
        Tool::Pytest => argv.push(format!("--junitxml={}", report.display())),
        Tool::Go => {
            env.insert(
                "GOCACHE".to_owned(),
                dir.join("go-build-direct").display().to_string(),
            );
        }
        Tool::Cargo => {}
    }
    let stdout = dir.join("direct.out");
    let stderr = dir.join("direct.err");
    // cargo's progress and libtest's results interleave: one file keeps their order.
    let stderr = if suite.tool == Tool::Cargo {
        &stdout
    } else {
        &stderr
    };
    let (wall, status) = run_timed(&argv, &copy, &env, &stdout, stderr, RUN_LIMIT)?;
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let counts = match suite.tool {
        Tool::Pytest => read(&report).and_then(|xml| answers::pytest_junit(&xml)),
        Tool::Cargo => read(&stdout).and_then(|text| {
            answers::libtest(&text).ok_or_else(|| {
                format!(
                    "cargo test printed no test result ({status}); see {}",
                    stdout.display()
                )
            })
        }),
        Tool::Go => read(&stdout).map(|text| answers::go_json(&text)),
    };
    Ok(DirectRun {
        wall,
        status,
        counts,
    })
}

/// Runs `argv` in `cwd` with exactly `env`, output to files, and times it spawn to exit.
/// Runs `argv` in `cwd` with exactly `env`, its output to `stdout` and `stderr` (one file if the
/// same path), killed after `limit`; its wall time and exit status.
pub(crate) fn run_timed(
    argv: &[String],
    cwd: &Path,
    env: &BTreeMap<String, String>,
    stdout: &Path,
    stderr: &Path,
    limit: Duration,
) -> Result<(Duration, ExitStatus), BenchError> {
    let io = |what| move |source| BenchError::Io { what, source };
    let out = File::create(stdout).map_err(io("create a log file"))?;
    let err = if stderr == stdout {
        out.try_clone().map_err(io("share a log file"))?
    } else {
        File::create(stderr).map_err(io("create a log file"))?
    };
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| BenchError::Unexpected("an empty command".to_owned()))?;
    let started = Instant::now();
    let child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(io("start a command"))?;
    let status = wait_within(child, limit, &argv.join(" "))?;
    Ok((started.elapsed(), status))
}

/// Waits for `child` to exit (no polling: a thread waits, so the wall time is exact), or
/// kills it after `limit`.
fn wait_within(mut child: Child, limit: Duration, what: &str) -> Result<ExitStatus, BenchError> {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(limit) {
        Ok(status) => {
            let _ = waiter.join();
            status.map_err(|source| BenchError::Io {
                what: "wait for a child process",
                source,
            })
        }
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = waiter.join();
            Err(BenchError::Tool(format!(
                "`{what}` ran longer than {limit:?}"
            )))
        }
    }
}

/// `tessera run --coordinator URL --json -- COMMAND` in a suite's copy.
struct Invocation<'a> {
    binary: &'a Path,
    copy: &'a Path,
    env: &'a BTreeMap<String, String>,
    url: &'a str,
    command: &'a [&'a str],
    /// Where its output goes (`tessera-LABEL.jsonl`, `tessera-LABEL.err`).
    logs: &'a Path,
}

impl Invocation<'_> {
    /// Runs it once and reads its `finished` line; an exit without one is a run without an
    /// answer, not an error of the benchmark.
    fn run(&self, label: &str) -> Result<TesseraRun, BenchError> {
        let mut argv = vec![
            self.binary.display().to_string(),
            "run".to_owned(),
            "--coordinator".to_owned(),
            self.url.to_owned(),
            "--json".to_owned(),
            "--".to_owned(),
        ];
        argv.extend(self.command.iter().map(|s| (*s).to_owned()));
        let stdout = self.logs.join(format!("tessera-{label}.jsonl"));
        let stderr = self.logs.join(format!("tessera-{label}.err"));
        let (wall, status) = run_timed(&argv, self.copy, self.env, &stdout, &stderr, RUN_LIMIT)?;
        let text = std::fs::read_to_string(&stdout).map_err(|source| BenchError::Io {
            what: "read tessera run's output",
            source,
        })?;
        let finished = text
            .lines()
            .rev()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|event| event["event"] == "finished")
            .ok_or_else(|| {
                let why = std::fs::read_to_string(&stderr).unwrap_or_default();
                format!(
                    "no answer (exit {status}): {}",
                    why.lines().next().unwrap_or("nothing on stderr")
                )
            });
        Ok(TesseraRun {
            wall,
            exit: status.code(),
            finished,
        })
    }
}

/// The target of a first run, or why there is none.
fn first_run_target(suite: &WorldSuite, direct: &DirectRun) -> Result<f64, String> {
    match suite.tool {
        Tool::Pytest => {
            let tests = direct.counts.as_ref().map_or(0, Counts::total);
            if tests < PYTEST_MIN_TESTS {
                Err(format!("under {PYTEST_MIN_TESTS} tests"))
            } else if direct.wall < PYTEST_MIN_DIRECT {
                Err(format!("under {} s directly", PYTEST_MIN_DIRECT.as_secs()))
            } else {
                Ok(PYTEST_MAX_RATIO)
            }
        }
        Tool::Cargo => Ok(CARGO_MAX_RATIO),
        Tool::Go => Err("Go: figures only".to_owned()),
    }
}

fn baseline(tool: Tool) -> &'static str {
    match tool {
        Tool::Pytest => "direct `pytest`",
        Tool::Cargo => "cold direct `cargo test`",
        Tool::Go => "direct `go test`",
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn median_ms(runs: &[TesseraRun]) -> f64 {
    let walls: Vec<f64> = runs.iter().map(|r| r.wall.as_secs_f64() * 1e3).collect();
    report::percentile(&walls, 0.5)
}

fn summarize(environment: Environment, cores: usize, runs: &[SuiteRuns]) -> Report {
    let mut rows = Vec::new();
    let mut table = String::from(
        "| suite | tool | tests (direct) | direct | first `tessera run` | first ÷ direct | cached \
         re-run | tool start-ups | batches | same counts |\n|---|---|--:|--:|--:|--:|--:|--:|--:|---|\n",
    );
    let mut unreported = false;
    for run in runs {
        let name = run.suite.name;
        let tool = run.suite.tool;
        let direct_counts = run
            .direct
            .counts
            .as_ref()
            .map_or_else(|e| format!("unreadable: {e}"), ToString::to_string);
        let tests = run.direct.counts.as_ref().map_or(0, Counts::total);
        let (startups, batches) = (run.first.field("tool_startups"), run.first.field("batches"));
        unreported |= startups == 0 && batches == 0 && run.first.field("passed") > 0;
        let target = first_run_target(&run.suite, &run.direct);
        let mut workload = format!(
            "{}, {} tests; 1 agent × {cores} slots; {startups} tool start-ups, {batches} batches",
            tool.name(),
            report::thousands(usize::try_from(tests).unwrap_or(usize::MAX)),
        );
        if let Err(why) = &target {
            let _ = write!(workload, "; no target: {why}");
        }
        rows.push(Row {
            measurement: format!("{name}: first `tessera run`"),
            digest: String::new(),
            workload,
            check: Check::Ratio {
                seconds: run.first.wall.as_secs_f64(),
                baseline_seconds: run.direct.wall.as_secs_f64(),
                baseline: baseline(tool),
                runs: 1,
                max_ratio: target.ok(),
            },
        });

        let failing = run.direct.counts.as_ref().map_or(0, Counts::failing);
        let rerun_ms = median_ms(&run.reruns);
        let cached = run.reruns.first().map_or(0, |r| r.field("cached"));
        rows.push(Row {
            measurement: format!("{name}: cached re-run"),
            digest: String::new(),
            workload: format!(
                "nothing changed; {} of {} answered from the cache",
                report::thousands(usize::try_from(cached).unwrap_or(usize::MAX)),
                report::thousands(usize::try_from(tests).unwrap_or(usize::MAX)),
            ),
            check: Check::Time {
                samples: run.reruns.len(),
                p50_ms: rerun_ms,
                tail_ms: run
                    .reruns
                    .iter()
                    .map(|r| r.wall.as_secs_f64() * 1e3)
                    .fold(0.0, f64::max),
                tail: Tail::Max,
                max_p50_ms: (failing == 0).then_some(MAX_RERUN_MS),
                context: if failing == 0 {
                    format!("first run {}", seconds(run.first.wall))
                } else {
                    format!("no target: {failing} failing tests are re-run")
                },
            },
        });

        let tessera_counts = run.first.counts();
        let answer = tessera_counts
            .as_ref()
            .map_or_else(Clone::clone, ToString::to_string);
        let agree = answer == direct_counts;
        rows.push(Row {
            measurement: format!("{name}: same counts as direct"),
            digest: String::new(),
            workload: format!(
                "first `tessera run` (exit {}), direct (exit {})",
                run.first
                    .exit
                    .map_or_else(|| "signal".to_owned(), |c| c.to_string()),
                run.direct
                    .status
                    .code()
                    .map_or_else(|| "signal".to_owned(), |c| c.to_string())
            ),
            check: Check::Agreement {
                result: answer,
                expected: direct_counts,
                baseline: "direct",
            },
        });

        let _ = writeln!(
            table,
            "| {name} | {} | {} | {} | {} | {:.2}× | {:.0} ms | {startups} | {batches} | {} |",
            tool.name(),
            report::thousands(usize::try_from(tests).unwrap_or(usize::MAX)),
            seconds(run.direct.wall),
            seconds(run.first.wall),
            run.first.wall.as_secs_f64() / run.direct.wall.as_secs_f64(),
            rerun_ms,
            if agree { "yes" } else { "**no**" },
        );
    }
    let mut notes = vec![
        format!("Per suite:\n\n{table}"),
        "direct: the project's command in a fresh copy (for pytest with `--junitxml` to count \
         its answer), spawn to exit; for Rust a cold `cargo test` (no `target/`). first: \
         `tessera run --coordinator URL --json -- <the same command>` in another fresh copy, \
         against a `tessera coordinator` with a fresh data directory and one `tessera agent` \
         with a fresh work directory and a slot per core (no result cache, no history, no \
         persisted `target/`), spawn to exit of the `tessera` process. cached: the same again, \
         nothing changed (median). Both sides: the same environment; Rust dependencies \
         prefetched with `cargo fetch` into the shared CARGO_HOME and `CARGO_NET_OFFLINE=true`; \
         a fresh GOCACHE per Go side. Tool start-ups and batches: the `finished` line of the \
         first run (`JobFinished.tool_startups`, `.batches`). Counts: passed (flaky included), \
         failed (timed out included), skipped (xfail, ignored), errors, direct against \
         Tessera's summary."
            .to_owned(),
    ];
    if unreported {
        notes.push(
            "Tool start-ups and batches read 0: the coordinator does not fill \
             `JobFinished.tool_startups` and `JobFinished.batches` yet."
                .to_owned(),
        );
    }
    Report {
        environment,
        layout: Layout::Execution,
        rows,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;
    use crate::report::Verdict;
    use crate::world::SUITES;

    fn suite(name: &str) -> WorldSuite {
        *SUITES.iter().find(|s| s.name == name).expect("a suite")
    }

    fn counts(passed: u64, failed: u64) -> Counts {
        Counts {
            passed,
            failed,
            errors: 0,
            skipped: 2,
        }
    }

    fn direct(secs: u64, counts: Counts) -> DirectRun {
        DirectRun {
            wall: Duration::from_secs(secs),
            status: ExitStatus::from_raw(0),
            counts: Ok(counts),
        }
    }

    fn tessera(ms: u64, counts: Counts, cached: u64) -> TesseraRun {
        TesseraRun {
            wall: Duration::from_millis(ms),
            exit: Some(0),
            finished: Ok(serde_json::json!({
                "event": "finished", "passed": counts.passed, "failed": counts.failed,
                "skipped": counts.skipped, "errors": 0, "cached": cached,
                "batches": 4, "tool_startups": 3,
            })),
        }
    }

    fn verdicts(report: &Report) -> Vec<(String, Verdict)> {
        report
            .rows
            .iter()
            .map(|row| (row.measurement.clone(), row.verdict()))
            .collect()
    }

    #[test]
    fn targets_depend_on_the_tool_and_the_size_of_the_suite() {
        let dateutil = suite("dateutil");
        assert_eq!(
            first_run_target(&dateutil, &direct(20, counts(600, 0))),
            Ok(PYTEST_MAX_RATIO)
        );
        assert_eq!(
            first_run_target(&dateutil, &direct(20, counts(400, 0))),
            Err("under 500 tests".to_owned())
        );
        assert_eq!(
            first_run_target(&dateutil, &direct(9, counts(600, 0))),
            Err("under 10 s directly".to_owned())
        );
        let smallvec = suite("smallvec");
        assert_eq!(
            first_run_target(&smallvec, &direct(1, counts(5, 0))),
            Ok(CARGO_MAX_RATIO)
        );
        assert!(first_run_target(&suite("go-cmp"), &direct(60, counts(900, 0))).is_err());
    }

    #[test]
    fn every_row_is_judged_and_differing_counts_miss() {
        let answer = counts(600, 0);
        let runs = [
            SuiteRuns {
                suite: suite("dateutil"),
                direct: direct(20, answer),
                first: tessera(14_000, answer, 0),
                reruns: vec![tessera(120, answer, 602), tessera(400, answer, 602)],
            },
            SuiteRuns {
                suite: suite("smallvec"),
                direct: direct(10, counts(90, 1)),
                first: tessera(12_000, counts(91, 0), 0),
                reruns: vec![tessera(900, counts(91, 0), 91)],
            },
        ];
        let report = summarize(Environment::here("test", None), 2, &runs);
        let want = |m: &str, v| (m.to_owned(), v);
        assert_eq!(
            verdicts(&report),
            [
                want("dateutil: first `tessera run`", Verdict::Pass),
                want("dateutil: cached re-run", Verdict::Pass),
                want("dateutil: same counts as direct", Verdict::Pass),
                want("smallvec: first `tessera run`", Verdict::Miss),
                // smallvec failed a test directly: its re-run has no target.
                want("smallvec: cached re-run", Verdict::NoTarget),
                want("smallvec: same counts as direct", Verdict::Miss),
            ]
        );
        assert!(
            report.rows[0]
                .workload
                .contains("3 tool start-ups, 4 batches"),
            "{}",
            report.rows[0].workload
        );
        let markdown = report.to_markdown();
        assert!(
            markdown.contains(
                "| smallvec | cargo | 93 | 10.0 s | 12.0 s | 1.20× | 900 ms | 3 | 4 | **no** |"
            ),
            "{markdown}"
        );
        assert!(!markdown.contains("read 0"), "start-ups were reported");
    }
}

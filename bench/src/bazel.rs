//! `tessera-bench bazel`: Bazel (Debian's 4.2.3) building and testing the fixture workspace
//! (`tests/fixtures/bazel/`) with `--jobs=8`, against a coordinator and two agents × 4 slots
//! run as child processes of the real `tessera` binary. Each run, for each of `runs` rounds:
//!
//! - local: a fresh output base; `bazel info` starts the Bazel server (not timed); `bazel test
//!   //...` cold (timed); then, after `clean`, a `--disk_cache` run to fill a disk cache and,
//!   after another `clean`, the fully cached run from it (timed).
//! - remote: a fresh coordinator and agents and a fresh output base; `bazel info`; `bazel
//!   test //... --remote_executor` cold (timed, with the coordinator's and agents' CPU read
//!   from `/proc` around it); then, after `clean`, the fully cached run (timed).
//!
//! Rounds alternate which side goes first, so slow drift on a shared machine hits both. The
//! medians are held to the targets: remote cold at most 0.4× local cold, at most 8 ms
//! of coordinator and agent CPU per remote action, and fully cached remote within 10% of the
//! local disk cache. Every run is checked: cold runs must execute every action (locally, or
//! remotely), cached runs must answer every action from the cache, and all tests must pass.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::cpu::CpuTimes;
use crate::error::BenchError;
use crate::processes::{Cluster, ClusterCpu, tessera_binary};
use crate::report::{Check, Environment, Layout, Report, Row};

/// Largest remote-cold / local-cold ratio allowed.
const MAX_COLD_RATIO: f64 = 0.4;
/// Largest coordinator + agent CPU per remote action, ms.
const MAX_CPU_PER_ACTION_MS: f64 = 8.0;
/// Largest fully-cached remote / local disk cache ratio allowed.
const MAX_CACHED_RATIO: f64 = 1.1;
/// Longest any single Bazel command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(600);
/// Bazel's name for a process that ran locally in its sandbox, remotely, or came from a cache.
const LOCAL: &str = "linux-sandbox";
const REMOTE: &str = "remote";
const CACHE_HIT: &str = "remote cache hit";

/// What one `bazel` run measures.
#[derive(Debug, Clone)]
pub(crate) struct BazelPlan {
    /// The command line that selects this plan, for the report.
    pub command: String,
    /// Rounds; medians are reported.
    pub runs: usize,
    /// Bazel's `--jobs`.
    pub jobs: u32,
    /// Agents.
    pub agents: usize,
    /// Slots per agent.
    pub slots: u32,
    /// The `tessera` binary (`None`: beside this executable).
    pub tessera: Option<PathBuf>,
}

impl BazelPlan {
    /// Three rounds, 2 agents × 4 slots, `--jobs=8`.
    pub(crate) fn full() -> Self {
        BazelPlan {
            command: "cargo run --release -p tessera-bench -- bazel".to_owned(),
            runs: 3,
            jobs: 8,
            agents: 2,
            slots: 4,
            tessera: None,
        }
    }

    /// One round.
    pub(crate) fn quick() -> Self {
        BazelPlan {
            command: "cargo run --release -p tessera-bench -- bazel --quick".to_owned(),
            runs: 1,
            ..BazelPlan::full()
        }
    }
}

/// Runs `plan` with its scratch directories under `data_parent`.
pub(crate) async fn run(
    plan: &BazelPlan,
    data_parent: Option<&Path>,
) -> Result<Report, BenchError> {
    let plan = plan.clone();
    let parent = data_parent.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || run_blocking(&plan, parent.as_deref())).await?
}

/// One round's measurements.
#[derive(Debug, Clone)]
struct Round {
    local_cold: Measured,
    local_cached: Measured,
    remote_cold: Measured,
    remote_cached: Measured,
    /// Actions Bazel ran remotely in the cold build.
    remote_actions: u64,
    /// Coordinator and agent CPU during the remote cold build.
    cpu: ClusterCpu,
    /// What the agents' live threads spent during it, by kind of thread.
    agent_threads: BTreeMap<String, Duration>,
    /// `bazel info` on a fresh output base (server start), seconds, local and remote.
    server_start: [f64; 2],
}

/// A timed Bazel command.
#[derive(Debug, Clone)]
struct Measured {
    seconds: f64,
    /// Bazel's own `INFO: Elapsed time: ..., Critical Path: ...` line.
    elapsed_line: String,
}

fn run_blocking(plan: &BazelPlan, data_parent: Option<&Path>) -> Result<Report, BenchError> {
    let environment = Environment::here(&plan.command, data_parent);
    let binary = tessera_binary(plan.tessera.as_deref())?;
    let bazel = find_or_install_bazel()?;
    let tmp = match data_parent {
        Some(parent) => tempfile::Builder::new()
            .prefix("tessera-bench-bazel-")
            .tempdir_in(parent),
        None => tempfile::Builder::new()
            .prefix("tessera-bench-bazel-")
            .tempdir(),
    }
    .map_err(|source| BenchError::Io {
        what: "create the scratch directory",
        source,
    })?;
    let mut rounds = Vec::with_capacity(plan.runs);
    for round in 0..plan.runs {
        rounds.push(one_round(plan, &binary, &bazel, tmp.path(), round)?);
    }
    make_dirs_writable(tmp.path());
    Ok(summarize(plan, environment, &rounds))
}

fn progress(message: &str) {
    eprintln!("tessera-bench: {message}");
}

fn one_round(
    plan: &BazelPlan,
    binary: &Path,
    bazel: &Path,
    scratch: &Path,
    round: usize,
) -> Result<Round, BenchError> {
    let jobs = format!("--jobs={}", plan.jobs);
    let remote_first = round % 2 == 1;
    let mut local = None;
    let mut remote = None;
    for side in [remote_first, !remote_first] {
        if side {
            remote = Some(remote_round(plan, binary, bazel, scratch, round, &jobs)?);
        } else {
            local = Some(local_round(bazel, scratch, round, &jobs)?);
        }
    }
    let (local_cold, local_cached, local_start) = local.expect("local side ran");
    let remote: RemoteSide = remote.expect("remote side ran");
    Ok(Round {
        local_cold,
        local_cached,
        remote_cold: remote.cold,
        remote_cached: remote.cached,
        remote_actions: remote.actions,
        cpu: remote.cpu,
        agent_threads: remote.agent_threads,
        server_start: [local_start, remote.server_start],
    })
}

fn local_round(
    bazel: &Path,
    scratch: &Path,
    round: usize,
    jobs: &str,
) -> Result<(Measured, Measured, f64), BenchError> {
    let mut checkout = Checkout::new(bazel, scratch, &format!("local-{round}"))?;
    progress(&format!("bazel round {}: local", round + 1));
    let start = checkout.run(&["info", "release"])?.seconds;
    let cold = checkout.run(&["test", "//...", jobs])?;
    let ran = cold.processes()?;
    expect_only(&ran, LOCAL, "local cold build", &cold)?;
    let disk_cache = format!(
        "--disk_cache={}",
        checkout.root.join("disk-cache").display()
    );
    checkout.run(&["clean"])?;
    checkout.run(&["test", "//...", jobs, &disk_cache])?;
    checkout.run(&["clean"])?;
    let cached = checkout.run(&["test", "//...", jobs, &disk_cache])?;
    expect_only(
        &cached.processes()?,
        CACHE_HIT,
        "local cached build",
        &cached,
    )?;
    checkout.shutdown();
    Ok((cold.measured(), cached.measured(), start))
}

fn remote_round(
    plan: &BazelPlan,
    binary: &Path,
    bazel: &Path,
    scratch: &Path,
    round: usize,
    jobs: &str,
) -> Result<RemoteSide, BenchError> {
    progress(&format!(
        "bazel round {}: remote, {} agents × {} slots",
        round + 1,
        plan.agents,
        plan.slots
    ));
    let cluster = Cluster::start(
        binary,
        &scratch.join(format!("cluster-{round}")),
        plan.agents,
        plan.slots,
        &[],
    )?;
    let executor = format!("--remote_executor={}", cluster.grpc_address());
    let mut checkout = Checkout::new(bazel, scratch, &format!("remote-{round}"))?;
    let start = checkout.run(&["info", "release"])?.seconds;
    let before = cluster.cpu()?;
    let threads_before = cluster.agent_threads();
    let cold = checkout.run(&["test", "//...", jobs, &executor])?;
    let cpu = cluster.cpu()? - before;
    let agent_threads = crate::cpu::growth(&threads_before, &cluster.agent_threads());
    let ran = cold.processes()?;
    expect_only(&ran, REMOTE, "remote cold build", &cold)?;
    let remote_actions = ran.get(REMOTE).copied().unwrap_or(0);
    checkout.run(&["clean"])?;
    let cached = checkout.run(&["test", "//...", jobs, &executor])?;
    expect_only(
        &cached.processes()?,
        CACHE_HIT,
        "remote cached build",
        &cached,
    )?;
    checkout.shutdown();
    cluster.stop()?;
    Ok(RemoteSide {
        cold: cold.measured(),
        cached: cached.measured(),
        actions: remote_actions,
        cpu,
        agent_threads,
        server_start: start,
    })
}

/// What one round's remote side measured.
struct RemoteSide {
    cold: Measured,
    cached: Measured,
    /// Actions Bazel ran remotely in the cold build.
    actions: u64,
    /// Coordinator and agent CPU during the cold build.
    cpu: ClusterCpu,
    /// What the agents' live threads spent during it, by kind.
    agent_threads: BTreeMap<String, Duration>,
    /// `bazel info` on a fresh output base, seconds.
    server_start: f64,
}

/// Every non-internal process of a run was of `kind`, and all tests passed.
fn expect_only(
    counts: &BTreeMap<String, u64>,
    kind: &str,
    what: &str,
    run: &BazelRun,
) -> Result<(), BenchError> {
    let others: Vec<String> = counts
        .iter()
        .filter(|(k, _)| k.as_str() != "internal" && k.as_str() != kind)
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    if !others.is_empty() || counts.get(kind).is_none_or(|n| *n == 0) {
        return Err(BenchError::Unexpected(format!(
            "{what}: expected only \"{kind}\" processes, Bazel reported {counts:?}"
        )));
    }
    if !run
        .stdout
        .lines()
        .any(|l| l.starts_with("Executed ") && l.ends_with(" pass."))
    {
        return Err(BenchError::Unexpected(format!(
            "{what}: not every test passed:\n{}",
            run.stdout
        )));
    }
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn summarize(plan: &BazelPlan, environment: Environment, rounds: &[Round]) -> Report {
    let seconds =
        |pick: fn(&Round) -> &Measured| median(rounds.iter().map(|r| pick(r).seconds).collect());
    let ms = |d: Duration, actions: u64| d.as_secs_f64() * 1e3 / actions.max(1) as f64;
    let system_ms = |r: &Round| ms(r.cpu.coordinator.own + r.cpu.agents.own, r.remote_actions);
    // The round whose total CPU per action is the median gives the whole breakdown.
    let mut by_cpu: Vec<&Round> = rounds.iter().collect();
    by_cpu.sort_by(|a, b| system_ms(a).total_cmp(&system_ms(b)));
    let mid = by_cpu[by_cpu.len() / 2];
    let fleet = format!(
        "fixture `test //...`, --jobs={}, {} agents × {} slots",
        plan.jobs, plan.agents, plan.slots
    );
    let rows = vec![
        Row {
            measurement: "Bazel remote cold build".to_owned(),
            digest: String::new(),
            workload: format!("{fleet}, fresh coordinator and output base"),
            check: Check::Ratio {
                seconds: seconds(|r| &r.remote_cold),
                baseline_seconds: seconds(|r| &r.local_cold),
                baseline: "local cold build",
                runs: rounds.len(),
                max_ratio: Some(MAX_COLD_RATIO),
            },
        },
        Row {
            measurement: "Coordinator + agent CPU per remote action".to_owned(),
            digest: String::new(),
            workload: format!("the remote cold build ({} actions)", mid.remote_actions),
            check: Check::CpuPerAction {
                actions: mid.remote_actions,
                ms: system_ms(mid),
                coordinator_ms: ms(mid.cpu.coordinator.own, mid.remote_actions),
                agent_ms: ms(mid.cpu.agents.own, mid.remote_actions),
                action_processes_ms: ms(mid.cpu.agents.children, mid.remote_actions),
                bare_spawn_ms: None,
                max_ms: Some(MAX_CPU_PER_ACTION_MS),
            },
        },
        Row {
            measurement: "Bazel fully cached, remote".to_owned(),
            digest: String::new(),
            workload: format!("{fleet}, after `clean`, every action a remote cache hit"),
            check: Check::Ratio {
                seconds: seconds(|r| &r.remote_cached),
                baseline_seconds: seconds(|r| &r.local_cached),
                baseline: "local --disk_cache",
                runs: rounds.len(),
                max_ratio: Some(MAX_CACHED_RATIO),
            },
        },
    ];
    let mut notes = vec![
        "Wall times are of the `bazel test` command alone, its Bazel server already started by \
         `bazel info` (not timed); they include loading and analysis, the same for both sides. \
         CPU is user + system time of the coordinator and agent processes (each one's own from \
         its CPU-time clock, to the nanosecond), from just before to just after the remote cold \
         build; \"actions' own CPU\" is the agents' reaped children (/proc/<pid>/stat, 10 ms \
         ticks)."
            .to_owned(),
    ];
    for (n, r) in rounds.iter().enumerate() {
        let cpu_of = |t: CpuTimes| t.own.as_secs_f64() * 1e3;
        notes.push(format!(
            "Round {}: local cold {:.2} s, remote cold {:.2} s, local cached {:.2} s, remote \
             cached {:.2} s; CPU during the remote build: coordinator {:.0} ms, agents {:.0} ms, \
             actions {:.0} ms for {} actions; Bazel server start {:.2} s / {:.2} s. Bazel's own \
             lines: local cold \"{}\", remote cold \"{}\", local cached \"{}\", remote cached \"{}\".",
            n + 1,
            r.local_cold.seconds,
            r.remote_cold.seconds,
            r.local_cached.seconds,
            r.remote_cached.seconds,
            cpu_of(r.cpu.coordinator),
            cpu_of(r.cpu.agents),
            r.cpu.agents.children.as_secs_f64() * 1e3,
            r.remote_actions,
            r.server_start[0],
            r.server_start[1],
            r.local_cold.elapsed_line,
            r.remote_cold.elapsed_line,
            r.local_cached.elapsed_line,
            r.remote_cached.elapsed_line,
        ));
        notes.push(format!(
            "Round {}: the agents' CPU by thread during the remote build (live threads, exact; \
             threads that exited in it are in the agents' total only): {}.",
            n + 1,
            thread_breakdown(&r.agent_threads)
        ));
    }
    Report {
        environment,
        layout: Layout::Execution,
        rows,
        notes,
    }
}

/// `kind 12.3 ms` for each kind of thread, the largest first.
fn thread_breakdown(threads: &BTreeMap<String, Duration>) -> String {
    let mut kinds: Vec<(&String, &Duration)> = threads.iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    if kinds.is_empty() {
        return "none".to_owned();
    }
    kinds
        .iter()
        .map(|(kind, spent)| format!("{kind} {:.1} ms", spent.as_secs_f64() * 1e3))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A copy of the fixture with its own output base, user root and `HOME`; its Bazel server is
/// shut down on drop.
struct Checkout {
    bazel: PathBuf,
    workspace: PathBuf,
    root: PathBuf,
    running: bool,
    commands: u32,
}

/// One finished Bazel command.
struct BazelRun {
    args: String,
    seconds: f64,
    stdout: String,
    stderr: String,
}

impl Checkout {
    fn new(bazel: &Path, parent: &Path, name: &str) -> Result<Self, BenchError> {
        let root = parent.join(name);
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/bazel");
        copy_tree(&fixture, &root.join("fixture")).map_err(|source| BenchError::Io {
            what: "copy the Bazel fixture",
            source,
        })?;
        std::fs::create_dir_all(root.join("home")).map_err(|source| BenchError::Io {
            what: "create Bazel's home",
            source,
        })?;
        Ok(Checkout {
            bazel: bazel.to_owned(),
            workspace: root.join("fixture/workspace"),
            root,
            running: false,
            commands: 0,
        })
    }

    /// Runs `bazel STARTUP... args`; it must succeed.
    fn run(&mut self, args: &[&str]) -> Result<BazelRun, BenchError> {
        self.commands += 1;
        let out = self.root.join(format!("cmd-{}.out", self.commands));
        let err = self.root.join(format!("cmd-{}.err", self.commands));
        let io = |what| move |source| BenchError::Io { what, source };
        let start = Instant::now();
        let mut child = self
            .command()
            .args(args)
            .stdout(File::create(&out).map_err(io("create a Bazel log"))?)
            .stderr(File::create(&err).map_err(io("create a Bazel log"))?)
            .spawn()
            .map_err(io("start bazel"))?;
        self.running = true;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(io("wait for bazel"))? {
                break status;
            }
            if start.elapsed() > COMMAND_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BenchError::Tool(format!(
                    "`bazel {}` took longer than {COMMAND_LIMIT:?}",
                    args.join(" ")
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let seconds = start.elapsed().as_secs_f64();
        let run = BazelRun {
            args: args.join(" "),
            seconds,
            stdout: std::fs::read_to_string(&out).map_err(io("read a Bazel log"))?,
            stderr: std::fs::read_to_string(&err).map_err(io("read a Bazel log"))?,
        };
        if !status.success() {
            return Err(BenchError::Tool(format!(
                "`bazel {}` failed ({status}):\n{}\n{}",
                run.args, run.stdout, run.stderr
            )));
        }
        Ok(run)
    }

    /// `bazel shutdown`, same directory and startup options.
    fn shutdown(&mut self) {
        if self.running {
            self.running = false;
            let status = self
                .command()
                .arg("shutdown")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !status.as_ref().is_ok_and(ExitStatus::success) {
                eprintln!(
                    "tessera-bench: bazel shutdown in {} failed: {status:?}",
                    self.root.display()
                );
            }
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.bazel);
        command
            .arg(format!(
                "--output_user_root={}",
                self.root.join("user-root").display()
            ))
            .arg(format!(
                "--output_base={}",
                self.root.join("output-base").display()
            ))
            // A Bazel server left behind by a killed benchmark exits on its own.
            .arg("--max_idle_secs=300")
            .current_dir(&self.workspace)
            // No ~/.bazelrc, no caches in the real home.
            .env("HOME", self.root.join("home"))
            .env_remove("USE_BAZEL_VERSION")
            .stdin(Stdio::null());
        command
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl BazelRun {
    fn measured(&self) -> Measured {
        Measured {
            seconds: self.seconds,
            elapsed_line: self
                .stderr
                .lines()
                .find_map(|l| l.strip_prefix("INFO: Elapsed time: "))
                .unwrap_or("")
                .to_owned(),
        }
    }

    /// Counts by kind from `INFO: 36 processes: 12 internal, 24 remote.`
    fn processes(&self) -> Result<BTreeMap<String, u64>, BenchError> {
        let line = self
            .stderr
            .lines()
            .find(|l| l.starts_with("INFO: ") && l.contains(" processes: "))
            .ok_or_else(|| {
                BenchError::Unexpected(format!(
                    "`bazel {}` printed no process summary:\n{}",
                    self.args, self.stderr
                ))
            })?;
        let malformed = || BenchError::Unexpected(format!("unexpected Bazel summary: {line}"));
        let (_, kinds) = line.split_once(" processes: ").ok_or_else(malformed)?;
        let mut counts = BTreeMap::new();
        for part in kinds.trim_end_matches('.').split(", ") {
            let (n, kind) = part.split_once(' ').ok_or_else(malformed)?;
            let n: u64 = n.parse().map_err(|_| malformed())?;
            *counts.entry(kind.to_owned()).or_default() += n;
        }
        Ok(counts)
    }
}

/// `bazel` on `PATH`, installed by `.ci/install-deps.sh` if missing.
fn find_or_install_bazel() -> Result<PathBuf, BenchError> {
    if let Some(bazel) = find_on_path("bazel") {
        return Ok(bazel);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/install-deps.sh");
    progress(&format!("bazel not found: running {}", script.display()));
    let status = Command::new("bash").arg(&script).status();
    find_on_path("bazel").ok_or_else(|| {
        BenchError::Tool(format!(
            "bazel is not installed and {} did not install it ({status:?}); run it as root",
            script.display()
        ))
    })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Copies a directory tree, dotfiles and symlinks included.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// `chmod u+w` on every directory under `dir`: Bazel leaves tree artifacts read-only, which
/// would stop the scratch directory from being removed by users other than root.
fn make_dirs_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = dir.symlink_metadata() else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o200 == 0 {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_dirs_writable(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_summaries_parse() {
        let run = BazelRun {
            args: "test //...".to_owned(),
            seconds: 1.0,
            stdout: String::new(),
            stderr: "INFO: Elapsed time: 6.694s, Critical Path: 2.31s\n\
                     INFO: 36 processes: 24 remote cache hit, 12 internal.\n"
                .to_owned(),
        };
        let counts = run.processes().expect("parses");
        assert_eq!(counts.get(CACHE_HIT), Some(&24));
        assert_eq!(counts.get("internal"), Some(&12));
        assert_eq!(run.measured().elapsed_line, "6.694s, Critical Path: 2.31s");
    }
}

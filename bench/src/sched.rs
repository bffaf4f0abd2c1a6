//! `tessera-bench sched`: remote execution as clients see it, through real Execute calls over
//! gRPC to an in-process coordinator. Two parts:
//!
//! - **Scheduler capacity.** Many agents simulated by this process ([`SimulatedAgents`]: the
//!   real protocol, every lease answered at once), fed by many concurrent Execute calls, each
//!   a distinct pre-uploaded action with `skip_cache_lookup`, so nothing is cached or merged.
//!   Measures actions per second end to end (Execute sent → operation done), at least 5,000,
//!   and the time from sending Execute to the agent holding the lease, p50 at most 2 ms, at
//!   each load level (calls in flight: queueing grows with it once the CPU is saturated), and
//!   one action at a time (the scheduler's own latency, no queueing).
//! - **Real trivial actions.** `/bin/true` with an empty input root through real agents:
//!   `tessera coordinator` and `tessera agent` child processes of the `tessera` binary, as
//!   deployed (an agent's fork cost depends on its own address space, so it must not share
//!   the bench's), with the CPU the coordinator and agents spend per action read from `/proc`,
//!   beside the cost of a bare spawn of `/bin/true` here. No target: it says what a trivial
//!   action costs, with the agent's default sandbox and with `--sandbox off`.
//!
//! With `--security tls-tokens` both parts run against coordinators with TLS and tokens (the
//! clients with a `developer` token, the agents, simulated or real, with an `agent` token);
//! with `both`, against each, and scheduler capacity must keep 90% of its plain figure.
//! With `--metrics off` the capacity part runs with the coordinator's metrics off; with
//! `both`, off then on (recorded and scraped every second), and scheduler capacity must keep
//! 95% of its figure without metrics ([`compare::combine`]). The real part's `tessera
//! coordinator` processes always record metrics, so `--metrics off|both` leaves it out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tessera_cas::digest::DigestFunction;

use crate::actions::{self, ActionSet, Timeline};
use crate::compare::{self, Modes, Setup};
use crate::cpu;
use crate::error::BenchError;
use crate::limits::{self, SpawnCost};
use crate::link;
use crate::metrics::{Metrics, Scrapes};
use crate::processes::{Cluster, tessera_binary};
use crate::report::{Check, Environment, Layout, Report, Row, percentile, thousands};
use crate::security::{self, Certificates, Credentials, Security};
use crate::server::BenchServer;
use crate::sim_agent::SimulatedAgents;

/// Fewest actions per second the scheduler must complete.
const MIN_ACTIONS_PER_S: f64 = 5_000.0;
/// Largest median submit-to-lease time allowed, milliseconds.
const MAX_SUBMIT_TO_LEASE_P50_MS: f64 = 2.0;
/// The trivial action.
const TRUE: &str = "/bin/true";
/// Names of the in-process coordinator's threads: its runtime (`BenchServer`), the metadata
/// group flusher and the metadata store's threads.
const COORDINATOR_THREADS: &[&str] = &["coordinator", "tessera-meta", "log flusher"];

/// How the real agents isolate actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sandbox {
    /// The agent's default: Linux namespaces where the host allows them.
    Auto,
    /// `--sandbox off`: process group and resource limits only.
    Off,
}

impl Sandbox {
    fn agent_args(self) -> &'static [&'static str] {
        match self {
            Sandbox::Auto => &[],
            Sandbox::Off => &["--sandbox", "off"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Sandbox::Auto => "auto",
            Sandbox::Off => "off",
        }
    }
}

/// What one `sched` run measures.
#[derive(Debug, Clone)]
pub(crate) struct SchedPlan {
    /// The command line that selects this plan, for the report.
    pub command: String,
    /// Simulated agents.
    pub agents: usize,
    /// Slots per simulated agent.
    pub slots: u32,
    /// Actions timed at each load level.
    pub actions: usize,
    /// Load levels: Execute calls in flight at once.
    pub loads: Vec<usize>,
    /// Client connections the calls are spread over.
    pub connections: usize,
    /// Untimed actions first, so nothing timed pays for start-up.
    pub warm_up: usize,
    /// Actions executed one at a time, for the unloaded submit-to-lease time.
    pub one_at_a_time: usize,
    /// The real-agent part.
    pub real: RealPlan,
}

/// The real-agent part of a `sched` run.
#[derive(Debug, Clone)]
pub(crate) struct RealPlan {
    /// `tessera agent` processes.
    pub agents: usize,
    /// Slots per agent.
    pub slots: u32,
    /// Actions timed, per sandbox mode.
    pub actions: usize,
    /// Execute calls in flight at once.
    pub in_flight: usize,
    /// Bare spawns timed for the baseline.
    pub spawns: usize,
    /// Sandbox modes to run with.
    pub sandboxes: Vec<Sandbox>,
    /// The `tessera` binary (`None`: found beside this executable).
    pub tessera: Option<PathBuf>,
}

impl SchedPlan {
    /// The benchmark the README quotes: 50 simulated agents × 4 slots, 20,000 actions.
    pub(crate) fn full() -> Self {
        SchedPlan {
            command: "cargo run --release -p tessera-bench -- sched".to_owned(),
            agents: 50,
            slots: 4,
            actions: 20_000,
            loads: vec![16, 64],
            connections: 8,
            warm_up: 1_000,
            one_at_a_time: 500,
            real: RealPlan {
                agents: 2,
                slots: 2,
                actions: 2_000,
                in_flight: 8,
                spawns: 1_000,
                sandboxes: vec![Sandbox::Auto, Sandbox::Off],
                tessera: None,
            },
        }
    }

    /// A smoke run: fewer actions, same targets.
    pub(crate) fn quick() -> Self {
        let full = SchedPlan::full();
        SchedPlan {
            command: "cargo run --release -p tessera-bench -- sched --quick".to_owned(),
            actions: 2_000,
            warm_up: 200,
            one_at_a_time: 100,
            real: RealPlan {
                actions: 200,
                spawns: 200,
                sandboxes: vec![Sandbox::Auto],
                ..full.real
            },
            ..full
        }
    }
}

/// Prefix of the capacity rows' measurement: the rows the issue holds to the cost target.
const CAPACITY: &str = "Scheduler capacity";

/// Runs `plan` set up as each of `modes`' setups asks, one after the other.
pub(crate) async fn run(
    plan: &SchedPlan,
    data_parent: Option<&Path>,
    modes: Modes,
) -> Result<Report, BenchError> {
    // Child processes cannot be switched: leave them out of every run, so the runs compare.
    let with_real = !modes.metrics_off_somewhere();
    let mut runs = Vec::new();
    for setup in modes.setups() {
        progress(&format!(
            "sched: coordinator {}, {}",
            setup.security.label(),
            setup.metrics.label()
        ));
        runs.push(run_once(plan, data_parent, setup, with_real).await?);
    }
    compare::combine(modes, runs, |row| row.measurement.starts_with(CAPACITY))
}

/// Runs `plan`: each part against its own coordinator with its data under `data_parent`; the
/// real part only `with_real`.
async fn run_once(
    plan: &SchedPlan,
    data_parent: Option<&Path>,
    setup: Setup,
    with_real: bool,
) -> Result<Report, BenchError> {
    let environment = Environment::here(&plan.command, data_parent);
    let (mut rows, scrapes) = simulated(plan, data_parent, setup).await?;
    let mut notes = vec![format!(
        "Capacity rows: agents simulated in the bench process (real protocol, each lease \
         answered at once), Execute calls over {} connections, every action distinct with \
         skip_cache_lookup; each load level runs its own {} actions. Submit → lease is from \
         sending Execute to the simulated agent receiving the lease. The clients and simulated \
         agents share the machine's {} cores with the coordinator; \"coordinator CPU\" counts \
         its threads only (runtime, store flushers).",
        plan.connections,
        thousands(plan.actions),
        environment.cores
    )];
    if setup.security == Security::TlsTokens {
        notes.push(security::secure_note());
    }
    notes.extend(scrapes.map(|scrapes| scrapes.note()));
    if setup.metrics == Metrics::Off {
        notes.push(crate::metrics::off_note());
    }
    if with_real {
        let (real_rows, real_notes) = real(&plan.real, data_parent, setup.security).await?;
        rows.extend(real_rows);
        notes.extend(real_notes);
    } else {
        notes.push(
            "Real actions left out: their `tessera coordinator` processes always record \
             metrics (the switch reaches only the coordinator in this process)."
                .to_owned(),
        );
    }
    Ok(Report {
        environment,
        layout: Layout::Execution,
        rows,
        notes,
    })
}

fn progress(message: &str) {
    eprintln!("tessera-bench: {message}");
}

/// The capacity rows, and what the scraper fetched (with metrics on).
async fn simulated(
    plan: &SchedPlan,
    data_parent: Option<&Path>,
    setup: Setup,
) -> Result<(Vec<Row>, Option<Scrapes>), BenchError> {
    let server = BenchServer::start(data_parent, setup).await?;
    let measured = simulated_on(plan, &server).await;
    let stopped = server.stop().await;
    let rows = measured?;
    Ok((rows, stopped?))
}

async fn simulated_on(plan: &SchedPlan, server: &BenchServer) -> Result<Vec<Row>, BenchError> {
    let total = plan.warm_up + plan.actions * plan.loads.len() + plan.one_at_a_time;
    progress(&format!("sched: uploading {} actions", thousands(total)));
    let cas = server.client(DigestFunction::Sha256, 1).await?;
    let actions = ActionSet::upload(&cas, &[TRUE], total).await?;
    let timeline = Arc::new(Timeline::new(total));
    progress(&format!(
        "sched: connecting {} simulated agents × {} slots",
        plan.agents, plan.slots
    ));
    let agents = SimulatedAgents::start(
        server.endpoint(),
        server.agent_auth(),
        plan.agents,
        plan.slots,
        Arc::clone(&timeline),
    )
    .await?;
    server.wait_for_agents(plan.agents).await?;
    let channels =
        actions::connect(server.endpoint(), server.client_auth(), plan.connections).await?;
    let timeline_for = || Some(Arc::clone(&timeline));
    let most = plan.loads.iter().copied().max().unwrap_or(1);
    actions::execute(&channels, &actions, 0..plan.warm_up, most, timeline_for()).await?;

    let fleet = format!("{} agents × {} slots", plan.agents, plan.slots);
    let mut rows = Vec::new();
    let mut next = plan.warm_up;
    for &in_flight in &plan.loads {
        let range = next..next + plan.actions;
        next = range.end;
        progress(&format!(
            "sched: {} actions, {in_flight} in flight",
            thousands(plan.actions)
        ));
        let coordinator_before = cpu::threads_named(COORDINATOR_THREADS)?;
        let run = actions::execute(
            &channels,
            &actions,
            range.clone(),
            in_flight,
            timeline_for(),
        )
        .await?;
        let coordinator_cpu = cpu::threads_named(COORDINATOR_THREADS)? - coordinator_before;
        let lease = timeline.submit_to_lease_ms(range)?;
        rows.push(Row {
            measurement: format!("{CAPACITY}, {in_flight} in flight"),
            digest: String::new(),
            workload: format!(
                "{} distinct actions, {fleet} (simulated); coordinator CPU {:.0} µs/action",
                thousands(plan.actions),
                coordinator_cpu.as_secs_f64() * 1e6 / plan.actions.max(1) as f64
            ),
            check: Check::Rate {
                unit: "actions",
                per_s: run.per_s(),
                p50_ms: percentile(&run.latencies_ms, 0.5),
                p99_ms: percentile(&run.latencies_ms, 0.99),
                min_per_s: Some(MIN_ACTIONS_PER_S),
                bare_spawn_ms: None,
            },
        });
        rows.push(Row {
            measurement: format!("Submit → lease, {in_flight} in flight"),
            digest: String::new(),
            workload: "the same actions".to_owned(),
            check: Check::Latency {
                calls: lease.len(),
                p50_ms: percentile(&lease, 0.5),
                p99_ms: percentile(&lease, 0.99),
                max_p50_ms: MAX_SUBMIT_TO_LEASE_P50_MS,
            },
        });
    }

    progress(&format!(
        "sched: {} actions one at a time",
        thousands(plan.one_at_a_time)
    ));
    let single = next..total;
    actions::execute(&channels, &actions, single.clone(), 1, timeline_for()).await?;
    let answered = agents.stop().await?;
    if answered != actions.len() as u64 {
        return Err(BenchError::Unexpected(format!(
            "the simulated agents answered {answered} leases for {} actions",
            actions.len()
        )));
    }
    let lease = timeline.submit_to_lease_ms(single)?;
    rows.push(Row {
        measurement: "Submit → lease, one at a time".to_owned(),
        digest: String::new(),
        workload: format!("{} actions, {fleet}", thousands(plan.one_at_a_time)),
        check: Check::Latency {
            calls: lease.len(),
            p50_ms: percentile(&lease, 0.5),
            p99_ms: percentile(&lease, 0.99),
            max_p50_ms: MAX_SUBMIT_TO_LEASE_P50_MS,
        },
    });
    Ok(rows)
}

/// The real-agent rows: the bare spawn baseline, then rate and CPU per sandbox mode.
async fn real(
    plan: &RealPlan,
    data_parent: Option<&Path>,
    security: Security,
) -> Result<(Vec<Row>, Vec<String>), BenchError> {
    let binary = tessera_binary(plan.tessera.as_deref())?;
    progress(&format!(
        "sched: {} bare spawns of {TRUE}",
        thousands(plan.spawns)
    ));
    let spawn = limits::spawn_cost(TRUE, plan.spawns).await?;
    let mut rows = vec![Row {
        measurement: format!("Bare spawn of {TRUE}"),
        digest: String::new(),
        workload: "fork + exec + wait, one at a time".to_owned(),
        check: Check::Spawn {
            spawns: spawn.spawns,
            ms_per_spawn: spawn.ms,
            cpu_ms_per_spawn: spawn.cpu_ms,
        },
    }];
    let mut notes = vec![format!(
        "Real actions: `tessera coordinator` and `tessera agent` processes from {}; CPU is \
         user + system time (each process's own from its CPU-time clock, to the nanosecond) \
         over the timed actions only; \"actions' own CPU\" is the agents' reaped children (the \
         sandboxed /bin/true; /proc/<pid>/stat, 10 ms ticks).",
        binary.display()
    )];
    for &sandbox in &plan.sandboxes {
        let dir = scratch_dir(data_parent)?;
        let (cluster, credentials) =
            start_cluster(&binary, dir.path(), plan, sandbox, security).await?;
        let measured = real_on(plan, sandbox, &spawn, &cluster, &credentials).await;
        tokio::task::spawn_blocking(move || cluster.stop()).await??;
        let (more_rows, note) = measured?;
        rows.extend(more_rows);
        notes.push(note);
    }
    Ok((rows, notes))
}

/// A coordinator and `plan.agents` agents in `dir`, secured as `security` says, and what the
/// clients present to it.
async fn start_cluster(
    binary: &Path,
    dir: &Path,
    plan: &RealPlan,
    sandbox: Sandbox,
    security: Security,
) -> Result<(Cluster, Credentials), BenchError> {
    let certificates = match security {
        Security::Plain => None,
        Security::TlsTokens => Some(Certificates::generate(&dir.join("tls"))?),
    };
    let cluster = {
        let (binary, dir, certificates) = (binary.to_owned(), dir.to_owned(), certificates.clone());
        tokio::task::spawn_blocking(move || {
            Cluster::start_coordinator(&binary, &dir, certificates.as_ref())
        })
        .await??
    };
    let credentials = match &certificates {
        None => Credentials::default(),
        Some(certificates) => {
            Credentials::create(
                &cluster.endpoint(),
                &certificates.ca,
                &cluster.admin_token_file(),
            )
            .await?
        }
    };
    let (agents, slots, agent_auth) = (plan.agents, plan.slots, credentials.agents.clone());
    let cluster = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        cluster
            .start_agents(agents, slots, sandbox.agent_args(), &agent_auth)
            .map(|()| cluster)
    })
    .await??;
    Ok((cluster, credentials))
}

fn scratch_dir(parent: Option<&Path>) -> Result<tempfile::TempDir, BenchError> {
    match parent {
        Some(parent) => tempfile::Builder::new()
            .prefix("tessera-bench-")
            .tempdir_in(parent),
        None => tempfile::Builder::new().prefix("tessera-bench-").tempdir(),
    }
    .map_err(|source| BenchError::Io {
        what: "create the data directory",
        source,
    })
}

async fn real_on(
    plan: &RealPlan,
    sandbox: Sandbox,
    spawn: &SpawnCost,
    cluster: &Cluster,
    credentials: &Credentials,
) -> Result<(Vec<Row>, String), BenchError> {
    let endpoint = cluster.endpoint();
    let warm_up = plan.agents * plan.slots as usize * 2;
    let total = warm_up + plan.actions;
    let cas = link::cas_client(&endpoint, &credentials.clients, DigestFunction::Sha256, 1).await?;
    let actions = ActionSet::upload(&cas, &[TRUE], total).await?;
    let channels = actions::connect(&endpoint, &credentials.clients, 2).await?;
    progress(&format!(
        "sched: {} real actions ({} agents × {} slots, sandbox {})",
        thousands(plan.actions),
        plan.agents,
        plan.slots,
        sandbox.name()
    ));
    actions::execute(&channels, &actions, 0..warm_up, plan.in_flight, None).await?;
    let before = cluster.cpu()?;
    let executed =
        actions::execute(&channels, &actions, warm_up..total, plan.in_flight, None).await?;
    let spent = cluster.cpu()? - before;

    let label = match sandbox {
        Sandbox::Auto => format!("sandbox {}", cluster.agent_sandbox()?),
        Sandbox::Off => "sandbox off".to_owned(),
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / plan.actions.max(1) as f64;
    let workload = format!(
        "{} × {TRUE}, empty input root, {} agents × {} slots, {} in flight",
        thousands(plan.actions),
        plan.agents,
        plan.slots,
        plan.in_flight
    );
    let rows = vec![
        Row {
            measurement: format!("Real trivial actions ({label})"),
            digest: String::new(),
            workload: workload.clone(),
            check: Check::Rate {
                unit: "actions",
                per_s: executed.per_s(),
                p50_ms: percentile(&executed.latencies_ms, 0.5),
                p99_ms: percentile(&executed.latencies_ms, 0.99),
                min_per_s: None,
                bare_spawn_ms: Some(spawn.ms),
            },
        },
        Row {
            measurement: format!("Coordinator + agent CPU per action ({label})"),
            digest: String::new(),
            workload,
            check: Check::CpuPerAction {
                actions: plan.actions as u64,
                ms: ms(spent.coordinator.own + spent.agents.own),
                coordinator_ms: ms(spent.coordinator.own),
                agent_ms: ms(spent.agents.own),
                action_processes_ms: ms(spent.agents.children),
                bare_spawn_ms: Some(spawn.ms),
                max_ms: None,
            },
        },
    ];
    let note = format!(
        "Real actions, {label}: {:.2} s for {} actions; CPU coordinator {:.0} ms, agents {:.0} \
         ms, action processes {:.0} ms.",
        executed.elapsed.as_secs_f64(),
        plan.actions,
        spent.coordinator.own.as_secs_f64() * 1e3,
        spent.agents.own.as_secs_f64() * 1e3,
        spent.agents.children.as_secs_f64() * 1e3,
    );
    Ok((rows, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sched --quick`, shrunk further for a debug build: every row, end to end. The real part
    /// needs the `tessera` binary (`cargo build -p tessera-cli`, as for the workspace's
    /// integration tests, or `TESSERA_BIN`).
    fn smoke() -> SchedPlan {
        let quick = SchedPlan::quick();
        SchedPlan {
            command: "smoke test".to_owned(),
            agents: 4,
            slots: 2,
            actions: 200,
            loads: vec![8],
            connections: 2,
            warm_up: 20,
            one_at_a_time: 10,
            real: RealPlan {
                agents: 1,
                slots: 2,
                actions: 10,
                in_flight: 4,
                spawns: 10,
                ..quick.real
            },
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn smoke_plan_measures_every_row() {
        let report = run(&smoke(), None, Modes::default())
            .await
            .expect("benchmark runs");
        // Capacity and latency at one load, one at a time, the spawn baseline, then rate and
        // CPU for one sandbox.
        assert_eq!(report.rows.len(), 2 + 1 + 1 + 2);
        for row in &report.rows {
            let values = match row.check {
                Check::Rate {
                    per_s,
                    p50_ms,
                    p99_ms,
                    ..
                } => vec![per_s, p50_ms, p99_ms],
                Check::Latency { p50_ms, p99_ms, .. } => vec![p50_ms, p99_ms],
                Check::Spawn { ms_per_spawn, .. } => vec![ms_per_spawn],
                // Ten actions may fit in one clock tick of CPU.
                Check::CpuPerAction { ms, .. } => vec![ms + 1.0],
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

    /// `--metrics both`: the capacity rows without and with metrics (the real part left out,
    /// so no `tessera` binary is needed), then the comparisons, capacity held to the target.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_both_compares_the_capacity_rows() {
        use crate::metrics::MetricsArg;
        use crate::security::SecurityArg;
        let modes = Modes::new(SecurityArg::Plain, MetricsArg::Both).unwrap();
        let report = run(&smoke(), None, modes)
            .await
            .expect("benchmark runs with and without metrics");
        // Capacity and latency at one load, one at a time: twice, then three comparisons.
        assert_eq!(report.rows.len(), 3 * 3);
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
        assert_eq!(
            targeted,
            ["Scheduler capacity, 8 in flight: metrics on / metrics off"]
        );
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.starts_with("Real actions left out"))
        );
    }
}

//! `tessera-bench shard`: how evenly the shard planner
//! ([`tessera_coordinator::jobs::planner`]) spreads a test suite over slots, beside the two
//! ways test suites are usually split.
//!
//! - **Pull planner**: Tessera's. Free slots pull batches cut slowest-first, shrinking as the
//!   job nears its end.
//! - **Static LPT**: the suite split up front into one shard per slot, longest test first into
//!   the least loaded shard, from the same history (what CircleCI's timing split, Knapsack's
//!   regular mode and Jenkins' parallel-test-executor do). Each shard runs serially on its slot.
//! - **Count/hash**: test `i` of the listing goes to shard `i mod slots` (nextest
//!   `--partition count:`; hash partitioning spreads tests the same way on average).
//!
//! Sharding efficiency is a lower bound on the makespan over the makespan. Suites are synthetic
//! and heavy-tailed (log-normal durations with median 1 s and sigma 1.0, plus 1% outliers at
//! 100x the median). Each seed is run with the noise off (every slot equally fast, every run
//! exactly its recorded duration) and on (slot speed factors drawn from 0.8 to 1.2, each run
//! within 10% of its recorded duration; the planners see only the history). The simulation
//! runs on a simulated clock and charges every batch a fixed overhead (a static shard is one
//! batch). A small real run with sleeping tests on threads and the wall clock checks that the
//! simulation's conclusions survive a real clock.
//!
//! Targets (from the issue that asked for this benchmark): at 4 and 16 slots, an efficiency of
//! 0.95 or better; never behind either baseline; ahead of both once the noise is on.
//!
//! **First run** (issue 11): a suite with no history at all, as pytest suites of a few thousand
//! fast tests are, with a costly tool start-up (imports and collection) paid by every batch
//! that starts the tool. The planner knows only the list step (its wall time and test count)
//! and what the job's first results and batches show. Target: at most `2 × slots + 2` tool
//! start-ups per job when every batch starts the tool; with a long-lived worker per slot the
//! start-ups are one per slot by construction, and the row shows what the sizing costs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::f64::consts::TAU;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tessera_coordinator::jobs::planner::{PlannerConfig, ShardPlanner, Startups};

use crate::report::Verdict;

/// Median of the synthetic durations, seconds.
const MEDIAN_S: f64 = 1.0;
/// Sigma of the log-normal durations.
const SIGMA: f64 = 1.0;
/// Share of tests that are outliers.
const OUTLIER_SHARE: f64 = 0.01;
/// How many medians an outlier takes.
const OUTLIER_MEDIANS: f64 = 100.0;
/// Slot speed factors (duration multipliers) are drawn from this range when the noise is on.
const SLOT_SPEED: std::ops::Range<f64> = 0.8..1.2;
/// Each run of a test is within this share of its recorded duration when the noise is on.
const RUN_VARIATION: f64 = 0.1;
/// Efficiency the pull planner must reach at the slot counts in [`EFFICIENCY_TARGET_SLOTS`].
const EFFICIENCY_TARGET: f64 = 0.95;
/// Slot counts held to [`EFFICIENCY_TARGET`].
const EFFICIENCY_TARGET_SLOTS: [usize; 2] = [4, 16];
/// Slot count of the overhead sensitivity rows.
const SENSITIVITY_SLOTS: usize = 16;
/// Mean efficiencies closer than this are a tie: neither planner is ahead or behind.
const TIE_MARGIN: f64 = 0.005;
/// Tests in the first-run suite (the largest suite of issue 11).
const FIRST_RUN_TESTS: usize = 5_344;
/// The tool's start-up per process in the first-run suite, seconds (pytest importing and
/// collecting a suite of that size).
const FIRST_RUN_STARTUP_S: f64 = 1.0;
/// What collecting one test adds to the list step, seconds.
const FIRST_RUN_COLLECT_S: f64 = 0.000_4;
/// Slot counts of the first-run rows.
const FIRST_RUN_SLOTS: [usize; 4] = [2, 4, 8, 16];

/// What one `shard` run measures.
#[derive(Debug, Clone)]
pub(crate) struct ShardPlan {
    /// The command line that selects this plan, for the report.
    pub command: String,
    /// Tests per synthetic suite.
    pub tests: usize,
    /// Seeds (suites, slot speeds and run variations) per row.
    pub seeds: u64,
    /// Slot counts simulated.
    pub slot_counts: Vec<usize>,
    /// The pull planner's configuration. Its `batch_overhead` is also the fixed cost the
    /// simulation charges every batch (scaled, in the real run), pull or static.
    pub planner: PlannerConfig,
    /// Other fixed overheads per batch to simulate, at [`SENSITIVITY_SLOTS`] slots, for
    /// context.
    pub sensitivity_overheads: Vec<Duration>,
    /// The real run with sleeping tests; `None` to skip it.
    pub real: Option<RealPlan>,
}

/// The real run: a small suite slept through on threads, timed by the wall clock.
#[derive(Debug, Clone)]
pub(crate) struct RealPlan {
    /// Tests in the suite.
    pub tests: usize,
    /// Threads, one per slot.
    pub slots: usize,
    /// The suite's recorded durations are scaled to add up to this much sleeping.
    pub total_sleep: Duration,
    /// Seed of the suite and of the noise.
    pub seed: u64,
}

impl ShardPlan {
    /// The benchmark the README quotes.
    pub(crate) fn full() -> Self {
        ShardPlan {
            command: "cargo run --release -p tessera-bench -- shard".to_owned(),
            tests: 2_000,
            seeds: 30,
            slot_counts: vec![4, 16, 64],
            // What every job runs with, batches capped at 10 s included.
            planner: tessera_coordinator::jobs::driver::planner_config(),
            sensitivity_overheads: [0, 200, 1_000].map(Duration::from_millis).to_vec(),
            real: Some(RealPlan {
                tests: 200,
                slots: 4,
                total_sleep: Duration::from_secs(48),
                seed: 1,
            }),
        }
    }

    /// A smoke run: fewer seeds and a real run of a few seconds, same suites and targets.
    pub(crate) fn quick() -> Self {
        ShardPlan {
            command: "cargo run --release -p tessera-bench -- shard --quick".to_owned(),
            seeds: 3,
            real: Some(RealPlan {
                total_sleep: Duration::from_secs(4),
                ..ShardPlan::full().real.expect("full plan has a real run")
            }),
            ..ShardPlan::full()
        }
    }
}

/// Mean and minimum efficiency over the seeds of a row.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Efficiency {
    /// Mean over the seeds.
    pub mean: f64,
    /// Lowest over the seeds.
    pub min: f64,
}

impl Efficiency {
    fn of(samples: &[f64]) -> Self {
        Efficiency {
            mean: samples.iter().sum::<f64>() / samples.len() as f64,
            min: samples.iter().copied().fold(f64::INFINITY, f64::min),
        }
    }
}

/// One simulated configuration over all seeds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SimRow {
    /// Slots the suite is spread over.
    pub slots: usize,
    /// Whether slot speeds and run durations vary.
    pub noise: bool,
    /// Seeds simulated.
    pub seeds: usize,
    /// Tessera's pull planner.
    pub pull: Efficiency,
    /// Static longest-processing-time-first partitioning.
    pub lpt: Efficiency,
    /// Count (round-robin) partitioning.
    pub count: Efficiency,
    /// Batches the pull planner handed out per job (mean).
    pub pull_batches: f64,
    /// Seeds on which the pull planner was at least as efficient as static LPT.
    pub pull_at_least_lpt: usize,
    /// Seeds on which the pull planner was at least as efficient as count partitioning.
    pub pull_at_least_count: usize,
    /// The target, in words.
    pub target: String,
    /// Whether the target was met.
    pub verdict: Verdict,
}

/// The pull planner against static LPT at one fixed overhead per batch (context, no target).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OverheadRow {
    /// Slots the suite is spread over.
    pub slots: usize,
    /// Fixed overhead per batch, milliseconds.
    pub overhead_ms: f64,
    /// Whether slot speeds and run durations vary.
    pub noise: bool,
    /// Tessera's pull planner.
    pub pull: Efficiency,
    /// Static longest-processing-time-first partitioning.
    pub lpt: Efficiency,
    /// Batches the pull planner handed out per job (mean).
    pub pull_batches: f64,
}

/// One planner in the real run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RealRow {
    /// Which planner.
    pub planner: &'static str,
    /// Wall time from the first batch handed out to the last test finished, seconds.
    pub makespan_s: f64,
    /// Efficiency: the lower bound over the makespan.
    pub efficiency: f64,
    /// Batches run.
    pub batches: usize,
}

/// The real run's setup and results.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RealReport {
    /// Tests in the suite.
    pub tests: usize,
    /// Threads, one per slot.
    pub slots: usize,
    /// Recorded durations are multiplied by this to give the sleep.
    pub scale: f64,
    /// Sleep the scaled recorded durations add up to, seconds.
    pub total_sleep_s: f64,
    /// Fixed overhead per batch (scaled), slept before each batch, milliseconds.
    pub batch_overhead_ms: f64,
    /// The planner's minimum batch (scaled), milliseconds.
    pub min_batch_ms: f64,
    /// Lower bound on the makespan, seconds.
    pub lower_bound_s: f64,
    /// Pull planner, then static LPT.
    pub rows: Vec<RealRow>,
    /// The target, in words.
    pub target: String,
    /// Whether the target was met.
    pub verdict: Verdict,
}

/// A whole `shard` run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ShardReport {
    /// The command that produced the report.
    pub command: String,
    /// `release` or `debug`.
    pub profile: &'static str,
    /// Tests per synthetic suite.
    pub tests: usize,
    /// Fixed overhead charged per batch in the simulation, milliseconds.
    pub batch_overhead_ms: f64,
    /// The pull planner's minimum batch, milliseconds.
    pub min_batch_ms: f64,
    /// The pull planner's batch share.
    pub batch_share: f64,
    /// The pull planner's own cost to plan one job (sort the suite, fill in medians),
    /// measured in the simulation, microseconds.
    pub planner_us_per_job: f64,
    /// The pull planner's own cost per batch (`next_batch` plus recording the batch's
    /// tests), measured in the simulation, microseconds.
    pub planner_us_per_batch: f64,
    /// One row per slot count and noise setting.
    pub rows: Vec<SimRow>,
    /// The pull planner and static LPT as the fixed overhead per batch grows.
    pub overhead_sensitivity: Vec<OverheadRow>,
    /// The real run, if it ran.
    pub real: Option<RealReport>,
    /// A suite with no history, per slot count and start-up model.
    pub first_run: Vec<FirstRunRow>,
}

/// One first run: a suite with no history on a number of slots (see the module docs).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FirstRunRow {
    /// Slots the suite is spread over.
    pub slots: usize,
    /// Whether a long-lived worker per slot serves the batches.
    pub worker: bool,
    /// Mean over the seeds of the batches handed out.
    pub batches: f64,
    /// Most tool start-ups of any seed.
    pub max_startups: usize,
    /// Mean over the seeds of the makespan, seconds.
    pub makespan_s: f64,
    /// Mean efficiency: (total work / slots + one start-up) over the makespan.
    pub efficiency: f64,
    /// The target, in words.
    pub target: String,
    /// Whether the target was met.
    pub verdict: Verdict,
}

impl ShardReport {
    /// Whether any target was missed.
    pub(crate) fn missed(&self) -> bool {
        self.rows.iter().any(|row| row.verdict == Verdict::Miss)
            || self
                .first_run
                .iter()
                .any(|row| row.verdict == Verdict::Miss)
            || self
                .real
                .as_ref()
                .is_some_and(|real| real.verdict == Verdict::Miss)
    }

    /// Pretty JSON.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    /// Markdown tables with a short header and footnotes, ready to paste into the README.
    pub(crate) fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "`{}` — {} build; {} tests per suite, {} seeds per row; fixed overhead {} ms per \
             batch; pull planner: min batch {} ms, batch share {}, its own cost {:.0} µs to plan \
             a job and {:.1} µs per batch\n",
            self.command,
            self.profile,
            self.tests,
            self.rows.first().map_or(0, |row| row.seeds),
            self.batch_overhead_ms,
            self.min_batch_ms,
            self.batch_share,
            self.planner_us_per_job,
            self.planner_us_per_batch,
        );
        out.push_str(
            "| slots | noise | pull planner | static LPT | count/hash | pull batches/job | pull ≥ LPT, ≥ count (seeds) | target | verdict |\n",
        );
        out.push_str("|--:|---|--:|--:|--:|--:|--:|---|---|\n");
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.0} | {}/{}, {}/{} | {} | {} |",
                row.slots,
                if row.noise { "on" } else { "off" },
                cell(row.pull),
                cell(row.lpt),
                cell(row.count),
                row.pull_batches,
                row.pull_at_least_lpt,
                row.seeds,
                row.pull_at_least_count,
                row.seeds,
                row.target,
                verdict_cell(row.verdict),
            );
        }
        out.push_str(
            "\nEfficiency = lower bound / makespan, mean (min) over the seeds. A test's work is \
             its recorded duration times its run variation; a slot's speed factor multiplies \
             the work it runs. Lower bound = max(total work / Σ 1/speed, longest work × fastest \
             speed factor): no schedule beats either, whatever its overheads (with the noise \
             off, max(total / slots, longest test)). Makespans include the fixed overhead of \
             every batch; a static shard is one batch. Noise on: speed factors U(0.8, 1.2), \
             run variation U(0.9, 1.1); the planners see only the recorded durations. Means closer \
             than 0.005 are a tie (neither ahead nor behind); the seeds column compares \
             strictly, seed by seed.\n",
        );
        if !self.overhead_sensitivity.is_empty() {
            out.push_str(
                "\nFixed overhead per batch (context, no target): the pull planner pays it on every \
                 batch, a static shard once.\n\n",
            );
            out.push_str("| slots | overhead per batch | noise | pull planner | static LPT | pull batches/job |\n");
            out.push_str("|--:|--:|---|--:|--:|--:|\n");
            for row in &self.overhead_sensitivity {
                let _ = writeln!(
                    out,
                    "| {} | {} ms | {} | {} | {} | {:.0} |",
                    row.slots,
                    row.overhead_ms,
                    if row.noise { "on" } else { "off" },
                    cell(row.pull),
                    cell(row.lpt),
                    row.pull_batches,
                );
            }
        }
        if let Some(real) = &self.real {
            let _ = writeln!(
                out,
                "\nReal run: {} tests on {} threads with the noise on, durations scaled by {:.4} \
                 ({:.1} s of sleep in all), fixed overhead {:.2} ms per batch (slept), min \
                 batch {:.0} ms; lower bound {:.2} s.\n",
                real.tests,
                real.slots,
                real.scale,
                real.total_sleep_s,
                real.batch_overhead_ms,
                real.min_batch_ms,
                real.lower_bound_s,
            );
            out.push_str("| planner | makespan (wall) | efficiency | batches |\n");
            out.push_str("|---|--:|--:|--:|\n");
            for row in &real.rows {
                let _ = writeln!(
                    out,
                    "| {} | {:.2} s | {:.3} | {} |",
                    row.planner, row.makespan_s, row.efficiency, row.batches
                );
            }
            let _ = writeln!(
                out,
                "\nTarget: {} — {}",
                real.target,
                verdict_cell(real.verdict)
            );
        }
        if !self.first_run.is_empty() {
            let _ = writeln!(
                out,
                "\nFirst run: {FIRST_RUN_TESTS} tests with no history (log-normal, median 2 ms, \
                 1% at 50 ms), a tool start-up of {FIRST_RUN_STARTUP_S} s per process, a list \
                 step of one start-up plus {:.1} ms per test; the planner starts from the list \
                 step and revises from the results and the start-ups it measures. Efficiency = \
                 (total work / slots + one start-up) / makespan; start-ups: most of any seed.\n",
                FIRST_RUN_COLLECT_S * 1e3
            );
            out.push_str("| slots | tool start-ups paid | batches/job | tool start-ups (max) | makespan | efficiency | target | verdict |\n");
            out.push_str("|--:|---|--:|--:|--:|--:|---|---|\n");
            for row in &self.first_run {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1} | {} | {:.2} s | {:.3} | {} | {} |",
                    row.slots,
                    if row.worker {
                        "once per slot (worker)"
                    } else {
                        "every batch"
                    },
                    row.batches,
                    row.max_startups,
                    row.makespan_s,
                    row.efficiency,
                    row.target,
                    verdict_cell(row.verdict),
                );
            }
        }
        let (met, total) = self.tally();
        let _ = writeln!(
            out,
            "\nVerdict: {} ({met} of {total} targets met)",
            if self.missed() { "MISS" } else { "PASS" }
        );
        out
    }

    /// Targets met, targets in all.
    fn tally(&self) -> (usize, usize) {
        let verdicts: Vec<Verdict> = self
            .rows
            .iter()
            .map(|row| row.verdict)
            .chain(self.real.as_ref().map(|real| real.verdict))
            .chain(self.first_run.iter().map(|row| row.verdict))
            .collect();
        let met = verdicts.iter().filter(|&&v| v == Verdict::Pass).count();
        (met, verdicts.len())
    }
}

fn cell(efficiency: Efficiency) -> String {
    format!("{:.3} ({:.3})", efficiency.mean, efficiency.min)
}

fn verdict_cell(verdict: Verdict) -> &'static str {
    if verdict == Verdict::Pass {
        "PASS"
    } else {
        "**MISS**"
    }
}

/// Runs `plan`: the simulation, then the real run.
pub(crate) fn run(plan: &ShardPlan) -> ShardReport {
    let config = &plan.planner;
    let mut planner_cost = PlannerCost::default();
    let mut rows = Vec::new();
    for &slots in &plan.slot_counts {
        for noise in [false, true] {
            rows.push(sim_row(plan, config, slots, noise, &mut planner_cost));
        }
    }
    let mut overheads = plan.sensitivity_overheads.clone();
    overheads.push(config.batch_overhead);
    overheads.sort();
    overheads.dedup();
    let mut overhead_sensitivity = Vec::new();
    for overhead in overheads {
        let config = PlannerConfig {
            batch_overhead: overhead,
            ..config.clone()
        };
        for noise in [false, true] {
            let row = sim_row(
                plan,
                &config,
                SENSITIVITY_SLOTS,
                noise,
                &mut PlannerCost::default(),
            );
            overhead_sensitivity.push(OverheadRow {
                slots: row.slots,
                overhead_ms: millis(overhead),
                noise,
                pull: row.pull,
                lpt: row.lpt,
                pull_batches: row.pull_batches,
            });
        }
    }
    let real = plan.real.as_ref().map(|real| {
        progress(&format!(
            "real run: {} tests on {} threads, about {} s of sleep per planner",
            real.tests,
            real.slots,
            real.total_sleep.as_secs() / real.slots as u64
        ));
        real_run(real, config)
    });
    let first_run = FIRST_RUN_SLOTS
        .iter()
        .flat_map(|&slots| [false, true].map(|worker| first_run_row(plan, config, slots, worker)))
        .collect();
    ShardReport {
        command: plan.command.clone(),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        tests: plan.tests,
        batch_overhead_ms: millis(config.batch_overhead),
        min_batch_ms: millis(config.min_batch),
        batch_share: config.batch_share,
        planner_us_per_job: planner_cost.us_per_job(),
        planner_us_per_batch: planner_cost.us_per_batch(),
        rows,
        overhead_sensitivity,
        real,
        first_run,
    }
}

fn progress(message: &str) {
    eprintln!("tessera-bench: {message}");
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// One row: every seed of `plan` with the three planners, each batch costing
/// `config.batch_overhead`.
fn sim_row(
    plan: &ShardPlan,
    config: &PlannerConfig,
    slots: usize,
    noise: bool,
    cost: &mut PlannerCost,
) -> SimRow {
    let overhead = config.batch_overhead;
    let (mut pull, mut lpt, mut count) = (Vec::new(), Vec::new(), Vec::new());
    let mut batches = 0;
    for seed in 0..plan.seeds {
        let suite = Suite::synthetic(seed, plan.tests);
        let conditions = if noise {
            Conditions::noisy(seed, slots, plan.tests)
        } else {
            Conditions::exact(slots, plan.tests)
        };
        let bound = conditions.lower_bound(&suite);
        let pulled = simulate_pull(&suite, &conditions, config, cost);
        batches += pulled.batches;
        pull.push(bound / pulled.makespan);
        let shards = lpt_shards(&suite.history, slots);
        lpt.push(bound / static_makespan(&suite, &conditions, &shards, overhead));
        let shards = count_shards(suite.history.len(), slots);
        count.push(bound / static_makespan(&suite, &conditions, &shards, overhead));
    }
    let at_least = |baseline: &[f64]| pull.iter().zip(baseline).filter(|(p, b)| p >= b).count();
    let (pull_at_least_lpt, pull_at_least_count) = (at_least(&lpt), at_least(&count));
    let seeds = pull.len();
    let (pull, lpt, count) = (
        Efficiency::of(&pull),
        Efficiency::of(&lpt),
        Efficiency::of(&count),
    );
    let efficiency_target = EFFICIENCY_TARGET_SLOTS.contains(&slots);
    let mut target = Vec::new();
    let mut pass = true;
    if efficiency_target {
        target.push(format!("min ≥ {EFFICIENCY_TARGET}"));
        pass &= pull.min >= EFFICIENCY_TARGET;
    }
    let best_baseline = lpt.mean.max(count.mean);
    if noise {
        target.push("mean ahead of both".to_owned());
        pass &= pull.mean > best_baseline + TIE_MARGIN;
    } else {
        target.push("mean not behind either".to_owned());
        pass &= pull.mean >= best_baseline - TIE_MARGIN;
    }
    SimRow {
        slots,
        noise,
        seeds,
        pull,
        lpt,
        count,
        pull_batches: batches as f64 / seeds as f64,
        pull_at_least_lpt,
        pull_at_least_count,
        target: target.join(", "),
        verdict: if pass { Verdict::Pass } else { Verdict::Miss },
    }
}

/// A synthetic suite: ids in listing order and their recorded durations, which are also the
/// tests' true mean durations.
struct Suite {
    ids: Vec<String>,
    index: HashMap<String, usize>,
    /// Seconds.
    history: Vec<f64>,
}

impl Suite {
    /// `tests` log-normal durations (median 1 s, sigma 1.0), 1% of them replaced by outliers
    /// at 100 s, in random listing order.
    fn synthetic(seed: u64, tests: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut history: Vec<f64> = (0..tests)
            .map(|_| MEDIAN_S * (SIGMA * standard_normal(&mut rng)).exp())
            .collect();
        let outliers = (tests as f64 * OUTLIER_SHARE).round() as usize;
        let mut listing: Vec<usize> = (0..tests).collect();
        listing.shuffle(&mut rng);
        for &i in &listing[..outliers] {
            history[i] = OUTLIER_MEDIANS * MEDIAN_S;
        }
        let ids: Vec<String> = (0..tests).map(|i| format!("suite::test_{i:05}")).collect();
        let index = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        Suite {
            ids,
            index,
            history,
        }
    }

    /// The suite as the planner gets it: every test with its history.
    fn planner_input(&self) -> Vec<(String, Option<Duration>)> {
        self.ids
            .iter()
            .zip(&self.history)
            .map(|(id, &seconds)| (id.clone(), Some(Duration::from_secs_f64(seconds))))
            .collect()
    }
}

/// A standard normal draw (Box-Muller).
fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (TAU * u2).cos()
}

/// What the planners cannot see: how fast each slot is and how each test's run differs from
/// its history.
struct Conditions {
    /// Duration multiplier per slot.
    speed: Vec<f64>,
    /// Duration multiplier per test (this run's variation).
    variation: Vec<f64>,
}

impl Conditions {
    /// The noise off: equal slots, every run exactly its history.
    fn exact(slots: usize, tests: usize) -> Self {
        Conditions {
            speed: vec![1.0; slots],
            variation: vec![1.0; tests],
        }
    }

    /// The noise on, drawn from `seed` and the slot count.
    fn noisy(seed: u64, slots: usize, tests: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ ((slots as u64) << 32) ^ 0x5eed);
        Conditions {
            speed: (0..slots).map(|_| rng.random_range(SLOT_SPEED)).collect(),
            variation: (0..tests)
                .map(|_| rng.random_range(1.0 - RUN_VARIATION..1.0 + RUN_VARIATION))
                .collect(),
        }
    }

    /// The work of test `test`: its run's duration on a slot of speed factor 1, seconds.
    fn work(&self, suite: &Suite, test: usize) -> f64 {
        suite.history[test] * self.variation[test]
    }

    /// How long test `test` takes on slot `slot`, seconds.
    fn duration(&self, suite: &Suite, test: usize, slot: usize) -> f64 {
        self.work(suite, test) * self.speed[slot]
    }

    /// A makespan no schedule can beat: the total work at the slots' combined rate, or the
    /// longest test on the fastest slot.
    fn lower_bound(&self, suite: &Suite) -> f64 {
        let total: f64 = (0..suite.history.len()).map(|i| self.work(suite, i)).sum();
        let rate: f64 = self.speed.iter().map(|speed| 1.0 / speed).sum();
        let longest = (0..suite.history.len())
            .map(|i| self.work(suite, i))
            .fold(0.0, f64::max);
        let fastest = self.speed.iter().copied().fold(f64::INFINITY, f64::min);
        (total / rate).max(longest * fastest)
    }
}

/// The pull planner's own time: planning a job, and then per batch.
#[derive(Debug, Default)]
struct PlannerCost {
    /// In [`ShardPlanner::new`].
    planning: Duration,
    jobs: usize,
    /// In `next_batch` and `record`.
    batching: Duration,
    batches: usize,
}

impl PlannerCost {
    fn us_per_job(&self) -> f64 {
        self.planning.as_secs_f64() * 1e6 / self.jobs.max(1) as f64
    }

    fn us_per_batch(&self) -> f64 {
        self.batching.as_secs_f64() * 1e6 / self.batches.max(1) as f64
    }
}

/// How a simulated job went.
struct SimRun {
    /// Seconds.
    makespan: f64,
    batches: usize,
}

/// What happens at a point of simulated time.
enum Event {
    /// A test finished; the planner is told.
    TestFinished { test: usize, took: Duration },
    /// A slot is free and pulls a batch.
    SlotFree { slot: usize },
}

/// Simulates the pull planner: slots pull a batch whenever free (all at time zero, in slot
/// order), each batch costs the overhead and then its tests one after another, and each test
/// is recorded as it finishes.
fn simulate_pull(
    suite: &Suite,
    conditions: &Conditions,
    config: &PlannerConfig,
    cost: &mut PlannerCost,
) -> SimRun {
    let slots = conditions.speed.len();
    let started = Instant::now();
    let mut planner = ShardPlanner::new(suite.planner_input(), slots, config.clone());
    cost.planning += started.elapsed();
    cost.jobs += 1;
    // (time, finished tests before free slots, sequence) → what happens.
    let mut agenda = BinaryHeap::new();
    let mut events = Vec::new();
    for slot in 0..slots {
        agenda.push(Reverse((Duration::ZERO, 1, events.len())));
        events.push(Event::SlotFree { slot });
    }
    let (mut makespan, mut batches) = (Duration::ZERO, 0);
    while let Some(Reverse((now, _, event))) = agenda.pop() {
        match events[event] {
            Event::TestFinished { test, took } => {
                let started = Instant::now();
                planner.record(&suite.ids[test], took);
                cost.batching += started.elapsed();
            }
            Event::SlotFree { slot } => {
                let started = Instant::now();
                let batch = planner.next_batch(now);
                cost.batching += started.elapsed();
                let Some(batch) = batch else {
                    makespan = makespan.max(now);
                    continue;
                };
                batches += 1;
                cost.batches += 1;
                let mut t = now + config.batch_overhead;
                for id in &batch.tests {
                    let test = suite.index[id];
                    let took = Duration::from_secs_f64(conditions.duration(suite, test, slot));
                    t += took;
                    agenda.push(Reverse((t, 0, events.len())));
                    events.push(Event::TestFinished { test, took });
                }
                agenda.push(Reverse((t, 1, events.len())));
                events.push(Event::SlotFree { slot });
            }
        }
    }
    SimRun {
        makespan: makespan.as_secs_f64(),
        batches,
    }
}

/// The first-run row for `slots` (see the module docs): every seed's suite, with no history,
/// on equal slots, each batch charged `config.batch_overhead` and the start-up when it starts
/// the tool.
fn first_run_row(
    plan: &ShardPlan,
    config: &PlannerConfig,
    slots: usize,
    worker: bool,
) -> FirstRunRow {
    let startup = Duration::from_secs_f64(FIRST_RUN_STARTUP_S);
    let list_wall = startup + Duration::from_secs_f64(FIRST_RUN_COLLECT_S * FIRST_RUN_TESTS as f64);
    let (mut batches, mut max_startups, mut makespans, mut efficiencies) = (0, 0, 0.0, 0.0);
    for seed in 0..plan.seeds {
        let mut rng = StdRng::seed_from_u64(seed);
        let durations: Vec<Duration> = (0..FIRST_RUN_TESTS)
            .map(|_| {
                let s = if rng.random::<f64>() < OUTLIER_SHARE {
                    0.05
                } else {
                    0.002 * (SIGMA * standard_normal(&mut rng)).exp()
                };
                Duration::from_secs_f64(s)
            })
            .collect();
        let ids: Vec<String> = (0..FIRST_RUN_TESTS).map(|i| format!("t{i:05}")).collect();
        let config = PlannerConfig {
            // As the job driver sets them before any batch ran.
            startup: list_wall,
            startups: if worker {
                Startups::PerSlot
            } else {
                Startups::PerBatch
            },
            unmeasured_test: list_wall / u32::try_from(FIRST_RUN_TESTS).unwrap_or(u32::MAX),
            ..config.clone()
        };
        let mut planner = ShardPlanner::new(
            ids.iter().map(|id| (id.clone(), None)).collect(),
            slots,
            config.clone(),
        );
        let index: HashMap<&str, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        // (time, finished tests before start-ups before free slots, sequence) → what happens.
        let mut agenda = BinaryHeap::new();
        let mut events: Vec<FirstRunEvent> = Vec::new();
        for slot in 0..slots {
            agenda.push(Reverse((Duration::ZERO, 2, events.len())));
            events.push(FirstRunEvent::SlotFree(slot));
        }
        let mut started = vec![false; slots];
        let (mut makespan, mut startups) = (Duration::ZERO, 0);
        while let Some(Reverse((now, _, event))) = agenda.pop() {
            match events[event] {
                FirstRunEvent::TestFinished(test, took) => planner.record(&ids[test], took),
                FirstRunEvent::StartedUp => planner.record_startup(startup),
                FirstRunEvent::SlotFree(slot) => {
                    let Some(batch) = planner.next_batch(now) else {
                        makespan = makespan.max(now);
                        continue;
                    };
                    batches += 1;
                    let mut t = now + config.batch_overhead;
                    if !(worker && started[slot]) {
                        started[slot] = true;
                        startups += 1;
                        t += startup;
                        agenda.push(Reverse((t, 1, events.len())));
                        events.push(FirstRunEvent::StartedUp);
                    }
                    for id in &batch.tests {
                        let test = index[id.as_str()];
                        t += durations[test];
                        agenda.push(Reverse((t, 0, events.len())));
                        events.push(FirstRunEvent::TestFinished(test, durations[test]));
                    }
                    agenda.push(Reverse((t, 2, events.len())));
                    events.push(FirstRunEvent::SlotFree(slot));
                }
            }
        }
        let work: Duration = durations.iter().sum();
        let bound = work.as_secs_f64() / slots as f64 + FIRST_RUN_STARTUP_S;
        max_startups = max_startups.max(startups);
        makespans += makespan.as_secs_f64();
        efficiencies += bound / makespan.as_secs_f64();
    }
    let seeds = plan.seeds.max(1) as f64;
    let limit = 2 * slots + 2;
    FirstRunRow {
        slots,
        worker,
        batches: batches as f64 / seeds,
        max_startups,
        makespan_s: makespans / seeds,
        efficiency: efficiencies / seeds,
        target: format!("start-ups ≤ {limit}"),
        verdict: if max_startups <= limit {
            Verdict::Pass
        } else {
            Verdict::Miss
        },
    }
}

/// What happens at a point of simulated time in a first run.
enum FirstRunEvent {
    /// A test ended after the given duration.
    TestFinished(usize, Duration),
    /// A batch's tool process finished starting.
    StartedUp,
    /// A slot is free.
    SlotFree(usize),
}

/// Static longest-processing-time-first: tests by recorded duration, longest first (equal
/// durations in listing order), each into the shard with the least recorded work so far.
fn lpt_shards(history: &[f64], slots: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..history.len()).collect();
    order.sort_by(|&a, &b| history[b].total_cmp(&history[a]).then(a.cmp(&b)));
    let mut shards = vec![Vec::new(); slots];
    let mut load = vec![0.0_f64; slots];
    for test in order {
        let lightest = (0..slots)
            .min_by(|&a, &b| load[a].total_cmp(&load[b]))
            .expect("at least one slot");
        shards[lightest].push(test);
        load[lightest] += history[test];
    }
    shards
}

/// Count partitioning: test `i` of the listing into shard `i mod slots`.
fn count_shards(tests: usize, slots: usize) -> Vec<Vec<usize>> {
    let mut shards = vec![Vec::new(); slots];
    for test in 0..tests {
        shards[test % slots].push(test);
    }
    shards
}

/// Makespan of static shards, shard `s` run serially on slot `s` as one batch, seconds.
fn static_makespan(
    suite: &Suite,
    conditions: &Conditions,
    shards: &[Vec<usize>],
    overhead: Duration,
) -> f64 {
    shards
        .iter()
        .enumerate()
        .filter(|(_, shard)| !shard.is_empty())
        .map(|(slot, shard)| {
            overhead.as_secs_f64()
                + shard
                    .iter()
                    .map(|&test| conditions.duration(suite, test, slot))
                    .sum::<f64>()
        })
        .fold(0.0, f64::max)
}

/// The real run: the pull planner, then static LPT, each sleeping through the same scaled
/// suite on `slots` threads with the noise on.
fn real_run(plan: &RealPlan, config: &PlannerConfig) -> RealReport {
    let suite = Suite::synthetic(plan.seed, plan.tests);
    let conditions = Conditions::noisy(plan.seed, plan.slots, plan.tests);
    let scale = plan.total_sleep.as_secs_f64() / suite.history.iter().sum::<f64>();
    let scaled = Suite {
        history: suite.history.iter().map(|h| h * scale).collect(),
        ..suite
    };
    let config = PlannerConfig {
        min_batch: config.min_batch.mul_f64(scale),
        batch_overhead: config.batch_overhead.mul_f64(scale),
        max_batch: config.max_batch.map(|max| max.mul_f64(scale)),
        ..config.clone()
    };
    let bound = conditions.lower_bound(&scaled);
    let (pull_makespan, pull_batches) = real_pull(&scaled, &conditions, &config);
    let shards = lpt_shards(&scaled.history, plan.slots);
    let lpt_makespan = real_static(&scaled, &conditions, &shards, config.batch_overhead);
    let rows = vec![
        RealRow {
            planner: "pull planner",
            makespan_s: pull_makespan,
            efficiency: bound / pull_makespan,
            batches: pull_batches,
        },
        RealRow {
            planner: "static LPT",
            makespan_s: lpt_makespan,
            efficiency: bound / lpt_makespan,
            batches: shards.iter().filter(|shard| !shard.is_empty()).count(),
        },
    ];
    let pass = rows[0].efficiency >= EFFICIENCY_TARGET
        && rows[0].efficiency > rows[1].efficiency + TIE_MARGIN;
    RealReport {
        tests: plan.tests,
        slots: plan.slots,
        scale,
        total_sleep_s: plan.total_sleep.as_secs_f64(),
        batch_overhead_ms: millis(config.batch_overhead),
        min_batch_ms: millis(config.min_batch),
        lower_bound_s: bound,
        rows,
        target: format!("pull planner efficiency ≥ {EFFICIENCY_TARGET} and ahead of static LPT"),
        verdict: if pass { Verdict::Pass } else { Verdict::Miss },
    }
}

/// Threads pull batches from one planner behind a lock (the coordinator's single owner of
/// scheduling state), sleep the overhead and then each test, and record each test with its
/// measured duration. Returns the wall-clock makespan in seconds and the batches run.
fn real_pull(suite: &Suite, conditions: &Conditions, config: &PlannerConfig) -> (f64, usize) {
    let slots = conditions.speed.len();
    let planner = Mutex::new(ShardPlanner::new(
        suite.planner_input(),
        slots,
        config.clone(),
    ));
    let start = Instant::now();
    let batches: usize = thread::scope(|scope| {
        let workers: Vec<_> = (0..slots)
            .map(|slot| {
                let planner = &planner;
                scope.spawn(move || {
                    let mut batches = 0;
                    loop {
                        let batch = planner
                            .lock()
                            .expect("planner lock")
                            .next_batch(start.elapsed());
                        let Some(batch) = batch else {
                            return batches;
                        };
                        batches += 1;
                        thread::sleep(config.batch_overhead);
                        for id in &batch.tests {
                            let test = suite.index[id];
                            let began = Instant::now();
                            thread::sleep(Duration::from_secs_f64(
                                conditions.duration(suite, test, slot),
                            ));
                            let took = began.elapsed();
                            planner.lock().expect("planner lock").record(id, took);
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("slot thread"))
            .sum()
    });
    (start.elapsed().as_secs_f64(), batches)
}

/// Each thread sleeps its shard: the overhead once, then each test.
fn real_static(
    suite: &Suite,
    conditions: &Conditions,
    shards: &[Vec<usize>],
    overhead: Duration,
) -> f64 {
    let start = Instant::now();
    thread::scope(|scope| {
        for (slot, shard) in shards.iter().enumerate() {
            scope.spawn(move || {
                thread::sleep(overhead);
                for &test in shard {
                    thread::sleep(Duration::from_secs_f64(
                        conditions.duration(suite, test, slot),
                    ));
                }
            });
        }
    });
    start.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_suites_are_heavy_tailed_and_reproducible() {
        let suite = Suite::synthetic(7, 2_000);
        assert_eq!(suite.history, Suite::synthetic(7, 2_000).history);
        let outliers = suite
            .history
            .iter()
            .filter(|&&h| h == OUTLIER_MEDIANS)
            .count();
        assert_eq!(outliers, 20);
        let mut sorted = suite.history.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[1_000];
        assert!((0.85..1.15).contains(&median), "median {median}");
    }

    #[test]
    fn static_partitions_cover_every_test_once() {
        let history = [5.0, 1.0, 4.0, 2.0, 3.0];
        let lpt = lpt_shards(&history, 2);
        assert_eq!(lpt, vec![vec![0, 3, 1], vec![2, 4]]);
        assert_eq!(count_shards(5, 2), vec![vec![0, 2, 4], vec![1, 3]]);
    }

    #[test]
    fn the_lower_bound_is_work_over_capacity_or_the_longest_test() {
        let suite = Suite {
            ids: vec!["a".into(), "b".into()],
            index: HashMap::new(),
            history: vec![10.0, 2.0],
        };
        let exact = Conditions::exact(2, 2);
        assert_eq!(exact.lower_bound(&suite), 10.0);
        let uneven = Conditions {
            speed: vec![0.5, 1.0],
            variation: vec![1.0, 1.5],
        };
        // Work 13 at a rate of 2 + 1 per second takes 4.33 s; the longest, 10, on the 0.5
        // slot takes 5 s.
        assert!((uneven.lower_bound(&suite) - 5.0).abs() < 1e-9);
    }

    /// The smoke test: `--quick`, every row and the real run, in seconds on a debug build.
    #[test]
    fn quick_run_reports_every_row() {
        let plan = ShardPlan::quick();
        let report = run(&plan);
        assert_eq!(report.rows.len(), 6);
        for row in &report.rows {
            for efficiency in [row.pull, row.lpt, row.count] {
                assert!(efficiency.min > 0.0 && efficiency.mean <= 1.0, "{row:?}");
            }
        }
        let real = report.real.as_ref().expect("real run");
        assert_eq!(real.rows.len(), 2);
        assert!(real.rows.iter().all(|row| row.efficiency <= 1.0));
        assert_eq!(report.first_run.len(), 2 * FIRST_RUN_SLOTS.len());
        for row in &report.first_run {
            assert!(row.efficiency > 0.0 && row.efficiency <= 1.0, "{row:?}");
            if row.worker {
                assert!(row.max_startups <= row.slots, "{row:?}");
            }
        }
        assert!(report.to_markdown().contains("| 64 | on |"));
        assert!(report.to_markdown().contains("once per slot (worker)"));
        assert!(report.to_json().contains("\"pull_at_least_lpt\""));
    }
}

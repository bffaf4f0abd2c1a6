//! What a benchmark run found: one row per measurement, each carrying its result, the limits
//! or baselines measured beside it and the target it is held to, so a verdict is computed in
//! exactly one place ([`Check::verdict`]). Renders as a markdown table (for the README) or
//! JSON; the table's columns depend on the benchmark ([`Layout`]).

use std::fmt::Write as _;

use serde::Serialize;

/// Whether a measurement met its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum Verdict {
    /// The target was met.
    Pass,
    /// The target was missed.
    Miss,
    /// Measured for context; no target applies.
    NoTarget,
}

/// A measurement together with the target it is judged against.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Check {
    /// A transfer rate that must reach `share` of the lower of the two limits.
    Throughput {
        /// Measured MB/s.
        mb_per_s: f64,
        /// Single-core hash rate of the digest function, MB/s.
        hash_limit_mb_per_s: f64,
        /// The same bytes through a plain loopback TCP socket, MB/s.
        tcp_limit_mb_per_s: f64,
        /// For uploads, the same bytes written to new files beside the store, MB/s. Shown
        /// for context only: the target is defined by the two limits above.
        disk_write_mb_per_s: Option<f64>,
        /// The same bytes in a plain verified transfer (one TCP connection, the receiving end
        /// hashing on one core and keeping them as the transfer does; see
        /// `limits::plain_verified_rate`), MB/s. Context only, like `disk_write_mb_per_s`.
        plain_mb_per_s: f64,
        /// Required fraction of the lower limit.
        share: f64,
    },
    /// A call latency whose median must not exceed `max_p50_ms`.
    Latency {
        /// Calls timed.
        calls: usize,
        /// Median, milliseconds.
        p50_ms: f64,
        /// 99th percentile, milliseconds.
        p99_ms: f64,
        /// Largest median allowed.
        max_p50_ms: f64,
    },
    /// Completed operations per second, which must reach `min_per_s` when there is a target.
    Rate {
        /// What an operation is, plural ("writes", "actions").
        unit: &'static str,
        /// Operations per second.
        per_s: f64,
        /// Median latency of one operation, milliseconds.
        p50_ms: f64,
        /// 99th percentile latency of one operation, milliseconds.
        p99_ms: f64,
        /// Lowest rate allowed; `None` for a rate measured for context.
        min_per_s: Option<f64>,
        /// Wall time of a bare `/bin/true` spawn on this machine, ms, for operations that
        /// spawn a process. Context only.
        #[serde(skip_serializing_if = "Option::is_none")]
        bare_spawn_ms: Option<f64>,
    },
    /// CPU time of the coordinator and agents per action, which must not exceed `max_ms` when
    /// there is a target.
    CpuPerAction {
        /// Actions the CPU time is divided by.
        actions: u64,
        /// Coordinator and agent CPU (user + system) per action, ms.
        ms: f64,
        /// The coordinator's part, ms.
        coordinator_ms: f64,
        /// The agents' part, ms.
        agent_ms: f64,
        /// CPU of the action processes themselves (the agents' reaped children), ms per action.
        /// Context only: it is the action's cost, not the system's.
        action_processes_ms: f64,
        /// Wall time of a bare `/bin/true` spawn on this machine, ms. Context only.
        #[serde(skip_serializing_if = "Option::is_none")]
        bare_spawn_ms: Option<f64>,
        /// Largest cost allowed; `None` for a cost measured for context.
        max_ms: Option<f64>,
    },
    /// The cost of spawning a process, measured for context.
    Spawn {
        /// Processes spawned and waited for, one at a time.
        spawns: usize,
        /// Wall time per spawn, ms.
        ms_per_spawn: f64,
        /// CPU (user + system, this process and the reaped children) per spawn, ms.
        cpu_ms_per_spawn: f64,
    },
    /// A wall time held against a baseline measured in the same run: `seconds /
    /// baseline_seconds` must not exceed `max_ratio` when there is a target.
    Ratio {
        /// Measured wall time (median of `runs`), seconds.
        seconds: f64,
        /// The baseline's wall time (median of `runs`), seconds.
        baseline_seconds: f64,
        /// What the baseline is ("local cold build").
        baseline: &'static str,
        /// Runs each median is taken over.
        runs: usize,
        /// Largest ratio allowed; `None` for a ratio measured for context.
        max_ratio: Option<f64>,
    },
    /// Wall times of repeated runs or calls, whose median must not exceed `max_p50_ms` when
    /// there is a target.
    Time {
        /// Runs or calls timed.
        samples: usize,
        /// Median, milliseconds.
        p50_ms: f64,
        /// The tail shown beside the median, milliseconds.
        tail_ms: f64,
        /// Which tail `tail_ms` is.
        tail: Tail,
        /// Largest median allowed; `None` for a time measured for context.
        max_p50_ms: Option<f64>,
        /// What the "beside it" column shows (a cold run, the raw wall time), or empty.
        context: String,
    },
    /// Where a time goes: its parts, each a median over `samples`, for context.
    Breakdown {
        /// Runs or calls the medians are taken over.
        samples: usize,
        /// The parts, in the order they happen.
        parts: Vec<Part>,
        /// What the "beside it" column shows, or empty.
        context: String,
    },
    /// A rate that must reach `share` of a limit measured beside it in the same run (the blob
    /// store's adoption at start against this machine's hash rate).
    ShareOfLimit {
        /// Measured MB/s.
        mb_per_s: f64,
        /// How long the measured work took (median of `runs`), seconds.
        seconds: f64,
        /// Runs the median is taken over.
        runs: usize,
        /// What the limit is ("hash, all cores").
        limit: &'static str,
        /// The limit, MB/s.
        limit_mb_per_s: f64,
        /// More figures for the "beside it" column (other limits), or empty.
        context: String,
        /// Required fraction of the limit.
        share: f64,
    },
    /// One figure measured against two coordinators that differ in one setting (`--security
    /// both`: plain, then TLS and tokens; `--metrics both`: metrics off, then on): the second
    /// must keep at least `min_share` of the baseline's throughput when there is a target.
    Compared {
        /// How the baseline is named ("plain", "metrics off").
        baseline_name: &'static str,
        /// The baseline's figure.
        baseline: f64,
        /// The other coordinator's figure.
        measured: f64,
        /// The figures' unit ("actions/s", "ms p50").
        unit: String,
        /// Whether a lower figure is better (a latency, a CPU cost): then the share kept is
        /// `baseline / measured`, otherwise `measured / baseline`.
        lower_is_better: bool,
        /// Least share allowed; `None` for a comparison shown for context.
        min_share: Option<f64>,
    },
    /// A server's own time for repeated requests (from the answers' `Server-Timing`), whose
    /// 95th percentile must not exceed `max_p95_ms`; the client's latency and the answer's size
    /// for context (`tessera-bench dashboard`).
    ServerTime {
        /// Requests timed.
        samples: usize,
        /// The server's time: median, 95th percentile and slowest, ms.
        p50_ms: f64,
        /// See `p50_ms`.
        p95_ms: f64,
        /// See `p50_ms`.
        max_ms: f64,
        /// The client's time (request sent to body read): median, 95th percentile, slowest, ms.
        client_p50_ms: f64,
        /// See `client_p50_ms`.
        client_p95_ms: f64,
        /// See `client_p50_ms`.
        client_max_ms: f64,
        /// Body bytes of the answer.
        bytes: usize,
        /// Largest p95 allowed, ms.
        max_p95_ms: f64,
    },
    /// An answer that must equal one found another way in the same run (a suite's counts
    /// through `tessera run` and run directly). Both are rendered by the same code, so equal
    /// text is an equal answer.
    Agreement {
        /// What was found ("5,300 passed, 2 failed, 40 skipped").
        result: String,
        /// What it must equal.
        expected: String,
        /// Where `expected` comes from ("direct").
        baseline: &'static str,
    },
}

/// Which tail a [`Check::Time`] reports beside its median.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Tail {
    /// The slowest sample.
    Max,
    /// The 95th percentile.
    P95,
}

/// One part of a [`Check::Breakdown`].
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Part {
    /// What happens in it ("snapshot").
    pub name: String,
    /// Median, milliseconds.
    pub ms: f64,
}

impl Check {
    /// For [`Check::Compared`]: the share of the baseline's throughput the other run kept.
    pub(crate) fn share_kept(baseline: f64, measured: f64, lower_is_better: bool) -> f64 {
        if lower_is_better {
            baseline / measured
        } else {
            measured / baseline
        }
    }

    /// The rate a throughput check requires: `share` of the lower limit.
    fn required_mb_per_s(hash: f64, tcp: f64, share: f64) -> f64 {
        share * hash.min(tcp)
    }

    /// Whether the measurement meets its target.
    pub(crate) fn verdict(&self) -> Verdict {
        let pass = match *self {
            Check::Throughput {
                mb_per_s,
                hash_limit_mb_per_s,
                tcp_limit_mb_per_s,
                share,
                ..
            } => {
                mb_per_s >= Check::required_mb_per_s(hash_limit_mb_per_s, tcp_limit_mb_per_s, share)
            }
            Check::Latency {
                p50_ms, max_p50_ms, ..
            } => p50_ms <= max_p50_ms,
            Check::Rate {
                per_s,
                min_per_s: Some(min_per_s),
                ..
            } => per_s >= min_per_s,
            Check::CpuPerAction {
                ms,
                max_ms: Some(max_ms),
                ..
            } => ms <= max_ms,
            Check::Ratio {
                seconds,
                baseline_seconds,
                max_ratio: Some(max_ratio),
                ..
            } => seconds / baseline_seconds <= max_ratio,
            Check::Agreement {
                ref result,
                ref expected,
                ..
            } => result == expected,
            Check::ShareOfLimit {
                mb_per_s,
                limit_mb_per_s,
                share,
                ..
            } => mb_per_s >= share * limit_mb_per_s,
            Check::Time {
                p50_ms,
                max_p50_ms: Some(max_p50_ms),
                ..
            } => p50_ms <= max_p50_ms,
            Check::ServerTime {
                p95_ms, max_p95_ms, ..
            } => p95_ms <= max_p95_ms,
            Check::Compared {
                baseline,
                measured,
                lower_is_better,
                min_share: Some(min_share),
                ..
            } => Check::share_kept(baseline, measured, lower_is_better) >= min_share,
            Check::Rate {
                min_per_s: None, ..
            }
            | Check::Compared {
                min_share: None, ..
            }
            | Check::Ratio {
                max_ratio: None, ..
            }
            | Check::CpuPerAction { max_ms: None, .. }
            | Check::Time {
                max_p50_ms: None, ..
            }
            | Check::Breakdown { .. }
            | Check::Spawn { .. } => return Verdict::NoTarget,
        };
        if pass { Verdict::Pass } else { Verdict::Miss }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// What was measured ("ByteStream upload").
    pub measurement: String,
    /// Digest function used (content-store rows only).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// The workload ("64 × 1 MiB").
    pub workload: String,
    /// Result, limits and target.
    pub check: Check,
}

impl Row {
    /// Whether this row met its target.
    pub(crate) fn verdict(&self) -> Verdict {
        self.check.verdict()
    }
}

/// Which columns the markdown table has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Layout {
    /// Transfers beside their hash and TCP limits (`tessera-bench cas`).
    Cas,
    /// Execution: rates, latencies, CPU costs and wall times beside their baselines
    /// (`tessera-bench sched`, `bazel`, `job` and `suites`); also the blob store's start-up
    /// (`tessera-bench reopen`).
    Execution,
}

/// Where and how the run happened.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Environment {
    /// The command that produced the report.
    pub command: String,
    /// Cores available to this process.
    pub cores: usize,
    /// `release` or `debug`.
    pub profile: &'static str,
    /// Where the coordinator's temporary data directory was created.
    pub data_dir: String,
    /// The 1-minute load average when the run started: other work on the machine skews
    /// every number here.
    pub load_average: Option<f64>,
}

impl Environment {
    /// This machine and build, for `command` with data under `data_parent`.
    pub(crate) fn here(command: &str, data_parent: Option<&std::path::Path>) -> Self {
        Environment {
            command: command.to_owned(),
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            data_dir: data_parent
                .map_or_else(std::env::temp_dir, std::path::Path::to_path_buf)
                .display()
                .to_string(),
            load_average: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok()),
        }
    }
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// Where and how.
    pub environment: Environment,
    /// The table's columns.
    pub layout: Layout,
    /// The measurements, in the order they ran.
    pub rows: Vec<Row>,
    /// Extra lines printed under the table: what each row means, details found on the way.
    pub notes: Vec<String>,
}

impl Report {
    /// Pretty JSON, rows with their verdicts.
    pub(crate) fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct JsonRow<'a> {
            #[serde(flatten)]
            row: &'a Row,
            verdict: Verdict,
        }
        #[derive(Serialize)]
        struct JsonReport<'a> {
            environment: &'a Environment,
            rows: Vec<JsonRow<'a>>,
            notes: &'a [String],
        }
        let report = JsonReport {
            environment: &self.environment,
            notes: &self.notes,
            rows: self
                .rows
                .iter()
                .map(|row| JsonRow {
                    row,
                    verdict: row.verdict(),
                })
                .collect(),
        };
        serde_json::to_string_pretty(&report).expect("report serializes")
    }

    /// A markdown table with a short header, ready to paste into the README.
    pub(crate) fn to_markdown(&self) -> String {
        let env = &self.environment;
        let mut out = String::new();
        let load = env.load_average.map_or_else(String::new, |load| {
            format!(", load average {load:.1} at start")
        });
        let _ = writeln!(
            out,
            "`{}` — {} cores, {} build, store under {}{load}\n",
            env.command, env.cores, env.profile, env.data_dir
        );
        match self.layout {
            Layout::Cas => self.cas_table(&mut out),
            Layout::Execution => self.execution_table(&mut out),
        }
        for note in &self.notes {
            let _ = writeln!(out, "\n{note}");
        }
        out
    }

    fn cas_table(&self, out: &mut String) {
        out.push_str(
            "| measurement | digest | workload | result | hash, 1 core | loopback TCP | plain verified | disk write | target | verdict |\n",
        );
        out.push_str("|---|---|---|--:|--:|--:|--:|--:|---|---|\n");
        for row in &self.rows {
            let [result, hash, tcp, plain, target, disk] = describe(&row.check);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {result} | {hash} | {tcp} | {plain} | {disk} | {target} | {} |",
                row.measurement,
                row.digest,
                row.workload,
                verdict_cell(row.verdict())
            );
        }
        out.push_str(
            "\nMB = 10^6 bytes. Limits are measured in the same run (best of 3); a transfer must \
             reach 60% of the lower of the hash and TCP limits. \"plain verified\" (the same \
             bytes over one plain TCP connection, the receiving end hashing them on one core and \
             keeping them as the transfer does: a download in one new buffer per blob, an upload \
             in new files beside the store; its share of the lower limit in brackets) and \
             \"disk write\" (the same bytes written to new files beside the store) are context, \
             not part of the target. \
             Latencies are per call as the client sees them.\n",
        );
    }

    fn execution_table(&self, out: &mut String) {
        out.push_str(
            "| measurement | workload | result | beside it (same run) | target | verdict |\n",
        );
        out.push_str("|---|---|--:|--:|---|---|\n");
        for row in &self.rows {
            let (result, beside, target) = describe_execution(&row.check);
            let _ = writeln!(
                out,
                "| {} | {} | {result} | {beside} | {target} | {} |",
                row.measurement,
                row.workload,
                verdict_cell(row.verdict())
            );
        }
    }
}

fn verdict_cell(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "PASS",
        Verdict::Miss => "**MISS**",
        Verdict::NoTarget => "—",
    }
}

/// Result, baseline and target cells of an execution row.
fn describe_execution(check: &Check) -> (String, String, String) {
    let dash = || "—".to_owned();
    let spawn = |ms: Option<f64>| ms.map_or_else(dash, |ms| format!("bare spawn {ms:.2} ms"));
    match *check {
        Check::Rate {
            unit,
            per_s,
            p50_ms,
            p99_ms,
            min_per_s,
            bare_spawn_ms,
        } => (
            format!(
                "{} {unit}/s (each p50 {p50_ms:.2} ms, p99 {p99_ms:.2} ms)",
                number(per_s)
            ),
            spawn(bare_spawn_ms),
            min_per_s.map_or_else(dash, |min| format!("≥ {} {unit}/s", number(min))),
        ),
        Check::Latency {
            calls,
            p50_ms,
            p99_ms,
            max_p50_ms,
        } => (
            format!(
                "p50 {p50_ms:.2} ms, p99 {p99_ms:.2} ms ({} samples)",
                thousands(calls)
            ),
            dash(),
            format!("p50 ≤ {max_p50_ms} ms"),
        ),
        Check::CpuPerAction {
            actions,
            ms,
            coordinator_ms,
            agent_ms,
            action_processes_ms,
            bare_spawn_ms,
            max_ms,
        } => (
            format!(
                "{ms:.2} ms/action (coordinator {coordinator_ms:.2}, agents {agent_ms:.2}; {} actions)",
                thousands(usize::try_from(actions).unwrap_or(usize::MAX))
            ),
            match bare_spawn_ms {
                Some(spawn_ms) => format!(
                    "actions' own CPU {action_processes_ms:.2} ms; bare spawn {spawn_ms:.2} ms"
                ),
                None => format!("actions' own CPU {action_processes_ms:.2} ms"),
            },
            max_ms.map_or_else(dash, |max| format!("≤ {max} ms")),
        ),
        Check::Spawn {
            spawns,
            ms_per_spawn,
            cpu_ms_per_spawn,
        } => (
            format!(
                "{ms_per_spawn:.2} ms/spawn wall, {cpu_ms_per_spawn:.2} ms CPU ({} spawns)",
                thousands(spawns)
            ),
            dash(),
            dash(),
        ),
        Check::Ratio {
            seconds,
            baseline_seconds,
            baseline,
            runs,
            max_ratio,
        } => (
            format!(
                "{seconds:.2} s = {:.2}× (median of {runs})",
                seconds / baseline_seconds
            ),
            format!("{baseline} {baseline_seconds:.2} s"),
            max_ratio.map_or_else(dash, |max| format!("≤ {max:.2}×")),
        ),
        Check::Agreement {
            ref result,
            ref expected,
            baseline,
        } => (
            result.clone(),
            format!("{baseline}: {expected}"),
            format!("the same as {baseline}"),
        ),
        Check::Time {
            samples,
            p50_ms,
            tail_ms,
            tail,
            max_p50_ms,
            ref context,
        } => (
            format!(
                "p50 {p50_ms:.1} ms, {} {tail_ms:.1} ms ({samples} runs)",
                match tail {
                    Tail::Max => "max",
                    Tail::P95 => "p95",
                }
            ),
            if context.is_empty() {
                dash()
            } else {
                context.clone()
            },
            max_p50_ms.map_or_else(dash, |max| format!("p50 ≤ {max} ms")),
        ),
        Check::ServerTime {
            samples,
            p50_ms,
            p95_ms,
            max_ms,
            client_p50_ms,
            client_p95_ms,
            client_max_ms,
            bytes,
            max_p95_ms,
        } => (
            format!(
                "server p50 {p50_ms:.2} ms, p95 {p95_ms:.2} ms, max {max_ms:.2} ms ({samples} requests)"
            ),
            format!(
                "client p50 {client_p50_ms:.2} / p95 {client_p95_ms:.2} / max {client_max_ms:.2} ms; {} bytes",
                thousands(bytes)
            ),
            format!("server p95 ≤ {max_p95_ms} ms"),
        ),
        Check::Breakdown {
            samples,
            ref parts,
            ref context,
        } => (
            format!(
                "{} (medians of {samples})",
                parts
                    .iter()
                    .map(|part| format!("{} {:.1} ms", part.name, part.ms))
                    .collect::<Vec<_>>()
                    .join(" · ")
            ),
            if context.is_empty() {
                dash()
            } else {
                context.clone()
            },
            dash(),
        ),
        Check::ShareOfLimit {
            mb_per_s,
            seconds,
            runs,
            limit,
            limit_mb_per_s,
            ref context,
            share,
        } => (
            format!(
                "{} MB/s = {:.0}% of limit ({seconds:.2} s, median of {runs})",
                number(mb_per_s),
                100.0 * mb_per_s / limit_mb_per_s
            ),
            if context.is_empty() {
                format!("{limit} {} MB/s", number(limit_mb_per_s))
            } else {
                format!("{limit} {} MB/s · {context}", number(limit_mb_per_s))
            },
            format!(
                "≥ {} MB/s ({:.0}% of {limit})",
                number(share * limit_mb_per_s),
                share * 100.0
            ),
        ),
        Check::Compared {
            baseline_name,
            baseline,
            measured,
            ref unit,
            lower_is_better,
            min_share,
        } => (
            format!(
                "{:.0}% of {baseline_name} ({} {unit})",
                100.0 * Check::share_kept(baseline, measured, lower_is_better),
                figure(measured)
            ),
            format!("{baseline_name} {} {unit}", figure(baseline)),
            min_share.map_or_else(dash, |min| {
                format!("≥ {:.0}% of {baseline_name}", min * 100.0)
            }),
        ),
        Check::Throughput { .. } => (dash(), dash(), dash()),
    }
}

/// Result, hash limit, TCP limit, plain verified transfer, target and disk cells of a row.
fn describe(check: &Check) -> [String; 6] {
    let dash = || "—".to_owned();
    match *check {
        Check::Throughput {
            mb_per_s,
            hash_limit_mb_per_s,
            tcp_limit_mb_per_s,
            disk_write_mb_per_s,
            plain_mb_per_s,
            share,
        } => {
            let lower = hash_limit_mb_per_s.min(tcp_limit_mb_per_s);
            [
                format!(
                    "{} MB/s ({:.0}% of limit)",
                    number(mb_per_s),
                    100.0 * mb_per_s / lower
                ),
                format!("{} MB/s", number(hash_limit_mb_per_s)),
                format!("{} MB/s", number(tcp_limit_mb_per_s)),
                format!(
                    "{} MB/s ({:.0}%)",
                    number(plain_mb_per_s),
                    100.0 * plain_mb_per_s / lower
                ),
                format!(
                    "≥ {} MB/s ({:.0}% of {})",
                    number(Check::required_mb_per_s(
                        hash_limit_mb_per_s,
                        tcp_limit_mb_per_s,
                        share
                    )),
                    share * 100.0,
                    number(lower)
                ),
                disk_write_mb_per_s.map_or_else(dash, |disk| format!("{} MB/s", number(disk))),
            ]
        }
        Check::Latency {
            calls,
            p50_ms,
            p99_ms,
            max_p50_ms,
        } => [
            format!("p50 {p50_ms:.2} ms, p99 {p99_ms:.2} ms ({calls} calls)"),
            dash(),
            dash(),
            dash(),
            format!("p50 ≤ {max_p50_ms:.0} ms"),
            dash(),
        ],
        Check::Rate {
            unit,
            per_s,
            p50_ms,
            p99_ms,
            min_per_s,
            ..
        } => [
            format!(
                "{} {unit}/s (p50 {p50_ms:.2} ms, p99 {p99_ms:.2} ms)",
                number(per_s)
            ),
            dash(),
            dash(),
            dash(),
            min_per_s.map_or_else(dash, |min| format!("≥ {} {unit}/s", number(min))),
            dash(),
        ],
        Check::CpuPerAction { .. }
        | Check::Spawn { .. }
        | Check::Ratio { .. }
        | Check::Agreement { .. }
        | Check::Time { .. }
        | Check::ServerTime { .. }
        | Check::Breakdown { .. }
        | Check::ShareOfLimit { .. } => {
            let (result, _, target) = describe_execution(check);
            [result, dash(), dash(), dash(), target, dash()]
        }
        Check::Compared { .. } => {
            // No column for the baseline's figure here: it goes into the result.
            let (result, plain, target) = describe_execution(check);
            let result = format!("{result}; {plain}");
            [result, dash(), dash(), dash(), target, dash()]
        }
    }
}

/// A compared figure: [`number`], with two decimals below 10 (latencies in ms).
fn figure(value: f64) -> String {
    if value < 10.0 {
        return format!("{value:.2}");
    }
    number(value)
}

/// A rate for humans: thousands separated, one decimal below 100.
pub(crate) fn number(value: f64) -> String {
    if value < 100.0 {
        return format!("{value:.1}");
    }
    grouped(&format!("{value:.0}"))
}

/// A count for humans: thousands separated.
pub(crate) fn thousands(value: usize) -> String {
    grouped(&value.to_string())
}

fn grouped(digits: &str) -> String {
    let head = match digits.len() % 3 {
        0 => digits.len().min(3),
        rest => rest,
    };
    let mut out = digits[..head].to_owned();
    for group in digits.as_bytes()[head..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(group).expect("ascii digits"));
    }
    out
}

/// The `q`-quantile (0..=1) of `samples` by nearest rank; `samples` need not be sorted.
pub(crate) fn percentile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throughput(mb_per_s: f64) -> Check {
        Check::Throughput {
            mb_per_s,
            hash_limit_mb_per_s: 1000.0,
            tcp_limit_mb_per_s: 3000.0,
            disk_write_mb_per_s: Some(100.0),
            plain_mb_per_s: 700.0,
            share: 0.6,
        }
    }

    #[test]
    fn throughput_is_judged_against_the_lower_limit() {
        assert_eq!(throughput(600.0).verdict(), Verdict::Pass);
        assert_eq!(throughput(599.0).verdict(), Verdict::Miss);
    }

    #[test]
    fn latency_and_rate_targets_can_miss() {
        let slow = Check::Latency {
            calls: 30,
            p50_ms: 20.5,
            p99_ms: 40.0,
            max_p50_ms: 20.0,
        };
        assert_eq!(slow.verdict(), Verdict::Miss);
        let few = Check::Rate {
            unit: "writes",
            per_s: 4999.0,
            p50_ms: 1.0,
            p99_ms: 2.0,
            min_per_s: Some(5000.0),
            bare_spawn_ms: None,
        };
        assert_eq!(few.verdict(), Verdict::Miss);
        let costly = Check::CpuPerAction {
            actions: 24,
            ms: 8.5,
            coordinator_ms: 4.0,
            agent_ms: 4.5,
            action_processes_ms: 1.0,
            bare_spawn_ms: None,
            max_ms: Some(8.0),
        };
        assert_eq!(costly.verdict(), Verdict::Miss);
    }

    #[test]
    fn ratios_compare_with_their_baseline() {
        let ratio = |seconds| Check::Ratio {
            seconds,
            baseline_seconds: 2.0,
            baseline: "local",
            runs: 3,
            max_ratio: Some(1.1),
        };
        assert_eq!(ratio(2.2).verdict(), Verdict::Pass);
        assert_eq!(ratio(2.3).verdict(), Verdict::Miss);
        let context = Check::Ratio {
            seconds: 9.0,
            baseline_seconds: 2.0,
            baseline: "direct",
            runs: 1,
            max_ratio: None,
        };
        assert_eq!(context.verdict(), Verdict::NoTarget);
        let (result, beside, target) = describe_execution(&context);
        assert_eq!(
            (result.as_str(), beside.as_str(), target.as_str()),
            ("9.00 s = 4.50× (median of 1)", "direct 2.00 s", "—")
        );
    }

    #[test]
    fn times_are_judged_by_their_median() {
        let time = |p50_ms, max_p50_ms| Check::Time {
            samples: 5,
            p50_ms,
            tail_ms: 400.0,
            tail: Tail::Max,
            max_p50_ms,
            context: String::new(),
        };
        assert_eq!(time(300.0, Some(300.0)).verdict(), Verdict::Pass);
        assert_eq!(time(300.5, Some(300.0)).verdict(), Verdict::Miss);
        assert_eq!(time(900.0, None).verdict(), Verdict::NoTarget);
        let breakdown = Check::Breakdown {
            samples: 5,
            parts: vec![Part {
                name: "snapshot".to_owned(),
                ms: 60.0,
            }],
            context: String::new(),
        };
        assert_eq!(breakdown.verdict(), Verdict::NoTarget);
        let (result, _, _) = describe_execution(&breakdown);
        assert_eq!(result, "snapshot 60.0 ms (medians of 5)");
    }

    #[test]
    fn answers_must_agree() {
        let answer = |result: &str| Check::Agreement {
            result: result.to_owned(),
            expected: "3 passed, 1 skipped".to_owned(),
            baseline: "direct",
        };
        assert_eq!(answer("3 passed, 1 skipped").verdict(), Verdict::Pass);
        assert_eq!(answer("2 passed, 1 skipped").verdict(), Verdict::Miss);
        let (_, beside, target) = describe_execution(&answer("x"));
        assert_eq!(beside, "direct: 3 passed, 1 skipped");
        assert_eq!(target, "the same as direct");
    }

    #[test]
    fn shares_of_a_limit_can_miss() {
        let adoption = |mb_per_s| Check::ShareOfLimit {
            mb_per_s,
            seconds: 1.0,
            runs: 3,
            limit: "hash, all cores",
            limit_mb_per_s: 2000.0,
            context: String::new(),
            share: 0.5,
        };
        assert_eq!(adoption(1000.0).verdict(), Verdict::Pass);
        assert_eq!(adoption(999.0).verdict(), Verdict::Miss);
        let (result, beside, target) = describe_execution(&adoption(1000.0));
        assert_eq!(result, "1,000 MB/s = 50% of limit (1.00 s, median of 3)");
        assert_eq!(beside, "hash, all cores 2,000 MB/s");
        assert_eq!(target, "≥ 1,000 MB/s (50% of hash, all cores)");
    }

    #[test]
    fn context_rows_have_no_verdict() {
        let spawn = Check::Spawn {
            spawns: 100,
            ms_per_spawn: 0.7,
            cpu_ms_per_spawn: 0.5,
        };
        assert_eq!(spawn.verdict(), Verdict::NoTarget);
        let rate = Check::Rate {
            unit: "actions",
            per_s: 10.0,
            p50_ms: 1.0,
            p99_ms: 2.0,
            min_per_s: None,
            bare_spawn_ms: Some(0.7),
        };
        assert_eq!(rate.verdict(), Verdict::NoTarget);
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 0.5), 50.0);
        assert_eq!(percentile(&samples, 0.99), 99.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.99), 3.0);
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(number(1234567.4), "1,234,567");
        assert_eq!(number(512.0), "512");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(thousands(15_000), "15,000");
        assert_eq!(thousands(64), "64");
    }
}

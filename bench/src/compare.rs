//! The coordinator settings a `cas` or `sched` run measures (`--security` and `--metrics`),
//! and for `both` of either, the one report that sets the two runs side by side.
//!
//! One setting is compared at a time: `--security both` with `--metrics both` is refused (four
//! runs with two baselines answer no single question). The comparison pairs each row of the
//! baseline run (plain; metrics off) with the row in the same place of the other run (TLS and
//! tokens; metrics on) and keeps the other figure as a share of the baseline's (for latencies
//! and CPU, the baseline's cost over the other's, so that a share always reads as "throughput
//! kept"). The targeted rows (FindMissingBlobs, scheduler capacity) must keep at least the
//! setting's least share ([`security::MIN_SHARE`], [`metrics::MIN_SHARE`]).

use crate::error::BenchError;
use crate::metrics::{self, Metrics, MetricsArg};
use crate::report::{Check, Report, Row};
use crate::security::{self, Security, SecurityArg};

/// How one run's coordinator is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Setup {
    /// Plain, or TLS and tokens.
    pub security: Security,
    /// Metrics recorded and scraped, or not.
    pub metrics: Metrics,
}

/// What `--security` and `--metrics` ask for together (by default: plain, metrics on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Modes {
    security: SecurityArg,
    metrics: MetricsArg,
}

/// The two settings compared by a `both` run.
struct Comparison {
    /// How the baseline run's rows are tagged ("plain").
    baseline: &'static str,
    /// How the other run's rows are tagged ("TLS + tokens").
    other: &'static str,
    /// Least share of the baseline a targeted row must keep.
    min_share: f64,
}

impl Modes {
    /// The flags' combination, or why it is refused.
    pub(crate) fn new(security: SecurityArg, metrics: MetricsArg) -> Result<Self, String> {
        if security == SecurityArg::Both && metrics == MetricsArg::Both {
            return Err(
                "--security both and --metrics both cannot be combined: a run compares \
                        one setting at a time (e.g. --security both, or --metrics both with \
                        --security plain or tls-tokens)"
                    .to_owned(),
            );
        }
        Ok(Modes { security, metrics })
    }

    /// The runs to make, in order: one, or the baseline then the other.
    pub(crate) fn setups(self) -> Vec<Setup> {
        let mut setups = Vec::new();
        for &security in self.security.modes() {
            for &metrics in self.metrics.modes() {
                setups.push(Setup { security, metrics });
            }
        }
        setups
    }

    /// Whether any run has metrics off (so the rows only the in-process coordinator can
    /// measure are all there is to compare).
    pub(crate) fn metrics_off_somewhere(self) -> bool {
        self.metrics.modes().contains(&Metrics::Off)
    }

    /// The flags as typed, for the report's command line (empty for the defaults).
    fn flags(self) -> String {
        format!("{}{}", self.security.flag(), self.metrics.flag())
    }

    fn comparison(self) -> Option<Comparison> {
        if self.security == SecurityArg::Both {
            return Some(Comparison {
                baseline: Security::Plain.label(),
                other: Security::TlsTokens.label(),
                min_share: security::MIN_SHARE,
            });
        }
        if self.metrics == MetricsArg::Both {
            return Some(Comparison {
                baseline: Metrics::Off.label(),
                other: Metrics::On.label(),
                min_share: metrics::MIN_SHARE,
            });
        }
        None
    }
}

/// One report from the runs of `modes` (as [`Modes::setups`] lists them): the single run's,
/// or for a `both` every baseline row beside its twin, then one comparison row per pair with
/// a figure to compare; `targeted` says which pairs are held to the least share. The rows of a
/// comparison are tagged with their setting in the measurement column.
pub(crate) fn combine(
    modes: Modes,
    mut runs: Vec<Report>,
    targeted: impl Fn(&Row) -> bool,
) -> Result<Report, BenchError> {
    // A command line copied from the arguments already has the flags.
    let with_flags = |command: &mut String| {
        if !command.contains("--security") && !command.contains("--metrics") {
            command.push_str(&modes.flags());
        }
    };
    let Some(comparison) = modes.comparison() else {
        let mut report = runs.pop().ok_or_else(|| {
            BenchError::Unexpected("the benchmark made no run to report".to_owned())
        })?;
        with_flags(&mut report.environment.command);
        return Ok(report);
    };
    let (Some(other), Some(baseline)) = (runs.pop(), runs.pop()) else {
        return Err(BenchError::Unexpected(
            "a comparison ran fewer than two benchmarks".to_owned(),
        ));
    };
    if baseline.rows.len() != other.rows.len() {
        return Err(BenchError::Unexpected(format!(
            "the {} run has {} rows and the {} run {}",
            comparison.baseline,
            baseline.rows.len(),
            comparison.other,
            other.rows.len()
        )));
    }
    let mut rows = Vec::with_capacity(baseline.rows.len() * 3);
    let mut comparisons = Vec::new();
    for (base_row, other_row) in baseline.rows.iter().zip(&other.rows) {
        if base_row.measurement != other_row.measurement {
            return Err(BenchError::Unexpected(format!(
                "row \"{}\" of the {} run faces \"{}\" in the {} run",
                base_row.measurement, comparison.baseline, other_row.measurement, comparison.other
            )));
        }
        rows.push(tagged(base_row, comparison.baseline));
        rows.push(tagged(other_row, comparison.other));
        let min_share = targeted(base_row).then_some(comparison.min_share);
        if let Some(check) = compare(
            comparison.baseline,
            &base_row.check,
            &other_row.check,
            min_share,
        ) {
            comparisons.push(Row {
                measurement: format!(
                    "{}: {} / {}",
                    base_row.measurement, comparison.other, comparison.baseline
                ),
                digest: base_row.digest.clone(),
                workload: base_row.workload.clone(),
                check,
            });
        }
    }
    rows.extend(comparisons);
    let mut environment = baseline.environment;
    with_flags(&mut environment.command);
    // The baseline's notes, then the other run's own (its settings, its scrapes).
    let mut notes = baseline.notes.clone();
    notes.extend(
        other
            .notes
            .into_iter()
            .filter(|note| !baseline.notes.contains(note))
            .map(|note| format!("[{}] {note}", comparison.other)),
    );
    notes.push(format!(
        "Comparison rows: the {other} figure as a share of the {base} one (for latencies and \
         CPU, the {base} cost over the {other} cost); FindMissingBlobs and scheduler capacity \
         must keep at least {:.0}%. The two runs follow each other on the same machine, so part \
         of any difference is noise: rerun before reading much into a few percent.",
        comparison.min_share * 100.0,
        other = comparison.other,
        base = comparison.baseline,
    ));
    Ok(Report {
        environment,
        layout: baseline.layout,
        rows,
        notes,
    })
}

fn tagged(row: &Row, label: &str) -> Row {
    Row {
        measurement: format!("{} [{label}]", row.measurement),
        ..row.clone()
    }
}

/// The comparison of two measurements of the same row, if it has a figure to compare.
fn compare(
    baseline_name: &'static str,
    baseline: &Check,
    other: &Check,
    min_share: Option<f64>,
) -> Option<Check> {
    let (baseline_figure, unit, lower_is_better) = figure(baseline)?;
    let (other_figure, _, _) = figure(other)?;
    Some(Check::Compared {
        baseline_name,
        baseline: baseline_figure,
        measured: other_figure,
        unit,
        lower_is_better,
        min_share,
    })
}

/// The figure a row is judged by, its unit, and whether lower is better.
fn figure(check: &Check) -> Option<(f64, String, bool)> {
    match *check {
        Check::Throughput { mb_per_s, .. } => Some((mb_per_s, "MB/s".to_owned(), false)),
        Check::Rate { unit, per_s, .. } => Some((per_s, format!("{unit}/s"), false)),
        Check::Latency { p50_ms, .. } => Some((p50_ms, "ms p50".to_owned(), true)),
        Check::CpuPerAction { ms, .. } => Some((ms, "ms CPU/action".to_owned(), true)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Environment, Layout, Verdict};

    fn report(p50_ms: f64, per_s: f64, note: &str) -> Report {
        Report {
            environment: Environment::here("cmd", None),
            layout: Layout::Execution,
            rows: vec![
                Row {
                    measurement: "FindMissingBlobs".to_owned(),
                    digest: String::new(),
                    workload: "w".to_owned(),
                    check: Check::Latency {
                        calls: 3,
                        p50_ms,
                        p99_ms: p50_ms,
                        max_p50_ms: 20.0,
                    },
                },
                Row {
                    measurement: "ByteStream small writes".to_owned(),
                    digest: String::new(),
                    workload: "w".to_owned(),
                    check: Check::Rate {
                        unit: "writes",
                        per_s,
                        p50_ms: 1.0,
                        p99_ms: 1.0,
                        min_per_s: None,
                        bare_spawn_ms: None,
                    },
                },
            ],
            notes: vec![note.to_owned()],
        }
    }

    fn names(report: &Report) -> Vec<&str> {
        report.rows.iter().map(|r| r.measurement.as_str()).collect()
    }

    #[test]
    fn security_both_pairs_rows_and_judges_only_the_targeted_ones() {
        let modes = Modes::new(SecurityArg::Both, MetricsArg::On).unwrap();
        let setups = modes.setups();
        assert_eq!(setups.len(), 2);
        assert_eq!(setups[0].security, Security::Plain);
        let runs = vec![report(2.0, 1000.0, "n"), report(2.5, 500.0, "n")];
        let combined = combine(modes, runs, |row| row.measurement == "FindMissingBlobs").unwrap();
        assert_eq!(
            names(&combined),
            [
                "FindMissingBlobs [plain]",
                "FindMissingBlobs [TLS + tokens]",
                "ByteStream small writes [plain]",
                "ByteStream small writes [TLS + tokens]",
                "FindMissingBlobs: TLS + tokens / plain",
                "ByteStream small writes: TLS + tokens / plain",
            ]
        );
        // 2.0 / 2.5 = 80% of the plain throughput: below 90%.
        assert_eq!(combined.rows[4].verdict(), Verdict::Miss);
        // Half the rate, but no target on this row.
        assert_eq!(combined.rows[5].verdict(), Verdict::NoTarget);
        assert!(combined.environment.command.ends_with("--security both"));
    }

    #[test]
    fn metrics_both_runs_off_first_and_holds_the_targeted_row_to_95_percent() {
        let modes = Modes::new(SecurityArg::Plain, MetricsArg::Both).unwrap();
        let setups = modes.setups();
        assert_eq!(
            setups.iter().map(|s| s.metrics).collect::<Vec<_>>(),
            [Metrics::Off, Metrics::On]
        );
        assert!(modes.metrics_off_somewhere());
        // 2.0 / 2.08 = 96% kept: passes; 2.0 / 2.2 = 91%: misses.
        for (on_p50, verdict) in [(2.08, Verdict::Pass), (2.2, Verdict::Miss)] {
            let runs = vec![report(2.0, 1000.0, "n"), report(on_p50, 990.0, "scraped")];
            let combined =
                combine(modes, runs, |row| row.measurement == "FindMissingBlobs").unwrap();
            assert_eq!(
                combined.rows[0].measurement,
                "FindMissingBlobs [metrics off]"
            );
            assert_eq!(
                combined.rows[4].measurement,
                "FindMissingBlobs: metrics on / metrics off"
            );
            assert_eq!(combined.rows[4].verdict(), verdict, "p50 {on_p50} ms");
            assert_eq!(combined.rows[5].verdict(), Verdict::NoTarget);
            assert!(combined.environment.command.ends_with("--metrics both"));
            assert!(combined.notes.contains(&"[metrics on] scraped".to_owned()));
            assert!(combined.to_markdown().contains("% of metrics off"));
        }
    }

    #[test]
    fn both_and_both_are_refused() {
        let refused = Modes::new(SecurityArg::Both, MetricsArg::Both).unwrap_err();
        assert!(refused.contains("cannot be combined"), "{refused}");
        let single = Modes::new(SecurityArg::TlsTokens, MetricsArg::Off).unwrap();
        assert_eq!(
            single.setups(),
            [Setup {
                security: Security::TlsTokens,
                metrics: Metrics::Off
            }]
        );
        let runs = vec![report(2.0, 1000.0, "n")];
        let combined = combine(single, runs, |_| true).unwrap();
        assert_eq!(
            names(&combined),
            ["FindMissingBlobs", "ByteStream small writes"]
        );
        assert!(
            combined
                .environment
                .command
                .ends_with("--security tls-tokens --metrics off")
        );
    }

    #[test]
    fn shares_at_the_limit_pass() {
        let compared = |baseline, measured, lower_is_better, min| Check::Compared {
            baseline_name: "plain",
            baseline,
            measured,
            unit: "x".to_owned(),
            lower_is_better,
            min_share: Some(min),
        };
        let security = security::MIN_SHARE;
        assert_eq!(
            compared(100.0, 90.0, false, security).verdict(),
            Verdict::Pass
        );
        assert_eq!(
            compared(100.0, 89.0, false, security).verdict(),
            Verdict::Miss
        );
        assert_eq!(compared(9.0, 10.0, true, security).verdict(), Verdict::Pass);
        assert_eq!(compared(8.0, 10.0, true, security).verdict(), Verdict::Miss);
        let metrics = metrics::MIN_SHARE;
        assert_eq!(
            compared(100.0, 95.0, false, metrics).verdict(),
            Verdict::Pass
        );
        assert_eq!(
            compared(100.0, 94.0, false, metrics).verdict(),
            Verdict::Miss
        );
    }
}

//! What a benchmark run found: one row per measurement, each carrying its result, the limits
//! measured beside it and the target it is held to, so a verdict is computed in exactly one
//! place ([`Check::verdict`]). Renders as a markdown table (for the README) or JSON.

use std::fmt::Write as _;

use serde::Serialize;

/// Whether a measurement met its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// The target was met.
    Pass,
    /// The target was missed.
    Miss,
}

/// A measurement together with the target it is judged against.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Check {
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
    /// Completed operations per second, which must reach `min_per_s`.
    Rate {
        /// Operations per second.
        per_s: f64,
        /// Median latency of one operation, milliseconds.
        p50_ms: f64,
        /// 99th percentile latency of one operation, milliseconds.
        p99_ms: f64,
        /// Lowest rate allowed.
        min_per_s: f64,
    },
}

impl Check {
    /// The rate a throughput check requires: `share` of the lower limit.
    fn required_mb_per_s(hash: f64, tcp: f64, share: f64) -> f64 {
        share * hash.min(tcp)
    }

    /// Whether the measurement meets its target.
    pub fn verdict(&self) -> Verdict {
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
                per_s, min_per_s, ..
            } => per_s >= min_per_s,
        };
        if pass { Verdict::Pass } else { Verdict::Miss }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured ("ByteStream upload").
    pub measurement: String,
    /// Digest function used.
    pub digest: String,
    /// The workload ("64 × 1 MiB").
    pub workload: String,
    /// Result, limits and target.
    pub check: Check,
}

impl Row {
    /// Whether this row met its target.
    pub fn verdict(&self) -> Verdict {
        self.check.verdict()
    }
}

/// Where and how the run happened.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    /// The command that produced the report.
    pub command: String,
    /// Cores available to this process.
    pub cores: usize,
    /// `release` or `debug`.
    pub profile: &'static str,
    /// Where the coordinator's temporary data directory was created.
    pub data_dir: String,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where and how.
    pub environment: Environment,
    /// The measurements, in the order they ran.
    pub rows: Vec<Row>,
}

impl Report {
    /// Pretty JSON, rows with their verdicts.
    pub fn to_json(&self) -> String {
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
        }
        let report = JsonReport {
            environment: &self.environment,
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
    pub fn to_markdown(&self) -> String {
        let env = &self.environment;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "`{}` — {} cores, {} build, store under {}\n",
            env.command, env.cores, env.profile, env.data_dir
        );
        out.push_str(
            "| measurement | digest | workload | result | hash, 1 core | loopback TCP | disk write | target | verdict |\n",
        );
        out.push_str("|---|---|---|--:|--:|--:|--:|---|---|\n");
        for row in &self.rows {
            let (result, hash, tcp, target, disk) = describe(&row.check);
            let verdict = match row.verdict() {
                Verdict::Pass => "PASS",
                Verdict::Miss => "**MISS**",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {result} | {hash} | {tcp} | {disk} | {target} | {verdict} |",
                row.measurement, row.digest, row.workload
            );
        }
        out.push_str(
            "\nMB = 10^6 bytes. Limits are measured in the same run (best of 3); a transfer must \
             reach 60% of the lower of the hash and TCP limits. \"disk write\" (the same bytes \
             written to new files beside the store) is context, not part of the target. \
             Latencies are per call as the client sees them.\n",
        );
        out
    }
}

/// Result, hash limit, TCP limit, target and disk cells of a row.
fn describe(check: &Check) -> (String, String, String, String, String) {
    match *check {
        Check::Throughput {
            mb_per_s,
            hash_limit_mb_per_s,
            tcp_limit_mb_per_s,
            disk_write_mb_per_s,
            share,
        } => {
            let lower = hash_limit_mb_per_s.min(tcp_limit_mb_per_s);
            (
                format!(
                    "{} MB/s ({:.0}% of limit)",
                    number(mb_per_s),
                    100.0 * mb_per_s / lower
                ),
                format!("{} MB/s", number(hash_limit_mb_per_s)),
                format!("{} MB/s", number(tcp_limit_mb_per_s)),
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
                disk_write_mb_per_s.map_or("—".into(), |disk| format!("{} MB/s", number(disk))),
            )
        }
        Check::Latency {
            calls,
            p50_ms,
            p99_ms,
            max_p50_ms,
        } => (
            format!("p50 {p50_ms:.2} ms, p99 {p99_ms:.2} ms ({calls} calls)"),
            "—".into(),
            "—".into(),
            format!("p50 ≤ {max_p50_ms:.0} ms"),
            "—".into(),
        ),
        Check::Rate {
            per_s,
            p50_ms,
            p99_ms,
            min_per_s,
        } => (
            format!(
                "{} writes/s (p50 {p50_ms:.2} ms, p99 {p99_ms:.2} ms)",
                number(per_s)
            ),
            "—".into(),
            "—".into(),
            format!("≥ {} writes/s", number(min_per_s)),
            "—".into(),
        ),
    }
}

/// A rate for humans: thousands separated, one decimal below 100.
pub fn number(value: f64) -> String {
    if value < 100.0 {
        return format!("{value:.1}");
    }
    grouped(&format!("{value:.0}"))
}

/// A count for humans: thousands separated.
pub fn thousands(value: usize) -> String {
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
pub fn percentile(samples: &[f64], q: f64) -> f64 {
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
            per_s: 4999.0,
            p50_ms: 1.0,
            p99_ms: 2.0,
            min_per_s: 5000.0,
        };
        assert_eq!(few.verdict(), Verdict::Miss);
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

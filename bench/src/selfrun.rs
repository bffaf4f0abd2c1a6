//! `tessera-bench self`: our own suite through `tessera run` against `cargo nextest run`, cold
//! and warm, in one run on this machine: the figures behind `.ci/test.sh`'s default runner
//! (README "Our own suite through `tessera run`").
//!
//! On fresh clones of this repository's `HEAD` (committed work only: a clone, not the work
//! tree) under `/var/tmp`:
//!
//! 1. **nextest, cold**: `cargo nextest run --locked --no-fail-fast` then `cargo test --locked
//!    --doc` (what `.ci/test.sh` runs in mode `nextest`: nextest does not run doctests) with a
//!    fresh `CARGO_TARGET_DIR`, build included; spawn to exit of both.
//! 2. **tessera, cold**: `tessera run --json --junit F --network --timeout 20m -- cargo test
//!    --locked` (what mode `tessera` runs) from the `tessera` binary beside this one, on its
//!    embedded cluster with fresh state (`XDG_CACHE_HOME` in the scratch directory: no result
//!    cache, no history, no persisted `target/` on the agent, a slot per core), build included;
//!    spawn to exit of the `tessera` process, cluster start and stop included.
//! 3. **warm**: both again, nothing changed.
//! 4. **same tests**: `cargo nextest list` and `cargo test --doc -- --list` on the nextest
//!    clone's build, held against the cold `tessera run`'s events and JUnit report by
//!    [`crate::crosscheck`] (the check `.ci/test.sh` makes).
//!
//! Both sides get the same environment (the tools' variables and `CI`, nothing of the bench's
//! own) and the same `CARGO_HOME`, prefetched with `cargo fetch` so neither downloads.
//! `--workspace` by default; `--package` (and `--quick`: `tessera-config`) restrict both sides.
//!
//! Targets (the issue: "CI uses whichever is faster"): cold, `tessera run` ≤ 1.0 × nextest;
//! warm, `tessera run` ≤ 0.10 × nextest (a re-run of unchanged code answers from the cache).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::crosscheck;
use crate::error::BenchError;
use crate::processes::tessera_binary;
use crate::report::{self, Check, Environment, Layout, Report, Row};
use crate::suites::run_timed;

/// Longest one side may take (cold, the whole workspace on a busy 2-core machine).
const RUN_LIMIT: Duration = Duration::from_secs(3600);
/// Largest cold `tessera run`, as a share of cold `cargo nextest run` + doctests.
const COLD_MAX_RATIO: f64 = 1.0;
/// Largest warm `tessera run`, as a share of warm `cargo nextest run` + doctests.
const WARM_MAX_RATIO: f64 = 0.10;
/// Where the scratch directory goes without `--data-dir`: not under `/tmp`, which every
/// sandboxed action sees as its own (and our tests keep shared files under `/var/tmp`).
const DEFAULT_PARENT: &str = "/var/tmp";
/// The per-test deadline of the `tessera run` side, as long as nextest's longest (the Compose
/// story's `terminate-after`, `.config/nextest.toml`).
const TEST_TIMEOUT: &str = "20m";
/// The variables both sides get from this process: what the tools and our tests read.
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
    "TESSERA_WORLD_CACHE",
    "TESSERA_SKIP_BAZEL",
];
/// Of [`COMMON_ENV`], those `tessera run` does not pass on its own (`PASSED_ENV` in
/// `cli/src/spec/mod.rs`): given with `--env NAME` when set.
const EXTRA_ENV: &[&str] = &["TESSERA_WORLD_CACHE", "TESSERA_SKIP_BAZEL"];

/// What one `self` run measures.
#[derive(Debug, Clone)]
pub(crate) struct SelfPlan {
    /// The command line that selects this plan, for the report.
    pub command: String,
    /// Packages both sides test; empty for `--workspace`.
    pub packages: Vec<String>,
    /// The `tessera` binary (`None`: beside this executable).
    pub tessera: Option<PathBuf>,
}

impl SelfPlan {
    /// The benchmark the README quotes: the whole workspace.
    pub(crate) fn full() -> Self {
        SelfPlan {
            command: "cargo run --release -p tessera-bench -- self".to_owned(),
            packages: Vec::new(),
            tessera: None,
        }
    }

    /// One small crate, to try the benchmark out in a minute; the same targets.
    pub(crate) fn quick() -> Self {
        SelfPlan {
            command: "cargo run --release -p tessera-bench -- self --quick".to_owned(),
            packages: vec!["tessera-config".to_owned()],
            tessera: None,
        }
    }

    /// `--workspace`, or `-p NAME` for each package.
    fn selection(&self) -> Vec<String> {
        if self.packages.is_empty() {
            return vec!["--workspace".to_owned()];
        }
        self.packages
            .iter()
            .flat_map(|p| ["-p".to_owned(), p.clone()])
            .collect()
    }

    fn scope(&self) -> String {
        if self.packages.is_empty() {
            "the workspace".to_owned()
        } else {
            self.packages.join(", ")
        }
    }
}

/// One timed command.
#[derive(Debug, Clone)]
struct Timed {
    wall: Duration,
    status: ExitStatus,
}

/// One side's run: nextest's is two commands (nextest, then the doctests).
#[derive(Debug, Clone)]
struct Side {
    steps: Vec<Timed>,
}

impl Side {
    fn wall(&self) -> Duration {
        self.steps.iter().map(|s| s.wall).sum()
    }

    fn exits(&self) -> String {
        self.steps
            .iter()
            .map(|s| {
                s.status
                    .code()
                    .map_or("signal".to_owned(), |c| c.to_string())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Everything measured.
#[derive(Debug)]
struct Measured {
    nextest_cold: Side,
    tessera_cold: Side,
    nextest_warm: Side,
    tessera_warm: Side,
    /// Cold and warm `tessera run`'s `finished` counts: (total reported, cached).
    tessera_counts: [(usize, u64); 2],
    /// The cross-check of the cold `tessera run` against the tools' listings.
    findings: crosscheck::Findings,
    /// Tests the tools listed.
    listed: usize,
}

fn progress(message: &str) {
    eprintln!("tessera-bench: {message}");
}

/// Runs `plan` with its scratch directory under `data_parent` (default `/var/tmp`).
pub(crate) fn run(plan: &SelfPlan, data_parent: Option<&Path>) -> Result<Report, BenchError> {
    let parent = data_parent.unwrap_or(Path::new(DEFAULT_PARENT));
    let environment = Environment::here(&plan.command, Some(parent));
    // Absolute: the commands run in the clones.
    let binary = tessera_binary(plan.tessera.as_deref())?
        .canonicalize()
        .map_err(|source| BenchError::Io {
            what: "find the tessera binary",
            source,
        })?;
    let top = git_output(&["rev-parse", "--show-toplevel"], None)?;
    let head = git_output(&["rev-parse", "HEAD"], Some(Path::new(&top)))?;
    let scratch = tempfile::Builder::new()
        .prefix("tessera-bench-self-")
        .tempdir_in(parent)
        .map_err(|source| BenchError::Io {
            what: "create the scratch directory",
            source,
        })?;
    let dir = scratch.path();
    let base_env = base_env();
    // A name of its own: the exec root is /var/tmp/tessera/<name> on the agent.
    let nextest_clone = dir.join("nextest").join("tessera");
    let tessera_clone = dir
        .join("tessera")
        .join(format!("tessera-self-{:08x}", rand::random::<u32>()));
    for clone in [&nextest_clone, &tessera_clone] {
        progress(&format!("cloning {head} into {}", clone.display()));
        clone_at(Path::new(&top), &head, clone)?;
    }
    progress("cargo fetch (both sides then build offline in effect)");
    let fetch = timed(
        &argv(&["cargo", "fetch", "--locked"]),
        &nextest_clone,
        &base_env,
        &dir.join("fetch.log"),
    )?;
    if !fetch.status.success() {
        return Err(BenchError::Tool(format!(
            "cargo fetch failed ({}); see {}",
            fetch.status,
            dir.join("fetch.log").display()
        )));
    }

    let mut nextest_env = base_env.clone();
    nextest_env.insert(
        "CARGO_TARGET_DIR".to_owned(),
        dir.join("target-nextest").display().to_string(),
    );
    let mut tessera_env = base_env.clone();
    tessera_env.insert(
        "XDG_CACHE_HOME".to_owned(),
        dir.join("xdg-cache").display().to_string(),
    );
    tessera_env.insert(
        "XDG_CONFIG_HOME".to_owned(),
        dir.join("xdg-config").display().to_string(),
    );
    let nextest = |label: &str| nextest_side(plan, &nextest_clone, &nextest_env, dir, label);
    let tessera =
        |label: &str| tessera_side(plan, &binary, &tessera_clone, &tessera_env, dir, label);

    progress(&format!("cold cargo nextest run on {}", plan.scope()));
    let nextest_cold = nextest("cold")?;
    progress(&format!(
        "cold: nextest {:.1} s",
        nextest_cold.wall().as_secs_f64()
    ));
    progress(&format!("cold tessera run on {}", plan.scope()));
    let tessera_cold = tessera("cold")?;
    progress(&format!(
        "cold: tessera {:.1} s",
        tessera_cold.wall().as_secs_f64()
    ));
    progress("warm cargo nextest run");
    let nextest_warm = nextest("warm")?;
    progress("warm tessera run");
    let tessera_warm = tessera("warm")?;

    progress("listing the tests with cargo nextest list and cargo test --doc -- --list");
    let listed = list_tests(plan, &nextest_clone, &nextest_env, dir)?;
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|source| BenchError::Io {
            what: "read tessera run's output",
            source,
        })
    };
    let unreadable = |e: crosscheck::InputError| BenchError::Unexpected(e.to_string());
    let cold = crosscheck::tessera_events(&read("tessera-cold.jsonl")?).map_err(unreadable)?;
    let warm = crosscheck::tessera_events(&read("tessera-warm.jsonl")?).map_err(unreadable)?;
    let junit = crosscheck::junit_tests(&read("tessera-cold.xml").unwrap_or_default()).ok();
    let findings = crosscheck::compare(&listed, &cold, junit.as_ref());
    let cached = |lines: &str| {
        lines
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["event"] == "finished")
            .map_or(0, |e| e["cached"].as_u64().unwrap_or(0))
    };
    let measured = Measured {
        tessera_counts: [
            (cold.tests.len(), cached(&read("tessera-cold.jsonl")?)),
            (warm.tests.len(), cached(&read("tessera-warm.jsonl")?)),
        ],
        nextest_cold,
        tessera_cold,
        nextest_warm,
        tessera_warm,
        findings,
        listed: listed.len(),
    };
    let report = summarize(environment, plan, &measured);
    // The scratch directory holds two debug builds: gone unless asked to keep it.
    if std::env::var_os("TESSERA_BENCH_KEEP").is_some() {
        progress(&format!("kept {}", scratch.keep().display()));
    }
    Ok(report)
}

/// The variables of [`COMMON_ENV`] set here, and `NO_COLOR`.
fn base_env() -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = COMMON_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect();
    env.insert("NO_COLOR".to_owned(), "1".to_owned());
    env
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// `cargo nextest run` then `cargo test --doc`, as `.ci/test.sh` runs them in mode `nextest`.
fn nextest_side(
    plan: &SelfPlan,
    clone: &Path,
    env: &BTreeMap<String, String>,
    dir: &Path,
    label: &str,
) -> Result<Side, BenchError> {
    let mut run = argv(&["cargo", "nextest", "run", "--locked", "--no-fail-fast"]);
    run.extend(plan.selection());
    let mut doc = argv(&["cargo", "test", "--locked", "--doc"]);
    doc.extend(plan.selection());
    Ok(Side {
        steps: vec![
            timed(&run, clone, env, &dir.join(format!("nextest-{label}.log")))?,
            timed(&doc, clone, env, &dir.join(format!("doctest-{label}.log")))?,
        ],
    })
}

/// `tessera run -- cargo test`, as `.ci/test.sh` runs it in mode `tessera`.
fn tessera_side(
    plan: &SelfPlan,
    binary: &Path,
    clone: &Path,
    env: &BTreeMap<String, String>,
    dir: &Path,
    label: &str,
) -> Result<Side, BenchError> {
    let mut args = vec![
        binary.display().to_string(),
        "run".to_owned(),
        "--json".to_owned(),
        "--junit".to_owned(),
        dir.join(format!("tessera-{label}.xml"))
            .display()
            .to_string(),
        "--network".to_owned(),
        "--timeout".to_owned(),
        TEST_TIMEOUT.to_owned(),
    ];
    for name in EXTRA_ENV.iter().filter(|n| env.contains_key(**n)) {
        args.extend(["--env".to_owned(), (*name).to_owned()]);
    }
    args.extend(argv(&["--", "cargo", "test", "--locked"]));
    args.extend(plan.selection());
    let stdout = dir.join(format!("tessera-{label}.jsonl"));
    let stderr = dir.join(format!("tessera-{label}.err"));
    Ok(Side {
        steps: vec![timed_split(&args, clone, env, &stdout, &stderr)?],
    })
}

/// The tests the tools list on the nextest side's build, in [`crosscheck`]'s keys.
fn list_tests(
    plan: &SelfPlan,
    clone: &Path,
    env: &BTreeMap<String, String>,
    dir: &Path,
) -> Result<BTreeSet<String>, BenchError> {
    let mut list = argv(&[
        "cargo",
        "nextest",
        "list",
        "--locked",
        "--message-format",
        "json",
    ]);
    list.extend(plan.selection());
    let mut doc = argv(&["cargo", "test", "--locked", "--doc"]);
    doc.extend(plan.selection());
    doc.extend(argv(&["--", "--list"]));
    let list_out = dir.join("nextest-list.json");
    let status = timed_split(&list, clone, env, &list_out, &dir.join("nextest-list.err"))?.status;
    let doc_out = dir.join("doctest-list.txt");
    let doc_status = timed(&doc, clone, env, &doc_out)?.status;
    if !status.success() || !doc_status.success() {
        return Err(BenchError::Tool(format!(
            "listing the tests failed ({status}, {doc_status}); see {} and {}",
            dir.join("nextest-list.err").display(),
            doc_out.display()
        )));
    }
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| BenchError::Io {
            what: "read a test listing",
            source,
        })
    };
    let unreadable = |e: crosscheck::InputError| BenchError::Unexpected(e.to_string());
    let mut tests = crosscheck::nextest_list(&read(&list_out)?).map_err(unreadable)?;
    tests.extend(crosscheck::doctest_list(&read(&doc_out)?).map_err(unreadable)?);
    Ok(tests)
}

/// `git ARGS` (in `dir`), its trimmed stdout.
fn git_output(args: &[&str], dir: Option<&Path>) -> Result<String, BenchError> {
    let mut command = Command::new("git");
    command.args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command.output().map_err(|source| BenchError::Io {
        what: "run git",
        source,
    })?;
    if !output.status.success() {
        return Err(BenchError::Tool(format!(
            "git {} failed: {} (run the benchmark inside the repository)",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A fresh clone of `repo` at `commit` in `dest`.
fn clone_at(repo: &Path, commit: &str, dest: &Path) -> Result<(), BenchError> {
    let parent = dest.parent().unwrap_or(dest);
    std::fs::create_dir_all(parent).map_err(|source| BenchError::Io {
        what: "create a clone's directory",
        source,
    })?;
    let dest_text = dest.display().to_string();
    let repo_text = repo.display().to_string();
    git_output(
        &["clone", "--quiet", "--no-checkout", &repo_text, &dest_text],
        None,
    )?;
    git_output(&["checkout", "--quiet", "--detach", commit], Some(dest))?;
    Ok(())
}

/// Runs `argv` in `cwd` with exactly `env`, stdout and stderr to `log`, timed spawn to exit.
fn timed(
    argv: &[String],
    cwd: &Path,
    env: &BTreeMap<String, String>,
    log: &Path,
) -> Result<Timed, BenchError> {
    timed_split(argv, cwd, env, log, log)
}

/// [`timed`] with stdout and stderr to their own files (or one, when the same).
fn timed_split(
    argv: &[String],
    cwd: &Path,
    env: &BTreeMap<String, String>,
    stdout: &Path,
    stderr: &Path,
) -> Result<Timed, BenchError> {
    let (wall, status) = run_timed(argv, cwd, env, stdout, stderr, RUN_LIMIT)?;
    Ok(Timed { wall, status })
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The rows: cold and warm against their baselines, and the cross-check.
fn summarize(environment: Environment, plan: &SelfPlan, m: &Measured) -> Report {
    let scope = plan.scope();
    let [(cold_tests, cold_cached), (warm_tests, warm_cached)] = m.tessera_counts;
    let rows = vec![
        Row {
            measurement: "cold: `tessera run -- cargo test`, build included".to_owned(),
            digest: String::new(),
            workload: format!(
                "{scope}, fresh clone, target and cluster; {cold_tests} tests, {cold_cached} \
                 cached; exits: tessera {}, nextest + doctests {}",
                m.tessera_cold.exits(),
                m.nextest_cold.exits()
            ),
            check: Check::Ratio {
                seconds: m.tessera_cold.wall().as_secs_f64(),
                baseline_seconds: m.nextest_cold.wall().as_secs_f64(),
                baseline: "cold `cargo nextest run` + `cargo test --doc`",
                runs: 1,
                max_ratio: Some(COLD_MAX_RATIO),
            },
        },
        Row {
            measurement: "warm: the same again, nothing changed".to_owned(),
            digest: String::new(),
            workload: format!(
                "{scope}; {warm_tests} tests, {warm_cached} cached; nextest {} + doctests {}",
                seconds(m.nextest_warm.steps[0].wall),
                seconds(m.nextest_warm.steps[1].wall)
            ),
            check: Check::Ratio {
                seconds: m.tessera_warm.wall().as_secs_f64(),
                baseline_seconds: m.nextest_warm.wall().as_secs_f64(),
                baseline: "warm `cargo nextest run` + `cargo test --doc`",
                runs: 1,
                max_ratio: Some(WARM_MAX_RATIO),
            },
        },
        Row {
            measurement: "cold `tessera run`: the tools' tests, all passed".to_owned(),
            digest: String::new(),
            workload: format!(
                "{} listed by `cargo nextest list` and `cargo test --doc -- --list`",
                report::thousands(m.listed)
            ),
            check: Check::Agreement {
                result: crosscheck_summary(&m.findings),
                expected: crosscheck_summary(&crosscheck::Findings::default()),
                baseline: "the tools' listings",
            },
        },
    ];
    let mut notes = vec![format!(
        "Cold: nextest {} (nextest {}, doctests {}), tessera {}. Warm: nextest {}, tessera {}. \
         Fresh clones of HEAD under the data directory; nextest with a fresh CARGO_TARGET_DIR, \
         `tessera run` on a fresh embedded cluster (XDG_CACHE_HOME in the scratch directory), \
         both with CARGO_HOME prefetched. Targets: cold ≤ {COLD_MAX_RATIO} × nextest (CI \
         uses whichever is faster), warm ≤ {WARM_MAX_RATIO} × nextest.",
        seconds(m.nextest_cold.wall()),
        seconds(m.nextest_cold.steps[0].wall),
        seconds(m.nextest_cold.steps[1].wall),
        seconds(m.tessera_cold.wall()),
        seconds(m.nextest_warm.wall()),
        seconds(m.tessera_warm.wall()),
    )];
    if !m.findings.is_clean() {
        notes.push(format!("Cross-check of the cold run:\n\n{}", m.findings));
    }
    Report {
        environment,
        layout: Layout::Execution,
        rows,
        notes,
    }
}

/// The cross-check in a few words, rendered alike for the finding and the expectation.
fn crosscheck_summary(findings: &crosscheck::Findings) -> String {
    format!(
        "{} missing, {} extra, {} repeated, {} not passed{}",
        findings.missing.len(),
        findings.extra.len(),
        findings.repeated.len(),
        findings.not_passed.len(),
        findings
            .job
            .as_ref()
            .map_or_else(String::new, |job| format!(", job: {job}"))
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;
    use crate::report::Verdict;

    fn side(secs: &[u64]) -> Side {
        Side {
            steps: secs
                .iter()
                .map(|s| Timed {
                    wall: Duration::from_secs(*s),
                    status: ExitStatus::from_raw(0),
                })
                .collect(),
        }
    }

    fn measured(tessera_cold: u64, tessera_warm: u64, findings: crosscheck::Findings) -> Measured {
        Measured {
            nextest_cold: side(&[400, 40]),
            tessera_cold: side(&[tessera_cold]),
            nextest_warm: side(&[180, 20]),
            tessera_warm: side(&[tessera_warm]),
            tessera_counts: [(424, 0), (424, 424)],
            findings,
            listed: 424,
        }
    }

    fn verdicts(m: &Measured) -> Vec<Verdict> {
        summarize(Environment::here("test", None), &SelfPlan::full(), m)
            .rows
            .iter()
            .map(Row::verdict)
            .collect()
    }

    #[test]
    fn cold_is_held_to_nextest_with_doctests_and_warm_to_a_tenth_of_it() {
        let clean = crosscheck::Findings::default;
        assert_eq!(
            verdicts(&measured(440, 20, clean())),
            [Verdict::Pass, Verdict::Pass, Verdict::Pass]
        );
        assert_eq!(
            verdicts(&measured(441, 21, clean())),
            [Verdict::Miss, Verdict::Miss, Verdict::Pass]
        );
    }

    #[test]
    fn a_test_lost_by_tessera_misses_and_is_named_under_the_table() {
        let findings = crosscheck::Findings {
            missing: vec!["tessera-cas digest::tests::parses".to_owned()],
            ..crosscheck::Findings::default()
        };
        let m = measured(100, 1, findings);
        assert_eq!(verdicts(&m)[2], Verdict::Miss);
        let report = summarize(Environment::here("test", None), &SelfPlan::full(), &m);
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("tessera-cas digest::tests::parses")),
            "{:?}",
            report.notes
        );
    }

    #[test]
    fn packages_restrict_both_sides() {
        assert_eq!(SelfPlan::full().selection(), ["--workspace"]);
        assert_eq!(SelfPlan::quick().selection(), ["-p", "tessera-config"]);
    }
}

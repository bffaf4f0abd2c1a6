//! Issue 10, shown on the world's suites: real test suites nobody here wrote (three pytest
//! projects from PyPI, three Rust crates from crates.io, two Go modules from Debian), each run
//! directly and through `tessera run --junit F --json -- <the same command>` on a coordinator
//! with two agent processes. Test by test, Tessera must say what the tool says; the JUnit
//! file, the `--json` events and the summary must each list every test exactly once; and each
//! suite must still show what it was chosen for (`world/catalogue.rs`), so that a later change
//! of suite cannot quietly drop a case. One suite also runs while an agent and then the
//! coordinator are SIGKILLed (the coordinator restarted on its data directory and port).
//!
//! The suites are downloaded once into `${TESSERA_WORLD_CACHE:-~/.cache/tessera-world}`
//! (`world/fetch.sh`). With `CI` unset, a missing tool or download skips with a message;
//! under `CI=true` it fails. The table of suites is printed (run with `--no-capture` to see it
//! when everything passes) and written to `table-STORY.md` in the cache; a failing story
//! keeps its logs (direct output and reports, Tessera's events and JUnit) in the cache's
//! `last-failure-STORY/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tessera_tests::world::catalogue::{Fetched, MORE_ITERTOOLS, SUITES, Suite};
use tessera_tests::world::compare::{Mismatch, Row, compare, table};
use tessera_tests::world::direct::{self, DirectRun};
use tessera_tests::world::source;
use tessera_tests::world::tessera_run::{Answer, TesseraRun};
use tessera_tests::{AgentProcess, ServerProcess, free_port, in_ci, lines};

/// How long one suite may take through Tessera (a cold cargo build on the agents included).
const SUITE_LIMIT: Duration = Duration::from_secs(420);
/// Agents lose a dead peer's work after this (the fault story's killed agent).
const LEASE_TIMEOUT: &str = "3s";

/// Fetches `suites`, or says why not: `None` means skip (only allowed with `CI` unset).
fn fetch_or_skip(suites: &[Suite]) -> Option<Vec<(Suite, Fetched)>> {
    let mut fetched = Vec::new();
    for suite in suites {
        match suite.fetch() {
            Ok(f) => fetched.push((*suite, f)),
            Err(why) if in_ci() => {
                panic!("suite {} is unavailable under CI: {}", suite.name, why.0)
            }
            Err(why) => {
                eprintln!("skipped: suite {} is unavailable: {}", suite.name, why.0);
                return None;
            }
        }
    }
    Some(fetched)
}

/// A coordinator on `addr` with `data_dir`, and its lease timeout short enough for the fault
/// story.
fn coordinator(addr: SocketAddr, data_dir: &Path) -> ServerProcess {
    ServerProcess::start_on(
        addr,
        data_dir,
        &[],
        &[("TESSERA_LEASE_TIMEOUT", LEASE_TIMEOUT)],
    )
}

fn agent(endpoint: &str, work: &Path, id: &str) -> AgentProcess {
    let agent = AgentProcess::start(endpoint, &work.join(id), id, 2, &[]);
    agent
        .log
        .blocking_wait_for(lines::AGENT_CONNECTED, Duration::from_secs(30));
    agent
}

/// Where one story works: its temp dir (copies, agents, coordinator data) and its logs, which
/// are kept in the cache (`last-failure-STORY/`) when the story fails.
struct Workspace {
    dir: tempfile::TempDir,
    story: &'static str,
}

impl Workspace {
    fn new(story: &'static str) -> Self {
        Workspace {
            dir: tessera_tests::visible_tempdir(),
            story,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Logs of `suite`: the direct run's output and report, Tessera's events and JUnit.
    fn logs(&self, suite: &str) -> PathBuf {
        let dir = self.path().join("logs").join(suite);
        std::fs::create_dir_all(&dir).expect("logs dir");
        dir
    }

    /// Fails the story with `why`, keeping its logs.
    fn fail(&self, why: &str) -> ! {
        let kept = source::cache_dir().join(format!("last-failure-{}", self.story));
        let _ = std::fs::remove_dir_all(&kept);
        let _ = source::copy_tree(&self.path().join("logs"), &kept);
        panic!("{why}\n(logs kept in {})", kept.display());
    }
}

/// The direct run of `suite`, with its evidence checked: what the suite was chosen for and
/// the direct run did not show is returned as a complaint.
fn run_directly(
    suite: &Suite,
    fetched: &Fetched,
    work: &Workspace,
    copy_name: &str,
) -> (DirectRun, Duration, Vec<String>) {
    let copy = suite
        .copy(fetched, &work.path().join("direct"), copy_name)
        .unwrap_or_else(|e| panic!("copy {}: {e}", suite.name));
    let started = Instant::now();
    let run = direct::run(suite, fetched, &copy, &work.logs(suite.name))
        .unwrap_or_else(|e| work.fail(&format!("{} run directly: {e}", suite.name)));
    let took = started.elapsed();
    eprintln!(
        "{}: the direct run shows {:?} ({} tests, {})",
        suite.name,
        run.evidence,
        run.outcomes.len(),
        run.status
    );
    let missing: Vec<String> = suite
        .chosen_for
        .iter()
        .filter(|f| run.evidence.get(f).copied().unwrap_or(0) == 0)
        .map(|f| {
            format!(
                "{}: chosen for {f:?}, but its direct run showed none (see {})",
                suite.name,
                run.log.display()
            )
        })
        .collect();
    (run, took, missing)
}

/// Starts `tessera run` on a fresh copy of `suite` named `copy_name`.
fn start_tessera(
    suite: &Suite,
    fetched: &Fetched,
    work: &Workspace,
    copy_name: &str,
    endpoint: &str,
) -> TesseraRun {
    let copy = suite
        .copy(fetched, &work.path().join("tessera"), copy_name)
        .expect("copy for tessera");
    let mut env = direct::common_env();
    env.extend(fetched.env.clone());
    TesseraRun::start(
        endpoint,
        &copy,
        &env,
        suite.command,
        work.logs(suite.name).join("tessera.xml"),
        suite.tessera_flags,
    )
}

/// What one suite gave: its row, its differences and the problems of Tessera's views.
struct Verdict {
    suite: &'static str,
    row: Row,
    mismatches: Vec<Mismatch>,
    views: Vec<String>,
}

fn judge(
    suite: &Suite,
    direct: &DirectRun,
    answer: &Answer,
    times: (Duration, Duration),
    work: &Workspace,
) -> Verdict {
    let events: String = answer.events.iter().map(|e| format!("{e}\n")).collect();
    let logs = work.logs(suite.name);
    let _ = std::fs::write(logs.join("tessera.jsonl"), events);
    let _ = std::fs::write(logs.join("tessera.stderr"), &answer.stderr);
    let tessera = answer.outcomes();
    let mismatches = compare(&direct.outcomes, &tessera, &direct.build_failures);
    Verdict {
        suite: suite.name,
        row: Row {
            suite: suite.name.to_owned(),
            tool: suite.tool.to_string(),
            direct_tests: direct.outcomes.len(),
            folded_subtests: direct.folded_subtests,
            tessera_tests: tessera.len(),
            mismatches: mismatches.len(),
            problem: answer.problem(),
            direct_time: times.0,
            tessera_time: times.1,
        },
        mismatches,
        views: answer.views_disagree(),
    }
}

/// Prints everything found and writes the table into the cache, then fails on the first
/// thing wrong: a suite that lost its case, views that disagree, a run with no answer, then
/// the first test that differs.
fn report(verdicts: &[Verdict], missing: &[String], work: &Workspace) {
    let rows: Vec<Row> = verdicts.iter().map(|v| v.row.clone()).collect();
    let table = table(&rows);
    eprintln!(
        "\n{}: the world's suites, direct and through tessera run:\n{table}",
        work.story
    );
    let _ = std::fs::write(
        source::cache_dir().join(format!("table-{}.md", work.story)),
        &table,
    );
    for verdict in verdicts {
        for m in verdict.mismatches.iter().take(20) {
            eprintln!("  {}: {m}", verdict.suite);
        }
        if verdict.mismatches.len() > 20 {
            eprintln!(
                "  {}: ... {} more",
                verdict.suite,
                verdict.mismatches.len() - 20
            );
        }
        for problem in verdict.views.iter().take(10) {
            eprintln!("  {} views: {problem}", verdict.suite);
        }
    }
    if !missing.is_empty() {
        work.fail(&missing.join("\n"));
    }
    for verdict in verdicts {
        if let Some(first) = verdict.views.first() {
            work.fail(&format!(
                "suite {}: tessera's views (JUnit, --json, summary) disagree: {first} ({} problems)",
                verdict.suite,
                verdict.views.len()
            ));
        }
    }
    for verdict in verdicts {
        if let Some(problem) = &verdict.row.problem {
            work.fail(&format!(
                "suite {}: tessera run gave no per-test answer: {problem}",
                verdict.suite
            ));
        }
        if let Some(first) = verdict.mismatches.first() {
            work.fail(&format!(
                "suite {}: the first difference: {first} ({} in all; table above)",
                verdict.suite,
                verdict.mismatches.len()
            ));
        }
    }
}

#[test]
fn the_worlds_suites_answer_through_tessera_as_their_tools_do() {
    let Some(suites) = fetch_or_skip(SUITES) else {
        return;
    };
    let work = Workspace::new("suites");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let server = coordinator(addr, &work.path().join("data"));
    let endpoint = server.endpoint();
    let _agents = [
        agent(&endpoint, work.path(), "agent-0"),
        agent(&endpoint, work.path(), "agent-1"),
    ];

    let mut verdicts = Vec::new();
    let mut missing = Vec::new();
    for (suite, fetched) in &suites {
        let (direct, direct_time, lost) = run_directly(suite, fetched, &work, suite.name);
        missing.extend(lost);
        let started = Instant::now();
        let answer =
            start_tessera(suite, fetched, &work, suite.name, &endpoint).finish(SUITE_LIMIT);
        let times = (direct_time, started.elapsed());
        verdicts.push(judge(suite, &direct, &answer, times, &work));
    }
    report(&verdicts, &missing, &work);
}

#[test]
fn a_world_suite_outlives_an_agent_and_the_coordinator_killed_mid_job() {
    let Some(suites) = fetch_or_skip(&[MORE_ITERTOOLS]) else {
        return;
    };
    let (suite, fetched) = &suites[0];
    // Not the name the other story's copy has: both may run at once on one machine.
    let name = "more-itertools-faults";
    let work = Workspace::new("faults");
    let (direct, direct_time, missing) = run_directly(suite, fetched, &work, name);
    if !missing.is_empty() {
        work.fail(&missing.join("\n"));
    }

    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let data = work.path().join("data");
    let mut server = coordinator(addr, &data);
    let endpoint = server.endpoint();
    let mut doomed = agent(&endpoint, work.path(), "doomed");
    let _survivor = agent(&endpoint, work.path(), "survivor");

    let started = Instant::now();
    let mut run = start_tessera(suite, fetched, &work, name, &endpoint);
    let total = direct.outcomes.len();
    let is_final = |e: &serde_json::Value| e["event"] == "test" && e["final"] == true;

    // An agent dies with work in hand; a fresh one joins so the job keeps two agents.
    if !run.wait_for_event(SUITE_LIMIT, |e| e["event"] == "test") {
        work.fail(&format!(
            "no test result before the agent was to be killed: {:?}",
            run.events.last()
        ));
    }
    doomed.signal(Signal::SIGKILL);
    doomed
        .wait_exit(Duration::from_secs(10))
        .expect("the agent died");
    let _replacement = agent(&endpoint, work.path(), "replacement");

    // Then the coordinator dies, a quarter of the way in, and comes back on its data.
    let mut seen = run.events.iter().filter(|e| is_final(e)).count();
    let quarter = (total / 4).max(seen + 1);
    if !run.wait_for_event(SUITE_LIMIT, |e| {
        seen += usize::from(is_final(e));
        seen >= quarter
    }) {
        work.fail(&format!(
            "the job ended or stalled before a quarter of its tests: {:?}",
            run.events.last()
        ));
    }
    server.kill();
    let _restarted = coordinator(addr, &data);

    let answer = run.finish(SUITE_LIMIT);
    let times = (direct_time, started.elapsed());
    let verdict = judge(suite, &direct, &answer, times, &work);
    report(&[verdict], &[], &work);
    // The restart happened under the client's feet: it lost its stream and re-attached.
    if !answer.events.iter().any(|e| e["event"] == "note") {
        work.fail("the client never noted a lost stream: the coordinator died after the job?");
    }
}

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
//! when everything passes) and written to `world-table.md` in the cache.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use tessera_tests::world::catalogue::{DATEUTIL, Fetched, SUITES, Suite};
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
            Err(why) if in_ci() => panic!("suite {} is unavailable under CI: {}", suite.name, why.0),
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

/// The direct run of `suite`, with its evidence checked: what the suite was chosen for and
/// the direct run did not show is returned as a complaint.
fn run_directly(suite: &Suite, fetched: &Fetched, work: &Path) -> (DirectRun, Vec<String>) {
    let copy = suite
        .copy(fetched, &work.join("direct"))
        .unwrap_or_else(|e| panic!("copy {}: {e}", suite.name));
    let run = direct::run(suite, fetched, &copy, work)
        .unwrap_or_else(|e| panic!("{} run directly: {e}", suite.name));
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
    (run, missing)
}

/// What one suite gave: its row, its differences and the problems of Tessera's views.
struct Verdict {
    row: Row,
    mismatches: Vec<Mismatch>,
    views: Vec<String>,
}

fn judge(suite: &Suite, direct: &DirectRun, answer: &Answer) -> Verdict {
    let tessera = answer.outcomes();
    let mismatches = compare(&direct.outcomes, &tessera, &direct.build_failures);
    let views = answer
        .views_disagree()
        .into_iter()
        .map(|p| format!("{}: {p}", suite.name))
        .collect();
    Verdict {
        row: Row {
            suite: suite.name.to_owned(),
            tool: suite.tool.to_string(),
            direct_tests: direct.outcomes.len(),
            tessera_tests: tessera.len(),
            mismatches: mismatches.len(),
            problem: answer.problem(),
        },
        mismatches,
        views,
    }
}

/// Prints everything found, writes the table beside the cache, then fails on the first thing
/// wrong: a suite that lost its case, views that disagree, then the first test that differs.
fn report(verdicts: &[(Suite, Verdict)], missing: &[String]) {
    let rows: Vec<Row> = verdicts.iter().map(|(_, v)| v.row.clone()).collect();
    let table = table(&rows);
    eprintln!("\nThe world's suites, direct and through tessera run:\n{table}");
    let _ = std::fs::write(source::cache_dir().join("world-table.md"), &table);
    for (suite, verdict) in verdicts {
        for m in verdict.mismatches.iter().take(20) {
            eprintln!("  {}: {m}", suite.name);
        }
        if verdict.mismatches.len() > 20 {
            eprintln!("  {}: ... {} more", suite.name, verdict.mismatches.len() - 20);
        }
        for problem in verdict.views.iter().take(10) {
            eprintln!("  views: {problem}");
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    let views: Vec<&String> = verdicts.iter().flat_map(|(_, v)| &v.views).collect();
    assert!(
        views.is_empty(),
        "tessera's views (JUnit, --json, summary) disagree:\n{}",
        views.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
    for (suite, verdict) in verdicts {
        if let Some(problem) = &verdict.row.problem {
            panic!("suite {}: tessera run gave no per-test answer: {problem}", suite.name);
        }
        if let Some(first) = verdict.mismatches.first() {
            panic!(
                "suite {}: the first difference: {first} ({} in all; table above)",
                suite.name,
                verdict.mismatches.len()
            );
        }
    }
}

#[test]
fn the_worlds_suites_answer_through_tessera_as_their_tools_do() {
    let Some(suites) = fetch_or_skip(SUITES) else {
        return;
    };
    let work = tessera_tests::visible_tempdir();
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
        let scratch = work.path().join(suite.name);
        std::fs::create_dir_all(&scratch).expect("scratch dir");
        let (direct, lost) = run_directly(suite, fetched, &scratch);
        missing.extend(lost);

        let copy = suite
            .copy(fetched, &scratch.join("tessera"))
            .expect("copy for tessera");
        let mut env = direct::common_env();
        env.extend(fetched.env.clone());
        let answer = TesseraRun::start(
            &endpoint,
            &copy,
            &env,
            suite.command,
            scratch.join("tessera.xml"),
            &[],
        )
        .finish(SUITE_LIMIT);
        verdicts.push((*suite, judge(suite, &direct, &answer)));
    }
    report(&verdicts, &missing);
}

#[test]
fn a_world_suite_outlives_an_agent_and_the_coordinator_killed_mid_job() {
    let Some(suites) = fetch_or_skip(&[DATEUTIL]) else {
        return;
    };
    let (suite, fetched) = &suites[0];
    let work = tessera_tests::visible_tempdir();
    let scratch = work.path().join("direct");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let (direct, missing) = run_directly(suite, fetched, &scratch);
    assert!(missing.is_empty(), "{}", missing.join("\n"));

    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let data = work.path().join("data");
    let mut server = coordinator(addr, &data);
    let endpoint = server.endpoint();
    let mut doomed = agent(&endpoint, work.path(), "doomed");
    let _survivor = agent(&endpoint, work.path(), "survivor");

    let copy = suite
        .copy(fetched, &work.path().join("tessera"))
        .expect("copy for tessera");
    let mut env = direct::common_env();
    env.extend(fetched.env.clone());
    let mut run = TesseraRun::start(
        &endpoint,
        &copy,
        &env,
        suite.command,
        work.path().join("tessera.xml"),
        &[],
    );
    let total = direct.outcomes.len();
    let finals_seen = |run: &TesseraRun| {
        run.events
            .iter()
            .filter(|e| e["event"] == "test" && e["final"] == true)
            .count()
    };

    // An agent dies with work in hand; a fresh one joins so the job keeps two agents.
    assert!(
        run.wait_for_event(SUITE_LIMIT, |e| e["event"] == "test"),
        "no test result before the agent was to be killed: {:?}",
        run.events.last()
    );
    doomed.signal(Signal::SIGKILL);
    doomed.wait_exit(Duration::from_secs(10)).expect("the agent died");
    let _replacement = agent(&endpoint, work.path(), "replacement");

    // Then the coordinator dies, a quarter of the way in, and comes back on its data.
    let quarter = total / 4;
    let before = finals_seen(&run);
    let mut seen = before;
    assert!(
        run.wait_for_event(SUITE_LIMIT, |e| {
            if e["event"] == "test" && e["final"] == true {
                seen += 1;
            }
            seen >= quarter.max(before + 1)
        }),
        "the job ended or stalled before a quarter of its tests: {:?}",
        run.events.last()
    );
    assert!(
        finals_seen(&run) < total,
        "every test finished before the coordinator could be killed: the suite is too small for this story"
    );
    server.kill();
    let _server = coordinator(addr, &data);

    let answer = run.finish(SUITE_LIMIT);
    let verdict = judge(suite, &direct, &answer);
    report(&[(*suite, verdict)], &[]);
    let tests: BTreeMap<_, _> = answer.outcomes();
    assert_eq!(tests.len(), total, "every test, once");
}

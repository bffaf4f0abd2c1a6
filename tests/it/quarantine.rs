//! Flaky-test quarantine (issue 15) with a real coordinator (`--auth tokens`, the flake policy
//! on) and a real agent: a quarantined failing test still runs and is reported failed, but the
//! job passes (exit 0); removing the quarantine makes the job fail again (exit 1); the policy
//! quarantines a test that flakes past its threshold; `ci` tokens may quarantine, `developer`
//! tokens only list; every change is in the audit log with who or which rule made it.

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use tessera_tests::{AgentProcess, ServerProcess, free_port, visible_tempdir};

use super::metrics::tessera;

/// `steady` passes, `broken` always fails, `flaps` fails on its odd runs (a counter in
/// `$STATE/flaps`): with `--retries 1` it is flaky in every job.
const SUITE: &str = "case \"$1\" in\n\
    list) echo steady; echo broken; echo flaps;;\n\
    run) shift; for t in \"$@\"; do case \"$t\" in\n\
      steady) echo ok;;\n\
      broken) echo 'broken on purpose'; exit 1;;\n\
      flaps) n=$(cat \"$STATE/flaps\" 2>/dev/null || echo 0); n=$((n + 1));\n\
        echo $n > \"$STATE/flaps\";\n\
        if [ $((n % 2)) -eq 1 ]; then echo \"odd run $n fails\"; exit 1; fi;;\n\
    esac; done;;\n\
    esac\n";

/// The policy: flaky in more than 30% of the last 4 runs, so its second flaky run.
const POLICY: [(&str, &str); 2] = [
    ("TESSERA_QUARANTINE_FLAKE_RATE", "0.3"),
    ("TESSERA_QUARANTINE_RUNS", "4"),
];

fn transcript(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `tessera ARGS --coordinator ENDPOINT` with `token`, run in `cwd` (not for `run`, whose
/// command comes last).
pub(super) fn client(dir: &Path, cwd: &Path, endpoint: &str, args: &[&str], token: &str) -> Output {
    tessera(dir, args, Some(token))
        .args(["--coordinator", endpoint])
        .current_dir(cwd)
        .output()
        .expect("run tessera")
}

/// `tessera run --json --retries 1 --junit FILE` of [`SUITE`] in `project`.
fn run_suite(dir: &Path, project: &Path, endpoint: &str, token: &str, junit: &Path) -> Output {
    let state = format!("STATE={}", dir.join("state").display());
    let junit = junit.to_str().expect("utf-8 path");
    let args = [
        "run",
        "--coordinator",
        endpoint,
        "--json",
        "--retries",
        "1",
        "--junit",
        junit,
        "--env",
        &state,
        "--runner",
        "command",
        "--list-command",
        "sh suite.sh list",
        "--",
        "sh",
        "suite.sh",
        "run",
        "{tests}",
    ];
    tessera(dir, &args, Some(token))
        .current_dir(project)
        .output()
        .expect("run tessera")
}

/// Each JSON line of `out`'s stdout.
fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The final `test` event of `name`.
fn final_test<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["event"] == "test" && l["name"] == name && l["final"] == true)
        .unwrap_or_else(|| panic!("no final event of {name}"))
}

fn finished(lines: &[Value]) -> &Value {
    lines
        .iter()
        .find(|l| l["event"] == "finished")
        .expect("a finished line")
}

pub(super) fn create_token(
    dir: &Path,
    endpoint: &str,
    admin: &str,
    role: &str,
    name: &str,
) -> String {
    let args = ["token", "create", "--role", role, "--name", name];
    let out = client(dir, dir, endpoint, &args, admin);
    assert!(out.status.success(), "{}", transcript(&out));
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_failure_passes_the_job_until_removed_and_the_policy_quarantines_flakes() {
    let tmp = visible_tempdir();
    let dir = tmp.path();
    let addr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let server = ServerProcess::start_on(addr, &dir.join("data"), &["--auth", "tokens"], &POLICY);
    let endpoint = server.endpoint();
    let admin = std::fs::read_to_string(dir.join("data/admin-token"))
        .expect("admin token")
        .trim()
        .to_owned();
    let agent_token = create_token(dir, &endpoint, &admin, "agent", "agent-1");
    let ci = create_token(dir, &endpoint, &admin, "ci", "ci-main");
    let developer = create_token(dir, &endpoint, &admin, "developer", "dev");
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, format!("{agent_token}\n")).expect("token file");
    let token_arg = token_file.to_str().expect("utf-8 path");
    let _agent = AgentProcess::start_connected(
        &endpoint,
        &dir.join("agent"),
        "agent-1",
        2,
        &["--token-file", token_arg],
    )
    .await;
    let project = dir.join("widget");
    std::fs::create_dir_all(&project).expect("project dir");
    std::fs::create_dir_all(dir.join("state")).expect("state dir");
    std::fs::write(project.join("suite.sh"), SUITE).expect("suite.sh");
    let junit = dir.join("report.xml");

    // Not quarantined: the broken test fails the job.
    let out = run_suite(dir, &project, &endpoint, &developer, &junit);
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let first = lines(&out);
    assert_eq!(final_test(&first, "broken")["quarantined"], false);
    assert_eq!(final_test(&first, "flaps")["outcome"], "flaky");
    assert_eq!(finished(&first)["quarantined"], 0);

    // A developer may not quarantine; a ci token may, from inside the checkout.
    let add = [
        "quarantine",
        "add",
        "broken",
        "--reason",
        "tracked in BUG-7",
    ];
    let out = client(dir, &project, &endpoint, &add, &developer);
    assert!(!out.status.success(), "{}", transcript(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not allow quarantining tests"),
        "{}",
        transcript(&out)
    );
    let out = client(dir, &project, &endpoint, &add, &ci);
    assert!(out.status.success(), "{}", transcript(&out));

    // Quarantined: it still runs and fails, the job passes and says so.
    let out = run_suite(dir, &project, &endpoint, &developer, &junit);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let second = lines(&out);
    let broken = final_test(&second, "broken");
    assert_eq!(
        (&broken["outcome"], &broken["quarantined"]),
        (&Value::from("failed"), &Value::from(true)),
        "{broken}"
    );
    assert!(
        broken["output"]
            .as_str()
            .unwrap()
            .contains("broken on purpose")
    );
    let done = finished(&second);
    assert_eq!(done["result"], "passed", "{done}");
    assert_eq!(
        (&done["failed"], &done["quarantined"]),
        (&1.into(), &1.into())
    );
    let xml = std::fs::read_to_string(&junit).expect("junit report");
    assert!(
        xml.contains("<property name=\"quarantined\" value=\"true\"/>")
            && xml.contains("<failure message=\"failed\""),
        "{xml}"
    );
    // `flaps` was flaky in both jobs: 2 of its last 4 runs, above 0.3.
    let list = ["quarantine", "list", "--json"];
    let out = client(dir, &project, &endpoint, &list, &developer);
    assert!(out.status.success(), "{}", transcript(&out));
    let entries = lines(&out);
    let by: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["by"].as_str().unwrap()))
        .collect();
    assert_eq!(by.len(), 2, "{entries:?}");
    assert!(by.contains(&("broken", "ci-main")), "{entries:?}");
    let policy = by
        .iter()
        .find(|(name, _)| *name == "flaps")
        .map(|(_, by)| by.to_owned())
        .unwrap_or_else(|| panic!("flaps not quarantined by the policy: {entries:?}"));
    assert!(policy.starts_with("policy:"), "{policy}");
    assert!(
        entries.iter().all(|e| e["project"] == "dir:widget"),
        "{entries:?}"
    );

    // Removed: the broken test fails the job again; the flaky one is now quarantined.
    let remove = ["quarantine", "remove", "broken"];
    let out = client(dir, &project, &endpoint, &remove, &ci);
    assert!(out.status.success(), "{}", transcript(&out));
    let out = run_suite(dir, &project, &endpoint, &developer, &junit);
    assert_eq!(out.status.code(), Some(1), "{}", transcript(&out));
    let third = lines(&out);
    assert_eq!(final_test(&third, "broken")["quarantined"], false);
    assert_eq!(final_test(&third, "broken")["outcome"], "failed");
    assert_eq!(final_test(&third, "flaps")["quarantined"], true);
    assert_eq!(finished(&third)["quarantined"], 0);

    // The audit log has each change, with who or which rule made it.
    let out = client(dir, dir, &endpoint, &["audit", "--json"], &admin);
    assert!(out.status.success(), "{}", transcript(&out));
    let audit: Vec<(String, String)> = lines(&out)
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .unwrap_or("")
                .starts_with("quarantine.")
        })
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["token"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        audit,
        [
            ("quarantine.add".to_owned(), "ci-main".to_owned()),
            ("quarantine.add".to_owned(), policy.to_owned()),
            ("quarantine.remove".to_owned(), "ci-main".to_owned()),
        ],
        "{audit:?}"
    );
    // The denied attempt is there too.
    assert!(
        lines(&out)
            .iter()
            .any(|e| e["action"] == "denied" && e["token"] == "dev"),
        "the developer's refused add is audited"
    );
}

//! Online backup and restore (issue 14), with real processes and a real client:
//!
//! - a coordinator serves a Bazel build (remote cache) and `tessera run` jobs; `tessera backup`
//!   copies it while a slow job runs; the coordinator stops, its data directory is deleted,
//!   `tessera restore` rebuilds it and the coordinator starts again on it: Bazel's build after
//!   `clean` is answered entirely from the cache, a rerun's tests come from the result cache, and
//!   the planner's estimate from test history is what it was; a second backup into the same
//!   directory copies no blob again; a backup with one flipped byte is refused by restore,
//!   which names the file and writes nothing;
//! - scheduled backups: `--backup-dir DIR --backup-interval 1m` writes a snapshot at start,
//!   `/metrics` shows its time, and `tessera restore --verify-only` finds it whole.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use tessera_tests::{AgentProcess, ServerProcess, free_port, visible_tempdir};

use super::bazel::{Checkout, assert_all_cached, bazel_or_skip, non_internal, serial};
use super::metrics::{QUICK_SUITE, get, suite_run, tessera};

/// A suite whose two tests take a few seconds, to back up while it runs.
const SLOW_SUITE: &str = "case \"$1\" in\n\
    list) echo slow_a; echo slow_b;;\n\
    run) shift; for t in \"$@\"; do sleep 3; echo \"ran $t\"; done;;\n\
    esac\n";

/// Writes `suite` as `suite.sh` in `dir/name` and returns the project directory.
fn project(dir: &Path, name: &str, suite: &str) -> std::path::PathBuf {
    let project = dir.join(name);
    std::fs::create_dir_all(&project).expect("project dir");
    std::fs::write(project.join("suite.sh"), suite).expect("suite.sh");
    project
}

/// `tessera run --json` of the project's suite against `endpoint`, with `extra` flags.
fn run_suite(dir: &Path, project: &Path, endpoint: &str, extra: &[&str]) -> Output {
    let flags: Vec<&str> = ["--json"].iter().chain(extra).copied().collect();
    suite_run(dir, project, endpoint, &flags)
        .output()
        .expect("tessera run")
}

/// The `planned` event of a successful `--json` run.
fn planned(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tessera run failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "planned")
        .unwrap_or_else(|| panic!("no planned event in {stdout}"))
}

/// `tessera backup --to DIR --json` against `endpoint`: its JSON summary.
fn back_up(dir: &Path, endpoint: &str, to: &Path) -> Value {
    let out = tessera(dir, &["backup", "--coordinator", endpoint, "--json"], None)
        .arg("--to")
        .arg(to)
        .output()
        .expect("tessera backup");
    assert!(
        out.status.success(),
        "tessera backup: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("backup --json prints one object")
}

fn restore(dir: &Path, from: &Path, data_dir: &Path) -> Output {
    tessera(dir, &["restore"], None)
        .arg("--from")
        .arg(from)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("tessera restore")
}

#[test]
fn a_restored_coordinator_answers_bazel_from_its_cache_and_keeps_test_history() {
    let _serial = serial();
    let Some(bazel) = bazel_or_skip() else {
        return;
    };
    let tmp = visible_tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut server = ServerProcess::start_on(addr, &data, &[], &[]);
    let endpoint = server.endpoint();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let agent = runtime.block_on(AgentProcess::start_connected(
        &endpoint,
        &dir.join("agent"),
        "backup-agent",
        2,
        &[],
    ));

    // Work worth keeping: a Bazel build into the remote cache, and a suite's history.
    let cache = format!("--remote_cache=grpc://{addr}");
    let mut checkout = Checkout::new(&bazel, dir, "checkout");
    let cold = checkout.test(&cache);
    let actions = non_internal(&cold.processes());
    let cold_tests = cold.test_results();
    let quick = project(dir, "quick", QUICK_SUITE);
    assert_eq!(
        planned(&run_suite(dir, &quick, &endpoint, &[]))["cached"],
        0
    );
    planned(&run_suite(dir, &quick, &endpoint, &["--no-cache"]));

    // An online backup, taken while a slow job runs (its list step and first batch leased).
    let leased = agent.log.count(tessera_tests::lines::LEASE_ACCEPTED);
    let slow = project(dir, "slow", SLOW_SUITE);
    let slow_job = suite_run(dir, &slow, &endpoint, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the slow job");
    let mut slow_job = KillOnDrop(slow_job);
    runtime.block_on(agent.log.wait_for_nth(
        tessera_tests::lines::LEASE_ACCEPTED,
        leased + 2,
        Duration::from_secs(60),
    ));
    let backups = dir.join("backups");
    let first = back_up(dir, &endpoint, &backups);
    assert!(first["blobs"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(
        first["copied"], first["blobs"],
        "a new directory copies every blob"
    );
    assert!(
        slow_job.0.try_wait().unwrap().is_none(),
        "the backup was taken while the job ran"
    );
    let status = slow_job.0.wait().expect("the slow job ends");
    assert!(status.success(), "the slow job passes: {status:?}");
    // The estimate the restored coordinator must give again (from the backed-up history).
    let expected_ms =
        planned(&run_suite(dir, &quick, &endpoint, &["--no-cache"]))["expected_ms"].clone();

    // Incremental: a second backup copies nothing that is already there.
    let second = back_up(dir, &endpoint, &backups);
    assert_eq!(second["copied"], 0, "{second}");

    // Disaster: the coordinator stops and its data directory is lost.
    assert!(
        server
            .signal_and_wait(Signal::SIGTERM, Duration::from_secs(30))
            .is_some_and(|s| s.success()),
        "the coordinator stops on SIGTERM"
    );
    std::fs::remove_dir_all(&data).unwrap();
    // The newest snapshot is the second; restore the first, taken during the job.
    let first_name = first["snapshot"].as_str().unwrap();
    let out = tessera(dir, &["restore", "--snapshot", first_name], None)
        .arg("--from")
        .arg(&backups)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = ServerProcess::start_on(addr, &data, &[], &[]);

    // Bazel after `clean`: every action from the restored cache, nothing runs.
    checkout.run_ok(&["clean"]);
    let warm = checkout.test(&cache);
    warm.report("after restore");
    assert_all_cached(&warm, actions, &cold_tests);
    checkout.shutdown();
    // The suite's cached results and history are back.
    assert_eq!(
        planned(&run_suite(dir, &quick, &server.endpoint(), &[]))["cached"],
        2
    );
    let restored = planned(&run_suite(dir, &quick, &server.endpoint(), &["--no-cache"]));
    assert_eq!(
        restored["expected_ms"], expected_ms,
        "the planner's estimate from the restored history"
    );
    drop(server);

    // One flipped byte in a blob: restore refuses, names the file, writes nothing.
    let blob = first_blob_file(&backups.join("blobs"));
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[0] ^= 0x01;
    std::fs::write(&blob, bytes).unwrap();
    let target = dir.join("data-again");
    let out = restore(dir, &backups, &target);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "damaged backup refused: {stderr}"
    );
    assert!(
        stderr.contains(&blob.display().to_string()),
        "the bad file is named: {stderr}"
    );
    assert!(!target.exists(), "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_are_written_counted_and_whole() {
    let tmp = visible_tempdir();
    let dir = tmp.path();
    let backups = dir.join("scheduled");
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server = ServerProcess::start(
        &dir.join("data"),
        &[
            "--backup-dir",
            backups.to_str().unwrap(),
            "--backup-interval",
            "1m",
            "--backup-keep",
            "2",
            "--http-listen",
            &http.to_string(),
        ],
    );
    // With no snapshot in the directory, the first is taken at once.
    server
        .log
        .wait_for("backup written", Duration::from_secs(30))
        .await;
    let (status, metrics) = get(http, "/metrics", None).await;
    assert_eq!(status, 200);
    let taken = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tessera_backup_last_success_timestamp_seconds "))
        .unwrap_or_else(|| panic!("no backup timestamp in {metrics}"));
    let taken: f64 = taken.trim().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - taken).abs() < 120.0, "taken {taken}, now {now}");
    assert!(
        metrics.contains("tessera_backups_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    let out = tessera(
        dir,
        &["restore", "--verify-only", "--data-dir", "unused"],
        None,
    )
    .arg("--from")
    .arg(&backups)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("every checksum matches"));
    // Restarting the coordinator does not take another backup before the interval.
    drop(server);
    let started = Instant::now();
    let server = ServerProcess::start(
        &dir.join("data"),
        &[
            "--backup-dir",
            backups.to_str().unwrap(),
            "--backup-interval",
            "1m",
        ],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        server.log.count("backup written") == 0,
        "a fresh snapshot exists: none is due {:?} after start",
        started.elapsed()
    );
    let snapshots = std::fs::read_dir(backups.join("snapshots"))
        .unwrap()
        .count();
    assert_eq!(snapshots, 1);
}

/// The first blob file under `blobs/` (in name order).
fn first_blob_file(blobs: &Path) -> std::path::PathBuf {
    let mut files = Vec::new();
    let mut pending = vec![blobs.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files.into_iter().next().expect("the backup holds blobs")
}

/// A child killed when dropped (a failed assertion must not leave the job running).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! Bazel as a real REAPI client: Debian's `bazel-bootstrap` (Bazel 4.2.3) builds and tests the
//! fixture workspace (`tests/fixtures/bazel/`) against `tessera` processes.
//!
//! - As `--remote_cache` of a coordinator: a run after `bazel clean`, and a run from a second
//!   checkout with its own output base, must be answered entirely by the remote cache.
//! - As `--remote_executor` of a coordinator with two agent processes: every spawn (genrules
//!   with several outputs, a directory output and a 5 MiB output, sh_tests including a sharded
//!   one, a cc_test) runs remotely and passes, and after `bazel clean` every spawn is a remote
//!   cache hit.
//! - The same while one agent is killed with SIGKILL in the middle of the build, running an
//!   action: the coordinator's lease expires, the action runs again on the other agent, and
//!   the build succeeds with every spawn remote (Bazel's own retries are off).
//!
//! Bazel is installed with `.ci/install-deps.sh` when missing; outside CI the tests skip if that
//! fails (CI fails instead). `TESSERA_SKIP_BAZEL=1` skips them explicitly, like the installer.
//! The tests run one at a time (each starts a Bazel server: a JVM). Run with `--nocapture` to
//! see Bazel's summary lines and the timings.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tessera_cas::client::CasClient;
use tessera_cas::digest::DigestFunction;
use tessera_tests::{AgentProcess, ServerProcess, blocking_poll_until, in_ci, lines, wait_exit};

/// Size of the fixture's `//gen:big` output (`gen/big.bin`).
const BIG_SIZE: usize = 5 * 1024 * 1024;
/// Longest any single Bazel command may take before the test gives up on it.
const COMMAND_LIMIT: Duration = Duration::from_secs(240);
/// Bazel's concurrency in the remote execution tests: more than the agents' slots together.
const JOBS: &str = "--jobs=8";

/// Held by each test for its whole run: one Bazel server at a time on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

pub(crate) fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn remote_cache_answers_a_rebuild_after_clean_and_a_fresh_checkout() {
    let _serial = serial();
    let Some(bazel) = bazel_or_skip() else {
        return;
    };
    // Drop order (reverse of declaration): Bazel servers shut down, then the coordinator
    // stops, then the temp dir goes.
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), &[]);
    let cache = format!("--remote_cache=grpc://{}", server.addr);

    // 1. Cold: empty cache, everything runs locally and is uploaded.
    let mut first = Checkout::new(&bazel, tmp.path(), "checkout-1");
    let cold = first.test(&cache);
    cold.report("cold, empty cache (incl. Bazel server start)");
    let cold_counts = cold.processes();
    let actions = non_internal(&cold_counts);
    assert!(
        actions > 20,
        "expected > 20 non-internal processes, got {cold_counts:?}"
    );
    assert_eq!(
        cold_counts.get("remote cache hit"),
        None,
        "the cache was empty: {cold_counts:?}"
    );
    let tests = cold.test_results();
    assert!(tests.len() >= 5, "test results: {tests:?}");
    assert!(
        tests.iter().all(|t| t.status == "PASSED"),
        "cold run: {tests:?}"
    );

    // The 5 MiB output reached the coordinator's CAS under its SHA-256 digest, whole.
    let big = std::fs::read(first.bazel_bin().join("gen/big.bin")).unwrap();
    assert_eq!(big.len(), BIG_SIZE, "gen/big.bin");
    let digest = DigestFunction::Sha256.digest_of(&big);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = CasClient::connect(&server.endpoint(), "", DigestFunction::Sha256)
            .await
            .unwrap();
        assert_eq!(
            client.find_missing(&[digest]).await.unwrap(),
            vec![],
            "big.bin ({}) was uploaded",
            digest.hash_hex()
        );
        let stored = client.read(&digest, false).await.unwrap();
        assert!(stored == big[..], "the CAS returns big.bin unchanged");
    });
    println!(
        "bazel: CAS holds gen/big.bin sha256:{}/{}",
        digest.hash_hex(),
        digest.size_bytes
    );

    // 2. Same checkout after `bazel clean`: every action is a remote cache hit.
    first.run_ok(&["clean"]);
    let warm = first.test(&cache);
    warm.report("after clean");
    assert_all_cached(&warm, actions, &tests);
    first.shutdown();

    // 3. Another checkout and output base (another developer), same cache: all hits again.
    let mut second = Checkout::new(&bazel, tmp.path(), "checkout-2");
    let fresh = second.test(&cache);
    fresh.report("fresh checkout (incl. Bazel server start)");
    assert_all_cached(&fresh, actions, &tests);

    println!(
        "bazel: cold {:.1?}, cached after clean {:.1?}, cached in a fresh checkout {:.1?}",
        cold.took, warm.took, fresh.took
    );
}

#[test]
fn remote_execution_runs_every_spawn_remotely_then_caches_them() {
    let _serial = serial();
    let Some(bazel) = bazel_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(tmp.path(), &[]);
    let executor = cluster.executor();

    // 1. Cold: empty cache, every spawn runs on an agent.
    let mut checkout = Checkout::new(&bazel, tmp.path(), "checkout");
    let cold = checkout.run_ok(&["test", "//...", &executor, JOBS, "--remote_retries=0"]);
    cold.report("remote execution, cold (incl. Bazel server start)");
    let cold_counts = cold.processes();
    let actions = assert_all_remote(&cold);
    assert!(
        actions > 20,
        "expected > 20 non-internal processes, got {cold_counts:?}"
    );
    let tests = cold.test_results();
    assert_all_passed_remotely(&cold, &tests, 5);
    cluster.report_agents();

    // The outputs came back: several outputs of one genrule (one empty, one in a subdirectory),
    // the 5 MiB one, and the directory (REAPI output_directories: a Tree).
    let bin = checkout.bazel_bin();
    assert_eq!(
        std::fs::read_to_string(bin.join("gen/alpha.txt")).unwrap(),
        "alpha\n"
    );
    assert_eq!(
        std::fs::metadata(bin.join("gen/empty.txt")).unwrap().len(),
        0
    );
    assert!(
        std::fs::read_to_string(bin.join("gen/nested/gamma.json"))
            .unwrap()
            .contains("gamma")
    );
    let big = std::fs::read(bin.join("gen/big.bin")).unwrap();
    assert_eq!(big.len(), BIG_SIZE, "gen/big.bin");
    let summary = std::fs::read_to_string(bin.join("gen/summary.txt")).unwrap();
    let big_hash = DigestFunction::Sha256.digest_of(&big).hash_hex();
    assert!(
        summary.ends_with(&format!("{BIG_SIZE}\n{big_hash}\n")),
        "gen/summary.txt (computed remotely from big.bin) {summary:?}, local sha256 {big_hash}"
    );
    let tree = bin.join("tree/dir");
    assert_eq!(
        std::fs::read_to_string(tree.join("sub/deeper/leaf.txt")).unwrap(),
        "deep\n"
    );
    assert_eq!(
        std::fs::read_to_string(tree.join("sub/copied.txt")).unwrap(),
        "alpha\n"
    );
    let mut files = Vec::new();
    list_files(&tree, &tree, &mut files);
    files.sort();
    assert_eq!(
        files,
        [
            "f1.txt",
            "f2.txt",
            "f3.txt",
            "f4.txt",
            "f5.txt",
            "sub/copied.txt",
            "sub/deeper/leaf.txt",
            "sub/empty.txt"
        ],
        "tree/dir"
    );
    assert!(
        std::fs::read_to_string(bin.join("tree/listing.txt"))
            .unwrap()
            .contains("== ./sub/deeper/leaf.txt\ndeep\n"),
        "tree/listing.txt: the directory as an input of a remote action"
    );

    // 2. After `bazel clean`: every spawn is a remote cache hit; nothing runs.
    checkout.run_ok(&["clean"]);
    let warm = checkout.run_ok(&["test", "//...", &executor, JOBS, "--remote_retries=0"]);
    warm.report("remote execution after clean");
    assert_all_cached(&warm, actions, &tests);

    println!(
        "bazel: remote execution cold {:.1?}, cached after clean {:.1?}",
        cold.took, warm.took
    );

    // 3. The coordinator's build log (the dashboard's /builds): two invocations, newest
    //    first, each with one action per remote spawn; a lookup miss followed by Execute of
    //    the same action counted once. Read from the store once the coordinator has stopped
    //    cleanly (the log is made durable by its shutdown checkpoint, not per write).
    // The dashboard shows both builds, and finds one by the id Bazel printed.
    let listed = cluster.dashboard_json("/builds");
    let listed = listed["builds"].as_array().expect("builds: a list");
    assert_eq!(
        listed.len(),
        2,
        "/builds lists both invocations: {listed:#?}"
    );
    assert_eq!(listed[0]["hit_ratio"], 1.0, "{listed:#?}");
    let printed = invocation_id(&cold).expect("Bazel prints its invocation id");
    let page = cluster.dashboard_json(&format!("/builds/{printed}"));
    assert_eq!(
        page["actions"].as_array().map(Vec::len),
        Some(actions as usize),
        "{page:#}"
    );
    let builds = cluster.stop_and_read_builds();
    let list = builds.list(10, None).unwrap();
    assert_eq!(list.len(), 2, "one invocation per bazel command: {list:#?}");
    let (warm_build, cold_build) = (&list[0], &list[1]);
    assert!(warm_build.tool.starts_with("bazel"), "{warm_build:?}");
    // Bazel sends its command id (printed as `Invocation ID:`) as the tool invocation id.
    assert_eq!(
        [
            Some(cold_build.tool_invocation_id.clone()),
            Some(warm_build.tool_invocation_id.clone())
        ],
        [invocation_id(&cold), invocation_id(&warm)]
    );
    assert_eq!(
        (
            cold_build.actions,
            cold_build.executed,
            cold_build.cache_hits,
            cold_build.failed
        ),
        (actions, actions, 0, 0),
        "cold build: every action executed once, none failed: {cold_build:?}"
    );
    assert_eq!(
        (
            warm_build.actions,
            warm_build.executed,
            warm_build.cache_hits
        ),
        (actions, 0, actions),
        "after clean: every action a cache hit: {warm_build:?}"
    );
    assert_eq!(warm_build.hit_ratio(), 1.0);
    let detail = builds.invocation(&cold_build.id).unwrap().unwrap();
    assert_eq!(detail.actions.len() as u64, actions);
    assert!(
        detail
            .actions
            .iter()
            .all(|a| !a.action_id.is_empty() && !a.mnemonic.is_empty() && !a.target_id.is_empty()),
        "Bazel names each action's id, mnemonic and target: {:#?}",
        detail.actions
    );
    assert!(!detail.slowest.is_empty() && detail.slowest.len() <= 10);
    println!(
        "bazel: build log: cold {} (tool {:?}) {} actions, warm {} {} hits; Bazel's own \
         invocation ids: {:?}; e.g. {:#?}",
        cold_build.id,
        cold_build.tool,
        cold_build.actions,
        warm_build.id,
        warm_build.cache_hits,
        [invocation_id(&cold), invocation_id(&warm)],
        detail.slowest.first()
    );
}

/// The id Bazel prints as `INFO: Invocation ID: ...` (its command id, sent as
/// `RequestMetadata.tool_invocation_id`).
fn invocation_id(run: &Run) -> Option<String> {
    run.stderr
        .lines()
        .chain(run.stdout.lines())
        .find_map(|l| l.split("Invocation ID: ").nth(1))
        .map(|id| id.trim().to_owned())
}

#[test]
fn remote_execution_survives_an_agent_killed_mid_build() {
    let _serial = serial();
    let Some(bazel) = bazel_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(tmp.path(), &[("TESSERA_LEASE_TIMEOUT", LEASE_TIMEOUT)]);
    let executor = cluster.executor();

    // //slow:slow_test (manual) needs four 3 s genrules that start after //gen:chained.
    let mut checkout = Checkout::new(&bazel, tmp.path(), "checkout");
    let mut build = checkout.spawn(&[
        "test",
        "//...",
        "//slow:slow_test",
        &executor,
        JOBS,
        "--remote_retries=0",
    ]);

    // Wait until an agent runs one of the slow genrules, then kill that agent. Polled: an
    // agent announces a lease, not which action it runs, so its lease directory is the sign.
    let (victim, lease) =
        blocking_poll_until("agent running a //slow genrule", COMMAND_LIMIT, || {
            if build.finished() {
                let run = build.take_run();
                panic!(
                    "the build ended before any agent ran a //slow genrule ({}):\n{}",
                    run.status, run.stderr
                );
            }
            cluster
                .agents
                .iter()
                .enumerate()
                .find_map(|(i, a)| running_slow_lease(&a.work_dir).map(|l| (i, l)))
        });
    let killed_at = build.start.elapsed();
    let agent = &mut cluster.agents[victim];
    agent.signal(Signal::SIGKILL);
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("the agent dies");
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status}");
    println!(
        "bazel: killed agent {} {killed_at:.1?} into the build, while it ran {}",
        agent.id,
        lease.display()
    );

    let run = build.wait().ok();
    run.report("remote execution, an agent killed mid-build (incl. Bazel server start)");
    let counts = run.processes();
    let actions = assert_all_remote(&run);
    assert!(actions > 20, "{counts:?}");
    let tests = run.test_results();
    assert!(
        tests.iter().any(|t| t.target == "//slow:slow_test"),
        "{tests:?}"
    );
    assert_all_passed_remotely(&run, &tests, 6);
    // The dead agent never cleaned up: its lease directory is still there.
    assert!(
        lease.is_dir(),
        "{} is left behind by the killed agent",
        lease.display()
    );
    println!(
        "bazel: build with an agent killed {:.1?} (lease timeout {LEASE_TIMEOUT})",
        run.took
    );
}

/// The coordinator's lease timeout in the agent-kill test: the lost action is queued again
/// this long after the agent died.
const LEASE_TIMEOUT: &str = "3s";

/// A `tessera coordinator` process and two `tessera agent` processes with 2 slots each, under
/// `dir`.
struct Cluster {
    agents: Vec<AgentProcess>,
    server: ServerProcess,
    /// The coordinator's HTTP port (the dashboard).
    http: SocketAddr,
    dir: PathBuf,
}

impl Cluster {
    fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], tessera_tests::free_port()));
        let http = SocketAddr::from(([127, 0, 0, 1], tessera_tests::free_port()));
        let http_arg = http.to_string();
        let server =
            ServerProcess::start_on(addr, &dir.join("data"), &["--http-listen", &http_arg], env);
        let agents = ["agent-1", "agent-2"]
            .iter()
            .map(|id| AgentProcess::start(&server.endpoint(), &dir.join(id), id, 2, &[]))
            .collect();
        let cluster = Cluster {
            agents,
            server,
            http,
            dir: dir.to_owned(),
        };
        cluster.wait_for_agents();
        cluster
    }

    /// Waits until both agents are connected (Bazel's actions would wait in the queue for them
    /// anyway; this way both take part from the first action).
    fn wait_for_agents(&self) {
        for agent in &self.agents {
            agent
                .log
                .blocking_wait_for(lines::AGENT_CONNECTED, Duration::from_secs(30));
        }
    }

    /// The JSON answer of the coordinator's dashboard page `path`.
    fn dashboard_json(&self, path: &str) -> serde_json::Value {
        // Addressed to the loopback address it listens on: with auth off the dashboard answers
        // no other name.
        let (status, body) = tessera_tests::http_get(
            &self.http.to_string(),
            path,
            &[("Accept", "application/json")],
        )
        .expect("the dashboard answers");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    /// `--remote_executor=grpc://ADDR`.
    fn executor(&self) -> String {
        format!("--remote_executor=grpc://{}", self.server.addr)
    }

    /// Stops the coordinator cleanly (SIGTERM) and opens its build log from its data
    /// directory.
    fn stop_and_read_builds(&mut self) -> tessera_coordinator::builds::BuildLog {
        let status = self
            .server
            .signal_and_wait(Signal::SIGTERM, Duration::from_secs(30))
            .expect("the coordinator stops on SIGTERM");
        assert!(status.success(), "coordinator exit: {status}");
        let meta: std::sync::Arc<dyn tessera_cas::meta::MetadataStore> = std::sync::Arc::new(
            tessera_cas::meta::RedbStore::open(self.server.data_dir.join("meta")).unwrap(),
        );
        tessera_coordinator::builds::BuildLog::read_only(meta).unwrap()
    }

    /// Prints how many blobs each agent's local cache holds (both took part when both > 0).
    fn report_agents(&self) {
        for agent in &self.agents {
            let mut files = Vec::new();
            let cache = agent.work_dir.join("cache");
            list_files(&cache, &cache, &mut files);
            println!("bazel: {} cached {} blobs", agent.id, files.len());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.agents.clear();
        make_dirs_writable(&self.dir);
    }
}

/// The number of non-internal processes of `run`, all of which ran remotely.
pub(crate) fn assert_all_remote(run: &Run) -> u64 {
    let counts = run.processes();
    let actions = non_internal(&counts);
    assert_eq!(
        counts.get("remote").copied(),
        Some(actions),
        "every spawn ran remotely (no local, sandboxed or cached ones): {counts:?}"
    );
    actions
}

/// `expected` test targets, all run (not cached) and passed.
fn assert_all_passed_remotely(run: &Run, tests: &[TestResult], expected: usize) {
    assert_eq!(tests.len(), expected, "test results: {tests:?}");
    assert!(
        tests.iter().all(|t| !t.cached && t.status == "PASSED"),
        "all tests ran and PASSED: {tests:?}"
    );
    let executed = format!("Executed {expected} out of {expected} tests: {expected} tests pass.");
    assert!(
        run.stdout.lines().any(|l| l.trim() == executed),
        "expected `{executed}` in:\n{}",
        run.stdout
    );
}

/// A lease directory of the agent in `work_dir` that is running a `//slow` genrule: the
/// agent creates the parent of the declared outputs, `bazel-out/CONFIG/bin/slow`, in the exec
/// root before it starts the command, and removes the whole lease directory after reporting.
pub(crate) fn running_slow_lease(work_dir: &Path) -> Option<PathBuf> {
    let leases = std::fs::read_dir(work_dir.join("x")).ok()?;
    for lease in leases.flatten() {
        let Ok(configs) = std::fs::read_dir(lease.path().join("root/bazel-out")) else {
            continue;
        };
        if configs
            .flatten()
            .any(|c| c.path().join("bin/slow").is_dir())
        {
            return Some(lease.path());
        }
    }
    None
}

/// Paths (relative to `base`) of the regular files under `dir`, symlinks followed.
fn list_files(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            list_files(base, &path, out);
        } else if path.is_file() {
            out.push(
                path.strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
}

/// Every non-internal process of `run` was a remote cache hit, as many as the cold run had, and
/// every test result came from the cache and passed.
pub(crate) fn assert_all_cached(run: &Run, actions: u64, cold_tests: &[TestResult]) {
    let counts = run.processes();
    assert_eq!(
        counts.get("remote cache hit").copied(),
        Some(actions),
        "every action answered by the remote cache: {counts:?}"
    );
    assert_eq!(
        non_internal(&counts),
        actions,
        "nothing ran locally: {counts:?}"
    );
    let tests = run.test_results();
    let targets = |ts: &[TestResult]| ts.iter().map(|t| t.target.clone()).collect::<Vec<_>>();
    assert_eq!(targets(&tests), targets(cold_tests), "same test targets");
    assert!(
        tests.iter().all(|t| t.cached && t.status == "PASSED"),
        "all test results (cached) PASSED: {tests:?}"
    );
    let executed = format!(
        "Executed 0 out of {n} tests: {n} tests pass.",
        n = tests.len()
    );
    assert!(
        run.stdout.lines().any(|l| l.trim() == executed),
        "expected `{executed}` in:\n{}",
        run.stdout
    );
}

pub(crate) fn non_internal(counts: &BTreeMap<String, u64>) -> u64 {
    counts
        .iter()
        .filter(|(kind, _)| kind.as_str() != "internal")
        .map(|(_, n)| n)
        .sum()
}

/// A copy of the fixture with its own Bazel output base and home; its Bazel server is shut
/// down on drop.
pub(crate) struct Checkout {
    bazel: PathBuf,
    /// `.../workspace` inside the copy.
    workspace: PathBuf,
    /// Scratch for the command outputs, the Bazel output base, user root and `HOME`.
    root: PathBuf,
    running: bool,
    commands: u32,
}

impl Checkout {
    /// Copies `tests/fixtures/bazel/` (dotfiles included) to `parent/name/fixture`.
    pub(crate) fn new(bazel: &Path, parent: &Path, name: &str) -> Self {
        let root = parent.join(name);
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bazel");
        copy_tree(&fixture, &root.join("fixture"));
        std::fs::create_dir_all(root.join("home")).unwrap();
        Checkout {
            bazel: bazel.to_owned(),
            workspace: root.join("fixture/workspace"),
            root,
            running: false,
            commands: 0,
        }
    }

    /// Runs `bazel STARTUP... args` in the workspace, with a time limit.
    pub(crate) fn run(&mut self, args: &[&str]) -> Run {
        self.spawn(args).wait()
    }

    /// Starts `bazel STARTUP... args` in the workspace without waiting for it.
    fn spawn(&mut self, args: &[&str]) -> Pending {
        self.commands += 1;
        let out = self.root.join(format!("cmd-{}.out", self.commands));
        let err = self.root.join(format!("cmd-{}.err", self.commands));
        let start = Instant::now();
        let child = self
            .command()
            .args(args)
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .expect("spawn bazel");
        self.running = true;
        Pending {
            args: args.join(" "),
            child: Some(child),
            start,
            out,
            err,
        }
    }

    /// Like [`Checkout::run`], and the command must succeed without warnings or errors.
    pub(crate) fn run_ok(&mut self, args: &[&str]) -> Run {
        self.run(args).ok()
    }

    /// `bazel test //...` with the remote cache flag.
    pub(crate) fn test(&mut self, cache: &str) -> Run {
        self.run_ok(&["test", "//...", cache])
    }

    /// `bazel info bazel-bin`.
    fn bazel_bin(&mut self) -> PathBuf {
        PathBuf::from(self.run_ok(&["info", "bazel-bin"]).stdout.trim())
    }

    /// `bazel shutdown` (same directory and startup options as every command).
    pub(crate) fn shutdown(&mut self) {
        if self.running {
            self.running = false;
            let status = self
                .command()
                .arg("shutdown")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !status.as_ref().is_ok_and(ExitStatus::success) {
                eprintln!(
                    "bazel shutdown in {} failed: {status:?}",
                    self.root.display()
                );
            }
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.bazel);
        command
            .arg(format!(
                "--output_user_root={}",
                self.root.join("user-root").display()
            ))
            .arg(format!(
                "--output_base={}",
                self.root.join("output-base").display()
            ))
            // A Bazel server left behind by a killed test exits on its own.
            .arg("--max_idle_secs=120")
            .current_dir(&self.workspace)
            // No ~/.bazelrc, no caches in the real home.
            .env("HOME", self.root.join("home"))
            .env_remove("USE_BAZEL_VERSION")
            .stdin(Stdio::null());
        command
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        self.shutdown();
        // Bazel leaves tree artifacts read-only: without this, removing the temp dir fails
        // for users other than root.
        make_dirs_writable(&self.root);
    }
}

/// A Bazel command still running (killed on drop).
struct Pending {
    args: String,
    child: Option<Child>,
    start: Instant,
    out: PathBuf,
    err: PathBuf,
}

impl Pending {
    /// Whether the command has exited.
    fn finished(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().unwrap().is_some())
    }

    /// Waits for the command (at most [`COMMAND_LIMIT`] since it started).
    fn wait(mut self) -> Run {
        self.take_run()
    }

    /// [`Self::wait`] through a borrow; the command must not have been waited for yet.
    fn take_run(&mut self) -> Run {
        let mut child = self.child.take().expect("not waited yet");
        let left = COMMAND_LIMIT.saturating_sub(self.start.elapsed());
        let Some(status) = wait_exit(&mut child, left) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`bazel {}` took longer than {COMMAND_LIMIT:?}; stderr:\n{}",
                self.args,
                std::fs::read_to_string(&self.err).unwrap_or_default()
            );
        };
        Run {
            args: self.args.clone(),
            status,
            took: self.start.elapsed(),
            stdout: std::fs::read_to_string(&self.out).unwrap(),
            stderr: std::fs::read_to_string(&self.err).unwrap(),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One finished Bazel command.
pub(crate) struct Run {
    args: String,
    pub(crate) status: ExitStatus,
    took: Duration,
    stdout: String,
    pub(crate) stderr: String,
}

/// One line of Bazel's test summary, e.g. `//tests:pass_test   (cached) PASSED in 0.0s`.
#[derive(Debug)]
pub(crate) struct TestResult {
    target: String,
    cached: bool,
    status: String,
}

impl Run {
    /// The command must have succeeded without warnings or errors.
    pub(crate) fn ok(self) -> Run {
        assert!(
            self.status.success(),
            "`bazel {}` failed: {}\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.status,
            self.stdout,
            self.stderr
        );
        let noise: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("WARNING:") || l.starts_with("ERROR:"))
            .collect();
        assert!(
            noise.is_empty(),
            "`bazel {}` warned:\n{}",
            self.args,
            noise.join("\n")
        );
        self
    }

    /// The `INFO: N processes: ...` line.
    fn summary_line(&self) -> &str {
        self.stderr
            .lines()
            .find(|l| l.starts_with("INFO: ") && l.contains(" processes: "))
            .unwrap_or_else(|| panic!("no process summary in:\n{}", self.stderr))
    }

    /// The process summary as kind -> count (`24 remote cache hit, 12 internal`); the parts
    /// add up to the total.
    pub(crate) fn processes(&self) -> BTreeMap<String, u64> {
        let line = self.summary_line();
        let (total, kinds) = line["INFO: ".len()..]
            .split_once(" processes: ")
            .unwrap_or_else(|| panic!("summary line: {line}"));
        let total: u64 = total.parse().unwrap_or_else(|_| panic!("total in {line}"));
        let mut counts = BTreeMap::new();
        for part in kinds.trim_end_matches('.').split(", ") {
            let (n, kind) = part
                .split_once(' ')
                .unwrap_or_else(|| panic!("`{part}` in {line}"));
            let n: u64 = n.parse().unwrap_or_else(|_| panic!("`{part}` in {line}"));
            *counts.entry(kind.to_owned()).or_default() += n;
        }
        assert_eq!(counts.values().sum::<u64>(), total, "{line}");
        counts
    }

    /// The per-target lines of the test summary, sorted by target.
    pub(crate) fn test_results(&self) -> Vec<TestResult> {
        let mut results: Vec<TestResult> = self
            .stdout
            .lines()
            .filter(|l| l.starts_with("//"))
            .map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                let cached = words.get(1) == Some(&"(cached)");
                let status = words.get(if cached { 2 } else { 1 }).copied();
                TestResult {
                    target: words[0].to_owned(),
                    cached,
                    status: status.unwrap_or_default().to_owned(),
                }
            })
            .collect();
        results.sort_by(|a, b| a.target.cmp(&b.target));
        results
    }

    /// Prints the summary lines and the wall time (`--nocapture` shows them).
    pub(crate) fn report(&self, what: &str) {
        let elapsed = self
            .stderr
            .lines()
            .find(|l| l.starts_with("INFO: Elapsed time:"))
            .unwrap_or("");
        let executed = self
            .stdout
            .lines()
            .find(|l| l.starts_with("Executed "))
            .unwrap_or("");
        println!(
            "bazel {what}: wall {:.1?}\n  {}\n  {elapsed}\n  {executed}",
            self.took,
            self.summary_line()
        );
    }
}

/// `bazel` on `PATH`, installed by `.ci/install-deps.sh` if missing; `None` (skip) outside CI
/// when that fails.
pub(crate) fn bazel_or_skip() -> Option<PathBuf> {
    if std::env::var("TESSERA_SKIP_BAZEL").is_ok_and(|v| v == "1") {
        println!("SKIP: TESSERA_SKIP_BAZEL=1");
        return None;
    }
    if let Some(bazel) = find_on_path("bazel") {
        return Some(bazel);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/install-deps.sh");
    println!("bazel not found: running {}", script.display());
    let status = Command::new("bash").arg(&script).status();
    if let Some(bazel) = find_on_path("bazel") {
        return Some(bazel);
    }
    assert!(
        !in_ci(),
        "bazel is required in CI, and {} did not install it ({status:?})",
        script.display()
    );
    println!(
        "SKIP: bazel (Debian's bazel-bootstrap) is not installed and {} failed ({status:?}); \
         run it as root to enable this test",
        script.display()
    );
    None
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Copies a directory tree, dotfiles, permissions and symlinks included.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&src, &dst);
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// `chmod u+w` on every directory under `dir` (symlinks not followed).
fn make_dirs_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = dir.symlink_metadata() else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o200 == 0 {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_dirs_writable(&entry.path());
        }
    }
}

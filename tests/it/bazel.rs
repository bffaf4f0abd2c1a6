//! Bazel as a real REAPI client: Debian's `bazel-bootstrap` (Bazel 4.2.3) builds and tests the
//! fixture workspace (`tests/fixtures/bazel/`) against a `tessera coordinator` process as its
//! `--remote_cache`. A run after `bazel clean`, and a run from a second checkout with its own
//! output base, must be answered entirely by the remote cache.
//!
//! Bazel is installed with `.ci/install-deps.sh` when missing; outside CI the test skips if that
//! fails (CI fails instead). `TESSERA_SKIP_BAZEL=1` skips it explicitly, like the installer.
//! Run with `--nocapture` to see Bazel's summary lines and the timings.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tessera_cas::client::CasClient;
use tessera_cas::digest::DigestFunction;
use tessera_tests::{ServerProcess, in_ci};

/// Size of the fixture's `//gen:big` output (`gen/big.bin`).
const BIG_SIZE: usize = 5 * 1024 * 1024;
/// Longest any single Bazel command may take before the test gives up on it.
const COMMAND_LIMIT: Duration = Duration::from_secs(240);

#[test]
fn remote_cache_answers_a_rebuild_after_clean_and_a_fresh_checkout() {
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

/// Every non-internal process of `run` was a remote cache hit, as many as the cold run had, and
/// every test result came from the cache and passed.
fn assert_all_cached(run: &Run, actions: u64, cold_tests: &[TestResult]) {
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

fn non_internal(counts: &BTreeMap<String, u64>) -> u64 {
    counts
        .iter()
        .filter(|(kind, _)| kind.as_str() != "internal")
        .map(|(_, n)| n)
        .sum()
}

/// A copy of the fixture with its own Bazel output base and home; its Bazel server is shut
/// down on drop.
struct Checkout {
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
    fn new(bazel: &Path, parent: &Path, name: &str) -> Self {
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
    fn run(&mut self, args: &[&str]) -> Run {
        self.commands += 1;
        let out = self.root.join(format!("cmd-{}.out", self.commands));
        let err = self.root.join(format!("cmd-{}.err", self.commands));
        let start = Instant::now();
        let mut child = self
            .command()
            .args(args)
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .expect("spawn bazel");
        self.running = true;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > COMMAND_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`bazel {}` took longer than {COMMAND_LIMIT:?}; stderr:\n{}",
                    args.join(" "),
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Run {
            args: args.join(" "),
            status,
            took: start.elapsed(),
            stdout: std::fs::read_to_string(&out).unwrap(),
            stderr: std::fs::read_to_string(&err).unwrap(),
        }
    }

    /// Like [`Checkout::run`], and the command must succeed without warnings or errors.
    fn run_ok(&mut self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert!(
            run.status.success(),
            "`bazel {}` failed: {}\nstdout:\n{}\nstderr:\n{}",
            run.args,
            run.status,
            run.stdout,
            run.stderr
        );
        let noise: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("WARNING:") || l.starts_with("ERROR:"))
            .collect();
        assert!(
            noise.is_empty(),
            "`bazel {}` warned:\n{}",
            run.args,
            noise.join("\n")
        );
        run
    }

    /// `bazel test //...` with the remote cache flag.
    fn test(&mut self, cache: &str) -> Run {
        self.run_ok(&["test", "//...", cache])
    }

    /// `bazel info bazel-bin`.
    fn bazel_bin(&mut self) -> PathBuf {
        PathBuf::from(self.run_ok(&["info", "bazel-bin"]).stdout.trim())
    }

    /// `bazel shutdown` (same directory and startup options as every command).
    fn shutdown(&mut self) {
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

/// One finished Bazel command.
struct Run {
    args: String,
    status: ExitStatus,
    took: Duration,
    stdout: String,
    stderr: String,
}

/// One line of Bazel's test summary, e.g. `//tests:pass_test   (cached) PASSED in 0.0s`.
#[derive(Debug)]
struct TestResult {
    target: String,
    cached: bool,
    status: String,
}

impl Run {
    /// The `INFO: N processes: ...` line.
    fn summary_line(&self) -> &str {
        self.stderr
            .lines()
            .find(|l| l.starts_with("INFO: ") && l.contains(" processes: "))
            .unwrap_or_else(|| panic!("no process summary in:\n{}", self.stderr))
    }

    /// The process summary as kind -> count (`24 remote cache hit, 12 internal`); the parts
    /// add up to the total.
    fn processes(&self) -> BTreeMap<String, u64> {
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
    fn test_results(&self) -> Vec<TestResult> {
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
    fn report(&self, what: &str) {
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
fn bazel_or_skip() -> Option<PathBuf> {
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

//! A suite run directly, as its project runs it, and what the tool reports test by test:
//! pytest through `--junitxml`, `cargo test` through libtest's text (doctests included, test
//! binaries named the way nextest and Tessera name them), `go test -json` through its events.
//! Also what the run shows of the features the suite is chosen for.
//!
//! Names, as Tessera's runners document them:
//!
//! | tool | group | name |
//! | --- | --- | --- |
//! | pytest | empty | the node id, relative to the rootdir |
//! | cargo | the binary id: `PKG` (lib), `PKG::TARGET` (integration test), `PKG::bin/NAME`, ...; doctests `PKG::doctest/CRATE` ([`doctest_group`]) | libtest's name (`tests::x`, `src/lib.rs - Item (line 12)`) |
//! | go | the package's import path | `TestX`, `TestX/case`, `ExampleY` |

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use super::catalogue::{Feature, Fetched, ORDER_FILE, ORDER_FIRST, ORDER_SECOND, Suite, Tool};
use super::compare::{Outcome, Outcomes, TestKey, build_failure_key};
use super::junit;

/// The longest a direct run may take (a cold cargo build included).
const DIRECT_LIMIT: Duration = Duration::from_secs(600);

/// The group Tessera reports a library's doctests under: `PACKAGE::doctest/CRATE`, the cargo
/// runner's documented choice (runners/src/cargo.rs; the `/` keeps it apart from a test
/// target named `doctest`).
pub fn doctest_group(package: &str, crate_name: &str) -> String {
    format!("{package}::doctest/{crate_name}")
}

/// How Go subtests (`TestX/case`) are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoSubtests {
    /// Each subtest is a test of its own on both sides, as `go test -json` reports it.
    Separate,
    /// Only top-level tests are compared (a parent fails when any subtest fails, as go
    /// reports it), for a runner that reports no subtests; the table counts those folded.
    FoldedIntoParent,
}

/// The granularity the comparison uses for Go: `go test -json`'s own, which the go runner
/// reports (runners/src/gotest.rs).
pub const GO_SUBTESTS: GoSubtests = GoSubtests::Separate;

/// What a direct run reported.
#[derive(Debug)]
pub struct DirectRun {
    /// Every test with its outcome (Go subtests as [`GO_SUBTESTS`] says).
    pub outcomes: Outcomes,
    /// Go subtests left out of `outcomes` because their parents stand for them.
    pub folded_subtests: usize,
    /// Go packages whose tests did not build.
    pub build_failures: BTreeSet<String>,
    /// How often the run showed each feature.
    pub evidence: BTreeMap<Feature, usize>,
    /// How the command ended.
    pub status: ExitStatus,
    /// Its combined output.
    pub log: PathBuf,
}

impl DirectRun {
    /// A run that ended with `status`, its output in `log`, before its tests are read.
    fn new(status: ExitStatus, log: PathBuf) -> Self {
        DirectRun {
            outcomes: Outcomes::new(),
            folded_subtests: 0,
            build_failures: BTreeSet::new(),
            evidence: BTreeMap::new(),
            status,
            log,
        }
    }
}

/// The variables every run gets, direct or through Tessera (which passes the documented ones
/// on to the agents): the same on both sides, and nothing of the test harness's own (cargo's
/// and nextest's variables for the test binary must not reach the suites).
pub fn common_env() -> BTreeMap<String, String> {
    const KEPT: &[&str] = &[
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
    ];
    KEPT.iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect()
}

/// Runs `argv` in `cwd` with exactly `env`, stdout to `stdout` and stderr to `stderr` (or
/// the same file), for at most `limit`.
pub fn run_logged(
    argv: &[String],
    cwd: &Path,
    env: &BTreeMap<String, String>,
    stdout: &Path,
    stderr: Option<&Path>,
    limit: Duration,
) -> Result<ExitStatus, String> {
    let out = File::create(stdout).map_err(|e| format!("create {}: {e}", stdout.display()))?;
    let err = match stderr {
        Some(path) => File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?,
        None => out
            .try_clone()
            .map_err(|e| format!("clone {}: {e}", stdout.display()))?,
    };
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    match crate::wait_exit(&mut child, limit) {
        Some(status) => Ok(status),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("`{}` ran longer than {limit:?}", argv.join(" ")))
        }
    }
}

/// Runs `suite`'s command directly in `dir` (its copy), logs under `scratch`.
pub fn run(
    suite: &Suite,
    fetched: &Fetched,
    dir: &Path,
    scratch: &Path,
) -> Result<DirectRun, String> {
    let mut env = common_env();
    env.extend(fetched.env.clone());
    let mut argv: Vec<String> = suite.command.iter().map(|s| (*s).to_owned()).collect();
    let log = scratch.join(format!("{}-direct.log", suite.name));
    match suite.tool {
        Tool::Pytest => {
            let report = scratch.join(format!("{}-direct.xml", suite.name));
            argv.push(format!("--junitxml={}", report.display()));
            let status = run_logged(&argv, dir, &env, &log, None, DIRECT_LIMIT)?;
            let xml = std::fs::read_to_string(&report).map_err(|e| {
                format!(
                    "pytest wrote no report ({e}); exit {status}; see {}",
                    log.display()
                )
            })?;
            let mut run = read_pytest(&xml, dir, status, log.clone())?;
            pytest_evidence(&mut run, suite, dir, &env, scratch)?;
            Ok(run)
        }
        Tool::Cargo => {
            let had_lock = dir.join("Cargo.lock").exists();
            // A target directory of this run's own, beside the copy: one shared between runs
            // from different copies once lost the library rlib under a doctest (`extern
            // location ... does not exist`), failing 13 of smallvec's doctests in CI.
            let target = dir.with_file_name(format!("{}-direct-target", suite.name));
            env.insert("CARGO_TARGET_DIR".to_owned(), target.display().to_string());
            let status = run_logged(&argv, dir, &env, &log, None, DIRECT_LIMIT)?;
            let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
            let metadata = cargo_metadata(dir, &env, scratch)?;
            let mut run = read_libtest(&text, &metadata, status, log.clone())?;
            if !had_lock && text.contains("Locking ") {
                run.evidence.insert(Feature::NoLockFile, 1);
            }
            let joins = workspace_path_joins(&metadata);
            if joins > 0 {
                run.evidence.insert(Feature::Workspace, joins);
            }
            Ok(run)
        }
        Tool::Go => {
            let stderr = scratch.join(format!("{}-direct.stderr", suite.name));
            let status = run_logged(&argv, dir, &env, &log, Some(&stderr), DIRECT_LIMIT)?;
            let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
            Ok(read_go_json(&text, status, log.clone()))
        }
    }
}

fn count(evidence: &mut BTreeMap<Feature, usize>, feature: Feature) {
    *evidence.entry(feature).or_default() += 1;
}

/// The worse of two outcomes of one test (pytest may write a case twice when its teardown
/// fails after its call).
fn worse(a: Outcome, b: Outcome) -> Outcome {
    let rank = |o: &Outcome| match o {
        Outcome::Pass => 0,
        Outcome::Skip => 1,
        Outcome::Error => 2,
        Outcome::Fail => 3,
        Outcome::Other(_) => 4,
    };
    if rank(&b) > rank(&a) { b } else { a }
}

/// Reads pytest's JUnit report into node ids and outcomes. `root` is pytest's rootdir (the
/// copy): the report's class name is the module's dotted path followed by the classes, and the
/// module is the longest prefix that is a file under it.
fn read_pytest(
    xml: &str,
    root: &Path,
    status: ExitStatus,
    log: PathBuf,
) -> Result<DirectRun, String> {
    let mut run = DirectRun::new(status, log);
    for case in junit::cases(xml)? {
        let id = node_id(root, &case.classname, &case.name);
        let outcome = if case.has("failure") {
            Outcome::Fail
        } else if case.has("error") {
            Outcome::Error
        } else if let Some(skip) = case.marks.iter().find(|m| m.tag == "skipped") {
            if skip.kind == "pytest.xfail" {
                count(&mut run.evidence, Feature::Xfail);
            } else {
                count(&mut run.evidence, Feature::Skips);
            }
            Outcome::Skip
        } else {
            Outcome::Pass
        };
        if outcome == Outcome::Fail {
            count(&mut run.evidence, Feature::Failures);
        }
        if id.contains('[') {
            count(&mut run.evidence, Feature::BracketedIds);
        }
        let key = TestKey::new("", id);
        let merged = match run.outcomes.remove(&key) {
            Some(before) => worse(before, outcome),
            None => outcome,
        };
        run.outcomes.insert(key, merged);
    }
    Ok(run)
}

/// pytest's node id for a JUnit case: pytest writes the id's `::` parts joined by dots, the
/// file part with `/` as dots and without `.py`. A part after an opening bracket is a
/// parameter id that held `::` itself: it is joined back with `::` (its dots are its own).
fn node_id(root: &Path, classname: &str, name: &str) -> String {
    if classname.is_empty() {
        // A collection error: pytest names the module, dotted.
        return format!("{}.py", name.replace('.', "/"));
    }
    let parts: Vec<&str> = classname.split('.').collect();
    let file_parts = (1..=parts.len())
        .rev()
        .find(|&n| {
            let mut path = root.to_path_buf();
            for part in &parts[..n] {
                path.push(part);
            }
            path.set_extension("py");
            path.is_file()
        })
        .unwrap_or(parts.len());
    let mut id = format!("{}.py", parts[..file_parts].join("/"));
    let rest = &parts[file_parts..];
    match rest.iter().position(|p| p.contains('[')) {
        Some(bracket) => {
            for class in &rest[..bracket] {
                id.push_str("::");
                id.push_str(class);
            }
            id.push_str("::");
            id.push_str(&rest[bracket..].join("."));
        }
        None => {
            for class in rest {
                id.push_str("::");
                id.push_str(class);
            }
        }
    }
    id.push_str("::");
    id.push_str(name);
    id
}

/// Evidence only pytest suites give: fixtures in a conftest.py, subtests in pytest's summary,
/// and the order-dependent pair (whose second test, run alone, must fail).
fn pytest_evidence(
    run: &mut DirectRun,
    suite: &Suite,
    dir: &Path,
    env: &BTreeMap<String, String>,
    scratch: &Path,
) -> Result<(), String> {
    let conftests = conftests_with_fixtures(dir);
    if conftests > 0 {
        run.evidence.insert(Feature::ConftestFixtures, conftests);
    }
    // pytest's summary counts subtests only at some verbosities: the sources say it surely.
    let subtests = count_in_python_files(dir, ".subTest(");
    if subtests > 0 {
        run.evidence.insert(Feature::Subtests, subtests);
    }
    if dir.join(ORDER_FILE).exists() {
        let both_passed = [ORDER_FIRST, ORDER_SECOND]
            .iter()
            .all(|id| run.outcomes.get(&TestKey::new("", *id)) == Some(&Outcome::Pass));
        let mut alone: Vec<String> = suite.command.iter().map(|s| (*s).to_owned()).collect();
        alone.push(ORDER_SECOND.to_owned());
        let log = scratch.join(format!("{}-order-alone.log", suite.name));
        let status = run_logged(&alone, dir, env, &log, None, DIRECT_LIMIT)?;
        if both_passed && !status.success() {
            run.evidence.insert(Feature::OrderDependentPair, 1);
        }
    }
    Ok(())
}

fn conftests_with_fixtures(dir: &Path) -> usize {
    python_files(dir)
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "conftest.py"))
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("@pytest.fixture")))
        .count()
}

/// How often `needle` occurs in the `.py` files under `dir`.
fn count_in_python_files(dir: &Path, needle: &str) -> usize {
    python_files(dir)
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| t.matches(needle).count())
        .sum()
}

fn python_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                python_files(&path)
            } else if path.extension().is_some_and(|e| e == "py") {
                vec![path]
            } else {
                Vec::new()
            }
        })
        .collect()
}

/// `cargo metadata --no-deps` of the workspace at `dir`.
fn cargo_metadata(
    dir: &Path,
    env: &BTreeMap<String, String>,
    scratch: &Path,
) -> Result<serde_json::Value, String> {
    let out = scratch.join("cargo-metadata.json");
    let err = scratch.join("cargo-metadata.stderr");
    let argv: Vec<String> = ["cargo", "metadata", "--no-deps", "--format-version", "1"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let status = run_logged(&argv, dir, env, &out, Some(&err), Duration::from_secs(120))?;
    if !status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        ));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("cargo metadata: {e}"))
}

/// How many workspace members depend on another member by path.
fn workspace_path_joins(metadata: &serde_json::Value) -> usize {
    let packages = metadata["packages"].as_array().cloned().unwrap_or_default();
    let names: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    packages
        .iter()
        .filter(|p| {
            p["dependencies"].as_array().is_some_and(|deps| {
                deps.iter().any(|d| {
                    d["path"].is_string() && d["name"].as_str().is_some_and(|n| names.contains(n))
                })
            })
        })
        .count()
}

/// The binary id of the test binary cargo announces as `Running SRC (BINARY)`: the target
/// whose source is SRC and whose name is the binary's file name less its hash.
fn binary_id(metadata: &serde_json::Value, src: &str, binary: &str) -> Option<String> {
    let file = Path::new(binary)
        .file_name()?
        .to_string_lossy()
        .into_owned();
    let stem = file.rsplit_once('-').map_or(file.as_str(), |(s, _)| s);
    for package in metadata["packages"].as_array()? {
        let package_name = package["name"].as_str()?;
        for target in package["targets"].as_array()? {
            let name = target["name"].as_str()?;
            let path = target["src_path"].as_str()?;
            if name.replace('-', "_") != stem || !path.ends_with(&format!("/{src}")) {
                continue;
            }
            let kinds: Vec<&str> = target["kind"]
                .as_array()?
                .iter()
                .filter_map(|k| k.as_str())
                .collect();
            return Some(match kinds.first().copied() {
                Some("bin") => format!("{package_name}::bin/{name}"),
                Some("test") => format!("{package_name}::{name}"),
                Some("example") => format!("{package_name}::example/{name}"),
                Some("bench") => format!("{package_name}::bench/{name}"),
                _ => package_name.to_owned(),
            });
        }
    }
    None
}

/// The package whose library crate is `crate_name` (as `Doc-tests NAME` says it).
fn package_of_lib(metadata: &serde_json::Value, crate_name: &str) -> Option<String> {
    metadata["packages"].as_array()?.iter().find_map(|package| {
        let has_it = package["targets"].as_array()?.iter().any(|t| {
            t["name"].as_str().map(|n| n.replace('-', "_")) == Some(crate_name.to_owned())
                && t["kind"].as_array().is_some_and(|k| {
                    k.iter()
                        .any(|k| matches!(k.as_str(), Some("lib" | "rlib" | "proc-macro")))
                })
        });
        has_it.then(|| package["name"].as_str().map(str::to_owned))?
    })
}

/// Reads `cargo test`'s combined output: `Running SRC (BINARY)` and `Doc-tests CRATE` open a
/// group, `test NAME[ - MODE] ... RESULT` is a test. MODE is libtest's `should panic`,
/// `compile fail` or `compile` (no_run); RESULT `ok`, `FAILED` or `ignored[, reason]`.
fn read_libtest(
    text: &str,
    metadata: &serde_json::Value,
    status: ExitStatus,
    log: PathBuf,
) -> Result<DirectRun, String> {
    let mut run = DirectRun::new(status, log);
    let mut group: Option<(String, bool)> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("Running ") {
            let Some((src, binary)) = rest.rsplit_once(" (") else {
                continue;
            };
            let src = src.strip_prefix("unittests ").unwrap_or(src);
            let binary = binary.trim_end_matches(')');
            let id = binary_id(metadata, src, binary)
                .ok_or_else(|| format!("no target in cargo metadata for `{trimmed}`"))?;
            group = Some((id, false));
            continue;
        }
        if let Some(crate_name) = trimmed.strip_prefix("Doc-tests ") {
            let package = package_of_lib(metadata, crate_name)
                .ok_or_else(|| format!("no library `{crate_name}` in cargo metadata"))?;
            group = Some((doctest_group(&package, crate_name), true));
            continue;
        }
        let Some(rest) = line.strip_prefix("test ") else {
            continue;
        };
        let Some((name, result)) = rest.rsplit_once(" ... ") else {
            continue;
        };
        let Some((group, doctests)) = &group else {
            return Err(format!("a test line before any test binary: `{line}`"));
        };
        let mut name = name.trim_end();
        for (mode, feature) in [
            (" - should panic", Some(Feature::ShouldPanic)),
            (" - compile fail", None),
            (" - compile", None),
        ] {
            if let Some(bare) = name.strip_suffix(mode) {
                name = bare;
                if let Some(feature) = feature {
                    count(&mut run.evidence, feature);
                }
                break;
            }
        }
        let outcome = match result.trim() {
            "ok" => Outcome::Pass,
            "FAILED" => Outcome::Fail,
            r if r.starts_with("ignored") => Outcome::Skip,
            other => return Err(format!("libtest result `{other}` in `{line}`")),
        };
        match outcome {
            Outcome::Skip => count(&mut run.evidence, Feature::Skips),
            Outcome::Fail => count(&mut run.evidence, Feature::Failures),
            _ => {}
        }
        if *doctests {
            count(&mut run.evidence, Feature::Doctests);
        }
        run.outcomes
            .insert(TestKey::new(group.clone(), name), outcome);
    }
    Ok(run)
}

/// Reads `go test -json`: each test's last `pass`/`fail`/`skip` (a test that started and
/// never ended failed: its binary died); `FAIL PKG [build failed]` (printed as text by go
/// 1.19, as an output event by later versions) is a build failure of PKG.
fn read_go_json(text: &str, status: ExitStatus, log: PathBuf) -> DirectRun {
    let mut run = DirectRun::new(status, log);
    let build_failed = |line: &str| -> Option<String> {
        let rest = line.trim_end().strip_prefix("FAIL\t")?;
        let (package, why) = rest.split_once(' ')?;
        matches!(why, "[build failed]" | "[setup failed]").then(|| package.to_owned())
    };
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            if let Some(package) = build_failed(line) {
                run.build_failures.insert(package);
            }
            continue;
        };
        let package = event["Package"].as_str().unwrap_or_default();
        let action = event["Action"].as_str().unwrap_or_default();
        let Some(test) = event["Test"].as_str() else {
            if action == "output"
                && let Some(package) = event["Output"].as_str().and_then(build_failed)
            {
                run.build_failures.insert(package);
            }
            continue;
        };
        let key = TestKey::new(package, test);
        let outcome = match action {
            "run" => Outcome::Fail,
            "pass" => Outcome::Pass,
            "fail" => Outcome::Fail,
            "skip" => Outcome::Skip,
            _ => continue,
        };
        if action == "run" {
            run.outcomes.entry(key).or_insert(outcome);
        } else {
            run.outcomes.insert(key, outcome);
        }
    }
    for (key, outcome) in &run.outcomes {
        if key.name.contains('/') {
            count(&mut run.evidence, Feature::Subtests);
        }
        if key.name.starts_with("Example") {
            count(&mut run.evidence, Feature::Examples);
        }
        match outcome {
            Outcome::Fail => count(&mut run.evidence, Feature::Failures),
            Outcome::Skip => count(&mut run.evidence, Feature::Skips),
            _ => {}
        }
    }
    if GO_SUBTESTS == GoSubtests::FoldedIntoParent {
        let before = run.outcomes.len();
        run.outcomes.retain(|key, _| !key.name.contains('/'));
        run.folded_subtests = before - run.outcomes.len();
    }
    for package in &run.build_failures {
        run.outcomes
            .insert(build_failure_key(package), Outcome::Error);
        count(&mut run.evidence, Feature::BuildFailure);
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pytest_class_name_is_split_where_the_module_file_ends() {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(root.path().join("tests")).expect("mkdir");
        std::fs::write(root.path().join("tests/test_more.py"), "").expect("write");
        let id = |classname: &str, name: &str| node_id(root.path(), classname, name);
        assert_eq!(
            id("tests.test_more", "test_x[a.b-c]"),
            "tests/test_more.py::test_x[a.b-c]"
        );
        assert_eq!(
            id("tests.test_more.ChunkedTests", "test_even"),
            "tests/test_more.py::ChunkedTests::test_even"
        );
        // `test_x[a::b.c]` reaches the report as class `...test_x[a`, name `b.c]`.
        assert_eq!(
            id("tests.test_more.Outer.test_x[a", "b.c]"),
            "tests/test_more.py::Outer::test_x[a::b.c]"
        );
        assert_eq!(id("", "tests.test_bad"), "tests/test_bad.py");
    }

    #[test]
    fn libtest_lines_become_tests_of_their_binary_with_modes_stripped() {
        let metadata = serde_json::json!({"packages": [{
            "name": "smallvec",
            "targets": [
                {"name": "smallvec", "kind": ["lib"], "src_path": "/x/smallvec/src/lib.rs"},
                {"name": "macros", "kind": ["test"], "src_path": "/x/smallvec/tests/macros.rs"},
            ],
            "dependencies": [],
        }]});
        let text = "\
     Running unittests src/lib.rs (target/debug/deps/smallvec-50a251d19b78c036)
test tests::drain_overflow - should panic ... ok
test tests::grow ... FAILED
     Running tests/macros.rs (target/debug/deps/macros-0123)
test smoke ... ignored, requires nightly
test result: ok. 0 passed; 0 failed; 1 ignored
   Doc-tests smallvec
test src/lib.rs - SmallVec<A>::new (line 12) ... ok
test src/lib.rs - SmallVec<A>::bad (line 20) - compile fail ... ok
";
        let status = Command::new("true").status().expect("true runs");
        let run = read_libtest(text, &metadata, status, PathBuf::new()).expect("parses");
        let got: Vec<(String, Outcome)> = run
            .outcomes
            .iter()
            .map(|(k, o)| (k.to_string(), o.clone()))
            .collect();
        let want = |k: &str, o: Outcome| (k.to_owned(), o);
        assert_eq!(
            got,
            [
                want("smallvec tests::drain_overflow", Outcome::Pass),
                want("smallvec tests::grow", Outcome::Fail),
                want(
                    "smallvec::doctest/smallvec src/lib.rs - SmallVec<A>::bad (line 20)",
                    Outcome::Pass
                ),
                want(
                    "smallvec::doctest/smallvec src/lib.rs - SmallVec<A>::new (line 12)",
                    Outcome::Pass
                ),
                want("smallvec::macros smoke", Outcome::Skip),
            ]
        );
        assert_eq!(run.evidence.get(&Feature::ShouldPanic), Some(&1));
        assert_eq!(run.evidence.get(&Feature::Doctests), Some(&2));
    }

    #[test]
    fn go_json_gives_tests_subtests_and_packages_that_did_not_build() {
        let text = r#"{"Action":"run","Package":"m/a","Test":"TestX"}
{"Action":"run","Package":"m/a","Test":"TestX/case_1"}
{"Action":"pass","Package":"m/a","Test":"TestX/case_1"}
{"Action":"fail","Package":"m/a","Test":"TestX"}
{"Action":"run","Package":"m/a","Test":"TestDies"}
{"Action":"skip","Package":"m/a","Test":"ExampleY"}
FAIL	m/b [build failed]
"#;
        let status = Command::new("true").status().expect("true runs");
        let run = read_go_json(text, status, PathBuf::new());
        let got: Vec<String> = run
            .outcomes
            .iter()
            .map(|(k, o)| format!("{k}={o}"))
            .collect();
        assert_eq!(
            got,
            [
                "m/a ExampleY=skip",
                "m/a TestDies=fail",
                "m/a TestX=fail",
                "m/a TestX/case_1=pass",
                "m/b [build failed]=error",
            ]
        );
        assert_eq!(run.folded_subtests, 0);
        assert_eq!(run.build_failures, BTreeSet::from(["m/b".to_owned()]));
        assert_eq!(run.evidence.get(&Feature::Subtests), Some(&1));
    }
}

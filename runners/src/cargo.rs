//! The cargo runner: Rust tests through libtest, the standard test harness, without nextest.
//!
//! - **prepare**: `cargo test --no-run --message-format=json-render-diagnostics`, once; the
//!   `compiler-artifact` messages with `profile.test` and an `executable` name the test
//!   binaries, which [`CargoTestRunner::parse_prepare`] records as [`TestBinary`]s. Binaries are
//!   named by nextest's binary ids (`crate`, `crate::integration`, `crate::bin/name`), so this
//!   runner and [`crate::NextestRunner`] give the same tests the same [`TestId`]s.
//! - **list**: one `sh -c` loop asks every binary for `--list --format terse` (`name: test`
//!   lines), with a marker line before each binary. Ignored tests are listed too; running one
//!   reports [`Outcome::Skipped`], as `cargo test` does.
//! - **run**: `<binary> --exact NAME --show-output` in the package directory, with the
//!   `CARGO_MANIFEST_DIR`/`CARGO_PKG_*` variables cargo would set. Stable libtest cannot time a
//!   test, so [`Batching::PerTest`]: the caller runs each test as its own process and the
//!   process's wall-clock time is the test's duration (what nextest does too). Several tests of
//!   one binary may still share a command when durations do not matter.
//! - **results**: libtest's `test NAME ... ok|FAILED|ignored` lines, and the `---- NAME stdout
//!   ----` sections `--show-output` prints for each test. A single-test process that dies without
//!   reporting (abort, signal) failed.
//!
//! Not supported: doctests (they have no binary to list), and `harness = false` targets that do
//! not accept libtest's `--list`/`--exact` arguments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    Batching, CommandOutput, CommandSpec, Outcome, Prepared, RunInvocation, Runner, RunnerError,
    Termination, TestId, TestResult, check_prepare, list_failed, unreported,
};

/// Runs `cargo test` binaries, one test per process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CargoTestRunner {
    /// Where to run cargo: the workspace or package root.
    pub dir: PathBuf,
    /// Extra arguments for `cargo test --no-run`: package and target selection, features,
    /// `--release`, `--target-dir`.
    #[serde(default)]
    pub cargo_args: Vec<String>,
    /// Variables for every command (build and tests).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// A test executable built by the prepare step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestBinary {
    /// nextest's binary id: `crate` for a library, `crate::name` for an integration test,
    /// `crate::bin/name`, `crate::example/name`, `crate::bench/name` otherwise.
    pub id: String,
    /// Absolute path of the executable.
    pub executable: PathBuf,
    /// The package directory, where cargo runs the binary.
    pub cwd: PathBuf,
    /// The package's name.
    pub package_name: String,
    /// The package's version.
    pub package_version: String,
}

impl CargoTestRunner {
    /// These settings without those that only select tests, for cache keys (see
    /// [`crate::RunnerConfig::key_settings`]).
    pub fn without_selection(&self) -> Self {
        self.clone()
    }

    /// Runs cargo in `dir` with no extra arguments.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            cargo_args: Vec::new(),
            env: BTreeMap::new(),
        }
    }

    /// Adds arguments for `cargo test --no-run`.
    pub fn cargo_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cargo_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets a variable for every command.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }
}

/// Marks the start of each binary's list in the list command's output.
const BINARY_MARKER: &str = "#tessera-test-binary ";

/// Lists every binary given as an argument, each after a marker line with its position.
const LIST_SCRIPT: &str = r##"i=0
for bin do
  echo "#tessera-test-binary $i"
  "$bin" --list --format terse || exit
  i=$((i + 1))
done"##;

impl Runner for CargoTestRunner {
    fn name(&self) -> &'static str {
        "cargo"
    }

    fn prepare_command(&self) -> Option<CommandSpec> {
        Some(
            CommandSpec::new("cargo")
                .args([
                    "test",
                    "--no-run",
                    "--message-format=json-render-diagnostics",
                ])
                .args(self.cargo_args.iter().cloned())
                .envs(&self.env)
                .cwd(&self.dir),
        )
    }

    fn parse_prepare(&self, output: &CommandOutput) -> Result<Prepared, RunnerError> {
        check_prepare(output)?;
        let mut test_binaries: Vec<TestBinary> = Vec::new();
        let mut files: Vec<PathBuf> = Vec::new();
        for line in output.stdout.lines().filter(|l| l.starts_with('{')) {
            let message: Artifact =
                serde_json::from_str(line).map_err(|e| RunnerError::UnexpectedOutput {
                    tool: "cargo",
                    detail: format!("bad JSON message ({e}): {line}"),
                })?;
            // Every executable is kept, not only test binaries: integration tests run the
            // crate's binaries (`CARGO_BIN_EXE_<name>`).
            if let Some(executable) = &message.executable
                && !files.contains(executable)
            {
                files.push(executable.clone());
            }
            if let Some(binary) = message.test_binary()? {
                // A binary built twice (say for two profiles) is listed once.
                if !test_binaries.iter().any(|b| b.id == binary.id) {
                    test_binaries.push(binary);
                }
            }
        }
        let dirs = target_tmp_dirs(&test_binaries);
        Ok(Prepared {
            test_binaries,
            files,
            dirs,
        })
    }

    fn list_command(&self, prepared: &Prepared) -> CommandSpec {
        CommandSpec::new("sh")
            .args(["-c", LIST_SCRIPT, "tessera-list"])
            .args(
                prepared
                    .test_binaries
                    .iter()
                    .map(|b| b.executable.display().to_string()),
            )
            .envs(&self.env)
            .cwd(&self.dir)
    }

    fn parse_list(
        &self,
        prepared: &Prepared,
        output: &CommandOutput,
    ) -> Result<Vec<TestId>, RunnerError> {
        if !output.termination.success() {
            return Err(list_failed(output));
        }
        let mut tests = Vec::new();
        let mut binary: Option<&TestBinary> = None;
        for line in output.stdout.lines() {
            if let Some(index) = line.strip_prefix(BINARY_MARKER) {
                binary = index
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| prepared.test_binaries.get(i));
                if binary.is_none() {
                    return Err(RunnerError::UnexpectedOutput {
                        tool: "sh",
                        detail: format!("marker for an unknown binary: {line}"),
                    });
                }
            } else if let Some(name) = line.strip_suffix(": test") {
                let Some(binary) = binary else {
                    return Err(RunnerError::UnexpectedOutput {
                        tool: "libtest",
                        detail: format!("test listed before any binary: {line}"),
                    });
                };
                tests.push(TestId::new(&binary.id, name));
            }
            // `name: bench` lines (nightly benchmarks) and anything else are not tests to run.
        }
        Ok(tests)
    }

    fn batching(&self) -> Batching {
        Batching::PerTest
    }

    fn run_command(
        &self,
        prepared: &Prepared,
        tests: &[TestId],
        _scratch: &Path,
    ) -> Result<RunInvocation, RunnerError> {
        let binary = binary_for(prepared, tests)?;
        let command = CommandSpec::new(binary.executable.display().to_string())
            .args(["--exact", "--show-output", "--color", "never"])
            .args(tests.iter().map(|t| t.name.clone()))
            .env("CARGO_MANIFEST_DIR", binary.cwd.display().to_string())
            .env("CARGO_PKG_NAME", &binary.package_name)
            .env("CARGO_PKG_VERSION", &binary.package_version)
            .envs(&self.env)
            .cwd(&binary.cwd);
        Ok(RunInvocation {
            command,
            files: Vec::new(),
        })
    }

    fn parse_results(
        &self,
        _prepared: &Prepared,
        tests: &[TestId],
        output: &CommandOutput,
        _scratch: &Path,
    ) -> Result<Vec<TestResult>, RunnerError> {
        let report = LibtestReport::parse(&output.stdout);
        let single = tests.len() == 1;
        let results = tests
            .iter()
            .map(|id| {
                let reported = report.outcomes.get(id.name.as_str()).copied();
                let outcome = match reported {
                    Some(outcome) => outcome,
                    None if output.termination == Termination::TimedOut => Outcome::TimedOut,
                    // Its own process died before libtest could report: the test crashed it.
                    None if single && !output.termination.success() => Outcome::Failed,
                    None => return unreported(id, output, "libtest did not report this test"),
                };
                TestResult {
                    id: id.clone(),
                    outcome,
                    duration: single.then_some(output.elapsed),
                    output: if single {
                        output.combined()
                    } else {
                        report
                            .sections
                            .get(id.name.as_str())
                            .cloned()
                            .unwrap_or_default()
                    },
                }
            })
            .collect();
        Ok(results)
    }
}

/// The binary all of `tests` live in.
fn binary_for<'p>(prepared: &'p Prepared, tests: &[TestId]) -> Result<&'p TestBinary, RunnerError> {
    let first = tests.first().ok_or(RunnerError::EmptyBatch)?;
    Batching::PerGroup.check("cargo", tests)?;
    prepared
        .test_binaries
        .iter()
        .find(|b| b.id == first.group)
        .ok_or_else(|| RunnerError::UnknownGroup {
            group: first.group.clone(),
        })
}

/// What libtest's human output says about each test.
#[derive(Debug, Default)]
struct LibtestReport<'a> {
    outcomes: BTreeMap<&'a str, Outcome>,
    /// Captured output per test, from the `---- NAME stdout ----` sections.
    sections: BTreeMap<&'a str, String>,
}

impl<'a> LibtestReport<'a> {
    fn parse(stdout: &'a str) -> Self {
        let mut report = Self::default();
        let mut section: Option<&'a str> = None;
        for line in stdout.lines() {
            if let Some(name) = line
                .strip_prefix("---- ")
                .and_then(|rest| rest.strip_suffix(" stdout ----"))
            {
                section = Some(name);
                report.sections.entry(name).or_default();
                continue;
            }
            if line == "successes:" || line == "failures:" {
                section = None;
                continue;
            }
            if let Some(name) = section {
                let text = report.sections.entry(name).or_default();
                text.push_str(line);
                text.push('\n');
                continue;
            }
            if let Some((name, status)) = line
                .strip_prefix("test ")
                .and_then(|rest| rest.split_once(" ... "))
            {
                let outcome = if status.starts_with("ok") {
                    Outcome::Passed
                } else if status.starts_with("FAILED") {
                    Outcome::Failed
                } else if status.starts_with("ignored") {
                    Outcome::Skipped
                } else {
                    continue;
                };
                report.outcomes.insert(name, outcome);
            }
        }
        report
    }
}

/// The parts of a cargo JSON message this runner reads.
#[derive(Deserialize)]
struct Artifact {
    reason: String,
    #[serde(default)]
    package_id: String,
    #[serde(default)]
    manifest_path: PathBuf,
    target: Option<ArtifactTarget>,
    profile: Option<ArtifactProfile>,
    executable: Option<PathBuf>,
}

#[derive(Deserialize)]
struct ArtifactTarget {
    kind: Vec<String>,
    name: String,
}

#[derive(Deserialize)]
struct ArtifactProfile {
    test: bool,
}

impl Artifact {
    fn test_binary(self) -> Result<Option<TestBinary>, RunnerError> {
        let (Some(target), Some(profile), Some(executable)) =
            (self.target, self.profile, self.executable)
        else {
            return Ok(None);
        };
        if self.reason != "compiler-artifact" || !profile.test {
            return Ok(None);
        }
        let (package_name, package_version) =
            parse_package_id(&self.package_id).ok_or_else(|| RunnerError::UnexpectedOutput {
                tool: "cargo",
                detail: format!("unrecognized package id {:?}", self.package_id),
            })?;
        let kind = target.kind.first().map(String::as_str).unwrap_or("lib");
        let id = match kind {
            "lib" | "rlib" | "dylib" | "cdylib" | "staticlib" | "proc-macro" => {
                package_name.clone()
            }
            "test" => format!("{package_name}::{}", target.name),
            other => format!("{package_name}::{other}/{}", target.name),
        };
        let cwd = self
            .manifest_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Ok(Some(TestBinary {
            id,
            executable,
            cwd,
            package_name,
            package_version,
        }))
    }
}

/// `CARGO_TARGET_TMPDIR` (`<target dir>/tmp`), which cargo creates at build time and test
/// binaries embed, worked out from where the test binaries are: `<target dir>[/<triple>]/
/// <profile>/deps/<binary>`. With a target triple both candidates are kept.
fn target_tmp_dirs(binaries: &[TestBinary]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for binary in binaries {
        let Some(base) = binary
            .executable
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
        else {
            continue;
        };
        let mut candidates = vec![base.join("tmp")];
        let looks_like_triple = base
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.matches('-').count() >= 2);
        if looks_like_triple && let Some(parent) = base.parent() {
            candidates.push(parent.join("tmp"));
        }
        for dir in candidates {
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// Name and version from a cargo package id, in either of its forms: the package id spec of
/// cargo 1.77 and later (`path+file:///src/foo#0.1.0`, `registry+https://...#serde@1.0.0`, where
/// the name is left out when it equals the last path segment) or the older
/// `foo 0.1.0 (path+file:///src/foo)`.
fn parse_package_id(id: &str) -> Option<(String, String)> {
    if let Some((url, fragment)) = id.rsplit_once('#') {
        if let Some((name, version)) = fragment.split_once('@') {
            return Some((name.to_owned(), version.to_owned()));
        }
        let path = url.split(['?', '#']).next()?.trim_end_matches('/');
        let name = path.rsplit('/').next().filter(|n| !n.is_empty())?;
        return Some((name.to_owned(), fragment.to_owned()));
    }
    let mut parts = id.split(' ');
    let name = parts.next().filter(|n| !n.is_empty())?;
    let version = parts.next()?;
    Some((name.to_owned(), version.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn output(termination: Termination, stdout: &str) -> CommandOutput {
        CommandOutput {
            termination,
            stdout: stdout.to_owned(),
            stderr: String::new(),
            elapsed: Duration::from_millis(120),
        }
    }

    fn prepared() -> Prepared {
        Prepared {
            test_binaries: vec![
                TestBinary {
                    id: "demo".into(),
                    executable: "/t/debug/deps/demo-1".into(),
                    cwd: "/src/demo".into(),
                    package_name: "demo".into(),
                    package_version: "0.1.0".into(),
                },
                TestBinary {
                    id: "demo::it".into(),
                    executable: "/t/debug/deps/it-2".into(),
                    cwd: "/src/demo".into(),
                    package_name: "demo".into(),
                    package_version: "0.1.0".into(),
                },
            ],
            files: vec!["/t/debug/deps/demo-1".into(), "/t/debug/deps/it-2".into()],
            dirs: vec!["/t/tmp".into()],
        }
    }

    #[test]
    fn package_ids_of_both_forms() {
        let parse = |s| parse_package_id(s).unwrap();
        assert_eq!(
            parse("path+file:///src/my-crate#0.1.0"),
            ("my-crate".into(), "0.1.0".into())
        );
        assert_eq!(
            parse("path+file:///src/dir#other@0.2.0"),
            ("other".into(), "0.2.0".into())
        );
        assert_eq!(
            parse("registry+https://github.com/rust-lang/crates.io-index#serde@1.0.0"),
            ("serde".into(), "1.0.0".into())
        );
        assert_eq!(
            parse("my-crate 0.1.0 (path+file:///src/my-crate)"),
            ("my-crate".into(), "0.1.0".into())
        );
    }

    #[test]
    fn prepare_names_binaries_like_nextest() {
        let stdout = [
            r#"{"reason":"compiler-artifact","package_id":"path+file:///src/demo#0.1.0","manifest_path":"/src/demo/Cargo.toml","target":{"kind":["lib"],"name":"demo"},"profile":{"test":false},"executable":null}"#,
            r#"{"reason":"compiler-artifact","package_id":"path+file:///src/demo#0.1.0","manifest_path":"/src/demo/Cargo.toml","target":{"kind":["lib"],"name":"demo"},"profile":{"test":true},"executable":"/t/demo-1"}"#,
            r#"{"reason":"compiler-artifact","package_id":"path+file:///src/demo#0.1.0","manifest_path":"/src/demo/Cargo.toml","target":{"kind":["test"],"name":"it"},"profile":{"test":true},"executable":"/t/it-2"}"#,
            r#"{"reason":"compiler-artifact","package_id":"path+file:///src/demo#0.1.0","manifest_path":"/src/demo/Cargo.toml","target":{"kind":["bin"],"name":"tool"},"profile":{"test":true},"executable":"/t/tool-3"}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        let runner = CargoTestRunner::new("/src/demo");
        let prepared = runner
            .parse_prepare(&output(Termination::Exited(0), &stdout))
            .unwrap();
        let ids: Vec<&str> = prepared
            .test_binaries
            .iter()
            .map(|b| b.id.as_str())
            .collect();
        assert_eq!(ids, ["demo", "demo::it", "demo::bin/tool"]);
        assert_eq!(prepared.test_binaries[0].cwd, PathBuf::from("/src/demo"));
        assert!(
            prepared.dirs.is_empty(),
            "binaries directly under / have no target dir"
        );
        // Every executable travels to the later steps, the crate's binaries included.
        assert_eq!(
            prepared.files,
            ["/t/demo-1", "/t/it-2", "/t/tool-3"].map(PathBuf::from)
        );
    }

    #[test]
    fn failed_build_is_a_prepare_error() {
        let runner = CargoTestRunner::new("/src/demo");
        let err = runner
            .parse_prepare(&output(Termination::Exited(101), "error[E0425]"))
            .unwrap_err();
        assert!(matches!(err, RunnerError::PrepareFailed { .. }), "{err}");
    }

    #[test]
    fn list_attributes_tests_to_binaries() {
        let stdout = "#tessera-test-binary 0\ntests::a: test\ntests::b: test\nbench_x: bench\n\
                      #tessera-test-binary 1\na: test\n";
        let runner = CargoTestRunner::new("/src/demo");
        let tests = runner
            .parse_list(&prepared(), &output(Termination::Exited(0), stdout))
            .unwrap();
        assert_eq!(
            tests,
            vec![
                TestId::new("demo", "tests::a"),
                TestId::new("demo", "tests::b"),
                TestId::new("demo::it", "a"),
            ]
        );
    }

    #[test]
    fn run_uses_the_binary_of_the_tests() {
        let runner = CargoTestRunner::new("/src/demo");
        let run = runner
            .run_command(
                &prepared(),
                &[TestId::new("demo::it", "a")],
                Path::new("/s"),
            )
            .unwrap();
        assert_eq!(
            run.command.argv,
            [
                "/t/debug/deps/it-2",
                "--exact",
                "--show-output",
                "--color",
                "never",
                "a"
            ]
        );
        assert_eq!(run.command.cwd.as_deref(), Some(Path::new("/src/demo")));
        assert_eq!(run.command.env["CARGO_PKG_NAME"], "demo");
        let mixed = [TestId::new("demo", "x"), TestId::new("demo::it", "a")];
        assert!(matches!(
            runner.run_command(&prepared(), &mixed, Path::new("/s")),
            Err(RunnerError::BatchTooWide { .. })
        ));
        assert!(matches!(
            runner.run_command(&prepared(), &[TestId::new("nope", "a")], Path::new("/s")),
            Err(RunnerError::UnknownGroup { .. })
        ));
    }

    const TWO_TESTS: &str = "\nrunning 3 tests\ntest t::ign ... ignored, later\ntest t::a ... ok\n\
        test t::b ... FAILED\n\nsuccesses:\n\n---- t::a stdout ----\nhello a\n\n\nsuccesses:\n    t::a\n\n\
        failures:\n\n---- t::b stdout ----\nthread 't::b' panicked\n\nfailures:\n    t::b\n\n\
        test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out\n";

    #[test]
    fn results_of_several_tests_come_from_the_lines_and_sections() {
        let runner = CargoTestRunner::new("/src/demo");
        let tests = ["t::a", "t::b", "t::ign", "t::gone"].map(|n| TestId::new("demo", n));
        let results = runner
            .parse_results(
                &prepared(),
                &tests,
                &output(Termination::Exited(101), TWO_TESTS),
                Path::new("/s"),
            )
            .unwrap();
        let outcomes: Vec<Outcome> = results.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Passed,
                Outcome::Failed,
                Outcome::Skipped,
                Outcome::NoResult
            ]
        );
        assert_eq!(results[0].output.trim(), "hello a");
        assert!(results[1].output.contains("panicked"));
        assert_eq!(results[0].duration, None);
    }

    #[test]
    fn a_single_test_is_timed_by_its_process() {
        let runner = CargoTestRunner::new("/src/demo");
        let test = [TestId::new("demo", "t::a")];
        let results = runner
            .parse_results(
                &prepared(),
                &test,
                &output(Termination::Exited(0), TWO_TESTS),
                Path::new("/s"),
            )
            .unwrap();
        assert_eq!(results[0].outcome, Outcome::Passed);
        assert_eq!(results[0].duration, Some(Duration::from_millis(120)));
    }

    #[test]
    fn a_single_test_that_kills_its_process_failed() {
        let runner = CargoTestRunner::new("/src/demo");
        let test = [TestId::new("demo", "t::crash")];
        let crashed = output(Termination::Signaled(6), "\nrunning 1 test\n");
        let results = runner
            .parse_results(&prepared(), &test, &crashed, Path::new("/s"))
            .unwrap();
        assert_eq!(results[0].outcome, Outcome::Failed);
        let timed_out = output(Termination::TimedOut, "\nrunning 1 test\n");
        let results = runner
            .parse_results(&prepared(), &test, &timed_out, Path::new("/s"))
            .unwrap();
        assert_eq!(results[0].outcome, Outcome::TimedOut);
        let not_found = output(Termination::Exited(0), "\nrunning 0 tests\n");
        let results = runner
            .parse_results(&prepared(), &test, &not_found, Path::new("/s"))
            .unwrap();
        assert_eq!(results[0].outcome, Outcome::NoResult);
    }

    #[test]
    fn the_target_tmp_dir_is_found_beside_the_test_binaries() {
        let binary = |exe: &str| TestBinary {
            id: "demo".into(),
            executable: exe.into(),
            cwd: "/src".into(),
            package_name: "demo".into(),
            package_version: "0.1.0".into(),
        };
        assert_eq!(
            target_tmp_dirs(&[
                binary("/w/target/debug/deps/a-1"),
                binary("/w/target/debug/deps/b-2")
            ]),
            [PathBuf::from("/w/target/tmp")]
        );
        assert_eq!(
            target_tmp_dirs(&[binary(
                "/w/target/x86_64-unknown-linux-gnu/release/deps/a-1"
            )]),
            [
                PathBuf::from("/w/target/x86_64-unknown-linux-gnu/tmp"),
                PathBuf::from("/w/target/tmp")
            ]
        );
    }
}

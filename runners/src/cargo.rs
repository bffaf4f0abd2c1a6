//! The cargo runner: Rust tests through libtest, the standard test harness, without nextest,
//! answering test by test what `cargo test` answers.
//!
//! - **prepare**: one `sh -c` script. `cargo test --no-run --message-format=json-render-diagnostics`
//!   builds the test binaries; the `compiler-artifact` messages with `profile.test` and an
//!   `executable` name them, and [`CargoTestRunner::parse_prepare`] records them as
//!   [`TestBinary`]s, named by nextest's binary ids (`crate`, `crate::integration`,
//!   `crate::bin/name`), so this runner and [`crate::NextestRunner`] give the same tests the
//!   same [`TestId`]s. The script then prints the workspace's manifests, for the targets built
//!   with `harness = false` ([`manifest`]), and, when `cargo test` would run doctests, runs
//!   `cargo test --doc -vv -- --list` to capture rustdoc's command line ([`doctest`]).
//! - **list**: one `sh -c` script asks every libtest binary for `--list --format terse` (`name:
//!   test` lines) and replays rustdoc with `--test-args --list`, with a marker line before
//!   each binary. The user's libtest arguments ([`TestArgs`]: name filters, `--exact`, `--skip`,
//!   `--ignored`, `--include-ignored`) are given to these listings, so libtest itself selects
//!   exactly what it would select directly. Ignored tests are listed; running one reports
//!   [`Outcome::Skipped`], as `cargo test` does, unless `--ignored`/`--include-ignored` asked
//!   for them to run.
//! - **run**: `<binary> --exact NAME --show-output` in the package directory, with the
//!   `CARGO_MANIFEST_DIR`/`CARGO_PKG_*` variables cargo would set. Stable libtest cannot time a
//!   test, so [`Batching::PerTest`]: the caller runs each test as its own process and the
//!   process's wall-clock time is the test's duration (what nextest does too). Several tests of
//!   one binary may still share a command when durations do not matter. Doctests replay
//!   rustdoc's command with patterns that pick out the requested doctests
//!   ([`doctest::select`]).
//! - **results**: libtest's `test NAME[ - should panic| - compile fail| - compile] ...
//!   ok|FAILED|ignored` lines, and the `---- NAME stdout ----` sections `--show-output` prints
//!   for each test. A single-test process that dies without reporting (abort, signal) failed.
//!
//! How the tests are named:
//!
//! | tests | group | name |
//! | --- | --- | --- |
//! | libtest binary | nextest's binary id (`crate`, `crate::it`, `crate::bin/tool`) | libtest's name (`tests::add`) |
//! | `harness = false` target | its binary id | the target's name; passed iff it exits 0, as cargo reports it |
//! | a library's doctests | `PACKAGE::doctest/CRATE` (the `/` keeps it apart from a test target named `doctest`) | libtest's name (`src/lib.rs - add (line 3)`) |
//!
//! cargo runs doctests only when the library is selected with no target filter (`--lib`,
//! `--tests`, `--all-targets`, ...), or with `--doc` alone; so does this runner. A doctest is
//! compiled when it runs, so its agent needs the toolchain at the path cargo used, and every
//! library artifact of the build travels with the job (only when there are doctests).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    Batching, CommandOutput, CommandSpec, Outcome, Prepared, RunInvocation, Runner, RunnerError,
    Termination, TestId, TestResult, check_prepare, list_failed, unreported,
};

pub mod doctest;
pub mod libtest;
mod manifest;

pub use doctest::Doctests;
use libtest::LibtestReport;
pub use libtest::{IgnoredTests, TestArgs, TestArgsError};
use manifest::PlainTargets;

/// Runs `cargo test` binaries, one test per process, and a library's doctests through rustdoc.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CargoTestRunner {
    /// Where to run cargo: the workspace or package root.
    pub dir: PathBuf,
    /// Extra arguments for `cargo test --no-run`: package and target selection, features,
    /// `--release`, `--target-dir`, `--doc`.
    #[serde(default)]
    pub cargo_args: Vec<String>,
    /// Variables for every command (build and tests).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The libtest arguments after `cargo test ... --`.
    #[serde(default)]
    pub test_args: TestArgs,
}

/// A test executable built by the prepare step, or a library's doctests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestBinary {
    /// nextest's binary id: `crate` for a library, `crate::name` for an integration test,
    /// `crate::bin/name`, `crate::example/name`, `crate::bench/name` otherwise; and
    /// `crate::doctest/CRATE_NAME` for doctests.
    pub id: String,
    /// Absolute path of the executable (rustdoc, for doctests).
    pub executable: PathBuf,
    /// Where cargo runs it: the package directory (the workspace root, for rustdoc).
    pub cwd: PathBuf,
    /// The package's name.
    pub package_name: String,
    /// The package's version.
    pub package_version: String,
    /// How it is listed and run.
    #[serde(default)]
    pub kind: BinaryKind,
    /// `LD_LIBRARY_PATH` as `cargo test` sets it when it runs the binary: its deps directory,
    /// the profile directory and the toolchain's library directories, without which a
    /// proc-macro crate's unit tests (linked against the toolchain's `libstd-*.so`) cannot
    /// start. `None` for doctests, which carry cargo's own environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dylib_path: Option<String>,
}

/// How a [`TestBinary`] is listed and run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryKind {
    /// A libtest harness: `--list`, `--exact NAME`.
    #[default]
    Libtest,
    /// A `harness = false` target: not listable, run as one unit named `target`, passed iff it
    /// exits 0 (what `cargo test` reports for it).
    Plain {
        /// The target's name, the unit's test name.
        target: String,
    },
    /// A library's doctests, replayed through rustdoc.
    Doctests(Doctests),
}

/// Whether `cargo test` with these arguments runs doctests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DocMode {
    /// A target filter (`--lib`, `--tests`, ...) leaves them out.
    Without,
    /// With the other tests (no target filter).
    Also,
    /// Only them (`--doc`).
    Only,
}

/// cargo's target-selection flags: any of them (without `--doc`) leaves doctests out.
const TARGET_FILTERS: &[&str] = &[
    "--lib",
    "--bin",
    "--bins",
    "--test",
    "--tests",
    "--example",
    "--examples",
    "--bench",
    "--benches",
    "--all-targets",
];

impl CargoTestRunner {
    /// These settings without those that only select tests, for cache keys (see
    /// [`crate::RunnerConfig::key_settings`]): name filters, `--exact` and `--skip` go;
    /// whether ignored tests run stays (see [`TestArgs::without_selection`]).
    pub fn without_selection(&self) -> Self {
        Self {
            test_args: self.test_args.without_selection(),
            ..self.clone()
        }
    }

    /// Runs cargo in `dir` with no extra arguments.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            cargo_args: Vec::new(),
            env: BTreeMap::new(),
            test_args: TestArgs::default(),
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

    /// Sets the libtest arguments (what followed `cargo test ... --`).
    pub fn test_args(mut self, args: TestArgs) -> Self {
        self.test_args = args;
        self
    }

    fn doc_mode(&self) -> DocMode {
        let flag = |a: &String| a.split_once('=').map_or(a.as_str(), |(f, _)| f).to_owned();
        let flags: Vec<String> = self.cargo_args.iter().map(flag).collect();
        if flags.iter().any(|f| f == "--doc") {
            DocMode::Only
        } else if flags.iter().any(|f| TARGET_FILTERS.contains(&f.as_str())) {
            DocMode::Without
        } else {
            DocMode::Also
        }
    }
}

/// Marks the start of each binary's list in the list command's output.
const BINARY_MARKER: &str = "#tessera-test-binary ";

/// The prepare script's section markers.
const MANIFESTS_MARKER: &str = "#tessera-manifests";
const MANIFEST_MARKER: &str = "#tessera-manifest ";
const ROOT_MARKER: &str = "#tessera-workspace-root";
const DOCTESTS_MARKER: &str = "#tessera-doctests";
const DOCTESTS_EXIT_MARKER: &str = "#tessera-doctests-exit ";
const LIBDIRS_MARKER: &str = "#tessera-toolchain-libdirs";
const OUT_DIR_FILES_MARKER: &str = "#tessera-out-dir-files";

/// Prints the toolchain's library directories (its sysroot's `lib` and the host's
/// `rustlib/<host>/lib`), which `cargo test` puts on `LD_LIBRARY_PATH`.
const LIBDIRS_SCRIPT: &str = r##"echo '#tessera-toolchain-libdirs'
"${RUSTC:-rustc}" --print target-libdir || exit
echo "$("${RUSTC:-rustc}" --print sysroot)/lib"
"##;

/// Builds the test binaries (`"$@"` are the cargo arguments).
const BUILD_SCRIPT: &str =
    "cargo test --no-run --message-format=json-render-diagnostics \"$@\" || exit\n";

/// Prints every workspace member's manifest after a marker line naming it. The paths come from
/// `cargo metadata`'s JSON without a JSON parser: cargo writes them as plain strings.
const MANIFESTS_SCRIPT: &str = r##"echo '#tessera-manifests'
cargo metadata --no-deps --format-version 1 | grep -o '"manifest_path":"[^"]*"' | sort -u |
while IFS= read -r m; do
  m=${m#'"manifest_path":"'}
  m=${m%'"'}
  echo "#tessera-manifest $m"
  cat "$m"
  echo
done
"##;

/// Captures rustdoc's doctest commands: cargo's `-vv` prints each with its environment, and
/// `--list` keeps rustdoc from compiling anything. Its exit code is read, not obeyed: without
/// `--doc`, a package with no library has no doctests, which is no failure.
const DOCTESTS_SCRIPT: &str = r##"echo '#tessera-workspace-root'
cargo locate-project --workspace --message-format plain || exit
echo '#tessera-doctests'
cargo test --doc -vv --message-format=json-render-diagnostics "$@" -- --list 2>&1
echo "#tessera-doctests-exit $?"
echo '#tessera-out-dir-files'
t=${CARGO_TARGET_DIR:-}
if [ -z "$t" ]; then
  t=$(cargo metadata --no-deps --format-version 1 | grep -o '"target_directory":"[^"]*"' | head -n 1)
  t=${t#'"target_directory":"'}
  t=${t%'"'}
fi
find "$t" -path '*/build/*/out/*' -type f 2>/dev/null
"##;

impl Runner for CargoTestRunner {
    fn name(&self) -> &'static str {
        "cargo"
    }

    fn prepare_command(&self) -> Option<CommandSpec> {
        let mode = self.doc_mode();
        let mut script = String::new();
        if mode != DocMode::Only {
            script.push_str(BUILD_SCRIPT);
        }
        script.push_str(LIBDIRS_SCRIPT);
        script.push_str(MANIFESTS_SCRIPT);
        match mode {
            DocMode::Without => {}
            DocMode::Also => script.push_str(DOCTESTS_SCRIPT),
            // `--doc` is among the arguments already; cargo refuses it twice.
            DocMode::Only => script.push_str(&DOCTESTS_SCRIPT.replace(" --doc ", " ")),
        }
        Some(
            CommandSpec::new("sh")
                .args(["-c", &script, "tessera-prepare"])
                .args(self.cargo_args.iter().cloned())
                .envs(&self.env)
                .cwd(&self.dir),
        )
    }

    fn parse_prepare(&self, output: &CommandOutput) -> Result<Prepared, RunnerError> {
        check_prepare(output)?;
        let sections = PrepareSections::split(&output.stdout);
        let mut plain = PlainTargets::default();
        for manifest in &sections.manifests {
            plain.add_manifest(manifest);
        }
        let mut test_binaries: Vec<TestBinary> = Vec::new();
        let mut files: Vec<PathBuf> = Vec::new();
        let mut libraries: Vec<PathBuf> = Vec::new();
        let json_lines = sections
            .build
            .iter()
            .chain(&sections.doctests)
            .filter(|l| l.starts_with('{'));
        for line in json_lines {
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
            if message.is_library() {
                libraries.extend(message.filenames.iter().cloned());
            }
            if let Some(binary) = message.test_binary(&plain)? {
                // A binary built twice (say for two profiles) is listed once.
                if !test_binaries.iter().any(|b| b.id == binary.id) {
                    test_binaries.push(binary);
                }
            }
        }
        for binary in &mut test_binaries {
            binary.dylib_path = dylib_path(&binary.executable, &sections.libdirs);
        }
        let dirs = target_tmp_dirs(&test_binaries);
        let doctests = self.doctest_binaries(&sections, output)?;
        if !doctests.is_empty() {
            // rustdoc compiles each doctest against the library and everything it may use,
            // including what the package's build script wrote to `OUT_DIR` (a crate may
            // `include!` it, so even listing its doctests needs it).
            libraries.extend(out_dir_files(&doctests, &sections.out_dir_files));
            for file in libraries {
                if !files.contains(&file) {
                    files.push(file);
                }
            }
        }
        test_binaries.extend(doctests);
        Ok(Prepared {
            test_binaries,
            files,
            dirs,
        })
    }

    fn list_command(&self, prepared: &Prepared) -> CommandSpec {
        let selection = self.test_args.selection_args();
        let mut script = String::new();
        for (i, binary) in prepared.test_binaries.iter().enumerate() {
            let _ = writeln!(script, "echo '{BINARY_MARKER}{i}'");
            match &binary.kind {
                BinaryKind::Libtest => {
                    let command = std::iter::once("env".to_owned())
                        .chain(
                            binary
                                .dylib_path
                                .iter()
                                .map(|p| format!("LD_LIBRARY_PATH={p}")),
                        )
                        .chain(std::iter::once(binary.executable.display().to_string()))
                        .chain(["--list", "--format", "terse"].map(String::from))
                        .chain(selection.iter().cloned());
                    let _ = writeln!(script, "{} || exit", shell_line(command));
                }
                BinaryKind::Plain { .. } => {}
                BinaryKind::Doctests(doctests) => {
                    let command = std::iter::once("env".to_owned())
                        .chain(doctests.env.iter().map(|(k, v)| format!("{k}={v}")))
                        .chain(doctests.argv.iter().cloned())
                        .chain(test_args(
                            std::iter::once("--list").chain(selection.iter().map(String::as_str)),
                        ));
                    let _ = writeln!(
                        script,
                        "(cd {} && {}) || exit",
                        shell_quote(&binary.cwd.display().to_string()),
                        shell_line(command)
                    );
                }
            }
        }
        CommandSpec::new("sh")
            .args(["-c", &script])
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
                match binary {
                    None => {
                        return Err(RunnerError::UnexpectedOutput {
                            tool: "sh",
                            detail: format!("marker for an unknown binary: {line}"),
                        });
                    }
                    // cargo runs a target without harness whatever the filters say.
                    Some(TestBinary {
                        id,
                        kind: BinaryKind::Plain { target },
                        ..
                    }) => tests.push(TestId::new(id, target)),
                    Some(_) => {}
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
        let command = match &binary.kind {
            BinaryKind::Libtest => CommandSpec::new(binary.executable.display().to_string())
                .args(["--exact", "--show-output", "--color", "never"])
                .args(self.test_args.run_ignored_arg())
                .args(tests.iter().map(|t| t.name.clone()))
                .envs(&package_env(binary))
                .envs(&self.env),
            // cargo hands the arguments after `--` to such a binary as they are.
            BinaryKind::Plain { .. } => CommandSpec::new(binary.executable.display().to_string())
                .args(self.test_args.selection_args())
                .envs(&package_env(binary))
                .envs(&self.env),
            BinaryKind::Doctests(doctests) => {
                let wanted: Vec<&str> = tests.iter().map(|t| t.name.as_str()).collect();
                let selection = doctest::select(&wanted, &doctests.names);
                let args = selection
                    .args()
                    .into_iter()
                    .chain(["--show-output", "--color", "never"].map(String::from))
                    .chain(self.test_args.run_ignored_arg().map(String::from))
                    .collect::<Vec<_>>();
                CommandSpec {
                    argv: doctests
                        .argv
                        .iter()
                        .cloned()
                        .chain(test_args(args.iter().map(String::as_str)))
                        .collect(),
                    ..CommandSpec::default()
                }
                .envs(&self.env)
                .envs(&doctests.env)
            }
        };
        Ok(RunInvocation {
            command: command.cwd(&binary.cwd),
            files: Vec::new(),
        })
    }

    fn parse_results(
        &self,
        prepared: &Prepared,
        tests: &[TestId],
        output: &CommandOutput,
        _scratch: &Path,
    ) -> Result<Vec<TestResult>, RunnerError> {
        let single = tests.len() == 1;
        if let Ok(TestBinary {
            kind: BinaryKind::Plain { .. },
            ..
        }) = binary_for(prepared, tests)
        {
            return Ok(tests.iter().map(|id| plain_result(id, output)).collect());
        }
        let report = LibtestReport::parse(&output.stdout);
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

impl CargoTestRunner {
    /// The doctest "binaries" of the prepare output's doctest section.
    fn doctest_binaries(
        &self,
        sections: &PrepareSections<'_>,
        output: &CommandOutput,
    ) -> Result<Vec<TestBinary>, RunnerError> {
        let Some(exit) = sections.doctests_exit else {
            return Ok(Vec::new());
        };
        if exit != 0 {
            let log = sections.doctests.join("\n");
            // `cargo test` skips doctests of packages without a library; `cargo test --doc`
            // refuses them, as cargo does.
            if self.doc_mode() == DocMode::Also && log.contains("no library targets found") {
                return Ok(Vec::new());
            }
            let lines: Vec<&str> = sections.doctests.iter().rev().take(20).copied().collect();
            return Err(RunnerError::PrepareFailed {
                termination: Termination::Exited(exit),
                log: lines.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
        let root = sections
            .workspace_root
            .map(Path::new)
            .and_then(Path::parent)
            .ok_or_else(|| RunnerError::UnexpectedOutput {
                tool: "cargo",
                detail: format!(
                    "`cargo locate-project --workspace` printed no manifest path: {}",
                    output.tail(5)
                ),
            })?;
        let mut binaries: Vec<TestBinary> = Vec::new();
        let mut expecting_command = false;
        for line in &sections.doctests {
            let trimmed = line.trim_start();
            if trimmed.starts_with("Doc-tests ") {
                expecting_command = true;
            } else if let Some(command) = trimmed
                .strip_prefix("Running `")
                .and_then(|rest| rest.strip_suffix('`'))
                && expecting_command
            {
                expecting_command = false;
                let run = doctest::RustdocRun::from_command_line(command).ok_or_else(|| {
                    RunnerError::UnexpectedOutput {
                        tool: "cargo",
                        detail: format!("unrecognized rustdoc command: {command}"),
                    }
                })?;
                let env = &run.doctests.env;
                let package_name = env
                    .get("CARGO_PKG_NAME")
                    .cloned()
                    .unwrap_or_else(|| run.crate_name.clone());
                binaries.push(TestBinary {
                    id: format!("{package_name}::doctest/{}", run.crate_name),
                    executable: PathBuf::from(&run.doctests.argv[0]),
                    cwd: root.to_path_buf(),
                    package_version: env.get("CARGO_PKG_VERSION").cloned().unwrap_or_default(),
                    package_name,
                    kind: BinaryKind::Doctests(run.doctests),
                    dylib_path: None,
                });
            } else if let Some(name) = line.strip_suffix(": test")
                && let Some(TestBinary {
                    kind: BinaryKind::Doctests(doctests),
                    ..
                }) = binaries.last_mut()
            {
                doctests.names.push(name.to_owned());
            }
        }
        // A library without examples in its docs has nothing to list or run.
        binaries.retain(|b| matches!(&b.kind, BinaryKind::Doctests(d) if !d.names.is_empty()));
        Ok(binaries)
    }
}

/// The prepare script's output, cut at its markers.
#[derive(Debug, Default)]
struct PrepareSections<'a> {
    /// `cargo test --no-run`'s JSON messages.
    build: Vec<&'a str>,
    /// Each manifest's text.
    manifests: Vec<String>,
    /// The workspace's root manifest.
    workspace_root: Option<&'a str>,
    /// `cargo test --doc -vv -- --list`, stdout and stderr.
    doctests: Vec<&'a str>,
    /// Its exit code, when it ran.
    doctests_exit: Option<i32>,
    /// The toolchain's library directories.
    libdirs: Vec<&'a str>,
    /// Every file build scripts wrote to their `OUT_DIR`s.
    out_dir_files: Vec<&'a str>,
}

impl<'a> PrepareSections<'a> {
    fn split(stdout: &'a str) -> Self {
        #[derive(PartialEq)]
        enum At {
            Build,
            Manifests,
            Root,
            Doctests,
            Libdirs,
            OutDirFiles,
        }
        let mut sections = Self::default();
        let mut at = At::Build;
        for line in stdout.lines() {
            if line == LIBDIRS_MARKER {
                at = At::Libdirs;
            } else if line == OUT_DIR_FILES_MARKER {
                at = At::OutDirFiles;
            } else if line == MANIFESTS_MARKER {
                at = At::Manifests;
            } else if at == At::Manifests && line.starts_with(MANIFEST_MARKER) {
                sections.manifests.push(String::new());
            } else if line == ROOT_MARKER {
                at = At::Root;
            } else if line == DOCTESTS_MARKER {
                at = At::Doctests;
            } else if let Some(code) = line.strip_prefix(DOCTESTS_EXIT_MARKER) {
                sections.doctests_exit = code.trim().parse().ok();
            } else {
                match at {
                    At::Build => sections.build.push(line),
                    At::Manifests => {
                        if let Some(text) = sections.manifests.last_mut() {
                            text.push_str(line);
                            text.push('\n');
                        }
                    }
                    At::Root if !line.trim().is_empty() => {
                        sections.workspace_root = Some(line.trim());
                    }
                    At::Root => {}
                    At::Doctests => sections.doctests.push(line),
                    At::Libdirs if !line.trim().is_empty() => sections.libdirs.push(line.trim()),
                    At::Libdirs => {}
                    At::OutDirFiles if !line.trim().is_empty() => {
                        sections.out_dir_files.push(line.trim());
                    }
                    At::OutDirFiles => {}
                }
            }
        }
        sections
    }
}

/// `--test-args ARG` for each argument, as cargo hands test arguments to rustdoc.
fn test_args<'a>(args: impl IntoIterator<Item = &'a str>) -> impl Iterator<Item = String> {
    args.into_iter()
        .flat_map(|a| ["--test-args".to_owned(), a.to_owned()])
}

/// The variables cargo sets for a test binary.
/// The files of `found` (every build script output file the prepare step saw) under the
/// `OUT_DIR` of a doctest binary's package. The prepare script lists them: the agent reads this
/// output outside the action's mount namespace, where the exec root is not mounted.
fn out_dir_files(binaries: &[TestBinary], found: &[&str]) -> Vec<PathBuf> {
    let out_dirs: Vec<&str> = binaries
        .iter()
        .filter_map(|b| match &b.kind {
            BinaryKind::Doctests(doctests) => doctests.env.get("OUT_DIR").map(String::as_str),
            _ => None,
        })
        .collect();
    found
        .iter()
        .filter(|file| {
            out_dirs.iter().any(|dir| {
                file.strip_prefix(dir.trim_end_matches('/'))
                    .is_some_and(|rest| rest.starts_with('/'))
            })
        })
        .map(PathBuf::from)
        .collect()
}

/// `LD_LIBRARY_PATH` for a binary at `executable` (in a `deps` directory, or a profile
/// directory) with the toolchain's `libdirs`, in cargo's order: deps, profile, toolchain.
fn dylib_path(executable: &Path, libdirs: &[&str]) -> Option<String> {
    let deps = executable.parent()?;
    let mut dirs: Vec<String> = vec![deps.display().to_string()];
    if deps.file_name().is_some_and(|n| n == "deps")
        && let Some(profile) = deps.parent()
    {
        dirs.push(profile.display().to_string());
    }
    dirs.extend(libdirs.iter().map(|d| (*d).to_owned()));
    Some(dirs.join(":"))
}

fn package_env(binary: &TestBinary) -> BTreeMap<String, String> {
    let dylib = binary
        .dylib_path
        .iter()
        .map(|path| ("LD_LIBRARY_PATH".to_owned(), path.clone()));
    BTreeMap::from([
        (
            "CARGO_MANIFEST_DIR".to_owned(),
            binary.cwd.display().to_string(),
        ),
        ("CARGO_PKG_NAME".to_owned(), binary.package_name.clone()),
        (
            "CARGO_PKG_VERSION".to_owned(),
            binary.package_version.clone(),
        ),
    ])
    .into_iter()
    .chain(dylib)
    .collect()
}

/// What `cargo test` reports for a target without harness: it passed iff it exited 0.
fn plain_result(id: &TestId, output: &CommandOutput) -> TestResult {
    let outcome = match output.termination {
        Termination::TimedOut => Outcome::TimedOut,
        t if t.success() => Outcome::Passed,
        _ => Outcome::Failed,
    };
    TestResult {
        id: id.clone(),
        outcome,
        duration: Some(output.elapsed),
        output: output.combined(),
    }
}

/// `word` quoted for `sh`.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Words joined into one `sh` command line.
fn shell_line(words: impl IntoIterator<Item = String>) -> String {
    words
        .into_iter()
        .map(|w| shell_quote(&w))
        .collect::<Vec<_>>()
        .join(" ")
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
    #[serde(default)]
    filenames: Vec<PathBuf>,
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
    /// A library built for use by others (not its unit-test binary): what rustdoc's
    /// `--extern` and `-L dependency=` find when it compiles a doctest.
    fn is_library(&self) -> bool {
        self.reason == "compiler-artifact"
            && self.profile.as_ref().is_some_and(|p| !p.test)
            && self.target.as_ref().is_some_and(|t| {
                t.kind
                    .iter()
                    .any(|k| matches!(k.as_str(), "lib" | "rlib" | "dylib" | "proc-macro"))
            })
    }

    fn test_binary(self, plain: &PlainTargets) -> Result<Option<TestBinary>, RunnerError> {
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
        let kind = if plain.contains(&package_name, kind, &target.name) {
            BinaryKind::Plain {
                target: target.name,
            }
        } else {
            BinaryKind::Libtest
        };
        Ok(Some(TestBinary {
            id,
            executable,
            cwd,
            package_name,
            package_version,
            kind,
            dylib_path: None,
        }))
    }
}

/// `CARGO_TARGET_TMPDIR` (`<target dir>/tmp`), which cargo creates at build time and test
/// binaries embed, worked out from where the test binaries are: `<target dir>[/<triple>]/
/// <profile>/deps/<binary>`. With a target triple both candidates are kept.
fn target_tmp_dirs(binaries: &[TestBinary]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let built = binaries
        .iter()
        .filter(|b| !matches!(b.kind, BinaryKind::Doctests(_)));
    for binary in built {
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
                    kind: BinaryKind::Libtest,
                    dylib_path: None,
                },
                TestBinary {
                    id: "demo::it".into(),
                    executable: "/t/debug/deps/it-2".into(),
                    cwd: "/src/demo".into(),
                    package_name: "demo".into(),
                    package_version: "0.1.0".into(),
                    kind: BinaryKind::Libtest,
                    dylib_path: None,
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
            kind: BinaryKind::Libtest,
            dylib_path: None,
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

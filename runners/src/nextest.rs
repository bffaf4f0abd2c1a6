//! The nextest runner: Rust tests through cargo-nextest (checked with 0.9.143), built once into
//! an archive.
//!
//! - **prepare**: `cargo nextest archive --archive-file F`, once. The archive holds the test
//!   binaries and what nextest needs to run them; later steps run from it without cargo
//!   building anything.
//! - **list**: `cargo nextest list --archive-file F --message-format json --run-ignored all`
//!   plus the user's selection (`-E` filtersets, name filters): every test whose filter matches,
//!   keyed by nextest's binary id. Ignored tests are listed; running one reports
//!   [`Outcome::Skipped`], as `cargo nextest run` does. The selection is given to the list
//!   command only and is not part of the cache key.
//! - **run**: `cargo nextest run --archive-file F -E EXPR` where `EXPR` names exactly the batch's
//!   tests (`binary_id(=B) & (test(=a) | test(=b))`, with the filterset escapes), with no
//!   fail-fast (the job decides that). Nextest runs each test as its own process and times it, so
//!   any tests may share a command.
//! - **results**: a JUnit report. A tool config file written to the scratch directory (passed
//!   with `--tool-config-file`, so the project's own `.config/nextest.toml` still applies on top)
//!   points the profile's JUnit output and nextest's store at the scratch directory and keeps
//!   the output of passing tests. Cases are matched by (binary id = suite name, test name); a
//!   failure of type `test timeout` (nextest's slow-timeout) is [`Outcome::TimedOut`].
//!
//! # The profile's per-test settings in batches
//!
//! The batch runs under the job's profile, with the project's `.config/nextest.toml` (found at
//! the same path on every agent), so nextest itself applies, per test:
//!
//! | setting | in a batch | reported as |
//! | --- | --- | --- |
//! | `slow-timeout` with `terminate-after` | applied | `<failure type="test timeout">`: [`Outcome::TimedOut`] |
//! | `leak-timeout` | applied | a leaky pass is a plain pass in nextest's JUnit: [`Outcome::Passed`]; with `result = "fail"`, a failure |
//! | `retries` (profile, overrides, `--retries`) | applied | a pass after failures is a passing case with `<flakyFailure>`s, as nextest counts it (passed, flaky): [`Outcome::Flaky`], never cached; failing every attempt: [`Outcome::Failed`] |
//! | `threads-required`, test groups' `max-threads` | within the batch only | nothing stops two batches on one agent, or on two agents, from running tests of one group, or heavy tests, at once |
//! | `test-threads` (`-j`) | per batch | |
//!
//! `threads-required` and test groups hold across the whole job only if the scheduler places
//! such tests with that in mind (one batch per group, slots sized by threads required); it does
//! not yet.
//!
//! Why JUnit rather than `--message-format libtest-json`: that format is still experimental
//! (`NEXTEST_EXPERIMENTAL_LIBTEST_JSON=1`), names tests by crate and binary *name* rather than
//! binary id, and leaves out the output of passing tests. A project whose own config sets a JUnit
//! path for the chosen profile (common for a `ci` profile) overrides ours, since a repository's
//! config outranks a tool config; nextest then writes it under the store directory ours names,
//! where it is read instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::junit::{self, CaseStatus, JunitCase};
use crate::{
    Batching, CommandOutput, CommandSpec, Outcome, Prepared, RunInvocation, Runner, RunnerError,
    ScratchFile, Termination, TestId, TestResult, check_prepare, list_failed, unreported,
};

/// Runs tests with cargo-nextest from an archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextestRunner {
    /// Where to run cargo: the workspace root.
    pub dir: PathBuf,
    /// The archive the prepare step writes and the later steps read (ends in `.tar.zst`).
    pub archive_file: PathBuf,
    /// Extra arguments for `cargo nextest archive`: package and target selection, features,
    /// `--cargo-profile`.
    #[serde(default)]
    pub cargo_args: Vec<String>,
    /// The nextest profile (`default` if unset).
    #[serde(default)]
    pub profile: Option<String>,
    /// Arguments that only select tests, given to `cargo nextest list` and nowhere else:
    /// `-E` filtersets and test name filters (with their `-- --exact`, `--skip`). Not part of
    /// the cache key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
    /// Arguments that change how tests run, given to both `cargo nextest list` and `cargo
    /// nextest run`: `-j`, `--retries`, `--flaky-result`, `--config-file`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run_args: Vec<String>,
    /// `--run-ignored` (`default`, `only` or `all`); unset means `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_ignored: Option<String>,
    /// Variables for every command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Exit code of `cargo nextest run` when tests failed (and every test was run).
const EXIT_TEST_FAILED: i32 = 100;

impl NextestRunner {
    /// These settings without those that only select tests, for cache keys (see
    /// [`crate::RunnerConfig::key_settings`]).
    pub fn without_selection(&self) -> Self {
        Self {
            filters: Vec::new(),
            ..self.clone()
        }
    }

    /// Runs nextest in `dir`, with the archive at `dir/target/tessera/nextest-archive.tar.zst`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            archive_file: dir.join("target/tessera/nextest-archive.tar.zst"),
            dir,
            cargo_args: Vec::new(),
            profile: None,
            filters: Vec::new(),
            run_args: Vec::new(),
            run_ignored: None,
            env: BTreeMap::new(),
        }
    }

    /// Lists only the tests these arguments select (`-E EXPR`, name filters).
    pub fn filters<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.filters.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds arguments for listing and running (`-j 4`, `--retries 2`).
    pub fn run_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.run_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets `--run-ignored` (`default`, `only` or `all`).
    pub fn run_ignored(mut self, which: impl Into<String>) -> Self {
        self.run_ignored = Some(which.into());
        self
    }

    /// Puts the archive elsewhere.
    pub fn archive_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.archive_file = path.into();
        self
    }

    /// Adds arguments for `cargo nextest archive`.
    pub fn cargo_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cargo_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Uses another nextest profile.
    pub fn profile(mut self, profile: impl Into<String>) -> Self {
        self.profile = Some(profile.into());
        self
    }

    /// Sets a variable for every command.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    fn profile_name(&self) -> &str {
        self.profile.as_deref().unwrap_or("default")
    }

    fn nextest(&self, subcommand: &str) -> CommandSpec {
        CommandSpec::new("cargo")
            .args(["nextest", subcommand])
            .envs(&self.env)
            .cwd(&self.dir)
    }

    /// Where a run in `scratch` gets its JUnit report.
    pub fn junit_path(scratch: &Path) -> PathBuf {
        scratch.join("junit.xml")
    }

    /// The JUnit report of a run in `scratch`: ours, or, when the project's own config names a
    /// JUnit path for the profile (its config outranks a tool config), the one report nextest
    /// wrote under the store directory ours points at.
    fn report_path(&self, scratch: &Path) -> PathBuf {
        let ours = Self::junit_path(scratch);
        if ours.exists() {
            return ours;
        }
        let profile_dir = scratch.join("nextest-store").join(self.profile_name());
        let mut found = Vec::new();
        find_xml(&profile_dir, &mut found);
        match found.as_slice() {
            [only] => only.clone(),
            _ => ours,
        }
    }

    fn tool_config(&self, scratch: &Path) -> String {
        format!(
            "# Written by Tessera for one batch: reports go to the batch's scratch directory.\n\
             [store]\n\
             dir = {store}\n\n\
             [profile.{profile}.junit]\n\
             path = {junit}\n\
             store-success-output = true\n\
             store-failure-output = true\n",
            store = toml_string(&scratch.join("nextest-store").display().to_string()),
            profile = toml_string(self.profile_name()),
            junit = toml_string(&Self::junit_path(scratch).display().to_string()),
        )
    }
}

impl Runner for NextestRunner {
    fn name(&self) -> &'static str {
        "nextest"
    }

    fn prepare_command(&self) -> Option<CommandSpec> {
        // `cargo nextest archive` does not create the archive's directory, and on a fresh
        // agent nothing has made it yet.
        let archive = self
            .nextest("archive")
            .arg("--archive-file")
            .arg(self.archive_file.display().to_string())
            .args(self.cargo_args.iter().cloned());
        let dir = self
            .archive_file
            .parent()
            .map_or_else(|| ".".to_owned(), |d| d.display().to_string());
        Some(
            CommandSpec::new("sh")
                .args([
                    "-c",
                    "mkdir -p \"$1\" && shift && exec \"$@\"",
                    "tessera-prepare",
                    &dir,
                ])
                .args(archive.argv)
                .envs(&archive.env)
                .cwd(&self.dir),
        )
    }

    fn parse_prepare(&self, output: &CommandOutput) -> Result<Prepared, RunnerError> {
        check_prepare(output)?;
        Ok(Prepared {
            test_binaries: Vec::new(),
            files: vec![self.archive_file.clone()],
            dirs: Vec::new(),
        })
    }

    fn list_command(&self, _prepared: &Prepared) -> CommandSpec {
        // Ignored tests are listed too (unless only they were asked for), so that they are
        // reported skipped, as `cargo nextest run` reports them.
        let ignored = match self.run_ignored.as_deref() {
            Some("only") => "only",
            _ => "all",
        };
        let (options, names) = split_at_dashes(&self.filters);
        let mut command = self
            .nextest("list")
            .arg("--archive-file")
            .arg(self.archive_file.display().to_string())
            .args(["--profile", self.profile_name()])
            .args(self.run_args.iter().cloned())
            .args(["--message-format", "json", "--run-ignored", ignored])
            .args(["--color", "never"])
            .args(options.iter().cloned());
        if !names.is_empty() {
            command = command.arg("--").args(names.iter().cloned());
        }
        command
    }

    fn parse_list(
        &self,
        _prepared: &Prepared,
        output: &CommandOutput,
    ) -> Result<Vec<TestId>, RunnerError> {
        if !output.termination.success() {
            return Err(list_failed(output));
        }
        let list: TestList =
            serde_json::from_str(&output.stdout).map_err(|e| RunnerError::UnexpectedOutput {
                tool: "cargo-nextest",
                detail: format!("bad list JSON: {e}"),
            })?;
        let mut tests = Vec::new();
        for suite in list.rust_suites.into_values() {
            for (name, case) in suite.testcases {
                if case.filter_match.status == "matches" {
                    tests.push(TestId::new(&suite.binary_id, name));
                }
            }
        }
        Ok(tests)
    }

    fn batching(&self) -> Batching {
        Batching::Any
    }

    fn run_command(
        &self,
        _prepared: &Prepared,
        tests: &[TestId],
        scratch: &Path,
    ) -> Result<RunInvocation, RunnerError> {
        if tests.is_empty() {
            return Err(RunnerError::EmptyBatch);
        }
        let config_path = scratch.join("tessera-nextest.toml");
        let mut tool_config = String::from("tessera:");
        tool_config.push_str(&config_path.display().to_string());
        let command = self
            .nextest("run")
            .arg("--archive-file")
            .arg(self.archive_file.display().to_string())
            .args(["--tool-config-file", tool_config.as_str()])
            .args(["--profile", self.profile_name()])
            .args(self.run_args.iter().cloned())
            .args(["--no-fail-fast", "--no-tests", "warn"])
            .args(["--color", "never", "-E", filterset(tests).as_str()]);
        // The batch names its tests exactly; ignored ones among them run only when asked to.
        let command = match self.run_ignored.as_deref() {
            Some("only" | "all") => command.args(["--run-ignored", "all"]),
            _ => command,
        };
        Ok(RunInvocation {
            command,
            files: vec![ScratchFile {
                path: config_path,
                contents: self.tool_config(scratch),
            }],
        })
    }

    fn parse_results(
        &self,
        _prepared: &Prepared,
        tests: &[TestId],
        output: &CommandOutput,
        scratch: &Path,
    ) -> Result<Vec<TestResult>, RunnerError> {
        let path = self.report_path(scratch);
        let cases = match std::fs::read_to_string(&path) {
            Ok(xml) => junit::parse(&xml).map_err(|source| RunnerError::Junit {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let note = "nextest wrote no JUnit report";
                return Ok(tests
                    .iter()
                    .map(|id| unreported(id, output, note))
                    .collect());
            }
            Err(source) => return Err(RunnerError::Io { path, source }),
        };
        let by_id: BTreeMap<(&str, &str), &JunitCase> = cases
            .iter()
            .map(|c| ((c.suite.as_str(), c.name.as_str()), c))
            .collect();
        // After a complete run, nextest leaves out of its report exactly the tests it chose not
        // to run: ignored ones, and those the profile's default filter excludes.
        let complete = matches!(
            output.termination,
            Termination::Exited(0 | EXIT_TEST_FAILED)
        );
        Ok(tests
            .iter()
            .map(
                |id| match by_id.get(&(id.group.as_str(), id.name.as_str())) {
                    Some(case) => TestResult {
                        id: id.clone(),
                        outcome: case_outcome(case),
                        duration: case.time,
                        output: case.combined_output(),
                    },
                    None if complete => TestResult {
                        id: id.clone(),
                        outcome: Outcome::Skipped,
                        duration: None,
                        output:
                            "not run by nextest: ignored, or outside the profile's default filter"
                                .to_owned(),
                    },
                    None => unreported(id, output, "nextest did not report this test"),
                },
            )
            .collect())
    }
}

fn case_outcome(case: &JunitCase) -> Outcome {
    match case.status {
        CaseStatus::Passed if !case.reruns.is_empty() => Outcome::Flaky,
        CaseStatus::Passed => Outcome::Passed,
        CaseStatus::Skipped => Outcome::Skipped,
        CaseStatus::Failed | CaseStatus::Errored
            if case.kind.as_deref() == Some("test timeout") =>
        {
            Outcome::TimedOut
        }
        CaseStatus::Failed | CaseStatus::Errored => Outcome::Failed,
    }
}

/// Every `.xml` file under `dir`.
fn find_xml(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            find_xml(&path, found);
        } else if path.extension().is_some_and(|e| e == "xml") {
            found.push(path);
        }
    }
}

/// Splits arguments at their `--`: options before it, test-binary arguments after it.
fn split_at_dashes(args: &[String]) -> (&[String], &[String]) {
    match args.iter().position(|a| a == "--") {
        Some(at) => (&args[..at], &args[at + 1..]),
        None => (args, &[]),
    }
}

/// A filterset matching exactly `tests`, grouped by binary.
fn filterset(tests: &[TestId]) -> String {
    let mut by_binary: Vec<(&str, Vec<&str>)> = Vec::new();
    for test in tests {
        match by_binary.iter_mut().find(|(b, _)| *b == test.group) {
            Some((_, names)) => names.push(&test.name),
            None => by_binary.push((&test.group, vec![&test.name])),
        }
    }
    by_binary
        .iter()
        .map(|(binary, names)| {
            let names: Vec<String> = names
                .iter()
                .map(|n| format!("test(={})", filter_escape(n)))
                .collect();
            format!(
                "(binary_id(={}) & ({}))",
                filter_escape(binary),
                names.join(" | ")
            )
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Escapes a string for an equality matcher (`cargo nextest help filterset`, "Escape
/// sequences").
fn filter_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            ')' => out.push_str(r"\)"),
            ',' => out.push_str(r"\,"),
            '\n' => out.push_str(r"\n"),
            '\r' => out.push_str(r"\r"),
            '\t' => out.push_str(r"\t"),
            c => out.push(c),
        }
    }
    out
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The parts of `cargo nextest list --message-format json` this runner reads.
#[derive(Deserialize)]
struct TestList {
    #[serde(rename = "rust-suites")]
    rust_suites: BTreeMap<String, RustSuite>,
}

#[derive(Deserialize)]
struct RustSuite {
    #[serde(rename = "binary-id")]
    binary_id: String,
    testcases: BTreeMap<String, ListedCase>,
}

#[derive(Deserialize)]
struct ListedCase {
    #[serde(rename = "filter-match")]
    filter_match: FilterMatch,
}

#[derive(Deserialize)]
struct FilterMatch {
    status: String,
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
            elapsed: Duration::from_secs(1),
        }
    }

    #[test]
    fn filterset_names_exactly_the_tests() {
        let tests = [
            TestId::new("c", "a"),
            TestId::new("c::it", "odd(name,)"),
            TestId::new("c", "b"),
        ];
        assert_eq!(
            filterset(&tests),
            r"(binary_id(=c) & (test(=a) | test(=b))) | (binary_id(=c::it) & (test(=odd(name\,\))))"
        );
    }

    #[test]
    fn list_keeps_matching_tests_by_binary_id() {
        let json = r#"{"rust-suites": {
            "c": {"binary-id": "c", "testcases": {
                "t::a": {"ignored": false, "filter-match": {"status": "matches"}},
                "t::b": {"ignored": true, "filter-match": {"status": "matches"}},
                "t::c": {"ignored": false, "filter-match": {"status": "mismatch", "reason": "default-filter"}}}},
            "c::it": {"binary-id": "c::it", "testcases": {
                "x": {"ignored": false, "filter-match": {"status": "matches"}}}}}}"#;
        let runner = NextestRunner::new("/src");
        let tests = runner
            .parse_list(&Prepared::default(), &output(Termination::Exited(0), json))
            .unwrap();
        assert_eq!(
            tests,
            [
                TestId::new("c", "t::a"),
                TestId::new("c", "t::b"),
                TestId::new("c::it", "x")
            ]
        );
    }

    #[test]
    fn run_writes_a_tool_config_into_scratch() {
        let runner = NextestRunner::new("/src").profile("ci");
        let run = runner
            .run_command(
                &Prepared::default(),
                &[TestId::new("c", "a")],
                Path::new("/scratch"),
            )
            .unwrap();
        let argv = run.command.argv.join(" ");
        assert!(
            argv.contains("--tool-config-file tessera:/scratch/tessera-nextest.toml"),
            "{argv}"
        );
        assert!(argv.contains("--profile ci"), "{argv}");
        assert!(
            argv.contains("--archive-file /src/target/tessera/nextest-archive.tar.zst"),
            "{argv}"
        );
        assert_eq!(run.files.len(), 1);
        let config = &run.files[0].contents;
        assert!(config.contains("[profile.\"ci\".junit]"), "{config}");
        assert!(config.contains("path = \"/scratch/junit.xml\""), "{config}");
    }

    #[test]
    fn the_selection_goes_to_the_list_only_and_not_into_the_key() {
        let runner = NextestRunner::new("/src")
            .filters(["-E", "test(a) & !test(slow)", "name", "--", "--exact"])
            .run_args(["-j", "2"])
            .run_ignored("only");
        let list = runner.list_command(&Prepared::default()).argv.join(" ");
        assert!(
            list.contains("-j 2 --message-format json --run-ignored only"),
            "{list}"
        );
        assert!(
            list.ends_with("-E test(a) & !test(slow) name -- --exact"),
            "{list}"
        );
        let run = runner
            .run_command(
                &Prepared::default(),
                &[TestId::new("c", "a")],
                Path::new("/s"),
            )
            .unwrap()
            .command
            .argv
            .join(" ");
        assert!(!run.contains("slow"), "{run}");
        assert!(
            run.contains("-j 2") && run.ends_with("--run-ignored all"),
            "{run}"
        );
        // nextest's own retries are the profile's unless asked for.
        assert!(!run.contains("--retries"), "{run}");
        let key = runner.without_selection();
        assert!(key.filters.is_empty());
        assert_eq!(key.run_args, ["-j", "2"]);
        assert_eq!(
            NextestRunner::new("/src")
                .filters(["-E", "test(b)"])
                .without_selection(),
            NextestRunner::new("/src")
        );
    }

    #[test]
    fn results_come_from_junit_and_missing_tests_were_skipped() {
        let scratch = tempfile::tempdir().unwrap();
        std::fs::write(
            NextestRunner::junit_path(scratch.path()),
            r#"<testsuites><testsuite name="c">
                <testcase name="a" classname="c" time="0.5"><system-out>hi</system-out></testcase>
                <testcase name="b" classname="c" time="0.1"><failure type="test timeout"/></testcase>
                <testcase name="d" classname="c" time="0.1"><failure type="test failure">boom</failure></testcase>
            </testsuite></testsuites>"#,
        )
        .unwrap();
        let tests = ["a", "b", "d", "ignored"].map(|n| TestId::new("c", n));
        let runner = NextestRunner::new("/src");
        let results = runner
            .parse_results(
                &Prepared::default(),
                &tests,
                &output(Termination::Exited(100), ""),
                scratch.path(),
            )
            .unwrap();
        let outcomes: Vec<Outcome> = results.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Passed,
                Outcome::TimedOut,
                Outcome::Failed,
                Outcome::Skipped
            ]
        );
        assert_eq!(results[0].duration, Some(Duration::from_millis(500)));
        assert_eq!(results[0].output, "hi");
        // The same report after nextest itself crashed: nothing is inferred for missing tests.
        let results = runner
            .parse_results(
                &Prepared::default(),
                &tests,
                &output(Termination::Signaled(9), ""),
                scratch.path(),
            )
            .unwrap();
        assert_eq!(results[3].outcome, Outcome::NoResult);
    }

    #[test]
    fn no_report_means_no_results() {
        let scratch = tempfile::tempdir().unwrap();
        let runner = NextestRunner::new("/src");
        let tests = [TestId::new("c", "a")];
        let results = runner
            .parse_results(
                &Prepared::default(),
                &tests,
                &output(Termination::TimedOut, ""),
                scratch.path(),
            )
            .unwrap();
        assert_eq!(results[0].outcome, Outcome::TimedOut);
        let results = runner
            .parse_results(
                &Prepared::default(),
                &tests,
                &output(Termination::Exited(96), ""),
                scratch.path(),
            )
            .unwrap();
        assert_eq!(results[0].outcome, Outcome::NoResult);
    }
}

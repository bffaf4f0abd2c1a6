//! The go test runner (checked with Go 1.19, Debian 12's).
//!
//! - **list**: `go test -list REGEX PACKAGES`, where `REGEX` is the top level of the user's
//!   `-run` pattern (`.` without one; see [`RunPattern`]). For each package go prints the names of its tests,
//!   benchmarks, fuzz tests and examples with output, one a line, then `ok  <import path>
//!   <time>`; a package without tests prints `?  <import path>  [no test files]`. Tests, fuzz
//!   tests (plain `go test` runs their seed corpus as subtests) and examples become [`TestId`]s
//!   grouped by import path; benchmarks do not, since `go test` without `-bench` does not run
//!   them. A package that fails to build prints `FAIL  <import path> [build failed]` and the
//!   other packages are still listed: it becomes one entry of its own (see below).
//! - **run**: `go test -count=1 -json -run '^(A|B)$' PACKAGE`, one package per command
//!   ([`Batching::PerGroup`]), since `-run` applies to every package named. `-count=1` keeps Go's
//!   test cache from answering (Tessera caches results itself) unless the user gave a `-count`
//!   of their own. The subtest levels of the user's `-run` (`-run 'TestX/case'`) follow the
//!   batch's own top level: `-run '^(TestX)$/case'`.
//! - **results**: `go test -json` events (test2json). A top-level test's `pass`, `fail` or `skip`
//!   event gives its outcome and `Elapsed` (Go prints it with 10 ms resolution); its output,
//!   subtests' output included, comes from the `output` events. With `-count N` a test reports N
//!   times: the worst outcome wins and the times add up. A test that started but never ended
//!   when go's own `-timeout` panicked the test binary has [`Outcome::TimedOut`]; any other test
//!   that never got a final event (the package failed to build, or an earlier test panicked and
//!   took the process down) has [`Outcome::NoResult`].
//!
//! # Granularity: tests as `go test -json` reports them
//!
//! Tessera lists, plans and runs top-level tests (`TestX`, `FuzzX`, `ExampleX`): what `go test
//! -list` prints and what `-run '^TestX$'` selects. Subtests (`TestX/case`, nested, parallel) are
//! created while their parent runs, so they cannot be listed or placed on their own; but each is
//! reported as go reports it, with its own outcome, time and output: [`Runner::parse_results`]
//! returns them after the requested tests and [`Runner::subtest_parent`] names their parent.
//! A parent fails when any of its subtests fails, exactly as go reports it. A direct `go test
//! -json` run and Tessera therefore report the same tests, one each, subtests included.
//!
//! # Packages that fail
//!
//! A package whose tests fail to build has no tests to list. So that it is not silently left
//! out, it is listed as one entry, group = its import path, name = go's own words in brackets:
//! `[build failed]` (go 1.19's `FAIL <pkg> [build failed]`; a newer go's `[setup failed]` is kept
//! as it is). A package whose test binary built but failed while listing (an `init` panic, a
//! `TestMain` that exits non-zero) gets the entry `[package failed]`, beside whatever tests it
//! did list. Running such an entry runs the package with `-run '^$'` (build it, run no test): a
//! package that fails is [`Outcome::Error`] with the compiler's messages as output, as
//! go-junit-report counts a build failure as an `<error>`; a package that now passes is
//! [`Outcome::Passed`]. A direct `go test -json` run reports these packages with no test events,
//! only the plain line `FAIL <pkg> [build failed]` (go 1.19) or a package-level `fail` event.
//!
//! Not mapped: a package whose every test passed but whose binary still failed afterwards (a
//! `TestMain` that checks for leaked goroutines, say) is reported by go as a failed package with
//! passing tests; Tessera reports the passing tests and says nothing of the package.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    Batching, CommandOutput, CommandSpec, Outcome, Prepared, RunInvocation, Runner, RunnerError,
    TestId, TestResult, list_failed, unreported,
};

/// The entry name of a package whose test binary built but failed while listing its tests.
pub const PACKAGE_FAILED: &str = "[package failed]";

/// The entry name of a package whose tests failed to build (go 1.19's words).
pub const BUILD_FAILED: &str = "[build failed]";

/// What go's test binary prints when its own `-timeout` ran out.
const GO_TIMEOUT_PANIC: &str = "panic: test timed out after";

/// Runs tests with `go test`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoTestRunner {
    /// Where to run go: the directory `go test` was typed in.
    pub dir: PathBuf,
    /// Package patterns to list; `["."]` (the package in `dir`) by default, as for `go test`.
    #[serde(default = "default_packages")]
    pub packages: Vec<String>,
    /// Extra build and test flags for both listing and running, such as `-tags=integration`,
    /// `-race` or `-count=3`.
    #[serde(default)]
    pub args: Vec<String>,
    /// go's `-run` pattern as the user gave it (see [`RunPattern`]). Its top level only
    /// filters the listing; its lower levels choose which subtests run, so they change what a
    /// test does and [`Self::without_selection`] keeps the pattern when it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Variables for every command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_packages() -> Vec<String> {
    vec![".".to_owned()]
}

impl GoTestRunner {
    /// These settings without those that only select tests, for cache keys (see
    /// [`crate::RunnerConfig::key_settings`]): the package patterns (a test's id names its
    /// package) and a `-run` pattern that only filters top-level tests. A pattern with subtest
    /// levels stays, whole: which subtests a test runs depends on it.
    pub fn without_selection(&self) -> Self {
        Self {
            packages: Vec::new(),
            run: self
                .run
                .clone()
                .filter(|run| RunPattern::parse(run).has_subtest_levels()),
            ..self.clone()
        }
    }

    /// Runs `go test` on the package in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            packages: default_packages(),
            args: Vec::new(),
            run: None,
            env: BTreeMap::new(),
        }
    }

    /// Lists these package patterns instead of `.`.
    pub fn packages<I, S>(mut self, packages: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.packages = packages.into_iter().map(Into::into).collect();
        self
    }

    /// Adds build and test flags.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Filters tests as `go test -run PATTERN` does.
    pub fn run_filter(mut self, pattern: impl Into<String>) -> Self {
        self.run = Some(pattern.into());
        self
    }

    /// Sets a variable for every command.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    fn go_test(&self) -> CommandSpec {
        CommandSpec::new("go")
            .arg("test")
            .args(self.args.iter().cloned())
            .envs(&self.env)
            .cwd(&self.dir)
    }

    /// Whether the user's flags set `-count` (then go's test cache is off already, and the
    /// tests run that many times).
    fn has_count(&self) -> bool {
        self.args.iter().any(|arg| {
            let name = arg.trim_start_matches('-');
            arg.starts_with('-') && (name == "count" || name.starts_with("count="))
        })
    }
}

impl Runner for GoTestRunner {
    fn name(&self) -> &'static str {
        "go"
    }

    fn list_command(&self, _prepared: &Prepared) -> CommandSpec {
        let top = self
            .run
            .as_deref()
            .map_or_else(|| ".".to_owned(), |run| RunPattern::parse(run).top_level());
        self.go_test()
            .arg("-list")
            .arg(top)
            .args(self.packages.iter().cloned())
    }

    fn parse_list(
        &self,
        _prepared: &Prepared,
        output: &CommandOutput,
    ) -> Result<Vec<TestId>, RunnerError> {
        let mut tests = Vec::new();
        let mut pending: Vec<&str> = Vec::new();
        let mut packages_seen = 0;
        for line in output.stdout.lines() {
            match ListLine::parse(line) {
                ListLine::Ok(package) => {
                    packages_seen += 1;
                    tests.extend(pending.drain(..).map(|name| TestId::new(package, name)));
                }
                ListLine::NoTests => {
                    packages_seen += 1;
                    pending.clear();
                }
                ListLine::Failed { package, bracketed } => {
                    packages_seen += 1;
                    // A binary that listed some tests and then failed still has those tests.
                    tests.extend(pending.drain(..).map(|name| TestId::new(package, name)));
                    tests.push(TestId::new(package, bracketed.unwrap_or(PACKAGE_FAILED)));
                }
                ListLine::Name(name) => pending.push(name),
                ListLine::Other => {}
            }
        }
        // go stops before running anything when a pattern or the module cannot be loaded; its
        // reasons are on standard error.
        if packages_seen == 0 && !output.termination.success() {
            return Err(list_failed(output));
        }
        if !pending.is_empty() {
            return Err(RunnerError::UnexpectedOutput {
                tool: "go test",
                detail: format!("tests listed without a package: {}", pending.join(", ")),
            });
        }
        Ok(tests)
    }

    fn batching(&self) -> Batching {
        Batching::PerGroup
    }

    fn run_command(
        &self,
        _prepared: &Prepared,
        tests: &[TestId],
        _scratch: &Path,
    ) -> Result<RunInvocation, RunnerError> {
        let first = tests.first().ok_or(RunnerError::EmptyBatch)?;
        Batching::PerGroup.check("go", tests)?;
        let names: Vec<&str> = tests
            .iter()
            .filter(|t| !is_package_entry(&t.name))
            .map(|t| t.name.as_str())
            .collect();
        let run = match self.run.as_deref() {
            // A package entry alone builds the package and runs none of its tests.
            _ if names.is_empty() => "^$".to_owned(),
            Some(run) => RunPattern::parse(run).for_tests(&names)?,
            None => exact(&names),
        };
        let mut command = self.go_test();
        if !self.has_count() {
            command = command.arg("-count=1");
        }
        let command = command.args(["-json", "-run"]).arg(run).arg(&first.group);
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
        let mut reports: BTreeMap<&str, Report> = BTreeMap::new();
        // Subtests as go reports them, in the order they first appear (and where each is).
        let mut subtests: Vec<(String, Report)> = Vec::new();
        let mut subtest_at: HashMap<String, usize> = HashMap::new();
        let mut package = PackageReport::default();
        for line in output.stdout.lines() {
            let Ok(event) = serde_json::from_str::<Event>(line) else {
                // Go 1.19 prints a build failure's `FAIL <pkg> [build failed]` as plain text
                // among the events.
                if line.starts_with("FAIL") && line.contains('[') {
                    package.failed = true;
                }
                package.text.push_str(line);
                package.text.push('\n');
                continue;
            };
            let Some(test) = event.test.as_deref() else {
                match event.action.as_str() {
                    "output" => package
                        .text
                        .push_str(event.output.as_deref().unwrap_or_default()),
                    "fail" => package.failed = true,
                    _ => {}
                }
                continue;
            };
            // Subtests ("Parent/sub") belong to their top-level test.
            let top = test.split('/').next().unwrap_or(test);
            let Some(id) = tests.iter().find(|t| t.name == top) else {
                continue;
            };
            if top != test {
                let at = *subtest_at.entry(test.to_owned()).or_insert_with(|| {
                    subtests.push((test.to_owned(), Report::default()));
                    subtests.len() - 1
                });
                let sub = &mut subtests[at].1;
                match event.action.as_str() {
                    "output" => sub
                        .output
                        .push_str(event.output.as_deref().unwrap_or_default()),
                    "pass" => sub.finish(Outcome::Passed, event.elapsed),
                    "fail" => sub.finish(Outcome::Failed, event.elapsed),
                    "skip" => sub.finish(Outcome::Skipped, event.elapsed),
                    _ => {}
                }
            }
            let report = reports.entry(id.name.as_str()).or_default();
            match event.action.as_str() {
                "output" => report
                    .output
                    .push_str(event.output.as_deref().unwrap_or_default()),
                "run" if top == test => report.started = true,
                "pass" | "fail" | "skip" if top == test => {
                    let outcome = match event.action.as_str() {
                        "pass" => Outcome::Passed,
                        "fail" => Outcome::Failed,
                        _ => Outcome::Skipped,
                    };
                    report.finish(outcome, event.elapsed);
                }
                _ => {}
            }
        }
        let timed_out = package.text.contains(GO_TIMEOUT_PANIC)
            || reports
                .values()
                .any(|r| r.output.contains(GO_TIMEOUT_PANIC));
        let a_test_failed = reports.values().any(|r| r.outcome == Some(Outcome::Failed));
        let group = tests.first().map(|t| t.group.clone()).unwrap_or_default();
        // After the requested tests: each subtest that ended, as go reported it.
        let subtest_results: Vec<TestResult> = subtests
            .into_iter()
            .filter_map(|(name, report)| {
                Some(TestResult {
                    id: TestId::new(&group, name),
                    outcome: report.outcome?,
                    duration: report.elapsed,
                    output: report.output,
                })
            })
            .collect();
        let mut results: Vec<TestResult> = tests
            .iter()
            .map(|id| {
                if is_package_entry(&id.name) {
                    return package_result(id, &package, a_test_failed, output);
                }
                match reports.remove(id.name.as_str()) {
                    Some(Report {
                        outcome: Some(outcome),
                        elapsed,
                        output: text,
                        ..
                    }) => TestResult {
                        id: id.clone(),
                        outcome,
                        duration: elapsed,
                        output: text,
                    },
                    partial => {
                        let mut result = unreported(id, output, "go test did not report this test");
                        let partial = partial.unwrap_or_default();
                        if partial.started && timed_out {
                            result.outcome = Outcome::TimedOut;
                        }
                        result.output =
                            format!("{}{}{}", partial.output, package.text, result.output);
                        result
                    }
                }
            })
            .collect();
        results.extend(subtest_results);
        Ok(results)
    }

    /// `TestX` for `TestX/case` (and `TestX/case/inner`): go creates subtests while their
    /// top-level test runs, so they are reported after the requested tests, not listed.
    fn subtest_parent(&self, test: &TestId) -> Option<TestId> {
        let (top, _) = test.name.split_once('/')?;
        Some(TestId::new(&test.group, top))
    }
}

/// The result of a package entry ([`BUILD_FAILED`], [`PACKAGE_FAILED`], ...): the package's own
/// outcome, unless a test run beside it explains the package's failure.
fn package_result(
    id: &TestId,
    package: &PackageReport,
    a_test_failed: bool,
    output: &CommandOutput,
) -> TestResult {
    let (outcome, text) = if package.failed && !a_test_failed {
        let mut text = output.stderr.clone();
        text.push_str(&package.text);
        (Outcome::Error, text)
    } else if output.termination.success() || package.failed {
        (
            Outcome::Passed,
            format!(
                "the package builds and its test binary runs now\n{}",
                package.text
            ),
        )
    } else {
        return unreported(id, output, "go test did not report this package");
    };
    TestResult {
        id: id.clone(),
        outcome,
        duration: None,
        output: text,
    }
}

/// Whether `name` is an entry for a whole package rather than a test (go names never start
/// with a bracket).
fn is_package_entry(name: &str) -> bool {
    name.starts_with('[')
}

/// One line of `go test -list` output.
enum ListLine<'a> {
    /// `ok  <pkg>  <time>`: the names before it are this package's.
    Ok(&'a str),
    /// `?  <pkg>  [no test files]`.
    NoTests,
    /// `FAIL <pkg> [build failed]` or `FAIL <pkg> <time>`.
    Failed {
        package: &'a str,
        /// go's bracketed reason, if it gave one.
        bracketed: Option<&'a str>,
    },
    /// A test, fuzz test or example name.
    Name(&'a str),
    /// Anything else: benchmarks, the closing `FAIL`, what a test binary printed.
    Other,
}

impl<'a> ListLine<'a> {
    fn parse(line: &'a str) -> Self {
        let mut fields = line.split_whitespace();
        match (fields.next(), fields.next()) {
            (Some("ok"), Some(package)) => Self::Ok(package),
            (Some("?"), Some(_)) => Self::NoTests,
            (Some("FAIL"), Some(package)) => {
                let rest = line.split_once(package).map_or("", |(_, rest)| rest.trim());
                let bracketed = (rest.starts_with('[') && rest.ends_with(']')).then_some(rest);
                Self::Failed { package, bracketed }
            }
            (Some(name), None) if is_runnable(name) => Self::Name(name),
            _ => Self::Other,
        }
    }
}

/// What the events said about one top-level test.
#[derive(Default)]
struct Report {
    started: bool,
    outcome: Option<Outcome>,
    elapsed: Option<Duration>,
    output: String,
}

impl Report {
    /// Records one final event; with `-count N` there are N, and the worst one wins.
    fn finish(&mut self, outcome: Outcome, elapsed: Option<f64>) {
        let rank = |o: Outcome| match o {
            Outcome::Skipped => 0,
            Outcome::Passed => 1,
            _ => 2,
        };
        if self.outcome.is_none_or(|old| rank(outcome) >= rank(old)) {
            self.outcome = Some(outcome);
        }
        if let Some(elapsed) = elapsed.and_then(|secs| Duration::try_from_secs_f64(secs).ok()) {
            self.elapsed = Some(self.elapsed.unwrap_or_default() + elapsed);
        }
    }
}

/// What the run said about the package as a whole.
#[derive(Default)]
struct PackageReport {
    /// A package-level `fail` event, or go's plain `FAIL <pkg> [build failed]` line.
    failed: bool,
    /// Package-level output and the plain-text lines among the events.
    text: String,
}

/// One `go test -json` event (`go doc test2json`).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Event {
    action: String,
    test: Option<String>,
    elapsed: Option<f64>,
    output: Option<String>,
}

/// Whether `go test -list` printed `name` as something `go test -run` runs.
fn is_runnable(name: &str) -> bool {
    ["Test", "Fuzz", "Example"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        && name.chars().all(|c| c.is_alphanumeric() || c == '_')
}

fn bad_pattern(level: &str, error: &regex::Error) -> RunnerError {
    RunnerError::UnexpectedOutput {
        tool: "go test -run",
        detail: format!("cannot read the pattern {level:?}: {error}"),
    }
}

/// `^(A|B)$`: exactly these top-level names.
fn exact(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| regex_quote(n)).collect();
    format!("^({})$", quoted.join("|"))
}

/// A `go test -run` pattern as go's `testing` package reads it (`splitRegexp` in
/// `testing/match.go`): alternatives separated by `|`, each a list of levels separated by `/`
/// (neither inside brackets or parentheses, nor escaped). A test path `Top/sub/subsub` runs when
/// one alternative's levels each match (unanchored) the path's element at the same depth; levels
/// beyond an alternative's last match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPattern {
    /// Each alternative's levels, top level first.
    pub alternatives: Vec<Vec<String>>,
}

impl RunPattern {
    /// Splits `pattern` as go does.
    pub fn parse(pattern: &str) -> Self {
        let mut alternatives = Vec::new();
        let mut levels = vec![String::new()];
        let mut brackets = 0usize;
        let mut parens = 0usize;
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            let current = levels.last_mut().expect("levels is never empty");
            match c {
                '\\' => {
                    current.push(c);
                    if let Some(escaped) = chars.next() {
                        current.push(escaped);
                    }
                    continue;
                }
                '[' => brackets += 1,
                ']' => brackets = brackets.saturating_sub(1),
                '(' if brackets == 0 => parens += 1,
                ')' if brackets == 0 => parens = parens.saturating_sub(1),
                '/' if brackets == 0 && parens == 0 => {
                    levels.push(String::new());
                    continue;
                }
                '|' if brackets == 0 && parens == 0 => {
                    alternatives.push(std::mem::replace(&mut levels, vec![String::new()]));
                    continue;
                }
                // go matches names whose spaces it rewrote to `_`, and rewrites patterns alike.
                c if c.is_whitespace() => {
                    current.push('_');
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
        alternatives.push(levels);
        Self { alternatives }
    }

    /// Checks that every level is a regular expression this runner can read (Go's RE2 syntax,
    /// as the `regex` crate reads it), so a bad pattern is refused before a job starts.
    pub fn check(&self) -> Result<(), RunnerError> {
        for level in self.alternatives.iter().flatten() {
            regex::Regex::new(level).map_err(|e| bad_pattern(level, &e))?;
        }
        Ok(())
    }

    /// Whether any alternative reaches below the top level (`TestX/case`).
    pub fn has_subtest_levels(&self) -> bool {
        self.alternatives.iter().any(|levels| levels.len() > 1)
    }

    /// A regular expression matching the top-level names this pattern runs, for `go test
    /// -list` (which matches its pattern against top-level names only, not level by level).
    pub fn top_level(&self) -> String {
        if self.alternatives.iter().any(|levels| levels[0].is_empty()) {
            return ".".to_owned();
        }
        let tops: Vec<&str> = self.alternatives.iter().map(|l| l[0].as_str()).collect();
        tops.join("|")
    }

    /// A `-run` pattern that runs exactly `names` (top-level tests this pattern lists), each
    /// with the subtests this pattern would run under it: one alternative per alternative of
    /// this pattern, its top level replaced by the listed names it matches.
    pub fn for_tests(&self, names: &[&str]) -> Result<String, RunnerError> {
        let mut out = Vec::new();
        for levels in &self.alternatives {
            let top = regex::Regex::new(&levels[0]).map_err(|e| bad_pattern(&levels[0], &e))?;
            let matching: Vec<&str> = names
                .iter()
                .copied()
                .filter(|name| top.is_match(name))
                .collect();
            if matching.is_empty() {
                continue;
            }
            let mut alternative = exact(&matching);
            for level in &levels[1..] {
                alternative.push('/');
                alternative.push_str(level);
            }
            out.push(alternative);
        }
        if out.is_empty() {
            // Listed tests that no alternative matches: go lists with the same engine, so this
            // means the two regex dialects disagree. Running them as listed is what go would do.
            return Ok(exact(names));
        }
        Ok(out.join("|"))
    }
}

/// Escapes regular-expression metacharacters (Go identifiers have none, but ids come from
/// outside).
fn regex_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::Termination;

    use super::*;

    fn output(termination: Termination, stdout: &str) -> CommandOutput {
        CommandOutput {
            termination,
            stdout: stdout.to_owned(),
            stderr: String::new(),
            elapsed: Duration::from_secs(1),
        }
    }

    fn list(runner: &GoTestRunner, termination: Termination, stdout: &str) -> Vec<TestId> {
        runner
            .parse_list(&Prepared::default(), &output(termination, stdout))
            .unwrap()
    }

    fn results(tests: &[TestId], out: &CommandOutput) -> Vec<TestResult> {
        GoTestRunner::new("/src")
            .parse_results(&Prepared::default(), tests, out, Path::new("/s"))
            .unwrap()
    }

    #[test]
    fn list_groups_names_by_the_package_line_after_them() {
        let stdout = "TestA\nExampleA\nBenchmarkA\nok  \tm/a\t0.003s\n\
                      ?   \tm/none\t[no test files]\nTestA\nFuzzB\nok  \tm/b\t0.002s\n";
        assert_eq!(
            list(&GoTestRunner::new("/src"), Termination::Exited(0), stdout),
            [
                TestId::new("m/a", "TestA"),
                TestId::new("m/a", "ExampleA"),
                TestId::new("m/b", "TestA"),
                TestId::new("m/b", "FuzzB"),
            ]
        );
    }

    #[test]
    fn a_package_that_fails_to_build_is_listed_as_one_entry_and_the_others_still_are() {
        // What go 1.19 prints for `go test -list . ./...` when m/b's test file does not compile
        // and m/e's TestMain exits 1 after listing; it exits 2.
        let stdout = "TestA\nok  \tm/a\t0.005s\nFAIL\tm/b [build failed]\n\
                      TestE\nFAIL\tm/e\t0.002s\nTestD\nok  \tm/d\t0.001s\nFAIL\n";
        assert_eq!(
            list(&GoTestRunner::new("/src"), Termination::Exited(2), stdout),
            [
                TestId::new("m/a", "TestA"),
                TestId::new("m/b", BUILD_FAILED),
                TestId::new("m/e", "TestE"),
                TestId::new("m/e", PACKAGE_FAILED),
                TestId::new("m/d", "TestD"),
            ]
        );
    }

    #[test]
    fn a_list_that_reached_no_package_is_an_error_naming_go_s_reason() {
        let mut out = output(Termination::Exited(1), "");
        out.stderr = "pattern ./nope/...: lstat ./nope/: no such file or directory\n".to_owned();
        let err = GoTestRunner::new("/src")
            .parse_list(&Prepared::default(), &out)
            .unwrap_err();
        assert!(err.to_string().contains("./nope/..."), "{err}");
    }

    #[test]
    fn run_selects_exact_names_in_one_package() {
        let runner = GoTestRunner::new("/src").args(["-race"]);
        let tests = [TestId::new("m/a", "TestA"), TestId::new("m/a", "TestB")];
        let run = runner
            .run_command(&Prepared::default(), &tests, Path::new("/s"))
            .unwrap();
        assert_eq!(
            run.command.argv,
            [
                "go",
                "test",
                "-race",
                "-count=1",
                "-json",
                "-run",
                "^(TestA|TestB)$",
                "m/a"
            ]
        );
        let mixed = [TestId::new("m/a", "TestA"), TestId::new("m/b", "TestA")];
        assert!(
            runner
                .run_command(&Prepared::default(), &mixed, Path::new("/s"))
                .is_err()
        );
    }

    #[test]
    fn run_keeps_the_users_count_and_subtest_filter() {
        let runner = GoTestRunner::new("/src")
            .args(["-count", "3"])
            .run_filter("TestX/case[/]a/deep|TestY");
        let run = runner
            .run_command(
                &Prepared::default(),
                &[TestId::new("m/a", "TestX")],
                Path::new("/s"),
            )
            .unwrap();
        assert_eq!(
            run.command.argv,
            [
                "go",
                "test",
                "-count",
                "3",
                "-json",
                "-run",
                "^(TestX)$/case[/]a/deep",
                "m/a"
            ]
        );
        // The listing is filtered by the top level only.
        let listed = runner.list_command(&Prepared::default()).argv;
        assert_eq!(
            listed,
            ["go", "test", "-count", "3", "-list", "TestX|TestY", "."]
        );
        // A package entry alone builds the package and runs nothing.
        let run = GoTestRunner::new("/src")
            .run_command(
                &Prepared::default(),
                &[TestId::new("m/b", BUILD_FAILED)],
                Path::new("/s"),
            )
            .unwrap();
        assert_eq!(run.command.argv[4..], ["-run", "^$", "m/b"]);
    }

    #[test]
    fn the_cache_key_keeps_subtest_levels_but_not_the_selection() {
        let runner = GoTestRunner::new("/src")
            .packages(["./pkg/..."])
            .args(["-short"])
            .run_filter("TestX/fast");
        let key = runner.without_selection();
        assert_eq!(key.run.as_deref(), Some("TestX/fast"));
        assert!(key.packages.is_empty());
        assert_eq!(key.args, ["-short"]);
        let by_name = GoTestRunner::new("/src").run_filter("TestY");
        assert_eq!(
            by_name.without_selection(),
            GoTestRunner::new("/src").without_selection()
        );
    }

    #[test]
    fn run_patterns_split_like_go() {
        let split = |p: &str| RunPattern::parse(p).alternatives;
        assert_eq!(split("A/B"), [["A", "B"]]);
        assert_eq!(split("A[/]B/(x/y)"), [["A[/]B", "(x/y)"]]);
        assert_eq!(split(r"A\/B/C"), [[r"A\/B", "C"]]);
        assert_eq!(split("/sub"), [["", "sub"]]);
        assert_eq!(split("Plain"), [["Plain"]]);
        assert_eq!(
            split("A|B/c|(D|E)"),
            [vec!["A"], vec!["B", "c"], vec!["(D|E)"]]
        );
        assert_eq!(split("A/with space"), [["A", "with_space"]]);
        assert_eq!(RunPattern::parse("A|B/c").top_level(), "A|B");
        assert_eq!(RunPattern::parse("A|/c").top_level(), ".");
    }

    #[test]
    fn a_batch_keeps_each_alternatives_subtest_levels_for_the_tests_it_matches() {
        let pattern = RunPattern::parse("TestNested|TestLong|TestInt/nothing");
        assert_eq!(
            pattern
                .for_tests(&["TestNested", "TestNestedFails", "TestIntegration"])
                .unwrap(),
            "^(TestNested|TestNestedFails)$|^(TestIntegration)$/nothing"
        );
        let err = RunPattern::parse("Test(")
            .for_tests(&["TestA"])
            .unwrap_err();
        assert!(err.to_string().contains("Test("), "{err}");
    }

    #[test]
    fn results_come_from_top_level_events() {
        let events = [
            r#"{"Action":"run","Package":"m/a","Test":"TestA"}"#,
            r#"{"Action":"output","Package":"m/a","Test":"TestA","Output":"=== RUN   TestA\n"}"#,
            r#"{"Action":"pass","Package":"m/a","Test":"TestA","Elapsed":0.25}"#,
            r#"{"Action":"run","Package":"m/a","Test":"TestT/x"}"#,
            r#"{"Action":"output","Package":"m/a","Test":"TestT/x","Output":"sub failed\n"}"#,
            r#"{"Action":"fail","Package":"m/a","Test":"TestT/x","Elapsed":0}"#,
            r#"{"Action":"fail","Package":"m/a","Test":"TestT","Elapsed":0.01}"#,
            r#"{"Action":"skip","Package":"m/a","Test":"TestS","Elapsed":0}"#,
            r#"{"Action":"run","Package":"m/a","Test":"TestPanic"}"#,
            r#"{"Action":"output","Package":"m/a","Test":"TestPanic","Output":"panic: boom\n"}"#,
            r#"{"Action":"output","Package":"m/a","Output":"FAIL\tm/a\t0.1s\n"}"#,
            r#"{"Action":"fail","Package":"m/a","Elapsed":0.1}"#,
        ]
        .join("\n");
        let tests = ["TestA", "TestT", "TestS", "TestPanic"].map(|n| TestId::new("m/a", n));
        let results = results(&tests, &output(Termination::Exited(1), &events));
        let outcomes: Vec<Outcome> = results.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Passed,
                Outcome::Failed,
                Outcome::Skipped,
                Outcome::NoResult,
                // The subtest, after the requested tests, as go reported it.
                Outcome::Failed,
            ]
        );
        assert_eq!(results[4].id, TestId::new("m/a", "TestT/x"));
        assert_eq!(results[4].output, "sub failed\n");
        assert_eq!(
            GoTestRunner::new("/m").subtest_parent(&results[4].id),
            Some(TestId::new("m/a", "TestT"))
        );
        assert_eq!(results[0].duration, Some(Duration::from_millis(250)));
        assert_eq!(results[1].output, "sub failed\n");
        assert!(
            results[3].output.starts_with("panic: boom\nFAIL\tm/a"),
            "{}",
            results[3].output
        );
    }

    #[test]
    fn with_count_the_worst_run_wins_and_times_add_up() {
        let events = [
            r#"{"Action":"pass","Package":"m/a","Test":"TestA","Elapsed":0.5}"#,
            r#"{"Action":"fail","Package":"m/a","Test":"TestA","Elapsed":0.25}"#,
            r#"{"Action":"pass","Package":"m/a","Test":"TestA","Elapsed":0.25}"#,
        ]
        .join("\n");
        let results = results(
            &[TestId::new("m/a", "TestA")],
            &output(Termination::Exited(1), &events),
        );
        assert_eq!(results[0].outcome, Outcome::Failed);
        assert_eq!(results[0].duration, Some(Duration::from_secs(1)));
    }

    #[test]
    fn go_s_own_timeout_times_out_the_test_that_was_running() {
        let events = [
            r#"{"Action":"run","Package":"m/a","Test":"TestSleep"}"#,
            r#"{"Action":"output","Package":"m/a","Test":"TestSleep","Output":"panic: test timed out after 1s\n"}"#,
            r#"{"Action":"output","Package":"m/a","Output":"FAIL\tm/a\t1.004s\n"}"#,
            r#"{"Action":"fail","Package":"m/a","Elapsed":1.004}"#,
        ]
        .join("\n");
        let tests = ["TestSleep", "TestAfter"].map(|n| TestId::new("m/a", n));
        let results = results(&tests, &output(Termination::Exited(1), &events));
        assert_eq!(results[0].outcome, Outcome::TimedOut);
        assert_eq!(results[1].outcome, Outcome::NoResult);
    }

    #[test]
    fn a_build_failure_is_the_package_entry_s_error_with_the_compiler_s_words() {
        let mut out = output(Termination::Exited(2), "FAIL\tm/b [build failed]\n");
        out.stderr = "# m/b [m/b.test]\nb/b_test.go:3:28: undefined: undefined\n".to_owned();
        let failed = results(&[TestId::new("m/b", BUILD_FAILED)], &out);
        assert_eq!(failed[0].outcome, Outcome::Error);
        assert!(
            failed[0].output.contains("undefined: undefined"),
            "{}",
            failed[0].output
        );
        // The same package building again passes its entry.
        let events = r#"{"Action":"output","Package":"m/b","Output":"ok  \tm/b\t0.01s\n"}
{"Action":"pass","Package":"m/b","Elapsed":0.01}"#;
        let fixed = results(
            &[TestId::new("m/b", BUILD_FAILED)],
            &output(Termination::Exited(0), events),
        );
        assert_eq!(fixed[0].outcome, Outcome::Passed);
    }
}

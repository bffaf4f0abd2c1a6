//! libtest, the standard test harness, as the cargo runner talks to it: the arguments a user
//! gives after `cargo test ... --` ([`TestArgs`]) and the human output it prints
//! ([`LibtestReport`]).
//!
//! Arguments after `--` fall in three kinds:
//!
//! | arguments | what they do | cache key |
//! | --- | --- | --- |
//! | `FILTER...`, `--exact`, `--skip PAT` | select tests, applied to the listing by libtest itself | left out |
//! | `--ignored`, `--include-ignored` | run `#[ignore]` tests (`--ignored`: only those) | kept, both as "run ignored tests" |
//! | `--test-threads N`, `--nocapture`, `--show-output`, `--color C`, `-q`, `--format F` | how libtest prints or schedules; harmless with one test per process | dropped |
//!
//! Anything else is refused ([`TestArgsError`]) with the nearest supported argument, so that a
//! flag we do not understand never changes the set of tests silently.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Outcome;

/// What libtest does with `#[ignore]` tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IgnoredTests {
    /// List them and report them ignored (libtest's default).
    #[default]
    Skip,
    /// Run only them (`--ignored`).
    Only,
    /// Run them with the others (`--include-ignored`).
    Include,
}

/// The libtest arguments of a `cargo test ... -- ARGS` command line that change which tests run
/// or how.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestArgs {
    /// Name filters: a test runs if its name contains any of them (equals one, with
    /// [`Self::exact`]); none means every test.
    #[serde(default)]
    pub filters: Vec<String>,
    /// `--exact`: filters and skips match whole names.
    #[serde(default)]
    pub exact: bool,
    /// `--skip PAT`: tests whose names contain (or, with `--exact`, equal) one of these do not run.
    #[serde(default)]
    pub skip: Vec<String>,
    /// `--ignored` / `--include-ignored`.
    #[serde(default)]
    pub ignored: IgnoredTests,
}

/// Why the arguments after `cargo test ... --` cannot be honoured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TestArgsError {
    /// An argument libtest may accept but this runner does not.
    #[error("`{arg}` after `cargo test --` is not supported{}", nearest_hint(*.nearest))]
    Unsupported {
        /// The argument.
        arg: String,
        /// The supported argument closest to it, if any is close.
        nearest: Option<&'static str>,
    },
    /// An option that takes a value was the last argument.
    #[error("`{0}` after `cargo test --` needs a value")]
    MissingValue(String),
}

fn nearest_hint(nearest: Option<&'static str>) -> String {
    match nearest {
        Some(flag) => format!(" (did you mean `{flag}`?)"),
        None => format!(
            "; supported: test name filters, {}",
            SELECTING
                .iter()
                .chain(HARMLESS_FLAGS)
                .chain(HARMLESS_OPTIONS)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Arguments that select tests or change which ones run.
const SELECTING: &[&str] = &["--exact", "--skip", "--ignored", "--include-ignored"];
/// Flags that only change how libtest prints or schedules (one test per process makes them moot).
const HARMLESS_FLAGS: &[&str] = &[
    "--nocapture",
    "--no-capture",
    "--show-output",
    "-q",
    "--quiet",
];
/// Options with a value that only change how libtest prints or schedules.
const HARMLESS_OPTIONS: &[&str] = &["--test-threads", "--color", "--format"];

impl TestArgs {
    /// Reads what followed `cargo test ... --`.
    pub fn parse(args: &[String]) -> Result<Self, TestArgsError> {
        let mut parsed = Self::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
                _ => (arg.as_str(), None),
            };
            let mut value = || match &inline {
                Some(v) => Ok(v.clone()),
                None => args
                    .next()
                    .cloned()
                    .ok_or_else(|| TestArgsError::MissingValue(flag.to_owned())),
            };
            match flag {
                "--exact" => parsed.exact = true,
                "--skip" => parsed.skip.push(value()?),
                "--ignored" => parsed.ignored = IgnoredTests::Only,
                "--include-ignored" => parsed.ignored = IgnoredTests::Include,
                f if HARMLESS_FLAGS.contains(&f) && inline.is_none() => {}
                f if HARMLESS_OPTIONS.contains(&f) => {
                    value()?;
                }
                f if f.starts_with('-') => {
                    return Err(TestArgsError::Unsupported {
                        arg: arg.clone(),
                        nearest: nearest(f),
                    });
                }
                _ => parsed.filters.push(arg.clone()),
            }
        }
        Ok(parsed)
    }

    /// These arguments without what only selects tests: what a test's cache key keeps.
    /// `--ignored` and `--include-ignored` run an ignored test the same way, so they share a key.
    pub fn without_selection(&self) -> Self {
        Self {
            ignored: match self.ignored {
                IgnoredTests::Skip => IgnoredTests::Skip,
                IgnoredTests::Only | IgnoredTests::Include => IgnoredTests::Include,
            },
            ..Self::default()
        }
    }

    /// The arguments for a test binary (or `rustdoc --test-args`) that make libtest select
    /// exactly what the user's command line selects.
    pub fn selection_args(&self) -> Vec<String> {
        let mut args = self.filters.clone();
        if self.exact {
            args.push("--exact".to_owned());
        }
        for skip in &self.skip {
            args.push("--skip".to_owned());
            args.push(skip.clone());
        }
        args.extend(self.ignored_arg().map(str::to_owned));
        args
    }

    /// The argument that makes libtest run ignored tests the way the user asked, when running
    /// tests picked by name: `--include-ignored` for either of `--ignored` and
    /// `--include-ignored` (the listing already left out what `--ignored` leaves out).
    pub fn run_ignored_arg(&self) -> Option<&'static str> {
        (self.ignored != IgnoredTests::Skip).then_some("--include-ignored")
    }

    fn ignored_arg(&self) -> Option<&'static str> {
        match self.ignored {
            IgnoredTests::Skip => None,
            IgnoredTests::Only => Some("--ignored"),
            IgnoredTests::Include => Some("--include-ignored"),
        }
    }
}

/// The supported flag closest to `flag`, if it is a likely typo of it.
fn nearest(flag: &str) -> Option<&'static str> {
    SELECTING
        .iter()
        .chain(HARMLESS_FLAGS)
        .chain(HARMLESS_OPTIONS)
        .map(|known| (edit_distance(flag, known), *known))
        .filter(|(distance, known)| *distance <= 2.max(known.len() / 4))
        .min()
        .map(|(_, known)| known)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// The decorations libtest's pretty output puts between a test's name and ` ... `
/// (`TestDesc::test_mode`): `#[should_panic]` tests, and rustdoc's `compile_fail` and `no_run`
/// doctests. Any of them counts as a pass when the status is `ok`, as in cargo's summary.
const TEST_MODES: [&str; 3] = [" - should panic", " - compile fail", " - compile"];

/// What libtest's human output says about each test.
#[derive(Debug, Default)]
pub(super) struct LibtestReport<'a> {
    /// Outcome per test name.
    pub(super) outcomes: BTreeMap<&'a str, Outcome>,
    /// Captured output per test, from the `---- NAME stdout ----` sections.
    pub(super) sections: BTreeMap<&'a str, String>,
}

impl<'a> LibtestReport<'a> {
    /// Reads `test NAME ... STATUS` lines and `---- NAME stdout ----` sections. A rustdoc of
    /// edition 2024 prints two runs (merged and standalone doctests); both are read.
    pub(super) fn parse(stdout: &'a str) -> Self {
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
            if let Some((name, outcome)) = status_line(line) {
                report.outcomes.insert(name, outcome);
            }
        }
        report
    }
}

/// The test name and outcome of a `test NAME[ - MODE] ... STATUS` line.
fn status_line(line: &str) -> Option<(&str, Outcome)> {
    let (name, status) = line.strip_prefix("test ")?.rsplit_once(" ... ")?;
    let name = TEST_MODES
        .iter()
        .find_map(|mode| name.strip_suffix(mode))
        .unwrap_or(name);
    // `ok`, `FAILED`, `ignored` and `ignored, REASON`; a time may follow with `--report-time`.
    let word = status.split([',', ' ']).next()?;
    let outcome = match word {
        "ok" => Outcome::Passed,
        "FAILED" => Outcome::Failed,
        "ignored" => Outcome::Skipped,
        _ => return None,
    };
    Some((name, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn filters_exact_skip_and_ignored_are_understood() {
        let parsed =
            TestArgs::parse(&args("add --exact --skip slow --skip=big --ignored")).unwrap();
        assert_eq!(parsed.filters, ["add"]);
        assert!(parsed.exact);
        assert_eq!(parsed.skip, ["slow", "big"]);
        assert_eq!(parsed.ignored, IgnoredTests::Only);
        assert_eq!(
            parsed.selection_args(),
            args("add --exact --skip slow --skip big --ignored")
        );
        assert_eq!(parsed.run_ignored_arg(), Some("--include-ignored"));
    }

    #[test]
    fn printing_and_threading_arguments_are_accepted_and_forgotten() {
        let parsed = TestArgs::parse(&args(
            "--test-threads 1 --nocapture --show-output --color=never -q --format terse x",
        ))
        .unwrap();
        assert_eq!(
            parsed,
            TestArgs {
                filters: vec!["x".into()],
                ..TestArgs::default()
            }
        );
    }

    #[test]
    fn unknown_arguments_are_refused_with_the_nearest_supported_one() {
        let err = TestArgs::parse(&args("--include-ignore")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`--include-ignore` after `cargo test --` is not supported (did you mean `--include-ignored`?)"
        );
        let err = TestArgs::parse(&args("--logfile out.txt")).unwrap_err();
        assert!(
            err.to_string()
                .contains("supported: test name filters, --exact"),
            "{err}"
        );
        assert_eq!(
            TestArgs::parse(&args("--skip")).unwrap_err(),
            TestArgsError::MissingValue("--skip".into())
        );
    }

    #[test]
    fn the_cache_key_keeps_only_how_ignored_tests_run() {
        let only = TestArgs::parse(&args("a --exact --skip b --ignored")).unwrap();
        let include = TestArgs::parse(&args("--include-ignored")).unwrap();
        assert_eq!(only.without_selection(), include.without_selection());
        assert_eq!(
            TestArgs::parse(&args("a b")).unwrap().without_selection(),
            TestArgs::default()
        );
    }

    #[test]
    fn status_lines_with_decorations_name_the_test() {
        let stdout = "running 6 tests\n\
            test tests::p - should panic ... ok\n\
            test tests::i ... ignored, needs a database\n\
            test src/lib.rs - add (line 11) - compile ... ok\n\
            test src/lib.rs - add (line 19) - compile fail ... ok\n\
            test src/lib.rs - add (line 23) ... FAILED\n\
            test tests::q - should panic ... FAILED\n";
        let report = LibtestReport::parse(stdout);
        let outcomes: Vec<(&str, Outcome)> = report.outcomes.into_iter().collect();
        assert_eq!(
            outcomes,
            [
                ("src/lib.rs - add (line 11)", Outcome::Passed),
                ("src/lib.rs - add (line 19)", Outcome::Passed),
                ("src/lib.rs - add (line 23)", Outcome::Failed),
                ("tests::i", Outcome::Skipped),
                ("tests::p", Outcome::Passed),
                ("tests::q", Outcome::Failed),
            ]
        );
    }
}

//! Outcomes as every side can state them, the test-by-test comparison of a direct run with a
//! `tessera run`, and the table that sums it up.
//!
//! Outcomes are normalised the way the tools' own JUnit reports do it: pytest's xfail is a
//! skip (pytest writes `<skipped type="pytest.xfail">`), a non-strict xpass a pass; libtest's
//! `ignored` is a skip; a Go package whose tests do not build is one error. Whatever Tessera
//! says beyond that (`flaky`, `no_result`, `cancelled`, `timed_out`) stays as it is, so it
//! shows up as a difference instead of being folded into a neighbour.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// One test as both sides name it: `group` is the test binary (cargo), the package (go) or
/// empty (pytest, whose node ids are complete).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TestKey {
    /// Binary id, package import path, or empty.
    pub group: String,
    /// The test's name within its group.
    pub name: String,
}

impl TestKey {
    /// A test in `group`.
    pub fn new(group: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for TestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{} {}", self.group, self.name)
        }
    }
}

/// A test's outcome, normalised.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// Passed (also: pytest's non-strict xpass, libtest's `should panic ... ok`).
    Pass,
    /// Failed (also: a timeout, which every tool's JUnit counts as a failure).
    Fail,
    /// An error outside the test's own assertions: a pytest fixture, a Go build.
    Error,
    /// Skipped, ignored or xfailed.
    Skip,
    /// What only Tessera says (`flaky`, `no_result`, `cancelled`, ...), kept verbatim.
    Other(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Pass => f.write_str("pass"),
            Outcome::Fail => f.write_str("fail"),
            Outcome::Error => f.write_str("error"),
            Outcome::Skip => f.write_str("skip"),
            Outcome::Other(word) => f.write_str(word),
        }
    }
}

/// Every test of a run with its outcome.
pub type Outcomes = BTreeMap<TestKey, Outcome>;

/// One difference between the direct run and Tessera's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The test.
    pub test: TestKey,
    /// What the tool said when run directly (`None`: it has no such test).
    pub direct: Option<Outcome>,
    /// What Tessera said (`None`: it did not report the test).
    pub tessera: Option<Outcome>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let say =
            |o: &Option<Outcome>| o.as_ref().map_or("(absent)".to_owned(), Outcome::to_string);
        write!(
            f,
            "{}: direct {}, tessera {}",
            self.test,
            say(&self.direct),
            say(&self.tessera)
        )
    }
}

/// The differences between `direct` and `tessera`, test by test, in test order.
///
/// `build_failures` are the groups (Go packages) whose tests did not build in the direct run:
/// the tool names no test there, only the package, so Tessera must report exactly one test in
/// that group, an error, under whatever name its runner documents.
pub fn compare(
    direct: &Outcomes,
    tessera: &Outcomes,
    build_failures: &BTreeSet<String>,
) -> Vec<Mismatch> {
    let mut tessera = tessera.clone();
    for group in build_failures {
        let in_group: Vec<TestKey> = tessera
            .keys()
            .filter(|k| &k.group == group)
            .cloned()
            .collect();
        if let [only] = in_group.as_slice() {
            let outcome = tessera.remove(only).expect("listed above");
            tessera.insert(build_failure_key(group), outcome);
        }
    }
    let keys: BTreeSet<&TestKey> = direct.keys().chain(tessera.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let (d, t) = (direct.get(key), tessera.get(key));
            (d != t).then(|| Mismatch {
                test: key.clone(),
                direct: d.cloned(),
                tessera: t.cloned(),
            })
        })
        .collect()
}

/// The name the comparison gives a Go package's build failure.
pub fn build_failure_key(package: &str) -> TestKey {
    TestKey::new(package, "[build failed]")
}

/// One line of the table: a suite, its tool, how many tests each side reported, how many
/// differ (`problem`: why Tessera gave no per-test answer at all, if so).
#[derive(Clone, Debug)]
pub struct Row {
    /// The suite's name.
    pub suite: String,
    /// pytest, cargo or go.
    pub tool: String,
    /// Tests the direct run reported (as compared).
    pub direct_tests: usize,
    /// Go subtests the comparison left to their parents.
    pub folded_subtests: usize,
    /// Tests `tessera run` reported.
    pub tessera_tests: usize,
    /// Tests whose outcomes differ (absent on one side included).
    pub mismatches: usize,
    /// A problem with the run as a whole (refused, infrastructure, views disagreeing).
    pub problem: Option<String>,
    /// Wall time of the direct run.
    pub direct_time: Duration,
    /// Wall time of `tessera run`.
    pub tessera_time: Duration,
}

/// The table, as Markdown, so it can go into a report as it is.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| suite | tool | direct tests | tessera tests | mismatches | direct s | tessera s |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for row in rows {
        let mut mismatches = row.mismatches.to_string();
        if let Some(problem) = &row.problem {
            mismatches.push_str(&format!(" ({problem})"));
        }
        let direct = if row.folded_subtests > 0 {
            format!(
                "{} (+{} subtests in them)",
                row.direct_tests, row.folded_subtests
            )
        } else {
            row.direct_tests.to_string()
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.0} |\n",
            row.suite,
            row.tool,
            direct,
            row.tessera_tests,
            mismatches,
            row.direct_time.as_secs_f64(),
            row.tessera_time.as_secs_f64()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(items: &[(&str, &str, Outcome)]) -> Outcomes {
        items
            .iter()
            .map(|(g, n, o)| (TestKey::new(*g, *n), o.clone()))
            .collect()
    }

    #[test]
    fn a_test_missing_on_either_side_or_answered_differently_is_a_mismatch() {
        let direct = outcomes(&[
            ("", "t::a", Outcome::Pass),
            ("", "t::b", Outcome::Skip),
            ("", "t::c", Outcome::Fail),
        ]);
        let tessera = outcomes(&[
            ("", "t::a", Outcome::Pass),
            ("", "t::b", Outcome::Other("no_result".into())),
            ("", "t::d", Outcome::Pass),
        ]);
        let found = compare(&direct, &tessera, &BTreeSet::new());
        let words: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            words,
            [
                "t::b: direct skip, tessera no_result",
                "t::c: direct fail, tessera (absent)",
                "t::d: direct (absent), tessera pass",
            ]
        );
    }

    #[test]
    fn a_build_failure_matches_one_error_in_its_package_whatever_its_name() {
        let package = "example.com/m/broken";
        let direct = outcomes(&[(package, "[build failed]", Outcome::Error)]);
        let build_failures = BTreeSet::from([package.to_owned()]);
        let named_otherwise = outcomes(&[(package, "(build)", Outcome::Error)]);
        assert_eq!(compare(&direct, &named_otherwise, &build_failures), []);
        // Two entries where the tool reports one package error is a difference.
        let two = outcomes(&[
            (package, "TestA", Outcome::Error),
            (package, "TestB", Outcome::Error),
        ]);
        assert_eq!(compare(&direct, &two, &build_failures).len(), 3);
    }
}

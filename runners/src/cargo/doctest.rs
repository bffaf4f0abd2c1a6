//! Doctests: how the cargo runner finds, lists and runs the examples in documentation
//! comments that `cargo test` hands to rustdoc.
//!
//! A doctest has no test binary: rustdoc compiles it when it runs, against the library's rlib
//! and its dependencies. So the prepare step runs `cargo test --doc -vv ... -- --list` once,
//! after the build, and reads from cargo's `Running \`ENV... rustdoc ARGS\`` line exactly the
//! command (with its environment) that cargo would run for each library; [`Doctests`] keeps it,
//! with the names rustdoc listed, and the library artifacts it reads travel as prepared files.
//! The list and run steps replay that command with other `--test-args`, in the directory
//! cargo runs rustdoc in (the workspace root: doctest names such as `a/src/lib.rs - f (line 3)`
//! are relative to it).
//!
//! Selecting one doctest is the subtle part: rustdoc splits every `--test-args` value on
//! whitespace, and doctest names contain spaces, so `--exact NAME` cannot name one. Instead
//! [`select`] picks whitespace-free name filters and `--skip` patterns that select exactly the
//! requested doctests among all those listed. Where no such patterns exist (`(line 3)` when
//! `(line 13)` is requested from the same item), the few other doctests they also select run
//! in the same process, and their results are ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One library's doctests, as cargo would run them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Doctests {
    /// rustdoc's program and arguments as cargo ran them, without any `--test-args`.
    pub argv: Vec<String>,
    /// The variables cargo set for it (`CARGO_PKG_*`, `CARGO_MANIFEST_DIR`, `OUT_DIR`,
    /// `LD_LIBRARY_PATH`, ...).
    pub env: BTreeMap<String, String>,
    /// Every doctest rustdoc listed, before any selection: what [`select`] must tell apart.
    pub names: Vec<String>,
}

/// A doctest command read from `cargo test --doc -vv` output, before its names are known.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RustdocRun {
    pub(super) doctests: Doctests,
    /// `--crate-name`.
    pub(super) crate_name: String,
}

impl RustdocRun {
    /// Reads the command of a `Running \`...\`` line of cargo's verbose output (the part between
    /// the backticks), as cargo's shell escaping wrote it.
    pub(super) fn from_command_line(line: &str) -> Option<Self> {
        let words = shell_words(line)?;
        let is_assignment = |w: &String| {
            w.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
        };
        let program_at = words.iter().position(|w| !is_assignment(w))?;
        let env = words[..program_at]
            .iter()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let mut argv = Vec::new();
        let mut rest = words[program_at..].iter();
        while let Some(word) = rest.next() {
            if word == "--test-args" {
                rest.next();
            } else if !word.starts_with("--test-args=") {
                argv.push(word.clone());
            }
        }
        let crate_name = argv
            .iter()
            .position(|w| w == "--crate-name")
            .and_then(|at| argv.get(at + 1))
            .cloned()?;
        if !argv.iter().any(|w| w == "--test") {
            return None;
        }
        Some(Self {
            doctests: Doctests {
                argv,
                env,
                names: Vec::new(),
            },
            crate_name,
        })
    }
}

/// Splits a command line as a POSIX shell would (single and double quotes, backslashes), for
/// what cargo's `shell-escape` wrote. `None` for an unterminated quote.
fn shell_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => current.push(c),
                    }
                }
            }
            '"' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => current.push(chars.next()?),
                        c => current.push(c),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).push(chars.next()?),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Some(words)
}

/// libtest patterns (none with whitespace) that select `wanted` among `all`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Selection {
    /// Name filters: a test runs if it contains one.
    pub(super) filters: Vec<String>,
    /// `--skip` patterns: a test containing one does not run.
    pub(super) skips: Vec<String>,
    /// Tests of `all` that are not wanted but run anyway: no pattern tells them apart.
    pub(super) extra: Vec<String>,
}

impl Selection {
    /// The patterns as libtest arguments.
    pub(super) fn args(&self) -> Vec<String> {
        let mut args = self.filters.clone();
        for skip in &self.skips {
            args.push("--skip".to_owned());
            args.push(skip.clone());
        }
        args
    }
}

/// Filters and skips selecting exactly `wanted` among `all` where whitespace-free patterns can,
/// as libtest matches them without `--exact` (substrings). Each wanted test is filtered by its
/// rarest word; every other test that a filter catches is skipped by a word of its own that no
/// wanted test contains, or else reported in [`Selection::extra`].
pub(super) fn select(wanted: &[&str], all: &[String]) -> Selection {
    let mut selection = Selection::default();
    let catches = |pattern: &str| all.iter().filter(|n| n.contains(pattern)).count();
    for name in wanted {
        let Some(filter) = name.split_whitespace().min_by_key(|w| catches(w)) else {
            continue;
        };
        if !selection.filters.iter().any(|f| f == filter) {
            selection.filters.push(filter.to_owned());
        }
    }
    for other in all {
        let caught = selection.filters.iter().any(|f| other.contains(f.as_str()));
        let skipped = selection.skips.iter().any(|s| other.contains(s.as_str()));
        if !caught || skipped || wanted.contains(&other.as_str()) {
            continue;
        }
        let own = other
            .split_whitespace()
            .filter(|w| !wanted.iter().any(|name| name.contains(w)))
            .max_by_key(|w| w.len());
        match own {
            Some(word) => selection.skips.push(word.to_owned()),
            None => selection.extra.push(other.clone()),
        }
    }
    selection
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = "CARGO=/usr/bin/cargo CARGO_PKG_NAME=dt CARGO_PKG_AUTHORS='' \
        CARGO_MANIFEST_DIR=/w/dt LD_LIBRARY_PATH='/t/debug/deps:/tc/lib' /tc/bin/rustdoc \
        --edition=2021 --crate-type lib --color auto --crate-name dt --test src/lib.rs \
        --test-run-directory /w/dt --test-args --list --extern dt=/t/debug/deps/libdt-1.rlib \
        -L dependency=/t/debug/deps --check-cfg 'cfg(docsrs,test)' \
        --check-cfg 'cfg(feature, values())' --error-format human";

    #[test]
    fn cargos_verbose_rustdoc_line_becomes_a_command_and_its_environment() {
        let run = RustdocRun::from_command_line(RUNNING).unwrap();
        assert_eq!(run.crate_name, "dt");
        let doctests = run.doctests;
        assert_eq!(doctests.env["CARGO_PKG_AUTHORS"], "");
        assert_eq!(doctests.env["LD_LIBRARY_PATH"], "/t/debug/deps:/tc/lib");
        assert_eq!(doctests.env.len(), 5);
        assert_eq!(doctests.argv[0], "/tc/bin/rustdoc");
        assert!(
            !doctests
                .argv
                .iter()
                .any(|a| a == "--test-args" || a == "--list")
        );
        assert!(doctests.argv.iter().any(|a| a == "cfg(feature, values())"));
        // A rustc line, or a half-quoted one, is not a doctest command.
        assert_eq!(
            RustdocRun::from_command_line("rustc --crate-name dt src/lib.rs"),
            None
        );
        assert_eq!(RustdocRun::from_command_line("rustdoc 'open"), None);
    }

    #[test]
    fn shell_words_undo_cargos_escaping() {
        assert_eq!(
            shell_words(r#"a 'b c' 'd'\''e' "f\"g" h\ i ''"#).unwrap(),
            ["a", "b c", "d'e", "f\"g", "h i", ""]
        );
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// What libtest runs for `args` (substring filters, then skips) among `all`.
    fn libtest_runs<'a>(selection: &Selection, all: &'a [String]) -> Vec<&'a str> {
        all.iter()
            .map(String::as_str)
            .filter(|n| selection.filters.iter().any(|f| n.contains(f.as_str())))
            .filter(|n| !selection.skips.iter().any(|s| n.contains(s.as_str())))
            .collect()
    }

    #[test]
    fn one_doctest_is_picked_out_by_words_without_spaces() {
        let all = names(&[
            "src/lib.rs - add (line 3)",
            "src/lib.rs - add (line 13)",
            "src/lib.rs - add (line 113)",
            "src/lib.rs - sub (line 30)",
            "src/other.rs - add (line 3)",
        ]);
        for wanted in &all {
            let selection = select(&[wanted], &all);
            let runs = libtest_runs(&selection, &all);
            let expected: Vec<&str> = std::iter::once(wanted.as_str())
                .chain(selection.extra.iter().map(String::as_str))
                .collect();
            let mut sorted = runs.clone();
            sorted.sort_unstable();
            let mut expected_sorted = expected.clone();
            expected_sorted.sort_unstable();
            assert_eq!(sorted, expected_sorted, "{wanted}: {selection:?}");
            assert!(
                selection.args().iter().all(|a| !a.contains(' ')),
                "{selection:?}"
            );
        }
        // `(line 13)` is picked out exactly: `113)` is skipped.
        let selection = select(&["src/lib.rs - add (line 13)"], &all);
        assert!(selection.extra.is_empty(), "{selection:?}");
        assert_eq!(selection.filters, ["13)"]);
        assert_eq!(selection.skips, ["113)"]);
    }

    #[test]
    fn a_test_whose_every_word_is_in_the_wanted_one_runs_along() {
        // Any pattern catching `a a1` catches `a1`, and `a1` has no word of its own. (Doctest
        // names end in `(line N)`, which always tells them apart; this is the fallback.)
        let all = names(&["a a1", "a1"]);
        let selection = select(&["a a1"], &all);
        assert_eq!(selection.extra, ["a1"]);
        // The other way round, `a` picks out `a a1`'s neighbour exactly.
        let selection = select(&["a1"], &all);
        assert_eq!(libtest_runs(&selection, &all), ["a a1", "a1"]);
        assert_eq!(selection.extra, ["a a1"]);
    }
}

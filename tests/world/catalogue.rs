//! The world's suites, pinned: where each comes from, the command its project documents (or
//! its CI runs), what it is chosen for, and how our copy differs from what was published (only
//! where the case needs it, said per suite).
//!
//! | suite | tool | chosen for |
//! | --- | --- | --- |
//! | markupsafe 3.0.4 (PyPI) | pytest | an autouse `conftest.py` fixture with params; ids with brackets, quotes, `&<>` and unicode escapes |
//! | python-dateutil 4.0.0 (PyPI), `tests/test_tz.py` | pytest | a test path; a parametrized `conftest.py` fixture; xfail, skips, ids with `/` inside brackets; the fault story |
//! | more-itertools 11.2.1 (PyPI) | pytest | `unittest.TestCase` classes with `subTest` (pytest 9 counts subtests apart); an order-dependent pair we add |
//! | smallvec 1.16.6 (crates.io) | cargo | doctests; `#[should_panic]` tests |
//! | thiserror 2.0.21 + thiserror-impl 2.0.21 (crates.io) | cargo | a workspace of two published sibling crates joined by a path dependency; integration-test binaries; `ignored, reason` |
//! | memoffset 0.9.1 (crates.io) | cargo | no `Cargo.lock` (published without one): the build resolves and downloads `autocfg`; doctests |
//! | go-cmp 0.5.9 (Debian golang-github-google-go-cmp-dev) | go | subtests by the hundred; a package that fails to build (a broken `_test.go` we add) |
//! | pkg/errors 0.9.1 (Debian golang-github-pkg-errors-dev) | go | no go.mod (we add one); `Example` functions; subtests; failing tests (they expect a GOPATH checkout path) |

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::source::{self, Unavailable, copy_tree};

/// The pytest every virtualenv gets: the version the runners are tested with.
pub const PYTEST: &str = "pytest==9.2.0";

/// The tool a suite's command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// pytest, read through `--junitxml`.
    Pytest,
    /// `cargo test`, read from libtest's text (doctests included).
    Cargo,
    /// `go test -json`.
    Go,
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tool::Pytest => "pytest",
            Tool::Cargo => "cargo",
            Tool::Go => "go",
        })
    }
}

/// What a suite is chosen for. The direct run must show each (a count above zero), so that a
/// later change of suite or version cannot quietly drop the case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feature {
    /// A `conftest.py` defining fixtures.
    ConftestFixtures,
    /// Parametrized test ids with brackets.
    BracketedIds,
    /// Tests marked xfail that failed as expected.
    Xfail,
    /// Skipped tests (pytest skips, libtest `ignored`).
    Skips,
    /// Subtests: Go's `TestX/case`, or pytest's subtests of `unittest` `subTest`.
    Subtests,
    /// A test that passes only after another one of its file has run.
    OrderDependentPair,
    /// Doctests.
    Doctests,
    /// `#[should_panic]` tests.
    ShouldPanic,
    /// A workspace whose crates depend on each other by path.
    Workspace,
    /// No `Cargo.lock`: the build resolves and downloads dependencies.
    NoLockFile,
    /// A Go package whose tests fail to build.
    BuildFailure,
    /// Go `Example` functions, which `go test` runs as tests.
    Examples,
    /// Tests that fail in the direct run.
    Failures,
}

/// Where a suite's sources come from.
#[derive(Clone, Copy, Debug)]
pub enum Origin {
    /// An sdist from PyPI, with a virtualenv holding the package and `requirements`.
    Pypi {
        /// Distribution name.
        name: &'static str,
        /// Pinned version.
        version: &'static str,
        /// What the tests need besides the package itself ([`PYTEST`] is added).
        requirements: &'static [&'static str],
    },
    /// `.crate` files from crates.io: one crate, or several joined into a workspace (each
    /// in a directory named after the crate, a virtual manifest listing them).
    Crates {
        /// `(name, version)` of each crate.
        crates: &'static [(&'static str, &'static str)],
    },
    /// The Go sources a Debian `golang-*-dev` package installs.
    Debian {
        /// The module's import path.
        import_path: &'static str,
        /// The Debian package.
        package: &'static str,
    },
}

/// One suite of the world.
#[derive(Clone, Copy, Debug)]
pub struct Suite {
    /// A short name (also the name of its copy's directory, so of Tessera's exec root).
    pub name: &'static str,
    /// Its tool.
    pub tool: Tool,
    /// Where it comes from.
    pub origin: Origin,
    /// The command its project documents, as typed after `tessera run --`.
    pub command: &'static [&'static str],
    /// `tessera run` flags the suite needs (before `--`), each said where it is set.
    pub tessera_flags: &'static [&'static str],
    /// What it is chosen for.
    pub chosen_for: &'static [Feature],
    /// Changes to our copy, said in [`Suite::adjust`]'s table; `None` for the tree as published.
    pub adjust: Option<fn(&Path) -> std::io::Result<()>>,
}

/// The world's suites.
pub const SUITES: &[Suite] = &[
    Suite {
        name: "markupsafe",
        tool: Tool::Pytest,
        origin: Origin::Pypi {
            name: "markupsafe",
            version: "3.0.4",
            requirements: &[],
        },
        command: &["pytest"],
        tessera_flags: &[],
        chosen_for: &[Feature::ConftestFixtures, Feature::BracketedIds],
        adjust: None,
    },
    DATEUTIL,
    Suite {
        adjust: Some(add_order_dependent_pair),
        chosen_for: &[Feature::Subtests, Feature::OrderDependentPair],
        // The order-dependent pair needs its file kept together and in order.
        tessera_flags: &["--by-file"],
        ..MORE_ITERTOOLS
    },
    Suite {
        name: "smallvec",
        tool: Tool::Cargo,
        origin: Origin::Crates {
            crates: &[("smallvec", "1.16.6")],
        },
        command: &["cargo", "test"],
        tessera_flags: &[],
        chosen_for: &[Feature::Doctests, Feature::ShouldPanic],
        adjust: None,
    },
    Suite {
        name: "thiserror-workspace",
        tool: Tool::Cargo,
        origin: Origin::Crates {
            crates: &[("thiserror", "2.0.21"), ("thiserror-impl", "2.0.21")],
        },
        command: &["cargo", "test"],
        tessera_flags: &[],
        chosen_for: &[Feature::Workspace, Feature::Skips, Feature::Doctests],
        adjust: Some(join_thiserror_workspace),
    },
    Suite {
        name: "memoffset",
        tool: Tool::Cargo,
        origin: Origin::Crates {
            crates: &[("memoffset", "0.9.1")],
        },
        command: &["cargo", "test"],
        tessera_flags: &[],
        chosen_for: &[Feature::NoLockFile, Feature::Doctests],
        adjust: None,
    },
    Suite {
        name: "go-cmp",
        tool: Tool::Go,
        origin: Origin::Debian {
            import_path: "github.com/google/go-cmp",
            package: "golang-github-google-go-cmp-dev",
        },
        command: &["go", "test", "-json", "./..."],
        tessera_flags: &[],
        chosen_for: &[Feature::Subtests, Feature::BuildFailure],
        adjust: Some(break_one_go_cmp_package),
    },
    Suite {
        name: "pkg-errors",
        tool: Tool::Go,
        origin: Origin::Debian {
            import_path: "github.com/pkg/errors",
            package: "golang-github-pkg-errors-dev",
        },
        command: &["go", "test", "-json", "./..."],
        tessera_flags: &[],
        chosen_for: &[Feature::Examples, Feature::Subtests, Feature::Failures],
        adjust: Some(add_pkg_errors_go_mod),
    },
];

/// python-dateutil's time-zone tests (518).
pub const DATEUTIL: Suite = Suite {
    name: "dateutil",
    tool: Tool::Pytest,
    origin: Origin::Pypi {
        name: "python-dateutil",
        version: "4.0.0",
        // Its requirements-dev.txt, less what only measures coverage or parallelises
        // (pytest-cov stays: the suite's `no_cover` marker comes from it).
        requirements: &["pytest-cov", "freezegun", "hypothesis", "attrs"],
    },
    // tox.ini runs `python -m pytest tests docs ...`; one test file of it keeps the time.
    command: &["python", "-m", "pytest", "tests/test_tz.py"],
    tessera_flags: &[],
    chosen_for: &[
        Feature::ConftestFixtures,
        Feature::BracketedIds,
        Feature::Xfail,
        Feature::Skips,
    ],
    adjust: None,
};

/// more-itertools as published (765 tests, 21194 subtests; the suite of the fault story, as
/// in issue 10's report: long enough to kill an agent and the coordinator while it runs). The
/// catalogue's entry adds the order-dependent pair.
pub const MORE_ITERTOOLS: Suite = Suite {
    name: "more-itertools",
    tool: Tool::Pytest,
    origin: Origin::Pypi {
        name: "more-itertools",
        version: "11.2.1",
        requirements: &[],
    },
    // Its Makefile and tox.ini run `python -m unittest`; pytest runs the same TestCases.
    command: &["pytest"],
    tessera_flags: &[],
    chosen_for: &[Feature::Subtests],
    adjust: None,
};

/// A suite's tree, fetched and copied, with what its commands need.
#[derive(Debug)]
pub struct Fetched {
    /// The pristine tree in the cache.
    pub pristine: PathBuf,
    /// Variables both runs get on top of the common environment (a virtualenv's `PATH`,
    /// Go's settings).
    pub env: BTreeMap<String, String>,
}

impl Suite {
    /// Fetches the suite (or finds it in the cache).
    pub fn fetch(&self) -> Result<Fetched, Unavailable> {
        let mut env = BTreeMap::new();
        let pristine = match self.origin {
            Origin::Pypi {
                name,
                version,
                requirements,
            } => {
                let mut args = vec!["pypi", name, version, PYTEST];
                args.extend_from_slice(requirements);
                let lines = source::fetch(&args)?;
                let (src, venv) = lines
                    .first()
                    .and_then(|l| l.split_once('\t'))
                    .ok_or_else(|| Unavailable(format!("fetch.sh printed {lines:?}")))?;
                let path = std::env::var("PATH").unwrap_or_default();
                env.insert("PATH".to_owned(), format!("{venv}/bin:{path}"));
                env.insert("VIRTUAL_ENV".to_owned(), venv.to_owned());
                PathBuf::from(src)
            }
            Origin::Crates { crates } => {
                if !source::has_tool("cargo") {
                    return Err(Unavailable("cargo is not installed".into()));
                }
                let dir = source::cache_dir().join("trees").join(self.name);
                if !dir.join(".complete").exists() {
                    let partial = dir.with_extension("partial");
                    let _ = std::fs::remove_dir_all(&partial);
                    for (name, version) in crates {
                        let lines = source::fetch(&["crate", name, version])?;
                        let from = lines.first().ok_or_else(|| {
                            Unavailable(format!("fetch.sh printed nothing for {name}"))
                        })?;
                        let to = if crates.len() == 1 {
                            partial.clone()
                        } else {
                            partial.join(name)
                        };
                        copy_tree(Path::new(from), &to)
                            .map_err(|e| Unavailable(format!("cannot copy {from}: {e}")))?;
                    }
                    std::fs::write(partial.join(".complete"), "")
                        .and_then(|()| {
                            let _ = std::fs::remove_dir_all(&dir);
                            std::fs::rename(&partial, &dir)
                        })
                        .map_err(|e| {
                            Unavailable(format!("cannot finish {}: {e}", dir.display()))
                        })?;
                }
                dir
            }
            Origin::Debian {
                import_path,
                package,
            } => {
                if !go_version_runs() {
                    return Err(Unavailable("go is not installed".into()));
                }
                let lines = source::fetch(&["go", import_path, package])?;
                env.insert("GOPROXY".to_owned(), "off".to_owned());
                env.insert("GOFLAGS".to_owned(), "-mod=mod".to_owned());
                PathBuf::from(lines.first().cloned().unwrap_or_default())
            }
        };
        if self.tool == Tool::Pytest && !source::has_tool("python3") {
            return Err(Unavailable("python3 is not installed".into()));
        }
        Ok(Fetched { pristine, env })
    }

    /// A fresh copy of the suite at `parent/NAME` (so Tessera's exec root is
    /// `/var/tmp/tessera/NAME`: two stories running at once use different names), adjusted as
    /// this suite's entry says.
    ///
    /// | suite | change to the published tree | why |
    /// | --- | --- | --- |
    /// | more-itertools | adds `tests/test_tessera_order.py` | an order-dependent pair: no real suite here has one |
    /// | thiserror-workspace | a virtual manifest over both crates; thiserror's `thiserror-impl` dependency gets `path = "../thiserror-impl"`; thiserror's Cargo.lock moves to the root; `rust-toolchain.toml` goes (it asks rustup for `rust-src`, which cannot be downloaded here) | published siblings joined by a path dependency |
    /// | go-cmp | adds `cmp/internal/value/zz_tessera_broken_test.go`, which does not compile | a package that fails to build while the others run |
    /// | pkg-errors | adds `go.mod` (module `github.com/pkg/errors`, go 1.13) | Debian ships it GOPATH-style |
    pub fn copy(&self, fetched: &Fetched, parent: &Path, name: &str) -> std::io::Result<PathBuf> {
        let dir = parent.join(name);
        copy_tree(&fetched.pristine, &dir)?;
        let _ = std::fs::remove_file(dir.join(".complete"));
        if let Some(adjust) = self.adjust {
            adjust(&dir)?;
        }
        Ok(dir)
    }
}

/// `go version` runs (`go` has no `--version` flag).
fn go_version_runs() -> bool {
    std::process::Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The order-dependent pair: the file's second test passes only once the first has run in the
/// same process (in file order, as pytest runs a file).
pub const ORDER_FILE: &str = "tests/test_tessera_order.py";
/// The test that only passes after [`ORDER_FIRST`].
pub const ORDER_SECOND: &str = "tests/test_tessera_order.py::test_second_needs_the_first";
/// The test [`ORDER_SECOND`] depends on.
pub const ORDER_FIRST: &str = "tests/test_tessera_order.py::test_first_leaves_a_mark";

fn add_order_dependent_pair(dir: &Path) -> std::io::Result<()> {
    std::fs::write(
        dir.join(ORDER_FILE),
        "\"\"\"Added by Tessera's world-suite test: an order-dependent pair.\n\n\
         The second test passes only after the first has run in the same process, as it does\n\
         when pytest runs this file from top to bottom.\n\"\"\"\n\n\
         MARKS = []\n\n\n\
         def test_first_leaves_a_mark():\n    MARKS.append(\"first\")\n\n\n\
         def test_second_needs_the_first():\n    assert \"first\" in MARKS\n",
    )
}

fn join_thiserror_workspace(dir: &Path) -> std::io::Result<()> {
    std::fs::write(
        dir.join("Cargo.toml"),
        "[workspace]\nmembers = [\"thiserror\", \"thiserror-impl\"]\nresolver = \"2\"\n",
    )?;
    let manifest = dir.join("thiserror/Cargo.toml");
    let text = std::fs::read_to_string(&manifest)?;
    let header = "[dependencies.thiserror-impl]\n";
    if !text.contains(header) {
        return Err(std::io::Error::other(format!(
            "{} has no `{}`: the join needs another edit",
            manifest.display(),
            header.trim()
        )));
    }
    std::fs::write(
        &manifest,
        text.replace(header, &format!("{header}path = \"../thiserror-impl\"\n")),
    )?;
    std::fs::rename(dir.join("thiserror/Cargo.lock"), dir.join("Cargo.lock"))?;
    std::fs::remove_file(dir.join("thiserror-impl/Cargo.lock"))?;
    std::fs::remove_file(dir.join("thiserror/rust-toolchain.toml"))
}

/// The package of go-cmp whose tests we break.
pub const BROKEN_GO_PACKAGE: &str = "github.com/google/go-cmp/cmp/internal/value";

fn break_one_go_cmp_package(dir: &Path) -> std::io::Result<()> {
    std::fs::write(
        dir.join("cmp/internal/value/zz_tessera_broken_test.go"),
        "package value\n\n\
         // Added by Tessera's world-suite test: this package's tests must fail to build.\n\n\
         import \"testing\"\n\n\
         func TestTesseraBroken(t *testing.T) { thisDoesNotExist() }\n",
    )
}

fn add_pkg_errors_go_mod(dir: &Path) -> std::io::Result<()> {
    std::fs::write(
        dir.join("go.mod"),
        "module github.com/pkg/errors\n\ngo 1.13\n",
    )
}

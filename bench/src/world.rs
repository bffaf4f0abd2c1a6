//! The world's suites as `tessera-bench suites` runs them: the pinned suites of the fidelity
//! tests (`tests/world/catalogue.rs`), each with the whole suite its project documents, fetched
//! by the same script (`tests/world/fetch.sh`, called where it lives in the repository) into
//! the same cache, and copied fresh for every run.
//!
//! The bench's own table, not the catalogue's: the bench cannot depend on the `tests` crate,
//! and it differs on purpose. It runs each suite whole (python-dateutil's full `python -m
//! pytest`, not one file), and it keeps only the changes a suite needs to run at all, none of
//! those the fidelity tests add to show a case:
//!
//! | suite | change to the published tree | why |
//! | --- | --- | --- |
//! | thiserror-workspace | a virtual manifest over both crates; thiserror's `thiserror-impl` dependency gets `path = "../thiserror-impl"`; thiserror's Cargo.lock moves to the root; `rust-toolchain.toml` goes | published siblings joined by a path dependency (its `rust-toolchain.toml` asks rustup for `rust-src`, which cannot be downloaded here) |
//! | pkg-errors | adds `go.mod` (module `github.com/pkg/errors`, go 1.13) | Debian ships it GOPATH-style |
//!
//! Owns the pins, the commands, the fetch and the copies; runs no suite.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::BenchError;

/// The pytest every virtualenv gets (the catalogue's pin, so the venvs are shared with the
/// fidelity tests).
const PYTEST: &str = "pytest==9.2.0";

/// The fetch script of the world's suites, in this repository.
const FETCH_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/world/fetch.sh");

/// The tool a suite's command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tool {
    /// pytest.
    Pytest,
    /// `cargo test`.
    Cargo,
    /// `go test`.
    Go,
}

impl Tool {
    /// The tool's name, as the table prints it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Tool::Pytest => "pytest",
            Tool::Cargo => "cargo",
            Tool::Go => "go",
        }
    }
}

/// Where a suite's sources come from.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// An sdist from PyPI, with a virtualenv holding the package, pytest and `requirements`.
    Pypi {
        name: &'static str,
        version: &'static str,
        requirements: &'static [&'static str],
    },
    /// `.crate` files from crates.io: one crate, or several joined into a workspace (each in a
    /// directory named after the crate).
    Crates {
        crates: &'static [(&'static str, &'static str)],
    },
    /// The Go sources a Debian `golang-*-dev` package installs.
    Debian {
        import_path: &'static str,
        package: &'static str,
    },
}

/// One suite of the world.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorldSuite {
    /// Its name (`--suite NAME`), as in the fidelity tests' catalogue.
    pub name: &'static str,
    /// Its tool.
    pub tool: Tool,
    origin: Origin,
    /// The command its project documents, as typed after `tessera run --`.
    pub command: &'static [&'static str],
    adjust: Option<fn(&Path) -> std::io::Result<()>>,
}

/// The world's suites, in the order the benchmark runs them.
pub(crate) const SUITES: &[WorldSuite] = &[
    WorldSuite {
        name: "dateutil",
        tool: Tool::Pytest,
        origin: Origin::Pypi {
            name: "python-dateutil",
            version: "4.0.0",
            // The catalogue's: its requirements-dev.txt less coverage and parallelising
            // plugins (pytest-cov stays: the suite's `no_cover` marker comes from it).
            requirements: &["pytest-cov", "freezegun", "hypothesis", "attrs"],
        },
        // tox.ini runs `python -m pytest`; the whole suite, as its configuration collects it.
        command: &["python", "-m", "pytest"],
        adjust: None,
    },
    WorldSuite {
        name: "markupsafe",
        tool: Tool::Pytest,
        origin: Origin::Pypi {
            name: "markupsafe",
            version: "3.0.4",
            requirements: &[],
        },
        command: &["pytest"],
        adjust: None,
    },
    WorldSuite {
        name: "more-itertools",
        tool: Tool::Pytest,
        origin: Origin::Pypi {
            name: "more-itertools",
            version: "11.2.1",
            requirements: &[],
        },
        // Its Makefile and tox.ini run `python -m unittest`; pytest runs the same TestCases.
        command: &["pytest"],
        adjust: None,
    },
    WorldSuite {
        name: "smallvec",
        tool: Tool::Cargo,
        origin: Origin::Crates {
            crates: &[("smallvec", "1.16.6")],
        },
        command: &["cargo", "test"],
        adjust: None,
    },
    WorldSuite {
        name: "thiserror-workspace",
        tool: Tool::Cargo,
        origin: Origin::Crates {
            crates: &[("thiserror", "2.0.21"), ("thiserror-impl", "2.0.21")],
        },
        command: &["cargo", "test"],
        adjust: Some(join_thiserror_workspace),
    },
    WorldSuite {
        name: "memoffset",
        tool: Tool::Cargo,
        origin: Origin::Crates {
            crates: &[("memoffset", "0.9.1")],
        },
        command: &["cargo", "test"],
        adjust: None,
    },
    WorldSuite {
        name: "go-cmp",
        tool: Tool::Go,
        origin: Origin::Debian {
            import_path: "github.com/google/go-cmp",
            package: "golang-github-google-go-cmp-dev",
        },
        command: &["go", "test", "-json", "./..."],
        adjust: None,
    },
    WorldSuite {
        name: "pkg-errors",
        tool: Tool::Go,
        origin: Origin::Debian {
            import_path: "github.com/pkg/errors",
            package: "golang-github-pkg-errors-dev",
        },
        command: &["go", "test", "-json", "./..."],
        adjust: Some(add_pkg_errors_go_mod),
    },
];

/// The suites named in `names` (all of them when empty), in the benchmark's order; an unknown
/// name is an error naming the known ones.
pub(crate) fn select(names: &[String]) -> Result<Vec<WorldSuite>, String> {
    if let Some(unknown) = names
        .iter()
        .find(|name| !SUITES.iter().any(|s| s.name == name.as_str()))
    {
        let known: Vec<&str> = SUITES.iter().map(|s| s.name).collect();
        return Err(format!(
            "no suite named {unknown:?}; the suites are {}",
            known.join(", ")
        ));
    }
    Ok(SUITES
        .iter()
        .filter(|s| names.is_empty() || names.iter().any(|n| n == s.name))
        .copied()
        .collect())
}

/// A suite's trees in the cache, and the variables its commands need on both sides.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    /// Each pristine tree, with where it goes in a copy (empty: the copy's root).
    pub trees: Vec<(PathBuf, PathBuf)>,
    /// Variables on top of the common environment (a virtualenv's `PATH`, Go's settings).
    pub env: BTreeMap<String, String>,
}

impl WorldSuite {
    /// Fetches the suite with `fetch.sh`, or finds it in the cache.
    pub(crate) fn fetch(&self) -> Result<Fetched, BenchError> {
        let mut env = BTreeMap::new();
        let trees = match self.origin {
            Origin::Pypi {
                name,
                version,
                requirements,
            } => {
                let mut args = vec!["pypi", name, version, PYTEST];
                args.extend_from_slice(requirements);
                let line = self.fetch_script(&args)?;
                let (src, venv) = line.split_once('\t').ok_or_else(|| {
                    BenchError::Tool(format!("fetch.sh printed {line:?}, not SOURCE<TAB>VENV"))
                })?;
                let path = std::env::var("PATH").unwrap_or_default();
                env.insert("PATH".to_owned(), format!("{venv}/bin:{path}"));
                env.insert("VIRTUAL_ENV".to_owned(), venv.to_owned());
                vec![(PathBuf::from(src), PathBuf::new())]
            }
            Origin::Crates { crates } => {
                // Several crates make a workspace: each in a directory named after it.
                let mut trees = Vec::new();
                for (name, version) in crates {
                    let tree = PathBuf::from(self.fetch_script(&["crate", name, version])?);
                    let place = if crates.len() == 1 {
                        PathBuf::new()
                    } else {
                        PathBuf::from(name)
                    };
                    trees.push((tree, place));
                }
                trees
            }
            Origin::Debian {
                import_path,
                package,
            } => {
                let line = self.fetch_script(&["go", import_path, package])?;
                // Debian's sources offline: no module proxy, go.sum written as needed.
                env.insert("GOPROXY".to_owned(), "off".to_owned());
                env.insert("GOFLAGS".to_owned(), "-mod=mod".to_owned());
                vec![(PathBuf::from(line), PathBuf::new())]
            }
        };
        Ok(Fetched { trees, env })
    }

    /// Runs `fetch.sh ARGS` and returns the first line it prints.
    fn fetch_script(&self, args: &[&str]) -> Result<String, BenchError> {
        let out = Command::new("bash")
            .arg(FETCH_SCRIPT)
            .args(args)
            .output()
            .map_err(|source| BenchError::Io {
                what: "start bash for tests/world/fetch.sh",
                source,
            })?;
        if !out.status.success() {
            return Err(BenchError::Tool(format!(
                "suite {} is unavailable: fetch.sh {} failed ({}): {} (leave it out with \
                 --suite)",
                self.name,
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(str::to_owned)
            .ok_or_else(|| BenchError::Tool(format!("fetch.sh {} printed nothing", args.join(" "))))
    }

    /// A fresh, writable copy of the suite at `dir` (which must not exist), adjusted as the
    /// module's table says.
    pub(crate) fn copy(&self, fetched: &Fetched, dir: &Path) -> Result<(), BenchError> {
        let io = |what| move |source| BenchError::Io { what, source };
        for (tree, place) in &fetched.trees {
            copy_tree(tree, &dir.join(place))?;
        }
        if let Some(adjust) = self.adjust {
            adjust(dir).map_err(io("adjust a suite's copy"))?;
        }
        Ok(())
    }
}

/// Copies the tree at `from` into `to` with `cp -R`, every file made writable (Debian's Go
/// sources are read-only, and a copy may take a go.mod).
fn copy_tree(from: &Path, to: &Path) -> Result<(), BenchError> {
    std::fs::create_dir_all(to).map_err(|source| BenchError::Io {
        what: "create a copy's directory",
        source,
    })?;
    let status = Command::new("cp")
        .args(["-R", "--no-preserve=mode,ownership", "-T"])
        .arg(from)
        .arg(to)
        .status()
        .map_err(|source| BenchError::Io {
            what: "start cp",
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(BenchError::Tool(format!(
            "cp -R {} {} failed ({status})",
            from.display(),
            to.display()
        )))
    }
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

fn add_pkg_errors_go_mod(dir: &Path) -> std::io::Result<()> {
    std::fs::write(
        dir.join("go.mod"),
        "module github.com/pkg/errors\n\ngo 1.13\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_are_selected_by_name_in_the_benchmarks_order() {
        let all = select(&[]).expect("all");
        assert_eq!(all.len(), SUITES.len());
        let some = select(&["smallvec".to_owned(), "dateutil".to_owned()]).expect("two");
        let names: Vec<&str> = some.iter().map(|s| s.name).collect();
        assert_eq!(names, ["dateutil", "smallvec"]);
        let error = select(&["smalvec".to_owned()]).expect_err("unknown");
        assert!(
            error.contains("\"smalvec\"") && error.contains("markupsafe"),
            "{error}"
        );
    }

    #[test]
    fn a_copy_is_writable_and_adjusted() {
        let scratch = tempfile::tempdir().expect("temp dir");
        let pristine = scratch.path().join("pristine");
        std::fs::create_dir_all(pristine.join("sub")).expect("mkdir");
        let file = pristine.join("sub/errors.go");
        std::fs::write(&file, "package errors\n").expect("write");
        let mut read_only = std::fs::metadata(&file).expect("stat").permissions();
        read_only.set_readonly(true);
        std::fs::set_permissions(&file, read_only).expect("chmod");
        let suite = SUITES
            .iter()
            .find(|s| s.name == "pkg-errors")
            .expect("pkg-errors");
        let fetched = Fetched {
            trees: vec![(pristine, PathBuf::new())],
            env: BTreeMap::new(),
        };
        let copy = scratch.path().join("copy");
        suite.copy(&fetched, &copy).expect("copy");
        let copied = copy.join("sub/errors.go");
        assert!(
            !std::fs::metadata(&copied)
                .expect("stat")
                .permissions()
                .readonly()
        );
        assert!(
            std::fs::read_to_string(copy.join("go.mod"))
                .expect("go.mod")
                .starts_with("module github.com/pkg/errors")
        );
    }
}

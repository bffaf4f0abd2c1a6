//! The job benchmarks' fixture: a git repository of many small files and `suite.sh`, a POSIX
//! sh test suite for the generic command runner (`tessera_runners::command`) whose tests all
//! pass at once. It owns the files and the script; it runs nothing but `git`.
//!
//! `sh suite.sh list` prints the ids (`bench::t0000`, ...); `sh suite.sh run --junit FILE
//! ID...` writes a JUnit report with one passing case per id (classname `bench`, name `t0000`,
//! which the runner matches back to the id) and exits 0. The tests do no work and report a
//! time of zero, so whatever a batch costs is the system's overhead.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::BenchError;

/// The suite's file name in the repository.
pub(crate) const SUITE: &str = "suite.sh";

/// The list command, as `tessera run --list-command` takes it.
pub(crate) const LIST_COMMAND: &str = "sh suite.sh list";

/// The run template, as `tessera run -- ...` takes it.
pub(crate) const RUN_TEMPLATE: [&str; 6] =
    ["sh", "suite.sh", "run", "--junit", "{junit}", "{tests}"];

/// The id of test `index`.
pub(crate) fn test_id(index: usize) -> (String, String) {
    ("bench".to_owned(), format!("t{index:04}"))
}

/// `suite.sh` with `tests` tests.
pub(crate) fn suite_script(tests: usize) -> String {
    format!(
        r#"#!/bin/sh
# tessera-bench: {tests} tests that pass at once, for Tessera's generic command runner.
#   sh suite.sh list                    prints the test ids, one a line
#   sh suite.sh run --junit FILE ID...  runs the named tests and writes a JUnit report to FILE
set -eu
TESTS={tests}
case "${{1:-}}" in
  list)
    i=0
    while [ "$i" -lt "$TESTS" ]; do printf 'bench::t%04d\n' "$i"; i=$((i + 1)); done ;;
  run)
    shift
    junit=/dev/null
    if [ "${{1:-}}" = --junit ]; then junit=$2; shift 2; fi
    {{
      printf '<?xml version="1.0" encoding="UTF-8"?>\n<testsuites>\n<testsuite name="bench">\n'
      for id in "$@"; do
        printf '<testcase classname="%s" name="%s" time="0.000"/>\n' "${{id%%::*}}" "${{id#*::}}"
      done
      printf '</testsuite>\n</testsuites>\n'
    }} > "$junit" ;;
  *) echo "usage: sh suite.sh list | run --junit FILE ID..." >&2; exit 2 ;;
esac
"#
    )
}

/// The shape of the repository.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RepoShape {
    /// Directories of filler files.
    pub dirs: usize,
    /// Filler files per directory.
    pub files_per_dir: usize,
    /// Tests in `suite.sh`.
    pub tests: usize,
}

impl RepoShape {
    /// Files in the repository, `suite.sh` included.
    pub(crate) fn files(&self) -> usize {
        self.dirs * self.files_per_dir + 1
    }
}

/// Writes the repository at `root` (which must not exist yet) and commits it with a fixed
/// author.
pub(crate) fn create(root: &Path, shape: RepoShape) -> Result<(), BenchError> {
    let io = |what| move |source| BenchError::Io { what, source };
    std::fs::create_dir_all(root).map_err(io("create the fixture repository"))?;
    for dir in 0..shape.dirs {
        let dir_path = root.join(format!("src/m{dir:03}"));
        std::fs::create_dir_all(&dir_path).map_err(io("create a fixture directory"))?;
        for file in 0..shape.files_per_dir {
            let text = format!(
                "// module {dir}, file {file}: filler for the snapshot, never read by a test.\n{}",
                format!("pub const C{file}: u32 = {};\n", dir * 1_000 + file).repeat(8)
            );
            std::fs::write(dir_path.join(format!("f{file:03}.rs")), text)
                .map_err(io("write a fixture file"))?;
        }
    }
    std::fs::write(root.join(SUITE), suite_script(shape.tests))
        .map_err(io("write the fixture suite"))?;
    git(root, &["init", "--quiet", "--initial-branch=main"])?;
    git(root, &["add", "-A"])?;
    git(
        root,
        &[
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.com",
            "commit",
            "--quiet",
            "--no-gpg-sign",
            "-m",
            "fixture",
        ],
    )
}

fn git(dir: &Path, args: &[&str]) -> Result<(), BenchError> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BenchError::Io {
            what: "run git",
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(BenchError::Tool(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script as the runner drives it: list, then run a few ids into a JUnit report.
    #[test]
    fn the_suite_lists_and_reports_its_tests() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(SUITE), suite_script(12)).expect("write");
        let list = Command::new("sh")
            .args([SUITE, "list"])
            .current_dir(dir.path())
            .output()
            .expect("sh");
        let ids = String::from_utf8(list.stdout).expect("utf-8");
        assert_eq!(ids.lines().count(), 12);
        assert_eq!(ids.lines().nth(11), Some("bench::t0011"));
        let status = Command::new("sh")
            .args([
                SUITE,
                "run",
                "--junit",
                "out.xml",
                "bench::t0003",
                "bench::t0011",
            ])
            .current_dir(dir.path())
            .status()
            .expect("sh");
        assert!(status.success());
        let xml = std::fs::read_to_string(dir.path().join("out.xml")).expect("report");
        assert!(xml.contains(r#"<testcase classname="bench" name="t0003" time="0.000"/>"#));
        assert_eq!(xml.matches("<testcase").count(), 2);
        assert_eq!(test_id(3), ("bench".to_owned(), "t0003".to_owned()));
    }
}

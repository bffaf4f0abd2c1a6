//! What `tessera run` refuses before a job starts (issue 10): each case exits 2 with a message
//! that names the problem, without reaching any coordinator (none runs here; a refusal that
//! tried to connect would print a connection error and exit 3 instead).

use std::path::Path;
use std::process::Command;

use tessera_tests::tessera_bin;

/// Runs `tessera run --coordinator <nowhere> ARGS` in `dir`: (exit code, stderr).
fn run_in(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(tessera_bin())
        .current_dir(dir)
        .args(["run", "--coordinator", "http://127.0.0.1:9"])
        .args(args)
        .env_remove("TESSERA_COORDINATOR")
        .output()
        .expect("tessera run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("project");
    std::fs::create_dir_all(dir.path().join("tests")).expect("tests dir");
    std::fs::write(
        dir.path().join("tests/test_a.py"),
        "def test_a():\n    pass\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("go.mod"),
        "module example.com/p\n\ngo 1.19\n",
    )
    .expect("write");
    std::fs::create_dir_all(dir.path().join("pkg")).expect("pkg dir");
    std::fs::write(dir.path().join("pkg/p.go"), "package pkg\n").expect("write");
    dir
}

#[test]
fn an_unknown_tool_needs_runner_command() {
    let dir = project();
    let (code, stderr) = run_in(dir.path(), &["--", "make", "check"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("make check"), "{stderr}");
    assert!(stderr.contains("--runner command"), "{stderr}");
}

#[test]
fn a_pytest_path_outside_the_project_is_named() {
    let dir = project();
    let (code, stderr) = run_in(dir.path(), &["--", "pytest", "../elsewhere/test_x.py"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("../elsewhere/test_x.py"), "{stderr}");
    let (code, stderr) = run_in(dir.path(), &["--", "pytest", "tests/test_missing.py"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("tests/test_missing.py"), "{stderr}");
}

#[test]
fn a_go_package_pattern_that_matches_nothing_is_named() {
    let dir = project();
    let (code, stderr) = run_in(dir.path(), &["--", "go", "test", "./nosuch/..."]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("./nosuch/..."), "{stderr}");
}

#[test]
fn by_file_needs_a_runner_that_batches() {
    let dir = project();
    let (code, stderr) = run_in(dir.path(), &["--by-file", "--", "cargo", "test"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--by-file"), "{stderr}");
}

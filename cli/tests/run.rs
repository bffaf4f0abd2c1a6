//! `tessera run` end to end: the built binary, no coordinator configured (so it starts the
//! embedded cluster), a private cache directory, and a copy of an example suite in a fresh git
//! repository.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// A temporary git repository holding a copy of `examples/<name>`, and a cache directory.
struct Project {
    dir: tempfile::TempDir,
    cache: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Project {
    fn copy_of(name: &str) -> Self {
        // The repository's name is the exec root's: make it unique per test run.
        let dir = tempfile::Builder::new()
            .prefix(&format!("tessera-cli-{name}-"))
            .tempdir()
            .unwrap();
        copy_dir(&examples().join(name), dir.path());
        let git = |args: &[&str]| {
            let status = Command::new("git")
                .args(args)
                .current_dir(dir.path())
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@t")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@t")
                .status()
                .unwrap();
            assert!(status.success(), "git {args:?}");
        };
        git(&["init", "-q"]);
        git(&["add", "."]);
        Self {
            dir,
            cache: tempfile::tempdir().unwrap(),
            // Not under /tmp: the agents' sandbox gives each action a private /tmp.
            state: {
                let base = std::path::Path::new("/var/tmp/tessera-tests");
                std::fs::create_dir_all(base).unwrap();
                tempfile::tempdir_in(base).unwrap()
            },
        }
    }

    fn tessera(&self, args: &[&str]) -> Output {
        self.tessera_with(args, &[])
    }

    /// `tessera ARGS` with the variables `env` set. The user's own client config and
    /// coordinator never leak in.
    fn tessera_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let output = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("TESSERA_COORDINATOR")
            .env_remove("TESSERA_CLIENT_CONFIG")
            .env_remove("TESSERA_TOKEN")
            .env_remove("TESSERA_TOKEN_FILE")
            .env_remove("TESSERA_TLS_CA")
            .env("XDG_CACHE_HOME", self.cache.path())
            .env("XDG_CONFIG_HOME", self.cache.path())
            .env("TESSERA_SUBMITTER", "cli-e2e")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        eprintln!(
            "$ tessera {}\n{}{}exit {:?}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            output.status.code()
        );
        output
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() == "__pycache__" || entry.file_name() == ".pytest_cache" {
                continue;
            }
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Whether `python3 -m pytest` works here; a missing tool skips the test, except under CI.
fn have_pytest() -> bool {
    let ok = Command::new("python3")
        .args(["-m", "pytest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "pytest is missing, and CI must run this test"
        );
        eprintln!("skipped: python3 -m pytest is not installed");
    }
    ok
}

const COMMAND_SUITE: &[&str] = &[
    "--list-command",
    "sh suite.sh list",
    "--",
    "sh",
    "suite.sh",
    "run",
    "--junit",
    "{junit}",
    "{tests}",
];

#[test]
fn a_command_suite_fails_with_its_failure_listed_then_answers_from_cache() {
    let project = Project::copy_of("command-suite");
    let state = format!(
        "TESSERA_EXAMPLE_STATE_DIR={}",
        project.state.path().display()
    );
    let junit = project.cache.path().join("report.xml");
    let mut args = vec![
        "run",
        "--retries",
        "2",
        "--env",
        &state,
        "--junit",
        junit.to_str().unwrap(),
    ];
    args.extend_from_slice(COMMAND_SUITE);

    let first = project.tessera(&args);
    assert_eq!(first.status.code(), Some(1));
    let text = stdout(&first);
    assert!(text.contains("FAIL    math::wrong_answer"), "{text}");
    assert!(text.contains("expected 5, got 4"), "{text}");
    assert!(text.contains("FLAKY   env::flaky_once"), "{text}");
    assert_eq!(
        text.lines().last(),
        Some("3 passed, 1 failed, 1 skipped, 1 flaky"),
        "{text}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<flakyFailure"), "{xml}");
    assert!(xml.contains("name=\"math::wrong_answer\""), "{xml}");
    // The embedded cluster is gone, and so is its endpoint file.
    assert!(
        !project
            .cache
            .path()
            .join("tessera/cluster/endpoint")
            .exists()
    );

    let mut json_args = vec!["run", "--json", "--env", &state];
    json_args.extend_from_slice(COMMAND_SUITE);
    let second = project.tessera(&json_args);
    assert_eq!(second.status.code(), Some(1));
    let events: Vec<serde_json::Value> = stdout(&second)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(events[0]["event"], "submitted");
    let planned = events.iter().find(|e| e["event"] == "planned").unwrap();
    assert_eq!(planned["total"], 6);
    // Clean passes are cached; the failure runs again.
    assert!(planned["cached"].as_u64().unwrap() >= 3, "{planned}");
    let finished = events.last().unwrap();
    assert_eq!(finished["event"], "finished");
    assert_eq!(finished["result"], "failed");
    assert_eq!(finished["exit_code"], 1);
    assert!(events.iter().any(|e| e["event"] == "test"
        && e["test"] == "math::wrong_answer"
        && e["outcome"] == "failed"));
}

#[test]
fn a_python_suite_runs_and_reports_cached_results_the_second_time() {
    if !have_pytest() {
        return;
    }
    let project = Project::copy_of("python-suite");
    let state = format!(
        "TESSERA_EXAMPLE_STATE_DIR={}",
        project.state.path().display()
    );
    let junit = project.cache.path().join("report.xml");
    let args = [
        "run",
        "--retries",
        "1",
        "--env",
        &state,
        "--junit",
        junit.to_str().unwrap(),
        "--",
        "python3",
        "-m",
        "pytest",
    ];
    let first = project.tessera(&args);
    assert_eq!(first.status.code(), Some(1));
    let text = stdout(&first);
    assert!(text.contains("FAIL "), "{text}");
    assert!(junit.exists());

    let second = project.tessera(&args);
    assert_eq!(second.status.code(), Some(1));
    let text = stdout(&second);
    let cached = text
        .lines()
        .find_map(|l| {
            l.split(" tests, ")
                .nth(1)?
                .split(" cached")
                .next()?
                .parse::<u32>()
                .ok()
        })
        .unwrap_or(0);
    assert!(cached > 0, "{text}");
}

#[test]
fn usage_errors_exit_2_with_what_to_do() {
    let project = Project::copy_of("command-suite");
    let output = project.tessera(&["run", "--", "make", "check"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--list-command"));
}

#[test]
fn secret_variables_must_be_set_here_and_given_one_way() {
    let project = Project::copy_of("command-suite");
    let mut args = vec!["run", "--secret-env", "TESSERA_E2E_UNSET_SECRET"];
    args.extend_from_slice(COMMAND_SUITE);
    let output = project.tessera(&args);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TESSERA_E2E_UNSET_SECRET is not set here"),
        "{stderr}"
    );

    let mut args = vec!["run", "--secret-env", "API_KEY", "--env", "API_KEY"];
    args.extend_from_slice(COMMAND_SUITE);
    let output = project.tessera_with(&args, &[("API_KEY", "hunter2")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--env API_KEY both set"), "{stderr}");
    assert!(!stderr.contains("hunter2") && !stdout(&output).contains("hunter2"));
}

#[test]
fn a_bad_client_config_exits_2_naming_the_file() {
    let project = Project::copy_of("command-suite");
    let output = project.tessera_with(
        &["status"],
        &[("TESSERA_CLIENT_CONFIG", "/nonexistent/tessera-client.toml")],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/tessera-client.toml"),
        "{stderr}"
    );

    let file = project.cache.path().join("client.toml");
    std::fs::write(
        &file,
        "coordinator = \"http://127.0.0.1:1\"\ntoken = \"x\"\n",
    )
    .unwrap();
    let output = project.tessera_with(
        &["status"],
        &[("TESSERA_CLIENT_CONFIG", file.to_str().unwrap())],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("client.toml") && stderr.contains("token"),
        "{stderr}"
    );

    // A configured coordinator that is not there: exit 3, naming it.
    std::fs::write(
        &file,
        "coordinator = [\"http://127.0.0.1:1\", \"127.0.0.1:2\"]\n",
    )
    .unwrap();
    let output = project.tessera_with(
        &["status"],
        &[("TESSERA_CLIENT_CONFIG", file.to_str().unwrap())],
    );
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("none of the 2 configured coordinators answered")
            && stderr.contains("http://127.0.0.1:2"),
        "{stderr}"
    );
}

#[test]
fn the_security_commands_are_described_in_help() {
    let project = Project::copy_of("command-suite");
    let help = stdout(&project.tessera(&["token", "create", "--help"]));
    for flag in [
        "--role",
        "--name",
        "--instance",
        "--expires",
        "--coordinator",
        "--token-file",
        "--tls-ca",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    let help = stdout(&project.tessera(&["audit", "--help"]));
    for flag in ["--since", "--limit", "--json"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    let help = stdout(&project.tessera(&["run", "--help"]));
    for flag in [
        "--secret-env",
        "--on-behalf-of",
        "TESSERA_ON_BEHALF_OF",
        "config.toml",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

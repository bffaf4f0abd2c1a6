//! `pytest` / `python -m pytest` command lines.

use std::path::Path;

use tessera_runners::{PytestRunner, RunnerConfig};

use super::RunnerChoice;
use crate::exit::CliError;

/// The pytest runner for `command ARGS` (`command` empty: the runner's default), run in `dir`.
pub(super) fn choose(
    command: Vec<String>,
    rest: &[String],
    dir: &Path,
) -> Result<RunnerChoice, CliError> {
    if let Some(path) = pytest_paths(rest).first() {
        return Err(CliError::usage(format!(
            "pytest test paths such as `{path}` are not supported: tessera lists and \
             shards every test under the directory you run it in; cd into the directory \
             to narrow it, or select tests with -k / -m"
        )));
    }
    let mut runner = PytestRunner::new(dir).args(rest.iter().cloned());
    if !command.is_empty() {
        runner = runner.pytest_command(command);
    }
    Ok(RunnerChoice::new(RunnerConfig::Pytest(runner)))
}

/// pytest options whose value is the next argument.
const PYTEST_VALUE_OPTIONS: &[&str] = &[
    "-k",
    "-m",
    "-p",
    "-o",
    "-c",
    "-W",
    "-r",
    "--deselect",
    "--ignore",
    "--ignore-glob",
    "--rootdir",
    "--confcutdir",
    "--basetemp",
    "--tb",
    "--maxfail",
    "--durations",
    "--import-mode",
    "--capture",
    "--log-level",
    "--override-ini",
];

/// Positional arguments of a pytest command line (test paths and node ids).
fn pytest_paths(args: &[String]) -> Vec<String> {
    let mut paths = Vec::new();
    let mut skip_next = false;
    for arg in args {
        if skip_next {
            skip_next = false;
            continue;
        }
        if PYTEST_VALUE_OPTIONS.contains(&arg.as_str()) {
            skip_next = true;
        } else if !arg.starts_with('-') {
            paths.push(arg.clone());
        }
    }
    paths
}

//! `cargo test` command lines.

use std::path::Path;

use tessera_runners::{CargoTestRunner, RunnerConfig};

use super::RunnerChoice;
use crate::exit::CliError;

/// The cargo runner for `cargo test ARGS`, run in `dir`, with its target under `exec_root`.
pub(super) fn choose_cargo(
    rest: &[String],
    dir: &Path,
    exec_root: &Path,
) -> Result<RunnerChoice, CliError> {
    let target_env = exec_root.join("target").display().to_string();
    let cargo_args = cargo_args(rest, "cargo test")?;
    if let Some(bad) = cargo_args
        .iter()
        .find(|a| matches!(a.as_str(), "--no-run" | "--doc"))
    {
        return Err(CliError::usage(format!(
            "`cargo test {bad}` is not supported: tessera builds the test binaries and runs every test they list"
        )));
    }
    Ok(RunnerChoice {
        persist: vec!["target".to_owned()],
        ..RunnerChoice::new(RunnerConfig::Cargo(
            CargoTestRunner::new(dir)
                .cargo_args(cargo_args)
                .env("CARGO_TARGET_DIR", target_env),
        ))
    })
}

/// Cargo's arguments up to `--`; test-binary arguments after it are refused, since tessera
/// picks and runs the tests itself.
pub(super) fn cargo_args(args: &[String], tool: &str) -> Result<Vec<String>, CliError> {
    match args.iter().position(|a| a == "--") {
        None => Ok(args.to_vec()),
        Some(at) if at + 1 == args.len() => Ok(args[..at].to_vec()),
        Some(at) => Err(CliError::usage(format!(
            "test arguments after `{tool} ... --` ({}) are not supported: tessera lists the \
             tests and runs each one itself; drop them",
            args[at + 1..].join(" ")
        ))),
    }
}

/// Removes `--flag VALUE` / `--flag=VALUE` for any of `names`, returning the last value.
pub(super) fn take_option(
    args: &mut Vec<String>,
    names: &[&str],
) -> Result<Option<String>, CliError> {
    let mut value = None;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if names.contains(&arg.as_str()) {
            if i + 1 >= args.len() {
                return Err(CliError::usage(format!("{arg} needs a value")));
            }
            value = Some(args.remove(i + 1));
            args.remove(i);
            continue;
        }
        if let Some(v) = names
            .iter()
            .find_map(|n| arg.strip_prefix(&format!("{n}=")))
        {
            value = Some(v.to_owned());
            args.remove(i);
            continue;
        }
        i += 1;
    }
    Ok(value)
}

//! `go test` command lines.

use std::path::Path;

use tessera_runners::{GoTestRunner, RunnerConfig};

use super::RunnerChoice;
use crate::exit::CliError;

/// The go runner for `go test ARGS`, run in `dir`.
pub(super) fn choose(rest: &[String], dir: &Path) -> Result<RunnerChoice, CliError> {
    let (flags, packages) = split_go_args(rest)?;
    let mut runner = GoTestRunner::new(dir).args(flags);
    if !packages.is_empty() {
        runner = runner.packages(packages);
    }
    Ok(RunnerChoice::new(RunnerConfig::Go(runner)))
}

/// `go test` flags whose value may be the next argument.
const GO_VALUE_FLAGS: &[&str] = &[
    "bench",
    "benchtime",
    "blockprofile",
    "count",
    "covermode",
    "coverpkg",
    "coverprofile",
    "cpu",
    "cpuprofile",
    "exec",
    "gcflags",
    "ldflags",
    "asmflags",
    "memprofile",
    "mod",
    "modfile",
    "mutexprofile",
    "o",
    "outputdir",
    "overlay",
    "p",
    "parallel",
    "pkgdir",
    "shuffle",
    "tags",
    "timeout",
    "toolexec",
    "trace",
    "vet",
    "fuzz",
    "fuzztime",
];

/// Splits `go test` arguments into flags and package patterns.
fn split_go_args(args: &[String]) -> Result<(Vec<String>, Vec<String>), CliError> {
    let mut flags = Vec::new();
    let mut packages = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            packages.push(arg.clone());
            continue;
        };
        let name = flag.split('=').next().unwrap_or_default();
        if matches!(name, "run" | "skip" | "list" | "json") {
            return Err(CliError::usage(format!(
                "`go test -{name}` is not supported: tessera lists the tests and selects each \
                 batch itself; drop it"
            )));
        }
        flags.push(arg.clone());
        if !flag.contains('=') && GO_VALUE_FLAGS.contains(&name) {
            match iter.next() {
                Some(value) => flags.push(value.clone()),
                None => return Err(CliError::usage(format!("go test {arg} needs a value"))),
            }
        }
    }
    Ok((flags, packages))
}

//! `cargo nextest run` command lines.

use std::path::Path;

use tessera_runners::{NextestRunner, RunnerConfig};

use super::RunnerChoice;
use super::cargo::{cargo_args, take_option};
use crate::exit::CliError;

/// The nextest runner for `cargo nextest run ARGS`.
pub(super) fn choose(
    rest: &[String],
    dir: &Path,
    exec_root: &Path,
) -> Result<RunnerChoice, CliError> {
    let target = exec_root.join("target");
    let target_env = target.display().to_string();
    let mut cargo_args = cargo_args(rest, "cargo nextest run")?;
    let profile = take_option(&mut cargo_args, &["--profile", "-P"])?;
    let mut runner = NextestRunner::new(dir)
        .archive_file(target.join("tessera/nextest-archive.tar.zst"))
        .cargo_args(cargo_args)
        .env("CARGO_TARGET_DIR", target_env);
    if let Some(profile) = profile {
        runner = runner.profile(profile);
    }
    Ok(RunnerChoice {
        persist: vec!["target".to_owned()],
        ..RunnerChoice::new(RunnerConfig::Nextest(runner))
    })
}

//! `cargo test` command lines: cargo's own arguments (which change what is built, so they stay
//! in the cache key) and libtest's after `--` (name filters, `--exact`, `--skip`, `--ignored`,
//! `--include-ignored`, and the harmless printing and threading options), read by
//! [`TestArgs::parse`]. Anything else after `--` is refused with the nearest supported form.

use std::path::Path;

use tessera_runners::cargo::TestArgs;
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
    let (cargo_args, test_args) = match rest.iter().position(|a| a == "--") {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    if cargo_args.iter().any(|a| a == "--no-run") {
        return Err(CliError::usage(
            "`cargo test --no-run` is not supported: tessera builds the test binaries and runs \
             every test they list; drop --no-run, or run it directly",
        ));
    }
    let test_args = TestArgs::parse(test_args)
        .map_err(|e| CliError::usage(format!("{e}; tessera lists the tests and runs each one")))?;
    // cargo's quiet mode only changes what cargo prints, and the prepare step needs cargo's
    // verbose output to find the doctests (cargo refuses both at once).
    let cargo_args = cargo_args
        .iter()
        .filter(|a| !matches!(a.as_str(), "-q" | "--quiet"))
        .cloned();
    Ok(RunnerChoice {
        persist: vec!["target".to_owned()],
        ..RunnerChoice::new(RunnerConfig::Cargo(
            CargoTestRunner::new(dir)
                .cargo_args(cargo_args)
                .test_args(test_args)
                .env("CARGO_TARGET_DIR", target_env),
        ))
    })
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tessera_runners::cargo::IgnoredTests;

    use super::super::{Placement, choose_runner};
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn choose(s: &str) -> Result<CargoTestRunner, CliError> {
        let placement = Placement::new(
            Path::new("/home/ann/widget"),
            Path::new("/home/ann/widget/crates/a"),
            PathBuf::from("/var/tmp/tessera/widget"),
        );
        let choice = choose_runner(None, None, &argv(s), &placement)?;
        assert_eq!(choice.persist, vec!["target"]);
        match choice.config {
            RunnerConfig::Cargo(runner) => Ok(runner),
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn cargo_test_becomes_the_cargo_runner_with_a_persistent_target() {
        let runner = choose("cargo test -p foo --features x").unwrap();
        assert_eq!(runner.cargo_args, argv("-p foo --features x"));
        assert_eq!(
            runner.dir,
            PathBuf::from("/var/tmp/tessera/widget/crates/a")
        );
        assert_eq!(
            runner.env["CARGO_TARGET_DIR"],
            "/var/tmp/tessera/widget/target"
        );
        // A trailing `--` with nothing after it is harmless.
        assert_eq!(
            choose("cargo test --").unwrap().test_args,
            TestArgs::default()
        );
        assert!(choose("cargo test --no-run").is_err());
    }

    #[test]
    fn cargo_options_that_change_the_build_reach_cargo() {
        let runner =
            choose("cargo test --workspace --all-features --release --doc -q -- x").unwrap();
        assert_eq!(
            runner.cargo_args,
            argv("--workspace --all-features --release --doc")
        );
        assert_eq!(runner.test_args.filters, ["x"]);
    }

    #[test]
    fn libtest_selection_after_the_double_dash_selects_and_stays_out_of_the_key() {
        let runner = choose("cargo test --lib -- add --exact --skip slow --ignored").unwrap();
        assert_eq!(runner.test_args.filters, ["add"]);
        assert!(runner.test_args.exact);
        assert_eq!(runner.test_args.skip, ["slow"]);
        assert_eq!(runner.test_args.ignored, IgnoredTests::Only);
        let key = RunnerConfig::Cargo(runner).key_settings();
        let plain = RunnerConfig::Cargo(choose("cargo test --lib -- --include-ignored").unwrap());
        assert_eq!(key, plain.key_settings());
        let unfiltered = RunnerConfig::Cargo(choose("cargo test --lib").unwrap());
        assert_ne!(
            key,
            unfiltered.key_settings(),
            "running ignored tests changes outcomes"
        );
    }

    #[test]
    fn harmless_libtest_options_are_accepted() {
        let runner =
            choose("cargo test -- --test-threads 1 --nocapture --show-output --color never")
                .unwrap();
        assert_eq!(runner.test_args, TestArgs::default());
    }

    #[test]
    fn unknown_libtest_options_are_refused_with_the_nearest_supported_one() {
        let err = choose("cargo test -- --include-ignore").unwrap_err();
        assert!(matches!(err, CliError::Usage(_)));
        assert!(
            err.to_string().contains("did you mean `--include-ignored`"),
            "{err}"
        );
        let err = choose("cargo test -- --logfile x").unwrap_err();
        assert!(err.to_string().contains("--logfile"), "{err}");
    }
}

//! `cargo nextest run` command lines: each argument goes where it acts.
//!
//! | arguments | where they go |
//! | --- | --- |
//! | build options (`-p`, `--workspace`, `--features`, `--release`, `--cargo-profile`, target selection) | `cargo nextest archive` in the prepare step |
//! | `-P`/`--profile` | every list and run command (taken out first, as for `cargo test`) |
//! | `-E`/`--filterset`, test name filters, and after `--`: `--exact`, `--skip`, names | `cargo nextest list` only: they select tests, so they are not in the cache key |
//! | `--run-ignored`, `--ignored`, `--include-ignored` | which tests are listed, and whether the listed ignored ones run |
//! | `-j`/`--test-threads`, `--retries`, `--flaky-result`, `--config-file` | every list and run command |
//! | `--fail-fast`, `--no-fail-fast`, `--max-fail 1` | the job's fail-fast |
//! | output options (`--color`, `--status-level`, `--no-capture`, ...) | dropped: tessera shows results its own way |
//! | `--no-run`, `--archive-file`, `--partition`, `--message-format`, `--stress-*`, ... | refused, saying what to do instead |

use std::path::Path;

use tessera_runners::{NextestRunner, RunnerConfig};

use super::RunnerChoice;
use super::cargo::take_option;
use crate::exit::CliError;

/// The nextest runner for `cargo nextest run ARGS`.
pub(super) fn choose(
    rest: &[String],
    dir: &Path,
    exec_root: &Path,
) -> Result<RunnerChoice, CliError> {
    let target = exec_root.join("target");
    let target_env = target.display().to_string();
    let mut rest = rest.to_vec();
    let profile = take_option(&mut rest, &["--profile", "-P"])?;
    let line = NextestCommandLine::parse(&rest)?;
    let mut runner = NextestRunner::new(dir)
        .archive_file(target.join("tessera/nextest-archive.tar.zst"))
        .cargo_args(line.cargo_args)
        .filters(line.filters)
        .run_args(line.run_args)
        .env("CARGO_TARGET_DIR", target_env);
    if let Some(profile) = profile {
        runner = runner.profile(profile);
    }
    if let Some(which) = line.run_ignored {
        runner = runner.run_ignored(which);
    }
    Ok(RunnerChoice {
        persist: vec!["target".to_owned()],
        fail_fast: line.fail_fast,
        ..RunnerChoice::new(RunnerConfig::Nextest(runner))
    })
}

/// Where one option goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `cargo nextest archive` (building).
    Build,
    /// Selection, for the list command.
    Filter,
    /// `--run-ignored WHICH`.
    RunIgnored,
    /// Listing and running.
    Run,
    /// Output only: dropped.
    Output,
}

/// Options taking a value, with their role.
const VALUE_OPTIONS: &[(&str, Role)] = &[
    ("-p", Role::Build),
    ("--package", Role::Build),
    ("--exclude", Role::Build),
    ("--bin", Role::Build),
    ("--example", Role::Build),
    ("--test", Role::Build),
    ("--bench", Role::Build),
    ("-F", Role::Build),
    ("--features", Role::Build),
    ("--build-jobs", Role::Build),
    ("--cargo-profile", Role::Build),
    ("--target", Role::Build),
    ("--target-dir", Role::Build),
    ("--manifest-path", Role::Build),
    ("--config", Role::Build),
    ("-Z", Role::Build),
    ("-E", Role::Filter),
    ("--filterset", Role::Filter),
    ("--filter-expr", Role::Filter),
    ("--run-ignored", Role::RunIgnored),
    ("-j", Role::Run),
    ("--test-threads", Role::Run),
    ("--retries", Role::Run),
    ("--flaky-result", Role::Run),
    ("--config-file", Role::Run),
    ("--color", Role::Output),
    ("--status-level", Role::Output),
    ("--final-status-level", Role::Output),
    ("--failure-output", Role::Output),
    ("--success-output", Role::Output),
    ("--show-progress", Role::Output),
    ("--max-progress-running", Role::Output),
    ("--no-tests", Role::Output),
];

/// Options without a value that only change what nextest prints.
const OUTPUT_FLAGS: &[&str] = &[
    "-v",
    "--verbose",
    "--no-pager",
    "--hide-progress-bar",
    "--no-output-indent",
    "--no-input-handler",
    "--no-capture",
    "--nocapture",
];

/// Options that cannot be honoured, with what to do instead.
const REFUSED: &[(&str, &str)] = &[
    ("--no-run", "it builds without running; run it directly"),
    (
        "--archive-file",
        "tessera builds its own archive in the prepare step; drop it",
    ),
    (
        "--partition",
        "tessera spreads the tests over its agents itself; drop it",
    ),
    (
        "--message-format",
        "tessera reads nextest's results itself; use tessera's --json or --junit",
    ),
    (
        "--stress-count",
        "stress runs are not supported; run them directly",
    ),
    (
        "--stress-duration",
        "stress runs are not supported; run them directly",
    ),
    ("--rerun", "use tessera's own --retries"),
    ("-R", "use tessera's own --retries"),
    ("--debugger", "debug directly, not on the fleet"),
    ("--tracer", "trace directly, not on the fleet"),
    (
        "--max-fail",
        "only --max-fail 1 (fail-fast) is supported; drop it or use --fail-fast",
    ),
];

/// What a `cargo nextest run` command line asks for.
#[derive(Debug, Default)]
struct NextestCommandLine {
    cargo_args: Vec<String>,
    filters: Vec<String>,
    run_args: Vec<String>,
    run_ignored: Option<String>,
    fail_fast: bool,
}

impl NextestCommandLine {
    fn parse(args: &[String]) -> Result<Self, CliError> {
        let mut line = Self::default();
        let (options, after_dashes) = match args.iter().position(|a| a == "--") {
            Some(at) => (&args[..at], &args[at + 1..]),
            None => (args, &[][..]),
        };
        let mut names = Vec::new();
        let mut iter = options.iter();
        while let Some(arg) = iter.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) if name.starts_with('-') => (name, Some(value.to_owned())),
                _ => (arg.as_str(), None),
            };
            if matches!((name, inline.as_deref()), ("--max-fail", Some("1"))) {
                line.fail_fast = true;
                continue;
            }
            if name == "--max-fail" && iter.as_slice().first().is_some_and(|v| v == "1") {
                iter.next();
                line.fail_fast = true;
                continue;
            }
            if let Some((_, why)) = REFUSED.iter().find(|(flag, _)| *flag == name) {
                return Err(CliError::usage(format!(
                    "`cargo nextest run {name}` is not supported: {why}"
                )));
            }
            match name {
                "--fail-fast" => line.fail_fast = true,
                "--no-fail-fast" => line.fail_fast = false,
                "--ignored" => line.run_ignored = Some("only".to_owned()),
                "--include-ignored" => line.run_ignored = Some("all".to_owned()),
                flag if OUTPUT_FLAGS.contains(&flag) => {}
                flag if flag.starts_with('-') => {
                    let role = VALUE_OPTIONS
                        .iter()
                        .find(|(option, _)| *option == flag)
                        .map(|(_, role)| *role);
                    let Some(role) = role else {
                        // A flag without a value: cargo's (`--workspace`, `--release`, ...).
                        line.cargo_args.push(arg.clone());
                        continue;
                    };
                    let value = match inline {
                        Some(value) => value,
                        None => iter
                            .next()
                            .ok_or_else(|| {
                                CliError::usage(format!("cargo nextest run {arg} needs a value"))
                            })?
                            .clone(),
                    };
                    line.take(role, flag, value);
                }
                // A test name filter.
                _ => names.push(arg.clone()),
            }
        }
        // After `--`: libtest-style filters and options, all selection except the two that
        // say whether ignored tests run.
        let mut test_args = Vec::new();
        let mut after = after_dashes.iter();
        while let Some(arg) = after.next() {
            match arg.as_str() {
                "--ignored" => line.run_ignored = Some("only".to_owned()),
                "--include-ignored" => line.run_ignored = Some("all".to_owned()),
                "--exact" => test_args.push(arg.clone()),
                "--skip" => {
                    test_args.push(arg.clone());
                    match after.next() {
                        Some(pattern) => test_args.push(pattern.clone()),
                        None => {
                            return Err(CliError::usage(
                                "cargo nextest run -- --skip needs a pattern",
                            ));
                        }
                    }
                }
                "--nocapture" | "--no-capture" => {}
                other if other.starts_with('-') => {
                    return Err(CliError::usage(format!(
                        "`cargo nextest run -- {other}` is not supported: after `--` tessera \
                         takes test name filters, --exact, --skip, --ignored and \
                         --include-ignored; drop it"
                    )));
                }
                _ => test_args.push(arg.clone()),
            }
        }
        line.filters.extend(names);
        if !test_args.is_empty() {
            line.filters.push("--".to_owned());
            line.filters.extend(test_args);
        }
        Ok(line)
    }

    fn take(&mut self, role: Role, flag: &str, value: String) {
        match role {
            Role::Build => self.cargo_args.extend([flag.to_owned(), value]),
            Role::Filter => self.filters.extend(["-E".to_owned(), value]),
            Role::RunIgnored => self.run_ignored = Some(value),
            Role::Run => self.run_args.extend([flag.to_owned(), value]),
            Role::Output => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn choose_line(args: &[String]) -> Result<(NextestRunner, bool), CliError> {
        let choice = choose(
            args,
            Path::new("/var/tmp/tessera/widget/crates/a"),
            Path::new("/var/tmp/tessera/widget"),
        )?;
        assert_eq!(choice.persist, vec!["target"]);
        match choice.config {
            RunnerConfig::Nextest(runner) => Ok((runner, choice.fail_fast)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cargo_nextest_run_becomes_nextest_with_its_profile() {
        let (runner, fail_fast) = choose_line(&argv("--workspace --profile ci")).unwrap();
        assert_eq!(runner.cargo_args, argv("--workspace"));
        assert_eq!(runner.profile.as_deref(), Some("ci"));
        assert!(
            runner
                .archive_file
                .starts_with("/var/tmp/tessera/widget/target")
        );
        assert_eq!(
            runner.dir,
            PathBuf::from("/var/tmp/tessera/widget/crates/a")
        );
        assert!(!fail_fast);
    }

    #[test]
    fn each_argument_goes_where_it_acts() {
        let mut args = argv(
            "-p foo --features=x,y --release -P ci -j 4 --retries 2 --color never \
             --no-fail-fast --run-ignored all name_part",
        );
        args.extend(["-E".to_owned(), "test(a) & !test(slow)".to_owned()]);
        args.extend(argv("-- --exact tests::b --skip flaky"));
        let (runner, fail_fast) = choose_line(&args).unwrap();
        assert_eq!(runner.cargo_args, argv("-p foo --features x,y --release"));
        assert_eq!(runner.profile.as_deref(), Some("ci"));
        assert_eq!(runner.run_args, argv("-j 4 --retries 2"));
        assert_eq!(runner.run_ignored.as_deref(), Some("all"));
        assert_eq!(
            runner.filters,
            [
                "-E",
                "test(a) & !test(slow)",
                "name_part",
                "--",
                "--exact",
                "tests::b",
                "--skip",
                "flaky"
            ]
        );
        assert!(!fail_fast);
        // The selection is not part of the cache key; how tests run is.
        let key = runner.without_selection();
        assert!(key.filters.is_empty());
        assert_eq!(key.run_args, argv("-j 4 --retries 2"));
    }

    #[test]
    fn fail_fast_and_ignored_tests_as_nextest_spells_them() {
        let (runner, fail_fast) = choose_line(&argv("--fail-fast -- --ignored")).unwrap();
        assert!(fail_fast);
        assert_eq!(runner.run_ignored.as_deref(), Some("only"));
        assert!(runner.filters.is_empty());
        let (_, fail_fast) = choose_line(&argv("--max-fail 1")).unwrap();
        assert!(fail_fast);
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_with_what_to_do() {
        for (line, words) in [
            ("--no-run", "directly"),
            ("--partition count:1/2", "spreads"),
            ("--max-fail 3", "--fail-fast"),
            ("--message-format libtest-json", "--junit"),
            ("-- --test-threads 1", "--exact"),
        ] {
            let err = choose_line(&argv(line)).unwrap_err();
            assert!(matches!(err, CliError::Usage(_)), "{line}");
            assert!(err.to_string().contains(words), "{line}: {err}");
        }
        assert!(choose_line(&argv("-E")).is_err());
    }
}

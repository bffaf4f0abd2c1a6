//! What `tessera run` submits: the runner inferred from the command line, the environment and
//! platform, as a `tessera.v1.JobSpec`. Pure functions of their inputs, so they are unit-tested
//! without a coordinator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tessera_proto::reapi::{command::EnvironmentVariable, platform::Property};
use tessera_proto::tessera::v1::JobSpec;
use tessera_proto::time::to_proto_duration;
use tessera_runners::{
    CargoTestRunner, CommandRunner, GoTestRunner, NextestRunner, PytestRunner, RunnerConfig,
};

use crate::exit::CliError;

/// `--runner`: which adapter runs the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RunnerKind {
    /// `cargo test` (libtest binaries, one test per process).
    Cargo,
    /// `cargo nextest run`.
    Nextest,
    /// pytest.
    Pytest,
    /// `go test`.
    Go,
    /// Any command: `--list-command` prints the ids, the arguments are the run template.
    Command,
}

impl RunnerKind {
    fn name(self) -> &'static str {
        match self {
            Self::Cargo => "cargo",
            Self::Nextest => "nextest",
            Self::Pytest => "pytest",
            Self::Go => "go",
            Self::Command => "command",
        }
    }
}

/// Variables passed from the submitting environment when set; everything else is left out,
/// since the environment is part of every test's cache key.
pub const PASSED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "RUSTFLAGS",
    "GOPATH",
    "GOCACHE",
    "GOMODCACHE",
    "GOFLAGS",
    "GOPROXY",
    "PYTHONPATH",
    "VIRTUAL_ENV",
];

/// Where the job runs: the project root's fixed path on the agents, and the directory the user
/// ran `tessera` in, seen under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// `/var/tmp/tessera/<project name>`.
    pub exec_root: PathBuf,
    /// `exec_root` joined with the cwd's path relative to the project root.
    pub dir: PathBuf,
}

impl Placement {
    /// The placement for a user in `cwd` inside `project_root`.
    pub fn new(project_root: &Path, cwd: &Path, exec_root: PathBuf) -> Self {
        let relative = cwd.strip_prefix(project_root).unwrap_or(Path::new(""));
        let dir = if relative.as_os_str().is_empty() {
            exec_root.clone()
        } else {
            exec_root.join(relative)
        };
        Self { exec_root, dir }
    }
}

/// A runner chosen for the job, with what the job spec needs besides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerChoice {
    /// The adapter's settings.
    pub config: RunnerConfig,
    /// Directories the prepare step keeps between runs (`target` for cargo and nextest).
    pub persist: Vec<String>,
}

/// Chooses the runner for `args` (what followed `--`), given `--runner` and `--list-command`.
pub fn choose_runner(
    explicit: Option<RunnerKind>,
    list_command: Option<&str>,
    args: &[String],
    placement: &Placement,
) -> Result<RunnerChoice, CliError> {
    let inferred = infer(args);
    let kind = match (explicit, inferred) {
        (Some(kind), Some((found, _))) if kind != found && kind != RunnerKind::Command => {
            return Err(CliError::usage(format!(
                "--runner {} does not match the command `{}` (a {} command); drop --runner or the command",
                kind.name(),
                args.join(" "),
                found.name()
            )));
        }
        (Some(kind), _) => kind,
        (None, Some((found, _))) => found,
        (None, None) if list_command.is_some() => RunnerKind::Command,
        (None, None) if args.is_empty() => {
            return Err(CliError::usage(
                "nothing to run: give the test command after `--`, e.g. `tessera run -- cargo test`",
            ));
        }
        (None, None) => {
            return Err(CliError::usage(format!(
                "tessera does not know how to list the tests of `{}`; use `cargo test`, \
                 `cargo nextest run`, `pytest` or `go test`, or pass `--runner command \
                 --list-command CMD` with a run template naming {{tests}} or {{tests_file}}",
                args.join(" ")
            )));
        }
    };
    if list_command.is_some() && kind != RunnerKind::Command {
        return Err(CliError::usage(format!(
            "--list-command is for --runner command, not the {} runner; drop it",
            kind.name()
        )));
    }
    // With the runner given explicitly, the tool's own words are optional.
    let rest: &[String] = match inferred {
        Some((found, skip)) if found == kind => &args[skip..],
        _ => args,
    };
    let dir = placement.dir.clone();
    let target = placement.exec_root.join("target");
    let target_env = target.display().to_string();
    let choice = match kind {
        RunnerKind::Cargo => {
            let cargo_args = cargo_args(rest, "cargo test")?;
            if let Some(bad) = cargo_args
                .iter()
                .find(|a| matches!(a.as_str(), "--no-run" | "--doc"))
            {
                return Err(CliError::usage(format!(
                    "`cargo test {bad}` is not supported: tessera builds the test binaries and runs every test they list"
                )));
            }
            RunnerChoice {
                config: RunnerConfig::Cargo(
                    CargoTestRunner::new(dir)
                        .cargo_args(cargo_args)
                        .env("CARGO_TARGET_DIR", target_env),
                ),
                persist: vec!["target".to_owned()],
            }
        }
        RunnerKind::Nextest => {
            let mut cargo_args = cargo_args(rest, "cargo nextest run")?;
            let profile = take_option(&mut cargo_args, &["--profile", "-P"])?;
            let mut runner = NextestRunner::new(dir)
                .archive_file(target.join("tessera/nextest-archive.tar.zst"))
                .cargo_args(cargo_args)
                .env("CARGO_TARGET_DIR", target_env);
            if let Some(profile) = profile {
                runner = runner.profile(profile);
            }
            RunnerChoice {
                config: RunnerConfig::Nextest(runner),
                persist: vec!["target".to_owned()],
            }
        }
        RunnerKind::Pytest => {
            let (command, rest) = match inferred {
                Some((RunnerKind::Pytest, skip)) => (args[..skip].to_vec(), &args[skip..]),
                _ => (Vec::new(), rest),
            };
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
            RunnerChoice {
                config: RunnerConfig::Pytest(runner),
                persist: Vec::new(),
            }
        }
        RunnerKind::Go => {
            let (flags, packages) = split_go_args(rest)?;
            let mut runner = GoTestRunner::new(dir).args(flags);
            if !packages.is_empty() {
                runner = runner.packages(packages);
            }
            RunnerChoice {
                config: RunnerConfig::Go(runner),
                persist: Vec::new(),
            }
        }
        RunnerKind::Command => {
            let Some(list) = list_command else {
                return Err(CliError::usage(
                    "--runner command needs --list-command CMD (a shell command printing one test id a line)",
                ));
            };
            if args.is_empty() {
                return Err(CliError::usage(
                    "--runner command needs the run template after `--`, naming {tests} or {tests_file}",
                ));
            }
            let runner = CommandRunner::new(
                dir,
                vec!["sh".to_owned(), "-c".to_owned(), list.to_owned()],
                args.to_vec(),
            )
            .map_err(|e| CliError::usage(format!("bad run template: {e}")))?;
            RunnerChoice {
                config: RunnerConfig::Command(runner),
                persist: Vec::new(),
            }
        }
    };
    Ok(choice)
}

/// Which runner the command line names, and how many leading words name it.
fn infer(args: &[String]) -> Option<(RunnerKind, usize)> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["cargo", "nextest", "run", ..] => Some((RunnerKind::Nextest, 3)),
        ["cargo", "test", ..] => Some((RunnerKind::Cargo, 2)),
        ["go", "test", ..] => Some((RunnerKind::Go, 2)),
        [python, "-m", "pytest", ..] if is_python(python) => Some((RunnerKind::Pytest, 3)),
        [tool, ..] if Path::new(tool).file_name().is_some_and(|n| n == "pytest") => {
            Some((RunnerKind::Pytest, 1))
        }
        _ => None,
    }
}

fn is_python(word: &str) -> bool {
    let name = Path::new(word)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name == "python"
        || name
            .strip_prefix("python")
            .is_some_and(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

/// Cargo's arguments up to `--`; test-binary arguments after it are refused, since tessera
/// picks and runs the tests itself.
fn cargo_args(args: &[String], tool: &str) -> Result<Vec<String>, CliError> {
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
fn take_option(args: &mut Vec<String>, names: &[&str]) -> Result<Option<String>, CliError> {
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

/// The environment of every step: [`PASSED_ENV`] from `lookup`, then `--env KEY=VAL` / `--env
/// KEY` (taken from `lookup`), sorted by name.
pub fn environment(
    lookup: impl Fn(&str) -> Option<String>,
    extra: &[String],
) -> Result<BTreeMap<String, String>, CliError> {
    let mut env = BTreeMap::new();
    for key in PASSED_ENV {
        if let Some(value) = lookup(key) {
            env.insert((*key).to_owned(), value);
        }
    }
    for item in extra {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => match lookup(item) {
                Some(v) => (item.clone(), v),
                None => {
                    return Err(CliError::usage(format!(
                        "--env {item}: {item} is not set here; give a value with --env {item}=VALUE"
                    )));
                }
            },
        };
        if key.is_empty() || key.contains('\0') {
            return Err(CliError::usage(format!(
                "--env {item}: not a variable name"
            )));
        }
        env.insert(key, value);
    }
    Ok(env)
}

/// `--platform K=V` values, sorted by key (a repeated key keeps its last value).
pub fn platform(items: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut out = BTreeMap::new();
    for item in items {
        match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_owned(), v.to_owned());
            }
            _ => {
                return Err(CliError::usage(format!(
                    "--platform {item}: expected KEY=VALUE"
                )));
            }
        }
    }
    Ok(out)
}

/// Who submits: `$TESSERA_SUBMITTER`, else `user@hostname`.
pub fn submitter(lookup: impl Fn(&str) -> Option<String>) -> String {
    if let Some(s) = lookup("TESSERA_SUBMITTER").filter(|s| !s.is_empty()) {
        return s;
    }
    let user = lookup("USER")
        .or_else(|| lookup("LOGNAME"))
        .unwrap_or_else(|| "unknown".to_owned());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| lookup("HOSTNAME"))
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{user}@{host}")
}

/// Everything a job spec is built from besides the input root.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// The runner.
    pub runner: RunnerChoice,
    /// Where the steps see the input root.
    pub exec_root: PathBuf,
    /// Environment of every step.
    pub environment: BTreeMap<String, String>,
    /// Platform the steps need.
    pub platform: BTreeMap<String, String>,
    /// Retries of a failing test.
    pub retries: u32,
    /// Stop at the first final failure.
    pub fail_fast: bool,
    /// Deadline of one test.
    pub timeout: Option<Duration>,
    /// REAPI priority, -1000..1000 (lower first).
    pub priority: i32,
    /// Who submits.
    pub submitter: String,
    /// What the user typed.
    pub title: String,
    /// Run every test even if cached.
    pub no_cache: bool,
}

/// The job spec for `settings` with the snapshot root `input_root`.
pub fn job_spec(
    settings: &JobSettings,
    input_root: &tessera_cas::digest::Digest,
) -> Result<JobSpec, CliError> {
    let runner_json = serde_json::to_string(&settings.runner.config)
        .map_err(|e| CliError::usage(format!("runner settings do not serialize: {e}")))?;
    Ok(JobSpec {
        instance_name: String::new(),
        digest_function: input_root.function.to_proto(),
        input_root_digest: Some(input_root.to_proto()),
        runner_json,
        exec_root: settings.exec_root.display().to_string(),
        environment: settings
            .environment
            .iter()
            .map(|(name, value)| EnvironmentVariable {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        platform: settings
            .platform
            .iter()
            .map(|(name, value)| Property {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        retries: settings.retries,
        fail_fast: settings.fail_fast,
        test_timeout: settings.timeout.map(to_proto_duration),
        priority: settings.priority,
        submitter: settings.submitter.clone(),
        title: settings.title.clone(),
        skip_cache: settings.no_cache,
        persist: settings.runner.persist.clone(),
    })
}

/// The command line as the user would retype it, for the job's title.
pub fn title(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn placement() -> Placement {
        Placement::new(
            Path::new("/home/ann/widget"),
            Path::new("/home/ann/widget/crates/a"),
            PathBuf::from("/var/tmp/tessera/widget"),
        )
    }

    fn choose(s: &str) -> Result<RunnerChoice, CliError> {
        choose_runner(None, None, &argv(s), &placement())
    }

    #[test]
    fn the_dir_is_the_cwd_under_the_exec_root() {
        assert_eq!(
            placement().dir,
            PathBuf::from("/var/tmp/tessera/widget/crates/a")
        );
        let top = Placement::new(
            Path::new("/w"),
            Path::new("/w"),
            PathBuf::from("/var/tmp/tessera/w"),
        );
        assert_eq!(top.dir, PathBuf::from("/var/tmp/tessera/w"));
    }

    #[test]
    fn cargo_test_becomes_the_cargo_runner_with_a_persistent_target() {
        let choice = choose("cargo test -p foo --features x").unwrap();
        let RunnerConfig::Cargo(runner) = &choice.config else {
            panic!("{choice:?}")
        };
        assert_eq!(runner.cargo_args, argv("-p foo --features x"));
        assert_eq!(
            runner.dir,
            PathBuf::from("/var/tmp/tessera/widget/crates/a")
        );
        assert_eq!(
            runner.env["CARGO_TARGET_DIR"],
            "/var/tmp/tessera/widget/target"
        );
        assert_eq!(choice.persist, vec!["target"]);
        // A trailing `--` with nothing after it is harmless; test arguments are refused.
        assert!(choose("cargo test --").is_ok());
        let err = choose("cargo test -- --nocapture").unwrap_err();
        assert!(matches!(err, CliError::Usage(_)));
        assert!(err.to_string().contains("--nocapture"), "{err}");
        assert!(choose("cargo test --no-run").is_err());
    }

    #[test]
    fn cargo_nextest_run_becomes_nextest_with_its_profile() {
        let choice = choose("cargo nextest run --workspace --profile ci").unwrap();
        let RunnerConfig::Nextest(runner) = &choice.config else {
            panic!("{choice:?}")
        };
        assert_eq!(runner.cargo_args, argv("--workspace"));
        assert_eq!(runner.profile.as_deref(), Some("ci"));
        assert!(
            runner
                .archive_file
                .starts_with("/var/tmp/tessera/widget/target")
        );
        assert_eq!(choice.persist, vec!["target"]);
    }

    #[test]
    fn pytest_in_its_spellings() {
        for (line, command) in [
            ("pytest -k fast", vec!["pytest"]),
            ("python3 -m pytest -k fast", vec!["python3", "-m", "pytest"]),
            (".venv/bin/pytest -k fast", vec![".venv/bin/pytest"]),
            (
                "python3.12 -m pytest -k fast",
                vec!["python3.12", "-m", "pytest"],
            ),
        ] {
            let choice = choose(line).unwrap();
            let RunnerConfig::Pytest(runner) = &choice.config else {
                panic!("{line}: {choice:?}")
            };
            assert_eq!(runner.pytest, command, "{line}");
            assert_eq!(runner.args, argv("-k fast"), "{line}");
        }
        let err = choose("pytest tests/test_a.py").unwrap_err();
        assert!(err.to_string().contains("tests/test_a.py"), "{err}");
        // Option values are not paths.
        assert!(choose("pytest -m slow --ignore build").is_ok());
    }

    #[test]
    fn go_test_splits_flags_from_packages() {
        let choice = choose("go test -tags integration -race ./pkg/... ./cmd").unwrap();
        let RunnerConfig::Go(runner) = &choice.config else {
            panic!("{choice:?}")
        };
        assert_eq!(runner.args, argv("-tags integration -race"));
        assert_eq!(runner.packages, argv("./pkg/... ./cmd"));
        let RunnerConfig::Go(runner) = choose("go test").unwrap().config else {
            panic!()
        };
        assert_eq!(runner.packages, vec!["./..."]);
        assert!(choose("go test -run TestX ./...").is_err());
    }

    #[test]
    fn anything_else_needs_a_list_command() {
        let err = choose("make check").unwrap_err();
        assert!(matches!(err, CliError::Usage(_)));
        assert!(err.to_string().contains("--list-command"), "{err}");
        let choice = choose_runner(
            None,
            Some("sh suite.sh list"),
            &argv("sh suite.sh run {tests}"),
            &placement(),
        )
        .unwrap();
        let RunnerConfig::Command(runner) = &choice.config else {
            panic!("{choice:?}")
        };
        assert_eq!(runner.list, vec!["sh", "-c", "sh suite.sh list"]);
        assert_eq!(runner.run, argv("sh suite.sh run {tests}"));
        // A template that cannot name its tests is refused.
        let err = choose_runner(None, Some("x"), &argv("sh run"), &placement()).unwrap_err();
        assert!(err.to_string().contains("{tests}"), "{err}");
    }

    #[test]
    fn an_explicit_runner_must_agree_with_the_command() {
        let err = choose_runner(
            Some(RunnerKind::Pytest),
            None,
            &argv("cargo test"),
            &placement(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        // Without the tool's words, the arguments are the runner's own.
        let choice = choose_runner(
            Some(RunnerKind::Cargo),
            None,
            &argv("--workspace"),
            &placement(),
        )
        .unwrap();
        let RunnerConfig::Cargo(runner) = choice.config else {
            panic!()
        };
        assert_eq!(runner.cargo_args, argv("--workspace"));
        assert!(
            choose_runner(
                Some(RunnerKind::Cargo),
                Some("ls"),
                &argv("cargo test"),
                &placement()
            )
            .is_err()
        );
        assert!(
            choose_runner(
                Some(RunnerKind::Command),
                None,
                &argv("x {tests}"),
                &placement()
            )
            .is_err()
        );
    }

    #[test]
    fn the_environment_is_small_sorted_and_extended_by_flags() {
        let lookup = |k: &str| match k {
            "PATH" => Some("/bin".to_owned()),
            "HOME" => Some("/h".to_owned()),
            "SECRET" => Some("s".to_owned()),
            "FROM_HERE" => Some("here".to_owned()),
            _ => None,
        };
        let env = environment(lookup, &["A=1".to_owned(), "FROM_HERE".to_owned()]).unwrap();
        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(keys, vec!["A", "FROM_HERE", "HOME", "PATH"]);
        assert_eq!(env["FROM_HERE"], "here");
        assert!(environment(lookup, &["MISSING".to_owned()]).is_err());
    }

    #[test]
    fn platform_pairs_and_titles() {
        let p = platform(&["os=linux".to_owned(), "arch=x86_64".to_owned()]).unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), vec!["arch", "os"]);
        assert!(platform(&["nokey".to_owned()]).is_err());
        assert_eq!(
            title(&argv("tessera run -- pytest -k")),
            "tessera run -- pytest -k"
        );
        assert_eq!(
            title(&["pytest".to_owned(), "not slow".to_owned()]),
            "pytest 'not slow'"
        );
    }
}

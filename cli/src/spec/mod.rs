//! What `tessera run` submits: the runner inferred from the command line, the environment and
//! platform, as a `tessera.v1.JobSpec`. Pure functions of their inputs, so they are unit-tested
//! without a coordinator.
//!
//! Each tool's command line is read by its own module (`cargo.rs`, `nextest.rs`, `pytest.rs`,
//! `go.rs`); this one infers the tool and builds the spec.

use std::collections::BTreeMap;

use std::path::{Path, PathBuf};
use std::time::Duration;
use tessera_coordinator::jobs::labels;

use tessera_coordinator::jobs::cells::{MAX_CELLS, is_variable_name};
use tessera_proto::reapi::{command::EnvironmentVariable, platform::Property};
use tessera_proto::tessera::v1::{JobSpec, MatrixCell, SecretEnv};
use tessera_proto::time::to_proto_duration;
use tessera_runners::{CommandRunner, RunnerConfig};

use crate::exit::CliError;

mod cargo;
mod go;
mod nextest;
mod pytest;

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

/// Variables passed from the submitting environment when set: those that change what the
/// tools do or which toolchain runs (README "What travels with a job"). Everything else is left
/// out, since the environment is part of every test's cache key; `--env KEY` adds more.
pub const PASSED_ENV: &[&str] = &[
    // Everyone.
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "CI",
    // Rust: toolchain, build and test settings.
    "CARGO_HOME",
    "CARGO_INCREMENTAL",
    "CARGO_NET_OFFLINE",
    "CARGO_PROFILE_DEV_DEBUG",
    "CARGO_PROFILE_TEST_DEBUG",
    "CARGO_PROFILE_RELEASE_DEBUG",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "RUSTC",
    "RUSTDOC",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
    "RUST_TEST_THREADS",
    "RUST_TEST_TIME_UNIT",
    "RUST_TEST_TIME_INTEGRATION",
    "RUST_MIN_STACK",
    "RUST_LOG",
    "NEXTEST_PROFILE",
    "NEXTEST_RETRIES",
    "NEXTEST_TEST_THREADS",
    // Python.
    "PYTHONPATH",
    "PYTHONHASHSEED",
    "PYTHONWARNINGS",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUTF8",
    "PYTHONIOENCODING",
    "PYTHONSAFEPATH",
    "PYTHONDEVMODE",
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "PYTEST_DISABLE_PLUGIN_AUTOLOAD",
    "VIRTUAL_ENV",
    "PYENV_VERSION",
    "CONDA_PREFIX",
    // Go.
    "GOPATH",
    "GOROOT",
    "GOCACHE",
    "GOMODCACHE",
    "GOFLAGS",
    "GOPROXY",
    "GOPRIVATE",
    "GONOSUMDB",
    "GONOPROXY",
    "GOSUMDB",
    "GOTOOLCHAIN",
    "GO111MODULE",
    "GOEXPERIMENT",
    "GODEBUG",
    "GOOS",
    "GOARCH",
    "GOAMD64",
    "CGO_ENABLED",
    "CGO_CFLAGS",
    "CGO_LDFLAGS",
    "CC",
    "CXX",
];

/// Where the job runs: the project root's fixed path on the agents, and the directory the user
/// ran `tessera` in, seen under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// `/var/tmp/tessera/<project name>`.
    pub exec_root: PathBuf,
    /// `exec_root` joined with the cwd's path relative to the project root.
    pub dir: PathBuf,
    /// The project root here, on the user's machine.
    pub project_root: PathBuf,
    /// The directory the user ran `tessera` in, here: relative paths on the command line are
    /// relative to it.
    pub cwd: PathBuf,
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
        Self {
            exec_root,
            dir,
            project_root: project_root.to_path_buf(),
            cwd: cwd.to_path_buf(),
        }
    }
}

/// A runner chosen for the job, with what the job spec needs besides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerChoice {
    /// The adapter's settings.
    pub config: RunnerConfig,
    /// Directories the prepare step keeps between runs (`target` for cargo and nextest).
    pub persist: Vec<String>,
    /// The tool's own command line asked to stop at the first failure (`pytest -x`, `go test
    /// -failfast`): the job runs with fail-fast, which never reports untried tests as failed.
    pub fail_fast: bool,
}

impl RunnerChoice {
    /// A runner that keeps nothing between runs and does not stop at the first failure.
    pub fn new(config: RunnerConfig) -> Self {
        Self {
            config,
            persist: Vec::new(),
            fail_fast: false,
        }
    }
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
    let choice = match kind {
        RunnerKind::Cargo => cargo::choose_cargo(rest, &dir, &placement.exec_root)?,
        RunnerKind::Nextest => nextest::choose(rest, &dir, &placement.exec_root)?,
        RunnerKind::Pytest => {
            let (command, rest) = match inferred {
                Some((RunnerKind::Pytest, skip)) => (args[..skip].to_vec(), &args[skip..]),
                _ => (Vec::new(), rest),
            };
            pytest::choose(command, rest, placement)?
        }
        RunnerKind::Go => go::choose(rest, &dir, &placement.cwd)?,
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
            RunnerChoice::new(RunnerConfig::Command(runner))
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
        [tool, ..]
            if Path::new(tool)
                .file_name()
                .is_some_and(|n| n == "pytest" || n == "py.test") =>
        {
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

/// The cells of a matrix run from the `--matrix NAME=v1,v2` items: the cross product of every
/// name's values, in the order the names were first given, the first name varying slowest.
/// Empty when `items` is (a plain run).
///
/// A NAME given once is split on commas; a NAME given more than once takes each occurrence as
/// one value, literally, commas included (the way to give a value containing a comma). A cell's
/// name is its variables as `A=1,B=x`. Refused, naming the problem: an item without `=`, a name
/// that is not an environment variable name, an empty value, a value given twice for one name,
/// a name also set by `--env` (`explicit_env`: two flags setting one variable is a
/// contradiction; a variable merely passed from here is replaced by the matrix's values), and
/// more than [`MAX_CELLS`] cells.
pub fn matrix(items: &[String], explicit_env: &[String]) -> Result<Vec<MatrixCell>, CliError> {
    let mut parsed = Vec::with_capacity(items.len());
    for item in items {
        let Some((name, value)) = item.split_once('=') else {
            return Err(CliError::usage(format!(
                "--matrix {item}: expected NAME=VALUE[,VALUE...]"
            )));
        };
        if !is_variable_name(name) {
            return Err(CliError::usage(format!(
                "--matrix {item}: \"{name}\" is not an environment variable name (letters, digits \
                 and _, not starting with a digit)"
            )));
        }
        parsed.push((item, name, value));
    }
    let given = |name: &str| parsed.iter().filter(|(_, n, _)| *n == name).count();
    // Each name with its values, in the order the names were first given.
    let mut axes: Vec<(&str, Vec<&str>)> = Vec::new();
    for &(item, name, value) in &parsed {
        let values: Vec<&str> = if given(name) == 1 {
            value.split(',').collect()
        } else {
            vec![value]
        };
        let index = match axes.iter().position(|(n, _)| *n == name) {
            Some(index) => index,
            None => {
                axes.push((name, Vec::new()));
                axes.len() - 1
            }
        };
        for value in values {
            if value.is_empty() {
                return Err(CliError::usage(format!(
                    "--matrix {item}: empty value for {name} (a value containing a comma is \
                     given by repeating --matrix {name}=VALUE)"
                )));
            }
            if axes[index].1.contains(&value) {
                return Err(CliError::usage(format!(
                    "--matrix {item}: {name}={value} is given twice"
                )));
            }
            axes[index].1.push(value);
        }
    }
    for item in explicit_env {
        let key = item.split_once('=').map_or(item.as_str(), |(k, _)| k);
        if axes.iter().any(|(name, _)| *name == key) {
            return Err(CliError::usage(format!(
                "--matrix {key} and --env {item} both set {key}; give it one way"
            )));
        }
    }
    if axes.is_empty() {
        return Ok(Vec::new());
    }
    let count = axes
        .iter()
        .try_fold(1usize, |count, (_, values)| count.checked_mul(values.len()));
    if count.is_none_or(|count| count > MAX_CELLS) {
        let sizes: Vec<String> = axes.iter().map(|(_, v)| v.len().to_string()).collect();
        return Err(CliError::usage(format!(
            "--matrix gives {} cells, more than the limit of {MAX_CELLS}; split the matrix \
             into several runs",
            sizes.join(" × ")
        )));
    }
    let mut cells = vec![MatrixCell::default()];
    for (name, values) in &axes {
        cells = cells
            .iter()
            .flat_map(|cell| {
                values.iter().map(move |value| {
                    let mut cell = cell.clone();
                    if !cell.name.is_empty() {
                        cell.name.push(',');
                    }
                    cell.name.push_str(&format!("{name}={value}"));
                    cell.environment.push(EnvironmentVariable {
                        name: (*name).to_owned(),
                        value: (*value).to_owned(),
                    });
                    cell
                })
            })
            .collect();
    }
    Ok(cells)
}

/// The values of `tessera run --secret-env NAME`: given to every step, never shown. Its `Debug`
/// names the variables only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(Vec<SecretEnv>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|s| format!("{}=<secret>", s.name)))
            .finish()
    }
}

impl Secrets {
    /// The variables' names, in the order given.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| s.name.as_str())
    }

    /// Whether `name` is one of them.
    pub fn contains(&self, name: &str) -> bool {
        self.names().any(|n| n == name)
    }
}

/// The secrets of `--secret-env NAME` items, each value taken from `lookup`. Refused, naming
/// the variable and never its value: a name that is not a variable name, one given twice, one
/// not set here, one also given to `--env` (`env_flags`) or `--matrix` (`matrix_items`): a
/// secret given a second, visible way would not stay secret.
pub fn secrets(
    lookup: impl Fn(&str) -> Option<String>,
    names: &[String],
    env_flags: &[String],
    matrix_items: &[String],
) -> Result<Secrets, CliError> {
    let mut out: Vec<SecretEnv> = Vec::with_capacity(names.len());
    let key = |item: &String| {
        item.split_once('=')
            .map_or(item.clone(), |(k, _)| k.to_owned())
    };
    for name in names {
        if !is_variable_name(name) {
            return Err(CliError::usage(format!(
                "--secret-env {name}: not an environment variable name (letters, digits and _, \
                 not starting with a digit); give the variable's name, its value is taken from \
                 here"
            )));
        }
        if out.iter().any(|s| s.name == *name) {
            return Err(CliError::usage(format!(
                "--secret-env {name} is given twice"
            )));
        }
        if env_flags.iter().any(|item| key(item) == *name) {
            return Err(CliError::usage(format!(
                "--secret-env {name} and --env {name} both set {name}; a secret is given with \
                 --secret-env alone"
            )));
        }
        if matrix_items.iter().any(|item| key(item) == *name) {
            return Err(CliError::usage(format!(
                "--secret-env {name} and --matrix {name} both set {name}; give it one way"
            )));
        }
        let Some(value) = lookup(name) else {
            return Err(CliError::usage(format!(
                "--secret-env {name}: {name} is not set here; export it before `tessera run`"
            )));
        };
        out.push(SecretEnv {
            name: name.clone(),
            value,
        });
    }
    Ok(Secrets(out))
}

/// `--platform K=V` values, sorted by key (a repeated key keeps its last value), with
/// `network=on` for `--network`.
pub fn platform(items: &[String], network: bool) -> Result<BTreeMap<String, String>, CliError> {
    let mut out = BTreeMap::new();
    if network {
        out.insert("network".to_owned(), "on".to_owned());
    }
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
    /// The prepare step may use the network.
    pub prepare_network: bool,
    /// Bytes of a test's output kept in events (0: the coordinator's default).
    pub output_limit: u32,
    /// Keep each file's tests together, in listing order.
    pub keep_files_together: bool,
    /// The cells of a matrix run ([`matrix`]); empty for a plain run.
    pub matrix: Vec<MatrixCell>,
    /// The project, whose test history the job shares (`crate::project`).
    pub project: String,
    /// `--on-behalf-of`: who a `ci` token's job runs for; empty for the token itself.
    pub on_behalf_of: String,
    /// `--secret-env` values.
    pub secrets: Secrets,
    /// The job's labels (`--label`, the CI environment's, and `name`).
    pub labels: BTreeMap<String, String>,
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
        // A variable the matrix sets is each cell's own, not the job's; a secret passed from
        // here too (PATH-like variables are passed by default) goes as the secret only.
        environment: settings
            .environment
            .iter()
            .filter(|(name, _)| {
                !settings
                    .matrix
                    .iter()
                    .any(|cell| cell.environment.iter().any(|v| v.name == **name))
                    && !settings.secrets.contains(name)
            })
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
        prepare_network: settings.prepare_network,
        output_limit: settings.output_limit,
        keep_files_together: settings.keep_files_together,
        project: settings.project.clone(),
        cells: settings.matrix.clone(),
        on_behalf_of: settings.on_behalf_of.clone(),
        secrets: settings.secrets.0.clone(),
        trust_domain: String::new(),
        labels: settings.labels.clone().into_iter().collect(),
    })
}

/// The job's labels: those of the CI environment (`ci`), then `--label KEY=VALUE` (`given`,
/// which win), and `name` set to `default_name` unless given.
pub fn labels(
    given: &[String],
    ci: BTreeMap<String, String>,
    default_name: &str,
) -> Result<BTreeMap<String, String>, CliError> {
    let mut labels = ci;
    for label in given {
        let (key, value) = label.split_once('=').ok_or_else(|| {
            CliError::usage(format!(
                "--label {label}: expected KEY=VALUE, e.g. --label team=infra"
            ))
        })?;
        if let Some(problem) = labels::label_problem(key, value) {
            return Err(CliError::usage(format!("--label {label}: {problem}")));
        }
        labels.insert(key.to_owned(), value.to_owned());
    }
    labels
        .entry(labels::NAME.to_owned())
        .or_insert_with(|| labels::fit(default_name));
    // The CI environment's values are checked too: a refused one is dropped, not fatal.
    labels.retain(|k, v| labels::label_problem(k, v).is_none());
    if labels.len() > labels::MAX_LABELS {
        return Err(CliError::usage(format!(
            "{} labels; a job may have at most {}",
            labels.len(),
            labels::MAX_LABELS
        )));
    }
    Ok(labels)
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

    fn cells(items: &[&str]) -> Result<Vec<MatrixCell>, CliError> {
        let items: Vec<String> = items.iter().map(|s| (*s).to_owned()).collect();
        matrix(&items, &["KEPT=1".to_owned(), "FROM_HERE".to_owned()])
    }

    fn names(cells: &[MatrixCell]) -> Vec<&str> {
        cells.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn the_matrix_is_the_cross_product_first_name_slowest() {
        assert!(cells(&[]).unwrap().is_empty());
        let got = cells(&["A=1,2", "B=x,y,z"]).unwrap();
        assert_eq!(
            names(&got),
            [
                "A=1,B=x", "A=1,B=y", "A=1,B=z", "A=2,B=x", "A=2,B=y", "A=2,B=z"
            ]
        );
        let vars: Vec<(&str, &str)> = got[5]
            .environment
            .iter()
            .map(|v| (v.name.as_str(), v.value.as_str()))
            .collect();
        assert_eq!(vars, [("A", "2"), ("B", "z")]);
        assert_eq!(names(&cells(&["ONE=only"]).unwrap()), ["ONE=only"]);
    }

    #[test]
    fn a_name_given_more_than_once_takes_each_value_literally_commas_included() {
        let got = cells(&["OPTS=a,b", "MODE=x", "OPTS=c"]).unwrap();
        assert_eq!(names(&got), ["OPTS=a,b,MODE=x", "OPTS=c,MODE=x"]);
        assert_eq!(got[0].environment[0].value, "a,b");
        assert_eq!(got[1].environment[0].value, "c");
    }

    #[test]
    fn every_bad_matrix_is_refused_naming_the_problem() {
        let refused = |items: &[&str]| match cells(items) {
            Err(CliError::Usage(message)) => message,
            other => panic!("{items:?} was not refused: {other:?}"),
        };
        assert_eq!(
            refused(&["A="]),
            "--matrix A=: empty value for A (a value containing a comma is given by repeating \
             --matrix A=VALUE)"
        );
        assert!(
            refused(&["A=x,,y"]).starts_with("--matrix A=x,,y: empty value for A"),
            "{}",
            refused(&["A=x,,y"])
        );
        assert!(refused(&["A=x,"]).starts_with("--matrix A=x,: empty value for A"));
        assert!(refused(&["A=x", "A="]).starts_with("--matrix A=: empty value for A"));
        assert_eq!(
            refused(&["FEATURE"]),
            "--matrix FEATURE: expected NAME=VALUE[,VALUE...]"
        );
        assert_eq!(
            refused(&["1X=a"]),
            "--matrix 1X=a: \"1X\" is not an environment variable name (letters, digits and _, \
             not starting with a digit)"
        );
        assert!(refused(&["=a"]).contains("\"\" is not an environment variable name"));
        assert!(refused(&["A-B=a"]).contains("\"A-B\" is not an environment variable name"));
        assert_eq!(
            refused(&["A=x,y,x"]),
            "--matrix A=x,y,x: A=x is given twice"
        );
        assert_eq!(refused(&["A=x", "A=x"]), "--matrix A=x: A=x is given twice");
        assert_eq!(
            refused(&["KEPT=2,3"]),
            "--matrix KEPT and --env KEPT=1 both set KEPT; give it one way"
        );
        assert_eq!(
            refused(&["FROM_HERE=a"]),
            "--matrix FROM_HERE and --env FROM_HERE both set FROM_HERE; give it one way"
        );
        // 4 × 4 × 4 = 64 is the limit; one more value is over it.
        assert_eq!(
            cells(&["A=1,2,3,4", "B=1,2,3,4", "C=1,2,3,4"])
                .unwrap()
                .len(),
            MAX_CELLS
        );
        assert_eq!(
            refused(&["A=1,2,3,4,5", "B=1,2,3,4", "C=1,2,3,4"]),
            "--matrix gives 5 × 4 × 4 cells, more than the limit of 64; split the matrix into \
             several runs"
        );
    }

    #[test]
    fn a_matrix_variable_is_each_cells_own_not_the_jobs() {
        let settings = JobSettings {
            runner: RunnerChoice::new(RunnerConfig::Command(
                CommandRunner::new("/x", argv("ls"), argv("run {tests}")).unwrap(),
            )),
            exec_root: PathBuf::from("/x"),
            environment: BTreeMap::from([
                ("MODE".to_owned(), "from-here".to_owned()),
                ("PATH".to_owned(), "/bin".to_owned()),
            ]),
            platform: BTreeMap::new(),
            retries: 0,
            fail_fast: false,
            timeout: None,
            priority: 0,
            submitter: "s".to_owned(),
            title: "t".to_owned(),
            no_cache: false,
            prepare_network: true,
            output_limit: 0,
            keep_files_together: false,
            matrix: cells(&["MODE=a,b"]).unwrap(),
            project: "github.com/acme/widget".to_owned(),
            on_behalf_of: String::new(),
            secrets: Secrets::default(),
            labels: BTreeMap::new(),
        };
        let root = tessera_cas::digest::DigestFunction::Blake3.digest_of(b"");
        let spec = job_spec(&settings, &root).unwrap();
        let env: Vec<&str> = spec.environment.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(env, ["PATH"]);
        assert_eq!(names(&spec.cells), ["MODE=a", "MODE=b"]);
        assert_eq!(spec.project, "github.com/acme/widget");

        // A secret is sent as a secret only, even when the variable is passed by default.
        let lookup = |k: &str| (k == "PATH").then(|| "/secret/bin".to_owned());
        let settings = JobSettings {
            secrets: secrets(lookup, &["PATH".to_owned()], &[], &[]).unwrap(),
            on_behalf_of: "nightly".to_owned(),
            ..settings
        };
        let spec = job_spec(&settings, &root).unwrap();
        assert!(spec.environment.iter().all(|v| v.name != "PATH"));
        assert_eq!(spec.secrets.len(), 1);
        assert_eq!(spec.secrets[0].value, "/secret/bin");
        assert_eq!(spec.on_behalf_of, "nightly");
        assert!(!format!("{settings:?}").contains("/secret/bin"));
    }

    #[test]
    fn secret_variables_are_checked_and_never_shown() {
        let lookup = |k: &str| match k {
            "API_KEY" => Some("hunter2".to_owned()),
            "DB_PASSWORD" => Some("s3cret".to_owned()),
            _ => None,
        };
        let list = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let ok = secrets(
            lookup,
            &list(&["API_KEY", "DB_PASSWORD"]),
            &list(&["A=1"]),
            &[],
        )
        .unwrap();
        assert_eq!(ok.names().collect::<Vec<_>>(), ["API_KEY", "DB_PASSWORD"]);
        assert_eq!(
            format!("{ok:?}"),
            "[\"API_KEY=<secret>\", \"DB_PASSWORD=<secret>\"]"
        );

        let refused = |names: &[&str], env: &[&str], matrix: &[&str]| {
            let err = secrets(lookup, &list(names), &list(env), &list(matrix)).unwrap_err();
            assert_eq!(err.exit(), crate::exit::Exit::Usage);
            let text = err.to_string();
            assert!(!text.contains("hunter2"), "{text}");
            text
        };
        assert_eq!(
            refused(&["MISSING"], &[], &[]),
            "--secret-env MISSING: MISSING is not set here; export it before `tessera run`"
        );
        assert_eq!(
            refused(&["API_KEY", "API_KEY"], &[], &[]),
            "--secret-env API_KEY is given twice"
        );
        assert!(refused(&["API_KEY"], &["API_KEY"], &[]).contains("--env API_KEY both set"));
        assert!(refused(&["API_KEY"], &["API_KEY=x"], &[]).contains("--env API_KEY both set"));
        assert!(refused(&["API_KEY"], &[], &["API_KEY=a,b"]).contains("--matrix API_KEY"));
        assert!(refused(&["API-KEY"], &[], &[]).contains("not an environment variable name"));
    }

    #[test]
    fn platform_pairs_and_titles() {
        let p = platform(&["os=linux".to_owned(), "arch=x86_64".to_owned()], false).unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), vec!["arch", "os"]);
        assert!(platform(&["nokey".to_owned()], false).is_err());
        let p = platform(&[], true).unwrap();
        assert_eq!(p["network"], "on");
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

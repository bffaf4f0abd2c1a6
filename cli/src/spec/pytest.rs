//! `pytest` / `python -m pytest` / `py.test` command lines: which arguments select tests (for
//! the list step only, and not part of the cache key), which change how tests run (list and run,
//! and the cache key), which only change pytest's terminal report (dropped), which mean
//! fail-fast, and which cannot be honoured (refused, with what to do instead).
//!
//! Test paths and node ids are checked here, where the files are: each must exist and lie inside
//! the project, as pytest would otherwise say "file or directory not found" on the agent or see
//! another tree. Relative paths are kept as typed (pytest runs in the same directory under the
//! exec root); absolute ones are moved under the exec root.

use std::path::{Component, Path, PathBuf};

use tessera_runners::{PytestRunner, RunnerConfig};

use super::{Placement, RunnerChoice};
use crate::exit::CliError;

/// What an option does to a run, and so where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Selects tests: the list command alone.
    Select,
    /// Changes what is collected or how tests run: list and run commands, and the cache key.
    Run,
    /// Changes only pytest's terminal output, which tessera does not show: dropped.
    Report,
    /// Stops at the first failure: the job's fail-fast.
    FailFast,
    /// Cannot be honoured; the text says why and what to do instead.
    Refuse(&'static str),
}

/// One option pytest knows, by all its spellings.
struct Known {
    names: &'static [&'static str],
    /// It takes a value (`--opt VALUE` or `--opt=VALUE`).
    value: bool,
    /// Its value is a path that must be moved under the exec root when absolute.
    path_value: bool,
    role: Role,
}

const fn flag(names: &'static [&'static str], role: Role) -> Known {
    Known {
        names,
        value: false,
        path_value: false,
        role,
    }
}

const fn valued(names: &'static [&'static str], role: Role) -> Known {
    Known {
        names,
        value: true,
        path_value: false,
        role,
    }
}

const fn path_valued(names: &'static [&'static str], role: Role) -> Known {
    Known {
        names,
        value: true,
        path_value: true,
        role,
    }
}

const XDIST: Role = Role::Refuse(
    "tessera spreads the tests over its agents itself; drop it (pytest-xdist's processes inside \
     each batch would not make the job faster)",
);
const CACHE: Role = Role::Refuse(
    "it needs pytest's cache of the last run, which tessera does not keep (each batch runs with \
     -p no:cacheprovider); run the tests you mean by path, node id or -k instead",
);
const INTERACTIVE: Role = Role::Refuse(
    "a debugger needs a terminal, and tessera runs tests on its agents; run pytest directly to \
     debug",
);
const NOT_A_RUN: Role = Role::Refuse("it does not run tests; run pytest directly for it");

/// The options of pytest 9 (and pytest-xdist's), by role. Anything else is a plugin's option,
/// passed to both commands.
const KNOWN: &[Known] = &[
    valued(&["-k"], Role::Select),
    valued(&["-m"], Role::Select),
    valued(&["--deselect"], Role::Select),
    path_valued(&["--ignore"], Role::Select),
    valued(&["--ignore-glob"], Role::Select),
    flag(&["--pyargs"], Role::Select),
    valued(&["-p"], Role::Run),
    valued(&["-o", "--override-ini"], Role::Run),
    path_valued(&["-c", "--config-file", "--inifile"], Role::Run),
    valued(&["-W", "--pythonwarnings"], Role::Run),
    path_valued(&["--rootdir"], Role::Run),
    path_valued(&["--confcutdir"], Role::Run),
    valued(&["--basetemp"], Role::Run),
    valued(&["--import-mode"], Role::Run),
    valued(&["--capture"], Role::Run),
    valued(&["--assert"], Role::Run),
    valued(&["--doctest-glob"], Role::Run),
    valued(&["--doctest-report"], Role::Run),
    valued(&["--log-level"], Role::Run),
    valued(&["--log-format"], Role::Run),
    valued(&["--log-date-format"], Role::Run),
    valued(&["--log-cli-level"], Role::Run),
    valued(&["--log-file"], Role::Run),
    valued(&["--log-file-level"], Role::Run),
    valued(&["--log-disable"], Role::Run),
    flag(&["-s"], Role::Run),
    flag(
        &["--strict-markers", "--strict-config", "--strict"],
        Role::Run,
    ),
    flag(
        &["--runxfail", "--noconftest", "--keep-duplicates"],
        Role::Run,
    ),
    flag(&["--continue-on-collection-errors"], Role::Run),
    flag(
        &[
            "--doctest-modules",
            "--doctest-continue-on-failure",
            "--doctest-ignore-import-errors",
        ],
        Role::Run,
    ),
    flag(&["-v", "--verbose", "-q", "--quiet"], Role::Report),
    valued(&["--verbosity"], Role::Report),
    valued(&["-r"], Role::Report),
    valued(&["--tb"], Role::Report),
    valued(&["--durations", "--durations-min"], Role::Report),
    valued(&["--color", "--code-highlight"], Role::Report),
    valued(&["--junit-prefix"], Role::Report),
    flag(
        &[
            "-l",
            "--showlocals",
            "--no-showlocals",
            "--full-trace",
            "--no-header",
            "--no-summary",
            "--disable-warnings",
            "--disable-pytest-warnings",
            "--setup-show",
            "--cache-clear",
        ],
        Role::Report,
    ),
    flag(&["-x", "--exitfirst"], Role::FailFast),
    valued(
        &["--junitxml", "--junit-xml"],
        Role::Refuse(
            "tessera writes the JUnit report itself: use `tessera run --junit FILE -- pytest ...`",
        ),
    ),
    valued(&["-n", "--numprocesses", "--maxprocesses", "--dist"], XDIST),
    flag(&["-f", "--looponfail"], XDIST),
    flag(
        &[
            "--lf",
            "--last-failed",
            "--ff",
            "--failed-first",
            "--nf",
            "--new-first",
            "--sw",
            "--stepwise",
            "--sw-skip",
            "--stepwise-skip",
            "--sw-reset",
            "--stepwise-reset",
        ],
        CACHE,
    ),
    valued(&["--lfnf", "--last-failed-no-failures"], CACHE),
    flag(&["--pdb", "--trace"], INTERACTIVE),
    valued(&["--pdbcls"], INTERACTIVE),
    flag(
        &[
            "--co",
            "--collect-only",
            "--collectonly",
            "--setup-only",
            "--setup-plan",
            "--fixtures",
            "--funcargs",
            "--fixtures-per-test",
            "--markers",
            "-h",
            "--help",
            "-V",
            "--version",
            "--cache-show",
        ],
        NOT_A_RUN,
    ),
];

fn known(name: &str) -> Option<&'static Known> {
    KNOWN.iter().find(|k| k.names.contains(&name))
}

/// The pytest runner for `command ARGS` (`command` empty: the runner's default), run in the
/// user's directory under the exec root.
pub(super) fn choose(
    command: Vec<String>,
    rest: &[String],
    placement: &Placement,
) -> Result<RunnerChoice, CliError> {
    let line = PytestLine::read(rest, placement)?;
    let mut runner = PytestRunner::new(&placement.dir)
        .root(&placement.exec_root)
        .args(line.run)
        .select(line.select);
    if !command.is_empty() {
        runner = runner.pytest_command(command);
    }
    let mut choice = RunnerChoice::new(RunnerConfig::Pytest(runner));
    choice.fail_fast = line.fail_fast;
    Ok(choice)
}

/// A pytest command line, sorted by what each argument does.
#[derive(Debug, Default, PartialEq)]
struct PytestLine {
    select: Vec<String>,
    run: Vec<String>,
    fail_fast: bool,
}

impl PytestLine {
    fn read(args: &[String], placement: &Placement) -> Result<Self, CliError> {
        let words = split_short_flags(args);
        let pyargs = words.iter().any(|w| w == "--pyargs");
        let mut line = Self::default();
        let mut words = words.into_iter().peekable();
        // An option tessera does not know, given without `=`: its value, if it has one, may
        // be the next word, which then cannot be told from a test path.
        let mut after_unknown: Option<String> = None;
        while let Some(word) = words.next() {
            if word == "--" {
                // Everything after it is a path, even if it starts with '-'.
                for path in words.by_ref() {
                    line.select.push(test_path(&path, placement, pyargs)?);
                }
                break;
            }
            if !word.starts_with('-') || word == "-" {
                if let Some(option) = after_unknown.take() {
                    return Err(CliError::usage(format!(
                        "tessera cannot tell whether `{word}` is the value of pytest option \
                         `{option}` or a test path: write `{option}=VALUE` for a value, or put \
                         test paths before the options"
                    )));
                }
                line.select.push(test_path(&word, placement, pyargs)?);
                continue;
            }
            after_unknown = None;
            let (name, inline) = match word.split_once('=') {
                Some((name, value)) if name.starts_with("--") => (name.to_owned(), Some(value)),
                _ => (word.clone(), None),
            };
            if name == "--maxfail" {
                let value = option_value(&name, inline, &mut words)?;
                match value.trim().parse::<u64>() {
                    Ok(0) => {}
                    Ok(1) => line.fail_fast = true,
                    _ => {
                        return Err(CliError::usage(format!(
                            "pytest option `--maxfail {value}` is not supported: tessera either \
                             stops at the first failure (`-x`) or runs every test"
                        )));
                    }
                }
                continue;
            }
            let Some(option) = known(&name) else {
                if inline.is_none() {
                    after_unknown = Some(name);
                }
                line.run.push(word);
                continue;
            };
            let value = if option.value {
                let value = option_value(&name, inline, &mut words)?;
                Some(if option.path_value {
                    option_path(&name, &value, placement)?
                } else {
                    value
                })
            } else {
                None
            };
            let target = match option.role {
                Role::Select => &mut line.select,
                Role::Run => &mut line.run,
                Role::Report => continue,
                Role::FailFast => {
                    line.fail_fast = true;
                    continue;
                }
                Role::Refuse(why) => {
                    return Err(CliError::usage(format!(
                        "pytest option `{name}` is not supported by tessera run: {why}"
                    )));
                }
            };
            target.push(name);
            target.extend(value);
        }
        Ok(line)
    }
}

/// Splits `-xvs` into `-x -v -s` and `-kEXPR` into `-k EXPR`, as pytest's argument parser reads
/// them; a word with a letter tessera does not know is kept whole.
fn split_short_flags(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = args.iter();
    for arg in rest.by_ref() {
        if arg == "--" {
            out.push(arg.clone());
            break;
        }
        let Some(letters) = arg
            .strip_prefix('-')
            .filter(|l| !l.starts_with('-') && l.len() > 1)
        else {
            out.push(arg.clone());
            continue;
        };
        let mut split = Vec::new();
        for (i, letter) in letters.char_indices() {
            let option = format!("-{letter}");
            match known(&option) {
                Some(k) if k.value => {
                    split.push(option);
                    let value = &letters[i + letter.len_utf8()..];
                    if !value.is_empty() {
                        split.push(value.to_owned());
                    }
                    break;
                }
                Some(_) => split.push(option),
                None => {
                    split = vec![arg.clone()];
                    break;
                }
            }
        }
        out.extend(split);
    }
    out.extend(rest.cloned());
    out
}

/// The value of option `name`: after its `=`, or the next word.
fn option_value(
    name: &str,
    inline: Option<&str>,
    words: &mut impl Iterator<Item = String>,
) -> Result<String, CliError> {
    match inline {
        Some(value) => Ok(value.to_owned()),
        None => words
            .next()
            .ok_or_else(|| CliError::usage(format!("pytest option `{name}` needs a value"))),
    }
}

/// A test path or node id (`tests/test_a.py::TestX::test_y[1]`) as the agent must see it.
fn test_path(arg: &str, placement: &Placement, pyargs: bool) -> Result<String, CliError> {
    if pyargs {
        // Module names as well as paths: pytest resolves them on the agent.
        return Ok(arg.to_owned());
    }
    let (path, node) = match arg.split_once("::") {
        Some((path, node)) => (path, Some(node)),
        None => (arg, None),
    };
    let local = inside_project(arg, path, placement)?;
    if !local.exists() {
        return Err(CliError::usage(format!(
            "pytest test path `{arg}` does not exist (pytest would say \"file or directory not \
             found\"); if it is the value of an option, write it as `--option=VALUE`"
        )));
    }
    Ok(match node {
        _ if Path::new(path).is_relative() => arg.to_owned(),
        Some(node) => format!("{}::{node}", on_agent(&local, placement).display()),
        None => on_agent(&local, placement).display().to_string(),
    })
}

/// The value of a path option (`--rootdir`, `-c`, `--ignore`, ...), as the agent must see it.
fn option_path(name: &str, value: &str, placement: &Placement) -> Result<String, CliError> {
    let local = inside_project(&format!("{name} {value}"), value, placement)?;
    Ok(if Path::new(value).is_relative() {
        value.to_owned()
    } else {
        on_agent(&local, placement).display().to_string()
    })
}

/// `path` (relative to the cwd, or absolute) on this machine, refused if it leaves the project:
/// the agents only have the project.
fn inside_project(arg: &str, path: &str, placement: &Placement) -> Result<PathBuf, CliError> {
    let local = normalize(&placement.cwd.join(path));
    if !local.starts_with(&placement.project_root) {
        return Err(CliError::usage(format!(
            "pytest path `{arg}` is outside the project {} that tessera sends to its agents; run \
             tessera from the project that holds the tests",
            placement.project_root.display()
        )));
    }
    Ok(local)
}

/// A local path inside the project, under the exec root.
fn on_agent(local: &Path, placement: &Placement) -> PathBuf {
    match local.strip_prefix(&placement.project_root) {
        Ok(relative) if !relative.as_os_str().is_empty() => placement.exec_root.join(relative),
        _ => placement.exec_root.clone(),
    }
}

/// `path` with `.` and `..` resolved by name, as pytest's `absolutepath` does.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::choose_runner;
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    /// A project on this machine with `tests/test_a.py` and `docs/`, the user in `at`.
    struct Project {
        dir: tempfile::TempDir,
        placement: Placement,
    }

    impl Project {
        fn new(at: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("widget");
            std::fs::create_dir_all(root.join("tests/sub")).unwrap();
            std::fs::create_dir_all(root.join("docs")).unwrap();
            std::fs::write(root.join("tests/test_a.py"), "def test_x(): pass\n").unwrap();
            std::fs::write(root.join("pytest.ini"), "[pytest]\n").unwrap();
            let cwd = root.join(at);
            let placement = Placement::new(&root, &cwd, PathBuf::from("/var/tmp/tessera/widget"));
            Self { dir, placement }
        }

        fn choose(&self, line: &str) -> Result<RunnerChoice, CliError> {
            choose_runner(None, None, &argv(line), &self.placement)
        }

        fn runner(&self, line: &str) -> PytestRunner {
            match self.choose(line) {
                Ok(RunnerChoice {
                    config: RunnerConfig::Pytest(runner),
                    ..
                }) => runner,
                other => panic!("{line}: {other:?}"),
            }
        }

        fn refusal(&self, line: &str) -> String {
            match self.choose(line) {
                Err(err @ CliError::Usage(_)) => err.to_string(),
                other => panic!("{line} was not refused: {other:?}"),
            }
        }

        fn local(&self, path: &str) -> String {
            self.dir
                .path()
                .join("widget")
                .join(path)
                .display()
                .to_string()
        }
    }

    #[test]
    fn pytest_in_its_spellings() {
        let project = Project::new("");
        for (line, command) in [
            ("pytest -k fast", vec!["pytest"]),
            ("py.test -k fast", vec!["py.test"]),
            ("python -m pytest -k fast", vec!["python", "-m", "pytest"]),
            ("python3 -m pytest -k fast", vec!["python3", "-m", "pytest"]),
            (".venv/bin/pytest -k fast", vec![".venv/bin/pytest"]),
            (
                "python3.11 -m pytest -k fast",
                vec!["python3.11", "-m", "pytest"],
            ),
        ] {
            let runner = project.runner(line);
            assert_eq!(runner.pytest, command, "{line}");
            assert_eq!(runner.selection, argv("-k fast"), "{line}");
            assert_eq!(runner.dir, PathBuf::from("/var/tmp/tessera/widget"));
            assert_eq!(runner.root, Some(PathBuf::from("/var/tmp/tessera/widget")));
        }
    }

    #[test]
    fn paths_and_node_ids_select_and_options_run() {
        let project = Project::new("");
        let runner = project.runner(
            "pytest tests tests/test_a.py::TestX::test_y[a::b] -m slow -p no:randomly \
             -o xfail_strict=true -W error --import-mode=importlib --deselect tests/test_a.py::t",
        );
        assert_eq!(
            runner.selection,
            argv(
                "tests tests/test_a.py::TestX::test_y[a::b] -m slow --deselect tests/test_a.py::t"
            )
        );
        assert_eq!(
            runner.args,
            argv("-p no:randomly -o xfail_strict=true -W error --import-mode importlib")
        );
    }

    #[test]
    fn reporting_options_are_dropped_and_short_flags_are_split() {
        let project = Project::new("");
        let runner = project.runner("pytest -vvs -rA --tb=short -q --durations 5 -kfast tests");
        assert_eq!(runner.args, argv("-s"));
        assert_eq!(runner.selection, argv("-k fast tests"));
    }

    #[test]
    fn exitfirst_is_the_jobs_fail_fast_and_never_reaches_pytest() {
        let project = Project::new("");
        for line in [
            "pytest -x",
            "pytest --exitfirst",
            "pytest --maxfail=1",
            "pytest -xv tests",
        ] {
            let choice = project.choose(line).unwrap();
            assert!(choice.fail_fast, "{line}");
            let RunnerConfig::Pytest(runner) = &choice.config else {
                panic!("{line}")
            };
            assert!(
                !runner
                    .args
                    .iter()
                    .any(|a| a.contains('x') || a.contains("maxfail"))
            );
        }
        assert!(!project.choose("pytest --maxfail 0").unwrap().fail_fast);
        assert!(
            project
                .refusal("pytest --maxfail=3")
                .contains("--maxfail 3")
        );
    }

    #[test]
    fn a_subdirectory_keeps_relative_paths_and_may_reach_up_inside_the_project() {
        let project = Project::new("docs");
        let runner = project.runner("pytest ../tests/test_a.py::test_x");
        assert_eq!(runner.dir, PathBuf::from("/var/tmp/tessera/widget/docs"));
        assert_eq!(runner.selection, argv("../tests/test_a.py::test_x"));
    }

    #[test]
    fn absolute_paths_move_under_the_exec_root() {
        let project = Project::new("docs");
        let tests = project.local("tests");
        let line = format!(
            "pytest {tests}/test_a.py::test_x --rootdir {} --ignore={tests}/sub",
            project.local("")
        );
        let runner = project.runner(&line);
        assert_eq!(
            runner.selection,
            [
                "/var/tmp/tessera/widget/tests/test_a.py::test_x",
                "--ignore",
                "/var/tmp/tessera/widget/tests/sub"
            ]
        );
        assert_eq!(runner.args, ["--rootdir", "/var/tmp/tessera/widget"]);
    }

    #[test]
    fn paths_outside_the_project_or_missing_are_refused() {
        let project = Project::new("tests");
        let outside = project.refusal("pytest ../../elsewhere");
        assert!(
            outside.contains("`../../elsewhere` is outside the project"),
            "{outside}"
        );
        assert!(
            project
                .refusal("pytest /etc")
                .contains("outside the project")
        );
        assert!(
            project
                .refusal("pytest --rootdir=/tmp")
                .contains("outside the project")
        );
        let missing = project.refusal("pytest test_nope.py::test_x");
        assert!(
            missing.contains("`test_nope.py::test_x` does not exist"),
            "{missing}"
        );
        // With --pyargs the arguments are module names, which pytest resolves itself.
        assert!(project.choose("pytest --pyargs mypkg.tests").is_ok());
    }

    #[test]
    fn a_value_that_could_be_a_path_after_a_plugin_option_is_refused() {
        let project = Project::new("");
        let unclear = project.refusal("pytest --cov tests");
        assert!(unclear.contains("`--cov=VALUE`"), "{unclear}");
        // Written unambiguously, the plugin's option runs and the path selects.
        let runner = project.runner("pytest tests --runslow --cov=src");
        assert_eq!(runner.args, argv("--runslow --cov=src"));
        assert_eq!(runner.selection, argv("tests"));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_with_what_to_do() {
        let project = Project::new("");
        for (line, advice) in [
            ("pytest --junitxml=out.xml", "--junit FILE"),
            ("pytest -n 4", "spreads the tests"),
            ("pytest -n4", "spreads the tests"),
            ("pytest --lf", "cache"),
            ("pytest --pdb", "debug"),
            ("pytest --co", "does not run tests"),
        ] {
            let refusal = project.refusal(line);
            assert!(refusal.contains(advice), "{line}: {refusal}");
        }
    }
}

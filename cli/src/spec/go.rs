//! `go test` command lines: which flags change how tests run (kept, part of the cache key),
//! which only select tests (`-run`, package patterns), which Tessera does itself (`-json`, `-v`,
//! `-failfast`), and which cannot be honoured (refused before the job starts, exit code 2).
//!
//! | flag | what tessera does |
//! | --- | --- |
//! | package patterns | listed as given; `go test` with none means `.`, as for go; a relative pattern that matches no package here is refused |
//! | `-run REGEX` | a filter, applied as go applies it (alternatives, `/` levels); not in the cache key unless it reaches subtests |
//! | `-json`, `-v` | accepted and dropped: tessera always reads `-json` |
//! | `-failfast` | the job stops at its first failure; batches run without it |
//! | `-count`, `-race`, `-tags`, `-short`, `-timeout`, `-cpu`, `-parallel`, `-shuffle`, build flags | passed to every list and run command |
//! | `-list`, `-skip`, `-bench`, `-fuzz`, `-c`, `-o`, `-args`, profiles and `-coverprofile` | refused, with what to do instead |

use std::path::Path;

use tessera_runners::gotest::RunPattern;
use tessera_runners::{GoTestRunner, RunnerConfig};

use super::RunnerChoice;
use crate::exit::CliError;

/// The go runner for `go test ARGS`, run in `dir` on the agents; `local_dir` is where the user
/// typed the command, against which relative package patterns are checked.
pub(super) fn choose(
    rest: &[String],
    dir: &Path,
    local_dir: &Path,
) -> Result<RunnerChoice, CliError> {
    let line = GoCommandLine::parse(rest)?;
    if line.packages.is_empty() {
        check_pattern(local_dir, ".")?;
    }
    for pattern in &line.packages {
        check_pattern(local_dir, pattern)?;
    }
    let mut runner = GoTestRunner::new(dir).args(line.flags);
    if !line.packages.is_empty() {
        runner = runner.packages(line.packages);
    }
    if let Some(run) = line.run {
        RunPattern::parse(&run)
            .check()
            .map_err(|e| CliError::usage(format!("go test -run {run:?}: {e}")))?;
        runner = runner.run_filter(run);
    }
    Ok(RunnerChoice {
        fail_fast: line.fail_fast,
        ..RunnerChoice::new(RunnerConfig::Go(runner))
    })
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
    "memprofilerate",
    "mod",
    "modfile",
    "mutexprofile",
    "mutexprofilefraction",
    "blockprofilerate",
    "o",
    "outputdir",
    "overlay",
    "p",
    "parallel",
    "pkgdir",
    "run",
    "shuffle",
    "skip",
    "list",
    "tags",
    "timeout",
    "toolexec",
    "trace",
    "vet",
    "fuzz",
    "fuzztime",
    "fuzzminimizetime",
];

/// What a `go test` command line asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct GoCommandLine {
    /// Flags for every list and run command.
    flags: Vec<String>,
    /// Package patterns, in order.
    packages: Vec<String>,
    /// `-run`'s pattern (the last one given, as for go).
    run: Option<String>,
    /// `-failfast`.
    fail_fast: bool,
}

impl GoCommandLine {
    fn parse(args: &[String]) -> Result<Self, CliError> {
        let mut line = Self::default();
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                line.packages.push(arg.clone());
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (flag, None),
            };
            if let Some(why) = refusal(name) {
                return Err(CliError::usage(format!(
                    "`go test -{name}` is not supported: {why}"
                )));
            }
            let takes_value = GO_VALUE_FLAGS.contains(&name);
            let value = match (inline, takes_value) {
                (Some(value), _) => Some(value),
                (None, true) => Some(
                    iter.next()
                        .ok_or_else(|| CliError::usage(format!("go test {arg} needs a value")))?
                        .clone(),
                ),
                (None, false) => None,
            };
            match name {
                "run" => line.run = value,
                // Tessera always reads `-json`; `-v` only changes what go prints.
                "json" | "v" => {}
                "failfast" => line.fail_fast = value.as_deref() != Some("false"),
                _ => {
                    line.flags.push(arg.clone());
                    if let (true, Some(value)) = (takes_value && !arg.contains('='), value) {
                        line.flags.push(value);
                    }
                }
            }
        }
        Ok(line)
    }
}

/// Why a `go test` flag cannot be honoured, with what to do instead; `None` if it can.
fn refusal(name: &str) -> Option<&'static str> {
    Some(match name {
        "list" => "it lists tests instead of running them; run `go test -list` directly",
        "skip" => {
            "tessera does not apply -skip yet (go 1.19 has none); select tests with -run instead"
        }
        "bench" => {
            "it runs benchmarks, which tessera does not run or report; run benchmarks directly"
        }
        "fuzz" => "it fuzzes one target for as long as it is given; run fuzzing directly",
        "c" | "o" => "it builds the test binary without running it; run it directly",
        "args" => {
            "arguments for the test binary after -args are not passed on yet; set what they \
             select with an environment variable (--env) or run directly"
        }
        "coverprofile" | "cpuprofile" | "memprofile" | "blockprofile" | "mutexprofile"
        | "trace" | "outputdir" => {
            "it writes files on the machine that runs the tests, which tessera does not bring \
             back; drop it"
        }
        _ => return None,
    })
}

/// Refuses a relative package pattern (`.`, `./pkg`, `./pkg/...`, `../x`) that matches no Go
/// package under `local_dir`, as go would end with "matched no packages" or "no Go files";
/// import-path patterns are left to go (the job's list step reports them).
fn check_pattern(local_dir: &Path, pattern: &str) -> Result<(), CliError> {
    if !(pattern == "."
        || pattern == ".."
        || pattern.starts_with("./")
        || pattern.starts_with("../"))
    {
        return Ok(());
    }
    let (path, recursive) = match pattern.strip_suffix("/...") {
        Some(base) => (base, true),
        None if pattern == "./..." || pattern == "..." => (".", true),
        None => (pattern, false),
    };
    if path.contains("...") {
        // A wildcard inside the path (`./cmd/.../x`): go expands it; do not guess.
        return Ok(());
    }
    let dir = local_dir.join(path);
    let found = if !dir.is_dir() {
        false
    } else if recursive {
        has_go_files_below(&dir, 0)
    } else {
        has_go_files_in(&dir)
    };
    if found {
        return Ok(());
    }
    Err(CliError::usage(format!(
        "go test package pattern `{pattern}` matches no Go package under {} ({}); check the \
         pattern, or run tessera from the directory you run `go test` in",
        local_dir.display(),
        if dir.is_dir() {
            "no .go files there"
        } else {
            "no such directory"
        }
    )))
}

fn has_go_files_in(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_type().is_ok_and(|t| t.is_file())
                && e.file_name().to_string_lossy().ends_with(".go")
        })
    })
}

/// Whether `dir` or a directory below it that `./...` reaches holds a `.go` file: go skips
/// `testdata`, names starting with `.` or `_`, and nested modules.
fn has_go_files_below(dir: &Path, depth: usize) -> bool {
    // Deep trees are not walked to the end: past this depth, assume go finds something.
    if depth > 32 {
        return true;
    }
    if has_go_files_in(dir) {
        return true;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        e.file_type().is_ok_and(|t| t.is_dir())
            && name != "testdata"
            && !name.starts_with('.')
            && !name.starts_with('_')
            && !path.join("go.mod").exists()
            && has_go_files_below(&path, depth + 1)
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    /// A module on disk with `pkg/a`, `cmd/tool` and an empty `docs` directory.
    fn module() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "go.mod",
            "pkg/a/a.go",
            "pkg/a/a_test.go",
            "cmd/tool/main.go",
        ] {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("docs/more")).unwrap();
        dir
    }

    fn choose_in(local: &Path, line: &str) -> Result<GoTestRunner, CliError> {
        let choice = choose(&argv(line), &PathBuf::from("/var/tmp/tessera/m"), local)?;
        match choice.config {
            RunnerConfig::Go(runner) => Ok(runner),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn go_test_splits_flags_from_packages() {
        let module = module();
        let runner = choose_in(
            module.path(),
            "-tags integration -race ./pkg/... ./cmd/tool -count=2",
        )
        .unwrap();
        assert_eq!(runner.args, argv("-tags integration -race -count=2"));
        assert_eq!(runner.packages, argv("./pkg/... ./cmd/tool"));
        assert_eq!(runner.dir, PathBuf::from("/var/tmp/tessera/m"));
    }

    #[test]
    fn go_test_without_packages_means_the_package_here() {
        let module = module();
        let runner = choose_in(&module.path().join("pkg/a"), "-short").unwrap();
        assert_eq!(runner.packages, ["."]);
        assert_eq!(runner.args, ["-short"]);
    }

    #[test]
    fn run_is_a_filter_and_json_v_failfast_are_tessera_s_own() {
        let module = module();
        let choice = choose(
            &argv("-json -v -failfast -run TestX/case ./..."),
            Path::new("/x"),
            module.path(),
        )
        .unwrap();
        assert!(choice.fail_fast);
        let RunnerConfig::Go(runner) = choice.config else {
            panic!()
        };
        assert_eq!(runner.run.as_deref(), Some("TestX/case"));
        assert!(runner.args.is_empty(), "{:?}", runner.args);
        let runner = choose_in(module.path(), "-run=^TestY$ -failfast=false ./...").unwrap();
        assert_eq!(runner.run.as_deref(), Some("^TestY$"));
        // A pattern go could not read either is refused before the job.
        let err = choose_in(module.path(), "-run Test( ./...").unwrap_err();
        assert!(matches!(err, CliError::Usage(_)));
        assert!(err.to_string().contains("Test("), "{err}");
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_with_what_to_do() {
        let module = module();
        for (line, words) in [
            ("-list . ./...", "-list"),
            ("-skip TestX ./...", "-run"),
            ("-bench . ./...", "benchmarks"),
            ("-coverprofile c.out ./...", "bring"),
            ("./... -args -update", "-args"),
        ] {
            let err = choose_in(module.path(), line).unwrap_err();
            assert!(matches!(err, CliError::Usage(_)), "{line}");
            assert!(err.to_string().contains(words), "{line}: {err}");
        }
        assert!(choose_in(module.path(), "-count").is_err());
    }

    #[test]
    fn a_pattern_that_matches_no_package_here_is_refused_naming_it() {
        let module = module();
        for pattern in ["./nope/...", "./docs/...", "./docs", "./pkg/b"] {
            let err = choose_in(module.path(), pattern).unwrap_err();
            assert!(matches!(err, CliError::Usage(_)), "{pattern}");
            assert!(err.to_string().contains(pattern), "{err}");
        }
        // Patterns that match, and import paths that only go can resolve, are accepted.
        for pattern in [
            "./...",
            "./pkg/...",
            "./pkg/a",
            "example.com/m/pkg/...",
            "std",
        ] {
            assert!(choose_in(module.path(), pattern).is_ok(), "{pattern}");
        }
        // `go test` alone in a directory without Go files fails in go as well.
        let err = choose_in(&module.path().join("docs"), "-v").unwrap_err();
        assert!(err.to_string().contains("`.`"), "{err}");
    }
}

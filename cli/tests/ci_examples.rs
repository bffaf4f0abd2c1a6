//! The CI examples in `examples/ci/` do not rot: every `tessera run` in them uses only flags the
//! built binary's `tessera run --help` lists, each uses `--junit` and `--label`, and each takes
//! `TESSERA_TOKEN` from its CI system's secret store, never from the file. There is no YAML
//! parser in the tree, so the checks are textual: a command is followed through `\` line
//! continuations and YAML folded lines that start with a flag.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn examples_ci() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ci")
}

/// The flags `tessera run --help` lists, long and short (`--junit`, `-h`).
fn run_flags() -> BTreeSet<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["run", "--help"])
        .env_remove("TESSERA_CLIENT_CONFIG")
        .output()
        .unwrap();
    assert!(output.status.success(), "tessera run --help: {output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    let mut flags = BTreeSet::new();
    for line in help.lines() {
        // clap writes each option as `  -h, --help` or `      --junit <FILE>` on a line of its own.
        let line = line.trim_start();
        if !line.starts_with('-') {
            continue;
        }
        for word in line.split_whitespace() {
            let word = word.trim_end_matches(',');
            if word.starts_with('-') && word.len() > 1 {
                flags.insert(word.to_owned());
            } else {
                break;
            }
        }
    }
    flags
}

/// The flags of each `tessera run` command in `text` (comments, which may name it in prose,
/// are left out): the words starting with `-` after `tessera run` and before the `--` that
/// starts the test command, values after `=` dropped.
fn tessera_run_flags(text: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut commands = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let start = match lines[i].find("tessera run") {
            Some(start) if !lines[i].trim_start().starts_with('#') => start,
            _ => {
                i += 1;
                continue;
            }
        };
        let mut command = lines[i][start + "tessera run".len()..].to_owned();
        // Follow the command onto the next lines: after a `\`, or while they start with a flag
        // (a YAML `>-` block folds them into one line; `- ` starts the next list item).
        while let Some(next) = lines.get(i + 1).map(|line| line.trim()) {
            let continued = command.trim_end().ends_with('\\');
            let flag_line = next.starts_with('-') && !next.starts_with("- ");
            if !(continued || flag_line) {
                break;
            }
            command = format!("{} {next}", command.trim_end().trim_end_matches('\\'));
            i += 1;
        }
        let flags = command
            .split_whitespace()
            .take_while(|word| *word != "--")
            .filter(|word| word.starts_with('-'))
            .map(|word| word.split('=').next().unwrap_or(word).to_owned())
            .collect();
        commands.push(flags);
        i += 1;
    }
    commands
}

fn example(name: &str) -> String {
    std::fs::read_to_string(examples_ci().join(name))
        .unwrap_or_else(|e| panic!("examples/ci/{name}: {e}"))
}

/// The YAML files in `examples/ci/`: each is checked, so a new one cannot slip past.
fn yaml_examples() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(examples_ci())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".yml") || name.ends_with(".yaml"))
        .collect();
    names.sort();
    names
}

#[test]
fn every_example_is_there() {
    assert_eq!(
        yaml_examples(),
        ["buildkite.yml", "github-actions.yml", "gitlab-ci.yml"]
    );
    assert!(example("README.md").contains("| `pipeline_url` |"));
}

#[test]
fn every_tessera_run_uses_only_flags_that_exist() {
    let known = run_flags();
    // The parse of the help found the options, not only a few.
    for flag in ["--coordinator", "--junit", "--label", "--retries", "-h"] {
        assert!(known.contains(flag), "{flag} not found in {known:?}");
    }
    for name in yaml_examples() {
        let commands = tessera_run_flags(&example(&name));
        assert!(!commands.is_empty(), "{name}: no `tessera run`");
        for flags in &commands {
            for flag in flags {
                assert!(
                    known.contains(flag),
                    "{name}: `tessera run {flag}` is not in `tessera run --help`"
                );
            }
            for needed in ["--junit", "--label"] {
                assert!(
                    flags.iter().any(|flag| flag == needed),
                    "{name}: a `tessera run` without {needed}: {flags:?}"
                );
            }
        }
    }
}

#[test]
fn each_example_takes_the_token_from_the_ci_systems_secret_store() {
    // Where each system's secret store puts the token.
    let from_store = [
        (
            "github-actions.yml",
            "TESSERA_TOKEN: ${{ secrets.TESSERA_TOKEN }}",
        ),
        // A masked CI/CD variable set in the project's settings, exported by GitLab.
        ("gitlab-ci.yml", "TESSERA_TOKEN        a `ci` token"),
        (
            "buildkite.yml",
            "TESSERA_TOKEN=\"$(buildkite-agent secret get tessera_token)\"",
        ),
    ];
    for (name, source) in from_store {
        let text = example(name);
        assert!(
            text.contains(source),
            "{name}: TESSERA_TOKEN not from {source:?}"
        );
        if name == "gitlab-ci.yml" {
            assert!(
                text.contains("Masked"),
                "{name}: the variable is not masked"
            );
        }
        // Nothing outside comments gives the token a value other than the store's.
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            if let Some((_, value)) = line.split_once("TESSERA_TOKEN:") {
                assert_eq!(
                    value.trim(),
                    "${{ secrets.TESSERA_TOKEN }}",
                    "{name}: {line}"
                );
            }
        }
        // A token is `tsr_` and 64 hex digits: none is written down.
        assert!(!text.contains("tsr_"), "{name} holds a token");
    }
}

#[test]
fn examples_are_indented_with_spaces() {
    // YAML refuses tabs in indentation; a tab would make the file fail in the CI system.
    for name in yaml_examples() {
        for (n, line) in example(&name).lines().enumerate() {
            assert!(!line.contains('\t'), "{name}:{}: a tab", n + 1);
        }
    }
}

#[test]
fn the_command_reader_follows_continuations_and_folded_lines() {
    let shell = concat!(
        "run: |\n",
        "  tessera run --coordinator \"$C\" \\\n",
        "    --junit=j.xml \\\n",
        "    -- cargo test --quiet\n",
    );
    assert_eq!(
        tessera_run_flags(shell),
        [vec!["--coordinator".to_owned(), "--junit".to_owned()]]
    );
    let folded = concat!(
        "script:\n",
        "  - >-\n",
        "    tessera run\n",
        "    --label team=x\n",
        "    -- go test ./...\n",
        "  - echo --done\n",
    );
    assert_eq!(tessera_run_flags(folded), [vec!["--label".to_owned()]]);
}

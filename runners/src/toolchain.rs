//! Toolchains: which tool a runner needs on an agent, and how an agent finds out which version
//! of it it has.
//!
//! An agent runs [`Toolchain::probe`] for each toolchain when it starts and advertises what it
//! found as platform properties: `tool=<name>` (one value per tool it has, e.g. `tool=cargo`,
//! `tool=python`) and `toolchain.<name>=<version>+<fingerprint>`, where the fingerprint hashes
//! everything the probe printed (`rustc -vV`, the Python interpreter and its installed packages,
//! `go version` and `go env`). A job needs `tool=<name>` for its runner, so an agent without the
//! tool is never given it; the coordinator pins each job to one `toolchain.<name>` value, which
//! thereby becomes part of every step's action and every test's cache key: an upgraded
//! toolchain never answers from an old pass.
//!
//! Probes use the agent's own environment (its `PATH`), once at start: restart an agent after
//! upgrading a toolchain on its host. A job that runs a tool from elsewhere (a virtualenv in the
//! job's `PATH`) is fingerprinted by the agent's default interpreter, not by that one.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::RunnerConfig;

/// A tool a runner needs on the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Toolchain {
    /// `cargo` and `rustc` (the cargo runner).
    Cargo,
    /// `cargo nextest` on top of cargo.
    Nextest,
    /// `python3` (the pytest runner).
    Python,
    /// `go`.
    Go,
}

/// The platform key listing the tools an agent has (one value per tool).
pub const TOOL_KEY: &str = "tool";
/// The prefix of the platform keys carrying a toolchain's version and fingerprint.
pub const TOOLCHAIN_KEY_PREFIX: &str = "toolchain.";

/// How long one probe may take before the tool counts as missing.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Prints the interpreter's version and path and every installed distribution, sorted. pytest
/// itself is not required here: a job may run it from a virtualenv of its own.
const PYTHON_PROBE: &str = "import sys, importlib.metadata as m
print(sys.version)
print(sys.executable)
for d in sorted({(d.metadata['Name'] or '?').lower() + '==' + (d.version or '?') for d in m.distributions()}):
    print(d)";

impl Toolchain {
    /// Every toolchain, in a stable order.
    pub const ALL: [Toolchain; 4] = [Self::Cargo, Self::Nextest, Self::Python, Self::Go];

    /// The toolchain `runner` needs, if any (a generic command needs none we can name).
    pub fn of(runner: &RunnerConfig) -> Option<Self> {
        match runner {
            RunnerConfig::Cargo(_) => Some(Self::Cargo),
            RunnerConfig::Nextest(_) => Some(Self::Nextest),
            RunnerConfig::Pytest(_) => Some(Self::Python),
            RunnerConfig::Go(_) => Some(Self::Go),
            RunnerConfig::Command(_) => None,
        }
    }

    /// Its name, the value of the `tool` property.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cargo => "cargo",
            Self::Nextest => "nextest",
            Self::Python => "python",
            Self::Go => "go",
        }
    }

    /// The platform key carrying its version and fingerprint (`toolchain.cargo`, ...).
    pub fn key(self) -> String {
        format!("{TOOLCHAIN_KEY_PREFIX}{}", self.name())
    }

    /// The commands whose combined output identifies the toolchain; all must succeed.
    pub fn probe_commands(self) -> Vec<Vec<&'static str>> {
        match self {
            Self::Cargo => vec![vec!["rustc", "-vV"], vec!["cargo", "-V"]],
            Self::Nextest => vec![
                vec!["rustc", "-vV"],
                vec!["cargo", "-V"],
                vec!["cargo", "nextest", "--version"],
            ],
            Self::Python => vec![vec!["python3", "-c", PYTHON_PROBE]],
            Self::Go => vec![
                vec!["go", "version"],
                vec!["go", "env", "GOROOT", "GOOS", "GOARCH", "CGO_ENABLED"],
            ],
        }
    }

    /// Runs the probe here: the property value (`1.95.0+<fingerprint>`), or `None` when the
    /// tool is missing or broken.
    pub fn probe(self) -> Option<String> {
        let mut output = String::new();
        for argv in self.probe_commands() {
            output.push_str(&run_probe(&argv)?);
            output.push('\n');
        }
        Some(Self::value(&output))
    }

    /// The property value for a probe's output: the first version-looking word, `+`, and 12
    /// hex digits of the output's hash.
    pub fn value(output: &str) -> String {
        let version = output
            .split_whitespace()
            .map(|w| w.trim_start_matches("go").trim_start_matches('v'))
            .find(|w| {
                w.chars().next().is_some_and(|c| c.is_ascii_digit())
                    && w.contains('.')
                    && w.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
            })
            .unwrap_or("unknown");
        let hash = blake3::hash(output.as_bytes()).to_hex();
        format!("{version}+{}", &hash[..12])
    }
}

/// Runs one probe command with a deadline; its stdout when it succeeds. Standard output is
/// read while the command runs, so a long listing cannot fill the pipe and stall it.
fn run_probe(argv: &[&str]) -> Option<String> {
    let (program, args) = argv.split_first()?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).ok().map(|_| text)
    });
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let succeeded = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.success(),
            Err(_) => break false,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let text = reader.join().ok().flatten();
    if succeeded { text } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_the_version_and_change_with_any_byte() {
        let rustc = "rustc 1.95.0 (abc 2026-10-01)\nbinary: rustc\nhost: x86_64\n";
        let value = Toolchain::value(rustc);
        assert!(value.starts_with("1.95.0+"), "{value}");
        assert_eq!(value.len(), "1.95.0+".len() + 12);
        assert_ne!(value, Toolchain::value(&rustc.replace("abc", "abd")));
        assert!(Toolchain::value("go version go1.19.8 linux/amd64").starts_with("1.19.8+"));
        assert!(Toolchain::value("3.11.7 (main) [GCC]").starts_with("3.11.7+"));
        assert!(Toolchain::value("").starts_with("unknown+"));
    }

    #[test]
    fn a_missing_tool_has_no_value() {
        assert_eq!(run_probe(&["tessera-no-such-tool-here"]), None);
        assert_eq!(run_probe(&["sh", "-c", "exit 3"]), None);
        assert_eq!(run_probe(&["sh", "-c", "echo hi"]).as_deref(), Some("hi\n"));
        // More than a pipe holds: read while it runs, not after.
        let long = run_probe(&["sh", "-c", "seq 1 100000"]).expect("a long listing");
        assert_eq!(long.lines().count(), 100_000);
    }

    #[test]
    fn runners_name_their_toolchain() {
        let pytest = RunnerConfig::Pytest(crate::PytestRunner::new("/src"));
        assert_eq!(Toolchain::of(&pytest), Some(Toolchain::Python));
        assert_eq!(Toolchain::Python.key(), "toolchain.python");
        assert_eq!(Toolchain::Go.name(), "go");
    }
}

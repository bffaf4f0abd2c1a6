//! The systemd units under `deploy/systemd/`, checked two ways (issue 14).
//!
//! 1. `systemd-analyze verify` reads each unit as systemd would. It refuses a unit whose
//!    `ExecStart` binary does not exist, and `--root` does not help (it needs a whole unit tree
//!    under the root: `sysinit.target` and the rest), so each unit is verified as a copy in a
//!    temporary directory with the installed path `/usr/local/bin/tessera` rewritten to the
//!    `tessera` binary under test. It exits 0 even on unknown keys and bad values, printing
//!    them as warnings; any warning naming one of our units is a failure here.
//! 2. PID 1 on the machines that run these tests is not systemd, so the units' commands are run
//!    the way systemd would run them: `ExecStart` with its specifiers (`%i`) and the
//!    environment it names (`$STATE_DIRECTORY`, `$CONFIGURATION_DIRECTORY`) pointed into a
//!    temporary directory, `ExecReload` with `$MAINPID`, and a stop as systemd does one
//!    (`ExecStop` if there is one, then `KillSignal`, default SIGTERM, to the main process:
//!    both units use a `KillMode` that signals the main process). Their effect is checked on
//!    real processes: a reload makes the coordinator re-read its TLS certificate, and stopping
//!    an agent mid-action drains it (the action finishes, the agent exits 0 and the coordinator
//!    sees it leave).
//!
//! What is not checked here: `User=`, the capabilities and the sandboxing directives, which
//! only a systemd PID 1 applies (the commands run as the test's user).
//!
//! `systemd-analyze` comes with Debian's `systemd` package (`.ci/install-deps.sh`); without it
//! the verify test skips outside CI and fails under CI. The command tests need no tool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tessera_cas::client::CasClient;
use tessera_cas::digest::DigestFunction;
use tessera_proto::reapi::execution_client::ExecutionClient;
use tessera_proto::reapi::{ExecuteRequest, execution_stage};
use tessera_tests::{
    ChildLog, Pki, free_port, in_ci, lines, response_of, tessera_bin, upload_action,
    visible_tempdir, wait_exit, wait_stage,
};

/// Where the units expect the binary (their install notes put it there).
const INSTALLED_BIN: &str = "/usr/local/bin/tessera";
/// The units in `deploy/systemd/`, and nothing else.
const UNITS: [&str; 2] = ["tessera-agent@.service", "tessera-coordinator.service"];
/// What the coordinator logs when SIGHUP re-read its certificate
/// (`cli/src/commands/coordinator.rs`, `reload_on_sighup`).
const TLS_RELOADED: &str = "received SIGHUP: TLS certificate reloaded for new connections";
/// What the coordinator logs when an agent's session ends
/// (`coordinator/src/execution/scheduler/agents.rs`).
const AGENT_DISCONNECTED: &str = "agent disconnected";
/// What an agent logs when SIGTERM starts its drain (`agent/src/session.rs`).
const DRAINING: &str = "draining: taking no new leases";

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

/// One unit file: its `[Service]` settings in file order (a key may repeat).
struct Unit {
    name: &'static str,
    text: String,
    service: Vec<(String, String)>,
}

impl Unit {
    fn load(name: &'static str) -> Unit {
        let text = std::fs::read_to_string(units_dir().join(name))
            .unwrap_or_else(|e| panic!("read deploy/systemd/{name}: {e}"));
        let mut service = Vec::new();
        let mut section = String::new();
        let mut pending = String::new();
        for raw in text.lines() {
            let line = raw.trim();
            if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';'])) {
                continue;
            }
            // A trailing backslash continues the setting on the next line.
            if let Some(head) = line.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            pending.push_str(line);
            let full = std::mem::take(&mut pending);
            if let Some(name) = full.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                section = name.to_owned();
            } else if section == "Service" {
                let (key, value) = full
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{name}: not a setting: {full}"));
                service.push((key.trim().to_owned(), value.trim().to_owned()));
            }
        }
        Unit {
            name,
            text,
            service,
        }
    }

    /// The last value of `key` in `[Service]` (what systemd uses for single-valued settings).
    fn get(&self, key: &str) -> Option<&str> {
        self.service
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn require(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("{} has no {key}=", self.name))
    }

    /// `TimeoutStopSec`.
    fn stop_timeout(&self) -> Duration {
        parse_span(self.require("TimeoutStopSec"))
    }

    /// The signal a stop sends after `ExecStop` (systemd's default: SIGTERM).
    fn kill_signal(&self) -> Signal {
        let name = self.get("KillSignal").unwrap_or("SIGTERM");
        let name = if name.starts_with("SIG") {
            name.to_owned()
        } else {
            format!("SIG{name}")
        };
        name.parse()
            .unwrap_or_else(|_| panic!("unknown KillSignal {name}"))
    }
}

/// A systemd time span such as `90s`, `11min` or `1h 30min`, or a `humantime` one such as `10m`
/// (what the agent's `--drain-timeout` takes): a sum of numbers with units.
fn parse_span(text: &str) -> Duration {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: u64 = rest[..digits]
            .parse()
            .unwrap_or_else(|_| panic!("not a time span: {text}"));
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c.is_whitespace())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "" | "s" | "sec" => 1,
            "m" | "min" => 60,
            "h" | "hr" => 3600,
            unit => panic!("time unit {unit:?} in {text} is not known to this test"),
        };
        total += Duration::from_secs(number * seconds);
        rest = rest[unit_len..].trim_start();
    }
    total
}

/// What systemd would hand a unit's command lines: the instance (`%i`) and the environment.
struct Expansion {
    instance: Option<String>,
    env: BTreeMap<String, String>,
}

impl Expansion {
    /// The command line of `setting` (`ExecStart`, ...), split into words as systemd does for
    /// the forms these units use: `%i` and `%%`, `${NAME}` (one word, even with spaces) and
    /// `$NAME` as a word of its own (split on whitespace); the installed binary path is the one
    /// under test. Anything else systemd would treat specially is refused, so a unit that
    /// starts using it makes this test grow instead of silently running something else.
    fn command(&self, unit: &Unit, setting: &str) -> Option<Vec<String>> {
        let line = unit.get(setting)?;
        assert!(
            !line.starts_with(['-', '@', ':', '+', '!']),
            "{}: {setting} uses a prefix this test does not model: {line}",
            unit.name
        );
        assert!(
            !line.contains(['"', '\'', ';']),
            "{}: {setting} uses quoting or ';', which this test does not model: {line}",
            unit.name
        );
        let mut words = Vec::new();
        for word in line.split_whitespace() {
            let word = self.specifiers(unit, word);
            if let Some(name) = word.strip_prefix('$').filter(|n| !n.starts_with('{')) {
                words.extend(self.var(unit, name).split_whitespace().map(str::to_owned));
            } else {
                words.push(self.braced_vars(unit, &word));
            }
        }
        if words[0] == INSTALLED_BIN {
            words[0] = tessera_bin().display().to_string();
        }
        Some(words)
    }

    fn specifiers(&self, unit: &Unit, word: &str) -> String {
        let mut out = String::new();
        let mut chars = word.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('i') => out.push_str(
                    self.instance
                        .as_deref()
                        .unwrap_or_else(|| panic!("{}: %i outside a template", unit.name)),
                ),
                Some('%') => out.push('%'),
                other => panic!("{}: specifier %{other:?} not modelled", unit.name),
            }
        }
        out
    }

    fn braced_vars(&self, unit: &Unit, word: &str) -> String {
        let mut out = String::new();
        let mut rest = word;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find('}')
                .unwrap_or_else(|| panic!("{}: unclosed ${{ in {word}", unit.name));
            out.push_str(self.var(unit, &rest[start + 2..start + end]));
            rest = &rest[start + end + 1..];
        }
        assert!(
            !rest.contains('$'),
            "{}: a $VARIABLE inside a word is not expanded by systemd: {word}",
            unit.name
        );
        out.push_str(rest);
        out
    }

    fn var(&self, unit: &Unit, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("{}: ${name} is not set by systemd here", unit.name))
    }
}

/// A unit's service running as a child of the test, started from its `ExecStart`.
struct Service {
    child: Child,
    log: ChildLog,
    expansion: Expansion,
}

impl Service {
    /// Lays out the directories systemd would create under `root` (`StateDirectory=`,
    /// `ConfigurationDirectory=`), lets `configure` write the configuration into the latter,
    /// and starts `ExecStart` with the environment systemd gives it and no other.
    fn start(
        unit: &Unit,
        instance: Option<&str>,
        root: &Path,
        configure: impl FnOnce(&Path),
    ) -> Service {
        let mut expansion = Expansion {
            instance: instance.map(str::to_owned),
            env: BTreeMap::new(),
        };
        let state = root
            .join("var/lib")
            .join(expansion.specifiers(unit, unit.require("StateDirectory")));
        let config = root
            .join("etc")
            .join(expansion.specifiers(unit, unit.require("ConfigurationDirectory")));
        for dir in [&state, &config] {
            std::fs::create_dir_all(dir).expect("create a unit directory");
        }
        configure(&config);
        for (name, dir) in [
            ("STATE_DIRECTORY", &state),
            ("CONFIGURATION_DIRECTORY", &config),
        ] {
            expansion
                .env
                .insert(name.to_owned(), dir.display().to_string());
        }
        let argv = expansion.command(unit, "ExecStart").expect("ExecStart");
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .envs(&expansion.env)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: run ExecStart {argv:?}: {e}", unit.name));
        let label = instance.unwrap_or(unit.name);
        let log = ChildLog::capture(label, child.stderr.take().expect("piped stderr"));
        Service {
            child,
            log,
            expansion,
        }
    }

    fn main_pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
    }

    /// Runs the command of `setting` with `$MAINPID` set and asserts it succeeds; `false` when
    /// the unit has no such setting.
    fn run(&mut self, unit: &Unit, setting: &str) -> bool {
        self.expansion
            .env
            .insert("MAINPID".to_owned(), self.child.id().to_string());
        let Some(argv) = self.expansion.command(unit, setting) else {
            return false;
        };
        let status = Command::new(&argv[0])
            .args(&argv[1..])
            .status()
            .unwrap_or_else(|e| panic!("{}: run {setting} {argv:?}: {e}", unit.name));
        assert!(
            status.success(),
            "{}: {setting} {argv:?}: {status}",
            unit.name
        );
        true
    }

    /// Starts a stop as `systemctl stop` does: `ExecStop` if the unit has one, then its
    /// `KillSignal` to the main process.
    fn begin_stop(&mut self, unit: &Unit) {
        self.run(unit, "ExecStop");
        nix::sys::signal::kill(self.main_pid(), unit.kill_signal()).expect("send KillSignal");
    }

    /// Waits for the stopped service to exit 0 within `limit` (at most the unit's
    /// `TimeoutStopSec`, after which systemd would SIGKILL it).
    fn wait_stopped(&mut self, unit: &Unit, limit: Duration) {
        assert!(limit <= unit.stop_timeout());
        let status = wait_exit(&mut self.child, limit)
            .unwrap_or_else(|| panic!("{} still runs {limit:?} after its stop", unit.name));
        assert!(status.success(), "{} stopped with {status}", unit.name);
    }

    /// `systemctl stop`: [`Service::begin_stop`], then [`Service::wait_stopped`].
    fn stop(&mut self, unit: &Unit, limit: Duration) {
        self.begin_stop(unit);
        self.wait_stopped(unit, limit);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `deploy/systemd/*.service` files, sorted.
fn unit_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(units_dir())
        .expect("list deploy/systemd")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".service"))
        .collect();
    names.sort();
    names
}

/// `systemd-analyze verify` on a copy of `text` named `name` in `dir`; returns the lines it
/// printed about the unit. `None` (skip) when the tool is missing outside CI.
fn verify(dir: &Path, name: &str, text: &str) -> Option<Vec<String>> {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the unit copy");
    let output = match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
    {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                !in_ci(),
                "systemd-analyze is required under CI (Debian package systemd; .ci/install-deps.sh)"
            );
            eprintln!("skipping: systemd-analyze is not installed (apt-get install systemd)");
            return None;
        }
        Err(error) => panic!("failed to run systemd-analyze: {error}"),
    };
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprint!("{stderr}");
    let mut complaints: Vec<String> = stderr
        .lines()
        .filter(|line| line.contains("tessera"))
        .map(str::to_owned)
        .collect();
    if !output.status.success() && complaints.is_empty() {
        complaints.push(format!("systemd-analyze verify {name}: {}", output.status));
    }
    Some(complaints)
}

/// The log lines waited for here still occur in the code that logs them (a reworded line
/// would otherwise read as a unit that does not work).
#[test]
fn the_log_lines_waited_for_still_exist() {
    for (line, file) in [
        (TLS_RELOADED, "cli/src/commands/coordinator.rs"),
        (
            AGENT_DISCONNECTED,
            "coordinator/src/execution/scheduler/agents.rs",
        ),
        (DRAINING, "agent/src/session.rs"),
    ] {
        let source =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file))
                .unwrap_or_else(|e| panic!("read {file}: {e}"));
        assert!(source.contains(line), "{file} no longer logs {line:?}");
    }
}

#[test]
fn deploy_systemd_holds_exactly_the_two_units() {
    assert_eq!(unit_files(), UNITS);
}

#[test]
fn every_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let bin = tessera_bin().display().to_string();
    for name in UNITS {
        let unit = Unit::load(name);
        assert!(
            unit.require("ExecStart").starts_with(INSTALLED_BIN),
            "{name}: ExecStart should run {INSTALLED_BIN} (the install notes put it there)"
        );
        let Some(complaints) = verify(dir.path(), name, &unit.text.replace(INSTALLED_BIN, &bin))
        else {
            return;
        };
        assert!(complaints.is_empty(), "{name}:\n{}", complaints.join("\n"));
        // The check can fail: the same unit with a misspelt key is reported.
        let broken = unit
            .text
            .replace(INSTALLED_BIN, &bin)
            .replace("\nTimeoutStopSec=", "\nTimeoutStopSecs=");
        let complaints = verify(dir.path(), name, &broken).expect("verify ran before");
        assert!(
            complaints.iter().any(|c| c.contains("TimeoutStopSecs")),
            "a misspelt key in {name} went unnoticed: {complaints:?}"
        );
    }
}

#[test]
fn the_agent_unit_stops_by_draining_within_its_timeout() {
    let unit = Unit::load("tessera-agent@.service");
    // Only the agent gets SIGTERM: its commands run in process groups of their own, in the
    // same control group, and must be left to finish.
    assert_eq!(unit.get("KillMode"), Some("mixed"));
    assert_eq!(unit.kill_signal(), Signal::SIGTERM);
    // systemd sends KillSignal after ExecStop: a second SIGTERM would end the drain at once.
    assert_eq!(unit.get("ExecStop"), None);
    let start = unit.require("ExecStart");
    let drain = start
        .split_whitespace()
        .skip_while(|w| *w != "--drain-timeout")
        .nth(1)
        .unwrap_or_else(|| panic!("ExecStart sets no --drain-timeout: {start}"));
    assert!(
        unit.stop_timeout() >= parse_span(drain) + Duration::from_secs(60),
        "TimeoutStopSec {:?} leaves under a minute after the drain timeout {drain}",
        unit.stop_timeout()
    );
    // Both units keep their state where systemd creates it for them, as their own user.
    for name in UNITS {
        let unit = Unit::load(name);
        assert!(unit.require("ExecStart").contains("${STATE_DIRECTORY}"));
        assert!(unit.get("User").is_some_and(|u| u != "root"), "{name}");
    }
}

#[test]
fn the_time_spans_in_the_units_parse_as_systemd_reads_them() {
    assert_eq!(parse_span("90s"), Duration::from_secs(90));
    assert_eq!(parse_span("11min"), Duration::from_secs(660));
    assert_eq!(parse_span("1h 30min"), Duration::from_secs(5400));
    assert_eq!(parse_span("10m"), Duration::from_secs(600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reload_makes_the_coordinator_reload_its_tls_certificate() {
    let Some(pki) = Pki::standard(&[]) else {
        return;
    };
    let unit = Unit::load("tessera-coordinator.service");
    let root = visible_tempdir();
    let port = free_port();
    let mut coordinator = Service::start(&unit, None, root.path(), |config| {
        let toml = format!(
            "listen = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            pki.cert("server").display(),
            pki.key("server").display()
        );
        std::fs::write(config.join("coordinator.toml"), toml).unwrap();
    });
    coordinator
        .log
        .wait_for(lines::COORDINATOR_LISTENING, Duration::from_secs(30))
        .await;
    // A renewed certificate, as an operator would install before `systemctl reload`.
    pki.server("server", "ca", &["localhost", "127.0.0.1"]);
    assert!(coordinator.run(&unit, "ExecReload"), "no ExecReload");
    let line = coordinator
        .log
        .wait_for(TLS_RELOADED, Duration::from_secs(30))
        .await;
    assert!(
        line.contains(&pki.cert("server").display().to_string()),
        "{line}"
    );
    // The data went where StateDirectory= puts it.
    assert!(root.path().join("var/lib/tessera/meta").is_dir());
    coordinator.stop(&unit, Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_agent_unit_drains_it() {
    let coordinator_unit = Unit::load("tessera-coordinator.service");
    let agent_unit = Unit::load("tessera-agent@.service");
    let root = visible_tempdir();
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut coordinator = Service::start(&coordinator_unit, None, root.path(), |config| {
        std::fs::write(
            config.join("coordinator.toml"),
            format!("listen = \"127.0.0.1:{port}\"\n"),
        )
        .unwrap();
    });
    coordinator
        .log
        .wait_for(lines::COORDINATOR_LISTENING, Duration::from_secs(30))
        .await;
    let mut agent = Service::start(&agent_unit, Some("build1"), root.path(), |config| {
        std::fs::write(
            config.join("agent-build1.toml"),
            format!("coordinator = \"{endpoint}\"\nslots = 1\n"),
        )
        .unwrap();
    });
    agent
        .log
        .wait_for(lines::AGENT_CONNECTED, Duration::from_secs(30))
        .await;

    let client = CasClient::connect(&endpoint, "", DigestFunction::Sha256)
        .await
        .unwrap();
    let digest = upload_action(
        &client,
        &["sh", "-c", "sleep 1; echo drained"],
        &[],
        &[],
        false,
    )
    .await;
    let mut execution = ExecutionClient::connect(endpoint.clone())
        .await
        .unwrap()
        .execute(ExecuteRequest {
            action_digest: Some(digest.to_proto()),
            skip_cache_lookup: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    wait_stage(
        &mut execution,
        execution_stage::Value::Executing,
        Duration::from_secs(30),
    )
    .await;
    agent
        .log
        .wait_for(lines::LEASE_ACCEPTED, Duration::from_secs(30))
        .await;

    // `systemctl stop tessera-agent@build1` while the action runs: it finishes and is
    // reported, then the agent exits 0.
    agent.begin_stop(&agent_unit);
    let response = loop {
        let op = tokio::time::timeout(Duration::from_secs(60), execution.next())
            .await
            .expect("the action finishes during the drain")
            .expect("the stream ends only after the result")
            .expect("the stream does not fail");
        if op.done {
            break response_of(&op).expect("a response");
        }
    };
    agent.wait_stopped(&agent_unit, Duration::from_secs(60));
    let result = response.result.clone().expect("an action result");
    assert_eq!(response.status.unwrap_or_default().code, 0);
    assert_eq!(result.exit_code, 0, "{result:?}");
    assert_eq!(
        result.execution_metadata.map(|m| m.worker).as_deref(),
        Some("build1"),
        "the agent's id comes from the unit's instance name"
    );
    agent.log.wait_for(DRAINING, Duration::from_secs(10)).await;
    let left = coordinator
        .log
        .wait_for(AGENT_DISCONNECTED, Duration::from_secs(30))
        .await;
    assert!(left.contains("build1"), "{left}");
    // The agent kept its work where StateDirectory= puts it.
    assert!(root.path().join("var/lib/tessera-agent/build1/x").is_dir());
    coordinator.stop(&coordinator_unit, Duration::from_secs(30));
}

//! A coordinator and its agents as child processes of the `tessera` binary, the way they run
//! in production, so that each one's CPU can be read from `/proc/<pid>/stat`. Logs go to
//! files in the cluster's directory; every child is killed if the cluster is dropped. A
//! cluster may run with TLS and tokens (`--security tls-tokens`): the coordinator with the
//! bench's certificates and `--auth tokens`, the agents with the CA and an agent token.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tessera_net::client::ClientAuth;

use crate::cpu::{self, CpuTimes};
use crate::error::BenchError;
use crate::security::{self, Certificates};

/// How long a child may take to come up, or to exit after SIGTERM.
const START_LIMIT: Duration = Duration::from_secs(30);
const STOP_LIMIT: Duration = Duration::from_secs(15);

/// The `tessera` binary: `explicit`, else `$TESSERA_BIN`, else the one beside this
/// executable (`cargo build --release -p tessera-cli` puts it in the same `target/release`;
/// for a test binary in `target/debug/deps/`, the one in `target/debug/`).
pub(crate) fn tessera_binary(explicit: Option<&Path>) -> Result<PathBuf, BenchError> {
    if let Some(path) = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("TESSERA_BIN").map(PathBuf::from))
    {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(BenchError::Tool(format!("{} not found", path.display())))
        };
    }
    let exe = std::env::current_exe().map_err(|source| BenchError::Io {
        what: "find this executable",
        source,
    })?;
    let beside = exe.with_file_name("tessera");
    let above = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("tessera"));
    std::iter::once(beside.clone())
        .chain(above)
        .find(|path| path.is_file())
        .ok_or_else(|| {
            BenchError::Tool(format!(
                "{} not found: build it with `cargo build --release -p tessera-cli` (or \
                 `cargo build -p tessera-cli` for tests), or pass --tessera / set TESSERA_BIN",
                beside.display()
            ))
        })
}

/// The argument an agent's spawner process runs with (`tessera_agent::spawner::SPAWNER_ARG`;
/// the bench does not link the agent).
const SPAWNER_ARG: &str = "__agent-spawner";

/// CPU of the cluster's processes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ClusterCpu {
    /// The coordinator.
    pub coordinator: CpuTimes,
    /// All agents together, with their spawner processes (part of the agent): `own` is the
    /// agents' and spawners' own CPU, `children` the actions they ran and reaped.
    pub agents: CpuTimes,
}

impl std::ops::Sub for ClusterCpu {
    type Output = ClusterCpu;
    fn sub(self, earlier: ClusterCpu) -> ClusterCpu {
        ClusterCpu {
            coordinator: self.coordinator - earlier.coordinator,
            agents: self.agents - earlier.agents,
        }
    }
}

/// A running `tessera coordinator` and its `tessera agent`s.
pub(crate) struct Cluster {
    coordinator: Child,
    agents: Vec<Child>,
    addr: SocketAddr,
    dir: PathBuf,
    binary: PathBuf,
    tls: bool,
}

impl Cluster {
    /// Starts a coordinator with its data in `dir` on a free loopback port, then `agents`
    /// agents with `slots` slots each (and `agent_args`), and waits until every agent has
    /// connected.
    pub(crate) fn start(
        binary: &Path,
        dir: &Path,
        agents: usize,
        slots: u32,
        agent_args: &[&str],
    ) -> Result<Self, BenchError> {
        Cluster::start_with_env(binary, dir, agents, slots, agent_args, &[])
    }

    /// [`Cluster::start`] with `env` set for the coordinator (`TESSERA_*` settings).
    pub(crate) fn start_with_env(
        binary: &Path,
        dir: &Path,
        agents: usize,
        slots: u32,
        agent_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, BenchError> {
        let mut cluster = Cluster::spawn_coordinator(binary, dir, None, env)?;
        cluster.start_agents(agents, slots, agent_args, &ClientAuth::default())?;
        Ok(cluster)
    }

    /// Starts a coordinator alone, with its data in `dir` on a free loopback port, and waits
    /// until it listens. With `tls`, it serves those certificates and checks tokens; it has
    /// written its admin token to [`Cluster::admin_token_file`] when this returns.
    pub(crate) fn start_coordinator(
        binary: &Path,
        dir: &Path,
        tls: Option<&Certificates>,
    ) -> Result<Self, BenchError> {
        Cluster::spawn_coordinator(binary, dir, tls, &[])
    }

    fn spawn_coordinator(
        binary: &Path,
        dir: &Path,
        tls: Option<&Certificates>,
        env: &[(&str, &str)],
    ) -> Result<Self, BenchError> {
        let io = |what| move |source| BenchError::Io { what, source };
        std::fs::create_dir_all(dir).map_err(io("create the cluster directory"))?;
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("find a free port"))?;
        let mut command = Command::new(binary);
        command
            .arg("coordinator")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(dir.join("data"));
        if let Some(tls) = tls {
            command
                .arg("--tls-cert")
                .arg(&tls.cert)
                .arg("--tls-key")
                .arg(&tls.key)
                .args(["--auth", "tokens"])
                .envs(security::unthrottled_env());
        }
        let coordinator = command
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("coordinator.log")).map_err(io("create a log file"))?)
            .spawn()
            .map_err(io("start tessera coordinator"))?;
        let mut cluster = Cluster {
            coordinator,
            agents: Vec::new(),
            addr,
            dir: dir.to_owned(),
            binary: binary.to_owned(),
            tls: tls.is_some(),
        };
        cluster.wait(
            || Ok(TcpStream::connect(addr).is_ok()),
            "the coordinator to listen",
        )?;
        if tls.is_some() {
            security::wait_for_file(&cluster.admin_token_file())?;
        }
        Ok(cluster)
    }

    /// Starts `agents` agents with `slots` slots each (and `agent_args`), presenting `auth`'s
    /// CA and token, and waits until every agent has connected.
    pub(crate) fn start_agents(
        &mut self,
        agents: usize,
        slots: u32,
        agent_args: &[&str],
        auth: &ClientAuth,
    ) -> Result<(), BenchError> {
        let io = |what| move |source| BenchError::Io { what, source };
        let mut security_args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(token) = &auth.token {
            let file = self.dir.join("agent-token");
            std::fs::write(&file, token.secret()).map_err(io("write the agent token"))?;
            security_args.extend(["--token-file".into(), file.into()]);
        }
        if let Some(ca) = &auth.tls_ca {
            security_args.extend(["--tls-ca".into(), ca.into()]);
        }
        let first = self.agents.len();
        for n in first..first + agents {
            let log = File::create(self.dir.join(format!("agent-{n}.log")))
                .map_err(io("create a log file"))?;
            let agent = Command::new(&self.binary)
                .arg("agent")
                .arg("--coordinator")
                .arg(self.endpoint())
                .arg("--work-dir")
                .arg(self.dir.join(format!("agent-{n}")))
                .arg("--slots")
                .arg(slots.to_string())
                .arg("--id")
                .arg(format!("bench-agent-{n}"))
                .args(agent_args)
                .args(&security_args)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(io("start tessera agent"))?;
            self.agents.push(agent);
        }
        let coordinator_log = self.dir.join("coordinator.log");
        let expected = self.agents.len();
        self.wait(
            || {
                let log = std::fs::read_to_string(&coordinator_log)
                    .map_err(io("read the coordinator's log"))?;
                Ok(log.matches("agent connected").count() >= expected)
            },
            "every agent to connect",
        )
    }

    /// Where a coordinator with tokens wrote its admin token.
    pub(crate) fn admin_token_file(&self) -> PathBuf {
        self.dir.join("data").join("admin-token")
    }

    fn wait(
        &mut self,
        mut ready: impl FnMut() -> Result<bool, BenchError>,
        what: &str,
    ) -> Result<(), BenchError> {
        let start = Instant::now();
        loop {
            for child in std::iter::once(&mut self.coordinator).chain(self.agents.iter_mut()) {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(BenchError::Tool(format!(
                        "a tessera process exited while waiting for {what}: {status}"
                    )));
                }
            }
            if ready()? {
                return Ok(());
            }
            if start.elapsed() > START_LIMIT {
                return Err(BenchError::Tool(format!(
                    "timed out after {START_LIMIT:?} waiting for {what}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `grpc://127.0.0.1:PORT`, for Bazel.
    pub(crate) fn grpc_address(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS), for gRPC clients.
    pub(crate) fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// How the first agent sandboxes actions, from its start-up log line (`namespaces` or
    /// `none`).
    pub(crate) fn agent_sandbox(&self) -> Result<String, BenchError> {
        let log = std::fs::read_to_string(self.dir.join("agent-0.log")).map_err(|source| {
            BenchError::Io {
                what: "read the agent's log",
                source,
            }
        })?;
        log.lines()
            .filter(|line| line.contains("agent starting"))
            .find_map(|line| line.split_once("sandbox=").map(|(_, rest)| rest))
            .and_then(|rest| rest.split_whitespace().next())
            .map(|value| value.trim_matches('"').to_owned())
            .ok_or_else(|| {
                BenchError::Unexpected("the agent's log does not say how it sandboxes".to_owned())
            })
    }

    /// CPU spent so far by the coordinator and by the agents (each with its spawner).
    pub(crate) fn cpu(&self) -> Result<ClusterCpu, BenchError> {
        let mut agents = CpuTimes::default();
        for agent in &self.agents {
            agents = agents + cpu::process(&agent.id().to_string())?;
            for spawner in cpu::helpers_of(agent.id(), SPAWNER_ARG) {
                // It may have just exited (its time then moves to the agent's children).
                if let Ok(times) = cpu::process(&spawner.to_string()) {
                    agents = agents + times;
                }
            }
        }
        Ok(ClusterCpu {
            coordinator: cpu::process(&self.coordinator.id().to_string())?,
            agents,
        })
    }

    /// CPU so far of the agents' live threads and their spawners', by kind of thread (see
    /// [`cpu::threads_by_kind`]); a spawner's threads are named `spawner: <kind>`.
    pub(crate) fn agent_threads(&self) -> std::collections::BTreeMap<String, Duration> {
        let mut all = std::collections::BTreeMap::new();
        for agent in &self.agents {
            let mut add = |prefix: &str, pid: u32| {
                for (kind, spent) in cpu::threads_by_kind(pid) {
                    *all.entry(format!("{prefix}{kind}"))
                        .or_insert(Duration::ZERO) += spent;
                }
            };
            add("", agent.id());
            for spawner in cpu::helpers_of(agent.id(), SPAWNER_ARG) {
                add("spawner: ", spawner);
            }
        }
        all
    }

    /// Stops the agents, then the coordinator, each with SIGTERM and a bounded wait.
    pub(crate) fn stop(mut self) -> Result<(), BenchError> {
        let mut agents = std::mem::take(&mut self.agents);
        for agent in &agents {
            terminate(agent);
        }
        for agent in &mut agents {
            reap(agent, "tessera agent")?;
        }
        terminate(&self.coordinator);
        reap(&mut self.coordinator, "tessera coordinator")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self
            .agents
            .iter_mut()
            .chain(std::iter::once(&mut self.coordinator))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn terminate(child: &Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
}

fn reap(child: &mut Child, what: &str) -> Result<(), BenchError> {
    let start = Instant::now();
    while start.elapsed() < STOP_LIMIT {
        if let Ok(Some(status)) = child.try_wait() {
            return if status.success() {
                Ok(())
            } else {
                Err(BenchError::Tool(format!("{what} exited with {status}")))
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(BenchError::Tool(format!(
        "{what} did not stop within {STOP_LIMIT:?} of SIGTERM"
    )))
}

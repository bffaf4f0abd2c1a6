//! `tessera coordinator` and `tessera agent` as child processes of a test, for the stories
//! that need real processes: crashes, signals, restarts, network cuts, Bazel.
//!
//! Owns: spawning them, their captured logs ([`ChildLog`]), waiting for their exit as an event
//! ([`wait_exit`]), signals, and cleaning up on drop. The log lines the harness waits for are
//! named once, in [`crate::lines`]. Not owned here: the in-process server
//! ([`crate::TestServer`]) and waits on gRPC streams ([`crate::wait`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

use crate::child_log::ChildLog;
use crate::{free_port, lines, tessera_bin};

/// Waits up to `limit` for `child` to exit and returns its status (`None` while it still
/// runs). The exit is awaited as an event: a helper thread blocks in `waitid(WNOWAIT)`, which
/// sees the exit without reaping the child, so `child` stays ours to signal, kill or wait on.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    if let Some(status) = child.try_wait().expect("poll the child") {
        return Some(status);
    }
    let pid = pid_of(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let exited = loop {
            match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Err(nix::errno::Errno::EINTR) => {}
                other => break other.is_ok(),
            }
        };
        let _ = tx.send(exited);
    });
    match rx.recv_timeout(limit) {
        // It exited and is not reaped yet: this wait returns at once.
        Ok(_) => Some(child.wait().expect("reap the child")),
        Err(_) => None,
    }
}

/// `tessera SUBCOMMAND` with stdin and stdout closed and stderr piped, without the test's own
/// `TESSERA_*` variables: `tessera` refuses variables it does not know, and those it knows
/// must come from the test explicitly, not from whoever runs the tests.
fn tessera_command(subcommand: &str) -> Command {
    let mut command = Command::new(tessera_bin());
    command
        .arg(subcommand)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TESSERA_") {
            command.env_remove(name);
        }
    }
    command
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("pid"))
}

/// A `tessera coordinator` child process.
pub struct ServerProcess {
    /// The child.
    pub child: Child,
    /// Its address.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// What it logs on stderr.
    pub log: ChildLog,
}

impl ServerProcess {
    /// Starts `tessera coordinator` on a free port with `data_dir` and extra arguments, and
    /// waits until it listens.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        Self::start_on(addr, data_dir, extra, &[])
    }

    /// Starts `tessera coordinator` listening on `addr`, with extra arguments and environment
    /// variables, and waits until it listens (it says so once its port is bound; if it exits
    /// first, this panics with its log).
    pub fn start_on(
        addr: SocketAddr,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let server = Self::spawn(addr, data_dir, extra, env, "coordinator");
        server
            .log
            .blocking_wait_for(lines::COORDINATOR_LISTENING, Duration::from_secs(30));
        server
    }

    /// Starts `tessera coordinator` like [`ServerProcess::start_on`] without waiting for it
    /// (to kill it during its start, or to see it fail to start); its log lines are prefixed
    /// with `label`.
    pub fn spawn(
        addr: SocketAddr,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        label: &str,
    ) -> Self {
        let mut child = tessera_command("coordinator")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .envs(env.iter().copied())
            .spawn()
            .expect("spawn tessera coordinator");
        let log = ChildLog::capture(label, child.stderr.take().expect("piped stderr"));
        ServerProcess {
            child,
            addr,
            data_dir: data_dir.to_owned(),
            log,
        }
    }

    /// `http://addr` (loopback when listening on all addresses).
    pub fn endpoint(&self) -> String {
        if self.addr.ip().is_unspecified() {
            format!("http://127.0.0.1:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Kills the coordinator with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` and waits for the exit status (at most `limit`).
    pub fn signal_and_wait(&mut self, signal: Signal, limit: Duration) -> Option<ExitStatus> {
        let _ = nix::sys::signal::kill(pid_of(&self.child), signal);
        wait_exit(&mut self.child, limit)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `tessera agent` child process.
pub struct AgentProcess {
    /// The child.
    pub child: Child,
    /// Its id.
    pub id: String,
    /// Its work directory.
    pub work_dir: PathBuf,
    /// What it logs on stderr ([`crate::lines`] names the lines tests wait for).
    pub log: ChildLog,
}

impl AgentProcess {
    /// Starts `tessera agent` against `endpoint` with `slots` slots and extra arguments. It
    /// connects in the background: wait for [`lines::AGENT_CONNECTED`] in its `log` when the
    /// test needs it connected.
    pub fn start(endpoint: &str, work_dir: &Path, id: &str, slots: u32, extra: &[&str]) -> Self {
        let mut child = tessera_command("agent")
            .arg("--coordinator")
            .arg(endpoint)
            .arg("--work-dir")
            .arg(work_dir)
            .arg("--slots")
            .arg(slots.to_string())
            .arg("--id")
            .arg(id)
            .args(extra)
            .spawn()
            .expect("spawn tessera agent");
        let log = ChildLog::capture(id, child.stderr.take().expect("piped stderr"));
        AgentProcess {
            child,
            id: id.to_owned(),
            work_dir: work_dir.to_owned(),
            log,
        }
    }

    /// Like [`AgentProcess::start`], and returns once the agent has connected.
    pub async fn start_connected(
        endpoint: &str,
        work_dir: &Path,
        id: &str,
        slots: u32,
        extra: &[&str],
    ) -> Self {
        let agent = Self::start(endpoint, work_dir, id, slots, extra);
        agent
            .log
            .wait_for(crate::lines::AGENT_CONNECTED, Duration::from_secs(30))
            .await;
        agent
    }

    /// The child's pid, for signals.
    pub fn pid(&self) -> Pid {
        pid_of(&self.child)
    }

    /// Sends `signal` to the agent.
    pub fn signal(&self, signal: Signal) {
        let _ = nix::sys::signal::kill(self.pid(), signal);
    }

    /// Waits up to `limit` for the agent to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, limit)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // A stopped agent must be continued before it can die (unless it is reaped already:
        // its pid may belong to another process by now).
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = nix::sys::signal::kill(self.pid(), Signal::SIGCONT);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

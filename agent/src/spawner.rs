//! The spawner: a small helper process, started once by the agent, that forks the action
//! processes on request, so the agent (a large, many-threaded process) never forks per action.
//!
//! Owns both ends of that arrangement: the helper's loop ([`serve`]), entered by re-executing
//! the agent's own binary with [`SPAWNER_ARG`] before any runtime or thread exists (see
//! [`main_if_spawner`]), and the agent's handle on it ([`Spawner`], [`SpawnedChild`]). Does
//! not decide how a command is sandboxed: the agent prepares that (`sandbox::Prepared`) and the
//! helper applies it unchanged between fork and exec, as the agent would.
//!
//! The two talk over a Unix stream socket (the helper's stdin), in length-prefixed protobuf
//! frames. A spawn request carries the command, its prepared sandbox and, as `SCM_RIGHTS`,
//! the open stdout and stderr files. The helper answers with the pid (or the `errno` of a
//! failed `exec`), and later with the wait status once it has reaped the process. Signals to a
//! process group whose leader has not been reaped go through the helper, which alone knows
//! when the leader is gone (so a group id is never signalled after it may have been reused).
//! As the agent's own runner did, the helper kills what is left of a group when its leader
//! exits, unless the group is being stopped (the agent then gives it its grace period).
//!
//! Creating a network namespace is slow in the kernel, so once commands ask for a private
//! network the helper keeps [`NETNS_POOL`] fresh ones ready, loopback up, made while it has
//! nothing else to do; a command joins one (`setns`) instead of creating its own. Each is
//! handed to exactly one command and closed by the helper right after the fork: never reused.
//! When the pool is empty (or the host refuses), the command creates its own as before.
//!
//! Faults: if the helper dies, every command it started is killed with its group and its
//! waiter gets [`SpawnError::SpawnerLost`] (an agent fault: the action is retried elsewhere);
//! the next spawn starts a new helper. A command whose start the helper had not yet reported
//! dies with the helper (`PR_SET_PDEATHSIG`); only what such a command forked in those few
//! microseconds could outlive it. If the agent dies, the helper sees the socket close,
//! kills every group it started and exits.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use nix::sys::signal::{SigSet, Signal, killpg};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use nix::unistd::Pid;
use prost::Message;
use tokio::sync::oneshot;

use crate::sandbox::{Prepared, SpawnError};

/// The argument that makes the agent's binary run as the spawner (see [`main_if_spawner`]).
pub const SPAWNER_ARG: &str = "__agent-spawner";

/// Fresh network namespaces the spawner keeps ready once actions ask for private networks.
const NETNS_POOL: usize = 4;

/// Largest frame either side accepts (a command line and environment fit many times over).
const MAX_FRAME: usize = 64 << 20;

/// How to start the spawner process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnerCommand {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

impl SpawnerCommand {
    /// This very binary (even if replaced on disk since it started) with [`SPAWNER_ARG`]: for
    /// binaries whose `main` calls [`main_if_spawner`] first.
    pub fn this_binary() -> SpawnerCommand {
        SpawnerCommand {
            program: PathBuf::from("/proc/self/exe"),
            args: vec![OsString::from(SPAWNER_ARG)],
        }
    }
}

static COMMAND: OnceLock<SpawnerCommand> = OnceLock::new();

/// Says how agents in this process start their spawner. Without it they fork commands
/// themselves. The first call wins; returns whether this one did.
pub fn set_command(command: SpawnerCommand) -> bool {
    COMMAND.set(command).is_ok()
}

/// What [`set_command`] registered.
pub fn command() -> Option<&'static SpawnerCommand> {
    COMMAND.get()
}

/// For a binary's `main`, before anything else: if the first argument is [`SPAWNER_ARG`], runs
/// the spawner on stdin until the agent goes away and returns the exit code; otherwise `None`.
pub fn main_if_spawner() -> Option<i32> {
    let first = std::env::args_os().nth(1)?;
    (first == OsStr::new(SPAWNER_ARG)).then(serve_stdin)
}

/// Runs the spawner on the socket that is this process's stdin. Blocking, single-threaded.
pub fn serve_stdin() -> i32 {
    // SAFETY: fd 0 is the socket the agent passed as stdin; nothing else in this process owns
    // it.
    #[expect(unsafe_code, reason = "taking ownership of stdin's descriptor")]
    let socket = unsafe { OwnedFd::from_raw_fd(0) };
    match serve(UnixStream::from(socket)) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("tessera spawner: {error}");
            1
        }
    }
}

// ---- wire ----

/// Agent → spawner.
#[derive(Clone, PartialEq, Message)]
struct Request {
    #[prost(uint64, tag = "1")]
    id: u64,
    /// [`OP_SPAWN`] or [`OP_SIGNAL`].
    #[prost(uint32, tag = "2")]
    op: u32,
    #[prost(bytes = "vec", tag = "3")]
    program: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    argv0: Vec<u8>,
    #[prost(bytes = "vec", repeated, tag = "5")]
    args: Vec<Vec<u8>>,
    /// `NAME=value`.
    #[prost(bytes = "vec", repeated, tag = "6")]
    env: Vec<Vec<u8>>,
    #[prost(message, optional, tag = "7")]
    sandbox: Option<WirePrepared>,
    #[prost(int32, tag = "8")]
    signal: i32,
}

const OP_SPAWN: u32 = 1;
const OP_SIGNAL: u32 = 2;
/// Answered with an exit status of 0: the spawner is up.
const OP_PING: u32 = 3;

/// `sandbox::Prepared`, as sent.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct WirePrepared {
    #[prost(bool, tag = "1")]
    pub namespaces: bool,
    #[prost(bool, tag = "2")]
    pub private_network: bool,
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub bind_sources: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub bind_targets: Vec<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub tmp_source: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "6")]
    pub cwd: Option<Vec<u8>>,
    /// (resource, soft, hard) triples; resources as [`crate::sandbox`] numbers them.
    #[prost(uint64, repeated, tag = "7")]
    pub rlimits: Vec<u64>,
    #[prost(bool, tag = "8")]
    pub own_pids: bool,
}

/// Spawner → agent.
#[derive(Clone, PartialEq, Message)]
struct Reply {
    #[prost(uint64, tag = "1")]
    id: u64,
    /// [`REPLY_STARTED`], [`REPLY_FAILED`] or [`REPLY_EXITED`].
    #[prost(uint32, tag = "2")]
    op: u32,
    #[prost(int32, tag = "3")]
    pid: i32,
    #[prost(int32, tag = "4")]
    errno: i32,
    /// The raw wait status.
    #[prost(int32, tag = "5")]
    status: i32,
}

const REPLY_STARTED: u32 = 1;
const REPLY_FAILED: u32 = 2;
const REPLY_EXITED: u32 = 3;

fn frame(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Splits complete frames off the front of `buffer`.
fn take_frames(buffer: &mut Vec<u8>) -> io::Result<Vec<Vec<u8>>> {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(header) = buffer.get(at..at + 4) {
        let len = u32::from_le_bytes(header.try_into().unwrap_or_default()) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::other(format!("frame of {len} bytes")));
        }
        let Some(body) = buffer.get(at + 4..at + 4 + len) else {
            break;
        };
        frames.push(body.to_vec());
        at += 4 + len;
    }
    buffer.drain(..at);
    Ok(frames)
}

fn bad_frame(error: prost::DecodeError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

// ---- the spawner process ----

/// One process group the spawner started and has not reaped.
struct Leader {
    id: u64,
    /// A stop began (SIGTERM, `sandbox::STOP_SIGNAL` or SIGKILL asked for): on exit the
    /// agent, not the spawner, deals with what is left of the group.
    stopping: bool,
}

/// Serves one agent on `socket` until it closes (or talking to it fails); either way the
/// commands it started go with it. Blocking, single-threaded: the process that calls it
/// should have no other threads (it forks).
pub fn serve(socket: UnixStream) -> io::Result<()> {
    // Re-executed through /proc/self/exe, it would show as "exe" in ps, top and profiles.
    let _ = nix::sys::prctl::set_name(c"tessera-spawner");
    // Orphans of its commands are its to reap (`reap` takes any child), not the host's init,
    // which in a container may be the agent, reaping nothing it did not start.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    // The agent decides when its commands stop (a drain lets them finish): a Ctrl-C, a SIGTERM
    // or a `pkill tessera` meant for the agent must not kill the spawner, whose death kills
    // every running command. Blocked, not ignored: the commands it starts get an empty mask
    // (`Prepared::enter` empties it before exec) but would inherit an ignored disposition.
    // The spawner still ends when the agent does (its socket closes).
    let mut quiet = SigSet::empty();
    for signal in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        quiet.add(signal);
    }
    quiet.thread_block().map_err(io::Error::from)?;
    let mut leaders: HashMap<i32, Leader> = HashMap::new();
    let end = serve_until_closed(socket, &mut leaders);
    for &pid in leaders.keys() {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    end
}

fn serve_until_closed(
    mut socket: UnixStream,
    leaders: &mut HashMap<i32, Leader>,
) -> io::Result<()> {
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    chld.thread_block().map_err(io::Error::from)?;
    let signals = SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut buffer = Vec::new();
    // One receive buffer for the spawner's life: allocated per message it was a fresh
    // zeroed mapping, and its pages faults, for every command.
    let mut chunk = vec![0u8; RECEIVE_CHUNK];
    let mut fds: std::collections::VecDeque<OwnedFd> = std::collections::VecDeque::new();
    let mut pool = NetnsPool::default();
    loop {
        let (socket_ready, signals_ready) = wait_readable(&socket, &signals, pool.needs_more())?;
        if !socket_ready && !signals_ready {
            // Idle: make one namespace ready, then look for requests again.
            pool.fill_one()?;
            continue;
        }
        if signals_ready {
            while let Ok(Some(_)) = signals.read_signal() {}
            reap(&mut socket, leaders)?;
        }
        if !socket_ready {
            continue;
        }
        if !receive(&socket, &mut chunk, &mut buffer, &mut fds)? {
            // The agent is gone.
            return Ok(());
        }
        for body in take_frames(&mut buffer)? {
            let request = Request::decode(body.as_slice()).map_err(bad_frame)?;
            match request.op {
                OP_SPAWN => {
                    let (Some(stdout), Some(stderr)) = (fds.pop_front(), fds.pop_front()) else {
                        return Err(io::Error::other("a spawn request without its two files"));
                    };
                    let reply = match spawn(&request, stdout, stderr, &mut pool) {
                        Ok(pid) => {
                            leaders.insert(
                                pid,
                                Leader {
                                    id: request.id,
                                    stopping: false,
                                },
                            );
                            Reply {
                                id: request.id,
                                op: REPLY_STARTED,
                                pid,
                                ..Reply::default()
                            }
                        }
                        Err(error) => Reply {
                            id: request.id,
                            op: REPLY_FAILED,
                            errno: error.raw_os_error().unwrap_or(libc::EIO),
                            ..Reply::default()
                        },
                    };
                    socket.write_all(&frame(&reply))?;
                }
                OP_SIGNAL => signal(leaders, request.id, request.signal),
                OP_PING => {
                    let reply = Reply {
                        id: request.id,
                        op: REPLY_EXITED,
                        ..Reply::default()
                    };
                    socket.write_all(&frame(&reply))?;
                }
                other => return Err(io::Error::other(format!("unknown request {other}"))),
            }
        }
    }
}

/// Fresh network namespaces made ahead of use (see the module docs).
#[derive(Default)]
struct NetnsPool {
    ready: Vec<OwnedFd>,
    /// A command asked for a private network: keep some ready from now on.
    wanted: bool,
    /// The host refused to make one: stop trying.
    refused: bool,
}

impl NetnsPool {
    fn needs_more(&self) -> bool {
        self.wanted && !self.refused && self.ready.len() < NETNS_POOL
    }

    /// A namespace for one command, if one is ready.
    fn take(&mut self) -> Option<OwnedFd> {
        self.wanted = true;
        self.ready.pop()
    }

    /// Makes one more; an error only if this process could not get back to its own network
    /// namespace (it must not spawn anything then).
    fn fill_one(&mut self) -> io::Result<()> {
        use nix::sched::{CloneFlags, setns, unshare};
        let home = File::open("/proc/self/ns/net")?;
        if let Err(errno) = unshare(CloneFlags::CLONE_NEWNET) {
            eprintln!(
                "tessera spawner: cannot make network namespaces ahead ({errno}); each command makes its own"
            );
            self.refused = true;
            return Ok(());
        }
        let made = crate::sandbox::loopback_up()
            .map_err(io::Error::from)
            .and_then(|()| File::open("/proc/self/ns/net"));
        setns(&home, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        match made {
            Ok(netns) => self.ready.push(OwnedFd::from(netns)),
            Err(error) => {
                eprintln!(
                    "tessera spawner: cannot prepare a network namespace ({error}); each command makes its own"
                );
                self.refused = true;
            }
        }
        Ok(())
    }
}

/// Blocks until the socket or the signal descriptor is readable; with `idle_work`, returns
/// (false, false) at once if neither is.
fn wait_readable(
    socket: &UnixStream,
    signals: &SignalFd,
    idle_work: bool,
) -> io::Result<(bool, bool)> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        let mut fds = [
            PollFd::new(socket.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        let timeout = if idle_work {
            PollTimeout::ZERO
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(_) => {
                let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
                return Ok((ready(&fds[0]), ready(&fds[1])));
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Bytes the spawner receives at most per read.
const RECEIVE_CHUNK: usize = 256 * 1024;

/// Reads what the socket has into `chunk`, appends it to `buffer`, with any descriptors passed
/// along; false at end of stream.
fn receive(
    socket: &UnixStream,
    chunk: &mut [u8],
    buffer: &mut Vec<u8>,
    fds: &mut std::collections::VecDeque<OwnedFd>,
) -> io::Result<bool> {
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [IoSliceMut::new(chunk)];
    let message = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(message) => break message,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    };
    for cmsg in message.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just installed these descriptors in this process for us.
            #[expect(unsafe_code, reason = "adopting descriptors received with SCM_RIGHTS")]
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let read = message.bytes;
    if read == 0 {
        return Ok(false);
    }
    buffer.extend_from_slice(&chunk[..read]);
    Ok(true)
}

/// Starts one command in its own session with its sandbox; its pid.
fn spawn(
    request: &Request,
    stdout: OwnedFd,
    stderr: OwnedFd,
    pool: &mut NetnsPool,
) -> io::Result<i32> {
    let mut prepared = request
        .sandbox
        .as_ref()
        .map(Prepared::from_wire)
        .transpose()?
        .ok_or_else(|| io::Error::other("a spawn request without its sandbox"))?;
    if prepared.private_network() {
        prepared.netns = pool.take();
    }
    // Should this process die before the agent learns the command's pid, the command must not
    // live on unknown to anyone.
    prepared.die_with_parent = Some(nix::unistd::getpid());
    let mut command = std::process::Command::new(OsStr::from_bytes(&request.program));
    command
        .arg0(OsStr::from_bytes(&request.argv0))
        .args(request.args.iter().map(|a| OsStr::from_bytes(a)))
        .env_clear()
        .stdin(Stdio::null())
        .stdout(File::from(stdout))
        .stderr(File::from(stderr));
    for pair in &request.env {
        let split = pair.iter().position(|&b| b == b'=').unwrap_or(pair.len());
        let value = pair.get(split + 1..).unwrap_or_default();
        command.env(OsStr::from_bytes(&pair[..split]), OsStr::from_bytes(value));
    }
    // The namespace (if any) goes with the command: closed here once it has forked.
    crate::sandbox::install_pre_exec(&mut command, prepared);
    let child = command.spawn()?;
    // The child is reaped by `reap`, by pid; std's handle has nothing else to hold.
    i32::try_from(child.id()).map_err(io::Error::other)
}

fn signal(leaders: &mut HashMap<i32, Leader>, id: u64, signal: i32) {
    let Some((&pid, leader)) = leaders.iter_mut().find(|(_, leader)| leader.id == id) else {
        // Already reaped: the agent deals with the rest of the group itself.
        return;
    };
    let Ok(signal) = Signal::try_from(signal) else {
        return;
    };
    if matches!(
        signal,
        Signal::SIGTERM | Signal::SIGKILL | crate::sandbox::STOP_SIGNAL
    ) {
        leader.stopping = true;
    }
    let _ = killpg(Pid::from_raw(pid), signal);
}

/// Reaps every exited child, killing the rest of its group unless it is being stopped, and
/// tells the agent.
fn reap(socket: &mut UnixStream, leaders: &mut HashMap<i32, Leader>) -> io::Result<()> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on any child, writing into a local.
        #[expect(
            unsafe_code,
            reason = "waitpid for the raw status, which nix does not give"
        )]
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return Ok(());
        }
        let Some(leader) = leaders.remove(&pid) else {
            continue;
        };
        if !leader.stopping {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let reply = Reply {
            id: leader.id,
            op: REPLY_EXITED,
            status,
            ..Reply::default()
        };
        socket.write_all(&frame(&reply))?;
    }
}

// ---- the agent's side ----

/// The agent's handle on its spawner process; starts a new one when the last one died.
#[derive(Debug)]
pub struct Spawner {
    command: SpawnerCommand,
    link: Mutex<Option<Arc<Link>>>,
}

/// One running spawner process.
#[derive(Debug)]
struct Link {
    writer: Mutex<UnixStream>,
    calls: Mutex<Calls>,
    next_id: AtomicU64,
    pid: u32,
}

#[derive(Debug, Default)]
struct Calls {
    /// False once the spawner is gone.
    alive: bool,
    by_id: HashMap<u64, Call>,
}

#[derive(Debug)]
struct Call {
    started: Option<oneshot::Sender<Result<i32, i32>>>,
    exited: Option<oneshot::Sender<i32>>,
    /// Its process group, once started.
    group: Option<i32>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long a new spawner has to answer its first ping.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Spawner {
    /// Starts a spawner process with `command` and checks that it answers.
    pub async fn start(command: SpawnerCommand) -> io::Result<Spawner> {
        let link = Link::start(&command)?;
        link.ping().await?;
        Ok(Spawner {
            command,
            link: Mutex::new(Some(link)),
        })
    }

    /// The pid of the spawner process now running, if any.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.link)
            .as_ref()
            .filter(|link| lock(&link.calls).alive)
            .map(|link| link.pid)
    }

    /// Commands the spawner has reported started and not yet reaped.
    pub fn running(&self) -> usize {
        lock(&self.link).as_ref().map_or(0, |link| {
            let calls = lock(&link.calls);
            calls.by_id.values().filter(|c| c.group.is_some()).count()
        })
    }

    /// The live link, starting a new spawner if the last one died.
    fn link(&self) -> io::Result<Arc<Link>> {
        let mut current = lock(&self.link);
        if let Some(link) = current.as_ref()
            && lock(&link.calls).alive
        {
            return Ok(link.clone());
        }
        let link = Link::start(&self.command)?;
        tracing::info!(pid = link.pid, "started a new spawner process");
        *current = Some(link.clone());
        Ok(link)
    }

    /// Starts a command through the spawner; `Err(errno)` if its `exec` failed.
    pub(crate) async fn spawn(
        &self,
        program: &[u8],
        argv: &[String],
        env: &[(String, String)],
        prepared: WirePrepared,
        stdout: &File,
        stderr: &File,
    ) -> Result<Result<SpawnedChild, i32>, SpawnError> {
        let link = self
            .link()
            .map_err(|source| SpawnError::SpawnerStart { source })?;
        let id = link.next_id.fetch_add(1, Ordering::Relaxed);
        let (started_tx, started_rx) = oneshot::channel();
        let (exited_tx, exited_rx) = oneshot::channel();
        {
            let mut calls = lock(&link.calls);
            if !calls.alive {
                return Err(SpawnError::SpawnerLost);
            }
            calls.by_id.insert(
                id,
                Call {
                    started: Some(started_tx),
                    exited: Some(exited_tx),
                    group: None,
                },
            );
        }
        let (argv0, rest) = argv.split_first().ok_or(SpawnError::NoArguments)?;
        let request = Request {
            id,
            op: OP_SPAWN,
            program: program.to_vec(),
            argv0: argv0.as_bytes().to_vec(),
            args: rest.iter().map(|a| a.as_bytes().to_vec()).collect(),
            env: env
                .iter()
                .map(|(k, v)| format!("{k}={v}").into_bytes())
                .collect(),
            sandbox: Some(prepared),
            signal: 0,
        };
        let frame = frame(&request);
        if frame.len() - 4 > MAX_FRAME {
            // The spawner would refuse the frame and end, killing every running command: this
            // one fails alone, as exec would with so many arguments.
            lock(&link.calls).by_id.remove(&id);
            return Ok(Err(nix::errno::Errno::E2BIG as i32));
        }
        let fds = [stdout.as_raw_fd(), stderr.as_raw_fd()];
        if link.send(&frame, &fds).is_err() {
            lock(&link.calls).by_id.remove(&id);
            return Err(SpawnError::SpawnerLost);
        }
        match started_rx.await {
            Ok(Ok(pid)) => Ok(Ok(SpawnedChild {
                link,
                id,
                pid,
                exited: exited_rx,
                status: None,
            })),
            Ok(Err(errno)) => Ok(Err(errno)),
            Err(_) => Err(SpawnError::SpawnerLost),
        }
    }
}

impl Link {
    fn start(command: &SpawnerCommand) -> io::Result<Arc<Link>> {
        let (ours, theirs) = UnixStream::pair()?;
        let mut process = std::process::Command::new(&command.program)
            .args(&command.args)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            // Its own process group: a terminal's Ctrl-C for the agent does not reach it.
            .process_group(0)
            .spawn()?;
        let pid = process.id();
        let reader = ours.try_clone()?;
        let link = Arc::new(Link {
            writer: Mutex::new(ours),
            calls: Mutex::new(Calls {
                alive: true,
                by_id: HashMap::new(),
            }),
            next_id: AtomicU64::new(1),
            pid,
        });
        let weak = Arc::downgrade(&link);
        std::thread::Builder::new()
            .name("tessera-spawner".into())
            .spawn(move || {
                let end = read_replies(reader, &weak);
                if let Some(link) = weak.upgrade() {
                    link.lost();
                }
                let status = process.wait();
                match end {
                    // The agent dropped the link: a clean end.
                    Ok(()) if weak.upgrade().is_none() => {}
                    _ => tracing::warn!(
                        pid,
                        ?end,
                        ?status,
                        "the spawner process died; its commands were killed and fail as agent \
                         errors"
                    ),
                }
            })?;
        Ok(link)
    }

    /// Sends one frame, with `fds` passed along its first byte.
    fn send(&self, frame: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let writer = lock(&self.writer);
        let mut sent = 0;
        while sent < frame.len() {
            let rights = [ControlMessage::ScmRights(fds)];
            let cmsgs: &[ControlMessage<'_>] = if sent == 0 && !fds.is_empty() {
                &rights
            } else {
                &[]
            };
            match sendmsg::<()>(
                writer.as_raw_fd(),
                &[IoSlice::new(&frame[sent..])],
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => sent += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
        Ok(())
    }

    /// Waits for the spawner to answer a ping.
    async fn ping(&self) -> io::Result<()> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (exited_tx, exited_rx) = oneshot::channel();
        lock(&self.calls).by_id.insert(
            id,
            Call {
                started: None,
                exited: Some(exited_tx),
                group: None,
            },
        );
        let request = Request {
            id,
            op: OP_PING,
            ..Request::default()
        };
        self.send(&frame(&request), &[])?;
        match tokio::time::timeout(START_TIMEOUT, exited_rx).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(io::Error::other(
                "the spawner exited at once (does the binary handle the spawner argument?)",
            )),
            Err(_) => Err(io::Error::other("the spawner did not answer")),
        }
    }

    /// Asks the spawner to signal `id`'s group if its leader has not been reaped.
    fn signal(&self, id: u64, signal: Signal) {
        let request = Request {
            id,
            op: OP_SIGNAL,
            signal: signal as i32,
            ..Request::default()
        };
        let _ = self.send(&frame(&request), &[]);
    }

    /// The spawner is gone: its commands are killed, their waiters told.
    fn lost(&self) {
        let calls = std::mem::take(&mut *lock(&self.calls));
        for call in calls.by_id.into_values() {
            if let Some(group) = call.group {
                let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
            }
            // Dropping the senders tells the waiters.
        }
    }

    fn on_reply(&self, reply: &Reply) {
        let mut calls = lock(&self.calls);
        let Some(call) = calls.by_id.get_mut(&reply.id) else {
            return;
        };
        match reply.op {
            REPLY_STARTED => {
                call.group = Some(reply.pid);
                if let Some(started) = call.started.take() {
                    let _ = started.send(Ok(reply.pid));
                }
            }
            REPLY_FAILED => {
                if let Some(started) = call.started.take() {
                    let _ = started.send(Err(reply.errno));
                }
                calls.by_id.remove(&reply.id);
            }
            REPLY_EXITED => {
                if let Some(exited) = call.exited.take() {
                    let _ = exited.send(reply.status);
                }
                calls.by_id.remove(&reply.id);
            }
            _ => {}
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Closing our end makes the spawner kill its groups and exit; the reader reaps it.
        let _ = lock(&self.writer).shutdown(std::net::Shutdown::Both);
    }
}

/// Reads replies until the spawner closes the socket or the link is dropped.
fn read_replies(mut reader: UnixStream, link: &std::sync::Weak<Link>) -> io::Result<()> {
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = match reader.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        buffer.extend_from_slice(&chunk[..read]);
        let Some(link) = link.upgrade() else {
            return Ok(());
        };
        for body in take_frames(&mut buffer)? {
            link.on_reply(&Reply::decode(body.as_slice()).map_err(bad_frame)?);
        }
    }
}

/// A command the spawner started.
#[derive(Debug)]
pub(crate) struct SpawnedChild {
    link: Arc<Link>,
    id: u64,
    pid: i32,
    exited: oneshot::Receiver<i32>,
    status: Option<ExitStatus>,
}

impl SpawnedChild {
    /// Its pid (and process group).
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for it to exit (the spawner reaps it).
    pub(crate) async fn wait(&mut self) -> Result<ExitStatus, SpawnError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let raw = (&mut self.exited)
            .await
            .map_err(|_| SpawnError::SpawnerLost)?;
        let status = ExitStatus::from_raw(raw);
        self.status = Some(status);
        Ok(status)
    }

    /// Its exit status if it has exited; `Err` if the spawner died.
    pub(crate) fn try_wait(&mut self) -> Result<Option<ExitStatus>, SpawnError> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        match self.exited.try_recv() {
            Ok(raw) => {
                let status = ExitStatus::from_raw(raw);
                self.status = Some(status);
                Ok(Some(status))
            }
            Err(oneshot::error::TryRecvError::Empty) => Ok(None),
            Err(oneshot::error::TryRecvError::Closed) => Err(SpawnError::SpawnerLost),
        }
    }

    /// Signals its process group, if its leader has not been reaped yet.
    pub(crate) fn signal_group(&self, signal: Signal) {
        if self.status.is_none() {
            self.link.signal(self.id, signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_where_they_end() {
        let one = Reply {
            id: 7,
            op: REPLY_EXITED,
            status: 256,
            ..Reply::default()
        };
        let mut buffer = frame(&one);
        let second = frame(&Reply {
            id: 8,
            ..Reply::default()
        });
        buffer.extend_from_slice(&second[..3]);
        let frames = take_frames(&mut buffer).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(Reply::decode(frames[0].as_slice()).unwrap(), one);
        assert_eq!(buffer, second[..3], "a partial frame waits for the rest");
        buffer.extend_from_slice(&second[3..]);
        assert_eq!(take_frames(&mut buffer).unwrap().len(), 1);
        assert!(buffer.is_empty());
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut buffer = (u32::MAX).to_le_bytes().to_vec();
        assert!(take_frames(&mut buffer).is_err());
    }
}

//! The real process runner, running real commands: exit codes, exact environment, working
//! directory, timeouts and cancellation that take the whole process group down, limits, the
//! network and /tmp namespaces, and the ETXTBSY retry. Commands go through the spawner process
//! as they do in the agent; a few checks run without it (the fallback) and with it killed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tessera_agent::sandbox::{Isolation, LocalRunner, ProcessExit, ProcessRunner, ProcessSpec};
use tokio_util::sync::CancellationToken;

use crate::harness::{namespaces_available, spawner_command};

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("root")).unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        Scratch { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn spec(&self, script: &str) -> ProcessSpec {
        ProcessSpec {
            program: PathBuf::from("/bin/sh"),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: self.root(),
            stdout: self.dir.path().join("stdout"),
            stderr: self.dir.path().join("stderr"),
            timeout: Some(Duration::from_secs(10)),
            isolation: Isolation::default(),
        }
    }

    fn sandboxed(&self, script: &str, network: bool) -> ProcessSpec {
        ProcessSpec {
            isolation: Isolation {
                namespaces: true,
                network,
                private_tmp: Some(self.dir.path().join("tmp")),
                exec_root: Some(self.root()),
                ..Isolation::default()
            },
            ..self.spec(script)
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap()
    }
}

const KILL_GRACE: Duration = Duration::from_millis(300);

/// A runner with its own spawner process.
async fn runner() -> LocalRunner {
    let runner = LocalRunner::with_spawner(KILL_GRACE, spawner_command()).await;
    assert!(runner.spawner.is_some(), "the spawner did not start");
    runner
}

async fn run(spec: &ProcessSpec) -> ProcessExit {
    runner()
        .await
        .run(spec, &CancellationToken::new())
        .await
        .expect("spawn")
}

/// Gone, or a zombie nobody has reaped yet (in a container without an init that reaps).
fn is_dead(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_dead(pid: &str) -> bool {
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if is_dead(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn exit_codes_and_signals() {
    let s = Scratch::new();
    assert_eq!(
        run(&s.spec("exit 0")).await,
        ProcessExit::Exited { exit_code: 0 }
    );
    assert_eq!(
        run(&s.spec("exit 7")).await,
        ProcessExit::Exited { exit_code: 7 }
    );
    assert_eq!(
        run(&s.spec("kill -9 $$")).await,
        ProcessExit::Exited { exit_code: 137 }
    );
}

#[tokio::test]
async fn environment_is_exactly_what_was_given() {
    let s = Scratch::new();
    let mut spec = s.spec("");
    spec.program = PathBuf::from("/usr/bin/env");
    spec.argv = vec!["env".into()];
    spec.env = vec![("B".into(), "two words".into()), ("A".into(), "1".into())];
    assert_eq!(run(&spec).await, ProcessExit::Exited { exit_code: 0 });
    // REAPI sorts variables by name; the command gets them sorted.
    assert_eq!(s.stdout(), "A=1\nB=two words\n");
}

#[tokio::test]
async fn runs_in_its_working_directory_with_argv0_as_given() {
    let s = Scratch::new();
    std::fs::create_dir(s.root().join("sub")).unwrap();
    let mut spec = s.spec("pwd; echo $0");
    spec.cwd = s.root().join("sub");
    spec.argv[0] = "my-shell".into();
    assert_eq!(run(&spec).await, ProcessExit::Exited { exit_code: 0 });
    let canonical = std::fs::canonicalize(s.root().join("sub")).unwrap();
    assert_eq!(s.stdout(), format!("{}\nmy-shell\n", canonical.display()));
}

#[tokio::test]
async fn timeout_kills_the_whole_group_including_grandchildren() {
    let s = Scratch::new();
    // The shell ignores SIGTERM, so SIGKILL has to follow after the grace period.
    let mut spec = s.spec("trap '' TERM; sleep 30 & echo $! > grandchild; echo started; wait");
    spec.timeout = Some(Duration::from_millis(300));
    let started = Instant::now();
    let exit = run(&spec).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(exit, ProcessExit::TimedOut { after, exit_code: 137 } if after == Duration::from_millis(300)),
        "{exit:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    assert_eq!(s.stdout(), "started\n", "output so far is kept");
    let grandchild = std::fs::read_to_string(s.root().join("grandchild")).unwrap();
    assert!(
        wait_dead(&grandchild).await,
        "grandchild {grandchild} survived"
    );
}

#[tokio::test]
async fn cancel_stops_the_group() {
    let s = Scratch::new();
    let spec = s.spec("sleep 30 & echo $! > grandchild; wait");
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let runner = runner().await;
    let (exit, ()) = tokio::join!(runner.run(&spec, &cancel), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        cancel.cancel();
    });
    assert_eq!(exit.unwrap(), ProcessExit::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(3));
    let grandchild = std::fs::read_to_string(s.root().join("grandchild")).unwrap();
    assert!(wait_dead(&grandchild).await);
}

#[tokio::test]
async fn leftovers_of_a_finished_command_are_killed() {
    let s = Scratch::new();
    let spec = s.spec("sleep 30 & echo $! > straggler");
    assert_eq!(run(&spec).await, ProcessExit::Exited { exit_code: 0 });
    let straggler = std::fs::read_to_string(s.root().join("straggler")).unwrap();
    assert!(
        wait_dead(&straggler).await,
        "straggler {straggler} survived"
    );
}

/// Host pids of the live processes one of whose arguments is `marker`.
fn host_processes_with(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.parse::<u32>().ok()?;
            let cmdline = std::fs::read(format!("/proc/{name}/cmdline")).ok()?;
            let has = cmdline
                .split(|&b| b == 0)
                .any(|arg| arg == marker.as_bytes());
            (has && !is_dead(&name)).then_some(name)
        })
        .collect()
}

/// Shell code that starts a daemon outside the command's process group, `sleep {marker}`,
/// and waits until it runs `sleep` (not `setsid` still).
fn setsid_daemon(marker: &str) -> String {
    format!(
        "setsid sleep {marker} > /dev/null 2>&1 < /dev/null & \
         while ! tr '\\0' ' ' < /proc/$!/cmdline | grep -q '^sleep '; do sleep 0.01; done"
    )
}

/// Whether commands get PID namespaces here (namespaces, and a `/proc` mounted for them).
fn pid_namespaces_available() -> bool {
    namespaces_available() && tessera_agent::sandbox::pid_namespaces()
}

#[tokio::test]
async fn with_namespaces_nothing_outlives_the_command_even_outside_its_group() {
    if !pid_namespaces_available() {
        return;
    }
    let s = Scratch::new();
    // GNU sleep takes a fraction: a duration no other process on the host is sleeping.
    let marker = format!("1000.{}", std::process::id());
    let spec = s.sandboxed(&format!("{}; echo started", setsid_daemon(&marker)), false);
    assert_eq!(run(&spec).await, ProcessExit::Exited { exit_code: 0 });
    assert_eq!(s.stdout(), "started\n");
    // The command's namespace ends with it: the kernel has killed and reaped the rest before
    // the exit is reported, so there is nothing to wait for.
    let left = host_processes_with(&marker);
    assert!(left.is_empty(), "left running: {left:?}");
}

#[tokio::test]
async fn with_namespaces_the_command_sees_its_own_processes() {
    if !pid_namespaces_available() {
        return;
    }
    let s = Scratch::new();
    // PID 1 is the namespace's init, the command is PID 2, and /proc is the namespace's.
    let spec = s.sandboxed(
        "echo $$; sleep 5 & ls /proc > listed; grep -c '^[0-9]' listed; cat /proc/$$/comm; kill $!",
        false,
    );
    assert_eq!(run(&spec).await, ProcessExit::Exited { exit_code: 0 });
    // The init, the shell, sleep and ls: none of the host's processes.
    assert_eq!(s.stdout(), "2\n4\nsh\n");
}

#[tokio::test]
async fn with_namespaces_exit_codes_signals_and_a_graceful_stop_are_the_commands() {
    if !pid_namespaces_available() {
        return;
    }
    let s = Scratch::new();
    assert_eq!(
        run(&s.sandboxed("exit 7", false)).await,
        ProcessExit::Exited { exit_code: 7 }
    );
    assert_eq!(
        run(&s.sandboxed("kill -9 $$", false)).await,
        ProcessExit::Exited { exit_code: 137 }
    );
    // The SIGTERM of a timeout reaches the command (not only its stand-in outside the
    // namespace), whose handler decides the exit code.
    let mut spec = s.sandboxed(
        "trap 'echo stopping; exit 3' TERM; echo started; while :; do sleep 0.05; done",
        false,
    );
    // Long enough for the shell to have set its trap on a loaded machine; a grace period a
    // loaded machine cannot outlast (the stop ends as soon as the namespace is empty).
    spec.timeout = Some(Duration::from_secs(2));
    let patient = LocalRunner::with_spawner(Duration::from_secs(10), spawner_command()).await;
    let exit = patient
        .run(&spec, &CancellationToken::new())
        .await
        .expect("spawn");
    assert!(
        matches!(exit, ProcessExit::TimedOut { exit_code: 3, .. }),
        "{exit:?}"
    );
    assert_eq!(s.stdout(), "started\nstopping\n");
    // A command that ignores SIGTERM is killed after the grace period, namespace and all.
    let marker = format!("1001.{}", std::process::id());
    let mut spec = s.sandboxed(
        &format!("trap '' TERM; {}; wait", setsid_daemon(&marker)),
        false,
    );
    spec.timeout = Some(Duration::from_secs(2));
    let exit = run(&spec).await;
    assert!(
        matches!(exit, ProcessExit::TimedOut { exit_code: 137, .. }),
        "{exit:?}"
    );
    // SIGKILLed with its stand-in, the init leaves the kernel to empty the namespace.
    for pid in host_processes_with(&marker) {
        assert!(wait_dead(&pid).await, "left running: {pid}");
    }

    // A stop's grace period holds for the command's children too: the shell dies of the
    // SIGTERM at once, its child finishes what its handler does.
    let script = "sh -c 'trap \"sleep 0.1; echo cleaned > child; exit 0\" TERM; \
                  touch ready3; while :; do sleep 0.02; done' &
                  while [ ! -e ready3 ]; do sleep 0.01; done; echo started; wait";
    let mut spec = s.sandboxed(script, false);
    spec.timeout = Some(Duration::from_secs(2));
    let started = Instant::now();
    let exit = patient
        .run(&spec, &CancellationToken::new())
        .await
        .expect("spawn");
    assert!(
        matches!(exit, ProcessExit::TimedOut { exit_code: 143, .. }),
        "{exit:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        std::fs::read_to_string(s.root().join("child")).unwrap_or_default(),
        "cleaned\n"
    );
}

#[tokio::test]
async fn with_namespaces_the_command_leads_its_own_group_and_signals_it_freely() {
    if !pid_namespaces_available() {
        return;
    }
    let s = Scratch::new();
    // The command is its own process group's leader inside the namespace, as without one;
    // a TERM it sends its whole group does not look like the agent stopping the action, so
    // when it exits the namespace ends at once, daemon and all.
    let marker = format!("1002.{}", std::process::id());
    let script = format!(
        "read -r _ _ _ _ group _ < /proc/$$/stat; echo $$ $group; \
         {daemon}; \
         sleep 30 & trap '' TERM; kill -TERM 0; wait $!; echo survived",
        daemon = setsid_daemon(&marker)
    );
    let mut spec = s.sandboxed(&script, false);
    spec.timeout = Some(Duration::from_secs(20));
    let started = Instant::now();
    assert_eq!(run(&spec).await, ProcessExit::Exited { exit_code: 0 });
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.stdout(), "2 2\nsurvived\n");
    let left = host_processes_with(&marker);
    assert!(left.is_empty(), "left running: {left:?}");
}

/// The pids of `root` and its descendants whose command name is `comm`.
fn processes_named_under(root: u32, comm: &str) -> Vec<i32> {
    let stats: Vec<(i32, i32, String)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            let parent = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, parent, name.to_owned()))
        })
        .collect();
    let mut under = vec![root as i32];
    let mut grew = true;
    while grew {
        grew = false;
        for (pid, parent, _) in &stats {
            if under.contains(parent) && !under.contains(pid) {
                under.push(*pid);
                grew = true;
            }
        }
    }
    stats
        .into_iter()
        .filter(|(pid, _, name)| under.contains(pid) && name == comm)
        .map(|(pid, _, _)| pid)
        .collect()
}

#[tokio::test]
async fn with_namespaces_a_sigterm_meant_for_the_agent_stops_no_action() {
    if !pid_namespaces_available() {
        return;
    }
    let s = Scratch::new();
    let runner = runner().await;
    let spawner = runner.spawner.as_ref().unwrap().pid().unwrap();
    let spec = s.sandboxed("touch ready; sleep 1; echo finished", false);
    let cancel = CancellationToken::new();
    let (exit, signalled) = tokio::join!(runner.run(&spec, &cancel), async {
        while !s.root().join("ready").exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // What `pkill tessera-spawner` would reach: the spawner, and the command's stand-in
        // and init, which are forks of it.
        let named = processes_named_under(spawner, "tessera-spawner");
        for &pid in &named {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        named.len()
    });
    assert_eq!(signalled, 3, "the spawner, the stand-in and the init");
    assert_eq!(exit.unwrap(), ProcessExit::Exited { exit_code: 0 });
    assert_eq!(s.stdout(), "finished\n");
}

#[tokio::test]
async fn commands_start_with_no_signal_blocked() {
    let s = Scratch::new();
    // Run directly (not through a shell, which might reset its mask itself).
    let mut spec = s.spec("");
    spec.program = PathBuf::from("/bin/grep");
    spec.argv = vec!["grep".into(), "SigBlk".into(), "/proc/self/status".into()];
    let mut sandboxed = s.sandboxed("", false);
    sandboxed.program = spec.program.clone();
    sandboxed.argv = spec.argv.clone();
    let mut specs = vec![spec];
    if namespaces_available() {
        specs.push(sandboxed);
    }
    for spec in specs {
        assert_eq!(run(&spec).await, ProcessExit::Exited { exit_code: 0 });
        assert_eq!(
            s.stdout(),
            "SigBlk:\t0000000000000000\n",
            "{:?}",
            spec.isolation
        );
    }
}

#[tokio::test]
async fn resource_limits_apply() {
    let s = Scratch::new();
    assert_eq!(
        run(&s.spec("ulimit -n; ulimit -c")).await,
        ProcessExit::Exited { exit_code: 0 }
    );
    assert_eq!(
        s.stdout(),
        format!("{}\n0\n", tessera_agent::sandbox::default_nofile())
    );
    let mut spec = s.spec("ulimit -n");
    spec.isolation.limits.nofile = Some(1000);
    run(&spec).await;
    assert_eq!(s.stdout(), "1000\n");
}

#[tokio::test]
async fn a_missing_program_is_the_actions_fault() {
    let s = Scratch::new();
    let mut spec = s.spec("");
    spec.program = s.root().join("nope");
    let err = runner()
        .await
        .run(&spec, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.is_user_error(), "{err}");
}

/// Regression guard for the fork/exec race: exec fails with ETXTBSY while any process still
/// has the file open for writing; the runner retries instead of failing the action.
#[tokio::test]
async fn exec_retries_while_the_file_is_busy() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    let tool = s.root().join("tool");
    let mut file = std::fs::File::create(&tool).unwrap();
    file.write_all(b"#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(60));
        drop(file);
    });
    let mut spec = s.spec("");
    spec.program = tool;
    spec.argv = vec!["./tool".into()];
    assert_eq!(run(&spec).await, ProcessExit::Exited { exit_code: 0 });
    assert_eq!(s.stdout(), "ran\n");
    closer.join().unwrap();
}

#[tokio::test]
async fn network_namespace_blocks_the_network_unless_asked() {
    if !namespaces_available() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let probe = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected");
    let s = Scratch::new();
    let mut blocked = s.sandboxed(&probe, false);
    blocked.program = PathBuf::from("/bin/bash");
    blocked.argv[0] = "bash".into();
    let exit = run(&blocked).await;
    assert_ne!(exit, ProcessExit::Exited { exit_code: 0 }, "{}", s.stdout());

    let mut open = s.sandboxed(&probe, true);
    open.program = PathBuf::from("/bin/bash");
    open.argv[0] = "bash".into();
    assert_eq!(run(&open).await, ProcessExit::Exited { exit_code: 0 });
    assert_eq!(s.stdout(), "connected\n");

    // Loopback is up inside the private namespace.
    if Path::new("/usr/sbin/ip").exists() || Path::new("/sbin/ip").exists() {
        let mut lo = s.sandboxed("ip -o link show lo", false);
        lo.env = vec![("PATH".into(), "/usr/sbin:/sbin:/usr/bin:/bin".into())];
        assert_eq!(run(&lo).await, ProcessExit::Exited { exit_code: 0 });
        assert!(s.stdout().contains("UP"), "{}", s.stdout());
    }
}

#[tokio::test]
async fn tmp_is_private_and_the_exec_root_stays_reachable() {
    if !namespaces_available() {
        return;
    }
    let s = Scratch::new();
    std::fs::write(s.root().join("input"), "in").unwrap();
    let marker = format!("tessera-agent-test-{}", std::process::id());
    let script = format!(
        "echo private > /tmp/{marker} && ls -A /tmp | grep -c . && cat {root}/input",
        root = s.root().display()
    );
    let spec = s.sandboxed(&script, false);
    assert!(
        s.root().starts_with("/tmp"),
        "this test wants an exec root under /tmp"
    );
    assert_eq!(run(&spec).await, ProcessExit::Exited { exit_code: 0 });
    assert!(
        !Path::new("/tmp").join(&marker).exists(),
        "leaked to the host /tmp"
    );
    assert_eq!(
        std::fs::read_to_string(s.dir.path().join("tmp").join(&marker)).unwrap(),
        "private\n"
    );
    // The private /tmp holds the marker and the path back to the exec root, nothing else.
    assert_eq!(s.stdout(), "2\nin");
}

#[tokio::test]
async fn without_a_spawner_the_agent_forks_commands_itself() {
    // A spawner that cannot start leaves the runner forking in-process.
    let broken = tessera_agent::spawner::SpawnerCommand {
        program: PathBuf::from("/bin/false"),
        args: Vec::new(),
    };
    let runner = LocalRunner::with_spawner(KILL_GRACE, broken).await;
    assert!(runner.spawner.is_none());
    let s = Scratch::new();
    let cancel = CancellationToken::new();
    let exit = runner
        .run(&s.spec("echo in-process; exit 3"), &cancel)
        .await;
    assert_eq!(exit.unwrap(), ProcessExit::Exited { exit_code: 3 });
    assert_eq!(s.stdout(), "in-process\n");
    let mut spec = s.spec("trap '' TERM; sleep 30 & echo $! > grandchild; wait");
    spec.timeout = Some(Duration::from_millis(200));
    let exit = runner.run(&spec, &cancel).await.unwrap();
    assert!(matches!(exit, ProcessExit::TimedOut { .. }), "{exit:?}");
    let grandchild = std::fs::read_to_string(s.root().join("grandchild")).unwrap();
    assert!(wait_dead(&grandchild).await);
}

/// A spawner SIGKILLed mid-action: the action fails as the agent's fault (so it is retried
/// elsewhere), its processes are killed, and the next action gets a new spawner.
#[tokio::test]
async fn a_dead_spawner_fails_its_actions_as_agent_errors_and_is_replaced() {
    let runner = runner().await;
    let spawner = runner.spawner.clone().unwrap();
    let first = spawner.pid().unwrap();
    let s = Scratch::new();
    let spec = s.spec("echo $$ > leader; sleep 30 & echo $! > grandchild; wait");
    let cancel = CancellationToken::new();
    let (exit, ()) = tokio::join!(runner.run(&spec, &cancel), async {
        let leader = s.root().join("leader");
        let until = Instant::now() + Duration::from_secs(5);
        // Started as far as the agent knows, and its child forked.
        while !(s.root().join("grandchild").exists() && spawner.running() == 1)
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(leader.exists(), "the command never started");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(first).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    });
    let error = exit.unwrap_err();
    assert!(!error.is_user_error(), "{error}");
    assert!(error.to_string().contains("spawner"), "{error}");
    for file in ["leader", "grandchild"] {
        let pid = std::fs::read_to_string(s.root().join(file)).unwrap();
        assert!(wait_dead(&pid).await, "{file} {pid} survived its spawner");
    }

    let s = Scratch::new();
    let exit = runner.run(&s.spec("echo again"), &cancel).await.unwrap();
    assert_eq!(exit, ProcessExit::Exited { exit_code: 0 });
    assert_eq!(s.stdout(), "again\n");
    let second = spawner.pid().unwrap();
    assert_ne!(first, second, "a new spawner serves the next action");
}

/// Dropping the runner (the agent going away) closes the spawner's socket: it exits.
#[tokio::test]
async fn the_spawner_ends_with_the_agent() {
    let runner = runner().await;
    let pid = runner.spawner.as_ref().unwrap().pid().unwrap().to_string();
    let s = Scratch::new();
    assert_eq!(
        runner
            .run(&s.spec("exit 0"), &CancellationToken::new())
            .await
            .unwrap(),
        ProcessExit::Exited { exit_code: 0 }
    );
    assert!(!is_dead(&pid));
    drop(runner);
    assert!(wait_dead(&pid).await, "spawner {pid} outlived its agent");
}

/// Through one spawner, which keeps network namespaces made ahead: every sandboxed action
/// still gets a pristine namespace (no traffic seen on its loopback: not one another action
/// used), with loopback up and no way out.
#[tokio::test]
async fn every_action_gets_a_fresh_network_namespace() {
    if !namespaces_available() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let runner = runner().await;
    let cancel = CancellationToken::new();
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    for _ in 0..6 {
        let s = Scratch::new();
        // Loopback's received bytes, then traffic on it (which needs it up): a namespace used
        // twice would show the first action's bytes.
        let script = format!(
            "readlink /proc/self/ns/net; awk '$1 == \"lo:\" {{ print $2 }}' /proc/net/dev; \
             echo x > /dev/udp/127.0.0.1/9 && echo lo-up; \
             (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo reached-host || echo cut-off"
        );
        let mut spec = s.sandboxed(&script, false);
        spec.program = PathBuf::from("/bin/bash");
        spec.argv[0] = "bash".into();
        let exit = runner.run(&spec, &cancel).await.unwrap();
        assert_eq!(exit, ProcessExit::Exited { exit_code: 0 }, "{}", s.stdout());
        let out = s.stdout();
        let lines: Vec<&str> = out.lines().collect();
        assert_ne!(Path::new(lines[0]), host, "the host's network");
        assert_eq!(lines[1..], ["0", "lo-up", "cut-off"], "{out}");
        // Give the spawner an idle moment to make namespaces ahead.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! Crash safety of the metadata store (redb; DESIGN.md §6: what is acknowledged survives).
//!
//! A child process (`meta-crash-child write`) writes metadata and prints each write only after
//! the store said it is durable. We SIGKILL it at random moments, during its startup and
//! recovery as well as mid-write and mid-flush, again and again on the same data directory.
//! After every kill a fresh process (`meta-crash-child verify`) reopens the store and checks
//! every write ever acknowledged, every acknowledged removal, the all-or-nothing of every
//! batch, and that every value present is whole.
//!
//! `TESSERA_META_CRASH_CYCLES` (default 300) and `TESSERA_META_CRASH_SEED` make longer or
//! repeated runs; the seed is printed; `TESSERA_META_CRASH_TRACE=1` prints every cycle. On
//! failure the data directory and the ack log are kept.

use std::fmt::Write as _;
mod common;

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CHILD: &str = env!("CARGO_BIN_EXE_meta-crash-child");
const DEFAULT_CYCLES: u64 = 300;
const SIGKILL: i32 = 9;
/// Generous: a debug child on a loaded 2-core machine can be slow to open a large store.
const PATIENCE: Duration = Duration::from_secs(60);

#[test]
fn meta_store_keeps_every_acknowledged_write_through_repeated_sigkill() {
    let cycles = env_u64("TESSERA_META_CRASH_CYCLES").unwrap_or(DEFAULT_CYCLES);
    let seed = env_u64("TESSERA_META_CRASH_SEED").unwrap_or_else(|| rand::rng().random());
    let dir = tempfile::Builder::new()
        .prefix("tessera-meta-crash")
        .tempdir()
        .unwrap();

    let started = Instant::now();
    match run_cycles(dir.path(), cycles, seed) {
        Ok(totals) => println!(
            "meta crash test: {cycles} kills ({} during startup), {} writes acknowledged, \
             {} acknowledged keys checked over all reopens ({} at the end), {} entries \
             scanned, {:.1} s ({:.1} s of it reopening and verifying), seed {seed}",
            totals.killed_in_startup,
            totals.acknowledged,
            totals.checked,
            totals.last_checked,
            totals.scanned,
            started.elapsed().as_secs_f64(),
            totals.verifying.as_secs_f64(),
        ),
        Err(failure) => {
            let kept = dir.keep();
            panic!(
                "{failure}\nseed {seed} (rerun with TESSERA_META_CRASH_SEED={seed}); \
                 store and ack log kept in {}",
                kept.display()
            );
        }
    }
}

#[derive(Default)]
struct Totals {
    killed_in_startup: u64,
    acknowledged: u64,
    checked: u64,
    last_checked: u64,
    scanned: u64,
    verifying: Duration,
}

/// When to kill the writer.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// This long after spawning it: lands in process start, store open or recovery.
    AfterSpawn(Duration),
    /// This long after it said the store is open: lands in writes and flushes.
    AfterReady(Duration),
}

/// `startup` is how long the writer has lately taken to open the store, so that kills timed
/// from the spawn land in process start, store open and recovery alike.
fn pick_kill(rng: &mut StdRng, startup: Duration) -> KillAt {
    let micros = |rng: &mut StdRng, max: u64| Duration::from_micros(rng.random_range(0..max));
    let startup = (startup.as_micros() as u64).max(1_000);
    match rng.random_range(0..100) {
        0..20 => KillAt::AfterSpawn(micros(rng, startup + startup / 4)),
        20..60 => KillAt::AfterReady(micros(rng, 3_000)),
        60..90 => KillAt::AfterReady(micros(rng, 40_000)),
        _ => KillAt::AfterReady(micros(rng, 300_000)),
    }
}

fn run_cycles(dir: &Path, cycles: u64, seed: u64) -> Result<Totals, String> {
    let db = dir.join("db");
    let log_path = dir.join("acks.log");
    File::create(&log_path).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut totals = Totals::default();
    let mut startup = Duration::from_millis(20);

    for cycle in 0..cycles {
        let kill_at = pick_kill(&mut rng, startup);
        let context = |what: &str| format!("cycle {cycle} (kill {kill_at:?}): {what}");

        let stderr_path = dir.join("child.stderr");
        let mut child = Command::new(CHILD)
            .arg("write")
            .arg(&db)
            .arg(cycle.to_string())
            .arg(seed.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let spawned = Instant::now();
        let (lines, reader) = common::read_lines(&mut child);

        match kill_at {
            // Real time: the kill lands at a random moment of the writer's life on purpose.
            KillAt::AfterSpawn(delay) => std::thread::sleep(delay),
            KillAt::AfterReady(delay) => match lines.recv_timeout(PATIENCE) {
                Ok(line) if line == "ready" => {
                    startup = (startup * 3 + spawned.elapsed()) / 4;
                    // Real time, as above: mid-write, mid-flush, wherever it falls.
                    std::thread::sleep(delay);
                }
                other => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(context(&format!(
                        "writer did not get ready (got {other:?}); its stderr:\n{}",
                        read(&stderr_path)
                    )));
                }
            },
        }
        if let Some(status) = child.try_wait().unwrap() {
            return Err(context(&format!(
                "writer exited by itself with {status}; its stderr:\n{}",
                read(&stderr_path)
            )));
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        if status.signal() != Some(SIGKILL) {
            return Err(context(&format!(
                "writer ended with {status}, not by our SIGKILL; its stderr:\n{}",
                read(&stderr_path)
            )));
        }
        // The pipe is closed now, so this drains everything the writer managed to print.
        let printed: Vec<String> = lines.into_iter().collect();
        reader.join().unwrap();
        let mut ready = matches!(kill_at, KillAt::AfterReady(_));
        let mut chunk = String::new();
        for line in printed {
            if line == "ready" {
                ready = true;
                continue;
            }
            if line.starts_with("put ") || line.starts_with("del ") {
                totals.acknowledged += 1;
            }
            writeln!(chunk, "{line}").unwrap();
        }
        if !ready {
            totals.killed_in_startup += 1;
        }
        // Reopened each cycle: the verifier rewrites it compacted.
        let mut log = OpenOptions::new().append(true).open(&log_path).unwrap();
        log.write_all(chunk.as_bytes()).unwrap();

        let verify_started = Instant::now();
        let verified = run_verifier(&db, &log_path).map_err(|why| context(&why))?;
        totals.verifying += verify_started.elapsed();
        if std::env::var_os("TESSERA_META_CRASH_TRACE").is_some() {
            eprintln!(
                "cycle {cycle}: {kill_at:?}, startup {startup:?}, verify {:?}: {verified}",
                verify_started.elapsed()
            );
        }
        let count = |name: &str| -> u64 {
            verified
                .split(' ')
                .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        totals.last_checked = count("acked_keys");
        totals.checked += totals.last_checked;
        totals.scanned += count("scanned");
    }
    if totals.last_checked == 0 {
        return Err("no write was ever acknowledged; the test proved nothing".into());
    }
    Ok(totals)
}

/// Runs the verifier; its summary line on success, the evidence otherwise.
fn run_verifier(db: &Path, log: &Path) -> Result<String, String> {
    let verifier = Command::new(CHILD)
        .arg("verify")
        .arg(db)
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = wait_with_timeout(verifier, PATIENCE)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.success() {
        return Ok(stdout.trim().to_owned());
    }
    Err(format!(
        "store failed verification after reopen ({}):\n{stdout}{}",
        describe(output.status),
        String::from_utf8_lossy(&output.stderr)
    ))
}

fn wait_with_timeout(mut child: Child, timeout: Duration) -> Result<Output, String> {
    if !exits_within(&child, timeout) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "verifier hung for {timeout:?}; reopening the store stalls"
        ));
    }
    Ok(child.wait_with_output().unwrap())
}

/// Whether `child` exits within `limit`. The exit is awaited as an event: a helper thread
/// blocks in `waitid(WNOWAIT)`, which sees the exit without reaping the child, so the caller
/// can still kill it or collect its status and output.
fn exits_within(child: &Child, limit: Duration) -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        while let Err(nix::errno::Errno::EINTR) =
            waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
        {}
        let _ = tx.send(());
    });
    rx.recv_timeout(limit).is_ok()
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(1) => "acknowledged data wrong or missing".into(),
        Some(2) => "store did not open".into(),
        _ => status.to_string(),
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

//! Crash safety of the blob store's small-blob path (DESIGN.md §3, and the durability rules in
//! the module docs of `cas/src/store/disk.rs`).
//!
//! A child process (`blob-crash-child write`) writes small blobs and some larger ones through a
//! real [`DiskStore`](tessera_cas::store::DiskStore) over redb from four threads (their
//! records group-committed), checkpointing all the while, and prints each write once it returned and each
//! checkpoint once it completed. We SIGKILL it at random moments, again and again on the same
//! directory; after every kill a fresh process (`blob-crash-child verify`) reopens the store
//! and checks that every blob it reports present reads back whole and matches its digest, that
//! nothing else is present, and that every acknowledged write is there (a process crash must
//! lose none: files survive it in the page cache, inline blobs through their journal, replayed
//! at open).
//!
//! `TESSERA_BLOB_CRASH_CYCLES` (default 25) and `TESSERA_BLOB_CRASH_SEED` make longer or
//! repeated runs; the seed is printed. On failure the directory and the log are kept.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CHILD: &str = env!("CARGO_BIN_EXE_blob-crash-child");
const DEFAULT_CYCLES: u64 = 25;
const SIGKILL: i32 = 9;
/// Generous: a debug child on a loaded 2-core machine can be slow to open a large store.
const PATIENCE: Duration = Duration::from_secs(60);

/// Every blob a file (inline off, as the agent's cache and `DiskStoreOptions::new` have it).
#[test]
fn blob_store_keeps_every_acknowledged_write_and_serves_only_whole_blobs_through_sigkill() {
    crash_story(0);
}

/// Small blobs inline, as the coordinator keeps them: an inline write returns once journaled
/// and committed, not flushed, so only the journal's replay at open keeps the writes acknowledged
/// since the last checkpoint (without it this test fails at the first kill that lands between
/// two checkpoints).
#[test]
fn inline_blobs_keep_every_acknowledged_write_through_sigkill() {
    crash_story(16 * 1024);
}

fn crash_story(inline_max: u64) {
    let cycles = env_u64("TESSERA_BLOB_CRASH_CYCLES").unwrap_or(DEFAULT_CYCLES);
    let seed = env_u64("TESSERA_BLOB_CRASH_SEED").unwrap_or_else(|| rand::rng().random());
    let dir = tempfile::Builder::new()
        .prefix("tessera-blob-crash")
        .tempdir()
        .unwrap();
    let started = Instant::now();
    match run_cycles(dir.path(), inline_max, cycles, seed) {
        Ok(summary) => println!(
            "blob crash test: {cycles} kills, {summary}, {:.1} s, seed {seed}",
            started.elapsed().as_secs_f64()
        ),
        Err(failure) => {
            let kept = dir.keep();
            panic!(
                "{failure}\nseed {seed} (rerun with TESSERA_BLOB_CRASH_SEED={seed}); store and \
                 log kept in {}",
                kept.display()
            );
        }
    }
}

fn run_cycles(dir: &Path, inline_max: u64, cycles: u64, seed: u64) -> Result<String, String> {
    let store = dir.join("store");
    let log_path = dir.join("writes.log");
    File::create(&log_path).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut last = String::new();
    let mut durable_cycles = 0;
    for cycle in 0..cycles {
        // Mostly mid-write and mid-checkpoint; sometimes long enough for many checkpoints.
        let delay = Duration::from_micros(match rng.random_range(0..10) {
            0..6 => rng.random_range(0..40_000),
            _ => rng.random_range(0..400_000),
        });
        let context = |what: &str| format!("cycle {cycle} (kill after {delay:?}): {what}");
        let stderr_path = dir.join("child.stderr");
        let mut child = Command::new(CHILD)
            .arg("write")
            .arg(&store)
            .arg(inline_max.to_string())
            .arg(cycle.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let (lines, reader) = common::read_lines(&mut child);
        match lines.recv_timeout(PATIENCE) {
            Ok(line) if line == "ready" => {}
            other => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(context(&format!(
                    "writer did not get ready (got {other:?}); its stderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                )));
            }
        }
        // Real time: the kill lands at a random moment of the writer's work on purpose.
        std::thread::sleep(delay);
        if let Some(status) = child.try_wait().unwrap() {
            return Err(context(&format!(
                "writer exited by itself with {status}; its stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            )));
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(SIGKILL),
            "{}",
            context("not our kill")
        );
        let mut printed = String::from("ready\n");
        for line in lines.into_iter() {
            if line.starts_with("durable ") {
                durable_cycles += 1;
            }
            printed.push_str(&line);
            printed.push('\n');
        }
        reader.join().unwrap();
        OpenOptions::new()
            .append(true)
            .open(&log_path)
            .unwrap()
            .write_all(printed.as_bytes())
            .unwrap();

        let verifier = Command::new(CHILD)
            .arg("verify")
            .arg(&store)
            .arg(inline_max.to_string())
            .arg(&log_path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&verifier.stdout).trim().to_owned();
        if !verifier.status.success() {
            return Err(context(&format!(
                "store failed verification after reopen ({}):\n{out}{}",
                verifier.status,
                String::from_utf8_lossy(&verifier.stderr)
            )));
        }
        last = out;
    }
    if durable_cycles == 0 {
        return Err("no checkpoint ever completed; the test proved nothing".into());
    }
    Ok(format!("{durable_cycles} checkpoints seen, last: {last}"))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

//! Test helper for `cas/tests/blob_crash.rs`: the blob-store process that gets SIGKILLed.
//!
//! `blob-crash-child write <dir> <inline-max> <cycle>` opens a [`DiskStore`] with that inline
//! limit (0: every blob a file) over a [`RedbStore`] in `dir`, prints `ready`, then writes blobs from
//! four threads until killed (or 30 s pass): mostly small ones (kept inline), one in eight
//! larger than the inline limit (a file). After each write returns it prints `w <cycle>
//! <thread> <n>`. A fifth thread checkpoints every few milliseconds: it notes how many writes
//! had been printed when it started, and after the checkpoint returns prints `durable <count>`
//! (everything printed before that point must survive a crash).
//!
//! `blob-crash-child verify <dir> <inline-max> <log>` reopens the store and checks it against the log:
//! every blob it reports present among all that were ever written (acknowledged or not) reads
//! back whole and matches, no other blob is present, and every acknowledged write (every `w`
//! line: a process crash must not lose one, inline or file) is present. A lost write is
//! reported with whether a completed checkpoint of its own cycle covered it (a `durable k`
//! line covers the first `k` writes of its cycle only: a checkpoint cannot make durable what
//! an earlier process's crash already lost). Exit 0 with `verified ...`, 1 with one line per
//! problem, 2 if the store does not open.
//!
//! A blob's bytes are a function of `(cycle, thread, n)`, so the verifier needs no copy.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::meta::{MetadataStore, RedbStore};
use tessera_cas::store::{BlobStore, DiskStore, DiskStoreOptions};

const WRITERS: u64 = 4;
const WRITE_FOR_AT_MOST: Duration = Duration::from_secs(30);
const CHECKPOINT_EVERY: Duration = Duration::from_millis(15);
/// Writes a thread may have done without printing them when it was killed (it prints after
/// each one), so the verifier looks this far past the last printed one.
const UNPRINTED: u64 = 2;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["write", dir, inline_max, cycle] => match (inline_max.parse(), cycle.parse()) {
            (Ok(inline_max), Ok(cycle)) => write(dir, inline_max, cycle),
            _ => usage(),
        },
        ["verify", dir, inline_max, log] => match inline_max.parse() {
            Ok(inline_max) => verify(dir, inline_max, log),
            Err(_) => usage(),
        },
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: blob-crash-child write <dir> <inline-max> <cycle> | verify <dir> <inline-max> <log>"
    );
    ExitCode::from(2)
}

/// The bytes of blob `n` of `thread` in `cycle`: 1 to 8 KiB, or one in eight 20 to 40 KiB.
fn blob(cycle: u64, thread: u64, n: u64) -> (Digest, Vec<u8>) {
    let mut hasher = blake3::Hasher::new();
    for part in [cycle, thread, n] {
        hasher.update(&part.to_le_bytes());
    }
    let mut xof = hasher.finalize_xof();
    let mut head = [0u8; 8];
    xof.fill(&mut head);
    let pick = u64::from_le_bytes(head);
    let len = if pick % 8 == 0 {
        20_480 + (pick >> 8) % 20_480
    } else {
        1 + (pick >> 8) % 8_192
    };
    let mut data = vec![0u8; len as usize];
    xof.fill(&mut data);
    // Half of them compressible, so both at-rest forms of files are written.
    if pick % 2 == 0 {
        for (i, b) in data.iter_mut().enumerate() {
            if i % 4 != 0 {
                *b = b'a';
            }
        }
    }
    let function = if pick % 3 == 0 {
        DigestFunction::Blake3
    } else {
        DigestFunction::Sha256
    };
    (function.digest_of(&data), data)
}

fn open(dir: &str, inline_max: u64) -> Result<(Arc<RedbStore>, DiskStore), String> {
    let dir = std::path::Path::new(dir);
    let meta = Arc::new(RedbStore::open(dir.join("meta")).map_err(|e| e.to_string())?);
    let mut options = DiskStoreOptions::new(dir.join("cas"));
    options.inline_max = inline_max;
    let store = DiskStore::open(Arc::clone(&meta) as Arc<dyn MetadataStore>, options)
        .map_err(|e| e.to_string())?;
    Ok((meta, store))
}

/// Stdout and the number of `w` lines printed so far, under one lock.
struct Log {
    printed: u64,
}

fn emit(log: &Mutex<Log>, line: &str, is_write: bool) {
    let mut log = log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(3);
    }
    if is_write {
        log.printed += 1;
    }
}

fn fatal(message: String) -> ! {
    eprintln!("blob-crash-child: {message}");
    std::process::exit(4);
}

fn write(dir: &str, inline_max: u64, cycle: u64) -> ExitCode {
    let (_meta, store) = match open(dir, inline_max) {
        Ok(opened) => opened,
        Err(error) => {
            eprintln!("blob-crash-child: {error}");
            return ExitCode::from(2);
        }
    };
    let log = Mutex::new(Log { printed: 0 });
    emit(&log, "ready", false);
    let deadline = Instant::now() + WRITE_FOR_AT_MOST;
    let writing = AtomicBool::new(true);
    std::thread::scope(|scope| {
        for thread in 0..WRITERS {
            let (store, log) = (&store, &log);
            scope.spawn(move || {
                for n in 0.. {
                    if Instant::now() > deadline {
                        return;
                    }
                    let (digest, data) = blob(cycle, thread, n);
                    if let Err(error) = store.write(&digest, &data) {
                        fatal(format!("write failed: {error}"));
                    }
                    emit(log, &format!("w {cycle} {thread} {n}"), true);
                }
            });
        }
        scope.spawn(|| {
            while writing.load(Ordering::Relaxed) && Instant::now() < deadline {
                std::thread::sleep(CHECKPOINT_EVERY);
                let before = log.lock().map_or(0, |l| l.printed);
                if let Err(error) = store.checkpoint() {
                    fatal(format!("checkpoint failed: {error}"));
                }
                emit(&log, &format!("durable {before}"), false);
            }
        });
    });
    writing.store(false, Ordering::Relaxed);
    ExitCode::SUCCESS
}

fn verify(dir: &str, inline_max: u64, log: &str) -> ExitCode {
    let text = match std::fs::read_to_string(log) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("blob-crash-child: cannot read {log}: {error}");
            return ExitCode::from(2);
        }
    };
    // The log holds every cycle's lines, in order; `durable k` counts the `w` lines of its
    // own cycle, which start after that cycle's `ready`.
    let mut writes: Vec<(u64, u64, u64)> = Vec::new();
    // Per write: whether a completed checkpoint of its own cycle covered it.
    let mut checkpointed: Vec<bool> = Vec::new();
    let mut cycle_start = 0usize;
    let mut cycles = 0u64;
    for line in text.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["ready"] => {
                cycle_start = writes.len();
                cycles += 1;
            }
            ["w", c, t, n] => match (c.parse(), t.parse(), n.parse()) {
                (Ok(c), Ok(t), Ok(n)) => {
                    writes.push((c, t, n));
                    checkpointed.push(false);
                }
                _ => return bad_log(line),
            },
            ["durable", k] => match k.parse::<usize>() {
                Ok(k) => {
                    let end = (cycle_start + k).min(checkpointed.len());
                    checkpointed[cycle_start..end].fill(true);
                }
                Err(_) => return bad_log(line),
            },
            _ => return bad_log(line),
        }
    }
    let mut problems = Vec::new();
    let (meta, store) = match open(dir, inline_max) {
        Ok(opened) => opened,
        Err(error) => {
            println!("OPEN FAILED {error}");
            return ExitCode::from(2);
        }
    };
    for (&(c, t, n), &covered) in writes.iter().zip(&checkpointed) {
        let (digest, _) = blob(c, t, n);
        if !store.contains(&digest) {
            let when = if covered {
                "before a completed checkpoint"
            } else {
                "acknowledged, not yet checkpointed"
            };
            problems.push(format!(
                "LOST w {c} {t} {n} ({digest}): {when} ({})",
                stored_as(&meta, &digest)
            ));
        }
    }
    let must_have = checkpointed.iter().filter(|&&c| c).count();
    // Every blob ever written, printed or not: the printed ones and a few past each thread's
    // last printed write in every cycle.
    let mut candidates = std::collections::BTreeSet::new();
    let mut last: std::collections::BTreeMap<(u64, u64), u64> = Default::default();
    for &(c, t, n) in &writes {
        candidates.insert((c, t, n));
        let top = last.entry((c, t)).or_insert(n);
        *top = (*top).max(n);
    }
    // Every cycle, also those killed before any write was printed.
    for c in 0..cycles {
        for t in 0..WRITERS {
            let next = last.get(&(c, t)).map_or(0, |n| n + 1);
            for n in next..next + UNPRINTED {
                candidates.insert((c, t, n));
            }
        }
    }
    let mut present = 0u64;
    let mut seen = std::collections::HashSet::new();
    for &(c, t, n) in &candidates {
        let (digest, data) = blob(c, t, n);
        if !store.contains(&digest) || !seen.insert(digest) {
            continue;
        }
        present += 1;
        match store.read(&digest) {
            Ok(Some(read)) if read == data => {}
            Ok(Some(read)) => problems.push(format!(
                "WRONG {digest}: read {} bytes that are not the blob",
                read.len()
            )),
            Ok(None) => problems.push(format!("UNREADABLE {digest}: reported present")),
            Err(error) => problems.push(format!("READ FAILED {digest}: {error}")),
        }
    }
    let stats = store.stats();
    // Closed as the coordinator closes it: a last checkpoint, so what this process changed
    // (adopted or removed blobs) is durable.
    if let Err(error) = store.checkpoint() {
        problems.push(format!("CHECKPOINT FAILED {error}"));
    }
    if stats.blobs != present {
        problems.push(format!(
            "UNKNOWN {} blobs present that were never written ({present} expected)",
            stats.blobs.saturating_sub(present)
        ));
    }
    if problems.is_empty() {
        println!(
            "verified acked={} durable={must_have} present={present} stored_bytes={}",
            writes.len(),
            stats.stored_bytes
        );
        ExitCode::SUCCESS
    } else {
        for problem in problems.iter().take(50) {
            println!("{problem}");
        }
        println!("{} problems", problems.len());
        ExitCode::from(1)
    }
}

/// What the metadata store holds for `digest`, for a failure message.
fn stored_as(meta: &RedbStore, digest: &Digest) -> String {
    let mut key = vec![match digest.function {
        DigestFunction::Sha256 => 1,
        DigestFunction::Blake3 => 9,
    }];
    key.extend_from_slice(&digest.hash);
    key.extend_from_slice(&digest.size_bytes.to_be_bytes());
    let has = |table: &str| {
        meta.table(table)
            .and_then(|t| t.get(&key))
            .map_or_else(|e| format!("error {e}"), |v| v.is_some().to_string())
    };
    format!(
        "record {}, inline content {}",
        has("blobs"),
        has("blobs_inline")
    )
}

fn bad_log(line: &str) -> ExitCode {
    eprintln!("blob-crash-child: cannot parse log line {line:?}");
    ExitCode::from(2)
}

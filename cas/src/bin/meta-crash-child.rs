//! Test helper for `cas/tests/meta_crash.rs`: the process that gets SIGKILLed.
//!
//! `meta-crash-child write <db-dir> <cycle> <seed>` opens the metadata store (redb), prints
//! `ready`, then writes until killed (or 30 s pass): ActionCache-like entries (200 B to 4 KiB)
//! in table `ac`, index-record-like entries (16 to 64 B) in table `blobs`, single writes,
//! batches within and across tables, compare-and-swap updates of shared `hot/*` keys, and
//! removals. Three async writers use the group flush, one thread the blocking flush. A line
//! `put <table> <key> <version>` or `del <table> <key>` is printed only after a flush requested
//! after that write returned; `deleting ...` and `batch ...` lines announce what is about to be
//! written, so the verifier knows which states are allowed for unacknowledged work.
//!
//! `meta-crash-child verify <db-dir> <ack-log>` reopens the store and checks it against every
//! line the writers ever printed: exit 0 with `verified ...`, 1 with one line per violation,
//! 2 if the store does not open. On success it rewrites the log compacted.
//!
//! Every value is `version (u64 LE) ++ payload`, the payload derived from table, key and
//! version, so any value can be checked without a record of it.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tessera_cas::meta::{Batch, MetadataStore, RedbStore, SwapOutcome, Table};

const HOT_KEYS: u64 = 32;
/// New keys one writer process may create; after that it only updates and removes, so the
/// store (and the verifier's work) grows slowly however long a cycle lasts.
const NEW_KEYS_PER_RUN: u64 = 64;
const WRITE_FOR_AT_MOST: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["write", dir, cycle, seed] => match (cycle.parse(), seed.parse()) {
            (Ok(cycle), Ok(seed)) => write(dir, cycle, seed),
            _ => usage(),
        },
        ["verify", dir, log] => verify(dir, log),
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: meta-crash-child write <db-dir> <cycle> <seed> | verify <db-dir> <ack-log>");
    ExitCode::from(2)
}

/// The value stored under `key` of `table` at `version`.
fn value(table: &str, key: &str, version: u64) -> Vec<u8> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(table.as_bytes());
    hasher.update(&[0]);
    hasher.update(key.as_bytes());
    hasher.update(&version.to_le_bytes());
    let mut xof = hasher.finalize_xof();
    let mut len = [0; 8];
    xof.fill(&mut len);
    let len = u64::from_le_bytes(len);
    let len = if table == "ac" {
        200 + len % 3897
    } else {
        16 + len % 49
    };
    let mut bytes = version.to_le_bytes().to_vec();
    bytes.resize(8 + len as usize, 0);
    xof.fill(&mut bytes[8..]);
    bytes
}

/// The version of a stored value, if the value is exactly what that version should be.
fn version_of(table: &str, key: &str, bytes: &[u8]) -> Result<u64, String> {
    let Some(version) = bytes.get(..8) else {
        return Err(format!("value of {} bytes is too short", bytes.len()));
    };
    let version = u64::from_le_bytes(version.try_into().unwrap());
    if bytes == value(table, key, version) {
        Ok(version)
    } else {
        Err(format!(
            "value of {} bytes claims version {version} but does not match it",
            bytes.len()
        ))
    }
}

/// Writes `text` to stdout in one go; exits if the test is gone.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(3);
    }
}

fn fatal(message: String) -> ! {
    eprintln!("meta-crash-child: {message}");
    std::process::exit(4);
}

// ---- write mode ---------------------------------------------------------------------------

fn write(dir: &str, cycle: u64, seed: u64) -> ExitCode {
    let store = match RedbStore::open(dir) {
        Ok(store) => Arc::new(store),
        Err(err) => {
            eprintln!(
                "meta-crash-child: {err}: {:?}",
                std::error::Error::source(&err)
            );
            return ExitCode::from(2);
        }
    };
    emit("ready\n");
    let deadline = Instant::now() + WRITE_FOR_AT_MOST;
    let budget = Arc::new(AtomicU64::new(NEW_KEYS_PER_RUN));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let blocking = std::thread::spawn({
        let mut writer = Writer::new(&store, &budget, cycle, seed, 0);
        let store = Arc::clone(&store);
        move || {
            while Instant::now() < deadline {
                let acks = writer.step();
                if let Err(err) = store.flush() {
                    fatal(format!("flush failed: {err}"));
                }
                writer.acknowledge(acks);
            }
        }
    });
    runtime.block_on(async {
        let writers: Vec<_> = (1..=3)
            .map(|id| {
                let mut writer = Writer::new(&store, &budget, cycle, seed, id);
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let acks = writer.step();
                        if let Err(err) = store.flush_async().await {
                            fatal(format!("flush failed: {err}"));
                        }
                        writer.acknowledge(acks);
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
    });
    blocking.join().unwrap();
    ExitCode::SUCCESS
}

struct Writer {
    store: Arc<RedbStore>,
    ac: Table,
    blobs: Table,
    /// New keys this process may still create, shared by its writers.
    budget: Arc<AtomicU64>,
    prefix: String,
    next: u64,
    rng: u64,
    /// Acknowledged single puts that may be removed later.
    removable: Vec<(&'static str, String)>,
    /// Puts of the current step, removable once acknowledged.
    unacked: Vec<(&'static str, String)>,
}

impl Writer {
    fn new(
        store: &Arc<RedbStore>,
        budget: &Arc<AtomicU64>,
        cycle: u64,
        seed: u64,
        id: u64,
    ) -> Self {
        let table = |name| {
            store
                .table(name)
                .unwrap_or_else(|err| fatal(format!("{err}")))
        };
        Self {
            store: Arc::clone(store),
            ac: table("ac"),
            blobs: table("blobs"),
            budget: Arc::clone(budget),
            prefix: format!("c{cycle:05}/w{id}"),
            next: 0,
            rng: (seed ^ (cycle << 8) ^ id).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            removable: Vec::new(),
            unacked: Vec::new(),
        }
    }

    fn random(&mut self, below: u64) -> u64 {
        // xorshift64*: enough to vary the workload, no dependency needed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % below
    }

    fn new_key(&mut self) -> String {
        self.next += 1;
        format!("{}/{:06}", self.prefix, self.next)
    }

    fn table(&self, name: &str) -> &Table {
        if name == "ac" { &self.ac } else { &self.blobs }
    }

    /// Runs one to four writes and returns the ack lines to print once they are flushed.
    fn step(&mut self) -> String {
        let mut acks = String::new();
        for _ in 0..=self.random(4) {
            match self.random(100) {
                0..40 if self.take_keys(1) => self.put("ac", &mut acks),
                40..60 if self.take_keys(1) => self.put("blobs", &mut acks),
                60..72 if self.take_keys(8) => self.batch_in_one_table(&mut acks),
                72..82 if self.take_keys(3) => self.batch_across_tables(&mut acks),
                88.. => self.remove(&mut acks),
                _ => self.bump_hot_key(&mut acks),
            }
        }
        acks
    }

    fn take_keys(&self, count: u64) -> bool {
        self.budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(count)
            })
            .is_ok()
    }

    fn acknowledge(&mut self, acks: String) {
        emit(&acks);
        self.removable.append(&mut self.unacked);
    }

    fn put(&mut self, table: &'static str, acks: &mut String) {
        let key = self.new_key();
        if let Err(err) = self
            .table(table)
            .insert(key.as_bytes(), &value(table, &key, 0))
        {
            fatal(format!("{err}"));
        }
        acks.push_str(&format!("put {table} {key} 0\n"));
        self.unacked.push((table, key));
    }

    fn batch_in_one_table(&mut self, acks: &mut String) {
        let mut batch = Batch::new();
        let mut intent = String::from("batch");
        for _ in 0..2 + self.random(7) {
            let key = self.new_key();
            batch.insert("ac", key.clone(), value("ac", &key, 0));
            intent.push_str(&format!(" +ac:{key}"));
            acks.push_str(&format!("put ac {key} 0\n"));
        }
        self.apply(batch, intent);
    }

    /// Like an ActionCache entry written with the index records it points at, and sometimes
    /// an old record dropped in the same batch.
    fn batch_across_tables(&mut self, acks: &mut String) {
        let mut batch = Batch::new();
        let mut intent = String::from("batch");
        for table in ["ac", "blobs", "blobs"] {
            let key = self.new_key();
            batch.insert(table, key.clone(), value(table, &key, 0));
            intent.push_str(&format!(" +{table}:{key}"));
            acks.push_str(&format!("put {table} {key} 0\n"));
        }
        if !self.removable.is_empty() && self.random(2) == 0 {
            let index = self.random(self.removable.len() as u64) as usize;
            let (table, key) = self.removable.swap_remove(index);
            batch.remove(table, key.clone());
            intent.push_str(&format!(" -{table}:{key}"));
            acks.push_str(&format!("del {table} {key}\n"));
        }
        self.apply(batch, intent);
    }

    fn apply(&self, batch: Batch, intent: String) {
        emit(&format!("{intent}\n"));
        if let Err(err) = self.store.apply_batch(batch) {
            fatal(format!("{err}"));
        }
    }

    /// Read-modify-write of a key every writer (and every earlier cycle) updates, like the
    /// lazily written last-access time of an index record.
    fn bump_hot_key(&mut self, acks: &mut String) {
        let key = format!("hot/{:02}", self.random(HOT_KEYS));
        let current = self
            .blobs
            .get(key.as_bytes())
            .unwrap_or_else(|err| fatal(format!("{err}")));
        let version = match &current {
            Some(bytes) => {
                version_of("blobs", &key, bytes)
                    .unwrap_or_else(|why| fatal(format!("blobs {key}: {why}")))
                    + 1
            }
            None => 1,
        };
        let swapped = self
            .blobs
            .compare_and_swap(
                key.as_bytes(),
                current.as_deref(),
                Some(&value("blobs", &key, version)),
            )
            .unwrap_or_else(|err| fatal(format!("{err}")));
        if swapped == SwapOutcome::Swapped {
            acks.push_str(&format!("put blobs {key} {version}\n"));
        }
    }

    fn remove(&mut self, acks: &mut String) {
        if self.removable.is_empty() {
            return;
        }
        let index = self.random(self.removable.len() as u64) as usize;
        let (table, key) = self.removable.swap_remove(index);
        emit(&format!("deleting {table} {key}\n"));
        if let Err(err) = self.table(table).remove(key.as_bytes()) {
            fatal(format!("{err}"));
        }
        acks.push_str(&format!("del {table} {key}\n"));
    }
}

// ---- verify mode --------------------------------------------------------------------------

type Key = (String, String);

/// What the writers printed, over every cycle so far.
#[derive(Default)]
struct Ledger {
    /// Acknowledged puts: the lowest version the key may hold.
    acked: HashMap<Key, u64>,
    /// Acknowledged removals: the key must be absent.
    removed: HashSet<Key>,
    /// Announced removals: the key may be absent.
    removing: HashSet<Key>,
    /// Announced batches: all of `+` present and `-` absent, or none of it.
    batches: Vec<Vec<(bool, Key)>>,
}

impl Ledger {
    fn parse(text: &str) -> Result<Self, String> {
        let mut ledger = Ledger::default();
        for (number, line) in text.lines().enumerate() {
            let bad = || format!("ack log line {}: cannot parse {line:?}", number + 1);
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["put", table, key, version] => {
                    let version = version.parse().map_err(|_| bad())?;
                    let min = ledger.acked.entry(key_of(table, key)).or_insert(version);
                    *min = (*min).max(version);
                }
                ["del", table, key] => {
                    ledger.removed.insert(key_of(table, key));
                }
                ["deleting", table, key] => {
                    ledger.removing.insert(key_of(table, key));
                }
                ["batch", ops @ ..] => {
                    let ops: Vec<(bool, Key)> = ops
                        .iter()
                        .map(|op| {
                            let (insert, rest) = match op.split_at(1) {
                                ("+", rest) => (true, rest),
                                ("-", rest) => (false, rest),
                                _ => return Err(bad()),
                            };
                            let (table, key) = rest.split_once(':').ok_or_else(bad)?;
                            Ok((insert, key_of(table, key)))
                        })
                        .collect::<Result<_, _>>()?;
                    // A removal in a batch not yet acknowledged may or may not have happened.
                    for (insert, key) in &ops {
                        if !insert {
                            ledger.removing.insert(key.clone());
                        }
                    }
                    ledger.batches.push(ops);
                }
                _ => return Err(bad()),
            }
        }
        Ok(ledger)
    }
}

impl Ledger {
    /// The same ledger in one line per key (the raw log repeats hot keys thousands of times).
    fn compacted(&self) -> String {
        let mut text = String::new();
        for ((table, key), version) in &self.acked {
            text.push_str(&format!("put {table} {key} {version}\n"));
        }
        for (table, key) in &self.removed {
            text.push_str(&format!("del {table} {key}\n"));
        }
        for (table, key) in &self.removing {
            text.push_str(&format!("deleting {table} {key}\n"));
        }
        for ops in &self.batches {
            text.push_str("batch");
            for (insert, (table, key)) in ops {
                let op = if *insert { '+' } else { '-' };
                text.push_str(&format!(" {op}{table}:{key}"));
            }
            text.push('\n');
        }
        text
    }
}

fn key_of(table: &str, key: &str) -> Key {
    (table.to_owned(), key.to_owned())
}

fn verify(dir: &str, log: &str) -> ExitCode {
    let ledger = match std::fs::read_to_string(log)
        .map_err(|err| format!("cannot read {log}: {err}"))
        .and_then(|text| Ledger::parse(&text))
    {
        Ok(ledger) => ledger,
        Err(why) => {
            eprintln!("meta-crash-child: {why}");
            return ExitCode::from(2);
        }
    };
    let store = match RedbStore::open(dir) {
        Ok(store) => store,
        Err(err) => {
            println!(
                "OPEN FAILED {err}: {}",
                std::error::Error::source(&err).map_or(String::new(), |s| s.to_string())
            );
            return ExitCode::from(2);
        }
    };
    let mut problems = Vec::new();

    // One pass over every table: every value present, acknowledged or not, must be whole.
    let mut stored: HashMap<Key, u64> = HashMap::new();
    let mut tables = Vec::new();
    for name in ["ac", "blobs"] {
        let table = store.table(name).unwrap();
        for entry in table.scan_prefix(b"") {
            match entry {
                Ok((key, bytes)) => {
                    let key = String::from_utf8_lossy(&key).into_owned();
                    let version = version_of(name, &key, &bytes).unwrap_or_else(|why| {
                        problems.push(format!("CORRUPT {name} {key}: {why}"));
                        u64::MAX
                    });
                    stored.insert(key_of(name, &key), version);
                }
                Err(err) => problems.push(format!("SCAN FAILED {name}: {err}")),
            }
        }
        tables.push((name, table));
    }
    let scanned = stored.len();

    let mut checked = 0u64;
    for (key, &min_version) in &ledger.acked {
        if ledger.removed.contains(key) {
            continue;
        }
        checked += 1;
        match stored.get(key) {
            Some(&version) if version >= min_version => {}
            Some(version) => problems.push(format!(
                "STALE {} {}: holds version {version}, version {min_version} was acknowledged",
                key.0, key.1
            )),
            None if ledger.removing.contains(key) => {} // removal not acknowledged, may be done
            None => problems.push(format!(
                "LOST {} {}: acknowledged at version {min_version}, absent after reopen",
                key.0, key.1
            )),
        }
    }
    for key in &ledger.removed {
        checked += 1;
        if stored.contains_key(key) {
            problems.push(format!(
                "RESURRECTED {} {}: removal was acknowledged",
                key.0, key.1
            ));
        }
    }
    for ops in &ledger.batches {
        let applied: Vec<bool> = ops
            .iter()
            .map(|(insert, key)| stored.contains_key(key) == *insert)
            .collect();
        if applied.iter().any(|&a| a) && !applied.iter().all(|&a| a) {
            let ops: Vec<String> = ops
                .iter()
                .zip(&applied)
                .map(|((insert, (table, key)), applied)| {
                    let op = if *insert { '+' } else { '-' };
                    format!("{op}{table}:{key} applied={applied}")
                })
                .collect();
            problems.push(format!("TORN BATCH {}", ops.join(" ")));
        }
    }
    // Point reads must agree with the scan (a sample; the scan already read everything).
    for (name, table) in &tables {
        for (table_name, key) in ledger.acked.keys().filter(|(t, _)| t == name).take(256) {
            let read = match table.get(key.as_bytes()) {
                Ok(value) => value.map(|bytes| version_of(name, key, &bytes).unwrap_or(u64::MAX)),
                Err(err) => {
                    problems.push(format!("READ FAILED {table_name} {key}: {err}"));
                    continue;
                }
            };
            let scan = stored.get(&key_of(name, key)).copied();
            if read != scan {
                problems.push(format!(
                    "INCONSISTENT {table_name} {key}: get says {read:?}, scan says {scan:?}"
                ));
            }
        }
    }

    if problems.is_empty() {
        // Rewrite the log compacted, atomically, so the next verification reads less.
        let tmp = format!("{log}.tmp");
        if let Err(err) =
            std::fs::write(&tmp, ledger.compacted()).and_then(|()| std::fs::rename(&tmp, log))
        {
            eprintln!("meta-crash-child: cannot compact {log}: {err}");
            return ExitCode::from(2);
        }
        println!(
            "verified acked_keys={checked} batches={} scanned={scanned}",
            ledger.batches.len()
        );
        ExitCode::SUCCESS
    } else {
        problems.sort();
        problems.dedup();
        for problem in problems.iter().take(50) {
            println!("{problem}");
        }
        println!("{} problems", problems.len());
        ExitCode::from(1)
    }
}

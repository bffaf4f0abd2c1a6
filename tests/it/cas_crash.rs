//! Crash safety of the CAS and the ActionCache through the real gRPC services (issue 9;
//! DESIGN.md §3: after a process crash everything acknowledged is still served).
//!
//! The test is the client, the child a real `tessera coordinator` on one data directory kept
//! across all cycles. Several uploaders send blobs (empty to a few hundred KiB, so ByteStream
//! uploads past the in-memory limit stream to a temporary file; random and compressible, so
//! both raw and zstd files occur at rest; SHA-256 and BLAKE3; through BatchUpdateBlobs and
//! ByteStream Write, raw and zstd on the wire) and ActionCache entries whose outputs are blobs
//! uploaded before, in this cycle or an earlier one. Each is recorded as acknowledged only
//! once its RPC returned OK. The coordinator is SIGKILLed at a random moment: during its
//! start-up (store open, reconciliation of index and files) or mid-upload. After each kill a
//! fresh coordinator reopens the directory and [`verify`] checks what was acknowledged:
//! FindMissingBlobs for every blob, a read-back with the digest checked for the blobs
//! acknowledged since the last check, GetActionResult for the entries likewise; every
//! [`FULL_CHECK_EVERY`] cycles and at the end, everything is read back and asked for.
//!
//! The broken variant damages the store on purpose (deletes and corrupts acknowledged blob
//! files while the coordinator is down) and checks that the same verifier reports exactly that
//! damage, so a passing crash run means something.
//!
//! `TESSERA_CAS_CRASH_CYCLES` (default [`DEFAULT_CYCLES`]) and `TESSERA_CAS_CRASH_SEED` make
//! longer or repeated runs; `TESSERA_CAS_CRASH_TRACE=1` prints every cycle. The seed is
//! printed; on failure the data directory is kept.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt as _;
use nix::sys::signal::Signal;
use tessera_cas::client::{CasClient, ClientError};
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::store::codec;
use tessera_proto::reapi::action_cache_client::ActionCacheClient;
use tessera_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use tessera_proto::reapi::{
    ActionResult, BatchReadBlobsRequest, GetActionResultRequest, OutputFile,
    UpdateActionResultRequest, compressor,
};
use tessera_tests::{ServerProcess, blob_file, free_port, lines, noise};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const DEFAULT_CYCLES: u64 = 200;
/// Every this many cycles every acknowledged blob is read back and every entry asked for.
const FULL_CHECK_EVERY: u64 = 25;
/// Concurrent uploaders per cycle.
const UPLOADERS: usize = 3;
const FUNCTIONS: [DigestFunction; 2] = [DigestFunction::Sha256, DigestFunction::Blake3];
/// Blobs up to this size are read back with BatchReadBlobs, larger ones with ByteStream.
const BATCH_READ_MAX: u64 = 64 * 1024;
/// Bytes asked for in one BatchReadBlobs call.
const BATCH_READ_BYTES: u64 = 2 * 1024 * 1024;
/// Generous: a debug coordinator on a loaded 2-core machine can be slow to open a large store.
const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_blobs_and_action_results_survive_repeated_sigkill() {
    let cycles = env_u64("TESSERA_CAS_CRASH_CYCLES").unwrap_or(DEFAULT_CYCLES);
    let seed = env_u64("TESSERA_CAS_CRASH_SEED").unwrap_or_else(fresh_seed);
    let dir = tempfile::Builder::new()
        .prefix("tessera-cas-crash")
        .tempdir()
        .unwrap();
    eprintln!(
        "cas crash test: seed {seed}, data in {}",
        dir.path().display()
    );
    let started = Instant::now();
    let outcome = AssertUnwindSafe(run_cycles(&dir.path().join("data"), cycles, seed))
        .catch_unwind()
        .await;
    match outcome {
        Ok(Ok(totals)) => println!(
            "cas crash test: {} kills ({} during startup), {} blobs acknowledged ({:.1} MiB), \
             {} presence checks and {} digest-verified reads of them, 0 lost; {} action-cache \
             entries acknowledged, {} answers checked, 0 lost; {} full checks; {:.1} s, seed \
             {seed}",
            totals.kills,
            totals.startup_kills,
            totals.blobs,
            totals.bytes as f64 / f64::from(1 << 20),
            totals.asked,
            totals.read,
            totals.entries,
            totals.entries_asked,
            totals.full_checks,
            started.elapsed().as_secs_f64(),
        ),
        Ok(Err(failure)) => {
            let kept = dir.keep();
            panic!(
                "{failure}\nseed {seed} (rerun with TESSERA_CAS_CRASH_SEED={seed}); data kept \
                 in {}",
                kept.display()
            );
        }
        Err(panic) => {
            let kept = dir.keep();
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!(
                "{why}\nseed {seed} (rerun with TESSERA_CAS_CRASH_SEED={seed}); data kept in {}",
                kept.display()
            );
        }
    }
}

/// The broken variant: the verifier is not vacuous. Blob files are deleted and corrupted while
/// the coordinator is down; the verifier must report exactly those blobs lost (a corrupt one
/// unreadable or missing, never served), and exactly the entries that needed a deleted blob
/// as no longer answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crash_verifier_reports_deleted_and_corrupted_blobs_as_lost() {
    let seed = env_u64("TESSERA_CAS_CRASH_SEED").unwrap_or_else(fresh_seed);
    eprintln!("seed {seed} (TESSERA_CAS_CRASH_SEED)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));

    let mut server = spawn_coordinator(addr, &data, "coordinator");
    wait_listening(&server).await.unwrap();
    let endpoint = server.endpoint();
    let mut ledger = Ledger::default();
    // A second round, so some entries point at blobs of the first.
    for round in 0..2 {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..UPLOADERS {
            let uploader = Uploader::connect(&endpoint, rng.fork(), &ledger, Some(40))
                .await
                .unwrap();
            tasks.push(tokio::spawn(uploader.run(Arc::clone(&stop))));
        }
        for task in tasks {
            let done = task.await.unwrap();
            if let Some((_, why)) = &done.refused {
                panic!("an upload was refused: {why}");
            }
            ledger.record(round, done);
        }
    }
    // Stopped cleanly: this variant is about the verifier, not about crashes.
    let status = server
        .signal_and_wait(Signal::SIGTERM, PATIENCE)
        .expect("the coordinator stops on SIGTERM");
    assert!(status.success(), "coordinator exit: {status}");

    let damage = sabotage(&data, &ledger, &mut rng);
    let names = |ds: &[Digest]| ds.iter().map(Digest::to_string).collect::<Vec<_>>();
    eprintln!(
        "deleted {:?}, corrupted {:?}, entries that lose an output: {}",
        names(&damage.deleted),
        names(&damage.corrupted),
        damage.orphaned.len()
    );

    let server = spawn_coordinator(addr, &data, "coordinator");
    wait_listening(&server).await.unwrap();
    let report = verify(
        &server.endpoint(),
        Check {
            present: &ledger.blobs,
            read: &ledger.blobs,
            entries: &ledger.entries,
        },
        &mut rng,
    )
    .await
    .unwrap();

    let wrong: Vec<_> = report
        .lost
        .iter()
        .filter(|(_, loss)| matches!(loss, Loss::WrongBytes(_)))
        .collect();
    assert!(
        wrong.is_empty(),
        "wrong bytes served: {}",
        report.describe(&ledger, &data)
    );
    let expected: BTreeSet<Digest> = damage
        .deleted
        .iter()
        .chain(&damage.corrupted)
        .copied()
        .collect();
    let reported: BTreeSet<Digest> = report.lost.keys().copied().collect();
    assert_eq!(
        reported,
        expected,
        "the verifier must report exactly the damaged blobs: {}",
        report.describe(&ledger, &data)
    );
    let answered_lost: BTreeSet<Digest> = report.entries_lost.iter().map(|(a, _)| *a).collect();
    assert_eq!(
        answered_lost,
        damage.orphaned,
        "exactly the entries that lost an output must go unanswered: {}",
        report.describe(&ledger, &data)
    );
    for (action, loss) in &report.entries_lost {
        assert!(
            matches!(loss, EntryLoss::NotFound),
            "{action}: {loss}, expected NOT_FOUND"
        );
    }
    assert_eq!(report.read, ledger.blobs.len() - damage.deleted.len());
}

/// What [`sabotage`] did.
struct Damage {
    deleted: Vec<Digest>,
    corrupted: Vec<Digest>,
    /// Entries with a deleted output.
    orphaned: BTreeSet<Digest>,
}

/// Deletes an output of one entry and two blobs no entry needs (one raw, one zstd at rest),
/// and flips a byte in two raw files no entry needs (one read back in a batch, one through
/// ByteStream).
fn sabotage(data: &Path, ledger: &Ledger, rng: &mut Rng) -> Damage {
    let referenced: HashSet<Digest> = ledger.entries.iter().flat_map(AcEntry::outputs).collect();
    let file = |d: &Digest| blob_file(data, d);
    let is_zst = |d: &Digest| file(d).is_some_and(|p| p.extension().is_some_and(|x| x == "zst"));
    let free: Vec<Digest> = ledger
        .blobs
        .iter()
        .filter(|d| d.size_bytes > 0 && !referenced.contains(d) && file(d).is_some())
        .copied()
        .collect();
    let pick = |rng: &mut Rng, what: &str, taken: &[Digest], ok: &dyn Fn(&Digest) -> bool| {
        let fits: Vec<Digest> = free
            .iter()
            .filter(|d| ok(d) && !taken.contains(d))
            .copied()
            .collect();
        *rng.pick(&fits)
            .unwrap_or_else(|| panic!("the workload left no {what} to damage"))
    };

    // An output kept as a file (blobs up to 16 KiB live in the metadata store).
    let kept_as_file = |d: &Digest| d.size_bytes > 0 && file(d).is_some();
    let with_file: Vec<&AcEntry> = ledger
        .entries
        .iter()
        .filter(|e| e.outputs().iter().any(kept_as_file))
        .collect();
    let entry = *rng
        .pick(&with_file)
        .expect("an acknowledged entry with an output kept as a file");
    let output = *entry
        .outputs()
        .iter()
        .find(|d| kept_as_file(d))
        .expect("an entry with an output kept as a file");
    let mut deleted = vec![output];
    deleted.push(pick(rng, "raw blob", &deleted, &|d| !is_zst(d)));
    deleted.push(pick(rng, "zstd blob", &deleted, &|d| is_zst(d)));
    for d in &deleted {
        std::fs::remove_file(file(d).expect("blob file")).unwrap();
    }
    let mut corrupted = Vec::new();
    let small = pick(rng, "small raw blob", &deleted, &|d| {
        !is_zst(d) && d.size_bytes <= BATCH_READ_MAX
    });
    corrupted.push(small);
    let large = pick(rng, "large raw blob", &deleted, &|d| {
        !is_zst(d) && d.size_bytes > BATCH_READ_MAX
    });
    corrupted.push(large);
    for d in &corrupted {
        let path = file(d).expect("blob file");
        let mut bytes = std::fs::read(&path).unwrap();
        let at = usize::try_from(rng.below(bytes.len() as u64)).unwrap();
        bytes[at] ^= 0x5a;
        std::fs::write(&path, bytes).unwrap();
    }
    let orphaned = ledger
        .entries
        .iter()
        .filter(|e| e.outputs().iter().any(|d| deleted.contains(d)))
        .map(|e| e.action)
        .collect();
    Damage {
        deleted,
        corrupted,
        orphaned,
    }
}

#[derive(Default)]
struct Totals {
    kills: u64,
    startup_kills: u64,
    blobs: usize,
    bytes: u64,
    entries: usize,
    asked: usize,
    read: usize,
    entries_asked: usize,
    full_checks: u64,
}

/// When to kill the coordinator.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// This long after spawning it: lands in process start, store open or reconciliation.
    AfterSpawn(Duration),
    /// This long after the uploaders started: lands mid-upload, mid-rename, mid-flush.
    MidUpload(Duration),
}

/// `startup` is how long the coordinator has lately taken to listen, so that kills timed from
/// the spawn land anywhere in its start-up.
fn pick_kill(rng: &mut Rng, startup: Duration) -> KillAt {
    let startup = u64::try_from(startup.as_micros())
        .unwrap_or(u64::MAX)
        .max(1_000);
    let micros = Duration::from_micros;
    match rng.below(100) {
        0..20 => KillAt::AfterSpawn(micros(rng.below(startup + startup / 4))),
        20..40 => KillAt::MidUpload(micros(rng.below(5_000))),
        40..85 => KillAt::MidUpload(micros(rng.below(80_000))),
        _ => KillAt::MidUpload(micros(rng.below(300_000))),
    }
}

async fn run_cycles(data: &Path, cycles: u64, seed: u64) -> Result<Totals, String> {
    let trace = std::env::var_os("TESSERA_CAS_CRASH_TRACE").is_some();
    let mut rng = Rng(seed);
    // One address for every restart, as a real deployment has.
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut ledger = Ledger::default();
    let mut totals = Totals::default();
    let mut startup = Duration::from_millis(40);
    let mut last_full = 0;

    for cycle in 0..cycles {
        let kill_at = pick_kill(&mut rng, startup);
        let context = |what: String| format!("cycle {cycle} (kill {kill_at:?}): {what}");
        let mut server = spawn_coordinator(addr, data, &format!("coordinator#{cycle}"));
        let spawned = Instant::now();
        match kill_at {
            KillAt::AfterSpawn(delay) => {
                // Real time: the kill lands at a random moment of the start-up on purpose.
                tokio::time::sleep(delay).await;
                if let Some(status) = server.child.try_wait().unwrap() {
                    return Err(context(format!(
                        "the coordinator exited by itself: {status}"
                    )));
                }
                server.kill();
                if server.log.count(lines::COORDINATOR_LISTENING) == 0 {
                    totals.startup_kills += 1;
                }
                if trace {
                    eprintln!("cycle {cycle}: {kill_at:?}, startup {startup:?}");
                }
            }
            KillAt::MidUpload(delay) => {
                wait_listening(&server).await.map_err(context)?;
                startup = (startup * 3 + spawned.elapsed()) / 4;
                let endpoint = server.endpoint();
                let full = cycle >= last_full + FULL_CHECK_EVERY;
                if full {
                    last_full = cycle;
                }
                let checked = Instant::now();
                check(&endpoint, data, &mut ledger, full, &mut rng, &mut totals)
                    .await
                    .map_err(context)?;
                let checked = checked.elapsed();

                let stop = Arc::new(AtomicBool::new(false));
                let mut tasks = Vec::new();
                for _ in 0..UPLOADERS {
                    let uploader = Uploader::connect(&endpoint, rng.fork(), &ledger, None)
                        .await
                        .map_err(context)?;
                    tasks.push(tokio::spawn(uploader.run(Arc::clone(&stop))));
                }
                // Real time: the kill lands wherever the uploads are, on purpose.
                tokio::time::sleep(delay).await;
                let killed_at = Instant::now();
                if let Some(status) = server.child.try_wait().unwrap() {
                    return Err(context(format!(
                        "the coordinator exited by itself: {status}"
                    )));
                }
                server.kill();
                stop.store(true, Ordering::Relaxed);
                let before = (ledger.blobs.len(), ledger.entries.len());
                for task in tasks {
                    let done = task.await.map_err(|e| context(format!("uploader: {e}")))?;
                    if let Some((when, why)) = &done.refused
                        && *when < killed_at
                    {
                        return Err(context(format!(
                            "an upload was refused while the coordinator ran: {why}"
                        )));
                    }
                    ledger.record(cycle, done);
                }
                if trace {
                    eprintln!(
                        "cycle {cycle}: {kill_at:?}, startup {startup:?}, check{} {checked:?}, \
                         +{} blobs +{} entries",
                        if full { " (full)" } else { "" },
                        ledger.blobs.len() - before.0,
                        ledger.entries.len() - before.1
                    );
                }
            }
        }
        totals.kills += 1;
    }

    // The last reopen: everything once more, then a clean stop.
    let mut server = spawn_coordinator(addr, data, "coordinator#last");
    wait_listening(&server).await?;
    check(
        &server.endpoint(),
        data,
        &mut ledger,
        true,
        &mut rng,
        &mut totals,
    )
    .await
    .map_err(|e| format!("after the last kill: {e}"))?;
    let status = server.signal_and_wait(Signal::SIGTERM, PATIENCE);
    if !status.is_some_and(|s| s.success()) {
        return Err(format!(
            "the last coordinator did not stop cleanly: {status:?}"
        ));
    }
    if ledger.blobs.is_empty() || ledger.entries.is_empty() {
        return Err("nothing was ever acknowledged; the test proved nothing".into());
    }
    totals.blobs = ledger.blobs.len();
    totals.bytes = ledger.bytes;
    totals.entries = ledger.entries.len();
    Ok(totals)
}

/// Verifies the ledger against the running coordinator: every blob's presence, and a read-back
/// of the blobs and entries acknowledged since the last check (of all if `full`).
async fn check(
    endpoint: &str,
    data: &Path,
    ledger: &mut Ledger,
    full: bool,
    rng: &mut Rng,
    totals: &mut Totals,
) -> Result<(), String> {
    let (read_from, entries_from) = if full {
        (0, 0)
    } else {
        (ledger.blobs_read, ledger.entries_asked)
    };
    let report = verify(
        endpoint,
        Check {
            present: &ledger.blobs,
            read: &ledger.blobs[read_from..],
            entries: &ledger.entries[entries_from..],
        },
        rng,
    )
    .await?;
    totals.asked += report.asked;
    totals.read += report.read;
    totals.entries_asked += report.entries_asked;
    totals.full_checks += u64::from(full);
    if !report.lost.is_empty() || !report.entries_lost.is_empty() {
        return Err(report.describe(ledger, data));
    }
    ledger.blobs_read = ledger.blobs.len();
    ledger.entries_asked = ledger.entries.len();
    Ok(())
}

/// Starts `tessera coordinator` without waiting for it, so that it can be killed in its
/// start-up.
fn spawn_coordinator(addr: SocketAddr, data: &Path, label: &str) -> ServerProcess {
    ServerProcess::spawn(addr, data, &[], &[], label)
}

/// Waits until the coordinator listens; its log's tail if it exits or stalls first.
async fn wait_listening(server: &ServerProcess) -> Result<(), String> {
    let log = server.log.clone();
    tokio::spawn(async move { log.wait_for(lines::COORDINATOR_LISTENING, PATIENCE).await })
        .await
        .map(drop)
        .map_err(|e| match e.try_into_panic() {
            Ok(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "the coordinator did not start".into()),
            Err(e) => e.to_string(),
        })
}

/// An ActionCache entry as it was acknowledged.
#[derive(Debug, Clone)]
struct AcEntry {
    instance: String,
    action: Digest,
    result: ActionResult,
}

impl AcEntry {
    /// The blobs the entry needs.
    fn outputs(&self) -> Vec<Digest> {
        let function = self.action.function;
        let parse = |d: &tessera_proto::reapi::Digest| Digest::from_proto(function, d).unwrap();
        self.result
            .output_files
            .iter()
            .filter_map(|f| f.digest.as_ref())
            .chain(self.result.stdout_digest.as_ref())
            .chain(self.result.stderr_digest.as_ref())
            .map(parse)
            .collect()
    }
}

/// Everything acknowledged so far, in order.
#[derive(Default)]
struct Ledger {
    blobs: Vec<Digest>,
    /// The cycle each blob was first acknowledged in.
    acked_in: HashMap<Digest, u64>,
    bytes: u64,
    entries: Vec<AcEntry>,
    /// `blobs[..blobs_read]` were read back at least once.
    blobs_read: usize,
    /// `entries[..entries_asked]` were asked for at least once.
    entries_asked: usize,
}

impl Ledger {
    fn record(&mut self, cycle: u64, done: Uploaded) {
        for digest in done.blobs {
            if self.acked_in.insert(digest, cycle).is_none() {
                self.blobs.push(digest);
                self.bytes += digest.size_bytes;
            }
        }
        self.entries.extend(done.entries);
    }

    /// Up to `n` acknowledged blobs of `function`, for entries to point at.
    fn sample(&self, function: DigestFunction, n: usize, rng: &mut Rng) -> Vec<Digest> {
        let all: Vec<Digest> = self
            .blobs
            .iter()
            .filter(|d| d.function == function)
            .copied()
            .collect();
        (0..n.min(all.len()))
            .filter_map(|_| rng.pick(&all).copied())
            .collect()
    }
}

/// What one uploader got acknowledged.
#[derive(Default)]
struct Uploaded {
    blobs: Vec<Digest>,
    entries: Vec<AcEntry>,
    /// When and why its first refused call failed (it stops there).
    refused: Option<(Instant, String)>,
}

/// One client uploading blobs and entries until told to stop or until a call fails.
struct Uploader {
    rng: Rng,
    /// One per [`FUNCTIONS`].
    cas: Vec<CasClient>,
    ac: ActionCacheClient<Channel>,
    /// Acknowledged blobs an entry may point at, per [`FUNCTIONS`].
    outputs: Vec<Vec<Digest>>,
    /// How many operations are left, if limited.
    ops_left: Option<u64>,
}

impl Uploader {
    async fn connect(
        endpoint: &str,
        mut rng: Rng,
        ledger: &Ledger,
        ops: Option<u64>,
    ) -> Result<Self, String> {
        let channel = connect(endpoint).await?;
        let mut cas = Vec::new();
        let mut outputs = Vec::new();
        for function in FUNCTIONS {
            cas.push(
                CasClient::from_channel(channel.clone(), "", function)
                    .await
                    .map_err(|e| e.to_string())?,
            );
            outputs.push(ledger.sample(function, 16, &mut rng));
        }
        Ok(Uploader {
            rng,
            cas,
            ac: ActionCacheClient::new(channel),
            outputs,
            ops_left: ops,
        })
    }

    async fn run(mut self, stop: Arc<AtomicBool>) -> Uploaded {
        let mut done = Uploaded::default();
        while !stop.load(Ordering::Relaxed) && self.ops_left != Some(0) {
            if let Some(left) = &mut self.ops_left {
                *left -= 1;
            }
            if let Err(why) = self.one(&mut done).await {
                done.refused = Some((Instant::now(), why));
                break;
            }
        }
        done
    }

    /// One call: a batch of small blobs, one blob through ByteStream, or an entry.
    async fn one(&mut self, done: &mut Uploaded) -> Result<(), String> {
        let which = usize::try_from(self.rng.below(2)).unwrap();
        let function = FUNCTIONS[which];
        let compress = self.rng.percent(30);
        match self.rng.below(100) {
            80.. if !self.outputs[which].is_empty() => {
                let entry = self.entry(which);
                self.ac
                    .update_action_result(UpdateActionResultRequest {
                        instance_name: entry.instance.clone(),
                        action_digest: Some(entry.action.to_proto()),
                        action_result: Some(entry.result.clone()),
                        results_cache_policy: None,
                        digest_function: function.to_proto(),
                    })
                    .await
                    .map_err(|s| format!("UpdateActionResult {}: {s}", entry.action))?;
                done.entries.push(entry);
            }
            45.. => {
                let size = if self.rng.percent(50) {
                    Size::Large
                } else {
                    Size::Small
                };
                let data = blob(&mut self.rng, size);
                let digest = function.digest_of(&data);
                self.cas[which]
                    .write(&digest, data, compress)
                    .await
                    .map_err(|e| e.to_string())?;
                self.acknowledged(which, digest, done);
            }
            _ => {
                let count = self.rng.between(1, 6);
                let blobs: Vec<(Digest, Bytes)> = (0..count)
                    .map(|_| {
                        let size = if self.rng.percent(50) {
                            Size::Tiny
                        } else {
                            Size::Small
                        };
                        let data = blob(&mut self.rng, size);
                        (function.digest_of(&data), data)
                    })
                    .collect();
                let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
                self.cas[which]
                    .batch_update(blobs, compress)
                    .await
                    .map_err(|e| e.to_string())?;
                for digest in digests {
                    self.acknowledged(which, digest, done);
                }
            }
        }
        Ok(())
    }

    fn acknowledged(&mut self, which: usize, digest: Digest, done: &mut Uploaded) {
        self.outputs[which].push(digest);
        done.blobs.push(digest);
    }

    /// An entry for a fresh action whose outputs, stdout and stderr are acknowledged blobs.
    fn entry(&mut self, which: usize) -> AcEntry {
        let function = FUNCTIONS[which];
        let rng = &mut self.rng;
        let outputs = &self.outputs[which];
        let pick = |rng: &mut Rng| rng.pick(outputs).expect("an output").to_proto();
        let output_files = (0..rng.between(1, 3))
            .map(|i| OutputFile {
                path: format!("out/file{i}"),
                digest: Some(pick(rng)),
                is_executable: rng.percent(20),
                ..Default::default()
            })
            .collect();
        let stdout_digest = Some(pick(rng));
        let stderr_digest = rng.percent(50).then(|| pick(rng));
        let action = function.digest_of(&rng.next().to_le_bytes());
        AcEntry {
            instance: if rng.percent(30) { "crash" } else { "" }.to_owned(),
            action,
            result: ActionResult {
                output_files,
                stdout_digest,
                stderr_digest,
                exit_code: 0,
                ..Default::default()
            },
        }
    }
}

/// What to verify: the presence of `present`, the contents of `read`, the answers for
/// `entries`.
struct Check<'a> {
    present: &'a [Digest],
    read: &'a [Digest],
    entries: &'a [AcEntry],
}

/// How an acknowledged blob was lost.
#[derive(Debug)]
enum Loss {
    /// FindMissingBlobs reported it missing.
    Missing,
    /// Reading it failed (the server refused to serve it).
    Unreadable(String),
    /// The server served bytes that do not match the digest: the worst case.
    WrongBytes(String),
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Loss::Missing => write!(f, "reported missing"),
            Loss::Unreadable(why) => write!(f, "unreadable: {why}"),
            Loss::WrongBytes(why) => write!(f, "served with wrong bytes: {why}"),
        }
    }
}

/// How an acknowledged entry was lost.
#[derive(Debug)]
enum EntryLoss {
    /// GetActionResult answered NOT_FOUND.
    NotFound,
    /// It answered another result.
    Different,
    /// It failed otherwise.
    Failed(String),
}

impl std::fmt::Display for EntryLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntryLoss::NotFound => write!(f, "not found"),
            EntryLoss::Different => write!(f, "answered with another result"),
            EntryLoss::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// What [`verify`] found.
#[derive(Default)]
struct Report {
    asked: usize,
    read: usize,
    lost: BTreeMap<Digest, Loss>,
    entries_asked: usize,
    entries_lost: Vec<(Digest, EntryLoss)>,
}

impl Report {
    /// The losses, counted by kind, with the first few in detail.
    fn describe(&self, ledger: &Ledger, data: &Path) -> String {
        let (mut missing, mut unreadable, mut wrong) = (0, 0, 0);
        for loss in self.lost.values() {
            match loss {
                Loss::Missing => missing += 1,
                Loss::Unreadable(_) => unreadable += 1,
                Loss::WrongBytes(_) => wrong += 1,
            }
        }
        let mut out = format!(
            "{} of {} acknowledged blobs lost ({missing} reported missing by FindMissingBlobs, \
             {unreadable} unreadable, {wrong} served with wrong bytes; {} read back); {} of {} \
             acknowledged action-cache entries asked for not answered",
            self.lost.len(),
            self.asked,
            self.read,
            self.entries_lost.len(),
            self.entries_asked,
        );
        for (digest, loss) in self.lost.iter().take(10) {
            let file = blob_file(data, digest)
                .map_or_else(|| "no file".to_owned(), |p| p.display().to_string());
            let cycle = ledger.acked_in.get(digest).copied().unwrap_or_default();
            write!(
                out,
                "\n  {digest} acknowledged in cycle {cycle}: {loss} ({file})"
            )
            .unwrap();
        }
        for (action, loss) in self.entries_lost.iter().take(10) {
            write!(out, "\n  entry {action}: {loss}").unwrap();
        }
        out
    }
}

/// Checks `check` against the coordinator at `endpoint`. An error means the check itself
/// could not run (the coordinator unreachable); losses are in the report.
async fn verify(endpoint: &str, check: Check<'_>, rng: &mut Rng) -> Result<Report, String> {
    let channel = connect(endpoint).await?;
    let mut report = Report::default();
    let limit = 64 * 1024 * 1024;
    let mut raw = ContentAddressableStorageClient::new(channel.clone())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    for function in FUNCTIONS {
        let cas = CasClient::from_channel(channel.clone(), "", function)
            .await
            .map_err(|e| e.to_string())?;
        let present: Vec<Digest> = check
            .present
            .iter()
            .filter(|d| d.function == function)
            .copied()
            .collect();
        report.asked += present.len();
        for digest in cas
            .find_missing(&present)
            .await
            .map_err(|e| e.to_string())?
        {
            report.lost.insert(digest, Loss::Missing);
        }
        let (small, large): (Vec<Digest>, Vec<Digest>) = check
            .read
            .iter()
            .filter(|d| d.function == function && !report.lost.contains_key(d))
            .partition(|d| d.size_bytes <= BATCH_READ_MAX);
        for batch in by_bytes(&small, BATCH_READ_BYTES) {
            let zstd = rng.percent(50);
            let response = raw
                .batch_read_blobs(BatchReadBlobsRequest {
                    instance_name: String::new(),
                    digests: batch.iter().map(Digest::to_proto).collect(),
                    acceptable_compressors: if zstd {
                        vec![compressor::Value::Zstd as i32]
                    } else {
                        Vec::new()
                    },
                    digest_function: function.to_proto(),
                })
                .await
                .map_err(|s| format!("BatchReadBlobs failed: {s}"))?
                .into_inner();
            let mut unanswered: HashSet<Digest> = batch.iter().copied().collect();
            for entry in response.responses {
                let digest = entry
                    .digest
                    .as_ref()
                    .and_then(|d| Digest::from_proto(function, d).ok())
                    .ok_or("BatchReadBlobs answered without a valid digest")?;
                if !unanswered.remove(&digest) {
                    return Err(format!("BatchReadBlobs answered {digest} unasked or twice"));
                }
                report.read += 1;
                let status = entry.status.unwrap_or_default();
                if status.code != 0 {
                    let code = Code::from(status.code);
                    let why = format!("BatchReadBlobs: {code:?} {}", status.message);
                    report.lost.insert(digest, Loss::Unreadable(why));
                    continue;
                }
                let bytes = if entry.compressor == compressor::Value::Zstd as i32 {
                    match codec::decompress(&entry.data, digest.size_bytes) {
                        Ok(bytes) => Bytes::from(bytes),
                        Err(e) => {
                            let why = format!("BatchReadBlobs: undecodable zstd: {e}");
                            report.lost.insert(digest, Loss::WrongBytes(why));
                            continue;
                        }
                    }
                } else {
                    entry.data
                };
                if let Err(e) = digest.verify(&bytes) {
                    let why = format!("BatchReadBlobs: {e}");
                    report.lost.insert(digest, Loss::WrongBytes(why));
                }
            }
            for digest in unanswered {
                let why = "BatchReadBlobs left it out".to_owned();
                report.lost.insert(digest, Loss::Unreadable(why));
            }
        }
        for digest in large {
            report.read += 1;
            match cas.read(&digest, rng.percent(50)).await {
                Ok(_) => {}
                // The stream ended OK and the bytes are wrong.
                Err(ClientError::Mismatch(e)) => {
                    let why = format!("ByteStream.Read: {e}");
                    report.lost.insert(digest, Loss::WrongBytes(why));
                }
                Err(e) => {
                    report.lost.insert(digest, Loss::Unreadable(e.to_string()));
                }
            }
        }
    }

    let mut ac = ActionCacheClient::new(channel);
    for entry in check.entries {
        report.entries_asked += 1;
        let answer = ac
            .get_action_result(GetActionResultRequest {
                instance_name: entry.instance.clone(),
                action_digest: Some(entry.action.to_proto()),
                digest_function: entry.action.function.to_proto(),
                ..Default::default()
            })
            .await;
        let loss = match answer {
            Ok(result) if result.get_ref() == &entry.result => continue,
            Ok(_) => EntryLoss::Different,
            Err(status) if status.code() == Code::NotFound => EntryLoss::NotFound,
            Err(status) => EntryLoss::Failed(status.to_string()),
        };
        report.entries_lost.push((entry.action, loss));
    }
    Ok(report)
}

/// `digests` in groups of at most `limit` bytes (a larger blob alone).
fn by_bytes(digests: &[Digest], limit: u64) -> Vec<Vec<Digest>> {
    let mut groups: Vec<Vec<Digest>> = Vec::new();
    let mut bytes = 0;
    for digest in digests {
        match groups.last_mut() {
            Some(group) if bytes + digest.size_bytes <= limit => group.push(*digest),
            _ => {
                groups.push(vec![*digest]);
                bytes = 0;
            }
        }
        bytes += digest.size_bytes;
    }
    groups
}

async fn connect(endpoint: &str) -> Result<Channel, String> {
    Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .initial_connection_window_size(32 * 1024 * 1024)
        .initial_stream_window_size(16 * 1024 * 1024)
        .connect()
        .await
        .map_err(|e| format!("failed to connect to {endpoint}: {e}"))
}

/// Size classes of generated blobs.
#[derive(Clone, Copy)]
enum Size {
    /// 0 to 200 bytes: never compressed at rest.
    Tiny,
    /// 8 to 48 KiB: whole in memory on upload; up to 16 KiB kept inline in the metadata store,
    /// larger ones files (raw or, for text, zstd).
    Small,
    /// Past the 256 KiB a ByteStream upload holds in memory: streamed to a temporary file.
    Large,
}

/// A blob of `size`, half of them random (kept raw at rest), half text (kept zstd).
fn blob(rng: &mut Rng, size: Size) -> Bytes {
    let len = match size {
        Size::Tiny => rng.between(0, 200),
        Size::Small => rng.between(8 * 1024, 48 * 1024),
        Size::Large => rng.between(260 * 1024, 400 * 1024),
    };
    let len = usize::try_from(len).unwrap();
    let seed = rng.next();
    if rng.percent(50) {
        return noise(len, seed);
    }
    let mut text = Vec::with_capacity(len + 64);
    let mut line = 0u64;
    while text.len() < len {
        writeln!(text, "{seed:016x} log line {line}").unwrap();
        line += 1;
    }
    text.truncate(len);
    text.into()
}

/// SplitMix64: seedable, and enough to vary sizes, contents and timings.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (0 if `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// A value in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        let len = u64::try_from(items.len()).unwrap();
        items.get(usize::try_from(self.below(len)).unwrap())
    }

    /// An independent generator for a concurrent task.
    fn fork(&mut self) -> Rng {
        Rng(self.next())
    }
}

fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    Rng(nanos as u64 ^ u64::from(std::process::id())).next()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

//! `tessera-bench reopen`: how long the blob store takes to start with a large store, using the
//! real [`DiskStore`] over a real [`RedbStore`] in a temporary directory (no coordinator, no
//! gRPC: start-up is the store's own work).
//!
//! 1. Fill: writes the blobs (a mix of sizes, digest functions and compressibility; see
//!    [`Generator`]) from one writer per core, then closes the store cleanly. For context.
//! 2. Reopen after a clean close, every record present: the normal restart. Target: at most
//!    [`REOPEN_MAX_P50_MS`] for the median reopen, whatever the number of blobs.
//! 3. Reopen after the index was lost (the metadata store's directory deleted), so that every
//!    file is an un-indexed orphan the store must hash (decompressing `.zst` files) and adopt.
//!    Its rate in logical bytes per second must reach [`ADOPT_SHARE`] of the limit measured
//!    just before: this machine hashing the same files' contents on every core, from memory.
//!    Every blob must be adopted, and a sample is read back and compared with what was written.
//! 4. Reopen after adoption, records present again: held to the same target as 2.
//!
//! The page cache is warm throughout (the files were just written), so these are the store's
//! own costs; a start after a reboot also waits for the disk to deliver the directory entries
//! and, for adoption, the files.

use std::fs;
use std::hint::black_box;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use tempfile::TempDir;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::meta::{MetadataStore, RedbStore};
use tessera_cas::store::codec::{CodecError, StreamDecoder};
use tessera_cas::store::{BlobStore, DiskStore, DiskStoreOptions, StoreStats};

use crate::error::BenchError;
use crate::limits::mb_per_s;
use crate::report::{Check, Environment, Layout, Report, Row, Tail, number, percentile, thousands};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Largest median reopen (metadata store and blob store) allowed with records present, ms.
const REOPEN_MAX_P50_MS: f64 = 2_000.0;
/// Adoption must reach at least this share of the bare-work limit (the same files read,
/// decompressed and hashed on every core with nothing else done): the store's own work
/// (listing, the index, the records) may add at most a third to the time.
const ADOPT_SHARE: f64 = 0.75;

/// Smallest and largest size of a small blob (most of them).
const SMALL: (usize, usize) = (100, 16 * KIB);
/// Smallest and largest size of a large blob.
const LARGE: (usize, usize) = (64 * KIB, MIB);
/// One blob in this many is large.
const LARGE_ONE_IN: u32 = 20;
/// Blobs above this size are written as a streamed upload (as ByteStream writes them), the
/// others in one call (as BatchUpdateBlobs does). The disk store buffers uploads up to 256 KiB.
const STREAM_ABOVE: usize = 256 * KIB;
/// Bytes per piece of a streamed upload.
const UPLOAD_CHUNK: usize = 64 * KIB;
/// Words in the vocabulary compressible blobs are written in.
const VOCABULARY: usize = 512;
/// The contents are a function of this seed, so every run writes the same store.
const SEED: u64 = 0x7e55_e7a9_2024_0009;
/// Logical bytes loaded into memory at a time to measure the hash limits.
const LIMIT_BATCH_BYTES: u64 = 32 * MIB as u64;
/// Times each batch is hashed for the limits; the fastest counts, so the limit is what the
/// machine can do (which only ever makes the target harder to meet).
const LIMIT_RUNS: usize = 3;

/// What one `reopen` run does.
#[derive(Debug, Clone)]
pub(crate) struct ReopenPlan {
    /// The command line that selects this plan, for the report.
    pub command: String,
    /// Blobs the store is filled with.
    pub blobs: usize,
    /// Reopens timed with records present, each time (after the clean close and after
    /// adoption); the median is judged.
    pub reopen_runs: usize,
    /// Adoptions timed (each after deleting the metadata store); the median is judged.
    pub adopt_runs: usize,
    /// Blobs read back through the store after each adoption and compared with what was
    /// written.
    pub sample_reads: usize,
}

impl ReopenPlan {
    /// The benchmark the issue asks for: 100,000 blobs.
    pub(crate) fn full() -> Self {
        ReopenPlan {
            command: "cargo run --release -p tessera-bench -- reopen".to_owned(),
            blobs: 100_000,
            reopen_runs: 5,
            adopt_runs: 3,
            sample_reads: 1_000,
        }
    }

    /// A smoke run: 10,000 blobs, same targets.
    pub(crate) fn quick() -> Self {
        ReopenPlan {
            command: "cargo run --release -p tessera-bench -- reopen --quick".to_owned(),
            blobs: 10_000,
            reopen_runs: 3,
            adopt_runs: 1,
            sample_reads: 200,
        }
    }
}

/// Fills a store under `data_parent` (or the system temporary directory) and times reopening
/// it; the directory is deleted afterwards.
pub(crate) fn run(plan: &ReopenPlan, data_parent: Option<&Path>) -> Result<Report, BenchError> {
    if plan.blobs == 0 || plan.reopen_runs == 0 || plan.adopt_runs == 0 {
        return Err(BenchError::Unexpected(
            "the plan needs at least one blob, one reopen and one adoption".to_owned(),
        ));
    }
    let environment = Environment::here(&plan.command, data_parent);
    let dir = match data_parent {
        Some(parent) => tempfile::Builder::new()
            .prefix("tessera-bench-")
            .tempdir_in(parent),
        None => tempfile::Builder::new().prefix("tessera-bench-").tempdir(),
    }
    .map_err(|source| BenchError::Io {
        what: "create the data directory",
        source,
    })?;
    let bench = Bench::new(plan, &dir);
    let generator = Generator::new(SEED);

    progress(&format!(
        "filling a store with {} blobs",
        thousands(plan.blobs)
    ));
    let filled = bench.fill(&generator)?;

    progress("reopening after a clean close");
    let clean = bench.reopens(&filled)?;

    progress("measuring the hash limits over the same files");
    let limits = HashLimits::measure(&bench.store_dir().join("blobs"), bench.cores)?;
    if limits.files != plan.blobs {
        return Err(BenchError::Unexpected(format!(
            "{} blob files on disk after writing {} blobs",
            limits.files, plan.blobs
        )));
    }

    let mut adoptions = Vec::with_capacity(plan.adopt_runs);
    for run in 1..=plan.adopt_runs {
        progress(&format!(
            "reopening without an index ({run} of {})",
            plan.adopt_runs
        ));
        adoptions.push(bench.adopt(&filled, &generator)?);
    }

    progress("reopening after adoption");
    let adopted = bench.reopens(&filled)?;

    let rows = vec![
        filled.row(bench.cores),
        reopen_row("reopen after a clean close", plan, &clean),
        adopt_row(plan, &adoptions, &limits),
        reopen_row("reopen after adoption", plan, &adopted),
    ];
    let notes = notes(plan, &filled, &limits, &adoptions);
    drop(dir);
    Ok(Report {
        environment,
        layout: Layout::Execution,
        rows,
        notes,
    })
}

fn progress(message: &str) {
    eprintln!("tessera-bench: {message}");
}

/// Decimal gigabytes or megabytes, for byte totals.
fn bytes_label(bytes: u64) -> String {
    if bytes >= 1_000_000_000 {
        format!("{:.2} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

fn ms(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e3
}

/// A store call that failed: the benchmark cannot go on.
fn failed(what: &str, error: impl std::fmt::Display) -> BenchError {
    BenchError::Unexpected(format!("failed to {what}: {error}"))
}

/// The blob contents, a pure function of the seed and the blob's number, so that they can be
/// made again to check what the store reads back.
///
/// Blob `i`: one in [`LARGE_ONE_IN`] is large (64 KiB to 1 MiB), the others small (100 B to
/// 16 KiB), sizes log-uniform within their range (build outputs are mostly small, and their
/// bytes mostly in the few large ones); SHA-256 or BLAKE3 with equal odds; half are text-like
/// (words from a fixed vocabulary, which zstd shrinks about threefold, so blobs above 512 B are
/// kept compressed), half random bytes (kept raw). The first eight bytes are `i`, so no two
/// blobs are the same.
struct Generator {
    seed: u64,
    vocabulary: Vec<Vec<u8>>,
}

/// What [`Generator::blob`] made.
struct Blob {
    function: DigestFunction,
    data: Vec<u8>,
    compressible: bool,
}

impl Generator {
    fn new(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let vocabulary = (0..VOCABULARY)
            .map(|_| {
                let len = rng.random_range(2..=10);
                (0..len).map(|_| rng.random_range(b'a'..=b'z')).collect()
            })
            .collect();
        Generator { seed, vocabulary }
    }

    fn blob(&self, i: usize) -> Blob {
        let mut rng = SmallRng::seed_from_u64(self.seed.wrapping_add(i as u64 + 1));
        let (low, high) = if rng.random_ratio(1, LARGE_ONE_IN) {
            LARGE
        } else {
            SMALL
        };
        let size = log_uniform(&mut rng, low, high);
        let function = if rng.random_bool(0.5) {
            DigestFunction::Sha256
        } else {
            DigestFunction::Blake3
        };
        let compressible = rng.random_bool(0.5);
        let mut data = Vec::with_capacity(size + 16);
        data.extend_from_slice(&(i as u64).to_le_bytes());
        if compressible {
            while data.len() < size {
                let word = &self.vocabulary[rng.random_range(0..self.vocabulary.len())];
                data.extend_from_slice(word);
                data.push(if rng.random_ratio(1, 12) { b'\n' } else { b' ' });
            }
            data.truncate(size);
        } else {
            data.resize(size, 0);
            rng.fill_bytes(&mut data[8..]);
        }
        Blob {
            function,
            data,
            compressible,
        }
    }
}

/// A size in `low..=high` whose logarithm is uniform.
fn log_uniform(rng: &mut SmallRng, low: usize, high: usize) -> usize {
    let (low, high) = (low as f64, high as f64);
    let size = low * (high / low).powf(rng.random::<f64>());
    (size.round() as usize).clamp(low as usize, high as usize)
}

/// The store's directories and the machine's parallelism.
struct Bench<'a> {
    plan: &'a ReopenPlan,
    root: PathBuf,
    cores: usize,
}

/// What the fill wrote.
struct Filled {
    /// Blob `i`'s digest.
    digests: Vec<Digest>,
    /// The store's figures after the fill.
    stats: StoreStats,
    /// Wall time of the fill (generating the contents included).
    elapsed: Duration,
    /// Per-write store latency, ms (generating and hashing on the client's side excluded).
    latencies_ms: Vec<f64>,
    sha256: usize,
    large: usize,
    compressible: usize,
}

/// One timed reopen with records present.
struct Reopen {
    /// `RedbStore::open`.
    meta: Duration,
    /// `DiskStore::open`: loading the records and reconciling them with the files.
    blobs: Duration,
    /// Resident memory of this process before the reopen and its peak during it, bytes.
    rss: Rss,
}

/// One timed adoption.
struct Adoption {
    /// `RedbStore::open` of the new, empty metadata store.
    meta: Duration,
    /// `DiskStore::open`: listing, hashing and adopting every file, and writing their records.
    blobs: Duration,
    /// Logical bytes hashed (the blobs' sizes).
    logical_bytes: u64,
    /// Resident memory of this process before the reopen and its peak during it, bytes.
    rss: Rss,
}

/// Resident memory of this process around a reopen, bytes (`None` where `/proc` does not
/// tell).
#[derive(Debug, Clone, Copy)]
struct Rss {
    before: Option<u64>,
    peak: Option<u64>,
}

impl Rss {
    /// Resets the peak and notes the resident set; [`Rss::end`] reads the peak.
    fn start() -> Self {
        reset_peak_rss();
        Rss {
            before: rss(),
            peak: None,
        }
    }

    fn end(self) -> Self {
        let peak = peak_rss();
        if let Some(peak) = peak {
            // Kernel RSS counters are approximate; keep the run's peak consistent with this.
            EARLIER_PEAK.fetch_max(peak, Ordering::Relaxed);
        }
        Rss { peak, ..self }
    }

    /// "P MiB peak (B MiB before)" of the run with the highest peak.
    fn describe(all: impl Iterator<Item = Rss>) -> String {
        match all.max_by_key(|rss| rss.peak) {
            Some(Rss {
                peak: Some(peak),
                before,
            }) => format!("{} peak ({} before)", mib(Some(peak)), mib(before)),
            _ => "?".to_owned(),
        }
    }
}

impl<'a> Bench<'a> {
    fn new(plan: &'a ReopenPlan, dir: &TempDir) -> Self {
        Bench {
            plan,
            root: dir.path().join("data"),
            cores: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }

    /// Where the metadata store lives, as in the coordinator's data directory.
    fn meta_dir(&self) -> PathBuf {
        self.root.join("meta")
    }

    /// Where the blob store lives, as in the coordinator's data directory.
    fn store_dir(&self) -> PathBuf {
        self.root.join("cas")
    }

    /// Opens both stores, timing each.
    fn open(&self) -> Result<(Arc<RedbStore>, DiskStore, Duration, Duration), BenchError> {
        let start = Instant::now();
        let meta = Arc::new(
            RedbStore::open(self.meta_dir()).map_err(|e| failed("open the metadata store", e))?,
        );
        let opened_meta = Instant::now();
        let meta_dyn: Arc<dyn MetadataStore> = meta.clone();
        let store = DiskStore::open(meta_dyn, DiskStoreOptions::new(self.store_dir()))
            .map_err(|e| failed("open the blob store", e))?;
        let opened = Instant::now();
        Ok((meta, store, opened_meta - start, opened - opened_meta))
    }

    /// Writes every blob from one writer thread per core, then closes the store cleanly.
    fn fill(&self, generator: &Generator) -> Result<Filled, BenchError> {
        let (meta, store, _, _) = self.open()?;
        let next = AtomicUsize::new(0);
        let start = Instant::now();
        let written: Vec<Result<Written, BenchError>> = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..self.cores)
                .map(|_| scope.spawn(|| write_blobs(&store, generator, &next, self.plan.blobs)))
                .collect();
            writers
                .into_iter()
                .map(|writer| {
                    writer.join().unwrap_or_else(|_| {
                        Err(BenchError::Unexpected(
                            "a writer thread panicked".to_owned(),
                        ))
                    })
                })
                .collect()
        });
        let elapsed = start.elapsed();
        let mut digests = vec![None; self.plan.blobs];
        let mut filled = Filled {
            digests: Vec::new(),
            stats: store.stats(),
            elapsed,
            latencies_ms: Vec::with_capacity(self.plan.blobs),
            sha256: 0,
            large: 0,
            compressible: 0,
        };
        for part in written {
            let part = part?;
            for (i, digest) in part.digests {
                digests[i] = Some(digest);
            }
            filled.latencies_ms.extend(part.latencies_ms);
            filled.sha256 += part.sha256;
            filled.large += part.large;
            filled.compressible += part.compressible;
        }
        filled.digests = digests
            .into_iter()
            .collect::<Option<_>>()
            .ok_or_else(|| BenchError::Unexpected("a blob was not written".to_owned()))?;
        expect_all(&filled.stats, &filled, "after the fill")?;
        close(meta, store)?;
        Ok(filled)
    }

    /// Reopens the store with its records present, `reopen_runs` times.
    fn reopens(&self, filled: &Filled) -> Result<Vec<Reopen>, BenchError> {
        (0..self.plan.reopen_runs)
            .map(|_| {
                let rss = Rss::start();
                let (meta, store, meta_time, blobs_time) = self.open()?;
                let rss = rss.end();
                expect_all(&store.stats(), filled, "after a reopen")?;
                close(meta, store)?;
                Ok(Reopen {
                    meta: meta_time,
                    blobs: blobs_time,
                    rss,
                })
            })
            .collect()
    }

    /// Deletes the metadata store, reopens (every file adopted), checks that every blob came
    /// back and reads a sample, then closes cleanly.
    fn adopt(&self, filled: &Filled, generator: &Generator) -> Result<Adoption, BenchError> {
        let meta_dir = self.meta_dir();
        fs::remove_dir_all(&meta_dir).map_err(|source| BenchError::Io {
            what: "delete the metadata store",
            source,
        })?;
        let rss = Rss::start();
        let (meta, store, meta_time, blobs_time) = self.open()?;
        let rss = rss.end();
        let stats = store.stats();
        expect_all(&stats, filled, "after adoption")?;
        read_sample(&store, filled, generator, self.plan.sample_reads)?;
        close(meta, store)?;
        Ok(Adoption {
            meta: meta_time,
            blobs: blobs_time,
            logical_bytes: stats.logical_bytes,
            rss,
        })
    }
}

/// What one writer thread wrote.
#[derive(Default)]
struct Written {
    digests: Vec<(usize, Digest)>,
    latencies_ms: Vec<f64>,
    sha256: usize,
    large: usize,
    compressible: usize,
}

/// Takes blob numbers from `next` until `count` and writes each: small ones in one call,
/// large ones as a streamed upload.
fn write_blobs(
    store: &DiskStore,
    generator: &Generator,
    next: &AtomicUsize,
    count: usize,
) -> Result<Written, BenchError> {
    let mut written = Written::default();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= count {
            return Ok(written);
        }
        let blob = generator.blob(i);
        let digest = blob.function.digest_of(&blob.data);
        let start = Instant::now();
        if blob.data.len() > STREAM_ABOVE {
            let mut upload = store
                .begin_upload(&digest)
                .map_err(|e| failed("start an upload", e))?;
            for piece in blob.data.chunks(UPLOAD_CHUNK) {
                upload
                    .write(piece)
                    .map_err(|e| failed("write an upload", e))?;
            }
            upload.commit().map_err(|e| failed("commit an upload", e))?;
        } else {
            store
                .write(&digest, &blob.data)
                .map_err(|e| failed("write a blob", e))?;
        }
        written.latencies_ms.push(ms(start.elapsed()));
        written.digests.push((i, digest));
        written.sha256 += usize::from(blob.function == DigestFunction::Sha256);
        written.large += usize::from(blob.data.len() >= LARGE.0);
        written.compressible += usize::from(blob.compressible);
    }
}

/// Fails unless `stats` shows every blob the fill wrote.
fn expect_all(stats: &StoreStats, filled: &Filled, when: &str) -> Result<(), BenchError> {
    let logical: u64 = filled.digests.iter().map(|d| d.size_bytes).sum();
    if stats.blobs != filled.digests.len() as u64 || stats.logical_bytes != logical {
        return Err(BenchError::Unexpected(format!(
            "{when} the store holds {} blobs ({} bytes), expected {} ({logical} bytes)",
            stats.blobs,
            stats.logical_bytes,
            filled.digests.len()
        )));
    }
    Ok(())
}

/// Reads `count` blobs spread over the whole fill through the store (which verifies their
/// digests) and compares each with what was written.
fn read_sample(
    store: &DiskStore,
    filled: &Filled,
    generator: &Generator,
    count: usize,
) -> Result<(), BenchError> {
    let total = filled.digests.len();
    let count = count.min(total);
    for k in 0..count {
        let i = k * total / count;
        let digest = &filled.digests[i];
        let read = store.read(digest).map_err(|e| failed("read a blob", e))?;
        match read {
            Some(data) if data[..] == generator.blob(i).data[..] => {}
            Some(_) => {
                return Err(BenchError::Unexpected(format!(
                    "blob {i} ({digest}) read back different from what was written"
                )));
            }
            None => {
                return Err(BenchError::Unexpected(format!(
                    "blob {i} ({digest}) is missing after adoption"
                )));
            }
        }
    }
    Ok(())
}

/// Checkpoints the index (access times written back, flushed) and closes both stores, so that
/// the next open finds a cleanly closed database.
fn close(meta: Arc<RedbStore>, store: DiskStore) -> Result<(), BenchError> {
    store
        .checkpoint()
        .map_err(|e| failed("checkpoint the blob index", e))?;
    drop(store);
    // The last reference: dropping it closes the database (and stops its flush thread).
    match Arc::try_unwrap(meta) {
        Ok(meta) => {
            drop(meta);
            Ok(())
        }
        Err(_) => Err(BenchError::Unexpected(
            "the metadata store is still referenced after closing the blob store".to_owned(),
        )),
    }
}

/// How fast this machine hashes the blobs' contents, in logical MB/s: the ceiling adoption is
/// judged against.
struct HashLimits {
    /// Every file hashed one after another on one core.
    one_core_mb_per_s: f64,
    /// The files shared out to one thread per core.
    all_cores_mb_per_s: f64,
    /// Reading the files into memory and decompressing the `.zst` ones, one core. Context:
    /// adoption has this to do besides hashing.
    load_mb_per_s: f64,
    /// The least work adoption can do: every file read, decompressed and hashed straight from
    /// the file system, one thread per core, buffers reused (median of [`LIMIT_RUNS`]).
    bare_mb_per_s: f64,
    /// Blob files found.
    files: usize,
    /// Of which kept compressed.
    compressed_files: usize,
}

/// A blob file's contents in memory, with the function it is named under.
struct Loaded {
    function: DigestFunction,
    data: Vec<u8>,
}

impl HashLimits {
    /// Loads the files under `blob_dir` (`{function}/{shard}/{hash}[.zst]`) a batch at a time
    /// and hashes each batch in memory, on one core and on `cores` threads.
    fn measure(blob_dir: &Path, cores: usize) -> Result<Self, BenchError> {
        let files = list_blob_files(blob_dir)?;
        let compressed_files = files.iter().filter(|(_, _, zst)| *zst).count();
        let (mut one_core, mut all_cores, mut loading) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let mut logical = 0u64;
        let mut batch = Vec::new();
        let mut batch_bytes = 0u64;
        for (index, (path, function, zst)) in files.iter().enumerate() {
            let start = Instant::now();
            let data = load(path, *zst)?;
            loading += start.elapsed();
            batch_bytes += data.len() as u64;
            batch.push(Loaded {
                function: *function,
                data,
            });
            if batch_bytes >= LIMIT_BATCH_BYTES || index + 1 == files.len() {
                one_core += best_of(LIMIT_RUNS, || hash_serially(&batch));
                all_cores += best_of(LIMIT_RUNS, || hash_in_parallel(&batch, cores));
                logical += batch_bytes;
                batch.clear();
                batch_bytes = 0;
            }
        }
        // The median, as for adoption itself: the same statistic on both sides.
        let mut bare = (0..LIMIT_RUNS)
            .map(|_| bare_adoption(&files, cores))
            .collect::<Result<Vec<_>, _>>()?;
        bare.sort_unstable();
        let bare = bare.get(bare.len() / 2).copied().unwrap_or_default();
        Ok(HashLimits {
            bare_mb_per_s: mb_per_s(logical, bare),
            one_core_mb_per_s: mb_per_s(logical, one_core),
            all_cores_mb_per_s: mb_per_s(logical, all_cores),
            load_mb_per_s: mb_per_s(logical, loading),
            files: files.len(),
            compressed_files,
        })
    }
}

/// Reads, decompresses and hashes every file on `threads` threads, each with its own reused
/// buffers and zstd context, and nothing else; how long it took.
fn bare_adoption(
    files: &[(PathBuf, DigestFunction, bool)],
    threads: usize,
) -> Result<Duration, BenchError> {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let failures: Vec<std::io::Error> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| -> Result<(), std::io::Error> {
                    let mut bytes = Vec::new();
                    let mut buf = vec![0u8; 256 * KIB];
                    let mut dctx = zstd::zstd_safe::DCtx::create();
                    while let Some((path, function, zst)) =
                        files.get(next.fetch_add(1, Ordering::Relaxed))
                    {
                        bytes.clear();
                        fs::File::open(path)?.read_to_end(&mut bytes)?;
                        let mut hasher = function.hasher();
                        if *zst {
                            let _ = dctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly);
                            let mut decoder = zstd::stream::read::Decoder::with_context(
                                bytes.as_slice(),
                                &mut dctx,
                            );
                            loop {
                                let n = decoder.read(&mut buf)?;
                                if n == 0 {
                                    break;
                                }
                                hasher.update(&buf[..n]);
                            }
                        } else {
                            hasher.update(&bytes);
                        }
                        black_box(hasher.finalize());
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| w.join().ok().and_then(Result::err))
            .collect()
    });
    match failures.into_iter().next() {
        Some(source) => Err(BenchError::Io {
            what: "read a blob file for the bare-work limit",
            source,
        }),
        None => Ok(start.elapsed()),
    }
}

/// Every file in the blob directory named as a blob: path, function, and whether it is kept
/// zstd-compressed.
fn list_blob_files(blob_dir: &Path) -> Result<Vec<(PathBuf, DigestFunction, bool)>, BenchError> {
    let io = |source| BenchError::Io {
        what: "list the blob files",
        source,
    };
    let mut files = Vec::new();
    for function in DigestFunction::ALL {
        for shard in fs::read_dir(blob_dir.join(function.name())).map_err(io)? {
            for file in fs::read_dir(shard.map_err(io)?.path()).map_err(io)? {
                let path = file.map_err(io)?.path();
                let zst = path.extension().is_some_and(|ext| ext == "zst");
                files.push((path, function, zst));
            }
        }
    }
    Ok(files)
}

/// A blob file's logical contents: the file, decompressed if it is a `.zst`.
fn load(path: &Path, zst: bool) -> Result<Vec<u8>, BenchError> {
    let bytes = fs::read(path).map_err(|source| BenchError::Io {
        what: "read a blob file",
        source,
    })?;
    if !zst {
        return Ok(bytes);
    }
    let mut decoder = StreamDecoder::new(u64::MAX).map_err(undecodable(path))?;
    let mut data = Vec::with_capacity(bytes.len() * 4);
    decoder
        .feed(&bytes, |piece| {
            data.write_all(piece).map_err(CodecError::Invalid)
        })
        .map_err(undecodable(path))?;
    decoder.finish().map_err(undecodable(path))?;
    Ok(data)
}

fn undecodable(path: &Path) -> impl FnOnce(CodecError) -> BenchError + '_ {
    move |error| BenchError::Unexpected(format!("{} does not decode: {error}", path.display()))
}

/// The shortest of `runs` timings of `work`.
fn best_of(runs: usize, mut work: impl FnMut() -> Duration) -> Duration {
    (0..runs).map(|_| work()).min().unwrap_or_default()
}

/// Hashes every blob of `batch` one after another, as the store's hasher does.
fn hash_serially(batch: &[Loaded]) -> Duration {
    let start = Instant::now();
    for blob in batch {
        hash(blob);
    }
    start.elapsed()
}

/// Hashes `batch` on `threads` threads, each taking the next blob when done with one (as the
/// store shares out its files).
fn hash_in_parallel(batch: &[Loaded], threads: usize) -> Duration {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                while let Some(blob) = batch.get(next.fetch_add(1, Ordering::Relaxed)) {
                    hash(blob);
                }
            });
        }
    });
    start.elapsed()
}

fn hash(blob: &Loaded) {
    let mut hasher = blob.function.hasher();
    hasher.update(black_box(&blob.data));
    black_box(hasher.finalize());
}

/// The highest peak resident set seen before the last [`reset_peak_rss`], bytes: resetting
/// `VmHWM` also resets what `getrusage` reports as `ru_maxrss`, so the run's peak is kept here.
static EARLIER_PEAK: AtomicU64 = AtomicU64::new(0);

/// Clears this process's peak resident set (`VmHWM`), so that the next reading is the peak of
/// what follows. Linux only; without it the reading is the peak since start.
fn reset_peak_rss() {
    if let Some(peak) = peak_rss() {
        EARLIER_PEAK.fetch_max(peak, Ordering::Relaxed);
    }
    let _ = fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/clear_refs")
        .and_then(|mut file| file.write_all(b"5"));
}

/// This process's peak resident set since start or the last [`reset_peak_rss`], bytes.
fn peak_rss() -> Option<u64> {
    memory_status("VmHWM:")
}

/// This process's peak resident set over the whole run, bytes.
fn run_peak_rss() -> Option<u64> {
    let earlier = EARLIER_PEAK.load(Ordering::Relaxed);
    peak_rss().map(|now| now.max(earlier))
}

/// This process's resident set now, bytes.
fn rss() -> Option<u64> {
    memory_status("VmRSS:")
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn memory_status(field: &str) -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "?".to_owned(), |b| format!("{} MiB", b / MIB as u64))
}

fn median_ms(durations: impl Iterator<Item = Duration>) -> f64 {
    percentile(&durations.map(ms).collect::<Vec<_>>(), 0.5)
}

impl Filled {
    fn row(&self, writers: usize) -> Row {
        let logical: u64 = self.digests.iter().map(|d| d.size_bytes).sum();
        Row {
            measurement: "fill (context)".to_owned(),
            digest: String::new(),
            workload: format!(
                "{} blobs, {} ({} at rest), {writers} writers, {:.1} s",
                thousands(self.digests.len()),
                bytes_label(logical),
                bytes_label(self.stats.stored_bytes),
                self.elapsed.as_secs_f64()
            ),
            check: Check::Rate {
                unit: "blobs",
                per_s: self.digests.len() as f64 / self.elapsed.as_secs_f64().max(1e-9),
                p50_ms: percentile(&self.latencies_ms, 0.5),
                p99_ms: percentile(&self.latencies_ms, 0.99),
                min_per_s: None,
                bare_spawn_ms: None,
            },
        }
    }
}

/// A row for reopens with records present: the median of metadata store and blob store open
/// together, held to [`REOPEN_MAX_P50_MS`].
fn reopen_row(measurement: &str, plan: &ReopenPlan, reopens: &[Reopen]) -> Row {
    let totals: Vec<f64> = reopens.iter().map(|r| ms(r.meta + r.blobs)).collect();
    Row {
        measurement: measurement.to_owned(),
        digest: String::new(),
        workload: format!("{} blobs, records present", thousands(plan.blobs)),
        check: Check::Time {
            samples: totals.len(),
            p50_ms: percentile(&totals, 0.5),
            tail_ms: percentile(&totals, 1.0),
            tail: Tail::Max,
            max_p50_ms: Some(REOPEN_MAX_P50_MS),
            context: format!(
                "metadata store open p50 {:.1} ms · blob store open p50 {:.1} ms · RSS {}",
                median_ms(reopens.iter().map(|r| r.meta)),
                median_ms(reopens.iter().map(|r| r.blobs)),
                Rss::describe(reopens.iter().map(|r| r.rss))
            ),
        },
    }
}

/// The adoption row: logical bytes hashed per second of `DiskStore::open` (median run) beside
/// the all-cores hash limit.
fn adopt_row(plan: &ReopenPlan, adoptions: &[Adoption], limits: &HashLimits) -> Row {
    let seconds = percentile(
        &adoptions
            .iter()
            .map(|a| a.blobs.as_secs_f64())
            .collect::<Vec<_>>(),
        0.5,
    );
    let logical = adoptions.first().map_or(0, |a| a.logical_bytes);
    Row {
        measurement: "reopen after the index was lost: hash and adopt every file".to_owned(),
        digest: String::new(),
        workload: format!(
            "{} blobs, {}, no records",
            thousands(plan.blobs),
            bytes_label(logical)
        ),
        check: Check::ShareOfLimit {
            mb_per_s: logical as f64 / 1e6 / seconds.max(1e-9),
            seconds,
            runs: adoptions.len(),
            limit: "read + unzstd + hash, all cores",
            limit_mb_per_s: limits.bare_mb_per_s,
            context: format!(
                "hash alone: all cores {} MB/s, 1 core {} MB/s · read + unzstd, 1 core {} MB/s",
                number(limits.all_cores_mb_per_s),
                number(limits.one_core_mb_per_s),
                number(limits.load_mb_per_s)
            ),
            share: ADOPT_SHARE,
        },
    }
}

fn notes(
    plan: &ReopenPlan,
    filled: &Filled,
    limits: &HashLimits,
    adoptions: &[Adoption],
) -> Vec<String> {
    let blobs = filled.digests.len();
    let percent = |part: usize| 100.0 * part as f64 / blobs.max(1) as f64;
    vec![
        format!(
            "Store: {} blobs ({:.0}% SHA-256, the rest BLAKE3), {:.0}% large (64 KiB–1 MiB, the \
             others 100 B–16 KiB, sizes log-uniform), {:.0}% text-like and compressible; {} \
             logical, {} at rest in {} files ({} kept zstd-compressed). Written by the real \
             `DiskStore` over a real `RedbStore` (large blobs as streamed uploads), the same \
             contents every run.",
            thousands(blobs),
            percent(filled.sha256),
            percent(filled.large),
            percent(filled.compressible),
            bytes_label(filled.stats.logical_bytes),
            bytes_label(filled.stats.stored_bytes),
            thousands(limits.files),
            thousands(limits.compressed_files),
        ),
        "A reopen is `RedbStore::open` then `DiskStore::open` (loading every record, listing \
         every blob file and reconciling the two), as the coordinator starts. The page cache is \
         warm: the files were just written."
            .to_owned(),
        format!(
            "Adoption: the metadata store's directory deleted, so every file is hashed (`.zst` \
             files decompressed) and adopted; the rate is the blobs' logical bytes over the \
             `DiskStore::open` time (median of {}; each run also opened a new metadata store in \
             p50 {:.1} ms). Limit: the bare work, every file read, decompressed and hashed \
             straight from the file system on one thread per core with reused buffers and \
             nothing else (median of {LIMIT_RUNS}, like adoption); target {:.0}% of it, so the store's own work \
             adds at most a third. For context, the contents loaded into memory a batch at a \
             time and only hashed, on one core and on one thread per core. After each \
             adoption every blob was present and {} sampled blobs read back equal to what was \
             written.",
            adoptions.len(),
            median_ms(adoptions.iter().map(|a| a.meta)),
            ADOPT_SHARE * 100.0,
            thousands(plan.sample_reads.min(blobs)),
        ),
        format!(
            "Memory (this process's resident set, `VmHWM` reset before each reopen): \
             adoption {}; the whole run (the fill included) {}.",
            Rss::describe(adoptions.iter().map(|a| a.rss)),
            mib(run_peak_rss()),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Verdict;

    #[test]
    fn blobs_are_reproducible_distinct_and_mixed_as_documented() {
        let generator = Generator::new(SEED);
        let blobs: Vec<Blob> = (0..2_000).map(|i| generator.blob(i)).collect();
        let again = generator.blob(1_234);
        assert_eq!(again.data, blobs[1_234].data);
        assert_eq!(again.function, blobs[1_234].function);
        for (i, blob) in blobs.iter().enumerate() {
            assert_eq!(
                blob.data[..8],
                (i as u64).to_le_bytes(),
                "blob {i} starts with i"
            );
            let len = blob.data.len();
            assert!(
                (SMALL.0..=SMALL.1).contains(&len) || (LARGE.0..=LARGE.1).contains(&len),
                "blob {i} has {len} bytes"
            );
        }
        let large = blobs.iter().filter(|b| b.data.len() >= LARGE.0).count();
        let sha256 = blobs
            .iter()
            .filter(|b| b.function == DigestFunction::Sha256)
            .count();
        let compressible = blobs.iter().filter(|b| b.compressible).count();
        assert!((50..=150).contains(&large), "{large} of 2,000 large");
        assert!((900..=1_100).contains(&sha256), "{sha256} of 2,000 SHA-256");
        assert!(
            (900..=1_100).contains(&compressible),
            "{compressible} of 2,000 compressible"
        );
        let text = blobs
            .iter()
            .find(|b| b.compressible && b.data.len() >= 4 * KIB)
            .expect("a text-like blob of 4 KiB or more");
        let packed = zstd_len(&text.data);
        assert!(
            packed * 10 <= text.data.len() * 9,
            "text shrinks by a tenth"
        );
    }

    /// Compressed size at the store's level, through the codec the store's clients use.
    fn zstd_len(data: &[u8]) -> usize {
        let mut encoder = tessera_cas::store::codec::StreamEncoder::new().expect("encoder");
        let mut out = encoder.feed(data).expect("compresses");
        out.extend(encoder.finish().expect("finishes"));
        out.len()
    }

    /// Small enough for a debug build in CI; runs every step end to end, including the checks
    /// that every blob comes back after adoption.
    #[test]
    fn smoke_run_measures_every_row() {
        let plan = ReopenPlan {
            command: "smoke test".to_owned(),
            blobs: 300,
            reopen_runs: 2,
            adopt_runs: 1,
            sample_reads: 50,
        };
        let parent = tempfile::tempdir().expect("temporary directory");
        let report = run(&plan, Some(parent.path())).expect("the benchmark runs");
        assert_eq!(report.rows.len(), 4);
        assert_eq!(report.rows[0].verdict(), Verdict::NoTarget);
        for row in &report.rows[1..] {
            assert_ne!(
                row.verdict(),
                Verdict::NoTarget,
                "{} has a target",
                row.measurement
            );
        }
        match report.rows[2].check {
            Check::ShareOfLimit {
                mb_per_s,
                limit_mb_per_s,
                ..
            } => assert!(mb_per_s > 0.0 && limit_mb_per_s > 0.0),
            ref other => panic!("adoption row is {other:?}"),
        }
        let markdown = report.to_markdown();
        assert!(
            markdown.contains("300 blobs, records present"),
            "{markdown}"
        );
        assert_eq!(
            std::fs::read_dir(parent.path()).expect("lists").count(),
            0,
            "the data directory is deleted afterwards"
        );
    }
}

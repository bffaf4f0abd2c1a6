//! [`DiskStore`]: blobs as files under the data directory.
//!
//! Layout: `blobs/{function}/{first two hex digits}/{hash}` for raw blobs and `....zst` for
//! blobs kept zstd-compressed (when compression shrinks them by a tenth or more). Every write
//! goes to `tmp/` first and is renamed into place only after its hash has been verified, so a
//! partial or wrong blob is never visible. Blob files are not fsynced: a blob lost in a machine
//! crash is a cache miss that clients repair by uploading again (DESIGN.md §3).
//!
//! The files are the truth and the index records a cache of them. At start the two are
//! reconciled: a record without its file is dropped; a file without a record (its record was
//! lost in a crash, or could not be written on a full disk) or disagreeing with it is hashed,
//! on every core, and adopted if its content matches its name. A file is deleted only once it
//! is proven wrong; one that cannot be read, or whose name is not a blob's, is left in place.
//! Records loaded at start are trusted for reads through the store (those hash as they go) and
//! hashed on first use by callers that link the file instead ([`DiskStore::raw_path`],
//! [`DiskStore::find_missing_verified`]); a read of part of a blob already hashed in this
//! process reads that part alone ([`BlobStore::open_range`]), like those callers trusting it.
//!
//! A full file system refuses the blob being written with [`StoreError::OutOfSpace`], leaving
//! nothing behind, and is reported once per episode ([`SpaceWatch`]). A record that cannot be
//! written does not refuse the blob: the file is in place, the record is retried at the next
//! [`DiskStore::checkpoint`], and the next start adopts the file if it never was.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use super::blob_store::{BlobRead, BlobReader, BlobStore, StoreError, StoreStats, Upload};
use super::index::{self, Entry, Form, Index, Victim, now_ms};
use crate::digest::{Digest, DigestFunction, Hasher};
use crate::meta::MetadataStore;
use crate::space::{SpaceWatch, is_out_of_space};
mod link;

/// Uploads up to this size are held in memory and written in one go.
const BUFFER_LIMIT: usize = 256 * 1024;
/// Bytes per chunk handed out by readers.
const READ_CHUNK: usize = 256 * 1024;
/// Bytes of a large upload used to decide whether to keep it compressed.
const COMPRESS_SAMPLE: usize = 32 * 1024;
/// Blobs smaller than this are never compressed at rest.
const COMPRESS_MIN: usize = 512;
const ZSTD_LEVEL: i32 = 1;

/// How a [`DiskStore`] is set up.
#[derive(Debug, Clone)]
pub struct DiskStoreOptions {
    /// Directory holding `blobs/` and `tmp/`.
    pub root: PathBuf,
    /// Bytes the blobs may take at rest; eviction keeps under it.
    pub budget_bytes: u64,
    /// Blobs used within this window are not evicted.
    pub protect_recent: Duration,
    /// Whether to keep compressible blobs zstd-compressed at rest.
    pub compress: bool,
}

impl DiskStoreOptions {
    /// Defaults for `root`: no budget, a minute of protection, compression on.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DiskStoreOptions {
            root: root.into(),
            budget_bytes: u64::MAX,
            protect_recent: Duration::from_secs(60),
            compress: true,
        }
    }
}

/// A blob store on the local filesystem, indexed in the metadata store.
#[derive(Clone)]
pub struct DiskStore {
    inner: Arc<Inner>,
}

struct Inner {
    blobs: PathBuf,
    tmp: PathBuf,
    compress: bool,
    index: Mutex<Index>,
    meta: Arc<dyn MetadataStore>,
    space: SpaceWatch,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("blobs", &self.inner.blobs)
            .finish_non_exhaustive()
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::io(op, path, source)
}

impl DiskStore {
    /// Opens (creating) the store under `options.root`, loads the index from `meta` and
    /// reconciles it with the files.
    pub fn open(
        meta: Arc<dyn MetadataStore>,
        options: DiskStoreOptions,
    ) -> Result<Self, StoreError> {
        let blobs = options.root.join("blobs");
        let tmp = options.root.join("tmp");
        // Leftovers of uploads that never finished.
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err("failed to clear", &tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err("failed to create", &tmp))?;
        for function in [DigestFunction::Sha256, DigestFunction::Blake3] {
            for shard in 0..=255u8 {
                let dir = blobs.join(function.name()).join(hex::encode([shard]));
                fs::create_dir_all(&dir).map_err(io_err("failed to create", &dir))?;
            }
        }
        let table = meta.table(index::TABLE)?;
        let index = Index::load(table, options.budget_bytes, options.protect_recent)?;
        let inner = Inner {
            space: SpaceWatch::new("blobs", &options.root),
            blobs,
            tmp,
            compress: options.compress,
            index: Mutex::new(index),
            meta,
        };
        inner.reconcile()?;
        Ok(DiskStore {
            inner: Arc::new(inner),
        })
    }

    /// Writes the records changed since the last call (access times, and records an earlier
    /// write could not store) and flushes the metadata store, so the index survives a crash
    /// as of now and the next start has only the blobs written after this to hash and adopt.
    /// Owners call it every few seconds and at shutdown.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        {
            // Applied under the index lock, so a blob evicted or replaced meanwhile cannot
            // have its old record written back.
            let mut index = self.inner.lock();
            if let Some((batch, digests)) = index.take_dirty() {
                self.inner.meta.apply_batch(batch)?;
                index.recorded(&digests);
            }
        }
        self.inner.meta.flush()?;
        Ok(())
    }

    /// The file holding `digest` if it is stored raw (uncompressed), for callers that hard-link
    /// blobs into place (the agent's input materialization; open its cache with
    /// `compress: false`). The file must be treated as read-only. Refreshes the access time.
    /// A file not yet hashed by this process is hashed first; if it does not match, it is
    /// removed and the blob is missing.
    pub fn raw_path(&self, digest: &Digest) -> Option<PathBuf> {
        let entry = {
            let mut index = self.inner.lock();
            index.touch(digest, now_ms());
            index.get(digest)?
        };
        if entry.form != Form::Raw {
            return None;
        }
        if !entry.verified && !self.inner.verify(digest, entry.form) {
            return None;
        }
        Some(self.inner.path(digest, Form::Raw))
    }

    /// Like [`BlobStore::find_missing`], but first hashes each present blob not yet hashed by
    /// this process, so that a file damaged while the process was down is removed and reported
    /// missing (to be fetched again) instead of used. Blocking: it reads those files.
    pub fn find_missing_verified(&self, digests: &[Digest]) -> Vec<Digest> {
        let unverified: Vec<(Digest, Form)> = {
            let index = self.inner.lock();
            digests
                .iter()
                .filter_map(|d| index.get(d).filter(|e| !e.verified).map(|e| (*d, e.form)))
                .collect()
        };
        for (digest, form) in unverified {
            self.inner.verify(&digest, form);
        }
        self.find_missing(digests)
    }

    /// Out-of-space figures of the blob files.
    pub fn space(&self) -> crate::space::SpaceStats {
        self.inner.space.stats()
    }

    /// Keeps `digests` from eviction until the returned guard is dropped. Digests not stored
    /// are ignored.
    pub fn pin(&self, digests: &[Digest]) -> PinGuard {
        let mut index = self.inner.lock();
        let pinned = digests.iter().filter(|d| index.pin(d)).copied().collect();
        PinGuard {
            inner: Arc::clone(&self.inner),
            digests: pinned,
        }
    }
}

/// Keeps blobs pinned; see [`DiskStore::pin`].
pub struct PinGuard {
    inner: Arc<Inner>,
    digests: Vec<Digest>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut index = self.inner.lock();
        for digest in &self.digests {
            index.unpin(digest);
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Index> {
        // Index mutations keep it consistent at every step, so a poisoned lock is still usable.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn path(&self, digest: &Digest, form: Form) -> PathBuf {
        let hash = digest.hash_hex();
        let mut path = self
            .blobs
            .join(digest.function.name())
            .join(&hash[..2])
            .join(&hash);
        if form == Form::Zstd {
            path.set_extension("zst");
        }
        path
    }

    /// The error for a failed write to `path`: [`StoreError::OutOfSpace`] (counted) when the
    /// file system is full.
    fn write_error(&self, op: &'static str, path: &Path, source: std::io::Error) -> StoreError {
        if is_out_of_space(&source) {
            self.space.refused();
            StoreError::OutOfSpace {
                path: self.space.path().to_owned(),
            }
        } else {
            StoreError::io(op, path, source)
        }
    }

    /// Reconciles the index with the files; see the module docs.
    fn reconcile(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let mut index = self.lock();
        let mut by_file: HashMap<PathBuf, (Digest, Entry)> = index
            .digests()
            .map(|(d, e)| (self.path(d, e.form), (*d, *e)))
            .collect();
        let mut unknown = Vec::new();
        let mut foreign = 0usize;
        for function in [DigestFunction::Sha256, DigestFunction::Blake3] {
            for shard in 0..=255u8 {
                let dir = self.blobs.join(function.name()).join(hex::encode([shard]));
                let entries = fs::read_dir(&dir).map_err(io_err("failed to list", &dir))?;
                for entry in entries {
                    let entry = entry.map_err(io_err("failed to list", &dir))?;
                    let path = entry.path();
                    if let Some((digest, record)) = by_file.remove(&path) {
                        let len = entry.metadata().map(|m| m.len()).ok();
                        if len == Some(record.stored) {
                            continue;
                        }
                        // The record and the file disagree: neither is proof, so check the file.
                        index.remove(&digest);
                    }
                    match Found::parse(function, shard, path) {
                        Some(found) => unknown.push(found),
                        None => {
                            foreign += 1;
                            tracing::warn!(path = %entry.path().display(), "leaving a file that is not named as a blob in the blob directory");
                        }
                    }
                }
            }
        }
        // Records whose files are gone: a machine crash, or removed by hand.
        let lost = by_file.len();
        for (digest, _) in by_file.into_values() {
            index.remove(&digest);
        }
        let checks = check_all(&unknown);
        let (mut adopted, mut wrong, mut unreadable, mut duplicates) = (Vec::new(), 0, 0, 0);
        let mut seen = HashSet::new();
        for (found, check) in unknown.iter().zip(checks) {
            match check {
                Check::Matches {
                    digest,
                    stored,
                    modified_ms,
                } => {
                    if index.get(&digest).is_some() || !seen.insert(digest) {
                        // The same blob in the other form: one copy is enough.
                        duplicates += 1;
                        let _ = fs::remove_file(&found.path);
                        continue;
                    }
                    let entry = Entry {
                        stored,
                        form: found.form,
                        last_access: modified_ms,
                        pins: 0,
                        verified: true,
                    };
                    adopted.push((digest, entry));
                }
                Check::Wrong(reason) => {
                    wrong += 1;
                    tracing::warn!(path = %found.path.display(), reason, "removing a blob file whose content does not match its name");
                    let _ = fs::remove_file(&found.path);
                }
                Check::Unreadable(error) => {
                    unreadable += 1;
                    tracing::warn!(path = %found.path.display(), %error, "leaving a blob file that could not be read");
                }
            }
        }
        let adopted_count = adopted.len();
        if !adopted.is_empty() {
            let digests: Vec<Digest> = adopted.iter().map(|(d, _)| *d).collect();
            let batch = index.adopt(adopted);
            match self.meta.apply_batch(batch) {
                Ok(()) => index.recorded(&digests),
                Err(error) => {
                    tracing::warn!(%error, "could not record adopted blobs yet; retried at the next checkpoint");
                }
            }
        }
        tracing::info!(
            blobs = index.len(),
            stored_bytes = index.stored_bytes(),
            adopted = adopted_count,
            removed_wrong = wrong,
            duplicates,
            unreadable,
            foreign,
            lost,
            took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "blob store opened"
        );
        Ok(())
    }

    /// Hashes the file of `digest` (not under the index lock); marks it verified if it
    /// matches, removes it otherwise. Whether the blob is still there.
    fn verify(&self, digest: &Digest, form: Form) -> bool {
        let found = Found {
            path: self.path(digest, form),
            function: digest.function,
            hash: digest.hash,
            form,
        };
        match Checker::new().check(&found) {
            Check::Matches { digest: actual, .. } if actual == *digest => {
                self.lock().set_verified(digest);
                true
            }
            Check::Matches { .. } => {
                self.discard(digest, "file size does not match the digest");
                false
            }
            Check::Wrong(reason) => {
                self.discard(digest, &reason);
                false
            }
            Check::Unreadable(error) => {
                self.discard(digest, &format!("unreadable: {error}"));
                false
            }
        }
    }

    /// Drops a blob whose file failed verification or vanished.
    fn discard(&self, digest: &Digest, reason: &str) {
        let mut index = self.lock();
        if let Some(entry) = index.remove(digest) {
            tracing::error!(%digest, reason, "removing corrupt blob");
            let _ = fs::remove_file(self.path(digest, entry.form));
        }
    }

    /// Moves a verified temporary file into place and records it. Evicts as needed while
    /// holding the index lock, so an eviction can never delete a file that a concurrent
    /// upload of the same digest has just put in place.
    fn install(
        &self,
        digest: Digest,
        tmp: &Path,
        form: Form,
        stored: u64,
    ) -> Result<(), StoreError> {
        let mut index = self.lock();
        let now = now_ms();
        if index.touch(&digest, now) {
            drop(index);
            let _ = fs::remove_file(tmp);
            return Ok(());
        }
        let victims = match index.make_room(stored, now) {
            Ok(victims) => victims,
            Err(pinned) => {
                let budget = index.budget;
                drop(index);
                let _ = fs::remove_file(tmp);
                return Err(StoreError::Full {
                    digest,
                    needed: stored,
                    budget,
                    pinned,
                });
            }
        };
        for Victim { digest, form } in &victims {
            let _ = fs::remove_file(self.path(digest, *form));
        }
        let path = self.path(&digest, form);
        if let Err(source) = fs::rename(tmp, &path) {
            drop(index);
            let _ = fs::remove_file(tmp);
            return Err(self.write_error("failed to move blob into place at", &path, source));
        }
        let entry = Entry {
            stored,
            form,
            last_access: now,
            pins: 0,
            verified: true,
        };
        if let Err(error) = index.insert(digest, entry) {
            // The blob is in place and served; its record is retried at the next checkpoint,
            // and the next start adopts the file if it never gets written.
            if error.is_out_of_space() {
                tracing::debug!(%digest, %error, "blob index record deferred");
            } else {
                tracing::warn!(%digest, %error, "blob index record deferred");
            }
        }
        drop(index);
        self.space.accepted();
        Ok(())
    }

    fn tmp_path(&self) -> PathBuf {
        self.tmp.join(uuid::Uuid::new_v4().simple().to_string())
    }

    fn write_whole(&self, digest: Digest, data: &[u8]) -> Result<(), StoreError> {
        let compressed = if self.compress {
            compress_if_smaller(data)
        } else {
            None
        };
        let (form, bytes) = match &compressed {
            Some(c) => (Form::Zstd, c.as_slice()),
            None => (Form::Raw, data),
        };
        let tmp = self.tmp_path();
        if let Err(source) = fs::write(&tmp, bytes) {
            let _ = fs::remove_file(&tmp);
            return Err(self.write_error("failed to write blob file", &tmp, source));
        }
        self.install(digest, &tmp, form, bytes.len() as u64)
    }
}

/// A file in the blob directory named as a blob, not yet known to match its name.
struct Found {
    path: PathBuf,
    function: DigestFunction,
    hash: [u8; 32],
    form: Form,
}

/// What hashing a [`Found`] file showed.
enum Check {
    /// The content hashes to the name: the blob `digest`, `stored` bytes at rest.
    Matches {
        digest: Digest,
        stored: u64,
        modified_ms: u64,
    },
    /// The content is not the named blob (or not valid zstd for a `.zst` file).
    Wrong(String),
    /// The file could not be read: no proof either way.
    Unreadable(std::io::Error),
}

impl Found {
    /// Parses `{shard}/{hash}` or `{shard}/{hash}.zst`; `None` for any other name.
    fn parse(function: DigestFunction, shard: u8, path: PathBuf) -> Option<Found> {
        let name = path.file_name()?.to_str()?;
        let (hex_hash, form) = match name.strip_suffix(".zst") {
            Some(stem) => (stem, Form::Zstd),
            None => (name, Form::Raw),
        };
        if hex_hash.len() != 64 || hex_hash.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut hash = [0u8; 32];
        hex::decode_to_slice(hex_hash, &mut hash).ok()?;
        (hash[0] == shard).then_some(Found {
            path,
            function,
            hash,
            form,
        })
    }
}

/// Compressed files up to this size are read whole into a reused buffer before decoding.
const READ_WHOLE: u64 = 4 * 1024 * 1024;

/// Checks [`Found`] files one after another, reusing its buffers and zstd context: with many
/// small files, allocating them per file costs more than the hashing.
struct Checker {
    buf: Vec<u8>,
    whole: Vec<u8>,
    dctx: zstd::zstd_safe::DCtx<'static>,
}

impl Checker {
    fn new() -> Self {
        Checker {
            buf: vec![0u8; READ_CHUNK],
            whole: Vec::new(),
            dctx: zstd::zstd_safe::DCtx::create(),
        }
    }

    fn check(&mut self, found: &Found) -> Check {
        let mut file = match File::open(&found.path) {
            Ok(file) => file,
            Err(error) => return Check::Unreadable(error),
        };
        let (stored, modified_ms) = match file.metadata() {
            Ok(meta) => (
                meta.len(),
                meta.modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or_else(now_ms, |d| u64::try_from(d.as_millis()).unwrap_or(0)),
            ),
            Err(error) => return Check::Unreadable(error),
        };
        let hashed = match found.form {
            Form::Raw => hash_all(found.function, &mut file, &mut self.buf),
            Form::Zstd => {
                let _ = self
                    .dctx
                    .reset(zstd::zstd_safe::ResetDirective::SessionOnly);
                let hashed = if stored <= READ_WHOLE {
                    self.whole.clear();
                    if let Err(error) = file.read_to_end(&mut self.whole) {
                        return Check::Unreadable(error);
                    }
                    let mut decoder = zstd::stream::read::Decoder::with_context(
                        self.whole.as_slice(),
                        &mut self.dctx,
                    );
                    hash_all(found.function, &mut decoder, &mut self.buf)
                } else {
                    let mut decoder = zstd::stream::read::Decoder::with_context(
                        BufReader::new(file),
                        &mut self.dctx,
                    );
                    hash_all(found.function, &mut decoder, &mut self.buf)
                };
                // zstd reports a damaged frame as `Other`; the file cannot be the blob then.
                match hashed {
                    Err(error) if error.kind() == std::io::ErrorKind::Other => {
                        return Check::Wrong(format!("not a valid zstd frame: {error}"));
                    }
                    other => other,
                }
            }
        };
        let actual = match hashed {
            Ok(actual) => actual,
            Err(error) => return Check::Unreadable(error),
        };
        if actual.hash != found.hash {
            return Check::Wrong(format!("content hashes to {}", actual.hash_hex()));
        }
        Check::Matches {
            digest: actual,
            stored,
            modified_ms,
        }
    }
}

/// Hashes everything `source` yields, through `buf`.
fn hash_all(
    function: DigestFunction,
    source: &mut dyn Read,
    buf: &mut [u8],
) -> std::io::Result<Digest> {
    let mut hasher = function.hasher();
    loop {
        match source.read(buf) {
            Ok(0) => return Ok(hasher.finish_digest()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

/// Checks every file, on as many threads as there are cores; results in `found`'s order.
fn check_all(found: &[Found]) -> Vec<Check> {
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(found.len());
    if workers <= 1 {
        let mut checker = Checker::new();
        return found.iter().map(|f| checker.check(f)).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Vec<(usize, Check)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut checker = Checker::new();
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(file) = found.get(i) else { break };
                        out.push((i, checker.check(file)));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    // Placed by index, so a file whose check was lost to a panic is left alone, never
    // mistaken for another.
    let mut checks: Vec<Option<Check>> =
        std::iter::repeat_with(|| None).take(found.len()).collect();
    for (i, check) in results {
        checks[i] = Some(check);
    }
    checks
        .into_iter()
        .map(|c| c.unwrap_or_else(|| Check::Unreadable(std::io::Error::other("check failed"))))
        .collect()
}

/// zstd-compresses `data` if that saves at least a tenth of it.
fn compress_if_smaller(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < COMPRESS_MIN {
        return None;
    }
    let compressed = zstd::bulk::compress(data, ZSTD_LEVEL).ok()?;
    (compressed.len() <= data.len() / 10 * 9).then_some(compressed)
}

impl BlobStore for DiskStore {
    fn find_missing(&self, digests: &[Digest]) -> Vec<Digest> {
        let now = now_ms();
        let mut index = self.inner.lock();
        digests
            .iter()
            .filter(|d| !d.is_empty_blob() && !index.touch(d, now))
            .copied()
            .collect()
    }

    fn find_missing_checked(&self, digests: &[Digest]) -> Vec<Digest> {
        let mut missing = self.find_missing(digests);
        for digest in digests {
            if digest.is_empty_blob() || missing.contains(digest) {
                continue;
            }
            let Some(entry) = self.inner.lock().get(digest) else {
                missing.push(*digest);
                continue;
            };
            if !self.inner.path(digest, entry.form).exists() {
                self.inner.discard(digest, "file missing");
                missing.push(*digest);
            }
        }
        missing
    }

    fn contains(&self, digest: &Digest) -> bool {
        digest.is_empty_blob() || self.inner.lock().get(digest).is_some()
    }

    fn touch(&self, digests: &[Digest]) {
        let now = now_ms();
        let mut index = self.inner.lock();
        for digest in digests {
            index.touch(digest, now);
        }
    }

    fn read(&self, digest: &Digest) -> Result<Option<Bytes>, StoreError> {
        let Some(mut reader) = self.open(digest, 0)? else {
            return Ok(None);
        };
        let mut out = BytesMut::with_capacity(usize::try_from(digest.size_bytes).unwrap_or(0));
        loop {
            match reader.next_chunk() {
                Ok(Some(chunk)) => out.extend_from_slice(&chunk),
                Ok(None) => return Ok(Some(out.freeze())),
                // Removed by the reader; to a whole-blob caller it is simply missing.
                Err(StoreError::Corrupt { .. }) => return Ok(None),
                Err(other) => return Err(other),
            }
        }
    }

    fn open(&self, digest: &Digest, offset: u64) -> Result<Option<BlobReader>, StoreError> {
        self.open_range(digest, offset, None)
    }

    fn open_range(
        &self,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> Result<Option<BlobReader>, StoreError> {
        let offset = offset.min(digest.size_bytes);
        if digest.is_empty_blob() {
            return Ok(Some(Box::new(EmptyReader)));
        }
        let entry = {
            let mut index = self.inner.lock();
            index.touch(digest, now_ms());
            index.get(digest)
        };
        let Some(entry) = entry else {
            return Ok(None);
        };
        let path = self.inner.path(digest, entry.form);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                self.inner.discard(digest, "file missing");
                return Ok(None);
            }
            Err(error) => return Err(StoreError::io("failed to open blob file", &path, error)),
        };
        let end = limit.map_or(digest.size_bytes, |limit| {
            offset.saturating_add(limit).min(digest.size_bytes)
        });
        let reader = DiskReader::start(&self.inner, *digest, entry, file, offset, end)
            .map_err(io_err("failed to open blob file", &path))?;
        Ok(Some(Box::new(reader)))
    }

    fn write(&self, digest: &Digest, data: &[u8]) -> Result<(), StoreError> {
        digest.verify(data)?;
        if self.contains(digest) {
            self.touch(std::slice::from_ref(digest));
            return Ok(());
        }
        self.inner.write_whole(*digest, data)
    }

    fn begin_upload(&self, digest: &Digest) -> Result<Box<dyn Upload>, StoreError> {
        Ok(Box::new(DiskUpload {
            inner: Arc::clone(&self.inner),
            digest: *digest,
            hasher: digest.function.hasher(),
            buffer: Vec::new(),
            sink: None,
            received: 0,
        }))
    }

    fn stats(&self) -> StoreStats {
        let index = self.inner.lock();
        StoreStats {
            blobs: index.len() as u64,
            logical_bytes: index.logical_bytes(),
            stored_bytes: index.stored_bytes(),
            budget_bytes: index.budget,
            evicted: index.evicted,
            evicted_bytes: index.evicted_bytes,
            space: self.inner.space.stats(),
        }
    }
}

struct EmptyReader;

impl BlobRead for EmptyReader {
    fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        Ok(None)
    }
}

/// A read of one blob file. A whole read (and any read of a blob this process has not hashed
/// yet, or keeps compressed) starts at the file's beginning and hashes every byte, handing
/// out those from the offset on; a part of a blob already hashed in this process is read
/// straight from its offset to its end, as [`DiskStore::raw_path`] trusts such a file too.
struct DiskReader {
    inner: Arc<Inner>,
    digest: Digest,
    source: Box<dyn Read + Send>,
    /// `None` for a trusted part (see above).
    hasher: Option<Hasher>,
    /// Uncompressed position in the blob of the next byte `source` yields.
    pos: u64,
    /// First byte handed out.
    offset: u64,
    /// Where a trusted part stops; a hashing read goes on to the blob's end.
    end: u64,
    finished: bool,
}

impl DiskReader {
    fn start(
        inner: &Arc<Inner>,
        digest: Digest,
        entry: Entry,
        file: File,
        offset: u64,
        end: u64,
    ) -> std::io::Result<DiskReader> {
        let part = offset > 0 || end < digest.size_bytes;
        let mut reader = DiskReader {
            inner: Arc::clone(inner),
            digest,
            source: Box::new(std::io::empty()),
            hasher: Some(digest.function.hasher()),
            pos: 0,
            offset,
            end: digest.size_bytes,
            finished: false,
        };
        match entry.form {
            Form::Raw if part && entry.verified => {
                let mut file = file;
                file.seek(SeekFrom::Start(offset))?;
                reader.source = Box::new(file);
                reader.hasher = None;
                reader.pos = offset;
                reader.end = end;
            }
            // Chunks are read straight into their own buffers, which are as large as the
            // buffer would be: a `BufReader` would only add a copy.
            Form::Raw => reader.source = Box::new(file),
            Form::Zstd => reader.source = Box::new(zstd::stream::read::Decoder::new(file)?),
        }
        Ok(reader)
    }

    fn corrupt(&mut self, reason: String) -> StoreError {
        self.finished = true;
        self.inner.discard(&self.digest, &reason);
        StoreError::Corrupt {
            digest: self.digest,
            reason,
        }
    }

    /// At the end of a hashing read: the blob must end exactly here and hash to its digest.
    fn verify_end(&mut self) -> Result<(), StoreError> {
        let Some(hasher) = self.hasher.take() else {
            return Ok(());
        };
        let mut probe = [0u8; 1];
        let extra = match self.source.read(&mut probe) {
            Ok(n) => n,
            Err(error) => {
                return Err(self.corrupt(format!("unreadable past the end: {error}")));
            }
        };
        if extra != 0 {
            return Err(self.corrupt("file is longer than the digest's size".into()));
        }
        if let Err(error) = self.digest.verify_against(&hasher.finish_digest()) {
            return Err(self.corrupt(error.to_string()));
        }
        self.inner.lock().set_verified(&self.digest);
        Ok(())
    }

    /// The next `want` bytes of `source` (fewer only at its end), read into a fresh buffer
    /// without first zeroing it.
    fn read_chunk(&mut self, want: usize) -> std::io::Result<Bytes> {
        let mut buf = Vec::with_capacity(want);
        (&mut self.source).take(want as u64).read_to_end(&mut buf)?;
        Ok(Bytes::from(buf))
    }
}

impl BlobRead for DiskReader {
    fn reads_part_only(&self) -> bool {
        self.hasher.is_none()
    }

    fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        if self.finished {
            return Ok(None);
        }
        loop {
            if self.pos == self.end {
                self.verify_end()?;
                self.finished = true;
                return Ok(None);
            }
            let want =
                usize::try_from(self.end - self.pos).map_or(READ_CHUNK, |r| r.min(READ_CHUNK));
            let buf = match self.read_chunk(want) {
                Ok(buf) => buf,
                Err(error) => return Err(self.corrupt(format!("unreadable: {error}"))),
            };
            let filled = buf.len();
            if filled == 0 {
                let size = self.digest.size_bytes;
                return Err(self.corrupt(format!("file ends after {} of {size} bytes", self.pos)));
            }
            if let Some(hasher) = &mut self.hasher {
                hasher.update(&buf);
            }
            let start = self.pos;
            self.pos += filled as u64;
            if self.pos <= self.offset {
                continue;
            }
            let skip = usize::try_from(self.offset.saturating_sub(start)).unwrap_or(0);
            return Ok(Some(buf.slice(skip..)));
        }
    }
}

enum Sink {
    Raw(BufWriter<File>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
}

struct DiskUpload {
    inner: Arc<Inner>,
    digest: Digest,
    hasher: Hasher,
    /// The first bytes, until they pass [`BUFFER_LIMIT`].
    buffer: Vec<u8>,
    /// Once past the limit: the temporary file being written.
    sink: Option<(PathBuf, Sink)>,
    received: u64,
}

impl DiskUpload {
    fn open_sink(&mut self) -> Result<(), StoreError> {
        let path = self.inner.tmp_path();
        let file = File::create(&path)
            .map_err(|source| self.inner.write_error("failed to create", &path, source))?;
        let writer = BufWriter::with_capacity(1 << 20, file);
        // Decide the at-rest form from a sample of the start: enough to tell text and binaries
        // from random or already-compressed data, cheap enough for every upload.
        let sample = &self.buffer[..self.buffer.len().min(COMPRESS_SAMPLE)];
        let sink = if self.inner.compress && compress_if_smaller(sample).is_some() {
            let encoder = zstd::stream::write::Encoder::new(writer, ZSTD_LEVEL)
                .map_err(io_err("failed to start zstd for", &path))?;
            Sink::Zstd(encoder)
        } else {
            Sink::Raw(writer)
        };
        self.sink = Some((path, sink));
        let buffered = std::mem::take(&mut self.buffer);
        self.write_sink(&buffered)
    }

    fn write_sink(&mut self, data: &[u8]) -> Result<(), StoreError> {
        if let Some((path, sink)) = &mut self.sink {
            let result = match sink {
                Sink::Raw(w) => w.write_all(data),
                Sink::Zstd(w) => w.write_all(data),
            };
            if let Err(source) = result {
                return Err(self.inner.write_error("failed to write", path, source));
            }
        }
        Ok(())
    }
}

impl Drop for DiskUpload {
    fn drop(&mut self) {
        if let Some((path, _)) = self.sink.take() {
            let _ = fs::remove_file(path);
        }
    }
}

impl Upload for DiskUpload {
    fn digest(&self) -> Digest {
        self.digest
    }

    fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let received = self.received + data.len() as u64;
        if received > self.digest.size_bytes {
            return Err(StoreError::Overflow {
                digest: self.digest,
                received,
                expected: self.digest.size_bytes,
            });
        }
        self.hasher.update(data);
        self.received = received;
        if self.sink.is_some() {
            self.write_sink(data)
        } else {
            self.buffer.extend_from_slice(data);
            if self.buffer.len() > BUFFER_LIMIT {
                self.open_sink()?;
            }
            Ok(())
        }
    }

    fn received(&self) -> u64 {
        self.received
    }

    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        let hasher = std::mem::replace(&mut self.hasher, self.digest.function.hasher());
        self.digest.verify_against(&hasher.finish_digest())?;
        let Some((path, sink)) = self.sink.take() else {
            let buffer = std::mem::take(&mut self.buffer);
            if self.digest.is_empty_blob() {
                return Ok(());
            }
            if self.inner.lock().touch(&self.digest, now_ms()) {
                return Ok(());
            }
            return self.inner.write_whole(self.digest, &buffer);
        };
        let (form, finished) = match sink {
            Sink::Raw(w) => (Form::Raw, w.into_inner().map_err(|e| e.into_error())),
            Sink::Zstd(w) => (
                Form::Zstd,
                w.finish()
                    .and_then(|w| w.into_inner().map_err(|e| e.into_error())),
            ),
        };
        let file = match finished {
            Ok(file) => file,
            Err(source) => {
                let _ = fs::remove_file(&path);
                return Err(self.inner.write_error("failed to finish", &path, source));
            }
        };
        let stored = match file.metadata() {
            Ok(meta) => meta.len(),
            Err(source) => {
                let _ = fs::remove_file(&path);
                return Err(StoreError::io("failed to stat", &path, source));
            }
        };
        drop(file);
        self.inner.install(self.digest, &path, form, stored)
    }
}

//! [`DiskStore`]: blobs as files under the data directory, small ones optionally inline in the
//! metadata store.
//!
//! Layout: `blobs/{function}/{first two hex digits}/{hash}` for raw blobs and `....zst` for
//! blobs kept zstd-compressed. Every write goes to `tmp/` first and is renamed into place only
//! after its hash has been verified, so a partial or wrong blob is never visible. Blob files are
//! not fsynced: a blob lost in a machine crash is a cache miss that clients repair by uploading
//! again (DESIGN.md §3).
//!
//! **Inline blobs.** Blobs up to [`DiskStoreOptions::inline_max`] bytes (0, the default of
//! [`DiskStoreOptions::new`], keeps every blob a file; the coordinator uses
//! [`DiskStoreOptions::INLINE_MAX`]) are kept as values of the metadata table `blobs_inline`
//! instead of a file each: a small blob then costs a journal append and a share of one group
//! commit instead of a file create, write and rename (and, on ext4 without a journal, the
//! inode allocator's walk past recently deleted inodes). Record and bytes are written in one
//! batch, so they appear and go together; reads hash them every time, like files. A redb
//! commit alone does not survive even a process crash (redb reopens at its last durable
//! commit), while a file does; so before an inline blob is listed its bytes are appended to
//! the inline journal ([`journal`]: one `write`, no fsync), which a start after a crash
//! replays, and which each [`DiskStore::checkpoint`] retires after its flush. An acknowledged
//! inline blob is then exactly as safe as a file: a process crash loses none, a machine crash
//! may lose the last seconds' (DESIGN.md §3). The crash test
//! `inline_blobs_keep_every_acknowledged_write_through_sigkill` (`cas/tests/blob_crash.rs`)
//! checks it. Callers that need files ([`DiskStore::raw_path`]: the agent's cache, which
//! hard-links them) keep `inline_max` at 0; uploads streamed past the upload buffer
//! (256 KiB) are always files.
//!
//! **Group commit.** Every change of the index (records of new files, inline blobs, removals,
//! written-back access times) is queued, under the index lock, to one [`GroupCommit`], which
//! applies everything queued since its last commit in one transaction, lingering up to
//! `COMMIT_LINGER` (10 ms) for more to join. No write waits for it (see
//! [`Inner::settle_finished`]), unless more than [`PENDING_MAX`] waits, and then it cuts the
//! linger short. Measured with
//! `tessera-bench cas` (20,000 × 4 KiB ByteStream writes, 32 in flight): a commit per blob
//! capped small writes near 5,500/s.
//!
//! **Compression pays only for larger blobs.** Measured on this project's 2-core machine with
//! zstd level 1 (under load, so the times are high but their ratios hold): 4 KiB of random
//! bytes cost 18 µs to find incompressible; 4 KiB of source text cost 137 µs to save 2.7 KB,
//! which a file rounds up to the same 4 KiB block anyway; at 64 KiB and up text saves 70% and
//! mixed build output 27%. So blobs under [`COMPRESS_MIN`] (16 KiB) are never compressed (inline
//! blobs are all raw), and larger ones first compress a [`COMPRESS_PROBE`] sample: only if the
//! sample shrinks by a tenth is the whole blob compressed, and it is kept compressed only if
//! that saves a tenth and at least one 4 KiB block.
//!
//! The files are the truth and the index records a cache of them. At start the two are
//! reconciled: a record without its file is dropped; a file without a record (its record was
//! lost in a crash, or could not be written on a full disk) or disagreeing with it is hashed,
//! on every core, and adopted if its content matches its name. A file is deleted only once it
//! is proven wrong; one that cannot be read, or whose name is not a blob's, is left in place.
//! Inline records and contents are checked against each other by count (free in redb); if the
//! counts differ, each content without a record is hashed and adopted (or removed if wrong) and
//! each record without content dropped. Loading the index never reads blob contents.
//! Records loaded at start are trusted for reads through the store (those hash as they go) and
//! hashed on first use by callers that link the file instead ([`DiskStore::raw_path`],
//! [`DiskStore::find_missing_verified`]); a read of part of a blob already hashed in this
//! process reads that part alone ([`BlobStore::open_range`]), like those callers trusting it.
//!
//! **Mapped reads.** A store opened with [`DiskStoreOptions::map_reads`] (the coordinator's)
//! serves raw files of [`MAP_MIN`] bytes and more from a read-only mapping, each chunk
//! populated before it is handed out (`disk/mapped.rs`): no copy into a buffer of ours.
//!
//! A full file system refuses the blob being written with [`StoreError::OutOfSpace`], leaving
//! nothing behind, and is reported once per episode ([`SpaceWatch`]). A record that cannot be
//! written does not refuse a blob file: the file is in place, the record is retried at the next
//! [`DiskStore::checkpoint`], and the next start adopts the file if it never was. An inline
//! blob whose commit fails was acknowledged already (it is journaled): it is queued again with
//! the next commit, served from memory meanwhile, and its journal kept until a commit holds
//! it. Past [`PENDING_MAX`] of such waiting bytes a write waits for the commits, and is refused
//! with the metadata store's error if they still fail (for a full disk it is then stored as a
//! file).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use super::blob_store::{BlobRead, BlobReader, BlobStore, StoreError, StoreStats, Upload};
use super::index::{self, Entry, Form, INLINE_TABLE, Index, Insert, Victim, now_ms};
use crate::digest::{Digest, DigestFunction, Hasher};
use crate::meta::{Batch, GroupCommit, MetaError, MetadataStore, Queued, Table};
use crate::space::{SpaceWatch, is_out_of_space};
mod hot;
mod journal;
mod link;
mod mapped;

use hot::HotBlobs;
use journal::Journal;

/// Uploads up to this size are held in memory and written in one go.
const BUFFER_LIMIT: usize = 256 * 1024;
/// Bytes per chunk handed out by readers.
const READ_CHUNK: usize = 256 * 1024;
/// Reads of fewer bytes than this are never mapped: a mapping's set-up and tear-down (and the
/// other core's TLB flush) cost more than copying so few.
const MAP_MIN: usize = 1024 * 1024;
/// Bytes per chunk handed out by a mapped read (populated in one call).
const MAPPED_CHUNK: usize = 2 * 1024 * 1024;
/// Bytes of a large upload used to decide whether to keep it compressed.
const COMPRESS_SAMPLE: usize = 32 * 1024;
/// Blobs smaller than this are never compressed at rest (see the module docs).
const COMPRESS_MIN: usize = 16 * 1024;
/// Bytes of a blob written whole that are compressed first to decide whether the rest is.
const COMPRESS_PROBE: usize = 8 * 1024;
/// A blob file is kept compressed only if that saves at least a file system block.
const BLOCK: usize = 4096;
const ZSTD_LEVEL: i32 = 1;
/// How long the index's committer waits for more writes to join a commit: no writer waits
/// for it (see the module docs), and a build tool's uploads arrive one by one, each its own
/// redb commit without it.
const COMMIT_LINGER: Duration = Duration::from_millis(10);
/// Bytes of acknowledged inline blobs that may wait for their commits before writers wait too
/// (each unsettled insert counted as [`UNSETTLED_COST`] more).
const PENDING_MAX: u64 = 32 * 1024 * 1024;
/// What an insert waiting for its commit costs in memory besides its bytes, about.
const UNSETTLED_COST: u64 = 256;

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
    /// Blobs up to this many bytes are kept inline in the metadata store instead of a file
    /// each (see the module docs); 0 keeps every blob a file. At most the upload buffer
    /// (256 KiB) takes effect.
    pub inline_max: u64,
    /// Bytes of blob files stored a moment ago kept in memory as well, so that reads of them
    /// (a build tool downloading the outputs an agent just uploaded) read, decompress and hash
    /// no file (see `disk/hot.rs`); 0 keeps none.
    pub hot_bytes: u64,
    /// Whether reads of large raw blob files map them (`disk/mapped.rs`) instead of reading
    /// them into buffers: no copy on the server beyond the socket's. Only for a store whose
    /// files nothing else holds open for writing or links elsewhere (not an agent's cache,
    /// whose files are hard-linked into actions' inputs): a file truncated while mapped
    /// would end the process with `SIGBUS`.
    pub map_reads: bool,
}

impl DiskStoreOptions {
    /// The inline limit the coordinator uses: the size under which a blob is not worth
    /// compressing (see the module docs). Measured figures (small writes, and the coordinator's
    /// CPU per Bazel action with and without inline blobs) are in the README's `cas` and `bazel`
    /// benchmark sections.
    pub const INLINE_MAX: u64 = 16 * 1024;

    /// Defaults for `root`: no budget, a minute of protection, compression on, every blob a
    /// file (inline off: what callers that link or adopt files need).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DiskStoreOptions {
            root: root.into(),
            budget_bytes: u64::MAX,
            protect_recent: Duration::from_secs(60),
            compress: true,
            inline_max: 0,
            hot_bytes: 0,
            map_reads: false,
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
    inline_max: u64,
    index: Mutex<Index>,
    /// The bytes of inline blobs ([`INLINE_TABLE`]).
    contents: Table,
    /// Every index write goes through it, queued under the index lock.
    commits: GroupCommit,
    /// Inline blobs written since the last checkpoint, so a process crash loses none.
    journal: Journal,
    /// A write found the journal full (see [`Inner::retire_if_due`]).
    retire_due: AtomicBool,
    /// A checkpoint is retiring a full journal.
    retiring: AtomicBool,
    /// Inserts handed to a commit that has not been looked at since, each with that commit
    /// (see [`Inner::settle_finished`]).
    /// In commit order (pushed under the index lock, where commits are queued), so the ones
    /// finished are always a prefix.
    unsettled: Mutex<VecDeque<(Digest, Insert, Queued)>>,
    meta: Arc<dyn MetadataStore>,
    space: SpaceWatch,
    /// Blob files stored a moment ago, whole.
    hot: Mutex<HotBlobs>,
    /// Large raw files are read through a mapping ([`DiskStoreOptions::map_reads`], where
    /// the kernel can populate one).
    map_reads: bool,
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
        let contents = meta.table(INLINE_TABLE)?;
        let index = Index::load(&table, options.budget_bytes, options.protect_recent)?;
        let commits =
            GroupCommit::start_lingering("tessera-blob-commit", Arc::clone(&meta), COMMIT_LINGER)
                .map_err(io_err("failed to start the committer for", &options.root))?;
        let journal_dir = options.root.join("inline-journal");
        let journal =
            Journal::open(&journal_dir).map_err(io_err("failed to open", &journal_dir))?;
        let inner = Inner {
            space: SpaceWatch::new("blobs", &options.root),
            blobs,
            tmp,
            compress: options.compress,
            inline_max: options.inline_max.min(BUFFER_LIMIT as u64),
            index: Mutex::new(index),
            contents,
            commits,
            journal,
            retire_due: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
            unsettled: Mutex::new(VecDeque::new()),
            meta,
            hot: Mutex::new(HotBlobs::new(options.hot_bytes)),
            map_reads: options.map_reads && mapped::supported(),
        };
        inner.reconcile()?;
        inner.replay_journal()?;
        Ok(DiskStore {
            inner: Arc::new(inner),
        })
    }

    /// Writes the records changed since the last call (access times, and records an earlier
    /// write could not store) and flushes the metadata store, so the index survives a crash
    /// as of now and the next start has only the blobs written after this to hash and adopt;
    /// then retires the inline journals that flush covered. Owners call it every few seconds
    /// and at shutdown. Fails (keeping the journals) if an inline blob of them is still waiting
    /// for a commit that succeeds.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.inner.checkpoint()
    }

    /// Like [`BlobStore::write`], but if the blob is kept raw in a file of its own, that file
    /// gets permission bits `mode` before it is installed, so no reader ever sees them change
    /// (the agent stores executable inputs 0555, to hard-link them where an executable is
    /// wanted instead of copying them). A blob already stored keeps its file as it is.
    pub fn write_with_mode(
        &self,
        digest: &Digest,
        data: &[u8],
        mode: u32,
    ) -> Result<(), StoreError> {
        self.write_as(digest, data, Some(mode))
    }

    /// Like [`BlobStore::begin_upload`], with the file's `mode` set as by
    /// [`write_with_mode`](Self::write_with_mode).
    pub fn begin_upload_with_mode(
        &self,
        digest: &Digest,
        mode: u32,
    ) -> Result<Box<dyn Upload>, StoreError> {
        Ok(Box::new(DiskUpload::new(&self.inner, *digest, Some(mode))))
    }

    fn write_as(&self, digest: &Digest, data: &[u8], mode: Option<u32>) -> Result<(), StoreError> {
        digest.verify(data)?;
        // An inline write does its own check (under the same lock as its journal record).
        if !self.inner.is_inline(data.len()) && self.contains(digest) {
            self.touch(std::slice::from_ref(digest));
            return Ok(());
        }
        self.inner.write_whole(*digest, data, mode)
    }

    /// The file holding `digest` if it is stored raw (uncompressed) in a file, for callers that
    /// hard-link blobs into place (the agent's input materialization; open its cache with
    /// `compress: false` and `inline_max: 0`, so every blob is such a file). The file must be treated as read-only. Refreshes the access time.
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
        // Inline blobs are hashed too: their bytes may have been damaged in the database.
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

    /// Hands the writes the index queued to the group commit, then releases the index lock:
    /// queued under it, they reach the store in the order the index made them.
    /// Inline inserts in the outbox are paired with the commit, to be settled once it has run.
    fn commit(&self, mut index: MutexGuard<'_, Index>) -> Queued {
        let queued = self.commits.queue(index.take_outbox());
        let inserts = index.take_unqueued();
        if !inserts.is_empty() {
            let mut unsettled = self
                .unsettled
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            unsettled.extend(
                inserts
                    .into_iter()
                    .map(|(digest, insert)| (digest, insert, queued.clone())),
            );
        }
        drop(index);
        queued
    }

    /// Settles the inserts whose commits have run (never waits). An inline blob written is
    /// read from the store from now on; one whose commit failed was acknowledged, so it is
    /// queued again for the next commit, its bytes still at hand. A blob file's record written
    /// is clean; one that failed stays dirty, written again by the next checkpoint (the file is
    /// in place and served either way, and a start adopts a file without record).
    fn settle_finished(&self) {
        let mut index = self.lock();
        self.settle_locked(&mut index);
    }

    /// [`Inner::settle_finished`] under a hold of the index lock the caller goes on using.
    fn settle_locked(&self, index: &mut Index) {
        let mut unsettled = self
            .unsettled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while let Some(written) = unsettled.front().and_then(|(_, _, q)| q.finished()) {
            let Some((digest, insert, _)) = unsettled.pop_front() else {
                break;
            };
            match (insert, written) {
                (Insert::Inline(number), true) => index.settle_inline(&digest, number, true),
                (Insert::Inline(number), false) => index.requeue_inline(&digest, number),
                (Insert::Record(_), true) => index.recorded(insert.record_of(digest).as_slice()),
                (Insert::Record(_), false) => {
                    tracing::debug!(%digest, "blob index record deferred to the next checkpoint");
                }
            }
        }
    }

    /// Whether more than [`PENDING_MAX`] waits for commits: inline bytes, plus a share for
    /// each insert not yet settled.
    fn behind(&self, index: &Index) -> bool {
        let unsettled = self
            .unsettled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64;
        index.pending_bytes() + unsettled * UNSETTLED_COST > PENDING_MAX
    }

    /// Waits for every commit queued so far (with the index's queue, so failed inline inserts
    /// are retried), then settles them; the last commit's outcome.
    fn catch_up(&self) -> Result<(), MetaError> {
        drop(self.commit(self.lock()));
        let waited = self.commits.barrier().wait();
        self.settle_finished();
        waited
    }

    /// The index lock, once finished commits are settled; while more than [`PENDING_MAX`]
    /// waits for commits, first waits for them ([`Inner::catch_up`]), and fails with the last
    /// commit's error if they still wait.
    fn lock_caught_up(&self) -> Result<MutexGuard<'_, Index>, MetaError> {
        let mut index = self.lock();
        self.settle_locked(&mut index);
        if !self.behind(&index) {
            return Ok(index);
        }
        drop(index);
        let waited = self.catch_up();
        let index = self.lock();
        if !self.behind(&index) {
            return Ok(index);
        }
        Err(waited.err().unwrap_or_else(|| MetaError::Unavailable {
            path: self.journal.dir().to_owned(),
            cause: "inline blobs wait for their commits".into(),
        }))
    }

    /// Whether an inline write of `len` bytes can run on an async thread: nothing to evict,
    /// and no backlog of commits to wait for.
    fn inline_write_is_quick(&self, len: usize) -> bool {
        let index = self.lock();
        index.stored_bytes() + len as u64 <= index.budget && !self.behind(&index)
    }

    /// The bytes of inline blob `digest`: still pending in the index, or from the store.
    /// `None` if neither has them.
    fn inline_content(&self, digest: &Digest) -> Result<Option<Bytes>, StoreError> {
        if let Some(bytes) = self.lock().pending_content(digest) {
            return Ok(Some(bytes));
        }
        Ok(self.contents.get(&index::key(digest))?.map(Bytes::from))
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
            .filter(|(_, e)| e.form.is_file())
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
                    let entry = Entry::fresh(stored, found.form, modified_ms);
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
        let inline = self.reconcile_inline(&mut index)?;
        adopted.extend(inline.adopted);
        let adopted_count = adopted.len();
        let marks = index.adopt(adopted);
        // Nothing else writes yet, so these go straight to the store.
        match self.meta.apply_batch(index.take_outbox()) {
            Ok(()) => index.recorded(&marks),
            Err(error) => {
                tracing::warn!(%error, "could not record adopted blobs yet; retried at the next checkpoint");
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
            inline_lost = inline.lost,
            inline_wrong = inline.wrong,
            took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "blob store opened"
        );
        Ok(())
    }

    /// Reconciles inline records with inline contents. Equal counts mean every record has its
    /// content (they are written and removed together, in one batch), so the contents are
    /// not read; otherwise every content is listed and the odd ones out settled.
    fn reconcile_inline(&self, index: &mut Index) -> Result<InlineReconciled, StoreError> {
        let mut done = InlineReconciled::default();
        let records: HashSet<Digest> = index
            .digests()
            .filter(|(_, e)| e.form == Form::Inline)
            .map(|(d, _)| *d)
            .collect();
        if self.contents.len()? == records.len() {
            return Ok(done);
        }
        let mut with_content = HashSet::new();
        let mut stray = Batch::new();
        for item in self.contents.scan_prefix(b"") {
            let (key, bytes) = item?;
            let digest = index::decode_key(&key);
            match digest {
                Some(digest) if records.contains(&digest) => {
                    with_content.insert(digest);
                }
                Some(digest) if index.get(&digest).is_none() && digest.verify(&bytes).is_ok() => {
                    done.adopted.push((
                        digest,
                        Entry::fresh(bytes.len() as u64, Form::Inline, now_ms()),
                    ));
                }
                _ => {
                    // Wrong bytes, an undecodable key, or a blob also stored as a file.
                    done.wrong += 1;
                    stray.remove(INLINE_TABLE, key);
                }
            }
        }
        for digest in records.difference(&with_content) {
            done.lost += 1;
            tracing::warn!(%digest, "dropping an inline blob record whose content is missing");
            index.remove(digest);
        }
        index.queue(stray);
        Ok(done)
    }

    /// Hashes the stored bytes of `digest` (not under the index lock); marks it verified if
    /// they match, removes it otherwise. Whether the blob is still there.
    fn verify(&self, digest: &Digest, form: Form) -> bool {
        if form == Form::Inline {
            return match self.inline_content(digest) {
                Ok(Some(bytes)) if digest.verify(&bytes).is_ok() => {
                    self.lock().set_verified(digest);
                    true
                }
                Ok(Some(_)) => {
                    self.discard(digest, "inline content does not match the digest");
                    false
                }
                Ok(None) => {
                    self.discard(digest, "inline content missing");
                    false
                }
                // No proof either way; treated as missing for now, and kept.
                Err(_) => false,
            };
        }
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

    /// Drops a blob whose stored bytes failed verification or vanished.
    fn discard(&self, digest: &Digest, reason: &str) {
        let mut index = self.lock();
        let Some(entry) = index.remove(digest) else {
            return;
        };
        tracing::error!(%digest, reason, "removing corrupt blob");
        self.hot().forget(digest);
        if entry.form.is_file() {
            let _ = fs::remove_file(self.path(digest, entry.form));
        }
        if let Err(error) = self.commit(index).wait() {
            // The bytes are gone or wrong either way; the next start drops the stale record.
            tracing::warn!(%digest, %error, "failed to remove blob index record");
        }
    }

    /// Removes the files of blobs eviction chose (still under the index lock, see
    /// [`Inner::install`]); inline victims go with the index's queued writes.
    fn remove_victim_files(&self, victims: &[Victim]) {
        for Victim { digest, form } in victims {
            if form.is_file() {
                let _ = fs::remove_file(self.path(digest, *form));
                self.hot().forget(digest);
            }
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
        // Records need not be written to serve the file, but their queue stays bounded.
        let mut index = self.lock_caught_up().unwrap_or_else(|_| self.lock());
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
        self.remove_victim_files(&victims);
        let path = self.path(&digest, form);
        if let Err(source) = fs::rename(tmp, &path) {
            // The victims' removals still go to the store.
            let queued = self.commit(index);
            let _ = fs::remove_file(tmp);
            let _ = queued.wait();
            return Err(self.write_error("failed to move blob into place at", &path, source));
        }
        let entry = Entry::fresh(stored, form, now);
        index.insert(digest, entry);
        // The blob is in place and served: its record needs no wait (see `settle_finished`).
        drop(self.commit(index));
        self.space.accepted();
        Ok(())
    }

    /// See [`DiskStore::checkpoint`].
    fn checkpoint(&self) -> Result<(), StoreError> {
        // Inline blobs whose commits failed are queued again with this commit.
        self.settle_finished();
        // Queued under the index lock, so a blob evicted or replaced meanwhile cannot have its
        // old record written back after its removal. New inline records go to a fresh journal
        // from here (switched under the same lock, so every record of the ones before belongs
        // to an insert numbered up to `last`, queued before this commit).
        let (queued, marks, covered, last) = {
            let mut index = self.lock();
            let dir = self.journal.dir();
            let covered = self
                .journal
                .rotate()
                .map_err(io_err("failed to switch journals in", dir))?;
            let last = index.inserts();
            let marks = index.queue_dirty();
            (self.commit(index), marks, covered, last)
        };
        queued.wait()?;
        self.lock().recorded(&marks);
        // Other writers' batches queued before ours (ours may be empty, and then is done at
        // once): committed before the flush.
        self.commits.barrier().wait()?;
        // Decided before the flush, in the same hold of the lock as settling: an insert
        // settled later may have been committed after the flush began.
        let keep = {
            let mut index = self.lock();
            self.settle_locked(&mut index);
            index.pending_up_to(last)
        };
        self.meta.flush()?;
        if keep {
            // An acknowledged blob of those journals is not in the store yet (its commit
            // failed and is queued again): they wait for a later checkpoint.
            return Err(StoreError::Meta(MetaError::Unavailable {
                path: self.journal.dir().to_owned(),
                cause: "inline blobs wait for a commit; their journals are kept".into(),
            }));
        }
        for path in covered {
            if let Err(source) = fs::remove_file(&path)
                && source.kind() != std::io::ErrorKind::NotFound
            {
                return Err(StoreError::io("failed to remove", &path, source));
            }
        }
        Ok(())
    }

    /// Stores a small blob inline: appends it to the journal, then queues its record and
    /// bytes for the next group commit, and returns without waiting for that commit: the
    /// journal already keeps the blob through a crash (see [`journal`]), readers are served its
    /// bytes from the index until the commit has run, and a failed commit is queued again
    /// ([`Inner::settle_finished`]). While more than [`PENDING_MAX`] bytes wait for their
    /// commits (a store that falls behind or fails), a write first waits for them, and is
    /// refused if they still wait.
    fn write_inline(&self, digest: Digest, data: &[u8]) -> Result<(), StoreError> {
        // Refused if commits keep failing (a full disk, most often).
        let mut index = self.lock_caught_up()?;
        let now = now_ms();
        if index.touch(&digest, now) {
            // Durable, or journaled before it was listed.
            return Ok(());
        }
        let stored = data.len() as u64;
        let victims = match index.make_room(stored, now) {
            Ok(victims) => victims,
            Err(pinned) => {
                return Err(StoreError::Full {
                    digest,
                    needed: stored,
                    budget: index.budget,
                    pinned,
                });
            }
        };
        self.remove_victim_files(&victims);
        // Under the index lock, just before the blob is listed: see the journal's ordering rule.
        let journaled = match self.journal.append(&digest, data) {
            Ok(size) => size,
            Err(source) => {
                // The victims' removals still go to the store.
                drop(self.commit(index));
                return Err(self.write_error(
                    "failed to append to the inline journal in",
                    self.journal.dir(),
                    source,
                ));
            }
        };
        let entry = Entry::fresh(stored, Form::Inline, now);
        index.insert_inline(digest, entry, Bytes::copy_from_slice(data));
        drop(self.commit(index));
        self.space.accepted();
        if journaled >= journal::RETIRE_BYTES {
            self.retire_due.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Retires a full journal (see [`journal::RETIRE_BYTES`]) if a write asked for it: a
    /// checkpoint on a thread of its own, so the writer does not wait for its flush. Bounds the
    /// journal (and a replay) between the owner's checkpoints.
    fn retire_if_due(self: &Arc<Self>) {
        if !self.retire_due.load(Ordering::Acquire) || self.retiring.swap(true, Ordering::AcqRel) {
            return;
        }
        self.retire_due.store(false, Ordering::Release);
        let inner = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("tessera-journal-retire".into())
            .spawn(move || {
                if let Err(error) = inner.checkpoint() {
                    tracing::warn!(%error, "checkpoint to retire a full inline journal failed");
                }
                inner.retiring.store(false, Ordering::Release);
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "could not start a thread to retire a full inline journal");
            self.retiring.store(false, Ordering::Release);
        }
    }

    /// Restores the inline blobs of journals a crash left (see [`journal`]), one journal at a
    /// time: each whole record whose blob is not stored is added inline, the lot is committed
    /// and flushed, and only then is that journal removed. Runs at open, before anything else
    /// writes. If a journal's blobs cannot be stored (a full disk), it and the later ones are
    /// kept for the next start and the store opens without them.
    fn replay_journal(&self) -> Result<(), StoreError> {
        let dir = self.journal.dir();
        let leftovers = self
            .journal
            .leftovers()
            .map_err(io_err("failed to list the journals in", dir))?;
        let (mut restored, mut no_room, mut torn) = (0usize, 0usize, 0usize);
        for (_, path) in &leftovers {
            let (records, cut) =
                journal::read_journal(path).map_err(io_err("failed to read the journal", path))?;
            if cut {
                torn += 1;
                tracing::warn!(path = %path.display(), "inline journal ends in a partial or damaged record; the records before it are kept");
            }
            match self.replay_records(records) {
                Ok((stored, refused)) => {
                    restored += stored;
                    no_room += refused;
                }
                Err(error) => {
                    self.journal.keep_leftovers();
                    tracing::warn!(%error, path = %path.display(), "could not store the blobs of an inline journal; it and any later ones are kept for the next start");
                    break;
                }
            }
            fs::remove_file(path).map_err(io_err("failed to remove", path))?;
        }
        if !leftovers.is_empty() {
            tracing::info!(
                restored,
                no_room,
                torn_journals = torn,
                journals = leftovers.len(),
                "inline journal replayed"
            );
        }
        Ok(())
    }

    /// Adds the replayed `records` whose blobs are not stored, commits and flushes them.
    /// Returns how many were added and how many found no room.
    fn replay_records(
        &self,
        records: Vec<journal::Replayed>,
    ) -> Result<(usize, usize), StoreError> {
        let mut index = self.lock();
        let now = now_ms();
        let (mut restored, mut victims, mut no_room) = (Vec::new(), Vec::new(), 0usize);
        for record in records {
            if index.touch(&record.digest, now) {
                continue;
            }
            let stored = record.content.len() as u64;
            match index.make_room(stored, now) {
                Ok(more) => victims.extend(more),
                Err(_) => {
                    no_room += 1;
                    continue;
                }
            }
            let entry = Entry::fresh(stored, Form::Inline, now);
            let number = index.insert_inline(record.digest, entry, Bytes::from(record.content));
            restored.push((record.digest, number));
        }
        // Nothing else writes yet, so these go straight to the store (and are settled here).
        let written = self.meta.apply_batch(index.take_outbox());
        index.take_unqueued();
        for (digest, number) in &restored {
            index.settle_inline(digest, *number, written.is_ok());
        }
        drop(index);
        written?;
        // Evicted files go only once their records' removal is stored.
        self.remove_victim_files(&victims);
        self.meta.flush()?;
        Ok((restored.len(), no_room))
    }

    fn tmp_path(&self) -> PathBuf {
        self.tmp.join(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Whether a blob of `len` bytes is kept inline.
    fn is_inline(&self, len: usize) -> bool {
        len > 0 && len as u64 <= self.inline_max
    }

    /// Stores `data` whole: inline if small enough (retiring a full journal afterwards), else
    /// as a file, with permission bits `mode` if given and it is kept raw.
    fn write_whole(
        self: &Arc<Self>,
        digest: Digest,
        data: &[u8],
        mode: Option<u32>,
    ) -> Result<(), StoreError> {
        if self.is_inline(data.len()) {
            let written = self.write_inline(digest, data);
            self.retire_if_due();
            match written {
                // The metadata store is full but the blob directory may have room: a file
                // (whose record waits for the next checkpoint) keeps the blob.
                Err(error) if error.is_out_of_space() => {
                    tracing::debug!(%digest, %error, "inline write refused; storing a file");
                }
                done => return done,
            }
        }
        let compressed = if self.compress {
            compress_if_it_pays(data)
        } else {
            None
        };
        let (form, bytes) = match &compressed {
            Some(c) => (Form::Zstd, c.as_slice()),
            None => (Form::Raw, data),
        };
        let tmp = self.tmp_path();
        let written =
            fs::write(&tmp, bytes).and_then(|()| set_mode_before_install(&tmp, form, mode));
        if let Err(source) = written {
            let _ = fs::remove_file(&tmp);
            return Err(self.write_error("failed to write blob file", &tmp, source));
        }
        self.install(digest, &tmp, form, bytes.len() as u64)?;
        // As for uploads: only a blob kept compressed.
        if compressed.is_some() && self.hot().wants(digest.size_bytes) {
            self.hot().keep(digest, Bytes::copy_from_slice(data));
        }
        Ok(())
    }

    fn hot(&self) -> MutexGuard<'_, HotBlobs> {
        self.hot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What reconciling inline records with inline contents did.
#[derive(Default)]
struct InlineReconciled {
    /// Contents without records that hash to their key: adopted.
    adopted: Vec<(Digest, Entry)>,
    /// Records without contents: dropped.
    lost: usize,
    /// Contents that are not their key's blob: removed.
    wrong: usize,
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
            // Found files are never inline; parsed as raw or zstd only.
            Form::Raw | Form::Inline => hash_all(found.function, &mut file, &mut self.buf),
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

/// Gives the temporary file `tmp` of a blob about to be installed in `form` the permission
/// bits `mode`, if any and the blob is kept raw (a compressed file is never linked, so its
/// mode means nothing).
fn set_mode_before_install(tmp: &Path, form: Form, mode: Option<u32>) -> std::io::Result<()> {
    match mode {
        Some(mode) if form == Form::Raw => {
            fs::set_permissions(tmp, fs::Permissions::from_mode(mode))
        }
        _ => Ok(()),
    }
}

/// The compressed form of a blob written whole, if it pays (see the module docs): the blob is
/// at least [`COMPRESS_MIN`] bytes, a [`COMPRESS_PROBE`] sample of it shrinks by a tenth, and
/// the whole shrinks by a tenth and at least a [`BLOCK`].
fn compress_if_it_pays(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < COMPRESS_MIN {
        return None;
    }
    compress_if_smaller(&data[..data.len().min(COMPRESS_PROBE)])?;
    let compressed = compress_if_smaller(data)?;
    (data.len() - compressed.len() >= BLOCK).then_some(compressed)
}

/// zstd-compresses `data` if that saves at least a tenth of it.
fn compress_if_smaller(data: &[u8]) -> Option<Vec<u8>> {
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
            let present = if entry.form.is_file() {
                self.inner.path(digest, entry.form).exists()
            } else {
                // An error is no proof either way: reported missing, and kept.
                match self.inner.inline_content(digest) {
                    Ok(content) => content.is_some(),
                    Err(_) => {
                        missing.push(*digest);
                        continue;
                    }
                }
            };
            if !present {
                self.inner.discard(digest, "stored bytes missing");
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
        let end = limit.map_or(digest.size_bytes, |limit| {
            offset.saturating_add(limit).min(digest.size_bytes)
        });
        if entry.form == Form::Inline {
            return self.open_inline(digest, offset, end);
        }
        let hot = self.inner.hot().get(digest);
        if let Some(bytes) = hot {
            // Checked on the way in; more parts of it cost nothing.
            return Ok(Some(InlineReader::part(bytes, offset, end, true)));
        }
        let path = self.inner.path(digest, entry.form);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                self.inner.discard(digest, "file missing");
                return Ok(None);
            }
            Err(error) => return Err(StoreError::io("failed to open blob file", &path, error)),
        };
        let reader = DiskReader::start(&self.inner, *digest, entry, file, offset, end)
            .map_err(io_err("failed to open blob file", &path))?;
        Ok(Some(Box::new(reader)))
    }

    fn write(&self, digest: &Digest, data: &[u8]) -> Result<(), StoreError> {
        self.write_as(digest, data, None)
    }

    fn begin_upload(&self, digest: &Digest) -> Result<Box<dyn Upload>, StoreError> {
        Ok(Box::new(DiskUpload::new(&self.inner, *digest, None)))
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

impl DiskStore {
    /// Opens an inline blob: its bytes are hashed whole before any is handed out, so a
    /// damaged one is removed and reads as missing.
    fn open_inline(
        &self,
        digest: &Digest,
        offset: u64,
        end: u64,
    ) -> Result<Option<BlobReader>, StoreError> {
        let Some(bytes) = self.inner.inline_content(digest)? else {
            self.inner.discard(digest, "inline content missing");
            return Ok(None);
        };
        if let Err(error) = digest.verify(&bytes) {
            self.inner.discard(digest, &error.to_string());
            return Ok(None);
        }
        Ok(Some(InlineReader::part(bytes, offset, end, false)))
    }
}

/// Hands out a verified blob in memory (inline, or kept hot) in chunks of at most
/// [`READ_CHUNK`].
struct InlineReader {
    rest: Bytes,
    /// Whether only the part asked for was touched (a hot blob: more parts cost nothing).
    part_only: bool,
}

impl InlineReader {
    /// Hands out `bytes[offset..end]` (both clamped to the blob).
    fn part(bytes: Bytes, offset: u64, end: u64, part_only: bool) -> BlobReader {
        let end = usize::try_from(end).map_or(bytes.len(), |e| e.min(bytes.len()));
        let offset = usize::try_from(offset).map_or(end, |o| o.min(end));
        Box::new(InlineReader {
            rest: bytes.slice(offset..end),
            part_only,
        })
    }
}

impl BlobRead for InlineReader {
    fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let take = self.rest.len().min(READ_CHUNK);
        Ok(Some(self.rest.split_to(take)))
    }

    fn in_memory(&self) -> bool {
        true
    }

    fn reads_part_only(&self) -> bool {
        self.part_only
    }
}

struct EmptyReader;

impl BlobRead for EmptyReader {
    fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        Ok(None)
    }

    fn in_memory(&self) -> bool {
        true
    }
}

/// A read of one blob file. A whole read (and any read of a blob this process has not hashed
/// yet, or keeps compressed) starts at the file's beginning and hashes every byte, handing
/// out those from the offset on; a part of a blob already hashed in this process is read
/// straight from its offset to its end, as [`DiskStore::raw_path`] trusts such a file too.
/// A raw file of a store that maps its reads is mapped instead of read
/// ([`DiskStoreOptions::map_reads`], `disk/mapped.rs`).
struct DiskReader {
    inner: Arc<Inner>,
    digest: Digest,
    source: Source,
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

/// Where a [`DiskReader`]'s bytes come from.
enum Source {
    /// Read (and decompressed) into fresh buffers.
    Read(Box<dyn Read + Send>),
    /// The file's bytes from `pos` (the reader's position when it was mapped) to the end of
    /// the read, mapped: chunks are slices of it, each populated before it is handed out.
    Mapped {
        bytes: Bytes,
        mapping: Arc<mapped::Mapping>,
        from: u64,
    },
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
            source: Source::Read(Box::new(std::io::empty())),
            hasher: Some(digest.function.hasher()),
            pos: 0,
            offset,
            end: digest.size_bytes,
            finished: false,
        };
        match entry.form {
            Form::Raw if part && entry.verified => {
                reader.hasher = None;
                reader.pos = offset;
                reader.end = end;
                reader.source = reader.source_of(file)?;
            }
            // Chunks are read straight into their own buffers, which are as large as the
            // buffer would be: a `BufReader` would only add a copy.
            Form::Raw => reader.source = reader.source_of(file)?,
            Form::Zstd => {
                reader.source = Source::Read(Box::new(zstd::stream::read::Decoder::new(file)?));
            }
            // Opened from the metadata store before a file is looked for.
            Form::Inline => return Err(std::io::Error::other("an inline blob has no file")),
        }
        Ok(reader)
    }

    /// The source for a raw `file` from `pos` to `end`: mapped if the store maps its reads
    /// and the file is exactly the blob's size (a file of another size is read, so that the
    /// read reports it), read otherwise.
    fn source_of(&self, mut file: File) -> std::io::Result<Source> {
        let len = usize::try_from(self.end - self.pos).unwrap_or(0);
        if self.inner.map_reads
            && len >= MAP_MIN
            && file.metadata()?.len() == self.digest.size_bytes
        {
            match mapped::Mapping::map(&file, self.pos, len) {
                Ok(mapping) => {
                    let mapping = Arc::new(mapping);
                    return Ok(Source::Mapped {
                        bytes: Bytes::from_owner(SharedMapping(Arc::clone(&mapping))),
                        mapping,
                        from: self.pos,
                    });
                }
                Err(error) => tracing::debug!(
                    digest = %self.digest,
                    %error,
                    "mapping a blob file failed; reading it"
                ),
            }
        }
        if self.pos > 0 {
            file.seek(SeekFrom::Start(self.pos))?;
        }
        Ok(Source::Read(Box::new(file)))
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
        if let Source::Read(source) = &mut self.source {
            let mut probe = [0u8; 1];
            let extra = match source.read(&mut probe) {
                Ok(n) => n,
                Err(error) => {
                    return Err(self.corrupt(format!("unreadable past the end: {error}")));
                }
            };
            if extra != 0 {
                return Err(self.corrupt("file is longer than the digest's size".into()));
            }
        }
        if let Err(error) = self.digest.verify_against(&hasher.finish_digest()) {
            return Err(self.corrupt(error.to_string()));
        }
        self.inner.lock().set_verified(&self.digest);
        Ok(())
    }

    /// The next bytes of `source`: `want` of them (fewer only at its end) read into a fresh
    /// buffer without first zeroing it, or a populated slice of the mapping of up to
    /// [`MAPPED_CHUNK`] bytes.
    fn read_chunk(&mut self, want: usize) -> std::io::Result<Bytes> {
        match &mut self.source {
            Source::Read(source) => {
                let mut buf = Vec::with_capacity(want);
                source.take(want as u64).read_to_end(&mut buf)?;
                Ok(Bytes::from(buf))
            }
            Source::Mapped {
                bytes,
                mapping,
                from,
            } => {
                let start = usize::try_from(self.pos - *from).map_err(std::io::Error::other)?;
                let end = bytes.len().min(start.saturating_add(MAPPED_CHUNK));
                mapping.populate(start..end)?;
                Ok(bytes.slice(start..end))
            }
        }
    }
}

/// Whether a read failed for a reason that says nothing of the file: memory short for a
/// moment (a mapping's pages are faulted in under the process's memory limit), a signal, or a
/// page of memory (not of the disk) found bad.
fn is_transient(error: &std::io::Error) -> bool {
    use nix::errno::Errno;
    error.raw_os_error().is_some_and(|code| {
        [Errno::ENOMEM, Errno::EAGAIN, Errno::EINTR, Errno::EHWPOISON]
            .iter()
            .any(|errno| *errno as i32 == code)
    })
}

/// A mapping shared by the reader (which populates it) and the `Bytes` handed out.
struct SharedMapping(Arc<mapped::Mapping>);

impl AsRef<[u8]> for SharedMapping {
    fn as_ref(&self) -> &[u8] {
        (*self.0).as_ref()
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
                // Memory short for a moment, or a signal: the file is not at fault.
                Err(error) if is_transient(&error) => {
                    self.finished = true;
                    let path = self.inner.path(&self.digest, Form::Raw);
                    return Err(StoreError::io("failed to read blob file", &path, error));
                }
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
    /// With a sink, a copy of every byte, for the hot blobs (see `disk/hot.rs`), and the
    /// bytes reserved for it there.
    copy: Option<Vec<u8>>,
    reserved: u64,
    /// Permission bits for the file of a blob kept raw, set before it is installed.
    mode: Option<u32>,
}

impl DiskUpload {
    fn new(inner: &Arc<Inner>, digest: Digest, mode: Option<u32>) -> Self {
        DiskUpload {
            inner: Arc::clone(inner),
            digest,
            hasher: digest.function.hasher(),
            buffer: Vec::new(),
            sink: None,
            received: 0,
            copy: None,
            reserved: 0,
            mode,
        }
    }

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
        let compressed = matches!(sink, Sink::Zstd(_));
        self.sink = Some((path, sink));
        let buffered = std::mem::take(&mut self.buffer);
        // Only a blob kept compressed: reading its file costs a decompression besides the
        // hash, which is worth a copy; a raw file is read back nearly as fast as copied.
        if compressed && self.inner.hot().reserve(self.digest.size_bytes) {
            self.reserved = self.digest.size_bytes;
            // Sized once: the reservation bounds what all copies under way may take.
            let mut copy = Vec::with_capacity(usize::try_from(self.reserved).unwrap_or(0));
            copy.extend_from_slice(&buffered);
            self.copy = Some(copy);
        }
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
        if self.reserved > 0 {
            self.inner.hot().release(self.reserved);
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
            if let Some(copy) = &mut self.copy {
                copy.extend_from_slice(data);
            }
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

    fn commits_quickly(&self) -> bool {
        self.sink.is_none()
            && self.inner.is_inline(self.buffer.len())
            && self.inner.inline_write_is_quick(self.buffer.len())
    }

    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        let hasher = std::mem::replace(&mut self.hasher, self.digest.function.hasher());
        self.digest.verify_against(&hasher.finish_digest())?;
        let Some((path, sink)) = self.sink.take() else {
            let buffer = std::mem::take(&mut self.buffer);
            if self.digest.is_empty_blob() {
                return Ok(());
            }
            // An inline write does its own check (under the same lock as its journal record).
            if !self.inner.is_inline(buffer.len())
                && self.inner.lock().touch(&self.digest, now_ms())
            {
                return Ok(());
            }
            return self.inner.write_whole(self.digest, &buffer, self.mode);
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
        if let Err(source) = set_mode_before_install(&path, form, self.mode) {
            let _ = fs::remove_file(&path);
            return Err(StoreError::io("failed to chmod", &path, source));
        }
        self.inner.install(self.digest, &path, form, stored)?;
        if let Some(copy) = self.copy.take() {
            self.inner.hot().keep(self.digest, Bytes::from(copy));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::RedbStore;

    const KIB: usize = 1024;

    fn random(len: usize, seed: u8) -> (Digest, Vec<u8>) {
        let mut data = vec![0u8; len];
        let mut xof = blake3::Hasher::new().update(&[seed]).finalize_xof();
        xof.fill(&mut data);
        (DigestFunction::Sha256.digest_of(&data), data)
    }

    /// A store with inline blobs up to 16 KiB over redb in `dir`, and the metadata store.
    fn open(
        dir: &Path,
        configure: impl FnOnce(&mut DiskStoreOptions),
    ) -> (Arc<RedbStore>, DiskStore) {
        let meta = Arc::new(RedbStore::open(dir.join("meta")).unwrap());
        let mut options = DiskStoreOptions::new(dir.join("cas"));
        options.inline_max = 16 * KIB as u64;
        configure(&mut options);
        let store = DiskStore::open(Arc::clone(&meta) as Arc<dyn MetadataStore>, options).unwrap();
        (meta, store)
    }

    /// Closes as the coordinator does: a last checkpoint (which also retires the journal), the
    /// store dropped, the metadata store flushed and closed.
    fn close(meta: Arc<RedbStore>, store: DiskStore) {
        store.checkpoint().unwrap();
        drop(store);
        meta.flush().unwrap();
        drop(Arc::into_inner(meta).expect("nothing else holds the metadata store"));
    }

    fn blob_files(dir: &Path) -> usize {
        let mut files = 0;
        for function in DigestFunction::ALL {
            for shard in fs::read_dir(dir.join("cas/blobs").join(function.name())).unwrap() {
                files += fs::read_dir(shard.unwrap().path()).unwrap().count();
            }
        }
        files
    }

    fn read_from(store: &DiskStore, digest: &Digest, offset: u64) -> Option<Vec<u8>> {
        let mut reader = store.open(digest, offset).unwrap()?;
        let mut out = Vec::new();
        while let Some(chunk) = reader.next_chunk().unwrap() {
            assert!(!chunk.is_empty());
            out.extend_from_slice(&chunk);
        }
        Some(out)
    }

    fn journal_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir.join("cas/inline-journal"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    /// A metadata store whose commits can be held (until `release`) or refused (`fail`).
    struct Gated {
        inner: RedbStore,
        held: std::sync::Mutex<bool>,
        released: std::sync::Condvar,
        fail: AtomicBool,
        /// Commits that began (held or not).
        entered: AtomicUsize,
        /// Fails the next commit holding this key, once.
        poison: std::sync::Mutex<Option<Vec<u8>>>,
    }

    impl Gated {
        fn over(dir: &Path) -> Arc<Gated> {
            Arc::new(Gated {
                inner: RedbStore::open(dir.join("meta")).unwrap(),
                held: std::sync::Mutex::new(false),
                released: std::sync::Condvar::new(),
                fail: AtomicBool::new(false),
                entered: AtomicUsize::new(0),
                poison: std::sync::Mutex::new(None),
            })
        }

        fn store(self: &Arc<Self>, dir: &Path) -> DiskStore {
            let mut options = DiskStoreOptions::new(dir.join("cas"));
            options.inline_max = 16 * KIB as u64;
            DiskStore::open(Arc::clone(self) as Arc<dyn MetadataStore>, options).unwrap()
        }

        /// Closes `store` and this metadata store, reopens the store in `dir` over plain redb,
        /// and checks that every blob of `blobs` reads back.
        fn close_and_reopen(
            self: Arc<Self>,
            store: DiskStore,
            dir: &Path,
            blobs: &[(&Digest, &[u8])],
        ) {
            drop(store);
            let Ok(gated) = Arc::try_unwrap(self) else {
                panic!("the store is closed");
            };
            gated.inner.flush().unwrap();
            drop(gated);
            let (meta, store) = open(dir, |_| {});
            for (digest, data) in blobs {
                assert_eq!(store.read(digest).unwrap().as_deref(), Some(*data));
            }
            close(meta, store);
        }

        fn release(&self) {
            *self.held.lock().unwrap() = false;
            self.released.notify_all();
        }
    }

    impl MetadataStore for Gated {
        fn table(&self, name: &str) -> Result<Table, MetaError> {
            self.inner.table(name)
        }
        fn apply_batch(&self, batch: Batch) -> Result<(), MetaError> {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let mut held = self.held.lock().unwrap();
            while *held {
                held = self.released.wait(held).unwrap();
            }
            drop(held);
            if self.fail.load(Ordering::SeqCst) {
                return Err(MetaError::Closed);
            }
            let mut poison = self.poison.lock().unwrap();
            let poisoned = poison.as_ref().is_some_and(|key| {
                batch.ops().iter().any(|op| match op {
                    crate::meta::BatchOp::Insert { key: k, .. }
                    | crate::meta::BatchOp::Remove { key: k, .. } => k == key,
                })
            });
            if poisoned {
                *poison = None;
                return Err(MetaError::Closed);
            }
            drop(poison);
            self.inner.apply_batch(batch)
        }
        fn flush(&self) -> Result<(), MetaError> {
            self.inner.flush()
        }
        fn flush_async(&self) -> futures::future::BoxFuture<'static, Result<(), MetaError>> {
            self.inner.flush_async()
        }
        fn dump(&self, except: &[&str]) -> Result<Vec<crate::meta::TableDump>, MetaError> {
            self.inner.dump(except)
        }
    }

    /// An inline write returns once journaled, without waiting for its commit; a commit that
    /// fails is queued again, the blob served meanwhile, and its journal kept until a commit
    /// succeeds; then it is in the store after a restart.
    #[test]
    fn an_inline_write_does_not_wait_for_its_commit_and_a_failed_commit_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let gated = Gated::over(dir.path());
        let store = gated.store(dir.path());
        let (held, held_data) = random(3 * KIB, 21);
        let (refused, refused_data) = random(5 * KIB, 22);

        *gated.held.lock().unwrap() = true;
        store.write(&held, &held_data).unwrap();
        assert_eq!(store.read(&held).unwrap().as_deref(), Some(&held_data[..]));
        gated.fail.store(true, Ordering::SeqCst);
        gated.release();
        store.write(&refused, &refused_data).unwrap();
        assert_eq!(
            store.read(&refused).unwrap().as_deref(),
            Some(&refused_data[..]),
            "served while its commit fails"
        );
        assert!(store.checkpoint().is_err());
        assert_eq!(journal_files(dir.path()).len(), 1, "the journal is kept");
        assert!(store.find_missing(&[held, refused]).is_empty());

        gated.fail.store(false, Ordering::SeqCst);
        store.checkpoint().unwrap();
        assert!(journal_files(dir.path()).is_empty());
        // No journal is left to replay: the blobs are in the store itself.
        gated.close_and_reopen(
            store,
            dir.path(),
            &[(&held, &held_data), (&refused, &refused_data)],
        );
    }

    /// A checkpoint whose own commit succeeds while an earlier writer's commit fails keeps
    /// the journals: that blob is not in the store yet (it is queued again), so deleting its
    /// journal would lose it in a crash. The next checkpoint commits it and retires them.
    #[test]
    fn a_checkpoint_keeps_the_journals_while_an_earlier_commit_failed() {
        let dir = tempfile::tempdir().unwrap();
        let gated = Gated::over(dir.path());
        let store = gated.store(dir.path());
        let (failed, failed_data) = random(3 * KIB, 31);
        let (other, other_data) = random(3 * KIB, 32);
        *gated.held.lock().unwrap() = true;
        let before = gated.entered.load(Ordering::SeqCst);
        store.write(&failed, &failed_data).unwrap();
        while gated.entered.load(Ordering::SeqCst) == before {
            std::thread::yield_now();
        }
        // Its commit is in flight (held); the next writer's waits behind it.
        store.write(&other, &other_data).unwrap();
        *gated.poison.lock().unwrap() = Some(index::key(&failed));
        std::thread::scope(|scope| {
            let checkpoint = scope.spawn(|| store.checkpoint());
            // Let the checkpoint queue its commit and wait on the barrier first.
            std::thread::sleep(Duration::from_millis(300));
            gated.release();
            assert!(
                checkpoint.join().unwrap().is_err(),
                "the failed blob's journal is kept"
            );
        });
        assert_eq!(journal_files(dir.path()).len(), 1);
        assert_eq!(
            store.read(&failed).unwrap().as_deref(),
            Some(&failed_data[..])
        );
        store.checkpoint().unwrap();
        assert!(journal_files(dir.path()).is_empty());
        gated.close_and_reopen(
            store,
            dir.path(),
            &[(&failed, &failed_data), (&other, &other_data)],
        );
    }

    /// An inline write costs no fsync: it is journaled before it returns (also a write of a
    /// blob already stored, and writers racing on one blob), and a checkpoint's flush retires
    /// the journal.
    #[test]
    fn inline_writes_are_journaled_not_flushed_and_a_checkpoint_retires_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, store) = open(dir.path(), |_| {});
        let (digest, data) = random(4 * KIB, 7);
        let before = meta.flushes();
        store.write(&digest, &data).unwrap();
        store.write(&digest, &data).unwrap();
        let (raced, raced_data) = random(2 * KIB, 8);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| store.write(&raced, &raced_data).unwrap());
            }
        });
        assert_eq!(meta.flushes(), before, "inline writes do not flush");
        assert_eq!(
            store.read(&raced).unwrap().as_deref(),
            Some(&raced_data[..])
        );
        assert_eq!(store.stats().blobs, 2);
        let journaled = journal_files(dir.path());
        assert_eq!(journaled.len(), 1);
        let size = fs::metadata(&journaled[0]).unwrap().len();
        assert!(
            size >= (6 * KIB) as u64,
            "both blobs journaled ({size} bytes)"
        );

        store.checkpoint().unwrap();
        assert!(meta.flushes() > before);
        assert!(
            journal_files(dir.path()).is_empty(),
            "retired by the checkpoint"
        );
        // A checkpoint with nothing written since leaves no journal either.
        store.checkpoint().unwrap();
        assert!(journal_files(dir.path()).is_empty());
        close(meta, store);
    }

    /// A journal left by a crash restores its blobs at open: the whole records whose blobs
    /// are not stored, inline and readable; a record cut short is dropped; the journal goes.
    #[test]
    fn a_journal_left_by_a_crash_is_replayed_at_open() {
        let written = tempfile::tempdir().unwrap();
        let (meta, store) = open(written.path(), |_| {});
        let (kept, kept_data) = random(3 * KIB, 40);
        let (cut, cut_data) = random(5 * KIB, 41);
        store.write(&kept, &kept_data).unwrap();
        store.write(&cut, &cut_data).unwrap();
        let journal = fs::read(&journal_files(written.path())[0]).unwrap();
        close(meta, store);

        // A store that never saw these blobs, with that journal (its last record cut short,
        // as a kill mid-append leaves it).
        let crashed = tempfile::tempdir().unwrap();
        let (meta, store) = open(crashed.path(), |_| {});
        close(meta, store);
        fs::write(
            crashed
                .path()
                .join("cas/inline-journal/journal-00000000000000000007"),
            &journal[..journal.len() - 10],
        )
        .unwrap();
        let (meta, store) = open(crashed.path(), |_| {});
        assert_eq!(store.find_missing(&[kept, cut]), [cut]);
        assert_eq!(store.read(&kept).unwrap().as_deref(), Some(&kept_data[..]));
        assert!(journal_files(crashed.path()).is_empty());
        assert_eq!(blob_files(crashed.path()), 0, "restored inline");
        // Durable before the journal went: still there after another restart.
        close(meta, store);
        let (_meta, store) = open(crashed.path(), |_| {});
        assert_eq!(store.read(&kept).unwrap().as_deref(), Some(&kept_data[..]));
    }

    #[test]
    fn small_blobs_are_inline_read_back_from_any_offset_and_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, store) = open(dir.path(), |_| {});
        let inline = [random(1, 1), random(4 * KIB, 2), random(16 * KIB, 3)];
        let file = random(16 * KIB + 1, 4);
        for (digest, data) in inline.iter().chain([&file]) {
            store.write(digest, data).unwrap();
        }
        // A buffered upload of a small blob goes inline too.
        let uploaded = random(3 * KIB, 5);
        let mut upload = store.begin_upload(&uploaded.0).unwrap();
        for piece in uploaded.1.chunks(1000) {
            upload.write(piece).unwrap();
        }
        upload.commit().unwrap();

        assert_eq!(
            blob_files(dir.path()),
            1,
            "only the blob over the limit is a file"
        );
        for (digest, data) in inline.iter().chain([&file, &uploaded]) {
            assert_eq!(store.read(digest).unwrap().unwrap(), &data[..]);
            let len = data.len() as u64;
            for offset in [0, 1, len / 2, len - 1, len, len + 7] {
                let from = usize::try_from(offset.min(len)).unwrap();
                assert_eq!(read_from(&store, digest, offset).unwrap(), &data[from..]);
            }
        }
        assert_eq!(
            store.raw_path(&inline[1].0),
            None,
            "an inline blob has no file"
        );
        let all: Vec<Digest> = inline
            .iter()
            .chain([&file, &uploaded])
            .map(|b| b.0)
            .collect();
        assert_eq!(store.find_missing_checked(&all), vec![]);
        assert_eq!(store.find_missing_verified(&all), vec![]);
        let stats = store.stats();
        let bytes: u64 = inline
            .iter()
            .chain([&file, &uploaded])
            .map(|b| b.1.len() as u64)
            .sum();
        assert_eq!(
            (stats.blobs, stats.logical_bytes, stats.stored_bytes),
            (5, bytes, bytes)
        );

        // All of it after a restart, from the metadata store.
        close(meta, store);
        let (_meta, store) = open(dir.path(), |_| {});
        assert_eq!(store.stats(), stats);
        for (digest, data) in inline.iter().chain([&file, &uploaded]) {
            assert_eq!(store.read(digest).unwrap().unwrap(), &data[..]);
        }
    }

    #[test]
    fn inline_blobs_count_in_the_budget_and_are_evicted_with_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, store) = open(dir.path(), |o| {
            o.budget_bytes = 50 * KIB as u64;
            o.protect_recent = Duration::ZERO;
        });
        let blobs: Vec<(Digest, Vec<u8>)> = (0..6).map(|n| random(10 * KIB, 10 + n)).collect();
        for (digest, data) in &blobs {
            store.write(digest, data).unwrap();
            // Distinct access times, so least-recently-used order is not left to ties.
            std::thread::sleep(Duration::from_millis(3));
        }
        // The sixth did not fit: eviction freed down to 90% of the budget, oldest first.
        let present: Vec<bool> = blobs.iter().map(|(d, _)| store.contains(d)).collect();
        assert_eq!(present, [false, false, true, true, true, true]);
        let stats = store.stats();
        assert_eq!(
            (stats.blobs, stats.evicted, stats.stored_bytes),
            (4, 2, 40 * KIB as u64)
        );
        // Writes do not wait for their commits: a checkpoint does.
        store.checkpoint().unwrap();
        let contents = meta.table(INLINE_TABLE).unwrap();
        assert_eq!(contents.len().unwrap(), 4, "evicted contents are removed");
        assert!(matches!(
            store.write(&random(51 * KIB, 20).0, &random(51 * KIB, 20).1),
            Err(StoreError::Full { .. })
        ));
    }

    #[test]
    fn a_restart_drops_records_without_content_and_adopts_content_without_record() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, store) = open(dir.path(), |_| {});
        let (lost, kept, orphan, wrong) = (
            random(100, 30),
            random(200, 31),
            random(300, 32),
            random(400, 33),
        );
        store.write(&lost.0, &lost.1).unwrap();
        store.write(&kept.0, &kept.1).unwrap();
        close(meta, store);
        {
            // Behind the store's back: a content removed, one added without a record, and one
            // added under a key its bytes do not hash to.
            let meta = RedbStore::open(dir.path().join("meta")).unwrap();
            let contents = meta.table(INLINE_TABLE).unwrap();
            contents.remove(&index::key(&lost.0)).unwrap();
            contents.insert(&index::key(&orphan.0), &orphan.1).unwrap();
            contents.insert(&index::key(&wrong.0), &orphan.1).unwrap();
            meta.flush().unwrap();
        }
        let (meta, store) = open(dir.path(), |_| {});
        assert_eq!(
            store.find_missing(&[lost.0, kept.0, orphan.0, wrong.0]),
            [lost.0, wrong.0]
        );
        assert_eq!(store.read(&orphan.0).unwrap().unwrap(), &orphan.1[..]);
        assert_eq!(store.read(&kept.0).unwrap().unwrap(), &kept.1[..]);
        let contents = meta.table(INLINE_TABLE).unwrap();
        assert!(
            contents.get(&index::key(&wrong.0)).unwrap().is_none(),
            "wrong bytes removed"
        );
        assert_eq!(store.stats().blobs, 2);
        // The orphan's record was written: the next start finds records and contents agreeing.
        drop(contents);
        close(meta, store);
        let (meta, store) = open(dir.path(), |_| {});
        assert_eq!(store.stats().blobs, 2);
        let records = meta.table(index::TABLE).unwrap().len().unwrap();
        assert_eq!(
            (records, meta.table(INLINE_TABLE).unwrap().len().unwrap()),
            (2, 2)
        );
    }

    #[test]
    fn damaged_or_missing_inline_content_reads_as_missing_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, store) = open(dir.path(), |_| {});
        let (damaged, vanished) = (random(4 * KIB, 40), random(4 * KIB, 41));
        store.write(&damaged.0, &damaged.1).unwrap();
        store.write(&vanished.0, &vanished.1).unwrap();
        // Committed and settled: from here their bytes are read from the database.
        store.checkpoint().unwrap();
        let contents = meta.table(INLINE_TABLE).unwrap();
        let mut bytes = damaged.1.clone();
        bytes[100] ^= 0xff;
        contents.insert(&index::key(&damaged.0), &bytes).unwrap();
        contents.remove(&index::key(&vanished.0)).unwrap();

        assert_eq!(store.read(&damaged.0).unwrap(), None);
        assert!(!store.contains(&damaged.0));
        assert_eq!(store.find_missing_checked(&[vanished.0]), [vanished.0]);
        assert!(!store.contains(&vanished.0));
        assert_eq!(store.stats().blobs, 0);
        // Removal took the record too; a fresh upload repairs the miss.
        store.checkpoint().unwrap();
        assert!(meta.table(index::TABLE).unwrap().is_empty().unwrap());
        store.write(&damaged.0, &damaged.1).unwrap();
        assert_eq!(store.read(&damaged.0).unwrap().unwrap(), &damaged.1[..]);
    }

    #[test]
    fn compression_is_kept_only_for_large_blobs_whose_sample_shrinks() {
        let text: Vec<u8> = b"fn main() { println!(\"hello\"); }\n".repeat(2_000);
        assert!(
            compress_if_it_pays(&text[..12 * KIB]).is_none(),
            "under 16 KiB"
        );
        assert!(compress_if_it_pays(&text[..32 * KIB]).is_some());
        // Noise first: the sample says no, so the compressible rest is not even tried.
        let mut mixed = random(8 * KIB, 50).1;
        mixed.extend_from_slice(&text[..56 * KIB]);
        assert!(compress_if_it_pays(&mixed).is_none());
        assert!(compress_if_it_pays(&random(64 * KIB, 51).1).is_none());
    }

    #[test]
    fn uploads_give_back_what_they_reserved_for_hot_copies() {
        let dir = tempfile::tempdir().unwrap();
        let (_meta, store) = open(dir.path(), |o| o.hot_bytes = 4 * 1024 * KIB as u64);
        // Twenty uploads of 600 KiB one after another: 12 MiB through a 4 MiB budget. One
        // dropped unfinished and one refused at commit give theirs back too.
        let mut last = None;
        for n in 0..20u8 {
            let data: Vec<u8> =
                format!("line {n}\n").repeat(600 * KIB / 7 + 1).as_bytes()[..600 * KIB].to_vec();
            let digest = DigestFunction::Sha256.digest_of(&data);
            let mut upload = store.begin_upload(&digest).unwrap();
            upload.write(&data[..300 * KIB]).unwrap();
            match n {
                5 => drop(upload),
                6 => {
                    upload.write(&random(300 * KIB, 99).1).unwrap();
                    assert!(upload.commit().is_err(), "wrong bytes");
                }
                _ => {
                    upload.write(&data[300 * KIB..]).unwrap();
                    upload.commit().unwrap();
                    last = Some((digest, data));
                }
            }
        }
        let (digest, data) = last.unwrap();
        fs::write(store.inner.path(&digest, Form::Zstd), b"damaged").unwrap();
        assert_eq!(
            store.read(&digest).unwrap().as_deref(),
            Some(&data[..]),
            "the last upload was still kept in memory"
        );
    }

    #[test]
    fn blob_files_stored_a_moment_ago_are_read_from_memory_when_kept_hot() {
        let text: Vec<u8> = b"fn main() { println!(\"hello\"); }\n".repeat(30_000);
        let digest = DigestFunction::Sha256.digest_of(&text);
        let raw: Vec<u8> = b"let x = 1;\n".repeat(30_000);
        let raw_digest = DigestFunction::Sha256.digest_of(&raw);
        let (random_digest, random_data) = random(300 * KIB, 60);
        for hot_bytes in [0, 64 * 1024 * 1024] {
            let dir = tempfile::tempdir().unwrap();
            let (_meta, store) = open(dir.path(), |o| o.hot_bytes = hot_bytes);
            // One streamed (and kept compressed), one written whole.
            let mut upload = store.begin_upload(&digest).unwrap();
            for piece in text.chunks(64 * KIB) {
                upload.write(piece).unwrap();
            }
            upload.commit().unwrap();
            store.write(&raw_digest, &raw).unwrap();
            store.write(&random_digest, &random_data).unwrap();
            let zst = store.inner.path(&digest, Form::Zstd);
            assert!(zst.exists(), "kept compressed on disk");
            // Damage the files: a read from disk notices, one from memory never reads them.
            fs::write(&zst, b"damaged").unwrap();
            fs::write(store.inner.path(&raw_digest, Form::Zstd), b"damaged").unwrap();
            fs::write(store.inner.path(&random_digest, Form::Raw), b"damaged").unwrap();
            // A blob kept raw is never copied: read from its file.
            assert_eq!(store.read(&random_digest).unwrap(), None);
            if hot_bytes == 0 {
                assert_eq!(store.read(&digest).unwrap(), None);
                assert_eq!(store.read(&raw_digest).unwrap(), None);
                continue;
            }
            assert_eq!(store.read(&digest).unwrap().as_deref(), Some(&text[..]));
            assert_eq!(store.read(&raw_digest).unwrap().as_deref(), Some(&raw[..]));
            let mut part = store.open_range(&digest, 10, Some(20)).unwrap().unwrap();
            assert!(part.in_memory() && part.reads_part_only());
            assert_eq!(part.next_chunk().unwrap().as_deref(), Some(&text[10..30]));
            assert_eq!(part.next_chunk().unwrap(), None);
            // A blob the index no longer has is not served from memory either.
            store.inner.discard(&raw_digest, "test");
            assert_eq!(store.read(&raw_digest).unwrap(), None);
        }
    }

    /// Whether `chunk` lies in a mapping of the file at `path` (from `/proc/self/maps`).
    fn mapped_from(chunk: &[u8], path: &Path) -> bool {
        let address = chunk.as_ptr().addr();
        let path = fs::canonicalize(path).unwrap();
        fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter(|line| line.ends_with(&*path.to_string_lossy()))
            .filter_map(|line| line.split_whitespace().next()?.split_once('-'))
            .any(|(start, end)| {
                let start = usize::from_str_radix(start, 16).unwrap();
                let end = usize::from_str_radix(end, 16).unwrap();
                (start..end).contains(&address) && address + chunk.len() <= end
            })
    }

    #[test]
    fn large_raw_files_are_read_through_a_mapping_where_the_store_maps_reads() {
        let size = MAP_MIN + MAPPED_CHUNK + 4321;
        let (digest, data) = random(size, 9);
        for map_reads in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (_meta, store) = open(dir.path(), |options| options.map_reads = map_reads);
            store.write(&digest, &data).unwrap();
            let path = store.inner.path(&digest, Form::Raw);
            assert!(path.exists(), "kept raw");
            // A whole read (hashing) and, the blob now verified, a part from an odd offset.
            for (offset, limit) in [(0, None), (4097, Some(MAPPED_CHUNK as u64 + 10))] {
                let mut reader = store.open_range(&digest, offset, limit).unwrap().unwrap();
                let mut out = Vec::new();
                while let Some(chunk) = reader.next_chunk().unwrap() {
                    // Where the kernel cannot populate a mapping, the store maps nothing.
                    assert_eq!(
                        mapped_from(&chunk, &path),
                        store.inner.map_reads,
                        "map_reads {map_reads}, offset {offset}: a chunk of {} bytes",
                        chunk.len()
                    );
                    out.extend_from_slice(&chunk);
                }
                let end = limit.map_or(size, |limit| offset as usize + limit as usize);
                assert!(out == data[offset as usize..end], "offset {offset}");
            }
            // A small one is read as before.
            let (small, small_data) = random(MAP_MIN - 1, 10);
            store.write(&small, &small_data).unwrap();
            let mut reader = store.open(&small, 0).unwrap().unwrap();
            let chunk = reader.next_chunk().unwrap().unwrap();
            assert!(!mapped_from(&chunk, &store.inner.path(&small, Form::Raw)));
        }
    }

    /// A file of the wrong size is not mapped (touching a mapping past a file's end would
    /// raise SIGBUS): it is read, and found corrupt as it would be without mapping.
    #[test]
    fn a_mapped_store_reads_a_file_of_the_wrong_size_and_finds_it_corrupt() {
        let size = 2 * MAP_MIN;
        let (digest, data) = random(size, 11);
        let dir = tempfile::tempdir().unwrap();
        let (_meta, store) = open(dir.path(), |options| options.map_reads = true);
        store.write(&digest, &data).unwrap();
        let path = store.inner.path(&digest, Form::Raw);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(size as u64 / 2)
            .unwrap();
        let mut reader = store.open_range(&digest, 0, None).unwrap().unwrap();
        let error = loop {
            match reader.next_chunk() {
                Ok(Some(chunk)) => assert!(!mapped_from(&chunk, &path)),
                Ok(None) => panic!("a short file was read to its end"),
                Err(error) => break error,
            }
        };
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
        assert!(!store.contains(&digest));
    }

    #[test]
    fn a_files_mode_is_set_before_it_is_installed_and_a_stored_blob_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        // Raw files only (no inline blobs, no compression), as the agent's cache.
        let (_meta, store) = open(dir.path(), |options| {
            options.inline_max = 0;
            options.compress = false;
        });
        let mode_of = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        let function = DigestFunction::Sha256;

        // Written whole, and uploaded small (buffered) and large (through a file).
        let small = b"#!/bin/sh\ntrue\n".to_vec();
        let large = vec![7u8; 3 * BUFFER_LIMIT];
        let tool = function.digest_of(&small);
        store.write_with_mode(&tool, &small, 0o555).unwrap();
        assert_eq!(mode_of(&store.raw_path(&tool).unwrap()), 0o555);
        for (data, mode) in [(b"data".to_vec(), 0o444), (large.clone(), 0o555)] {
            let digest = function.digest_of(&data);
            let mut upload = store.begin_upload_with_mode(&digest, mode).unwrap();
            upload.write(&data).unwrap();
            upload.commit().unwrap();
            assert_eq!(mode_of(&store.raw_path(&digest).unwrap()), mode);
        }

        // An upload that another writer beats to the same blob leaves that writer's file, and
        // its mode, alone.
        let other = vec![9u8; 2 * BUFFER_LIMIT];
        let digest = function.digest_of(&other);
        let mut late = store.begin_upload_with_mode(&digest, 0o444).unwrap();
        late.write(&other).unwrap();
        store.write_with_mode(&digest, &other, 0o555).unwrap();
        late.commit().unwrap();
        assert_eq!(mode_of(&store.raw_path(&digest).unwrap()), 0o555);
        store.write_with_mode(&digest, &other, 0o444).unwrap();
        assert_eq!(mode_of(&store.raw_path(&digest).unwrap()), 0o555);
    }
}

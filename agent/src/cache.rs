//! The agent's local blob cache: blobs fetched from the coordinator's CAS, kept on disk under the
//! work directory so the next action that needs them costs a hard link, not a download.
//!
//! A [`DiskStore`] without compression (so every blob is a plain file that can be hard-linked)
//! over a redb index in `cache-meta/`, evicting least recently used blobs beyond a byte budget.
//! Blobs an action is using are pinned for as long as its [`CachePins`] lives, so eviction
//! never pulls an input from under a materialization. Downloads: small blobs in
//! `BatchReadBlobs` calls, large ones through ByteStream, a few at a time. A blob the CAS does
//! not have is reported as missing, by digest. Does not lay out trees (see `materialize`).
//!
//! An action's outputs enter the cache as they are uploaded ([`LocalCache::keep_output`]), so
//! the next action on this agent that takes them as inputs (a job's list and batch steps after
//! its prepare step) finds them here and downloads nothing. A file that is only the exec
//! root's (one link; the action has ended, so nothing writes it again) becomes the blob by
//! hard link, checked to be the very file that was hashed; its mode is set as a cached blob's
//! first (0444, or 0555 for an executable, which then also serves as its own executable twin,
//! see [`LocalCache::executable_path_of`]). A file with other links (a prepared file
//! hard-linked from cargo's persistent `target`, see `step`) is copied instead: the cache must
//! never change the mode of a file it does not own (rustc refuses to overwrite a read-only
//! output), and cannot know what else writes it.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tessera_cas::client::{CasClient, ClientError};
use tessera_cas::digest::Digest;
use tessera_cas::meta::{MetaError, MetadataStore, RedbStore};
use tessera_cas::store::{BlobStore, DiskStore, DiskStoreOptions, PinGuard, StoreError};
use thiserror::Error;

use crate::metrics::CacheMeters;

/// How long opening the cache waits for its database while another process holds it (the
/// stand-ins of an agent killed mid-spawn let go within milliseconds; a second agent on the
/// same work directory is refused after this).
const LOCKED_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);
/// Blobs up to this size are fetched in batches.
const BATCH_BLOB_MAX: u64 = 1024 * 1024;
/// Most bytes asked for in one `BatchReadBlobs` call: below every common server limit (4 MiB).
const BATCH_TOTAL_MAX: u64 = 2 * 1024 * 1024;
/// Download calls in flight at once per lease.
const DOWNLOADS_IN_FLIGHT: usize = 4;
/// Mode of a cached blob kept from a non-executable output: read-only, as `materialize` makes
/// every blob it links.
const BLOB_MODE: u32 = 0o444;
/// Mode of a cached blob kept from an executable output, and of every executable twin.
const EXECUTABLE_MODE: u32 = 0o555;
/// Bytes read at a time when an output is copied into the cache.
const COPY_CHUNK: usize = 1024 * 1024;

/// Blobs used this recently are not evicted even if unpinned (a blob just written and not yet
/// pinned, for one).
const PROTECT_RECENT: Duration = Duration::from_secs(10);

/// Why blobs could not be brought into the cache.
#[derive(Debug, Error)]
pub enum FetchError {
    /// The CAS does not have these blobs.
    #[error("missing from the CAS: {}", list(.0))]
    Missing(Vec<Digest>),
    /// Talking to the CAS failed.
    #[error("failed to fetch from the CAS: {0}")]
    Cas(#[from] ClientError),
    /// The local store failed (disk error, or no room within the budget).
    #[error("local cache: {0}")]
    Store(#[from] StoreError),
    /// A blob was evicted between download and use: the budget is too small for the inputs
    /// of the actions running at once.
    #[error("blob {0} was evicted before use (local cache budget too small?)")]
    Evicted(Digest),
    /// A blocking task failed.
    #[error("local cache task failed: {0}")]
    Task(String),
}

fn list(digests: &[Digest]) -> String {
    let shown: Vec<String> = digests.iter().take(5).map(Digest::to_string).collect();
    let more = digests.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// How [`LocalCache::keep_output`] kept an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// The output file became the blob (a hard link): no bytes copied.
    Linked,
    /// The output file is shared with something outside the exec root (or on another file
    /// system): its bytes were copied in.
    Copied,
    /// The cache had the blob already.
    Present,
    /// The file is not what was hashed any more: not kept.
    Changed,
}

/// Why an output could not be kept in the cache (the lease goes on: it only costs a download
/// later).
#[derive(Debug, Error)]
pub enum KeepError {
    /// The output file could not be read or its mode set.
    #[error("failed to {op} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store refused it (no room within the budget, a disk error).
    #[error("local cache: {0}")]
    Store(#[from] StoreError),
}

/// Why the cache could not be opened.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The index could not be opened.
    #[error("failed to open the cache index: {0}")]
    Meta(#[from] MetaError),
    /// The blob directory could not be opened.
    #[error("failed to open the cache: {0}")]
    Store(#[from] StoreError),
    /// The directory of executable twins could not be reset.
    #[error("failed to reset the cache's executable copies: {0}")]
    Io(std::io::Error),
}

/// Keeps blobs from eviction while an action uses them.
#[derive(Default)]
pub struct CachePins {
    _guards: Vec<PinGuard>,
}

impl std::fmt::Debug for CachePins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachePins")
            .field("guards", &self._guards.len())
            .finish()
    }
}

/// The local blob cache.
#[derive(Clone)]
pub struct LocalCache {
    store: DiskStore,
    /// Executable twins of cached blobs (mode 0555), made on first use and hard-linked into
    /// exec roots after that; emptied when the cache opens, so they live one agent run.
    exec_dir: PathBuf,
    /// `tessera_agent_cache_bytes` and `tessera_agent_fetch_bytes_total` (see `metrics`).
    meters: CacheMeters,
}

impl std::fmt::Debug for LocalCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCache")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl LocalCache {
    /// Opens (creating) the cache: blobs under `dir/cache`, index under `dir/cache-meta`.
    /// Blocking.
    pub fn open(dir: &Path, budget_bytes: u64) -> Result<Self, OpenError> {
        let meta_dyn: Arc<dyn MetadataStore> = Arc::new(RedbStore::open_waiting(
            dir.join("cache-meta"),
            LOCKED_PATIENCE,
        )?);
        let options = DiskStoreOptions {
            root: dir.join("cache"),
            budget_bytes,
            protect_recent: PROTECT_RECENT,
            compress: false,
            // Every blob a file: materialization hard-links them (`DiskStore::raw_path`).
            inline_max: 0,
            // Read by linking, not through the store.
            hot_bytes: 0,
            // Its files are hard-linked into actions' inputs: never mapped (a file truncated
            // through a link while mapped would end the agent).
            map_reads: false,
        };
        let store = DiskStore::open(meta_dyn, options)?;
        let exec_dir = dir.join("cache-exec");
        // Twins of blobs evicted since the last run would never be removed otherwise.
        match std::fs::remove_dir_all(&exec_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(OpenError::Io(e)),
        }
        std::fs::create_dir_all(&exec_dir).map_err(OpenError::Io)?;
        Ok(LocalCache {
            store,
            exec_dir,
            meters: CacheMeters::default(),
        })
    }

    /// Reports the cache's size and downloads to `meters` from now on.
    pub fn with_meters(mut self, meters: CacheMeters) -> Self {
        self.meters = meters;
        self.report_size();
        self
    }

    /// Sets the size gauge from the store (after writes, which may also evict).
    fn report_size(&self) {
        let bytes = self.store.stats().stored_bytes;
        self.meters
            .bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// A read-only executable (0555) file with the cached blob `digest`, made once per agent
    /// run, so executables are hard-linked into exec roots instead of copied for every action
    /// (test binaries are large). A blob kept from an executable output is 0555 already and is
    /// linked as its own twin; any other is copied once. `None` if the blob is not cached.
    pub fn executable_path_of(&self, digest: &Digest) -> std::io::Result<Option<PathBuf>> {
        let twin = self.twin_path(digest, "");
        match fs::symlink_metadata(&twin) {
            Ok(meta) if meta.permissions().mode() & 0o7777 == EXECUTABLE_MODE => {
                return Ok(Some(twin));
            }
            // Never expected (blob modes are set before the blobs are installed); made again
            // rather than handed out without its execute bits.
            Ok(meta) => {
                let mode = format!("{:o}", meta.permissions().mode() & 0o7777);
                tracing::warn!(
                    twin = %twin.display(),
                    %mode,
                    "an executable twin lost its mode; making it again"
                );
                fs::remove_file(&twin)?;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let Some(blob) = self.store.raw_path(digest) else {
            return Ok(None);
        };
        let temp = self.twin_temp();
        let mode = fs::metadata(&blob)?.permissions().mode() & 0o7777;
        if mode != EXECUTABLE_MODE || fs::hard_link(&blob, &temp).is_err() {
            copy_with_mode(&blob, &temp, EXECUTABLE_MODE)?;
        }
        fs::rename(&temp, &twin)?;
        Ok(Some(twin))
    }

    /// The file holding `digest`, if cached, for callers that hard-link it and make it
    /// read-only (0444) first (`materialize`, for non-executable inputs). A blob kept from an
    /// executable output is its own executable twin, which must keep mode 0555: for it, a
    /// read-only copy is made once per agent run instead.
    pub fn path_of(&self, digest: &Digest) -> Option<PathBuf> {
        let blob = self.store.raw_path(digest)?;
        let executable = fs::metadata(&blob)
            .map(|m| m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if !executable {
            return Some(blob);
        }
        let copy = self.twin_path(digest, "-r");
        if copy.exists() {
            return Some(copy);
        }
        let temp = self.twin_temp();
        match copy_with_mode(&blob, &temp, BLOB_MODE).and_then(|()| fs::rename(&temp, &copy)) {
            Ok(()) => Some(copy),
            Err(error) => {
                let _ = fs::remove_file(&temp);
                tracing::warn!(%digest, %error, "failed to make a read-only copy of an executable blob");
                None
            }
        }
    }

    /// Where a twin of `digest` lives: `suffix` "" for the executable one, "-r" for the
    /// read-only copy of an executable blob.
    fn twin_path(&self, digest: &Digest, suffix: &str) -> PathBuf {
        self.exec_dir.join(format!(
            "{}-{}-{}{suffix}",
            digest.function.name(),
            digest.hash_hex(),
            digest.size_bytes,
        ))
    }

    fn twin_temp(&self) -> PathBuf {
        self.exec_dir
            .join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Keeps the output file at `path`, which the caller hashed to `digest`, in the cache (see
    /// the module docs): linked when only the exec root holds it, copied otherwise. `hashed` is
    /// the file's metadata taken after it was hashed, and the caller vouches that the file was
    /// not modified after hashing began; a file that changed since is not kept. Call only once
    /// the action that wrote it has ended. Blocking.
    pub fn keep_output(
        &self,
        digest: &Digest,
        path: &Path,
        hashed: &fs::Metadata,
    ) -> Result<Kept, KeepError> {
        if self.store.contains(digest) {
            self.store.touch(std::slice::from_ref(digest));
            return Ok(Kept::Present);
        }
        let io = |op| {
            move |source| KeepError::Io {
                op,
                path: path.to_owned(),
                source,
            }
        };
        let executable = hashed.mode() & 0o111 != 0;
        let mode = if executable {
            EXECUTABLE_MODE
        } else {
            BLOB_MODE
        };
        let now = fs::symlink_metadata(path).map_err(io("stat"))?;
        let kept = if now.nlink() == 1 && now.ino() == hashed.ino() {
            // The same inode: the exec root's link gets the blob's mode too, which is fine,
            // since the action is over. chmod moves only the change time, which is not checked.
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io("chmod"))?;
            match self.store.link_hashed(digest, path, hashed) {
                Ok(true) => Kept::Linked,
                Ok(false) => return Ok(Kept::Changed),
                // Another file system (an overlay exec root), the link-count limit, or links
                // refused (protected_hardlinks): the bytes are copied instead.
                Err(StoreError::Io { source, .. }) if link_refused(&source) => {
                    self.copy_in(digest, path, mode)?
                }
                Err(error) => return Err(error.into()),
            }
        } else {
            self.copy_in(digest, path, mode)?
        };
        self.report_size();
        Ok(kept)
    }

    /// Streams the file at `path` into the store as `digest` (verified as it is written), then
    /// gives the blob `mode`.
    fn copy_in(&self, digest: &Digest, path: &Path, mode: u32) -> Result<Kept, KeepError> {
        let io = |op| {
            move |source| KeepError::Io {
                op,
                path: path.to_owned(),
                source,
            }
        };
        if self.store.contains(digest) {
            // Never chmod a blob someone else stored: it may be an executable's 0555 twin.
            return Ok(Kept::Present);
        }
        let mut file = fs::File::open(path).map_err(io("open"))?;
        // The mode is set before the blob is installed: a blob another writer stored meanwhile
        // (perhaps executable, with twins sharing its file) keeps its own.
        let mut upload = self.store.begin_upload_with_mode(digest, mode)?;
        let mut buf = vec![0u8; COPY_CHUNK];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => upload.write(&buf[..n])?,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return Err(io("read")(error)),
            }
        }
        match upload.commit() {
            Ok(()) => {}
            // Changed since it was hashed: simply not kept.
            Err(StoreError::Digest(_)) => return Ok(Kept::Changed),
            Err(error) => return Err(error.into()),
        }
        Ok(Kept::Copied)
    }

    /// Whether `digest` is cached.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.store.contains(digest)
    }

    /// Writes access times back to the index and flushes it. Blocking.
    pub fn persist(&self) -> Result<(), OpenError> {
        Ok(self.store.checkpoint()?)
    }

    /// The contents of `digests` (small blobs such as `Directory` messages), from the cache
    /// where present, fetched from `cas` (and cached) otherwise.
    pub async fn get_many(
        &self,
        cas: &CasClient,
        digests: &[Digest],
    ) -> Result<HashMap<Digest, Bytes>, FetchError> {
        let store = self.store.clone();
        let wanted = digests.to_vec();
        let mut found = blocking(move || {
            let mut found = HashMap::new();
            for digest in wanted {
                if let Some(data) = store.read(&digest)? {
                    found.insert(digest, data);
                }
            }
            Ok::<_, FetchError>(found)
        })
        .await?;
        let missing: Vec<Digest> = digests
            .iter()
            .filter(|d| !found.contains_key(d))
            .copied()
            .collect();
        for (digest, data) in self.download(cas, &missing).await? {
            found.insert(digest, data);
        }
        Ok(found)
    }

    /// Makes sure every blob of `digests` is cached, taking what is not from `carried` (blobs
    /// the lease brought, each stored only if it matches its digest) and downloading the rest,
    /// and pins them all until the returned guard is dropped. Those of `executable` that are
    /// new are stored executable, so [`executable_path_of`](Self::executable_path_of) links
    /// them instead of copying.
    pub async fn ensure(
        &self,
        cas: &CasClient,
        digests: &[Digest],
        carried: HashMap<Digest, Bytes>,
        executable: &Arc<HashSet<Digest>>,
    ) -> Result<CachePins, FetchError> {
        let mut pins = CachePins::default();
        pins._guards.push(self.store.pin(digests));
        // Files kept from before a restart are hashed on first use: one damaged while the
        // agent was down is fetched again instead of linked into an action.
        let store = self.store.clone();
        let wanted = digests.to_vec();
        let wanted_executable = Arc::clone(executable);
        let (missing, to_fetch, taken) = blocking(move || {
            let missing = store.find_missing_verified(&wanted);
            let mut to_fetch = Vec::new();
            let mut taken = 0usize;
            for digest in &missing {
                let write = |data: &Bytes| write_fetched(&store, digest, data, &wanted_executable);
                match carried.get(digest).map(|data| (data.len(), write(data))) {
                    Some((len, Ok(()))) => taken += len,
                    Some((_, Err(error))) => {
                        tracing::debug!(%digest, %error, "a carried input was not taken; fetching it");
                        to_fetch.push(*digest);
                    }
                    None => to_fetch.push(*digest),
                }
            }
            Ok::<_, FetchError>((missing, to_fetch, taken))
        })
        .await?;
        if missing.is_empty() {
            return Ok(pins);
        }
        if taken > 0 {
            self.meters
                .fetched
                .inc_by(u64::try_from(taken).unwrap_or(u64::MAX));
            self.report_size();
        }
        // Blobs are written as they arrive; only their digests are kept.
        if !to_fetch.is_empty() {
            self.download_with(cas, &to_fetch, executable, |_, _| {})
                .await?;
        }
        pins._guards.push(self.store.pin(&missing));
        if let Some(gone) = self.store.find_missing(&missing).first() {
            return Err(FetchError::Evicted(*gone));
        }
        Ok(pins)
    }

    /// The top of the tree under `root` (up to `max` Directory messages, breadth first) in one
    /// GetTree call, stored in the cache and counted as fetched like any download; each under
    /// the digest of its encoding (see [`CasClient::get_tree`]: one no parent names is never
    /// used, nor stored).
    pub async fn fetch_tree_top(
        &self,
        cas: &CasClient,
        root: &Digest,
        max: usize,
    ) -> Result<HashMap<Digest, Bytes>, FetchError> {
        let tree: HashMap<Digest, Bytes> = cas.get_tree(root, max).await?.into_iter().collect();
        let named = named_directories(root, &tree);
        let kept: HashMap<Digest, Bytes> = tree
            .into_iter()
            .filter(|(digest, _)| named.contains(digest))
            .collect();
        // Those the cache has (shared subtrees) are not hashed and written again.
        let new: Vec<(Digest, Bytes)> = kept
            .iter()
            .filter(|(digest, _)| !self.store.contains(digest))
            .map(|(digest, data)| (*digest, data.clone()))
            .collect();
        let fetched: usize = kept.values().map(Bytes::len).sum();
        self.store_fetched(new, fetched, &Arc::default()).await?;
        Ok(kept)
    }

    /// Stores `blobs` (on a blocking thread; those of `executable` executable) and counts
    /// `fetched` bytes as downloaded.
    async fn store_fetched(
        &self,
        blobs: Vec<(Digest, Bytes)>,
        fetched: usize,
        executable: &Arc<HashSet<Digest>>,
    ) -> Result<(), FetchError> {
        let store = self.store.clone();
        let executable = Arc::clone(executable);
        blocking(move || {
            for (digest, data) in &blobs {
                write_fetched(&store, digest, data, &executable)?;
            }
            Ok::<_, FetchError>(())
        })
        .await?;
        self.meters
            .fetched
            .inc_by(u64::try_from(fetched).unwrap_or(u64::MAX));
        self.report_size();
        Ok(())
    }

    /// Downloads `digests` from `cas`, stores them, and returns their contents.
    async fn download(
        &self,
        cas: &CasClient,
        digests: &[Digest],
    ) -> Result<Vec<(Digest, Bytes)>, FetchError> {
        let mut out = Vec::with_capacity(digests.len());
        let collected = std::sync::Mutex::new(&mut out);
        self.download_with(cas, digests, &Arc::default(), |digest, data| {
            collected
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((digest, data));
        })
        .await?;
        Ok(out)
    }

    /// Downloads `digests` (small ones batched, large ones streamed, a few calls at a time),
    /// stores each in the cache (those of `executable` executable) and hands it to `sink`.
    async fn download_with(
        &self,
        cas: &CasClient,
        digests: &[Digest],
        executable: &Arc<HashSet<Digest>>,
        sink: impl Fn(Digest, Bytes),
    ) -> Result<(), FetchError> {
        let calls = plan_transfers(digests);
        let sink = &sink;
        let result = futures::stream::iter(calls.into_iter().map(|call| async move {
            let blobs: Vec<(Digest, Bytes)> = match call {
                Transfer::Batch(group) => {
                    cas.batch_read(&group, false).await?.into_iter().collect()
                }
                Transfer::Stream(digest) => vec![(digest, cas.read(&digest, false).await?)],
            };
            let fetched: usize = blobs.iter().map(|(_, data)| data.len()).sum();
            self.store_fetched(blobs.clone(), fetched, executable)
                .await?;
            for (digest, data) in blobs {
                sink(digest, data);
            }
            Ok::<_, FetchError>(())
        }))
        .buffer_unordered(DOWNLOADS_IN_FLIGHT)
        .try_collect::<()>()
        .await;
        match result {
            Err(FetchError::Cas(error)) if is_not_found(&error) => {
                // Name exactly which blobs are missing, not just the first one a call tripped on.
                let missing = cas.find_missing(digests).await?;
                if missing.is_empty() {
                    Err(FetchError::Cas(error))
                } else {
                    Err(FetchError::Missing(missing))
                }
            }
            other => other,
        }
    }
}

/// Stores a fetched blob, executable (0555) if `executable` holds it, so that its executable
/// twin can be a link (see [`LocalCache::executable_path_of`]).
fn write_fetched(
    store: &DiskStore,
    digest: &Digest,
    data: &[u8],
    executable: &HashSet<Digest>,
) -> Result<(), StoreError> {
    if executable.contains(digest) {
        store.write_with_mode(digest, data, EXECUTABLE_MODE)
    } else {
        store.write(digest, data)
    }
}

/// Errors of a hard link after which a copy can stand in for it.
fn link_refused(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::CrossesDevices | ErrorKind::TooManyLinks | ErrorKind::PermissionDenied
    ) || error.raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// Copies `from` to a new file `to` and gives it `mode`.
fn copy_with_mode(from: &Path, to: &Path, mode: u32) -> std::io::Result<()> {
    fs::copy(from, to)?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
}

fn is_not_found(error: &ClientError) -> bool {
    match error {
        ClientError::Blob { code, .. } => *code == tonic::Code::NotFound,
        ClientError::Rpc { status, .. } => status.code() == tonic::Code::NotFound,
        _ => false,
    }
}

/// One transfer call: a batch of small blobs, or one large blob streamed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Transfer {
    Batch(Vec<Digest>),
    Stream(Digest),
}

/// Splits `digests` into batch calls of small blobs and one stream per large blob (for
/// downloads and uploads alike).
pub(crate) fn plan_transfers(digests: &[Digest]) -> Vec<Transfer> {
    let mut calls = Vec::new();
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    for digest in digests {
        if digest.size_bytes > BATCH_BLOB_MAX {
            calls.push(Transfer::Stream(*digest));
            continue;
        }
        if !batch.is_empty() && batch_bytes + digest.size_bytes > BATCH_TOTAL_MAX {
            calls.push(Transfer::Batch(std::mem::take(&mut batch)));
            batch_bytes = 0;
        }
        batch_bytes += digest.size_bytes;
        batch.push(*digest);
    }
    if !batch.is_empty() {
        calls.push(Transfer::Batch(batch));
    }
    calls
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, FetchError> + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| FetchError::Task(e.to_string()))?
}

/// The digests of `tree` reachable from `root` through the directories `tree` holds.
fn named_directories(root: &Digest, tree: &HashMap<Digest, Bytes>) -> HashSet<Digest> {
    use prost::Message as _;
    let mut named = HashSet::new();
    let mut next = vec![*root];
    while let Some(digest) = next.pop() {
        let Some(bytes) = tree.get(&digest) else {
            continue;
        };
        if !named.insert(digest) {
            continue;
        }
        let Ok(dir) = tessera_proto::reapi::Directory::decode(bytes.as_ref()) else {
            continue;
        };
        for child in &dir.directories {
            if let Ok(child) = Digest::from_proto_opt(root.function, child.digest.as_ref()) {
                next.push(child);
            }
        }
    }
    named
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_cas::digest::DigestFunction;

    fn blob(size: u64, seed: u8) -> Digest {
        Digest {
            function: DigestFunction::Sha256,
            hash: [seed; 32],
            size_bytes: size,
        }
    }

    #[test]
    fn plans_batches_and_streams() {
        let small = |i| blob(600 * 1024, i);
        let big = blob(BATCH_BLOB_MAX + 1, 9);
        let plan = plan_transfers(&[small(1), big, small(2), small(3), small(4)]);
        assert_eq!(
            plan,
            [
                Transfer::Stream(big),
                Transfer::Batch(vec![small(1), small(2), small(3)]),
                Transfer::Batch(vec![small(4)]),
            ]
        );
        assert!(plan_transfers(&[]).is_empty());
    }

    /// Writes `data` at `path` with `mode` and returns its digest and its metadata after
    /// "hashing".
    fn output(path: &Path, data: &[u8], mode: u32) -> (Digest, fs::Metadata) {
        fs::write(path, data).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        let digest = DigestFunction::Sha256.digest_of(data);
        (digest, fs::metadata(path).unwrap())
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn outputs_only_the_exec_root_holds_are_linked_in_and_made_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LocalCache::open(&dir.path().join("work"), u64::MAX).unwrap();
        let binary = dir.path().join("suite");
        let (digest, hashed) = output(&binary, b"test binary", 0o755);
        assert_eq!(
            cache.keep_output(&digest, &binary, &hashed).unwrap(),
            Kept::Linked
        );
        let blob = cache.store.raw_path(&digest).unwrap();
        assert_eq!(fs::metadata(&blob).unwrap().ino(), hashed.ino());
        assert_eq!(mode_of(&blob), EXECUTABLE_MODE);
        // Its own executable twin: a link, no copy.
        let twin = cache.executable_path_of(&digest).unwrap().unwrap();
        assert_eq!(fs::metadata(&twin).unwrap().ino(), hashed.ino());
        // Wanted as a plain input, it gets a read-only copy, so the twin keeps its mode.
        let plain = cache.path_of(&digest).unwrap();
        assert_ne!(fs::metadata(&plain).unwrap().ino(), hashed.ino());
        assert_eq!(mode_of(&plain), BLOB_MODE);
        assert_eq!(fs::read(&plain).unwrap(), b"test binary");
        assert_eq!(mode_of(&blob), EXECUTABLE_MODE);
        assert_eq!(
            cache.keep_output(&digest, &binary, &hashed).unwrap(),
            Kept::Present
        );

        let data = dir.path().join("data");
        let (digest, hashed) = output(&data, b"fixture", 0o644);
        assert_eq!(
            cache.keep_output(&digest, &data, &hashed).unwrap(),
            Kept::Linked
        );
        assert_eq!(
            cache.path_of(&digest).unwrap(),
            cache.store.raw_path(&digest).unwrap()
        );
        assert_eq!(mode_of(&data), BLOB_MODE);
    }

    #[tokio::test]
    async fn fetched_executables_are_stored_executable_and_linked_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LocalCache::open(&dir.path().join("work"), u64::MAX).unwrap();
        let function = DigestFunction::Sha256;
        let (tool, data) = (
            function.digest_of(b"#!/bin/sh\ntrue\n"),
            b"data file".as_slice(),
        );
        let data = (function.digest_of(data), Bytes::from_static(data));
        let fetched = vec![
            (tool, Bytes::from_static(b"#!/bin/sh\ntrue\n")),
            data.clone(),
        ];
        let executable = Arc::new(HashSet::from([tool]));
        cache.store_fetched(fetched, 0, &executable).await.unwrap();

        let blob = cache.store.raw_path(&tool).unwrap();
        assert_eq!(mode_of(&blob), EXECUTABLE_MODE);
        let twin = cache.executable_path_of(&tool).unwrap().unwrap();
        let inode = |path: &Path| fs::metadata(path).unwrap().ino();
        assert_eq!(inode(&twin), inode(&blob), "linked, not copied");
        // Wanted as a plain input too, it gets a read-only copy; the twin keeps its mode.
        let plain = cache.path_of(&tool).unwrap();
        assert_ne!(inode(&plain), inode(&blob));
        assert_eq!(mode_of(&twin), EXECUTABLE_MODE);
        // A twin that lost its execute bits is never handed out: it is made again.
        fs::set_permissions(&twin, fs::Permissions::from_mode(0o444)).unwrap();
        let again = cache.executable_path_of(&tool).unwrap().unwrap();
        assert_eq!(again, twin);
        assert_eq!(mode_of(&again), EXECUTABLE_MODE);
        assert_eq!(fs::read(&again).unwrap(), b"#!/bin/sh\ntrue\n");

        // A blob fetched as data and later wanted as an executable is copied once.
        let blob = cache.store.raw_path(&data.0).unwrap();
        assert_eq!(mode_of(&blob) & 0o111, 0);
        let twin = cache.executable_path_of(&data.0).unwrap().unwrap();
        assert_ne!(inode(&twin), inode(&blob));
        assert_eq!(mode_of(&twin), EXECUTABLE_MODE);
        assert_eq!(fs::read(&twin).unwrap(), b"data file");
    }

    #[test]
    fn shared_outputs_are_copied_in_and_their_mode_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LocalCache::open(&dir.path().join("work"), u64::MAX).unwrap();
        // A prepared file hard-linked from cargo's target: rustc must still be able to
        // replace the target's file, so its mode must stay writable.
        let target = dir.path().join("target-suite");
        let (digest, _) = output(&target, b"test binary", 0o755);
        let prepared = dir.path().join("prepared-suite");
        fs::hard_link(&target, &prepared).unwrap();
        let hashed = fs::metadata(&prepared).unwrap();
        assert_eq!(
            cache.keep_output(&digest, &prepared, &hashed).unwrap(),
            Kept::Copied
        );
        assert_eq!(mode_of(&target), 0o755);
        let blob = cache.store.raw_path(&digest).unwrap();
        assert_ne!(fs::metadata(&blob).unwrap().ino(), hashed.ino());
        assert_eq!(mode_of(&blob), EXECUTABLE_MODE);
        assert_eq!(fs::read(&blob).unwrap(), b"test binary");
    }

    #[test]
    fn outputs_changed_since_hashing_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LocalCache::open(&dir.path().join("work"), u64::MAX).unwrap();
        let file = dir.path().join("out");
        let (digest, hashed) = output(&file, b"as hashed", 0o644);
        std::thread::sleep(Duration::from_millis(10));
        fs::write(&file, b"rewritten").unwrap();
        assert_eq!(
            cache.keep_output(&digest, &file, &hashed).unwrap(),
            Kept::Changed
        );
        // Shared and changed: the copy does not match the digest either.
        let other = dir.path().join("other");
        fs::hard_link(&file, &other).unwrap();
        assert_eq!(
            cache.keep_output(&digest, &file, &hashed).unwrap(),
            Kept::Changed
        );
        assert!(!cache.contains(&digest));
    }

    #[test]
    fn missing_lists_are_cut() {
        let digests: Vec<Digest> = (0..8).map(|i| blob(1, i)).collect();
        let message = FetchError::Missing(digests).to_string();
        assert!(message.ends_with("and 3 more"), "{message}");
    }

    #[test]
    fn only_directories_the_root_names_are_taken_from_a_tree() {
        use prost::Message as _;
        use tessera_proto::reapi::{Directory, DirectoryNode};
        let f = DigestFunction::Sha256;
        let encode = |d: &Directory| {
            let bytes = Bytes::from(d.encode_to_vec());
            (f.digest_of(&bytes), bytes)
        };
        let (leaf, leaf_bytes) = encode(&Directory::default());
        let (root, root_bytes) = encode(&Directory {
            directories: vec![DirectoryNode {
                name: "sub".into(),
                digest: Some(leaf.to_proto()),
            }],
            ..Directory::default()
        });
        let stray = f.digest_of(b"not a directory anyone names");
        let tree = HashMap::from([
            (root, root_bytes),
            (leaf, leaf_bytes),
            (stray, Bytes::from_static(b"x")),
        ]);
        assert_eq!(named_directories(&root, &tree), HashSet::from([root, leaf]));
        assert!(named_directories(&stray, &HashMap::new()).is_empty());
    }
}

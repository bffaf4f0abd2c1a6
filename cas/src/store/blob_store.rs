//! The [`BlobStore`] trait and the types it exchanges.
//!
//! The trait is synchronous and object safe: lookups are in-memory, and callers that move
//! large blobs run reads and uploads on blocking threads (`spawn_blocking`), so one slow disk
//! never stalls the async runtime.

use bytes::Bytes;
use thiserror::Error;

use crate::digest::{Digest, DigestError};
use crate::meta::MetaError;
use crate::space::SpaceStats;

/// Why a store operation failed. A missing blob is not an error: lookups return `None`.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The uploaded data does not match the digest it was sent under.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// More data arrived than the digest's size allows.
    #[error("upload of {digest} overflows: {received} bytes received, digest says {expected}")]
    Overflow {
        /// The blob being uploaded.
        digest: Digest,
        /// Bytes received so far.
        received: u64,
        /// The size the digest names.
        expected: u64,
    },
    /// The blob cannot be stored: eviction could not free enough space within the budget.
    #[error(
        "no room for {digest}: needs {needed} bytes, budget {budget} bytes, {pinned} bytes pinned or too recent to evict"
    )]
    Full {
        /// The blob that did not fit.
        digest: Digest,
        /// Bytes it needs at rest.
        needed: u64,
        /// The store's byte budget.
        budget: u64,
        /// Bytes that eviction may not touch.
        pinned: u64,
    },
    /// A stored blob failed its hash check while being read; it has been removed.
    #[error("stored blob {digest} is corrupt and has been removed: {reason}")]
    Corrupt {
        /// The blob that failed.
        digest: Digest,
        /// What was wrong.
        reason: String,
    },
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("failed to write blob file", ...).
        op: &'static str,
        /// The path involved.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The index could not be read or written.
    #[error("blob index: {0}")]
    Meta(#[from] MetaError),
    /// The file system holding the blobs is full. Nothing of the refused blob was kept, and
    /// writes succeed again by themselves once space returns.
    #[error(
        "blob store is out of space (the file system holding {} is full); free space there and writes resume by themselves",
        path.display()
    )]
    OutOfSpace {
        /// The store's directory.
        path: std::path::PathBuf,
    },
}

impl StoreError {
    /// Whether the write was refused because a file system is full (the blobs' or the
    /// index's).
    pub fn is_out_of_space(&self) -> bool {
        match self {
            StoreError::OutOfSpace { .. } => true,
            StoreError::Meta(inner) => inner.is_out_of_space(),
            _ => false,
        }
    }

    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}

/// Figures for metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Number of blobs stored.
    pub blobs: u64,
    /// Sum of the blobs' logical sizes.
    pub logical_bytes: u64,
    /// Bytes they take at rest (after compression).
    pub stored_bytes: u64,
    /// The byte budget eviction keeps `stored_bytes` under (`u64::MAX`: none).
    pub budget_bytes: u64,
    /// Blobs evicted since start.
    pub evicted: u64,
    /// Bytes at rest of the blobs evicted since start.
    pub evicted_bytes: u64,
    /// Writes refused because the file system was full.
    pub space: SpaceStats,
}

/// A verified, streaming read of one blob: chunks of its uncompressed bytes from the requested
/// offset. The whole blob is hashed as it is read (unless the read is of a part of a blob the
/// store has already hashed, see [`BlobRead::reads_part_only`]); if it does not match its digest, the last
/// call returns [`StoreError::Corrupt`] instead of `Ok(None)` and the blob is removed, so a
/// reader that waits for the end never accepts wrong bytes.
pub trait BlobRead: Send {
    /// The next chunk, or `None` at the verified end.
    fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError>;

    /// Whether this read of part of a blob touches only that part's bytes (see
    /// [`BlobStore::open_range`]): then more parts may be fetched the same way cheaply.
    fn reads_part_only(&self) -> bool {
        false
    }

    /// Whether the bytes are in memory already (verified), so reading them never blocks.
    fn in_memory(&self) -> bool {
        false
    }
}

/// A boxed [`BlobRead`].
pub type BlobReader = Box<dyn BlobRead>;

/// An upload in progress: uncompressed bytes in order, then [`Upload::commit`]. Dropping an
/// upload without committing discards it; nothing partial is ever visible.
pub trait Upload: Send {
    /// The digest being uploaded.
    fn digest(&self) -> Digest;
    /// Appends bytes. Refuses more bytes than the digest's size.
    fn write(&mut self, data: &[u8]) -> Result<(), StoreError>;
    /// Bytes received so far.
    fn received(&self) -> u64;
    /// Whether [`Upload::commit`] would be short now (no file to finish, nothing to evict, no
    /// backlog of metadata commits to wait for: a hash check and one small `write`), so an
    /// async caller may run it in place instead of on a blocking thread.
    fn commits_quickly(&self) -> bool {
        false
    }
    /// Verifies the data against the digest and makes the blob visible.
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// A content-addressed blob store. The empty blob of every function is always present.
pub trait BlobStore: Send + Sync + 'static {
    /// The digests of `digests` that are not stored, in request order. Present blobs count as
    /// used (their access time is refreshed in memory).
    fn find_missing(&self, digests: &[Digest]) -> Vec<Digest>;

    /// Like [`find_missing`](Self::find_missing), but also checks that each blob's bytes are
    /// really there (a `stat` per blob for the disk store), forgetting blobs whose files have
    /// vanished. For answers a client will act on without re-checking, such as ActionCache
    /// hits.
    fn find_missing_checked(&self, digests: &[Digest]) -> Vec<Digest> {
        self.find_missing(digests)
    }

    /// Whether the blob is stored; does not refresh its access time.
    fn contains(&self, digest: &Digest) -> bool;

    /// Marks blobs as used now (for example the outputs of an ActionCache entry just read or
    /// written), so eviction takes them last.
    fn touch(&self, digests: &[Digest]);

    /// Reads a whole blob, verified. `None` if it is missing or was found corrupt (and removed).
    fn read(&self, digest: &Digest) -> Result<Option<Bytes>, StoreError>;

    /// Opens a streaming, verified read from uncompressed `offset` (at most the blob's size).
    fn open(&self, digest: &Digest, offset: u64) -> Result<Option<BlobReader>, StoreError>;

    /// Opens a streaming read of at most `limit` uncompressed bytes from `offset` (`None`: to
    /// the end). A store may serve a part of a blob it has already hashed in this process
    /// straight from its bytes, ending at the limit, instead of reading and hashing the whole
    /// blob for every part (a client downloading a large blob in parallel ranges verifies the
    /// whole itself). The chunks may run past the limit; callers cut them.
    fn open_range(
        &self,
        digest: &Digest,
        offset: u64,
        limit: Option<u64>,
    ) -> Result<Option<BlobReader>, StoreError> {
        let _ = limit;
        self.open(digest, offset)
    }

    /// Stores `data` after verifying it against `digest`. Storing a blob that is already
    /// present is a no-op.
    fn write(&self, digest: &Digest, data: &[u8]) -> Result<(), StoreError>;

    /// Starts a streaming upload of `digest`.
    fn begin_upload(&self, digest: &Digest) -> Result<Box<dyn Upload>, StoreError>;

    /// Current figures.
    fn stats(&self) -> StoreStats;
}

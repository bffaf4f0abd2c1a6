//! [`MemoryStore`]: blobs in a hash map, for tests and for tools that need no persistence.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;

use super::blob_store::{BlobRead, BlobReader, BlobStore, StoreError, StoreStats, Upload};
use crate::digest::{Digest, Hasher};

/// A blob store in memory. Cloning shares the blobs.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    blobs: Arc<RwLock<HashMap<Digest, Bytes>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces a stored blob's bytes without verification: lets tests simulate corruption.
    pub fn corrupt_for_test(&self, digest: &Digest, data: Bytes) {
        self.blobs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(*digest, data);
    }

    fn get(&self, digest: &Digest) -> Option<Bytes> {
        self.blobs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .cloned()
    }

    fn remove(&self, digest: &Digest) {
        self.blobs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(digest);
    }
}

impl BlobStore for MemoryStore {
    fn find_missing(&self, digests: &[Digest]) -> Vec<Digest> {
        let blobs = self.blobs.read().unwrap_or_else(PoisonError::into_inner);
        digests
            .iter()
            .filter(|d| !d.is_empty_blob() && !blobs.contains_key(d))
            .copied()
            .collect()
    }

    fn find_missing_checked(&self, digests: &[Digest]) -> Vec<Digest> {
        digests
            .iter()
            .filter(|d| matches!(self.read(d), Ok(None) | Err(_)))
            .copied()
            .collect()
    }

    fn contains(&self, digest: &Digest) -> bool {
        digest.is_empty_blob() || self.get(digest).is_some()
    }

    fn touch(&self, _digests: &[Digest]) {}

    fn read(&self, digest: &Digest) -> Result<Option<Bytes>, StoreError> {
        if digest.is_empty_blob() {
            return Ok(Some(Bytes::new()));
        }
        let Some(data) = self.get(digest) else {
            return Ok(None);
        };
        if digest.verify(&data).is_err() {
            self.remove(digest);
            return Ok(None);
        }
        Ok(Some(data))
    }

    fn open(&self, digest: &Digest, offset: u64) -> Result<Option<BlobReader>, StoreError> {
        if digest.is_empty_blob() {
            return Ok(Some(Box::new(MemoryReader {
                store: self.clone(),
                digest: *digest,
                data: Some(Bytes::new()),
                offset: 0,
            })));
        }
        Ok(self.get(digest).map(|data| {
            Box::new(MemoryReader {
                store: self.clone(),
                digest: *digest,
                data: Some(data),
                offset,
            }) as BlobReader
        }))
    }

    fn write(&self, digest: &Digest, data: &[u8]) -> Result<(), StoreError> {
        digest.verify(data)?;
        if !digest.is_empty_blob() {
            self.blobs
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(*digest)
                .or_insert_with(|| Bytes::copy_from_slice(data));
        }
        Ok(())
    }

    fn begin_upload(&self, digest: &Digest) -> Result<Box<dyn Upload>, StoreError> {
        Ok(Box::new(MemoryUpload {
            store: self.clone(),
            digest: *digest,
            hasher: digest.function.hasher(),
            data: Vec::new(),
        }))
    }

    fn stats(&self) -> StoreStats {
        let blobs = self.blobs.read().unwrap_or_else(PoisonError::into_inner);
        let bytes: u64 = blobs.values().map(|b| b.len() as u64).sum();
        StoreStats {
            blobs: blobs.len() as u64,
            logical_bytes: bytes,
            stored_bytes: bytes,
            budget_bytes: u64::MAX,
            evicted: 0,
            evicted_bytes: 0,
            space: Default::default(),
        }
    }
}

struct MemoryReader {
    store: MemoryStore,
    digest: Digest,
    data: Option<Bytes>,
    offset: u64,
}

impl BlobRead for MemoryReader {
    fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        let Some(data) = self.data.take() else {
            return Ok(None);
        };
        if let Err(error) = self.digest.verify(&data) {
            self.store.remove(&self.digest);
            return Err(StoreError::Corrupt {
                digest: self.digest,
                reason: error.to_string(),
            });
        }
        let offset = usize::try_from(self.offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let rest = data.slice(offset..);
        Ok((!rest.is_empty()).then_some(rest))
    }
}

struct MemoryUpload {
    store: MemoryStore,
    digest: Digest,
    hasher: Hasher,
    data: Vec<u8>,
}

impl Upload for MemoryUpload {
    fn digest(&self) -> Digest {
        self.digest
    }

    fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let received = (self.data.len() + data.len()) as u64;
        if received > self.digest.size_bytes {
            return Err(StoreError::Overflow {
                digest: self.digest,
                received,
                expected: self.digest.size_bytes,
            });
        }
        self.hasher.update(data);
        self.data.extend_from_slice(data);
        Ok(())
    }

    fn received(&self) -> u64 {
        self.data.len() as u64
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let MemoryUpload {
            store,
            digest,
            hasher,
            data,
        } = *self;
        digest.verify_against(&hasher.finish_digest())?;
        store.write(&digest, &data)
    }
}

//! Blob files kept compressed that were stored a moment ago, kept whole in memory as well: a
//! build tool reads an action's outputs right after the agent uploads them, and such a file
//! would otherwise be read, decompressed and hashed again for each read (a raw file is read
//! back nearly as fast as it would be copied, so it is not). Only bytes this process hashed against
//! their digest on the way in are kept, so a read served from here needs no second check (a
//! read from disk still hashes what it reads: the disk is what can go bad). First in, first
//! out, within a byte budget; a blob over a quarter of the budget is never kept.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::digest::Digest;

/// The largest blob kept, whatever the budget.
const MAX_BLOB: u64 = 16 * 1024 * 1024;

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct HotBlobs {
    budget: u64,
    held: u64,
    /// Bytes uploads in progress may copy for it (see [`HotBlobs::reserve`]).
    copying: u64,
    blobs: HashMap<Digest, Bytes>,
    /// Oldest first.
    order: VecDeque<Digest>,
}

impl HotBlobs {
    /// Keeps up to `budget` bytes (0: none).
    pub(super) fn new(budget: u64) -> Self {
        HotBlobs {
            budget,
            ..HotBlobs::default()
        }
    }

    /// Whether a blob of `size` bytes would be kept.
    pub(super) fn wants(&self, size: u64) -> bool {
        size > 0 && size <= MAX_BLOB.min(self.budget / 4)
    }

    /// Lets an upload in progress copy a blob of `size` bytes to keep, if it would be kept
    /// and the copies under way stay within the budget (a client naming large sizes and
    /// sending little cannot make the copies outgrow it); give it back with
    /// [`HotBlobs::release`].
    pub(super) fn reserve(&mut self, size: u64) -> bool {
        let fits = self.wants(size) && self.copying + size <= self.budget;
        if fits {
            self.copying += size;
        }
        fits
    }

    /// Gives back what [`HotBlobs::reserve`] took.
    pub(super) fn release(&mut self, size: u64) {
        self.copying = self.copying.saturating_sub(size);
    }

    /// Keeps `data`, verified as the blob `digest`, dropping the oldest to make room.
    pub(super) fn keep(&mut self, digest: Digest, data: Bytes) {
        let size = data.len() as u64;
        if !self.wants(size) || size != digest.size_bytes || self.blobs.contains_key(&digest) {
            return;
        }
        while self.held + size > self.budget {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.blobs.remove(&oldest) {
                self.held -= gone.len() as u64;
            }
        }
        self.held += size;
        self.blobs.insert(digest, data);
        self.order.push_back(digest);
    }

    /// The blob `digest`, if kept.
    pub(super) fn get(&self, digest: &Digest) -> Option<Bytes> {
        self.blobs.get(digest).cloned()
    }

    /// Forgets `digest` (its file is gone or damaged).
    pub(super) fn forget(&mut self, digest: &Digest) {
        if let Some(gone) = self.blobs.remove(digest) {
            self.held -= gone.len() as u64;
            self.order.retain(|d| d != digest);
        }
    }

    /// Bytes held now.
    #[cfg(test)]
    pub(super) fn held(&self) -> u64 {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    fn blob(len: usize, seed: u8) -> (Digest, Bytes) {
        let data = vec![seed; len];
        (DigestFunction::Sha256.digest_of(&data), Bytes::from(data))
    }

    #[test]
    fn keeps_the_newest_within_the_budget_and_nothing_too_large() {
        let mut hot = HotBlobs::new(100);
        let (a, a_data) = blob(25, 1);
        let (b, b_data) = blob(25, 2);
        let (c, c_data) = blob(25, 3);
        let (d, d_data) = blob(25, 4);
        let (e, e_data) = blob(25, 5);
        for (digest, data) in [(a, a_data), (b, b_data), (c, c_data), (d, d_data)] {
            hot.keep(digest, data);
        }
        assert_eq!(hot.held(), 100);
        hot.keep(e, e_data.clone());
        assert_eq!(hot.held(), 100);
        assert!(hot.get(&a).is_none(), "the oldest made room");
        assert_eq!(hot.get(&e), Some(e_data));
        hot.forget(&b);
        assert!(hot.get(&b).is_none());
        assert_eq!(hot.held(), 75);

        let (big, big_data) = blob(26, 6);
        hot.keep(big, big_data);
        assert!(hot.get(&big).is_none(), "over a quarter of the budget");
        let (lying, _) = blob(10, 7);
        hot.keep(lying, Bytes::from_static(b"short"));
        assert!(hot.get(&lying).is_none(), "size does not match the digest");
        assert!(hot.reserve(25) && hot.reserve(25) && hot.reserve(25) && hot.reserve(25));
        assert!(!hot.reserve(25), "copies under way stay within the budget");
        hot.release(25);
        assert!(hot.reserve(25));
        let mut none = HotBlobs::new(0);
        let (x, x_data) = blob(1, 8);
        none.keep(x, x_data);
        assert!(none.get(&x).is_none());
    }
}

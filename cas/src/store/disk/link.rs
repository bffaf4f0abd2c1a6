//! [`DiskStore::link_hashed`]: a file the caller has already hashed enters the store as a hard
//! link, without its bytes being read, copied or compressed again (an agent keeping the
//! outputs it just produced, so the next action on the same machine links them in place).
//!
//! The store's rules hold as for any write: the blob goes to `tmp/` first and is renamed into
//! place, under the index lock, by the same `install` as an upload (room is made within the
//! budget, pinned and recent blobs are never evicted for it, the index record is written or
//! deferred to the next checkpoint); a start after a crash adopts or drops the file like any
//! other. The one rule the store cannot check without reading is that the bytes match the
//! digest: the caller vouches for it by handing over the metadata of the file it hashed
//! (taken after hashing, of a file last modified before hashing began), and the link is
//! refused if the file it makes is not that same inode with the same size and modification
//! time. The linked file is kept
//! raw and shares its inode with the caller's path, so the caller must never write through
//! that path afterwards (an agent links only once the action that wrote the file has ended).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{DiskStore, Form, StoreError, now_ms};
use crate::digest::Digest;

impl DiskStore {
    /// Stores the file at `path` as the blob `digest` by hard-linking it into the store.
    ///
    /// `hashed` is the metadata of the file as the caller hashed it to `digest` (taken after
    /// hashing; the caller checks that the file was not modified after hashing began): the
    /// link is refused (`Ok(false)`, nothing stored)
    /// when the linked inode is not that file any more, or its size or modification time
    /// changed since, or the size is not the digest's. `Ok(true)` when the store has the blob
    /// afterwards, linked now or already present. Errors: the link itself failed
    /// ([`StoreError::Io`] with the cause, such as [`std::io::ErrorKind::CrossesDevices`] for
    /// another file system, where the caller may copy instead), or no room within the budget
    /// ([`StoreError::Full`]). Blocking.
    pub fn link_hashed(
        &self,
        digest: &Digest,
        path: &Path,
        hashed: &fs::Metadata,
    ) -> Result<bool, StoreError> {
        if digest.is_empty_blob() || self.inner.lock().touch(digest, now_ms()) {
            return Ok(true);
        }
        if !hashed.is_file() || hashed.len() != digest.size_bytes {
            return Ok(false);
        }
        let tmp = self.inner.tmp_path();
        fs::hard_link(path, &tmp)
            .map_err(|source| self.inner.write_error("failed to link", &tmp, source))?;
        let linked = match fs::symlink_metadata(&tmp) {
            Ok(linked) => linked,
            Err(source) => {
                let _ = fs::remove_file(&tmp);
                return Err(StoreError::io("failed to stat", &tmp, source));
            }
        };
        if !same_content_stamp(&linked, hashed) {
            let _ = fs::remove_file(&tmp);
            tracing::debug!(%digest, path = %path.display(), "not linking a file changed since it was hashed");
            return Ok(false);
        }
        self.inner
            .install(*digest, &tmp, Form::Raw, linked.len())
            .map(|()| true)
    }
}

/// Whether `now` is the inode `then` described, with the same size and modification time (the
/// change time moves with the link itself, so it cannot be compared).
fn same_content_stamp(now: &fs::Metadata, then: &fs::Metadata) -> bool {
    now.dev() == then.dev()
        && now.ino() == then.ino()
        && now.len() == then.len()
        && now.mtime() == then.mtime()
        && now.mtime_nsec() == then.mtime_nsec()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::digest::DigestFunction;
    use crate::meta::{MemoryMetaStore, MetadataStore};
    use crate::store::{BlobStore, DiskStoreOptions};

    const F: DigestFunction = DigestFunction::Blake3;

    fn store(root: &Path, budget_bytes: u64) -> DiskStore {
        let meta: Arc<dyn MetadataStore> = Arc::new(MemoryMetaStore::new());
        let options = DiskStoreOptions {
            budget_bytes,
            protect_recent: Duration::ZERO,
            compress: false,
            ..DiskStoreOptions::new(root)
        };
        DiskStore::open(meta, options).unwrap()
    }

    /// Writes `data` at `path` and returns its digest and the metadata of the written file.
    fn hashed_file(path: &Path, data: &[u8]) -> (Digest, fs::Metadata) {
        let mut file = fs::File::create(path).unwrap();
        file.write_all(data).unwrap();
        (F.digest_of(data), file.metadata().unwrap())
    }

    #[test]
    fn a_hashed_file_is_linked_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir.path().join("store"), u64::MAX);
        let out = dir.path().join("out");
        let (digest, hashed) = hashed_file(&out, b"test binary bytes");
        assert!(store.link_hashed(&digest, &out, &hashed).unwrap());
        let blob = store.raw_path(&digest).expect("stored raw");
        assert_eq!(
            fs::metadata(&blob).unwrap().ino(),
            hashed.ino(),
            "the blob is the output's inode"
        );
        assert_eq!(fs::read(&blob).unwrap(), b"test binary bytes");
        assert_eq!(store.stats().stored_bytes, 17);
        // A second time it is already there: nothing more is linked.
        assert!(store.link_hashed(&digest, &out, &hashed).unwrap());
        assert_eq!(fs::metadata(&out).unwrap().nlink(), 2);
    }

    #[test]
    fn a_file_changed_since_it_was_hashed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir.path().join("store"), u64::MAX);
        let out = dir.path().join("out");
        let (digest, hashed) = hashed_file(&out, b"first");
        // Rewritten in place (same size) after hashing: its modification time moves.
        std::thread::sleep(Duration::from_millis(10));
        fs::write(&out, b"other").unwrap();
        assert!(!store.link_hashed(&digest, &out, &hashed).unwrap());
        // Replaced by another file: another inode.
        let (_, _) = hashed_file(&dir.path().join("new"), b"first");
        fs::rename(dir.path().join("new"), &out).unwrap();
        assert!(!store.link_hashed(&digest, &out, &hashed).unwrap());
        // A digest whose size is not the file's.
        let (_, fresh) = hashed_file(&out, b"first");
        assert!(
            !store
                .link_hashed(&F.digest_of(b"firs"), &out, &fresh)
                .unwrap()
        );
        assert!(store.find_missing(&[digest]).contains(&digest));
        assert_eq!(
            fs::read_dir(dir.path().join("store/tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn linked_blobs_count_against_the_budget_and_respect_pins() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir.path().join("store"), 10);
        let (a, a_meta) = hashed_file(&dir.path().join("a"), b"aaaaaaa");
        assert!(
            store
                .link_hashed(&a, &dir.path().join("a"), &a_meta)
                .unwrap()
        );
        let pin = store.pin(&[a]);
        let (b, b_meta) = hashed_file(&dir.path().join("b"), b"bbbbbbb");
        let error = store
            .link_hashed(&b, &dir.path().join("b"), &b_meta)
            .unwrap_err();
        assert!(matches!(error, StoreError::Full { .. }), "{error}");
        drop(pin);
        // Unpinned, the older blob makes room.
        assert!(
            store
                .link_hashed(&b, &dir.path().join("b"), &b_meta)
                .unwrap()
        );
        assert!(store.find_missing(&[a]).contains(&a));
        assert!(store.contains(&b));
        // The output itself is untouched by the eviction of its link.
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"aaaaaaa");
    }

    #[test]
    fn a_linked_blob_is_adopted_after_a_restart_without_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let out = dir.path().join("out");
        let (digest, hashed) = hashed_file(&out, b"kept across a crash");
        assert!(
            store(&root, u64::MAX)
                .link_hashed(&digest, &out, &hashed)
                .unwrap()
        );
        // A fresh metadata store: the record is gone, the file is proof.
        let reopened = store(&root, u64::MAX);
        assert!(reopened.contains(&digest));
        assert_eq!(
            reopened.read(&digest).unwrap().unwrap(),
            &b"kept across a crash"[..]
        );
    }
}

//! The stores themselves on a full file system (a small tmpfs), below gRPC: a write refused for
//! lack of space is `OutOfSpace`, keeps nothing partial, counts as one episode however many
//! writes are refused, and succeeds again once space returns without reopening anything by
//! hand; everything acknowledged before, during and after the episode is there after a
//! restart. `disk_full` tells the same story through a real coordinator.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::meta::{MetaError, MetadataStore, RedbStore, Table};
use tessera_cas::store::{BlobStore, DiskStore, DiskStoreOptions, StoreError};
use tessera_tests::{Filler, Tmpfs};

/// Runs `write` until it succeeds: after a refusal the stores try the disk again within a
/// fraction of a second, and refuse untried before that.
fn retry_briefly<T, E: std::fmt::Display>(mut write: impl FnMut() -> Result<T, E>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match write() {
            Ok(value) => return value,
            Err(error) if std::time::Instant::now() < deadline => {
                eprintln!("still refused: {error}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(error) => panic!("still refused 5 s after space returned: {error}"),
        }
    }
}

/// Fills `fs_` and writes to `table` (of a metadata store on it) until a write is refused for
/// lack of space, which closes the store's database; then waits out the pause after a
/// refusal, so that the next call reopens it. Remove the filler to give the space back.
fn fill_until_the_store_reopens(fs_: &Tmpfs, table: &Table) -> Filler {
    let filler = Filler::fill(fs_.path().join("filler"));
    let refused = (1_000..6_000u32).any(|n| match table.insert(&n.to_be_bytes(), &value(n)) {
        Ok(_) => false,
        Err(error) => {
            assert!(error.is_out_of_space(), "{error}");
            true
        }
    });
    assert!(refused, "the metadata store never ran out of space");
    std::thread::sleep(std::time::Duration::from_millis(700));
    filler
}

/// Asserts `store` reads back every one of `blobs`; `what` and `when` name them in a failure.
fn assert_reads_back(store: &DiskStore, blobs: &[(Digest, Vec<u8>)], what: &str, when: &str) {
    for (digest, data) in blobs {
        assert_eq!(
            store.read(digest).unwrap().as_deref(),
            Some(data.as_slice()),
            "{what} {digest} {when}"
        );
    }
}

/// The blob store over the metadata store in `meta_dir`, opened as a restart does.
fn reopen(meta_dir: &Path, options: DiskStoreOptions) -> DiskStore {
    let meta = Arc::new(RedbStore::open(meta_dir).unwrap());
    DiskStore::open(meta as Arc<dyn MetadataStore>, options).unwrap()
}

fn value(n: u32) -> Vec<u8> {
    let mut v = n.to_be_bytes().repeat(1024);
    v.truncate(4000);
    v
}

#[test]
fn metadata_store_refuses_writes_when_full_and_recovers_without_restart() {
    let Some(fs_) = Tmpfs::mount("8m") else {
        return;
    };
    let dir = fs_.path().join("meta");
    let mut acknowledged = Vec::new();
    {
        let store = RedbStore::open(&dir).unwrap();
        let table = store.table("t").unwrap();
        for n in 0..50u32 {
            table.insert(&n.to_be_bytes(), &value(n)).unwrap();
            acknowledged.push(n);
        }
        store.flush().unwrap();
        let filler = Filler::fill(fs_.path().join("filler"));

        // Keep writing until the store itself runs out of room.
        let mut refused = 0;
        for n in 50..5_000u32 {
            match table.insert(&n.to_be_bytes(), &value(n)) {
                Ok(_) => match store.flush() {
                    Ok(()) => acknowledged.push(n),
                    Err(error) => {
                        assert!(error.is_out_of_space(), "flush: {error}");
                        refused += 1;
                    }
                },
                Err(error) => {
                    assert!(
                        matches!(error, MetaError::OutOfSpace { .. }),
                        "insert: {error}"
                    );
                    assert!(error.to_string().contains("out of space"), "{error}");
                    refused += 1;
                }
            }
            if refused >= 20 {
                break;
            }
        }
        assert!(refused >= 20, "the store never ran out of space");
        let space = store.space();
        assert!(space.full, "{space:?}");
        assert_eq!(space.episodes, 1, "one episode, however many refusals");
        assert!(space.refused >= 20);
        // Reads go on while the disk is full.
        for n in acknowledged.iter().step_by(7) {
            assert_eq!(table.get(&n.to_be_bytes()).unwrap(), Some(value(*n)));
        }

        // Space returns: writes succeed again, no restart.
        filler.remove();
        let n = 10_000u32;
        retry_briefly(|| {
            table.insert(&n.to_be_bytes(), &value(n))?;
            store.flush()
        });
        acknowledged.push(n);
        assert!(!store.space().full);
        for n in &acknowledged {
            assert_eq!(table.get(&n.to_be_bytes()).unwrap(), Some(value(*n)));
        }
    }
    let store = RedbStore::open(&dir).unwrap();
    let table = store.table("t").unwrap();
    for n in &acknowledged {
        assert_eq!(
            table.get(&n.to_be_bytes()).unwrap(),
            Some(value(*n)),
            "acknowledged key {n} lost after restart"
        );
    }
}

/// A write that failed for lack of space makes the store reopen its database, which redb opens
/// at its last durable commit. The commits made since then were visible, so callers rely on
/// them (the blob store forgets an inline blob's bytes once its commit succeeds): the store
/// must make them again after reopening, not lose them. Reads go on while the disk is full
/// and see them; a scan of a table they changed is refused until a write makes them again,
/// never answered without them.
#[test]
fn metadata_store_reopened_after_a_full_disk_keeps_every_commit_since_the_last_flush() {
    let Some(fs_) = Tmpfs::mount("8m") else {
        return;
    };
    let dir = fs_.path().join("meta");
    let committed: Vec<u32> = (0..40).collect();
    {
        let store = RedbStore::open(&dir).unwrap();
        assert!(
            store.reads_quickly(),
            "an open store in step reads without waiting"
        );
        let table = store.table("t").unwrap();
        table.insert(b"flushed, then removed", b"v").unwrap();
        table.insert(b"flushed, kept", b"k").unwrap();
        store.flush().unwrap();
        // Committed and visible, none of it flushed.
        for n in &committed {
            table.insert(&n.to_be_bytes(), &value(*n)).unwrap();
        }
        table.remove(b"flushed, then removed").unwrap();
        let gone = b"swapped away".as_slice();
        table.insert(gone, b"1").unwrap();
        table.compare_and_swap(gone, Some(b"1"), None).unwrap();
        let batch_table = {
            let mut batch = tessera_cas::meta::Batch::new();
            batch.insert("other", b"batched".to_vec(), b"b".to_vec());
            store.apply_batch(batch).unwrap();
            store.table("other").unwrap()
        };

        let filler = fill_until_the_store_reopens(&fs_, &table);
        let check = || {
            for n in &committed {
                let found = table.get(&n.to_be_bytes()).unwrap();
                assert!(
                    found == Some(value(*n)),
                    "key {n} after a reopen: {:?} bytes",
                    found.map(|v| v.len())
                );
            }
            for (t, key, want) in [
                (&table, b"flushed, then removed".as_slice(), None),
                (&table, b"flushed, kept".as_slice(), Some(b"k".to_vec())),
                (&table, gone, None),
                (&batch_table, b"batched".as_slice(), Some(b"b".to_vec())),
            ] {
                let found = t.get(key).unwrap();
                assert_eq!(found, want, "{}", String::from_utf8_lossy(key));
            }
        };
        check();
        assert!(
            !store.reads_quickly(),
            "reopened behind its log: async callers must read on a blocking thread"
        );
        // A scan or count of a changed table cannot be answered from the database alone yet:
        // refused, not answered without the changes.
        let scan = table.scan_prefix(b"").collect::<Result<Vec<_>, _>>();
        assert!(
            matches!(&scan, Err(error) if error.is_out_of_space()),
            "a scan while behind: {:?}",
            scan.map(|entries| entries.len())
        );
        let len = table.len();
        assert!(
            matches!(&len, Err(error) if error.is_out_of_space()),
            "a count while behind: {len:?}"
        );

        filler.remove();
        retry_briefly(|| store.flush());
        check();
        assert!(
            store.reads_quickly(),
            "in step again once the log is made again"
        );
        let keys: Vec<Vec<u8>> = table
            .scan_prefix(b"")
            .map(|entry| entry.expect("a scan once the log is made again").0)
            .collect();
        for n in &committed {
            assert!(keys.contains(&n.to_be_bytes().to_vec()), "scan misses {n}");
        }
    }
    let store = RedbStore::open(&dir).unwrap();
    let table = store.table("t").unwrap();
    for n in &committed {
        assert_eq!(
            table.get(&n.to_be_bytes()).unwrap(),
            Some(value(*n)),
            "key {n} after the flush and a restart"
        );
    }
    assert_eq!(table.get(b"flushed, then removed").unwrap(), None);
}

#[test]
fn blob_store_refuses_blobs_when_full_leaves_nothing_partial_and_recovers_without_restart() {
    let Some(fs_) = Tmpfs::mount("16m") else {
        return;
    };
    let meta_dir = fs_.path().join("meta");
    let options = DiskStoreOptions::new(fs_.path().join("cas"));
    let mut acknowledged: Vec<(Digest, Vec<u8>)> = Vec::new();
    let blob = |n: u64, size: usize| {
        // Incompressible, so every blob takes its size at rest.
        let mut data = Vec::with_capacity(size);
        let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        while data.len() < size {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        data.truncate(size);
        let function = if n.is_multiple_of(2) {
            DigestFunction::Sha256
        } else {
            DigestFunction::Blake3
        };
        (function.digest_of(&data), data)
    };
    {
        let meta = Arc::new(RedbStore::open(&meta_dir).unwrap());
        let store =
            DiskStore::open(Arc::clone(&meta) as Arc<dyn MetadataStore>, options.clone()).unwrap();
        let spare = fs_.path().join("spare");
        fs::write(&spare, vec![1u8; 3 << 20]).unwrap();
        let mut refused = 0;
        for n in 0..400u64 {
            // Large blobs stream through a temporary file; small ones are written whole.
            let size = if n % 3 == 0 { 600 * 1024 } else { 40 * 1024 };
            let (digest, data) = blob(n, size);
            let result = if size > 300 * 1024 {
                store.begin_upload(&digest).and_then(|mut upload| {
                    for chunk in data.chunks(64 * 1024) {
                        upload.write(chunk)?;
                    }
                    upload.commit()
                })
            } else {
                store.write(&digest, &data)
            };
            match result {
                Ok(()) => acknowledged.push((digest, data)),
                Err(error) => {
                    assert!(
                        matches!(error, StoreError::OutOfSpace { .. }),
                        "blob {n}: {error}"
                    );
                    assert!(error.to_string().contains("blob store is out of space"));
                    refused += 1;
                    assert!(store.find_missing(&[digest]) == vec![digest]);
                }
            }
        }
        assert!(
            refused > 10,
            "the file system never filled ({refused} refused)"
        );
        let space = store.space();
        // Small blobs can still fit after a large one was refused, which ends an episode; but
        // the log and the counters see episodes, not every refusal.
        assert!(
            space.full && space.episodes * 10 <= space.refused,
            "{space:?}"
        );
        let tmp: Vec<_> = fs::read_dir(options.root.join("tmp")).unwrap().collect();
        assert!(
            tmp.is_empty(),
            "refused uploads left {} temp files",
            tmp.len()
        );

        // Make room (as an operator would): the next write succeeds, no restart.
        fs::remove_file(&spare).unwrap();
        let (digest, data) = blob(1_000, 40 * 1024);
        retry_briefly(|| store.write(&digest, &data));
        acknowledged.push((digest, data));
        assert!(!store.space().full);
        store.checkpoint().unwrap();
        meta.flush().unwrap();
    }
    let store = reopen(&meta_dir, options);
    assert_reads_back(
        &store,
        &acknowledged,
        "acknowledged blob",
        "lost after restart",
    );
}

/// The blob store's side of a metadata store reopened on a full disk: inline blobs whose
/// commits had succeeded (their bytes no longer held in memory, their journal not yet retired)
/// are still read back while the disk is full, after space returns and after a restart. Before
/// the metadata store kept its log of changes, the reopen lost their contents and the blob
/// store removed them as "inline content missing".
#[test]
fn inline_blobs_survive_the_metadata_store_reopening_on_a_full_disk() {
    let Some(fs_) = Tmpfs::mount("8m") else {
        return;
    };
    let meta_dir = fs_.path().join("meta");
    let root = tempfile::tempdir().unwrap();
    let mut options = DiskStoreOptions::new(root.path().join("cas"));
    options.inline_max = DiskStoreOptions::INLINE_MAX;
    let blobs: Vec<(Digest, Vec<u8>)> = (0..40u32)
        .map(|n| {
            let data = value(n)[..1000].to_vec();
            (DigestFunction::Sha256.digest_of(&data), data)
        })
        .collect();
    {
        let meta = Arc::new(RedbStore::open(&meta_dir).unwrap());
        let store =
            DiskStore::open(Arc::clone(&meta) as Arc<dyn MetadataStore>, options.clone()).unwrap();
        store.checkpoint().unwrap();
        for (digest, data) in &blobs {
            store.write(digest, data).unwrap();
        }
        // Their commits run behind the writes; give them time to (the test holds either way).
        std::thread::sleep(std::time::Duration::from_millis(300));

        let table = meta.table("other").unwrap();
        let filler = fill_until_the_store_reopens(&fs_, &table);
        let when = "while the disk is full, after the reopen";
        assert_reads_back(&store, &blobs, "inline blob", when);

        filler.remove();
        retry_briefly(|| store.checkpoint());
        assert_reads_back(&store, &blobs, "inline blob", "once space returned");
    }
    let store = reopen(&meta_dir, options);
    assert_reads_back(&store, &blobs, "inline blob", "after a restart");
}

//! The blob stores, end to end, through the [`BlobStore`] trait (DESIGN.md §3).
//!
//! Behaviour every store must show runs against both the real [`DiskStore`] (on a temporary
//! directory, indexed in a real [`RedbStore`], as the coordinator's and the agent's are) and
//! the [`MemoryStore`]; what only the disk store has (the at-rest form of files, eviction to a
//! byte budget, pins, restarts) runs against it alone. The harness at the top builds blobs,
//! stores and damage; the tests below it read as stories.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngCore as _, SeedableRng as _};
use tempfile::TempDir;
use tessera_cas::digest::{Digest, DigestError, DigestFunction};
use tessera_cas::meta::{MetadataStore, RedbStore};
use tessera_cas::store::{BlobStore, DiskStore, DiskStoreOptions, MemoryStore, StoreError};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// The disk store holds uploads up to this size in memory, and streams larger ones to `tmp/`.
const BUFFER_LIMIT: usize = 256 * KIB;
/// The disk store hands out reads in chunks of this size.
const READ_CHUNK: usize = 256 * KIB;
/// Upload chunk sizes, used in turn, so that no write lines up with a buffer or chunk edge.
const ODD_CHUNKS: [usize; 5] = [1, 7, 4093, 65_537, 100_003];
/// A blob size for the eviction stories: five of them fit in [`BUDGET`], six do not.
const FIFTH: usize = 200 * KIB;
/// The byte budget of the eviction stories.
const BUDGET: u64 = MIB as u64;

/// Some bytes and their digest.
struct Blob {
    digest: Digest,
    data: Vec<u8>,
}

impl Blob {
    fn new(function: DigestFunction, data: Vec<u8>) -> Blob {
        Blob {
            digest: function.digest_of(&data),
            data,
        }
    }

    /// Text that zstd shrinks to a small fraction; `seed` makes it unique.
    fn compressible(function: DigestFunction, len: usize, seed: u64) -> Blob {
        let mut text = String::with_capacity(len + 64);
        let mut line = 0u64;
        while text.len() < len {
            writeln!(text, "blob {seed}, line {line}: the quick brown fox").unwrap();
            line += 1;
        }
        let mut data = text.into_bytes();
        data.truncate(len);
        Blob::new(function, data)
    }

    /// Random bytes, which zstd cannot shrink.
    fn incompressible(function: DigestFunction, len: usize, seed: u64) -> Blob {
        let mut data = vec![0u8; len];
        StdRng::seed_from_u64(seed).fill_bytes(&mut data);
        Blob::new(function, data)
    }

    fn len(&self) -> u64 {
        self.data.len() as u64
    }
}

/// Ways to spoil a stored blob behind the store's back.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// A few bytes near the end flipped; same length.
    FlipBytes,
    /// The last quarter cut off.
    Truncate,
    /// One byte too many.
    Append,
}

impl Damage {
    /// What a failing disk or a stray writer does to a file; see
    /// [`trailing_bytes_after_a_stored_blob_make_it_corrupt_raw_or_compressed`] for `Append`.
    const FLIP_OR_TRUNCATE: [Damage; 2] = [Damage::FlipBytes, Damage::Truncate];

    fn apply(self, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        match self {
            Damage::FlipBytes => {
                let end = out.len().saturating_sub(4);
                for b in &mut out[end.saturating_sub(4)..end] {
                    *b ^= 0x5a;
                }
            }
            Damage::Truncate => out.truncate(out.len() / 4 * 3),
            Damage::Append => out.push(b'!'),
        }
        out
    }
}

/// How a blob sits on disk.
#[derive(Debug, PartialEq, Eq)]
enum AtRest {
    Raw(PathBuf),
    Zstd(PathBuf),
}

impl AtRest {
    fn path(&self) -> &Path {
        match self {
            AtRest::Raw(path) | AtRest::Zstd(path) => path,
        }
    }
}

/// A [`DiskStore`] on a temporary directory, indexed in a [`RedbStore`] beside it.
struct DiskFixture {
    dir: TempDir,
    options: DiskStoreOptions,
    meta: Arc<RedbStore>,
    store: DiskStore,
}

impl DiskFixture {
    /// A store with the default options: no budget, compression on.
    fn open() -> DiskFixture {
        DiskFixture::open_with(|_| {})
    }

    /// A store whose options `configure` adjusts.
    fn open_with(configure: impl FnOnce(&mut DiskStoreOptions)) -> DiskFixture {
        let dir = tempfile::Builder::new()
            .prefix("tessera-store")
            .tempdir()
            .unwrap();
        let mut options = DiskStoreOptions::new(dir.path().join("cas"));
        configure(&mut options);
        DiskFixture::open_in(dir, options)
    }

    /// A store with `budget` bytes and no protection of recent blobs.
    fn with_budget(budget: u64) -> DiskFixture {
        DiskFixture::open_with(|o| {
            o.budget_bytes = budget;
            o.protect_recent = Duration::ZERO;
        })
    }

    fn open_in(dir: TempDir, options: DiskStoreOptions) -> DiskFixture {
        let meta = Arc::new(RedbStore::open(dir.path().join("meta")).unwrap());
        let store =
            DiskStore::open(Arc::clone(&meta) as Arc<dyn MetadataStore>, options.clone()).unwrap();
        DiskFixture {
            dir,
            options,
            meta,
            store,
        }
    }

    /// A clean shutdown and a fresh start on the same directory: the store is dropped, the
    /// metadata store flushed and closed, then both are opened again.
    fn restart(self) -> DiskFixture {
        let DiskFixture {
            dir,
            options,
            meta,
            store,
        } = self;
        drop(store);
        meta.flush().unwrap();
        let meta = Arc::try_unwrap(meta)
            .unwrap_or_else(|_| panic!("something still holds the metadata store after shutdown"));
        drop(meta);
        DiskFixture::open_in(dir, options)
    }

    fn root(&self) -> &Path {
        &self.options.root
    }

    /// The directory holding blobs of `function` whose hash starts with `shard`.
    fn shard_dir(&self, function: DigestFunction, shard: &str) -> PathBuf {
        self.root().join("blobs").join(function.name()).join(shard)
    }

    /// Where and in which form `digest` is stored; `None` if it has no file. Panics if it has
    /// two.
    fn at_rest(&self, digest: &Digest) -> Option<AtRest> {
        let hash = digest.hash_hex();
        let raw = self.shard_dir(digest.function, &hash[..2]).join(&hash);
        let zst = raw.with_extension("zst");
        match (raw.exists(), zst.exists()) {
            (false, false) => None,
            (true, false) => Some(AtRest::Raw(raw)),
            (false, true) => Some(AtRest::Zstd(zst)),
            (true, true) => panic!("{digest} is stored both raw and compressed"),
        }
    }

    /// Every file under `blobs/`.
    fn blob_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for function in DigestFunction::ALL {
            let dir = self.root().join("blobs").join(function.name());
            for shard in fs::read_dir(&dir).unwrap() {
                for file in fs::read_dir(shard.unwrap().path()).unwrap() {
                    files.push(file.unwrap().path());
                }
            }
        }
        files
    }

    /// Every file under `tmp/`.
    fn tmp_files(&self) -> Vec<PathBuf> {
        fs::read_dir(self.root().join("tmp"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect()
    }

    fn damage(&self, digest: &Digest, damage: Damage) {
        let at_rest = self.at_rest(digest).expect("the blob to damage is stored");
        let bytes = fs::read(at_rest.path()).unwrap();
        fs::write(at_rest.path(), damage.apply(&bytes)).unwrap();
    }

    /// The figures agree with the files: as many blobs as files, stored bytes as their sizes,
    /// within the budget, and no temporary file left behind.
    fn assert_consistent(&self) {
        let stats = self.store.stats();
        let files = self.blob_files();
        let on_disk: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
        assert_eq!(
            stats.blobs,
            files.len() as u64,
            "one file per blob: {stats:?}"
        );
        assert_eq!(
            stats.stored_bytes, on_disk,
            "stored bytes are the files' sizes"
        );
        assert!(
            stats.stored_bytes <= stats.budget_bytes,
            "over budget: {stats:?}"
        );
        assert_eq!(stats.budget_bytes, self.options.budget_bytes);
        assert_eq!(
            self.tmp_files(),
            Vec::<PathBuf>::new(),
            "temporary files left behind"
        );
    }
}

/// A store under test.
enum Fixture {
    Memory(MemoryStore),
    Disk(DiskFixture),
}

impl Fixture {
    fn store(&self) -> &dyn BlobStore {
        match self {
            Fixture::Memory(store) => store,
            Fixture::Disk(disk) => &disk.store,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Fixture::Memory(_) => "memory store",
            Fixture::Disk(disk) if disk.options.map_reads => "disk store, reads mapped",
            Fixture::Disk(_) => "disk store",
        }
    }

    /// Spoils the stored bytes of `blob` behind the store's back.
    fn damage(&self, blob: &Blob, damage: Damage) {
        match self {
            Fixture::Memory(store) => {
                store.corrupt_for_test(&blob.digest, damage.apply(&blob.data).into());
            }
            Fixture::Disk(disk) => disk.damage(&blob.digest, damage),
        }
    }

    /// Checks what only the disk store can show: its figures agree with its files.
    fn assert_consistent(&self) {
        if let Fixture::Disk(disk) = self {
            disk.assert_consistent();
        }
    }
}

/// Runs `story` against a fresh memory store, a fresh disk store, and one that maps its
/// reads of large raw files (as the coordinator's does).
fn for_each_store(story: impl Fn(&Fixture)) {
    story(&Fixture::Memory(MemoryStore::new()));
    story(&Fixture::Disk(DiskFixture::open()));
    story(&Fixture::Disk(DiskFixture::open_with(|o| {
        o.map_reads = true
    })));
}

/// Uploads `blob` through [`BlobStore::begin_upload`] in [`ODD_CHUNKS`].
fn upload(store: &dyn BlobStore, blob: &Blob) -> Result<(), StoreError> {
    upload_bytes(store, &blob.digest, &blob.data)
}

/// Uploads `data` under `digest`, whether or not they match.
fn upload_bytes(store: &dyn BlobStore, digest: &Digest, data: &[u8]) -> Result<(), StoreError> {
    let mut upload = store.begin_upload(digest)?;
    assert_eq!(upload.digest(), *digest);
    let mut rest = data;
    for &size in ODD_CHUNKS.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        upload.write(chunk)?;
        rest = tail;
    }
    assert_eq!(upload.received(), data.len() as u64);
    upload.commit()
}

/// Reads `blob` back whole and checks it, without printing megabytes on failure.
fn assert_reads_back(store: &dyn BlobStore, blob: &Blob, who: &str) {
    let read = store
        .read(&blob.digest)
        .unwrap()
        .unwrap_or_else(|| panic!("{who}: {} is missing", blob.digest));
    assert!(
        read == blob.data,
        "{who}: {} read back as {} other bytes",
        blob.digest,
        read.len()
    );
}

/// What a streaming read yielded before it ended.
struct Streamed {
    bytes: Vec<u8>,
    chunks: usize,
    end: Result<(), StoreError>,
}

/// Reads `digest` from `offset` through [`BlobStore::open`] to its end; `None` if missing.
fn stream(store: &dyn BlobStore, digest: &Digest, offset: u64) -> Option<Streamed> {
    let mut reader = store.open(digest, offset).unwrap()?;
    let mut streamed = Streamed {
        bytes: Vec::new(),
        chunks: 0,
        end: Ok(()),
    };
    loop {
        match reader.next_chunk() {
            Ok(Some(chunk)) => {
                assert!(!chunk.is_empty(), "a chunk is never empty");
                assert!(chunk.len() <= READ_CHUNK.max(digest.size_bytes as usize));
                streamed.bytes.extend_from_slice(&chunk);
                streamed.chunks += 1;
            }
            Ok(None) => break,
            Err(error) => {
                streamed.end = Err(error);
                break;
            }
        }
    }
    assert!(
        matches!(reader.next_chunk(), Ok(None)),
        "a finished reader stays finished"
    );
    Some(streamed)
}

/// Lets the store's millisecond clock move on, so that uses in a row get distinct access
/// times and least-recently-used order is not left to ties.
fn tick() {
    // Real time: the disk store reads the wall clock and takes no clock to advance.
    std::thread::sleep(Duration::from_millis(3));
}

/// Writes `blobs` one after the other, each used later than the one before.
fn write_in_order(store: &dyn BlobStore, blobs: &[&Blob]) {
    for blob in blobs {
        store.write(&blob.digest, &blob.data).unwrap();
        tick();
    }
}

/// The digests of `blobs` that `store` still has (without counting as a use).
fn present<'a>(store: &dyn BlobStore, blobs: &[&'a Blob]) -> Vec<&'a Digest> {
    blobs
        .iter()
        .filter(|b| store.contains(&b.digest))
        .map(|b| &b.digest)
        .collect()
}

fn digests<'a>(blobs: &[&'a Blob]) -> Vec<&'a Digest> {
    blobs.iter().map(|b| &b.digest).collect()
}

/// Distinct incompressible blobs of [`FIFTH`] bytes (stored as they are).
fn fifths<const N: usize>(seed: u64) -> [Blob; N] {
    std::array::from_fn(|n| Blob::incompressible(DigestFunction::Sha256, FIFTH, seed + n as u64))
}

// ---------------------------------------------------------------------------------------------
// Every store
// ---------------------------------------------------------------------------------------------

#[test]
fn blobs_round_trip_under_both_digest_functions() {
    for_each_store(|fixture| {
        let store = fixture.store();
        let who = fixture.name();
        let mut count = 0;
        for function in DigestFunction::ALL {
            for blob in [
                Blob::new(function, b"hello".to_vec()),
                Blob::compressible(function, 3 * KIB + 1, 1),
                Blob::incompressible(function, 300 * KIB + 3, 2),
            ] {
                assert_eq!(
                    store.find_missing(&[blob.digest]),
                    vec![blob.digest],
                    "{who}"
                );
                assert!(!store.contains(&blob.digest));
                assert_eq!(store.read(&blob.digest).unwrap(), None, "{who}");
                assert!(store.open(&blob.digest, 0).unwrap().is_none(), "{who}");

                store.write(&blob.digest, &blob.data).unwrap();
                count += 1;
                assert_eq!(store.find_missing(&[blob.digest]), vec![], "{who}");
                assert!(store.contains(&blob.digest), "{who}");
                assert_reads_back(store, &blob, who);

                // Writing it again changes nothing.
                let before = store.stats();
                store.write(&blob.digest, &blob.data).unwrap();
                assert_eq!(store.stats(), before, "{who}");
                assert_eq!(before.blobs, count, "{who}");
            }
        }
        // The store is keyed by function: the same bytes under the other function are another
        // blob, stored or not on their own.
        let sha = Blob::new(DigestFunction::Sha256, b"only under sha256".to_vec());
        let blake = Blob::new(DigestFunction::Blake3, sha.data.clone());
        store.write(&sha.digest, &sha.data).unwrap();
        assert_eq!(
            store.find_missing(&[sha.digest, blake.digest]),
            vec![blake.digest],
            "{who}"
        );
        fixture.assert_consistent();
    });
}

#[test]
fn the_empty_blob_is_always_present() {
    for_each_store(|fixture| {
        let store = fixture.store();
        let who = fixture.name();
        for function in DigestFunction::ALL {
            let empty = function.empty_digest();
            assert_eq!(store.find_missing(&[empty]), vec![], "{who}: {function}");
            assert!(store.contains(&empty), "{who}: {function}");
            assert_eq!(store.read(&empty).unwrap().unwrap(), &b""[..], "{who}");
            for offset in [0, 1] {
                let streamed = stream(store, &empty, offset).expect("the empty blob opens");
                assert_eq!((streamed.bytes.len(), streamed.chunks), (0, 0), "{who}");
                streamed.end.unwrap();
            }
            // Uploading it is accepted and changes nothing.
            store.write(&empty, b"").unwrap();
            upload_bytes(store, &empty, b"").unwrap();
            assert_eq!(store.stats().blobs, 0, "{who}");
        }
        // The SHA-256 empty hash under BLAKE3 names no empty blob; it is just missing.
        let mut confused = DigestFunction::Sha256.empty_digest();
        confused.function = DigestFunction::Blake3;
        assert_eq!(store.find_missing(&[confused]), vec![confused], "{who}");
        assert_eq!(store.read(&confused).unwrap(), None, "{who}");
        if let Fixture::Disk(disk) = fixture {
            assert_eq!(
                disk.blob_files(),
                Vec::<PathBuf>::new(),
                "no file for the empty blob"
            );
        }
        fixture.assert_consistent();
    });
}

#[test]
fn data_that_does_not_match_its_digest_is_refused_and_never_visible() {
    for_each_store(|fixture| {
        let store = fixture.store();
        let who = fixture.name();
        for function in DigestFunction::ALL {
            // Small enough to stay buffered, and large enough to go to a temporary file.
            for len in [KIB, BUFFER_LIMIT + 100 * KIB] {
                let blob = Blob::compressible(function, len, 10);
                let other = Blob::compressible(function, len, 11);
                let hash_mismatch = |error: StoreError| match error {
                    StoreError::Digest(DigestError::HashMismatch { expected, actual }) => {
                        assert_eq!((expected, actual), (other.digest, blob.digest), "{who}");
                    }
                    unexpected => panic!("{who}: expected a hash mismatch, got {unexpected:?}"),
                };
                hash_mismatch(store.write(&other.digest, &blob.data).unwrap_err());
                hash_mismatch(upload_bytes(store, &other.digest, &blob.data).unwrap_err());

                let longer = [&blob.data[..], b"+"].concat();
                let shorter = &blob.data[..len - 1];
                for wrong in [&longer[..], shorter] {
                    let refused = store.write(&blob.digest, wrong).unwrap_err();
                    assert!(
                        matches!(
                            refused,
                            StoreError::Digest(DigestError::SizeMismatch { expected, actual })
                                if expected == blob.digest && actual == wrong.len() as u64
                        ),
                        "{who}: {refused:?}"
                    );
                }
                // A short upload is refused at commit (a long one as overflow, see below).
                let refused = upload_bytes(store, &blob.digest, shorter).unwrap_err();
                assert!(
                    matches!(
                        refused,
                        StoreError::Digest(DigestError::SizeMismatch { expected, actual })
                            if expected == blob.digest && actual == shorter.len() as u64
                    ),
                    "{who}: {refused:?}"
                );

                let both = [blob.digest, other.digest];
                assert_eq!(store.find_missing(&both), both.to_vec(), "{who}");
                assert_eq!(store.read(&blob.digest).unwrap(), None, "{who}");
                assert_eq!(store.read(&other.digest).unwrap(), None, "{who}");
            }
        }
        assert_eq!(store.stats().blobs, 0, "{who}");
        fixture.assert_consistent();
    });
}

#[test]
fn streaming_uploads_in_odd_chunks_store_small_and_large_blobs() {
    for_each_store(|fixture| {
        let store = fixture.store();
        let who = fixture.name();
        let blobs = [
            Blob::compressible(DigestFunction::Sha256, 100 * KIB, 20),
            Blob::incompressible(DigestFunction::Blake3, 100 * KIB + 3, 21),
            Blob::compressible(DigestFunction::Blake3, BUFFER_LIMIT, 22),
            Blob::incompressible(DigestFunction::Sha256, BUFFER_LIMIT + 1, 23),
            Blob::compressible(DigestFunction::Sha256, 4 * MIB + 17, 24),
            Blob::incompressible(DigestFunction::Blake3, 3 * MIB + 5, 25),
        ];
        for blob in &blobs {
            upload(store, blob).unwrap();
            assert!(store.contains(&blob.digest), "{who}: {}", blob.len());
            assert_reads_back(store, blob, who);
            // Uploading it again is accepted and stores nothing new.
            let before = store.stats();
            upload(store, blob).unwrap();
            assert_eq!(store.stats(), before, "{who}");
        }
        let stats = store.stats();
        assert_eq!(stats.blobs, blobs.len() as u64, "{who}");
        assert_eq!(
            stats.logical_bytes,
            blobs.iter().map(Blob::len).sum::<u64>(),
            "{who}"
        );
        fixture.assert_consistent();
    });
}

#[test]
fn an_upload_past_the_digest_size_is_refused() {
    for_each_store(|fixture| {
        let store = fixture.store();
        let who = fixture.name();
        for blob in [
            Blob::compressible(DigestFunction::Sha256, 10 * KIB, 30),
            Blob::incompressible(DigestFunction::Blake3, BUFFER_LIMIT + 10 * KIB, 31),
        ] {
            let mut upload = store.begin_upload(&blob.digest).unwrap();
            for chunk in blob.data.chunks(ODD_CHUNKS[3]) {
                upload.write(chunk).unwrap();
            }
            let refused = upload.write(b"one byte too many").unwrap_err();
            match refused {
                StoreError::Overflow {
                    digest,
                    received,
                    expected,
                } => assert_eq!(
                    (digest, received, expected),
                    (blob.digest, blob.len() + 17, blob.len()),
                    "{who}"
                ),
                other => panic!("{who}: expected an overflow, got {other:?}"),
            }
            assert_eq!(upload.received(), blob.len(), "refused bytes are not taken");
            drop(upload);

            // One write larger than the whole blob, on a fresh upload.
            let mut upload = store.begin_upload(&blob.digest).unwrap();
            let too_long = [&blob.data[..], b"!"].concat();
            assert!(matches!(
                upload.write(&too_long),
                Err(StoreError::Overflow { .. })
            ));
            assert_eq!(upload.received(), 0);
            drop(upload);

            assert_eq!(
                store.find_missing(&[blob.digest]),
                vec![blob.digest],
                "{who}"
            );
        }
        fixture.assert_consistent();
    });
}

#[test]
fn a_dropped_upload_leaves_no_blob_and_no_temporary_file() {
    for_each_store(|fixture| {
        let store = fixture.store();
        let who = fixture.name();
        for blob in [
            Blob::compressible(DigestFunction::Sha256, 100 * KIB, 40),
            Blob::compressible(DigestFunction::Blake3, BUFFER_LIMIT + 1, 41),
            Blob::incompressible(DigestFunction::Sha256, BUFFER_LIMIT + 2, 42),
            Blob::incompressible(DigestFunction::Sha256, 2 * MIB, 43),
        ] {
            let mut upload = store.begin_upload(&blob.digest).unwrap();
            // Everything but the last byte.
            let sent = &blob.data[..blob.data.len() - 1];
            for chunk in sent.chunks(ODD_CHUNKS[4]) {
                upload.write(chunk).unwrap();
            }
            if let Fixture::Disk(disk) = fixture {
                assert_eq!(
                    disk.tmp_files().len(),
                    usize::from(sent.len() > BUFFER_LIMIT),
                    "{} bytes sent: only past the buffer limit does an upload go to a file",
                    sent.len()
                );
            }
            assert!(
                !store.contains(&blob.digest),
                "{who}: nothing partial is visible"
            );
            drop(upload);
            assert_eq!(
                store.find_missing(&[blob.digest]),
                vec![blob.digest],
                "{who}"
            );
            fixture.assert_consistent();
        }
        assert_eq!(store.stats().blobs, 0, "{who}");
    });
}

#[test]
fn reads_from_an_offset_return_exactly_the_rest_of_the_blob() {
    for_each_store(|fixture| {
        let store = fixture.store();
        let who = fixture.name();
        // Three read chunks and a bit; on disk one is kept raw and one compressed. The larger
        // raw one is large enough to be mapped where the store maps reads: its parts start at
        // offsets off page boundaries.
        for (size, blob) in [
            (
                3 * READ_CHUNK + 13,
                Blob::incompressible(DigestFunction::Sha256, 3 * READ_CHUNK + 13, 50),
            ),
            (
                3 * READ_CHUNK + 13,
                Blob::compressible(DigestFunction::Blake3, 3 * READ_CHUNK + 13, 51),
            ),
            (
                9 * READ_CHUNK + 13,
                Blob::incompressible(DigestFunction::Blake3, 9 * READ_CHUNK + 13, 52),
            ),
        ] {
            store.write(&blob.digest, &blob.data).unwrap();
            let size = size as u64;
            let chunk = READ_CHUNK as u64;
            for offset in [
                0,
                1,
                chunk - 1,
                chunk,
                chunk + 1,
                size / 2,
                2 * chunk + 7,
                size - 1,
                size,
            ] {
                let streamed = stream(store, &blob.digest, offset).expect("stored");
                streamed.end.unwrap();
                assert!(
                    streamed.bytes == blob.data[offset as usize..],
                    "{who}: {} bytes from offset {offset}, expected {}",
                    streamed.bytes.len(),
                    size - offset
                );
            }
            // An offset past the end is clamped to it: nothing to read, and no error.
            let streamed = stream(store, &blob.digest, size + 100).expect("stored");
            streamed.end.unwrap();
            assert!(streamed.bytes.is_empty(), "{who}");
        }
    });
}

#[test]
fn a_corrupt_blob_reads_as_missing_is_removed_and_can_be_uploaded_again() {
    for_each_store(|fixture| {
        let store = fixture.store();
        let who = fixture.name();
        for damage in Damage::FLIP_OR_TRUNCATE {
            // On disk: one kept raw and one compressed.
            for blob in [
                Blob::incompressible(DigestFunction::Sha256, 600 * KIB, 60),
                Blob::compressible(DigestFunction::Blake3, 600 * KIB, 61),
            ] {
                store.write(&blob.digest, &blob.data).unwrap();
                fixture.damage(&blob, damage);

                let read = store.read(&blob.digest).unwrap();
                assert!(read.is_none(), "{who}: {damage:?}: corrupt blob was served");
                assert!(!store.contains(&blob.digest), "{who}: {damage:?}");
                assert_eq!(store.find_missing(&[blob.digest]), vec![blob.digest]);
                if let Fixture::Disk(disk) = fixture {
                    assert_eq!(disk.at_rest(&blob.digest), None, "{damage:?}: file removed");
                }
                fixture.assert_consistent();

                // The client repairs the miss by uploading again.
                upload(store, &blob).unwrap();
                assert_reads_back(store, &blob, who);
                fixture.assert_consistent();
            }
        }
    });
}

#[test]
fn a_corrupt_blob_streams_then_ends_in_corrupt_instead_of_ok() {
    for_each_store(|fixture| {
        let store = fixture.store();
        let who = fixture.name();
        for damage in Damage::FLIP_OR_TRUNCATE {
            for blob in [
                Blob::incompressible(DigestFunction::Blake3, MIB + 1000, 70),
                Blob::compressible(DigestFunction::Sha256, MIB + 1000, 71),
            ] {
                store.write(&blob.digest, &blob.data).unwrap();
                fixture.damage(&blob, damage);

                let streamed = stream(store, &blob.digest, 0).expect("still listed when opened");
                match streamed.end {
                    Err(StoreError::Corrupt { digest, .. }) => assert_eq!(digest, blob.digest),
                    other => {
                        panic!("{who}: {damage:?}: expected Corrupt at the end, got {other:?}")
                    }
                }
                if let Fixture::Disk(_) = fixture {
                    // The disk store streams as it verifies: a reader sees chunks first.
                    assert!(streamed.chunks > 0, "{damage:?}: no chunk before the error");
                }
                assert!(!store.contains(&blob.digest), "{who}: {damage:?}: removed");
                assert!(store.open(&blob.digest, 0).unwrap().is_none(), "{who}");
                if let Fixture::Disk(disk) = fixture {
                    assert_eq!(disk.at_rest(&blob.digest), None, "{damage:?}: file removed");
                }
                fixture.assert_consistent();
            }
        }
    });
}

/// Regression: the disk reader probes for bytes past the blob's end but swallows the probe's
/// error (`disk.rs`, `self.source.read(&mut probe).unwrap_or(0)`). For a zstd file, trailing
/// bytes that are not a whole frame make the decoder fail exactly there ("Unknown frame
/// descriptor"), so the blob is served and kept, its file larger than the index says, while
/// the same damage to a raw file is caught as corrupt.
#[test]
fn trailing_bytes_after_a_stored_blob_make_it_corrupt_raw_or_compressed() {
    for_each_store(|fixture| {
        let store = fixture.store();
        let who = fixture.name();
        for blob in [
            Blob::incompressible(DigestFunction::Sha256, 100 * KIB, 75),
            Blob::compressible(DigestFunction::Sha256, 100 * KIB, 76),
        ] {
            store.write(&blob.digest, &blob.data).unwrap();
            fixture.damage(&blob, Damage::Append);
            let streamed = stream(store, &blob.digest, 0).expect("still listed when opened");
            assert!(
                matches!(streamed.end, Err(StoreError::Corrupt { .. })),
                "{who}: {} bytes served from a file with trailing bytes, ending {:?}",
                streamed.bytes.len(),
                streamed.end
            );
            assert!(!store.contains(&blob.digest), "{who}: removed");
            fixture.assert_consistent();
        }
    });
}

#[test]
fn concurrent_uploads_of_one_blob_all_succeed_and_store_it_once() {
    for_each_store(|fixture| {
        let store = fixture.store();
        let who = fixture.name();
        for blob in [
            Blob::compressible(DigestFunction::Sha256, 100 * KIB, 80),
            Blob::incompressible(DigestFunction::Blake3, 2 * MIB + 1, 81),
        ] {
            let start = Barrier::new(8);
            std::thread::scope(|scope| {
                let uploads: Vec<_> = (0..8)
                    .map(|_| {
                        scope.spawn(|| {
                            start.wait();
                            upload(store, &blob)
                        })
                    })
                    .collect();
                for upload in uploads {
                    upload.join().unwrap().unwrap();
                }
            });
            assert_reads_back(store, &blob, who);
            if let Fixture::Disk(disk) = fixture {
                let hash = blob.digest.hash_hex();
                let files: Vec<_> = fs::read_dir(disk.shard_dir(blob.digest.function, &hash[..2]))
                    .unwrap()
                    .map(|entry| entry.unwrap().path())
                    .filter(|path| path.to_string_lossy().contains(&hash))
                    .collect();
                assert_eq!(files.len(), 1, "exactly one file: {files:?}");
            }
        }
        assert_eq!(store.stats().blobs, 2, "{who}");
        fixture.assert_consistent();
    });
}

#[test]
fn concurrent_uploads_of_different_blobs_all_land() {
    for_each_store(|fixture| {
        let store = fixture.store();
        let who = fixture.name();
        let blobs: Vec<Vec<Blob>> = (0..8u64)
            .map(|thread| {
                (0..4u64)
                    .map(|n| {
                        let seed = 100 + thread * 4 + n;
                        let len = 10 * KIB + (thread as usize * 4 + n as usize) * 20 * KIB;
                        match (thread + n) % 3 {
                            0 => Blob::incompressible(DigestFunction::Sha256, len, seed),
                            1 => Blob::compressible(DigestFunction::Blake3, len, seed),
                            _ => Blob::compressible(DigestFunction::Sha256, len, seed),
                        }
                    })
                    .collect()
            })
            .collect();
        let start = Barrier::new(blobs.len());
        std::thread::scope(|scope| {
            for mine in &blobs {
                let start = &start;
                scope.spawn(move || {
                    start.wait();
                    for (n, blob) in mine.iter().enumerate() {
                        if n % 2 == 0 {
                            upload(store, blob).unwrap();
                        } else {
                            store.write(&blob.digest, &blob.data).unwrap();
                        }
                    }
                });
            }
        });
        let all: Vec<&Blob> = blobs.iter().flatten().collect();
        for blob in &all {
            assert_reads_back(store, blob, who);
        }
        let stats = store.stats();
        assert_eq!(stats.blobs, all.len() as u64, "{who}");
        assert_eq!(
            stats.logical_bytes,
            all.iter().map(|b| b.len()).sum::<u64>(),
            "{who}"
        );
        fixture.assert_consistent();
    });
}

// ---------------------------------------------------------------------------------------------
// The disk store: at-rest form
// ---------------------------------------------------------------------------------------------

#[test]
fn compressible_blobs_rest_as_zstd_and_incompressible_ones_raw() {
    let disk = DiskFixture::open();
    let store: &dyn BlobStore = &disk.store;
    let small_text = Blob::compressible(DigestFunction::Sha256, 100 * KIB, 90);
    let large_text = Blob::compressible(DigestFunction::Sha256, 3 * MIB + 1, 91);
    let small_noise = Blob::incompressible(DigestFunction::Sha256, 100 * KIB, 92);
    let large_noise = Blob::incompressible(DigestFunction::Sha256, 3 * MIB + 1, 93);
    // Under 16 KiB: too small to be worth compressing, however repetitive.
    let tiny_text = Blob::compressible(DigestFunction::Sha256, 12 * KIB, 94);

    store.write(&small_text.digest, &small_text.data).unwrap();
    upload(store, &large_text).unwrap();
    upload(store, &small_noise).unwrap();
    upload(store, &large_noise).unwrap();
    store.write(&tiny_text.digest, &tiny_text.data).unwrap();

    for text in [&small_text, &large_text] {
        let at_rest = disk.at_rest(&text.digest).unwrap();
        let hash = text.digest.hash_hex();
        let expected = disk
            .root()
            .join(format!("blobs/sha256/{}/{hash}.zst", &hash[..2]));
        assert_eq!(at_rest, AtRest::Zstd(expected));
        let stored = at_rest.path().metadata().unwrap().len();
        assert!(stored < text.len() / 4, "{stored} of {} bytes", text.len());
    }
    for raw in [&small_noise, &large_noise, &tiny_text] {
        let at_rest = disk.at_rest(&raw.digest).unwrap();
        assert!(matches!(at_rest, AtRest::Raw(_)), "{at_rest:?}");
        assert!(fs::read(at_rest.path()).unwrap() == raw.data, "{at_rest:?}");
    }
    let stats = store.stats();
    assert!(stats.stored_bytes < stats.logical_bytes, "{stats:?}");
    disk.assert_consistent();

    // With compression off, everything rests raw.
    let plain = DiskFixture::open_with(|o| o.compress = false);
    plain
        .store
        .write(&small_text.digest, &small_text.data)
        .unwrap();
    upload(&plain.store, &large_text).unwrap();
    for text in [&small_text, &large_text] {
        assert!(matches!(plain.at_rest(&text.digest), Some(AtRest::Raw(_))));
    }
    plain.assert_consistent();
}

// ---------------------------------------------------------------------------------------------
// The disk store: eviction
// ---------------------------------------------------------------------------------------------

#[test]
fn eviction_takes_the_least_recently_used_blobs_first() {
    let disk = DiskFixture::with_budget(BUDGET);
    let store: &dyn BlobStore = &disk.store;
    let [a, b, c, d, e, f] = fifths(200);
    write_in_order(store, &[&a, &b, &c, &d, &e]);
    assert_eq!(
        store.stats().stored_bytes,
        5 * FIFTH as u64,
        "five fit in the budget"
    );

    // FindMissingBlobs and touch count as uses; contains does not.
    assert_eq!(store.find_missing(&[b.digest]), vec![]);
    tick();
    assert!(store.contains(&a.digest));
    tick();
    store.touch(&[c.digest]);
    tick();

    // The sixth does not fit. Eviction frees down to 90% of the budget, oldest first: a
    // (written first, only looked at since) and d go.
    store.write(&f.digest, &f.data).unwrap();
    let all = [&a, &b, &c, &d, &e, &f];
    assert_eq!(present(store, &all), digests(&[&b, &c, &e, &f]));
    assert_eq!(disk.at_rest(&a.digest), None);
    assert_eq!(disk.at_rest(&d.digest), None);
    let stats = store.stats();
    assert_eq!((stats.blobs, stats.evicted), (4, 2), "{stats:?}");
    assert_eq!(stats.stored_bytes, 4 * FIFTH as u64);
    assert_eq!(
        stats.logical_bytes, stats.stored_bytes,
        "random bytes are stored raw"
    );
    disk.assert_consistent();
}

#[test]
fn a_blob_larger_than_the_budget_is_refused_as_full() {
    let disk = DiskFixture::with_budget(BUDGET);
    let store: &dyn BlobStore = &disk.store;
    let small = Blob::incompressible(DigestFunction::Sha256, FIFTH, 300);
    store.write(&small.digest, &small.data).unwrap();

    let huge = Blob::incompressible(DigestFunction::Sha256, MIB + 1, 301);
    let whole = store.write(&huge.digest, &huge.data).unwrap_err();
    let streamed = upload(store, &huge).unwrap_err();
    for refused in [whole, streamed] {
        match refused {
            StoreError::Full {
                digest,
                needed,
                budget,
                pinned,
            } => assert_eq!(
                (digest, needed, budget, pinned),
                (huge.digest, huge.len(), BUDGET, 0)
            ),
            other => panic!("expected Full, got {other:?}"),
        }
    }
    assert!(!store.contains(&huge.digest));
    assert!(
        store.contains(&small.digest),
        "a refused eviction removes nothing"
    );
    assert_eq!(store.stats().evicted, 0);
    disk.assert_consistent();

    // What counts is the size at rest: twice the budget of text fits once compressed.
    let text = Blob::compressible(DigestFunction::Sha256, 2 * MIB, 302);
    upload(store, &text).unwrap();
    assert!(store.contains(&text.digest));
    disk.assert_consistent();
}

#[test]
fn recently_used_blobs_are_not_evicted_so_a_full_store_refuses_new_ones() {
    let disk = DiskFixture::open_with(|o| {
        o.budget_bytes = BUDGET;
        o.protect_recent = Duration::from_secs(3600);
    });
    let store: &dyn BlobStore = &disk.store;
    let blobs: [Blob; 6] = fifths(400);
    let (old, new) = blobs.split_at(5);
    for blob in old {
        store.write(&blob.digest, &blob.data).unwrap();
    }
    let before = store.stats();

    let refused = upload(store, &new[0]).unwrap_err();
    match refused {
        StoreError::Full {
            digest,
            needed,
            budget,
            pinned,
        } => assert_eq!(
            (digest, needed, budget, pinned),
            (new[0].digest, FIFTH as u64, BUDGET, 5 * FIFTH as u64)
        ),
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(store.stats(), before, "nothing was removed");
    let old: Vec<&Blob> = old.iter().collect();
    assert_eq!(present(store, &old), digests(&old));
    assert!(!store.contains(&new[0].digest));
    disk.assert_consistent();
}

#[test]
fn pinned_blobs_survive_eviction_until_their_guards_drop() {
    let disk = DiskFixture::with_budget(BUDGET);
    let store: &dyn BlobStore = &disk.store;
    let [a, b, c, d, e, f, g, h, i, j] = fifths(500);
    let all = [&a, &b, &c, &d, &e, &f, &g, &h, &i, &j];
    write_in_order(store, &[&a, &b, &c, &d, &e]);

    let never_stored = Blob::new(DigestFunction::Sha256, b"not stored".to_vec());
    let a_and_b = disk.store.pin(&[a.digest, b.digest, never_stored.digest]);
    let a_again = disk.store.pin(&[a.digest]);
    assert!(
        !store.contains(&never_stored.digest),
        "pinning does not store"
    );

    // a and b are the oldest, but pinned: c and d go instead.
    write_in_order(store, &[&f]);
    assert_eq!(present(store, &all), digests(&[&a, &b, &e, &f]));
    write_in_order(store, &[&g]);

    // With every stored blob pinned, nothing can make room.
    let everything = disk
        .store
        .pin(&[a.digest, b.digest, e.digest, f.digest, g.digest]);
    let refused = store.write(&h.digest, &h.data).unwrap_err();
    assert!(
        matches!(refused, StoreError::Full { pinned, .. } if pinned == 5 * FIFTH as u64),
        "{refused:?}"
    );
    drop(everything);

    // a is still pinned by its second guard; b is not any more and is now the oldest.
    drop(a_and_b);
    write_in_order(store, &[&h]);
    assert_eq!(present(store, &all), digests(&[&a, &f, &g, &h]));

    // Once the last guard drops, a is evictable like any other, and the oldest.
    drop(a_again);
    write_in_order(store, &[&i, &j]);
    assert_eq!(present(store, &all), digests(&[&g, &h, &i, &j]));
    disk.assert_consistent();
}

// ---------------------------------------------------------------------------------------------
// The disk store: restarts
// ---------------------------------------------------------------------------------------------

#[test]
fn blobs_survive_a_restart() {
    let disk = DiskFixture::open();
    let blobs = [
        Blob::compressible(DigestFunction::Sha256, 100 * KIB, 600),
        Blob::incompressible(DigestFunction::Blake3, 300 * KIB, 601),
        Blob::compressible(DigestFunction::Blake3, 2 * MIB, 602),
        Blob::new(DigestFunction::Sha256, b"small".to_vec()),
    ];
    for (n, blob) in blobs.iter().enumerate() {
        if n % 2 == 0 {
            disk.store.write(&blob.digest, &blob.data).unwrap();
        } else {
            upload(&disk.store, blob).unwrap();
        }
    }
    let before = disk.store.stats();

    let disk = disk.restart();
    for blob in &blobs {
        assert_reads_back(&disk.store, blob, "disk store");
    }
    assert_eq!(disk.store.stats(), before);
    disk.assert_consistent();
}

#[test]
fn a_restart_adopts_blob_files_without_records_and_removes_only_files_proven_wrong() {
    let disk = DiskFixture::open();
    let kept = Blob::incompressible(DigestFunction::Sha256, 10 * KIB, 700);
    let vanished = Blob::compressible(DigestFunction::Blake3, 10 * KIB, 701);
    // Large enough to be worth compressing (small blobs rest raw).
    let compressed = Blob::compressible(DigestFunction::Sha256, 20 * KIB, 702);
    let truncated = Blob::incompressible(DigestFunction::Blake3, 10 * KIB, 706);
    for blob in [&kept, &vanished, &compressed, &truncated] {
        disk.store.write(&blob.digest, &blob.data).unwrap();
    }
    // Blob files the index does not know (their records lost in a crash): one raw, one
    // compressed (made by a second store, so it is a real zstd file of the blob).
    let unknown = Blob::incompressible(DigestFunction::Sha256, 100, 703);
    let hash = unknown.digest.hash_hex();
    let unknown_path = disk
        .shard_dir(DigestFunction::Sha256, &hash[..2])
        .join(&hash);
    fs::write(&unknown_path, &unknown.data).unwrap();
    let unknown_zst = Blob::compressible(DigestFunction::Blake3, 20 * KIB, 704);
    {
        let other = DiskFixture::open();
        other
            .store
            .write(&unknown_zst.digest, &unknown_zst.data)
            .unwrap();
        let file = other.at_rest(&unknown_zst.digest).unwrap();
        assert!(file.path().to_string_lossy().ends_with(".zst"));
        let hash = unknown_zst.digest.hash_hex();
        let dest = disk
            .shard_dir(DigestFunction::Blake3, &hash[..2])
            .join(format!("{hash}.zst"));
        fs::copy(file.path(), dest).unwrap();
    }
    // Files proven wrong: a "compressed form" of a known blob that is not zstd at all, and a
    // raw file whose content is not the blob its name says.
    let other_form = disk
        .at_rest(&kept.digest)
        .unwrap()
        .path()
        .with_extension("zst");
    fs::write(&other_form, b"not the kept blob").unwrap();
    let liar = Blob::incompressible(DigestFunction::Sha256, 100, 705);
    let liar_hash = liar.digest.hash_hex();
    let liar_path = disk
        .shard_dir(DigestFunction::Sha256, &liar_hash[..2])
        .join(&liar_hash);
    fs::write(&liar_path, b"some other bytes").unwrap();
    // A second, valid copy of a blob the index has in the other form: redundant.
    let raw_of_compressed = disk
        .at_rest(&compressed.digest)
        .unwrap()
        .path()
        .with_extension("");
    fs::write(&raw_of_compressed, &compressed.data).unwrap();
    // A file that is not named as a blob: not the store's to judge.
    let foreign = disk
        .shard_dir(DigestFunction::Sha256, "ab")
        .join("notes.txt");
    fs::write(&foreign, b"someone's notes").unwrap();
    let leftover = disk.root().join("tmp").join("leftover-upload");
    fs::write(&leftover, b"half an upload").unwrap();
    // A stored blob's file deleted behind the store's back, and one cut short (its record
    // and its file disagree, so the file is checked, and it is wrong).
    fs::remove_file(disk.at_rest(&vanished.digest).unwrap().path()).unwrap();
    let cut = disk.at_rest(&truncated.digest).unwrap().path().to_owned();
    fs::write(&cut, &truncated.data[..100]).unwrap();

    let disk = disk.restart();
    for gone in [&other_form, &liar_path, &raw_of_compressed, &leftover, &cut] {
        assert!(!gone.exists(), "{} survived the restart", gone.display());
    }
    assert!(foreign.exists(), "a file not named as a blob was removed");
    fs::remove_file(&foreign).unwrap();
    assert_reads_back(&disk.store, &unknown, "adopted raw blob");
    assert_reads_back(&disk.store, &unknown_zst, "adopted compressed blob");
    for missing in [&vanished, &liar, &truncated] {
        assert_eq!(
            disk.store.find_missing(&[missing.digest]),
            vec![missing.digest]
        );
    }
    assert_reads_back(&disk.store, &kept, "disk store");
    assert_reads_back(&disk.store, &compressed, "disk store");
    assert_eq!(disk.store.stats().blobs, 4);
    disk.assert_consistent();

    // Adopted blobs now have records; the vanished blob stays forgotten.
    let disk = disk.restart();
    assert_eq!(disk.store.stats().blobs, 4);
    assert_reads_back(&disk.store, &unknown_zst, "adopted compressed blob");
    disk.assert_consistent();
}

#[test]
fn a_file_hashed_on_first_use_is_removed_if_it_was_damaged_while_the_store_was_closed() {
    let disk = DiskFixture::open_with(|o| o.compress = false);
    let good = Blob::incompressible(DigestFunction::Sha256, 10 * KIB, 710);
    let damaged = Blob::incompressible(DigestFunction::Blake3, 10 * KIB, 711);
    for blob in [&good, &damaged] {
        disk.store.write(&blob.digest, &blob.data).unwrap();
    }
    let path = disk.at_rest(&damaged.digest).unwrap().path().to_owned();
    let mut bytes = fs::read(&path).unwrap();
    bytes[5000] ^= 0xff;
    fs::write(&path, &bytes).unwrap();

    let disk = disk.restart();
    // Same length as its record says, so the start cannot tell; first use does.
    assert!(disk.store.raw_path(&good.digest).is_some());
    assert_eq!(
        disk.store
            .find_missing_verified(&[good.digest, damaged.digest]),
        vec![damaged.digest]
    );
    assert!(disk.store.raw_path(&damaged.digest).is_none());
    assert!(!path.exists());
    disk.assert_consistent();
}

#[test]
fn a_blob_file_deleted_while_running_reads_as_missing() {
    let disk = DiskFixture::open();
    let store: &dyn BlobStore = &disk.store;
    let blob = Blob::incompressible(DigestFunction::Sha256, 10 * KIB, 800);
    store.write(&blob.digest, &blob.data).unwrap();
    fs::remove_file(disk.at_rest(&blob.digest).unwrap().path()).unwrap();

    assert_eq!(store.read(&blob.digest).unwrap(), None);
    assert_eq!(store.find_missing(&[blob.digest]), vec![blob.digest]);
    disk.assert_consistent();
}

#[test]
fn access_times_written_back_survive_a_restart_and_steer_eviction() {
    // Two stores with the same history; only the first writes its access times back.
    let [a, b, c, d, e, f] = &fifths(900);
    let written_back = DiskFixture::with_budget(BUDGET);
    let forgotten = DiskFixture::with_budget(BUDGET);
    for disk in [&written_back, &forgotten] {
        write_in_order(&disk.store, &[a, b, c, d, e]);
    }
    // Access times are only worth writing back once they moved by more than a second: real
    // time, since the disk store reads the wall clock and takes no clock to advance.
    std::thread::sleep(Duration::from_millis(1100));
    for disk in [&written_back, &forgotten] {
        assert_eq!(disk.store.find_missing(&[a.digest]), vec![]);
    }
    written_back.store.checkpoint().unwrap();

    let written_back = written_back.restart();
    let forgotten = forgotten.restart();
    let all = [a, b, c, d, e, f];
    for disk in [&written_back, &forgotten] {
        disk.store.write(&f.digest, &f.data).unwrap();
        disk.assert_consistent();
    }
    // After the restart, a counts as used after b and c, so they go instead of it.
    assert_eq!(present(&written_back.store, &all), digests(&[a, d, e, f]));
    // Without the write-back, a is as old as when it was written and goes first.
    assert_eq!(present(&forgotten.store, &all), digests(&[c, d, e, f]));
}

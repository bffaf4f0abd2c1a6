//! A backup directory: snapshots that share their blobs, each with a manifest that holds a
//! checksum of every file it needs.
//!
//! ```text
//! DIR/blobs/<function>/<first two hex digits>/<hex>-<size>   a blob, raw; its name is its checksum
//! DIR/snapshots/<UTC time>/tables.bin                        the metadata tables
//! DIR/snapshots/<UTC time>/manifest.json                     format, time, tables, blobs, checksums
//! DIR/snapshots/<UTC time>/manifest.sha256                   the manifest's own checksum
//! ```
//!
//! Blobs are shared by every snapshot in the directory, so a backup copies only the blobs the
//! directory lacks (incremental by content). A snapshot is written under a temporary name and
//! renamed into place once whole, so a backup that stops half-way leaves no snapshot behind.
//! [`Archive::verify`] checks every checksum of a snapshot and names the first bad file;
//! [`restore`] verifies before it writes anything.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::meta::{Batch, MetaError, MetadataStore, RedbStore, TableDump};
use tessera_cas::store::{BlobStore, DiskStore, DiskStoreOptions, StoreError};
use thiserror::Error;

/// The manifest format this code writes and reads.
pub const FORMAT: u32 = 1;
const TABLES_FILE: &str = "tables.bin";
const MANIFEST_FILE: &str = "manifest.json";
const MANIFEST_SUM_FILE: &str = "manifest.sha256";
const TABLES_MAGIC: &[u8; 8] = b"TSRTBL01";
/// Entries per metadata batch during a restore.
const RESTORE_BATCH: usize = 10_000;

/// What went wrong with a backup directory.
#[derive(Debug, Error)]
pub enum ArchiveError {
    /// A file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file's content does not match its checksum, or it is missing: the backup is damaged.
    #[error("damaged backup: {} {reason}", path.display())]
    Damaged {
        /// The first bad file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No snapshot of that name, or none at all.
    #[error("{0}")]
    NoSnapshot(String),
    /// A blob handed to the archive does not match its digest.
    #[error("blob {digest} does not match its digest")]
    BadBlob {
        /// The digest.
        digest: Digest,
    },
    /// A snapshot names blobs the directory lacks.
    #[error("{} blob(s) of the snapshot are not in the backup directory, first {}", .0.len(), .0[0])]
    MissingBlobs(Vec<Digest>),
    /// The restore target already holds a coordinator's state.
    #[error(
        "{} already holds a coordinator's state ({}): restore into a new or empty data directory",
        dir.display(),
        found
    )]
    TargetInUse {
        /// The data directory.
        dir: PathBuf,
        /// What was found there.
        found: String,
    },
    /// The restored metadata store failed.
    #[error("restoring the metadata store: {0}")]
    Meta(#[from] MetaError),
    /// The restored blob store failed.
    #[error("restoring the blob store: {0}")]
    Store(#[from] StoreError),
}

/// One file of a snapshot and its checksum.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileSum {
    /// Its path in the snapshot's directory.
    pub path: String,
    /// Its SHA-256, lower-case hex.
    pub sha256: String,
    /// Its size.
    pub size: u64,
}

/// A table's name and how many entries the snapshot holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableCount {
    /// The table.
    pub name: String,
    /// Its entries.
    pub entries: u64,
}

/// What a snapshot holds (`manifest.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// When the coordinator took the snapshot (Unix seconds).
    pub created_unix: u64,
    /// Who wrote it: the coordinator's address, or `scheduled`.
    pub source: String,
    /// The writer's version.
    pub version: String,
    /// The snapshot's own files with their checksums.
    pub files: Vec<FileSum>,
    /// Entries per table.
    pub tables: Vec<TableCount>,
    /// Entries left out because blobs they refer to were already gone, per table.
    pub dropped: BTreeMap<String, u64>,
    /// Every blob the snapshot needs: `<function>/<hex>-<size>` (the name is the checksum).
    pub blobs: Vec<String>,
}

/// A backup directory.
#[derive(Debug, Clone)]
pub struct Archive {
    root: PathBuf,
}

/// What a snapshot to write holds.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotParts<'a> {
    /// When it was taken.
    pub created: SystemTime,
    /// Who took it.
    pub source: &'a str,
    /// Its tables.
    pub tables: &'a [TableDump],
    /// The blobs it needs (all already in the archive).
    pub blobs: &'a BTreeSet<Digest>,
    /// Entries left out, per table.
    pub dropped: &'a BTreeMap<String, u64>,
}

impl Archive {
    /// The backup directory at `root`, created if needed.
    pub fn open(root: &Path) -> Result<Self, ArchiveError> {
        for dir in [root.join("blobs"), root.join("snapshots")] {
            fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        }
        Ok(Archive {
            root: root.to_owned(),
        })
    }

    /// The backup directory at `root`, which must exist (for reading).
    pub fn existing(root: &Path) -> Result<Self, ArchiveError> {
        let snapshots = root.join("snapshots");
        if !snapshots.is_dir() {
            return Err(ArchiveError::NoSnapshot(format!(
                "{} is not a backup directory (no snapshots/ in it)",
                root.display()
            )));
        }
        Ok(Archive {
            root: root.to_owned(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join(blob_name(digest))
    }

    /// The blobs of `digests` the directory lacks (a file of the wrong size counts as lacking).
    pub fn missing(&self, digests: &BTreeSet<Digest>) -> Vec<Digest> {
        digests
            .iter()
            .filter(|d| fs::metadata(self.blob_path(d)).map_or(true, |m| m.len() != d.size_bytes))
            .copied()
            .collect()
    }

    /// Stores a blob, checked against its digest, atomically (a partial file never has the
    /// blob's name).
    pub fn put_blob(&self, digest: &Digest, data: &[u8]) -> Result<(), ArchiveError> {
        if digest.verify(data).is_err() {
            return Err(ArchiveError::BadBlob { digest: *digest });
        }
        let path = self.blob_path(digest);
        write_atomically(&path, data)
    }

    /// Writes a snapshot whose blobs are all in the directory; returns its name.
    pub fn write_snapshot(&self, parts: SnapshotParts<'_>) -> Result<String, ArchiveError> {
        let missing = self.missing(parts.blobs);
        if !missing.is_empty() {
            return Err(ArchiveError::MissingBlobs(missing));
        }
        let created_unix = parts
            .created
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut name = snapshot_name(parts.created);
        let snapshots = self.root.join("snapshots");
        // Two snapshots in one second: the second gets a suffix.
        let mut n = 1;
        while snapshots.join(&name).exists() {
            n += 1;
            name = format!("{}-{n}", snapshot_name(parts.created));
        }
        let tmp = snapshots.join(format!(".tmp-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io_error("create", &tmp))?;
        let tables = encode_tables(parts.tables);
        write_atomically(&tmp.join(TABLES_FILE), &tables)?;
        let manifest = Manifest {
            format: FORMAT,
            created_unix,
            source: parts.source.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            files: vec![FileSum {
                path: TABLES_FILE.to_owned(),
                sha256: sha256_hex(&tables),
                size: tables.len() as u64,
            }],
            tables: parts
                .tables
                .iter()
                .map(|t| TableCount {
                    name: t.name.clone(),
                    entries: t.entries.len() as u64,
                })
                .collect(),
            dropped: parts.dropped.clone(),
            blobs: parts.blobs.iter().map(blob_name).collect(),
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
        write_atomically(&tmp.join(MANIFEST_FILE), &json)?;
        let sum = format!("{}  {MANIFEST_FILE}\n", sha256_hex(&json));
        write_atomically(&tmp.join(MANIFEST_SUM_FILE), sum.as_bytes())?;
        let path = snapshots.join(&name);
        fs::rename(&tmp, &path).map_err(io_error("rename into place", &path))?;
        sync_dir(&snapshots);
        Ok(name)
    }

    /// The complete snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<String>, ArchiveError> {
        let dir = self.root.join("snapshots");
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_error("list", &dir))? {
            let entry = entry.map_err(io_error("list", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && entry.path().join(MANIFEST_FILE).is_file() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The newest snapshot's name.
    pub fn latest(&self) -> Result<String, ArchiveError> {
        self.snapshots()?.pop().ok_or_else(|| {
            ArchiveError::NoSnapshot(format!("no snapshot in {}", self.root.display()))
        })
    }

    /// Reads and checks snapshot `name`'s manifest and tables, and every blob it needs (each
    /// file against its checksum, in that order); the first bad or missing file is the error.
    pub fn verify(&self, name: &str) -> Result<Verified, ArchiveError> {
        let dir = self.root.join("snapshots").join(name);
        if !dir.is_dir() {
            return Err(ArchiveError::NoSnapshot(format!(
                "no snapshot {name} in {} (have: {})",
                self.root.display(),
                self.snapshots()?.join(", ")
            )));
        }
        let manifest_path = dir.join(MANIFEST_FILE);
        let json = read_whole(&manifest_path)?;
        let sum_path = dir.join(MANIFEST_SUM_FILE);
        let sum = read_whole(&sum_path)?;
        let expected = String::from_utf8_lossy(&sum)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        if sha256_hex(&json) != expected {
            return Err(damaged(&manifest_path, "does not match manifest.sha256"));
        }
        let manifest: Manifest = serde_json::from_slice(&json)
            .map_err(|e| damaged(&manifest_path, &format!("does not parse: {e}")))?;
        if manifest.format != FORMAT {
            return Err(damaged(
                &manifest_path,
                &format!(
                    "has format {}, this tessera reads {FORMAT}",
                    manifest.format
                ),
            ));
        }
        let mut tables = None;
        for file in &manifest.files {
            let path = dir.join(&file.path);
            let bytes = read_whole(&path)?;
            if bytes.len() as u64 != file.size || sha256_hex(&bytes) != file.sha256 {
                return Err(damaged(
                    &path,
                    "does not match its checksum in manifest.json",
                ));
            }
            if file.path == TABLES_FILE {
                tables = Some(
                    decode_tables(&bytes)
                        .ok_or_else(|| damaged(&path, "does not decode as tables"))?,
                );
            }
        }
        let tables = tables.ok_or_else(|| damaged(&manifest_path, "lists no tables.bin"))?;
        let mut blobs = Vec::with_capacity(manifest.blobs.len());
        for name in &manifest.blobs {
            let path = self.root.join("blobs").join(name);
            let digest = parse_blob_name(name)
                .ok_or_else(|| damaged(&manifest_path, &format!("names a bad blob {name}")))?;
            let file = fs::File::open(&path).map_err(|e| damaged(&path, &format!("{e}")))?;
            let actual = digest
                .function
                .digest_reader(io::BufReader::new(file))
                .map_err(|e| damaged(&path, &format!("{e}")))?;
            if actual != digest {
                return Err(damaged(&path, "does not match its digest"));
            }
            blobs.push(digest);
        }
        Ok(Verified {
            name: name.to_owned(),
            manifest,
            tables,
            blobs,
        })
    }

    /// Keeps the `keep` newest snapshots, removes the others, then the blobs none of the kept
    /// ones needs. Returns how many snapshots and blobs were removed.
    pub fn prune(&self, keep: usize) -> Result<(usize, usize), ArchiveError> {
        let names = self.snapshots()?;
        let cut = names.len().saturating_sub(keep.max(1));
        for name in &names[..cut] {
            let path = self.root.join("snapshots").join(name);
            fs::remove_dir_all(&path).map_err(io_error("remove", &path))?;
        }
        let mut needed = BTreeSet::new();
        for name in &names[cut..] {
            let path = self.root.join("snapshots").join(name).join(MANIFEST_FILE);
            let manifest: Manifest = serde_json::from_slice(&read_whole(&path)?)
                .map_err(|e| damaged(&path, &format!("does not parse: {e}")))?;
            needed.extend(manifest.blobs);
        }
        let mut removed = 0;
        let blobs = self.root.join("blobs");
        for function in fs::read_dir(&blobs).map_err(io_error("list", &blobs))? {
            let function = function.map_err(io_error("list", &blobs))?.path();
            for shard in fs::read_dir(&function).map_err(io_error("list", &function))? {
                let shard = shard.map_err(io_error("list", &function))?.path();
                for blob in fs::read_dir(&shard).map_err(io_error("list", &shard))? {
                    let blob = blob.map_err(io_error("list", &shard))?.path();
                    let relative = blob
                        .strip_prefix(&blobs)
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if !needed.contains(&relative) {
                        fs::remove_file(&blob).map_err(io_error("remove", &blob))?;
                        removed += 1;
                    }
                }
            }
        }
        Ok((cut, removed))
    }

    /// A blob's bytes.
    fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, ArchiveError> {
        read_whole(&self.blob_path(digest))
    }
}

/// A snapshot whose every file matched its checksum.
#[derive(Debug)]
pub struct Verified {
    /// Its name.
    pub name: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its tables.
    pub tables: Vec<TableDump>,
    /// Its blobs.
    pub blobs: Vec<Digest>,
}

/// What [`restore`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The snapshot.
    pub name: String,
    /// Metadata entries written.
    pub entries: u64,
    /// Blobs written.
    pub blobs: u64,
}

/// Restores snapshot `name` (the newest when `None`) of `archive` into `data_dir`, which must
/// not hold a coordinator's state. Every checksum is verified before anything is written; a
/// damaged backup is refused, naming its first bad file. Blocking.
pub fn restore(
    archive: &Archive,
    name: Option<&str>,
    data_dir: &Path,
) -> Result<Restored, ArchiveError> {
    let name = match name {
        Some(name) => name.to_owned(),
        None => archive.latest()?,
    };
    let verified = archive.verify(&name)?;
    for (part, what) in [("meta", "a metadata store"), ("cas", "a blob store")] {
        let path = data_dir.join(part);
        if path.exists() {
            return Err(ArchiveError::TargetInUse {
                dir: data_dir.to_owned(),
                found: format!("{what} at {}", path.display()),
            });
        }
    }
    fs::create_dir_all(data_dir).map_err(io_error("create", data_dir))?;
    let meta: Arc<dyn MetadataStore> = Arc::new(RedbStore::open(data_dir.join("meta"))?);
    let mut entries = 0;
    for table in &verified.tables {
        for chunk in table.entries.chunks(RESTORE_BATCH) {
            let mut batch = Batch::new();
            for (key, value) in chunk {
                batch.insert(&table.name, key.clone(), value.clone());
            }
            meta.apply_batch(batch)?;
            entries += chunk.len() as u64;
        }
    }
    let store = DiskStore::open(
        Arc::clone(&meta),
        DiskStoreOptions::new(data_dir.join("cas")),
    )?;
    for digest in &verified.blobs {
        let data = archive.read_blob(digest)?;
        store.write(digest, &data)?;
    }
    store.checkpoint()?;
    meta.flush()?;
    Ok(Restored {
        name: verified.name,
        entries,
        blobs: verified.blobs.len() as u64,
    })
}

/// `<function>/<hh>/<hex>-<size>`.
fn blob_name(digest: &Digest) -> String {
    let hex = digest.hash_hex();
    format!(
        "{}/{}/{hex}-{}",
        digest.function.name(),
        &hex[..2],
        digest.size_bytes
    )
}

fn parse_blob_name(name: &str) -> Option<Digest> {
    let mut parts = name.split('/');
    let function = DigestFunction::from_name(parts.next()?)?;
    let _shard = parts.next()?;
    let (hex, size) = parts.next()?.split_once('-')?;
    if parts.next().is_some() {
        return None;
    }
    Digest::parse(function, hex, size.parse().ok()?).ok()
}

/// `YYYYMMDDTHHMMSSZ` of `time`, which sorts as time does.
fn snapshot_name(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The calendar date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn encode_tables(tables: &[TableDump]) -> Vec<u8> {
    let mut out = TABLES_MAGIC.to_vec();
    out.extend_from_slice(&(tables.len() as u64).to_be_bytes());
    for table in tables {
        put_bytes(&mut out, table.name.as_bytes());
        out.extend_from_slice(&(table.entries.len() as u64).to_be_bytes());
        for (key, value) in &table.entries {
            put_bytes(&mut out, key);
            put_bytes(&mut out, value);
        }
    }
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn decode_tables(mut bytes: &[u8]) -> Option<Vec<TableDump>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = bytes.split_at_checked(n)?;
        *bytes = rest;
        Some(head)
    }
    fn number(bytes: &mut &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(take(bytes, 8)?.try_into().ok()?))
    }
    fn field(bytes: &mut &[u8]) -> Option<Vec<u8>> {
        let n = usize::try_from(number(bytes)?).ok()?;
        Some(take(bytes, n)?.to_vec())
    }
    if take(&mut bytes, 8)? != TABLES_MAGIC {
        return None;
    }
    let count = number(&mut bytes)?;
    let mut tables = Vec::new();
    for _ in 0..count {
        let name = String::from_utf8(field(&mut bytes)?).ok()?;
        let entries = number(&mut bytes)?;
        let mut table = TableDump {
            name,
            entries: Vec::new(),
        };
        for _ in 0..entries {
            table.entries.push((field(&mut bytes)?, field(&mut bytes)?));
        }
        tables.push(table);
    }
    bytes.is_empty().then_some(tables)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn damaged(path: &Path, reason: &str) -> ArchiveError {
    ArchiveError::Damaged {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

fn read_whole(path: &Path) -> Result<Vec<u8>, ArchiveError> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| damaged(path, &format!("cannot be read: {e}")))?;
    Ok(bytes)
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArchiveError {
    let path = path.to_owned();
    move |source| ArchiveError::Io { what, path, source }
}

/// Writes `data` to `path` through a temporary file in the same directory, synced, then
/// renamed: `path` is either absent or whole.
fn write_atomically(path: &Path, data: &[u8]) -> Result<(), ArchiveError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let written = fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(data)?;
        f.sync_all()
    });
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(ArchiveError::Io {
            what: "write",
            path: tmp,
            source,
        });
    }
    fs::rename(&tmp, path).map_err(io_error("rename into place", path))
}

fn sync_dir(dir: &Path) {
    if let Ok(file) = fs::File::open(dir) {
        let _ = file.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn digest_of(data: &[u8]) -> Digest {
        DigestFunction::Sha256.digest_of(data)
    }

    fn tables() -> Vec<TableDump> {
        vec![
            TableDump {
                name: "ac".into(),
                entries: vec![(b"k1".to_vec(), b"v1".to_vec()), (vec![0, 255], vec![])],
            },
            TableDump {
                name: "tokens".into(),
                entries: vec![],
            },
        ]
    }

    /// An archive with one snapshot of [`tables`] and two blobs.
    fn archive_with_snapshot(root: &Path) -> (Archive, String, Vec<Digest>) {
        let archive = Archive::open(root).unwrap();
        let blobs: Vec<(Digest, &[u8])> = vec![
            (digest_of(b"first"), b"first"),
            (digest_of(b"second"), b"second"),
        ];
        for (d, data) in &blobs {
            archive.put_blob(d, data).unwrap();
        }
        let set: BTreeSet<Digest> = blobs.iter().map(|(d, _)| *d).collect();
        let name = archive
            .write_snapshot(SnapshotParts {
                created: SystemTime::now(),
                source: "test",
                tables: &tables(),
                blobs: &set,
                dropped: &BTreeMap::new(),
            })
            .unwrap();
        (archive, name, set.into_iter().collect())
    }

    #[test]
    fn tables_round_trip_and_damaged_bytes_do_not_decode() {
        let bytes = encode_tables(&tables());
        assert_eq!(decode_tables(&bytes), Some(tables()));
        assert_eq!(decode_tables(&bytes[..bytes.len() - 1]), None);
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(decode_tables(&extra), None);
    }

    #[test]
    fn snapshot_names_sort_as_time_does() {
        assert_eq!(snapshot_name(UNIX_EPOCH), "19700101T000000Z");
        // `date -u -d @1796500000 +%Y%m%dT%H%M%SZ`
        let t = UNIX_EPOCH + Duration::from_secs(1_796_500_000);
        assert_eq!(snapshot_name(t), "20261205T194640Z");
        assert!(snapshot_name(t) < snapshot_name(t + Duration::from_secs(1)));
    }

    #[test]
    fn a_blob_that_does_not_match_its_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path()).unwrap();
        let err = archive.put_blob(&digest_of(b"a"), b"b").unwrap_err();
        assert!(matches!(err, ArchiveError::BadBlob { .. }), "{err}");
        assert_eq!(archive.missing(&[digest_of(b"a")].into()).len(), 1);
    }

    #[test]
    fn a_snapshot_needs_its_blobs_first() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path()).unwrap();
        let err = archive
            .write_snapshot(SnapshotParts {
                created: SystemTime::now(),
                source: "test",
                tables: &tables(),
                blobs: &[digest_of(b"absent")].into(),
                dropped: &BTreeMap::new(),
            })
            .unwrap_err();
        assert!(matches!(err, ArchiveError::MissingBlobs(_)), "{err}");
        assert!(archive.snapshots().unwrap().is_empty());
    }

    #[test]
    fn restore_verifies_then_writes_every_table_and_blob() {
        let dir = tempfile::tempdir().unwrap();
        let (archive, name, blobs) = archive_with_snapshot(&dir.path().join("backup"));
        let verified = archive.verify(&name).unwrap();
        assert_eq!(verified.tables, tables());
        let data = dir.path().join("data");
        let restored = restore(&archive, None, &data).unwrap();
        assert_eq!(restored.entries, 2);
        assert_eq!(restored.blobs, 2);
        let meta: Arc<dyn MetadataStore> = Arc::new(RedbStore::open(data.join("meta")).unwrap());
        assert_eq!(
            meta.table("ac").unwrap().get(b"k1").unwrap().as_deref(),
            Some(&b"v1"[..])
        );
        let store =
            DiskStore::open(Arc::clone(&meta), DiskStoreOptions::new(data.join("cas"))).unwrap();
        assert!(store.find_missing(&blobs).is_empty());
        drop((store, meta));
        // A second restore into the same directory is refused.
        let err = restore(&archive, Some(&name), &data).unwrap_err();
        assert!(matches!(err, ArchiveError::TargetInUse { .. }), "{err}");
    }

    #[test]
    fn a_damaged_file_is_named_and_nothing_is_written() {
        for victim in ["blob", "tables", "manifest"] {
            let dir = tempfile::tempdir().unwrap();
            let (archive, name, blobs) = archive_with_snapshot(&dir.path().join("backup"));
            let snapshot = archive.root().join("snapshots").join(&name);
            let path = match victim {
                "blob" => archive.blob_path(&blobs[1]),
                "tables" => snapshot.join(TABLES_FILE),
                _ => snapshot.join(MANIFEST_FILE),
            };
            let mut bytes = fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 1;
            fs::write(&path, bytes).unwrap();
            let data = dir.path().join("data");
            let err = restore(&archive, None, &data).unwrap_err();
            match &err {
                ArchiveError::Damaged { path: bad, .. } => assert_eq!(bad, &path, "{victim}"),
                other => panic!("{victim}: {other}"),
            }
            assert!(!data.exists(), "{victim}: nothing written");
        }
    }

    #[test]
    fn pruning_keeps_the_newest_and_the_blobs_they_need() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path()).unwrap();
        let mut names = Vec::new();
        for (i, data) in [&b"old"[..], b"new"].iter().enumerate() {
            let d = digest_of(data);
            archive.put_blob(&d, data).unwrap();
            names.push(
                archive
                    .write_snapshot(SnapshotParts {
                        created: UNIX_EPOCH + Duration::from_secs(1000 + i as u64),
                        source: "test",
                        tables: &tables(),
                        blobs: &[d].into(),
                        dropped: &BTreeMap::new(),
                    })
                    .unwrap(),
            );
        }
        assert_eq!(archive.prune(1).unwrap(), (1, 1));
        assert_eq!(archive.snapshots().unwrap(), [names[1].clone()]);
        assert_eq!(archive.missing(&[digest_of(b"new")].into()), []);
        assert_eq!(archive.missing(&[digest_of(b"old")].into()).len(), 1);
        archive.verify(&names[1]).unwrap();
    }
}

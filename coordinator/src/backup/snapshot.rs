//! A consistent snapshot of a coordinator's state: every metadata table as of one commit, and
//! the blobs that what it keeps refers to.
//!
//! Kept: every table but the blob store's own (its index and its inline blobs' bytes: a
//! restore rebuilds both by writing the blobs, which the backup keeps as files like every
//! other blob; they are not even read) and the in-flight REAPI operations (transient: their clients execute again). Referenced
//! blobs: each action-cache entry's outputs (files, the trees of output directories and the
//! files in them, stdout, stderr) and each job's input tree (every directory and file under
//! its root). An entry whose blobs are already gone from the store is left out (a job with
//! its journal), so that everything kept has its blobs: the snapshot is consistent by
//! construction, and [`Snapshot::dropped`] says what was left out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use prost::Message;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::meta::{MetaError, MetadataStore, TableDump};
use tessera_cas::store::{BlobStore, StoreError};
use tessera_proto::reapi::{ActionResult, Directory};
use thiserror::Error;

use crate::action_cache::{self, AcError};
use crate::execution::scheduler::OPERATIONS_TABLE;
use crate::jobs::journal::journal_key_of;
use crate::jobs::registry;

/// The blob store's own index table (`tessera_cas::store`): rebuilt by a restore.
const BLOB_INDEX_TABLE: &str = "blobs";
/// The blob store's inline blobs (`tessera_cas::store`): backed up as blob files instead.
const BLOB_INLINE_TABLE: &str = "blobs_inline";

/// Why a snapshot could not be taken.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// The metadata store could not be read.
    #[error("reading the metadata store: {0}")]
    Meta(#[from] MetaError),
    /// The blob store could not be read.
    #[error("reading the blob store: {0}")]
    Store(#[from] StoreError),
}

/// What a backup holds.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was taken.
    pub created: SystemTime,
    /// The kept tables, in name order.
    pub tables: Vec<TableDump>,
    /// Every blob the kept entries refer to, each present in the store when checked.
    pub blobs: BTreeSet<Digest>,
    /// Entries left out because blobs they refer to were gone, per table.
    pub dropped: BTreeMap<String, u64>,
}

impl Snapshot {
    /// Takes the snapshot. Blocking: it reads the metadata store whole and the trees it
    /// refers to; run it off the async runtime.
    pub fn take(meta: &dyn MetadataStore, blobs: &dyn BlobStore) -> Result<Self, SnapshotError> {
        let created = SystemTime::now();
        let mut tables: Vec<TableDump> =
            meta.dump(&[BLOB_INDEX_TABLE, BLOB_INLINE_TABLE, OPERATIONS_TABLE])?;
        let mut needed = BTreeSet::new();
        let mut dropped = BTreeMap::new();
        let mut lost_jobs = Vec::new();
        for table in &mut tables {
            let name = table.name.clone();
            let before = table.entries.len();
            match name.as_str() {
                action_cache::TABLE => {
                    let mut kept = Vec::with_capacity(before);
                    for (key, value) in std::mem::take(&mut table.entries) {
                        if let Some(digests) = ac_entry_blobs(blobs, &key, &value)? {
                            needed.extend(digests);
                            kept.push((key, value));
                        }
                    }
                    table.entries = kept;
                }
                registry::TABLE => {
                    let mut kept = Vec::with_capacity(before);
                    for (key, value) in std::mem::take(&mut table.entries) {
                        match job_blobs(blobs, &value)? {
                            Some(digests) => {
                                needed.extend(digests);
                                kept.push((key, value));
                            }
                            None => lost_jobs.push(String::from_utf8_lossy(&key).into_owned()),
                        }
                    }
                    table.entries = kept;
                }
                _ => {}
            }
            if table.entries.len() < before {
                dropped.insert(name, (before - table.entries.len()) as u64);
            }
        }
        // A job left out takes its journal with it.
        for table in &mut tables {
            let before = table.entries.len();
            table.entries.retain(|(key, _)| {
                !lost_jobs
                    .iter()
                    .any(|job| journal_key_of(&table.name, key, job))
            });
            let gone = before - table.entries.len();
            if gone > 0 {
                *dropped.entry(table.name.clone()).or_default() += gone as u64;
            }
        }
        Ok(Snapshot {
            created,
            tables,
            blobs: needed,
            dropped,
        })
    }

    /// Entries kept, all tables together.
    pub fn entries(&self) -> usize {
        self.tables.iter().map(|t| t.entries.len()).sum()
    }
}

/// The blobs an action-cache entry needs, when all are in the store; `None` when some are
/// gone or the entry is malformed (it could not be served either).
fn ac_entry_blobs(
    blobs: &dyn BlobStore,
    key: &[u8],
    value: &[u8],
) -> Result<Option<Vec<Digest>>, SnapshotError> {
    let Some(function) = action_cache::function_of_key(key) else {
        return Ok(None);
    };
    let Ok(result) = ActionResult::decode(value) else {
        return Ok(None);
    };
    let needed = match action_cache::referenced_blobs(blobs, function, &result) {
        Ok(needed) => needed,
        Err(AcError::Store(error)) => return Err(error.into()),
        Err(_) => return Ok(None),
    };
    Ok(blobs.find_missing(&needed).is_empty().then_some(needed))
}

/// Every blob of a job's input tree, when all are in the store; `None` when some are gone
/// or the record is malformed.
fn job_blobs(blobs: &dyn BlobStore, record: &[u8]) -> Result<Option<Vec<Digest>>, SnapshotError> {
    let Some((_, spec)) = registry::decode_record(record) else {
        return Ok(None);
    };
    let Ok(function) = DigestFunction::from_request(spec.digest_function) else {
        return Ok(None);
    };
    let Ok(root) = Digest::from_proto_opt(function, spec.input_root_digest.as_ref()) else {
        return Ok(None);
    };
    tree_blobs(blobs, function, root)
}

/// `root` and every directory and file under it, when all are in the store.
fn tree_blobs(
    blobs: &dyn BlobStore,
    function: DigestFunction,
    root: Digest,
) -> Result<Option<Vec<Digest>>, SnapshotError> {
    let mut found = vec![root];
    let mut seen = BTreeSet::from([root]);
    let mut pending = vec![root];
    let mut files = Vec::new();
    while let Some(digest) = pending.pop() {
        let Some(bytes) = blobs.read(&digest)? else {
            return Ok(None);
        };
        let Ok(directory) = Directory::decode(bytes) else {
            return Ok(None);
        };
        for file in &directory.files {
            match Digest::from_proto_opt(function, file.digest.as_ref()) {
                Ok(d) => files.push(d),
                Err(_) => return Ok(None),
            }
        }
        for child in &directory.directories {
            match Digest::from_proto_opt(function, child.digest.as_ref()) {
                Ok(d) if seen.insert(d) => {
                    found.push(d);
                    pending.push(d);
                }
                Ok(_) => {}
                Err(_) => return Ok(None),
            }
        }
    }
    if !blobs.find_missing(&files).is_empty() {
        return Ok(None);
    }
    found.extend(files);
    Ok(Some(found))
}

#[cfg(test)]
mod tests {
    use tessera_cas::meta::MemoryMetaStore;
    use tessera_cas::store::MemoryStore;
    use tessera_proto::reapi::OutputFile;

    use super::*;

    const F: DigestFunction = DigestFunction::Sha256;

    /// An action-cache entry for action `n` whose one output is `output`.
    fn ac_entry(meta: &MemoryMetaStore, n: u8, output: Digest) {
        let result = ActionResult {
            output_files: vec![OutputFile {
                path: format!("out-{n}"),
                digest: Some(output.to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        };
        meta.table(action_cache::TABLE)
            .unwrap()
            .insert(
                &action_cache::key("", &F.digest_of(&[n])),
                &result.encode_to_vec(),
            )
            .unwrap();
    }

    #[test]
    fn entries_whose_blobs_are_gone_are_left_out_and_counted() {
        let meta = MemoryMetaStore::new();
        let blobs = MemoryStore::new();
        let kept = F.digest_of(b"kept output");
        blobs.write(&kept, b"kept output").unwrap();
        ac_entry(&meta, 1, kept);
        ac_entry(&meta, 2, F.digest_of(b"evicted output"));
        meta.table("tokens")
            .unwrap()
            .insert(b"t", b"token")
            .unwrap();
        // Neither the blob index, nor inline blobs, nor in-flight operations are backed up.
        meta.table(BLOB_INDEX_TABLE)
            .unwrap()
            .insert(b"i", b"x")
            .unwrap();
        meta.table(BLOB_INLINE_TABLE)
            .unwrap()
            .insert(b"i", b"bytes")
            .unwrap();
        meta.table(OPERATIONS_TABLE)
            .unwrap()
            .insert(b"o", b"x")
            .unwrap();

        let snapshot = Snapshot::take(&meta, &blobs).unwrap();
        let names: Vec<&str> = snapshot.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, [action_cache::TABLE, "tokens"]);
        assert_eq!(snapshot.tables[0].entries.len(), 1, "only the whole entry");
        assert_eq!(snapshot.blobs, BTreeSet::from([kept]));
        assert_eq!(
            snapshot.dropped,
            BTreeMap::from([(action_cache::TABLE.to_owned(), 1)])
        );
    }
}

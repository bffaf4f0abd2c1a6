//! The redb implementation of the metadata store.
//!
//! Chosen over sled after the crash test (`cas/tests/meta_crash.rs`) caught sled 0.34 unable to
//! reopen its database ("Read corrupted data") after a SIGKILL that landed while it was
//! generating a snapshot, about once in a few thousand kills. redb is copy-on-write with
//! checksummed commits: after a crash it opens at the last durable commit.
//!
//! Every write is its own transaction committed with `Durability::None`: visible at once, made
//! durable by the next flush, which is an empty commit with `Durability::Immediate` run by the
//! [`GroupFlush`] thread, so many waiting writers share one fsync. Non-durable commits do not
//! free pages, so every 256th write commits with `Durability::Eventual`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::error::display_key;
use super::{
    Batch, BatchOp, Entries, GroupFlush, MetaError, MetaTable, MetadataStore, SwapOutcome, Table,
};

/// Writes between commits that let redb reclaim pages.
const RECLAIM_EVERY: u64 = 256;

fn def(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

fn boxed(error: impl std::error::Error + Send + Sync + 'static) -> super::error::BackendError {
    Box::new(error)
}

struct Shared {
    db: Database,
    writes: AtomicU64,
}

impl Shared {
    /// Runs `f` in a write transaction and commits it (not yet durable).
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, super::error::BackendError>,
    ) -> Result<T, super::error::BackendError> {
        let mut txn = self.db.begin_write().map_err(boxed)?;
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        txn.set_durability(if n % RECLAIM_EVERY == RECLAIM_EVERY - 1 {
            Durability::Eventual
        } else {
            Durability::None
        });
        let value = f(&txn)?;
        txn.commit().map_err(boxed)?;
        Ok(value)
    }
}

/// A metadata store in one redb file inside directory `path`. Only one process may open it at
/// a time.
pub struct RedbStore {
    shared: Arc<Shared>,
    path: PathBuf,
    group: GroupFlush,
}

impl RedbStore {
    /// Opens (or creates) the store in directory `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, MetaError> {
        let path = path.as_ref().to_owned();
        let open_error = |source: super::error::BackendError| MetaError::Open {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&path).map_err(|e| open_error(boxed(e)))?;
        let db = Database::create(path.join("meta.redb")).map_err(|e| open_error(boxed(e)))?;
        let shared = Arc::new(Shared {
            db,
            writes: AtomicU64::new(0),
        });
        let group = GroupFlush::start("tessera-meta-flush", {
            let shared = Arc::clone(&shared);
            move || {
                let mut txn = shared.db.begin_write().map_err(boxed)?;
                txn.set_durability(Durability::Immediate);
                txn.commit().map_err(boxed)
            }
        })
        .map_err(|e| open_error(boxed(e)))?;
        Ok(RedbStore {
            shared,
            path,
            group,
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of fsyncs the group flush has run (for metrics and tests).
    pub fn flushes(&self) -> u64 {
        self.group.flushes()
    }
}

impl MetadataStore for RedbStore {
    fn table(&self, name: &str) -> Result<Table, MetaError> {
        if name.is_empty() {
            return Err(MetaError::InvalidTableName {
                name: name.to_owned(),
            });
        }
        self.shared
            .write(|txn| {
                txn.open_table(def(name)).map_err(boxed)?;
                Ok(())
            })
            .map_err(|source| MetaError::OpenTable {
                table: name.to_owned(),
                source,
            })?;
        Ok(Arc::new(RedbTable {
            name: name.to_owned(),
            shared: Arc::clone(&self.shared),
        }))
    }

    fn apply_batch(&self, batch: Batch) -> Result<(), MetaError> {
        if batch.is_empty() {
            return Ok(());
        }
        let tables = batch.tables().join(", ");
        for name in batch.tables() {
            if name.is_empty() {
                return Err(MetaError::InvalidTableName {
                    name: name.to_owned(),
                });
            }
        }
        self.shared
            .write(|txn| {
                for op in batch.into_ops() {
                    match op {
                        BatchOp::Insert { table, key, value } => {
                            let mut t = txn.open_table(def(&table)).map_err(boxed)?;
                            t.insert(key.as_slice(), value.as_slice()).map_err(boxed)?;
                        }
                        BatchOp::Remove { table, key } => {
                            let mut t = txn.open_table(def(&table)).map_err(boxed)?;
                            t.remove(key.as_slice()).map_err(boxed)?;
                        }
                    }
                }
                Ok(())
            })
            .map_err(|source| MetaError::Batch { tables, source })
    }

    fn flush(&self) -> Result<(), MetaError> {
        self.group.flush()
    }

    fn flush_async(&self) -> BoxFuture<'static, Result<(), MetaError>> {
        self.group.flush_async().boxed()
    }
}

struct RedbTable {
    name: String,
    shared: Arc<Shared>,
}

impl RedbTable {
    fn read<T>(
        &self,
        key: &[u8],
        f: impl FnOnce(
            &redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
        ) -> Result<T, super::error::BackendError>,
    ) -> Result<T, MetaError> {
        let run = || -> Result<T, super::error::BackendError> {
            let txn = self.shared.db.begin_read().map_err(boxed)?;
            let table = txn.open_table(def(&self.name)).map_err(boxed)?;
            f(&table)
        };
        run().map_err(|source| MetaError::Read {
            table: self.name.clone(),
            key: display_key(key),
            source,
        })
    }

    fn write<T>(
        &self,
        key: &[u8],
        f: impl FnOnce(
            &mut redb::Table<'_, &'static [u8], &'static [u8]>,
        ) -> Result<T, super::error::BackendError>,
    ) -> Result<T, MetaError> {
        self.shared
            .write(|txn| {
                let mut table = txn.open_table(def(&self.name)).map_err(boxed)?;
                f(&mut table)
            })
            .map_err(|source| MetaError::Write {
                table: self.name.clone(),
                key: display_key(key),
                source,
            })
    }
}

impl MetaTable for RedbTable {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        self.read(key, |t| {
            Ok(t.get(key).map_err(boxed)?.map(|v| v.value().to_vec()))
        })
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        self.write(key, |t| {
            Ok(t.insert(key, value)
                .map_err(boxed)?
                .map(|v| v.value().to_vec()))
        })
    }

    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        self.write(key, |t| {
            Ok(t.remove(key).map_err(boxed)?.map(|v| v.value().to_vec()))
        })
    }

    fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<SwapOutcome, MetaError> {
        self.write(key, |t| {
            let current = t.get(key).map_err(boxed)?.map(|v| v.value().to_vec());
            if current.as_deref() != expected {
                return Ok(SwapOutcome::Conflict { current });
            }
            match new {
                Some(value) => {
                    t.insert(key, value).map_err(boxed)?;
                }
                None => {
                    t.remove(key).map_err(boxed)?;
                }
            }
            Ok(SwapOutcome::Swapped)
        })
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Entries {
        let table = self.name.clone();
        let collected = self.read(prefix, |t| {
            let mut out = Vec::new();
            for entry in t.range(prefix..).map_err(boxed)? {
                let (k, v) = entry.map_err(boxed)?;
                if !k.value().starts_with(prefix) {
                    break;
                }
                out.push((k.value().to_vec(), v.value().to_vec()));
            }
            Ok(out)
        });
        match collected {
            Ok(entries) => Box::new(entries.into_iter().map(Ok)),
            Err(error) => {
                let source: super::error::BackendError = Box::new(error);
                Box::new(std::iter::once(Err(MetaError::Scan { table, source })))
            }
        }
    }

    fn len(&self) -> Result<usize, MetaError> {
        self.read(b"", |t| Ok(t.len().map_err(boxed)? as usize))
    }

    fn is_empty(&self) -> Result<bool, MetaError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::contract;
    use super::*;

    fn open() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path().join("meta")).unwrap();
        (dir, store)
    }

    #[test]
    fn tables_are_separate_ordered_maps() {
        contract::tables_are_separate_ordered_maps(&open().1);
    }

    #[test]
    fn empty_table_name_is_refused() {
        contract::empty_table_name_is_refused(&open().1);
    }

    #[test]
    fn compare_and_swap_reports_conflicts() {
        contract::compare_and_swap_reports_conflicts(&open().1);
    }

    #[test]
    fn batches_span_tables() {
        contract::batches_span_tables(&open().1);
    }

    #[test]
    fn flushes_return() {
        contract::flushes_return(&open().1);
    }

    #[test]
    fn flushed_writes_survive_reopen_and_a_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        {
            let store = RedbStore::open(&path).unwrap();
            store.table("t").unwrap().insert(b"k", b"v").unwrap();
            store.flush().unwrap();
            assert!(RedbStore::open(&path).is_err(), "one process at a time");
        }
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(
            store.table("t").unwrap().get(b"k").unwrap(),
            Some(b"v".to_vec())
        );
    }
}

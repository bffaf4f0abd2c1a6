//! The sled implementation of the metadata store.
//!
//! Tables are sled trees of one database, so they share one log: a flush makes every table
//! durable, and a batch over several tables is one sled transaction. sled flushes on its own
//! every `flush_every_ms` too, but only an explicit flush is a durability point.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use sled::Transactional as _;

use super::error::display_key;
use super::{
    Batch, BatchOp, Entries, GroupFlush, MetaError, MetaTable, MetadataStore, SwapOutcome, Table,
};

/// Tuning of a [`SledStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SledOptions {
    /// Upper bound of sled's page cache, in bytes.
    pub cache_capacity: u64,
    /// Background flush interval; `None` disables it. Not a durability guarantee.
    pub flush_every_ms: Option<u64>,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self {
            cache_capacity: 256 * 1024 * 1024,
            flush_every_ms: Some(500),
        }
    }
}

/// A metadata store in a sled database directory. Only one process may open a directory at a
/// time; sled holds a file lock on it.
pub struct SledStore {
    db: sled::Db,
    path: PathBuf,
    group: GroupFlush,
}

impl SledStore {
    /// Opens (or creates) the database in directory `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, MetaError> {
        Self::open_with(path, &SledOptions::default())
    }

    /// Opens (or creates) the database in directory `path`.
    pub fn open_with(path: impl AsRef<Path>, options: &SledOptions) -> Result<Self, MetaError> {
        let path = path.as_ref().to_owned();
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(options.cache_capacity)
            .flush_every_ms(options.flush_every_ms)
            .open()
            .map_err(|source| MetaError::Open {
                path: path.clone(),
                source: source.into(),
            })?;
        let group = GroupFlush::start("tessera-meta-flush", {
            let db = db.clone();
            move || db.flush().map(drop).map_err(Into::into)
        })
        .map_err(|source| MetaError::Open {
            path: path.clone(),
            source: source.into(),
        })?;
        Ok(Self { db, path, group })
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of fsyncs the group flush has run (for metrics and tests).
    pub fn flushes(&self) -> u64 {
        self.group.flushes()
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, MetaError> {
        // sled names its own default tree `__sled__default`; keep clear of that namespace.
        if name.is_empty() || name.starts_with("__sled__") {
            return Err(MetaError::InvalidTableName {
                name: name.to_owned(),
            });
        }
        self.db
            .open_tree(name)
            .map_err(|source| MetaError::OpenTable {
                table: name.to_owned(),
                source: source.into(),
            })
    }
}

impl MetadataStore for SledStore {
    fn table(&self, name: &str) -> Result<Table, MetaError> {
        Ok(Arc::new(SledTable {
            name: name.to_owned(),
            tree: self.tree(name)?,
        }))
    }

    fn apply_batch(&self, batch: Batch) -> Result<(), MetaError> {
        let tables: Vec<String> = batch.tables().into_iter().map(str::to_owned).collect();
        let trees = tables
            .iter()
            .map(|name| self.tree(name))
            .collect::<Result<Vec<_>, _>>()?;
        let mut batches = vec![sled::Batch::default(); tables.len()];
        for op in batch.into_ops() {
            let index = tables.iter().position(|t| t == op.table()).unwrap();
            match op {
                BatchOp::Insert { key, value, .. } => batches[index].insert(key, value),
                BatchOp::Remove { key, .. } => batches[index].remove(key),
            }
        }
        let batch_error = |source: sled::Error| MetaError::Batch {
            tables: tables.join(", "),
            source: source.into(),
        };
        match trees.as_slice() {
            [] => Ok(()),
            // One tree needs no transaction: sled applies a batch atomically on its own.
            [tree] => tree
                .apply_batch(batches.pop().unwrap())
                .map_err(batch_error),
            trees => trees
                .transaction(|views| {
                    for (view, batch) in views.iter().zip(&batches) {
                        view.apply_batch(batch)?;
                    }
                    Ok(())
                })
                .map_err(|err: sled::transaction::TransactionError<()>| match err {
                    sled::transaction::TransactionError::Storage(source) => batch_error(source),
                    sled::transaction::TransactionError::Abort(()) => {
                        unreachable!("the batch transaction never aborts")
                    }
                }),
        }
    }

    fn flush(&self) -> Result<(), MetaError> {
        self.group.flush()
    }

    fn flush_async(&self) -> BoxFuture<'static, Result<(), MetaError>> {
        self.group.flush_async().boxed()
    }
}

struct SledTable {
    name: String,
    tree: sled::Tree,
}

impl SledTable {
    fn read_error<'a>(&'a self, key: &'a [u8]) -> impl FnOnce(sled::Error) -> MetaError + 'a {
        move |source| MetaError::Read {
            table: self.name.clone(),
            key: display_key(key),
            source: source.into(),
        }
    }

    fn write_error<'a>(&'a self, key: &'a [u8]) -> impl FnOnce(sled::Error) -> MetaError + 'a {
        move |source| MetaError::Write {
            table: self.name.clone(),
            key: display_key(key),
            source: source.into(),
        }
    }
}

impl MetaTable for SledTable {
    fn name(&self) -> &str {
        &self.name
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        let value = self.tree.get(key).map_err(self.read_error(key))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        let old = self
            .tree
            .insert(key, value)
            .map_err(self.write_error(key))?;
        Ok(old.map(|v| v.to_vec()))
    }

    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        let old = self.tree.remove(key).map_err(self.write_error(key))?;
        Ok(old.map(|v| v.to_vec()))
    }

    fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<SwapOutcome, MetaError> {
        let swapped = self
            .tree
            .compare_and_swap(key, expected, new)
            .map_err(self.write_error(key))?;
        Ok(match swapped {
            Ok(()) => SwapOutcome::Swapped,
            Err(conflict) => SwapOutcome::Conflict {
                current: conflict.current.map(|v| v.to_vec()),
            },
        })
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Entries {
        let table = self.name.clone();
        Box::new(self.tree.scan_prefix(prefix).map(move |entry| {
            entry
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(|source| MetaError::Scan {
                    table: table.clone(),
                    source: source.into(),
                })
        }))
    }

    fn len(&self) -> Result<usize, MetaError> {
        Ok(self.tree.len())
    }

    fn is_empty(&self) -> Result<bool, MetaError> {
        Ok(self.tree.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::contract;
    use super::*;

    fn open() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path().join("meta")).unwrap();
        (dir, store)
    }

    #[test]
    fn tables_are_separate_ordered_maps() {
        contract::tables_are_separate_ordered_maps(&open().1);
    }

    #[test]
    fn reserved_and_empty_table_names_are_refused() {
        let (_dir, store) = open();
        contract::empty_table_name_is_refused(&store);
        assert!(matches!(
            store.table("__sled__default"),
            Err(MetaError::InvalidTableName { .. })
        ));
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
        let (_dir, store) = open();
        contract::flushes_return(&store);
        assert_eq!(store.flushes(), 2);
    }

    #[test]
    fn flushed_writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        {
            let store = SledStore::open(&path).unwrap();
            let mut batch = Batch::new();
            batch.insert("ac", b"action".to_vec(), b"result".to_vec());
            batch.insert("blobs", b"digest".to_vec(), b"record".to_vec());
            store.apply_batch(batch).unwrap();
            store.flush().unwrap();
        }
        let store = SledStore::open(&path).unwrap();
        assert_eq!(
            store.table("ac").unwrap().get(b"action").unwrap(),
            Some(b"result".to_vec())
        );
        assert_eq!(
            store.table("blobs").unwrap().get(b"digest").unwrap(),
            Some(b"record".to_vec())
        );
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_an_open_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = SledStore::open(&file).err().unwrap();
        assert!(matches!(err, MetaError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }

    #[test]
    fn shared_as_a_trait_object_across_threads() {
        let (_dir, store) = open();
        let store: Arc<dyn MetadataStore> = Arc::new(store);
        std::thread::scope(|scope| {
            for writer in 0..4u8 {
                let store = Arc::clone(&store);
                scope.spawn(move || {
                    let table = store.table("ac").unwrap();
                    for n in 0..50u8 {
                        table.insert(&[writer, n], &[n]).unwrap();
                        store.flush().unwrap();
                    }
                });
            }
        });
        assert_eq!(store.table("ac").unwrap().len().unwrap(), 200);
    }
}

//! The metadata store traits and the types they exchange.
//!
//! Both traits are object safe, so a store is shared as `Arc<dyn MetadataStore>` and a table as
//! [`Table`] (`Arc<dyn MetaTable>`). Keys and values are bytes; ordering is bytewise, so
//! big-endian numbers and `/`-separated prefixes sort and scan as expected.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::MetaError;
use crate::space::SpaceStats;

/// A shared handle to one named table.
pub type Table = Arc<dyn MetaTable>;

/// Key-value pairs in key order, as returned by [`MetaTable::scan_prefix`].
pub type Entries = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), MetaError>> + Send>;

/// A database of named tables with explicit durability.
///
/// Writes become visible to readers at once; they become durable (survive a crash of the
/// process or the machine) only when a flush requested after them has returned.
pub trait MetadataStore: Send + Sync + 'static {
    /// Opens the table `name`, creating it empty if it does not exist.
    fn table(&self, name: &str) -> Result<Table, MetaError>;

    /// Applies every operation of `batch` atomically: after a crash either all of them or none
    /// are present, and readers never see part of it.
    fn apply_batch(&self, batch: Batch) -> Result<(), MetaError>;

    /// Blocks until everything written before the call is durable. Concurrent callers share
    /// one fsync.
    fn flush(&self) -> Result<(), MetaError>;

    /// Like [`flush`](Self::flush), without blocking the async runtime. The request is taken
    /// when this is called (not when the future is first polled), and dropping the future
    /// does not cancel the flush others may be waiting on.
    fn flush_async(&self) -> BoxFuture<'static, Result<(), MetaError>>;

    /// Whether a read may be made on an async runtime's thread now: the store is open and in
    /// step, so a read takes short locks only. False while it recovers from an I/O error
    /// (reopening its file, replaying changes it logged), when a read may wait for that; and
    /// for stores that do not say.
    fn reads_quickly(&self) -> bool {
        false
    }

    /// Writes refused for lack of disk space (none for stores that keep no files).
    fn space(&self) -> SpaceStats {
        SpaceStats::default()
    }

    /// Every table but those named in `except`, with every entry, as of one instant: no write
    /// is seen in part, and none made after the call began (a consistent snapshot, for
    /// backups). Tables in name order. Tables left out are not read at all (the blob store's
    /// inline contents can be most of the database).
    fn dump(&self, except: &[&str]) -> Result<Vec<TableDump>, MetaError>;
}

/// One table's entries in key order, from [`MetadataStore::dump`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDump {
    /// The table's name.
    pub name: String,
    /// Its entries, in key order.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One named table: an ordered map of byte keys to byte values.
pub trait MetaTable: Send + Sync + 'static {
    /// The table's name.
    fn name(&self) -> &str;

    /// Reads the value stored under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError>;

    /// Stores `value` under `key` and returns the value it replaced.
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, MetaError>;

    /// Removes `key` and returns the value it had.
    fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError>;

    /// Replaces the value of `key` with `new` (`None` removes it) only if it currently is
    /// `expected` (`None`: absent).
    fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<SwapOutcome, MetaError>;

    /// Every entry whose key starts with `prefix`, in key order. An empty prefix scans the
    /// whole table. The scan is not a snapshot: concurrent writes may or may not show.
    fn scan_prefix(&self, prefix: &[u8]) -> Entries;

    /// Number of entries. May cost a full scan; meant for tests, stats and startup.
    fn len(&self) -> Result<usize, MetaError>;

    /// Whether the table has no entries.
    fn is_empty(&self) -> Result<bool, MetaError>;
}

/// What a [`MetaTable::compare_and_swap`] did. A lost race is an outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwapOutcome {
    /// The value was `expected` and has been replaced.
    Swapped,
    /// The value was not `expected`; nothing was written.
    Conflict {
        /// What the key holds now.
        current: Option<Vec<u8>>,
    },
}

/// One write of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Store `value` under `key` in `table`.
    Insert {
        /// The table.
        table: String,
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key` from `table`.
    Remove {
        /// The table.
        table: String,
        /// The key.
        key: Vec<u8>,
    },
}

impl BatchOp {
    /// The table the operation writes to.
    pub fn table(&self) -> &str {
        match self {
            BatchOp::Insert { table, .. } | BatchOp::Remove { table, .. } => table,
        }
    }
}

/// Writes to one or more tables that [`MetadataStore::apply_batch`] applies atomically. Later
/// operations on the same key win.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<BatchOp>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an insert of `value` under `key` in `table`.
    pub fn insert(&mut self, table: &str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Insert {
            table: table.to_owned(),
            key: key.into(),
            value: value.into(),
        });
    }

    /// Adds a removal of `key` from `table`.
    pub fn remove(&mut self, table: &str, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Remove {
            table: table.to_owned(),
            key: key.into(),
        });
    }

    /// The operations, in the order they were added.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    /// Adds every operation of `other` after those already here.
    pub fn append(&mut self, other: Batch) {
        if self.ops.is_empty() {
            self.ops = other.ops;
        } else {
            self.ops.extend(other.ops);
        }
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The distinct tables the batch writes to, in first-use order.
    pub fn tables(&self) -> Vec<&str> {
        let mut tables: Vec<&str> = Vec::new();
        for op in &self.ops {
            if !tables.contains(&op.table()) {
                tables.push(op.table());
            }
        }
        tables
    }

    pub(crate) fn into_ops(self) -> Vec<BatchOp> {
        self.ops
    }
}

/// The behaviour every [`MetadataStore`] implementation must show, run by each
/// implementation's unit tests.
#[cfg(test)]
pub(crate) mod contract {
    use super::*;

    fn entries(table: &Table, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        table.scan_prefix(prefix).collect::<Result<_, _>>().unwrap()
    }

    pub(crate) fn a_dump_holds_every_table_in_order(store: &dyn MetadataStore) {
        let mut batch = Batch::new();
        batch.insert("b", b"2".to_vec(), b"two".to_vec());
        batch.insert("b", b"1".to_vec(), b"one".to_vec());
        batch.insert("a", b"x".to_vec(), b"".to_vec());
        store.apply_batch(batch).unwrap();
        store.table("empty").unwrap();
        store.table("skipped").unwrap().insert(b"k", b"v").unwrap();
        let dump = store.dump(&["skipped"]).unwrap();
        let names: Vec<&str> = dump.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "empty"]);
        assert_eq!(store.dump(&[]).unwrap().len(), 4);
        assert_eq!(
            dump[1].entries,
            [
                (b"1".to_vec(), b"one".to_vec()),
                (b"2".to_vec(), b"two".to_vec())
            ]
        );
        assert!(dump[2].entries.is_empty());
    }

    pub(crate) fn tables_are_separate_ordered_maps(store: &dyn MetadataStore) {
        let ac = store.table("ac").unwrap();
        let blobs = store.table("blobs").unwrap();
        assert_eq!(ac.name(), "ac");
        assert!(ac.is_empty().unwrap());

        assert_eq!(ac.insert(b"k/2", b"two").unwrap(), None);
        assert_eq!(ac.insert(b"k/1", b"one").unwrap(), None);
        assert_eq!(ac.insert(b"k/2", b"TWO").unwrap(), Some(b"two".to_vec()));
        ac.insert(b"l/1", b"other prefix").unwrap();
        blobs.insert(b"k/1", b"blob").unwrap();

        assert_eq!(ac.get(b"k/1").unwrap(), Some(b"one".to_vec()));
        assert_eq!(blobs.get(b"k/1").unwrap(), Some(b"blob".to_vec()));
        assert_eq!(blobs.get(b"k/2").unwrap(), None);
        assert_eq!(ac.len().unwrap(), 3);
        assert_eq!(
            entries(&ac, b"k/"),
            vec![
                (b"k/1".to_vec(), b"one".to_vec()),
                (b"k/2".to_vec(), b"TWO".to_vec())
            ]
        );
        assert_eq!(entries(&ac, b"").len(), 3);

        // A second handle sees the same table.
        let again = store.table("ac").unwrap();
        assert_eq!(again.get(b"l/1").unwrap(), Some(b"other prefix".to_vec()));

        assert_eq!(ac.remove(b"k/1").unwrap(), Some(b"one".to_vec()));
        assert_eq!(ac.remove(b"k/1").unwrap(), None);
        assert_eq!(ac.get(b"k/1").unwrap(), None);
    }

    pub(crate) fn empty_table_name_is_refused(store: &dyn MetadataStore) {
        assert!(matches!(
            store.table(""),
            Err(MetaError::InvalidTableName { .. })
        ));
    }

    pub(crate) fn compare_and_swap_reports_conflicts(store: &dyn MetadataStore) {
        let t = store.table("cas").unwrap();
        assert_eq!(
            t.compare_and_swap(b"k", None, Some(b"v1")).unwrap(),
            SwapOutcome::Swapped
        );
        assert_eq!(
            t.compare_and_swap(b"k", None, Some(b"v2")).unwrap(),
            SwapOutcome::Conflict {
                current: Some(b"v1".to_vec())
            }
        );
        assert_eq!(
            t.compare_and_swap(b"k", Some(b"v1"), Some(b"v2")).unwrap(),
            SwapOutcome::Swapped
        );
        assert_eq!(
            t.compare_and_swap(b"k", Some(b"v1"), None).unwrap(),
            SwapOutcome::Conflict {
                current: Some(b"v2".to_vec())
            }
        );
        assert_eq!(
            t.compare_and_swap(b"k", Some(b"v2"), None).unwrap(),
            SwapOutcome::Swapped
        );
        assert_eq!(t.get(b"k").unwrap(), None);
    }

    pub(crate) fn batches_span_tables(store: &dyn MetadataStore) {
        let jobs = store.table("jobs").unwrap();
        jobs.insert(b"old", b"x").unwrap();

        let mut batch = Batch::new();
        batch.insert("jobs", b"j1".to_vec(), b"job".to_vec());
        batch.insert("queue", b"0001/j1".to_vec(), Vec::new());
        batch.remove("jobs", b"old".to_vec());
        batch.insert("jobs", b"j1".to_vec(), b"job, last write wins".to_vec());
        assert_eq!(batch.tables(), vec!["jobs", "queue"]);
        store.apply_batch(batch).unwrap();

        // A table that only a batch wrote to exists afterwards.
        let queue = store.table("queue").unwrap();
        assert_eq!(queue.get(b"0001/j1").unwrap(), Some(Vec::new()));
        assert_eq!(
            jobs.get(b"j1").unwrap(),
            Some(b"job, last write wins".to_vec())
        );
        assert_eq!(jobs.get(b"old").unwrap(), None);

        store.apply_batch(Batch::new()).unwrap();
    }

    pub(crate) fn flushes_return(store: &dyn MetadataStore) {
        store.table("t").unwrap().insert(b"k", b"v").unwrap();
        store.flush().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(store.flush_async()).unwrap();
    }
}

//! The metadata store: everything durable in Tessera goes through it.
//!
//! Owns the [`MetadataStore`] and [`MetaTable`] traits (named tables of byte keys and values,
//! atomic multi-table batches, compare-and-swap, prefix scans, durable flushes), the redb
//! implementation ([`RedbStore`]), an in-memory one for tests ([`MemoryMetaStore`]) and the
//! [`GroupFlush`] that coalesces concurrent flush requests into one fsync, and the
//! [`GroupCommit`] that applies concurrent writers' batches in one transaction. It knows nothing of
//! what the tables hold: the ActionCache, blob index and job tables encode their own records.
//!
//! Durability rule (DESIGN.md §6): a write is acknowledged to a client only after a flush that
//! was requested after the write has returned. Writers call [`MetadataStore::flush_async`] (or
//! the blocking [`MetadataStore::flush`]) and many waiting writers share one fsync.

mod error;
mod group_commit;
mod group_flush;
mod memory;
mod redb_store;
mod store;

pub use error::MetaError;
pub use group_commit::{GroupCommit, Queued};
pub use group_flush::GroupFlush;
pub use memory::MemoryMetaStore;
pub use redb_store::RedbStore;
pub use store::{Batch, BatchOp, Entries, MetaTable, MetadataStore, SwapOutcome, Table, TableDump};

//! Blob stores: where the bytes live.
//!
//! [`BlobStore`] is the seam every service and client codes against; [`DiskStore`] keeps blobs
//! as files under the data directory with a metadata-store index and LRU eviction, and
//! [`MemoryStore`] keeps them in memory for tests. Wire compression (`compressed-blobs/zstd`)
//! lives in [`codec`]; the stores only know their at-rest form.

mod blob_store;
pub mod codec;
mod disk;
mod index;
mod memory;

pub use blob_store::{BlobRead, BlobReader, BlobStore, StoreError, StoreStats, Upload};
pub use disk::{DiskStore, DiskStoreOptions, PinGuard};
pub use memory::MemoryStore;

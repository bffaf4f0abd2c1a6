//! Content addressing for Tessera.
//!
//! Owns digests (BLAKE3 and SHA-256), REAPI ByteStream resource names, Merkle trees of
//! directories and their validation, the blob stores (disk with a redb index, memory), and the
//! metadata store trait that everything durable goes through. Knows nothing of the coordinator
//! or the agent.

pub mod alloc;
pub mod client;
pub mod digest;
pub mod meta;
pub mod resource;
pub mod snapshot;
pub mod space;
pub mod store;
pub mod tree;
pub mod validate;

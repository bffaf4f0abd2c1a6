//! Errors of the metadata store, independent of the backend that raised them.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

/// The error a backend (redb) reported, kept as the source.
pub(crate) type BackendError = Box<dyn StdError + Send + Sync + 'static>;

/// Why a metadata store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The database could not be opened (locked by another process, unreadable, corrupt).
    #[error("failed to open metadata store at {}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// A table name was empty or reserved by the backend.
    #[error("invalid table name {name:?}")]
    InvalidTableName {
        /// The name.
        name: String,
    },
    /// A table could not be opened or created.
    #[error("failed to open table {table}")]
    OpenTable {
        /// The table.
        table: String,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// A key could not be read.
    #[error("failed to read key {key} from table {table}")]
    Read {
        /// The table.
        table: String,
        /// The key, printable.
        key: String,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// A key could not be written or removed.
    #[error("failed to write key {key} to table {table}")]
    Write {
        /// The table.
        table: String,
        /// The key, printable.
        key: String,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// A table could not be scanned.
    #[error("failed to scan table {table}")]
    Scan {
        /// The table.
        table: String,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// An atomic batch could not be applied; none of it was written.
    #[error("failed to apply batch to tables {tables}")]
    Batch {
        /// The tables the batch touched.
        tables: String,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// A flush failed, so writes made before it may not be durable. Shared by every writer that
    /// waited on the same group flush.
    #[error("failed to flush metadata store")]
    Flush {
        /// The backend's error, shared by every waiter.
        #[source]
        source: Arc<dyn StdError + Send + Sync + 'static>,
    },
    /// A group commit ([`super::GroupCommit`]) failed: none of the batches it held, this
    /// writer's included, was written. Shared by every writer of that commit.
    #[error("failed to apply a group commit")]
    GroupCommit {
        /// The store's error, shared by every writer of the commit.
        #[source]
        source: Arc<dyn StdError + Send + Sync + 'static>,
    },
    /// The store was closed (or its flusher stopped) before the requested flush could run.
    #[error("metadata store is closed")]
    Closed,
    /// The file system holding the store is full. Nothing of the refused write was kept, and
    /// writes succeed again by themselves once space returns.
    #[error(
        "metadata store is out of space (the file system holding {} is full); free space there and writes resume by themselves",
        path.display()
    )]
    OutOfSpace {
        /// The store's directory.
        path: PathBuf,
    },
    /// An earlier I/O error closed the store and reopening it has not succeeded yet; it is
    /// retried by later calls.
    #[error("metadata store at {} is unavailable after an I/O error ({cause}); retrying", path.display())]
    Unavailable {
        /// The store's directory.
        path: PathBuf,
        /// The error that closed it, or the last failure to reopen it.
        cause: String,
    },
}

impl MetaError {
    /// Whether the store refused the call because its file system is full.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, MetaError::OutOfSpace { .. })
    }
}

/// Shows a key in an error message: as text when it is printable ASCII, else as hex; long keys
/// are cut so a message stays one readable line.
pub(crate) fn display_key(key: &[u8]) -> String {
    const MAX: usize = 96;
    let shown = &key[..key.len().min(MAX)];
    let mut out = if shown.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        String::from_utf8_lossy(shown).into_owned()
    } else {
        let mut hex = String::from("0x");
        for b in shown {
            let _ = write!(hex, "{b:02x}");
        }
        hex
    };
    if key.len() > MAX {
        let _ = write!(out, "... ({} bytes)", key.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_show_as_text_or_hex() {
        assert_eq!(display_key(b"ac/sha256/ab12"), "ac/sha256/ab12");
        assert_eq!(display_key(&[0, 1, 0xff]), "0x0001ff");
        let long = vec![b'k'; 200];
        assert!(display_key(&long).ends_with("... (200 bytes)"));
    }

    #[test]
    fn messages_name_table_and_key_and_keep_source() {
        let err = MetaError::Read {
            table: "ac".into(),
            key: display_key(b"k1"),
            source: "disk on fire".into(),
        };
        assert_eq!(err.to_string(), "failed to read key k1 from table ac");
        assert_eq!(err.source().unwrap().to_string(), "disk on fire");
    }
}

//! Running out of disk space: telling it apart from other I/O errors, and reporting it once per
//! episode instead of once per refused request.
//!
//! An *episode* starts with the first write refused for lack of space and ends with the first
//! write that succeeds afterwards. Its start is logged at warn level and its end at info level
//! with the number of writes refused in between; both stores (blob files and the metadata
//! store) keep one [`SpaceWatch`] each, so the log says which of them is full.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Whether `error` means the file system (or the user's quota on it) is full.
pub fn is_out_of_space(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || error.raw_os_error() == Some(ENOSPC)
}

/// `ENOSPC` on Linux (and every Unix Tessera runs on).
const ENOSPC: i32 = 28;

/// Figures of one store's out-of-space episodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpaceStats {
    /// Whether the store is refusing writes for lack of space right now.
    pub full: bool,
    /// Writes refused for lack of space since the process started.
    pub refused: u64,
    /// Episodes since the process started.
    pub episodes: u64,
}

/// Tracks out-of-space episodes of one store; see the module docs.
#[derive(Debug)]
pub struct SpaceWatch {
    store: &'static str,
    path: PathBuf,
    /// Fast path for [`SpaceWatch::accepted`]: true while an episode is open.
    full: AtomicBool,
    refused: AtomicU64,
    episodes: AtomicU64,
    /// Writes refused in the open episode; the lock orders the start and end log lines.
    in_episode: Mutex<u64>,
}

impl SpaceWatch {
    /// A watch for `store` (a short name for logs: `blobs`, `metadata`) kept under `path`.
    pub fn new(store: &'static str, path: impl Into<PathBuf>) -> Self {
        SpaceWatch {
            store,
            path: path.into(),
            full: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            episodes: AtomicU64::new(0),
            in_episode: Mutex::new(0),
        }
    }

    /// The directory the store keeps its files in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a write refused for lack of space; the first of an episode is logged.
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut count = self
            .in_episode
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *count += 1;
        if !self.full.swap(true, Ordering::AcqRel) {
            self.episodes.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                store = self.store,
                path = %self.path.display(),
                "out of space: refusing writes until space returns"
            );
        }
    }

    /// Records a write that succeeded; if an episode was open, it ends and is logged.
    pub fn accepted(&self) {
        if !self.full.load(Ordering::Acquire) {
            return;
        }
        let mut count = self
            .in_episode
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.full.swap(false, Ordering::AcqRel) {
            tracing::info!(
                store = self.store,
                path = %self.path.display(),
                refused = *count,
                "space returned: writes accepted again"
            );
            *count = 0;
        }
    }

    /// The figures so far.
    pub fn stats(&self) -> SpaceStats {
        SpaceStats {
            full: self.full.load(Ordering::Acquire),
            refused: self.refused.load(Ordering::Relaxed),
            episodes: self.episodes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_and_quota_are_out_of_space_other_errors_are_not() {
        assert!(is_out_of_space(&io::Error::from_raw_os_error(ENOSPC)));
        assert!(is_out_of_space(&io::Error::from(
            io::ErrorKind::StorageFull
        )));
        assert!(is_out_of_space(&io::Error::from(
            io::ErrorKind::QuotaExceeded
        )));
        assert!(!is_out_of_space(&io::Error::from_raw_os_error(5)));
        assert!(!is_out_of_space(&io::Error::from(io::ErrorKind::NotFound)));
    }

    #[test]
    fn an_episode_counts_every_refusal_once_and_ends_on_the_next_success() {
        let watch = SpaceWatch::new("blobs", "/data/cas");
        watch.accepted();
        assert_eq!(watch.stats(), SpaceStats::default());
        for _ in 0..5 {
            watch.refused();
        }
        assert_eq!(
            watch.stats(),
            SpaceStats {
                full: true,
                refused: 5,
                episodes: 1
            }
        );
        watch.accepted();
        watch.accepted();
        watch.refused();
        assert_eq!(
            watch.stats(),
            SpaceStats {
                full: true,
                refused: 6,
                episodes: 2
            }
        );
        watch.accepted();
        assert!(!watch.stats().full);
    }
}

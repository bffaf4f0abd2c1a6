//! Backups: a consistent snapshot of the coordinator's state and the blobs it needs, written to
//! a backup directory shared by successive snapshots; and restore.
//!
//! - `snapshot`: what a backup holds ([`Snapshot::take`]), consistent by construction;
//! - `archive`: the backup directory ([`Archive`]): blobs by content (incremental), snapshots
//!   with manifests and checksums, verification, pruning, and [`restore`];
//! - [`back_up`]: one backup by the coordinator itself, into a local directory;
//!   [`schedule`]: those backups every `backup_interval`, keeping `backup_keep`;
//! - `service`: the `Backups` gRPC service behind `tessera backup`, which writes the backup on
//!   the caller's machine.

mod archive;
mod service;
mod snapshot;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use archive::{
    Archive, ArchiveError, FORMAT, FileSum, Manifest, Restored, SnapshotParts, TableCount,
    Verified, restore,
};
pub use service::BackupService;
pub use snapshot::{Snapshot, SnapshotError};
use tessera_cas::meta::MetadataStore;
use tessera_cas::store::{BlobStore, DiskStore};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Why a backup failed.
#[derive(Debug, Error)]
pub enum BackupError {
    /// The snapshot could not be taken.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The backup directory failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A blob the snapshot needs vanished before it was copied.
    #[error("blob {0} vanished from the store during the backup; try again")]
    Vanished(tessera_cas::digest::Digest),
    /// The blocking task failed.
    #[error("the backup task failed: {0}")]
    Task(String),
}

/// What one backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackedUp {
    /// The snapshot's name in the directory.
    pub name: String,
    /// When it was taken.
    pub taken: SystemTime,
    /// Metadata entries.
    pub entries: u64,
    /// Blobs the snapshot needs.
    pub blobs: u64,
    /// Of those, blobs copied now (the others were in the directory already).
    pub copied: u64,
    /// Bytes copied now.
    pub copied_bytes: u64,
}

/// Backs the coordinator's state up into `archive`, from this process's own stores: a
/// snapshot, its blobs pinned while they are copied (only those the directory lacks), then
/// the snapshot's manifest. Blocking.
pub fn back_up(
    meta: &dyn MetadataStore,
    store: &DiskStore,
    archive: &Archive,
    source: &str,
) -> Result<BackedUp, BackupError> {
    let snapshot = Snapshot::take(meta, store)?;
    let digests: Vec<_> = snapshot.blobs.iter().copied().collect();
    let _pinned = store.pin(&digests);
    let missing = archive.missing(&snapshot.blobs);
    let mut copied_bytes = 0;
    for digest in &missing {
        let data = store
            .read(digest)
            .map_err(SnapshotError::from)?
            .ok_or(BackupError::Vanished(*digest))?;
        archive.put_blob(digest, &data)?;
        copied_bytes += data.len() as u64;
    }
    let name = archive.write_snapshot(SnapshotParts {
        created: snapshot.created,
        source,
        tables: &snapshot.tables,
        blobs: &snapshot.blobs,
        dropped: &snapshot.dropped,
    })?;
    Ok(BackedUp {
        name,
        taken: snapshot.created,
        entries: snapshot.entries() as u64,
        blobs: snapshot.blobs.len() as u64,
        copied: missing.len() as u64,
        copied_bytes,
    })
}

/// Scheduled backups: where, how often, how many to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSchedule {
    /// The backup directory.
    pub dir: PathBuf,
    /// Time between backups.
    pub interval: Duration,
    /// Snapshots kept (the newest); older ones and the blobs only they needed are removed.
    pub keep: usize,
}

/// Runs scheduled backups until `stop`: the first as soon as the newest snapshot in the
/// directory is `interval` old (at once when there is none), then every `interval`. Each
/// outcome is logged and counted (`tessera_backups_total`,
/// `tessera_backup_last_success_timestamp_seconds`); a failure is tried again at the next
/// interval's tenth, at least a minute later.
pub async fn schedule(
    schedule: BackupSchedule,
    meta: Arc<dyn MetadataStore>,
    store: DiskStore,
    stop: CancellationToken,
) {
    let metrics = crate::metrics::metrics();
    metrics.enable_backups();
    let mut wait = match last_taken(&schedule) {
        Some(taken) => {
            metrics.backup_finished(Some(taken));
            let age = SystemTime::now().duration_since(taken).unwrap_or_default();
            schedule.interval.saturating_sub(age)
        }
        None => Duration::ZERO,
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        let (meta, store, run) = (Arc::clone(&meta), store.clone(), schedule.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            let archive = Archive::open(&run.dir)?;
            let backed_up = back_up(meta.as_ref(), &store, &archive, "scheduled")?;
            let pruned = archive.prune(run.keep)?;
            Ok::<_, BackupError>((backed_up, pruned))
        })
        .await
        .map_err(|e| BackupError::Task(e.to_string()))
        .and_then(|r| r);
        match outcome {
            Ok((b, (snapshots, blobs))) => {
                metrics.backup_finished(Some(b.taken));
                tracing::info!(
                    dir = %schedule.dir.display(),
                    snapshot = %b.name,
                    entries = b.entries,
                    blobs = b.blobs,
                    copied = b.copied,
                    copied_bytes = b.copied_bytes,
                    pruned_snapshots = snapshots,
                    pruned_blobs = blobs,
                    "backup written"
                );
                wait = schedule.interval;
            }
            Err(error) => {
                metrics.backup_finished(None);
                tracing::error!(dir = %schedule.dir.display(), %error, "scheduled backup failed");
                wait = (schedule.interval / 10).max(Duration::from_secs(60));
            }
        }
    }
}

/// When the newest snapshot in the schedule's directory was taken.
fn last_taken(schedule: &BackupSchedule) -> Option<SystemTime> {
    let archive = Archive::existing(&schedule.dir).ok()?;
    let name = archive.latest().ok()?;
    let path = archive
        .root()
        .join("snapshots")
        .join(name)
        .join("manifest.json");
    let manifest: Manifest = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(manifest.created_unix))
}

//! The `Backups` gRPC service: `tessera backup` asks for a snapshot and gets its tables and
//! the digests of the blobs it needs; those blobs stay pinned in the store until the caller
//! closes the stream (or [`PIN_LIMIT`] passes), so it can read them through the CAS at its
//! own pace without eviction taking any.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures::Stream;
use tessera_cas::digest::DigestFunction;
use tessera_cas::meta::MetadataStore;
use tessera_cas::store::DiskStore;
use tessera_proto::tessera::v1::{
    BackupBlobs, BackupEntry, BackupHeader, BackupPart, BackupReady, BackupRequest, BackupTable,
    backup_part::Part, backups_server,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Snapshot;

/// Longest time a backup's blobs stay pinned, for a caller that never closes its stream.
const PIN_LIMIT: Duration = Duration::from_secs(6 * 3600);
/// Bytes of entries per table part (a message stays far below gRPC's limits).
const PART_BYTES: usize = 1 << 20;
/// Digests per blobs part.
const PART_DIGESTS: usize = 10_000;

/// Serves backups of one coordinator's stores.
#[derive(Clone)]
pub struct BackupService {
    meta: Arc<dyn MetadataStore>,
    store: DiskStore,
}

impl std::fmt::Debug for BackupService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupService").finish_non_exhaustive()
    }
}

impl BackupService {
    /// Backups of `meta` and `store`.
    pub fn new(meta: Arc<dyn MetadataStore>, store: DiskStore) -> Self {
        BackupService { meta, store }
    }
}

type PartStream = Pin<Box<dyn Stream<Item = Result<BackupPart, Status>> + Send>>;

#[tonic::async_trait]
impl backups_server::Backups for BackupService {
    type BackupStream = PartStream;

    async fn backup(
        &self,
        _request: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let (meta, store) = (Arc::clone(&self.meta), self.store.clone());
        let (snapshot, pinned) = tokio::task::spawn_blocking(move || {
            let snapshot = Snapshot::take(meta.as_ref(), &store)?;
            let digests: Vec<_> = snapshot.blobs.iter().copied().collect();
            let pinned = store.pin(&digests);
            Ok::<_, super::SnapshotError>((snapshot, pinned))
        })
        .await
        .map_err(|e| Status::internal(format!("the backup task failed: {e}")))?
        .map_err(|e| Status::unavailable(format!("cannot take a snapshot: {e}")))?;
        tracing::info!(
            entries = snapshot.entries(),
            blobs = snapshot.blobs.len(),
            dropped = ?snapshot.dropped,
            "backup snapshot taken; its blobs are pinned until the caller closes the stream"
        );
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for part in parts(snapshot) {
                if tx.send(Ok(part)).await.is_err() {
                    return;
                }
            }
            // The blobs stay pinned while the caller copies them.
            tokio::select! {
                () = tx.closed() => {}
                () = tokio::time::sleep(PIN_LIMIT) => {
                    tracing::warn!("a backup stream stayed open past the pin limit; unpinning");
                }
            }
            drop(pinned);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The snapshot as stream parts: header, tables, blobs, ready.
fn parts(snapshot: Snapshot) -> Vec<BackupPart> {
    let part = |p: Part| BackupPart { part: Some(p) };
    let created_unix = snapshot
        .created
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut out = vec![part(Part::Header(BackupHeader {
        created_unix: i64::try_from(created_unix).unwrap_or(i64::MAX),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }))];
    for table in snapshot.tables {
        let mut entries = Vec::new();
        let mut bytes = 0;
        // An empty table still gets one part, so a restore creates it.
        let mut sent = false;
        for (key, value) in table.entries {
            bytes += key.len() + value.len();
            entries.push(BackupEntry {
                key: key.into(),
                value: value.into(),
            });
            if bytes >= PART_BYTES {
                out.push(part(Part::Table(BackupTable {
                    name: table.name.clone(),
                    entries: std::mem::take(&mut entries),
                })));
                bytes = 0;
                sent = true;
            }
        }
        if !entries.is_empty() || !sent {
            out.push(part(Part::Table(BackupTable {
                name: table.name,
                entries,
            })));
        }
    }
    for function in [DigestFunction::Sha256, DigestFunction::Blake3] {
        let digests: Vec<_> = snapshot
            .blobs
            .iter()
            .filter(|d| d.function == function)
            .map(|d| d.to_proto())
            .collect();
        for chunk in digests.chunks(PART_DIGESTS) {
            out.push(part(Part::Blobs(BackupBlobs {
                digest_function: function.to_proto(),
                digests: chunk.to_vec(),
            })));
        }
    }
    out.push(part(Part::Ready(BackupReady {
        dropped: snapshot.dropped.into_iter().collect(),
    })));
    out
}

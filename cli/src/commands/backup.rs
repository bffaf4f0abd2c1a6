//! `tessera backup` and `tessera restore`.
//!
//! `backup` asks the coordinator for a consistent snapshot (the `Backups` service: its tables
//! and the digests of the blobs they need, pinned in the coordinator's store while the stream
//! is open), reads through the CAS the blobs the backup directory lacks, then writes the
//! snapshot's manifest; the directory is on the machine that runs the command. `restore`
//! verifies every checksum of a snapshot, then writes a new data directory from it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use tessera_cas::client::CasClient;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::meta::TableDump;
use tessera_coordinator::backup::{self, Archive, SnapshotParts};
use tessera_proto::tessera::v1::backup_part::Part;
use tessera_proto::tessera::v1::backups_client::BackupsClient;
use tessera_proto::tessera::v1::{BackupPart, BackupRequest};

use crate::client_config::{ClientConfig, ClientFlags};
use crate::exit::{CliError, Exit};
use crate::{connect, paths};

/// Blobs read from the coordinator at once.
const PARALLEL_READS: usize = 8;

/// `tessera backup` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// The backup directory (created if needed). Blobs already in it are not copied again.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Print the outcome as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Coordinator, admin token (when auth is on) and TLS.
    #[command(flatten)]
    pub client: ClientFlags,
}

/// `tessera restore` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The backup directory.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// The new data directory (must not hold a coordinator's state yet).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The snapshot to restore (a name under DIR/snapshots) [default: the newest].
    #[arg(long, value_name = "NAME")]
    pub snapshot: Option<String>,
    /// Only verify the snapshot's checksums; write nothing.
    #[arg(long)]
    pub verify_only: bool,
}

/// `tessera backup`: exit 0 with the snapshot written, 3 when the coordinator or the
/// directory failed, 2 for bad flags.
pub async fn backup(args: BackupArgs) -> Result<Exit, CliError> {
    let archive = Archive::open(&args.to).map_err(|e| CliError::usage(e.to_string()))?;
    let config = ClientConfig::from_process(&args.client)?;
    let connection = connect::existing(&config, &paths::cache_dir()).await?;
    let mut parts = BackupsClient::new(connection.link.clone())
        .max_decoding_message_size(64 << 20)
        .backup(BackupRequest {})
        .await
        .map_err(|s| connection.failed("Backup", &s))?
        .into_inner();
    let Received {
        created,
        tables,
        blobs,
        dropped,
    } = receive(&mut parts).await.map_err(|e| match e {
        Receive::Call(s) => connection.failed("Backup", &s),
        Receive::Bad(message) => CliError::infra(message),
    })?;
    // The stream stays open (the blobs pinned) while they are copied.
    let missing = archive.missing(&blobs);
    let mut clients = BTreeMap::new();
    for function in missing.iter().map(|d| d.function).collect::<BTreeSet<_>>() {
        let client = CasClient::from_link(connection.link.clone(), "", function)
            .await
            .map_err(|e| CliError::infra(format!("cannot read the coordinator's CAS: {e}")))?;
        clients.insert(function, client);
    }
    let copied_bytes: u64 = futures::stream::iter(missing.iter().copied())
        .map(|digest| {
            let client = &clients[&digest.function];
            let archive = &archive;
            async move {
                let data = client.read(&digest, true).await.map_err(|e| {
                    CliError::infra(format!("reading blob {digest} for the backup: {e}"))
                })?;
                let archive = archive.clone();
                let len = data.len() as u64;
                tokio::task::spawn_blocking(move || archive.put_blob(&digest, &data))
                    .await
                    .map_err(|e| CliError::infra(format!("writing blob {digest}: {e}")))?
                    .map_err(|e| CliError::infra(e.to_string()))?;
                Ok::<_, CliError>(len)
            }
        })
        .buffer_unordered(PARALLEL_READS)
        .try_fold(0, |sum, len| async move { Ok(sum + len) })
        .await?;
    let entries: usize = tables.iter().map(|t| t.entries.len()).sum();
    let source = connection.url.clone();
    let name = {
        let (archive, tables, blobs, dropped) =
            (archive.clone(), tables, blobs.clone(), dropped.clone());
        tokio::task::spawn_blocking(move || {
            archive.write_snapshot(SnapshotParts {
                created,
                source: &source,
                tables: &tables,
                blobs: &blobs,
                dropped: &dropped,
            })
        })
        .await
        .map_err(|e| CliError::infra(format!("writing the snapshot: {e}")))?
        .map_err(|e| CliError::infra(e.to_string()))?
    };
    drop(parts);
    let path = archive.root().join("snapshots").join(&name);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "snapshot": name,
                "path": path,
                "entries": entries,
                "blobs": blobs.len(),
                "copied": missing.len(),
                "copied_bytes": copied_bytes,
                "dropped": dropped,
            })
        );
    } else {
        println!(
            "backup {name} written to {}: {entries} metadata entries, {} blobs ({} copied now, \
             {copied_bytes} bytes)",
            path.display(),
            blobs.len(),
            missing.len()
        );
        for (table, n) in &dropped {
            println!("  left out of {table}: {n} entries whose blobs were already gone");
        }
    }
    Ok(Exit::Success)
}

/// A snapshot as the coordinator sent it.
struct Received {
    created: SystemTime,
    tables: Vec<TableDump>,
    blobs: BTreeSet<Digest>,
    dropped: BTreeMap<String, u64>,
}

/// Why a snapshot was not received.
enum Receive {
    /// The call failed.
    Call(tonic::Status),
    /// The coordinator sent something unusable.
    Bad(String),
}

/// Reads the stream's parts up to its `ready` part (the stream itself stays open).
async fn receive(parts: &mut tonic::Streaming<BackupPart>) -> Result<Received, Receive> {
    let mut created = UNIX_EPOCH;
    let mut tables: BTreeMap<String, TableDump> = BTreeMap::new();
    let mut blobs = BTreeSet::new();
    while let Some(part) = parts.message().await.map_err(Receive::Call)? {
        match part.part {
            Some(Part::Header(header)) => {
                created = UNIX_EPOCH
                    + Duration::from_secs(u64::try_from(header.created_unix).unwrap_or(0));
            }
            Some(Part::Table(table)) => {
                let name = table.name.clone();
                tables
                    .entry(table.name)
                    .or_insert_with(|| TableDump {
                        name,
                        entries: Vec::new(),
                    })
                    .entries
                    .extend(
                        table
                            .entries
                            .into_iter()
                            .map(|e| (e.key.to_vec(), e.value.to_vec())),
                    );
            }
            Some(Part::Blobs(part)) => {
                let function = DigestFunction::from_request(part.digest_function)
                    .map_err(|e| Receive::Bad(format!("the backup names {e}")))?;
                for d in &part.digests {
                    blobs.insert(Digest::from_proto(function, d).map_err(|e| {
                        Receive::Bad(format!("the backup names a bad digest: {e}"))
                    })?);
                }
            }
            Some(Part::Ready(ready)) => {
                return Ok(Received {
                    created,
                    tables: tables.into_values().collect(),
                    blobs,
                    dropped: ready.dropped.into_iter().collect(),
                });
            }
            None => {}
        }
    }
    Err(Receive::Bad(
        "the coordinator ended the backup stream before the snapshot was whole".to_owned(),
    ))
}

/// `tessera restore`: exit 0 when restored (or verified), 2 when the backup is damaged, the
/// data directory is in use or the flags are wrong, 3 when writing failed.
pub async fn restore(args: RestoreArgs) -> Result<Exit, CliError> {
    tokio::task::spawn_blocking(move || restore_blocking(&args))
        .await
        .map_err(|e| CliError::infra(format!("the restore task failed: {e}")))?
}

fn restore_blocking(args: &RestoreArgs) -> Result<Exit, CliError> {
    use backup::ArchiveError as E;
    let archive = Archive::existing(&args.from).map_err(|e| CliError::usage(e.to_string()))?;
    let refused = |e: E| match e {
        E::Damaged { .. } | E::NoSnapshot(_) | E::TargetInUse { .. } => {
            CliError::usage(format!("{e}; nothing was written"))
        }
        other => CliError::infra(other.to_string()),
    };
    if args.verify_only {
        let name = match &args.snapshot {
            Some(name) => name.clone(),
            None => archive.latest().map_err(refused)?,
        };
        let verified = archive.verify(&name).map_err(refused)?;
        println!(
            "snapshot {name} is whole: {} tables, {} blobs, every checksum matches",
            verified.tables.len(),
            verified.blobs.len()
        );
        return Ok(Exit::Success);
    }
    let restored =
        backup::restore(&archive, args.snapshot.as_deref(), &args.data_dir).map_err(refused)?;
    println!(
        "restored snapshot {} into {}: {} metadata entries, {} blobs; start the coordinator \
         with --data-dir {}",
        restored.name,
        args.data_dir.display(),
        restored.entries,
        restored.blobs,
        args.data_dir.display()
    );
    Ok(Exit::Success)
}

//! An action's outputs: which paths it asked for, what it left there, and uploading it all.
//!
//! Requested paths come from `output_paths` (REAPI 2.1 and later), else from the deprecated
//! `output_files` and `output_directories`; all are relative to the working directory. After
//! the command: a regular file becomes an `OutputFile`; a directory is hashed into a Merkle
//! tree and becomes an `OutputDirectory` (its `Tree` message, every `Directory` and every file
//! uploaded, both `tree_digest` and `root_directory_digest` set, not topologically sorted); a
//! symlink becomes an `OutputSymlink` (for old clients also the matching deprecated
//! `output_file_symlinks` or `output_directory_symlinks`). A path that does not exist is left
//! out, as REAPI says. A path whose parent resolves outside the exec root (through a symlink)
//! is left out too. A lease's secret values are masked in every file before it is hashed (see
//! `mask`): in place, so what is uploaded, and what is left on the agent's disk, is the masked
//! file. When the coordinator takes outputs inline with the result (protocol 3,
//! `Welcome.inline_output_bytes`), the small ones, up to that many bytes in all, go with it:
//! no FindMissingBlobs, no upload call (a round trip costs more than sending a few kilobytes
//! the CAS may have already). The rest are uploaded as before: FindMissingBlobs first, then
//! only what the CAS lacks, small blobs in batches, read in bounded groups; large files
//! streamed through ByteStream piece by piece from disk, never whole in memory. Each file is
//! hashed once, while it is collected; it is read once more only to be sent.
//!
//! Alongside the upload, every large output file (one that would be streamed, over 1 MiB)
//! enters the agent's local cache (see `LocalCache::keep_output`: a hard link where only the
//! exec root holds the file), so the next action on this agent that takes it as an input
//! downloads none of it. Small files are left to come back in batches, many per call, where a
//! download costs about what keeping them would (a store record each) and nothing is spent on
//! outputs no later action here needs (most of a Bazel build's). To vouch for the bytes,
//! each file's metadata is taken after hashing, and it is kept only if it was last modified
//! before hashing began (masking, which replaces a file, comes before that): the action has
//! ended, so nothing should write it, and a file that was written anyway is left out of the
//! cache, never kept under a digest it may not match.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use tessera_cas::client::{CasClient, ClientError, WRITE_CHUNK};
use tessera_cas::digest::{Digest, DigestFunction, digest_message};
use tessera_cas::tree::{TreeError, assemble_tree, build_tree};
use tessera_proto::reapi::{ActionResult, Command, OutputDirectory, OutputFile, OutputSymlink};
use thiserror::Error;
use tokio_stream::wrappers::ReceiverStream;

use crate::cache::{Kept, LocalCache, Transfer, plan_transfers};
use crate::mask::{MaskError, SecretMask};
use crate::materialize::relative_components;

/// Most file bytes read into memory at once while uploading.
const UPLOAD_GROUP_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes read at a time from a large file streamed to the CAS: several messages' worth, so
/// the reading thread hands over seldom (on a loaded machine each hand-over can wait for a
/// core).
const STREAM_READ: usize = 8 * WRITE_CHUNK;
/// Reads of a streamed file done ahead of the network.
const STREAM_AHEAD: usize = 2;

/// Why outputs could not be collected or uploaded.
#[derive(Debug, Error)]
pub enum OutputError {
    /// A requested path is not a clean relative path.
    #[error("output path \"{path}\" {reason}")]
    InvalidPath {
        /// The path.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A path declared as a file is a directory, or the reverse.
    #[error("output \"{path}\" was declared as a {declared} but is a {found}")]
    WrongType {
        /// The path.
        path: String,
        /// "file" or "directory".
        declared: &'static str,
        /// What it is.
        found: &'static str,
    },
    /// An output is neither a file, a directory nor a symlink, or has a name that is not UTF-8.
    #[error("output \"{path}\": {reason}")]
    Unsupported {
        /// The path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An output directory could not be hashed.
    #[error("output directory \"{path}\": {source}")]
    Tree {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: Box<TreeError>,
    },
    /// A filesystem operation failed.
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file could not be masked.
    #[error(transparent)]
    Mask(#[from] MaskError),
    /// Uploading failed.
    #[error("failed to upload outputs: {0}")]
    Upload(#[from] ClientError),
}

impl OutputError {
    /// True if the action is at fault (what it left behind), not the agent.
    pub fn is_user_error(&self) -> bool {
        match self {
            OutputError::InvalidPath { .. }
            | OutputError::WrongType { .. }
            | OutputError::Unsupported { .. } => true,
            OutputError::Tree { source, .. } => {
                matches!(
                    **source,
                    TreeError::NotUtf8(_) | TreeError::UnsupportedFileType(_)
                ) || source.is_invalid_tree()
            }
            OutputError::Io { .. } | OutputError::Mask(_) | OutputError::Upload(_) => false,
        }
    }
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> OutputError + 'a {
    move |source| OutputError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// What a requested path was declared as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// `output_paths`: whatever it turns out to be.
    Any,
    /// `output_files`.
    File,
    /// `output_directories`.
    Directory,
}

/// One requested output path, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    /// As the action gave it, relative to the working directory.
    pub path: String,
    /// How it was declared.
    pub declared: Declared,
}

impl RequestedOutput {
    /// Its path components (empty for the working directory itself).
    pub fn components(&self) -> Vec<&str> {
        relative_components(&self.path).unwrap_or_default()
    }
}

#[expect(
    deprecated,
    reason = "output_files and output_directories are what REAPI 2.0 clients send"
)]
/// The outputs `command` asks for: `output_paths` if set, else `output_files` and
/// `output_directories`. Refuses paths that are not clean relative paths; only a directory may
/// be `""` (the working directory itself).
pub fn requested_outputs(command: &Command) -> Result<Vec<RequestedOutput>, OutputError> {
    let declared: Vec<(String, Declared)> = if command.output_paths.is_empty() {
        let files = command
            .output_files
            .iter()
            .map(|p| (p.clone(), Declared::File));
        let dirs = command
            .output_directories
            .iter()
            .map(|p| (p.clone(), Declared::Directory));
        files.chain(dirs).collect()
    } else {
        command
            .output_paths
            .iter()
            .map(|p| (p.clone(), Declared::Any))
            .collect()
    };
    declared
        .into_iter()
        .map(|(path, declared)| {
            relative_components(&path).map_err(|reason| OutputError::InvalidPath {
                path: path.clone(),
                reason,
            })?;
            if path.is_empty() && declared == Declared::File {
                return Err(OutputError::InvalidPath {
                    path,
                    reason: "is empty",
                });
            }
            Ok(RequestedOutput { path, declared })
        })
        .collect()
}

/// Where the bytes of a blob to upload are.
#[derive(Debug, Clone)]
pub enum BlobSource {
    /// In a local file.
    File(HashedFile),
    /// In memory.
    Bytes(Bytes),
}

/// A local file hashed for upload.
#[derive(Debug, Clone)]
pub struct HashedFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its metadata taken after hashing, if it was last modified before hashing began: then
    /// the agent's cache may keep it as the blob it hashed to (see the module docs).
    pub unchanged: Option<fs::Metadata>,
}

impl HashedFile {
    /// `path`, hashed since `started`: stats it and notes whether it was modified before that.
    fn stat(path: PathBuf, started: SystemTime) -> Self {
        let unchanged = fs::symlink_metadata(&path)
            .ok()
            .filter(|meta| meta.modified().is_ok_and(|modified| modified < started));
        HashedFile { path, unchanged }
    }
}

/// Outputs found after the command ran, not yet uploaded.
#[derive(Debug, Default)]
pub struct CollectedOutputs {
    /// An `ActionResult` with the output fields filled in.
    pub result: ActionResult,
    /// Every blob the result refers to.
    pub blobs: Vec<(Digest, BlobSource)>,
}

/// The digest of a local file, and the blob to upload for it, after masking `mask`'s values
/// in it. Not for the agent's cache: used for stdout and stderr, whose paths the agent writes
/// again (for the next batch of a test worker). Blocking.
pub fn file_blob(
    path: &Path,
    function: DigestFunction,
    mask: &SecretMask,
) -> Result<(Digest, BlobSource), OutputError> {
    let (digest, mut file) = hashed_file(path, function, mask)?;
    file.unchanged = None;
    Ok((digest, BlobSource::File(file)))
}

/// Masks and hashes the file at `path`, noting whether the cache may keep it.
fn hashed_file(
    path: &Path,
    function: DigestFunction,
    mask: &SecretMask,
) -> Result<(Digest, HashedFile), OutputError> {
    mask.mask_file(path)?;
    let started = SystemTime::now();
    let file = fs::File::open(path).map_err(io_error("open", path))?;
    let digest = function
        .digest_reader(file)
        .map_err(io_error("read", path))?;
    Ok((digest, HashedFile::stat(path.to_owned(), started)))
}

#[expect(
    deprecated,
    reason = "REAPI 2.0 clients read symlinks from output_file_symlinks and output_directory_symlinks"
)]
/// Looks at each requested output under `working_dir` (inside `exec_root`), masking `mask`'s
/// values in every file first, except in the files at `masked_already` (requested paths the
/// agent itself wrote with their values masked field by field, such as a step's report, which
/// byte masking could break). Blocking.
pub fn collect_outputs(
    exec_root: &Path,
    working_dir: &Path,
    requested: &[RequestedOutput],
    function: DigestFunction,
    mask: &SecretMask,
    masked_already: &[&str],
) -> Result<CollectedOutputs, OutputError> {
    let root = fs::canonicalize(exec_root).map_err(io_error("resolve", exec_root))?;
    let mut out = CollectedOutputs::default();
    let unmasked = SecretMask::default();
    for output in requested {
        let mask = if masked_already.contains(&output.path.as_str()) {
            &unmasked
        } else {
            mask
        };
        let path = working_dir.join(&output.path);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(OutputError::Io {
                    op: "stat",
                    path,
                    source,
                });
            }
        };
        let parent = if output.path.is_empty() {
            path.clone()
        } else {
            path.parent()
                .map(Path::to_owned)
                .unwrap_or_else(|| path.clone())
        };
        let inside = fs::canonicalize(&parent).is_ok_and(|p| p.starts_with(&root));
        if !inside {
            tracing::warn!(path = %output.path, "output leads outside the exec root; left out");
            continue;
        }
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            let target = fs::read_link(&path).map_err(io_error("read symlink", &path))?;
            let target =
                target
                    .into_os_string()
                    .into_string()
                    .map_err(|_| OutputError::Unsupported {
                        path: output.path.clone(),
                        reason: "symlink target is not valid UTF-8".into(),
                    })?;
            let symlink = OutputSymlink {
                path: output.path.clone(),
                target,
                node_properties: None,
            };
            match output.declared {
                Declared::Any => {}
                Declared::File => out.result.output_file_symlinks.push(symlink.clone()),
                Declared::Directory => out.result.output_directory_symlinks.push(symlink.clone()),
            }
            out.result.output_symlinks.push(symlink);
        } else if file_type.is_file() {
            if output.declared == Declared::Directory {
                return Err(OutputError::WrongType {
                    path: output.path.clone(),
                    declared: "directory",
                    found: "file",
                });
            }
            // A file the agent wrote itself (a step's report) may be written again in place
            // (a test worker's next batch): not for the cache.
            let (digest, source) = if masked_already.contains(&output.path.as_str()) {
                file_blob(&path, function, mask)?
            } else {
                let (digest, file) = hashed_file(&path, function, mask)?;
                (digest, BlobSource::File(file))
            };
            out.result.output_files.push(OutputFile {
                path: output.path.clone(),
                digest: Some(digest.to_proto()),
                is_executable: meta.permissions().mode() & 0o111 != 0,
                contents: Bytes::new(),
                node_properties: None,
            });
            out.blobs.push((digest, source));
        } else if file_type.is_dir() {
            if output.declared == Declared::File {
                return Err(OutputError::WrongType {
                    path: output.path.clone(),
                    declared: "file",
                    found: "directory",
                });
            }
            let tree_error = |source| OutputError::Tree {
                path: output.path.clone(),
                source: Box::new(source),
            };
            mask.mask_tree(&path)?;
            let started = SystemTime::now();
            let tree = build_tree(&path, function).map_err(tree_error)?;
            let message = assemble_tree(&tree).map_err(tree_error)?;
            let (tree_digest, tree_bytes) = digest_message(function, &message);
            out.result.output_directories.push(OutputDirectory {
                path: output.path.clone(),
                tree_digest: Some(tree_digest.to_proto()),
                is_topologically_sorted: false,
                root_directory_digest: Some(tree.root.to_proto()),
            });
            out.blobs
                .push((tree_digest, BlobSource::Bytes(Bytes::from(tree_bytes))));
            for (digest, bytes) in tree.directories {
                out.blobs.push((digest, BlobSource::Bytes(bytes)));
            }
            for (digest, path) in tree.files {
                let hashed = HashedFile::stat(path, started);
                out.blobs.push((digest, BlobSource::File(hashed)));
            }
        } else {
            return Err(OutputError::Unsupported {
                path: output.path.clone(),
                reason: "not a file, directory or symlink".into(),
            });
        }
    }
    Ok(out)
}

/// Keeps the output files of `blobs` in the agent's `cache` (see the module docs), while
/// uploading whatever of `blobs` the CAS lacks, but for the small ones that go inline with
/// the result: up to `inline_bytes` in all, returned with their contents. A file the cache
/// cannot keep costs a download later, not the lease: that is logged, not returned.
pub async fn upload(
    cas: &CasClient,
    cache: &LocalCache,
    blobs: &[(Digest, BlobSource)],
    inline_bytes: u64,
) -> Result<Vec<(Digest, Bytes)>, OutputError> {
    let keep = keep_in_cache(cache, blobs);
    let (uploaded, kept) = tokio::join!(upload_missing(cas, blobs, inline_bytes), keep);
    match kept {
        Ok(counts) => tracing::debug!(?counts, "outputs kept in the local cache"),
        Err(error) => tracing::warn!(%error, "outputs not kept in the local cache"),
    }
    uploaded
}

/// How many output files [`keep_in_cache`] kept, and how.
#[derive(Debug, Default)]
pub struct KeptCounts {
    /// Became the blob by hard link.
    pub linked: usize,
    /// Copied in (shared with files outside the exec root).
    pub copied: usize,
    /// Cached already.
    pub present: usize,
    /// Not kept: modified after hashing began, or the cache refused it.
    pub skipped: usize,
}

/// Puts every large output file of `blobs` that is unchanged since it was hashed into `cache`
/// (see the module docs).
pub async fn keep_in_cache(
    cache: &LocalCache,
    blobs: &[(Digest, BlobSource)],
) -> Result<KeptCounts, OutputError> {
    let files: Vec<(Digest, HashedFile)> = blobs
        .iter()
        .filter_map(|(digest, source)| match source {
            BlobSource::File(file) if is_streamed(digest) => Some((*digest, file.clone())),
            _ => None,
        })
        .collect();
    if files.is_empty() {
        return Ok(KeptCounts::default());
    }
    let cache = cache.clone();
    tokio::task::spawn_blocking(move || {
        let mut counts = KeptCounts::default();
        for (digest, file) in files {
            let Some(hashed) = &file.unchanged else {
                counts.skipped += 1;
                continue;
            };
            match cache.keep_output(&digest, &file.path, hashed) {
                Ok(Kept::Linked) => counts.linked += 1,
                Ok(Kept::Copied) => counts.copied += 1,
                Ok(Kept::Present) => counts.present += 1,
                Ok(Kept::Changed) => counts.skipped += 1,
                Err(error) => {
                    counts.skipped += 1;
                    tracing::debug!(%digest, %error, "output not kept in the local cache");
                }
            }
        }
        counts
    })
    .await
    .map_err(|e| OutputError::Io {
        op: "keep outputs in",
        path: PathBuf::from("a blocking task"),
        source: io::Error::other(e.to_string()),
    })
}

/// Reads the small blobs of `blobs` that go inline with the result (up to `inline_bytes` in
/// all, in order) and returns them; uploads whatever else of `blobs` the CAS lacks: small
/// blobs in batches, read in bounded groups; large files streamed from disk.
async fn upload_missing(
    cas: &CasClient,
    blobs: &[(Digest, BlobSource)],
    inline_bytes: u64,
) -> Result<Vec<(Digest, Bytes)>, OutputError> {
    let mut seen = HashSet::new();
    let mut budget = inline_bytes;
    let (inline, unique): (Vec<&(Digest, BlobSource)>, Vec<_>) = blobs
        .iter()
        .filter(|(d, _)| !d.is_empty_blob() && seen.insert(*d))
        .partition(|(digest, _)| {
            let fits = !is_streamed(digest) && digest.size_bytes <= budget;
            if fits {
                budget -= digest.size_bytes;
            }
            fits
        });
    let inline = if inline.is_empty() {
        Vec::new()
    } else {
        load(inline.into_iter().cloned().collect()).await?
    };
    if unique.is_empty() {
        return Ok(inline);
    }
    let digests: Vec<Digest> = unique.iter().map(|(d, _)| *d).collect();
    let missing: HashSet<Digest> = cas.find_missing(&digests).await?.into_iter().collect();
    let todo: Vec<&(Digest, BlobSource)> = unique
        .into_iter()
        .filter(|(d, _)| missing.contains(d))
        .collect();
    // Bounded groups, so a large output tree is never all in memory at once.
    let mut group: Vec<(Digest, BlobSource)> = Vec::new();
    let mut group_bytes = 0;
    for (digest, source) in todo {
        if let BlobSource::File(file) = source
            && is_streamed(digest)
        {
            upload_file(cas, digest, &file.path).await?;
            continue;
        }
        if !group.is_empty() && group_bytes + digest.size_bytes > UPLOAD_GROUP_BYTES {
            upload_group(cas, std::mem::take(&mut group)).await?;
            group_bytes = 0;
        }
        group_bytes += digest.size_bytes;
        group.push((*digest, source.clone()));
    }
    if !group.is_empty() {
        upload_group(cas, group).await?;
    }
    Ok(inline)
}

/// Whether `digest` goes through ByteStream rather than a batch.
fn is_streamed(digest: &Digest) -> bool {
    matches!(
        plan_transfers(std::slice::from_ref(digest)).as_slice(),
        [Transfer::Stream(_)]
    )
}

/// Streams the file at `path` to the CAS as `digest`, read piece by piece on a blocking thread
/// a few pieces ahead of the network. A read error ends the stream early (the CAS then refuses
/// the short write) and is what is reported.
async fn upload_file(cas: &CasClient, digest: &Digest, path: &Path) -> Result<(), OutputError> {
    let (pieces, receiver) = tokio::sync::mpsc::channel::<Bytes>(STREAM_AHEAD);
    let reading = path.to_owned();
    let reader = tokio::task::spawn_blocking(move || -> io::Result<()> {
        let mut file = fs::File::open(&reading)?;
        loop {
            let mut piece = vec![0u8; STREAM_READ];
            let n = read_full(&mut file, &mut piece)?;
            if n == 0 {
                return Ok(());
            }
            piece.truncate(n);
            if pieces.blocking_send(Bytes::from(piece)).is_err() {
                // The upload ended (refused or failed): nothing more to send.
                return Ok(());
            }
        }
    });
    // Each read goes out as ByteStream messages of the usual size.
    let messages = ReceiverStream::new(receiver).flat_map(|read: Bytes| {
        let pieces: Vec<Bytes> = (0..read.len())
            .step_by(WRITE_CHUNK)
            .map(|start| read.slice(start..read.len().min(start + WRITE_CHUNK)))
            .collect();
        futures::stream::iter(pieces)
    });
    let sent = cas.write_stream(digest, messages).await;
    let read = reader.await.map_err(|e| OutputError::Io {
        op: "read for upload",
        path: path.to_owned(),
        source: io::Error::other(e.to_string()),
    })?;
    read.map_err(io_error("read for upload", path))?;
    sent?;
    Ok(())
}

/// Reads until `buf` is full or the file ends; how many bytes were read.
fn read_full(file: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// The contents of `group`: files read on a blocking thread (none taken when every blob is
/// in memory already).
async fn load(group: Vec<(Digest, BlobSource)>) -> Result<Vec<(Digest, Bytes)>, OutputError> {
    let read = |group: Vec<(Digest, BlobSource)>| {
        group
            .into_iter()
            .map(|(digest, source)| {
                let data = match source {
                    BlobSource::Bytes(bytes) => bytes,
                    BlobSource::File(file) => {
                        Bytes::from(fs::read(&file.path).map_err(io_error("read", &file.path))?)
                    }
                };
                Ok((digest, data))
            })
            .collect::<Result<Vec<(Digest, Bytes)>, OutputError>>()
    };
    if group
        .iter()
        .all(|(_, source)| matches!(source, BlobSource::Bytes(_)))
    {
        return read(group);
    }
    tokio::task::spawn_blocking(move || read(group))
        .await
        .map_err(|e| OutputError::Io {
            op: "read outputs in",
            path: PathBuf::from("a blocking task"),
            source: io::Error::other(e.to_string()),
        })?
}

async fn upload_group(
    cas: &CasClient,
    group: Vec<(Digest, BlobSource)>,
) -> Result<(), OutputError> {
    let loaded = load(group).await?;
    let digests: Vec<Digest> = loaded.iter().map(|(d, _)| *d).collect();
    let data: std::collections::HashMap<Digest, Bytes> = loaded.into_iter().collect();
    for transfer in plan_transfers(&digests) {
        match transfer {
            Transfer::Batch(batch) => {
                let blobs = batch.iter().map(|d| (*d, data[d].clone())).collect();
                cas.batch_update(blobs, false).await?;
            }
            Transfer::Stream(digest) => {
                cas.write(&digest, data[&digest].clone(), false).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(deprecated, reason = "testing the REAPI 2.0 fields")]
    fn output_paths_win_over_the_deprecated_fields() {
        let command = Command {
            output_paths: vec!["out/a".into(), "".into()],
            output_files: vec!["ignored".into()],
            ..Command::default()
        };
        let requested = requested_outputs(&command).unwrap();
        assert_eq!(
            requested,
            [
                RequestedOutput {
                    path: "out/a".into(),
                    declared: Declared::Any
                },
                RequestedOutput {
                    path: "".into(),
                    declared: Declared::Any
                },
            ]
        );
        let old = Command {
            output_files: vec!["f".into()],
            output_directories: vec!["d".into()],
            ..Command::default()
        };
        let declared: Vec<Declared> = requested_outputs(&old)
            .unwrap()
            .iter()
            .map(|r| r.declared)
            .collect();
        assert_eq!(declared, [Declared::File, Declared::Directory]);
    }

    #[test]
    #[expect(deprecated, reason = "testing the REAPI 2.0 fields")]
    fn bad_output_paths_are_refused() {
        for bad in ["/abs", "../up", "a//b", "a/"] {
            let command = Command {
                output_paths: vec![bad.into()],
                ..Command::default()
            };
            let err = requested_outputs(&command).unwrap_err();
            assert!(
                err.is_user_error() && err.to_string().contains(bad),
                "{err}"
            );
        }
        let empty_file = Command {
            output_files: vec!["".into()],
            ..Command::default()
        };
        assert!(requested_outputs(&empty_file).is_err());
    }

    #[test]
    #[expect(deprecated, reason = "testing the REAPI 2.0 fields")]
    fn collects_files_directories_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("out/tree/sub")).unwrap();
        fs::write(root.join("out/file"), "data").unwrap();
        fs::set_permissions(root.join("out/file"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("out/tree/sub/x"), "x").unwrap();
        std::os::unix::fs::symlink("file", root.join("out/link")).unwrap();
        let requested: Vec<RequestedOutput> = ["out/file", "out/tree", "out/link", "out/none"]
            .iter()
            .map(|p| RequestedOutput {
                path: (*p).into(),
                declared: Declared::Any,
            })
            .collect();
        let f = DigestFunction::Sha256;
        let none = SecretMask::default();
        let out = collect_outputs(root, root, &requested, f, &none, &[]).unwrap();
        assert_eq!(out.result.output_files.len(), 1);
        assert!(out.result.output_files[0].is_executable);
        assert_eq!(
            out.result.output_files[0].digest,
            Some(f.digest_of(b"data").to_proto())
        );
        assert_eq!(out.result.output_directories.len(), 1);
        assert_eq!(out.result.output_symlinks.len(), 1);
        assert_eq!(out.result.output_symlinks[0].target, "file");
        assert!(out.result.output_file_symlinks.is_empty());
        // The file, the tree message, its two directories (tree, tree/sub) and x.
        assert_eq!(out.blobs.len(), 1 + 1 + 2 + 1);

        let as_file = [RequestedOutput {
            path: "out/tree".into(),
            declared: Declared::File,
        }];
        let err = collect_outputs(root, root, &as_file, f, &none, &[]).unwrap_err();
        assert!(err.is_user_error(), "{err}");
        let old_link = [RequestedOutput {
            path: "out/link".into(),
            declared: Declared::File,
        }];
        let out = collect_outputs(root, root, &old_link, f, &none, &[]).unwrap();
        assert_eq!(out.result.output_file_symlinks.len(), 1);
        assert_eq!(out.result.output_symlinks.len(), 1);
    }

    #[test]
    fn outputs_through_symlinks_out_of_the_root_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(dir.path().join("secret")).unwrap();
        fs::write(dir.path().join("secret/key"), "k").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("s")).unwrap();
        let requested = [RequestedOutput {
            path: "s/key".into(),
            declared: Declared::Any,
        }];
        let out = collect_outputs(
            &root,
            &root,
            &requested,
            DigestFunction::Sha256,
            &SecretMask::default(),
            &[],
        )
        .unwrap();
        assert!(out.result.output_files.is_empty());
        assert!(out.blobs.is_empty());
    }

    #[test]
    fn secret_values_are_masked_before_outputs_are_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("tree/sub")).unwrap();
        fs::write(root.join("file"), "token=s3cret-value").unwrap();
        fs::write(root.join("tree/sub/x"), "s3cret-value!").unwrap();
        fs::write(root.join("report.json"), r#"{"output":"s3cret-value"}"#).unwrap();
        let requested: Vec<RequestedOutput> = ["file", "tree", "report.json"]
            .iter()
            .map(|p| RequestedOutput {
                path: (*p).into(),
                declared: Declared::Any,
            })
            .collect();
        let f = DigestFunction::Sha256;
        let mask = SecretMask::new(["s3cret-value"]);
        let out = collect_outputs(root, root, &requested, f, &mask, &["report.json"]).unwrap();
        assert_eq!(fs::read_to_string(root.join("file")).unwrap(), "token=***");
        assert_eq!(
            out.result.output_files[0].digest,
            Some(f.digest_of(b"token=***").to_proto())
        );
        assert_eq!(fs::read_to_string(root.join("tree/sub/x")).unwrap(), "***!");
        assert!(out.blobs.iter().any(|(digest, source)| {
            *digest == f.digest_of(b"***!")
                && matches!(source, BlobSource::File(file) if file.path == root.join("tree/sub/x"))
        }));
        // Written by the agent with its fields masked: left as it is.
        assert_eq!(
            out.result.output_files[1].digest,
            Some(f.digest_of(br#"{"output":"s3cret-value"}"#).to_proto())
        );
        let (stdout, _) = {
            fs::write(root.join("stdout"), "s3cret-value\n").unwrap();
            file_blob(&root.join("stdout"), f, &mask).unwrap()
        };
        assert_eq!(stdout, f.digest_of(b"***\n"));
    }
}

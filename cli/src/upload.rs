//! The input root of a job: a snapshot of the project's working tree (git's tracked files plus
//! untracked ones that are not ignored, narrowed by `--include`/`--exclude`), hashed with a
//! persistent cache so an unchanged tree costs one `lstat` a file, and uploaded so that only
//! the blobs the CAS lacks travel (one FindMissingBlobs, then batches, ByteStream for big files).
//!
//! The tools' own outputs and caches never travel, even when git does not ignore them, unless
//! an `--include` names them: they are rebuilt on the agents, and uploading them costs time and
//! changes every test's cache key for nothing. [`is_tool_output`] says which directories those
//! are. A snapshot larger than [`LARGE_SNAPSHOT_BYTES`] is reported with its biggest
//! directories, so a stray build directory does not travel without a word.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_cas::client::CasClient;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::snapshot::{HashCache, list_files, snapshot};
use tessera_cas::tree::MerkleTree;

use crate::exit::CliError;

/// The digest function of snapshots and jobs: BLAKE3, the native default (DESIGN.md §3).
pub const DIGEST_FUNCTION: DigestFunction = DigestFunction::Blake3;
/// Blobs above this go through ByteStream instead of a batch.
const BATCH_BLOB_LIMIT: u64 = 1024 * 1024;
/// Bytes per BatchUpdateBlobs call (below the coordinator's default 4 MiB limit).
const BATCH_BYTES: u64 = 3 * 1024 * 1024;

/// What a snapshot and upload did, for the `--verbose`-free timing note.
#[derive(Debug, Clone, Copy, Default)]
pub struct UploadStats {
    /// Files in the snapshot.
    pub files: usize,
    /// Blobs the CAS lacked and got.
    pub uploaded_blobs: usize,
    /// Their bytes.
    pub uploaded_bytes: u64,
    /// Time to list and hash.
    pub snapshot_time: Duration,
    /// Time to find and upload missing blobs.
    pub upload_time: Duration,
}

/// What the user should hear about a snapshot: tool outputs left out, unusual size.
#[derive(Debug, Clone, Default)]
pub struct SnapshotNotes {
    /// Directories left out as tools' outputs.
    pub left_out: Vec<String>,
    /// Set when the snapshot is unusually large.
    pub large: Option<String>,
}

/// A snapshot above this size gets a note naming its biggest directories.
pub const LARGE_SNAPSHOT_BYTES: u64 = 100 * 1024 * 1024;

/// Directory names that are always a tool's cache or output.
const TOOL_OUTPUT_NAMES: &[&str] = &[
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    ".tox",
    ".nox",
];

/// Whether the directory `rel` under `root` is a tool's own output or cache: a name from
/// [`TOOL_OUTPUT_NAMES`], a directory tagged with `CACHEDIR.TAG` (cargo's target directory, and
/// any tool following the Cache Directory Tagging convention), cargo's target directory before
/// it was tagged (`.rustc_info.json`), or a Python virtual environment (`pyvenv.cfg`).
pub fn is_tool_output(root: &Path, rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    if TOOL_OUTPUT_NAMES.contains(&name) {
        return true;
    }
    let dir = root.join(rel);
    ["CACHEDIR.TAG", ".rustc_info.json", "pyvenv.cfg"]
        .iter()
        .any(|marker| dir.join(marker).is_file())
}

/// Which files of the tree at `root` to take: `include`/`exclude` are globs over paths
/// relative to the root (`*` within a path segment, `**` across segments, `?` one character);
/// a pattern also matches everything under a directory it matches, so `docs` or `docs/`
/// names the whole directory. Tools' outputs ([`is_tool_output`]) are left out unless an
/// include pattern names them; the directories left out are returned beside the files.
pub fn select_files(
    root: &Path,
    include: &[String],
    exclude: &[String],
) -> Result<(Vec<String>, Vec<String>), CliError> {
    let mut files = list_files(root, &[], &[]).map_err(|e| {
        CliError::usage(format!("cannot list the files of {}: {e}", root.display()))
    })?;
    files.retain(|f| {
        (include.is_empty() || include.iter().any(|p| glob_matches(p, f)))
            && !exclude.iter().any(|p| glob_matches(p, f))
    });
    // Each directory is judged once; a file goes with its outermost tool-output ancestor.
    let mut judged: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
    let mut left_out: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    files.retain(|f| {
        let mut end = 0;
        while let Some(at) = f[end..].find('/') {
            let dir = &f[..end + at];
            end += at + 1;
            let output = *judged
                .entry(dir.to_owned())
                .or_insert_with(|| is_tool_output(root, dir));
            if output
                && !include
                    .iter()
                    .any(|p| glob_matches(p, f) && names_inside(p, dir))
            {
                left_out.insert(dir.to_owned());
                return false;
            }
        }
        true
    });
    Ok((files, left_out.into_iter().collect()))
}

/// Whether `pattern` names something at or inside `dir` (so it asks for a tool's output
/// explicitly), rather than an ancestor of it such as `.` or `src`.
fn names_inside(pattern: &str, dir: &str) -> bool {
    let pattern = pattern.trim_start_matches("./").trim_end_matches('/');
    let depth = |s: &str| s.split('/').count();
    !pattern.is_empty() && depth(pattern) >= depth(dir)
}

/// The note for a snapshot of `bytes` above [`LARGE_SNAPSHOT_BYTES`]: its biggest top-level
/// directories (two levels deep) and how to leave them out; `None` for a usual snapshot.
pub fn large_snapshot_note(root: &Path, files: &[String], bytes: u64) -> Option<String> {
    if bytes <= LARGE_SNAPSHOT_BYTES {
        return None;
    }
    let mut by_dir: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for f in files {
        let dir = match f.match_indices('/').nth(1) {
            Some((at, _)) => &f[..at],
            None => f.rsplit_once('/').map_or(".", |(d, _)| d),
        };
        let size = std::fs::symlink_metadata(root.join(f)).map_or(0, |m| m.len());
        *by_dir.entry(dir).or_default() += size;
    }
    let mut dirs: Vec<(&str, u64)> = by_dir.into_iter().collect();
    dirs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let biggest: Vec<String> = dirs
        .iter()
        .take(3)
        .map(|(d, b)| format!("{d}/ ({} MiB)", b / (1024 * 1024)))
        .collect();
    Some(format!(
        "the snapshot is large: {} MiB in {} files; biggest: {}. If these are build outputs, \
         leave them out with --exclude DIR or list them in .gitignore",
        bytes / (1024 * 1024),
        files.len(),
        biggest.join(", ")
    ))
}

/// Whether `pattern` matches `path` or one of its parent directories.
pub fn glob_matches(pattern: &str, path: &str) -> bool {
    let pattern = pattern.trim_start_matches("./").trim_end_matches('/');
    if pattern.is_empty() {
        return true;
    }
    let pat: Vec<&str> = pattern.split('/').collect();
    let segs: Vec<&str> = path.split('/').collect();
    (1..=segs.len()).any(|n| match_segments(&pat, &segs[..n]))
}

fn match_segments(pat: &[&str], segs: &[&str]) -> bool {
    match pat.split_first() {
        None => segs.is_empty(),
        Some((&"**", rest)) => (0..=segs.len()).any(|skip| match_segments(rest, &segs[skip..])),
        Some((first, rest)) => {
            !segs.is_empty()
                && match_segment(first.as_bytes(), segs[0].as_bytes())
                && match_segments(rest, &segs[1..])
        }
    }
}

fn match_segment(pat: &[u8], name: &[u8]) -> bool {
    match pat.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| match_segment(rest, &name[skip..])),
        Some((b'?', rest)) => !name.is_empty() && match_segment(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && match_segment(rest, &name[1..]),
    }
}

/// The hash cache file for the project at `root`, under the user cache directory.
pub fn hash_cache_path(cache_dir: &Path, root: &Path) -> PathBuf {
    let key = DigestFunction::Blake3.digest_of(root.as_os_str().as_encoded_bytes());
    cache_dir
        .join("snapshots")
        .join(format!("{}.bin", &key.hash_hex()[..24]))
}

/// Snapshots `root` (blocking; run it off the async threads).
pub fn take_snapshot(
    root: &Path,
    include: &[String],
    exclude: &[String],
    cache_file: &Path,
) -> Result<(MerkleTree, usize, SnapshotNotes), CliError> {
    let (files, left_out) = select_files(root, include, exclude)?;
    let mut cache = HashCache::load(cache_file);
    let tree = snapshot(root, &files, DIGEST_FUNCTION, &mut cache)
        .map_err(|e| CliError::usage(format!("cannot snapshot {}: {e}", root.display())))?;
    if let Err(error) = cache.save(cache_file) {
        tracing::warn!(%error, path = %cache_file.display(), "failed to save the hash cache");
    }
    let bytes = tree.files.iter().map(|(d, _)| d.size_bytes).sum();
    let notes = SnapshotNotes {
        left_out,
        large: large_snapshot_note(root, &files, bytes),
    };
    Ok((tree, files.len(), notes))
}

/// A failed CAS call, `context` saying what was being done: what the coordinator answered
/// (a refused token, a role that may not upload) as [`CliError::from_status`] words it, anything
/// else as infrastructure.
pub fn cas_failed(context: &str, error: tessera_cas::client::ClientError) -> CliError {
    match error {
        tessera_cas::client::ClientError::Rpc { call, status } => {
            CliError::from_status(call, &status)
        }
        other => CliError::infra(format!("{context}: {other}")),
    }
}

/// Uploads whatever of `tree` the CAS lacks.
pub async fn upload_tree(cas: &CasClient, tree: &MerkleTree) -> Result<(usize, u64), CliError> {
    let mut all: Vec<Digest> = tree.directories.iter().map(|(d, _)| *d).collect();
    all.extend(tree.files.iter().map(|(d, _)| *d));
    let missing: std::collections::HashSet<Digest> = cas
        .find_missing(&all)
        .await
        .map_err(|e| cas_failed("cannot reach the CAS", e))?
        .into_iter()
        .collect();
    if missing.is_empty() {
        return Ok((0, 0));
    }
    let upload_error =
        |e: tessera_cas::client::ClientError| cas_failed("failed to upload the snapshot", e);
    let mut batch: Vec<(Digest, Bytes)> = Vec::new();
    let mut batch_bytes = 0;
    let (mut count, mut bytes) = (0, 0);
    let mut sources: Vec<(Digest, Source<'_>)> = tree
        .directories
        .iter()
        .filter(|(d, _)| missing.contains(d))
        .map(|(d, data)| (*d, Source::Memory(data)))
        .collect();
    sources.extend(
        tree.files
            .iter()
            .filter(|(d, _)| missing.contains(d))
            .map(|(d, path)| (*d, Source::File(path))),
    );
    for (digest, source) in sources {
        let data = match source {
            Source::Memory(data) => data.clone(),
            Source::File(path) => {
                let path = path.clone();
                let read = tokio::task::spawn_blocking(move || std::fs::read(&path))
                    .await
                    .map_err(|e| CliError::infra(format!("file reader failed: {e}")))?;
                Bytes::from(read.map_err(|e| {
                    CliError::usage(format!("cannot read a file of the snapshot: {e}"))
                })?)
            }
        };
        if data.len() as u64 != digest.size_bytes {
            return Err(CliError::usage(
                "a file changed while it was being uploaded; run again".to_owned(),
            ));
        }
        count += 1;
        bytes += digest.size_bytes;
        if digest.size_bytes > BATCH_BLOB_LIMIT {
            cas.write(&digest, data, true).await.map_err(upload_error)?;
            continue;
        }
        if batch_bytes + digest.size_bytes > BATCH_BYTES {
            cas.batch_update(std::mem::take(&mut batch), false)
                .await
                .map_err(upload_error)?;
            batch_bytes = 0;
        }
        batch_bytes += digest.size_bytes;
        batch.push((digest, data));
    }
    if !batch.is_empty() {
        cas.batch_update(batch, false).await.map_err(upload_error)?;
    }
    Ok((count, bytes))
}

enum Source<'a> {
    Memory(&'a Bytes),
    File(&'a PathBuf),
}

/// Snapshots `root` and uploads it: the input root's digest and what it took.
pub async fn snapshot_and_upload(
    cas: &CasClient,
    root: &Path,
    include: &[String],
    exclude: &[String],
    cache_dir: &Path,
) -> Result<(Digest, UploadStats, SnapshotNotes), CliError> {
    let started = Instant::now();
    let cache_file = hash_cache_path(cache_dir, root);
    let (root_owned, include, exclude) = (root.to_owned(), include.to_vec(), exclude.to_vec());
    let (tree, files, notes) = tokio::task::spawn_blocking(move || {
        take_snapshot(&root_owned, &include, &exclude, &cache_file)
    })
    .await
    .map_err(|e| CliError::infra(format!("snapshot task failed: {e}")))??;
    let snapshot_time = started.elapsed();
    let started = Instant::now();
    let (uploaded_blobs, uploaded_bytes) = upload_tree(cas, &tree).await?;
    Ok((
        tree.root,
        UploadStats {
            files,
            uploaded_blobs,
            uploaded_bytes,
            snapshot_time,
            upload_time: started.elapsed(),
        },
        notes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_files_and_whole_directories() {
        assert!(glob_matches("src", "src/a/b.rs"));
        assert!(glob_matches("src/", "src/a.rs"));
        assert!(!glob_matches("src", "srcx/a.rs"));
        assert!(glob_matches("*.md", "README.md"));
        assert!(!glob_matches("*.md", "docs/x.md"));
        assert!(glob_matches("**/*.md", "docs/deep/x.md"));
        assert!(glob_matches("**/*.md", "x.md"));
        assert!(glob_matches("tests/test_?.py", "tests/test_a.py"));
        assert!(glob_matches("target", "target/debug/x"));
        assert!(glob_matches("./docs", "docs/a"));
    }

    #[test]
    fn select_files_applies_include_then_exclude() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["src/a.rs", "src/gen/b.rs", "docs/x.md", "README.md"] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
        let (files, _) = select_files(
            dir.path(),
            &["src".into(), "*.md".into()],
            &["src/gen".into()],
        )
        .unwrap();
        assert_eq!(files, vec!["README.md", "src/a.rs"]);
    }

    /// Regression: an untracked, unignored cargo `target/` (132 MB) travelled with every run.
    #[test]
    fn tool_outputs_stay_home_unless_included() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "src/lib.rs",
            "target/CACHEDIR.TAG",
            "target/debug/big",
            "pkg/__pycache__/m.cpython-311.pyc",
            "pkg/m.py",
            "venv/pyvenv.cfg",
            "venv/lib/site.py",
            "build/target.rs",
        ] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
        let (files, left_out) = select_files(dir.path(), &[], &[]).unwrap();
        assert_eq!(files, vec!["build/target.rs", "pkg/m.py", "src/lib.rs"]);
        assert_eq!(left_out, vec!["pkg/__pycache__", "target", "venv"]);
        // Naming the directory brings it back; naming an ancestor does not.
        let (files, left_out) =
            select_files(dir.path(), &["target".into(), "src".into()], &[]).unwrap();
        assert_eq!(
            files,
            vec!["src/lib.rs", "target/CACHEDIR.TAG", "target/debug/big"]
        );
        assert!(left_out.is_empty());
    }

    #[test]
    fn a_large_snapshot_names_its_biggest_directories() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<String> = ["out/gen/a.bin", "src/a.rs"]
            .iter()
            .map(|f| {
                let p = dir.path().join(f);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, vec![0u8; if f.starts_with("out") { 4096 } else { 10 }])
                    .unwrap();
                f.to_string()
            })
            .collect();
        assert!(large_snapshot_note(dir.path(), &files, LARGE_SNAPSHOT_BYTES).is_none());
        let note = large_snapshot_note(dir.path(), &files, LARGE_SNAPSHOT_BYTES + 1).unwrap();
        assert!(
            note.starts_with("the snapshot is large: 100 MiB in 2 files"),
            "{note}"
        );
        assert!(
            note.contains("biggest: out/gen/ (0 MiB), src/ (0 MiB)"),
            "{note}"
        );
        assert!(note.contains("--exclude"), "{note}");
    }
}

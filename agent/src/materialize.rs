//! Input roots: fetching an action's tree of `Directory` messages, and laying it out on disk
//! from the local blob cache.
//!
//! Fetching reads the root and every distinct descendant level by level (cached locally like
//! any blob, fetched in batches otherwise), checks each message as it arrives and then the
//! whole tree against its limits (names, order, digests, symlinks that escape, depth, size)
//! with `tessera_cas::validate`.
//!
//! Laying out: directories are created (0755); symlinks are created with their target as
//! given; a non-executable file is a hard link to the cached blob, which is made read-only
//! (0444) first, since every link shares the blob's inode and mode; an executable file is a
//! hard link to the blob's executable twin (a copy with mode 0555 the cache makes once per
//! agent run, or, for an executable output the agent kept from an earlier action, the 0555
//! blob itself: `cache.rs`), because giving the blob itself the exec bit would change it for
//! every other user, and copying large test binaries for every action costs seconds. Where a hard link is not possible (another
//! filesystem, the link-count limit), files are copied. Empty files are created, not linked.
//! Inputs are therefore read-only to the action: an action running as root could still write
//! through a link and corrupt the cached blob, which the cache does not re-verify on link.
//!
//! A large root is laid out this way once per agent, as a shared layer that leases see through
//! an overlay (see `layer`); [`InputTree::entry_count`] is what decides.
//!
//! Also owns the rules for relative paths inside the exec root (working directory, outputs)
//! and the creation of output parent directories, which never follows a symlink.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;
use tessera_cas::client::CasClient;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::validate::{TreeError, TreeLimits, validate_directory, validate_tree};
use tessera_proto::reapi::Directory;
use thiserror::Error;

use crate::cache::{FetchError, LocalCache};

/// Mode of a materialized non-executable file (and of its cached blob).
const READ_ONLY: u32 = 0o444;
/// Mode of a materialized executable file.
const EXECUTABLE: u32 = 0o555;

/// Why an input root could not be fetched or laid out.
#[derive(Debug, Error)]
pub enum MaterializeError {
    /// Blobs could not be brought into the local cache.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The tree breaks the rules every tree must meet.
    #[error("invalid input tree: {0}")]
    InvalidTree(#[from] TreeError),
    /// A `Directory` message does not decode.
    #[error("invalid input tree: directory {digest} does not decode: {reason}")]
    Decode {
        /// The message's digest.
        digest: Digest,
        /// The decoder's complaint.
        reason: String,
    },
    /// A blob that was just fetched is no longer in the cache.
    #[error("blob {0} vanished from the local cache")]
    NotCached(Digest),
    /// A filesystem operation failed.
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// What was being done ("create directory", ...).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_error<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> MaterializeError + 'a {
    move |source| MaterializeError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// An input root whose `Directory` messages have all been fetched and validated.
#[derive(Debug, Clone)]
pub struct InputTree {
    /// The digest function of the tree.
    pub function: DigestFunction,
    /// The root directory's digest.
    pub root: Digest,
    /// Every distinct directory of the tree, the root included.
    pub directories: HashMap<Digest, Directory>,
}

impl InputTree {
    /// Distinct digests of the non-empty files in the tree.
    pub fn file_digests(&self) -> Vec<Digest> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for dir in self.directories.values() {
            for file in &dir.files {
                // Validated when fetched, so every file digest parses.
                let Some(digest) = file
                    .digest
                    .as_ref()
                    .and_then(|d| Digest::from_proto(self.function, d).ok())
                else {
                    continue;
                };
                if digest.size_bytes > 0 && seen.insert(digest) {
                    out.push(digest);
                }
            }
        }
        out
    }

    /// Entries (files, directories and symlinks) that laying the tree out creates, the root
    /// itself not counted: a directory that appears at several paths counts at each.
    pub fn entry_count(&self) -> u64 {
        let mut memo: HashMap<Digest, u64> = HashMap::new();
        // Children before parents: a directory is counted once its children are.
        let mut stack = vec![(self.root, false)];
        while let Some((digest, children_done)) = stack.pop() {
            if memo.contains_key(&digest) {
                continue;
            }
            let Some(dir) = self.directories.get(&digest) else {
                memo.insert(digest, 0);
                continue;
            };
            let children = dir.directories.iter().filter_map(|node| {
                Digest::from_proto_opt(self.function, node.digest.as_ref()).ok()
            });
            if children_done {
                let below: u64 = children.map(|c| memo.get(&c).copied().unwrap_or(0)).sum();
                let here = dir.files.len() + dir.directories.len() + dir.symlinks.len();
                memo.insert(digest, below + here as u64);
            } else {
                stack.push((digest, true));
                stack.extend(children.map(|c| (c, false)));
            }
        }
        memo.get(&self.root).copied().unwrap_or(0)
    }
}

/// Most directories of an input tree taken in its one GetTree call.
const TREE_PREFETCH: usize = 64;

/// Fetches the tree under `root` (through the local cache) and validates it.
pub async fn fetch_input_tree(
    cache: &LocalCache,
    cas: &CasClient,
    root: Digest,
) -> Result<InputTree, MaterializeError> {
    let function = root.function;
    let limits = TreeLimits::default();
    let mut directories: HashMap<Digest, Directory> = HashMap::new();
    // A root this agent has not seen (every new action's): the top of its tree (all of a
    // small one) in one GetTree call instead of a round trip per level, kept in the cache like
    // any download; any the tree names that GetTree did not give (past [`TREE_PREFETCH`], or
    // by the digest of its encoding) are fetched by digest below, from the cache if it has
    // them, as without it.
    let mut prefetched: HashMap<Digest, Bytes> = HashMap::new();
    if !cache.contains(&root) {
        match cache.fetch_tree_top(cas, &root, TREE_PREFETCH).await {
            Ok(tree) => prefetched = tree,
            Err(error) => {
                tracing::debug!(%root, %error, "GetTree failed; fetching the input tree level by level")
            }
        }
    }
    let mut level: Vec<(Digest, String)> = vec![(root, String::new())];
    while !level.is_empty() {
        let wanted: Vec<Digest> = level
            .iter()
            .map(|(d, _)| *d)
            .filter(|d| !prefetched.contains_key(d))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut blobs = if wanted.is_empty() {
            HashMap::new()
        } else {
            cache.get_many(cas, &wanted).await?
        };
        for (digest, _) in &level {
            if let Some(bytes) = prefetched.get(digest) {
                blobs.insert(*digest, bytes.clone());
            }
        }
        let mut next = Vec::new();
        let mut queued = HashSet::new();
        for (digest, path) in level {
            if directories.contains_key(&digest) {
                continue;
            }
            let data = blobs
                .get(&digest)
                .ok_or(FetchError::Missing(vec![digest]))?;
            let dir = Directory::decode(data.as_ref()).map_err(|e| MaterializeError::Decode {
                digest,
                reason: e.to_string(),
            })?;
            // Checks the child digests parse before they are followed; `validate_tree` below
            // then checks every directory at every path it appears at.
            validate_directory(&dir, function, &path)?;
            for node in &dir.directories {
                let child =
                    Digest::from_proto_opt(function, node.digest.as_ref()).map_err(|source| {
                        TreeError::InvalidDigest {
                            path: join(&path, &node.name),
                            source,
                        }
                    })?;
                if !directories.contains_key(&child) && queued.insert(child) {
                    next.push((child, join(&path, &node.name)));
                }
            }
            directories.insert(digest, dir);
            if directories.len() > limits.max_entries {
                return Err(TreeError::TooManyEntries {
                    max: limits.max_entries,
                }
                .into());
            }
        }
        level = next;
    }
    let root_dir = directories
        .get(&root)
        .cloned()
        .ok_or(FetchError::Missing(vec![root]))?;
    validate_tree(&root_dir, &directories, function, &limits)?;
    Ok(InputTree {
        function,
        root,
        directories,
    })
}

/// What a materialization did, for logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MaterializeStats {
    /// Files hard-linked from the cache.
    pub linked: u64,
    /// Files copied (executables, and where linking failed).
    pub copied: u64,
    /// Directories created.
    pub directories: u64,
    /// Symlinks created.
    pub symlinks: u64,
}

/// Lays `tree` out under `dest` (an existing empty directory) from `cache`, which must hold
/// every file blob of the tree (see [`LocalCache::ensure`]). Blocking.
pub fn materialize(
    tree: &InputTree,
    cache: &LocalCache,
    dest: &Path,
) -> Result<MaterializeStats, MaterializeError> {
    let mut stats = MaterializeStats::default();
    let mut read_only_blobs: HashSet<Digest> = HashSet::new();
    let mut stack: Vec<(Digest, PathBuf)> = vec![(tree.root, dest.to_owned())];
    while let Some((digest, dir_path)) = stack.pop() {
        let dir = tree
            .directories
            .get(&digest)
            .ok_or(TreeError::MissingDirectory(
                dir_path.display().to_string(),
                digest,
            ))?;
        for file in &dir.files {
            let path = dir_path.join(&file.name);
            let digest =
                Digest::from_proto_opt(tree.function, file.digest.as_ref()).map_err(|source| {
                    TreeError::InvalidDigest {
                        path: path.display().to_string(),
                        source,
                    }
                })?;
            let mode = if file.is_executable {
                EXECUTABLE
            } else {
                READ_ONLY
            };
            if digest.size_bytes == 0 {
                fs::File::create(&path).map_err(io_error("create file", &path))?;
                set_mode(&path, mode)?;
                continue;
            }
            if file.is_executable {
                let twin = cache
                    .executable_path_of(&digest)
                    .map_err(io_error("make an executable copy of", &path))?
                    .ok_or(MaterializeError::NotCached(digest))?;
                match fs::hard_link(&twin, &path) {
                    Ok(()) => stats.linked += 1,
                    Err(error) if link_unsupported(&error) => {
                        copy(&twin, &path, mode)?;
                        stats.copied += 1;
                    }
                    Err(source) => {
                        return Err(MaterializeError::Io {
                            op: "hard-link executable input",
                            path,
                            source,
                        });
                    }
                }
                continue;
            }
            let blob = cache
                .path_of(&digest)
                .ok_or(MaterializeError::NotCached(digest))?;
            if read_only_blobs.insert(digest) {
                make_read_only(&blob)?;
            }
            match fs::hard_link(&blob, &path) {
                Ok(()) => stats.linked += 1,
                Err(error) if link_unsupported(&error) => {
                    copy(&blob, &path, mode)?;
                    stats.copied += 1;
                }
                Err(source) => {
                    return Err(MaterializeError::Io {
                        op: "hard-link input",
                        path,
                        source,
                    });
                }
            }
        }
        for node in &dir.directories {
            let path = dir_path.join(&node.name);
            fs::create_dir(&path).map_err(io_error("create directory", &path))?;
            stats.directories += 1;
            let child =
                Digest::from_proto_opt(tree.function, node.digest.as_ref()).map_err(|source| {
                    TreeError::InvalidDigest {
                        path: path.display().to_string(),
                        source,
                    }
                })?;
            stack.push((child, path));
        }
        for link in &dir.symlinks {
            let path = dir_path.join(&link.name);
            std::os::unix::fs::symlink(&link.target, &path)
                .map_err(io_error("create symlink", &path))?;
            stats.symlinks += 1;
        }
    }
    Ok(stats)
}

/// Errors after which a copy can stand in for a hard link.
fn link_unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EXDEV | libc::EMLINK | libc::EPERM | libc::EOPNOTSUPP)
    )
}

fn set_mode(path: &Path, mode: u32) -> Result<(), MaterializeError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_error("chmod", path))
}

fn make_read_only(blob: &Path) -> Result<(), MaterializeError> {
    let meta = fs::metadata(blob).map_err(io_error("stat cached blob", blob))?;
    if meta.permissions().mode() & 0o7777 != READ_ONLY {
        set_mode(blob, READ_ONLY)?;
    }
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<(), MaterializeError> {
    fs::copy(from, to).map_err(io_error("copy input to", to))?;
    set_mode(to, mode)
}

/// `parent/name`, or `name` at the root.
fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

/// The components of a path that must stay inside the exec root: relative, no empty, `.` or
/// `..` components (so no leading, trailing or doubled `/`). `""` is the root itself.
pub fn relative_components(path: &str) -> Result<Vec<&str>, &'static str> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    if path.starts_with('/') {
        return Err("is absolute");
    }
    if path.contains('\0') {
        return Err("contains NUL");
    }
    let components: Vec<&str> = path.split('/').collect();
    if components.iter().any(|c| c.is_empty()) {
        return Err("has an empty component (doubled or trailing '/')");
    }
    if components.iter().any(|c| *c == "." || *c == "..") {
        return Err("has a '.' or '..' component");
    }
    Ok(components)
}

/// Creates the directories `components` under `root` (like `mkdir -p`), never following a
/// symlink: if a component exists as anything but a directory, stops and returns `false`.
pub fn create_dirs_within(root: &Path, components: &[&str]) -> Result<bool, MaterializeError> {
    let mut path = root.to_owned();
    for component in components {
        path.push(component);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Ok(false),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&path).map_err(io_error("create directory", &path))?;
            }
            Err(source) => {
                return Err(MaterializeError::Io {
                    op: "stat",
                    path,
                    source,
                });
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::reapi::{DirectoryNode, FileNode, SymlinkNode};

    #[test]
    fn entries_count_every_path_a_directory_appears_at() {
        let function = DigestFunction::Sha256;
        let file = |name: &str| FileNode {
            name: name.into(),
            digest: Some(function.digest_of(b"x").to_proto()),
            ..FileNode::default()
        };
        let leaf = Directory {
            files: vec![file("a"), file("b")],
            symlinks: vec![SymlinkNode {
                name: "l".into(),
                target: "a".into(),
                ..SymlinkNode::default()
            }],
            ..Directory::default()
        };
        let (leaf_digest, _) = tessera_cas::digest::digest_message(function, &leaf);
        let node = |name: &str| DirectoryNode {
            name: name.into(),
            digest: Some(leaf_digest.to_proto()),
        };
        let root = Directory {
            files: vec![file("top")],
            directories: vec![node("one"), node("two")],
            ..Directory::default()
        };
        let (root_digest, _) = tessera_cas::digest::digest_message(function, &root);
        let tree = InputTree {
            function,
            root: root_digest,
            directories: HashMap::from([(root_digest, root), (leaf_digest, leaf)]),
        };
        // top, one, two, and three entries in each of one and two.
        assert_eq!(tree.entry_count(), 9);
    }

    #[test]
    fn relative_paths() {
        assert_eq!(relative_components("").unwrap(), Vec::<&str>::new());
        assert_eq!(relative_components("a/b").unwrap(), ["a", "b"]);
        for bad in ["/a", "a//b", "a/", "./a", "a/../b", "..", "a\0"] {
            assert!(relative_components(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn output_parents_never_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();

        assert!(create_dirs_within(&root, &["a", "b"]).unwrap());
        assert!(root.join("a/b").is_dir());
        assert!(
            create_dirs_within(&root, &["a", "b"]).unwrap(),
            "idempotent"
        );
        assert!(!create_dirs_within(&root, &["link", "x"]).unwrap());
        assert!(!outside.join("x").exists());
    }
}

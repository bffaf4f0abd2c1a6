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
use std::os::unix::ffi::OsStrExt;
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
use crate::spare::Spares;

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

    /// Distinct digests of the non-empty files the tree holds as executables.
    pub fn executable_digests(&self) -> HashSet<Digest> {
        self.directories
            .values()
            .flat_map(|dir| &dir.files)
            .filter(|file| file.is_executable)
            .filter_map(|file| Digest::from_proto(self.function, file.digest.as_ref()?).ok())
            .filter(|digest| digest.size_bytes > 0)
            .collect()
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

/// Fetches the tree under `root` (through the local cache) and validates it. `carried` are
/// Directory messages the lease brought (`Lease.input_directories`): each is keyed by its
/// own hash, so one the tree does not name is never used, and the tree is then fetched only
/// for what they lack.
pub async fn fetch_input_tree(
    cache: &LocalCache,
    cas: &CasClient,
    root: Digest,
    carried: &[Bytes],
) -> Result<InputTree, MaterializeError> {
    let function = root.function;
    let limits = TreeLimits::default();
    let mut directories: HashMap<Digest, Directory> = HashMap::new();
    // A root this agent has not seen (every new action's): the top of its tree (all of a
    // small one) in one GetTree call instead of a round trip per level, kept in the cache like
    // any download; any the tree names that GetTree did not give (past [`TREE_PREFETCH`], or
    // by the digest of its encoding) are fetched by digest below, from the cache if it has
    // them, as without it.
    let mut prefetched: HashMap<Digest, Bytes> = carried
        .iter()
        .map(|data| (function.digest_of(data), data.clone()))
        .collect();
    if !prefetched.contains_key(&root) && !cache.contains(&root) {
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
    /// Entries an earlier lease left that were already what the tree wants (see
    /// [`materialize_over`]).
    pub kept: u64,
    /// Entries an earlier lease left that the tree does not want, removed.
    pub removed: u64,
}

/// Lays `tree` out under `dest` (an existing empty directory) from `cache`, which must hold
/// every file blob of the tree (see [`LocalCache::ensure`]); its directories are made of
/// `spares` where there are some. Blocking.
pub fn materialize(
    tree: &InputTree,
    cache: &LocalCache,
    spares: &Spares,
    dest: &Path,
) -> Result<MaterializeStats, MaterializeError> {
    let mut placer = Placer::new(tree, cache, spares);
    placer.fresh(tree.root, dest.to_owned())?;
    Ok(placer.stats)
}

/// Lays `tree` out under `dest`, a directory that holds what an earlier lease left there (its
/// inputs and whatever its command wrote; see `recycle`), so that afterwards it holds exactly
/// what [`materialize`] into an empty directory would. An entry that already is what the tree
/// wants stays: a file that is a hard link to the very cached blob (same inode), a symlink with
/// the same target, a directory (its mode reset); anything else is removed or replaced. It
/// never follows a symlink it finds, never descends into one, and reads entry types without
/// following them. The command that wrote there must be dead (every process of it), or it
/// could change the tree after it was checked. Directories it removes become `spares`, and
/// those it creates are made of them (see [`crate::spare`]). Blocking.
pub fn materialize_over(
    tree: &InputTree,
    cache: &LocalCache,
    spares: &Spares,
    dest: &Path,
) -> Result<MaterializeStats, MaterializeError> {
    let mut placer = Placer::new(tree, cache, spares);
    let owner = nix::unistd::geteuid().as_raw();
    let mut stack: Vec<(Digest, PathBuf)> = vec![(tree.root, dest.to_owned())];
    let mut fresh: Vec<(Digest, PathBuf)> = Vec::new();
    while let Some((digest, dir_path)) = stack.pop() {
        let dir = placer.directory(digest, &dir_path)?;
        reset_directory(&dir_path, owner)?;
        let wanted: HashSet<&str> = (dir.files.iter().map(|f| f.name.as_str()))
            .chain(dir.directories.iter().map(|d| d.name.as_str()))
            .chain(dir.symlinks.iter().map(|l| l.name.as_str()))
            .collect();
        let mut found: HashMap<std::ffi::OsString, fs::FileType> = HashMap::new();
        for entry in fs::read_dir(&dir_path).map_err(io_error("list directory", &dir_path))? {
            let entry = entry.map_err(io_error("list directory", &dir_path))?;
            let kind = entry.file_type().map_err(io_error("stat", &entry.path()))?;
            let name = entry.file_name();
            // What the tree does not want goes first, so that its directories are spares for
            // the directories this one is missing.
            if name.to_str().is_some_and(|name| wanted.contains(name)) {
                found.insert(name, kind);
            } else {
                placer.remove_entry(&entry.path(), kind)?;
                placer.stats.removed += 1;
            }
        }
        for file in &dir.files {
            let path = dir_path.join(&file.name);
            let source = placer.source_of(file, &path)?;
            let wanted = |kind: fs::FileType| Ok(kind.is_file() && source.is_at(&path, owner)?);
            if !placer.keep_or_remove(&mut found, &file.name, &path, wanted)? {
                placer.place_file(source, &path)?;
            }
        }
        for node in &dir.directories {
            let path = dir_path.join(&node.name);
            let child = placer.child(node, &path)?;
            let wanted = |kind: fs::FileType| Ok(kind.is_dir());
            if placer.keep_or_remove(&mut found, &node.name, &path, wanted)? {
                stack.push((child, path));
            } else {
                placer.create_dir(&path)?;
                fresh.push((child, path));
            }
        }
        for link in &dir.symlinks {
            let path = dir_path.join(&link.name);
            // Byte for byte: as paths, "a/." and "a" would compare equal.
            let wanted = |kind: fs::FileType| {
                Ok(kind.is_symlink()
                    && fs::read_link(&path)
                        .map_err(io_error("read symlink", &path))?
                        .as_os_str()
                        .as_bytes()
                        == link.target.as_bytes())
            };
            if !placer.keep_or_remove(&mut found, &link.name, &path, wanted)? {
                placer.place_symlink(&link.target, &path)?;
            }
        }
        // Every name left was wanted and taken by `keep_or_remove` above.
        debug_assert!(found.is_empty(), "{found:?}");
    }
    // What had to be made anew is laid out as into an empty directory.
    for (digest, path) in fresh {
        placer.fresh(digest, path)?;
    }
    Ok(placer.stats)
}

/// Gives a directory an earlier command may have changed back the mode [`materialize`]
/// creates directories with, so it can be listed and what it holds removed. One not owned by
/// the agent (a command running as another user made it) is refused: its owner could still
/// change it.
fn reset_directory(path: &Path, owner: u32) -> Result<(), MaterializeError> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(path).map_err(io_error("stat", path))?;
    if !meta.is_dir() || meta.uid() != owner {
        return Err(MaterializeError::Io {
            op: "reuse directory",
            path: path.to_owned(),
            source: io::Error::other("not a directory the agent owns"),
        });
    }
    let mode = directory_mode();
    if meta.mode() & 0o7777 != mode {
        set_mode(path, mode)?;
    }
    Ok(())
}

/// The mode [`materialize`] creates directories with: 0777 less the process's umask (read
/// from `/proc/self/status`, since setting the umask to read it would race other threads;
/// 0755 if it cannot be read).
pub(crate) fn directory_mode() -> u32 {
    static MODE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| {
        let umask = fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("Umask:"))?;
                u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
            });
        umask.map_or(0o755, |umask| 0o777 & !umask)
    })
}

/// What a file of the tree is made from.
enum Source {
    /// An empty file, created with this mode.
    Empty(u32),
    /// A hard link to (or, where that fails, a copy of) this cached file, with this mode.
    Cached(PathBuf, u32),
}

impl Source {
    /// Whether `path` (a regular file an earlier lease left) already is this file: the cached
    /// file itself through another link, or an empty file of the agent's with nothing else
    /// linked to it (its mode is set right).
    fn is_at(&self, path: &Path, owner: u32) -> Result<bool, MaterializeError> {
        use std::os::unix::fs::MetadataExt;
        let here = fs::symlink_metadata(path).map_err(io_error("stat", path))?;
        match self {
            Source::Cached(blob, _) => {
                let blob = fs::metadata(blob).map_err(io_error("stat cached blob", blob))?;
                Ok(here.dev() == blob.dev() && here.ino() == blob.ino())
            }
            Source::Empty(mode) => {
                if here.len() != 0 || here.nlink() != 1 || here.uid() != owner {
                    return Ok(false);
                }
                if here.mode() & 0o7777 != *mode {
                    set_mode(path, *mode)?;
                }
                Ok(true)
            }
        }
    }
}

/// Lays out files, directories and symlinks of one tree, counting what it does.
struct Placer<'a> {
    tree: &'a InputTree,
    cache: &'a LocalCache,
    /// What directories are made of, and what removed ones become.
    spares: &'a Spares,
    stats: MaterializeStats,
    /// Cached blobs already made read-only during this layout.
    read_only_blobs: HashSet<Digest>,
}

impl<'a> Placer<'a> {
    fn new(tree: &'a InputTree, cache: &'a LocalCache, spares: &'a Spares) -> Self {
        Placer {
            tree,
            cache,
            spares,
            stats: MaterializeStats::default(),
            read_only_blobs: HashSet::new(),
        }
    }

    /// Lays the directory `digest` out under `dest`, which exists and is empty.
    fn fresh(&mut self, digest: Digest, dest: PathBuf) -> Result<(), MaterializeError> {
        let mut stack: Vec<(Digest, PathBuf)> = vec![(digest, dest)];
        while let Some((digest, dir_path)) = stack.pop() {
            let dir = self.directory(digest, &dir_path)?;
            for file in &dir.files {
                let path = dir_path.join(&file.name);
                let source = self.source_of(file, &path)?;
                self.place_file(source, &path)?;
            }
            for node in &dir.directories {
                let path = dir_path.join(&node.name);
                let child = self.child(node, &path)?;
                self.create_dir(&path)?;
                stack.push((child, path));
            }
            for link in &dir.symlinks {
                self.place_symlink(&link.target, &dir_path.join(&link.name))?;
            }
        }
        Ok(())
    }

    fn directory(&self, digest: Digest, path: &Path) -> Result<&'a Directory, MaterializeError> {
        let directories = &self.tree.directories;
        Ok(directories.get(&digest).ok_or(TreeError::MissingDirectory(
            path.display().to_string(),
            digest,
        ))?)
    }

    fn child(
        &self,
        node: &tessera_proto::reapi::DirectoryNode,
        path: &Path,
    ) -> Result<Digest, MaterializeError> {
        Ok(
            Digest::from_proto_opt(self.tree.function, node.digest.as_ref()).map_err(|source| {
                TreeError::InvalidDigest {
                    path: path.display().to_string(),
                    source,
                }
            })?,
        )
    }

    /// Where `file` comes from; a cached non-executable blob is made read-only (0444) first.
    fn source_of(
        &mut self,
        file: &tessera_proto::reapi::FileNode,
        path: &Path,
    ) -> Result<Source, MaterializeError> {
        let digest =
            Digest::from_proto_opt(self.tree.function, file.digest.as_ref()).map_err(|source| {
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
            return Ok(Source::Empty(mode));
        }
        if file.is_executable {
            let twin = self
                .cache
                .executable_path_of(&digest)
                .map_err(io_error("make an executable copy of", path))?
                .ok_or(MaterializeError::NotCached(digest))?;
            return Ok(Source::Cached(twin, mode));
        }
        let blob = self
            .cache
            .path_of(&digest)
            .ok_or(MaterializeError::NotCached(digest))?;
        if self.read_only_blobs.insert(digest) {
            make_read_only(&blob)?;
        }
        Ok(Source::Cached(blob, mode))
    }

    fn place_file(&mut self, source: Source, path: &Path) -> Result<(), MaterializeError> {
        match source {
            Source::Empty(mode) => {
                fs::File::create(path).map_err(io_error("create file", path))?;
                set_mode(path, mode)
            }
            Source::Cached(blob, mode) => match fs::hard_link(&blob, path) {
                Ok(()) => {
                    self.stats.linked += 1;
                    Ok(())
                }
                Err(error) if link_unsupported(&error) => {
                    copy(&blob, path, mode)?;
                    self.stats.copied += 1;
                    Ok(())
                }
                Err(source) => Err(MaterializeError::Io {
                    op: if mode == EXECUTABLE {
                        "hard-link executable input"
                    } else {
                        "hard-link input"
                    },
                    path: path.to_owned(),
                    source,
                }),
            },
        }
    }

    /// What an earlier lease left at `path` (named `name` in `found`, its listing): `true` if
    /// there is something and `wanted` says it already is what the tree wants (kept);
    /// otherwise whatever is there is removed, for the caller to lay the entry out.
    fn keep_or_remove(
        &mut self,
        found: &mut HashMap<std::ffi::OsString, fs::FileType>,
        name: &str,
        path: &Path,
        wanted: impl FnOnce(fs::FileType) -> Result<bool, MaterializeError>,
    ) -> Result<bool, MaterializeError> {
        let Some(kind) = found.remove(std::ffi::OsStr::new(name)) else {
            return Ok(false);
        };
        if wanted(kind)? {
            self.stats.kept += 1;
            return Ok(true);
        }
        self.remove_entry(path, kind)?;
        self.stats.removed += 1;
        Ok(false)
    }

    /// Removes what an earlier lease left at `path` (`kind` as listed, never followed); a
    /// directory's directories become spares.
    fn remove_entry(&self, path: &Path, kind: fs::FileType) -> Result<(), MaterializeError> {
        let removed = if kind.is_dir() {
            self.spares.remove_tree(path)
        } else {
            fs::remove_file(path)
        };
        removed.map_err(io_error("remove", path))
    }

    fn create_dir(&mut self, path: &Path) -> Result<(), MaterializeError> {
        self.spares
            .create_dir(path)
            .map_err(io_error("create directory", path))?;
        self.stats.directories += 1;
        Ok(())
    }

    fn place_symlink(&mut self, target: &str, path: &Path) -> Result<(), MaterializeError> {
        std::os::unix::fs::symlink(target, path).map_err(io_error("create symlink", path))?;
        self.stats.symlinks += 1;
        Ok(())
    }
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

/// Creates the directories `components` under `root` (like `mkdir -p`, of `spares` where
/// there are some), never following a symlink: if a component exists as anything but a
/// directory, stops and returns `false`.
pub fn create_dirs_within(
    spares: &Spares,
    root: &Path,
    components: &[&str],
) -> Result<bool, MaterializeError> {
    let mut path = root.to_owned();
    for component in components {
        path.push(component);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Ok(false),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                spares
                    .create_dir(&path)
                    .map_err(io_error("create directory", &path))?;
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

    /// What a tree of the tests holds at a path.
    enum Entry {
        File(&'static str, bool),
        Link(&'static str),
        Dir,
    }

    /// Builds the tree of `entries` (parents before children), its files put in `cache`.
    fn tree_of(cache: &LocalCache, scratch: &Path, entries: &[(&str, Entry)]) -> InputTree {
        use std::collections::BTreeMap;
        let function = DigestFunction::Sha256;
        let mut dirs: BTreeMap<String, Directory> =
            BTreeMap::from([(String::new(), Directory::default())]);
        for (path, entry) in entries {
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            let dir = dirs.get_mut(parent).expect("parents come first");
            match entry {
                Entry::File(data, executable) => {
                    let digest = function.digest_of(data.as_bytes());
                    if !data.is_empty() {
                        let staged = scratch.join(format!("staged-{digest}").replace('/', "-"));
                        fs::write(&staged, data).unwrap();
                        let mode = if *executable { 0o755 } else { 0o644 };
                        fs::set_permissions(&staged, fs::Permissions::from_mode(mode)).unwrap();
                        let meta = fs::metadata(&staged).unwrap();
                        cache.keep_output(&digest, &staged, &meta).unwrap();
                    }
                    dir.files.push(FileNode {
                        name: name.into(),
                        digest: Some(digest.to_proto()),
                        is_executable: *executable,
                        ..FileNode::default()
                    });
                }
                Entry::Link(target) => dir.symlinks.push(SymlinkNode {
                    name: name.into(),
                    target: (*target).into(),
                    ..SymlinkNode::default()
                }),
                Entry::Dir => {
                    dirs.insert((*path).to_owned(), Directory::default());
                }
            }
        }
        // Children before parents: the deepest paths first.
        let mut paths: Vec<String> = dirs.keys().cloned().collect();
        paths.sort_by_key(|p| {
            std::cmp::Reverse(p.matches('/').count() + usize::from(!p.is_empty()))
        });
        let mut directories = HashMap::new();
        let mut root = None;
        for path in paths {
            let mut dir = dirs.remove(&path).unwrap();
            dir.files.sort_by(|a, b| a.name.cmp(&b.name));
            dir.directories.sort_by(|a, b| a.name.cmp(&b.name));
            dir.symlinks.sort_by(|a, b| a.name.cmp(&b.name));
            let (digest, _) = tessera_cas::digest::digest_message(function, &dir);
            directories.insert(digest, dir);
            if path.is_empty() {
                root = Some(digest);
            } else {
                let (parent, name) = path.rsplit_once('/').unwrap_or(("", &path));
                dirs.get_mut(parent)
                    .unwrap()
                    .directories
                    .push(DirectoryNode {
                        name: name.into(),
                        digest: Some(digest.to_proto()),
                    });
            }
        }
        InputTree {
            function,
            root: root.unwrap(),
            directories,
        }
    }

    /// Every path under `dir` with what is there: type, mode, contents or target, inode.
    fn listing(dir: &Path) -> std::collections::BTreeMap<String, (String, u64)> {
        use std::os::unix::fs::MetadataExt;
        let mut out = std::collections::BTreeMap::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(at) = stack.pop() {
            for entry in fs::read_dir(&at).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                let mode = meta.mode() & 0o7777;
                let what = if meta.is_dir() {
                    stack.push(path.clone());
                    format!("dir {mode:o}")
                } else if meta.file_type().is_symlink() {
                    format!("link {}", fs::read_link(&path).unwrap().display())
                } else {
                    format!("file {mode:o} {}", fs::read_to_string(&path).unwrap())
                };
                let relative = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(relative, (what, meta.ino()));
            }
        }
        out
    }

    #[test]
    fn laying_out_over_an_earlier_root_leaves_what_a_fresh_layout_would() {
        let scratch = tempfile::tempdir().unwrap();
        let cache = LocalCache::open(&scratch.path().join("work"), u64::MAX).unwrap();
        let first = tree_of(
            &cache,
            scratch.path(),
            &[
                ("a", Entry::File("A", false)),
                ("x", Entry::File("X", true)),
                ("e", Entry::File("", false)),
                ("l", Entry::Link("a")),
                ("sub", Entry::Dir),
                ("sub/b", Entry::File("B", false)),
                ("keep", Entry::Dir),
                ("keep/c", Entry::File("C", false)),
                ("gone", Entry::Dir),
                ("gone/g", Entry::File("G", false)),
            ],
        );
        let trash = crate::workdir::Trash::open(scratch.path().join("trash")).unwrap();
        let spare_dirs =
            crate::spare::SpareDirs::open(scratch.path().join("spare"), &trash).unwrap();
        let spares = spare_dirs.of("instance-and-domain");
        let root = scratch.path().join("root");
        fs::create_dir(&root).unwrap();
        materialize(&first, &cache, &Spares::none(), &root).unwrap();
        let before = listing(&root);

        // What a command could leave: outputs, a changed input, a symlink where a directory
        // will be wanted, an unlistable directory, a changed mode.
        let outside = scratch.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::create_dir_all(root.join("sub/out/deep")).unwrap();
        fs::write(root.join("sub/out/deep/o"), "output").unwrap();
        fs::remove_file(root.join("keep/c")).unwrap();
        fs::write(root.join("keep/c"), "not C").unwrap();
        let tampered = {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(root.join("keep/c")).unwrap().ino()
        };
        std::os::unix::fs::symlink(&outside, root.join("new")).unwrap();
        fs::remove_file(root.join("l")).unwrap();
        // The same path to the eye of a path comparison, not to readlink.
        std::os::unix::fs::symlink("a/.", root.join("l")).unwrap();
        fs::set_permissions(root.join("e"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(root.join("gone"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(root.join("sub"), fs::Permissions::from_mode(0o500)).unwrap();

        let second = tree_of(
            &cache,
            scratch.path(),
            &[
                ("a", Entry::File("A", false)),
                ("e", Entry::File("", false)),
                ("l", Entry::Link("a")),
                ("sub", Entry::Dir),
                ("sub/b", Entry::File("B", false)),
                ("keep", Entry::Dir),
                ("keep/c", Entry::File("C", false)),
                ("new", Entry::Dir),
                ("new/n", Entry::File("N", true)),
            ],
        );
        let gone = {
            use std::os::unix::fs::MetadataExt;
            fs::symlink_metadata(root.join("gone")).unwrap().ino()
        };
        let stats = materialize_over(&second, &cache, &spares, &root).unwrap();
        // The removed directories became spares, emptied: gone, removed first, is now new;
        // sub/out and sub/out/deep wait...
        assert_eq!(listing(&root)["new"].1, gone);
        assert_eq!(spare_dirs.count(), 2);
        // ...and a fresh layout's directories (sub, keep, new) are made of them first.
        let fresh = scratch.path().join("fresh");
        fs::create_dir(&fresh).unwrap();
        materialize(&second, &cache, &spares, &fresh).unwrap();
        assert_eq!(spare_dirs.count(), 0);

        let over = listing(&root);
        let strip =
            |l: &std::collections::BTreeMap<String, (String, u64)>| -> Vec<(String, String)> {
                l.iter()
                    .map(|(p, (what, _))| (p.clone(), what.clone()))
                    .collect()
            };
        assert_eq!(strip(&over), strip(&listing(&fresh)));
        // What was right stayed (the same inodes); the rest went.
        for kept in ["a", "e", "sub", "sub/b", "keep"] {
            assert_eq!(over[kept].1, before[kept].1, "{kept} was replaced");
        }
        // The changed input is the cached blob's link again.
        assert_eq!(over["keep/c"].1, before["keep/c"].1);
        assert_ne!(over["keep/c"].1, tampered);
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "followed a symlink"
        );
        // a, e, sub, sub/b, keep kept; x, l, gone, sub/out, keep/c, new removed.
        assert_eq!((stats.kept, stats.removed), (5, 6), "{stats:?}");
    }

    #[test]
    fn a_directory_another_user_owns_is_not_reused() {
        let scratch = tempfile::tempdir().unwrap();
        let cache = LocalCache::open(&scratch.path().join("work"), u64::MAX).unwrap();
        let tree = tree_of(&cache, scratch.path(), &[("d", Entry::Dir)]);
        let root = scratch.path().join("root");
        fs::create_dir_all(root.join("d")).unwrap();
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        nix::unistd::chown(
            &root.join("d"),
            Some(nix::unistd::Uid::from_raw(65534)),
            None,
        )
        .unwrap();
        let error = materialize_over(&tree, &cache, &Spares::none(), &root).unwrap_err();
        assert!(
            error.to_string().contains("not a directory the agent owns"),
            "{error}"
        );
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

        let none = Spares::none();
        assert!(create_dirs_within(&none, &root, &["a", "b"]).unwrap());
        assert!(root.join("a/b").is_dir());
        assert!(
            create_dirs_within(&none, &root, &["a", "b"]).unwrap(),
            "idempotent"
        );
        assert!(!create_dirs_within(&none, &root, &["link", "x"]).unwrap());
        assert!(!outside.join("x").exists());
    }
}

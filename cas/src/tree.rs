//! Merkle trees of local directories, in REAPI `Directory` messages.
//!
//! Owns turning a directory on disk into its canonical tree: files (with the executable bit
//! taken from the mode), subdirectories and symlinks (kept as symlinks, target verbatim), each
//! list sorted by name in byte order and without node properties, so the same contents always
//! give the same root digest. Files are hashed streaming. Also assembles a REAPI `Tree` message
//! from a built tree, and owns [`TreeError`], shared with `validate`, which checks trees that
//! arrive from elsewhere. Does not upload anything: the caller sends `directories` and `files`.

use std::collections::HashSet;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;
use tessera_proto::reapi::{Directory, DirectoryNode, FileNode, SymlinkNode, Tree};
use thiserror::Error;

use crate::digest::{Digest, DigestError, DigestFunction};
use crate::validate::TreeLimits;

/// Why a tree could not be built, or was refused.
///
/// The variants from [`TreeError::InvalidName`] down to [`TreeError::MissingDirectory`] are
/// faults of the tree itself (see [`TreeError::is_invalid_tree`]); the others are about
/// reading the local file system.
#[derive(Debug, Error)]
pub enum TreeError {
    /// Reading the local directory tree failed.
    #[error("failed to read {path}")]
    Io {
        /// The path being read.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The root given to [`build_tree`] is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// A local entry is neither a regular file, a directory nor a symlink.
    #[error("{0}: unsupported file type (not a file, directory or symlink)")]
    UnsupportedFileType(PathBuf),
    /// A local name or symlink target is not UTF-8, which REAPI strings must be.
    #[error("{0}: name or symlink target is not valid utf-8")]
    NotUtf8(PathBuf),
    /// A local file changed while it was being hashed.
    #[error("{0}: file changed while it was being read")]
    Changed(PathBuf),
    /// A name is empty, `.`, `..`, too long, or contains `/` or NUL.
    #[error("{path}: invalid name: {reason}")]
    InvalidName {
        /// Path of the entry, cut if very long.
        path: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// An entry is out of order within its list (files, directories or symlinks).
    #[error("{path}: entries not sorted by name")]
    NotSorted {
        /// Path of the first entry out of order.
        path: String,
    },
    /// A name appears twice in one directory (in one list or across lists).
    #[error("{path}: duplicate name")]
    DuplicateName {
        /// Path of the duplicated entry.
        path: String,
    },
    /// A child's digest is missing or malformed.
    #[error("{path}: {source}")]
    InvalidDigest {
        /// Path of the entry.
        path: String,
        /// What is wrong with the digest.
        #[source]
        source: DigestError,
    },
    /// A symlink target is empty, absolute, too long, contains NUL, or escapes the root.
    #[error("{path}: symlink target \"{target}\" {reason}")]
    InvalidSymlink {
        /// Path of the symlink.
        path: String,
        /// Its target, cut if very long.
        target: String,
        /// Which rule it breaks, e.g. "escapes the input root".
        reason: &'static str,
    },
    /// Directories nest deeper than the limit.
    #[error("{path}: directory nested deeper than the limit of {max}")]
    TooDeep {
        /// Path of the first directory past the limit.
        path: String,
        /// The limit.
        max: usize,
    },
    /// The tree, expanded, has more entries than the limit.
    #[error("tree has more than {max} entries")]
    TooManyEntries {
        /// The limit.
        max: usize,
    },
    /// A directory referenced by the tree is not among the directories supplied.
    #[error("{0}: directory {1} is missing")]
    MissingDirectory(String, Digest),
    /// A stored `Directory` message does not decode.
    #[error("directory {digest} does not decode: {reason}")]
    Decode {
        /// The digest of the message.
        digest: Digest,
        /// The decoder's complaint.
        reason: String,
    },
}

impl TreeError {
    /// True for faults of the tree's content (to be answered with `INVALID_ARGUMENT`, or
    /// `FAILED_PRECONDITION` for [`TreeError::MissingDirectory`]), false for trouble reading
    /// local files.
    pub fn is_invalid_tree(&self) -> bool {
        matches!(
            self,
            TreeError::InvalidName { .. }
                | TreeError::NotSorted { .. }
                | TreeError::DuplicateName { .. }
                | TreeError::InvalidDigest { .. }
                | TreeError::InvalidSymlink { .. }
                | TreeError::TooDeep { .. }
                | TreeError::TooManyEntries { .. }
                | TreeError::MissingDirectory(..)
        )
    }
}

/// A directory tree in content-addressed form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleTree {
    /// Digest of the root `Directory` message.
    pub root: Digest,
    /// Every distinct encoded `Directory`, children before parents, so the root is last.
    pub directories: Vec<(Digest, Bytes)>,
    /// One local path per distinct file digest, in walk order.
    pub files: Vec<(Digest, PathBuf)>,
}

/// Builds the Merkle tree of the directory at `root`, with the default [`TreeLimits`].
pub fn build_tree(root: &Path, function: DigestFunction) -> Result<MerkleTree, TreeError> {
    build_tree_with_limits(root, function, &TreeLimits::default())
}

/// Builds the Merkle tree of the directory at `root`. `root` itself may be a symlink to a
/// directory; symlinks inside are kept as symlinks. Fails past `limits` rather than
/// exhausting memory on a runaway output.
pub fn build_tree_with_limits(
    root: &Path,
    function: DigestFunction,
    limits: &TreeLimits,
) -> Result<MerkleTree, TreeError> {
    let meta = fs::metadata(root).map_err(|e| io_error(root, e))?;
    if !meta.is_dir() {
        return Err(TreeError::NotADirectory(root.to_owned()));
    }
    let mut builder = Builder {
        function,
        limits,
        entries: 0,
        directories: Vec::new(),
        seen_directories: HashSet::new(),
        files: Vec::new(),
        seen_files: HashSet::new(),
    };
    // Explicit stack instead of recursion, so depth never costs native stack.
    let mut stack = vec![builder.open(root.to_owned(), String::new(), String::new(), 0)?];
    loop {
        let Some(frame) = stack.last_mut() else {
            // Unreachable: the root frame returns below before the stack empties.
            return Err(TreeError::NotADirectory(root.to_owned()));
        };
        if let Some(entry) = frame.entries.next() {
            let path = frame.path.join(&entry.name);
            let rel = join_rel(&frame.rel, &entry.name);
            let file_type = entry.meta.file_type();
            if file_type.is_symlink() {
                let target = fs::read_link(&path).map_err(|e| io_error(&path, e))?;
                let target = target
                    .into_os_string()
                    .into_string()
                    .map_err(|_| TreeError::NotUtf8(path.clone()))?;
                frame.dir.symlinks.push(SymlinkNode {
                    name: entry.name,
                    target,
                    node_properties: None,
                });
            } else if file_type.is_file() {
                let digest = builder.hash_file(&path, &entry.meta)?;
                frame.dir.files.push(FileNode {
                    name: entry.name,
                    digest: Some(digest.to_proto()),
                    is_executable: entry.meta.permissions().mode() & 0o111 != 0,
                    node_properties: None,
                });
            } else if file_type.is_dir() {
                let depth = frame.depth + 1;
                if depth > limits.max_depth {
                    return Err(TreeError::TooDeep {
                        path: crate::digest::shorten(&rel),
                        max: limits.max_depth,
                    });
                }
                let child = builder.open(path, rel, entry.name, depth)?;
                stack.push(child);
            } else {
                return Err(TreeError::UnsupportedFileType(path));
            }
        } else {
            let Some(done) = stack.pop() else { continue };
            let digest = builder.finish(done.dir);
            match stack.last_mut() {
                Some(parent) => parent.dir.directories.push(DirectoryNode {
                    name: done.name,
                    digest: Some(digest.to_proto()),
                }),
                None => {
                    return Ok(MerkleTree {
                        root: digest,
                        directories: builder.directories,
                        files: builder.files,
                    });
                }
            }
        }
    }
}

/// Assembles the REAPI `Tree` message (root plus every distinct descendant) of a built tree,
/// as an `OutputDirectory` refers to.
pub fn assemble_tree(tree: &MerkleTree) -> Result<Tree, TreeError> {
    let mut root = None;
    let mut children = Vec::with_capacity(tree.directories.len().saturating_sub(1));
    for (digest, bytes) in &tree.directories {
        let dir = Directory::decode(bytes.as_ref()).map_err(|e| TreeError::Decode {
            digest: *digest,
            reason: e.to_string(),
        })?;
        if *digest == tree.root {
            root = Some(dir);
        } else {
            children.push(dir);
        }
    }
    let Some(root) = root else {
        return Err(TreeError::MissingDirectory(String::new(), tree.root));
    };
    Ok(Tree {
        root: Some(root),
        children,
    })
}

struct Builder<'a> {
    function: DigestFunction,
    limits: &'a TreeLimits,
    entries: usize,
    directories: Vec<(Digest, Bytes)>,
    seen_directories: HashSet<Digest>,
    files: Vec<(Digest, PathBuf)>,
    seen_files: HashSet<Digest>,
}

/// One directory being built: its remaining entries, sorted, and the message so far.
struct Frame {
    path: PathBuf,
    rel: String,
    name: String,
    depth: usize,
    entries: std::vec::IntoIter<Entry>,
    dir: Directory,
}

struct Entry {
    name: String,
    meta: Metadata,
}

impl Builder<'_> {
    fn open(
        &mut self,
        path: PathBuf,
        rel: String,
        name: String,
        depth: usize,
    ) -> Result<Frame, TreeError> {
        let mut entries = Vec::new();
        for entry in fs::read_dir(&path).map_err(|e| io_error(&path, e))? {
            let entry = entry.map_err(|e| io_error(&path, e))?;
            let entry_path = entry.path();
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| TreeError::NotUtf8(entry_path.clone()))?;
            let meta = fs::symlink_metadata(&entry_path).map_err(|e| io_error(&entry_path, e))?;
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(TreeError::TooManyEntries {
                    max: self.limits.max_entries,
                });
            }
            entries.push(Entry { name, meta });
        }
        // Byte order of UTF-8 names, which is what `String`'s `Ord` is.
        entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(Frame {
            path,
            rel,
            name,
            depth,
            entries: entries.into_iter(),
            dir: Directory::default(),
        })
    }

    fn hash_file(&mut self, path: &Path, lstat: &Metadata) -> Result<Digest, TreeError> {
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        // The entry was a regular file when listed; make sure the open did not land on
        // something else swapped in since (a symlink, say).
        let fstat = file.metadata().map_err(|e| io_error(path, e))?;
        if !fstat.is_file() || fstat.dev() != lstat.dev() || fstat.ino() != lstat.ino() {
            return Err(TreeError::Changed(path.to_owned()));
        }
        let digest = self
            .function
            .digest_reader(file)
            .map_err(|e| io_error(path, e))?;
        if self.seen_files.insert(digest) {
            self.files.push((digest, path.to_owned()));
        }
        Ok(digest)
    }

    fn finish(&mut self, dir: Directory) -> Digest {
        let bytes = dir.encode_to_vec();
        let digest = self.function.digest_of(&bytes);
        if self.seen_directories.insert(digest) {
            self.directories.push((digest, Bytes::from(bytes)));
        }
        digest
    }
}

fn join_rel(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

fn io_error(path: &Path, source: io::Error) -> TreeError {
    TreeError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate_tree;
    use std::collections::HashMap;
    use std::os::unix::fs::symlink;

    fn write(path: &Path, data: &[u8], mode: u32) {
        fs::write(path, data).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// root/
    ///   a.txt        "hello"       0644
    ///   run.sh       "#!/bin/sh"   0755
    ///   link -> sub/b.txt
    ///   sub/
    ///     b.txt      "hello"       0644   (same content as a.txt)
    ///     deeper/
    ///       c        "c"
    ///   empty/
    fn sample(root: &Path) {
        write(&root.join("a.txt"), b"hello", 0o644);
        write(&root.join("run.sh"), b"#!/bin/sh", 0o755);
        symlink("sub/b.txt", root.join("link")).unwrap();
        fs::create_dir_all(root.join("sub/deeper")).unwrap();
        write(&root.join("sub/b.txt"), b"hello", 0o644);
        write(&root.join("sub/deeper/c"), b"c", 0o600);
        fs::create_dir(root.join("empty")).unwrap();
    }

    fn decode(tree: &MerkleTree, digest: Digest) -> Directory {
        let (_, bytes) = tree.directories.iter().find(|(d, _)| *d == digest).unwrap();
        Directory::decode(bytes.as_ref()).unwrap()
    }

    fn child(tree: &MerkleTree, dir: &Directory, name: &str) -> Directory {
        let node = dir.directories.iter().find(|n| n.name == name).unwrap();
        let digest = Digest::from_proto(tree.root.function, node.digest.as_ref().unwrap()).unwrap();
        decode(tree, digest)
    }

    #[test]
    fn builds_canonical_tree() {
        let tmp = tempfile::tempdir().unwrap();
        sample(tmp.path());
        let f = DigestFunction::Blake3;
        let tree = build_tree(tmp.path(), f).unwrap();

        let root = decode(&tree, tree.root);
        let names = |v: Vec<&str>| v.into_iter().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            root.files
                .iter()
                .map(|n| n.name.clone())
                .collect::<Vec<_>>(),
            names(vec!["a.txt", "run.sh"])
        );
        assert!(!root.files[0].is_executable);
        assert!(root.files[1].is_executable);
        assert_eq!(root.files[0].digest, Some(f.digest_of(b"hello").to_proto()));
        assert_eq!(
            root.directories
                .iter()
                .map(|n| n.name.clone())
                .collect::<Vec<_>>(),
            names(vec!["empty", "sub"])
        );
        assert_eq!(root.symlinks.len(), 1);
        assert_eq!(root.symlinks[0].name, "link");
        assert_eq!(root.symlinks[0].target, "sub/b.txt");
        assert!(root.node_properties.is_none());

        let empty = child(&tree, &root, "empty");
        assert_eq!(empty, Directory::default());
        // The empty directory encodes to the empty blob.
        let empty_digest =
            Digest::from_proto(f, root.directories[0].digest.as_ref().unwrap()).unwrap();
        assert!(empty_digest.is_empty_blob());

        let sub = child(&tree, &root, "sub");
        assert_eq!(sub.files.len(), 1);
        let deeper = child(&tree, &sub, "deeper");
        assert_eq!(deeper.files[0].name, "c");
        assert!(!deeper.files[0].is_executable);

        // Files deduplicated by digest: "hello" once, "#!/bin/sh", "c".
        assert_eq!(tree.files.len(), 3);
        let hello = tree
            .files
            .iter()
            .find(|(d, _)| *d == f.digest_of(b"hello"))
            .unwrap();
        assert_eq!(hello.1, tmp.path().join("a.txt"));
        for (digest, path) in &tree.files {
            assert_eq!(digest.verify(&fs::read(path).unwrap()), Ok(()));
        }

        // root, sub, deeper, empty; children before parents.
        assert_eq!(tree.directories.len(), 4);
        assert_eq!(tree.directories.last().unwrap().0, tree.root);
        for (digest, bytes) in &tree.directories {
            assert_eq!(digest.verify(bytes), Ok(()));
        }

        // What we build, we accept.
        let children: HashMap<Digest, Directory> = tree
            .directories
            .iter()
            .map(|(d, b)| (*d, Directory::decode(b.as_ref()).unwrap()))
            .collect();
        validate_tree(&root, &children, f, &TreeLimits::default()).unwrap();
    }

    #[test]
    fn deterministic_and_content_addressed() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        sample(one.path());
        sample(two.path());
        for f in DigestFunction::ALL {
            let a = build_tree(one.path(), f).unwrap();
            let b = build_tree(one.path(), f).unwrap();
            let c = build_tree(two.path(), f).unwrap();
            assert_eq!(a, b);
            assert_eq!(a.root, c.root);
            assert_eq!(a.directories, c.directories);
        }
        let sha = build_tree(one.path(), DigestFunction::Sha256).unwrap();
        let blake = build_tree(one.path(), DigestFunction::Blake3).unwrap();
        assert_ne!(sha.root.hash, blake.root.hash);

        // Any change shows in the root: content, mode, symlink target.
        let before = build_tree(one.path(), DigestFunction::Blake3).unwrap().root;
        write(&one.path().join("sub/deeper/c"), b"C", 0o600);
        let after_content = build_tree(one.path(), DigestFunction::Blake3).unwrap().root;
        assert_ne!(before, after_content);
        fs::set_permissions(one.path().join("a.txt"), fs::Permissions::from_mode(0o744)).unwrap();
        let after_mode = build_tree(one.path(), DigestFunction::Blake3).unwrap().root;
        assert_ne!(after_content, after_mode);
    }

    #[test]
    fn sorts_by_bytes_not_locale() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["b", "B", "a", "_", "é", "Z", "10", "9"] {
            write(&tmp.path().join(name), name.as_bytes(), 0o644);
        }
        let tree = build_tree(tmp.path(), DigestFunction::Sha256).unwrap();
        let root = decode(&tree, tree.root);
        let names: Vec<&str> = root.files.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["10", "9", "B", "Z", "_", "a", "b", "é"]);
    }

    #[test]
    fn symlinks_kept_verbatim() {
        let tmp = tempfile::tempdir().unwrap();
        symlink("/etc/passwd", tmp.path().join("abs")).unwrap();
        symlink("../../outside", tmp.path().join("up")).unwrap();
        symlink("missing", tmp.path().join("dangling")).unwrap();
        fs::create_dir(tmp.path().join("d")).unwrap();
        symlink("d", tmp.path().join("to_dir")).unwrap();
        let tree = build_tree(tmp.path(), DigestFunction::Sha256).unwrap();
        let root = decode(&tree, tree.root);
        let links: Vec<(&str, &str)> = root
            .symlinks
            .iter()
            .map(|s| (s.name.as_str(), s.target.as_str()))
            .collect();
        assert_eq!(
            links,
            [
                ("abs", "/etc/passwd"),
                ("dangling", "missing"),
                ("to_dir", "d"),
                ("up", "../../outside")
            ]
        );
        assert_eq!(root.directories.len(), 1);
        assert!(tree.files.is_empty());
    }

    #[test]
    fn root_may_be_a_symlink_but_must_be_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("real")).unwrap();
        write(&tmp.path().join("real/f"), b"x", 0o644);
        symlink("real", tmp.path().join("alias")).unwrap();
        let real = build_tree(&tmp.path().join("real"), DigestFunction::Sha256).unwrap();
        let alias = build_tree(&tmp.path().join("alias"), DigestFunction::Sha256).unwrap();
        assert_eq!(real.root, alias.root);

        let err = build_tree(&tmp.path().join("real/f"), DigestFunction::Sha256).unwrap_err();
        assert!(matches!(err, TreeError::NotADirectory(_)), "{err}");
        let err = build_tree(&tmp.path().join("nope"), DigestFunction::Sha256).unwrap_err();
        assert!(matches!(err, TreeError::Io { .. }), "{err}");
        assert!(!err.is_invalid_tree());
    }

    #[test]
    fn empty_root() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = build_tree(tmp.path(), DigestFunction::Sha256).unwrap();
        assert!(tree.root.is_empty_blob());
        assert_eq!(tree.directories.len(), 1);
        let t = assemble_tree(&tree).unwrap();
        assert_eq!(t.root, Some(Directory::default()));
        assert!(t.children.is_empty());
    }

    #[test]
    fn refuses_special_files() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = build_tree(tmp.path(), DigestFunction::Sha256).unwrap_err();
        assert!(
            matches!(err, TreeError::UnsupportedFileType(ref p) if *p == sock),
            "{err}"
        );
    }

    #[test]
    fn refuses_non_utf8_names() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let tmp = tempfile::tempdir().unwrap();
        let bad = tmp.path().join(OsStr::from_bytes(b"bad\xff"));
        if fs::write(&bad, b"x").is_err() {
            return; // file system refuses such names itself
        }
        let err = build_tree(tmp.path(), DigestFunction::Sha256).unwrap_err();
        assert!(matches!(err, TreeError::NotUtf8(_)), "{err}");
    }

    #[test]
    fn limits() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("1/2/3")).unwrap();
        let limits = TreeLimits {
            max_depth: 2,
            ..TreeLimits::default()
        };
        let err = build_tree_with_limits(tmp.path(), DigestFunction::Sha256, &limits).unwrap_err();
        assert!(
            matches!(err, TreeError::TooDeep { ref path, max: 2 } if path == "1/2/3"),
            "{err}"
        );
        let limits = TreeLimits {
            max_depth: 3,
            ..TreeLimits::default()
        };
        build_tree_with_limits(tmp.path(), DigestFunction::Sha256, &limits).unwrap();

        for i in 0..5 {
            write(&tmp.path().join(format!("f{i}")), b"", 0o644);
        }
        // 5 files + "1", "2", "3" = 8 entries.
        let limits = TreeLimits {
            max_entries: 7,
            ..TreeLimits::default()
        };
        let err = build_tree_with_limits(tmp.path(), DigestFunction::Sha256, &limits).unwrap_err();
        assert!(matches!(err, TreeError::TooManyEntries { max: 7 }), "{err}");
        let limits = TreeLimits {
            max_entries: 8,
            ..TreeLimits::default()
        };
        build_tree_with_limits(tmp.path(), DigestFunction::Sha256, &limits).unwrap();
    }

    #[test]
    fn deep_tree_needs_no_native_stack() {
        let tmp = tempfile::tempdir().unwrap();
        let mut path = tmp.path().to_owned();
        for _ in 0..300 {
            path.push("d");
        }
        fs::create_dir_all(&path).unwrap();
        let limits = TreeLimits {
            max_depth: 1000,
            ..TreeLimits::default()
        };
        let tree = build_tree_with_limits(tmp.path(), DigestFunction::Blake3, &limits).unwrap();
        assert_eq!(tree.directories.len(), 301);
    }

    #[test]
    fn assembles_tree_message() {
        let tmp = tempfile::tempdir().unwrap();
        sample(tmp.path());
        let tree = build_tree(tmp.path(), DigestFunction::Sha256).unwrap();
        let t = assemble_tree(&tree).unwrap();
        assert_eq!(t.root, Some(decode(&tree, tree.root)));
        assert_eq!(t.children.len(), 3);
        let mut want: Vec<Directory> = tree
            .directories
            .iter()
            .filter(|(d, _)| *d != tree.root)
            .map(|(_, b)| Directory::decode(b.as_ref()).unwrap())
            .collect();
        let mut got = t.children.clone();
        let key = |d: &Directory| d.encode_to_vec();
        want.sort_by_key(key);
        got.sort_by_key(key);
        assert_eq!(got, want);

        let mut broken = tree.clone();
        broken.directories.retain(|(d, _)| *d != tree.root);
        assert!(matches!(
            assemble_tree(&broken),
            Err(TreeError::MissingDirectory(..))
        ));
        let mut garbage = tree.clone();
        garbage
            .directories
            .push((tree.root, Bytes::from_static(b"\xff\xff\xff")));
        garbage
            .directories
            .retain(|(d, b)| *d != tree.root || b.as_ref() == b"\xff\xff\xff");
        assert!(matches!(
            assemble_tree(&garbage),
            Err(TreeError::Decode { .. })
        ));
    }
}

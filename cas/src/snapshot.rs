//! Snapshots of a working tree: which files belong to it, and its Merkle tree, fast.
//!
//! The file list comes from git (tracked files plus untracked files that are not ignored) when
//! the directory is a git checkout, else from a walk of the directory; `include`/`exclude`
//! prefixes narrow it. Hashing uses a persistent [`HashCache`] keyed by relative path and
//! checked against size, modification time and inode, so an unchanged tree costs one `lstat`
//! per file and no reads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use prost::Message;
use tessera_proto::reapi::{Directory, DirectoryNode, FileNode, SymlinkNode};

use crate::digest::{Digest, DigestFunction};
use crate::tree::{MerkleTree, TreeError};

const CACHE_MAGIC: &[u8; 8] = b"TSHASH01";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Stamp {
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            ino: meta.ino(),
        }
    }
}

/// Digests of files by relative path, valid while the file's size, times and inode are
/// unchanged. Stored in one file; a missing or damaged cache file is simply empty.
#[derive(Debug, Default)]
pub struct HashCache {
    entries: HashMap<String, (Stamp, Digest)>,
    used: HashSet<String>,
    dirty: bool,
}

impl HashCache {
    /// Loads the cache from `path` (empty if absent or unreadable).
    pub fn load(path: &Path) -> Self {
        let mut cache = HashCache::default();
        let Ok(mut file) = fs::File::open(path) else {
            return cache;
        };
        let mut data = Vec::new();
        if file.read_to_end(&mut data).is_err() || !data.starts_with(CACHE_MAGIC) {
            return cache;
        }
        let mut rest = &data[CACHE_MAGIC.len()..];
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, tail) = rest.split_at_checked(n)?;
            rest = tail;
            Some(head)
        };
        let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        while let Some(len) = take(4) {
            let len = u32::from_le_bytes(len.try_into().unwrap_or([0; 4])) as usize;
            let Some(name) = take(len).map(|b| String::from_utf8_lossy(b).into_owned()) else {
                break;
            };
            let Some(fields) = take(8 * 5 + 1 + 32) else {
                break;
            };
            let stamp = Stamp {
                size: u64_at(&fields[0..8]),
                mtime_ns: u64_at(&fields[8..16]) as i64,
                ctime_ns: u64_at(&fields[16..24]) as i64,
                ino: u64_at(&fields[24..32]),
            };
            let size_bytes = u64_at(&fields[32..40]);
            let function = match fields[40] {
                1 => DigestFunction::Sha256,
                _ => DigestFunction::Blake3,
            };
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&fields[41..73]);
            cache.entries.insert(
                name,
                (
                    stamp,
                    Digest {
                        function,
                        hash,
                        size_bytes,
                    },
                ),
            );
        }
        cache
    }

    /// Writes the entries used by the last snapshot to `path` (atomically, via a temporary
    /// file), if anything changed.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        if !self.dirty && self.used.len() == self.entries.len() {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut out = Vec::with_capacity(self.used.len() * 128);
        out.extend_from_slice(CACHE_MAGIC);
        for name in &self.used {
            let Some((stamp, digest)) = self.entries.get(name) else {
                continue;
            };
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            for v in [
                stamp.size,
                stamp.mtime_ns as u64,
                stamp.ctime_ns as u64,
                stamp.ino,
                digest.size_bytes,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.push(match digest.function {
                DigestFunction::Sha256 => 1,
                DigestFunction::Blake3 => 9,
            });
            out.extend_from_slice(&digest.hash);
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&out)?;
        drop(file);
        fs::rename(&tmp, path)
    }

    fn digest(
        &mut self,
        rel: &str,
        path: &Path,
        meta: &fs::Metadata,
        function: DigestFunction,
    ) -> Result<Digest, TreeError> {
        let stamp = Stamp::of(meta);
        self.used.insert(rel.to_owned());
        if let Some((cached, digest)) = self.entries.get(rel)
            && *cached == stamp
            && digest.function == function
        {
            return Ok(*digest);
        }
        let file = fs::File::open(path).map_err(|source| TreeError::Io {
            path: path.to_owned(),
            source,
        })?;
        let digest = function
            .digest_reader(file)
            .map_err(|source| TreeError::Io {
                path: path.to_owned(),
                source,
            })?;
        if digest.size_bytes != stamp.size {
            return Err(TreeError::Changed(path.to_owned()));
        }
        self.entries.insert(rel.to_owned(), (stamp, digest));
        self.dirty = true;
        Ok(digest)
    }
}

/// Which files make up the working tree at `root`: git's view (tracked, plus untracked and not
/// ignored) in a git checkout, else every file under `root`. Paths are relative, `/`-separated,
/// sorted. `include` keeps only paths under one of the given prefixes (all when empty);
/// `exclude` drops paths under any of its prefixes.
pub fn list_files(
    root: &Path,
    include: &[String],
    exclude: &[String],
) -> Result<Vec<String>, TreeError> {
    let git = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root)
        .output();
    let mut files: Vec<String> = match git {
        Ok(out) if out.status.success() => out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect(),
        _ => walk(root)?,
    };
    let under = |path: &str, prefix: &str| {
        let prefix = prefix.trim_end_matches('/');
        prefix.is_empty() || path == prefix || path.starts_with(&format!("{prefix}/"))
    };
    files.retain(|f| {
        (include.is_empty() || include.iter().any(|p| under(f, p)))
            && !exclude.iter().any(|p| under(f, p))
    });
    files.sort();
    files.dedup();
    Ok(files)
}

fn walk(root: &Path) -> Result<Vec<String>, TreeError> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_owned(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|source| TreeError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| TreeError::Io {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let file_type = entry.file_type().map_err(|source| TreeError::Io {
                path: entry.path(),
                source,
            })?;
            if file_type.is_dir() {
                stack.push((entry.path(), child_rel));
            } else {
                out.push(child_rel);
            }
        }
    }
    Ok(out)
}

#[derive(Default)]
struct DirBuild {
    files: Vec<FileNode>,
    symlinks: Vec<SymlinkNode>,
    dirs: BTreeMap<String, DirBuild>,
}

/// Builds the Merkle tree of `files` (relative paths under `root`, as from [`list_files`]),
/// hashing only files whose cache entry is stale. Files that vanished since listing are
/// skipped (a deleted tracked file); directories, sockets and the like are skipped too.
pub fn snapshot(
    root: &Path,
    files: &[String],
    function: DigestFunction,
    cache: &mut HashCache,
) -> Result<MerkleTree, TreeError> {
    let mut top = DirBuild::default();
    let mut blobs: Vec<(Digest, PathBuf)> = Vec::new();
    let mut seen = HashSet::new();
    for rel in files {
        let path = root.join(rel);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(TreeError::Io { path, source }),
        };
        let mut parts: Vec<&str> = rel.split('/').collect();
        let Some(name) = parts.pop() else { continue };
        let mut dir = &mut top;
        for part in parts {
            dir = dir.dirs.entry(part.to_owned()).or_default();
        }
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            let target = fs::read_link(&path)
                .map_err(|source| TreeError::Io {
                    path: path.clone(),
                    source,
                })?
                .into_os_string()
                .into_string()
                .map_err(|_| TreeError::NotUtf8(path.clone()))?;
            dir.symlinks.push(SymlinkNode {
                name: name.to_owned(),
                target,
                node_properties: None,
            });
        } else if file_type.is_file() {
            let digest = cache.digest(rel, &path, &meta, function)?;
            if seen.insert(digest) {
                blobs.push((digest, path.clone()));
            }
            dir.files.push(FileNode {
                name: name.to_owned(),
                digest: Some(digest.to_proto()),
                is_executable: meta.permissions().mode() & 0o111 != 0,
                node_properties: None,
            });
        }
    }
    let mut directories = Vec::new();
    let mut dir_seen = HashSet::new();
    let root_digest = finish(top, function, &mut directories, &mut dir_seen);
    Ok(MerkleTree {
        root: root_digest,
        directories,
        files: blobs,
    })
}

fn finish(
    build: DirBuild,
    function: DigestFunction,
    out: &mut Vec<(Digest, Bytes)>,
    seen: &mut HashSet<Digest>,
) -> Digest {
    let mut dir = Directory {
        files: build.files,
        symlinks: build.symlinks,
        ..Default::default()
    };
    dir.files.sort_by(|a, b| a.name.cmp(&b.name));
    dir.symlinks.sort_by(|a, b| a.name.cmp(&b.name));
    for (name, child) in build.dirs {
        let digest = finish(child, function, out, seen);
        dir.directories.push(DirectoryNode {
            name,
            digest: Some(digest.to_proto()),
        });
    }
    let bytes = dir.encode_to_vec();
    let digest = function.digest_of(&bytes);
    if seen.insert(digest) {
        out.push((digest, Bytes::from(bytes)));
    }
    digest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::build_tree;

    fn write(root: &Path, rel: &str, data: &[u8], exec: bool) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
        if exec {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn a_snapshot_matches_the_tree_of_the_same_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.txt", b"a", false);
        write(dir.path(), "bin/run", b"#!/bin/sh\n", true);
        write(dir.path(), "src/deep/x.rs", b"fn main() {}", false);
        std::os::unix::fs::symlink("a.txt", dir.path().join("link")).unwrap();
        let files = list_files(dir.path(), &[], &[]).unwrap();
        assert_eq!(files, vec!["a.txt", "bin/run", "link", "src/deep/x.rs"]);
        let mut cache = HashCache::default();
        let snap = snapshot(dir.path(), &files, DigestFunction::Blake3, &mut cache).unwrap();
        let walked = build_tree(dir.path(), DigestFunction::Blake3).unwrap();
        assert_eq!(snap.root, walked.root);
    }

    #[test]
    fn the_cache_survives_a_reload_and_notices_changes() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.txt", b"one", false);
        write(dir.path(), "b.txt", b"two", false);
        let files = list_files(dir.path(), &[], &[]).unwrap();
        let cache_file = dir.path().join("../cache-test.bin");
        let mut cache = HashCache::default();
        let first = snapshot(dir.path(), &files, DigestFunction::Sha256, &mut cache).unwrap();
        cache.save(&cache_file).unwrap();

        let mut reloaded = HashCache::load(&cache_file);
        assert_eq!(reloaded.entries.len(), 2);
        let again = snapshot(dir.path(), &files, DigestFunction::Sha256, &mut reloaded).unwrap();
        assert_eq!(again.root, first.root);
        assert!(!reloaded.dirty, "nothing was re-hashed");

        std::thread::sleep(std::time::Duration::from_millis(10));
        write(dir.path(), "a.txt", b"ONE", false);
        let changed = snapshot(dir.path(), &files, DigestFunction::Sha256, &mut reloaded).unwrap();
        assert_ne!(changed.root, first.root);
        let _ = fs::remove_file(cache_file);
    }

    #[test]
    fn include_and_exclude_filter_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["src/a.rs", "src/b.rs", "docs/x.md", "srcx/c.rs"] {
            write(dir.path(), f, b"x", false);
        }
        let only_src = list_files(dir.path(), &["src".into()], &[]).unwrap();
        assert_eq!(only_src, vec!["src/a.rs", "src/b.rs"]);
        let no_docs = list_files(dir.path(), &[], &["docs/".into()]).unwrap();
        assert_eq!(no_docs, vec!["src/a.rs", "src/b.rs", "srcx/c.rs"]);
    }

    #[test]
    fn a_damaged_cache_file_is_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.bin");
        fs::write(&path, b"TSHASH01\xff\xff\xff\xffgarbage").unwrap();
        assert!(HashCache::load(&path).entries.is_empty());
        fs::write(&path, b"not a cache").unwrap();
        assert!(HashCache::load(&path).entries.is_empty());
    }
}

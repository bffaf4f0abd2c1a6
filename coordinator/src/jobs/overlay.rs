//! Lays what a prepare step built over the job's input root: the prepared input root that the
//! list step and every batch run on.
//!
//! The prepare action returns its products as one output directory (a REAPI `Tree` whose root
//! mirrors the exec root: `target/debug/deps/x` for `<exec root>/target/debug/deps/x`). The
//! overlay merges that tree into the input root's `Directory` messages: a file from the tree
//! replaces an entry of the same name, directories present in both are merged, and every new
//! `Directory` is written to the CAS. The result is canonical (entries sorted by name), so the
//! same inputs always give the same digest and the steps after it hit the action cache.

use std::collections::HashMap;

use prost::Message;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::store::{BlobStore, StoreError};
use tessera_proto::reapi::{Directory, DirectoryNode, Tree};

/// Why an overlay failed.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// A directory of the input root or of the tree is not in the CAS.
    #[error("directory {0} is missing from the CAS")]
    Missing(Digest),
    /// A blob does not decode as a `Directory`, or a digest is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Merges `tree` over the directory `base` and returns the new root's digest. Every directory
/// message of the result is in `store` when this returns.
pub fn overlay(
    store: &dyn BlobStore,
    function: DigestFunction,
    base: &Digest,
    tree: &Tree,
) -> Result<Digest, OverlayError> {
    let mut children: HashMap<Digest, Directory> = HashMap::new();
    for child in &tree.children {
        children.insert(function.digest_of(&child.encode_to_vec()), child.clone());
    }
    let top = tree.root.clone().unwrap_or_default();
    let base_dir = load(store, base)?;
    let merged = merge(store, function, base_dir, &top, &children)?;
    write(store, function, &merged)
}

fn merge(
    store: &dyn BlobStore,
    function: DigestFunction,
    mut base: Directory,
    top: &Directory,
    children: &HashMap<Digest, Directory>,
) -> Result<Directory, OverlayError> {
    for file in &top.files {
        base.files.retain(|f| f.name != file.name);
        base.directories.retain(|d| d.name != file.name);
        base.symlinks.retain(|s| s.name != file.name);
        base.files.push(file.clone());
    }
    for link in &top.symlinks {
        base.files.retain(|f| f.name != link.name);
        base.directories.retain(|d| d.name != link.name);
        base.symlinks.retain(|s| s.name != link.name);
        base.symlinks.push(link.clone());
    }
    for dir in &top.directories {
        let digest = parse(function, dir.digest.as_ref(), &dir.name)?;
        let top_child = children
            .get(&digest)
            .cloned()
            .ok_or(OverlayError::Missing(digest))?;
        base.files.retain(|f| f.name != dir.name);
        base.symlinks.retain(|s| s.name != dir.name);
        let existing = base.directories.iter().position(|d| d.name == dir.name);
        let base_child = match existing {
            Some(i) => {
                let node = base.directories.remove(i);
                load(store, &parse(function, node.digest.as_ref(), &node.name)?)?
            }
            None => Directory::default(),
        };
        let merged = merge(store, function, base_child, &top_child, children)?;
        let digest = write(store, function, &merged)?;
        base.directories.push(DirectoryNode {
            name: dir.name.clone(),
            digest: Some(digest.to_proto()),
        });
    }
    base.files.sort_by(|a, b| a.name.cmp(&b.name));
    base.directories.sort_by(|a, b| a.name.cmp(&b.name));
    base.symlinks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(base)
}

fn parse(
    function: DigestFunction,
    digest: Option<&tessera_proto::reapi::Digest>,
    name: &str,
) -> Result<Digest, OverlayError> {
    Digest::from_proto_opt(function, digest)
        .map_err(|e| OverlayError::Invalid(format!("directory \"{name}\": {e}")))
}

fn load(store: &dyn BlobStore, digest: &Digest) -> Result<Directory, OverlayError> {
    let bytes = store.read(digest)?.ok_or(OverlayError::Missing(*digest))?;
    Directory::decode(bytes.as_ref())
        .map_err(|e| OverlayError::Invalid(format!("directory {digest} does not decode: {e}")))
}

fn write(
    store: &dyn BlobStore,
    function: DigestFunction,
    dir: &Directory,
) -> Result<Digest, OverlayError> {
    let bytes = dir.encode_to_vec();
    let digest = function.digest_of(&bytes);
    store.write(&digest, &bytes)?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_cas::store::MemoryStore;
    use tessera_proto::reapi::FileNode;

    fn file(store: &MemoryStore, name: &str, data: &[u8]) -> FileNode {
        let digest = DigestFunction::Blake3.digest_of(data);
        store.write(&digest, data).unwrap();
        FileNode {
            name: name.into(),
            digest: Some(digest.to_proto()),
            is_executable: true,
            ..Default::default()
        }
    }

    fn dir_node(store: &MemoryStore, name: &str, dir: &Directory) -> DirectoryNode {
        let digest = write(store, DigestFunction::Blake3, dir).unwrap();
        DirectoryNode {
            name: name.into(),
            digest: Some(digest.to_proto()),
        }
    }

    #[test]
    fn products_are_merged_into_the_input_root() {
        let store = MemoryStore::new();
        let f = DigestFunction::Blake3;
        // Input root: src/lib.rs, target/old.
        let src = Directory {
            files: vec![file(&store, "lib.rs", b"fn x() {}")],
            ..Default::default()
        };
        let target = Directory {
            files: vec![file(&store, "old", b"old")],
            ..Default::default()
        };
        let root = Directory {
            directories: vec![
                dir_node(&store, "src", &src),
                dir_node(&store, "target", &target),
            ],
            ..Default::default()
        };
        let base = write(&store, f, &root).unwrap();
        // Products: target/debug/t and target/old replaced.
        let debug = Directory {
            files: vec![file(&store, "t", b"binary")],
            ..Default::default()
        };
        let top_target = Directory {
            files: vec![file(&store, "old", b"new")],
            directories: vec![dir_node(&store, "debug", &debug)],
            ..Default::default()
        };
        let tree = Tree {
            root: Some(Directory {
                directories: vec![dir_node(&store, "target", &top_target)],
                ..Default::default()
            }),
            children: vec![top_target.clone(), debug.clone()],
        };
        let merged = overlay(&store, f, &base, &tree).unwrap();
        let again = overlay(&store, f, &base, &tree).unwrap();
        assert_eq!(merged, again, "the overlay is deterministic");
        let root = load(&store, &merged).unwrap();
        let names: Vec<&str> = root.directories.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["src", "target"]);
        let target = load(
            &store,
            &Digest::from_proto(f, root.directories[1].digest.as_ref().unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(target.files.len(), 1);
        assert_eq!(
            store
                .read(&Digest::from_proto(f, target.files[0].digest.as_ref().unwrap()).unwrap())
                .unwrap()
                .unwrap()
                .as_ref(),
            b"new"
        );
        assert_eq!(target.directories[0].name, "debug");
    }

    #[test]
    fn a_missing_base_is_an_error() {
        let store = MemoryStore::new();
        let f = DigestFunction::Blake3;
        let err = overlay(&store, f, &f.digest_of(b"nope"), &Tree::default()).unwrap_err();
        assert!(matches!(err, OverlayError::Missing(_)), "{err}");
    }
}

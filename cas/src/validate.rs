//! Validation of `Directory` messages and whole trees that enter the system.
//!
//! Owns the rules every tree must meet before Tessera stores, executes or materializes it:
//! names non-empty, not `.` or `..`, without `/` or NUL and at most 255 bytes; each list
//! (files, directories, symlinks) strictly sorted by name in byte order; no name twice in one
//! directory; well-formed child digests; symlink targets relative, non-empty and, read
//! lexically from where the symlink sits, never above the input root; bounded depth and size.
//! Errors name the offending path. Does not fetch directories (the caller supplies them), and
//! its symlink check is lexical: a symlink whose target passes through another symlink can
//! still lead out, so whoever materializes a tree must not follow symlinks out of it either.

use std::collections::HashMap;

use tessera_proto::reapi::Directory;

use crate::digest::{Digest, DigestFunction, shorten};
pub use crate::tree::TreeError;

/// Longest name accepted, in bytes: `NAME_MAX` on Linux and macOS, so anything longer could
/// never be materialized.
pub const MAX_NAME_BYTES: usize = 255;

/// Longest symlink target accepted, in bytes: `PATH_MAX` on Linux.
pub const MAX_SYMLINK_TARGET_BYTES: usize = 4096;

/// Bounds on a whole tree.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TreeLimits {
    /// Deepest directory nesting allowed; the root is at depth 0, its subdirectories at 1.
    pub max_depth: usize,
    /// Most entries (files, directories and symlinks, counted once per place they appear,
    /// so shared subtrees count every time) allowed in the expanded tree.
    pub max_entries: usize,
}

impl Default for TreeLimits {
    fn default() -> Self {
        TreeLimits {
            max_depth: 128,
            max_entries: 1_000_000,
        }
    }
}

/// Checks one `Directory` message that sits at `path` in its tree (`""` for the root,
/// `"a/b"` for a nested one). Does not look at its children.
pub fn validate_directory(
    dir: &Directory,
    function: DigestFunction,
    path: &str,
) -> Result<(), TreeError> {
    check_sorted(path, dir.files.iter().map(|n| n.name.as_str()))?;
    check_sorted(path, dir.directories.iter().map(|n| n.name.as_str()))?;
    check_sorted(path, dir.symlinks.iter().map(|n| n.name.as_str()))?;

    for file in &dir.files {
        Digest::from_proto_opt(function, file.digest.as_ref()).map_err(|source| {
            TreeError::InvalidDigest {
                path: entry_path(path, &file.name),
                source,
            }
        })?;
    }
    for child in &dir.directories {
        Digest::from_proto_opt(function, child.digest.as_ref()).map_err(|source| {
            TreeError::InvalidDigest {
                path: entry_path(path, &child.name),
                source,
            }
        })?;
    }
    let depth = depth_of(path);
    for link in &dir.symlinks {
        check_symlink(path, depth, &link.name, &link.target)?;
    }

    // Each list is sorted, so a name shared between lists shows as neighbours once merged.
    let total = dir.files.len() + dir.directories.len() + dir.symlinks.len();
    if total
        > dir
            .files
            .len()
            .max(dir.directories.len())
            .max(dir.symlinks.len())
    {
        let mut names: Vec<&str> = Vec::with_capacity(total);
        names.extend(dir.files.iter().map(|n| n.name.as_str()));
        names.extend(dir.directories.iter().map(|n| n.name.as_str()));
        names.extend(dir.symlinks.iter().map(|n| n.name.as_str()));
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(TreeError::DuplicateName {
                path: entry_path(path, pair[0]),
            });
        }
    }
    Ok(())
}

/// Checks a whole tree: every directory reachable from `root` is present in `children`
/// (keyed by digest) and valid where it sits, nesting stays within `limits.max_depth` and the
/// expanded tree within `limits.max_entries`. Work is bounded by the limits, however much the
/// tree shares subtrees.
pub fn validate_tree(
    root: &Directory,
    children: &HashMap<Digest, Directory>,
    function: DigestFunction,
    limits: &TreeLimits,
) -> Result<(), TreeError> {
    struct Frame<'a> {
        dir: &'a Directory,
        path: String,
        depth: usize,
        next_child: usize,
    }

    let mut entries = 0usize;
    let mut enter = |dir: &Directory, path: &str| -> Result<(), TreeError> {
        entries = entries
            .saturating_add(dir.files.len())
            .saturating_add(dir.directories.len())
            .saturating_add(dir.symlinks.len());
        if entries > limits.max_entries {
            return Err(TreeError::TooManyEntries {
                max: limits.max_entries,
            });
        }
        validate_directory(dir, function, path)
    };

    enter(root, "")?;
    // Depth-first with one frame per level, so memory follows depth, not fan-out.
    let mut stack = vec![Frame {
        dir: root,
        path: String::new(),
        depth: 0,
        next_child: 0,
    }];
    while let Some(frame) = stack.last_mut() {
        let Some(node) = frame.dir.directories.get(frame.next_child) else {
            stack.pop();
            continue;
        };
        frame.next_child += 1;
        let path = join(&frame.path, &node.name);
        let depth = frame.depth + 1;
        if depth > limits.max_depth {
            return Err(TreeError::TooDeep {
                path: shorten(&path),
                max: limits.max_depth,
            });
        }
        // Already checked by validate_directory on the parent.
        let digest = Digest::from_proto_opt(function, node.digest.as_ref()).map_err(|source| {
            TreeError::InvalidDigest {
                path: shorten(&path),
                source,
            }
        })?;
        let dir = children
            .get(&digest)
            .ok_or_else(|| TreeError::MissingDirectory(shorten(&path), digest))?;
        enter(dir, &path)?;
        stack.push(Frame {
            dir,
            path,
            depth,
            next_child: 0,
        });
    }
    Ok(())
}

fn check_sorted<'a>(dir: &str, names: impl Iterator<Item = &'a str>) -> Result<(), TreeError> {
    let mut previous: Option<&str> = None;
    for name in names {
        check_name(dir, name)?;
        if let Some(previous) = previous {
            // `str` orders by bytes, which is what REAPI asks for.
            if previous == name {
                return Err(TreeError::DuplicateName {
                    path: entry_path(dir, name),
                });
            }
            if previous > name {
                return Err(TreeError::NotSorted {
                    path: entry_path(dir, name),
                });
            }
        }
        previous = Some(name);
    }
    Ok(())
}

fn check_name(dir: &str, name: &str) -> Result<(), TreeError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name == "." || name == ".." {
        "'.' and '..' are not names"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.contains('\0') {
        "contains a NUL character"
    } else if name.len() > MAX_NAME_BYTES {
        "longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(TreeError::InvalidName {
        path: entry_path(dir, name),
        reason,
    })
}

fn check_symlink(dir: &str, depth: usize, name: &str, target: &str) -> Result<(), TreeError> {
    let invalid = |reason| TreeError::InvalidSymlink {
        path: entry_path(dir, name),
        target: shorten(target),
        reason,
    };
    if target.is_empty() {
        return Err(invalid("is empty"));
    }
    if target.contains('\0') {
        return Err(invalid("contains a NUL character"));
    }
    if target.len() > MAX_SYMLINK_TARGET_BYTES {
        return Err(invalid("is longer than 4096 bytes"));
    }
    if target.starts_with('/') {
        return Err(invalid("is absolute"));
    }
    // Resolve lexically from the directory holding the symlink, `depth` levels below the
    // root; `..` past the root leads out, even if later segments would come back in.
    let mut level = depth;
    for segment in target.split('/') {
        match segment {
            "" | "." => {}
            ".." => match level.checked_sub(1) {
                Some(up) => level = up,
                None => return Err(invalid("escapes the input root")),
            },
            _ => level += 1,
        }
    }
    Ok(())
}

fn depth_of(path: &str) -> usize {
    if path.is_empty() {
        0
    } else {
        path.split('/').count()
    }
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

/// The path of an entry for an error message, cut if very long.
fn entry_path(dir: &str, name: &str) -> String {
    shorten(&join(dir, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::digest_message;
    use tessera_proto::reapi::{DirectoryNode, FileNode, SymlinkNode};

    const F: DigestFunction = DigestFunction::Sha256;

    fn file(name: &str) -> FileNode {
        FileNode {
            name: name.into(),
            digest: Some(F.digest_of(name.as_bytes()).to_proto()),
            is_executable: false,
            node_properties: None,
        }
    }

    fn dir_node(name: &str, dir: &Directory) -> DirectoryNode {
        DirectoryNode {
            name: name.into(),
            digest: Some(digest_message(F, dir).0.to_proto()),
        }
    }

    fn link(name: &str, target: &str) -> SymlinkNode {
        SymlinkNode {
            name: name.into(),
            target: target.into(),
            node_properties: None,
        }
    }

    fn files(names: &[&str]) -> Directory {
        Directory {
            files: names.iter().map(|n| file(n)).collect(),
            ..Directory::default()
        }
    }

    fn err_of(dir: &Directory, path: &str) -> String {
        let err = validate_directory(dir, F, path).unwrap_err();
        assert!(err.is_invalid_tree(), "{err}");
        err.to_string()
    }

    #[test]
    fn accepts_a_well_formed_directory() {
        let empty = Directory::default();
        let dir = Directory {
            files: vec![file("B"), file("a"), file("a.txt"), file("é")],
            directories: vec![dir_node("d1", &empty), dir_node("d2", &empty)],
            symlinks: vec![
                link("l1", "a"),
                link("l2", "d1/../a"),
                link("l3", "./d1//x/"),
                link("l4", ".."),
                link("l5", "../../x/y/.."),
            ],
            node_properties: None,
        };
        validate_directory(&dir, F, "p/q").unwrap();
        validate_directory(&empty, F, "").unwrap();
        // A name of exactly 255 bytes.
        validate_directory(&files(&[&"n".repeat(255)]), F, "").unwrap();
    }

    #[test]
    fn names() {
        let long = "n".repeat(256);
        for (name, reason) in [
            ("", "empty"),
            (".", "'.' and '..'"),
            ("..", "'.' and '..'"),
            ("a/b", "contains '/'"),
            ("/", "contains '/'"),
            ("a\0b", "NUL"),
            (long.as_str(), "longer than 255 bytes"),
        ] {
            for dir in [
                files(&[name]),
                Directory {
                    directories: vec![dir_node(name, &Directory::default())],
                    ..Directory::default()
                },
                Directory {
                    symlinks: vec![link(name, "x")],
                    ..Directory::default()
                },
            ] {
                let msg = err_of(&dir, "top");
                assert!(
                    msg.contains("invalid name") && msg.contains(reason),
                    "{name:?}: {msg}"
                );
                assert!(msg.starts_with("top/"), "{msg}");
            }
        }
    }

    #[test]
    fn sorting_is_by_bytes_and_strict() {
        assert_eq!(
            err_of(&files(&["b", "a"]), "x"),
            "x/a: entries not sorted by name"
        );
        // Uppercase sorts before lowercase in byte order.
        assert!(err_of(&files(&["a", "B"]), "").contains("not sorted"));
        // Multi-byte UTF-8 after ASCII.
        assert!(err_of(&files(&["é", "z"]), "").contains("not sorted"));
        validate_directory(&files(&["z", "é"]), F, "").unwrap();
        // Prefix sorts first.
        validate_directory(&files(&["a", "a0", "ab"]), F, "").unwrap();
        assert!(err_of(&files(&["ab", "a"]), "").contains("not sorted"));

        let unsorted_dirs = Directory {
            directories: vec![
                dir_node("b", &Directory::default()),
                dir_node("a", &Directory::default()),
            ],
            ..Directory::default()
        };
        assert_eq!(err_of(&unsorted_dirs, ""), "a: entries not sorted by name");
        let unsorted_links = Directory {
            symlinks: vec![link("b", "x"), link("a", "x")],
            ..Directory::default()
        };
        assert_eq!(err_of(&unsorted_links, ""), "a: entries not sorted by name");
    }

    #[test]
    fn duplicates_within_and_across_lists() {
        assert_eq!(err_of(&files(&["a", "a"]), "d"), "d/a: duplicate name");
        let across = [
            Directory {
                files: vec![file("x")],
                directories: vec![dir_node("x", &Directory::default())],
                ..Directory::default()
            },
            Directory {
                files: vec![file("x")],
                symlinks: vec![link("x", "y")],
                ..Directory::default()
            },
            Directory {
                directories: vec![dir_node("x", &Directory::default())],
                symlinks: vec![link("x", "y")],
                ..Directory::default()
            },
            Directory {
                files: vec![file("a"), file("m"), file("z")],
                directories: vec![dir_node("b", &Directory::default())],
                symlinks: vec![link("c", "y"), link("m", "y")],
                node_properties: None,
            },
        ];
        for dir in across {
            assert!(err_of(&dir, "").ends_with(": duplicate name"), "{dir:?}");
        }
        // Same names in different directories are fine.
        let fine = Directory {
            files: vec![file("a")],
            directories: vec![dir_node("b", &Directory::default())],
            symlinks: vec![link("c", "a")],
            node_properties: None,
        };
        validate_directory(&fine, F, "").unwrap();
    }

    #[test]
    fn digests() {
        let mut missing = files(&["f"]);
        missing.files[0].digest = None;
        assert_eq!(err_of(&missing, "d"), "d/f: missing digest");

        let mut upper = files(&["f"]);
        upper.files[0]
            .digest
            .as_mut()
            .unwrap()
            .hash
            .make_ascii_uppercase();
        assert!(err_of(&upper, "").starts_with("f: invalid hash"));

        let mut negative = files(&["f"]);
        negative.files[0].digest.as_mut().unwrap().size_bytes = -3;
        assert!(err_of(&negative, "").contains("invalid size -3"));

        let mut short = files(&["f"]);
        short.files[0].digest.as_mut().unwrap().hash.pop();
        assert!(err_of(&short, "").contains("64 hexadecimal"));

        let no_dir_digest = Directory {
            directories: vec![DirectoryNode {
                name: "sub".into(),
                digest: None,
            }],
            ..Directory::default()
        };
        assert_eq!(err_of(&no_dir_digest, ""), "sub: missing digest");
    }

    #[test]
    fn symlinks() {
        let check = |path: &str, target: &str| {
            let dir = Directory {
                symlinks: vec![link("l", target)],
                ..Directory::default()
            };
            validate_directory(&dir, F, path).map_err(|e| e.to_string())
        };
        assert_eq!(check("", ""), Err("l: symlink target \"\" is empty".into()));
        assert_eq!(
            check("a", "/etc/passwd"),
            Err("a/l: symlink target \"/etc/passwd\" is absolute".into())
        );
        assert!(check("", "a\0b").unwrap_err().contains("NUL"));
        assert!(
            check("", &"a/".repeat(3000))
                .unwrap_err()
                .contains("longer than 4096")
        );

        let escapes = |path: &str, target: &str| {
            check(path, target).is_err_and(|e| e.ends_with("escapes the input root"))
        };
        assert!(escapes("", ".."));
        assert!(escapes("", "../x"));
        assert!(escapes("", "./.."));
        assert!(escapes("", "a/../.."));
        assert!(escapes("a", "../.."));
        assert!(escapes("a/b", "../../../x"));
        assert!(
            escapes("a/b", "../../../a/b"),
            "leaving and coming back is still leaving"
        );
        assert!(escapes("a/b", "x/../../../../y"));
        assert!(escapes("", "..//"));
        assert_eq!(
            check("a/b", "../../../x"),
            Err("a/b/l: symlink target \"../../../x\" escapes the input root".into())
        );

        for (path, target) in [
            ("", "x"),
            ("", "."),
            ("", "./x"),
            ("", "a/.."),
            ("", "a/../b"),
            ("a", ".."),
            ("a/b", "../.."),
            ("a/b", "../../c/d"),
            ("a/b", "x/y/../../../.."),
            ("", "x/"),
            ("", "a//b"),
            ("", "..."),
            ("", "..a"),
        ] {
            assert_eq!(check(path, target), Ok(()), "{path:?} -> {target:?}");
        }
    }

    /// A chain root -> d1 -> ... -> d{n}, each a single directory node.
    fn chain(n: usize) -> (Directory, HashMap<Digest, Directory>) {
        let mut children = HashMap::new();
        let mut current = files(&["leaf"]);
        for i in (1..=n).rev() {
            let (digest, _) = digest_message(F, &current);
            children.insert(digest, current.clone());
            current = Directory {
                directories: vec![dir_node(&format!("d{i}"), &current)],
                ..Directory::default()
            };
        }
        (current, children)
    }

    #[test]
    fn tree_passes() {
        let (root, children) = chain(5);
        validate_tree(&root, &children, F, &TreeLimits::default()).unwrap();
        validate_tree(
            &Directory::default(),
            &HashMap::new(),
            F,
            &TreeLimits::default(),
        )
        .unwrap();
    }

    #[test]
    fn tree_missing_directory() {
        let (root, mut children) = chain(3);
        let (leaf_digest, _) = digest_message(F, &files(&["leaf"]));
        children.remove(&leaf_digest);
        let err = validate_tree(&root, &children, F, &TreeLimits::default()).unwrap_err();
        assert!(
            matches!(err, TreeError::MissingDirectory(ref p, d) if p == "d1/d2/d3" && d == leaf_digest),
            "{err}"
        );
        assert!(err.to_string().starts_with("d1/d2/d3: directory "));
    }

    #[test]
    fn tree_depth() {
        let (root, children) = chain(4);
        let at = |max_depth| TreeLimits {
            max_depth,
            ..TreeLimits::default()
        };
        validate_tree(&root, &children, F, &at(4)).unwrap();
        let err = validate_tree(&root, &children, F, &at(3)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "d1/d2/d3/d4: directory nested deeper than the limit of 3"
        );
        assert!(validate_tree(&root, &children, F, &at(0)).is_err());
    }

    #[test]
    fn tree_deep_chain_needs_no_native_stack() {
        let (root, children) = chain(5_000);
        let limits = TreeLimits {
            max_depth: usize::MAX,
            max_entries: usize::MAX,
        };
        validate_tree(&root, &children, F, &limits).unwrap();
        assert!(matches!(
            validate_tree(&root, &children, F, &TreeLimits::default()),
            Err(TreeError::TooDeep { max: 128, .. })
        ));
    }

    #[test]
    fn tree_entries_count_shared_subtrees_each_time() {
        // Each level holds two names for the same child: 2^40 paths from 40 messages.
        let mut children = HashMap::new();
        let mut current = files(&["f"]);
        for _ in 0..40 {
            let (digest, _) = digest_message(F, &current);
            children.insert(digest, current.clone());
            current = Directory {
                directories: vec![dir_node("a", &current), dir_node("b", &current)],
                ..Directory::default()
            };
        }
        let limits = TreeLimits {
            max_depth: 128,
            max_entries: 10_000,
        };
        let err = validate_tree(&current, &children, F, &limits).unwrap_err();
        assert_eq!(err.to_string(), "tree has more than 10000 entries");

        let small = TreeLimits {
            max_depth: 128,
            max_entries: 3,
        };
        validate_tree(&files(&["a", "b", "c"]), &HashMap::new(), F, &small).unwrap();
        assert!(validate_tree(&files(&["a", "b", "c", "d"]), &HashMap::new(), F, &small).is_err());
    }

    #[test]
    fn tree_checks_every_directory_at_its_own_path() {
        // A symlink "../.." is fine two levels down but escapes one level down.
        let inner = Directory {
            symlinks: vec![link("up", "../..")],
            ..Directory::default()
        };
        let mid = Directory {
            directories: vec![dir_node("inner", &inner)],
            ..Directory::default()
        };
        let mut children = HashMap::new();
        children.insert(digest_message(F, &inner).0, inner.clone());
        children.insert(digest_message(F, &mid).0, mid.clone());
        let deep = Directory {
            directories: vec![dir_node("mid", &mid)],
            ..Directory::default()
        };
        validate_tree(&deep, &children, F, &TreeLimits::default()).unwrap();
        let shallow = Directory {
            directories: vec![dir_node("inner", &inner)],
            ..Directory::default()
        };
        let err = validate_tree(&shallow, &children, F, &TreeLimits::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "inner/up: symlink target \"../..\" escapes the input root"
        );

        let bad_child = files(&["b", "a"]);
        let root = Directory {
            directories: vec![dir_node("x", &bad_child)],
            ..Directory::default()
        };
        children.insert(digest_message(F, &bad_child).0, bad_child);
        let err = validate_tree(&root, &children, F, &TreeLimits::default()).unwrap_err();
        assert_eq!(err.to_string(), "x/a: entries not sorted by name");
    }

    #[test]
    fn tree_respects_the_digest_function() {
        let (root, children) = chain(1);
        // The same messages keyed under BLAKE3 do not satisfy a SHA-256 tree.
        let rekeyed: HashMap<Digest, Directory> = children
            .into_iter()
            .map(|(d, dir)| {
                (
                    Digest {
                        function: DigestFunction::Blake3,
                        ..d
                    },
                    dir,
                )
            })
            .collect();
        assert!(matches!(
            validate_tree(&root, &rekeyed, F, &TreeLimits::default()),
            Err(TreeError::MissingDirectory(..))
        ));
    }
}

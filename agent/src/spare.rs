//! Spare directories: empty directories an agent keeps to stand in for new ones.
//!
//! Laying a lease's inputs out over an earlier lease's directory (see
//! [`crate::materialize::materialize_over`]) removes the directories the new tree does not
//! want (the last command's output directories, inputs of another shape) and creates those it
//! wants and does not find. On ext4 without a journal every new inode walks past the inodes
//! deleted in the last minutes (`recently_deleted`), so each `mkdir` there cost 0.1 to 0.3 ms
//! of the agent's CPU in the `bazel` benchmark, a fifth of the agents' samples. Instead, a
//! directory that would be removed is emptied and renamed into `WORK_DIR/spare/`, and a
//! directory that would be created is a spare renamed into place: no inode is freed or
//! allocated, on any file system.
//!
//! A spare is empty, the agent's own (user and group), with the mode a new directory gets and
//! no extended attribute but an SELinux label (so no ACL); a directory that is not (made by
//! another user, carrying an ACL) is removed as before. What emptying and a mode do not undo
//! (its times, inode flags a command may set on its own directories, such as `noatime`) goes
//! with it, as it stays with a directory reused in place: spares are kept per owner (instance
//! and trust domain, as lease directories are: see [`crate::workdir::LeaseDirPool`]), so no
//! directory passes between trust domains. Only directories whose every process is known
//! dead are retired (the callers lay out over recycled lease directories only); like the
//! lease directories themselves, `spare/` is not hidden from commands of the agent's own user
//! that see the host's file system. At most [`SPARE_MAX`] are kept (when full, an owner with
//! more gives one up); the directory is emptied at start. Where renaming cannot work (another
//! file system under the work directory, no `RENAME_NOREPLACE`), the agent stops trying and
//! creates and deletes directories as before.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::workdir::{Trash, remove_tree};

/// Spare directories kept at most, over all owners.
pub const SPARE_MAX: usize = 1024;

/// The agent's spare directories (see the module docs). Clones share them.
#[derive(Debug, Clone)]
pub struct SpareDirs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Where spares wait, on the file system of the lease directories.
    dir: PathBuf,
    /// Makes names in `dir` unique for the life of the process.
    next: AtomicU64,
    /// Spares by owner.
    free: Mutex<HashMap<String, Vec<PathBuf>>>,
    /// Renaming cannot work here (no `RENAME_NOREPLACE`, another file system): directories
    /// are created and removed as without spares.
    no_rename: AtomicBool,
    /// The agent's user and group: a spare is theirs.
    uid: u32,
    gid: u32,
}

/// The spare directories of one owner, for one lease's layout.
#[derive(Debug, Clone)]
pub struct Spares {
    inner: Option<Arc<Inner>>,
    owner: String,
}

impl SpareDirs {
    /// Spares kept in `dir` (created), whatever an earlier run left there going to `trash`.
    /// Blocking.
    pub fn open(dir: PathBuf, trash: &Trash) -> io::Result<SpareDirs> {
        trash.discard(&dir)?;
        std::fs::create_dir_all(&dir)?;
        Ok(SpareDirs {
            inner: Arc::new(Inner {
                dir,
                next: AtomicU64::new(0),
                free: Mutex::default(),
                no_rename: AtomicBool::new(false),
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            }),
        })
    }

    /// The spares of `owner` (see [`crate::workdir::Claim::owner`]).
    pub fn of(&self, owner: &str) -> Spares {
        Spares {
            inner: Some(self.inner.clone()),
            owner: owner.to_owned(),
        }
    }

    /// Spares waiting, over all owners.
    pub fn count(&self) -> usize {
        self.inner.lock().values().map(Vec::len).sum()
    }
}

impl Spares {
    /// No spares: directories are created and removed as usual.
    pub fn none() -> Spares {
        Spares {
            inner: None,
            owner: String::new(),
        }
    }

    /// Creates the directory `path` as `mkdir` would (its parent must exist, `path` must
    /// not): a spare renamed there if there is one, else a new one. Blocking.
    pub fn create_dir(&self, path: &Path) -> io::Result<()> {
        if let Some(inner) = self.inner.as_ref()
            && !inner.no_rename.load(Ordering::Relaxed)
            && let Some(spare) = inner.take(&self.owner)
        {
            match rename_noreplace(&spare, path) {
                Ok(()) => return Ok(()),
                Err(error) => {
                    inner.latch(&error);
                    // Something in the way, no parent, another file system: `mkdir` below
                    // says which, and the spare waits for the next.
                    if std::fs::symlink_metadata(&spare).is_ok_and(|m| m.is_dir()) {
                        inner.put(&self.owner, spare);
                    }
                }
            }
        }
        std::fs::create_dir(path)
    }

    /// Removes the directory tree at `path` (never following a symlink), keeping its
    /// directories, emptied, as spares. A missing `path` is fine. Blocking.
    pub fn remove_tree(&self, path: &Path) -> io::Result<()> {
        match &self.inner {
            Some(inner) if !inner.no_rename.load(Ordering::Relaxed) => {
                inner.retire(&self.owner, path).or_else(|error| {
                    inner.latch(&error);
                    tracing::debug!(%error, path = %path.display(), "could not keep spare directories; deleting");
                    remove_tree(path)
                })
            }
            _ => remove_tree(path),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<PathBuf>>> {
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops renaming for good after an error that says it cannot work here: EINVAL (no
    /// `RENAME_NOREPLACE`), EXDEV (another file system), ENOSYS (no `renameat2`).
    fn latch(&self, error: &io::Error) {
        if matches!(
            error.raw_os_error(),
            Some(libc::EINVAL | libc::EXDEV | libc::ENOSYS)
        ) {
            self.no_rename.store(true, Ordering::Relaxed);
        }
    }

    /// Whether one more spare of `owner` fits: fewer than [`SPARE_MAX`] wait, or the owner
    /// other than `owner` with the most has just given one up (deleted).
    fn has_room(&self, owner: &str) -> bool {
        let given_up = {
            let mut free = self.lock();
            if free.values().map(Vec::len).sum::<usize>() < SPARE_MAX {
                return true;
            }
            free.iter_mut()
                .filter(|(o, _)| o.as_str() != owner)
                .map(|(_, spares)| spares)
                .max_by_key(|spares| spares.len())
                .and_then(Vec::pop)
        };
        given_up.is_some_and(|spare| {
            let _ = remove_tree(&spare);
            true
        })
    }

    fn take(&self, owner: &str) -> Option<PathBuf> {
        self.lock().get_mut(owner)?.pop()
    }

    fn put(&self, owner: &str, spare: PathBuf) {
        self.lock().entry(owner.to_owned()).or_default().push(spare);
    }

    /// Empties the tree at `top` and renames each of its directories into the spares,
    /// deepest first; a directory that cannot be a spare (see [`Inner::can_keep`]), or any
    /// past [`SPARE_MAX`], is removed with what it holds. An explicit stack: trees may be
    /// deep.
    fn retire(&self, owner: &str, top: &Path) -> io::Result<()> {
        let mut stack = vec![(top.to_owned(), false)];
        while let Some((dir, emptied)) = stack.pop() {
            if emptied {
                // Others may have filled the spares while this tree was emptied.
                if !self.has_room(owner) {
                    std::fs::remove_dir(&dir)?;
                    continue;
                }
                let spare = self
                    .dir
                    .join(self.next.fetch_add(1, Ordering::Relaxed).to_string());
                std::fs::rename(&dir, &spare)?;
                self.put(owner, spare);
                continue;
            }
            if !self.can_keep(owner, &dir)? {
                remove_tree(&dir)?;
                continue;
            }
            stack.push((dir.clone(), true));
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    stack.push((entry.path(), false));
                } else {
                    std::fs::remove_file(entry.path())?;
                }
            }
        }
        Ok(())
    }

    /// Whether the directory at `dir` (not followed) can become a spare once emptied: there
    /// is room, it is the agent's (user and group) and carries no extended attribute. Gives it
    /// the mode a new directory gets (which also lets the agent empty it).
    fn can_keep(&self, owner: &str, dir: &Path) -> io::Result<bool> {
        let meta = match std::fs::symlink_metadata(dir) {
            Ok(meta) => meta,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(error),
        };
        if !meta.is_dir()
            || meta.uid() != self.uid
            || meta.gid() != self.gid
            || has_xattrs(dir)
            || !self.has_room(owner)
        {
            return Ok(false);
        }
        let mode = crate::materialize::directory_mode();
        if meta.mode() & 0o7777 != mode {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(true)
    }
}

/// `rename(from, to)` failing with EEXIST if `to` exists (a plain rename would replace an
/// empty directory there, where `mkdir` fails).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        from,
        nix::fcntl::AT_FDCWD,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(io::Error::from)
}

/// Whether `path` (not followed) has extended attributes (an ACL is one) other than its
/// SELinux label, which every file has where SELinux is on and `mkdir` gives too; `true` if
/// that cannot be told, so such a directory is not kept.
fn has_xattrs(path: &Path) -> bool {
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else {
        return true;
    };
    let mut names = [0u8; 256];
    match list_xattrs(&path, &mut names) {
        Ok(len) => names[..len]
            .split(|b| *b == 0)
            .any(|name| !name.is_empty() && name != b"security.selinux"),
        Err(error) => error.raw_os_error() != Some(libc::ENOTSUP),
    }
}

/// `llistxattr(path, names)`: the length of the NUL-separated list of `path`'s attribute
/// names written to `names` (ERANGE if it does not fit).
#[expect(unsafe_code, reason = "llistxattr(2): nix has no binding")]
fn list_xattrs(path: &std::ffi::CStr, names: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `path` is NUL-terminated and `names` is writable for `names.len()` bytes; both
    // outlive the call, which writes at most that many bytes.
    let len = unsafe { libc::llistxattr(path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    usize::try_from(len).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn spares(scratch: &Path) -> (SpareDirs, Trash) {
        let trash = Trash::open(scratch.join("trash")).unwrap();
        (
            SpareDirs::open(scratch.join("spare"), &trash).unwrap(),
            trash,
        )
    }

    #[test]
    fn a_removed_tree_becomes_spares_that_new_directories_are_made_of() {
        let scratch = tempfile::tempdir().unwrap();
        let (dirs, _trash) = spares(scratch.path());
        let mine = dirs.of("a");
        let tree = scratch.path().join("tree");
        std::fs::create_dir_all(tree.join("sub/deep")).unwrap();
        std::fs::write(tree.join("file"), b"x").unwrap();
        std::fs::write(tree.join("sub/deep/file"), b"y").unwrap();
        let outside = scratch.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("sentinel"), b"s").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("sub/link")).unwrap();
        // A command may leave a directory read-only, or with odd bits.
        std::fs::set_permissions(tree.join("sub"), std::fs::Permissions::from_mode(0o2555))
            .unwrap();
        let inodes: Vec<u64> = ["", "sub", "sub/deep"]
            .iter()
            .map(|p| std::fs::metadata(tree.join(p)).unwrap().ino())
            .collect();

        mine.remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(dirs.count(), 3);
        assert!(outside.join("sentinel").exists(), "followed a symlink");
        // Nothing of the tree is left in the spares but the directories themselves.
        for entry in std::fs::read_dir(scratch.path().join("spare")).unwrap() {
            let entry = entry.unwrap();
            assert_eq!(std::fs::read_dir(entry.path()).unwrap().count(), 0);
        }

        // Another owner gets none of them.
        let theirs = dirs.of("b");
        let fresh = scratch.path().join("theirs");
        theirs.create_dir(&fresh).unwrap();
        assert!(!inodes.contains(&std::fs::metadata(&fresh).unwrap().ino()));
        assert_eq!(dirs.count(), 3);

        // The owner's new directories are the spares, with the mode a new one gets.
        let made = scratch.path().join("made");
        std::fs::create_dir(&made).unwrap();
        for name in ["one", "two", "three", "four"] {
            mine.create_dir(&made.join(name)).unwrap();
            let meta = std::fs::metadata(made.join(name)).unwrap();
            assert_eq!(
                meta.mode() & 0o7777,
                crate::materialize::directory_mode(),
                "{name}"
            );
        }
        let reused = ["one", "two", "three"]
            .iter()
            .filter(|n| inodes.contains(&std::fs::metadata(made.join(n)).unwrap().ino()))
            .count();
        assert_eq!(reused, 3);
        assert_eq!(dirs.count(), 0);
    }

    #[test]
    fn creating_where_something_is_fails_as_mkdir_does_and_keeps_the_spare() {
        let scratch = tempfile::tempdir().unwrap();
        let (dirs, _trash) = spares(scratch.path());
        let mine = dirs.of("a");
        let old = scratch.path().join("old");
        std::fs::create_dir(&old).unwrap();
        mine.remove_tree(&old).unwrap();
        assert_eq!(dirs.count(), 1);

        // An empty directory in the way: a plain rename would replace it.
        let empty = scratch.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let error = mine.create_dir(&empty).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        let file = scratch.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(
            mine.create_dir(&file).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        let orphan = scratch.path().join("missing/child");
        assert_eq!(
            mine.create_dir(&orphan).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(dirs.count(), 1);
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
        mine.create_dir(&scratch.path().join("new")).unwrap();
        assert_eq!(dirs.count(), 0);
    }

    #[test]
    #[expect(unsafe_code, reason = "setxattr(2): nix has no binding")]
    fn a_directory_with_extended_attributes_is_removed_not_kept() {
        let scratch = tempfile::tempdir().unwrap();
        let (dirs, _trash) = spares(scratch.path());
        let tree = scratch.path().join("tree");
        std::fs::create_dir_all(tree.join("marked")).unwrap();
        let marked = CString::new(tree.join("marked").as_os_str().as_bytes()).unwrap();
        let name = c"user.tessera-test";
        // SAFETY: both strings are NUL-terminated and outlive the call; the value is 1 byte.
        let set =
            unsafe { libc::setxattr(marked.as_ptr(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
        if set != 0 {
            // A file system without user attributes (tmpfs on older kernels): nothing to test.
            assert_eq!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::ENOTSUP)
            );
            return;
        }
        dirs.of("a").remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(dirs.count(), 1, "only the unmarked top is kept");
    }

    #[test]
    fn when_full_an_owner_with_more_gives_one_up() {
        let scratch = tempfile::tempdir().unwrap();
        let (dirs, _trash) = spares(scratch.path());
        let tree = scratch.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        for i in 0..SPARE_MAX + 9 {
            std::fs::create_dir(tree.join(i.to_string())).unwrap();
        }
        dirs.of("many").remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(
            dirs.count(),
            SPARE_MAX,
            "past the cap, directories are deleted"
        );

        let other = scratch.path().join("other");
        std::fs::create_dir_all(other.join("sub")).unwrap();
        dirs.of("few").remove_tree(&other).unwrap();
        assert_eq!(dirs.count(), SPARE_MAX);
        assert_eq!(
            std::fs::read_dir(scratch.path().join("spare"))
                .unwrap()
                .count(),
            SPARE_MAX,
            "what was given up is deleted"
        );
        // Both of the newcomer's directories were kept.
        let few = dirs.of("few");
        for name in ["x", "y"] {
            few.create_dir(&scratch.path().join(name)).unwrap();
        }
        assert_eq!(dirs.count(), SPARE_MAX - 2);
    }

    #[test]
    fn without_spares_trees_are_removed_and_directories_made() {
        let scratch = tempfile::tempdir().unwrap();
        let none = Spares::none();
        let tree = scratch.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        none.remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        none.remove_tree(&tree).unwrap();
        none.create_dir(&tree).unwrap();
        assert!(tree.is_dir());
    }

    #[test]
    fn spares_left_by_an_earlier_run_are_thrown_away() {
        let scratch = tempfile::tempdir().unwrap();
        let spare = scratch.path().join("spare");
        std::fs::create_dir_all(spare.join("7/left")).unwrap();
        let (dirs, _trash) = spares(scratch.path());
        assert_eq!(std::fs::read_dir(&spare).unwrap().count(), 0);
        assert_eq!(dirs.count(), 0);
    }
}

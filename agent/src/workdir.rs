//! The agent's work directory: what lives where.
//!
//! ```text
//! WORK_DIR/agent-id          the generated agent id (see config::agent_id)
//! WORK_DIR/cache/            local blob cache (DiskStore, uncompressed)
//! WORK_DIR/cache-meta/       its redb index
//! WORK_DIR/x/N/              one lease: root/ (the exec root), tmp/ (its private /tmp),
//!                            stdout, stderr; with a layer, upper/ and ovl-work/ (the
//!                            overlay's writable side); removed once the result is sent
//! WORK_DIR/layers/NAME/      a large input root laid out once, shared by leases as the
//!                            lower layer of an overlay on their root/ (see layer)
//! WORK_DIR/kept/LEASE-ATTEMPT/  a failed lease's directory, with --keep-failed
//! WORK_DIR/persist/HASH/     a directory prepare steps keep between runs (see step)
//! WORK_DIR/probe/            scratch for the sandbox probe at startup
//! WORK_DIR/trash/            lease directories waiting to be deleted (see [`Trash`])
//! ```
//!
//! The exec root is laid out (or a layer mounted) at the path [`WorkLayout::lease_dirs`] gives;
//! an action that asks
//! for a fixed path (`exec-root`) sees it there instead (see `exec_root`). Short names keep
//! these paths short.
//!
//! A finished lease's directory is not deleted on the lease's path: [`Trash::discard`] renames
//! it into `trash/` (same file system, one `rename`) and a background thread deletes it. At
//! start, the previous run's lease directories and trash are deleted the same way. The trash is
//! bounded: while [`TRASH_MAX_PENDING`] directories wait, a discard deletes its directory
//! itself, so a slow disk slows leases down rather than letting the trash fill it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

/// Directories the trash holds at most before [`Trash::discard`] deletes inline.
pub const TRASH_MAX_PENDING: usize = 64;

/// The layout of one work directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkLayout {
    root: PathBuf,
}

/// The directories and files of one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseDirs {
    /// Everything of the lease; removed afterwards.
    pub base: PathBuf,
    /// The exec root: the input root is laid out here.
    pub root: PathBuf,
    /// Mounted on `/tmp` for the command when sandboxed.
    pub tmp: PathBuf,
    /// The command's stdout.
    pub stdout: PathBuf,
    /// The command's stderr.
    pub stderr: PathBuf,
    /// With a layer: where the lease's writes to its exec root go (the overlay's upper
    /// directory).
    pub upper: PathBuf,
    /// With a layer: the overlay's work directory.
    pub overlay_work: PathBuf,
}

impl WorkLayout {
    /// The layout under `root`, which should be absolute (exec roots are mounted by path).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        WorkLayout { root: root.into() }
    }

    /// The work directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of the local blob cache and its index.
    pub fn cache_dir(&self) -> &Path {
        &self.root
    }

    /// Parent of every lease directory.
    pub fn exec_base(&self) -> PathBuf {
        self.root.join("x")
    }

    /// Parent of the directories prepare steps keep between runs.
    pub fn persist_base(&self) -> PathBuf {
        self.root.join("persist")
    }

    /// Parent of the input root layers (see `layer`).
    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    /// Scratch directory for the sandbox and overlay probes.
    pub fn probe_dir(&self) -> PathBuf {
        self.root.join("probe")
    }

    /// The directories of the lease numbered `seq` (a number the agent gives each lease it
    /// accepts, unique for the life of the process).
    pub fn lease_dirs(&self, seq: u64) -> LeaseDirs {
        LeaseDirs::under(self.exec_base().join(seq.to_string()))
    }

    /// Where a failed lease's directory is kept with `keep_failed`.
    pub fn kept_dir(&self, lease_id: &str, attempt: u32) -> PathBuf {
        let safe: String = lease_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .take(100)
            .collect();
        self.root.join("kept").join(format!("{safe}-{attempt}"))
    }

    /// Where discarded directories wait to be deleted.
    pub fn trash_dir(&self) -> PathBuf {
        self.root.join("trash")
    }

    /// Moves lease directories left by an earlier run of the agent to `trash` and makes the
    /// parent of lease directories afresh. Blocking.
    pub fn clear_exec_base(&self, trash: &Trash) -> io::Result<()> {
        trash.discard(&self.exec_base())?;
        std::fs::create_dir_all(self.exec_base())
    }
}

/// Deletes directories in the background (see the module docs). Clones share one thread,
/// which ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Trash {
    inner: Arc<TrashInner>,
}

#[derive(Debug)]
struct TrashInner {
    dir: PathBuf,
    /// Names in `dir` for the deleting thread.
    queue: Mutex<mpsc::Sender<PathBuf>>,
    /// Directories renamed into `dir` and not yet deleted.
    pending: Arc<AtomicUsize>,
    /// Makes names in `dir` unique for the life of the process.
    next: AtomicU64,
}

impl Trash {
    /// Opens (creating) the trash directory `dir` and starts its deleting thread, which first
    /// deletes whatever an earlier run left there. Blocking.
    pub fn open(dir: PathBuf) -> io::Result<Trash> {
        std::fs::create_dir_all(&dir)?;
        let (sender, receiver) = mpsc::channel::<PathBuf>();
        let pending = Arc::new(AtomicUsize::new(0));
        for entry in std::fs::read_dir(&dir)? {
            pending.fetch_add(1, Ordering::SeqCst);
            // The receiver is alive: it is moved into the thread below.
            let _ = sender.send(entry?.path());
        }
        let thread_pending = pending.clone();
        std::thread::Builder::new()
            .name("tessera-trash".into())
            .spawn(move || {
                for path in receiver {
                    if let Err(error) = remove_tree(&path) {
                        tracing::warn!(%error, dir = %path.display(), "failed to delete trash");
                    }
                    thread_pending.fetch_sub(1, Ordering::SeqCst);
                }
            })?;
        Ok(Trash {
            inner: Arc::new(TrashInner {
                dir,
                queue: Mutex::new(sender),
                pending,
                next: AtomicU64::new(0),
            }),
        })
    }

    /// Removes `path` (a directory on the trash's file system) from sight at once and deletes
    /// it in the background; inline if the trash is full or `path` cannot be renamed into it.
    /// A missing `path` is fine. Blocking.
    pub fn discard(&self, path: &Path) -> io::Result<()> {
        if self.try_discard(path)? {
            Ok(())
        } else {
            remove_tree(path)
        }
    }

    /// [`Trash::discard`] without the inline deletion, for callers that must not block (an
    /// async task): `Ok(true)` if `path` is gone from sight (moved to the trash, or missing),
    /// `Ok(false)` if the caller must delete it itself (the trash is full, or `path` cannot be
    /// renamed into it: another file system, a full disk). Never deletes a tree itself.
    pub fn try_discard(&self, path: &Path) -> io::Result<bool> {
        let inner = &self.inner;
        if inner.pending.load(Ordering::SeqCst) >= TRASH_MAX_PENDING {
            return Ok(false);
        }
        // A name no earlier run can have left behind (the agent may always be PID 1 in a
        // container, so the pid does not tell runs apart).
        let seq = inner.next.fetch_add(1, Ordering::Relaxed);
        let target = inner
            .dir
            .join(format!("{}-{seq}", uuid::Uuid::new_v4().simple()));
        match std::fs::rename(path, &target) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(true),
            // Another file system (EXDEV), no space for the rename, or something in the way.
            Err(_) => return Ok(false),
        }
        inner.pending.fetch_add(1, Ordering::SeqCst);
        let sent = inner
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(target);
        if let Err(mpsc::SendError(target)) = sent {
            // The thread is gone (it never panics on purpose): the caller deletes it.
            inner.pending.fetch_sub(1, Ordering::SeqCst);
            return std::fs::rename(&target, path).map(|()| false);
        }
        Ok(true)
    }

    /// Directories waiting to be deleted.
    pub fn pending(&self) -> usize {
        self.inner.pending.load(Ordering::SeqCst)
    }
}

impl LeaseDirs {
    /// The directories of a lease whose directory is `base`.
    pub fn under(base: PathBuf) -> LeaseDirs {
        LeaseDirs {
            root: base.join("root"),
            tmp: base.join("tmp"),
            stdout: base.join("stdout"),
            stderr: base.join("stderr"),
            upper: base.join("upper"),
            overlay_work: base.join("ovl-work"),
            base,
        }
    }

    /// Creates the lease directory afresh (exec root and tmp). Blocking.
    pub fn create(&self) -> io::Result<()> {
        remove_tree(&self.base)?;
        std::fs::create_dir_all(&self.root)?;
        std::fs::create_dir_all(&self.tmp)?;
        // Commands may run as any user; /tmp is world-writable and sticky.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.tmp, std::fs::Permissions::from_mode(0o1777))
    }
}

/// Removes a directory tree that may contain read-only directories; a missing tree is fine.
/// Blocking.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
            make_writable(path);
            std::fs::remove_dir_all(path)
        }
        Err(error) => Err(error),
    }
}

/// Gives every directory under `path` owner rwx, so an unprivileged agent can delete what an
/// action made read-only.
fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let mode = meta.permissions().mode() | 0o700;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode));
        if let Ok(entries) = std::fs::read_dir(&dir) {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let layout = WorkLayout::new("/w");
        let dirs = layout.lease_dirs(7);
        assert_eq!(dirs.root, PathBuf::from("/w/x/7/root"));
        assert_eq!(dirs.tmp, PathBuf::from("/w/x/7/tmp"));
        assert_eq!(dirs.upper, PathBuf::from("/w/x/7/upper"));
        assert_eq!(layout.layers_dir(), PathBuf::from("/w/layers"));
        assert_eq!(
            layout.kept_dir("ops/abc:1", 2),
            PathBuf::from("/w/kept/ops_abc_1-2")
        );
    }

    fn wait_empty(trash: &Trash) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while trash.pending() > 0 {
            assert!(std::time::Instant::now() < until, "the trash never emptied");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn discarded_directories_vanish_at_once_and_are_deleted_in_the_background() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let layout = WorkLayout::new(dir.path());
        // What a killed agent left: a trash entry and a lease directory.
        std::fs::create_dir_all(layout.trash_dir().join("old/sub")).unwrap();
        let old_lease = layout.lease_dirs(3);
        old_lease.create().unwrap();
        std::fs::write(old_lease.root.join("f"), "f").unwrap();
        std::fs::set_permissions(&old_lease.root, std::fs::Permissions::from_mode(0o500)).unwrap();

        let trash = Trash::open(layout.trash_dir()).unwrap();
        layout.clear_exec_base(&trash).unwrap();
        assert!(layout.exec_base().is_dir());
        assert!(!old_lease.base.exists());

        let lease = layout.lease_dirs(4);
        lease.create().unwrap();
        trash.discard(&lease.base).unwrap();
        assert!(!lease.base.exists(), "gone from sight at once");
        trash.discard(&lease.base).unwrap();
        wait_empty(&trash);
        let left: Vec<_> = std::fs::read_dir(layout.trash_dir()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_full_trash_deletes_inline() {
        let dir = tempfile::tempdir().unwrap();
        let trash_dir = dir.path().join("trash");
        std::fs::create_dir_all(&trash_dir).unwrap();
        let trash = Trash::open(trash_dir).unwrap();
        // Fill the count as a backlog would, without the thread seeing anything.
        trash
            .inner
            .pending
            .fetch_add(TRASH_MAX_PENDING, Ordering::SeqCst);
        let victim = dir.path().join("v");
        std::fs::create_dir_all(victim.join("a")).unwrap();
        trash.discard(&victim).unwrap();
        assert!(!victim.exists());
        assert_eq!(trash.pending(), TRASH_MAX_PENDING, "nothing was queued");
    }

    #[test]
    fn removes_read_only_trees() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        std::fs::create_dir_all(tree.join("ro/sub")).unwrap();
        std::fs::write(tree.join("ro/sub/f"), "f").unwrap();
        std::fs::set_permissions(tree.join("ro"), std::fs::Permissions::from_mode(0o500)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        remove_tree(&tree).unwrap();
    }
}

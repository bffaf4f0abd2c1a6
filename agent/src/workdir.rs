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
//! WORK_DIR/spare/            empty directories kept to stand in for new ones (see
//!                            `spare`)
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

    /// Where empty directories wait to stand in for new ones (see [`crate::spare`]).
    pub fn spare_dir(&self) -> PathBuf {
        self.root.join("spare")
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

/// The directories leases run in, and those kept for reuse.
///
/// Each lease runs in a numbered directory under `x/` ([`WorkLayout::lease_dirs`]). With
/// recycling on, a finished lease's directory is not deleted: it goes back to an idle list
/// (at most `keep` of them; the oldest makes room), holding what the lease left, and a later
/// lease of the same instance and trust domain lays its inputs out over it
/// ([`crate::materialize::materialize_over`]): what is already right stays, the rest is
/// removed. On a file system where every new inode is costly (ext4 walks the inodes deleted
/// lately for each one), that saves most of a lease's `mkdir`s and every `unlink` and `rmdir`
/// of its deletion.
///
/// Only a directory whose every process is known dead may be reused (a process left over
/// could write into a later lease's inputs after they were checked): so recycling is on only
/// where each command runs in a PID namespace of its own (see `sandbox`), whose end kills
/// everything the command started, and a directory goes back only if its inputs were laid out
/// file by file with nothing mounted into them ([`LeaseDirPool::laid_out_file_by_file`]) and
/// a plain command ended there by itself ([`LeaseDirPool::command_ended`]). Instances and
/// trust domains never share a directory.
#[derive(Debug)]
pub struct LeaseDirPool {
    layout: WorkLayout,
    keep: usize,
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    /// The next number never used.
    next: u64,
    /// Directories no lease runs in, most recent last, with whose they are.
    idle: Vec<(String, u64)>,
    /// The directories of the leases that claimed one, by the lease's sequence number.
    claims: std::collections::HashMap<u64, Claim>,
}

/// The directories one lease runs in.
#[derive(Debug, Clone)]
pub struct Claim {
    /// Its directories.
    pub dirs: LeaseDirs,
    /// They hold what an earlier lease left: lay out over them, don't create them.
    pub recycled: bool,
    laid_out: bool,
    ended: bool,
    number: u64,
    owner: String,
}

impl Claim {
    /// Whose the directories are: the instance and trust domain, as one key.
    pub fn owner(&self) -> &str {
        &self.owner
    }
}

impl LeaseDirPool {
    /// A pool keeping at most `keep` idle directories; 0 turns recycling off.
    pub fn new(layout: WorkLayout, keep: usize) -> Self {
        LeaseDirPool {
            layout,
            keep,
            state: Mutex::default(),
        }
    }

    /// Whether finished leases' directories are kept for reuse.
    pub fn recycles(&self) -> bool {
        self.keep > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The directories for lease `seq` of `instance` and trust domain `domain`: the most
    /// recently idle one of theirs, or a new number (whose directories do not exist yet).
    pub fn claim(&self, seq: u64, instance: &str, domain: &str) -> Claim {
        // Both are free text: the length of the first keeps the pair unambiguous.
        let owner = format!("{}:{instance}{domain}", instance.len());
        let mut state = self.lock();
        let reused = state
            .idle
            .iter()
            .rposition(|(o, _)| *o == owner)
            .map(|at| state.idle.remove(at).1);
        let recycled = reused.is_some();
        let number = reused.unwrap_or_else(|| {
            state.next += 1;
            state.next - 1
        });
        let claim = Claim {
            dirs: self.layout.lease_dirs(number),
            recycled,
            laid_out: false,
            ended: false,
            number,
            owner,
        };
        state.claims.insert(seq, claim.clone());
        claim
    }

    /// Lease `seq`'s inputs are laid out file by file, nothing mounted or bound into them.
    pub fn laid_out_file_by_file(&self, seq: u64) {
        if let Some(claim) = self.lock().claims.get_mut(&seq) {
            claim.laid_out = true;
        }
    }

    /// Lease `seq`'s command (a plain command, no builtin step) ended by itself, and with it
    /// every process it started.
    pub fn command_ended(&self, seq: u64) {
        if let Some(claim) = self.lock().claims.get_mut(&seq) {
            claim.ended = true;
        }
    }

    /// Ends lease `seq`'s claim: its directories, for the caller to dispose of or give back;
    /// `None` if it never claimed any.
    pub fn release(&self, seq: u64) -> Option<Claim> {
        self.lock().claims.remove(&seq)
    }

    /// Keeps `claim`'s directories for a later lease, if recycling is on and they may be
    /// reused (see the type's docs), and returns the idle directories that made room for
    /// them, for the caller to dispose of; `None` if the caller must dispose of `claim`'s.
    pub fn give_back(&self, claim: &Claim) -> Option<Vec<LeaseDirs>> {
        if self.keep == 0 || !claim.laid_out || !claim.ended {
            return None;
        }
        let mut state = self.lock();
        let over = (state.idle.len() + 1).saturating_sub(self.keep);
        let evicted = state
            .idle
            .drain(..over)
            .map(|(_, number)| self.layout.lease_dirs(number))
            .collect();
        state.idle.push((claim.owner.clone(), claim.number));
        Some(evicted)
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

    /// [`LeaseDirs::create`] where an earlier lease's directory may be in the way: it goes to
    /// `trash` (deleted in the background) instead of being deleted here. Blocking.
    pub fn create_afresh(&self, trash: &Trash) -> io::Result<()> {
        trash.discard(&self.base)?;
        self.create()
    }

    /// Readies directories an earlier lease ran in for the next, except the exec root (laid
    /// out over by `materialize_over`): the lease directory keeps only the exec root and tmp
    /// (the output files go: the next command's must be new, never a file the last one could
    /// have replaced); tmp is emptied but for the directories on the way to each of
    /// `mount_points` (paths inside tmp where the sandbox mounts; listed without following
    /// symlinks, so a symlink planted on the way is removed, not followed) and is
    /// world-writable and sticky again. Blocking.
    pub fn tidy_for_reuse(&self, mount_points: &[PathBuf]) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.base)? {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if !((path == self.root || path == self.tmp) && kind.is_dir()) {
                remove_entry(&path, kind)?;
            }
        }
        for dir in [&self.root, &self.tmp] {
            if !dir.is_dir() {
                std::fs::create_dir(dir)?;
            }
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.tmp, std::fs::Permissions::from_mode(0o1777))?;
        empty_keeping(&self.tmp, mount_points)
    }
}

/// Removes everything under `dir` except the directories on the way to each of `keep`
/// (absolute paths under `dir`), which get the mode a new directory gets and are emptied the
/// same way. Never follows
/// a symlink. Blocking.
fn empty_keeping(dir: &Path, keep: &[PathBuf]) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        let on_the_way: Vec<PathBuf> = keep
            .iter()
            .filter(|k| k.starts_with(&path))
            .cloned()
            .collect();
        if kind.is_dir() && !on_the_way.is_empty() {
            let mode = crate::materialize::directory_mode();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            empty_keeping(&path, &on_the_way)?;
        } else {
            remove_entry(&path, kind)?;
        }
    }
    Ok(())
}

/// Removes `path`, of type `kind` as listed (never followed).
pub(crate) fn remove_entry(path: &Path, kind: std::fs::FileType) -> io::Result<()> {
    if kind.is_dir() {
        remove_tree(path)
    } else {
        std::fs::remove_file(path)
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

    #[test]
    fn the_pool_reuses_directories_of_the_same_owner_and_keeps_at_most_its_bound() {
        let pool = LeaseDirPool::new(WorkLayout::new("/w"), 2);
        let ready = |seq: u64, instance: &str, domain: &str| {
            let claim = pool.claim(seq, instance, domain);
            pool.laid_out_file_by_file(seq);
            pool.command_ended(seq);
            claim
        };
        let base = |claim: &Claim| claim.dirs.base.display().to_string();
        // Given back only once laid out file by file and ended by itself.
        let first = pool.claim(1, "", "");
        assert!(!first.recycled);
        pool.laid_out_file_by_file(1);
        assert!(pool.give_back(&pool.release(1).unwrap()).is_none());
        pool.claim(1, "", "");
        pool.command_ended(1);
        assert!(pool.give_back(&pool.release(1).unwrap()).is_none());
        assert!(pool.release(1).is_none(), "released twice");

        let a = ready(2, "", "");
        let b = ready(3, "", "");
        let c = ready(4, "i", "");
        let d = ready(5, "", "i");
        assert_eq!(
            [&a, &b, &c, &d].map(base),
            ["/w/x/2", "/w/x/3", "/w/x/4", "/w/x/5"]
        );
        assert_eq!(pool.give_back(&pool.release(2).unwrap()), Some(vec![]));
        assert_eq!(pool.give_back(&pool.release(3).unwrap()), Some(vec![]));
        // Over the bound, the oldest idle one makes room.
        assert_eq!(
            pool.give_back(&pool.release(4).unwrap()),
            Some(vec![a.dirs.clone()])
        );
        assert_eq!(
            pool.give_back(&pool.release(5).unwrap()),
            Some(vec![b.dirs.clone()])
        );
        // Instance and domain both count, and are not confused with each other.
        let other = pool.claim(6, "", "");
        assert!(!other.recycled);
        assert_eq!(base(&other), "/w/x/6");
        let again = pool.claim(7, "", "i");
        assert!(again.recycled);
        assert_eq!(again.dirs, d.dirs);
        assert_eq!(pool.claim(8, "i", "").dirs, c.dirs);
        assert!(!pool.claim(9, "i", "").recycled);

        let off = LeaseDirPool::new(WorkLayout::new("/w"), 0);
        off.claim(1, "", "");
        off.laid_out_file_by_file(1);
        off.command_ended(1);
        assert!(!off.recycles());
        assert!(off.give_back(&off.release(1).unwrap()).is_none());
    }

    #[test]
    fn tidying_for_reuse_empties_tmp_but_for_mount_points_and_never_follows_symlinks() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dirs = LeaseDirs::under(dir.path().join("x/0"));
        dirs.create().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), "keep me").unwrap();
        // A mount point two levels down, a symlink planted on the way to another, and what a
        // command leaves: files, a directory, a changed mode.
        let point = dirs.tmp.join("a/b");
        let planted = dirs.tmp.join("p/q");
        std::fs::create_dir_all(&point).unwrap();
        std::fs::write(dirs.tmp.join("a/left"), "x").unwrap();
        std::fs::write(point.join("under"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, dirs.tmp.join("p")).unwrap();
        std::fs::create_dir_all(dirs.tmp.join("junk/deep")).unwrap();
        std::fs::write(&dirs.stdout, "out").unwrap();
        std::fs::write(dirs.base.join("stray"), "x").unwrap();
        std::fs::set_permissions(&dirs.tmp, std::fs::Permissions::from_mode(0o700)).unwrap();

        dirs.tidy_for_reuse(&[point.clone(), planted]).unwrap();

        let names = |p: &Path| {
            let mut n: Vec<String> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            n.sort();
            n
        };
        assert_eq!(names(&dirs.tmp), ["a"]);
        assert_eq!(names(&dirs.tmp.join("a")), ["b"]);
        assert!(names(&point).is_empty());
        assert_eq!(names(&dirs.base), ["root", "tmp"]);
        assert_eq!(
            std::fs::metadata(&dirs.tmp).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("precious")).unwrap(),
            "keep me"
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

//! Fixed exec roots: showing an action its input root at the path its `exec-root` platform
//! property names, instead of at the lease's own directory (DESIGN.md §5: cargo test binaries
//! embed absolute paths, so a job's prepare step and its batches must see the same path on
//! every agent).
//!
//! The input root is always laid out in the lease's directory; what changes is how the command
//! gets to see it there:
//!
//! - **with namespaces**, `sandbox` bind-mounts the lease's exec root at the fixed path inside
//!   the command's private mount namespace (below the private `/tmp` if the path lies under
//!   `/tmp`), so any number of actions with the same path run side by side;
//! - **without namespaces**, [`SymlinkedRoot`] makes the path a symlink to the lease's exec root
//!   for the whole run, holding an exclusive `flock` on `<path>.lock`, so actions with the same
//!   path take turns on this host.
//!
//! Also owns [`PathMap`], which translates between paths as the command sees them and as the
//! agent (outside any namespace) can open them, and the naming of persistent directories
//! ([`persist_dir`]) that prepare steps keep between runs. Does not spawn anything.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tessera_cas::digest::DigestFunction;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// How often a busy exec root lock is tried again.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// Why a fixed exec root could not be set up on this host.
#[derive(Debug, Error)]
pub enum ExecRootError {
    /// The path and the agent's work directory contain one another: mounting or linking one
    /// would hide the other.
    #[error(
        "platform property exec-root=\"{path}\": overlaps the agent's work directory {work_dir}"
    )]
    OverlapsWorkDir {
        /// The exec root path.
        path: PathBuf,
        /// The work directory.
        work_dir: PathBuf,
    },
    /// Without namespaces the path must be free or a symlink this agent may replace.
    #[error("cannot use {path} as the exec root: it exists and is not a symlink")]
    Occupied {
        /// The exec root path.
        path: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl ExecRootError {
    /// True if the action asked for something this agent can never do (its fault), rather
    /// than the host being in the way.
    pub fn is_user_error(&self) -> bool {
        matches!(self, ExecRootError::OverlapsWorkDir { .. })
    }
}

/// Checks that `exec_root` and the agent's `work_dir` are disjoint: the exec root is mounted
/// (or linked) over its path, which must hide neither the lease directories nor itself be
/// inside them.
pub fn check_disjoint(exec_root: &Path, work_dir: &Path) -> Result<(), ExecRootError> {
    if exec_root.starts_with(work_dir) || work_dir.starts_with(exec_root) {
        return Err(ExecRootError::OverlapsWorkDir {
            path: exec_root.to_owned(),
            work_dir: work_dir.to_owned(),
        });
    }
    Ok(())
}

/// Where a prepare step's persistent directory for `relative` under `exec_root` lives on this
/// agent for jobs of `trust_domain`: `<persist base>/<hash of all three>`, one per (trust
/// domain, exec root, path), so the same job keeps finding its cargo `target`, different jobs
/// never share one, and a job of one trust domain never sees what a job of another planted.
/// The empty domain (auth off) names the directories it always did.
pub fn persist_dir(
    persist_base: &Path,
    trust_domain: &str,
    exec_root: &Path,
    relative: &Path,
) -> PathBuf {
    let mut key = exec_root.as_os_str().as_encoded_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(relative.as_os_str().as_encoded_bytes());
    if !trust_domain.is_empty() {
        // Paths hold no NUL, so this second separator keeps every key apart.
        key.push(0);
        key.extend_from_slice(trust_domain.as_bytes());
    }
    let hash = DigestFunction::Sha256.digest_of(&key).hash_hex();
    persist_base.join(&hash[..32])
}

/// Paths as the command sees them (`seen`) and as the agent can open them (`local`): the exec
/// root, and directories mounted below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMap {
    seen: PathBuf,
    local: PathBuf,
    /// (seen, local) of each directory mounted below the exec root, most specific first.
    mounts: Vec<(PathBuf, PathBuf)>,
}

impl PathMap {
    /// The exec root, seen at `seen` and laid out at `local` (the same path when the action
    /// has no fixed exec root).
    pub fn new(seen: impl Into<PathBuf>, local: impl Into<PathBuf>) -> Self {
        PathMap {
            seen: seen.into(),
            local: local.into(),
            mounts: Vec::new(),
        }
    }

    /// Adds a directory the command sees at `<exec root>/relative`, kept by the agent at
    /// `local`.
    pub fn mount(&mut self, relative: &Path, local: impl Into<PathBuf>) {
        self.mounts.push((self.seen.join(relative), local.into()));
        self.mounts
            .sort_by_key(|(seen, _)| std::cmp::Reverse(seen.components().count()));
    }

    /// Where the command sees the exec root.
    pub fn seen_root(&self) -> &Path {
        &self.seen
    }

    /// The path the agent opens for `seen`, a path as the command sees it; `seen` itself if it
    /// is outside the exec root (the command sees the host there).
    pub fn to_local(&self, seen: &Path) -> PathBuf {
        for (mount_seen, mount_local) in &self.mounts {
            if let Ok(rest) = seen.strip_prefix(mount_seen) {
                return join_rest(mount_local, rest);
            }
        }
        match seen.strip_prefix(&self.seen) {
            Ok(rest) => join_rest(&self.local, rest),
            Err(_) => seen.to_owned(),
        }
    }

    /// The path the command sees for `local`, a path the agent opens; the inverse of
    /// [`PathMap::to_local`].
    pub fn to_seen(&self, local: &Path) -> PathBuf {
        for (mount_seen, mount_local) in &self.mounts {
            if let Ok(rest) = local.strip_prefix(mount_local) {
                return join_rest(mount_seen, rest);
            }
        }
        match local.strip_prefix(&self.local) {
            Ok(rest) => join_rest(&self.seen, rest),
            Err(_) => local.to_owned(),
        }
    }
}

fn join_rest(base: &Path, rest: &Path) -> PathBuf {
    if rest.as_os_str().is_empty() {
        base.to_owned()
    } else {
        base.join(rest)
    }
}

/// Without namespaces: the exec root path as a symlink to a lease's exec root, held for one
/// run under an exclusive lock on `<path>.lock`. Dropping it removes the link (if it is still
/// ours) and releases the lock.
#[derive(Debug)]
pub struct SymlinkedRoot {
    path: PathBuf,
    target: PathBuf,
    _lock: Flock<File>,
}

static WARNED: AtomicBool = AtomicBool::new(false);

impl SymlinkedRoot {
    /// Waits for the lock on `path`, then points `path` at `target`; `None` if `cancel` fired
    /// first. A symlink left at `path` (by a crashed agent) is replaced; anything else there is
    /// an error.
    pub async fn acquire(
        path: &Path,
        target: &Path,
        cancel: &CancellationToken,
    ) -> Result<Option<SymlinkedRoot>, ExecRootError> {
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                exec_root = %path.display(),
                "no namespaces: actions with the same fixed exec root take turns on this host"
            );
        }
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| ExecRootError::Io { op, path, source }
        };
        let lock_path = lock_path(path);
        if let Some(parent) = lock_path.parent() {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        let lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => break lock,
                Err((back, Errno::EWOULDBLOCK | Errno::EINTR)) => file = back,
                Err((_, errno)) => {
                    return Err(io("lock", &lock_path)(io::Error::from(errno)));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(LOCK_POLL) => {}
                () = cancel.cancelled() => return Ok(None),
            }
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                std::fs::remove_file(path).map_err(io("remove the stale link", path))?;
            }
            Ok(_) => {
                return Err(ExecRootError::Occupied {
                    path: path.to_owned(),
                });
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io("inspect", path)(error)),
        }
        std::os::unix::fs::symlink(target, path).map_err(io("link", path))?;
        Ok(Some(SymlinkedRoot {
            path: path.to_owned(),
            target: target.to_owned(),
            _lock: lock,
        }))
    }
}

impl Drop for SymlinkedRoot {
    fn drop(&mut self) {
        if std::fs::read_link(&self.path).is_ok_and(|t| t == self.target) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The lock file of a fixed exec root: beside it, so it needs no directory of its own.
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persist_dirs_are_per_exec_root_and_path() {
        let base = Path::new("/w/persist");
        let dir = |domain: &str, root: &str, relative: &str| {
            persist_dir(base, domain, Path::new(root), Path::new(relative))
        };
        let a = dir("", "/tmp/t/repo", "target");
        assert_eq!(a.parent(), Some(base));
        assert_eq!(a.file_name().unwrap().len(), 32);
        assert_eq!(a, dir("", "/tmp/t/repo", "target"));
        assert_ne!(a, dir("", "/tmp/t/other", "target"));
        assert_ne!(a, dir("", "/tmp/t/repo", "build"));
        // The separator keeps ("/a", "b/c") and ("/a/b", "c") apart.
        assert_ne!(dir("", "/a", "b/c"), dir("", "/a/b", "c"));
        // Without a trust domain, the directory is the one agents always used.
        assert_eq!(
            a.file_name().unwrap().to_str().unwrap(),
            &DigestFunction::Sha256
                .digest_of(b"/tmp/t/repo\0target")
                .hash_hex()[..32]
        );
    }

    #[test]
    fn trust_domains_never_share_a_persist_dir() {
        let base = Path::new("/w/persist");
        let dir = |domain: &str| persist_dir(base, domain, Path::new("/r"), Path::new("target"));
        assert_ne!(dir("developer:*"), dir("ci:*"));
        assert_ne!(dir("developer:*"), dir(""));
        assert_eq!(dir("ci:*"), dir("ci:*"));
    }

    #[test]
    fn paths_translate_both_ways_through_mounts() {
        let mut map = PathMap::new("/tmp/t/repo", "/w/x/3/root");
        map.mount(Path::new("target"), "/w/persist/abc");
        let cases = [
            ("/tmp/t/repo", "/w/x/3/root"),
            ("/tmp/t/repo/src/lib.rs", "/w/x/3/root/src/lib.rs"),
            ("/tmp/t/repo/target", "/w/persist/abc"),
            ("/tmp/t/repo/target/debug/t", "/w/persist/abc/debug/t"),
            ("/tmp/t/repo/targets", "/w/x/3/root/targets"),
            ("/usr/bin/sh", "/usr/bin/sh"),
        ];
        for (seen, local) in cases {
            assert_eq!(
                map.to_local(Path::new(seen)),
                PathBuf::from(local),
                "{seen}"
            );
            assert_eq!(
                map.to_seen(Path::new(local)),
                PathBuf::from(seen),
                "{local}"
            );
        }
    }

    #[test]
    fn exec_root_and_work_dir_must_be_disjoint() {
        let work = Path::new("/var/lib/agent");
        assert!(check_disjoint(Path::new("/tmp/t/repo"), work).is_ok());
        assert!(check_disjoint(Path::new("/var/lib/agents"), work).is_ok());
        for bad in ["/var/lib", "/var/lib/agent", "/var/lib/agent/x/1/root"] {
            let err = check_disjoint(Path::new(bad), work).unwrap_err();
            assert!(err.is_user_error());
            assert!(err.to_string().contains("exec-root"), "{err}");
        }
    }

    #[tokio::test]
    async fn symlinked_roots_take_turns_and_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fixed/repo");
        let (one, two) = (dir.path().join("one"), dir.path().join("two"));
        std::fs::create_dir_all(&one).unwrap();
        std::fs::create_dir_all(&two).unwrap();
        let cancel = CancellationToken::new();

        // A stale link from a crash is replaced.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("/nonexistent", &path).unwrap();
        let first = SymlinkedRoot::acquire(&path, &one, &cancel)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(std::fs::read_link(&path).unwrap(), one);

        // The second waits until the first is dropped.
        let waiting = tokio::spawn({
            let (path, two, cancel) = (path.clone(), two.clone(), cancel.clone());
            async move { SymlinkedRoot::acquire(&path, &two, &cancel).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished());
        assert_eq!(std::fs::read_link(&path).unwrap(), one);
        drop(first);
        let second = waiting.await.unwrap().unwrap().unwrap();
        assert_eq!(std::fs::read_link(&path).unwrap(), two);

        // A waiter gives up when cancelled.
        let cancel_third = CancellationToken::new();
        let third = tokio::spawn({
            let (path, one, cancel) = (path.clone(), one.clone(), cancel_third.clone());
            async move { SymlinkedRoot::acquire(&path, &one, &cancel).await }
        });
        cancel_third.cancel();
        assert!(third.await.unwrap().unwrap().is_none());

        drop(second);
        assert!(std::fs::symlink_metadata(&path).is_err(), "link removed");

        // A real directory is never replaced.
        std::fs::create_dir(&path).unwrap();
        let err = SymlinkedRoot::acquire(&path, &one, &cancel)
            .await
            .unwrap_err();
        assert!(matches!(err, ExecRootError::Occupied { .. }), "{err}");
    }
}

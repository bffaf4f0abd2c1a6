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
//! ```
//!
//! The exec root is laid out (or a layer mounted) at the path [`WorkLayout::lease_dirs`] gives;
//! an action that asks
//! for a fixed path (`exec-root`) sees it there instead (see `exec_root`). Short names keep
//! these paths short.

use std::io;
use std::path::{Path, PathBuf};

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

    /// Removes lease directories left by an earlier run of the agent. Blocking.
    pub fn clear_exec_base(&self) -> io::Result<()> {
        remove_tree(&self.exec_base())?;
        std::fs::create_dir_all(self.exec_base())
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

//! Small file systems for the tests that need a full disk: a [`Tmpfs`] mounted for one test
//! (root; outside CI a refused mount skips the test) and a [`Filler`] that takes its space.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::in_ci;

/// A tmpfs mounted for one test, unmounted when dropped (a panicking test included).
pub struct Tmpfs {
    path: PathBuf,
    /// The mount point, when the tmpfs made its own (removed after the unmount).
    _own: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as in `mount -o size=`) on a fresh directory. `None` (the
    /// test skips) when the mount is refused and CI is unset; under CI a refusal fails.
    pub fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().expect("mount point");
        let mut fs = Self::mount_at(dir.path(), size)?;
        fs._own = Some(dir);
        Some(fs)
    }

    /// Mounts a tmpfs of `size` on the existing directory `path`, as [`Tmpfs::mount`].
    pub fn mount_at(path: &Path, size: &str) -> Option<Self> {
        use nix::mount::{MsFlags, mount};
        let options = format!("size={size},mode=0755");
        match mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        ) {
            Ok(()) => Some(Tmpfs {
                path: path.to_owned(),
                _own: None,
            }),
            Err(error) => {
                assert!(
                    !in_ci(),
                    "mounting a tmpfs was refused ({error}): under CI these tests must run as root"
                );
                eprintln!("skipped: mounting a tmpfs was refused ({error}); run as root");
                None
            }
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily, so a child that still holds a file open cannot keep the mount alive.
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A file that takes the free space of its file system.
pub struct Filler {
    path: PathBuf,
    file: File,
    len: u64,
}

impl Filler {
    /// Writes `path` until the file system refuses (ENOSPC): afterwards not a page is free.
    pub fn fill(path: PathBuf) -> Self {
        let mut file = File::create(&path).expect("create the filler");
        let mut len = 0u64;
        // Large pieces first, then pages, so the last free page goes too.
        for piece in [1024 * 1024, 4096] {
            let zeros = vec![0u8; piece];
            loop {
                match file.write(&zeros) {
                    Ok(0) => break,
                    Ok(n) => len += n as u64,
                    Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                    Err(e) => panic!("fill {}: {e}", path.display()),
                }
            }
        }
        Filler { path, file, len }
    }

    /// Gives `bytes` back to the file system.
    pub fn leave_free(&mut self, bytes: u64) {
        self.len = self.len.saturating_sub(bytes);
        self.file.set_len(self.len).expect("shrink the filler");
    }

    /// Gives all of it back: space returns.
    pub fn remove(self) {
        std::fs::remove_file(&self.path).expect("remove the filler");
    }
}

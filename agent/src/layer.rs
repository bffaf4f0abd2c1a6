//! Shared read-only layers of large input roots, and the overlay mounts that give each lease a
//! private, writable view of one.
//!
//! Laying out a 10,001-file input root costs ~190 ms, and a job runs many batches on the same
//! prepared root. So, for a root of at least [`LayerSettings::min_entries`] entries (files,
//! directories and symlinks), the agent lays it out once, as a **layer** under
//! `WORK_DIR/layers/`, and each lease gets an overlayfs mount at its exec root (lower = the
//! layer, upper and work = the lease's own `upper/` and `ovl-work/`):
//!
//! - **Where the overlay is mounted**: in the agent's own mount namespace, at the lease's root
//!   directory (`x/N/root`). Everything that opens the lease's files (outputs, step reports,
//!   scratch, `PathMap`) keeps working unchanged, and the sandbox's recursive bind mounts of the
//!   exec root (to a fixed `exec-root`, or back under a private `/tmp`) bind the merged
//!   directory; without namespaces the fixed exec root's symlink points at it. The mount is
//!   detached in the lease's clean-up, before its directories are removed ([`LayeredRoots::
//!   unmount`]); a detached mount that a stray process still holds goes away with it.
//! - **When**: only for roots of at least `min_entries` entries (below that, linking the files
//!   costs less than the mount and its clean-up; see the README `job` section for the
//!   measurement) and only where the host allows mounting overlayfs: [`probe_overlay`] tries it
//!   once at agent start, and without it the agent lays out every root file by file as before,
//!   with a log line. With `keep_failed` layers are not used: a kept directory must stand on
//!   its own after its layer is gone.
//! - **Built once**: per root digest, by the first lease that needs it, while every other lease
//!   needing it waits ([`LayerStore::acquire`]); built from the local blob cache exactly as an
//!   exec root is (hard links, `materialize`), under `layers/.building-N`, and renamed to its
//!   final name only once complete, so a crash mid-build never leaves a half layer that looks
//!   complete.
//! - **Bounds**: least recently used layers are evicted when a new one is built, to stay within
//!   [`LayerSettings::max_layers`] layers and [`LayerSettings::max_entries`] entries in all;
//!   never a layer a lease is using (each [`LayerRef`] counts as a user). Layers in use may
//!   keep the store above its bounds until they are released.
//! - **Crash safety**: at start, before the lease directories are cleared, overlay mounts left
//!   under the work directory by an agent that was killed are found in `/proc/self/mountinfo`
//!   and detached ([`unmount_stale`]); [`LayerStore::open`] removes half-built and
//!   half-evicted layers and adopts complete ones.
//! - **Writes**: files in a layer are hard links that share the cached blob's inode (read-only
//!   0444, executables 0555, as a plain layout makes them). A command that may write them (one
//!   running as root) writes to its own copy: overlayfs copies a file up into the lease's upper
//!   directory on write, so neither the layer, the cache nor another lease sees it. A command
//!   that may not write them fails exactly as on a plain layout. Renaming an input directory
//!   works too (`redirect_dir=on`; without it overlayfs refuses with EXDEV). What a command can
//!   still tell apart: `statfs` says overlayfs, and the exec root is a mount point.
//!
//! Does not fetch anything or decide what goes into a layer: the caller builds it (see
//! `pipeline`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::mount::{MntFlags, MsFlags};
use tessera_cas::digest::Digest;
use thiserror::Error;
use tokio::sync::watch;

use crate::materialize::MaterializeError;
use crate::workdir::{LeaseDirs, remove_tree};

/// Prefix of a layer being built (removed at start if a crash left it).
const BUILDING: &str = ".building-";
/// Prefix of an evicted layer being removed (removed at start if a crash left it).
const EVICTED: &str = ".evicted-";

/// How many layers the agent keeps, and for which roots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSettings {
    /// Roots with fewer entries (files, directories, symlinks) are laid out file by file.
    pub min_entries: u64,
    /// Layers kept at most (those in use aside).
    pub max_layers: usize,
    /// Entries in all layers together at most (those in use aside).
    pub max_entries: u64,
}

/// Why a layer could not be built or mounted.
#[derive(Debug, Error)]
pub enum LayerError {
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
    /// The layer building task failed.
    #[error("the layer building task failed: {0}")]
    Task(String),
}

/// A lease meets a layer's trouble where it would meet a plain layout's: laying out inputs.
impl From<LayerError> for MaterializeError {
    fn from(error: LayerError) -> Self {
        match error {
            LayerError::Io { op, path, source } => MaterializeError::Io { op, path, source },
            LayerError::Task(message) => MaterializeError::Io {
                op: "build a layer in",
                path: PathBuf::new(),
                source: io::Error::other(message),
            },
        }
    }
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayerError + 'a {
    move |source| LayerError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The name of the layer of `root` under the layers directory.
pub fn layer_name(root: &Digest) -> String {
    format!(
        "{}-{}-{}",
        root.function.name(),
        root.hash_hex(),
        root.size_bytes
    )
}

/// The layers kept under one directory.
#[derive(Debug)]
pub struct LayerStore {
    dir: PathBuf,
    settings: LayerSettings,
    state: Mutex<Layers>,
}

#[derive(Debug, Default)]
struct Layers {
    /// By layer name.
    entries: HashMap<String, Layer>,
    /// Numbers temporary directories and orders uses (the LRU clock).
    clock: u64,
    /// Layers built since the store opened.
    built: u64,
}

#[derive(Debug)]
enum Layer {
    /// One lease is building it; the others wait for the sender to be dropped.
    Building(watch::Sender<()>),
    /// Complete.
    Ready {
        entries: u64,
        /// Leases using it now.
        users: u32,
        /// The clock when it was last acquired.
        last_used: u64,
    },
}

impl LayerStore {
    /// Opens the layers under `dir` (created if missing): half-built and half-evicted layers
    /// are removed, complete ones adopted (least recently used first, in the order their
    /// directories were last changed), then the store is trimmed to its bounds. Blocking.
    pub fn open(dir: PathBuf, settings: LayerSettings) -> Result<LayerStore, LayerError> {
        std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        let mut adopted = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_error("list", &dir))? {
            let entry = entry.map_err(io_error("list", &dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if name.starts_with('.') || !is_dir {
                remove_tree(&path)
                    .or_else(|_| std::fs::remove_file(&path))
                    .map_err(io_error("remove", &path))?;
                continue;
            }
            let changed = entry.metadata().and_then(|m| m.modified()).ok();
            adopted.push((changed, name, count_entries(&path)));
        }
        adopted.sort();
        let mut layers = Layers::default();
        for (_, name, entries) in adopted {
            layers.clock += 1;
            let last_used = layers.clock;
            layers.entries.insert(
                name,
                Layer::Ready {
                    entries,
                    users: 0,
                    last_used,
                },
            );
        }
        let store = LayerStore {
            dir,
            settings,
            state: Mutex::new(layers),
        };
        for victim in store.evict_for(0) {
            store.remove(&victim);
        }
        Ok(store)
    }

    /// The settings the store keeps to.
    pub fn settings(&self) -> LayerSettings {
        self.settings
    }

    /// Layers built since the store opened.
    pub fn built(&self) -> u64 {
        self.lock().built
    }

    /// Names of the complete layers kept now.
    pub fn names(&self) -> Vec<String> {
        let state = self.lock();
        let mut names: Vec<String> = state
            .entries
            .iter()
            .filter(|(_, layer)| matches!(layer, Layer::Ready { .. }))
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// The layer `name` (of `entries` entries), built with `build` into an empty directory if
    /// it is not kept yet; if another lease is building it, waits for that build instead of
    /// starting a second one. The layer stays (is never evicted) while the returned
    /// [`LayerRef`] lives. A failed build leaves nothing behind; the next lease that needs
    /// the layer builds it again.
    pub async fn acquire<E>(
        self: &Arc<Self>,
        name: &str,
        entries: u64,
        build: impl FnOnce(&Path) -> Result<(), E> + Send + 'static,
    ) -> Result<LayerRef, E>
    where
        E: From<LayerError> + Send + 'static,
    {
        loop {
            let mut waiting = {
                let mut state = self.lock();
                state.clock += 1;
                let now = state.clock;
                match state.entries.get_mut(name) {
                    Some(Layer::Ready {
                        users, last_used, ..
                    }) => {
                        *users += 1;
                        *last_used = now;
                        return Ok(self.layer_ref(name));
                    }
                    Some(Layer::Building(done)) => done.subscribe(),
                    None => {
                        let (done, _) = watch::channel(());
                        state.entries.insert(name.to_owned(), Layer::Building(done));
                        break;
                    }
                }
            };
            // Woken when the builder replaces or removes its entry (dropping the sender);
            // then look again: ready, or free to build if that build failed.
            let _ = waiting.changed().await;
        }
        // Whatever happens to this future, the entry does not stay `Building`.
        let mut guard = BuildGuard {
            store: self,
            name,
            done: false,
        };
        let store = Arc::clone(self);
        let layer = name.to_owned();
        let built = tokio::task::spawn_blocking(move || store.build(&layer, entries, build))
            .await
            .map_err(|e| LayerError::Task(e.to_string()))?;
        built?;
        let mut state = self.lock();
        state.clock += 1;
        state.built += 1;
        let last_used = state.clock;
        state.entries.insert(
            name.to_owned(),
            Layer::Ready {
                entries,
                users: 1,
                last_used,
            },
        );
        drop(state);
        guard.done = true;
        Ok(self.layer_ref(name))
    }

    /// Makes room for a layer of `entries`, lays it out under a temporary name, and renames it
    /// into place. Blocking.
    fn build<E: From<LayerError>>(
        &self,
        name: &str,
        entries: u64,
        build: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<(), E> {
        for victim in self.evict_for(entries) {
            self.remove(&victim);
        }
        let temporary = {
            let mut state = self.lock();
            state.clock += 1;
            self.dir.join(format!("{BUILDING}{}", state.clock))
        };
        std::fs::create_dir(&temporary).map_err(io_error("create", &temporary))?;
        if let Err(error) = build(&temporary) {
            self.remove(&temporary);
            return Err(error);
        }
        let path = self.dir.join(name);
        std::fs::rename(&temporary, &path).map_err(|source| {
            self.remove(&temporary);
            LayerError::Io {
                op: "rename the built layer to",
                path,
                source,
            }
        })?;
        tracing::debug!(layer = name, entries, "input root layer built");
        Ok(())
    }

    /// Takes unused layers out of the store, least recently used first, until one more of
    /// `entries` fits its bounds; renames them to temporary names (so a new build of the same
    /// root can take the name at once) and returns those, to be removed by the caller.
    fn evict_for(&self, entries: u64) -> Vec<PathBuf> {
        let mut state = self.lock();
        let mut victims = Vec::new();
        loop {
            let (count, total) = state.entries.values().fold((0, 0), |(n, sum), layer| {
                let size = match layer {
                    Layer::Ready { entries, .. } => *entries,
                    Layer::Building(_) => 0,
                };
                (n + 1, sum + size)
            });
            // A layer being built is among the entries already.
            let over_count = count > self.settings.max_layers;
            let over_entries = total + entries > self.settings.max_entries;
            if !over_count && !over_entries {
                break;
            }
            let oldest_unused = state
                .entries
                .iter()
                .filter_map(|(name, layer)| match layer {
                    Layer::Ready {
                        users: 0,
                        last_used,
                        ..
                    } => Some((*last_used, name.clone())),
                    _ => None,
                })
                .min();
            let Some((_, name)) = oldest_unused else {
                tracing::debug!("every layer is in use: the store stays above its bounds");
                break;
            };
            state.entries.remove(&name);
            state.clock += 1;
            let from = self.dir.join(&name);
            let to = self.dir.join(format!("{EVICTED}{}", state.clock));
            match std::fs::rename(&from, &to) {
                Ok(()) => victims.push(to),
                Err(error) => {
                    tracing::warn!(%error, layer = %from.display(), "failed to evict a layer");
                }
            }
            tracing::debug!(layer = name, "input root layer evicted");
        }
        victims
    }

    fn remove(&self, path: &Path) {
        if let Err(error) = remove_tree(path) {
            tracing::warn!(%error, path = %path.display(), "failed to remove a layer directory");
        }
    }

    fn layer_ref(self: &Arc<Self>, name: &str) -> LayerRef {
        LayerRef {
            store: Arc::clone(self),
            name: name.to_owned(),
            path: self.dir.join(name),
        }
    }

    fn release(&self, name: &str) {
        if let Some(Layer::Ready { users, .. }) = self.lock().entries.get_mut(name) {
            *users = users.saturating_sub(1);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Layers> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes a `Building` entry whose build did not complete (failed, or its future dropped),
/// waking the leases waiting for it.
struct BuildGuard<'a> {
    store: &'a LayerStore,
    name: &'a str,
    done: bool,
}

impl Drop for BuildGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut state = self.store.lock();
            if matches!(state.entries.get(self.name), Some(Layer::Building(_))) {
                state.entries.remove(self.name);
            }
        }
    }
}

/// One lease's use of a layer; the layer is not evicted while this lives.
#[derive(Debug)]
pub struct LayerRef {
    store: Arc<LayerStore>,
    name: String,
    path: PathBuf,
}

impl LayerRef {
    /// The layer's directory (read-only by convention: only ever an overlay's lower layer).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LayerRef {
    fn drop(&mut self) {
        self.store.release(&self.name);
    }
}

/// Entries (files, directories, symlinks) under `dir`, not counting `dir` itself.
fn count_entries(dir: &Path) -> u64 {
    let mut count = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            count += 1;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    count
}

/// An overlay mounted at a lease's exec root over a layer.
#[derive(Debug)]
pub struct LeaseMount {
    target: PathBuf,
    /// Keeps the layer from eviction while mounted.
    _layer: LayerRef,
    mounted: bool,
}

impl LeaseMount {
    /// Mounts `layer` at `dirs.root` (an existing empty directory), writes going to
    /// `dirs.upper` (made here, with `dirs.overlay_work`). Blocking.
    pub fn mount(layer: LayerRef, dirs: &LeaseDirs) -> Result<LeaseMount, LayerError> {
        for dir in [&dirs.upper, &dirs.overlay_work] {
            std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
        }
        mount_overlay(layer.path(), &dirs.upper, &dirs.overlay_work, &dirs.root)?;
        Ok(LeaseMount {
            target: dirs.root.clone(),
            _layer: layer,
            mounted: true,
        })
    }

    /// Detaches the mount and releases the layer. Blocking.
    pub fn unmount(mut self) -> Result<(), LayerError> {
        self.mounted = false;
        detach(&self.target)
    }
}

impl Drop for LeaseMount {
    fn drop(&mut self) {
        if self.mounted
            && let Err(error) = detach(&self.target)
        {
            tracing::warn!(%error, "failed to unmount a lease's overlay");
        }
    }
}

/// Characters the overlay's mount options cannot carry in a path.
fn check_option_path(path: &Path) -> Result<String, LayerError> {
    let text = path
        .to_str()
        .filter(|t| !t.contains([',', ':', '\\', '\0']));
    text.map(str::to_owned).ok_or_else(|| LayerError::Io {
        op: "name in overlay mount options",
        path: path.to_owned(),
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path is not UTF-8 or contains ',', ':', '\\' or NUL",
        ),
    })
}

fn mount_overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> Result<(), LayerError> {
    // redirect_dir: renaming a directory of the layer works as on a plain layout (without it,
    // rename(2) of a lower directory fails with EXDEV).
    let options = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=on",
        check_option_path(lower)?,
        check_option_path(upper)?,
        check_option_path(work)?
    );
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|errno| LayerError::Io {
        op: "mount an overlay at",
        path: target.to_owned(),
        source: io::Error::from(errno),
    })
}

/// Detaches the mount at `target` (lazily: a process still inside keeps it until it leaves).
fn detach(target: &Path) -> Result<(), LayerError> {
    nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(|errno| LayerError::Io {
        op: "unmount",
        path: target.to_owned(),
        source: io::Error::from(errno),
    })
}

/// Checks, once, whether this host lets the agent mount an overlay the way a lease does, in
/// `scratch` (created, then removed): a layer, a mount, a write and a directory rename through
/// it that reach the upper directory only. Blocking.
pub fn probe_overlay(scratch: &Path) -> Result<(), LayerError> {
    let result = try_overlay(scratch);
    let _ = remove_tree(scratch);
    result
}

fn try_overlay(scratch: &Path) -> Result<(), LayerError> {
    let dirs = LeaseDirs::under(scratch.join("lease"));
    let lower = scratch.join("layer");
    for dir in [&lower, &dirs.root] {
        std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    }
    let file = lower.join("input");
    std::fs::write(&file, "layer").map_err(io_error("write", &file))?;
    let dir = lower.join("dir");
    std::fs::create_dir(&dir).map_err(io_error("create", &dir))?;
    for dir in [&dirs.upper, &dirs.overlay_work] {
        std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    }
    mount_overlay(&lower, &dirs.upper, &dirs.overlay_work, &dirs.root)?;
    let merged = dirs.root.join("input");
    let written = std::fs::write(&merged, "lease").map_err(io_error("write", &merged));
    let moved = std::fs::rename(dirs.root.join("dir"), dirs.root.join("moved"))
        .map_err(io_error("rename a directory of the layer in", &dirs.root));
    let unmounted = detach(&dirs.root);
    written?;
    moved?;
    unmounted?;
    let kept = std::fs::read_to_string(&file).map_err(io_error("read", &file))?;
    if kept != "layer" || !dir.is_dir() {
        return Err(LayerError::Io {
            op: "keep the layer unchanged under",
            path: lower,
            source: io::Error::other("a change through the overlay reached the lower layer"),
        });
    }
    Ok(())
}

/// Detaches every overlay mounted strictly below `work_dir` (deepest first): what an agent
/// killed while leases ran leaves behind. Returns the mount points detached. Blocking.
pub fn unmount_stale(work_dir: &Path) -> Result<Vec<PathBuf>, LayerError> {
    let mountinfo = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(mountinfo).map_err(io_error("read", mountinfo))?;
    let mut stale: Vec<PathBuf> = overlay_mount_points(&text)
        .into_iter()
        .filter(|point| point != work_dir && point.starts_with(work_dir))
        .collect();
    stale.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in &stale {
        detach(point)?;
        tracing::info!(mount = %point.display(), "unmounted a stale lease overlay");
    }
    Ok(stale)
}

/// The mount points of the overlay mounts in a `/proc/PID/mountinfo` text.
fn overlay_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(separator + 1)?;
            (*fstype == "overlay").then(|| unescape(fields.get(4)?))?
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> Option<PathBuf> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let digits = std::str::from_utf8(bytes.get(i + 1..i + 4)?).ok()?;
            out.push(u8::from_str_radix(digits, 8).ok()?);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(PathBuf::from(OsString::from_vec(out)))
}

/// The layers and the overlay mounts of running leases, as the pipeline uses them.
#[derive(Debug)]
pub struct LayeredRoots {
    store: Arc<LayerStore>,
    /// By the lease's exec root.
    mounts: Mutex<HashMap<PathBuf, LeaseMount>>,
}

impl LayeredRoots {
    /// Serves leases from `store`.
    pub fn new(store: LayerStore) -> Self {
        LayeredRoots {
            store: Arc::new(store),
            mounts: Mutex::default(),
        }
    }

    /// The layers.
    pub fn store(&self) -> &Arc<LayerStore> {
        &self.store
    }

    /// Whether a root of `entries` entries is worth a layer.
    pub fn wants(&self, entries: u64) -> bool {
        entries >= self.store.settings.min_entries
    }

    /// Mounts `layer` at the lease's exec root (see [`LeaseMount::mount`]); it stays until
    /// [`LayeredRoots::unmount`]. Blocking.
    pub fn mount(&self, layer: LayerRef, dirs: &LeaseDirs) -> Result<(), LayerError> {
        let mount = LeaseMount::mount(layer, dirs)?;
        self.lock().insert(dirs.root.clone(), mount);
        Ok(())
    }

    /// Detaches the overlay at the lease's exec root `root`, if there is one. Blocking.
    pub fn unmount(&self, root: &Path) -> Result<(), LayerError> {
        let mount = self.lock().remove(root);
        match mount {
            Some(mount) => mount.unmount(),
            None => Ok(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PathBuf, LeaseMount>> {
        self.mounts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn mountinfo_lines_give_overlay_mount_points() {
        let text = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
48 27 0:40 / /w/x/1/root rw,relatime shared:5 - overlay overlay rw,lowerdir=/w/layers/a
49 27 0:41 / /w/x/with\\040space/root rw - overlay overlay rw
50 27 0:42 / /w/x/2/root rw - tmpfs tmpfs rw
";
        assert_eq!(
            overlay_mount_points(text),
            [
                PathBuf::from("/w/x/1/root"),
                PathBuf::from("/w/x/with space/root")
            ]
        );
        assert_eq!(unescape("a\\134b"), Some(PathBuf::from("a\\b")));
        assert_eq!(unescape("cut\\04"), None);
    }

    #[test]
    fn option_paths_refuse_separators() {
        assert!(check_option_path(Path::new("/w/x/1/upper")).is_ok());
        for bad in ["/w,x", "/w:x", "/w\\x"] {
            let error = check_option_path(Path::new(bad)).unwrap_err();
            assert!(error.to_string().contains(bad), "{error}");
        }
    }

    fn settings(max_layers: usize, max_entries: u64) -> LayerSettings {
        LayerSettings {
            min_entries: 1,
            max_layers,
            max_entries,
        }
    }

    /// A build of `files` files that counts itself in `builds`.
    fn writes(
        files: usize,
        builds: &Arc<AtomicU64>,
    ) -> impl FnOnce(&Path) -> Result<(), LayerError> + Send + 'static {
        let builds = Arc::clone(builds);
        move |dir: &Path| {
            builds.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(50));
            for n in 0..files {
                let file = dir.join(format!("f{n}"));
                std::fs::write(&file, format!("{n}")).map_err(io_error("write", &file))?;
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn leases_on_one_root_share_one_build() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(LayerStore::open(dir.path().join("layers"), settings(4, 1_000)).unwrap());
        let builds = Arc::new(AtomicU64::new(0));
        let acquires = (0..4).map(|_| {
            let (store, builds) = (Arc::clone(&store), Arc::clone(&builds));
            tokio::spawn(async move { store.acquire("root", 3, writes(3, &builds)).await })
        });
        let layers: Vec<LayerRef> = futures::future::join_all(acquires)
            .await
            .into_iter()
            .map(|joined| joined.unwrap().unwrap())
            .collect();
        assert_eq!(builds.load(Ordering::SeqCst), 1, "built once");
        assert_eq!(store.built(), 1);
        for layer in &layers {
            assert_eq!(layer.path(), dir.path().join("layers/root"));
        }
        assert_eq!(count_entries(layers[0].path()), 3);
        assert_eq!(store.names(), ["root"]);
    }

    #[tokio::test]
    async fn a_failed_build_leaves_nothing_and_the_next_lease_builds_again() {
        let dir = tempfile::tempdir().unwrap();
        let layers = dir.path().join("layers");
        let store = Arc::new(LayerStore::open(layers.clone(), settings(4, 1_000)).unwrap());
        let error = store
            .acquire("root", 1, |dir: &Path| {
                let half = dir.join("half");
                std::fs::write(&half, "").map_err(io_error("write", &half))?;
                Err(LayerError::Task("disk full".into()))
            })
            .await
            .unwrap_err();
        assert!(error.to_string().contains("disk full"), "{error}");
        assert_eq!(std::fs::read_dir(&layers).unwrap().count(), 0);
        let builds = Arc::new(AtomicU64::new(0));
        store.acquire("root", 1, writes(1, &builds)).await.unwrap();
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn eviction_takes_the_least_recently_used_layer_not_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let layers = dir.path().join("layers");
        let store = Arc::new(LayerStore::open(layers.clone(), settings(2, 100)).unwrap());
        let builds = Arc::new(AtomicU64::new(0));
        let a = store.acquire("a", 2, writes(2, &builds)).await.unwrap();
        drop(store.acquire("b", 2, writes(2, &builds)).await.unwrap());
        // Two layers: a third evicts b, the older a being in use.
        let c = store.acquire("c", 2, writes(2, &builds)).await.unwrap();
        assert_eq!(store.names(), ["a", "c"]);
        assert!(!layers.join("b").exists());
        assert!(a.path().join("f1").exists());

        // All in use: the store goes above its bound rather than evict one.
        let d = store.acquire("d", 2, writes(2, &builds)).await.unwrap();
        assert_eq!(store.names(), ["a", "c", "d"]);
        drop((a, c, d));

        // The entry bound: 100 entries in all, so a layer of 97 evicts all but the newest.
        drop(store.acquire("big", 97, writes(0, &builds)).await.unwrap());
        assert_eq!(store.names(), ["big", "d"]);
        assert_eq!(store.built(), 5);
        let left: Vec<String> = std::fs::read_dir(&layers)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 2, "evicted layers are removed: {left:?}");
    }

    #[test]
    fn open_removes_half_built_layers_and_adopts_complete_ones() {
        let dir = tempfile::tempdir().unwrap();
        let layers = dir.path().join("layers");
        for path in ["done/sub/f", ".building-7/f", ".evicted-3/f"] {
            let path = layers.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "").unwrap();
        }
        let store = LayerStore::open(layers.clone(), settings(4, 1_000)).unwrap();
        assert_eq!(store.names(), ["done"]);
        assert!(!layers.join(".building-7").exists());
        assert!(!layers.join(".evicted-3").exists());
        assert_eq!(count_entries(&layers.join("done")), 2);

        // Adopted layers count against the bounds at once.
        let store = LayerStore::open(layers.clone(), settings(4, 1)).unwrap();
        assert!(store.names().is_empty());
        assert!(!layers.join("done").exists());
    }

    /// Mounting needs privilege: skipped when not root, unless CI is set.
    fn can_mount() -> bool {
        let root = nix::unistd::geteuid().is_root();
        assert!(
            root || std::env::var("CI").is_err(),
            "CI runs the overlay tests as root"
        );
        if !root {
            eprintln!("not root: skipping the overlay mount checks");
        }
        root
    }

    #[tokio::test]
    async fn a_lease_writes_to_its_own_upper_directory_only() {
        if !can_mount() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let roots =
            LayeredRoots::new(LayerStore::open(dir.path().join("layers"), settings(1, 3)).unwrap());
        let store = roots.store();
        let build = |dir: &Path| {
            let io = |e| LayerError::Task(format!("{e}"));
            std::fs::write(dir.join("input"), "layer").map_err(io)?;
            std::fs::create_dir(dir.join("sub")).map_err(io)?;
            std::fs::write(dir.join("sub/other"), "other").map_err(io)
        };
        let one = LeaseDirs::under(dir.path().join("x/1"));
        let two = LeaseDirs::under(dir.path().join("x/2"));
        for lease in [&one, &two] {
            lease.create().unwrap();
            let layer = store.acquire("root", 3, build).await.unwrap();
            roots.mount(layer, lease).unwrap();
        }
        std::fs::write(one.root.join("input"), "written").unwrap();
        std::fs::write(one.root.join("new"), "new").unwrap();
        std::fs::remove_file(one.root.join("sub/other")).unwrap();
        std::fs::rename(one.root.join("sub"), one.root.join("moved")).unwrap();

        let layer = dir.path().join("layers/root");
        assert_eq!(
            std::fs::read_to_string(layer.join("input")).unwrap(),
            "layer"
        );
        assert!(layer.join("sub/other").exists());
        assert!(!layer.join("new").exists());
        assert_eq!(
            std::fs::read_to_string(two.root.join("input")).unwrap(),
            "layer"
        );
        assert!(two.root.join("sub/other").exists());
        assert!(layer.join("sub").is_dir() && !layer.join("moved").exists());
        assert!(!two.root.join("moved").exists());
        assert!(!two.root.join("new").exists());
        assert_eq!(
            std::fs::read_to_string(one.upper.join("input")).unwrap(),
            "written"
        );

        // In use: never evicted, even by a store at its bounds.
        let builds = Arc::new(AtomicU64::new(0));
        drop(store.acquire("next", 1, writes(1, &builds)).await.unwrap());
        assert_eq!(store.names(), ["next", "root"]);
        roots.unmount(&one.root).unwrap();
        roots.unmount(&two.root).unwrap();
        roots.unmount(&two.root).unwrap();
        assert!(!mounted_below(dir.path()));
        assert!(std::fs::read_dir(&one.root).unwrap().next().is_none());
    }

    fn mounted_below(dir: &Path) -> bool {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        overlay_mount_points(&text)
            .iter()
            .any(|p| p.starts_with(dir))
    }

    #[test]
    fn the_probe_mounts_and_cleans_up() {
        if !can_mount() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("probe");
        probe_overlay(&scratch).unwrap();
        assert!(!scratch.exists());
        assert!(!mounted_below(dir.path()));

        // A path the mount options cannot carry is a failed probe that names it.
        let error = probe_overlay(&dir.path().join("a,b")).unwrap_err();
        assert!(error.to_string().contains("a,b"), "{error}");
        assert!(!mounted_below(dir.path()));
    }

    #[test]
    fn stale_mounts_below_the_work_dir_are_detached() {
        if !can_mount() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let lower = work.join("layers/l");
        std::fs::create_dir_all(&lower).unwrap();
        let dirs = LeaseDirs::under(work.join("x/4"));
        dirs.create().unwrap();
        for d in [&dirs.upper, &dirs.overlay_work] {
            std::fs::create_dir_all(d).unwrap();
        }
        mount_overlay(&lower, &dirs.upper, &dirs.overlay_work, &dirs.root).unwrap();
        // Not below this work dir: left alone.
        assert!(unmount_stale(&dir.path().join("other")).unwrap().is_empty());
        assert!(mounted_below(&work));
        assert_eq!(unmount_stale(&work).unwrap(), [dirs.root]);
        assert!(!mounted_below(&work));
    }
}

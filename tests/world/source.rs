//! Where the world's suites come from: `fetch.sh` downloads them into a cache kept between
//! runs, and each run works on fresh copies of the cached trees (a direct run leaves build
//! output and caches behind, which must not reach the copy `tessera run` snapshots).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The cache: `$TESSERA_WORLD_CACHE`, else `~/.cache/tessera-world`. Outside the project
/// trees (what `tessera run` snapshots) and outside `/tmp` (sandboxed actions get a private
/// one, and the virtualenvs there must be seen by the agents).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TESSERA_WORLD_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/tessera-world")
}

/// Why a suite could not be had: a tool or a download missing.
#[derive(Debug)]
pub struct Unavailable(pub String);

/// Runs `fetch.sh ARGS` and returns the lines it prints (the paths of what it fetched).
pub fn fetch(args: &[&str]) -> Result<Vec<String>, Unavailable> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("world/fetch.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .env("TESSERA_WORLD_CACHE", cache_dir())
        .output()
        .map_err(|e| Unavailable(format!("cannot start bash {}: {e}", script.display())))?;
    if !out.status.success() {
        return Err(Unavailable(format!(
            "fetch.sh {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Whether `program` can be started (`program --version` runs).
pub fn has_tool(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Copies the tree at `from` to `to` (created), files and directories only, writable: Debian's
/// Go sources are read-only, and a copy must take a go.mod or a broken test file.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
            let mut permissions = std::fs::metadata(&target)?.permissions();
            #[expect(
                clippy::permissions_set_readonly_false,
                reason = "a private copy in a temp dir, made writable on purpose"
            )]
            permissions.set_readonly(false);
            std::fs::set_permissions(&target, permissions)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        }
    }
    Ok(())
}

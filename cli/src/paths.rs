//! Where the client keeps its files: the user cache directory (`$XDG_CACHE_HOME/tessera`, else
//! `~/.cache/tessera`) with the snapshot hash caches and the embedded cluster's state, and the
//! fixed exec root of a project's jobs.

use std::path::{Path, PathBuf};

/// Root of every exec root: a job of the project at `/any/where/NAME` sees its input root at
/// `/var/tmp/tessera/NAME` on every agent.
pub const EXEC_ROOT_BASE: &str = "/var/tmp/tessera";

/// The user cache directory for Tessera, from `env` (`XDG_CACHE_HOME`, `HOME`).
pub fn cache_dir_from(env: impl Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(xdg) = env("XDG_CACHE_HOME").filter(|v| Path::new(v).is_absolute()) {
        return PathBuf::from(xdg).join("tessera");
    }
    if let Some(home) = env("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".cache").join("tessera");
    }
    std::env::temp_dir().join("tessera-cache")
}

/// The user cache directory for Tessera, from the process environment.
pub fn cache_dir() -> PathBuf {
    cache_dir_from(|k| std::env::var(k).ok())
}

/// The embedded cluster's directory under the cache directory.
pub fn cluster_dir(cache: &Path) -> PathBuf {
    cache.join("cluster")
}

/// The file naming a running embedded cluster's URL.
pub fn endpoint_file(cache: &Path) -> PathBuf {
    cluster_dir(cache).join("endpoint")
}

/// The exec root of the project at `project_root`: `/var/tmp/tessera/<basename>`.
pub fn exec_root(project_root: &Path) -> PathBuf {
    let name = project_root
        .file_name()
        .map_or_else(|| "root".to_owned(), |n| n.to_string_lossy().into_owned());
    Path::new(EXEC_ROOT_BASE).join(name)
}

/// The project root containing `cwd`: git's top level, else `cwd` itself.
pub fn project_root(cwd: &Path) -> PathBuf {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .current_dir(cwd)
        .stderr(std::process::Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if text.is_empty() {
                cwd.to_owned()
            } else {
                PathBuf::from(text)
            }
        }
        _ => cwd.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_dir_prefers_xdg_then_home() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(
            cache_dir_from(env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])),
            PathBuf::from("/x/tessera")
        );
        assert_eq!(
            cache_dir_from(env(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/h")])),
            PathBuf::from("/h/.cache/tessera")
        );
    }

    #[test]
    fn the_exec_root_is_named_after_the_project() {
        assert_eq!(
            exec_root(Path::new("/home/ann/src/widget")),
            PathBuf::from("/var/tmp/tessera/widget")
        );
    }
}
